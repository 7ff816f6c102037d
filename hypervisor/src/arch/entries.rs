//! The kernel's entry points, registered with `arch` once at boot.
//!
//! `arch` is a leaf: its entry stubs (`syscall`, `sysenter`, the trap
//! stubs) do not name any function above them. They call through this
//! table, which the kernel fills with [`register`] before any entry can be
//! taken. Each stub calls its slot with one indirect `call` (the same one
//! instruction a direct call costs), passing the frame it built.

use super::traps::TrapFrame;
use core::sync::atomic::{AtomicUsize, Ordering};

/// A kernel entry: takes the frame the stub built and may change it (the
/// stub returns to whatever context the frame then holds).
pub type Entry = extern "C" fn(&mut TrapFrame);

/// The kernel's entries.
#[derive(Clone, Copy)]
pub struct Entries {
    /// `syscall` from 64-bit mode: a hypercall.
    pub hypercall: Entry,
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
pub(super) static TAHOMA_FOREIGN_ENTRY: AtomicUsize = AtomicUsize::new(0);
#[no_mangle]
pub(super) static TAHOMA_TRAP_ENTRY: AtomicUsize = AtomicUsize::new(0);

/// Registers the kernel's entries. Call once, before the IDT and the
/// `syscall` MSRs are loaded (an entry taken before would call address 0).
pub fn register(e: Entries) {
    TAHOMA_HYPERCALL_ENTRY.store(e.hypercall as usize, Ordering::Release);
    TAHOMA_FOREIGN_ENTRY.store(e.foreign as usize, Ordering::Release);
    TAHOMA_TRAP_ENTRY.store(e.trap as usize, Ordering::Release);
}

/// Whether [`register`] has run.
pub fn registered() -> bool {
    TAHOMA_HYPERCALL_ENTRY.load(Ordering::Acquire) != 0
        && TAHOMA_FOREIGN_ENTRY.load(Ordering::Acquire) != 0
        && TAHOMA_TRAP_ENTRY.load(Ordering::Acquire) != 0
}
