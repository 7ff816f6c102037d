//! Device delegation and virtual-disk wiring at boot (`IO-*`,
//! `docs/abi/io.md`, `docs/io.md`): which MMIO frames a driver domain gets
//! and at which virtual addresses, and which frontend is connected to which
//! backend with which start-info entries. Pure: the hypervisor maps,
//! programs the IOAPIC and allocates the ports.

use alloc::vec::Vec;
use hypercall_abi::layout::{
    DeviceInfo, VblkInfo, VnicInfo, DEVICE_KIND_VIRTIO_MMIO, DEVICE_VA_BASE, MAX_START_DEVICES,
    MAX_START_VBLKS, MAX_START_VNICS, VBLK_READONLY, VBLK_ROLE_BACKEND, VBLK_ROLE_FRONTEND,
    VNIC_ROLE_BACKEND, VNIC_ROLE_FRONTEND,
};

use crate::bootpack::{DeviceKind, DeviceRecord, ExtentFlags, NAME_LEN, SECTOR_SIZE};
use crate::event::{Channels, DomId, Port};
use crate::frames::Mfn;
use crate::named::domain_id;

/// Pages of the DMA region a driver domain gets (2 MiB), part of its
/// window (IO-3).
pub const DEFAULT_DMA_PAGES: u64 = 512;

/// What a driver domain is given at build.
#[derive(Clone, Debug, Default)]
pub struct DriverPlan {
    /// The device frames to map, in order: frame `i` at
    /// `DEVICE_VA_BASE + i * 4096`.
    pub frames: Vec<Mfn>,
    /// Its start-info device table (ports still 0), in pack order.
    pub devices: Vec<DeviceInfo>,
    /// Index of each device's record in the pack's device table.
    pub records: Vec<u32>,
}

impl DriverPlan {
    /// Whether the domain owns devices (and so gets a DMA region).
    pub fn is_driver(&self) -> bool {
        !self.devices.is_empty()
    }
}

/// The devices delegated to the domain at pack index `domain` (at most
/// [`MAX_START_DEVICES`]; the pack was checked, so slots and frames do not
/// clash between domains). Returns the plan and the number of MMIO records
/// left out for lack of room.
pub fn driver_plan(records: &[DeviceRecord], domain: u32) -> (DriverPlan, usize) {
    let mut plan = DriverPlan::default();
    let mut dropped = 0;
    for (i, r) in records.iter().enumerate() {
        if r.kind != DeviceKind::Mmio as u32 || r.domain != domain {
            continue;
        }
        if plan.devices.len() == MAX_START_DEVICES {
            dropped += 1;
            continue;
        }
        let frame = r.base >> 12;
        let index = match plan.frames.iter().position(|&f| f == frame) {
            Some(k) => k,
            None => {
                plan.frames.push(frame);
                plan.frames.len() - 1
            }
        };
        plan.devices.push(DeviceInfo {
            kind: DEVICE_KIND_VIRTIO_MMIO,
            virtio_id: r.id,
            mmio_machine: r.base,
            mmio_va: DEVICE_VA_BASE + index as u64 * 4096 + (r.base & 0xfff),
            mmio_size: r.size,
            irq_port: 0,
            irq: r.irq,
        });
        plan.records.push(u32::try_from(i).unwrap_or(u32::MAX));
    }
    (plan, dropped)
}

/// One virtual disk: a frontend's extent of a disk served by its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VblkLink {
    /// The guest using the disk.
    pub frontend: DomId,
    /// Its index among the frontend's disks.
    pub index: u32,
    /// The driver domain serving it.
    pub backend: DomId,
    /// The disk's index in the backend's start-info device table.
    pub device: u32,
    /// First byte of the extent on the disk.
    pub offset: u64,
    /// Bytes of the extent.
    pub size: u64,
    /// The frontend may only read.
    pub readonly: bool,
}

/// Every extent record of a (checked) pack as a link, in pack order.
/// Records whose disk is not a delegated device in its driver's table, or
/// beyond [`MAX_START_VBLKS`] for one frontend, are skipped (counted).
pub fn vblk_links(records: &[DeviceRecord]) -> (Vec<VblkLink>, usize) {
    let mut links: Vec<VblkLink> = Vec::new();
    let mut skipped = 0;
    for r in records {
        if r.kind != DeviceKind::VblkExtent as u32 {
            continue;
        }
        let disk = records
            .get(r.id as usize)
            .filter(|d| d.kind == DeviceKind::Mmio as u32);
        let (Some(disk), Some(frontend)) = (disk, domain_id(r.domain)) else {
            skipped += 1;
            continue;
        };
        let (plan, _) = driver_plan(records, disk.domain);
        let device = plan.records.iter().position(|&k| k == r.id);
        let (Some(device), Some(backend)) = (device, domain_id(disk.domain)) else {
            skipped += 1;
            continue;
        };
        let index = links.iter().filter(|l| l.frontend == frontend).count();
        if index >= MAX_START_VBLKS
            || links.iter().filter(|l| l.backend == backend).count() >= MAX_START_VBLKS
        {
            skipped += 1;
            continue;
        }
        links.push(VblkLink {
            frontend,
            index: u32::try_from(index).unwrap_or(u32::MAX),
            backend,
            device: u32::try_from(device).unwrap_or(u32::MAX),
            offset: r.base,
            size: r.size,
            readonly: ExtentFlags::from_bits_truncate(r.flags).contains(ExtentFlags::READONLY),
        });
    }
    (links, skipped)
}

/// The start-info entries of both ends of `link`, whose ports are
/// `front_port` (frontend's) and `back_port` (backend's); `name_of` gives a
/// domain's NUL-padded name.
pub fn vblk_entries(
    link: &VblkLink,
    front_port: Port,
    back_port: Port,
    name_of: impl Fn(DomId) -> [u8; NAME_LEN],
) -> (VblkInfo, VblkInfo) {
    let capacity = link.size / SECTOR_SIZE;
    let front = VblkInfo {
        role: VBLK_ROLE_FRONTEND,
        index: link.index,
        peer_domain: link.backend,
        flags: if link.readonly { VBLK_READONLY } else { 0 },
        port: front_port,
        sector_size: u32::try_from(SECTOR_SIZE).unwrap_or(512),
        reserved0: 0,
        capacity_sectors: capacity,
        extent_offset: 0,
        device: 0,
        reserved1: 0,
        peer_name: name_of(link.backend),
    };
    let back = VblkInfo {
        role: VBLK_ROLE_BACKEND,
        peer_domain: link.frontend,
        port: back_port,
        extent_offset: link.offset,
        device: link.device,
        peer_name: name_of(link.frontend),
        ..front
    };
    (front, back)
}

/// Connects every link whose ends both exist in `channels` with an
/// interdomain channel (EVT-1 then EVT-2, as named channels are, EVT-7)
/// and returns each domain's start-info vblk table, in link order, plus
/// the links not wired (an end missing or a port table refusing).
pub fn wire_vblks(
    channels: &mut Channels,
    links: &[VblkLink],
    name_of: impl Fn(DomId) -> [u8; NAME_LEN],
) -> (
    alloc::collections::BTreeMap<DomId, Vec<VblkInfo>>,
    Vec<VblkLink>,
) {
    let mut tables: alloc::collections::BTreeMap<DomId, Vec<VblkInfo>> = Default::default();
    let mut failed = Vec::new();
    for l in links {
        let Some((fp, bp)) = connect(channels, l.frontend, l.backend) else {
            failed.push(*l);
            continue;
        };
        let (f, b) = vblk_entries(l, fp, bp, &name_of);
        tables.entry(l.frontend).or_default().push(f);
        tables.entry(l.backend).or_default().push(b);
    }
    (tables, failed)
}

/// Connects `frontend` and `backend` with an interdomain channel (EVT-1
/// then EVT-2, as named channels are, EVT-7): their ports, or `None` (and
/// nothing allocated) if an end does not exist or a port table refuses.
fn connect(channels: &mut Channels, frontend: DomId, backend: DomId) -> Option<(Port, Port)> {
    if !channels.exists(frontend) || !channels.exists(backend) {
        return None;
    }
    let fp = channels.alloc_unbound(frontend, u64::from(backend)).ok()?;
    match channels.bind_interdomain(backend, u64::from(frontend), u64::from(fp)) {
        Ok(bp) => Some((fp, bp)),
        Err(_) => {
            let _ = channels.close(frontend, u64::from(fp));
            None
        }
    }
}

/// The largest IP packet a vNIC carries (Ethernet's MTU).
pub const VNIC_MTU: u16 = 1500;

/// QEMU's user-network gateway, the default route of every vNIC.
pub const VNIC_GATEWAY: [u8; 4] = [10, 0, 2, 2];

/// One virtual NIC: a frontend's port on the switch of a driver domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VnicLink {
    /// The guest using the vNIC.
    pub frontend: DomId,
    /// Its index among the frontend's vNICs.
    pub index: u8,
    /// The driver domain switching it.
    pub backend: DomId,
    /// The uplink's index in the backend's start-info device table.
    pub device: u32,
    /// The vNIC's MAC.
    pub mac: [u8; 6],
    /// Its IPv4 address.
    pub ipv4: [u8; 4],
}

/// Every vNIC record of a (checked) pack as a link, in pack order. Records
/// whose uplink is not a delegated device in its driver's table, or beyond
/// [`MAX_START_VNICS`] for one frontend or one backend, are skipped
/// (counted).
pub fn vnic_links(records: &[DeviceRecord]) -> (Vec<VnicLink>, usize) {
    let mut links: Vec<VnicLink> = Vec::new();
    let mut skipped = 0;
    for r in records {
        if r.kind != DeviceKind::Vnic as u32 {
            continue;
        }
        let nic = records
            .get(r.id as usize)
            .filter(|d| d.kind == DeviceKind::Mmio as u32);
        let (Some(nic), Some(frontend)) = (nic, domain_id(r.domain)) else {
            skipped += 1;
            continue;
        };
        let (plan, _) = driver_plan(records, nic.domain);
        let device = plan.records.iter().position(|&k| k == r.id);
        let (Some(device), Some(backend)) = (device, domain_id(nic.domain)) else {
            skipped += 1;
            continue;
        };
        let index = links.iter().filter(|l| l.frontend == frontend).count();
        if index >= MAX_START_VNICS
            || links.iter().filter(|l| l.backend == backend).count() >= MAX_START_VNICS
        {
            skipped += 1;
            continue;
        }
        let m = r.base.to_be_bytes();
        let ip = u32::try_from(r.size).unwrap_or(0).to_be_bytes();
        links.push(VnicLink {
            frontend,
            index: u8::try_from(index).unwrap_or(u8::MAX),
            backend,
            device: u32::try_from(device).unwrap_or(u32::MAX),
            mac: [m[2], m[3], m[4], m[5], m[6], m[7]],
            ipv4: ip,
        });
    }
    (links, skipped)
}

/// The start-info entries of both ends of `link`, whose ports are
/// `front_port` (frontend's) and `back_port` (backend's).
pub fn vnic_entries(link: &VnicLink, front_port: Port, back_port: Port) -> (VnicInfo, VnicInfo) {
    let front = VnicInfo {
        role: VNIC_ROLE_FRONTEND,
        index: link.index,
        prefix_len: 24,
        flags: 0,
        peer_domain: link.backend,
        mtu: VNIC_MTU,
        port: front_port,
        mac: link.mac,
        reserved0: [0; 2],
        ipv4: link.ipv4,
        gateway: VNIC_GATEWAY,
        device: 0,
    };
    let back = VnicInfo {
        role: VNIC_ROLE_BACKEND,
        peer_domain: link.frontend,
        port: back_port,
        device: link.device,
        ..front
    };
    (front, back)
}

/// Connects every vNIC link whose ends both exist with an interdomain
/// channel and returns each domain's start-info vNIC table, in link order,
/// plus the links not wired.
pub fn wire_vnics(
    channels: &mut Channels,
    links: &[VnicLink],
) -> (
    alloc::collections::BTreeMap<DomId, Vec<VnicInfo>>,
    Vec<VnicLink>,
) {
    let mut tables: alloc::collections::BTreeMap<DomId, Vec<VnicInfo>> = Default::default();
    let mut failed = Vec::new();
    for l in links {
        let Some((fp, bp)) = connect(channels, l.frontend, l.backend) else {
            failed.push(*l);
            continue;
        };
        let (f, b) = vnic_entries(l, fp, bp);
        tables.entry(l.frontend).or_default().push(f);
        tables.entry(l.backend).or_default().push(b);
    }
    (tables, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootpack::VIRTIO_ID_BLOCK;
    use crate::event::PortState;

    const BLK: u64 = 0xfeb0_0e00;
    const SLOT6: u64 = 0xfeb0_0c00;

    /// Device records as xtask's pack builder writes them.
    #[derive(Default)]
    struct B(Vec<DeviceRecord>);

    impl B {
        #[allow(clippy::too_many_arguments)]
        fn push(
            &mut self,
            kind: DeviceKind,
            domain: u32,
            id: u32,
            irq: u32,
            base: u64,
            size: u64,
            flags: u32,
        ) -> u32 {
            self.0.push(DeviceRecord {
                kind: kind as u32,
                domain,
                id,
                irq,
                base,
                size,
                flags,
                reserved: [0; 7],
            });
            (self.0.len() - 1) as u32
        }
        fn mmio_device(&mut self, domain: u32, id: u32, base: u64, irq: u32) -> u32 {
            self.push(DeviceKind::Mmio, domain, id, irq, base, 0x200, 0)
        }
        fn vnic(&mut self, domain: u32, nic: u32, last: u8) {
            self.push(
                DeviceKind::Vnic,
                domain,
                nic,
                0,
                0x0200_0000_0000 | u64::from(last),
                0x0a00_0200 | u64::from(last),
                0,
            );
        }
        fn vblk_extent(&mut self, domain: u32, disk: u32, offset: u64, size: u64, f: ExtentFlags) {
            self.push(
                DeviceKind::VblkExtent,
                domain,
                disk,
                0,
                offset,
                size,
                f.bits(),
            );
        }
    }

    fn records(build: impl FnOnce(&mut B)) -> Vec<DeviceRecord> {
        let mut b = B::default();
        build(&mut b);
        b.0
    }

    fn name(d: DomId) -> [u8; NAME_LEN] {
        let mut n = [0; NAME_LEN];
        n[0] = b'0' + d as u8;
        n
    }

    #[test]
    fn io_0_a_driver_gets_its_frames_once_and_addresses_inside_them() {
        let recs = records(|b| {
            b.mmio_device(1, VIRTIO_ID_BLOCK, BLK, 12);
            b.mmio_device(1, 1, SLOT6, 11);
            b.mmio_device(2, 1, 0xfeb0_1000, 13);
        });
        let (plan, dropped) = driver_plan(&recs, 1);
        assert_eq!(dropped, 0);
        assert_eq!(plan.frames, vec![0xfeb00]);
        assert_eq!(plan.records, vec![0, 1]);
        assert_eq!(plan.devices[0].mmio_va, DEVICE_VA_BASE + 0xe00);
        assert_eq!(plan.devices[1].mmio_va, DEVICE_VA_BASE + 0xc00);
        assert_eq!((plan.devices[0].irq, plan.devices[0].virtio_id), (12, 2));
        assert_eq!(plan.devices[0].mmio_machine, BLK);
        let (other, _) = driver_plan(&recs, 2);
        assert_eq!(other.frames, vec![0xfeb01]);
        assert_eq!(other.devices[0].mmio_va, DEVICE_VA_BASE);
        assert!(!driver_plan(&recs, 0).0.is_driver());
    }

    #[test]
    fn io_0_at_most_the_start_info_table_of_devices() {
        let recs = records(|b| {
            for k in 0..6u64 {
                b.mmio_device(0, 1, 0xfeb0_0000 + k * 0x200, k as u32);
            }
        });
        let (plan, dropped) = driver_plan(&recs, 0);
        assert_eq!((plan.devices.len(), dropped), (MAX_START_DEVICES, 2));
    }

    #[test]
    fn io_5_links_number_each_frontends_disks_and_name_the_backend_device() {
        let recs = records(|b| {
            b.mmio_device(0, 1, SLOT6, 11);
            let disk = b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
            b.vblk_extent(1, disk, 0, 16 << 20, ExtentFlags::empty());
            b.vblk_extent(2, disk, 16 << 20, 8 << 20, ExtentFlags::READONLY);
            b.vblk_extent(1, disk, 24 << 20, 1 << 20, ExtentFlags::empty());
        });
        let (links, skipped) = vblk_links(&recs);
        assert_eq!(skipped, 0);
        let want = |frontend, index, offset, size, readonly| VblkLink {
            frontend,
            index,
            backend: 1,
            device: 1,
            offset,
            size,
            readonly,
        };
        assert_eq!(
            links,
            vec![
                want(2, 0, 0, 16 << 20, false),
                want(3, 0, 16 << 20, 8 << 20, true),
                want(2, 1, 24 << 20, 1 << 20, false),
            ]
        );
    }

    #[test]
    fn io_5_wiring_connects_both_ends_and_fills_both_entries() {
        let recs = records(|b| {
            let disk = b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
            b.vblk_extent(1, disk, 1 << 20, 2 << 20, ExtentFlags::READONLY);
            b.vblk_extent(2, disk, 0, 1 << 20, ExtentFlags::empty());
        });
        let (links, _) = vblk_links(&recs);
        let mut c = Channels::new();
        for d in 1..=2 {
            c.add_domain(d);
        }
        // Domain 3 (the second frontend) was not built: its link fails.
        let (tables, failed) = wire_vblks(&mut c, &links, name);
        assert_eq!(failed, vec![links[1]]);
        let f = tables[&2][0];
        let b = tables[&1][0];
        assert_eq!(tables[&1].len(), 1);
        assert_eq!((f.role, f.index, f.peer_domain), (VBLK_ROLE_FRONTEND, 0, 1));
        assert_eq!(
            (f.flags, f.sector_size, f.capacity_sectors),
            (VBLK_READONLY, 512, 4096)
        );
        assert_eq!((f.extent_offset, f.device, f.peer_name), (0, 0, name(1)));
        assert_eq!((b.role, b.index, b.peer_domain), (VBLK_ROLE_BACKEND, 0, 2));
        assert_eq!(
            (b.capacity_sectors, b.extent_offset, b.device),
            (4096, 1 << 20, 0)
        );
        assert_eq!(b.peer_name, name(2));
        // The two ports are one interdomain channel.
        assert_eq!(
            c.table(2).unwrap().get(f.port),
            Some(PortState::Interdomain {
                remote: 1,
                remote_port: b.port
            })
        );
        assert_eq!(c.send(1, u64::from(b.port)).unwrap().port, f.port);
        // Nothing allocated for the failed link.
        assert_eq!(c.table(1).unwrap().in_use(), 1);
    }

    #[test]
    fn mem_3c_vnics_are_numbered_per_frontend_and_wired_both_ways() {
        let recs = records(|b| {
            b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
            let nic = b.mmio_device(0, 1, SLOT6, 11);
            b.vnic(1, nic, 10);
            b.vnic(2, nic, 11);
            b.vnic(1, nic, 12);
            b.vnic(3, nic, 13);
        });
        let (links, skipped) = vnic_links(&recs);
        assert_eq!(skipped, 0);
        assert_eq!(
            links
                .iter()
                .map(|l| (l.frontend, l.index, l.backend, l.device))
                .collect::<Vec<_>>(),
            vec![(2, 0, 1, 1), (3, 0, 1, 1), (2, 1, 1, 1), (4, 0, 1, 1)]
        );
        assert_eq!(links[0].mac, [2, 0, 0, 0, 0, 10]);
        assert_eq!(links[0].ipv4, [10, 0, 2, 10]);
        let mut c = Channels::new();
        for d in 1..=3 {
            c.add_domain(d);
        }
        // Domain 4 was not built: its link fails and allocates nothing.
        let (tables, failed) = wire_vnics(&mut c, &links);
        assert_eq!(failed, vec![links[3]]);
        assert_eq!(tables[&1].len(), 3);
        assert_eq!(tables[&2].len(), 2);
        let f = tables[&3][0];
        let b = tables[&1][1];
        assert_eq!(
            (f.role, f.index, f.peer_domain, f.mtu, f.prefix_len),
            (VNIC_ROLE_FRONTEND, 0, 1, 1500, 24)
        );
        assert_eq!(
            (f.mac, f.ipv4, f.gateway),
            ([2, 0, 0, 0, 0, 11], [10, 0, 2, 11], [10, 0, 2, 2])
        );
        assert_eq!((f.device, f.flags, f.reserved0), (0, 0, [0; 2]));
        assert_eq!(
            (b.role, b.index, b.peer_domain, b.device),
            (VNIC_ROLE_BACKEND, 0, 3, 1)
        );
        assert_eq!((b.mac, b.ipv4), (f.mac, f.ipv4));
        assert_eq!(
            c.table(3).unwrap().get(f.port),
            Some(PortState::Interdomain {
                remote: 1,
                remote_port: b.port
            })
        );
        assert_eq!(c.send(1, u64::from(b.port)).unwrap().port, f.port);
        assert_eq!(c.table(1).unwrap().in_use(), 3);
    }

    #[test]
    fn mem_3c_at_most_the_start_info_table_of_vnics_per_switch() {
        let recs = records(|b| {
            let nic = b.mmio_device(0, 1, SLOT6, 11);
            for k in 0..(MAX_START_VNICS as u8 + 2) {
                b.vnic(u32::from(k) + 1, nic, 10 + k);
            }
        });
        let (links, skipped) = vnic_links(&recs);
        assert_eq!((links.len(), skipped), (MAX_START_VNICS, 2));
    }
}
