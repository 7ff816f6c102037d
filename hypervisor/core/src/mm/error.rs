//! Why a memory-management operation was refused.
//!
//! Each variant is one precise reason, named by the spec clause that
//! requires the refusal (`docs/abi/mmu.md`), and maps to exactly one
//! hypercall error code. Every refusal is recoverable: the guest gets the
//! code and nothing changed.

use super::frame::FrameType;
use crate::frames::Mfn;
use hypercall_abi::Error;

/// A refused memory-management operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// The frame number is beyond the end of the frame table (MMU-8).
    NoSuchFrame(Mfn),
    /// The frame belongs to another domain, to the hypervisor, or to nobody
    /// (MMU-7).
    NotOwner(Mfn),
    /// The frame is shared read-only with the domain and was asked for
    /// writable (MMU-7).
    ReadOnlyFrame(Mfn),
    /// An L4 slot in 256..=511: those belong to the hypervisor (MMU-3).
    HypervisorSlot,
    /// Reserved bits set in an entry (address bits above MAXPHYADDR, or bits
    /// 52..=62); the offending bits (MMU-5).
    ReservedBits(u64),
    /// Cache-attribute, global, or (non-leaf) dirty bits set; the offending
    /// bits (MMU-5).
    ForbiddenBits(u64),
    /// PS set in an L2 or L3 entry: large pages are not supported (MMU-9).
    LargePage,
    /// A present entry without U/S (MMU-6).
    NotUser,
    /// A page-table entry pointer that is not 8-byte aligned (MMU-13).
    MisalignedPointer,
    /// A virtual address that is not page aligned (MMU-17).
    MisalignedVa,
    /// A level number outside 1..=4 (MMU-11).
    BadLevel,
    /// Invalid boot configuration (hypervisor-side only).
    BadConfig,
    /// The hypervisor's heap cannot hold the record asked for
    /// (hypervisor-side only: a domain's image, `Mm::set_domain_image`).
    NoMemory,
    /// The frame has a type, or a type count, that forbids the request:
    /// mapping a page table writable, using a frame at two levels, pinning
    /// a writable-mapped frame (MMU-1, MMU-2, MMU-10).
    TypeConflict {
        /// The frame in question.
        mfn: Mfn,
        /// Its current type.
        has: FrameType,
        /// The type the request needs.
        wants: FrameType,
    },
    /// A linear (self) L4 entry with R/W set (MMU-10).
    WritableSelfMap,
    /// The frame is not a page table in use, so it has no entries to update
    /// (MMU-13).
    NotATable(Mfn),
    /// A reference count would overflow (MMU-1).
    CountOverflow(Mfn),
    /// The frame is already pinned (MMU-11).
    AlreadyPinned(Mfn),
    /// The frame is not pinned (MMU-12, MMU-14).
    NotPinned(Mfn),
    /// The frame is the loaded root of a vCPU (MMU-12).
    RootLoaded(Mfn),
    /// The frame is still referenced, so it cannot change hands (MMU-19,
    /// MEM-6b), or the hypervisor holds it (MEM-8).
    FrameInUse(Mfn),
    /// The hypervisor holds a reference on the frame (it reads or writes it
    /// on the owner's behalf), so it may not become a page table (MEM-8).
    HeldFrame(Mfn),
    /// Only a frame with no table type may be held by the hypervisor
    /// (MEM-8); hypervisor-side.
    NotHoldable(Mfn),
    /// A hold was released that was not taken (a hypervisor bug).
    NotHeld(Mfn),
    /// The virtual address is in the hypervisor's half or not canonical
    /// (MMU-17).
    VaOutOfRange,
    /// The walk for the virtual address met a not-present entry (MMU-17).
    NotMapped,
    /// The frame is a table half way through a bounded pin or unpin
    /// (MMU-36): it cannot be referenced, updated or walked until that
    /// operation finishes.
    Busy(Mfn),
    /// The domain already has a different pin or unpin in progress
    /// (MMU-36): it must finish that one first.
    OperationPending,
    /// An `mmu_update` entry would validate (link) or release (unlink) more
    /// of a subtree than one call's step budget allows (MMU-37, MMU-38):
    /// pin the subtree first (pin and unpin are preemptible), then link or
    /// unlink it, which is O(1).
    SubtreeTooLarge,
    /// The page-table entry a grant mapping was to be installed in is
    /// present (GNT-3): unmap what is there first.
    EntryInUse,
}

impl MmError {
    /// The hypercall error code this refusal is reported as.
    pub const fn abi(self) -> Error {
        match self {
            MmError::NoSuchFrame(_) => Error::NotFound,
            MmError::NotOwner(_) | MmError::ReadOnlyFrame(_) | MmError::HypervisorSlot => {
                Error::PermissionDenied
            }
            MmError::ReservedBits(_)
            | MmError::ForbiddenBits(_)
            | MmError::LargePage
            | MmError::NotUser
            | MmError::MisalignedPointer
            | MmError::MisalignedVa
            | MmError::BadLevel
            | MmError::BadConfig => Error::InvalidArgument,
            MmError::TypeConflict { .. }
            | MmError::WritableSelfMap
            | MmError::HeldFrame(_)
            | MmError::NotHoldable(_)
            | MmError::NotATable(_)
            | MmError::CountOverflow(_) => Error::TypeConflict,
            MmError::AlreadyPinned(_)
            | MmError::NotPinned(_)
            | MmError::RootLoaded(_)
            | MmError::NotHeld(_)
            | MmError::FrameInUse(_)
            | MmError::Busy(_)
            | MmError::OperationPending
            | MmError::EntryInUse => Error::WrongState,
            MmError::VaOutOfRange | MmError::NotMapped => Error::BadAddress,
            MmError::SubtreeTooLarge | MmError::NoMemory => Error::NoResources,
        }
    }
}

impl From<MmError> for Error {
    fn from(e: MmError) -> Error {
        e.abi()
    }
}

/// A batch of updates stopped at entry `index`; entries `0..index` were
/// applied, entries after it were not (MMU-15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchError {
    /// Position of the refused update in the batch.
    pub index: usize,
    /// Why it was refused.
    pub error: MmError,
}
