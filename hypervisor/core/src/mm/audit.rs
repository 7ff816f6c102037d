//! A from-scratch check of the frame table against page-table contents.
//!
//! The audit is the reference model of the accounting rules: it ignores the
//! counts the validator keeps, rescans every table in use, and recomputes
//! what every frame's type and counts must be. Property tests and the fuzz
//! target run it after every operation; the hypervisor runs it at the end of
//! every run ([`audit_holds`]) and fails the run on any error. O(frames + 512 x tables); allocates one vector.

use super::frame::{FrameType, Owner, DEVICE};
use super::pte::{Level, ACCESSED, ENTRIES, FIRST_HYPERVISOR_SLOT};
use super::{Mm, PhysMem};
use crate::frames::Mfn;
use crate::mm::TableType;
use alloc::vec;

/// The first inconsistency found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditError {
    /// The frame where it was found.
    pub mfn: Mfn,
    /// What is wrong.
    pub what: &'static str,
}

fn fail<T>(mfn: Mfn, what: &'static str) -> Result<T, AuditError> {
    Err(AuditError { mfn, what })
}

/// A page-table entry the hypervisor installed for a grant mapping
/// (`Mm::map_foreign`, GNT-3): the one place a table may reference a frame
/// its owner does not own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForeignEntry {
    /// The grantee's L1 table.
    pub table: Mfn,
    /// The entry's index in it.
    pub index: usize,
    /// The granted frame it may map.
    pub mfn: Mfn,
    /// Whether it may map it writable.
    pub writable: bool,
}

/// References found by the scan, per frame.
#[derive(Clone, Copy, Default)]
struct Expected {
    type_refs: u64,
    total_refs: u64,
    holds: u64,
}

/// Checks every invariant of [`super::validator`] over `mm` and `mem`.
///
/// Hypervisor holds (`Mm::hold`, MEM-8) are checked for their rules only
/// (a held frame is a domain's and not a table; a `Special` frame is held);
/// [`audit_holds`] also compares their counts with the holder's records.
pub fn audit<M: PhysMem>(mm: &Mm, mem: &M) -> Result<(), AuditError> {
    check(mm, mem, None, &[])
}

/// [`audit`], and every frame's hold count must equal the number of times
/// it appears in `holds`: the frames the hypervisor says it holds (for
/// example each live domain's shared-info frame). A hold nobody accounts
/// for, or a record without its hold, is an error.
pub fn audit_holds<M: PhysMem>(mm: &Mm, mem: &M, holds: &[Mfn]) -> Result<(), AuditError> {
    check(mm, mem, Some(holds), &[])
}

/// [`audit_holds`], where the L1 entries listed in `foreign` (grant
/// mappings the hypervisor installed) may reference another domain's frame,
/// writable only if listed so. Any other entry naming a frame its table's
/// owner does not own is an error, as in [`audit`].
pub fn audit_full<M: PhysMem>(
    mm: &Mm,
    mem: &M,
    holds: &[Mfn],
    foreign: &[ForeignEntry],
) -> Result<(), AuditError> {
    check(mm, mem, Some(holds), foreign)
}

fn check<M: PhysMem>(
    mm: &Mm,
    mem: &M,
    holds: Option<&[Mfn]>,
    foreign: &[ForeignEntry],
) -> Result<(), AuditError> {
    let n = mm.frame_count();
    let mut expected = vec![Expected::default(); usize::try_from(n).unwrap_or(0)];
    if let Some(holds) = holds {
        for &mfn in holds {
            let Some(e) = usize::try_from(mfn).ok().and_then(|i| expected.get_mut(i)) else {
                return fail(mfn, "hold recorded for a frame beyond the frame table");
            };
            e.holds += 1;
        }
    }
    for mfn in 0..n {
        let Some(f) = mm.frame(mfn) else {
            return fail(mfn, "frame missing");
        };
        check_frame_alone(mfn, f)?;
        // The release path trusts the flag alone (IO-0): it must say
        // exactly what the list of delegated frames says.
        if (f.flags & DEVICE != 0) != mm.is_io(mfn) {
            return fail(mfn, "device flag and delegated-frame list disagree");
        }
        if f.pinned() || f.held_by_operation() {
            bump(&mut expected, mfn, true)?;
        }
        if let Some(level) = f.table_level() {
            scan_table(mm, mem, mfn, level, &mut expected, foreign)?;
        }
    }
    for mfn in 0..n {
        let f = mm.frame(mfn).ok_or(AuditError {
            mfn,
            what: "frame missing",
        })?;
        let Some(e) = usize::try_from(mfn).ok().and_then(|i| expected.get(i)) else {
            return fail(mfn, "frame beyond the expected table");
        };
        if u64::from(f.type_count()) != e.type_refs {
            return fail(mfn, "type count differs from references found");
        }
        if u64::from(f.total_count()) != e.total_refs {
            return fail(mfn, "total count differs from references found");
        }
        if holds.is_some() && u64::from(f.held()) != e.holds {
            return fail(mfn, "hold count differs from the holds recorded");
        }
    }
    Ok(())
}

/// Rules about one frame's own fields.
fn check_frame_alone(mfn: Mfn, f: &super::FrameInfo) -> Result<(), AuditError> {
    if f.frame_type() == FrameType::Special && f.type_count() != 0 {
        return fail(mfn, "special frame with type references");
    }
    let typed = f.frame_type() != FrameType::None && f.frame_type() != FrameType::Special;
    if typed != (f.type_count() > 0) {
        return fail(mfn, "type set without type references, or the reverse");
    }
    if f.type_count() > f.total_count() {
        return fail(mfn, "type count above total count");
    }
    if f.pinned() && f.table_level().is_none() {
        return fail(mfn, "pinned frame is not a table");
    }
    if f.pinned() && f.held_by_operation() {
        return fail(mfn, "pinned frame also held by an unfinished operation");
    }
    if f.held_by_operation() && !f.is_partial() {
        return fail(mfn, "operation root is not a partial table");
    }
    if f.is_partial() && (f.table_level().is_none() || f.partial_entries() > ENTRIES) {
        return fail(mfn, "partial frame is not a table");
    }
    if !f.is_partial() && f.partial_entries() != 0 {
        return fail(mfn, "progress recorded on a frame that is not partial");
    }
    if f.is_partial() && f.loaded() > 0 {
        return fail(mfn, "partial table loaded as a root");
    }
    if f.loaded() > 0 && !(f.pinned() && f.frame_type() == FrameType::L4) {
        return fail(mfn, "loaded root is not a pinned L4");
    }
    if typed && !matches!(f.owner(), Owner::Domain(_)) {
        return fail(mfn, "typed frame not owned by a domain");
    }
    if f.held() > 0 && !matches!(f.owner(), Owner::Domain(_)) {
        return fail(mfn, "held frame not owned by a domain");
    }
    if f.held() > 0 && (f.frame_type().level().is_some() || f.pinned()) {
        return fail(mfn, "held frame is a page table");
    }
    if f.frame_type() == FrameType::Special && f.held() == 0 {
        return fail(mfn, "special frame the hypervisor does not hold");
    }
    // A shared image page (MEM-2e) is only ever mapped read-only: no type,
    // no flag (pin, special, partial, device), never a root, never held.
    if matches!(f.owner(), Owner::Image(_))
        && (f.frame_type() != FrameType::None || f.flags != 0 || f.loaded() > 0)
    {
        return fail(
            mfn,
            "shared image frame with a type, a flag or a loaded root",
        );
    }
    if f.owner() == Owner::Free && (f.view() != super::FrameInfo::default().view() || f.flags != 0)
    {
        return fail(mfn, "free frame with a type, a count or a flag");
    }
    Ok(())
}

fn bump(expected: &mut [Expected], mfn: Mfn, typed: bool) -> Result<(), AuditError> {
    let Some(e) = usize::try_from(mfn).ok().and_then(|i| expected.get_mut(i)) else {
        return fail(mfn, "reference beyond the frame table");
    };
    e.total_refs += 1;
    if typed {
        e.type_refs += 1;
    }
    Ok(())
}

/// Rescans one table in use: its entries must all still pass validation and
/// agree with their targets' types.
fn scan_table<M: PhysMem>(
    mm: &Mm,
    mem: &M,
    table: Mfn,
    level: Level,
    expected: &mut [Expected],
    foreign: &[ForeignEntry],
) -> Result<(), AuditError> {
    let owner = mm.frame(table).map(|f| f.owner());
    // A table half way through a bounded pin or unpin: only its first
    // entries hold references (MMU-35).
    let partial = mm.frame(table).is_some_and(|f| f.is_partial());
    let scanned = match mm.frame(table) {
        Some(f) if partial => f.partial_entries().min(level.guest_slots()),
        _ => level.guest_slots(),
    };
    for i in 0..scanned {
        let value = mem.read_entry(table, i);
        // A device entry the hypervisor installed (IO-0): uncached, no
        // reference, and only in an L1 of the device's driver domain.
        if let Some(t) = mm.rules().target_of(value).filter(|t| mm.is_io(t.mfn)) {
            if level == Level::L1 && owner == Some(Owner::Domain(mm.io_owner(t.mfn).unwrap_or(0))) {
                continue;
            }
            return fail(table, "device frame mapped outside its driver domain's L1");
        }
        let target = match mm.rules().check(level, value) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(_) => return fail(table, "table holds an entry that fails validation"),
        };
        let Some(tf) = mm.frame(target.mfn) else {
            return fail(table, "entry points beyond the frame table");
        };
        if Some(tf.owner()) != owner {
            let granted = level == Level::L1
                && matches!(tf.owner(), Owner::Domain(_))
                && foreign.iter().any(|e| {
                    e.table == table
                        && e.index == i
                        && e.mfn == target.mfn
                        && (e.writable || !target.writable)
                });
            // A page of the table owner's own image, read-only (MEM-2e).
            let shared = level == Level::L1
                && !target.writable
                && match (tf.owner(), owner) {
                    (Owner::Image(img), Some(Owner::Domain(d))) => mm.image_of(d) == Some(img),
                    _ => false,
                };
            if !granted && !shared {
                return fail(target.mfn, "mapped frame not owned by the table's owner");
            }
        }
        match level.below() {
            None if target.writable && tf.frame_type() == FrameType::Special => {
                if !tf.special_writable() {
                    return fail(target.mfn, "read-only special frame mapped writable");
                }
                bump(expected, target.mfn, false)?;
            }
            None if target.writable => {
                if tf.frame_type() != FrameType::Writable {
                    return fail(target.mfn, "writable mapping of a non-writable-typed frame");
                }
                bump(expected, target.mfn, true)?;
            }
            None => bump(expected, target.mfn, false)?,
            Some(_) if level == Level::L4 && target.mfn == table => {
                if target.writable {
                    return fail(table, "writable linear entry");
                }
            }
            Some(below) => {
                if tf.table_level() != Some(below) {
                    return fail(target.mfn, "entry points at a frame of the wrong type");
                }
                // A partial table is referenced only by the last counted
                // entry of its parent in the chain.
                if tf.is_partial() && !(partial && i + 1 == scanned) {
                    return fail(target.mfn, "partial table referenced outside its chain");
                }
                bump(expected, target.mfn, true)?;
            }
        }
    }
    if level == Level::L4 && !partial {
        for (i, v) in mm.hypervisor_slots().iter().enumerate() {
            if i + FIRST_HYPERVISOR_SLOT >= ENTRIES {
                break;
            }
            // The CPU may set A in them; nothing else may change.
            let found = mem.read_entry(table, FIRST_HYPERVISOR_SLOT + i);
            if found & !ACCESSED != *v & !ACCESSED {
                return fail(table, "hypervisor slot differs from the template");
            }
        }
    }
    Ok(())
}
