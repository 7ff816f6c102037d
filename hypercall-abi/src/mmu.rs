//! The MMU family (`MMU-*`): direct paging with validated page tables.
//!
//! Frames are named by their machine frame number (`mfn`) everywhere.

use crate::call::{plain, Args, Words};
use crate::layout::GUEST_VA_TOP;
use crate::Error;

/// One entry of an `mmu_update` batch (`MMU-22`): store `val` in the
/// page-table entry at machine address `ptr` (8-byte aligned; the low 3 bits
/// are reserved and must be 0).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::KnownLayout,
    zerocopy::Immutable,
)]
#[repr(C)]
pub struct MmuUpdate {
    /// Machine address of the entry: `mfn << 12 | index * 8`.
    pub ptr: u64,
    /// The new entry.
    pub val: u64,
}

const _: () = assert!(core::mem::size_of::<MmuUpdate>() == 16);

/// Most entries one `mmu_update` call takes (`MMU-22`).
pub const MMU_BATCH_MAX: u64 = 512;

/// A frame's record in the frame table, as `mmu_frame_info` reports it
/// (`MMU-29`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::KnownLayout,
    zerocopy::Immutable,
)]
#[repr(C)]
pub struct FrameRecord {
    /// [`FrameType`] as a number.
    pub page_type: u32,
    /// [`FRAME_PINNED`], [`FRAME_LOADED`], [`FRAME_HELD`], [`FRAME_PARTIAL`].
    pub flags: u32,
    /// References that depend on the type.
    pub type_count: u64,
    /// All references.
    pub total_count: u64,
}

/// `FrameRecord::flags`: the owner pinned the frame.
pub const FRAME_PINNED: u32 = 1 << 0;
/// `FrameRecord::flags`: the frame is a loaded root.
pub const FRAME_LOADED: u32 = 1 << 1;
/// `FrameRecord::flags`: the hypervisor holds the frame (it reads or writes
/// it on the domain's behalf, e.g. shared info): it cannot be released or
/// become a page table (`MEM-8`).
pub const FRAME_HELD: u32 = 1 << 2;
/// `FrameRecord::flags`: the frame is a table half way through a pin or unpin
/// that was preempted (`MMU-36`); only some of its entries hold references.
pub const FRAME_PARTIAL: u32 = 1 << 3;

/// A frame's type (`MMU-1`): the one frame-type enum of the ABI, the
/// frame table and the hypervisor. One byte in memory (the frame table has
/// one record per frame of RAM); on the wire it travels as the `u32`
/// `FrameRecord::page_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum FrameType {
    /// No constraining use.
    #[default]
    None = 0,
    /// Level-1 table.
    L1 = 1,
    /// Level-2 table.
    L2 = 2,
    /// Level-3 table.
    L3 = 3,
    /// Level-4 table.
    L4 = 4,
    /// Mapped writable.
    Writable = 5,
    /// Shared by the hypervisor (e.g. shared info).
    Special = 6,
}

/// `update_va_mapping` flag: invalidate the address's TLB entry afterwards.
pub const UVM_INVLPG: u64 = 1;

/// `mmu_update` (`MMU-22`): applies `count` [`MmuUpdate`]s read from `reqs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Update {
    /// Guest address of the batch.
    pub reqs: u64,
    /// Entries in the batch, at most [`MMU_BATCH_MAX`].
    pub count: u64,
    /// Guest address where the count applied is written, or 0.
    pub done: u64,
}

impl Args for Update {
    const USED: usize = 3;

    fn encode(&self) -> Words {
        [self.reqs, self.count, self.done, 0, 0, 0]
    }

    /// `MMU-22`: more than [`MMU_BATCH_MAX`] entries is `InvalidArgument`.
    fn decode(w: Words) -> Result<Self, Error> {
        if w[1] > MMU_BATCH_MAX {
            return Err(Error::InvalidArgument);
        }
        Ok(Update {
            reqs: w[0],
            count: w[1],
            done: w[2],
        })
    }
}

plain! {
    /// `mmu_pin` (`MMU-23`): validates table `mfn` as a table of `level`
    /// (1 to 4; the validator refuses others) and pins it.
    Pin {
        /// The table's machine frame number.
        mfn,
        /// Its level, 1 (L1) to 4 (L4).
        level,
    }
}

plain! {
    /// `mmu_unpin` (`MMU-24`).
    Unpin {
        /// The pinned table's machine frame number.
        mfn,
    }
}

plain! {
    /// `mmu_switch_root` (`MMU-25`): loads pinned L4 `mfn`.
    SwitchRoot {
        /// The pinned L4's machine frame number.
        mfn,
    }
}

/// `mmu_invlpg` (`MMU-26`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Invlpg {
    /// A guest virtual address.
    pub va: u64,
}

impl Args for Invlpg {
    const USED: usize = 1;

    fn encode(&self) -> Words {
        [self.va, 0, 0, 0, 0, 0]
    }

    /// `MMU-26`: an address in the hypervisor's half is `InvalidArgument`.
    fn decode(w: Words) -> Result<Self, Error> {
        if w[0] >= GUEST_VA_TOP {
            return Err(Error::InvalidArgument);
        }
        Ok(Invlpg { va: w[0] })
    }
}

plain! {
    /// `mmu_flush_tlb` (`MMU-27`): no arguments.
    FlushTlb {}
}

/// `update_va_mapping` (`MMU-28`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateVaMapping {
    /// The guest virtual address whose leaf entry is replaced.
    pub va: u64,
    /// The new entry.
    pub val: u64,
    /// [`UVM_INVLPG`]: invalidate `va` afterwards.
    pub invlpg: bool,
}

impl Args for UpdateVaMapping {
    const USED: usize = 3;

    fn encode(&self) -> Words {
        let flags = if self.invlpg { UVM_INVLPG } else { 0 };
        [self.va, self.val, flags, 0, 0, 0]
    }

    /// `MMU-28`: an undefined flag bit is `InvalidArgument`.
    fn decode(w: Words) -> Result<Self, Error> {
        if w[2] & !UVM_INVLPG != 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(UpdateVaMapping {
            va: w[0],
            val: w[1],
            invlpg: w[2] & UVM_INVLPG != 0,
        })
    }
}

plain! {
    /// `mmu_frame_info` (`MMU-29`): writes frame `mfn`'s [`FrameRecord`] at
    /// `out`.
    FrameInfo {
        /// One of the caller's machine frame numbers.
        mfn,
        /// Guest address of a [`FrameRecord`].
        out,
    }
}
