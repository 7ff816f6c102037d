//! The grant family (`GNT-1`..`GNT-5`, `docs/abi/grant.md`): offer one of
//! this domain's frames to one named domain, map a frame granted to this
//! domain, copy to and from grants. Names follow the ABI:
//! `Hypercall::GrantAccess` is `abi::grant::Access` is [`grant_access`].
//!
//! What the types promise: a [`GrantRef`] is a reference in *this*
//! domain's table (revoke it with [`revoke`]); a [`MapHandle`] is a
//! mapping this domain holds, not `Copy`, consumed by [`unmap`], so safe
//! code cannot unmap twice. Which frames a domain may grant, map or copy is
//! the hypervisor's business (it refuses the rest with a documented error);
//! the SDK's business is that no safe function can cause undefined
//! behaviour in this guest:
//!
//! * [`map`] puts a page where nothing was mapped (the hypervisor refuses a
//!   present entry, `GNT-3d`), so no Rust object changes under anyone's
//!   feet. The page is shared: read it only with volatile or atomic
//!   accesses (e.g. `ring::RingPage`).
//! * A copy into a grant ([`copy`], [`copy_to_granted`]) writes another
//!   domain's frame, never this domain's memory; reading a grant into a
//!   buffer ([`copy_from_granted`]) writes only that `&mut [u8]`. A copy
//!   into one of this domain's own frames by number can overwrite anything
//!   it owns (its stack, its code), so it is [`copy_unchecked`], `unsafe`.
#![deny(unsafe_code)]

use hypercall_abi::grant::{self as g, CopyPtr};
use hypercall_abi::Error;

use crate::event::DomId;
use crate::raw;

pub use hypercall_abi::grant::{CopyOp, COPY_BATCH_MAX, MAX_GRANTS, WELL_KNOWN_REFS};

/// A reference in this domain's grant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantRef(pub u32);

/// A grant mapping this domain holds: where the page is, and the handle
/// [`unmap`] takes back.
#[derive(Debug, PartialEq, Eq)]
pub struct MapHandle {
    handle: u32,
    va: u64,
}

impl MapHandle {
    /// Where the granted page is mapped.
    pub fn va(&self) -> u64 {
        self.va
    }

    /// The hypervisor's handle.
    pub fn handle(&self) -> u32 {
        self.handle
    }
}

/// A word the hypervisor returned as a reference or handle (`< 2^32`).
fn word32(v: u64) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument)
}

/// `grant_access` (`GNT-1`): offers this domain's frame `mfn` to `grantee`,
/// read-only or writable; the lowest free reference from
/// [`WELL_KNOWN_REFS`] up.
pub fn grant_access(mfn: u64, grantee: DomId, readonly: bool) -> Result<GrantRef, Error> {
    access(mfn, grantee, readonly, None)
}

/// `grant_access` (`GNT-1d`) at reference `at`, which must be free (a
/// well-known reference, such as `i` for the ring of virtual disk `i`).
pub fn grant_access_at(
    mfn: u64,
    grantee: DomId,
    readonly: bool,
    at: GrantRef,
) -> Result<GrantRef, Error> {
    access(mfn, grantee, readonly, Some(at))
}

fn access(
    mfn: u64,
    grantee: DomId,
    readonly: bool,
    at: Option<GrantRef>,
) -> Result<GrantRef, Error> {
    let flags = if readonly { g::ACCESS_READONLY } else { 0 }
        | if at.is_some() { g::ACCESS_AT_REF } else { 0 };
    raw::invoke(&g::Access {
        mfn,
        grantee: u64::from(grantee.0),
        flags,
        gref: at.map_or(0, |r| u64::from(r.0)),
    })
    .and_then(word32)
    .map(GrantRef)
}

/// `grant_revoke` (`GNT-2`): refused with `wrong_state` while mapped.
pub fn revoke(gref: GrantRef) -> Result<(), Error> {
    raw::invoke(&g::Revoke {
        gref: u64::from(gref.0),
    })
    .map(drop)
}

/// `grant_map` (`GNT-3`): maps `granter`'s grant `gref` at `va`
/// (page-aligned; its L1 table must exist and the entry be empty).
pub fn map(granter: DomId, gref: GrantRef, va: u64, readonly: bool) -> Result<MapHandle, Error> {
    let h = raw::invoke(&g::Map {
        granter: u64::from(granter.0),
        gref: u64::from(gref.0),
        va,
        flags: if readonly { g::MAP_READONLY } else { 0 },
    })
    .and_then(word32)?;
    Ok(MapHandle { handle: h, va })
}

/// `grant_unmap` (`GNT-4`). A refusal gives the handle back.
pub fn unmap(h: MapHandle) -> Result<(), (MapHandle, Error)> {
    match raw::invoke(&g::Unmap {
        handle: u64::from(h.handle),
    }) {
        Ok(_) => Ok(()),
        Err(e) => Err((h, e)),
    }
}

/// `grant_copy` (`GNT-5`) of `ops`, whose destinations must all be grants
/// (`InvalidArgument` before any call otherwise: see [`copy_unchecked`]).
/// Any length, in batches of [`COPY_BATCH_MAX`]; each element's status is
/// in its `status` ([`CopyOp::result`]). `Err` only for a batch refused as
/// a whole.
pub fn copy(ops: &mut [CopyOp]) -> Result<(), Error> {
    if ops
        .iter()
        .any(|op| op.dst.domain == crate::abi::args::DOMID_SELF)
    {
        return Err(Error::InvalidArgument);
    }
    copy_batches(ops)
}

/// [`copy`] allowing this domain's own frames as destinations.
///
/// # Safety
///
/// Every destination frame of this domain's named in `ops` must be one no
/// Rust object lives in (or one the caller may overwrite byte for byte
/// under `offset..offset + len`): the hypervisor writes it as if through a
/// raw pointer.
#[allow(unsafe_code)] // the declaration only: the obligation is the caller's
pub unsafe fn copy_unchecked(ops: &mut [CopyOp]) -> Result<(), Error> {
    copy_batches(ops)
}

fn copy_batches(ops: &mut [CopyOp]) -> Result<(), Error> {
    for chunk in ops.chunks_mut(crate::usize_const(COPY_BATCH_MAX)) {
        raw::invoke(&g::Copy {
            ops: chunk.as_mut_ptr() as u64,
            count: chunk.len() as u64,
        })?;
    }
    Ok(())
}

/// Pieces of a buffer at `va`, `len` bytes, split at page boundaries:
/// (mfn, offset in the frame, offset in the buffer, length).
fn pieces(va: u64, len: usize, mut f: impl FnMut(u64, u64, usize, usize)) -> Result<(), Error> {
    let mut done = 0usize;
    while done < len {
        let at = va + done as u64;
        let in_page = 4096 - (at & 0xfff);
        let n = (len - done).min(usize::try_from(in_page).unwrap_or(4096));
        let (mfn, _) = crate::paging::translate(at).ok_or(Error::BadAddress)?;
        f(mfn, at & 0xfff, done, n);
        done += n;
    }
    Ok(())
}

/// Reads `dst.len()` bytes at `offset` of `granter`'s grant `gref` into
/// `dst` (`GNT-5`): one element per page `dst` touches; the first refused
/// element's error.
pub fn copy_from_granted(
    granter: DomId,
    gref: GrantRef,
    offset: u64,
    dst: &mut [u8],
) -> Result<(), Error> {
    let mut ops = [CopyOp::default(); 3];
    let mut n = 0;
    if dst.len() > 4096 {
        return Err(Error::InvalidArgument);
    }
    pieces(dst.as_mut_ptr() as u64, dst.len(), |mfn, off, at, len| {
        ops[n] = CopyOp {
            src: CopyPtr::granted(u64::from(granter.0), u64::from(gref.0), offset + at as u64),
            dst: CopyPtr::own(mfn, off),
            len: u32::try_from(len).unwrap_or(u32::MAX),
            status: 0,
        };
        n += 1;
    })?;
    // The destination is `dst`, exclusively borrowed for the call: the
    // hypervisor writes only its bytes.
    copy_batches(&mut ops[..n])?;
    ops[..n].iter().try_for_each(CopyOp::result)
}

/// Writes `src` at `offset` of `granter`'s grant `gref` (`GNT-5`).
pub fn copy_to_granted(
    granter: DomId,
    gref: GrantRef,
    offset: u64,
    src: &[u8],
) -> Result<(), Error> {
    let mut ops = [CopyOp::default(); 3];
    let mut n = 0;
    if src.len() > 4096 {
        return Err(Error::InvalidArgument);
    }
    pieces(src.as_ptr() as u64, src.len(), |mfn, off, at, len| {
        ops[n] = CopyOp {
            src: CopyPtr::own(mfn, off),
            dst: CopyPtr::granted(u64::from(granter.0), u64::from(gref.0), offset + at as u64),
            len: u32::try_from(len).unwrap_or(u32::MAX),
            status: 0,
        };
        n += 1;
    })?;
    copy(&mut ops[..n])?;
    ops[..n].iter().try_for_each(CopyOp::result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{err, ok, Fake};
    use hypercall_abi::Hypercall;

    #[test]
    fn access_places_flags_and_reference() {
        let f = Fake::script(&[ok(16), ok(3), err(Error::WrongState)]);
        assert_eq!(grant_access(0x1234, DomId(2), true), Ok(GrantRef(16)));
        assert_eq!(
            grant_access_at(0x1234, DomId(2), false, GrantRef(3)),
            Ok(GrantRef(3))
        );
        assert_eq!(
            grant_access_at(0x1234, DomId(2), false, GrantRef(3)),
            Err(Error::WrongState)
        );
        assert_eq!(
            f.calls(),
            vec![
                (Hypercall::GrantAccess, [0x1234, 2, 1, 0, 0, 0]),
                (Hypercall::GrantAccess, [0x1234, 2, 2, 3, 0, 0]),
                (Hypercall::GrantAccess, [0x1234, 2, 2, 3, 0, 0]),
            ]
        );
    }

    #[test]
    fn a_result_beyond_32_bits_is_not_a_reference() {
        let _f = Fake::script(&[ok(1 << 32)]);
        assert_eq!(grant_access(1, DomId(2), true), Err(Error::InvalidArgument));
    }

    #[test]
    fn map_and_unmap_carry_the_handle_and_give_it_back_on_refusal() {
        let f = Fake::script(&[ok(7), err(Error::WrongState), ok(0)]);
        let h = map(DomId(3), GrantRef(16), 0x80_0000, true).unwrap();
        assert_eq!((h.handle(), h.va()), (7, 0x80_0000));
        let (h, e) = unmap(h).unwrap_err();
        assert_eq!(e, Error::WrongState);
        assert_eq!(unmap(h), Ok(()));
        assert_eq!(
            f.calls(),
            vec![
                (Hypercall::GrantMap, [3, 16, 0x80_0000, 1, 0, 0]),
                (Hypercall::GrantUnmap, [7, 0, 0, 0, 0, 0]),
                (Hypercall::GrantUnmap, [7, 0, 0, 0, 0, 0]),
            ]
        );
        drop(f);
        let f = Fake::script(&[ok(0)]);
        assert_eq!(revoke(GrantRef(17)), Ok(()));
        assert_eq!(
            f.calls(),
            vec![(Hypercall::GrantRevoke, [17, 0, 0, 0, 0, 0])]
        );
    }

    #[test]
    fn safe_copy_refuses_own_destinations_without_a_call() {
        let f = Fake::script(&[]);
        let mut ops = [CopyOp {
            src: CopyPtr::granted(2, 16, 0),
            dst: CopyPtr::own(0x55, 0),
            len: 8,
            status: 0,
        }];
        assert_eq!(copy(&mut ops), Err(Error::InvalidArgument));
        assert!(f.calls().is_empty());
    }

    #[test]
    fn copy_goes_in_batches_of_64_and_reads_statuses() {
        let f = Fake::install(|call, args, _| {
            assert_eq!(call, Some(Hypercall::GrantCopy));
            ok(args[1])
        });
        let mut ops = vec![
            CopyOp {
                src: CopyPtr::own(1, 0),
                dst: CopyPtr::granted(2, 16, 0),
                len: 8,
                status: 0,
            };
            150
        ];
        ops[149].status = -(i32::from(Error::PermissionDenied.code()));
        assert_eq!(copy(&mut ops), Ok(()));
        let counts: Vec<u64> = f.calls().iter().map(|c| c.1[1]).collect();
        assert_eq!(counts, vec![64, 64, 22]);
        let base = ops.as_ptr() as u64;
        assert_eq!(f.calls()[1].1[0], base + 64 * 56);
        assert_eq!(ops[149].result(), Err(Error::PermissionDenied));
        assert_eq!(ops[0].result(), Ok(()));
    }

    #[test]
    fn a_batch_refused_as_a_whole_stops_the_rest() {
        let f = Fake::script(&[err(Error::BadAddress)]);
        let mut ops = vec![CopyOp::default(); 100];
        for op in &mut ops {
            op.dst = CopyPtr::granted(2, 16, 0);
        }
        assert_eq!(copy(&mut ops), Err(Error::BadAddress));
        assert_eq!(f.calls().len(), 1);
    }

    #[test]
    fn buffers_need_a_translation_and_a_page_at_most() {
        let f = Fake::script(&[]);
        let mut big = vec![0u8; 4097];
        assert_eq!(
            copy_from_granted(DomId(2), GrantRef(16), 0, &mut big),
            Err(Error::InvalidArgument)
        );
        // No page tables on the host: the buffer cannot be translated.
        let mut small = [0u8; 8];
        assert_eq!(
            copy_from_granted(DomId(2), GrantRef(16), 0, &mut small),
            Err(Error::BadAddress)
        );
        assert_eq!(
            copy_to_granted(DomId(2), GrantRef(16), 0, &small),
            Err(Error::BadAddress)
        );
        assert!(f.calls().is_empty());
    }
}
