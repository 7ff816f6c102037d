//! Bounded pin, unpin and teardown (MMU-35, MMU-36): preempted at every
//! possible point, the accounting stays exact, other operations on the
//! partial tables are refused, and the end state is the one the unbounded
//! operation reaches.

use super::*;
use crate::mm::validator::{Budget, Pending, Progress, Teardown};
use hypercall_abi::Error as Abi;
use proptest::prelude::*;

/// A second tree beside the standard one, not yet in use: L4 30 -> L3 31
/// -> L2 32 -> L1s 33 and 34 (each mapping data read-only and writable),
/// and L4 slot 1 sharing the standard tree's L3 (already valid).
fn second_tree(mem: &mut Mem) {
    mem.poke(30, 0, table(31));
    mem.poke(30, 1, table(L3));
    mem.poke(30, 5, ro(30)); // a linear entry
    mem.poke(31, 0, table(32));
    mem.poke(31, 3, table(32)); // the same L2 twice
    mem.poke(32, 0, table(33));
    mem.poke(32, 1, table(34));
    for i in 0..6 {
        mem.poke(33, i, ro(20 + i as u64));
        mem.poke(34, i, rw(14 + i as u64));
    }
}

/// Runs a bounded operation to its end with `steps` per invocation,
/// auditing after every invocation. Returns its result and invocations.
fn drive(
    mm: &mut Mm,
    mem: &mut Mem,
    steps: u64,
    mut call: impl FnMut(
        &mut Mm,
        &mut Mem,
        &mut Option<Pending>,
        &mut Budget,
    ) -> Result<Progress, MmError>,
) -> (Result<(), MmError>, u32) {
    let mut pending = None;
    let mut calls = 0;
    loop {
        calls += 1;
        let mut budget = Budget::new(steps);
        let r = call(mm, mem, &mut pending, &mut budget);
        assert!(budget.spent() <= steps, "a step budget was overrun");
        audit::audit(mm, mem).unwrap_or_else(|e| panic!("audit after invocation {calls}: {e:?}"));
        match r {
            Ok(Progress::Preempted) => {
                assert!(pending.is_some());
                // Preempted only when the budget is spent, to the step.
                assert_eq!(budget.spent(), steps, "preempted with steps left");
            }
            Ok(Progress::Done) => return (Ok(()), calls),
            Err(e) => {
                assert!(pending.is_none());
                return (Err(e), calls);
            }
        }
    }
}

#[test]
fn mmu_35_bounded_pin_equals_the_full_pin_at_every_budget() {
    let (mut full, mut full_mem, _) = tree();
    second_tree(&mut full_mem);
    let (start, start_mem) = (full.clone(), full_mem.clone());
    full.pin(&mut full_mem, DOM, 30, Level::L4).unwrap();
    let want = snapshot(&full, &full_mem);
    for steps in 1..40 {
        let (mut mm, mut mem) = (start.clone(), start_mem.clone());
        let (r, calls) = drive(&mut mm, &mut mem, steps, |mm, mem, p, b| {
            mm.pin_bounded(mem, DOM, 30, Level::L4, p, b)
        });
        assert_eq!(r, Ok(()));
        assert!(steps > 20 || calls > 1, "budget {steps} did not preempt");
        assert_eq!(snapshot(&mm, &mem), want, "budget {steps}");
        // And back: the bounded unpin releases exactly what the pin took.
        let (r, _) = drive(&mut mm, &mut mem, steps, |mm, mem, p, b| {
            mm.unpin_bounded(mem, DOM, 30, p, b)
        });
        assert_eq!(r, Ok(()));
        assert_eq!(
            snapshot(&mm, &mem),
            snapshot(&start, &start_mem),
            "budget {steps}"
        );
    }
}

#[test]
fn mmu_35_refused_bounded_pin_undoes_everything_then_reports() {
    let (mut mm, mut mem, _) = tree();
    second_tree(&mut mem);
    // Deep in the second L1: a writable mapping of a page table.
    mem.poke(34, 7, rw(L2));
    let before = snapshot(&mm, &mem);
    for steps in [1, 2, 3, 7, 64] {
        let (r, calls) = drive(&mut mm, &mut mem, steps, |mm, mem, p, b| {
            mm.pin_bounded(mem, DOM, 30, Level::L4, p, b)
        });
        let want = MmError::TypeConflict {
            mfn: L2,
            has: FrameType::L2,
            wants: FrameType::Writable,
        };
        assert_eq!(r, Err(want));
        assert!(steps > 20 || calls > 2);
        assert_eq!(snapshot(&mm, &mem), before, "budget {steps}");
    }
}

#[test]
fn mmu_36_attack_touching_a_half_validated_tree() {
    let (mut mm, mut mem, mut space) = tree();
    second_tree(&mut mem);
    // Stop the pin inside the first L1 (33): 30, 31, 32 and 33 are partial.
    let mut pending = None;
    let r = mm.pin_bounded(
        &mut mem,
        DOM,
        30,
        Level::L4,
        &mut pending,
        &mut Budget::new(5),
    );
    assert_eq!(r, Ok(Progress::Preempted));
    for mfn in [30, 31, 32, 33] {
        assert!(mm.frame(mfn).unwrap().is_partial(), "frame {mfn}");
    }
    audit::audit(&mm, &mem).unwrap();
    let before = snapshot(&mm, &mem);
    // Updating an entry of a partial table, at any level.
    for (mfn, i) in [(30, 2), (31, 1), (32, 5), (33, 100)] {
        let r = mm.mmu_update_one(&mut mem, DOM, ptr(mfn, i), 0);
        assert_refused(&mm, &mem, &before, r, MmError::Busy(mfn));
    }
    // Referencing a partial table from a valid one.
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L2, 9), table(33));
    assert_refused(&mm, &mem, &before, r, MmError::Busy(33));
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L3, 9), table(32));
    assert_refused(&mm, &mem, &before, r, MmError::Busy(32));
    // Mapping it writable (it has a table type).
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), rw(33));
    assert!(matches!(r, Err(MmError::TypeConflict { mfn: 33, .. })));
    assert_eq!(snapshot(&mm, &mem), before);
    // Pinning, unpinning or loading it.
    let r = mm.pin(&mut mem, DOM, 31, Level::L3);
    assert_refused(&mm, &mem, &before, r, MmError::Busy(31));
    let r = mm.unpin(&mut mem, DOM, 30);
    assert_refused(&mm, &mem, &before, r, MmError::NotPinned(30));
    let r = mm.switch_root(&mut space, 30);
    assert_refused(&mm, &mem, &before, r, MmError::NotPinned(30));
    // Giving it away.
    let r = mm.assign(33, Owner::Free);
    assert_refused(&mm, &mem, &before, r, MmError::FrameInUse(33));
    // Another pin or unpin while this one is pending.
    let r = mm.pin_bounded(
        &mut mem,
        DOM,
        35,
        Level::L1,
        &mut pending,
        &mut Budget::new(5),
    );
    assert_refused(&mm, &mem, &before, r, MmError::OperationPending);
    let r = mm.pin_bounded(
        &mut mem,
        DOM,
        30,
        Level::L3,
        &mut pending,
        &mut Budget::new(5),
    );
    assert_refused(&mm, &mem, &before, r, MmError::OperationPending);
    let r = mm.unpin_bounded(&mut mem, DOM, L4, &mut pending, &mut Budget::new(5));
    assert_refused(&mm, &mem, &before, r, MmError::OperationPending);
    assert_eq!(MmError::Busy(0).abi(), Abi::WrongState);
    assert_eq!(MmError::OperationPending.abi(), Abi::WrongState);
    // Operations elsewhere still work, and the pin then completes.
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 20), ro(DATA))
        .unwrap();
    loop {
        let r = mm.pin_bounded(
            &mut mem,
            DOM,
            30,
            Level::L4,
            &mut pending,
            &mut Budget::new(3),
        );
        audit::audit(&mm, &mem).unwrap();
        if r.unwrap() == Progress::Done {
            break;
        }
    }
    assert!(pending.is_none());
    let v = view(&mm, 30);
    assert_eq!((v.ty, v.type_count, v.pinned), (FrameType::L4, 1, true));
    assert_eq!(view(&mm, 32).type_count, 2);
    mm.mmu_update_one(&mut mem, DOM, ptr(33, 100), ro(DATA))
        .unwrap();
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn mmu_36_abandoned_pin_and_unpin_are_torn_down() {
    for unpin in [false, true] {
        for stop in 1..30 {
            let (mut mm, mut mem, mut space) = tree();
            second_tree(&mut mem);
            let mut pending = None;
            if unpin {
                mm.pin(&mut mem, DOM, 30, Level::L4).unwrap();
                let r = mm.unpin_bounded(&mut mem, DOM, 30, &mut pending, &mut Budget::new(stop));
                assert!(r.is_ok());
            } else {
                let r = mm.pin_bounded(
                    &mut mem,
                    DOM,
                    30,
                    Level::L4,
                    &mut pending,
                    &mut Budget::new(stop),
                );
                assert!(r.is_ok());
            }
            mm.detach(&mut space);
            let mut t = Teardown::new(DOM);
            let mut calls = 0;
            while mm.teardown_bounded(&mut mem, &mut t, &mut pending, &mut Budget::new(4))
                == Progress::Preempted
            {
                calls += 1;
                audit::audit(&mm, &mem).unwrap();
            }
            assert!(calls > 10, "teardown was not split");
            assert!(pending.is_none());
            for mfn in 0..FRAMES {
                let f = mm.frame(mfn).unwrap();
                if f.owner() == Owner::Domain(DOM) {
                    assert!(
                        f.idle(),
                        "frame {mfn} not idle (stop {stop}, unpin {unpin})"
                    );
                }
            }
            audit::audit(&mm, &mem).unwrap();
        }
    }
}

#[test]
fn mmu_36_teardown_without_the_record_still_releases_the_chain() {
    let (mut mm, mut mem, mut space) = tree();
    second_tree(&mut mem);
    let mut pending = None;
    let r = mm.pin_bounded(
        &mut mem,
        DOM,
        30,
        Level::L4,
        &mut pending,
        &mut Budget::new(9),
    );
    assert_eq!(r, Ok(Progress::Preempted));
    mm.detach(&mut space);
    assert_eq!(mm.teardown(&mut mem, DOM), 1);
    for mfn in 0..40 {
        assert!(mm.frame(mfn).unwrap().idle(), "frame {mfn}");
    }
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn bounded_teardown_work_is_proportional_and_bounded() {
    let (mut mm, mut mem, mut space) = tree();
    second_tree(&mut mem);
    mm.pin(&mut mem, DOM, 30, Level::L4).unwrap();
    mm.detach(&mut space);
    let mut t = Teardown::new(DOM);
    let mut total = 0;
    loop {
        let mut b = Budget::new(10);
        let r = mm.teardown_bounded(&mut mem, &mut t, &mut None, &mut b);
        assert!(b.spent() <= 10);
        total += b.spent();
        if r == Progress::Done {
            break;
        }
    }
    assert_eq!(t.unpinned(), 2);
    // Two trees of 9 tables: a few thousand entries at most, plus the scan.
    assert!(total > 512 * 4 && total < 512 * 9 + 200, "{total} steps");
}

/// A random tree's worth of guest writes into the domain's frames.
fn writes() -> impl Strategy<Value = Vec<(Mfn, usize, u64)>> {
    let target = prop_oneof![8 => 0..40u64, 1 => 40..FRAMES];
    let value = prop_oneof![
        4 => target.clone().prop_map(table),
        3 => target.clone().prop_map(rw),
        3 => target.prop_map(ro),
        1 => Just(0u64),
        1 => any::<u64>(),
    ];
    prop::collection::vec(
        (
            0..40u64,
            prop_oneof![6 => 0..3usize, 1 => 0..512usize],
            value,
        ),
        0..80,
    )
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        Just(Level::L1),
        Just(Level::L2),
        Just(Level::L3),
        Just(Level::L4)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    /// Whatever the tree, preempted at random points: the audit passes at
    /// each one, and the outcome (result and every frame and entry) is
    /// the full pin's; then the same for unpin, then teardown.
    #[test]
    fn bounded_operations_match_the_full_ones(
        ws in writes(),
        root in 0..40u64,
        lvl in level(),
        budgets in prop::collection::vec(1..24u64, 1..8),
    ) {
        let (mut mm, mut mem) = machine();
        for (p, i, v) in ws {
            mem.poke(p, i, v);
        }
        let (mut full, mut full_mem) = (mm.clone(), mem.clone());
        let want = full.pin(&mut full_mem, DOM, root, lvl);
        let mut pending = None;
        let mut n = 0;
        let got = loop {
            let mut b = Budget::new(budgets[n % budgets.len()]);
            n += 1;
            let r = mm.pin_bounded(&mut mem, DOM, root, lvl, &mut pending, &mut b);
            audit::audit(&mm, &mem).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            match r {
                Ok(Progress::Preempted) => continue,
                Ok(Progress::Done) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        prop_assert_eq!(got, want);
        prop_assert_eq!(snapshot(&mm, &mem), snapshot(&full, &full_mem));
        if want.is_ok() {
            let want = full.unpin(&mut full_mem, DOM, root);
            let got = loop {
                let mut b = Budget::new(budgets[n % budgets.len()]);
                n += 1;
                let r = mm.unpin_bounded(&mut mem, DOM, root, &mut pending, &mut b);
                audit::audit(&mm, &mem).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                match r {
                    Ok(Progress::Preempted) => continue,
                    Ok(Progress::Done) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            prop_assert_eq!(got, want);
            prop_assert_eq!(snapshot(&mm, &mem), snapshot(&full, &full_mem));
        }
    }

    /// A pin stopped at a random point, then the domain is torn down in
    /// random chunks: every frame comes back idle, the audit balanced at
    /// every step.
    #[test]
    fn abandoned_pin_then_bounded_teardown(
        ws in writes(),
        root in 0..40u64,
        lvl in level(),
        stop in 1..200u64,
        chunk in 1..16u64,
    ) {
        let (mut mm, mut mem) = machine();
        for (p, i, v) in ws {
            mem.poke(p, i, v);
        }
        let mut pending = None;
        let _ = mm.pin_bounded(&mut mem, DOM, root, lvl, &mut pending, &mut Budget::new(stop));
        let mut t = Teardown::new(DOM);
        while mm.teardown_bounded(&mut mem, &mut t, &mut pending, &mut Budget::new(chunk))
            == Progress::Preempted
        {
            audit::audit(&mm, &mem).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        }
        prop_assert!(pending.is_none());
        for mfn in 0..FRAMES {
            let f = mm.frame(mfn).unwrap();
            if f.owner() == Owner::Domain(DOM) {
                prop_assert!(f.idle(), "frame {} not idle", mfn);
            }
        }
        audit::audit(&mm, &mem).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    }
}

#[test]
fn teardown_of_a_frame_list_is_proportional_to_it() {
    // The domain's frames as the hypervisor lists them; a half-done pin
    // and a pinned tree; a teardown over the list releases everything and
    // looks at nothing else.
    let (mut mm, mut mem, mut space) = tree();
    second_tree(&mut mem);
    let mut pending = None;
    let r = mm.pin_bounded(
        &mut mem,
        DOM,
        30,
        Level::L4,
        &mut pending,
        &mut Budget::new(7),
    );
    assert_eq!(r, Ok(Progress::Preempted));
    mm.detach(&mut space);
    let frames: Vec<Mfn> = (0..40).collect();
    let mut t = Teardown::new(DOM);
    let mut steps = 0;
    loop {
        let mut b = Budget::new(5);
        let r = mm.teardown_frames_bounded(&mut mem, &mut t, &frames, &mut pending, &mut b);
        steps += b.spent();
        audit::audit(&mm, &mem).unwrap();
        if r == Progress::Done {
            break;
        }
    }
    assert!(pending.is_none());
    assert_eq!(t.unpinned(), 1);
    for mfn in 0..FRAMES {
        let f = mm.frame(mfn).unwrap();
        if f.owner() == Owner::Domain(DOM) {
            assert!(f.idle(), "frame {mfn} not idle");
        }
    }
    // The first tree's 4 tables plus what the pin had validated, plus one
    // step per listed frame.
    assert!(steps < 512 * 8 + 40, "{steps} steps");
}

/// Linking a fresh subtree from an `mmu_update` entry: within the call's
/// budget it is validated as the unbounded link would, beyond it the entry
/// is refused with `SubtreeTooLarge` and nothing changed; the budget is
/// never overrun and the audit passes either way.
#[test]
fn mmu_update_link_is_bounded_or_refused_with_nothing_changed() {
    let (start, start_mem, _) = tree();
    let mut start_mem = start_mem;
    second_tree(&mut start_mem);
    // The unbounded result: L4 slot 7 links the fresh L3 31.
    let (mut full, mut full_mem) = (start.clone(), start_mem.clone());
    let mut unlimited = Budget::unlimited();
    full.mmu_update_one_within(&mut full_mem, DOM, ptr(L4, 7), table(31), &mut unlimited)
        .unwrap();
    // The steps the link takes: any smaller budget refuses it.
    let need = unlimited.spent();
    assert!(need > 1024, "{need}");
    audit::audit(&full, &full_mem).unwrap();
    let want = snapshot(&full, &full_mem);
    let before = snapshot(&start, &start_mem);
    for steps in budgets(need) {
        let (mut mm, mut mem) = (start.clone(), start_mem.clone());
        let mut budget = Budget::new(steps);
        let r = mm.mmu_update_one_within(&mut mem, DOM, ptr(L4, 7), table(31), &mut budget);
        assert!(budget.spent() <= steps, "budget {steps} overrun");
        audit::audit(&mm, &mem).unwrap_or_else(|e| panic!("budget {steps}: {e:?}"));
        match r {
            Ok(()) => assert_eq!(snapshot(&mm, &mem), want, "budget {steps}"),
            Err(e) => {
                assert_eq!(e, MmError::SubtreeTooLarge, "budget {steps}");
                assert_eq!(snapshot(&mm, &mem), before, "budget {steps}");
            }
        }
        assert_eq!(r.is_ok(), steps >= need, "budget {steps} of {need}");
    }
    assert_eq!(MmError::SubtreeTooLarge.abi(), Abi::NoResources);
}

/// Dropping the last reference to a subtree from an `mmu_update` entry:
/// within the budget it is released as the unbounded unlink would; beyond
/// it the release is undone and the entry refused with nothing changed.
/// Pinning the subtree first makes the unlink O(1) and the (preemptible)
/// unpin then releases it.
#[test]
fn mmu_update_unlink_is_bounded_or_refused_and_pin_first_works() {
    let (mut linked, mut linked_mem, _) = tree();
    second_tree(&mut linked_mem);
    let (start, start_mem) = (linked.clone(), linked_mem.clone());
    linked
        .mmu_update_one_within(
            &mut linked_mem,
            DOM,
            ptr(L4, 7),
            table(31),
            &mut Budget::unlimited(),
        )
        .unwrap();
    let mut unlimited = Budget::unlimited();
    linked
        .clone()
        .mmu_update_one_within(&mut linked_mem.clone(), DOM, ptr(L4, 7), 0, &mut unlimited)
        .unwrap();
    let need = unlimited.spent();
    assert!(need > 1024, "{need}");
    let before = snapshot(&linked, &linked_mem);
    // The unlinked state differs from `start` only in the flush epoch and
    // dropped marks, which the snapshot does not hold.
    let want = snapshot(&start, &start_mem);
    for steps in budgets(need) {
        let (mut mm, mut mem) = (linked.clone(), linked_mem.clone());
        let mut budget = Budget::new(steps);
        let r = mm.mmu_update_one_within(&mut mem, DOM, ptr(L4, 7), 0, &mut budget);
        assert!(budget.spent() <= steps, "budget {steps} overrun");
        audit::audit(&mm, &mem).unwrap_or_else(|e| panic!("budget {steps}: {e:?}"));
        match r {
            Ok(()) => assert_eq!(snapshot(&mm, &mem), want, "budget {steps}"),
            Err(e) => {
                assert_eq!(e, MmError::SubtreeTooLarge, "budget {steps}");
                assert_eq!(snapshot(&mm, &mem), before, "budget {steps}");
            }
        }
        assert_eq!(r.is_ok(), steps >= need, "budget {steps} of {need}");
    }
    // Replacing the link by another fresh subtree, too large together:
    // the new one is released again and the old one stays.
    let (mut mm, mut mem) = (linked.clone(), linked_mem.clone());
    mem.poke(35, 0, table(36));
    for i in 0..4 {
        mem.poke(36, i, ro(20 + i as u64));
    }
    let before = snapshot(&mm, &mem);
    let mut budget = Budget::new(need);
    let r = mm.mmu_update_one_within(&mut mem, DOM, ptr(L4, 7), table(35), &mut budget);
    assert_refused(&mm, &mem, &before, r, MmError::SubtreeTooLarge);
    audit::audit(&mm, &mem).unwrap();
    // Pin first: the unlink is then O(1), and the unpin releases the tree
    // in bounded steps.
    let (mut mm, mut mem) = (linked.clone(), linked_mem.clone());
    mm.pin(&mut mem, DOM, 31, Level::L3).unwrap();
    let mut budget = Budget::new(1);
    mm.mmu_update_one_within(&mut mem, DOM, ptr(L4, 7), 0, &mut budget)
        .unwrap();
    audit::audit(&mm, &mem).unwrap();
    let (r, calls) = drive(&mut mm, &mut mem, 2, |mm, mem, p, b| {
        mm.unpin_bounded(mem, DOM, 31, p, b)
    });
    assert_eq!(r, Ok(()));
    assert!(calls > 3);
    assert_eq!(snapshot(&mm, &mem), want);
}

/// Budgets around `need`: every small one, a spread, and its neighbours.
fn budgets(need: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..24).collect();
    v.extend((1..40).map(|k| need * k / 40));
    v.extend([need - 2, need - 1, need, need + 1, 2 * need]);
    v
}

/// The undo path of a refused unlink: the new entry's subtree was linked
/// within the budget, then releasing the old one ran out of it. The new
/// subtree must be released again, all the way down (and its L3's upper
/// half left alone: only an L4's hypervisor slots are cleared), so that
/// nothing changed. The replacement above is refused while linking; this
/// one fits, so the refusal comes from the unlink.
#[test]
fn mmu_update_refused_unlink_releases_the_new_subtree_again() {
    let (mut linked, mut linked_mem, _) = tree();
    second_tree(&mut linked_mem);
    linked
        .mmu_update_one_within(
            &mut linked_mem,
            DOM,
            ptr(L4, 7),
            table(31),
            &mut Budget::unlimited(),
        )
        .unwrap();
    // The new subtree: L3 35, its entry in the upper half, then L2 36,
    // L1 37 and four read-only data frames.
    linked_mem.poke(35, 300, table(36));
    linked_mem.poke(36, 0, table(37));
    for i in 0..4 {
        linked_mem.poke(37, i, ro(20 + i as u64));
    }
    // What the unlink alone costs, and what linking 35 alone costs.
    let mut unlink = Budget::unlimited();
    linked
        .clone()
        .mmu_update_one_within(&mut linked_mem.clone(), DOM, ptr(L4, 7), 0, &mut unlink)
        .unwrap();
    let mut link = Budget::unlimited();
    linked
        .clone()
        .mmu_update_one_within(
            &mut linked_mem.clone(),
            DOM,
            ptr(L4, 8),
            table(35),
            &mut link,
        )
        .unwrap();
    let (unlink, link) = (unlink.spent(), link.spent());
    assert!(link < unlink, "link {link}, unlink {unlink}");
    let before = snapshot(&linked, &linked_mem);
    let (mut mm, mut mem) = (linked.clone(), linked_mem.clone());
    let mut budget = Budget::new(link + unlink - 1);
    let r = mm.mmu_update_one_within(&mut mem, DOM, ptr(L4, 7), table(35), &mut budget);
    assert_refused(&mm, &mem, &before, r, MmError::SubtreeTooLarge);
    for f in [35, 36, 37] {
        assert_eq!(view(&mm, f).ty, FrameType::None, "frame {f}");
    }
    assert_eq!(mem.peek(35, 300), table(36), "an L3's upper half is kept");
    // The same with a linear (self) entry as the new value: it took no
    // reference, so undoing it must drop none.
    let (mut mm, mut mem) = (linked.clone(), linked_mem.clone());
    let mut budget = Budget::new(unlink - 1);
    let r = mm.mmu_update_one_within(&mut mem, DOM, ptr(L4, 7), ro(L4), &mut budget);
    assert_refused(&mm, &mem, &before, r, MmError::SubtreeTooLarge);
    // With the budget for both, the replacement goes through.
    let mut budget = Budget::new(link + unlink);
    linked
        .mmu_update_one_within(&mut linked_mem, DOM, ptr(L4, 7), table(35), &mut budget)
        .unwrap();
    assert_eq!(view(&linked, 35).ty, FrameType::L3);
    assert_eq!(view(&linked, 31).ty, FrameType::None);
    audit::audit(&linked, &linked_mem).unwrap();
}

/// An invocation with no budget left does no work at all: the pin is
/// started (its root partial, nothing validated) and stays where it is
/// however often it is invoked; one step then validates one entry.
#[test]
fn mmu_35_an_empty_budget_makes_no_progress() {
    let (mut mm, mut mem, _) = tree();
    second_tree(&mut mem);
    let mut pending = None;
    for _ in 0..3 {
        let mut budget = Budget::new(0);
        let r = mm.pin_bounded(&mut mem, DOM, 30, Level::L4, &mut pending, &mut budget);
        assert_eq!(r, Ok(Progress::Preempted));
        assert_eq!(budget.spent(), 0);
        let f = mm.frame(30).unwrap();
        assert!(f.is_partial());
        assert_eq!(f.partial_entries(), 0, "no entry validated");
        assert!(mm.frame(31).unwrap().idle(), "nothing below touched");
        audit::audit(&mm, &mem).unwrap();
    }
    // While it is pending, a call differing in any one of domain, frame or
    // level is refused and changes nothing.
    let before = snapshot(&mm, &mem);
    for (dom, mfn, level) in [
        (OTHER, 30, Level::L4),
        (DOM, 31, Level::L4),
        (DOM, 30, Level::L3),
    ] {
        let kept = pending;
        let r = mm.pin_bounded(&mut mem, dom, mfn, level, &mut pending, &mut Budget::new(9));
        assert_refused(&mm, &mem, &before, r, MmError::OperationPending);
        assert_eq!(pending, kept);
    }
    let mut budget = Budget::new(1);
    let r = mm.pin_bounded(&mut mem, DOM, 30, Level::L4, &mut pending, &mut budget);
    assert_eq!(r, Ok(Progress::Preempted));
    assert_eq!(budget.spent(), 1);
    audit::audit(&mm, &mem).unwrap();
    // The record says what is pending, for whom (the hypervisor routes the
    // continuation with it).
    let p = pending.expect("a pin is pending");
    assert_eq!((p.is_pin(), p.domain(), p.root()), (true, DOM, 30));
    let r = mm.pin_bounded(
        &mut mem,
        DOM,
        30,
        Level::L4,
        &mut pending,
        &mut Budget::unlimited(),
    );
    assert_eq!((r, pending), (Ok(Progress::Done), None));
    let r = mm.unpin_bounded(&mut mem, DOM, 30, &mut pending, &mut Budget::new(0));
    assert_eq!(r, Ok(Progress::Preempted));
    let p = pending.expect("an unpin is pending");
    assert_eq!((p.is_pin(), p.domain(), p.root()), (false, DOM, 30));
}

/// While an unpin is pending, an unpin differing from it in the domain or
/// the frame alone (or a pin of its frame) is refused and changes nothing;
/// the same call continues it.
#[test]
fn mmu_36_a_pending_unpin_refuses_any_other_call() {
    let (mut mm, mut mem, _) = tree();
    second_tree(&mut mem);
    mm.pin(&mut mem, DOM, 30, Level::L4).unwrap();
    mm.pin(&mut mem, DOM, 35, Level::L1).unwrap();
    let mut pending = None;
    let r = mm.unpin_bounded(&mut mem, DOM, 30, &mut pending, &mut Budget::new(3));
    assert_eq!(r, Ok(Progress::Preempted));
    let before = snapshot(&mm, &mem);
    let kept = pending;
    for (dom, mfn) in [(OTHER, 30), (DOM, 35)] {
        let r = mm.unpin_bounded(&mut mem, dom, mfn, &mut pending, &mut Budget::new(9));
        assert_refused(&mm, &mem, &before, r, MmError::OperationPending);
        assert_eq!(pending, kept, "unpin of {mfn} by {dom}");
    }
    let r = mm.pin_bounded(
        &mut mem,
        DOM,
        30,
        Level::L4,
        &mut pending,
        &mut Budget::new(9),
    );
    assert_refused(&mm, &mem, &before, r, MmError::OperationPending);
    assert_eq!(pending, kept);
    while mm.unpin_bounded(&mut mem, DOM, 30, &mut pending, &mut Budget::new(5))
        == Ok(Progress::Preempted)
    {
        audit::audit(&mm, &mem).unwrap();
    }
    assert!(pending.is_none());
    audit::audit(&mm, &mem).unwrap();
    assert!(mm.frame(30).unwrap().idle());
    assert!(mm.frame(35).unwrap().pinned(), "the other pin is untouched");
}

/// A fresh subtree that names its own root from below (an L2 naming the
/// L3 above it as an L1) is refused the same way whether it is pinned or
/// linked by an `mmu_update` entry: the root is partial while its tree is
/// validated, so the reference back is `Busy` (MMU-36, `WrongState`), and
/// nothing changed.
#[test]
fn a_fresh_subtree_naming_its_root_is_refused_alike_by_pin_and_link() {
    let (mut mm, mut mem, _) = tree();
    mem.poke(35, 0, table(36));
    mem.poke(36, 0, table(37));
    mem.poke(36, 1, table(35));
    let before = snapshot(&mm, &mem);
    let r = mm.mmu_update_one(&mut mem, DOM, ptr(L4, 7), table(35));
    assert_refused(&mm, &mem, &before, r, MmError::Busy(35));
    let r = mm.pin(&mut mem, DOM, 35, Level::L3);
    assert_refused(&mm, &mem, &before, r, MmError::Busy(35));
    assert_eq!(MmError::Busy(35).abi(), Abi::WrongState);
    audit::audit(&mm, &mem).unwrap();
}

/// Unpinning releases references and nothing else: the entries of every
/// L3, L2 and L1 of the tree are left as the guest wrote them, upper half
/// included; only the L4's hypervisor slots are cleared (they must not stay
/// in a frame the guest may read). Unpinned at any budget, the memory is
/// exactly what it was before the pin.
#[test]
fn unpin_leaves_every_guest_entry_as_written() {
    let (start, mut start_mem, _) = tree();
    start_mem.poke(30, 0, table(31));
    start_mem.poke(31, 300, table(32));
    start_mem.poke(32, 400, table(33));
    start_mem.poke(33, 500, ro(DATA));
    start_mem.poke(33, 3, rw(20));
    for steps in [1, 2, 5, 4096] {
        let (mut mm, mut mem) = (start.clone(), start_mem.clone());
        mm.pin(&mut mem, DOM, 30, Level::L4).unwrap();
        assert_ne!(mem.peek(30, 511), 0, "the pin wrote the hypervisor slots");
        let (r, _) = drive(&mut mm, &mut mem, steps, |mm, mem, p, b| {
            mm.unpin_bounded(mem, DOM, 30, p, b)
        });
        assert_eq!(r, Ok(()));
        assert_eq!(mem, start_mem, "budget {steps}");
        assert_eq!(snapshot(&mm, &mem), snapshot(&start, &start_mem));
    }
}

/// What a teardown's scan costs, exactly as documented: one step per frame
/// the domain owns, one per 16 frames of the machine otherwise (a step at
/// frames 0, 16, 32 and 48, of which only 48 is not the domain's), and
/// nothing for frames the machine does not have. So a budget of exactly
/// that finishes in one invocation, and one step less does not.
#[test]
fn teardown_scan_costs_one_step_per_owned_frame_and_per_16_others() {
    let owned = 40; // frames 0..40 are DOM's, nothing pinned
    let cost = owned + 1;
    for (budget, want) in [(cost, Progress::Done), (cost - 1, Progress::Preempted)] {
        let (mut mm, mut mem) = machine();
        let mut t = Teardown::new(DOM);
        let mut b = Budget::new(budget);
        let r = mm.teardown_bounded(&mut mem, &mut t, &mut None, &mut b);
        assert_eq!((r, b.spent()), (want, budget), "budget {budget}");
        assert_eq!(t.unpinned(), 0);
    }
    // The same over the domain's list: one step per listed frame.
    let (mut mm, mut mem) = machine();
    let frames: Vec<Mfn> = (0..owned).collect();
    let mut b = Budget::unlimited();
    let r = mm.teardown_frames_bounded(
        &mut mem,
        &mut Teardown::new(DOM),
        &frames,
        &mut None,
        &mut b,
    );
    assert_eq!((r, b.spent()), (Progress::Done, owned));
}
