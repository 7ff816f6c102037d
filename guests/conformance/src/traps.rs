//! Clauses of `docs/abi/traps.md`: one function per clause.

#[allow(unused_imports)]
use crate::*;

mod remembered;
pub use remembered::trap_0d;

/// TRAP-1 (run in the `traps` phase).
pub fn trap_1(top: u64) {
    clause("TRAP-1", "set_callbacks registers the entries", |ck| {
        ck.eq(
            "register",
            set_callbacks(arch::event_entry(), arch::trap_entry(), top),
            Ok(0),
        );
        let f = trapped(|| {
            at!("ud2");
        });
        ck.t(f.is_some(), "trap entry not used");
        // Entries 0 with stack 0: allowed (disables delivery).
        ck.eq("all zero", set_callbacks(0, 0, 0), Ok(0));
        ck.eq(
            "register again",
            set_callbacks(arch::event_entry(), arch::trap_entry(), top),
            Ok(0),
        );
        // An event entry of 0 disables event upcalls: an unmasked pending
        // event then delivers nothing, and registering the entry again
        // delivers it on that call's return. The hypervisor decides both
        // from a word it keeps per domain and refreshes on every
        // `set_callbacks` (docs/bench-history/issue-13-fast-paths.md, "SDK upcalls, round 8:
        // the hypervisor's share").
        let (a, b) = loopback();
        up::EV_CLEAR[0].store(b, SeqCst);
        let n = up::EV_COUNT.load(SeqCst);
        ck.eq(
            "event entry 0",
            set_callbacks(0, arch::trap_entry(), top),
            Ok(0),
        );
        Sh::upcall_mask().store(0, SeqCst);
        let _ = send(a);
        let _ = c1(Hypercall::AbiVersion, 0);
        ck.eq("event entry 0: no upcall", up::EV_COUNT.load(SeqCst), n);
        ck.eq(
            "event entry 0: still pending",
            Sh::upcall_pending().load(SeqCst),
            1,
        );
        ck.eq(
            "event entry back",
            set_callbacks(arch::event_entry(), arch::trap_entry(), top),
            Ok(0),
        );
        ck.eq(
            "event entry back: delivered on its return",
            up::EV_COUNT.load(SeqCst),
            n + 1,
        );
        up::EV_CLEAR[0].store(0, SeqCst);
        let _ = close(a);
        let _ = close(b);
    });
}

/// TRAP-1a (run in the `traps` phase).
pub fn trap_1a(top: u64, fsize: u64) {
    clause(
        "TRAP-1a",
        "bad entries or stack: refused, nothing registered",
        |ck| {
            let (ev, tr) = (arch::event_entry(), arch::trap_entry());
            for bad in [
                GUEST_VA_TOP,
                0xffff_8000_0000_0000,
                0xffff_ffff_8000_0000,
                u64::MAX,
            ] {
                ck.err(
                    &format!("event {bad:#x}"),
                    set_callbacks(bad, tr, top),
                    Error::BadAddress,
                );
                ck.err(
                    &format!("trap {bad:#x}"),
                    set_callbacks(ev, bad, top),
                    Error::BadAddress,
                );
                ck.err(
                    &format!("stack {bad:#x}"),
                    set_callbacks(ev, tr, bad & !15),
                    Error::BadAddress,
                );
            }
            ck.err(
                "stack misaligned",
                set_callbacks(ev, tr, top - 8),
                Error::InvalidArgument,
            );
            ck.err(
                "stack 0, event set",
                set_callbacks(ev, 0, 0),
                Error::InvalidArgument,
            );
            ck.err(
                "stack 0, trap set",
                set_callbacks(0, tr, 0),
                Error::InvalidArgument,
            );
            // The old registration still works: a trap and an event arrive at
            // the conformance entries with the frame at the old stack top.
            let f = trapped(|| {
                at!("ud2");
            });
            ck.t(f.is_some(), "trap entry lost after refusals");
            ck.eq(
                "trap frame at the old stack",
                up::TR_ADDR.load(SeqCst),
                top - fsize,
            );
            let (a, b) = loopback();
            up::EV_CLEAR[0].store(b, SeqCst);
            let n = up::EV_COUNT.load(SeqCst);
            let _ = send(a);
            ck.eq(
                "event entry still registered",
                up::EV_COUNT.load(SeqCst),
                n + 1,
            );
            up::EV_CLEAR[0].store(0, SeqCst);
            let _ = close(a);
            let _ = close(b);
        },
    );
}

/// TRAP-0 (run in the `traps` phase).
pub fn trap_0(top: u64, fsize: u64) {
    clause("TRAP-0", "upcall frame and entry state", |ck| {
        let (a, b) = loopback();
        up::EV_CLEAR[0].store(b, SeqCst);
        let n = up::EV_COUNT.load(SeqCst);
        // SAFETY: event_send on a connected port; the upcall on return
        // resumes the probe exactly.
        let p = unsafe { arch::probe(0x23, a) };
        ck.eq("one upcall", up::EV_COUNT.load(SeqCst), n + 1);
        let f = up::recorded(&up::EV_FRAME);
        let addr = up::EV_ADDR.load(SeqCst);
        ck.eq("kind", f.kind, 0);
        ck.eq("vector", f.vector, 0);
        ck.eq("frame at stack top", addr, top - fsize);
        ck.eq("16-aligned", addr % 16, 0);
        ck.eq("rsp at entry", arch::load(&arch::EV_ENTRY_RSP), addr);
        ck.eq("rdi at entry", arch::load(&arch::EV_ENTRY_RDI), addr);
        ck.eq(
            "rflags at entry",
            arch::load(&arch::EV_ENTRY_FLAGS) & !0x2,
            0x200,
        );
        ck.eq("frame rip", f.rip, arch::probe_after());
        ck.eq("frame rax", f.rax, 0);
        let w = arch::frame_words(&f);
        // rbx rbp rdi rsi rdx r10 r8 r9 r12..r15 in the frame's order.
        let idx = [5usize, 10, 9, 8, 7, 13, 11, 12, 15, 16, 17, 18];
        for (i, &fi) in idx.iter().enumerate() {
            let want = if i == 2 { a } else { arch::PATTERN[i] };
            ck.eq(&format!("frame {}", arch::PROBE_REGS[i]), w[fi], want);
        }
        for i in 0..12 {
            let want = if i == 2 { a } else { arch::PATTERN[i] };
            ck.eq(&format!("resumed {}", arch::PROBE_REGS[i]), p.regs[i], want);
        }
        ck.eq("resumed rax", p.rax, 0);
        ck.eq("red zone kept", p.canary, arch::CANARY);
        ck.eq(
            "mask set during the upcall",
            up::EV_MASK_AT_ENTRY.load(SeqCst),
            1,
        );
        // Nested: a trap inside the event handler goes below its rsp minus
        // the red zone.
        up::EV_MODE.store(up::EV_UD2, SeqCst);
        let _ = send(a);
        let tf = up::recorded(&up::TR_FRAME);
        let taddr = up::TR_ADDR.load(SeqCst);
        ck.eq("nested trap vector", tf.vector, 6);
        ck.t(
            tf.rsp < top && tf.rsp > top - 65536,
            "nested frame's rsp not on the callback stack",
        );
        ck.eq("nested placement", taddr, (tf.rsp - RED_ZONE - fsize) & !15);
        ck.eq(
            "trap rflags at entry",
            arch::load(&arch::TR_ENTRY_FLAGS) & !0x2,
            0x200,
        );
        up::EV_CLEAR[0].store(0, SeqCst);
        let _ = close(a);
        let _ = close(b);
    });
}

/// TRAP-0a (run in the `traps` phase).
pub fn trap_0a() {
    clause(
        "TRAP-0a",
        "event upcalls: only unmasked and pending, no nesting",
        |ck| {
            let (a, b) = loopback();
            up::EV_CLEAR[0].store(b, SeqCst);
            let n = up::EV_COUNT.load(SeqCst);
            Sh::upcall_mask().store(1, SeqCst);
            let _ = send(a);
            let _ = c1(Hypercall::AbiVersion, 0);
            ck.eq("masked: no upcall", up::EV_COUNT.load(SeqCst), n);
            // Clear upcall_pending: unmasking alone delivers nothing.
            Sh::upcall_pending().store(0, SeqCst);
            Sh::upcall_mask().store(0, SeqCst);
            let _ = c1(Hypercall::AbiVersion, 0);
            ck.eq(
                "upcall_pending clear: no upcall",
                up::EV_COUNT.load(SeqCst),
                n,
            );
            Sh::upcall_pending().store(1, SeqCst);
            let _ = c1(Hypercall::AbiVersion, 0);
            ck.eq(
                "delivered on the next return",
                up::EV_COUNT.load(SeqCst),
                n + 1,
            );
            ck.eq("mask set on delivery", up::EV_MASK_AT_ENTRY.load(SeqCst), 1);
            // No nesting: the handler's own send is delivered after it returns.
            up::EV_MAX_DEPTH.store(0, SeqCst);
            up::EV_RESEND.store(a, SeqCst);
            up::EV_MODE.store(up::EV_RESEND_ONCE, SeqCst);
            let n = up::EV_COUNT.load(SeqCst);
            let _ = send(a);
            ck.eq("redelivered after return", up::EV_COUNT.load(SeqCst), n + 2);
            ck.eq("never nested", up::EV_MAX_DEPTH.load(SeqCst), 1);
            up::EV_CLEAR[0].store(0, SeqCst);
            let _ = close(a);
            let _ = close(b);
        },
    );
}

/// TRAP-0b (run in the `traps` phase).
pub fn trap_0b() {
    clause(
        "TRAP-0b",
        "reflected exceptions: vector, error, rip",
        |ck| {
            let mut s = 0;
            let f = trapped(|| s = at!("ud2"));
            ck.eq("#UD", f.map(|f| (f.vector, f.rip == s)), Some((6, true)));
            let f = trapped(|| {
                s = at!("div rcx"; in("rcx") 0u64, inout("rax") 1u64 => _, inout("rdx") 0u64 => _)
            });
            ck.eq("#DE", f.map(|f| (f.vector, f.rip == s)), Some((0, true)));
            let f = trapped(|| s = at!("mov rax, [rcx]"; in("rcx") 0xdead_0000u64, out("rax") _));
            ck.eq(
                "#PF",
                f.map(|f| (f.vector, f.cr2, f.error_code, f.rip == s)),
                Some((14, 0xdead_0000, 4, true)),
            );
            let f = trapped(|| {
                s = at!("mov rax, [rcx]"; in("rcx") 0x8000_0000_0000_0000u64, out("rax") _)
            });
            ck.eq(
                "#GP non-canonical",
                f.map(|f| (f.vector, f.error_code, f.rip == s)),
                Some((13, 0, true)),
            );
            ck.eq("kind trap", up::recorded(&up::TR_FRAME).kind, 1);
            // Single step: TF set by popfq traps after the next instruction,
            // with rip the instruction after it.
            let mut after_nop = 0u64;
            let f = trapped(|| {
                // SAFETY: sets TF; the #DB after the nop is reflected and the
                // handler resumes at r15 (upcall_return clears TF).
                unsafe {
                    core::arch::asm!(
                        "lea r15, [rip + 2f]",
                        "lea r14, [rip + 3f]",
                        "pushfq",
                        "or qword ptr [rsp], 0x100",
                        "popfq",
                        "nop",
                        "3:",
                        "nop",
                        "2:",
                        out("r14") after_nop,
                        out("r15") _,
                    )
                }
            });
            ck.eq(
                "#DB single step",
                f.map(|f| (f.vector, f.rip == after_nop)),
                Some((1, true)),
            );
            // Single step over a hypercall: the `syscall` raises no #DB of
            // its own (the entry clears TF); the call runs and returns,
            // and the instruction after it is the next step, so the #DB
            // has rip past that instruction. A return by `sysretq` with TF
            // set would trap at the return address instead, before it ran.
            let mut ret_at = 0u64;
            let mut after_next = 0u64;
            let f = trapped(|| {
                // SAFETY: sets TF, then `abi_version`; the #DB after the
                // nop is reflected and the handler resumes at r15
                // (upcall_return clears TF). rax, rcx and r11 are the
                // call's to change.
                unsafe {
                    core::arch::asm!(
                        "lea r15, [rip + 2f]",
                        "lea r14, [rip + 3f]",
                        "lea r13, [rip + 4f]",
                        "xor eax, eax",
                        "pushfq",
                        "or qword ptr [rsp], 0x100",
                        "popfq",
                        "syscall",
                        "3:",
                        "nop",
                        "4:",
                        "nop",
                        "2:",
                        out("r14") ret_at,
                        out("r13") after_next,
                        out("r15") _,
                        out("rax") _,
                        out("rcx") _,
                        out("r11") _,
                    )
                }
            });
            ck.eq(
                "#DB single step over syscall: vector, rip past the next instruction, result",
                f.map(|f| (f.vector, f.rip == after_next, f.rip == ret_at, f.rax)),
                Some((1, true, false, u64::from(guest_sdk::abi::ABI_VERSION))),
            );
            // int3: #BP with rip after the instruction.
            let f = trapped(|| s = at!("int3"));
            ck.eq(
                "#BP (int3) vector, error",
                f.map(|f| format!("vector {} error {:#x}", f.vector, f.error_code)),
                Some(String::from("vector 3 error 0x0")),
            );
            ck.eq("#BP rip is next", f.map(|f| f.rip), Some(s + 1));
            // A software interrupt through a gate the guest may not use: #GP
            // with the CPU's error code, IDT index << 3 | IDT bit. QEMU TCG 7.x
            // computes index << 4 | 2 in long mode; that is the emulated CPU's
            // code, passed through faithfully, so it is accepted too.
            let mut tcg_form = false;
            for (v, f) in [
                (
                    0x80u64,
                    trapped(|| {
                        at!("int 0x80");
                    }),
                ),
                (
                    0x20,
                    trapped(|| {
                        at!("int 0x20");
                    }),
                ),
            ] {
                let got = f.map(|f| (f.vector, f.error_code));
                tcg_form |= got == Some((13, (v << 4) | 2));
                ck.t(
                    got == Some((13, (v << 3) | 2)) || got == Some((13, (v << 4) | 2)),
                    &format!(
                        "int {v:#x}: got {got:?}, want #GP error {:#x}",
                        (v << 3) | 2
                    ),
                );
            }
            if tcg_form {
                ck.note = String::from("; #GP error codes in QEMU TCG form (vector<<4|2)");
            }
            // Nested traps: a trap in the trap handler nests below its rsp.
            up::TR_MODE.store(up::TR_NEST, SeqCst);
            let before = up::TR_COUNT.load(SeqCst);
            at!("ud2");
            ck.eq("outer trap", up::TR_COUNT.load(SeqCst), before + 1);
            let nf = up::recorded(&up::TR_NESTED);
            let naddr = up::TR_NESTED_ADDR.load(SeqCst);
            ck.eq("nested vector", nf.vector, 6);
            ck.eq(
                "nested placement",
                naddr,
                (nf.rsp - RED_ZONE - core::mem::size_of::<UpcallFrame>() as u64) & !15,
            );
        },
    );
}

/// TRAP-1b (run in the `traps` phase).
pub fn trap_1b(top: u64) {
    clause("TRAP-1b", "entries are not checked when registered", |ck| {
        let (a, b) = loopback();
        up::EV_CLEAR[0].store(b, SeqCst);
        ck.eq(
            "unmapped event entry accepted",
            set_callbacks(0xdead_0000, arch::trap_entry(), top),
            Ok(0),
        );
        // The event is delivered to 0xdead0000, which faults like any
        // guest code: the trap handler resumes the event frame.
        up::TR_MODE.store(up::TR_RESUME_EVENT, SeqCst);
        let before = up::TR_COUNT.load(SeqCst);
        Sh::set_pending(b as u32, false);
        let _ = send(a);
        let f = up::recorded(&up::TR_FRAME);
        ck.eq(
            "faulted at the entry",
            (up::TR_COUNT.load(SeqCst) - before, f.vector, f.rip, f.cr2),
            (1, 14, 0xdead_0000, 0xdead_0000),
        );
        ck.eq(
            "rdi is the event frame",
            f.rdi,
            top - core::mem::size_of::<UpcallFrame>() as u64,
        );
        up::TR_MODE.store(up::TR_R15, SeqCst);
        let _ = set_callbacks(arch::event_entry(), arch::trap_entry(), top);
        Sh::set_pending(b as u32, false);
        Sh::upcall_pending().store(0, SeqCst);
        up::EV_CLEAR[0].store(0, SeqCst);
        let _ = close(a);
        let _ = close(b);
    });
}

/// TRAP-2 (run in the `traps` phase).
pub fn trap_2() {
    clause("TRAP-2", "upcall_return resumes, sanitises rflags", |ck| {
        let (a, b) = loopback();
        up::EV_CLEAR[0].store(b, SeqCst);
        up::EV_MODE.store(up::EV_FLAGS_ALL, SeqCst);
        // SAFETY: the upcall sets every rflags bit in the frame; the probe
        // records rflags at once and clears DF and AC.
        let p = unsafe { arch::probe(0x23, a) };
        let guest_bits = guest_sdk::abi::layout::RFLAGS_GUEST_MASK;
        ck.eq("guest bits taken", p.rflags & guest_bits, guest_bits);
        ck.eq("IF set", p.rflags & 0x200, 0x200);
        ck.eq("IOPL 0", p.rflags & 0x3000, 0);
        ck.eq("TF clear", p.rflags & 0x100, 0);
        ck.eq("upcall_mask cleared", Sh::upcall_mask().load(SeqCst), 0);
        // A trap frame (kind 1) leaves upcall_mask alone.
        Sh::upcall_mask().store(1, SeqCst);
        let f = trapped(|| {
            at!("ud2");
        });
        ck.t(f.is_some(), "no trap");
        ck.eq(
            "trap return keeps upcall_mask",
            Sh::upcall_mask().load(SeqCst),
            1,
        );
        Sh::upcall_mask().store(0, SeqCst);
        Sh::set_pending(b as u32, false);
        up::EV_CLEAR[0].store(0, SeqCst);
        let _ = close(a);
        let _ = close(b);
    });
}

/// TRAP-2a (run in the `traps` phase).
pub fn trap_2a() {
    clause(
        "TRAP-2a",
        "bad frame address: bad_address, caller continues",
        |ck| {
            let (a, b) = loopback();
            up::EV_CLEAR[0].store(b, SeqCst);
            up::EV_MODE.store(up::EV_BAD_RETURNS, SeqCst);
            let _ = send(a);
            let r: Vec<u64> = up::EV_BAD.iter().map(|x| x.load(SeqCst)).collect();
            let names = [
                "null",
                "0xdead0000",
                "direct map",
                "hypervisor",
                "wraps",
                "crosses top",
            ];
            for (i, n) in names.iter().enumerate() {
                ck.err(n, up::dec(r[i]), Error::BadAddress);
            }
            ck.eq("still in the upcall (mask)", r[10], 1);
            ck.eq("still in the upcall (frame)", r[11], 1);
            up::EV_CLEAR[0].store(0, SeqCst);
            let _ = close(a);
            let _ = close(b);
        },
    );
}

/// TRAP-2b (run in the `traps` phase).
pub fn trap_2b() {
    clause("TRAP-2b", "bad frame contents: invalid_argument", |ck| {
        let r: Vec<u64> = up::EV_BAD.iter().map(|x| x.load(SeqCst)).collect();
        ck.err("rip >= GUEST_VA_TOP", up::dec(r[6]), Error::InvalidArgument);
        ck.err(
            "rsp in the upper half",
            up::dec(r[7]),
            Error::InvalidArgument,
        );
        ck.err("kind 2", up::dec(r[8]), Error::InvalidArgument);
        ck.err(
            "read-only start info (kind = magic)",
            up::dec(r[9]),
            Error::InvalidArgument,
        );
        ck.eq(
            "final upcall_return did not fail",
            up::EV_RET_FAIL.load(SeqCst),
            0,
        );
    });
}

/// TRAP-2c (run in the `traps` phase).
pub fn trap_2c() {
    clause("TRAP-2c", "no upcall active: wrong_state", |ck| {
        let f = up::recorded(&up::EV_FRAME);
        let frame_copy = f;
        ck.err("null", upcall_return(0), Error::WrongState);
        ck.err(
            "a saved frame",
            upcall_return(&frame_copy as *const _ as u64),
            Error::WrongState,
        );
        ck.err("bad pointer", upcall_return(0xdead_0000), Error::WrongState);
        // Still running here, nothing restored.
        ck.eq(
            "alive",
            c1(Hypercall::AbiVersion, 0),
            Ok(u64::from(ABI_VERSION)),
        );
    });
}

/// TRAP-3 (run in the `traps` phase).
pub fn trap_3() {
    clause("TRAP-3", "privileged instructions raise #GP", |ck| {
        let mut note = "";
        let mut gp = |what: &str, f: Option<UpcallFrame>| match f {
            Some(f) if f.vector == 13 => ck.t(true, what),
            Some(f) => ck.t(
                false,
                &format!(
                    "{what}: vector {} error {:#x} cr2 {:#x} rip {:#x}, want #GP",
                    f.vector, f.error_code, f.cr2, f.rip
                ),
            ),
            None => ck.t(false, &format!("{what}: no trap")),
        };
        gp(
            "hlt",
            trapped(|| {
                at!("hlt");
            }),
        );
        gp(
            "cli",
            trapped(|| {
                at!("cli");
            }),
        );
        gp(
            "sti",
            trapped(|| {
                at!("sti");
            }),
        );
        gp(
            "in",
            trapped(|| {
                at!("in al, dx"; in("dx") 0x3f8u16, out("al") _);
            }),
        );
        gp(
            "out",
            trapped(|| {
                at!("out dx, al"; in("dx") 0xf4u16, in("al") 0x10u8);
            }),
        );
        gp(
            "insb",
            trapped(|| {
                at!("insb"; in("dx") 0x3f8u16, in("rdi") 0xdead_0000u64);
            }),
        );
        gp(
            "outsb",
            trapped(|| {
                at!("outsb"; in("dx") 0xf4u16, in("rsi") start_info_va());
            }),
        );
        gp(
            "mov cr3 read",
            trapped(|| {
                at!("mov rax, cr3"; out("rax") _);
            }),
        );
        gp(
            "mov cr0 write",
            trapped(|| {
                at!("mov cr0, rax"; in("rax") 0u64);
            }),
        );
        gp(
            "mov dr7",
            trapped(|| {
                at!("mov rax, dr7"; out("rax") _);
            }),
        );
        let zero = [0u64; 2];
        gp(
            "lgdt",
            trapped(|| {
                at!("lgdt [rax]"; in("rax") zero.as_ptr());
            }),
        );
        gp(
            "lidt",
            trapped(|| {
                at!("lidt [rax]"; in("rax") zero.as_ptr());
            }),
        );
        gp(
            "lldt",
            trapped(|| {
                at!("lldt ax"; in("ax") 0u16);
            }),
        );
        gp(
            "ltr",
            trapped(|| {
                at!("ltr ax"; in("ax") 0x28u16);
            }),
        );
        gp(
            "wrmsr",
            trapped(|| {
                at!("wrmsr"; in("ecx") 0xc000_0082u32, in("eax") 0u32, in("edx") 0u32);
            }),
        );
        gp(
            "rdmsr",
            trapped(|| {
                at!("rdmsr"; in("ecx") 0xc000_0080u32, out("eax") _, out("edx") _);
            }),
        );
        gp(
            "invlpg",
            trapped(|| {
                at!("invlpg [rax]"; in("rax") 0x40_0000u64);
            }),
        );
        gp(
            "wbinvd",
            trapped(|| {
                at!("wbinvd");
            }),
        );
        gp(
            "swapgs",
            trapped(|| {
                at!("swapgs");
            }),
        );
        gp(
            "sysretq",
            trapped(|| {
                at!("sysretq"; out("rcx") _, out("r11") _);
            }),
        );
        gp(
            "int 0x80",
            trapped(|| {
                at!("int 0x80");
            }),
        );
        gp(
            "int 0x20",
            trapped(|| {
                at!("int 0x20");
            }),
        );
        gp(
            "int 0x0e",
            trapped(|| {
                at!("int 0x0e");
            }),
        );
        // iretq to ring 0: a frame with the hypervisor's code selector.
        // The handler resumes at label 5, which restores rsp from rax.
        let iret = trapped(|| {
            // SAFETY: the iretq to a ring-0 selector faults (#GP) before it
            // changes anything; the trap handler resumes at label 5, which
            // restores rsp from rax, so the stack is as before.
            unsafe {
                core::arch::asm!(
                    "lea r15, [rip + 5f]",
                    "mov rax, rsp",
                    "push 0x10",
                    "push rax",
                    "pushfq",
                    "push 0x08",
                    "lea rcx, [rip + 6f]",
                    "push rcx",
                    "iretq",
                    "6:",
                    "ud2",
                    "5:",
                    "mov rsp, rax",
                    out("rax") _,
                    out("rcx") _,
                    out("r15") _,
                )
            }
        });
        // QEMU TCG before 8.1 pops an iretq frame with supervisor accesses,
        // so with SMAP the pop of the guest's own stack faults (#PF, U=0)
        // before the #GP the CPU would raise. Accepted, with a note.
        let si = guest_sdk::start_info();
        // Its stack: the initial stack and the SDK's reserve below it.
        let (lo, hi) = (
            si.page_va(guest_sdk::stack_floor_page(si)),
            si.page_va(si.nr_pages),
        );
        match iret {
            Some(f) if f.vector == 14 && f.error_code & 4 == 0 && (lo..hi).contains(&f.cr2) => {
                note = "; iretq: #PF U=0 on own stack (QEMU TCG < 8.1 quirk), accepted";
            }
            other => gp("iretq to ring 0", other),
        }
        // The one exception: the breakpoint gate is open to ring 3, so
        // `int 3` (CD 03) raises #BP like `int3` (TRAP-0b, TRAP-3).
        match trapped(|| {
            at!("int 0x03");
        }) {
            Some(f) if f.vector == 3 && f.error_code == 0 => ck.t(true, "int 0x03"),
            Some(f) => ck.t(
                false,
                &format!(
                    "int 0x03 (CD 03): vector {} error {:#x}, want #BP",
                    f.vector, f.error_code
                ),
            ),
            None => ck.t(false, "int 0x03 (CD 03): no trap"),
        }
        // Still intact: the hypervisor answers, the console works.
        ck.eq(
            "alive",
            c1(Hypercall::AbiVersion, 0),
            Ok(u64::from(ABI_VERSION)),
        );
        ck.note = String::from(note);
    });
}

/// TRAP-0c (run in the `multi_domain` phase).
pub fn trap_0c(p: Peers) {
    clause("TRAP-0c", "a faulting peer is destroyed, we go on", |ck| {
        ck.eq("command crasher", send(p.ctl4), Ok(0));
        let deadline = now() + 5_000 * MS;
        let mut last = send(p.ctl4);
        while last.is_ok() && now() < deadline {
            guest_sdk::sched::yield_now();
            last = send(p.ctl4);
        }
        ck.err("crasher's channel went unbound", last, Error::WrongState);
        ck.err("bind to the dead domain", bind(4, 1), Error::NotFound);
        ck.err(
            "offer to the dead domain",
            alloc_unbound(4),
            Error::NotFound,
        );
    });
}

/// TRAP-4 (run in the `multi_domain` phase).
pub fn trap_4() {
    clause("TRAP-4", "preemption keeps every register", |ck| {
        // With the spinner runnable, 60 ms of spinning is preempted.
        let hz = guest_sdk::start_info().tsc_hz;
        let deadline = arch::rdtsc() + hz / 1000 * 60;
        ck.t(
            arch::preempt_probe(deadline),
            "a register changed across preemption",
        );
    });
}

/// TRAP-5 (run in the `bounds` phase; its checks also count for LIM-2).
pub fn trap_5(all: &mut Ck) {
    clause(
        "TRAP-5",
        "8 nested upcalls allowed, the 9th trap kills",
        |ck| {
            // The 8th frame is delivered and the domain goes on (this guest
            // would be destroyed with a limit of 7); xtask checks that the
            // `nest` peer's handler was entered exactly 8 times before it was
            // destroyed (a limit of 9 lets it in a 9th time).
            limits::nest(ck, 8, false);
            ck.note = ", 8 nested traps survived".into();
            all.checks += ck.checks;
            all.fails += ck.fails;
        },
    );
}

/// TRAP-6 (run in the `bounds` phase; its checks also count for LIM-2).
pub fn trap_6(all: &mut Ck) {
    clause("TRAP-6", "event upcalls wait at the nesting limit", |ck| {
        // Control: with 7 traps outstanding the event is delivered at the
        // hypercall's return, inside the innermost handler.
        let (seen, total) = limits::nest(ck, 7, true);
        ck.eq("7 outstanding: event calls at the hypercall", seen, 1);
        ck.eq("7 outstanding: event calls in all", total, 1);
        ck.eq(
            "7 outstanding: our depth at the event",
            limits::EV_DEPTH.load(SeqCst),
            7,
        );
        // At the limit: held, still pending, delivered after one returns.
        let (seen, total) = limits::nest(ck, 8, true);
        ck.eq("8 outstanding: event calls at the hypercall", seen, 0);
        ck.eq(
            "8 outstanding: upcall_pending kept",
            limits::SEEN_PENDING.load(SeqCst),
            1,
        );
        ck.eq("8 outstanding: event calls in all", total, 1);
        ck.eq(
            "8 outstanding: our depth at the event (after one returned)",
            limits::EV_DEPTH.load(SeqCst),
            7,
        );
        all.checks += ck.checks;
        all.fails += ck.fails;
    });
}
