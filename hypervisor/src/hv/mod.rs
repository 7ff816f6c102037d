//! The hypervisor proper: domains, scheduling, hypercalls, event delivery,
//! upcalls and containment. Everything here runs with interrupts disabled
//! on the one ring-0 stack, entered from `syscall`, a trap, or the timer.
//!
//! Every entry gets the interrupted context as a [`TrapFrame`] and leaves
//! by returning it to `trap_return`; switching domains means saving the
//! frame into the current domain and loading another's into it.

mod delivery;
mod lifecycle;
mod schedule;

pub use lifecycle::start;

use crate::arch;
use crate::arch::traps::{vector_name, TrapFrame};
use crate::console::Quoted;
use crate::domain::{self, Domain, RunState};
use crate::guestmem::{self, Space};
use crate::{mem, report, time};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use hypercall_abi::event::Virq;
use hypercall_abi::layout::{UpcallFrame, UpcallKind, CALLBACK_STACK_SIZE, RED_ZONE, RFLAGS_IF};
use hypercall_abi::sched::{BlockResult, ShutdownReason};
use hypercall_abi::{regs, Error};
use spin::Mutex;
use tahoma_core::bootpack::{self, Pack};
use tahoma_core::event::{Channels, DomId, Target};
use tahoma_core::grant::GrantTables;
use tahoma_core::mm::{Mm, MmConfig, Owner, Teardown};
use tahoma_core::sched::{Deadlines, RunQueue, TimerKind};

/// Upcall frames a domain may have outstanding (LIM-2): a trap beyond them
/// destroys it (TRAP-5), an event upcall waits (TRAP-6).
const MAX_UPCALL_DEPTH: u32 = 8;

/// Longest turn a dying domain's teardown takes at a scheduling point
/// (SCHED-4), in milliseconds.
const REAP_QUANTUM_MS: u64 = 2;

pub(crate) static HV: Mutex<Option<Hv>> = Mutex::new(None);

/// The id of the domain whose context the CPU holds (0: none, idle or
/// between domains), for debuggers: `cargo xtask run --gdb` conditions a
/// breakpoint on it so that it stops in one named domain only (all guests
/// are linked at the same address). A plain `u16`, so that a gdb condition
/// reads it in any source language. Written on every switch through
/// [`note_current`]; never read by the hypervisor.
#[no_mangle]
static mut TAHOMA_CURRENT_DOMAIN: u16 = 0;

/// Records the running domain for debuggers (see `TAHOMA_CURRENT_DOMAIN`).
fn note_current(id: DomId) {
    // SAFETY: a plain store to a static that no Rust code reads (only a
    // debugger does, while the CPU is stopped); the hypervisor runs on one
    // CPU with interrupts disabled, so there is no concurrent access.
    unsafe { core::ptr::write_volatile(&raw mut TAHOMA_CURRENT_DOMAIN, id) };
}

/// How a domain ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Exit {
    Shutdown(ShutdownReason, u64),
    /// The domain raised an exception it could not handle (TRAP-0c).
    Fault {
        vector: u64,
        error: u64,
        rip: u64,
        cr2: u64,
        why: &'static str,
    },
    /// Something other than an exception ended it: an event upcall that
    /// could not be delivered (TRAP-7), `sysenter` (CPU-4) or a
    /// compatibility-mode `syscall` (CPU-5). `kind` names it in the report.
    Killed {
        kind: &'static str,
        rip: u64,
        why: &'static str,
    },
    ScenarioEnd,
}

pub(crate) struct Hv {
    /// Who runs, and when the next deadline is.
    pub(crate) sched: Scheduler,
    /// Every domain, live and dying.
    pub(crate) domains: Domains,
    /// The frame table and the loaded address space.
    pub(crate) memory: Memory,
    /// The event port tables of every domain.
    pub(crate) channels: Channels,
    /// Every domain's grant table and grant mappings (GNT-*).
    pub(crate) grants: GrantTables,
    /// Frames of destroyed domains still held by a grant mapping: freed
    /// when the last one goes ([`Hv::sweep_orphans`]).
    pub(crate) orphans: Vec<u64>,
    /// A critical domain failed, or the audit did: the run ends in failure.
    pub(crate) failed: bool,
}

/// The domains: slots by id (0 unused), and the ones being torn down.
pub(crate) struct Domains {
    pub(crate) slots: Vec<Option<Box<Domain>>>,
    /// Destroyed domains whose memory is still being released (SCHED-4),
    /// with when they were destroyed and the TSC ticks spent on them.
    pub(crate) dying: VecDeque<(Box<Domain>, Teardown, u64, u64)>,
    pub(crate) live: u32,
    pub(crate) critical_left: u32,
    pub(crate) critical_total: u32,
}

/// Memory: the frame table (through the validator) and the loaded root.
pub(crate) struct Memory {
    pub(crate) mm: Mm,
    /// The CR3 value the CPU runs on.
    pub(crate) loaded_root: u64,
    /// Free frames before the first domain was built (the audit's baseline).
    pub(crate) baseline_free: u64,
}

/// Scheduling: the running domain, the run queue, deadlines and the timer.
pub(crate) struct Scheduler {
    pub(crate) current: Option<DomId>,
    pub(crate) runq: RunQueue,
    pub(crate) deadlines: Deadlines,
    pub(crate) slice_end: u64,
    pub(crate) armed: u64,
    /// A deadline was added or fired, or the slice changed, since the timer
    /// was last armed.
    pub(crate) timer_dirty: bool,
    /// The domain whose FPU state and selectors the CPU holds (CPU-1, CPU-2).
    pub(crate) cpu_state_of: Option<DomId>,
}

/// Entry from `syscall` (CALL-1), registered with `arch` ([`arch::entries`]).
#[no_mangle] // a stable name for debuggers (`break hypercall_entry`)
pub extern "C" fn hypercall_entry(frame: &mut TrapFrame) {
    let mut guard = HV.lock();
    let Some(hv) = guard.as_mut() else {
        frame.rax = regs::encode(Err(Error::NoSuchCall));
        return;
    };
    crate::hypercall::entry(hv, frame);
    hv.leave(frame);
}

/// The local APIC timer fired.
pub fn timer_interrupt(frame: &mut TrapFrame) {
    arch::lapic::eoi();
    if frame.cs & 3 == 0 {
        // Woke the idle loop, which looks at the clock itself.
        return;
    }
    let mut guard = HV.lock();
    let Some(hv) = guard.as_mut() else { return };
    hv.sched.armed = u64::MAX;
    hv.sched.timer_dirty = true;
    let now = time::now_tsc();
    hv.fire_deadlines(now);
    if now >= hv.sched.slice_end {
        if hv.sched.runq.is_empty() && hv.domains.dying.is_empty() {
            let slice = hv
                .sched
                .current
                .and_then(|c| hv.dom(c))
                .map_or(0, |d| d.slice);
            hv.sched.slice_end = now + slice;
        } else {
            hv.switch_away(frame, true);
        }
    }
    hv.leave(frame);
}

/// A guest raised an exception (TRAP-0b, TRAP-0c).
pub fn guest_exception(frame: &mut TrapFrame) {
    let mut guard = HV.lock();
    let Some(hv) = guard.as_mut() else { return };
    let Some(cur) = hv.sched.current else { return };
    let (vector, error) = (frame.vector, frame.error_code);
    let cr2 = if vector == 14 { arch::cr2() } else { 0 };
    let reflectable = matches!(vector, 0 | 1 | 3..=7 | 11..=14 | 16 | 17 | 19);
    let rip = frame.rip;
    let fault = |why| Exit::Fault {
        vector,
        error,
        rip,
        cr2,
        why,
    };
    let exit = match hv.dom(cur) {
        None => return,
        Some(_) if !reflectable => Some(fault("exception not reflectable")),
        Some(d) if d.callbacks.trap == 0 => Some(fault("no trap handler registered")),
        Some(d) if d.upcall_depth >= MAX_UPCALL_DEPTH => Some(fault("traps nested too deep")),
        Some(_) => match hv.push_upcall(cur, frame, UpcallKind::Trap, vector, error, cr2) {
            Ok(()) => None,
            Err(why) => Some(fault(why)),
        },
    };
    if let Some(exit) = exit {
        hv.destroy(cur, exit);
        hv.run_next(frame);
    }
    hv.leave(frame);
}

/// Entry from `sysenter` and from `syscall` in compatibility mode: the
/// caller is destroyed with a report (CPU-4, CPU-5); others run on.
#[no_mangle] // a stable name for debuggers
pub extern "C" fn foreign_entry(frame: &mut TrapFrame) {
    use crate::arch::syscall::{COMPAT_SYSCALL_VECTOR, SYSENTER_VECTOR};
    let mut guard = HV.lock();
    let Some(hv) = guard.as_mut() else {
        panic!("sysenter or compat syscall before any domain ran")
    };
    let (kind, why) = match frame.vector {
        SYSENTER_VECTOR => ("sysenter", "sysenter is not a hypercall entry"),
        COMPAT_SYSCALL_VECTOR => (
            "compat-syscall",
            "syscall from compatibility mode is not a hypercall entry",
        ),
        _ => ("unknown-entry", "entered through an unknown gate"),
    };
    if let Some(cur) = hv.sched.current {
        let rip = frame.rip;
        hv.destroy(cur, Exit::Killed { kind, rip, why });
    }
    hv.run_next(frame);
    hv.leave(frame);
}

impl Hv {
    pub(crate) fn dom(&mut self, id: DomId) -> Option<&mut Domain> {
        self.domains.slots.get_mut(usize::from(id))?.as_deref_mut()
    }

    /// Domain `id`'s view of memory, for checked copies.
    pub(crate) fn space(&self, id: DomId) -> Result<Space<'_>, Error> {
        let d = self
            .domains
            .slots
            .get(usize::from(id))
            .and_then(|d| d.as_deref())
            .ok_or(Error::NotFound)?;
        Ok(Space {
            root: d.root,
            dom: id,
            mm: &self.memory.mm,
        })
    }

    /// Flushes the TLB if the validator asks (MMU-20). Called in one place,
    /// [`Hv::leave`], on every way back to a guest: whatever changed a
    /// frame's owner or type on the way (a validator call, populate,
    /// release, a teardown), the guest cannot run on a stale translation.
    /// The hypervisor itself never touches guest memory through guest
    /// virtual addresses (guestmem walks the tables and copies through the
    /// direct map), so a flush before returning is enough.
    /// Flushes this CPU's TLB now (a CR3 reload of the loaded root).
    pub(crate) fn flush_tlb(&mut self) {
        // SAFETY: reloading the loaded root, which maps the hypervisor.
        unsafe { arch::load_root(self.memory.loaded_root) };
        self.memory.mm.note_tlb_flushed();
    }

    /// Frees the frames of destroyed domains whose last grant mapping has
    /// gone (GNT-0d): scrubbed, back to the pool.
    pub(crate) fn sweep_orphans(&mut self) {
        let mm = &mut self.memory.mm;
        self.orphans.retain(|&f| {
            if !mm.frame(f).is_some_and(|i| i.idle()) {
                return true;
            }
            let owner = match mm.frame(f).map(|i| i.owner()) {
                Some(Owner::Domain(d)) => d,
                _ => 0,
            };
            domain::free_owned(mm, owner, f);
            false
        });
    }

    pub(crate) fn flush_if_requested(&mut self) {
        if self.memory.mm.take_flush_request() {
            // SAFETY: reloading the loaded root, which maps the hypervisor.
            unsafe { arch::load_root(self.memory.loaded_root) };
            self.memory.mm.note_tlb_flushed();
        }
    }
}
