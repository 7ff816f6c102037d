//! The PVH `hvm_start_info` handed over by the boot loader (QEMU or Xen).
//!
//! Layout from Xen's public `arch-x86/hvm/start_info.h` (version 1). The
//! structures are read once, at boot, through the direct map and copied.
#![forbid(unsafe_code)]

use alloc::string::String;
use alloc::vec::Vec;
use tahoma_core::memmap::{Kind, Range};
use zerocopy::{FromBytes, Immutable, KnownLayout};

/// `hvm_start_info.magic`.
pub const MAGIC: u32 = 0x336e_c578;

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct ModListEntry {
    paddr: u64,
    size: u64,
    cmdline_paddr: u64,
    reserved: u64,
}

#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct MemMapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// What the boot loader told us, copied out of its structures.
#[derive(Debug)]
pub struct BootInfo {
    /// The firmware memory map.
    pub memmap: Vec<(Range, Kind)>,
    /// The hypervisor's command line.
    pub cmdline: String,
    /// The first boot module (the boot pack), if any.
    pub module: Option<Range>,
    /// Physical ranges the boot structures occupy (kept out of the allocator).
    pub boot_ranges: Vec<Range>,
}

/// Why the start info could not be used.
#[derive(Debug)]
pub enum BootInfoError {
    /// `ebx` did not point at a PVH start info.
    BadMagic(u32),
    /// No memory map (version 0 start info).
    NoMemoryMap,
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootInfoError::BadMagic(m) => {
                write!(f, "magic {m:#x} is not hvm_start_info's {MAGIC:#x}")
            }
            BootInfoError::NoMemoryMap => write!(f, "no memory map (start info version 0)"),
        }
    }
}

/// Reads `T` at physical address `pa` (through the direct map).
fn read_phys<T: FromBytes>(pa: u64) -> T {
    let len = core::mem::size_of::<T>();
    let bytes = crate::mem::phys_slice(pa, len as u64);
    T::read_from_bytes(bytes).unwrap_or_else(|_| unreachable!("slice has the exact length"))
}

fn read_cstr(pa: u64, max: usize) -> String {
    let bytes = crate::mem::phys_slice(pa, max as u64);
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(max);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Parses the start info at `pa`.
pub fn parse(pa: u64) -> Result<BootInfo, BootInfoError> {
    let si: StartInfo = read_phys(pa);
    if si.magic != MAGIC {
        return Err(BootInfoError::BadMagic(si.magic));
    }
    if si.version < 1 || si.memmap_entries == 0 {
        return Err(BootInfoError::NoMemoryMap);
    }
    let mut boot_ranges = alloc::vec![Range::new(pa, core::mem::size_of::<StartInfo>() as u64)];
    let memmap = (0..u64::from(si.memmap_entries))
        .map(|i| {
            let e: MemMapEntry = read_phys(si.memmap_paddr + i * 24);
            (Range::new(e.addr, e.size), Kind::from_e820(e.kind))
        })
        .filter(|(r, _)| !r.is_empty())
        .collect();
    boot_ranges.push(Range::new(
        si.memmap_paddr,
        u64::from(si.memmap_entries) * 24,
    ));
    let cmdline = if si.cmdline_paddr != 0 {
        boot_ranges.push(Range::new(si.cmdline_paddr, 4096));
        read_cstr(si.cmdline_paddr, 4096)
    } else {
        String::new()
    };
    let module = if si.nr_modules > 0 && si.modlist_paddr != 0 {
        boot_ranges.push(Range::new(si.modlist_paddr, 32));
        let m: ModListEntry = read_phys(si.modlist_paddr);
        Some(Range::new(m.paddr, m.size))
    } else {
        None
    };
    Ok(BootInfo {
        memmap,
        cmdline,
        module,
        boot_ranges,
    })
}

impl BootInfo {
    /// The value of `key=value` on the command line, if present.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    }
}
