//! Event-channel port tables (spec `docs/abi/events.md`, EVT-0..6).
//!
//! This is the state machine of ports across all domains: which port is
//! free, offered, connected or bound to a virtual interrupt. The pending and
//! mask bits live in each domain's shared-info page and are handled by the
//! hypervisor; this module decides *whom* an operation affects.

use alloc::vec::Vec;
use hypercall_abi::event::Virq;
use hypercall_abi::layout::NR_PORTS;
use hypercall_abi::Error;

/// A domain id.
pub type DomId = u16;
/// The most domains a boot can have: ids `1..=MAX_DOMAINS`, all below
/// `DOMID_SELF` (0x7FF0) and the values reserved above it, which a real
/// domain's id must never alias.
// A constant of 0x7FEF: it fits every `usize` (checked below), so the
// cast cannot truncate.
#[allow(clippy::cast_possible_truncation)]
pub const MAX_DOMAINS: usize = (hypercall_abi::event::DOMID_SELF - 1) as usize;
const _: () = assert!(MAX_DOMAINS as u64 == hypercall_abi::event::DOMID_SELF - 1);

/// The id of the boot pack's domain at `index` (from 0): `index + 1`, or
/// `None` past [`MAX_DOMAINS`] (that domain is refused).
pub fn boot_domain_id(index: usize) -> Option<DomId> {
    if index >= MAX_DOMAINS {
        return None;
    }
    DomId::try_from(index + 1).ok()
}

/// A port number, `1..NR_PORTS`.
pub type Port = u32;

/// The state of one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Not allocated.
    Free,
    /// Allocated and offered to `remote`, which may bind it.
    Unbound {
        /// The only domain that may bind it.
        remote: DomId,
    },
    /// Connected to `remote_port` of `remote`.
    Interdomain {
        /// The peer domain.
        remote: DomId,
        /// The peer's port.
        remote_port: Port,
    },
    /// Bound to a virtual interrupt.
    Virq(Virq),
    /// Bound by the hypervisor, at build, to the interrupt of a delegated
    /// device (its IOAPIC input; IO-2). Sending on it is `wrong_state`;
    /// closing it stops the device's events (the line stays masked).
    Pirq(u32),
}

/// One domain's ports: `NR_PORTS` of them, of which only the first
/// `ports.len()` are stored (the rest are free). The table starts empty and
/// grows in steps (16 entries, then doubling) when every stored port is in
/// use, so a domain that never binds a port costs nothing here (issue 13).
///
/// A domain id with no domain (never added, or removed) has a table too,
/// not live and with no port stored ([`PortTable::default`]): the one
/// invariant [`Channels::send`] rests on, so that it needs no test of
/// whether the caller's table is there (it finds every port free, as it
/// would find no table: `not_found` either way).
#[derive(Debug, Clone)]
pub struct PortTable {
    ports: Vec<PortState>,
    virqs: [Option<Port>; Virq::COUNT],
    /// Ports in use (at most `NR_PORTS`): 32 bits, so that the table
    /// with `live` is no larger than an `Option` of it was (40 bytes: one
    /// `lea` to index the tables).
    in_use: u32,
    /// Whether a domain has this table (`Channels::add_domain`, until
    /// `Channels::remove_domain`). A table that is not live stores no
    /// port.
    live: bool,
}

impl Default for PortTable {
    /// The table of a domain id with no domain: not live, no port stored.
    fn default() -> Self {
        PortTable {
            ports: Vec::new(),
            virqs: [None; Virq::COUNT],
            in_use: 0,
            live: false,
        }
    }
}

impl PortTable {
    /// The state of `port` (`None` when out of range or port 0).
    #[inline]
    pub fn get(&self, port: Port) -> Option<PortState> {
        if port == 0 || port as usize >= NR_PORTS {
            return None;
        }
        Some(
            self.ports
                .get(port as usize)
                .copied()
                .unwrap_or(PortState::Free),
        )
    }

    /// Entries stored (ports beyond are free and take no memory).
    pub fn stored(&self) -> usize {
        self.ports.len()
    }

    /// The port bound to `virq`, if any.
    pub fn virq_port(&self, virq: Virq) -> Option<Port> {
        self.virqs[virq as usize]
    }

    /// Ports in use.
    pub fn in_use(&self) -> usize {
        self.in_use as usize
    }

    fn alloc(&mut self, state: PortState) -> Result<Port, Error> {
        let p = match self
            .ports
            .iter()
            .skip(1)
            .position(|s| *s == PortState::Free)
        {
            Some(i) => i + 1,
            None => self.grow()?,
        };
        let port = Port::try_from(p).map_err(|_| Error::NoResources)?;
        self.ports[p] = state;
        self.in_use += 1;
        Ok(port)
    }

    /// Makes room for more ports (every stored one is in use); returns the
    /// first new one. `NoResources` at `NR_PORTS` (LIM-3), and when the
    /// hypervisor's heap cannot hold the larger table (nothing changes).
    fn grow(&mut self) -> Result<usize, Error> {
        let len = self.ports.len();
        if len >= NR_PORTS {
            return Err(Error::NoResources);
        }
        let new_len = (len * 2).clamp(16, NR_PORTS);
        self.ports
            .try_reserve_exact(new_len - len)
            .map_err(|_| Error::NoResources)?;
        self.ports.resize(new_len, PortState::Free);
        Ok(len.max(1))
    }

    fn set(&mut self, port: Port, state: PortState) {
        let Some(&old) = self.ports.get(port as usize) else {
            // Not stored: free. Only allocated ports change to another
            // state, and `alloc` stores them first.
            debug_assert!(state == PortState::Free);
            return;
        };
        if let PortState::Virq(v) = old {
            self.virqs[v as usize] = None;
        }
        match (old == PortState::Free, state == PortState::Free) {
            (true, false) => self.in_use += 1,
            (false, true) => self.in_use -= 1,
            _ => {}
        }
        self.ports[port as usize] = state;
    }
}

/// Every domain's port table, indexed by domain id (a table that is not
/// live where no domain has that id: see [`PortTable`]).
#[derive(Debug, Default)]
pub struct Channels {
    tables: Vec<PortTable>,
}

/// The target of an event: raise `port` in domain `dom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The domain to notify.
    pub dom: DomId,
    /// Its port.
    pub port: Port,
}

impl Channels {
    /// No domains yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes room for the tables of domain ids below `n` (so adding them
    /// later does not reallocate).
    pub fn reserve(&mut self, n: usize) -> Result<(), alloc::collections::TryReserveError> {
        self.tables
            .try_reserve_exact(n.saturating_sub(self.tables.len()))
    }

    /// Gives domain `dom` an empty port table.
    pub fn add_domain(&mut self, dom: DomId) {
        let i = usize::from(dom);
        if self.tables.len() <= i {
            self.tables.resize_with(i + 1, PortTable::default);
        }
        self.tables[i] = PortTable {
            live: true,
            ..PortTable::default()
        };
    }

    /// Whether `dom` exists.
    pub fn exists(&self, dom: DomId) -> bool {
        self.table(dom).is_some()
    }

    /// The port table of `dom`.
    #[inline]
    pub fn table(&self, dom: DomId) -> Option<&PortTable> {
        self.tables.get(usize::from(dom)).filter(|t| t.live)
    }

    fn table_mut(&mut self, dom: DomId) -> Option<&mut PortTable> {
        self.tables.get_mut(usize::from(dom)).filter(|t| t.live)
    }

    fn resolve(caller: DomId, dom: u64) -> Option<DomId> {
        if dom == hypercall_abi::event::DOMID_SELF {
            Some(caller)
        } else {
            DomId::try_from(dom).ok()
        }
    }

    /// EVT-1: a new port of `caller` offered to `remote`.
    pub fn alloc_unbound(&mut self, caller: DomId, remote: u64) -> Result<Port, Error> {
        let remote = Self::resolve(caller, remote)
            .filter(|d| self.exists(*d))
            .ok_or(Error::NotFound)?;
        self.table_mut(caller)
            .ok_or(Error::NotFound)?
            .alloc(PortState::Unbound { remote })
    }

    /// EVT-2: connects a new port of `caller` to `remote_port` of `remote`.
    pub fn bind_interdomain(
        &mut self,
        caller: DomId,
        remote: u64,
        remote_port: u64,
    ) -> Result<Port, Error> {
        let remote = Self::resolve(caller, remote)
            .filter(|d| self.exists(*d))
            .ok_or(Error::NotFound)?;
        let rport = Port::try_from(remote_port).map_err(|_| Error::NotFound)?;
        match self.table(remote).and_then(|t| t.get(rport)) {
            None => return Err(Error::NotFound),
            Some(PortState::Unbound { remote: offered }) if offered == caller => {}
            Some(_) => return Err(Error::WrongState),
        }
        let local =
            self.table_mut(caller)
                .ok_or(Error::NotFound)?
                .alloc(PortState::Interdomain {
                    remote,
                    remote_port: rport,
                })?;
        if let Some(t) = self.table_mut(remote) {
            t.set(
                rport,
                PortState::Interdomain {
                    remote: caller,
                    remote_port: local,
                },
            );
        }
        Ok(local)
    }

    /// EVT-3: binds a new port of `caller` to `virq`.
    pub fn bind_virq(&mut self, caller: DomId, virq: u64) -> Result<Port, Error> {
        let virq = Virq::from_arg(virq).ok_or(Error::InvalidArgument)?;
        let t = self.table_mut(caller).ok_or(Error::NotFound)?;
        if t.virqs[virq as usize].is_some() {
            return Err(Error::WrongState);
        }
        let p = t.alloc(PortState::Virq(virq))?;
        t.virqs[virq as usize] = Some(p);
        Ok(p)
    }

    /// IO-2: a new port of `dom` bound to IOAPIC input `irq` (the
    /// hypervisor's, at build: guests have no hypercall for it).
    pub fn bind_pirq(&mut self, dom: DomId, irq: u32) -> Result<Port, Error> {
        self.table_mut(dom)
            .ok_or(Error::NotFound)?
            .alloc(PortState::Pirq(irq))
    }

    /// Where an interrupt of IOAPIC input `irq` goes: `port` of `dom`, if
    /// that port is still bound to it (the domain may have closed it, and
    /// the number been reused).
    pub fn pirq_target(&self, dom: DomId, port: Port, irq: u32) -> Option<Target> {
        (self.table(dom)?.get(port)? == PortState::Pirq(irq)).then_some(Target { dom, port })
    }

    /// EVT-4: whom `caller` notifies by sending on `port`. Inline: it is
    /// the look-up of every `event_send`'s fast handler.
    #[inline]
    pub fn send(&self, caller: DomId, port: u64) -> Result<Target, Error> {
        let port = Port::try_from(port).map_err(|_| Error::NotFound)?;
        // Any table, live or not: one that is not live stores no port, so
        // every port of it is free, `not_found` as for no table at all
        // (`PortTable`'s invariant); no test of `live` on every send.
        match self
            .tables
            .get(usize::from(caller))
            .and_then(|t| t.get(port))
        {
            None | Some(PortState::Free) => Err(Error::NotFound),
            Some(PortState::Interdomain {
                remote,
                remote_port,
            }) => Ok(Target {
                dom: remote,
                port: remote_port,
            }),
            Some(_) => Err(Error::WrongState),
        }
    }

    /// EVT-5: closes `port` of `caller`. Returns the peer port that went
    /// back to unbound, if any.
    pub fn close(&mut self, caller: DomId, port: u64) -> Result<Option<Target>, Error> {
        let port = Port::try_from(port).map_err(|_| Error::NotFound)?;
        let state = match self.table(caller).and_then(|t| t.get(port)) {
            None | Some(PortState::Free) => return Err(Error::NotFound),
            Some(s) => s,
        };
        let mut peer = None;
        if let PortState::Interdomain {
            remote,
            remote_port,
        } = state
        {
            if let Some(t) = self.table_mut(remote) {
                if t.get(remote_port)
                    == Some(PortState::Interdomain {
                        remote: caller,
                        remote_port: port,
                    })
                {
                    t.set(remote_port, PortState::Unbound { remote: caller });
                    peer = Some(Target {
                        dom: remote,
                        port: remote_port,
                    });
                }
            }
        }
        if let Some(t) = self.table_mut(caller) {
            t.set(port, PortState::Free);
        }
        Ok(peer)
    }

    /// The port of `dom` bound to `virq`, if any.
    pub fn virq_target(&self, dom: DomId, virq: Virq) -> Option<Target> {
        Some(Target {
            dom,
            port: self.table(dom)?.virq_port(virq)?,
        })
    }

    /// Closes every port of `dom` and forgets it. Peers' ports connected to
    /// it become unbound (offered to the dead domain, which never returns:
    /// ids are not reused), so their owners see `wrong_state` on send and
    /// their port numbers are not reused behind their backs.
    pub fn remove_domain(&mut self, dom: DomId) {
        for p in 1..NR_PORTS as u64 {
            let _ = self.close(dom, p);
        }
        if let Some(slot) = self.tables.get_mut(usize::from(dom)) {
            // Not live, no port stored (`PortTable`'s invariant; the
            // ports' memory goes too).
            *slot = PortTable::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercall_abi::event::DOMID_SELF;

    fn two() -> Channels {
        let mut c = Channels::new();
        c.add_domain(1);
        c.add_domain(2);
        c
    }

    /// Issue 13: domain ids count from 1 and stop below DOMID_SELF; they
    /// never wrap (a `u16` cast of 65,536 would give 0, of 0x7FF0 + 65,536
    /// DOMID_SELF).
    #[test]
    fn boot_domain_ids_stop_below_the_reserved_values() {
        assert_eq!(boot_domain_id(0), Some(1));
        assert_eq!(boot_domain_id(MAX_DOMAINS - 1), Some(0x7FEF));
        assert_eq!(MAX_DOMAINS, 0x7FEF);
        for index in [MAX_DOMAINS, 0x7FEF + 1, 0xFFFF, 0x1_7FEF, usize::MAX] {
            assert_eq!(boot_domain_id(index), None, "{index:#x}");
        }
        assert!((0..MAX_DOMAINS)
            .all(|i| boot_domain_id(i).is_some_and(|id| u64::from(id) < DOMID_SELF && id != 0)));
    }

    /// Issue 13: a new domain's port table stores nothing; it grows as
    /// ports are taken, to `NR_PORTS` entries at most, and the limit
    /// (LIM-3) is the same as with an eager table.
    #[test]
    fn port_table_grows_on_demand_to_the_limit() {
        let mut c = two();
        assert_eq!(c.table(1).unwrap().stored(), 0);
        assert_eq!(c.table(1).unwrap().get(1), Some(PortState::Free));
        assert_eq!(c.table(1).unwrap().get(NR_PORTS as Port), None);
        assert_eq!(c.alloc_unbound(1, 2), Ok(1));
        assert_eq!(c.table(1).unwrap().stored(), 16);
        for want in 2..NR_PORTS as Port {
            assert_eq!(c.alloc_unbound(1, 2), Ok(want));
        }
        assert_eq!(c.table(1).unwrap().stored(), NR_PORTS);
        assert_eq!(c.alloc_unbound(1, 2), Err(Error::NoResources));
        assert_eq!(c.table(1).unwrap().in_use(), NR_PORTS - 1);
        // Closing one makes room for exactly one.
        assert_eq!(c.close(1, 700), Ok(None));
        assert_eq!(c.alloc_unbound(1, 2), Ok(700));
        assert_eq!(c.alloc_unbound(1, 2), Err(Error::NoResources));
        // The other domain's table never grew.
        assert_eq!(c.table(2).unwrap().stored(), 0);
    }

    #[test]
    fn pirq_ports_only_take_interrupts_while_bound() {
        let mut c = two();
        let p = c.bind_pirq(1, 12).unwrap();
        assert_eq!(c.table(1).unwrap().get(p), Some(PortState::Pirq(12)));
        assert_eq!(c.pirq_target(1, p, 12), Some(Target { dom: 1, port: p }));
        assert_eq!(c.pirq_target(1, p, 11), None);
        assert_eq!(c.pirq_target(2, p, 12), None);
        assert_eq!(c.send(1, u64::from(p)), Err(Error::WrongState));
        assert_eq!(c.close(1, u64::from(p)), Ok(None));
        assert_eq!(c.pirq_target(1, p, 12), None);
        // The number reused for something else never receives the interrupt.
        let q = c.alloc_unbound(1, 2).unwrap();
        assert_eq!(q, p);
        assert_eq!(c.pirq_target(1, p, 12), None);
        assert_eq!(c.bind_pirq(9, 12), Err(Error::NotFound));
    }

    #[test]
    fn connect_send_close() {
        let mut c = two();
        let p1 = c.alloc_unbound(1, 2).unwrap();
        assert_eq!(p1, 1, "lowest free port, never 0");
        assert_eq!(
            c.send(1, p1.into()),
            Err(Error::WrongState),
            "unbound: EVT-4b"
        );
        let p2 = c.bind_interdomain(2, 1, p1.into()).unwrap();
        assert_eq!(c.send(1, p1.into()), Ok(Target { dom: 2, port: p2 }));
        assert_eq!(c.send(2, p2.into()), Ok(Target { dom: 1, port: p1 }));
        assert_eq!(c.close(2, p2.into()), Ok(Some(Target { dom: 1, port: p1 })));
        assert_eq!(
            c.table(1).unwrap().get(p1),
            Some(PortState::Unbound { remote: 2 }),
            "EVT-5"
        );
        assert_eq!(c.send(1, p1.into()), Err(Error::WrongState));
        assert_eq!(c.send(2, p2.into()), Err(Error::NotFound));
    }

    /// LIM-3: `in_use` counts every kind of port, up and down (killed the
    /// cargo-mutants misses in `PortTable::set`).
    #[test]
    fn in_use_follows_allocation_and_close() {
        let mut c = two();
        let in_use = |c: &Channels, d| c.table(d).unwrap().in_use();
        let a = c.alloc_unbound(1, 2).unwrap();
        let v = c.bind_virq(1, 0).unwrap();
        assert_eq!(in_use(&c, 1), 2);
        let b = c.bind_interdomain(2, 1, a.into()).unwrap();
        assert_eq!((in_use(&c, 1), in_use(&c, 2)), (2, 1));
        c.close(1, v.into()).unwrap();
        assert_eq!(in_use(&c, 1), 1);
        // Closing one end leaves the other allocated (offered back).
        c.close(2, b.into()).unwrap();
        assert_eq!((in_use(&c, 1), in_use(&c, 2)), (1, 0));
        c.close(1, a.into()).unwrap();
        assert_eq!(in_use(&c, 1), 0);
    }

    #[test]
    fn only_the_offered_domain_may_bind() {
        let mut c = two();
        c.add_domain(3);
        let p = c.alloc_unbound(1, 2).unwrap();
        assert_eq!(
            c.bind_interdomain(3, 1, p.into()),
            Err(Error::WrongState),
            "EVT-2b"
        );
        assert_eq!(
            c.table(3).unwrap().in_use(),
            0,
            "nothing allocated on failure"
        );
        assert_eq!(c.bind_interdomain(2, 1, 0), Err(Error::NotFound));
        assert_eq!(
            c.bind_interdomain(2, 1, NR_PORTS as u64),
            Err(Error::NotFound)
        );
        assert_eq!(c.bind_interdomain(2, 1, u64::MAX), Err(Error::NotFound));
        assert_eq!(c.bind_interdomain(2, 9, 1), Err(Error::NotFound));
        assert_eq!(c.alloc_unbound(1, 9), Err(Error::NotFound), "EVT-1a");
    }

    #[test]
    fn loopback_to_self() {
        let mut c = two();
        let a = c.alloc_unbound(1, DOMID_SELF).unwrap();
        let b = c.bind_interdomain(1, DOMID_SELF, a.into()).unwrap();
        assert_eq!(c.send(1, a.into()), Ok(Target { dom: 1, port: b }));
    }

    #[test]
    fn virq_binding_is_unique() {
        let mut c = two();
        let p = c.bind_virq(1, 0).unwrap();
        assert_eq!(c.bind_virq(1, 0), Err(Error::WrongState), "EVT-3b");
        assert_eq!(c.bind_virq(1, 7), Err(Error::InvalidArgument), "EVT-3a");
        assert_eq!(
            c.virq_target(1, Virq::Timer),
            Some(Target { dom: 1, port: p })
        );
        assert_eq!(c.send(1, p.into()), Err(Error::WrongState));
        c.close(1, p.into()).unwrap();
        assert_eq!(c.virq_target(1, Virq::Timer), None);
        assert!(c.bind_virq(1, 0).is_ok(), "rebindable after close");
    }

    #[test]
    fn table_fills_up() {
        let mut c = two();
        for _ in 1..NR_PORTS {
            c.alloc_unbound(1, 2).unwrap();
        }
        assert_eq!(c.alloc_unbound(1, 2), Err(Error::NoResources), "EVT-1b");
        assert_eq!(c.bind_virq(1, 0), Err(Error::NoResources), "EVT-3c");
    }

    #[test]
    fn removing_a_domain_unbinds_its_peers() {
        let mut c = two();
        let p1 = c.alloc_unbound(1, 2).unwrap();
        let p2 = c.bind_interdomain(2, 1, p1.into()).unwrap();
        let offered = c.alloc_unbound(1, 2).unwrap();
        c.remove_domain(2);
        assert!(!c.exists(2));
        assert_eq!(
            c.table(1).unwrap().get(p1),
            Some(PortState::Unbound { remote: 2 })
        );
        assert_eq!(
            c.table(1).unwrap().get(offered),
            Some(PortState::Unbound { remote: 2 })
        );
        assert_eq!(c.send(1, p1.into()), Err(Error::WrongState));
        assert_eq!(
            c.send(2, p2.into()),
            Err(Error::NotFound),
            "the dead domain has no ports"
        );
    }

    /// `send` does not test whether the caller's table is live: it rests
    /// on every table that is not live storing no port (`PortTable`),
    /// which `remove_domain` and `add_domain`'s padding must keep.
    #[test]
    fn tables_that_are_not_live_store_no_ports() {
        let mut c = two();
        let p1 = c.alloc_unbound(1, 2).unwrap();
        let p2 = c.bind_interdomain(2, 1, p1.into()).unwrap();
        let _ = c.bind_virq(2, 0).unwrap();
        c.add_domain(6);
        assert!(c.tables[2].stored() > 0);
        c.remove_domain(2);
        for (id, t) in c.tables.iter().enumerate() {
            assert!(t.live || (t.stored() == 0 && t.in_use() == 0), "table {id}");
        }
        assert!(!c.exists(3) && c.table(3).is_none());
        for (dom, port) in [(2, p2), (3, 1), (5, 1), (7, 1), (DomId::MAX, 1)] {
            assert_eq!(c.send(dom, port.into()), Err(Error::NotFound), "{dom}");
        }
        assert_eq!(c.alloc_unbound(2, 1), Err(Error::NotFound));
        assert_eq!(c.bind_virq(3, 0), Err(Error::NotFound));
    }
}
