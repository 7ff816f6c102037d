//! Access to physical memory through the direct map: single words
//! ([`read_phys_u64`], [`PhysWord`], [`PhysWords`]), copies in and out, and
//! the validator's page-table access ([`DirectMap`]). Every address is
//! checked against the direct map's reach before it is touched.

use super::{phys_to_virt, table_mut, DIRECT_MAP_LIMIT};
use core::sync::atomic::Ordering;

/// Reads the u64 at physical address `pa` (8-aligned), or `None` when it
/// is outside the direct map.
pub fn read_phys_u64(pa: u64) -> Option<u64> {
    if !pa.is_multiple_of(8) || pa.checked_add(8)? > DIRECT_MAP_LIMIT.load(Ordering::Relaxed) {
        return None;
    }
    // SAFETY: aligned and inside the direct map (checked above).
    Some(unsafe { (phys_to_virt(pa) as *const u64).read_volatile() })
}

/// Copies physical memory at `pa` into `buf`; the range must be inside one
/// page of the direct map (callers translate page by page).
pub fn copy_from_phys(pa: u64, buf: &mut [u8]) {
    assert!(pa + buf.len() as u64 <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed));
    // SAFETY: the source is inside the direct map (checked) and cannot
    // overlap `buf`, which is hypervisor memory, not a guest frame.
    unsafe {
        core::ptr::copy_nonoverlapping(phys_to_virt(pa) as *const u8, buf.as_mut_ptr(), buf.len())
    }
}

/// Copies `len` bytes of physical memory from `src` to `dst`, both ranges
/// inside the direct map; they may overlap (the same frame on both sides of
/// a grant copy).
pub fn copy_phys(src: u64, dst: u64, len: usize) {
    let limit = DIRECT_MAP_LIMIT.load(Ordering::Relaxed);
    let len64 = len as u64;
    assert!(src.checked_add(len64).is_some_and(|e| e <= limit));
    assert!(dst.checked_add(len64).is_some_and(|e| e <= limit));
    // SAFETY: both ranges are inside the direct map (checked above), so
    // valid for reads and writes of `len` bytes; `ptr::copy` allows them to
    // overlap. Neither is a Rust object: the caller chose guest frames the
    // copy's checks allowed (GNT-4).
    unsafe {
        core::ptr::copy(
            phys_to_virt(src) as *const u8,
            phys_to_virt(dst) as *mut u8,
            len,
        )
    }
}

/// Reads a `T` from physical memory at `pa`; the range must be inside the
/// direct map (callers translate page by page). One copy, straight into
/// the value (no zeroed buffer first).
#[inline]
pub fn read_phys<T: zerocopy::FromBytes>(pa: u64) -> T {
    assert!(pa + core::mem::size_of::<T>() as u64 <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed));
    // SAFETY: the source range is inside the direct map (checked above);
    // `read_unaligned` has no alignment requirement, and any bytes are a
    // valid `T` (`FromBytes`).
    unsafe { core::ptr::read_unaligned(phys_to_virt(pa) as *const T) }
}

/// `N` words of physical memory, 8-aligned and inside the direct map
/// (checked once, by [`PhysWords::new`] or [`PhysPage::words`]), written one store per word with
/// [`PhysWords::put`]: the caller loads each word from where it is and
/// stores it, with no copy on the stack and no `memcpy` call (an upcall
/// frame, TRAP-0).
pub struct PhysWords<const N: usize>(*mut u64);

impl<const N: usize> PhysWords<N> {
    /// The words at `pa`, if 8-aligned and inside the direct map. The caller
    /// translated them for the access it makes (a guest frame it may write
    /// for [`PhysWords::put`], read for [`PhysWords::get`]).
    #[inline(always)]
    pub fn new(pa: u64) -> Option<PhysWords<N>> {
        let end = pa.checked_add(8 * N as u64)?;
        (pa.is_multiple_of(8) && end <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed))
            .then(|| PhysWords(phys_to_virt(pa) as *mut u64))
    }

    /// Stores `w` as word `i` (`i < N`, checked; a constant index folds it).
    #[inline(always)]
    pub fn put(&self, i: usize, w: u64) {
        assert!(i < N);
        // SAFETY: word `i < N` (checked) of the range `new` or
        // `PhysPage::words` checked (inside the direct map, aligned); no
        // Rust reference covers guest frames.
        unsafe { self.0.add(i).write_volatile(w) }
    }

    /// Loads word `i` (`i < N`, checked; a constant index folds it): one
    /// load, for a caller that stores it straight where it goes (the
    /// `upcall_return` of a frame, TRAP-2).
    #[inline(always)]
    pub fn get(&self, i: usize) -> u64 {
        assert!(i < N);
        // SAFETY: word `i < N` (checked) of the range `new` or
        // `PhysPage::words` checked (inside the direct map, aligned); a
        // volatile read of a guest frame,
        // through no Rust reference.
        unsafe { self.0.add(i).read_volatile() }
    }
}

/// A physical page known to be inside the direct map: 4 KiB-aligned and
/// its whole 4 KiB below the direct map's limit, checked once when made
/// ([`PhysPage::new`]). The direct map only grows (`DIRECT_MAP_LIMIT` is
/// raised once, at boot), so the check holds for as long as the value
/// lives, and [`PhysPage::words`] needs only the offset's test, which a
/// caller that made it already folds away (a remembered translation's
/// frame, `guestmem::Remembered`: the upcall frame's page, TRAP-0).
#[derive(Clone, Copy)]
pub struct PhysPage(u64);

impl PhysPage {
    /// Physical page 0: aligned and inside every direct map.
    pub const ZERO: PhysPage = PhysPage(0);

    /// The page at `pa`, if 4 KiB-aligned and wholly inside the direct map.
    #[inline]
    pub fn new(pa: u64) -> Option<PhysPage> {
        let end = pa.checked_add(4096)?;
        (pa & 0xfff == 0 && end <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed)).then_some(PhysPage(pa))
    }

    /// Its physical address.
    #[inline(always)]
    pub fn addr(self) -> u64 {
        self.0
    }

    /// The `N` words at byte `offset` of the page, if `offset` is 8-aligned
    /// and they end within the page (no direct-map test: `new` made it for
    /// the whole page). The caller translated the page for the access it
    /// makes, as for [`PhysWords::new`].
    #[inline(always)]
    pub fn words<const N: usize>(self, offset: u64) -> Option<PhysWords<N>> {
        const { assert!(N > 0 && N * 8 <= 4096) };
        (offset.is_multiple_of(8) && offset <= 4096 - 8 * N as u64)
            .then(|| PhysWords(phys_to_virt(self.0 + offset) as *mut u64))
    }
}

/// A physical word known to be readable: 8-aligned and inside the direct
/// map, checked once when made ([`PhysWord::read_new`]). The direct map
/// only grows (`DIRECT_MAP_LIMIT` is raised once, at boot), so the check
/// holds for as long as the value lives, and [`PhysWord::read`] needs none.
#[derive(Clone, Copy)]
pub struct PhysWord(u64);

impl PhysWord {
    /// Physical address 0: aligned and inside every direct map.
    pub const ZERO: PhysWord = PhysWord(0);

    /// The word at `pa` and its value, if `pa` is 8-aligned and inside the
    /// direct map ([`read_phys_u64`]'s test).
    #[inline]
    pub fn read_new(pa: u64) -> Option<(PhysWord, u64)> {
        let value = read_phys_u64(pa)?;
        Some((PhysWord(pa), value))
    }

    /// The word's current value.
    #[inline(always)]
    pub fn read(self) -> u64 {
        // SAFETY: `self.0` was 8-aligned and inside the direct map when
        // made (`read_new`, or 0 for `ZERO`), and the direct map never
        // shrinks; a volatile read of a frame another CPU may write.
        unsafe { (phys_to_virt(self.0) as *const u64).read_volatile() }
    }
}

/// Whether every `(word, value)` in `words` still holds: the word equals
/// `value`. For re-checking the page-table entries a walk read
/// (`guestmem::Remembered`): the addresses were checked when the words
/// were made, so this is the loads and one test, no branch per word.
#[inline]
pub fn phys_words_hold<const N: usize>(words: &[(PhysWord, u64); N]) -> bool {
    let mut differ = 0;
    for &(word, value) in words {
        differ |= word.read() ^ value;
    }
    differ == 0
}

/// Copies `data` to physical memory at `pa` (inside the direct map).
pub fn copy_to_phys(pa: u64, data: &[u8]) {
    assert!(pa + data.len() as u64 <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed));
    // SAFETY: the destination is inside the direct map (checked) and is a
    // guest or hypervisor-owned frame the caller chose; `data` is separate.
    unsafe {
        core::ptr::copy_nonoverlapping(data.as_ptr(), phys_to_virt(pa) as *mut u8, data.len())
    }
}

/// Page-table access for the validator (`tahoma_core::mm`): single 64-bit
/// reads and writes through the direct map, never through guest mappings.
pub struct DirectMap;

impl tahoma_core::mm::PhysMem for DirectMap {
    fn read_entry(&self, mfn: u64, index: usize) -> u64 {
        read_phys_u64((mfn << 12) + (index as u64) * 8).unwrap_or(0)
    }

    fn write_entry(&mut self, mfn: u64, index: usize, value: u64) {
        let pa = (mfn << 12) + (index as u64) * 8;
        assert!(index < 512 && pa + 8 <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed));
        // SAFETY: inside the direct map (checked), 8-aligned; the validator
        // writes only entries of frames it has typed as page tables.
        unsafe { (phys_to_virt(pa) as *mut u64).write_volatile(value) }
        // Any translation the hypervisor remembers may have changed.
        crate::guestmem::note_table_write();
    }

    /// `DirectMap`'s `write_entry` without the generation bump when `old`
    /// was not present: every walk a remembered translation rests on
    /// (`guestmem::Remembered`) read only present entries, and each of
    /// them still holds its value while the generation is unchanged, so
    /// an entry that held a not-present value is none of them, and filling
    /// it changes no remembered walk. (A present entry may be one: writing
    /// over it bumps, and so does every other write.) The page-fault path's
    /// `update_va_mapping` of an unmapped page then costs the upcall's
    /// return no re-check (docs/bench-history/issue-13-fast-paths.md, "The page fault, round 7").
    #[inline(always)]
    fn replace_entry(&mut self, mfn: u64, index: usize, old: u64, value: u64) {
        let pa = (mfn << 12) + (index as u64) * 8;
        assert!(index < 512 && pa + 8 <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed));
        // SAFETY: inside the direct map (checked), 8-aligned; the validator
        // writes only entries of frames it has typed as page tables.
        unsafe { (phys_to_virt(pa) as *mut u64).write_volatile(value) }
        if old & hypercall_abi::pte::PRESENT != 0 {
            crate::guestmem::note_table_write();
        }
    }

    fn entries_mut(&mut self, mfn: u64) -> &mut [u64; 512] {
        // The caller may write any of them.
        crate::guestmem::note_table_write();
        table_mut(mfn)
    }

    fn write_entries(&mut self, mfn: u64, first: usize, values: &[u64]) {
        let end = first.saturating_add(values.len());
        let pa = (mfn << 12) + (first as u64) * 8;
        assert!(end <= 512 && (mfn + 1) << 12 <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed));
        // SAFETY: entries `first..end` of frame `mfn` lie inside the direct
        // map (checked) and do not overlap `values` (a slice in hypervisor
        // memory, never a page-table frame the validator writes); the
        // validator writes only entries of frames it has typed as tables,
        // and no other CPU walks a table it is building.
        unsafe {
            core::ptr::copy_nonoverlapping(
                values.as_ptr(),
                phys_to_virt(pa) as *mut u64,
                values.len(),
            )
        }
        // Any translation the hypervisor remembers may have changed.
        crate::guestmem::note_table_write();
    }
}
