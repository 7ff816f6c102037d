//! A bounded, write-through read cache of whole pages in front of any
//! [`BlockDevice`] (docs/kvstore.md, "The read cache").
//!
//! - Pages of [`PAGE_SECTORS`] sectors (4 KiB, the vblk's unit), at most
//!   `capacity` of them, the least recently used one evicted first.
//! - A read is served from cached pages; the missing ones are read from the
//!   device in runs of consecutive pages (one device read per run) and kept.
//! - A write goes to the device first, exactly as without the cache. Only
//!   when it succeeded are the cached pages it overlaps updated in place and
//!   the pages it covers whole added; when it fails, every page it overlaps
//!   is dropped (the device's contents there are unknown). `flush` is passed
//!   through. So the cache never holds bytes the device does not, and what
//!   is durable, and when, is the device's business alone.
//! - The store's compaction is writes and reads like any other, so it is
//!   coherent by the same rule; nothing is keyed by log offsets.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use crate::store::{BlockDevice, Error, SECTOR};

/// Sectors in a cache page.
pub const PAGE_SECTORS: u64 = 8;
/// Bytes in a cache page.
pub const PAGE: usize = PAGE_SECTORS as usize * SECTOR;
/// The default size: 1 MiB (256 pages), a twelfth of the sample service's
/// 12 MiB guest.
pub const DEFAULT_CACHE_KIB: u64 = 1024;

/// What the cache counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Pages a read found cached.
    pub hits: u64,
    /// Pages a read had to fetch from the device.
    pub misses: u64,
    /// Pages dropped to make room.
    pub evictions: u64,
    /// Pages dropped because a write over them failed.
    pub invalidations: u64,
    /// Device reads issued (one per run of missing pages).
    pub device_reads: u64,
}

struct Slot {
    stamp: u64,
    data: Vec<u8>,
}

/// A [`BlockDevice`] with a read cache in front (see the module comment).
pub struct CachedDevice<D: BlockDevice> {
    dev: D,
    capacity: usize,
    pages: BTreeMap<u64, Slot>,
    /// Use stamp to page: the first entry is the least recently used.
    lru: BTreeMap<u64, u64>,
    clock: u64,
    stats: CacheStats,
}

impl<D: BlockDevice> CachedDevice<D> {
    /// `dev` with a cache of at most `capacity_kib` KiB (rounded down to
    /// whole pages; 0 turns the cache off, every access goes to `dev`).
    pub fn new(dev: D, capacity_kib: u64) -> Self {
        CachedDevice {
            dev,
            capacity: (capacity_kib.saturating_mul(1024) / PAGE as u64) as usize,
            pages: BTreeMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            stats: CacheStats::default(),
        }
    }

    /// The device underneath.
    pub fn inner(&self) -> &D {
        &self.dev
    }

    /// The device underneath, mutably. Writing through it bypasses the
    /// cache: call [`CachedDevice::clear`] after.
    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Gives the device back.
    pub fn into_inner(self) -> D {
        self.dev
    }

    /// Most pages held.
    pub fn capacity_pages(&self) -> usize {
        self.capacity
    }

    /// Pages held now.
    pub fn cached_pages(&self) -> usize {
        self.pages.len()
    }

    /// Bytes of page data held now.
    pub fn cached_bytes(&self) -> usize {
        self.pages.values().map(|s| s.data.len()).sum()
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Drops every cached page.
    pub fn clear(&mut self) {
        self.pages.clear();
        self.lru.clear();
    }

    /// Each cached page with its first sector and bytes (for tests that
    /// check it against the device).
    pub fn cached(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.pages
            .iter()
            .map(|(p, s)| (p * PAGE_SECTORS, s.data.as_slice()))
    }

    /// Sectors in page `page` (the last one may be short).
    fn page_sectors(&self, page: u64) -> u64 {
        self.dev
            .sectors()
            .saturating_sub(page * PAGE_SECTORS)
            .min(PAGE_SECTORS)
    }

    fn touch(&mut self, page: u64) {
        self.clock += 1;
        if let Some(slot) = self.pages.get_mut(&page) {
            self.lru.remove(&slot.stamp);
            slot.stamp = self.clock;
            self.lru.insert(self.clock, page);
        }
    }

    fn insert(&mut self, page: u64, data: Vec<u8>) {
        if self.capacity == 0 {
            return;
        }
        if let Some(old) = self.pages.remove(&page) {
            self.lru.remove(&old.stamp);
        }
        while self.pages.len() >= self.capacity {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            self.pages.remove(&victim);
            self.stats.evictions += 1;
        }
        self.clock += 1;
        self.lru.insert(self.clock, page);
        self.pages.insert(
            page,
            Slot {
                stamp: self.clock,
                data,
            },
        );
    }

    fn drop_page(&mut self, page: u64) -> bool {
        match self.pages.remove(&page) {
            Some(slot) => {
                self.lru.remove(&slot.stamp);
                true
            }
            None => false,
        }
    }

    /// The byte range `[start, end)` of a request, checked against the
    /// device; `None` if it is not whole sectors inside it.
    fn span(&self, sector: u64, len: usize) -> Option<(u64, u64)> {
        if !len.is_multiple_of(SECTOR) {
            return None;
        }
        let end = sector.checked_add((len / SECTOR) as u64)?;
        if end > self.dev.sectors() {
            return None;
        }
        Some((sector * SECTOR as u64, end * SECTOR as u64))
    }
}

impl<D: BlockDevice> BlockDevice for CachedDevice<D> {
    fn sectors(&self) -> u64 {
        self.dev.sectors()
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        if self.capacity == 0 || buf.is_empty() {
            return self.dev.read(sector, buf);
        }
        let (start, end) = self.span(sector, buf.len()).ok_or(Error::Io)?;
        let first = start / PAGE as u64;
        let last = (end - 1) / PAGE as u64;
        let mut page = first;
        while page <= last {
            if self.pages.contains_key(&page) {
                self.stats.hits += 1;
                self.touch(page);
                let slot = &self.pages[&page];
                copy_out(page, &slot.data, start, buf);
                page += 1;
                continue;
            }
            // A run of missing pages, read at once.
            let mut run_end = page + 1;
            while run_end <= last && !self.pages.contains_key(&run_end) {
                run_end += 1;
            }
            let sectors: u64 = (page..run_end).map(|p| self.page_sectors(p)).sum();
            let mut data = vec![0u8; sectors as usize * SECTOR];
            self.dev.read(page * PAGE_SECTORS, &mut data)?;
            self.stats.device_reads += 1;
            for (i, p) in (page..run_end).enumerate() {
                let lo = i * PAGE;
                let hi = (lo + PAGE).min(data.len());
                let bytes = data[lo..hi].to_vec();
                copy_out(p, &bytes, start, buf);
                self.stats.misses += 1;
                self.insert(p, bytes);
            }
            page = run_end;
        }
        Ok(())
    }

    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        let result = self.dev.write(sector, buf);
        if self.capacity == 0 || buf.is_empty() {
            return result;
        }
        if result.is_err() {
            // Any part of the request may have landed: drop every cached
            // page from its first sector to its end (or the device's).
            let sectors = (buf.len().div_ceil(SECTOR)) as u64;
            let end = sector.saturating_add(sectors).min(self.dev.sectors());
            if end > sector {
                let doomed: Vec<u64> = self
                    .pages
                    .range(sector / PAGE_SECTORS..=(end - 1) / PAGE_SECTORS)
                    .map(|(p, _)| *p)
                    .collect();
                for page in doomed {
                    self.drop_page(page);
                    self.stats.invalidations += 1;
                }
            }
            return result;
        }
        let Some((start, end)) = self.span(sector, buf.len()) else {
            // The device took a request the cache cannot place: keep
            // nothing that might be stale.
            self.clear();
            return result;
        };
        let first = start / PAGE as u64;
        let last = (end - 1) / PAGE as u64;
        for page in first..=last {
            let p_start = page * PAGE as u64;
            let p_len = self.page_sectors(page) as usize * SECTOR;
            let p_end = p_start + p_len as u64;
            let lo = start.max(p_start);
            let hi = end.min(p_end);
            let src = &buf[(lo - start) as usize..(hi - start) as usize];
            if let Some(slot) = self.pages.get_mut(&page) {
                slot.data[(lo - p_start) as usize..(hi - p_start) as usize].copy_from_slice(src);
            } else if lo == p_start && hi == p_end {
                self.insert(page, src.to_vec());
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.dev.flush()
    }
}

/// Copies the part of page `page` (bytes `data`) that falls in the request
/// starting at byte `start` into `buf`.
fn copy_out(page: u64, data: &[u8], start: u64, buf: &mut [u8]) {
    let p_start = page * PAGE as u64;
    let p_end = p_start + data.len() as u64;
    let end = start + buf.len() as u64;
    let lo = start.max(p_start);
    let hi = end.min(p_end);
    if lo < hi {
        buf[(lo - start) as usize..(hi - start) as usize]
            .copy_from_slice(&data[(lo - p_start) as usize..(hi - p_start) as usize]);
    }
}
