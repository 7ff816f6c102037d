//! One driver domain for disk and network (`docs/io.md`, "One driver
//! domain for both"): like Xen's domain 0 running `blkback` and `netback`.
//!
//! QEMU `microvm`'s virtio-mmio slots share one 4 KiB frame, and the
//! hypervisor never delegates one frame to two domains, so a scenario with
//! both a `[disk]` and a `[net]` names one privileged guest as the driver
//! of both, running this image. It
//!
//! * takes the DMA region: a fixed part of it for the virtio-net uplink's
//!   queues and frame buffers ([`UPLINK_DMA_PAGES`]), the rest for the
//!   block devices' request slots (`blkback::hal`);
//! * opens every delegated virtio-blk device (`blkback::dev`) and serves
//!   every virtual disk its start info lists (`blkback::serve`, BLK-*);
//! * brings up the virtio-net uplink and switches every vNIC its start
//!   info lists (`netback`, NET-*);
//! * runs one loop: a pass of the disks, a pass of the network, and sleeps
//!   only when neither had anything to do, no ring has requests after a
//!   final check, and no device has had a request in flight for less than
//!   [`DEVICE_POLL_NS`] (meanwhile it polls, yielding the CPU). Each pass is bounded (the disks by the devices' request
//!   slots, one request per disk per turn; each TX ring by its size), so a
//!   flood on a disk ring cannot keep the network from being served, nor
//!   the other way round (the `drv-hostile` scenario tries both).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use alloc::vec::Vec;

use blkback::dev::Disk;
use blkback::serve::Server;
use blkback::{hal, Job};
use guest_sdk::io::DmaRegion;
use guest_sdk::{event, println, sched, time, StartInfo, Vnic};
use netback::{Net, VIRTIO_ID_NET};

guest_sdk::entry!(main);

/// virtio device id of a block device.
const VIRTIO_ID_BLOCK: u32 = 2;
/// DMA pages set aside for the uplink: its two 16-entry virtqueues and
/// 24 one-page frame buffers, with room to spare.
const UPLINK_DMA_PAGES: usize = 48;
/// Request slots per block device (the virtqueue's size).
const BLK_SLOTS: usize = 16;
/// How long the loop polls a device with requests in flight before it
/// sleeps until the device's interrupt: long enough for any request of a
/// working device (a loaded host's fsync included), so that a measured
/// request never waits for the fallback timer; a device that takes longer
/// is served from its interrupt.
const DEVICE_POLL_NS: u64 = 100_000_000;
/// `@ drv-late-wake` lines printed at most (the console is not flooded).
const LATE_REPORTS: u64 = 16;

fn main(si: &StartInfo) -> i32 {
    let Some(region) = si.dma() else {
        println!("driverdom: no DMA region in the start info: name this domain the driver of [disk] and [net]");
        return 1;
    };
    hal::init(region);
    // The uplink's share first, so the block slots cannot leave it short.
    let uplink = si.devices().find(|d| d.virtio_id == VIRTIO_ID_NET);
    let uplink_dma = match uplink {
        Some(_) => match hal::alloc_pages(UPLINK_DMA_PAGES) {
            Some((va, pa)) => Some(DmaRegion {
                first_page: region.first_page + (va - region.va) / 4096,
                pages: UPLINK_DMA_PAGES as u64,
                machine_base: pa,
                va,
            }),
            None => {
                println!("driverdom: the DMA region is too small for the uplink: raise `dma` in the manifest");
                None
            }
        },
        None => None,
    };

    let n = usize::try_from(si.device_count)
        .unwrap_or(0)
        .min(si.devices.len());
    let mut disks: Vec<Disk<Job>> = Vec::new();
    for (i, info) in si.devices[..n].iter().enumerate() {
        if info.virtio_id != VIRTIO_ID_BLOCK {
            continue;
        }
        disks.extend(Disk::open_reported(i, info, BLK_SLOTS));
    }
    let mut server = Server::new(si, disks);
    server.listen();

    let infos: Vec<Vnic> = si.vnics().collect();
    let mut net = Net::new(&infos);
    if let (Some(d), Some(dma)) = (uplink, uplink_dma) {
        net.start_uplink(&d, dma);
    }
    let (free, total) = hal::usage();
    println!(
        "@ drv-serving disks={} vnics={} uplink={} dma_free={free} dma_pages={total}",
        server.vdisks(),
        infos.len(),
        u8::from(net.up.is_some())
    );
    println!("@ blk-serving disks={}", server.vdisks());

    // When the pass found nothing to do while a device had requests in
    // flight: since when (see below).
    let mut polling_since: Option<u64> = None;
    // Waits that ended by their deadline, and those after which the next
    // pass found work: work that was pending while this domain slept, a
    // missed wake-up (`@ drv-late-wake`, which `cargo xtask bench` refuses
    // in `bench-kv-guest`).
    let (mut deadlines, mut late) = (0u64, 0u64);
    let mut by_deadline = false;
    loop {
        let disk = server.poll();
        let network = net.poll();
        let progress = disk || network;
        if core::mem::take(&mut by_deadline) && progress {
            late += 1;
            if late <= LATE_REPORTS {
                println!(
                    "@ drv-late-wake n={late} deadlines={deadlines} disk={} net={}",
                    u8::from(disk),
                    u8::from(network)
                );
            }
        }
        if progress {
            polling_since = None;
            continue;
        }
        // Both final checks, so that neither side's late request is left
        // for the timeout.
        let again = server.final_checks() | net.final_check();
        if again {
            polling_since = None;
            continue;
        }
        // A device request in flight completes outside the machine (QEMU's
        // I/O thread): poll for it, yielding the CPU to every other domain
        // between looks (only time no other domain wants is spent), for up
        // to DEVICE_POLL_NS, and only then sleep until its interrupt. With
        // every domain asleep while the host does the I/O the machine is
        // idle, and under `-icount ... sleep=off` (`cargo xtask bench`) an
        // idle machine's clock jumps to the next timer: the 50 ms fallback
        // below, which requests then measured (issue 11; docs/kvstore.md,
        // "Figures from a client guest").
        if server.device_busy() {
            let now = time::now_ns();
            let since = *polling_since.get_or_insert(now);
            if now.saturating_sub(since) < DEVICE_POLL_NS {
                sched::yield_now();
                continue;
            }
        }
        if event::wait_until(time::now_ns() + 50_000_000) == sched::BlockResult::Deadline {
            deadlines += 1;
            by_deadline = true;
        }
    }
}
