//! Virtual block devices, the frontend (`BLK-*`, `docs/abi/blk.md`;
//! guide: `docs/guest-guide.md`, "Virtual disks").
//!
//! A guest's disks are listed in its start info (from the manifest's
//! `[[guest.vblk]]`); each is served by a driver domain over a one-page
//! ring the guest grants it. This module has two layers:
//!
//! * [`Core`]: the protocol, pure and host-tested: request ids, grants of
//!   the data frames (writable for a read, read-only for a write), the ring
//!   (up to [`RING_DEPTH`] requests in flight, batched: one event per
//!   [`Core::kick`] at most, and only if the backend asked), and the
//!   checks on every response. The backend is not trusted: a response with
//!   an id not outstanding or a different op is [`VblkError::BadResponse`]
//!   and disconnects the disk (its requests then fail, none hangs), a status the spec does not define is
//!   [`VblkError::BadStatus`], an insane ring index disconnects
//!   ([`VblkError::Disconnected`]) and fails every outstanding request.
//!   Never a panic.
//! * `Vblk` (the guest-facing handle, in the target build) owns the ring
//!   page and the data [`Buffer`]s while requests are in flight, so a guest
//!   can only hand the backend frames it owns and cannot touch them while
//!   the backend may write them.
#![deny(unsafe_code)] // one exception: `ring_page`, with its SAFETY note.

use alloc::vec::Vec;

use hypercall_abi::args::BlockResult;
use hypercall_abi::blk::{
    BlkRing, Request, Response, Segment, Status, MAX_SEGMENTS, OP_FLUSH, OP_READ, OP_WRITE,
    RING_DEPTH, SECTORS_PER_PAGE,
};
use hypercall_abi::Error;

use hypercall_abi::layout::{VBLK_READONLY, VBLK_ROLE_FRONTEND};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::event::{self, DomId, Port};
use crate::grant::GrantRef;
use crate::ring::{FrontEnd, RingError, RingPage, SharedPage};

/// What the frontend needs from the hypervisor, behind a trait so that the
/// protocol is host-tested: grants of data frames and the disk's event.
pub trait Host {
    /// Grants frame `mfn` (the guest's own) to the backend, read-only or
    /// writable (`GNT-1`); the reference.
    fn grant(&mut self, mfn: u64, readonly: bool) -> Result<u32, Error>;
    /// Ends grant `gref` (`GNT-2`).
    fn revoke(&mut self, gref: u32) -> Result<(), Error>;
    /// Sends the disk's event to the backend (`EVT-4`).
    fn notify(&mut self) -> Result<(), Error>;
}

/// Sectors `first_sect..=last_sect` of the guest's frame `mfn`: one
/// segment of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRef {
    /// The frame (the guest's own; the hypervisor refuses to grant others).
    pub mfn: u64,
    /// First sector used (`0..=7`).
    pub first_sect: u8,
    /// Last sector used (`first_sect..=7`).
    pub last_sect: u8,
}

impl PageRef {
    /// The whole frame.
    pub const fn whole(mfn: u64) -> PageRef {
        PageRef {
            mfn,
            first_sect: 0,
            last_sect: SECTORS_PER_PAGE - 1,
        }
    }
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VblkError {
    /// The backend answered with a documented error status (`BLK-4`).
    Refused(Status),
    /// The backend answered with a status the spec does not define.
    BadStatus(i16),
    /// A response named no outstanding request (unknown id, or a different
    /// op than the request's): the backend is broken and the disk is
    /// disconnected ([`Core::fail_all`] ends the outstanding requests).
    BadResponse {
        /// The id the backend wrote.
        id: u64,
    },
    /// The ring is broken or the backend gone: every outstanding request
    /// failed with this, and new ones are refused.
    Disconnected,
    /// Every slot is in use: complete a request first.
    Busy,
    /// The request is malformed on this side (no pages or too many, bad
    /// sectors, past the disk, or a write to a read-only disk); nothing was
    /// sent.
    Invalid,
    /// The hypervisor refused to grant a page; nothing was sent.
    Grant(Error),
}

impl core::fmt::Display for VblkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VblkError::Refused(s) => write!(f, "refused by the backend: {s}"),
            VblkError::BadStatus(c) => write!(f, "backend answered undefined status {c}"),
            VblkError::BadResponse { id } => write!(f, "backend answered unknown id {id:#x}"),
            VblkError::Disconnected => f.write_str("disk disconnected (backend gone or broken)"),
            VblkError::Busy => f.write_str("ring full: complete a request first"),
            VblkError::Invalid => f.write_str("malformed request (sectors, pages or read-only)"),
            VblkError::Grant(e) => write!(f, "grant refused: {e}"),
        }
    }
}

/// A request in flight, as [`Core::read`], [`Core::write`] or
/// [`Core::flush`] returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag(pub u64);

impl Tag {
    /// The ring slot the request's bookkeeping uses (`0..RING_DEPTH`).
    pub fn slot(self) -> usize {
        usize::try_from(self.0 & 0xff).unwrap_or(usize::MAX)
    }
}

/// A finished request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// Which.
    pub tag: Tag,
    /// How it ended.
    pub result: Result<(), VblkError>,
    /// A data grant could not be revoked (the backend holds it mapped,
    /// which `BLK-2` forbids): the frames must never be reused.
    pub leaked: bool,
    /// Per segment, the persistent page it used ([`NOT_POOLED`] for none):
    /// a read's data is there, to copy out before the next submit reuses
    /// the page (`BLK-2b`).
    pub pooled: [u8; MAX_SEGMENTS],
}

/// What a disk offers (from the start info).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Sectors.
    pub capacity: u64,
    /// Writes are refused.
    pub readonly: bool,
}

/// [`Done::pooled`] and [`Core::pooled`] for a segment that used no
/// persistent page.
pub const NOT_POOLED: u8 = u8::MAX;

/// Most persistent pages a disk may have ([`Core::set_pool`]): pool
/// indices are bytes, [`NOT_POOLED`] excluded.
pub const MAX_POOL: usize = NOT_POOLED as usize;

#[derive(Clone, Copy, Debug)]
struct Slot {
    busy: bool,
    gen: u32,
    op: u8,
    grefs: [u32; MAX_SEGMENTS],
    nr: usize,
    /// Per segment, the persistent page it uses, or [`NOT_POOLED`] (its
    /// grant is the request's own, revoked at completion).
    pooled: [u8; MAX_SEGMENTS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            busy: false,
            gen: 0,
            op: 0,
            grefs: [0; MAX_SEGMENTS],
            nr: 0,
            pooled: [NOT_POOLED; MAX_SEGMENTS],
        }
    }
}

/// The frontend protocol over a ring page `M` and a hypervisor `H`.
#[derive(Debug)]
pub struct Core<M: SharedPage, H: Host> {
    ring: FrontEnd<BlkRing, M>,
    host: H,
    geo: Geometry,
    slots: [Slot; RING_DEPTH as usize],
    in_flight: u32,
    dead: bool,
    /// Persistent pages (`BLK-2b`): their references, granted writable to
    /// the backend once by the caller ([`Core::set_pool`]).
    pool: Vec<u32>,
    /// Indices of `pool` no request in flight uses.
    pool_free: Vec<u8>,
    /// Grants made per request (none while the pool has room).
    grants: u64,
}

impl<M: SharedPage, H: Host> Core<M, H> {
    /// Initialises the ring in `mem` (the page the caller then grants to
    /// the backend at the disk's well-known reference, `BLK-2`).
    pub fn new(mem: M, host: H, geo: Geometry) -> Self {
        Core {
            ring: FrontEnd::init(mem),
            host,
            geo,
            slots: [Slot::default(); RING_DEPTH as usize],
            in_flight: 0,
            dead: false,
            pool: Vec::new(),
            pool_free: Vec::new(),
            grants: 0,
        }
    }

    /// Persistent pages (`BLK-2b`): `grefs` are references to frames of the
    /// caller's that it granted **writable** to the backend once and keeps
    /// granted while the disk is open (at most [`MAX_POOL`]; more are
    /// ignored). From then on a request whose segments all find a free
    /// persistent page names those pages instead of granting its own
    /// frames, and the caller moves the data: into the pages before
    /// [`Core::kick`] for a write, out of them when a read is [`Done`]
    /// ([`Core::pooled`], [`Done::pooled`] say which page a segment uses).
    /// A request that finds too few free pages grants its own frames as
    /// before. Replaces an earlier pool only when nothing is in flight.
    pub fn set_pool(&mut self, grefs: Vec<u32>) -> bool {
        if self.in_flight != 0 {
            return false;
        }
        let mut grefs = grefs;
        grefs.truncate(MAX_POOL);
        self.pool_free = (0..grefs.len())
            .rev()
            .map(|i| u8::try_from(i).unwrap_or(0))
            .collect();
        self.pool = grefs;
        true
    }

    /// The persistent pages (their references), in pool order.
    pub fn pool(&self) -> &[u32] {
        &self.pool
    }

    /// Grants made for single requests since the disk was opened: 0 while
    /// every request found room in the persistent pages.
    pub fn request_grants(&self) -> u64 {
        self.grants
    }

    /// For an outstanding request, the persistent page each segment uses
    /// ([`NOT_POOLED`] for none, and past its segments).
    pub fn pooled(&self, tag: Tag) -> Option<[u8; MAX_SEGMENTS]> {
        self.is_outstanding(tag)
            .then(|| self.slots[tag.slot()].pooled)
    }

    /// The disk.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// The host (for the caller's own hypercalls).
    pub fn host(&mut self) -> &mut H {
        &mut self.host
    }

    /// The host, to read.
    pub fn host_ref(&self) -> &H {
        &self.host
    }

    /// Requests submitted and not completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Whether the disk was disconnected.
    pub fn is_disconnected(&self) -> bool {
        self.dead
    }

    /// Whether `tag` is outstanding.
    pub fn is_outstanding(&self, tag: Tag) -> bool {
        self.slots
            .get(tag.slot())
            .is_some_and(|s| s.busy && u64::from(s.gen) == tag.0 >> 8)
    }

    /// Queues a read of `pages` from `sector` (unpublished until
    /// [`Core::kick`]).
    pub fn read(&mut self, sector: u64, pages: &[PageRef]) -> Result<Tag, VblkError> {
        self.check(OP_READ, sector, pages)?;
        self.submit_unchecked(OP_READ, sector, pages)
    }

    /// Queues a write of `pages` at `sector`.
    pub fn write(&mut self, sector: u64, pages: &[PageRef]) -> Result<Tag, VblkError> {
        self.check(OP_WRITE, sector, pages)?;
        self.submit_unchecked(OP_WRITE, sector, pages)
    }

    /// Queues a flush: it completes once every write completed before it
    /// was submitted is durable (`BLK-6`).
    pub fn flush(&mut self) -> Result<Tag, VblkError> {
        self.submit_unchecked(OP_FLUSH, 0, &[])
    }

    fn check(&self, op: u8, sector: u64, pages: &[PageRef]) -> Result<(), VblkError> {
        if pages.is_empty() || pages.len() > MAX_SEGMENTS {
            return Err(VblkError::Invalid);
        }
        let mut sectors = 0u64;
        for p in pages {
            if p.first_sect > p.last_sect || p.last_sect >= SECTORS_PER_PAGE {
                return Err(VblkError::Invalid);
            }
            sectors += u64::from(p.last_sect - p.first_sect) + 1;
        }
        let past = sector
            .checked_add(sectors)
            .is_none_or(|end| end > self.geo.capacity);
        if past || (op == OP_WRITE && self.geo.readonly) {
            return Err(VblkError::Invalid);
        }
        Ok(())
    }

    /// Queues request `op` as given, without this side's checks of the
    /// sectors, page count and read-only flag, so that the backend's own
    /// checks can be tested (`BLK-5*`). More than [`MAX_SEGMENTS`] pages is
    /// still refused (the request has no room for them). Frames are still
    /// granted by the hypervisor, which refuses frames the guest does not
    /// own.
    pub fn submit_unchecked(
        &mut self,
        op: u8,
        sector: u64,
        pages: &[PageRef],
    ) -> Result<Tag, VblkError> {
        if self.dead {
            return Err(VblkError::Disconnected);
        }
        if pages.len() > MAX_SEGMENTS {
            return Err(VblkError::Invalid);
        }
        if self.ring.free_slots() == 0 {
            return Err(VblkError::Busy);
        }
        let index = self
            .slots
            .iter()
            .position(|s| !s.busy)
            .ok_or(VblkError::Busy)?;
        let readonly = op != OP_READ;
        let mut slot = Slot {
            busy: true,
            gen: self.slots[index].gen.wrapping_add(1),
            op,
            ..Slot::default()
        };
        let tag = Tag(u64::from(slot.gen) << 8 | index as u64);
        let mut req = Request::new(op, tag.0, sector);
        // All segments on persistent pages, or none (BLK-2b).
        let pooled = !pages.is_empty() && pages.len() <= self.pool_free.len();
        for (i, p) in pages.iter().enumerate() {
            let gref = if pooled {
                let k = self.pool_free.pop().unwrap_or(0);
                slot.pooled[i] = k;
                self.pool[usize::from(k)]
            } else {
                self.grants += 1;
                match self.host.grant(p.mfn, readonly) {
                    Ok(gref) => gref,
                    Err(e) => {
                        self.revoke_all(&slot);
                        if e == Error::NotFound {
                            // The grantee does not exist (GNT-1): the
                            // backend is gone.
                            self.dead = true;
                            return Err(VblkError::Disconnected);
                        }
                        return Err(VblkError::Grant(e));
                    }
                }
            };
            slot.grefs[i] = gref;
            slot.nr = i + 1;
            req.seg[i] = Segment {
                gref,
                first_sect: p.first_sect,
                last_sect: p.last_sect,
                reserved: 0,
            };
        }
        req.nr_segments = u8::try_from(slot.nr).unwrap_or(0);
        if let Err(e) = self.ring.push_request(&req) {
            self.revoke_all(&slot);
            return Err(match e {
                RingError::Full => VblkError::Busy,
                _ => VblkError::Disconnected,
            });
        }
        self.slots[index] = slot;
        self.in_flight += 1;
        Ok(tag)
    }

    /// Revokes a slot's own grants and gives its persistent pages back to
    /// the pool; `true` if a grant could not be revoked.
    fn revoke_all(&mut self, slot: &Slot) -> bool {
        let mut leaked = false;
        for (&g, &k) in slot.grefs[..slot.nr].iter().zip(&slot.pooled) {
            if k != NOT_POOLED {
                self.pool_free.push(k);
                continue;
            }
            if self.host.revoke(g).is_err() {
                leaked = true;
            }
        }
        leaked
    }

    /// Publishes the queued requests, with one event if the backend asked
    /// for one (`RING-2`).
    pub fn kick(&mut self) -> Result<(), VblkError> {
        if self.dead {
            return Err(VblkError::Disconnected);
        }
        match self.ring.publish() {
            Ok(true) => self.host.notify().map_err(|_| VblkError::Disconnected),
            Ok(false) => Ok(()),
            Err(_) => Err(VblkError::Disconnected),
        }
    }

    /// The next finished request, if a response is waiting. `Err` once the
    /// backend broke the protocol ([`VblkError::BadResponse`], insane
    /// indices) and after: then [`Core::fail_all`] ends the outstanding
    /// requests.
    pub fn poll(&mut self) -> Result<Option<Done>, VblkError> {
        if self.dead {
            return Err(VblkError::Disconnected);
        }
        let rsp = match self.ring.take_response() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(_) => {
                self.dead = true;
                return Err(VblkError::Disconnected);
            }
        };
        self.complete(&rsp).map(Some)
    }

    fn complete(&mut self, rsp: &Response) -> Result<Done, VblkError> {
        let tag = Tag(rsp.id);
        let bad = VblkError::BadResponse { id: rsp.id };
        // A response that answers nothing outstanding took a slot of the
        // ring's budget: the backend is broken, and a real answer may never
        // come, so disconnect rather than hang (Xen XSA-396).
        if !self.is_outstanding(tag) || self.slots[tag.slot()].op != rsp.op {
            self.dead = true;
            return Err(bad);
        }
        let slot = self.slots[tag.slot()];
        let leaked = self.revoke_all(&slot);
        self.slots[tag.slot()].busy = false;
        self.in_flight -= 1;
        let result = match Status::from_code(rsp.status) {
            Some(Status::Ok) => Ok(()),
            Some(s) => Err(VblkError::Refused(s)),
            None => Err(VblkError::BadStatus(rsp.status)),
        };
        Ok(Done {
            tag,
            result,
            leaked,
            pooled: slot.pooled,
        })
    }

    /// Before sleeping: `true` if a response is waiting; otherwise asks the
    /// backend for an event at the next response (`RING-3`). A broken ring
    /// disconnects (`Err`).
    pub fn final_check(&mut self) -> Result<bool, VblkError> {
        if self.dead {
            return Err(VblkError::Disconnected);
        }
        self.ring.final_check().map_err(|_| {
            self.dead = true;
            VblkError::Disconnected
        })
    }

    /// Disconnects (the backend is gone or broken) and finishes every
    /// outstanding request with [`VblkError::Disconnected`], calling `done`
    /// for each.
    pub fn fail_all(&mut self, mut done: impl FnMut(Done)) {
        self.dead = true;
        for i in 0..self.slots.len() {
            let slot = self.slots[i];
            if !slot.busy {
                continue;
            }
            let leaked = self.revoke_all(&slot);
            self.slots[i].busy = false;
            self.in_flight -= 1;
            done(Done {
                tag: Tag(u64::from(slot.gen) << 8 | i as u64),
                result: Err(VblkError::Disconnected),
                leaked,
                pooled: slot.pooled,
            });
        }
    }
}

// ---------------------------------------------------------------------------
mod device;
mod pool;
pub use device::{Buffer, Completion, Hyper, Vblk, POOL_PAGES, PROBE_NS};

#[cfg(test)]
mod tests;
