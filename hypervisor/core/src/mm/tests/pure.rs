//! The pure helpers of `pte.rs` and `frame.rs`, pinned value by value (the
//! validator tests use them only through whole operations, which left some
//! of them unchecked: cargo-mutants, see docs/testing.md).

use super::super::error::MmError;
use super::super::pte::Level;

#[test]
fn level_numbers_are_exactly_one_to_four() {
    assert_eq!(Level::from_number(1), Ok(Level::L1));
    assert_eq!(Level::from_number(2), Ok(Level::L2));
    assert_eq!(Level::from_number(3), Ok(Level::L3));
    assert_eq!(Level::from_number(4), Ok(Level::L4));
    for n in [0, 5, 6, u64::MAX, 1 << 32 | 1] {
        assert_eq!(Level::from_number(n), Err(MmError::BadLevel), "level {n}");
    }
}

#[test]
fn address_mask_is_bits_12_to_maxphyaddr() {
    use super::super::pte::EntryRules;
    let r = EntryRules::new(46).unwrap();
    assert_eq!(r.addr_mask(), 0x0000_3fff_ffff_f000);
    assert_eq!(EntryRules::new(32).unwrap().addr_mask(), 0xffff_f000);
    assert_eq!(
        EntryRules::new(52).unwrap().addr_mask(),
        0x000f_ffff_ffff_f000
    );
    assert_eq!(EntryRules::new(31), Err(MmError::BadConfig));
    assert_eq!(EntryRules::new(53), Err(MmError::BadConfig));
}

/// `idle` decides whether a frame may change hands: each pin or
/// operation flag alone keeps it busy, even with every count at 0 (the
/// validator never leaves such a frame, so only a direct check shows it).
#[test]
fn any_pin_or_operation_flag_makes_a_frame_busy() {
    use super::super::frame::{FrameInfo, OP_REF, PARTIAL, PINNED};
    assert!(FrameInfo::default().idle());
    for flag in [PINNED, PARTIAL, OP_REF] {
        let f = FrameInfo {
            flags: flag,
            ..FrameInfo::default()
        };
        assert!(!f.idle(), "flag {flag:#x}");
    }
    let f = FrameInfo {
        flags: super::super::frame::SPECIAL_WRITABLE,
        ..FrameInfo::default()
    };
    assert!(f.idle(), "the special-writable flag alone is no reference");
    for f in [
        FrameInfo {
            type_count: 1,
            ..FrameInfo::default()
        },
        FrameInfo {
            total_count: 1,
            ..FrameInfo::default()
        },
        FrameInfo {
            loaded: 1,
            ..FrameInfo::default()
        },
        FrameInfo {
            held: 1,
            ..FrameInfo::default()
        },
    ] {
        assert!(!f.idle(), "{f:?}");
    }
}
