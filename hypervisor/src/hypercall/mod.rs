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

use crate::arch::syscall::{FastHandler, FastRoutes, FAST_ROUTED};
use crate::arch::traps::TrapFrame;
use crate::console::Quoted;
use crate::hv::{Hv, HV};
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

/// Counts a hypercall of the current domain (reported at its exit:
/// `Scheduler::calls` is added to its `Domain::hypercalls` when it stops
/// running) and reports its first: while it is due, the fast path is not
/// allowed (`Scheduler::fast_routes` is the empty table).
#[inline(always)]
pub(crate) fn count(hv: &mut Hv) {
    hv.sched.calls += 1;
    if core::ptr::eq(hv.sched.fast_routes, &NO_FAST_ROUTES) {
        first_hypercall(hv);
    }
}

/// Runs the call in `frame` (counting it first if `uncounted`: the fast
/// entry may already have) and writes its result into `frame.rax` unless
/// it replaced the frame.
pub(crate) fn entry(hv: &mut Hv, frame: &mut TrapFrame, uncounted: bool) {
    let Some(cur) = hv.sched.current else { return };
    if uncounted {
        count(hv);
    }
    match returning_handler(frame.rax) {
        Some(f) => frame.rax = f(hv, cur, frame),
        None => {
            if let Outcome::Return(r) = dispatch_frame(hv, cur, frame) {
                frame.rax = regs::encode(r);
            }
        }
    }
}

/// The argument words of the call in `frame` (CALL-1).
#[inline(always)]
fn words(frame: &TrapFrame) -> Words {
    [
        frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8, frame.r9,
    ]
}

/// Decodes the arguments of a call that may replace the caller's frame
/// (a switch, an upcall return, a restart) with the family module's type
/// and runs its handler.
fn dispatch_frame(hv: &mut Hv, cur: DomId, frame: &mut TrapFrame) -> Outcome {
    use Hypercall as H;
    let w = words(frame);
    match Hypercall::from_number(frame.rax) {
        Some(H::Yield) => with_frame(hv, cur, w, frame, sched::yield_now),
        Some(H::Block) => with_frame(hv, cur, w, frame, sched::block),
        Some(H::Shutdown) => with_frame(hv, cur, w, frame, sched::shutdown),
        Some(H::UpcallReturn) => with_frame(hv, cur, w, frame, trap::upcall_return),
        Some(H::MmuPin) => with_frame(hv, cur, w, frame, mmu::pin),
        Some(H::MmuUnpin) => with_frame(hv, cur, w, frame, mmu::unpin),
        // `returning_handler` has every other number.
        _ => Outcome::Return(Err(Error::NoSuchCall)),
    }
}

/// A call that only returns a result: it reads the caller's argument
/// registers from the frame, never changes the frame, and returns the
/// result word (CALL-2).
pub(crate) type Handler = fn(&mut Hv, DomId, &TrapFrame) -> u64;

/// Wraps `f` as a [`Handler`] and a [`FastHandler`]: one function per
/// call, so that the entry calls it through a table and pays only for the
/// registers that call uses (a `match` inlining every handler into the
/// entry made every hypercall save them all).
///
/// The fast one is what the `syscall` stub calls (`arch::syscall`), with
/// the argument words in registers: it takes the hypervisor itself, counts
/// the call, runs it, and does a TLB flush the validator asked for (MMU-20;
/// the stub makes the other "work pending" tests).
macro_rules! handler {
    ($f:path) => {{
        fn call(hv: &mut Hv, cur: DomId, frame: &TrapFrame) -> u64 {
            regs::encode(returning(hv, cur, words(frame), $f))
        }
        extern "C" fn fast(a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> u64 {
            // SAFETY: called only by the `syscall` stub (an entry from ring
            // 3, interrupts off, no other reference to the cell live),
            // through `FAST_ROUTES`, which `Scheduler::fast_routes` names
            // only while a domain is current: after `install`.
            let hv = unsafe { HV.get_installed() };
            // SAFETY: `Scheduler::fast_routes` names `FAST_ROUTES` only
            // while `current` is `Some`: it is set so where `run_next`
            // sets `current` and by `first_hypercall` (which tests it),
            // and reset to the empty table wherever `current` is cleared
            // (`switch_away`, `destroy`). A fast handler never clears it.
            let cur = unsafe { hv.sched.current.unwrap_unchecked() };
            hv.sched.calls += 1;
            let r = regs::encode(returning(hv, cur, [a0, a1, a2, a3, a4, a5], $f));
            hv.flush_if_requested();
            r
        }
        (call as Handler, fast as FastHandler)
    }};
}

fn no_such_call(_: &mut Hv, _: DomId, _: &TrapFrame) -> u64 {
    regs::encode(Err(Error::NoSuchCall))
}

extern "C" fn fast_no_such_call(_: u64, _: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    // SAFETY: as for `handler!`'s fast handlers: the stub's call, routes
    // allowed only after `install`.
    let hv = unsafe { HV.get_installed() };
    hv.sched.calls += 1;
    regs::encode(Err(Error::NoSuchCall))
}

/// Numbers below this are routed through [`ROUTES`] and [`FAST_ROUTES`];
/// every defined number is (checked at compile time).
const ROUTED: usize = FAST_ROUTED;

const _: () = {
    let mut i = 0;
    while i < Hypercall::ALL.len() {
        assert!(Hypercall::ALL[i].number() < ROUTED as u64);
        i += 1;
    }
};

/// [`route`] for every number below [`ROUTED`], computed at compile time:
/// the slow entry finds a call's handler with one bounds check and one load.
static ROUTES: [Option<Handler>; ROUTED] = {
    let mut t: [Option<Handler>; ROUTED] = [None; ROUTED];
    let mut i = 0;
    while i < ROUTED {
        t[i] = match route(i as u64) {
            Some((h, _)) => Some(h),
            None => None,
        };
        i += 1;
    }
    t
};

/// The fast handlers of the same calls, which the `syscall` stub indexes
/// while the fast path is allowed (`Scheduler::fast_routes`); `None` for
/// the calls that may replace the caller's frame, which go the slow way.
pub(crate) static FAST_ROUTES: FastRoutes = {
    let mut t: FastRoutes = [None; ROUTED];
    let mut i = 0;
    while i < ROUTED {
        t[i] = match route(i as u64) {
            Some((_, f)) => Some(f),
            None => None,
        };
        i += 1;
    }
    t
};

/// No fast handler at all: what `Scheduler::fast_routes` names while the
/// fast path is not allowed (every call goes the slow way).
pub(crate) static NO_FAST_ROUTES: FastRoutes = [None; ROUTED];

/// The table `Scheduler::fast_routes` names: [`FAST_ROUTES`] if `allowed`.
#[inline(always)]
pub(crate) fn fast_routes(allowed: bool) -> &'static FastRoutes {
    if allowed {
        &FAST_ROUTES
    } else {
        &NO_FAST_ROUTES
    }
}

/// The handler of call number `nr` if it only returns a result (an
/// undefined number's returns `no_such_call`, CALL-1a); `None` for the
/// calls that may replace the caller's frame ([`dispatch_frame`]). Each
/// handler decodes its arguments with the family module's type
/// (`hypercall_abi::<family>`), which refuses out-of-range words with the
/// documented error before any state is looked at, and runs the family's
/// handler (`hypercall::<family>`).
#[inline(always)]
pub(crate) fn returning_handler(nr: u64) -> Option<Handler> {
    match ROUTES.get(usize::try_from(nr).unwrap_or(usize::MAX)) {
        Some(r) => *r,
        None => Some(no_such_call),
    }
}

/// [`returning_handler`] and the fast handler, computed (for [`ROUTES`]
/// and [`FAST_ROUTES`]).
const fn route(nr: u64) -> Option<(Handler, FastHandler)> {
    use Hypercall as H;
    let Some(h) = Hypercall::from_number(nr) else {
        return Some((no_such_call, fast_no_such_call));
    };
    Some(match h {
        H::AbiVersion => handler!(base::abi_version),
        H::ConsoleWrite => handler!(console::write),
        H::TimerSet => handler!(time::timer_set),
        H::EventAllocUnbound => handler!(event::alloc_unbound),
        H::EventBindInterdomain => handler!(event::bind_interdomain),
        H::EventBindVirq => handler!(event::bind_virq),
        H::EventSend => handler!(event::send),
        H::EventClose => handler!(event::close),
        H::EventUnmask => handler!(event::unmask),
        H::SetCallbacks => handler!(trap::set_callbacks),
        H::MmuUpdate => handler!(mmu::update),
        H::MmuSwitchRoot => handler!(mmu::switch_root),
        H::MmuInvlpg => handler!(mmu::invlpg),
        H::MmuFlushTlb => handler!(mmu::flush_tlb),
        H::UpdateVaMapping => handler!(mmu::update_va_mapping),
        H::MmuFrameInfo => handler!(mmu::frame_info),
        H::MemoryPopulate => handler!(memory::populate),
        H::MemoryRelease => handler!(memory::release),
        H::MemoryInfo => handler!(memory::info),
        H::GrantAccess => handler!(grant::access),
        H::GrantRevoke => handler!(grant::revoke),
        H::GrantMap => handler!(grant::map),
        H::GrantUnmap => handler!(grant::unmap),
        H::GrantCopy => handler!(grant::copy),
        H::IoIrqAck => handler!(io::irq_ack),
        H::Yield | H::Block | H::Shutdown | H::UpcallReturn | H::MmuPin | H::MmuUnpin => {
            return None
        }
    })
}

/// Runs a handler that returns a result to the caller.
#[inline(always)]
fn returning<T: Call>(
    hv: &mut Hv,
    cur: DomId,
    w: Words,
    f: impl FnOnce(&mut Hv, DomId, T) -> Result<u64, Error>,
) -> Result<u64, Error> {
    T::decode(w).and_then(|a| f(hv, cur, a))
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
#[inline(never)]
fn first_hypercall(hv: &mut Hv) {
    if hv.sched.current.is_some() {
        hv.sched.fast_routes = &FAST_ROUTES;
    }
    let Some(d) = hv.sched.current.and_then(|c| hv.dom(c)) else {
        return;
    };
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
