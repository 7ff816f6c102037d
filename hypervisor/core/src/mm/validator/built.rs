//! Initial page tables typed and counted as the hypervisor builds them
//! (issue 13): a new domain's tree is not validated a second time.
//!
//! Pinning a tree the hypervisor has just written reads every entry of
//! every table (512 each, nearly all empty): 57,000 of the 89,000
//! instructions an idle guest's build took. Instead the hypervisor starts
//! with an empty pinned root ([`Mm::build_root`]) and sets each entry with
//! [`Mm::build_entry`], which checks the value with the same rules and
//! takes the same references the validator would (it is
//! [`Mm::validate_one`]) and writes it. A table an entry links must be
//! *fresh*: a frame of the domain with no type and nothing in its guest
//! slots (the hypervisor's frames come zeroed, MEM-2a), so it is valid as it
//! stands and nothing below it needs reading.
//!
//! Why the result equals a full validation: [`Mm::build_root`] is exactly
//! a pin of an empty L4, and [`Mm::build_entry`] exactly an `mmu_update`
//! of an empty entry of a table in use whose new value links only empty
//! tables: each step is one the validator already makes, applied to a state
//! it already keeps, with only the reads of empty entries left out. The
//! host tests (`mm::tests::built`) and the hypervisor's
//! `testopt=verify-build` check it: after the build, unpinning the tree and
//! pinning it again (a full validation) leaves every frame's type, counts,
//! pin and hold as the builder left them.
//!
//! The window's own pages are most of a build (513 frames for a 2 MiB
//! window): [`Mm::adopt_leaves`] takes a run of frames nobody owns, just
//! taken from the allocator, and makes each a frame of the domain mapped
//! by one leaf, in one pass (issue 13). Its values are composed from one
//! set of flags checked once, so no entry is checked on its own; what it
//! leaves is what [`Mm::assign`] of each frame and then
//! [`Mm::build_leaves`] of the same values would (the host tests compare
//! the two, and both with a full validation).

use super::super::error::MmError;
use super::super::frame::{FrameInfo, FrameType, Owner, PARTIAL, PINNED};
use super::super::pte::{Level, FIRST_HYPERVISOR_SLOT, PRESENT, WRITABLE};
use super::super::PhysMem;
use super::Mm;
use crate::frames::Mfn;
use crate::mm::DomId;

/// A root being built by [`Mm::build_root`]: the domain and its L4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuiltTree {
    dom: DomId,
    root: Mfn,
}

impl BuiltTree {
    /// The domain the tree belongs to.
    pub const fn domain(&self) -> DomId {
        self.dom
    }
    /// Its root L4.
    pub const fn root(&self) -> Mfn {
        self.root
    }
}

impl Mm {
    /// Makes `root`, an idle frame of `dom`'s whose guest slots (0..256)
    /// are all zero, a pinned L4 with the hypervisor's slots: what
    /// [`Mm::pin`] of such a frame does, without reading its 256 empty
    /// entries. Entries are then added with [`Mm::build_entry`]. On any
    /// later failure, [`Mm::teardown`] of the domain releases the tree.
    ///
    /// The zero slots are the caller's obligation (the hypervisor builds
    /// in frames it has just taken zeroed); debug builds check it.
    pub fn build_root<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        root: Mfn,
    ) -> Result<BuiltTree, MmError> {
        let f = self.info(root)?;
        if f.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner(root));
        }
        if !f.idle() || f.ty != FrameType::None {
            return Err(MmError::FrameInUse(root));
        }
        debug_assert!(
            (0..Level::L4.guest_slots()).all(|i| mem.read_entry(root, i) == 0),
            "build_root: frame {root:#x} is not empty"
        );
        mem.write_entries(root, FIRST_HYPERVISOR_SLOT, &self.template);
        self.retype(root, FrameType::L4)?;
        self.get_total(root)?;
        self.info_mut(root)?.flags |= PINNED;
        Ok(BuiltTree { dom, root })
    }

    /// Sets the empty entry `index` of `table` (a table of `tree`'s domain
    /// in use: the root, or a table an earlier entry linked) to `value`,
    /// typed and counted as the validator would (MMU-1 .. MMU-10): the
    /// value is checked with the entry rules, a leaf takes its data
    /// reference (owner, writability), and an entry that names a table
    /// takes a reference on it, typing it if it has no type yet; such a
    /// table must then be *fresh* (its guest slots all zero: the caller's
    /// obligation, checked in debug builds), so it is valid without being
    /// read. Refused like `mmu_update` (nothing changed) otherwise, and
    /// with `EntryInUse` if the entry is not empty.
    pub fn build_entry<M: PhysMem>(
        &mut self,
        mem: &mut M,
        tree: &BuiltTree,
        table: Mfn,
        index: usize,
        value: u64,
    ) -> Result<(), MmError> {
        let level = self.writable_slot(tree.dom, table, index)?;
        if mem.read_entry(table, index) != 0 {
            return Err(MmError::EntryInUse);
        }
        if let Some(child) = self.validate_one(tree.dom, table, level, value)? {
            // Typed just now (it had no type): fresh, so valid as it is.
            debug_assert!(
                (0..level.below().map_or(0, Level::guest_slots))
                    .all(|i| mem.read_entry(child, i) == 0),
                "build_entry: table {child:#x} linked from {table:#x} is not empty"
            );
            let c = self.info_mut(child)?;
            c.flags &= !PARTIAL;
            c.partial = 0;
        }
        mem.write_entry(table, index, value);
        Ok(())
    }

    /// [`Mm::build_entry`] for a run of leaves: sets the empty entries
    /// `first..` of the L1 `table` (of `tree`'s domain, in use) to
    /// `values`, each checked and counted as [`Mm::build_entry`] does, the
    /// table's own checks made once. Stops at the first refusal, which it
    /// returns; the entries before it stay set (a failed build is torn
    /// down as a whole); a run past the table's end stops there with
    /// `HypervisorSlot`. Returns the entries set.
    pub fn build_leaves<M: PhysMem>(
        &mut self,
        mem: &mut M,
        tree: &BuiltTree,
        table: Mfn,
        first: usize,
        values: impl IntoIterator<Item = u64>,
    ) -> Result<usize, MmError> {
        self.check_built_l1(tree, table)?;
        let mut index = first;
        for value in values {
            if index >= Level::L1.guest_slots() {
                return Err(MmError::HypervisorSlot);
            }
            if mem.read_entry(table, index) != 0 {
                return Err(MmError::EntryInUse);
            }
            // A leaf links no table: `validate_one` only checks the value
            // and takes its data reference.
            self.validate_one(tree.dom, table, Level::L1, value)?;
            mem.write_entry(table, index, value);
            index += 1;
        }
        Ok(index - first)
    }

    /// The checks before writing entry `index` of `table` for `dom`: a
    /// table of `dom`'s (`NotOwner`, `NotATable`), not partial (`Busy`),
    /// `index` a guest slot of its level (`HypervisorSlot`); its level.
    /// (`Mm::update_entry_bounded` makes the same checks inline: sharing
    /// this helper there cost 15 instructions an entry in
    /// `mmu_update_batch_*`, measured, so the hot path keeps its own copy.)
    #[inline(always)]
    pub(super) fn writable_slot(
        &self,
        dom: DomId,
        table: Mfn,
        index: usize,
    ) -> Result<Level, MmError> {
        let f = self.info(table)?;
        if f.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner(table));
        }
        let level = f.table_level().ok_or(MmError::NotATable(table))?;
        if f.is_partial() {
            return Err(MmError::Busy(table));
        }
        if index >= level.guest_slots() {
            return Err(MmError::HypervisorSlot);
        }
        Ok(level)
    }

    /// The table checks of [`Mm::build_leaves`] and [`Mm::adopt_leaves`]:
    /// `table` is an L1 of `tree`'s domain, in use and not partial
    /// (`NotOwner`, `NotATable`, `Busy`).
    #[inline(always)]
    fn check_built_l1(&self, tree: &BuiltTree, table: Mfn) -> Result<(), MmError> {
        let f = self.info(table)?;
        if f.owner != Owner::Domain(tree.dom) {
            return Err(MmError::NotOwner(table));
        }
        if f.table_level() != Some(Level::L1) {
            return Err(MmError::NotATable(table));
        }
        if f.is_partial() {
            return Err(MmError::Busy(table));
        }
        Ok(())
    }

    /// Adopts `frames`, frames nobody owns and nothing references (just
    /// taken from the allocator), as leaves of `tree`'s domain: entry
    /// `index + k` of the L1 `table` (of the domain, in use, its entries
    /// there empty) maps `frames[k]` with `flags`, and the frame becomes
    /// the domain's, counted for that one entry (type `Writable` if
    /// `flags` has R/W). Exactly [`Mm::assign`] of each frame to the
    /// domain, then [`Mm::build_leaves`] of the values `frames[k] << 12 |
    /// flags`, in one pass over the frame table (issue 13).
    ///
    /// `flags` is checked once, with the entry rules (MMU-4 .. MMU-6): it
    /// must be a present user leaf without address bits (`BadConfig`
    /// otherwise); the values differ only in frame numbers, each checked
    /// against the frame table (`NoSuchFrame`), which the rules' address
    /// width covers (`Mm::new`). A frame that is owned or referenced
    /// (`FrameInUse`: also a frame named twice) refuses the run, and so do
    /// the table checks of [`Mm::build_leaves`] (`NotOwner`, `NotATable`,
    /// `Busy`), a run past the table's end (`HypervisorSlot`) and an entry
    /// already set (`EntryInUse`): nothing is changed then.
    ///
    /// Never inlined: as its own function its loop keeps everything in
    /// registers (inlined into the build it spilled, 34 instructions a
    /// frame instead of ~20).
    #[inline(never)]
    pub fn adopt_leaves<M: PhysMem>(
        &mut self,
        mem: &mut M,
        tree: &BuiltTree,
        table: Mfn,
        index: usize,
        frames: &[Mfn],
        flags: u64,
    ) -> Result<(), MmError> {
        self.check_built_l1(tree, table)?;
        let end = index.saturating_add(frames.len());
        if end > Level::L1.guest_slots() {
            return Err(MmError::HypervisorSlot);
        }
        if flags & PRESENT == 0 || flags & self.rules.addr_mask() != 0 {
            return Err(MmError::BadConfig);
        }
        self.rules.check(Level::L1, flags)?;
        let slots = &mut mem.entries_mut(table)[index..end];
        if slots.iter().fold(0, |a, &e| a | e) != 0 {
            return Err(MmError::EntryInUse);
        }
        let owner = Owner::Domain(tree.dom);
        let epoch = self.epoch;
        let slots = &mut slots[..frames.len()];
        // One loop per kind of leaf, so the type and its count are
        // constants in it and everything else stays in registers.
        // With no reference dropped since the last flush no frame can be
        // stale: the loop skips that test.
        let t = &mut self.frames;
        let adopted = match (flags & WRITABLE != 0, self.dropped_this_epoch) {
            (true, true) => adopt_run::<true, true>(t, frames, slots, owner, epoch, flags),
            (true, false) => adopt_run::<true, false>(t, frames, slots, owner, epoch, flags),
            (false, true) => adopt_run::<false, true>(t, frames, slots, owner, epoch, flags),
            (false, false) => adopt_run::<false, false>(t, frames, slots, owner, epoch, flags),
        };
        match adopted {
            Ok(stale) => {
                if stale {
                    self.flush_pending = true;
                }
                Ok(())
            }
            Err(k) => {
                let mfn = frames[k];
                let in_table = self.frame(mfn).is_some();
                self.unadopt(&frames[..k]);
                slots[..k].fill(0);
                Err(if in_table {
                    MmError::FrameInUse(mfn)
                } else {
                    MmError::NoSuchFrame(mfn)
                })
            }
        }
    }

    /// Undoes [`Mm::adopt_leaves`]'s frame-table pass over `frames`: each
    /// nobody's again, as it was.
    fn unadopt(&mut self, frames: &[Mfn]) {
        for &mfn in frames {
            if let Ok(f) = self.info_mut(mfn) {
                *f = FrameInfo {
                    dropped_epoch: f.dropped_epoch,
                    ..FrameInfo::default()
                };
            }
        }
    }
}

/// [`Mm::adopt_leaves`]' loop over `frames` (each fresh, or it stops) and
/// their `slots`: owner, type (`Writable` if `WRITABLE`) and counts set,
/// the leaf `mfn << 12 | flags` stored. Returns whether a frame's reference
/// was dropped in TLB epoch `epoch` (MMU-20; tested only if `MAYBE_STALE`:
/// the caller knows whether any reference was dropped in it), or the index of the first
/// frame that is not fresh or not in `table` (those before it adopted:
/// the caller undoes them).
#[inline(always)]
fn adopt_run<const WRITABLE_LEAF: bool, const MAYBE_STALE: bool>(
    table: &mut [FrameInfo],
    frames: &[Mfn],
    slots: &mut [u64],
    owner: Owner,
    epoch: u32,
    flags: u64,
) -> Result<bool, usize> {
    let (ty, type_count) = if WRITABLE_LEAF {
        (FrameType::Writable, 1)
    } else {
        (FrameType::None, 0)
    };
    let mut stale = false;
    for (k, (&mfn, slot)) in frames.iter().zip(slots.iter_mut()).enumerate() {
        let Some(f) = usize::try_from(mfn).ok().and_then(|i| table.get_mut(i)) else {
            return Err(k);
        };
        if !f.fresh() {
            return Err(k);
        }
        if MAYBE_STALE {
            stale |= f.dropped_epoch == epoch;
        }
        f.owner = owner;
        f.ty = ty;
        f.type_count = type_count;
        f.total_count = 1;
        *slot = (mfn << 12) | flags;
    }
    Ok(stale)
}
