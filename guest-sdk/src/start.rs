//! The start-info page (`MEM-3`), as a snapshot the guest can keep.
#![forbid(unsafe_code)]

use core::ops::Deref;

use hypercall_abi::layout::{
    self, StartFlags, MAX_NAMED_CHANNELS, MAX_START_VBLKS, MAX_START_VNICS, NR_PORTS,
    VBLK_READONLY, VBLK_ROLE_BACKEND, VBLK_ROLE_FRONTEND, VNIC_ROLE_BACKEND, VNIC_ROLE_FRONTEND,
};

use crate::event::{DomId, Port};

/// A channel the scenario manifest declared with this domain as one end
/// (`[[channel]]`), connected by the hypervisor before any domain ran
/// (`EVT-7`): `port` is ready for [`crate::event::send`], and the peer's end
/// exists. Found by name with [`crate::event::channel`] or
/// [`StartInfo::channel`].
///
/// The SDK masks the port at start, so events the peer sends before this
/// domain is ready stay pending; [`Channel::listen`] sets the handler and
/// unmasks it, which delivers them at once (`EVT-6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel<'a> {
    /// The channel's name.
    pub name: &'a str,
    /// This domain's port.
    pub port: Port,
    /// The peer domain.
    pub peer: DomId,
    /// The peer domain's name (from the manifest).
    pub peer_name: &'a str,
}

/// Which end of a virtual disk this domain is (`IO-5`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VblkRole {
    /// The domain uses the disk.
    Frontend,
    /// The domain (a driver domain) serves it to [`VblkEntry::peer`].
    Backend,
}

/// A virtual disk this domain uses or serves, as its start-info entry
/// describes it (the connected disk, a frontend's handle, is
/// [`crate::vblk::Vblk`]), connected at boot (`IO-5`): `port` is an interdomain channel to the other end, masked at start (the
/// SDK masks it, as it does named channels) until the guest unmasks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VblkEntry<'a> {
    /// Frontend or backend.
    pub role: VblkRole,
    /// The disk's index among its frontend's disks (the grant reference
    /// of its ring page).
    pub index: u32,
    /// The other end.
    pub peer: DomId,
    /// The other end's name.
    pub peer_name: &'a str,
    /// The frontend may only read.
    pub readonly: bool,
    /// This domain's port, connected to the peer's.
    pub port: Port,
    /// Bytes per sector (512).
    pub sector_size: u32,
    /// Size in sectors.
    pub capacity_sectors: u64,
    /// Backend: the extent's first byte on the device (0 for a frontend).
    pub extent_offset: u64,
    /// Backend: the device's index in [`StartInfo::devices`].
    pub device: u32,
}

/// Which end of a virtual NIC this domain is (`MEM-3c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VnicRole {
    /// The domain uses the vNIC.
    Frontend,
    /// The domain (the network driver domain) switches it for
    /// [`Vnic::peer`].
    Backend,
}

/// A virtual NIC this domain uses or switches, connected at boot
/// (`MEM-3c`): `port` is an interdomain channel to the other end, masked
/// at start (as virtual-disk ports are) until the guest unmasks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vnic {
    /// Frontend or backend.
    pub role: VnicRole,
    /// The vNIC's index among its frontend's vNICs (its rings are granted
    /// at references `2 * index` and `2 * index + 1`).
    pub index: u8,
    /// The other end.
    pub peer: DomId,
    /// This domain's port, connected to the peer's.
    pub port: Port,
    /// The vNIC's MAC address.
    pub mac: [u8; 6],
    /// The frontend's IPv4 address.
    pub ipv4: [u8; 4],
    /// Its prefix length (24).
    pub prefix_len: u8,
    /// The default gateway (10.0.2.2).
    pub gateway: [u8; 4],
    /// Largest IP packet (1500).
    pub mtu: u16,
    /// Backend: the uplink's index in [`StartInfo::devices`].
    pub device: u32,
}

/// What the hypervisor told this domain at start (`MEM-3`): a copy of the
/// start-info page taken before `main` runs, with decoding helpers.
///
/// Dereferences to the raw [`layout::StartInfo`] for the plain fields
/// (`domain_id`, `nr_pages`, `tsc_hz`, ...).
#[derive(Clone, Copy, Debug)]
pub struct StartInfo {
    raw: layout::StartInfo,
}

static START_INFO: spin::Once<StartInfo> = spin::Once::new();

/// The start info of this domain.
///
/// # Panics
///
/// Before the SDK's start-up has run (only possible in host tests).
pub fn start_info() -> &'static StartInfo {
    START_INFO
        .get()
        .expect("start info is available once the SDK has started")
}

/// Keeps the snapshot; called once by the runtime.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
pub(crate) fn install(raw: layout::StartInfo) -> &'static StartInfo {
    START_INFO.call_once(|| StartInfo { raw })
}

impl Channel<'_> {
    /// Calls `handler` for every event on this channel from now on,
    /// including those that arrived before (held pending while the port
    /// was masked): sets the handler, then unmasks the port (`EVT-6`).
    pub fn listen(&self, handler: crate::event::Handler) -> Result<(), hypercall_abi::Error> {
        crate::event::set_handler(self.port, handler);
        crate::event::unmask(self.port)
    }

    /// Raises an event at the peer (`EVT-4`).
    pub fn send(&self) -> Result<(), hypercall_abi::Error> {
        crate::event::send(self.port)
    }
}

impl StartInfo {
    /// Wraps a raw start-info record.
    pub const fn new(raw: layout::StartInfo) -> StartInfo {
        StartInfo { raw }
    }

    /// The raw record.
    pub fn raw(&self) -> &layout::StartInfo {
        &self.raw
    }

    /// The domain's name (from the scenario manifest).
    pub fn name(&self) -> &str {
        decode_name(&self.raw.name)
    }

    /// The domain's command line.
    pub fn cmdline(&self) -> &str {
        decode_cmdline(&self.raw.cmdline, self.raw.cmdline_len)
    }

    /// The value of `key=value` in the command line (the last one wins);
    /// `Some("")` for a bare `key`.
    pub fn cmdline_value(&self, key: &str) -> Option<&str> {
        cmdline_value(self.cmdline(), key)
    }

    /// Whether this is the privileged driver domain.
    pub fn is_privileged(&self) -> bool {
        StartFlags::from_bits_truncate(self.raw.flags).contains(StartFlags::PRIVILEGED)
    }

    /// The named channels of this domain (`MEM-3a`), in manifest order.
    /// Entries beyond `channel_count` (clamped to the table), with port 0 or
    /// out of range, or with an empty name are skipped.
    pub fn channels(&self) -> impl Iterator<Item = Channel<'_>> {
        let n = usize::try_from(self.raw.channel_count)
            .unwrap_or(usize::MAX)
            .min(MAX_NAMED_CHANNELS);
        self.raw.channels[..n].iter().filter_map(|c| {
            let name = decode_name(&c.name);
            let ok = !name.is_empty() && c.port != 0 && (c.port as usize) < NR_PORTS;
            ok.then(|| Channel {
                name,
                port: Port(c.port),
                peer: DomId(c.peer_domain),
                peer_name: decode_name(&c.peer_name),
            })
        })
    }

    /// The channel named `name`, if the manifest declared one with this
    /// domain as an end (`EVT-7`); `None` otherwise (no hypercall, nothing
    /// to wait for: a declared channel is connected before the domain starts).
    pub fn channel(&self, name: &str) -> Option<Channel<'_>> {
        self.channels().find(|c| c.name == name)
    }

    /// This domain's virtual disks (`MEM-3b`, `IO-5`), in table order.
    /// Entries past `vblk_count` (clamped to the table), with an unknown
    /// role, port 0 or out of range, or a zero sector size are skipped.
    pub fn vblks(&self) -> impl Iterator<Item = VblkEntry<'_>> {
        let n = usize::try_from(self.raw.vblk_count)
            .unwrap_or(usize::MAX)
            .min(MAX_START_VBLKS);
        self.raw.vblks[..n].iter().filter_map(|v| {
            let role = match v.role {
                VBLK_ROLE_FRONTEND => VblkRole::Frontend,
                VBLK_ROLE_BACKEND => VblkRole::Backend,
                _ => return None,
            };
            let ok = v.port != 0 && (v.port as usize) < NR_PORTS && v.sector_size != 0;
            ok.then(|| VblkEntry {
                role,
                index: v.index,
                peer: DomId(v.peer_domain),
                peer_name: decode_name(&v.peer_name),
                readonly: v.flags & VBLK_READONLY != 0,
                port: Port(v.port),
                sector_size: v.sector_size,
                capacity_sectors: v.capacity_sectors,
                extent_offset: v.extent_offset,
                device: v.device,
            })
        })
    }

    /// This domain's `index`-th disk as a frontend.
    pub fn vblk(&self, index: u32) -> Option<VblkEntry<'_>> {
        self.vblks()
            .find(|v| v.role == VblkRole::Frontend && v.index == index)
    }

    /// This domain's virtual NICs (`MEM-3c`), in table order. Entries past
    /// `vnic_count` (clamped to the table), with an unknown role, or with
    /// port 0 or out of range are skipped.
    pub fn vnics(&self) -> impl Iterator<Item = Vnic> + '_ {
        let n = usize::try_from(self.raw.vnic_count)
            .unwrap_or(usize::MAX)
            .min(MAX_START_VNICS);
        self.raw.vnics[..n].iter().filter_map(|v| {
            let role = match v.role {
                VNIC_ROLE_FRONTEND => VnicRole::Frontend,
                VNIC_ROLE_BACKEND => VnicRole::Backend,
                _ => return None,
            };
            let ok = v.port != 0 && (v.port as usize) < NR_PORTS;
            ok.then_some(Vnic {
                role,
                index: v.index,
                peer: DomId(v.peer_domain),
                port: Port(v.port),
                mac: v.mac,
                ipv4: v.ipv4,
                prefix_len: v.prefix_len,
                gateway: v.gateway,
                mtu: v.mtu,
                device: v.device,
            })
        })
    }

    /// This domain's `index`-th vNIC as a frontend.
    pub fn vnic(&self, index: u8) -> Option<Vnic> {
        self.vnics()
            .find(|v| v.role == VnicRole::Frontend && v.index == index)
    }

    /// Virtual address of pseudo-physical page `page` of the window (`MEM-2`).
    pub fn page_va(&self, page: u64) -> u64 {
        self.raw
            .window_base
            .saturating_add(page.saturating_mul(hypercall_abi::PAGE_SIZE as u64))
    }
}

impl Deref for StartInfo {
    type Target = layout::StartInfo;
    fn deref(&self) -> &layout::StartInfo {
        &self.raw
    }
}

/// The longest valid UTF-8 prefix of `bytes` (the hypervisor is trusted for
/// layout, but a broken name must not crash the guest).
fn utf8_prefix(bytes: &[u8]) -> &str {
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Decodes a NUL-padded UTF-8 name.
pub(crate) fn decode_name(name: &[u8]) -> &str {
    let len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    utf8_prefix(&name[..len])
}

/// Decodes `len` bytes of a command-line buffer (clamped to the buffer).
pub(crate) fn decode_cmdline(buf: &[u8], len: u32) -> &str {
    let len = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
    utf8_prefix(&buf[..len])
}

/// The value of `key=value` among the whitespace-separated words of
/// `cmdline`; the last occurrence wins, a bare `key` gives `Some("")`.
pub(crate) fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .find_map(|word| match word.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if word == key => Some(""),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vblk(role: u32, index: u32, port: u32) -> layout::VblkInfo {
        let mut v: layout::VblkInfo = zerocopy::FromZeros::new_zeroed();
        v.role = role;
        v.index = index;
        v.port = port;
        v.peer_domain = 1;
        v.peer_name[..3].copy_from_slice(b"drv");
        v.sector_size = 512;
        v.capacity_sectors = 2048;
        v
    }

    #[test]
    fn vblks_come_from_the_table_up_to_the_count() {
        let mut raw: layout::StartInfo = zerocopy::FromZeros::new_zeroed();
        raw.vblk_count = 3;
        raw.vblks[0] = vblk(VBLK_ROLE_FRONTEND, 0, 4);
        raw.vblks[1] = layout::VblkInfo {
            flags: VBLK_READONLY,
            ..vblk(VBLK_ROLE_FRONTEND, 1, 5)
        };
        raw.vblks[2] = vblk(7, 2, 6);
        raw.vblks[3] = vblk(VBLK_ROLE_FRONTEND, 3, 7);
        let si = StartInfo::new(raw);
        let all: Vec<VblkEntry<'_>> = si.vblks().collect();
        assert_eq!(
            all.len(),
            2,
            "unknown role skipped, entries past the count ignored"
        );
        assert_eq!(all[0].port, Port(4));
        assert_eq!((all[0].peer, all[0].peer_name), (DomId(1), "drv"));
        assert_eq!((all[0].capacity_sectors, all[0].sector_size), (2048, 512));
        assert!(!all[0].readonly && all[1].readonly);
        assert_eq!(si.vblk(1).map(|v| v.port), Some(Port(5)));
        assert_eq!(si.vblk(3), None);
        // A backend entry is not a disk of this domain.
        let mut raw: layout::StartInfo = zerocopy::FromZeros::new_zeroed();
        raw.vblk_count = u32::MAX;
        raw.vblks[0] = layout::VblkInfo {
            extent_offset: 1 << 20,
            device: 1,
            ..vblk(VBLK_ROLE_BACKEND, 0, 9)
        };
        raw.vblks[1] = vblk(VBLK_ROLE_FRONTEND, 0, 0);
        raw.vblks[2] = vblk(VBLK_ROLE_FRONTEND, 0, u32::try_from(NR_PORTS).unwrap());
        let si = StartInfo::new(raw);
        let all: Vec<VblkEntry<'_>> = si.vblks().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].role, VblkRole::Backend);
        assert_eq!((all[0].extent_offset, all[0].device), (1 << 20, 1));
        assert_eq!(si.vblk(0), None);
    }

    #[test]
    fn names_are_nul_padded() {
        let mut n = [0u8; 32];
        n[..5].copy_from_slice(b"hello");
        assert_eq!(decode_name(&n), "hello");
        assert_eq!(decode_name(&[b'x'; 32]), "x".repeat(32));
        assert_eq!(decode_name(&[0; 32]), "");
    }

    #[test]
    fn broken_utf8_keeps_the_valid_prefix() {
        let mut n = [0u8; 32];
        n[..4].copy_from_slice(&[b'a', b'b', 0xff, b'c']);
        assert_eq!(decode_name(&n), "ab");
    }

    #[test]
    fn cmdline_length_is_clamped() {
        let mut buf = [0u8; 1024];
        buf[..9].copy_from_slice(b"log=debug");
        assert_eq!(decode_cmdline(&buf, 9), "log=debug");
        assert_eq!(decode_cmdline(&buf, 3), "log");
        assert_eq!(decode_cmdline(&buf, 0), "");
        assert_eq!(decode_cmdline(&buf, u32::MAX).len(), 1024);
    }

    fn entry(name: &str, port: u32, peer: u16, peer_name: &str) -> layout::NamedChannel {
        let mut c = layout::NamedChannel::EMPTY;
        c.name[..name.len()].copy_from_slice(name.as_bytes());
        c.peer_name[..peer_name.len()].copy_from_slice(peer_name.as_bytes());
        c.port = port;
        c.peer_domain = peer;
        c
    }

    fn with_channels(entries: &[layout::NamedChannel], count: u32) -> StartInfo {
        use zerocopy::FromZeros;
        let mut raw = layout::StartInfo::new_zeroed();
        raw.channels[..entries.len()].copy_from_slice(entries);
        raw.channel_count = count;
        StartInfo::new(raw)
    }

    #[test]
    fn vnics_are_read_within_the_count_and_checked() {
        use zerocopy::FromZeros;
        let mut raw = layout::StartInfo::new_zeroed();
        for (i, v) in raw.vnics.iter_mut().enumerate() {
            v.role = VNIC_ROLE_FRONTEND;
            v.index = u8::try_from(i).unwrap();
            v.port = u32::try_from(i + 1).unwrap();
            v.mac = [2, 0, 0, 0, 0, 1];
            v.ipv4 = [10, 0, 2, 10];
        }
        raw.vnics[1].role = 7;
        raw.vnics[2].port = u32::try_from(NR_PORTS).unwrap();
        raw.vnics[3].role = VNIC_ROLE_BACKEND;
        raw.vnic_count = 4;
        let si = StartInfo::new(raw);
        let got: alloc::vec::Vec<_> = si.vnics().map(|v| (v.role, v.index)).collect();
        assert_eq!(got, [(VnicRole::Frontend, 0), (VnicRole::Backend, 3)]);
        assert_eq!(
            si.vnic(0).map(|v| (v.port, v.ipv4)),
            Some((Port(1), [10, 0, 2, 10]))
        );
        assert_eq!(
            si.vnic(3),
            None,
            "a backend entry is not this domain's vNIC"
        );
        raw.vnic_count = u32::MAX;
        assert_eq!(StartInfo::new(raw).vnics().count(), MAX_START_VNICS - 2);
    }

    #[test]
    fn channels_are_found_by_name() {
        let si = with_channels(
            &[
                entry("pingpong", 3, 2, "pong"),
                entry("log", 4, 7, "logger"),
            ],
            2,
        );
        let c = si.channel("pingpong").expect("declared");
        assert_eq!(
            (c.name, c.port, c.peer, c.peer_name),
            ("pingpong", Port(3), DomId(2), "pong")
        );
        assert_eq!(si.channel("log").map(|c| c.port), Some(Port(4)));
        assert_eq!(si.channel("nope"), None, "unknown names are absent");
        assert_eq!(si.channel(""), None);
        assert_eq!(si.channel("ping"), None, "no prefix matches");
        assert_eq!(si.channels().count(), 2);
    }

    #[test]
    fn the_table_is_read_within_its_bounds() {
        let e = [entry("a", 1, 2, "x"), entry("b", 2, 2, "x")];
        // Entries beyond the count are not channels.
        assert_eq!(with_channels(&e, 1).channel("b"), None);
        // A count beyond the table is clamped, never read past it.
        let all: [layout::NamedChannel; MAX_NAMED_CHANNELS] =
            core::array::from_fn(|i| entry("c", u32::try_from(i + 1).unwrap(), 2, "x"));
        assert_eq!(
            with_channels(&all, u32::MAX).channels().count(),
            MAX_NAMED_CHANNELS
        );
        // Port 0, out-of-range ports and empty names are skipped.
        let bad = [
            entry("z", 0, 2, "x"),
            entry("r", u32::try_from(NR_PORTS).unwrap(), 2, "x"),
            entry("", 5, 2, "x"),
        ];
        assert_eq!(with_channels(&bad, 3).channels().count(), 0);
        assert_eq!(with_channels(&[], 0).channel("a"), None);
    }

    #[test]
    fn cmdline_values() {
        let c = "a=1  verbose b=two a=3";
        assert_eq!(cmdline_value(c, "a"), Some("3"));
        assert_eq!(cmdline_value(c, "b"), Some("two"));
        assert_eq!(cmdline_value(c, "verbose"), Some(""));
        assert_eq!(cmdline_value(c, "c"), None);
        assert_eq!(cmdline_value("", "a"), None);
    }
}
