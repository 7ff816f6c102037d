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
//! 4 KiB reads and N writes at depth 1 and at full depth) in the sectors
//! `scratch=FIRST:COUNT` (a part of the image no guest's extent covers),
//! printing `@ blk-direct ...` facts.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod dev;
mod hal;

use alloc::vec::Vec;

use guest_sdk::dma::Region;
use guest_sdk::{println, StartInfo};

use dev::{Disk, Kind};

guest_sdk::entry!(main);

fn main(si: &StartInfo) -> i32 {
    let Some(region) = Region::of(si) else {
        println!("blkback: no DMA region in the start info: declare this domain the disk's driver");
        return 1;
    };
    hal::init(region);
    let n = usize::try_from(si.device_count)
        .unwrap_or(0)
        .min(si.devices.len());
    let mut disks: Vec<Disk<u64>> = Vec::new();
    for (i, info) in si.devices[..n].iter().enumerate() {
        match Disk::open(i, info, 16) {
            Ok(d) => {
                println!(
                    "@ blkback device={i} capacity={} slots={} readonly={} flush=yes irq_port={}",
                    d.capacity(),
                    d.slots(),
                    d.readonly(),
                    d.irq_port
                );
                disks.push(d);
            }
            Err(e) => println!("@ blkback device={i} error=\"{e:?}\" (not served)"),
        }
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
    0
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
fn direct(d: &mut Disk<u64>, n: u64, first: u64, count: u64) -> bool {
    let pages = count / 8;
    if pages == 0 || first.checked_add(count).is_none_or(|e| e > d.capacity()) {
        println!("blkback: scratch {first}:{count} is not inside the device");
        return false;
    }
    for (kind, name) in [(Kind::Write, "write"), (Kind::Read, "read")] {
        for depth in [1, d.slots()] {
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let t0 = guest_sdk::time::now_ns();
            let (mut sent, mut done, mut failed) = (0u64, 0u64, 0u64);
            while done < n {
                while sent < n && d.in_flight() < depth {
                    let Some(slot) = d.free_slot() else { break };
                    let sector = first + (next_rand(&mut seed) % pages) * 8;
                    if kind == Kind::Write {
                        let (va, _) = d.buffer(slot);
                        fill(va, sector);
                    }
                    if d.submit(slot, kind, sector, 4096, sector).is_err() {
                        break;
                    }
                    sent += 1;
                }
                // Interrupts stay masked at the IOAPIC until `io_irq_ack`;
                // polling needs none, but keep the device's ISR clear.
                d.ack_interrupt();
                while let Some((slot, sector, ok)) = d.poll() {
                    done += 1;
                    if !ok || (kind == Kind::Read && !check(d.buffer(slot).0, sector)) {
                        failed += 1;
                    }
                }
                core::hint::spin_loop();
            }
            let ns = guest_sdk::time::now_ns().saturating_sub(t0).max(1);
            println!(
                "@ blk-direct op={name} depth={depth} requests={n} ns={ns} per_sec={} failed={failed}",
                n * 1_000_000_000 / ns
            );
            if failed != 0 {
                return false;
            }
        }
        if kind == Kind::Write {
            let t0 = guest_sdk::time::now_ns();
            let ok = d.flush();
            let ns = guest_sdk::time::now_ns().saturating_sub(t0);
            println!("@ blk-direct op=flush ok={ok} ns={ns}");
            if !ok {
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
