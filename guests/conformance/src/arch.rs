//! Assembly for the conformance guest: register probes around `syscall`,
//! its own upcall entries (so frames and entry state can be inspected),
//! and the shared-info page as atomics.
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use guest_sdk::abi::layout::{
    UpcallFrame, PORT_WORDS, SHARED_INFO_VA, SHARED_MASK_OFFSET, SHARED_PENDING_OFFSET,
    SHARED_PENDING_SEL_OFFSET, SHARED_UPCALL_MASK_OFFSET, SHARED_UPCALL_PENDING_OFFSET,
};

/// Values the probes load into registers: `PATTERN[i]` for register `i` of
/// [`PROBE_REGS`].
pub const PATTERN: [u64; 12] = [
    0x0b0b_0b0b_1111_0001,
    0x0b0b_0b0b_2222_0002,
    0, // rdi: the argument
    0x0b0b_0b0b_4444_0004,
    0x0b0b_0b0b_5555_0005,
    0x0b0b_0b0b_6666_0006,
    0x0b0b_0b0b_7777_0007,
    0x0b0b_0b0b_8888_0008,
    0x0b0b_0b0b_9999_0009,
    0x0b0b_0b0b_aaaa_000a,
    0x0b0b_0b0b_bbbb_000b,
    0x0b0b_0b0b_cccc_000c,
];

/// Register names in the order of [`PATTERN`] and the probe's output.
pub const PROBE_REGS: [&str; 12] = [
    "rbx", "rbp", "rdi", "rsi", "rdx", "r10", "r8", "r9", "r12", "r13", "r14", "r15",
];

/// Red-zone canaries written below `rsp` before the `syscall`.
pub const CANARY: [u64; 4] = [
    0x7265_647a_6f6e_6501,
    0x7265_647a_6f6e_6502,
    0x7265_647a_6f6e_6503,
    0x7265_647a_6f6e_6504,
];

core::arch::global_asm!(
    // conf_probe(nr: rdi, a0: rsi, out: rdx): loads PATTERN into every
    // register but rax/rcx/r11, canaries into the red zone, makes the call,
    // and stores 12 registers, the 4 canaries and rax into out[0..17].
    ".globl conf_probe",
    "conf_probe:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    push rdx",
    "    mov rax, rdi",
    "    mov rdi, rsi",
    "    movabs rcx, {c0}",
    "    mov [rsp - 8], rcx",
    "    movabs rcx, {c1}",
    "    mov [rsp - 32], rcx",
    "    movabs rcx, {c2}",
    "    mov [rsp - 64], rcx",
    "    movabs rcx, {c3}",
    "    mov [rsp - 128], rcx",
    "    movabs rbx, {p0}",
    "    movabs rbp, {p1}",
    "    movabs rsi, {p3}",
    "    movabs rdx, {p4}",
    "    movabs r10, {p5}",
    "    movabs r8, {p6}",
    "    movabs r9, {p7}",
    "    movabs r12, {p8}",
    "    movabs r13, {p9}",
    "    movabs r14, {p10}",
    "    movabs r15, {p11}",
    "    syscall",
    ".globl conf_probe_after",
    "conf_probe_after:",
    "    xchg rax, [rsp]",
    "    mov [rax + 0], rbx",
    "    mov [rax + 8], rbp",
    "    mov [rax + 16], rdi",
    "    mov [rax + 24], rsi",
    "    mov [rax + 32], rdx",
    "    mov [rax + 40], r10",
    "    mov [rax + 48], r8",
    "    mov [rax + 56], r9",
    "    mov [rax + 64], r12",
    "    mov [rax + 72], r13",
    "    mov [rax + 80], r14",
    "    mov [rax + 88], r15",
    "    mov rcx, [rsp - 8]",
    "    mov [rax + 96], rcx",
    "    mov rcx, [rsp - 32]",
    "    mov [rax + 104], rcx",
    "    mov rcx, [rsp - 64]",
    "    mov [rax + 112], rcx",
    "    mov rcx, [rsp - 128]",
    "    mov [rax + 120], rcx",
    "    mov rcx, [rsp]",
    "    mov [rax + 128], rcx",
    "    pushfq",
    "    pop rcx",
    "    mov [rax + 136], rcx",
    "    cld",
    "    pushfq",
    "    and qword ptr [rsp], {noac}",
    "    popfq",
    "    pop rdx",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    // conf_preempt(deadline_tsc: rdi) -> rax: 0, or 1 + the index of the
    // first register found changed while spinning until the deadline.
    ".globl conf_preempt",
    "conf_preempt:",
    "    push rbx",
    "    push rbp",
    "    push r12",
    "    push r13",
    "    push r14",
    "    push r15",
    "    mov rcx, rdi",
    "    mov ebx, 0x11111111",
    "    mov ebp, 0x22222222",
    "    mov esi, 0x33333333",
    "    mov edi, 0x44444444",
    "    mov r8d, 0x55555555",
    "    mov r9d, 0x66666666",
    "    mov r10d, 0x77777777",
    "    mov r11d, 0x78787878",
    "    mov r12d, 0x79797979",
    "    mov r13d, 0x7a7a7a7a",
    "    mov r14d, 0x7b7b7b7b",
    "    mov r15d, 0x7c7c7c7c",
    "2:",
    "    cmp rbx, 0x11111111",
    "    jne 3f",
    "    cmp rbp, 0x22222222",
    "    jne 3f",
    "    cmp rsi, 0x33333333",
    "    jne 3f",
    "    cmp rdi, 0x44444444",
    "    jne 3f",
    "    cmp r8, 0x55555555",
    "    jne 3f",
    "    cmp r9, 0x66666666",
    "    jne 3f",
    "    cmp r10, 0x77777777",
    "    jne 3f",
    "    cmp r11, 0x78787878",
    "    jne 3f",
    "    cmp r12, 0x79797979",
    "    jne 3f",
    "    cmp r13, 0x7a7a7a7a",
    "    jne 3f",
    "    cmp r14, 0x7b7b7b7b",
    "    jne 3f",
    "    cmp r15, 0x7c7c7c7c",
    "    jne 3f",
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    cmp rax, rcx",
    "    jb 2b",
    "    xor eax, eax",
    "    jmp 4f",
    "3:",
    "    mov eax, 1",
    "4:",
    "    pop r15",
    "    pop r14",
    "    pop r13",
    "    pop r12",
    "    pop rbp",
    "    pop rbx",
    "    ret",
    // The event entry: records rsp, rdi and rflags as found, then calls Rust.
    ".globl conf_event_entry",
    "conf_event_entry:",
    "    mov [rip + {ev_rsp}], rsp",
    "    mov [rip + {ev_rdi}], rdi",
    "    pushfq",
    "    pop rax",
    "    mov [rip + {ev_flags}], rax",
    "    cld",
    "    mov rdi, rsp",
    "    and rsp, -16",
    "    call {ev_rust}",
    "    ud2",
    // The trap entry, likewise.
    ".globl conf_trap_entry",
    "conf_trap_entry:",
    "    mov [rip + {tr_rsp}], rsp",
    "    mov [rip + {tr_rdi}], rdi",
    "    pushfq",
    "    pop rax",
    "    mov [rip + {tr_flags}], rax",
    "    cld",
    "    mov rdi, rsp",
    "    and rsp, -16",
    "    call {tr_rust}",
    "    ud2",
    // Resumes the frame whose address is in rdi (upcall_return).
    ".globl conf_resume_rdi",
    "conf_resume_rdi:",
    "    mov eax, 0x31",
    "    syscall",
    "    ud2",
    c0 = const CANARY[0],
    c1 = const CANARY[1],
    c2 = const CANARY[2],
    c3 = const CANARY[3],
    p0 = const PATTERN[0],
    p1 = const PATTERN[1],
    p3 = const PATTERN[3],
    p4 = const PATTERN[4],
    p5 = const PATTERN[5],
    p6 = const PATTERN[6],
    p7 = const PATTERN[7],
    p8 = const PATTERN[8],
    p9 = const PATTERN[9],
    p10 = const PATTERN[10],
    p11 = const PATTERN[11],
    noac = const !0x4_0000i32,
    ev_rsp = sym EV_ENTRY_RSP,
    ev_rdi = sym EV_ENTRY_RDI,
    ev_flags = sym EV_ENTRY_FLAGS,
    ev_rust = sym crate::upcalls::event_rust,
    tr_rsp = sym TR_ENTRY_RSP,
    tr_rdi = sym TR_ENTRY_RDI,
    tr_flags = sym TR_ENTRY_FLAGS,
    tr_rust = sym crate::upcalls::trap_rust,
);

unsafe extern "C" {
    fn conf_probe(nr: u64, a0: u64, out: *mut [u64; 18]);
    fn conf_probe_after();
    fn conf_preempt(deadline_tsc: u64) -> u64;
    fn conf_event_entry();
    fn conf_trap_entry();
    fn conf_resume_rdi();
}

/// `rsp`, `rdi`, `rflags` found at the last event entry.
pub static EV_ENTRY_RSP: AtomicU64 = AtomicU64::new(0);
pub static EV_ENTRY_RDI: AtomicU64 = AtomicU64::new(0);
pub static EV_ENTRY_FLAGS: AtomicU64 = AtomicU64::new(0);
/// Likewise at the last trap entry.
pub static TR_ENTRY_RSP: AtomicU64 = AtomicU64::new(0);
pub static TR_ENTRY_RDI: AtomicU64 = AtomicU64::new(0);
pub static TR_ENTRY_FLAGS: AtomicU64 = AtomicU64::new(0);

/// What [`probe`] saw after the call.
pub struct Probe {
    /// The 12 registers of [`PROBE_REGS`].
    pub regs: [u64; 12],
    /// The red-zone canaries.
    pub canary: [u64; 4],
    /// `rax`.
    pub rax: u64,
    /// `rflags` right after the call.
    pub rflags: u64,
}

/// Makes hypercall `nr` with `rdi` = `a0` and patterns everywhere else.
///
/// # Safety
///
/// `nr` must not be a call that transfers control or ends the domain
/// with these arguments.
pub unsafe fn probe(nr: u64, a0: u64) -> Probe {
    let mut out = [0u64; 18];
    // SAFETY: conf_probe saves and restores every callee-saved register,
    // writes only `out` and the red zone below its own frame (the target has
    // no red zone of its own), and makes the call the caller vouched for.
    unsafe { conf_probe(nr, a0, &mut out) };
    let mut regs = [0; 12];
    regs.copy_from_slice(&out[..12]);
    Probe {
        regs,
        canary: [out[12], out[13], out[14], out[15]],
        rax: out[16],
        rflags: out[17],
    }
}

/// The address of the instruction after the probe's `syscall`.
pub fn probe_after() -> u64 {
    conf_probe_after as *const () as u64
}

/// Spins with patterned registers until TSC `deadline`; `true` if every
/// register kept its value (TRAP-4).
pub fn preempt_probe(deadline: u64) -> bool {
    // SAFETY: conf_preempt saves and restores the callee-saved registers
    // and touches no memory.
    unsafe { conf_preempt(deadline) == 0 }
}

/// The entries.
pub fn event_entry() -> u64 {
    conf_event_entry as *const () as u64
}
/// The trap entry.
pub fn trap_entry() -> u64 {
    conf_trap_entry as *const () as u64
}
/// `upcall_return(rdi)`.
pub fn resume_rdi() -> u64 {
    conf_resume_rdi as *const () as u64
}

pub use guest_sdk::time::rdtsc;

/// The frame as 22 words.
pub fn frame_words(f: &UpcallFrame) -> [u64; 22] {
    // SAFETY: UpcallFrame is repr(C), 22 u64 fields, no padding.
    unsafe { core::mem::transmute::<UpcallFrame, [u64; 22]>(*f) }
}

/// The frame from 22 words.
pub fn words_frame(w: [u64; 22]) -> UpcallFrame {
    // SAFETY: UpcallFrame is repr(C), 22 u64 fields, no padding, so
    // every bit pattern of 22 words is a valid UpcallFrame.
    unsafe { core::mem::transmute::<[u64; 22], UpcallFrame>(w) }
}

/// The shared-info page (MEM-4), by field, as atomics.
pub struct Sh;

impl Sh {
    fn at<T>(off: usize) -> *mut T {
        (SHARED_INFO_VA as usize + off) as *mut T
    }
    fn w64(off: usize) -> &'static AtomicU64 {
        // SAFETY: the shared-info page is mapped read-write at SHARED_INFO_VA
        // for the domain's life (MEM-2); `off` is an 8-aligned field offset.
        unsafe { AtomicU64::from_ptr(Self::at(off)) }
    }
    fn w8(off: usize) -> &'static AtomicU8 {
        // SAFETY: the shared-info page is mapped read-write at SHARED_INFO_VA
        // for the domain's life (MEM-2); `off` is a byte field's offset.
        unsafe { AtomicU8::from_ptr(Self::at(off)) }
    }
    pub fn pending(w: usize) -> &'static AtomicU64 {
        assert!(w < PORT_WORDS);
        Self::w64(SHARED_PENDING_OFFSET + 8 * w)
    }
    pub fn mask(w: usize) -> &'static AtomicU64 {
        assert!(w < PORT_WORDS);
        Self::w64(SHARED_MASK_OFFSET + 8 * w)
    }
    pub fn sel() -> &'static AtomicU64 {
        Self::w64(SHARED_PENDING_SEL_OFFSET)
    }
    pub fn upcall_pending() -> &'static AtomicU8 {
        Self::w8(SHARED_UPCALL_PENDING_OFFSET)
    }
    pub fn upcall_mask() -> &'static AtomicU8 {
        Self::w8(SHARED_UPCALL_MASK_OFFSET)
    }
    pub fn is_pending(port: u32) -> bool {
        Self::pending(port as usize / 64).load(Ordering::SeqCst) & (1 << (port % 64)) != 0
    }
    pub fn is_masked(port: u32) -> bool {
        Self::mask(port as usize / 64).load(Ordering::SeqCst) & (1 << (port % 64)) != 0
    }
    pub fn set_pending(port: u32, on: bool) {
        let b = 1u64 << (port % 64);
        let w = Self::pending(port as usize / 64);
        if on {
            w.fetch_or(b, Ordering::SeqCst);
        } else {
            w.fetch_and(!b, Ordering::SeqCst);
        }
    }
    pub fn set_mask(port: u32, on: bool) {
        let b = 1u64 << (port % 64);
        let w = Self::mask(port as usize / 64);
        if on {
            w.fetch_or(b, Ordering::SeqCst);
        } else {
            w.fetch_and(!b, Ordering::SeqCst);
        }
    }
    /// Reads a raw word of the page (for snapshots).
    pub fn word(i: usize) -> &'static AtomicU64 {
        assert!(i < 4096 / 8);
        Self::w64(8 * i)
    }
}

/// Reads a u64 at `va` (must be mapped and readable).
///
/// # Safety
///
/// `va` must be a readable, 8-aligned address (or a fault the caller
/// expects and handles).
pub unsafe fn peek(va: u64) -> u64 {
    // SAFETY: forwarded.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// Stores `SeqCst` helper for other modules.
pub fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::SeqCst)
}
