//! Tahoma's hypercall ABI: the single source of truth.
//!
//! Both the hypervisor and every guest compile against this crate, so the two
//! sides cannot drift. It holds:
//!
//! * [`ABI_VERSION`], versioned apart from the crate's semver;
//! * the hypercall numbers ([`Hypercall`]), each documented by a clause of the
//!   specification in `docs/abi/` (clause IDs such as `EVT-3`);
//! * the register convention and its encoding *and* decoding ([`regs`]);
//! * one module per hypercall family ([`base`], [`console`], [`sched`],
//!   [`time`], [`event`], [`trap`], [`mmu`], [`memory`]) holding each call's
//!   typed arguments ([`Args`]: `encode` for guests, `decode` for the
//!   hypervisor), so an argument's register position is written once;
//! * the error codes ([`Error`]).
//!
//! Principles: every hypercall has exactly one success shape and one failure
//! shape; numbers are never reused; layouts are `#[repr(C)]` with explicit
//! padding and asserted sizes.
#![no_std]
#![forbid(unsafe_code)]
// Guest-controlled words become narrower types only through checked
// conversions (`try_from`), never a silent `as` cast.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

// One module per hypercall family, named as in `docs/abi` and in the
// `Hypercall` table.
pub mod base;
pub mod blk;
pub mod console;
pub mod event;
pub mod grant;
pub mod io;
pub mod memory;
pub mod mmu;
pub mod sched;
pub mod time;
pub mod trap;

pub mod args;
pub mod call;
pub mod error;
pub mod layout;
pub mod net;
pub mod numbers;
pub mod pte;
pub mod regs;
pub mod ring;

pub use call::{Args, Call, Words};
pub use error::Error;
pub use numbers::Hypercall;

/// The ABI version: `major << 16 | minor`.
///
/// A guest and hypervisor agree when the majors are equal and the guest's
/// minor is not greater than the hypervisor's (spec clause `BASE-1`).
pub const ABI_VERSION: u32 = abi_version(1, 0);

/// Packs a major and minor number into an ABI version word.
pub const fn abi_version(major: u16, minor: u16) -> u32 {
    ((major as u32) << 16) | minor as u32
}

/// The major half of an ABI version word.
pub const fn abi_major(version: u32) -> u16 {
    (version >> 16) as u16
}

/// The minor half of an ABI version word.
pub const fn abi_minor(version: u32) -> u16 {
    let b = version.to_le_bytes();
    u16::from_le_bytes([b[0], b[1]])
}

/// Whether a guest built for `guest` may run on a hypervisor speaking `hv`.
pub const fn abi_compatible(guest: u32, hv: u32) -> bool {
    abi_major(guest) == abi_major(hv) && abi_minor(guest) <= abi_minor(hv)
}

/// Size of a page and of a frame, in bytes.
pub const PAGE_SIZE: usize = 4096;
