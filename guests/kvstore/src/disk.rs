//! kvlib's [`BlockDevice`] on the guest's virtual disk
//! ([`guest_sdk::vblk::Vblk`], docs/guest-guide.md "Virtual disks").
//!
//! The vblk moves whole pages (8 sectors); the store reads and writes any
//! run of sectors. A request covers the pages its sectors touch, at most
//! [`CHUNK_PAGES`] at a time; a write that starts or ends inside a page
//! first reads that page and writes it back with the same bytes around
//! the new ones. Every error of the disk is logged and becomes
//! [`Error::Io`]: the store then refuses the commit, and the service
//! answers 500 rather than acknowledge a write it could not make durable.

use guest_sdk::println;
use guest_sdk::vblk::{Buffer, Vblk, VblkError};
use kvlib::store::{BlockDevice, Error, SECTOR};

/// Pages per request (the ring takes up to 11 segments).
const CHUNK_PAGES: u64 = 8;
/// Sectors per page.
const SPP: u64 = 8;

/// The store's disk: a vblk.
pub struct VblkDisk {
    vblk: Vblk,
    /// The disk's capacity rounded down to whole pages.
    sectors: u64,
}

impl VblkDisk {
    /// Wraps an open disk; `None` if it is read-only (the store writes).
    pub fn new(vblk: Vblk) -> Option<VblkDisk> {
        let geo = vblk.geometry();
        if geo.readonly {
            return None;
        }
        Some(VblkDisk {
            sectors: geo.capacity / SPP * SPP,
            vblk,
        })
    }

    /// The vblk's `(events sent, waits that timed out)` (`Vblk::stats`).
    pub fn stats(&self) -> (u64, u64) {
        self.vblk.stats()
    }

    fn io(what: &str, sector: u64, e: VblkError) -> Error {
        println!("kvstore: disk {what} at sector {sector} failed: {e}");
        Error::Io
    }

    /// Checks `sector` and `len` bytes against the disk; the range of pages.
    fn pages(&self, sector: u64, len: usize) -> Result<(u64, u64), Error> {
        if !len.is_multiple_of(SECTOR) {
            return Err(Error::Io);
        }
        let n = (len / SECTOR) as u64;
        let end = sector.checked_add(n).ok_or(Error::Io)?;
        if end > self.sectors {
            return Err(Error::Io);
        }
        Ok((sector / SPP, end.div_ceil(SPP)))
    }

    fn buffer(pages: u64) -> Result<Buffer, Error> {
        Buffer::new(pages as usize).map_err(|e| {
            println!("kvstore: cannot make a disk buffer: {e}");
            Error::Io
        })
    }
}

impl BlockDevice for VblkDisk {
    fn sectors(&self) -> u64 {
        self.sectors
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        let (first, end) = self.pages(sector, buf.len())?;
        let want_start = sector * SECTOR as u64;
        let want_end = want_start + buf.len() as u64;
        let mut page = first;
        while page < end {
            let n = (end - page).min(CHUNK_PAGES);
            let mut b = Self::buffer(n)?;
            self.vblk
                .read(page * SPP, &mut b)
                .map_err(|e| Self::io("read", page * SPP, e))?;
            // Copy the overlap of this chunk and the wanted bytes.
            let chunk_start = page * SPP * SECTOR as u64;
            let chunk_end = chunk_start + b.bytes().len() as u64;
            let lo = want_start.max(chunk_start);
            let hi = want_end.min(chunk_end);
            buf[(lo - want_start) as usize..(hi - want_start) as usize].copy_from_slice(
                &b.bytes()[(lo - chunk_start) as usize..(hi - chunk_start) as usize],
            );
            page += n;
        }
        Ok(())
    }

    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        let (first, end) = self.pages(sector, buf.len())?;
        let want_start = sector * SECTOR as u64;
        let want_end = want_start + buf.len() as u64;
        let mut page = first;
        while page < end {
            let n = (end - page).min(CHUNK_PAGES);
            let mut b = Self::buffer(n)?;
            let chunk_start = page * SPP * SECTOR as u64;
            let chunk_end = chunk_start + b.bytes().len() as u64;
            let lo = want_start.max(chunk_start);
            let hi = want_end.min(chunk_end);
            if lo > chunk_start || hi < chunk_end {
                // Partial page at an edge: keep the bytes around ours.
                self.vblk
                    .read(page * SPP, &mut b)
                    .map_err(|e| Self::io("read", page * SPP, e))?;
            }
            b.bytes_mut()[(lo - chunk_start) as usize..(hi - chunk_start) as usize]
                .copy_from_slice(&buf[(lo - want_start) as usize..(hi - want_start) as usize]);
            self.vblk
                .write(page * SPP, &mut b)
                .map_err(|e| Self::io("write", page * SPP, e))?;
            page += n;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.vblk.flush().map_err(|e| Self::io("flush", 0, e))
    }
}

/// The disk the store is on: the vblk, or a RAM disk when the manifest
/// gives the guest none.
pub enum Disk {
    /// Durable: the guest's virtual disk 0, behind kvlib's read cache
    /// (docs/kvstore.md, "The read cache"): a GET of a value read or
    /// written before costs no round trip through the ring.
    Vblk(alloc::boxed::Box<kvlib::cache::CachedDevice<VblkDisk>>),
    /// Lost when the guest ends.
    Ram(kvlib::store::MemDisk),
}

impl Disk {
    /// `vblk` or `ram`, for the boot line.
    pub fn kind(&self) -> &'static str {
        match self {
            Disk::Vblk(_) => "vblk",
            Disk::Ram(_) => "ram",
        }
    }
}

impl BlockDevice for Disk {
    fn sectors(&self) -> u64 {
        match self {
            Disk::Vblk(d) => d.sectors(),
            Disk::Ram(d) => d.sectors(),
        }
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        match self {
            Disk::Vblk(d) => d.read(sector, buf),
            Disk::Ram(d) => d.read(sector, buf),
        }
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        match self {
            Disk::Vblk(d) => d.write(sector, buf),
            Disk::Ram(d) => d.write(sector, buf),
        }
    }
    fn flush(&mut self) -> Result<(), Error> {
        match self {
            Disk::Vblk(d) => d.flush(),
            Disk::Ram(d) => d.flush(),
        }
    }
}
