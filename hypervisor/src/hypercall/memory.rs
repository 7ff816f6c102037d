//! The memory-reservation family (`MEM-*`).
#![forbid(unsafe_code)]

use crate::guestmem::{self, GuestRange};
use crate::hv::Hv;
use crate::mem;
use hypercall_abi::memory::MEMORY_BATCH_MAX;
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;
use tahoma_core::mm::Owner;
use zerocopy::IntoBytes;

/// [`MEMORY_BATCH_MAX`] as an array length (a constant that fits).
#[allow(clippy::cast_possible_truncation)]
const BATCH: usize = MEMORY_BATCH_MAX as usize;
const _: () = assert!(BATCH as u64 == MEMORY_BATCH_MAX);

/// MEM-5: fresh, scrubbed frames within the quota, all or nothing.
pub(crate) fn populate(hv: &mut Hv, cur: DomId, a: abi::memory::Populate) -> Result<u64, Error> {
    let abi::memory::Populate { list, count } = a;
    if count > MEMORY_BATCH_MAX {
        return Err(Error::InvalidArgument);
    }
    let range = GuestRange::new(list, count * 8, MEMORY_BATCH_MAX * 8)?;
    guestmem::check(&hv.space(cur)?, range, true)?;
    let d = hv.dom(cur).ok_or(Error::NotFound)?;
    if d.frames.len() as u64 + count > d.max_pages {
        return Err(Error::NoResources);
    }
    // At most MEMORY_BATCH_MAX (the decode checked).
    let n = usize::try_from(count).map_err(|_| Error::InvalidArgument)?;
    // Room for the largest batch; no slot zeroed that is not taken.
    let mut taken: heapless::Vec<u64, BATCH> = heapless::Vec::new();
    for _ in 0..n {
        // `n` is at most BATCH, so a push cannot fail; were it to, its
        // frame goes back with the rest.
        let pushed = mem::alloc_zeroed_frame().map(|f| taken.push(f).map_err(mem::free_frame));
        if !matches!(pushed, Some(Ok(()))) {
            taken.iter().for_each(|&f| mem::free_frame(f));
            return Err(Error::NoResources);
        }
    }
    let taken = taken.as_slice();
    for &f in taken {
        // A frame fresh from the allocator is idle and nobody's.
        let _ = hv.memory.mm.assign(f, Owner::Domain(cur));
    }
    if let Err(e) = guestmem::copy_to(&hv.space(cur)?, list, taken.as_bytes()) {
        for &f in taken {
            let _ = hv.memory.mm.assign(f, Owner::Free);
            mem::free_frame(f);
        }
        return Err(e);
    }
    if let Some(d) = hv.dom(cur) {
        d.frames.extend_from_slice(taken);
    }
    Ok(count)
}

/// MEM-6: give frames back, all or nothing.
pub(crate) fn release(hv: &mut Hv, cur: DomId, a: abi::memory::Release) -> Result<u64, Error> {
    let abi::memory::Release { list, count } = a;
    if count > MEMORY_BATCH_MAX {
        return Err(Error::InvalidArgument);
    }
    let range = GuestRange::new(list, count * 8, MEMORY_BATCH_MAX * 8)?;
    // Only the batch's own slots zeroed before they are read.
    let mut buf: heapless::Vec<u64, BATCH> = heapless::Vec::new();
    buf.resize_default(usize::try_from(count).map_err(|_| Error::InvalidArgument)?)
        .map_err(|()| Error::InvalidArgument)?;
    let frames = buf.as_mut_slice();
    guestmem::copy_from(&hv.space(cur)?, range, frames.as_mut_bytes())?;
    for (i, &f) in frames.iter().enumerate() {
        let info = hv.memory.mm.frame(f).ok_or(Error::PermissionDenied)?;
        if info.owner() != Owner::Domain(cur) {
            return Err(Error::PermissionDenied);
        }
        if frames[..i].contains(&f) {
            return Err(Error::InvalidArgument);
        }
        if !info.idle() {
            return Err(Error::WrongState);
        }
    }
    for &f in frames.iter() {
        let _ = hv.memory.mm.assign(f, Owner::Free);
        mem::free_frame(f);
    }
    if let Some(d) = hv.dom(cur) {
        d.frames.retain(|f| !frames.contains(f));
    }
    Ok(count)
}

/// MEM-7: frames owned now, and the quota.
pub(crate) fn info(hv: &mut Hv, cur: DomId, a: abi::memory::Info) -> Result<u64, Error> {
    let ptr = a.out;
    let d = hv.dom(cur).ok_or(Error::NotFound)?;
    let info = [d.frames.len() as u64, d.max_pages];
    if ptr != 0 {
        guestmem::write(&hv.space(cur)?, ptr, &info)?;
    }
    Ok(info[0])
}
