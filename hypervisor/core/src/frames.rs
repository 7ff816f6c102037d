//! The physical frame allocator: one bit per frame over the usable RAM.
//!
//! Frames are named by their frame number (physical address / 4096). The
//! allocator refuses double frees and frees of frames it never managed, and
//! keeps an exact free count so tests can audit that every frame handed out
//! comes back.

use crate::memmap::{Range, PAGE};
use alloc::vec;
use alloc::vec::Vec;

/// A physical frame number.
pub type Mfn = u64;

/// Why a free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The frame is outside the managed RAM.
    NotManaged,
    /// The frame is already free.
    DoubleFree,
}

/// A bitmap allocator over a set of page-aligned ranges.
#[derive(Debug)]
pub struct FrameAllocator {
    base: Mfn,
    /// Bit set = frame free.
    free: Vec<u64>,
    /// Bit set = frame belongs to usable RAM.
    managed: Vec<u64>,
    /// Bit set = a free frame known to be all zeroes: it was scrubbed when
    /// it was freed ([`FrameAllocator::free_scrubbed`]). Frames free since
    /// boot are not (their contents are whatever firmware left), nor are
    /// frames given back with [`FrameAllocator::free`].
    clean: Vec<u64>,
    frames: u64,
    free_count: u64,
    hint: usize,
}

impl FrameAllocator {
    /// An allocator owning every frame of `ranges` (page-aligned, sorted).
    pub fn new(ranges: &[Range]) -> FrameAllocator {
        let base = ranges.first().map_or(0, |r| r.start / PAGE);
        let top = ranges.last().map_or(0, |r| r.end / PAGE);
        let words = usize::try_from(top.saturating_sub(base).div_ceil(64)).unwrap_or(0);
        let mut a = FrameAllocator {
            base,
            free: vec![0; words],
            managed: vec![0; words],
            clean: vec![0; words],
            frames: 0,
            free_count: 0,
            hint: 0,
        };
        for r in ranges {
            for mfn in r.start / PAGE..r.end / PAGE {
                let (w, b) = a.slot(mfn).expect("range inside bounds");
                if a.managed[w] & b == 0 {
                    a.managed[w] |= b;
                    a.free[w] |= b;
                    a.frames += 1;
                    a.free_count += 1;
                }
            }
        }
        a
    }

    fn slot(&self, mfn: Mfn) -> Option<(usize, u64)> {
        let i = mfn.checked_sub(self.base)?;
        let w = usize::try_from(i / 64).ok()?;
        (w < self.free.len()).then_some((w, 1u64 << (i % 64)))
    }

    /// One past the highest frame number the allocator covers.
    pub fn frame_limit(&self) -> Mfn {
        self.base + self.free.len() as u64 * 64
    }

    /// Total frames managed.
    pub fn total(&self) -> u64 {
        self.frames
    }

    /// Frames free now.
    pub fn free_count(&self) -> u64 {
        self.free_count
    }

    /// Takes one free frame, lowest-numbered after the last allocation.
    pub fn alloc(&mut self) -> Option<Mfn> {
        self.alloc_known().map(|(mfn, _)| mfn)
    }

    /// Takes one free frame like [`FrameAllocator::alloc`], and says
    /// whether it is known to be all zeroes (scrubbed when it was freed):
    /// only a frame that is not needs zeroing before it is handed out.
    pub fn alloc_known(&mut self) -> Option<(Mfn, bool)> {
        let n = self.free.len();
        for k in 0..n {
            let w = (self.hint + k) % n;
            let word = self.free[w];
            if word != 0 {
                let bit = word.trailing_zeros() as u64;
                self.free[w] &= !(1 << bit);
                let clean = self.clean[w] & (1 << bit) != 0;
                self.clean[w] &= !(1 << bit);
                self.free_count -= 1;
                self.hint = w;
                return Some((self.base + w as u64 * 64 + bit, clean));
            }
        }
        None
    }

    /// Takes `n` free frames at once, like `n` calls of
    /// [`FrameAllocator::alloc_known`] (the same frames, in the same order)
    /// but a bitmap word at a time: `take(mfn, clean)` is called for each.
    /// Takes nothing and returns `false` when fewer than `n` are free.
    pub fn alloc_many(&mut self, n: u64, mut take: impl FnMut(Mfn, bool)) -> bool {
        if n > self.free_count {
            return false;
        }
        let words = self.free.len();
        let mut left = n;
        let mut k = 0;
        while left > 0 && k < words {
            let w = (self.hint + k) % words;
            let mut word = self.free[w];
            while word != 0 && left > 0 {
                let b = word & word.wrapping_neg();
                word &= !b;
                take(
                    self.base + w as u64 * 64 + u64::from(b.trailing_zeros()),
                    self.clean[w] & b != 0,
                );
                self.clean[w] &= !b;
                left -= 1;
            }
            self.free[w] = word;
            if left > 0 {
                k += 1;
            } else {
                self.hint = w;
            }
        }
        self.free_count -= n - left;
        debug_assert_eq!(left, 0, "the free count was exact");
        left == 0
    }

    /// Takes `n` free frames at once like [`FrameAllocator::alloc_many`]
    /// (the same frames, in the same order) but hands them out as runs:
    /// `take(first, count, clean)` for each maximal run of frames
    /// `first..first + count` taken one after the other that are
    /// contiguous and all clean or all not (runs join across bitmap
    /// words). A domain's build adopts a run in one pass (issue 13). Takes
    /// nothing and returns `false` when fewer than `n` are free.
    ///
    /// Never inlined: inside the build its loops spilled (21 instructions
    /// per word passed over instead of a few).
    #[inline(never)]
    pub fn alloc_runs(&mut self, n: u64, mut take: impl FnMut(Mfn, u64, bool)) -> bool {
        if n > self.free_count {
            return false;
        }
        let words = self.free.len();
        let mut left = n;
        let mut k = 0;
        // The run being gathered: (first, count, clean).
        let mut run: Option<(Mfn, u64, bool)> = None;
        let mut w = self.hint.min(words);
        while left > 0 && k < words {
            if w == words {
                w = 0;
            }
            let mut word = self.free[w];
            if word == 0 {
                // Words with nothing free (the heap, earlier domains),
                // passed over in one scan up to the end.
                let skip = self.free[w..]
                    .iter()
                    .position(|&x| x != 0)
                    .unwrap_or(words - w);
                w += skip;
                k += skip;
                continue;
            }
            let clean = self.clean[w];
            while word != 0 && left > 0 {
                let bit = word.trailing_zeros();
                let is_clean = clean & (1 << bit) != 0;
                // The set bits from `bit` up, cut where cleanness changes
                // and at what is still wanted.
                let same = if is_clean { clean } else { !clean };
                let len = u64::from(((word & same) >> bit).trailing_ones()).min(left);
                let mask = if len == 64 {
                    !0
                } else {
                    ((1u64 << len) - 1) << bit
                };
                word &= !mask;
                self.clean[w] &= !mask;
                left -= len;
                let first = self.base + w as u64 * 64 + u64::from(bit);
                run = match run {
                    Some((f, c, cl)) if f + c == first && cl == is_clean => Some((f, c + len, cl)),
                    Some((f, c, cl)) => {
                        take(f, c, cl);
                        Some((first, len, is_clean))
                    }
                    None => Some((first, len, is_clean)),
                };
            }
            self.free[w] = word;
            if left > 0 {
                k += 1;
                w += 1;
            } else {
                self.hint = w;
            }
        }
        if let Some((f, c, cl)) = run {
            take(f, c, cl);
        }
        self.free_count -= n - left;
        debug_assert_eq!(left, 0, "the free count was exact");
        left == 0
    }

    /// Takes `count` physically contiguous free frames, aligned to `align`
    /// frames (a power of two); returns the first.
    pub fn alloc_contiguous(&mut self, count: u64, align: u64) -> Option<Mfn> {
        if count == 0 || !align.is_power_of_two() {
            return None;
        }
        let top = self.base + self.free.len() as u64 * 64;
        let mut start = self.base.next_multiple_of(align);
        while start + count <= top {
            match (start..start + count).find(|&p| !self.is_free(p)) {
                None => {
                    for p in start..start + count {
                        let (w, b) = self.slot(p).expect("checked free");
                        self.free[w] &= !b;
                        self.clean[w] &= !b;
                    }
                    self.free_count -= count;
                    return Some(start);
                }
                Some(busy) => start = (busy + 1).next_multiple_of(align),
            }
        }
        None
    }

    /// Whether `mfn` is managed and free.
    pub fn is_free(&self, mfn: Mfn) -> bool {
        self.slot(mfn).is_some_and(|(w, b)| self.free[w] & b != 0)
    }

    /// Whether `mfn` belongs to the managed RAM.
    pub fn is_managed(&self, mfn: Mfn) -> bool {
        self.slot(mfn)
            .is_some_and(|(w, b)| self.managed[w] & b != 0)
    }

    /// Whether `mfn` is free and known to be all zeroes.
    pub fn is_clean(&self, mfn: Mfn) -> bool {
        self.slot(mfn)
            .is_some_and(|(w, b)| self.free[w] & self.clean[w] & b != 0)
    }

    /// Returns a frame whose contents are unknown: it is zeroed when it is
    /// next handed out.
    pub fn free(&mut self, mfn: Mfn) -> Result<(), FreeError> {
        self.free_marked(mfn, false)
    }

    /// Returns a frame the caller has just scrubbed (every byte zero): it
    /// is handed out again without a second zeroing (issue 13).
    pub fn free_scrubbed(&mut self, mfn: Mfn) -> Result<(), FreeError> {
        self.free_marked(mfn, true)
    }

    /// The boot scrub (issue 13): calls `zero` on up to `limit` free
    /// frames not yet known to be all zeroes, in the order
    /// [`FrameAllocator::alloc_known`] hands frames out (from the lowest,
    /// as at boot), and marks each clean, so that it is not zeroed when
    /// it is handed out. `zero` must leave the frame all zeroes. Returns
    /// the frames zeroed.
    pub fn scrub_free(&mut self, limit: u64, mut zero: impl FnMut(Mfn)) -> u64 {
        let mut n = 0;
        for w in 0..self.free.len() {
            let mut dirty = self.free[w] & !self.clean[w];
            while dirty != 0 {
                if n == limit {
                    return n;
                }
                let b = dirty & dirty.wrapping_neg();
                dirty &= !b;
                zero(self.base + w as u64 * 64 + u64::from(b.trailing_zeros()));
                self.clean[w] |= b;
                n += 1;
            }
        }
        n
    }

    fn free_marked(&mut self, mfn: Mfn, clean: bool) -> Result<(), FreeError> {
        let (w, b) = self.slot(mfn).ok_or(FreeError::NotManaged)?;
        if self.managed[w] & b == 0 {
            return Err(FreeError::NotManaged);
        }
        if self.free[w] & b != 0 {
            return Err(FreeError::DoubleFree);
        }
        self.free[w] |= b;
        if clean {
            self.clean[w] |= b;
        } else {
            self.clean[w] &= !b;
        }
        self.free_count += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
