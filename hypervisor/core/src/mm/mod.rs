//! Memory virtualization: the frame table and the page-table validator.
//!
//! Tahoma guests use *direct paging*, as Xen PV guests do: a guest builds its
//! own 4-level page tables in frames it owns, and the CPU walks them for
//! real. Isolation rests on one rule: the hypervisor validates every value
//! before it lands in a page table, and a frame in use as a page table is
//! never writable by the guest. The guest therefore changes its tables only
//! through hypercalls, which call into this module:
//!
//! * [`Mm::pin`] / [`Mm::unpin`]: validate a table and its tree below, and
//!   keep it valid;
//! * [`Mm::mmu_update`]: a batch of `(entry machine address, new value)`;
//! * [`Mm::update_va_mapping`]: the fast path for one leaf entry;
//! * [`Mm::switch_root`]: load a pinned L4;
//! * [`Mm::teardown`]: drop everything a dying domain's tables hold.
//!
//! The rules are the clauses of `docs/abi/mmu.md` (MMU-1 ...). The module is
//! pure: it reads and writes page-table entries only through [`PhysMem`],
//! which the hypervisor implements over its direct map and the tests over a
//! plain array. It never allocates after [`Mm::new`], never panics on guest
//! input, and keeps no locks (one CPU).
//!
//! Before it returns to any guest, the hypervisor must ask
//! [`Mm::take_flush_request`] and flush the TLB when told (MMU-20): ownership
//! changes (`assign`, populate, release, teardown) raise the request too, so
//! the check belongs on the exit path, not after each call into this module.
//!
//! Besides page-table references, a frame can be *held* by the hypervisor
//! ([`Mm::hold`], MEM-8): it reads or writes the frame on its owner's behalf
//! (shared info; grant and ring pages next), so the frame cannot change hands
//! or become a page table until the hold is released.

pub mod audit;
pub mod error;
pub mod frame;
pub mod images;
pub mod pte;
pub mod validator;

#[cfg(test)]
mod tests;

pub use error::{BatchError, MmError};
pub use frame::{DomId, FrameInfo, FrameType, FrameView, ImageId, Owner, TableType};
pub use images::{ShareError, SharedImages};
pub use pte::{EntryRules, Level};
pub use validator::{
    Budget, BuiltTree, Mm, MmConfig, Pending, Progress, Teardown, HYPERVISOR_SLOTS, OP_STEPS,
};

use crate::frames::Mfn;

/// Physical memory as the validator sees it: page-table entries, by frame
/// and index.
///
/// The validator only calls these with `mfn < frame_count` and
/// `index < 512`. The hypervisor implements them with single 64-bit
/// accesses through its direct map (the CPU may set A/D bits concurrently on
/// other CPUs one day; the validator never relies on them).
pub trait PhysMem {
    /// The 64-bit entry `index` of frame `mfn`.
    fn read_entry(&self, mfn: Mfn, index: usize) -> u64;
    /// Stores `value` in entry `index` of frame `mfn`.
    fn write_entry(&mut self, mfn: Mfn, index: usize, value: u64);
    /// Stores `value` in entry `index` of frame `mfn`, which the caller
    /// has just read as `old` (nothing wrote it since). The hypervisor
    /// uses `old`: an entry that was not present was read by no walk that
    /// succeeded, so no translation it remembers can depend on it
    /// (`guestmem::Remembered`).
    fn replace_entry(&mut self, mfn: Mfn, index: usize, old: u64, value: u64) {
        let _ = old;
        self.write_entry(mfn, index, value);
    }
    /// Stores `values` in entries `first..` of frame `mfn` (`first +
    /// values.len() <= 512`): one copy where the implementation can (the
    /// hypervisor's slots of a new L4, 256 entries).
    fn write_entries(&mut self, mfn: Mfn, first: usize, values: &[u64]) {
        for (i, v) in values.iter().enumerate() {
            self.write_entry(mfn, first + i, *v);
        }
    }
    /// The 512 entries of frame `mfn` (`mfn` a frame of RAM the
    /// validator has checked), to read and write in place: for the runs of
    /// leaves a build adopts, one pass with no call per entry (issue 13).
    fn entries_mut(&mut self, mfn: Mfn) -> &mut [u64; 512];
}

/// One vCPU's view of its domain's address space: which L4 it runs on.
///
/// The hypervisor keeps one per vCPU and passes it to [`Mm::switch_root`];
/// the frame table counts loaded roots so that a loaded root cannot be
/// unpinned (MMU-12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressSpace {
    dom: DomId,
    root: Option<Mfn>,
}

impl AddressSpace {
    /// A vCPU of `dom` with no root loaded yet.
    pub const fn new(dom: DomId) -> AddressSpace {
        AddressSpace { dom, root: None }
    }

    /// The domain.
    pub const fn domain(&self) -> DomId {
        self.dom
    }

    /// The loaded root L4, if any.
    pub const fn root(&self) -> Option<Mfn> {
        self.root
    }
}
