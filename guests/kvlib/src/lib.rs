//! The sample unikernel's logic, pure and host-tested (docs/kvstore.md).
//!
//! - [`store`]: a durable key-value store over a small [`store::BlockDevice`]
//!   trait: an append-only log of checksummed batches of records (key, value
//!   or tombstone, sequence number), the index rebuilt at open by scanning, a
//!   torn or corrupt tail detected and dropped, crash-safe compaction between
//!   two regions switched by a double superblock, and group commit (any
//!   number of staged writes, one write and one flush).
//! - [`cache`]: a bounded, write-through read cache of whole pages in front
//!   of any [`store::BlockDevice`] (the unikernel's vblk; Linux has its page
//!   cache).
//! - [`http`]: HTTP/1.1 over that store on `httparse`: the routes, the
//!   limits and their statuses, keep-alive and pipelining answered in order,
//!   timeouts for slow clients.
//!
//! `no_std` + `alloc`; the `std` feature is for an ordinary Linux build.
#![cfg_attr(not(any(test, feature = "std")), no_std)]

extern crate alloc;

pub mod cache;
pub mod http;
pub mod store;
