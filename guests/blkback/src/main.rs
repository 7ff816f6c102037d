//! The block driver domain (design: `docs/io.md`; protocol: `BLK-*` in
//! `docs/abi/blk.md`). It owns the virtio-blk devices the boot pack
//! delegates to it and serves every virtual disk its start info lists as a
//! backend entry, each an extent of one device.
//!
//! Bring-up: the DMA region becomes the `virtio-drivers` Hal's memory
//! (`hal`), each delegated virtio-blk device is opened over its MMIO window
//! (`dev`) and must offer `VIRTIO_BLK_F_FLUSH` (a device that cannot flush
//! is not served: writes could not be acknowledged as durable).
//!
//! Command line: `direct=N` first measures the device directly (N random
//! 4 KiB writes, then reads, at depth 1 and at full depth: all 16 slots, the
//! virtqueue's size) in the sectors `scratch=FIRST:COUNT` (a part of the
//! image no guest's extent covers), checking what it reads back and
//! printing `@ bench name=blk_direct_{write,read}_d{1,32} ...` (ticks per
//! request) for `cargo xtask bench`; the frontend's figures of the same run
//! are `blk_vblk_*` (`guests/vblktest`). `die_after=N` makes it shut down
//! after answering N requests (a test's way to kill the driver mid-run).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use alloc::vec::Vec;

use blkback::dev::{Disk, Kind};
use blkback::serve::{self, Server};
use blkback::{hal, hv, Job};
use guest_sdk::{println, StartInfo};

guest_sdk::entry!(main);

fn main(si: &StartInfo) -> i32 {
    // Its CPU figures are its time minus its blocked time: count the latter.
    guest_sdk::event::track_blocked(true);
    let Some(region) = si.dma() else {
        println!("blkback: no DMA region in the start info: declare this domain the disk's driver");
        return 1;
    };
    hal::init(region);
    let n = usize::try_from(si.device_count)
        .unwrap_or(0)
        .min(si.devices.len());
    let mut disks: Vec<Disk<Job>> = Vec::new();
    for (i, info) in si.devices[..n].iter().enumerate() {
        disks.extend(Disk::open_reported(i, info, 16));
    }
    let (free, total) = hal::usage();
    log::info!("DMA region: {total} pages, {free} free after bring-up");
    if let (Some(n), Some(d)) = (si.cmdline_value("direct"), disks.first_mut()) {
        let n: u64 = n.parse().unwrap_or(1000);
        let Some((first, count)) = si.cmdline_value("scratch").and_then(parse_range) else {
            println!("blkback: direct=N needs scratch=FIRST:COUNT (sectors no guest uses)");
            return 1;
        };
        if !direct(d, n, first, count) {
            return 1;
        }
    }
    let mut server = Server::new(si, disks);
    println!("@ blk-serving disks={}", server.vdisks());
    server.listen();
    // `die_after=N`: a test's way to kill the driver domain mid-run.
    let die_after: Option<u64> = si.cmdline_value("die_after").and_then(|v| v.parse().ok());
    server.run(|s| die_after.is_some_and(|n| s.served >= n));
    println!("@ blk-dying served={}", server.served);
    guest_sdk::sched::shutdown(guest_sdk::sched::ShutdownReason::Crash, 9)
}

fn parse_range(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A xorshift generator: random sectors without a dependency.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The device measured directly: random 4 KiB reads and writes in the
/// scratch sectors at depth 1 and at full depth; checks that what was
/// written reads back.
fn direct(d: &mut Disk<Job>, n: u64, first: u64, count: u64) -> bool {
    let pages = count / 8;
    if pages == 0 || first.checked_add(count).is_none_or(|e| e > d.capacity()) {
        println!("blkback: scratch {first}:{count} is not inside the device");
        return false;
    }
    // Completions arrive as interrupts (events), as when serving: the
    // figures compare the ring with the same driver, not with a spin loop.
    let irq = guest_sdk::event::Port(d.irq_port);
    guest_sdk::event::set_handler(irq, serve::on_event);
    let _ = guest_sdk::event::unmask(irq);
    // Pages written in this run, so reads check only what they can know.
    let mut written = alloc::vec![false; usize::try_from(pages).unwrap_or(0)];
    for (kind, name) in [(Kind::Write, "write"), (Kind::Read, "read")] {
        for depth in [1, d.slots()] {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let b0 = guest_sdk::event::blocked_ticks();
            let t0 = guest_sdk::time::rdtsc();
            let (mut sent, mut done, mut failed) = (0u64, 0u64, 0u64);
            while done < n {
                while sent < n && d.in_flight() < depth {
                    let Some(slot) = d.free_slot() else { break };
                    let sector = first + (next_rand(&mut seed) % pages) * 8;
                    if kind == Kind::Write {
                        let (va, _) = d.buffer(slot);
                        fill(va, sector);
                    }
                    if d.submit(slot, kind, sector, 4096, Job::Direct(sector))
                        .is_err()
                    {
                        break;
                    }
                    sent += 1;
                }
                let mut progressed = false;
                while let Some((slot, job, ok)) = d.poll() {
                    progressed = true;
                    done += 1;
                    let Job::Direct(sector) = job else { continue };
                    let page = usize::try_from((sector - first) / 8).unwrap_or(0);
                    if kind == Kind::Write && ok {
                        written[page] = true;
                    }
                    let known = written[page];
                    if !ok || (kind == Kind::Read && known && !check(d.buffer(slot).0, sector)) {
                        failed += 1;
                    }
                }
                if !progressed && done < n {
                    // Sleep until the device interrupts (an upcall since the
                    // last wait returns at once: nothing is lost).
                    guest_sdk::event::wait();
                }
                if serve::fired(d.irq_port) {
                    d.ack_interrupt();
                    if let Err(e) = hv::irq_ack(d.index) {
                        println!("blkback: io_irq_ack refused: {e}");
                        return false;
                    }
                }
            }
            let elapsed = guest_sdk::time::rdtsc().saturating_sub(t0);
            let per = elapsed / n.max(1);
            let blocked = guest_sdk::event::blocked_ticks().saturating_sub(b0);
            let cpu = elapsed.saturating_sub(blocked) / n.max(1);
            let d = if depth == 1 { 1 } else { 32 };
            // One figure per phase: ticks per request (instructions under
            // `-icount`), in the `cargo xtask bench` format; and the CPU
            // work alone (the time not blocked waiting for the device).
            println!(
                "@ bench name=blk_direct_{name}_d{d} value={per} min={per} mean={per} iters={n} unit=ticks"
            );
            println!(
                "@ bench name=blk_cpu_direct_{name}_d{d} value={cpu} min={cpu} mean={cpu} iters={n} unit=ticks"
            );
            if failed != 0 {
                println!("blkback: direct {name} at depth {depth}: {failed} of {n} failed or read back wrong");
                return false;
            }
        }
        if kind == Kind::Write {
            let t0 = guest_sdk::time::now_ns();
            let ok = d.flush();
            let ns = guest_sdk::time::now_ns().saturating_sub(t0);
            println!("@ blk-direct op=flush ok={} ns={ns}", u8::from(ok));
            if !ok {
                println!("blkback: direct flush failed");
                return false;
            }
        }
    }
    true
}

/// Writes sector `tag`'s pattern into the 4 KiB at `va`.
fn fill(va: u64, tag: u64) {
    for i in 0..512u64 {
        // SAFETY: `va` is a slot's data buffer (11 DMA pages, ours), idle
        // while we fill it; 512 aligned u64s are its first 4 KiB.
        unsafe { core::ptr::write_volatile((va + i * 8) as *mut u64, tag ^ i) };
    }
}

/// Whether the 4 KiB at `va` hold sector `tag`'s pattern.
fn check(va: u64, tag: u64) -> bool {
    (0..512u64).all(|i| {
        // SAFETY: as in `fill`, for a completed read's buffer.
        unsafe { core::ptr::read_volatile((va + i * 8) as *const u64) == tag ^ i }
    })
}
