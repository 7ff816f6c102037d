//! The boot memory map, reduced to the page-aligned RAM the hypervisor may use.

use alloc::vec::Vec;

/// Page size in bytes.
pub const PAGE: u64 = 4096;

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl Range {
    /// `[start, start + len)`, saturating at the top of the address space.
    pub fn new(start: u64, len: u64) -> Range {
        Range {
            start,
            end: start.saturating_add(len),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Kind of a firmware memory-map entry (the E820 / PVH numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Usable RAM (type 1).
    Ram,
    /// Anything else.
    Reserved(u32),
}

impl Kind {
    /// From the E820 type number.
    pub fn from_e820(t: u32) -> Kind {
        if t == 1 {
            Kind::Ram
        } else {
            Kind::Reserved(t)
        }
    }
}

/// Computes the usable RAM: the `Ram` entries, shrunk inward to page
/// boundaries, minus every reserved entry and every range in `exclude`
/// (the hypervisor image, the boot module, low memory), merged and sorted.
pub fn usable(entries: &[(Range, Kind)], exclude: &[Range]) -> Vec<Range> {
    let mut ram: Vec<Range> = entries
        .iter()
        .filter(|(_, k)| *k == Kind::Ram)
        .map(|(r, _)| Range {
            start: align_up(r.start),
            end: align_down(r.end),
        })
        .filter(|r| !r.is_empty())
        .collect();
    let holes = entries
        .iter()
        .filter(|(_, k)| *k != Kind::Ram)
        .map(|(r, _)| *r)
        .chain(exclude.iter().copied());
    for hole in holes {
        let hole = Range {
            start: align_down(hole.start),
            end: align_up(hole.end),
        };
        ram = ram.into_iter().flat_map(|r| subtract(r, hole)).collect();
    }
    ram.sort();
    let mut merged: Vec<Range> = Vec::new();
    for r in ram {
        match merged.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

fn subtract(r: Range, hole: Range) -> impl Iterator<Item = Range> {
    let left = Range {
        start: r.start,
        end: r.end.min(hole.start),
    };
    let right = Range {
        start: r.start.max(hole.end),
        end: r.end,
    };
    [left, right].into_iter().filter(|x| !x.is_empty())
}

/// Rounds up to a page boundary (saturating).
pub fn align_up(x: u64) -> u64 {
    x.checked_add(PAGE - 1)
        .map_or(!(PAGE - 1), |y| y & !(PAGE - 1))
}

/// Rounds down to a page boundary.
pub fn align_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

/// What building one domain takes from the hypervisor's heap besides its
/// frame list and page-permission table (its `Domain`, run-queue, timer,
/// grant and port bookkeeping), with room to spare; the hypervisor checks
/// every build against it and reports the largest (`@ density
/// heap_per_domain_max=...`).
pub const DOMAIN_HEAP_BYTES: u64 = 4096;
/// The main heap's fixed part: frame-independent tables and room for the
/// allocations hypercalls make while domains run.
pub const HEAP_FIXED: u64 = 8 << 20;
/// The main heap's part per frame of RAM: the frame table's record (24
/// bytes) and one smallest domain's structures ([`DOMAIN_HEAP_BYTES`] and
/// 8 bytes a page) shared by the 17 frames it takes (a window of
/// `WINDOW_MIN_PAGES`, 16, and its shared page).
pub const HEAP_PER_FRAME: u64 = 24
    + (DOMAIN_HEAP_BYTES + 8 * hypercall_abi::layout::WINDOW_MIN_PAGES)
        .div_ceil(hypercall_abi::layout::WINDOW_MIN_PAGES + 1);

/// The hypervisor's main heap for a machine of `frames` frames of RAM
/// (bytes, page-aligned): taken from RAM at boot, so the number of domains
/// the heap can describe grows with the memory they can have (issue 13).
pub fn main_heap_bytes(frames: u64) -> u64 {
    (HEAP_FIXED + frames * HEAP_PER_FRAME).next_multiple_of(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn qemu_like_map() {
        let map = [
            (Range::new(0, 0x9fc00), Kind::Ram),
            (Range::new(0x9fc00, 0x400), Kind::Reserved(2)),
            (Range::new(0x100000, 0x7ee0000), Kind::Ram),
            (Range::new(0xfffc0000, 0x40000), Kind::Reserved(2)),
        ];
        let excl = [
            Range::new(0, 0x100000),
            Range::new(0x100000, 0x200000),
            Range::new(0x7000000, 0x8000),
        ];
        let u = usable(&map, &excl);
        assert_eq!(
            u,
            vec![
                Range {
                    start: 0x300000,
                    end: 0x7000000
                },
                Range {
                    start: 0x7008000,
                    end: 0x7fe0000
                }
            ]
        );
    }

    #[test]
    fn ranges_saturate_and_kinds_follow_e820() {
        let r = Range::new(u64::MAX - 5, 10);
        assert_eq!((r.end, r.len()), (u64::MAX, 5));
        assert!(Range::new(7, 0).is_empty());
        assert!(!Range::new(7, 1).is_empty());
        let backwards = Range { start: 9, end: 3 };
        assert!(backwards.is_empty());
        assert_eq!(backwards.len(), 0);
        assert_eq!(Kind::from_e820(1), Kind::Ram);
        assert_eq!(Kind::from_e820(2), Kind::Reserved(2));
        assert_eq!(Kind::from_e820(0), Kind::Reserved(0));
    }

    #[test]
    fn alignment_rounds_to_whole_pages() {
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), PAGE);
        assert_eq!(align_up(PAGE), PAGE);
        assert_eq!(align_up(PAGE + 1), 2 * PAGE);
        assert_eq!(align_up(u64::MAX), !(PAGE - 1));
        assert_eq!(align_down(PAGE - 1), 0);
        assert_eq!(align_down(2 * PAGE + 5), 2 * PAGE);
    }

    #[test]
    fn touching_and_overlapping_ram_merges_and_holes_round_outwards() {
        let ram = |s, e| (Range { start: s, end: e }, Kind::Ram);
        // Adjacent entries become one range; a contained one is absorbed.
        let u = usable(&[ram(0x2000, 0x3000), ram(0x1000, 0x2000)], &[]);
        assert_eq!(
            u,
            [Range {
                start: 0x1000,
                end: 0x3000
            }]
        );
        let u = usable(&[ram(0, 0x5000), ram(0x1000, 0x2000)], &[]);
        assert_eq!(
            u,
            [Range {
                start: 0,
                end: 0x5000
            }]
        );
        // RAM shrinks inwards, a reserved hole grows outwards.
        let u = usable(
            &[
                ram(0x0800, 0x8800),
                (
                    Range {
                        start: 0x3800,
                        end: 0x4800,
                    },
                    Kind::Reserved(2),
                ),
            ],
            &[],
        );
        assert_eq!(
            u,
            [
                Range {
                    start: 0x1000,
                    end: 0x3000
                },
                Range {
                    start: 0x5000,
                    end: 0x8000
                }
            ]
        );
        // An exclusion at the very start or end leaves one side only.
        let u = usable(&[ram(0, 0x4000)], &[Range::new(0, 0x1000)]);
        assert_eq!(
            u,
            [Range {
                start: 0x1000,
                end: 0x4000
            }]
        );
        let u = usable(&[ram(0, 0x4000)], &[Range::new(0x3000, 0x1000)]);
        assert_eq!(
            u,
            [Range {
                start: 0,
                end: 0x3000
            }]
        );
        assert!(usable(&[ram(0x10, 0x800)], &[]).is_empty(), "no whole page");
    }

    proptest! {
        #[test]
        fn result_is_aligned_sorted_disjoint_and_avoids_exclusions(
            ram in proptest::collection::vec((0u64..1<<32, 0u64..1<<28), 0..6),
            excl in proptest::collection::vec((0u64..1<<32, 0u64..1<<26), 0..6),
        ) {
            let entries: Vec<_> = ram.iter().map(|&(s, l)| (Range::new(s, l), Kind::Ram)).collect();
            let ex: Vec<_> = excl.iter().map(|&(s, l)| Range::new(s, l)).collect();
            let u = usable(&entries, &ex);
            for w in u.windows(2) { prop_assert!(w[0].end < w[1].start); }
            for r in &u {
                prop_assert!(r.start % PAGE == 0 && r.end % PAGE == 0 && !r.is_empty());
                let inside = |a: u64| entries.iter().any(|(e, _)| e.start <= a && a < e.end);
                prop_assert!(inside(r.start) && inside(r.end - 1));
                for e in &ex { prop_assert!(r.end <= e.start || r.start >= e.end); }
            }
        }
    }
}
