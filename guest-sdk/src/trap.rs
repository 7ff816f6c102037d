//! The guest's own exceptions (`TRAP-0b`): observe and recover from them.
//!
//! Without a handler, an exception destroys the domain (`TRAP-0c`) and the
//! hypervisor reports it. With [`set_handler`], the hypervisor reflects the
//! exception to the SDK's trap entry, which calls the handler with the
//! interrupted context; the handler may edit it (e.g. move `rip` past the
//! faulting instruction, or to a recovery point) and return
//! [`TrapAction::Resume`], or give up with [`TrapAction::Crash`].
//!
//! The handler runs on the callback stack. A fault inside it nests (up to 8
//! deep, then the domain is destroyed).

use core::fmt;
use core::sync::atomic::{AtomicPtr, Ordering};

use hypercall_abi::layout::{UpcallFrame, UpcallKind};
use hypercall_abi::Error;

/// What to do after a trap handler ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapAction {
    /// Resume the (possibly edited) frame.
    Resume,
    /// Print a fault report and shut down with reason `crash`.
    Crash,
}

/// A trap handler.
///
/// Editing the frame decides where the guest continues: this is as
/// powerful as a jump, so point `rip` only at code that can continue with
/// the frame's registers and stack.
pub type TrapHandler = fn(&mut UpcallFrame) -> TrapAction;

/// The handler, as a pointer: null for none, else a [`TrapHandler`] that
/// [`set_handler`] stored. One atomic word, read with one load on every
/// trap (a lock here cost the page fault a locked `cmpxchg` and a release
/// store, and a trap arriving while the slot was being changed found no
/// handler).
static HANDLER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// The handler in [`HANDLER`], if any.
#[allow(unsafe_code)]
#[inline(always)]
fn handler() -> Option<TrapHandler> {
    let p = HANDLER.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: every non-null value in `HANDLER` is a `TrapHandler` that
    // `store_handler` converted to a pointer; converting it back gives
    // that same function pointer.
    Some(unsafe { core::mem::transmute::<*mut (), TrapHandler>(p) })
}

/// Stores `handler` in [`HANDLER`]; returns the previous one.
fn store_handler(new: Option<TrapHandler>) -> Option<TrapHandler> {
    let previous = handler();
    let p = new.map_or(core::ptr::null_mut(), |h| h as *mut ());
    HANDLER.store(p, Ordering::Release);
    previous
}

/// The entries registered at start: (event entry, trap entry, stack top).
static CALLBACKS: spin::Once<(u64, u64, u64)> = spin::Once::new();

/// Records the entries; called once by the runtime before `main`.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) fn init(event_entry: u64, trap_entry: u64, stack_top: u64) {
    CALLBACKS.call_once(|| (event_entry, trap_entry, stack_top));
}

/// Sends this domain's exceptions to `handler` (replacing any previous one)
/// by registering the SDK's trap entry (`TRAP-1`).
pub fn set_handler(handler: TrapHandler) -> Result<(), Error> {
    // The handler is in place before the entry is registered, so a trap
    // right after registration finds it.
    let previous = store_handler(Some(handler));
    register(true).inspect_err(|_| {
        store_handler(previous);
    })
}

/// Whether a trap handler is set.
pub fn has_handler() -> bool {
    handler().is_some()
}

/// Removes the trap handler: exceptions destroy the domain again.
pub fn clear_handler() -> Result<(), Error> {
    register(false)?;
    store_handler(None);
    Ok(())
}

#[allow(unsafe_code)]
fn register(trap: bool) -> Result<(), Error> {
    let &(event_entry, trap_entry, stack_top) = CALLBACKS.get().ok_or(Error::WrongState)?;
    let trap_entry = if trap { trap_entry } else { 0 };
    // SAFETY: the runtime recorded its own entries (assembly stubs that
    // follow TRAP-0) and its dedicated callback stack in `init`; they stay
    // valid for the domain's life.
    unsafe { crate::upcall::set_callbacks(event_entry, trap_entry, stack_top) }
}

/// Runs the registered handler for a reflected exception.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) fn dispatch(frame: &mut UpcallFrame) -> TrapAction {
    // The main stack's reserve, when it grows on demand (`stack`).
    if let Some(action) = crate::stack::on_fault(frame) {
        return action;
    }
    match handler() {
        Some(h) if frame.kind == UpcallKind::Trap as u64 => h(frame),
        _ => TrapAction::Crash,
    }
}

/// The mnemonic of an exception vector (`#PF` for 14).
pub fn vector_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE",
        1 => "#DB",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        19 => "#XM",
        _ => "#??",
    }
}

/// A one-line description of a trap frame, for reports:
/// `#PF (vector 14) error=0x4 cr2=0xdead0000 rip=0x401234 rsp=0x...`.
pub struct Report<'a>(pub &'a UpcallFrame);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fr = self.0;
        write!(
            f,
            "{} (vector {}) error={:#x} cr2={:#x} rip={:#x} rsp={:#x}",
            vector_name(fr.vector),
            fr.vector,
            fr.error_code,
            fr.cr2,
            fr.rip,
            fr.rsp
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_name_the_fault() {
        let fr = UpcallFrame {
            kind: UpcallKind::Trap as u64,
            vector: 14,
            error_code: 4,
            cr2: 0xdead_0000,
            rip: 0x40_1234,
            rsp: 0x50_0000,
            ..UpcallFrame::default()
        };
        assert_eq!(
            std::format!("{}", Report(&fr)),
            "#PF (vector 14) error=0x4 cr2=0xdead0000 rip=0x401234 rsp=0x500000"
        );
        assert_eq!(vector_name(2), "#??");
    }

    #[test]
    fn without_a_handler_a_trap_crashes() {
        let mut fr = UpcallFrame {
            kind: UpcallKind::Trap as u64,
            ..UpcallFrame::default()
        };
        assert_eq!(dispatch(&mut fr), TrapAction::Crash);
    }
}
