//! Grant mappings (GNT-3, GNT-4): the one way a frame of another domain
//! enters a guest's page table. Only the hypervisor installs such an entry,
//! for a grant it has checked and holds (`Mm::hold`); `mmu_update`, the
//! fast path and pins refuse a foreign frame as always (MMU-7), so a
//! grantee cannot copy the entry anywhere else.
//!
//! The entry is accounted like any data mapping (a total reference, and a
//! `Writable` type reference when writable), so whatever drops it later (a
//! guest overwriting it, an unpin, the grantee's teardown) releases exactly
//! what was taken here.

use super::super::frame::{DomId, FrameType, Owner};
use super::super::pte::{Level, NX, PRESENT, USER, WRITABLE};
use super::super::{MmError, PhysMem};
use super::{Mm, GUEST_VA_END};
use crate::frames::Mfn;
use crate::mm::TableType;

impl Mm {
    /// Installs the leaf entry mapping `mfn` (a frame of another domain,
    /// granted to `dom` and held for this mapping) at `va` in `dom`'s tree
    /// rooted at `root` (an L4 of `dom`'s in use): the walk must reach an
    /// L1 through L3 and L2 tables, and the entry must not be present
    /// ([`MmError::EntryInUse`]). Writable takes the `Writable` type (a
    /// table cannot: `TypeConflict`). The entry is user, no-execute.
    /// Returns the entry's place (L1 frame, index). Nothing changes on a
    /// refusal.
    #[allow(clippy::too_many_arguments)]
    pub fn map_foreign<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        root: Mfn,
        va: u64,
        mfn: Mfn,
        writable: bool,
    ) -> Result<(Mfn, usize), MmError> {
        if va >= GUEST_VA_END {
            return Err(MmError::VaOutOfRange);
        }
        if va & 0xfff != 0 {
            return Err(MmError::MisalignedVa);
        }
        let f = self.info(root)?;
        if f.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner(root));
        }
        if f.table_level() != Some(Level::L4) {
            return Err(MmError::TypeConflict {
                mfn: root,
                has: f.ty,
                wants: FrameType::L4,
            });
        }
        let l1 = self.walk_to_l1(mem, dom, root, va)?;
        let index = Level::L1.index_of(va);
        if mem.read_entry(l1, index) & PRESENT != 0 {
            return Err(MmError::EntryInUse);
        }
        let value = (mfn << 12) | PRESENT | USER | NX | if writable { WRITABLE } else { 0 };
        // The syntactic rules (MMU-5, MMU-8) hold for every entry.
        let t = self
            .rules
            .check(Level::L1, value)?
            .ok_or(MmError::NotMapped)?;
        let f = self.info(t.mfn)?;
        if !matches!(f.owner, Owner::Domain(o) if o != dom) {
            // Not a grant: the caller's own frames go through mmu_update.
            return Err(MmError::NotOwner(mfn));
        }
        if f.total_count == u32::MAX {
            return Err(MmError::CountOverflow(mfn));
        }
        if writable {
            match f.ty {
                FrameType::Writable => {
                    let count = f
                        .type_count
                        .checked_add(1)
                        .ok_or(MmError::CountOverflow(mfn))?;
                    self.info_mut(mfn)?.type_count = count;
                }
                FrameType::None => self.retype(mfn, FrameType::Writable)?,
                has => {
                    return Err(MmError::TypeConflict {
                        mfn,
                        has,
                        wants: FrameType::Writable,
                    })
                }
            }
        } else if f.ty.level().is_some() || f.is_partial() {
            return Err(MmError::TypeConflict {
                mfn,
                has: f.ty,
                wants: FrameType::None,
            });
        }
        self.get_total(mfn)?;
        mem.write_entry(l1, index, value);
        Ok((l1, index))
    }

    /// Removes a grant mapping's entry: clears entry `index` of `l1` if
    /// `l1` is still one of `dom`'s L1 tables in use and the entry still
    /// maps `mfn` (releasing its references); otherwise leaves everything
    /// as it is (the guest replaced the entry, or the table is no longer in
    /// use, and with it went the references). Returns whether it cleared
    /// the entry. Refused ([`MmError::Busy`]) while the table is half way
    /// through a pin or unpin. The caller flushes the TLB.
    pub fn unmap_foreign<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        l1: Mfn,
        index: usize,
        mfn: Mfn,
    ) -> Result<bool, MmError> {
        let f = self.info(l1)?;
        if f.owner != Owner::Domain(dom) || f.table_level() != Some(Level::L1) {
            return Ok(false);
        }
        if f.is_partial() {
            return Err(MmError::Busy(l1));
        }
        if index >= Level::L1.guest_slots() {
            return Ok(false);
        }
        let old = mem.read_entry(l1, index);
        match self.rules.target_of(old) {
            Some(t) if t.mfn == mfn => {
                mem.write_entry(l1, index, 0);
                self.put_data(t);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
