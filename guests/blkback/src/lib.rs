//! The block driver domain's parts as a library (`docs/io.md`): the
//! virtio-blk device (`dev`), the `virtio-drivers` Hal over the DMA region
//! (`hal`), the grant and interrupt calls (`hv`) and the serving loop
//! (`serve`). The `blkback` image (`main.rs`) runs them alone; the combined
//! driver domain `guests/driverdom` runs them beside `netback`'s switch in
//! one event loop.
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod dev;
pub mod hal;
pub mod hv;
pub mod serve;

/// What a device request belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Job {
    /// The direct measurement: the sector, to check a read.
    Direct(u64),
    /// A frontend's request: the disk's index in the server, the request.
    Serve(usize, guest_sdk::blkback::Valid),
}
