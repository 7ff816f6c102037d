//! Time (`TIME-0`, `TIME-1`): the monotonic clock without a hypercall,
//! sleeping, and the one-shot timer.
#![forbid(unsafe_code)]

use core::sync::atomic::{fence, AtomicBool, Ordering};
use core::time::Duration;

use hypercall_abi::args::{BlockResult, Virq};
use hypercall_abi::layout::TimeInfo;
use hypercall_abi::Error;

use crate::event::{self, Port};
use crate::raw;
use crate::sched;
use crate::shared::Shared;

/// Monotonic nanoseconds since the hypervisor started (`TIME-0`), computed
/// from the shared-info time record and `rdtsc`: no hypercall.
pub fn now_ns() -> u64 {
    let (info, tsc) = read_clock(&Shared::get(), rdtsc);
    info.ns_at(tsc)
}

/// [`now_ns`] as a [`Duration`] since the hypervisor started.
pub fn now() -> Duration {
    Duration::from_nanos(now_ns())
}

/// Reads the TSC after the instructions before it (`lfence; rdtsc`; allowed
/// in ring 3, TIME-0). Under QEMU's `-icount shift=0` one tick is one
/// instruction, which is how the benchmarks count.
#[cfg(target_os = "none")]
#[inline(always)]
pub fn rdtsc() -> u64 {
    crate::arch::rdtsc()
}

/// Host builds (unit tests) have no guest TSC.
#[cfg(not(target_os = "none"))]
pub fn rdtsc() -> u64 {
    panic!("rdtsc is read only on the x86_64-unknown-none target")
}

/// A consistent snapshot of the time record plus a TSC value read inside
/// it: read `version`, retry while it is odd (an update is in progress),
/// read the fields and the TSC, and retry if `version` changed meanwhile.
pub(crate) fn read_clock(sh: &Shared, mut tsc: impl FnMut() -> u64) -> (TimeInfo, u64) {
    let [stamp, system, mul] = sh.time_fields();
    loop {
        let v1 = sh.time_version().load(Ordering::Acquire);
        if v1 & 1 != 0 {
            core::hint::spin_loop();
            continue;
        }
        let info = TimeInfo {
            version: v1,
            reserved: 0,
            tsc_timestamp: stamp.load(Ordering::Relaxed),
            system_time_ns: system.load(Ordering::Relaxed),
            tsc_mul: mul.load(Ordering::Relaxed),
        };
        let t = tsc();
        fence(Ordering::Acquire);
        if sh.time_version().load(Ordering::Relaxed) == v1 {
            return (info, t);
        }
    }
}

/// Sleeps until the clock reaches `deadline_ns`. Events that arrive
/// meanwhile are handled (their upcalls run) and the sleep goes on.
pub fn sleep_until(deadline_ns: u64) {
    while now_ns() < deadline_ns {
        sched::block(deadline_ns);
    }
}

/// Sleeps for `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    sleep_until(now_ns().saturating_add(ns));
}

/// Sleeps for `d`.
pub fn sleep(d: Duration) {
    sleep_ns(duration_ns(d));
}

/// A duration in nanoseconds, saturating.
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Arms the domain's one-shot timer for `deadline_ns`, replacing any armed
/// deadline; 0 cancels (`TIME-1`). It fires on the port bound to
/// [`Virq::Timer`]; see [`Timer`].
pub fn timer_set(deadline_ns: u64) {
    // TIME-1: never fails.
    let _ = raw::invoke(&hypercall_abi::time::TimerSet { deadline_ns });
}

/// Cancels the one-shot timer.
pub fn timer_cancel() {
    timer_set(0);
}

static FIRED: AtomicBool = AtomicBool::new(false);

fn on_timer(_: Port) {
    FIRED.store(true, Ordering::Release);
}

/// The domain's one-shot timer, bound to [`Virq::Timer`] with a handler
/// that records each firing. There is one per domain: a second
/// [`Timer::new`] while one exists fails with `wrong_state` (`EVT-3b`).
#[derive(Debug)]
pub struct Timer {
    port: Port,
}

impl Timer {
    /// Binds the timer interrupt.
    pub fn new() -> Result<Timer, Error> {
        FIRED.store(false, Ordering::Release);
        let port = event::bind_virq_with(Virq::Timer, on_timer)?;
        Ok(Timer { port })
    }

    /// The port the timer fires on.
    pub fn port(&self) -> Port {
        self.port
    }

    /// Arms the timer for the absolute time `deadline_ns` (a deadline in the
    /// past fires at once). Forgets an earlier, unconsumed firing.
    pub fn set_deadline(&self, deadline_ns: u64) {
        FIRED.store(false, Ordering::Release);
        timer_set(deadline_ns.max(1));
    }

    /// Arms the timer to fire `d` from now.
    pub fn set_after(&self, d: Duration) {
        self.set_deadline(now_ns().saturating_add(duration_ns(d)));
    }

    /// Disarms the timer.
    pub fn cancel(&self) {
        timer_cancel();
        FIRED.store(false, Ordering::Release);
    }

    /// Whether the timer fired since it was last armed or checked
    /// (consumes the firing).
    pub fn take_fired(&self) -> bool {
        FIRED.swap(false, Ordering::AcqRel)
    }

    /// Sleeps until the timer fires (and consumes the firing).
    pub fn wait(&self) {
        event::wait_for(|| self.take_fired());
    }

    /// Sleeps until the timer fires or `deadline_ns` passes; `Event` if it
    /// fired.
    pub fn wait_until(&self, deadline_ns: u64) -> BlockResult {
        if event::wait_for_until(|| self.take_fired(), deadline_ns) {
            BlockResult::Event
        } else {
            BlockResult::Deadline
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        timer_cancel();
        let _ = event::close(self.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::test_page;

    #[test]
    fn reads_a_stable_record() {
        let sh = test_page();
        let [stamp, system, mul] = sh.time_fields();
        sh.time_version().store(2, Ordering::SeqCst);
        stamp.store(1000, Ordering::SeqCst);
        system.store(5, Ordering::SeqCst);
        mul.store(TimeInfo::mul_for_hz(1_000_000_000), Ordering::SeqCst);
        let (info, tsc) = read_clock(&sh, || 1500);
        assert_eq!(info.ns_at(tsc), 505);
    }

    #[test]
    fn retries_while_odd_or_changed() {
        let sh = test_page();
        let [stamp, system, mul] = sh.time_fields();
        mul.store(TimeInfo::mul_for_hz(1_000_000_000), Ordering::SeqCst);
        sh.time_version().store(1, Ordering::SeqCst);
        let mut reads = 0;
        // Simulate the hypervisor: the first TSC read happens while the
        // record is mid-update (version odd at the start would spin; here
        // it finishes the update during the read, changing the version).
        sh.time_version().store(4, Ordering::SeqCst);
        let (info, _) = read_clock(&sh, || {
            reads += 1;
            if reads == 1 {
                sh.time_version().store(5, Ordering::SeqCst);
                stamp.store(10, Ordering::SeqCst);
                system.store(77, Ordering::SeqCst);
                sh.time_version().store(6, Ordering::SeqCst);
            }
            10
        });
        assert_eq!(reads, 2);
        assert_eq!(info.version, 6);
        assert_eq!(info.ns_at(10), 77);
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(duration_ns(Duration::from_millis(3)), 3_000_000);
        assert_eq!(duration_ns(Duration::MAX), u64::MAX);
    }
}
