//! The scheduling family (`SCHED-*`).
#![forbid(unsafe_code)]

use crate::domain::RunState;
use crate::hv::Exit;
use crate::hv::Hv;
use crate::hypercall::{EntryFrame, Outcome};
use crate::time;
use hypercall_abi::sched::{BlockResult, NO_DEADLINE};
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;
use tahoma_core::sched::TimerKind;

/// SCHED-1: gives up the rest of the slice when another domain can run.
/// Takes no argument (nothing to decode or refuse) and returns 0.
#[inline(always)]
pub(crate) fn yield_now(hv: &mut Hv, mut frame: EntryFrame) {
    frame.set_rax(0);
    if !hv.sched.runq.is_empty() {
        // The frame is not touched past this point (see `EntryFrame`).
        hv.switch_away_inline(true);
    }
}

/// SCHED-3: ends the caller; another domain runs.
pub(crate) fn shutdown(hv: &mut Hv, cur: DomId, a: abi::sched::Shutdown) -> Outcome {
    hv.destroy(cur, Exit::Shutdown(a.reason, a.code));
    hv.run_next();
    Outcome::Replaced
}

/// SCHED-2: idles until an unmasked event is pending or the deadline
/// passes. Its one argument, the deadline, takes any value (SCHED-2d):
/// nothing to decode or refuse. Without a deadline, inline and with no
/// call before the switch's (so the slow entry keeps nothing in
/// callee-saved registers); with one, out of line.
///
/// `uncounted` is 1 when the caller has not counted the call in
/// `Scheduler::calls` yet (the switch adds it to the domain's count with
/// the rest: one add instead of an increment the switch reads back).
#[inline(always)]
pub(crate) fn block(
    hv: &mut Hv,
    cur: DomId,
    deadline_ns: u64,
    mut frame: EntryFrame,
    uncounted: u64,
) {
    let Some(d) = hv.domains.get_mut(cur) else {
        hv.sched.calls += uncounted;
        return frame.set_rax(abi::regs::encode(Err(Error::NotFound)));
    };
    if d.shared.unmask_upcalls_then_any_pending() {
        hv.sched.calls += uncounted;
        return frame.set_rax(BlockResult::Event as u64);
    }
    if deadline_ns != NO_DEADLINE {
        hv.sched.calls += uncounted;
        return block_until(hv, cur, deadline_ns, frame);
    }
    // The result is written by the wake (`Hv::wake`), into this frame
    // while the domain is not running.
    d.state = RunState::Blocked;
    // `d` is the current domain (`cur`): stopped here, without a second
    // look-up. The frame is not touched past this point (see `EntryFrame`).
    hv.sched.stop(d, uncounted);
    hv.switch_next(cur, false);
}

/// [`block`] with a deadline: returns at once if it has passed (SCHED-2b),
/// else sleeps until it or an event.
#[inline(never)]
fn block_until(hv: &mut Hv, cur: DomId, deadline_ns: u64, mut frame: EntryFrame) {
    let at = time::ns_to_tsc(deadline_ns);
    if at <= time::now_tsc() {
        return frame.set_rax(BlockResult::Deadline as u64);
    }
    let Some(d) = hv.dom(cur) else {
        return frame.set_rax(abi::regs::encode(Err(Error::NotFound)));
    };
    d.state = RunState::Blocked;
    hv.sched.deadlines.arm(at, cur, TimerKind::Block);
    hv.sched.timer_dirty = true;
    // The frame is not touched past this point (see `EntryFrame`).
    hv.switch_away(false);
}
