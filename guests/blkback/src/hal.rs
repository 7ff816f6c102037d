//! `virtio-drivers`' [`Hal`] over the driver domain's DMA region
//! (`guest_sdk::dma`): the device sees machine addresses, so every buffer
//! it touches must lie in the machine-contiguous region the start info
//! describes.
//!
//! * `dma_alloc` hands out zeroed runs of the region's pages (virtqueues).
//! * `share` returns the machine address of a buffer already inside the
//!   region (the backend keeps its request buffers there: no copy), and
//!   otherwise *bounces* it through fresh region pages (the driver crate's
//!   own small buffers on the stack or heap, e.g. the flush request):
//!   copied in for the device to read, copied back on `unshare` for the
//!   device's writes.
#![allow(unsafe_code)] // the Hal trait and its raw buffers; each block has its SAFETY note.

use core::ptr::NonNull;

use guest_sdk::dma::PagePool;
use guest_sdk::io::DmaRegion;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

const PAGE: usize = 4096;

struct Dma {
    region: DmaRegion,
    pool: PagePool,
}

static DMA: spin::Mutex<Option<Dma>> = spin::Mutex::new(None);

/// Takes the DMA region for the driver. Call once, before any device.
pub fn init(region: DmaRegion) {
    let pages = usize::try_from(region.pages).unwrap_or(0);
    *DMA.lock() = Some(Dma {
        region,
        pool: PagePool::new(pages),
    });
}

/// `(free pages, total pages)` of the region.
pub fn usage() -> (usize, u64) {
    DMA.lock()
        .as_ref()
        .map_or((0, 0), |d| (d.pool.free(), d.region.pages))
}

/// `n` zeroed, machine-contiguous pages: `(virtual, machine)` address, or
/// `None` if the region has no such run.
pub fn alloc_pages(n: usize) -> Option<(u64, u64)> {
    let mut g = DMA.lock();
    let d = g.as_mut()?;
    let first = d.pool.alloc(n)?;
    let off = first as u64 * PAGE as u64;
    let va = d.region.va + off;
    // SAFETY: `first..first + n` is a run of the region's pages the pool
    // just handed out, so `va .. va + n * 4096` lies in the DMA region,
    // which the hypervisor maps writable in the window for the domain's life
    // (IO-*), and nothing else uses it until it is given back.
    unsafe { core::ptr::write_bytes(va as *mut u8, 0, n * PAGE) };
    Some((va, d.region.machine_base + off))
}

/// Gives back `n` pages at virtual address `va` (from [`alloc_pages`]).
pub fn free_pages(va: u64, n: usize) -> bool {
    let mut g = DMA.lock();
    let Some(d) = g.as_mut() else { return false };
    let Some(off) = va.checked_sub(d.region.va) else {
        return false;
    };
    let first = usize::try_from(off / PAGE as u64).unwrap_or(usize::MAX);
    d.pool.dealloc(first, n)
}

/// The machine address of `va..va + len` if it lies in the region.
pub fn machine_of(va: u64, len: u64) -> Option<u64> {
    DMA.lock().as_ref()?.region.machine_of_range(va, len)
}

fn va_of(pa: u64, len: u64) -> Option<u64> {
    DMA.lock().as_ref()?.region.va_of_range(pa, len)
}

/// The `Hal` of this driver domain.
pub struct TahomaHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned, machine-contiguous
// memory of the DMA region that nothing else uses until `dma_dealloc`
// (the pool hands each page out once); `share` returns a machine address
// the device can use for exactly the buffer's bytes (the region's own
// address, or a bounce run holding a copy); `mmio_phys_to_virt` is never
// called (no PCI) and panics rather than invent a mapping.
unsafe impl Hal for TahomaHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match alloc_pages(pages) {
            Some((va, pa)) => (
                pa,
                NonNull::new(va as *mut u8).unwrap_or(NonNull::dangling()),
            ),
            None => {
                log::error!(
                    "DMA region exhausted ({pages} pages asked): give the driver domain more"
                );
                (0, NonNull::dangling())
            }
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        if free_pages(vaddr.as_ptr() as u64, pages) {
            0
        } else {
            -1
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        panic!("mmio_phys_to_virt({paddr:#x}): PCI BARs are not delegated here, only virtio-mmio");
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let va = buffer.as_ptr().cast::<u8>() as u64;
        let len = buffer.len();
        if let Some(pa) = machine_of(va, len as u64) {
            return pa;
        }
        let pages = len.div_ceil(PAGE);
        let Some((bva, bpa)) = alloc_pages(pages) else {
            log::error!("DMA region exhausted bouncing {len} bytes");
            return 0;
        };
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller gives a valid buffer of `len` bytes that
            // nothing else accesses during this call; the bounce run is
            // `pages * 4096 >= len` bytes of the region, ours alone.
            unsafe { core::ptr::copy_nonoverlapping(va as *const u8, bva as *mut u8, len) };
        }
        bpa
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let va = buffer.as_ptr().cast::<u8>() as u64;
        let len = buffer.len();
        if machine_of(va, len as u64).is_some() {
            return; // shared in place: nothing was bounced
        }
        let Some(bva) = va_of(paddr, len as u64) else {
            return;
        };
        if direction != BufferDirection::DriverToDevice {
            // SAFETY: `bva` is the bounce run `share` filled for this buffer
            // (`len` bytes inside the region); the caller's buffer is valid
            // and not otherwise accessed during this call.
            unsafe { core::ptr::copy_nonoverlapping(bva as *const u8, va as *mut u8, len) };
        }
        free_pages(bva, len.div_ceil(PAGE));
    }
}
