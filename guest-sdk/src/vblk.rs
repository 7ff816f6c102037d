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

/// A request in flight, as [`Core::submit`] returned it.
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
// The guest-facing handle.

/// One page of a [`Buffer`]: page-aligned, so each is exactly one frame.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, align(4096))]
struct PageBytes([u8; PAGE]);

const PAGE: usize = hypercall_abi::PAGE_SIZE;

/// Whole pages of this guest's memory to read into or write from: the
/// only memory [`Vblk`] hands to the backend, so a guest cannot name a
/// frame it does not own. While a request is in flight the `Vblk` holds
/// the buffer, and gives it back with the [`Completion`].
pub struct Buffer {
    pages: Vec<PageBytes>,
    mfns: Vec<u64>,
}

impl core::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Buffer({} pages)", self.pages.len())
    }
}

impl Buffer {
    /// `pages` zeroed pages (1..=11 for one request); `NotFound` if a page's
    /// frame cannot be found (the SDK's paging is not ready).
    pub fn new(pages: usize) -> Result<Buffer, Error> {
        let pages: Vec<PageBytes> = (0..pages).map(|_| PageBytes([0; PAGE])).collect();
        let mfns = pages
            .iter()
            .map(|p| {
                crate::paging::translate(p as *const PageBytes as u64)
                    .map(|(mfn, _)| mfn)
                    .ok_or(Error::NotFound)
            })
            .collect::<Result<Vec<u64>, Error>>()?;
        Ok(Buffer { pages, mfns })
    }

    /// Pages.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Sectors (8 per page).
    pub fn sectors(&self) -> u64 {
        self.pages.len() as u64 * u64::from(SECTORS_PER_PAGE)
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        self.pages.as_slice().as_bytes()
    }

    /// The bytes, to fill before a write or read after a read.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        self.pages.as_mut_slice().as_mut_bytes()
    }

    /// The frame of page `i`.
    pub fn mfn(&self, i: usize) -> Option<u64> {
        self.mfns.get(i).copied()
    }

    fn refs(&self) -> Vec<PageRef> {
        self.mfns.iter().map(|&m| PageRef::whole(m)).collect()
    }
}

/// A finished request and, for a read or write, its buffer back.
#[derive(Debug)]
pub struct Completion {
    /// Which request.
    pub tag: Tag,
    /// How it ended.
    pub result: Result<(), VblkError>,
    /// The buffer it used (`None` for a flush, or if a grant of it could
    /// not be revoked: then its frames are kept away from reuse for good).
    pub buffer: Option<Buffer>,
}

/// The real hypervisor for one disk: grants to its backend, events on its
/// port.
#[derive(Debug)]
pub struct Hyper {
    backend: u16,
    port: Port,
    events: u64,
}

impl Host for Hyper {
    fn grant(&mut self, mfn: u64, readonly: bool) -> Result<u32, Error> {
        crate::grant::grant_access(mfn, DomId(self.backend), readonly).map(|g| g.0)
    }
    fn revoke(&mut self, gref: u32) -> Result<(), Error> {
        crate::grant::revoke(GrantRef(gref))
    }
    fn notify(&mut self) -> Result<(), Error> {
        self.events += 1;
        event::send(self.port)
    }
}

/// How long [`Vblk::wait`] sleeps, by default, before checking that the
/// backend is still there (its port still connected).
pub const PROBE_NS: u64 = 100_000_000;

fn on_disk_event(_: Port) {}

/// Persistent pages [`Vblk::open`] grants its backend (`BLK-2b`): one per
/// slot, so that a ring of one-page requests never grants per request.
pub const POOL_PAGES: usize = RING_DEPTH as usize;

/// A persistent page (`BLK-2b`): a leaked, page-aligned [`PageBytes`] box
/// granted writable to the backend, which may write it at any time, so this
/// side never makes a Rust reference to it: only word-wise volatile copies
/// in and out ([`pool_put`], [`pool_get`]).
#[derive(Debug)]
struct PoolPage {
    va: u64,
    gref: u32,
}

/// A virtual disk of this guest, connected to its backend (`BLK-2`).
pub struct Vblk {
    core: Core<RingPage, Hyper>,
    port: Port,
    index: u32,
    ring_gref: u32,
    probe_ns: u64,
    probes: u64,
    bufs: Vec<Option<Buffer>>,
    /// Per slot: the request's op and the sectors used of each page (for
    /// the copies out of the persistent pages).
    shapes: Vec<(u8, u8, u8)>,
    pool: Vec<PoolPage>,
    ready: alloc::collections::VecDeque<Completion>,
}

impl core::fmt::Debug for Vblk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Vblk(disk {}, {:?})", self.index, self.core.geometry())
    }
}

impl Vblk {
    /// Opens this guest's disk `index` (its `index`-th `[[guest.vblk]]`):
    /// initialises a ring, grants it to the backend at reference `index`,
    /// and tells the backend (`BLK-2`). Requests can be queued at once;
    /// the backend answers once it has mapped the ring. `NotFound` if the
    /// start info has no such disk.
    pub fn open(index: u32) -> Result<Vblk, Error> {
        let si = crate::start_info();
        let n = usize::try_from(si.vblk_count)
            .unwrap_or(0)
            .min(si.vblks.len());
        let info = si.vblks[..n]
            .iter()
            .find(|v| v.role == VBLK_ROLE_FRONTEND && v.index == index)
            .ok_or(Error::NotFound)?;
        let geo = Geometry {
            capacity: info.capacity_sectors,
            readonly: info.flags & VBLK_READONLY != 0,
        };
        let port = Port(info.port);
        // The ring page is never freed (4 KiB per disk opened): the backend
        // may hold it mapped after this side is done with it.
        let ring: *mut PageBytes =
            alloc::boxed::Box::into_raw(alloc::boxed::Box::new(PageBytes([0; PAGE])));
        let va = ring as u64;
        let mfn = crate::paging::translate(va).ok_or(Error::NotFound)?.0;
        let page = ring_page(va).ok_or(Error::InvalidArgument)?;
        let host = Hyper {
            backend: info.peer_domain,
            port,
            events: 0,
        };
        let mut core = Core::new(page, host, geo);
        let ring_gref =
            crate::grant::grant_access_at(mfn, DomId(info.peer_domain), false, GrantRef(index))?.0;
        let pool = grant_pool(info.peer_domain, index);
        core.set_pool(pool.iter().map(|p| p.gref).collect());
        event::set_handler(port, on_disk_event);
        let _ = event::unmask(port);
        core.host().notify()?;
        Ok(Vblk {
            core,
            port,
            index,
            ring_gref,
            probe_ns: PROBE_NS,
            probes: 0,
            bufs: (0..RING_DEPTH).map(|_| None).collect(),
            shapes: (0..RING_DEPTH).map(|_| (0, 0, 0)).collect(),
            pool,
            ready: alloc::collections::VecDeque::new(),
        })
    }

    /// `(persistent pages granted at open, grants made for single requests
    /// since)` (`BLK-2b`): the second stays 0 while every request fits in
    /// the free persistent pages.
    pub fn grant_stats(&self) -> (usize, u64) {
        (self.pool.len(), self.core.request_grants())
    }

    /// The disk's size and read-only flag.
    pub fn geometry(&self) -> Geometry {
        self.core.geometry()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.core.in_flight()
    }

    /// `(events sent to the backend, waits that timed out and probed the
    /// backend)` so far: a batch costs one event (`RING-2`); a live
    /// backend's answers always come with an event (`RING-3`).
    pub fn stats(&self) -> (u64, u64) {
        (self.core.host_ref().events, self.probes)
    }

    /// How long [`Vblk::wait`] sleeps before it checks that the backend is
    /// still there ([`PROBE_NS`] by default): a dead backend is noticed
    /// within about this long.
    pub fn set_probe_ns(&mut self, ns: u64) {
        self.probe_ns = ns.max(1_000_000);
    }

    /// Whether the disk was disconnected (the backend gone or broken).
    pub fn is_disconnected(&self) -> bool {
        self.core.is_disconnected()
    }

    /// Queues a read of `buf.sectors()` sectors from `sector` into `buf`
    /// (published by [`Vblk::kick`]); on refusal the buffer comes back.
    pub fn submit_read(&mut self, sector: u64, buf: Buffer) -> Result<Tag, (VblkError, Buffer)> {
        let refs = buf.refs();
        let r = self.core.read(sector, &refs);
        self.hold(r, buf, (OP_READ, 0, SECTORS_PER_PAGE - 1))
    }

    /// Queues a write of `buf` at `sector`.
    pub fn submit_write(&mut self, sector: u64, buf: Buffer) -> Result<Tag, (VblkError, Buffer)> {
        let refs = buf.refs();
        let r = self.core.write(sector, &refs);
        self.hold(r, buf, (OP_WRITE, 0, SECTORS_PER_PAGE - 1))
    }

    /// Queues request `op` with sectors `first..=last` of each page of
    /// `buf`, skipping this side's checks, so the backend's are what
    /// answers (`BLK-5*` tests). The pages are still only `buf`'s.
    pub fn submit_unchecked(
        &mut self,
        op: u8,
        sector: u64,
        buf: Buffer,
        first: u8,
        last: u8,
    ) -> Result<Tag, (VblkError, Buffer)> {
        let refs: Vec<PageRef> = buf
            .mfns
            .iter()
            .map(|&mfn| PageRef {
                mfn,
                first_sect: first,
                last_sect: last,
            })
            .collect();
        let r = self.core.submit_unchecked(op, sector, &refs);
        self.hold(r, buf, (op, first, last))
    }

    /// Keeps `buf` while its request is in flight; a write's data goes into
    /// its persistent pages now, before [`Vblk::kick`] publishes it.
    fn hold(
        &mut self,
        r: Result<Tag, VblkError>,
        buf: Buffer,
        shape: (u8, u8, u8),
    ) -> Result<Tag, (VblkError, Buffer)> {
        match r {
            Ok(tag) => {
                if shape.0 == OP_WRITE {
                    self.stage(tag, &buf, shape);
                }
                self.shapes[tag.slot()] = shape;
                self.bufs[tag.slot()] = Some(buf);
                Ok(tag)
            }
            Err(e) => {
                if e == VblkError::Disconnected {
                    self.disconnect();
                }
                Err((e, buf))
            }
        }
    }

    /// Queues a flush (`BLK-6`).
    pub fn submit_flush(&mut self) -> Result<Tag, VblkError> {
        self.core.flush()
    }

    /// Publishes what was queued, with at most one event.
    pub fn kick(&mut self) -> Result<(), VblkError> {
        let r = self.core.kick();
        if r.is_err() {
            self.disconnect();
        }
        r
    }

    /// The byte range of each page a request of `shape` uses.
    fn span(shape: (u8, u8, u8)) -> Option<core::ops::Range<usize>> {
        let (_, first, last) = shape;
        (first <= last && last < SECTORS_PER_PAGE)
            .then(|| usize::from(first) * 512..(usize::from(last) + 1) * 512)
    }

    /// Copies a write's data into the persistent pages its segments use.
    fn stage(&self, tag: Tag, buf: &Buffer, shape: (u8, u8, u8)) {
        let (Some(pooled), Some(span)) = (self.core.pooled(tag), Self::span(shape)) else {
            return;
        };
        for (i, &k) in pooled.iter().enumerate().take(buf.pages()) {
            if let Some(p) = self.pool.get(usize::from(k)) {
                let start = i * PAGE;
                pool_put(
                    p,
                    span.start,
                    &buf.bytes()[start + span.start..start + span.end],
                );
            }
        }
    }

    fn finish(&mut self, d: Done) -> Completion {
        let mut buf = self.bufs.get_mut(d.tag.slot()).and_then(Option::take);
        let shape = self.shapes.get(d.tag.slot()).copied().unwrap_or((0, 0, 0));
        if let (Some(b), Some(span), true) = (
            buf.as_mut(),
            Self::span(shape),
            shape.0 == OP_READ && d.result.is_ok(),
        ) {
            // A read's data is in its persistent pages (BLK-2b): copy it
            // out before another request reuses them.
            for (i, &k) in d.pooled.iter().enumerate().take(b.pages()) {
                if let Some(p) = self.pool.get(usize::from(k)) {
                    let start = i * PAGE;
                    pool_get(
                        p,
                        span.start,
                        &mut b.bytes_mut()[start + span.start..start + span.end],
                    );
                }
            }
        }
        let buffer = if d.leaked {
            // The backend kept a grant mapped: the frames are never given
            // back to the allocator.
            core::mem::forget(buf);
            None
        } else {
            buf
        };
        Completion {
            tag: d.tag,
            result: d.result,
            buffer,
        }
    }

    fn disconnect(&mut self) {
        let mut done = Vec::new();
        self.core.fail_all(|d| done.push(d));
        for d in done {
            let c = self.finish(d);
            self.ready.push_back(c);
        }
    }

    /// A finished request, if one is ready; never blocks. A broken backend
    /// disconnects the disk: every outstanding request then comes back with
    /// [`VblkError::Disconnected`].
    pub fn poll(&mut self) -> Option<Completion> {
        if let Some(c) = self.ready.pop_front() {
            return Some(c);
        }
        match self.core.poll() {
            Ok(Some(d)) => Some(self.finish(d)),
            Ok(None) => None,
            Err(e) => {
                log::warn!("vblk {}: {e}; disconnecting", self.index);
                self.disconnect();
                self.ready.pop_front()
            }
        }
    }

    /// The next finished request, sleeping on the disk's event until one
    /// is (`RING-3`); `None` if nothing is in flight. Every
    /// [`PROBE_NS`] (see [`Vblk::set_probe_ns`]) without an answer, checks
    /// that the backend's port is still connected; if not, the disk is disconnected and the requests
    /// fail, so a dead backend never leaves the guest hanging.
    pub fn wait(&mut self) -> Option<Completion> {
        loop {
            if let Some(c) = self.poll() {
                return Some(c);
            }
            if self.core.in_flight() == 0 {
                return None;
            }
            match self.core.final_check() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(_) => {
                    self.disconnect();
                    continue;
                }
            }
            let deadline = crate::time::now_ns().saturating_add(self.probe_ns);
            if event::wait_until(deadline) == BlockResult::Deadline {
                self.probes += 1;
                if event::send(self.port).is_err() {
                    log::warn!(
                        "vblk {}: backend gone (port unbound); disconnecting",
                        self.index
                    );
                    self.disconnect();
                }
            }
        }
    }

    /// Waits for request `tag`, keeping other completions for
    /// [`Vblk::poll`].
    pub fn wait_for(&mut self, tag: Tag) -> Completion {
        let mut others = alloc::collections::VecDeque::new();
        let c = loop {
            match self.wait() {
                Some(c) if c.tag == tag => break c,
                Some(c) => others.push_back(c),
                None => {
                    break Completion {
                        tag,
                        result: Err(VblkError::Disconnected),
                        buffer: None,
                    }
                }
            }
        };
        others.append(&mut self.ready);
        self.ready = others;
        c
    }

    /// Reads `buf.sectors()` sectors at `sector` into `buf`, waiting.
    pub fn read(&mut self, sector: u64, buf: &mut Buffer) -> Result<(), VblkError> {
        self.sync(buf, |v, b| v.submit_read(sector, b))
    }

    /// Writes `buf` at `sector`, waiting for the answer (durable only
    /// after a [`Vblk::flush`], `BLK-6`).
    pub fn write(&mut self, sector: u64, buf: &mut Buffer) -> Result<(), VblkError> {
        self.sync(buf, |v, b| v.submit_write(sector, b))
    }

    fn sync(
        &mut self,
        buf: &mut Buffer,
        submit: impl FnOnce(&mut Vblk, Buffer) -> Result<Tag, (VblkError, Buffer)>,
    ) -> Result<(), VblkError> {
        let owned = core::mem::replace(
            buf,
            Buffer {
                pages: Vec::new(),
                mfns: Vec::new(),
            },
        );
        let tag = match submit(self, owned) {
            Ok(t) => t,
            Err((e, b)) => {
                *buf = b;
                return Err(e);
            }
        };
        self.kick()?;
        let c = self.wait_for(tag);
        if let Some(b) = c.buffer {
            *buf = b;
        }
        c.result
    }

    /// Flushes: every write answered before is durable when this returns
    /// `Ok` (`BLK-6`).
    pub fn flush(&mut self) -> Result<(), VblkError> {
        let tag = self.submit_flush()?;
        self.kick()?;
        self.wait_for(tag).result
    }
}

impl Drop for Vblk {
    fn drop(&mut self) {
        if self.core.in_flight() > 0 {
            // Requests in flight: the backend may still write their
            // buffers and the ring; keep them forever rather than free
            // memory someone else may write.
            for b in self.bufs.iter_mut() {
                core::mem::forget(b.take());
            }
            return;
        }
        // Refused while the backend still maps the ring (it unmaps when it
        // sees the frontend gone); the page is never freed either way.
        let _ = self.core.host().revoke(self.ring_gref);
        // The persistent pages go back to the heap once their grants are
        // gone; one the backend holds mapped (which BLK-2b forbids) stays
        // leaked, never reused.
        for p in core::mem::take(&mut self.pool) {
            if crate::grant::revoke(GrantRef(p.gref)).is_ok() {
                pool_free(p);
            }
        }
    }
}

/// Allocates and grants [`POOL_PAGES`] persistent pages writable to
/// `backend` (`BLK-2b`); fewer (logged) if memory or grants run out: the
/// requests that find no free page then grant their own frames.
fn grant_pool(backend: u16, index: u32) -> Vec<PoolPage> {
    let mut pool = Vec::new();
    for _ in 0..POOL_PAGES {
        let va = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(PageBytes([0; PAGE]))) as u64;
        let Some((mfn, _)) = crate::paging::translate(va) else {
            log::warn!(
                "vblk {index}: persistent page not translatable; using {} pages",
                pool.len()
            );
            break;
        };
        match crate::grant::grant_access(mfn, DomId(backend), false) {
            Ok(g) => pool.push(PoolPage { va, gref: g.0 }),
            Err(e) => {
                // Never granted: the page can go back.
                pool_free(PoolPage { va, gref: 0 });
                log::warn!(
                    "vblk {index}: persistent grant refused ({e}); using {} pages",
                    pool.len()
                );
                break;
            }
        }
    }
    pool
}

/// Copies `src` into persistent page `p` at `off` (both multiples of 8
/// bytes; anything else is ignored, never out of the page).
fn pool_put(p: &PoolPage, off: usize, src: &[u8]) {
    if !off.is_multiple_of(8) || !src.len().is_multiple_of(8) || off + src.len() > PAGE {
        return;
    }
    shared_copy(
        src.as_ptr(),
        (p.va as *mut u8).wrapping_add(off),
        src.len() / 8,
    );
}

/// Copies persistent page `p` at `off` into `dst` (as [`pool_put`]).
fn pool_get(p: &PoolPage, off: usize, dst: &mut [u8]) {
    if !off.is_multiple_of(8) || !dst.len().is_multiple_of(8) || off + dst.len() > PAGE {
        return;
    }
    shared_copy(
        (p.va as *const u8).wrapping_add(off),
        dst.as_mut_ptr(),
        dst.len() / 8,
    );
}

/// Copies `words` 8-byte words from `src` to `dst` with one `rep movsq`,
/// one side being a persistent page the backend may write at any moment:
/// the copy is opaque to the compiler (like a volatile access, it assumes
/// nothing about that memory), and the data is never trusted. A quarter
/// of the instructions of a word-wise volatile loop.
#[allow(unsafe_code)]
fn shared_copy(src: *const u8, dst: *mut u8, words: usize) {
    // SAFETY: both callers checked that the persistent-page side lies
    // inside its page (a leaked, live `Box<PageBytes>` no Rust reference
    // reaches, valid for reads and writes until `pool_free`), and the other
    // side is a slice of exactly `words * 8` bytes borrowed by the caller
    // (shared for `src`, unique for `dst`), so the ranges do not overlap;
    // `rep movsq` with DF clear (the ABI's state at any call) copies
    // forwards and touches nothing else; rcx, rsi, rdi are clobbered.
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rcx") words => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
    }
}

/// Gives a persistent page back to the heap: it must no longer be granted.
#[allow(unsafe_code)]
fn pool_free(p: PoolPage) {
    // SAFETY: `p.va` came from `Box::into_raw` of a `Box<PageBytes>` in
    // `grant_pool` and is freed once (`p` is consumed); its grant is
    // revoked (or was never made), so no one else may write it any more.
    drop(unsafe { alloc::boxed::Box::from_raw(p.va as *mut PageBytes) });
}

/// The ring page at `va` (a leaked, page-aligned [`PageBytes`] box this
/// module never references).
#[allow(unsafe_code)]
fn ring_page(va: u64) -> Option<RingPage> {
    // SAFETY: `va` is a leaked `Box<PageBytes>` (page-aligned, writable,
    // never freed, so mapped for the domain's life) that no Rust reference
    // reaches: only its raw pointer was kept, and `RingPage`'s atomic and
    // volatile accesses are the only ones made to it.
    unsafe { RingPage::new(va as *mut u8) }
}

#[cfg(test)]
mod tests;
