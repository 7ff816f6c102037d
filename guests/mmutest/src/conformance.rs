//! The attack suite (`role=conformance`): one line per clause,
//! `@ conformance clause=MMU-N name="..." outcome=pass|fail detail="..."`.
//!
//! Every refusal is checked for its exact error and for having changed
//! nothing (MMU-21): the entries involved (read through the SDK's read-only
//! self entry), the type, flags and counts of the frames involved
//! (`mmu_frame_info`), and afterwards the lab mapping still reads back.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_sdk::abi::args::{
    FrameInfo, FrameType, FRAME_LOADED, FRAME_PARTIAL, FRAME_PINNED, MMU_BATCH_MAX,
};
use guest_sdk::abi::layout::{GUEST_VA_TOP, SHARED_INFO_VA, WINDOW_BASE};
use guest_sdk::abi::Hypercall;
use guest_sdk::paging::{
    self, entry_mfn, entry_ptr, index, is_present, leaf_entry, pte, self_entry, table_entry, Flags,
    Level,
};
use guest_sdk::{println, raw, trap, Error, StartInfo, UpcallFrame};

use crate::lab::{self, peek, poke, upd, update1};

mod frames;
mod shared;

use harness::Outcome;

/// A clause: ID, name, test.
type Clause = (&'static str, &'static str, fn(&Lab) -> Outcome);

/// Something whose state a refusal must not change.
#[derive(Clone, Copy)]
enum W {
    /// The entry for `va` at `level` (through the self entry).
    E(u64, Level),
    /// A slot of the loaded root.
    Root(usize),
    /// A frame's type, flags and counts.
    F(u64),
}

/// A hypervisor frame (its image starts at 1 MiB).
const HV_FRAME: u64 = 0x100;
/// A frame beyond the end of physical memory.
const NO_FRAME: u64 = 1 << 27;
/// The lab: mappings the clauses play with.
const LAB: u64 = paging::MAP_BASE;
/// A free slot of the initial L3 and of the root.
const FREE_SLOT: usize = 100;

static CHECKS: AtomicU64 = AtomicU64::new(0);
static CHANGED: AtomicU64 = AtomicU64::new(0);

fn snap(ws: &[W]) -> Vec<[u64; 4]> {
    let ad = pte::ACCESSED | pte::DIRTY;
    ws.iter()
        .map(|w| match *w {
            W::E(va, l) => [
                paging::read_entry(va, l).map_or(u64::MAX, |e| e & !ad),
                0,
                0,
                0,
            ],
            W::Root(i) => [
                paging::read_root_slot(i).map_or(u64::MAX, |e| e & !ad),
                1,
                0,
                0,
            ],
            W::F(m) => match paging::frame_info(m) {
                Ok(f) => [
                    u64::from(f.page_type),
                    u64::from(f.flags),
                    f.type_count,
                    f.total_count,
                ],
                Err(e) => [u64::MAX, u64::from(e.code()), 0, 0],
            },
        })
        .collect()
}

/// Runs `op`, which must fail with `want` and change nothing in `ws`.
fn refused<T>(
    what: &str,
    want: Error,
    ws: &[W],
    op: impl FnOnce() -> Result<T, Error>,
) -> Result<(), String> {
    let before = snap(ws);
    let r = op();
    let after = snap(ws);
    CHECKS.fetch_add(1, Ordering::Relaxed);
    match r {
        Ok(_) => return Err(format!("{what}: accepted, want {}", want.name())),
        Err(e) if e != want => return Err(format!("{what}: {}, want {}", e.name(), want.name())),
        Err(_) => {}
    }
    if before != after {
        CHANGED.fetch_add(1, Ordering::Relaxed);
        let i = before
            .iter()
            .zip(&after)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "{what}: refused but watch {i} changed {:x?} -> {:x?}",
            before[i], after[i]
        ));
    }
    Ok(())
}

fn ok<T>(what: &str, r: Result<T, Error>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {}", e.name()))
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn info(mfn: u64) -> Result<(FrameType, u32, u64, u64), String> {
    let f = ok("frame_info", paging::frame_info(mfn))?;
    let t = match f.page_type {
        0 => FrameType::None,
        1 => FrameType::L1,
        2 => FrameType::L2,
        3 => FrameType::L3,
        4 => FrameType::L4,
        5 => FrameType::Writable,
        6 => FrameType::Special,
        _ => return Err(format!("frame {mfn:#x}: type {}", f.page_type)),
    };
    Ok((t, f.flags, f.type_count, f.total_count))
}

struct Tally {
    pass: u32,
    fail: u32,
}

impl Tally {
    /// Reports the clause (one `@ conformance` line, `harness::report`)
    /// and counts it.
    fn clause(&mut self, id: &str, name: &str, r: Outcome) {
        if harness::report(id, name, &r) {
            self.pass += 1;
        } else {
            self.fail += 1;
        }
    }
}

/// The lab: the guest's tables and a few frames of its own.
struct Lab {
    l4: u64,
    l3: u64,
    l2: u64,
    /// The L2 and L1 the SDK made for the lab mapping.
    lab_l2: u64,
    lab_l1: u64,
    /// Mapped writable at `LAB`.
    d: u64,
    /// Plain frames, not mapped.
    d2: u64,
    d3: u64,
    /// The window's frames (for the neighbour probe).
    window: (u64, u64),
}

impl Lab {
    fn slot_va(&self, i: usize) -> u64 {
        LAB + i as u64 * 4096
    }
    fn slot_ptr(&self, i: usize) -> u64 {
        entry_ptr(self.lab_l1, i)
    }
    fn slot(&self, i: usize) -> W {
        W::E(self.slot_va(i), Level::L1)
    }
    /// The lab mapping still reads what was written there.
    fn still_works(&self) -> Result<(), String> {
        check(peek(LAB) == 0x1ab_1ab, || {
            format!("lab page reads {:#x}", peek(LAB))
        })
    }
}

fn setup() -> Result<Lab, String> {
    let l4 = paging::root_mfn().ok_or("no self entry: paging not ready")?;
    let l3 = paging::table_mfn(0, Level::L3).ok_or("no L3")?;
    let l2 = paging::table_mfn(WINDOW_BASE, Level::L2).ok_or("no L2")?;
    let mut f = [0u64; 3];
    ok("populate", paging::populate(&mut f))?;
    let [d, d2, d3] = f;
    ok("map lab", paging::map(LAB, d, Flags::WRITABLE))?;
    poke(LAB, 0x1ab_1ab);
    let lab_l1 = paging::table_mfn(LAB, Level::L1).ok_or("no lab L1")?;
    let lab_l2 = paging::table_mfn(LAB, Level::L2).ok_or("no lab L2")?;
    let list = paging::frame_list();
    let window = (
        list.iter().copied().min().unwrap_or(0),
        list.iter().copied().max().unwrap_or(0),
    );
    for (va, l, what) in [(FREE_SLOT as u64) << 30]
        .iter()
        .map(|&v| (v, Level::L3, "L3 slot"))
        .chain([((FREE_SLOT as u64) << 39, Level::L4, "L4 slot")])
    {
        if paging::read_entry(va, l).is_some_and(is_present) {
            return Err(format!("{what} {FREE_SLOT} is in use"));
        }
    }
    Ok(Lab {
        l4,
        l3,
        l2,
        lab_l2,
        lab_l1,
        d,
        d2,
        d3,
        window,
    })
}

pub fn run(si: &StartInfo) -> i32 {
    let mut t = Tally { pass: 0, fail: 0 };
    let lab = match setup() {
        Ok(l) => l,
        Err(e) => {
            t.clause("MMU-22", "lab setup: map a page through mmu_update", Err(e));
            return 1;
        }
    };
    println!(
        "mmutest: l4={:#x} l3={:#x} l2={:#x} lab_l2={:#x} lab_l1={:#x} window mfns {:#x}..={:#x}",
        lab.l4, lab.l3, lab.l2, lab.lab_l2, lab.lab_l1, lab.window.0, lab.window.1
    );
    let clauses: &[Clause] = &[
        ("MMU-1", "type confusion between levels", mmu_1),
        ("MMU-2", "writable mapping of an own page table", mmu_2),
        ("MMU-3", "hypervisor slots of the root", mmu_3),
        ("MMU-4", "not-present entries hold anything", mmu_4),
        ("MMU-5", "reserved, cache and global bits", mmu_5),
        ("MMU-6", "present entries must be user", mmu_6),
        (
            "MMU-7",
            "another guest's and the hypervisor's frames",
            mmu_7,
        ),
        ("MMU-8", "frames past the end of memory", mmu_8),
        ("MMU-9", "large pages", mmu_9),
        (
            "MMU-10",
            "linear entries: only a read-only self entry",
            mmu_10,
        ),
        (
            "MMU-11",
            "pin: states, levels, writable frames, rollback",
            mmu_11,
        ),
        (
            "MMU-12",
            "unpin: the active root, no pin, not owned",
            mmu_12,
        ),
        ("MMU-13", "update pointer rules and reference moves", mmu_13),
        ("MMU-14", "switch_root needs a pinned L4 of ours", mmu_14),
        ("MMU-15", "batches apply in order", mmu_15),
        ("MMU-17", "update_va_mapping refusals", mmu_17),
        ("MMU-18", "special frames never become tables", mmu_18),
        ("MMU-19", "frames in use cannot change hands", mmu_19),
        ("MMU-20", "stale TLB after retyping a frame", mmu_20),
        ("MMU-22", "mmu_update applies a batch in one call", mmu_22),
        ("MMU-22a", "mmu_update count and pointers", mmu_22a),
        ("MMU-22b", "a batch failing midway", mmu_22b),
        ("MMU-23", "mmu_pin of a fresh frame", mmu_23),
        ("MMU-24", "mmu_unpin releases the tree", mmu_24),
        ("MMU-25", "a fresh address space, bottom-up", mmu_25),
        ("MMU-26", "mmu_invlpg", mmu_26),
        ("MMU-27", "mmu_flush_tlb", mmu_27),
        ("MMU-28", "update_va_mapping sets the leaf", mmu_28),
        ("MMU-29", "mmu_frame_info of our frames", mmu_29),
        ("MMU-29a", "mmu_frame_info refusals", mmu_29a),
        (
            "MMU-35",
            "a pin of 32,768 entries is restarted to its end",
            mmu_35,
        ),
        (
            "MMU-36",
            "a half-pinned tree seen from an upcall: refusals",
            mmu_36,
        ),
        (
            "MMU-37",
            "linking a fresh 32,768-entry subtree: no_resources, pin first",
            mmu_37,
        ),
        (
            "MMU-38",
            "unlinking the last reference to it: no_resources, pin first",
            mmu_38,
        ),
        ("MMU-39", "one budget per mmu_update call", mmu_39),
        ("MEM-5", "memory_populate and heap growth", mem_5),
        ("MEM-5a", "memory_populate count and pointer", mem_5a),
        ("MEM-5b", "memory_populate beyond max_pages", mem_5b),
        ("MEM-6", "memory_release gives frames back", mem_6),
        ("MEM-6a", "memory_release count and pointer", mem_6a),
        ("MEM-6b", "memory_release: not owned, in use, twice", mem_6b),
        ("MEM-7", "memory_info", mem_7),
        (
            "MEM-8",
            "shared info unmapped: release and retype refused",
            frames::mem_8,
        ),
        ("MEM-9", "released frames are scrubbed", frames::mem_9),
        (
            "MEM-2e",
            "shared read-only image pages: read-only, not ours",
            shared::mem_2e,
        ),
        (
            "MMU-30",
            "a batch that makes *done read-only",
            frames::mmu_30,
        ),
        ("MMU-31", "stale TLB after memory_release", frames::mmu_31),
        (
            "MMU-32",
            "more than 32 entries, tail unmapped",
            frames::mmu_32,
        ),
    ];
    for &(id, name, f) in clauses {
        let r = f(&lab).and_then(|d| lab.still_works().map(|()| d));
        t.clause(id, name, r);
    }
    let (checks, changed) = (
        CHECKS.load(Ordering::Relaxed),
        CHANGED.load(Ordering::Relaxed),
    );
    t.clause(
        "MMU-21",
        "refusals change nothing",
        if changed == 0 && checks > 0 {
            Ok(format!(
                "{checks} refusals, entries, types and counts unchanged"
            ))
        } else {
            Err(format!("{changed} of {checks} refusals changed state"))
        },
    );
    let _ = si;
    println!(
        "@ mmutest role=conformance canary={}",
        frames::poke_victim()
    );
    println!(
        "@ mmutest role=conformance passed={} failed={}",
        t.pass, t.fail
    );
    i32::from(t.fail != 0)
}

// ---------------------------------------------------------------------------

fn mmu_1(l: &Lab) -> Outcome {
    let free_l2 = index(LAB, Level::L2) + 1;
    let l2va = LAB + (1 << 21);
    let ws = [
        W::E(l2va, Level::L2),
        W::F(l.l4),
        W::F(l.lab_l1),
        W::F(l.d),
        W::F(l.lab_l2),
    ];
    let p = entry_ptr(l.lab_l2, free_l2);
    refused("L4 as L1", Error::TypeConflict, &ws, || {
        update1(p, table_entry(l.l4))
    })?;
    refused("data as L1", Error::TypeConflict, &ws, || {
        update1(p, table_entry(l.d))
    })?;
    let l3va = (FREE_SLOT as u64) << 30;
    let ws3 = [
        W::E(l3va, Level::L3),
        W::F(l.lab_l1),
        W::F(l.l2),
        W::F(l.l3),
    ];
    let p3 = entry_ptr(l.l3, FREE_SLOT);
    refused("L1 as L2", Error::TypeConflict, &ws3, || {
        update1(p3, table_entry(l.lab_l1))
    })?;
    let l4va = (FREE_SLOT as u64) << 39;
    let ws4 = [W::E(l4va, Level::L4), W::F(l.l2), W::F(l.l4)];
    let p4 = entry_ptr(l.l4, FREE_SLOT);
    refused("L2 as L3", Error::TypeConflict, &ws4, || {
        update1(p4, table_entry(l.l2))
    })?;
    refused("L1 as L3", Error::TypeConflict, &ws4, || {
        update1(p4, table_entry(l.lab_l1))
    })?;
    let ws5 = [W::F(l.lab_l2), W::F(l.l3)];
    refused("pin L2 as L1", Error::TypeConflict, &ws5, || {
        paging::pin(l.lab_l2, Level::L1)
    })?;
    refused("pin L3 as L2", Error::TypeConflict, &ws5, || {
        paging::pin(l.l3, Level::L2)
    })?;
    Ok("L4/data as L1, L1 as L2, L2/L1 as L3, pins across levels: type_conflict".into())
}

fn mmu_2(l: &Lab) -> Outcome {
    let s = 1;
    let ws = [l.slot(s), W::F(l.l4), W::F(l.lab_l1), W::F(l.l2)];
    for (what, t) in [("L4", l.l4), ("own L1", l.lab_l1), ("L2", l.l2)] {
        refused(what, Error::TypeConflict, &ws, || {
            update1(l.slot_ptr(s), leaf_entry(t, Flags::WRITABLE))
        })?;
    }
    // A read-only mapping is allowed and takes only a total reference.
    let (_, _, tc0, tot0) = info(l.lab_l1)?;
    ok(
        "ro map own L1",
        update1(l.slot_ptr(s), leaf_entry(l.lab_l1, Flags::READ_ONLY)),
    )?;
    let (ty, _, tc1, tot1) = info(l.lab_l1)?;
    check(
        ty == FrameType::L1 && tc1 == tc0 && tot1 == tot0 + 1,
        || format!("ro map: type {ty:?} tc {tc0}->{tc1} total {tot0}->{tot1}"),
    )?;
    let seen = peek(l.slot_va(s));
    let real = paging::read_entry(LAB, Level::L1).unwrap_or(0);
    check(seen == real, || {
        format!("L1 via ro map {seen:#x}, via self entry {real:#x}")
    })?;
    // Flipping it writable (XSA-182) is refused.
    let ws2 = [l.slot(s), W::F(l.lab_l1)];
    refused("flip ro->rw", Error::TypeConflict, &ws2, || {
        update1(l.slot_ptr(s), leaf_entry(l.lab_l1, Flags::WRITABLE))
    })?;
    ok("unmap", update1(l.slot_ptr(s), 0))?;
    ok("invlpg", paging::invlpg(l.slot_va(s)))?;
    let (_, _, _, tot2) = info(l.lab_l1)?;
    check(tot2 == tot0, || {
        format!("total {tot0} -> {tot2} after unmap")
    })?;
    Ok("rw maps of L4/L1/L2 and ro->rw flip: type_conflict; ro map reads the L1".into())
}

fn mmu_3(l: &Lab) -> Outcome {
    let ws = [
        W::Root(256),
        W::Root(300),
        W::Root(511),
        W::F(l.l4),
        W::F(l.d2),
    ];
    for slot in [256usize, 300, 511] {
        let before = paging::read_root_slot(slot).unwrap_or(0);
        for (what, v) in [
            ("zero", 0),
            ("copy", before),
            ("table", table_entry(l.d2)),
            ("leaf", leaf_entry(l.d2, Flags::WRITABLE)),
        ] {
            refused(
                &format!("slot {slot} {what}"),
                Error::PermissionDenied,
                &ws,
                || update1(entry_ptr(l.l4, slot), v),
            )?;
        }
    }
    let tmpl = paging::read_root_slot(256).unwrap_or(0);
    check(tmpl & pte::USER == 0, || {
        format!("slot 256 {tmpl:#x} is user")
    })?;
    Ok("slots 256, 300, 511: permission_denied; template not user".into())
}

fn mmu_4(l: &Lab) -> Outcome {
    let s = 3;
    let junk = 0x7FF0_0000_DEAD_B000 | 0xFFE; // every bit but P
    let before = info(l.lab_l1)?;
    ok("not-present junk", update1(l.slot_ptr(s), junk))?;
    let e = paging::read_entry(l.slot_va(s), Level::L1).unwrap_or(0);
    check(e == junk, || format!("entry {e:#x}, wrote {junk:#x}"))?;
    check(info(l.lab_l1)? == before, || "counts changed".into())?;
    ok("clear", update1(l.slot_ptr(s), 0))?;
    Ok("P clear with junk bits accepted, stored as written, no reference".into())
}

fn mmu_5(l: &Lab) -> Outcome {
    let s = 4;
    let ws = [l.slot(s), W::F(l.d2), W::F(l.lab_l1)];
    let base = leaf_entry(l.d2, Flags::READ_ONLY);
    let cases: [(&str, u64); 9] = [
        ("bit 52", base | 1 << 52),
        ("bit 58", base | 1 << 58),
        ("pkey bit 59", base | 1 << 59),
        ("bit 62", base | 1 << 62),
        ("addr bit 51", base | 1 << 51),
        ("PWT", base | pte::PWT),
        ("PCD", base | pte::PCD),
        ("PAT", base | pte::PAT),
        ("G", base | pte::GLOBAL),
    ];
    for (what, v) in cases {
        refused(what, Error::InvalidArgument, &ws, || {
            update1(l.slot_ptr(s), v)
        })?;
    }
    // D in an L2 entry; PCD on a table entry.
    let f = ok("populate", paging::populate_one())?;
    let p = entry_ptr(l.lab_l2, index(LAB, Level::L2) + 2);
    let ws2 = [W::E(LAB + (2 << 21), Level::L2), W::F(f), W::F(l.lab_l2)];
    refused("D in L2", Error::InvalidArgument, &ws2, || {
        update1(p, table_entry(f) | pte::DIRTY)
    })?;
    refused("PCD in L2", Error::InvalidArgument, &ws2, || {
        update1(p, table_entry(f) | pte::PCD)
    })?;
    refused(
        "PWT in L3",
        Error::InvalidArgument,
        &[W::E((FREE_SLOT as u64) << 30, Level::L3), W::F(f)],
        || update1(entry_ptr(l.l3, FREE_SLOT), table_entry(f) | pte::PWT),
    )?;
    ok("release", paging::release(&[f]))?;
    // The plain entry is fine.
    ok("plain", update1(l.slot_ptr(s), base))?;
    ok("clear", update1(l.slot_ptr(s), 0))?;
    Ok(
        "bits 52/58/59/62, addr bit 51, PWT, PCD, PAT, G; D/PCD/PWT on tables: invalid_argument"
            .into(),
    )
}

fn mmu_6(l: &Lab) -> Outcome {
    let s = 5;
    let ws = [l.slot(s), W::F(l.d2), W::F(l.lab_l1)];
    refused("leaf without U", Error::InvalidArgument, &ws, || {
        update1(
            l.slot_ptr(s),
            leaf_entry(l.d2, Flags::WRITABLE) & !pte::USER,
        )
    })?;
    let f = ok("populate", paging::populate_one())?;
    let p = entry_ptr(l.lab_l2, index(LAB, Level::L2) + 2);
    refused(
        "table without U",
        Error::InvalidArgument,
        &[W::E(LAB + (2 << 21), Level::L2), W::F(f)],
        || update1(p, table_entry(f) & !pte::USER),
    )?;
    ok("release", paging::release(&[f]))?;
    Ok("supervisor leaf and table entries: invalid_argument".into())
}

/// Frames next to ours that are not ours (the victim's are allocated next).
fn neighbours(l: &Lab) -> Vec<u64> {
    let (lo, hi) = l.window;
    let mut v = Vec::new();
    let mut m = hi + 1;
    while v.len() < 48 && m < hi + 4096 {
        if paging::frame_info(m).is_err() {
            v.push(m);
        }
        m += 1;
    }
    let mut m = lo.saturating_sub(1);
    while v.len() < 64 && m > 0 && m + 4096 > lo {
        if paging::frame_info(m).is_err() {
            v.push(m);
        }
        m -= 1;
    }
    v
}

fn mmu_7(l: &Lab) -> Outcome {
    let s = 6;
    let ws = [l.slot(s), W::F(l.lab_l1)];
    for (what, m) in [("hv frame ro", HV_FRAME), ("hv frame 0", 0)] {
        refused(what, Error::PermissionDenied, &ws, || {
            update1(l.slot_ptr(s), leaf_entry(m, Flags::READ_ONLY))
        })?;
    }
    refused("hv frame rw", Error::PermissionDenied, &ws, || {
        update1(l.slot_ptr(s), leaf_entry(HV_FRAME, Flags::WRITABLE))
    })?;
    let n = neighbours(l);
    for &m in &n {
        for f in [Flags::READ_ONLY, Flags::WRITABLE] {
            refused(&format!("mfn {m:#x}"), Error::PermissionDenied, &ws, || {
                update1(l.slot_ptr(s), leaf_entry(m, f))
            })?;
        }
        refused(
            &format!("table mfn {m:#x}"),
            Error::PermissionDenied,
            &[W::E(LAB + (2 << 21), Level::L2)],
            || {
                update1(
                    entry_ptr(l.lab_l2, index(LAB, Level::L2) + 2),
                    table_entry(m),
                )
            },
        )?;
        refused(&format!("pin {m:#x}"), Error::PermissionDenied, &[], || {
            paging::pin(m, Level::L1)
        })?;
        refused(
            &format!("unpin {m:#x}"),
            Error::PermissionDenied,
            &[],
            || paging::unpin(m),
        )?;
        refused(
            &format!("switch {m:#x}"),
            Error::PermissionDenied,
            &[W::F(l.l4)],
            || paging::switch_root(m),
        )?;
        refused(
            &format!("update in {m:#x}"),
            Error::PermissionDenied,
            &[],
            || update1(entry_ptr(m, 0), 0),
        )?;
    }
    check(n.len() >= 32, || {
        format!("only {} neighbour frames found", n.len())
    })?;
    Ok(format!(
        "hv frames 0, 0x100 and {} foreign mfns near ours (map ro/rw, table, pin, unpin, switch, update): permission_denied",
        n.len()
    ))
}

fn mmu_8(l: &Lab) -> Outcome {
    let s = 7;
    let ws = [l.slot(s), W::F(l.lab_l1)];
    refused("leaf", Error::NotFound, &ws, || {
        update1(l.slot_ptr(s), leaf_entry(NO_FRAME, Flags::READ_ONLY))
    })?;
    refused(
        "table",
        Error::NotFound,
        &[W::E(LAB + (2 << 21), Level::L2)],
        || {
            update1(
                entry_ptr(l.lab_l2, index(LAB, Level::L2) + 2),
                table_entry(NO_FRAME),
            )
        },
    )?;
    refused("pin", Error::NotFound, &[], || {
        paging::pin(NO_FRAME, Level::L1)
    })?;
    refused("update ptr", Error::NotFound, &[], || {
        update1(entry_ptr(NO_FRAME, 0), 0)
    })?;
    refused("switch", Error::NotFound, &[W::F(l.l4)], || {
        paging::switch_root(NO_FRAME)
    })?;
    Ok("mfn 1<<27 as leaf, table, pin, update pointer, root: not_found".into())
}

fn mmu_9(l: &Lab) -> Outcome {
    let f = ok("populate", paging::populate_one())?;
    let p2 = entry_ptr(l.lab_l2, index(LAB, Level::L2) + 2);
    let ws2 = [W::E(LAB + (2 << 21), Level::L2), W::F(f), W::F(l.lab_l2)];
    refused("2M page", Error::InvalidArgument, &ws2, || {
        update1(p2, table_entry(f) | pte::PS)
    })?;
    let ws3 = [
        W::E((FREE_SLOT as u64) << 30, Level::L3),
        W::F(f),
        W::F(l.l3),
    ];
    refused("1G page", Error::InvalidArgument, &ws3, || {
        update1(entry_ptr(l.l3, FREE_SLOT), table_entry(f) | pte::PS)
    })?;
    let ws4 = [
        W::E((FREE_SLOT as u64) << 39, Level::L4),
        W::F(f),
        W::F(l.l4),
    ];
    refused("PS in L4", Error::InvalidArgument, &ws4, || {
        update1(entry_ptr(l.l4, FREE_SLOT), table_entry(f) | pte::PS)
    })?;
    // PS flip of the existing entry that holds the lab's L1.
    let cur = paging::read_entry(LAB, Level::L2).unwrap_or(0);
    let wsx = [
        W::E(LAB, Level::L2),
        W::F(l.lab_l1),
        W::F(l.lab_l2),
        W::F(l.d),
    ];
    refused("PS flip", Error::InvalidArgument, &wsx, || {
        update1(entry_ptr(l.lab_l2, index(LAB, Level::L2)), cur | pte::PS)
    })?;
    ok("release", paging::release(&[f]))?;
    Ok("PS in L2, L3, L4 and a PS flip of a live L2 entry: invalid_argument".into())
}

fn mmu_10(l: &Lab) -> Outcome {
    let ws = [W::Root(254), W::Root(255), W::F(l.l4)];
    refused("rw self entry", Error::TypeConflict, &ws, || {
        update1(entry_ptr(l.l4, 254), self_entry(l.l4) | pte::WRITABLE)
    })?;
    refused("self entry flip rw", Error::TypeConflict, &ws, || {
        update1(entry_ptr(l.l4, 255), self_entry(l.l4) | pte::WRITABLE)
    })?;
    // A second read-only self entry takes no reference.
    let before = info(l.l4)?;
    ok(
        "ro self entry",
        update1(entry_ptr(l.l4, 254), self_entry(l.l4)),
    )?;
    check(info(l.l4)? == before, || {
        "ro self entry took a reference".into()
    })?;
    ok("clear", update1(entry_ptr(l.l4, 254), 0))?;
    // An L4 naming another L4 (pinned, so it has the type).
    let other = ok("populate", paging::populate_one())?;
    ok("pin other L4", paging::pin(other, Level::L4))?;
    let ws2 = [W::Root(FREE_SLOT), W::F(other), W::F(l.l4)];
    let r = refused("L4 -> other L4", Error::TypeConflict, &ws2, || {
        update1(entry_ptr(l.l4, FREE_SLOT), table_entry(other))
    })
    .and_then(|()| {
        refused("L4 -> other L4 ro", Error::TypeConflict, &ws2, || {
            update1(entry_ptr(l.l4, FREE_SLOT), self_entry(other))
        })
    });
    ok("unpin other", paging::unpin(other))?;
    ok("release other", paging::release(&[other]))?;
    r?;
    // Same-level entries below the root.
    let ws3 = [W::E((FREE_SLOT as u64) << 30, Level::L3), W::F(l.l3)];
    refused("L3 -> itself", Error::TypeConflict, &ws3, || {
        update1(entry_ptr(l.l3, FREE_SLOT), table_entry(l.l3))
    })?;
    refused("L3 -> L4", Error::TypeConflict, &ws3, || {
        update1(entry_ptr(l.l3, FREE_SLOT), table_entry(l.l4))
    })?;
    let ws4 = [W::E(LAB + (2 << 21), Level::L2), W::F(l.lab_l2)];
    refused("L2 -> itself", Error::TypeConflict, &ws4, || {
        update1(
            entry_ptr(l.lab_l2, index(LAB, Level::L2) + 2),
            table_entry(l.lab_l2),
        )
    })?;
    Ok("rw self entry (new and flip), L4->L4, L3->L3/L4, L2->L2: type_conflict; ro self entry takes no ref".into())
}

/// Builds L4 -> L3 -> L2 -> L1 in fresh frames with `leaf` in L1 slot 0;
/// returns [L4, L3, L2, L1].
fn build_tree(leaf: u64) -> Result<[u64; 4], String> {
    let mut t = [0u64; 4];
    ok("populate", paging::populate(&mut t))?;
    let [t4, t3, t2, t1] = t;
    ok("write L1", lab::write_frame(t1, &[(0, leaf)]))?;
    ok("write L2", lab::write_frame(t2, &[(0, table_entry(t1))]))?;
    ok("write L3", lab::write_frame(t3, &[(0, table_entry(t2))]))?;
    ok(
        "write L4",
        lab::write_frame(t4, &[(0, table_entry(t3)), (255, self_entry(t4))]),
    )?;
    Ok(t)
}

fn mmu_11(l: &Lab) -> Outcome {
    let ws = [W::F(l.d), W::E(LAB, Level::L1)];
    refused("pin writable-mapped", Error::TypeConflict, &ws, || {
        paging::pin(l.d, Level::L1)
    })?;
    for lv in [0u64, 5, 0x100] {
        refused(
            &format!("level {lv}"),
            Error::InvalidArgument,
            &[W::F(l.d2)],
            || raw::call2(Hypercall::MmuPin, l.d2, lv),
        )?;
    }
    refused("already pinned", Error::WrongState, &[W::F(l.l4)], || {
        paging::pin(l.l4, Level::L4)
    })?;
    refused("L1 as L2", Error::TypeConflict, &[W::F(l.lab_l1)], || {
        paging::pin(l.lab_l1, Level::L2)
    })?;
    // A bad leaf deep in a tree: the pin is undone entirely.
    let tree = build_tree(leaf_entry(HV_FRAME, Flags::READ_ONLY))?;
    let ws2: Vec<W> = tree.iter().map(|&m| W::F(m)).collect();
    let r = refused("tree with hv leaf", Error::PermissionDenied, &ws2, || {
        paging::pin(tree[0], Level::L4)
    });
    for &m in &tree {
        let (ty, fl, tc, tot) = info(m)?;
        check(
            ty == FrameType::None && fl == 0 && tc == 0 && tot == 0,
            || format!("after failed pin {m:#x}: {ty:?} {fl} {tc} {tot}"),
        )?;
    }
    ok("release tree", paging::release(&tree))?;
    r?;
    Ok("writable-mapped: type_conflict; level 0/5: invalid_argument; twice: wrong_state; failed tree pin rolled back".into())
}

fn mmu_12(l: &Lab) -> Outcome {
    let ws = [W::F(l.l4), W::F(l.l3), W::F(l.l2), W::Root(0)];
    refused("unpin active root", Error::WrongState, &ws, || {
        paging::unpin(l.l4)
    })?;
    let (_, fl, _, _) = info(l.l4)?;
    check(
        fl & (FRAME_PINNED | FRAME_LOADED) == FRAME_PINNED | FRAME_LOADED,
        || format!("root flags {fl}"),
    )?;
    refused("unpin not pinned", Error::WrongState, &[W::F(l.d)], || {
        paging::unpin(l.d)
    })?;
    refused(
        "unpin L1 in use, not pinned",
        Error::WrongState,
        &[W::F(l.lab_l1)],
        || paging::unpin(l.lab_l1),
    )?;
    refused("unpin hv", Error::PermissionDenied, &[], || {
        paging::unpin(HV_FRAME)
    })?;
    // Pin and unpin a table in use: it stays in use.
    let before = info(l.lab_l1)?;
    ok("pin lab L1", paging::pin(l.lab_l1, Level::L1))?;
    ok("unpin lab L1", paging::unpin(l.lab_l1))?;
    check(info(l.lab_l1)? == before, || {
        "lab L1 changed by pin+unpin".into()
    })?;
    Ok("active root, no pin: wrong_state; hv frame: permission_denied; a table in use survives its unpin".into())
}

fn mmu_13(l: &Lab) -> Outcome {
    let s = 8;
    let ws = [l.slot(s), W::F(l.lab_l1), W::F(l.d2)];
    let v = leaf_entry(l.d2, Flags::READ_ONLY);
    for low in [1u64, 4, 7] {
        refused(
            &format!("ptr low bits {low}"),
            Error::InvalidArgument,
            &ws,
            || update1(l.slot_ptr(s) | low, v),
        )?;
    }
    refused(
        "ptr in data frame",
        Error::TypeConflict,
        &[W::F(l.d), W::F(l.d2)],
        || update1(entry_ptr(l.d, 0), v),
    )?;
    refused(
        "ptr in unused frame",
        Error::TypeConflict,
        &[W::F(l.d3), W::F(l.d2)],
        || update1(entry_ptr(l.d3, 0), v),
    )?;
    refused("ptr in hv frame", Error::PermissionDenied, &[], || {
        update1(entry_ptr(HV_FRAME, 0), v)
    })?;
    // Moving an entry between frames moves the reference.
    let d2a = info(l.d2)?.3;
    let d3a = info(l.d3)?.3;
    ok("map d2", update1(l.slot_ptr(s), v))?;
    check(info(l.d2)?.3 == d2a + 1, || "d2 gained no reference".into())?;
    ok(
        "remap d3",
        update1(l.slot_ptr(s), leaf_entry(l.d3, Flags::WRITABLE)),
    )?;
    let (t3, _, tc3, tot3) = info(l.d3)?;
    check(
        info(l.d2)?.3 == d2a && tot3 == d3a + 1 && t3 == FrameType::Writable && tc3 == 1,
        || format!("after remap d3: {t3:?} tc {tc3} total {tot3}"),
    )?;
    ok("clear", update1(l.slot_ptr(s), 0))?;
    ok("invlpg", paging::invlpg(l.slot_va(s)))?;
    let (t3, _, tc3, tot3) = info(l.d3)?;
    check(t3 == FrameType::None && tc3 == 0 && tot3 == d3a, || {
        format!("after clear d3: {t3:?} tc {tc3} total {tot3}")
    })?;
    Ok("ptr low bits: invalid_argument; not a table: type_conflict; hv: permission_denied; refs move".into())
}

fn mmu_14(l: &Lab) -> Outcome {
    let f = ok("populate", paging::populate_one())?;
    let ws = [W::F(f), W::F(l.l4), W::Root(0)];
    let r = refused("unpinned", Error::WrongState, &ws, || {
        paging::switch_root(f)
    })
    .and_then(|()| ok("pin L1", paging::pin(f, Level::L1)))
    .and_then(|()| {
        refused("pinned L1", Error::TypeConflict, &ws, || {
            paging::switch_root(f)
        })
    });
    let _ = paging::unpin(f);
    ok("release", paging::release(&[f]))?;
    r?;
    refused(
        "in-use L3, unpinned",
        Error::WrongState,
        &[W::F(l.l3), W::F(l.l4)],
        || paging::switch_root(l.l3),
    )?;
    refused("hv frame", Error::PermissionDenied, &[W::F(l.l4)], || {
        paging::switch_root(HV_FRAME)
    })?;
    // Switching to the loaded root is fine.
    ok("switch to self", paging::switch_root(l.l4))?;
    Ok("unpinned: wrong_state; pinned L1: type_conflict; hv: permission_denied".into())
}

fn mmu_15(l: &Lab) -> Outcome {
    let s = 10;
    let d2a = info(l.d2)?.3;
    let batch = [
        upd(l.slot_ptr(s), leaf_entry(l.d2, Flags::READ_ONLY)),
        upd(l.slot_ptr(s), leaf_entry(l.d3, Flags::READ_ONLY)),
    ];
    ok("batch", paging::mmu_update(&batch).map_err(|b| b.error))?;
    let e = paging::read_entry(l.slot_va(s), Level::L1).unwrap_or(0);
    check(entry_mfn(e) == l.d3, || {
        format!("slot names {:#x}, want d3", entry_mfn(e))
    })?;
    check(info(l.d2)?.3 == d2a, || "d2 kept a reference".into())?;
    ok("clear", update1(l.slot_ptr(s), 0))?;
    Ok("two updates of one entry: the last wins, the first's reference dropped".into())
}

fn mmu_17(l: &Lab) -> Outcome {
    let v = leaf_entry(l.d2, Flags::READ_ONLY);
    let ws = [W::F(l.d2), W::F(l.l4)];
    refused("hv half", Error::BadAddress, &ws, || {
        paging::update_va_mapping(GUEST_VA_TOP, v, false)
    })?;
    refused("top", Error::BadAddress, &ws, || {
        paging::update_va_mapping(0xffff_8000_0010_0000, v, false)
    })?;
    refused("unaligned", Error::InvalidArgument, &ws, || {
        paging::update_va_mapping(LAB + 0x3008, v, false)
    })?;
    refused("no L2", Error::BadAddress, &ws, || {
        paging::update_va_mapping(0x7000_0000_0000, v, false)
    })?;
    refused("no L1", Error::BadAddress, &ws, || {
        paging::update_va_mapping(LAB + (3 << 21), v, false)
    })?;
    refused("through self entry", Error::TypeConflict, &ws, || {
        paging::update_va_mapping(paging::RECURSIVE_BASE, v, false)
    })?;
    let s = 11;
    let ws2 = [l.slot(s), W::F(l.lab_l1), W::F(l.d2)];
    refused("flags 2", Error::InvalidArgument, &ws2, || {
        raw::call(Hypercall::UpdateVaMapping, [l.slot_va(s), v, 2, 0, 0, 0])
    })?;
    refused("hv leaf", Error::PermissionDenied, &ws2, || {
        paging::update_va_mapping(l.slot_va(s), leaf_entry(HV_FRAME, Flags::READ_ONLY), true)
    })?;
    refused("own L1 rw", Error::TypeConflict, &ws2, || {
        paging::update_va_mapping(l.slot_va(s), leaf_entry(l.lab_l1, Flags::WRITABLE), true)
    })?;
    Ok("hv half/non-canonical/no table: bad_address; unaligned/flags: invalid_argument; self slot: type_conflict".into())
}

fn mmu_18(l: &Lab) -> Outcome {
    let (sh, fl) = paging::translate(SHARED_INFO_VA).ok_or("shared info not mapped")?;
    let (ty, ..) = info(sh)?;
    check(ty == FrameType::Special, || {
        format!("shared info is {ty:?}")
    })?;
    check(fl.contains(Flags::WRITABLE), || {
        "shared info not writable".into()
    })?;
    let ws = [W::F(sh), W::E(LAB + (2 << 21), Level::L2)];
    for lv in [Level::L1, Level::L2, Level::L4] {
        refused(&format!("pin {lv:?}"), Error::TypeConflict, &ws, || {
            paging::pin(sh, lv)
        })?;
    }
    refused("as L1", Error::TypeConflict, &ws, || {
        update1(
            entry_ptr(l.lab_l2, index(LAB, Level::L2) + 2),
            table_entry(sh),
        )
    })?;
    refused("as root", Error::WrongState, &ws, || {
        paging::switch_root(sh)
    })?;
    // A second read-only mapping is fine and takes a total reference only.
    let s = 12;
    let before = info(sh)?;
    ok(
        "map ro",
        update1(l.slot_ptr(s), leaf_entry(sh, Flags::READ_ONLY)),
    )?;
    let mid = info(sh)?;
    ok("unmap", update1(l.slot_ptr(s), 0))?;
    check(
        mid.3 == before.3 + 1 && mid.2 == before.2 && mid.0 == FrameType::Special,
        || format!("second mapping: {before:?} -> {mid:?}"),
    )?;
    Ok("shared info is Special; pin and table entry: type_conflict; ro mapping ok".into())
}

fn mmu_19(l: &Lab) -> Outcome {
    let ws = [W::F(l.d), W::F(l.lab_l1), W::F(l.l4)];
    for (what, m) in [("mapped", l.d), ("table", l.lab_l1), ("loaded root", l.l4)] {
        refused(what, Error::WrongState, &ws, || paging::release(&[m]))?;
    }
    let (sh, _) = paging::translate(SHARED_INFO_VA).ok_or("shared info not mapped")?;
    refused("shared info", Error::WrongState, &[W::F(sh)], || {
        paging::release(&[sh])
    })?;
    let f = ok("populate", paging::populate_one())?;
    ok("pin", paging::pin(f, Level::L1))?;
    let r = refused("pinned", Error::WrongState, &[W::F(f)], || {
        paging::release(&[f])
    });
    ok("unpin", paging::unpin(f))?;
    ok("release", paging::release(&[f]))?;
    r?;
    Ok("release of mapped, table, loaded root, shared info, pinned: wrong_state".into())
}

static FAULTS: AtomicU64 = AtomicU64::new(0);
static FAULT_CR2: AtomicU64 = AtomicU64::new(0);

fn on_fault(f: &mut UpcallFrame) -> trap::TrapAction {
    if f.vector != 14 {
        return trap::TrapAction::Crash;
    }
    FAULTS.fetch_add(1, Ordering::AcqRel);
    FAULT_CR2.store(f.cr2, Ordering::Release);
    f.rip += 3; // mov qword ptr [rcx], rax
    trap::TrapAction::Resume
}

fn mmu_20(l: &Lab) -> Outcome {
    let s = 32;
    let va = l.slot_va(s);
    let x = ok("populate", paging::populate_one())?;
    ok("map rw", paging::map(va, x, Flags::WRITABLE))?;
    poke(va, 0); // the translation is now in the TLB, writable and dirty
                 // Drop the mapping without any invalidation, then make the frame a table.
    ok("unmap, no invlpg", update1(l.slot_ptr(s), 0))?;
    ok("pin as L1", paging::pin(x, Level::L1))?;
    FAULTS.store(0, Ordering::Release);
    ok("trap handler", trap::set_handler(on_fault))?;
    let evil = leaf_entry(HV_FRAME, Flags::WRITABLE);
    // SAFETY: a deliberate write through a translation that must be gone;
    // the page fault is caught above and skips the 3-byte instruction.
    unsafe {
        core::arch::asm!("mov qword ptr [rcx], rax", in("rcx") va, in("rax") evil, options(nostack));
    }
    ok("clear handler", trap::clear_handler())?;
    let faults = FAULTS.load(Ordering::Acquire);
    let cr2 = FAULT_CR2.load(Ordering::Acquire);
    let word = ok("read x", lab::read_frame(x, 0))?;
    ok("unpin", paging::unpin(x))?;
    ok("release", paging::release(&[x]))?;
    check(word == 0, || {
        format!("stale TLB wrote {word:#x} into a validated L1")
    })?;
    check(faults == 1 && cr2 == va, || {
        format!("faults {faults} cr2 {cr2:#x}")
    })?;
    Ok("write through a dropped, uninvalidated mapping of a frame now an L1: page fault, table intact".into())
}

fn mmu_22a(l: &Lab) -> Outcome {
    let s = 13;
    let ws = [l.slot(s), W::F(l.d2), W::F(l.lab_l1)];
    let mut big =
        vec![upd(l.slot_ptr(s), leaf_entry(l.d2, Flags::READ_ONLY)); MMU_BATCH_MAX as usize + 1];
    let mut done = u64::MAX;
    refused("count 513", Error::InvalidArgument, &ws, || {
        raw::call(
            Hypercall::MmuUpdate,
            [big.as_ptr() as u64, 513, &raw mut done as u64, 0, 0, 0],
        )
    })?;
    big.truncate(1);
    for (what, p) in [
        ("array in hv half", 0xffff_8000_0000_0000u64),
        ("array unmapped", 0x7000_0000_0000),
        ("array at top", GUEST_VA_TOP - 8),
        ("array wraps", u64::MAX - 7),
    ] {
        refused(what, Error::BadAddress, &ws, || {
            raw::call(Hypercall::MmuUpdate, [p, 1, 0, 0, 0, 0])
        })?;
    }
    let si_va = guest_sdk::start_info().page_va(guest_sdk::start_info().first_free_page - 1);
    for (what, p) in [
        ("done read-only", si_va),
        ("done in hv half", 0xffff_8000_0000_0000),
        ("done unmapped", 0x7000_0000_0000),
    ] {
        refused(what, Error::BadAddress, &ws, || {
            raw::call(Hypercall::MmuUpdate, [big.as_ptr() as u64, 1, p, 0, 0, 0])
        })?;
    }
    // Zero entries is a no-op.
    ok(
        "count 0",
        raw::call(Hypercall::MmuUpdate, [big.as_ptr() as u64, 0, 0, 0, 0, 0]),
    )?;
    Ok("count 513: invalid_argument; array or done unmapped/hv/read-only/wrapping: bad_address; nothing applied".into())
}

fn mmu_22(l: &Lab) -> Outcome {
    let (a, b, c) = (18, 19, 20);
    let d2a = info(l.d2)?.3;
    let batch = [
        upd(l.slot_ptr(a), leaf_entry(l.d2, Flags::READ_ONLY)),
        upd(l.slot_ptr(b), leaf_entry(l.d2, Flags::READ_ONLY)),
        upd(l.slot_ptr(c), leaf_entry(l.d2, Flags::READ_ONLY)),
    ];
    let mut done = u64::MAX;
    let r = raw::call(
        Hypercall::MmuUpdate,
        [batch.as_ptr() as u64, 3, &raw mut done as u64, 0, 0, 0],
    );
    let applied = [a, b, c]
        .iter()
        .all(|&s| entry_mfn(paging::read_entry(l.slot_va(s), Level::L1).unwrap_or(0)) == l.d2);
    let d2b = info(l.d2)?.3;
    // The mappings are live: all three read the same frame.
    // SAFETY: the slots map l.d2 read-only (checked just above).
    let same = unsafe {
        let x = core::ptr::read_volatile(l.slot_va(a) as *const u64);
        x == core::ptr::read_volatile(l.slot_va(c) as *const u64)
    };
    let clean = paging::mmu_update(&[
        upd(l.slot_ptr(a), 0),
        upd(l.slot_ptr(b), 0),
        upd(l.slot_ptr(c), 0),
    ]);
    check(r == Ok(3), || format!("result {r:?}, want Ok(3)"))?;
    check(done == 3, || format!("*done = {done}, want 3"))?;
    check(applied && same, || "entries not applied".into())?;
    check(d2b == d2a + 3, || {
        format!("total count {d2a} -> {d2b}, want +3")
    })?;
    ok("clean", clean.map_err(|b| b.error))?;
    Ok("3 entries in one call: returns 3, *done = 3, mappings live, 3 references taken".into())
}

fn mmu_22b(l: &Lab) -> Outcome {
    let (a, b, c, d) = (14, 15, 16, 17);
    let d2a = info(l.d2)?.3;
    let d3a = info(l.d3)?.3;
    let batch = [
        upd(l.slot_ptr(a), leaf_entry(l.d2, Flags::READ_ONLY)),
        upd(l.slot_ptr(b), leaf_entry(l.d3, Flags::WRITABLE)),
        upd(l.slot_ptr(c), leaf_entry(HV_FRAME, Flags::READ_ONLY)),
        upd(l.slot_ptr(d), leaf_entry(l.d2, Flags::READ_ONLY)),
    ];
    let r = paging::mmu_update(&batch);
    let ea = paging::read_entry(l.slot_va(a), Level::L1).unwrap_or(0);
    let eb = paging::read_entry(l.slot_va(b), Level::L1).unwrap_or(0);
    let ec = paging::read_entry(l.slot_va(c), Level::L1).unwrap_or(0);
    let ed = paging::read_entry(l.slot_va(d), Level::L1).unwrap_or(0);
    let (d2b, d3b) = (info(l.d2)?.3, info(l.d3)?.3);
    let clean = paging::mmu_update(&[upd(l.slot_ptr(a), 0), upd(l.slot_ptr(b), 0)]);
    check(
        r == Err(paging::BatchError {
            done: 2,
            error: Error::PermissionDenied,
        }),
        || format!("result {r:?}"),
    )?;
    check(entry_mfn(ea) == l.d2 && entry_mfn(eb) == l.d3, || {
        "prefix not applied".into()
    })?;
    check(ec == 0 && ed == 0, || {
        format!("suffix applied: {ec:#x} {ed:#x}")
    })?;
    check(d2b == d2a + 1 && d3b == d3a + 1, || {
        format!("counts d2 {d2a}->{d2b} d3 {d3a}->{d3b}")
    })?;
    ok("clean", clean.map_err(|b| b.error))?;
    Ok("refused 3rd of 4: permission_denied, done=2, prefix applied with its references, suffix not".into())
}

fn mmu_23(_l: &Lab) -> Outcome {
    let f = ok("populate", paging::populate_one())?;
    let r = (|| {
        ok("pin", paging::pin(f, Level::L1))?;
        let i = info(f)?;
        check(i == (FrameType::L1, FRAME_PINNED, 1, 1), || {
            format!("pinned: {i:?}")
        })?;
        ok("unpin", paging::unpin(f))?;
        let i = info(f)?;
        check(i == (FrameType::None, 0, 0, 0), || {
            format!("unpinned: {i:?}")
        })
    })();
    ok("release", paging::release(&[f]))?;
    r?;
    Ok("fresh frame pinned as L1: type L1, pinned, counts 1/1".into())
}

fn mmu_24(_l: &Lab) -> Outcome {
    let d = ok("populate", paging::populate_one())?;
    let tree = build_tree(leaf_entry(d, Flags::WRITABLE))?;
    ok("pin", paging::pin(tree[0], Level::L4))?;
    let want = [FrameType::L4, FrameType::L3, FrameType::L2, FrameType::L1];
    for (&m, &t) in tree.iter().zip(&want) {
        let (ty, _, tc, _) = info(m)?;
        check(ty == t && tc == 1, || {
            format!("{m:#x}: {ty:?} tc {tc}, want {t:?}")
        })?;
    }
    check(info(d)?.0 == FrameType::Writable, || {
        "leaf frame not Writable".into()
    })?;
    ok("unpin", paging::unpin(tree[0]))?;
    for &m in tree.iter().chain([d].iter()) {
        let i = info(m)?;
        check(i == (FrameType::None, 0, 0, 0), || {
            format!("{m:#x} after unpin: {i:?}")
        })?;
    }
    ok("release", paging::release(&tree))?;
    ok("release d", paging::release(&[d]))?;
    Ok("pin types L4..L1 and the leaf Writable; unpin returns all five frames to None/0/0".into())
}

fn mmu_25(l: &Lab) -> Outcome {
    // The SDK's scratch tables exist already (earlier clauses), so the
    // count below covers exactly this clause's frames.
    let (base, _) = ok("memory_info", paging::memory_info())?;
    let mut f = [0u64; 5];
    ok("populate", paging::populate(&mut f))?;
    let [n4, n3, n2, n1, nd] = f;
    let test_va: u64 = 511 << 21;
    if paging::read_entry(test_va, Level::L2).is_some_and(is_present) {
        return Err("L2 slot 511 in use".into());
    }
    const MAGIC: u64 = 0x7a40_4a5e_0000_0025;
    ok("write data", lab::write_frame(nd, &[(0, MAGIC)]))?;
    ok(
        "write L1",
        lab::write_frame(n1, &[(0, leaf_entry(nd, Flags::WRITABLE))]),
    )?;
    let mut e2: Vec<u64> = (0..512u64)
        .map(|i| paging::read_entry(i << 21, Level::L2).unwrap_or(0))
        .collect();
    e2[511] = table_entry(n1);
    ok("write L2", lab::write_table(n2, &e2))?;
    let mut e3: Vec<u64> = (0..512u64)
        .map(|i| paging::read_entry(i << 30, Level::L3).unwrap_or(0))
        .collect();
    e3[0] = table_entry(n2);
    ok("write L3", lab::write_table(n3, &e3))?;
    let mut e4: Vec<u64> = (0..256usize)
        .map(|i| paging::read_root_slot(i).unwrap_or(0))
        .collect();
    e4[0] = table_entry(n3);
    e4[paging::RECURSIVE_SLOT as usize] = self_entry(n4);
    ok("write L4", lab::write_table(n4, &e4))?;
    ok("pin", paging::pin(n4, Level::L4))?;
    let i4 = info(n4)?;
    check(i4.0 == FrameType::L4 && i4.1 == FRAME_PINNED, || {
        format!("new root {i4:?}")
    })?;
    ok("switch to new", paging::switch_root(n4))?;
    // Running in the new address space: code, stack, heap, shared info.
    let seen = peek(test_va);
    let root = paging::root_mfn();
    let tr = paging::translate(test_va);
    poke(test_va, MAGIC + 1);
    let lab_ok = peek(LAB) == 0x1ab_1ab;
    let loaded = info(n4)?.1;
    ok("switch back", paging::switch_root(l.l4))?;
    check(seen == MAGIC, || format!("new space reads {seen:#x}"))?;
    check(root == Some(n4), || format!("root in new space {root:?}"))?;
    check(tr == Some((nd, Flags::WRITABLE)), || {
        format!("translate in new space {tr:?}")
    })?;
    check(lab_ok, || "lab page lost in the new space".into())?;
    check(loaded & FRAME_LOADED != 0, || "new root not loaded".into())?;
    check(paging::root_mfn() == Some(l.l4), || {
        "not back on the old root".into()
    })?;
    check(paging::translate(test_va).is_none(), || {
        "test page mapped in the old space".into()
    })?;
    check(info(n4)?.1 == FRAME_PINNED, || {
        "new root still loaded".into()
    })?;
    ok("unpin", paging::unpin(n4))?;
    for &m in &f {
        let i = info(m)?;
        check(i == (FrameType::None, 0, 0, 0), || {
            format!("{m:#x} after unpin: {i:?}")
        })?;
    }
    let written = ok("read data", lab::read_frame(nd, 0))?;
    check(written == MAGIC + 1, || {
        "write in the new space lost".into()
    })?;
    ok("release", paging::release(&f))?;
    let (after, _) = ok("memory_info", paging::memory_info())?;
    check(after == base, || format!("owned {base} -> {after}"))?;
    Ok(format!("built L1..L4 in fresh frames, pinned, ran, came back, unpinned, released; owned {base} -> {after}"))
}

fn mmu_26(l: &Lab) -> Outcome {
    refused("top", Error::InvalidArgument, &[], || {
        paging::invlpg(GUEST_VA_TOP)
    })?;
    refused("hv", Error::InvalidArgument, &[], || {
        paging::invlpg(u64::MAX)
    })?;
    ok("lab", paging::invlpg(LAB))?;
    ok("unmapped", paging::invlpg(0x7000_0000_0000))?;
    let _ = l;
    Ok("at or above 2^47: invalid_argument; any lower-half address: ok".into())
}

fn mmu_27(l: &Lab) -> Outcome {
    ok("flush", paging::flush_tlb())?;
    // Stale entry gone: remap the lab page read-only behind the TLB's back,
    // flush, and the new translation is used.
    let s = 18;
    ok("map d2", paging::map(l.slot_va(s), l.d2, Flags::WRITABLE))?;
    poke(l.slot_va(s), 0x27);
    ok(
        "remap d3 (no invlpg)",
        update1(l.slot_ptr(s), leaf_entry(l.d3, Flags::READ_ONLY)),
    )?;
    ok("flush", paging::flush_tlb())?;
    let v = peek(l.slot_va(s));
    ok("unmap", paging::unmap(l.slot_va(s)))?;
    check(v == 0, || format!("after flush reads {v:#x} (d3 is zero)"))?;
    let back = ok("read d2", lab::read_frame(l.d2, 0))?;
    ok("zero d2", lab::write_frame(l.d2, &[(0, 0)]))?;
    check(back == 0x27, || "write lost".into())?;
    Ok("flush makes a remap visible".into())
}

fn mmu_28(l: &Lab) -> Outcome {
    let s = 19;
    let va = l.slot_va(s);
    ok(
        "uvm map rw",
        paging::update_va_mapping(va, leaf_entry(l.d2, Flags::WRITABLE), true),
    )?;
    poke(va, 0x28);
    ok(
        "uvm ro",
        paging::update_va_mapping(va, leaf_entry(l.d2, Flags::READ_ONLY), true),
    )?;
    let tr = paging::translate(va);
    let v = peek(va);
    let ty = info(l.d2)?.0;
    ok("uvm clear", paging::update_va_mapping(va, 0, true))?;
    ok("zero d2", lab::write_frame(l.d2, &[(0, 0)]))?;
    check(tr == Some((l.d2, Flags::READ_ONLY)), || {
        format!("translate {tr:?}")
    })?;
    check(v == 0x28, || format!("reads {v:#x}"))?;
    check(ty == FrameType::None, || format!("ro-mapped d2 is {ty:?}"))?;
    Ok("maps rw, downgrades ro (type back to None), clears".into())
}

fn mmu_29(l: &Lab) -> Outcome {
    let r = info(l.l4)?;
    check(
        r.0 == FrameType::L4 && r.1 == FRAME_PINNED | FRAME_LOADED,
        || format!("root {r:?}"),
    )?;
    let t = info(l.l3)?;
    check(t.0 == FrameType::L3 && t.2 >= 1, || format!("L3 {t:?}"))?;
    let d = info(l.d)?;
    check(d == (FrameType::Writable, 0, 1, 1), || {
        format!("lab data {d:?}")
    })?;
    let n = info(l.d3)?;
    check(n == (FrameType::None, 0, 0, 0), || format!("unused {n:?}"))?;
    Ok("root L4 pinned+loaded, L3, writable data 1/1, unused 0/0".into())
}

fn mmu_29a(l: &Lab) -> Outcome {
    let mut fi = guest_sdk::abi::args::FrameInfo::default();
    let p = &raw mut fi as u64;
    for m in [HV_FRAME, NO_FRAME]
        .into_iter()
        .chain(neighbours(l).into_iter().take(8))
    {
        refused(&format!("mfn {m:#x}"), Error::PermissionDenied, &[], || {
            raw::call2(Hypercall::MmuFrameInfo, m, p)
        })?;
    }
    let si_va = guest_sdk::start_info().page_va(guest_sdk::start_info().first_free_page - 1);
    for (what, ptr) in [
        ("out hv", 0xffff_8000_0000_0000u64),
        ("out unmapped", 0x7000_0000_0000),
        ("out read-only", si_va),
    ] {
        refused(what, Error::BadAddress, &[], || {
            raw::call2(Hypercall::MmuFrameInfo, l.d, ptr)
        })?;
    }
    Ok("foreign, hv, absent frames: permission_denied; bad out pointers: bad_address".into())
}

fn mem_5(_l: &Lab) -> Outcome {
    let (before, _) = ok("memory_info", paging::memory_info())?;
    let mut f = [0u64; 8];
    ok("populate 8", paging::populate(&mut f))?;
    let (mid, _) = ok("memory_info", paging::memory_info())?;
    let mut zero = true;
    for &m in &f {
        let i = info(m)?;
        check(i == (FrameType::None, 0, 0, 0), || {
            format!("fresh {m:#x}: {i:?}")
        })?;
        zero &=
            ok("read", lab::read_frame(m, 0))? == 0 && ok("read", lab::read_frame(m, 511))? == 0;
    }
    ok("release", paging::release(&f))?;
    check(mid == before + 8, || format!("owned {before} -> {mid}"))?;
    check(zero, || "fresh frame not zeroed".into())?;
    // The SDK heap grows past the window through populate + map.
    let (used, free) = guest_sdk::heap_usage();
    let initial = used + free;
    let grown0 = guest_sdk::heap_grown();
    let n = initial + 256 * 1024;
    let mut v: Vec<u8> = Vec::new();
    if v.try_reserve_exact(n).is_err() {
        return Err(format!("could not allocate {n} bytes (heap {initial})"));
    }
    v.resize(n, 0);
    for (i, b) in v.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let good = v.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8);
    let at = v.as_ptr() as u64;
    drop(v);
    let grown = guest_sdk::heap_grown();
    check(good, || "heap pattern broken".into())?;
    check(
        at >= paging::HEAP_GROW_BASE && grown >= n && grown > grown0,
        || format!("block at {at:#x}, grown {grown}"),
    )?;
    println!("@ mmutest heap initial={initial} allocated={n} grown={grown} at={at:#x}");
    Ok(format!(
        "8 fresh zeroed frames; heap of {initial} B grew by {grown} B for a {n} B block"
    ))
}

fn mem_5a(_l: &Lab) -> Outcome {
    let (before, _) = ok("memory_info", paging::memory_info())?;
    let mut buf = [0u64; 1];
    let p = buf.as_mut_ptr() as u64;
    refused("count 513", Error::InvalidArgument, &[], || {
        raw::call2(Hypercall::MemoryPopulate, p, 513)
    })?;
    let si_va = guest_sdk::start_info().page_va(guest_sdk::start_info().first_free_page - 1);
    for (what, ptr) in [
        ("hv", 0xffff_8000_0000_0000u64),
        ("unmapped", 0x7000_0000_0000),
        ("read-only", si_va),
    ] {
        refused(what, Error::BadAddress, &[], || {
            raw::call2(Hypercall::MemoryPopulate, ptr, 1)
        })?;
    }
    let (after, _) = ok("memory_info", paging::memory_info())?;
    check(after == before, || format!("owned {before} -> {after}"))?;
    Ok(
        "count 513: invalid_argument; hv/unmapped/read-only array: bad_address; nothing taken"
            .into(),
    )
}

fn mem_5b(_l: &Lab) -> Outcome {
    let (owned, max) = ok("memory_info", paging::memory_info())?;
    let avail = max.saturating_sub(owned);
    check(avail >= 2, || {
        format!("only {avail} frames left to test with")
    })?;
    let keep = avail.saturating_sub(100.min(avail - 1));
    let mut held = vec![0u64; keep as usize];
    ok("populate to near the limit", paging::populate(&mut held))?;
    let left = avail - keep;
    let mut over = vec![0u64; left as usize + 1];
    let r = refused(
        &format!("{} over {left}", left + 1),
        Error::NoResources,
        &[],
        || paging::populate(&mut over),
    );
    let (mid, _) = ok("memory_info", paging::memory_info())?;
    let mut exact = vec![0u64; left as usize];
    let fill = paging::populate(&mut exact);
    let (full, _) = ok("memory_info", paging::memory_info())?;
    if fill.is_ok() {
        ok("release exact", paging::release(&exact))?;
    }
    ok("release held", paging::release(&held))?;
    r?;
    ok("exactly to max", fill)?;
    check(mid == owned + keep, || {
        format!("refused populate took frames: {} -> {mid}", owned + keep)
    })?;
    check(full == max, || format!("full at {full}, max {max}"))?;
    let (end, _) = ok("memory_info", paging::memory_info())?;
    check(end == owned, || format!("owned {owned} -> {end}"))?;
    Ok(format!(
        "{} frames over max {max}: no_resources, nothing taken; exactly max: ok",
        left + 1
    ))
}

fn mem_6(_l: &Lab) -> Outcome {
    let (before, _) = ok("memory_info", paging::memory_info())?;
    let mut f = [0u64; 4];
    ok("populate 4", paging::populate(&mut f))?;
    let r = raw::call2(Hypercall::MemoryRelease, f.as_ptr() as u64, 4);
    let (after, _) = ok("memory_info", paging::memory_info())?;
    check(r == Ok(4), || format!("release returned {r:?}, want Ok(4)"))?;
    check(after == before, || format!("owned {before} -> {after}"))?;
    for &m in &f {
        // Gone: the frame table no longer lists it as ours.
        let mut out = FrameInfo::default();
        let gone = raw::call2(Hypercall::MmuFrameInfo, m, &raw mut out as u64);
        check(gone == Err(Error::PermissionDenied), || {
            format!("{m:#x} after release: {gone:?}")
        })?;
    }
    Ok("4 frames released: returns 4, ownership gone, count back".into())
}

fn mem_6a(_l: &Lab) -> Outcome {
    let f = ok("populate", paging::populate_one())?;
    let buf = [f; 513];
    let r = refused("count 513", Error::InvalidArgument, &[W::F(f)], || {
        raw::call2(Hypercall::MemoryRelease, buf.as_ptr() as u64, 513)
    })
    .and_then(|()| {
        for (what, ptr) in [
            ("hv", 0xffff_8000_0000_0000u64),
            ("unmapped", 0x7000_0000_0000),
        ] {
            refused(what, Error::BadAddress, &[W::F(f)], || {
                raw::call2(Hypercall::MemoryRelease, ptr, 1)
            })?;
        }
        Ok(())
    });
    ok("release", paging::release(&[f]))?;
    r?;
    Ok("count 513: invalid_argument; hv/unmapped array: bad_address".into())
}

fn mem_6b(l: &Lab) -> Outcome {
    let (owned, _) = ok("memory_info", paging::memory_info())?;
    let f = ok("populate", paging::populate_one())?;
    let ws = [W::F(f), W::F(l.d)];
    let r = (|| {
        refused("not owned", Error::PermissionDenied, &ws, || {
            paging::release(&[f, HV_FRAME])
        })?;
        refused("absent", Error::PermissionDenied, &ws, || {
            paging::release(&[f, NO_FRAME])
        })?;
        refused("twice", Error::InvalidArgument, &ws, || {
            paging::release(&[f, f])
        })?;
        refused("one mapped", Error::WrongState, &ws, || {
            paging::release(&[f, l.d])
        })?;
        for m in neighbours(l).into_iter().take(4) {
            refused(
                &format!("foreign {m:#x}"),
                Error::PermissionDenied,
                &ws,
                || paging::release(&[m]),
            )?;
        }
        Ok::<(), String>(())
    })();
    let (mid, _) = ok("memory_info", paging::memory_info())?;
    ok("release", paging::release(&[f]))?;
    r?;
    check(mid == owned + 1, || {
        format!("refusals released frames: {} -> {mid}", owned + 1)
    })?;
    Ok("not owned/foreign: permission_denied; twice: invalid_argument; mapped: wrong_state; all or nothing".into())
}

fn mem_7(_l: &Lab) -> Outcome {
    let (owned, max) = ok("memory_info", paging::memory_info())?;
    let n = ok("memory_info(0)", raw::call1(Hypercall::MemoryInfo, 0))?;
    let si = guest_sdk::start_info();
    check(
        n == owned && max == si.max_pages && owned >= si.nr_pages,
        || {
            format!(
                "owned {owned} ret {n} max {max} start {} max {}",
                si.nr_pages, si.max_pages
            )
        },
    )?;
    let si_va = si.page_va(si.first_free_page - 1);
    refused("read-only out", Error::BadAddress, &[], || {
        raw::call1(Hypercall::MemoryInfo, si_va)
    })?;
    refused("hv out", Error::BadAddress, &[], || {
        raw::call1(Hypercall::MemoryInfo, 0xffff_8000_0000_0000)
    })?;
    Ok(format!(
        "owned {owned}, max {max}; bad out pointers: bad_address"
    ))
}

/// Tables in the MMU-35/36 tree: 64 full L1s (32,768 entries, eight
/// hypervisor steps of 4,096) under one L2.
const BIG_L1S: usize = 64;

/// Builds the MMU-35/36 tree in fresh frames `f` (`BIG_L1S` L1s, the L2,
/// the data frame every leaf maps read-only); returns the L2.
fn big_tree(f: &[u64]) -> Result<u64, String> {
    let (l1s, rest) = f.split_at(BIG_L1S);
    let (l2, d) = (rest[0], rest[1]);
    let leaf = leaf_entry(d, Flags::READ_ONLY);
    for &m in l1s {
        ok("write L1", lab::write_table(m, &[leaf; 512]))?;
    }
    let l2e: Vec<u64> = l1s.iter().map(|&m| table_entry(m)).collect();
    ok("write L2", lab::write_table(l2, &l2e))?;
    Ok(l2)
}

fn mmu_35(_l: &Lab) -> Outcome {
    let mut f = vec![0u64; BIG_L1S + 2];
    ok("populate", paging::populate(&mut f))?;
    let r: Result<(), String> = (|| {
        let l2 = big_tree(&f)?;
        let d = f[BIG_L1S + 1];
        ok("pin", paging::pin(l2, Level::L2))?;
        let i = info(l2)?;
        check(i == (FrameType::L2, FRAME_PINNED, 1, 1), || {
            format!("pinned L2: {i:?}")
        })?;
        for &m in &f[..BIG_L1S] {
            let i = info(m)?;
            check(i == (FrameType::L1, 0, 1, 1), || {
                format!("L1 {m:#x}: {i:?}")
            })?;
        }
        let leaves = info(d)?.3;
        check(leaves == (BIG_L1S * 512) as u64, || {
            format!("data frame has {leaves} references, not {}", BIG_L1S * 512)
        })?;
        ok("unpin", paging::unpin(l2))?;
        for &m in &f {
            let i = info(m)?;
            check(i == (FrameType::None, 0, 0, 0), || {
                format!("{m:#x} after unpin: {i:?}")
            })?;
        }
        Ok(())
    })();
    ok("release", paging::release(&f))?;
    r?;
    Ok("64 full L1s (32,768 entries) pinned by one call and unpinned by one".into())
}

/// Every frame of `f` idle (type None, no flags, counts 0).
fn all_idle(f: &[u64], when: &str) -> Result<(), String> {
    for &m in f {
        let i = info(m)?;
        check(i == (FrameType::None, 0, 0, 0), || {
            format!("{m:#x} {when}: {i:?}")
        })?;
    }
    Ok(())
}

/// The big tree (`BIG_L1S` L1s under an L2) in `f`, plus a pinned empty
/// L3 `f[BIG_L1S + 2]` to link it from; runs `body(l2, l3)`, then unpins
/// the L3 and releases every frame.
fn with_big_tree_and_l3(
    body: impl FnOnce(u64, u64, &[u64]) -> Result<(), String>,
) -> Result<(), String> {
    let mut f = vec![0u64; BIG_L1S + 3];
    ok("populate", paging::populate(&mut f))?;
    let l3 = f[BIG_L1S + 2];
    let r = (|| {
        let l2 = big_tree(&f[..BIG_L1S + 2])?;
        ok("pin L3", paging::pin(l3, Level::L3))?;
        let r = body(l2, l3, &f[..BIG_L1S + 2]);
        ok("unpin L3", paging::unpin(l3))?;
        r
    })();
    ok("release", paging::release(&f))?;
    r
}

fn mmu_37(_l: &Lab) -> Outcome {
    with_big_tree_and_l3(|l2, l3, tree| {
        // Linking 64 fresh full L1s (32,768 entries) from one entry: more
        // than one call validates, refused with nothing changed.
        let r = update1(entry_ptr(l3, 0), table_entry(l2));
        check(r == Err(Error::NoResources), || {
            format!("linking the fresh subtree: {r:?}")
        })?;
        all_idle(tree, "after the refused link")?;
        let i = info(l3)?;
        check(i == (FrameType::L3, FRAME_PINNED, 1, 1), || {
            format!("the L3 after the refused link: {i:?}")
        })?;
        // Pinned first (preemptible), the same link is O(1).
        ok("pin L2", paging::pin(l2, Level::L2))?;
        ok(
            "link the pinned L2",
            update1(entry_ptr(l3, 0), table_entry(l2)),
        )?;
        let i = info(l2)?;
        check(i == (FrameType::L2, FRAME_PINNED, 2, 2), || {
            format!("the linked pinned L2: {i:?}")
        })?;
        ok("unlink", update1(entry_ptr(l3, 0), 0))?;
        ok("unpin L2", paging::unpin(l2))?;
        all_idle(tree, "after unpin")?;
        Ok(())
    })?;
    Ok("a 64-L1 subtree: link refused (no_resources, all idle), pinned first it links".into())
}

fn mmu_38(_l: &Lab) -> Outcome {
    with_big_tree_and_l3(|l2, l3, tree| {
        ok("pin L2", paging::pin(l2, Level::L2))?;
        ok(
            "link the pinned L2",
            update1(entry_ptr(l3, 0), table_entry(l2)),
        )?;
        // Now the entry holds the only reference to the 64-L1 subtree.
        ok("unpin L2", paging::unpin(l2))?;
        let i = info(l2)?;
        check(i == (FrameType::L2, 0, 1, 1), || {
            format!("the L2 linked only by the entry: {i:?}")
        })?;
        let r = update1(entry_ptr(l3, 0), 0);
        check(r == Err(Error::NoResources), || {
            format!("dropping the last reference: {r:?}")
        })?;
        let i = info(l2)?;
        check(i == (FrameType::L2, 0, 1, 1), || {
            format!("the L2 after the refused unlink: {i:?}")
        })?;
        for &m in &tree[..BIG_L1S] {
            let i = info(m)?;
            check(i == (FrameType::L1, 0, 1, 1), || {
                format!("L1 {m:#x} after the refused unlink: {i:?}")
            })?;
        }
        // Pin first: the unlink is O(1), the unpin releases (preemptible).
        ok("pin L2 again", paging::pin(l2, Level::L2))?;
        ok("unlink the pinned L2", update1(entry_ptr(l3, 0), 0))?;
        ok("unpin L2", paging::unpin(l2))?;
        all_idle(tree, "after unpin")
    })?;
    Ok("the last reference to a 64-L1 subtree: unlink refused, nothing released; pinned first it goes".into())
}

fn mmu_39(_l: &Lab) -> Outcome {
    // Two fresh subtrees of an L2 over 4 full L1s (about 2,600 steps each):
    // one fits a call's budget of 4,096, both do not.
    const N: usize = 4;
    let mut f = vec![0u64; 2 * (N + 1) + 2];
    ok("populate", paging::populate(&mut f))?;
    let (d, l3) = (f[2 * (N + 1)], f[2 * (N + 1) + 1]);
    let r = (|| {
        let leaf = leaf_entry(d, Flags::READ_ONLY);
        let mut l2s = [0u64; 2];
        for (k, sub) in f[..2 * (N + 1)].chunks(N + 1).enumerate() {
            for &m in &sub[..N] {
                ok("write L1", lab::write_table(m, &[leaf; 512]))?;
            }
            let l2e: Vec<u64> = sub[..N].iter().map(|&m| table_entry(m)).collect();
            ok("write L2", lab::write_table(sub[N], &l2e))?;
            l2s[k] = sub[N];
        }
        ok("pin L3", paging::pin(l3, Level::L3))?;
        let batch = [
            upd(entry_ptr(l3, 0), table_entry(l2s[0])),
            upd(entry_ptr(l3, 1), table_entry(l2s[1])),
        ];
        let r = paging::mmu_update(&batch);
        let (done, error) = match r {
            Err(b) => (b.done, b.error),
            Ok(()) => return Err("both subtrees linked in one call".into()),
        };
        check(done == 1 && error == Error::NoResources, || {
            format!("batch of two links: done {done}, {error:?}")
        })?;
        let i = info(l2s[0])?;
        check(i == (FrameType::L2, 0, 1, 1), || format!("first L2: {i:?}"))?;
        all_idle(&f[N + 1..2 * (N + 1)], "second subtree after the refusal")?;
        // Resubmitted from `done`, in a call of its own, it fits.
        ok(
            "second link alone",
            update1(entry_ptr(l3, 1), table_entry(l2s[1])),
        )?;
        let i = info(l2s[1])?;
        check(i == (FrameType::L2, 0, 1, 1), || {
            format!("second L2: {i:?}")
        })?;
        ok("unlink first", update1(entry_ptr(l3, 0), 0))?;
        ok("unlink second", update1(entry_ptr(l3, 1), 0))?;
        ok("unpin L3", paging::unpin(l3))?;
        all_idle(&f, "at the end")
    })();
    ok("release", paging::release(&f))?;
    r?;
    Ok("a batch of two 4-L1 links: done 1, no_resources; the second alone links".into())
}

/// What the MMU-36 timer handler saw: 0 nothing yet, 1 a frame not
/// partial, 2 a partial tree and every refusal as documented, 3 a
/// partial tree and a wrong answer (`MMU36_WHY` says which).
static MMU36_SEEN: AtomicU64 = AtomicU64::new(0);
static MMU36_WHY: AtomicU64 = AtomicU64::new(0);
/// The L2 being pinned, a fresh spare frame, the first L1.
static MMU36_FRAMES: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Runs in upcall context, on top of an `mmu_pin` that the hypervisor
/// moved back onto its `syscall` to restart it (MMU-35).
fn mmu36_on_timer(_: guest_sdk::Port) {
    let [root, spare, l1] = [0, 1, 2].map(|i| MMU36_FRAMES[i].load(Ordering::Acquire));
    let partial = |m| paging::frame_info(m).is_ok_and(|i| i.flags & FRAME_PARTIAL != 0);
    if !partial(root) {
        MMU36_SEEN.store(1, Ordering::Release);
        return;
    }
    let checks: [(u64, bool); 6] = [
        (
            1,
            update1(entry_ptr(root, 500), 0) == Err(Error::WrongState),
        ),
        (2, update1(entry_ptr(root, 0), 0) == Err(Error::WrongState)),
        (3, paging::pin(spare, Level::L1) == Err(Error::WrongState)),
        (4, paging::unpin(root) == Err(Error::WrongState)),
        (5, paging::release(&[l1]) == Err(Error::WrongState)),
        (
            6,
            paging::frame_info(root)
                .is_ok_and(|i| i.flags & FRAME_PINNED == 0 && i.page_type == FrameType::L2 as u32),
        ),
    ];
    match checks.iter().find(|(_, good)| !good) {
        Some((n, _)) => {
            MMU36_WHY.store(*n, Ordering::Release);
            MMU36_SEEN.store(3, Ordering::Release);
        }
        None => MMU36_SEEN.store(2, Ordering::Release),
    }
}

fn mmu_36(_l: &Lab) -> Outcome {
    let mut f = vec![0u64; BIG_L1S + 3];
    ok("populate", paging::populate(&mut f))?;
    let port = ok(
        "bind timer",
        guest_sdk::event::bind_virq_with(guest_sdk::abi::args::Virq::Timer, mmu36_on_timer),
    )?;
    let r = (|| {
        let l2 = big_tree(&f[..BIG_L1S + 2])?;
        for (i, m) in [l2, f[BIG_L1S + 2], f[0]].into_iter().enumerate() {
            MMU36_FRAMES[i].store(m, Ordering::Release);
        }
        // The timer must fire while the pin is under way; its length is
        // not known, so search for a delay that lands inside it.
        let mut delay = 200_000u64;
        for attempt in 0..24 {
            MMU36_SEEN.store(0, Ordering::Release);
            guest_sdk::time::timer_set(guest_sdk::time::now_ns() + delay);
            let pinned = paging::pin(l2, Level::L2);
            guest_sdk::time::timer_cancel();
            ok("pin (restarted under the upcall)", pinned)?;
            ok("unpin", paging::unpin(l2))?;
            match MMU36_SEEN.load(Ordering::Acquire) {
                2 => {
                    return Ok(format!(
                        "caught after {} attempt(s), delay {} us",
                        attempt + 1,
                        delay / 1000
                    ))
                }
                3 => {
                    return Err(format!(
                        "check {} failed on a partial tree",
                        MMU36_WHY.load(Ordering::Acquire)
                    ))
                }
                0 => delay = delay / 2 + 1,
                _ => delay = delay * 3 / 2 + 1,
            }
        }
        Err("the timer never fired while the pin was partial".into())
    })();
    let _ = guest_sdk::event::close(port);
    for &m in &f {
        let i = info(m)?;
        check(i == (FrameType::None, 0, 0, 0), || {
            format!("{m:#x} after unpin: {i:?}")
        })?;
    }
    ok("release", paging::release(&f))?;
    let how = r?;
    Ok(format!(
        "update, pin, unpin, release of a half-pinned tree: wrong_state ({how})"
    ))
}
