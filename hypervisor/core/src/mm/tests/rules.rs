//! One test per rule and per known attack. Each refusal asserts the exact
//! error and that nothing changed (entries, types, counts, pins).

use super::*;
use crate::mm::pte::{ACCESSED, DIRTY, GLOBAL, PCD, PS_OR_PAT, PWT};
use hypercall_abi::Error as Abi;

// ----- MMU-1 / MMU-2: types, counts, and the tree a pin builds -----

#[test]
fn mmu_1_pin_types_the_tree_and_counts_references() {
    let (mm, _, _) = tree();
    let expect = |mfn, ty, type_count, total_count, pinned| FrameView {
        owner: Owner::Domain(DOM),
        ty,
        type_count,
        total_count,
        pinned,
        loaded: u16::from(mfn == L4),
        held: 0,
    };
    assert_eq!(view(&mm, L4), expect(L4, FrameType::L4, 1, 1, true));
    assert_eq!(view(&mm, L3), expect(L3, FrameType::L3, 1, 1, false));
    assert_eq!(view(&mm, L2), expect(L2, FrameType::L2, 1, 1, false));
    assert_eq!(view(&mm, L1), expect(L1, FrameType::L1, 1, 1, false));
    assert_eq!(
        view(&mm, DATA),
        expect(DATA, FrameType::Writable, 1, 1, false)
    );
    assert_eq!(view(&mm, 20), expect(20, FrameType::None, 0, 0, false));
}

#[test]
fn mmu_2_read_only_mapping_takes_only_a_total_reference() {
    let (mut mm, mut mem, _) = tree();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), ro(L3))
        .unwrap();
    let v = view(&mm, L3);
    assert_eq!((v.ty, v.type_count, v.total_count), (FrameType::L3, 1, 2));
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 6), ro(20))
        .unwrap();
    let v = view(&mm, 20);
    assert_eq!((v.ty, v.type_count, v.total_count), (FrameType::None, 0, 1));
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_2_writable_mapping_takes_a_writable_type_reference() {
    let (mut mm, mut mem, _) = tree();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), rw(20))
        .unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 6), rw(20))
        .unwrap();
    let v = view(&mm, 20);
    assert_eq!(
        (v.ty, v.type_count, v.total_count),
        (FrameType::Writable, 2, 2)
    );
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), 0).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 6), 0).unwrap();
    assert_eq!(view(&mm, 20).ty, FrameType::None);
    audit::audit(&mm, &mem).unwrap();
}

// ----- MMU-2 attack: writable mapping of one's own page tables -----

#[test]
fn mmu_2_attack_writable_mapping_of_own_page_table() {
    let (mut mm, mut mem, _) = tree();
    for (pt, has) in [
        (L4, FrameType::L4),
        (L3, FrameType::L3),
        (L2, FrameType::L2),
        (L1, FrameType::L1),
    ] {
        let before = snapshot(&mm, &mem);
        let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 7), rw(pt));
        let want = MmError::TypeConflict {
            mfn: pt,
            has,
            wants: FrameType::Writable,
        };
        assert_refused(&mm, &mem, &before, r, want);
        assert_eq!(want.abi(), Abi::TypeConflict);
    }
}

#[test]
fn mmu_2_attack_read_only_then_flag_flip_to_writable() {
    // XSA-182: a flags-only change must be validated like any other.
    let (mut mm, mut mem, _) = tree();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 7), ro(L2))
        .unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 7), rw(L2));
    let want = MmError::TypeConflict {
        mfn: L2,
        has: FrameType::L2,
        wants: FrameType::Writable,
    };
    assert_refused(&mm, &mem, &before, r, want);
}

// ----- MMU-7: ownership -----

#[test]
fn mmu_7_attack_mapping_another_guests_frame() {
    let (mut mm, mut mem, _) = tree();
    let theirs = OTHER_FRAMES.start + 1;
    for value in [rw(theirs), ro(theirs)] {
        let before = snapshot(&mm, &mem);
        let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 7), value);
        assert_refused(&mm, &mem, &before, r, MmError::NotOwner(theirs));
    }
    // Nor as a page table.
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L2, 1), table(theirs));
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(theirs));
    assert_eq!(MmError::NotOwner(0).abi(), Abi::PermissionDenied);
}

#[test]
fn mmu_7_attack_mapping_a_hypervisor_or_free_frame() {
    let (mut mm, mut mem, _) = tree();
    for mfn in [HYP_FRAMES.start, HYP_FRAMES.end - 1, FREE_FRAME] {
        for value in [rw(mfn), ro(mfn)] {
            let before = snapshot(&mm, &mem);
            let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 7), value);
            assert_refused(&mm, &mem, &before, r, MmError::NotOwner(mfn));
        }
    }
}

#[test]
fn mmu_7_operations_on_another_guests_tables_are_refused() {
    let (mut mm, mut mem, _) = tree();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, OTHER, ptr(L1, 7), 0);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(L1));
    let r = mm.unpin(&mut mem, OTHER, L4);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(L4));
    let r = mm.pin(&mut mem, OTHER, 20, Level::L1);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(20));
    let r = mm.update_va_mapping(&mut mem, OTHER, L4, 0, 0);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(L4));
    let mut theirs = AddressSpace::new(OTHER);
    let r = mm.switch_root(&mut theirs, L4);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(L4));
}

// ----- MMU-1: level confusion -----

#[test]
fn mmu_1_attack_type_confusion_between_levels() {
    let (mut mm, mut mem, _) = tree();
    // An L4 used as an L1 (from an L2 entry), an L1 used as an L2, an L2 as
    // an L3, an L3 as... an L3 (an L3 entry naming an L3).
    let cases = [
        (ptr(L2, 1), L4, FrameType::L4, FrameType::L1),
        (ptr(L3, 1), L1, FrameType::L1, FrameType::L2),
        (ptr(L4, 1), L2, FrameType::L2, FrameType::L3),
        (ptr(L3, 1), L3, FrameType::L3, FrameType::L2),
        (ptr(L2, 1), L2, FrameType::L2, FrameType::L1),
        (ptr(L2, 1), DATA, FrameType::Writable, FrameType::L1),
    ];
    for (p, target, has, wants) in cases {
        let before = snapshot(&mm, &mem);
        let r = mm.mmu_update_one(&mut mem, DOM, p, table(target));
        let want = MmError::TypeConflict {
            mfn: target,
            has,
            wants,
        };
        assert_refused(&mm, &mem, &before, r, want);
    }
    // Pinning at the wrong level.
    let before = snapshot(&mm, &mem);
    let r = mm.pin(&mut mem, DOM, L1, Level::L2);
    let want = MmError::TypeConflict {
        mfn: L1,
        has: FrameType::L1,
        wants: FrameType::L2,
    };
    assert_refused(&mm, &mem, &before, r, want);
    let r = mm.pin(&mut mem, DOM, L2, Level::L4);
    let want = MmError::TypeConflict {
        mfn: L2,
        has: FrameType::L2,
        wants: FrameType::L4,
    };
    assert_refused(&mm, &mem, &before, r, want);
}

#[test]
fn mmu_1_a_table_may_be_shared_at_its_own_level() {
    let (mut mm, mut mem, _) = tree();
    mm.mmu_update_one(&mut mem, DOM, ptr(L2, 1), table(L1))
        .unwrap();
    let v = view(&mm, L1);
    assert_eq!((v.type_count, v.total_count), (2, 2));
    mm.mmu_update_one(&mut mem, DOM, ptr(L2, 0), 0).unwrap();
    assert_eq!(view(&mm, L1).ty, FrameType::L1);
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_1_attack_frame_maps_itself_writable_while_being_validated() {
    // The L1 under construction maps itself writable: the type is set
    // before the entries are checked, so the self mapping conflicts.
    let (mut mm, mut mem, _) = tree();
    mem.poke(20, 0, rw(21));
    mem.poke(20, 1, rw(20));
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L2, 1), table(20));
    let want = MmError::TypeConflict {
        mfn: 20,
        has: FrameType::L1,
        wants: FrameType::Writable,
    };
    assert_refused(&mm, &mem, &before, r, want);
    // Read-only is fine.
    mem.poke(20, 1, ro(20));
    mm.mmu_update_one(&mut mem, DOM, ptr(L2, 1), table(20))
        .unwrap();
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_1_attack_cycle_back_up_the_tree() {
    // An L2 below the L4 that names the L4 (or its own L3) as an L1.
    let (mut mm, mut mem, _) = tree();
    for up in [L4, L3] {
        let before = snapshot(&mm, &mem);
        let r = mm.mmu_update_one(&mut mem, DOM, ptr(L2, 2), table(up));
        assert!(matches!(r, Err(MmError::TypeConflict { .. })));
        assert_refused(&mm, &mem, &before, r, r.unwrap_err());
    }
}

// ----- MMU-10: linear entries -----

#[test]
fn mmu_10_read_only_self_entry_is_allowed_and_takes_no_reference() {
    let (mut mm, mut mem, _) = tree();
    let before = view(&mm, L4);
    mm.mmu_update_one(&mut mem, DOM, ptr(L4, 5), ro(L4))
        .unwrap();
    assert_eq!(view(&mm, L4), before);
    mm.mmu_update_one(&mut mem, DOM, ptr(L4, 5), 0).unwrap();
    assert_eq!(view(&mm, L4), before);
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_10_attack_writable_linear_mapping() {
    let (mut mm, mut mem, _) = tree();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L4, 5), table(L4));
    assert_refused(&mm, &mem, &before, r, MmError::WritableSelfMap);
    assert_eq!(MmError::WritableSelfMap.abi(), Abi::TypeConflict);
    // XSA-182: installed read-only, then "only the flags change".
    mm.mmu_update_one(&mut mem, DOM, ptr(L4, 5), ro(L4))
        .unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L4, 5), table(L4));
    assert_refused(&mm, &mem, &before, r, MmError::WritableSelfMap);
    // Nor written into a frame before it is pinned.
    let (mut mm, mut mem) = machine();
    mem.poke(30, 3, table(30));
    let before = snapshot(&mm, &mem);
    let r = mm.pin(&mut mem, DOM, 30, Level::L4);
    assert_refused(&mm, &mem, &before, r, MmError::WritableSelfMap);
}

#[test]
fn mmu_10_attack_linear_loop_between_two_roots() {
    // XSA-240: two L4s naming each other would keep each other alive.
    let (mut mm, mut mem, _) = tree();
    mm.pin(&mut mem, DOM, 30, Level::L4).unwrap();
    for value in [ro(30), table(30)] {
        let before = snapshot(&mm, &mem);
        let r = mm.mmu_update_one(&mut mem, DOM, ptr(L4, 6), value);
        let want = MmError::TypeConflict {
            mfn: 30,
            has: FrameType::L4,
            wants: FrameType::L3,
        };
        assert_refused(&mm, &mem, &before, r, want);
    }
    // And after teardown nothing is left behind.
    mm.teardown(&mut mem, DOM);
    audit::audit(&mm, &mem).unwrap();
    for mfn in 0..OTHER_FRAMES.start {
        assert!(mm.frame(mfn).unwrap().idle(), "frame {mfn} not idle");
    }
}

#[test]
fn mmu_10_attack_same_level_linear_below_l4() {
    let (mut mm, mut mem, _) = tree();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L3, 3), ro(L3));
    let want = MmError::TypeConflict {
        mfn: L3,
        has: FrameType::L3,
        wants: FrameType::L2,
    };
    assert_refused(&mm, &mem, &before, r, want);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L2, 3), ro(L2));
    let want = MmError::TypeConflict {
        mfn: L2,
        has: FrameType::L2,
        wants: FrameType::L1,
    };
    assert_refused(&mm, &mem, &before, r, want);
}

// ----- MMU-11 / MMU-12: pin and unpin -----

#[test]
fn mmu_11_attack_pinning_a_frame_mapped_writable() {
    let (mut mm, mut mem, _) = tree();
    for level in Level::ALL {
        let before = snapshot(&mm, &mem);
        let r = mm.pin(&mut mem, DOM, DATA, level);
        let want = MmError::TypeConflict {
            mfn: DATA,
            has: FrameType::Writable,
            wants: FrameType::table(level),
        };
        assert_refused(&mm, &mem, &before, r, want);
    }
}

#[test]
fn mmu_11_pin_states_and_levels() {
    let (mut mm, mut mem, _) = tree();
    let before = snapshot(&mm, &mem);
    let r = mm.pin(&mut mem, DOM, L4, Level::L4);
    assert_refused(&mm, &mem, &before, r, MmError::AlreadyPinned(L4));
    assert_eq!(Level::from_number(0), Err(MmError::BadLevel));
    assert_eq!(Level::from_number(5), Err(MmError::BadLevel));
    assert_eq!(MmError::BadLevel.abi(), Abi::InvalidArgument);
    let r = mm.pin(&mut mem, DOM, FRAMES, Level::L1);
    assert_refused(&mm, &mem, &before, r, MmError::NoSuchFrame(FRAMES));
    let r = mm.pin(&mut mem, DOM, u64::MAX, Level::L1);
    assert_refused(&mm, &mem, &before, r, MmError::NoSuchFrame(u64::MAX));
    // Pinning a table already in use below another one is fine.
    mm.pin(&mut mem, DOM, L1, Level::L1).unwrap();
    let v = view(&mm, L1);
    assert_eq!((v.type_count, v.total_count, v.pinned), (2, 2, true));
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_11_failed_pin_rolls_back_everything() {
    let (mut mm, mut mem, _) = tree();
    // A new L4 sharing the existing L3 at slot 0, a fresh subtree at slot 1
    // and a bad leaf deep in a third subtree.
    mem.poke(30, 0, table(L3));
    mem.poke(30, 1, table(31));
    mem.poke(31, 0, table(32));
    mem.poke(32, 0, table(33));
    mem.poke(33, 0, rw(34));
    mem.poke(30, 2, table(35));
    mem.poke(35, 0, table(36));
    mem.poke(36, 0, table(37));
    mem.poke(37, 0, rw(38));
    mem.poke(37, 1, rw(L2));
    let before = snapshot(&mm, &mem);
    let r = mm.pin(&mut mem, DOM, 30, Level::L4);
    let want = MmError::TypeConflict {
        mfn: L2,
        has: FrameType::L2,
        wants: FrameType::Writable,
    };
    assert_refused(&mm, &mem, &before, r, want);
}

#[test]
fn mmu_12_attack_unpinning_the_active_root() {
    let (mut mm, mut mem, mut space) = tree();
    let before = snapshot(&mm, &mem);
    let r = mm.unpin(&mut mem, DOM, L4);
    assert_refused(&mm, &mem, &before, r, MmError::RootLoaded(L4));
    assert_eq!(MmError::RootLoaded(L4).abi(), Abi::WrongState);
    // After loading another root, the old one may go.
    mm.pin(&mut mem, DOM, 30, Level::L4).unwrap();
    mm.switch_root(&mut space, 30).unwrap();
    mm.unpin(&mut mem, DOM, L4).unwrap();
    for mfn in [L4, L3, L2, L1, DATA] {
        assert!(mm.frame(mfn).unwrap().idle(), "frame {mfn}");
    }
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_12_unpin_requires_a_pin() {
    let (mut mm, mut mem, _) = tree();
    let before = snapshot(&mm, &mem);
    let r = mm.unpin(&mut mem, DOM, L3);
    assert_refused(&mm, &mem, &before, r, MmError::NotPinned(L3));
    let r = mm.unpin(&mut mem, DOM, 20);
    assert_refused(&mm, &mem, &before, r, MmError::NotPinned(20));
}

#[test]
fn mmu_12_unpin_keeps_tables_still_referenced() {
    let (mut mm, mut mem, _) = tree();
    mm.pin(&mut mem, DOM, L1, Level::L1).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L2, 0), 0).unwrap();
    assert_eq!(view(&mm, L1).ty, FrameType::L1);
    mm.unpin(&mut mem, DOM, L1).unwrap();
    assert!(mm.frame(L1).unwrap().idle());
    assert!(mm.frame(DATA).unwrap().idle());
    audit::audit(&mm, &mem).unwrap();
}

// ----- MMU-3: the hypervisor's slots -----

#[test]
fn mmu_3_attack_touching_the_hypervisor_slots() {
    let (mut mm, mut mem, _) = tree();
    for index in [256, 300, 511] {
        for value in [0, ro(20), table(L3)] {
            let before = snapshot(&mm, &mem);
            let r = mm.mmu_update_one(&mut mem, DOM, ptr(L4, index), value);
            assert_refused(&mm, &mem, &before, r, MmError::HypervisorSlot);
        }
    }
    assert_eq!(MmError::HypervisorSlot.abi(), Abi::PermissionDenied);
}

#[test]
fn mmu_3_validation_installs_the_template_and_release_clears_it() {
    let (mut mm, mut mem) = machine();
    // Guest-planted junk in the upper half is overwritten, not validated.
    mem.poke(30, 256, table(HYP_FRAMES.start + 2));
    mem.poke(30, 400, u64::MAX);
    mm.pin(&mut mem, DOM, 30, Level::L4).unwrap();
    for (i, v) in template().iter().enumerate() {
        assert_eq!(mem.peek(30, 256 + i), *v);
    }
    audit::audit(&mm, &mem).unwrap();
    mm.unpin(&mut mem, DOM, 30).unwrap();
    for i in 256..512 {
        assert_eq!(mem.peek(30, i), 0);
    }
}

// ----- MMU-4, MMU-5, MMU-6, MMU-9: entry bits -----

#[test]
fn mmu_4_not_present_entries_hold_anything() {
    let (mut mm, mut mem, _) = tree();
    for value in [!PRESENT, 0xdead_beef_0000_0000, 2] {
        for p in [ptr(L4, 9), ptr(L3, 9), ptr(L2, 9), ptr(L1, 9)] {
            mm.mmu_update_one(&mut mem, DOM, p, value).unwrap();
        }
    }
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_5_attack_reserved_bits() {
    let (mut mm, mut mem, _) = tree();
    // Address bits above MAXPHYADDR (46 here) and bits 52..=62.
    for bit in (46..52).chain(52..63) {
        for (p, base) in [
            (ptr(L1, 9), rw(20)),
            (ptr(L2, 9), table(21)),
            (ptr(L3, 9), table(21)),
            (ptr(L4, 9), table(21)),
        ] {
            let before = snapshot(&mm, &mem);
            let r = mm.mmu_update_one(&mut mem, DOM, p, base | (1 << bit));
            assert_refused(&mm, &mem, &before, r, MmError::ReservedBits(1 << bit));
        }
    }
    assert_eq!(MmError::ReservedBits(1).abi(), Abi::InvalidArgument);
}

#[test]
fn mmu_5_attack_cache_attributes_and_global() {
    // XSA-402: no cache-attribute aliases of RAM; G would survive a switch.
    let (mut mm, mut mem, _) = tree();
    for bit in [PWT, PCD, PS_OR_PAT, GLOBAL] {
        let before = snapshot(&mm, &mem);
        let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), rw(20) | bit);
        assert_refused(&mm, &mem, &before, r, MmError::ForbiddenBits(bit));
    }
    for p in [ptr(L2, 9), ptr(L3, 9), ptr(L4, 9)] {
        for bit in [PWT, PCD, GLOBAL, DIRTY] {
            let before = snapshot(&mm, &mem);
            let r = mm.mmu_update_one(&mut mem, DOM, p, table(21) | bit);
            assert_refused(&mm, &mem, &before, r, MmError::ForbiddenBits(bit));
        }
    }
    // Accessed, dirty (leaf), available bits and NX are the guest's.
    mm.mmu_update_one(
        &mut mem,
        DOM,
        ptr(L1, 9),
        rw(20) | ACCESSED | DIRTY | (7 << 9),
    )
    .unwrap();
    mm.mmu_update_one(
        &mut mem,
        DOM,
        ptr(L2, 9),
        table(21) | ACCESSED | NX | (7 << 9),
    )
    .unwrap();
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_6_present_entries_must_be_user() {
    let (mut mm, mut mem, _) = tree();
    for (p, value) in [
        (ptr(L1, 9), rw(20)),
        (ptr(L2, 9), table(21)),
        (ptr(L3, 9), table(21)),
        (ptr(L4, 9), table(21)),
    ] {
        let before = snapshot(&mm, &mem);
        let r = mm.mmu_update_one(&mut mem, DOM, p, value & !USER);
        assert_refused(&mm, &mem, &before, r, MmError::NotUser);
    }
}

#[test]
fn mmu_9_attack_large_pages() {
    // XSA-148: PS must never slip through, including as a flags-only change
    // of an existing entry.
    let (mut mm, mut mem, _) = tree();
    for (p, value) in [
        (ptr(L2, 0), table(L1)),
        (ptr(L2, 9), rw(0)),
        (ptr(L3, 0), table(L2)),
        (ptr(L3, 9), rw(0)),
        (ptr(L4, 0), table(L3)),
    ] {
        let before = snapshot(&mm, &mem);
        let r = mm.mmu_update_one(&mut mem, DOM, p, value | PS_OR_PAT);
        assert_refused(&mm, &mem, &before, r, MmError::LargePage);
    }
}

// ----- MMU-8: frames that do not exist -----

#[test]
fn mmu_8_attack_entry_past_the_end_of_memory() {
    let (mut mm, mut mem, _) = tree();
    for mfn in [FRAMES, FRAMES + 1, (1 << 34) - 1] {
        for (p, value) in [
            (ptr(L1, 9), rw(mfn)),
            (ptr(L1, 9), ro(mfn)),
            (ptr(L2, 9), table(mfn)),
            (ptr(L4, 9), table(mfn)),
        ] {
            let before = snapshot(&mm, &mem);
            let r = mm.mmu_update_one(&mut mem, DOM, p, value);
            assert_refused(&mm, &mem, &before, r, MmError::NoSuchFrame(mfn));
        }
    }
    assert_eq!(MmError::NoSuchFrame(0).abi(), Abi::NotFound);
}

// ----- MMU-13 / MMU-15: mmu_update -----

#[test]
fn mmu_13_update_pointer_rules() {
    let (mut mm, mut mem, _) = tree();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9) + 4, 0);
    assert_refused(&mm, &mem, &before, r, MmError::MisalignedPointer);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(FRAMES, 0), 0);
    assert_refused(&mm, &mem, &before, r, MmError::NoSuchFrame(FRAMES));
    let r = mm.mmu_update_one(&mut mem, DOM, !7, 0);
    assert_refused(&mm, &mem, &before, r, MmError::NoSuchFrame(u64::MAX >> 12));
    // A data frame or an untyped frame has no entries to update.
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(DATA, 0), 0);
    assert_refused(&mm, &mem, &before, r, MmError::NotATable(DATA));
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(20, 0), rw(21));
    assert_refused(&mm, &mem, &before, r, MmError::NotATable(20));
    assert_eq!(MmError::NotATable(0).abi(), Abi::TypeConflict);
}

#[test]
fn mmu_15_batch_failing_midway_reports_index_prefix_applied_suffix_not() {
    let (mut mm, mut mem, _) = tree();
    let batch = [
        (ptr(L1, 10), rw(20)),
        (ptr(L1, 11), ro(21)),
        (ptr(L1, 0), 0),
        (ptr(L1, 12), rw(L2)), // refused
        (ptr(L1, 13), rw(22)),
    ];
    let r = mm.mmu_update(&mut mem, DOM, batch);
    assert_eq!(
        r,
        Err(BatchError {
            index: 3,
            error: MmError::TypeConflict {
                mfn: L2,
                has: FrameType::L2,
                wants: FrameType::Writable
            }
        })
    );
    assert_eq!(mem.peek(L1, 10), rw(20));
    assert_eq!(mem.peek(L1, 11), ro(21));
    assert_eq!(mem.peek(L1, 0), 0);
    assert_eq!(mem.peek(L1, 12), 0);
    assert_eq!(mem.peek(L1, 13), 0);
    assert_eq!(view(&mm, 20).ty, FrameType::Writable);
    assert_eq!(view(&mm, 21).total_count, 1);
    assert!(mm.frame(DATA).unwrap().idle());
    assert!(mm.frame(22).unwrap().idle());
    audit::audit(&mm, &mem).unwrap();
    assert_eq!(mm.mmu_update(&mut mem, DOM, [(ptr(L1, 13), rw(22))]), Ok(1));
}

#[test]
fn mmu_13_a_new_table_entry_validates_the_subtree_and_old_one_is_released() {
    let (mut mm, mut mem, _) = tree();
    mem.poke(20, 0, table(21));
    mem.poke(21, 0, rw(22));
    mm.mmu_update_one(&mut mem, DOM, ptr(L3, 0), table(20))
        .unwrap();
    assert_eq!(view(&mm, 20).ty, FrameType::L2);
    assert_eq!(view(&mm, 21).ty, FrameType::L1);
    assert_eq!(view(&mm, 22).ty, FrameType::Writable);
    for mfn in [L2, L1, DATA] {
        assert!(mm.frame(mfn).unwrap().idle(), "frame {mfn}");
    }
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_13_cpu_set_accessed_and_dirty_bits_do_not_confuse_accounting() {
    let (mut mm, mut mem, _) = tree();
    mem.poke(L4, 0, mem.peek(L4, 0) | ACCESSED);
    mem.poke(L2, 0, mem.peek(L2, 0) | ACCESSED);
    mem.poke(L1, 0, mem.peek(L1, 0) | ACCESSED | DIRTY);
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 0), 0).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L2, 0), 0).unwrap();
    assert!(mm.frame(L1).unwrap().idle());
    assert!(mm.frame(DATA).unwrap().idle());
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_1_count_overflow_is_refused() {
    let (mut mm, mut mem, _) = tree();
    mm.frame_mut(20).total_count = u32::MAX;
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), ro(20));
    assert_eq!(r, Err(MmError::CountOverflow(20)));
    assert_eq!(snapshot(&mm, &mem), before);
    mm.frame_mut(20).total_count = 0;
    mm.frame_mut(DATA).type_count = u32::MAX;
    mm.frame_mut(DATA).total_count = u32::MAX - 1;
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), rw(DATA));
    assert_eq!(r, Err(MmError::CountOverflow(DATA)));
    assert_eq!(snapshot(&mm, &mem), before);
    assert_eq!(MmError::CountOverflow(0).abi(), Abi::TypeConflict);
}

// ----- MMU-14: switch_root -----

#[test]
fn mmu_14_switch_root_needs_a_pinned_l4_of_the_domain() {
    let (mut mm, mut mem, mut space) = tree();
    let before = snapshot(&mm, &mem);
    let r = mm.switch_root(&mut space, 20);
    assert_refused(&mm, &mem, &before, r, MmError::NotPinned(20));
    let r = mm.switch_root(&mut space, L3);
    assert_refused(&mm, &mem, &before, r, MmError::NotPinned(L3));
    mm.pin(&mut mem, DOM, 20, Level::L1).unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.switch_root(&mut space, 20);
    let want = MmError::TypeConflict {
        mfn: 20,
        has: FrameType::L1,
        wants: FrameType::L4,
    };
    assert_refused(&mm, &mem, &before, r, want);
    let r = mm.switch_root(&mut space, FRAMES);
    assert_refused(&mm, &mem, &before, r, MmError::NoSuchFrame(FRAMES));
    assert_eq!(space.root(), Some(L4));
    mm.pin(&mut mem, DOM, 30, Level::L4).unwrap();
    assert_eq!(mm.switch_root(&mut space, 30), Ok(30 << 12));
    assert_eq!((view(&mm, L4).loaded, view(&mm, 30).loaded), (0, 1));
    mm.detach(&mut space);
    assert_eq!(view(&mm, 30).loaded, 0);
    audit::audit(&mm, &mem).unwrap();
}

// ----- MMU-17: update_va_mapping -----

#[test]
fn mmu_17_update_va_mapping_sets_the_leaf() {
    let (mut mm, mut mem, _) = tree();
    mm.update_va_mapping(&mut mem, DOM, L4, 0x5000, rw(20))
        .unwrap();
    assert_eq!(mem.peek(L1, 5), rw(20));
    mm.update_va_mapping(&mut mem, DOM, L4, 0x1000, 0).unwrap();
    assert!(mm.frame(DATA + 1).unwrap().idle());
    audit::audit(&mm, &mem).unwrap();
}

/// The walk re-checks what validation already refused (MMU-9): a large
/// page met on the way down, here forced into a validated L2 behind the
/// validator's back, stops it before anything is written.
#[test]
fn mmu_17_walk_refuses_a_large_page_on_the_way() {
    let (mut mm, mut mem, _) = tree();
    mem.poke(L2, 0, table(L1) | PS_OR_PAT);
    let r = mm.update_va_mapping(&mut mem, DOM, L4, 0x5000, rw(20));
    assert_eq!(r, Err(MmError::LargePage));
    assert_eq!(mem.peek(L1, 5), 0, "nothing written");
    assert_eq!(view(&mm, 20).total_count, 0, "no reference taken");
}

#[test]
fn mmu_17_update_va_mapping_refusals() {
    let (mut mm, mut mem, _) = tree();
    let before = snapshot(&mm, &mem);
    for va in [1 << 47, 0xffff_8000_0000_0000, !0xfff] {
        let r = mm.update_va_mapping(&mut mem, DOM, L4, va, 0);
        assert_refused(&mm, &mem, &before, r, MmError::VaOutOfRange);
    }
    let r = mm.update_va_mapping(&mut mem, DOM, L4, 0x5008, 0);
    assert_refused(&mm, &mem, &before, r, MmError::MisalignedVa);
    // Not mapped at L4, L3 and L2.
    for va in [1 << 39, 1 << 30, 1 << 21] {
        let r = mm.update_va_mapping(&mut mem, DOM, L4, va, rw(20));
        assert_refused(&mm, &mem, &before, r, MmError::NotMapped);
    }
    assert_eq!(MmError::NotMapped.abi(), Abi::BadAddress);
    // The leaf rules are the same as mmu_update's.
    let r = mm.update_va_mapping(&mut mem, DOM, L4, 0x5000, rw(L1));
    let want = MmError::TypeConflict {
        mfn: L1,
        has: FrameType::L1,
        wants: FrameType::Writable,
    };
    assert_refused(&mm, &mem, &before, r, want);
    // The root must be an L4 in use.
    let r = mm.update_va_mapping(&mut mem, DOM, L3, 0x5000, rw(20));
    let want = MmError::TypeConflict {
        mfn: L3,
        has: FrameType::L3,
        wants: FrameType::L4,
    };
    assert_refused(&mm, &mem, &before, r, want);
}

// The remembered walk (`WalkHint`): reused only while the three entries
// it read hold their values. Each attack warms it, changes an entry above
// the L1 while the old L1 stays a pinned L1 of the domain's (so only the
// entry comparison can tell), and expects what a fresh walk gives.

#[test]
fn mmu_17_attack_remembered_walk_l2_entry_repointed() {
    let (mut mm, mut mem, _) = tree();
    mm.update_va_mapping(&mut mem, DOM, L4, 0x5000, rw(20))
        .unwrap();
    mm.pin(&mut mem, DOM, L1, Level::L1).unwrap();
    mm.pin(&mut mem, DOM, 25, Level::L1).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L2, 0), table(25))
        .unwrap();
    mm.update_va_mapping(&mut mem, DOM, L4, 0x6000, rw(21))
        .unwrap();
    assert_eq!(mem.peek(25, 6), rw(21), "the write went to the new L1");
    assert_eq!(mem.peek(L1, 6), 0, "the old L1 was not written");
    assert_eq!(view(&mm, 21).type_count, 1);
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_17_attack_remembered_walk_upper_entry_cleared() {
    for (table_mfn, level) in [(L4, "L4"), (L3, "L3"), (L2, "L2")] {
        let (mut mm, mut mem, _) = tree();
        mm.update_va_mapping(&mut mem, DOM, L4, 0x5000, rw(20))
            .unwrap();
        mm.pin(&mut mem, DOM, L1, Level::L1).unwrap();
        mm.mmu_update_one(&mut mem, DOM, ptr(table_mfn, 0), 0)
            .unwrap();
        assert_eq!(view(&mm, L1).ty, FrameType::L1, "{level}: L1 still typed");
        let before = snapshot(&mm, &mem);
        let r = mm.update_va_mapping(&mut mem, DOM, L4, 0x6000, rw(21));
        assert_refused(&mm, &mem, &before, r, MmError::NotMapped);
    }
}

/// An entry changed behind the validator's back (as in
/// `mmu_17_walk_refuses_a_large_page_on_the_way`) after the walk was
/// remembered: the comparison sees it, the walk runs and refuses.
#[test]
fn mmu_17_attack_remembered_walk_entry_written_directly() {
    let (mut mm, mut mem, _) = tree();
    mm.update_va_mapping(&mut mem, DOM, L4, 0x5000, rw(20))
        .unwrap();
    mem.poke(L2, 0, table(L1) | PS_OR_PAT);
    let r = mm.update_va_mapping(&mut mem, DOM, L4, 0x6000, rw(21));
    assert_eq!(r, Err(MmError::LargePage));
    assert_eq!(mem.peek(L1, 6), 0, "nothing written");
    assert_eq!(view(&mm, 21).total_count, 0, "no reference taken");
}

/// The remembered L1's own record no longer what the walk found (staged
/// behind the validator's back: the entries above cannot change it, see
/// `WalkHint`). `Mm::update_leaf` makes none of `update_entry`'s table
/// tests: it relies on `hinted_l1` having made the walk's (an L1 of the
/// domain's in use, not partial). With that test taken out the write lands
/// in the L1 the record says is busy, or is another domain's.
#[test]
fn mmu_17_attack_remembered_walk_l1_record_changed() {
    use super::super::frame::PARTIAL;
    fn busy(mm: &mut Mm) {
        mm.frame_mut(L1).flags |= PARTIAL;
    }
    fn foreign(mm: &mut Mm) {
        mm.frame_mut(L1).owner = Owner::Domain(OTHER);
    }
    let cases = [
        ("partial", busy as fn(&mut Mm), MmError::Busy(L1)),
        (
            "another domain's",
            foreign,
            MmError::TypeConflict {
                mfn: L1,
                has: FrameType::L1,
                wants: FrameType::L1,
            },
        ),
    ];
    for (what, stage, want) in cases {
        let (mut mm, mut mem, _) = tree();
        mm.update_va_mapping(&mut mem, DOM, L4, 0x5000, rw(20))
            .unwrap();
        stage(&mut mm);
        let r = mm.update_va_mapping(&mut mem, DOM, L4, 0x6000, rw(21));
        assert_eq!(r, Err(want), "{what}");
        assert_eq!(mem.peek(L1, 6), 0, "{what}: nothing written");
        assert_eq!(
            view(&mm, 21),
            FrameView {
                owner: Owner::Domain(DOM),
                ..FrameView::default()
            },
            "{what}: no reference taken"
        );
    }
}

#[test]
fn mmu_17_attack_fast_path_through_the_linear_slot() {
    // With a self entry at slot 5, va 5<<39 | 5<<30 | 5<<21 | x walks
    // L4 -> L4 -> L4 -> L4 and would land the "leaf" in the L4 itself.
    let (mut mm, mut mem, _) = tree();
    mm.mmu_update_one(&mut mem, DOM, ptr(L4, 5), ro(L4))
        .unwrap();
    let linear = (5 << 39) | (5 << 30) | (5 << 21);
    for va in [linear, 5 << 39] {
        let before = snapshot(&mm, &mem);
        let r = mm.update_va_mapping(&mut mem, DOM, L4, va, table(20));
        let want = MmError::TypeConflict {
            mfn: L4,
            has: FrameType::L4,
            wants: FrameType::L3,
        };
        assert_refused(&mm, &mem, &before, r, want);
    }
}

// ----- MMU-16, MMU-18, MMU-19: teardown, special frames, ownership -----

#[test]
fn mmu_16_teardown_releases_everything() {
    let (mut mm, mut mem, _) = tree();
    mm.pin(&mut mem, DOM, 30, Level::L4).unwrap();
    mm.pin(&mut mem, DOM, 25, Level::L1).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), ro(L3))
        .unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L4, 5), ro(L4))
        .unwrap();
    assert_eq!(mm.teardown(&mut mem, DOM), 3);
    for mfn in 0..OTHER_FRAMES.start {
        let f = mm.frame(mfn).unwrap();
        assert!(f.idle(), "frame {mfn}");
        assert_eq!(f.frame_type(), FrameType::None);
        assert_eq!(f.owner(), Owner::Domain(DOM));
    }
    audit::audit(&mm, &mem).unwrap();
    for mfn in 0..OTHER_FRAMES.start {
        mm.assign(mfn, Owner::Free).unwrap();
    }
}

#[test]
fn mmu_18_special_frames() {
    let (mut mm, mut mem, _) = tree();
    mm.share_special(26, DOM, false).unwrap();
    mm.share_special(27, DOM, true).unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), rw(26));
    assert_refused(&mm, &mem, &before, r, MmError::ReadOnlyFrame(26));
    assert_eq!(MmError::ReadOnlyFrame(26).abi(), Abi::PermissionDenied);
    for level in Level::ALL {
        let r = mm.pin(&mut mem, DOM, 27, level);
        assert_refused(&mm, &mem, &before, r, MmError::HeldFrame(27));
    }
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L2, 9), table(27));
    assert_refused(&mm, &mem, &before, r, MmError::HeldFrame(27));
    assert_eq!(MmError::HeldFrame(27).abi(), Abi::TypeConflict);
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), ro(26))
        .unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 10), rw(27))
        .unwrap();
    let v = view(&mm, 27);
    assert_eq!(
        (v.ty, v.type_count, v.total_count),
        (FrameType::Special, 0, 1)
    );
    audit::audit(&mm, &mem).unwrap();
    // Not revocable while mapped; revocable after teardown.
    assert_eq!(
        mm.assign(27, Owner::Hypervisor),
        Err(MmError::FrameInUse(27))
    );
    assert_eq!(MmError::FrameInUse(27).abi(), Abi::WrongState);
    mm.teardown(&mut mem, DOM);
    assert_eq!(view(&mm, 27).ty, FrameType::Special);
    // Teardown leaves the hypervisor's hold: only its holder drops it.
    assert_eq!(
        mm.assign(27, Owner::Hypervisor),
        Err(MmError::FrameInUse(27))
    );
    mm.release_hold(27).unwrap();
    mm.assign(27, Owner::Hypervisor).unwrap();
    assert_eq!(view(&mm, 27).ty, FrameType::None);
    assert_eq!(view(&mm, 27).held, 0);
}

#[test]
fn mmu_19_frames_in_use_cannot_change_hands() {
    let (mut mm, mut mem, _) = tree();
    for mfn in [L4, L3, L1, DATA] {
        assert_eq!(mm.assign(mfn, Owner::Free), Err(MmError::FrameInUse(mfn)));
        assert_eq!(
            mm.share_special(mfn, DOM, true),
            Err(MmError::FrameInUse(mfn))
        );
    }
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), ro(20))
        .unwrap();
    assert_eq!(mm.assign(20, Owner::Free), Err(MmError::FrameInUse(20)));
    audit::audit(&mm, &mem).unwrap();
}

// ----- MMU-20: TLB flushes -----

#[test]
fn mmu_20_retyping_a_frame_whose_writable_mapping_was_dropped_needs_a_flush() {
    let (mut mm, mut mem, _) = tree();
    assert!(!mm.take_flush_request());
    // Remove the writable mapping of DATA: no flush needed yet (the guest
    // may still use a stale translation of its own writable data).
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 0), 0).unwrap();
    assert!(!mm.take_flush_request());
    // Now DATA becomes a page table: a stale writable TLB entry would let
    // the guest write a validated table.
    mm.pin(&mut mem, DOM, DATA, Level::L1).unwrap();
    assert!(mm.take_flush_request());
    assert!(!mm.take_flush_request());
}

#[test]
fn mmu_20_reusing_a_dropped_table_as_data_needs_a_flush() {
    let (mut mm, mut mem, _) = tree();
    mm.mmu_update_one(&mut mem, DOM, ptr(L2, 0), 0).unwrap();
    assert!(!mm.take_flush_request());
    // The CPU may still cache L1 as the table for va 0..2M.
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 0), 0).unwrap_err();
    mem.poke(20, 0, table(21));
    mm.mmu_update_one(&mut mem, DOM, ptr(L3, 1), table(20))
        .unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(21, 0), rw(L1))
        .unwrap();
    assert!(mm.take_flush_request());
}

#[test]
fn mmu_20_fresh_frames_and_flushed_epochs_need_no_flush() {
    let (mut mm, mut mem, _) = tree();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), rw(20))
        .unwrap();
    mm.pin(&mut mem, DOM, 21, Level::L1).unwrap();
    assert!(!mm.take_flush_request());
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), 0).unwrap();
    mm.note_tlb_flushed();
    mm.pin(&mut mem, DOM, 20, Level::L1).unwrap();
    assert!(!mm.take_flush_request());
}

#[test]
fn mmu_20_owner_change_after_a_dropped_mapping_needs_a_flush() {
    let (mut mm, mut mem, _) = tree();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), ro(20))
        .unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), 0).unwrap();
    assert!(!mm.take_flush_request());
    mm.assign(20, Owner::Domain(OTHER)).unwrap();
    assert!(mm.take_flush_request());
}

// ----- configuration -----

#[test]
fn config_is_checked() {
    let cfg = |frames, bits| MmConfig {
        frames,
        max_phys_bits: bits,
        hypervisor_slots: template(),
    };
    assert_eq!(Mm::new(&cfg(16, 31)).unwrap_err(), MmError::BadConfig);
    assert_eq!(Mm::new(&cfg(16, 53)).unwrap_err(), MmError::BadConfig);
    assert_eq!(Mm::new(&cfg(1 << 21, 32)).unwrap_err(), MmError::BadConfig);
    assert!(Mm::new(&cfg(1 << 20, 32)).is_ok());
    let mut user_slot = cfg(16, 46);
    user_slot.hypervisor_slots[3] = (50 << 12) | PRESENT | USER;
    assert_eq!(Mm::new(&user_slot).unwrap_err(), MmError::BadConfig);
    assert_eq!(core::mem::size_of::<FrameInfo>(), 24);
}

#[test]
fn every_error_maps_to_the_documented_code() {
    let table = [
        (MmError::NoSuchFrame(0), Abi::NotFound),
        (MmError::NotOwner(0), Abi::PermissionDenied),
        (MmError::ReadOnlyFrame(0), Abi::PermissionDenied),
        (MmError::HypervisorSlot, Abi::PermissionDenied),
        (MmError::ReservedBits(0), Abi::InvalidArgument),
        (MmError::ForbiddenBits(0), Abi::InvalidArgument),
        (MmError::LargePage, Abi::InvalidArgument),
        (MmError::NotUser, Abi::InvalidArgument),
        (MmError::MisalignedPointer, Abi::InvalidArgument),
        (MmError::MisalignedVa, Abi::InvalidArgument),
        (MmError::BadLevel, Abi::InvalidArgument),
        (MmError::BadConfig, Abi::InvalidArgument),
        (MmError::WritableSelfMap, Abi::TypeConflict),
        (MmError::NotATable(0), Abi::TypeConflict),
        (MmError::CountOverflow(0), Abi::TypeConflict),
        (MmError::AlreadyPinned(0), Abi::WrongState),
        (MmError::NotPinned(0), Abi::WrongState),
        (MmError::RootLoaded(0), Abi::WrongState),
        (MmError::FrameInUse(0), Abi::WrongState),
        (MmError::NotHeld(0), Abi::WrongState),
        (MmError::HeldFrame(0), Abi::TypeConflict),
        (MmError::NotHoldable(0), Abi::TypeConflict),
        (MmError::VaOutOfRange, Abi::BadAddress),
        (MmError::NotMapped, Abi::BadAddress),
    ];
    for (e, code) in table {
        assert_eq!(Abi::from(e), code, "{e:?}");
    }
}
