//! MEM-8: frames the hypervisor holds (shared info, and the grant and ring
//! pages to come) cannot be released, handed to anyone or made a page
//! table while held; the audit counts the holds.

use super::*;
use hypercall_abi::Error as Abi;

#[test]
fn mem_8_a_held_frame_cannot_change_hands_or_become_a_table() {
    let (mut mm, mut mem, _) = tree();
    let f = 20;
    mm.hold(f, DOM).unwrap();
    assert_eq!(view(&mm, f).held, 1);
    assert!(!mm.frame(f).unwrap().idle());
    let before = snapshot(&mm, &mem);
    let r = mm.assign(f, Owner::Free);
    assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(f));
    let r = mm.assign(f, Owner::Domain(OTHER));
    assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(f));
    let r = mm.share_special(f, OTHER, true);
    assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(f));
    for level in Level::ALL {
        let r = mm.pin(&mut mem, DOM, f, level);
        assert_refused(&mm, &mem, &before, r, MmError::HeldFrame(f));
    }
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L2, 9), table(f));
    assert_refused(&mm, &mem, &before, r, MmError::HeldFrame(f));
    audit::audit_holds(&mm, &mem, &[f]).unwrap();
    // Its owner may still map it, writable too (a ring page).
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), rw(f)).unwrap();
    assert_eq!(view(&mm, f).ty, FrameType::Writable);
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), 0).unwrap();
    audit::audit_holds(&mm, &mem, &[f]).unwrap();
    // Released: idle again, and free to go.
    mm.release_hold(f).unwrap();
    assert!(mm.frame(f).unwrap().idle());
    audit::audit_holds(&mm, &mem, &[]).unwrap();
    mm.assign(f, Owner::Free).unwrap();
}

#[test]
fn mem_8_holds_count_and_only_fit_plain_frames_of_the_owner() {
    let (mut mm, mut mem, _) = tree();
    let before = snapshot(&mm, &mem);
    for (mfn, dom, want) in [
        (L1, DOM, MmError::NotHoldable(L1)),
        (L4, DOM, MmError::NotHoldable(L4)),
        (
            OTHER_FRAMES.start,
            DOM,
            MmError::NotOwner(OTHER_FRAMES.start),
        ),
        (HYP_FRAMES.start, DOM, MmError::NotOwner(HYP_FRAMES.start)),
        (FREE_FRAME, DOM, MmError::NotOwner(FREE_FRAME)),
        (FRAMES, DOM, MmError::NoSuchFrame(FRAMES)),
        (20, OTHER, MmError::NotOwner(20)),
    ] {
        let r = mm.hold(mfn, dom);
        assert_refused(&mm, &mem, &before, r, want);
    }
    let r = mm.release_hold(20);
    assert_refused(&mm, &mem, &before, r, MmError::NotHeld(20));
    // Two holds need two releases.
    mm.hold(20, DOM).unwrap();
    mm.hold(20, DOM).unwrap();
    mm.release_hold(20).unwrap();
    assert!(!mm.frame(20).unwrap().idle());
    assert_eq!(mm.assign(20, Owner::Free), Err(MmError::FrameInUse(20)));
    mm.release_hold(20).unwrap();
    mm.frame_mut(20).held = u16::MAX;
    assert_eq!(mm.hold(20, DOM), Err(MmError::CountOverflow(20)));
    mm.frame_mut(20).held = 0;
    // A mapped data frame may be held (a ring page the guest uses).
    mm.hold(DATA, DOM).unwrap();
    audit::audit_holds(&mm, &mem, &[DATA]).unwrap();
    let _ = &mut mem;
}

/// Finding 1 of issue 7, in the model: the shared-info frame, unmapped by
/// its guest, must still not go back to the pool while the hypervisor
/// writes event bits into it.
#[test]
fn mem_8_shared_info_unmapped_is_still_held() {
    let (mut mm, mut mem, _) = tree();
    mm.share_special(27, DOM, true).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 10), rw(27))
        .unwrap();
    // The guest maps another frame where shared info was.
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 10), rw(21))
        .unwrap();
    let v = view(&mm, 27);
    assert_eq!((v.ty, v.total_count, v.held), (FrameType::Special, 0, 1));
    let before = snapshot(&mm, &mem);
    let r = mm.assign(27, Owner::Free);
    assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(27));
    assert_eq!(MmError::FrameInUse(27).abi(), Abi::WrongState);
    let r = mm.pin(&mut mem, DOM, 27, Level::L1);
    assert_refused(&mm, &mem, &before, r, MmError::HeldFrame(27));
    audit::audit_holds(&mm, &mem, &[27]).unwrap();
    // The last hold of a mapped Special frame cannot be dropped.
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 11), rw(27))
        .unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.release_hold(27);
    assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(27));
}

/// Dropping a hold ends the sharing only for the last hold of a `Special`
/// frame: a mapped data frame (a ring page) lets its hold go and stays
/// mapped, and a `Special` frame held twice stays `Special` after one.
#[test]
fn mem_8_release_ends_sharing_only_on_the_last_special_hold() {
    let (mut mm, mut mem, _) = tree();
    let mapped = view(&mm, DATA);
    assert_ne!(mapped.total_count, 0, "DATA is mapped in the tree");
    mm.hold(DATA, DOM).unwrap();
    mm.release_hold(DATA).unwrap();
    assert_eq!(view(&mm, DATA), mapped, "the mapping is untouched");
    mm.share_special(27, DOM, true).unwrap();
    mm.hold(27, DOM).unwrap();
    mm.release_hold(27).unwrap();
    let v = view(&mm, 27);
    assert_eq!((v.ty, v.held), (FrameType::Special, 1));
    assert!(mm.frame(27).unwrap().special_writable());
    mm.release_hold(27).unwrap();
    let v = view(&mm, 27);
    assert_eq!((v.ty, v.held), (FrameType::None, 0));
    assert!(!mm.frame(27).unwrap().special_writable());
    audit::audit_holds(&mm, &mem, &[]).unwrap();
    let _ = &mut mem;
}
