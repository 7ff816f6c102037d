//! What a guest finds in memory when it starts (spec `docs/abi/layout.md`,
//! clauses `MEM-1`..): the virtual layout, the start-info page (Denali's
//! "virtual registers": read-only facts about the domain) and the
//! shared-info page (event bits and time, written by both sides).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Guests own the lower half of every address space; the top half is the
/// hypervisor's and is never accessible from ring 3 (`MEM-1`).
pub const GUEST_VA_TOP: u64 = 0x0000_8000_0000_0000;

/// Virtual base of the guest's memory window: pseudo-physical page `i` of
/// the domain is mapped at `WINDOW_BASE + i * 4096` (`MEM-2`). Guest images
/// are linked here.
pub const WINDOW_BASE: u64 = 0x40_0000;

/// Smallest window, in pages (64 KiB): room for the initial page tables
/// (five pages), the frame list, the start-info page and the initial stack
/// beside an image of a few pages (`MEM-2c`); with its shared-info page an
/// idle guest of this window takes 17 frames (issue 13: 20,000 of them in
/// 2 GiB). xtask refuses smaller manifests before boot; the hypervisor
/// refuses them at build.
pub const WINDOW_MIN_PAGES: u64 = 16;

/// Largest window, in pages (1 GiB minus the first 4 MiB).
pub const WINDOW_MAX_PAGES: u64 = (0x4000_0000 - WINDOW_BASE) / 4096;

/// Where the shared-info page is mapped (read-write), just below the window.
pub const SHARED_INFO_VA: u64 = WINDOW_BASE - 0x1000;

/// Pages of initial stack at the top of the window (`MEM-2d`): 16 KiB.
/// A guest that needs more arranges it itself; the SDK keeps up to
/// `guest_sdk::STACK_RESERVE_PAGES` more below it, out of its heap.
pub const INITIAL_STACK_PAGES: u64 = 4;

/// Number of event ports per domain (`EVT-0`).
pub const NR_PORTS: usize = 1024;

/// Words in the pending and mask bitmaps.
pub const PORT_WORDS: usize = NR_PORTS / 64;

/// `b"TAHOMASI"`: first bytes of the start-info page.
pub const START_INFO_MAGIC: [u8; 8] = *b"TAHOMASI";

/// The start-info page, mapped read-only; its address arrives in `rdi` at
/// entry (`MEM-3`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct StartInfo {
    /// [`START_INFO_MAGIC`].
    pub magic: [u8; 8],
    /// The hypervisor's [`crate::ABI_VERSION`].
    pub abi_version: u32,
    /// This domain's id.
    pub domain_id: u16,
    /// [`StartFlags`] bits.
    pub flags: u16,
    /// Pages in the window (the domain's current reservation).
    pub nr_pages: u64,
    /// Pages the domain may grow to.
    pub max_pages: u64,
    /// Virtual address of the window ([`WINDOW_BASE`]).
    pub window_base: u64,
    /// Virtual address of the shared-info page ([`SHARED_INFO_VA`]).
    pub shared_info_va: u64,
    /// Pseudo-physical index of the first page the guest may use freely
    /// (after the image, page tables, frame list and this page).
    pub first_free_page: u64,
    /// Pseudo-physical index where the initial stack begins (it runs to the
    /// end of the window).
    pub stack_first_page: u64,
    /// Pseudo-physical index of the root page table (L4).
    pub pt_first_page: u64,
    /// Number of page-table pages, contiguous from `pt_first_page`.
    pub pt_pages: u64,
    /// Virtual address of the frame list: `nr_pages` × u64 machine frame
    /// numbers, one per pseudo-physical page.
    pub frame_list_va: u64,
    /// TSC ticks per second, as calibrated by the hypervisor.
    pub tsc_hz: u64,
    /// Length of `cmdline` in bytes.
    pub cmdline_len: u32,
    /// Reserved, zero.
    pub reserved0: u32,
    /// The domain's name, NUL-padded UTF-8.
    pub name: [u8; 32],
    /// The domain's command line (UTF-8, `cmdline_len` bytes).
    pub cmdline: [u8; 1024],
    /// Entries used in `channels` (at most [`MAX_NAMED_CHANNELS`]); since
    /// ABI 0.2 (`MEM-3a`).
    pub channel_count: u32,
    /// Reserved, zero.
    pub reserved1: u32,
    /// The channels the manifest declared with this domain as one end,
    /// already connected when the domain starts (`EVT-7`, `MEM-3a`).
    /// Entries at and after `channel_count` are zero.
    pub channels: [NamedChannel; MAX_NAMED_CHANNELS],
    /// Pseudo-physical index of the first page of the domain's DMA region:
    /// `dma_pages` pages whose machine frames are contiguous, starting at
    /// machine address `dma_machine_base` (driver domains only, `IO-*`;
    /// zero elsewhere). Since ABI 0.3 (`MEM-3b`).
    pub dma_first_page: u64,
    /// Pages in the DMA region (0: none).
    pub dma_pages: u64,
    /// Machine address of the DMA region's first page.
    pub dma_machine_base: u64,
    /// Entries used in `devices` (at most [`MAX_START_DEVICES`]).
    pub device_count: u32,
    /// Entries used in `vblks` (at most [`MAX_START_VBLKS`]).
    pub vblk_count: u32,
    /// The devices delegated to this (driver) domain (`IO-*`). Entries at
    /// and after `device_count` are zero.
    pub devices: [DeviceInfo; MAX_START_DEVICES],
    /// Virtual disks this domain uses (frontend) or serves (backend)
    /// (`BLK-*`). Entries at and after `vblk_count` are zero.
    pub vblks: [VblkInfo; MAX_START_VBLKS],
    /// Entries used in `vnics` (at most [`MAX_START_VNICS`]). Since ABI 0.4
    /// (`MEM-3c`).
    pub vnic_count: u32,
    /// Reserved, zero.
    pub reserved2: u32,
    /// Virtual NICs this domain uses (frontend) or switches (backend)
    /// (`NET-*`). Entries at and after `vnic_count` are zero.
    pub vnics: [VnicInfo; MAX_START_VNICS],
}

/// Most vNIC entries one start-info page describes: the vNICs a frontend
/// has, or every vNIC a network driver domain switches (so a scenario has
/// at most this many vNICs per driver).
pub const MAX_START_VNICS: usize = 8;

/// [`VnicInfo::role`]: a vNIC this domain uses.
pub const VNIC_ROLE_FRONTEND: u8 = 1;
/// [`VnicInfo::role`]: a vNIC this (driver) domain switches for
/// `peer_domain`.
pub const VNIC_ROLE_BACKEND: u8 = 2;

/// One virtual NIC, as its frontend or its backend (the network driver
/// domain) sees it (`MEM-3c`, `NET-*`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VnicInfo {
    /// [`VNIC_ROLE_FRONTEND`] or [`VNIC_ROLE_BACKEND`].
    pub role: u8,
    /// The vNIC's index among its frontend's vNICs (`0..`): its rings are
    /// granted at references `2 * index` (TX) and `2 * index + 1` (RX).
    pub index: u8,
    /// The IPv4 prefix length of `ipv4` (24 on QEMU's user network).
    pub prefix_len: u8,
    /// Reserved, zero.
    pub flags: u8,
    /// The other end: the driver domain (for a frontend) or the frontend.
    pub peer_domain: u16,
    /// Largest Ethernet payload (IP packet) the switch carries: 1500.
    pub mtu: u16,
    /// This domain's event port for the vNIC, already connected to the
    /// peer's.
    pub port: u32,
    /// The vNIC's MAC address (a unicast address; the switch drops frames
    /// from it with any other source).
    pub mac: [u8; 6],
    /// Reserved, zero.
    pub reserved0: [u8; 2],
    /// The frontend's static IPv4 address (network byte order).
    pub ipv4: [u8; 4],
    /// The default gateway (QEMU's user network: 10.0.2.2).
    pub gateway: [u8; 4],
    /// Backend only: index in [`StartInfo::devices`] of the uplink (the
    /// virtio-net device); 0 for a frontend.
    pub device: u32,
}

/// Most delegated devices one start-info page describes.
pub const MAX_START_DEVICES: usize = 4;

/// Most virtual-disk entries one start-info page describes: the disks a
/// frontend uses, or the extents a backend serves.
pub const MAX_START_VBLKS: usize = 16;

/// Virtual address at which the hypervisor maps the frames of a driver
/// domain's delegated MMIO windows, in [`StartInfo::devices`] order, one
/// 4 KiB frame after the other (just above the largest window).
pub const DEVICE_VA_BASE: u64 = 0x4000_0000;

/// [`DeviceInfo::kind`]: a virtio-mmio device.
pub const DEVICE_KIND_VIRTIO_MMIO: u32 = 1;

/// One device delegated to a driver domain (`IO-*`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct DeviceInfo {
    /// [`DEVICE_KIND_VIRTIO_MMIO`].
    pub kind: u32,
    /// The virtio device id (2: block, 1: network).
    pub virtio_id: u32,
    /// Machine (physical) address of the device's MMIO window.
    pub mmio_machine: u64,
    /// Virtual address where the window is mapped, uncached, in this
    /// domain's initial address space.
    pub mmio_va: u64,
    /// Bytes of the window.
    pub mmio_size: u64,
    /// The event port the device's interrupt is delivered on.
    pub irq_port: u32,
    /// The IOAPIC input of the device.
    pub irq: u32,
}

/// [`VblkInfo::role`]: a disk this domain uses.
pub const VBLK_ROLE_FRONTEND: u32 = 1;
/// [`VblkInfo::role`]: an extent this domain serves to `peer_domain`.
pub const VBLK_ROLE_BACKEND: u32 = 2;
/// [`VblkInfo::flags`]: the frontend may only read the disk.
pub const VBLK_READONLY: u16 = 1 << 0;

/// One virtual disk, as its frontend or its backend sees it (`BLK-*`).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VblkInfo {
    /// [`VBLK_ROLE_FRONTEND`] or [`VBLK_ROLE_BACKEND`].
    pub role: u32,
    /// The disk's index among its frontend's disks (`0..`): also the grant
    /// reference at which the frontend grants the ring page.
    pub index: u32,
    /// The other end: the backend (for a frontend) or the frontend.
    pub peer_domain: u16,
    /// [`VBLK_READONLY`].
    pub flags: u16,
    /// This domain's event port for the disk, already connected to the
    /// peer's.
    pub port: u32,
    /// Bytes per sector (512).
    pub sector_size: u32,
    /// Reserved, zero.
    pub reserved0: u32,
    /// Size of the disk in sectors.
    pub capacity_sectors: u64,
    /// Backend only: the extent's first byte on the device (0 for a
    /// frontend).
    pub extent_offset: u64,
    /// Backend only: index in [`StartInfo::devices`] of the device holding
    /// the extent (0 for a frontend).
    pub device: u32,
    /// Reserved, zero.
    pub reserved1: u32,
    /// The peer domain's name, NUL-padded UTF-8.
    pub peer_name: [u8; 32],
}

/// Most named channels one domain may be an end of (`EVT-7`): the size of
/// [`StartInfo::channels`]. xtask refuses a manifest that gives a guest
/// more; the hypervisor refuses such a boot pack.
pub const MAX_NAMED_CHANNELS: usize = 16;

/// Bytes of a channel name (NUL-padded UTF-8), as of a domain name.
pub const CHANNEL_NAME_LEN: usize = 32;

/// One entry of the start-info channel table (`MEM-3a`): a channel declared
/// in the scenario manifest, wired by the hypervisor before any domain ran
/// (`EVT-7`). `port` is already interdomain, connected to the peer's end.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct NamedChannel {
    /// The channel's name from the manifest, NUL-padded UTF-8; unique
    /// within this domain's table.
    pub name: [u8; CHANNEL_NAME_LEN],
    /// The peer domain's name, NUL-padded UTF-8.
    pub peer_name: [u8; 32],
    /// This domain's port (`1 .. NR_PORTS`).
    pub port: u32,
    /// The peer domain's id.
    pub peer_domain: u16,
    /// Reserved, zero.
    pub reserved: u16,
}

impl NamedChannel {
    /// An unused entry (all zero).
    pub const EMPTY: NamedChannel = NamedChannel {
        name: [0; CHANNEL_NAME_LEN],
        peer_name: [0; 32],
        port: 0,
        peer_domain: 0,
        reserved: 0,
    };
}

/// Byte offset of [`StartInfo::channel_count`] in the start-info page.
pub const START_INFO_CHANNEL_COUNT_OFFSET: usize = core::mem::offset_of!(StartInfo, channel_count);
/// Byte offset of [`StartInfo::channels`] in the start-info page.
pub const START_INFO_CHANNELS_OFFSET: usize = core::mem::offset_of!(StartInfo, channels);

bitflags::bitflags! {
    /// Flags in [`StartInfo::flags`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct StartFlags: u16 {
        /// The domain is the privileged driver domain.
        const PRIVILEGED = 1 << 0;
    }
}

/// Time information in the shared-info page (`TIME-0`), pvclock style:
///
/// `now_ns = system_time_ns + ((tsc - tsc_timestamp) * tsc_mul) >> 32`
/// (128-bit product). `version` is odd while the hypervisor updates the
/// record: read it, read the fields, re-read it, retry if it changed or is
/// odd.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct TimeInfo {
    /// Sequence counter.
    pub version: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// TSC value at which `system_time_ns` was taken.
    pub tsc_timestamp: u64,
    /// Monotonic nanoseconds since the hypervisor started, at `tsc_timestamp`.
    pub system_time_ns: u64,
    /// Nanoseconds per TSC tick, as a 32.32 fixed-point multiplier.
    pub tsc_mul: u64,
}

impl TimeInfo {
    /// Nanoseconds at TSC value `tsc` (saturating before `tsc_timestamp`).
    pub fn ns_at(&self, tsc: u64) -> u64 {
        let delta = tsc.saturating_sub(self.tsc_timestamp) as u128;
        let ns = (delta * self.tsc_mul as u128) >> 32;
        self.system_time_ns
            .saturating_add(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// The 32.32 multiplier for a TSC of `tsc_hz`.
    pub fn mul_for_hz(tsc_hz: u64) -> u64 {
        // At most 10^9 << 32 (for 1 Hz), which fits.
        u64::try_from(((1_000_000_000u128) << 32) / u128::from(tsc_hz.max(1))).unwrap_or(u64::MAX)
    }
}

/// The shared-info page, mapped read-write at [`SHARED_INFO_VA`]
/// (`EVT-0`, `TIME-0`). Owned by the hypervisor; both sides write it, with
/// atomic bit operations on the bitmaps.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct SharedInfo {
    /// Bit `p` set: port `p` has an event. Set by the hypervisor, cleared by
    /// the guest *before* it handles the event.
    pub pending: [u64; PORT_WORDS],
    /// Bit `p` set: port `p` is masked (no upcall, no wake-up). Written by
    /// the guest.
    pub mask: [u64; PORT_WORDS],
    /// Bit `w` set: `pending[w]` may have a bit set. Set by the hypervisor;
    /// the guest swaps it with zero, then scans the words it names.
    pub pending_sel: u64,
    /// Nonzero: some unmasked port became pending since the guest last
    /// cleared this byte.
    pub upcall_pending: u8,
    /// Nonzero: upcalls are disabled (the guest's virtual interrupt flag).
    /// Set by the hypervisor when it delivers an upcall; cleared by
    /// `upcall_return` and by `block`.
    pub upcall_mask: u8,
    /// Reserved, zero.
    pub reserved: [u8; 6],
    /// Time.
    pub time: TimeInfo,
}

/// Byte offset of [`SharedInfo::pending`].
pub const SHARED_PENDING_OFFSET: usize = core::mem::offset_of!(SharedInfo, pending);
/// Byte offset of [`SharedInfo::mask`].
pub const SHARED_MASK_OFFSET: usize = core::mem::offset_of!(SharedInfo, mask);
/// Byte offset of [`SharedInfo::pending_sel`].
pub const SHARED_PENDING_SEL_OFFSET: usize = core::mem::offset_of!(SharedInfo, pending_sel);
/// Byte offset of [`SharedInfo::upcall_pending`].
pub const SHARED_UPCALL_PENDING_OFFSET: usize = core::mem::offset_of!(SharedInfo, upcall_pending);
/// Byte offset of [`SharedInfo::upcall_mask`].
pub const SHARED_UPCALL_MASK_OFFSET: usize = core::mem::offset_of!(SharedInfo, upcall_mask);
/// Byte offset of [`SharedInfo::time`].
pub const SHARED_TIME_OFFSET: usize = core::mem::offset_of!(SharedInfo, time);

/// Why an upcall frame was pushed (`TRAP-0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum UpcallKind {
    /// Events are pending (the event entry runs).
    Event = 0,
    /// The guest's own exception (the trap entry runs); see `vector`.
    Trap = 1,
}

/// The frame the hypervisor pushes on the callback stack before running an
/// entry registered with `set_callbacks` (`TRAP-0`). It holds the complete
/// interrupted context; `upcall_return` takes its address and resumes it
/// (the guest may edit it first, e.g. to skip a faulting instruction).
/// `rdi` at the entry holds the frame's address; `rsp` equals it.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct UpcallFrame {
    /// [`UpcallKind`] as a number.
    pub kind: u64,
    /// Exception vector (for `Trap`), else 0.
    pub vector: u64,
    /// The CPU's error code (for `Trap`), else 0.
    pub error_code: u64,
    /// The faulting address for a page fault, else 0.
    pub cr2: u64,
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// Where the interrupted context resumes.
    pub rip: u64,
    /// The interrupted stack pointer.
    pub rsp: u64,
    /// The interrupted flags (only the arithmetic flags, DF and AC are
    /// restored; IF is always set, IOPL always 0).
    pub rflags: u64,
}

/// Bytes below the registered callback-stack top that count as the callback
/// stack when deciding where to push a nested frame (`TRAP-0`).
pub const CALLBACK_STACK_SIZE: u64 = 64 * 1024;

/// Bytes below the interrupted `rsp` the hypervisor leaves untouched when it
/// pushes a nested frame on the same stack (the System V red zone).
pub const RED_ZONE: u64 = 128;

/// RFLAGS bits a guest may set through `upcall_return`: CF, PF, AF, ZF, SF,
/// TF excluded, DF, OF, AC.
pub const RFLAGS_GUEST_MASK: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800 | 0x4_0000;

/// The frame for the initial entry: the hypervisor always forces IF.
pub const RFLAGS_IF: u64 = 0x200;

const _: () = assert!(core::mem::size_of::<NamedChannel>() == 72);
const _: () = assert!(
    core::mem::offset_of!(StartInfo, dma_first_page)
        == 8 + 8 + 8 * 10 + 8 + 32 + 1024 + 8 + 72 * MAX_NAMED_CHANNELS
);
const _: () = assert!(START_INFO_CHANNELS_OFFSET == 1168);
const _: () = assert!(core::mem::size_of::<DeviceInfo>() == 40);
const _: () = assert!(core::mem::size_of::<VblkInfo>() == 80);
const _: () = assert!(
    core::mem::size_of::<StartInfo>()
        == 2320
            + 8 * 3
            + 8
            + 40 * MAX_START_DEVICES
            + 80 * MAX_START_VBLKS
            + 8
            + 32 * MAX_START_VNICS
);
const _: () = assert!(core::mem::size_of::<VnicInfo>() == 32);
const _: () = assert!(
    core::mem::offset_of!(StartInfo, vnics)
        == 2320 + 8 * 3 + 8 + 40 * MAX_START_DEVICES + 80 * MAX_START_VBLKS + 8
);
const _: () = assert!(core::mem::size_of::<StartInfo>() <= 4096);
const _: () = assert!(core::mem::size_of::<TimeInfo>() == 32);
const _: () = assert!(core::mem::size_of::<SharedInfo>() == 128 + 128 + 8 + 8 + 32);
const _: () = assert!(core::mem::size_of::<UpcallFrame>() == 22 * 8);
const _: () = assert!(core::mem::size_of::<UpcallFrame>() & 15 == 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_scale() {
        let t = TimeInfo {
            version: 0,
            reserved: 0,
            tsc_timestamp: 1000,
            system_time_ns: 5,
            tsc_mul: TimeInfo::mul_for_hz(2_000_000_000),
        };
        assert_eq!(t.ns_at(1000), 5);
        assert_eq!(t.ns_at(3000), 5 + 1000);
        assert_eq!(t.ns_at(0), 5, "before the timestamp saturates");
        let g = TimeInfo {
            tsc_mul: TimeInfo::mul_for_hz(1_000_000_000),
            ..t
        };
        assert_eq!(g.ns_at(1000 + 1_000_000_000), 5 + 1_000_000_000);
    }

    #[test]
    fn window_fits_one_l2() {
        const { assert!(WINDOW_BASE + WINDOW_MAX_PAGES * 4096 <= 1 << 30) };
        assert_eq!(SHARED_INFO_VA % 4096, 0);
    }
}
