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

use crate::arch::syscall::{
    FastHandler, FastRoutes, FAST_ROUTED, UPCALL_RETURN_DONE, UPCALL_RETURN_FULL,
    UPCALL_RETURN_LEAVE,
};
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

/// The calling domain's frame as the entry saved it (its own
/// `Domain::ctx`, saved in place), held by address through a call that may
/// switch domains.
///
/// The borrow argument (`docs/architecture.md`, "The frame across a
/// switch"): a switch makes another frame current, and `Hv::load` hands
/// the CPU a shared reference to that domain's slot while a wake writes a
/// blocked domain's `rax` through its pointer, so a `&mut TrapFrame` held
/// across a switch (a function argument is held for the whole call) could
/// alias a frame the switch touches, or one the teardown frees. So the
/// calls that may switch get this instead: each accessor reads or writes
/// one field through the raw pointer and makes no reference, and
/// [`EntryFrame::with`] lends a `&mut` only for a closure that does not
/// switch. Every access happens before the call's switch (the handlers
/// write their result first); after it the frame may be another domain's
/// current one, or a destroyed domain's.
pub(crate) struct EntryFrame(*mut TrapFrame);

impl EntryFrame {
    /// # Safety
    /// `frame` is the current domain's frame as the entry from ring 3
    /// saved it (live while the domain is, and for the rest of the entry
    /// if it is destroyed in it: `Scheduler::retired`), and no reference
    /// into it is live.
    #[inline(always)]
    pub(crate) unsafe fn new(frame: *mut TrapFrame) -> Self {
        EntryFrame(frame)
    }

    /// The saved `rax`: the call number, until the result replaces it.
    #[inline(always)]
    pub(crate) fn rax(&self) -> u64 {
        // SAFETY: a live frame (see `new`), read by value, no reference.
        unsafe { (*self.0).rax }
    }

    /// Writes the caller's result (its `rax` on return).
    #[inline(always)]
    pub(crate) fn set_rax(&mut self, v: u64) {
        // SAFETY: a live frame (see `new`), one field written through the
        // pointer, no reference.
        unsafe { (*self.0).rax = v };
    }

    /// The first argument register (`rdi`, CALL-1).
    #[inline(always)]
    pub(crate) fn rdi(&self) -> u64 {
        // SAFETY: as for `rax`.
        unsafe { (*self.0).rdi }
    }

    /// The caller's `rip` (after its `syscall`).
    #[inline(always)]
    pub(crate) fn rip(&self) -> u64 {
        // SAFETY: as for `rax`.
        unsafe { (*self.0).rip }
    }

    /// Moves the caller's `rip` (a restart, MMU-35).
    #[inline(always)]
    pub(crate) fn set_rip(&mut self, v: u64) {
        // SAFETY: as for `set_rax`.
        unsafe { (*self.0).rip = v };
    }

    /// Lends the frame to `f`, which must not switch domains (it cannot
    /// reach `Hv` through this; the caller does not pass it one that
    /// switches): the reference ends when `f` returns.
    #[inline(always)]
    pub(crate) fn with<R>(&mut self, f: impl FnOnce(&mut TrapFrame) -> R) -> R {
        // SAFETY: a live frame (see `new`) with no other reference into it
        // (`EntryFrame` makes none that outlives its methods, and `&mut
        // self` rules out a second `with`); this one lives for `f` alone.
        f(unsafe { &mut *self.0 })
    }
}

/// Runs the call in `frame` (counting it first if `uncounted`: the fast
/// entry may already have; the count is reported at the domain's exit,
/// `Scheduler::calls` being added to its `Domain::hypercalls` when it stops
/// running, and its first call is reported now) and writes its result into
/// the frame's `rax` unless it replaced the frame.
///
/// `yield` and `block`, the calls that switch, are tested first and run
/// without the route or a decode (neither can refuse its arguments:
/// SCHED-1, SCHED-2d); then `upcall_return`, the slow call every upcall
/// ends with; everything else goes on out of line.
#[inline(always)]
pub(crate) fn entry(hv: &mut Hv, frame: EntryFrame, uncounted: bool) {
    let Some(cur) = hv.sched.current else { return };
    // The fast path is not allowed until the first call is reported.
    if uncounted && core::ptr::eq(hv.sched.fast_routes, &NO_FAST_ROUTES) {
        // Out of line with the rest of the call, so that no path here
        // keeps anything in callee-saved registers across a call.
        return first_call(hv, cur, frame);
    }
    counted(hv, cur, frame, u64::from(uncounted));
}

/// [`entry`] of a domain's first hypercall: reported, then run.
#[cold]
#[inline(never)]
fn first_call(hv: &mut Hv, cur: DomId, frame: EntryFrame) {
    first_hypercall(hv);
    counted(hv, cur, frame, 1);
}

/// [`entry`] once the first-call test passed; `uncounted` (0 or 1) is
/// added to `Scheduler::calls` here (by `block` with its switch).
#[inline(always)]
fn counted(hv: &mut Hv, cur: DomId, frame: EntryFrame, uncounted: u64) {
    let nr = frame.rax();
    if nr == Hypercall::Yield.number() {
        hv.sched.calls += uncounted;
        return sched::yield_now(hv, frame);
    }
    if nr == Hypercall::Block.number() {
        let deadline_ns = frame.rdi();
        return sched::block(hv, cur, deadline_ns, frame, uncounted);
    }
    hv.sched.calls += uncounted;
    if nr == Hypercall::UpcallReturn.number() {
        // Tested after the switching pair (LLVM would test it first).
        core::hint::cold_path();
        return upcall_return(hv, cur, frame);
    }
    other(hv, cur, frame);
}

/// `upcall_return` (TRAP-2), out of line on its own: no route, no
/// `dispatch_frame` (every reflected trap and event upcall ends here).
/// It does not switch: the frame is lent to it for the call.
#[inline(never)]
fn upcall_return(hv: &mut Hv, cur: DomId, mut frame: EntryFrame) {
    let w = frame.with(|f| words(f));
    let r = decoded(w, |a| frame.with(|f| trap::upcall_return(hv, cur, a, f)));
    if let Outcome::Return(r) = r {
        frame.set_rax(regs::encode(r));
    }
}

/// `upcall_return` (TRAP-2) on the fast path, its common case: what the
/// stub's `upcall_return_exit` (the fast route table's entry for the call,
/// see `arch::syscall`) calls first, with the argument words as any fast
/// handler gets them. The frame at `a0` restored into the current domain's
/// `TrapFrame` by `trap::restore_hot` (no re-check of a slot of an older
/// table generation) and the call counted, then the test of
/// [`Hv::leave`] (a flush requested, the timer, an upcall due now), with
/// no call at all: so no callee-saved register is saved or restored
/// (docs/bench-history/issue-13-fast-paths.md, "SDK upcalls, round 10,
/// the hypervisor's share"). Returns
/// [`UPCALL_RETURN_DONE`] (restored, nothing to do on the way back: the
/// stub leaves through `trap_return`), [`UPCALL_RETURN_LEAVE`] (restored,
/// `leave` has work: the stub calls [`tahoma_upcall_return_leave`] first)
/// or [`UPCALL_RETURN_FULL`] (declined with nothing changed, not even the
/// count: the stub calls [`tahoma_upcall_return`], which does it all from
/// the start, every refusal with its error).
#[no_mangle]
extern "C" fn tahoma_upcall_return_hot(
    a0: u64,
    a1: u64,
    a2: u64,
    a3: u64,
    a4: u64,
    a5: u64,
) -> u64 {
    // SAFETY: as for `handler!`'s fast handlers: called only by the
    // `syscall` stub (through `upcall_return_exit`), whose route table is
    // allowed only after `install`; the one reference of this entry.
    let hv = unsafe { HV.get_installed() };
    // SAFETY: as for `handler!`'s fast handlers: the routes are allowed
    // only while `current` is `Some`.
    let cur = unsafe { hv.sched.current.unwrap_unchecked() };
    let Ok(a) = <hypercall_abi::trap::UpcallReturn as hypercall_abi::Args>::decode([
        a0, a1, a2, a3, a4, a5,
    ]) else {
        return UPCALL_RETURN_FULL;
    };
    // SAFETY: the stub saved the caller's context in place into the
    // current domain's frame (`guest_frame`), live while the domain is;
    // no other reference into it is live (the stub holds none), and this
    // one ends with the restore.
    let frame = || unsafe { &mut *(crate::arch::traps::guest_frame() as *mut TrapFrame) };
    if !trap::restore_hot::<false, _>(hv, cur, a.frame, frame) {
        return UPCALL_RETURN_FULL;
    }
    hv.sched.calls += 1;
    if hv.leave_wanted() {
        UPCALL_RETURN_LEAVE
    } else {
        UPCALL_RETURN_DONE
    }
}

/// The way back's work after [`tahoma_upcall_return_hot`] restored a frame
/// and found some ([`Hv::leave`]); the stub then leaves through
/// `trap_return`.
#[no_mangle]
extern "C" fn tahoma_upcall_return_leave() {
    // SAFETY: as for `tahoma_upcall_return_hot`, whose caller's way back
    // this is (the stub calls it only after that returned
    // `UPCALL_RETURN_LEAVE`).
    let hv = unsafe { HV.get_installed() };
    hv.leave();
}

/// `upcall_return` (TRAP-2) on the fast path in full, from the start:
/// what the stub's `upcall_return_exit` calls when
/// [`tahoma_upcall_return_hot`] declined (nothing changed). Counts the
/// call, takes its argument words again from the caller's frame (the
/// stub's lean save put them there; nothing has changed them), restores
/// the frame at the first into the current domain's `TrapFrame` as
/// [`upcall_return`] does, and on success does the way back's work
/// ([`Hv::leave`]) and returns 0, on which the stub leaves through
/// `trap_return`; a refused frame changes nothing and its error word goes
/// back to the caller as any fast handler's result. No slow entry and no
/// completion of a frame about to be replaced whole (docs/bench-history/issue-13-fast-paths.md,
/// "SDK upcalls, round 7").
#[no_mangle]
extern "C" fn tahoma_upcall_return() -> u64 {
    // SAFETY: as for `tahoma_upcall_return_hot`, which declined the call.
    let hv = unsafe { HV.get_installed() };
    // SAFETY: as for `handler!`'s fast handlers: the routes are allowed
    // only while `current` is `Some`.
    let cur = unsafe { hv.sched.current.unwrap_unchecked() };
    hv.sched.calls += 1;
    // SAFETY: the stub saved the caller's context in place into the
    // current domain's frame (`guest_frame`), live while the domain is;
    // no reference into it is live (the stub holds none).
    let mut frame = unsafe { EntryFrame::new(crate::arch::traps::guest_frame() as *mut TrapFrame) };
    let w = frame.with(|f| words(f));
    match decoded(w, |a| frame.with(|f| trap::upcall_return(hv, cur, a, f))) {
        Outcome::Replaced => {
            hv.leave();
            0
        }
        Outcome::Return(r) => {
            hv.flush_if_requested();
            regs::encode(r)
        }
    }
}

// `upcall_return_exit` takes 0 for "replaced": no result word is 0 but
// success's, which `upcall_return` never returns (TRAP-2).
const _: () = {
    let mut i = 0;
    while i < Error::ALL.len() {
        assert!(regs::encode(Err(Error::ALL[i])) != 0);
        i += 1;
    }
};

/// [`entry`] for every call but `yield`, `block` and `upcall_return`.
#[inline(never)]
fn other(hv: &mut Hv, cur: DomId, mut frame: EntryFrame) {
    match returning_handler(frame.rax()) {
        Some(f) => {
            // The handler does not switch: the shared reference ends with it.
            let r = frame.with(|frame| f(hv, cur, frame));
            frame.set_rax(r);
        }
        None => {
            if let Outcome::Return(r) = dispatch_frame(hv, cur, &mut frame) {
                frame.set_rax(regs::encode(r));
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
/// and runs its handler (`yield`, `block` and `upcall_return` ran in
/// [`entry`]).
fn dispatch_frame(hv: &mut Hv, cur: DomId, frame: &mut EntryFrame) -> Outcome {
    use Hypercall as H;
    let w = frame.with(|f| words(f));
    match Hypercall::from_number(frame.rax()) {
        Some(H::Shutdown) => decoded(w, |a| sched::shutdown(hv, cur, a)),
        Some(H::MmuPin) => decoded(w, |a| mmu::pin(hv, cur, a, frame)),
        Some(H::MmuUnpin) => decoded(w, |a| mmu::unpin(hv, cur, a, frame)),
        // `entry` ran `yield`, `block` and `upcall_return`;
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
            // while `current` is `Some`: it is set so where `Hv::load`
            // sets `current` and by `first_hypercall` (which tests it),
            // and reset to the empty table where `current` is cleared for
            // longer than a switch (`run_next`, `destroy`); the lean
            // switch (`switch_away`) clears `current` and sets both anew
            // in `load`, or goes on in `run_next`, before any return to
            // ring 3. A fast handler never clears it.
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
            None if i as u64 == Hypercall::UpcallReturn.number() => {
                Some(crate::arch::syscall::UPCALL_RETURN_EXIT)
            }
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
    // A `match`, not `and_then`: the closure `and_then` takes was kept out
    // of line (`FnOnce::call_once`), with its result through memory, even
    // when `f` is inline (`event::send`).
    match T::decode(w) {
        Ok(a) => f(hv, cur, a),
        Err(e) => Err(e),
    }
}

/// Decodes the arguments of a call that may replace the caller's frame
/// and runs its handler on them (a refused word is the call's result).
#[inline(always)]
fn decoded<T: Call>(w: Words, f: impl FnOnce(T) -> Outcome) -> Outcome {
    match T::decode(w) {
        Ok(a) => f(a),
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
