//! Time: the calibrated TSC, monotonic nanoseconds, and the one-shot
//! hypervisor timer that drives preemption and guest deadlines.
#![forbid(unsafe_code)]

use crate::arch::{self, lapic};
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(1_000_000_000);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
/// APIC timer ticks per TSC tick as a 32.32 fixed-point multiplier, so that
/// arming the timer multiplies instead of dividing (a 128-bit division,
/// `__udivti3`, cost ~50 instructions on every re-arm).
static APIC_PER_TSC: AtomicU64 = AtomicU64::new(1 << 32);

/// Calibrates and records the clocks; reports `@ time`.
pub fn init() {
    lapic::init(crate::mem::phys_to_virt);
    let c = lapic::calibrate();
    TSC_HZ.store(c.tsc_hz.max(1), Ordering::Relaxed);
    BOOT_TSC.store(arch::rdtsc(), Ordering::Relaxed);
    APIC_PER_TSC.store(
        apic_per_tsc(c.apic_hz.max(1), c.tsc_hz.max(1)),
        Ordering::Relaxed,
    );
    crate::report!(
        "time",
        "tsc_hz={} apic_hz={} source={}",
        c.tsc_hz,
        c.apic_hz,
        c.source
    );
}

/// TSC ticks per second.
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// The TSC value that is monotonic time 0.
pub fn boot_tsc() -> u64 {
    BOOT_TSC.load(Ordering::Relaxed)
}

/// The TSC now.
pub fn now_tsc() -> u64 {
    arch::rdtsc()
}

/// Converts monotonic nanoseconds to a TSC value (saturating).
pub fn ns_to_tsc(ns: u64) -> u64 {
    let ticks = u128::from(ns) * u128::from(tsc_hz()) / 1_000_000_000;
    boot_tsc().saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX))
}

/// TSC ticks in `ms` milliseconds.
pub fn ms_to_ticks(ms: u64) -> u64 {
    tsc_hz() / 1000 * ms
}

/// `apic_hz / tsc_hz` as 32.32 fixed point (saturating; the APIC timer
/// runs no faster than the TSC on any machine we know, so it is below 2^32).
fn apic_per_tsc(apic_hz: u64, tsc_hz: u64) -> u64 {
    u64::try_from((u128::from(apic_hz) << 32) / u128::from(tsc_hz.max(1))).unwrap_or(u64::MAX)
}

/// APIC timer ticks in `delta` TSC ticks (saturating at `u32::MAX`, at
/// least 1). The error of the 32.32 multiplier is below one APIC tick per
/// 2^32 TSC ticks: the timer never fires late by more than a tick.
fn apic_ticks(delta: u64, mul: u64) -> u32 {
    let apic = (u128::from(delta) * u128::from(mul)) >> 32;
    u32::try_from(apic).unwrap_or(u32::MAX).max(1)
}

/// Arms the hypervisor timer to fire at TSC value `at` (at once if past).
/// A multiplication, no division (see `APIC_PER_TSC`).
pub fn arm_at(at: u64) {
    let now = now_tsc();
    let delta = at.saturating_sub(now).max(1);
    lapic::arm(apic_ticks(delta, APIC_PER_TSC.load(Ordering::Relaxed)));
}
