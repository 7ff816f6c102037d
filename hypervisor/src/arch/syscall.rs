//! Hypercall entry through `syscall` (spec CALL-1).
//!
//! The entry saves in place, into the running domain's own
//! [`super::traps::TrapFrame`] (its address in
//! `TAHOMA_GUEST_FRAME`, kept by [`super::traps::set_guest_frame`]; the
//! caller's `rsp` stays in a scratch word), first only what the fast path
//! needs: the argument registers, `rip` and `rflags`.
//!
//! **The fast path** runs a call that only returns a result without any
//! Rust entry of its own: the stub itself looks the call's handler up in
//! the table `TAHOMA_FAST_ROUTES` points at ([`FastRoutes`], indexed by
//! the number after a bounds test), calls it on the empty ring-0 stack with
//! the arguments in the C convention's registers, makes the "work pending"
//! tests on the way back and returns with `sysretq`, restoring the argument
//! registers. The words it reads are the kernel's, found by their link
//! names (arch names nothing above it; the kernel defines them, see
//! `hv::fast`):
//!
//! * `TAHOMA_FAST_ROUTES`: the address of a [`FastRoutes`] table. The
//!   kernel points it at an empty table whenever the fast path is not
//!   allowed (no domain current, a domain's first call due), so that one
//!   load is both the "allowed" test and the route.
//! * `TAHOMA_FAST_TIMER_DIRTY`: a byte; nonzero after the handler sends
//!   the return the slow way (the timer must be looked at).
//! * `TAHOMA_FAST_UPCALL`: the address of the current domain's
//!   `upcall_pending`/`upcall_mask` pair (or of a zero word); pending set
//!   with the mask clear after the handler sends the return the slow way
//!   (an upcall may be due, TRAP-0a). Never 0.
//!
//! `sysretq` only where it restores exactly what `iretq` would: the
//! caller's own context (a fast handler never replaces or switches it),
//! unchanged but for `rax`, `rcx` = `rip` and `r11` = `rflags` (the stub
//! saved them from there), and only with `rip` below `GUEST_VA_TOP` and TF
//! and RF clear. The first is the SYSRET hazard: a `syscall` in the last
//! two bytes below `GUEST_VA_TOP` has `rcx = 0x0000_8000_0000_0000`,
//! non-canonical, and Intel's `sysretq` raises its #GP in ring 0 after the
//! guest's `rsp` is loaded (CVE-2012-0217). `iretq` to it faults in ring 0
//! on Intel too, so that test comes first, for every call, and makes the
//! call no call at all: the caller's #GP through the trap entry (CALL-1c). `sysretq` cannot restore RF,
//! and with TF it would trap right after the return instead of after the
//! next instruction. SS is the kernel's from `syscall` to `sysretq` (no
//! entry with a privilege change happens in between), so AMD's SYSRET SS
//! attributes erratum does not apply. These tests are on guest input and
//! come before any handler runs.
//!
//! **`upcall_return`** (TRAP-2) is in the table too, as the stub's own
//! `upcall_return_exit`: called like a fast handler, it has the kernel
//! restore the frame into the domain's `TrapFrame` (the common case first,
//! in a kernel function that makes no call, then if that declines the whole
//! call from the start) and do the way back's work, then leaves through
//! `trap_return` (the frame was replaced whole,
//! so nothing completes it first); a refused frame's error goes back as a
//! fast handler's result.
//!
//! **Otherwise** (a number out of the table, a call that may replace the
//! frame: `yield`, `block`, `shutdown`, `mmu_pin`, `mmu_unpin`; the fast path not allowed; a guest-input test failed; work
//! pending after the handler) the stub completes the frame (the
//! callee-saved registers still hold the caller's values), calls the slow
//! entry with the stage and leaves through `trap_return`, so that any
//! hypercall can return into any guest: one that blocks simply returns
//! through another domain's frame, the current one when the slow entry
//! returns. The compatibility-mode and `sysenter` entries, which destroy
//! their caller, build the whole frame at once (on the ring-0 stack).

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

/// What the kernel's `tahoma_upcall_return_hot` returns to
/// `upcall_return_exit`: the frame restored, nothing to do on the way back.
pub const UPCALL_RETURN_DONE: u64 = 0;
/// The frame restored, and the way back has work
/// (`tahoma_upcall_return_leave` does it).
pub const UPCALL_RETURN_LEAVE: u64 = 1;
/// Declined, nothing changed: `tahoma_upcall_return` does it all.
pub const UPCALL_RETURN_FULL: u64 = 2;

// The stub tests "done" with `testq`, and anything but "leave" is "full".
const _: () = assert!(UPCALL_RETURN_DONE == 0 && UPCALL_RETURN_LEAVE != UPCALL_RETURN_FULL);

/// Numbers below this are looked up in the fast route table; the rest go
/// the slow way (where an undefined number returns `no_such_call`).
pub const FAST_ROUTED: usize = 0x80;

/// A call's fast handler, called by the stub: the six argument words in
/// the C convention's argument registers (the guest's `r10` in `rcx`), the
/// result word returned in `rax`. It may not replace or switch the
/// caller's context; it counts the call itself.
pub type FastHandler = extern "C" fn(u64, u64, u64, u64, u64, u64) -> u64;

/// What `TAHOMA_FAST_ROUTES` points at: a fast handler per number below
/// [`FAST_ROUTED`], `None` for the calls that go the slow way.
pub type FastRoutes = [Option<FastHandler>; FAST_ROUTED];

// The stub's rip test is `rip >> 47 == 0`.
const _: () = assert!(hypercall_abi::layout::GUEST_VA_TOP == 1 << 47);

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
    // nothing. The caller's rsp stays in a scratch word until the way back
    // (nothing between here and sysretq or the frame's completion writes
    // it: one CPU, interrupts off).
    movq %rsp, SYSCALL_USER_RSP(%rip)
    movq TAHOMA_GUEST_FRAME(%rip), %rsp
    // Lean save: what the way back needs (rip, rflags; the six argument
    // registers, which CALL-1 preserves and Rust may clobber). rax (the
    // number) stays in its register until the frame is completed. rbx,
    // rbp and r12-r15 are preserved by the Rust code (callee-saved).
    movq %rcx, {o_rip}(%rsp)
    movq %r11, {o_rflags}(%rsp)
    movq %rdi, {o_rdi}(%rsp)
    movq %rsi, {o_rsi}(%rsp)
    movq %rdx, {o_rdx}(%rsp)
    movq %r10, {o_r10}(%rsp)
    movq %r8, {o_r8}(%rsp)
    movq %r9, {o_r9}(%rsp)
    // Guest input, for every call (rip is in the frame; rcx is free): a
    // return address at or above GUEST_VA_TOP is no call at all (the
    // SYSRET hazard, CALL-1c; the slow entry makes it the caller's #GP).
    shrq $47, %rcx
    jnz 5f
    // The route: the number bounded, then its slot in the table the
    // kernel allows (an empty one when the fast path is not allowed). The
    // calls that may switch leave here.
    cmpq ${routed}, %rax
    jae 2f
    movq TAHOMA_FAST_ROUTES(%rip), %r11
    movq (%r11,%rax,8), %r11
    testq %r11, %r11
    jz 2f
    // Guest input for sysretq: TF and RF clear.
    testl ${tf_rf}, {o_rflags}(%rsp)
    jnz 2f
    // The handler, on the (empty) ring-0 stack, never below a domain's
    // frame; the guest's r10 is the C convention's fourth argument.
    movq %r10, %rcx
    leaq {kstack}+{stack_size}(%rip), %rsp
    call *%r11
    // rax: the result. The work-pending tests: the timer to look at, an
    // upcall that may be due (pending set, mask clear: the word read is
    // 1..=0xff). A TLB flush was done by the handler's wrapper.
    cmpb $0, TAHOMA_FAST_TIMER_DIRTY(%rip)
    jne 3f
    movq TAHOMA_FAST_UPCALL(%rip), %rcx
    movzwl (%rcx), %ecx
    decl %ecx
    cmpl $0xff, %ecx
    jb 3f
    // Fast exit: the caller's own context, restored from its frame.
    movq TAHOMA_GUEST_FRAME(%rip), %rsp
    movq {o_rdi}(%rsp), %rdi
    movq {o_rsi}(%rsp), %rsi
    movq {o_rdx}(%rsp), %rdx
    movq {o_r10}(%rsp), %r10
    movq {o_r8}(%rsp), %r8
    movq {o_r9}(%rsp), %r9
    movq {o_rip}(%rsp), %rcx
    movq {o_rflags}(%rsp), %r11
    movq SYSCALL_USER_RSP(%rip), %rsp
    sysretq

    // Slow path: complete the frame (the callee-saved registers still hold
    // the caller's values, rax the number or the fast handler's result),
    // then the slow entry with the stage in rsi, and leave through
    // trap_return (iretq) by whatever frame is current then.
    .macro TAHOMA_SYSCALL_FRAME
    movq TAHOMA_GUEST_FRAME(%rip), %rdi
    movq %rax, {o_rax}(%rdi)
    movq SYSCALL_USER_RSP(%rip), %rax
    movq %rax, {o_rsp}(%rdi)
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
    leaq {kstack}+{stack_size}(%rip), %rsp
    xorl %ebp, %ebp
    .endm
    // (The stage from the start falls through: `block` and `yield`, the
    // calls that switch, take it on every call; a fast handler's work
    // pending jumps.)
3:  movl ${leave}, %esi
    jmp 4f
2:  movl ${from_start}, %esi
4:  TAHOMA_SYSCALL_FRAME
    call *TAHOMA_HYPERCALL_SLOW_ENTRY(%rip)
    jmp trap_return

    // CALL-1c: a return address at or above GUEST_VA_TOP (a `syscall` in
    // the last two bytes of the lower half). No call is run and no way
    // back can return there (sysretq and iretq both fault in ring 0 on
    // Intel CPUs): the frame becomes the #GP (error 0) the caller would
    // take fetching there, an exception from ring 3 for the trap entry
    // (reflected, TRAP-0b, or the end of the caller, TRAP-0c), so that no
    // frame with such a rip is ever returned into. Only a `syscall` can
    // make one: an exception's rip goes to the trap handler or nowhere, and
    // `upcall_return` refuses one (TRAP-2).
5:  TAHOMA_SYSCALL_FRAME
    movq $13, {o_vector}(%rdi)
    call *TAHOMA_TRAP_ENTRY(%rip)
    jmp trap_return

    // `upcall_return`'s exit (TRAP-2): what the fast route table holds for
    // `upcall_return`, called by the stub like a fast handler (the six
    // argument words in the C convention's registers, on the empty ring-0
    // stack, TF and RF clear, the caller's context lean-saved). First the
    // kernel's `tahoma_upcall_return_hot`, the common case with no call
    // (so it saves no callee-saved register): 0 when it restored the frame
    // into the current domain's `TrapFrame` and the way back has nothing
    // to do, and this leaves through `trap_return` (`iretq`) by that
    // frame, dropping the stub's return address (the ring-0 stack is empty
    // at every entry); UPCALL_RETURN_LEAVE when it restored the frame and the way
    // back has work: `tahoma_upcall_return_leave` does it (`leave`), then
    // `trap_return` by whatever frame is current then; UPCALL_RETURN_FULL when it
    // declined with nothing changed: `tahoma_upcall_return` does it all
    // from the start (the argument words taken again from the frame the
    // stub saved) and returns 0 when the frame was replaced (then as for
    // 0 above, `leave` done), else the error word, which this returns to
    // the stub, which sends it back like any fast handler's result (the
    // caller's context unchanged). No slow entry, no frame completion: the
    // frame is replaced whole.
    .balign 16
    .global upcall_return_exit
upcall_return_exit:
    subq $8, %rsp
    call tahoma_upcall_return_hot
    testq %rax, %rax
    jz trap_return
    cmpq ${leave_code}, %rax
    jne 1f
    call tahoma_upcall_return_leave
    jmp trap_return
1:  call tahoma_upcall_return
    addq $8, %rsp
    testq %rax, %rax
    jz trap_return
    ret

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
    routed = const FAST_ROUTED,
    tf_rf = const (1u32 << 8) | (1 << 16),
    from_start = const super::entries::SLOW_FROM_START,
    leave = const super::entries::SLOW_LEAVE,
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
    leave_code = const UPCALL_RETURN_LEAVE,
    compat = const COMPAT_SYSCALL_VECTOR,
    sysenter = const SYSENTER_VECTOR,
    options(att_syntax)
);

extern "C" {
    /// `upcall_return`'s exit (the assembly above): a [`FastHandler`] as
    /// the stub calls it, which does not return to its caller when the
    /// frame was replaced.
    fn upcall_return_exit(a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> u64;
    fn syscall_entry();
    fn compat_syscall_entry();
    fn sysenter_entry();
}

/// `upcall_return`'s entry in the fast route table: the stub calls it as a
/// fast handler; it runs the kernel's `tahoma_upcall_return_hot` (an
/// `extern "C" fn(u64, u64, u64, u64, u64, u64) -> u64` returning one of
/// the `UPCALL_RETURN_*` codes), then `tahoma_upcall_return_leave`
/// (`extern "C" fn()`) or `tahoma_upcall_return` (`extern "C" fn() -> u64`,
/// returning 0 when it replaced the current frame, else the call's error
/// word) as the code says, and leaves through `trap_return` once the frame
/// was replaced. Only the stub may call it.
pub const UPCALL_RETURN_EXIT: FastHandler = {
    // SAFETY: the transmute only drops `unsafe` from the pointer's type:
    // the routine has the `FastHandler` convention (six words in, one in
    // `rax` out, callee-saved registers preserved: it saves none itself
    // and calls only Rust `extern "C"` functions). What makes it unsafe to call
    // from Rust (it may leave through `trap_return` instead of returning)
    // concerns only the stub, its one caller, which is never followed by
    // anything but its own way back either.
    unsafe {
        core::mem::transmute::<unsafe extern "C" fn(u64, u64, u64, u64, u64, u64) -> u64, FastHandler>(
            upcall_return_exit,
        )
    }
};

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
