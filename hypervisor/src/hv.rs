//! The hypervisor proper: domains, scheduling, hypercalls, event delivery,
//! upcalls and containment. Everything here runs with interrupts disabled
//! on the one ring-0 stack, entered from `syscall`, a trap, or the timer.
//!
//! Every entry gets the interrupted context as a [`TrapFrame`] and leaves
//! by returning it to `trap_return`; switching domains means saving the
//! frame into the current domain and loading another's into it.

use crate::arch::traps::{vector_name, TrapFrame};
use crate::arch::{
    self,
    cpu::{USER_CS, USER_SS},
};
use crate::console::Quoted;
use crate::domain::{self, Domain, RunState};
use crate::guestmem::{self, GuestRange, Space};
use crate::{mem, report, time};
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use hypercall_abi::console::{CONSOLE_WRITE_MAX, CONSOLE_WRITE_STEP};
use hypercall_abi::event::Virq;
use hypercall_abi::layout::{
    UpcallFrame, UpcallKind, CALLBACK_STACK_SIZE, GUEST_VA_TOP, RED_ZONE, RFLAGS_GUEST_MASK,
    RFLAGS_IF,
};
use hypercall_abi::memory::MEMORY_BATCH_MAX;
use hypercall_abi::mmu::{MmuUpdate, MMU_BATCH_MAX};
use hypercall_abi::sched::{BlockResult, ShutdownReason, NO_DEADLINE};
use hypercall_abi::{regs, Args, Error, Hypercall, Words};
use spin::Mutex;
use tahoma_core::bootpack::{self, Pack};
use tahoma_core::event::{Channels, DomId, Target};
use tahoma_core::mm::{
    BatchError, Budget, Level, Mm, MmConfig, MmError, Owner, Pending, Progress, Teardown,
};
use tahoma_core::sched::{Deadlines, RunQueue, TimerKind};
use zerocopy::IntoBytes;

/// Upcall frames a domain may have outstanding (LIM-2): a trap beyond them
/// destroys it (TRAP-5), an event upcall waits (TRAP-6).
const MAX_UPCALL_DEPTH: u32 = 8;

/// Validator steps (page-table entries) one `mmu_pin`/`mmu_unpin` does
/// before it restarts itself (MMU-35): about 0.3 ms under TCG.
const MMU_STEPS: u64 = 4096;

/// Length of the `syscall` instruction: a restarted hypercall resumes
/// this many bytes back, on the `syscall` itself (MMU-35).
const SYSCALL_LEN: u64 = 2;

/// Longest turn a dying domain's teardown takes at a scheduling point
/// (SCHED-4), in milliseconds.
const REAP_QUANTUM_MS: u64 = 2;

static HV: Mutex<Option<Hv>> = Mutex::new(None);

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
enum Exit {
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

/// What a hypercall did to the caller's frame.
enum Outcome {
    /// Return this result to the caller.
    Return(Result<u64, Error>),
    /// The frame now holds another context (a switch, or an upcall return).
    Replaced,
}

struct Hv {
    doms: Vec<Option<Box<Domain>>>,
    mm: Mm,
    current: Option<DomId>,
    runq: RunQueue,
    deadlines: Deadlines,
    channels: Channels,
    slice_end: u64,
    armed: u64,
    /// A deadline was added or fired, or the slice changed, since the timer
    /// was last armed.
    timer_dirty: bool,
    loaded_root: u64,
    /// The domain whose FPU state and selectors the CPU holds (CPU-1, CPU-2).
    cpu_state_of: Option<DomId>,
    live: u32,
    critical_left: u32,
    critical_total: u32,
    failed: bool,
    baseline_free: u64,
    /// Destroyed domains whose memory is still being released (SCHED-4),
    /// with when they were destroyed and the TSC ticks spent on them.
    dying: VecDeque<(Box<Domain>, Teardown, u64, u64)>,
}

/// Creates the boot pack's domains and runs them. Never returns: the run
/// ends when the scenario's critical domains have ended (SCHED-3b).
pub fn start(pack: &Pack<'_>) -> ! {
    let mut mm = match Mm::new(&MmConfig {
        frames: mem::frame_limit(),
        max_phys_bits: mem::max_phys_bits(),
        hypervisor_slots: mem::hypervisor_slots(),
    }) {
        Ok(mm) => mm,
        Err(e) => panic!("frame table: {e:?}"),
    };
    // Every frame the allocator does not hold is the hypervisor's (its
    // image, its tables, firmware areas); free frames are nobody's.
    for pfn in 0..mm.frame_count() {
        if !mem::is_free_frame(pfn) {
            let _ = mm.assign(pfn, Owner::Hypervisor);
        }
    }
    report!(
        "frame-table",
        "frames={} max_phys_bits={}",
        mm.frame_count(),
        mem::max_phys_bits()
    );
    let mut hv = Hv {
        doms: alloc::vec![None],
        mm,
        current: None,
        runq: RunQueue::new(),
        deadlines: Deadlines::new(),
        channels: Channels::new(),
        slice_end: 0,
        armed: u64::MAX,
        timer_dirty: true,
        loaded_root: mem::kernel_pml4() << 12,
        cpu_state_of: None,
        live: 0,
        critical_left: 0,
        critical_total: 0,
        failed: false,
        baseline_free: mem::free_frames(),
        dying: VecDeque::new(),
    };
    for (i, rec) in pack.domains().enumerate() {
        let id = (i + 1) as DomId;
        let name = bootpack::name_str(&rec.name);
        let image = pack.blob(rec.image_blob).unwrap_or(&[]);
        let cmdline = if rec.cmdline_blob == bootpack::NO_BLOB {
            &[][..]
        } else {
            pack.blob(rec.cmdline_blob).unwrap_or(&[])
        };
        hv.doms.push(None);
        match domain::build(id, &rec, image, cmdline, &mut hv.mm) {
            Ok(d) => {
                report!(
                    "domain-start",
                    "id={} name={} pages={} critical={} fpu_bytes={}",
                    id,
                    Quoted(name),
                    d.frames.len(),
                    u8::from(d.critical()),
                    d.fpu.bytes()
                );
                if d.critical() {
                    hv.critical_left += 1;
                    hv.critical_total += 1;
                }
                hv.channels.add_domain(id);
                hv.deadlines.add_domain(id);
                hv.runq.push(id);
                hv.live += 1;
                hv.doms[usize::from(id)] = Some(Box::new(d));
            }
            Err(e) => {
                let mut msg = heapless::String::<96>::new();
                let _ = core::fmt::write(&mut msg, format_args!("{e}"));
                report!(
                    "domain-error",
                    "id={} name={} error={}",
                    id,
                    Quoted(name),
                    Quoted(&msg)
                );
                log::error!("domain {name:?} not started: {e}; fix its manifest entry or image");
                hv.failed = true;
            }
        }
    }
    // Named channels (EVT-7): both ends exist before either runs.
    if !crate::named::wire(pack, &mut hv.channels, &hv.doms) {
        hv.failed = true;
    }
    if crate::testopt::leak_frame() {
        // Deliberately lost: taken from the pool, owned by nobody, never
        // returned. The end-of-run audit must fail the run.
        let leaked = mem::alloc_zeroed_frame().unwrap_or(0);
        report!("testopt", "leak-frame pfn={:#x}", leaked);
    }
    report!(
        "domains",
        "started={} free_frames={}",
        hv.live,
        mem::free_frames()
    );
    let mut frame = TrapFrame::default();
    hv.run_next(&mut frame);
    hv.leave(&mut frame);
    *HV.lock() = Some(hv);
    arch::enter_guest(&frame)
}

/// Entry from `syscall` (CALL-1).
#[no_mangle]
extern "C" fn hypercall_entry(frame: &mut TrapFrame) {
    let mut guard = HV.lock();
    let Some(hv) = guard.as_mut() else {
        frame.rax = regs::encode(Err(Error::NoSuchCall));
        return;
    };
    hv.hypercall(frame);
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
    hv.armed = u64::MAX;
    hv.timer_dirty = true;
    let now = time::now_tsc();
    hv.fire_deadlines(now);
    if now >= hv.slice_end {
        if hv.runq.is_empty() && hv.dying.is_empty() {
            let slice = hv.current.and_then(|c| hv.dom(c)).map_or(0, |d| d.slice);
            hv.slice_end = now + slice;
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
    let Some(cur) = hv.current else { return };
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
#[no_mangle]
extern "C" fn foreign_entry(frame: &mut TrapFrame) {
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
    if let Some(cur) = hv.current {
        let rip = frame.rip;
        hv.destroy(cur, Exit::Killed { kind, rip, why });
    }
    hv.run_next(frame);
    hv.leave(frame);
}

impl Hv {
    fn dom(&mut self, id: DomId) -> Option<&mut Domain> {
        self.doms.get_mut(usize::from(id))?.as_deref_mut()
    }

    /// Domain `id`'s view of memory, for checked copies.
    fn space(&self, id: DomId) -> Result<Space<'_>, Error> {
        let d = self
            .doms
            .get(usize::from(id))
            .and_then(|d| d.as_deref())
            .ok_or(Error::NotFound)?;
        Ok(Space {
            root: d.root,
            dom: id,
            mm: &self.mm,
        })
    }

    /// Flushes the TLB if the validator asks (MMU-20). Called in one place,
    /// [`Hv::leave`], on every way back to a guest: whatever changed a
    /// frame's owner or type on the way (a validator call, populate,
    /// release, a teardown), the guest cannot run on a stale translation.
    /// The hypervisor itself never touches guest memory through guest
    /// virtual addresses (guestmem walks the tables and copies through the
    /// direct map), so a flush before returning is enough.
    fn flush_if_requested(&mut self) {
        if self.mm.take_flush_request() {
            // SAFETY: reloading the loaded root, which maps the hypervisor.
            unsafe { arch::load_root(self.loaded_root) };
            self.mm.note_tlb_flushed();
        }
    }

    fn hypercall(&mut self, frame: &mut TrapFrame) {
        let Some(cur) = self.current else { return };
        if let Some(d) = self.dom(cur) {
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
            Some(h) => self.call(cur, h, a, frame),
        };
        if let Outcome::Return(r) = outcome {
            frame.rax = regs::encode(r);
        }
    }

    /// Decodes `h`'s arguments from `w` with the family module's type
    /// (`hypercall_abi::<family>`), which refuses out-of-range words with
    /// the documented error before any state is looked at, and runs it.
    fn call(&mut self, cur: DomId, h: Hypercall, w: Words, frame: &mut TrapFrame) -> Outcome {
        use hypercall_abi::{base, console, event, memory, mmu, sched, time as abi_time, trap};
        use Outcome::Return;
        /// The typed arguments, or the call's documented refusal.
        macro_rules! args {
            ($t:ty) => {
                match <$t as Args>::decode(w) {
                    Ok(a) => a,
                    Err(e) => return Return(Err(e)),
                }
            };
        }
        match h {
            Hypercall::AbiVersion => {
                let base::AbiVersion {} = args!(base::AbiVersion);
                Return(Ok(u64::from(hypercall_abi::ABI_VERSION)))
            }
            Hypercall::ConsoleWrite => {
                let a = args!(console::Write);
                Return(self.console_write(cur, a.ptr, a.len))
            }
            Hypercall::Yield => {
                let sched::Yield {} = args!(sched::Yield);
                frame.rax = 0;
                if !self.runq.is_empty() {
                    self.switch_away(frame, true);
                }
                Outcome::Replaced
            }
            Hypercall::Block => self.block(cur, args!(sched::Block).deadline_ns, frame),
            Hypercall::Shutdown => {
                let a = args!(sched::Shutdown);
                self.destroy(cur, Exit::Shutdown(a.reason, a.code));
                self.run_next(frame);
                Outcome::Replaced
            }
            Hypercall::TimerSet => {
                let a = args!(abi_time::TimerSet);
                // TIME-2: the one slot is moved or emptied, never added to.
                if a.deadline_ns == 0 {
                    self.deadlines.cancel(cur, TimerKind::OneShot);
                } else {
                    self.deadlines
                        .arm(time::ns_to_tsc(a.deadline_ns), cur, TimerKind::OneShot);
                    self.fire_deadlines(time::now_tsc());
                }
                self.timer_dirty = true;
                Return(Ok(0))
            }
            Hypercall::EventAllocUnbound => {
                let a = args!(event::AllocUnbound);
                Return(self.new_port(cur, |c| c.alloc_unbound(cur, a.remote)))
            }
            Hypercall::EventBindInterdomain => {
                let a = args!(event::BindInterdomain);
                Return(self.new_port(cur, |c| c.bind_interdomain(cur, a.remote, a.remote_port)))
            }
            Hypercall::EventBindVirq => {
                let a = args!(event::BindVirq);
                Return(self.new_port(cur, |c| c.bind_virq(cur, a.virq as u64)))
            }
            Hypercall::EventSend => {
                let a = args!(event::Send);
                Return(self.channels.send(cur, u64::from(a.port)).map(|t| {
                    self.raise(t);
                    0
                }))
            }
            Hypercall::EventClose => {
                let a = args!(event::Close);
                Return(self.channels.close(cur, u64::from(a.port)).map(|_| {
                    if let Some(d) = self.dom(cur) {
                        d.shared.clear(a.port);
                    }
                    0
                }))
            }
            Hypercall::EventUnmask => {
                let a = args!(event::Unmask);
                if let Some(d) = self.dom(cur) {
                    d.shared.unmask(a.port);
                }
                Return(Ok(0))
            }
            Hypercall::SetCallbacks => Return(self.set_callbacks(cur, args!(trap::SetCallbacks))),
            Hypercall::UpcallReturn => {
                let a = args!(trap::UpcallReturn);
                match self.upcall_return(cur, a.frame, frame) {
                    Ok(()) => Outcome::Replaced,
                    Err(e) => Return(Err(e)),
                }
            }
            Hypercall::MmuUpdate => {
                let a = args!(mmu::Update);
                Return(self.mmu_update(cur, a.reqs, a.count, a.done))
            }
            Hypercall::MmuPin => {
                let a = args!(mmu::Pin);
                self.mmu_bounded(cur, frame, |mm, dom, pending, budget| {
                    let level = Level::from_number(a.level)?;
                    mm.pin_bounded(&mut mem::DirectMap, dom, a.mfn, level, pending, budget)
                })
            }
            Hypercall::MmuUnpin => {
                let a = args!(mmu::Unpin);
                self.mmu_bounded(cur, frame, |mm, dom, pending, budget| {
                    mm.unpin_bounded(&mut mem::DirectMap, dom, a.mfn, pending, budget)
                })
            }
            Hypercall::MmuSwitchRoot => {
                let a = args!(mmu::SwitchRoot);
                Return(self.switch_root(cur, a.mfn))
            }
            Hypercall::MmuInvlpg => {
                let a = args!(mmu::Invlpg);
                arch::invlpg(a.va);
                Return(Ok(0))
            }
            Hypercall::MmuFlushTlb => {
                let mmu::FlushTlb {} = args!(mmu::FlushTlb);
                // SAFETY: reloading the loaded root, which maps the hypervisor.
                unsafe { arch::load_root(self.loaded_root) };
                self.mm.note_tlb_flushed();
                Return(Ok(0))
            }
            Hypercall::UpdateVaMapping => {
                let a = args!(mmu::UpdateVaMapping);
                Return(self.update_va_mapping(cur, a))
            }
            Hypercall::MmuFrameInfo => {
                let a = args!(mmu::FrameInfo);
                Return(self.frame_info(cur, a.mfn, a.out))
            }
            Hypercall::MemoryPopulate => {
                let a = args!(memory::Populate);
                Return(self.memory_populate(cur, a.list, a.count))
            }
            Hypercall::MemoryRelease => {
                let a = args!(memory::Release);
                Return(self.memory_release(cur, a.list, a.count))
            }
            Hypercall::MemoryInfo => {
                let a = args!(memory::Info);
                Return(self.memory_info(cur, a.out))
            }
        }
    }

    /// Runs a bounded validator operation for `cur` (MMU-35), the flush it
    /// may request is honoured in [`Hv::leave`]. When its budget runs out, the caller's `rip` is moved back
    /// onto its `syscall`, with every register as it was, so returning to
    /// the guest restarts the call, which continues where this one stopped;
    /// if the caller's slice is over, other domains run first.
    fn mmu_bounded(
        &mut self,
        cur: DomId,
        frame: &mut TrapFrame,
        f: impl FnOnce(&mut Mm, DomId, &mut Option<Pending>, &mut Budget) -> Result<Progress, MmError>,
    ) -> Outcome {
        let Hv { doms, mm, .. } = self;
        let Some(d) = doms
            .get_mut(usize::from(cur))
            .and_then(|d| d.as_deref_mut())
        else {
            return Outcome::Return(Err(Error::NotFound));
        };
        let mut budget = Budget::new(MMU_STEPS);
        // The flush it may request is honoured on the way back to the
        // guest (Hv::leave).
        let r = f(mm, cur, &mut d.mm_pending, &mut budget);
        match r {
            Ok(Progress::Done) => Outcome::Return(Ok(0)),
            Err(e) => Outcome::Return(Err(e.into())),
            Ok(Progress::Preempted) => {
                frame.rip = frame.rip.wrapping_sub(SYSCALL_LEN);
                if time::now_tsc() >= self.slice_end
                    && !(self.runq.is_empty() && self.dying.is_empty())
                {
                    self.switch_away(frame, true);
                }
                Outcome::Replaced
            }
        }
    }

    /// MMU-22: a batch of updates, read from the guest in chunks.
    fn mmu_update(
        &mut self,
        cur: DomId,
        reqs: u64,
        count: u64,
        done_ptr: u64,
    ) -> Result<u64, Error> {
        if count > MMU_BATCH_MAX {
            return Err(Error::InvalidArgument);
        }
        let size = core::mem::size_of::<MmuUpdate>() as u64;
        let all = GuestRange::new(reqs, count * size, MMU_BATCH_MAX * size)?;
        // A bad array must apply nothing (MMU-22a). When it lies within one
        // page the first chunk's copy is that check; otherwise check it all
        // before applying any chunk.
        let one_page = count == 0 || reqs >> 12 == (reqs + count * size - 1) >> 12;
        if !one_page || count > 32 {
            guestmem::check(&self.space(cur)?, all, false)?;
        }
        if done_ptr != 0 {
            guestmem::check(&self.space(cur)?, GuestRange::new(done_ptr, 8, 8)?, true)?;
        }
        let mut chunk = [MmuUpdate::default(); 32];
        let mut done = 0u64;
        let mut result = Ok(count);
        while done < count {
            let n = (count - done).min(chunk.len() as u64);
            let range = GuestRange::new(reqs + done * size, n * size, MMU_BATCH_MAX * size)?;
            let buf = &mut chunk[..n as usize];
            // The batch may have unmapped its own later entries: that
            // stops it like any refused entry.
            if let Err(e) = guestmem::copy_from(&self.space(cur)?, range, buf.as_mut_bytes()) {
                result = Err(e);
                break;
            }
            match self
                .mm
                .mmu_update(&mut mem::DirectMap, cur, buf.iter().map(|u| (u.ptr, u.val)))
            {
                Ok(k) => done += k as u64,
                Err(BatchError { index, error }) => {
                    done += index as u64;
                    result = Err(error.into());
                    break;
                }
            }
        }
        // MMU-30: `*done` is written or the call fails. It was writable
        // when checked above, but the batch may have taken that away.
        if done_ptr != 0 && guestmem::write(&self.space(cur)?, done_ptr, &done).is_err() {
            return Err(Error::BadAddress);
        }
        result
    }

    /// MMU-25: load another pinned L4.
    fn switch_root(&mut self, cur: DomId, l4: u64) -> Result<u64, Error> {
        let Hv { doms, mm, .. } = self;
        let d = doms
            .get_mut(usize::from(cur))
            .and_then(|d| d.as_deref_mut())
            .ok_or(Error::NotFound)?;
        let cr3 = mm.switch_root(&mut d.space, l4)?;
        d.root = cr3;
        // SAFETY: a validated L4 carries the hypervisor's slots (MMU-3).
        unsafe { arch::load_root(cr3) };
        self.loaded_root = cr3;
        self.mm.note_tlb_flushed();
        Ok(0)
    }

    /// MMU-28: the fast path for one leaf in the loaded address space.
    fn update_va_mapping(
        &mut self,
        cur: DomId,
        a: hypercall_abi::mmu::UpdateVaMapping,
    ) -> Result<u64, Error> {
        let hypercall_abi::mmu::UpdateVaMapping { va, val, invlpg } = a;
        let root = self.space(cur)?.root >> 12;
        let r = self
            .mm
            .update_va_mapping(&mut mem::DirectMap, cur, root, va, val);
        if r.is_ok() && invlpg {
            arch::invlpg(va);
        }
        r.map(|()| 0).map_err(Error::from)
    }

    /// MMU-29: the frame table's record of one of the caller's frames.
    fn frame_info(&mut self, cur: DomId, mfn: u64, out: u64) -> Result<u64, Error> {
        use hypercall_abi::mmu::{
            FrameRecord, FrameType, FRAME_HELD, FRAME_LOADED, FRAME_PARTIAL, FRAME_PINNED,
        };
        use tahoma_core::mm::PageType;
        let f = self.mm.frame(mfn).ok_or(Error::PermissionDenied)?;
        if f.owner() != Owner::Domain(cur) {
            return Err(Error::PermissionDenied);
        }
        let page_type = match f.page_type() {
            PageType::None => FrameType::None,
            PageType::L1 => FrameType::L1,
            PageType::L2 => FrameType::L2,
            PageType::L3 => FrameType::L3,
            PageType::L4 => FrameType::L4,
            PageType::Writable => FrameType::Writable,
            PageType::Special => FrameType::Special,
        };
        let info = FrameRecord {
            page_type: page_type as u32,
            flags: if f.pinned() { FRAME_PINNED } else { 0 }
                | if f.loaded() > 0 { FRAME_LOADED } else { 0 }
                | if f.held() > 0 { FRAME_HELD } else { 0 }
                | if f.is_partial() { FRAME_PARTIAL } else { 0 },
            type_count: u64::from(f.type_count()),
            total_count: u64::from(f.total_count()),
        };
        guestmem::write(&self.space(cur)?, out, &info)?;
        Ok(0)
    }

    /// MEM-5: fresh, scrubbed frames within the quota, all or nothing.
    fn memory_populate(&mut self, cur: DomId, list: u64, count: u64) -> Result<u64, Error> {
        if count > MEMORY_BATCH_MAX {
            return Err(Error::InvalidArgument);
        }
        let range = GuestRange::new(list, count * 8, MEMORY_BATCH_MAX * 8)?;
        guestmem::check(&self.space(cur)?, range, true)?;
        let d = self.dom(cur).ok_or(Error::NotFound)?;
        if d.frames.len() as u64 + count > d.max_pages {
            return Err(Error::NoResources);
        }
        let mut taken = [0u64; MEMORY_BATCH_MAX as usize];
        for i in 0..count as usize {
            match mem::alloc_zeroed_frame() {
                Some(f) => taken[i] = f,
                None => {
                    taken[..i].iter().for_each(|&f| mem::free_frame(f));
                    return Err(Error::NoResources);
                }
            }
        }
        let taken = &taken[..count as usize];
        for &f in taken {
            // A frame fresh from the allocator is idle and nobody's.
            let _ = self.mm.assign(f, Owner::Domain(cur));
        }
        if let Err(e) = guestmem::copy_to(&self.space(cur)?, list, taken.as_bytes()) {
            for &f in taken {
                let _ = self.mm.assign(f, Owner::Free);
                mem::free_frame(f);
            }
            return Err(e);
        }
        if let Some(d) = self.dom(cur) {
            d.frames.extend_from_slice(taken);
        }
        Ok(count)
    }

    /// MEM-6: give frames back, all or nothing.
    fn memory_release(&mut self, cur: DomId, list: u64, count: u64) -> Result<u64, Error> {
        if count > MEMORY_BATCH_MAX {
            return Err(Error::InvalidArgument);
        }
        let range = GuestRange::new(list, count * 8, MEMORY_BATCH_MAX * 8)?;
        let mut buf = [0u64; MEMORY_BATCH_MAX as usize];
        let frames = &mut buf[..count as usize];
        guestmem::copy_from(&self.space(cur)?, range, frames.as_mut_bytes())?;
        for (i, &f) in frames.iter().enumerate() {
            let info = self.mm.frame(f).ok_or(Error::PermissionDenied)?;
            if info.owner() != Owner::Domain(cur) {
                return Err(Error::PermissionDenied);
            }
            if frames[..i].contains(&f) {
                return Err(Error::InvalidArgument);
            }
            if !info.idle() {
                return Err(Error::WrongState);
            }
        }
        for &f in frames.iter() {
            let _ = self.mm.assign(f, Owner::Free);
            mem::free_frame(f);
        }
        if let Some(d) = self.dom(cur) {
            d.frames.retain(|f| !frames.contains(f));
        }
        Ok(count)
    }

    /// MEM-7: frames owned now, and the quota.
    fn memory_info(&mut self, cur: DomId, ptr: u64) -> Result<u64, Error> {
        let d = self.dom(cur).ok_or(Error::NotFound)?;
        let info = [d.frames.len() as u64, d.max_pages];
        if ptr != 0 {
            guestmem::write(&self.space(cur)?, ptr, &info)?;
        }
        Ok(info[0])
    }

    fn new_port(
        &mut self,
        cur: DomId,
        f: impl FnOnce(&mut Channels) -> Result<u32, Error>,
    ) -> Result<u64, Error> {
        let port = f(&mut self.channels)?;
        if let Some(d) = self.dom(cur) {
            d.shared.reset_port(port);
        }
        Ok(u64::from(port))
    }

    /// CON-1, CON-2: checks the whole range, takes at most
    /// `CONSOLE_WRITE_STEP` bytes of it and returns how many it took.
    fn console_write(&mut self, cur: DomId, ptr: u64, len: u64) -> Result<u64, Error> {
        let range = GuestRange::new(ptr, len, CONSOLE_WRITE_MAX)?;
        guestmem::check(&self.space(cur)?, range, false)?;
        let len = len.min(CONSOLE_WRITE_STEP);
        let range = GuestRange::new(ptr, len, CONSOLE_WRITE_STEP)?;
        let mut buf = [0u8; CONSOLE_WRITE_STEP as usize];
        let bytes = &mut buf[..len as usize];
        guestmem::copy_from(&self.space(cur)?, range, bytes)?;
        let d = self.dom(cur).ok_or(Error::NotFound)?;
        for &b in bytes.iter() {
            d.console.push(b, |line| print_console_line(&d.name, line));
        }
        Ok(len)
    }

    /// TRAP-1: the addresses were checked by the decode.
    fn set_callbacks(
        &mut self,
        cur: DomId,
        a: hypercall_abi::trap::SetCallbacks,
    ) -> Result<u64, Error> {
        let hypercall_abi::trap::SetCallbacks { event, trap, stack } = a;
        let d = self.dom(cur).ok_or(Error::NotFound)?;
        d.callbacks = domain::Callbacks { event, trap, stack };
        Ok(0)
    }

    fn block(&mut self, cur: DomId, deadline_ns: u64, frame: &mut TrapFrame) -> Outcome {
        let Some(d) = self.dom(cur) else {
            return Outcome::Return(Err(Error::NotFound));
        };
        d.shared.set_upcall_mask(false);
        if d.shared.any_unmasked_pending() {
            return Outcome::Return(Ok(BlockResult::Event as u64));
        }
        let at = if deadline_ns == NO_DEADLINE {
            None
        } else {
            Some(time::ns_to_tsc(deadline_ns))
        };
        if at.is_some_and(|at| at <= time::now_tsc()) {
            return Outcome::Return(Ok(BlockResult::Deadline as u64));
        }
        d.state = RunState::Blocked;
        if let Some(at) = at {
            self.deadlines.arm(at, cur, TimerKind::Block);
            self.timer_dirty = true;
        }
        self.switch_away(frame, false);
        Outcome::Replaced
    }

    fn upcall_return(&mut self, cur: DomId, ptr: u64, frame: &mut TrapFrame) -> Result<(), Error> {
        if self.dom(cur).ok_or(Error::NotFound)?.upcall_depth == 0 {
            return Err(Error::WrongState);
        }
        let uf: UpcallFrame = guestmem::read(&self.space(cur)?, ptr)?;
        let d = self.dom(cur).ok_or(Error::NotFound)?;
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

    /// Pushes an upcall frame for the context in `frame` and points `frame`
    /// at the registered entry (TRAP-0).
    fn push_upcall(
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
        let space = self.space(id).map_err(|_| "no domain")?;
        guestmem::write(&space, at, &uf).map_err(|_| "callback stack not writable")?;
        let d = self.dom(id).ok_or("no domain")?;
        frame.rip = entry;
        frame.rsp = at;
        frame.rdi = at;
        frame.rflags = RFLAGS_IF | 0x2;
        d.upcall_depth += 1;
        Ok(())
    }

    /// Raises `t.port` in `t.dom` (EVT-0).
    fn raise(&mut self, t: Target) {
        let Some(d) = self.dom(t.dom) else { return };
        if d.shared.raise(t.port) && d.state == RunState::Blocked {
            self.wake(t.dom, BlockResult::Event);
        }
    }

    fn wake(&mut self, id: DomId, why: BlockResult) {
        let Some(d) = self.dom(id) else { return };
        if d.state != RunState::Blocked {
            return;
        }
        d.state = RunState::Runnable;
        d.ctx.rax = why as u64;
        if self.deadlines.cancel(id, TimerKind::Block).is_some() {
            self.timer_dirty = true;
        }
        self.runq.push(id);
    }

    fn fire_deadlines(&mut self, now: u64) {
        while let Some((id, kind)) = self.deadlines.pop_expired(now) {
            self.timer_dirty = true;
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

    /// Saves the running domain (re-queueing it if `requeue`) and loads the
    /// next one into `frame`.
    fn switch_away(&mut self, frame: &mut TrapFrame, requeue: bool) {
        if let Some(cur) = self.current.take() {
            note_current(0);
            if let Some(d) = self.dom(cur) {
                d.ctx = *frame;
                // The CPU keeps holding this state (cpu_state_of) until
                // another domain's is loaded.
                d.fpu.save();
                d.selectors = arch::cpu::Selectors::read();
            }
            if requeue {
                self.runq.push(cur);
            }
        }
        self.run_next(frame);
    }

    /// Loads the next runnable domain into `frame`, idling (halting the CPU)
    /// while none is runnable. Ends the run when no domain is left.
    fn run_next(&mut self, frame: &mut TrapFrame) {
        loop {
            if self.live == 0 || (self.critical_total > 0 && self.critical_left == 0) {
                self.finish();
            }
            if !self.dying.is_empty() {
                self.reap(time::now_tsc() + time::ms_to_ticks(REAP_QUANTUM_MS));
            }
            let now = time::now_tsc();
            self.fire_deadlines(now);
            while let Some(id) = self.runq.pop() {
                let reload = self.cpu_state_of != Some(id);
                let Some(d) = self.dom(id) else { continue };
                *frame = d.ctx;
                if reload {
                    // Never the previous domain's state (CPU-1, CPU-1a, CPU-2).
                    d.fpu.restore();
                    d.selectors.load();
                }
                let (root, slice) = (d.root, d.slice);
                if root != self.loaded_root {
                    // SAFETY: `root` is a complete PML4 built for this domain
                    // whose upper half is the hypervisor's, so the running
                    // code, stack and data stay mapped.
                    unsafe { arch::load_root(root) };
                    self.loaded_root = root;
                    self.mm.note_tlb_flushed();
                }
                if let Some(d) = self.dom(id) {
                    d.first_run_at.get_or_insert(now);
                }
                self.current = Some(id);
                note_current(id);
                self.cpu_state_of = Some(id);
                self.slice_end = now + slice;
                self.timer_dirty = true;
                return;
            }
            if !self.dying.is_empty() {
                // Nothing runnable: the CPU is the teardown's.
                continue;
            }
            let next = self.deadlines.next();
            match next {
                Some(at) => time::arm_at(at),
                None => arch::lapic::arm(0),
            }
            self.armed = u64::MAX;
            self.timer_dirty = true;
            if next.is_none() {
                log::warn!("every domain is blocked with no deadline; waiting for an event that cannot come");
                self.failed = true;
                self.finish();
            }
            arch::idle();
        }
    }

    /// Before returning to the current domain: deliver a pending event
    /// upcall (TRAP-0a) and arm the timer for the next slice end or deadline.
    fn leave(&mut self, frame: &mut TrapFrame) {
        self.flush_if_requested();
        loop {
            let Some(cur) = self.current else { return };
            let Some(d) = self.dom(cur) else { return };
            // At the nesting limit the event waits for a return (TRAP-6).
            let wants_upcall = d.callbacks.event != 0
                && d.upcall_depth < MAX_UPCALL_DEPTH
                && !d.shared.upcall_masked()
                && d.shared.upcall_pending();
            if !wants_upcall {
                break;
            }
            match self.push_upcall(cur, frame, UpcallKind::Event, 0, 0, 0) {
                Ok(()) => {
                    if let Some(d) = self.dom(cur) {
                        d.shared.set_upcall_mask(true);
                    }
                    break;
                }
                Err(why) => {
                    // Not an exception (TRAP-7): say what failed.
                    let exit = Exit::Killed {
                        kind: "event-upcall",
                        rip: frame.rip,
                        why,
                    };
                    self.destroy(cur, exit);
                    self.run_next(frame);
                }
            }
        }
        // Re-arm only when a deadline or the slice changed since the last
        // exit: the common hypercall changes neither.
        if self.timer_dirty {
            self.timer_dirty = false;
            let deadline = self.deadlines.next();
            let at = deadline.map_or(self.slice_end, |d| d.min(self.slice_end));
            if at != self.armed {
                time::arm_at(at);
                self.armed = at;
            }
        }
    }

    /// Destroys domain `id`: closes its ports, scrubs and frees its frames,
    /// reports how it ended.
    fn destroy(&mut self, id: DomId, exit: Exit) {
        let Some(mut d) = self.doms.get_mut(usize::from(id)).and_then(Option::take) else {
            return;
        };
        d.console.flush(|line| print_console_line(&d.name, line));
        self.runq.remove(id);
        self.deadlines.remove_domain(id);
        self.channels.remove_domain(id);
        if self.current == Some(id) {
            self.current = None;
            note_current(0);
        }
        if self.loaded_root == d.root {
            // SAFETY: the hypervisor's own PML4 maps everything ring 0 needs.
            unsafe { arch::load_root(mem::kernel_pml4() << 12) };
            self.loaded_root = mem::kernel_pml4() << 12;
        }
        self.live -= 1;
        let name = Quoted(&d.name);
        let ok = match exit {
            Exit::Shutdown(reason, code) => {
                report!(
                    "domain-exit",
                    "id={} name={} reason={} code={} hypercalls={}",
                    id,
                    name,
                    reason.name(),
                    code as i64,
                    d.hypercalls
                );
                reason == ShutdownReason::Poweroff && code == 0
            }
            Exit::Fault {
                vector,
                error,
                rip,
                cr2,
                why,
            } => {
                report!(
                    "domain-fault",
                    "id={} name={} kind=exception vector={} exception={} error={:#x} rip={:#x} cr2={:#x} reason={}",
                    id,
                    name,
                    vector,
                    vector_name(vector),
                    error,
                    rip,
                    cr2,
                    Quoted(why)
                );
                log::warn!(
                    "domain {} ({}) destroyed: {} at rip {:#x} ({}); other domains continue",
                    d.name,
                    d.id,
                    vector_name(vector),
                    rip,
                    why
                );
                false
            }
            Exit::Killed { kind, rip, why } => {
                report!(
                    "domain-fault",
                    "id={} name={} kind={} rip={:#x} reason={}",
                    id,
                    name,
                    kind,
                    rip,
                    Quoted(why)
                );
                log::warn!(
                    "domain {} ({}) destroyed: {} at rip {:#x} ({}); other domains continue",
                    d.name,
                    d.id,
                    kind,
                    rip,
                    why
                );
                false
            }
            Exit::ScenarioEnd => {
                report!(
                    "domain-exit",
                    "id={} name={} reason=scenario-end code=0 hypercalls={}",
                    id,
                    name,
                    d.hypercalls
                );
                true
            }
        };
        if d.critical() {
            self.critical_left = self.critical_left.saturating_sub(1);
            if !ok {
                self.failed = true;
            }
        }
        // Its memory is released in bounded turns at scheduling points
        // (SCHED-4), so a large domain's death stalls nobody.
        let teardown = Teardown::new(id);
        self.dying.push_back((d, teardown, time::now_tsc(), 0));
    }

    /// Releases dying domains' memory until TSC `until` or until none is
    /// left (SCHED-4); each step is bounded, so this overruns `until` by
    /// one step at most.
    fn reap(&mut self, until: u64) {
        while let Some((mut d, mut t, since, mut busy)) = self.dying.pop_front() {
            let start = time::now_tsc();
            loop {
                if d.release_step(&mut self.mm, &mut t) {
                    let now = time::now_tsc();
                    report!(
                        "domain-released",
                        "id={} name={} unpinned={} ticks={} busy_ticks={}",
                        d.id,
                        Quoted(&d.name),
                        t.unpinned(),
                        now.saturating_sub(since),
                        busy + now.saturating_sub(start)
                    );
                    break;
                }
                let now = time::now_tsc();
                if now >= until {
                    busy += now.saturating_sub(start);
                    self.dying.push_front((d, t, since, busy));
                    self.flush_if_requested();
                    return;
                }
            }
        }
        self.flush_if_requested();
    }

    /// Ends the run: destroys what is left, audits the frames, exits.
    fn finish(&mut self) -> ! {
        for id in 0..self.doms.len() {
            if self.doms[id].is_some() {
                self.destroy(id as DomId, Exit::ScenarioEnd);
            }
        }
        self.reap(u64::MAX);
        if !self.audit() {
            self.failed = true;
        }
        if self.failed {
            report!("exit", "status=failure");
            arch::exit_qemu(arch::EXIT_FAILURE)
        }
        report!("exit", "status=success");
        arch::exit_qemu(arch::EXIT_SUCCESS)
    }
}

impl Hv {
    /// The end-of-run frame audit (issue 7, finding 9): with every domain
    /// destroyed, every frame it took must be back in the pool. Checks
    /// (1) the free count against the baseline taken before the first
    /// domain was built; (2) the frame table against the allocator, frame
    /// by frame: nobody's frames are free, the hypervisor's are not, no
    /// domain owns anything; (3) `tahoma_core::mm::audit` over the frame
    /// table and page-table contents, with the hypervisor's holds (none
    /// are left once every domain is gone); (4) no internal inconsistency
    /// was reported during the run. Reports `@ audit ... status=ok|failed`
    /// (with the TSC ticks it took) and one `@ audit-error` per problem (the
    /// first 8); returns whether all held.
    fn audit(&mut self) -> bool {
        let started = time::now_tsc();
        let free = mem::free_frames();
        let mut errors = 0u64;
        let mut error = |pfn: u64, what: core::fmt::Arguments<'_>| {
            errors += 1;
            if errors <= 8 {
                let mut msg = heapless::String::<160>::new();
                let _ = core::fmt::write(&mut msg, what);
                report!("audit-error", "pfn={:#x} what={}", pfn, Quoted(&msg));
                log::error!("frame audit: frame {pfn:#x}: {msg}");
            }
        };
        if free != self.baseline_free {
            error(
                0,
                format_args!(
                    "{} frames free at the end, {} before the first domain: {} not returned",
                    free,
                    self.baseline_free,
                    self.baseline_free.abs_diff(free)
                ),
            );
        }
        for pfn in 0..self.mm.frame_count() {
            let Some(f) = self.mm.frame(pfn) else { break };
            let pooled = mem::is_free_frame(pfn);
            match f.owner() {
                Owner::Free if !pooled => error(
                    pfn,
                    format_args!("owned by nobody but not in the free pool: leaked"),
                ),
                Owner::Hypervisor if pooled => error(
                    pfn,
                    format_args!("the hypervisor's frame is in the free pool"),
                ),
                Owner::Domain(d) => error(
                    pfn,
                    format_args!("still owned by domain {d} after every domain ended"),
                ),
                _ => {}
            }
        }
        let holds: Vec<u64> = self.doms.iter().flatten().map(|d| d.shared.pfn()).collect();
        if let Err(e) = tahoma_core::mm::audit::audit_holds(&self.mm, &mem::DirectMap, &holds) {
            error(e.pfn, format_args!("frame table: {}", e.what));
        }
        let inconsistencies = mem::inconsistencies();
        if inconsistencies > 0 {
            error(
                0,
                format_args!("{inconsistencies} internal inconsistencies reported during the run"),
            );
        }
        report!(
            "audit",
            "free_frames={} baseline={} frames={} errors={} status={} ticks={}",
            free,
            self.baseline_free,
            self.mm.frame_count(),
            errors,
            if errors == 0 { "ok" } else { "failed" },
            time::now_tsc().saturating_sub(started)
        );
        if errors > 0 {
            log::error!(
                "frame audit failed with {errors} error(s) (see `@ audit-error`): a hypervisor bug; the run fails"
            );
        }
        errors == 0
    }
}

/// Reports how long the domain took from the start of its build to its
/// first hypercall, in TSC ticks (instructions under `-icount shift=0`).
#[cold]
fn first_hypercall(d: &Domain) {
    let now = time::now_tsc();
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

/// Prints one of a domain's console lines, prefixed with its name and
/// rendered as CON-1d says ([`tahoma_core::console::Rendered`]).
fn print_console_line(name: &str, line: &[u8]) {
    crate::println!("[{}] {}", name, tahoma_core::console::Rendered(line));
}
