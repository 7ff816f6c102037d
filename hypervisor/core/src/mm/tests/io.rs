//! IO-0: device frames. Only the hypervisor maps a delegated device frame
//! (into its driver domain's L1); a guest-made entry naming a device frame
//! (the virtio-mmio frame 0xfeb00, the IOAPIC 0xfec00, the LAPIC 0xfee00,
//! or a non-RAM frame the frame table gives to the hypervisor) is refused,
//! from the driver domain as from an ordinary guest; an installed entry the
//! domain overwrites or releases is dropped without any count.

use super::*;
use crate::mm::pte::{PCD, PWT};

const VIRTIO: Mfn = 0xfeb00;
const IOAPIC: Mfn = 0xfec00;
const LAPIC: Mfn = 0xfee00;
/// A non-RAM frame inside the frame table (the hypervisor's).
const HYP_DEV: Mfn = HYP_FRAMES.start + 5;

fn delegated() -> (Mm, Mem, AddressSpace) {
    let (mut mm, mem, space) = tree();
    mm.delegate_io(VIRTIO, DOM).unwrap();
    mm.delegate_io(HYP_DEV, DOM).unwrap();
    (mm, mem, space)
}

fn refusal(mfn: Mfn) -> MmError {
    if mfn < FRAMES {
        MmError::NotOwner(mfn)
    } else {
        MmError::NoSuchFrame(mfn)
    }
}

#[test]
fn io_0_guest_made_device_mappings_are_refused_for_driver_and_ordinary_guest() {
    let (mut mm, mut mem, _) = delegated();
    for mfn in [VIRTIO, IOAPIC, LAPIC, HYP_DEV] {
        let before = snapshot(&mm, &mem);
        // mmu_update from the driver domain itself, cached and uncached.
        let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), rw(mfn));
        assert_refused(&mm, &mem, &before, r, refusal(mfn));
        let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), ro(mfn));
        assert_refused(&mm, &mem, &before, r, refusal(mfn));
        let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), rw(mfn) | PCD | PWT);
        assert_refused(&mm, &mem, &before, r, MmError::ForbiddenBits(PCD | PWT));
        // Pin of a table holding the entry: the driver domain's (frame 30)
        // and an ordinary guest's (OTHER's first frame).
        for (dom, t) in [(DOM, 30), (OTHER, OTHER_FRAMES.start)] {
            mem.poke(t, 3, rw(mfn));
            let before = snapshot(&mm, &mem);
            let r = mm.pin(&mut mem, dom, t, Level::L1);
            assert_refused(&mm, &mem, &before, r, refusal(mfn));
            mem.poke(t, 3, 0);
        }
    }
}

#[test]
fn io_0_installed_entries_take_no_count_and_drop_safely() {
    let (mut mm, mut mem, mut space) = delegated();
    let hyp_before = view(&mm, HYP_DEV);
    let v = mm.install_io(&mut mem, DOM, L1, 100, VIRTIO).unwrap();
    assert_eq!(v & (PCD | PWT), PCD | PWT, "device entries are uncached");
    assert_eq!(mem.peek(L1, 100), v);
    mm.install_io(&mut mem, DOM, L1, 101, HYP_DEV).unwrap();
    assert_eq!(
        view(&mm, HYP_DEV),
        hyp_before,
        "an installed entry holds no count"
    );
    audit::audit(&mm, &mem).unwrap();
    // The domain overwrites both: no count moves, and it cannot put them back.
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 100), 0).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 101), rw(DATA))
        .unwrap();
    assert_eq!(view(&mm, HYP_DEV), hyp_before);
    audit::audit(&mm, &mem).unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 100), rw(VIRTIO));
    assert_refused(&mm, &mem, &before, r, MmError::NoSuchFrame(VIRTIO));
    // Installed again, then the whole tree goes (unlink, teardown).
    mm.install_io(&mut mem, DOM, L1, 102, VIRTIO).unwrap();
    mm.install_io(&mut mem, DOM, L1, 103, HYP_DEV).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L2, 0), 0).unwrap();
    assert_eq!(view(&mm, HYP_DEV), hyp_before);
    audit::audit(&mm, &mem).unwrap();
    // The released L1 still holds the values: re-validating it refuses them.
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L2, 0), table(L1));
    assert_refused(&mm, &mem, &before, r, MmError::ForbiddenBits(PCD | PWT));
    mm.detach(&mut space);
    mm.teardown(&mut mem, DOM);
    mm.revoke_io(DOM);
    assert!(!mm.is_io(VIRTIO) && !mm.is_io(HYP_DEV));
    assert_eq!(view(&mm, HYP_DEV), hyp_before);
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn io_0_install_and_delegate_refusals() {
    let (mut mm, mut mem, _) = delegated();
    mm.delegate_io(IOAPIC + 1, OTHER).unwrap();
    let before = snapshot(&mm, &mem);
    for (dom, l1, index, mfn, want) in [
        (DOM, L1, 100, IOAPIC, MmError::NotOwner(IOAPIC)),
        (DOM, L1, 100, IOAPIC + 1, MmError::NotOwner(IOAPIC + 1)),
        (OTHER, L1, 100, VIRTIO, MmError::NotOwner(VIRTIO)),
        (DOM, L2, 100, VIRTIO, MmError::NotATable(L2)),
        (DOM, 30, 100, VIRTIO, MmError::NotATable(30)),
        (DOM, L1, 0, VIRTIO, MmError::Busy(L1)),
        (DOM, L1, 512, VIRTIO, MmError::Busy(L1)),
    ] {
        let r = mm.install_io(&mut mem, dom, l1, index, mfn);
        assert_refused(&mm, &mem, &before, r, want);
    }
    // RAM is never a device frame; a device frame has one driver.
    assert_eq!(mm.delegate_io(20, DOM), Err(MmError::NotOwner(20)));
    assert_eq!(
        mm.delegate_io(FREE_FRAME, DOM),
        Err(MmError::NotOwner(FREE_FRAME))
    );
    assert_eq!(mm.delegate_io(VIRTIO, OTHER), Err(MmError::Busy(VIRTIO)));
    assert_eq!(mm.delegate_io(VIRTIO, DOM), Ok(()));
    assert_eq!(mm.io_frames(DOM).collect::<Vec<_>>(), vec![VIRTIO, HYP_DEV]);
}

#[test]
fn io_0_a_delegated_frame_cannot_change_hands_until_revoked() {
    // The release path trusts the frame's DEVICE flag (O(1)); the frame
    // must stay the hypervisor's device frame for as long as it is set.
    let (mut mm, mut mem, _) = delegated();
    let before = snapshot(&mm, &mem);
    for r in [
        mm.assign(HYP_DEV, Owner::Domain(DOM)),
        mm.assign(HYP_DEV, Owner::Free),
        mm.share_special(HYP_DEV, DOM, true),
    ] {
        assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(HYP_DEV));
    }
    assert!(mm.is_io(HYP_DEV));
    audit::audit(&mm, &mem).unwrap();
    // Revoked: an ordinary hypervisor frame again, free to hand over.
    mm.revoke_io(DOM);
    assert!(!mm.is_io(HYP_DEV) && !mm.is_io(VIRTIO));
    audit::audit(&mm, &mem).unwrap();
    mm.assign(HYP_DEV, Owner::Free).unwrap();
    // A revoked frame is no device frame: releasing an entry that names
    // it counts (here it is the domain's own data, mapped and unmapped).
    mm.assign(HYP_DEV, Owner::Domain(DOM)).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), rw(HYP_DEV))
        .unwrap();
    assert_eq!(view(&mm, HYP_DEV).total_count, 1);
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), 0).unwrap();
    assert_eq!(view(&mm, HYP_DEV).total_count, 0);
    assert_eq!(view(&mm, HYP_DEV).ty, FrameType::None);
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn io_0_released_device_entries_leave_every_count_alone_in_bulk() {
    // Many installed entries released by one unpin of their table: the
    // hypervisor's device frame and every other frame keep their counts.
    let (mut mm, mut mem, mut space) = delegated();
    for i in 100..164 {
        let mfn = if i % 2 == 0 { VIRTIO } else { HYP_DEV };
        mm.install_io(&mut mem, DOM, L1, i, mfn).unwrap();
    }
    audit::audit(&mm, &mem).unwrap();
    let hyp_before = view(&mm, HYP_DEV);
    mm.detach(&mut space);
    mm.teardown(&mut mem, DOM);
    assert_eq!(view(&mm, HYP_DEV), hyp_before);
    audit::audit(&mm, &mem).unwrap();
    mm.revoke_io(DOM);
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn io_0_audit_catches_a_device_flag_that_disagrees_with_the_list() {
    let (mut mm, mem, _) = delegated();
    audit::audit(&mm, &mem).unwrap();
    let flag = crate::mm::frame::DEVICE;
    let mut lost = mm.clone();
    lost.frame_mut(HYP_DEV).flags &= !flag;
    assert_eq!(
        audit::audit(&lost, &mem),
        Err(audit::AuditError {
            mfn: HYP_DEV,
            what: "device flag and delegated-frame list disagree"
        })
    );
    mm.frame_mut(HYP_DEV + 1).flags |= flag;
    assert_eq!(
        audit::audit(&mm, &mem),
        Err(audit::AuditError {
            mfn: HYP_DEV + 1,
            what: "device flag and delegated-frame list disagree"
        })
    );
}
