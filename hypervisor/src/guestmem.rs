//! Checked access to guest memory (spec CALL-4).
//!
//! A guest pointer is an *allegation*: [`GuestRange::new`] checks its shape
//! (no wrap, below the hypervisor's half, within the call's length limit),
//! and the copies translate every page through the guest's own page tables
//! (present and user-accessible at every level, writable where written)
//! before touching it through the direct map. Guest memory never becomes a
//! Rust reference, and a bad pointer is an error code, never a fault in
//! ring 0.
#![forbid(unsafe_code)]

use crate::mem::{self, pte};
use core::sync::atomic::{AtomicU64, Ordering};
use hypercall_abi::layout::GUEST_VA_TOP;
use hypercall_abi::Error;
use tahoma_core::event::DomId;
use tahoma_core::mm::{FrameType, Mm, Owner};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A range of guest virtual memory whose shape has been checked.
#[derive(Clone, Copy, Debug)]
pub struct GuestRange {
    va: u64,
    len: u64,
}

impl GuestRange {
    /// Checks `[va, va + len)`: no wrap, below [`GUEST_VA_TOP`], `len <= max`.
    /// A zero-length range names no memory and is valid wherever it points
    /// (CALL-4).
    pub fn new(va: u64, len: u64, max: u64) -> Result<GuestRange, Error> {
        if len > max {
            return Err(Error::InvalidArgument);
        }
        if len == 0 {
            return Ok(GuestRange { va, len });
        }
        match va.checked_add(len) {
            Some(end) if end <= GUEST_VA_TOP => Ok(GuestRange { va, len }),
            _ => Err(Error::BadAddress),
        }
    }
}

/// A domain's view of memory: its loaded root and the frame table that
/// says which frames it may touch.
#[derive(Clone, Copy)]
pub struct Space<'a> {
    /// Physical address of the loaded PML4.
    pub root: u64,
    /// The domain.
    pub dom: DomId,
    /// The frame table.
    pub mm: &'a Mm,
}

/// Translates `va` through the page tables rooted at `space.root` for a
/// user access; returns the physical address. The final frame must be one
/// the domain may map with that access (`Mm::may_map`): defence in depth
/// behind the validator.
pub fn translate(space: &Space<'_>, va: u64, write: bool) -> Result<u64, Error> {
    walk(space, va, write, &mut NoRecord)
}

/// [`translate`] for reading, out of line: the miss of
/// [`Remembered::read`], kept apart from `upcall_return`'s hit path so that
/// path's register allocation does not pay for it (`page_fault`).
#[cold]
#[inline(never)]
fn translate_cold(space: &Space<'_>, va: u64) -> Result<u64, Error> {
    translate(space, va, false)
}

/// Page-table levels a walk reads at most.
const LEVELS: usize = 4;

/// Where [`walk`] records the entries it read. Generic, so that a plain
/// [`translate`] (every guest copy: `mmu_update`'s request array, each
/// hypercall's arguments) compiles to a walk with no recording at all:
/// recording into a zeroed array cost `mmu_update_batch_1` 176
/// instructions a call (issue 13, docs/bench-history/regressions.md "Rows that rose").
trait Record {
    /// The walk read `entry` at `word`, at `level` (4 to 1).
    fn record(&mut self, level: u32, word: mem::PhysWord, entry: u64);
}

/// Records nothing ([`translate`]).
struct NoRecord;

impl Record for NoRecord {
    #[inline(always)]
    fn record(&mut self, _level: u32, _word: mem::PhysWord, _entry: u64) {}
}

/// Records every entry, top down; after a huge leaf the last one is
/// repeated, so all [`LEVELS`] are set ([`Remembered`]).
impl Record for [(mem::PhysWord, u64); LEVELS] {
    #[inline(always)]
    fn record(&mut self, level: u32, word: mem::PhysWord, entry: u64) {
        for r in self.iter_mut().skip(LEVELS - level as usize) {
            *r = (word, entry);
        }
    }
}

/// [`translate`], recording in `read` the physical address and the value of
/// every entry the walk read, top down; after a huge leaf the last one is
/// repeated, so all [`LEVELS`] are set. The translation is a function of
/// `space.root`, `va`, `write` and those entries alone (and of `may_map`),
/// which is what [`Remembered`] relies on.
fn walk<R: Record>(space: &Space<'_>, va: u64, write: bool, read: &mut R) -> Result<u64, Error> {
    if va >= GUEST_VA_TOP {
        return Err(Error::BadAddress);
    }
    let need = pte::PRESENT | pte::USER | if write { pte::WRITABLE } else { 0 };
    let mut table = space.root & pte::ADDR;
    for level in (1..=4u32).rev() {
        let index = (va >> (12 + 9 * (level - 1))) & 0x1ff;
        let at = table + index * 8;
        let (word, entry) = mem::PhysWord::read_new(at).ok_or(Error::BadAddress)?;
        read.record(level, word, entry);
        if entry & need != need {
            return Err(Error::BadAddress);
        }
        let leaf_huge = (level == 2 || level == 3) && entry & pte::HUGE != 0;
        if level == 1 || leaf_huge {
            let page_bits = 12 + 9 * (level - 1);
            let base = entry & pte::ADDR & !((1u64 << page_bits) - 1);
            let pa = base + (va & ((1u64 << page_bits) - 1));
            if !may_map(space, pa >> 12, write) {
                return Err(Error::BadAddress);
            }
            return Ok(pa);
        }
        table = entry & pte::ADDR;
    }
    Err(Error::BadAddress)
}

/// `Mm::may_map(space.dom, mfn, write)`, its common case tested inline: a
/// frame the domain owns that is not `Special` may be mapped either way
/// (that is what `may_map` answers for it); any other frame is asked of
/// `may_map` itself.
#[inline(always)]
fn may_map(space: &Space<'_>, mfn: u64, write: bool) -> bool {
    match space.mm.frame(mfn) {
        Some(f)
            if f.owner() == Owner::Domain(space.dom) && f.frame_type() != FrameType::Special =>
        {
            true
        }
        _ => space.mm.may_map(space.dom, mfn, write).is_ok(),
    }
}

/// Physical pieces (address, length) covering `range`, each within a page.
fn pieces(
    space: &Space<'_>,
    range: GuestRange,
    write: bool,
    mut f: impl FnMut(u64, usize, usize),
) -> Result<(), Error> {
    let mut done = 0u64;
    while done < range.len {
        let va = range.va + done;
        let chunk = (4096 - (va & 0xfff)).min(range.len - done);
        let pa = translate(space, va, write)?;
        f(pa, done as usize, chunk as usize);
        done += chunk;
    }
    Ok(())
}

/// Checks that every byte of `range` is accessible (for writing if `write`).
pub fn check(space: &Space<'_>, range: GuestRange, write: bool) -> Result<(), Error> {
    pieces(space, range, write, |_, _, _| {})
}

/// Copies guest memory `range` into `buf` (`buf.len() == range.len()`).
/// Reading has no side effect, so one pass suffices: on an error `buf`
/// holds a prefix the caller discards.
pub fn copy_from(space: &Space<'_>, range: GuestRange, buf: &mut [u8]) -> Result<(), Error> {
    debug_assert_eq!(buf.len() as u64, range.len);
    pieces(space, range, false, |pa, off, len| {
        mem::copy_from_phys(pa, &mut buf[off..off + len])
    })
}

/// Pages whose translations [`copy_to`] remembers between its checking
/// pass and its writing pass (larger writes translate twice).
const REMEMBERED_PAGES: usize = 4;

/// Copies `data` into guest memory at `va`; nothing is written unless every
/// page is writable.
pub fn copy_to(space: &Space<'_>, va: u64, data: &[u8]) -> Result<(), Error> {
    let range = GuestRange::new(va, data.len() as u64, u64::MAX)?;
    let mut seen = [(0u64, 0usize, 0usize); REMEMBERED_PAGES];
    let mut n = 0;
    pieces(space, range, true, |pa, off, len| {
        if n < REMEMBERED_PAGES {
            seen[n] = (pa, off, len);
        }
        n += 1;
    })?;
    if n <= REMEMBERED_PAGES {
        for &(pa, off, len) in &seen[..n] {
            mem::copy_to_phys(pa, &data[off..off + len]);
        }
        return Ok(());
    }
    pieces(space, range, true, |pa, off, len| {
        mem::copy_to_phys(pa, &data[off..off + len])
    })
}

/// Reads a `T` from guest address `va`.
pub fn read<T: FromBytes + IntoBytes>(space: &Space<'_>, va: u64) -> Result<T, Error> {
    let len = core::mem::size_of::<T>() as u64;
    let range = GuestRange::new(va, len, u64::MAX)?;
    if len > 0 && len <= 4096 - (va & 0xfff) {
        // Within one page: one translation, one copy straight into the
        // value (no zeroed buffer first).
        return Ok(mem::read_phys(translate(space, range.va, false)?));
    }
    let mut value = T::new_zeroed();
    let range = GuestRange::new(va, core::mem::size_of::<T>() as u64, u64::MAX)?;
    copy_from(space, range, value.as_mut_bytes())?;
    Ok(value)
}

/// Writes `value` to guest address `va`.
pub fn write<T: IntoBytes + Immutable>(space: &Space<'_>, va: u64, value: &T) -> Result<(), Error> {
    copy_to(space, va, value.as_bytes())
}

/// The generation of every guest page table's contents: bumped whenever the
/// validator writes an entry (`mem::DirectMap::write_entry`: `mmu_update`,
/// `update_va_mapping`, pin, unpin, grant and device mappings, teardown),
/// but for a write over an entry that was not present
/// (`mem::DirectMap::replace_entry`: no walk a slot rests on read it), and
/// when a domain is destroyed. A remembered translation of the current
/// generation is used as it is; one of an older generation only after its
/// walk's entries are read again and found unchanged ([`Remembered`]).
/// Starts at 1: 0 marks an empty slot. One CPU, interrupts off: `Relaxed`
/// is all the ordering needed (SMP: a write on another CPU must bump it
/// before that CPU's flush IPI completes, like any TLB shootdown).
static TABLE_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Some guest page-table entry changed (or a domain went): every
/// remembered translation must be checked again before its next use.
#[inline]
pub fn note_table_write() {
    TABLE_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// One remembered translation: page `va_page` of domain `dom` running on
/// `root` is frame `page` (its direct-map reach checked when the slot was
/// filled: `mem::PhysPage`), through the entries in `read` (physical
/// address and value, top down), as of `generation`.
#[derive(Clone, Copy)]
struct Slot {
    generation: u64,
    root: u64,
    va_page: u64,
    page: mem::PhysPage,
    read: [(mem::PhysWord, u64); LEVELS],
    dom: DomId,
}

impl Slot {
    /// Some entry somewhere was written since this slot was filled or last
    /// checked: whether every entry its walk read still holds its value
    /// (then it is current again), else void it. Cold: the upcall paths'
    /// callers keep their values around it only on this branch.
    #[cold]
    #[inline(never)]
    fn recheck(&mut self) -> bool {
        if mem::phys_words_hold(&self.read) {
            self.generation = TABLE_GENERATION.load(Ordering::Relaxed);
            true
        } else {
            self.generation = 0;
            false
        }
    }

    /// Whether the slot is filled with `va`'s page of `space.dom` on
    /// `space.root` (its generation not yet judged).
    #[inline(always)]
    fn holds(&self, space: &Space<'_>, va: u64) -> bool {
        self.generation != 0
            && self.va_page == va & !0xfff
            && self.dom == space.dom
            && self.root == space.root
    }

    /// The slot's page, if the frame table still has it as `space.dom`'s
    /// own and not `Special` (`may_map`'s inline common case).
    #[inline(always)]
    fn owned_page(&self, space: &Space<'_>) -> Option<mem::PhysPage> {
        match space.mm.frame(self.page.addr() >> 12) {
            Some(f)
                if f.owner() == Owner::Domain(space.dom)
                    && f.frame_type() != FrameType::Special =>
            {
                Some(self.page)
            }
            _ => None,
        }
    }

    const EMPTY: Slot = Slot {
        generation: 0,
        root: 0,
        va_page: 0,
        page: mem::PhysPage::ZERO,
        read: [(mem::PhysWord::ZERO, 0); LEVELS],
        dom: 0,
    };
}

/// A few remembered translations, for the pages the hypervisor writes on
/// every upcall (the callback stack's top; TRAP-0) and reads back at
/// `upcall_return`. A software TLB that never outlives a change: a slot is
/// used as it is only if no page-table entry anywhere was written since it
/// was filled or last checked (`TABLE_GENERATION`). After any write it is
/// used only if every entry its walk read (the four levels: physical
/// address and value, recorded by [`walk`]) still holds the value it held:
/// the walk is a function of the root, the address and those entries, so
/// it would give the same frame, with the same permission bits, all the
/// way down. A write anywhere else (the page-fault handler's
/// `update_va_mapping` of another page) then costs four reads instead of a
/// walk; a write to any of them (the page remapped, unmapped, made
/// read-only, or a table above it replaced) voids the slot, however the
/// table was written. The domain must still run on the same root
/// (`new_baseptr` changes the key), and the frame must still pass
/// `Mm::may_map` for the access (checked on every use, as a fresh walk
/// would). A miss walks the tables as [`translate`] does.
pub struct Remembered {
    slots: [Slot; REMEMBERED_SLOTS],
}

/// Slots in [`Remembered`]: two domains ping-ponging events, each with a
/// frame that may straddle two pages, fit without evicting each other.
const REMEMBERED_SLOTS: usize = 8;

impl Remembered {
    /// Nothing remembered.
    pub const fn new() -> Remembered {
        Remembered {
            slots: [Slot::EMPTY; REMEMBERED_SLOTS],
        }
    }

    /// The slot `va` of `space.dom` would use.
    #[inline]
    fn index(space: &Space<'_>, va: u64) -> usize {
        ((va >> 12) as usize).wrapping_add(usize::from(space.dom).wrapping_mul(3))
            % REMEMBERED_SLOTS
    }

    /// The remembered frame of `va`'s page, if a slot holds it and is still
    /// valid (same domain and root; same generation, or the walk's entries
    /// unchanged), checked with `may_map` for the access as a fresh walk
    /// would be.
    #[inline(always)]
    fn lookup(&mut self, space: &Space<'_>, va: u64, write: bool) -> Option<Result<u64, Error>> {
        let s = &mut self.slots[Self::index(space, va)];
        if s.generation == 0
            || s.va_page != va & !0xfff
            || s.dom != space.dom
            || s.root != space.root
        {
            return None;
        }
        if s.generation != TABLE_GENERATION.load(Ordering::Relaxed) && !s.recheck() {
            return None;
        }
        // The entries' permission bits were checked for writing when the
        // slot was filled; they are unchanged.
        if !may_map(space, s.page.addr() >> 12, write) {
            return Some(Err(Error::BadAddress));
        }
        Some(Ok(s.page.addr() | (va & 0xfff)))
    }

    /// The hit that needs no call: the page of `va` (the caller adds the
    /// offset with `mem::PhysPage::words`, no direct-map test) if its slot holds `va`'s page of `space.dom` on `space.root` and is
    /// valid (the same tests as [`Remembered::lookup`]: of the current
    /// generation, or its walk's four entries read again and found
    /// unchanged, `Slot::recheck`, which makes it current or voids it),
    /// and the frame is
    /// one `may_map`'s inline common case allows either way (the domain's
    /// own, not `Special`). `None` in every other case, never a refusal:
    /// the caller then takes its full path ([`Remembered::destination`],
    /// [`Remembered::read`]), which re-checks (and voids), walks or
    /// refuses exactly as before. No call but the re-check's, cold, so the
    /// caller's hot path keeps no value across one (`push_upcall`,
    /// `restore`: docs/bench-history/issue-13-fast-paths.md, "SDK upcalls, round 7").
    #[inline(always)]
    pub fn current(&mut self, space: &Space<'_>, va: u64) -> Option<mem::PhysPage> {
        let s = &mut self.slots[Self::index(space, va)];
        if !s.holds(space, va) {
            return None;
        }
        if s.generation != TABLE_GENERATION.load(Ordering::Relaxed) && !s.recheck() {
            return None;
        }
        s.owned_page(space)
    }

    /// [`Remembered::current`] with no call at all: a slot of an older
    /// table generation is a miss too (not re-checked here: the caller's
    /// full path re-checks it), so a caller that keeps values across its
    /// own cold calls needs no spill on its hot path (`leave_slow`'s event
    /// upcall: docs/bench-history/issue-13-fast-paths.md, "SDK upcalls, round 9, the hypervisor's
    /// share").
    #[inline(always)]
    pub fn current_no_recheck(&mut self, space: &Space<'_>, va: u64) -> Option<mem::PhysPage> {
        let s = &self.slots[Self::index(space, va)];
        if !s.holds(space, va) || s.generation != TABLE_GENERATION.load(Ordering::Relaxed) {
            return None;
        }
        s.owned_page(space)
    }

    /// Translates `va` for writing, from a slot if one is valid; a walk
    /// otherwise, remembered.
    #[inline(always)]
    fn translate_write(&mut self, space: &Space<'_>, va: u64) -> Result<u64, Error> {
        if let Some(r) = self.lookup(space, va, true) {
            return r;
        }
        self.fill(space, va)
    }

    /// A miss of [`Remembered::translate_write`]: walks and remembers (a
    /// frame outside the direct map, which no guest frame is, is not
    /// remembered; its use fails as before).
    #[inline(never)]
    fn fill(&mut self, space: &Space<'_>, va: u64) -> Result<u64, Error> {
        let generation = TABLE_GENERATION.load(Ordering::Relaxed);
        let mut read = [(mem::PhysWord::ZERO, 0); LEVELS];
        let pa = walk(space, va, true, &mut read)?;
        let Some(page) = mem::PhysPage::new(pa & !0xfff) else {
            return Ok(pa);
        };
        self.slots[Self::index(space, va)] = Slot {
            generation,
            root: space.root,
            va_page: va & !0xfff,
            page,
            read,
            dom: space.dom,
        };
        Ok(pa)
    }

    /// Reads a `T` from guest address `va` as [`read`] does, through a
    /// remembered translation when one is valid (the `upcall_return` of a
    /// frame the hypervisor just wrote). A miss walks the tables and is not
    /// remembered: only written pages are.
    pub fn read<T: FromBytes + IntoBytes>(
        &mut self,
        space: &Space<'_>,
        va: u64,
    ) -> Result<T, Error> {
        let len = core::mem::size_of::<T>() as u64;
        let range = GuestRange::new(va, len, u64::MAX)?;
        if len == 0 || len > 4096 - (range.va & 0xfff) {
            return read(space, va);
        }
        let pa = match self.lookup(space, range.va, false) {
            Some(r) => r?,
            None => translate_cold(space, range.va)?,
        };
        Ok(mem::read_phys(pa))
    }

    /// Where `N` words written at guest address `va` (8-aligned) go, as
    /// [`write()`] would check them (every byte writable), through remembered
    /// translations; nothing is written. The caller then builds the words
    /// straight from where they are and stores them (see [`Destination`]).
    #[inline(always)]
    pub fn destination<const N: usize>(
        &mut self,
        space: &Space<'_>,
        va: u64,
    ) -> Result<Destination<N>, Error> {
        const { assert!(N > 0 && N * 8 <= 4096) };
        let len = 8 * N as u64;
        let range = GuestRange::new(va, len, 4096)?;
        if range.va % 8 != 0 {
            return Err(Error::BadAddress);
        }
        let first_len = (4096 - (range.va & 0xfff)).min(len);
        let first = self.translate_write(space, range.va)?;
        if first_len == len {
            return mem::PhysWords::new(first)
                .map(Destination::One)
                .ok_or(Error::BadAddress);
        }
        let second = self.translate_write(space, range.va + first_len)?;
        Ok(Destination::Two(first, first_len as usize, second))
    }
}

/// Where [`Remembered::destination`] found `N` words go: checked writable,
/// within one page or split across two. Store them with
/// [`Destination::One`]'s [`mem::PhysWords::put`] (one store per word,
/// straight from where they are) or [`Destination::store_split`].
pub enum Destination<const N: usize> {
    /// All of them here.
    One(mem::PhysWords<N>),
    /// The first `.1` bytes at `.0`, the rest at `.2`.
    Two(u64, usize, u64),
}

impl<const N: usize> Destination<N> {
    /// Stores `words` across the two pages of a [`Destination::Two`].
    pub fn store_split(first: u64, first_len: usize, second: u64, words: &[u64; N]) {
        let (a, b) = words.as_bytes().split_at(first_len);
        mem::copy_to_phys(first, a);
        mem::copy_to_phys(second, b);
    }
}
