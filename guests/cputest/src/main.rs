//! The CPU-state suite (`docs/abi/cpu.md`, scenario `cpu`): one role per
//! domain, chosen with `role=...`:
//!
//! * `main` (domain 1, reports the clauses): checks its own initial
//!   FPU/SIMD and segment state, fills every x87/MMX/XMM/YMM register and
//!   DS/ES/FS/GS with its own pattern, yields and is preempted many times
//!   and checks each time that it still holds its own pattern and never the
//!   peer's (CPU-1, CPU-2); then the descriptor-table, FS/GS-base, UMIP and
//!   information clauses, with its own trap handler.
//! * `peer` (domain 2, the canary): the same with another pattern, plus a
//!   secret in memory; offers ports 1-4 to domain 1 and answers on them
//!   (1/2: its initial state was clean / was not; 3/4: its pattern and
//!   secret survived / did not).
//! * `sysenter` (domain 3): `sysenter` with TF and AC set; must
//!   be destroyed (`kind=sysenter`) or, on a CPU where the instruction is
//!   invalid in 64-bit mode, see #UD (CPU-4; judged by xtask).
//! * `compat` and `watch` (scenario `cpu-compat`, a test boot with a
//!   32-bit ring-3 code segment): `compat` far-jumps into compatibility
//!   mode and executes `syscall` there; it must be destroyed with
//!   `kind=compat-syscall` while `watch`, holding its own SIMD pattern and
//!   a secret, runs on unharmed (CPU-3b; judged by xtask).
//! * `upcallfail` (domain 4): an event upcall whose callback stack is
//!   read-only; must be destroyed with `kind=event-upcall` (TRAP-7; judged
//!   by xtask).
//! * `sysrettop` (domain 5): `syscall` in the last two bytes below
//!   `GUEST_VA_TOP` (the SYSRET hazard); must be destroyed by a #GP at
//!   `GUEST_VA_TOP` without the call having run (CALL-1c; judged by xtask).
#![no_std]
#![no_main]
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod regs;

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use guest_sdk::abi::args::{ShutdownReason, DOMID_SELF};
use guest_sdk::abi::{Error, Hypercall};
use guest_sdk::event::{self, DomId, Port};
use guest_sdk::trap::{self, TrapAction};
use guest_sdk::{println, raw, sched, time, StartInfo, UpcallFrame};

use regs::Simd;

guest_sdk::entry!(main);

const MS: u64 = 1_000_000;
/// Selectors the main domain loads (DS, ES, FS, GS) and the peer's.
const MAIN_SEL: [u16; 4] = [0x1b, 0, 0x23, 0x1b];
const PEER_SEL: [u16; 4] = [0, 0x1b, 0x1b, 0x23];
/// The secret the peer keeps in memory.
const SECRET: u64 = 0x5ec7_e7ca_4a27_0001;

fn main(si: &StartInfo) -> i32 {
    match si.cmdline_value("role").unwrap_or("") {
        "main" => main_role(),
        "peer" => peer_role(),
        "sysenter" => sysenter_role(),
        "upcallfail" => upcallfail_role(si),
        "compat" => compat_role(),
        "watch" => watch_role(),
        "sysrettop" => sysrettop_role(),
        other => {
            println!("cputest: unknown role {other:?}");
            2
        }
    }
}

// ---------------------------------------------------------------- checks

/// The checks of one clause: the harness shared with the conformance and
/// MMU suites (`guests/harness`).
use harness::Ck;

/// Reports a clause whose checks `ck` made; `note` is added to a pass's
/// detail.
fn clause(id: &str, name: &str, mut ck: Ck, note: &str) {
    ck.note = String::from(note);
    harness::finish(id, name, &mut ck, |_| {});
}

/// The initial state every domain must start with (CPU-1a, CPU-2): what
/// FNINIT and a reset MXCSR give, every register zero, null selectors.
fn check_initial(ck: &mut Ck, avx: bool) {
    let (fcw, fsw, ftw) = regs::x87_env();
    ck.eq("initial x87 control word", fcw, 0x037f);
    ck.eq("initial x87 status word", fsw, 0);
    ck.eq("initial x87 tag word (all empty)", ftw, 0xffff);
    let s = regs::store(avx);
    ck.eq("initial MXCSR", s.mxcsr, 0x1f80);
    ck.t(
        s.v.iter().flatten().all(|&w| w == 0),
        "initial XMM/YMM registers are zero",
    );
    ck.t(
        s.mm.iter().all(|&w| w == 0),
        "initial MMX registers are zero",
    );
    ck.eq("initial DS, ES, FS, GS", regs::selectors(), [0u16; 4]);
}

/// What the interleaving found.
struct Interleave {
    rounds: u64,
    preempted: u64,
    bad: u64,
    foreign: u64,
    bad_sel: u64,
}

/// Holds `mine` (and `sel`) through `min_rounds` yields and at least
/// `min_ms` of spinning (so the timer preempts us mid-loop), checking after
/// every yield and every spin that the registers still hold `mine` and
/// share nothing with `theirs`; stops early at `stop()` once the minimums
/// are met, and after 20 s in any case.
fn interleave(
    mine: &Simd,
    theirs: &Simd,
    sel: [u16; 4],
    avx: bool,
    min_rounds: u64,
    min_ms: u64,
    stop: impl Fn() -> bool,
) -> Interleave {
    regs::load(mine, avx);
    regs::set_selectors(sel);
    let start = time::now_ns();
    let mut r = Interleave {
        rounds: 0,
        preempted: 0,
        bad: 0,
        foreign: 0,
        bad_sel: 0,
    };
    let check = |r: &mut Interleave| {
        let now = regs::store(avx);
        if now != *mine {
            r.bad += 1;
        }
        if now.shared_words(theirs) != 0 {
            r.foreign += 1;
        }
        if regs::selectors() != sel {
            r.bad_sel += 1;
        }
    };
    loop {
        sched::yield_now();
        check(&mut r);
        // Spin ~1 ms (every 25th round 25 ms, longer than a time slice, so
        // the timer preempts us), counting gaps that mean someone else ran.
        let spin = if r.rounds.is_multiple_of(25) {
            25 * MS
        } else {
            MS
        };
        let t0 = time::now_ns();
        let mut last = t0;
        while time::now_ns() - t0 < spin {
            let t = time::now_ns();
            if t - last > MS / 2 {
                r.preempted += 1;
            }
            last = t;
        }
        check(&mut r);
        r.rounds += 1;
        let elapsed = time::now_ns() - start;
        if (r.rounds >= min_rounds && elapsed >= min_ms * MS && stop()) || elapsed > 20_000 * MS {
            break;
        }
    }
    r
}

// ---------------------------------------------------------------- main

static PEER_FLAGS: AtomicU64 = AtomicU64::new(0);
fn on_peer(p: Port) {
    PEER_FLAGS.fetch_or(1 << p.0, SeqCst);
}

fn bind_retry(dom: u16, port: u32) -> Result<Port, Error> {
    let deadline = time::now_ns() + 10_000 * MS;
    loop {
        match event::bind_interdomain(DomId(dom), Port(port)) {
            Ok(p) => return Ok(p),
            Err(e) if time::now_ns() > deadline => return Err(e),
            Err(_) => sched::yield_now(),
        }
    }
}

fn main_role() -> i32 {
    let avx = regs::avx();
    let mut initial = Ck::default();
    check_initial(&mut initial, avx);
    let mine = Simd::pattern(0xa0, avx);
    let theirs = Simd::pattern(0x51, avx);
    // Dirty the state before the peer first runs: it must not see it.
    regs::load(&mine, avx);
    regs::set_selectors(MAIN_SEL);
    println!("cputest: avx={} xcr0={:#x}", u8::from(avx), regs::xcr0());

    let mut ports = [Port(0); 4];
    let bound = event::without_upcalls(|| -> Result<(), Error> {
        for (i, p) in ports.iter_mut().enumerate() {
            *p = bind_retry(2, i as u32 + 1)?;
            event::set_handler(*p, on_peer);
        }
        Ok(())
    });
    let flag = |i: usize| PEER_FLAGS.load(SeqCst) & (1 << ports[i].0) != 0;
    let peer_done = || flag(2) || flag(3);
    let r = interleave(&mine, &theirs, MAIN_SEL, avx, 300, 200, peer_done);
    event::wait_for_until(
        || peer_done() && (flag(0) || flag(1)),
        time::now_ns() + 10_000 * MS,
    );
    let note = format!(
        "; rounds {} preempted {} avx {}",
        r.rounds,
        r.preempted,
        u8::from(avx)
    );

    let mut ck = Ck::default();
    ck.t(bound.is_ok(), "bind the peer's ports");
    ck.eq("rounds where our FPU/SIMD registers changed", r.bad, 0);
    ck.eq(
        "rounds where a register held the peer's pattern",
        r.foreign,
        0,
    );
    ck.t(
        r.preempted >= 3,
        "preempted at least 3 times while checking",
    );
    ck.t(r.rounds >= 300, "at least 300 yields");
    ck.t(
        flag(2) && !flag(3),
        "the peer (canary) kept its pattern and secret",
    );
    clause("CPU-1", "FPU/SIMD state is per domain", ck, &note);

    let mut ck = initial;
    ck.t(flag(0) && !flag(1), "the peer started with a clean state");
    clause(
        "CPU-1a",
        "a new domain starts with the initial FPU state",
        ck,
        "",
    );

    let mut ck = Ck::default();
    ck.eq("rounds where DS/ES/FS/GS changed", r.bad_sel, 0);
    ck.t(flag(2), "the peer's selectors held too");
    clause("CPU-2", "segment selectors are per domain", ck, &note);

    trap::set_handler(on_trap).expect("register the trap handler");
    fs_gs_bases();
    ldt();
    gdt();
    umip();
    info(avx);
    println!("cputest: done");
    0
}

// ---------------------------------------------------------------- traps

static TR_COUNT: AtomicU64 = AtomicU64::new(0);
static TR_VECTOR: AtomicU64 = AtomicU64::new(0);
static TR_ERROR: AtomicU64 = AtomicU64::new(0);

/// Records the trap and resumes at `r15` (see `at!`).
fn on_trap(f: &mut UpcallFrame) -> TrapAction {
    TR_COUNT.fetch_add(1, SeqCst);
    TR_VECTOR.store(f.vector, SeqCst);
    TR_ERROR.store(f.error_code, SeqCst);
    f.rip = f.r15;
    f.rflags &= !(1 << 8);
    TrapAction::Resume
}

/// Runs `f`; returns `Some((vector, error))` if exactly one trap arrived.
fn trapped(f: impl FnOnce()) -> Option<(u64, u64)> {
    let before = TR_COUNT.load(SeqCst);
    f();
    (TR_COUNT.load(SeqCst) - before == 1).then(|| (TR_VECTOR.load(SeqCst), TR_ERROR.load(SeqCst)))
}

/// Executes the instructions with r15 = the address after them (where the
/// trap handler resumes).
macro_rules! at {
    ($($i:literal),+ $(; $($op:tt)*)?) => {{
        // SAFETY: the instructions fault on purpose or are harmless; the
        // trap handler resumes at r15, the end of the block, with every
        // other register as it was.
        unsafe {
            core::arch::asm!(
                "lea r15, [rip + 4f]",
                $($i,)+
                "4:",
                out("r15") _,
                $($($op)*)?
            )
        };
    }};
}

/// A far pointer (m16:32) for `ljmpl`/`lcalll`.
#[repr(C, packed)]
struct Far {
    offset: u32,
    selector: u16,
}
static mut FAR: Far = Far {
    offset: 0,
    selector: 0,
};

/// A far jump (`call` = false) or call through `selector`: the trap it
/// raised, or `None` if it went through (to the next instruction).
fn far(selector: u16, call: bool) -> Option<(u64, u64)> {
    let p = &raw mut FAR;
    trapped(|| {
        // SAFETY: FAR is only used here; the far transfer either faults
        // (the handler resumes at r15) or, for a 64-bit code segment of
        // our own privilege, lands on the next label with the stack as it
        // was (a jump) or with a far return frame we pop (a call).
        unsafe {
            (*p).selector = selector;
            if call {
                core::arch::asm!(
                    "lea r15, [rip + 4f]",
                    "lea rcx, [rip + 5f]",
                    "mov dword ptr [rax], ecx",
                    "call fword ptr [rax]",
                    "jmp 4f",
                    "5:",
                    "add rsp, 8",
                    "4:",
                    in("rax") p,
                    out("rcx") _,
                    out("r15") _,
                );
            } else {
                core::arch::asm!(
                    "lea r15, [rip + 4f]",
                    "lea rcx, [rip + 4f]",
                    "mov dword ptr [rax], ecx",
                    "jmp fword ptr [rax]",
                    "4:",
                    in("rax") p,
                    out("rcx") _,
                    out("r15") _,
                );
            }
        }
    })
}

/// CPU-2a: FS and GS bases are 0 and cannot be set from ring 3.
fn fs_gs_bases() {
    let mut ck = Ck::default();
    static PROBE: AtomicU64 = AtomicU64::new(0x0bad_cafe_f00d_0001);
    let addr = &PROBE as *const AtomicU64 as u64;
    regs::set_selectors([0x1b, 0x1b, 0x1b, 0x23]);
    let (viafs, viags): (u64, u64);
    // SAFETY: reads of a static through FS and GS, whose bases must be 0.
    unsafe {
        core::arch::asm!("mov {0}, fs:[{2}]", "mov {1}, gs:[{2}]", out(reg) viafs, out(reg) viags, in(reg) addr, options(nostack, readonly))
    };
    ck.eq("read through FS (base 0)", viafs, PROBE.load(SeqCst));
    ck.eq("read through GS (base 0)", viags, PROBE.load(SeqCst));
    let ud = Some((6, 0));
    ck.eq(
        "rdfsbase",
        trapped(|| at!("rdfsbase rax"; out("rax") _)),
        ud,
    );
    ck.eq(
        "rdgsbase",
        trapped(|| at!("rdgsbase rax"; out("rax") _)),
        ud,
    );
    ck.eq(
        "wrfsbase",
        trapped(|| at!("wrfsbase rax"; in("rax") 0x1000u64)),
        ud,
    );
    ck.eq(
        "wrgsbase",
        trapped(|| at!("wrgsbase rax"; in("rax") 0x1000u64)),
        ud,
    );
    ck.eq("swapgs", trapped(|| at!("swapgs")), Some((13, 0)));
    ck.eq(
        "wrmsr FS_BASE",
        trapped(|| at!("wrmsr"; in("ecx") 0xc000_0100u32, in("eax") 0x1000u32, in("edx") 0u32)),
        Some((13, 0)),
    );
    clause("CPU-2a", "FS/GS bases are 0 and fixed", ck, "");
}

/// Maps a fresh frame at virtual address 0 (where an LDT left at its
/// reset value, base 0, would be read from) and writes a forged LDT there:
/// a DPL-3 64-bit call gate to the kernel code segment at index 0
/// (selector 0x07), a DPL-3 32-bit code segment at index 2 (0x17) and a
/// DPL-3 data segment at index 3 (0x1F). Returns the frame.
fn forge_ldt_at_zero() -> Result<u64, Error> {
    use guest_sdk::paging::{self, Flags, Mapper};
    let mfn = paging::populate_one()?;
    let mut m = Mapper::new();
    // SAFETY: nothing Rust uses lives at address 0.
    unsafe { m.map_unchecked(0, mfn, Flags::WRITABLE) }?;
    m.flush().map_err(Error::from)?;
    let target = on_trap as *const () as u64;
    let gate_lo = (target & 0xffff)
        | (0x08 << 16)
        | ((0x0c | (3 << 5) | (1 << 7)) << 40)
        | (((target >> 16) & 0xffff) << 48);
    let words = [
        gate_lo,
        target >> 32,
        0x00cf_fa00_0000_ffff,
        0x00cf_f200_0000_ffff,
    ];
    for (i, w) in words.iter().enumerate() {
        // SAFETY: address 0..32 is the page just mapped writable; written
        // with assembly because Rust has no valid pointer to address 0.
        unsafe {
            core::arch::asm!("mov qword ptr [{}], {}", in(reg) i as u64 * 8, in(reg) *w, options(nostack, preserves_flags))
        };
    }
    Ok(mfn)
}

/// CPU-3: the LDT is null: no LDT selector loads or transfers control.
fn ldt() {
    let mut ck = Ck::default();
    // The attack of issue 7, finding 4: with an LDT at its reset value the
    // CPU would read these descriptors from the guest's address 0.
    match forge_ldt_at_zero() {
        Ok(mfn) => {
            let gp = |sel: u16| Some((13, u64::from(sel & 0xfffc)));
            ck.eq(
                "far call through the forged call gate 0x07",
                far(0x07, true),
                gp(0x07),
            );
            ck.eq(
                "far jmp through the forged call gate 0x07",
                far(0x07, false),
                gp(0x07),
            );
            ck.eq(
                "far jmp to the forged 32-bit segment 0x17",
                far(0x17, false),
                gp(0x17),
            );
            ck.eq(
                "mov ds, the forged data segment 0x1f",
                trapped(|| at!("mov ds, ax"; in("ax") 0x1fu16)),
                gp(0x1f),
            );
            let mut m = guest_sdk::paging::Mapper::new();
            // SAFETY: as in `forge_ldt_at_zero`.
            let unmapped = unsafe { m.unmap_unchecked(0) }.is_ok() && m.flush().is_ok();
            ck.t(unmapped, "unmap page 0");
            ck.t(
                guest_sdk::paging::release(&[mfn]).is_ok(),
                "release the forged page",
            );
        }
        Err(e) => ck.t(false, &format!("map a page at address 0: {e:?}")),
    }
    regs::set_selectors([0x1b, 0x1b, 0x1b, 0x1b]);
    for sel in [0x04u16, 0x07, 0x0f, 0x2f, 0xfffc | 4 | 3] {
        let gp = Some((13, u64::from(sel & 0xfffc)));
        ck.eq(
            &format!("mov ds, {sel:#x}"),
            trapped(|| at!("mov ds, ax"; in("ax") sel)),
            gp,
        );
        ck.eq(
            &format!("mov es, {sel:#x}"),
            trapped(|| at!("mov es, ax"; in("ax") sel)),
            gp,
        );
        ck.eq(
            &format!("mov fs, {sel:#x}"),
            trapped(|| at!("mov fs, ax"; in("ax") sel)),
            gp,
        );
        ck.eq(
            &format!("mov gs, {sel:#x}"),
            trapped(|| at!("mov gs, ax"; in("ax") sel)),
            gp,
        );
        ck.eq(
            &format!("mov ss, {sel:#x}"),
            trapped(|| at!("mov ss, ax"; in("ax") sel)),
            gp,
        );
        ck.eq(&format!("far jmp {sel:#x}:x"), far(sel, false), gp);
        ck.eq(&format!("far call {sel:#x}:x"), far(sel, true), gp);
    }
    ck.eq(
        "selectors unchanged by the refused loads",
        regs::selectors(),
        [0x1b; 4],
    );
    let zf: u8;
    // SAFETY: lar only reads a descriptor's access rights into a register.
    unsafe {
        core::arch::asm!("lar {0:e}, {1:e}", "setz {2}", out(reg) _, in(reg) 7u32, out(reg_byte) zf, options(nomem, nostack))
    };
    ck.eq("lar of an LDT selector finds nothing (ZF)", zf, 0);
    clause(
        "CPU-3",
        "the LDT is null: LDT selectors raise #GP",
        ck,
        "; a forged LDT at address 0 is never read",
    );
}

/// CPU-3a: no GDT selector leads out of 64-bit ring 3.
fn gdt() {
    let mut ck = Ck::default();
    ck.eq(
        "far jmp to our own 64-bit code segment",
        far(0x23, false),
        None,
    );
    for (sel, what) in [
        (0x08u16, "kernel code"),
        (0x0b, "kernel code, RPL 3"),
        (0x10, "kernel data (sysret's 32-bit code slot)"),
        (0x13, "kernel data, RPL 3"),
        (0x18, "user data"),
        (0x1b, "user data, RPL 3"),
        (0x28, "TSS"),
        (0x2b, "TSS, RPL 3"),
        (0x30, "TSS upper half"),
        (0x3b, "past the GDT limit"),
        (0xfff8, "far past the GDT limit"),
    ] {
        let gp = Some((13, u64::from(sel & 0xfffc)));
        ck.eq(&format!("far jmp {sel:#x} ({what})"), far(sel, false), gp);
        ck.eq(&format!("far call {sel:#x} ({what})"), far(sel, true), gp);
    }
    let cs: u16;
    // SAFETY: reads CS.
    unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack)) };
    ck.eq("still in the 64-bit user code segment", cs, 0x23);
    clause(
        "CPU-3a",
        "no GDT selector leads to ring 0 or compatibility mode",
        ck,
        "",
    );
}

/// CPU-5: with UMIP (where CPUID has it) the descriptor-table reads fault;
/// without, they show only the documented values.
fn umip() {
    let mut ck = Ck::default();
    let umip = regs::leaf7_ecx(2);
    let mut buf = [0u8; 16];
    let b = buf.as_mut_ptr();
    let r = [
        ("sgdt", trapped(|| at!("sgdt [rax]"; in("rax") b))),
        ("sidt", trapped(|| at!("sidt [rax]"; in("rax") b))),
        ("sldt", trapped(|| at!("sldt ax"; out("ax") _))),
        ("smsw", trapped(|| at!("smsw eax"; out("eax") _))),
        ("str", trapped(|| at!("str ax"; out("ax") _))),
    ];
    for (what, got) in r {
        let want = if umip { Some((13, 0)) } else { None };
        ck.eq(what, got, want);
    }
    if !umip {
        let (ldtr, tr): (u16, u16);
        // SAFETY: without UMIP these only read the selectors.
        unsafe {
            core::arch::asm!("sldt {0:x}", "str {1:x}", out(reg) ldtr, out(reg) tr, options(nomem, nostack))
        };
        ck.eq("sldt: the LDTR is null", ldtr, 0);
        ck.eq("str: the TSS selector", tr, 0x28);
    }
    clause(
        "CPU-5",
        "UMIP where the CPU has it",
        ck,
        if umip { "; umip" } else { "; no umip" },
    );
}

/// CPU-6: what else a guest can read: TSC_AUX is 0, XCR0 is what the
/// hypervisor enabled, PKRU does not exist.
fn info(avx: bool) {
    let mut ck = Ck::default();
    if core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 27) != 0 {
        let aux: u32;
        // SAFETY: rdtscp is allowed at CPL 3 (CR4.TSD clear).
        unsafe {
            core::arch::asm!("rdtscp", out("ecx") aux, out("eax") _, out("edx") _, options(nomem, nostack))
        };
        ck.eq("rdtscp's TSC_AUX", aux, 0);
    }
    if regs::leaf7_ecx(22) {
        let pid: u64;
        // SAFETY: rdpid reads TSC_AUX.
        unsafe { core::arch::asm!("rdpid {}", out(reg) pid, options(nomem, nostack)) };
        ck.eq("rdpid", pid, 0);
    }
    let x = regs::xcr0();
    if x != 0 {
        ck.eq("XCR0", x & !0b100, 0b11);
        ck.eq(
            "XCR0 has AVX exactly when AVX is usable",
            x & 0b100 != 0,
            avx,
        );
    }
    ck.eq(
        "rdpkru (CR4.PKE clear)",
        trapped(|| at!("rdpkru"; in("ecx") 0u32, out("eax") _, out("edx") _)),
        Some((6, 0)),
    );
    ck.eq(
        "mov to DR7",
        trapped(|| at!("mov dr7, rax"; in("rax") 0x3ffu64)),
        Some((13, 0)),
    );
    clause("CPU-6", "TSC_AUX, XCR0, PKRU and debug registers", ck, "");
}

// ---------------------------------------------------------------- peer

static SECRET_MEM: [AtomicU64; 64] = [const { AtomicU64::new(SECRET) }; 64];

fn peer_role() -> i32 {
    let avx = regs::avx();
    let mut ck = Ck::default();
    check_initial(&mut ck, avx);
    let clean = ck.fails == 0;
    let mine = Simd::pattern(0x51, avx);
    let theirs = Simd::pattern(0xa0, avx);
    for _ in 1..=4 {
        event::alloc_unbound(DomId(1)).expect("offer a port to domain 1");
    }
    let send = |p: u32| {
        let deadline = time::now_ns() + 10_000 * MS;
        while event::send(Port(p)).is_err() && time::now_ns() < deadline {
            sched::yield_now();
        }
    };
    send(if clean { 1 } else { 2 });
    let r = interleave(&mine, &theirs, PEER_SEL, avx, 300, 200, || true);
    let secret = SECRET_MEM.iter().all(|w| w.load(SeqCst) == SECRET);
    let ok = r.bad == 0 && r.foreign == 0 && r.bad_sel == 0 && secret && r.preempted >= 3;
    println!(
        "cputest peer: clean={} rounds={} preempted={} bad={} foreign={} bad_sel={} secret={}",
        u8::from(clean),
        r.rounds,
        r.preempted,
        r.bad,
        r.foreign,
        r.bad_sel,
        u8::from(secret)
    );
    send(if ok { 3 } else { 4 });
    0
}

// ---------------------------------------------------------------- killers

fn on_sysenter_trap(f: &mut UpcallFrame) -> TrapAction {
    println!("sysenter raised {}", trap::Report(f));
    sched::shutdown(ShutdownReason::Poweroff, 0)
}

fn sysenter_role() -> i32 {
    trap::set_handler(on_sysenter_trap).expect("register the trap handler");
    sched::yield_now();
    // SAFETY: deliberately hostile: TF and AC set, then sysenter.
    // The hypervisor must destroy this domain (or the CPU raise #UD, which
    // the handler above turns into a clean exit); it never returns here.
    unsafe {
        core::arch::asm!(
            "xor ebp, ebp",
            "pushfq",
            "or qword ptr [rsp], 0x40100",
            "popfq",
            "sysenter",
            "ud2",
            options(noreturn)
        )
    }
}

/// CALL-1c, the SYSRET hazard: a `syscall` in the last two bytes below
/// `GUEST_VA_TOP`, whose return address is `GUEST_VA_TOP` itself,
/// non-canonical. The SDK's self entry in L4 slot 255 is replaced by real
/// tables (raw updates: the SDK's paging is unusable from there on)
/// mapping an executable page at the top of the lower half, which ends
/// with `syscall` (abi_version, which must return: the top page is no
/// different), `mov eax, edx` (the next number, in an argument register
/// neither call uses: CALL-1b), `syscall` (console_write of [`RAN`], a call
/// the fast path would run, which must not run). With no trap handler the
/// domain must be destroyed by a #GP at `GUEST_VA_TOP` and [`RAN`] never
/// printed (judged by xtask).
fn sysrettop_role() -> i32 {
    use guest_sdk::abi::layout::GUEST_VA_TOP;
    use guest_sdk::abi::mmu::MmuUpdate;
    use guest_sdk::paging::{self, entry_ptr, leaf_entry, table_entry, Flags, MAP_BASE};
    /// What the call from the last two bytes would print.
    const RAN: &str = "sysrettop: the call from the last two bytes ran\n";
    // The code's last six bytes: syscall; mov eax, edx; syscall.
    const TAIL: [u8; 6] = [0x0f, 0x05, 0x89, 0xd0, 0x0f, 0x05];
    sched::yield_now();
    let Some(root) = paging::root_mfn() else {
        println!("sysrettop: no root page table");
        return 2;
    };
    let mut f = [0u64; 4];
    if let Err(e) = guest_sdk::memory::populate(&mut f) {
        println!("sysrettop: populate: {e}");
        return 2;
    }
    let [l3, l2, l1, code] = f;
    let view = MAP_BASE + 0x40_0000;
    if let Err(e) = paging::map(view, code, Flags::WRITABLE) {
        println!("sysrettop: map: {e}");
        return 2;
    }
    for i in 0..4096u64 {
        // SAFETY: `view` is the page just mapped; nothing Rust reaches
        // lives there. ud2 everywhere but the tail.
        let b = match i.checked_sub(4096 - TAIL.len() as u64) {
            Some(t) => TAIL[t as usize],
            None if i % 2 == 0 => 0x0f,
            None => 0x0b,
        };
        // SAFETY: as above.
        unsafe { ((view + i) as *mut u8).write_volatile(b) };
    }
    let _ = paging::unmap(view);
    let ups = [
        MmuUpdate {
            ptr: entry_ptr(root, 255),
            val: table_entry(l3),
        },
        MmuUpdate {
            ptr: entry_ptr(l3, 511),
            val: table_entry(l2),
        },
        MmuUpdate {
            ptr: entry_ptr(l2, 511),
            val: table_entry(l1),
        },
        MmuUpdate {
            ptr: entry_ptr(l1, 511),
            val: leaf_entry(code, Flags::EXECUTABLE),
        },
    ];
    if let Err(e) = guest_sdk::mmu::update(&ups) {
        println!("sysrettop: mmu_update: {e:?}");
        return 2;
    }
    let _ = guest_sdk::mmu::flush_tlb();
    println!("sysrettop: the top page is mapped");
    // SAFETY: deliberately hostile: runs the tail above, whose second
    // `syscall` returns nowhere; control never comes back.
    unsafe {
        core::arch::asm!(
            "jmp rcx",
            in("rcx") GUEST_VA_TOP - TAIL.len() as u64,
            in("rax") Hypercall::AbiVersion as u64,
            in("rdx") Hypercall::ConsoleWrite as u64,
            in("rdi") RAN.as_ptr() as u64,
            in("rsi") RAN.len() as u64,
            options(noreturn)
        )
    }
}

fn upcallfail_role(si: &StartInfo) -> i32 {
    // The start-info page is mapped read-only: a callback stack there
    // cannot take an upcall frame.
    let ro_top = si.page_va(si.first_free_page - 1) + 4096;
    let entry = upcallfail_role as *const () as u64;
    // SAFETY: the event entry is never reached: the hypervisor cannot
    // write the frame and must destroy the domain instead (TRAP-7).
    let r = unsafe { raw::call_unchecked(Hypercall::SetCallbacks, [entry, 0, ro_top, 0, 0, 0]) };
    if r.is_err() {
        println!("upcallfail: set_callbacks refused: {r:?}");
        return 3;
    }
    let a = raw::call1(Hypercall::EventAllocUnbound, DOMID_SELF).unwrap_or(0);
    let b = raw::call2(Hypercall::EventBindInterdomain, DOMID_SELF, a).unwrap_or(0);
    let _ = raw::call1(Hypercall::EventSend, b);
    println!("upcallfail survived an undeliverable upcall");
    1
}

// ---------------------------------------------------------------- compat

core::arch::global_asm!(
    ".pushsection .text.compat32, \"ax\"",
    ".code32",
    ".global cputest_compat32",
    "cputest_compat32:",
    "syscall",
    "ud2",
    ".code64",
    ".popsection",
);

extern "C" {
    fn cputest_compat32();
}

/// The 32-bit ring-3 code selector of the `testonly=compat32` boot.
const COMPAT32_CS: u16 = 0x3b;

fn compat_role() -> i32 {
    sched::yield_now();
    let target = cputest_compat32 as *const () as u64;
    if target > u64::from(u32::MAX) {
        println!("compat: entry {target:#x} above 4 GiB");
        return 2;
    }
    let p = &raw mut FAR;
    // SAFETY: deliberately hostile: enters compatibility mode at a
    // `syscall`; the hypervisor must destroy this domain (CPU-3b), so
    // control never comes back. Without the test segment the far jump
    // raises #GP and, with no trap handler, destroys the domain too (as an
    // exception, which xtask tells apart).
    unsafe {
        (*p).offset = target as u32;
        (*p).selector = COMPAT32_CS;
        core::arch::asm!("jmp fword ptr [rax]", in("rax") p, options(noreturn));
    }
}

fn watch_role() -> i32 {
    let avx = regs::avx();
    let mine = Simd::pattern(0x51, avx);
    let theirs = Simd::pattern(0xa0, avx);
    let r = interleave(&mine, &theirs, PEER_SEL, avx, 100, 100, || true);
    let secret = SECRET_MEM.iter().all(|w| w.load(SeqCst) == SECRET);
    let ok = r.bad == 0 && r.bad_sel == 0 && secret;
    println!(
        "@ cpu-watch ok={} rounds={} bad={} bad_sel={} secret={}",
        u8::from(ok),
        r.rounds,
        r.bad,
        r.bad_sel,
        u8::from(secret)
    );
    if ok {
        0
    } else {
        1
    }
}
