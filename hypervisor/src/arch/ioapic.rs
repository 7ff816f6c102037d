//! The I/O APIC (the one at `0xfec0_0000` on QEMU `microvm` and `q35`):
//! routes a delegated device's input to a vector of its own (`IO-2`),
//! masks and unmasks it. The hypervisor's only device programming besides
//! the local APIC; no device driver (docs/io.md).
//!
//! Inputs are programmed level-triggered, active-high (virtio-mmio holds
//! its line until the driver acknowledges the interrupt at the device),
//! fixed delivery to this CPU's local APIC.

use core::sync::atomic::{AtomicU64, Ordering};

/// Physical address of the I/O APIC's registers.
pub const PHYS_BASE: u64 = 0xfec0_0000;
/// Inputs of the I/O APIC.
pub const PINS: u32 = 24;
/// Vector of input 0; input `n` uses `VECTOR_BASE + n`.
pub const VECTOR_BASE: u8 = 0x30;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REDIR_BASE: u32 = 0x10;
const MASKED: u32 = 1 << 16;
const LEVEL: u32 = 1 << 15;

/// The virtual address of the registers (0 until [`init`]).
static BASE: AtomicU64 = AtomicU64::new(0);

/// Records where the registers are mapped (uncached: the direct map
/// covers `0xfe00_0000..4 GiB` uncached) and masks every input.
pub fn init(phys_to_virt: fn(u64) -> u64) {
    BASE.store(phys_to_virt(PHYS_BASE), Ordering::Relaxed);
    for pin in 0..PINS {
        mask(pin);
    }
}

fn write_reg(reg: u32, value: u32) {
    let base = BASE.load(Ordering::Relaxed);
    assert!(base != 0, "ioapic::init ran");
    // SAFETY: `base` is the direct-map (uncached) address of the I/O APIC's
    // register page (set by `init`); IOREGSEL and IOWIN are aligned 32-bit
    // registers in it, and the hypervisor runs on one CPU with interrupts
    // disabled here, so the select/write pair is not interleaved.
    unsafe {
        ((base + IOREGSEL) as *mut u32).write_volatile(reg);
        ((base + IOWIN) as *mut u32).write_volatile(value);
    }
}

fn read_reg(reg: u32) -> u32 {
    let base = BASE.load(Ordering::Relaxed);
    assert!(base != 0, "ioapic::init ran");
    // SAFETY: as in `write_reg`: aligned registers of the uncached register
    // page, select then read, not interleaved on the one CPU.
    unsafe {
        ((base + IOREGSEL) as *mut u32).write_volatile(reg);
        ((base + IOWIN) as *const u32).read_volatile()
    }
}

/// Routes input `pin` to vector [`VECTOR_BASE`]` + pin` on the local APIC
/// `apic_id`, level-triggered, active-high, masked.
pub fn route(pin: u32, apic_id: u8) {
    if pin >= PINS {
        return;
    }
    let vector = u32::from(VECTOR_BASE) + pin;
    write_reg(REDIR_BASE + 2 * pin, MASKED | LEVEL | vector);
    write_reg(REDIR_BASE + 2 * pin + 1, u32::from(apic_id) << 24);
}

/// Masks input `pin`.
pub fn mask(pin: u32) {
    if pin < PINS {
        let low = read_reg(REDIR_BASE + 2 * pin);
        write_reg(REDIR_BASE + 2 * pin, low | MASKED);
    }
}

/// Unmasks input `pin`.
pub fn unmask(pin: u32) {
    if pin < PINS {
        let low = read_reg(REDIR_BASE + 2 * pin);
        write_reg(REDIR_BASE + 2 * pin, low & !MASKED);
    }
}

/// Whether input `pin` is masked.
pub fn masked(pin: u32) -> bool {
    pin >= PINS || read_reg(REDIR_BASE + 2 * pin) & MASKED != 0
}

/// The input a vector of [`route`] stands for.
pub fn pin_of(vector: u64) -> Option<u32> {
    let v = vector.checked_sub(u64::from(VECTOR_BASE))?;
    u32::try_from(v).ok().filter(|&p| p < PINS)
}
