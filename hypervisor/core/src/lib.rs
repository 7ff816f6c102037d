//! The hypervisor's pure logic, tested on the host with `cargo test`.
//!
//! Everything here is plain computation over plain data: no registers, no
//! physical memory, no `unsafe`. The hypervisor binary links this crate and
//! supplies the machine; the tests supply models. Isolation-critical logic
//! (page-table validation, frame accounting) lives here so it can be
//! property-tested and fuzzed as the very code that runs in ring 0.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
// Narrowing a value (often a guest's) goes through a checked `try_from`.
// (Test code builds its models freely.)
#![cfg_attr(
    not(test),
    deny(clippy::cast_possible_truncation, clippy::cast_sign_loss)
)]

extern crate alloc;

pub mod bootpack;
pub mod conring;
pub mod console;
pub mod event;
pub mod frames;
pub mod grant;
pub mod io;
pub mod loader;
pub mod memmap;
pub mod mm;
pub mod named;
pub mod sched;
