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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn ranges() -> Vec<Range> {
        vec![
            Range {
                start: 0x300000,
                end: 0x310000,
            },
            Range {
                start: 0x400000,
                end: 0x402000,
            },
        ]
    }

    #[test]
    fn hands_out_each_frame_once_then_runs_dry() {
        let mut a = FrameAllocator::new(&ranges());
        assert_eq!(a.total(), 18);
        let mut seen = BTreeSet::new();
        while let Some(f) = a.alloc() {
            assert!(seen.insert(f), "frame {f:#x} twice");
            assert!(a.is_managed(f));
        }
        assert_eq!(seen.len(), 18);
        assert_eq!(a.free_count(), 0);
    }

    #[test]
    fn refuses_bad_frees() {
        let mut a = FrameAllocator::new(&ranges());
        let f = a.alloc().unwrap();
        assert_eq!(a.free(f), Ok(()));
        assert_eq!(a.free(f), Err(FreeError::DoubleFree));
        assert_eq!(a.free(0x350), Err(FreeError::NotManaged));
        assert_eq!(a.free(0), Err(FreeError::NotManaged));
        assert_eq!(a.free(u64::MAX), Err(FreeError::NotManaged));
        assert_eq!(a.free_count(), 18);
    }

    #[test]
    fn contiguous_respects_alignment_and_holes() {
        let mut a = FrameAllocator::new(&ranges());
        let f = a.alloc_contiguous(4, 4).unwrap();
        assert_eq!(f % 4, 0);
        assert!(a.alloc_contiguous(3, 1).is_some());
        // The second range has only 2 frames: 16 frames in a row exist nowhere now.
        assert!(a.alloc_contiguous(16, 1).is_none());
        assert_eq!(a.free_count(), 18 - 7);
    }

    #[test]
    fn bounds_and_lookups_are_exact() {
        let a = FrameAllocator::new(&ranges());
        // 0x300..0x402 rounded up to whole 64-frame words.
        assert_eq!(a.frame_limit(), 0x300 + 5 * 64);
        for (mfn, managed) in [
            (0x2ff, false),
            (0x300, true),
            (0x30f, true),
            (0x310, false),
            (0x401, true),
            (0x402, false),
            (a.frame_limit() - 1, false),
            (a.frame_limit(), false),
        ] {
            assert_eq!(a.is_managed(mfn), managed, "{mfn:#x}");
            assert_eq!(a.is_free(mfn), managed, "{mfn:#x}");
        }
        let mut a = a;
        assert_eq!(a.free(a.frame_limit()), Err(FreeError::NotManaged));
        assert_eq!(a.free(0x310), Err(FreeError::NotManaged));
        assert_eq!(FrameAllocator::new(&[]).alloc(), None);
        assert_eq!(FrameAllocator::new(&[]).frame_limit(), 0);
    }

    #[test]
    fn allocation_is_lowest_first_and_wraps_around_from_the_hint() {
        let mut a = FrameAllocator::new(&ranges());
        assert_eq!(a.alloc(), Some(0x300));
        assert_eq!(a.alloc(), Some(0x301));
        assert!(!a.is_free(0x300) && !a.is_free(0x301));
        while a.alloc().is_some() {}
        // The last frame came from the top word; freed frames below and in
        // it are found from there, the lower one after wrapping around.
        a.free(0x301).unwrap();
        a.free(0x401).unwrap();
        assert!(a.is_free(0x301));
        assert_eq!(a.alloc(), Some(0x401));
        assert_eq!(a.alloc(), Some(0x301));
        assert_eq!(a.alloc(), None);
        assert_eq!(a.free_count(), 0);
    }

    #[test]
    fn contiguous_runs_from_frame_zero_up_to_the_top() {
        // Memory from frame 0: the search starts at the base and may end
        // exactly at the top (kills `base + len` -> `base * len` and
        // `start + count <= top` -> `start - count <= top`).
        let mut a = FrameAllocator::new(&[Range {
            start: 0,
            end: 16 * 4096,
        }]);
        assert_eq!(a.alloc_contiguous(2, 1), Some(0));
        assert_eq!(a.alloc_contiguous(2, 2), Some(2));
        assert_eq!(a.alloc_contiguous(1, 1), Some(4));
        // The last eleven frames, ending exactly at the top.
        assert_eq!(a.alloc_contiguous(11, 1), Some(5));
        assert_eq!(a.alloc_contiguous(1, 1), None);
        assert_eq!(a.free_count(), 0);
    }

    #[test]
    fn contiguous_runs_are_exact() {
        let mut a = FrameAllocator::new(&ranges());
        assert_eq!(a.alloc_contiguous(0, 1), None);
        assert_eq!(a.alloc_contiguous(1, 3), None, "alignment not a power of 2");
        assert_eq!(a.free_count(), 18);
        assert_eq!(a.alloc(), Some(0x300));
        // 0x300 is busy: the first aligned run of 4 starts at 0x304.
        assert_eq!(a.alloc_contiguous(4, 4), Some(0x304));
        for p in 0x304..0x308 {
            assert!(!a.is_free(p), "{p:#x}");
        }
        assert!(a.is_free(0x301) && a.is_free(0x308));
        assert_eq!(a.free_count(), 18 - 5);
        // Three in a row fit only at 0x301.
        assert_eq!(a.alloc_contiguous(3, 1), Some(0x301));
        // The whole second range, exactly.
        assert_eq!(a.alloc_contiguous(2, 2), Some(0x308));
        assert_eq!(a.alloc_contiguous(8, 1), None);
        assert_eq!(a.alloc_contiguous(6, 1), Some(0x30a));
        assert_eq!(a.alloc_contiguous(2, 1), Some(0x400));
        assert_eq!(a.alloc_contiguous(1, 1), None);
        assert_eq!(a.free_count(), 0);
        assert_eq!(a.alloc(), None);
    }

    /// Issue 13: only frames freed as scrubbed come back as known zero;
    /// frames free since boot, or freed with `free`, do not, and a frame
    /// is clean only while it is free.
    #[test]
    fn only_frames_freed_scrubbed_come_back_clean() {
        let mut a = FrameAllocator::new(&ranges());
        assert!(!a.is_clean(0x300), "boot frames are not known to be zero");
        assert_eq!(a.alloc_known(), Some((0x300, false)));
        assert_eq!(a.alloc_known(), Some((0x301, false)));
        a.free_scrubbed(0x300).unwrap();
        a.free(0x301).unwrap();
        assert!(a.is_clean(0x300) && !a.is_clean(0x301));
        assert_eq!(a.free_scrubbed(0x300), Err(FreeError::DoubleFree));
        assert!(a.is_clean(0x300), "a refused free changes nothing");
        // Drain the rest; the two come back last, as they were freed.
        let mut back = Vec::new();
        while let Some(k) = a.alloc_known() {
            back.push(k);
        }
        assert!(back.contains(&(0x300, true)) && back.contains(&(0x301, false)));
        assert_eq!(back.iter().filter(|(_, c)| *c).count(), 1);
        assert!(!a.is_clean(0x300), "allocated: no longer clean");
        // A scrubbed frame taken in a contiguous run loses its mark too.
        a.free_scrubbed(0x308).unwrap();
        assert_eq!(a.alloc_contiguous(1, 8), Some(0x308));
        a.free(0x308).unwrap();
        assert_eq!(a.alloc_known(), Some((0x308, false)));
    }

    /// The boot scrub zeroes free frames not known clean, lowest first, at
    /// most `limit`, each once, and marks them clean; frames in use and
    /// frames already clean are not touched, and the frames handed out next
    /// are the scrubbed ones.
    #[test]
    fn the_boot_scrub_zeroes_each_dirty_free_frame_once() {
        let mut a = FrameAllocator::new(&ranges());
        let total = a.free_count();
        let used = a.alloc().unwrap();
        let scrubbed = a.alloc().unwrap();
        a.free_scrubbed(scrubbed).unwrap();
        let mut zeroed = Vec::new();
        assert!(total > 10, "the test needs a few frames");
        assert_eq!(a.scrub_free(5, |m| zeroed.push(m)), 5);
        assert!(
            zeroed.windows(2).all(|w| w[0] < w[1]),
            "lowest first, once each"
        );
        assert!(!zeroed.contains(&used) && !zeroed.contains(&scrubbed));
        assert!(zeroed.iter().all(|&m| a.is_clean(m)));
        assert_eq!(
            (0..0x400).filter(|&m| a.is_clean(m)).count(),
            6,
            "no more than the limit (and the one freed scrubbed)"
        );
        for _ in 0..6 {
            let (m, clean) = a.alloc_known().unwrap();
            assert!(clean, "frame {m:#x}: the first six handed out are clean");
        }
        assert_eq!(a.alloc_known().map(|(_, c)| c), Some(false));
        let mut rest = BTreeSet::new();
        let n = a.scrub_free(u64::MAX, |m| assert!(rest.insert(m), "{m:#x} twice"));
        assert_eq!(n, total - 8, "every free frame left: none was clean");
        assert_eq!(a.scrub_free(u64::MAX, |m| panic!("{m:#x} zeroed again")), 0);
    }

    proptest! {
        /// `alloc_many(n)` hands out exactly what `n` calls of
        /// `alloc_known` would, clean marks included, and leaves the same
        /// allocator; asking for more than is free takes nothing.
        #[test]
        fn alloc_many_equals_one_at_a_time(
            ops in proptest::collection::vec((any::<bool>(), 0u64..40), 0..40),
        ) {
            let mut a = FrameAllocator::new(&ranges());
            let mut b = FrameAllocator::new(&ranges());
            let mut held = Vec::new();
            for (op, n) in ops {
                if op {
                    let mut many = Vec::new();
                    let ok = a.alloc_many(n, |m, c| many.push((m, c)));
                    if n > b.free_count() {
                        prop_assert!(!ok && many.is_empty());
                        continue;
                    }
                    let one: Vec<_> = (0..n).map(|_| b.alloc_known().unwrap()).collect();
                    prop_assert!(ok);
                    prop_assert_eq!(&many, &one);
                    held.extend(many.iter().map(|&(m, _)| m));
                } else if let Some(m) = held.pop() {
                    // Freed scrubbed or not, alike in both.
                    if n % 2 == 0 { a.free_scrubbed(m).unwrap(); b.free_scrubbed(m).unwrap(); }
                    else { a.free(m).unwrap(); b.free(m).unwrap(); }
                }
                prop_assert_eq!(a.free_count(), b.free_count());
                prop_assert_eq!(&a.free, &b.free);
                prop_assert_eq!(&a.clean, &b.clean);
            }
        }

        /// `alloc_runs(n)` hands out exactly the frames, in the order and
        /// with the clean marks, that `alloc_many(n)` does, as runs that
        /// are contiguous, of one cleanness, and maximal (two runs in a
        /// row never join up); the allocators end up the same.
        #[test]
        fn alloc_runs_equals_alloc_many(
            ops in proptest::collection::vec((any::<bool>(), 0u64..150), 0..40),
        ) {
            // Several bitmap words, a hole, a range ending mid-word.
            let big = [
                Range { start: 0x300000, end: 0x3c0000 },
                Range { start: 0x3c8000, end: 0x3d5000 },
            ];
            let mut a = FrameAllocator::new(&big);
            let mut b = FrameAllocator::new(&big);
            let mut held = Vec::new();
            for (op, n) in ops {
                if op {
                    let mut runs = Vec::new();
                    let ok = a.alloc_runs(n, |f, c, cl| runs.push((f, c, cl)));
                    let mut many = Vec::new();
                    let ok_b = b.alloc_many(n, |m, c| many.push((m, c)));
                    prop_assert_eq!(ok, ok_b);
                    if !ok {
                        prop_assert!(runs.is_empty());
                        continue;
                    }
                    prop_assert!(runs.iter().all(|&(_, c, _)| c > 0));
                    for w in runs.windows(2) {
                        let ((f, c, cl), (g, _, dl)) = (w[0], w[1]);
                        prop_assert!(f + c != g || cl != dl, "runs {:?} not joined", w);
                    }
                    let flat: Vec<_> = runs
                        .iter()
                        .flat_map(|&(f, c, cl)| (f..f + c).map(move |m| (m, cl)))
                        .collect();
                    prop_assert_eq!(&flat, &many);
                    held.extend(flat.iter().map(|&(m, _)| m));
                } else {
                    // Free a few, scrubbed or not, alike in both.
                    for _ in 0..(n % 40) {
                        let Some(m) = held.pop() else { break };
                        if n % 2 == 0 { a.free_scrubbed(m).unwrap(); b.free_scrubbed(m).unwrap(); }
                        else { a.free(m).unwrap(); b.free(m).unwrap(); }
                    }
                }
                prop_assert_eq!(a.free_count(), b.free_count());
                prop_assert_eq!(&a.free, &b.free);
                prop_assert_eq!(&a.clean, &b.clean);
                prop_assert_eq!(a.hint, b.hint);
            }
        }

        #[test]
        fn free_count_is_exact(ops in proptest::collection::vec(any::<bool>(), 0..200)) {
            let mut a = FrameAllocator::new(&ranges());
            let mut held = Vec::new();
            for op in ops {
                if op { if let Some(f) = a.alloc() { held.push(f); } }
                else if let Some(f) = held.pop() { a.free(f).unwrap(); }
                prop_assert_eq!(a.free_count() + held.len() as u64, a.total());
            }
        }
    }
}
