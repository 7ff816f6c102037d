//! The block backend's pure logic (`BLK-*`, `docs/abi/blk.md`): what a
//! driver domain does with each request a frontend puts on its ring,
//! before and after the device.
//!
//! * [`Extent`]: the part of the device a frontend may use (from its
//!   backend [`hypercall_abi::layout::VblkInfo`] entry).
//! * [`validate`]: a private copy of a request (the ring's
//!   [`take_request`](crate::ring::BackEnd::take_request) copied it once)
//!   against the protocol and the extent: op, segment count, sectors inside
//!   one page, bounds, read-only. The answer is a [`Valid`] request in
//!   *device* sectors, or the exact [`Status`] to answer.
//! * [`plan_copies`]: the `grant_copy` elements that move a valid
//!   request's data between the frontend's granted pages and the backend's
//!   machine-contiguous DMA buffer (each element inside one page on both
//!   sides, as `GNT-5` demands); [`copy_outcome`] turns the per-element
//!   statuses into the request's status.
//! * [`Conn`]: one frontend's ring: takes requests, answers refusals at
//!   once, counts what is in flight, and disconnects a frontend whose ring
//!   indices are insane. Connections share nothing, so a hostile frontend
//!   costs only itself.
//!
//! No shared memory is read here except through [`crate::ring`], and no
//! value from it is trusted before [`validate`] has seen the copy.
#![forbid(unsafe_code)]

use hypercall_abi::blk::{
    BlkRing, Request, Response, Segment, Status, MAX_SEGMENTS, OP_FLUSH, OP_READ, OP_WRITE,
    SECTOR_SIZE,
};
use hypercall_abi::grant::{CopyOp, CopyPtr};
use hypercall_abi::layout::{VblkInfo, VBLK_READONLY, VBLK_ROLE_BACKEND};
use hypercall_abi::{Error, PAGE_SIZE};

use crate::ring::{BackEnd, RingError, SharedPage};

const PAGE: u64 = PAGE_SIZE as u64;

/// Most `grant_copy` elements one request needs: a segment may straddle a
/// page of the DMA buffer, so two per segment.
pub const MAX_COPIES: usize = 2 * MAX_SEGMENTS;

/// The extent of the device one frontend's disk is (`BLK-5`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Device sector of the disk's sector 0.
    pub first_sector: u64,
    /// Sectors in the disk.
    pub capacity: u64,
    /// Writes are refused.
    pub readonly: bool,
}

impl Extent {
    /// The extent a backend start-info entry describes; `None` if the entry
    /// is not a backend's or its offset is not a whole number of sectors
    /// (the backend then leaves the disk unserved).
    pub fn of(info: &VblkInfo) -> Option<Extent> {
        if info.role != VBLK_ROLE_BACKEND || !info.extent_offset.is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let first_sector = info.extent_offset / SECTOR_SIZE;
        // The extent's end, in bytes, must be a device address.
        info.capacity_sectors
            .checked_mul(SECTOR_SIZE)?
            .checked_add(info.extent_offset)?;
        Some(Extent {
            first_sector,
            capacity: info.capacity_sectors,
            readonly: info.flags & VBLK_READONLY != 0,
        })
    }

    /// Whether the extent lies inside a device of `device_sectors`.
    pub fn fits(&self, device_sectors: u64) -> bool {
        self.first_sector
            .checked_add(self.capacity)
            .is_some_and(|end| end <= device_sectors)
    }
}

/// What a valid request asks of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevOp {
    /// Read into the frontend's pages.
    Read,
    /// Write from the frontend's pages.
    Write,
    /// Flush the device's write cache.
    Flush,
}

/// A request that passed [`validate`], in device terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Valid {
    /// The frontend's tag.
    pub id: u64,
    /// The protocol op (echoed in the response).
    pub op: u8,
    /// What the device does.
    pub dev_op: DevOp,
    /// First *device* sector (extent offset + disk sector; 0 for a flush).
    pub device_sector: u64,
    /// Sectors moved (0 for a flush).
    pub sectors: u32,
    segs: [Segment; MAX_SEGMENTS],
    nr_segs: usize,
}

impl Valid {
    /// The segments, each well formed.
    pub fn segments(&self) -> &[Segment] {
        &self.segs[..self.nr_segs]
    }

    /// Bytes the device moves: the length of the DMA buffer it needs.
    pub fn bytes(&self) -> u64 {
        u64::from(self.sectors) * SECTOR_SIZE
    }

    /// The response that completes this request with `status`.
    pub fn response(&self, status: Status) -> Response {
        response(self.id, self.op, status)
    }
}

/// A response to request `id` with operation `op`.
pub fn response(id: u64, op: u8, status: Status) -> Response {
    Response {
        id,
        op,
        status: status.code(),
        ..Response::default()
    }
}

/// Checks a private copy of a request against the protocol and `extent`
/// (`BLK-3`..`BLK-5b`): the first rule broken, in this order, gives the
/// status: unknown op `Unsupported`; a segment count not `1..=11` (read,
/// write) or not 0 (flush), or a segment not `first <= last <= 7`,
/// `BadRequest`; a write to a read-only extent `ReadOnly`; sectors past the
/// capacity (or a sum that overflows) `OutOfRange`.
pub fn validate(req: &Request, extent: &Extent) -> Result<Valid, Status> {
    let dev_op = match req.op {
        OP_READ => DevOp::Read,
        OP_WRITE => DevOp::Write,
        OP_FLUSH => DevOp::Flush,
        _ => return Err(Status::Unsupported),
    };
    let mut v = Valid {
        id: req.id,
        op: req.op,
        dev_op,
        device_sector: 0,
        sectors: 0,
        segs: [Segment::default(); MAX_SEGMENTS],
        nr_segs: 0,
    };
    if dev_op == DevOp::Flush {
        if req.nr_segments != 0 {
            return Err(Status::BadRequest);
        }
        return Ok(v);
    }
    let segs = req
        .segments()
        .filter(|s| !s.is_empty())
        .ok_or(Status::BadRequest)?;
    let mut sectors = 0u32;
    for s in segs {
        sectors += u32::from(s.sectors().ok_or(Status::BadRequest)?);
    }
    if dev_op == DevOp::Write && extent.readonly {
        return Err(Status::ReadOnly);
    }
    let end = req.sector.checked_add(u64::from(sectors));
    if end.is_none_or(|end| end > extent.capacity) {
        return Err(Status::OutOfRange);
    }
    v.device_sector = extent
        .first_sector
        .checked_add(req.sector)
        .ok_or(Status::OutOfRange)?;
    v.sectors = sectors;
    v.segs[..segs.len()].copy_from_slice(segs);
    v.nr_segs = segs.len();
    Ok(v)
}

/// Direction of a request's data copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyDir {
    /// After a device read: DMA buffer → the frontend's pages.
    ToFrontend,
    /// Before a device write: the frontend's pages → DMA buffer.
    FromFrontend,
}

/// Fills `out` with the `grant_copy` elements that move `v`'s data between
/// the frontend `frontend`'s granted pages and the DMA buffer at machine
/// address `dma_machine` (machine-contiguous for `v.bytes()`); returns how
/// many. The segments lie back to back in the buffer in request order; an
/// element never crosses a page on either side (one segment becomes two
/// elements where it straddles a page of the buffer).
pub fn plan_copies(
    v: &Valid,
    frontend: u16,
    dma_machine: u64,
    dir: CopyDir,
    out: &mut [CopyOp; MAX_COPIES],
) -> usize {
    let mut n = 0;
    let mut buf = dma_machine;
    for s in v.segments() {
        let mut page_off = u64::from(s.page_offset());
        // `validate` made every segment well formed.
        let mut left = u64::from(s.sectors().unwrap_or(0)) * SECTOR_SIZE;
        while left > 0 {
            let dma_off = buf % PAGE;
            let len = left.min(PAGE - dma_off);
            let own = CopyPtr::own(buf / PAGE, dma_off);
            let theirs = CopyPtr::granted(u64::from(frontend), u64::from(s.gref), page_off);
            let (src, dst) = match dir {
                CopyDir::ToFrontend => (own, theirs),
                CopyDir::FromFrontend => (theirs, own),
            };
            out[n] = CopyOp {
                src,
                dst,
                // At most a page: fits.
                len: u32::try_from(len).unwrap_or(0),
                status: 0,
            };
            n += 1;
            buf += len;
            page_off += len;
            left -= len;
        }
    }
    n
}

/// The request's status after `grant_copy` of `ops` returned `result`:
/// `Ok` if every element succeeded; `BadGrant` if the hypervisor refused an
/// element (the frontend's reference was bad, revoked, of another domain,
/// or read-only where the backend writes); `IoError` if the whole batch was
/// refused (the backend's own fault, not the frontend's).
pub fn copy_outcome(ops: &[CopyOp], result: Result<u64, Error>) -> Status {
    match result {
        Err(_) => Status::IoError,
        Ok(_) if ops.iter().all(|op| op.result().is_ok()) => Status::Ok,
        Ok(_) => Status::BadGrant,
    }
}

/// What [`Conn::take`] found on the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// A valid request for the device; answer it later with
    /// [`Conn::respond`].
    Serve(Valid),
    /// A request that broke a rule: its response (with the status) was
    /// pushed already; publish with [`Conn::publish`].
    Refused(Status),
    /// Nothing more on the ring now.
    Idle,
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// The frontend's ring indices were insane (`RING-5`).
    Ring(RingError),
}

/// One frontend's connection: its ring (already mapped), its extent.
#[derive(Debug)]
pub struct Conn<M: SharedPage> {
    ring: BackEnd<BlkRing, M>,
    extent: Extent,
    /// Requests handed out by [`Conn::take`] as `Serve` and not yet
    /// answered.
    serving: u32,
    refused: u64,
    served: u64,
}

impl<M: SharedPage> Conn<M> {
    /// Attaches to a ring the frontend initialised, for `extent`.
    pub fn attach(mem: M, extent: Extent) -> Self {
        Conn {
            ring: BackEnd::attach(mem),
            extent,
            serving: 0,
            refused: 0,
            served: 0,
        }
    }

    /// The extent served.
    pub fn extent(&self) -> &Extent {
        &self.extent
    }

    /// Whether the ring was disconnected.
    pub fn is_disconnected(&self) -> bool {
        self.ring.is_disconnected()
    }

    /// Requests being served (handed out, not answered).
    pub fn serving(&self) -> u32 {
        self.serving
    }

    /// `(refused, answered after service)` so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.refused, self.served)
    }

    /// The next request: copied once, validated; a refused one is answered
    /// at once. A hostile index disconnects the ring (the error says why;
    /// every later call is `Err` too).
    pub fn take(&mut self) -> Result<Next, Disconnect> {
        let Some(req) = self.ring.take_request().map_err(Disconnect::Ring)? else {
            return Ok(Next::Idle);
        };
        match validate(&req, &self.extent) {
            Ok(v) => {
                self.serving += 1;
                Ok(Next::Serve(v))
            }
            Err(status) => {
                self.refused += 1;
                self.ring
                    .push_response(&response(req.id, req.op, status))
                    .map_err(Disconnect::Ring)?;
                Ok(Next::Refused(status))
            }
        }
    }

    /// Answers a request [`Conn::take`] handed out (unpublished until
    /// [`Conn::publish`]).
    pub fn respond(&mut self, v: &Valid, status: Status) -> Result<(), Disconnect> {
        self.serving = self.serving.saturating_sub(1);
        self.served += 1;
        self.ring
            .push_response(&v.response(status))
            .map_err(Disconnect::Ring)
    }

    /// Publishes the responses pushed; `Ok(true)` if the frontend must be
    /// sent an event (`RING-2`).
    pub fn publish(&mut self) -> Result<bool, Disconnect> {
        self.ring.publish().map_err(Disconnect::Ring)
    }

    /// Before the backend sleeps: `Ok(true)` if requests wait (`RING-3`).
    pub fn final_check(&mut self) -> Result<bool, Disconnect> {
        self.ring.final_check().map_err(Disconnect::Ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::FrontEnd;
    use hypercall_abi::event::DOMID_SELF;
    use hypercall_abi::ring::{RingProtocol, REQ_PROD_OFFSET};
    use proptest::prelude::*;
    use std::vec::Vec;

    const EXT: Extent = Extent {
        first_sector: 1000,
        capacity: 64,
        readonly: false,
    };

    fn seg(gref: u32, first: u8, last: u8) -> Segment {
        Segment {
            gref,
            first_sect: first,
            last_sect: last,
            reserved: 0,
        }
    }

    fn rw(op: u8, sector: u64, segs: &[Segment]) -> Request {
        let mut r = Request::new(op, 42, sector);
        r.nr_segments = u8::try_from(segs.len()).unwrap();
        r.seg[..segs.len()].copy_from_slice(segs);
        r
    }

    #[test]
    fn a_good_read_becomes_device_sectors() {
        let v = validate(&rw(OP_READ, 8, &[seg(3, 0, 7), seg(4, 2, 3)]), &EXT).unwrap();
        assert_eq!(v.dev_op, DevOp::Read);
        assert_eq!(v.device_sector, 1008);
        assert_eq!(v.sectors, 10);
        assert_eq!(v.bytes(), 5120);
        assert_eq!(v.segments(), &[seg(3, 0, 7), seg(4, 2, 3)]);
        assert_eq!(v.response(Status::Ok).id, 42);
    }

    #[test]
    fn each_rule_has_its_status() {
        let ok = [seg(1, 0, 7)];
        let cases: &[(Request, Extent, Status)] = &[
            (rw(2, 0, &ok), EXT, Status::Unsupported),
            (rw(255, 0, &ok), EXT, Status::Unsupported),
            (rw(OP_READ, 0, &[]), EXT, Status::BadRequest),
            (
                {
                    let mut r = rw(OP_READ, 0, &ok);
                    r.nr_segments = 12;
                    r
                },
                EXT,
                Status::BadRequest,
            ),
            (rw(OP_WRITE, 0, &[seg(1, 5, 4)]), EXT, Status::BadRequest),
            (rw(OP_WRITE, 0, &[seg(1, 0, 8)]), EXT, Status::BadRequest),
            (
                rw(OP_FLUSH, 0, &ok), // a flush carries no data
                EXT,
                Status::BadRequest,
            ),
            (
                rw(OP_WRITE, 0, &ok),
                Extent {
                    readonly: true,
                    ..EXT
                },
                Status::ReadOnly,
            ),
            (rw(OP_READ, 57, &ok), EXT, Status::OutOfRange),
            (rw(OP_READ, 64, &[seg(1, 0, 0)]), EXT, Status::OutOfRange),
            (rw(OP_READ, u64::MAX - 3, &ok), EXT, Status::OutOfRange),
        ];
        for (i, (r, e, want)) in cases.iter().enumerate() {
            assert_eq!(validate(r, e), Err(*want), "case {i}");
        }
        // The last sector is in range; a read-only extent still reads.
        assert!(validate(&rw(OP_READ, 56, &ok), &EXT).is_ok());
        let ro = Extent {
            readonly: true,
            ..EXT
        };
        assert!(validate(&rw(OP_READ, 63, &[seg(1, 7, 7)]), &ro).is_ok());
        let f = validate(&Request::new(OP_FLUSH, 9, 12345), &ro).unwrap();
        assert_eq!((f.dev_op, f.sectors, f.device_sector), (DevOp::Flush, 0, 0));
    }

    #[test]
    fn an_extent_comes_only_from_a_backend_entry_with_whole_sectors() {
        use zerocopy::FromZeros;
        let mut i = VblkInfo::new_zeroed();
        i.role = VBLK_ROLE_BACKEND;
        i.extent_offset = 1 << 20;
        i.capacity_sectors = 2048;
        i.flags = VBLK_READONLY;
        let e = Extent::of(&i).unwrap();
        assert_eq!((e.first_sector, e.capacity, e.readonly), (2048, 2048, true));
        assert!(e.fits(4096) && !e.fits(4095));
        i.extent_offset = 513;
        assert_eq!(Extent::of(&i), None);
        i.extent_offset = 0;
        i.role = 1;
        assert_eq!(Extent::of(&i), None);
        i.role = VBLK_ROLE_BACKEND;
        i.extent_offset = u64::MAX - 511;
        i.capacity_sectors = 2;
        assert_eq!(Extent::of(&i), None, "an extent whose end overflows");
    }

    #[test]
    fn copies_stay_inside_one_page_on_both_sides() {
        // 5 + 8 + 3 sectors starting 1 KiB before a DMA page boundary.
        let v = validate(
            &rw(OP_READ, 0, &[seg(7, 3, 7), seg(8, 0, 7), seg(9, 0, 2)]),
            &EXT,
        )
        .unwrap();
        let mut ops = [CopyOp::default(); MAX_COPIES];
        let base = 0x20_0000 + 3 * 1024;
        let n = plan_copies(&v, 5, base, CopyDir::ToFrontend, &mut ops);
        let ops = &ops[..n];
        let total: u32 = ops.iter().map(|o| o.len).sum();
        assert_eq!(u64::from(total), v.bytes());
        for o in ops {
            assert!(o.src.offset + u64::from(o.len) <= PAGE, "{o:?}");
            assert!(o.dst.offset + u64::from(o.len) <= PAGE, "{o:?}");
            assert_eq!(o.src.domain, DOMID_SELF);
            assert_eq!(o.dst.domain, 5);
        }
        // Segment 7 (sectors 3..=7, 2560 bytes) from buffer offset 3 KiB:
        // 1 KiB to the page end, then 1.5 KiB on the next page.
        assert_eq!(
            (ops[0].dst.frame, ops[0].dst.offset, ops[0].len),
            (7, 1536, 1024)
        );
        assert_eq!((ops[0].src.frame, ops[0].src.offset), (0x200, 3072));
        assert_eq!(
            (ops[1].dst.frame, ops[1].dst.offset, ops[1].len),
            (7, 2560, 1536)
        );
        assert_eq!((ops[1].src.frame, ops[1].src.offset), (0x201, 0));
        // The write direction swaps the sides.
        let mut w = [CopyOp::default(); MAX_COPIES];
        let m = plan_copies(&v, 5, base, CopyDir::FromFrontend, &mut w);
        assert_eq!(m, n);
        assert_eq!((w[0].src, w[0].dst), (ops[0].dst, ops[0].src));
    }

    proptest! {
        #[test]
        fn any_valid_request_plans_within_bounds(
            segs in prop::collection::vec((0u8..8, 0u8..8, any::<u32>()), 1..=11),
            base_off in 0u64..8,
        ) {
            let segs: Vec<Segment> = segs.iter().map(|&(a, b, g)| seg(g, a.min(b), a.max(b))).collect();
            let ext = Extent { first_sector: 0, capacity: 1 << 20, readonly: false };
            let v = validate(&rw(OP_READ, 0, &segs), &ext).unwrap();
            let mut ops = [CopyOp::default(); MAX_COPIES];
            let n = plan_copies(&v, 1, 0x10_0000 + base_off * 512, CopyDir::ToFrontend, &mut ops);
            prop_assert!(n <= MAX_COPIES);
            let mut sum = 0u64;
            for o in &ops[..n] {
                prop_assert!(o.len > 0 && o.len <= 4096);
                prop_assert!(o.src.offset + u64::from(o.len) <= PAGE);
                prop_assert!(o.dst.offset + u64::from(o.len) <= PAGE);
                sum += u64::from(o.len);
            }
            prop_assert_eq!(sum, v.bytes());
        }

        #[test]
        fn any_request_bytes_are_validated_or_refused_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 112)) {
            use zerocopy::FromBytes;
            let r = Request::read_from_bytes(&bytes).unwrap();
            if let Ok(v) = validate(&r, &EXT) {
                prop_assert!(v.device_sector >= EXT.first_sector || v.dev_op == DevOp::Flush);
                prop_assert!(v.device_sector + u64::from(v.sectors) <= EXT.first_sector + EXT.capacity
                    || v.dev_op == DevOp::Flush);
            }
        }
    }

    #[test]
    fn batch_and_element_failures_have_different_statuses() {
        let mut ops = [CopyOp::default(); 3];
        assert_eq!(copy_outcome(&ops, Ok(3)), Status::Ok);
        ops[1].status = -i32::from(Error::NotFound.code());
        assert_eq!(copy_outcome(&ops, Ok(3)), Status::BadGrant);
        assert_eq!(copy_outcome(&ops, Err(Error::BadAddress)), Status::IoError);
    }

    use crate::ring::HostPage as Page;

    #[test]
    fn refusals_are_answered_at_once_and_service_later() {
        let page = Page::new();
        let mut front = FrontEnd::<BlkRing, _>::init(&page);
        let mut conn = Conn::attach(&page, EXT);
        let mut bad = rw(OP_READ, 100, &[seg(1, 0, 7)]);
        bad.id = 1;
        let mut good = rw(OP_WRITE, 0, &[seg(2, 0, 7)]);
        good.id = 2;
        front.push_request(&bad).unwrap();
        front.push_request(&good).unwrap();
        assert!(front.publish().unwrap());
        assert_eq!(conn.take(), Ok(Next::Refused(Status::OutOfRange)));
        let Ok(Next::Serve(v)) = conn.take() else {
            panic!("the good request is served")
        };
        assert_eq!(conn.take(), Ok(Next::Idle));
        assert_eq!(conn.serving(), 1);
        conn.respond(&v, Status::Ok).unwrap();
        assert!(conn.publish().unwrap());
        let r1 = front.take_response().unwrap().unwrap();
        let r2 = front.take_response().unwrap().unwrap();
        assert_eq!((r1.id, r1.status), (1, Status::OutOfRange.code()));
        assert_eq!((r2.id, r2.op, r2.status), (2, OP_WRITE, 0));
        assert_eq!(conn.counts(), (1, 1));
    }

    #[test]
    fn a_request_rewritten_after_publication_is_served_as_first_read() {
        let page = Page::new();
        let mut front = FrontEnd::<BlkRing, _>::init(&page);
        let mut conn = Conn::attach(&page, EXT);
        front
            .push_request(&rw(OP_READ, 0, &[seg(1, 0, 7)]))
            .unwrap();
        front.publish().unwrap();
        let Ok(Next::Serve(v)) = conn.take() else {
            panic!()
        };
        // The frontend now rewrites the slot to point past its extent.
        let evil = rw(OP_WRITE, 1 << 40, &[seg(66, 0, 7)]);
        page.write(64, zerocopy::IntoBytes::as_bytes(&evil));
        assert_eq!(v.device_sector, 1000);
        assert_eq!(v.segments()[0].gref, 1);
        assert_eq!(conn.take(), Ok(Next::Idle), "nothing new was published");
    }

    #[test]
    fn insane_indices_disconnect_only_that_frontend() {
        let (p1, p2) = (Page::new(), Page::new());
        let mut f1 = FrontEnd::<BlkRing, _>::init(&p1);
        let mut f2 = FrontEnd::<BlkRing, _>::init(&p2);
        let mut c1 = Conn::attach(&p1, EXT);
        let mut c2 = Conn::attach(&p2, EXT);
        f1.push_request(&rw(OP_READ, 0, &[seg(1, 0, 7)])).unwrap();
        f1.publish().unwrap();
        // Frontend 1 claims more requests than the ring holds.
        p1.store(REQ_PROD_OFFSET, <BlkRing as RingProtocol>::SLOTS + 5);
        assert!(matches!(
            c1.take(),
            Err(Disconnect::Ring(RingError::Overrun { .. }))
        ));
        assert!(c1.is_disconnected());
        assert!(c1.take().is_err(), "stays disconnected");
        // Frontend 2 is served as before.
        f2.push_request(&rw(OP_READ, 8, &[seg(1, 0, 7)])).unwrap();
        f2.publish().unwrap();
        assert!(matches!(c2.take(), Ok(Next::Serve(_))));
    }

    #[test]
    fn a_flood_is_bounded_by_the_ring() {
        let page = Page::new();
        let mut front = FrontEnd::<BlkRing, _>::init(&page);
        let mut conn = Conn::attach(&page, EXT);
        let mut taken = 0;
        // The frontend fills the ring; the backend holds every request
        // (the device is slow): no more than a ring's worth is ever handed out.
        for round in 0..10 {
            while front.push_request(&rw(OP_READ, 0, &[seg(1, 0, 0)])).is_ok() {}
            front.publish().unwrap();
            while let Ok(Next::Serve(_)) = conn.take() {
                taken += 1;
            }
            assert_eq!(taken, <BlkRing as RingProtocol>::SLOTS, "round {round}");
        }
        assert_eq!(conn.serving(), <BlkRing as RingProtocol>::SLOTS);
    }
}
