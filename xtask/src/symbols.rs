//! Addresses to `function (file:line)`, from the images' DWARF.
//!
//! The hypervisor and every guest are built with full debug info (the
//! release profile keeps it), so a fault's `rip` and the hypervisor's
//! backtrace resolve without a debugger. `addr2line` (gimli's symbolizer)
//! does the DWARF work; this module only picks the image and shortens paths.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use addr2line::Loader;

/// Lazily opened images, by path.
pub struct Symbols {
    root: PathBuf,
    loaders: RefCell<HashMap<PathBuf, Option<Loader>>>,
}

impl Symbols {
    /// Paths in locations are shown relative to `root` (the workspace).
    pub fn new(root: &Path) -> Symbols {
        Symbols {
            root: root.to_path_buf(),
            loaders: RefCell::new(HashMap::new()),
        }
    }

    /// `function (file:line)` for `addr` in `image`, or the bare symbol
    /// name, or `None` when the image has nothing for it (or cannot be
    /// read).
    pub fn locate(&self, image: &Path, addr: u64) -> Option<String> {
        let mut loaders = self.loaders.borrow_mut();
        let loader = loaders
            .entry(image.to_path_buf())
            .or_insert_with(|| Loader::new(image).ok())
            .as_ref()?;
        let mut function = None;
        let mut place = None;
        if let Ok(mut frames) = loader.find_frames(addr) {
            // Innermost frame first: the function the address is in, even
            // when it was inlined.
            while let Ok(Some(frame)) = frames.next() {
                if function.is_none() {
                    function = frame
                        .function
                        .as_ref()
                        .and_then(|f| f.demangle().ok())
                        .map(|n| strip_hash(&n).to_string());
                }
                if place.is_none() {
                    place = frame.location.as_ref().and_then(|l| {
                        Some(format!("{}:{}", self.short(l.file?), l.line.unwrap_or(0)))
                    });
                }
                if function.is_some() && place.is_some() {
                    break;
                }
            }
        }
        let function = function.or_else(|| {
            loader
                .find_symbol(addr)
                .map(|s| strip_hash(&addr2line::demangle_auto(s.into(), None)).to_string())
        });
        match (function, place) {
            (Some(f), Some(p)) => Some(format!("{f} ({p})")),
            (Some(f), None) => Some(f),
            (None, Some(p)) => Some(p),
            (None, None) => None,
        }
    }

    fn short(&self, file: &str) -> String {
        let path = Path::new(file);
        if let Ok(rel) = path.strip_prefix(&self.root) {
            return rel.display().to_string();
        }
        // Dependencies and the standard library: the last three parts say
        // enough (`spin-0.9.8/src/mutex.rs`).
        let parts: Vec<_> = path.components().collect();
        let keep = parts.len().saturating_sub(3);
        parts[keep..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// `tahoma::hv::Hv::leave::h0123456789abcdef` -> `tahoma::hv::Hv::leave`.
fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stripped() {
        assert_eq!(
            strip_hash("tahoma::hv::Hv::leave::h0123456789abcdef"),
            "tahoma::hv::Hv::leave"
        );
        assert_eq!(strip_hash("main"), "main");
        assert_eq!(strip_hash("a::hello"), "a::hello");
    }

    #[test]
    fn own_binary_resolves_a_function() {
        // This test binary carries debug info (the dev profile): its own
        // address of a known function must resolve to that function.
        let exe = std::env::current_exe().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let syms = Symbols::new(root);
        let f = hashes_are_stripped as fn() as usize as u64;
        // A PIE test binary: addresses in the file are relative to its load
        // base; find the base from a second function and compare.
        let loc = syms.locate(&exe, f).or_else(|| {
            let base = relative_base(&exe)?;
            syms.locate(&exe, f - base)
        });
        let loc = loc.expect("no location for a function of this binary");
        assert!(loc.contains("hashes_are_stripped"), "{loc}");
        assert!(loc.contains("xtask/src/symbols.rs"), "{loc}");
    }

    /// The load base of this (PIE) executable, from /proc/self/maps.
    fn relative_base(exe: &Path) -> Option<u64> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let exe = exe.canonicalize().ok()?;
        maps.lines()
            .find(|l| l.ends_with(&*exe.to_string_lossy()))
            .and_then(|l| l.split('-').next())
            .and_then(|a| u64::from_str_radix(a, 16).ok())
    }
}
