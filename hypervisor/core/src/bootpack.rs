//! The boot pack: what `cargo xtask` hands the hypervisor as its boot module.
//!
//! xtask validates a scenario manifest (TOML) on the host and packs the result
//! here in binary form, so the hypervisor never parses text it did not need
//! to. Layout (all integers little-endian, every record `#[repr(C)]`):
//!
//! ```text
//! offset 0                 PackHeader (64 bytes)
//! header.domains_offset    DomainRecord × domain_count (128 bytes each)
//! header.blobs_offset      BlobRecord × blob_count (16 bytes each)
//! header.channels_offset   ChannelRecord × channel_count (64 bytes each; version 2)
//! channels end              DeviceRecord × device_count (64 bytes each; version 3)
//! blob.offset              blob bytes (guest ELF images, command lines), 16-byte aligned
//! ```
//!
//! `checksum` is FNV-1a/64 over the whole pack with the checksum field read
//! as zero. Several domains may share one image blob (64 copies of a guest
//! cost one image).
//!
//! A channel record names two domains by their index in the domain table
//! (domain ids follow that order from 1) and gives the channel a name; the
//! hypervisor connects them before any domain runs and lists the channel in
//! both ends' start-info pages (ABI clauses `EVT-7`, `MEM-3a`). Every record
//! is checked here, like every other table: a malformed one refuses the pack.
//!
//! Version 3 adds device records, right after the channel table (split I/O,
//! `docs/io.md`): a [`DeviceKind::Mmio`] record delegates one virtio-mmio
//! device (its MMIO window and IOAPIC input) to the privileged driver
//! domain; a [`DeviceKind::VblkExtent`] record gives a guest a virtual disk
//! that is an extent of such a device's disk. The hypervisor of this
//! version checks them and does not act on them yet.

use hypercall_abi::layout::{CHANNEL_NAME_LEN, MAX_NAMED_CHANNELS};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `b"TAHOMAPK"`.
pub const MAGIC: [u8; 8] = *b"TAHOMAPK";
/// Format version understood by this code (2: channel records; 3: device
/// records).
pub const VERSION: u32 = 3;
/// Sentinel for "no blob".
pub const NO_BLOB: u32 = u32::MAX;
/// Longest domain name, in bytes.
pub const NAME_LEN: usize = 32;

/// The pack's header.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct PackHeader {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: u32,
    /// Size of this header in bytes (64).
    pub header_size: u32,
    /// Size of the whole pack in bytes; must equal the module's size.
    pub total_size: u64,
    /// FNV-1a/64 over the pack with this field taken as zero.
    pub checksum: u64,
    /// Byte offset of the domain table.
    pub domains_offset: u32,
    /// Number of [`DomainRecord`]s.
    pub domain_count: u32,
    /// Byte offset of the blob table.
    pub blobs_offset: u32,
    /// Number of [`BlobRecord`]s.
    pub blob_count: u32,
    /// Byte offset of the scenario name blob (UTF-8), or 0.
    pub scenario_blob: u32,
    /// Byte offset of the channel table (version 2).
    pub channels_offset: u32,
    /// Number of [`ChannelRecord`]s.
    pub channel_count: u32,
    /// Number of [`DeviceRecord`]s, which follow the channel table
    /// (version 3).
    pub device_count: u32,
}

/// Most channel records one pack may hold: every domain at its limit.
pub const MAX_CHANNELS: u32 = 4096;

/// A channel between two domains, wired at boot (`EVT-7`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct ChannelRecord {
    /// NUL-padded UTF-8 name, non-empty; unique among each end's channels.
    pub name: [u8; CHANNEL_NAME_LEN],
    /// The two ends: indices into the domain table, different.
    pub ends: [u32; 2],
    /// Reserved, zero.
    pub reserved: [u32; 6],
}

/// Most device records one pack may hold.
pub const MAX_DEVICES: u32 = 256;

/// Base of the virtio-mmio slots on QEMU's `microvm` (`docs/io.md`).
pub const VIRTIO_MMIO_BASE: u64 = 0xfeb0_0000;
/// Bytes per virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x200;
/// Slots on `microvm` (24 with ACPI; 8 with `acpi=off`, which xtask uses).
pub const VIRTIO_MMIO_SLOTS: u64 = 24;
/// IOAPIC inputs a device may be routed to (one IOAPIC of 24 pins).
pub const IOAPIC_PINS: u32 = 24;
/// Sector size of virtual disks: extents are aligned to it.
pub const SECTOR_SIZE: u64 = 512;
/// virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// virtio device id of a network device.
pub const VIRTIO_ID_NET: u32 = 1;

/// What a [`DeviceRecord`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DeviceKind {
    /// A virtio-mmio device delegated to the driver domain `domain`:
    /// `id` = virtio device id, `base`/`size` = its MMIO window, `irq` =
    /// its IOAPIC input.
    Mmio = 1,
    /// A virtual block device of guest `domain`: an extent of the disk of
    /// MMIO record `id` (a block device), `base` = first byte on that disk,
    /// `size` = bytes, `flags` = [`ExtentFlags`].
    VblkExtent = 2,
    /// A virtual NIC of guest `domain` on the switch of the driver domain
    /// that owns MMIO record `id` (a network device, the uplink): `base` =
    /// its MAC address (the six bytes big-endian in the low 48 bits, a
    /// unicast address), `size` = its IPv4 address (big-endian, in the low
    /// 32 bits), `flags` and `irq` zero (`MEM-3c`, `NET-*`).
    Vnic = 3,
}

bitflags::bitflags! {
    /// Flags of a [`DeviceKind::VblkExtent`] record.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct ExtentFlags: u32 {
        /// The guest may only read it.
        const READONLY = 1 << 0;
    }
}

/// A device delegated at boot, or a guest's virtual disk (version 3).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, PartialEq, Eq)]
#[repr(C)]
pub struct DeviceRecord {
    /// [`DeviceKind`] as a number.
    pub kind: u32,
    /// Index into the domain table: the driver domain (MMIO) or the guest
    /// (extent).
    pub domain: u32,
    /// MMIO: the virtio device id (non-zero). Extent: index of the MMIO
    /// record of its disk.
    pub id: u32,
    /// MMIO: the IOAPIC input. Extent: zero.
    pub irq: u32,
    /// MMIO: physical address of the window. Extent: first byte on the disk.
    pub base: u64,
    /// MMIO: window bytes. Extent: bytes.
    pub size: u64,
    /// Extent: [`ExtentFlags`]. MMIO: zero.
    pub flags: u32,
    /// Reserved, zero.
    pub reserved: [u32; 7],
}

/// What is wrong with a device record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceFault {
    /// An unknown kind.
    BadKind,
    /// Its domain is not in the domain table.
    NoSuchDomain,
    /// An MMIO device for a domain without the privileged flag.
    NotPrivileged,
    /// An MMIO window that is not one virtio-mmio slot, or a zero device id.
    BadWindow,
    /// An IOAPIC input beyond the IOAPIC.
    BadIrq,
    /// Two MMIO records share a slot or an IOAPIC input, or a 4 KiB frame
    /// of slots would be delegated to two domains.
    Conflict,
    /// An extent's disk is not an MMIO record of a block device.
    NoSuchDisk,
    /// An extent that is empty, not sector-aligned, overflows, or belongs
    /// to the disk's own driver domain.
    BadExtent,
    /// Two extents of one disk overlap.
    Overlap,
    /// A reserved field or unknown flag is not zero.
    Reserved,
    /// A vNIC's uplink is not an MMIO record of a network device.
    NoSuchNic,
    /// A vNIC with a multicast or zero MAC, a zero IPv4 address or one with
    /// high bits set, or that belongs to its switch's own driver domain.
    BadVnic,
    /// Two vNICs of one switch share a MAC or an IPv4 address.
    DuplicateAddress,
}

impl core::fmt::Display for DeviceFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DeviceFault::BadKind => "its kind is unknown",
            DeviceFault::NoSuchDomain => "its domain is not a domain of the pack",
            DeviceFault::NotPrivileged => {
                "an MMIO device is given to a domain that is not privileged"
            }
            DeviceFault::BadWindow => {
                "its MMIO window is not one virtio-mmio slot (or its device id is 0)"
            }
            DeviceFault::BadIrq => "its IOAPIC input is beyond the IOAPIC",
            DeviceFault::Conflict => {
                "it shares a slot, IOAPIC input or MMIO frame with another domain's device"
            }
            DeviceFault::NoSuchDisk => "its disk is not a block device record of the pack",
            DeviceFault::BadExtent => {
                "the extent is empty, not 512-byte aligned, overflows, or is the driver domain's"
            }
            DeviceFault::Overlap => "the extent overlaps another extent of the same disk",
            DeviceFault::Reserved => "a reserved field or unknown flag is not zero",
            DeviceFault::NoSuchNic => {
                "its uplink is not a network device record of the pack"
            }
            DeviceFault::BadVnic => {
                "the vNIC's MAC is multicast or zero, its IPv4 address is zero or too wide, or it is the driver domain's"
            }
            DeviceFault::DuplicateAddress => {
                "the vNIC's MAC or IPv4 address is another vNIC's on the same switch"
            }
        })
    }
}

/// One domain to create at boot.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DomainRecord {
    /// NUL-padded UTF-8 name.
    pub name: [u8; NAME_LEN],
    /// Memory in 4 KiB pages (the domain's initial reservation).
    pub mem_pages: u32,
    /// Upper bound the domain may grow to, in pages (>= `mem_pages`).
    pub max_pages: u32,
    /// [`DomainFlags`] bits.
    pub flags: u32,
    /// Index of the ELF image blob.
    pub image_blob: u32,
    /// Index of the command-line blob, or [`NO_BLOB`].
    pub cmdline_blob: u32,
    /// Relative scheduling weight (1..=256); 0 means the default.
    pub weight: u32,
    /// Pages of the DMA region of a domain that owns devices (IO-3); 0
    /// means the default (`tahoma_core::io::DEFAULT_DMA_PAGES`). Ignored
    /// for a domain without devices.
    pub dma_pages: u32,
    /// Reserved, zero.
    pub reserved: [u32; 17],
}

bitflags::bitflags! {
    /// Per-domain flags in [`DomainRecord::flags`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct DomainFlags: u32 {
        /// The driver domain: may be delegated I/O ports, MMIO and IRQs.
        const PRIVILEGED = 1 << 0;
        /// The scenario ends (QEMU exits) when this domain ends; its
        /// shutdown reason becomes the exit status.
        const CRITICAL = 1 << 1;
    }
}

/// Where a blob lies in the pack.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct BlobRecord {
    /// Byte offset from the start of the pack.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

const _: () = assert!(core::mem::size_of::<PackHeader>() == 64);
const _: () = assert!(core::mem::size_of::<DomainRecord>() == 128);
const _: () = assert!(core::mem::size_of::<BlobRecord>() == 16);
const _: () = assert!(core::mem::size_of::<ChannelRecord>() == 64);
const _: () = assert!(core::mem::size_of::<DeviceRecord>() == 64);

/// Why a pack was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackError {
    /// Shorter than a header.
    TooShort,
    /// The magic is wrong: not a boot pack.
    BadMagic,
    /// A version this hypervisor does not understand.
    BadVersion(u32),
    /// `total_size` disagrees with the module's length.
    SizeMismatch {
        /// What the header says.
        declared: u64,
        /// What the boot loader delivered.
        actual: u64,
    },
    /// The checksum does not match.
    BadChecksum,
    /// A table or blob lies (partly) outside the pack.
    OutOfBounds,
    /// A domain names a blob that does not exist.
    BadBlobIndex,
    /// Channel record `index` is malformed (`why` says how).
    BadChannel {
        /// Its index in the channel table.
        index: u32,
        /// What is wrong with it.
        why: ChannelFault,
    },
    /// Device record `index` is malformed (`why` says how).
    BadDevice {
        /// Its index in the device table.
        index: u32,
        /// What is wrong with it.
        why: DeviceFault,
    },
}

/// What is wrong with a channel record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelFault {
    /// The name is empty, not NUL-padded UTF-8, or has a NUL inside.
    BadName,
    /// An end is not an index into the domain table.
    NoSuchDomain,
    /// Both ends are the same domain.
    SameDomain,
    /// An end already has a channel of this name.
    DuplicateName,
    /// An end would have more than `MAX_NAMED_CHANNELS` channels.
    TooMany,
    /// A reserved field is not zero.
    Reserved,
}

impl core::fmt::Display for ChannelFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ChannelFault::BadName => "its name is empty or not NUL-padded UTF-8",
            ChannelFault::NoSuchDomain => "an end is not a domain of the pack",
            ChannelFault::SameDomain => "both ends are the same domain",
            ChannelFault::DuplicateName => "an end already has a channel of that name",
            ChannelFault::TooMany => "an end has more than 16 named channels",
            ChannelFault::Reserved => "a reserved field is not zero",
        })
    }
}

impl core::fmt::Display for PackError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PackError::TooShort => write!(f, "module is shorter than a boot-pack header"),
            PackError::BadMagic => write!(f, "module is not a Tahoma boot pack (bad magic)"),
            PackError::BadVersion(v) => write!(f, "boot pack version {v} is not supported (want {VERSION})"),
            PackError::SizeMismatch { declared, actual } => write!(
                f,
                "boot pack declares {declared} bytes but the module holds {actual}: truncated or padded"
            ),
            PackError::BadChecksum => write!(f, "boot pack checksum mismatch: the module is corrupt"),
            PackError::OutOfBounds => write!(f, "boot pack table or blob lies outside the module"),
            PackError::BadBlobIndex => write!(f, "boot pack domain refers to a missing blob"),
            PackError::BadChannel { index, why } => {
                write!(f, "boot pack channel record {index} is malformed: {why}")
            }
            PackError::BadDevice { index, why } => {
                write!(f, "boot pack device record {index} is malformed: {why}")
            }
        }
    }
}

/// FNV-1a/64 of `bytes`, with the 8 bytes at `skip` (if any) taken as zero.
pub fn checksum(bytes: &[u8], skip: Option<usize>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, &b) in bytes.iter().enumerate() {
        let b = match skip {
            Some(s) if i >= s && i < s + 8 => 0,
            _ => b,
        };
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const CHECKSUM_OFFSET: usize = core::mem::offset_of!(PackHeader, checksum);

/// A validated view of a boot pack.
#[derive(Clone, Copy, Debug)]
pub struct Pack<'a> {
    bytes: &'a [u8],
    header: PackHeader,
}

impl<'a> Pack<'a> {
    /// Validates `bytes` as a boot pack: magic, version, size, checksum and
    /// that every table entry and blob lies inside.
    pub fn parse(bytes: &'a [u8]) -> Result<Pack<'a>, PackError> {
        let (header, _) = PackHeader::read_from_prefix(bytes).map_err(|_| PackError::TooShort)?;
        if header.magic != MAGIC {
            return Err(PackError::BadMagic);
        }
        if header.version != VERSION {
            return Err(PackError::BadVersion(header.version));
        }
        if header.total_size != bytes.len() as u64 {
            return Err(PackError::SizeMismatch {
                declared: header.total_size,
                actual: bytes.len() as u64,
            });
        }
        if checksum(bytes, Some(CHECKSUM_OFFSET)) != header.checksum {
            return Err(PackError::BadChecksum);
        }
        let pack = Pack { bytes, header };
        table_bounds(bytes.len(), header.domains_offset, header.domain_count, 128)?;
        table_bounds(bytes.len(), header.blobs_offset, header.blob_count, 16)?;
        for i in 0..header.blob_count {
            let b = pack.blob_record(i).ok_or(PackError::OutOfBounds)?;
            let end = b.offset.checked_add(b.size).ok_or(PackError::OutOfBounds)?;
            if end > bytes.len() as u64 {
                return Err(PackError::OutOfBounds);
            }
        }
        for d in pack.domains() {
            if d.image_blob >= header.blob_count
                || (d.cmdline_blob != NO_BLOB && d.cmdline_blob >= header.blob_count)
            {
                return Err(PackError::BadBlobIndex);
            }
        }
        if header.channel_count > MAX_CHANNELS || header.device_count > MAX_DEVICES {
            return Err(PackError::OutOfBounds);
        }
        table_bounds(
            bytes.len(),
            header.channels_offset,
            header.channel_count,
            64,
        )?;
        table_bounds(bytes.len(), pack.devices_offset(), header.device_count, 64)?;
        check_channels(&pack)?;
        check_devices(&pack)?;
        Ok(pack)
    }

    /// The channel records, in pack order (checked by [`Pack::parse`]).
    pub fn channels(&self) -> impl Iterator<Item = ChannelRecord> + 'a {
        let bytes = self.bytes;
        let off = self.header.channels_offset as usize;
        (0..self.header.channel_count as usize).filter_map(move |i| {
            ChannelRecord::read_from_prefix(bytes.get(off + i * 64..)?)
                .ok()
                .map(|(c, _)| c)
        })
    }

    /// Where the device table starts: right after the channel table
    /// (saturating: an impossible offset fails the bounds check).
    fn devices_offset(&self) -> u32 {
        self.header
            .channel_count
            .saturating_mul(64)
            .saturating_add(self.header.channels_offset)
    }

    /// The device records, in pack order (checked by [`Pack::parse`]).
    pub fn devices(&self) -> impl Iterator<Item = DeviceRecord> + 'a {
        let bytes = self.bytes;
        let off = self.devices_offset() as usize;
        (0..self.header.device_count as usize).filter_map(move |i| {
            DeviceRecord::read_from_prefix(bytes.get(off + i * 64..)?)
                .ok()
                .map(|(c, _)| c)
        })
    }

    /// The header.
    pub fn header(&self) -> &PackHeader {
        &self.header
    }

    /// Size of the whole pack in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the pack is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The domain records, in boot order.
    pub fn domains(&self) -> impl Iterator<Item = DomainRecord> + 'a {
        let bytes = self.bytes;
        let off = self.header.domains_offset as usize;
        (0..self.header.domain_count as usize).filter_map(move |i| {
            DomainRecord::read_from_prefix(&bytes[off + i * 128..])
                .ok()
                .map(|(d, _)| d)
        })
    }

    fn blob_record(&self, index: u32) -> Option<BlobRecord> {
        if index >= self.header.blob_count {
            return None;
        }
        let off = self.header.blobs_offset as usize + index as usize * 16;
        BlobRecord::read_from_prefix(self.bytes.get(off..)?)
            .ok()
            .map(|(b, _)| b)
    }

    /// The bytes of blob `index`.
    pub fn blob(&self, index: u32) -> Option<&'a [u8]> {
        let b = self.blob_record(index)?;
        let start = usize::try_from(b.offset).ok()?;
        let end = usize::try_from(b.offset.checked_add(b.size)?).ok()?;
        self.bytes.get(start..end)
    }

    /// The scenario's name, if the pack carries one.
    pub fn scenario(&self) -> Option<&'a str> {
        if self.header.scenario_blob == 0 {
            return None;
        }
        core::str::from_utf8(self.blob(self.header.scenario_blob - 1)?).ok()
    }
}

/// Checks every device record (version 3): a known kind naming a domain of
/// the pack; an MMIO device only for a privileged domain, exactly one
/// virtio-mmio slot, an IOAPIC input, no slot, input or 4 KiB MMIO frame
/// shared with another domain's device; an extent on a block device's
/// record, non-empty, sector-aligned, not the driver domain's own, not
/// overlapping another extent of that disk; reserved fields zero. (That an
/// extent lies inside the disk image is checked by xtask, which knows the
/// image's size; the driver domain checks it against the device.)
fn check_devices(pack: &Pack<'_>) -> Result<(), PackError> {
    let domains: alloc::vec::Vec<DomainRecord> = pack.domains().collect();
    let records: alloc::vec::Vec<DeviceRecord> = pack.devices().collect();
    let mmio = DeviceKind::Mmio as u32;
    let extent = DeviceKind::VblkExtent as u32;
    for (i, r) in records.iter().enumerate() {
        let bad = |why| PackError::BadDevice {
            index: fits_u32(i),
            why,
        };
        if r.reserved != [0; 7] {
            return Err(bad(DeviceFault::Reserved));
        }
        let Some(dom) = domains.get(r.domain as usize) else {
            return Err(bad(DeviceFault::NoSuchDomain));
        };
        if r.kind == mmio {
            if dom.flags & DomainFlags::PRIVILEGED.bits() == 0 {
                return Err(bad(DeviceFault::NotPrivileged));
            }
            if r.flags != 0 {
                return Err(bad(DeviceFault::Reserved));
            }
            let slot = r.base.wrapping_sub(VIRTIO_MMIO_BASE);
            if r.base < VIRTIO_MMIO_BASE
                || slot % VIRTIO_MMIO_SLOT_SIZE != 0
                || slot / VIRTIO_MMIO_SLOT_SIZE >= VIRTIO_MMIO_SLOTS
                || r.size != VIRTIO_MMIO_SLOT_SIZE
                || r.id == 0
            {
                return Err(bad(DeviceFault::BadWindow));
            }
            if r.irq >= IOAPIC_PINS {
                return Err(bad(DeviceFault::BadIrq));
            }
            let clash = records[..i].iter().any(|o| {
                o.kind == mmio
                    && (o.base == r.base
                        || o.irq == r.irq
                        || (o.base >> 12 == r.base >> 12 && o.domain != r.domain))
            });
            if clash {
                return Err(bad(DeviceFault::Conflict));
            }
        } else if r.kind == extent {
            if r.flags & !ExtentFlags::all().bits() != 0 || r.irq != 0 {
                return Err(bad(DeviceFault::Reserved));
            }
            let Some(disk) = records
                .get(r.id as usize)
                .filter(|d| d.kind == mmio && d.id == VIRTIO_ID_BLOCK)
            else {
                return Err(bad(DeviceFault::NoSuchDisk));
            };
            let end = r.base.checked_add(r.size);
            if r.size == 0
                || r.base % SECTOR_SIZE != 0
                || r.size % SECTOR_SIZE != 0
                || end.is_none()
                || r.domain == disk.domain
            {
                return Err(bad(DeviceFault::BadExtent));
            }
            let end = end.unwrap_or(u64::MAX);
            let overlap = records[..i].iter().any(|o| {
                o.kind == extent
                    && o.id == r.id
                    && o.base < end
                    && r.base < o.base.saturating_add(o.size)
            });
            if overlap {
                return Err(bad(DeviceFault::Overlap));
            }
        } else if r.kind == DeviceKind::Vnic as u32 {
            if r.flags != 0 || r.irq != 0 {
                return Err(bad(DeviceFault::Reserved));
            }
            let Some(nic) = records
                .get(r.id as usize)
                .filter(|d| d.kind == mmio && d.id == VIRTIO_ID_NET)
            else {
                return Err(bad(DeviceFault::NoSuchNic));
            };
            let mac_ok = r.base != 0 && r.base >> 48 == 0 && (r.base >> 40) & 1 == 0;
            let ip_ok = r.size != 0 && r.size >> 32 == 0;
            if !mac_ok || !ip_ok || r.domain == nic.domain {
                return Err(bad(DeviceFault::BadVnic));
            }
            let dup = records[..i].iter().any(|o| {
                o.kind == DeviceKind::Vnic as u32
                    && o.id == r.id
                    && (o.base == r.base || o.size == r.size)
            });
            if dup {
                return Err(bad(DeviceFault::DuplicateAddress));
            }
        } else {
            return Err(bad(DeviceFault::BadKind));
        }
    }
    Ok(())
}

/// Checks every channel record (`EVT-7`): a valid name, two different
/// existing ends, names unique per end, at most [`MAX_NAMED_CHANNELS`] per
/// end, reserved fields zero.
fn check_channels(pack: &Pack<'_>) -> Result<(), PackError> {
    let domains = pack.header.domain_count;
    let mut per_domain = alloc::vec![0usize; domains as usize];
    let records: alloc::vec::Vec<ChannelRecord> = pack.channels().collect();
    if records.len() != pack.header.channel_count as usize {
        return Err(PackError::OutOfBounds);
    }
    for (i, c) in records.iter().enumerate() {
        let bad = |why| PackError::BadChannel {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            why,
        };
        if c.reserved != [0; 6] {
            return Err(bad(ChannelFault::Reserved));
        }
        if channel_name(&c.name).is_none() {
            return Err(bad(ChannelFault::BadName));
        }
        let [a, b] = c.ends;
        if a >= domains || b >= domains {
            return Err(bad(ChannelFault::NoSuchDomain));
        }
        if a == b {
            return Err(bad(ChannelFault::SameDomain));
        }
        let clash = records[..i]
            .iter()
            .any(|o| o.name == c.name && o.ends.iter().any(|e| c.ends.contains(e)));
        if clash {
            return Err(bad(ChannelFault::DuplicateName));
        }
        for e in [a, b] {
            per_domain[e as usize] += 1;
            if per_domain[e as usize] > MAX_NAMED_CHANNELS {
                return Err(bad(ChannelFault::TooMany));
            }
        }
    }
    Ok(())
}

/// The name in a channel record's field, if it is valid: non-empty UTF-8,
/// then only NUL padding.
pub fn channel_name(name: &[u8; CHANNEL_NAME_LEN]) -> Option<&str> {
    let end = name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(CHANNEL_NAME_LEN);
    if end == 0 || name[end..].iter().any(|&b| b != 0) {
        return None;
    }
    core::str::from_utf8(&name[..end]).ok()
}

fn table_bounds(len: usize, offset: u32, count: u32, size: u64) -> Result<(), PackError> {
    let end = u64::from(count)
        .checked_mul(size)
        .and_then(|t| t.checked_add(u64::from(offset)));
    match end {
        Some(end) if end <= len as u64 => Ok(()),
        _ => Err(PackError::OutOfBounds),
    }
}

/// The UTF-8 name in a NUL-padded field.
pub fn name_str(name: &[u8; NAME_LEN]) -> &str {
    let end = name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    core::str::from_utf8(&name[..end]).unwrap_or("?")
}

/// Builds a boot pack (used by xtask on the host, and by tests).
#[derive(Default, Debug)]
pub struct PackBuilder {
    domains: alloc::vec::Vec<DomainRecord>,
    channels: alloc::vec::Vec<ChannelRecord>,
    devices: alloc::vec::Vec<DeviceRecord>,
    blobs: alloc::vec::Vec<alloc::vec::Vec<u8>>,
    scenario: Option<u32>,
}

/// A domain as given to [`PackBuilder::domain`].
#[derive(Clone, Debug)]
pub struct DomainSpec<'a> {
    /// Name (at most [`NAME_LEN`] bytes).
    pub name: &'a str,
    /// Initial memory in pages.
    pub mem_pages: u32,
    /// Maximum memory in pages.
    pub max_pages: u32,
    /// Flags.
    pub flags: DomainFlags,
    /// Blob index of the ELF image (from [`PackBuilder::blob`]).
    pub image_blob: u32,
    /// Command line.
    pub cmdline: &'a str,
    /// Scheduling weight.
    pub weight: u32,
    /// DMA region pages (0: the default); see [`DomainRecord::dma_pages`].
    pub dma_pages: u32,
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a blob and returns its index.
    pub fn blob(&mut self, bytes: &[u8]) -> u32 {
        self.blobs.push(bytes.to_vec());
        fits_u32(self.blobs.len() - 1)
    }

    /// Records the scenario name.
    pub fn scenario(&mut self, name: &str) {
        let i = self.blob(name.as_bytes());
        self.scenario = Some(i);
    }

    /// Adds a domain; its command line becomes a blob. Names longer than
    /// [`NAME_LEN`] are an error.
    pub fn domain(&mut self, spec: &DomainSpec<'_>) -> Result<(), &'static str> {
        if spec.name.len() > NAME_LEN {
            return Err("domain name longer than 32 bytes");
        }
        let mut name = [0u8; NAME_LEN];
        name[..spec.name.len()].copy_from_slice(spec.name.as_bytes());
        let cmdline_blob = if spec.cmdline.is_empty() {
            NO_BLOB
        } else {
            self.blob(spec.cmdline.as_bytes())
        };
        self.domains.push(DomainRecord {
            name,
            mem_pages: spec.mem_pages,
            max_pages: spec.max_pages.max(spec.mem_pages),
            flags: spec.flags.bits(),
            image_blob: spec.image_blob,
            cmdline_blob,
            weight: spec.weight,
            dma_pages: spec.dma_pages,
            reserved: [0; 17],
        });
        Ok(())
    }

    /// Adds a channel named `name` between the domains added `a`th and
    /// `b`th (0-based). Only the name's length is checked here; the rest is
    /// checked where a pack is read ([`Pack::parse`]), so tests can build
    /// bad packs.
    pub fn channel(&mut self, name: &str, a: u32, b: u32) -> Result<(), &'static str> {
        if name.len() > CHANNEL_NAME_LEN {
            return Err("channel name longer than 32 bytes");
        }
        let mut n = [0u8; CHANNEL_NAME_LEN];
        n[..name.len()].copy_from_slice(name.as_bytes());
        self.channels.push(ChannelRecord {
            name: n,
            ends: [a, b],
            reserved: [0; 6],
        });
        Ok(())
    }

    /// Delegates a virtio-mmio device (slot at `base`, IOAPIC input `irq`,
    /// virtio device `id`) to the domain added `domain`th; its record index.
    /// Checked where the pack is read ([`Pack::parse`]).
    pub fn mmio_device(&mut self, domain: u32, id: u32, base: u64, irq: u32) -> u32 {
        self.devices.push(DeviceRecord {
            kind: DeviceKind::Mmio as u32,
            domain,
            id,
            irq,
            base,
            size: VIRTIO_MMIO_SLOT_SIZE,
            flags: 0,
            reserved: [0; 7],
        });
        fits_u32(self.devices.len() - 1)
    }

    /// Gives the domain added `domain`th a virtual disk: `size` bytes at
    /// byte `offset` of the disk of device record `disk`. Checked where the
    /// pack is read.
    pub fn vblk_extent(
        &mut self,
        domain: u32,
        disk: u32,
        offset: u64,
        size: u64,
        flags: ExtentFlags,
    ) {
        self.devices.push(DeviceRecord {
            kind: DeviceKind::VblkExtent as u32,
            domain,
            id: disk,
            irq: 0,
            base: offset,
            size,
            flags: flags.bits(),
            reserved: [0; 7],
        });
    }

    /// Gives the domain added `domain`th a virtual NIC on the switch of
    /// device record `nic` (a network device): MAC `mac`, IPv4 address
    /// `ipv4`. Checked where the pack is read.
    pub fn vnic(&mut self, domain: u32, nic: u32, mac: [u8; 6], ipv4: [u8; 4]) {
        let mut m = [0u8; 8];
        m[2..].copy_from_slice(&mac);
        self.devices.push(DeviceRecord {
            kind: DeviceKind::Vnic as u32,
            domain,
            id: nic,
            irq: 0,
            base: u64::from_be_bytes(m),
            size: u64::from(u32::from_be_bytes(ipv4)),
            flags: 0,
            reserved: [0; 7],
        });
    }

    /// Lays the pack out and returns its bytes.
    pub fn finish(&self) -> alloc::vec::Vec<u8> {
        let align = |x: usize| (x + 15) & !15;
        let domains_offset = 64;
        let blobs_offset = domains_offset + self.domains.len() * 128;
        let channels_offset = blobs_offset + self.blobs.len() * 16;
        let devices_offset = channels_offset + self.channels.len() * 64;
        let mut data_offset = align(devices_offset + self.devices.len() * 64);
        let mut records = alloc::vec::Vec::new();
        for b in &self.blobs {
            records.push(BlobRecord {
                offset: data_offset as u64,
                size: b.len() as u64,
            });
            data_offset = align(data_offset + b.len());
        }
        let total = data_offset;
        let header = PackHeader {
            magic: MAGIC,
            version: VERSION,
            header_size: 64,
            total_size: total as u64,
            checksum: 0,
            domains_offset: fits_u32(domains_offset),
            domain_count: fits_u32(self.domains.len()),
            blobs_offset: fits_u32(blobs_offset),
            blob_count: fits_u32(self.blobs.len()),
            scenario_blob: self.scenario.map_or(0, |i| i + 1),
            channels_offset: fits_u32(channels_offset),
            channel_count: fits_u32(self.channels.len()),
            device_count: fits_u32(self.devices.len()),
        };
        let mut out = alloc::vec![0u8; total];
        out[..64].copy_from_slice(header.as_bytes());
        for (i, d) in self.domains.iter().enumerate() {
            out[domains_offset + i * 128..][..128].copy_from_slice(d.as_bytes());
        }
        for (i, c) in self.channels.iter().enumerate() {
            out[channels_offset + i * 64..][..64].copy_from_slice(c.as_bytes());
        }
        for (i, d) in self.devices.iter().enumerate() {
            out[devices_offset + i * 64..][..64].copy_from_slice(d.as_bytes());
        }
        for (i, (r, b)) in records.iter().zip(&self.blobs).enumerate() {
            out[blobs_offset + i * 16..][..16].copy_from_slice(r.as_bytes());
            let at = usize::try_from(r.offset).expect("a blob offset the builder chose fits");
            out[at..][..b.len()].copy_from_slice(b);
        }
        let sum = checksum(&out, Some(CHECKSUM_OFFSET));
        out[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
        out
    }
}

/// A size or count of the pack being built (by xtask, on the host) as the
/// format's 32-bit field: a pack is far smaller than 4 GiB, and one that is
/// not is a bug of the builder's caller, reported loudly.
fn fits_u32(n: usize) -> u32 {
    u32::try_from(n).expect("boot pack fields are 32-bit: the pack is too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> alloc::vec::Vec<u8> {
        let mut b = PackBuilder::new();
        b.scenario("demo");
        let img = b.blob(b"\x7fELF-image");
        for (i, name) in ["alpha", "beta"].iter().enumerate() {
            b.domain(&DomainSpec {
                name,
                mem_pages: 64 + i as u32,
                max_pages: 128,
                flags: DomainFlags::CRITICAL,
                image_blob: img,
                cmdline: "x=1",
                weight: 0,
                dma_pages: 0,
            })
            .unwrap();
        }
        b.finish()
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let p = Pack::parse(&bytes).unwrap();
        assert_eq!(p.scenario(), Some("demo"));
        assert_eq!((p.len(), p.is_empty()), (bytes.len(), false));
        assert_eq!(p.header().total_size, bytes.len() as u64);
        assert_eq!(p.header().domain_count, 2);
        let ds: alloc::vec::Vec<_> = p.domains().collect();
        assert_eq!(ds.len(), 2);
        assert_eq!(name_str(&ds[1].name), "beta");
        assert_eq!(ds[1].mem_pages, 65);
        assert_eq!(p.blob(ds[0].image_blob), Some(&b"\x7fELF-image"[..]));
        assert_eq!(p.blob(ds[0].cmdline_blob), Some(&b"x=1"[..]));
    }

    #[test]
    fn truncation_is_a_size_mismatch() {
        let bytes = sample();
        let err = Pack::parse(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, PackError::SizeMismatch { .. }));
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Pack::parse(&b).is_err(), "flip at {i} accepted");
        }
    }

    fn with_channels(chans: &[(&str, u32, u32)]) -> alloc::vec::Vec<u8> {
        let mut b = PackBuilder::new();
        let img = b.blob(b"\x7fELF");
        for name in ["a", "b", "c", "d"] {
            b.domain(&DomainSpec {
                name,
                mem_pages: 64,
                max_pages: 64,
                flags: DomainFlags::CRITICAL,
                image_blob: img,
                cmdline: "",
                weight: 0,
                dma_pages: 0,
            })
            .unwrap();
        }
        for (n, x, y) in chans {
            b.channel(n, *x, *y).unwrap();
        }
        b.finish()
    }

    fn channel_fault(chans: &[(&str, u32, u32)]) -> Option<(u32, ChannelFault)> {
        match Pack::parse(&with_channels(chans)) {
            Ok(_) => None,
            Err(PackError::BadChannel { index, why }) => Some((index, why)),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn channels_round_trip() {
        let bytes = with_channels(&[("ping", 0, 1), ("log", 2, 0)]);
        let p = Pack::parse(&bytes).unwrap();
        let cs: alloc::vec::Vec<_> = p.channels().collect();
        assert_eq!(cs.len(), 2);
        assert_eq!(channel_name(&cs[0].name), Some("ping"));
        assert_eq!(cs[1].ends, [2, 0]);
        assert_eq!(p.domains().count(), 4);
        assert_eq!(
            Pack::parse(&with_channels(&[])).unwrap().channels().count(),
            0
        );
    }

    #[test]
    fn malformed_channel_records_refuse_the_pack() {
        use ChannelFault::*;
        assert_eq!(channel_fault(&[("x", 0, 1), ("y", 1, 2)]), None);
        assert_eq!(channel_fault(&[("x", 0, 4)]), Some((0, NoSuchDomain)));
        assert_eq!(
            channel_fault(&[("x", u32::MAX, 0)]),
            Some((0, NoSuchDomain))
        );
        assert_eq!(channel_fault(&[("x", 1, 1)]), Some((0, SameDomain)));
        assert_eq!(channel_fault(&[("", 0, 1)]), Some((0, BadName)));
        assert_eq!(
            channel_fault(&[("x", 0, 1), ("x", 2, 1)]),
            Some((1, DuplicateName))
        );
        assert_eq!(
            channel_fault(&[("x", 0, 1), ("x", 2, 0)]),
            Some((1, DuplicateName))
        );
        // The same name between other domains is fine (two pairs).
        assert_eq!(channel_fault(&[("x", 0, 1), ("x", 2, 3)]), None);
        let many: alloc::vec::Vec<alloc::string::String> = (0..=MAX_NAMED_CHANNELS)
            .map(|i| alloc::format!("c{i}"))
            .collect();
        let recs: alloc::vec::Vec<(&str, u32, u32)> =
            many.iter().map(|n| (n.as_str(), 0, 1)).collect();
        assert_eq!(
            channel_fault(&recs),
            Some((MAX_NAMED_CHANNELS as u32, TooMany))
        );
        assert_eq!(channel_fault(&recs[..MAX_NAMED_CHANNELS]), None);
    }

    /// Patches record 0 of a one-channel pack and fixes the checksum, as a
    /// hostile or buggy packer would.
    fn patched(f: impl FnOnce(&mut ChannelRecord)) -> Result<(), PackError> {
        let mut bytes = with_channels(&[("x", 0, 1)]);
        let h = PackHeader::read_from_prefix(&bytes).unwrap().0;
        let off = h.channels_offset as usize;
        let mut r = ChannelRecord::read_from_prefix(&bytes[off..]).unwrap().0;
        f(&mut r);
        bytes[off..off + 64].copy_from_slice(r.as_bytes());
        let sum = checksum(&bytes, Some(CHECKSUM_OFFSET));
        bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
        Pack::parse(&bytes).map(drop)
    }

    #[test]
    fn hostile_channel_fields_are_refused() {
        let bad = |why| Err(PackError::BadChannel { index: 0, why });
        assert_eq!(patched(|_| {}), Ok(()));
        assert_eq!(patched(|r| r.reserved[5] = 1), bad(ChannelFault::Reserved));
        assert_eq!(
            patched(|r| r.name[1..3].copy_from_slice(b"\0y")),
            bad(ChannelFault::BadName)
        );
        assert_eq!(patched(|r| r.name[0] = 0xff), bad(ChannelFault::BadName));
        assert_eq!(patched(|r| r.name = [b'n'; 32]), Ok(()), "32 bytes, no NUL");
        // A table that claims more records than the pack holds.
        let mut bytes = with_channels(&[("x", 0, 1)]);
        bytes[core::mem::offset_of!(PackHeader, channel_count)] = 200;
        let sum = checksum(&bytes, Some(CHECKSUM_OFFSET));
        bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(Pack::parse(&bytes).unwrap_err(), PackError::OutOfBounds);
    }

    /// A pack with a privileged driver domain (0), two guests (1, 2) and
    /// the devices `f` adds.
    fn with_devices(f: impl FnOnce(&mut PackBuilder)) -> Result<alloc::vec::Vec<u8>, PackError> {
        pack_of(&["drv", "a", "b"], 1, f)
    }

    /// A pack of `names` (the first `privileged` of them privileged), with
    /// the devices `f` adds, parsed.
    fn pack_of(
        names: &[&str],
        privileged: usize,
        f: impl FnOnce(&mut PackBuilder),
    ) -> Result<alloc::vec::Vec<u8>, PackError> {
        let mut b = PackBuilder::new();
        let img = b.blob(b"\x7fELF-image");
        for (i, name) in names.iter().enumerate() {
            let flags = if i < privileged {
                DomainFlags::PRIVILEGED
            } else {
                DomainFlags::empty()
            };
            b.domain(&DomainSpec {
                name,
                mem_pages: 64,
                max_pages: 64,
                flags,
                image_blob: img,
                cmdline: "",
                weight: 0,
                dma_pages: 0,
            })
            .unwrap();
        }
        f(&mut b);
        let bytes = b.finish();
        Pack::parse(&bytes).map(|_| bytes.clone())
    }

    fn device_fault(f: impl FnOnce(&mut PackBuilder)) -> Option<(u32, DeviceFault)> {
        match with_devices(f) {
            Err(PackError::BadDevice { index, why }) => Some((index, why)),
            Ok(_) => None,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    const BLK: u64 = VIRTIO_MMIO_BASE + 7 * VIRTIO_MMIO_SLOT_SIZE;

    #[test]
    fn devices_round_trip() {
        let bytes = with_devices(|b| {
            let d = b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
            b.vblk_extent(1, d, 0, 16 << 20, ExtentFlags::empty());
            b.vblk_extent(2, d, 16 << 20, 16 << 20, ExtentFlags::READONLY);
            b.channel("c", 1, 2).unwrap();
        })
        .unwrap();
        let pack = Pack::parse(&bytes).unwrap();
        assert_eq!(pack.header().version, 3);
        assert_eq!(pack.channels().count(), 1);
        let devs: alloc::vec::Vec<_> = pack.devices().collect();
        assert_eq!(devs.len(), 3);
        assert_eq!(
            (
                devs[0].kind,
                devs[0].domain,
                devs[0].base,
                devs[0].irq,
                devs[0].size
            ),
            (1, 0, BLK, 12, 0x200)
        );
        assert_eq!(
            (
                devs[2].kind,
                devs[2].domain,
                devs[2].id,
                devs[2].base,
                devs[2].size
            ),
            (2, 2, 0, 16 << 20, 16 << 20)
        );
        assert_eq!(devs[2].flags, ExtentFlags::READONLY.bits());
        // No devices: still a valid version-3 pack.
        assert_eq!(Pack::parse(&sample()).unwrap().devices().count(), 0);
    }

    #[test]
    fn malformed_device_records_refuse_the_pack() {
        use DeviceFault::*;
        let blk = |b: &mut PackBuilder| b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
        assert_eq!(
            device_fault(|b| {
                b.mmio_device(1, 2, BLK, 12);
            }),
            Some((0, NotPrivileged))
        );
        assert_eq!(
            device_fault(|b| {
                b.mmio_device(3, 2, BLK, 12);
            }),
            Some((0, NoSuchDomain))
        );
        assert_eq!(
            device_fault(|b| {
                b.mmio_device(0, 2, BLK + 8, 12);
            }),
            Some((0, BadWindow))
        );
        assert_eq!(
            device_fault(|b| {
                b.mmio_device(0, 2, 0xfec0_0000, 12);
            }),
            Some((0, BadWindow))
        );
        assert_eq!(
            device_fault(|b| {
                b.mmio_device(0, 2, VIRTIO_MMIO_BASE - 0x200, 12);
            }),
            Some((0, BadWindow))
        );
        assert_eq!(
            device_fault(|b| {
                b.mmio_device(0, 0, BLK, 12);
            }),
            Some((0, BadWindow))
        );
        assert_eq!(
            device_fault(|b| {
                b.mmio_device(0, 2, BLK, 24);
            }),
            Some((0, BadIrq))
        );
        assert_eq!(
            device_fault(|b| {
                blk(b);
                b.mmio_device(0, 1, BLK, 11);
            }),
            Some((1, Conflict))
        );
        assert_eq!(
            device_fault(|b| {
                blk(b);
                b.mmio_device(0, 1, BLK - 0x200, 12);
            }),
            Some((1, Conflict))
        );
        // Extents.
        assert_eq!(
            device_fault(|b| {
                b.vblk_extent(1, 0, 0, 512, ExtentFlags::empty());
            }),
            Some((0, NoSuchDisk))
        );
        assert_eq!(
            device_fault(|b| {
                b.mmio_device(0, 1, BLK, 12);
                b.vblk_extent(1, 0, 0, 512, ExtentFlags::empty());
            }),
            Some((1, NoSuchDisk))
        );
        for (off, size) in [(0, 0), (1, 512), (0, 511), (u64::MAX - 511, 1024)] {
            assert_eq!(
                device_fault(|b| {
                    let d = blk(b);
                    b.vblk_extent(1, d, off, size, ExtentFlags::empty());
                }),
                Some((1, BadExtent)),
                "{off} {size}"
            );
        }
        assert_eq!(
            device_fault(|b| {
                let d = blk(b);
                b.vblk_extent(0, d, 0, 512, ExtentFlags::empty());
            }),
            Some((1, BadExtent))
        );
        assert_eq!(
            device_fault(|b| {
                let d = blk(b);
                b.vblk_extent(1, d, 0, 4096, ExtentFlags::empty());
                b.vblk_extent(2, d, 3584, 512, ExtentFlags::empty());
            }),
            Some((2, Overlap))
        );
        assert_eq!(
            device_fault(|b| {
                let d = blk(b);
                b.vblk_extent(1, d, 0, 4096, ExtentFlags::empty());
                b.vblk_extent(2, d, 4096, 512, ExtentFlags::empty());
            }),
            None,
            "adjacent extents are fine"
        );
        assert_eq!(
            device_fault(|b| {
                let d = blk(b);
                b.vblk_extent(1, d, 0, 512, ExtentFlags::from_bits_retain(2));
            }),
            Some((1, Reserved))
        );
    }

    #[test]
    fn vnic_records_are_checked() {
        use DeviceFault::*;
        const NET: u64 = 0xfeb0_0c00;
        let nic = |b: &mut PackBuilder| b.mmio_device(0, VIRTIO_ID_NET, NET, 11);
        let mac = |last: u8| [0x02, 0, 0, 0, 0, last];
        let ok = |b: &mut PackBuilder| {
            let n = nic(b);
            b.vnic(1, n, mac(1), [10, 0, 2, 10]);
            b.vnic(2, n, mac(2), [10, 0, 2, 11]);
        };
        assert_eq!(device_fault(ok), None);
        let bytes = with_devices(ok).unwrap();
        let devs: alloc::vec::Vec<_> = Pack::parse(&bytes).unwrap().devices().collect();
        assert_eq!(
            (devs[1].kind, devs[1].domain, devs[1].id),
            (DeviceKind::Vnic as u32, 1, 0)
        );
        assert_eq!(
            (devs[1].base, devs[1].size),
            (0x0200_0000_0001, 0x0a00_020a)
        );
        assert_eq!(
            device_fault(|b| b.vnic(1, 0, mac(1), [10, 0, 2, 10])),
            Some((0, NoSuchNic)),
            "no uplink record"
        );
        assert_eq!(
            device_fault(|b| {
                let d = b.mmio_device(0, VIRTIO_ID_BLOCK, NET, 11);
                b.vnic(1, d, mac(1), [10, 0, 2, 10]);
            }),
            Some((1, NoSuchNic)),
            "a disk is no uplink"
        );
        for (m, ip, dom) in [
            ([0u8; 6], [10, 0, 2, 10], 1),
            ([0x03, 0, 0, 0, 0, 1], [10, 0, 2, 10], 1),
            ([0xff; 6], [10, 0, 2, 10], 1),
            (mac(1), [0; 4], 1),
            (mac(1), [10, 0, 2, 10], 0),
        ] {
            assert_eq!(
                device_fault(|b| {
                    let n = nic(b);
                    b.vnic(dom, n, m, ip);
                }),
                Some((1, BadVnic)),
                "{m:?} {ip:?} {dom}"
            );
        }
        for (m2, ip2) in [(mac(1), [10, 0, 2, 11]), (mac(2), [10, 0, 2, 10])] {
            assert_eq!(
                device_fault(|b| {
                    let n = nic(b);
                    b.vnic(1, n, mac(1), [10, 0, 2, 10]);
                    b.vnic(2, n, m2, ip2);
                }),
                Some((2, DuplicateAddress))
            );
        }
        let mut bytes = with_devices(|b| {
            let n = nic(b);
            b.vnic(1, n, mac(1), [10, 0, 2, 10]);
        })
        .unwrap();
        let h = PackHeader::read_from_prefix(&bytes).unwrap().0;
        let off = (h.channels_offset + h.channel_count * 64) as usize + 64;
        for edit in [
            (&|r: &mut DeviceRecord| r.size = 1 << 32) as &dyn Fn(&mut DeviceRecord),
            &|r| r.base = 1 << 48,
            &|r| r.flags = 1,
            &|r| r.irq = 1,
        ] {
            let mut r = DeviceRecord::read_from_prefix(&bytes[off..]).unwrap().0;
            edit(&mut r);
            let saved = bytes.clone();
            bytes[off..off + 64].copy_from_slice(r.as_bytes());
            let sum = checksum(&bytes, Some(CHECKSUM_OFFSET));
            bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
            assert!(
                matches!(
                    Pack::parse(&bytes),
                    Err(PackError::BadDevice {
                        index: 1,
                        why: BadVnic | Reserved
                    })
                ),
                "{r:?}"
            );
            bytes = saved;
        }
    }

    #[test]
    fn hostile_device_fields_are_refused() {
        let patch = |f: &dyn Fn(&mut DeviceRecord)| {
            let mut bytes = with_devices(|b| {
                b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
            })
            .unwrap();
            let h = PackHeader::read_from_prefix(&bytes).unwrap().0;
            let off = (h.channels_offset + h.channel_count * 64) as usize;
            let mut r = DeviceRecord::read_from_prefix(&bytes[off..]).unwrap().0;
            f(&mut r);
            bytes[off..off + 64].copy_from_slice(r.as_bytes());
            let sum = checksum(&bytes, Some(CHECKSUM_OFFSET));
            bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
            Pack::parse(&bytes).map(|_| ())
        };
        let bad = |why| Err(PackError::BadDevice { index: 0, why });
        assert_eq!(patch(&|r| r.reserved[6] = 1), bad(DeviceFault::Reserved));
        assert_eq!(patch(&|r| r.flags = 1), bad(DeviceFault::Reserved));
        assert_eq!(patch(&|r| r.kind = 0), bad(DeviceFault::BadKind));
        assert_eq!(patch(&|r| r.kind = 4), bad(DeviceFault::BadKind));
        assert_eq!(patch(&|r| r.size = 0x1000), bad(DeviceFault::BadWindow));
        assert_eq!(
            patch(&|r| r.domain = u32::MAX),
            bad(DeviceFault::NoSuchDomain)
        );
        assert_eq!(patch(&|_| ()), Ok(()));
        // A device count pointing past the end is out of bounds, not a panic.
        let mut bytes = with_devices(|_| ()).unwrap();
        let mut h = PackHeader::read_from_prefix(&bytes).unwrap().0;
        for count in [1, MAX_DEVICES + 1, u32::MAX] {
            h.device_count = count;
            bytes[..64].copy_from_slice(h.as_bytes());
            let sum = checksum(&bytes, Some(CHECKSUM_OFFSET));
            bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
            assert_eq!(Pack::parse(&bytes).map(|_| ()), Err(PackError::OutOfBounds));
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(Pack::parse(&[]).unwrap_err(), PackError::TooShort);
        assert_eq!(Pack::parse(&[0u8; 100]).unwrap_err(), PackError::BadMagic);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Pack::parse(&bytes);
        }
    }

    #[test]
    fn checksum_is_fnv1a_with_exactly_eight_bytes_skipped() {
        assert_eq!(checksum(b"", None), 0xcbf2_9ce4_8422_2325);
        assert_eq!(checksum(b"a", None), 0xaf63_dc4c_8601_ec8c);
        let bytes: alloc::vec::Vec<u8> = (1..=24).collect();
        let base = checksum(&bytes, Some(8));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let skipped = (8..16).contains(&i);
            assert_eq!(checksum(&b, Some(8)) == base, skipped, "byte {i}");
        }
        let mut zeroed = bytes.clone();
        zeroed[8..16].fill(0);
        assert_eq!(checksum(&zeroed, None), base);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        use alloc::string::ToString;
        let e = PackError::BadChannel {
            index: 3,
            why: ChannelFault::TooMany,
        };
        assert_eq!(
            e.to_string(),
            alloc::format!(
                "boot pack channel record 3 is malformed: an end has more than \
                 {} named channels",
                hypercall_abi::layout::MAX_NAMED_CHANNELS
            )
        );
        assert_eq!(
            PackError::BadVersion(9).to_string(),
            alloc::format!("boot pack version 9 is not supported (want {VERSION})")
        );
        assert_eq!(
            PackError::SizeMismatch {
                declared: 10,
                actual: 8
            }
            .to_string(),
            "boot pack declares 10 bytes but the module holds 8: truncated or padded"
        );
        let faults = [
            ChannelFault::BadName,
            ChannelFault::NoSuchDomain,
            ChannelFault::SameDomain,
            ChannelFault::DuplicateName,
            ChannelFault::TooMany,
            ChannelFault::Reserved,
        ];
        let texts: alloc::collections::BTreeSet<_> =
            faults.iter().map(ToString::to_string).collect();
        assert_eq!(texts.len(), faults.len(), "one distinct text per fault");
        assert!(texts.iter().all(|t| !t.is_empty()));
    }

    /// A blob record reaching past the module is refused however far
    /// past it reaches; one ending exactly at the module's end is fine.
    #[test]
    fn blobs_must_lie_inside_the_module() {
        let resealed = |size_delta: i64| {
            let mut bytes = sample();
            let h = PackHeader::read_from_prefix(&bytes).unwrap().0;
            // Blob 0 (the image) grows, or ends exactly at the module's end.
            let off = h.blobs_offset as usize;
            let mut r = BlobRecord::read_from_prefix(&bytes[off..]).unwrap().0;
            r.size = (bytes.len() as u64 - r.offset).wrapping_add_signed(size_delta);
            bytes[off..off + 16].copy_from_slice(r.as_bytes());
            let sum = checksum(&bytes, Some(CHECKSUM_OFFSET));
            bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
            Pack::parse(&bytes).map(drop)
        };
        assert_eq!(resealed(0), Ok(()));
        assert_eq!(resealed(1), Err(PackError::OutOfBounds));
        assert_eq!(resealed(4096), Err(PackError::OutOfBounds));
        assert_eq!(resealed(i64::MAX), Err(PackError::OutOfBounds));
    }

    /// Either blob index of a domain out of range refuses the pack.
    #[test]
    fn domain_blob_indices_are_checked_each() {
        let patched = |f: &dyn Fn(&mut DomainRecord)| {
            let mut bytes = sample();
            let h = PackHeader::read_from_prefix(&bytes).unwrap().0;
            let off = h.domains_offset as usize;
            let mut d = DomainRecord::read_from_prefix(&bytes[off..]).unwrap().0;
            f(&mut d);
            bytes[off..off + 128].copy_from_slice(d.as_bytes());
            let sum = checksum(&bytes, Some(CHECKSUM_OFFSET));
            bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
            Pack::parse(&bytes).map(drop)
        };
        assert_eq!(patched(&|_| {}), Ok(()));
        assert_eq!(patched(&|d| d.cmdline_blob = NO_BLOB), Ok(()));
        assert_eq!(patched(&|d| d.image_blob = 7), Err(PackError::BadBlobIndex));
        assert_eq!(
            patched(&|d| d.cmdline_blob = 7),
            Err(PackError::BadBlobIndex)
        );
    }

    /// The header's channel count is capped at `MAX_CHANNELS` before the
    /// records are read, and its reserved field must be zero.
    #[test]
    fn header_channel_count_is_capped() {
        // A table of `count` all-zero records appended to the module (the
        // header's former reserved word is now `device_count`, checked by
        // the device tests).
        let with_table = |count: u32| {
            let mut bytes = with_channels(&[]);
            let mut h = PackHeader::read_from_prefix(&bytes).unwrap().0;
            h.channels_offset = bytes.len() as u32;
            h.channel_count = count;
            bytes.resize(bytes.len() + count as usize * 64, 0);
            h.total_size = bytes.len() as u64;
            bytes[..64].copy_from_slice(h.as_bytes());
            let sum = checksum(&bytes, Some(CHECKSUM_OFFSET));
            bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
            Pack::parse(&bytes).map(drop)
        };
        let zero_record = Err(PackError::BadChannel {
            index: 0,
            why: ChannelFault::BadName,
        });
        assert_eq!(with_table(0), Ok(()));
        assert_eq!(with_table(1), zero_record);
        assert_eq!(with_table(MAX_CHANNELS), zero_record);
        assert_eq!(with_table(MAX_CHANNELS + 1), Err(PackError::OutOfBounds));
    }

    /// A pack whose domains 0 and 1 are privileged (2 is not), with the
    /// devices `f` adds.
    fn two_drivers(f: impl FnOnce(&mut PackBuilder)) -> Option<(u32, DeviceFault)> {
        match pack_of(&["drv0", "drv1", "guest"], 2, f) {
            Ok(_) => None,
            Err(PackError::BadDevice { index, why }) => Some((index, why)),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    const SLOT6: u64 = VIRTIO_MMIO_BASE + 6 * VIRTIO_MMIO_SLOT_SIZE;

    #[test]
    fn mmio_devices_share_a_frame_only_within_one_domain() {
        // Two slots of the one virtio-mmio frame: fine for one driver...
        assert_eq!(
            two_drivers(|b| {
                b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
                b.mmio_device(0, 1, SLOT6, 11);
            }),
            None
        );
        // ...a conflict between two (each could reach the other's device).
        assert_eq!(
            two_drivers(|b| {
                b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
                b.mmio_device(1, 1, SLOT6, 11);
            }),
            Some((1, DeviceFault::Conflict))
        );
        // An extent before an MMIO device never clashes with it, whatever
        // its numbers (its irq is 0, as the device's here).
        assert_eq!(
            two_drivers(|b| {
                let d = b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
                b.vblk_extent(2, d, 0, 1 << 20, ExtentFlags::empty());
                b.mmio_device(0, 1, SLOT6, 0);
            }),
            None
        );
    }

    #[test]
    fn the_first_virtio_slot_is_a_slot() {
        assert_eq!(
            two_drivers(|b| {
                b.mmio_device(0, VIRTIO_ID_BLOCK, VIRTIO_MMIO_BASE, 5);
            }),
            None
        );
        assert_eq!(
            two_drivers(|b| {
                b.mmio_device(
                    0,
                    VIRTIO_ID_BLOCK,
                    VIRTIO_MMIO_BASE - VIRTIO_MMIO_SLOT_SIZE,
                    5,
                );
            }),
            Some((0, DeviceFault::BadWindow))
        );
    }

    #[test]
    fn irq_lines_stop_at_the_ioapic() {
        let with_irq = |irq| {
            two_drivers(|b| {
                b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, irq);
            })
        };
        assert_eq!(with_irq(IOAPIC_PINS - 1), None);
        assert_eq!(with_irq(IOAPIC_PINS), Some((0, DeviceFault::BadIrq)));
        assert_eq!(with_irq(IOAPIC_PINS + 1), Some((0, DeviceFault::BadIrq)));
    }

    #[test]
    fn header_device_count_is_capped() {
        let with_table = |count: u32| {
            let mut bytes = with_channels(&[]);
            let mut h = PackHeader::read_from_prefix(&bytes).unwrap().0;
            h.device_count = count;
            bytes.resize(bytes.len() + count as usize * 64, 0);
            h.total_size = bytes.len() as u64;
            bytes[..64].copy_from_slice(h.as_bytes());
            let sum = checksum(&bytes, Some(CHECKSUM_OFFSET));
            bytes[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
            Pack::parse(&bytes).map(drop)
        };
        assert!(matches!(
            with_table(MAX_DEVICES),
            Err(PackError::BadDevice { .. })
        ));
        assert_eq!(with_table(MAX_DEVICES + 1), Err(PackError::OutOfBounds));
    }

    #[test]
    fn device_faults_say_what_is_wrong() {
        use alloc::string::ToString;
        let text = DeviceFault::Conflict.to_string();
        assert!(text.contains("IOAPIC input"), "{text}");
        assert!(DeviceFault::BadIrq
            .to_string()
            .contains("beyond the IOAPIC"));
    }

    /// Extents touching end to start do not overlap, in either order: one
    /// that ends exactly where an earlier one begins is as fine as one that
    /// begins where an earlier one ends; a sector more is an overlap.
    #[test]
    fn an_extent_may_end_where_an_earlier_one_begins() {
        let two = |first: (u64, u64), second: (u64, u64)| {
            device_fault(|b| {
                let d = b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
                b.vblk_extent(1, d, first.0, first.1, ExtentFlags::empty());
                b.vblk_extent(2, d, second.0, second.1, ExtentFlags::empty());
            })
        };
        assert_eq!(two((4096, 4096), (3584, 512)), None);
        assert_eq!(two((4096, 4096), (0, 4096)), None);
        assert_eq!(
            two((4096, 4096), (3584, 1024)),
            Some((2, DeviceFault::Overlap))
        );
        assert_eq!(
            two((4096, 4096), (8192 - 512, 1024)),
            Some((2, DeviceFault::Overlap))
        );
    }

    /// The builder lays the tables out back to back in the documented
    /// order, then the blobs, 16-byte aligned: a pack is no larger than
    /// its contents. A pack of no domains (only a scenario name) is still
    /// well-formed.
    #[test]
    fn builder_lays_the_tables_out_back_to_back() {
        let bytes = with_devices(|b| {
            let d = b.mmio_device(0, VIRTIO_ID_BLOCK, BLK, 12);
            b.vblk_extent(1, d, 0, 512, ExtentFlags::empty());
            b.channel("c", 1, 2).unwrap();
        })
        .unwrap();
        let h = *Pack::parse(&bytes).unwrap().header();
        // Three domains, one image blob, one channel, two devices.
        assert_eq!(h.domains_offset, 64);
        assert_eq!(h.blobs_offset, 64 + 3 * 128);
        assert_eq!(h.channels_offset, h.blobs_offset + 16);
        let devices_end = h.channels_offset + 64 + 2 * 64;
        let image = b"\x7fELF-image".len() as u32;
        assert_eq!(
            h.total_size,
            u64::from((devices_end + image).next_multiple_of(16))
        );
        let mut b = PackBuilder::new();
        b.scenario("empty");
        let bytes = b.finish();
        let p = Pack::parse(&bytes).unwrap();
        assert_eq!((p.domains().count(), p.scenario()), (0, Some("empty")));
        assert_eq!(p.header().blobs_offset, 64);
        assert_eq!(bytes.len(), 64 + 16 + 16);
    }

    /// The builder's one own check: a domain or channel name fits its
    /// 32-byte field exactly, one byte more is an error (not a panic, not a
    /// truncated name), and a full-length name reads back whole.
    #[test]
    fn builder_names_fill_their_field_and_no_more() {
        let spec = |name| DomainSpec {
            name,
            mem_pages: 64,
            max_pages: 64,
            flags: DomainFlags::empty(),
            image_blob: 0,
            cmdline: "",
            weight: 0,
            dma_pages: 0,
        };
        let full = "d".repeat(NAME_LEN);
        let long = "d".repeat(NAME_LEN + 1);
        let mut b = PackBuilder::new();
        b.blob(b"\x7fELF");
        assert_eq!(
            b.domain(&spec(&long)),
            Err("domain name longer than 32 bytes")
        );
        assert_eq!(b.domain(&spec(&full)), Ok(()));
        assert_eq!(b.domain(&spec("other")), Ok(()));
        let cfull = "c".repeat(CHANNEL_NAME_LEN);
        let clong = "c".repeat(CHANNEL_NAME_LEN + 1);
        assert_eq!(
            b.channel(&clong, 0, 1),
            Err("channel name longer than 32 bytes")
        );
        assert_eq!(b.channel(&cfull, 0, 1), Ok(()));
        let bytes = b.finish();
        let p = Pack::parse(&bytes).unwrap();
        let ds: alloc::vec::Vec<_> = p.domains().collect();
        assert_eq!(ds.len(), 2, "the refused domain was not added");
        assert_eq!(name_str(&ds[0].name), full);
        let cs: alloc::vec::Vec<_> = p.channels().collect();
        assert_eq!(cs.len(), 1, "the refused channel was not added");
        assert_eq!(channel_name(&cs[0].name), Some(cfull.as_str()));
    }
}
