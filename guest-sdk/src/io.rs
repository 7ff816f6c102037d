//! Delegated devices (`IO-*`, `docs/abi/io.md`): what a privileged driver
//! domain's start info says about its devices and its DMA region, and the
//! interrupt acknowledgement.
//!
//! The hypervisor maps each device's MMIO window uncached at
//! [`Device::mmio_va`] (IO-0) and raises an event on [`Device::irq_port`]
//! for each interrupt (IO-2); the port starts masked, and the line stays
//! masked after an interrupt until [`irq_ack`] (IO-1). The DMA region is a
//! run of the window's pages whose machine frames are contiguous (IO-3): a
//! device is given [`DmaRegion::machine_of`] addresses, the driver uses
//! [`DmaRegion::va_of`] addresses. Nothing here touches device registers:
//! that is the driver's business (e.g. `virtio-drivers`).
#![forbid(unsafe_code)]

use hypercall_abi::io::IrqAck;
use hypercall_abi::layout::{DEVICE_KIND_VIRTIO_MMIO, MAX_START_DEVICES, NR_PORTS};
use hypercall_abi::Error;

use crate::event::Port;
use crate::start::StartInfo;

/// One device delegated to this domain (an entry of the start info's
/// device table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    /// Its index in the table: the argument of [`irq_ack`].
    pub index: u32,
    /// The virtio device id (2: block, 1: network).
    pub virtio_id: u32,
    /// Machine address of its MMIO window.
    pub mmio_machine: u64,
    /// Where the window is mapped (uncached) in this domain.
    pub mmio_va: u64,
    /// Bytes of the window.
    pub mmio_size: u64,
    /// The port its interrupts arrive on (masked at start).
    pub irq_port: Port,
    /// Its IOAPIC input.
    pub irq: u32,
}

/// The DMA region (`IO-3`): `pages` pages of the window from `first_page`,
/// mapped at `va`, whose machine frames are contiguous from
/// `machine_base`. A description only: it allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRegion {
    /// First pseudo-physical page.
    pub first_page: u64,
    /// Pages.
    pub pages: u64,
    /// Machine address of the first page.
    pub machine_base: u64,
    /// Virtual address of the first page.
    pub va: u64,
}

impl DmaRegion {
    /// Bytes in the region.
    pub fn len(&self) -> u64 {
        self.pages.saturating_mul(4096)
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// The machine address a device must be given for `va`, if `va` is in
    /// the region.
    pub fn machine_of(&self, va: u64) -> Option<u64> {
        let off = va.checked_sub(self.va)?;
        (off < self.len()).then(|| self.machine_base + off)
    }

    /// The virtual address of machine address `machine`, if it is in the
    /// region (a device reports it back, e.g. in a used ring).
    pub fn va_of(&self, machine: u64) -> Option<u64> {
        let off = machine.checked_sub(self.machine_base)?;
        (off < self.len()).then(|| self.va + off)
    }

    /// The machine address of the whole range `va..va + len`, if it lies
    /// inside the region (a buffer handed to a device).
    pub fn machine_of_range(&self, va: u64, len: u64) -> Option<u64> {
        let off = va.checked_sub(self.va)?;
        (off.checked_add(len)? <= self.len()).then(|| self.machine_base + off)
    }

    /// The virtual address of the whole machine range `pa..pa + len`, if
    /// inside.
    pub fn va_of_range(&self, pa: u64, len: u64) -> Option<u64> {
        let off = pa.checked_sub(self.machine_base)?;
        (off.checked_add(len)? <= self.len()).then(|| self.va + off)
    }
}

impl StartInfo {
    /// This domain's delegated devices (`IO-0`), in table order. Entries
    /// past `device_count` (clamped to the table), of an unknown kind or
    /// with an out-of-range port are skipped.
    pub fn devices(&self) -> impl Iterator<Item = Device> + '_ {
        let n = usize::try_from(self.raw().device_count)
            .unwrap_or(usize::MAX)
            .min(MAX_START_DEVICES);
        self.raw().devices[..n]
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let ok = d.kind == DEVICE_KIND_VIRTIO_MMIO && (d.irq_port as usize) < NR_PORTS;
                ok.then_some(Device {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    virtio_id: d.virtio_id,
                    mmio_machine: d.mmio_machine,
                    mmio_va: d.mmio_va,
                    mmio_size: d.mmio_size,
                    irq_port: Port(d.irq_port),
                    irq: d.irq,
                })
            })
    }

    /// The first delegated device with virtio id `virtio_id`.
    pub fn device(&self, virtio_id: u32) -> Option<Device> {
        self.devices().find(|d| d.virtio_id == virtio_id)
    }

    /// The DMA region (`IO-3`), if this domain has one (`None` when
    /// `dma_pages` is 0 or its machine base is not page-aligned).
    pub fn dma(&self) -> Option<DmaRegion> {
        let r = self.raw();
        (r.dma_pages > 0 && r.dma_machine_base.is_multiple_of(4096)).then(|| DmaRegion {
            first_page: r.dma_first_page,
            pages: r.dma_pages,
            machine_base: r.dma_machine_base,
            va: self.page_va(r.dma_first_page),
        })
    }
}

/// `io_irq_ack` (`IO-1`): device `index` of this domain has been handled
/// (its interrupt acknowledged at the device); unmask its line.
/// `permission_denied` in a domain without devices, `not_found` for an
/// index it does not have.
pub fn irq_ack(index: u32) -> Result<(), Error> {
    crate::raw::invoke(&IrqAck { device: index }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_convert_only_wholly_inside_the_region() {
        let r = DmaRegion {
            first_page: 3,
            va: 0x80_0000,
            machine_base: 0x1234_5000,
            pages: 4,
        };
        assert_eq!(r.machine_of_range(0x80_0010, 16), Some(0x1234_5010));
        assert_eq!(r.machine_of_range(0x80_0000, 0x4000), Some(0x1234_5000));
        assert_eq!(r.machine_of_range(0x80_0000, 0x4001), None);
        assert_eq!(r.machine_of_range(0x7f_ffff, 1), None);
        assert_eq!(r.machine_of_range(u64::MAX, 2), None);
        assert_eq!(r.va_of_range(0x1234_8fff, 1), Some(0x80_3fff));
        assert_eq!(r.va_of_range(0x1234_8fff, 2), None);
        assert_eq!(r.va_of_range(0x1234_9000, 1), None);
        assert_eq!(r.va_of_range(u64::MAX, 2), None);
    }

    use crate::fake::{err, ok, Fake};
    use hypercall_abi::layout::{self, DeviceInfo};
    use hypercall_abi::Hypercall;

    fn si(edit: impl FnOnce(&mut layout::StartInfo)) -> StartInfo {
        let mut raw: layout::StartInfo = zerocopy::FromZeros::new_zeroed();
        raw.window_base = layout::WINDOW_BASE;
        edit(&mut raw);
        StartInfo::new(raw)
    }

    fn dev(port: u32) -> DeviceInfo {
        DeviceInfo {
            kind: DEVICE_KIND_VIRTIO_MMIO,
            virtio_id: 2,
            mmio_machine: 0xfeb0_0e00,
            mmio_va: layout::DEVICE_VA_BASE + 0xe00,
            mmio_size: 0x200,
            irq_port: port,
            irq: 12,
        }
    }

    #[test]
    fn devices_come_from_the_table_up_to_the_count() {
        let s = si(|r| {
            r.device_count = 2;
            r.devices[0] = dev(3);
            r.devices[1] = DeviceInfo {
                virtio_id: 1,
                ..dev(4)
            };
            r.devices[2] = dev(5);
        });
        let all: Vec<Device> = s.devices().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].mmio_va, layout::DEVICE_VA_BASE + 0xe00);
        assert_eq!(
            (all[0].irq_port, all[0].irq, all[0].index),
            (Port(3), 12, 0)
        );
        assert_eq!(s.device(1).map(|d| d.index), Some(1));
        assert_eq!(s.device(3), None);
        // A hostile count is clamped, a bad entry skipped.
        let s = si(|r| {
            r.device_count = u32::MAX;
            r.devices[0] = dev(u32::try_from(NR_PORTS).unwrap());
            r.devices[1] = DeviceInfo { kind: 9, ..dev(1) };
            r.devices[3] = dev(2);
        });
        let all: Vec<Device> = s.devices().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].index, 3);
        assert_eq!(si(|_| {}).devices().count(), 0);
    }

    #[test]
    fn the_dma_region_translates_both_ways_inside_itself_only() {
        assert_eq!(si(|_| {}).dma(), None);
        let s = si(|r| {
            r.dma_first_page = 40;
            r.dma_pages = 4;
            r.dma_machine_base = 0x10_0000;
        });
        let d = s.dma().unwrap();
        let va = layout::WINDOW_BASE + 40 * 4096;
        assert_eq!((d.va, d.len(), d.is_empty()), (va, 4 * 4096, false));
        assert_eq!(d.machine_of(va), Some(0x10_0000));
        assert_eq!(
            d.machine_of(va + 4 * 4096 - 1),
            Some(0x10_0000 + 4 * 4096 - 1)
        );
        assert_eq!(d.machine_of(va + 4 * 4096), None);
        assert_eq!(d.machine_of(va - 1), None);
        assert_eq!(d.va_of(0x10_0000 + 5), Some(va + 5));
        assert_eq!(d.va_of(0x10_0000 + 4 * 4096), None);
        assert_eq!(d.va_of(0xfffff), None);
    }

    #[test]
    fn irq_ack_passes_the_index_and_the_error() {
        let fake = Fake::script(&[ok(0), err(Error::NotFound), err(Error::PermissionDenied)]);
        assert_eq!(irq_ack(2), Ok(()));
        assert_eq!(irq_ack(1), Err(Error::NotFound));
        assert_eq!(irq_ack(0), Err(Error::PermissionDenied));
        let calls = fake.calls();
        assert_eq!(calls[0], (Hypercall::IoIrqAck, [2, 0, 0, 0, 0, 0]));
        assert_eq!(calls.len(), 3);
    }
}
