//! Everything that knows x86_64 registers and instructions. The rest of the
//! hypervisor sees decoded, typed values.

pub mod boot;
pub mod cpu;
pub mod lapic;
pub mod syscall;
pub mod traps;

use x86_64::instructions::port::Port;

/// Value written to the isa-debug-exit port for a successful run (QEMU exits 33).
pub const EXIT_SUCCESS: u32 = 0x10;
/// Value written for a failed run (QEMU exits 35).
pub const EXIT_FAILURE: u32 = 0x11;

/// Ends the QEMU run through isa-debug-exit, then halts for good (on a
/// machine without that device).
pub fn exit_qemu(code: u32) -> ! {
    let mut port: Port<u32> = Port::new(0xf4);
    // SAFETY: port 0xf4 is the isa-debug-exit device xtask configures; on a
    // machine without it the write is ignored and we halt below.
    unsafe { port.write(code) };
    halt_forever()
}

/// Disables interrupts and halts the CPU forever.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}

extern "C" {
    static boot_stack_bottom: u8;
    static boot_stack_top: u8;
}

/// Whether `addr` lies in the boot stack.
pub fn on_boot_stack(addr: u64) -> bool {
    let (lo, hi) = (
        &raw const boot_stack_bottom as u64,
        &raw const boot_stack_top as u64,
    );
    addr >= lo && addr < hi
}

/// Reads CR2 (the faulting address of the last page fault).
pub fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no side effects and is allowed at ring 0.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// CPU protections the hypervisor relies on: CR4.PGE (global kernel
/// mappings survive address-space switches), SMEP (ring 0 never executes
/// guest pages) and SMAP (ring 0 never touches guest pages by accident; the
/// hypervisor reaches guest memory only through the direct map). Each is
/// enabled when CPUID advertises it; the result is reported.
pub fn enable_protections() {
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    let smep = leaf7.ebx & (1 << 7) != 0;
    let smap = leaf7.ebx & (1 << 20) != 0;
    let mut cr4 = x86_64::registers::control::Cr4::read_raw();
    cr4 |= 1 << 7;
    if smep {
        cr4 |= 1 << 20;
    }
    if smap {
        cr4 |= 1 << 21;
    }
    // SAFETY: only bits for features CPUID advertises are set; the
    // hypervisor's own mappings are all supervisor pages, so SMEP/SMAP
    // cannot fault its own code or data.
    unsafe { x86_64::registers::control::Cr4::write_raw(cr4) };
    if smap {
        traps::note_smap_enabled();
    }
    crate::report!(
        "cpu",
        "smep={} smap={} pge=1",
        u8::from(smep),
        u8::from(smap)
    );
}

/// Loads `root` (a PML4 physical address) into CR3.
///
/// # Safety
/// `root` must map the hypervisor's half exactly as the running tables do.
pub unsafe fn load_root(root: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
}

/// Waits for an interrupt with interrupts enabled only for the wait
/// (`sti; hlt` executes atomically with respect to interrupts).
pub fn idle() {
    // SAFETY: the only handlers that can run are the timer's EOI path and
    // fatal reports, neither of which touches the state the caller holds.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Starts running the context in `frame` (ring 3) on an empty ring-0 stack.
pub fn enter_guest(frame: &traps::TrapFrame) -> ! {
    let at = cpu::kernel_stack_top() - core::mem::size_of::<traps::TrapFrame>() as u64;
    // SAFETY: `at` is the top of the ring-0 stack, unused while we run on
    // the boot stack; `trap_return` pops exactly one TrapFrame and irets.
    unsafe {
        (at as *mut traps::TrapFrame).write(*frame);
        core::arch::asm!("mov rsp, {0}", "jmp trap_return", in(reg) at, options(noreturn));
    }
}

/// Invalidates the TLB entry for `va` (a guest address).
pub fn invlpg(va: u64) {
    // SAFETY: invlpg only drops a cached translation; any address is allowed.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}
