//! Clauses of `docs/abi/limits.md`: each limit driven to its value and one
//! past it (LIM-1..6), one function per clause, and the upcall nesting
//! machinery that LIM-2 and TRAP-5/TRAP-6 (`traps.rs`) share.
//!
//! Runs in the `bounds` phase, with the SDK's upcall entries registered
//! (between `time_and_sched` and the phases with the suite's own entries).

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use guest_sdk::abi::args::{
    MmuUpdate, Virq, CONSOLE_WRITE_STEP, DOMID_SELF, MEMORY_BATCH_MAX, MMU_BATCH_MAX,
};
use guest_sdk::abi::layout::{UpcallFrame, NR_PORTS};
use guest_sdk::abi::{Error, Hypercall};
use guest_sdk::event::{self, Port};
use guest_sdk::paging::{self, Level};
use guest_sdk::println;
use guest_sdk::trap::{self, TrapAction};

use crate::arch::Sh;
use crate::{
    alloc_unbound, bind, bind_virq, block, c1, c2, call, clause, close, loopback, now, send,
    timer_set, write, Ck, MS,
};

// ---------------------------------------------------------------- TRAP-5, TRAP-6, LIM-2

/// Trap handler invocations running now, and the most at once.
static DEPTH: AtomicU64 = AtomicU64::new(0);
static MAX_DEPTH: AtomicU64 = AtomicU64::new(0);
/// The depth at which the handler stops trapping again.
static TARGET: AtomicU64 = AtomicU64::new(0);
/// Frame addresses by depth (1..=8), and traps with another vector.
static FRAMES: [AtomicU64; 10] = [const { AtomicU64::new(0) }; 10];
static WRONG_VECTOR: AtomicU64 = AtomicU64::new(0);
/// The loopback port the innermost handler sends on (0: none).
static SEND_AT_TARGET: AtomicU64 = AtomicU64::new(0);
/// Event handler calls, our depth at the last one, and what the innermost
/// trap handler saw right after enabling upcalls and making a hypercall:
/// event calls so far, and `upcall_pending`.
static EV_CALLS: AtomicU64 = AtomicU64::new(0);
pub static EV_DEPTH: AtomicU64 = AtomicU64::new(0);
static SEEN_CALLS: AtomicU64 = AtomicU64::new(0);
pub static SEEN_PENDING: AtomicU64 = AtomicU64::new(0);

fn on_nest_event(_: Port) {
    EV_CALLS.fetch_add(1, SeqCst);
    EV_DEPTH.store(DEPTH.load(SeqCst), SeqCst);
}

fn nest_handler(f: &mut UpcallFrame) -> TrapAction {
    let d = DEPTH.fetch_add(1, SeqCst) + 1;
    MAX_DEPTH.fetch_max(d, SeqCst);
    if let Some(slot) = FRAMES.get(d as usize) {
        slot.store(f as *mut UpcallFrame as u64, SeqCst);
    }
    if f.vector != 6 {
        WRONG_VECTOR.fetch_add(1, SeqCst);
    }
    if d < TARGET.load(SeqCst) {
        // SAFETY: a deliberate #UD inside the handler: the nested handler
        // moves its frame's rip past these 2 bytes and resumes here.
        unsafe { core::arch::asm!("ud2") };
    } else {
        let a = SEND_AT_TARGET.load(SeqCst);
        if a != 0 {
            // Raise an event, enable upcalls and enter the hypervisor: at
            // the limit it must not deliver (TRAP-6); below it, it must.
            let _ = send(a);
            Sh::upcall_mask().store(0, SeqCst);
            let _ = c1(Hypercall::AbiVersion, 0);
            SEEN_CALLS.store(EV_CALLS.load(SeqCst), SeqCst);
            SEEN_PENDING.store(u64::from(Sh::upcall_pending().load(SeqCst)), SeqCst);
        }
    }
    f.rip += 2;
    DEPTH.fetch_sub(1, SeqCst);
    TrapAction::Resume
}

/// Nests `target` traps (each handler but the innermost traps again) and
/// unwinds; with `send` the innermost one raises an event on a loopback
/// channel with upcalls enabled. Returns the event handler calls seen
/// there, and in all.
pub fn nest(ck: &mut Ck, target: u64, send: bool) -> (u64, u64) {
    for f in &FRAMES {
        f.store(0, SeqCst);
    }
    for a in [&DEPTH, &MAX_DEPTH, &WRONG_VECTOR, &EV_CALLS, &EV_DEPTH] {
        a.store(0, SeqCst);
    }
    SEEN_CALLS.store(u64::MAX, SeqCst);
    SEEN_PENDING.store(u64::MAX, SeqCst);
    TARGET.store(target, SeqCst);
    let (a, b) = if send { loopback() } else { (0, 0) };
    if send {
        event::set_handler(Port(b as u32), on_nest_event);
    }
    SEND_AT_TARGET.store(a, SeqCst);
    ck.t(
        trap::set_handler(nest_handler).is_ok(),
        "register the trap handler",
    );
    // Upcalls masked while nesting, so that no stray event upcall takes a
    // place in the count; the innermost handler enables them itself.
    event::without_upcalls(|| {
        // SAFETY: a deliberate #UD; `nest_handler` skips it.
        unsafe { core::arch::asm!("ud2") };
    });
    ck.t(trap::clear_handler().is_ok(), "give the trap entry back");
    SEND_AT_TARGET.store(0, SeqCst);
    if send {
        event::clear_handler(Port(b as u32));
        Sh::set_pending(b as u32, false);
        let _ = close(a);
        let _ = close(b);
    }
    ck.eq(
        &format!("{target}-deep: handler entries at once"),
        MAX_DEPTH.load(SeqCst),
        target,
    );
    ck.eq("depth after unwinding", DEPTH.load(SeqCst), 0);
    ck.eq(
        "traps with a vector other than #UD",
        WRONG_VECTOR.load(SeqCst),
        0,
    );
    let addrs: Vec<u64> = (1..=target as usize)
        .map(|d| FRAMES[d].load(SeqCst))
        .collect();
    ck.t(
        addrs.windows(2).all(|w| w[1] != 0 && w[1] < w[0]),
        "nested frames not each below the one before",
    );
    (SEEN_CALLS.load(SeqCst), EV_CALLS.load(SeqCst))
}

/// LIM-2: the sum of TRAP-5 and TRAP-6 (`all`: their checks).
pub fn lim_2(all: &Ck) {
    clause("LIM-2", "upcall nesting: 8 frames", |ck| {
        ck.checks += all.checks;
        ck.t(all.fails == 0, "TRAP-5 or TRAP-6 failed");
        ck.note = " (TRAP-5, TRAP-6; the 9th trap: xtask)".into();
    });
}

// ---------------------------------------------------------------- LIM-1

/// LIM-1 (run in the `bounds` phase).
pub fn lim_1() {
    clause(
        "LIM-1",
        "deadlines: a timer and a block each, re-arm replaces",
        |ck| {
            let p = bind_virq(Virq::Timer as u64).unwrap_or(0) as u32;
            Sh::set_mask(p, true);
            // To the limit: both deadlines armed at once, each fires on its own.
            let t0 = now();
            ck.eq("timer +40ms", timer_set(t0 + 40 * MS), Ok(0));
            ck.eq("block to +10ms", block(t0 + 10 * MS), Ok(1));
            let t1 = now();
            ck.t(t1 >= t0 + 10 * MS, "block returned before its deadline");
            if t1 < t0 + 35 * MS {
                ck.t(
                    !Sh::is_pending(p),
                    "the timer fired with the block deadline",
                );
            }
            // The masked timer port does not wake block: it returns at its own
            // deadline, and by then the timer has fired.
            ck.eq("block to +80ms", block(t0 + 80 * MS), Ok(1));
            ck.t(
                Sh::is_pending(p),
                "the timer did not fire beside a block deadline",
            );
            Sh::set_pending(p, false);
            // Past the limit: 20000 re-arms replace; one value fires, once.
            let t2 = now();
            for i in 0..20_000u64 {
                let _ = timer_set(t2 + 500 * MS - i * 20_000);
            }
            let last = t2 + 500 * MS - 19_999 * 20_000; // about t2 + 100 ms
            ck.eq(
                "block beside the re-armed timer",
                block(last + 40 * MS),
                Ok(1),
            );
            ck.t(Sh::is_pending(p), "the last re-armed value did not fire");
            Sh::set_pending(p, false);
            ck.eq("block after", block(now() + 30 * MS), Ok(1));
            ck.t(!Sh::is_pending(p), "a replaced value fired as well");
            let _ = timer_set(0);
            Sh::set_mask(p, false);
            let _ = close(u64::from(p));
        },
    );
}

// ---------------------------------------------------------------- LIM-3

/// LIM-3 (run in the `bounds` phase).
pub fn lim_3() {
    clause("LIM-3", "event ports: 1023 per domain", |ck| {
        let mut got = Vec::new();
        let last = loop {
            match alloc_unbound(DOMID_SELF) {
                Ok(p) => got.push(p),
                Err(e) => break e,
            }
            if got.len() >= NR_PORTS {
                break Error::InvalidArgument;
            }
        };
        ck.eq("past the last port", last.name(), Error::NoResources.name());
        ck.t(
            got.contains(&(NR_PORTS as u64 - 1)),
            "port 1023 was not allocated",
        );
        ck.t(
            got.iter().all(|&p| p > 0 && p < NR_PORTS as u64),
            "a port outside 1..=1023",
        );
        ck.err("bind_virq past the limit", bind_virq(0), Error::NoResources);
        if let Some(&first) = got.first() {
            ck.err(
                "bind past the limit",
                bind(DOMID_SELF, first),
                Error::NoResources,
            );
            // Nothing was allocated: closing one makes room for exactly one.
            let mid = got[got.len() / 2];
            ck.eq("close one", close(mid), Ok(0));
            ck.eq(
                "the freed port comes back",
                alloc_unbound(DOMID_SELF),
                Ok(mid),
            );
            ck.err("full again", alloc_unbound(DOMID_SELF), Error::NoResources);
        }
        let mut bad = 0;
        for &p in &got {
            bad += u32::from(close(p).is_err());
        }
        ck.eq("closing them", bad, 0);
        ck.note = format!(", {} allocated to fill the table", got.len());
    });
}

// ---------------------------------------------------------------- LIM-4

#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut SCRATCH: Page = Page([0; 4096]);
static mut UPDATES: [MmuUpdate; MMU_BATCH_MAX as usize + 1] =
    [MmuUpdate { ptr: 0, val: 0 }; MMU_BATCH_MAX as usize + 1];
/// `mmu_update`'s `*done`.
static DONE: AtomicU64 = AtomicU64::new(0);
static mut LIST: [u64; MEMORY_BATCH_MAX as usize + 1] = [0; MEMORY_BATCH_MAX as usize + 1];

fn mmu_update(reqs: u64, count: u64, done: u64) -> Result<u64, Error> {
    call(Hypercall::MmuUpdate, [reqs, count, done, 0, 0, 0])
}

/// LIM-4 (run in the `bounds` phase).
pub fn lim_4() {
    clause(
        "LIM-4",
        "batch lengths: 512 updates, 512 frames, 4096 bytes",
        |ck| {
            // console_write: 4096 bytes accepted (a call takes at most
            // CONSOLE_WRITE_STEP of them, CON-2; the rest follows), 4097
            // refused (xtask: the marker in the refused buffer never
            // appears).
            let mut text = [b'='; 4097];
            text[4095] = b'\n';
            let base = text.as_ptr() as u64;
            ck.eq("console 4096", write(base, 4096), Ok(CONSOLE_WRITE_STEP));
            ck.eq(
                "console 4096, the rest",
                write_all(base + CONSOLE_WRITE_STEP, 4096 - CONSOLE_WRITE_STEP),
                Ok(4096 - CONSOLE_WRITE_STEP),
            );
            text[..9].copy_from_slice(b"LIM4-LEAK");
            ck.err(
                "console 4097",
                write(text.as_ptr() as u64, 4097),
                Error::InvalidArgument,
            );

            // mmu_update: 512 updates rewriting one entry with its own value
            // are applied; 513 whose first one unmaps a page apply nothing.
            let va = (&raw mut SCRATCH) as u64;
            // SAFETY: touch the page so that it is mapped and dirty.
            unsafe { core::ptr::write_volatile(va as *mut u8, 1) };
            let entry = paging::read_entry(va, Level::L1);
            let table = paging::table_mfn(va, Level::L1);
            match (entry, table) {
                (Some(entry), Some(table)) => {
                    let ptr = paging::entry_ptr(table, paging::index(va, Level::L1));
                    let ups = &raw mut UPDATES;
                    // SAFETY: only this function touches UPDATES.
                    let ups = unsafe { &mut *ups };
                    ups.fill(MmuUpdate { ptr, val: entry });
                    DONE.store(u64::MAX, SeqCst);
                    let dp = DONE.as_ptr() as u64;
                    let base = ups.as_ptr() as u64;
                    ck.eq("mmu_update 512", mmu_update(base, 512, dp), Ok(512));
                    ck.eq("512: done", DONE.load(SeqCst), 512);
                    ups[0].val = 0;
                    DONE.store(7, SeqCst);
                    ck.err(
                        "mmu_update 513",
                        mmu_update(base, 513, dp),
                        Error::InvalidArgument,
                    );
                    ck.eq("513: done not written", DONE.load(SeqCst), 7);
                    let now_entry = paging::read_entry(va, Level::L1).unwrap_or(0);
                    ck.eq("513: the first update not applied", now_entry & 1, 1);
                    // SAFETY: still mapped (checked above).
                    let v = unsafe { core::ptr::read_volatile(va as *const u8) };
                    ck.eq("513: page still readable", v, 1);
                }
                _ => ck.t(
                    false,
                    "cannot read the scratch page's entry (paging not ready)",
                ),
            }

            // memory_populate / memory_release: 512 taken and given back, 513
            // refused with the reservation unchanged.
            let list = &raw mut LIST;
            // SAFETY: only this function and LIM-6 touch LIST, one at a time.
            let list = unsafe { &mut *list };
            let lp = list.as_mut_ptr() as u64;
            let info = || paging::memory_info().unwrap_or((0, 0));
            let before = info();
            ck.err(
                "populate 513",
                c2(Hypercall::MemoryPopulate, lp, 513),
                Error::InvalidArgument,
            );
            ck.eq("513: nothing taken", info(), before);
            ck.eq(
                "populate 512",
                c2(Hypercall::MemoryPopulate, lp, 512),
                Ok(512),
            );
            ck.eq("512 taken", info().0, before.0 + 512);
            list[512] = list[0];
            ck.err(
                "release 513",
                c2(Hypercall::MemoryRelease, lp, 513),
                Error::InvalidArgument,
            );
            ck.eq("513: nothing released", info().0, before.0 + 512);
            ck.eq(
                "release 512",
                c2(Hypercall::MemoryRelease, lp, 512),
                Ok(512),
            );
            ck.eq("512 released", info(), before);
        },
    );
}

// ---------------------------------------------------------------- LIM-5

/// `console_write` until all `len` bytes at `ptr` are taken (CON-2: each
/// call takes at most `CONSOLE_WRITE_STEP`); the total, or the first error.
fn write_all(ptr: u64, len: u64) -> Result<u64, Error> {
    let mut done = 0;
    while done < len {
        match write(ptr + done, len - done)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// LIM-5 (run in the `bounds` phase).
pub fn lim_5() {
    // xtask: "LIM5 a…" is one line of exactly 256 bytes, "LIM5 b…" is cut
    // after 256 bytes and its 257th byte starts the next line.
    let mut line = [b'a'; 257];
    line[..5].copy_from_slice(b"LIM5 ");
    line[256] = b'\n';
    let r1 = write_all(line.as_ptr() as u64, 257);
    let mut line = [b'b'; 258];
    line[..5].copy_from_slice(b"LIM5 ");
    line[256] = b'Z';
    line[257] = b'\n';
    let r2 = write_all(line.as_ptr() as u64, 258);
    clause("LIM-5", "console line: 256 bytes", |ck| {
        ck.eq("256 and a newline", r1, Ok(257));
        ck.eq("257 and a newline", r2, Ok(258));
        ck.note = ", lines judged by xtask".into();
    });
}

// ---------------------------------------------------------------- LIM-6

/// LIM-6 (run in the `bounds` phase).
pub fn lim_6() {
    clause("LIM-6", "reservation: max_pages frames", |ck| {
        let list = &raw mut LIST;
        // SAFETY: only this function and LIM-4 touch LIST, one at a time.
        let list = unsafe { &mut *list };
        let lp = list.as_mut_ptr() as u64;
        let (owned, max) = paging::memory_info().unwrap_or((0, 0));
        ck.t(max > owned, "no room under max_pages (manifest max_memory)");
        let room = max.saturating_sub(owned);
        // To the limit, in batches; keep what was taken to give it back.
        let mut taken: Vec<u64> = Vec::new();
        let mut left = room;
        while left > 0 {
            let n = left.min(MEMORY_BATCH_MAX);
            match c2(Hypercall::MemoryPopulate, lp, n) {
                Ok(k) => {
                    taken.extend_from_slice(&list[..k as usize]);
                    left -= k;
                }
                Err(e) => {
                    ck.t(false, &format!("populate below the limit: {e}"));
                    break;
                }
            }
        }
        ck.eq("at the limit", paging::memory_info(), Ok((max, max)));
        // One past it: refused, nothing taken.
        list[0] = 0x5a5a;
        ck.err(
            "one past",
            c2(Hypercall::MemoryPopulate, lp, 1),
            Error::NoResources,
        );
        ck.eq("list untouched", list[0], 0x5a5a);
        ck.eq("still at the limit", paging::memory_info(), Ok((max, max)));
        for chunk in taken.chunks(MEMORY_BATCH_MAX as usize) {
            list[..chunk.len()].copy_from_slice(chunk);
            ck.ok(
                "give back",
                c2(Hypercall::MemoryRelease, lp, chunk.len() as u64),
            );
        }
        ck.eq("back where it was", paging::memory_info(), Ok((owned, max)));
        ck.note = format!(", {room} frames up to max_pages {max}");
    });
    println!("bounds: done");
}
