//! The hypercall entry: decodes the call and its arguments
//! (`hypercall_abi::<family>`), routes to the family's handler file
//! (`hypercall/<family>.rs`), and encodes the result into `rax`.
//!
//! Names go straight through: `Hypercall::EventSend` is decoded as
//! `hypercall_abi::event::Send` and handled in [`event`].
// Guest-controlled words are narrowed only by checked conversions.
#![deny(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

pub(crate) mod base;
pub(crate) mod console;
pub(crate) mod event;
pub(crate) mod grant;
pub(crate) mod io;
pub(crate) mod memory;
pub(crate) mod mmu;
pub(crate) mod sched;
pub(crate) mod time;
pub(crate) mod trap;

use crate::arch::traps::TrapFrame;
use crate::console::Quoted;
use crate::domain::Domain;
use crate::hv::Hv;
use crate::{report, time as clock};
use hypercall_abi::{regs, Call, Error, Hypercall, Words};
use tahoma_core::event::DomId;

/// What a hypercall did to the caller's frame.
pub(crate) enum Outcome {
    /// Return this result to the caller.
    Return(Result<u64, Error>),
    /// The frame now holds another context (a switch, or an upcall return).
    Replaced,
}

pub(crate) fn entry(hv: &mut Hv, frame: &mut TrapFrame) {
    let Some(cur) = hv.sched.current else { return };
    if let Some(d) = hv.dom(cur) {
        if d.hypercalls == 0 {
            first_hypercall(d);
        }
        d.hypercalls += 1;
    }
    let a = [
        frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8, frame.r9,
    ];
    let outcome = match Hypercall::from_number(frame.rax) {
        None => Outcome::Return(Err(Error::NoSuchCall)),
        Some(h) => dispatch(hv, cur, h, a, frame),
    };
    if let Outcome::Return(r) = outcome {
        frame.rax = regs::encode(r);
    }
}

/// Decodes `h`'s arguments from `w` with the family module's type
/// (`hypercall_abi::<family>`), which refuses out-of-range words with the
/// documented error before any state is looked at, and runs the family's
/// handler (`hypercall::<family>`).
pub(crate) fn dispatch(
    hv: &mut Hv,
    cur: DomId,
    h: Hypercall,
    w: Words,
    frame: &mut TrapFrame,
) -> Outcome {
    use Hypercall as H;
    match h {
        H::AbiVersion => returning(hv, cur, w, base::abi_version),
        H::ConsoleWrite => returning(hv, cur, w, console::write),
        H::Yield => with_frame(hv, cur, w, frame, sched::yield_now),
        H::Block => with_frame(hv, cur, w, frame, sched::block),
        H::Shutdown => with_frame(hv, cur, w, frame, sched::shutdown),
        H::TimerSet => returning(hv, cur, w, time::timer_set),
        H::EventAllocUnbound => returning(hv, cur, w, event::alloc_unbound),
        H::EventBindInterdomain => returning(hv, cur, w, event::bind_interdomain),
        H::EventBindVirq => returning(hv, cur, w, event::bind_virq),
        H::EventSend => returning(hv, cur, w, event::send),
        H::EventClose => returning(hv, cur, w, event::close),
        H::EventUnmask => returning(hv, cur, w, event::unmask),
        H::SetCallbacks => returning(hv, cur, w, trap::set_callbacks),
        H::UpcallReturn => with_frame(hv, cur, w, frame, trap::upcall_return),
        H::MmuUpdate => returning(hv, cur, w, mmu::update),
        H::MmuPin => with_frame(hv, cur, w, frame, mmu::pin),
        H::MmuUnpin => with_frame(hv, cur, w, frame, mmu::unpin),
        H::MmuSwitchRoot => returning(hv, cur, w, mmu::switch_root),
        H::MmuInvlpg => returning(hv, cur, w, mmu::invlpg),
        H::MmuFlushTlb => returning(hv, cur, w, mmu::flush_tlb),
        H::UpdateVaMapping => returning(hv, cur, w, mmu::update_va_mapping),
        H::MmuFrameInfo => returning(hv, cur, w, mmu::frame_info),
        H::MemoryPopulate => returning(hv, cur, w, memory::populate),
        H::MemoryRelease => returning(hv, cur, w, memory::release),
        H::MemoryInfo => returning(hv, cur, w, memory::info),
        H::GrantAccess => returning(hv, cur, w, grant::access),
        H::GrantRevoke => returning(hv, cur, w, grant::revoke),
        H::GrantMap => returning(hv, cur, w, grant::map),
        H::GrantUnmap => returning(hv, cur, w, grant::unmap),
        H::GrantCopy => returning(hv, cur, w, grant::copy),
        H::IoIrqAck => returning(hv, cur, w, io::irq_ack),
    }
}

/// Runs a handler that returns a result to the caller.
#[inline(always)]
fn returning<T: Call>(
    hv: &mut Hv,
    cur: DomId,
    w: Words,
    f: impl FnOnce(&mut Hv, DomId, T) -> Result<u64, Error>,
) -> Outcome {
    Outcome::Return(T::decode(w).and_then(|a| f(hv, cur, a)))
}

/// Runs a handler that may replace the caller's frame (a switch, an upcall
/// return, a restart).
#[inline(always)]
fn with_frame<T: Call>(
    hv: &mut Hv,
    cur: DomId,
    w: Words,
    frame: &mut TrapFrame,
    f: impl FnOnce(&mut Hv, DomId, T, &mut TrapFrame) -> Outcome,
) -> Outcome {
    match T::decode(w) {
        Ok(a) => f(hv, cur, a, frame),
        Err(e) => Outcome::Return(Err(e)),
    }
}

/// Reports how long the domain took from the start of its build to its
/// first hypercall, in TSC ticks (instructions under `-icount shift=0`).
#[cold]
fn first_hypercall(d: &Domain) {
    let now = clock::now_tsc();
    let run = d.first_run_at.unwrap_or(now);
    report!(
        "domain-first-hypercall",
        "id={} name={} build_ticks={} run_ticks={} total_ticks={}",
        d.id,
        Quoted(&d.name),
        run.saturating_sub(d.built_at),
        now.saturating_sub(run),
        now.saturating_sub(d.built_at)
    );
}
