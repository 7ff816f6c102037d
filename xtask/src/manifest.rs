//! Scenario manifests: `guests/scenarios/NAME.toml`, validated on the host and
//! packed into a boot pack.
//!
//! The hypervisor never parses TOML. Everything that can be wrong with a
//! manifest is caught here, and the error names the file and line, so a typo
//! costs seconds rather than a boot. The format is documented in
//! `docs/xtask.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hypercall_abi::layout::{CHANNEL_NAME_LEN, MAX_NAMED_CHANNELS};
use serde::Deserialize;
use tahoma_core::bootpack::{DomainFlags, DomainSpec, PackBuilder, NAME_LEN};
use tahoma_core::loader::{self, ImageError};

use crate::devices::{self, Disk, Net, Vblk, Vnic};
use toml::Spanned;

/// Bytes per page.
const PAGE: u64 = 4096;
/// Smallest guest reservation.
const MIN_GUEST_MEMORY: u64 = hypercall_abi::layout::WINDOW_MIN_PAGES * PAGE;
/// Smallest QEMU RAM size we accept.
const MIN_MACHINE_MEMORY: u64 = 16 << 20;
/// Largest scheduling weight.
const MAX_WEIGHT: i64 = 256;
/// Largest `dma` (a driver domain's DMA region).
const MAX_DMA: u64 = 64 << 20;
/// A driver domain's DMA region when the manifest has no `dma`: 2 MiB.
const DEFAULT_DMA_PAGES: u64 = tahoma_core::io::DEFAULT_DMA_PAGES;
/// Pages a driver's window needs beyond its DMA region and device tables
/// (image, tables, start info, stack; the boot refuses less precisely).
const DRIVER_MIN_PAGES: u64 = hypercall_abi::layout::WINDOW_MIN_PAGES;
/// Default scenario timeout.
pub const DEFAULT_TIMEOUT: u64 = 60;
/// Default QEMU RAM.
const DEFAULT_MEMORY: &str = "512M";
/// Most guests a scenario may have, `count` expansion included: domain
/// ids are 1.. and stop below `DOMID_SELF` (0x7FF0), which they must never
/// alias.
const MAX_DOMAINS: usize = tahoma_core::event::MAX_DOMAINS;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    description: Option<String>,
    timeout: Option<Spanned<i64>>,
    memory: Option<Spanned<String>>,
    cmdline: Option<String>,
    icount: Option<bool>,
    overcommit: Option<bool>,
    #[serde(default)]
    guest: Vec<RawGuest>,
    #[serde(default)]
    channel: Vec<RawChannel>,
    disk: Option<RawDisk>,
    net: Option<RawNet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNet {
    driver: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVnic {
    ip: Spanned<String>,
    mac: Option<Spanned<String>>,
    #[serde(default)]
    forward: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    file: Option<Spanned<String>>,
    size: Spanned<String>,
    driver: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVblk {
    offset: Spanned<String>,
    size: Spanned<String>,
    readonly: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    name: Spanned<String>,
    ends: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: Spanned<String>,
    image: Spanned<String>,
    memory: Spanned<String>,
    max_memory: Option<Spanned<String>>,
    cmdline: Option<String>,
    privileged: Option<bool>,
    critical: Option<bool>,
    count: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
    dma: Option<Spanned<String>>,
    #[serde(default)]
    vblk: Vec<RawVblk>,
    #[serde(default)]
    vnic: Vec<RawVnic>,
}

/// A validated scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// The file's stem: `boot` for `boot.toml`.
    pub name: String,
    /// Where it came from.
    pub path: PathBuf,
    /// Free text.
    pub description: Option<String>,
    /// How long a run may take.
    pub timeout: Duration,
    /// QEMU RAM in MiB.
    pub memory_mib: u64,
    /// The hypervisor command line from the manifest.
    pub cmdline: String,
    /// Run under TCG with `-icount shift=0,sleep=off`: guest clocks count
    /// instructions, so timing figures do not depend on host load.
    pub icount: bool,
    /// The guests may need more memory than the machine has (the scenario
    /// tests that the hypervisor refuses the ones that do not fit): the
    /// check before boot ([`Scenario::check_fit`]) is skipped.
    pub overcommit: bool,
    /// Domains to create, in boot order, after `count` expansion.
    pub guests: Vec<Guest>,
    /// Channels the hypervisor connects at boot (`[[channel]]`, ABI `EVT-7`).
    pub channels: Vec<Channel>,
    /// The disk image and its driver domain (`[disk]`), if any.
    pub disk: Option<Disk>,
    /// The network's driver domain (`[net]`), if any.
    pub net: Option<Net>,
}

/// A named channel between two guests, wired by the hypervisor before any
/// guest runs; each end finds it by name in its start info
/// (`guest_sdk::event::channel`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// The name both ends look it up by (at most 32 bytes).
    pub name: String,
    /// The two ends, as indices into [`Scenario::guests`].
    pub ends: [usize; 2],
}

/// One domain, after `count` expansion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    /// Unique name, at most 32 bytes.
    pub name: String,
    /// Guest crate / binary name, or the path written in the manifest.
    pub image: String,
    /// When `image` names a file (it has a `/` or ends in `.elf`): that
    /// file, relative paths taken from the manifest's folder. An ELF built
    /// elsewhere, as `solo5-hvt app.hvt` or `xl create` take one.
    pub image_file: Option<PathBuf>,
    /// Line of `image = ...`, for errors found later (a missing image).
    pub image_line: usize,
    /// Initial reservation in pages.
    pub mem_pages: u32,
    /// Upper bound in pages.
    pub max_pages: u32,
    /// The guest's command line.
    pub cmdline: String,
    /// May be delegated hardware.
    pub privileged: bool,
    /// The scenario ends when this guest ends.
    pub critical: bool,
    /// Scheduling weight, 0 = default.
    pub weight: u32,
    /// DMA region pages if it drives a device (`dma`), 0 = the default
    /// ([`DEFAULT_DMA_PAGES`]).
    pub dma_pages: u32,
    /// Virtual disks (`[[guest.vblk]]`): extents of the scenario's disk.
    pub vblk: Vec<Vblk>,
    /// Virtual NICs (`[[guest.vnic]]`) on the scenario's switch.
    pub vnic: Vec<Vnic>,
}

/// A manifest error, pointing at the file and line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    /// The manifest.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message)?,
            None => write!(f, "{}: {}", self.file.display(), self.message)?,
        }
        write!(f, " (the manifest format is in docs/xtask.md)")
    }
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.to_path_buf(),
            line: span.map(|s| line_of(self.text, s.start)),
            message: message.into(),
        }
    }

    fn at<T>(&self, v: &Spanned<T>, message: impl Into<String>) -> ManifestError {
        self.err(Some(v.span()), message)
    }
}

/// Parses a size: a whole number of bytes with an optional `K`, `M` or `G`
/// suffix (powers of 1024).
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    let (digits, shift) = match raw.char_indices().last() {
        Some((i, 'K')) => (&raw[..i], 10),
        Some((i, 'M')) => (&raw[..i], 20),
        Some((i, 'G')) => (&raw[..i], 30),
        _ => (raw, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{raw}` is not a size: write a whole number with an optional K, M or G suffix, like \"2M\""
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("`{raw}` is too large"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Scenario {
    /// Parses and validates the manifest `text` read from `file`. Names the
    /// scenario after the file's stem.
    pub fn parse(file: &Path, text: &str) -> Result<Scenario, ManifestError> {
        let cx = Ctx { file, text };
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| cx.err(e.span(), e.message().trim_end()))?;
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();

        let timeout = match &raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) if *t.get_ref() >= 1 => t.get_ref().unsigned_abs(),
            Some(t) => {
                return Err(cx.at(
                    t,
                    format!("timeout = {} must be at least 1 (seconds)", t.get_ref()),
                ))
            }
        };
        let memory_bytes = match &raw.memory {
            None => parse_size(DEFAULT_MEMORY).unwrap_or(512 << 20),
            Some(m) => parse_size(m.get_ref()).map_err(|e| cx.at(m, format!("memory: {e}")))?,
        };
        if let Some(m) = &raw.memory {
            if memory_bytes % (1 << 20) != 0 || memory_bytes < MIN_MACHINE_MEMORY {
                return Err(cx.at(
                    m,
                    "memory (QEMU RAM) must be a whole number of MiB and at least 16M",
                ));
            }
        }

        let mut guests = Vec::new();
        for g in &raw.guest {
            expand_guest(&cx, g, &mut guests)?;
        }
        if guests.len() > MAX_DOMAINS {
            return Err(cx.err(
                None,
                format!(
                    "{} guests in all; at most {MAX_DOMAINS} (domain ids stop below DOMID_SELF): lower the counts",
                    guests.len()
                ),
            ));
        }
        let mut seen = BTreeSet::new();
        for (g, raw_name) in &guests {
            if !seen.insert(g.name.clone()) {
                return Err(cx.at(
                    raw_name,
                    format!("guest name `{}` is used twice; names must be unique (count = N adds -0..-N-1)", g.name),
                ));
            }
        }

        let guests: Vec<Guest> = guests.into_iter().map(|(g, _)| g).collect();
        let channels = channels(&cx, &raw.channel, &guests)?;
        let disk = disk(&cx, &name, raw.disk.as_ref(), &raw.guest, &guests)?;
        let net = net(&cx, raw.net.as_ref(), &raw.guest, &guests)?;

        Ok(Scenario {
            name,
            path: file.to_path_buf(),
            description: raw.description,
            timeout: Duration::from_secs(timeout),
            memory_mib: memory_bytes >> 20,
            cmdline: raw.cmdline.unwrap_or_default(),
            icount: raw.icount.unwrap_or(false),
            overcommit: raw.overcommit.unwrap_or(false),
            guests,
            channels,
            disk,
            net,
        })
    }

    /// Reads and parses `guests/scenarios/<name>.toml` under `root` (or
    /// `name` itself, if it is a path to a `.toml` file).
    pub fn load(root: &Path, name: &str) -> Result<Scenario, String> {
        let dir = root.join("guests/scenarios");
        let path = if name.ends_with(".toml") {
            PathBuf::from(name)
        } else {
            dir.join(format!("{name}.toml"))
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            let known = list(root).unwrap_or_default().join(", ");
            format!(
                "cannot read scenario `{name}` ({}: {e}); known scenarios: {}",
                path.display(),
                if known.is_empty() { "none" } else { &known }
            )
        })?;
        let shown = path.strip_prefix(root).unwrap_or(&path);
        Scenario::parse(shown, &text).map_err(|e| e.to_string())
    }

    /// Checks that every guest's image is one of the guest crates `known`
    /// (so a typo fails before a build, naming the line).
    pub fn check_images(&self, known: &[String]) -> Result<(), String> {
        for g in &self.guests {
            if let Some(file) = &g.image_file {
                if !file.is_file() {
                    return Err(format!(
                        "{}:{}: image `{}`: there is no file {}",
                        self.path.display(),
                        g.image_line,
                        g.image,
                        file.display()
                    ));
                }
                continue;
            }
            if !known.contains(&g.image) {
                return Err(format!(
                    "{}:{}: image `{}` is not a guest crate (there is no guests/{}/Cargo.toml); guest crates: {}",
                    self.path.display(),
                    g.image_line,
                    g.image,
                    g.image,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            }
        }
        Ok(())
    }

    /// Checks before boot that the guests fit in the machine beside the
    /// hypervisor: each guest takes its window plus its shared-info page;
    /// the hypervisor takes its image (`hypervisor_bytes`, heap included),
    /// the first MiB (firmware) and the boot pack, which QEMU loads into RAM.
    /// Refusing here beats half the guests failing at boot.
    pub fn check_fit(&self, hypervisor_bytes: u64, pack_bytes: u64) -> Result<(), String> {
        let guests: u64 = self
            .guests
            .iter()
            .map(|g| (u64::from(g.mem_pages) + 1) * PAGE)
            .sum();
        let machine = self.memory_mib << 20;
        // The hypervisor's main heap, which it sizes from the machine's
        // memory (taken from RAM at boot).
        let heap = tahoma_core::memmap::main_heap_bytes(machine / PAGE);
        let hv = hypervisor_bytes + heap + (1 << 20) + pack_bytes;
        if guests + hv > machine && !self.overcommit {
            let mib = |b: u64| b.div_ceil(1 << 20);
            return Err(format!(
                "{}: the {} guest(s) need {} MiB and the hypervisor about {} MiB (its image and heaps, \
                 the first MiB, the {} KiB boot pack), {} MiB in all, but the machine has {} MiB: \
                 raise `memory` at the top of the manifest or give the guests less",
                self.path.display(),
                self.guests.len(),
                mib(guests),
                mib(hv),
                pack_bytes.div_ceil(1024),
                mib(guests + hv),
                self.memory_mib
            ));
        }
        Ok(())
    }

    /// Checks every guest's image with the hypervisor's own loader checks
    /// (`tahoma_core::loader`: ELF64 x86-64 ET_EXEC, segments inside the
    /// window, entry in code, room for tables and stack), so that a bad
    /// image is refused here with its manifest line, not at boot.
    pub fn check_loadable(&self, images: &Path) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for g in &self.guests {
            if !seen.insert((g.image.clone(), g.mem_pages)) {
                continue;
            }
            let path = g.image_path(images);
            let elf = std::fs::read(&path).map_err(|e| {
                format!(
                    "{}:{}: cannot read image `{}` at {} ({e})",
                    self.path.display(),
                    g.image_line,
                    g.image,
                    path.display()
                )
            })?;
            if let Err(e) = loader::check(&elf, u64::from(g.mem_pages)) {
                return Err(format!(
                    "{}:{}: guest `{}`: image {} cannot be loaded into its {} KiB window: {e}; {}",
                    self.path.display(),
                    g.image_line,
                    g.name,
                    path.display(),
                    u64::from(g.mem_pages) * 4,
                    image_advice(&e)
                ));
            }
        }
        Ok(())
    }

    /// Packs the scenario with the guest ELFs from `images` (the release
    /// output directory): each distinct image is stored once.
    pub fn pack(&self, images: &Path) -> Result<Vec<u8>, String> {
        let mut b = PackBuilder::new();
        b.scenario(&self.name);
        let mut blobs: BTreeMap<&str, u32> = BTreeMap::new();
        for g in &self.guests {
            let blob = match blobs.get(g.image.as_str()) {
                Some(&i) => i,
                None => {
                    let path = g.image_path(images);
                    let elf = std::fs::read(&path).map_err(|e| {
                        format!(
                            "{}:{}: guest image `{}` not found at {} ({e}): is there a crate guests/{}/ (then run `cargo xtask build`), or is the path right?",
                            self.path.display(),
                            g.image_line,
                            g.image,
                            path.display(),
                            g.image
                        )
                    })?;
                    if !elf.starts_with(b"\x7fELF") {
                        return Err(format!("{} is not an ELF file", path.display()));
                    }
                    let i = b.blob(&elf);
                    blobs.insert(&g.image, i);
                    i
                }
            };
            let mut flags = DomainFlags::empty();
            flags.set(DomainFlags::PRIVILEGED, g.privileged);
            flags.set(DomainFlags::CRITICAL, g.critical);
            b.domain(&DomainSpec {
                name: &g.name,
                mem_pages: g.mem_pages,
                max_pages: g.max_pages,
                flags,
                image_blob: blob,
                cmdline: &g.cmdline,
                weight: g.weight,
                dma_pages: g.dma_pages,
            })
            .map_err(|e| format!("guest `{}`: {e}", g.name))?;
        }
        for c in &self.channels {
            b.channel(&c.name, c.ends[0] as u32, c.ends[1] as u32)
                .map_err(|e| format!("channel `{}`: {e}", c.name))?;
        }
        if let Some(disk) = &self.disk {
            let vblks: Vec<&[Vblk]> = self.guests.iter().map(|g| g.vblk.as_slice()).collect();
            disk.pack(&mut b, &vblks)?;
        }
        if let Some(net) = &self.net {
            let vnics: Vec<&[Vnic]> = self.guests.iter().map(|g| g.vnic.as_slice()).collect();
            net.pack(&mut b, u32::from(self.disk.is_some()), &vnics)?;
        }
        Ok(b.finish())
    }
}

/// Validates the `[[channel]]` tables against the (expanded) guests: a
/// valid name of at most 32 bytes, two different existing guests as ends,
/// no guest with two channels of one name or more than
/// `MAX_NAMED_CHANNELS` channels. The hypervisor checks the same again in
/// the boot pack (`tahoma_core::bootpack`); here the error names the line.
fn channels(
    cx: &Ctx<'_>,
    raw: &[RawChannel],
    guests: &[Guest],
) -> Result<Vec<Channel>, ManifestError> {
    let mut out: Vec<Channel> = Vec::new();
    let mut per_guest = vec![0usize; guests.len()];
    for c in raw {
        let name = c.name.get_ref();
        if !valid_name(name) || name.len() > CHANNEL_NAME_LEN {
            return Err(cx.at(
                &c.name,
                format!("channel name `{name}` must be 1 to {CHANNEL_NAME_LEN} bytes of letters, digits, `-`, `_` and `.`"),
            ));
        }
        let ends = c.ends.get_ref();
        if ends.len() != 2 {
            return Err(cx.at(
                &c.ends,
                format!(
                    "channel `{name}`: ends must name exactly two guests, like ends = [\"ping\", \"pong\"] (found {})",
                    ends.len()
                ),
            ));
        }
        let mut idx = [0usize; 2];
        for (slot, end) in idx.iter_mut().zip(ends) {
            *slot = guests
                .iter()
                .position(|g| &g.name == end.get_ref())
                .ok_or_else(|| {
                    let known: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
                    cx.at(
                        end,
                        format!(
                            "channel `{name}`: there is no guest `{}` (guests: {}; a guest with count = N is named NAME-0..NAME-N-1)",
                            end.get_ref(),
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ),
                    )
                })?;
        }
        if idx[0] == idx[1] {
            return Err(cx.at(
                &c.ends,
                format!("channel `{name}`: both ends are `{}`; a channel joins two different guests (for a loopback, use event::alloc_unbound(DomId::SELF))", guests[idx[0]].name),
            ));
        }
        for &e in &idx {
            if out.iter().any(|o| o.name == *name && o.ends.contains(&e)) {
                return Err(cx.at(
                    &c.name,
                    format!(
                        "channel `{name}`: guest `{}` already has a channel of that name; names are unique per guest",
                        guests[e].name
                    ),
                ));
            }
            per_guest[e] += 1;
            if per_guest[e] > MAX_NAMED_CHANNELS {
                return Err(cx.at(
                    &c.name,
                    format!(
                        "channel `{name}`: guest `{}` would have more than {MAX_NAMED_CHANNELS} named channels (the start-info table's size, ABI clause MEM-3a)",
                        guests[e].name
                    ),
                ));
            }
        }
        out.push(Channel {
            name: name.clone(),
            ends: idx,
        });
    }
    Ok(out)
}

/// Validates one `[[guest]]` table and pushes its copies (with the span of
/// its name, for duplicate errors).
fn expand_guest<'a>(
    cx: &Ctx<'_>,
    g: &'a RawGuest,
    out: &mut Vec<(Guest, &'a Spanned<String>)>,
) -> Result<(), ManifestError> {
    let name = g.name.get_ref();
    if !valid_name(name) {
        return Err(cx.at(
            &g.name,
            format!("guest name `{name}` must be non-empty and use only letters, digits, `-`, `_` and `.`"),
        ));
    }
    let image = g.image.get_ref();
    let image_file = image_is_path(image).then(|| {
        let dir = cx.file.parent().unwrap_or(Path::new(""));
        dir.join(image)
    });
    if image_file.is_none() && !valid_name(image) {
        return Err(cx.at(
            &g.image,
            format!("image `{image}` must name a guest crate under guests/, or be a path to an ELF file (with a `/`, or ending in .elf)"),
        ));
    }
    let vblk = vblks(cx, g)?;
    let vnic = vnics(cx, g)?;
    let pages = |v: &Spanned<String>, what: &str| -> Result<u32, ManifestError> {
        let bytes = parse_size(v.get_ref()).map_err(|e| cx.at(v, format!("{what}: {e}")))?;
        if bytes % PAGE != 0 {
            return Err(cx.at(
                v,
                format!(
                    "{what} = \"{}\" is not a whole number of 4K pages",
                    v.get_ref()
                ),
            ));
        }
        if bytes < MIN_GUEST_MEMORY {
            return Err(cx.at(
                v,
                format!(
                    "{what} = \"{}\" is below the minimum of {}K (ABI clause MEM-2c)",
                    v.get_ref(),
                    MIN_GUEST_MEMORY / 1024
                ),
            ));
        }
        u32::try_from(bytes / PAGE)
            .map_err(|_| cx.at(v, format!("{what} = \"{}\" is too large", v.get_ref())))
    };
    let mem_pages = pages(&g.memory, "memory")?;
    let max_pages = match &g.max_memory {
        None => mem_pages,
        Some(m) => {
            let p = pages(m, "max_memory")?;
            if p < mem_pages {
                return Err(cx.at(
                    m,
                    format!(
                        "max_memory = \"{}\" is less than memory = \"{}\"",
                        m.get_ref(),
                        g.memory.get_ref()
                    ),
                ));
            }
            p
        }
    };
    let weight = match &g.weight {
        None => 0,
        Some(w) if (0..=MAX_WEIGHT).contains(w.get_ref()) => w.get_ref().unsigned_abs() as u32,
        Some(w) => {
            return Err(cx.at(
                w,
                format!(
                    "weight = {} is outside 1..=256 (0 means the default)",
                    w.get_ref()
                ),
            ))
        }
    };
    let dma_pages = match &g.dma {
        None => 0,
        Some(d) => {
            if !g.privileged.unwrap_or(false) {
                return Err(cx.at(
                    d,
                    "dma is the DMA region of a driver domain: only a privileged guest has one",
                ));
            }
            let bytes = parse_size(d.get_ref()).map_err(|e| cx.at(d, format!("dma: {e}")))?;
            if bytes == 0 || bytes % PAGE != 0 || bytes > MAX_DMA {
                return Err(cx.at(
                    d,
                    format!(
                        "dma = \"{}\" must be a whole number of 4K pages, at least 4K and at most {}M",
                        d.get_ref(),
                        MAX_DMA >> 20
                    ),
                ));
            }
            (bytes / PAGE) as u32
        }
    };
    let count = match &g.count {
        None => 1,
        Some(c) if (1..=MAX_DOMAINS as i64).contains(c.get_ref()) => c.get_ref().unsigned_abs(),
        Some(c) => {
            return Err(cx.at(
                c,
                format!("count = {} is outside 1..={MAX_DOMAINS}", c.get_ref()),
            ));
        }
    };
    let image_line = line_of(cx.text, g.image.span().start);
    for i in 0..count {
        let copy = if count > 1 {
            format!("{name}-{i}")
        } else {
            name.clone()
        };
        if copy.len() > NAME_LEN {
            return Err(cx.at(
                &g.name,
                format!("guest name `{copy}` is longer than {NAME_LEN} bytes"),
            ));
        }
        out.push((
            Guest {
                name: copy,
                image: image.clone(),
                image_file: image_file.clone(),
                image_line,
                mem_pages,
                max_pages,
                cmdline: g.cmdline.clone().unwrap_or_default(),
                privileged: g.privileged.unwrap_or(false),
                critical: g.critical.unwrap_or(true),
                weight,
                dma_pages,
                vblk: vblk.clone(),
                vnic: vnic.clone(),
            },
            &g.name,
        ));
    }
    Ok(())
}

/// A guest's `[[guest.vblk]]` extents, each checked alone: sizes parse,
/// 512-byte aligned, not empty, at most `MAX_VBLK_PER_GUEST`, and only on a
/// guest without `count` (copies would share one extent). Fit in the image,
/// overlap and the `[disk]` itself are checked by [`disk`].
fn vblks(cx: &Ctx<'_>, g: &RawGuest) -> Result<Vec<Vblk>, ManifestError> {
    if g.vblk.len() > devices::MAX_VBLK_PER_GUEST {
        return Err(cx.at(
            &g.vblk[devices::MAX_VBLK_PER_GUEST].offset,
            format!(
                "guest `{}` has more than {} [[guest.vblk]] disks",
                g.name.get_ref(),
                devices::MAX_VBLK_PER_GUEST
            ),
        ));
    }
    let mut out = Vec::new();
    for v in &g.vblk {
        if let Some(c) = &g.count {
            return Err(cx.at(
                c,
                "a guest with [[guest.vblk]] cannot have `count`: every copy would get the same extent; write one [[guest]] per copy",
            ));
        }
        let bytes = |s: &Spanned<String>, what: &str| -> Result<u64, ManifestError> {
            let n = parse_size(s.get_ref()).map_err(|e| cx.at(s, format!("vblk {what}: {e}")))?;
            if n % devices::SECTOR != 0 {
                return Err(cx.at(
                    s,
                    format!(
                        "vblk {what} = \"{}\" is not a multiple of 512 bytes (one sector)",
                        s.get_ref()
                    ),
                ));
            }
            Ok(n)
        };
        let offset = bytes(&v.offset, "offset")?;
        let size = bytes(&v.size, "size")?;
        if size == 0 {
            return Err(cx.at(&v.size, "vblk size must be at least one sector (512 bytes)"));
        }
        out.push(Vblk {
            offset,
            size,
            readonly: v.readonly.unwrap_or(false),
        });
    }
    Ok(out)
}

/// A guest's `[[guest.vnic]]` entries, each checked alone: a static IPv4
/// address usable on QEMU's user network, a unicast MAC (given, or derived
/// from the guest's name), forwards that parse; at most
/// `MAX_VNIC_PER_GUEST`, and only on a guest without `count`. Uniqueness
/// across guests and `[net]` itself are checked by [`net`].
fn vnics(cx: &Ctx<'_>, g: &RawGuest) -> Result<Vec<Vnic>, ManifestError> {
    if g.vnic.len() > devices::MAX_VNIC_PER_GUEST {
        return Err(cx.at(
            &g.vnic[devices::MAX_VNIC_PER_GUEST].ip,
            format!(
                "guest `{}` has more than {} [[guest.vnic]] NICs",
                g.name.get_ref(),
                devices::MAX_VNIC_PER_GUEST
            ),
        ));
    }
    let mut out = Vec::new();
    for (i, v) in g.vnic.iter().enumerate() {
        if g.count.is_some() {
            return Err(cx.at(
                &v.ip,
                "a guest with [[guest.vnic]] cannot have `count`: every copy would get the same address; write one [[guest]] per copy",
            ));
        }
        let ip = devices::parse_ipv4(v.ip.get_ref()).ok_or_else(|| {
            cx.at(
                &v.ip,
                format!(
                    "vnic ip `{}` is not an IPv4 address like \"10.0.2.10\"",
                    v.ip.get_ref()
                ),
            )
        })?;
        if let Some(why) = devices::ipv4_problem(ip) {
            return Err(cx.at(
                &v.ip,
                format!("vnic ip `{}` {why}: pick one of 10.0.2.4..=10.0.2.14 or 10.0.2.31..=10.0.2.254", v.ip.get_ref()),
            ));
        }
        let mac = match &v.mac {
            None => devices::derived_mac(g.name.get_ref(), i),
            Some(m) => {
                let mac = devices::parse_mac(m.get_ref()).ok_or_else(|| {
                    cx.at(
                        m,
                        format!(
                            "vnic mac `{}` is not a MAC like \"02:00:00:00:00:01\"",
                            m.get_ref()
                        ),
                    )
                })?;
                if mac[0] & 1 != 0 || mac == [0; 6] || mac == devices::UPLINK_MAC {
                    return Err(cx.at(
                        m,
                        format!("vnic mac `{}` must be a unicast address other than 00:00:00:00:00:00 and QEMU's own 52:54:00:12:34:56 (leave `mac` out to derive one from the guest's name)", m.get_ref()),
                    ));
                }
                mac
            }
        };
        let mut forward = Vec::new();
        for f in &v.forward {
            forward.push(devices::Forward::parse(f.get_ref()).map_err(|e| cx.at(f, e))?);
        }
        out.push(Vnic {
            mac,
            ipv4: ip,
            forward,
        });
    }
    Ok(out)
}

/// Validates `[net]` against the guests: a driver that is one privileged
/// guest with room for its DMA region; every `[[guest.vnic]]` needs
/// `[net]`, is not on the driver itself, and has a MAC, an address and
/// host ports no other vNIC has; at most `MAX_VNICS` in all.
fn net(
    cx: &Ctx<'_>,
    raw: Option<&RawNet>,
    raw_guests: &[RawGuest],
    guests: &[Guest],
) -> Result<Option<Net>, ManifestError> {
    let Some(raw) = raw else {
        if let Some(v) = raw_guests.iter().flat_map(|g| &g.vnic).next() {
            return Err(cx.at(
                &v.ip,
                "[[guest.vnic]] needs a top-level [net] (driver = a privileged guest that switches the network)",
            ));
        }
        return Ok(None);
    };
    let driver_name = raw.driver.get_ref();
    let Some(driver) = guests.iter().position(|g| &g.name == driver_name) else {
        return Err(cx.at(
            &raw.driver,
            format!("net driver `{driver_name}` is not a guest of this scenario"),
        ));
    };
    let d = &guests[driver];
    if !d.privileged {
        return Err(cx.at(
            &raw.driver,
            format!("net driver `{driver_name}` must be a privileged guest (add `privileged = true` to it)"),
        ));
    }
    let dma = if d.dma_pages == 0 {
        DEFAULT_DMA_PAGES
    } else {
        u64::from(d.dma_pages)
    };
    if u64::from(d.mem_pages) < dma + 2 + DRIVER_MIN_PAGES {
        return Err(cx.at(
            &raw.driver,
            format!(
                "net driver `{driver_name}` has memory for {} pages, its DMA region ({}K; `dma`, default 2M) and device tables need {} more than a plain guest: give it more `memory` or a smaller `dma`",
                d.mem_pages,
                dma * 4,
                dma + 2
            ),
        ));
    }
    let mut count = 0;
    let mut macs: BTreeMap<[u8; 6], &str> = BTreeMap::new();
    let mut ips: BTreeMap<[u8; 4], &str> = BTreeMap::new();
    let mut ports: BTreeMap<(&str, u16), &str> = BTreeMap::new();
    for g in raw_guests {
        let name = g.name.get_ref();
        let Some(parsed) = guests.iter().find(|x| &x.name == name) else {
            continue;
        };
        for (v, p) in g.vnic.iter().zip(&parsed.vnic) {
            if name == driver_name {
                return Err(cx.at(
                    &v.ip,
                    format!("`{name}` drives the network: it owns the uplink, not a vNIC"),
                ));
            }
            count += 1;
            if count > devices::MAX_VNICS {
                return Err(cx.at(
                    &v.ip,
                    format!(
                        "more than {} vNICs on one switch (the driver's start-info table holds {})",
                        devices::MAX_VNICS,
                        devices::MAX_VNICS
                    ),
                ));
            }
            if let Some(other) = macs.insert(p.mac, name) {
                let at = v.mac.as_ref().map_or(v.ip.span(), |m| m.span());
                return Err(cx.err(
                    Some(at),
                    format!("this vNIC of `{name}` has the MAC of a vNIC of `{other}`: give one a different `mac`"),
                ));
            }
            if let Some(other) = ips.insert(p.ipv4, name) {
                return Err(cx.at(
                    &v.ip,
                    format!(
                        "vnic ip `{}` of `{name}` is already `{other}`'s",
                        v.ip.get_ref()
                    ),
                ));
            }
            for (f, pf) in v.forward.iter().zip(&p.forward) {
                if let Some(other) = ports.insert((pf.proto.name(), pf.host_port), name) {
                    return Err(cx.at(
                        f,
                        format!(
                            "host port {}:{} is already forwarded to `{other}`",
                            pf.proto.name(),
                            pf.host_port
                        ),
                    ));
                }
            }
        }
    }
    Ok(Some(Net { driver }))
}

/// Validates `[disk]` against the guests: a size that is whole sectors, an
/// image path under `target/`, a driver that is one privileged guest; every
/// `[[guest.vblk]]` needs the disk, lies inside the image, overlaps no other
/// guest's extent, and is not on the driver itself.
fn disk(
    cx: &Ctx<'_>,
    scenario: &str,
    raw: Option<&RawDisk>,
    raw_guests: &[RawGuest],
    guests: &[Guest],
) -> Result<Option<Disk>, ManifestError> {
    let Some(raw) = raw else {
        if let Some(v) = raw_guests.iter().flat_map(|g| &g.vblk).next() {
            return Err(cx.at(
                &v.offset,
                "[[guest.vblk]] needs a top-level [disk] (file, size, driver = a privileged guest that serves it)",
            ));
        }
        return Ok(None);
    };
    let size =
        parse_size(raw.size.get_ref()).map_err(|e| cx.at(&raw.size, format!("disk size: {e}")))?;
    if size == 0 || size % devices::SECTOR != 0 || size > devices::MAX_DISK_BYTES {
        return Err(cx.at(
            &raw.size,
            "disk size must be a non-zero multiple of 512 bytes, at most 64G",
        ));
    }
    let file = match &raw.file {
        None => format!("target/tahoma/disks/{scenario}.img"),
        Some(f) if devices::valid_image_path(f.get_ref()) => f.get_ref().clone(),
        Some(f) => {
            return Err(cx.at(
                f,
                format!("disk file `{}` must be a relative path under target/ (like \"target/tahoma/disks/{scenario}.img\")", f.get_ref()),
            ))
        }
    };
    let driver_name = raw.driver.get_ref();
    let Some(driver) = guests.iter().position(|g| &g.name == driver_name) else {
        return Err(cx.at(
            &raw.driver,
            format!("disk driver `{driver_name}` is not a guest of this scenario"),
        ));
    };
    if !guests[driver].privileged {
        return Err(cx.at(
            &raw.driver,
            format!("disk driver `{driver_name}` must be a privileged guest (add `privileged = true` to it)"),
        ));
    }
    // Its window holds the DMA region and two device tables beside the
    // image (IO-3): a rough floor here, the exact check at boot.
    let d = &guests[driver];
    let dma = if d.dma_pages == 0 {
        DEFAULT_DMA_PAGES
    } else {
        u64::from(d.dma_pages)
    };
    if u64::from(d.mem_pages) < dma + 2 + DRIVER_MIN_PAGES {
        return Err(cx.at(
            &raw.driver,
            format!(
                "disk driver `{driver_name}` has memory for {} pages, its DMA region ({}K; `dma`, default 2M) and device tables need {} more than a plain guest: give it more `memory` or a smaller `dma`",
                d.mem_pages,
                dma * 4,
                dma + 2
            ),
        ));
    }
    let mut taken: Vec<(u64, u64, &str)> = Vec::new();
    for g in raw_guests {
        for v in &g.vblk {
            let name = g.name.get_ref();
            if name == driver_name {
                return Err(cx.at(
                    &v.offset,
                    format!(
                        "`{name}` drives the disk: it reads it directly, not through a vblk extent"
                    ),
                ));
            }
            let offset = parse_size(v.offset.get_ref()).unwrap_or(0);
            let end = parse_size(v.size.get_ref())
                .ok()
                .and_then(|s| s.checked_add(offset));
            let Some(end) = end.filter(|&e| e <= size) else {
                return Err(cx.at(&v.size, format!("this vblk extent ends beyond the {size}-byte disk image: shrink it or grow [disk] size")));
            };
            if let Some((_, _, other)) = taken.iter().find(|&&(a, b, _)| a < end && offset < b) {
                return Err(cx.at(
                    &v.offset,
                    format!("this vblk extent of `{name}` overlaps one of `{other}`: extents of different disks must not share bytes"),
                ));
            }
            taken.push((offset, end, name));
        }
    }
    Ok(Some(Disk {
        file: PathBuf::from(file),
        size,
        driver,
    }))
}

/// The manifest of a one-guest scenario around an ELF built elsewhere
/// (`cargo xtask run --image FILE`): the guest is named after the file,
/// critical, with `memory` and `cmdline` as given.
pub fn image_manifest(file: &Path, memory: &str, cmdline: &str) -> Result<String, String> {
    let abs =
        std::path::absolute(file).map_err(|e| format!("cannot resolve {}: {e}", file.display()))?;
    if !abs.is_file() {
        return Err(format!("--image {}: there is no such file", file.display()));
    }
    let stem = abs
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(NAME_LEN)
        .collect();
    if name.is_empty() {
        name = "guest".into();
    }
    let mut path = abs.display().to_string();
    if !image_is_path(&path) {
        path = format!("./{path}");
    }
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    Ok(format!(
        "# Generated by `cargo xtask run --image {}`.\n\
         description = {}\n\n[[guest]]\nname = {}\nimage = {}\nmemory = {}\ncmdline = {}\n",
        file.display(),
        quote(&format!("one guest from {}", abs.display())),
        quote(&name),
        quote(&path),
        quote(memory),
        quote(cmdline),
    ))
}

/// Whether a manifest's `image` names a file rather than a guest crate.
fn image_is_path(image: &str) -> bool {
    image.contains('/') || image.ends_with(".elf")
}

impl Guest {
    /// The ELF to boot: `image_file`, or the crate's build output in
    /// `images` (the release output directory).
    pub fn image_path(&self, images: &Path) -> PathBuf {
        self.image_file
            .clone()
            .unwrap_or_else(|| images.join(&self.image))
    }
}

/// What to do about a refused image, after the refusal itself.
fn image_advice(e: &ImageError) -> &'static str {
    match e {
        ImageError::BadElf(_) => "a guest is a static ELF64 x86-64 executable (ET_EXEC) linked at 0x400000; build it with the guest SDK (docs/guest-guide.md)",
        ImageError::BadSegment(_) => "link the image at the window base 0x400000 (the SDK's linker settings do this) or give the guest more `memory`",
        ImageError::BadEntry(_) => "the entry point must lie in an executable segment: check the link",
        ImageError::BadSize(_) => "give the guest more `memory` (the window must hold the image, its page tables, the start-info page and a stack)",
    }
}

/// The scenario names under `root/guests/scenarios`, sorted.
pub fn list(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("guests/scenarios");
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(String::from))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tahoma_core::bootpack::{name_str, Pack};

    fn parse(text: &str) -> Result<Scenario, ManifestError> {
        Scenario::parse(Path::new("guests/scenarios/t.toml"), text)
    }

    fn err(text: &str) -> ManifestError {
        parse(text).expect_err("manifest should be refused")
    }

    const GOOD: &str = r#"
description = "two workers and a driver"
timeout = 30
memory = "256M"
cmdline = "log=debug"

[[guest]]
name = "net"
image = "netdrv"
memory = "4M"
max_memory = "8M"
privileged = true
critical = false

[[guest]]
name = "worker"
image = "hello"
memory = "128K"
cmdline = "greeting=hi"
count = 3
weight = 256
"#;

    #[test]
    fn good_manifest() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(s.description.as_deref(), Some("two workers and a driver"));
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.memory_mib, 256);
        assert_eq!(s.cmdline, "log=debug");
        let net = &s.guests[0];
        assert_eq!(
            (
                net.mem_pages,
                net.max_pages,
                net.privileged,
                net.critical,
                net.weight
            ),
            (1024, 2048, true, false, 0)
        );
        assert_eq!(net.image_line, 9);
        let w = &s.guests[1];
        assert_eq!((w.mem_pages, w.max_pages, w.weight), (32, 32, 256));
        assert!(w.critical && !w.privileged);
        assert_eq!(w.cmdline, "greeting=hi");
    }

    #[test]
    fn defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.timeout, Duration::from_secs(DEFAULT_TIMEOUT));
        assert_eq!(s.memory_mib, 512);
        assert_eq!(s.cmdline, "");
        assert!(s.guests.is_empty());
    }

    #[test]
    fn count_expansion() {
        let s = parse(GOOD).unwrap();
        let names: Vec<_> = s.guests.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["net", "worker-0", "worker-1", "worker-2"]);
        let one =
            parse("[[guest]]\nname = \"a\"\nimage = \"x\"\nmemory = \"1M\"\ncount = 1\n").unwrap();
        assert_eq!(one.guests[0].name, "a");
        let e = err("[[guest]]\nname = \"a\"\nimage = \"x\"\nmemory = \"1M\"\ncount = 0\n");
        assert_eq!(e.line, Some(5));
    }

    /// Issue 13: `count` goes up to the last domain id below DOMID_SELF
    /// (0x7FF0), for one guest and for all of them together.
    #[test]
    fn count_reaches_the_domain_id_limit_and_no_further() {
        let g = |name: &str, n: u64| {
            format!("[[guest]]\nname = \"{name}\"\nimage = \"x\"\nmemory = \"128K\"\ncount = {n}\n")
        };
        let s = parse(&g("a", 32751)).unwrap();
        assert_eq!(s.guests.len(), 32751);
        assert_eq!(s.guests[32750].name, "a-32750");
        let e = err(&g("a", 32752));
        assert!(e.message.contains("outside 1..=32751"), "{e}");
        assert_eq!(e.line, Some(5));
        let e = err(&(g("a", 20000) + &g("b", 12752)));
        assert!(
            e.message.contains("32752 guests in all; at most 32751"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let e = err("timeout = 5\n\n[[guest]]\nname = \"a\"\nimage = \"x\"\nmemory = \"1M\"\nprivilged = true\n");
        assert_eq!(e.file, Path::new("guests/scenarios/t.toml"));
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("privilged"), "{e}");
        assert!(
            e.to_string().starts_with("guests/scenarios/t.toml:7: "),
            "{e}"
        );
        let top = err("descripton = \"x\"\n");
        assert_eq!(top.line, Some(1), "{top}");
    }

    #[test]
    fn bad_values_name_the_line() {
        let guest =
            |mem: &str| format!("\n[[guest]]\nname = \"a\"\nimage = \"x\"\nmemory = {mem}\n");
        for (mem, why) in [
            ("\"2X\"", "not a size"),
            ("\"\"", "not a size"),
            ("\"-1M\"", "not a size"),
            ("\"1000\"", "whole number of 4K pages"),
            ("\"60K\"", "minimum of 64K"),
            ("\"99999G\"", "too large"),
            ("2", "string"),
        ] {
            let e = err(&guest(mem));
            assert_eq!(e.line, Some(5), "{mem}: {e}");
            assert!(e.message.contains(why), "{mem}: {e}");
        }
        let e =
            err("[[guest]]\nname = \"a\"\nimage = \"x\"\nmemory = \"2M\"\nmax_memory = \"1M\"\n");
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("less than"), "{e}");
        let e = err("[[guest]]\nname = \"a\"\nimage = \"x\"\nmemory = \"2M\"\nweight = 257\n");
        assert_eq!(e.line, Some(5));
        let e = err("timeout = 0\n");
        assert_eq!(e.line, Some(1));
        let e = err("memory = \"1G\"\ntimeout = \"soon\"\n");
        assert_eq!(e.line, Some(2), "{e}");
        let e = err("memory = \"8M\"\n");
        assert!(e.message.contains("at least 16M"), "{e}");
        let e = err("[[guest]]\nname = \"has space\"\nimage = \"x\"\nmemory = \"2M\"\n");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn duplicate_names() {
        let e = err("[[guest]]\nname = \"a\"\nimage = \"x\"\nmemory = \"1M\"\n\n[[guest]]\nname = \"a\"\nimage = \"y\"\nmemory = \"1M\"\n");
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("used twice"), "{e}");
        // Expansion can collide with an explicit name.
        let e = err("[[guest]]\nname = \"w-1\"\nimage = \"x\"\nmemory = \"1M\"\n\n[[guest]]\nname = \"w\"\nimage = \"x\"\nmemory = \"1M\"\ncount = 2\n");
        assert!(e.message.contains("`w-1`"), "{e}");
    }

    #[test]
    fn long_names_are_refused() {
        let long = "n".repeat(31);
        let e = err(&format!(
            "[[guest]]\nname = \"{long}\"\nimage = \"x\"\nmemory = \"1M\"\ncount = 2\n"
        ));
        assert!(e.message.contains("longer than 32"), "{e}");
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn guests_that_do_not_fit_are_refused_before_boot() {
        let s = parse("memory = \"64M\"\n[[guest]]\nname = \"a\"\nimage = \"x\"\nmemory = \"20M\"\ncount = 2\n")
            .unwrap();
        // 40 MiB of guests + 8 MiB of hypervisor image + its main heap
        // (12.3 MiB at 64 MiB) + 1 MiB + pack: fits.
        let heap = tahoma_core::memmap::main_heap_bytes(64 << 8);
        assert_eq!(heap, (8 << 20) + (16384 * 273));
        assert_eq!(s.check_fit(8 << 20, 64 << 10), Ok(()));
        // 40 + 14 + 12.3 + 1 does not.
        let e = s.check_fit(14 << 20, 64 << 10).unwrap_err();
        assert!(e.contains("2 guest(s) need 41 MiB"), "{e}");
        assert!(e.contains("the machine has 64 MiB"), "{e}");
        assert!(e.contains("raise `memory`"), "{e}");
        // A scenario that overcommits on purpose is not refused here (the
        // hypervisor refuses the guests that do not fit).
        let s = parse("memory = \"64M\"\novercommit = true\n[[guest]]\nname = \"a\"\nimage = \"x\"\nmemory = \"20M\"\ncount = 4\n")
            .unwrap();
        assert_eq!(s.check_fit(14 << 20, 64 << 10), Ok(()));
    }

    #[test]
    fn image_paths_resolve_from_the_manifest_folder() {
        let s = Scenario::parse(
            Path::new("guests/scenarios/x.toml"),
            "[[guest]]\nname = \"a\"\nimage = \"../../build/app.elf\"\nmemory = \"1M\"\n\
             [[guest]]\nname = \"b\"\nimage = \"hello\"\nmemory = \"1M\"\n",
        )
        .unwrap();
        assert_eq!(
            s.guests[0].image_path(Path::new("/img")),
            Path::new("guests/scenarios/../../build/app.elf")
        );
        assert_eq!(
            s.guests[1].image_path(Path::new("/img")),
            Path::new("/img/hello")
        );
        let e = s.check_images(&["hello".into()]).unwrap_err();
        assert!(
            e.contains("x.toml:3: image `../../build/app.elf`: there is no file"),
            "{e}"
        );
    }

    #[test]
    fn images_are_checked_with_the_loader_before_boot() {
        let dir = std::env::temp_dir().join(format!("tahoma-loadable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("junk.elf"), b"not an ELF").unwrap();
        let manifest = dir.join("s.toml");
        let s = Scenario::parse(
            &manifest,
            "[[guest]]\nname = \"j\"\nimage = \"junk.elf\"\nmemory = \"1M\"\n",
        )
        .unwrap();
        let e = s.check_loadable(Path::new("/nowhere")).unwrap_err();
        assert!(e.contains("s.toml:3: guest `j`"), "{e}");
        assert!(e.contains("image refused"), "{e}");
        assert!(e.contains("static ELF64"), "{e}");
        // --image's generated manifest parses and names the file.
        let text = image_manifest(&dir.join("junk.elf"), "4M", "a=\"b\"").unwrap();
        let g = Scenario::parse(&dir.join("gen.toml"), &text).unwrap();
        assert_eq!(g.guests[0].name, "junk");
        assert_eq!(g.guests[0].cmdline, "a=\"b\"");
        assert_eq!(
            g.guests[0].image_path(Path::new("/x")),
            dir.join("junk.elf")
        );
        assert!(image_manifest(&dir.join("missing"), "4M", "").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const PAIR: &str = "[[guest]]\nname = \"ping\"\nimage = \"pingpong\"\nmemory = \"1M\"\n\
                        [[guest]]\nname = \"pong\"\nimage = \"pingpong\"\nmemory = \"1M\"\n\
                        [[guest]]\nname = \"w\"\nimage = \"hello\"\nmemory = \"1M\"\ncount = 2\n";

    #[test]
    fn channels_are_parsed_and_packed() {
        let s = parse(&format!(
            "{PAIR}[[channel]]\nname = \"pingpong\"\nends = [\"ping\", \"pong\"]\n\
             [[channel]]\nname = \"pingpong\"\nends = [\"w-0\", \"w-1\"]\n"
        ))
        .unwrap();
        assert_eq!(
            s.channels,
            [
                Channel {
                    name: "pingpong".into(),
                    ends: [0, 1]
                },
                Channel {
                    name: "pingpong".into(),
                    ends: [2, 3]
                }
            ]
        );
        let dir = std::env::temp_dir().join(format!("tahoma-chan-pack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for i in ["pingpong", "hello"] {
            std::fs::write(dir.join(i), b"\x7fELF image").unwrap();
        }
        let bytes = s.pack(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let pack = Pack::parse(&bytes).unwrap();
        let cs: Vec<_> = pack.channels().collect();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[1].ends, [2, 3]);
        assert_eq!(
            tahoma_core::bootpack::channel_name(&cs[0].name),
            Some("pingpong")
        );
    }

    #[test]
    fn bad_channels_name_the_line() {
        let chan = |body: &str| err(&format!("{PAIR}[[channel]]\n{body}"));
        // PAIR has 13 lines: `[[channel]]` is line 14, `name` 15, `ends` 16.
        let e = chan("name = \"x\"\nends = [\"ping\", \"nobody\"]\n");
        assert_eq!(e.line, Some(16), "{e}");
        assert!(e.message.contains("no guest `nobody`"), "{e}");
        assert!(e.message.contains("ping, pong, w-0, w-1"), "{e}");
        let e = chan("name = \"x\"\nends = [\"ping\"]\n");
        assert!(e.message.contains("exactly two guests"), "{e}");
        let e = chan("name = \"x\"\nends = [\"ping\", \"ping\"]\n");
        assert!(e.message.contains("both ends are `ping`"), "{e}");
        let e = chan("name = \"has space\"\nends = [\"ping\", \"pong\"]\n");
        assert_eq!(e.line, Some(15), "{e}");
        let e = chan(&format!(
            "name = \"{}\"\nends = [\"ping\", \"pong\"]\n",
            "n".repeat(33)
        ));
        assert!(e.message.contains("1 to 32 bytes"), "{e}");
        let e = chan("name = \"x\"\nends = [\"ping\", \"pong\"]\npeer = 2\n");
        assert!(e.message.contains("peer"), "unknown key: {e}");
        let e = chan(
            "name = \"x\"\nends = [\"ping\", \"pong\"]\n[[channel]]\nname = \"x\"\nends = [\"w-0\", \"pong\"]\n",
        );
        assert_eq!(e.line, Some(18), "{e}");
        assert!(e.message.contains("`pong` already has a channel"), "{e}");
        let mut many = String::new();
        for i in 0..MAX_NAMED_CHANNELS {
            many += &format!(
                "[[channel]]\nname = \"c{i}\"\nends = [\"ping\", \"w-{}\"]\n",
                i % 2
            );
        }
        assert!(parse(&format!("{PAIR}{many}")).is_ok(), "16 channels fit");
        many += "[[channel]]\nname = \"last\"\nends = [\"pong\", \"ping\"]\n";
        let e = err(&format!("{PAIR}{many}"));
        assert!(e.message.contains("`ping` would have more than 16"), "{e}");
    }

    const DISK: &str = r#"
[disk]
size = "64M"
driver = "drv"

[[guest]]
name = "drv"
image = "hello"
memory = "4M"
privileged = true

[[guest]]
name = "a"
image = "hello"
memory = "1M"

[[guest.vblk]]
offset = "0"
size = "16M"

[[guest.vblk]]
offset = "48M"
size = "512"
readonly = true

[[guest]]
name = "b"
image = "hello"
memory = "1M"

[[guest.vblk]]
offset = "16M"
size = "16M"
"#;

    #[test]
    fn disks_are_parsed() {
        let s = parse(DISK).unwrap();
        assert_eq!(
            s.guests[0].dma_pages, 0,
            "no `dma`: the hypervisor's default"
        );
        let small = parse(&DISK.replacen(
            "privileged = true\n",
            "privileged = true\ndma = \"1M\"\n",
            1,
        ))
        .unwrap();
        assert_eq!(small.guests[0].dma_pages, 256);
        let d = s.disk.as_ref().unwrap();
        assert_eq!(d.file, PathBuf::from("target/tahoma/disks/t.img"));
        assert_eq!((d.size, d.driver), (64 << 20, 0));
        assert!(s.guests[0].vblk.is_empty());
        assert_eq!(
            s.guests[1].vblk,
            [
                Vblk {
                    offset: 0,
                    size: 16 << 20,
                    readonly: false
                },
                Vblk {
                    offset: 48 << 20,
                    size: 512,
                    readonly: true
                }
            ]
        );
        assert_eq!(
            s.guests[2].vblk,
            [Vblk {
                offset: 16 << 20,
                size: 16 << 20,
                readonly: false
            }]
        );
        let with_file = DISK.replace(
            "size = \"64M\"\n",
            "size = \"64M\"\nfile = \"target/x/y.img\"\n",
        );
        assert_eq!(
            parse(&with_file).unwrap().disk.unwrap().file,
            PathBuf::from("target/x/y.img")
        );
    }

    const NET: &str = r#"
[net]
driver = "drv"

[[guest]]
name = "drv"
image = "hello"
memory = "4M"
privileged = true

[[guest]]
name = "a"
image = "hello"
memory = "1M"

[[guest.vnic]]
ip = "10.0.2.10"
forward = ["tcp:8080:80", "udp:5353:53"]

[[guest]]
name = "b"
image = "hello"
memory = "1M"

[[guest.vnic]]
ip = "10.0.2.11"
mac = "02:00:00:00:00:0b"
"#;

    /// One driver domain for both (docs/io.md): `[disk]` and `[net]` name
    /// the same privileged guest, which gets both device records (two slots
    /// of the one virtio-mmio frame, which the hypervisor delegates to one
    /// domain only); a guest may have a vblk and a vNIC. Every other rule
    /// still holds for the shared driver.
    #[test]
    fn one_driver_domain_may_drive_the_disk_and_the_network() {
        let one = r#"
[disk]
size = "4M"
driver = "drv"

[net]
driver = "drv"

[[guest]]
name = "drv"
image = "hello"
memory = "6M"
privileged = true

[[guest]]
name = "kv"
image = "hello"
memory = "1M"

[[guest.vnic]]
ip = "10.0.2.10"

[[guest.vblk]]
offset = "0"
size = "4M"
"#;
        let s = parse(one).unwrap();
        assert_eq!(s.net, Some(Net { driver: 0 }));
        assert_eq!(s.disk.as_ref().map(|d| d.driver), Some(0));
        let dir = std::env::temp_dir().join(format!("tahoma-one-drv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello"), b"\x7fELF-fake").unwrap();
        let bytes = s.pack(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mmio: Vec<_> = Pack::parse(&bytes)
            .unwrap()
            .devices()
            .filter(|d| d.kind == 1)
            .map(|d| (d.domain, d.id, d.base >> 12))
            .collect();
        // The disk (virtio id 2) and the uplink (1), both the driver's
        // (domain 0), both in frame 0xfeb00.
        assert_eq!(mmio, [(0, 2, 0xfeb00), (0, 1, 0xfeb00)]);

        // The shared driver keeps every rule: privileged, ...
        let e = err(&one.replacen("privileged = true\n", "", 1));
        assert!(e.message.contains("must be a privileged guest"), "{e}");
        // ... room for its DMA region, ...
        let e = err(&one.replacen("memory = \"6M\"", "memory = \"1M\"", 1));
        assert!(e.message.contains("DMA region"), "{e}");
        // ... no vblk and no vNIC of its own.
        let on_drv = one.replacen(
            "privileged = true\n",
            "privileged = true\n[[guest.vblk]]\noffset = \"0\"\nsize = \"512\"\n",
            1,
        );
        assert!(err(&on_drv).message.contains("drives the disk"));
        let on_drv = one.replacen(
            "privileged = true\n",
            "privileged = true\n[[guest.vnic]]\nip = \"10.0.2.12\"\n",
            1,
        );
        let e = err(&on_drv);
        assert!(e.message.contains("drives the network"), "{e}");
    }

    #[test]
    fn nets_are_parsed_and_packed() {
        use crate::devices::{derived_mac, Forward};
        let s = parse(NET).unwrap();
        assert_eq!(s.net, Some(Net { driver: 0 }));
        assert!(s.guests[0].vnic.is_empty());
        assert_eq!(
            s.guests[1].vnic,
            [Vnic {
                mac: derived_mac("a", 0),
                ipv4: [10, 0, 2, 10],
                forward: vec![
                    Forward::parse("tcp:8080:80").unwrap(),
                    Forward::parse("udp:5353:53").unwrap()
                ],
            }]
        );
        assert_eq!(s.guests[2].vnic[0].mac, [2, 0, 0, 0, 0, 0x0b]);
        let (args, reach) = crate::machine::endpoints(&s);
        let args = args.join(" ");
        assert!(
            args.starts_with("-machine acpi=off -global virtio-mmio.force-legacy=false -netdev user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:8080-10.0.2.10:80,hostfwd=udp:127.0.0.1:5353-10.0.2.10:53 "),
            "{args}"
        );
        assert!(
            reach[0].contains("virtio-net at 0xfeb00e00, IOAPIC input 12"),
            "{reach:?}"
        );
        assert!(
            reach
                .iter()
                .any(|r| r == "tcp 127.0.0.1:8080 -> `a` 10.0.2.10:80"),
            "{reach:?}"
        );

        let dir = std::env::temp_dir().join(format!("tahoma-net-pack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello"), b"\x7fELF-fake").unwrap();
        let bytes = s.pack(&dir).unwrap();
        let devs: Vec<_> = Pack::parse(&bytes).unwrap().devices().collect();
        let got: Vec<_> = devs
            .iter()
            .map(|d| (d.kind, d.domain, d.id, d.base, d.size, d.irq))
            .collect();
        let m = derived_mac("a", 0);
        let mut a = [0u8; 8];
        a[2..].copy_from_slice(&m);
        assert_eq!(
            got,
            [
                (1, 0, 1, 0xfeb0_0e00, 0x200, 12),
                (3, 1, 0, u64::from_be_bytes(a), 0x0a00_020a, 0),
                (3, 2, 0, 0x0200_0000_000b, 0x0a00_020b, 0)
            ]
        );
        // With a disk, the network is the second virtio device (slot 6).
        let both = format!("[disk]\nsize = \"1M\"\ndriver = \"drv\"\n{}", NET);
        let s = parse(&both).unwrap();
        let devs: Vec<_> = Pack::parse(&s.pack(&dir).unwrap())
            .unwrap()
            .devices()
            .collect();
        assert_eq!(
            (devs[1].id, devs[1].base, devs[1].irq),
            (1, 0xfeb0_0c00, 11)
        );
        let (args, _) = crate::machine::endpoints(&s);
        assert!(!args.join(" ").contains("-machine"), "the disk gives them");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_nets_name_the_line() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "driver = \"drv\"",
                "driver = \"a\"",
                3,
                "must be a privileged guest",
            ),
            (
                "driver = \"drv\"",
                "driver = \"zz\"",
                3,
                "not a guest of this scenario",
            ),
            (
                "ip = \"10.0.2.10\"",
                "ip = \"10.0.2.2\"",
                17,
                "QEMU's gateway",
            ),
            ("ip = \"10.0.2.10\"", "ip = \"10.0.2.16\"", 17, "DHCP pool"),
            (
                "ip = \"10.0.2.10\"",
                "ip = \"192.168.1.4\"",
                17,
                "outside QEMU's user network",
            ),
            (
                "ip = \"10.0.2.10\"",
                "ip = \"ten\"",
                17,
                "not an IPv4 address",
            ),
            (
                "ip = \"10.0.2.11\"",
                "ip = \"10.0.2.10\"",
                26,
                "already `a`'s",
            ),
            (
                "\"02:00:00:00:00:0b\"",
                "\"03:00:00:00:00:0b\"",
                27,
                "must be a unicast address",
            ),
            (
                "\"02:00:00:00:00:0b\"",
                "\"52:54:00:12:34:56\"",
                27,
                "QEMU's own",
            ),
            (
                "\"02:00:00:00:00:0b\"",
                "\"02:00:00:00:0b\"",
                27,
                "not a MAC",
            ),
            (
                "\"tcp:8080:80\"",
                "\"tcp:8080\"",
                18,
                "tcp:HOSTPORT:GUESTPORT",
            ),
            (
                "mac = \"02:00:00:00:00:0b\"",
                "forward = [\"tcp:8080:81\"]",
                27,
                "host port tcp:8080 is already forwarded to `a`",
            ),
            (
                "[net]\ndriver = \"drv\"\n",
                "",
                15,
                "needs a top-level [net]",
            ),
            ("memory = \"4M\"", "memory = \"1M\"", 3, "DMA region"),
            (
                "name = \"a\"\nimage = \"hello\"\nmemory = \"1M\"\n",
                "name = \"a\"\nimage = \"hello\"\nmemory = \"1M\"\ncount = 2\n",
                18,
                "cannot have `count`",
            ),
        ];
        for (from, to, line, want) in cases {
            let text = NET.replacen(from, to, 1);
            assert_ne!(text, NET, "{from}");
            let e = err(&text);
            assert!(e.message.contains(want), "{from} -> {to}: {e}");
            assert_eq!(e.line, Some(*line), "{from} -> {to}: {e}");
        }
        let on_driver = NET.replacen(
            "privileged = true\n",
            "privileged = true\n[[guest.vnic]]\nip = \"10.0.2.40\"\n",
            1,
        );
        let e = err(&on_driver);
        assert!(e.message.contains("drives the network"), "{e}");
        let mut many = String::from("[net]\ndriver = \"drv\"\n[[guest]]\nname = \"drv\"\nimage = \"hello\"\nmemory = \"4M\"\nprivileged = true\n");
        for i in 0..=devices::MAX_VNICS {
            many += &format!(
                "[[guest]]\nname = \"g{i}\"\nimage = \"hello\"\nmemory = \"1M\"\n[[guest.vnic]]\nip = \"10.0.2.{}\"\n",
                40 + i
            );
        }
        let e = err(&many);
        assert!(e.message.contains("more than 8 vNICs"), "{e}");
        let e = err(&NET.replacen(
            "ip = \"10.0.2.11\"\n",
            "ip = \"10.0.2.11\"\n[[guest.vnic]]\nip = \"10.0.2.12\"\n[[guest.vnic]]\nip = \"10.0.2.13\"\n",
            1,
        ));
        assert!(e.message.contains("more than 2 [[guest.vnic]]"), "{e}");
    }

    #[test]
    fn disks_are_packed_as_device_records() {
        let dir = std::env::temp_dir().join(format!("tahoma-disk-pack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello"), b"\x7fELF-fake").unwrap();
        let s = parse(DISK).unwrap();
        let bytes = s.pack(&dir).unwrap();
        let pack = Pack::parse(&bytes).unwrap();
        let devs: Vec<_> = pack.devices().collect();
        assert_eq!(devs.len(), 4);
        assert_eq!(
            (
                devs[0].kind,
                devs[0].domain,
                devs[0].id,
                devs[0].base,
                devs[0].irq
            ),
            (1, 0, 2, 0xfeb0_0e00, 12)
        );
        let extents: Vec<_> = devs[1..]
            .iter()
            .map(|d| (d.kind, d.domain, d.id, d.base, d.size, d.flags))
            .collect();
        assert_eq!(
            extents,
            [
                (2, 1, 0, 0, 16 << 20, 0),
                (2, 1, 0, 48 << 20, 512, 1),
                (2, 2, 0, 16 << 20, 16 << 20, 0)
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_disks_name_the_line() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (
                "offset = \"16M\"",
                "offset = \"8M\"",
                32,
                "overlaps one of `a`",
            ),
            (
                "offset = \"48M\"",
                "offset = \"64M\"",
                23,
                "ends beyond the 67108864-byte disk image",
            ),
            (
                "offset = \"48M\"",
                "offset = \"100\"",
                22,
                "not a multiple of 512",
            ),
            ("size = \"512\"", "size = \"0\"", 23, "at least one sector"),
            (
                "driver = \"drv\"",
                "driver = \"a\"",
                4,
                "must be a privileged guest",
            ),
            (
                "driver = \"drv\"",
                "driver = \"nobody\"",
                4,
                "not a guest of this scenario",
            ),
            (
                "size = \"64M\"\ndriver",
                "size = \"1000\"\ndriver",
                3,
                "multiple of 512",
            ),
            (
                "size = \"64M\"\ndriver",
                "size = \"64M\"\nfile = \"/tmp/x.img\"\ndriver",
                4,
                "under target/",
            ),
            (
                "size = \"64M\"\ndriver",
                "size = \"64M\"\nfile = \"target/../x.img\"\ndriver",
                4,
                "under target/",
            ),
            (
                "name = \"b\"",
                "name = \"b\"\ncount = 2",
                28,
                "cannot have `count`",
            ),
            (
                "offset = \"16M\"",
                "offset = \"16M\"\nsector = 1",
                33,
                "unknown field `sector`",
            ),
            // The driver's DMA region (`dma`, IO-3).
            (
                "memory = \"4M\"",
                "memory = \"1M\"",
                4,
                "give it more `memory` or a smaller `dma`",
            ),
            (
                "privileged = true",
                "privileged = true\ndma = \"4M\"",
                4,
                "give it more `memory` or a smaller `dma`",
            ),
            (
                "privileged = true",
                "privileged = true\ndma = \"1000\"",
                11,
                "whole number of 4K pages",
            ),
            (
                "privileged = true",
                "privileged = true\ndma = \"128M\"",
                11,
                "at most 64M",
            ),
            (
                "name = \"b\"",
                "name = \"b\"\ndma = \"1M\"",
                28,
                "only a privileged guest",
            ),
        ];
        for &(from, to, line, want) in cases {
            assert!(DISK.contains(from), "{from}");
            let e = err(&DISK.replacen(from, to, 1));
            assert!(e.message.contains(want), "{to}: {}", e.message);
            assert_eq!(e.line, Some(line), "{to}: {}", e.message);
        }
        // The driver cannot have a vblk of its own; a vblk needs a [disk].
        let e = err(&DISK.replacen(
            "privileged = true\n",
            "privileged = true\n\n[[guest.vblk]]\noffset = \"40M\"\nsize = \"1M\"\n",
            1,
        ));
        assert!(e.message.contains("drives the disk"), "{}", e.message);
        let e = err(&DISK.replacen("[disk]\nsize = \"64M\"\ndriver = \"drv\"\n", "", 1));
        assert!(
            e.message.contains("needs a top-level [disk]"),
            "{}",
            e.message
        );
        assert_eq!(e.line, Some(15));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("1.5M").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("1m").is_err());
    }

    #[test]
    fn pack_stores_each_image_once() {
        let dir = std::env::temp_dir().join(format!("tahoma-xtask-pack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hello"), b"\x7fELF hello image").unwrap();
        std::fs::write(dir.join("netdrv"), b"\x7fELF netdrv image").unwrap();
        let s = parse(GOOD).unwrap();
        let bytes = s.pack(&dir).unwrap();
        let pack = Pack::parse(&bytes).unwrap();
        assert_eq!(pack.scenario(), Some("t"));
        let ds: Vec<_> = pack.domains().collect();
        assert_eq!(ds.len(), 4);
        assert_eq!(name_str(&ds[3].name), "worker-2");
        assert_eq!(ds[1].image_blob, ds[3].image_blob);
        assert_ne!(ds[0].image_blob, ds[1].image_blob);
        assert_eq!(
            pack.blob(ds[1].image_blob),
            Some(&b"\x7fELF hello image"[..])
        );
        assert_eq!(ds[0].flags, DomainFlags::PRIVILEGED.bits());
        assert_eq!(ds[1].flags, DomainFlags::CRITICAL.bits());
        assert_eq!(pack.blob(ds[1].cmdline_blob), Some(&b"greeting=hi"[..]));

        assert_eq!(s.check_images(&["hello".into(), "netdrv".into()]), Ok(()));
        let e = s.check_images(&["hello".into()]).unwrap_err();
        assert!(
            e.contains("t.toml:9: image `netdrv` is not a guest crate"),
            "{e}"
        );

        std::fs::remove_file(dir.join("netdrv")).unwrap();
        let e = s.pack(&dir).unwrap_err();
        assert!(
            e.contains("t.toml:9: guest image `netdrv` not found"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
