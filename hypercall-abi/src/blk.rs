//! The virtual block device protocol (`BLK-*`, `docs/abi/blk.md`): the
//! requests a frontend puts on its disk's ring and the responses the driver
//! domain's backend answers with. Xen's `blkif` in shape: up to
//! [`MAX_SEGMENTS`] segments of one granted page each, sectors of
//! [`SECTOR_SIZE`] bytes, one slot per request ([`crate::ring`]).
//!
//! Both ends treat what the other wrote as an allegation: the backend
//! validates a private copy of each request ([`Request::segments`] never
//! trusts `nr_segments`), the frontend checks each response's id and
//! [`Status`] before believing it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ring::RingProtocol;

/// Bytes per sector (`BLK-1`): every disk has 512-byte sectors.
pub const SECTOR_SIZE: u64 = 512;

const _: () = assert!(SECTOR_SIZE == 512);

/// Sectors in one page: a segment's `first_sect..=last_sect` lie in
/// `0..SECTORS_PER_PAGE`.
pub const SECTORS_PER_PAGE: u8 = 8;

/// Segments per request (`BLK-3`), as Xen's `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
pub const MAX_SEGMENTS: usize = 11;

/// Most bytes one request moves: [`MAX_SEGMENTS`] whole pages.
pub const MAX_REQUEST_BYTES: u64 = MAX_SEGMENTS as u64 * crate::PAGE_SIZE as u64;

/// [`Request::op`]: read sectors into the granted pages.
pub const OP_READ: u8 = 0;
/// [`Request::op`]: write the granted pages' sectors.
pub const OP_WRITE: u8 = 1;
/// [`Request::op`]: make every write answered before this request was
/// published durable (a virtio flush); no segments.
pub const OP_FLUSH: u8 = 3;

/// One page of a request: sectors `first_sect..=last_sect` of the frame the
/// frontend granted at reference `gref`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Segment {
    /// The grant reference (in the frontend's table, naming the backend).
    pub gref: u32,
    /// First sector of the page used (`0..=7`).
    pub first_sect: u8,
    /// Last sector of the page used (`first_sect..=7`).
    pub last_sect: u8,
    /// Zero; ignored.
    pub reserved: u16,
}

impl Segment {
    /// Sectors the segment covers, if it is well formed (`BLK-3b`).
    pub const fn sectors(&self) -> Option<u8> {
        if self.first_sect > self.last_sect || self.last_sect >= SECTORS_PER_PAGE {
            return None;
        }
        Some(self.last_sect - self.first_sect + 1)
    }

    /// Byte offset of the segment's first sector in its page.
    pub const fn page_offset(&self) -> u32 {
        // 255 * 512 at most: no overflow.
        self.first_sect as u32 * 512
    }
}

/// A request (`BLK-3`): 112 bytes, one ring slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Request {
    /// [`OP_READ`], [`OP_WRITE`] or [`OP_FLUSH`].
    pub op: u8,
    /// Segments used (`1..=11` for reads and writes, 0 for a flush).
    pub nr_segments: u8,
    /// Zero; ignored.
    pub reserved0: u16,
    /// Zero; ignored.
    pub reserved1: u32,
    /// The frontend's tag, echoed in the response.
    pub id: u64,
    /// First sector of the disk (0 for a flush).
    pub sector: u64,
    /// The pages, in disk order; entries at and after `nr_segments` ignored.
    pub seg: [Segment; MAX_SEGMENTS],
}

impl Request {
    /// A request with no segments.
    pub const fn new(op: u8, id: u64, sector: u64) -> Request {
        Request {
            op,
            nr_segments: 0,
            reserved0: 0,
            reserved1: 0,
            id,
            sector,
            seg: [Segment {
                gref: 0,
                first_sect: 0,
                last_sect: 0,
                reserved: 0,
            }; MAX_SEGMENTS],
        }
    }

    /// The segments in use, or `None` if `nr_segments` is past
    /// [`MAX_SEGMENTS`] (never trusted to index the array).
    pub fn segments(&self) -> Option<&[Segment]> {
        self.seg.get(..usize::from(self.nr_segments))
    }
}

/// A response (`BLK-3`): 16 bytes, written in the slot of the request.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Response {
    /// The request's `id`.
    pub id: u64,
    /// The request's `op`.
    pub op: u8,
    /// Zero; ignored.
    pub reserved0: u8,
    /// A [`Status`] code.
    pub status: i16,
    /// Zero; ignored.
    pub reserved1: u32,
}

/// The outcome of a request (`BLK-4`): the `status` of its response.
///
/// Each refusal has its own code, so a frontend (and a test) knows exactly
/// which rule its request broke. A status outside this list is the
/// backend's error: a frontend treats it as [`Status::IoError`] at best,
/// never as success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i16)]
pub enum Status {
    /// Done (for a write or flush: as durable as `BLK-6` says).
    Ok = 0,
    /// The device failed the request (`BLK-4a`).
    IoError = -1,
    /// Unknown `op` (`BLK-4b`).
    Unsupported = -2,
    /// A sector past the disk's capacity (`BLK-5`).
    OutOfRange = -3,
    /// A write to a read-only disk (`BLK-5a`).
    ReadOnly = -4,
    /// Malformed: a segment count of 0 (read, write) or above 11, or not 0
    /// for a flush; a segment whose sectors are not `first <= last <= 7`
    /// (misaligned: not whole sectors inside one page) (`BLK-5b`).
    BadRequest = -5,
    /// The hypervisor refused a grant copy for a segment (bad, revoked or
    /// read-only reference for a read) (`BLK-5c`).
    BadGrant = -6,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 7] = [
        Status::Ok,
        Status::IoError,
        Status::Unsupported,
        Status::OutOfRange,
        Status::ReadOnly,
        Status::BadRequest,
        Status::BadGrant,
    ];

    /// The code written in a response.
    pub const fn code(self) -> i16 {
        self as i16
    }

    /// The status with this code, or `None` for a code the spec does not
    /// define.
    pub fn from_code(code: i16) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.code() == code)
    }

    /// A short name, for logs and test reports.
    pub const fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::IoError => "io_error",
            Status::Unsupported => "unsupported",
            Status::OutOfRange => "out_of_range",
            Status::ReadOnly => "read_only",
            Status::BadRequest => "bad_request",
            Status::BadGrant => "bad_grant",
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// The block ring: [`Request`]s and [`Response`]s sharing 112-byte slots,
/// 32 of them in a page.
#[derive(Clone, Copy, Debug)]
pub struct BlkRing;

impl RingProtocol for BlkRing {
    type Req = Request;
    type Rsp = Response;
}

/// Requests one block ring holds: the most a frontend can have in flight.
pub const RING_DEPTH: u32 = <BlkRing as RingProtocol>::SLOTS;

const _: () = assert!(core::mem::size_of::<Segment>() == 8);
const _: () = assert!(core::mem::size_of::<Request>() == 112);
const _: () = assert!(core::mem::offset_of!(Request, id) == 8);
const _: () = assert!(core::mem::offset_of!(Request, sector) == 16);
const _: () = assert!(core::mem::offset_of!(Request, seg) == 24);
const _: () = assert!(core::mem::size_of::<Response>() == 16);
const _: () = assert!(core::mem::offset_of!(Response, status) == 10);
const _: () = assert!(<BlkRing as RingProtocol>::SLOT_SIZE == 112);
const _: () = assert!(RING_DEPTH == 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_unknown_codes_are_none() {
        for s in Status::ALL {
            assert_eq!(Status::from_code(s.code()), Some(s));
        }
        for c in [1, 2, -7, i16::MIN, i16::MAX] {
            assert_eq!(Status::from_code(c), None, "{c}");
        }
        let mut codes: [i16; 7] = Status::ALL.map(Status::code);
        codes.sort_unstable();
        assert!(codes.windows(2).all(|w| w[0] != w[1]), "distinct codes");
    }

    #[test]
    fn segment_sectors_stay_inside_one_page() {
        let s = |f, l| Segment {
            gref: 1,
            first_sect: f,
            last_sect: l,
            reserved: 0,
        };
        assert_eq!(s(0, 7).sectors(), Some(8));
        assert_eq!(s(3, 3).sectors(), Some(1));
        assert_eq!(s(7, 7).page_offset(), 3584);
        assert_eq!(s(4, 3).sectors(), None);
        assert_eq!(s(0, 8).sectors(), None);
        assert_eq!(s(255, 255).sectors(), None);
    }

    #[test]
    fn nr_segments_never_indexes_past_the_array() {
        let mut r = Request::new(OP_READ, 1, 0);
        r.nr_segments = 11;
        assert_eq!(r.segments().map(<[Segment]>::len), Some(11));
        r.nr_segments = 12;
        assert_eq!(r.segments(), None);
        r.nr_segments = 255;
        assert_eq!(r.segments(), None);
        r.nr_segments = 0;
        assert_eq!(r.segments().map(<[Segment]>::len), Some(0));
    }

    #[test]
    fn the_wire_layout_is_xens() {
        let mut r = Request::new(OP_WRITE, 0x1122_3344_5566_7788, 0x99);
        r.nr_segments = 1;
        r.seg[0] = Segment {
            gref: 0xabcd,
            first_sect: 2,
            last_sect: 5,
            reserved: 0,
        };
        let b = r.as_bytes();
        assert_eq!(b[0], OP_WRITE);
        assert_eq!(b[1], 1);
        assert_eq!(&b[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x99u64.to_le_bytes());
        assert_eq!(&b[24..28], &0xabcdu32.to_le_bytes());
        assert_eq!((b[28], b[29]), (2, 5));
        let rsp = Response {
            id: 7,
            op: OP_READ,
            status: Status::OutOfRange.code(),
            ..Default::default()
        };
        assert_eq!(&rsp.as_bytes()[10..12], &(-3i16).to_le_bytes());
    }
}
