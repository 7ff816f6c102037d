//! Tahoma's benchmark guest: times hypervisor paths with `lfence; rdtsc`.
//!
//! One image, several roles chosen with `role=` on the command line:
//!
//! * `role=solo`: the empty `rdtsc` pair, a calibration loop of known
//!   length, and the null hypercall (`abi_version`).
//! * `role=ping` / `role=pong` with `mode=upcall|block|poll`: an event round
//!   trip between two domains over the manifest's channel `bench` (found
//!   by name, wired at boot: EVT-7). `upcall` uses the SDK's handlers and
//!   `event::wait_for`; `block` and `poll` switch upcalls off
//!   (`set_callbacks(0, 0, 0)`) and look at the pending bit themselves,
//!   sleeping in `block` or spinning on `yield` respectively.
//! * `role=switch-a` / `role=switch-b`: both call `yield` in a loop; A times
//!   each of its yields, which is two domain switches (A to B, B to A).
//! * `role=grant-a` / `role=grant-b` (GNT-3..GNT-5): B (domain 2) grants A
//!   (domain 1) a page writable at reference 0 and sleeps; A times
//!   `grant_copy` of the whole page into a frame of its own
//!   (`grant_copy_4k`) and `grant_map` plus `grant_unmap` of it
//!   (`grant_map_unmap`).
//! * `role=fault`: a reflected page fault (TRAP-0b): the domain writes to
//!   an unmapped page of its mapping region; its trap handler maps a frame
//!   there with `update_va_mapping` (MMU-28) and returns (`upcall_return`,
//!   TRAP-2), and the write is re-executed (`page_fault`). The page is
//!   unmapped again outside the timed part.
//!
//! Every measured role prints one fact per benchmark:
//! `@ bench name=NAME value=MEDIAN min=MIN mean=MEAN iters=N unit=ticks`,
//! in TSC ticks, with the cost of an empty `rdtsc` pair already taken out.
//! Under QEMU `-icount shift=0` a tick is one guest instruction; the host
//! side (`cargo xtask bench`) converts the unit. The partners (`pong`,
//! `switch-b`) loop forever and are non-critical: the scenario ends when the
//! measuring domain does.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_sdk::abi::args::NO_DEADLINE;
use guest_sdk::abi::Hypercall;
use guest_sdk::event::{self, Port};
use guest_sdk::{println, sched, StartInfo};

guest_sdk::entry!(main);

/// Iterations of the calibration loop (two instructions each).
const CALIBRATION_LOOPS: u64 = 100_000;

fn arg(si: &StartInfo, key: &str, default: u64) -> u64 {
    si.cmdline_value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one benchmark measured, in ticks per operation.
struct Stats {
    median: u64,
    min: u64,
    mean: u64,
    iters: usize,
}

impl Stats {
    /// Sorts `samples` and summarises them; `div` divides every figure
    /// (e.g. 2 when one sample covers two operations).
    fn of(mut samples: Vec<u64>, div: u64) -> Stats {
        samples.sort_unstable();
        let n = samples.len().max(1);
        let sum: u64 = samples.iter().sum();
        Stats {
            median: samples.get(samples.len() / 2).copied().unwrap_or(0) / div,
            min: samples.first().copied().unwrap_or(0) / div,
            mean: sum / n as u64 / div,
            iters: samples.len(),
        }
    }

    fn report(&self, name: &str) {
        println!(
            "@ bench name={} value={} min={} mean={} iters={} unit=ticks",
            name, self.median, self.min, self.mean, self.iters
        );
    }
}

/// Runs `op` `warmup` times unrecorded, then `iters` times, collecting the
/// ticks each call returns.
fn sample(warmup: u64, iters: u64, mut op: impl FnMut() -> u64) -> Vec<u64> {
    for _ in 0..warmup {
        op();
    }
    let mut v = Vec::with_capacity(iters as usize);
    for _ in 0..iters {
        v.push(op());
    }
    v
}

/// `lfence; rdtsc` with nothing between two of them: the ticks an empty
/// pair reads (the same bracket as [`pair_syscall`], minus the `syscall`).
#[inline(never)]
fn pair_empty(nr: u64) -> u64 {
    let delta: u64;
    // SAFETY: lfence/rdtsc/shl/or/mov/sub touch only the named registers
    // (rdtsc is allowed in ring 3, TIME-0); no memory, no stack.
    unsafe {
        core::arch::asm!(
            "lfence", "rdtsc", "shl rdx, 32", "or rax, rdx", "mov {t0}, rax",
            "mov rax, {nr}",
            "lfence", "rdtsc", "shl rdx, 32", "or rax, rdx", "sub rax, {t0}",
            nr = in(reg) nr,
            t0 = out(reg) _,
            out("rax") delta,
            out("rdx") _,
            options(nomem, nostack),
        );
    }
    delta
}

/// Ticks across one `syscall` with `rax = nr` (the other argument
/// registers hold whatever they hold: the calls timed ignore them),
/// bracketed exactly like [`pair_empty`].
#[inline(never)]
fn pair_syscall(nr: u64) -> u64 {
    let delta: u64;
    // SAFETY: `nr` is abi_version or yield, which take no pointers and
    // transfer no control to guest code (CALL-1: rcx and r11 clobbered,
    // everything else preserved); the rest is as in `pair_empty`.
    unsafe {
        core::arch::asm!(
            "lfence", "rdtsc", "shl rdx, 32", "or rax, rdx", "mov {t0}, rax",
            "mov rax, {nr}",
            "syscall",
            "lfence", "rdtsc", "shl rdx, 32", "or rax, rdx", "sub rax, {t0}",
            nr = in(reg) nr,
            t0 = out(reg) _,
            out("rax") delta,
            out("rdx") _,
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    delta
}

/// [`pair_syscall`] with a write of XMM0 right after the `syscall`.
#[inline(never)]
fn pair_syscall_simd(nr: u64) -> u64 {
    let delta: u64;
    // SAFETY: as in `pair_syscall`; `movq xmm0, rax` writes only XMM0,
    // which no compiled code uses (soft-float).
    unsafe {
        core::arch::asm!(
            "lfence", "rdtsc", "shl rdx, 32", "or rax, rdx", "mov {t0}, rax",
            "mov rax, {nr}",
            "syscall",
            "movq xmm0, rax",
            "lfence", "rdtsc", "shl rdx, 32", "or rax, rdx", "sub rax, {t0}",
            nr = in(reg) nr,
            t0 = out(reg) _,
            out("rax") delta,
            out("rdx") _,
            out("rcx") _,
            out("r11") _,
            options(nostack),
        );
    }
    delta
}

/// Ticks across `n` iterations of `dec; jnz` (plus a fixed `test; jz`),
/// bracketed like [`pair_empty`]. `calibrate(n) - calibrate(0)` is exactly
/// `2 * n` instructions.
#[inline(never)]
fn calibrate(n: u64) -> u64 {
    let delta: u64;
    // SAFETY: register-only arithmetic and rdtsc, as in `pair_empty`.
    unsafe {
        core::arch::asm!(
            "lfence", "rdtsc", "shl rdx, 32", "or rax, rdx", "mov {t0}, rax",
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "dec {n}",
            "jnz 2b",
            "3:",
            "lfence", "rdtsc", "shl rdx, 32", "or rax, rdx", "sub rax, {t0}",
            n = inout(reg) n => _,
            t0 = out(reg) _,
            out("rax") delta,
            out("rdx") _,
            options(nomem, nostack),
        );
    }
    delta
}

use guest_sdk::time::rdtsc;

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// Times `op` from Rust, minus the median cost of an empty Rust pair.
fn sample_rust(warmup: u64, iters: u64, mut op: impl FnMut()) -> Vec<u64> {
    let empty = median(sample(10, 1000, || {
        let t0 = rdtsc();
        let t1 = rdtsc();
        t1.wrapping_sub(t0)
    }));
    sample(warmup, iters, || {
        let t0 = rdtsc();
        op();
        let t1 = rdtsc();
        t1.wrapping_sub(t0).saturating_sub(empty)
    })
}

fn solo(iters: u64, warmup: u64) -> i32 {
    let nr = Hypercall::AbiVersion.number();
    let empty = Stats::of(sample(warmup, iters, || pair_empty(nr)), 1);
    empty.report("empty_pair");
    // Calibration: median of (loop of n) - (loop of 0), per run.
    let cal = Stats::of(
        sample(3, 31, || {
            calibrate(CALIBRATION_LOOPS).saturating_sub(calibrate(0))
        }),
        1,
    );
    println!(
        "@ bench name=calibration value={} min={} mean={} iters={} unit=ticks expected={} expected_unit=instructions",
        cal.median,
        cal.min,
        cal.mean,
        cal.iters,
        2 * CALIBRATION_LOOPS
    );
    let e = empty.median;
    let null = sample(warmup, iters, || pair_syscall(nr).saturating_sub(e));
    Stats::of(null, 1).report("null_hypercall");
    0
}

/// Switches event upcalls off: events then only set pending bits (and wake
/// a blocked domain).
fn no_upcalls() {
    // SAFETY: TRAP-1 with no entries and no stack: nothing will run on
    // this domain's behalf; traps destroy the domain, as without a handler.
    unsafe { guest_sdk::upcall::set_callbacks(0, 0, 0) }.expect("switch upcalls off");
}

static RECEIVED: AtomicU64 = AtomicU64::new(0);

fn on_event(_: Port) {
    RECEIVED.fetch_add(1, Ordering::AcqRel);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Upcall,
    Block,
    Poll,
}

impl Mode {
    /// The mode as a const generic argument ([`round_trips`]).
    const fn id(self) -> u8 {
        self as u8
    }

    const fn from_id(id: u8) -> Mode {
        match id {
            0 => Mode::Upcall,
            1 => Mode::Block,
            _ => Mode::Poll,
        }
    }
}

/// Sleeps until the listener has counted more than `want` events. Inline
/// into the upcall mode's own copy of [`round_trips`] (one per mode, so
/// the other modes' loops are compiled as without it; measured: the
/// blocking and polling round trips unchanged): the wait loop then saves
/// no registers per round trip.
#[inline(always)]
fn await_upcall(want: u64) {
    event::wait_for(|| RECEIVED.load(Ordering::Acquire) > want);
}

/// Waits for the peer's event in `mode`; `seen` counts events taken.
/// Inline, and called with a constant `mode` (see [`round_trips`]): the
/// mode is chosen once per run, not tested inside the timed loop.
#[inline(always)]
fn await_event(mode: Mode, port: Port, seen: &mut u64) {
    match mode {
        Mode::Upcall => await_upcall(*seen),
        Mode::Block => {
            while !event::take_pending(port) {
                sched::block(NO_DEADLINE);
            }
        }
        Mode::Poll => {
            while !event::take_pending(port) {
                sched::yield_now();
            }
        }
    }
    *seen += 1;
}

/// One side's part of the round trips in the mode `M` names (a const
/// generic, so that [`await_event`] is specialised inside the timed
/// closure): the partner answers every event forever; the measuring side
/// sends first and times `iters` round trips (send, then wait for the
/// answer). Out of line, one copy per mode (inlined, LLVM merged the
/// three loops back into one that tests the mode).
#[inline(never)]
fn round_trips<const M: u8>(ping: bool, port: Port, iters: u64, warmup: u64) -> Vec<u64> {
    // `Mode::from_id(M)` at each use, not a captured local: a closure that
    // reads the mode through a reference is the same code for every `M`,
    // and LLVM merged the three copies into one that tests it.
    let mut seen = 0;
    if !ping {
        loop {
            await_event(Mode::from_id(M), port, &mut seen);
            event::send(port).expect("answer on a bound port");
        }
    }
    // The peer's end exists: an event it is not waiting for yet stays
    // pending until it is (EVT-0a).
    event::send(port).expect("send on a channel wired at boot");
    await_event(Mode::from_id(M), port, &mut seen);
    sample_rust(warmup, iters, || {
        event::send(port).expect("send on a bound port");
        await_event(Mode::from_id(M), port, &mut seen);
    })
}

fn event_bench(si: &StartInfo, ping: bool, iters: u64, warmup: u64) -> i32 {
    let mode = match si.cmdline_value("mode") {
        Some("upcall") | None => Mode::Upcall,
        Some("block") => Mode::Block,
        Some("poll") => Mode::Poll,
        Some(other) => {
            println!("bench: unknown mode={other} (upcall, block or poll)");
            return 2;
        }
    };
    if mode != Mode::Upcall {
        no_upcalls();
    }
    // The channel the manifest names `bench`, wired before either side ran
    // (EVT-7): no domain id or port on the command line, nothing to retry.
    let Some(ch) = event::channel("bench") else {
        println!("bench: no channel named `bench`: declare it in the manifest ([[channel]])");
        return 2;
    };
    let port = ch.port;
    // The SDK masked the port at start; events sent before now are pending.
    let ready = if mode == Mode::Upcall {
        ch.listen(on_event)
    } else {
        event::unmask(port)
    };
    ready.expect("unmask a channel wired at boot");
    let samples = match mode {
        Mode::Upcall => round_trips::<{ Mode::Upcall.id() }>(ping, port, iters, warmup),
        Mode::Block => round_trips::<{ Mode::Block.id() }>(ping, port, iters, warmup),
        Mode::Poll => round_trips::<{ Mode::Poll.id() }>(ping, port, iters, warmup),
    };
    let name = match mode {
        Mode::Upcall => "event_round_trip",
        Mode::Block => "event_round_trip_block",
        Mode::Poll => "event_round_trip_poll",
    };
    Stats::of(samples, 1).report(name);
    0
}

/// Names a figure, with `suffix=` from the command line appended (to tell
/// apart the same measurement in different scenarios).
fn named(si: &StartInfo, base: &str) -> String {
    match si.cmdline_value("suffix") {
        Some(s) => format!("{base}_{s}"),
        None => String::from(base),
    }
}

/// Writes XMM0 (and so makes the domain's SIMD state live): with `fpu=1`
/// both switch roles do it after every yield, so that the switch costs
/// what it costs for domains that use the FPU (with lazy switching, a #NM
/// per switch; `docs/architecture.md`, "FPU state").
#[inline(always)]
fn touch_simd(v: u64) {
    // SAFETY: writes only XMM0, which no compiled code uses (soft-float).
    unsafe {
        core::arch::asm!("movq xmm0, {}", in(reg) v, options(nomem, nostack, preserves_flags))
    };
}

fn switch_bench(si: &StartInfo, a: bool, iters: u64, warmup: u64) -> i32 {
    let nr = Hypercall::Yield.number();
    let fpu = arg(si, "fpu", 0) != 0;
    if !a {
        loop {
            sched::yield_now();
            if fpu {
                touch_simd(2);
            }
        }
    }
    if fpu {
        // One SIMD write inside the bracket right after the yield returns
        // (one instruction more than the plain figure).
        let e = median(sample(10, 1000, || pair_empty(nr)));
        let samples = sample(warmup, iters, || {
            let t = pair_syscall_simd(nr).saturating_sub(e);
            touch_simd(1);
            t
        });
        Stats::of(samples.clone(), 1).report(&named(si, "yield_round_trip"));
        Stats::of(samples, 2).report(&named(si, "domain_switch"));
        return 0;
    }
    // Let B start and reach its loop.
    for _ in 0..4 {
        sched::yield_now();
    }
    let e = median(sample(10, 1000, || pair_empty(nr)));
    let samples = sample(warmup, iters, || pair_syscall(nr).saturating_sub(e));
    Stats::of(samples.clone(), 1).report(&named(si, "yield_round_trip"));
    Stats::of(samples, 2).report(&named(si, "domain_switch"));
    0
}

/// The `grant-b` role: grants a fresh page to domain 1, then sleeps.
fn grant_peer() -> i32 {
    use guest_sdk::grant::{grant_access_at, GrantRef};
    let granted = guest_sdk::memory::populate_one()
        .and_then(|f| grant_access_at(f, guest_sdk::event::DomId(1), false, GrantRef(0)));
    if let Err(e) = granted {
        println!("bench: grant-b: cannot grant a page: {e}");
        return 1;
    }
    loop {
        sched::block(NO_DEADLINE);
    }
}

/// The `grant-a` role: `grant_copy_4k` and `grant_map_unmap`.
fn grant_bench(iters: u64, warmup: u64) -> i32 {
    use guest_sdk::abi::grant::{CopyOp, CopyPtr};
    use guest_sdk::grant as gr;
    use guest_sdk::paging::{self, Flags, MAP_BASE};
    let Ok(own) = guest_sdk::memory::populate_one() else {
        println!("bench: grant-a: no frame to copy into");
        return 1;
    };
    // An L1 for the mapping slot: map a page at the end of its 2 MiB.
    let slot = MAP_BASE;
    if paging::map(slot + 511 * 4096, own, Flags::READ_ONLY)
        .and_then(|()| paging::unmap(slot + 511 * 4096))
        .is_err()
    {
        println!("bench: grant-a: cannot make the slot's table");
        return 1;
    }
    let mut op = [CopyOp {
        src: CopyPtr::granted(2, 0, 0),
        dst: CopyPtr::own(own, 0),
        len: 4096,
        status: 0,
    }];
    // Wait for domain 2's grant.
    let deadline = guest_sdk::time::now_ns() + 5_000_000_000;
    loop {
        // SAFETY: the destination is `own`, a fresh frame nothing lives in.
        let r = unsafe { gr::copy_unchecked(&mut op) };
        if r.is_ok() && op[0].status == 0 {
            break;
        }
        if guest_sdk::time::now_ns() > deadline {
            println!("bench: grant-a: domain 2 never granted its page");
            return 1;
        }
        sched::yield_now();
    }
    let copy = sample_rust(warmup, iters, || {
        // SAFETY: as above.
        let _ = unsafe { gr::copy_unchecked(&mut op) };
    });
    if op[0].status != 0 {
        println!("bench: grant-a: copy failed: {:?}", op[0].result());
        return 1;
    }
    Stats::of(copy, 1).report("grant_copy_4k");
    let mut failed = false;
    let map = sample_rust(warmup, iters, || {
        match gr::map(guest_sdk::event::DomId(2), gr::GrantRef(0), slot, false) {
            Ok(h) => failed |= gr::unmap(h).is_err(),
            Err(_) => failed = true,
        }
    });
    if failed {
        println!("bench: grant-a: map or unmap failed");
        return 1;
    }
    Stats::of(map, 1).report("grant_map_unmap");
    0
}

/// The frame the page-fault handler maps, and the page it maps it at
/// ([`fault_bench`]); 0 until set.
static FAULT_MFN: AtomicU64 = AtomicU64::new(0);
static FAULT_VA: AtomicU64 = AtomicU64::new(0);

/// The `fault` role's trap handler: a page fault at [`FAULT_VA`] maps
/// [`FAULT_MFN`] there, writable, and resumes the faulting write; anything
/// else crashes the domain (the figure would be wrong).
fn on_fault(f: &mut guest_sdk::abi::layout::UpcallFrame) -> guest_sdk::trap::TrapAction {
    use guest_sdk::paging::{leaf_entry, Flags};
    use guest_sdk::trap::TrapAction;
    let va = FAULT_VA.load(Ordering::Relaxed);
    if f.vector != 14 || f.cr2 & !0xfff != va {
        return TrapAction::Crash;
    }
    let entry = leaf_entry(FAULT_MFN.load(Ordering::Relaxed), Flags::WRITABLE);
    match guest_sdk::mmu::update_va_mapping(va, entry, false) {
        Ok(()) => TrapAction::Resume,
        Err(_) => TrapAction::Crash,
    }
}

/// The `fault` role: `page_fault`, from the faulting write to its
/// completion after the handler mapped the page (a #PF reflected to the
/// SDK's trap entry, the handler's `update_va_mapping`, `upcall_return`,
/// the write again). Compare with Linux's anonymous page fault on the same
/// emulator (the kernel's entry, a zeroed page allocated and mapped).
fn fault_bench(iters: u64, warmup: u64) -> i32 {
    use guest_sdk::paging::{self, Flags, MAP_BASE};
    let Ok(own) = guest_sdk::memory::populate_one() else {
        println!("bench: fault: no frame to map");
        return 1;
    };
    // An L1 for the page: map and unmap a page at the end of its 2 MiB.
    let va = MAP_BASE;
    if paging::map(va + 511 * 4096, own, Flags::READ_ONLY)
        .and_then(|()| paging::unmap(va + 511 * 4096))
        .is_err()
    {
        println!("bench: fault: cannot make the page's table");
        return 1;
    }
    FAULT_MFN.store(own, Ordering::Relaxed);
    FAULT_VA.store(va, Ordering::Relaxed);
    if guest_sdk::trap::set_handler(on_fault).is_err() {
        println!("bench: fault: cannot register the trap handler");
        return 1;
    }
    let mut failed = false;
    let mut n = 0u64;
    let samples = sample(warmup, iters, || {
        n += 1;
        let t0 = rdtsc();
        // SAFETY: `va` is unmapped: the write faults, the handler maps
        // `own` (a frame of ours nothing else uses) there writable, and
        // the write is re-executed into it.
        unsafe { core::ptr::write_volatile(va as *mut u64, n) };
        let t1 = rdtsc();
        // Unmap it again (not timed), invalidating the translation.
        failed |= guest_sdk::mmu::update_va_mapping(va, 0, true).is_err();
        t1.wrapping_sub(t0)
    });
    let empty = median(sample(10, 1000, || {
        let t0 = rdtsc();
        let t1 = rdtsc();
        t1.wrapping_sub(t0)
    }));
    if failed {
        println!("bench: fault: unmapping the page failed");
        return 1;
    }
    let samples = samples
        .into_iter()
        .map(|t| t.saturating_sub(empty))
        .collect();
    Stats::of(samples, 1).report("page_fault");
    0
}

fn main(si: &StartInfo) -> i32 {
    let iters = arg(si, "iters", 10_000);
    let warmup = arg(si, "warmup", 100);
    match si.cmdline_value("role") {
        Some("solo") | None => solo(iters, warmup),
        Some("ping") => event_bench(si, true, iters, warmup),
        Some("pong") => event_bench(si, false, iters, warmup),
        Some("switch-a") => switch_bench(si, true, iters, warmup),
        Some("switch-b") => switch_bench(si, false, iters, warmup),
        Some("grant-a") => grant_bench(iters, warmup),
        Some("grant-b") => grant_peer(),
        Some("fault") => fault_bench(iters, warmup),
        // Present but asleep: blocked domains must not make switches dearer.
        Some("idle") => loop {
            sched::block(guest_sdk::abi::args::NO_DEADLINE);
        },
        Some(other) => {
            println!(
                "bench: unknown role={other} (solo, ping, pong, switch-a, switch-b, grant-a, grant-b, fault, idle)"
            );
            2
        }
    }
}
