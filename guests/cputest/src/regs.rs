//! Direct access to the FPU/SIMD registers and the data-segment selectors.
//!
//! The guest is built soft-float: compiled Rust never touches x87, MMX or
//! SSE registers, so what the assembly here loads stays in the registers
//! across any amount of Rust code, hypercalls and preemption, unless the
//! hypervisor changes it (which is what the suite checks).

use core::arch::asm;
use core::arch::x86_64::{__cpuid, __cpuid_count};

/// The FPU/SIMD state the suite fills and checks: MMX (the x87 registers'
/// mantissas), XMM/YMM 0-15 (the upper halves only with AVX), the x87
/// control word and MXCSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct Simd {
    pub v: [[u64; 4]; 16],
    pub mm: [u64; 8],
    pub fcw: u16,
    pub mxcsr: u32,
}

impl Simd {
    /// A pattern unique to `seed` in every word, with its own control word
    /// and MXCSR (rounding modes differ from the initial ones).
    pub fn pattern(seed: u8, avx: bool) -> Simd {
        let w = |i: u64| {
            (u64::from(seed) << 56) | (0x5a5a_0000_0000 ^ (i << 32)) | (i * 0x0101_0101) | 1
        };
        let mut s = Simd {
            v: [[0; 4]; 16],
            mm: [0; 8],
            fcw: if seed & 1 == 0 { 0x027f } else { 0x0a7f },
            mxcsr: if seed & 1 == 0 { 0x7f80 } else { 0x3f80 },
        };
        for (i, r) in s.v.iter_mut().enumerate() {
            for (j, x) in r.iter_mut().enumerate() {
                *x = if j >= 2 && !avx {
                    0
                } else {
                    w((i * 4 + j) as u64)
                };
            }
        }
        for (i, m) in s.mm.iter_mut().enumerate() {
            *m = w(100 + i as u64);
        }
        s
    }

    /// How many words (MMX, vector words, FCW, MXCSR) equal `other`'s.
    pub fn shared_words(&self, other: &Simd) -> usize {
        let v = self
            .v
            .iter()
            .flatten()
            .zip(other.v.iter().flatten())
            .filter(|(a, b)| a == b && **a != 0)
            .count();
        let m = self
            .mm
            .iter()
            .zip(other.mm.iter())
            .filter(|(a, b)| a == b && **a != 0)
            .count();
        v + m
    }
}

/// Whether AVX is usable: CPUID has it, the hypervisor set CR4.OSXSAVE and
/// enabled the YMM state in XCR0.
pub fn avx() -> bool {
    let l1 = __cpuid(1);
    l1.ecx & (1 << 28) != 0 && l1.ecx & (1 << 27) != 0 && xcr0() & 0b110 == 0b110
}

/// XCR0 (0 when CR4.OSXSAVE is clear, where `xgetbv` would raise #UD).
pub fn xcr0() -> u64 {
    if __cpuid(1).ecx & (1 << 27) == 0 {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv(0) is allowed at CPL 3 once CR4.OSXSAVE is set (CPUID
    // bit checked above); it only reads.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Whether CPUID leaf 7 reports `bit` of ECX (UMIP is 2, RDPID 22).
pub fn leaf7_ecx(bit: u32) -> bool {
    __cpuid_count(7, 0).ecx & (1 << bit) != 0
}

macro_rules! v16 {
    ($m:ident) => {
        $m!(0);
        $m!(1);
        $m!(2);
        $m!(3);
        $m!(4);
        $m!(5);
        $m!(6);
        $m!(7);
        $m!(8);
        $m!(9);
        $m!(10);
        $m!(11);
        $m!(12);
        $m!(13);
        $m!(14);
        $m!(15);
    };
}

macro_rules! m8 {
    ($m:ident) => {
        $m!(0);
        $m!(1);
        $m!(2);
        $m!(3);
        $m!(4);
        $m!(5);
        $m!(6);
        $m!(7);
    };
}

/// Loads `s` into the registers (the YMM upper halves only with `avx`).
pub fn load(s: &Simd, avx: bool) {
    let v = s.v.as_ptr().cast::<u8>();
    let mm = s.mm.as_ptr().cast::<u8>();
    macro_rules! ld {
        ($n:literal) => {
            let p = v.wrapping_add($n * 32);
            // SAFETY: `p` points at 32 readable bytes of `s`; only the named
            // vector register changes, which no compiled code uses.
            unsafe {
                if avx {
                    asm!(concat!("vmovdqu ymm", stringify!($n), ", [{}]"), in(reg) p, options(nostack, readonly, preserves_flags));
                } else {
                    asm!(concat!("movdqu xmm", stringify!($n), ", [{}]"), in(reg) p, options(nostack, readonly, preserves_flags));
                }
            }
        };
    }
    v16!(ld);
    macro_rules! ldm {
        ($n:literal) => {
            let p = mm.wrapping_add($n * 8);
            // SAFETY: `p` points at 8 readable bytes of `mm` (the caller's
            // pattern buffer); the load only fills MMX register $n, which
            // the probe owns, and touches neither stack nor flags.
            unsafe { asm!(concat!("movq mm", stringify!($n), ", [{}]"), in(reg) p, options(nostack, readonly, preserves_flags)) };
        };
    }
    m8!(ldm);
    // SAFETY: fldcw/ldmxcsr of values with no reserved bits set.
    unsafe {
        asm!("fldcw [{}]", in(reg) &s.fcw, options(nostack, readonly, preserves_flags));
        asm!("ldmxcsr [{}]", in(reg) &s.mxcsr, options(nostack, readonly, preserves_flags));
    }
}

/// Reads the registers back (the YMM upper halves only with `avx`; zero
/// otherwise).
pub fn store(avx: bool) -> Simd {
    let mut s = Simd {
        v: [[0; 4]; 16],
        mm: [0; 8],
        fcw: 0,
        mxcsr: 0,
    };
    let v = s.v.as_mut_ptr().cast::<u8>();
    let mm = s.mm.as_mut_ptr().cast::<u8>();
    macro_rules! st {
        ($n:literal) => {
            let p = v.wrapping_add($n * 32);
            // SAFETY: `p` points at 32 writable bytes of `s`.
            unsafe {
                if avx {
                    asm!(concat!("vmovdqu [{}], ymm", stringify!($n)), in(reg) p, options(nostack, preserves_flags));
                } else {
                    asm!(concat!("movdqu [{}], xmm", stringify!($n)), in(reg) p, options(nostack, preserves_flags));
                }
            }
        };
    }
    v16!(st);
    macro_rules! stm {
        ($n:literal) => {
            let p = mm.wrapping_add($n * 8);
            // SAFETY: 8 writable bytes of `s`.
            unsafe { asm!(concat!("movq [{}], mm", stringify!($n)), in(reg) p, options(nostack, preserves_flags)) };
        };
    }
    m8!(stm);
    // SAFETY: stores into fields of `s`.
    unsafe {
        asm!("fnstcw [{}]", in(reg) &mut s.fcw, options(nostack, preserves_flags));
        asm!("stmxcsr [{}]", in(reg) &mut s.mxcsr, options(nostack, preserves_flags));
    }
    s
}

/// The x87 environment's control, status and tag words (`fnstenv`), read
/// before any MMX access (which would mark every register in use).
pub fn x87_env() -> (u16, u16, u16) {
    let mut env = [0u16; 14];
    // SAFETY: fnstenv writes 28 bytes into `env`; it also masks x87
    // exceptions, so the control word is reloaded from the copy.
    unsafe {
        asm!("fnstenv [{0}]", "fldcw [{0}]", in(reg) env.as_mut_ptr(), options(nostack, preserves_flags));
    }
    (env[0], env[2], env[4])
}

/// DS, ES, FS, GS.
pub fn selectors() -> [u16; 4] {
    let (ds, es, fs, gs): (u16, u16, u16, u16);
    // SAFETY: reading segment registers has no effect.
    unsafe {
        asm!("mov {0:x}, ds", "mov {1:x}, es", "mov {2:x}, fs", "mov {3:x}, gs",
            out(reg) ds, out(reg) es, out(reg) fs, out(reg) gs, options(nomem, nostack, preserves_flags))
    };
    [ds, es, fs, gs]
}

/// Loads DS, ES, FS, GS (each 0 or a DPL-3 GDT selector).
pub fn set_selectors(s: [u16; 4]) {
    // SAFETY: the callers pass null selectors, USER_SS (0x1b) or USER_CS
    // (0x23, a readable code segment); in 64-bit mode none of them changes
    // how compiled code addresses memory (all bases are 0).
    unsafe {
        asm!("mov ds, {0:x}", "mov es, {1:x}", "mov fs, {2:x}", "mov gs, {3:x}",
            in(reg) s[0], in(reg) s[1], in(reg) s[2], in(reg) s[3], options(nostack, preserves_flags))
    };
}
