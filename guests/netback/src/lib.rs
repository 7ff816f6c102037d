//! The network driver domain's parts as a library (`docs/network.md`):
//! each vNIC's backend ([`Nic`]: its rings, TX taken and checked, frames
//! copied by grant copy), the learning switch around them and the uplink
//! ([`Net`], one pass at a time), and the uplink's virtio-net driver
//! (`uplink`). The `netback` image (`main.rs`) runs them alone; the
//! combined driver domain `guests/driverdom` runs them beside `blkback`'s
//! disks in one event loop.
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod uplink;

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_sdk::abi::layout::MAX_START_VNICS;
use guest_sdk::abi::net::{
    check_tx, rx_ring_ref, tx_ring_ref, RxResponse, RxRing, TxRequest, TxResponse, TxRing,
    FRAME_MAX, NET_DROPPED, NET_ERROR, NET_OK, TXF_MORE_DATA, TX_MAX_SLOTS,
};
use guest_sdk::grant::{self, GrantRef, MapHandle};
use guest_sdk::paging::{self, Flags, MAP_BASE};
use guest_sdk::ring::{BackEnd, RingPage};
use guest_sdk::{event, memory, println, Port, Vnic};
use netswitch::{Switch, Verdict, UPLINK};

/// virtio device id of a network device.
pub const VIRTIO_ID_NET: u32 = 1;
/// Frames the switch queues per port before dropping (NET-5).
pub const QUEUE_LIMIT: usize = 32;
/// Where ring pages are grant-mapped: two pages per vNIC.
pub const SLOTS: u64 = MAP_BASE + 0x40_0000;

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

/// Bit `i`: an event arrived on the port of backend entry `i` (sticky).
pub fn seen() -> u64 {
    SEEN.load(Ordering::SeqCst)
}

/// One vNIC's backend state.
pub struct Nic {
    /// Its start-info entry.
    pub info: Vnic,
    /// Its switch port (`i + 1`).
    pub port: usize,
    /// The TX ring, once connected.
    pub tx: Option<BackEnd<TxRing, RingPage>>,
    /// The RX ring, once connected.
    pub rx: Option<BackEnd<RxRing, RingPage>>,
    /// Its ring pages' grant mappings.
    pub maps: Vec<MapHandle>,
    /// Why connecting failed, if it did.
    pub failed: Option<guest_sdk::Error>,
    /// TX requests refused as malformed.
    pub tx_errors: u64,
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
    pub fn connect(&mut self, slot: u64) {
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

/// Every vNIC's backend, the switch between them, and the uplink.
pub struct Net {
    /// One per backend entry of the start info, in its order.
    pub nics: Vec<Nic>,
    /// The learning switch: port 0 the uplink, port `i + 1` vNIC `i`.
    pub sw: Switch,
    /// The uplink, once started ([`Net::start_uplink`]).
    pub up: Option<uplink::Uplink>,
    /// Whether spoofed frames and malformed TX requests were reported.
    reported: [bool; 2],
}

impl Net {
    /// The backends of `infos` (the start info's backend vNIC entries): a
    /// page table for their ring slots, each entry's port with its handler
    /// and unmasked (events sent before now arrive at once), the switch.
    pub fn new(infos: &[Vnic]) -> Net {
        // An L1 for the ring slots: map a frame at the end of the range, unmap it.
        let l1 = memory::populate_one()
            .and_then(|f| paging::map(SLOTS + 511 * 4096, f, Flags::READ_ONLY))
            .and_then(|()| paging::unmap(SLOTS + 511 * 4096));
        if let Err(e) = l1 {
            println!("netback: no page table for the ring slots: {e}");
        }
        for (i, v) in infos.iter().enumerate().take(MAX_START_VNICS) {
            PORTS[i].store(u64::from(v.port.0), Ordering::SeqCst);
            event::set_handler(v.port, on_vnic);
            let _ = event::unmask(v.port);
        }
        let macs: Vec<[u8; 6]> = infos.iter().map(|v| v.mac).collect();
        Net {
            nics: infos
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
                .collect(),
            sw: Switch::new(&macs, QUEUE_LIMIT),
            up: None,
            reported: [false; 2],
        }
    }

    /// Brings the uplink up over `dma` (a part of the DMA region nothing
    /// else uses); without it, frames for the uplink are dropped.
    pub fn start_uplink(&mut self, dev: &guest_sdk::io::Device, dma: guest_sdk::io::DmaRegion) {
        match uplink::Uplink::start(dev, dma) {
            Ok(u) => {
                println!("netback: uplink up");
                self.up = Some(u);
            }
            Err(e) => println!("netback: uplink not started: {e}"),
        }
    }

    /// One pass: vNICs whose frontend signalled connect, every TX ring is
    /// taken into the switch, queued frames go to posted RX buffers and to
    /// the uplink, the uplink's frames come in. Whether anything moved.
    pub fn poll(&mut self) -> bool {
        let mut work = false;
        let seen = SEEN.load(Ordering::SeqCst);
        for (i, n) in self.nics.iter_mut().enumerate() {
            if n.tx.is_none() && n.failed.is_none() && seen & (1 << i) != 0 {
                n.connect(i as u64);
                if n.failed.is_none() {
                    println!("netback: vNIC of domain {} connected", n.info.peer.0);
                }
            }
        }
        for n in self.nics.iter_mut() {
            let (w, notify) = n.transmit(&mut self.sw);
            work |= w;
            if notify {
                let _ = event::send(n.info.port);
            }
        }
        for n in self.nics.iter_mut() {
            if n.receive(&mut self.sw) {
                let _ = event::send(n.info.port);
            }
        }
        match self.up.as_mut() {
            Some(u) => work |= u.poll(&mut self.sw),
            None => while self.sw.pop(UPLINK).is_some() {},
        }
        let spoofed: u64 = (1..self.sw.ports())
            .map(|p| self.sw.counters(p).spoofed)
            .sum();
        if spoofed > 0 && !self.reported[0] {
            self.reported[0] = true;
            println!("netback: dropped {spoofed} spoofed frame(s)");
        }
        let errors: u64 = self.nics.iter().map(|n| n.tx_errors).sum();
        if errors > 0 && !self.reported[1] {
            self.reported[1] = true;
            println!("netback: refused {errors} malformed TX request(s)");
        }
        work
    }

    /// `true` if a TX ring has requests after all, or an RX ring has
    /// buffers for frames the switch holds for it (RING-3): call before
    /// sleeping, after a [`Net::poll`] that found nothing to do. A vNIC
    /// with frames waiting for buffers has its RX ring asked for an event
    /// at the next buffer posted, so that the frames do not wait for the
    /// loop's fallback timer.
    pub fn final_check(&mut self) -> bool {
        let mut again = false;
        for n in self.nics.iter_mut() {
            if let Some(t) = n.tx.as_mut() {
                again |= t.final_check().unwrap_or(false);
            }
            if self.sw.queued(n.port) > 0 {
                if let Some(r) = n.rx.as_mut() {
                    again |= r.final_check().unwrap_or(false);
                }
            }
        }
        again
    }
}
