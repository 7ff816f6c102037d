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
