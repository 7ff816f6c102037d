//! A driver domain's DMA region (`IO-*`): pages whose machine frames are
//! contiguous, listed in start info (`dma_first_page`, `dma_pages`,
//! `dma_machine_base`). Devices address memory by machine address, so a
//! driver must hand them buffers from this region; [`PagePool`] hands out
//! runs of its pages (first fit over a bitmap), and [`Region`] converts
//! between their virtual and machine addresses.
//!
//! Pure and host-tested; the driver owns the memory.
#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;

const PAGE: u64 = hypercall_abi::PAGE_SIZE as u64;

/// Where the DMA region is, in both address spaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Virtual address of the first page.
    pub va: u64,
    /// Machine address of the first page.
    pub machine: u64,
    /// Pages.
    pub pages: u64,
}

impl Region {
    /// The region the start info describes, if it has one (`None` when
    /// `dma_pages` is 0 or the addresses are not page-aligned).
    pub fn of(si: &crate::StartInfo) -> Option<Region> {
        let r = Region {
            va: si.page_va(si.dma_first_page),
            machine: si.dma_machine_base,
            pages: si.dma_pages,
        };
        (r.pages > 0 && r.machine.is_multiple_of(PAGE) && r.va.is_multiple_of(PAGE)).then_some(r)
    }

    /// Bytes in the region.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE
    }

    /// The machine address of virtual `va..va + len`, if that range lies
    /// inside the region.
    pub fn machine_of(&self, va: u64, len: u64) -> Option<u64> {
        let off = va.checked_sub(self.va)?;
        (off.checked_add(len)? <= self.bytes()).then(|| self.machine + off)
    }

    /// The virtual address of machine `pa..pa + len`, if inside.
    pub fn va_of(&self, pa: u64, len: u64) -> Option<u64> {
        let off = pa.checked_sub(self.machine)?;
        (off.checked_add(len)? <= self.bytes()).then(|| self.va + off)
    }
}

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

    #[test]
    fn addresses_convert_only_inside_the_region() {
        let r = Region {
            va: 0x80_0000,
            machine: 0x1234_5000,
            pages: 4,
        };
        assert_eq!(r.machine_of(0x80_0010, 16), Some(0x1234_5010));
        assert_eq!(r.machine_of(0x80_0000, 0x4000), Some(0x1234_5000));
        assert_eq!(r.machine_of(0x80_0000, 0x4001), None);
        assert_eq!(r.machine_of(0x7f_ffff, 1), None);
        assert_eq!(r.machine_of(u64::MAX, 2), None);
        assert_eq!(r.va_of(0x1234_8fff, 1), Some(0x80_3fff));
        assert_eq!(r.va_of(0x1234_9000, 1), None);
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
