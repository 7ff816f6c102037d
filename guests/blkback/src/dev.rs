//! One delegated virtio-blk device, driven with `virtio-drivers`'
//! non-blocking API (`*_nb`, `peek_used`, `complete_*`).
//!
//! The device works in *slots*: each owns a page for the virtio request
//! header and status byte and [`SLOT_DATA_PAGES`] pages of data buffer, all
//! in the DMA region, so the device reads and writes them in place (the Hal
//! shares them without a copy). A slot holds at most one request; at most
//! as many are in flight as there are slots.
#![allow(unsafe_code)] // MMIO transport and the request buffers; each block has its SAFETY note.

use alloc::vec::Vec;
use core::ptr::NonNull;

use guest_sdk::abi::blk::MAX_SEGMENTS;
use guest_sdk::abi::layout::{DeviceInfo, DEVICE_KIND_VIRTIO_MMIO};
use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::Transport;

use crate::hal::{self, TahomaHal};

/// Data pages per slot: the largest request (11 segments of a page).
pub const SLOT_DATA_PAGES: usize = MAX_SEGMENTS;

/// The virtio-blk feature bit `VIRTIO_BLK_F_FLUSH` (virtio 1.1, 5.2.3).
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Offset of the status byte in a slot's header page.
const RESP_OFFSET: u64 = 64;

/// What a device request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Device → data buffer.
    Read,
    /// Data buffer → device.
    Write,
}

struct Slot<J> {
    hdr_va: u64,
    data_va: u64,
    data_pa: u64,
    busy: Option<(Kind, u16, usize, J)>,
}

/// A virtio-blk device and its request slots; `J` is the caller's record
/// of each request.
pub struct Disk<J> {
    blk: VirtIOBlk<TahomaHal, MmioTransport<'static>>,
    slots: Vec<Slot<J>>,
    in_flight: usize,
    /// Index in the start info's device table.
    pub index: usize,
    /// The event port of its interrupt.
    pub irq_port: u32,
}

/// Why a device could not be used.
#[derive(Debug)]
pub enum OpenError {
    /// Not a virtio-mmio block device, or no mapping.
    NotABlockDevice,
    /// The transport refused the window.
    Transport,
    /// No `VIRTIO_BLK_F_FLUSH`: writes could not be made durable.
    NoFlush,
    /// Initialisation or a queue failed (the driver's error).
    #[allow(dead_code)] // read through Debug in the report line
    Virtio(virtio_drivers::Error),
    /// The DMA region is too small for the slots.
    NoDma,
}

impl<J> Disk<J> {
    /// [`Disk::open`], reporting the outcome on the console
    /// (`@ blk-device`, which the tests read): the disk, or `None`.
    pub fn open_reported(index: usize, info: &DeviceInfo, slots: usize) -> Option<Disk<J>> {
        match Self::open(index, info, slots) {
            Ok(d) => {
                guest_sdk::println!(
                    "@ blk-device index={index} capacity={} slots={} readonly={} flush=yes irq_port={}",
                    d.capacity(),
                    d.slots(),
                    d.readonly(),
                    d.irq_port
                );
                Some(d)
            }
            Err(e) => {
                guest_sdk::println!("@ blk-device index={index} error=\"{e:?}\" served=0");
                None
            }
        }
    }

    /// Brings up device `index` of the start info, with up to `slots`
    /// request slots (at least 1, at most the virtqueue's size).
    pub fn open(index: usize, info: &DeviceInfo, slots: usize) -> Result<Disk<J>, OpenError> {
        if info.kind != DEVICE_KIND_VIRTIO_MMIO || info.virtio_id != 2 {
            return Err(OpenError::NotABlockDevice);
        }
        let header =
            NonNull::new(info.mmio_va as *mut VirtIOHeader).ok_or(OpenError::NotABlockDevice)?;
        let size = usize::try_from(info.mmio_size).map_err(|_| OpenError::Transport)?;
        // SAFETY: the hypervisor mapped the device's MMIO window (`size`
        // bytes from `mmio_va`, header and config space) uncached into this
        // domain for its life (IO-*), and only this transport touches it:
        // each device is opened once.
        let mut transport =
            unsafe { MmioTransport::new(header, size) }.map_err(|_| OpenError::Transport)?;
        // virtio-drivers negotiates FLUSH when the device offers it, and
        // its `flush()` silently does nothing otherwise: check the offer.
        if transport.read_device_features() & VIRTIO_BLK_F_FLUSH == 0 {
            // Leave the device reset rather than half-initialised.
            transport.set_status(virtio_drivers::transport::DeviceStatus::empty());
            return Err(OpenError::NoFlush);
        }
        let mut blk = VirtIOBlk::<TahomaHal, _>::new(transport).map_err(OpenError::Virtio)?;
        blk.enable_interrupts();
        let n = slots.clamp(1, usize::from(blk.virt_queue_size()));
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let (hdr_va, _) = hal::alloc_pages(1).ok_or(OpenError::NoDma)?;
            let (data_va, data_pa) = hal::alloc_pages(SLOT_DATA_PAGES).ok_or(OpenError::NoDma)?;
            // SAFETY: `hdr_va` is a fresh, zeroed DMA page owned by this
            // slot alone; a `BlkReq` (16 bytes) fits at its start.
            unsafe { core::ptr::write(hdr_va as *mut BlkReq, BlkReq::default()) };
            v.push(Slot {
                hdr_va,
                data_va,
                data_pa,
                busy: None,
            });
        }
        Ok(Disk {
            blk,
            slots: v,
            in_flight: 0,
            index,
            irq_port: info.irq_port,
        })
    }

    /// Sectors on the device.
    pub fn capacity(&self) -> u64 {
        self.blk.capacity()
    }

    /// Whether the device itself is read-only.
    pub fn readonly(&self) -> bool {
        self.blk.readonly()
    }

    /// Slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// A free slot.
    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.busy.is_none())
    }

    /// The data buffer of `slot`: `(virtual, machine)` address of its
    /// [`SLOT_DATA_PAGES`] machine-contiguous pages.
    pub fn buffer(&self, slot: usize) -> (u64, u64) {
        let s = &self.slots[slot];
        (s.data_va, s.data_pa)
    }

    /// Starts `kind` of `bytes` (a non-zero multiple of 512, at most the
    /// slot's buffer) at device `sector` in free `slot`, recording `job`.
    /// `Err` hands `job` back (the queue is full or the request bad).
    pub fn submit(
        &mut self,
        slot: usize,
        kind: Kind,
        sector: u64,
        bytes: usize,
        job: J,
    ) -> Result<(), J> {
        let Some(s) = self.slots.get(slot) else {
            return Err(job);
        };
        if s.busy.is_some()
            || bytes == 0
            || !bytes.is_multiple_of(512)
            || bytes > SLOT_DATA_PAGES * 4096
        {
            return Err(job);
        }
        let Ok(sector) = usize::try_from(sector) else {
            return Err(job);
        };
        let (req, buf, resp) = self.parts(slot, bytes);
        // SAFETY: the header and data are this slot's DMA memory, which is
        // not touched again until the request completes in `poll` (the slot
        // is marked busy below, and `parts` is only called for a slot being
        // submitted or completed).
        let token = unsafe {
            match kind {
                Kind::Read => self.blk.read_blocks_nb(sector, req, buf, resp),
                Kind::Write => self.blk.write_blocks_nb(sector, req, buf, resp),
            }
        };
        match token {
            Ok(t) => {
                self.slots[slot].busy = Some((kind, t, bytes, job));
                self.in_flight += 1;
                Ok(())
            }
            Err(e) => {
                log::debug!("device {}: submit refused: {e:?}", self.index);
                Err(job)
            }
        }
    }

    /// The request header, data buffer and status of `slot`.
    fn parts(
        &self,
        slot: usize,
        bytes: usize,
    ) -> (&'static mut BlkReq, &'static mut [u8], &'static mut BlkResp) {
        let s = &self.slots[slot];
        // SAFETY: each slot owns its header page and data pages in the DMA
        // region (allocated once in `open`, never freed while the Disk
        // lives); `BlkReq` was written at the header's start, `BlkResp` (a
        // byte, any value valid) lives at RESP_OFFSET, `bytes` is within
        // the data pages (checked by `submit`). The references are used
        // only for the one call to the driver that follows, which is the
        // contract of its non-blocking API.
        unsafe {
            (
                &mut *(s.hdr_va as *mut BlkReq),
                core::slice::from_raw_parts_mut(s.data_va as *mut u8, bytes),
                &mut *((s.hdr_va + RESP_OFFSET) as *mut BlkResp),
            )
        }
    }

    /// The next completed request: `(slot, job, ok)`, or `None`.
    pub fn poll(&mut self) -> Option<(usize, J, bool)> {
        let token = self.blk.peek_used()?;
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| matches!(s.busy, Some((_, t, _, _)) if t == token))
        else {
            log::error!("device {}: completion of unknown token {token}", self.index);
            return None;
        };
        let (kind, token, bytes, job) = self.slots[slot].busy.take()?;
        self.in_flight -= 1;
        let (req, buf, resp) = self.parts(slot, bytes);
        // SAFETY: the same buffers as submitted with this token (same slot,
        // same length), now handed back by the device.
        let r = unsafe {
            match kind {
                Kind::Read => self.blk.complete_read_blocks(token, req, buf, resp),
                Kind::Write => self.blk.complete_write_blocks(token, req, buf, resp),
            }
        };
        let ok = r.is_ok() && resp.status() == RespStatus::OK;
        Some((slot, job, ok))
    }

    /// A virtio flush, waiting for its completion; only with nothing else
    /// in flight (the driver's blocking call pops the next used entry).
    pub fn flush(&mut self) -> bool {
        if self.in_flight != 0 {
            return false;
        }
        self.blk.flush().is_ok()
    }

    /// Acknowledges the device's interrupt (then `io_irq_ack` unmasks the
    /// line).
    pub fn ack_interrupt(&mut self) {
        self.blk.ack_interrupt();
    }
}
