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

/// The hypercall slow entry: takes the frame the `syscall` stub completed
/// (its `rax` is the call number, or the result of a call the fast path
/// ran) and the stage the fast path stopped at (`SLOW_*`).
pub type SlowEntry = extern "C" fn(*mut TrapFrame, u64);

/// Slow-entry stage: the fast path ran nothing (the frame's `rax` is the
/// call number); count, dispatch and leave.
pub const SLOW_FROM_START: u64 = 1;
/// Slow-entry stage: the fast path ran the call and its result is in the
/// frame's `rax`; only the way back (`Hv::leave`) remains.
pub const SLOW_LEAVE: u64 = 3;

/// The kernel's entries.
#[derive(Clone, Copy)]
pub struct Entries {
    /// `syscall` from 64-bit mode, when the fast path (the stub and the
    /// call's fast handler, `super::syscall`) does not finish it.
    pub hypercall_slow: SlowEntry,
    /// `sysenter`, or `syscall` from compatibility mode.
    pub foreign: Entry,
    /// An exception or interrupt.
    pub trap: Entry,
}

// One slot per entry, each holding the address of an `Entry`. The stubs
// read them with `call *SLOT(%rip)`; 0 until `register` runs.
#[no_mangle]
pub(super) static TAHOMA_HYPERCALL_SLOW_ENTRY: AtomicUsize = AtomicUsize::new(0);
#[no_mangle]
pub(super) static TAHOMA_FOREIGN_ENTRY: AtomicUsize = AtomicUsize::new(0);
#[no_mangle]
pub(super) static TAHOMA_TRAP_ENTRY: AtomicUsize = AtomicUsize::new(0);

/// Registers the kernel's entries. Call once, before the IDT and the
/// `syscall` MSRs are loaded (an entry taken before would call address 0).
pub fn register(e: Entries) {
    TAHOMA_HYPERCALL_SLOW_ENTRY.store(e.hypercall_slow as usize, Ordering::Release);
    TAHOMA_FOREIGN_ENTRY.store(e.foreign as usize, Ordering::Release);
    TAHOMA_TRAP_ENTRY.store(e.trap as usize, Ordering::Release);
}

/// Whether [`register`] has run.
pub fn registered() -> bool {
    TAHOMA_HYPERCALL_SLOW_ENTRY.load(Ordering::Acquire) != 0
        && TAHOMA_FOREIGN_ENTRY.load(Ordering::Acquire) != 0
        && TAHOMA_TRAP_ENTRY.load(Ordering::Acquire) != 0
}
