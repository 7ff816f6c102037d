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
    ExtentFlags, PackBuilder, VIRTIO_ID_BLOCK, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SLOT_SIZE,
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
        vec![
            "-machine".into(),
            "acpi=off".into(),
            "-global".into(),
            "virtio-mmio.force-legacy=false".into(),
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=d0,cache=writeback",
                image.display().to_string().replace(',', ",,")
            ),
            "-device".into(),
            "virtio-blk-device,drive=d0".into(),
        ]
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
