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

use hypercall_abi::layout::{CHANNEL_NAME_LEN, MAX_NAMED_CHANNELS};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `b"TAHOMAPK"`.
pub const MAGIC: [u8; 8] = *b"TAHOMAPK";
/// Format version understood by this code (2: channel records).
pub const VERSION: u32 = 2;
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
    /// Reserved, zero.
    pub reserved: u32,
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
    /// Reserved, zero.
    pub reserved: [u32; 18],
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
        if header.channel_count > MAX_CHANNELS || header.reserved != 0 {
            return Err(PackError::OutOfBounds);
        }
        table_bounds(
            bytes.len(),
            header.channels_offset,
            header.channel_count,
            64,
        )?;
        check_channels(&pack)?;
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
        self.bytes
            .get(b.offset as usize..(b.offset + b.size) as usize)
    }

    /// The scenario's name, if the pack carries one.
    pub fn scenario(&self) -> Option<&'a str> {
        if self.header.scenario_blob == 0 {
            return None;
        }
        core::str::from_utf8(self.blob(self.header.scenario_blob - 1)?).ok()
    }
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
            index: i as u32,
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
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a blob and returns its index.
    pub fn blob(&mut self, bytes: &[u8]) -> u32 {
        self.blobs.push(bytes.to_vec());
        (self.blobs.len() - 1) as u32
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
            reserved: [0; 18],
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

    /// Lays the pack out and returns its bytes.
    pub fn finish(&self) -> alloc::vec::Vec<u8> {
        let align = |x: usize| (x + 15) & !15;
        let domains_offset = 64;
        let blobs_offset = domains_offset + self.domains.len() * 128;
        let channels_offset = blobs_offset + self.blobs.len() * 16;
        let mut data_offset = align(channels_offset + self.channels.len() * 64);
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
            domains_offset: domains_offset as u32,
            domain_count: self.domains.len() as u32,
            blobs_offset: blobs_offset as u32,
            blob_count: self.blobs.len() as u32,
            scenario_blob: self.scenario.map_or(0, |i| i + 1),
            channels_offset: channels_offset as u32,
            channel_count: self.channels.len() as u32,
            reserved: 0,
        };
        let mut out = alloc::vec![0u8; total];
        out[..64].copy_from_slice(header.as_bytes());
        for (i, d) in self.domains.iter().enumerate() {
            out[domains_offset + i * 128..][..128].copy_from_slice(d.as_bytes());
        }
        for (i, c) in self.channels.iter().enumerate() {
            out[channels_offset + i * 64..][..64].copy_from_slice(c.as_bytes());
        }
        for (i, (r, b)) in records.iter().zip(&self.blobs).enumerate() {
            out[blobs_offset + i * 16..][..16].copy_from_slice(r.as_bytes());
            out[r.offset as usize..][..b.len()].copy_from_slice(b);
        }
        let sum = checksum(&out, Some(CHECKSUM_OFFSET));
        out[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn header_channel_count_and_reserved_are_checked() {
        // A table of `count` all-zero records appended to the module.
        let with_table = |count: u32, reserved: u32| {
            let mut bytes = with_channels(&[]);
            let mut h = PackHeader::read_from_prefix(&bytes).unwrap().0;
            h.channels_offset = bytes.len() as u32;
            h.channel_count = count;
            h.reserved = reserved;
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
        assert_eq!(with_table(0, 0), Ok(()));
        assert_eq!(with_table(1, 0), zero_record);
        assert_eq!(with_table(MAX_CHANNELS, 0), zero_record);
        assert_eq!(with_table(MAX_CHANNELS + 1, 0), Err(PackError::OutOfBounds));
        assert_eq!(with_table(0, 1), Err(PackError::OutOfBounds));
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
}
