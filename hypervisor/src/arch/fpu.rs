//! Per-domain x87/MMX/SSE/AVX state (spec CPU-1, CPU-1a).
//!
//! The hypervisor itself is built soft-float and never executes an FPU or
//! SIMD instruction except the saves and restores here, so the registers
//! always hold the state of the domain that ran last. The state is switched
//! eagerly, on every domain switch (see `docs/architecture.md`, "FPU state:
//! eager", for the measurement behind that choice): `xsave64`/`xrstor64` of
//! every component enabled in XCR0 where CPUID has XSAVE, `fxsave64`/
//! `fxrstor64` otherwise. Each domain owns a 64-byte aligned save area
//! allocated when it is built; a new domain's area holds the initial state
//! (FNINIT's control word, MXCSR 0x1F80, every register zero), never another
//! domain's.

use alloc::vec::Vec;
use core::arch::x86_64::{__cpuid, __cpuid_count};

/// x87 (XCR0 bit 0).
const XCR0_X87: u64 = 1 << 0;
/// SSE: XMM registers and MXCSR (bit 1).
const XCR0_SSE: u64 = 1 << 1;
/// AVX: the upper halves of YMM (bit 2).
const XCR0_AVX: u64 = 1 << 2;
/// AVX-512: opmask, ZMM_Hi256 and Hi16_ZMM (bits 5, 6, 7), all or none.
const XCR0_AVX512: u64 = 0b111 << 5;

/// The FPU control word FNINIT loads (all exceptions masked, 64-bit precision).
pub const INIT_FCW: u16 = 0x037f;
/// MXCSR at reset (all exceptions masked, round to nearest).
pub const INIT_MXCSR: u32 = 0x1f80;

/// How the state is saved on this CPU (decided once, in [`init`]).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// XSAVE is used (CPUID.1:ECX.XSAVE); otherwise FXSAVE.
    pub xsave: bool,
    /// Components enabled in XCR0 (x87 and SSE only when FXSAVE is used).
    pub xcr0: u64,
    /// Bytes of one save area.
    pub size: usize,
}

static CONFIG: spin::Once<Config> = spin::Once::new();

/// `CONFIG`'s `xsave`, as one flag the save and restore on every switch
/// test without `Once`'s state test (set by [`init`] with `CONFIG`; no
/// save area exists before: [`FpuState::initial`] needs the config).
static USE_XSAVE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Enables the FPU and SIMD for ring 3 and decides how state is switched:
/// CR0.MP and CR0.NE set, CR0.EM and CR0.TS clear; CR4.OSFXSR and
/// CR4.OSXMMEXCPT set (SSE usable, SIMD exceptions as #XM); with XSAVE,
/// CR4.OSXSAVE and XCR0 = x87 | SSE, plus AVX and AVX-512 where the CPU
/// has them. Components the hypervisor does not switch (MPX, PKRU, AMX,
/// supervisor states) stay disabled, so guest instructions using them
/// raise #UD. Returns `Err` with what is missing on a CPU without FXSR or
/// SSE2 (every x86-64 CPU has them).
pub fn init() -> Result<Config, &'static str> {
    let leaf1 = __cpuid(1);
    if leaf1.edx & (1 << 24) == 0 || leaf1.edx & (1 << 26) == 0 {
        return Err("fxsave/fxrstor or SSE2");
    }
    let xsave = leaf1.ecx & (1 << 26) != 0;
    // SAFETY: MP|NE set and EM|TS cleared only change how x87/SSE
    // instructions behave; the hypervisor executes none except here.
    unsafe {
        let mut cr0: u64;
        core::arch::asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags));
        cr0 |= (1 << 1) | (1 << 5);
        cr0 &= !((1 << 2) | (1 << 3));
        core::arch::asm!("mov cr0, {}", in(reg) cr0, options(nostack, preserves_flags));
    }
    let mut cr4 = x86_64::registers::control::Cr4::read_raw();
    cr4 |= (1 << 9) | (1 << 10);
    if xsave {
        cr4 |= 1 << 18;
    }
    // SAFETY: OSFXSR and OSXMMEXCPT are defined on every CPU with SSE;
    // OSXSAVE only where CPUID has XSAVE (checked above).
    unsafe { x86_64::registers::control::Cr4::write_raw(cr4) };
    let config = if xsave {
        let d = __cpuid_count(0xd, 0);
        let supported = u64::from(d.eax) | (u64::from(d.edx) << 32);
        let mut xcr0 = XCR0_X87 | XCR0_SSE;
        if supported & XCR0_AVX != 0 && leaf1.ecx & (1 << 28) != 0 {
            xcr0 |= XCR0_AVX;
            if supported & XCR0_AVX512 == XCR0_AVX512 {
                xcr0 |= XCR0_AVX512;
            }
        }
        // SAFETY: CR4.OSXSAVE is set; every bit is one CPUID reports as
        // supported, in a combination the SDM allows (x87 always, AVX with
        // SSE, the AVX-512 bits together and with AVX).
        unsafe {
            core::arch::asm!(
                "xsetbv",
                in("ecx") 0u32,
                in("eax") xcr0 as u32,
                in("edx") (xcr0 >> 32) as u32,
                options(nomem, nostack, preserves_flags)
            )
        };
        // EBX now gives the size for the components just enabled.
        let size = __cpuid_count(0xd, 0).ebx as usize;
        Config {
            xsave: true,
            xcr0,
            size: size.max(576),
        }
    } else {
        Config {
            xsave: false,
            xcr0: XCR0_X87 | XCR0_SSE,
            size: 512,
        }
    };
    let config = *CONFIG.call_once(|| config);
    USE_XSAVE.store(config.xsave, core::sync::atomic::Ordering::Relaxed);
    Ok(config)
}

/// The decision [`init`] made.
pub fn config() -> Config {
    *CONFIG.get().expect("fpu::init ran at boot")
}

/// 64 bytes, 64-aligned: the unit of a save area.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Chunk([u8; 64]);

/// One domain's saved FPU/SIMD state.
pub struct FpuState {
    area: Vec<Chunk>,
}

impl FpuState {
    /// The initial state: what FNINIT and a reset MXCSR give, every
    /// register zero, no component in use (XSTATE_BV = 0, so `xrstor`
    /// puts each component in its initial configuration).
    pub fn initial() -> FpuState {
        let size = config().size;
        let mut area = alloc::vec![Chunk([0; 64]); size.div_ceil(64)];
        area[0].0[0..2].copy_from_slice(&INIT_FCW.to_le_bytes());
        area[0].0[24..28].copy_from_slice(&INIT_MXCSR.to_le_bytes());
        FpuState { area }
    }

    /// Bytes held by this area (for the per-domain memory account).
    pub fn bytes(&self) -> usize {
        self.area.len() * 64
    }

    fn ptr(&mut self) -> *mut u8 {
        self.area.as_mut_ptr().cast()
    }

    /// Saves the CPU's current FPU/SIMD state into this area.
    #[inline(always)]
    pub fn save(&mut self) {
        let xsave = USE_XSAVE.load(core::sync::atomic::Ordering::Relaxed);
        let p = self.ptr();
        // SAFETY: `p` is 64-byte aligned (Chunk) and the area holds
        // `config().size` bytes, the size CPUID gives for XCR0's components
        // (512 for fxsave); the save writes only within it. `xsave` is
        // `config().xsave` (`init` set both before any area existed), so
        // `xsave64` runs only with CR4.OSXSAVE set.
        unsafe {
            if xsave {
                core::arch::asm!("xsave64 [{}]", in(reg) p, in("eax") u32::MAX, in("edx") u32::MAX, options(nostack, preserves_flags));
            } else {
                core::arch::asm!("fxsave64 [{}]", in(reg) p, options(nostack, preserves_flags));
            }
        }
    }

    /// Loads this area into the CPU.
    #[inline(always)]
    pub fn restore(&mut self) {
        let xsave = USE_XSAVE.load(core::sync::atomic::Ordering::Relaxed);
        let p = self.ptr();
        // SAFETY: `p` is 64-byte aligned (Chunk) and the area holds
        // `config().size` bytes, so the restore reads only within it; the
        // area holds either the initial image (valid MXCSR, XSTATE_BV 0, a
        // zero XSAVE header) or what `save` wrote, which the CPU accepts
        // back (no #GP). The guest cannot write it. `xsave` is
        // `config().xsave`, as in `save`.
        unsafe {
            if xsave {
                core::arch::asm!("xrstor64 [{}]", in(reg) p, in("eax") u32::MAX, in("edx") u32::MAX, options(nostack, preserves_flags, readonly));
            } else {
                core::arch::asm!("fxrstor64 [{}]", in(reg) p, options(nostack, preserves_flags, readonly));
            }
        }
    }
}
