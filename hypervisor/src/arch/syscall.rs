//! Hypercall entry through `syscall` (spec CALL-1).
//!
//! The entry lays out the same [`TrapFrame`](super::traps::TrapFrame) an
//! interrupt would (vector [`SYSCALL_VECTOR`]) in place, in the running
//! domain's own frame (its address in `TAHOMA_GUEST_FRAME`, kept by
//! [`super::traps::set_guest_frame`]; the caller's `rsp` goes through a
//! scratch word), then runs Rust on the empty ring-0 stack. First it fills
//! only what the fast entry (`hv::hypercall_entry`) needs: the number, the
//! argument registers, `rip`, `rflags`, `rsp`. When the fast entry finished
//! the call and nothing else is due, the stub restores the argument
//! registers and returns with `sysretq` (the conditions are in
//! `hv::hypercall_entry`). Otherwise it completes the frame (the
//! callee-saved registers still hold the caller's values), calls the slow
//! entry and leaves through `trap_return`, so that any hypercall can return
//! into any guest: one that blocks simply returns through another domain's
//! frame, the current one when the slow entry returns. The
//! compatibility-mode and `sysenter` entries, which destroy their caller,
//! build the whole frame at once (on the ring-0 stack).

use super::cpu::{KERNEL_CS, USER_CS, USER_SS};
use super::traps::TrapFrame;
use x86_64::registers::model_specific::{Efer, EferFlags, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::structures::gdt::SegmentSelector;
use x86_64::{PrivilegeLevel, VirtAddr};

/// The pseudo-vector recorded in frames built by the syscall entry.
pub const SYSCALL_VECTOR: u64 = 0x100;
/// The pseudo-vector of frames built by the compatibility-mode `syscall`
/// entry (IA32_CSTAR, spec CPU-5).
pub const COMPAT_SYSCALL_VECTOR: u64 = 0x101;
/// The pseudo-vector of frames built by the `sysenter` entry (CPU-4).
pub const SYSENTER_VECTOR: u64 = 0x102;

// The stub tells REPLACED from SLOW_REPLACED by one comparison.
const _: () = assert!(super::entries::REPLACED == super::entries::SLOW_REPLACED + 1);
const _: () = assert!(super::entries::SLOW_LEAVE < super::entries::SLOW_REPLACED);

/// Ring-0 stack top loaded by the entry (set by [`init`]).
#[no_mangle]
static mut SYSCALL_KERNEL_RSP: u64 = 0;
/// The caller's stack pointer while the frame is being built.
#[no_mangle]
static mut SYSCALL_USER_RSP: u64 = 0;

core::arch::global_asm!(
    r#"
    .section .text.syscall, "ax"
    .balign 16
    .global syscall_entry
syscall_entry:
    // Save in place: the frame is the running domain's own
    // (TAHOMA_GUEST_FRAME, switched with the domain), so a switch copies
    // nothing. The caller's rsp goes through a scratch word (no register
    // is free before rcx is saved).
    movq %rsp, SYSCALL_USER_RSP(%rip)
    movq TAHOMA_GUEST_FRAME(%rip), %rsp
    movq %rcx, {o_rip}(%rsp)
    movq SYSCALL_USER_RSP(%rip), %rcx
    movq %rcx, {o_rsp}(%rsp)
    // Lean save: what the fast entry reads (number, arguments) and what
    // the way back needs (rip, rflags; the six argument registers, which
    // CALL-1 preserves and Rust may clobber). rbx, rbp and r12-r15 are
    // preserved by the Rust entry itself (callee-saved).
    movq %r11, {o_rflags}(%rsp)
    movq %rax, {o_rax}(%rsp)
    movq %rdi, {o_rdi}(%rsp)
    movq %rsi, {o_rsi}(%rsp)
    movq %rdx, {o_rdx}(%rsp)
    movq %r10, {o_r10}(%rsp)
    movq %r8, {o_r8}(%rsp)
    movq %r9, {o_r9}(%rsp)
    // Rust runs on the (empty) ring-0 stack, never below a domain's frame.
    movq %rsp, %rdi
    leaq {kstack}+{stack_size}(%rip), %rsp
    call *TAHOMA_HYPERCALL_ENTRY(%rip)
    testq %rdx, %rdx
    jnz 1f
    // Fast exit (rax holds the result). The fast entry allows it only for
    // the caller's own unchanged context with a canonical user rip (the
    // SYSRET hazard: a non-canonical rcx makes Intel's sysretq raise #GP
    // in ring 0 on the guest's stack) and TF/RF clear; see
    // `hv::hypercall_entry`. No switch happened: the frame is the caller's.
    movq TAHOMA_GUEST_FRAME(%rip), %rsp
    movq {o_rdi}(%rsp), %rdi
    movq {o_rsi}(%rsp), %rsi
    movq {o_rdx}(%rsp), %rdx
    movq {o_r10}(%rsp), %r10
    movq {o_r8}(%rsp), %r8
    movq {o_r9}(%rsp), %r9
    movq {o_rip}(%rsp), %rcx
    movq {o_rflags}(%rsp), %r11
    movq {o_rsp}(%rsp), %rsp
    sysretq

    // The call replaced the whole frame (upcall_return): it is complete,
    // so leave through trap_return as it is, after the slow entry's leave
    // if something is due (stage SLOW_REPLACED), at once if not (REPLACED).
1:  cmpq ${slow_replaced}, %rdx
    jb 2f
    ja trap_return
    movq TAHOMA_GUEST_FRAME(%rip), %rdi
    movq %rdx, %rsi
    xorl %ebp, %ebp
    call *TAHOMA_HYPERCALL_SLOW_ENTRY(%rip)
    jmp trap_return

    // Slow path: complete the frame (the callee-saved registers still hold
    // the caller's values), then the slow entry with the stage in rsi, and
    // leave through trap_return (iretq) by whatever frame is current then.
    // rax is the frame's rax now: the call's result, or its number if
    // nothing was done.
2:  movq TAHOMA_GUEST_FRAME(%rip), %rdi
    movq %rax, {o_rax}(%rdi)
    movq ${user_ss}, {o_ss}(%rdi)
    movq ${user_cs}, {o_cs}(%rdi)
    movq $0, {o_err}(%rdi)
    movq ${vector}, {o_vector}(%rdi)
    movq %rbx, {o_rbx}(%rdi)
    movq %rbp, {o_rbp}(%rdi)
    movq %r12, {o_r12}(%rdi)
    movq %r13, {o_r13}(%rdi)
    movq %r14, {o_r14}(%rdi)
    movq %r15, {o_r15}(%rdi)
    movq {o_rip}(%rdi), %rax
    movq %rax, {o_rcx}(%rdi)
    movq {o_rflags}(%rdi), %rax
    movq %rax, {o_r11}(%rdi)
    movq %rdx, %rsi
    xorl %ebp, %ebp
    call *TAHOMA_HYPERCALL_SLOW_ENTRY(%rip)
    jmp trap_return

    // `syscall` from compatibility mode (IA32_CSTAR). No 32-bit code
    // segment exists, so no guest reaches it; should one ever get there, it
    // arrives as the 64-bit entry does (rsp still the guest's, IF, TF, DF
    // and AC cleared by SFMASK) and is destroyed (CPU-5).
    .balign 16
    .global compat_syscall_entry
compat_syscall_entry:
    movq %rsp, SYSCALL_USER_RSP(%rip)
    movq SYSCALL_KERNEL_RSP(%rip), %rsp
    pushq ${user_ss}
    pushq SYSCALL_USER_RSP(%rip)
    pushq %r11
    pushq ${user_cs}
    pushq %rcx
    pushq $0
    pushq ${compat}
    jmp foreign_common

    // `sysenter` (IA32_SYSENTER_EIP; CPU-4): the CPU has switched to CS =
    // KERNEL_CS and rsp = IA32_SYSENTER_ESP, the top of the ring-0 stack,
    // and cleared only IF: TF, DF and AC are still the guest's. A set TF
    // raises #DB at this very address, before the first instruction runs;
    // `trap::handle` clears it and returns here. The first instructions
    // reset RFLAGS (AC off before any access that SMAP guards: the pushes
    // go to a supervisor page, which AC does not affect).
    .balign 16
    .global sysenter_entry
sysenter_entry:
    pushq $2
    popfq
    pushq ${user_ss}
    pushq $0
    pushq $0x202
    pushq ${user_cs}
    pushq %rdx
    pushq $0
    pushq ${sysenter}

foreign_common:
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
    movq %rsp, %rdi
    xorl %ebp, %ebp
    call *TAHOMA_FOREIGN_ENTRY(%rip)
    jmp trap_return
    "#,
    user_ss = const USER_SS as u64,
    user_cs = const USER_CS as u64,
    vector = const SYSCALL_VECTOR,
    kstack = sym super::cpu::KERNEL_STACK,
    stack_size = const super::cpu::STACK_SIZE,
    o_rsp = const core::mem::offset_of!(TrapFrame, rsp),
    o_ss = const core::mem::offset_of!(TrapFrame, ss),
    o_cs = const core::mem::offset_of!(TrapFrame, cs),
    o_rip = const core::mem::offset_of!(TrapFrame, rip),
    o_rflags = const core::mem::offset_of!(TrapFrame, rflags),
    o_err = const core::mem::offset_of!(TrapFrame, error_code),
    o_vector = const core::mem::offset_of!(TrapFrame, vector),
    o_rax = const core::mem::offset_of!(TrapFrame, rax),
    o_rbx = const core::mem::offset_of!(TrapFrame, rbx),
    o_rcx = const core::mem::offset_of!(TrapFrame, rcx),
    o_rdx = const core::mem::offset_of!(TrapFrame, rdx),
    o_rsi = const core::mem::offset_of!(TrapFrame, rsi),
    o_rdi = const core::mem::offset_of!(TrapFrame, rdi),
    o_rbp = const core::mem::offset_of!(TrapFrame, rbp),
    o_r8 = const core::mem::offset_of!(TrapFrame, r8),
    o_r9 = const core::mem::offset_of!(TrapFrame, r9),
    o_r10 = const core::mem::offset_of!(TrapFrame, r10),
    o_r11 = const core::mem::offset_of!(TrapFrame, r11),
    o_r12 = const core::mem::offset_of!(TrapFrame, r12),
    o_r13 = const core::mem::offset_of!(TrapFrame, r13),
    o_r14 = const core::mem::offset_of!(TrapFrame, r14),
    o_r15 = const core::mem::offset_of!(TrapFrame, r15),
    slow_replaced = const super::entries::SLOW_REPLACED,
    compat = const COMPAT_SYSCALL_VECTOR,
    sysenter = const SYSENTER_VECTOR,
    options(att_syntax)
);

extern "C" {
    fn syscall_entry();
    fn compat_syscall_entry();
    fn sysenter_entry();
}

/// The address of the `sysenter` entry (where a guest's TF raises #DB).
pub fn sysenter_entry_address() -> u64 {
    sysenter_entry as *const () as u64
}

/// Programs EFER.SCE, STAR, LSTAR and SFMASK.
pub fn init() {
    // SAFETY: single CPU, called once before any guest runs; the stack top
    // is the ring-0 stack also used by traps from ring 3.
    unsafe { SYSCALL_KERNEL_RSP = super::cpu::kernel_stack_top() };
    let sel = |v: u16, rpl| SegmentSelector::new(v / 8, rpl);
    Star::write(
        sel(USER_CS, PrivilegeLevel::Ring3),
        sel(USER_SS, PrivilegeLevel::Ring3),
        sel(KERNEL_CS, PrivilegeLevel::Ring0),
        sel(super::cpu::KERNEL_SS, PrivilegeLevel::Ring0),
    )
    .expect("GDT order matches sysret's expectations");
    LStar::write(VirtAddr::new(syscall_entry as *const () as u64));
    // Compatibility-mode syscall and sysenter (CPU-4, CPU-5): entries that
    // destroy the caller, on the ring-0 stack, never on the guest's.
    // SAFETY: the entries are the code above; SYSENTER_CS names the kernel
    // code segment (SS = CS + 8 is the kernel data segment, as sysenter
    // expects) and SYSENTER_ESP the empty ring-0 stack, which is what any
    // entry from ring 3 starts on.
    unsafe {
        use x86_64::registers::model_specific::Msr;
        Msr::new(0xc000_0083).write(compat_syscall_entry as *const () as u64);
        Msr::new(0x174).write(u64::from(KERNEL_CS));
        Msr::new(0x175).write(super::cpu::kernel_stack_top());
        Msr::new(0x176).write(sysenter_entry_address());
    }
    // Entry runs with interrupts off, DF clear, AC clear (SMAP on), no trap flag.
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK,
    );
    // SAFETY: enabling syscall/sysret; LSTAR, STAR and SFMASK are set above.
    unsafe { Efer::update(|f| *f |= EferFlags::SYSTEM_CALL_EXTENSIONS) };
}
