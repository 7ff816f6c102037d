//! The Tahoma guest SDK: everything a guest needs between `_start` and `main`.
//!
//! A guest is a `#![no_std]`, `#![no_main]` binary for `x86_64-unknown-none`
//! that names its entry with [`entry!`]:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! guest_sdk::entry!(main);
//! fn main(si: &guest_sdk::StartInfo) -> i32 {
//!     guest_sdk::println!("hello from {}", si.name());
//!     0
//! }
//! ```
//!
//! The SDK provides `_start`, checks the start-info page and the ABI version,
//! sets up the heap (`alloc` works), the console `log` backend, the event
//! upcall and a callback stack, runs `main`, and shuts the domain down with
//! its exit code. A panic prints its message and location and shuts down with
//! reason `crash`.
//!
//! Design principles:
//!
//! * The ABI lives in [`hypercall_abi`] only; the SDK takes every number,
//!   layout and error from it (re-exported as [`abi`]).
//! * `unsafe` is confined to named places: [`raw`] (the `syscall` stub),
//!   `arch` (the entry points in assembly), `shared` (the shared-info page),
//!   [`upcall`] (calls that transfer control), [`trap`] (the handler kept
//!   as one atomic word), and the runtime (start-info read, heap). Everything else is safe wrappers.
//! * Pure logic (the pending-bit scan, start-info decoding, the clock
//!   formula) compiles on the host, so `cargo test -p guest-sdk` checks it.
//! * Shared memory is never a Rust `&mut`: the shared-info page is reached
//!   through atomics only.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
// Values read from the hypervisor (result words, start-info and shared-info
// fields) become narrower types only through checked conversions.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
#![warn(missing_docs)]

extern crate alloc;

pub use hypercall_abi as abi;
pub use hypercall_abi::layout::UpcallFrame;
pub use hypercall_abi::Error;

pub mod base;
pub mod blkback;
pub mod console;
pub mod dma;
pub mod event;
#[cfg(test)]
mod fake;
pub mod grant;
pub mod io;
pub mod memory;
pub mod mmu;
pub mod paging;
pub mod raw;
pub mod ring;
pub mod sched;
mod shared;
pub mod stack;
mod start;
pub mod time;
pub mod trap;
pub mod upcall;
pub mod vblk;
pub mod vnic;

#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod rt;

#[cfg(target_os = "none")]
pub use rt::{heap_grown, heap_usage, stack_floor_page, STACK_RESERVE_PAGES};

pub use event::{DomId, Port};
pub use start::{start_info, Channel, StartInfo, VblkEntry, VblkRole, Vnic, VnicRole};

pub use base::abi_version;

/// An ABI constant (a `u64`) as a `usize`: checked where the constant is
/// evaluated, at compile time, so no value is ever cut short.
pub(crate) const fn usize_const(v: u64) -> usize {
    assert!(v <= usize::MAX as u64, "an ABI constant does not fit usize");
    #[allow(clippy::cast_possible_truncation)] // checked just above
    let r = v as usize;
    r
}

/// Names the guest's `main`: `guest_sdk::entry!(main);` with
/// `fn main(si: &guest_sdk::StartInfo) -> i32`.
///
/// The SDK's `_start` runs its initialisation, then calls `main`; when `main`
/// returns `code`, the domain shuts down with reason `poweroff` and that
/// exit code (0 = success). Use it exactly once, in the binary crate.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// The guest's entry, called by the SDK runtime after initialisation.
        #[unsafe(no_mangle)]
        fn __tahoma_guest_main(start_info: &$crate::StartInfo) -> i32 {
            let main: fn(&$crate::StartInfo) -> i32 = $main;
            main(start_info)
        }
    };
}
