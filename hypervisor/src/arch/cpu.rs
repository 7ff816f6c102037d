//! Descriptor tables: GDT (with the selector order `syscall`/`sysret` need),
//! TSS with IST stacks, and the IDT pointing at the trap stubs.

use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::structures::tss::TaskStateSegment;
use x86_64::{PrivilegeLevel, VirtAddr};

/// Kernel code selector (`STAR[47:32]`).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_SS: u16 = 0x10;
/// User data selector with RPL 3 (sysret loads `STAR[63:48]` + 8).
pub const USER_SS: u16 = 0x18 | 3;
/// User 64-bit code selector with RPL 3 (sysret loads `STAR[63:48]` + 16).
pub const USER_CS: u16 = 0x20 | 3;

/// IST slot (1-based, as the IDT encodes it) for double faults.
pub const IST_DOUBLE_FAULT: u16 = 1;
/// IST slot for NMIs.
pub const IST_NMI: u16 = 2;
/// IST slot for machine checks.
pub const IST_MACHINE_CHECK: u16 = 3;

pub(super) const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
pub(super) struct Stack([u8; STACK_SIZE]);

static mut IST_STACKS: [Stack; 3] = [const { Stack([0; STACK_SIZE]) }; 3];
/// The stack every trap from ring 3 lands on (TSS.RSP0).
pub(super) static mut KERNEL_STACK: Stack = Stack([0; STACK_SIZE]);

/// The TSS. Written by [`init`] and, for RSP0 alone, by [`set_rsp0`] on
/// every domain switch; the CPU reads it (RSP0, the IST slots) on entries.
/// Never referenced: only raw pointers to it are taken.
static mut TSS: TaskStateSegment = TaskStateSegment::new();
static GDT: spin::Once<GlobalDescriptorTable> = spin::Once::new();
static IDT: spin::Once<InterruptDescriptorTable> = spin::Once::new();
/// The GDT with a 32-bit ring-3 code segment (test boots only).
static GDT_COMPAT32: spin::Once<GlobalDescriptorTable> = spin::Once::new();
static TSS_SELECTOR: spin::Once<SegmentSelector> = spin::Once::new();

/// The 32-bit ring-3 code selector that [`add_compat32_segment`] creates.
pub const TEST_COMPAT32_CS: u16 = 0x38 | 3;

fn stack_top(stack: *const Stack) -> VirtAddr {
    VirtAddr::from_ptr(stack) + STACK_SIZE as u64
}

/// The top of the ring-0 stack that traps from guests arrive on.
pub fn kernel_stack_top() -> u64 {
    stack_top(&raw const KERNEL_STACK).as_u64()
}

/// Points TSS.RSP0 at `top`: where the CPU pushes the iret words of the
/// next entry from ring 3 (the end of the running domain's frame).
///
/// # Safety
/// `top` is canonical (it is stored unchecked, on every switch).
pub unsafe fn set_rsp0(top: u64) {
    // SAFETY: one CPU with interrupts off (every caller is the hypervisor
    // running between entries): the CPU reads RSP0 only on an entry from
    // ring 3, which cannot happen during this store; the field is written
    // through a raw pointer, no reference to the TSS exists; `top` is
    // canonical (the caller's contract), as `VirtAddr` requires.
    unsafe {
        let tss = &raw mut TSS;
        (*tss).privilege_stack_table[0] = VirtAddr::new_unsafe(top);
    }
}

/// Whether `addr` lies in one of the hypervisor's own stacks.
pub fn on_kernel_stack(addr: u64) -> bool {
    let in_stack = |s: *const Stack| {
        let lo = s as u64;
        addr >= lo && addr < lo + STACK_SIZE as u64
    };
    // SAFETY: only the addresses of the statics are taken, never references.
    let ist = unsafe {
        [
            &raw const IST_STACKS[0],
            &raw const IST_STACKS[1],
            &raw const IST_STACKS[2],
        ]
    };
    in_stack(&raw const KERNEL_STACK)
        || ist.iter().any(|&s| in_stack(s))
        || crate::arch::on_boot_stack(addr)
}

/// Loads the GDT, TSS and IDT. Called once, early, with interrupts off.
pub fn init() {
    let tss_ptr = &raw mut TSS;
    {
        let mut tss = TaskStateSegment::new();
        tss.privilege_stack_table[0] = stack_top(&raw const KERNEL_STACK);
        for (i, slot) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK]
            .iter()
            .enumerate()
        {
            // SAFETY: address-of only; each IST stack is used by exactly one vector.
            let s = unsafe { &raw const IST_STACKS[i] };
            tss.interrupt_stack_table[usize::from(*slot) - 1] = stack_top(s);
        }
        // SAFETY: boot, one CPU, interrupts off, the TSS not loaded yet:
        // nothing else reads or writes it.
        unsafe { tss_ptr.write(tss) };
    }
    let (gdt, tss_sel) = {
        let mut tss_sel = SegmentSelector(0);
        let gdt = GDT.call_once(|| {
            let mut gdt = GlobalDescriptorTable::new();
            let kcs = gdt.append(Descriptor::kernel_code_segment());
            let kss = gdt.append(Descriptor::kernel_data_segment());
            let uss = gdt.append(Descriptor::user_data_segment());
            let ucs = gdt.append(Descriptor::user_code_segment());
            // SAFETY: the TSS is a static (lives forever) and is only
            // written through raw pointers (RSP0 by `set_rsp0`), which the
            // CPU may read at any entry: that is what a TSS is for.
            tss_sel = gdt.append(unsafe { Descriptor::tss_segment_unchecked(tss_ptr) });
            debug_assert_eq!(
                (kcs.0, kss.0, uss.0, ucs.0),
                (KERNEL_CS, KERNEL_SS, USER_SS, USER_CS)
            );
            gdt
        });
        (gdt, tss_sel)
    };
    TSS_SELECTOR.call_once(|| tss_sel);
    gdt.load();
    // SAFETY: the selectors name the descriptors appended above, in the GDT
    // just loaded; the TSS descriptor is loaded exactly once.
    unsafe {
        CS::set_reg(SegmentSelector::new(KERNEL_CS / 8, PrivilegeLevel::Ring0));
        SS::set_reg(SegmentSelector::new(KERNEL_SS / 8, PrivilegeLevel::Ring0));
        DS::set_reg(SegmentSelector(0));
        ES::set_reg(SegmentSelector(0));
        load_tss(tss_sel);
    }
    // A null LDTR (spec CPU-3): every LDT selector (TI = 1) then raises #GP
    // instead of making the CPU read descriptors from linear address 0,
    // where a guest could place a call gate or a 32-bit code segment.
    // SAFETY: a null selector is always valid for lldt.
    unsafe {
        core::arch::asm!("lldt {0:x}", in(reg) 0u16, options(nomem, nostack, preserves_flags))
    };
    // The stubs call through the entry table: it must be filled first.
    assert!(
        super::entries::registered(),
        "arch::entries::register must run before the IDT is loaded"
    );
    IDT.call_once(build_idt).load();
}

/// Test boots only (`testonly=compat32` on the command line): loads a copy
/// of the GDT with one more descriptor, a flat 32-bit code segment of DPL 3
/// at [`TEST_COMPAT32_CS`], so that a guest can enter compatibility mode
/// and the IA32_CSTAR entry can be tested (CPU-3b). The normal GDT has no
/// such segment (CPU-3a). Called before any domain runs.
pub fn add_compat32_segment() {
    let tss = &raw const TSS;
    let gdt = GDT_COMPAT32.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        gdt.append(Descriptor::kernel_code_segment());
        gdt.append(Descriptor::kernel_data_segment());
        gdt.append(Descriptor::user_data_segment());
        gdt.append(Descriptor::user_code_segment());
        // SAFETY: as in `init`: the static TSS, written only through raw
        // pointers.
        let t = gdt.append(unsafe { Descriptor::tss_segment_unchecked(tss) });
        // P=1 DPL=3 S=1 type=execute/read, D=1 (32-bit), G=1, base 0, 4 GiB.
        let c = gdt.append(Descriptor::UserSegment(0x00cf_fa00_0000_ffff));
        debug_assert_eq!((Some(&t), c.0), (TSS_SELECTOR.get(), TEST_COMPAT32_CS & !3));
        gdt
    });
    // The same descriptors at the same places plus one: CS, SS and TR stay
    // valid (TR's descriptor is cached; the copy's busy bit is not needed).
    gdt.load();
}

/// A domain's data-segment selectors (spec CPU-2). Their bases are always
/// 0: the GDT's descriptors all have base 0, the LDT is null, CR4.FSGSBASE
/// stays clear (`wrfsbase` and friends raise #UD), `swapgs` and `wrmsr`
/// raise #GP in ring 3, and the hypervisor zeroes the base MSRs at boot
/// ([`zero_segment_bases`]) and never uses FS or GS itself. So the
/// selectors are the whole per-domain segment state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)] // `save` and `load` address the fields at offsets 0, 2, 4, 6
pub struct Selectors {
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
}

impl Selectors {
    /// Stores the selectors the CPU holds now (the last domain's) here:
    /// four stores straight from the segment registers (on every switch).
    #[inline(always)]
    pub fn save(&mut self) {
        let p: *mut Selectors = self;
        // SAFETY: reading segment registers has no side effects; `p` is
        // this value, `repr(C)`: four u16 at offsets 0, 2, 4 and 6, each
        // written by one 16-bit store within it.
        unsafe {
            core::arch::asm!(
                "mov word ptr [{p}], ds", "mov word ptr [{p} + 2], es",
                "mov word ptr [{p} + 4], fs", "mov word ptr [{p} + 6], gs",
                p = in(reg) p,
                options(nostack, preserves_flags)
            )
        };
    }

    /// Loads these selectors (saved by [`Selectors::save`] while a domain
    /// ran, or the null selectors of a new domain): four loads straight
    /// into the segment registers.
    #[inline(always)]
    pub fn load(&self) {
        let p: *const Selectors = self;
        // SAFETY: `p` is this value, `repr(C)` (four u16 at offsets 0, 2,
        // 4, 6, each read by one 16-bit load within it). Each value is 0
        // or a selector the domain itself loaded at CPL 3, so it names a
        // present data or readable code descriptor of the GDT with DPL 3
        // (the LDT is null), which CPL 0 may load too; in 64-bit mode DS
        // and ES are not used for addressing and the hypervisor never uses
        // FS or GS, and every base stays 0.
        unsafe {
            core::arch::asm!(
                "mov ds, word ptr [{p}]", "mov es, word ptr [{p} + 2]",
                "mov fs, word ptr [{p} + 4]", "mov gs, word ptr [{p} + 6]",
                p = in(reg) p,
                options(nostack, preserves_flags, readonly)
            )
        };
    }
}

/// IA32_FS_BASE, IA32_GS_BASE and IA32_KERNEL_GS_BASE set to 0 (CPU-2).
pub fn zero_segment_bases() {
    for msr in [0xc000_0100u32, 0xc000_0101, 0xc000_0102] {
        // SAFETY: these MSRs exist on every x86-64 CPU; 0 is a canonical base.
        unsafe { x86_64::registers::model_specific::Msr::new(msr).write(0) };
    }
}

fn build_idt() -> InterruptDescriptorTable {
    let mut idt = InterruptDescriptorTable::new();
    let stub = |v: u8| VirtAddr::new(crate::arch::traps::stub_address(v));
    macro_rules! set {
        ($($field:ident = $vec:literal $(, ist $ist:expr)?;)*) => {$(
            // SAFETY: the stub for this vector pushes the frame `trap_common`
            // expects (a zero error code where the CPU pushes none).
            let _opts = unsafe { idt.$field.set_handler_addr(stub($vec)) };
            $(
                // SAFETY: the IST slot holds a stack reserved for this vector.
                unsafe { _opts.set_stack_index($ist - 1) };
            )?
        )*};
    }
    set! {
        divide_error = 0; debug = 1; non_maskable_interrupt = 2, ist IST_NMI; breakpoint = 3;
        overflow = 4; bound_range_exceeded = 5; invalid_opcode = 6; device_not_available = 7;
        double_fault = 8, ist IST_DOUBLE_FAULT; invalid_tss = 10; segment_not_present = 11;
        stack_segment_fault = 12; general_protection_fault = 13; page_fault = 14;
        x87_floating_point = 16; alignment_check = 17; machine_check = 18, ist IST_MACHINE_CHECK;
        simd_floating_point = 19; virtualization = 20; cp_protection_exception = 21;
        hv_injection_exception = 28; vmm_communication_exception = 29; security_exception = 30;
    }
    // `int3` is how debuggers and guests' own breakpoints stop: ring 3 may
    // use this one gate (TRAP-0b); every other vector's gate is ring 0, so
    // `int n` from a guest raises #GP instead (TRAP-3).
    // SAFETY: the stub for vector 3 pushes the frame `trap_common` expects
    // (a zero error code, as the CPU pushes none for #BP).
    unsafe { idt.breakpoint.set_handler_addr(stub(3)) }.set_privilege_level(PrivilegeLevel::Ring3);
    for v in 32..=255u8 {
        // SAFETY: the stub for vector `v` pushes the frame `trap_common`
        // expects with a zero error code; vectors >= 32 never carry one.
        unsafe { idt[v].set_handler_addr(stub(v)) };
    }
    idt
}
