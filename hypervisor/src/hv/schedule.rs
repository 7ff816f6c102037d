//! Scheduling points: firing deadlines, switching away from and to a
//! domain, and the one way back to a guest ([`Hv::leave`]).

use super::*;
use core::num::NonZeroU64;

impl Scheduler {
    /// Stops running the current domain, `d` (the caller looked it up by
    /// `current`): `current` cleared, its call count (and `extra` calls not
    /// counted yet) added to `d`, its FPU state and selectors saved. The
    /// CPU keeps holding that state (`cpu_state_of`) until another
    /// domain's is loaded. Nothing but the switch may follow: `current` is
    /// `None` until [`Hv::switch_next`] loads a domain or
    /// [`Hv::run_next`] resets the fast path's words.
    #[inline(always)]
    pub(crate) fn stop(&mut self, d: &mut Domain, extra: u64) {
        self.current = None;
        d.hypercalls += core::mem::take(&mut self.calls) + extra;
        d.fpu.save();
        d.selectors.save();
    }
}

impl Hv {
    /// Fires every deadline at or before `now`. The test whether one is due
    /// is inline (on every switch); the firing is not.
    #[inline(always)]
    pub(crate) fn fire_deadlines(&mut self, now: u64) {
        if self.sched.deadlines.next().is_some_and(|at| at <= now) {
            self.fire_due_deadlines(now);
        }
    }

    #[inline(never)]
    fn fire_due_deadlines(&mut self, now: u64) {
        while let Some((id, kind)) = self.sched.deadlines.pop_expired(now) {
            self.sched.timer_dirty = true;
            match kind {
                TimerKind::Block => self.wake(id, BlockResult::Deadline),
                TimerKind::OneShot => {
                    if let Some(t) = self.channels.virq_target(id, Virq::Timer) {
                        self.raise(t);
                    }
                }
            }
        }
    }

    /// Stops running the current domain (re-queueing it if `requeue`) and
    /// runs the next one. Its registers are in its own frame already (the
    /// entry saved them in place); the caller must hold no reference into
    /// the entry's frame (it may be another domain's after this: see
    /// [`Hv::leave`]).
    ///
    /// The lean way, taken by every switch that finds nothing unusual (no
    /// domain destroyed since the last full pass, no deadline due, no
    /// device interrupt waiting, a runnable domain queued): the current
    /// domain's state saved, one run-queue operation (a yielding domain's
    /// push and the pop fused: [`RunQueue::rotate`]) and the next domain
    /// loaded ([`Hv::load`]), with no call on the way (so nothing is kept
    /// in callee-saved registers). Anything else goes on in
    /// [`Hv::run_next`], which fires the deadlines and delivers the
    /// interrupts before it picks.
    ///
    /// [`RunQueue::rotate`]: tahoma_core::sched::RunQueue::rotate
    #[inline(never)]
    pub(crate) fn switch_away(&mut self, requeue: bool) {
        self.switch_away_inline(requeue);
    }

    /// [`Hv::switch_away`], inline: the slow entry's `yield` has its own
    /// copy (and `block` its own of the second half, [`Hv::switch_next`]),
    /// so that the switch is not a call with its own prologue, and
    /// `requeue` is a constant in it.
    #[inline(always)]
    pub(crate) fn switch_away_inline(&mut self, requeue: bool) {
        let Some(cur) = self.sched.current else {
            return self.run_next();
        };
        if let Some(d) = self.domains.get_mut(cur) {
            self.sched.stop(d, 0);
        } else {
            self.sched.current = None;
        }
        self.switch_next(cur, requeue);
    }

    /// The second half of a switch away from `cur`, which the caller has
    /// stopped ([`Scheduler::stop`]): the lean way when nothing is unusual
    /// (see [`Hv::switch_away`]), else [`Hv::run_next`]. Inline: `block`
    /// calls it with the domain it looked up already stopped, so the switch
    /// neither looks it up again nor tests `current`.
    #[inline(always)]
    pub(crate) fn switch_next(&mut self, cur: DomId, requeue: bool) {
        let now = time::now_tsc();
        let quiet = !self.sched.unsettled
            && self.sched.deadlines.next().is_none_or(|at| at > now)
            && !crate::io::irqs_pending();
        if quiet {
            let next = if requeue {
                match self.sched.runq.try_rotate(cur) {
                    Some(id) => Some(id),
                    // Out of line, a tail call: nothing is kept across it.
                    None => return self.requeue_then_switch(cur, now),
                }
            } else {
                self.sched.runq.pop()
            };
            if let Some(id) = next {
                if self.load(id, now) {
                    return;
                }
            }
        } else if requeue {
            self.sched.runq.push(cur);
        }
        self.run_next();
    }

    /// [`Hv::switch_next`]'s quiet switch of a domain that yields when the
    /// run queue's fused rotate does not apply (`cur` already queued, or
    /// nothing else queued: it runs again): the push, the pop and the load
    /// at `now`, or [`Hv::run_next`].
    #[cold]
    #[inline(never)]
    fn requeue_then_switch(&mut self, cur: DomId, now: u64) {
        self.sched.runq.push(cur);
        if let Some(id) = self.sched.runq.pop() {
            if self.load(id, now) {
                return;
            }
        }
        self.run_next();
    }

    /// Makes the next runnable domain current (its frame the one every exit
    /// leaves through: `arch::traps::set_guest_frame`), idling (halting the
    /// CPU) while none is runnable. Ends the run when no domain is left.
    pub(crate) fn run_next(&mut self) {
        // Nothing runs until `load`: the fast entry's words say so (the
        // lean switch leaves them to `load`, which it may not reach).
        self.sched.current = None;
        self.sched.fast_routes = &crate::hypercall::NO_FAST_ROUTES;
        self.sched.upcall_shared = no_upcall_word();
        note_current(0);
        loop {
            if self.domains.live == 0
                || (self.domains.critical_total > 0 && self.domains.critical_left == 0)
            {
                self.finish();
            }
            if !self.domains.dying.is_empty() {
                self.reap(time::now_tsc() + time::ms_to_ticks(REAP_QUANTUM_MS));
            }
            // The lean switch may run again once no teardown is left (the
            // end-of-run test above passed: `finish` does not return).
            self.sched.unsettled = !self.domains.dying.is_empty();
            let now = time::now_tsc();
            self.fire_deadlines(now);
            self.deliver_irqs();
            while let Some(id) = self.sched.runq.pop() {
                if self.load(id, now) {
                    return;
                }
            }
            if !self.domains.dying.is_empty() {
                // Nothing runnable: the CPU is the teardown's.
                continue;
            }
            let next = self.sched.deadlines.next();
            match next {
                Some(at) => time::arm_at(at),
                None => arch::lapic::arm(0),
            }
            self.sched.armed = u64::MAX;
            self.sched.timer_dirty = true;
            // A driver domain may wait for its device with no deadline.
            if next.is_none() && !crate::io::any_routed() {
                log::warn!("every domain is blocked with no deadline; waiting for an event that cannot come");
                self.failed = true;
                self.finish();
            }
            // The CPU has nothing else to do: the console ring's lines go
            // out now (crate::console).
            crate::console::flush();
            arch::idle();
        }
    }

    /// Makes domain `id` (just taken from the run queue) current at TSC
    /// `now`: its frame the guest frame, its FPU state and selectors in the
    /// CPU (unless the CPU holds them still), its root in CR3, its slice
    /// started, and the scheduler's words for the fast entry set. False,
    /// changing nothing, if no such domain exists (it was destroyed).
    #[inline(always)]
    fn load(&mut self, id: DomId, now: u64) -> bool {
        let reload = self.sched.cpu_state_of != Some(id);
        let Some(d) = self.dom(id) else { return false };
        // No copy: the exit loads this domain's own frame.
        arch::traps::set_guest_frame(d.ctx.slot());
        if reload {
            // Never the previous domain's state (CPU-1, CPU-1a, CPU-2).
            d.fpu.restore();
            d.selectors.load();
        }
        d.first_run_at.get_or_insert(now);
        let (root, slice) = (d.root, d.slice);
        let (fresh, upcall_shared) = (d.hypercalls == 0, d.upcall_word);
        if root != self.memory.loaded_root {
            // SAFETY: `root` is a complete PML4 built for this domain
            // whose upper half is the hypervisor's, so the running
            // code, stack and data stay mapped.
            unsafe { arch::load_root(root) };
            self.memory.loaded_root = root;
            self.memory.mm.note_tlb_flushed();
        }
        self.sched.current = Some(id);
        self.sched.fast_routes = crate::hypercall::fast_routes(!fresh);
        self.sched.upcall_shared = upcall_shared;
        note_current(id);
        self.sched.cpu_state_of = Some(id);
        self.sched.slice_end = now + slice;
        // `leave` need look at the timer only if the new slice ends
        // before the time it is armed for: every deadline is at or
        // after `armed` (whoever adds one sets `timer_dirty`, and
        // `leave` then arms for it if it is earlier), so otherwise
        // it would find nothing to re-arm.
        if self.sched.slice_end < self.sched.armed {
            self.sched.timer_dirty = true;
        }
        true
    }

    /// The one test on the way back to the current domain: whether
    /// [`Hv::leave`] has anything to do for it. (The `syscall` stub's fast
    /// path makes the same three tests itself: the flush in the call's fast
    /// handler, the timer byte and the upcall word in the stub.)
    /// A TLB flush the validator asked for is done here (it is what `leave`
    /// does first, and needs no frame); an upcall to deliver or a timer to
    /// re-arm needs `leave` and the complete frame.
    ///
    /// The upcall half reads the current domain's shared page through
    /// `Scheduler::upcall_shared`, without looking the domain up. It may
    /// say yes when no upcall follows (the nesting limit is `leave_slow`'s
    /// to test, with the rest of [`wants_upcall`]), never no when one is
    /// due: the word is set whenever the current domain has an event entry.
    #[inline(always)]
    pub(crate) fn work_pending(&mut self) -> bool {
        self.flush_if_requested();
        self.sched.timer_dirty || upcall_due_at(self.sched.upcall_shared)
    }

    /// [`Hv::work_pending`] without doing the flush: whether [`Hv::leave`]
    /// has anything to do (a TLB flush requested included, which `leave`
    /// does first), for a caller that has no frame to spare a call for
    /// (`tahoma_upcall_return_hot`: the stub calls `leave` only on a yes).
    #[inline(always)]
    pub(crate) fn leave_wanted(&self) -> bool {
        self.memory.mm.flush_requested()
            || self.sched.timer_dirty
            || upcall_due_at(self.sched.upcall_shared)
    }

    /// Refreshes `Domain::upcall_word` after domain `id`'s callbacks
    /// changed (TRAP-1), and `Scheduler::upcall_shared` if it is the
    /// current domain.
    pub(crate) fn note_upcall_entry(&mut self, id: DomId) {
        let Some(d) = self.dom(id) else { return };
        d.upcall_word = upcall_word(d);
        let word = d.upcall_word;
        if self.sched.current == Some(id) {
            self.sched.upcall_shared = word;
        }
    }

    /// Before returning to the current domain: deliver a pending event
    /// upcall (TRAP-0a) and arm the timer for the next slice end or deadline.
    /// The test whether there is anything to do is inline (it is
    /// [`Hv::work_pending`]'s); the work is not.
    ///
    /// It takes no frame: after a switch the entry's frame is the previous
    /// domain's, and the current domain's is its own (`Domain::ctx`), looked
    /// up here. The caller must hold no reference into any frame.
    ///
    /// With no domain current it only flushes: the upcall word is then
    /// `NO_UPCALL`'s (`upcall_due_at` says no), and `leave_slow` (for the timer
    /// byte) returns at once, as it does when the domain it looks at is
    /// gone. So there is no test of `current` here (3 instructions on every
    /// way back from the slow entry).
    #[inline(always)]
    pub(crate) fn leave(&mut self) {
        if self.work_pending() {
            self.leave_slow();
        }
    }

    /// The work [`Hv::leave`] found: the common event upcall (the frame
    /// within one page whose slot is current: `push_upcall_hot`, with no
    /// re-check) with no call at all, then the timer; anything else (a
    /// slot to re-check or fill, a frame across two pages, an error that
    /// destroys the domain and runs another) starts again from the top in
    /// [`Hv::leave_cold`], a tail call. So no value lives across a call
    /// here and the hot path spills nothing (docs/bench-history/issue-13-fast-paths.md, "SDK
    /// upcalls, round 9, the hypervisor's share").
    #[inline(never)]
    fn leave_slow(&mut self) {
        self.flush_if_requested();
        if let Some(cur) = self.sched.current {
            // Disjoint fields: the domain, the translations, the frame
            // table.
            let Hv {
                domains,
                remembered,
                memory,
                ..
            } = &mut *self;
            if let Some(d) = domains
                .slots
                .get_mut(usize::from(cur))
                .and_then(|d| d.as_deref_mut())
            {
                if wants_upcall(d) {
                    // SAFETY: the current domain's frame slot, live while
                    // the domain is (its `Domain` is in the table: looked
                    // up just above); the caller holds no reference into
                    // it (see above), and this one ends before
                    // `leave_cold`.
                    let frame = unsafe { &mut *d.ctx.ptr() };
                    let u = super::delivery::Upcall::event(cur);
                    // `false`: nothing changed; `leave_cold` does it all.
                    if !super::delivery::push_upcall_hot::<false>(
                        d, remembered, &memory.mm, frame, u,
                    ) {
                        return self.leave_cold();
                    }
                }
            }
        }
        self.rearm_if_dirty();
    }

    /// [`Hv::leave_slow`] in full, from the top: the upcall through
    /// `push_upcall_hot` with the slot re-check, else `push_upcall_full`,
    /// the domain destroyed (and another run) when it fails, then the
    /// timer.
    #[cold]
    #[inline(never)]
    fn leave_cold(&mut self) {
        self.flush_if_requested();
        loop {
            let Some(cur) = self.sched.current else {
                return;
            };
            // Disjoint fields: the domain, the translations, the frame
            // table (the upcall's common case needs no second look-up).
            let Hv {
                domains,
                remembered,
                memory,
                ..
            } = &mut *self;
            let Some(d) = domains
                .slots
                .get_mut(usize::from(cur))
                .and_then(|d| d.as_deref_mut())
            else {
                return;
            };
            if !wants_upcall(d) {
                break;
            }
            // SAFETY: the current domain's frame slot, live while the domain
            // is (its `Domain` is in the table: looked up just above); the
            // caller holds no reference into it (see above), and this one
            // ends before `destroy` or `run_next` below.
            let frame = unsafe { &mut *d.ctx.ptr() };
            // An event upcall masks upcalls (`push_upcall`).
            let u = super::delivery::Upcall::event(cur);
            if super::delivery::push_upcall_hot::<true>(d, remembered, &memory.mm, frame, u) {
                break;
            }
            match self.push_upcall_full(cur, frame, UpcallKind::Event, 0, 0, 0) {
                Ok(()) => break,
                Err(why) => {
                    // Not an exception (TRAP-7): say what failed.
                    let exit = Exit::Killed {
                        kind: "event-upcall",
                        rip: frame.rip,
                        why,
                    };
                    self.destroy(cur, exit);
                    self.run_next();
                }
            }
        }
        self.rearm_if_dirty();
    }

    /// The timer half of [`Hv::leave_slow`].
    #[inline(always)]
    fn rearm_if_dirty(&mut self) {
        // Look again only when a deadline or the slice changed since the
        // last exit (the common hypercall changes neither), and re-arm only
        // when the timer must fire earlier than it is armed for. When it is
        // armed earlier than needed (a switch moved the slice end later),
        // it fires early: `timer_interrupt` finds nothing due and re-arms
        // for the new time. One early interrupt per slice instead of an
        // APIC write on every switch.
        if self.sched.timer_dirty {
            self.sched.timer_dirty = false;
            let deadline = self.sched.deadlines.next();
            let at = deadline.map_or(self.sched.slice_end, |d| d.min(self.sched.slice_end));
            if at < self.sched.armed {
                time::arm_at(at);
                self.sched.armed = at;
            }
        }
    }
}

// `upcall_due_at` reads `upcall_pending` and `upcall_mask` as one
// aligned 16-bit word, pending in the low byte (little endian).
const _: () = {
    use hypercall_abi::layout::{SHARED_UPCALL_MASK_OFFSET, SHARED_UPCALL_PENDING_OFFSET};
    assert!(SHARED_UPCALL_MASK_OFFSET == SHARED_UPCALL_PENDING_OFFSET + 1);
    assert!(SHARED_UPCALL_PENDING_OFFSET.is_multiple_of(2));
};

/// The direct-map address of `d`'s `upcall_pending` byte when it has an
/// event entry registered (it may get event upcalls), else
/// [`no_upcall_word`]: the value of `Domain::upcall_word`, and of
/// `Scheduler::upcall_shared` while `d` runs. Never 0 (the type says so):
/// the `syscall` stub and [`upcall_due_at`] read through it without a test.
fn upcall_word(d: &Domain) -> NonZeroU64 {
    if d.callbacks.event == 0 {
        return no_upcall_word();
    }
    let at = d.shared.base_va() + hypercall_abi::layout::SHARED_UPCALL_PENDING_OFFSET as u64;
    NonZeroU64::new(at).expect("a direct-map address is not 0")
}

/// A word that is always 0 (no upcall pending): what the upcall test reads
/// while the current domain has no event entry, or no domain is current.
/// An atomic so that reading it through `upcall_due_at`'s pointer is a
/// read of a mutable location.
static NO_UPCALL: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(0);

/// [`NO_UPCALL`]'s address.
pub(crate) fn no_upcall_word() -> NonZeroU64 {
    NonZeroU64::new(NO_UPCALL.as_ptr() as u64).expect("a static's address is not 0")
}

/// Whether an event upcall may be due for the current domain: `word` is
/// `Scheduler::upcall_shared` ([`NO_UPCALL`]'s address while no domain is
/// current, so no) or the current domain's own `Domain::upcall_word`
/// (`wants_upcall`), and the guest's `upcall_pending` is nonzero with
/// `upcall_mask` zero. One load of the pending/mask pair, not one per byte,
/// and no test of the address: it is never 0 (`NonZeroU64`, written only
/// from [`upcall_word`] and [`no_upcall_word`]), where it once was 0 with
/// no domain current, and every test paid for that.
#[inline(always)]
fn upcall_due_at(word: NonZeroU64) -> bool {
    // SAFETY: `word` is set only by `upcall_word` or `no_upcall_word`
    // (`Scheduler::upcall_shared`: set to the current domain's word by
    // `load` and `note_upcall_entry`, to `no_upcall_word` whenever no
    // domain is current or the current one is destroyed;
    // `Domain::upcall_word`: read while that domain is looked up, so live),
    // so it is either `NO_UPCALL` (a static) or the direct-map
    // address of the 2-aligned `upcall_pending`/`upcall_mask` pair in that
    // domain's shared page, a frame the hypervisor holds in the frame table
    // for the domain's life (MEM-8): live memory, and any bit pattern is a
    // valid u16. The guest does not run while the hypervisor does (one
    // CPU), so the atomic load races with nothing.
    let w = unsafe { core::sync::atomic::AtomicU16::from_ptr(word.get() as *mut u16) }
        .load(core::sync::atomic::Ordering::Relaxed);
    // Low byte (pending) nonzero and high byte (mask) zero: 1..=0xff.
    u32::from(w).wrapping_sub(1) < 0xff
}

/// Whether `d` gets an event upcall on its way back to ring 3 (TRAP-0a):
/// an event entry registered, below the nesting limit (at it, the event
/// waits for a return: TRAP-6), upcalls not masked, one pending. The
/// entry, the mask and the pending byte in one test: `d.upcall_word` is
/// [`NO_UPCALL`] (always 0) with no event entry, else the shared page's
/// pending/mask pair (`upcall_word`, refreshed on every TRAP-1 change).
#[inline(always)]
fn wants_upcall(d: &Domain) -> bool {
    d.upcall_depth < MAX_UPCALL_DEPTH && upcall_due_at(d.upcall_word)
}
