//! A hand-driven frontend for one disk: the ring and the grants made with
//! raw hypercalls and requests written field by field, so a test can send
//! what the SDK's `Vblk` never would (bad segment counts, bad grants, insane
//! ring indices, a slot rewritten after publication).
#![allow(unsafe_code)] // `ring_page`; its SAFETY note is on the one block.

use alloc::boxed::Box;

use guest_sdk::abi::blk::{BlkRing, Request, Response, Segment};
use guest_sdk::abi::grant::{self, ACCESS_AT_REF, ACCESS_READONLY};
use guest_sdk::abi::layout::VblkInfo;
use guest_sdk::abi::ring::{RingProtocol, REQ_PROD_OFFSET};
use guest_sdk::event::{self, Port};
use guest_sdk::ring::{FrontEnd, RingPage, SharedPage};
use guest_sdk::{paging, raw, time, Error};

/// A page-aligned page.
#[repr(C, align(4096))]
pub struct Page(pub [u8; 4096]);

/// A fresh page that is never freed (it may stay granted or mapped):
/// `(address, frame)`.
pub fn leak_page() -> (u64, u64) {
    let p: *mut Page = Box::into_raw(Box::new(Page([0; 4096])));
    let va = p as u64;
    let mfn = paging::translate(va).map(|(m, _)| m).unwrap_or(0);
    (va, mfn)
}

/// `grant_access` with raw flags.
pub fn grant(mfn: u64, to: u16, readonly: bool, at: Option<u32>) -> Result<u32, Error> {
    let mut flags = if readonly { ACCESS_READONLY } else { 0 };
    if at.is_some() {
        flags |= ACCESS_AT_REF;
    }
    raw::invoke(&grant::Access {
        mfn,
        grantee: u64::from(to),
        flags,
        gref: u64::from(at.unwrap_or(0)),
    })
    .map(|g| u32::try_from(g).unwrap_or(u32::MAX))
}

/// `grant_revoke`.
pub fn revoke(gref: u32) -> Result<(), Error> {
    raw::invoke(&grant::Revoke {
        gref: u64::from(gref),
    })
    .map(drop)
}

/// A ring on a disk, driven by hand.
pub struct RawDisk {
    /// The ring's page address.
    pub va: u64,
    /// The ring.
    pub ring: FrontEnd<BlkRing, RingPage>,
    /// The disk's port.
    pub port: Port,
    /// The ring's grant reference.
    pub gref: u32,
    /// Requests pushed.
    pushed: u32,
}

/// The ring page at `va`, a page from [`leak_page`].
pub fn ring_page(va: u64) -> Option<RingPage> {
    // SAFETY: callers pass a leaked, page-aligned page of ours that no Rust
    // reference reaches (only its address was kept), so `RingPage`'s atomic
    // and volatile accesses are the only ones.
    unsafe { RingPage::new(va as *mut u8) }
}

fn on_event(_: Port) {}

impl RawDisk {
    /// A ring for `info`'s disk, granted at reference `index`
    /// (`readonly`: the wrong way, for BLK-2a), and the event sent.
    pub fn open(info: &VblkInfo, readonly: bool) -> Result<RawDisk, Error> {
        let (va, mfn) = leak_page();
        let page = ring_page(va).ok_or(Error::InvalidArgument)?;
        let ring = FrontEnd::init(page);
        let gref = grant(mfn, info.peer_domain, readonly, Some(info.index))?;
        let port = Port(info.port);
        event::set_handler(port, on_event);
        let _ = event::unmask(port);
        event::send(port)?;
        Ok(RawDisk {
            va,
            ring,
            port,
            gref,
            pushed: 0,
        })
    }

    /// Pushes `req` and publishes it, with an event if asked.
    pub fn send(&mut self, req: &Request) -> bool {
        if self.ring.push_request(req).is_err() {
            return false;
        }
        self.pushed = self.pushed.wrapping_add(1);
        self.kick()
    }

    /// The index the next request will have.
    pub fn ring_next(&self) -> u32 {
        self.pushed
    }

    /// Publishes, with an event if asked.
    pub fn kick(&mut self) -> bool {
        match self.ring.publish() {
            Ok(true) => event::send(self.port).is_ok(),
            Ok(false) => true,
            Err(_) => false,
        }
    }

    /// The next response, waiting up to `ms` milliseconds.
    pub fn response(&mut self, ms: u64) -> Option<Response> {
        let deadline = time::now_ns() + ms * 1_000_000;
        loop {
            match self.ring.take_response() {
                Ok(Some(r)) => return Some(r),
                Ok(None) => {}
                Err(_) => return None,
            }
            if matches!(self.ring.final_check(), Ok(true)) {
                continue;
            }
            if event::wait_until(deadline) == guest_sdk::abi::args::BlockResult::Deadline {
                return self.ring.take_response().ok().flatten();
            }
        }
    }

    /// Sends `req` and waits for its response (1 s).
    pub fn call(&mut self, req: &Request) -> Option<Response> {
        if !self.send(req) {
            return None;
        }
        self.response(1000)
    }

    /// Overwrites the published request index with `v` (a hostile
    /// frontend's insane index, RING-5).
    pub fn poke_req_prod(&self, v: u32) {
        if let Some(p) = ring_page(self.va) {
            p.store(REQ_PROD_OFFSET, v);
        }
    }

    /// Rewrites slot `i` with `req` (after publication, RING-4).
    pub fn rewrite_slot(&self, i: u32, req: &Request) {
        let slots = <BlkRing as RingProtocol>::SLOTS;
        let off = guest_sdk::abi::ring::slot_offset(i, slots, <BlkRing as RingProtocol>::SLOT_SIZE);
        if let Some(p) = ring_page(self.va) {
            p.write(off, zerocopy::IntoBytes::as_bytes(req));
        }
    }
}

/// A request of `op` with one segment per `(gref, first, last)`.
pub fn request(op: u8, id: u64, sector: u64, segs: &[(u32, u8, u8)]) -> Request {
    let mut r = Request::new(op, id, sector);
    for (i, &(gref, first_sect, last_sect)) in segs.iter().enumerate().take(r.seg.len()) {
        r.seg[i] = Segment {
            gref,
            first_sect,
            last_sect,
            reserved: 0,
        };
    }
    r.nr_segments = u8::try_from(segs.len()).unwrap_or(u8::MAX);
    r
}
