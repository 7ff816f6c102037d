//! Event and trap delivery: raising a port's event, waking its domain,
//! and pushing an upcall frame onto a domain's callback stack.
#![forbid(unsafe_code)]

use super::*;

impl Hv {
    /// Pushes an upcall frame for the context in `frame` and points `frame`
    /// at the registered entry (TRAP-0).
    pub(crate) fn push_upcall(
        &mut self,
        id: DomId,
        frame: &mut TrapFrame,
        kind: UpcallKind,
        vector: u64,
        error: u64,
        cr2: u64,
    ) -> Result<(), &'static str> {
        let d = self.dom(id).ok_or("no domain")?;
        let entry = match kind {
            UpcallKind::Event => d.callbacks.event,
            UpcallKind::Trap => d.callbacks.trap,
        };
        let top = d.callbacks.stack;
        let on_callback_stack =
            frame.rsp <= top && frame.rsp > top.saturating_sub(CALLBACK_STACK_SIZE);
        let base = if on_callback_stack {
            frame.rsp.saturating_sub(RED_ZONE)
        } else {
            top
        };
        let size = core::mem::size_of::<UpcallFrame>() as u64;
        let at = base.checked_sub(size).ok_or("callback stack exhausted")? & !15;
        let uf = UpcallFrame {
            kind: kind as u64,
            vector,
            error_code: error,
            cr2,
            rax: frame.rax,
            rbx: frame.rbx,
            rcx: frame.rcx,
            rdx: frame.rdx,
            rsi: frame.rsi,
            rdi: frame.rdi,
            rbp: frame.rbp,
            r8: frame.r8,
            r9: frame.r9,
            r10: frame.r10,
            r11: frame.r11,
            r12: frame.r12,
            r13: frame.r13,
            r14: frame.r14,
            r15: frame.r15,
            rip: frame.rip,
            rsp: frame.rsp,
            rflags: frame.rflags,
        };
        let root = self.dom(id).ok_or("no domain")?.root;
        let space = Space {
            root,
            dom: id,
            mm: &self.memory.mm,
        };
        self.remembered
            .write(&space, at, &uf)
            .map_err(|_| "callback stack not writable")?;
        let d = self.dom(id).ok_or("no domain")?;
        frame.rip = entry;
        frame.rsp = at;
        frame.rdi = at;
        frame.rflags = RFLAGS_IF | 0x2;
        d.upcall_depth += 1;
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
