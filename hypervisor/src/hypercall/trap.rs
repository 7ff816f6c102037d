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
/// frame is guest memory: copied once (through the remembered translation
/// of the page the upcall wrote, when it is still valid: TRAP-0d), then
/// checked; `frame` and the domain change only when every check passed.
fn restore(hv: &mut Hv, cur: DomId, ptr: u64, frame: &mut TrapFrame) -> Result<(), Error> {
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
