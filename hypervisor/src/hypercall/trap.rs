//! The trap and upcall family (`TRAP-*`).
#![forbid(unsafe_code)]

use crate::arch::cpu::{USER_CS, USER_SS};
use crate::arch::traps::TrapFrame;
use crate::domain;
use crate::guestmem::Space;
use crate::hv::Hv;
use crate::hypercall::Outcome;
use hypercall_abi::layout::{UpcallFrame, UpcallKind, GUEST_VA_TOP, RFLAGS_GUEST_MASK, RFLAGS_IF};
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;

/// TRAP-1: the addresses were checked by the decode.
pub(crate) fn set_callbacks(
    hv: &mut Hv,
    cur: DomId,
    a: abi::trap::SetCallbacks,
) -> Result<u64, Error> {
    let abi::trap::SetCallbacks { event, trap, stack } = a;
    let d = hv.dom(cur).ok_or(Error::NotFound)?;
    d.callbacks = domain::Callbacks { event, trap, stack };
    hv.note_upcall_entry(cur);
    Ok(0)
}

/// TRAP-2. Inline: into the stub exit's `tahoma_upcall_return` (one
/// prologue for the call and its restore) and the slow entry's.
#[inline(always)]
pub(crate) fn upcall_return(
    hv: &mut Hv,
    cur: DomId,
    a: abi::trap::UpcallReturn,
    frame: &mut TrapFrame,
) -> Outcome {
    match restore(hv, cur, a.frame, frame) {
        Ok(()) => Outcome::Replaced,
        Err(e) => Outcome::Return(Err(e)),
    }
}

/// Replaces `frame` with the saved frame at `ptr`, checked (TRAP-2). The
/// frame is guest memory: each word is loaded once; the words the checks
/// look at (`kind`, `rip`, `rsp`, `rflags`) are checked as loaded and the
/// checked values are the ones used (another CPU writing the guest's page
/// meanwhile cannot slip a value past a check); `frame` and the domain
/// change only when every check passed.
///
/// The common case inline ([`restore_hot`], a slot of an older table
/// generation re-checked), anything else in [`restore_full`], which does
/// it all from the start, so the hot path keeps no value across a call
/// (docs/bench-history/issue-13-fast-paths.md, "SDK upcalls, round 7").
#[inline(always)]
fn restore(hv: &mut Hv, cur: DomId, ptr: u64, frame: &mut TrapFrame) -> Result<(), Error> {
    if restore_hot::<true, _>(hv, cur, ptr, || &mut *frame) {
        return Ok(());
    }
    restore_full(hv, cur, ptr, frame)
}

/// [`restore`]'s common case, with no call (but the cold re-check of a
/// slot of an older table generation when `RECHECK`; without it such a
/// slot is a miss): the frame within one page whose remembered
/// translation is current (`Remembered::current`, the page the upcall
/// wrote), its words moved straight from the guest's page into the
/// `TrapFrame`. True when it restored; false, with nothing changed
/// (neither `frame` nor the domain), for everything else, which the
/// caller hands to [`restore_full`] (a refusal included: this never
/// refuses). The fast `upcall_return` calls it with `RECHECK` false
/// (`tahoma_upcall_return_hot`: no call, so no callee-saved register).
/// `frame` gives the frame to restore into, asked for only once every
/// check passed (so that its address is not kept in a register through
/// them).
#[inline(always)]
pub(crate) fn restore_hot<'f, const RECHECK: bool, F: FnOnce() -> &'f mut TrapFrame>(
    hv: &mut Hv,
    cur: DomId,
    ptr: u64,
    frame: F,
) -> bool {
    // Disjoint fields: the domain, the frame table, the translations.
    let Some(d) = hv
        .domains
        .slots
        .get_mut(usize::from(cur))
        .and_then(|d| d.as_deref_mut())
    else {
        return false;
    };
    let space = Space {
        root: d.root,
        dom: cur,
        mm: &hv.memory.mm,
    };
    // Three tests, not one `||` (which the compiler made branch-free, with
    // a register for each part).
    if !ptr.is_multiple_of(8) {
        return false;
    }
    if ptr >> 47 != 0 {
        core::hint::cold_path();
        return false;
    }
    if ptr & 0xfff > 4096 - FRAME_BYTES {
        core::hint::cold_path();
        return false;
    }
    let page = if RECHECK {
        hv.remembered.current(&space, ptr)
    } else {
        hv.remembered.current_no_recheck(&space, ptr)
    };
    let Some(w) = page.and_then(|page| page.words::<FRAME_WORDS>(ptr & 0xfff)) else {
        return false;
    };
    let (kind, rip, rsp) = (w.get(0), w.get(19), w.get(20));
    if kind > 1 {
        return false;
    }
    // `rip < GUEST_VA_TOP && rsp < GUEST_VA_TOP` as one test (the limit a
    // power of two), with no register for the limit.
    const _: () = assert!(GUEST_VA_TOP == 1 << 47);
    if (rip | rsp) >> 47 != 0 {
        return false;
    }
    // Last, so that the depth is not kept in a register through the tests
    // above (the order of tests that only decline does not matter).
    if d.upcall_depth == 0 {
        return false;
    }
    // Field by field, each word loaded and stored at once (a struct
    // literal loaded all 22 volatile words first and spilled half of
    // them); `rflags`, which no check looks at, only now.
    let frame = frame();
    frame.rip = rip;
    frame.rsp = rsp;
    frame.rflags = (w.get(21) & RFLAGS_GUEST_MASK) | RFLAGS_IF | 0x2;
    frame.cs = u64::from(USER_CS);
    frame.ss = u64::from(USER_SS);
    frame.vector = 0;
    frame.error_code = 0;
    frame.rax = w.get(4);
    frame.rbx = w.get(5);
    frame.rcx = w.get(6);
    frame.rdx = w.get(7);
    frame.rsi = w.get(8);
    frame.rdi = w.get(9);
    frame.rbp = w.get(10);
    frame.r8 = w.get(11);
    frame.r9 = w.get(12);
    frame.r10 = w.get(13);
    frame.r11 = w.get(14);
    frame.r12 = w.get(15);
    frame.r13 = w.get(16);
    frame.r14 = w.get(17);
    frame.r15 = w.get(18);
    d.upcall_depth -= 1;
    if kind == UpcallKind::Event as u64 {
        d.shared.set_upcall_mask(false);
    }
    true
}

/// [`restore`] in full: the frame read through `Remembered::read` (a slot
/// re-checked, or a walk), every refusal with its error.
#[cold]
#[inline(never)]
fn restore_full(hv: &mut Hv, cur: DomId, ptr: u64, frame: &mut TrapFrame) -> Result<(), Error> {
    // Disjoint fields: the domain, the frame table, the translations.
    let d = hv
        .domains
        .slots
        .get_mut(usize::from(cur))
        .and_then(|d| d.as_deref_mut())
        .ok_or(Error::NotFound)?;
    if d.upcall_depth == 0 {
        return Err(Error::WrongState);
    }
    let space = Space {
        root: d.root,
        dom: cur,
        mm: &hv.memory.mm,
    };
    let uf: UpcallFrame = hv.remembered.read(&space, ptr)?;
    let kind = match uf.kind {
        0 => UpcallKind::Event,
        1 => UpcallKind::Trap,
        _ => return Err(Error::InvalidArgument),
    };
    if uf.rip >= GUEST_VA_TOP || uf.rsp >= GUEST_VA_TOP {
        return Err(Error::InvalidArgument);
    }
    *frame = TrapFrame {
        r15: uf.r15,
        r14: uf.r14,
        r13: uf.r13,
        r12: uf.r12,
        r11: uf.r11,
        r10: uf.r10,
        r9: uf.r9,
        r8: uf.r8,
        rbp: uf.rbp,
        rdi: uf.rdi,
        rsi: uf.rsi,
        rdx: uf.rdx,
        rcx: uf.rcx,
        rbx: uf.rbx,
        rax: uf.rax,
        vector: 0,
        error_code: 0,
        rip: uf.rip,
        cs: u64::from(USER_CS),
        rflags: (uf.rflags & RFLAGS_GUEST_MASK) | RFLAGS_IF | 0x2,
        rsp: uf.rsp,
        ss: u64::from(USER_SS),
    };
    d.upcall_depth -= 1;
    if kind == UpcallKind::Event {
        d.shared.set_upcall_mask(false);
    }
    Ok(())
}

/// The words of an `UpcallFrame` (the layout `hv::delivery` checks).
const FRAME_WORDS: usize = 22;

/// Its size in bytes.
const FRAME_BYTES: u64 = 8 * FRAME_WORDS as u64;

// `restore` reads an `UpcallFrame` as 22 words in field order.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<UpcallFrame>() == 8 * FRAME_WORDS);
    assert!(offset_of!(UpcallFrame, kind) == 0);
    assert!(offset_of!(UpcallFrame, rax) == 4 * 8);
    assert!(offset_of!(UpcallFrame, rbx) == 5 * 8);
    assert!(offset_of!(UpcallFrame, rcx) == 6 * 8);
    assert!(offset_of!(UpcallFrame, rdx) == 7 * 8);
    assert!(offset_of!(UpcallFrame, rsi) == 8 * 8);
    assert!(offset_of!(UpcallFrame, rdi) == 9 * 8);
    assert!(offset_of!(UpcallFrame, rbp) == 10 * 8);
    assert!(offset_of!(UpcallFrame, r8) == 11 * 8);
    assert!(offset_of!(UpcallFrame, r9) == 12 * 8);
    assert!(offset_of!(UpcallFrame, r10) == 13 * 8);
    assert!(offset_of!(UpcallFrame, r11) == 14 * 8);
    assert!(offset_of!(UpcallFrame, r12) == 15 * 8);
    assert!(offset_of!(UpcallFrame, r13) == 16 * 8);
    assert!(offset_of!(UpcallFrame, r14) == 17 * 8);
    assert!(offset_of!(UpcallFrame, r15) == 18 * 8);
    assert!(offset_of!(UpcallFrame, rip) == 19 * 8);
    assert!(offset_of!(UpcallFrame, rsp) == 20 * 8);
    assert!(offset_of!(UpcallFrame, rflags) == 21 * 8);
};
