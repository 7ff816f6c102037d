//! Allocation in a driver domain's DMA region (`IO-*`): the region itself,
//! and the conversions between its virtual and machine addresses, are
//! [`crate::io::DmaRegion`] (`StartInfo::dma`). Devices address memory by
//! machine address, so a driver must hand them buffers from the region;
//! [`PagePool`] hands out runs of its pages (first fit over a bitmap).
//!
//! Pure and host-tested; the driver owns the memory.
#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;

/// Runs of pages out of `0..pages`, first fit.
#[derive(Clone, Debug)]
pub struct PagePool {
    used: Vec<bool>,
    free: usize,
}

impl PagePool {
    /// A pool of `pages` free pages.
    pub fn new(pages: usize) -> PagePool {
        PagePool {
            used: vec![false; pages],
            free: pages,
        }
    }

    /// Pages free.
    pub fn free(&self) -> usize {
        self.free
    }

    /// The first page of `n` contiguous free pages, now used; `None` if
    /// `n` is 0 or no run is long enough.
    pub fn alloc(&mut self, n: usize) -> Option<usize> {
        if n == 0 || n > self.free {
            return None;
        }
        let mut run = 0;
        for i in 0..self.used.len() {
            run = if self.used[i] { 0 } else { run + 1 };
            if run == n {
                let first = i + 1 - n;
                self.used[first..=i].fill(true);
                self.free -= n;
                return Some(first);
            }
        }
        None
    }

    /// Gives back `n` pages from `first`. Pages out of the pool or not in
    /// use are refused (`false`) and nothing changes.
    pub fn dealloc(&mut self, first: usize, n: usize) -> bool {
        let Some(run) = first
            .checked_add(n)
            .and_then(|end| self.used.get_mut(first..end))
        else {
            return false;
        };
        if n == 0 || !run.iter().all(|&u| u) {
            return false;
        }
        run.fill(false);
        self.free += n;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_are_first_fit_and_come_back() {
        let mut p = PagePool::new(10);
        assert_eq!(p.alloc(3), Some(0));
        assert_eq!(p.alloc(3), Some(3));
        assert_eq!(p.alloc(5), None, "only 4 left");
        assert!(p.dealloc(0, 3));
        assert_eq!(p.alloc(4), Some(6));
        assert_eq!(p.alloc(2), Some(0));
        assert_eq!(p.free(), 1);
        assert!(!p.dealloc(2, 1), "not in use");
        assert!(!p.dealloc(1, 2), "partly not in use");
        assert!(!p.dealloc(9, 2), "past the pool");
        assert_eq!(p.free(), 1, "refusals changed nothing");
        assert!(!p.dealloc(usize::MAX, 2));
        assert!(!p.dealloc(0, 0));
        assert_eq!(p.alloc(0), None);
        assert_eq!(p.free(), 1);
    }

    proptest! {
        #[test]
        fn allocations_never_overlap(ops in prop::collection::vec((1usize..6, any::<bool>()), 1..100)) {
            let mut p = PagePool::new(32);
            let mut live: Vec<(usize, usize)> = Vec::new();
            for (n, free_one) in ops {
                if free_one && !live.is_empty() {
                    let (f, k) = live.remove(0);
                    prop_assert!(p.dealloc(f, k));
                } else if let Some(f) = p.alloc(n) {
                    prop_assert!(f + n <= 32);
                    for &(g, k) in &live {
                        prop_assert!(f + n <= g || g + k <= f, "overlap");
                    }
                    live.push((f, n));
                }
                let used: usize = live.iter().map(|&(_, k)| k).sum();
                prop_assert_eq!(p.free(), 32 - used);
            }
        }
    }
}
