//! Event channels (`EVT-0`..`EVT-6`): ports, handlers, masking and waiting.
//!
//! An event on a port sets its pending bit in the shared-info page; the
//! hypervisor then runs the SDK's event entry (an upcall, `TRAP-0`), which
//! calls the handler registered with [`set_handler`] for each pending,
//! unmasked port, in ascending port order, clearing each pending bit
//! *before* calling its handler (`EVT-0c`): a raise during the handler is
//! seen again.
//!
//! Handlers run on the callback stack with upcalls masked, interrupting
//! whatever `main` was doing: keep them short, communicate through atomics,
//! and do not block in them. [`wait`] and [`wait_for`] put `main` to sleep
//! until a handler has run.

use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use hypercall_abi::args::{Virq, DOMID_SELF};
use hypercall_abi::layout::{NR_PORTS, PORT_WORDS};
use hypercall_abi::{event, Error};

use crate::raw;
use crate::shared::Shared;

mod wait;
pub use wait::{
    blocked_ticks, track_blocked, wait, wait_for, wait_for_until, wait_until, without_upcalls,
};

/// An event port of this domain (`EVT-0`: `1 .. NR_PORTS`).
///
/// The number is not checked here; the hypervisor refuses bad ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

impl Port {
    /// The port number.
    pub const fn number(self) -> u32 {
        self.0
    }

    /// `(word, bit)` in the bitmaps, if the port is in range.
    fn position(self) -> Option<(usize, u64)> {
        let p = usize::try_from(self.0).ok().filter(|&p| p < NR_PORTS)?;
        Some((p / 64, 1u64 << (p % 64)))
    }

    fn from_result(v: u64) -> Port {
        // EVT-1/2/3 return a port < NR_PORTS.
        Port(u32::try_from(v).unwrap_or(u32::MAX))
    }
}

impl core::fmt::Display for Port {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// A domain id, as used by the event calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DomId(pub u16);

impl DomId {
    /// The calling domain (`DOMID_SELF`).
    pub const SELF: DomId = DomId(DOMID_SELF_U16);
}

/// [`DOMID_SELF`] as a domain id, checked at compile time.
const DOMID_SELF_U16: u16 = {
    assert!(DOMID_SELF <= u16::MAX as u64);
    #[allow(clippy::cast_possible_truncation)] // checked just above
    let d = DOMID_SELF as u16;
    d
};

/// The channel named `name` in this domain's start info (`EVT-7`): declared
/// in the scenario manifest (`[[channel]] name = "ping" ends = ["a", "b"]`)
/// and connected by the hypervisor before either end ran, so its port is
/// ready and the peer exists: send at once, set a handler, [`wait_for`] the
/// peer's events. `None` if the manifest gave this domain no such channel.
///
/// No domain id or port number is written anywhere in the guest, and there
/// is nothing to retry: an event sent before the peer waits for it is held
/// pending until it does (`EVT-0a`).
pub fn channel(name: &str) -> Option<crate::start::Channel<'static>> {
    crate::start::start_info().channel(name)
}

/// Allocates a port that only `remote` may bind to (`EVT-1`).
pub fn alloc_unbound(remote: DomId) -> Result<Port, Error> {
    raw::invoke(&event::AllocUnbound {
        remote: remote.0.into(),
    })
    .map(Port::from_result)
}

/// Binds a new local port to `remote_port` of `remote`, which must have
/// been offered to this domain (`EVT-2`).
pub fn bind_interdomain(remote: DomId, remote_port: Port) -> Result<Port, Error> {
    raw::invoke(&event::BindInterdomain {
        remote: remote.0.into(),
        remote_port: remote_port.0.into(),
    })
    .map(Port::from_result)
}

/// Binds a new local port to a virtual interrupt (`EVT-3`).
pub fn bind_virq(virq: Virq) -> Result<Port, Error> {
    raw::invoke(&event::BindVirq { virq }).map(Port::from_result)
}

/// Raises the event on the peer of `port` (`EVT-4`).
///
/// Inline: at the call site it is the number and the port in their
/// registers, the unused arguments zeroed (`CALL-1b`), the `syscall` and
/// one sign test of the result (`CALL-2`); the error's decoding is out of
/// line (`hypercall_abi::regs::decode`).
#[inline]
pub fn send(port: Port) -> Result<(), Error> {
    raw::invoke(&event::Send { port: port.0 }).map(drop)
}

/// Closes `port` (`EVT-5`); its handler is removed too.
pub fn close(port: Port) -> Result<(), Error> {
    raw::invoke(&event::Close { port: port.0 })?;
    clear_handler(port);
    Ok(())
}

/// Clears `port`'s mask bit and has it delivered if pending (`EVT-6`).
pub fn unmask(port: Port) -> Result<(), Error> {
    // The upcall scans only the words named in `pending_sel`. A port that
    // stayed pending while masked was skipped by an earlier scan that also
    // cleared its word's selector bit, so name the word again before the
    // hypervisor delivers it (harmless if it does so itself, EVT-0e).
    if let Some((word, bit)) = port.position() {
        let sh = Shared::get();
        if sh.pending(word).load(Ordering::Acquire) & bit != 0 {
            sh.pending_sel().fetch_or(1 << word, Ordering::AcqRel);
        }
    }
    raw::invoke(&event::Unmask { port: port.0 }).map(drop)
}

/// Sets `port`'s mask bit: its events stay pending and neither wake the
/// domain nor run its handler until [`unmask`] (`EVT-0d`). No hypercall.
/// Out-of-range ports are ignored.
pub fn mask(port: Port) {
    if let Some((word, bit)) = port.position() {
        Shared::get().mask(word).fetch_or(bit, Ordering::AcqRel);
    }
}

/// Whether `port` is masked.
pub fn is_masked(port: Port) -> bool {
    port.position()
        .is_some_and(|(w, bit)| Shared::get().mask(w).load(Ordering::Acquire) & bit != 0)
}

/// Whether `port` has an event not yet handled.
pub fn is_pending(port: Port) -> bool {
    port.position()
        .is_some_and(|(w, bit)| Shared::get().pending(w).load(Ordering::Acquire) & bit != 0)
}

/// Clears `port`'s pending bit and says whether it was set: the event, if
/// one came, is taken (`EVT-0`). No hypercall. For a domain that runs
/// with upcalls off (or `port` masked, `EVT-0d`) and looks at its ports
/// itself, sleeping in [`crate::sched::block`] or polling with
/// [`crate::sched::yield_now`] between looks:
///
/// ```text
/// while !event::take_pending(port) {
///     sched::block(NO_DEADLINE);
/// }
/// ```
///
/// One atomic read-modify-write of the pending word (the hypervisor sets
/// bits in it at any time, `TRAP-4`). With upcalls on, the SDK's upcall
/// takes pending bits itself (`EVT-0c`): use handlers and [`wait_for`]
/// there instead. Out-of-range ports are never pending.
#[inline]
pub fn take_pending(port: Port) -> bool {
    port.position().is_some_and(|(w, bit)| {
        Shared::get().pending(w).fetch_and(!bit, Ordering::AcqRel) & bit != 0
    })
}

/// An event handler: called in upcall context with the port that fired.
pub type Handler = fn(Port);

/// The handler table: one atomic word per port, null for none, else a
/// [`Handler`] that [`set_slot`] stored. A slot is written with one store
/// and read with one load, so an upcall that interrupts `set_handler` or
/// `clear_handler` finds the old handler or the new one, never half of
/// either, and needs no lock (a `spin` lock here cost every dispatch a
/// locked `cmpxchg` and a release store, and made setting a handler mask
/// upcalls around it).
static HANDLERS: [AtomicPtr<()>; NR_PORTS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; NR_PORTS];

/// The handler in slot `i` of [`HANDLERS`], if any (none out of range).
#[allow(unsafe_code)]
#[inline(always)]
fn handler(i: usize) -> Option<Handler> {
    let p = HANDLERS.get(i)?.load(Ordering::Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: every non-null value in `HANDLERS` is a `Handler` that
    // `set_slot` converted to a pointer (the only store of a non-null
    // value); converting it back gives that same function pointer.
    Some(unsafe { core::mem::transmute::<*mut (), Handler>(p) })
}

/// Set at every event upcall; consumed by [`wait`] (a park token).
pub(crate) static WOKEN: AtomicBool = AtomicBool::new(false);

/// Host tests that use the one wake-up token take this first.
#[cfg(test)]
pub(crate) fn tests_token_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Calls `handler` for every event on `port` from now on (replacing any
/// previous handler). Out-of-range ports are ignored.
///
/// To not miss an event that arrives between binding a port and setting
/// its handler, do both inside [`without_upcalls`].
pub fn set_handler(port: Port, handler: Handler) {
    set_slot(port, Some(handler));
}

/// Removes `port`'s handler; its events are then cleared and dropped.
pub fn clear_handler(port: Port) {
    set_slot(port, None);
}

fn set_slot(port: Port, slot: Option<Handler>) {
    if let Some(h) = usize::try_from(port.0).ok().and_then(|i| HANDLERS.get(i)) {
        h.store(
            slot.map_or(core::ptr::null_mut(), |f| f as *mut ()),
            Ordering::Release,
        );
    }
}

/// Binds `virq` and sets its handler with no window in between.
pub fn bind_virq_with(virq: Virq, handler: Handler) -> Result<Port, Error> {
    without_upcalls(|| {
        let port = bind_virq(virq)?;
        set_handler(port, handler);
        Ok(port)
    })
}

/// The event upcall's work (`TRAP-0a`, `EVT-0c`): runs the handlers of the
/// pending, unmasked ports. Called by the event entry with upcalls masked.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) fn dispatch() {
    scan(&Shared::get(), |port| match handler(port.0 as usize) {
        Some(h) => h(port),
        None => no_handler(port),
    });
    WOKEN.store(true, Ordering::Release);
}

/// An event on a port with no handler: dropped (out of line, so that the
/// log's arguments cost the dispatch nothing).
#[cold]
#[inline(never)]
fn no_handler(port: Port) {
    log::trace!("event on {port} with no handler, dropped");
}

/// The words of `pending_sel` that name a bitmap word (`PORT_WORDS` bits).
const SEL_WORDS: u64 = if PORT_WORDS >= 64 {
    u64::MAX
} else {
    (1 << PORT_WORDS) - 1
};

/// The scan: clear `upcall_pending`, swap `pending_sel` with 0, and for
/// each word it names (ascending), each pending and unmasked bit
/// (ascending): clear the bit atomically, then call `handle`. Repeats
/// while the hypervisor has raised more meanwhile, which it says by
/// setting `upcall_pending` again (EVT-0: every raise that sets a
/// selector bit sets it too, after the bit). Masked ports stay pending.
/// Returns the number of events handled.
///
/// Inline (into [`dispatch`]): the loops are the selector's and the
/// word's set bits, lowest first (`trailing_zeros`, then clear it), the
/// selector's bits beyond the bitmap dropped once per pass. The test for
/// another pass is one load of `upcall_pending`, not a second swap of the
/// selector: a raise after the flag was cleared sets it again, and one
/// before left its selector bit for the swap that followed.
#[inline(always)]
pub(crate) fn scan(sh: &Shared, mut handle: impl FnMut(Port)) -> usize {
    let mut handled = 0;
    loop {
        sh.upcall_pending().store(0, Ordering::Release);
        let mut sel = sh.pending_sel().swap(0, Ordering::AcqRel) & SEL_WORDS;
        if sel == 0 {
            return handled;
        }
        while sel != 0 {
            // Below PORT_WORDS: `sel` has no bit at or above it.
            let word = sel.trailing_zeros() as usize;
            sel &= sel - 1;
            let pending = sh.pending(word);
            let mut ready =
                pending.load(Ordering::Acquire) & !sh.mask(word).load(Ordering::Acquire);
            while ready != 0 {
                let bit = ready.trailing_zeros();
                ready &= ready - 1;
                let b = 1u64 << bit;
                // Clear before handling (EVT-0c); skip if someone else
                // (a nested upcall) already took it.
                if pending.fetch_and(!b, Ordering::AcqRel) & b != 0 {
                    handled += 1;
                    // word < PORT_WORDS and bit < 64: below NR_PORTS,
                    // which fits a u32.
                    #[allow(clippy::cast_possible_truncation)]
                    handle(Port((word * 64) as u32 | bit));
                }
            }
        }
        if sh.upcall_pending().load(Ordering::Acquire) == 0 {
            return handled;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::test_page;
    use std::vec::Vec;

    fn raise(sh: &Shared, port: u32) {
        let (w, b) = Port(port).position().unwrap();
        sh.pending(w).fetch_or(b, Ordering::SeqCst);
        sh.pending_sel().fetch_or(1 << w, Ordering::SeqCst);
        sh.upcall_pending().store(1, Ordering::SeqCst);
    }

    #[test]
    fn scans_in_ascending_port_order() {
        let sh = test_page();
        for p in [700, 3, 64, 1023, 63, 1, 130] {
            raise(&sh, p);
        }
        let mut seen = Vec::new();
        let n = scan(&sh, |p| seen.push(p.0));
        assert_eq!(seen, [1, 3, 63, 64, 130, 700, 1023]);
        assert_eq!(n, 7);
        assert_eq!(sh.pending_sel().load(Ordering::SeqCst), 0);
        assert_eq!(sh.upcall_pending().load(Ordering::SeqCst), 0);
        for w in 0..PORT_WORDS {
            assert_eq!(sh.pending(w).load(Ordering::SeqCst), 0);
        }
    }

    #[test]
    fn clears_the_bit_before_the_handler_runs() {
        let sh = test_page();
        raise(&sh, 5);
        scan(&sh, |p| {
            let (w, b) = p.position().unwrap();
            assert_eq!(sh.pending(w).load(Ordering::SeqCst) & b, 0);
        });
    }

    #[test]
    fn a_raise_during_the_handler_is_seen_again() {
        let sh = test_page();
        raise(&sh, 9);
        let mut seen = Vec::new();
        scan(&sh, |p| {
            if seen.is_empty() {
                raise(&sh, 9);
                raise(&sh, 2);
            }
            seen.push(p.0);
        });
        assert_eq!(seen, [9, 2, 9]);
    }

    #[test]
    fn masked_ports_stay_pending() {
        let sh = test_page();
        raise(&sh, 70);
        raise(&sh, 71);
        let (w, b) = Port(70).position().unwrap();
        sh.mask(w).fetch_or(b, Ordering::SeqCst);
        let mut seen = Vec::new();
        scan(&sh, |p| seen.push(p.0));
        assert_eq!(seen, [71]);
        assert_eq!(sh.pending(w).load(Ordering::SeqCst), b);
    }

    #[test]
    fn only_named_words_are_scanned() {
        let sh = test_page();
        raise(&sh, 200);
        // Pending without its selector bit: not the hypervisor's protocol,
        // so not scanned.
        sh.pending(0).fetch_or(1 << 4, Ordering::SeqCst);
        // Selector bits beyond the bitmap are ignored, not a panic.
        sh.pending_sel().fetch_or(1 << 40, Ordering::SeqCst);
        let mut seen = Vec::new();
        scan(&sh, |p| seen.push(p.0));
        assert_eq!(seen, [200]);
    }

    #[test]
    fn nothing_pending_is_nothing_handled() {
        let sh = test_page();
        assert_eq!(scan(&sh, |_| panic!("no event")), 0);
    }

    #[test]
    fn take_pending_takes_the_bit_once_and_only_its_own() {
        let sh = crate::fake::shared();
        raise(&sh, 70);
        raise(&sh, 71);
        assert!(take_pending(Port(70)));
        // Taken: a second look finds nothing, and the neighbour is still
        // pending (only the port's own bit is cleared).
        assert!(!take_pending(Port(70)));
        assert!(is_pending(Port(71)));
        assert!(take_pending(Port(71)));
        assert!(!take_pending(Port(5)));
        // Out of range: never pending, nothing touched.
        raise(&sh, 1023);
        assert!(!take_pending(Port(1024)));
        assert!(!take_pending(Port(u32::MAX)));
        assert!(is_pending(Port(1023)));
    }

    #[test]
    fn out_of_range_ports_have_no_position() {
        assert_eq!(Port(1024).position(), None);
        assert_eq!(Port(u32::MAX).position(), None);
        assert_eq!(Port(1023).position(), Some((15, 1 << 63)));
    }

    /// The last handler call: `1_000_000 + port` for `record_a`,
    /// `2_000_000 + port` for `record_b` (tests that use it hold the
    /// token lock).
    static LAST: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
    fn record_a(p: Port) {
        LAST.store(1_000_000 + p.0, Ordering::SeqCst);
    }
    fn record_b(p: Port) {
        LAST.store(2_000_000 + p.0, Ordering::SeqCst);
    }
    /// Calls `h` and says which of the two it was.
    fn which(h: Handler) -> u32 {
        LAST.store(0, Ordering::SeqCst);
        h(Port(1));
        LAST.load(Ordering::SeqCst)
    }

    #[test]
    fn dispatch_calls_the_slot_as_set_replaced_and_cleared() {
        let _t = tests_token_lock();
        let sh = Shared::get();
        let port = Port(777);
        let (w, b) = port.position().unwrap();
        set_handler(port, record_a);
        raise(&sh, 777);
        WOKEN.store(false, Ordering::SeqCst);
        LAST.store(0, Ordering::SeqCst);
        dispatch();
        assert_eq!(LAST.swap(0, Ordering::SeqCst), 1_000_777);
        assert!(WOKEN.swap(false, Ordering::SeqCst), "the token is set");
        assert_eq!(sh.pending(w).load(Ordering::SeqCst) & b, 0);
        // Replaced: only the new handler runs.
        set_handler(port, record_b);
        raise(&sh, 777);
        dispatch();
        assert_eq!(LAST.swap(0, Ordering::SeqCst), 2_000_777);
        // Cleared: the event is taken and dropped, no handler runs.
        clear_handler(port);
        raise(&sh, 777);
        dispatch();
        assert_eq!(LAST.load(Ordering::SeqCst), 0);
        assert_eq!(sh.pending(w).load(Ordering::SeqCst) & b, 0);
        assert!(WOKEN.swap(false, Ordering::SeqCst));
    }

    #[test]
    fn handler_slots_are_per_port_and_out_of_range_is_ignored() {
        let _t = tests_token_lock();
        set_handler(Port(778), record_a);
        assert_eq!(handler(778).map(which), Some(1_000_001));
        assert!(handler(779).is_none());
        set_handler(Port(1024), record_a);
        set_handler(Port(u32::MAX), record_a);
        assert!(handler(1024).is_none());
        assert!(handler(usize::MAX).is_none());
        clear_handler(Port(778));
        assert!(handler(778).is_none());
    }

    #[test]
    fn a_slot_changed_under_a_reader_is_the_old_or_the_new_handler() {
        let _t = tests_token_lock();
        // One thread flips the slot while this one reads and calls it:
        // every read is a whole handler (one of the two), never none.
        set_handler(Port(780), record_a);
        let flipper = std::thread::spawn(|| {
            for i in 0..20_000 {
                set_handler(Port(780), if i % 2 == 0 { record_b } else { record_a });
            }
        });
        for _ in 0..20_000 {
            let h = handler(780).expect("a handler is always set");
            assert!(matches!(which(h), 1_000_001 | 2_000_001));
        }
        flipper.join().unwrap();
        clear_handler(Port(780));
    }
}
