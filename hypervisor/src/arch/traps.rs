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
    // From ring 3 the CPU pushed the iret words at TSS.RSP0, the end of
    // the running domain's own frame, so the pushes above completed that
    // frame in place: run the handler on the ring-0 stack, and leave
    // through whatever frame is current then (the handler may have
    // switched domains). From ring 0 (the idle loop, a hypervisor fault,
    // a guest's TF at the sysenter entry) the frame is on the ring-0
    // stack: the handler runs below it and returns into it.
1:  movq %rsp, %rdi
    testb $3, {o_cs}(%rsp)
    jz 2f
    leaq {kstack}+{stack_size}(%rip), %rsp
    call *TAHOMA_TRAP_ENTRY(%rip)

    // The way back to ring 3 from every entry: the current domain's frame.
    // (It falls through into the pops; the entry from ring 0 jumps back
    // to them from below, so the way back to ring 3 takes no jump.)
    .global trap_return
trap_return:
    movq TAHOMA_GUEST_FRAME(%rip), %rsp
3:
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
    // From ring 0: the handler on the same stack, below the frame, then
    // back into it.
2:  call *TAHOMA_TRAP_ENTRY(%rip)
    jmp 3b
    "#,
    o_cs = const core::mem::offset_of!(TrapFrame, cs),
    kstack = sym super::cpu::KERNEL_STACK,
    stack_size = const super::cpu::STACK_SIZE,
    options(att_syntax)
);

/// A [`TrapFrame`]'s storage where an entry from ring 3 can save into it in
/// place: 16-aligned (in 64-bit mode the CPU aligns the stack pointer from
/// TSS.RSP0 down to 16 before pushing, so the frame's end must be aligned
/// for the pushes to land in it), and behind an `UnsafeCell`: the entry
/// stubs and the CPU write it while the hypervisor holds no reference.
#[repr(C, align(16))]
pub struct FrameSlot(pub core::cell::UnsafeCell<TrapFrame>);

const _: () = assert!(core::mem::size_of::<FrameSlot>() == core::mem::size_of::<TrapFrame>());

/// The frame of the running domain: where the `syscall` stub saves, where
/// `trap_return` loads from (TSS.RSP0 is its end). When no domain runs it
/// is [`NO_GUEST`], never a freed domain's (see [`set_guest_frame`]).
#[no_mangle]
static mut TAHOMA_GUEST_FRAME: u64 = 0;

/// The frame address while no domain runs (boot, after the current domain
/// was destroyed): static, never freed, never returned into.
static NO_GUEST: FrameSlot = FrameSlot(core::cell::UnsafeCell::new(TrapFrame {
    r15: 0,
    r14: 0,
    r13: 0,
    r12: 0,
    r11: 0,
    r10: 0,
    r9: 0,
    r8: 0,
    rbp: 0,
    rdi: 0,
    rsi: 0,
    rdx: 0,
    rcx: 0,
    rbx: 0,
    rax: 0,
    vector: 0,
    error_code: 0,
    rip: 0,
    cs: 0,
    rflags: 0,
    rsp: 0,
    ss: 0,
}));

// SAFETY: a slot is shared only on one CPU: Rust reads or writes a
// domain's slot during an entry (interrupts off) and the CPU or a stub
// only while that domain runs, never both at once; `NO_GUEST` is only ever
// addressed (stored into `TAHOMA_GUEST_FRAME`), never read or written.
unsafe impl Sync for FrameSlot {}

/// Makes `frame` the running domain's frame: the `syscall` stub saves into
/// it, TSS.RSP0 points at its end, `trap_return` leaves through it. The
/// caller keeps it alive (and does not move it) until the next call.
pub fn set_guest_frame(frame: &FrameSlot) {
    let at = frame.0.get() as u64;
    // SAFETY: one CPU, interrupts off, no entry in progress that reads the
    // word (the caller is the hypervisor between an entry and its exit);
    // `at` is 16-aligned (FrameSlot's alignment).
    unsafe { TAHOMA_GUEST_FRAME = at };
    // SAFETY: the end of a live object (the slot), so canonical.
    unsafe { super::cpu::set_rsp0(at + core::mem::size_of::<TrapFrame>() as u64) };
}

/// The current guest frame's address (`TAHOMA_GUEST_FRAME`).
pub fn guest_frame() -> u64 {
    // SAFETY: a plain read of a word only the hypervisor writes, one CPU
    // with interrupts off.
    unsafe { TAHOMA_GUEST_FRAME }
}

/// No domain runs: points the frame address (and TSS.RSP0) at a static
/// frame, so that nothing keeps the address of a destroyed domain's.
pub fn clear_guest_frame() {
    set_guest_frame(&NO_GUEST);
}

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
        9 | 15 | 22..=31 => "reserved",
        _ => "interrupt",
    }
}
