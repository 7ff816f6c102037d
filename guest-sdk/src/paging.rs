//! Paging: the guest's own page tables under direct paging (`docs/abi/mmu.md`).
//!
//! A Tahoma guest's page tables live in frames it owns, mapped read-only to
//! it; every change is a validated hypercall. This module hides the entry
//! encoding and the table walk:
//!
//! * [`map`], [`unmap`], [`protect`], [`translate`]: one page at a time, in
//!   the guest's mapping region [`MAP_BASE`]`..`[`MAP_TOP`];
//! * [`Mapper`]: queues updates and sends one `mmu_update` per batch of up to
//!   [`MMU_BATCH_MAX`] entries (on [`Mapper::flush`], when full, or on drop);
//! * frames: [`populate`], [`release`], [`memory_info`], [`frame_list`],
//!   [`frame_info`]; and thin wrappers of the other MMU calls ([`pin`],
//!   [`unpin`], [`switch_root`], [`invlpg`], [`flush_tlb`],
//!   [`update_va_mapping`], [`mmu_update`]).
//!
//! Reading page tables: at start the SDK installs a read-only self entry
//! (`MMU-10`) in L4 slot [`RECURSIVE_SLOT`], so every entry of the loaded
//! address space can be read at a fixed virtual address ([`entry_va`]).
//! An address space the guest builds itself must carry the same self entry
//! ([`self_entry`]) for this module to work after switching to it.
//!
//! Missing intermediate tables are taken with `memory_populate` (fresh,
//! zeroed, unmapped frames) and linked in with `mmu_update`, which validates
//! them as tables.
//!
//! Soundness: the safe functions act only on [`MAP_BASE`]`..`[`MAP_TOP`],
//! where neither the SDK nor the image places Rust objects; memory there is
//! reached through raw pointers, and it is the guest's `unsafe` code that
//! must not keep a reference across a remap. The window, the heap-growth
//! region and the self-entry slot are reachable only through the `unsafe`
//! [`Mapper::map_unchecked`] family (or the raw hypercalls).
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicBool, Ordering};

use hypercall_abi::layout::GUEST_VA_TOP;
use hypercall_abi::mmu::MmuUpdate;
use hypercall_abi::Error;

pub use hypercall_abi::args::{FrameType, MEMORY_BATCH_MAX, MMU_BATCH_MAX};

/// Page size.
pub const PAGE: u64 = 4096;

/// Page-table entry bits (x86-64), for guests that build entries by hand:
/// the ABI's definition (`docs/abi/mmu.md`).
pub use hypercall_abi::pte;

/// What a leaf mapping allows besides reading. User and present are always
/// set by the SDK; no-execute unless [`Flags::EXECUTABLE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u8);

impl Flags {
    /// Read-only, no-execute.
    pub const READ_ONLY: Flags = Flags(0);
    /// Writable.
    pub const WRITABLE: Flags = Flags(1);
    /// Executable.
    pub const EXECUTABLE: Flags = Flags(2);

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of flags.
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// The flags a leaf entry grants.
    pub const fn of_entry(entry: u64) -> Flags {
        let mut f = 0;
        if entry & pte::WRITABLE != 0 {
            f |= 1;
        }
        if entry & pte::NX == 0 {
            f |= 2;
        }
        Flags(f)
    }
}

impl core::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.union(rhs)
    }
}

/// A page-table level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u64)]
pub enum Level {
    /// Leaf tables (4 KiB pages).
    L1 = 1,
    /// Page directories.
    L2 = 2,
    /// Page-directory-pointer tables.
    L3 = 3,
    /// The root.
    L4 = 4,
}

/// L4 slot of the SDK's read-only self entry.
pub const RECURSIVE_SLOT: u64 = 255;
/// Start of the virtual range the self entry exposes (up to [`GUEST_VA_TOP`]).
pub const RECURSIVE_BASE: u64 = RECURSIVE_SLOT << 39;
/// Where the SDK grows its heap: from 1 GiB + 2 MiB, above the window and
/// above the 2 MiB a driver domain's devices are mapped in from
/// `DEVICE_VA_BASE` (1 GiB, IO-0), so growing the heap never overwrites a
/// device mapping.
pub const HEAP_GROW_BASE: u64 = hypercall_abi::layout::DEVICE_VA_BASE + 0x20_0000;
/// End of the heap-growth region.
pub const HEAP_GROW_TOP: u64 = 0x10_0000_0000;
/// Start of the region the safe functions map in.
pub const MAP_BASE: u64 = HEAP_GROW_TOP;
/// End of the region the safe functions map in.
pub const MAP_TOP: u64 = RECURSIVE_BASE;

/// A leaf (L1) entry mapping `mfn` with `flags`: present, user, accessed,
/// writable and dirty when [`Flags::WRITABLE`], no-execute unless
/// [`Flags::EXECUTABLE`]. (Accessed and dirty preset so the CPU never writes
/// the entry.)
pub const fn leaf_entry(mfn: u64, flags: Flags) -> u64 {
    let mut e = ((mfn << 12) & pte::ADDR_MASK) | pte::PRESENT | pte::USER | pte::ACCESSED;
    if flags.contains(Flags::WRITABLE) {
        e |= pte::WRITABLE | pte::DIRTY;
    }
    if !flags.contains(Flags::EXECUTABLE) {
        e |= pte::NX;
    }
    e
}

/// A non-leaf entry pointing at the table in frame `mfn`.
pub const fn table_entry(mfn: u64) -> u64 {
    ((mfn << 12) & pte::ADDR_MASK) | pte::PRESENT | pte::WRITABLE | pte::USER | pte::ACCESSED
}

/// The read-only self entry of the L4 in frame `mfn` (`MMU-10`).
pub const fn self_entry(mfn: u64) -> u64 {
    ((mfn << 12) & pte::ADDR_MASK) | pte::PRESENT | pte::USER | pte::ACCESSED | pte::NX
}

/// The frame an entry names.
pub const fn entry_mfn(entry: u64) -> u64 {
    (entry & pte::ADDR_MASK) >> 12
}

/// Whether an entry is present.
pub const fn is_present(entry: u64) -> bool {
    entry & pte::PRESENT != 0
}

/// Index of `va` in its table at `level`.
pub const fn index(va: u64, level: Level) -> usize {
    ((va >> (12 + 9 * (level as u64 - 1))) & 0x1ff) as usize
}

/// Machine address of entry `index` of the table in frame `mfn` (the `ptr`
/// of an [`MmuUpdate`]).
pub const fn entry_ptr(mfn: u64, index: usize) -> u64 {
    (mfn << 12) | ((index as u64 & 0x1ff) * 8)
}

/// Virtual address, through the self entry at [`RECURSIVE_SLOT`], of the
/// entry for `va` in its table at `level` (`va` in the lower half).
pub const fn entry_va(va: u64, level: Level) -> u64 {
    let l = level as u64;
    let mut prefix = 0;
    let mut k = 0;
    while k < l {
        prefix |= RECURSIVE_SLOT << (39 - 9 * k);
        k += 1;
    }
    // The bits of `va` above the level's page offset, one table walk deeper.
    let width = 39 - 9 * (l - 1);
    let low = (va >> (9 * l)) & ((1 << width) - 1) & !7;
    prefix | low
}

/// Whether `va` is in the region the safe functions map in.
pub const fn in_map_region(va: u64) -> bool {
    va >= MAP_BASE && va < MAP_TOP
}

// ---------------------------------------------------------------------------
// Hypercall wrappers: they live in their families, `crate::mmu` and
// `crate::memory`; the names this module always had stay valid here.

pub use crate::memory::{info as memory_info, populate, populate_one, release};
pub use crate::mmu::{
    flush_tlb, frame_info, invlpg, pin, switch_root, unpin, update as mmu_update,
    update_va_mapping, BatchError,
};

/// The frame list (`MEM-2`): machine frame of each pseudo-physical page of
/// the window, as the hypervisor wrote it at start.
#[cfg(target_os = "none")]
pub fn frame_list() -> &'static [u64] {
    let si = crate::start_info();
    let len = usize::try_from(si.nr_pages).unwrap_or(0);
    // SAFETY: `from_raw_parts` needs `len` readable, aligned u64s that
    // nothing writes while the slice lives: MEM-2/3 put `nr_pages` u64s at
    // `frame_list_va`, mapped for the domain's life, written once by the
    // hypervisor before start and never by the SDK (a guest writing it
    // through a raw pointer breaks this).
    unsafe { core::slice::from_raw_parts(si.frame_list_va as *const u64, len) }
}

/// Host build: there is no frame list.
#[cfg(not(target_os = "none"))]
pub fn frame_list() -> &'static [u64] {
    &[]
}

/// The machine frame of window page `page` (`MEM-2`).
pub fn page_mfn(page: u64) -> Option<u64> {
    frame_list().get(usize::try_from(page).ok()?).copied()
}

// ---------------------------------------------------------------------------
// Reading entries through the self entry.

static READY: AtomicBool = AtomicBool::new(false);

/// Installs the read-only self entry in the initial L4 (called once by the
/// runtime at start).
#[cfg(target_os = "none")]
pub(crate) fn init() -> Result<(), Error> {
    let si = crate::start_info();
    let l4 = page_mfn(si.pt_first_page).ok_or(Error::NotFound)?;
    mmu_update(&[MmuUpdate {
        ptr: entry_ptr(l4, crate::usize_const(RECURSIVE_SLOT)),
        val: self_entry(l4),
    }])?;
    READY.store(true, Ordering::Release);
    Ok(())
}

/// Whether the self entry is installed (the SDK could read page tables).
pub fn ready() -> bool {
    READY.load(Ordering::Acquire)
}

fn read_at(addr: u64) -> u64 {
    // SAFETY: `walk` checked the tables above present, so the self entry maps
    // this entry's page read-only; one aligned u64, volatile because the
    // hypervisor changes it.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// The entry for `va` at `level` in the loaded address space, if every
/// table above it is present. `None` too when paging is not ready or `va` is
/// not in the lower half.
pub fn read_entry(va: u64, level: Level) -> Option<u64> {
    if !ready() || va >= GUEST_VA_TOP {
        return None;
    }
    let mut l = Level::L4;
    loop {
        let e = read_at(entry_va(va, l));
        if l == level {
            return Some(e);
        }
        if !is_present(e)
            || (l == Level::L4 && index(va, Level::L4) == crate::usize_const(RECURSIVE_SLOT))
        {
            return None;
        }
        l = match l {
            Level::L4 => Level::L3,
            Level::L3 => Level::L2,
            _ => Level::L1,
        };
    }
}

/// The machine frame of the loaded root (from its self entry).
pub fn root_mfn() -> Option<u64> {
    if !ready() {
        return None;
    }
    Some(entry_mfn(read_at(entry_va(RECURSIVE_BASE, Level::L4))))
}

/// Slot `slot` (`0..512`) of the loaded root, the hypervisor's slots
/// included (they are readable through the self entry, `MMU-3`).
pub fn read_root_slot(slot: usize) -> Option<u64> {
    if !ready() || slot >= 512 {
        return None;
    }
    let page = entry_va(RECURSIVE_BASE, Level::L4) & !(PAGE - 1);
    Some(read_at(page + slot as u64 * 8))
}

/// The machine frame of the table at `level` that holds `va`'s entry, if it
/// exists.
pub fn table_mfn(va: u64, level: Level) -> Option<u64> {
    match level {
        Level::L4 => root_mfn(),
        Level::L3 => read_entry(va, Level::L4)
            .filter(|&e| is_present(e))
            .map(entry_mfn),
        Level::L2 => read_entry(va, Level::L3)
            .filter(|&e| is_present(e))
            .map(entry_mfn),
        Level::L1 => read_entry(va, Level::L2)
            .filter(|&e| is_present(e))
            .map(entry_mfn),
    }
}

/// What `va` maps to in the loaded address space: its frame and flags.
pub fn translate(va: u64) -> Option<(u64, Flags)> {
    let e = read_entry(va & !(PAGE - 1), Level::L1)?;
    is_present(e).then(|| (entry_mfn(e), Flags::of_entry(e)))
}

// ---------------------------------------------------------------------------
// The batching mapper.

/// Most invalidations remembered before a batch ends in a full flush.
const INVLPG_MAX: usize = 16;

/// Queues leaf updates and sends them as one `mmu_update` per batch: on
/// [`Mapper::flush`], when [`MMU_BATCH_MAX`] are queued, and on drop.
/// After a batch it invalidates the pages whose old entry was present
/// (`invlpg` for a few, a full flush for many).
///
/// The mapper reads the page tables as they were at its last flush; the
/// entries of one batch are applied in order (the last update of a page
/// wins). Missing L3/L2/L1 tables are created at once (the queue is flushed
/// first, so order is kept).
pub struct Mapper {
    queue: [MmuUpdate; crate::usize_const(MMU_BATCH_MAX)],
    len: usize,
    invl: [u64; INVLPG_MAX],
    ninvl: usize,
    flush_all: bool,
    /// Batches sent.
    batches: u64,
}

impl Default for Mapper {
    fn default() -> Self {
        Mapper::new()
    }
}

impl Mapper {
    /// An empty mapper.
    pub const fn new() -> Mapper {
        Mapper {
            queue: [MmuUpdate { ptr: 0, val: 0 }; crate::usize_const(MMU_BATCH_MAX)],
            len: 0,
            invl: [0; INVLPG_MAX],
            ninvl: 0,
            flush_all: false,
            batches: 0,
        }
    }

    /// Updates queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Batches sent so far (one `mmu_update` each).
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Maps `va` (page aligned, in [`MAP_BASE`]`..`[`MAP_TOP`]) to `mfn`.
    pub fn map(&mut self, va: u64, mfn: u64, flags: Flags) -> Result<(), Error> {
        check_region(va)?;
        // SAFETY: the mapping region holds no Rust objects (module docs).
        unsafe { self.map_unchecked(va, mfn, flags) }
    }

    /// Unmaps `va` (in the mapping region); not mapped is not an error.
    pub fn unmap(&mut self, va: u64) -> Result<(), Error> {
        check_region(va)?;
        // SAFETY: `unmap_unchecked` requires that nothing Rust reaches
        // through a reference lives at `va`: `va` is in the mapping region
        // (checked), which holds no Rust objects (module docs).
        unsafe { self.unmap_unchecked(va) }
    }

    /// Changes the flags of the mapping of `va` (in the mapping region):
    /// `NotFound` if it is not mapped.
    pub fn protect(&mut self, va: u64, flags: Flags) -> Result<(), Error> {
        check_region(va)?;
        // SAFETY: `protect_unchecked` requires that nothing Rust reaches
        // through a reference lives at `va`: `va` is in the mapping region
        // (checked), which holds no Rust objects (module docs).
        unsafe { self.protect_unchecked(va, flags) }
    }

    /// [`Mapper::map`] anywhere in the lower half.
    ///
    /// # Safety
    ///
    /// Nothing Rust can reach through a reference may live at `va` (e.g. the
    /// image, the stack, the heap, the start-info page), or be changed by
    /// the new mapping.
    pub unsafe fn map_unchecked(&mut self, va: u64, mfn: u64, flags: Flags) -> Result<(), Error> {
        check_va(va)?;
        let l1 = self.ensure_tables(va)?;
        let old = read_entry(va, Level::L1).unwrap_or(0);
        self.push(
            entry_ptr(l1, index(va, Level::L1)),
            leaf_entry(mfn, flags),
            va,
            old,
        )
    }

    /// [`Mapper::unmap`] anywhere in the lower half.
    ///
    /// # Safety
    ///
    /// As [`Mapper::map_unchecked`].
    pub unsafe fn unmap_unchecked(&mut self, va: u64) -> Result<(), Error> {
        check_va(va)?;
        let Some(l1) = table_mfn(va, Level::L1) else {
            return Ok(());
        };
        let old = read_entry(va, Level::L1).unwrap_or(0);
        self.push(entry_ptr(l1, index(va, Level::L1)), 0, va, old)
    }

    /// [`Mapper::protect`] anywhere in the lower half.
    ///
    /// # Safety
    ///
    /// As [`Mapper::map_unchecked`].
    pub unsafe fn protect_unchecked(&mut self, va: u64, flags: Flags) -> Result<(), Error> {
        check_va(va)?;
        if self.len > 0 {
            self.flush()?;
        }
        let old = read_entry(va, Level::L1).unwrap_or(0);
        let l1 = table_mfn(va, Level::L1).ok_or(Error::NotFound)?;
        if !is_present(old) {
            return Err(Error::NotFound);
        }
        self.push(
            entry_ptr(l1, index(va, Level::L1)),
            leaf_entry(entry_mfn(old), flags),
            va,
            old,
        )
    }

    /// Queues one raw update (`ptr` = machine address of an entry), with no
    /// check and no invalidation: for guests building entries themselves.
    pub fn push_raw(&mut self, ptr: u64, val: u64) -> Result<(), Error> {
        self.push(ptr, val, 0, 0)
    }

    fn push(&mut self, ptr: u64, val: u64, va: u64, old: u64) -> Result<(), Error> {
        if self.len == self.queue.len() {
            self.flush()?;
        }
        self.queue[self.len] = MmuUpdate { ptr, val };
        self.len += 1;
        if is_present(old) {
            if self.ninvl < INVLPG_MAX {
                self.invl[self.ninvl] = va;
                self.ninvl += 1;
            } else {
                self.flush_all = true;
            }
        }
        Ok(())
    }

    /// Sends the queued updates as one `mmu_update`, then invalidates.
    pub fn flush(&mut self) -> Result<(), BatchError> {
        if self.len == 0 {
            return Ok(());
        }
        let r = mmu_update(&self.queue[..self.len]);
        self.batches += 1;
        self.len = 0;
        if self.flush_all {
            let _ = flush_tlb();
        } else {
            for &va in &self.invl[..self.ninvl] {
                let _ = invlpg(va);
            }
        }
        self.ninvl = 0;
        self.flush_all = false;
        r
    }

    /// The L1 frame for `va`, creating the missing L3, L2 and L1 tables.
    fn ensure_tables(&mut self, va: u64) -> Result<u64, Error> {
        if !ready() {
            return Err(Error::WrongState);
        }
        let mut parent = root_mfn().ok_or(Error::WrongState)?;
        for level in [Level::L4, Level::L3, Level::L2] {
            let e = read_entry(va, level).ok_or(Error::WrongState)?;
            if is_present(e) {
                parent = entry_mfn(e);
                continue;
            }
            self.flush()?;
            let fresh = populate_one()?;
            let link = MmuUpdate {
                ptr: entry_ptr(parent, index(va, level)),
                val: table_entry(fresh),
            };
            if let Err(b) = mmu_update(&[link]) {
                let _ = release(&[fresh]);
                return Err(b.error);
            }
            parent = fresh;
        }
        Ok(parent)
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn check_va(va: u64) -> Result<(), Error> {
    if va & (PAGE - 1) != 0 {
        return Err(Error::InvalidArgument);
    }
    if va >= RECURSIVE_BASE {
        return Err(Error::BadAddress);
    }
    Ok(())
}

fn check_region(va: u64) -> Result<(), Error> {
    check_va(va)?;
    if !in_map_region(va) {
        return Err(Error::BadAddress);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// One page at a time.

/// Maps `va` (page aligned, in [`MAP_BASE`]`..`[`MAP_TOP`]) to the frame
/// `mfn` with `flags`, creating missing tables; one `mmu_update` (plus one
/// per missing table), and an `invlpg` if `va` was mapped.
pub fn map(va: u64, mfn: u64, flags: Flags) -> Result<(), Error> {
    let mut m = Mapper::new();
    m.map(va, mfn, flags)?;
    m.flush().map_err(Error::from)
}

/// Unmaps `va` (in the mapping region).
pub fn unmap(va: u64) -> Result<(), Error> {
    let mut m = Mapper::new();
    m.unmap(va)?;
    m.flush().map_err(Error::from)
}

/// Changes the flags of `va`'s mapping (in the mapping region).
pub fn protect(va: u64, flags: Flags) -> Result<(), Error> {
    let mut m = Mapper::new();
    m.protect(va, flags)?;
    m.flush().map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices() {
        let va = (3u64 << 39) | (5 << 30) | (7 << 21) | (9 << 12) | 0x123;
        assert_eq!(index(va, Level::L4), 3);
        assert_eq!(index(va, Level::L3), 5);
        assert_eq!(index(va, Level::L2), 7);
        assert_eq!(index(va, Level::L1), 9);
        assert_eq!(entry_ptr(0x1234, 9), 0x0123_4000 | 72);
    }

    #[test]
    fn self_entry_addresses() {
        let r = RECURSIVE_SLOT;
        let va = (3u64 << 39) | (5 << 30) | (7 << 21) | (9 << 12);
        // L1 entry: walk slot r, then the L4, L3, L2 indices of va, then L1 index * 8.
        assert_eq!(
            entry_va(va, Level::L1),
            (r << 39) | (3 << 30) | (5 << 21) | (7 << 12) | (9 * 8)
        );
        assert_eq!(
            entry_va(va, Level::L2),
            (r << 39) | (r << 30) | (3 << 21) | (5 << 12) | (7 * 8)
        );
        assert_eq!(
            entry_va(va, Level::L3),
            (r << 39) | (r << 30) | (r << 21) | (3 << 12) | (5 * 8)
        );
        assert_eq!(
            entry_va(va, Level::L4),
            (r << 39) | (r << 30) | (r << 21) | (r << 12) | (3 * 8)
        );
        // Highest lower-half address, all in the lower half.
        let top = GUEST_VA_TOP - PAGE;
        for l in [Level::L1, Level::L2, Level::L3, Level::L4] {
            let a = entry_va(top, l);
            assert!(
                (RECURSIVE_BASE..GUEST_VA_TOP).contains(&a) && a.is_multiple_of(8),
                "{l:?} {a:#x}"
            );
        }
        // The root's self entry names slot r of the L4 page.
        assert_eq!(entry_va(RECURSIVE_BASE, Level::L4) & 0xfff, r * 8);
    }

    #[test]
    fn entry_encoding() {
        let ro = leaf_entry(0x42, Flags::READ_ONLY);
        assert_eq!(
            ro,
            0x42_000 | pte::PRESENT | pte::USER | pte::ACCESSED | pte::NX
        );
        let rw = leaf_entry(0x42, Flags::WRITABLE);
        assert_eq!(
            rw & (pte::WRITABLE | pte::DIRTY),
            pte::WRITABLE | pte::DIRTY
        );
        let rx = leaf_entry(0x42, Flags::EXECUTABLE);
        assert_eq!(rx & pte::NX, 0);
        for f in [
            Flags::READ_ONLY,
            Flags::WRITABLE,
            Flags::EXECUTABLE,
            Flags::WRITABLE | Flags::EXECUTABLE,
        ] {
            let e = leaf_entry(0xabcde, f);
            assert_eq!(Flags::of_entry(e), f);
            assert_eq!(entry_mfn(e), 0xabcde);
            // Never a bit the validator refuses (MMU-5, MMU-9).
            assert_eq!(e & (pte::PWT | pte::PCD | pte::PAT | pte::GLOBAL), 0);
            assert_eq!(e & 0x7FF0_0000_0000_0000, 0);
        }
        let t = table_entry(7);
        assert_eq!(t & (pte::DIRTY | pte::PS | pte::NX), 0);
        assert!(is_present(t) && t & pte::USER != 0);
        let s = self_entry(7);
        assert_eq!(
            s & pte::WRITABLE,
            0,
            "the self entry must be read-only (MMU-10)"
        );
        assert_eq!(entry_mfn(s), 7);
    }

    #[test]
    fn regions() {
        assert!(in_map_region(MAP_BASE));
        assert!(!in_map_region(MAP_TOP));
        assert!(!in_map_region(HEAP_GROW_BASE));
        const {
            assert!(
                HEAP_GROW_BASE
                    >= hypercall_abi::layout::WINDOW_BASE
                        + hypercall_abi::layout::WINDOW_MAX_PAGES * PAGE
            );
        }
        assert_eq!(check_va(MAP_BASE + 1), Err(Error::InvalidArgument));
        assert_eq!(check_region(0x40_0000), Err(Error::BadAddress));
        assert_eq!(check_va(RECURSIVE_BASE), Err(Error::BadAddress));
    }

    /// The batching `Mapper` against the fake hypervisor.
    mod mapper {
        use super::super::*;
        use crate::fake::{err, ok, Fake};
        use hypercall_abi::Hypercall;

        #[test]
        fn a_full_queue_goes_as_one_mmu_update_and_the_rest_on_flush() {
            let fake = Fake::install(|call, _, _| {
                assert_eq!(call, Some(Hypercall::MmuUpdate));
                ok(0)
            });
            let mut m = Mapper::new();
            for i in 0..(MMU_BATCH_MAX + 1) {
                m.push_raw(0x1000 + 8 * i, i).unwrap();
            }
            // The 513th push sent the first 512, in one call.
            let calls = fake.calls();
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0].1[1], MMU_BATCH_MAX);
            assert_eq!((m.pending(), m.batches()), (1, 1));
            m.flush().unwrap();
            let calls = fake.calls();
            assert_eq!(calls.len(), 2);
            assert_eq!(calls[1].1[1], 1);
            assert_eq!((m.pending(), m.batches()), (0, 2));
            // An empty flush makes no call; neither does dropping it empty.
            m.flush().unwrap();
            drop(m);
            assert_eq!(fake.log().len(), 2);
        }

        #[test]
        fn dropping_a_mapper_sends_what_is_queued() {
            let fake = Fake::script(&[ok(0)]);
            {
                let mut m = Mapper::new();
                m.push_raw(0x2000, 7).unwrap();
            }
            assert_eq!(fake.calls().len(), 1);
        }

        #[test]
        fn replaced_present_entries_are_invalidated_one_by_one_or_all_at_once() {
            let fake = Fake::install(|_, _, _| ok(0));
            let mut m = Mapper::new();
            let present = pte::PRESENT;
            m.push(0x1000, 0, 0x40_0000, present).unwrap();
            m.push(0x1008, 0, 0x40_1000, 0).unwrap(); // was not mapped
            m.push(0x1010, 0, 0x40_2000, present).unwrap();
            m.flush().unwrap();
            let names: std::vec::Vec<_> = fake.calls().iter().map(|c| (c.0, c.1[0])).collect();
            assert_eq!(
                names[1..],
                [
                    (Hypercall::MmuInvlpg, 0x40_0000),
                    (Hypercall::MmuInvlpg, 0x40_2000)
                ]
            );
            drop(fake);
            let fake = Fake::install(|_, _, _| ok(0));
            for i in 0..=(INVLPG_MAX as u64) {
                m.push(0x1000 + 8 * i, 0, 0x40_0000 + (i << 12), present)
                    .unwrap();
            }
            m.flush().unwrap();
            let names: std::vec::Vec<_> = fake.calls().iter().map(|c| c.0).collect();
            assert_eq!(names, [Hypercall::MmuUpdate, Hypercall::MmuFlushTlb]);
        }

        #[test]
        fn a_refused_batch_is_reported_and_the_queue_is_emptied() {
            let fake = Fake::script(&[err(Error::PermissionDenied)]);
            let mut m = Mapper::new();
            m.push_raw(0x3000, 1).unwrap();
            let e = m.flush().unwrap_err();
            assert_eq!(e.error, Error::PermissionDenied);
            assert_eq!((m.pending(), fake.log().len()), (0, 1));
        }

        #[test]
        fn addresses_outside_the_map_region_are_refused_before_any_call() {
            let fake = Fake::script(&[]);
            let mut m = Mapper::new();
            assert_eq!(
                m.map(MAP_BASE + 1, 5, Flags::default()),
                Err(Error::InvalidArgument)
            );
            assert_eq!(
                m.map(MAP_BASE - PAGE, 5, Flags::default()),
                Err(Error::BadAddress)
            );
            assert_eq!(m.unmap(RECURSIVE_BASE), Err(Error::BadAddress));
            drop(m);
            assert!(fake.log().is_empty());
        }
    }
}
