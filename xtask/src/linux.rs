//! The Linux guest of the key-value bench's baseline (docs/kvstore.md,
//! "Bench"; docs/benchmarks-io.md), built and cached under
//! `target/tahoma/linux/` from packages, nothing committed:
//!
//! - the kernel: Debian's `linux-image-amd64` (the image package it
//!   depends on), fetched with `apt-get download` and unpacked with
//!   `dpkg-deb`; `vmlinuz` and the modules the guest needs (Debian builds
//!   virtio, virtio-mmio, virtio-net and virtio-blk as modules) with the
//!   modules they depend on, read from each module's `depends=`;
//! - `/init`: `baseline/kvserve-linux`, the same `kvlib` store and HTTP
//!   layer as `guests/kvstore`, built for the host target with
//!   `-C target-feature=+crt-static`;
//! - the initramfs: a `newc` cpio written here (`/dev/console`, `/proc`,
//!   `/init`, `/lib/modules/*.ko`, `/modules.order`).

use std::path::{Path, PathBuf};

use xshell::{cmd, Shell};

/// The modules `/init` loads (their dependencies come first).
pub const MODULES: [&str; 3] = ["virtio_mmio", "virtio_net", "virtio_blk"];
/// The host target the static `/init` is built for.
const HOST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The meta-package naming Debian's current kernel image.
const META: &str = "linux-image-amd64";

/// A bootable Linux guest.
#[derive(Clone, Debug)]
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel package it came from (`linux-image-6.1.0-57-amd64`).
    pub package: String,
}

/// Where everything is cached.
pub fn cache_dir(root: &Path) -> PathBuf {
    root.join("target/tahoma/linux")
}

/// Fetches (once) the kernel, builds `/init` and writes the initramfs.
pub fn prepare(sh: &Shell, root: &Path) -> Result<Guest, String> {
    let dir = cache_dir(root);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (package, unpacked) = kernel_package(sh, &dir)?;
    let kernel = find_file(&unpacked.join("boot"), |n| n.starts_with("vmlinuz-"))?
        .ok_or_else(|| format!("{package} holds no boot/vmlinuz-*"))?;
    let modules = module_files(&unpacked)?;
    let order = load_order(&modules, &MODULES)?;
    let init = build_init(sh, root)?;
    let mut cpio = Cpio::default();
    cpio.dir("dev");
    cpio.char_device("dev/console", 5, 1);
    cpio.dir("proc");
    cpio.dir("lib");
    cpio.dir("lib/modules");
    let mut names = String::new();
    for m in &order {
        let path = &modules[m.as_str()];
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        cpio.file(&format!("lib/modules/{m}.ko"), 0o644, &bytes);
        names.push_str(&format!("{m}.ko\n"));
    }
    cpio.file("modules.order", 0o644, names.as_bytes());
    let bytes = std::fs::read(&init).map_err(|e| format!("cannot read {}: {e}", init.display()))?;
    cpio.file("init", 0o755, &bytes);
    let initrd = dir.join("initramfs.cpio");
    std::fs::write(&initrd, cpio.finish())
        .map_err(|e| format!("cannot write {}: {e}", initrd.display()))?;
    Ok(Guest {
        kernel,
        initrd,
        package,
    })
}

/// The kernel package's name and where it is unpacked, downloading and
/// unpacking it on first use.
fn kernel_package(sh: &Shell, dir: &Path) -> Result<(String, PathBuf), String> {
    let offline = |what: &str, e: &dyn std::fmt::Display| {
        format!(
            "{what} failed ({e}). The Linux baseline needs Debian's kernel package: on a \
             Debian machine with apt sources and network, `apt-get download {META}`'s image \
             package works; offline, run once where it is reachable (the result is cached in \
             {}), or install apt and dpkg-deb",
            dir.display()
        )
    };
    // A cached unpack, if any (the newest name wins).
    let cached = |dir: &Path| -> Option<(String, PathBuf)> {
        let mut found: Vec<_> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("linux-image-") && !n.ends_with(".deb"))
            .filter(|n| dir.join(n).join(".complete").is_file())
            .collect();
        found.sort();
        let n = found.pop()?;
        Some((n.clone(), dir.join(n)))
    };
    let depends = match cmd!(sh, "apt-cache depends {META}").quiet().read() {
        Ok(d) => d,
        Err(e) => {
            if let Some(c) = cached(dir) {
                return Ok(c);
            }
            return Err(offline("`apt-cache depends linux-image-amd64`", &e));
        }
    };
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-amd64"))
        .ok_or_else(|| {
            format!("`apt-cache depends {META}` names no linux-image-*-amd64:\n{depends}")
        })?
        .to_string();
    let unpacked = dir.join(&package);
    if unpacked.join(".complete").is_file() {
        return Ok((package, unpacked));
    }
    eprintln!(
        "xtask: linux: downloading {package} (Debian's kernel, about 70 MB) into {} ...",
        dir.display()
    );
    {
        let _d = sh.push_dir(dir);
        // apt-get prints its own progress.
        cmd!(sh, "apt-get download {package}")
            .run()
            .map_err(|e| offline(&format!("`apt-get download {package}`"), &e))?;
    }
    let deb = find_file(dir, |n| {
        n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
    })?
    .ok_or_else(|| {
        format!(
            "apt-get download left no {package}_*.deb in {}",
            dir.display()
        )
    })?;
    eprintln!("xtask: linux: unpacking {}", deb.display());
    let _ = std::fs::remove_dir_all(&unpacked);
    cmd!(sh, "dpkg-deb -x {deb} {unpacked}")
        .run()
        .map_err(|e| offline("unpacking the kernel package with dpkg-deb", &e))?;
    std::fs::write(unpacked.join(".complete"), &package)
        .map_err(|e| format!("cannot mark {} complete: {e}", unpacked.display()))?;
    let _ = std::fs::remove_file(&deb);
    Ok((package, unpacked))
}

fn find_file(dir: &Path, pick: impl Fn(&str) -> bool) -> Result<Option<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| pick(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v.pop())
}

/// Every `*.ko` of the unpacked package, by module name (`-` read as `_`).
fn module_files(unpacked: &Path) -> Result<std::collections::BTreeMap<String, PathBuf>, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![unpacked.join("lib/modules")];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| format!("cannot read {}: {e}", d.display()))?;
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(m) = name.strip_suffix(".ko") {
                    out.insert(m.replace('-', "_"), p);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(format!(
            "no kernel modules under {} (a compressed-module kernel? expected *.ko)",
            unpacked.join("lib/modules").display()
        ));
    }
    Ok(out)
}

/// The `depends=` list of a module's `.modinfo` (names, `-` read as `_`).
pub fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(|s| s.trim().replace('-', "_"))
        .filter(|s| !s.is_empty())
        .collect()
}

/// `wanted` and everything they depend on, each after its dependencies.
fn load_order(
    modules: &std::collections::BTreeMap<String, PathBuf>,
    wanted: &[&str],
) -> Result<Vec<String>, String> {
    let depends = |m: &str| -> Result<Vec<String>, String> {
        let path = modules
            .get(m)
            .ok_or_else(|| format!("the kernel package has no module `{m}`"))?;
        let ko = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Ok(module_depends(&ko))
    };
    order_by(wanted, depends)
}

/// Topological order of `wanted` and their dependencies (`depends`).
pub fn order_by(
    wanted: &[&str],
    mut depends: impl FnMut(&str) -> Result<Vec<String>, String>,
) -> Result<Vec<String>, String> {
    fn visit(
        m: &str,
        depends: &mut dyn FnMut(&str) -> Result<Vec<String>, String>,
        out: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        if out.iter().any(|o| o == m) {
            return Ok(());
        }
        if path.iter().any(|p| p == m) {
            return Err(format!(
                "modules depend on each other in a cycle: {path:?} -> {m}"
            ));
        }
        path.push(m.to_string());
        for d in depends(m)? {
            visit(&d, depends, out, path)?;
        }
        path.pop();
        out.push(m.to_string());
        Ok(())
    }
    let mut out = Vec::new();
    for m in wanted {
        visit(m, &mut depends, &mut out, &mut Vec::new())?;
    }
    Ok(out)
}

/// Builds `baseline/kvserve-linux` static for the host target.
fn build_init(sh: &Shell, root: &Path) -> Result<PathBuf, String> {
    eprintln!("xtask: linux: building the static /init (baseline/kvserve-linux)");
    let _d = sh.push_dir(root);
    cmd!(
        sh,
        "cargo build --release -p kvserve-linux --target {HOST_TARGET}"
    )
    .env(
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "-C target-feature=+crt-static",
    )
    .run()
    .map_err(|e| {
        format!(
            "building the Linux baseline's /init failed ({e}); it needs the {HOST_TARGET} target \
             and glibc's static libraries (Debian: libc6-dev)"
        )
    })?;
    let bin = root.join(format!("target/{HOST_TARGET}/release/kvserve-linux"));
    let elf = std::fs::read(&bin).map_err(|e| format!("cannot read {}: {e}", bin.display()))?;
    if is_dynamic(&elf) {
        return Err(format!(
            "{} is dynamically linked; the initramfs has no loader (crt-static was not applied)",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Whether an ELF64 has a `PT_INTERP` (a dynamic loader).
fn is_dynamic(elf: &[u8]) -> bool {
    let u = |at: usize, n: usize| -> Option<u64> {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(elf.get(at..at.checked_add(n)?)?);
        Some(u64::from_le_bytes(b))
    };
    let (Some(phoff), Some(entsize), Some(num)) = (u(32, 8), u(54, 2), u(56, 2)) else {
        return true;
    };
    (0..num).any(|i| {
        usize::try_from(phoff + i * entsize)
            .ok()
            .and_then(|ph| u(ph, 4))
            == Some(3)
    })
}

/// A `newc` (SVR4, no CRC) cpio archive, as the kernel's initramfs
/// unpacker reads it: a 110-byte ASCII header per entry, the NUL-terminated
/// name, the data, each padded to 4 bytes, and a `TRAILER!!!` entry.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the archive is the same bytes every build
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), b"");
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), b"");
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), b"");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a newc archive back: (name, mode, rdev major, minor, data).
    fn parse(mut a: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let total = a.len();
        loop {
            assert_eq!(&a[..6], b"070701");
            let f = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&a[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (f(1), f(6) as usize, f(9), f(10), f(11) as usize);
            let name = std::str::from_utf8(&a[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            assert_eq!(a[110 + namesize - 1], 0, "name NUL-terminated");
            let data_at = (110 + namesize).next_multiple_of(4);
            assert_eq!((total - a.len() + data_at) % 4, 0);
            let data = a[data_at..data_at + size].to_vec();
            a = &a[(data_at + size).next_multiple_of(4)..];
            if name == "TRAILER!!!" {
                assert!(a.is_empty(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, rmaj, rmin, data));
        }
    }

    #[test]
    fn cpio_newc_round_trips() {
        let mut c = Cpio::default();
        c.dir("dev");
        c.char_device("dev/console", 5, 1);
        c.file("init", 0o755, b"\x7fELF....");
        c.file("a", 0o644, b"");
        c.file("odd-length-name", 0o644, b"xyz");
        let bytes = c.finish();
        assert_eq!(bytes.len() % 4, 0);
        let e = parse(&bytes);
        let names: Vec<_> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "a", "odd-length-name"]
        );
        assert_eq!(e[0].1, 0o040755);
        assert_eq!((e[1].1, e[1].2, e[1].3), (0o020600, 5, 1));
        assert_eq!((e[2].1, e[2].4.as_slice()), (0o100755, &b"\x7fELF...."[..]));
        assert_eq!(e[4].4, b"xyz");
        // The header of the first entry, field by field.
        assert_eq!(&bytes[..14], b"07070100000001");
        assert_eq!(&bytes[14..22], b"000041ed");
    }

    #[test]
    fn module_order_puts_dependencies_first() {
        let deps = |m: &str| -> Result<Vec<String>, String> {
            Ok(match m {
                "virtio_net" => vec!["net_failover".into(), "virtio".into(), "virtio_ring".into()],
                "net_failover" => vec!["failover".into()],
                "virtio_mmio" => vec!["virtio".into(), "virtio_ring".into()],
                "virtio_ring" => vec!["virtio".into()],
                _ => vec![],
            })
        };
        let o = order_by(&["virtio_mmio", "virtio_net"], deps).unwrap();
        assert_eq!(
            o,
            [
                "virtio",
                "virtio_ring",
                "virtio_mmio",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        let cyc = |m: &str| -> Result<Vec<String>, String> {
            Ok(vec![if m == "a" { "b".into() } else { "a".into() }])
        };
        assert!(order_by(&["a"], cyc).unwrap_err().contains("cycle"));
    }

    #[test]
    fn modinfo_depends_is_read() {
        let ko = b"\0\0license=GPL\0depends=virtio,virtio_ring,net-failover\0retpoline=Y\0";
        assert_eq!(
            module_depends(ko),
            ["virtio", "virtio_ring", "net_failover"]
        );
        assert!(module_depends(b"\0depends=\0").is_empty());
        assert!(module_depends(b"nothing here").is_empty());
    }
}
