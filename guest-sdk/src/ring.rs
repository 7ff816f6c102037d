//! Front and back ends of a shared one-page ring (layout and memory-ordering
//! contract: [`hypercall_abi::ring`]; design: `docs/io.md`).
//!
//! The shared page belongs to two domains that do not trust each other, so
//! everything in it is an *allegation*:
//!
//! * it is reached only through [`SharedPage`]: atomic loads and stores of
//!   the indices and volatile byte copies of slots; never a Rust reference
//!   to the peer's data;
//! * a consumer copies each slot **once** into private memory and works on
//!   the copy ([`BackEnd::take_request`] returns it by value); it never reads
//!   that slot again, so a peer changing a request after publishing it
//!   changes nothing (Xen's XSA-155);
//! * a consumer bounds the peer's producer index: more requests than free
//!   slots, or more responses than requests outstanding, is
//!   [`RingError::Overrun`]; the ring is then disconnected
//!   ([`RingError::Disconnected`] for every later call, and the shared page
//!   is not touched again). Never a panic;
//! * producers batch: [`FrontEnd::push_request`] fills slots privately and
//!   [`FrontEnd::publish`] makes them visible and says whether to notify
//!   (one event per batch, only if the peer asked);
//! * consumers check once more before sleeping ([`BackEnd::final_check`],
//!   [`FrontEnd::final_check`]) so no wake-up is lost.
//!
//! The code is pure apart from [`RingPage`], the real shared page, and is
//! host-tested with a page model, property tests of random interleavings and
//! a hostile peer.
#![allow(unsafe_code)] // RingPage only: raw access to the shared page, each block with its SAFETY note.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use hypercall_abi::ring::{
    need_notify, slot_offset, RingProtocol, REQ_EVENT_OFFSET, REQ_PROD_OFFSET, RING_PAGE_SIZE,
    RSP_EVENT_OFFSET, RSP_PROD_OFFSET,
};
use zerocopy::{FromBytes, IntoBytes};

/// How a ring reaches its shared page. Offsets are in bytes within the
/// page; callers (this module) keep them inside it.
pub trait SharedPage {
    /// Loads the index at `off` (4-byte aligned), with acquire ordering.
    fn load(&self, off: usize) -> u32;
    /// Stores `value` at `off` (4-byte aligned), with release ordering.
    fn store(&self, off: usize, value: u32);
    /// A full memory barrier (stores before it are visible before loads
    /// after it).
    fn full_barrier(&self);
    /// Copies `dst.len()` bytes at `off` out of the page (volatile: each
    /// byte read exactly once).
    fn read(&self, off: usize, dst: &mut [u8]);
    /// Copies `src` into the page at `off` (volatile).
    fn write(&self, off: usize, src: &[u8]);
}

impl<M: SharedPage + ?Sized> SharedPage for &M {
    fn load(&self, off: usize) -> u32 {
        (**self).load(off)
    }
    fn store(&self, off: usize, value: u32) {
        (**self).store(off, value)
    }
    fn full_barrier(&self) {
        (**self).full_barrier()
    }
    fn read(&self, off: usize, dst: &mut [u8]) {
        (**self).read(off, dst)
    }
    fn write(&self, off: usize, src: &[u8]) {
        (**self).write(off, src)
    }
}

/// A ring page mapped in this domain's address space, shared with a peer.
#[derive(Debug)]
pub struct RingPage {
    base: NonNull<u8>,
}

impl RingPage {
    /// The ring page at `base`.
    ///
    /// Returns `None` if `base` is null or not page-aligned.
    ///
    /// # Safety
    ///
    /// `base` must point to a 4 KiB page that stays mapped (readable and
    /// writable) for as long as the `RingPage` lives, and that no Rust
    /// reference (`&`/`&mut`) in this domain aliases: it is accessed only
    /// through this type's atomic and volatile operations. The peer may
    /// write it at any time; that is allowed.
    pub unsafe fn new(base: *mut u8) -> Option<RingPage> {
        if !(base as usize).is_multiple_of(RING_PAGE_SIZE) {
            return None;
        }
        NonNull::new(base).map(|base| RingPage { base })
    }

    fn index(&self, off: usize) -> &AtomicU32 {
        assert!(off.is_multiple_of(4) && off + 4 <= RING_PAGE_SIZE);
        // SAFETY: `off` is 4-aligned and inside the page (asserted above),
        // so the pointer is aligned and valid for 4 bytes for the life of
        // `self` (RingPage::new's contract); the page is only ever accessed
        // atomically at index offsets, so no non-atomic access races it from
        // this domain, and the peer's accesses are outside Rust's model.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(off).cast::<u32>()) }
    }

    fn check_range(off: usize, len: usize) {
        assert!(off
            .checked_add(len)
            .is_some_and(|end| end <= RING_PAGE_SIZE));
    }
}

impl SharedPage for RingPage {
    fn load(&self, off: usize) -> u32 {
        self.index(off).load(Ordering::Acquire)
    }
    fn store(&self, off: usize, value: u32) {
        self.index(off).store(value, Ordering::Release)
    }
    fn full_barrier(&self) {
        fence(Ordering::SeqCst)
    }
    fn read(&self, off: usize, dst: &mut [u8]) {
        Self::check_range(off, dst.len());
        if off.is_multiple_of(8) && dst.len().is_multiple_of(8) {
            // Slots and headers are 8-aligned: a word at a time (each byte
            // still read exactly once), an eighth of the loads.
            for (i, w) in dst.chunks_exact_mut(8).enumerate() {
                // SAFETY: `off + 8 * i + 8 <= off + dst.len() <= 4096`
                // (checked above) and `off + 8 * i` is 8-aligned in the
                // page-aligned page, so the `u64` is inside the page, aligned
                // and valid for reads (RingPage::new's contract); volatile:
                // read exactly once, whatever the peer does.
                let v = unsafe {
                    self.base
                        .as_ptr()
                        .add(off + 8 * i)
                        .cast::<u64>()
                        .read_volatile()
                };
                w.copy_from_slice(&v.to_ne_bytes());
            }
            return;
        }
        for (i, b) in dst.iter_mut().enumerate() {
            // SAFETY: `off + i < off + dst.len() <= 4096` (checked above), so
            // the byte is inside the page, valid for reads (RingPage::new's
            // contract); a volatile read of a `u8` has no alignment or
            // validity requirement and is read exactly once.
            *b = unsafe { self.base.as_ptr().add(off + i).read_volatile() };
        }
    }
    fn write(&self, off: usize, src: &[u8]) {
        Self::check_range(off, src.len());
        if off.is_multiple_of(8) && src.len().is_multiple_of(8) {
            for (i, w) in src.chunks_exact(8).enumerate() {
                let mut b = [0u8; 8];
                b.copy_from_slice(w);
                // SAFETY: the `u64` at `off + 8 * i` is inside the page and
                // 8-aligned (as in `read`), valid for writes and aliased by
                // no Rust reference (RingPage::new's contract).
                unsafe {
                    self.base
                        .as_ptr()
                        .add(off + 8 * i)
                        .cast::<u64>()
                        .write_volatile(u64::from_ne_bytes(b))
                };
            }
            return;
        }
        for (i, &b) in src.iter().enumerate() {
            // SAFETY: `off + i` is inside the page (checked above), valid for
            // writes and aliased by no Rust reference (RingPage::new's
            // contract).
            unsafe { self.base.as_ptr().add(off + i).write_volatile(b) };
        }
    }
}

/// What went wrong on a ring. After any error but [`RingError::Full`] and
/// [`RingError::NoRequest`] the ring is disconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The peer published a producer index beyond what it may produce
    /// (`prod`, seen while our consumer index was `cons`): it is hostile or
    /// broken; disconnect it.
    Overrun {
        /// The peer's alleged producer index.
        prod: u32,
        /// Our consumer index.
        cons: u32,
    },
    /// The ring was disconnected by an earlier error; it no longer touches
    /// the shared page.
    Disconnected,
    /// No free slot: wait for responses (frontend) before pushing more.
    Full,
    /// A response was pushed with no request outstanding (a bug in the
    /// caller, not the peer).
    NoRequest,
}

fn read_slot<T: FromBytes + IntoBytes, M: SharedPage>(mem: &M, off: usize) -> T {
    let mut value = T::new_zeroed();
    mem.read(off, value.as_mut_bytes());
    value
}

/// The frontend: produces requests, consumes responses. It initialises the
/// ring page (it grants it).
#[derive(Debug)]
pub struct FrontEnd<P: RingProtocol, M: SharedPage> {
    mem: M,
    /// Requests written (published or not).
    req_prod_pvt: u32,
    /// Requests published (`req_prod` as we last stored it).
    req_published: u32,
    /// Responses consumed.
    rsp_cons: u32,
    disconnected: bool,
    _p: PhantomData<P>,
}

impl<P: RingProtocol, M: SharedPage> FrontEnd<P, M> {
    /// Takes the page and initialises an empty ring in it (indices 0, event
    /// indices 1: wake the peer on the first item).
    pub fn init(mem: M) -> Self {
        const { assert!(P::SLOTS > 0, "slot too large for a ring page") };
        mem.store(REQ_PROD_OFFSET, 0);
        mem.store(RSP_PROD_OFFSET, 0);
        mem.store(REQ_EVENT_OFFSET, 1);
        mem.store(RSP_EVENT_OFFSET, 1);
        mem.write(16, &[0; 48]);
        mem.full_barrier();
        FrontEnd {
            mem,
            req_prod_pvt: 0,
            req_published: 0,
            rsp_cons: 0,
            disconnected: false,
            _p: PhantomData,
        }
    }

    /// Slots in the ring.
    pub const fn slots(&self) -> u32 {
        P::SLOTS
    }

    /// Free slots: pushes possible before a response is consumed.
    pub fn free_slots(&self) -> u32 {
        P::SLOTS - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Whether an error disconnected the ring.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// Requests published and not yet answered (as far as consumed).
    pub fn outstanding(&self) -> u32 {
        self.req_published.wrapping_sub(self.rsp_cons)
    }

    /// Writes `req` in the next slot, unpublished (see [`Self::publish`]).
    pub fn push_request(&mut self, req: &P::Req) -> Result<(), RingError> {
        if self.disconnected {
            return Err(RingError::Disconnected);
        }
        if self.free_slots() == 0 {
            return Err(RingError::Full);
        }
        let off = slot_offset(self.req_prod_pvt, P::SLOTS, P::SLOT_SIZE);
        self.mem.write(off, req.as_bytes());
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes every pushed request; `Ok(true)` if the backend must be
    /// notified (it asked for an event inside this batch).
    pub fn publish(&mut self) -> Result<bool, RingError> {
        if self.disconnected {
            return Err(RingError::Disconnected);
        }
        let (old, new) = (self.req_published, self.req_prod_pvt);
        fence(Ordering::Release);
        self.mem.store(REQ_PROD_OFFSET, new);
        self.req_published = new;
        self.mem.full_barrier();
        let event = self.mem.load(REQ_EVENT_OFFSET);
        Ok(need_notify(old, new, event))
    }

    fn responses_available(&mut self) -> Result<u32, RingError> {
        if self.disconnected {
            return Err(RingError::Disconnected);
        }
        let prod = self.mem.load(RSP_PROD_OFFSET);
        fence(Ordering::Acquire);
        let avail = prod.wrapping_sub(self.rsp_cons);
        if avail > self.outstanding() {
            self.disconnected = true;
            return Err(RingError::Overrun {
                prod,
                cons: self.rsp_cons,
            });
        }
        Ok(avail)
    }

    /// The next response, copied once out of the ring, or `None` if none
    /// is published.
    pub fn take_response(&mut self) -> Result<Option<P::Rsp>, RingError> {
        if self.responses_available()? == 0 {
            return Ok(None);
        }
        let off = slot_offset(self.rsp_cons, P::SLOTS, P::SLOT_SIZE);
        let rsp = read_slot::<P::Rsp, _>(&self.mem, off);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Before sleeping: `Ok(true)` if responses are waiting (consume them
    /// instead); otherwise asks for an event at the next response, with a
    /// full barrier and a second look, so none is missed.
    pub fn final_check(&mut self) -> Result<bool, RingError> {
        if self.responses_available()? > 0 {
            return Ok(true);
        }
        self.mem
            .store(RSP_EVENT_OFFSET, self.rsp_cons.wrapping_add(1));
        self.mem.full_barrier();
        Ok(self.responses_available()? > 0)
    }
}

/// The backend: consumes requests, produces responses. It attaches to a
/// ring the frontend initialised.
#[derive(Debug)]
pub struct BackEnd<P: RingProtocol, M: SharedPage> {
    mem: M,
    /// Requests consumed (copied out).
    req_cons: u32,
    /// Responses written (published or not).
    rsp_prod_pvt: u32,
    /// Responses published.
    rsp_published: u32,
    disconnected: bool,
    _p: PhantomData<P>,
}

impl<P: RingProtocol, M: SharedPage> BackEnd<P, M> {
    /// Attaches to the ring in `mem`, starting at index 0. Reads nothing:
    /// whatever the frontend left there is checked when it is consumed.
    pub fn attach(mem: M) -> Self {
        const { assert!(P::SLOTS > 0, "slot too large for a ring page") };
        BackEnd {
            mem,
            req_cons: 0,
            rsp_prod_pvt: 0,
            rsp_published: 0,
            disconnected: false,
            _p: PhantomData,
        }
    }

    /// Whether an error disconnected the ring.
    pub fn is_disconnected(&self) -> bool {
        self.disconnected
    }

    /// Requests consumed and not yet answered.
    pub fn in_flight(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    fn requests_available(&mut self) -> Result<u32, RingError> {
        if self.disconnected {
            return Err(RingError::Disconnected);
        }
        let prod = self.mem.load(REQ_PROD_OFFSET);
        fence(Ordering::Acquire);
        // The frontend may have at most SLOTS requests without a response
        // written: beyond, it would overwrite slots we have not answered.
        if prod.wrapping_sub(self.rsp_prod_pvt) > P::SLOTS
            || prod.wrapping_sub(self.req_cons) > P::SLOTS
        {
            self.disconnected = true;
            return Err(RingError::Overrun {
                prod,
                cons: self.req_cons,
            });
        }
        Ok(prod.wrapping_sub(self.req_cons))
    }

    /// The next request, copied once into private memory, or `None` if
    /// none is published. The slot is never read again: validate the
    /// returned copy, not the ring.
    pub fn take_request(&mut self) -> Result<Option<P::Req>, RingError> {
        if self.requests_available()? == 0 {
            return Ok(None);
        }
        let off = slot_offset(self.req_cons, P::SLOTS, P::SLOT_SIZE);
        let req = read_slot::<P::Req, _>(&self.mem, off);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Writes the response to the oldest unanswered request in its slot,
    /// unpublished (see [`Self::publish`]).
    pub fn push_response(&mut self, rsp: &P::Rsp) -> Result<(), RingError> {
        if self.disconnected {
            return Err(RingError::Disconnected);
        }
        if self.in_flight() == 0 {
            return Err(RingError::NoRequest);
        }
        let off = slot_offset(self.rsp_prod_pvt, P::SLOTS, P::SLOT_SIZE);
        self.mem.write(off, rsp.as_bytes());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes every pushed response; `Ok(true)` if the frontend must be
    /// notified.
    pub fn publish(&mut self) -> Result<bool, RingError> {
        if self.disconnected {
            return Err(RingError::Disconnected);
        }
        let (old, new) = (self.rsp_published, self.rsp_prod_pvt);
        fence(Ordering::Release);
        self.mem.store(RSP_PROD_OFFSET, new);
        self.rsp_published = new;
        self.mem.full_barrier();
        let event = self.mem.load(RSP_EVENT_OFFSET);
        Ok(need_notify(old, new, event))
    }

    /// Before sleeping: `Ok(true)` if requests are waiting; otherwise asks
    /// for an event at the next request, full barrier, and looks again.
    pub fn final_check(&mut self) -> Result<bool, RingError> {
        if self.requests_available()? > 0 {
            return Ok(true);
        }
        self.mem
            .store(REQ_EVENT_OFFSET, self.req_cons.wrapping_add(1));
        self.mem.full_barrier();
        Ok(self.requests_available()? > 0)
    }
}

/// A ring page in host memory, for the unit tests of the protocols built
/// on rings (`vblk`, `blkback`): plain bytes, no concurrency.
#[cfg(test)]
pub(crate) struct HostPage(core::cell::RefCell<Vec<u8>>);

#[cfg(test)]
impl HostPage {
    pub(crate) fn new() -> Self {
        HostPage(core::cell::RefCell::new(alloc::vec![0; 4096]))
    }
}

#[cfg(test)]
impl SharedPage for HostPage {
    fn load(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0.borrow()[off..off + 4]);
        u32::from_le_bytes(b)
    }
    fn store(&self, off: usize, v: u32) {
        self.0.borrow_mut()[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn full_barrier(&self) {}
    fn read(&self, off: usize, dst: &mut [u8]) {
        dst.copy_from_slice(&self.0.borrow()[off..off + dst.len()]);
    }
    fn write(&self, off: usize, src: &[u8]) {
        self.0.borrow_mut()[off..off + src.len()].copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests;
