//! The page-table entry format of direct paging (spec `docs/abi/mmu.md`,
//! MMU-4 .. MMU-10): guests write these values through `mmu_update`, and
//! the hypervisor's validator checks them bit by bit. x86-64 4-level
//! paging; the comments say which bits the validator refuses.

/// Entries per page-table frame.
pub const ENTRIES: usize = 512;
/// The first L4 slot that belongs to the hypervisor (MMU-3).
pub const FIRST_HYPERVISOR_SLOT: usize = 256;

/// P: the entry maps something.
pub const PRESENT: u64 = 1 << 0;
/// R/W: writes allowed through this entry.
pub const WRITABLE: u64 = 1 << 1;
/// U/S: ring 3 may use this entry (required on every present guest entry, MMU-6).
pub const USER: u64 = 1 << 2;
/// PWT: write-through caching (refused, MMU-5).
pub const PWT: u64 = 1 << 3;
/// PCD: caching disabled (refused, MMU-5).
pub const PCD: u64 = 1 << 4;
/// A: set by the CPU on use.
pub const ACCESSED: u64 = 1 << 5;
/// D: set by the CPU on write (leaf entries only; refused in L2..L4, MMU-5).
pub const DIRTY: u64 = 1 << 6;
/// PS in L2/L3 (a 2 MiB / 1 GiB leaf; refused, MMU-9); reserved in L4; PAT in L1.
pub const PS_OR_PAT: u64 = 1 << 7;
/// PS: the page-size bit of an L2..L4 entry.
pub const PS: u64 = PS_OR_PAT;
/// PAT: the same bit in an L1 entry (refused, MMU-5).
pub const PAT: u64 = PS_OR_PAT;
/// G: the translation survives CR3 loads (refused, MMU-5).
pub const GLOBAL: u64 = 1 << 8;
/// Bits 9..=11: ignored by the CPU, free for the guest.
pub const AVAILABLE: u64 = 0b111 << 9;
/// Bits 52..=62: ignored (52..=58) or protection keys (59..=62); refused (MMU-5).
pub const HIGH_BITS: u64 = 0x7ff << 52;
/// XD: no instruction fetch through this entry.
pub const NX: u64 = 1 << 63;
/// The frame-address field.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
