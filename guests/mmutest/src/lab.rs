//! Helpers shared by the roles: writing fresh frames, single updates, the
//! cycle counter.
#![allow(dead_code)]

use alloc::vec::Vec;
use guest_sdk::abi::args::MmuUpdate;
use guest_sdk::paging::{self, Flags};
use guest_sdk::Error;

/// A page of the mapping region used to fill fresh frames.
pub const SCRATCH: u64 = paging::MAP_BASE + 0x4000_0000;

/// One update.
pub fn upd(ptr: u64, val: u64) -> MmuUpdate {
    MmuUpdate { ptr, val }
}

/// A batch of one.
pub fn update1(ptr: u64, val: u64) -> Result<(), Error> {
    paging::mmu_update(&[upd(ptr, val)]).map_err(|b| b.error)
}

/// Writes `entries` (index, value) into frame `mfn` through a temporary
/// writable mapping, then unmaps it (the frame is plain data meanwhile).
pub fn write_frame(mfn: u64, entries: &[(usize, u64)]) -> Result<(), Error> {
    paging::map(SCRATCH, mfn, Flags::WRITABLE)?;
    for &(i, v) in entries {
        // SAFETY: SCRATCH is mapped writable to `mfn` just above, and only
        // reached through raw pointers; `i < 512` keeps it in the page.
        unsafe { core::ptr::write_volatile((SCRATCH + (i as u64 % 512) * 8) as *mut u64, v) };
    }
    paging::unmap(SCRATCH)
}

/// Writes a whole table.
pub fn write_table(mfn: u64, entries: &[u64]) -> Result<(), Error> {
    let all: Vec<(usize, u64)> = entries.iter().copied().enumerate().collect();
    write_frame(mfn, &all)
}

/// Reads word `i` of frame `mfn` through a temporary read-only mapping.
pub fn read_frame(mfn: u64, i: usize) -> Result<u64, Error> {
    paging::map(SCRATCH, mfn, Flags::READ_ONLY)?;
    // SAFETY: mapped just above, read-only, raw pointer only.
    let v = unsafe { core::ptr::read_volatile((SCRATCH + (i as u64 % 512) * 8) as *const u64) };
    paging::unmap(SCRATCH)?;
    Ok(v)
}

/// Reads a word at `va` (mapped by the caller).
pub fn peek(va: u64) -> u64 {
    // SAFETY: the caller mapped `va` readable; raw pointer only.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// Writes a word at `va` (mapped writable by the caller).
pub fn poke(va: u64, v: u64) {
    // SAFETY: the caller mapped `va` writable; raw pointer only.
    unsafe { core::ptr::write_volatile(va as *mut u64, v) }
}

pub use guest_sdk::time::rdtsc;
