//! Building the bare-metal images: the hypervisor and every guest crate.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use xshell::{cmd, Shell};

/// The bare-metal target.
pub const TARGET: &str = "x86_64-unknown-none";
/// The hypervisor's package.
const HYPERVISOR_PACKAGE: &str = "tahoma-hypervisor";
/// The hypervisor's binary.
const HYPERVISOR_BIN: &str = "tahoma";

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Where the release images land.
pub fn image_dir(root: &Path) -> PathBuf {
    root.join("target").join(TARGET).join("release")
}

/// The built images.
#[derive(Clone, Debug)]
pub struct Images {
    /// Directory holding every image (guest images by crate name).
    pub dir: PathBuf,
    /// The hypervisor ELF.
    pub hypervisor: PathBuf,
    /// Guest crates that were built.
    pub guests: Vec<String>,
}

impl Images {
    /// Bytes of RAM the hypervisor image occupies once loaded: the sum of
    /// its `PT_LOAD` segments' memory sizes (code, data, and the heap,
    /// which is a static array).
    pub fn hypervisor_memory(&self) -> Result<u64, String> {
        let elf = std::fs::read(&self.hypervisor)
            .map_err(|e| format!("cannot read {}: {e}", self.hypervisor.display()))?;
        load_bytes(&elf).ok_or_else(|| {
            format!(
                "{} is not an ELF64 image; rebuild with `cargo xtask build`",
                self.hypervisor.display()
            )
        })
    }
}

/// Sum of the `PT_LOAD` memory sizes of an ELF64 little-endian image.
fn load_bytes(elf: &[u8]) -> Option<u64> {
    let u = |at: usize, n: usize| -> Option<u64> {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(elf.get(at..at.checked_add(n)?)?);
        Some(u64::from_le_bytes(b))
    };
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let (phoff, entsize, num) = (u(32, 8)?, u(54, 2)?, u(56, 2)?);
    let mut total = 0u64;
    for i in 0..num {
        let ph = usize::try_from(phoff.checked_add(i.checked_mul(entsize)?)?).ok()?;
        if u(ph, 4)? == 1 {
            total = total.checked_add(u(ph + 40, 8)?.next_multiple_of(4096))?;
        }
    }
    Some(total)
}

#[cfg(test)]
mod load_tests {
    use super::load_bytes;

    #[test]
    fn load_bytes_sums_pt_load_segments() {
        let mut e = vec![0u8; 64 + 2 * 56];
        e[..5].copy_from_slice(b"\x7fELF\x02");
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&2u16.to_le_bytes());
        for (i, (ty, memsz)) in [(1u32, 5000u64), (4, 99)].iter().enumerate() {
            let ph = 64 + i * 56;
            e[ph..ph + 4].copy_from_slice(&ty.to_le_bytes());
            e[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        }
        assert_eq!(load_bytes(&e), Some(8192));
        assert_eq!(load_bytes(b"not an elf"), None);
        e.truncate(70);
        assert_eq!(load_bytes(&e), None);
    }
}

#[derive(Deserialize)]
struct GuestManifest {
    package: Option<GuestPackage>,
    /// `[lib]`: a library shared by guests (e.g. `guests/harness`).
    lib: Option<toml::Value>,
    /// `[[bin]]` targets.
    bin: Option<Vec<toml::Value>>,
}

#[derive(Deserialize)]
struct GuestPackage {
    name: String,
}

/// The guest crates: directories under `guests/` that hold a `Cargo.toml`.
/// Each one's package name must equal its directory name (the image name
/// scenarios refer to). A library-only crate (a `[lib]` section and no
/// `[[bin]]`, such as the conformance harness `guests/harness`) is shared
/// by guests and is not an image.
pub fn guest_crates(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("guests");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let manifest = entry.path().join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
        let parsed: GuestManifest = toml::from_str(&text)
            .map_err(|e| format!("{}: {}", manifest.display(), e.message()))?;
        if parsed.lib.is_some() && parsed.bin.is_none() {
            continue;
        }
        let name = parsed.package.map(|p| p.name).unwrap_or_default();
        if name != dir_name {
            return Err(format!(
                "{}: package name `{name}` must equal the directory name `{dir_name}` (scenarios name images by crate)",
                manifest.display()
            ));
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Installs the bare-metal target if rustup lacks it.
pub fn ensure_target(sh: &Shell) -> Result<(), String> {
    let installed = match cmd!(sh, "rustup target list --installed").quiet().read() {
        Ok(list) => list,
        Err(_) => {
            eprintln!(
                "xtask: rustup not found; assuming the toolchain already has the {TARGET} target"
            );
            return Ok(());
        }
    };
    if installed.lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    eprintln!("xtask: the {TARGET} target is missing; installing it");
    cmd!(sh, "rustup target add {TARGET}")
        .run()
        .map_err(|e| format!("{e}\nrun `rustup target add {TARGET}` yourself, then retry"))
}

/// Builds the hypervisor and every guest crate in one `cargo build`.
pub fn build(sh: &Shell, root: &Path) -> Result<Images, String> {
    ensure_target(sh)?;
    let guests = guest_crates(root)?;
    let mut packages = vec!["-p".to_string(), HYPERVISOR_PACKAGE.to_string()];
    for g in &guests {
        packages.push("-p".into());
        packages.push(g.clone());
    }
    eprintln!(
        "xtask: building the hypervisor and {} guest(s){}",
        guests.len(),
        if guests.is_empty() {
            String::new()
        } else {
            format!(": {}", guests.join(", "))
        }
    );
    let _dir = sh.push_dir(root);
    cmd!(sh, "cargo build --release --target {TARGET} {packages...}")
        .run()
        .map_err(|e| format!("image build failed ({e}); fix the compile errors above and retry"))?;
    let dir = image_dir(root);
    let hypervisor = dir.join(HYPERVISOR_BIN);
    for image in std::iter::once(HYPERVISOR_BIN).chain(guests.iter().map(String::as_str)) {
        let path = dir.join(image);
        if !path.is_file() {
            return Err(format!(
                "cargo build succeeded but {} is missing: does package `{image}` have a bin target named `{image}`?",
                path.display()
            ));
        }
    }
    Ok(Images {
        dir,
        hypervisor,
        guests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_discovery_checks_names() {
        let root = std::env::temp_dir().join(format!("tahoma-xtask-guests-{}", std::process::id()));
        let guests = root.join("guests");
        std::fs::create_dir_all(guests.join("scenarios")).unwrap();
        std::fs::create_dir_all(guests.join("hello")).unwrap();
        std::fs::write(
            guests.join("hello/Cargo.toml"),
            "[package]\nname = \"hello\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        assert_eq!(guest_crates(&root).unwrap(), ["hello"]);
        std::fs::create_dir_all(guests.join("shared")).unwrap();
        std::fs::write(
            guests.join("shared/Cargo.toml"),
            "[package]\nname = \"shared\"\n[lib]\npath = \"src/lib.rs\"\n",
        )
        .unwrap();
        assert_eq!(
            guest_crates(&root).unwrap(),
            ["hello"],
            "a library is no image"
        );
        std::fs::create_dir_all(guests.join("other")).unwrap();
        std::fs::write(
            guests.join("other/Cargo.toml"),
            "[package]\nname = \"not-other\"\n",
        )
        .unwrap();
        let e = guest_crates(&root).unwrap_err();
        assert!(e.contains("must equal the directory name `other`"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
