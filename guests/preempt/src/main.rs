//! Long operations beside a latency-measuring guest (issue 7, finding 5).
//!
//! * `role=latency peer=D period_ms=P after_ms=A`: wakes on its one-shot
//!   timer every `P` ms and records how late each wake-up is, by its own
//!   clock. It offers domain `D` (the pinner) a port and sends on it every
//!   tick: once a send fails with `wrong_state` the pinner has been
//!   destroyed, and it measures `A` ms more, across the pinner's teardown.
//!   Reports `@ latency samples=… worst_ns=… mean_ns=… peer_gone=1`.
//! * `role=pinner peer=D tables=N`: takes `N` fresh frames, fills each as
//!   an L1 of 512 read-only entries, links them under L2s and one L3, pins
//!   the L3 (one `mmu_pin` of the whole tree, restarted by the hypervisor as
//!   often as it needs), checks through `mmu_frame_info` that the tree is
//!   pinned and valid, reports `@ pinned tables=… ns=… ok=1`, and powers
//!   off: its teardown releases the tree. Before the pin it tries to link
//!   the fresh tree from an entry of a pinned L4 (`no_resources`, MMU-37),
//!   after it links it, unpins it and tries to drop that last reference
//!   (`no_resources`, MMU-38), each 64 times, and reports
//!   `@ linked attempts=64 ok=1`.
//! * `role=writer writes=N`: `N` console writes of 4 KiB each.
//! * `role=abandoner tables=N`: starts pinning a tree of `N` full L1s with
//!   its timer armed; the timer's upcall, landing on the restarted
//!   `mmu_pin`, checks that the tree is half pinned (`FRAME_PARTIAL`),
//!   reports `@ abandoned partial=1` and powers off right there: the
//!   hypervisor must undo the half-done pin in the teardown (MMU-36).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use alloc::vec;
use guest_sdk::abi::args::{FrameType, ShutdownReason, Virq, FRAME_PARTIAL, FRAME_PINNED};
use guest_sdk::abi::pte::{NX, PRESENT, USER, WRITABLE};
use guest_sdk::event::{self, DomId, Port};
use guest_sdk::paging::{self, Flags, Level};
use guest_sdk::time::{self, Timer};
use guest_sdk::{console, println, sched, Error, StartInfo};

guest_sdk::entry!(main);

/// A page of the mapping region used to fill fresh frames.
const SCRATCH: u64 = paging::MAP_BASE + 0x4000_0000;

fn arg(si: &StartInfo, key: &str, default: u64) -> u64 {
    si.cmdline_value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main(si: &StartInfo) -> i32 {
    let r = match si.cmdline_value("role").unwrap_or("latency") {
        "latency" => latency(si),
        "pinner" => pinner(si),
        "writer" => writer(si),
        "abandoner" => abandoner(si),
        other => {
            println!("unknown role {other}");
            return 2;
        }
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            println!("@ preempt-error error={e:?}");
            1
        }
    }
}

fn latency(si: &StartInfo) -> Result<(), Error> {
    let peer = DomId(arg(si, "peer", 2) as u16);
    let period = arg(si, "period_ms", 2) * 1_000_000;
    let after = arg(si, "after_ms", 2000) * 1_000_000;
    let port: Port = event::alloc_unbound(peer)?;
    let timer = Timer::new()?;
    let (mut samples, mut worst, mut sum) = (0u64, 0u64, 0u64);
    // Worst lateness before the pinner is bound, while it lives, after.
    let mut phase = [0u64; 3];
    let mut bound = false;
    let mut gone_at = None;
    let mut next = time::now_ns() + period;
    loop {
        timer.set_deadline(next);
        timer.wait();
        let now = time::now_ns();
        let late = now.saturating_sub(next);
        samples += 1;
        sum += late;
        worst = worst.max(late);
        let p = if !bound {
            0
        } else if gone_at.is_none() {
            1
        } else {
            2
        };
        phase[p] = phase[p].max(late);
        next = now + period;
        match event::send(port) {
            Ok(()) => bound = true,
            Err(Error::WrongState) if bound && gone_at.is_none() => gone_at = Some(now),
            Err(_) => {}
        }
        if gone_at.is_some_and(|g| now - g >= after) {
            break;
        }
    }
    println!(
        "@ latency samples={samples} worst_ns={worst} mean_ns={} peer_gone=1 \
         worst_setup_ns={} worst_peer_ns={} worst_after_ns={}",
        sum / samples.max(1),
        phase[0],
        phase[1],
        phase[2]
    );
    Ok(())
}

fn pinner(si: &StartInfo) -> Result<(), Error> {
    let peer = DomId(arg(si, "peer", 1) as u16);
    let tables = arg(si, "tables", 16_000) as usize;
    // The latency guest offers port 1; bound, its sends tell it we live.
    let _port = loop {
        match event::bind_interdomain(peer, Port(1)) {
            Ok(p) => break p,
            Err(_) => sched::yield_now(),
        }
    };
    let l2s = tables.div_ceil(512);
    let mut frames = vec![0u64; tables + l2s + 3];
    paging::populate(&mut frames)?;
    let (l1s, rest) = frames.split_at(tables);
    let (l2s_f, rest) = rest.split_at(l2s);
    let (l3, data, hook) = (rest[0], rest[1], rest[2]);
    let leaf = (data << 12) | PRESENT | USER | NX;
    for &f in l1s {
        fill(f, |_| leaf)?;
    }
    for (j, &f) in l2s_f.iter().enumerate() {
        fill(f, |i| match l1s.get(j * 512 + i) {
            Some(&l1) => (l1 << 12) | PRESENT | USER | WRITABLE,
            None => 0,
        })?;
    }
    fill(l3, |i| match l2s_f.get(i) {
        Some(&l2) => (l2 << 12) | PRESENT | USER | WRITABLE,
        None => 0,
    })?;
    // MMU-37: linking the whole fresh tree from an entry of an (empty,
    // pinned) L4 is refused after a bounded amount of work, nothing changed.
    paging::pin(hook, Level::L4)?;
    let link = || paging::mmu_update(&[upd(paging::entry_ptr(hook, 0), paging::table_entry(l3))]);
    let unlink = || paging::mmu_update(&[upd(paging::entry_ptr(hook, 0), 0)]);
    let refused = |r: Result<(), paging::BatchError>| matches!(r, Err(b) if b.done == 0 && b.error == Error::NoResources);
    let mut link_ok = true;
    let t0 = time::now_ns();
    for _ in 0..ATTEMPTS {
        link_ok &= refused(link());
    }
    let link_ns = (time::now_ns() - t0) / ATTEMPTS as u64;
    link_ok &= paging::frame_info(l3)?.page_type == FrameType::None as u32;
    link_ok &= paging::frame_info(l1s[0])?.page_type == FrameType::None as u32;
    let t0 = time::now_ns();
    paging::pin(l3, Level::L3)?;
    let ns = time::now_ns() - t0;
    // MMU-38: linked while pinned (O(1)), then the entry holds the only
    // reference: dropping it is refused, nothing released.
    link_ok &= link().is_ok();
    paging::unpin(l3)?;
    let t0 = time::now_ns();
    for _ in 0..ATTEMPTS {
        link_ok &= refused(unlink());
    }
    let unlink_ns = (time::now_ns() - t0) / ATTEMPTS as u64;
    let i = paging::frame_info(l3)?;
    link_ok &= i.page_type == FrameType::L3 as u32 && i.type_count == 1;
    // Pin it again so the checks below see it pinned; the entry stays, the
    // teardown releases both.
    paging::pin(l3, Level::L3)?;
    println!(
        "@ linked attempts={ATTEMPTS} link_ns={link_ns} unlink_ns={unlink_ns} ok={}",
        u8::from(link_ok)
    );
    let root = paging::frame_info(l3)?;
    let mut ok = root.flags & FRAME_PINNED != 0 && root.page_type == FrameType::L3 as u32;
    for &f in l1s.iter().step_by(97).chain(l1s.last()) {
        let i = paging::frame_info(f)?;
        ok &= i.page_type == FrameType::L1 as u32 && i.type_count == 1;
    }
    let d = paging::frame_info(data)?;
    ok &= d.total_count == (tables * 512) as u64;
    println!("@ pinned tables={tables} ns={ns} ok={}", u8::from(ok));
    if ok && link_ok {
        Ok(())
    } else {
        Err(Error::WrongState)
    }
}

/// Refused links and unlinks of the whole tree tried beside the latency
/// guest (MMU-37, MMU-38): each costs the hypervisor up to two budgets.
const ATTEMPTS: usize = 64;

fn upd(ptr: u64, val: u64) -> guest_sdk::abi::args::MmuUpdate {
    guest_sdk::abi::args::MmuUpdate { ptr, val }
}

/// Writes entry `i` of fresh frame `mfn` as `value(i)` through a temporary
/// writable mapping, then unmaps it.
fn fill(mfn: u64, value: impl Fn(usize) -> u64) -> Result<(), Error> {
    paging::map(SCRATCH, mfn, Flags::WRITABLE)?;
    for i in 0..512 {
        // SAFETY: SCRATCH maps `mfn` writable just above and is reached only
        // through raw pointers; `i < 512` keeps the store inside the page.
        unsafe { core::ptr::write_volatile((SCRATCH + i as u64 * 8) as *mut u64, value(i)) };
    }
    paging::unmap(SCRATCH)
}

fn writer(si: &StartInfo) -> Result<(), Error> {
    let writes = arg(si, "writes", 20);
    let mut buf = [b'w'; 4096];
    for (i, b) in buf.iter_mut().enumerate() {
        if i % 128 == 127 {
            *b = b'\n';
        }
    }
    for _ in 0..writes {
        console::write(&buf)?;
    }
    println!("@ written writes={writes} bytes={}", writes * 4096);
    Ok(())
}

/// The L2 the abandoner is pinning.
static ABANDON_ROOT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// Set when its timer fired while the tree was not partial.
static ABANDON_MISSED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

fn abandon_on_timer(_: Port) {
    let root = ABANDON_ROOT.load(core::sync::atomic::Ordering::Acquire);
    let partial = paging::frame_info(root).is_ok_and(|i| i.flags & FRAME_PARTIAL != 0);
    if partial {
        println!("@ abandoned partial=1 root={root:#x}");
        sched::shutdown(ShutdownReason::Poweroff, 0);
    }
    ABANDON_MISSED.store(true, core::sync::atomic::Ordering::Release);
}

fn abandoner(si: &StartInfo) -> Result<(), Error> {
    let tables = arg(si, "tables", 256) as usize;
    let mut frames = vec![0u64; tables + 2];
    paging::populate(&mut frames)?;
    let (l1s, rest) = frames.split_at(tables);
    let (l2, data) = (rest[0], rest[1]);
    let leaf = (data << 12) | PRESENT | USER | NX;
    for &f in l1s {
        fill(f, |_| leaf)?;
    }
    fill(l2, |i| match l1s.get(i) {
        Some(&l1) => (l1 << 12) | PRESENT | USER | WRITABLE,
        None => 0,
    })?;
    ABANDON_ROOT.store(l2, core::sync::atomic::Ordering::Release);
    let _port = event::bind_virq_with(Virq::Timer, abandon_on_timer)?;
    let mut delay = 500_000u64;
    for _ in 0..32 {
        ABANDON_MISSED.store(false, core::sync::atomic::Ordering::Release);
        time::timer_set(time::now_ns() + delay);
        paging::pin(l2, Level::L2)?;
        time::timer_cancel();
        paging::unpin(l2)?;
        // Not caught mid-pin: the timer fired too early (before the first
        // restart) or not at all (the pin was shorter than the delay).
        delay = if ABANDON_MISSED.load(core::sync::atomic::Ordering::Acquire) {
            delay * 3 / 2 + 1
        } else {
            delay / 2 + 1
        };
    }
    println!("@ abandoned partial=0");
    Err(Error::WrongState)
}
