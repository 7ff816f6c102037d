//! Initial tables typed and counted as they are built (`Mm::build_root`,
//! `Mm::build_entry`, issue 13): the result must be exactly what a full
//! validation of the same tables gives (types, counts, pins, holds, and the
//! entries themselves), and every refusal leaves nothing changed.

use super::*;
use proptest::prelude::*;

/// Every frame's accounting, in frame order.
fn views(mm: &Mm) -> Vec<FrameView> {
    (0..mm.frame_count()).map(|p| view(mm, p)).collect()
}

/// A leaf: the frame, writable, executable.
type Leaf = (Mfn, bool, bool);

fn leaf_value((mfn, w, x): Leaf) -> u64 {
    let mut e = (mfn << 12) | PRESENT | USER;
    if w {
        e |= WRITABLE;
    }
    if !x {
        e |= NX;
    }
    e
}

/// A domain's initial tree as the hypervisor lays it out: L4 -> L3 -> L2
/// -> `l1s` (one L1 per 2 MiB, at L2 slots 2.. as the window does), the
/// special shared page writable at L2[1]'s L1 slot 511 (below the window),
/// and `leaves` spread over the L1s in order.
struct Layout {
    l4: Mfn,
    l3: Mfn,
    l2: Mfn,
    l1_low: Mfn,
    shared: Mfn,
    l1s: Vec<Mfn>,
    leaves: Vec<Leaf>,
}

/// The hypervisor's layout on the test machine: tables 1..=4 and 5..,
/// leaves from 12 on, the shared page 11 (shared writable, held).
fn layout(l1s: usize, leaves: Vec<Leaf>) -> Layout {
    Layout {
        l4: 1,
        l3: 2,
        l2: 3,
        l1_low: 4,
        shared: 11,
        l1s: (0..l1s as u64).map(|i| 5 + i).collect(),
        leaves,
    }
}

/// All entries of `l`, as (table, index, value), parents before children.
fn entries(l: &Layout) -> Vec<(Mfn, usize, u64)> {
    let mut v = vec![
        (l.l4, 0, table(l.l3)),
        (l.l3, 0, table(l.l2)),
        (l.l2, 1, table(l.l1_low)),
        (l.l1_low, 511, rw(l.shared)),
    ];
    for (i, &l1) in l.l1s.iter().enumerate() {
        v.push((l.l2, 2 + i, table(l1)));
    }
    for (i, &leaf) in l.leaves.iter().enumerate() {
        let l1 = l.l1s[i % l.l1s.len()];
        v.push((l1, i / l.l1s.len(), leaf_value(leaf)));
    }
    v
}

/// The machine with the shared page shared and held, as the build does
/// before the tables.
fn machine_with_shared(l: &Layout) -> (Mm, Mem) {
    let (mut mm, mem) = machine();
    mm.assign(l.shared, Owner::Free).unwrap();
    mm.share_special(l.shared, DOM, true).unwrap();
    (mm, mem)
}

/// Built entry by entry.
fn build(l: &Layout) -> (Mm, Mem) {
    let (mut mm, mut mem) = machine_with_shared(l);
    let tree = mm.build_root(&mut mem, DOM, l.l4).unwrap();
    for (t, i, v) in entries(l) {
        mm.build_entry(&mut mem, &tree, t, i, v).unwrap();
    }
    (mm, mem)
}

/// Built with the leaves in runs, one `build_leaves` per L1.
fn build_batched(l: &Layout) -> (Mm, Mem) {
    let (mut mm, mut mem) = machine_with_shared(l);
    let tree = mm.build_root(&mut mem, DOM, l.l4).unwrap();
    let all = entries(l);
    let links = 4 + l.l1s.len();
    for &(t, i, v) in &all[..links] {
        mm.build_entry(&mut mem, &tree, t, i, v).unwrap();
    }
    for &l1 in &l.l1s {
        let run: Vec<u64> = all[links..]
            .iter()
            .filter(|e| e.0 == l1)
            .map(|e| e.2)
            .collect();
        let n = run.len();
        assert_eq!(mm.build_leaves(&mut mem, &tree, l1, 0, run), Ok(n));
    }
    (mm, mem)
}

/// Built as the hypervisor builds a window: the frames in `adopt` (a
/// subset of the leaves' frames) start as nobody's, and each L1's leaves
/// go in as runs, [`Mm::adopt_leaves`] for a run of frames seen for the
/// first time with one set of flags, [`Mm::build_leaves`] for the rest
/// (a frame mapped again, or one the domain owns already).
fn build_adopted(l: &Layout, adopt: &[bool]) -> (Mm, Mem) {
    let (mut mm, mut mem) = machine_with_shared(l);
    let adoptable = |m: Mfn| adopt.get(m as usize).copied().unwrap_or(false);
    // The leaves' frames (never a table or the shared page) to adopt.
    let mut leaf_frames: Vec<Mfn> = l.leaves.iter().map(|&(m, _, _)| m).collect();
    leaf_frames.sort_unstable();
    leaf_frames.dedup();
    for &m in leaf_frames.iter().filter(|&&m| adoptable(m)) {
        mm.assign(m, Owner::Free).unwrap();
    }
    let tree = mm.build_root(&mut mem, DOM, l.l4).unwrap();
    let all = entries(l);
    let links = 4 + l.l1s.len();
    for &(t, i, v) in &all[..links] {
        mm.build_entry(&mut mem, &tree, t, i, v).unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for &l1 in &l.l1s {
        let run: Vec<(usize, u64)> = all[links..]
            .iter()
            .filter(|e| e.0 == l1)
            .map(|e| (e.1, e.2))
            .collect();
        let mut k = 0;
        while k < run.len() {
            let (index, value) = run[k];
            let mfn = (value & !NX) >> 12;
            let flags = value & 0xfff | value & NX;
            let fresh = |m: Mfn, seen: &std::collections::BTreeSet<Mfn>| {
                mm.frame(m).unwrap().owner() == Owner::Free && !seen.contains(&m)
            };
            if !fresh(mfn, &seen) {
                mm.build_leaves(&mut mem, &tree, l1, index, [value])
                    .unwrap();
                k += 1;
                continue;
            }
            let mut frames = vec![mfn];
            seen.insert(mfn);
            while let Some(&(_, v)) = run.get(k + frames.len()) {
                let m = (v & !NX) >> 12;
                if v & 0xfff | v & NX != flags || !fresh(m, &seen) {
                    break;
                }
                seen.insert(m);
                frames.push(m);
            }
            mm.adopt_leaves(&mut mem, &tree, l1, index, &frames, flags)
                .unwrap();
            k += frames.len();
        }
    }
    (mm, mem)
}

/// Written as plain memory, then pinned: the full validation.
fn validated(l: &Layout) -> (Mm, Mem) {
    let (mut mm, mut mem) = machine_with_shared(l);
    for (t, i, v) in entries(l) {
        mem.poke(t, i, v);
    }
    mm.pin(&mut mem, DOM, l.l4, Level::L4).unwrap();
    (mm, mem)
}

/// The check the hypervisor's `testopt=verify-build` makes, on the built
/// machine itself: unpinning releases everything the builder counted
/// (every frame idle again but the held shared page), pinning again
/// validates the tree in full, and the accounting comes back identical.
fn revalidate_in_place(mm: &mut Mm, mem: &mut Mem, l: &Layout) {
    let built = views(mm);
    mm.unpin(mem, DOM, l.l4).unwrap();
    for mfn in 0..mm.frame_count() {
        let f = mm.frame(mfn).unwrap();
        if mfn != l.shared && f.owner() == Owner::Domain(DOM) {
            assert!(f.idle(), "frame {mfn} still referenced after the unpin");
        }
    }
    mm.pin(mem, DOM, l.l4, Level::L4).unwrap();
    assert_eq!(
        views(mm),
        built,
        "the full validation disagrees with the build"
    );
}

#[test]
fn a_built_tree_equals_the_validated_one() {
    let leaves: Vec<Leaf> = (12..40)
        .map(|m| (m, m % 3 != 0, m % 5 == 0))
        .chain([(12, false, true), (13, true, false)]) // mapped twice
        .collect();
    let l = layout(2, leaves);
    let (mut mm, mut mem) = build(&l);
    let (vm, vmem) = validated(&l);
    assert_eq!(
        views(&mm),
        views(&vm),
        "types, counts, pins or holds differ"
    );
    assert_eq!(mem, vmem, "the entries differ");
    audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
    // Spot checks against the rules themselves, so the comparison above
    // cannot pass by both sides being wrong alike.
    let l4 = view(&mm, l.l4);
    assert_eq!(
        (l4.ty, l4.type_count, l4.total_count, l4.pinned),
        (FrameType::L4, 1, 1, true)
    );
    assert_eq!(view(&mm, l.l1s[0]).ty, FrameType::L1);
    assert_eq!(view(&mm, 13).ty, FrameType::Writable);
    assert_eq!(view(&mm, 13).type_count, 2, "writable twice");
    assert_eq!(view(&mm, 12).ty, FrameType::None, "never writable");
    assert_eq!(view(&mm, 12).total_count, 2);
    assert_eq!(view(&mm, l.shared).held, 1);
    assert_eq!(mem.peek(l.l4, 256), template()[0], "the hypervisor's slots");
    revalidate_in_place(&mut mm, &mut mem, &l);
    // And the tree is an ordinary one: loaded, updated, torn down.
    let mut space = AddressSpace::new(DOM);
    mm.switch_root(&mut space, l.l4).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(l.l1s[0], 100), rw(39))
        .unwrap();
    mm.detach(&mut space);
    mm.teardown(&mut mem, DOM);
    audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
    for mfn in (0..40).filter(|&m| m != l.shared) {
        assert!(mm.frame(mfn).unwrap().idle(), "frame {mfn} after teardown");
    }
}

/// Each refusal: the exact error, nothing changed (frame table and memory).
#[test]
fn the_builder_refuses_what_the_validator_refuses() {
    let l = layout(1, vec![]);
    let (mut mm, mut mem) = machine_with_shared(&l);
    // A root the domain does not own, or one in use.
    for (root, want) in [
        (OTHER_FRAMES.start, MmError::NotOwner(OTHER_FRAMES.start)),
        (l.shared, MmError::FrameInUse(l.shared)),
    ] {
        let before = snapshot(&mm, &mem);
        let r = mm.build_root(&mut mem, DOM, root);
        assert_refused(&mm, &mem, &before, r, want);
    }
    let tree = mm.build_root(&mut mem, DOM, l.l4).unwrap();
    mm.build_entry(&mut mem, &tree, l.l4, 0, table(l.l3))
        .unwrap();
    mm.build_entry(&mut mem, &tree, l.l3, 0, table(l.l2))
        .unwrap();
    mm.build_entry(&mut mem, &tree, l.l2, 2, table(l.l1s[0]))
        .unwrap();
    mm.build_entry(&mut mem, &tree, l.l1s[0], 0, rw(20))
        .unwrap();
    let l1 = l.l1s[0];
    let cases: Vec<(Mfn, usize, u64, MmError)> = vec![
        // Another domain's frame, the hypervisor's, a free one (MMU-7).
        (
            l1,
            1,
            rw(OTHER_FRAMES.start),
            MmError::NotOwner(OTHER_FRAMES.start),
        ),
        (
            l1,
            1,
            ro(HYP_FRAMES.start),
            MmError::NotOwner(HYP_FRAMES.start),
        ),
        (l1, 1, ro(FREE_FRAME), MmError::NotOwner(FREE_FRAME)),
        (l1, 1, ro(FRAMES + 5), MmError::NoSuchFrame(FRAMES + 5)),
        // A page table mapped writable (MMU-2), a data frame as a table.
        (
            l1,
            1,
            rw(l.l2),
            MmError::TypeConflict {
                mfn: l.l2,
                has: FrameType::L2,
                wants: FrameType::Writable,
            },
        ),
        (
            l.l2,
            3,
            table(20),
            MmError::TypeConflict {
                mfn: 20,
                has: FrameType::Writable,
                wants: FrameType::L1,
            },
        ),
        // A table at two levels (MMU-1).
        (
            l.l2,
            3,
            table(l.l3),
            MmError::TypeConflict {
                mfn: l.l3,
                has: FrameType::L3,
                wants: FrameType::L1,
            },
        ),
        // Bits the rules refuse (MMU-5, MMU-6, MMU-9).
        (l1, 1, rw(21) | (1 << 4), MmError::ForbiddenBits(1 << 4)),
        (l1, 1, (21 << 12) | PRESENT, MmError::NotUser),
        (l.l2, 3, table(21) | (1 << 7), MmError::LargePage),
        // A hypervisor slot (MMU-3), an entry already set, a frame that
        // is no table in use.
        (l.l4, 300, table(21), MmError::HypervisorSlot),
        (l1, 0, rw(21), MmError::EntryInUse),
        (21, 0, rw(22), MmError::NotATable(21)),
        (
            OTHER_FRAMES.start,
            0,
            rw(22),
            MmError::NotOwner(OTHER_FRAMES.start),
        ),
        // The held shared page writable is fine; as a table it is not.
        (l.l2, 3, table(l.shared), MmError::HeldFrame(l.shared)),
    ];
    for (t, i, v, want) in cases {
        let before = snapshot(&mm, &mem);
        let r = mm.build_entry(&mut mem, &tree, t, i, v);
        assert_refused(&mm, &mem, &before, r, want);
    }
    // A writable self entry is refused, a read-only one takes nothing.
    let before = snapshot(&mm, &mem);
    let r = mm.build_entry(&mut mem, &tree, l.l4, 5, table(l.l4));
    assert_refused(&mm, &mem, &before, r, MmError::WritableSelfMap);
    mm.build_entry(&mut mem, &tree, l.l4, 5, ro(l.l4)).unwrap();
    assert_eq!(view(&mm, l.l4).total_count, 1);
    audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
}

/// A run of leaves stops at the first refusal, with the exact error and
/// the entries before it set and counted (the audit holds); the table's
/// own checks refuse before any entry; a run past the table's end stops
/// there.
#[test]
fn a_run_of_leaves_stops_at_the_first_refusal() {
    let l = layout(1, vec![]);
    let (mut mm, mut mem) = machine_with_shared(&l);
    let tree = mm.build_root(&mut mem, DOM, l.l4).unwrap();
    mm.build_entry(&mut mem, &tree, l.l4, 0, table(l.l3))
        .unwrap();
    mm.build_entry(&mut mem, &tree, l.l3, 0, table(l.l2))
        .unwrap();
    mm.build_entry(&mut mem, &tree, l.l2, 2, table(l.l1s[0]))
        .unwrap();
    let l1 = l.l1s[0];
    let run = [rw(20), ro(21), rw(OTHER_FRAMES.start), rw(22)];
    assert_eq!(
        mm.build_leaves(&mut mem, &tree, l1, 10, run),
        Err(MmError::NotOwner(OTHER_FRAMES.start))
    );
    assert_eq!((mem.peek(l1, 10), mem.peek(l1, 11)), (rw(20), ro(21)));
    assert_eq!((mem.peek(l1, 12), mem.peek(l1, 13)), (0, 0));
    assert_eq!(view(&mm, 20).ty, FrameType::Writable);
    assert_eq!(view(&mm, 22).total_count, 0);
    audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
    // The table's own checks, before any entry.
    for (t, want) in [
        (l.l2, MmError::NotATable(l.l2)),
        (23, MmError::NotATable(23)),
        (OTHER_FRAMES.start, MmError::NotOwner(OTHER_FRAMES.start)),
    ] {
        let before = snapshot(&mm, &mem);
        let r = mm.build_leaves(&mut mem, &tree, t, 0, [rw(24)]);
        assert_refused(&mm, &mem, &before, r, want);
    }
    // An entry already set, and the end of the table.
    assert_eq!(
        mm.build_leaves(&mut mem, &tree, l1, 11, [ro(25)]),
        Err(MmError::EntryInUse)
    );
    assert_eq!(
        mm.build_leaves(&mut mem, &tree, l1, 511, [ro(25), ro(26)]),
        Err(MmError::HypervisorSlot)
    );
    assert_eq!(mem.peek(l1, 511), ro(25));
    audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
}

/// A failed build is undone by the ordinary teardown: nothing leaks.
#[test]
fn a_half_built_tree_is_torn_down_like_any_other() {
    let l = layout(2, (12..30).map(|m| (m, true, false)).collect());
    let (mut mm, mut mem) = machine_with_shared(&l);
    let tree = mm.build_root(&mut mem, DOM, l.l4).unwrap();
    for (t, i, v) in entries(&l).into_iter().take(15) {
        mm.build_entry(&mut mem, &tree, t, i, v).unwrap();
    }
    audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
    assert_eq!(mm.teardown(&mut mem, DOM), 1);
    for mfn in (0..40).filter(|&m| m != l.shared) {
        assert!(mm.frame(mfn).unwrap().idle(), "frame {mfn} after teardown");
    }
    assert!(
        (0..256).all(|i| mem.peek(l.l4, 256 + i) == 0),
        "no hypervisor slot left in a frame the guest may read"
    );
}

proptest! {
    /// Any layout of the hypervisor's shape, with leaves mapped once or
    /// more, read-only or writable, executable or not, over one to four
    /// L1s: built entry by entry it equals its full validation, and
    /// revalidating in place changes nothing.
    #[test]
    fn any_built_layout_equals_its_validation(
        l1s in 1usize..5,
        leaves in proptest::collection::vec((12u64..40, any::<bool>(), any::<bool>()), 0..120),
        adopt in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let l = layout(l1s, leaves);
        let (mut mm, mut mem) = build(&l);
        let (vm, vmem) = validated(&l);
        prop_assert_eq!(views(&mm), views(&vm));
        prop_assert_eq!(&mem, &vmem);
        let (bm, bmem) = build_batched(&l);
        prop_assert_eq!(views(&bm), views(&vm));
        prop_assert_eq!(&bmem, &vmem);
        // Adopted in runs (any subset of the frames nobody's at first):
        // the same tables, the same accounting.
        let (mut am, mut amem) = build_adopted(&l, &adopt);
        prop_assert_eq!(views(&am), views(&vm));
        prop_assert_eq!(&amem, &vmem);
        audit::audit_holds(&am, &amem, &[l.shared]).unwrap();
        revalidate_in_place(&mut am, &mut amem, &l);
        audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
        revalidate_in_place(&mut mm, &mut mem, &l);
    }
}

/// Runs of fresh frames in a window's shape: the image read-only and
/// executable, then data writable, adopted into two L1s; equal to the full
/// validation, and every adopted frame is the domain's with exactly its
/// leaf's references.
#[test]
fn adopted_runs_equal_their_validation() {
    let leaves: Vec<Leaf> = (12..40).map(|m| (m, m >= 20, m < 16)).collect();
    let l = layout(2, leaves);
    let (mut mm, mut mem) = build_adopted(&l, &[true; 40]);
    let (vm, vmem) = validated(&l);
    assert_eq!(views(&mm), views(&vm));
    assert_eq!(mem, vmem);
    for m in 12..40 {
        let v = view(&mm, m);
        assert_eq!(v.owner, Owner::Domain(DOM), "frame {m}");
        assert_eq!(v.total_count, 1, "frame {m}");
        let want = if m >= 20 {
            (FrameType::Writable, 1)
        } else {
            (FrameType::None, 0)
        };
        assert_eq!((v.ty, v.type_count), want, "frame {m}");
    }
    audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
    revalidate_in_place(&mut mm, &mut mem, &l);
    // An ordinary tree afterwards: torn down, every frame idle again.
    mm.teardown(&mut mem, DOM);
    for m in (0..40).filter(|&m| m != l.shared) {
        assert!(mm.frame(m).unwrap().idle(), "frame {m} after teardown");
    }
}

/// Each refusal of `adopt_leaves`: the exact error, nothing changed (no
/// frame adopted, no entry written), also when the bad frame comes last.
#[test]
fn adopting_refuses_what_is_not_fresh() {
    let l = layout(1, vec![]);
    let (mut mm, mut mem) = machine_with_shared(&l);
    for m in 20..30 {
        mm.assign(m, Owner::Free).unwrap();
    }
    let tree = mm.build_root(&mut mem, DOM, l.l4).unwrap();
    mm.build_entry(&mut mem, &tree, l.l4, 0, table(l.l3))
        .unwrap();
    mm.build_entry(&mut mem, &tree, l.l3, 0, table(l.l2))
        .unwrap();
    mm.build_entry(&mut mem, &tree, l.l2, 2, table(l.l1s[0]))
        .unwrap();
    let l1 = l.l1s[0];
    mm.build_entry(&mut mem, &tree, l1, 7, ro(12)).unwrap();
    let rwf = PRESENT | WRITABLE | USER | NX;
    let cases: Vec<(Mfn, usize, Vec<Mfn>, u64, MmError)> = vec![
        // Owned by the domain, by another, by the hypervisor; shared.
        (l1, 0, vec![20, 21, 13], rwf, MmError::FrameInUse(13)),
        (
            l1,
            0,
            vec![20, OTHER_FRAMES.start],
            rwf,
            MmError::FrameInUse(OTHER_FRAMES.start),
        ),
        (
            l1,
            0,
            vec![HYP_FRAMES.start],
            rwf,
            MmError::FrameInUse(HYP_FRAMES.start),
        ),
        (
            l1,
            0,
            vec![20, l.shared],
            rwf,
            MmError::FrameInUse(l.shared),
        ),
        // A frame twice in one run, a frame past the table.
        (l1, 0, vec![20, 21, 22, 21], rwf, MmError::FrameInUse(21)),
        (
            l1,
            0,
            vec![20, FRAMES + 3],
            rwf,
            MmError::NoSuchFrame(FRAMES + 3),
        ),
        // An entry already set, a run past the table's end.
        (l1, 5, vec![20, 21, 22], rwf, MmError::EntryInUse),
        (l1, 510, vec![20, 21, 22], rwf, MmError::HypervisorSlot),
        // Flags the rules refuse, or that are no present leaf.
        (
            l1,
            0,
            vec![20],
            rwf | (1 << 4),
            MmError::ForbiddenBits(1 << 4),
        ),
        (l1, 0, vec![20], PRESENT | WRITABLE, MmError::NotUser),
        (
            l1,
            0,
            vec![20],
            rwf | (1 << 55),
            MmError::ReservedBits(1 << 55),
        ),
        (l1, 0, vec![20], USER | WRITABLE, MmError::BadConfig),
        (l1, 0, vec![20], rwf | (5 << 12), MmError::BadConfig),
        // Not the domain's L1 in use.
        (l.l2, 0, vec![20], rwf, MmError::NotATable(l.l2)),
        (30, 0, vec![20], rwf, MmError::NotATable(30)),
        (
            OTHER_FRAMES.start,
            0,
            vec![20],
            rwf,
            MmError::NotOwner(OTHER_FRAMES.start),
        ),
    ];
    for (t, i, frames, flags, want) in cases {
        let before = snapshot(&mm, &mem);
        let r = mm.adopt_leaves(&mut mem, &tree, t, i, &frames, flags);
        assert_refused(&mm, &mem, &before, r, want);
    }
    // The same frames adopted properly, then once more: in use now.
    mm.adopt_leaves(&mut mem, &tree, l1, 0, &[20, 21, 22], rwf)
        .unwrap();
    let before = snapshot(&mm, &mem);
    let r = mm.adopt_leaves(&mut mem, &tree, l1, 10, &[23, 20], rwf);
    assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(20));
    assert_eq!(mem.peek(l1, 1), rw(21));
    audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
}

/// A frame whose last reference was dropped since the last TLB flush
/// raises the flush request when it is adopted, as `assign` would
/// (MMU-20); a frame dropped before the flush does not.
#[test]
fn adopting_a_frame_dropped_since_the_flush_asks_for_one() {
    let l = layout(1, vec![]);
    let (mut mm, mut mem) = machine_with_shared(&l);
    let tree = mm.build_root(&mut mem, DOM, l.l4).unwrap();
    mm.build_entry(&mut mem, &tree, l.l4, 0, table(l.l3))
        .unwrap();
    mm.build_entry(&mut mem, &tree, l.l3, 0, table(l.l2))
        .unwrap();
    mm.build_entry(&mut mem, &tree, l.l2, 2, table(l.l1s[0]))
        .unwrap();
    let l1 = l.l1s[0];
    for stale in [true, false] {
        let m = if stale { 20 } else { 21 };
        mm.build_entry(&mut mem, &tree, l1, 100, rw(m)).unwrap();
        mm.mmu_update_one(&mut mem, DOM, ptr(l1, 100), 0).unwrap();
        mm.assign(m, Owner::Free).unwrap();
        // Flushed: the drop above is harmless now. `flush_requested`
        // says so without taking the request; `take_flush_request` takes it.
        assert!(mm.flush_requested());
        assert!(mm.flush_requested());
        assert!(mm.take_flush_request());
        assert!(!mm.flush_requested());
        if stale {
            // Staged: a reference to `m` dropped since that flush (the
            // epoch another drop records now).
            mm.build_entry(&mut mem, &tree, l1, 101, rw(25)).unwrap();
            mm.mmu_update_one(&mut mem, DOM, ptr(l1, 101), 0).unwrap();
            let e = mm.frame_mut(25).dropped_epoch;
            mm.frame_mut(m).dropped_epoch = e;
            assert!(!mm.take_flush_request());
        }
        mm.adopt_leaves(&mut mem, &tree, l1, m as usize, &[m], PRESENT | USER)
            .unwrap();
        assert_eq!(mm.take_flush_request(), stale, "frame {m}");
    }
    audit::audit_holds(&mm, &mem, &[l.shared]).unwrap();
}

/// The release loop notes its drops once per batch, not per entry
/// (`Mm::release_entries_from`, docs/bench-history/regressions.md "Rows that rose
/// during issue 13"). A refused pin undoes what it validated: halfway through
/// that release, before the table's own reference is dropped (which marks
/// the epoch too), a frame adopted with such a drop in the same epoch must
/// still raise the flush request (MMU-20).
#[test]
fn a_drop_in_a_preempted_release_still_marks_the_epoch() {
    use crate::mm::validator::{Budget, Progress};
    let l = layout(1, vec![]);
    let (mut mm, mut mem) = machine_with_shared(&l);
    let tree = mm.build_root(&mut mem, DOM, l.l4).unwrap();
    for (t, i, v) in entries(&l) {
        mm.build_entry(&mut mem, &tree, t, i, v).unwrap();
    }
    // An L1 to pin: four leaves, then an entry naming another domain's
    // frame, refused after the four were counted.
    let pinned = 30;
    for (i, m) in (20..24).enumerate() {
        mem.poke(pinned, i, rw(m));
    }
    mem.poke(pinned, 4, rw(OTHER_FRAMES.start));
    let fresh = 60;
    assert!(matches!(mm.frame(fresh).unwrap().owner, Owner::Free));
    let _ = mm.take_flush_request();
    mm.note_tlb_flushed();
    let mut pending = None;
    let (mut mid_table, mut counted) = (0, false);
    let r = loop {
        let r = mm.pin_bounded(
            &mut mem,
            DOM,
            pinned,
            Level::L1,
            &mut pending,
            &mut Budget::new(1),
        );
        if r != Ok(Progress::Preempted) {
            break r;
        }
        // Once all four leaves are counted, a leaf back at zero was
        // dropped by the undo.
        let counts: Vec<u32> = (20..24).map(|m| mm.frame(m).unwrap().total_count).collect();
        counted |= counts.iter().all(|&c| c == 1);
        let in_use = mm.frame(pinned).unwrap().type_count > 0;
        let Some(k) = counts.iter().position(|&c| c == 0) else {
            continue;
        };
        if !counted || !in_use {
            continue;
        }
        let dropped = 20 + k as u64;
        mid_table += 1;
        assert!(!mm.clone().take_flush_request());
        let (mut probe, mut probe_mem) = (mm.clone(), mem.clone());
        let epoch = probe.frame(dropped).unwrap().dropped_epoch;
        probe.frame_mut(fresh).dropped_epoch = epoch;
        probe
            .adopt_leaves(
                &mut probe_mem,
                &tree,
                l.l1s[0],
                100,
                &[fresh],
                PRESENT | USER,
            )
            .unwrap();
        assert!(
            probe.take_flush_request(),
            "after {mid_table} steps of the undo"
        );
    };
    assert_eq!(r, Err(MmError::NotOwner(OTHER_FRAMES.start)));
    assert!(mid_table > 0, "no step stopped inside the undo");
}
