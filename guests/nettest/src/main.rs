//! A vNIC frontend for the `net` scenario (`docs/network.md`).
//!
//! Both frontends check their start-info vNIC entry (MEM-3c) against what
//! the manifest says (`ip=` and, when the manifest gave one, `mac=` on the
//! command line; otherwise the MAC xtask derives from the guest's name),
//! set up their two rings, grant them to the driver domain at references 0
//! and 1 and signal it (NET-1), and post RX buffers.
//!
//! `a` then sends malformed TX requests (empty, past the page, over the
//! MTU, chained past the limit, an ungranted page: each refused) and one
//! good frame to `b` (NET-2); `b` receives it byte for byte (NET-3), then
//! sends a frame claiming `a`'s MAC (dropped) and one with its own (sent);
//! `a` must see only the second (NET-4).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use guest_sdk::abi::layout::VNIC_ROLE_FRONTEND;
use guest_sdk::abi::net::{
    rx_ring_ref, tx_ring_ref, RxRequest, RxRing, TxRequest, TxResponse, TxRing, FRAME_MAX,
    NET_DROPPED, NET_ERROR, NET_OK, TXF_MORE_DATA,
};
use guest_sdk::abi::ring::{slot_offset, RingProtocol, REQ_PROD_OFFSET, RSP_PROD_OFFSET};
use guest_sdk::grant::{self, GrantRef};
use guest_sdk::ring::{FrontEnd, RingPage};
use guest_sdk::{event, paging, println, sched, time, Error, Port, StartInfo, Vnic, VnicRole};
use harness::clause;

guest_sdk::entry!(main);

static EVENTS: AtomicU32 = AtomicU32::new(0);

fn on_vnic(_: Port) {
    EVENTS.fetch_add(1, Ordering::SeqCst);
}

/// `b`'s MAC (from the manifest).
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
/// An EtherType for the test frames (IEEE local experimental).
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
/// RX buffers posted.
const RX_BUFS: usize = 8;

/// A zeroed, page-aligned heap page that lives as long as the domain, and
/// its machine frame.
fn page() -> Result<(u64, u64), Error> {
    let layout =
        core::alloc::Layout::from_size_align(4096, 4096).map_err(|_| Error::NoResources)?;
    // SAFETY: a non-zero-sized layout; the page is never freed (it is
    // granted to the driver domain for the domain's whole life).
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return Err(Error::NoResources);
    }
    let va = p as u64;
    let (mfn, _) = paging::translate(va).ok_or(Error::BadAddress)?;
    Ok((va, mfn))
}

fn ring_page(va: u64) -> Result<RingPage, Error> {
    // SAFETY: `va` is a page from `page()`, owned by no Rust object, never
    // freed; the ring code reaches it only through atomics and volatile
    // copies, as a page the driver domain also writes.
    unsafe { RingPage::new(va as *mut u8) }.ok_or(Error::BadAddress)
}

fn write_page(va: u64, at: usize, bytes: &[u8]) {
    for (i, &b) in bytes.iter().enumerate().take(4096usize.saturating_sub(at)) {
        // SAFETY: `va` is a page from `page()` (never freed, no Rust object
        // in it) and `at + i < 4096`.
        unsafe { ((va as *mut u8).add(at + i)).write_volatile(b) };
    }
}

fn read_page(va: u64, len: usize) -> Vec<u8> {
    (0..len.min(4096))
        // SAFETY: as in `write_page`; the driver domain writes it only by
        // grant copy, and it is read after the response that says so.
        .map(|i| unsafe { ((va as *const u8).add(i)).read_volatile() })
        .collect()
}

/// One vNIC's frontend.
struct Nic {
    info: Vnic,
    tx: FrontEnd<TxRing, RingPage>,
    rx: FrontEnd<RxRing, RingPage>,
    tx_buf: (u64, GrantRef),
    rx_bufs: Vec<(u64, GrantRef)>,
    next_id: u16,
    /// The TX ring page (`hostile` writes its producer index raw).
    tx_ring_va: u64,
}

impl Nic {
    /// Rings granted at 2i and 2i+1, buffers granted, RX buffers posted,
    /// the driver signalled (NET-1).
    fn setup(info: Vnic) -> Result<Nic, Error> {
        let peer = info.peer;
        let (tva, tmfn) = page()?;
        let (rva, rmfn) = page()?;
        let tx = FrontEnd::init(ring_page(tva)?);
        let rx = FrontEnd::init(ring_page(rva)?);
        grant::grant_access_at(tmfn, peer, false, GrantRef(tx_ring_ref(info.index)))?;
        grant::grant_access_at(rmfn, peer, false, GrantRef(rx_ring_ref(info.index)))?;
        let (bva, bmfn) = page()?;
        let tx_buf = (bva, grant::grant_access(bmfn, peer, true)?);
        let mut rx_bufs = Vec::new();
        for _ in 0..RX_BUFS {
            let (va, mfn) = page()?;
            rx_bufs.push((va, grant::grant_access(mfn, peer, false)?));
        }
        let mut nic = Nic {
            info,
            tx,
            rx,
            tx_buf,
            rx_bufs,
            next_id: 1,
            tx_ring_va: tva,
        };
        for i in 0..RX_BUFS {
            nic.post(i);
        }
        let _ = nic.rx.publish();
        Ok(nic)
    }

    fn post(&mut self, i: usize) {
        let _ = self.rx.push_request(&RxRequest {
            id: i as u16,
            reserved: 0,
            gref: self.rx_bufs[i].1 .0,
        });
    }

    /// Publishes `reqs` on the TX ring and waits (5 s at most) for as many
    /// responses.
    fn send_raw(&mut self, reqs: &[TxRequest]) -> Vec<TxResponse> {
        for r in reqs {
            let _ = self.tx.push_request(r);
        }
        if self.tx.publish().unwrap_or(true) {
            let _ = event::send(self.info.port);
        }
        let mut out = Vec::new();
        let deadline = time::now_ns() + 5_000_000_000;
        let want = reqs.len();
        let tx = &mut self.tx;
        event::wait_for_until(
            || {
                while let Ok(Some(r)) = tx.take_response() {
                    out.push(r);
                }
                if out.len() >= want {
                    return true;
                }
                // Ask for an event at the next response, then look again.
                let _ = tx.final_check();
                while let Ok(Some(r)) = tx.take_response() {
                    out.push(r);
                }
                out.len() >= want
            },
            deadline,
        );
        out
    }

    /// Sends one frame from the TX buffer; its status.
    fn send(&mut self, frame: &[u8]) -> Option<i16> {
        write_page(self.tx_buf.0, 0, frame);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let r = self.send_raw(&[TxRequest {
            gref: self.tx_buf.1 .0,
            offset: 0,
            flags: 0,
            id,
            size: frame.len() as u16,
        }]);
        r.first().filter(|r| r.id == id).map(|r| r.status)
    }

    /// The next received frame (waiting until `deadline`), with the
    /// response's offset; its buffer is posted again.
    fn recv(&mut self, deadline: u64) -> Option<(Vec<u8>, u16, i16)> {
        let mut got = None;
        event::wait_for_until(
            || {
                if let Ok(Some(r)) = self.rx.take_response() {
                    got = Some(r);
                    return true;
                }
                let _ = self.rx.final_check();
                if let Ok(Some(r)) = self.rx.take_response() {
                    got = Some(r);
                    return true;
                }
                false
            },
            deadline,
        );
        let r = got?;
        let i = usize::from(r.id).min(RX_BUFS - 1);
        let len = usize::try_from(r.status).unwrap_or(0);
        let bytes = read_page(self.rx_bufs[i].0, len);
        self.post(i);
        if self.rx.publish().unwrap_or(true) {
            let _ = event::send(self.info.port);
        }
        Some((bytes, r.offset, r.status))
    }
}

/// A test frame: `dst`, `src`, the EtherType, then `tag` and a pattern to
/// `len` bytes.
fn frame(dst: [u8; 6], src: [u8; 6], tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE);
    f[14] = tag;
    for (i, b) in f[15..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(tag);
    }
    f
}

fn main(si: &StartInfo) -> i32 {
    let Some(v) = si.vnic(0) else {
        println!("nettest: no vNIC in the start info");
        clause("MEM-3c", "start-info vNIC table (frontend side)", |ck| {
            ck.t(false, "no frontend vNIC entry")
        });
        return 1;
    };
    event::set_handler(v.port, on_vnic);
    let nic = Nic::setup(v);
    let _ = event::unmask(v.port);
    let sent = event::send(v.port);
    if let Some(role @ ("hostile" | "observer")) = si.cmdline_value("role") {
        let peer = si.cmdline_value("peer").and_then(parse_mac);
        return match (nic, peer) {
            (Ok(mut n), Some(peer)) if role == "hostile" => hostile(&mut n, peer),
            (Ok(mut n), Some(peer)) => observer(&mut n, peer),
            (Ok(_), None) => {
                println!("nettest: role={role} needs peer=MAC");
                2
            }
            (Err(e), _) => {
                println!("nettest: ring setup failed: {e}");
                1
            }
        };
    }
    let answered = event::wait_for_until(
        || EVENTS.load(Ordering::SeqCst) >= 1,
        time::now_ns() + 10_000_000_000,
    );
    let name = si.name();
    clause("MEM-3c", "start-info vNIC table (frontend side)", |ck| {
        ck.eq("vnic_count", si.raw().vnic_count, 1);
        ck.eq("role", v.role, VnicRole::Frontend);
        ck.eq("raw role", si.raw().vnics[0].role, VNIC_ROLE_FRONTEND);
        ck.eq("index", v.index, 0);
        ck.eq("peer (the driver domain, id 1)", v.peer.0, 1);
        let ip = si.cmdline_value("ip").and_then(parse_ipv4);
        ck.eq("ipv4 as in the manifest", Some(v.ipv4), ip);
        let mac = match si.cmdline_value("mac") {
            Some(m) => parse_mac(m),
            None => Some(derived_mac(name, 0)),
        };
        ck.eq("mac as in the manifest (or derived)", Some(v.mac), mac);
        ck.eq("mtu", v.mtu, 1500);
        ck.eq("prefix", v.prefix_len, 24);
        ck.eq("gateway", v.gateway, [10, 0, 2, 2]);
        ck.eq("device", v.device, 0);
        ck.t(
            si.raw().vnics[1..]
                .iter()
                .all(|e| e.role == 0 && e.port == 0),
            "entries past the count are zero",
        );
        ck.eq("event to the driver", sent, Ok(()));
        ck.t(answered, "the driver's answer arrived on the port");
    });
    let mut nic = match nic {
        Ok(n) => n,
        Err(e) => {
            println!("nettest: ring setup failed: {e}");
            return 1;
        }
    };
    match name {
        "a" => sender(&mut nic),
        _ => receiver(&mut nic),
    }
}

/// `a`: malformed requests, one good frame to `b`, then only `b`'s
/// legitimate frame may arrive.
fn sender(nic: &mut Nic) -> i32 {
    let me = nic.info.mac;
    let good = frame(MAC_B, me, 1, 1000);
    write_page(nic.tx_buf.0, 0, &good);
    let g = nic.tx_buf.1 .0;
    let req = |offset: u16, size: u16, flags: u16, id: u16, gref: u32| TxRequest {
        gref,
        offset,
        flags,
        id,
        size,
    };
    clause(
        "NET-2",
        "TX requests are checked once, malformed ones refused",
        |ck| {
            let cases: [(&str, Vec<TxRequest>); 5] = [
                ("empty slot", vec![req(0, 0, 0, 100, g)]),
                ("past the page", vec![req(4000, 200, 0, 101, g)]),
                (
                    "over the MTU",
                    vec![req(0, FRAME_MAX as u16 + 1, 0, 102, g)],
                ),
                (
                    "chained past 4 slots",
                    (0..5)
                        .map(|k| req(k * 20, 20, if k < 4 { TXF_MORE_DATA } else { 0 }, 103, g))
                        .collect(),
                ),
                ("an ungranted page", vec![req(0, 60, 0, 104, 900)]),
            ];
            for (what, reqs) in cases {
                let r = nic.send_raw(&reqs);
                ck.eq(what, r.len(), reqs.len());
                ck.t(
                    r.iter()
                        .zip(&reqs)
                        .all(|(r, q)| r.id == q.id && r.status == NET_ERROR),
                    what,
                );
            }
            let two = [req(0, 500, TXF_MORE_DATA, 105, g), req(500, 500, 0, 105, g)];
            let r = nic.send_raw(&two);
            ck.t(
                r.len() == 2 && r.iter().all(|r| r.status == NET_OK),
                "a frame in two slots is sent",
            );
            ck.eq("the frame to b", nic.send(&good), Some(NET_OK));
        },
    );
    // b answers: the spoofed frame (tag 2) must never arrive; the
    // legitimate one (tag 3) must.
    let first = nic.recv(time::now_ns() + 20_000_000_000);
    clause(
        "NET-4",
        "a source MAC not the vNIC's own never arrives",
        |ck| {
            let Some((f, _, _)) = first else {
                ck.t(false, "b's legitimate frame never arrived");
                return;
            };
            ck.eq(
                "first frame's tag (3: legitimate, 2: spoofed)",
                f.get(14).copied(),
                Some(3),
            );
            ck.eq(
                "its source",
                f.get(6..12).map(<[u8]>::to_vec),
                Some(MAC_B.to_vec()),
            );
        },
    );
    // A flood b does not consume for now (NET-3: the switch's queue for b
    // is bounded); each frame is accepted by the switch.
    let flood = frame(MAC_B, me, 4, 64);
    let accepted = (0..FLOOD)
        .filter(|_| nic.send(&flood) == Some(NET_OK))
        .count();
    println!("nettest: {accepted} of {FLOOD} flood frames accepted");
    0
}

/// Frames `a` sends `b` while `b` consumes nothing.
const FLOOD: usize = 60;
/// The switch's per-port queue (`guests/netback`'s `QUEUE_LIMIT`, NET-3).
const QUEUE_LIMIT: usize = 32;

/// `b`: receives `a`'s frame, spoofs `a`, then sends `a` a real frame.
fn receiver(nic: &mut Nic) -> i32 {
    let a = derived_mac("a", 0);
    let me = nic.info.mac;
    // `a` sends two frames to b: the two-slot one (tag 1, 1000 bytes: the
    // same bytes) and the single-slot one.
    let first = nic.recv(time::now_ns() + 20_000_000_000);
    let second = nic.recv(time::now_ns() + 5_000_000_000);
    let none = nic.recv(time::now_ns() + 200_000_000);
    let spoof = nic.send(&frame(a, a, 2, 100));
    let real = nic.send(&frame(a, me, 3, 100));
    clause(
        "NET-4",
        "a source MAC not the vNIC's own never arrives",
        |ck| {
            ck.eq("spoofed frame", spoof, Some(NET_DROPPED));
            ck.eq("legitimate frame", real, Some(NET_OK));
        },
    );
    // `a` now floods: consume nothing for a while, then count what was
    // kept: the posted buffers plus the bounded queue, no more.
    time::sleep_ns(8_000_000_000);
    let mut flood = 0;
    while let Some((f, _, _)) = nic.recv(time::now_ns() + 1_000_000_000) {
        if f.get(14) == Some(&4) {
            flood += 1;
        }
    }
    clause(
        "NET-3",
        "frames arrive in posted RX buffers by grant copy",
        |ck| {
            let want = frame(MAC_B, a, 1, 1000);
            for (what, got) in [("two-slot frame", &first), ("one-slot frame", &second)] {
                match got {
                    None => ck.t(false, what),
                    Some((f, off, status)) => {
                        ck.eq("status is the length", *status, 1000);
                        ck.eq("offset", *off, 0);
                        ck.t(*f == want, what);
                    }
                }
            }
            ck.t(none.is_none(), "none of the refused requests arrived");
            ck.eq(
                "flood frames kept: posted buffers + queue",
                flood,
                RX_BUFS + QUEUE_LIMIT,
            );
        },
    );
    0
}

/// `role=hostile` (scenario `net-hostile`): everything a frontend can do
/// wrong, while two other guests keep a TCP stream going. Broadcast
/// floods (to every port), malformed TX requests, an ungranted page, an RX
/// ring never consumed, then a TX producer index far past the ring (the
/// driver must disconnect this ring only), then an event storm. In phase
/// 1 it also rewrites published TX requests (`rewrite_after_publish`),
/// sending to `peer` (the `observer` guest).
fn hostile(nic: &mut Nic, peer: [u8; 6]) -> i32 {
    let me = nic.info.mac;
    let g = nic.tx_buf.1 .0;
    let bcast = frame([0xff; 6], me, 9, 1514);
    let mut flood_ok = 0u32;
    let mut refused = 0u32;
    let mut storms = 0u64;
    let (mut rewrite_ok, mut rewrite_refused, mut rewrite_lost) = (0u32, 0u32, 0u32);
    let start = time::now_ns();
    // Phase 1 (2 s, while the other guests' stream runs): broadcast floods,
    // malformed requests and bursts of events, interleaved; the RX ring is
    // never consumed.
    while time::now_ns() - start < 2_000_000_000 {
        for _ in 0..200 {
            if event::send(nic.info.port).is_ok() {
                storms += 1;
            }
        }
        if nic.send(&bcast) == Some(NET_OK) {
            flood_ok += 1;
        }
        match rewrite_after_publish(nic, peer, rewrite_ok + rewrite_refused + rewrite_lost) {
            Some(NET_OK) => rewrite_ok += 1,
            Some(_) => rewrite_refused += 1,
            None => rewrite_lost += 1,
        }
        let bad = [
            TxRequest {
                gref: g,
                offset: 0,
                flags: 0,
                id: 7,
                size: 0,
            },
            TxRequest {
                gref: g,
                offset: 0,
                flags: 0,
                id: 8,
                size: FRAME_MAX as u16 + 100,
            },
            TxRequest {
                gref: 999,
                offset: 0,
                flags: 0,
                id: 9,
                size: 60,
            },
        ];
        refused += nic
            .send_raw(&bad)
            .iter()
            .filter(|r| r.status == NET_ERROR)
            .count() as u32;
    }
    // Phase 2: a producer index far past the ring (NET-2: the driver
    // bounds it and disconnects this ring, nothing else).
    write_page(nic.tx_ring_va, 0, &0x8000_0000u32.to_le_bytes());
    let _ = event::send(nic.info.port);
    // Phase 3 (3 s): an event storm.
    let storm_start = time::now_ns();
    while time::now_ns() - storm_start < 3_000_000_000 {
        if event::send(nic.info.port).is_ok() {
            storms += 1;
        }
    }
    println!(
        "@ hostile flood_ok={flood_ok} refused={refused} storms={storms} \
         rewrite_ok={rewrite_ok} rewrite_refused={rewrite_refused} rewrite_lost={rewrite_lost}"
    );
    0
}

/// The frame `hostile` publishes to `observer` (`to`), and the only one of
/// its rewrites that may ever arrive: 200 bytes, its own source, tag 0x40.
fn published_frame(to: [u8; 6], me: [u8; 6]) -> Vec<u8> {
    frame(to, me, 0x40, 200)
}

/// A source MAC that is no port's own: the rewritten frame's.
const FOREIGN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

/// A TX request changed after it was published (NET-2: the backend copies
/// each request once and validates the copy). Publishes a valid request
/// for `published_frame`, signals the driver, then keeps rewriting the slot
/// (size over the MTU) and the granted bytes (a foreign source, other
/// contents, 1,600 bytes) and back, yielding between rewrites so the driver
/// runs on one version or the other (`round` picks which comes first),
/// until the driver answers. Whatever the driver copied, only
/// `published_frame` may reach `to`: the observer checks every frame it
/// gets. The response's status, if one came.
fn rewrite_after_publish(nic: &mut Nic, to: [u8; 6], round: u32) -> Option<i16> {
    let me = nic.info.mac;
    let good = published_frame(to, me);
    let bad = frame(to, FOREIGN_MAC, 0xee, 1600);
    let gref = nic.tx_buf.1 .0;
    let id = nic.next_id;
    nic.next_id = nic.next_id.wrapping_add(1);
    let req = |size: u16| TxRequest {
        gref,
        offset: 0,
        flags: 0,
        id,
        size,
    };
    write_page(nic.tx_buf.0, 0, &good);
    let _ = nic.tx.push_request(&req(good.len() as u16));
    let _ = nic.tx.publish();
    // The slot just published: the TX producer index minus one.
    let prod = read_page(nic.tx_ring_va, REQ_PROD_OFFSET + 4)[REQ_PROD_OFFSET..]
        .try_into()
        .map_or(0, u32::from_le_bytes);
    let slot = slot_offset(prod.wrapping_sub(1), TxRing::SLOTS, TxRing::SLOT_SIZE);
    let write_slot = |r: &TxRequest| {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&r.gref.to_le_bytes());
        b[4..6].copy_from_slice(&r.offset.to_le_bytes());
        b[6..8].copy_from_slice(&r.flags.to_le_bytes());
        b[8..10].copy_from_slice(&r.id.to_le_bytes());
        b[10..12].copy_from_slice(&r.size.to_le_bytes());
        write_page(nic.tx_ring_va, slot, &b);
    };
    let rsp_prod = || {
        read_page(nic.tx_ring_va, RSP_PROD_OFFSET + 4)[RSP_PROD_OFFSET..]
            .try_into()
            .map_or(0, u32::from_le_bytes)
    };
    let answered_before = rsp_prod();
    let _ = event::send(nic.info.port);
    // Rewrite until the driver answers (its response takes the same slot,
    // which must not be overwritten then), 16 rounds at most.
    for i in 0..16u32 {
        if rsp_prod() != answered_before {
            break;
        }
        write_slot(&req(bad.len() as u16));
        write_page(nic.tx_buf.0, 0, &bad);
        // The driver runs at a yield: on odd rounds it finds the rewritten
        // version first, on even ones the published one.
        if (i + round) % 2 == 1 {
            sched::yield_now();
            if rsp_prod() != answered_before {
                break;
            }
        }
        write_slot(&req(good.len() as u16));
        write_page(nic.tx_buf.0, 0, &good);
        if (i + round).is_multiple_of(2) {
            sched::yield_now();
        }
    }
    let mut got = None;
    let tx = &mut nic.tx;
    event::wait_for_until(
        || {
            while let Ok(Some(r)) = tx.take_response() {
                if r.id == id {
                    got = Some(r.status);
                }
            }
            if got.is_none() {
                // Ask for an event at the next response, then look again.
                let _ = tx.final_check();
                while let Ok(Some(r)) = tx.take_response() {
                    if r.id == id {
                        got = Some(r.status);
                    }
                }
            }
            got.is_some()
        },
        time::now_ns() + 5_000_000_000,
    );
    got
}

/// `role=observer peer=MAC` (scenario `net-hostile`): takes every frame
/// for 12 s and checks each test frame (this test's EtherType) from the
/// hostile guest `peer`: only its broadcast flood and `published_frame`
/// may arrive, byte for byte; a frame with any byte of a rewrite (or a
/// foreign source) is counted as `bad`.
fn observer(nic: &mut Nic, peer: [u8; 6]) -> i32 {
    let me = nic.info.mac;
    let want = published_frame(me, peer);
    let flood = frame([0xff; 6], peer, 9, 1514);
    let (mut good, mut flooded, mut bad, mut other) = (0u32, 0u32, 0u32, 0u32);
    let end = time::now_ns() + 12_000_000_000;
    while let Some((f, _, _)) = nic.recv(end) {
        if f.get(12..14) != Some(&ETHERTYPE[..]) {
            other += 1;
        } else if f == want {
            good += 1;
        } else if f == flood {
            flooded += 1;
        } else {
            bad += 1;
            if bad == 1 {
                println!(
                    "nettest: a frame of {} bytes from {:02x?} that hostile never validated arrived",
                    f.len(),
                    f.get(6..12)
                );
            }
        }
    }
    println!("@ observer good={good} flood={flooded} bad={bad} other={other}");
    i32::from(bad > 0)
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in out.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// xtask's MAC for a vNIC without `mac` (`devices::derived_mac`).
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
