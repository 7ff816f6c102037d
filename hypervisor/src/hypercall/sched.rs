//! The scheduling family (`SCHED-*`).
#![forbid(unsafe_code)]

use crate::arch::traps::TrapFrame;
use crate::domain::RunState;
use crate::hv::Exit;
use crate::hv::Hv;
use crate::hypercall::Outcome;
use crate::time;
use hypercall_abi::sched::{BlockResult, NO_DEADLINE};
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;
use tahoma_core::sched::TimerKind;

/// SCHED-1: gives up the rest of the slice when another domain can run.
pub(crate) fn yield_now(
    hv: &mut Hv,
    _cur: DomId,
    a: abi::sched::Yield,
    frame: &mut TrapFrame,
) -> Outcome {
    let abi::sched::Yield {} = a;
    frame.rax = 0;
    if !hv.sched.runq.is_empty() {
        hv.switch_away(true);
    }
    Outcome::Replaced
}

/// SCHED-3: ends the caller; another domain runs.
pub(crate) fn shutdown(
    hv: &mut Hv,
    cur: DomId,
    a: abi::sched::Shutdown,
    _frame: &mut TrapFrame,
) -> Outcome {
    hv.destroy(cur, Exit::Shutdown(a.reason, a.code));
    hv.run_next();
    Outcome::Replaced
}

/// SCHED-2: idles until an unmasked event is pending or the deadline passes.
pub(crate) fn block(
    hv: &mut Hv,
    cur: DomId,
    a: abi::sched::Block,
    _frame: &mut TrapFrame,
) -> Outcome {
    let deadline_ns = a.deadline_ns;
    let Some(d) = hv.dom(cur) else {
        return Outcome::Return(Err(Error::NotFound));
    };
    d.shared.set_upcall_mask(false);
    if d.shared.any_unmasked_pending() {
        return Outcome::Return(Ok(BlockResult::Event as u64));
    }
    let at = if deadline_ns == NO_DEADLINE {
        None
    } else {
        Some(time::ns_to_tsc(deadline_ns))
    };
    if at.is_some_and(|at| at <= time::now_tsc()) {
        return Outcome::Return(Ok(BlockResult::Deadline as u64));
    }
    d.state = RunState::Blocked;
    if let Some(at) = at {
        hv.sched.deadlines.arm(at, cur, TimerKind::Block);
        hv.sched.timer_dirty = true;
    }
    hv.switch_away(false);
    Outcome::Replaced
}
