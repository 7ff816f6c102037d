//! The backend's grant and interrupt calls, through the SDK's family
//! modules (`guest_sdk::grant`, `GNT-3`..`GNT-5`; `guest_sdk::io`, `IO-1`).
#![allow(unsafe_code)] // `copy_into_dma`: one block, with its SAFETY note.

use guest_sdk::abi::grant::CopyOp;
use guest_sdk::grant::{self, GrantRef, MapHandle};
use guest_sdk::paging::{self, Flags};
use guest_sdk::{DomId, Error};

/// Maps grant `gref` of domain `frontend` writable at `va` (`GNT-3`).
pub fn map_ring(frontend: u16, gref: u32, va: u64) -> Result<MapHandle, Error> {
    grant::map(DomId(frontend), GrantRef(gref), va, false)
}

/// Unmaps a ring mapped by [`map_ring`] (`GNT-4`).
pub fn unmap(h: MapHandle) -> Result<(), Error> {
    grant::unmap(h).map_err(|(_, e)| e)
}

/// `grant_copy` of `ops`, whose destinations are all the frontend's grants
/// (`GNT-5`): the batch's result (each element's status is written back).
pub fn copy_to_grants(ops: &mut [CopyOp]) -> Result<u64, Error> {
    grant::copy(ops).map(|()| ops.len() as u64)
}

/// `grant_copy` of `ops`, whose destinations are all frames of a request
/// slot's data buffer in the DMA region (`dev::Disk::buffer`).
pub fn copy_into_dma(ops: &mut [CopyOp]) -> Result<u64, Error> {
    // SAFETY: `copy_unchecked` asks that no destination frame of ours holds
    // a Rust object the copy could change under its owner: every
    // destination here is a page of an idle request slot's data buffer in
    // the DMA region (`blkback::plan_copies` with the slot's machine
    // address), which only the device and raw-pointer accesses of `dev`
    // touch, and never while the slot is idle.
    unsafe { grant::copy_unchecked(ops) }.map(|()| ops.len() as u64)
}

/// `io_irq_ack` (`IO-1`): the device's interrupt was handled, unmask its line.
pub fn irq_ack(device: usize) -> Result<(), Error> {
    let device = u32::try_from(device).map_err(|_| Error::NotFound)?;
    guest_sdk::io::irq_ack(device)
}

/// Makes sure the page table holding `va`'s entry exists and the entry is
/// empty, as `grant_map` requires: maps a frame of ours there and unmaps it
/// (the table stays).
pub fn prepare_va(va: u64) -> Result<(), Error> {
    // Window page 0 is the image's first page: a frame of ours, mapped
    // here read-only for an instant.
    let scratch = paging::page_mfn(0).ok_or(Error::NotFound)?;
    paging::map(va, scratch, Flags::READ_ONLY)?;
    paging::unmap(va)
}
