//! Device frames delegated to a driver domain (`IO-0`, `docs/abi/io.md`).
//!
//! A device's MMIO frame is not RAM: it has no frame-table record (or one
//! the hypervisor owns), so a guest-made entry naming it is refused like
//! any frame the guest does not own (MMU-8). Only the hypervisor maps it,
//! at build, into the driver domain's device L1 ([`Mm::install_io`]). Such
//! an entry takes no reference: if the domain overwrites it, or releases or
//! unpins the table holding it, the entry is dropped without touching any
//! count, and the domain can never map the frame again by itself.
//!
//! The list here is the authority ([`Mm::is_io`], [`Mm::io_owner`]); a
//! delegated frame the frame table has a record of also carries the
//! `DEVICE` flag, which keeps the frame from changing hands while delegated
//! (it is not idle), so it never has a count: the release path
//! (`put_data`) tells a device entry by the zero count of the record it
//! loads anyway, in O(1). The audit checks that flag and list agree.

use super::*;
use crate::mm::frame::DEVICE;
use crate::mm::pte::{NX, PCD, PRESENT, PWT, WRITABLE};

impl Mm {
    /// Delegates the device frame `mfn` to `dom`. Refused for a RAM frame
    /// (one the frame table gives to anyone but the hypervisor, or that
    /// anything references) with `NotOwner`, and for a frame delegated to
    /// another domain with `Busy`. Delegating it again to `dom` is a no-op.
    pub fn delegate_io(&mut self, mfn: Mfn, dom: DomId) -> Result<(), MmError> {
        if let Some(f) = self.frame(mfn) {
            if f.owner() != Owner::Hypervisor || f.total_count() != 0 {
                return Err(MmError::NotOwner(mfn));
            }
        }
        match self.io.iter().find(|(m, _)| *m == mfn) {
            Some((_, d)) if *d == dom => Ok(()),
            Some(_) => Err(MmError::Busy(mfn)),
            None => {
                self.io.push((mfn, dom));
                // The O(1) mark `put_data` tests (a frame beyond the table
                // has no record, and `put_data` counts nothing for it).
                if let Ok(f) = self.info_mut(mfn) {
                    f.flags |= DEVICE;
                }
                Ok(())
            }
        }
    }

    /// Whether `mfn` is a delegated device frame.
    pub fn is_io(&self, mfn: Mfn) -> bool {
        self.io.iter().any(|(m, _)| *m == mfn)
    }

    /// The domain device frame `mfn` is delegated to.
    pub fn io_owner(&self, mfn: Mfn) -> Option<DomId> {
        self.io.iter().find(|(m, _)| *m == mfn).map(|(_, d)| *d)
    }

    /// The device frames delegated to `dom`.
    pub fn io_frames(&self, dom: DomId) -> impl Iterator<Item = Mfn> + '_ {
        self.io
            .iter()
            .filter(move |(_, d)| *d == dom)
            .map(|(m, _)| *m)
    }

    /// Installs the uncached, writable, non-executable user entry for
    /// device frame `mfn` at `index` of `dom`'s validated L1 `l1` (which
    /// must be empty there). Refused, nothing changed: `mfn` not delegated
    /// to `dom` (`NotOwner`), `l1` not `dom`'s L1 table (`NotOwner`,
    /// `NotATable`), the entry in use or `index` out of range (`Busy`).
    pub fn install_io<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        l1: Mfn,
        index: usize,
        mfn: Mfn,
    ) -> Result<u64, MmError> {
        if self.io_owner(mfn) != Some(dom) {
            return Err(MmError::NotOwner(mfn));
        }
        let f = self.info(l1)?;
        if f.owner() != Owner::Domain(dom) {
            return Err(MmError::NotOwner(l1));
        }
        if f.table_level() != Some(Level::L1) {
            return Err(MmError::NotATable(l1));
        }
        if index >= ENTRIES || mem.read_entry(l1, index) & PRESENT != 0 {
            return Err(MmError::Busy(l1));
        }
        let value = (mfn << 12) | PRESENT | WRITABLE | USER | NX | PCD | PWT;
        mem.write_entry(l1, index, value);
        Ok(value)
    }

    /// Forgets `dom`'s device frames. Call once its tables are torn down
    /// (no entry of its can name them any more).
    pub fn revoke_io(&mut self, dom: DomId) {
        let frames = &mut self.frames;
        self.io.retain(|&(mfn, d)| {
            if d != dom {
                return true;
            }
            if let Some(f) = usize::try_from(mfn).ok().and_then(|i| frames.get_mut(i)) {
                f.flags &= !DEVICE;
            }
            false
        });
    }
}
