//! Device delegation at run time (`IO-*`, docs/io.md): each delegated
//! device's interrupt routed to an event port of its driver domain, the
//! `io_irq_ack` unmask, the reset of a dead driver domain's devices, and the
//! virtual-disk channels. The pure decisions are `tahoma_core::io`; the
//! MMIO mappings and the DMA region are made by `domain::build`.
//!
//! An interrupt masks its IOAPIC input, EOIs the local APIC and marks the
//! input pending ([`interrupt`]); the pending inputs become events on the
//! devices' ports at the next scheduling point ([`Hv::deliver_irqs`]), from
//! the interrupt itself when it came from a guest, or from the idle loop.
//! The input stays masked until the driver calls `io_irq_ack` (IO-2).

use crate::arch::traps::TrapFrame;
use crate::arch::{ioapic, lapic};
use crate::console::Quoted;
use crate::domain::Domain;
use crate::hv::Hv;
use crate::{mem, report};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use hypercall_abi::layout::{DeviceInfo, StartInfo, VblkInfo};
use hypercall_abi::Error;
use spin::Mutex;
use tahoma_core::bootpack::{Pack, NAME_LEN};
use tahoma_core::event::{Channels, DomId, Port};
use tahoma_core::io::{self as plan, DriverPlan};
use zerocopy::IntoBytes;

/// The virtio-mmio `Status` register: writing 0 resets the device.
const VIRTIO_MMIO_STATUS: u64 = 0x70;

/// One delegated device, as routed at boot.
#[derive(Clone, Copy, Debug)]
struct Line {
    /// The driver domain.
    dom: DomId,
    /// Index in its start-info device table.
    index: u32,
    /// The IOAPIC input.
    irq: u32,
    /// The event port the interrupt is raised on.
    port: Port,
    /// Machine address of the MMIO window.
    mmio: u64,
}

/// Routed devices (at most one per IOAPIC input). Locked only in ring 0
/// with interrupts disabled, never across another lock.
static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());
/// Inputs that interrupted and are not yet delivered as events.
static PENDING: AtomicU32 = AtomicU32::new(0);

/// The devices the pack delegates to domain `id` (pack index `id - 1`).
pub fn plan_for(pack: &Pack<'_>, id: DomId) -> DriverPlan {
    let records: Vec<_> = pack.devices().collect();
    let (p, dropped) = plan::driver_plan(&records, u32::from(id) - 1);
    if dropped > 0 {
        log::error!(
            "domain {id}: {dropped} device(s) beyond the start-info table of {} left undelegated; give the devices to fewer domains",
            hypercall_abi::layout::MAX_START_DEVICES
        );
    }
    p
}

/// A device interrupt (vector of IOAPIC input `pin`): masks the input,
/// EOIs, marks it pending; from a guest, delivers it now.
pub fn interrupt(frame: *mut TrapFrame, pin: u32) {
    ioapic::mask(pin);
    lapic::eoi();
    PENDING.fetch_or(1 << pin, Ordering::SeqCst);
    // SAFETY: the trap entry's frame, live for the entry; read by value.
    if unsafe { (*frame).cs } & 3 == 0 {
        // The idle loop (which holds the hypervisor) delivers it.
        return;
    }
    // SAFETY: an interrupt from ring 3 (checked above) with interrupts
    // disabled; the one reference this entry takes (`hv::HvCell`).
    let Some(hv) = (unsafe { crate::hv::HV.get() }) else {
        return;
    };
    hv.deliver_irqs();
    hv.leave();
}

/// Whether any device may still interrupt (a routed input): then a run
/// where every domain blocks without a deadline is waiting for a device,
/// not stuck.
pub fn any_routed() -> bool {
    !LINES.lock().is_empty()
}

/// Whether a device interrupt waits for delivery ([`Hv::deliver_irqs`]):
/// the lean switch's test (`Hv::switch_away`), which leaves the delivery
/// to `Hv::run_next`.
#[inline(always)]
pub(crate) fn irqs_pending() -> bool {
    PENDING.load(Ordering::SeqCst) != 0
}

impl Hv {
    /// Raises the event of every pending input on its device's port, if the
    /// port is still bound to it (IO-2); an input whose port was closed
    /// stays masked.
    /// The check is inline and the delivery out of line: every domain
    /// switch passes here (`Hv::run_next`), almost always with nothing
    /// pending, and paid the delivery's prologue (21 instructions) for it.
    #[inline(always)]
    pub(crate) fn deliver_irqs(&mut self) {
        if irqs_pending() {
            self.deliver_pending_irqs();
        }
    }

    #[inline(never)]
    fn deliver_pending_irqs(&mut self) {
        let pending = PENDING.swap(0, Ordering::SeqCst);
        if pending == 0 {
            return;
        }
        let lines: Vec<Line> = LINES.lock().clone();
        for l in lines {
            if pending & (1 << l.irq) == 0 {
                continue;
            }
            if let Some(t) = self.channels.pirq_target(l.dom, l.port, l.irq) {
                self.raise(t);
            }
        }
    }
}

/// Routes every driver domain's devices (ports bound, masked in shared
/// info, IOAPIC inputs routed and unmasked), fills the start-info device
/// tables, and wires the virtual disks (IO-5). Called once, after every
/// domain was built and before any runs. Returns false if something the
/// pack asked for could not be set up.
pub fn setup(pack: &Pack<'_>, channels: &mut Channels, doms: &[Option<Box<Domain>>]) -> bool {
    let mut ok = true;
    let mut routed = Vec::new();
    for slot in doms {
        let Some(d) = slot.as_deref() else { continue };
        let id = d.id;
        let p = plan_for(pack, id);
        if !p.is_driver() {
            continue;
        }
        if routed.is_empty() {
            ioapic::init(mem::phys_to_virt);
        }
        let mut table: Vec<DeviceInfo> = p.devices.clone();
        for (index, dev) in table.iter_mut().enumerate() {
            let port = match channels.bind_pirq(id, dev.irq) {
                Ok(p) => p,
                Err(e) => {
                    log::error!("domain {id}: no port for device {index}: {e:?}");
                    ok = false;
                    continue;
                }
            };
            // Masked until the driver unmasks it (IO-2).
            d.shared.set_mask(port);
            dev.irq_port = port;
            ioapic::route(dev.irq, lapic::id());
            ioapic::unmask(dev.irq);
            routed.push(Line {
                dom: id,
                index: index as u32,
                irq: dev.irq,
                port,
                mmio: dev.mmio_machine,
            });
            report!(
                "device",
                "dom={} name={} index={} virtio_id={} mmio={:#x} va={:#x} irq={} vector={:#x} port={}",
                id,
                Quoted(&d.name),
                index,
                dev.virtio_id,
                dev.mmio_machine,
                dev.mmio_va,
                dev.irq,
                u32::from(ioapic::VECTOR_BASE) + dev.irq,
                port
            );
        }
        let page = d.start_info << 12;
        let at = |off: usize| page + off as u64;
        mem::copy_to_phys(
            at(core::mem::offset_of!(StartInfo, devices)),
            table.as_slice().as_bytes(),
        );
    }
    *LINES.lock() = routed;

    let name_of = |id: DomId| {
        doms.get(usize::from(id))
            .and_then(|d| d.as_ref())
            .map_or([0; NAME_LEN], |d| {
                let mut n = [0u8; NAME_LEN];
                n[..d.name.len()].copy_from_slice(d.name.as_bytes());
                n
            })
    };
    let records: Vec<_> = pack.devices().collect();
    let (links, skipped) = plan::vblk_links(&records);
    if skipped > 0 {
        log::error!("{skipped} virtual disk(s) not wired: a domain has more than 16, or its disk is not delegated");
        ok = false;
    }
    let (tables, failed) = plan::wire_vblks(channels, &links, name_of);
    for l in &failed {
        report_unwired("vblk-error", "virtual disk", l.frontend, l.index, l.backend);
        ok = false;
    }
    for (&dom, table) in &tables {
        let Some(d) = doms.get(usize::from(dom)).and_then(|d| d.as_ref()) else {
            continue;
        };
        write_table(
            d,
            core::mem::offset_of!(StartInfo, vblk_count),
            core::mem::offset_of!(StartInfo, vblks),
            table.as_slice().as_bytes(),
            table.len(),
        );
        for v in table {
            report_vblk(dom, v);
        }
    }
    let (links, skipped) = plan::vnic_links(&records);
    if skipped > 0 {
        log::error!("{skipped} vNIC(s) not wired: a switch or a guest has more than 8, or its uplink is not delegated");
        ok = false;
    }
    let (tables, failed) = plan::wire_vnics(channels, &links);
    for l in &failed {
        report_unwired(
            "vnic-error",
            "vNIC",
            l.frontend,
            u32::from(l.index),
            l.backend,
        );
        ok = false;
    }
    for (&dom, table) in &tables {
        let Some(d) = doms.get(usize::from(dom)).and_then(|d| d.as_ref()) else {
            continue;
        };
        write_table(
            d,
            core::mem::offset_of!(StartInfo, vnic_count),
            core::mem::offset_of!(StartInfo, vnics),
            table.as_slice().as_bytes(),
            table.len(),
        );
        for v in table {
            report!(
                "vnic",
                "dom={} role={} index={} peer={} port={} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} ip={}.{}.{}.{} device={}",
                dom,
                if v.role == hypercall_abi::layout::VNIC_ROLE_FRONTEND {
                    "frontend"
                } else {
                    "backend"
                },
                v.index,
                v.peer_domain,
                v.port,
                v.mac[0], v.mac[1], v.mac[2], v.mac[3], v.mac[4], v.mac[5],
                v.ipv4[0], v.ipv4[1], v.ipv4[2], v.ipv4[3],
                v.device
            );
        }
    }
    ok
}

/// Reports a virtual device (disk or vNIC) whose link could not be wired
/// because one of its ends was not built.
fn report_unwired(event: &str, what: &str, frontend: DomId, index: u32, backend: DomId) {
    report!(
        event,
        "frontend={} index={} backend={} error={}",
        frontend,
        index,
        backend,
        Quoted("an end was not built")
    );
    log::error!(
        "{what} {index} of domain {frontend} not wired: domain {frontend} or {backend} was not built (fix its manifest entry or image)"
    );
}

/// Writes one of a domain's start-info tables (its entries at `table_off`,
/// their number at `count_off`) before the domain first runs.
fn write_table(d: &Domain, count_off: usize, table_off: usize, entries: &[u8], count: usize) {
    let page = d.start_info << 12;
    // The tables hold at most MAX_START_VBLKS / vNIC-table entries.
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    mem::copy_to_phys(page + count_off as u64, count.as_bytes());
    mem::copy_to_phys(page + table_off as u64, entries);
}

fn report_vblk(dom: DomId, v: &VblkInfo) {
    report!(
        "vblk",
        "dom={} role={} index={} peer={} port={} sectors={} readonly={} offset={:#x} device={}",
        dom,
        if v.role == hypercall_abi::layout::VBLK_ROLE_FRONTEND {
            "frontend"
        } else {
            "backend"
        },
        v.index,
        v.peer_domain,
        v.port,
        v.capacity_sectors,
        u8::from(v.flags & hypercall_abi::layout::VBLK_READONLY != 0),
        v.extent_offset,
        v.device
    );
}

/// `io_irq_ack` (IO-1): unmasks the input of the caller's device `device`.
/// A domain with no delegated device: `permission_denied`; an index it
/// does not have: `not_found`.
pub fn irq_ack(cur: DomId, device: u32) -> Result<u64, Error> {
    let lines = LINES.lock();
    let mut mine = lines.iter().filter(|l| l.dom == cur).peekable();
    if mine.peek().is_none() {
        return Err(Error::PermissionDenied);
    }
    let l = mine.find(|l| l.index == device).ok_or(Error::NotFound)?;
    ioapic::unmask(l.irq);
    Ok(0)
}

/// Before any frame of dead driver domain `dom` is scrubbed or reused
/// (IO-5): each of its devices is reset (virtio `Status` = 0) and its
/// input masked, and its lines forgotten. Reports `@ device-reset`.
pub fn release(dom: DomId) {
    let mut lines = LINES.lock();
    for l in lines.iter().filter(|l| l.dom == dom) {
        ioapic::mask(l.irq);
        // An interrupt taken since is not delivered any more.
        PENDING.fetch_and(!(1 << l.irq), Ordering::SeqCst);
        let status = reset_virtio(l.mmio);
        report!(
            "device-reset",
            "dom={} index={} mmio={:#x} status={} irq={} masked={}",
            dom,
            l.index,
            l.mmio,
            status,
            l.irq,
            u8::from(ioapic::masked(l.irq))
        );
    }
    lines.retain(|l| l.dom != dom);
}

/// Writes 0 to the virtio-mmio `Status` register of the device whose
/// window is at machine address `mmio`, and reads it back (0 once the
/// device has reset).
fn reset_virtio(mmio: u64) -> u32 {
    let reg = (mem::phys_to_virt(mmio + VIRTIO_MMIO_STATUS)) as *mut u32;
    // SAFETY: `mmio` is the window of a device the boot pack delegated (a
    // checked virtio-mmio slot in 0xfeb0_0000..; tahoma_core::bootpack), so
    // `reg` is inside the direct map's uncached range below 4 GiB; `Status`
    // is an aligned 32-bit register, and writing 0 to it resets the device
    // (virtio 1.x, 4.2.2), which has no other effect on the hypervisor.
    unsafe { reg.write_volatile(0) };
    // SAFETY: the same register; reading it has no side effect.
    unsafe { reg.read_volatile() }
}
