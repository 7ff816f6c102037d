//! Trap entry: one 16-byte stub per vector, a common save path, and the
//! frame every trap handler sees.
//!
//! Each stub pushes a zero error code where the CPU pushes none, then the
//! vector, and jumps to `trap_common`, which saves the general registers,
//! clears `AC` (when SMAP is on) and calls the kernel's trap entry ([`super::entries`]). The handler may
//! rewrite the frame, e.g. to switch to another guest; `trap_return` restores
//! whatever the frame then says and `iretq`s.

use core::sync::atomic::{AtomicBool, Ordering};

/// The saved machine state of an interrupted context, in push order reversed.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The vector (pushed by the stub).
    pub vector: u64,
    /// The CPU's error code, or 0.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);

/// Set once SMAP is enabled in CR4: the entry path then executes `clac`.
#[no_mangle]
static SMAP_ENABLED: AtomicBool = AtomicBool::new(false);

/// Records that CR4.SMAP is set (so `clac` is a valid instruction).
pub fn note_smap_enabled() {
    SMAP_ENABLED.store(true, Ordering::SeqCst);
}

core::arch::global_asm!(
    r#"
    .section .text.traps, "ax"
    .balign 16
    .global trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec != 8) && (vec != 10) && (vec != 11) && (vec != 12) && (vec != 13) && (vec != 14) && (vec != 17) && (vec != 21) && (vec != 29) && (vec != 30)
    pushq $0
    .endif
    pushq $vec
    jmp trap_common
    .set vec, vec + 1
    .endr

    .balign 16
trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    cmpb $0, SMAP_ENABLED(%rip)
    je 1f
    clac
1:  movq %rsp, %rdi
    call *TAHOMA_TRAP_ENTRY(%rip)

    .global trap_return
trap_return:
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
    "#,
    options(att_syntax)
);

extern "C" {
    static trap_stubs: u8;
}

/// The entry address of the stub for `vector`.
pub fn stub_address(vector: u8) -> u64 {
    let base = &raw const trap_stubs as u64;
    base + u64::from(vector) * 16
}

/// Human name of an exception vector.
pub fn vector_name(vector: u64) -> &'static str {
    match vector {
        0 => "divide-error",
        1 => "debug",
        2 => "nmi",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound-range",
        6 => "invalid-opcode",
        7 => "device-not-available",
        8 => "double-fault",
        10 => "invalid-tss",
        11 => "segment-not-present",
        12 => "stack-segment",
        13 => "general-protection",
        14 => "page-fault",
        16 => "x87-fp",
        17 => "alignment-check",
        18 => "machine-check",
        19 => "simd-fp",
        20 => "virtualization",
        21 => "control-protection",
        0..=31 => "reserved",
        _ => "interrupt",
    }
}
