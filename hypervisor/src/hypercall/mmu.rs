//! The MMU family (`MMU-*`): page-table updates through the validator.

use crate::guestmem::{self, GuestRange};
use crate::hv::Hv;
use crate::hypercall::{EntryFrame, Outcome};
use crate::{arch, mem, time};
use hypercall_abi::mmu::{MmuUpdate, MMU_BATCH_MAX};
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;
use tahoma_core::mm::{BatchError, Budget, Level, Mm, MmError, Owner, Pending, Progress};
use zerocopy::IntoBytes;

/// Validator steps (page-table entries) one `mmu_pin`/`mmu_unpin` does
/// before it restarts itself (MMU-35), and one `mmu_update` call may spend
/// linking and unlinking subtrees (MMU-37): about 0.3 ms under TCG.
const MMU_STEPS: u64 = tahoma_core::mm::OP_STEPS;

/// Length of the `syscall` instruction: a restarted hypercall resumes
/// this many bytes back, on the `syscall` itself (MMU-35).
const SYSCALL_LEN: u64 = 2;

/// Entries of an `mmu_update` batch copied in one go.
const CHUNK: usize = 32;

/// Runs a bounded validator operation for `cur` (MMU-35), the flush it
/// may request is honoured in [`Hv::leave`]. When its budget runs out, the caller's `rip` is moved back
/// onto its `syscall`, with every register as it was, so returning to
/// the guest restarts the call, which continues where this one stopped;
/// if the caller's slice is over, other domains run first.
pub(crate) fn bounded(
    hv: &mut Hv,
    cur: DomId,
    frame: &mut EntryFrame,
    f: impl FnOnce(&mut Mm, DomId, &mut Option<Pending>, &mut Budget) -> Result<Progress, MmError>,
) -> Outcome {
    let Hv {
        domains, memory, ..
    } = hv;
    let (doms, mm) = (&mut domains.slots, &mut memory.mm);
    let Some(d) = doms
        .get_mut(usize::from(cur))
        .and_then(|d| d.as_deref_mut())
    else {
        return Outcome::Return(Err(Error::NotFound));
    };
    let mut budget = Budget::new(MMU_STEPS);
    // The flush it may request is honoured on the way back to the
    // guest (Hv::leave).
    let r = f(mm, cur, &mut d.mm_pending, &mut budget);
    match r {
        Ok(Progress::Done) => Outcome::Return(Ok(0)),
        Err(e) => Outcome::Return(Err(e.into())),
        Ok(Progress::Preempted) => {
            frame.set_rip(frame.rip().wrapping_sub(SYSCALL_LEN));
            if time::now_tsc() >= hv.sched.slice_end
                && !(hv.sched.runq.is_empty() && hv.domains.dying.is_empty())
            {
                hv.switch_away(true);
            }
            Outcome::Replaced
        }
    }
}

/// MMU-22: a batch of updates, read from the guest in chunks.
pub(crate) fn update(hv: &mut Hv, cur: DomId, a: abi::mmu::Update) -> Result<u64, Error> {
    let abi::mmu::Update {
        reqs,
        count,
        done: done_ptr,
    } = a;
    if count > MMU_BATCH_MAX {
        return Err(Error::InvalidArgument);
    }
    let size = core::mem::size_of::<MmuUpdate>() as u64;
    let all = GuestRange::new(reqs, count * size, MMU_BATCH_MAX * size)?;
    // A bad array must apply nothing (MMU-22a). When it lies within one
    // page the first chunk's copy is that check; otherwise check it all
    // before applying any chunk.
    let one_page = count == 0 || reqs >> 12 == (reqs + count * size - 1) >> 12;
    if !one_page || count > 32 {
        guestmem::check(&hv.space(cur)?, all, false)?;
    }
    if done_ptr != 0 {
        guestmem::check(&hv.space(cur)?, GuestRange::new(done_ptr, 8, 8)?, true)?;
    }
    let mut chunk = [MmuUpdate::default(); CHUNK];
    // One step budget for the whole call (MMU-37, MMU-38).
    let mut budget = Budget::new(MMU_STEPS);
    let mut done = 0u64;
    let mut result = Ok(count);
    while done < count {
        let n = (count - done).min(chunk.len() as u64);
        let range = GuestRange::new(reqs + done * size, n * size, MMU_BATCH_MAX * size)?;
        // `n` is at most the chunk's length.
        let buf = &mut chunk[..usize::try_from(n).unwrap_or(CHUNK)];
        // The batch may have unmapped its own later entries: that
        // stops it like any refused entry.
        if let Err(e) = guestmem::copy_from(&hv.space(cur)?, range, buf.as_mut_bytes()) {
            result = Err(e);
            break;
        }
        let updates = buf.iter().map(|u| (u.ptr, u.val));
        match hv
            .memory
            .mm
            .mmu_update_within(&mut mem::DirectMap, cur, updates, &mut budget)
        {
            Ok(k) => done += k as u64,
            Err(BatchError { index, error }) => {
                done += index as u64;
                result = Err(error.into());
                break;
            }
        }
    }
    // MMU-30: `*done` is written or the call fails. It was writable
    // when checked above, but the batch may have taken that away.
    if done_ptr != 0 && guestmem::write(&hv.space(cur)?, done_ptr, &done).is_err() {
        return Err(Error::BadAddress);
    }
    result
}

/// MMU-25: load another pinned L4.
pub(crate) fn switch_root(hv: &mut Hv, cur: DomId, a: abi::mmu::SwitchRoot) -> Result<u64, Error> {
    let l4 = a.mfn;
    let Hv {
        domains, memory, ..
    } = hv;
    let (doms, mm) = (&mut domains.slots, &mut memory.mm);
    let d = doms
        .get_mut(usize::from(cur))
        .and_then(|d| d.as_deref_mut())
        .ok_or(Error::NotFound)?;
    let cr3 = mm.switch_root(&mut d.space, l4)?;
    d.root = cr3;
    // SAFETY: a validated L4 carries the hypervisor's slots (MMU-3).
    unsafe { arch::load_root(cr3) };
    hv.memory.loaded_root = cr3;
    hv.memory.mm.note_tlb_flushed();
    Ok(0)
}

/// MMU-28: the fast path for one leaf in the loaded address space.
///
/// Inline into its route: the page-fault path's one call (a handler of its
/// own cost ~40 instructions of moves, spills and a result through memory).
#[inline(always)]
pub(crate) fn update_va_mapping(
    hv: &mut Hv,
    cur: DomId,
    a: abi::mmu::UpdateVaMapping,
) -> Result<u64, Error> {
    let abi::mmu::UpdateVaMapping { va, val, invlpg } = a;
    // The caller's loaded address space: the root the CPU runs on, which
    // `Hv::load` and `switch_root` keep equal to the current domain's
    // `root` (no look-up of the domain).
    debug_assert_eq!(
        hv.space(cur).map(|s| s.root).ok(),
        Some(hv.memory.loaded_root)
    );
    let root = hv.memory.loaded_root >> 12;
    let r = hv
        .memory
        .mm
        .update_va_mapping(&mut mem::DirectMap, cur, root, va, val);
    if r.is_ok() && invlpg {
        arch::invlpg(va);
    }
    r.map(|()| 0).map_err(Error::from)
}

/// MMU-29: the frame table's record of one of the caller's frames.
pub(crate) fn frame_info(hv: &mut Hv, cur: DomId, a: abi::mmu::FrameInfo) -> Result<u64, Error> {
    let abi::mmu::FrameInfo { mfn, out } = a;
    use hypercall_abi::mmu::{FrameRecord, FRAME_HELD, FRAME_LOADED, FRAME_PARTIAL, FRAME_PINNED};
    let f = hv.memory.mm.frame(mfn).ok_or(Error::PermissionDenied)?;
    if f.owner() != Owner::Domain(cur) {
        return Err(Error::PermissionDenied);
    }
    let info = FrameRecord {
        // The frame table's type is the ABI's enum (MMU-1).
        page_type: f.frame_type() as u32,
        flags: if f.pinned() { FRAME_PINNED } else { 0 }
            | if f.loaded() > 0 { FRAME_LOADED } else { 0 }
            | if f.held() > 0 { FRAME_HELD } else { 0 }
            | if f.is_partial() { FRAME_PARTIAL } else { 0 },
        type_count: u64::from(f.type_count()),
        total_count: u64::from(f.total_count()),
    };
    guestmem::write(&hv.space(cur)?, out, &info)?;
    Ok(0)
}

/// MMU-23: validates and pins a table, a bounded step at a time.
pub(crate) fn pin(hv: &mut Hv, cur: DomId, a: abi::mmu::Pin, frame: &mut EntryFrame) -> Outcome {
    bounded(hv, cur, frame, |mm, dom, pending, budget| {
        let level = Level::from_number(a.level)?;
        mm.pin_bounded(&mut mem::DirectMap, dom, a.mfn, level, pending, budget)
    })
}

/// MMU-24: unpins a table, a bounded step at a time.
pub(crate) fn unpin(
    hv: &mut Hv,
    cur: DomId,
    a: abi::mmu::Unpin,
    frame: &mut EntryFrame,
) -> Outcome {
    bounded(hv, cur, frame, |mm, dom, pending, budget| {
        mm.unpin_bounded(&mut mem::DirectMap, dom, a.mfn, pending, budget)
    })
}

/// MMU-26: the address was checked by the decode.
pub(crate) fn invlpg(_hv: &mut Hv, _cur: DomId, a: abi::mmu::Invlpg) -> Result<u64, Error> {
    arch::invlpg(a.va);
    Ok(0)
}

/// MMU-27: flushes the caller's TLB entries by reloading the loaded root.
pub(crate) fn flush_tlb(hv: &mut Hv, _cur: DomId, a: abi::mmu::FlushTlb) -> Result<u64, Error> {
    let abi::mmu::FlushTlb {} = a;
    // SAFETY: `loaded_root` is the root the CPU runs on, a validated L4
    // that carries the hypervisor's slots (MMU-3), so reloading it keeps
    // this code mapped.
    unsafe { arch::load_root(hv.memory.loaded_root) };
    hv.memory.mm.note_tlb_flushed();
    Ok(0)
}
