//! Event and trap delivery: raising a port's event, waking its domain,
//! and pushing an upcall frame onto a domain's callback stack.
#![forbid(unsafe_code)]

use super::*;
use crate::guestmem::Destination;

impl Hv {
    /// Pushes an upcall frame for the context in `frame` and points `frame`
    /// at the registered entry (TRAP-0); an event upcall also masks upcalls
    /// (TRAP-0a). One look-up of the domain; the frame is built straight
    /// into the callback stack's page through its remembered translation
    /// (`guestmem::Remembered`: checked as a fresh walk would be, TRAP-0d),
    /// with no copy on the way. Nothing changes unless it is written.
    ///
    /// The common case inline, with no call: the frame within one page
    /// whose slot is current (`Remembered::current`). Anything else (a slot
    /// to re-check or fill, a frame across two pages, a frame `may_map`
    /// must be asked about, an error) goes to [`Hv::push_upcall_full`],
    /// which does it all again from the start, so the hot path keeps no
    /// value across a call (no spills: docs/bench-history/issue-13-fast-paths.md, "SDK upcalls,
    /// round 7"). Inline into its caller, `guest_exception`'s trap (the
    /// event upcall calls [`push_upcall_hot`] from `leave_slow` and
    /// `leave_cold` itself).
    #[inline(always)]
    pub(crate) fn push_upcall(
        &mut self,
        id: DomId,
        frame: &mut TrapFrame,
        kind: UpcallKind,
        vector: u64,
        error: u64,
        cr2: u64,
    ) -> Result<(), &'static str> {
        // Disjoint fields: the domain, the frame table, the translations.
        if let Some(d) = self
            .domains
            .slots
            .get_mut(usize::from(id))
            .and_then(|d| d.as_deref_mut())
        {
            let u = Upcall {
                id,
                kind,
                vector,
                error,
                cr2,
            };
            if push_upcall_hot::<true>(d, &mut self.remembered, &self.memory.mm, frame, u) {
                return Ok(());
            }
        }
        self.push_upcall_full(id, frame, kind, vector, error, cr2)
    }

    /// [`Hv::push_upcall`] in full: the look-up, the destination through
    /// `Remembered::destination` (a slot re-checked, or a walk remembered),
    /// a frame across two pages, and every refusal.
    #[cold]
    #[inline(never)]
    pub(super) fn push_upcall_full(
        &mut self,
        id: DomId,
        frame: &mut TrapFrame,
        kind: UpcallKind,
        vector: u64,
        error: u64,
        cr2: u64,
    ) -> Result<(), &'static str> {
        // Disjoint fields: the domain, the frame table, the translations.
        let Some(d) = self
            .domains
            .slots
            .get_mut(usize::from(id))
            .and_then(|d| d.as_deref_mut())
        else {
            return Err("no domain");
        };
        let (entry, at) = upcall_target(d, frame, kind).ok_or("callback stack exhausted")?;
        let space = Space {
            root: d.root,
            dom: id,
            mm: &self.memory.mm,
        };
        let dest: Destination<{ FRAME_WORDS }> = self
            .remembered
            .destination(&space, at)
            .map_err(|_| "callback stack not writable")?;
        match dest {
            Destination::One(w) => store_frame(frame, kind, vector, error, cr2, |i, v| w.put(i, v)),
            Destination::Two(first, len, second) => {
                let mut a = [0u64; FRAME_WORDS];
                store_frame(frame, kind, vector, error, cr2, |i: usize, v| a[i] = v);
                Destination::store_split(first, len, second, &a)
            }
        }
        enter(d, frame, kind, entry, at);
        Ok(())
    }

    /// Raises `t.port` in `t.dom` (EVT-0).
    pub(crate) fn raise(&mut self, t: Target) {
        self.raise_inline(t);
    }

    /// [`Hv::raise`], inline: `event_send`'s fast handler (EVT-4) raises
    /// on every call, and a call out of line with its prologue cost it
    /// more than the raise itself.
    #[inline(always)]
    pub(crate) fn raise_inline(&mut self, t: Target) {
        let Some(d) = self.dom(t.dom) else { return };
        if d.shared.raise(t.port) && d.state == RunState::Blocked {
            // The domain just looked up, not a second look-up (`wake`).
            d.state = RunState::Runnable;
            d.ctx.set_rax(BlockResult::Event as u64);
            self.woken(t.dom);
        }
    }

    /// Wakes domain `id` if it is blocked: `block` returns `why` (SCHED-2).
    pub(crate) fn wake(&mut self, id: DomId, why: BlockResult) {
        let Some(d) = self.dom(id) else { return };
        if d.state != RunState::Blocked {
            return;
        }
        d.state = RunState::Runnable;
        d.ctx.set_rax(why as u64);
        self.woken(id);
    }

    /// The scheduler's half of a wake: the `block` deadline cancelled (an
    /// inline test when none is armed), the domain queued.
    #[inline(always)]
    fn woken(&mut self, id: DomId) {
        if self.sched.deadlines.is_armed(id, TimerKind::Block) {
            return self.cancel_block_deadline_and_queue(id);
        }
        self.sched.runq.push(id);
    }

    /// [`Hv::woken`] with a `block` deadline armed, out of line: the usual
    /// wake has none, and a call inline with anything after it made every
    /// raise keep its values in callee-saved registers across it.
    #[cold]
    #[inline(never)]
    fn cancel_block_deadline_and_queue(&mut self, id: DomId) {
        if self.sched.deadlines.cancel(id, TimerKind::Block).is_some() {
            self.sched.timer_dirty = true;
        }
        self.sched.runq.push(id);
    }
}

/// What an upcall reports, besides the context.
#[derive(Clone, Copy)]
pub(super) struct Upcall {
    pub(super) id: DomId,
    pub(super) kind: UpcallKind,
    pub(super) vector: u64,
    pub(super) error: u64,
    pub(super) cr2: u64,
}

impl Upcall {
    /// An event upcall for domain `id` (no vector, error or `cr2`).
    #[inline(always)]
    pub(super) const fn event(id: DomId) -> Upcall {
        Upcall {
            id,
            kind: UpcallKind::Event,
            vector: 0,
            error: 0,
            cr2: 0,
        }
    }
}

/// [`Hv::push_upcall`]'s common case for domain `u.id`, looked up as `d`:
/// the frame within one page whose slot is current
/// (`Remembered::current`), stored and entered; `false` (nothing changed)
/// for anything else, which the caller hands to `push_upcall_full`
/// (`leave_slow` and `leave_cold` call this with the domain they looked
/// up themselves).
/// `RECHECK`: whether a slot of an older table generation is re-checked
/// here (`Remembered::current`) or left to `push_upcall_full`;
/// `leave_slow` says no, so its hot path has no call and spills nothing.
#[inline(always)]
pub(super) fn push_upcall_hot<const RECHECK: bool>(
    d: &mut Domain,
    remembered: &mut crate::guestmem::Remembered,
    mm: &Mm,
    frame: &mut TrapFrame,
    u: Upcall,
) -> bool {
    // The entry is looked up again once every test passed (the same
    // field, which nothing here writes), not kept from here: one register
    // less through the tests.
    let Some((_, at)) = upcall_target(d, frame, u.kind) else {
        return false;
    };
    if at & 0xfff > 4096 - FRAME_BYTES {
        return false;
    }
    let space = Space {
        root: d.root,
        dom: u.id,
        mm,
    };
    let page = if RECHECK {
        remembered.current(&space, at)
    } else {
        remembered.current_no_recheck(&space, at)
    };
    let Some(w) = page.and_then(|page| page.words::<FRAME_WORDS>(at & 0xfff)) else {
        return false;
    };
    store_frame(frame, u.kind, u.vector, u.error, u.cr2, |i, v| w.put(i, v));
    enter(d, frame, u.kind, upcall_entry(d, u.kind), at);
    true
}

/// The entry to run and where the frame goes (16-aligned, below the red
/// zone when `frame` is already on the callback stack, TRAP-0), or `None`
/// when the stack has no room below its top.
#[inline(always)]
fn upcall_target(d: &Domain, frame: &TrapFrame, kind: UpcallKind) -> Option<(u64, u64)> {
    let entry = upcall_entry(d, kind);
    let top = d.callbacks.stack;
    let on_callback_stack = frame.rsp <= top && frame.rsp > top.saturating_sub(CALLBACK_STACK_SIZE);
    let base = if on_callback_stack {
        frame.rsp.saturating_sub(RED_ZONE)
    } else {
        top
    };
    let at = base.checked_sub(FRAME_BYTES)? & !15;
    Some((entry, at))
}

/// The registered entry of an upcall of `kind`.
#[inline(always)]
fn upcall_entry(d: &Domain, kind: UpcallKind) -> u64 {
    match kind {
        UpcallKind::Event => d.callbacks.event,
        UpcallKind::Trap => d.callbacks.trap,
    }
}

/// The words of an `UpcallFrame`, in its order (checked below), read from
/// `frame` as they are stored (`put(index, word)`): straight into the
/// guest's page when the frame is within one.
#[inline(always)]
fn store_frame(
    frame: &TrapFrame,
    kind: UpcallKind,
    vector: u64,
    error: u64,
    cr2: u64,
    mut put: impl FnMut(usize, u64),
) {
    put(0, kind as u64);
    put(1, vector);
    put(2, error);
    put(3, cr2);
    put(4, frame.rax);
    put(5, frame.rbx);
    put(6, frame.rcx);
    put(7, frame.rdx);
    put(8, frame.rsi);
    put(9, frame.rdi);
    put(10, frame.rbp);
    put(11, frame.r8);
    put(12, frame.r9);
    put(13, frame.r10);
    put(14, frame.r11);
    put(15, frame.r12);
    put(16, frame.r13);
    put(17, frame.r14);
    put(18, frame.r15);
    put(19, frame.rip);
    put(20, frame.rsp);
    put(21, frame.rflags);
}

/// The frame is stored: point `frame` at the entry (TRAP-0), count the
/// nesting, and mask upcalls for an event upcall (TRAP-0a).
#[inline(always)]
fn enter(d: &mut Domain, frame: &mut TrapFrame, kind: UpcallKind, entry: u64, at: u64) {
    frame.rip = entry;
    frame.rsp = at;
    frame.rdi = at;
    frame.rflags = RFLAGS_IF | 0x2;
    d.upcall_depth += 1;
    if kind == UpcallKind::Event {
        d.shared.set_upcall_mask(true);
    }
}

/// The words of an `UpcallFrame`.
const FRAME_WORDS: usize = 22;

/// Its size in bytes.
const FRAME_BYTES: u64 = 8 * FRAME_WORDS as u64;

// `push_upcall` writes an `UpcallFrame` as 22 words in field order.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<UpcallFrame>() == 22 * 8);
    assert!(offset_of!(UpcallFrame, kind) == 0);
    assert!(offset_of!(UpcallFrame, cr2) == 3 * 8);
    assert!(offset_of!(UpcallFrame, rax) == 4 * 8);
    assert!(offset_of!(UpcallFrame, rbp) == 10 * 8);
    assert!(offset_of!(UpcallFrame, r8) == 11 * 8);
    assert!(offset_of!(UpcallFrame, r15) == 18 * 8);
    assert!(offset_of!(UpcallFrame, rip) == 19 * 8);
    assert!(offset_of!(UpcallFrame, rsp) == 20 * 8);
    assert!(offset_of!(UpcallFrame, rflags) == 21 * 8);
};
