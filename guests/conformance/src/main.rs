//! The ABI conformance suite: checks every clause of `docs/abi/` (except
//! `MMU-*`, `MEM-5..9`: `guests/mmutest`; `CPU-*`, `TRAP-7`:
//! `guests/cputest`) against the running hypervisor and prints one line per
//! clause through the shared harness (`guests/harness`):
//!
//! ```text
//! @ conformance clause=EVT-4a name="..." outcome=pass|fail detail="..."
//! ```
//!
//! One module per page of `docs/abi` (`call` for the README's CALL clauses,
//! `base`, `console`, `memory`, `sched`, `time`, `events`, `traps`,
//! `limits`), one function per clause named after its ID
//! (`events::evt_4a`). This file holds the helpers the pages share and the
//! phases, which call the clause functions in a fixed order (some clauses
//! need the helper domains, the suite's own upcall entries, or the state an
//! earlier phase left).
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
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod arch;
mod upcalls;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use guest_sdk::abi::args::{CONSOLE_WRITE_STEP, DOMID_SELF, NO_DEADLINE};
use guest_sdk::abi::layout::{
    StartInfo as RawStartInfo, TimeInfo, UpcallFrame, GUEST_VA_TOP, INITIAL_STACK_PAGES, NR_PORTS,
    RED_ZONE, SHARED_INFO_VA, START_INFO_MAGIC, WINDOW_BASE,
};
use guest_sdk::abi::{Error, Hypercall, ABI_VERSION};
use guest_sdk::event::{self, Port};
use guest_sdk::{println, raw, StartInfo};

use arch::Sh;
use harness::{clause, emit, finish, Ck};
use upcalls as up;

guest_sdk::entry!(main);

// ---------------------------------------------------------------- framework

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
    guest_sdk::time::now_ns()
}
const MS: u64 = 1_000_000;

/// Sleeps `ms` milliseconds with no interest in events (masked ports stay
/// pending; unmasked ones are handled by the SDK meanwhile).
fn sleep_ms(ms: u64) {
    guest_sdk::time::sleep_ns(ms * MS);
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
            Err(_) => guest_sdk::sched::yield_now(),
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
    bounds();
    with_own_entries(|| {
        faults(si);
        traps();
        mem3a(si);
    });
    multi_domain(peers);
    grants();

    // MEM-3 "written once": the page is unchanged at the end.
    // SAFETY: MEM-3: the start-info page is still mapped read-only at
    // `si_va`; a volatile read of plain repr(C) data.
    let si_end: RawStartInfo = unsafe { core::ptr::read_volatile(si_va as *const _) };
    memory::mem_3(si, si_va, &si_at_start, &si_end);
    println!("conformance: done");
    0
}

// ---------------------------------------------------------------- BASE, CALL

fn base_and_call(si: &StartInfo) {
    base::base_1(si);
    call::call_1();
    call::call_1a();
    call::call_1b();
    call::call_2();
    call::call_3();
    call::call_4(si);
}

// ---------------------------------------------------------------- CON

fn console() {
    console::con_1();
    console::con_2();
    console::con_1a();
    console::con_1b();
    console::con_1c();
    console::con_1d();
}

// ---------------------------------------------------------------- MEM

fn memory(si: &StartInfo) {
    memory::mem_2_layout(si);
    memory::mem_2a(si);
    memory::mem_2b();
    memory::mem_4(si);
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

fn events(peers: Option<Peers>) {
    events::evt_0();
    events::evt_0b();
    events::evt_0c();
    events::evt_0d();
    events::evt_0e();
    events::evt_1();
    events::evt_1a();
    events::evt_2(peers);
    events::evt_2a();
    events::evt_2b(peers);
    events::evt_3();
    events::evt_3a();
    events::evt_3b();

    // EVT-1b, EVT-2c, EVT-3c: fill the table.
    let mut held = Vec::new();
    let offered_self = alloc_unbound(DOMID_SELF).unwrap_or(0);
    while let Ok(p) = alloc_unbound(DOMID_SELF) {
        held.push(p);
    }
    let in_use = held.len() + 1 + used_before_fill(peers);
    events::evt_1b(in_use);
    events::evt_2c(&mut held, offered_self);
    events::evt_3c(&mut held);
    for p in held {
        let _ = close(p);
    }
    let _ = close(offered_self);

    events::evt_4(peers);
    events::evt_4a();
    events::evt_4b();
    events::evt_4c(peers);
    events::evt_5(peers);
    events::evt_5a();
    events::evt_6();
    events::evt_6a();
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

/// EVT-7, EVT-7a: the manifest's `link` channel to the `named` helper
/// (guests/conf-peer role=named), wired before either domain ran.
fn named_channels(si: &StartInfo) {
    events::evt_7(si);
    events::evt_7a(si);
}

/// MEM-3a (with the conformance entries registered): the table's contents
/// and that it is read-only.
fn mem3a(si: &StartInfo) {
    memory::mem_3a(si);
}

// ---------------------------------------------------------------- TIME, SCHED

fn time_and_sched() {
    // xtask compares this with the hypervisor's `@ time tsc_hz=`.
    println!(
        "TIME-0 start-info tsc_hz={}",
        guest_sdk::start_info().tsc_hz
    );
    time::time_0();
    time::time_0a();
    time::time_1();
    sched::sched_1();
    sched::sched_2();
    sched::sched_2a();
    sched::sched_2b();
    sched::sched_2d();
}

// ---------------------------------------------------------------- faults (own entries)

fn faults(si: &StartInfo) {
    memory::mem_1();
    memory::mem_2(si);
    memory::mem_2d(si);
}

fn traps() {
    let top = own_stack_top();
    let fsize = core::mem::size_of::<UpcallFrame>() as u64;

    traps::trap_1(top);
    traps::trap_1a(top, fsize);
    traps::trap_0(top, fsize);
    traps::trap_0d(fsize);
    traps::trap_0a();
    sched::sched_2c();
    traps::trap_0b();
    traps::trap_1b(top);
    traps::trap_2();
    traps::trap_2a();
    traps::trap_2b();
    traps::trap_2c();
    traps::trap_3();
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
        sched::sched_3a();
        return;
    };

    events::evt_0a(p);
    traps::trap_0c(p);

    let ok0b = sched::sched_0b();
    let ok0a = sched::sched_0a(p);
    sched::sched_0(ok0a, ok0b);
    traps::trap_4();
    sched::sched_3(p);
    sched::sched_3a();
}

/// Bounds and timer clauses (issue 7): the timer hammered (TIME-2) and on
/// time while the guest spins (TIME-3), the upcall nesting limit at its
/// exact boundary (TRAP-5, TRAP-6, LIM-2), and the limits (LIM-*).
fn bounds() {
    time::time_2();
    time::time_3();
    let mut nesting = Ck::new();
    traps::trap_5(&mut nesting);
    traps::trap_6(&mut nesting);
    limits::lim_2(&nesting);
    limits::lim_1();
    limits::lim_3();
    limits::lim_4();
    limits::lim_5();
    limits::lim_6();
}

// ---------------------------------------------------------------- GNT

/// The grant clauses (GNT-*), with the `granter` helper (domain 9).
fn grants() {
    match grant::setup() {
        Ok(env) => grant::run(env),
        Err(e) => {
            println!("conformance: cannot set up the grant helper: {e}");
            grant::unreachable(&e);
        }
    }
}

// One module per page of docs/abi (the page in each module's header), one
// function per clause; declared last so that `at!` (above) is in scope.
mod base;
mod call;
mod console;
mod events;
mod grant;
mod limits;
mod memory;
mod sched;
mod time;
mod traps;
