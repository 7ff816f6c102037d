//! Scheduling (`SCHED-1`..`SCHED-3`): yield, block, shutdown.
#![forbid(unsafe_code)]

pub use hypercall_abi::args::{BlockResult, ShutdownReason, NO_DEADLINE};
use hypercall_abi::sched;

use crate::raw;

/// Gives up the rest of the time slice (`SCHED-1`). Inline: the call is
/// its number and the `syscall` (no argument registers set, `CALL-1b`;
/// the result, always 0, not decoded).
#[inline]
pub fn yield_now() {
    // SCHED-1: never fails.
    raw::invoke_ignored(&sched::Yield {});
}

/// [`block`] with no deadline, its result not looked at: it can only be
/// an event (or a spurious return, which a caller that re-checks its
/// condition absorbs), never `Deadline`, and `block` never fails
/// (`SCHED-2d`). The `syscall` and its one argument, nothing else.
#[inline]
pub fn block_forever() {
    raw::invoke_ignored(&sched::Block {
        deadline_ns: NO_DEADLINE,
    });
}

/// Sleeps until an unmasked event is pending or `deadline_ns` (monotonic,
/// [`crate::time::now_ns`]) passes; [`NO_DEADLINE`] for none (`SCHED-2`).
///
/// Clears `upcall_mask` atomically with going to sleep (`SCHED-2a`), so the
/// event handlers of whatever woke the domain run right after it returns
/// (`SCHED-2c`). Most guests want [`crate::event::wait`] or
/// [`crate::time::sleep_ns`] instead.
///
/// Inline: a caller that ignores the result (it re-checks its condition)
/// pays for the `syscall` and its arguments only.
#[inline]
pub fn block(deadline_ns: u64) -> BlockResult {
    match raw::invoke(&sched::Block { deadline_ns }) {
        Ok(1) => BlockResult::Deadline,
        // SCHED-2d: never fails. Anything but "deadline" is treated as an
        // event, since a spurious wake-up is always safe for callers that
        // re-check their condition.
        _ => BlockResult::Event,
    }
}

/// Ends the domain (`SCHED-3`): `code` 0 is success (meaningful with
/// [`ShutdownReason::Poweroff`]). Negative codes are sign-extended.
pub fn shutdown(reason: ShutdownReason, code: i32) -> ! {
    let code = i64::from(code).cast_unsigned();
    let _ = raw::invoke(&sched::Shutdown { reason, code });
    // Only an undefined reason returns (SCHED-3a), and `reason` is typed;
    // if the hypervisor returns anyway, insist, then idle.
    loop {
        let _ = raw::invoke(&sched::Shutdown {
            reason: ShutdownReason::Crash,
            code,
        });
        block(NO_DEADLINE);
    }
}
