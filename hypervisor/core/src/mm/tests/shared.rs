//! MEM-2e: read-only image pages shared by the domains of one image. Only
//! those domains map them, only read-only; nobody types, pins, holds or
//! hands them on; the frame audit checks the rules; the record of users
//! frees the copy with the last one.

use super::*;
use crate::mm::images::{ShareError, SharedImages};

const IMG: ImageId = 7;
/// The shared page: a free frame of the test machine made the image's.
const PAGE: Mfn = FREE_FRAME;
/// The other domain's tree (it owns 40..48).
const O4: Mfn = 40;
const O3: Mfn = 41;
const O2: Mfn = 42;
const O1: Mfn = 43;

/// DOM's standard tree and OTHER's tree, both domains of `IMG`, whose page
/// `PAGE` is shared and not yet mapped.
fn two_of_one_image() -> (Mm, Mem) {
    let (mut mm, mut mem, _) = tree();
    mem.poke(O4, 0, table(O3));
    mem.poke(O3, 0, table(O2));
    mem.poke(O2, 0, table(O1));
    mm.pin(&mut mem, OTHER, O4, Level::L4).unwrap();
    mm.share_image(PAGE, IMG).unwrap();
    mm.set_domain_image(DOM, Some(IMG)).unwrap();
    mm.set_domain_image(OTHER, Some(IMG)).unwrap();
    audit::audit(&mm, &mem).unwrap();
    (mm, mem)
}

#[test]
fn mem_2e_every_domain_of_the_image_maps_the_one_copy_read_only() {
    let (mut mm, mut mem) = two_of_one_image();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), ro(PAGE))
        .unwrap();
    mm.mmu_update_one(&mut mem, OTHER, ptr(O1, 5), ro(PAGE))
        .unwrap();
    let v = view(&mm, PAGE);
    assert_eq!(v.owner, Owner::Image(IMG));
    assert_eq!((v.ty, v.type_count, v.total_count), (FrameType::None, 0, 2));
    audit::audit(&mm, &mem).unwrap();
    // The fast path too, through DOM's tree (va 5 * 4096 is L1[6]).
    mm.update_va_mapping(&mut mem, DOM, L4, 6 * 4096, ro(PAGE))
        .unwrap();
    assert_eq!(view(&mm, PAGE).total_count, 3);
    audit::audit(&mm, &mem).unwrap();
    for (dom, l1, i) in [(DOM, L1, 5), (DOM, L1, 6), (OTHER, O1, 5)] {
        mm.mmu_update_one(&mut mem, dom, ptr(l1, i), 0).unwrap();
    }
    assert_eq!(view(&mm, PAGE).total_count, 0);
    assert_eq!(view(&mm, PAGE).owner, Owner::Image(IMG));
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mem_2e_never_writable_by_anyone() {
    let (mut mm, mut mem) = two_of_one_image();
    mm.mmu_update_one(&mut mem, OTHER, ptr(O1, 5), ro(PAGE))
        .unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), rw(PAGE));
    assert_refused(&mm, &mem, &before, r, MmError::ReadOnlyFrame(PAGE));
    let r = mm.update_va_mapping(&mut mem, DOM, L4, 5 * 4096, rw(PAGE));
    assert_refused(&mm, &mem, &before, r, MmError::ReadOnlyFrame(PAGE));
    // A read-only mapping does not become writable by a flags-only update.
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), ro(PAGE))
        .unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), rw(PAGE));
    assert_refused(&mm, &mem, &before, r, MmError::ReadOnlyFrame(PAGE));
    assert_eq!(
        mm.may_map(OTHER, PAGE, true),
        Err(MmError::ReadOnlyFrame(PAGE))
    );
}

#[test]
fn mem_2e_other_images_and_imageless_domains_are_not_owners() {
    let (mut mm, mut mem) = two_of_one_image();
    mm.set_domain_image(OTHER, Some(IMG + 1)).unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, OTHER, ptr(O1, 5), ro(PAGE));
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    mm.set_domain_image(OTHER, None).unwrap();
    assert_eq!(mm.image_of(OTHER), None);
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, OTHER, ptr(O1, 5), ro(PAGE));
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    // A domain id never recorded.
    assert_eq!(mm.may_map(9999, PAGE, false), Err(MmError::NotOwner(PAGE)));
}

#[test]
fn mem_2e_never_a_table_a_root_a_hold_or_a_foreign_mapping() {
    let (mut mm, mut mem) = two_of_one_image();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), ro(PAGE))
        .unwrap();
    let before = snapshot(&mm, &mem);
    for level in [Level::L1, Level::L2, Level::L3, Level::L4] {
        let r = mm.pin(&mut mem, DOM, PAGE, level);
        assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    }
    let r = mm.unpin(&mut mem, DOM, PAGE);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    // Linked as a table from DOM's L2.
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L2, 1), table(PAGE));
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    // Its entries updated as a table's.
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(PAGE, 0), 0);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    let mut space = AddressSpace::new(DOM);
    let r = mm.switch_root(&mut space, PAGE);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    // The hypervisor holds only a domain's own frames (grant, ring pages).
    let r = mm.hold(PAGE, DOM);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    // A grant mapping of it, by either domain.
    let r = mm.map_foreign(&mut mem, OTHER, O4, 7 * 4096, PAGE, false);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    let r = mm.map_foreign(&mut mem, DOM, L4, 7 * 4096, PAGE, false);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
}

#[test]
fn mem_2e_unshared_only_unmapped_and_only_by_its_image() {
    let (mut mm, mut mem) = two_of_one_image();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), ro(PAGE))
        .unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.unshare_image(PAGE, IMG);
    assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(PAGE));
    let r = mm.unshare_image(PAGE, IMG + 1);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(PAGE));
    let r = mm.unshare_image(DATA, IMG);
    assert_refused(&mm, &mem, &before, r, MmError::NotOwner(DATA));
    // A frame in use cannot become an image's either.
    let r = mm.share_image(DATA, IMG);
    assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(DATA));
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), 0).unwrap();
    mm.unshare_image(PAGE, IMG).unwrap();
    assert_eq!(view(&mm, PAGE), FrameView::default());
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mem_2e_teardown_drops_the_references_and_leaves_the_copy_to_its_image() {
    let (mut mm, mut mem) = two_of_one_image();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), ro(PAGE))
        .unwrap();
    mm.mmu_update_one(&mut mem, OTHER, ptr(O1, 5), ro(PAGE))
        .unwrap();
    mm.teardown(&mut mem, DOM);
    assert_eq!(view(&mm, PAGE).total_count, 1);
    assert_eq!(view(&mm, PAGE).owner, Owner::Image(IMG));
    audit::audit(&mm, &mem).unwrap();
    mm.teardown(&mut mem, OTHER);
    assert!(mm.frame(PAGE).unwrap().idle());
    assert_eq!(view(&mm, PAGE).owner, Owner::Image(IMG));
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mem_2e_audit_catches_a_writable_or_foreign_image_mapping() {
    let (mut mm, mut mem) = two_of_one_image();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 5), ro(PAGE))
        .unwrap();
    audit::audit(&mm, &mem).unwrap();
    // The entry made writable behind the validator's back.
    let mut bad = mem.clone();
    bad.poke(L1, 5, rw(PAGE));
    assert_eq!(
        audit::audit(&mm, &bad).unwrap_err().what,
        "mapped frame not owned by the table's owner"
    );
    // The domain recorded as running another image.
    let mut other = mm.clone();
    other.set_domain_image(DOM, Some(IMG + 1)).unwrap();
    assert_eq!(
        audit::audit(&other, &mem).unwrap_err().what,
        "mapped frame not owned by the table's owner"
    );
    // An image frame with a type.
    let mut typed = mm.clone();
    typed.frame_mut(PAGE).ty = FrameType::Writable;
    assert!(audit::audit(&typed, &mem).is_err());
    let mut flagged = mm.clone();
    flagged.frame_mut(PAGE).flags = super::super::frame::SPECIAL_WRITABLE;
    assert_eq!(
        audit::audit(&flagged, &mem).unwrap_err().what,
        "shared image frame with a type, a flag or a loaded root"
    );
}

#[test]
fn mem_2e_users_counted_last_one_frees_the_copy() {
    let (mut mm, _mem) = two_of_one_image();
    let mut images = SharedImages::new();
    assert_eq!(images.attach(IMG).unwrap_err(), ShareError::NotShared);
    assert_eq!(images.detach(IMG).unwrap_err(), ShareError::NotShared);
    assert_eq!(images.users(IMG), 0);
    // The first domain makes the copy, two more attach.
    images.create(IMG, vec![(1, PAGE)]).unwrap();
    assert_eq!(
        images.create(IMG, vec![(1, 61)]).unwrap_err(),
        ShareError::Exists
    );
    assert_eq!(images.attach(IMG).unwrap(), &[(1, PAGE)]);
    assert_eq!(images.attach(IMG).unwrap(), &[(1, PAGE)]);
    assert_eq!(images.users(IMG), 3);
    images.check(&mm).unwrap();
    assert_eq!(images.detach(IMG).unwrap(), None);
    assert_eq!(images.detach(IMG).unwrap(), None);
    assert_eq!(images.pages(IMG), Some(&[(1, PAGE)][..]));
    // The last one gets the frames back; the record is gone.
    assert_eq!(images.detach(IMG).unwrap(), Some(vec![(1, PAGE)]));
    assert_eq!(images.users(IMG), 0);
    assert_eq!(images.pages(IMG), None);
    assert_eq!(images.detach(IMG).unwrap_err(), ShareError::NotShared);
    // The frame table still says the image owns it: the check sees it.
    assert_eq!(
        images.check(&mm).unwrap_err(),
        (PAGE, "frame owned by an image but not recorded as its copy")
    );
    mm.unshare_image(PAGE, IMG).unwrap();
    images.check(&mm).unwrap();
    // And the reverse: a record whose frame the image does not own.
    images.create(IMG, vec![(1, PAGE)]).unwrap();
    assert_eq!(
        images.check(&mm).unwrap_err(),
        (PAGE, "recorded shared image frame not owned by its image")
    );
}
