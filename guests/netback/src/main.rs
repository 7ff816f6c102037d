//! The network driver domain (`docs/network.md`, scenario `net`).
//!
//! It owns the virtio-net device delegated by `[net]` (the uplink to
//! QEMU's user network) and is the backend of every guest's vNIC: the
//! hypervisor lists them in its start-info vNIC table (MEM-3c), each with
//! an event channel already connected to the frontend.
//!
//! For each vNIC, on the frontend's first event, it maps the TX and RX
//! ring pages the frontend granted at references `2i` and `2i + 1`
//! (NET-1). It then takes TX requests (copied once, the chain checked:
//! NET-2), copies each frame out of the frontend's granted pages with
//! `grant_copy`, hands it to the learning switch (`netswitch`: source-MAC
//! check, MTU, bounded queues, NET-4, NET-5), and copies frames queued for
//! a vNIC into the RX buffers its frontend posted, again with `grant_copy`
//! (NET-3): it never maps a data page. Frames for the uplink go to the
//! virtio-net device (`uplink`). The serving parts are this crate's
//! library (`lib.rs`), shared with the combined driver domain
//! `guests/driverdom`.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use guest_sdk::abi::layout::VNIC_ROLE_BACKEND;
use guest_sdk::abi::net::tx_ring_ref;
use guest_sdk::grant::{self, GrantRef};
use guest_sdk::{event, paging, println, time, StartInfo, Vnic, VnicRole};
use harness::{clause, Ck};
use netback::{Net, QUEUE_LIMIT, SLOTS, VIRTIO_ID_NET};
use netswitch::Switch;

guest_sdk::entry!(main);

/// virtio-mmio magic ("virt") at offset 0, device id at offset 8.
const VIRTIO_MAGIC: u32 = 0x7472_6976;
/// Reads the 32-bit virtio-mmio register at `off` of the window at `va`.
fn mmio_r(va: u64, off: u64) -> u32 {
    // SAFETY: `va` is the uplink's window, mapped uncached by the
    // hypervisor at build (IO-0) and checked to be in the device table by
    // the caller; `off` is a register offset below 0x200, 4-byte aligned,
    // inside that mapped page. Reading the identity registers has no side
    // effect on the device.
    unsafe { core::ptr::read_volatile((va + off) as *const u32) }
}

fn main(si: &StartInfo) -> i32 {
    let infos: Vec<Vnic> = si.vnics().collect();
    let uplink = si.devices().find(|d| d.virtio_id == VIRTIO_ID_NET);
    println!(
        "netback: {} vNIC(s), uplink {}",
        infos.len(),
        if uplink.is_some() {
            "present"
        } else {
            "missing"
        }
    );
    // Every vNIC's backend: ports unmasked, handlers set, the switch.
    let mut net = Net::new(&infos);
    // The `net` conformance scenario (`checks=net`): its side of MEM-3c.
    let checks = si.cmdline_value("checks") == Some("net");
    if checks {
        let want = (1u64 << infos.len()) - 1;
        let all_seen = event::wait_for_until(
            || netback::seen() & want == want,
            time::now_ns() + 10_000_000_000,
        );
        let answered = infos.iter().all(|v| event::send(v.port).is_ok());

        clause("MEM-3c", "start-info vNIC table (switch side)", |ck| {
            check_table(ck, si, &infos);
            match uplink {
                None => ck.t(false, "no virtio-net device in the device table"),
                Some(d) => {
                    ck.eq("uplink virtio id", d.virtio_id, VIRTIO_ID_NET);
                    ck.eq("uplink magic", mmio_r(d.mmio_va, 0), VIRTIO_MAGIC);
                    ck.eq("uplink device id", mmio_r(d.mmio_va, 8), VIRTIO_ID_NET);
                    ck.t(
                        infos.iter().all(|v| v.device == d.index),
                        "every entry names the uplink's device index",
                    );
                }
            }
            ck.t(
                all_seen,
                "each frontend's event arrived on its entry's port",
            );
            ck.t(answered, "an event sent back on each port");
        });
    }

    // `bench=switch` (scenario `bench-net`, `cargo xtask bench`): the
    // switch's own cost per frame against moving it between two queues.
    if si.cmdline_value("bench") == Some("switch") {
        bench_switch();
    }
    if !checks {
        if let (Some(d), Some(dma)) = (uplink, si.dma()) {
            net.start_uplink(&d, dma);
        }
        // Each vNIC connects on its frontend's first event (`Net::poll`).
        return serve(&mut net);
    }
    for (i, n) in net.nics.iter_mut().enumerate() {
        n.connect(i as u64);
    }
    clause("NET-1", "the backend maps both granted ring pages", |ck| {
        for n in &net.nics {
            ck.eq("connected", n.failed, None);
            ck.t(n.tx.is_some() && n.rx.is_some(), "both rings attached");
            ck.eq("two grant mappings", n.maps.len(), 2);
        }
        // A reference the frontend did not grant (vNIC 3's ring: a
        // well-known one, never handed out automatically): refused,
        // nothing mapped.
        let bad = grant::map(
            infos[0].peer,
            GrantRef(tx_ring_ref(3)),
            SLOTS + 40 * 4096,
            false,
        );
        ck.eq(
            "an ungranted ring reference",
            bad.map(|_| ()),
            Err(guest_sdk::Error::NotFound),
        );
        ck.t(
            paging::translate(SLOTS + 40 * 4096).is_none(),
            "nothing mapped for it",
        );
    });
    serve(&mut net)
}

/// The switch's loop: forever (the scenario ends when the frontends do).
/// Without an uplink (the `net` conformance run), frames for it are
/// dropped.
fn serve(net: &mut Net) -> i32 {
    loop {
        if net.poll() || net.final_check() {
            continue;
        }
        event::wait_until(time::now_ns() + 50_000_000);
    }
}

/// The scenario's two vNICs: `a` (domain 2, 10.0.2.10, MAC derived from
/// its name) and `b` (domain 3, 10.0.2.11, 02:00:00:00:00:0b).
fn check_table(ck: &mut Ck, si: &StartInfo, nics: &[Vnic]) {
    ck.eq("vnic_count", si.raw().vnic_count, 2);
    ck.eq("entries", nics.len(), 2);
    ck.t(
        si.raw().vnics[2..]
            .iter()
            .all(|v| v.role == 0 && v.port == 0 && v.mac == [0; 6]),
        "entries past the count are zero",
    );
    let want = [
        (2u16, [10, 0, 2, 10], derived_mac("a", 0)),
        (3, [10, 0, 2, 11], [2, 0, 0, 0, 0, 0x0b]),
    ];
    for (i, (v, (peer, ip, mac))) in nics.iter().zip(want).enumerate() {
        ck.eq("role", v.role, VnicRole::Backend);
        ck.eq("raw role", si.raw().vnics[i].role, VNIC_ROLE_BACKEND);
        ck.eq("index (each frontend's first)", v.index, 0);
        ck.eq("peer", v.peer.0, peer);
        ck.eq("ipv4", v.ipv4, ip);
        ck.eq("mac", v.mac, mac);
        ck.eq("mtu", v.mtu, 1500);
        ck.eq("prefix", v.prefix_len, 24);
        ck.eq("gateway", v.gateway, [10, 0, 2, 2]);
    }
    ck.t(
        nics.len() < 2 || nics[0].port != nics[1].port,
        "one port per vNIC",
    );
}

/// xtask's MAC for a vNIC without `mac` (`devices::derived_mac`): `02:`
/// then the first five bytes of FNV-1a/64 of `name`, `/`, the index.
fn derived_mac(name: &str, index: u8) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let digit = [b'0' + index];
    for &b in name.as_bytes().iter().chain(b"/").chain(digit.iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// Per-frame ticks (instructions under `-icount`) of a frame from port 1 to
/// port 2 of a switch of its own (`ingress`: size and source checks,
/// learning, lookup, the copy into the queue; then `pop`), against the
/// same frame copied into one of netback's own queues, moved to a second
/// and popped: the difference is what the switch adds per frame. Batches
/// of 32 frames, 300 batches after 20 to warm up; `@ bench` lines
/// `switch_frame_{64,1514}` and `queue_frame_{64,1514}`.
fn bench_switch() {
    use alloc::collections::VecDeque;
    use core::hint::black_box;
    const A: [u8; 6] = [0x02, 0, 0, 0, 0xbe, 0x01];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0xbe, 0x02];
    const BATCH: u64 = 32;
    const ITERS: usize = 300;
    let report = |name: &str, mut v: Vec<u64>| {
        v.sort_unstable();
        let mean = v.iter().sum::<u64>() / v.len() as u64;
        println!(
            "@ bench name={name} value={} min={} mean={mean} iters={} unit=ticks",
            v[v.len() / 2],
            v[0],
            v.len()
        );
    };
    for size in [64usize, 1514] {
        let mut frame = vec![0u8; size];
        frame[0..6].copy_from_slice(&B);
        frame[6..12].copy_from_slice(&A);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]);
        let mut sw = Switch::new(&[A, B], QUEUE_LIMIT);
        // B's MAC learned, as after its first frame (B to A).
        let mut reply = vec![0u8; 64];
        reply[0..6].copy_from_slice(&A);
        reply[6..12].copy_from_slice(&B);
        reply[12..14].copy_from_slice(&[0x88, 0xb5]);
        let _ = sw.ingress(2, &reply);
        while sw.pop(1).is_some() {}
        let mut switched = Vec::with_capacity(ITERS);
        for i in 0..ITERS + 20 {
            let t = time::rdtsc();
            for _ in 0..BATCH {
                let _ = black_box(sw.ingress(1, black_box(&frame)));
                black_box(sw.pop(2));
            }
            let dt = time::rdtsc().wrapping_sub(t) / BATCH;
            if i >= 20 {
                switched.push(dt);
            }
        }
        let (mut q1, mut q2) = (VecDeque::new(), VecDeque::new());
        let mut queued = Vec::with_capacity(ITERS);
        for i in 0..ITERS + 20 {
            let t = time::rdtsc();
            for _ in 0..BATCH {
                q1.push_back(black_box(&frame).to_vec());
                if let Some(f) = q1.pop_front() {
                    q2.push_back(f);
                }
                black_box(q2.pop_front());
            }
            let dt = time::rdtsc().wrapping_sub(t) / BATCH;
            if i >= 20 {
                queued.push(dt);
            }
        }
        report(&alloc::format!("switch_frame_{size}"), switched);
        report(&alloc::format!("queue_frame_{size}"), queued);
    }
}
