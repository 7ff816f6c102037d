//! Clauses of `docs/abi/README.md`: one function per clause.

#[allow(unused_imports)]
use crate::*;

/// CALL-1 (run in the `base_and_call` phase).
pub fn call_1() {
    clause("CALL-1", "syscall register convention", |ck| {
        for (nr, a0, want) in [
            (0x00u64, 0u64, u64::from(ABI_VERSION)),
            (0x23, 0x0b0b_0b0b_3333_0003, (-5i64) as u64),
            (0xffff, 0, (-1i64) as u64),
        ] {
            // SAFETY: abi_version, a refused event_send, an undefined number.
            let p = unsafe { arch::probe(nr, a0) };
            ck.eq(&format!("rax of {nr:#x}"), p.rax, want);
            for i in 0..12 {
                let want = if i == 2 { a0 } else { arch::PATTERN[i] };
                ck.eq(
                    &format!("{} after {nr:#x}", arch::PROBE_REGS[i]),
                    p.regs[i],
                    want,
                );
            }
            ck.eq("red zone", p.canary, arch::CANARY);
        }
    });
}

/// CALL-1a (run in the `base_and_call` phase).
pub fn call_1a() {
    clause(
        "CALL-1a",
        "undefined numbers: no_such_call, no effect",
        |ck| {
            let (a, b) = loopback();
            let next = next_port();
            for nr in [
                0x02u64,
                0x0f,
                0x14,
                0x26,
                0x2f,
                0x32,
                0x48,
                0x53,
                0xff,
                0xffff,
                u64::MAX,
                1 << 32,
                (1 << 32) | 0x20,
                (1 << 32) | 0x23,
                (1 << 63) | 0x23,
            ] {
                // Numbers are added over time: test only what is undefined now.
                if Hypercall::from_number(nr).is_some() {
                    ck.t(
                        false,
                        &format!("{nr:#x} is defined now: pick another undefined number"),
                    );
                    continue;
                }
                let r = raw_nr(nr, [a, DOMID_SELF, 0, 0, 0, 0]);
                ck.eq(&format!("nr {nr:#x}"), r, (-1i64) as u64);
            }
            ck.t(
                !Sh::is_pending(b as u32),
                "a truncated number raised an event",
            );
            ck.eq("no port allocated", next_port(), next);
            let _ = close(b);
            let _ = close(a);
        },
    );
}

/// CALL-1b (run in the `base_and_call` phase).
pub fn call_1b() {
    clause("CALL-1b", "unused arguments are ignored", |ck| {
        let g = 0xdead_beef_dead_beef;
        let (a, b) = loopback();
        event::without_upcalls(|| {
            ck.eq(
                "send + garbage",
                call(Hypercall::EventSend, [a, g, g, g, g, g]),
                Ok(0),
            );
            ck.t(
                Sh::is_pending(b as u32),
                "send with garbage args did not raise",
            );
            Sh::set_pending(b as u32, false);
        });
        ck.eq("yield + garbage", call(Hypercall::Yield, [g; 6]), Ok(0));
        let msg = b"CALL-1b marker\n";
        ck.eq(
            "console_write + garbage",
            call(
                Hypercall::ConsoleWrite,
                [msg.as_ptr() as u64, msg.len() as u64, g, g, g, g],
            ),
            Ok(msg.len() as u64),
        );
        let p = call(Hypercall::EventAllocUnbound, [DOMID_SELF, g, g, g, g, g]);
        ck.t(p.is_ok(), "alloc_unbound + garbage refused");
        if let Ok(p) = p {
            ck.eq(
                "close + garbage",
                call(Hypercall::EventClose, [p, g, g, g, g, g]),
                Ok(0),
            );
        }
        ck.eq(
            "timer_set(0) + garbage",
            call(Hypercall::TimerSet, [0, g, g, g, g, g]),
            Ok(0),
        );
        // The calls whose SDK wrappers set only `rdi` on the hot paths:
        // `block` with a past deadline returns `Deadline` at once (SCHED-2b)
        // and `upcall_return` refuses a frame outside an upcall as it does
        // with zeros beside it.
        ck.eq(
            "block(past) + garbage",
            call(Hypercall::Block, [1, g, g, g, g, g]),
            Ok(1),
        );
        let upcall_return = |junk: u64| {
            // SAFETY: called while no upcall is active, with an unaligned
            // frame address: refused before anything is restored (TRAP-2a,
            // TRAP-2c), so nothing resumes.
            unsafe {
                guest_sdk::raw::call_unchecked(
                    Hypercall::UpcallReturn,
                    [3, junk, junk, junk, junk, junk],
                )
            }
        };
        let zeros = upcall_return(0);
        ck.t(
            zeros.is_err(),
            "upcall_return outside an upcall was not refused",
        );
        ck.eq(
            "upcall_return + garbage: the same refusal",
            upcall_return(g),
            zeros,
        );
        let _ = close(b);
        let _ = close(a);
    });
}

/// CALL-2 (run in the `base_and_call` phase).
pub fn call_2() {
    clause("CALL-2", "result word: >= 0 success, -code failure", |ck| {
        ck.eq("abi_version raw", raw_nr(0, [0; 6]), u64::from(ABI_VERSION));
        ck.eq("send(0) raw", raw_nr(0x23, [0; 6]), (-5i64) as u64);
        ck.eq("console len 0 raw", raw_nr(0x01, [0, 0, 0, 0, 0, 0]), 0);
        let a = alloc_unbound(DOMID_SELF).unwrap_or(0);
        ck.t(
            (1..NR_PORTS as u64).contains(&a),
            "alloc_unbound result is a port",
        );
        // A failed call changes nothing: the refused send left `a` unbound.
        ck.err("send(unbound) after refusals", send(a), Error::WrongState);
        ck.eq("close", close(a), Ok(0));
        ck.err("close again", close(a), Error::NotFound);
    });
}

/// CALL-3 (run in the `base_and_call` phase).
pub fn call_3() {
    clause("CALL-3", "error codes as documented", |ck| {
        ck.eq("no_such_call", raw_nr(0x7f, [0; 6]), (-1i64) as u64);
        ck.eq(
            "invalid_argument",
            raw_nr(0x01, [0, 4097, 0, 0, 0, 0]),
            (-2i64) as u64,
        );
        ck.eq(
            "bad_address",
            raw_nr(0x01, [0, 1, 0, 0, 0, 0]),
            (-3i64) as u64,
        );
        ck.eq("not_found", raw_nr(0x24, [0; 6]), (-5i64) as u64);
        ck.eq("wrong_state", raw_nr(0x31, [0; 6]), (-6i64) as u64);
        ck.eq(
            "invalid_argument (virq)",
            raw_nr(0x22, [9, 0, 0, 0, 0, 0]),
            (-2i64) as u64,
        );
    });
}

/// CALL-4 (run in the `base_and_call` phase).
pub fn call_4(si: &StartInfo) {
    clause("CALL-4", "guest pointers are checked", |ck| {
        let top = si.page_va(si.nr_pages);
        let cases: [(&str, u64, u64); 10] = [
            ("null", 0, 1),
            ("unmapped 0xdead0000", 0xdead_0000, 4),
            ("direct map", 0xffff_8000_0000_0000, 8),
            ("hypervisor image", 0xffff_ffff_8000_0000, 8),
            ("non-canonical", 0x8000_0000_0000_0000, 8),
            ("crosses GUEST_VA_TOP", GUEST_VA_TOP - 4, 8),
            ("wraps", u64::MAX - 3, 8),
            ("ends past the window", top - 4, 8),
            ("no L4 entry", 0x7000_0000_0000, 16),
            ("page 0 end", 4090, 8),
        ];
        for (what, ptr, len) in cases {
            ck.err(what, write(ptr, len), Error::BadAddress);
        }
        // Read-only but user-accessible memory is fine to read.
        ck.eq("read-only start info", write(start_info_va(), 8), Ok(8));
        let nl = b"\n";
        let _ = write(nl.as_ptr() as u64, 1);
        // Writes: a frame pushed to a read-only stack is TRAP-0c (conf-peer
        // role rostack); upcall_return reads: see TRAP-2a.
    });
}
