//! The x86_64 glue, in assembly: the ELF entry `_start`, the event entry and
//! the trap entry, plus `rdtsc`. The only place that knows which register
//! holds what at an entry.
//!
//! Entry states (from the hypervisor):
//!
//! * `_start` (`MEM-3`): `rdi` = start-info address, `rsp` = top of the
//!   initial stack (16-byte aligned), all other registers 0, ring 3.
//! * the event and trap entries (`TRAP-0`): `rsp` = `rdi` = the address of
//!   the `UpcallFrame` just pushed (16-byte aligned) on the callback stack;
//!   the frame holds the complete interrupted context, so the entries may
//!   clobber every register. They never return: the Rust side ends with
//!   `upcall_return` or `shutdown`.
#![allow(unsafe_code)]

use hypercall_abi::layout::UpcallFrame;

use crate::sched::{self, ShutdownReason};
use crate::trap::{self, TrapAction};
use crate::{console, event, upcall};

// The upcall entries below call Rust as they are entered: TRAP-0 fixes the
// entry state the System V ABI needs (`rflags` is IF only, so DF and AC
// are clear, whatever the interrupted context had; `rsp` = `rdi` = the
// frame, 16-byte aligned, so the `call` leaves the callee's stack aligned
// as a call does), and the TRAP-0 conformance test checks both.

core::arch::global_asm!(
    // _start: terminate the frame-pointer chain, keep rdi (the start-info
    // address) as the first argument, align the stack for the call.
    ".pushsection .text._start, \"ax\", @progbits",
    ".globl _start",
    ".type _start, @function",
    "_start:",
    "    xor ebp, ebp",
    "    and rsp, -16",
    "    call {start}",
    "    ud2",
    ".size _start, . - _start",
    ".popsection",
    // The event entry.
    ".pushsection .text.__tahoma_event_entry, \"ax\", @progbits",
    ".globl __tahoma_event_entry",
    ".type __tahoma_event_entry, @function",
    "__tahoma_event_entry:",
    "    xor ebp, ebp",
    "    mov rdi, rsp",
    "    call {event}",
    "    ud2",
    ".size __tahoma_event_entry, . - __tahoma_event_entry",
    ".popsection",
    // The trap entry.
    ".pushsection .text.__tahoma_trap_entry, \"ax\", @progbits",
    ".globl __tahoma_trap_entry",
    ".type __tahoma_trap_entry, @function",
    "__tahoma_trap_entry:",
    "    xor ebp, ebp",
    "    mov rdi, rsp",
    "    call {trap}",
    "    ud2",
    ".size __tahoma_trap_entry, . - __tahoma_trap_entry",
    ".popsection",
    start = sym crate::rt::start,
    event = sym event_upcall,
    trap = sym trap_upcall,
);

unsafe extern "C" {
    /// The event entry (assembly above). Never called from Rust: only its
    /// address is taken.
    fn __tahoma_event_entry();
    /// The trap entry (assembly above). Never called from Rust.
    fn __tahoma_trap_entry();
}

/// Address of the event entry, for `set_callbacks`.
pub(crate) fn event_entry() -> u64 {
    __tahoma_event_entry as *const () as u64
}

/// Address of the trap entry, for `set_callbacks`.
pub(crate) fn trap_entry() -> u64 {
    __tahoma_trap_entry as *const () as u64
}

/// The Rust half of the event entry: run the handlers, then resume.
extern "C" fn event_upcall(frame: *mut UpcallFrame) -> ! {
    event::dispatch();
    // SAFETY: `frame` is the frame the hypervisor pushed for this upcall
    // (the entry passes rsp at entry), unchanged; resuming it continues the
    // interrupted code exactly (TRAP-2).
    let e = unsafe { upcall::upcall_return(frame) };
    panic!("upcall_return from the event entry failed: {e}");
}

/// The Rust half of the trap entry: run the guest's trap handler, then
/// resume the (possibly edited) frame or crash.
extern "C" fn trap_upcall(frame: *mut UpcallFrame) -> ! {
    // SAFETY: TRAP-0: the hypervisor wrote a complete, 16-byte aligned
    // `UpcallFrame` at rsp on the callback stack before entering; it is
    // plain data, and nothing else refers to it until `upcall_return`.
    let fr = unsafe { &mut *frame };
    match trap::dispatch(fr) {
        TrapAction::Resume => {
            let fr: *const UpcallFrame = fr;
            // SAFETY: the frame the hypervisor pushed, as the guest's trap
            // handler left it; its contract (`TrapHandler`) is to point the
            // context somewhere that can continue.
            let e = unsafe { upcall::upcall_return(fr) };
            panic!("upcall_return from the trap entry failed: {e}");
        }
        TrapAction::Crash => {
            let _ = console::write_str("fatal trap: ");
            crate::println!("{}", trap::Report(fr));
            sched::shutdown(ShutdownReason::Crash, 1)
        }
    }
}

/// Reads the TSC, ordered after earlier loads (`lfence`), as pvclock does.
#[inline(always)]
pub(crate) fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: `lfence` and `rdtsc` touch no memory and are allowed in ring 3
    // (TIME-0); rdtsc writes only edx:eax.
    unsafe {
        core::arch::asm!(
            "lfence",
            "rdtsc",
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        );
    }
    (u64::from(hi) << 32) | u64::from(lo)
}
