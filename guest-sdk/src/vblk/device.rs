//! The guest-facing handle of a virtual disk ([`Vblk`]): the ring page,
//! the persistent pages granted to the backend and the data [`Buffer`]s
//! lent to it while requests are in flight; the protocol itself is
//! [`super::Core`].

use super::pool::{grant_pool, pool_free, pool_get, pool_put, ring_page, PoolPage};
use super::*;

/// One page of a [`Buffer`]: page-aligned, so each is exactly one frame.
#[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, align(4096))]
pub(super) struct PageBytes(pub(super) [u8; PAGE]);

pub(super) const PAGE: usize = hypercall_abi::PAGE_SIZE;

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
    pub(super) backend: u16,
    pub(super) port: Port,
    pub(super) events: u64,
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
