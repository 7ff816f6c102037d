//! The ABI conformance suite: checks every clause of `docs/abi/` (except
//! `MMU-*`) against the running hypervisor and prints one line per clause:
//!
//! ```text
//! @ conformance clause=EVT-4a name="..." outcome=pass|fail detail="..."
//! ```
//!
//! Negative cases check the exact documented error *and* that nothing
//! changed. Clauses that can only be seen from outside (console prefixes,
//! reports, the end of the run) print marker lines here and are judged by
//! `cargo xtask conformance` from the transcript. Helper domains
//! (`guests/conf-peer`) provide the other side of multi-domain clauses.
//! `docs/conformance.md` has the clause -> test map.
#![no_std]
#![no_main]
#![allow(unsafe_code)]

extern crate alloc;

mod arch;
mod bounds;
mod upcalls;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Debug;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use guest_sdk::abi::args::{CONSOLE_WRITE_STEP, DOMID_SELF, NO_DEADLINE};
use guest_sdk::abi::layout::{
    StartInfo as RawStartInfo, TimeInfo, UpcallFrame, GUEST_VA_TOP, INITIAL_STACK_PAGES, NR_PORTS,
    RED_ZONE, SHARED_INFO_VA, START_INFO_MAGIC, WINDOW_BASE,
};
use guest_sdk::abi::{Error, Hypercall, ABI_VERSION};
use guest_sdk::event::{self, Port};
use guest_sdk::{println, raw, sched, time, StartInfo};

use arch::Sh;
use upcalls as up;

guest_sdk::entry!(main);

// ---------------------------------------------------------------- framework

/// The checks of one clause.
#[derive(Default)]
struct Ck {
    checks: u32,
    fails: u32,
    first: String,
    note: String,
}

impl Ck {
    fn t(&mut self, ok: bool, what: &str) {
        self.checks += 1;
        if !ok {
            self.fails += 1;
            println!("  check failed: {what}");
            if self.first.is_empty() {
                self.first = String::from(what);
            }
        }
    }

    fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        let ok = got == want;
        self.checks += 1;
        if !ok {
            self.fails += 1;
            println!("  check failed: {what}: got {got:?}, want {want:?}");
            if self.first.is_empty() {
                self.first = format!("{what}: got {got:?}, want {want:?}");
            }
        }
    }

    fn err(&mut self, what: &str, got: Result<u64, Error>, want: Error) {
        self.eq(what, got.map_err(Error::name), Err(want.name()));
    }

    fn ok(&mut self, what: &str, got: Result<u64, Error>) -> u64 {
        self.t(got.is_ok(), &format!("{what}: {got:?}"));
        got.unwrap_or(0)
    }
}

/// Prints the clause's line. Kept under the hypervisor's 256-byte line
/// buffer so a line is never split (CON-1d).
fn emit(id: &str, name: &str, pass: bool, detail: &str) {
    let mut d: String = detail
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if d.len() > 150 {
        let mut cut = 150;
        while !d.is_char_boundary(cut) {
            cut -= 1;
        }
        d.truncate(cut);
    }
    println!(
        "@ conformance clause={id} name=\"{name}\" outcome={} detail=\"{d}\"",
        if pass { "pass" } else { "fail" }
    );
}

fn clause(id: &str, name: &str, f: impl FnOnce(&mut Ck)) {
    finish(id, name, &mut Ck::default(), f);
}

/// Checks accumulated across phases for one clause.
static MEM2: spin::Mutex<Ck> = spin::Mutex::new(Ck {
    checks: 0,
    fails: 0,
    first: String::new(),
    note: String::new(),
});

/// Runs `f` on checks already made for the clause, then reports it.
fn finish(id: &str, name: &str, ck: &mut Ck, f: impl FnOnce(&mut Ck)) {
    f(ck);
    let detail = if ck.fails == 0 {
        format!("{} checks{}", ck.checks, ck.note)
    } else {
        format!("{}/{} failed; first: {}", ck.fails, ck.checks, ck.first)
    };
    emit(id, name, ck.fails == 0, &detail);
}

// ---------------------------------------------------------------- helpers

fn call(h: Hypercall, a: [u64; 6]) -> Result<u64, Error> {
    raw::call(h, a)
}
fn c1(h: Hypercall, a0: u64) -> Result<u64, Error> {
    raw::call1(h, a0)
}
fn c2(h: Hypercall, a0: u64, a1: u64) -> Result<u64, Error> {
    raw::call2(h, a0, a1)
}
fn raw_nr(nr: u64, a: [u64; 6]) -> u64 {
    // SAFETY: only used with undefined numbers and harmless calls.
    unsafe { raw::syscall(nr, a) }
}
fn write(ptr: u64, len: u64) -> Result<u64, Error> {
    c2(Hypercall::ConsoleWrite, ptr, len)
}
fn send(p: u64) -> Result<u64, Error> {
    c1(Hypercall::EventSend, p)
}
fn close(p: u64) -> Result<u64, Error> {
    c1(Hypercall::EventClose, p)
}
fn unmask(p: u64) -> Result<u64, Error> {
    c1(Hypercall::EventUnmask, p)
}
fn alloc_unbound(d: u64) -> Result<u64, Error> {
    c1(Hypercall::EventAllocUnbound, d)
}
fn bind(d: u64, p: u64) -> Result<u64, Error> {
    c2(Hypercall::EventBindInterdomain, d, p)
}
fn bind_virq(v: u64) -> Result<u64, Error> {
    c1(Hypercall::EventBindVirq, v)
}
fn block(deadline: u64) -> Result<u64, Error> {
    c1(Hypercall::Block, deadline)
}
fn timer_set(at: u64) -> Result<u64, Error> {
    c1(Hypercall::TimerSet, at)
}
fn set_callbacks(ev: u64, tr: u64, stack: u64) -> Result<u64, Error> {
    // SAFETY: every call either is refused (tested) or names this guest's
    // own entries and callback stack, or entries that are never reached
    // while registered (TRAP-1b, handled by the trap entry).
    unsafe { raw::call_unchecked(Hypercall::SetCallbacks, [ev, tr, stack, 0, 0, 0]) }
}
fn upcall_return(ptr: u64) -> Result<u64, Error> {
    // SAFETY: only called where the hypervisor must refuse it.
    unsafe { raw::call_unchecked(Hypercall::UpcallReturn, [ptr, 0, 0, 0, 0, 0]) }
}

fn now() -> u64 {
    time::now_ns()
}
const MS: u64 = 1_000_000;

/// Sleeps `ms` milliseconds with no interest in events (masked ports stay
/// pending; unmasked ones are handled by the SDK meanwhile).
fn sleep_ms(ms: u64) {
    time::sleep_ns(ms * MS);
}

/// The port the next allocation would get (allocates and closes one).
fn next_port() -> u64 {
    let p = alloc_unbound(DOMID_SELF).unwrap_or(0);
    let _ = close(p);
    p
}

/// A loopback channel: (offered end a, bound end b).
fn loopback() -> (u64, u64) {
    let a = alloc_unbound(DOMID_SELF).expect("loopback: alloc");
    let b = bind(DOMID_SELF, a).expect("loopback: bind");
    (a, b)
}

static SI_VA: AtomicU64 = AtomicU64::new(0);

/// Virtual address of the start-info page.
pub fn start_info_va() -> u64 {
    SI_VA.load(SeqCst)
}

/// Runs `f` with the guest's own upcall entries registered, then gives the
/// SDK its entries back and has it rescan every port.
fn with_own_entries<R>(f: impl FnOnce() -> R) -> R {
    set_callbacks(arch::event_entry(), arch::trap_entry(), own_stack_top())
        .expect("register the conformance entries");
    let r = f();
    guest_sdk::trap::clear_handler().expect("give the SDK its entries back");
    sdk_rescan();
    r
}

fn sdk_rescan() {
    Sh::sel().store(u64::MAX >> (64 - 16), SeqCst);
    Sh::upcall_pending().store(1, SeqCst);
    let _ = c1(Hypercall::AbiVersion, 0);
}

#[repr(C, align(16))]
struct Stack([u8; 65536]);
static mut OWN_STACK: Stack = Stack([0; 65536]);

fn own_stack_top() -> u64 {
    (&raw mut OWN_STACK) as u64 + 65536
}

/// Runs `f` expecting exactly one reflected trap; returns its frame (or
/// `None` if no trap arrived). The trap handler resumes at `r15`.
fn trapped(f: impl FnOnce()) -> Option<UpcallFrame> {
    up::TR_MODE.store(up::TR_R15, SeqCst);
    up::TR_SKIP_LEN.store(0, SeqCst);
    let before = up::TR_COUNT.load(SeqCst);
    f();
    let n = up::TR_COUNT.load(SeqCst) - before;
    (n == 1).then(|| up::recorded(&up::TR_FRAME))
}

/// Executes the instructions with r14 = their address and r15 = the
/// address after them (where the trap handler resumes).
macro_rules! at {
    ($($i:literal),+ $(; $($op:tt)*)?) => {{
        let start: u64;
        // SAFETY: the instructions fault on purpose; the conformance trap
        // entry resumes at r15, the end of the block, with every register
        // as it was.
        unsafe {
            core::arch::asm!(
                "lea r14, [rip + 3f]",
                "lea r15, [rip + 4f]",
                "3:",
                $($i,)+
                "4:",
                out("r14") start,
                out("r15") _,
                $($($op)*)?
            )
        };
        start
    }};
}

// ---------------------------------------------------------------- peers

/// Ports of this domain connected to the helper domains.
#[derive(Default, Clone, Copy)]
struct Peers {
    ctl2: u64,
    yes2: u64,
    no2: u64,
    evt5: u64,
    ctl3: u64,
    yes3: u64,
    no3: u64,
    ctl4: u64,
    ctl5: u64,
}

static YES: AtomicU64 = AtomicU64::new(0);
static NO: AtomicU64 = AtomicU64::new(0);
fn on_yes(_: Port) {
    YES.fetch_add(1, SeqCst);
}
fn on_no(_: Port) {
    NO.fetch_add(1, SeqCst);
}

fn bind_retry(dom: u64, port: u64) -> Result<u64, Error> {
    let deadline = now() + 10_000 * MS;
    loop {
        match bind(dom, port) {
            Ok(p) => return Ok(p),
            Err(e) if now() > deadline => return Err(e),
            Err(_) => sched::yield_now(),
        }
    }
}

fn connect() -> Result<Peers, String> {
    let b = |d, p| bind_retry(d, p).map_err(|e| format!("bind dom {d} port {p}: {e}"));
    let p = event::without_upcalls(|| -> Result<Peers, String> {
        let p = Peers {
            ctl2: b(2, 1)?,
            yes2: b(2, 2)?,
            no2: b(2, 3)?,
            evt5: b(2, 4)?,
            ctl3: b(3, 1)?,
            yes3: b(3, 2)?,
            no3: b(3, 3)?,
            ctl4: b(4, 1)?,
            ctl5: b(5, 1)?,
        };
        for y in [p.yes2, p.yes3] {
            event::set_handler(Port(y as u32), on_yes);
        }
        for n in [p.no2, p.no3] {
            event::set_handler(Port(n as u32), on_no);
        }
        Ok(p)
    })?;
    Ok(p)
}

/// Sends on `ctl` and waits for the answer: `Some(true)` yes, `Some(false)`
/// no, `None` no answer within 5 s.
fn ask(ctl: u64) -> Option<bool> {
    let (y, n) = (YES.load(SeqCst), NO.load(SeqCst));
    send(ctl).ok()?;
    let answered = || YES.load(SeqCst) != y || NO.load(SeqCst) != n;
    event::wait_for_until(answered, now() + 5_000 * MS);
    if YES.load(SeqCst) != y {
        Some(true)
    } else if NO.load(SeqCst) != n {
        Some(false)
    } else {
        None
    }
}

// ---------------------------------------------------------------- main

fn main(si: &StartInfo) -> i32 {
    let si_va = si.page_va(si.first_free_page - 1);
    SI_VA.store(si_va, SeqCst);
    // SAFETY: MEM-3: the start-info page stays mapped read-only for the
    // domain's life; a plain-data copy.
    let si_at_start: RawStartInfo = unsafe { core::ptr::read_volatile(si_va as *const _) };

    println!("conformance: starting (domain {})", si.domain_id);
    base_and_call(si);
    console();
    memory(si);
    named_channels(si);
    let peers = match connect() {
        Ok(p) => Some(p),
        Err(e) => {
            println!("conformance: cannot connect the helper domains: {e}");
            None
        }
    };
    events(peers);
    time_and_sched();
    bounds::run();
    with_own_entries(|| {
        faults(si);
        traps();
        mem3a(si);
    });
    multi_domain(peers);

    // MEM-3 "written once": the page is unchanged at the end.
    // SAFETY: as above.
    let si_end: RawStartInfo = unsafe { core::ptr::read_volatile(si_va as *const _) };
    clause("MEM-3", "entry state and start-info page", |ck| {
        mem3(ck, si, si_va);
        ck.t(
            bytes(&si_at_start) == bytes(&si_end),
            "start-info page changed during the run",
        );
    });
    println!("conformance: done");
    0
}

fn bytes(s: &RawStartInfo) -> &[u8] {
    // SAFETY: StartInfo is plain repr(C) data with no padding.
    unsafe {
        core::slice::from_raw_parts(
            (s as *const RawStartInfo).cast::<u8>(),
            core::mem::size_of::<RawStartInfo>(),
        )
    }
}

// ---------------------------------------------------------------- BASE, CALL

fn base_and_call(si: &StartInfo) {
    clause("BASE-1", "abi_version", |ck| {
        ck.eq(
            "abi_version",
            c1(Hypercall::AbiVersion, 0),
            Ok(u64::from(ABI_VERSION)),
        );
        ck.eq("start info agrees", si.abi_version, ABI_VERSION);
        ck.eq(
            "garbage args",
            call(Hypercall::AbiVersion, [u64::MAX; 6]),
            Ok(u64::from(ABI_VERSION)),
        );
    });

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
        let _ = close(b);
        let _ = close(a);
    });

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

// ---------------------------------------------------------------- CON

fn console() {
    clause("CON-1", "console_write returns the length", |ck| {
        let m = b"CON-1 marker: hello\n";
        ck.eq(
            "write",
            write(m.as_ptr() as u64, m.len() as u64),
            Ok(m.len() as u64),
        );
        let mut buf = alloc::vec![b'x'; 256];
        buf[255] = b'\n';
        ck.eq("256 bytes", write(buf.as_ptr() as u64, 256), Ok(256));
    });
    clause(
        "CON-2",
        "a write over 256 bytes is short: 256 taken, the rest by the next call",
        |ck| {
            // Lines of 64 bytes ("CON2 line NN" + dashes + newline), so
            // xtask can check that every one of them was printed once.
            let mut buf = alloc::vec::Vec::new();
            for i in 0..64 {
                let mut line = alloc::format!("CON2 line {i:02} ");
                while line.len() < 63 {
                    line.push('-');
                }
                line.push('\n');
                buf.extend_from_slice(line.as_bytes());
            }
            let mut at = 0u64;
            let mut calls = 0;
            while at < 4096 {
                let n = (4096 - at).min(4096);
                let r = write(buf.as_ptr() as u64 + at, n);
                let want = n.min(CONSOLE_WRITE_STEP);
                ck.eq(
                    &alloc::format!("call {calls} ({n} bytes offered)"),
                    r,
                    Ok(want),
                );
                if r != Ok(want) {
                    break;
                }
                at += want;
                calls += 1;
            }
            ck.eq("calls for 4096 bytes", calls, 16);
            // The whole range is checked, not only the part taken: a range
            // whose tail (past the first 256 bytes) is unmapped writes
            // nothing (the marker must not appear).
            // The marker sits in the window's top 16 bytes (dead, see
            // CON-1b), inside the first 256 bytes of the range.
            let si = guest_sdk::start_info();
            let end = si.page_va(si.nr_pages);
            let msg = b"CON2-LEAK";
            let at = end - msg.len() as u64;
            for (i, &b) in msg.iter().enumerate() {
                // SAFETY: the window's top 16 bytes are dead (CON-1b).
                unsafe { core::ptr::write_volatile((at + i as u64) as *mut u8, b) };
            }
            ck.err(
                "256 bytes mapped, tail past the window",
                write(end - 256, 400),
                Error::BadAddress,
            );
            let nl = b"\n";
            let _ = write(nl.as_ptr() as u64, 1);
        },
    );
    clause(
        "CON-1a",
        "length over 4096: invalid_argument, nothing written",
        |ck| {
            let mut buf = alloc::vec![b'L'; 8192];
            buf[..12].copy_from_slice(b"CON1A-LEAK \n");
            for len in [4097u64, 8192, 1 << 32, u64::MAX] {
                ck.err(
                    &format!("len {len}"),
                    write(buf.as_ptr() as u64, len),
                    Error::InvalidArgument,
                );
            }
        },
    );
    clause(
        "CON-1b",
        "bad pointer: bad_address, nothing written",
        |ck| {
            // A buffer whose last byte is past the end of the window: its
            // mapped part ("CON1B-LEAK") must not be printed (xtask checks). The
            // window's top 16 bytes hold `_start`'s dead return address and
            // the runtime's saved frame pointer, never used again.
            let si = guest_sdk::start_info();
            let end = si.page_va(si.nr_pages);
            let msg = b"CON1B-LEAK";
            let at = end - msg.len() as u64;
            for (i, &b) in msg.iter().enumerate() {
                // SAFETY: see above: the bytes are dead.
                unsafe { core::ptr::write_volatile((at + i as u64) as *mut u8, b) };
            }
            ck.err(
                "ends past the window",
                write(at, msg.len() as u64 + 1),
                Error::BadAddress,
            );
            ck.err(
                "starts unmapped, ends mapped",
                write(SHARED_INFO_VA - 4, 16),
                Error::BadAddress,
            );
            ck.err("null", write(0, 10), Error::BadAddress);
            ck.err(
                "hypervisor",
                write(0xffff_ffff_8000_0000, 10),
                Error::BadAddress,
            );
            ck.err(
                "direct map",
                write(0xffff_8000_0000_0000, 10),
                Error::BadAddress,
            );
            ck.err("wraps", write(u64::MAX, 2), Error::BadAddress);
            let nl = b"\n";
            let _ = write(nl.as_ptr() as u64, 1);
        },
    );
    clause("CON-1c", "length 0 returns 0", |ck| {
        ck.eq("len 0, valid ptr", write(start_info_va(), 0), Ok(0));
        ck.eq("len 0, null ptr", write(0, 0), Ok(0));
        let leak = b"CON1C-LEAK\n";
        ck.eq("len 0, text", write(leak.as_ptr() as u64, 0), Ok(0));
        ck.eq(
            "len 0, hypervisor ptr",
            write(0xffff_ffff_8000_0000, 0),
            Ok(0),
        );
    });
    // CON-1d: markers judged by xtask from the transcript.
    let part1 = b"CON1D partial ";
    let part2 = b"line joined\n";
    let _ = write(part1.as_ptr() as u64, part1.len() as u64);
    sched::yield_now();
    let _ = write(part2.as_ptr() as u64, part2.len() as u64);
    let ctl = b"CON1D ctl:\x1b[1m\x07\r\x7f|\t|end\n";
    let _ = write(ctl.as_ptr() as u64, ctl.len() as u64);
    let forge = b"CON1D forge\n@ forged by=conf\n";
    let _ = write(forge.as_ptr() as u64, forge.len() as u64);
    let mut long = alloc::vec![b'y'; 300];
    long[..11].copy_from_slice(b"CON1D long ");
    long.push(b'\n');
    // UTF-8 (CON-1d): valid text unchanged, each invalid sequence one
    // U+FFFD with the rest kept, a character at the 256-byte cut moved whole.
    let mut straddle = alloc::vec![b'x'; 254];
    straddle[..15].copy_from_slice(b"CON1D straddle ");
    straddle.extend_from_slice("🦀tail\n".as_bytes());
    for bytes in [
        &long[..],
        "CON1D utf8: héllo ✓ 🦀\n".as_bytes(),
        &b"CON1D bad:\xff|\xe2\x82|end\n"[..],
        &straddle[..],
    ] {
        // Longer than one call takes (CON-2): write the rest.
        let mut at = 0;
        while at < bytes.len() {
            match write(bytes[at..].as_ptr() as u64, (bytes.len() - at) as u64) {
                Ok(n) if n > 0 => at += n as usize,
                _ => break,
            }
        }
    }
    emit(
        "CON-1d",
        "prefix, buffering, sanitising",
        true,
        "judged by xtask",
    );
}

// ---------------------------------------------------------------- MEM

fn mem3(ck: &mut Ck, si: &StartInfo, si_va: u64) {
    // SAFETY: the start-info page is mapped read-only (MEM-2).
    let magic = unsafe { arch::peek(si_va) };
    ck.eq("magic in the page", magic.to_le_bytes(), START_INFO_MAGIC);
    ck.eq("magic", si.magic, START_INFO_MAGIC);
    ck.eq("abi_version", si.abi_version, ABI_VERSION);
    ck.eq("domain_id", si.domain_id, 1);
    ck.eq("flags (not privileged)", si.flags, 0);
    ck.eq("nr_pages (4M)", si.nr_pages, 1024);
    ck.t(si.max_pages >= si.nr_pages, "max_pages < nr_pages");
    ck.eq("window_base", si.window_base, WINDOW_BASE);
    ck.eq("shared_info_va", si.shared_info_va, SHARED_INFO_VA);
    ck.eq(
        "stack_first_page",
        si.stack_first_page,
        si.nr_pages - INITIAL_STACK_PAGES,
    );
    ck.t(si.tsc_hz > 0, "tsc_hz is 0");
    ck.eq("name", si.name(), "conf");
    ck.eq("cmdline", si.cmdline(), "suite=all");
    ck.eq("cmdline_len", si.cmdline_len as usize, "suite=all".len());
    ck.eq("start info page", si_va & 0xfff, 0);
    // rsp at entry is the window's top: main's stack lies in the stack pages.
    let local = 0u64;
    let sp = &local as *const u64 as u64;
    ck.t(
        sp >= si.page_va(si.stack_first_page) && sp < si.page_va(si.nr_pages),
        "main's stack is not in the initial stack pages",
    );
}

fn memory(si: &StartInfo) {
    MEM2.lock().checks = 0;
    {
        let ck = &mut *MEM2.lock();
        let code = main as *const () as u64;
        ck.t(
            code >= WINDOW_BASE && code < si.page_va(si.pt_first_page),
            "code is not in the image pages",
        );
        ck.t(si.pt_pages >= 5, "fewer than 5 page-table pages");
        let fl = si.page_va(si.pt_first_page + si.pt_pages);
        ck.eq("frame list follows the page tables", si.frame_list_va, fl);
        let fl_pages = (si.nr_pages * 8).div_ceil(4096);
        ck.eq(
            "start info follows the frame list",
            start_info_va(),
            fl + fl_pages * 4096,
        );
        ck.eq(
            "first free page",
            si.first_free_page,
            si.pt_first_page + si.pt_pages + fl_pages + 1,
        );
        // The frame list: nr_pages distinct nonzero frames; page tables readable.
        let mut frames = Vec::new();
        for i in 0..si.nr_pages {
            // SAFETY: the frame list is mapped read-write (MEM-2).
            frames.push(unsafe { arch::peek(si.frame_list_va + 8 * i) });
        }
        ck.t(frames.iter().all(|&f| f != 0), "a zero frame number");
        frames.sort_unstable();
        frames.dedup();
        ck.eq("distinct frames", frames.len() as u64, si.nr_pages);
        // SAFETY: page tables are mapped read-only (MEM-2).
        let l4_0 = unsafe { arch::peek(si.page_va(si.pt_first_page)) };
        ck.t(l4_0 & 1 == 1, "root page table entry 0 not present");
        // The shared-info page is read-write.
        let w = Sh::word(511);
        let old = w.load(SeqCst);
        w.store(0x1234, SeqCst);
        ck.eq("shared info writable", w.load(SeqCst), 0x1234);
        w.store(old, SeqCst);
        // Fault checks (read-only, unmapped, no-execute) are in `faults`,
        // which reports the clause.
    }
    clause("MEM-2a", "frames are scrubbed", |ck| {
        // The last page of the start-info page beyond the record, the frame
        // list's tail, and the highest heap pages are zero.
        let si_end = start_info_va() + core::mem::size_of::<RawStartInfo>() as u64;
        let mut nonzero = 0;
        let mut va = (si_end + 7) & !7;
        while va < start_info_va() + 4096 {
            // SAFETY: inside the start-info page.
            nonzero += u64::from(unsafe { arch::peek(va) } != 0);
            va += 8;
        }
        ck.eq("start-info tail nonzero words", nonzero, 0);
        let fl_end = si.frame_list_va + si.nr_pages * 8;
        let mut nonzero = 0;
        let mut va = fl_end;
        while va & 0xfff != 0 {
            // SAFETY: inside the frame list's last page.
            nonzero += u64::from(unsafe { arch::peek(va) } != 0);
            va += 8;
        }
        ck.eq("frame-list tail nonzero words", nonzero, 0);
        // The top 64 pages of the heap (the allocator fills from the bottom).
        let hi = si.page_va(si.stack_first_page);
        let mut nonzero = 0;
        let mut va = hi - 64 * 4096;
        while va < hi {
            // SAFETY: heap pages are mapped read-write; nothing uses these.
            nonzero += u64::from(unsafe { arch::peek(va) } != 0);
            va += 8;
        }
        ck.eq("high heap nonzero words", nonzero, 0);
        // The lowest initial-stack page (far below anything used).
        let lo = si.page_va(si.stack_first_page);
        let mut nonzero = 0;
        for i in 0..512 {
            // SAFETY: the stack pages are mapped read-write.
            nonzero += u64::from(unsafe { arch::peek(lo + 8 * i) } != 0);
        }
        ck.eq("lowest stack page nonzero words", nonzero, 0);
    });
    emit(
        "MEM-2b",
        "bad images are refused at boot",
        true,
        "judged by xtask (separate boot)",
    );
    clause("MEM-4", "shared-info page", |ck| {
        let t = time_info();
        ck.eq("version even", t.version % 2, 0);
        ck.eq("tsc_mul", t.tsc_mul, TimeInfo::mul_for_hz(si.tsc_hz));
        ck.eq("reserved", t.reserved, 0);
        // The hypervisor relies on no value being sane: garbage in the
        // upcall flags and the selector is survived.
        event::without_upcalls(|| {
            Sh::sel().store(u64::MAX, SeqCst);
            ck.eq(
                "abi_version with garbage sel",
                c1(Hypercall::AbiVersion, 0),
                Ok(u64::from(ABI_VERSION)),
            );
            Sh::sel().store(0, SeqCst);
        });
    });
}

fn time_info() -> TimeInfo {
    let w = |i: usize| Sh::word(guest_sdk::abi::layout::SHARED_TIME_OFFSET / 8 + i).load(SeqCst);
    TimeInfo {
        version: w(0) as u32,
        reserved: (w(0) >> 32) as u32,
        tsc_timestamp: w(1),
        system_time_ns: w(2),
        tsc_mul: w(3),
    }
}

// ---------------------------------------------------------------- EVT

static HITS: AtomicU64 = AtomicU64::new(0);
static ORDER: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static RERAISE: AtomicU64 = AtomicU64::new(0);
fn on_hit(p: Port) {
    let n = HITS.fetch_add(1, SeqCst);
    if (n as usize) < ORDER.len() {
        ORDER[n as usize].store(u64::from(p.0), SeqCst);
    }
    let r = RERAISE.swap(0, SeqCst);
    if r != 0 {
        let _ = send(r);
    }
}
fn reset_hits() {
    HITS.store(0, SeqCst);
    for o in &ORDER {
        o.store(0, SeqCst);
    }
}

fn bad_ports(extra: &[u64]) -> Vec<u64> {
    let mut v = alloc::vec![
        0u64,
        NR_PORTS as u64,
        NR_PORTS as u64 + 1,
        u32::MAX as u64,
        1 << 32,
        u64::MAX
    ];
    v.extend_from_slice(extra);
    v
}

fn events(peers: Option<Peers>) {
    clause(
        "EVT-0",
        "raising sets pending, selector, upcall_pending",
        |ck| {
            let (a, b) = loopback();
            event::without_upcalls(|| {
                Sh::sel().store(0, SeqCst);
                Sh::upcall_pending().store(0, SeqCst);
                ck.eq("send", send(a), Ok(0));
                ck.t(Sh::is_pending(b as u32), "b not pending");
                ck.t(
                    !Sh::is_pending(a as u32),
                    "the sender's port became pending",
                );
                ck.t(
                    Sh::sel().load(SeqCst) & (1 << (b / 64)) != 0,
                    "selector bit not set",
                );
                ck.eq("upcall_pending", Sh::upcall_pending().load(SeqCst), 1);
                Sh::set_pending(b as u32, false);
                ck.eq("send back", send(b), Ok(0));
                ck.t(Sh::is_pending(a as u32), "a not pending");
                Sh::set_pending(a as u32, false);
                // Masked: the bit is set but neither selector nor upcall_pending.
                Sh::set_mask(b as u32, true);
                Sh::sel().store(0, SeqCst);
                Sh::upcall_pending().store(0, SeqCst);
                ck.eq("send to masked", send(a), Ok(0));
                ck.t(Sh::is_pending(b as u32), "masked b not pending");
                ck.eq("selector for masked", Sh::sel().load(SeqCst), 0);
                ck.eq(
                    "upcall_pending for masked",
                    Sh::upcall_pending().load(SeqCst),
                    0,
                );
                Sh::set_mask(b as u32, false);
                Sh::set_pending(b as u32, false);
            });
            let _ = close(a);
            let _ = close(b);
        },
    );

    clause("EVT-0b", "coalescing: N raises are one event", |ck| {
        let (a, b) = loopback();
        reset_hits();
        event::without_upcalls(|| {
            event::set_handler(Port(b as u32), on_hit);
            for _ in 0..5 {
                ck.eq("send", send(a), Ok(0));
            }
        });
        ck.eq("handler calls", HITS.load(SeqCst), 1);
        let _ = event::close(Port(b as u32));
        let _ = close(a);
    });

    clause(
        "EVT-0c",
        "a set of ports; a raise during handling is seen again",
        |ck| {
            let (a1, b1) = loopback();
            let (a2, b2) = loopback();
            let (a3, b3) = loopback();
            reset_hits();
            event::without_upcalls(|| {
                for b in [b1, b2, b3] {
                    event::set_handler(Port(b as u32), on_hit);
                }
                for a in [a3, a1, a2] {
                    let _ = send(a);
                }
                for b in [b1, b2, b3] {
                    ck.t(Sh::is_pending(b as u32), "not all pending");
                }
                RERAISE.store(a1, SeqCst);
            });
            ck.eq("handler calls (3 + re-raise)", HITS.load(SeqCst), 4);
            let order: Vec<u64> = ORDER.iter().take(4).map(|o| o.load(SeqCst)).collect();
            ck.eq("order", order, alloc::vec![b1, b2, b3, b1]);
            for p in [a1, b1, a2, b2, a3, b3] {
                let _ = event::close(Port(p as u32));
            }
        },
    );

    clause(
        "EVT-0d",
        "masked ports stay pending, no wake, no upcall",
        |ck| {
            let (a, b) = loopback();
            reset_hits();
            event::set_handler(Port(b as u32), on_hit);
            Sh::set_mask(b as u32, true);
            ck.eq("send", send(a), Ok(0));
            ck.eq("no upcall", HITS.load(SeqCst), 0);
            ck.t(Sh::is_pending(b as u32), "masked port not pending");
            let t0 = now();
            ck.eq("block is not woken", block(t0 + 5 * MS), Ok(1));
            ck.t(now() >= t0 + 5 * MS, "block returned before its deadline");
            ck.eq("still no upcall", HITS.load(SeqCst), 0);
            ck.eq("unmask", unmask(b), Ok(0));
            ck.eq("delivered on unmask", HITS.load(SeqCst), 1);
            ck.t(!Sh::is_masked(b as u32), "still masked");
            let _ = event::close(Port(b as u32));
            let _ = close(a);
        },
    );

    clause(
        "EVT-0e",
        "shared-info garbage affects only this domain",
        |ck| {
            let (a, b) = loopback();
            // Garbage in our bitmaps and selector, then hypercalls that read
            // them; upcalls stay masked so the SDK never sees the garbage.
            event::without_upcalls(|| {
                let saved: Vec<u64> = (0..32).map(|w| Sh::word(w).load(SeqCst)).collect();
                for w in 0..32 {
                    Sh::word(w).store(0xa5a5_a5a5_a5a5_a5a5, SeqCst);
                }
                Sh::sel().store(u64::MAX, SeqCst);
                ck.eq("send with garbage", send(a), Ok(0));
                ck.eq("unmask with garbage", unmask(b), Ok(0));
                ck.eq(
                    "abi_version with garbage",
                    c1(Hypercall::AbiVersion, 0),
                    Ok(u64::from(ABI_VERSION)),
                );
                for (w, v) in saved.iter().enumerate() {
                    Sh::word(w).store(*v, SeqCst);
                }
                Sh::sel().store(0, SeqCst);
                Sh::upcall_pending().store(0, SeqCst);
                Sh::set_pending(b as u32, false);
            });
            let _ = close(a);
            let _ = close(b);
            // Other domains are unaffected: the helpers answer later (EVT-2b,
            // EVT-5 ask them after this).
        },
    );

    clause("EVT-1", "alloc_unbound", |ck| {
        // A freshly allocated port has pending and mask clear, even if the
        // guest left them set.
        let p = next_port();
        event::without_upcalls(|| {
            Sh::set_pending(p as u32, true);
            Sh::set_mask(p as u32, true);
            let q = alloc_unbound(DOMID_SELF);
            ck.eq("same port", q, Ok(p));
            ck.t(!Sh::is_pending(p as u32), "pending not cleared");
            ck.t(!Sh::is_masked(p as u32), "mask not cleared");
            ck.err("unbound: send", send(p), Error::WrongState);
            let _ = close(p);
        });
        let q = alloc_unbound(2);
        ck.t(q.is_ok(), "offer to domain 2 refused");
        let _ = close(q.unwrap_or(0));
    });

    clause("EVT-1a", "alloc_unbound to no domain: not_found", |ck| {
        let next = next_port();
        for d in [
            0u64,
            99,
            0x7fef,
            0x7ff1,
            0xffff,
            0x1_0001,
            0x1_7ff0,
            u64::MAX,
        ] {
            ck.err(&format!("domain {d:#x}"), alloc_unbound(d), Error::NotFound);
        }
        ck.eq("nothing allocated", next_port(), next);
    });

    clause("EVT-2", "bind_interdomain connects both ends", |ck| {
        let a = ck.ok("alloc", alloc_unbound(DOMID_SELF));
        let b = ck.ok("bind", bind(DOMID_SELF, a));
        event::without_upcalls(|| {
            ck.eq("send a", send(a), Ok(0));
            ck.t(Sh::is_pending(b as u32), "b not pending");
            ck.eq("send b", send(b), Ok(0));
            ck.t(Sh::is_pending(a as u32), "a not pending");
            Sh::set_pending(a as u32, false);
            Sh::set_pending(b as u32, false);
        });
        let _ = close(a);
        let _ = close(b);
        ck.t(
            peers.is_some(),
            "could not bind the helper domains' offered ports",
        );
    });

    clause("EVT-2a", "no such domain or port: not_found", |ck| {
        let a = alloc_unbound(DOMID_SELF).unwrap_or(0);
        let next = next_port();
        for d in [0u64, 99, 0x1_0001, u64::MAX] {
            ck.err(&format!("domain {d:#x}"), bind(d, a), Error::NotFound);
        }
        for p in bad_ports(&[(1 << 32) | a]) {
            ck.err(
                &format!("port {p:#x}"),
                bind(DOMID_SELF, p),
                Error::NotFound,
            );
        }
        ck.eq("nothing allocated", next_port(), next);
        ck.err("a still unbound", send(a), Error::WrongState);
        let b = bind(DOMID_SELF, a);
        ck.t(b.is_ok(), "a no longer bindable");
        let _ = close(b.unwrap_or(0));
        let _ = close(a);
    });

    clause(
        "EVT-2b",
        "not unbound, or offered elsewhere: wrong_state",
        |ck| {
            let next = next_port();
            // Helper's port 5 is offered to domain 3, not to us.
            ck.err("port offered to domain 3", bind(2, 5), Error::WrongState);
            // Helper's port 1 is already connected (to us).
            ck.err("connected port", bind(2, 1), Error::WrongState);
            // Helper's port 1000 is free.
            ck.err("free port", bind(2, 1000), Error::WrongState);
            // Our own port offered to domain 2 cannot be bound by us.
            let o = alloc_unbound(2).unwrap_or(0);
            ck.err(
                "own port offered to 2",
                bind(DOMID_SELF, o),
                Error::WrongState,
            );
            let _ = close(o);
            ck.eq("nothing allocated", next_port(), next);
            // The legitimate binder (domain 3) still can.
            match peers {
                Some(p) => ck.eq("third binds helper's port 5", ask(p.ctl3), Some(true)),
                None => ck.t(false, "no helper domains"),
            }
        },
    );

    clause("EVT-3", "bind_virq", |ck| {
        let p = ck.ok("bind timer", bind_virq(0));
        ck.t((1..NR_PORTS as u64).contains(&p), "not a port");
        ck.err("send on virq port", send(p), Error::WrongState);
        ck.eq("close", close(p), Ok(0));
    });
    clause("EVT-3a", "undefined virq: invalid_argument", |ck| {
        let next = next_port();
        for v in [1u64, 2, 0xff, 1 << 32, u64::MAX] {
            ck.err(
                &format!("virq {v:#x}"),
                bind_virq(v),
                Error::InvalidArgument,
            );
        }
        ck.eq("nothing allocated", next_port(), next);
    });
    clause("EVT-3b", "virq already bound: wrong_state", |ck| {
        let p = ck.ok("bind", bind_virq(0));
        let next = next_port();
        ck.err("bind again", bind_virq(0), Error::WrongState);
        ck.eq("nothing allocated", next_port(), next);
        ck.eq("close", close(p), Ok(0));
        let q = ck.ok("rebind after close", bind_virq(0));
        let _ = close(q);
    });

    // EVT-1b, EVT-2c, EVT-3c: fill the table.
    let mut held = Vec::new();
    let offered_self = alloc_unbound(DOMID_SELF).unwrap_or(0);
    while let Ok(p) = alloc_unbound(DOMID_SELF) {
        held.push(p);
    }
    let in_use = held.len() + 1 + used_before_fill(peers);
    clause("EVT-1b", "all ports in use: no_resources", |ck| {
        ck.eq("ports in use when full", in_use, NR_PORTS - 1);
        ck.err(
            "alloc when full",
            alloc_unbound(DOMID_SELF),
            Error::NoResources,
        );
    });
    clause("EVT-2c", "no local port: no_resources", |ck| {
        ck.err(
            "bind when full",
            bind(DOMID_SELF, offered_self),
            Error::NoResources,
        );
        // The remote port is still unbound and bindable.
        ck.err(
            "remote still unbound",
            send(offered_self),
            Error::WrongState,
        );
        let last = held.pop().unwrap_or(0);
        let _ = close(last);
        let b = bind(DOMID_SELF, offered_self);
        ck.t(b.is_ok(), "bind after freeing one port failed");
        let _ = close(b.unwrap_or(0));
        held.push(alloc_unbound(DOMID_SELF).unwrap_or(0));
    });
    clause("EVT-3c", "bind_virq when full: no_resources", |ck| {
        ck.err("bind_virq when full", bind_virq(0), Error::NoResources);
        let last = held.pop().unwrap_or(0);
        let _ = close(last);
        let v = bind_virq(0);
        ck.t(
            v.is_ok(),
            "virq not bindable after freeing a port (refusal changed state)",
        );
        let _ = close(v.unwrap_or(0));
    });
    for p in held {
        let _ = close(p);
    }
    let _ = close(offered_self);

    clause("EVT-4", "event_send raises the peer port", |ck| {
        let (a, b) = loopback();
        event::without_upcalls(|| {
            ck.eq("send", send(a), Ok(0));
            ck.t(Sh::is_pending(b as u32), "not raised");
            Sh::set_pending(b as u32, false);
        });
        let _ = close(a);
        let _ = close(b);
        if let Some(p) = peers {
            ck.eq("send to helper", send(p.evt5), Ok(0));
        }
    });
    clause("EVT-4a", "bad or free port: not_found", |ck| {
        let (a, b) = loopback();
        event::without_upcalls(|| {
            for p in bad_ports(&[1000, (1 << 32) | a]) {
                ck.err(&format!("port {p:#x}"), send(p), Error::NotFound);
            }
            ck.t(!Sh::is_pending(b as u32), "a refused send raised the peer");
        });
        let _ = close(a);
        let _ = close(b);
    });
    clause("EVT-4b", "unbound or virq port: wrong_state", |ck| {
        let u = alloc_unbound(DOMID_SELF).unwrap_or(0);
        ck.err("unbound", send(u), Error::WrongState);
        let v = bind_virq(0).unwrap_or(0);
        ck.err("virq", send(v), Error::WrongState);
        let _ = close(u);
        let _ = close(v);
    });
    clause(
        "EVT-4c",
        "send never fails for the receiver's state",
        |ck| {
            let (a, b) = loopback();
            Sh::set_mask(b as u32, true);
            for i in 0..100 {
                ck.eq(&format!("send {i} to masked"), send(a), Ok(0));
            }
            Sh::set_mask(b as u32, false);
            Sh::set_pending(b as u32, false);
            let _ = close(a);
            let _ = close(b);
            if let Some(p) = peers {
                // The helper is blocked; its port 4 has no handler.
                for i in 0..20 {
                    ck.eq(&format!("send {i} to busy helper"), send(p.evt5), Ok(0));
                }
            }
        },
    );

    clause(
        "EVT-5",
        "close frees the port, peer becomes unbound",
        |ck| {
            let (a, b) = loopback();
            event::without_upcalls(|| {
                let _ = send(a);
                ck.t(Sh::is_pending(b as u32), "not pending before close");
                ck.eq("close b", close(b), Ok(0));
                ck.t(
                    !Sh::is_pending(b as u32),
                    "pending bit not cleared by close",
                );
            });
            ck.err("closed port: send", send(b), Error::NotFound);
            ck.err("peer now unbound", send(a), Error::WrongState);
            let b2 = bind(DOMID_SELF, a);
            ck.t(b2.is_ok(), "peer not offered back to the closer");
            let _ = close(b2.unwrap_or(0));
            let _ = close(a);
            let v = bind_virq(0).unwrap_or(0);
            ck.eq("close virq port", close(v), Ok(0));
            let v2 = bind_virq(0);
            ck.t(v2.is_ok(), "virq not released by close");
            let _ = close(v2.unwrap_or(0));
            match peers {
                Some(p) => {
                    ck.eq("close our end of helper port 4", close(p.evt5), Ok(0));
                    ck.eq("helper sees wrong_state", ask(p.ctl2), Some(true));
                    let again = bind(2, 4);
                    ck.t(again.is_ok(), "helper's port 4 not offered back to us");
                    let _ = close(again.unwrap_or(0));
                }
                None => ck.t(false, "no helper domains"),
            }
        },
    );
    clause("EVT-5a", "bad or free port: not_found", |ck| {
        let (a, b) = loopback();
        for p in bad_ports(&[1000, (1 << 32) | a]) {
            ck.err(&format!("port {p:#x}"), close(p), Error::NotFound);
        }
        event::without_upcalls(|| {
            ck.eq("a still connected", send(a), Ok(0));
            Sh::set_pending(b as u32, false);
        });
        let _ = close(a);
        let _ = close(b);
    });

    clause("EVT-6", "unmask delivers a pending port at once", |ck| {
        let (a, b) = loopback();
        event::without_upcalls(|| {
            Sh::set_mask(b as u32, true);
            let _ = send(a);
            Sh::sel().store(0, SeqCst);
            Sh::upcall_pending().store(0, SeqCst);
            ck.eq("unmask", unmask(b), Ok(0));
            ck.t(!Sh::is_masked(b as u32), "mask not cleared");
            ck.t(
                Sh::sel().load(SeqCst) & (1 << (b / 64)) != 0,
                "selector not set",
            );
            ck.eq("upcall_pending", Sh::upcall_pending().load(SeqCst), 1);
            Sh::set_pending(b as u32, false);
            // Unmasking a port that is not pending raises nothing.
            Sh::set_mask(b as u32, true);
            Sh::sel().store(0, SeqCst);
            Sh::upcall_pending().store(0, SeqCst);
            ck.eq("unmask idle", unmask(b), Ok(0));
            ck.eq(
                "idle: no upcall_pending",
                Sh::upcall_pending().load(SeqCst),
                0,
            );
        });
        let _ = close(a);
        let _ = close(b);
    });
    clause("EVT-6a", "port 0 or >= NR_PORTS: not_found", |ck| {
        let (a, b) = loopback();
        Sh::set_mask(b as u32, true);
        for p in bad_ports(&[(1 << 32) | b]) {
            ck.err(&format!("port {p:#x}"), unmask(p), Error::NotFound);
        }
        ck.t(
            Sh::is_masked(b as u32),
            "a refused unmask cleared a mask bit",
        );
        Sh::set_mask(b as u32, false);
        let _ = close(a);
        let _ = close(b);
    });
}

/// Ports in use before the fill (the peer channels).
fn used_before_fill(peers: Option<Peers>) -> usize {
    // Count by probing: every port that refuses alloc is held; simpler, the
    // peers' count: 9 bound ports when connected, plus the named channels
    // wired at boot (EVT-7).
    let named = guest_sdk::start_info().channels().count();
    if peers.is_some() {
        9 + named
    } else {
        named
    }
}

// ---------------------------------------------------------------- named channels

/// The domain at the other end of `link` (manifest order, conformance.toml).
const NAMED: u16 = 8;

/// Events seen on the `link` channel.
static LINK: AtomicU64 = AtomicU64::new(0);
fn on_link(_: Port) {
    LINK.fetch_add(1, SeqCst);
}

/// Sends on `link` and waits (5 s at most) for the helper's answer.
fn link_round_trip(ck: &mut Ck, port: Port) {
    let n = LINK.load(SeqCst);
    ck.eq("send on link", send(port.0.into()), Ok(0));
    event::wait_for_until(|| LINK.load(SeqCst) > n, now() + 5_000 * MS);
    ck.eq("answer on link", LINK.load(SeqCst), n + 1);
}

/// EVT-7, EVT-7a: the manifest's `link` channel to the `named` helper
/// (guests/conf-peer role=named), wired before either domain ran.
fn named_channels(si: &StartInfo) {
    let link = si.channel("link");
    clause(
        "EVT-7",
        "named channels are wired before the guests run",
        |ck| {
            let Some(ch) = link else {
                ck.t(false, "no channel `link` in the start info");
                return;
            };
            ck.eq("peer domain", ch.peer.0, NAMED);
            ck.eq("peer name", ch.peer_name, "named");
            ck.t(
                ch.port.0 != 0 && (ch.port.0 as usize) < NR_PORTS,
                "port out of range",
            );
            // The helper sent one event as its first act, before we could
            // have done anything: the SDK kept it pending (masked) until now.
            ck.t(event::is_masked(ch.port), "the SDK did not mask the port");
            ck.eq("listen", ch.listen(on_link), Ok(()));
            event::wait_for_until(|| LINK.load(SeqCst) >= 1, now() + 5_000 * MS);
            ck.eq(
                "the helper's first event (sent as soon as it ran; it checked its own table first)",
                LINK.load(SeqCst),
                1,
            );
            link_round_trip(ck, ch.port);
        },
    );
    clause(
        "EVT-7a",
        "a wired channel is ordinary; nobody else can bind it",
        |ck| {
            let Some(ch) = link else {
                ck.t(false, "no channel `link` in the start info");
                return;
            };
            // The helper's ports: 1 = link (to us), 2 = side (to rostack),
            // 3 = free. None was offered to us.
            let next = next_port();
            for p in 1..=3u64 {
                ck.err(
                    &format!("bind named's port {p}"),
                    bind(NAMED.into(), p),
                    Error::WrongState,
                );
            }
            ck.eq("nothing allocated", next_port(), next);
            ck.eq("only our own channels are listed", si.channels().count(), 1);
            ck.t(
                si.channel("side").is_none(),
                "named<->rostack is listed here",
            );
            ck.err(
                "the wired port is interdomain, not unbound",
                bind(DOMID_SELF, ch.port.0.into()),
                Error::WrongState,
            );
            // Still connected, both ways.
            link_round_trip(ck, ch.port);
        },
    );
}

/// MEM-3a (with the conformance entries registered): the table's contents
/// and that it is read-only.
fn mem3a(si: &StartInfo) {
    use guest_sdk::abi::layout::{NamedChannel, START_INFO_CHANNELS_OFFSET};
    clause("MEM-3a", "the start-info channel table", |ck| {
        let si_va = start_info_va();
        // SAFETY: MEM-3: the start-info page stays mapped read-only.
        let before: RawStartInfo = unsafe { core::ptr::read_volatile(si_va as *const _) };
        ck.eq("channel_count", before.channel_count, 1);
        let e = &before.channels[0];
        let mut name = [0u8; 32];
        name[..4].copy_from_slice(b"link");
        ck.eq("name, NUL-padded", e.name, name);
        let mut peer = [0u8; 32];
        peer[..5].copy_from_slice(b"named");
        ck.eq("peer_name, NUL-padded", e.peer_name, peer);
        ck.eq("peer_domain", e.peer_domain, NAMED);
        ck.eq("reserved", e.reserved, 0);
        ck.eq(
            "port agrees with the SDK",
            Some(e.port),
            si.channel("link").map(|c| c.port.0),
        );
        let rest_zero = before.channels[1..].iter().all(|c| {
            c.name == [0; 32] && c.peer_name == [0; 32] && c.port == 0 && c.peer_domain == 0
        });
        ck.t(rest_zero, "entries after channel_count are not zero");
        ck.t(si.channel("nope").is_none(), "an unknown name is listed");
        // Read-only: writes fault (TRAP-0), and nothing changes.
        let port_va = si_va
            + START_INFO_CHANNELS_OFFSET as u64
            + core::mem::offset_of!(NamedChannel, port) as u64;
        let count_va = si_va + core::mem::offset_of!(RawStartInfo, channel_count) as u64;
        for (what, va) in [("port", port_va), ("channel_count", count_va)] {
            let f = trapped(|| {
                at!("mov dword ptr [rcx], 99"; in("rcx") va);
            });
            ck.eq(
                &format!("write to {what}: #PF, cr2, user write to a present page"),
                f.map(|f| (f.vector, f.cr2, f.error_code & 7)),
                Some((14, va, 7)),
            );
        }
        // SAFETY: as above.
        let after: RawStartInfo = unsafe { core::ptr::read_volatile(si_va as *const _) };
        ck.t(bytes(&before) == bytes(&after), "the table changed");
    });
}

// ---------------------------------------------------------------- TIME, SCHED

fn time_and_sched() {
    // xtask compares this with the hypervisor's `@ time tsc_hz=`.
    println!(
        "TIME-0 start-info tsc_hz={}",
        guest_sdk::start_info().tsc_hz
    );
    clause("TIME-0", "the clock from shared info", |ck| {
        let t = time_info();
        let tsc = arch::rdtsc();
        let n1 = t.ns_at(tsc);
        let n2 = now();
        ck.t(n2 >= n1, "SDK clock behind the formula");
        ck.t(n2 - n1 < 100 * MS, "SDK clock far from the formula");
        ck.t(n1 > 0, "clock at 0");
        let t0 = now();
        sleep_ms(20);
        let d = now() - t0;
        ck.t(d >= 20 * MS, "20 ms sleep shorter than 20 ms");
        ck.t(d < 2_000 * MS, "20 ms sleep took over 2 s");
    });
    clause("TIME-0a", "the clock never goes backwards", |ck| {
        let mut last = now();
        let mut back = 0;
        for i in 0..20_000 {
            if i % 1000 == 0 {
                sched::yield_now();
            }
            let n = now();
            back += u64::from(n < last);
            last = n;
        }
        ck.eq("backward steps", back, 0);
    });
    clause(
        "TIME-1",
        "timer_set: one-shot, replace, cancel, past",
        |ck| {
            let p = bind_virq(0).unwrap_or(0) as u32;
            Sh::set_mask(p, true);
            let t0 = now();
            ck.eq("arm +10ms", timer_set(t0 + 10 * MS), Ok(0));
            ck.t(!Sh::is_pending(p), "fired at once");
            sleep_ms(30);
            ck.t(Sh::is_pending(p), "did not fire");
            Sh::set_pending(p, false);
            sleep_ms(20);
            ck.t(!Sh::is_pending(p), "fired twice");
            ck.eq("past deadline", timer_set(1), Ok(0));
            ck.t(Sh::is_pending(p), "past deadline did not fire at once");
            Sh::set_pending(p, false);
            let t0 = now();
            // Wide margins: TCG time follows the host, which may stall.
            let _ = timer_set(t0 + 50 * MS);
            ck.eq("replace", timer_set(t0 + 250 * MS), Ok(0));
            time::sleep_until(t0 + 120 * MS);
            ck.t(!Sh::is_pending(p), "replaced deadline fired");
            time::sleep_until(t0 + 300 * MS);
            ck.t(Sh::is_pending(p), "replacement deadline did not fire");
            Sh::set_pending(p, false);
            let _ = timer_set(now() + 10 * MS);
            ck.eq("cancel", timer_set(0), Ok(0));
            sleep_ms(30);
            ck.t(!Sh::is_pending(p), "cancelled timer fired");
            ck.eq("far future", timer_set(u64::MAX), Ok(0));
            ck.eq("far future - 1", timer_set(u64::MAX - 1), Ok(0));
            let _ = timer_set(0);
            // No port bound: the firing is lost and the timer disarms.
            Sh::set_mask(p, false);
            let _ = close(u64::from(p));
            ck.eq("fire with no port", timer_set(1), Ok(0));
            let q = bind_virq(0).unwrap_or(0) as u32;
            Sh::set_mask(q, true);
            ck.t(!Sh::is_pending(q), "lost firing was kept");
            sleep_ms(20);
            ck.t(!Sh::is_pending(q), "disarmed timer fired later");
            Sh::set_mask(q, false);
            let _ = close(u64::from(q));
        },
    );
    clause("SCHED-1", "yield returns 0", |ck| {
        for _ in 0..10 {
            ck.eq("yield", c1(Hypercall::Yield, 0), Ok(0));
        }
    });
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

// ---------------------------------------------------------------- faults (own entries)

fn faults(si: &StartInfo) {
    clause("MEM-1", "the upper half faults from ring 3", |ck| {
        for va in [
            0xffff_8000_0000_0000u64,
            0xffff_8000_0010_0000,
            0xffff_ffff_8000_0000,
        ] {
            let mut start = 0;
            let f = trapped(|| start = at!("mov rax, [rcx]"; in("rcx") va, out("rax") _));
            match f {
                Some(f) => {
                    ck.eq(&format!("vector at {va:#x}"), f.vector, 14);
                    ck.eq("cr2", f.cr2, va);
                    ck.eq("error: user read", f.error_code & 0x6, 0x4);
                    ck.eq("rip", f.rip, start);
                }
                None => ck.t(false, &format!("read of {va:#x} did not trap")),
            }
            let f = trapped(|| {
                at!("mov qword ptr [rcx], 0"; in("rcx") va);
            });
            ck.eq(
                &format!("write {va:#x}"),
                f.map(|f| (f.vector, f.error_code & 6)),
                Some((14, 6)),
            );
        }
    });
    let mut mem2 = core::mem::take(&mut *MEM2.lock());
    finish(
        "MEM-2",
        "the window: layout and permissions",
        &mut mem2,
        |ck| {
            let pf = |va: u64, write: bool| {
                let f = if write {
                    trapped(|| {
                        at!("mov qword ptr [rcx], 0"; in("rcx") va);
                    })
                } else {
                    trapped(|| {
                        at!("mov rax, [rcx]"; in("rcx") va, out("rax") _);
                    })
                };
                f.map(|f| (f.vector, f.cr2, f.error_code & 0x7))
            };
            ck.eq("page 0", pf(0, false), Some((14, 0, 4)));
            ck.eq(
                "below the shared page",
                pf(SHARED_INFO_VA - 8, false),
                Some((14, SHARED_INFO_VA - 8, 4)),
            );
            let end = si.page_va(si.nr_pages);
            ck.eq("past the window", pf(end, false), Some((14, end, 4)));
            let st = start_info_va();
            ck.eq(
                "start info read-only",
                pf(st + 64, true),
                Some((14, st + 64, 7)),
            );
            let pt = si.page_va(si.pt_first_page);
            ck.eq(
                "page tables read-only",
                pf(pt + 8, true),
                Some((14, pt + 8, 7)),
            );
            let code = (main as *const () as u64) & !7;
            ck.eq("code read-only", pf(code, true), Some((14, code, 7)));
            // No-execute: the heap and the shared-info page.
            for (what, target) in [
                ("heap", si.page_va(si.stack_first_page) - 4096),
                ("shared info", SHARED_INFO_VA + 0x800),
            ] {
                up::TR_MODE.store(up::TR_R15, SeqCst);
                let before = up::TR_COUNT.load(SeqCst);
                up::TR_SKIP_LEN.store(8, SeqCst);
                // SAFETY: calls a no-execute page; the fetch faults, the handler
                // resumes at r15 and pops the return address (TR_SKIP_LEN = 8).
                unsafe {
                    core::arch::asm!(
                        "lea r15, [rip + 2f]",
                        "call rax",
                        "2:",
                        in("rax") target,
                        out("r15") _,
                        clobber_abi("C"),
                    )
                };
                up::TR_SKIP_LEN.store(0, SeqCst);
                let n = up::TR_COUNT.load(SeqCst) - before;
                let f = up::recorded(&up::TR_FRAME);
                ck.eq(
                    &format!("{what} executes"),
                    (n, f.vector, f.cr2, f.error_code & 0x10),
                    (1, 14, target, 0x10),
                );
            }
            // Heap and stack pages are writable (no trap).
            let heap = si.page_va(si.stack_first_page) - 8;
            ck.eq("heap writable", pf(heap, true), None);
        },
    );
}

fn traps() {
    let top = own_stack_top();
    let fsize = core::mem::size_of::<UpcallFrame>() as u64;

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
    });

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
            // SAFETY: the iretq faults (#GP); see above.
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
        let (lo, hi) = (si.page_va(si.stack_first_page), si.page_va(si.nr_pages));
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

// ---------------------------------------------------------------- peers

fn multi_domain(peers: Option<Peers>) {
    let Some(p) = peers else {
        for (id, name) in [
            ("EVT-0a", "queueing while descheduled"),
            ("TRAP-0c", "containment of a faulting domain"),
            ("SCHED-0b", "blocked domains use no CPU"),
            ("SCHED-0a", "an endless loop cannot starve us"),
            ("SCHED-0", "the scheduler"),
            ("TRAP-4", "preemption keeps registers"),
            ("SCHED-3", "shutdown destroys, peers see EVT-5"),
        ] {
            emit(id, name, false, "helper domains not connected");
        }
        sched3a();
        return;
    };

    clause("EVT-0a", "events queue while descheduled", |ck| {
        // Command the helper, then stay busy (upcalls masked) until our
        // slice ends; its answer arrives while we are descheduled and must
        // be pending when we run again.
        let y = YES.load(SeqCst);
        event::without_upcalls(|| {
            ck.eq("command", send(p.ctl2), Ok(0));
            let deadline = now() + 2_000 * MS;
            while !Sh::is_pending(p.yes2 as u32) && now() < deadline {
                core::hint::spin_loop();
            }
            ck.t(
                Sh::is_pending(p.yes2 as u32),
                "answer not pending after 2 s of running",
            );
        });
        event::wait_for_until(|| YES.load(SeqCst) > y, now() + 1_000 * MS);
        ck.eq("answer handled once unmasked", YES.load(SeqCst), y + 1);
    });

    clause("TRAP-0c", "a faulting peer is destroyed, we go on", |ck| {
        ck.eq("command crasher", send(p.ctl4), Ok(0));
        let deadline = now() + 5_000 * MS;
        let mut last = send(p.ctl4);
        while last.is_ok() && now() < deadline {
            sched::yield_now();
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
            sched::yield_now();
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

    let mut ok0a = false;
    clause("SCHED-0a", "an endless loop cannot starve us", |ck| {
        ck.eq("start the spinner", send(p.ctl5), Ok(0));
        sched::yield_now();
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
            sched::yield_now();
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
    emit(
        "SCHED-0",
        "round-robin scheduler guarantees",
        ok0a && ok0b,
        "summary of SCHED-0a and SCHED-0b",
    );

    clause("TRAP-4", "preemption keeps every register", |ck| {
        // With the spinner runnable, 60 ms of spinning is preempted.
        let hz = guest_sdk::start_info().tsc_hz;
        let deadline = arch::rdtsc() + hz / 1000 * 60;
        ck.t(
            arch::preempt_probe(deadline),
            "a register changed across preemption",
        );
    });

    clause(
        "SCHED-3",
        "shutdown: peers see their channels unbound",
        |ck| {
            // The helper shuts down (reboot, code -7) on its third command.
            ck.eq("third command", send(p.ctl2), Ok(0));
            let deadline = now() + 5_000 * MS;
            let mut last = send(p.yes2);
            while last.is_ok() && now() < deadline {
                sched::yield_now();
                last = send(p.yes2);
            }
            ck.err("helper's channel unbound", last, Error::WrongState);
            ck.err("helper gone", alloc_unbound(2), Error::NotFound);
        },
    );
    sched3a();
}

/// The smallest, over up to 10 windows of 30 ms, of the largest gap
/// between two clock reads in a window: the CPU time someone else took.
fn best_gap() -> u64 {
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

fn sched3a() {
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
