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
use core::cell::UnsafeCell;
use hypercall_abi::event::Virq;
use hypercall_abi::layout::{UpcallFrame, UpcallKind, CALLBACK_STACK_SIZE, RED_ZONE, RFLAGS_IF};
use hypercall_abi::sched::{BlockResult, ShutdownReason};
use hypercall_abi::{regs, Error};
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

/// The hypervisor's state. Not behind a lock: see [`HvCell`].
pub(crate) static HV: HvCell = HvCell(UnsafeCell::new(None));

/// The one cell holding [`Hv`], reached without a lock.
///
/// The invariant that makes this sound (and that a lock only re-checked at
/// 9 instructions per hypercall): there is one CPU, and the hypervisor runs
/// every entry from ring 3 (hypercall, exception, interrupt, `sysenter`) to
/// completion with interrupts disabled, on the one ring-0 stack. The only
/// place interrupts are enabled is the idle loop (`arch::idle`, inside
/// `Hv::run_next`), and an interrupt taken there (from ring 0) never reaches
/// this cell: the timer and device handlers return before it when they
/// interrupted ring 0, and any other trap in ring 0 is a hypervisor fault
/// that ends the run without touching it. So at most one `&mut Hv` exists at
/// any time: the one the current entry took. With SMP this will become one
/// cell per CPU for the per-CPU part (the running domain, the run queue,
/// the timer), with the shared parts (domains, frames, channels) behind
/// their own locks; the fast hypercall path touches only the first kind
/// and the current domain, which only its CPU runs.
pub(crate) struct HvCell(UnsafeCell<Option<Hv>>);

// SAFETY: the cell is only reached through `HvCell::get`, whose contract
// (one CPU, interrupts off, one live reference per entry) rules out any
// concurrent or overlapping access; see the type's documentation.
unsafe impl Sync for HvCell {}

impl HvCell {
    /// The hypervisor, once `lifecycle::start` installed it.
    ///
    /// # Safety
    /// Call only from an entry from ring 3 (or from `start`, before the first
    /// guest runs), with interrupts disabled, at most once per entry, and do
    /// not keep the reference past the entry's return: then no other
    /// reference to the cell's contents is live (see [`HvCell`]).
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn get(&self) -> Option<&mut Hv> {
        // SAFETY: the caller's contract: no other reference is live.
        unsafe { (*self.0.get()).as_mut() }
    }

    /// Installs the hypervisor (`lifecycle::start`, once).
    ///
    /// # Safety
    /// As for [`HvCell::get`]: no reference to the contents is live.
    pub(crate) unsafe fn install(&self, hv: Hv) {
        // SAFETY: the caller's contract: no other reference is live.
        unsafe { *self.0.get() = Some(hv) };
    }
}

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
    /// Write translations of the callback stacks' pages, remembered between
    /// upcalls and voided by any change to the entries that map them
    /// (`guestmem::Remembered`).
    pub(crate) remembered: guestmem::Remembered,
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
    /// Each image's shared read-only pages and their users (MEM-2e).
    pub(crate) images: tahoma_core::mm::SharedImages,
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
    /// Hypercalls made by the current domain since it was loaded: a plain
    /// increment on the fast path, added to its `Domain::hypercalls` when
    /// it stops running (`switch_away`, `destroy`), so that the count needs
    /// no domain look-up per call.
    pub(crate) calls: u64,
    /// The current domain has not made a hypercall yet: its first is
    /// reported (`@ domain-first-hypercall`). Set when it is loaded.
    pub(crate) first_call_due: bool,
    /// The frame of the current domain's shared page when it has an event
    /// entry registered, else 0: what the "work pending" test reads for the
    /// upcall test (TRAP-0a) without looking the domain up. Kept by
    /// [`Hv::note_upcall_entry`], called wherever the current domain or its
    /// callbacks change; cleared with `current`.
    pub(crate) upcall_shared: u64,
    /// The frame of the last domain destroyed while current, kept until the
    /// next such destruction (when it goes to that domain's teardown in
    /// exchange): the entry that destroyed it may still hold a reference
    /// into it, and the teardown may finish inside that entry
    /// (`Hv::destroy`). A spare until then.
    pub(crate) retired: crate::domain::Frame,
}

/// Entry from `syscall` (CALL-1), registered with `arch` ([`arch::entries`]):
/// the fast path. The stub saved only the number, the argument registers,
/// `rip`, `rflags` and `rsp` (`arch::syscall`); this runs a call that
/// cannot replace the caller's context and, when nothing else is to be done
/// on the way back, returns with `sysretq`. Everything else goes on in
/// [`hypercall_slow_entry`] with the frame completed, and leaves with
/// `iretq`.
///
/// `sysretq` is allowed only when it restores exactly what `iretq` would:
/// the caller's own context, unchanged but for `rax` (`rcx` = `rip` and
/// `r11` = `rflags` hold by construction: the stub saved them from there),
/// with `rip` in the lower canonical half. That is the SYSRET hazard: a
/// `syscall` in the last two bytes below `GUEST_VA_TOP` has `rcx =
/// 0x0000_8000_0000_0000`, non-canonical, and Intel's `sysretq` raises its
/// #GP in ring 0, after the guest's `rsp` is loaded (CVE-2012-0217). TF and
/// RF set also take the slow path (`sysretq` cannot restore RF, and with TF
/// it would trap right after the return instead of after the next
/// instruction). SS is the kernel's from `syscall` to `sysretq` (no entry
/// with a privilege change happens in between), so AMD's SYSRET SS
/// attributes erratum does not apply.
#[no_mangle] // a stable name for debuggers (`break hypercall_entry`)
pub extern "C" fn hypercall_entry(frame: &mut TrapFrame) -> arch::entries::FastExit {
    use arch::entries::{FastExit, SLOW_FROM_START, SLOW_LEAVE};
    const TF_RF: u64 = (1 << 8) | (1 << 16);
    // Nothing done: the stub writes the number back into the frame's rax.
    let slow = |stage| FastExit {
        rax: frame.rax,
        slow: stage,
    };
    // A call that may replace the frame goes the slow way from the start
    // (tested first: `yield` and `block`, the switching calls, then leave
    // the fast entry after the route alone).
    let Some(call) = crate::hypercall::returning_handler(frame.rax) else {
        if frame.rax == hypercall_abi::Hypercall::UpcallReturn.number() {
            return upcall_return_entry(frame);
        }
        return slow(SLOW_FROM_START);
    };
    if frame.rip >= hypercall_abi::layout::GUEST_VA_TOP || frame.rflags & TF_RF != 0 {
        return slow(SLOW_FROM_START);
    }
    // SAFETY: an entry from ring 3 with interrupts disabled (SFMASK clears
    // IF); the one reference taken by this entry, dropped on return.
    let Some(hv) = (unsafe { HV.get() }) else {
        return slow(SLOW_FROM_START);
    };
    let Some(cur) = hv.sched.current else {
        return slow(SLOW_FROM_START);
    };
    // A domain's first call goes the slow way, which reports it: no call
    // before the handler's, so nothing is kept in registers across one.
    if hv.sched.first_call_due {
        return slow(SLOW_FROM_START);
    }
    hv.sched.calls += 1;
    let rax = call(hv, cur, frame);
    // The frame is not touched past this point (the stub stores `rax` into
    // it on the slow way), so nothing is kept across the call but `hv`.
    if hv.work_pending() {
        return FastExit {
            rax,
            slow: SLOW_LEAVE,
        };
    }
    FastExit { rax, slow: 0 }
}

/// `upcall_return` (TRAP-2) from the fast entry: the call replaces the
/// whole frame with the checked upcall frame (`hypercall::trap`), so the
/// partial frame the stub saved needs no completing, and the way back is
/// `trap_return`'s `iretq` at once (`arch::entries::REPLACED`), or after
/// `leave` when an upcall or the timer is due (`SLOW_REPLACED`). A refused
/// return changes nothing and returns its error like any fast call, with
/// `sysretq` only under the fast entry's conditions. A domain's first call
/// goes the slow way, as in [`hypercall_entry`].
#[inline(never)]
fn upcall_return_entry(frame: &mut TrapFrame) -> arch::entries::FastExit {
    use arch::entries::{FastExit, REPLACED, SLOW_FROM_START, SLOW_LEAVE, SLOW_REPLACED};
    const TF_RF: u64 = (1 << 8) | (1 << 16);
    let slow = |stage| FastExit {
        rax: frame.rax,
        slow: stage,
    };
    // SAFETY: an entry from ring 3 with interrupts disabled (SFMASK clears
    // IF); the fast entry took no reference; the one this entry takes,
    // dropped on return.
    let Some(hv) = (unsafe { HV.get() }) else {
        return slow(SLOW_FROM_START);
    };
    let Some(cur) = hv.sched.current else {
        return slow(SLOW_FROM_START);
    };
    if hv.sched.first_call_due {
        return slow(SLOW_FROM_START);
    }
    hv.sched.calls += 1;
    match crate::hypercall::trap::upcall_return_in_place(hv, cur, frame) {
        Ok(()) => FastExit {
            rax: 0,
            slow: if hv.work_pending() {
                SLOW_REPLACED
            } else {
                REPLACED
            },
        },
        Err(e) => {
            let rax = regs::encode(Err(e));
            let sysret_ok =
                frame.rip < hypercall_abi::layout::GUEST_VA_TOP && frame.rflags & TF_RF == 0;
            let slow = if hv.work_pending() || !sysret_ok {
                SLOW_LEAVE
            } else {
                0
            };
            FastExit { rax, slow }
        }
    }
}

/// The rest of a hypercall the fast entry did not finish ([`hypercall_entry`]),
/// with the frame complete: `stage` says where it stopped
/// (`arch::entries::SLOW_*`). Leaves through `trap_return` (`iretq`).
#[no_mangle] // a stable name for debuggers
pub extern "C" fn hypercall_slow_entry(frame: *mut TrapFrame, stage: u64) {
    use arch::entries::SLOW_FROM_START;
    // SAFETY: `frame` is the current domain's own frame (the stub saved
    // into it in place), live while the domain is; this reference is the
    // only one and ends before `leave`, which finds the then current
    // domain's frame itself (a switch in the call may have changed it).
    let frame = unsafe { &mut *frame };
    // SAFETY: an entry from ring 3 with interrupts disabled; the fast entry
    // that ran before returned, so its reference is gone; this is the one
    // reference taken now, dropped on return.
    let Some(hv) = (unsafe { HV.get() }) else {
        frame.rax = regs::encode(Err(Error::NoSuchCall));
        return;
    };
    // SLOW_LEAVE and SLOW_REPLACED: the call is done, only `leave` remains.
    if stage == SLOW_FROM_START {
        crate::hypercall::entry(hv, frame, true);
    }
    hv.leave();
}

/// The local APIC timer fired.
pub fn timer_interrupt(frame: *mut TrapFrame) {
    arch::lapic::eoi();
    // SAFETY: the trap entry's frame, live for the entry; read by value
    // (a switch below makes another frame current: `leave` finds it).
    if unsafe { (*frame).cs } & 3 == 0 {
        // Woke the idle loop, which looks at the clock itself.
        return;
    }
    // SAFETY: an entry from ring 3 (checked above) with interrupts
    // disabled; the one reference this entry takes.
    let Some(hv) = (unsafe { HV.get() }) else {
        return;
    };
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
            hv.switch_away(true);
        }
    }
    hv.leave();
}

/// A guest raised an exception (TRAP-0b, TRAP-0c).
pub fn guest_exception(frame: *mut TrapFrame) {
    // SAFETY: the current domain's own frame (an entry from ring 3 saved it
    // in place), live while the domain is; this is the one reference to it
    // and its last use is `push_upcall`, before `destroy` and `leave`.
    let frame = unsafe { &mut *frame };
    // SAFETY: an exception from ring 3 (`trap::handle` routes only those
    // here) with interrupts disabled; the one reference this entry takes.
    let Some(hv) = (unsafe { HV.get() }) else {
        return;
    };
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
        hv.run_next();
    }
    hv.leave();
}

/// Entry from `sysenter` and from `syscall` in compatibility mode: the
/// caller is destroyed with a report (CPU-4, CPU-5); others run on.
#[no_mangle] // a stable name for debuggers
pub extern "C" fn foreign_entry(frame: *mut TrapFrame) {
    use crate::arch::syscall::{COMPAT_SYSCALL_VECTOR, SYSENTER_VECTOR};
    // SAFETY: the stub built this frame on the ring-0 stack (not any
    // domain's); only read here, before the switch.
    let frame = unsafe { &*frame };
    // SAFETY: an entry from ring 3 with interrupts disabled (sysenter
    // clears IF, SFMASK does for syscall); the one reference it takes.
    let Some(hv) = (unsafe { HV.get() }) else {
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
    hv.run_next();
    hv.leave();
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
