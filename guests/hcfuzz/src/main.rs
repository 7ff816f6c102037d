//! The hypercall fuzzer: a guest that calls every hypercall number, defined
//! or not, with arguments drawn from classes an attacker would try, and
//! counts what came back (see `docs/testing.md`, "The hypercall fuzzer").
//!
//! Command line: `seed=S` (decimal or 0x-hex; default: from the TSC,
//! printed), `calls=N` (default 20000), `canary=D` (the canary's domain id;
//! 0 = none), `canary_secret=X` (the canary's secret, to recognise it in
//! anything this guest can read), `holes=avoid|try` (default `avoid`: keep
//! away from the known hole listed below), `trace=I` (print every call from
//! index I on), `trace_changes` (print every successful table call),
//! `watch_all` (compare the protected entries after every call, not only
//! after successful table calls: slow, exact), `progress=N` (an
//! `@ fuzz-progress` line every N calls).
//!
//! The run is deterministic for a seed: the same seed makes the same calls
//! with the same arguments (up to the values of fresh frames and ports).
//!
//! Staying alive. A guest may legitimately hurt itself (unmap its own code,
//! have the hypervisor write over its own data); the fuzzer wants to keep
//! running, so it applies a few rules, each of which still sends the call:
//!
//! * entries that map what it runs on (the window, shared info, the self
//!   entry) are only rewritten with their current value (the hypervisor
//!   re-validates it), wherever the pointer or virtual address comes from,
//!   and an `mmu_update` array it did not write (its tables' junk entries
//!   read as requests) that would change one is replaced by generated ones;
//! * a pointer the hypervisor would write through, or read requests from,
//!   that maps memory other than the scratch pages, shared info or read-only
//!   pages is redirected to the scratch pages;
//! * `shutdown` only with invalid reasons; `set_callbacks` with upcalls
//!   masked and the SDK's entries restored at once; `upcall_return` outside
//!   any upcall (refused with `wrong_state`); `block` with the timer armed
//!   shortly before, so it always wakes; `mmu_switch_root` never to another
//!   pinned L4 of its own; `mmu_pin` at level 4 never of a window frame
//!   (pinning writes the hypervisor's slots into the frame, MMU-3); the
//!   ports it needs (timer, canary final) are not closed or sent to.
//!
//! Known hole kept away from with `holes=avoid` (issue 7, fixed on another
//! branch): `timer_set` far in the future grows the hypervisor's deadline
//! heap without bound, so `timer_set` deadlines are kept within 1 ms.
//!
//! Its own faults: a trap handler counts the faults of its probes (reads of
//! addresses from the same classes) and resumes; any other fault is reported
//! as `@ fuzz-fatal` with the last call and ends the domain.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

mod rng;

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use guest_sdk::abi::args::{FrameInfo, FrameType, DOMID_SELF, MEMORY_BATCH_MAX, MMU_BATCH_MAX};
use guest_sdk::abi::layout::{
    TimeInfo, GUEST_VA_TOP, NR_PORTS, SHARED_INFO_VA, SHARED_MASK_OFFSET, SHARED_TIME_OFFSET,
    WINDOW_BASE,
};
use guest_sdk::abi::{Error, Hypercall};
use guest_sdk::event::{self, DomId, Port};
use guest_sdk::paging::{self, Flags, Level, RECURSIVE_BASE};
use guest_sdk::{println, raw, trap, StartInfo, UpcallFrame};

use rng::Rng;

guest_sdk::entry!(main);

const PAGE: u64 = 4096;
/// Result buckets: ok, the eight error codes, and "not a defined code".
const RESULTS: usize = 10;
const RESULT_NAMES: [&str; RESULTS] = [
    "ok",
    "no_such_call",
    "invalid_argument",
    "bad_address",
    "permission_denied",
    "not_found",
    "wrong_state",
    "no_resources",
    "type_conflict",
    "undefined_code",
];
/// Call buckets: every defined call, then "undefined".
const CALLS: usize = Hypercall::ALL.len() + 1;
/// Page-table pages whose protected entries are watched (the window's
/// tables of a domain of up to 4 MiB).
const SNAP_TABLES: u64 = 6;
const SNAP_ENTRIES: usize = SNAP_TABLES as usize * 512;
/// Entry bits the CPU sets by itself (accessed, dirty).
const CPU_BITS: u64 = guest_sdk::abi::pte::ACCESSED | guest_sdk::abi::pte::DIRTY;
/// Words of the canary's secret memory (`guests/canary`).
const CANARY_WORDS: u64 = 16 * 1024;

// ---------------------------------------------------------------------------
// The probe: one read that may fault, caught by the trap handler.

core::arch::global_asm!(
    ".pushsection .text.hcfuzz_probe, \"ax\", @progbits",
    ".globl hcfuzz_probe",
    ".globl hcfuzz_probe_insn",
    "hcfuzz_probe:",
    "    xor edx, edx",
    "hcfuzz_probe_insn:",
    "    mov rax, qword ptr [rdi]",
    "    ret",
    ".popsection",
);

/// What a probe returns (in rax:rdx).
#[repr(C)]
struct Probe {
    value: u64,
    faulted: u64,
}

unsafe extern "C" {
    /// Reads the u64 at `va` (`mov rax, [rdi]`, 3 bytes); a fault there is
    /// resumed by [`on_trap`] after the instruction with `rdx = 1`.
    fn hcfuzz_probe(va: u64) -> Probe;
    /// The faulting instruction of [`hcfuzz_probe`] (only its address).
    fn hcfuzz_probe_insn();
}

/// Length of `mov rax, qword ptr [rdi]` (48 8b 07).
const PROBE_INSN_LEN: u64 = 3;

static PROBE_FAULTS: AtomicU64 = AtomicU64::new(0);
static FATAL: AtomicBool = AtomicBool::new(false);
/// The call in flight, for the fatal report: index, number, six arguments.
static LAST: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
static SEED: AtomicU64 = AtomicU64::new(0);

/// Reads `va` without risk: `None` if the read faulted.
fn probe(va: u64) -> Option<u64> {
    // SAFETY: `hcfuzz_probe` reads one u64 through a raw address and returns;
    // it creates no reference and writes nothing. A fault at its one load is
    // turned by `on_trap` (registered before the first probe) into a resume
    // after the load with rdx = 1; the other registers are as the
    // System V ABI expects for a call (the handler edits only rip and rdx).
    let p = unsafe { hcfuzz_probe(va) };
    (p.faulted == 0).then_some(p.value)
}

fn on_trap(f: &mut UpcallFrame) -> trap::TrapAction {
    if f.rip == hcfuzz_probe_insn as *const () as u64 && matches!(f.vector, 13 | 14) {
        PROBE_FAULTS.fetch_add(1, Ordering::Relaxed);
        f.rip += PROBE_INSN_LEN;
        f.rdx = 1;
        return trap::TrapAction::Resume;
    }
    if FATAL.swap(true, Ordering::AcqRel) {
        // A fault while reporting a fault: the formatting code itself may
        // be what is gone. Report the first one with nothing but stores of
        // bytes and two raw hypercalls.
        emergency(f);
    }
    FIRST[0].store(f.vector, Ordering::Relaxed);
    FIRST[1].store(f.rip, Ordering::Relaxed);
    FIRST[2].store(f.cr2, Ordering::Relaxed);
    let l: [u64; 8] = core::array::from_fn(|i| LAST[i].load(Ordering::Relaxed));
    println!();
    println!(
        "@ fuzz-fatal seed={:#x} index={} call={} nr={:#x} args={:#x},{:#x},{:#x},{:#x},{:#x},{:#x} vector={} error={:#x} rip={:#x} cr2={:#x}",
        SEED.load(Ordering::Relaxed),
        l[0],
        call_name(l[1]),
        l[1],
        l[2],
        l[3],
        l[4],
        l[5],
        l[6],
        l[7],
        f.vector,
        f.error_code,
        f.rip,
        f.cr2
    );
    trap::TrapAction::Crash
}

/// The first unexpected fault: vector, rip, cr2.
static FIRST: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// The emergency report's bytes (no stack array: nothing to zero-fill).
static EMERGENCY: [core::sync::atomic::AtomicU8; 512] =
    [const { core::sync::atomic::AtomicU8::new(0) }; 512];

/// Writes `@ fuzz-fatal` for the first fault (and the nested one, and the
/// loaded root as its self entry shows it) byte by byte, then shuts down.
fn emergency(nested: &UpcallFrame) -> ! {
    let mut n = 0usize;
    let mut put = |b: u8| {
        if n < EMERGENCY.len() {
            EMERGENCY[n].store(b, Ordering::Relaxed);
            n += 1;
        }
    };
    let text = |t: &[u8], put: &mut dyn FnMut(u8)| {
        for &b in t {
            put(b);
        }
    };
    let hex = |v: u64, put: &mut dyn FnMut(u8)| {
        put(b'0');
        put(b'x');
        for i in (0..16).rev() {
            let d = ((v >> (i * 4)) & 0xf) as u8;
            put(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        }
    };
    let loaded = probe(paging::entry_va(RECURSIVE_BASE, Level::L4)).unwrap_or(u64::MAX);
    let a0 = LAST[2].load(Ordering::Relaxed);
    let fields: [(&[u8], u64); 12] = [
        (
            b"\n@ fuzz-fatal reason=nested index=",
            LAST[0].load(Ordering::Relaxed),
        ),
        (b" nr=", LAST[1].load(Ordering::Relaxed)),
        (b" vector=", FIRST[0].load(Ordering::Relaxed)),
        (b" rip=", FIRST[1].load(Ordering::Relaxed)),
        (b" cr2=", FIRST[2].load(Ordering::Relaxed)),
        (b" nested_rip=", nested.rip),
        (b" nested_cr2=", nested.cr2),
        (b" self_entry=", loaded),
        (b" a0=", a0),
        (b" a1=", LAST[3].load(Ordering::Relaxed)),
        (b" req0=", probe(a0).unwrap_or(u64::MAX)),
        (b" req0val=", probe(a0.wrapping_add(8)).unwrap_or(u64::MAX)),
    ];
    for (name, v) in fields {
        text(name, &mut put);
        hex(v, &mut put);
    }
    put(b'\n');
    let ptr = EMERGENCY.as_ptr() as u64;
    // SAFETY: console_write reads `n` bytes of a static and shutdown ends
    // the domain; neither transfers control to guest code (CALL-4).
    unsafe {
        raw::syscall(
            Hypercall::ConsoleWrite.number(),
            [ptr, n as u64, 0, 0, 0, 0],
        );
        raw::syscall(Hypercall::Shutdown.number(), [2, 3, 0, 0, 0, 0]);
    }
    loop {
        core::hint::spin_loop();
    }
}

fn call_name(nr: u64) -> &'static str {
    Hypercall::from_number(nr).map_or("undefined", |h| h.spec_name())
}

// ---------------------------------------------------------------------------
// Scratch memory: pages 0 and 1 read-write, page 2 read-only (filled with
// requests before it is protected), page 3 unmapped.

#[repr(C, align(4096))]
struct Scratch([u8; 4 * PAGE as usize]);

/// Only reached through raw addresses (the hypervisor writes it on the
/// guest's behalf): never a Rust reference.
static mut SCRATCH: Scratch = Scratch([0; 4 * PAGE as usize]);

fn scratch_va() -> u64 {
    (&raw const SCRATCH) as u64
}

fn scratch_write_u64(offset: u64, v: u64) {
    debug_assert!(offset + 8 <= 2 * PAGE);
    // SAFETY: within the two read-write scratch pages; unaligned raw write,
    // no reference formed.
    unsafe { ((scratch_va() + offset) as *mut u64).write_unaligned(v) }
}

// ---------------------------------------------------------------------------
// Statistics.

struct Stats {
    hist: [[u64; RESULTS]; CALLS],
    calls: u64,
    aux_calls: u64,
    probes: u64,
    guarded: u64,
    identity: u64,
    mapped_pages_read: u64,
    secret_seen: u64,
    blocks: u64,
    populated: u64,
    released: u64,
}

impl Stats {
    const fn new() -> Stats {
        Stats {
            hist: [[0; RESULTS]; CALLS],
            calls: 0,
            aux_calls: 0,
            probes: 0,
            guarded: 0,
            identity: 0,
            mapped_pages_read: 0,
            secret_seen: 0,
            blocks: 0,
            populated: 0,
            released: 0,
        }
    }
}

fn bucket_of_call(nr: u64) -> usize {
    Hypercall::ALL
        .iter()
        .position(|h| h.number() == nr)
        .unwrap_or(CALLS - 1)
}

fn bucket_of_result(rax: u64) -> usize {
    let signed = rax as i64;
    if signed >= 0 {
        return 0;
    }
    match u16::try_from(signed.unsigned_abs())
        .ok()
        .and_then(Error::from_code)
    {
        Some(e) => usize::from(e.code()),
        None => RESULTS - 1,
    }
}

// ---------------------------------------------------------------------------
// The fuzzer's view of itself.

struct Fuzzer {
    rng: Rng,
    si: &'static StartInfo,
    holes_try: bool,
    my_id: u64,
    canary: u64,
    canary_secret: u64,
    nr_pages: u64,
    frames: &'static [u64],
    pt_first: u64,
    pt_pages: u64,
    root: u64,
    shared_mfn: u64,
    scratch: u64,
    /// First byte after the window.
    window_end: u64,
    pool: [u64; 512],
    pool_len: usize,
    ports: [u64; 32],
    ports_len: usize,
    timer_port: u64,
    final_port: u64,
    clock: TimeInfo,
    tsc_hz: u64,
    stats: Stats,
}

/// Classes of a pointer's use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The hypervisor writes through it.
    Write,
    /// The hypervisor reads data from it that it acts on or echoes.
    Read,
}

impl Fuzzer {
    fn now_ns(&self) -> u64 {
        self.clock.ns_at(guest_sdk::time::rdtsc())
    }

    fn own_frame(&mut self) -> u64 {
        self.frames[self.rng.below(self.frames.len() as u64) as usize]
    }

    fn pt_frame(&mut self) -> u64 {
        let i = self.rng.below(self.pt_pages);
        self.frames[(self.pt_first + i) as usize]
    }

    fn pool_frame(&mut self) -> u64 {
        if self.pool_len == 0 {
            return self.own_frame();
        }
        self.pool[self.rng.below(self.pool_len as u64) as usize]
    }

    fn real_port(&mut self) -> u64 {
        if self.ports_len == 0 {
            return 1;
        }
        self.ports[self.rng.below(self.ports_len as u64) as usize]
    }

    fn note_port(&mut self, p: u64) {
        if self.ports_len < self.ports.len() {
            self.ports[self.ports_len] = p;
            self.ports_len += 1;
        } else {
            let i = self.rng.below(self.ports.len() as u64) as usize;
            self.ports[i] = p;
        }
    }

    fn note_pool(&mut self, mfn: u64) {
        if self.pool[..self.pool_len].contains(&mfn) {
            return;
        }
        if self.pool_len < self.pool.len() {
            self.pool[self.pool_len] = mfn;
            self.pool_len += 1;
        }
    }

    fn forget_pool(&mut self, mfn: u64) {
        if let Some(i) = self.pool[..self.pool_len].iter().position(|&f| f == mfn) {
            self.pool[i] = self.pool[self.pool_len - 1];
            self.pool_len -= 1;
        }
    }

    // -- argument classes ---------------------------------------------------

    /// The classes every argument may get: zero, small, -1, huge,
    /// non-canonical, hypervisor half, unaligned, page-crossing, random.
    fn generic(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(9) {
            0 => 0,
            1 => r.below(17),
            2 => u64::MAX,
            3 => {
                let x = r.below(4096);
                r.pick(&[
                    1 << 63,
                    i64::MAX as u64,
                    u64::MAX - x,
                    1 << 32,
                    1 << 47,
                    1 << 52,
                    u32::MAX as u64,
                ])
            }
            4 => {
                let (x, y) = (r.below(1 << 20) << 12, r.below(1 << 30));
                r.pick(&[
                    GUEST_VA_TOP,
                    GUEST_VA_TOP + x,
                    0x8000_0000_0000_0000,
                    0xfff0_0000_0000_0000,
                    0x0001_0000_0000_0000 + y,
                ])
            }
            5 => {
                let (x, y) = (r.below(1 << 30) & !7, r.below(1 << 24) & !7);
                r.pick(&[
                    0xffff_8000_0000_0000 + x,
                    0xffff_ffff_8000_0000 + y,
                    0xffff_ff00_0000_0000,
                    0xffff_ffff_ffff_f000,
                ])
            }
            6 => (WINDOW_BASE + r.below(self.nr_pages) * PAGE) | r.range(1, 7),
            7 => self.scratch + 2 * PAGE - r.range(1, 16),
            _ => r.next(),
        }
    }

    /// A pointer for an access of `len` bytes.
    fn pointer(&mut self, len: u64) -> u64 {
        let s = self.scratch;
        let room = (2 * PAGE).saturating_sub(len.min(2 * PAGE));
        match self.rng.below(13) {
            0..=2 => s + (self.rng.below(room / 8 + 1) * 8),
            3 => (s + self.rng.below(room + 1)) | self.rng.range(1, 7),
            // Page-crossing: read-write into read-only, read-only into
            // unmapped.
            4 => s + 2 * PAGE - (len / 2).clamp(1, PAGE),
            5 => s + 3 * PAGE - (len / 2).clamp(1, PAGE),
            6 => s + 2 * PAGE + (self.rng.below(PAGE / 8) * 8),
            7 => self.si.page_va(self.si.first_free_page.saturating_sub(1)) + self.rng.below(PAGE),
            8 => SHARED_INFO_VA + self.rng.below(PAGE / 8) * 8,
            9 => self.si.frame_list_va + self.rng.below(PAGE / 8) * 8,
            10 => {
                let i = self.rng.below(self.pt_pages);
                self.si.page_va(self.pt_first + i) + self.rng.below(PAGE / 8) * 8
            }
            11 => RECURSIVE_BASE + (self.rng.next() & ((1 << 39) - 1) & !7),
            _ => self.generic(),
        }
    }

    /// A machine frame number.
    fn mfn(&mut self) -> u64 {
        match self.rng.below(11) {
            0 | 1 => self.own_frame(),
            2 => self.pt_frame(),
            3 => self.root,
            4 => self.pool_frame(),
            5 => self.shared_mfn,
            6 => {
                // Neighbours of its own frames: the canary's or the
                // hypervisor's, most likely.
                let f = self.own_frame();
                let d = self.rng.range(1, 64);
                if self.rng.chance(1, 2) {
                    f + d
                } else {
                    f.saturating_sub(d)
                }
            }
            7 => self.rng.below(0x800),
            8 => self
                .rng
                .pick(&[1 << 20, (1 << 40) - 1, (1 << 52) - 1, 1 << 36]),
            9 => paging::entry_mfn(self.rng.next()),
            _ => self.generic(),
        }
    }

    /// A page-table entry value.
    fn pte(&mut self) -> u64 {
        use guest_sdk::abi::pte;
        match self.rng.below(11) {
            0 => 0,
            1 | 2 => {
                let f = self.rng.pick(&[
                    Flags::READ_ONLY,
                    Flags::WRITABLE,
                    Flags::EXECUTABLE,
                    Flags::WRITABLE.union(Flags::EXECUTABLE),
                ]);
                let m = self.mfn();
                paging::leaf_entry(m, f)
            }
            3 => {
                let m = self.mfn();
                paging::table_entry(m)
            }
            4 => self.rng.pick(&[
                paging::self_entry(self.root),
                paging::table_entry(self.root),
            ]),
            5 => (self.mfn() << 12) | self.rng.below(0x1000) | (self.rng.next() & pte::NX),
            6 => {
                let m = self.mfn();
                paging::leaf_entry(m, Flags::WRITABLE) | (self.rng.range(1, 0x7ff) << 52)
            }
            7 => {
                let m = self.mfn();
                paging::table_entry(m) | pte::PS
            }
            8 => {
                // A copy of one of its own entries: aliases a table.
                let i = self.rng.below(self.pt_pages);
                let va = self.si.page_va(self.pt_first + i) + self.rng.below(512) * 8;
                probe(va).unwrap_or(0)
            }
            9 => (self.mfn() << 12) | (self.rng.below(0x1000) & !pte::PRESENT),
            _ => self.generic(),
        }
    }

    /// A virtual address for `update_va_mapping` / `mmu_invlpg` / probes.
    fn va(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(11) {
            // Places it does not use: below shared info, after the window,
            // the first 2 MiB, other L4 slots.
            0 => 0x20_0000 + r.below(511) * PAGE,
            1 => r.below(512) * PAGE,
            2 => self.window_end + r.below(64) * PAGE,
            3 => (r.range(1, 254) << 39) + (r.below(1 << 27) << 12),
            4 => WINDOW_BASE + r.below(self.nr_pages) * PAGE,
            5 => r.pick(&[
                SHARED_INFO_VA,
                self.scratch,
                self.scratch + 2 * PAGE,
                self.scratch + 3 * PAGE,
            ]),
            6 => RECURSIVE_BASE + (r.next() & ((1 << 39) - 1) & !(PAGE - 1)),
            7 => 0xffff_8000_0000_0000 + (r.below(1 << 30) << 12),
            8 => GUEST_VA_TOP + (r.below(1 << 20) << 12),
            9 => (0x20_0000 + r.below(511) * PAGE) | r.range(1, PAGE - 1),
            _ => self.generic(),
        }
    }

    fn count(&mut self, max: u64) -> u64 {
        let r = &mut self.rng;
        match r.below(10) {
            0 => 0,
            1 | 2 => 1,
            3 | 4 => r.range(2, 32),
            5 => 32 + r.below(2),
            6 => max - r.below(2),
            7 => max + 1,
            8 => r.below(max),
            _ => self.generic(),
        }
    }

    fn port(&mut self) -> u64 {
        match self.rng.below(8) {
            0..=3 => self.real_port(),
            4 => self.rng.below(17),
            5 => self.rng.pick(&[
                NR_PORTS as u64 - 1,
                NR_PORTS as u64,
                NR_PORTS as u64 + 1,
                u32::MAX as u64,
            ]),
            6 => self.rng.below(NR_PORTS as u64),
            _ => self.generic(),
        }
    }

    fn domid(&mut self) -> u64 {
        let r = &mut self.rng;
        match r.below(9) {
            0 => 0,
            1 => self.my_id,
            2 | 3 => self.canary,
            4 => DOMID_SELF,
            5 => r.range(3, 70),
            6 => r.pick(&[
                0xffff,
                DOMID_SELF - 1,
                DOMID_SELF + 1,
                0x1_0000 + self.canary,
            ]),
            _ => self.generic(),
        }
    }

    fn deadline(&mut self) -> u64 {
        let now = self.now_ns();
        let r = &mut self.rng;
        match r.below(8) {
            0 => 0,
            1 => r.below(1000),
            2 => now,
            3 => now + r.below(1_000_000),
            4 => now.saturating_sub(r.below(1_000_000_000)),
            5 => u64::MAX,
            6 => r.pick(&[1 << 63, i64::MAX as u64, now + 1_000_000_000_000]),
            _ => self.generic(),
        }
    }

    // -- guards -------------------------------------------------------------

    /// The entry for `va` at `level` in the loaded address space, read
    /// through the self entry with probes: `Ok(None)` when a table above
    /// it is not present (nothing maps `va`), `Err(())` when the walk
    /// cannot be read from ring 3 (an entry above without the user bit, a
    /// large page): then nobody knows here what the hypervisor would touch.
    fn entry(&self, va: u64, level: Level) -> Result<Option<u64>, ()> {
        use guest_sdk::abi::pte;
        let va = va & !(PAGE - 1);
        let in_self = (RECURSIVE_BASE..RECURSIVE_BASE + (1 << 39)).contains(&va);
        for l in [Level::L4, Level::L3, Level::L2, Level::L1] {
            let e = probe(paging::entry_va(va, l)).ok_or(())?;
            if l == level {
                return Ok(Some(e));
            }
            if !paging::is_present(e) {
                return Ok(None);
            }
            if (l == Level::L3 || l == Level::L2) && e & pte::PS != 0 {
                return Err(());
            }
            if l == Level::L4 && in_self {
                // The self entry: below it the "leaves" are table entries,
                // read by the same walk one level deeper.
                continue;
            }
        }
        Err(())
    }

    /// The leaf entry that maps `va` now (`Some(0)` when none, `None` when
    /// unknown). Tables seen through the self entry count as read-only.
    fn leaf(&self, va: u64) -> Option<u64> {
        let e = self.entry(va, Level::L1).ok()?.unwrap_or(0);
        if (RECURSIVE_BASE..RECURSIVE_BASE + (1 << 39)).contains(&va) {
            return Some(e & !guest_sdk::abi::pte::WRITABLE);
        }
        Some(e)
    }

    /// A page in the region below shared info that only the fuzzer's own
    /// calls ever map: a safe place to send a call aimed at an unknown one.
    fn sandbox_va(&mut self) -> u64 {
        0x20_0000 + self.rng.below(511) * PAGE
    }

    /// Pages whose content the fuzzer controls or never relies on.
    fn controlled(&self, page: u64) -> bool {
        let s = self.scratch;
        let si = self.si;
        let frame_list_pages = (si.nr_pages * 8).div_ceil(PAGE);
        (s..s + 3 * PAGE).contains(&page)
            || page == SHARED_INFO_VA
            || page == si.page_va(si.first_free_page.saturating_sub(1))
            || (si.frame_list_va..si.frame_list_va + frame_list_pages * PAGE).contains(&page)
            || (si.page_va(self.pt_first)..si.page_va(self.pt_first + self.pt_pages))
                .contains(&page)
            || (RECURSIVE_BASE..RECURSIVE_BASE + (1 << 39)).contains(&page)
    }

    /// `ptr` if an access of `len` bytes there cannot hurt the fuzzer, else a
    /// scratch address: a write must not land on writable memory other than
    /// scratch and shared info; a read must not take requests or text from
    /// memory the fuzzer does not control (its image, stack, aliases).
    fn guard(&mut self, ptr: u64, len: u64, access: Access) -> u64 {
        if len == 0 || ptr >= GUEST_VA_TOP || len > 3 * PAGE {
            return ptr;
        }
        let Some(last) = ptr.checked_add(len - 1) else {
            return ptr;
        };
        // The first pending and mask words of shared info hold the ports it
        // relies on (timer, canary final): a fake event there would be taken
        // for the canary's answer.
        let hits = |off: u64| ptr <= SHARED_INFO_VA + off + 7 && last >= SHARED_INFO_VA + off;
        if access == Access::Write && (hits(0) || hits(SHARED_MASK_OFFSET as u64)) {
            self.stats.guarded += 1;
            return self.scratch + self.rng.below(PAGE / 8) * 8;
        }
        let mut page = ptr & !(PAGE - 1);
        while page <= last {
            let ok = match access {
                Access::Write => {
                    let s = self.scratch;
                    (s..s + 2 * PAGE).contains(&page)
                        || page == SHARED_INFO_VA
                        || self
                            .leaf(page)
                            .is_some_and(|e| e & guest_sdk::abi::pte::WRITABLE == 0)
                }
                Access::Read => {
                    self.controlled(page) || self.leaf(page).is_some_and(|e| !paging::is_present(e))
                }
            };
            if !ok {
                self.stats.guarded += 1;
                return self.scratch + self.rng.below(PAGE / 8) * 8;
            }
            match page.checked_add(PAGE) {
                Some(p) if p < GUEST_VA_TOP => page = p,
                _ => break,
            }
        }
        ptr
    }

    /// Whether entry `index` of table frame `mfn` maps something the fuzzer
    /// runs on; if so, its current value.
    fn protected_entry(&self, mfn: u64, index: u64) -> Option<u64> {
        let i = (0..self.pt_pages).find(|&i| self.frames[(self.pt_first + i) as usize] == mfn)?;
        let window_l1s = self.nr_pages.div_ceil(512);
        let protected = match i {
            0 => index == 0 || index == paging::RECURSIVE_SLOT,
            1 => index == 0,
            2 => index == 1 || (2..2 + window_l1s).contains(&index),
            3 => index == 511,
            k => (k - 4) * 512 + index < self.nr_pages,
        };
        if !protected {
            return None;
        }
        let va = self.si.page_va(self.pt_first + i) + index * 8;
        // SAFETY: the window maps its page-table pages read-only (MEM-2);
        // `index < 512`; a volatile u64 read, no reference kept.
        Some(unsafe { (va as *const u64).read_volatile() })
    }

    /// For `ptr` of an `mmu_update` entry: the value to write instead of
    /// `val` if the entry is protected.
    fn protect_update(&mut self, ptr: u64, val: u64) -> u64 {
        if ptr & 7 != 0 {
            return val;
        }
        match self.protected_entry(ptr >> 12, (ptr & (PAGE - 1)) / 8) {
            Some(current) => {
                self.stats.identity += 1;
                current
            }
            None => val,
        }
    }

    /// For `update_va_mapping(va, val)`: the address and value to use. If
    /// the leaf entry the hypervisor would change is protected, its current
    /// value; if the walk to it cannot be read, a sandbox address instead.
    fn protect_va(&mut self, va: u64, val: u64) -> (u64, u64) {
        if va >= GUEST_VA_TOP {
            return (va, val);
        }
        let l2e = match self.entry(va, Level::L2) {
            Ok(Some(e)) if paging::is_present(e) => e,
            Ok(_) => return (va, val),
            Err(()) => {
                self.stats.guarded += 1;
                return (self.sandbox_va(), val);
            }
        };
        let index = paging::index(va, Level::L1) as u64;
        if let Some(current) = self.protected_entry(paging::entry_mfn(l2e), index) {
            self.stats.identity += 1;
            return (va, current);
        }
        if (RECURSIVE_BASE..RECURSIVE_BASE + (1 << 39)).contains(&va) {
            // Its leaf is an entry of one of the tables (possibly one built
            // by the fuzzer itself): keep it as it is.
            return match self.entry(va, Level::L1) {
                Ok(Some(e)) => {
                    self.stats.identity += 1;
                    (va, e)
                }
                Ok(None) => (va, val),
                Err(()) => {
                    self.stats.guarded += 1;
                    (self.sandbox_va(), val)
                }
            };
        }
        (va, val)
    }

    // -- one call -----------------------------------------------------------

    /// Builds one call: the number and the six argument registers.
    fn build(&mut self) -> (u64, [u64; 6]) {
        let nr = if self.rng.chance(1, 10) {
            self.undefined_number()
        } else {
            self.rng.pick(Hypercall::ALL).number()
        };
        let mut a: [u64; 6] = core::array::from_fn(|_| 0);
        for x in a.iter_mut() {
            *x = if self.rng.chance(1, 2) {
                0
            } else {
                self.generic()
            };
        }
        let Some(h) = Hypercall::from_number(nr) else {
            return (nr, a);
        };
        match h {
            Hypercall::AbiVersion
            | Hypercall::Yield
            | Hypercall::MmuFlushTlb
            | Hypercall::UpcallReturn => {
                if h == Hypercall::UpcallReturn {
                    a[0] = self.pointer(176);
                }
            }
            Hypercall::ConsoleWrite => {
                let len = match self.rng.below(10) {
                    0 => 0,
                    1..=4 => self.rng.range(1, 16),
                    5 => self.rng.below(256),
                    6 => self.rng.pick(&[4095, 4096, 4097]),
                    7 => u64::MAX,
                    _ => self.generic(),
                };
                let p = self.pointer(len);
                a[0] = self.guard(p, len, Access::Read);
                a[1] = len;
            }
            Hypercall::Block => a[0] = self.deadline(),
            Hypercall::Shutdown => {
                let reason = self.generic();
                // Reasons 0..=2 end the domain by design: never sent.
                a[0] = if reason <= 2 {
                    3 + self.rng.below(1000)
                } else {
                    reason
                };
            }
            Hypercall::TimerSet => {
                let mut d = self.deadline();
                let now = self.now_ns();
                if !self.holes_try && d != 0 && d > now + 1_000_000 {
                    d = now + self.rng.below(1_000_000);
                }
                a[0] = d;
            }
            Hypercall::EventAllocUnbound => a[0] = self.domid(),
            Hypercall::EventBindInterdomain => {
                a[0] = self.domid();
                a[1] = self.port();
            }
            Hypercall::EventBindVirq => a[0] = self.rng.pick(&[0, 0, 1, 2, u64::MAX]),
            Hypercall::EventSend | Hypercall::EventClose | Hypercall::EventUnmask => {
                let mut p = self.port();
                let kept = if h == Hypercall::EventUnmask {
                    false
                } else {
                    p == self.final_port || (h == Hypercall::EventClose && p == self.timer_port)
                };
                if kept {
                    p = NR_PORTS as u64 + self.rng.below(8);
                }
                a[0] = p;
            }
            Hypercall::SetCallbacks => {
                for x in a.iter_mut().take(2) {
                    *x = match self.rng.below(4) {
                        0 => 0,
                        1 => self.va(),
                        _ => self.generic(),
                    };
                }
                a[2] = match self.rng.below(4) {
                    0 => 0,
                    1 => self.scratch + 2 * PAGE,
                    2 => self.pointer(16),
                    _ => self.generic(),
                };
            }
            Hypercall::MmuUpdate => {
                let count = self.count(MMU_BATCH_MAX);
                let len = count.saturating_mul(16);
                let mut reqs = self.pointer(len);
                reqs = self.guard(reqs, len, Access::Read);
                self.fill_requests(reqs, count);
                if self.requests_hurt(reqs, count) {
                    // Requests it did not write (its tables' junk entries,
                    // leftovers in scratch) that would change a protected
                    // entry: send generated ones instead.
                    self.stats.guarded += 1;
                    reqs = self.scratch + self.rng.below(PAGE / 16) * 16;
                    self.fill_requests(reqs, count);
                }
                a[0] = reqs;
                a[1] = count;
                a[2] = if self.rng.chance(1, 3) {
                    0
                } else {
                    let p = self.pointer(8);
                    self.guard(p, 8, Access::Write)
                };
            }
            Hypercall::MmuPin => {
                a[0] = self.mfn();
                a[1] = match self.rng.below(3) {
                    0 | 1 => self.rng.range(1, 4),
                    _ => self.rng.pick(&[0, 5, u64::MAX]),
                };
                // A frame that becomes an L4 gets the hypervisor's slots
                // written into its upper half (MMU-3): never one of the
                // window's frames (its code, data, read-only pages).
                if a[1] == 4 && self.frames.contains(&a[0]) {
                    self.stats.identity += 1;
                    a[0] = if self.pool_len > 0 {
                        self.pool_frame()
                    } else {
                        self.root
                    };
                }
            }
            Hypercall::MmuUnpin => a[0] = self.mfn(),
            Hypercall::MmuSwitchRoot => {
                let m = self.mfn();
                a[0] = self.protect_root(m);
            }
            Hypercall::MmuInvlpg => a[0] = self.va(),
            Hypercall::UpdateVaMapping => {
                let va = self.va();
                let val = self.pte();
                (a[0], a[1]) = self.protect_va(va, val);
                a[2] = self.rng.pick(&[0, 1, 1, 2, 3, u64::MAX]);
            }
            Hypercall::MmuFrameInfo => {
                a[0] = self.mfn();
                let p = self.pointer(24);
                a[1] = self.guard(p, 24, Access::Write);
            }
            Hypercall::MemoryPopulate => {
                let count = self.count(MEMORY_BATCH_MAX);
                let len = count.saturating_mul(8);
                let p = self.pointer(len);
                a[0] = self.guard(p, len, Access::Write);
                a[1] = count;
            }
            Hypercall::MemoryRelease => {
                let count = self.count(MEMORY_BATCH_MAX);
                let len = count.saturating_mul(8);
                let p = self.pointer(len);
                let p = self.guard(p, len, Access::Read);
                self.fill_frames(p, count);
                a[0] = p;
                a[1] = count;
            }
            Hypercall::MemoryInfo => {
                let p = if self.rng.chance(1, 4) {
                    0
                } else {
                    self.pointer(16)
                };
                a[0] = self.guard(p, 16, Access::Write);
            }
            // Grants (GNT-*): nobody grants this domain anything, so maps
            // and copies from grants are refused; its own grants are
            // harmless. Copies write only into pool frames (never its code,
            // data or tables).
            Hypercall::GrantAccess => {
                a[0] = self.mfn();
                a[1] = self.domid();
                a[2] = self.rng.pick(&[0, 1, 2, 3, 4, u64::MAX]);
                a[3] = self.rng.below(600);
            }
            Hypercall::GrantRevoke | Hypercall::GrantUnmap => {
                a[0] = if self.rng.chance(1, 4) {
                    self.generic()
                } else {
                    self.rng.below(1100)
                };
            }
            Hypercall::GrantMap => {
                a[0] = self.domid();
                a[1] = self.rng.below(600);
                a[2] = self.va();
                a[3] = self.rng.pick(&[0, 1, 2]);
            }
            Hypercall::GrantCopy => {
                let count = self.count(64);
                let ops = self.scratch + self.rng.below(8) * 8;
                self.fill_copy_ops(ops, count);
                a[0] = ops;
                a[1] = count;
            }
            Hypercall::IoIrqAck => {
                // The fuzzer is no driver domain: permission_denied or,
                // past the table, not_found (IO-1). Small indices mostly.
                a[0] = if self.rng.chance(3, 4) {
                    self.rng.below(8)
                } else {
                    self.generic()
                };
            }
        }
        (nr, a)
    }

    fn undefined_number(&mut self) -> u64 {
        loop {
            let n = match self.rng.below(4) {
                0 => self.rng.below(0x60),
                1 => self.rng.below(0x1000),
                2 => self.rng.pick(&[u64::MAX, 1 << 63, 1 << 32, 0x100]),
                _ => self.rng.next(),
            };
            if Hypercall::from_number(n).is_none() {
                return n;
            }
        }
    }

    /// Never switch to another pinned L4 of its own: that address space
    /// maps nothing the fuzzer runs on.
    fn protect_root(&mut self, mfn: u64) -> u64 {
        if mfn == self.root {
            return mfn;
        }
        self.stats.aux_calls += 1;
        match paging::frame_info(mfn) {
            Ok(FrameInfo { page_type, .. }) if page_type == FrameType::L4 as u32 => {
                self.stats.identity += 1;
                self.root
            }
            _ => mfn,
        }
    }

    /// Whether the `count` requests at `reqs`, as the hypervisor would
    /// read them, include one that changes a protected entry (up to the
    /// first unreadable one, where the hypervisor stops too).
    fn requests_hurt(&self, reqs: u64, count: u64) -> bool {
        if count > MMU_BATCH_MAX {
            return false;
        }
        for i in 0..count {
            let at = reqs.wrapping_add(i * 16);
            let (Some(ptr), Some(val)) = (probe(at), probe(at.wrapping_add(8))) else {
                return false;
            };
            if ptr & 7 != 0 {
                continue;
            }
            if let Some(current) = self.protected_entry(ptr >> 12, (ptr & (PAGE - 1)) / 8) {
                if (current ^ val) & !CPU_BITS != 0 {
                    return true;
                }
            }
        }
        false
    }

    /// Writes `count` generated requests at `reqs` where it is scratch.
    fn fill_requests(&mut self, reqs: u64, count: u64) {
        let s = self.scratch;
        if !(s..s + 2 * PAGE).contains(&reqs) {
            return;
        }
        let room = (s + 2 * PAGE - reqs) / 16;
        for i in 0..count.min(room) {
            let (ptr, val) = self.request();
            let at = reqs - s + i * 16;
            scratch_write_u64(at, ptr);
            scratch_write_u64(at + 8, val);
        }
    }

    /// One `mmu_update` entry, protected.
    fn request(&mut self) -> (u64, u64) {
        let idx = self.rng.below(512) * 8;
        let ptr = match self.rng.below(9) {
            0..=3 => (self.pt_frame() << 12) | idx,
            4 => (self.pool_frame() << 12) | idx,
            5 => (self.own_frame() << 12) | idx,
            6 => (self.pt_frame() << 12) | idx | self.rng.range(1, 7),
            7 => (self.mfn() << 12) | idx,
            _ => self.generic(),
        };
        let val = self.pte();
        (ptr, self.protect_update(ptr, val))
    }

    /// Writes `count` frame numbers at `list` where it is scratch.
    fn fill_frames(&mut self, list: u64, count: u64) {
        let s = self.scratch;
        if !(s..s + 2 * PAGE).contains(&list) {
            return;
        }
        let room = (s + 2 * PAGE - list) / 8;
        let mut prev = 0;
        for i in 0..count.min(room) {
            let f = match self.rng.below(6) {
                0 | 1 => self.pool_frame(),
                2 => prev,
                _ => self.mfn(),
            };
            prev = f;
            scratch_write_u64(list - s + i * 8, f);
        }
    }

    /// Fills `count` grant-copy elements at `ops` (in scratch): sources
    /// anywhere, destinations only pool frames, foreign frames or grants.
    fn fill_copy_ops(&mut self, ops: u64, count: u64) {
        let s = self.scratch;
        let room = (s + 2 * PAGE - ops) / 56;
        for i in 0..count.min(room) {
            let src_own = self.rng.chance(1, 2);
            let (sd, sf) = if src_own {
                (DOMID_SELF, self.mfn())
            } else {
                (self.domid(), self.rng.below(600))
            };
            let (dd, df) = match self.rng.below(3) {
                0 if self.pool_len > 0 => (DOMID_SELF, self.pool_frame()),
                1 => (self.domid(), self.rng.below(600)),
                _ => (DOMID_SELF, u64::MAX - self.rng.below(4)),
            };
            let len = self
                .rng
                .pick(&[0, 1, 8, 4095, 4096, 4097, u64::from(u32::MAX)]);
            let off = |r: &mut Rng| r.pick(&[0, 1, 8, 4095, 4096, 1 << 20]);
            let (so, dof) = (off(&mut self.rng), off(&mut self.rng));
            let base = ops - s + i * 56;
            for (k, w) in [sd, sf, so, dd, df, dof, len].iter().enumerate() {
                scratch_write_u64(base + k as u64 * 8, *w);
            }
        }
    }

    /// Makes the call; returns the raw result word.
    fn issue(&mut self, nr: u64, a: [u64; 6]) -> u64 {
        match Hypercall::from_number(nr) {
            Some(Hypercall::SetCallbacks) => event::without_upcalls(|| {
                // SAFETY: upcalls are masked and this code does not fault
                // between the two calls, so whatever entries the fuzzed call
                // installed are never entered: the SDK's own entries and
                // stack are registered again at once (`set_handler`).
                let r = unsafe { raw::syscall(nr, a) };
                if trap::set_handler(on_trap).is_err() {
                    FATAL.store(true, Ordering::Release);
                }
                self.stats.aux_calls += 1;
                r
            }),
            Some(Hypercall::Block) => {
                // The timer always ends the block, whatever its deadline.
                // Upcalls stay masked until `block` unmasks them atomically
                // (SCHED-2a): a timer that fires before the block then stays
                // pending and ends it at once, instead of being consumed by
                // an upcall and leaving the block with nothing to wake it.
                self.stats.aux_calls += 2;
                self.stats.blocks += 1;
                let timer = Port(self.timer_port as u32);
                let wake = self.now_ns() + 200_000;
                event::without_upcalls(|| {
                    let _ = event::unmask(timer);
                    let _ = raw::call1(Hypercall::TimerSet, wake);
                    // SAFETY: `block` does not transfer control (CALL-4
                    // covers its arguments).
                    unsafe { raw::syscall(nr, a) }
                })
            }
            // SAFETY: `upcall_return` outside any upcall is refused before
            // its frame is read (TRAP-2: wrong_state; main never runs inside
            // an upcall). Every other number is either a call that only acts
            // on hypervisor state and on memory the hypervisor checks
            // (CALL-4), with the pointers guarded above, or undefined
            // (CALL-3: no_such_call).
            _ => unsafe { raw::syscall(nr, a) },
        }
    }

    /// The protected entries as they are now, into `snap`. The accessed and
    /// dirty bits are left out: the CPU sets them.
    fn snapshot(&self, snap: &mut [u64; SNAP_ENTRIES]) {
        for i in 0..self.pt_pages.min(SNAP_TABLES) {
            let mfn = self.frames[(self.pt_first + i) as usize];
            for index in 0..512 {
                let at = (i * 512 + index) as usize;
                snap[at] = self.protected_entry(mfn, index).unwrap_or(0) & !CPU_BITS;
            }
        }
    }

    /// The first protected entry that differs from `snap`: (table, index,
    /// then, now).
    fn changed(&self, snap: &[u64; SNAP_ENTRIES]) -> Option<(u64, u64, u64, u64)> {
        for i in 0..self.pt_pages.min(SNAP_TABLES) {
            let mfn = self.frames[(self.pt_first + i) as usize];
            for index in 0..512 {
                let now = self.protected_entry(mfn, index).unwrap_or(0) & !CPU_BITS;
                let then = snap[(i * 512 + index) as usize];
                if now != then {
                    return Some((i, index, then, now));
                }
            }
        }
        None
    }

    /// After a call: learn fresh frames and ports, look through new
    /// mappings for the canary's secret.
    fn learn(&mut self, nr: u64, a: [u64; 6], rax: u64) {
        if (rax as i64) < 0 {
            return;
        }
        match Hypercall::from_number(nr) {
            Some(Hypercall::MemoryPopulate) => {
                self.stats.populated += a[1];
                for i in 0..a[1].min(MEMORY_BATCH_MAX) {
                    if let Some(f) = probe(a[0] + i * 8) {
                        self.note_pool(f);
                    }
                }
            }
            Some(Hypercall::MemoryRelease) => {
                self.stats.released += a[1];
                for i in 0..a[1].min(MEMORY_BATCH_MAX) {
                    if let Some(f) = probe(a[0] + i * 8) {
                        self.forget_pool(f);
                    }
                }
            }
            Some(
                Hypercall::EventAllocUnbound
                | Hypercall::EventBindInterdomain
                | Hypercall::EventBindVirq,
            ) => self.note_port(rax),
            Some(Hypercall::UpdateVaMapping) if paging::is_present(a[1]) => self.read_page(a[0]),
            _ => {}
        }
    }

    /// Reads the page at `va` (if mapped) looking for the canary's secret.
    fn read_page(&mut self, va: u64) {
        let page = va & !(PAGE - 1);
        // Its own window frames hold the secret legitimately (it was given
        // the value to look for): only other frames count.
        let mfn = self.leaf(page).map(paging::entry_mfn);
        if mfn.is_some_and(|m| self.frames.contains(&m)) || probe(page).is_none() {
            return;
        }
        self.stats.mapped_pages_read += 1;
        for i in 0..PAGE / 8 {
            if let Some(v) = probe(page + i * 8) {
                if self.canary != 0 && (v ^ self.canary_secret) < CANARY_WORDS {
                    self.stats.secret_seen += 1;
                    println!();
                    println!(
                        "@ fuzz-breach seed={:#x} va={:#x} value={:#x}",
                        SEED.load(Ordering::Relaxed),
                        page + i * 8,
                        v
                    );
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------

fn arg(si: &StartInfo, key: &str) -> Option<u64> {
    let v = si.cmdline_value(key)?;
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

static ACKED: AtomicBool = AtomicBool::new(false);

fn on_ack(_: Port) {
    ACKED.store(true, Ordering::Release);
}

fn on_nothing(_: Port) {}

/// FNV-1a over `len` bytes at `va` (read-only memory it checks at the end).
fn checksum(va: u64, len: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..len / 8 {
        h = (h ^ probe(va + i * 8).unwrap_or(0xdead)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn main(_: &StartInfo) -> i32 {
    let si = guest_sdk::start_info();
    let seed = arg(si, "seed").unwrap_or_else(guest_sdk::time::rdtsc);
    SEED.store(seed, Ordering::Relaxed);
    let calls = arg(si, "calls").unwrap_or(20_000);
    let canary = arg(si, "canary").unwrap_or(0);
    let holes_try = si.cmdline_value("holes") == Some("try");
    let trace_from = arg(si, "trace").unwrap_or(u64::MAX);
    let progress = arg(si, "progress").unwrap_or(0);
    let trace_changes = si.cmdline_value("trace_changes").is_some();
    let watch_all = si.cmdline_value("watch_all").is_some();
    println!(
        "@ fuzz-start seed={:#x} calls={} canary={} holes={}",
        seed,
        calls,
        canary,
        if holes_try { "try" } else { "avoid" }
    );
    println!(
        "hcfuzz: reproduce with `cargo xtask fuzz --seed {seed:#x} --calls {calls}` (docs/testing.md)"
    );

    if let Err(e) = trap::set_handler(on_trap) {
        println!("hcfuzz: cannot register the trap handler: {e}");
        return 2;
    }
    let (Some(root), Some((shared_mfn, _))) =
        (paging::root_mfn(), paging::translate(SHARED_INFO_VA))
    else {
        println!("hcfuzz: cannot read its own page tables (no self entry)");
        return 2;
    };
    // A clock of its own: the shared-info time record is a fuzzing target.
    let clock = {
        let v = |off: u64| probe(SHARED_INFO_VA + SHARED_TIME_OFFSET as u64 + off).unwrap_or(0);
        TimeInfo {
            version: 0,
            reserved: 0,
            tsc_timestamp: v(8),
            system_time_ns: v(16),
            tsc_mul: v(24),
        }
    };

    // Scratch page 2 gets requests, then becomes read-only; page 3 is
    // unmapped.
    let scratch = scratch_va();
    let mut f = Fuzzer {
        rng: Rng::new(seed),
        si,
        holes_try,
        my_id: u64::from(si.domain_id),
        canary,
        canary_secret: arg(si, "canary_secret").unwrap_or(0x5ec2_e7c0_ffee_d00d),
        nr_pages: si.nr_pages,
        frames: paging::frame_list(),
        pt_first: si.pt_first_page,
        pt_pages: si.pt_pages,
        root,
        shared_mfn,
        scratch,
        window_end: si.page_va(si.nr_pages),
        pool: [0; 512],
        pool_len: 0,
        ports: [0; 32],
        ports_len: 0,
        timer_port: 0,
        final_port: u64::MAX,
        clock,
        tsc_hz: si.tsc_hz.max(1),
        stats: Stats::new(),
    };
    println!(
        "hcfuzz: window {} pages, frames {:#x}..{:#x}, root {:#x}, shared info {:#x}, scratch {:#x}",
        f.nr_pages,
        f.frames.first().copied().unwrap_or(0),
        f.frames.last().copied().unwrap_or(0),
        f.root,
        f.shared_mfn,
        scratch
    );
    let ro = scratch + 2 * PAGE;
    // The entries of pages 2 and 3 as they will be once protected below:
    // requests stored in page 2 must keep them so.
    let after: [(u64, u64); 2] = core::array::from_fn(|k| {
        let va = ro + k as u64 * PAGE;
        let ptr = paging::table_mfn(va, Level::L1).map_or(u64::MAX, |l1| {
            paging::entry_ptr(l1, paging::index(va, Level::L1))
        });
        let val = match (k, paging::translate(va)) {
            (0, Some((mfn, _))) => paging::leaf_entry(mfn, Flags::READ_ONLY),
            _ => 0,
        };
        (ptr, val)
    });
    let mut bytes = [0u8; PAGE as usize];
    for chunk in bytes.chunks_mut(16) {
        let (p, mut v) = f.request();
        if let Some(&(_, later)) = after.iter().find(|(ptr, _)| *ptr == p) {
            v = later;
        }
        chunk[..8].copy_from_slice(&p.to_le_bytes());
        chunk[8..].copy_from_slice(&v.to_le_bytes());
    }
    // SAFETY: page 2 of the scratch area, writable until protected below.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), ro as *mut u8, PAGE as usize);
    }
    let prepared = paging::translate(ro).and_then(|(mfn, _)| {
        paging::update_va_mapping(ro, paging::leaf_entry(mfn, Flags::READ_ONLY), true).ok()?;
        paging::update_va_mapping(ro + PAGE, 0, true).ok()
    });
    if prepared.is_none() {
        println!("hcfuzz: cannot protect its scratch pages");
        return 2;
    }

    // Ports: the timer (for blocks), and the canary's two.
    let ports = event::without_upcalls(|| {
        event::bind_virq_with(guest_sdk::abi::args::Virq::Timer, on_nothing)
    });
    match ports {
        Ok(p) => {
            f.timer_port = u64::from(p.0);
            f.note_port(f.timer_port);
        }
        Err(e) => {
            println!("hcfuzz: cannot bind the timer: {e}");
            return 2;
        }
    }
    let mut final_port = None;
    if canary != 0 {
        let bind = |remote: u32| loop {
            match event::bind_interdomain(DomId(canary as u16), Port(remote)) {
                Ok(p) => break p,
                Err(Error::NotFound | Error::WrongState | Error::PermissionDenied) => {
                    guest_sdk::sched::yield_now()
                }
                Err(e) => {
                    println!("hcfuzz: cannot bind the canary's port {remote}: {e}");
                    break Port(0);
                }
            }
        };
        let poke = bind(1);
        let fin = event::without_upcalls(|| {
            let p = bind(2);
            event::set_handler(p, on_ack);
            p
        });
        f.note_port(u64::from(poke.0));
        f.final_port = u64::from(fin.0);
        final_port = Some(fin);
    }
    let ro_sum = |f: &Fuzzer| {
        checksum(f.si.page_va(f.si.first_free_page.saturating_sub(1)), PAGE)
            ^ checksum(f.si.frame_list_va, f.nr_pages * 8).rotate_left(1)
            ^ checksum(ro, PAGE).rotate_left(2)
    };
    let ro_before = ro_sum(&f);

    let mut snap = [0u64; SNAP_ENTRIES];
    f.snapshot(&mut snap);
    let t0 = guest_sdk::time::rdtsc();
    for i in 0..calls {
        if f.rng.chance(1, 25) {
            // A probe of an address from the same classes: a fault must be
            // reflected to us, a mapping must not show the canary's secret.
            f.stats.probes += 1;
            let va = f.va();
            if i >= trace_from {
                println!("hcfuzz: probe {va:#x}");
            }
            if va < GUEST_VA_TOP && !f.controlled(va & !(PAGE - 1)) {
                f.read_page(va);
            } else {
                let _ = probe(va);
            }
        }
        let (nr, a) = f.build();
        LAST[0].store(i, Ordering::Relaxed);
        LAST[1].store(nr, Ordering::Relaxed);
        for (slot, v) in LAST[2..].iter().zip(a) {
            slot.store(v, Ordering::Relaxed);
        }
        if i >= trace_from {
            println!("hcfuzz: #{i} {} {:#x?} ...", call_name(nr), a);
        }
        let rax = f.issue(nr, a);
        f.stats.calls += 1;
        f.stats.hist[bucket_of_call(nr)][bucket_of_result(rax)] += 1;
        if watch_all || ((rax as i64) >= 0 && changes_tables(nr)) {
            if let Some((table, index, then, now)) = f.changed(&snap) {
                // The fuzzer rewrites these entries only with their own
                // value: whatever changed one is the finding.
                println!();
                println!(
                    "@ fuzz-fatal seed={:#x} index={} call={} nr={:#x} args={:#x},{:#x},{:#x},{:#x},{:#x},{:#x} reason=protected-entry-changed table={} entry={} was={:#x} now={:#x}",
                    seed,
                    i,
                    call_name(nr),
                    nr,
                    a[0],
                    a[1],
                    a[2],
                    a[3],
                    a[4],
                    a[5],
                    table,
                    index,
                    then,
                    now
                );
                return 1;
            }
        }
        if i >= trace_from || (trace_changes && (rax as i64) >= 0 && changes_tables(nr)) {
            println!(
                "hcfuzz: #{i} {}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}) = {}",
                call_name(nr),
                a[0],
                a[1],
                a[2],
                a[3],
                a[4],
                a[5],
                RESULT_NAMES[bucket_of_result(rax)]
            );
        }
        f.learn(nr, a, rax);
        if progress != 0 && (i + 1) % progress == 0 {
            let ns = elapsed_ns(t0, f.tsc_hz);
            println!();
            println!(
                "@ fuzz-progress calls={} elapsed_ms={} calls_per_sec={}",
                i + 1,
                ns / 1_000_000,
                per_sec(i + 1, ns)
            );
        }
    }
    let ns = elapsed_ns(t0, f.tsc_hz);

    // The canary's last check, after the last call.
    let mut acked = canary == 0;
    if let Some(fin) = final_port {
        ACKED.store(false, Ordering::Release);
        let _ = event::unmask(fin);
        let _ = event::send(fin);
        let until = f.now_ns() + 5_000_000_000;
        while !ACKED.load(Ordering::Acquire) && f.now_ns() < until {
            let _ = event::unmask(fin);
            guest_sdk::sched::block(f.now_ns() + 1_000_000);
        }
        acked = ACKED.load(Ordering::Acquire);
    }
    let ro_intact = ro_sum(&f) == ro_before;

    println!();
    for (c, row) in f.stats.hist.iter().enumerate() {
        let name = Hypercall::ALL.get(c).map_or("undefined", |h| h.spec_name());
        let n: u64 = row.iter().sum();
        let mut line = heapless_line();
        let _ = core::fmt::write(&mut line, format_args!("@ fuzz-call call={name} n={n}"));
        for (r, count) in row.iter().enumerate() {
            let _ = core::fmt::write(&mut line, format_args!(" {}={}", RESULT_NAMES[r], count));
        }
        println!("{}", line.as_str());
    }
    let s = &f.stats;
    // Two lines: the hypervisor's console cuts lines at 256 bytes.
    println!(
        "@ fuzz-summary seed={:#x} calls={} target={} elapsed_ms={} calls_per_sec={} aux_calls={} holes={}",
        seed,
        s.calls,
        calls,
        ns / 1_000_000,
        per_sec(s.calls, ns),
        s.aux_calls,
        if holes_try { "try" } else { "avoid" }
    );
    println!(
        "@ fuzz-checks ro_intact={} canary_acked={} secret_seen={} probes={} probe_faults={} pages_read={} guarded={} identity={} blocks={} populated={} released={}",
        u8::from(ro_intact),
        u8::from(acked),
        s.secret_seen,
        s.probes,
        PROBE_FAULTS.load(Ordering::Relaxed),
        s.mapped_pages_read,
        s.guarded,
        s.identity,
        s.blocks,
        s.populated,
        s.released
    );
    let ok = s.calls == calls && ro_intact && acked && s.secret_seen == 0;
    i32::from(!ok)
}

/// Calls after whose success the protected entries are compared.
fn changes_tables(nr: u64) -> bool {
    matches!(
        Hypercall::from_number(nr),
        Some(
            Hypercall::MmuUpdate
                | Hypercall::UpdateVaMapping
                | Hypercall::MmuPin
                | Hypercall::MmuUnpin
                | Hypercall::MmuSwitchRoot
                | Hypercall::MemoryPopulate
                | Hypercall::MemoryRelease
        )
    )
}

fn elapsed_ns(t0: u64, tsc_hz: u64) -> u64 {
    let ticks = guest_sdk::time::rdtsc().saturating_sub(t0);
    (u128::from(ticks) * 1_000_000_000 / u128::from(tsc_hz)) as u64
}

fn per_sec(n: u64, ns: u64) -> u64 {
    (u128::from(n) * 1_000_000_000 / u128::from(ns.max(1))) as u64
}

/// A line buffer for the histogram (no heap: the fuzzer never grows it).
struct Line {
    buf: [u8; 512],
    len: usize,
}

fn heapless_line() -> Line {
    Line {
        buf: [0; 512],
        len: 0,
    }
}

impl Line {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let b = s.as_bytes();
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        Ok(())
    }
}
