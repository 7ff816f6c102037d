//! The grant family (`GNT-*`, `docs/abi/grant.md`): the hypercalls over the
//! one grant table set in the hypervisor (`tahoma_core::grant`). The rules
//! live there, host-tested; this file moves words and bytes.
//!
//! * `grant_map` installs the grantee's page-table entry itself
//!   (`Mm::map_foreign`), after the table took a hold on the frame; the
//!   entry's place is recorded in the mapping, for `grant_unmap` and the
//!   frame audit.
//! * `grant_unmap` clears that entry if it still maps the frame, releases
//!   the hold, and flushes the TLB before the caller runs again, so no
//!   stale translation outlives the mapping.
//! * `grant_copy` reads the batch once, checks each element in full before
//!   any byte of it moves, copies frame to frame through the direct map,
//!   and writes each element's status back (GNT-5).
#![forbid(unsafe_code)]

use crate::guestmem::{self, GuestRange};
use crate::hv::Hv;
use crate::mem;
use hypercall_abi::event::DOMID_SELF;
use hypercall_abi::grant::{
    CopyOp as AbiCopyOp, CopyPtr as AbiCopyPtr, ACCESS_AT_REF, ACCESS_READONLY, COPY_BATCH_MAX,
    MAP_READONLY,
};
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;
use tahoma_core::grant::{CopyOp, CopyPtr, GrantError, MapHandle, FRAME_SIZE};
use zerocopy::IntoBytes;

/// [`COPY_BATCH_MAX`] as an array length.
#[allow(clippy::cast_possible_truncation)]
const BATCH: usize = COPY_BATCH_MAX as usize;
const _: () = assert!(BATCH as u64 == COPY_BATCH_MAX);

/// A domain id from a guest word: one that cannot name a domain is
/// `NotFound`, like a domain that does not exist.
fn domain(word: u64) -> Result<DomId, Error> {
    DomId::try_from(word).map_err(|_| Error::NotFound)
}

/// A grant reference from a guest word (`NotFound` beyond any table).
fn reference(word: u64) -> Result<u32, Error> {
    u32::try_from(word).map_err(|_| Error::NotFound)
}

fn gnt(e: GrantError) -> Error {
    e.abi()
}

/// GNT-1.
pub(crate) fn access(hv: &mut Hv, cur: DomId, a: abi::grant::Access) -> Result<u64, Error> {
    let grantee = if a.grantee == DOMID_SELF {
        cur
    } else {
        domain(a.grantee)?
    };
    let at = if a.flags & ACCESS_AT_REF != 0 {
        Some(reference(a.gref)?)
    } else {
        None
    };
    let readonly = a.flags & ACCESS_READONLY != 0;
    hv.grants
        .grant_access_at(&hv.memory.mm, cur, grantee, a.mfn, readonly, at)
        .map(u64::from)
        .map_err(gnt)
}

/// GNT-2.
pub(crate) fn revoke(hv: &mut Hv, cur: DomId, a: abi::grant::Revoke) -> Result<u64, Error> {
    hv.grants
        .revoke(cur, reference(a.gref)?)
        .map(|_| 0)
        .map_err(gnt)
}

/// GNT-3: the table takes the hold, then the entry is installed; a refused
/// entry gives the hold back, so nothing changed.
pub(crate) fn map(hv: &mut Hv, cur: DomId, a: abi::grant::Map) -> Result<u64, Error> {
    let granter = domain(a.granter)?;
    let gref = reference(a.gref)?;
    let writable = a.flags & MAP_READONLY == 0;
    let root = hv.space(cur)?.root >> 12;
    let Hv { grants, memory, .. } = hv;
    let h = grants
        .map(&mut memory.mm, cur, granter, gref, writable)
        .map_err(gnt)?;
    let mfn = grants
        .mapping(cur, h)
        .map(|m| m.mfn)
        .ok_or(Error::NotFound)?;
    match memory
        .mm
        .map_foreign(&mut mem::DirectMap, cur, root, a.va, mfn, writable)
    {
        Ok((l1, index)) => {
            grants.set_entry(cur, h, l1, index).map_err(gnt)?;
            Ok(u64::from(h.0))
        }
        Err(e) => {
            if let Err(u) = grants.unmap(&mut memory.mm, cur, h) {
                mem::inconsistency(
                    mfn,
                    format_args!("undoing a refused grant map of domain {cur}: {u:?}"),
                );
            }
            Err(e.into())
        }
    }
}

/// GNT-4.
pub(crate) fn unmap(hv: &mut Hv, cur: DomId, a: abi::grant::Unmap) -> Result<u64, Error> {
    let handle = MapHandle(u32::try_from(a.handle).map_err(|_| Error::NotFound)?);
    let m = hv.grants.mapping(cur, handle).ok_or(Error::NotFound)?;
    if let Some((l1, index)) = m.entry {
        hv.memory
            .mm
            .unmap_foreign(&mut mem::DirectMap, cur, l1, index, m.mfn)?;
    }
    let Hv { grants, memory, .. } = hv;
    let u = grants.unmap(&mut memory.mm, cur, handle).map_err(gnt)?;
    // The caller may have cached the translation, through this entry or
    // one it wrote over it: gone before it runs again.
    hv.flush_tlb();
    if u.free_now {
        hv.sweep_orphans();
    }
    Ok(0)
}

/// One side of an element in the table's terms; `Err` is the element's
/// status.
fn pointer(p: AbiCopyPtr) -> Result<CopyPtr, GrantError> {
    // An offset past the frame cannot be in it.
    let offset = u16::try_from(p.offset)
        .ok()
        .filter(|&o| usize::from(o) <= FRAME_SIZE)
        .ok_or(GrantError::OutOfPage)?;
    if p.domain == DOMID_SELF {
        return Ok(CopyPtr::Local {
            mfn: p.frame,
            offset,
        });
    }
    let granter = DomId::try_from(p.domain).map_err(|_| GrantError::UnknownDomain(0))?;
    let gref = u32::try_from(p.frame).map_err(|_| GrantError::BadRef(u32::MAX))?;
    Ok(CopyPtr::Granted {
        granter,
        gref,
        offset,
    })
}

fn element(op: &AbiCopyOp) -> Result<CopyOp, GrantError> {
    let len = u16::try_from(op.len)
        .ok()
        .filter(|&l| usize::from(l) <= FRAME_SIZE)
        .ok_or(GrantError::OutOfPage)?;
    Ok(CopyOp {
        src: pointer(op.src)?,
        dst: pointer(op.dst)?,
        len,
    })
}

/// GNT-5: the batch is read once into hypervisor memory; each element is
/// checked in full, then copied; statuses go back with the array.
pub(crate) fn copy(hv: &mut Hv, cur: DomId, a: abi::grant::Copy) -> Result<u64, Error> {
    let abi::grant::Copy { ops, count } = a;
    let size = core::mem::size_of::<AbiCopyOp>() as u64;
    let range = GuestRange::new(ops, count * size, COPY_BATCH_MAX * size)?;
    // The statuses are written back: the array must be writable, checked
    // before any element is looked at.
    guestmem::check(&hv.space(cur)?, range, true)?;
    // Room for the longest batch, but only `count` elements zeroed before
    // they are read (an array of `BATCH` was zeroed whole on every call).
    let n = usize::try_from(count).map_err(|_| Error::InvalidArgument)?;
    let mut buf: heapless::Vec<AbiCopyOp, BATCH> = heapless::Vec::new();
    buf.resize_default(n).map_err(|()| Error::InvalidArgument)?;
    let batch = buf.as_mut_slice();
    guestmem::copy_from(&hv.space(cur)?, range, batch.as_mut_bytes())?;
    for op in batch.iter_mut() {
        let r = element(op).and_then(|e| hv.grants.check_copy(&hv.memory.mm, cur, &e));
        op.status = match r {
            Ok(plan) => {
                // Checked: `offset + len <= 4096` on both sides, the frames
                // are the ones the caller may read and write. One copy,
                // frame to frame through the direct map (as Xen's
                // GNTTABOP_copy); the two ranges may overlap when both
                // name the same frame, and the copy allows it.
                let (src, src_off) = plan.src;
                let (dst, dst_off) = plan.dst;
                mem::copy_phys(
                    (src << 12) + src_off as u64,
                    (dst << 12) + dst_off as u64,
                    plan.len,
                );
                0
            }
            Err(e) => -i32::from(e.abi().code()),
        };
    }
    // The array was writable when checked and nothing ran since but these
    // copies, which cannot change the caller's page tables.
    guestmem::copy_to(&hv.space(cur)?, ops, batch.as_bytes())?;
    Ok(count)
}
