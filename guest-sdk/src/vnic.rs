//! A virtual NIC's frontend (`docs/network.md`, spec `docs/abi/net.md`):
//! the two rings granted to the network driver domain (NET-1), TX buffers
//! granted read-only and RX buffers granted writable, frames sent and
//! received by the driver's grant copies (NET-2, NET-3).
//!
//! [`Frontend::connect`] sets a vNIC up from its start-info entry
//! ([`crate::StartInfo::vnic`], MEM-3c); [`Frontend::send`] and
//! [`Frontend::recv_with`] move frames without blocking;
//! [`Frontend::wait_until`] sleeps until the driver signals or a deadline.
//! With the `smoltcp` feature, `Device` is smoltcp's `phy::Device` over a
//! frontend and `run` drives an `Interface` from events and `poll_at`.
#![allow(unsafe_code)] // `page` and `shared` only, each with its SAFETY note.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use hypercall_abi::net::{
    rx_ring_ref, tx_ring_ref, RxRequest, RxRing, TxRequest, TxRing, FRAME_MAX, NET_OK,
};

use crate::event::{self, Port};
use crate::grant::{self, GrantRef};
use crate::ring::{FrontEnd, RingPage, SharedPage};
use crate::start::Vnic;
use crate::Error;
use hypercall_abi::ring::RingProtocol;
use hypercall_abi::sched::BlockResult;

/// RX buffers a frontend posts by default.
pub const DEFAULT_RX_BUFFERS: usize = 32;
/// TX buffers (frames in flight) by default.
pub const DEFAULT_TX_BUFFERS: usize = 32;

/// A page the driver domain reaches by grant: this domain's, never freed.
struct Buf {
    page: RingPage,
    gref: GrantRef,
}

/// A zeroed, page-aligned heap page that lives as long as the domain, and
/// its machine frame.
fn page() -> Result<(RingPage, u64), Error> {
    let layout =
        core::alloc::Layout::from_size_align(4096, 4096).map_err(|_| Error::InvalidArgument)?;
    // SAFETY: a non-zero-sized layout. The page is never freed: it is
    // granted to the driver domain for the domain's life.
    let p = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return Err(Error::NoResources);
    }
    let (mfn, _) = crate::paging::translate(p as u64).ok_or(Error::BadAddress)?;
    // SAFETY: `p` is a page-aligned page no Rust object lives in (just
    // allocated, never handed out), never freed; it is reached only through
    // `RingPage`'s atomics and volatile copies, as a page the driver
    // domain also writes (by grant copy, or mapped for the rings).
    let page = unsafe { RingPage::new(p) }.ok_or(Error::BadAddress)?;
    Ok((page, mfn))
}

/// Why [`Frontend::send`] did not send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Every TX buffer is in flight: wait for the driver, try again.
    Busy,
    /// Shorter than an Ethernet header or longer than [`FRAME_MAX`].
    BadLength,
    /// The ring was disconnected (the driver broke the protocol).
    Disconnected,
}

/// Counters of one frontend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames sent (published).
    pub tx: u64,
    /// TX responses other than `NET_OK`.
    pub tx_errors: u64,
    /// Frames received.
    pub rx: u64,
    /// RX responses with an error status.
    pub rx_errors: u64,
}

/// A connected vNIC frontend.
pub struct Frontend {
    info: Vnic,
    tx: FrontEnd<TxRing, RingPage>,
    rx: FrontEnd<RxRing, RingPage>,
    tx_bufs: Vec<Buf>,
    tx_free: Vec<u16>,
    rx_bufs: Vec<Buf>,
    /// Received frames not yet taken: (buffer, length).
    ready: VecDeque<(u16, u16)>,
    stats: Stats,
}

fn no_op(_: Port) {}

impl Frontend {
    /// Connects vNIC `info` (a frontend entry, MEM-3c) with the default
    /// buffer counts.
    pub fn connect(info: Vnic) -> Result<Frontend, Error> {
        Self::connect_with(info, DEFAULT_RX_BUFFERS, DEFAULT_TX_BUFFERS)
    }

    /// Connects vNIC `info` (NET-1): ring pages granted at `2i` and
    /// `2i + 1`, `rx` RX buffers granted writable and posted, `tx` TX
    /// buffers granted read-only, the port unmasked (with a handler that
    /// only wakes [`Self::wait_until`]) and the driver signalled.
    pub fn connect_with(info: Vnic, rx: usize, tx: usize) -> Result<Frontend, Error> {
        let rx = rx.clamp(1, RxRing::SLOTS as usize);
        let tx = tx.clamp(1, 256);
        let peer = info.peer;
        let (tpage, tmfn) = page()?;
        let (rpage, rmfn) = page()?;
        let txr = FrontEnd::init(tpage);
        let rxr = FrontEnd::init(rpage);
        grant::grant_access_at(tmfn, peer, false, GrantRef(tx_ring_ref(info.index)))?;
        grant::grant_access_at(rmfn, peer, false, GrantRef(rx_ring_ref(info.index)))?;
        let mut tx_bufs = Vec::with_capacity(tx);
        for _ in 0..tx {
            let (page, mfn) = page()?;
            tx_bufs.push(Buf {
                page,
                gref: grant::grant_access(mfn, peer, true)?,
            });
        }
        let mut rx_bufs = Vec::with_capacity(rx);
        for _ in 0..rx {
            let (page, mfn) = page()?;
            rx_bufs.push(Buf {
                page,
                gref: grant::grant_access(mfn, peer, false)?,
            });
        }
        let mut f = Frontend {
            info,
            tx: txr,
            rx: rxr,
            tx_free: (0..u16::try_from(tx).unwrap_or(u16::MAX)).rev().collect(),
            tx_bufs,
            rx_bufs,
            ready: VecDeque::new(),
            stats: Stats::default(),
        };
        for i in 0..u16::try_from(rx).unwrap_or(u16::MAX) {
            f.post(i);
        }
        let _ = f.rx.publish();
        event::set_handler(info.port, no_op);
        event::unmask(info.port)?;
        event::send(info.port)?;
        Ok(f)
    }

    /// The vNIC's start-info entry (MAC, address, port).
    pub fn info(&self) -> &Vnic {
        &self.info
    }

    /// Its counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn post(&mut self, i: u16) {
        let Some(b) = self.rx_bufs.get(usize::from(i)) else {
            return;
        };
        let _ = self.rx.push_request(&RxRequest {
            id: i,
            reserved: 0,
            gref: b.gref.0,
        });
    }

    /// Takes every response the driver published: TX buffers come back,
    /// received frames are queued for [`Self::recv_with`].
    fn reap(&mut self) {
        while let Ok(Some(r)) = self.tx.take_response() {
            if r.status != NET_OK {
                self.stats.tx_errors += 1;
            }
            if usize::from(r.id) < self.tx_bufs.len() && !self.tx_free.contains(&r.id) {
                self.tx_free.push(r.id);
            }
        }
        while let Ok(Some(r)) = self.rx.take_response() {
            let i = r.id;
            match u16::try_from(r.status) {
                Ok(len) if len > 0 && usize::from(len) <= FRAME_MAX && r.offset == 0 => {
                    self.ready.push_back((i, len));
                }
                _ => {
                    self.stats.rx_errors += 1;
                    self.post(i);
                    if self.rx.publish().unwrap_or(false) {
                        let _ = event::send(self.info.port);
                    }
                }
            }
        }
    }

    /// Whether a frame is waiting or a TX buffer is free, after looking at
    /// the rings.
    pub fn can_recv(&mut self) -> bool {
        self.reap();
        !self.ready.is_empty()
    }

    /// Frames sent whose TX response has not come back yet.
    pub fn in_flight(&mut self) -> usize {
        self.reap();
        self.tx_bufs.len() - self.tx_free.len()
    }

    /// Whether [`Self::send`] would find a TX buffer.
    pub fn can_send(&mut self) -> bool {
        self.reap();
        !self.tx_free.is_empty()
    }

    /// Sends one frame (copied into a TX buffer; the driver copies it out,
    /// NET-2). One event per batch: only if the driver asked.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), SendError> {
        self.send_with(frame.len(), |b| b.copy_from_slice(frame))
    }

    /// Sends a frame of `len` bytes that `fill` writes.
    pub fn send_with<R>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, SendError> {
        if !(hypercall_abi::net::FRAME_MIN..=FRAME_MAX).contains(&len) {
            return Err(SendError::BadLength);
        }
        if self.tx.is_disconnected() {
            return Err(SendError::Disconnected);
        }
        self.reap();
        let Some(i) = self.tx_free.pop() else {
            return Err(SendError::Busy);
        };
        let mut buf = [0u8; FRAME_MAX];
        let r = fill(&mut buf[..len]);
        let b = &self.tx_bufs[usize::from(i)];
        b.page.write(0, &buf[..len]);
        let req = TxRequest {
            gref: b.gref.0,
            offset: 0,
            flags: 0,
            id: i,
            // At most FRAME_MAX (checked above).
            size: u16::try_from(len).unwrap_or(0),
        };
        if self.tx.push_request(&req).is_err() {
            self.tx_free.push(i);
            return Err(SendError::Disconnected);
        }
        self.stats.tx += 1;
        if self.tx.publish().unwrap_or(false) {
            let _ = event::send(self.info.port);
        }
        Ok(r)
    }

    /// Hands the next received frame to `f` (a private copy), posts its
    /// buffer again; `None` if none is waiting.
    pub fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.reap();
        let (i, len) = self.ready.pop_front()?;
        let mut buf = [0u8; FRAME_MAX];
        let len = usize::from(len);
        self.rx_bufs[usize::from(i)].page.read(0, &mut buf[..len]);
        self.stats.rx += 1;
        self.post(i);
        if self.rx.publish().unwrap_or(false) {
            let _ = event::send(self.info.port);
        }
        Some(f(&buf[..len]))
    }

    /// Sleeps until the driver signals (or any event) or `deadline_ns`,
    /// unless a frame or a TX buffer is already waiting: asks both rings
    /// for an event at their next response first, so none is missed.
    pub fn wait_until(&mut self, deadline_ns: u64) -> BlockResult {
        let more_tx = self.tx.final_check().unwrap_or(false);
        let more_rx = self.rx.final_check().unwrap_or(false);
        if more_tx || more_rx || !self.ready.is_empty() {
            return BlockResult::Event;
        }
        event::wait_until(deadline_ns)
    }
}

#[cfg(feature = "smoltcp")]
pub use stack::{interface, now, run, Device};

#[cfg(feature = "smoltcp")]
mod stack {
    use super::{Frontend, FRAME_MAX};
    use crate::start::Vnic;
    use crate::time;
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
    use smoltcp::time::Instant;
    use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

    /// An smoltcp interface on `dev` configured as the manifest gave the
    /// vNIC `info`: its MAC, its address and prefix, a default route to its
    /// gateway, and a random seed from the time-stamp counter (TCP's initial
    /// sequence numbers).
    pub fn interface(dev: &mut Device, info: &Vnic) -> Interface {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(info.mac)));
        config.random_seed = time::rdtsc();
        let mut iface = Interface::new(config, dev, now());
        let [a, b, c, d] = info.ipv4;
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), info.prefix_len));
        });
        let [g0, g1, g2, g3] = info.gateway;
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(g0, g1, g2, g3));
        iface
    }

    /// smoltcp's clock from the hypervisor's (TIME-0).
    pub fn now() -> Instant {
        Instant::from_micros(i64::try_from(time::now_ns() / 1000).unwrap_or(i64::MAX))
    }

    /// smoltcp's `phy::Device` over a vNIC frontend: Ethernet, MTU 1514,
    /// bursts of the TX buffer count, checksums computed by smoltcp (the
    /// vNIC offers no offload). Any smoltcp application runs on it with
    /// only its device line changed.
    pub struct Device(pub Frontend);

    /// A received frame (already copied out of the RX buffer).
    pub struct RxToken {
        frame: [u8; FRAME_MAX],
        len: usize,
    }

    /// Room to send one frame.
    pub struct TxToken<'a>(&'a mut Frontend);

    impl phy::RxToken for RxToken {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.frame[..self.len])
        }
    }

    impl phy::TxToken for TxToken<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut f = Some(f);
            match self
                .0
                .send_with(len, |b| (f.take().expect("called once"))(b))
            {
                Ok(r) => r,
                // smoltcp asked for a token only when `can_send` held; a
                // frame of a bad length or a dead ring is dropped, as a
                // NIC would.
                Err(_) => {
                    let mut scratch = [0u8; FRAME_MAX];
                    let n = len.min(FRAME_MAX);
                    (f.take().expect("not called"))(&mut scratch[..n])
                }
            }
        }
    }

    impl phy::Device for Device {
        type RxToken<'a> = RxToken;
        type TxToken<'a> = TxToken<'a>;

        fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
            let mut frame = [0u8; FRAME_MAX];
            let len = self.0.recv_with(|b| {
                frame[..b.len()].copy_from_slice(b);
                b.len()
            })?;
            Some((RxToken { frame, len }, TxToken(&mut self.0)))
        }

        fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
            if self.0.can_send() {
                Some(TxToken(&mut self.0))
            } else {
                None
            }
        }

        fn capabilities(&self) -> DeviceCapabilities {
            let mut c = DeviceCapabilities::default();
            c.medium = Medium::Ethernet;
            c.max_transmission_unit = FRAME_MAX;
            c.max_burst_size = Some(self.0.tx_bufs.len());
            c.checksum = ChecksumCapabilities::default();
            c
        }
    }

    /// Runs `iface` until `step` says done (`true`) or `deadline_ns`
    /// passes (`false`): polls, calls `step`, then sleeps until the driver
    /// signals or smoltcp's next timer (`poll_delay`), never spinning.
    pub fn run(
        iface: &mut Interface,
        dev: &mut Device,
        sockets: &mut SocketSet<'_>,
        deadline_ns: u64,
        mut step: impl FnMut(&mut Interface, &mut SocketSet<'_>) -> bool,
    ) -> bool {
        loop {
            iface.poll(now(), dev, sockets);
            if step(iface, sockets) {
                return true;
            }
            let t = time::now_ns();
            if t >= deadline_ns {
                return false;
            }
            let wake = match iface.poll_delay(now(), sockets) {
                Some(d) if d.total_micros() == 0 => continue,
                Some(d) => t.saturating_add(d.total_micros().saturating_mul(1000)),
                None => deadline_ns,
            };
            dev.0.wait_until(wake.min(deadline_ns));
        }
    }
}
