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
