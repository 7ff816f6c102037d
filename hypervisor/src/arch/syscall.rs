//! Hypercall entry through `syscall` (spec CALL-1).
//!
//! The entry builds the same [`TrapFrame`](super::traps::TrapFrame) an
//! interrupt would (vector [`SYSCALL_VECTOR`]) on the ring-0 stack, so that
//! any entry can leave through `trap_return` into any guest: a hypercall
//! that blocks simply returns into another domain's saved frame. There is
//! one CPU and the hypervisor never runs with interrupts enabled outside
//! its idle loop, so the user stack pointer can be parked in a static.

use super::cpu::{KERNEL_CS, USER_CS, USER_SS};
use x86_64::registers::model_specific::{Efer, EferFlags, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::structures::gdt::SegmentSelector;
use x86_64::{PrivilegeLevel, VirtAddr};

/// The pseudo-vector recorded in frames built by the syscall entry.
pub const SYSCALL_VECTOR: u64 = 0x100;

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
    movq %rsp, SYSCALL_USER_RSP(%rip)
    movq SYSCALL_KERNEL_RSP(%rip), %rsp
    pushq ${user_ss}
    pushq SYSCALL_USER_RSP(%rip)
    pushq %r11
    pushq ${user_cs}
    pushq %rcx
    pushq $0
    pushq ${vector}
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
    call hypercall_entry
    jmp trap_return
    "#,
    user_ss = const USER_SS as u64,
    user_cs = const USER_CS as u64,
    vector = const SYSCALL_VECTOR,
    options(att_syntax)
);

extern "C" {
    fn syscall_entry();
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
