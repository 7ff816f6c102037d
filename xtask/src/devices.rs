//! Devices a scenario attaches: one virtio-blk disk image owned by a
//! privileged driver domain, and per-guest virtual disks as extents of it
//! (`docs/io.md`, manifest keys in `docs/xtask.md`).
//!
//! QEMU runs `microvm` with `acpi=off`: 8 virtio-mmio slots at
//! `0xfeb00000 + i * 0x200`, slot `i` wired to IOAPIC input `5 + i`, and the
//! first `-device` takes the highest free slot (checked with `info qtree` on
//! QEMU 7.2: the disk lands at `0xfeb00e00`; `docs/io.md`). Modern virtio
//! (`force-legacy=false`). The slot and input go into the boot pack so the
//! hypervisor knows exactly which MMIO frame and IOAPIC line to delegate.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use tahoma_core::bootpack::{
    ExtentFlags, PackBuilder, VIRTIO_ID_BLOCK, VIRTIO_ID_NET, VIRTIO_MMIO_BASE,
    VIRTIO_MMIO_SLOT_SIZE,
};

/// virtio-mmio slots on `microvm` with `acpi=off`.
pub const MMIO_SLOTS: u32 = 8;
/// IOAPIC input of slot 0.
pub const FIRST_VIRTIO_IRQ: u32 = 5;
/// Largest disk image (the extents are sparse; this is a sanity bound).
pub const MAX_DISK_BYTES: u64 = 64 << 30;
/// Virtual disks per guest.
pub const MAX_VBLK_PER_GUEST: usize = 4;
/// Sector size: offsets and sizes are multiples of it.
pub const SECTOR: u64 = 512;

/// The scenario's disk image and who drives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The image, relative to the workspace root (always under `target/`).
    pub file: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Index of the driver domain in `Scenario::guests`.
    pub driver: usize,
}

/// One guest's virtual disk: an extent of the [`Disk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vblk {
    /// First byte on the disk.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// The guest may only read it.
    pub readonly: bool,
}

/// Where QEMU puts the `n`th virtio-mmio device (0-based, in command-line
/// order): its MMIO base and IOAPIC input.
pub fn mmio_slot(n: u32) -> Option<(u64, u32)> {
    let slot = MMIO_SLOTS.checked_sub(1)?.checked_sub(n)?;
    Some((
        VIRTIO_MMIO_BASE + u64::from(slot) * VIRTIO_MMIO_SLOT_SIZE,
        FIRST_VIRTIO_IRQ + slot,
    ))
}

impl Disk {
    /// The image's absolute path.
    pub fn path(&self, root: &Path) -> PathBuf {
        root.join(&self.file)
    }

    /// Creates the image (sparse, zero-filled) if it does not exist; keeps
    /// an existing one of the right size. A size mismatch is an error that
    /// says what to do (the bytes on it may matter).
    pub fn ensure_image(&self, root: &Path) -> Result<PathBuf, String> {
        let path = self.path(root);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == self.size => return Ok(path),
            Ok(m) => {
                return Err(format!(
                    "disk image {} holds {} bytes but the manifest says {}: delete the image to start afresh, or fix `size`",
                    path.display(),
                    m.len(),
                    self.size
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot stat {}: {e}", path.display())),
        }
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot create disk image {}: {e}", path.display()))?;
        f.set_len(self.size)
            .map_err(|e| format!("cannot size disk image {}: {e}", path.display()))?;
        Ok(path)
    }

    /// QEMU arguments attaching the image as a virtio-blk device (the first
    /// virtio device: slot 7, see [`mmio_slot`]).
    pub fn qemu_args(&self, image: &Path) -> Vec<String> {
        let mut a = machine_args();
        a.extend([
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=d0,cache=writeback",
                image.display().to_string().replace(',', ",,")
            ),
            "-device".into(),
            "virtio-blk-device,drive=d0".into(),
        ]);
        a
    }

    /// Adds the disk's device record (delegated to the driver domain) and
    /// every guest's extents (`vblks[i]` for guest `i`) to the pack.
    pub fn pack(&self, b: &mut PackBuilder, vblks: &[&[Vblk]]) -> Result<(), String> {
        let (base, irq) = mmio_slot(0).ok_or("no virtio-mmio slot")?;
        let disk = b.mmio_device(self.driver as u32, VIRTIO_ID_BLOCK, base, irq);
        for (guest, list) in vblks.iter().enumerate() {
            for v in list.iter() {
                let flags = if v.readonly {
                    ExtentFlags::READONLY
                } else {
                    ExtentFlags::empty()
                };
                b.vblk_extent(guest as u32, disk, v.offset, v.size, flags);
            }
        }
        Ok(())
    }
}

/// vNICs per guest.
pub const MAX_VNIC_PER_GUEST: usize = 2;
/// vNICs one switch serves (the driver's start-info table).
pub const MAX_VNICS: usize = hypercall_abi::layout::MAX_START_VNICS;
/// The MAC QEMU gives its own NIC (the uplink) by default: no vNIC may
/// take it.
pub const UPLINK_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The scenario's network: QEMU's user network behind a virtio-net device
/// that `driver` owns and switches (`[net]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Net {
    /// Index of the driver domain in `Scenario::guests`.
    pub driver: usize,
}

/// A protocol QEMU can forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A host port forwarded to a guest port (`forward = ["tcp:8080:80"]`):
/// QEMU listens on 127.0.0.1 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// TCP or UDP.
    pub proto: Proto,
    /// The port on 127.0.0.1.
    pub host_port: u16,
    /// The guest's port.
    pub guest_port: u16,
}

impl Forward {
    /// Parses `PROTO:HOSTPORT:GUESTPORT` (ports 1..=65535).
    pub fn parse(text: &str) -> Result<Forward, String> {
        let bad = || {
            format!("forward `{text}` must be \"tcp:HOSTPORT:GUESTPORT\" or \"udp:...\" with ports 1..=65535, like \"tcp:8080:80\"")
        };
        let mut parts = text.split(':');
        let (Some(p), Some(h), Some(g), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let proto = match p {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(bad()),
        };
        let port = |s: &str| s.parse::<u16>().ok().filter(|&n| n != 0);
        match (port(h), port(g)) {
            (Some(host_port), Some(guest_port)) => Ok(Forward {
                proto,
                host_port,
                guest_port,
            }),
            _ => Err(bad()),
        }
    }
}

/// One guest's virtual NIC (`[[guest.vnic]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vnic {
    /// Its MAC (given, or derived from the guest's name, [`derived_mac`]).
    pub mac: [u8; 6],
    /// Its static IPv4 address in 10.0.2.0/24.
    pub ipv4: [u8; 4],
    /// Host ports forwarded to it.
    pub forward: Vec<Forward>,
}

/// A locally administered unicast MAC from a guest's name and vNIC index:
/// `02:` then five bytes of FNV-1a/64 of `name`, `/`, the index. Stable
/// across runs, so a guest's address does not change between boots.
pub fn derived_mac(name: &str, index: usize) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(index.to_string().bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, case-insensitive).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Parses a dotted IPv4 address.
pub fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    text.parse::<std::net::Ipv4Addr>().ok().map(|a| a.octets())
}

/// Why a static address is not usable on QEMU's user network
/// (10.0.2.0/24: .2 the gateway, .3 DNS, .15..=.30 its DHCP pool), or
/// `None` if it is.
pub fn ipv4_problem(ip: [u8; 4]) -> Option<&'static str> {
    match ip {
        [10, 0, 2, h] => match h {
            0 | 255 => Some("is the network or broadcast address"),
            2 => Some("is QEMU's gateway"),
            3 => Some("is QEMU's DNS server"),
            15..=30 => Some("is in QEMU's DHCP pool (10.0.2.15 to 10.0.2.30)"),
            _ => None,
        },
        _ => Some("is outside QEMU's user network 10.0.2.0/24"),
    }
}

impl Net {
    /// QEMU arguments for the user network and its virtio-net device,
    /// after the disk's if there is one (then it is the second virtio
    /// device; `with_machine_args`: no disk, so give the machine options).
    pub fn qemu_args(&self, vnics: &[&[Vnic]], with_machine_args: bool) -> Vec<String> {
        let mut netdev = String::from("user,id=n0,net=10.0.2.0/24");
        for list in vnics {
            for v in list.iter() {
                let [a, b, c, d] = v.ipv4;
                for f in &v.forward {
                    netdev.push_str(&format!(
                        ",hostfwd={}:127.0.0.1:{}-{a}.{b}.{c}.{d}:{}",
                        f.proto.name(),
                        f.host_port,
                        f.guest_port
                    ));
                }
            }
        }
        let mut a: Vec<String> = Vec::new();
        if with_machine_args {
            a.extend(machine_args());
        }
        a.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            "virtio-net-device,netdev=n0".into(),
        ]);
        a
    }

    /// Adds the uplink's device record (virtio-mmio slot `n`, delegated
    /// to the driver domain) and every guest's vNICs (`vnics[i]` for guest
    /// `i`) to the pack.
    pub fn pack(&self, b: &mut PackBuilder, n: u32, vnics: &[&[Vnic]]) -> Result<(), String> {
        let (base, irq) = mmio_slot(n).ok_or("no virtio-mmio slot for the network device")?;
        let nic = b.mmio_device(self.driver as u32, VIRTIO_ID_NET, base, irq);
        for (guest, list) in vnics.iter().enumerate() {
            for v in list.iter() {
                b.vnic(guest as u32, nic, v.mac, v.ipv4);
            }
        }
        Ok(())
    }
}

/// The machine options every scenario with a virtio device needs: 8
/// virtio-mmio slots on one IOAPIC, modern virtio.
pub fn machine_args() -> Vec<String> {
    vec![
        "-machine".into(),
        "acpi=off".into(),
        "-global".into(),
        "virtio-mmio.force-legacy=false".into(),
    ]
}

/// Whether `file` is a clean relative path under `target/` (no `..`, not
/// absolute): disk images live with the build output, never elsewhere.
pub fn valid_image_path(file: &str) -> bool {
    let p = Path::new(file);
    p.is_relative()
        && p.starts_with("target")
        && p.components().count() >= 2
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_microvm_without_acpi() {
        assert_eq!(mmio_slot(0), Some((0xfeb0_0e00, 12)));
        assert_eq!(mmio_slot(1), Some((0xfeb0_0c00, 11)));
        assert_eq!(mmio_slot(7), Some((0xfeb0_0000, 5)));
        assert_eq!(mmio_slot(8), None);
    }

    #[test]
    fn forwards_macs_and_addresses_parse() {
        assert_eq!(
            Forward::parse("tcp:8080:80"),
            Ok(Forward {
                proto: Proto::Tcp,
                host_port: 8080,
                guest_port: 80
            })
        );
        assert_eq!(
            Forward::parse("udp:5353:53").map(|f| f.proto),
            Ok(Proto::Udp)
        );
        for bad in [
            "tcp:8080",
            "tcp:0:80",
            "tcp:8080:70000",
            "sctp:1:2",
            "tcp:1:2:3",
            "",
        ] {
            let e = Forward::parse(bad).unwrap_err();
            assert!(e.contains("tcp:8080:80"), "{bad}: {e}");
        }
        assert_eq!(
            parse_mac("02:AA:bb:00:01:ff"),
            Some([2, 0xaa, 0xbb, 0, 1, 0xff])
        );
        for bad in [
            "02:aa:bb:00:01",
            "02:aa:bb:00:01:ff:00",
            "2:aa:bb:00:01:ff",
            "zz:aa:bb:00:01:ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        let m = derived_mac("web", 0);
        assert_eq!(m, derived_mac("web", 0), "stable");
        assert_ne!(m, derived_mac("web", 1));
        assert_ne!(m, derived_mac("db", 0));
        assert_eq!(m[0], 0x02, "locally administered unicast");
        assert_eq!(parse_ipv4("10.0.2.10"), Some([10, 0, 2, 10]));
        assert_eq!(ipv4_problem([10, 0, 2, 10]), None);
        for bad in [
            [10, 0, 2, 2],
            [10, 0, 2, 3],
            [10, 0, 2, 15],
            [10, 0, 2, 255],
            [10, 0, 3, 10],
        ] {
            assert!(ipv4_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn net_args_forward_on_loopback_only() {
        let n = Net { driver: 0 };
        let v = Vnic {
            mac: [2, 0, 0, 0, 0, 1],
            ipv4: [10, 0, 2, 10],
            forward: vec![Forward::parse("tcp:8080:80").unwrap()],
        };
        let list = [v];
        let args = n.qemu_args(&[&list], true).join(" ");
        assert_eq!(
            args,
            "-machine acpi=off -global virtio-mmio.force-legacy=false -netdev user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:8080-10.0.2.10:80 -device virtio-net-device,netdev=n0"
        );
        assert!(!n.qemu_args(&[], false).join(" ").contains("-machine"));
    }

    #[test]
    fn image_paths_stay_under_target() {
        assert!(valid_image_path("target/tahoma/disks/a.img"));
        for bad in [
            "/tmp/a.img",
            "a.img",
            "target",
            "target/../a.img",
            "./target/a.img",
            "src/a.img",
        ] {
            assert!(!valid_image_path(bad), "{bad}");
        }
    }

    #[test]
    fn image_is_created_sparse_and_kept() {
        let root = std::env::temp_dir().join(format!("tahoma-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let disk = Disk {
            file: "target/d/x.img".into(),
            size: 64 << 20,
            driver: 0,
        };
        let path = disk.ensure_image(&root).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 20);
        std::fs::write(&path, b"kept").unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        disk.ensure_image(&root).unwrap();
        assert_eq!(
            &std::fs::read(&path).unwrap()[..4],
            b"kept",
            "an existing image is kept"
        );
        let bigger = Disk {
            size: 128 << 20,
            ..disk.clone()
        };
        let e = bigger.ensure_image(&root).unwrap_err();
        assert!(e.contains("delete the image"), "{e}");
        let args = disk.qemu_args(&path).join(" ");
        assert!(
            args.contains("-machine acpi=off -global virtio-mmio.force-legacy=false -drive file=")
        );
        assert!(args.ends_with(
            ",format=raw,if=none,id=d0,cache=writeback -device virtio-blk-device,drive=d0"
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
