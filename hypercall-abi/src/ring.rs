//! Shared rings: the one-page request/response ring of split I/O (Xen's
//! `io/ring.h` layout and discipline). Design: `docs/io.md`.
//!
//! # Layout
//!
//! A ring is one 4 KiB page granted by the *frontend* (the guest using a
//! device) to the *backend* (the driver domain serving it):
//!
//! | offset | size | field       | written by |
//! |--------|------|-------------|------------|
//! | 0      | 4    | `req_prod`  | frontend   |
//! | 4      | 4    | `req_event` | backend    |
//! | 8      | 4    | `rsp_prod`  | backend    |
//! | 12     | 4    | `rsp_event` | frontend   |
//! | 16     | 48   | padding (zero, ignored) | — |
//! | 64     | ...  | `slots[N]`  | both (request, then its response) |
//!
//! `N` is the largest power of two with `64 + N * slot_size <= 4096`
//! ([`ring_slots`]); slot `i & (N - 1)` holds request `i` until the backend
//! has consumed it, then the response that the backend writes in its place
//! (Xen's union slot). The indices are free-running `u32` counters compared
//! with wrapping arithmetic; they never reset.
//!
//! # Memory-ordering contract
//!
//! Both sides follow it; neither trusts the other to.
//!
//! 1. **Produce.** Write the slots, then a *write barrier* (release), then
//!    store the producer index (`req_prod` or `rsp_prod`). A consumer that
//!    sees index `p` may read slots below `p` only after a *read barrier*
//!    (acquire) following its load of `p`.
//! 2. **Notify.** After publishing `old -> new`, a *full barrier*, then load
//!    the peer's event index `event`; send an event only if
//!    `new.wrapping_sub(event) < new.wrapping_sub(old)` (the peer asked to
//!    be woken at an index inside the batch). One event per batch, not per
//!    request.
//! 3. **Sleep.** Before a consumer blocks: store `event = cons + 1` (its
//!    next unconsumed index), *full barrier*, load the producer index again;
//!    if it moved, consume instead of sleeping. No wake-up is lost.
//! 4. **Copy once.** A consumer copies each slot into private memory exactly
//!    once and validates the copy; it never reads that slot again. A peer
//!    that changes a slot after publishing it changes nothing.
//! 5. **Bound.** A consumer refuses a producer index more than the number of
//!    slots the producer may use ahead of it (`N` minus slots still awaiting
//!    responses, or for responses the requests outstanding): that peer is
//!    disconnected, never trusted, never a panic.
//!
//! Everything in the shared page is an allegation by the peer: the SDK's
//! ring code (`guest_sdk::ring`) reads it only through atomic and volatile
//! accesses and never holds a Rust reference to it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes in a ring page.
pub const RING_PAGE_SIZE: usize = crate::PAGE_SIZE;

/// Bytes of header before the first slot.
pub const RING_HEADER_SIZE: usize = 64;

/// The 64-byte header at the start of every ring page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RingHeader {
    /// Requests produced by the frontend (free-running).
    pub req_prod: u32,
    /// The backend wants an event when `req_prod` passes this index.
    pub req_event: u32,
    /// Responses produced by the backend (free-running).
    pub rsp_prod: u32,
    /// The frontend wants an event when `rsp_prod` passes this index.
    pub rsp_event: u32,
    /// Zero; reserved. Consumers ignore it.
    pub pad: [u8; 48],
}

/// Byte offset of `req_prod` in the ring page.
pub const REQ_PROD_OFFSET: usize = core::mem::offset_of!(RingHeader, req_prod);
/// Byte offset of `req_event`.
pub const REQ_EVENT_OFFSET: usize = core::mem::offset_of!(RingHeader, req_event);
/// Byte offset of `rsp_prod`.
pub const RSP_PROD_OFFSET: usize = core::mem::offset_of!(RingHeader, rsp_prod);
/// Byte offset of `rsp_event`.
pub const RSP_EVENT_OFFSET: usize = core::mem::offset_of!(RingHeader, rsp_event);

const _: () = assert!(core::mem::size_of::<RingHeader>() == RING_HEADER_SIZE);
const _: () = assert!(REQ_PROD_OFFSET == 0);
const _: () = assert!(REQ_EVENT_OFFSET == 4);
const _: () = assert!(RSP_PROD_OFFSET == 8);
const _: () = assert!(RSP_EVENT_OFFSET == 12);

/// The number of slots of a ring whose slot is `slot_size` bytes: the
/// largest power of two that fits after the header (0 if none fits).
pub const fn ring_slots(slot_size: usize) -> u32 {
    if slot_size == 0 || slot_size > RING_PAGE_SIZE - RING_HEADER_SIZE {
        return 0;
    }
    let fit = (RING_PAGE_SIZE - RING_HEADER_SIZE) / slot_size;
    // Round down to a power of two.
    1u32 << (usize::BITS - 1 - fit.leading_zeros())
}

/// The size of a slot holding either a `Req` or a `Rsp`: the larger,
/// rounded up to the larger alignment (the union of Xen's rings).
pub const fn slot_size(
    req_size: usize,
    req_align: usize,
    rsp_size: usize,
    rsp_align: usize,
) -> usize {
    let size = if req_size > rsp_size {
        req_size
    } else {
        rsp_size
    };
    let align = if req_align > rsp_align {
        req_align
    } else {
        rsp_align
    };
    size.div_ceil(align) * align
}

/// A ring protocol: the request and response types sharing one slot.
///
/// Both are plain bytes (`FromBytes`: any bit pattern the peer writes is a
/// value, to be validated after the copy). Implemented by each device
/// protocol (block, network) with its own types.
pub trait RingProtocol {
    /// What the frontend asks.
    type Req: FromBytes + IntoBytes + KnownLayout + Immutable + Copy;
    /// What the backend answers.
    type Rsp: FromBytes + IntoBytes + KnownLayout + Immutable + Copy;
    /// Bytes per slot.
    const SLOT_SIZE: usize = slot_size(
        core::mem::size_of::<Self::Req>(),
        core::mem::align_of::<Self::Req>(),
        core::mem::size_of::<Self::Rsp>(),
        core::mem::align_of::<Self::Rsp>(),
    );
    /// Slots in the ring (a power of two, at least 1).
    const SLOTS: u32 = ring_slots(Self::SLOT_SIZE);
}

/// Byte offset of slot `index` (taken modulo `slots`, a power of two) in a
/// ring page of `slot_size`-byte slots.
pub const fn slot_offset(index: u32, slots: u32, slot_size: usize) -> usize {
    RING_HEADER_SIZE + ((index & (slots - 1)) as usize) * slot_size
}

/// Whether a producer that moved its index from `old` to `new` must notify
/// a consumer that asked for an event at `event` (rule 2 above; unsigned,
/// wrapping).
pub const fn need_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_counts_follow_xen() {
        // blkif: 112-byte requests -> 32 slots in Xen.
        assert_eq!(ring_slots(112), 32);
        assert_eq!(ring_slots(64), 32);
        assert_eq!(ring_slots(63), 64);
        assert_eq!(ring_slots(8), 256);
        assert_eq!(ring_slots(4032), 1);
        assert_eq!(ring_slots(4033), 0);
        assert_eq!(ring_slots(0), 0);
        for size in 1..=4032usize {
            let n = ring_slots(size) as usize;
            assert!(n.is_power_of_two());
            assert!(RING_HEADER_SIZE + n * size <= RING_PAGE_SIZE);
            assert!(RING_HEADER_SIZE + 2 * n * size > RING_PAGE_SIZE);
        }
    }

    #[test]
    fn slot_offsets_stay_in_the_page() {
        for index in [0u32, 1, 31, 32, 33, u32::MAX] {
            let off = slot_offset(index, 32, 112);
            assert!(off >= RING_HEADER_SIZE && off + 112 <= RING_PAGE_SIZE);
        }
        assert_eq!(slot_offset(33, 32, 112), 64 + 112);
    }

    #[test]
    fn notify_only_when_the_event_index_is_inside_the_batch() {
        // Consumer asked for an event at 5: publishing 3 -> 6 crosses it.
        assert!(need_notify(3, 6, 5));
        assert!(need_notify(3, 6, 4)); // event == old + 1: the usual "next one"
        assert!(!need_notify(3, 6, 7)); // not yet
        assert!(!need_notify(3, 6, 3)); // already notified for index 3
        assert!(!need_notify(6, 6, 6)); // empty batch
                                        // Across the wrap of the free-running counters.
        assert!(need_notify(u32::MAX - 1, 2, u32::MAX));
        assert!(!need_notify(u32::MAX - 1, 2, 3));
    }

    struct P;
    #[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
    #[repr(C)]
    struct Req {
        id: u64,
        a: [u8; 20],
        pad: [u8; 4],
    }
    #[derive(Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
    #[repr(C)]
    struct Rsp {
        id: u64,
        status: i32,
        pad: u32,
    }
    impl RingProtocol for P {
        type Req = Req;
        type Rsp = Rsp;
    }

    #[test]
    fn protocol_constants() {
        assert_eq!(P::SLOT_SIZE, 32);
        assert_eq!(P::SLOTS, 64);
        assert_eq!(slot_size(13, 1, 4, 4), 16);
    }
}
