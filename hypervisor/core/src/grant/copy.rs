//! Grant copies (`GNT-4`).
//!
//! [`GrantTables::copy_batch`] checks each element of a batch on its own
//! (per-element status, like `GNTTABOP_copy`): length not 0, `offset + len`
//! inside one page on both sides, the source readable by the caller (its own
//! frame or a grant to it), the destination writable by the caller (its own
//! frame or a writable grant to it) and never a page table or a read-only
//! shared frame. Copies happen inside one hypercall on one CPU, so the
//! checked state cannot change before the copy is done.

use super::*;

fn check_range(offset: u16, len: u16) -> Result<(), GrantError> {
    if len == 0 {
        return Err(GrantError::ZeroLength);
    }
    if usize::from(offset) + usize::from(len) > FRAME_SIZE {
        return Err(GrantError::OutOfPage);
    }
    Ok(())
}

/// One side of a copy element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyPtr {
    /// A frame of the caller's own.
    Local {
        /// The frame.
        mfn: Mfn,
        /// Byte offset in it.
        offset: u16,
    },
    /// A grant made to the caller.
    Granted {
        /// The granter.
        granter: DomId,
        /// The grant.
        gref: GrantRef,
        /// Byte offset in the granted frame.
        offset: u16,
    },
}

/// One element of a `grant_copy` batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyOp {
    /// Copied from.
    pub src: CopyPtr,
    /// Copied to.
    pub dst: CopyPtr,
    /// Bytes, 1..=4096, inside one frame on each side.
    pub len: u16,
}

/// A checked copy element: what the hypervisor copies, frame to frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyPlan {
    /// Source frame and offset.
    pub src: (Mfn, usize),
    /// Destination frame and offset.
    pub dst: (Mfn, usize),
    /// Bytes.
    pub len: usize,
}

impl GrantTables {
    fn resolve(
        &self,
        mm: &Mm,
        caller: DomId,
        p: CopyPtr,
        len: u16,
        dst: bool,
    ) -> Result<(Mfn, usize), GrantError> {
        match p {
            CopyPtr::Local { mfn, offset } => {
                check_range(offset, len)?;
                let f = mm.frame(mfn).ok_or(GrantError::NotOwner(mfn))?;
                if f.owner() != Owner::Domain(caller) {
                    // A shared read-only page of its image (MEM-2e) is a
                    // frame it may read: a source, never a destination.
                    return match mm.may_map(caller, mfn, false) {
                        Ok(()) if dst => Err(GrantError::ReadOnly),
                        Ok(()) => Ok((mfn, usize::from(offset))),
                        Err(_) => Err(GrantError::NotOwner(mfn)),
                    };
                }
                if dst {
                    if is_table(mm, mfn)? {
                        return Err(GrantError::TableFrame(mfn));
                    }
                    if f.frame_type() == FrameType::Special && !f.special_writable() {
                        return Err(GrantError::ReadOnly);
                    }
                }
                Ok((mfn, usize::from(offset)))
            }
            CopyPtr::Granted {
                granter,
                gref,
                offset,
            } => {
                check_range(offset, len)?;
                let g = self.usable(mm, caller, granter, gref, dst)?;
                Ok((g.mfn, usize::from(offset)))
            }
        }
    }

    /// Checks one copy element for `caller`; what to copy.
    pub fn check_copy(&self, mm: &Mm, caller: DomId, op: &CopyOp) -> Result<CopyPlan, GrantError> {
        self.live(caller)?;
        let src = self.resolve(mm, caller, op.src, op.len, false)?;
        let dst = self.resolve(mm, caller, op.dst, op.len, true)?;
        Ok(CopyPlan {
            src,
            dst,
            len: usize::from(op.len),
        })
    }

    /// A `grant_copy` batch: each element checked on its own and, if
    /// allowed, copied by `copy`; `status[i]` says what happened to element
    /// `i` (a refused element changes nothing and does not stop the rest).
    /// Refused as a whole, before anything, if longer than
    /// [`MAX_COPY_BATCH`] or if `status` is shorter than `ops`.
    pub fn copy_batch(
        &self,
        mm: &Mm,
        caller: DomId,
        ops: &[CopyOp],
        status: &mut [Result<(), GrantError>],
        mut copy: impl FnMut(CopyPlan),
    ) -> Result<(), GrantError> {
        if ops.len() > MAX_COPY_BATCH || status.len() < ops.len() {
            return Err(GrantError::BatchTooLong);
        }
        for (op, st) in ops.iter().zip(status.iter_mut()) {
            *st = self.check_copy(mm, caller, op).map(&mut copy);
        }
        Ok(())
    }
}
