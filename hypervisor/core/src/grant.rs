//! Grant tables: a domain offers one of its frames to one named domain, and
//! that domain maps it or has the hypervisor copy to or from it. Design:
//! `docs/io.md` ("Grants"); the clauses are `GNT-*` (`docs/abi/grant.md`).
//!
//! Unlike Xen's v1 tables, the table lives here, in hypervisor memory, not in
//! a guest-writable page: there are no in-use flags a guest can race.
//!
//! # How it ties into the frame table ([`crate::mm`])
//!
//! * Granting checks the frame with [`Mm`]: the granter must own it; a
//!   `Special` frame (shared info) is never grantable; a frame in use as a
//!   page table is never granted writable ([`GrantError::TableFrame`]).
//! * Every mapping takes one hypervisor hold on the frame ([`Mm::hold`],
//!   MEM-8) for as long as it exists. A held frame cannot change hands, be
//!   freed or become a page table, so *a frame granted and mapped can never
//!   become a page table*, and a dying granter's frame returns to the free
//!   pool only when its last mapping is gone ([`Mm::assign`] refuses while
//!   held). A frame that became a page table after being granted cannot be
//!   mapped (`hold` refuses tables: [`GrantError::TableFrame`]).
//! * The grantee's page-table entry is installed by the hypervisor
//!   (`Mm::map_foreign`, GNT-3), accounted like any data mapping (a writable
//!   one takes the `Writable` type); `mmu_update` and pins keep refusing
//!   foreign frames, so the entry cannot be copied. Its place is recorded
//!   in the mapping ([`GrantTables::set_entry`]), for `grant_unmap`
//!   (`Mm::unmap_foreign`) and the frame audit ([`GrantTables::entries`],
//!   `mm::audit::audit_full`).
//! * [`GrantTables::holds`] lists one frame per mapping: the hypervisor adds
//!   them to the holds it passes to `mm::audit::audit_holds`;
//!   [`GrantTables::audit`] checks the table's own counts against its
//!   mappings and the frame table.
//!
//! Copies ([`GrantTables::copy_batch`], per-element status like
//! `GNTTABOP_copy`) are in `grant/copy.rs`.
//!
//! Pure logic, bounded ([`MAX_GRANTS_PER_DOMAIN`], [`MAX_MAPPINGS_PER_DOMAIN`],
//! [`MAX_COPY_BATCH`]), never panics on guest input.

use crate::mm::TableType;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::frames::Mfn;
use crate::mm::{DomId, FrameType, Mm, MmError, Owner};
use hypercall_abi::Error;

mod audit;
mod copy;
pub use audit::GrantAuditError;
pub use copy::{CopyOp, CopyPlan, CopyPtr};

/// Grants one domain may have at once (its table's size).
pub const MAX_GRANTS_PER_DOMAIN: usize = 512;
/// Grant mappings one domain may hold at once.
pub const MAX_MAPPINGS_PER_DOMAIN: usize = 1024;
/// Elements in one `grant_copy` batch.
pub const MAX_COPY_BATCH: usize = 64;
/// References below this are used only when asked for by number
/// ([`GrantTables::grant_access_at`]); automatic allocation starts here
/// (`hypercall_abi::grant::WELL_KNOWN_REFS`).
pub const WELL_KNOWN_REFS: usize = hypercall_abi::grant::WELL_KNOWN_REFS as usize;
/// Bytes in a frame: the bound of every copy element.
pub const FRAME_SIZE: usize = 4096;

/// A reference to a grant: an index into its granter's table.
pub type GrantRef = u32;

/// A mapping of a grant, as the grantee names it to unmap it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MapHandle(pub u32);

/// Why a grant operation was refused. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// The domain has no grant table (not registered, or already gone).
    UnknownDomain(DomId),
    /// No live grant with this reference in the granter's table (never
    /// made, or revoked: a stale reference).
    BadRef(GrantRef),
    /// The grant names another domain as grantee.
    WrongDomain,
    /// Writable access to a read-only grant.
    ReadOnly,
    /// The frame is (or is becoming) a page table: never granted writable,
    /// never mapped through a grant, never a copy destination.
    TableFrame(Mfn),
    /// The frame is not the caller's (or not grantable: a shared `Special`
    /// frame, the hypervisor's, or free).
    NotOwner(Mfn),
    /// Revoke refused: the grant is mapped this many times. Unmap first.
    StillMapped(u32),
    /// The granter's table is full ([`MAX_GRANTS_PER_DOMAIN`]).
    TableFull,
    /// The grantee holds [`MAX_MAPPINGS_PER_DOMAIN`] mappings already.
    TooManyMappings,
    /// No mapping with this handle.
    BadHandle(MapHandle),
    /// A copy element with length 0.
    ZeroLength,
    /// A copy element whose `offset + len` leaves the frame.
    OutOfPage,
    /// A copy batch longer than [`MAX_COPY_BATCH`].
    BatchTooLong,
    /// The domain (granter or grantee) is being destroyed.
    Dying(DomId),
    /// A domain granting a frame to itself.
    SelfGrant,
    /// The reference asked for ([`GrantTables::grant_access_at`]) is in use.
    RefInUse(GrantRef),
    /// The frame table refused (e.g. a count at its limit).
    Frame(MmError),
}

impl GrantError {
    /// The hypercall error code the guest receives.
    pub fn abi(self) -> Error {
        match self {
            GrantError::UnknownDomain(_) | GrantError::BadRef(_) | GrantError::BadHandle(_) => {
                Error::NotFound
            }
            GrantError::WrongDomain | GrantError::ReadOnly | GrantError::NotOwner(_) => {
                Error::PermissionDenied
            }
            GrantError::TableFrame(_) => Error::TypeConflict,
            GrantError::StillMapped(_) | GrantError::Dying(_) | GrantError::RefInUse(_) => {
                Error::WrongState
            }
            GrantError::TableFull | GrantError::TooManyMappings => Error::NoResources,
            GrantError::ZeroLength
            | GrantError::OutOfPage
            | GrantError::BatchTooLong
            | GrantError::SelfGrant => Error::InvalidArgument,
            GrantError::Frame(e) => e.abi(),
        }
    }
}

/// One grant, as the granter made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The only domain that may use it.
    pub grantee: DomId,
    /// The granter's frame.
    pub mfn: Mfn,
    /// No writable mapping and no copy into it.
    pub readonly: bool,
    /// Mappings of it that exist now.
    pub maps: u32,
}

/// One mapping a grantee holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Whose grant.
    pub granter: DomId,
    /// Which grant.
    pub gref: GrantRef,
    /// The frame (the grant's).
    pub mfn: Mfn,
    /// Mapped writable.
    pub writable: bool,
    /// The grantee's page-table entry the hypervisor installed for it (L1
    /// frame, index), once installed ([`GrantTables::set_entry`]).
    pub entry: Option<(Mfn, usize)>,
}

#[derive(Clone, Debug, Default)]
struct Domain {
    grants: Vec<Option<Grant>>,
    mappings: Vec<Option<Mapping>>,
    live_mappings: usize,
    dying: bool,
}

/// What [`GrantTables::unmap`] released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmapped {
    /// The frame that was mapped.
    pub mfn: Mfn,
    /// The frame's granter is dying and this was its last reference: the
    /// hypervisor now scrubs it and returns it to the free pool.
    pub free_now: bool,
}

/// What [`GrantTables::destroy`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Teardown {
    /// Mappings the dying domain held, now gone (the hypervisor has already
    /// cleared the page-table entries with the domain's tables).
    pub unmapped: usize,
    /// Its grants revoked.
    pub revoked: usize,
    /// Its frames still mapped by others: not freeable until unmapped
    /// (each later [`Unmapped::free_now`] says when).
    pub still_mapped: Vec<Mfn>,
    /// Other dying domains' frames whose last mapping this teardown
    /// removed: free them now.
    pub free_now: Vec<Mfn>,
}

/// Every domain's grant table and grant mappings.
#[derive(Clone, Debug, Default)]
pub struct GrantTables {
    doms: BTreeMap<DomId, Domain>,
}

/// Whether the frame is, or is on its way to being, a page table.
fn is_table(mm: &Mm, mfn: Mfn) -> Result<bool, GrantError> {
    let f = mm
        .frame(mfn)
        .ok_or(GrantError::Frame(MmError::NoSuchFrame(mfn)))?;
    Ok(f.frame_type().level().is_some() || f.pinned() || f.is_partial() || f.held_by_operation())
}

impl GrantTables {
    /// No domains.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives `dom` an empty table (at domain build).
    pub fn add_domain(&mut self, dom: DomId) {
        self.doms.entry(dom).or_default();
    }

    fn live(&self, dom: DomId) -> Result<&Domain, GrantError> {
        let d = self.doms.get(&dom).ok_or(GrantError::UnknownDomain(dom))?;
        if d.dying {
            return Err(GrantError::Dying(dom));
        }
        Ok(d)
    }

    /// The grant `gref` of `granter`, if live.
    pub fn grant(&self, granter: DomId, gref: GrantRef) -> Option<Grant> {
        self.doms
            .get(&granter)?
            .grants
            .get(usize::try_from(gref).ok()?)
            .copied()
            .flatten()
    }

    /// `grantee`'s mapping `handle`, if it exists.
    pub fn mapping(&self, grantee: DomId, handle: MapHandle) -> Option<Mapping> {
        self.doms
            .get(&grantee)?
            .mappings
            .get(usize::try_from(handle.0).ok()?)
            .copied()
            .flatten()
    }

    /// Live grants in `dom`'s table.
    pub fn grant_count(&self, dom: DomId) -> usize {
        self.doms
            .get(&dom)
            .map_or(0, |d| d.grants.iter().flatten().count())
    }

    /// `granter` offers its frame `mfn` to `grantee`, at the lowest free
    /// reference from [`WELL_KNOWN_REFS`] up.
    pub fn grant_access(
        &mut self,
        mm: &Mm,
        granter: DomId,
        grantee: DomId,
        mfn: Mfn,
        readonly: bool,
    ) -> Result<GrantRef, GrantError> {
        self.grant_access_at(mm, granter, grantee, mfn, readonly, None)
    }

    /// [`GrantTables::grant_access`], at reference `at` if given (it must
    /// be free: [`GrantError::RefInUse`]; in the table:
    /// [`GrantError::BadRef`]). References below [`WELL_KNOWN_REFS`] are
    /// only ever used this way.
    pub fn grant_access_at(
        &mut self,
        mm: &Mm,
        granter: DomId,
        grantee: DomId,
        mfn: Mfn,
        readonly: bool,
        at: Option<GrantRef>,
    ) -> Result<GrantRef, GrantError> {
        let d = self.live(granter)?;
        if grantee == granter {
            return Err(GrantError::SelfGrant);
        }
        // A dying grantee is no grantee (GNT-1b): not found, as once gone.
        self.live(grantee).map_err(|e| match e {
            GrantError::Dying(d) => GrantError::UnknownDomain(d),
            e => e,
        })?;
        let f = mm.frame(mfn).ok_or(GrantError::NotOwner(mfn))?;
        if f.owner() != Owner::Domain(granter) || f.frame_type() == FrameType::Special {
            return Err(GrantError::NotOwner(mfn));
        }
        if !readonly && is_table(mm, mfn)? {
            return Err(GrantError::TableFrame(mfn));
        }
        let free = |i: usize| d.grants.get(i).is_none_or(Option::is_none);
        let slot = match at {
            Some(r) => {
                let i = usize::try_from(r)
                    .ok()
                    .filter(|&i| i < MAX_GRANTS_PER_DOMAIN)
                    .ok_or(GrantError::BadRef(r))?;
                if !free(i) {
                    return Err(GrantError::RefInUse(r));
                }
                i
            }
            None => (WELL_KNOWN_REFS..MAX_GRANTS_PER_DOMAIN)
                .find(|&i| free(i))
                .ok_or(GrantError::TableFull)?,
        };
        let grant = Grant {
            grantee,
            mfn,
            readonly,
            maps: 0,
        };
        let d = self
            .doms
            .get_mut(&granter)
            .ok_or(GrantError::UnknownDomain(granter))?;
        if d.grants.len() <= slot {
            d.grants.resize(slot + 1, None);
        }
        d.grants[slot] = Some(grant);
        // slot < MAX_GRANTS_PER_DOMAIN, which fits a u32.
        Ok(index(slot))
    }

    /// `granter` takes grant `gref` back. Refused while mapped.
    pub fn revoke(&mut self, granter: DomId, gref: GrantRef) -> Result<Grant, GrantError> {
        let g = self.grant(granter, gref).ok_or(GrantError::BadRef(gref))?;
        if g.maps != 0 {
            return Err(GrantError::StillMapped(g.maps));
        }
        let d = self
            .doms
            .get_mut(&granter)
            .ok_or(GrantError::UnknownDomain(granter))?;
        d.grants[gref as usize] = None;
        Ok(g)
    }

    /// Checks that `grantee` may use `granter`'s grant `gref`, writable or
    /// not; the grant.
    fn usable(
        &self,
        mm: &Mm,
        grantee: DomId,
        granter: DomId,
        gref: GrantRef,
        writable: bool,
    ) -> Result<Grant, GrantError> {
        self.live(grantee)?;
        let g = match self.live(granter) {
            Ok(_) => self.grant(granter, gref).ok_or(GrantError::BadRef(gref))?,
            Err(GrantError::Dying(d)) if self.grant(granter, gref).is_some() => {
                return Err(GrantError::Dying(d))
            }
            Err(GrantError::Dying(_)) => return Err(GrantError::BadRef(gref)),
            Err(e) => return Err(e),
        };
        if g.grantee != grantee {
            return Err(GrantError::WrongDomain);
        }
        if writable && g.readonly {
            return Err(GrantError::ReadOnly);
        }
        // The granter may have given the frame back since (memory_release):
        // a grant never reaches a frame its granter does not own.
        if mm.frame(g.mfn).map(|f| f.owner()) != Some(Owner::Domain(granter)) {
            return Err(GrantError::NotOwner(g.mfn));
        }
        if is_table(mm, g.mfn)? {
            return Err(GrantError::TableFrame(g.mfn));
        }
        Ok(g)
    }

    /// Whether `dom`'s mapping `handle` covers an entry (writable or not)
    /// at `mfn`. (The hypervisor installs grant entries itself,
    /// `Mm::map_foreign`; the validator never consults this.)
    pub fn mapping_allows(&self, dom: DomId, handle: MapHandle, mfn: Mfn, writable: bool) -> bool {
        self.mapping(dom, handle)
            .is_some_and(|m| m.mfn == mfn && (m.writable || !writable))
    }

    /// `grantee` maps `granter`'s grant `gref`: takes a hold on the frame
    /// and records the mapping; its handle.
    pub fn map(
        &mut self,
        mm: &mut Mm,
        grantee: DomId,
        granter: DomId,
        gref: GrantRef,
        writable: bool,
    ) -> Result<MapHandle, GrantError> {
        let g = self.usable(mm, grantee, granter, gref, writable)?;
        let me = self.live(grantee)?;
        let slot = match me.mappings.iter().position(Option::is_none) {
            Some(i) => i,
            None if me.mappings.len() < MAX_MAPPINGS_PER_DOMAIN => me.mappings.len(),
            None => return Err(GrantError::TooManyMappings),
        };
        let maps = g
            .maps
            .checked_add(1)
            .ok_or(GrantError::Frame(MmError::CountOverflow(g.mfn)))?;
        // Last fallible step; nothing is changed before it.
        mm.hold(g.mfn, granter).map_err(|e| match e {
            MmError::NotHoldable(p) => GrantError::TableFrame(p),
            e => GrantError::Frame(e),
        })?;
        if let Some(Some(grant)) = self
            .doms
            .get_mut(&granter)
            .and_then(|d| d.grants.get_mut(gref as usize))
        {
            grant.maps = maps;
        }
        let m = Mapping {
            granter,
            gref,
            mfn: g.mfn,
            writable,
            entry: None,
        };
        if let Some(me) = self.doms.get_mut(&grantee) {
            if slot == me.mappings.len() {
                me.mappings.push(Some(m));
            } else {
                me.mappings[slot] = Some(m);
            }
            me.live_mappings += 1;
        }
        Ok(MapHandle(index(slot)))
    }

    /// `grantee` drops its mapping `handle` (the hypervisor has removed the
    /// page-table entry and flushed). Releases the hold.
    pub fn unmap(
        &mut self,
        mm: &mut Mm,
        grantee: DomId,
        handle: MapHandle,
    ) -> Result<Unmapped, GrantError> {
        let m = self
            .mapping(grantee, handle)
            .ok_or(GrantError::BadHandle(handle))?;
        mm.release_hold(m.mfn).map_err(GrantError::Frame)?;
        if let Some(me) = self.doms.get_mut(&grantee) {
            me.mappings[handle.0 as usize] = None;
            me.live_mappings -= 1;
        }
        let mut free_now = false;
        if let Some(g) = self.doms.get_mut(&m.granter) {
            if let Some(Some(grant)) = g.grants.get_mut(m.gref as usize) {
                grant.maps -= 1;
                if g.dying && grant.maps == 0 {
                    g.grants[m.gref as usize] = None;
                    free_now = mm.frame(m.mfn).is_some_and(|f| f.idle());
                }
            }
        }
        self.forget_if_gone(m.granter);
        self.forget_if_gone(grantee);
        Ok(Unmapped {
            mfn: m.mfn,
            free_now,
        })
    }

    /// Records the page-table entry (L1 frame, index) the hypervisor
    /// installed for `grantee`'s mapping `handle`.
    pub fn set_entry(
        &mut self,
        grantee: DomId,
        handle: MapHandle,
        l1: Mfn,
        index: usize,
    ) -> Result<(), GrantError> {
        let m = self
            .doms
            .get_mut(&grantee)
            .and_then(|d| d.mappings.get_mut(usize::try_from(handle.0).ok()?))
            .and_then(Option::as_mut)
            .ok_or(GrantError::BadHandle(handle))?;
        m.entry = Some((l1, index));
        Ok(())
    }

    /// Marks `dom` dying (it was destroyed and no longer runs): nobody may
    /// map or copy its grants from here on, and it may grant and map
    /// nothing. [`GrantTables::destroy`] follows once its page tables are
    /// gone.
    pub fn begin_destroy(&mut self, dom: DomId) {
        if let Some(d) = self.doms.get_mut(&dom) {
            d.dying = true;
        }
        self.forget_if_gone(dom);
    }

    /// Every installed grant-mapping entry: (L1 frame, index, mapped
    /// frame, writable), for the frame audit (`mm::audit::audit_full`).
    pub fn entries(&self) -> impl Iterator<Item = crate::mm::audit::ForeignEntry> + '_ {
        self.doms.values().flat_map(|d| {
            d.mappings.iter().flatten().filter_map(|m| {
                m.entry.map(|(l1, index)| crate::mm::audit::ForeignEntry {
                    table: l1,
                    index,
                    mfn: m.mfn,
                    writable: m.writable,
                })
            })
        })
    }

    /// Whether `dom` has any live grant of frame `mfn`.
    pub fn is_granted(&self, dom: DomId, mfn: Mfn) -> bool {
        self.doms
            .get(&dom)
            .is_some_and(|d| d.grants.iter().flatten().any(|g| g.mfn == mfn))
    }

    /// A dying domain with nothing left is forgotten.
    fn forget_if_gone(&mut self, dom: DomId) {
        if self.doms.get(&dom).is_some_and(|d| {
            d.dying && d.live_mappings == 0 && d.grants.iter().all(Option::is_none)
        }) {
            self.doms.remove(&dom);
        }
    }

    /// Destroys `dom`'s side of every grant: its mappings of others' grants
    /// go (holds released), its grants not mapped are revoked, its grants
    /// still mapped stay until their grantees unmap them (their frames stay
    /// held: not freeable). From here on nobody may map its grants and it
    /// may grant and map nothing.
    pub fn destroy(&mut self, mm: &mut Mm, dom: DomId) -> Teardown {
        let mut t = Teardown::default();
        let Some(d) = self.doms.get_mut(&dom) else {
            return t;
        };
        d.dying = true;
        let handles: Vec<MapHandle> = d
            .mappings
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_some())
            .map(|(i, _)| MapHandle(index(i)))
            .collect();
        for h in handles {
            // Cannot fail: the mapping exists and its hold was taken.
            if let Ok(u) = self.unmap(mm, dom, h) {
                t.unmapped += 1;
                if u.free_now {
                    t.free_now.push(u.mfn);
                }
            }
        }
        if let Some(d) = self.doms.get_mut(&dom) {
            for slot in d.grants.iter_mut() {
                match slot {
                    Some(g) if g.maps == 0 => {
                        *slot = None;
                        t.revoked += 1;
                    }
                    Some(g) => t.still_mapped.push(g.mfn),
                    None => {}
                }
            }
        }
        self.forget_if_gone(dom);
        t
    }
}

/// A table slot as the 32-bit reference or handle the ABI carries. The
/// tables are bounded far below `u32::MAX` (`MAX_GRANTS_PER_DOMAIN`,
/// `MAX_MAPPINGS_PER_DOMAIN`); a slot beyond would map to `u32::MAX`, which
/// names nothing.
fn index(slot: usize) -> u32 {
    u32::try_from(slot).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
