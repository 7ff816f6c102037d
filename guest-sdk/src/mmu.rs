//! The MMU family (`MMU-22`..`MMU-29`): page-table updates, pinning, the
//! root switch, TLB invalidation, frame records. Names follow the ABI:
//! `Hypercall::MmuUpdate` is `abi::mmu::Update` is [`update`]. The
//! page-table API built on these (the self-map, the batching `Mapper`) is
//! [`crate::paging`].
//!
//! Every argument is placed by the ABI's `encode`; only the pointers to the
//! caller's own buffers are taken here (the hypervisor checks them, `CALL-4`).
#![forbid(unsafe_code)]

use hypercall_abi::mmu::{self, FrameRecord, MmuUpdate};
use hypercall_abi::Error;

use crate::paging::Level;
use crate::raw;

pub use hypercall_abi::mmu::{FrameType, MMU_BATCH_MAX};

/// A refused `mmu_update` batch: `done` entries were applied, the entry at
/// index `done` failed with `error` (`MMU-22b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchError {
    /// Entries applied.
    pub done: usize,
    /// Why the next one was refused.
    pub error: Error,
}

impl From<BatchError> for Error {
    fn from(b: BatchError) -> Error {
        b.error
    }
}

/// `mmu_update` (`MMU-22`): applies `updates` in order, at most
/// [`MMU_BATCH_MAX`] (more is refused by the hypervisor with nothing done).
pub fn update(updates: &[MmuUpdate]) -> Result<(), BatchError> {
    let mut done = 0u64;
    let r = raw::invoke(&mmu::Update {
        reqs: updates.as_ptr() as u64,
        count: updates.len() as u64,
        done: &raw mut done as u64,
    });
    match r {
        Ok(_) => Ok(()),
        Err(error) => Err(BatchError {
            // MMU-22b: `done` <= count, which is a slice length, so it fits.
            done: usize::try_from(done).unwrap_or(usize::MAX),
            error,
        }),
    }
}

/// `mmu_pin` (`MMU-23`).
pub fn pin(mfn: u64, level: Level) -> Result<(), Error> {
    raw::invoke(&mmu::Pin {
        mfn,
        level: level as u64,
    })
    .map(drop)
}

/// `mmu_unpin` (`MMU-24`).
pub fn unpin(mfn: u64) -> Result<(), Error> {
    raw::invoke(&mmu::Unpin { mfn }).map(drop)
}

/// `mmu_switch_root` (`MMU-25`): continue in the address space of the pinned
/// L4 `mfn`. For [`crate::paging`] to work there, it must carry
/// [`crate::paging::self_entry`] at [`crate::paging::RECURSIVE_SLOT`], and
/// it must map the code, stack and data the guest uses.
pub fn switch_root(mfn: u64) -> Result<(), Error> {
    raw::invoke(&mmu::SwitchRoot { mfn }).map(drop)
}

/// `mmu_invlpg` (`MMU-26`).
pub fn invlpg(va: u64) -> Result<(), Error> {
    raw::invoke(&mmu::Invlpg { va }).map(drop)
}

/// `mmu_flush_tlb` (`MMU-27`).
pub fn flush_tlb() -> Result<(), Error> {
    raw::invoke(&mmu::FlushTlb {}).map(drop)
}

/// `update_va_mapping` (`MMU-28`): sets the leaf entry of `va` in the loaded
/// address space to `val`, invalidating `va` afterwards when `invlpg`.
pub fn update_va_mapping(va: u64, val: u64, invlpg: bool) -> Result<(), Error> {
    raw::invoke(&mmu::UpdateVaMapping { va, val, invlpg }).map(drop)
}

/// `mmu_frame_info` (`MMU-29`): the frame table's record of one of our frames.
pub fn frame_info(mfn: u64) -> Result<FrameRecord, Error> {
    let mut info = FrameRecord::default();
    raw::invoke(&mmu::FrameInfo {
        mfn,
        out: &raw mut info as u64,
    })?;
    Ok(info)
}
