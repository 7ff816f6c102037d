//! The page-table validator: every change a guest makes to its page tables
//! passes through here, and leaves the frame table consistent.
//!
//! Invariants kept after every operation, successful or not (checked by
//! [`super::audit::audit`] in the property and fuzz tests):
//!
//! * a frame whose type is a table level has had every entry of its guest
//!   slots validated for that level, and holds one reference on each frame
//!   they point at;
//! * a frame with a table type is never the target of a writable L1 entry;
//! * type and total counts equal the references found by scanning all
//!   validated tables, plus one for a pin;
//! * every frame a guest's tables reference is owned by that guest.
//!
//! References only ever point from a table at level N to a table at level
//! N-1 or to data (the one same-level exception, a read-only L4 self entry,
//! takes no reference), so reference chains cannot loop (XSA-240) and
//! recursion depth is at most four.

use super::error::{BatchError, MmError};
use super::frame::{DomId, FrameInfo, FrameType, ImageId, Owner, DEVICE, SPECIAL_WRITABLE};
use super::pte::{EntryRules, Level, Target, ENTRIES, FIRST_HYPERVISOR_SLOT, PS_OR_PAT, USER};
use super::{AddressSpace, PhysMem};
use crate::frames::Mfn;
use crate::mm::TableType;
use alloc::vec::Vec;

mod bounded;
mod built;
mod foreign;
mod io;
pub use bounded::{Budget, Pending, Progress, Teardown, OP_STEPS};
pub use built::BuiltTree;

/// Number of L4 slots the hypervisor owns (256..=511).
pub const HYPERVISOR_SLOTS: usize = ENTRIES - FIRST_HYPERVISOR_SLOT;

/// The first non-canonical / hypervisor-half virtual address.
const GUEST_VA_END: u64 = 1 << 47;

/// What the hypervisor tells the validator at boot.
#[derive(Clone, Debug)]
pub struct MmConfig {
    /// Frames of physical memory covered by the frame table (highest frame
    /// number + 1). Entries naming frames at or beyond are refused (MMU-8).
    pub frames: u64,
    /// The CPU's MAXPHYADDR (CPUID 0x8000_0008, EAX bits 7..0), 32..=52.
    pub max_phys_bits: u8,
    /// The values of L4 slots 256..=511, copied into every L4 when it
    /// becomes a page table (MMU-3). Must not have U/S set (refused with
    /// `BadConfig`); should have A set, so the CPU never writes them.
    pub hypervisor_slots: [u64; HYPERVISOR_SLOTS],
}

/// The frame table and the validator over it. One per machine.
#[derive(Clone, Debug)]
pub struct Mm {
    frames: Vec<FrameInfo>,
    rules: EntryRules,
    template: [u64; HYPERVISOR_SLOTS],
    /// Counts full TLB flushes; see [`Mm::take_flush_request`].
    epoch: u32,
    flush_pending: bool,
    /// Whether a reference was dropped in this epoch (some frame's
    /// `dropped_epoch` may equal `epoch`): if not, adopting fresh frames
    /// skips the per-frame test (`Mm::adopt_leaves`).
    dropped_this_epoch: bool,
    /// Device (non-RAM) frames delegated to a driver domain, with the
    /// domain (IO-0): only the hypervisor maps them ([`Mm::install_io`]);
    /// dropping such an entry takes no reference.
    io: Vec<(Mfn, DomId)>,
    /// Each domain's image, by domain id: `image + 1`, 0 for none (MEM-2e).
    /// A domain may map its image's shared frames ([`Owner::Image`]),
    /// read-only. Grows on demand, two bytes per domain id.
    images: Vec<u16>,
    /// The last successful walk of [`Mm::update_va_mapping`], reused only
    /// after the three entries it read are read again and found unchanged
    /// ([`WalkHint`]).
    walk_hint: Option<WalkHint>,
}

/// A remembered [`Mm::update_va_mapping`] walk: in `dom`'s tree rooted at
/// `root`, the 2 MiB region `va_2m` (`va >> 21`) is mapped by the L1 `l1`,
/// reached through the L4, L3 and L2 entries `entries` of the tables
/// `tables`.
///
/// Used instead of a walk only when the key matches, the root passed the
/// same in-use L4 test as for a walk and is not partial, and every one of the three entries
/// still holds its value: the walk is then the same (each table is the
/// one the entry above names), and the frames it reaches still have the
/// types it found, because a frame's type cannot change while it has type
/// references, and each of these frames has one from the unchanged entry
/// above it in an in-use table (MMU-1: the in-use root holds its L3, that
/// L3 its L2, that L2 the L1). The L1 itself gets the walk's tests again
/// (`Mm::hinted_l1`: an L1 of the domain's in use, not partial), which
/// `Mm::update_leaf` relies on in place of `update_entry`'s. Any
/// entry written in between (the L2 entry pointed at another L1, an L3
/// entry cleared, a table written behind the validator's back) fails the
/// comparison and the walk runs. Attack tests in `tests/rules.rs`
/// (`mmu_17_attack_remembered_walk_*`).
#[derive(Clone, Copy, Debug)]
struct WalkHint {
    dom: DomId,
    root: Mfn,
    va_2m: u64,
    tables: [Mfn; 3],
    entries: [u64; 3],
    l1: Mfn,
}

impl Mm {
    /// A frame table of `config.frames` frames, all free.
    ///
    /// This is the only allocation the module makes: 20 bytes per frame.
    ///
    /// Plus 4 bytes per frame for the progress of bounded operations
    /// (MMU-35): 24 bytes in all.
    pub fn new(config: &MmConfig) -> Result<Mm, MmError> {
        let rules = EntryRules::new(config.max_phys_bits)?;
        let addressable = 1u64 << (config.max_phys_bits - 12);
        if config.frames > addressable {
            return Err(MmError::BadConfig);
        }
        // The hypervisor's slots are readable through a guest's read-only
        // self entry (MMU-10); U clear keeps everything below them out of
        // ring 3's reach.
        if config.hypervisor_slots.iter().any(|e| e & USER != 0) {
            return Err(MmError::BadConfig);
        }
        let n = usize::try_from(config.frames).map_err(|_| MmError::BadConfig)?;
        let mut frames = Vec::new();
        frames.resize(n, FrameInfo::default());
        Ok(Mm {
            frames,
            rules,
            template: config.hypervisor_slots,
            epoch: 1,
            flush_pending: false,
            dropped_this_epoch: false,
            io: Vec::new(),
            images: Vec::new(),
            walk_hint: None,
        })
    }

    /// Frames in the table.
    pub fn frame_count(&self) -> u64 {
        self.frames.len() as u64
    }

    /// One frame's accounting, or `None` beyond the table.
    #[inline]
    pub fn frame(&self, mfn: Mfn) -> Option<&FrameInfo> {
        usize::try_from(mfn).ok().and_then(|i| self.frames.get(i))
    }

    /// The entry rules in force.
    pub fn rules(&self) -> &EntryRules {
        &self.rules
    }

    /// The hypervisor's L4 slots, as copied into every validated L4.
    pub fn hypervisor_slots(&self) -> &[u64; HYPERVISOR_SLOTS] {
        &self.template
    }

    /// Direct access for tests that stage states operations cannot reach
    /// cheaply (a count at its limit).
    #[cfg(test)]
    pub(super) fn frame_mut(&mut self, mfn: Mfn) -> &mut FrameInfo {
        &mut self.frames[mfn as usize]
    }

    #[inline]
    fn info(&self, mfn: Mfn) -> Result<FrameInfo, MmError> {
        self.frame(mfn).copied().ok_or(MmError::NoSuchFrame(mfn))
    }

    #[inline]
    fn info_mut(&mut self, mfn: Mfn) -> Result<&mut FrameInfo, MmError> {
        usize::try_from(mfn)
            .ok()
            .and_then(|i| self.frames.get_mut(i))
            .ok_or(MmError::NoSuchFrame(mfn))
    }

    // ----- ownership (hypervisor-side) -----

    /// Gives an idle frame to `owner` (MMU-19): from the free pool to a
    /// domain, back, or to the hypervisor. Refused while anything references
    /// it. Resets its type; the hypervisor scrubs contents itself.
    pub fn assign(&mut self, mfn: Mfn, owner: Owner) -> Result<(), MmError> {
        let f = self.info(mfn)?;
        if !f.idle() {
            return Err(MmError::FrameInUse(mfn));
        }
        self.note_owner_change(mfn, f);
        let f = self.info_mut(mfn)?;
        f.owner = owner;
        f.ty = FrameType::None;
        f.flags = 0;
        Ok(())
    }

    /// Shares an idle frame with `dom` as a `Special` page (shared-info and
    /// the like): the domain may map it, writable only if `guest_writable`,
    /// never as a page table (MMU-18). The hypervisor holds it from here on
    /// (one [`Mm::hold`], MEM-8). Undo with [`Mm::release_hold`], then
    /// [`Mm::assign`].
    pub fn share_special(
        &mut self,
        mfn: Mfn,
        dom: DomId,
        guest_writable: bool,
    ) -> Result<(), MmError> {
        let f = self.info(mfn)?;
        if !f.idle() {
            return Err(MmError::FrameInUse(mfn));
        }
        self.note_owner_change(mfn, f);
        let f = self.info_mut(mfn)?;
        f.owner = Owner::Domain(dom);
        f.ty = FrameType::Special;
        f.flags = if guest_writable { SPECIAL_WRITABLE } else { 0 };
        f.held = 1;
        Ok(())
    }

    /// Takes a hypervisor reference on `dom`'s frame `mfn` (MEM-8): the
    /// hypervisor is about to read or write it on the domain's behalf for
    /// longer than one checked copy (shared info; grant and ring pages).
    ///
    /// While held, the frame is not idle, so it cannot be released,
    /// assigned or shared with anyone ([`Mm::assign`] and
    /// [`Mm::share_special`] refuse with `FrameInUse`), and it cannot become
    /// a page table (`HeldFrame`). The owner may still map it (writable if
    /// its type allows). Only a frame without a table type may be held.
    /// Every hold is dropped with [`Mm::release_hold`], at the latest when
    /// its domain is torn down; the frame audit checks the count.
    pub fn hold(&mut self, mfn: Mfn, dom: DomId) -> Result<(), MmError> {
        let f = self.info(mfn)?;
        if f.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner(mfn));
        }
        if f.ty.level().is_some() || f.pinned() {
            return Err(MmError::NotHoldable(mfn));
        }
        let held = f.held.checked_add(1).ok_or(MmError::CountOverflow(mfn))?;
        self.info_mut(mfn)?.held = held;
        Ok(())
    }

    /// Drops one hypervisor reference taken by [`Mm::hold`] or
    /// [`Mm::share_special`]. Dropping the last hold of a `Special` frame
    /// ends the sharing: it becomes a plain frame of its owner (type
    /// `None`), which needs it unmapped (`FrameInUse` otherwise: a writable
    /// mapping of a `Special` frame holds no `Writable` type). Refused
    /// (`NotHeld`, nothing changed) when none is held: the caller's
    /// bookkeeping is wrong.
    pub fn release_hold(&mut self, mfn: Mfn) -> Result<(), MmError> {
        let f = self.info_mut(mfn)?;
        if f.held == 0 {
            return Err(MmError::NotHeld(mfn));
        }
        if f.held == 1 && f.ty == FrameType::Special {
            if f.total_count != 0 {
                return Err(MmError::FrameInUse(mfn));
            }
            f.ty = FrameType::None;
            f.flags = 0;
        }
        f.held -= 1;
        Ok(())
    }

    /// Whether `dom` may map `mfn` (writable or not) from one of its L1s
    /// (MMU-7).
    ///
    /// Frames it owns, `Special` read-only frames only read-only, and the
    /// shared read-only pages of its own image ([`Owner::Image`], MEM-2e)
    /// only read-only. The reference accounting below is owner-agnostic
    /// (grant mappings are installed by `Mm::map_foreign`).
    #[inline]
    pub fn may_map(&self, dom: DomId, mfn: Mfn, writable: bool) -> Result<(), MmError> {
        self.may_map_inline(dom, mfn, writable)
    }

    /// [`Mm::may_map`], always inline ([`Mm::get_data_inline`]); the
    /// record read in place.
    #[inline(always)]
    fn may_map_inline(&self, dom: DomId, mfn: Mfn, writable: bool) -> Result<(), MmError> {
        let f = self.frame(mfn).ok_or(MmError::NoSuchFrame(mfn))?;
        if f.owner != Owner::Domain(dom) {
            return self.may_map_shared(dom, mfn, f.owner, writable);
        }
        if writable && f.ty == FrameType::Special && !f.special_writable() {
            return Err(MmError::ReadOnlyFrame(mfn));
        }
        Ok(())
    }

    /// [`Mm::may_map`] of a frame `dom` does not own: only a shared page of
    /// its own image, read-only (MEM-2e). Off the common path.
    #[cold]
    fn may_map_shared(
        &self,
        dom: DomId,
        mfn: Mfn,
        owner: Owner,
        writable: bool,
    ) -> Result<(), MmError> {
        match owner {
            Owner::Image(image) if self.image_of(dom) == Some(image) => {
                if writable {
                    Err(MmError::ReadOnlyFrame(mfn))
                } else {
                    Ok(())
                }
            }
            _ => Err(MmError::NotOwner(mfn)),
        }
    }

    // ----- shared image pages (MEM-2e) -----

    /// Records that `dom` runs `image` (or nothing, `None`: call it when
    /// the domain's tables are gone): from here on it may map that image's
    /// shared frames read-only. `NoMemory` if the record cannot grow.
    pub fn set_domain_image(&mut self, dom: DomId, image: Option<ImageId>) -> Result<(), MmError> {
        let i = usize::from(dom);
        let value = match image {
            Some(img) => img.checked_add(1).ok_or(MmError::BadConfig)?,
            None => 0,
        };
        if i >= self.images.len() {
            if value == 0 {
                return Ok(());
            }
            self.images
                .try_reserve(i + 1 - self.images.len())
                .map_err(|_| MmError::NoMemory)?;
            self.images.resize(i + 1, 0);
        }
        self.images[i] = value;
        Ok(())
    }

    /// The image `dom` runs, if it has shared frames (MEM-2e).
    #[inline]
    pub fn image_of(&self, dom: DomId) -> Option<ImageId> {
        match self.images.get(usize::from(dom)) {
            Some(&v) if v != 0 => Some(v - 1),
            _ => None,
        }
    }

    /// Makes an idle frame (filled with its contents) the shared copy of
    /// one read-only page of `image` (MEM-2e): owned by no domain, mappable
    /// read-only by the domains of that image, never typed, held or
    /// handed on. Undo with [`Mm::unshare_image`].
    pub fn share_image(&mut self, mfn: Mfn, image: ImageId) -> Result<(), MmError> {
        let f = self.info(mfn)?;
        if !f.idle() {
            return Err(MmError::FrameInUse(mfn));
        }
        self.note_owner_change(mfn, f);
        let f = self.info_mut(mfn)?;
        f.owner = Owner::Image(image);
        f.ty = FrameType::None;
        f.flags = 0;
        Ok(())
    }

    /// Ends the sharing of `mfn`, a frame of `image`'s: it becomes free
    /// (the hypervisor scrubs it and returns it to the pool). Refused with
    /// `NotOwner` for any other frame and `FrameInUse` while a table still
    /// maps it; nothing changed then.
    pub fn unshare_image(&mut self, mfn: Mfn, image: ImageId) -> Result<(), MmError> {
        let f = self.info(mfn)?;
        if f.owner != Owner::Image(image) {
            return Err(MmError::NotOwner(mfn));
        }
        self.assign(mfn, Owner::Free)
    }

    // ----- TLB bookkeeping (XSA-286, XSA-401) -----

    /// Whether the hypervisor must flush this CPU's whole TLB (all PCIDs,
    /// including paging-structure caches) before the guest runs again *and
    /// before it next touches guest memory through a guest virtual address*
    /// (MMU-20). Clears the request; the caller must honour it.
    ///
    /// Why: when a reference to a frame is dropped, the TLB may still hold a
    /// translation through it (a writable mapping, or the frame cached as a
    /// page table). That is harmless while the frame keeps its use, and
    /// fatal once it changes type or owner. So every type change and owner
    /// change of a frame whose reference was dropped since the last flush
    /// raises the request.
    #[must_use]
    pub fn take_flush_request(&mut self) -> bool {
        let pending = self.flush_pending;
        if pending {
            self.note_tlb_flushed();
        }
        pending
    }

    /// Whether a flush is requested ([`Mm::take_flush_request`] would say
    /// yes), without clearing the request: for a caller that hands the
    /// flush to the code that takes it.
    #[inline]
    #[must_use]
    pub fn flush_requested(&self) -> bool {
        self.flush_pending
    }

    /// The hypervisor flushed the whole TLB on its own (e.g. a CR3 load
    /// without PCIDs); earlier dropped references are now harmless.
    pub fn note_tlb_flushed(&mut self) {
        self.flush_pending = false;
        self.dropped_this_epoch = false;
        self.epoch = self.epoch.wrapping_add(1).max(1);
    }

    #[inline]
    fn note_dropped(&mut self, mfn: Mfn) {
        self.dropped_this_epoch = true;
        self.note_dropped_unflagged(mfn);
    }

    /// [`Mm::note_dropped`] for a caller that has set `dropped_this_epoch`
    /// itself (see [`Mm::put_data_unflagged`]).
    #[inline]
    pub(super) fn note_dropped_unflagged(&mut self, mfn: Mfn) {
        let epoch = self.epoch;
        if let Ok(f) = self.info_mut(mfn) {
            f.dropped_epoch = epoch;
        }
    }

    /// Notes, before a batch of releases, that references may be dropped
    /// in this epoch (read by `Mm::adopt_leaves`).
    #[inline]
    pub(super) fn note_dropping(&mut self) {
        self.dropped_this_epoch = true;
    }

    fn note_owner_change(&mut self, _mfn: Mfn, f: FrameInfo) {
        if f.dropped_epoch == self.epoch {
            self.flush_pending = true;
        }
    }

    /// `mfn` (with count 0) takes type `ty`.
    #[inline]
    fn retype(&mut self, mfn: Mfn, ty: FrameType) -> Result<(), MmError> {
        let epoch = self.epoch;
        let f = self.info_mut(mfn)?;
        let stale = f.dropped_epoch == epoch;
        f.ty = ty;
        f.type_count = 1;
        if stale {
            self.flush_pending = true;
        }
        Ok(())
    }

    // ----- reference accounting -----

    /// One more reference of any kind.
    #[inline]
    fn get_total(&mut self, mfn: Mfn) -> Result<(), MmError> {
        let f = self.info_mut(mfn)?;
        f.total_count = f
            .total_count
            .checked_add(1)
            .ok_or(MmError::CountOverflow(mfn))?;
        Ok(())
    }

    /// A data reference from an L1 entry: total, plus a `Writable` type
    /// reference if writable (MMU-2).
    #[inline]
    fn get_data(&mut self, dom: DomId, t: Target) -> Result<(), MmError> {
        self.get_data_inline(dom, t)
    }

    /// [`Mm::get_data`], always inline (the page-fault path's one entry,
    /// `Mm::update_leaf`: as a call it cost ~15 instructions).
    #[inline(always)]
    fn get_data_inline(&mut self, dom: DomId, t: Target) -> Result<(), MmError> {
        self.may_map_inline(dom, t.mfn, t.writable)?;
        // `get_total` and `retype` on the one record, read and written in
        // place (the same tests, in the same order, nothing changed on a
        // refusal).
        let epoch = self.epoch;
        let f = self.info_mut(t.mfn)?;
        if f.total_count == u32::MAX {
            return Err(MmError::CountOverflow(t.mfn));
        }
        let mut stale = false;
        if t.writable && f.ty != FrameType::Special {
            match f.ty {
                FrameType::Writable => {
                    f.type_count = f
                        .type_count
                        .checked_add(1)
                        .ok_or(MmError::CountOverflow(t.mfn))?;
                }
                FrameType::None => {
                    // `retype`.
                    stale = f.dropped_epoch == epoch;
                    f.ty = FrameType::Writable;
                    f.type_count = 1;
                }
                has => {
                    return Err(MmError::TypeConflict {
                        mfn: t.mfn,
                        has,
                        wants: FrameType::Writable,
                    })
                }
            }
        }
        f.total_count += 1;
        if stale {
            self.flush_pending = true;
        }
        Ok(())
    }

    #[inline]
    fn put_data(&mut self, t: Target) {
        self.dropped_this_epoch = true;
        self.put_data_unflagged(t);
    }

    /// [`Mm::put_data`] without setting `dropped_this_epoch`: the caller
    /// has set it for the whole batch (MMU-20 depends on it being set
    /// whenever a frame's `dropped_epoch` becomes `epoch`). Set per entry
    /// in [`Mm::release_entries_from`]'s loop it kept `self` live there and
    /// spilled the epoch: ~6 instructions per leaf released
    /// (`mmu_unpin_fresh_space` 169,429 -> 194,161, now 169,537 again;
    /// docs/bench-history/regressions.md, "Rows that rose during issue 13").
    #[inline]
    pub(super) fn put_data_unflagged(&mut self, t: Target) {
        // A frame without a record is no RAM frame: a device frame (the
        // only such entry a table may hold) or nothing to count.
        let epoch = self.epoch;
        let Ok(f) = self.info_mut(t.mfn) else { return };
        if f.total_count == 0 {
            // Nothing of this entry's to drop: a device entry the
            // hypervisor installed, which the domain overwrote or whose
            // table it released (IO-0). A delegated frame never has a
            // count (it is the hypervisor's, and cannot change hands while
            // delegated), so the ordinary path decides with the test it
            // needs anyway, and the flag is read only here. As a search of
            // the delegated list on every entry, this check cost ~55
            // instructions per entry released (docs/bench-history/regressions.md,
            // "Devices on the release path").
            debug_assert!(f.flags & DEVICE != 0, "a data reference dropped twice");
            return;
        }
        f.dropped_epoch = epoch;
        f.total_count -= 1;
        if t.writable && f.ty != FrameType::Special {
            debug_assert!(f.ty == FrameType::Writable && f.type_count > 0);
            f.type_count = f.type_count.saturating_sub(1);
            if f.type_count == 0 {
                f.ty = FrameType::None;
            }
        }
    }

    fn put_table<M: PhysMem>(&mut self, mem: &mut M, mfn: Mfn, level: Level) {
        self.note_dropped(mfn);
        let Ok(f) = self.info_mut(mfn) else { return };
        debug_assert!(f.ty == FrameType::table(level) && f.type_count > 0);
        f.total_count = f.total_count.saturating_sub(1);
        f.type_count = f.type_count.saturating_sub(1);
        if f.type_count == 0 {
            self.release_entries(mem, mfn, level, level.guest_slots());
            if level == Level::L4 {
                // Do not leave hypervisor addresses in a frame the guest
                // may read again.
                for i in FIRST_HYPERVISOR_SLOT..ENTRIES {
                    mem.write_entry(mfn, i, 0);
                }
            }
            if let Ok(f) = self.info_mut(mfn) {
                f.ty = FrameType::None;
            }
        }
    }

    fn release_entries<M: PhysMem>(&mut self, mem: &mut M, table: Mfn, level: Level, end: usize) {
        for i in 0..end {
            let value = mem.read_entry(table, i);
            self.put_entry(mem, table, level, value);
        }
    }

    fn put_entry<M: PhysMem>(&mut self, mem: &mut M, table: Mfn, level: Level, value: u64) {
        let Some(t) = self.rules.target_of(value) else {
            return;
        };
        match level.below() {
            None => self.put_data(t),
            Some(_) if level == Level::L4 && t.mfn == table => {}
            Some(below) => self.put_table(mem, t.mfn, below),
        }
    }

    // ----- the operations guests request -----

    /// Pins `mfn` as a table of `level` (MMU-11): validates it and the tree
    /// below, and holds it valid until [`Mm::unpin`]. All at once: the
    /// hypervisor uses [`Mm::pin_bounded`].
    pub fn pin<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        mfn: Mfn,
        level: Level,
    ) -> Result<(), MmError> {
        let mut pending = None;
        let r = self.pin_bounded(mem, dom, mfn, level, &mut pending, &mut Budget::unlimited());
        debug_assert!(pending.is_none() && r != Ok(Progress::Preempted));
        r.map(|_| ())
    }

    /// Drops the pin on `mfn` (MMU-12); when nothing else references it,
    /// its tree is released. Refused for a loaded root. All at once: the
    /// hypervisor uses [`Mm::unpin_bounded`].
    pub fn unpin<M: PhysMem>(&mut self, mem: &mut M, dom: DomId, mfn: Mfn) -> Result<(), MmError> {
        let mut pending = None;
        let r = self.unpin_bounded(mem, dom, mfn, &mut pending, &mut Budget::unlimited());
        debug_assert!(pending.is_none() && r != Ok(Progress::Preempted));
        r.map(|_| ())
    }

    /// Stores `value` in the entry at machine address `ptr` (MMU-13): the
    /// entry must be a guest slot of a page table of `dom`'s in use.
    /// References move from the old target to the new one. O(1) for L1
    /// entries; an entry naming a table not yet in use validates it, and
    /// one dropping a table's last reference releases it, each within
    /// [`OP_STEPS`] (MMU-37, MMU-38).
    pub fn mmu_update_one<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        ptr: u64,
        value: u64,
    ) -> Result<(), MmError> {
        self.mmu_update_one_within(mem, dom, ptr, value, &mut Budget::new(OP_STEPS))
    }

    /// [`Mm::mmu_update_one`] within `budget`, which it spends on linking
    /// and unlinking subtrees.
    pub fn mmu_update_one_within<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        ptr: u64,
        value: u64,
        budget: &mut Budget,
    ) -> Result<(), MmError> {
        if ptr & 7 != 0 {
            return Err(MmError::MisalignedPointer);
        }
        let index = ((ptr & 0xfff) >> 3) as usize;
        self.update_entry(mem, dom, ptr >> 12, index, value, budget)
    }

    /// A batch of [`Mm::mmu_update_one`] (MMU-15): stops at the first
    /// refusal, which it reports with its index; earlier updates stay
    /// applied, later ones are not attempted. Returns how many were applied.
    /// All its entries share one [`OP_STEPS`] budget (MMU-37, MMU-38).
    pub fn mmu_update<M: PhysMem, I: IntoIterator<Item = (u64, u64)>>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        updates: I,
    ) -> Result<usize, BatchError> {
        self.mmu_update_within(mem, dom, updates, &mut Budget::new(OP_STEPS))
    }

    /// [`Mm::mmu_update`] within `budget`: the hypervisor passes one
    /// budget to every chunk of one call, so the whole call is bounded.
    pub fn mmu_update_within<M: PhysMem, I: IntoIterator<Item = (u64, u64)>>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        updates: I,
        budget: &mut Budget,
    ) -> Result<usize, BatchError> {
        let mut done = 0;
        for (index, (ptr, value)) in updates.into_iter().enumerate() {
            self.mmu_update_one_within(mem, dom, ptr, value, budget)
                .map_err(|error| BatchError { index, error })?;
            done += 1;
        }
        Ok(done)
    }

    fn update_entry<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        table: Mfn,
        index: usize,
        new: u64,
        budget: &mut Budget,
    ) -> Result<(), MmError> {
        self.writable_slot(dom, table, index)?;
        // No "only the flags changed" shortcut (XSA-182, XSA-148): the new
        // value is validated in full, and references are taken before the
        // old ones are dropped, so an unchanged target never drops to zero.
        // Linking or unlinking a subtree is bounded by `budget` (MMU-37,
        // MMU-38).
        self.update_entry_bounded(mem, dom, table, index, new, budget)
    }

    /// Makes `l4` the root of `space` (MMU-14). It must be a pinned L4 of
    /// the space's domain. Returns the value for CR3 (the physical address;
    /// PCID bits are the hypervisor's business).
    pub fn switch_root(&mut self, space: &mut AddressSpace, l4: Mfn) -> Result<u64, MmError> {
        let f = self.info(l4)?;
        if f.owner != Owner::Domain(space.dom) {
            return Err(MmError::NotOwner(l4));
        }
        if !f.pinned() {
            return Err(MmError::NotPinned(l4));
        }
        if f.ty != FrameType::L4 {
            return Err(MmError::TypeConflict {
                mfn: l4,
                has: f.ty,
                wants: FrameType::L4,
            });
        }
        if f.loaded == u16::MAX {
            return Err(MmError::CountOverflow(l4));
        }
        self.detach(space);
        self.info_mut(l4)?.loaded += 1;
        space.root = Some(l4);
        Ok(l4 << 12)
    }

    /// Unloads the root of `space` (a vCPU going away); its L4 may then be
    /// unpinned.
    pub fn detach(&mut self, space: &mut AddressSpace) {
        let dom = space.dom;
        if let Some(old) = space.root.take() {
            if let Ok(f) = self.info_mut(old) {
                // A space kept past its domain's teardown must not unload a
                // frame that has changed hands since.
                if f.owner == Owner::Domain(dom) {
                    f.loaded = f.loaded.saturating_sub(1);
                }
            }
        }
    }

    /// The fast path (MMU-17): sets the L1 entry that maps `va` in the tree
    /// rooted at `root` (an L4 of `dom`'s in use) to `value`, with the same
    /// checks as [`Mm::mmu_update_one`]. The walk must reach an L1 through
    /// L3 and L2 tables; linear entries do not count.
    pub fn update_va_mapping<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        root: Mfn,
        va: u64,
        value: u64,
    ) -> Result<(), MmError> {
        if va >= GUEST_VA_END {
            return Err(MmError::VaOutOfRange);
        }
        if va & 0xfff != 0 {
            return Err(MmError::MisalignedVa);
        }
        // The root's record read in place, once (not copied whole).
        let f = self.frame(root).ok_or(MmError::NoSuchFrame(root))?;
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
        // A partial root (a pin or unpin in progress) has entries that may
        // hold no references: walk it, never trust a remembered walk.
        let hinted = if f.is_partial() {
            None
        } else {
            self.hinted_l1(mem, dom, root, va)
        };
        let l1 = match hinted {
            Some(l1) => l1,
            None => self.walk_to_l1(mem, dom, root, va)?,
        };
        // Either way `l1` passed `update_entry`'s table tests (an L1 of
        // `dom`'s in use, not partial), and every L1 index is a guest slot.
        self.update_leaf(mem, dom, l1, Level::L1.index_of(va), value)
    }

    /// [`Mm::update_entry`] of entry `index` of `l1`, which the caller
    /// found to be an L1 of `dom`'s in use and not partial (the tests
    /// `update_entry` makes, not repeated): the same steps as
    /// `update_entry_bounded` takes for an L1 entry, O(1) (an L1 entry
    /// links no table, and its old value releases none). No "only the
    /// flags changed" shortcut (XSA-182): the new value is validated in
    /// full and its reference taken before the old one is dropped.
    #[inline(always)]
    fn update_leaf<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        l1: Mfn,
        index: usize,
        new: u64,
    ) -> Result<(), MmError> {
        debug_assert!(self.frame(l1).is_some_and(|f| f.owner == Owner::Domain(dom)
            && f.table_level() == Some(Level::L1)
            && !f.is_partial()));
        let old = mem.read_entry(l1, index);
        // `validate_one`'s steps for an L1 entry, inline: an L1 entry
        // names data, so there is nothing to link.
        // (Its `NoSuchFrame` test is `get_data`'s first, with the same
        // error.)
        if let Some(t) = self.rules.check(Level::L1, new)? {
            self.get_data_inline(dom, t)?;
        }
        mem.replace_entry(l1, index, old, new);
        if let Some(t) = self.rules.target_of(old) {
            self.note_dropping();
            self.put_data_unflagged(t);
        }
        Ok(())
    }

    /// The L1 of the remembered walk ([`WalkHint`]) if it is `va`'s in
    /// `dom`'s tree at `root` (an in-use, not partial L4 of `dom`'s: the
    /// caller checked), the three entries it read still hold their values,
    /// and it passes the tests the walk makes of the L1 it reaches (an L1
    /// of `dom`'s in use, not partial). Inline into its one caller (a call
    /// cost ~12 instructions of moves).
    #[inline(always)]
    fn hinted_l1<M: PhysMem>(&self, mem: &M, dom: DomId, root: Mfn, va: u64) -> Option<Mfn> {
        let h = self.walk_hint.as_ref()?;
        if h.dom != dom || h.root != root || h.va_2m != va >> 21 {
            return None;
        }
        let mut differ = 0;
        for (i, level) in [Level::L4, Level::L3, Level::L2].into_iter().enumerate() {
            differ |= mem.read_entry(h.tables[i], level.index_of(va)) ^ h.entries[i];
        }
        if differ != 0 {
            return None;
        }
        // Implied by the entries (see `WalkHint`); tested as the walk tests
        // it, as `update_leaf` relies on it.
        let f = self.frame(h.l1)?;
        if f.type_count == 0
            || f.ty != FrameType::L1
            || f.owner != Owner::Domain(dom)
            || f.is_partial()
        {
            return None;
        }
        Some(h.l1)
    }

    /// Follows `va` from `root` down to the L1 that maps it, checking at
    /// each step that the frame reached is a table of the expected level;
    /// remembers the walk ([`WalkHint`]) when it succeeds.
    fn walk_to_l1<M: PhysMem>(
        &mut self,
        mem: &M,
        dom: DomId,
        root: Mfn,
        va: u64,
    ) -> Result<Mfn, MmError> {
        let mut table = root;
        let mut tables = [0; 3];
        let mut entries = [0; 3];
        for (i, level) in [Level::L4, Level::L3, Level::L2].into_iter().enumerate() {
            let entry = mem.read_entry(table, level.index_of(va));
            tables[i] = table;
            entries[i] = entry;
            let Some(t) = self.rules.target_of(entry) else {
                return Err(MmError::NotMapped);
            };
            if level != Level::L4 && entry & PS_OR_PAT != 0 {
                return Err(MmError::LargePage);
            }
            let below = FrameType::table(level.below().unwrap_or(Level::L1));
            let next = self.info(t.mfn)?;
            if next.is_partial() {
                return Err(MmError::Busy(t.mfn));
            }
            if next.type_count == 0 || next.ty != below || next.owner != Owner::Domain(dom) {
                return Err(MmError::TypeConflict {
                    mfn: t.mfn,
                    has: next.ty,
                    wants: below,
                });
            }
            table = t.mfn;
        }
        self.walk_hint = Some(WalkHint {
            dom,
            root,
            va_2m: va >> 21,
            tables,
            entries,
            l1: table,
        });
        Ok(table)
    }

    /// Releases everything `dom`'s page tables hold (MMU-16): unloads its
    /// roots, finishes (by undoing) a pin or unpin it left half done,
    /// unpins every pinned table and so drops every reference its tables
    /// took. Afterwards each of its frames has type `None` (or `Special`)
    /// and counts 0, ready for [`Mm::assign`]. The domain's
    /// [`AddressSpace`]s are stale afterwards. All at once: the hypervisor
    /// uses [`Mm::teardown_bounded`].
    /// Returns the pins dropped.
    pub fn teardown<M: PhysMem>(&mut self, mem: &mut M, dom: DomId) -> usize {
        let mut t = Teardown::new(dom);
        let done = self.teardown_bounded(mem, &mut t, &mut None, &mut Budget::unlimited());
        debug_assert_eq!(done, Progress::Done);
        t.unpinned()
    }
}
