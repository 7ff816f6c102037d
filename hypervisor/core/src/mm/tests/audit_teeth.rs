//! The audit's teeth: every comparison it makes, shown to catch a state
//! that breaks it (one corrupted field or entry per case). Without these, a
//! mutation that stops the audit from comparing would pass every other
//! test.

use super::*;

/// The standard tree plus a read-only special frame mapped, a writable one
/// held, and a hold on a data frame: every kind of reference in use.
fn rich() -> (Mm, Mem, Vec<Mfn>) {
    let (mut mm, mut mem, _) = tree();
    mm.share_special(26, DOM, false).unwrap();
    mm.share_special(27, DOM, true).unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 9), ro(26))
        .unwrap();
    mm.mmu_update_one(&mut mem, DOM, ptr(L1, 10), rw(27))
        .unwrap();
    mm.hold(DATA, DOM).unwrap();
    let holds = vec![26, 27, DATA];
    audit::audit_holds(&mm, &mem, &holds).unwrap();
    (mm, mem, holds)
}

#[track_caller]
fn caught(mm: &Mm, mem: &Mem, holds: &[Mfn], mfn: Mfn, what: &'static str) {
    assert_eq!(
        audit::audit_holds(mm, mem, holds),
        Err(audit::AuditError { mfn, what }),
    );
}

#[test]
fn audit_compares_type_counts() {
    let (mut mm, mem, holds) = rich();
    let f = mm.frame_mut(L1);
    f.type_count += 1;
    f.total_count += 1;
    caught(
        &mm,
        &mem,
        &holds,
        L1,
        "type count differs from references found",
    );
    // The audit without a hold list makes the same comparison.
    assert_eq!(
        audit::audit(&mm, &mem),
        Err(audit::AuditError {
            mfn: L1,
            what: "type count differs from references found"
        })
    );
}

#[test]
fn audit_compares_total_counts() {
    for (mfn, delta) in [(DATA, 1i64), (26, 1), (26, -1), (L3, 1)] {
        let (mut mm, mem, holds) = rich();
        let f = mm.frame_mut(mfn);
        f.total_count = (i64::from(f.total_count) + delta) as u32;
        caught(
            &mm,
            &mem,
            &holds,
            mfn,
            "total count differs from references found",
        );
    }
}

#[test]
fn audit_compares_hold_counts() {
    let (mut mm, mem, holds) = rich();
    mm.frame_mut(DATA).held = 2;
    caught(
        &mm,
        &mem,
        &holds,
        DATA,
        "hold count differs from the holds recorded",
    );
    let (mm, mem, _) = rich();
    caught(
        &mm,
        &mem,
        &[26, 27],
        DATA,
        "hold count differs from the holds recorded",
    );
    caught(
        &mm,
        &mem,
        &[26, 27, DATA, 20],
        20,
        "hold count differs from the holds recorded",
    );
    caught(
        &mm,
        &mem,
        &[26, 27, DATA, FRAMES],
        FRAMES,
        "hold recorded for a frame beyond the frame table",
    );
    // Without records, the count is not compared (but the rules are).
    audit::audit(&mm, &mem).unwrap();
}

#[test]
fn audit_checks_each_frames_own_rules() {
    type Corrupt = fn(&mut Mm, &mut Mem);
    let cases: [(Mfn, &'static str, Corrupt); 18] = [
        (
            20,
            "type set without type references, or the reverse",
            |mm, _| {
                mm.frame_mut(20).ty = FrameType::L1;
            },
        ),
        (27, "special frame with type references", |mm, _| {
            mm.frame_mut(27).type_count = 1;
        }),
        (L3, "type count above total count", |mm, _| {
            mm.frame_mut(L3).total_count = 0;
        }),
        (DATA + 1, "pinned frame is not a table", |mm, _| {
            mm.frame_mut(DATA + 1).flags |= crate::mm::frame::PINNED;
        }),
        (
            L4,
            "pinned frame also held by an unfinished operation",
            |mm, _| {
                mm.frame_mut(L4).flags |= crate::mm::frame::OP_REF;
            },
        ),
        (L3, "operation root is not a partial table", |mm, _| {
            mm.frame_mut(L3).flags |= crate::mm::frame::OP_REF;
        }),
        (DATA + 1, "partial frame is not a table", |mm, _| {
            mm.frame_mut(DATA + 1).flags |= crate::mm::frame::PARTIAL;
        }),
        (L4, "partial frame is not a table", |mm, _| {
            let f = mm.frame_mut(L4);
            f.flags |= crate::mm::frame::PARTIAL;
            f.partial = ENTRIES as u16 + 1;
        }),
        (
            L2,
            "progress recorded on a frame that is not partial",
            |mm, _| {
                mm.frame_mut(L2).partial = 1;
            },
        ),
        (L4, "partial table loaded as a root", |mm, _| {
            mm.frame_mut(L4).flags |= crate::mm::frame::PARTIAL;
        }),
        (L4, "loaded root is not a pinned L4", |mm, _| {
            mm.frame_mut(L4).flags &= !crate::mm::frame::PINNED;
        }),
        (L3, "loaded root is not a pinned L4", |mm, _| {
            mm.frame_mut(L3).loaded = 1;
        }),
        (L4, "typed frame not owned by a domain", |mm, _| {
            mm.frame_mut(L4).owner = Owner::Hypervisor;
        }),
        (
            HYP_FRAMES.start + 2,
            "held frame not owned by a domain",
            |mm, _| {
                mm.frame_mut(HYP_FRAMES.start + 2).held = 1;
            },
        ),
        (L2, "held frame is a page table", |mm, _| {
            mm.frame_mut(L2).held = 1;
        }),
        (27, "special frame the hypervisor does not hold", |mm, _| {
            mm.frame_mut(27).held = 0;
        }),
        (
            FREE_FRAME,
            "free frame with a type, a count or a flag",
            |mm, _| {
                mm.frame_mut(FREE_FRAME).total_count = 1;
            },
        ),
        (
            FREE_FRAME,
            "free frame with a type, a count or a flag",
            |mm, _| {
                mm.frame_mut(FREE_FRAME).flags = crate::mm::frame::SPECIAL_WRITABLE;
            },
        ),
    ];
    for (mfn, what, corrupt) in cases {
        let (mut mm, mut mem, holds) = rich();
        corrupt(&mut mm, &mut mem);
        let mut holds = holds;
        if what.starts_with("held frame") {
            holds.push(mfn);
        }
        if what == "special frame the hypervisor does not hold" {
            holds.retain(|&p| p != mfn);
        }
        caught(&mm, &mem, &holds, mfn, what);
    }
}

#[test]
fn audit_rescans_table_contents() {
    type Corrupt = fn(&mut Mm, &mut Mem);
    let cases: [(Mfn, &'static str, Corrupt); 7] = [
        (
            L1,
            "table holds an entry that fails validation",
            |_, mem| {
                mem.poke(L1, 0, rw(DATA) | (1 << 52));
            },
        ),
        (
            DATA,
            "mapped frame not owned by the table's owner",
            |mm, _| {
                mm.frame_mut(DATA).owner = Owner::Domain(OTHER);
            },
        ),
        (26, "read-only special frame mapped writable", |_, mem| {
            mem.poke(L1, 9, rw(26));
        }),
        (
            DATA + 20,
            "writable mapping of a non-writable-typed frame",
            |_, mem| {
                mem.poke(L1, 20, rw(DATA + 20));
            },
        ),
        (L1, "entry points at a frame of the wrong type", |_, mem| {
            mem.poke(L1, 20, table(L1) & !WRITABLE);
            mem.poke(L2, 1, table(L1));
            mem.poke(L3, 1, table(L1));
        }),
        (L4, "writable linear entry", |_, mem| {
            mem.poke(L4, 5, table(L4));
        }),
        (L4, "hypervisor slot differs from the template", |_, mem| {
            mem.poke(L4, 300, table(HYP_FRAMES.start + 3) & !USER);
        }),
    ];
    for (mfn, what, corrupt) in cases {
        let (mut mm, mut mem, holds) = rich();
        corrupt(&mut mm, &mut mem);
        caught(&mm, &mem, &holds, mfn, what);
    }
}

/// A partial table may hang only from the last counted entry of a partial
/// parent: hanging from the last slot of a complete table is caught too.
#[test]
fn audit_catches_a_partial_table_under_a_complete_parent() {
    let (mut mm, mut mem, holds) = rich();
    mm.mmu_update_one(&mut mem, DOM, ptr(L2, ENTRIES - 1), table(5))
        .unwrap();
    audit::audit_holds(&mm, &mem, &holds).unwrap();
    mm.frame_mut(5).flags |= crate::mm::frame::PARTIAL;
    caught(
        &mm,
        &mem,
        &holds,
        5,
        "partial table referenced outside its chain",
    );
}
