//! The local APIC timer (the hypervisor's only interrupt source for now),
//! the legacy PIC (masked), and TSC/APIC calibration against the PIT.

use x86_64::instructions::port::Port;

/// Vector of the local APIC timer.
pub const TIMER_VECTOR: u8 = 0x20;
/// Vector of spurious local APIC interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const REG_ID: u64 = 0x20;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_INITIAL: u64 = 0x380;
const REG_CURRENT: u64 = 0x390;
const REG_DIVIDE: u64 = 0x3e0;

/// The virtual address of the local APIC's registers.
static BASE: spin::Once<u64> = spin::Once::new();

fn reg(offset: u64) -> *mut u32 {
    let base = *BASE.get().expect("lapic::init ran");
    (base + offset) as *mut u32
}

fn write(offset: u64, value: u32) {
    // SAFETY: the local APIC page is direct-mapped uncached (mem::init);
    // `offset` is one of the register constants above.
    unsafe { reg(offset).write_volatile(value) }
}

fn read(offset: u64) -> u32 {
    // SAFETY: the local APIC page is direct-mapped uncached (mem::init);
    // `offset` is one of the register constants above, so the read is of
    // an aligned 32-bit register with no side effect beyond the APIC's own.
    unsafe { reg(offset).read_volatile() }
}

/// Masks the 8259 PICs, enables the local APIC, and points its timer at
/// [`TIMER_VECTOR`] in one-shot mode with divide-by-1. `phys_to_virt`
/// gives the (uncached) virtual address at which the kernel maps a
/// physical one: `arch` does not own the direct map.
pub fn init(phys_to_virt: fn(u64) -> u64) {
    // SAFETY: ports 0x21/0xa1 are the 8259 data ports; writing 0xff masks
    // every legacy IRQ (absent PICs ignore the write).
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
    let msr = x86_64::registers::model_specific::Msr::new(0x1b);
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU; setting bit 11
    // (global enable) keeps the APIC at its current base.
    let base = unsafe {
        let mut m = msr;
        let v = m.read();
        m.write(v | (1 << 11));
        v & 0x000f_ffff_ffff_f000
    };
    BASE.call_once(|| phys_to_virt(base));
    write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    write(REG_DIVIDE, 0b1011);
    write(REG_LVT_TIMER, u32::from(TIMER_VECTOR));
}

/// This CPU's local APIC id (the I/O APIC's destination).
pub fn id() -> u8 {
    (read(REG_ID) >> 24) as u8
}

/// Signals end of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Arms the one-shot timer to fire after `ticks` APIC ticks (0 stops it).
pub fn arm(ticks: u32) {
    write(REG_INITIAL, ticks);
}

fn pit_count() -> u16 {
    // SAFETY: PIT command/data ports; the latch command freezes channel 0's
    // count for the two reads that follow.
    unsafe {
        Port::<u8>::new(0x43).write(0x00);
        let lo = Port::<u8>::new(0x40).read();
        let hi = Port::<u8>::new(0x40).read();
        u16::from(lo) | (u16::from(hi) << 8)
    }
}

/// TSC and APIC-timer frequencies in Hz.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    /// TSC ticks per second.
    pub tsc_hz: u64,
    /// APIC timer ticks per second (divide-by-1).
    pub apic_hz: u64,
    /// "pit", or "assumed" when no PIT answered.
    pub source: &'static str,
}

/// Measures the TSC and APIC timer against ~10 ms of PIT channel 0
/// (1.193182 MHz, mode 0, read back with latch commands).
pub fn calibrate() -> Calibration {
    const PIT_HZ: u64 = 1_193_182;
    const WINDOW: u16 = 11_932; // 10 ms
                                // SAFETY: PIT ports: channel 0, lobyte/hibyte, mode 0, count 0xffff.
    unsafe {
        Port::<u8>::new(0x43).write(0x30);
        Port::<u8>::new(0x40).write(0xff);
        Port::<u8>::new(0x40).write(0xff);
    }
    arm(u32::MAX);
    let (t0, a0, p0) = (super::rdtsc(), read(REG_CURRENT), pit_count());
    let mut p1 = p0;
    let mut spins = 0u32;
    while p0.wrapping_sub(p1) < WINDOW && spins < 5_000_000 {
        p1 = pit_count();
        spins += 1;
    }
    let (t1, a1) = (super::rdtsc(), read(REG_CURRENT));
    arm(0);
    let elapsed = u64::from(p0.wrapping_sub(p1));
    if elapsed < u64::from(WINDOW) / 2 {
        // No PIT: QEMU's APIC timer runs at 1 GHz of virtual time.
        let apic_hz = 1_000_000_000;
        let tsc_hz = (t1 - t0) * apic_hz / u64::from(a0.wrapping_sub(a1)).max(1);
        return Calibration {
            tsc_hz,
            apic_hz,
            source: "assumed",
        };
    }
    Calibration {
        tsc_hz: (t1 - t0) * PIT_HZ / elapsed,
        apic_hz: u64::from(a0.wrapping_sub(a1)) * PIT_HZ / elapsed,
        source: "pit",
    }
}
