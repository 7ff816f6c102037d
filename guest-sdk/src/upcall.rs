//! The two control-transfer calls (`TRAP-1`, `TRAP-2`).
//!
//! The SDK registers its own entries at start ([`crate::trap::set_handler`]
//! adds the trap entry) and returns from its upcalls itself, so guests do
//! not normally call these. They are `unsafe` because they make the CPU run
//! code, on a stack, or in a context that Rust cannot check.
#![allow(unsafe_code)]

use hypercall_abi::layout::UpcallFrame;
use hypercall_abi::{trap, Error};

use crate::raw;

/// Size of the callback stack the hypervisor assumes below the registered
/// top (`TRAP-0`), from the ABI.
pub const CALLBACK_STACK_SIZE: usize =
    crate::usize_const(hypercall_abi::layout::CALLBACK_STACK_SIZE);

/// Registers the event entry, the trap entry (0 disables either) and the
/// callback stack top (`TRAP-1`).
///
/// # Safety
///
/// A nonzero entry must be code that follows the entry protocol of
/// `TRAP-0` (entered with `rsp` = `rdi` = an `UpcallFrame`, never returns,
/// ends with `upcall_return` or `shutdown`), and `[stack_top -
/// CALLBACK_STACK_SIZE, stack_top)` must be writable memory used for
/// nothing else, for as long as the registration stands.
pub unsafe fn set_callbacks(
    event_entry: u64,
    trap_entry: u64,
    stack_top: u64,
) -> Result<(), Error> {
    // SAFETY: `invoke_unchecked` needs the entries and stack of a
    // `set_callbacks` to be valid to run: this function's `# Safety` puts
    // exactly that on its caller.
    unsafe {
        raw::invoke_unchecked(&trap::SetCallbacks {
            event: event_entry,
            trap: trap_entry,
            stack: stack_top,
        })
    }
    .map(drop)
}

/// Resumes the context in `frame` (`TRAP-2`). Returns only on failure.
///
/// # Safety
///
/// `frame` must describe a context that is valid to resume: normally the
/// frame the hypervisor pushed for the current upcall, unchanged or with
/// `rip`/registers edited to a state the interrupted code can continue from.
/// Everything on the callback stack at or below the frame is dead afterwards.
#[inline]
pub unsafe fn upcall_return(frame: *const UpcallFrame) -> Error {
    // SAFETY: `invoke_unchecked` needs the frame of an `upcall_return` to be
    // valid to resume: this function's `# Safety` puts exactly that on its
    // caller.
    match unsafe {
        raw::invoke_unchecked(&trap::UpcallReturn {
            frame: frame as u64,
        })
    } {
        Err(e) => e,
        // TRAP-2: success does not return; a return with a success value
        // is a hypervisor bug, reported as such.
        Ok(_) => Error::WrongState,
    }
}
