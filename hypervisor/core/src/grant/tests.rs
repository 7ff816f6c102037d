//! Every refusal of the grant table, the dying of either side, batches that
//! fail midway, and a property test against a simple model, with the frame
//! audit (`audit_holds`) and the grant audit after every step.

use super::*;
use crate::mm::audit::audit_holds;
use crate::mm::pte::Level;
use crate::mm::{MmConfig, PhysMem, HYPERVISOR_SLOTS};
use proptest::prelude::*;

const A: DomId = 1; // granter
const B: DomId = 2; // grantee
const C: DomId = 3; // a third domain
const FRAMES: u64 = 64;

/// Frames 0..16 are A's, 16..32 B's, 32..48 C's, 48..56 the hypervisor's,
/// the rest free.
fn owner_of(mfn: Mfn) -> Owner {
    match mfn {
        0..16 => Owner::Domain(A),
        16..32 => Owner::Domain(B),
        32..48 => Owner::Domain(C),
        48..56 => Owner::Hypervisor,
        _ => Owner::Free,
    }
}

struct Mem(Vec<[u64; 512]>);
impl PhysMem for Mem {
    fn read_entry(&self, mfn: Mfn, index: usize) -> u64 {
        self.0[mfn as usize][index]
    }
    fn write_entry(&mut self, mfn: Mfn, index: usize, value: u64) {
        self.0[mfn as usize][index] = value;
    }
    fn entries_mut(&mut self, mfn: Mfn) -> &mut [u64; 512] {
        &mut self.0[mfn as usize]
    }
}

fn machine() -> (Mm, Mem, GrantTables) {
    let mut mm = Mm::new(&MmConfig {
        frames: FRAMES,
        max_phys_bits: 46,
        hypervisor_slots: [0; HYPERVISOR_SLOTS],
    })
    .unwrap();
    for mfn in 0..FRAMES {
        mm.assign(mfn, owner_of(mfn)).unwrap();
    }
    let mut gt = GrantTables::new();
    for d in [A, B, C] {
        gt.add_domain(d);
    }
    (mm, Mem(vec![[0; 512]; FRAMES as usize]), gt)
}

/// Both audits: the frame table with the grant holds, and the grant table.
fn audit(mm: &Mm, mem: &Mem, gt: &GrantTables) {
    let holds: Vec<Mfn> = gt.holds().collect();
    audit_holds(mm, mem, &holds).unwrap();
    gt.audit(mm).unwrap();
}

/// A refusal: the exact error, and neither table changed.
#[track_caller]
fn refused<T: core::fmt::Debug>(
    mm: &Mm,
    gt: &GrantTables,
    before: &(Vec<crate::mm::FrameView>, String),
    r: Result<T, GrantError>,
    want: GrantError,
) {
    assert_eq!(r.unwrap_err(), want);
    assert_eq!(&snapshot(mm, gt), before, "a refusal changed state");
}

fn snapshot(mm: &Mm, gt: &GrantTables) -> (Vec<crate::mm::FrameView>, String) {
    (
        (0..FRAMES).map(|p| mm.frame(p).unwrap().view()).collect(),
        format!("{gt:?}"),
    )
}

#[test]
fn grant_map_unmap_revoke_round_trip() {
    let (mut mm, mem, mut gt) = machine();
    let r = gt.grant_access(&mm, A, B, 3, false).unwrap();
    assert_eq!(
        gt.grant(A, r),
        Some(Grant {
            grantee: B,
            mfn: 3,
            readonly: false,
            maps: 0
        })
    );
    let h = gt.map(&mut mm, B, A, r, true).unwrap();
    assert_eq!(mm.frame(3).unwrap().held(), 1);
    assert!(gt.mapping_allows(B, h, 3, true));
    assert!(!gt.mapping_allows(B, h, 4, false));
    assert!(!gt.mapping_allows(C, h, 3, false));
    audit(&mm, &mem, &gt);
    let h2 = gt.map(&mut mm, B, A, r, false).unwrap();
    assert_eq!(gt.grant(A, r).unwrap().maps, 2);
    assert_eq!(mm.frame(3).unwrap().held(), 2);
    audit(&mm, &mem, &gt);
    assert_eq!(
        gt.unmap(&mut mm, B, h).unwrap(),
        Unmapped {
            mfn: 3,
            free_now: false
        }
    );
    assert_eq!(
        gt.unmap(&mut mm, B, h2).unwrap(),
        Unmapped {
            mfn: 3,
            free_now: false
        }
    );
    assert!(mm.frame(3).unwrap().idle());
    gt.revoke(A, r).unwrap();
    assert_eq!(gt.grant_count(A), 0);
    audit(&mm, &mem, &gt);
}

#[test]
fn refusals_change_nothing() {
    let (mut mm, mut mem, mut gt) = machine();
    let rw = gt.grant_access(&mm, A, B, 3, false).unwrap();
    let ro = gt.grant_access(&mm, A, B, 4, true).unwrap();
    let h = gt.map(&mut mm, B, A, rw, false).unwrap();
    // A table of A's, granted read-only before it became a table.
    mm.pin(&mut mem, A, 5, Level::L1).unwrap();
    let before = snapshot(&mm, &gt);

    // Bad reference, never made.
    {
        let r = gt.map(&mut mm, B, A, 99, false);
        refused(&mm, &gt, &before, r, GrantError::BadRef(99));
    }
    {
        let r = gt.revoke(A, 99);
        refused(&mm, &gt, &before, r, GrantError::BadRef(99));
    }
    // Wrong domain: C uses B's grant.
    {
        let r = gt.map(&mut mm, C, A, rw, false);
        refused(&mm, &gt, &before, r, GrantError::WrongDomain);
    }
    // Read-only grant mapped writable.
    {
        let r = gt.map(&mut mm, B, A, ro, true);
        refused(&mm, &gt, &before, r, GrantError::ReadOnly);
    }
    // A frame that is not the granter's: B's, the hypervisor's, a free one, beyond.
    for (mfn, want) in [
        (20, GrantError::NotOwner(20)),
        (50, GrantError::NotOwner(50)),
        (60, GrantError::NotOwner(60)),
        (FRAMES, GrantError::NotOwner(FRAMES)),
    ] {
        {
            let r = gt.grant_access(&mm, A, B, mfn, true);
            refused(&mm, &gt, &before, r, want);
        }
    }
    // A page table granted writable.
    {
        let r = gt.grant_access(&mm, A, B, 5, false);
        refused(&mm, &gt, &before, r, GrantError::TableFrame(5));
    }
    // Revoke while mapped.
    {
        let r = gt.revoke(A, rw);
        refused(&mm, &gt, &before, r, GrantError::StillMapped(1));
    }
    // Unknown domains.
    {
        let r = gt.grant_access(&mm, A, 9, 3, true);
        refused(&mm, &gt, &before, r, GrantError::UnknownDomain(9));
    }
    {
        let r = gt.map(&mut mm, 9, A, rw, false);
        refused(&mm, &gt, &before, r, GrantError::UnknownDomain(9));
    }
    // Bad handle: never made, or another domain's.
    {
        let r = gt.unmap(&mut mm, B, MapHandle(7));
        refused(&mm, &gt, &before, r, GrantError::BadHandle(MapHandle(7)));
    }
    {
        let r = gt.unmap(&mut mm, C, h);
        refused(&mm, &gt, &before, r, GrantError::BadHandle(h));
    }
    assert_eq!(GrantError::TableFrame(5).abi(), Error::TypeConflict);
    assert_eq!(GrantError::StillMapped(1).abi(), Error::WrongState);
    assert_eq!(GrantError::BadRef(1).abi(), Error::NotFound);
}

#[test]
fn a_stale_reference_after_revoke_is_refused() {
    let (mut mm, mem, mut gt) = machine();
    let r = gt.grant_access(&mm, A, B, 3, false).unwrap();
    gt.revoke(A, r).unwrap();
    let before = snapshot(&mm, &gt);
    {
        let got = gt.map(&mut mm, B, A, r, false);
        refused(&mm, &gt, &before, got, GrantError::BadRef(r));
    }
    {
        let got = gt.revoke(A, r);
        refused(&mm, &gt, &before, got, GrantError::BadRef(r));
    }
    let op = CopyOp {
        src: CopyPtr::Granted {
            granter: A,
            gref: r,
            offset: 0,
        },
        dst: CopyPtr::Local { mfn: 20, offset: 0 },
        len: 8,
    };
    assert_eq!(gt.check_copy(&mm, B, &op), Err(GrantError::BadRef(r)));
    // The reference is reused by the next grant, which names its grantee:
    // an old holder of the number (C) still cannot use it.
    let r2 = gt.grant_access(&mm, A, C, 4, false).unwrap();
    assert_eq!(r2, r);
    assert_eq!(
        gt.map(&mut mm, B, A, r2, false),
        Err(GrantError::WrongDomain)
    );
    audit(&mm, &mem, &gt);
}

#[test]
fn a_granted_frame_cannot_become_a_table_while_mapped_nor_be_mapped_once_a_table() {
    let (mut mm, mut mem, mut gt) = machine();
    let r = gt.grant_access(&mm, A, B, 3, false).unwrap();
    let h = gt.map(&mut mm, B, A, r, true).unwrap();
    // The granter tries to make it a page table: the hold refuses.
    assert_eq!(
        mm.pin(&mut mem, A, 3, Level::L1),
        Err(MmError::HeldFrame(3))
    );
    // Nor can it change hands.
    assert_eq!(mm.assign(3, Owner::Free), Err(MmError::FrameInUse(3)));
    gt.unmap(&mut mm, B, h).unwrap();
    // Unmapped, it may become a table; then the grant cannot be mapped
    // (read-only neither) nor copied into.
    mm.pin(&mut mem, A, 3, Level::L1).unwrap();
    let before = snapshot(&mm, &gt);
    {
        let r = gt.map(&mut mm, B, A, r, true);
        refused(&mm, &gt, &before, r, GrantError::TableFrame(3));
    }
    {
        let r = gt.map(&mut mm, B, A, r, false);
        refused(&mm, &gt, &before, r, GrantError::TableFrame(3));
    }
    let op = CopyOp {
        src: CopyPtr::Local { mfn: 20, offset: 0 },
        dst: CopyPtr::Granted {
            granter: A,
            gref: r,
            offset: 0,
        },
        len: 8,
    };
    assert_eq!(gt.check_copy(&mm, B, &op), Err(GrantError::TableFrame(3)));
    audit(&mm, &mem, &gt);
}

#[test]
fn copy_checks() {
    let (mut mm, mut mem, mut gt) = machine();
    let rw = gt.grant_access(&mm, A, B, 3, false).unwrap();
    let ro = gt.grant_access(&mm, A, B, 4, true).unwrap();
    mm.pin(&mut mem, B, 21, Level::L1).unwrap();
    let g = |gref, offset| CopyPtr::Granted {
        granter: A,
        gref,
        offset,
    };
    let l = |mfn, offset| CopyPtr::Local { mfn, offset };
    let ok = |src, dst, len| CopyOp { src, dst, len };
    // Allowed: into a writable grant, out of a read-only one, a whole page.
    assert_eq!(
        gt.check_copy(&mm, B, &ok(l(20, 0), g(rw, 96), 4000)),
        Ok(CopyPlan {
            src: (20, 0),
            dst: (3, 96),
            len: 4000
        })
    );
    assert!(gt.check_copy(&mm, B, &ok(g(ro, 0), l(20, 0), 4096)).is_ok());
    for (op, want) in [
        (ok(l(20, 0), g(rw, 0), 0), GrantError::ZeroLength),
        (ok(l(20, 1), g(rw, 0), 4096), GrantError::OutOfPage),
        (ok(l(20, 0), g(rw, 4095), 2), GrantError::OutOfPage),
        (ok(l(20, 0), g(rw, u16::MAX), 1), GrantError::OutOfPage),
        (ok(l(20, 0), g(ro, 0), 8), GrantError::ReadOnly),
        (ok(g(rw, 0), l(21, 0), 8), GrantError::TableFrame(21)),
        (ok(l(3, 0), l(20, 0), 8), GrantError::NotOwner(3)),
        (ok(g(rw, 0), l(3, 0), 8), GrantError::NotOwner(3)),
        (ok(l(20, 0), g(77, 0), 8), GrantError::BadRef(77)),
    ] {
        assert_eq!(gt.check_copy(&mm, B, &op), Err(want), "{op:?}");
    }
    // C is not the grantee.
    assert_eq!(
        gt.check_copy(&mm, C, &ok(g(ro, 0), l(40, 0), 8)),
        Err(GrantError::WrongDomain)
    );
    audit(&mm, &mem, &gt);
}

#[test]
fn a_batch_failing_midway_reports_each_element_and_copies_the_rest() {
    let (mm, _mem, mut gt) = machine();
    let rw = gt.grant_access(&mm, A, B, 3, false).unwrap();
    let ops = [
        CopyOp {
            src: CopyPtr::Local { mfn: 20, offset: 0 },
            dst: CopyPtr::Granted {
                granter: A,
                gref: rw,
                offset: 0,
            },
            len: 512,
        },
        CopyOp {
            src: CopyPtr::Local { mfn: 20, offset: 0 },
            dst: CopyPtr::Granted {
                granter: A,
                gref: rw,
                offset: 3900,
            },
            len: 512,
        },
        CopyOp {
            src: CopyPtr::Local { mfn: 22, offset: 8 },
            dst: CopyPtr::Granted {
                granter: A,
                gref: rw,
                offset: 512,
            },
            len: 8,
        },
    ];
    let mut status = [Ok(()); 3];
    let mut copied = vec![];
    gt.copy_batch(&mm, B, &ops, &mut status, |p| copied.push(p))
        .unwrap();
    assert_eq!(status, [Ok(()), Err(GrantError::OutOfPage), Ok(())]);
    assert_eq!(
        copied,
        [
            CopyPlan {
                src: (20, 0),
                dst: (3, 0),
                len: 512
            },
            CopyPlan {
                src: (22, 8),
                dst: (3, 512),
                len: 8
            }
        ]
    );
    let long = vec![ops[0]; MAX_COPY_BATCH + 1];
    let mut st = vec![Ok(()); MAX_COPY_BATCH + 1];
    let mut n = 0;
    assert_eq!(
        gt.copy_batch(&mm, B, &long, &mut st, |_| n += 1),
        Err(GrantError::BatchTooLong)
    );
    assert_eq!(n, 0, "a refused batch copies nothing");
}

#[test]
fn a_dying_granter_keeps_mapped_frames_until_the_last_unmap() {
    let (mut mm, mem, mut gt) = machine();
    let mapped = gt.grant_access(&mm, A, B, 3, false).unwrap();
    let unmapped = gt.grant_access(&mm, A, B, 4, false).unwrap();
    let h = gt.map(&mut mm, B, A, mapped, true).unwrap();
    let t = gt.destroy(&mut mm, A);
    assert_eq!(
        t,
        Teardown {
            unmapped: 0,
            revoked: 1,
            still_mapped: vec![3],
            free_now: vec![]
        }
    );
    audit(&mm, &mem, &gt);
    // The unmapped grant is gone, the mapped one can be used no more.
    assert_eq!(
        gt.map(&mut mm, B, A, unmapped, false),
        Err(GrantError::BadRef(unmapped))
    );
    assert_eq!(
        gt.map(&mut mm, B, A, mapped, false),
        Err(GrantError::Dying(A))
    );
    assert_eq!(
        gt.grant_access(&mm, A, B, 5, true),
        Err(GrantError::Dying(A))
    );
    let op = CopyOp {
        src: CopyPtr::Granted {
            granter: A,
            gref: mapped,
            offset: 0,
        },
        dst: CopyPtr::Local { mfn: 20, offset: 0 },
        len: 8,
    };
    assert_eq!(gt.check_copy(&mm, B, &op), Err(GrantError::Dying(A)));
    // Its frames: 4 may be freed now; 3 is held, not freeable.
    mm.assign(4, Owner::Free).unwrap();
    assert_eq!(mm.assign(3, Owner::Free), Err(MmError::FrameInUse(3)));
    // The last unmap says when.
    assert_eq!(
        gt.unmap(&mut mm, B, h).unwrap(),
        Unmapped {
            mfn: 3,
            free_now: true
        }
    );
    mm.assign(3, Owner::Free).unwrap();
    assert_eq!(gt.grant_count(A), 0);
    assert_eq!(gt.grant(A, mapped), None);
    audit(&mm, &mem, &gt);
}

#[test]
fn a_dying_grantee_loses_its_mappings() {
    let (mut mm, mem, mut gt) = machine();
    let r = gt.grant_access(&mm, A, B, 3, false).unwrap();
    let r2 = gt.grant_access(&mm, C, B, 33, true).unwrap();
    gt.map(&mut mm, B, A, r, true).unwrap();
    gt.map(&mut mm, B, A, r, false).unwrap();
    gt.map(&mut mm, B, C, r2, false).unwrap();
    let t = gt.destroy(&mut mm, B);
    assert_eq!(
        t,
        Teardown {
            unmapped: 3,
            revoked: 0,
            still_mapped: vec![],
            free_now: vec![]
        }
    );
    assert!(mm.frame(3).unwrap().idle() && mm.frame(33).unwrap().idle());
    assert_eq!(gt.grant(A, r).unwrap().maps, 0);
    assert_eq!(gt.mapping_count(), 0);
    // The granter may revoke now, and nobody can map for the dead grantee.
    gt.revoke(A, r).unwrap();
    assert_eq!(
        gt.map(&mut mm, B, C, r2, false),
        Err(GrantError::UnknownDomain(B))
    );
    assert_eq!(
        gt.grant_access(&mm, A, B, 3, false),
        Err(GrantError::UnknownDomain(B))
    );
    audit(&mm, &mem, &gt);
}

#[test]
fn both_sides_dying_frees_every_frame() {
    let (mut mm, mem, mut gt) = machine();
    let r = gt.grant_access(&mm, A, B, 3, false).unwrap();
    gt.map(&mut mm, B, A, r, true).unwrap();
    let ta = gt.destroy(&mut mm, A);
    assert_eq!(ta.still_mapped, vec![3]);
    let tb = gt.destroy(&mut mm, B);
    assert_eq!(
        tb.free_now,
        vec![3],
        "the grantee's teardown releases the dead granter's frame"
    );
    mm.assign(3, Owner::Free).unwrap();
    assert_eq!(gt.mapping_count(), 0);
    assert_eq!(gt.holds().count(), 0);
    audit(&mm, &mem, &gt);
}

#[test]
fn tables_are_bounded() {
    let (mut mm, mem, mut gt) = machine();
    // Automatic references start after the well-known ones...
    for i in WELL_KNOWN_REFS..MAX_GRANTS_PER_DOMAIN {
        assert_eq!(gt.grant_access(&mm, A, B, 3, true).unwrap(), i as GrantRef);
    }
    let before = snapshot(&mm, &gt);
    {
        let r = gt.grant_access(&mm, A, B, 3, true);
        refused(&mm, &gt, &before, r, GrantError::TableFull);
    }
    // ...which are handed out only by number.
    for i in 0..WELL_KNOWN_REFS {
        let at = Some(i as GrantRef);
        assert_eq!(
            gt.grant_access_at(&mm, A, B, 3, true, at),
            Ok(i as GrantRef)
        );
    }
    let before = snapshot(&mm, &gt);
    {
        let r = gt.grant_access(&mm, A, B, 3, true);
        refused(&mm, &gt, &before, r, GrantError::TableFull);
    }
    for r in 0..MAX_MAPPINGS_PER_DOMAIN.min(MAX_GRANTS_PER_DOMAIN) {
        gt.map(&mut mm, B, A, r as GrantRef, false).unwrap();
    }
    for _ in MAX_GRANTS_PER_DOMAIN..MAX_MAPPINGS_PER_DOMAIN {
        gt.map(&mut mm, B, A, 0, false).unwrap();
    }
    let before = snapshot(&mm, &gt);
    {
        let r = gt.map(&mut mm, B, A, 1, false);
        refused(&mm, &gt, &before, r, GrantError::TooManyMappings);
    }
    audit(&mm, &mem, &gt);
}

#[test]
fn the_audit_catches_a_lost_hold() {
    let (mut mm, mem, mut gt) = machine();
    let r = gt.grant_access(&mm, A, B, 3, false).unwrap();
    gt.map(&mut mm, B, A, r, true).unwrap();
    // Someone releases the hold behind the grant table's back.
    mm.release_hold(3).unwrap();
    assert!(gt.audit(&mm).is_err());
    let holds: Vec<Mfn> = gt.holds().collect();
    assert!(audit_holds(&mm, &mem, &holds).is_err());

    // Two grants of one frame, each mapped once: two holds; one lost is
    // caught by the grant audit alone too.
    let (mut mm, _mem, mut gt) = machine();
    let r1 = gt.grant_access(&mm, A, B, 3, true).unwrap();
    let r2 = gt.grant_access(&mm, A, C, 3, true).unwrap();
    gt.map(&mut mm, B, A, r1, false).unwrap();
    gt.map(&mut mm, C, A, r2, false).unwrap();
    gt.audit(&mm).unwrap();
    mm.release_hold(3).unwrap();
    assert_eq!(
        gt.audit(&mm).unwrap_err().what,
        "a granted frame has fewer holds than mappings"
    );
}

// ----- against a model -----

#[derive(Clone, Debug)]
enum Op {
    Grant {
        granter: u8,
        grantee: u8,
        mfn: u8,
        readonly: bool,
    },
    Revoke {
        granter: u8,
        gref: u8,
    },
    Map {
        grantee: u8,
        granter: u8,
        gref: u8,
        writable: bool,
    },
    Unmap {
        grantee: u8,
        handle: u8,
    },
    Pin {
        mfn: u8,
    },
    Destroy {
        dom: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 0u8..3, 0u8..48, any::<bool>()).prop_map(|(granter, grantee, mfn, readonly)| {
            Op::Grant {
                granter,
                grantee,
                mfn,
                readonly,
            }
        }),
        (0u8..3, 16u8..22).prop_map(|(granter, gref)| Op::Revoke { granter, gref }),
        (0u8..3, 0u8..3, 16u8..22, any::<bool>()).prop_map(|(grantee, granter, gref, writable)| {
            Op::Map {
                grantee,
                granter,
                gref,
                writable,
            }
        }),
        (0u8..3, 0u8..6).prop_map(|(grantee, handle)| Op::Unmap { grantee, handle }),
        (0u8..48).prop_map(|mfn| Op::Pin { mfn }),
        (0u8..3).prop_map(|dom| Op::Destroy { dom }),
    ]
}

proptest! {
    /// Whatever the sequence: both audits hold after every step; the model
    /// (who granted what to whom, how often mapped, who is dead) predicts
    /// every success and failure class; no granted-and-mapped frame becomes
    /// a table, and a dead granter's frame is freeable exactly when no
    /// mapping of it remains.
    #[test]
    fn grant_tables_match_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let (mut mm, mut mem, mut gt) = machine();
        let doms = [A, B, C];
        // Model: live grants (granter, gref) -> (grantee, mfn, readonly, maps).
        let mut grants: BTreeMap<(DomId, GrantRef), (DomId, Mfn, bool, u32)> = BTreeMap::new();
        let mut maps: BTreeMap<(DomId, u32), (DomId, GrantRef)> = BTreeMap::new();
        let mut dead: Vec<DomId> = vec![];
        for op in ops {
            match op {
                Op::Grant { granter, grantee, mfn, readonly } => {
                    let (g, e, mfn) = (doms[granter as usize], doms[grantee as usize], Mfn::from(mfn));
                    let r = gt.grant_access(&mm, g, e, mfn, readonly);
                    let table = mm.frame(mfn).unwrap().frame_type().level().is_some();
                    let allowed = !dead.contains(&g) && !dead.contains(&e) && g != e
                        && owner_of(mfn) == Owner::Domain(g) && (readonly || !table);
                    prop_assert_eq!(r.is_ok(), allowed, "{:?}", r);
                    if let Ok(r) = r { grants.insert((g, r), (e, mfn, readonly, 0)); }
                }
                Op::Revoke { granter, gref } => {
                    let g = doms[granter as usize];
                    let r = gt.revoke(g, gref.into());
                    match grants.get(&(g, gref.into())) {
                        Some(&(_, _, _, 0)) if !dead.contains(&g) => {
                            prop_assert!(r.is_ok());
                            grants.remove(&(g, gref.into()));
                        }
                        Some(&(_, _, _, n)) if n > 0 => prop_assert_eq!(r, Err(GrantError::StillMapped(n))),
                        _ => prop_assert!(r.is_err()),
                    }
                }
                Op::Map { grantee, granter, gref, writable } => {
                    let (e, g) = (doms[grantee as usize], doms[granter as usize]);
                    let r = gt.map(&mut mm, e, g, gref.into(), writable);
                    let allowed = match grants.get(&(g, gref.into())) {
                        Some(&(to, mfn, ro, _)) => !dead.contains(&g) && !dead.contains(&e) && to == e
                            && (!writable || !ro) && mm.frame(mfn).unwrap().frame_type().level().is_none(),
                        None => false,
                    };
                    prop_assert_eq!(r.is_ok(), allowed, "{:?}", r);
                    if let Ok(h) = r {
                        grants.get_mut(&(g, gref.into())).unwrap().3 += 1;
                        maps.insert((e, h.0), (g, gref.into()));
                    }
                }
                Op::Unmap { grantee, handle } => {
                    let e = doms[grantee as usize];
                    let r = gt.unmap(&mut mm, e, MapHandle(handle.into()));
                    match maps.remove(&(e, handle.into())) {
                        Some(key) => {
                            let u = r.unwrap();
                            let g = grants.get_mut(&key).unwrap();
                            g.3 -= 1;
                            prop_assert_eq!(u.mfn, g.1);
                            if dead.contains(&key.0) && g.3 == 0 {
                                grants.remove(&key);
                                let still = grants.values().any(|v| v.1 == u.mfn && v.3 > 0);
                                prop_assert_eq!(u.free_now, !still);
                            } else {
                                prop_assert!(!u.free_now);
                            }
                        }
                        None => prop_assert!(r.is_err()),
                    }
                }
                Op::Pin { mfn } => {
                    let mfn = Mfn::from(mfn);
                    let Owner::Domain(d) = owner_of(mfn) else { continue };
                    let mapped = grants.values().any(|v| v.1 == mfn && v.3 > 0);
                    let r = mm.pin(&mut mem, d, mfn, Level::L1);
                    if mapped {
                        prop_assert_eq!(r, Err(MmError::HeldFrame(mfn)));
                    }
                }
                Op::Destroy { dom } => {
                    let d = doms[dom as usize];
                    if dead.contains(&d) { continue; }
                    let t = gt.destroy(&mut mm, d);
                    dead.push(d);
                    let mine: Vec<u32> = maps.keys().filter(|k| k.0 == d).map(|k| k.1).collect();
                    prop_assert_eq!(t.unmapped, mine.len());
                    for h in mine {
                        let key = maps.remove(&(d, h)).unwrap();
                        let g = grants.get_mut(&key).unwrap();
                        g.3 -= 1;
                        if dead.contains(&key.0) && g.3 == 0 { grants.remove(&key); }
                    }
                    let before = grants.len();
                    grants.retain(|k, v| k.0 != d || v.3 > 0);
                    prop_assert_eq!(t.revoked, before - grants.len());
                }
            }
            prop_assert_eq!(gt.mapping_count(), maps.len());
            for (&(g, r), &(e, mfn, ro, n)) in &grants {
                prop_assert_eq!(gt.grant(g, r), Some(Grant { grantee: e, mfn, readonly: ro, maps: n }));
            }
            let holds: Vec<Mfn> = gt.holds().collect();
            prop_assert_eq!(audit_holds(&mm, &mem, &holds), Ok(()));
            prop_assert_eq!(gt.audit(&mm), Ok(()));
        }
    }
}

// ----- references by number, self grants, frames given back -----

#[test]
fn well_known_references_only_by_number() {
    let (mm, mem, mut gt) = machine();
    assert_eq!(gt.grant_access(&mm, A, B, 3, false), Ok(16));
    assert_eq!(gt.grant_access_at(&mm, A, B, 4, false, Some(2)), Ok(2));
    let before = snapshot(&mm, &gt);
    for (r, want) in [
        (
            gt.grant_access_at(&mm, A, B, 5, false, Some(2)),
            GrantError::RefInUse(2),
        ),
        (
            gt.grant_access_at(&mm, A, B, 5, false, Some(16)),
            GrantError::RefInUse(16),
        ),
        (
            gt.grant_access_at(&mm, A, B, 5, false, Some(512)),
            GrantError::BadRef(512),
        ),
        (gt.grant_access(&mm, A, A, 5, false), GrantError::SelfGrant),
    ] {
        refused(&mm, &gt, &before, r, want);
    }
    assert_eq!(GrantError::RefInUse(2).abi(), Error::WrongState);
    assert_eq!(GrantError::SelfGrant.abi(), Error::InvalidArgument);
    // The next automatic one skips the well-known range.
    assert_eq!(gt.grant_access(&mm, A, B, 5, false), Ok(17));
    audit(&mm, &mem, &gt);
}

#[test]
fn a_grant_never_reaches_a_frame_its_granter_gave_back() {
    let (mut mm, mem, mut gt) = machine();
    let r = gt.grant_access(&mm, A, B, 3, false).unwrap();
    // The granter releases the frame (memory_release) and it goes to C.
    mm.assign(3, Owner::Free).unwrap();
    mm.assign(3, Owner::Domain(C)).unwrap();
    let before = snapshot(&mm, &gt);
    {
        let r = gt.map(&mut mm, B, A, r, false);
        refused(&mm, &gt, &before, r, GrantError::NotOwner(3));
    }
    let op = CopyOp {
        src: CopyPtr::Granted {
            granter: A,
            gref: r,
            offset: 0,
        },
        dst: CopyPtr::Local { mfn: 20, offset: 0 },
        len: 8,
    };
    assert_eq!(gt.check_copy(&mm, B, &op), Err(GrantError::NotOwner(3)));
    audit(&mm, &mem, &gt);
}

// ----- the installed entry (Mm::map_foreign, GNT-3) -----

const B_L4: Mfn = 16;
const B_L1: Mfn = 19;
const VA: u64 = 0x5000;

fn table_entry(mfn: Mfn) -> u64 {
    use crate::mm::pte::{PRESENT, USER, WRITABLE};
    (mfn << 12) | PRESENT | WRITABLE | USER
}

/// B's tree: L4 16 -> L3 17 -> L2 18 -> L1 19, pinned, mapping nothing.
fn b_tree(mm: &mut Mm, mem: &mut Mem) {
    mem.0[16][0] = table_entry(17);
    mem.0[17][0] = table_entry(18);
    mem.0[18][0] = table_entry(19);
    mm.pin(mem, B, B_L4, Level::L4).unwrap();
}

fn full_audit(mm: &Mm, mem: &Mem, gt: &GrantTables) {
    let holds: Vec<Mfn> = gt.holds().collect();
    let foreign: Vec<_> = gt.entries().collect();
    crate::mm::audit::audit_full(mm, mem, &holds, &foreign).unwrap();
    gt.audit(mm).unwrap();
}

/// Grants A's frame 3 to B, maps it and installs the entry at VA.
fn mapped(
    mm: &mut Mm,
    mem: &mut Mem,
    gt: &mut GrantTables,
    writable: bool,
) -> (GrantRef, MapHandle) {
    let r = gt.grant_access(mm, A, B, 3, !writable).unwrap();
    let h = gt.map(mm, B, A, r, writable).unwrap();
    let (l1, i) = mm.map_foreign(mem, B, B_L4, VA, 3, writable).unwrap();
    assert_eq!((l1, i), (B_L1, 5));
    gt.set_entry(B, h, l1, i).unwrap();
    (r, h)
}

#[test]
fn an_installed_entry_is_accounted_and_audited() {
    let (mut mm, mut mem, mut gt) = machine();
    b_tree(&mut mm, &mut mem);
    let (r, h) = mapped(&mut mm, &mut mem, &mut gt, true);
    let f = mm.frame(3).unwrap();
    assert_eq!(
        (f.frame_type(), f.type_count(), f.total_count(), f.held()),
        (FrameType::Writable, 1, 1, 1)
    );
    full_audit(&mm, &mem, &gt);
    // Without the grant's record the same entry is an error.
    let holds: Vec<Mfn> = gt.holds().collect();
    assert!(audit_holds(&mm, &mem, &holds).is_err());
    // The entry is taken; the grantee cannot copy it elsewhere itself.
    let snap = (mm.frame(3).unwrap().view(), mem.0[B_L1 as usize]);
    assert_eq!(
        mm.map_foreign(&mut mem, B, B_L4, VA, 3, false),
        Err(MmError::EntryInUse)
    );
    let value = mem.0[B_L1 as usize][5];
    assert_eq!(
        mm.mmu_update_one(&mut mem, B, (B_L1 << 12) | (6 * 8), value),
        Err(MmError::NotOwner(3))
    );
    assert_eq!(snap, (mm.frame(3).unwrap().view(), mem.0[B_L1 as usize]));
    // Its own frames are not mapped this way.
    assert_eq!(
        mm.map_foreign(&mut mem, B, B_L4, 0x6000, 20, false),
        Err(MmError::NotOwner(20))
    );
    // Unmap: the entry goes, then the hold.
    assert_eq!(mm.unmap_foreign(&mut mem, B, B_L1, 5, 3), Ok(true));
    assert_eq!(mem.0[B_L1 as usize][5], 0);
    gt.unmap(&mut mm, B, h).unwrap();
    assert!(mm.frame(3).unwrap().idle());
    gt.revoke(A, r).unwrap();
    full_audit(&mm, &mem, &gt);
}

#[test]
fn a_read_only_grant_maps_read_only_and_a_table_never_writable() {
    let (mut mm, mut mem, mut gt) = machine();
    b_tree(&mut mm, &mut mem);
    let (_, _) = mapped(&mut mm, &mut mem, &mut gt, false);
    let f = mm.frame(3).unwrap();
    assert_eq!((f.frame_type(), f.total_count()), (FrameType::None, 1));
    assert_eq!(mem.0[B_L1 as usize][5] & crate::mm::pte::WRITABLE, 0);
    full_audit(&mm, &mem, &gt);
    // A's table frame 8 (pinned L1): no entry may map it writable.
    mm.pin(&mut mem, A, 8, Level::L1).unwrap();
    assert!(matches!(
        mm.map_foreign(&mut mem, B, B_L4, 0x7000, 8, true),
        Err(MmError::TypeConflict { mfn: 8, .. })
    ));
    full_audit(&mm, &mem, &gt);
}

#[test]
fn a_grantee_replacing_the_entry_keeps_the_accounts_exact() {
    let (mut mm, mut mem, mut gt) = machine();
    b_tree(&mut mm, &mut mem);
    let (r, h) = mapped(&mut mm, &mut mem, &mut gt, true);
    // The grantee overwrites the entry with one of its own frames.
    mm.mmu_update_one(&mut mem, B, (B_L1 << 12) | (5 * 8), (20 << 12) | 0x7)
        .unwrap();
    assert_eq!(mm.frame(3).unwrap().total_count(), 0);
    full_audit(&mm, &mem, &gt);
    // The frame is still held: it cannot change hands or become a table.
    assert_eq!(mm.assign(3, Owner::Free), Err(MmError::FrameInUse(3)));
    // Unmap leaves the grantee's own entry alone.
    assert_eq!(mm.unmap_foreign(&mut mem, B, B_L1, 5, 3), Ok(false));
    assert_eq!(mem.0[B_L1 as usize][5], (20 << 12) | 0x7);
    gt.unmap(&mut mm, B, h).unwrap();
    gt.revoke(A, r).unwrap();
    assert!(mm.frame(3).unwrap().idle());
    full_audit(&mm, &mem, &gt);
}

#[test]
fn a_dying_grantee_with_an_installed_entry_releases_everything() {
    let (mut mm, mut mem, mut gt) = machine();
    b_tree(&mut mm, &mut mem);
    let (r, _) = mapped(&mut mm, &mut mem, &mut gt, true);
    // The hypervisor's order: no new use, then the tables, then the table.
    gt.begin_destroy(B);
    assert_eq!(
        gt.grant_access(&mm, A, B, 4, false),
        Err(GrantError::UnknownDomain(B))
    );
    assert_eq!(GrantError::UnknownDomain(B).abi(), Error::NotFound);
    mm.teardown(&mut mem, B);
    full_audit(&mm, &mem, &gt);
    assert_eq!(mm.frame(3).unwrap().held(), 1);
    let t = gt.destroy(&mut mm, B);
    assert_eq!(t.unmapped, 1);
    assert!(mm.frame(3).unwrap().idle());
    gt.revoke(A, r).unwrap();
    full_audit(&mm, &mem, &gt);
}

#[test]
fn an_entry_in_a_table_no_longer_in_use_is_left_alone() {
    let (mut mm, mut mem, mut gt) = machine();
    b_tree(&mut mm, &mut mem);
    mapped(&mut mm, &mut mem, &mut gt, true);
    // The L1 is not a table any more (its L2 entry dropped): the entry
    // released its references with it, and unmap leaves the frame alone.
    mm.mmu_update_one(&mut mem, B, 18 << 12, 0).unwrap();
    assert_eq!(mm.frame(3).unwrap().total_count(), 0);
    assert_eq!(mm.unmap_foreign(&mut mem, B, B_L1, 5, 3), Ok(false));
    // Pinning it again with the foreign entry is refused (MMU-7).
    assert_eq!(
        mm.pin(&mut mem, B, B_L1, Level::L1),
        Err(MmError::NotOwner(3))
    );
    full_audit(&mm, &mem, &gt);
}

/// MEM-2e: a shared read-only page of an image. Its domains may read it as
/// a `grant_copy` source; never write it, grant it or copy into it; other
/// domains may not touch it.
#[test]
fn a_shared_image_page_is_a_copy_source_only_and_never_granted() {
    let (mut mm, mem, mut gt) = machine();
    let page: Mfn = 60;
    mm.share_image(page, 5).unwrap();
    mm.set_domain_image(A, Some(5)).unwrap();
    mm.set_domain_image(B, Some(5)).unwrap();
    let l = |mfn, offset| CopyPtr::Local { mfn, offset };
    let ok = |src, dst, len| CopyOp { src, dst, len };
    assert_eq!(
        gt.check_copy(&mm, A, &ok(l(page, 0), l(1, 0), 4096)),
        Ok(CopyPlan {
            src: (page, 0),
            dst: (1, 0),
            len: 4096
        })
    );
    assert_eq!(
        gt.check_copy(&mm, A, &ok(l(1, 0), l(page, 0), 8)),
        Err(GrantError::ReadOnly)
    );
    // C runs another image (or none): not its to read.
    assert_eq!(
        gt.check_copy(&mm, C, &ok(l(page, 0), l(40, 0), 8)),
        Err(GrantError::NotOwner(page))
    );
    let before = snapshot(&mm, &gt);
    for ro in [true, false] {
        let r = gt.grant_access(&mm, A, B, page, ro);
        refused(&mm, &gt, &before, r, GrantError::NotOwner(page));
    }
    audit(&mm, &mem, &gt);
}
