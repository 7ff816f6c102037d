//! Clauses of `docs/abi/sched.md`: one function per clause.

#[allow(unused_imports)]
use crate::*;

/// SCHED-1 (run in the `time_and_sched` phase).
pub fn sched_1() {
    clause("SCHED-1", "yield returns 0", |ck| {
        for _ in 0..10 {
            ck.eq("yield", c1(Hypercall::Yield, 0), Ok(0));
        }
    });
}

/// SCHED-2 (run in the `time_and_sched` phase).
pub fn sched_2() {
    clause("SCHED-2", "block until event or deadline", |ck| {
        let t0 = now();
        ck.eq("deadline", block(t0 + 5 * MS), Ok(1));
        ck.t(now() >= t0 + 5 * MS, "returned before the deadline");
        let (a, b) = loopback();
        event::without_upcalls(|| {
            let _ = send(a);
            ck.eq("event", block(NO_DEADLINE), Ok(0));
        });
        Sh::set_pending(b as u32, false);
        let _ = close(a);
        let _ = close(b);
    });
}

/// SCHED-2a (run in the `time_and_sched` phase).
pub fn sched_2a() {
    clause("SCHED-2a", "block clears upcall_mask", |ck| {
        Sh::upcall_mask().store(1, SeqCst);
        ck.eq("block", block(now() + MS), Ok(1));
        ck.eq("upcall_mask after block", Sh::upcall_mask().load(SeqCst), 0);
        // An event raised while masked is not lost: block returns at once.
        let (a, b) = loopback();
        Sh::upcall_mask().store(1, SeqCst);
        let _ = send(a);
        let t0 = now();
        ck.eq("pending while masked", block(t0 + 1_000 * MS), Ok(0));
        ck.t(now() - t0 < 500 * MS, "slept despite the event");
        Sh::set_pending(b as u32, false);
        let _ = close(a);
        let _ = close(b);
    });
}

/// SCHED-2b (run in the `time_and_sched` phase).
pub fn sched_2b() {
    clause("SCHED-2b", "no sleep when pending or past", |ck| {
        let (a, b) = loopback();
        event::without_upcalls(|| {
            let _ = send(a);
            let t0 = now();
            ck.eq("pending", block(t0 + 2_000 * MS), Ok(0));
            ck.t(now() - t0 < 500 * MS, "slept with an event pending");
            Sh::set_pending(b as u32, false);
        });
        let t0 = now();
        ck.eq("past deadline 1", block(1), Ok(1));
        ck.eq("past deadline 0", block(0), Ok(1));
        ck.eq("deadline now", block(now()), Ok(1));
        ck.t(now() - t0 < 500 * MS, "slept for a past deadline");
        let _ = close(a);
        let _ = close(b);
    });
}

/// SCHED-2d (run in the `time_and_sched` phase).
pub fn sched_2d() {
    clause("SCHED-2d", "block never fails", |ck| {
        let (a, b) = loopback();
        for d in [1u64, u64::MAX - 1, 1 << 63, NO_DEADLINE] {
            event::without_upcalls(|| {
                let _ = send(a);
                ck.eq(&format!("deadline {d:#x}"), block(d), Ok(0));
                Sh::set_pending(b as u32, false);
            });
        }
        let _ = close(a);
        let _ = close(b);
    });
}

/// SCHED-2c (run in the `traps` phase).
pub fn sched_2c() {
    clause(
        "SCHED-2c",
        "upcall right after block, frame rip/rax",
        |ck| {
            let (a, b) = loopback();
            up::EV_CLEAR[0].store(b, SeqCst);
            Sh::upcall_mask().store(1, SeqCst);
            let _ = send(a);
            let n = up::EV_COUNT.load(SeqCst);
            // SAFETY: block with an event pending returns at once.
            let p = unsafe { arch::probe(0x11, NO_DEADLINE) };
            ck.eq("block result", p.rax, 0);
            ck.eq("upcall after block", up::EV_COUNT.load(SeqCst), n + 1);
            let f = up::recorded(&up::EV_FRAME);
            ck.eq("frame rip after syscall", f.rip, arch::probe_after());
            ck.eq("frame rax is the result", f.rax, 0);
            up::EV_CLEAR[0].store(0, SeqCst);
            let _ = close(a);
            let _ = close(b);
        },
    );
}

/// SCHED-0a (run in the `multi_domain` phase).
/// Returns whether it passed (SCHED-0 sums up SCHED-0a and SCHED-0b).
pub fn sched_0a(p: Peers) -> bool {
    let mut ok0a = false;
    clause("SCHED-0a", "an endless loop cannot starve us", |ck| {
        ck.eq("start the spinner", send(p.ctl5), Ok(0));
        guest_sdk::sched::yield_now();
        // Two runnable domains, 10 ms slices: each wake-up and each yield
        // comes back within 2 slices; allow 100 ms for TCG.
        let mut worst_sleep = 0;
        for _ in 0..10 {
            let t0 = now();
            let _ = block(t0 + 2 * MS);
            worst_sleep = worst_sleep.max(now() - t0 - 2 * MS);
        }
        let mut worst_yield = 0;
        let mut longest = 0;
        for _ in 0..10 {
            let t0 = now();
            guest_sdk::sched::yield_now();
            let d = now() - t0;
            worst_yield = worst_yield.max(d);
            longest = longest.max(d);
        }
        ck.t(
            worst_sleep < 100 * MS,
            &format!("woke {} us late", worst_sleep / 1000),
        );
        ck.t(
            worst_yield < 100 * MS,
            &format!("yield took {} us", worst_yield / 1000),
        );
        ck.t(
            longest > MS,
            &format!("the spinner never ran (yield {} us)", longest / 1000),
        );
        // The measurement behind SCHED-0b sees a domain that takes CPU.
        let gap = best_gap();
        ck.t(
            gap >= 5 * MS,
            &format!(
                "with the spinner running the best window gap is {} us",
                gap / 1000
            ),
        );
        ok0a = ck.fails == 0;
    });
    ok0a
}

/// SCHED-3 (run in the `multi_domain` phase).
pub fn sched_3(p: Peers) {
    clause(
        "SCHED-3",
        "shutdown: peers see their channels unbound",
        |ck| {
            // The helper shuts down (reboot, code -7) on its third command.
            ck.eq("third command", send(p.ctl2), Ok(0));
            let deadline = now() + 5_000 * MS;
            let mut last = send(p.yes2);
            while last.is_ok() && now() < deadline {
                guest_sdk::sched::yield_now();
                last = send(p.yes2);
            }
            ck.err("helper's channel unbound", last, Error::WrongState);
            ck.err("helper gone", alloc_unbound(2), Error::NotFound);
        },
    );
}

/// SCHED-3a (run last, in the `multi_domain` phase).
pub fn sched_3a() {
    clause(
        "SCHED-3a",
        "undefined reason: invalid_argument, keeps running",
        |ck| {
            for r in [3u64, 4, 0xff, 1 << 32, u64::MAX] {
                ck.err(
                    &format!("reason {r:#x}"),
                    c2(Hypercall::Shutdown, r, 0),
                    Error::InvalidArgument,
                );
            }
            ck.eq(
                "alive",
                c1(Hypercall::AbiVersion, 0),
                Ok(u64::from(ABI_VERSION)),
            );
        },
    );
}

/// SCHED-0b (run in the `multi_domain` phase, every other domain
/// blocked). Returns whether it passed.
pub fn sched_0b() -> bool {
    let mut sched0b = Ck::default();
    {
        // SCHED-0b: every other domain is blocked; over 50 ms of spinning,
        // no gap between clock reads is near a slice.
        // A stall of the host can make one window look bad; a blocked
        // domain that used CPU would spoil every window.
        let ck = &mut sched0b;
        let gap = best_gap();
        ck.t(
            gap < 5 * MS,
            &format!("largest gap {} us with peers blocked", gap / 1000),
        );
        let t0 = now();
        for _ in 0..100 {
            guest_sdk::sched::yield_now();
        }
        let d = now() - t0;
        ck.t(
            d < 50 * MS,
            &format!("100 yields took {} us with peers blocked", d / 1000),
        );
    }
    let ok0b = sched0b.fails == 0;
    emit(
        "SCHED-0b",
        "blocked domains use no CPU",
        ok0b,
        &if ok0b {
            format!("{} checks", sched0b.checks)
        } else {
            sched0b.first.clone()
        },
    );

    ok0b
}

/// SCHED-0: the sum of SCHED-0a and SCHED-0b.
pub fn sched_0(ok0a: bool, ok0b: bool) {
    emit(
        "SCHED-0",
        "round-robin scheduler guarantees",
        ok0a && ok0b,
        "summary of SCHED-0a and SCHED-0b",
    );
}

/// The smallest, over up to 10 windows of 30 ms, of the largest gap
/// between two clock reads in a window: the CPU time someone else took.
pub fn best_gap() -> u64 {
    let mut gap = u64::MAX;
    for _ in 0..10 {
        let start = now();
        let mut last = start;
        let mut worst = 0;
        while last - start < 30 * MS {
            let n = now();
            worst = worst.max(n - last);
            last = n;
        }
        gap = gap.min(worst);
        if gap < 5 * MS {
            break;
        }
    }
    gap
}
