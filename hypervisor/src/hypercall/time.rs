//! The time family (`TIME-*`).
#![forbid(unsafe_code)]

use crate::hv::Hv;
use crate::time;
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;
use tahoma_core::sched::TimerKind;

/// TIME-1: arms or cancels the one-shot timer. TIME-2: the one slot is
/// moved or emptied, never added to.
pub(crate) fn timer_set(hv: &mut Hv, cur: DomId, a: abi::time::TimerSet) -> Result<u64, Error> {
    if a.deadline_ns == 0 {
        hv.sched.deadlines.cancel(cur, TimerKind::OneShot);
    } else {
        hv.sched
            .deadlines
            .arm(time::ns_to_tsc(a.deadline_ns), cur, TimerKind::OneShot);
        hv.fire_deadlines(time::now_tsc());
    }
    hv.sched.timer_dirty = true;
    Ok(0)
}
