//! Virtual NIC rings (spec `docs/abi/net.md`, clauses `NET-*`): the slot
//! layouts of the two one-page rings of each vNIC, Xen netif-like, in the
//! ring discipline of [`crate::ring`].
//!
//! Each vNIC has a **TX ring** (the frontend sends frames: a request names
//! a granted page, an offset and a size; the backend copies the bytes out
//! with `grant_copy` and answers in the slot) and an **RX ring** (the
//! frontend posts empty buffers, one granted page each; the backend copies
//! a frame into one with `grant_copy` and answers with its length). The
//! frontend grants the TX ring page at reference `8 + 2 * index` and the
//! RX ring page at `9 + 2 * index` (`ACCESS_AT_REF`, writable, to the driver
//! domain), `index` being the vNIC's index in its start info (`MEM-3c`),
//! then sends an event on the vNIC's port.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::ring::RingProtocol;

/// Largest Ethernet frame a vNIC carries: 14-byte header + 1500 (no FCS,
/// no VLAN tag).
pub const FRAME_MAX: usize = 1514;
/// Smallest frame: an Ethernet header.
pub const FRAME_MIN: usize = 14;
/// Most TX slots one frame may use (a frame crossing page boundaries;
/// more is hostile, NET-2).
pub const TX_MAX_SLOTS: usize = 4;

/// [`TxRequest::flags`]: more slots of this frame follow.
pub const TXF_MORE_DATA: u16 = 1 << 0;

/// Status: done.
pub const NET_OK: i16 = 0;
/// Status: the request was malformed (refused, nothing sent).
pub const NET_ERROR: i16 = -1;
/// Status: well-formed but dropped (by the switch's rules, or no room).
pub const NET_DROPPED: i16 = -2;

/// One TX slot's request: `size` bytes at `offset` of the frame granted
/// at `gref`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct TxRequest {
    /// The grant of the page holding the bytes (read-only is enough).
    pub gref: u32,
    /// First byte in that page.
    pub offset: u16,
    /// [`TXF_MORE_DATA`].
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// Bytes in this slot (`1..`, `offset + size <= 4096`).
    pub size: u16,
}

/// One TX slot's response.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct TxResponse {
    /// The request's `id`.
    pub id: u16,
    /// [`NET_OK`], [`NET_ERROR`] or [`NET_DROPPED`].
    pub status: i16,
}

/// One RX slot's request: an empty buffer, the whole page granted
/// (writable) at `gref`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RxRequest {
    /// Echoed in the response.
    pub id: u16,
    /// Zero.
    pub reserved: u16,
    /// The grant of the buffer page (writable).
    pub gref: u32,
}

/// One RX slot's response: a frame of `status` bytes at `offset` of the
/// buffer, or a negative status (the buffer is returned unused).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RxResponse {
    /// The request's `id`.
    pub id: u16,
    /// Where the frame starts in the buffer (0).
    pub offset: u16,
    /// Zero.
    pub flags: u16,
    /// Bytes of the frame (`> 0`), or [`NET_ERROR`].
    pub status: i16,
}

/// The TX ring's protocol: 12-byte slots, 256 of them.
pub struct TxRing;
impl RingProtocol for TxRing {
    type Req = TxRequest;
    type Rsp = TxResponse;
}

/// The RX ring's protocol: 8-byte slots, 256 of them (the ring holds at
/// most 256 posted buffers).
pub struct RxRing;
impl RingProtocol for RxRing {
    type Req = RxRequest;
    type Rsp = RxResponse;
}

/// The first well-known grant reference of the vNIC rings. References
/// `0..8` belong to the guest's virtual disks (disk `i`'s ring at reference
/// `i`, BLK-2), so a guest with both a disk and a vNIC (the key-value
/// service) grants each ring at its own reference.
pub const VNIC_REF_BASE: u32 = 8;

/// The grant reference of vNIC `index`'s TX ring page.
pub const fn tx_ring_ref(index: u8) -> u32 {
    VNIC_REF_BASE + 2 * index as u32
}

/// The grant reference of vNIC `index`'s RX ring page.
pub const fn rx_ring_ref(index: u8) -> u32 {
    VNIC_REF_BASE + 2 * index as u32 + 1
}

const _: () = assert!(core::mem::size_of::<TxRequest>() == 12);
const _: () = assert!(core::mem::size_of::<TxResponse>() == 4);
const _: () = assert!(core::mem::size_of::<RxRequest>() == 8);
const _: () = assert!(core::mem::size_of::<RxResponse>() == 8);
const _: () = assert!(TxRing::SLOTS == 256);
const _: () = assert!(RxRing::SLOTS == 256);

/// Why a TX chain is refused (NET-2): the backend answers every slot of
/// it with [`NET_ERROR`] and sends nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxFault {
    /// A slot of 0 bytes.
    Empty,
    /// A slot running past its page.
    PastPage,
    /// More than [`TX_MAX_SLOTS`] slots.
    TooManySlots,
    /// A frame shorter than [`FRAME_MIN`] or longer than [`FRAME_MAX`].
    BadLength,
}

/// Checks one frame's TX slots (private copies, NET-2): each `1..` bytes
/// inside its page, at most [`TX_MAX_SLOTS`], the last without
/// [`TXF_MORE_DATA`] (the caller passes the slots up to the first without
/// it), `FRAME_MIN..=FRAME_MAX` bytes in all. The frame's length.
pub fn check_tx(slots: &[TxRequest]) -> Result<usize, TxFault> {
    if slots.len() > TX_MAX_SLOTS {
        return Err(TxFault::TooManySlots);
    }
    let mut total = 0usize;
    for s in slots {
        if s.size == 0 {
            return Err(TxFault::Empty);
        }
        if usize::from(s.offset) + usize::from(s.size) > crate::PAGE_SIZE {
            return Err(TxFault::PastPage);
        }
        total += usize::from(s.size);
    }
    if !(FRAME_MIN..=FRAME_MAX).contains(&total) {
        return Err(TxFault::BadLength);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(offset: u16, size: u16) -> TxRequest {
        TxRequest {
            gref: 20,
            offset,
            flags: 0,
            id: 1,
            size,
        }
    }

    #[test]
    fn tx_chains_are_checked() {
        assert_eq!(check_tx(&[slot(0, 60)]), Ok(60));
        assert_eq!(check_tx(&[slot(4000, 96), slot(0, 1418)]), Ok(1514));
        assert_eq!(check_tx(&[slot(0, 0)]), Err(TxFault::Empty));
        assert_eq!(check_tx(&[slot(4095, 2)]), Err(TxFault::PastPage));
        assert_eq!(check_tx(&[slot(0, 1515)]), Err(TxFault::BadLength));
        assert_eq!(check_tx(&[slot(0, 13)]), Err(TxFault::BadLength));
        assert_eq!(check_tx(&[]), Err(TxFault::BadLength));
        assert_eq!(check_tx(&[slot(0, 20); 5]), Err(TxFault::TooManySlots));
        assert_eq!(check_tx(&[slot(0, 20); 4]), Ok(80));
    }

    #[test]
    fn ring_refs_pair_up() {
        assert_eq!((tx_ring_ref(0), rx_ring_ref(0)), (8, 9));
        assert_eq!((tx_ring_ref(1), rx_ring_ref(1)), (10, 11));
    }

    #[test]
    fn vnic_refs_never_meet_disk_refs() {
        // Disk `i`'s ring is at reference `i` (BLK-2, `i < 8`); a guest's
        // vNICs (indices 0..4, at most 2 per guest in a manifest) take
        // well-known references above them, below the automatic ones.
        let mut seen = [false; crate::grant::WELL_KNOWN_REFS as usize];
        for i in 0..4u8 {
            for r in [tx_ring_ref(i), rx_ring_ref(i)] {
                assert!(
                    (VNIC_REF_BASE..crate::grant::WELL_KNOWN_REFS).contains(&r),
                    "vNIC {i}: reference {r}"
                );
                assert!(!seen[r as usize], "reference {r} twice");
                seen[r as usize] = true;
            }
        }
    }
}
