//! The hypervisor proper: domains, scheduling, hypercalls, event delivery,
//! upcalls and containment. Everything here runs with interrupts disabled
//! on the one ring-0 stack, entered from `syscall`, a trap, or the timer.
//!
//! Every entry gets the interrupted context as a [`TrapFrame`] and leaves
//! by returning it to `trap_return`; switching domains means saving the
//! frame into the current domain and loading another's into it.

mod delivery;
mod lifecycle;
pub(crate) mod schedule;

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
use core::mem::MaybeUninit;
use hypercall_abi::event::Virq;
use hypercall_abi::layout::{UpcallFrame, UpcallKind, CALLBACK_STACK_SIZE, RED_ZONE, RFLAGS_IF};
use hypercall_abi::sched::{BlockResult, ShutdownReason};
use hypercall_abi::Error;
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
pub(crate) static HV: HvCell = HvCell {
    hv: UnsafeCell::new(MaybeUninit::uninit()),
    installed: UnsafeCell::new(false),
};

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
///
/// `Hv` is the cell's first field (`repr(C)`), so its address is the
/// cell's: the `syscall` stub reads three of its words by link names
/// defined as offsets from it (see [`fast`]).
#[repr(C)]
pub(crate) struct HvCell {
    hv: UnsafeCell<MaybeUninit<Hv>>,
    /// `hv` holds a value (set once, by [`HvCell::install`]).
    installed: UnsafeCell<bool>,
}

// SAFETY: the cell is only reached through `HvCell::get` and
// `HvCell::get_installed`, whose contract (one CPU, interrupts off, one
// live reference per entry) rules out any concurrent or overlapping
// access; see the type's documentation.
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
        // SAFETY: `installed` is written once, by `install`, before any
        // entry can run; a plain read on one CPU.
        if !unsafe { *self.installed.get() } {
            return None;
        }
        // SAFETY: installed, so `hv` holds a valid `Hv`; the caller's
        // contract: no other reference is live.
        Some(unsafe { (*self.hv.get()).assume_init_mut() })
    }

    /// The hypervisor, known to be installed: [`HvCell::get`] without the
    /// test, for the fast path's handlers.
    ///
    /// # Safety
    /// As for [`HvCell::get`], and `install` has run. The fast handlers
    /// hold this by construction: the `syscall` stub calls them only
    /// through the table `Scheduler::fast_routes` names, which is the empty
    /// one until `run_next` makes a domain current, after `install`.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn get_installed(&self) -> &mut Hv {
        // SAFETY: the caller's contract: installed (a valid `Hv`), and no
        // other reference is live.
        unsafe { (*self.hv.get()).assume_init_mut() }
    }

    /// Installs the hypervisor (`lifecycle::start`, once).
    ///
    /// # Safety
    /// As for [`HvCell::get`]: no reference to the contents is live; and
    /// call it once (a second call would leak the first `Hv`).
    pub(crate) unsafe fn install(&self, hv: Hv) {
        // SAFETY: the caller's contract: no other reference is live.
        unsafe {
            (*self.hv.get()).write(hv);
            *self.installed.get() = true;
        }
    }
}

/// The words of [`Hv`] the `syscall` stub reads on the fast path, by link
/// name (`arch::syscall` documents each): the address of the allowed route
/// table (`Scheduler::fast_routes`), the timer byte
/// (`Scheduler::timer_dirty`) and the upcall word's address
/// (`Scheduler::upcall_shared`). Defined as offsets from [`HV`], whose
/// first field is the `Hv` (see [`HvCell`]); the stub reads them only while
/// the routes are allowed, i.e. after `install`.
mod fast {
    use super::{Hv, HV};
    core::arch::global_asm!(
        ".globl TAHOMA_FAST_ROUTES",
        ".set TAHOMA_FAST_ROUTES, {hv} + {routes}",
        ".globl TAHOMA_FAST_TIMER_DIRTY",
        ".set TAHOMA_FAST_TIMER_DIRTY, {hv} + {timer_dirty}",
        ".globl TAHOMA_FAST_UPCALL",
        ".set TAHOMA_FAST_UPCALL, {hv} + {upcall}",
        hv = sym HV,
        routes = const core::mem::offset_of!(Hv, sched.fast_routes),
        timer_dirty = const core::mem::offset_of!(Hv, sched.timer_dirty),
        upcall = const core::mem::offset_of!(Hv, sched.upcall_shared),
    );
    // The stub reads the routes and the upcall address as 8-byte words and
    // the timer mark as a byte.
    const _: () = {
        use crate::arch::syscall::FastRoutes;
        assert!(core::mem::size_of::<&'static FastRoutes>() == 8);
        assert!(core::mem::size_of::<bool>() == 1);
    };
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
    /// The "fast path allowed" word, which the `syscall` stub reads as
    /// `TAHOMA_FAST_ROUTES`: the full table of fast handlers
    /// (`hypercall::FAST_ROUTES`) while a domain is current and has made its
    /// first hypercall, else the empty one (`hypercall::NO_FAST_ROUTES`): no
    /// domain current, or the current domain's first call due (it goes the
    /// slow way, which reports it: `@ domain-first-hypercall`, and then
    /// allows the fast path). Set when a domain is loaded, reset with
    /// `current`.
    pub(crate) fast_routes: &'static crate::arch::syscall::FastRoutes,
    /// The direct-map address of the current domain's `upcall_pending`
    /// byte when it has an event entry registered, else that of a word that
    /// is always 0 (`NO_UPCALL`), as also when no domain is current: never
    /// 0, so neither the stub nor `leave`'s test tests it. What the
    /// "work pending" test reads for the upcall test (TRAP-0a) without
    /// looking the domain up (the stub as `TAHOMA_FAST_UPCALL`). Kept by
    /// [`Hv::note_upcall_entry`], called wherever the current domain or its
    /// callbacks change; cleared with `current`.
    pub(crate) upcall_shared: core::num::NonZeroU64,
    /// The frame of the last domain destroyed while current, kept until the
    /// next such destruction (when it goes to that domain's teardown in
    /// exchange): the entry that destroyed it may still hold a reference
    /// into it, and the teardown may finish inside that entry
    /// (`Hv::destroy`). A spare until then.
    pub(crate) retired: crate::domain::Frame,
    /// A domain was destroyed since [`Hv::run_next`]'s last full pass: the
    /// run may be over (SCHED-3b) or a teardown waits for its turn
    /// (SCHED-4), so the lean switch (`Hv::switch_away`) leaves the choice
    /// to `run_next`. Set by `Hv::destroy`; cleared by `run_next` once no
    /// teardown is left.
    pub(crate) unsettled: bool,
}

/// Entry from `syscall` (CALL-1) for every hypercall the fast path (the
/// stub and the call's fast handler: `arch::syscall`,
/// `hypercall::FAST_ROUTES`) did not finish, with the frame complete:
/// `stage` says where it stopped (`arch::entries::SLOW_*`). Leaves through
/// `trap_return` (`iretq`). Every domain's first hypercall comes here.
#[no_mangle] // a stable name for debuggers (`break hypercall_entry`)
pub extern "C" fn hypercall_entry(frame: *mut TrapFrame, stage: u64) {
    use arch::entries::SLOW_LEAVE;
    // SAFETY: an entry from ring 3 with interrupts disabled; a fast handler
    // that ran before returned, so its reference is gone; this is the one
    // reference taken now, dropped on return. Installed: no ring-3 code
    // runs before `lifecycle::start` installs the cell (its last step
    // before the first entry into a guest), so no `syscall` comes earlier.
    let hv = unsafe { HV.get_installed() };
    if stage != SLOW_LEAVE {
        // SAFETY: `frame` is the current domain's own frame (the stub saved
        // into it in place), live while the domain is; no reference into
        // it is live (the fast entry's ended), and `EntryFrame` makes none
        // that outlives one access. `leave` below finds the then current
        // domain's frame itself (a switch in the call may have changed it).
        let frame = unsafe { crate::hypercall::EntryFrame::new(frame) };
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

/// A guest raised an exception (TRAP-0b, TRAP-0c). Inline into its one
/// caller, `trap::handle` (one prologue for the reflected fault's path).
#[inline(always)]
pub fn guest_exception(frame: *mut TrapFrame) {
    // SAFETY: the current domain's own frame (an entry from ring 3 saved it
    // in place), live while the domain is; this is the one reference to it
    // and its last use is `push_upcall`, before `destroy` and `leave`.
    let frame = unsafe { &mut *frame };
    // SAFETY: an exception from ring 3 (`trap::handle` routes only those
    // here, among them the `syscall` stub's CALL-1c #GP)
    // with interrupts disabled; the one reference this entry takes.
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

impl Domains {
    /// Domain `id`, if it exists (a borrow of the domains alone, beside
    /// the scheduler's).
    #[inline(always)]
    pub(crate) fn get_mut(&mut self, id: DomId) -> Option<&mut Domain> {
        self.slots.get_mut(usize::from(id))?.as_deref_mut()
    }
}

impl Hv {
    pub(crate) fn dom(&mut self, id: DomId) -> Option<&mut Domain> {
        self.domains.get_mut(id)
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
        // `take_flush_request` starts the new epoch itself (no second
        // `note_tlb_flushed`).
        if self.memory.mm.take_flush_request() {
            // SAFETY: reloading the loaded root, which maps the hypervisor.
            unsafe { arch::load_root(self.memory.loaded_root) };
        }
    }
}
