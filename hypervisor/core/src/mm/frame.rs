//! The frame table: who owns each physical frame, what it is used as, and
//! how many references hold it in that use.
//!
//! The accounting follows Xen's (header of `xen/arch/x86/mm.c`): a frame has
//! one *type* out of mutually exclusive uses (a table at one level, or
//! writable data) and a *type count* of the references that depend on that
//! type; the type may change only when the type count is 0. Separately, the
//! *total count* counts every reference of any kind, so a frame is never
//! handed to someone else while anything still points at it.

use super::pte::Level;

/// A domain's identifier.
pub use crate::event::DomId;

/// One boot-pack image whose read-only pages are shared (its blob index):
/// see [`Owner::Image`].
pub type ImageId = u16;

/// Who a frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Owner {
    /// Nobody: in the hypervisor's free pool.
    #[default]
    Free,
    /// The hypervisor (its code, data, page tables, the frame table...).
    Hypervisor,
    /// A guest domain.
    Domain(DomId),
    /// A read-only page of one image (text, rodata: no writable segment
    /// touches it), one copy shared by every domain built from that image
    /// (MEM-2e). Only those domains may map it, and only read-only
    /// (`Mm::may_map`); it is never typed, pinned, held or handed to anyone
    /// (every other ownership check wants `Domain(dom)` and refuses it with
    /// `NotOwner`). The hypervisor frees it, scrubbed, when the last domain
    /// of the image is released.
    Image(ImageId),
}

/// What a frame is used as: exactly one at a time (MMU-1). The ABI's enum
/// ([`hypercall_abi::mmu::FrameType`]), so the frame table, the hypervisor
/// and `mmu_frame_info` speak of one type; [`TableType`] adds what the
/// validator needs. `Special`: shared by the hypervisor with its owner
/// (e.g. shared info): mappable, never a page table, never retyped while
/// shared; the hypervisor holds a reference on it for as long as it is
/// `Special` (see [`FrameInfo::held`]).
pub use hypercall_abi::mmu::FrameType;

/// The page-table levels of [`FrameType`].
pub trait TableType: Sized {
    /// The page-table type of `level`.
    fn table(level: Level) -> Self;
    /// The level, if this is a page-table type.
    fn level(self) -> Option<Level>;
}

impl TableType for FrameType {
    fn table(level: Level) -> FrameType {
        match level {
            Level::L1 => FrameType::L1,
            Level::L2 => FrameType::L2,
            Level::L3 => FrameType::L3,
            Level::L4 => FrameType::L4,
        }
    }

    fn level(self) -> Option<Level> {
        match self {
            FrameType::L1 => Some(Level::L1),
            FrameType::L2 => Some(Level::L2),
            FrameType::L3 => Some(Level::L3),
            FrameType::L4 => Some(Level::L4),
            _ => None,
        }
    }
}

/// Flag: the owner holds a pin (a type and a total reference) on the frame.
pub(super) const PINNED: u8 = 1 << 0;
/// Flag: a `Special` frame the owner may map writable.
pub(super) const SPECIAL_WRITABLE: u8 = 1 << 1;
/// Flag: a table in the middle of a bounded pin or unpin (MMU-35): only its
/// first [`FrameInfo::partial`] guest entries hold references.
pub(super) const PARTIAL: u8 = 1 << 2;
/// Flag: a bounded pin or unpin in progress holds a type and a total
/// reference on the frame (the root of its chain of partial tables).
pub(super) const OP_REF: u8 = 1 << 3;
/// Flag: a device (non-RAM) frame delegated to a driver domain (IO-0,
/// `Mm::delegate_io`), for a device frame the table has a record of. An
/// entry naming it holds no reference, and releasing that entry must know
/// so in O(1): while set, the frame is not idle (it cannot change hands,
/// so it stays the hypervisor's and never has a count), and `Mm::put_data`
/// finds a zero count in the record it loads anyway, where this bit is
/// asserted. The list of delegated frames stays the authority; the audit
/// checks the two agree.
pub(super) const DEVICE: u8 = 1 << 4;

/// One frame's accounting. 24 bytes; the table has one per frame of RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameInfo {
    pub(super) owner: Owner,
    pub(super) ty: FrameType,
    pub(super) flags: u8,
    /// vCPUs that have this frame loaded as their root.
    pub(super) loaded: u16,
    /// References the hypervisor itself holds: it reads or writes the frame
    /// on its owner's behalf outside any one hypercall (shared info today;
    /// grant and ring pages next). See `Mm::hold`.
    pub(super) held: u16,
    /// For a [`PARTIAL`] table: how many of its first guest entries hold
    /// references (validated so far by a pin, or not yet released by an
    /// unpin). 0 otherwise.
    pub(super) partial: u16,
    pub(super) type_count: u32,
    pub(super) total_count: u32,
    /// The TLB epoch in which a reference to this frame was last dropped;
    /// 0 = never (see `Mm::take_flush_request`).
    pub(super) dropped_epoch: u32,
}

impl FrameInfo {
    /// Who owns the frame.
    pub const fn owner(&self) -> Owner {
        self.owner
    }
    /// Its current type.
    pub const fn frame_type(&self) -> FrameType {
        self.ty
    }
    /// References that depend on the type (entries one level up, writable
    /// L1 entries, or the pin).
    pub const fn type_count(&self) -> u32 {
        self.type_count
    }
    /// All references: every present entry of a validated table that points
    /// here, plus the pin.
    pub const fn total_count(&self) -> u32 {
        self.total_count
    }
    /// Whether the owner pinned it.
    pub const fn pinned(&self) -> bool {
        self.flags & PINNED != 0
    }
    /// How many vCPUs run on it as their root.
    pub const fn loaded(&self) -> u16 {
        self.loaded
    }
    /// For a `Special` frame: whether the owner may map it writable.
    pub const fn special_writable(&self) -> bool {
        self.flags & SPECIAL_WRITABLE != 0
    }
    /// Whether a bounded pin or unpin is half way through this table
    /// (MMU-35): then only [`FrameInfo::partial_entries`] of its entries are
    /// validated, and every other operation on it is refused.
    pub const fn is_partial(&self) -> bool {
        self.flags & PARTIAL != 0
    }
    /// For a partial table, its first entries that hold references.
    pub const fn partial_entries(&self) -> usize {
        self.partial as usize
    }
    /// Whether an unfinished pin or unpin holds a reference on it.
    pub const fn held_by_operation(&self) -> bool {
        self.flags & OP_REF != 0
    }
    /// The page-table level, if it is a table in use.
    pub fn table_level(&self) -> Option<Level> {
        if self.type_count == 0 {
            return None;
        }
        self.ty.level()
    }
    /// References the hypervisor holds on it (`Mm::hold`): while any is
    /// held the frame cannot change hands and cannot become a page table.
    pub const fn held(&self) -> u16 {
        self.held
    }
    /// Nothing refers to it (no page-table entry, pin, loaded root or
    /// hypervisor hold), it has no type and is not a delegated device
    /// frame: it may change hands.
    pub const fn idle(&self) -> bool {
        self.type_count == 0
            && self.total_count == 0
            && self.loaded == 0
            && self.held == 0
            && self.flags & (PINNED | PARTIAL | OP_REF | DEVICE) == 0
    }

    /// Nobody's: a frame in the allocator's pool, which
    /// `Mm::adopt_leaves` may hand to a domain. Such a frame is always
    /// idle, untyped, with no flags: it became nobody's only through
    /// `Mm::assign` (or `Mm::new`), which wants it idle and clears its type
    /// and flags, and nothing takes a reference on, loads, holds or
    /// delegates a frame of nobody's (every such step wants the frame
    /// owned, MMU-7); the audit checks it. So the owner is the one test
    /// made here (it runs once per frame of a build), the rest asserted in
    /// debug builds.
    #[inline(always)]
    pub(super) fn fresh(&self) -> bool {
        let free = matches!(self.owner, Owner::Free);
        debug_assert!(
            !free || (self.idle() && self.ty == FrameType::None && self.flags == 0),
            "a frame of nobody's in use: {self:?}"
        );
        free
    }

    /// The accounting fields that a refused operation must leave unchanged
    /// (everything but the TLB bookkeeping).
    pub const fn view(&self) -> FrameView {
        FrameView {
            owner: self.owner,
            ty: self.ty,
            type_count: self.type_count,
            total_count: self.total_count,
            pinned: self.pinned(),
            loaded: self.loaded,
            held: self.held,
        }
    }
}

/// A snapshot of one frame's accounting, for tests and audits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameView {
    /// Who owns it.
    pub owner: Owner,
    /// Its type.
    pub ty: FrameType,
    /// Its type count.
    pub type_count: u32,
    /// Its total count.
    pub total_count: u32,
    /// Whether it is pinned.
    pub pinned: bool,
    /// How many vCPUs have it loaded as root.
    pub loaded: u16,
    /// References the hypervisor holds.
    pub held: u16,
}
