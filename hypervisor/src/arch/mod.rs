//! Everything that knows x86_64 registers and instructions. The rest of the
//! hypervisor sees decoded, typed values.

pub mod boot;
pub mod cpu;
pub mod entries;
pub mod fpu;
pub mod ioapic;
pub mod lapic;
pub mod syscall;
pub mod traps;

use x86_64::instructions::port::Port;

/// Value written to the isa-debug-exit port for a successful run (QEMU exits 33).
pub const EXIT_SUCCESS: u32 = 0x10;
/// Value written for a failed run (QEMU exits 35).
pub const EXIT_FAILURE: u32 = 0x11;

/// Ends the QEMU run through isa-debug-exit, then halts for good (on a
/// machine without that device). The console ring is drained first, so
/// every line reported reaches the serial port.
pub fn exit_qemu(code: u32) -> ! {
    crate::console::flush();
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

/// What the hypervisor requires of the CPU and found missing.
pub struct Missing(pub heapless::String<64>);

/// CPU protections the hypervisor relies on (spec CPU-6, CPU-7): CR4.PGE
/// (global kernel mappings survive address-space switches), SMEP (ring 0
/// never executes guest pages) and SMAP (ring 0 never touches guest pages
/// by accident; the hypervisor reaches guest memory only through the direct
/// map) are required: on a CPU without SMEP or SMAP the hypervisor refuses
/// to start rather than run weaker. UMIP (`sgdt`, `sidt`, `sldt`, `smsw`,
/// `str` raise #GP in ring 3) is enabled where CPUID has it. Then the FPU
/// and SIMD units are set up ([`fpu::init`]), the data-segment bases zeroed
/// and, where the CPU has `rdtscp`, IA32_TSC_AUX set to 0 (it is all a
/// guest's `rdtscp` or `rdpid` reveals). The kernel reports the result
/// (`@ cpu ...`).
pub fn enable_protections() -> Result<Protections, Missing> {
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    let smep = leaf7.ebx & (1 << 7) != 0;
    let smap = leaf7.ebx & (1 << 20) != 0;
    let umip = leaf7.ecx & (1 << 2) != 0;
    let ext = core::arch::x86_64::__cpuid(0x8000_0001);
    let rdtscp = ext.edx & (1 << 27) != 0;
    let mut missing = heapless::String::<64>::new();
    for (have, name) in [(smep, "smep"), (smap, "smap")] {
        if !have {
            let _ = missing.push_str(if missing.is_empty() { "" } else { " " });
            let _ = missing.push_str(name);
        }
    }
    let fpu = match fpu::init() {
        Ok(c) => c,
        Err(what) => {
            let _ = missing.push_str(if missing.is_empty() { "" } else { " " });
            let _ = missing.push_str(what);
            return Err(Missing(missing));
        }
    };
    if !missing.is_empty() {
        return Err(Missing(missing));
    }
    let mut cr4 = x86_64::registers::control::Cr4::read_raw();
    cr4 |= (1 << 7) | (1 << 20) | (1 << 21);
    if umip {
        cr4 |= 1 << 11;
    }
    // SAFETY: only bits for features CPUID advertises are set; the
    // hypervisor's own mappings are all supervisor pages, so SMEP/SMAP
    // cannot fault its own code or data; UMIP affects only CPL > 0.
    unsafe { x86_64::registers::control::Cr4::write_raw(cr4) };
    traps::note_smap_enabled();
    cpu::zero_segment_bases();
    if rdtscp {
        // SAFETY: IA32_TSC_AUX exists where CPUID has rdtscp (checked).
        unsafe { x86_64::registers::model_specific::Msr::new(0xc000_0103).write(0) };
    }
    Ok(Protections { umip, fpu, rdtscp })
}

/// What [`enable_protections`] enabled beyond the required SMEP, SMAP and
/// PGE, for the kernel to report.
pub struct Protections {
    /// UMIP is on.
    pub umip: bool,
    /// How the FPU and SIMD state is saved.
    pub fpu: fpu::Config,
    /// The CPU has `rdtscp` (IA32_TSC_AUX was zeroed).
    pub rdtscp: bool,
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
    // SAFETY: the only handlers that can run are the timer's EOI path, a
    // device interrupt's mask/EOI/pending bit (`io::interrupt`, which takes
    // no lock when it interrupted ring 0) and fatal reports, none of which
    // touches the state the caller holds.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}

/// Starts running the current domain (its frame made current with
/// [`traps::set_guest_frame`]) in ring 3.
pub fn enter_guest() -> ! {
    let top = cpu::kernel_stack_top();
    // SAFETY: `trap_return` loads rsp from the current guest frame, pops
    // exactly one TrapFrame and irets; the ring-0 stack is set first so that
    // nothing of the boot stack is used again.
    unsafe {
        core::arch::asm!("mov rsp, {0}", "jmp trap_return", in(reg) top, options(noreturn));
    }
}

/// Invalidates the TLB entry for `va` (a guest address).
pub fn invlpg(va: u64) {
    // SAFETY: invlpg only drops a cached translation; any address is allowed.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}
