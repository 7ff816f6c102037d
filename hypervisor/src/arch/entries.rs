//! The kernel's entry points, registered with `arch` once at boot.
//!
//! `arch` is a leaf: its entry stubs (`syscall`, `sysenter`, the trap
//! stubs) do not name any function above them. They call through this
//! table, which the kernel fills with [`register`] before any entry can be
//! taken. Each stub calls its slot with one indirect `call` (the same one
//! instruction a direct call costs), passing the frame it built.

use super::traps::TrapFrame;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A kernel entry: takes the frame the stub built (a raw pointer: from
/// ring 3 it is the running domain's own frame, which a switch inside the
/// entry may make another's current; see [`super::traps::set_guest_frame`])
/// and may change it. The stub leaves through the current domain's frame.
pub type Entry = extern "C" fn(*mut TrapFrame);

/// The hypercall fast entry: takes the partial frame the `syscall` stub
/// built (see [`super::syscall`]: the iret words `rip`, `rflags`, `rsp`,
/// and `rax` plus the six argument registers; nothing else is written) and
/// says how to leave.
pub type FastEntry = extern "C" fn(&mut TrapFrame) -> FastExit;

/// The hypercall slow entry: takes the frame the stub completed and the
/// [`FastExit::slow`] stage the fast entry stopped at.
pub type SlowEntry = extern "C" fn(*mut TrapFrame, u64);

/// What the fast entry tells the `syscall` stub (returned in `rax:rdx`).
#[repr(C)]
pub struct FastExit {
    /// The result word for the caller's `rax`. On the slow way the stub
    /// writes it into the frame's `rax` first (at [`SLOW_FROM_START`] it is
    /// the call number, unchanged), so that the fast entry needs the frame
    /// only until the call's handler returns.
    pub rax: u64,
    /// 0: return to the caller with `sysretq` (the call is done, nothing
    /// else to do); otherwise the stage for the slow entry (the stub
    /// completes the frame, calls the slow entry, leaves with `iretq`).
    pub slow: u64,
}

/// [`FastExit::slow`]: nothing done yet; count, dispatch and leave.
pub const SLOW_FROM_START: u64 = 1;
/// [`FastExit::slow`]: the call is done and its result is in
/// [`FastExit::rax`] (the stub puts it into the frame's `rax`); only the
/// way back (`Hv::leave`) remains.
pub const SLOW_LEAVE: u64 = 3;
/// [`FastExit::slow`]: the call replaced the whole frame (`upcall_return`,
/// TRAP-2: every register and iret word written, so the frame is complete
/// and the stub must not complete it); the way back (`Hv::leave`) remains.
/// [`FastExit::rax`] is ignored.
pub const SLOW_REPLACED: u64 = 4;
/// [`FastExit::slow`]: the call replaced the whole frame, as for
/// [`SLOW_REPLACED`], and nothing else is due: the stub leaves through
/// `trap_return` (`iretq`) at once.
pub const REPLACED: u64 = 5;

/// The kernel's entries.
#[derive(Clone, Copy)]
pub struct Entries {
    /// `syscall` from 64-bit mode: a hypercall, first try.
    pub hypercall: FastEntry,
    /// `syscall` from 64-bit mode, when the fast entry asks for the rest.
    pub hypercall_slow: SlowEntry,
    /// `sysenter`, or `syscall` from compatibility mode.
    pub foreign: Entry,
    /// An exception or interrupt.
    pub trap: Entry,
}

// One slot per entry, each holding the address of an `Entry`. The stubs
// read them with `call *SLOT(%rip)`; 0 until `register` runs.
#[no_mangle]
pub(super) static TAHOMA_HYPERCALL_ENTRY: AtomicUsize = AtomicUsize::new(0);
#[no_mangle]
pub(super) static TAHOMA_HYPERCALL_SLOW_ENTRY: AtomicUsize = AtomicUsize::new(0);
#[no_mangle]
pub(super) static TAHOMA_FOREIGN_ENTRY: AtomicUsize = AtomicUsize::new(0);
#[no_mangle]
pub(super) static TAHOMA_TRAP_ENTRY: AtomicUsize = AtomicUsize::new(0);

/// Registers the kernel's entries. Call once, before the IDT and the
/// `syscall` MSRs are loaded (an entry taken before would call address 0).
pub fn register(e: Entries) {
    TAHOMA_HYPERCALL_ENTRY.store(e.hypercall as usize, Ordering::Release);
    TAHOMA_HYPERCALL_SLOW_ENTRY.store(e.hypercall_slow as usize, Ordering::Release);
    TAHOMA_FOREIGN_ENTRY.store(e.foreign as usize, Ordering::Release);
    TAHOMA_TRAP_ENTRY.store(e.trap as usize, Ordering::Release);
}

/// Whether [`register`] has run.
pub fn registered() -> bool {
    TAHOMA_HYPERCALL_ENTRY.load(Ordering::Acquire) != 0
        && TAHOMA_HYPERCALL_SLOW_ENTRY.load(Ordering::Acquire) != 0
        && TAHOMA_FOREIGN_ENTRY.load(Ordering::Acquire) != 0
        && TAHOMA_TRAP_ENTRY.load(Ordering::Acquire) != 0
}
