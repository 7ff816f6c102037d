//! The uplink: the delegated virtio-net device (QEMU's user network),
//! driven with virtio-drivers' non-blocking `VirtIONetRaw` over this
//! domain's DMA region (IO-3); its interrupts arrive as events (IO-2) and
//! are acknowledged with `io_irq_ack` (IO-1).
//!
//! Every buffer the device sees is in the DMA region: the virtqueues
//! (`dma_alloc`) and the frame buffers, which are carved out of it once at
//! start and reused. `share` therefore only translates an address inside
//! the region to its machine address.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use alloc::vec::Vec;
use guest_sdk::io::{Device, DmaRegion};
use guest_sdk::{event, io, Port};
use netswitch::{Switch, UPLINK};
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Descriptors per virtqueue.
const QUEUE: usize = 16;
/// Bytes per frame buffer: the virtio-net header and a full frame.
const BUF: usize = 2048;

static DMA_VA: AtomicU64 = AtomicU64::new(0);
static DMA_PA: AtomicU64 = AtomicU64::new(0);
static DMA_LEN: AtomicU64 = AtomicU64::new(0);
static DMA_NEXT: AtomicU64 = AtomicU64::new(0);
/// Set by the device's interrupt event.
static IRQ: AtomicBool = AtomicBool::new(false);

fn on_irq(_: Port) {
    IRQ.store(true, Ordering::SeqCst);
}

/// Pages of the DMA region, handed out once (the queues and buffers live
/// as long as the domain).
fn dma_pages(pages: usize) -> Option<(u64, u64)> {
    let bytes = (pages as u64).checked_mul(4096)?;
    let off = DMA_NEXT.fetch_add(bytes, Ordering::SeqCst);
    if off.checked_add(bytes)? > DMA_LEN.load(Ordering::SeqCst) {
        return None;
    }
    Some((
        DMA_PA.load(Ordering::SeqCst) + off,
        DMA_VA.load(Ordering::SeqCst) + off,
    ))
}

/// virtio-drivers' view of the DMA region.
pub struct DmaHal;

// SAFETY: `dma_alloc` returns zeroed pages of the DMA region, whose machine
// frames are contiguous (IO-3), at the machine address the device must be
// given, never twice; `share` returns the machine address of a buffer in
// that region (every buffer this driver hands the device is there);
// nothing is ever deallocated or unshared, so no address is reused.
unsafe impl Hal for DmaHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some((pa, va)) = dma_pages(pages) else {
            panic!("netback: the DMA region is exhausted (raise `dma` in the manifest)");
        };
        // SAFETY: `va..va + pages * 4096` is a fresh part of this domain's
        // DMA region, mapped writable (IO-3), handed out by no one else.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, pages * 4096) };
        (
            pa,
            NonNull::new(va as *mut u8).unwrap_or(NonNull::dangling()),
        )
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(_paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        panic!("netback: no PCI BARs on microvm (virtio-mmio only)")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        let va = buffer.as_ptr().cast::<u8>() as u64;
        let off = va.wrapping_sub(DMA_VA.load(Ordering::SeqCst));
        if off >= DMA_LEN.load(Ordering::SeqCst) {
            panic!("netback: a buffer outside the DMA region was handed to the device");
        }
        DMA_PA.load(Ordering::SeqCst) + off
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}

/// A frame buffer in the DMA region.
struct Buf(&'static mut [u8]);

fn buffer() -> Option<Buf> {
    let (_, va) = dma_pages(BUF.div_ceil(4096))?;
    // SAFETY: a fresh part of the DMA region (mapped writable, IO-3), handed
    // out to nothing else, never freed: this slice is its only reference.
    Some(Buf(unsafe {
        core::slice::from_raw_parts_mut(va as *mut u8, BUF)
    }))
}

/// The driven uplink.
pub struct Uplink {
    net: VirtIONetRaw<DmaHal, MmioTransport<'static>, QUEUE>,
    device: u32,
    /// RX buffers, by the token the device holds them under.
    rx: Vec<(u16, Buf)>,
    /// TX buffers in flight, by token; and free ones.
    tx_busy: Vec<(u16, Buf, usize)>,
    tx_free: Vec<Buf>,
    /// Frames received from the uplink and sent to it.
    pub received: u64,
    /// Frames sent.
    pub sent: u64,
}

impl Uplink {
    /// Brings the device up: the DMA region for its queues and buffers,
    /// every RX buffer posted, its interrupt port unmasked.
    pub fn start(dev: &Device, dma: DmaRegion) -> Result<Uplink, &'static str> {
        DMA_VA.store(dma.va, Ordering::SeqCst);
        DMA_PA.store(dma.machine_base, Ordering::SeqCst);
        DMA_LEN.store(dma.len(), Ordering::SeqCst);
        let header = NonNull::new(dev.mmio_va as *mut VirtIOHeader).ok_or("no MMIO window")?;
        // SAFETY: `mmio_va` is the device's virtio-mmio window, mapped
        // uncached for this domain by the hypervisor (IO-0), `mmio_size`
        // bytes, used by nothing else in this domain.
        let transport = unsafe { MmioTransport::new(header, dev.mmio_size as usize) }
            .map_err(|_| "not a virtio-mmio device")?;
        let mut net = VirtIONetRaw::<DmaHal, _, QUEUE>::new(transport)
            .map_err(|_| "virtio-net initialisation failed")?;
        let mut rx = Vec::new();
        for _ in 0..QUEUE {
            let b = buffer().ok_or("DMA region too small")?;
            // SAFETY: `b` is in the DMA region and not touched until the
            // device returns it (`poll`), where the same buffer is passed
            // to `receive_complete`.
            let token = unsafe { net.receive_begin(b.0) }.map_err(|_| "RX queue refused")?;
            rx.push((token, b));
        }
        let mut tx_free = Vec::new();
        for _ in 0..QUEUE / 2 {
            tx_free.push(buffer().ok_or("DMA region too small")?);
        }
        event::set_handler(dev.irq_port, on_irq);
        let _ = event::unmask(dev.irq_port);
        net.enable_interrupts();
        Ok(Uplink {
            net,
            device: dev.index,
            rx,
            tx_busy: Vec::new(),
            tx_free,
            received: 0,
            sent: 0,
        })
    }

    /// Takes received frames into the switch, sends what the switch queued
    /// for the uplink, reclaims sent buffers. Whether anything moved.
    pub fn poll(&mut self, sw: &mut Switch) -> bool {
        let mut work = false;
        if IRQ.swap(false, Ordering::SeqCst) {
            let _ = self.net.ack_interrupt();
            let _ = io::irq_ack(self.device);
        }
        while let Some(token) = self.net.poll_receive() {
            let Some(k) = self.rx.iter().position(|(t, _)| *t == token) else {
                break;
            };
            let (_, b) = self.rx.swap_remove(k);
            // SAFETY: the buffer posted under `token`, returned by the device.
            if let Ok((hdr, len)) = unsafe { self.net.receive_complete(token, b.0) } {
                if let Some(frame) = b.0.get(hdr..hdr + len) {
                    sw.ingress(UPLINK, frame);
                    self.received += 1;
                }
            }
            // SAFETY: as in `start`: untouched until the device returns it.
            match unsafe { self.net.receive_begin(b.0) } {
                Ok(t) => self.rx.push((t, b)),
                Err(_) => break,
            }
            work = true;
        }
        while let Some(token) = self.net.poll_transmit() {
            let Some(k) = self.tx_busy.iter().position(|(t, _, _)| *t == token) else {
                break;
            };
            let (_, b, len) = self.tx_busy.swap_remove(k);
            // SAFETY: the buffer (and length) sent under `token`.
            let _ = unsafe { self.net.transmit_complete(token, &b.0[..len]) };
            self.tx_free.push(b);
            work = true;
        }
        while !self.tx_free.is_empty() && self.net.can_send() {
            let Some(frame) = sw.pop(UPLINK) else {
                break;
            };
            let Some(b) = self.tx_free.pop() else {
                break;
            };
            let Ok(hdr) = self.net.fill_buffer_header(b.0) else {
                self.tx_free.push(b);
                break;
            };
            let len = hdr + frame.len();
            b.0[hdr..len].copy_from_slice(&frame);
            // SAFETY: `b` is in the DMA region and not touched until
            // `transmit_complete` above gives it back.
            match unsafe { self.net.transmit_begin(&b.0[..len]) } {
                Ok(t) => {
                    self.tx_busy.push((t, b, len));
                    self.sent += 1;
                }
                Err(_) => {
                    self.tx_free.push(b);
                    break;
                }
            }
            work = true;
        }
        work
    }
}
