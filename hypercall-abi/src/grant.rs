//! The grant family (`GNT-*`, `docs/abi/grant.md`): a domain offers one of
//! its frames to one named domain; that domain maps it or has the
//! hypervisor copy to or from it. The table lives in hypervisor memory.

use crate::call::{Args, Words};
use crate::event::DOMID_SELF;
use crate::Error;

/// Grant references a domain may hold at once (its table's size).
pub const MAX_GRANTS: u32 = 512;

/// References below this are handed out only when asked for explicitly
/// ([`ACCESS_AT_REF`]): well-known references, such as the ring page of a
/// frontend's `i`-th virtual disk at reference `i` (`BLK-*`). Automatic
/// allocation starts here.
pub const WELL_KNOWN_REFS: u32 = 16;

/// Elements in one `grant_copy` batch.
pub const COPY_BATCH_MAX: u64 = 64;

/// `grant_access` flag: the grantee may only read the frame.
pub const ACCESS_READONLY: u64 = 1 << 0;
/// `grant_access` flag: use reference `gref` (word 3) instead of the lowest
/// free automatic one; it must be free.
pub const ACCESS_AT_REF: u64 = 1 << 1;
/// `grant_map` flag: map read-only (a read-only grant must be mapped so).
pub const MAP_READONLY: u64 = 1 << 0;

/// `grant_access` (`GNT-1`): offer frame `mfn` (the caller's) to domain
/// `grantee`; the result is the grant reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Machine frame number of one of the caller's frames.
    pub mfn: u64,
    /// The one domain that may use the grant (not the caller).
    pub grantee: u64,
    /// [`ACCESS_READONLY`], [`ACCESS_AT_REF`].
    pub flags: u64,
    /// With [`ACCESS_AT_REF`]: the reference to use; otherwise 0.
    pub gref: u64,
}

impl Args for Access {
    const USED: usize = 4;

    fn encode(&self) -> Words {
        [self.mfn, self.grantee, self.flags, self.gref, 0, 0]
    }

    /// `GNT-1`: unknown flag bits, or a reference out of the table, are
    /// `InvalidArgument`.
    fn decode(w: Words) -> Result<Self, Error> {
        if w[2] & !(ACCESS_READONLY | ACCESS_AT_REF) != 0 {
            return Err(Error::InvalidArgument);
        }
        if w[2] & ACCESS_AT_REF != 0 && w[3] >= u64::from(MAX_GRANTS) {
            return Err(Error::InvalidArgument);
        }
        Ok(Access {
            mfn: w[0],
            grantee: w[1],
            flags: w[2],
            gref: w[3],
        })
    }
}

/// `grant_revoke` (`GNT-2`): ends grant `gref` of the caller's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revoke {
    /// The reference.
    pub gref: u64,
}

impl Args for Revoke {
    const USED: usize = 1;

    fn encode(&self) -> Words {
        [self.gref, 0, 0, 0, 0, 0]
    }

    /// A reference that cannot be in a table is `NotFound`, like any
    /// reference not granted.
    fn decode(w: Words) -> Result<Self, Error> {
        if w[0] >= u64::from(MAX_GRANTS) {
            return Err(Error::NotFound);
        }
        Ok(Revoke { gref: w[0] })
    }
}

/// `grant_map` (`GNT-3`): maps grant `gref` of domain `granter` at the
/// caller's page-aligned virtual address `va` (its leaf entry must exist in
/// the current address space and be empty); the result is a map handle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Map {
    /// The granting domain.
    pub granter: u64,
    /// Its reference.
    pub gref: u64,
    /// Where to map, page-aligned, in the guest half.
    pub va: u64,
    /// [`MAP_READONLY`].
    pub flags: u64,
}

impl Args for Map {
    const USED: usize = 4;

    fn encode(&self) -> Words {
        [self.granter, self.gref, self.va, self.flags, 0, 0]
    }

    /// `GNT-3`: unknown flags or an unaligned `va` are `InvalidArgument`.
    fn decode(w: Words) -> Result<Self, Error> {
        if w[3] & !MAP_READONLY != 0 || w[2] & 0xfff != 0 {
            return Err(Error::InvalidArgument);
        }
        Ok(Map {
            granter: w[0],
            gref: w[1],
            va: w[2],
            flags: w[3],
        })
    }
}

/// `grant_unmap` (`GNT-4`): removes the mapping `handle` made by
/// `grant_map`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unmap {
    /// The handle `grant_map` returned.
    pub handle: u64,
}

impl Args for Unmap {
    const USED: usize = 1;

    fn encode(&self) -> Words {
        [self.handle, 0, 0, 0, 0, 0]
    }

    fn decode(w: Words) -> Result<Self, Error> {
        Ok(Unmap { handle: w[0] })
    }
}

/// `grant_copy` (`GNT-5`): performs `count` [`CopyOp`]s read from `ops`,
/// writing each element's status back into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copy {
    /// Guest address of an array of `count` [`CopyOp`].
    pub ops: u64,
    /// Elements, at most [`COPY_BATCH_MAX`].
    pub count: u64,
}

impl Args for Copy {
    const USED: usize = 2;

    fn encode(&self) -> Words {
        [self.ops, self.count, 0, 0, 0, 0]
    }

    /// `GNT-5`: more than [`COPY_BATCH_MAX`] elements is `InvalidArgument`.
    fn decode(w: Words) -> Result<Self, Error> {
        if w[1] > COPY_BATCH_MAX {
            return Err(Error::InvalidArgument);
        }
        Ok(Copy {
            ops: w[0],
            count: w[1],
        })
    }
}

/// One side of a [`CopyOp`]: a frame of the caller's (`domain` =
/// [`DOMID_SELF`], `frame` = its mfn) or a grant made to the caller
/// (`domain` = the granter, `frame` = the reference).
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
pub struct CopyPtr {
    /// [`DOMID_SELF`] or the granting domain.
    pub domain: u64,
    /// An mfn of the caller's, or a grant reference.
    pub frame: u64,
    /// Byte offset in the frame.
    pub offset: u64,
}

impl CopyPtr {
    /// One of the caller's own frames.
    pub const fn own(mfn: u64, offset: u64) -> CopyPtr {
        CopyPtr {
            domain: DOMID_SELF,
            frame: mfn,
            offset,
        }
    }

    /// A grant made to the caller by `granter`.
    pub const fn granted(granter: u64, gref: u64, offset: u64) -> CopyPtr {
        CopyPtr {
            domain: granter,
            frame: gref,
            offset,
        }
    }
}

/// One element of a `grant_copy` batch: `len` bytes from `src` to `dst`,
/// each inside one frame. The hypervisor writes `status`: 0 for done, or
/// the negated [`Error`] code of this element alone.
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
pub struct CopyOp {
    /// Where the bytes come from.
    pub src: CopyPtr,
    /// Where they go.
    pub dst: CopyPtr,
    /// Bytes, `1..=4096`, `offset + len <= 4096` on both sides.
    pub len: u32,
    /// Written by the hypervisor: 0, or `-code` of the element's error.
    pub status: i32,
}

impl CopyOp {
    /// The element's outcome as the hypervisor wrote it.
    pub fn result(&self) -> Result<(), Error> {
        if self.status == 0 {
            return Ok(());
        }
        let code = self
            .status
            .checked_neg()
            .and_then(|c| u16::try_from(c).ok());
        Err(code
            .and_then(Error::from_code)
            .unwrap_or(Error::InvalidArgument))
    }
}

const _: () = assert!(core::mem::size_of::<CopyPtr>() == 24);
const _: () = assert!(core::mem::size_of::<CopyOp>() == 56);
