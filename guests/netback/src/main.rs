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
//! (NET-3): it never maps a data page. Frames for the uplink are counted
//! and dropped: the virtio-net driver is not written yet (docs/network.md).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod uplink;

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_sdk::abi::layout::{MAX_START_VNICS, VNIC_ROLE_BACKEND};
use guest_sdk::abi::net::{
    check_tx, rx_ring_ref, tx_ring_ref, RxResponse, RxRing, TxRequest, TxResponse, TxRing,
    FRAME_MAX, NET_DROPPED, NET_ERROR, NET_OK, TXF_MORE_DATA, TX_MAX_SLOTS,
};
use guest_sdk::grant::{self, GrantRef, MapHandle};
use guest_sdk::paging::{self, Flags, MAP_BASE};
use guest_sdk::ring::{BackEnd, RingPage};
use guest_sdk::{event, memory, println, time, Port, StartInfo, Vnic, VnicRole};
use harness::{clause, Ck};
use netswitch::{Switch, Verdict, UPLINK};

guest_sdk::entry!(main);

/// virtio-mmio magic ("virt") at offset 0, device id at offset 8.
const VIRTIO_MAGIC: u32 = 0x7472_6976;
/// virtio device id of a network device.
const VIRTIO_ID_NET: u32 = 1;
/// Frames the switch queues per port before dropping (NET-5).
const QUEUE_LIMIT: usize = 32;
/// Where ring pages are grant-mapped: two pages per vNIC.
const SLOTS: u64 = MAP_BASE + 0x40_0000;

/// Bit `i`: an event arrived on the port of backend entry `i`.
static SEEN: AtomicU64 = AtomicU64::new(0);
/// The backend entries' ports, for the handler (at most 8, MEM-3c).
static PORTS: [AtomicU64; MAX_START_VNICS] = [const { AtomicU64::new(0) }; MAX_START_VNICS];

fn on_vnic(port: Port) {
    for (i, p) in PORTS.iter().enumerate() {
        if p.load(Ordering::SeqCst) == u64::from(port.0) {
            SEEN.fetch_or(1 << i, Ordering::SeqCst);
        }
    }
}

/// Reads the 32-bit virtio-mmio register at `off` of the window at `va`.
fn mmio_r(va: u64, off: u64) -> u32 {
    // SAFETY: `va` is the uplink's window, mapped uncached by the
    // hypervisor at build (IO-0) and checked to be in the device table by
    // the caller; `off` is a register offset below 0x200, 4-byte aligned,
    // inside that mapped page. Reading the identity registers has no side
    // effect on the device.
    unsafe { core::ptr::read_volatile((va + off) as *const u32) }
}

/// One vNIC's backend state.
struct Nic {
    info: Vnic,
    /// Its switch port (`i + 1`).
    port: usize,
    tx: Option<BackEnd<TxRing, RingPage>>,
    rx: Option<BackEnd<RxRing, RingPage>>,
    maps: Vec<MapHandle>,
    /// Why connecting failed, if it did.
    failed: Option<guest_sdk::Error>,
    /// TX requests refused as malformed.
    tx_errors: u64,
    /// Whether a ring's disconnection was reported.
    cut_reported: bool,
}

fn ring_page(va: u64) -> Option<RingPage> {
    // SAFETY: `va` is a page this domain just grant-mapped writable (NET-1)
    // and never unmaps while the ring lives; the ring code reaches it only
    // through atomics and volatile copies, as a page the peer also writes.
    unsafe { RingPage::new(va as *mut u8) }
}

impl Nic {
    /// Maps the frontend's two ring pages (NET-1).
    fn connect(&mut self, slot: u64) {
        let peer = self.info.peer;
        let tx_va = SLOTS + slot * 2 * 4096;
        let rx_va = tx_va + 4096;
        let r =
            grant::map(peer, GrantRef(tx_ring_ref(self.info.index)), tx_va, false).and_then(|t| {
                self.maps.push(t);
                grant::map(peer, GrantRef(rx_ring_ref(self.info.index)), rx_va, false)
            });
        match r {
            Ok(h) => {
                self.maps.push(h);
                self.tx = ring_page(tx_va).map(BackEnd::attach);
                self.rx = ring_page(rx_va).map(BackEnd::attach);
            }
            Err(e) => {
                println!("netback: vNIC of domain {} not connected: {e}", peer.0);
                self.failed = Some(e);
            }
        }
    }

    /// Takes every published TX request: each frame's chain checked,
    /// copied out by grant copy, switched; each slot answered. Whether
    /// anything was taken and whether to notify.
    fn transmit(&mut self, sw: &mut Switch) -> (bool, bool) {
        let Some(tx) = self.tx.as_mut() else {
            return (false, false);
        };
        let mut work = false;
        let mut buf = vec![0u8; FRAME_MAX];
        while let Ok(Some(first)) = tx.take_request() {
            work = true;
            let mut chain: Vec<TxRequest> = vec![first];
            let mut broken = false;
            while chain.last().is_some_and(|s| s.flags & TXF_MORE_DATA != 0) {
                if chain.len() > TX_MAX_SLOTS {
                    break;
                }
                match tx.take_request() {
                    Ok(Some(s)) => chain.push(s),
                    _ => {
                        broken = true;
                        break;
                    }
                }
            }
            let status = if broken || chain.last().is_some_and(|s| s.flags & TXF_MORE_DATA != 0) {
                NET_ERROR
            } else {
                match check_tx(&chain) {
                    Err(_) => NET_ERROR,
                    Ok(len) => {
                        let mut at = 0usize;
                        let mut ok = true;
                        for s in &chain {
                            let n = usize::from(s.size);
                            let r = grant::copy_from_granted(
                                self.info.peer,
                                GrantRef(s.gref),
                                u64::from(s.offset),
                                &mut buf[at..at + n],
                            );
                            ok &= r.is_ok();
                            at += n;
                        }
                        if !ok {
                            NET_ERROR
                        } else {
                            match sw.ingress(self.port, &buf[..len]) {
                                Verdict::Queued(_) => NET_OK,
                                Verdict::Spoofed => NET_DROPPED,
                                Verdict::BadSize | Verdict::NoPort => NET_ERROR,
                            }
                        }
                    }
                }
            };
            if status == NET_ERROR {
                self.tx_errors += 1;
            }
            for s in &chain {
                let _ = tx.push_response(&TxResponse { id: s.id, status });
            }
        }
        let notify = tx.publish().unwrap_or(false);
        let cut = tx.is_disconnected() || self.rx.as_ref().is_some_and(|r| r.is_disconnected());
        if cut && !self.cut_reported {
            // A producer index past the ring: this vNIC's rings are no
            // longer read (NET-2); every other vNIC is served as before.
            self.cut_reported = true;
            println!(
                "@ vnic-disconnected dom={} tx={} rx={}",
                self.info.peer.0,
                u8::from(tx.is_disconnected()),
                u8::from(self.rx.as_ref().is_some_and(|r| r.is_disconnected()))
            );
        }
        (work, notify)
    }

    /// Copies queued frames into posted RX buffers (grant copy); a frame
    /// with no buffer waits in the switch's bounded queue.
    fn receive(&mut self, sw: &mut Switch) -> bool {
        let Some(rx) = self.rx.as_mut() else {
            return false;
        };
        let mut any = false;
        while let Some(frame) = sw.pop(self.port) {
            let req = match rx.take_request() {
                Ok(Some(r)) => r,
                _ => {
                    sw.unpop(self.port, frame);
                    break;
                }
            };
            let status = match grant::copy_to_granted(self.info.peer, GrantRef(req.gref), 0, &frame)
            {
                Ok(()) => i16::try_from(frame.len()).unwrap_or(NET_ERROR),
                Err(_) => NET_ERROR,
            };
            let _ = rx.push_response(&RxResponse {
                id: req.id,
                offset: 0,
                flags: 0,
                status,
            });
            any = true;
        }
        any && rx.publish().unwrap_or(false)
    }
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
    // An L1 for the ring slots: map a frame at the end of the range, unmap it.
    let l1 = memory::populate_one()
        .and_then(|f| paging::map(SLOTS + 511 * 4096, f, Flags::READ_ONLY))
        .and_then(|()| paging::unmap(SLOTS + 511 * 4096));
    if let Err(e) = l1 {
        println!("netback: no page table for the ring slots: {e}");
    }
    for (i, v) in infos.iter().enumerate() {
        PORTS[i].store(u64::from(v.port.0), Ordering::SeqCst);
        event::set_handler(v.port, on_vnic);
        let _ = event::unmask(v.port);
    }
    // The `net` conformance scenario (`checks=net`): its side of MEM-3c.
    let checks = si.cmdline_value("checks") == Some("net");
    if checks {
        let want = (1u64 << infos.len()) - 1;
        let all_seen = event::wait_for_until(
            || SEEN.load(Ordering::SeqCst) & want == want,
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
    let macs: Vec<[u8; 6]> = infos.iter().map(|v| v.mac).collect();
    let mut sw = Switch::new(&macs, QUEUE_LIMIT);
    let mut nics: Vec<Nic> = infos
        .iter()
        .enumerate()
        .map(|(i, v)| Nic {
            info: *v,
            port: i + 1,
            tx: None,
            rx: None,
            maps: Vec::new(),
            failed: None,
            tx_errors: 0,
            cut_reported: false,
        })
        .collect();
    if !checks {
        let up = match (uplink, si.dma()) {
            (Some(d), Some(dma)) => match uplink::Uplink::start(&d, dma) {
                Ok(u) => {
                    println!("netback: uplink up");
                    Some(u)
                }
                Err(e) => {
                    println!("netback: uplink not started: {e}");
                    None
                }
            },
            _ => None,
        };
        // Each vNIC connects on its frontend's first event (`serve`).
        return serve(&mut nics, &mut sw, up);
    }
    for (i, n) in nics.iter_mut().enumerate() {
        n.connect(i as u64);
    }
    clause("NET-1", "the backend maps both granted ring pages", |ck| {
        for n in &nics {
            ck.eq("connected", n.failed, None);
            ck.t(n.tx.is_some() && n.rx.is_some(), "both rings attached");
            ck.eq("two grant mappings", n.maps.len(), 2);
        }
        // A reference the frontend did not grant: refused, nothing mapped.
        let bad = grant::map(
            infos[0].peer,
            GrantRef(tx_ring_ref(5)),
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
    serve(&mut nics, &mut sw, None)
}

/// The switch's loop: forever (the scenario ends when the frontends do).
/// Without an uplink (the `net` conformance run), frames for it are
/// counted and dropped.
fn serve(nics: &mut [Nic], sw: &mut Switch, mut up: Option<uplink::Uplink>) -> i32 {
    let mut reported = [false; 2];
    loop {
        let mut work = false;
        let seen = SEEN.load(Ordering::SeqCst);
        for (i, n) in nics.iter_mut().enumerate() {
            if n.tx.is_none() && n.failed.is_none() && seen & (1 << i) != 0 {
                n.connect(i as u64);
                if n.failed.is_none() {
                    println!("netback: vNIC of domain {} connected", n.info.peer.0);
                }
            }
        }
        for n in nics.iter_mut() {
            let (w, notify) = n.transmit(sw);
            work |= w;
            if notify {
                let _ = event::send(n.info.port);
            }
        }
        for n in nics.iter_mut() {
            if n.receive(sw) {
                let _ = event::send(n.info.port);
            }
        }
        match up.as_mut() {
            Some(u) => work |= u.poll(sw),
            None => while sw.pop(UPLINK).is_some() {},
        }
        let spoofed: u64 = (1..sw.ports()).map(|p| sw.counters(p).spoofed).sum();
        if spoofed > 0 && !reported[0] {
            reported[0] = true;
            println!("netback: dropped {spoofed} spoofed frame(s)");
        }
        let errors: u64 = nics.iter().map(|n| n.tx_errors).sum();
        if errors > 0 && !reported[1] {
            reported[1] = true;
            println!("netback: refused {errors} malformed TX request(s)");
        }
        if work {
            continue;
        }
        let more = nics
            .iter_mut()
            .filter_map(|n| n.tx.as_mut())
            .any(|t| t.final_check().unwrap_or(false));
        if !more {
            event::wait_until(time::now_ns() + 50_000_000);
        }
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
