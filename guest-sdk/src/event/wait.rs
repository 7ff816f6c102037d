//! Masking upcalls and waiting for events (`SCHED-2`, `TRAP-0a`): the
//! guest's `cli`, the park token the event upcall sets, the waits built on
//! `block`, and the optional count of blocked time. Re-exported by
//! [`crate::event`]; the waits' contract is described there.

use core::sync::atomic::{AtomicBool, Ordering};

use hypercall_abi::args::{BlockResult, NO_DEADLINE};

use super::WOKEN;
use crate::raw;
use crate::sched;
use crate::shared::Shared;

/// Runs `f` with event upcalls masked (the guest's `cli`; `TRAP-0a`), then
/// restores the previous state; an upcall that became pending meanwhile is
/// delivered on the way out. Nests.
pub fn without_upcalls<R>(f: impl FnOnce() -> R) -> R {
    let sh = Shared::get();
    let was_masked = mask_upcalls(&sh);
    let r = f();
    restore_upcalls(&sh, was_masked);
    r
}

/// Masks upcalls; returns whether they were already masked.
///
/// A load, then a store if it was clear, not a swap: the domain has one
/// vCPU, and the only thing that can run between the two is an event
/// upcall, which finds the mask clear and returns with it clear again
/// (TRAP-2), so the store masks exactly as the swap would (as Xen PV
/// guests save and set their `evtchn_upcall_mask`).
#[inline]
pub(crate) fn mask_upcalls(sh: &Shared) -> bool {
    let mask = sh.upcall_mask();
    if mask.load(Ordering::Acquire) != 0 {
        return true;
    }
    mask.store(1, Ordering::Release);
    false
}

/// Restores the state saved by [`mask_upcalls`].
#[inline]
pub(crate) fn restore_upcalls(sh: &Shared, was_masked: bool) {
    if was_masked {
        return;
    }
    sh.upcall_mask().store(0, Ordering::Release);
    if sh.upcall_pending().load(Ordering::Acquire) != 0 {
        // An event arrived while masked: clearing the byte does not enter
        // the hypervisor, so make a harmless hypercall; the upcall is
        // delivered on its return to ring 3 (TRAP-0).
        let _ = raw::invoke(&hypercall_abi::base::AbiVersion {});
    }
}

/// Sleeps until an event upcall has run since the last `wait` returned
/// (returns at once if one has). Like a park token: an event that arrives
/// just before the call is not lost, and spurious returns are possible, so
/// re-check your condition in a loop (or use [`wait_for`]).
#[inline]
pub fn wait() {
    wait_until(NO_DEADLINE);
}

/// [`wait`] with a deadline (monotonic ns): `Event` when an upcall ran,
/// `Deadline` when the deadline passed first. Inline (with [`wait`]), so
/// that a [`wait_for`] loop pays no call for it; a caller that has upcalls
/// masked takes the out-of-line `wait_until_masked`.
#[inline]
pub fn wait_until(deadline_ns: u64) -> BlockResult {
    let sh = Shared::get();
    // Check the token with upcalls masked, then block: `block` unmasks
    // atomically with sleeping (SCHED-2a) and returns at once if an event
    // came in between (SCHED-2b), so no wake-up falls between the check
    // and the sleep.
    if mask_upcalls(&sh) {
        return wait_until_masked(deadline_ns);
    }
    loop {
        // Masked here; the caller had upcalls unmasked.
        if WOKEN.swap(false, Ordering::AcqRel) {
            restore_upcalls(&sh, false);
            return BlockResult::Event;
        }
        // `block` leaves upcalls unmasked, as the caller had them.
        if timed_block(deadline_ns) == BlockResult::Deadline {
            return BlockResult::Deadline;
        }
        // The upcall has run (SCHED-2c) and set the token: take it without
        // masking again; nothing is left to deliver (an upcall that comes
        // now runs as it would after the return).
        if WOKEN.swap(false, Ordering::AcqRel) {
            return BlockResult::Event;
        }
        // A spurious wake-up (no token): mask and look again.
        mask_upcalls(&sh);
    }
}

/// [`wait_until`] for a caller that has upcalls masked (and still has):
/// each `block` unmasks them, so mask them again after it, then take the
/// token the upcall set (`SCHED-2c`) on the next turn.
#[cold]
#[inline(never)]
fn wait_until_masked(deadline_ns: u64) -> BlockResult {
    let sh = Shared::get();
    loop {
        if WOKEN.swap(false, Ordering::AcqRel) {
            return BlockResult::Event;
        }
        let r = timed_block(deadline_ns);
        mask_upcalls(&sh);
        if r == BlockResult::Deadline {
            return BlockResult::Deadline;
        }
    }
}

/// [`block`], its time (and that of the upcalls that ran before it
/// returned) added to [`blocked_ticks`] while [`track_blocked`] is on.
/// Off (the default), the wait pays one test for it instead of two TSC
/// reads and the sum (12 instructions per `block`, a tenth of an event
/// round trip's guest share: docs/bench-history/issue-13-fast-paths.md, "SDK upcalls, round
/// 10, the guest's share").
#[inline(always)]
fn timed_block(deadline_ns: u64) -> BlockResult {
    if !TRACK_BLOCKED.load(Ordering::Relaxed) {
        return block(deadline_ns);
    }
    let t0 = ticks();
    let r = block(deadline_ns);
    BLOCKED_TICKS.fetch_add(ticks().saturating_sub(t0), Ordering::Relaxed);
    r
}

/// The TSC for [`blocked_ticks`], read without the `lfence` of
/// [`crate::time::rdtsc`]: a count of blocked time needs no ordering
/// against the loads around it (host builds, the unit tests, have no
/// guest TSC: in the SDK's own tests each read on a thread is one more
/// than the last, so a counted `block` adds exactly 1; elsewhere it is 0).
#[allow(unsafe_code)]
#[inline(always)]
fn ticks() -> u64 {
    #[cfg(target_os = "none")]
    // SAFETY: `_rdtsc` needs `rdtsc` to be allowed to run: it is in ring 3
    // (TIME-0: the hypervisor leaves CR4.TSD clear); it touches no memory.
    return unsafe { core::arch::x86_64::_rdtsc() };
    #[cfg(test)]
    return HOST_TICKS.with(|t| {
        t.set(t.get() + 1);
        t.get()
    });
    #[cfg(all(not(target_os = "none"), not(test)))]
    return 0;
}

#[cfg(test)]
std::thread_local! {
    static HOST_TICKS: core::cell::Cell<u64> = const { core::cell::Cell::new(0) };
}

/// Ticks this domain has spent blocked in [`wait`], [`wait_until`] and
/// [`wait_for`] while [`track_blocked`] was on (from just before each
/// `block` to just after it returned, so the upcalls that ran there are
/// included; 0 if it never was). A domain's own CPU work over an interval
/// is its length minus the growth of this: under `-icount` the emulator's
/// idle time warps fall inside the waits and drop out
/// (`docs/benchmarks-io.md`, "Virtual disks").
pub fn blocked_ticks() -> u64 {
    BLOCKED_TICKS.load(Ordering::Relaxed)
}

/// Switches the count of [`blocked_ticks`] on or off (off at start). Like
/// Linux's delay accounting (`delayacct`, off by default since 5.14 for
/// its cost on every sleep), it is for the guests that read the figure:
/// each counted `block` costs two TSC reads and an atomic add.
pub fn track_blocked(on: bool) {
    TRACK_BLOCKED.store(on, Ordering::Relaxed);
}

static BLOCKED_TICKS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static TRACK_BLOCKED: AtomicBool = AtomicBool::new(false);

/// [`sched::block`], its result looked at only with a deadline: with
/// [`NO_DEADLINE`] it returns for an event (or spuriously, which the
/// callers' loops absorb), never `Deadline` (`SCHED-2`, `SCHED-2d`), so
/// [`wait`] pays for the `syscall` and its arguments only.
#[inline(always)]
fn block(deadline_ns: u64) -> BlockResult {
    if deadline_ns == NO_DEADLINE {
        sched::block_forever();
        BlockResult::Event
    } else {
        sched::block(deadline_ns)
    }
}

/// Sleeps until `cond()` holds, re-checking after every event. Inline:
/// the caller's condition and the wait are then one loop, with no call.
///
/// The condition is its own token: it is checked once more with upcalls
/// masked before each `block` (an upcall that made it true before the mask
/// is seen there; one that comes after leaves an event pending, and `block`
/// returns at once, SCHED-2b), so the wake-up token of [`wait`] is neither
/// checked nor taken (it stays set for a later [`wait`], whose contract it
/// still describes: an upcall ran since that `wait` last returned).
#[inline(always)]
pub fn wait_for(mut cond: impl FnMut() -> bool) {
    if cond() {
        return;
    }
    let sh = Shared::get();
    if mask_upcalls(&sh) {
        return wait_for_masked(cond);
    }
    loop {
        // Masked here; the caller had upcalls unmasked.
        if cond() {
            restore_upcalls(&sh, false);
            return;
        }
        // `block` unmasks atomically with sleeping (SCHED-2a) and has run
        // the upcall when it returns for an event (SCHED-2c); with no
        // deadline it returns for nothing else but spuriously.
        timed_block(NO_DEADLINE);
        if cond() {
            return;
        }
        // Not yet (another port's event, or spurious): mask and look again.
        mask_upcalls(&sh);
    }
}

/// [`wait_for`] for a caller that has upcalls masked (and keeps them so):
/// as [`wait`] does for it (out of line, as [`wait_until_masked`] is).
#[cold]
#[inline(never)]
fn wait_for_masked(mut cond: impl FnMut() -> bool) {
    while !cond() {
        wait_until_masked(NO_DEADLINE);
    }
}

/// [`wait_for`] with a deadline: `true` if `cond()` held, `false` if the
/// deadline passed first.
pub fn wait_for_until(mut cond: impl FnMut() -> bool, deadline_ns: u64) -> bool {
    loop {
        if cond() {
            return true;
        }
        if wait_until(deadline_ns) == BlockResult::Deadline {
            return cond();
        }
    }
}
