//! Named channels (spec `EVT-7`, `MEM-3a`): the boot pack's channel records
//! turned into connected ports and each domain's start-info channel table.
//!
//! Runs once at boot, after every domain was built and before any runs, so
//! both ends of every channel exist before either end's first instruction:
//! no guest ever waits for a peer to appear (there is no lookup hypercall
//! and nothing to retry). The ports are made by the same [`Channels`] code
//! the event hypercalls use (`EVT-1` then `EVT-2`), so a wired channel is in
//! every way an interdomain channel a guest could have made itself.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use hypercall_abi::layout::{NamedChannel, MAX_NAMED_CHANNELS};
use hypercall_abi::Error;

use crate::bootpack::{ChannelRecord, NAME_LEN};
use crate::event::{Channels, DomId};

/// Why one channel record was not wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// End `dom` was not built (its image or window was refused), so there
    /// is nothing to connect to; the other end's table omits the channel.
    EndMissing {
        /// The missing domain's id.
        dom: DomId,
    },
    /// The port table refused (cannot happen for a checked pack: each end
    /// has at most `MAX_NAMED_CHANNELS` of its `NR_PORTS` ports at boot).
    Ports(Error),
    /// An end's table is full (idem).
    TableFull,
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::EndMissing { dom } => write!(f, "domain {dom} was not built"),
            WireError::Ports(e) => write!(f, "port table refused: {e:?}"),
            WireError::TableFull => write!(f, "an end's channel table is full"),
        }
    }
}

/// What [`wire`] did.
#[derive(Debug, Default)]
pub struct Wiring {
    /// Each domain's start-info channel table, in record order.
    pub tables: BTreeMap<DomId, Vec<NamedChannel>>,
    /// Records not wired: (record index, why).
    pub failed: Vec<(u32, WireError)>,
}

/// The domain id of the domain at `index` in the pack's table (ids follow
/// pack order from 1, as the hypervisor assigns them).
pub fn domain_id(index: u32) -> Option<DomId> {
    DomId::try_from(index.checked_add(1)?).ok()
}

/// Connects the two ends of every record whose domains both exist in
/// `channels`, and builds the table entries: each end gets the channel's
/// name, its own port, and the peer's id and name (`name_of(id)`, the
/// NUL-padded domain name). A record that cannot be wired allocates nothing.
pub fn wire(
    channels: &mut Channels,
    records: impl IntoIterator<Item = ChannelRecord>,
    name_of: impl Fn(DomId) -> [u8; NAME_LEN],
) -> Wiring {
    let mut out = Wiring::default();
    for (i, rec) in records.into_iter().enumerate() {
        // Records come from a table with a u32 count, so the index fits.
        let i = u32::try_from(i).unwrap_or(u32::MAX);
        let (Some(a), Some(b)) = (domain_id(rec.ends[0]), domain_id(rec.ends[1])) else {
            out.failed.push((i, WireError::EndMissing { dom: 0 }));
            continue;
        };
        if let Some(&dom) = [a, b].iter().find(|&&d| !channels.exists(d)) {
            out.failed.push((i, WireError::EndMissing { dom }));
            continue;
        }
        let full = |d: DomId| out.tables.get(&d).map_or(0, Vec::len) >= MAX_NAMED_CHANNELS;
        if full(a) || full(b) {
            out.failed.push((i, WireError::TableFull));
            continue;
        }
        let pa = match channels.alloc_unbound(a, u64::from(b)) {
            Ok(p) => p,
            Err(e) => {
                out.failed.push((i, WireError::Ports(e)));
                continue;
            }
        };
        let pb = match channels.bind_interdomain(b, u64::from(a), u64::from(pa)) {
            Ok(p) => p,
            Err(e) => {
                let _ = channels.close(a, u64::from(pa));
                out.failed.push((i, WireError::Ports(e)));
                continue;
            }
        };
        for (me, port, peer) in [(a, pa, b), (b, pb, a)] {
            out.tables.entry(me).or_default().push(NamedChannel {
                name: rec.name,
                peer_name: name_of(peer),
                port,
                peer_domain: peer,
                reserved: 0,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootpack::{channel_name, name_str};
    use crate::event::PortState;

    fn rec(name: &str, a: u32, b: u32) -> ChannelRecord {
        let mut n = [0u8; 32];
        n[..name.len()].copy_from_slice(name.as_bytes());
        ChannelRecord {
            name: n,
            ends: [a, b],
            reserved: [0; 6],
        }
    }

    fn names(id: DomId) -> [u8; NAME_LEN] {
        let mut n = [0u8; NAME_LEN];
        let s = ["", "ping", "pong", "third"][usize::from(id)];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    #[test]
    fn both_ends_are_connected_and_listed() {
        let mut c = Channels::new();
        for d in 1..=3 {
            c.add_domain(d);
        }
        let w = wire(&mut c, [rec("pingpong", 0, 1), rec("side", 1, 2)], names);
        assert!(w.failed.is_empty());
        let ping = &w.tables[&1];
        assert_eq!(ping.len(), 1, "ping is an end of one channel only");
        assert_eq!(channel_name(&ping[0].name), Some("pingpong"));
        assert_eq!(name_str(&ping[0].peer_name), "pong");
        assert_eq!(ping[0].peer_domain, 2);
        let pong = &w.tables[&2];
        assert_eq!(pong.len(), 2);
        assert_eq!(pong[0].peer_domain, 1);
        assert_eq!(name_str(&pong[1].peer_name), "third");
        // Connected to each other, both ways (EVT-4 works at once).
        let t = c.send(1, ping[0].port.into()).unwrap();
        assert_eq!((t.dom, t.port), (2, pong[0].port));
        let t = c.send(2, pong[0].port.into()).unwrap();
        assert_eq!((t.dom, t.port), (1, ping[0].port));
        // Nobody else can take them over (EVT-2b).
        assert_eq!(
            c.bind_interdomain(3, 1, ping[0].port.into()),
            Err(Error::WrongState)
        );
        assert_eq!(
            c.table(1).unwrap().get(ping[0].port),
            Some(PortState::Interdomain {
                remote: 2,
                remote_port: pong[0].port
            })
        );
    }

    #[test]
    fn a_missing_end_wires_nothing() {
        let mut c = Channels::new();
        c.add_domain(1);
        // Domain 2 was not built.
        let w = wire(&mut c, [rec("x", 0, 1), rec("y", 1, 0)], names);
        assert_eq!(
            w.failed,
            [
                (0, WireError::EndMissing { dom: 2 }),
                (1, WireError::EndMissing { dom: 2 })
            ]
        );
        assert!(w.tables.is_empty());
        assert_eq!(c.table(1).unwrap().in_use(), 0, "no port left behind");
    }

    #[test]
    fn tables_are_bounded() {
        let mut c = Channels::new();
        c.add_domain(1);
        c.add_domain(2);
        let recs: Vec<_> = (0..MAX_NAMED_CHANNELS + 1)
            .map(|i| rec(&alloc::format!("c{i}"), 0, 1))
            .collect();
        let w = wire(&mut c, recs, names);
        assert_eq!(w.tables[&1].len(), MAX_NAMED_CHANNELS);
        assert_eq!(
            w.failed,
            [(MAX_NAMED_CHANNELS as u32, WireError::TableFull)]
        );
        assert_eq!(c.table(1).unwrap().in_use(), MAX_NAMED_CHANNELS);
    }

    #[test]
    fn one_full_end_is_enough_to_refuse() {
        // Domain 1's table is filled by channels to 2; a further channel
        // between 1 and 3 (whose table is empty) is refused too, and
        // allocates nothing at either end.
        let mut c = Channels::new();
        for d in 1..=3 {
            c.add_domain(d);
        }
        let mut recs: Vec<_> = (0..MAX_NAMED_CHANNELS)
            .map(|i| rec(&alloc::format!("c{i}"), 0, 1))
            .collect();
        recs.push(rec("late", 0, 2));
        let w = wire(&mut c, recs, names);
        assert_eq!(
            w.failed,
            [(MAX_NAMED_CHANNELS as u32, WireError::TableFull)]
        );
        assert_eq!(w.tables[&1].len(), MAX_NAMED_CHANNELS);
        assert!(!w.tables.contains_key(&3), "the free end got no entry");
        assert_eq!(c.table(1).unwrap().in_use(), MAX_NAMED_CHANNELS);
        assert_eq!(c.table(3).unwrap().in_use(), 0, "no port left behind");
    }

    #[test]
    fn wire_errors_say_what_failed() {
        use alloc::string::ToString;
        assert_eq!(
            WireError::EndMissing { dom: 4 }.to_string(),
            "domain 4 was not built"
        );
        assert_eq!(
            WireError::Ports(Error::NoResources).to_string(),
            "port table refused: NoResources"
        );
        assert_eq!(
            WireError::TableFull.to_string(),
            "an end's channel table is full"
        );
    }
}
