//! The learning L2 switch of the network driver domain (`docs/network.md`).
//!
//! Port 0 is the uplink (the virtio-net device on QEMU's user network);
//! ports `1..` are the vNICs, each with the one MAC the manifest gave it.
//! Pure: frames in, frames queued per port out, counters; the driver domain
//! moves the bytes (grant copies, the virtio queues).
//!
//! Rules, each with a counter:
//! * a frame shorter than an Ethernet header or longer than
//!   [`FRAME_MAX`] is dropped (`bad_size`);
//! * a frame from a vNIC whose source MAC is not that vNIC's, or any frame
//!   with a multicast source, or a frame from the uplink claiming a vNIC's
//!   MAC, is dropped (`spoofed`): no guest can pose as another;
//! * the uplink's source MACs are learned (a bounded table, oldest entry
//!   replaced); vNIC MACs are static;
//! * broadcast and multicast go to every port but the one they came in
//!   on; a known unicast destination to its port only; an unknown one to
//!   every port but the ingress (flooding);
//! * each port's queue is bounded ([`Switch::new`]): a frame for a full
//!   queue is dropped and counted on that port (`queue_full`), so a
//!   frontend that never takes its frames costs the switch a fixed amount
//!   of memory.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::VecDeque;
use alloc::vec::Vec;

pub use hypercall_abi::net::{FRAME_MAX, FRAME_MIN};

/// A MAC address.
pub type Mac = [u8; 6];

/// The uplink's port number.
pub const UPLINK: usize = 0;

/// Entries the learning table holds.
pub const FDB_SIZE: usize = 64;

/// Per-port counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames accepted from this port.
    pub rx: u64,
    /// Frames queued to this port.
    pub tx: u64,
    /// Frames from this port with a source MAC not its own (or multicast).
    pub spoofed: u64,
    /// Frames from this port too short or too long.
    pub bad_size: u64,
    /// Frames for this port dropped because its queue was full.
    pub queue_full: u64,
}

struct Port {
    mac: Option<Mac>,
    queue: VecDeque<Vec<u8>>,
    counters: Counters,
}

/// What [`Switch::ingress`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Queued to this many ports (0: nowhere to go, or every queue full).
    Queued(usize),
    /// Dropped: a source MAC not the port's.
    Spoofed,
    /// Dropped: too short or too long.
    BadSize,
    /// Dropped: no such port.
    NoPort,
}

/// The switch.
pub struct Switch {
    ports: Vec<Port>,
    fdb: VecDeque<(Mac, usize)>,
    queue_limit: usize,
}

fn is_multicast(mac: &Mac) -> bool {
    mac[0] & 1 != 0
}

impl Switch {
    /// A switch with the uplink (port 0) and one port per MAC in `vnics`
    /// (port `i + 1`), each queue holding at most `queue_limit` frames.
    pub fn new(vnics: &[Mac], queue_limit: usize) -> Switch {
        let mut ports = Vec::with_capacity(vnics.len() + 1);
        ports.push(Port {
            mac: None,
            queue: VecDeque::new(),
            counters: Counters::default(),
        });
        for m in vnics {
            ports.push(Port {
                mac: Some(*m),
                queue: VecDeque::new(),
                counters: Counters::default(),
            });
        }
        Switch {
            ports,
            fdb: VecDeque::new(),
            queue_limit,
        }
    }

    /// Ports, the uplink included.
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// Port `port`'s counters.
    pub fn counters(&self, port: usize) -> Counters {
        self.ports.get(port).map(|p| p.counters).unwrap_or_default()
    }

    /// Frames waiting for port `port`.
    pub fn queued(&self, port: usize) -> usize {
        self.ports.get(port).map_or(0, |p| p.queue.len())
    }

    /// The port a MAC lives on, if known.
    pub fn lookup(&self, mac: &Mac) -> Option<usize> {
        if let Some(i) = self.ports.iter().position(|p| p.mac.as_ref() == Some(mac)) {
            return Some(i);
        }
        self.fdb.iter().find(|(m, _)| m == mac).map(|&(_, p)| p)
    }

    /// Takes the next frame queued for `port`.
    pub fn pop(&mut self, port: usize) -> Option<Vec<u8>> {
        self.ports.get_mut(port)?.queue.pop_front()
    }

    /// Puts a frame back at the head of `port`'s queue (its delivery
    /// failed for want of a buffer; it keeps its place).
    pub fn unpop(&mut self, port: usize, frame: Vec<u8>) {
        if let Some(p) = self.ports.get_mut(port) {
            p.queue.push_front(frame);
        }
    }

    fn learn(&mut self, mac: Mac, port: usize) {
        if let Some(e) = self.fdb.iter_mut().find(|(m, _)| *m == mac) {
            e.1 = port;
            return;
        }
        if self.fdb.len() == FDB_SIZE {
            self.fdb.pop_front();
        }
        self.fdb.push_back((mac, port));
    }

    fn enqueue(&mut self, port: usize, frame: &[u8]) -> bool {
        let limit = self.queue_limit;
        let Some(p) = self.ports.get_mut(port) else {
            return false;
        };
        if p.queue.len() >= limit {
            p.counters.queue_full += 1;
            return false;
        }
        p.queue.push_back(frame.to_vec());
        p.counters.tx += 1;
        true
    }

    /// A frame arrives on port `from`.
    pub fn ingress(&mut self, from: usize, frame: &[u8]) -> Verdict {
        let Some(port) = self.ports.get_mut(from) else {
            return Verdict::NoPort;
        };
        if frame.len() < FRAME_MIN || frame.len() > FRAME_MAX {
            port.counters.bad_size += 1;
            return Verdict::BadSize;
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        src.copy_from_slice(&frame[6..12]);
        let own = port.mac;
        let spoofed = is_multicast(&src)
            || match own {
                Some(m) => src != m,
                None => self.ports.iter().any(|p| p.mac == Some(src)),
            };
        let port = &mut self.ports[from];
        if spoofed {
            port.counters.spoofed += 1;
            return Verdict::Spoofed;
        }
        port.counters.rx += 1;
        if own.is_none() {
            self.learn(src, from);
        }
        let targets: Vec<usize> = match self.lookup(&dst).filter(|_| !is_multicast(&dst)) {
            Some(p) if p == from => Vec::new(),
            Some(p) => alloc::vec![p],
            None => (0..self.ports.len()).filter(|&p| p != from).collect(),
        };
        let mut n = 0;
        for t in targets {
            if self.enqueue(t, frame) {
                n += 1;
            }
        }
        Verdict::Queued(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];
    const GW: Mac = [0x52, 0x55, 10, 0, 2, 2];
    const BCAST: Mac = [0xff; 6];

    fn frame(dst: Mac, src: Mac, len: usize) -> Vec<u8> {
        let mut f = alloc::vec![0u8; len];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12] = 0x08;
        for (i, b) in f[14..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    #[test]
    fn unicast_to_a_known_vnic_goes_there_only() {
        let mut s = Switch::new(&[A, B], 4);
        let f = frame(B, A, 60);
        assert_eq!(s.ingress(1, &f), Verdict::Queued(1));
        assert_eq!(s.pop(2), Some(f));
        assert_eq!((s.queued(0), s.queued(1)), (0, 0));
        assert_eq!(s.counters(1).rx, 1);
        assert_eq!(s.counters(2).tx, 1);
    }

    #[test]
    fn broadcast_reaches_every_other_port() {
        let mut s = Switch::new(&[A, B], 4);
        assert_eq!(s.ingress(1, &frame(BCAST, A, 42)), Verdict::Queued(2));
        assert_eq!((s.queued(0), s.queued(1), s.queued(2)), (1, 0, 1));
        let mcast = [0x01, 0, 0x5e, 0, 0, 1];
        assert_eq!(s.ingress(0, &frame(mcast, GW, 42)), Verdict::Queued(2));
    }

    #[test]
    fn the_uplinks_sources_are_learned_and_unknowns_flood() {
        let mut s = Switch::new(&[A, B], 8);
        // Unknown destination: flooded to the uplink and B.
        assert_eq!(s.ingress(1, &frame(GW, A, 60)), Verdict::Queued(2));
        assert_eq!(s.lookup(&GW), None);
        // The gateway answers through the uplink: learned.
        assert_eq!(s.ingress(0, &frame(A, GW, 60)), Verdict::Queued(1));
        assert_eq!(s.lookup(&GW), Some(UPLINK));
        assert_eq!(s.ingress(1, &frame(GW, A, 60)), Verdict::Queued(1));
        assert_eq!(s.queued(2), 1, "B saw only the first, flooded frame");
        // A frame back to its own port goes nowhere.
        assert_eq!(s.ingress(1, &frame(A, A, 60)), Verdict::Queued(0));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut s = Switch::new(&[A], 1);
        for k in 0..(FDB_SIZE as u8 + 10) {
            s.ingress(0, &frame(A, [2, 9, 9, 9, 9, k], 60));
            let _ = s.pop(1);
        }
        assert_eq!(s.fdb.len(), FDB_SIZE);
        assert_eq!(s.lookup(&[2, 9, 9, 9, 9, 0]), None, "the oldest went");
        assert_eq!(s.lookup(&[2, 9, 9, 9, 9, FDB_SIZE as u8 + 9]), Some(0));
    }

    #[test]
    fn spoofed_sources_never_arrive() {
        let mut s = Switch::new(&[A, B], 4);
        // B claims A's MAC, a made-up one, a multicast one.
        for src in [A, [2, 1, 2, 3, 4, 5], BCAST] {
            assert_eq!(s.ingress(2, &frame(BCAST, src, 60)), Verdict::Spoofed);
        }
        // The uplink claims to be A.
        assert_eq!(s.ingress(0, &frame(B, A, 60)), Verdict::Spoofed);
        assert_eq!((s.queued(0), s.queued(1), s.queued(2)), (0, 0, 0));
        assert_eq!(s.counters(2).spoofed, 3);
        assert_eq!(s.counters(0).spoofed, 1);
        assert_eq!(s.counters(2).rx, 0);
        assert_eq!(s.lookup(&A), Some(1), "A's port unchanged");
    }

    #[test]
    fn sizes_past_the_mtu_or_below_a_header_are_dropped() {
        let mut s = Switch::new(&[A, B], 4);
        assert_eq!(s.ingress(1, &frame(B, A, FRAME_MAX + 1)), Verdict::BadSize);
        assert_eq!(s.ingress(1, &[0u8; 13]), Verdict::BadSize);
        assert_eq!(s.ingress(1, &frame(B, A, FRAME_MAX)), Verdict::Queued(1));
        assert_eq!(s.ingress(1, &frame(B, A, FRAME_MIN)), Verdict::Queued(1));
        assert_eq!(s.counters(1).bad_size, 2);
        assert_eq!(s.queued(2), 2);
        assert_eq!(s.ingress(9, &frame(B, A, 60)), Verdict::NoPort);
    }

    #[test]
    fn a_port_that_never_drains_costs_a_bounded_queue() {
        let mut s = Switch::new(&[A, B], 3);
        for _ in 0..1000 {
            s.ingress(1, &frame(B, A, 1500));
        }
        assert_eq!(s.queued(2), 3);
        assert_eq!(s.counters(2).queue_full, 997);
        assert_eq!(s.counters(2).tx, 3);
        // The other ports are unaffected: the uplink still gets A's frames.
        assert_eq!(s.ingress(1, &frame(GW, A, 60)), Verdict::Queued(1));
        assert_eq!(s.queued(0), 1);
        // A frame put back keeps its place.
        let first = s.pop(2).unwrap();
        s.unpop(2, first.clone());
        assert_eq!(s.pop(2), Some(first));
    }
}
