//! Page-table entries: the bits, the levels, and the per-level rules that
//! decide whether a guest may store a value in an entry.
//!
//! This file is the syntactic half of validation: it looks at one 64-bit
//! value and says "refused" (with the precise reason) or "it references this
//! frame, read-only or writable". Ownership and type accounting are the
//! semantic half, in [`super::validator`]. Spec: `docs/abi/mmu.md`, clauses
//! MMU-4 to MMU-10.

use super::error::MmError;
use crate::frames::Mfn;

// The entry format is part of the ABI: one definition, shared with guests.
pub use hypercall_abi::pte::{
    ACCESSED, AVAILABLE, DIRTY, ENTRIES, FIRST_HYPERVISOR_SLOT, GLOBAL, HIGH_BITS, NX, PCD,
    PRESENT, PS_OR_PAT, PWT, USER, WRITABLE,
};

/// A page-table level. L4 is the root (CR3 points at it); L1 maps 4 KiB pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// Maps 4 KiB pages.
    L1 = 1,
    /// Points at L1 tables (2 MiB per entry).
    L2 = 2,
    /// Points at L2 tables (1 GiB per entry).
    L3 = 3,
    /// The root: points at L3 tables (512 GiB per entry).
    L4 = 4,
}

impl Level {
    /// Every level, leaf first.
    pub const ALL: [Level; 4] = [Level::L1, Level::L2, Level::L3, Level::L4];

    /// The level a guest names by number (1..=4); anything else is refused.
    pub fn from_number(n: u64) -> Result<Level, MmError> {
        match n {
            1 => Ok(Level::L1),
            2 => Ok(Level::L2),
            3 => Ok(Level::L3),
            4 => Ok(Level::L4),
            _ => Err(MmError::BadLevel),
        }
    }

    /// The level of the tables this level's entries point at (`None` for L1,
    /// whose entries point at data).
    pub const fn below(self) -> Option<Level> {
        match self {
            Level::L1 => None,
            Level::L2 => Some(Level::L1),
            Level::L3 => Some(Level::L2),
            Level::L4 => Some(Level::L3),
        }
    }

    /// How many entries of a table at this level the guest controls: all of
    /// them, except in an L4, whose upper half is the hypervisor's (MMU-3).
    pub const fn guest_slots(self) -> usize {
        match self {
            Level::L4 => FIRST_HYPERVISOR_SLOT,
            _ => ENTRIES,
        }
    }

    /// The index into a table of this level that translates `va`.
    pub const fn index_of(self, va: u64) -> usize {
        let shift = 12 + 9 * (self as u32 - 1);
        ((va >> shift) & 0x1ff) as usize
    }
}

/// What a present, well-formed entry references.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The frame the entry points at.
    pub mfn: Mfn,
    /// Whether the entry grants write access (R/W set).
    pub writable: bool,
}

/// The syntactic rules for entries, fixed at boot from the CPU's
/// MAXPHYADDR and the size of the frame table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRules {
    /// Bits 12..MAXPHYADDR: where the frame address lives.
    addr_mask: u64,
}

impl EntryRules {
    /// Rules for a CPU with `max_phys_bits` physical address bits (32..=52).
    pub fn new(max_phys_bits: u8) -> Result<EntryRules, MmError> {
        if !(32..=52).contains(&max_phys_bits) {
            return Err(MmError::BadConfig);
        }
        let top = (1u64 << max_phys_bits) - 1;
        Ok(EntryRules {
            addr_mask: top & !0xfff,
        })
    }

    /// The address bits of an entry (bits 12..MAXPHYADDR).
    pub const fn addr_mask(&self) -> u64 {
        self.addr_mask
    }

    /// Checks one value a guest wants in a table of `level`.
    ///
    /// Returns `None` for a not-present entry (its other bits are the guest's
    /// to use, MMU-4) and the referenced frame otherwise. The frame number is
    /// not yet checked against the frame table; the validator does that.
    pub fn check(&self, level: Level, value: u64) -> Result<Option<Target>, MmError> {
        if value & PRESENT == 0 {
            return Ok(None);
        }
        // Bits that never have a meaning a guest may use at any level:
        // address bits above MAXPHYADDR (reserved, they fault), bits 52..=62
        // (ignored or protection keys; reserved by Tahoma for future use).
        let reserved = !self.addr_mask & !0xfff & !NX;
        if value & reserved != 0 {
            return Err(MmError::ReservedBits(value & reserved));
        }
        // Cache attributes would alias RAM with a type other than the
        // hypervisor's write-back direct map (XSA-402); G would let the
        // translation outlive a switch to another domain.
        let forbidden = match level {
            Level::L1 => PWT | PCD | PS_OR_PAT | GLOBAL,
            _ => PWT | PCD | GLOBAL | DIRTY,
        };
        if value & forbidden != 0 {
            return Err(MmError::ForbiddenBits(value & forbidden));
        }
        // PS: large pages are not validated, so they are refused (XSA-148).
        // In L1 the same bit is PAT, refused above.
        if level != Level::L1 && value & PS_OR_PAT != 0 {
            return Err(MmError::LargePage);
        }
        // The guest runs in ring 3: a supervisor-only mapping in the lower
        // half would be usable only by the hypervisor itself (SMEP/SMAP
        // bypass material), so U must be set (MMU-6).
        if value & USER == 0 {
            return Err(MmError::NotUser);
        }
        Ok(Some(Target {
            mfn: (value & self.addr_mask) >> 12,
            writable: value & WRITABLE != 0,
        }))
    }

    /// The frame a present entry points at, without checking its bits.
    ///
    /// Used only on entries already validated (to drop their references) and
    /// on the CPU-maintained A/D bits, which never change the address.
    pub const fn target_of(&self, value: u64) -> Option<Target> {
        if value & PRESENT == 0 {
            return None;
        }
        Some(Target {
            mfn: (value & self.addr_mask) >> 12,
            writable: value & WRITABLE != 0,
        })
    }
}
