//! The ABI's numbers, pinned to the values `docs/abi/` gives them.
//!
//! Guests and the hypervisor compile against the same constants, so a
//! changed constant breaks no build and no test that uses it on both sides:
//! it silently changes the ABI. These tests catch that (and were written to
//! kill the cargo-mutants misses listed in `docs/testing.md`): a change here
//! is an ABI change and needs a new ABI version and a spec update.

use hypercall_abi::args::{ShutdownReason, Virq, FRAME_LOADED, FRAME_PINNED};
use hypercall_abi::layout::{
    CALLBACK_STACK_SIZE, RED_ZONE, RFLAGS_GUEST_MASK, RFLAGS_IF, SHARED_INFO_VA, WINDOW_BASE,
    WINDOW_MAX_PAGES,
};
use hypercall_abi::{abi_compatible, abi_major, abi_minor, abi_version, pte, Error, ABI_VERSION};

#[test]
fn version_words_pack_major_and_minor() {
    // BASE-1 / README: ABI 1.0 is 0x0001_0000; `major << 16 | minor`.
    assert_eq!(ABI_VERSION, 0x0001_0000);
    assert_eq!(abi_version(0x1234, 0x5678), 0x1234_5678);
    assert_eq!(abi_version(0, 0xffff), 0x0000_ffff);
    assert_eq!(abi_major(0x1234_5678), 0x1234);
    assert_eq!(abi_minor(0x1234_5678), 0x5678);
    assert_eq!(abi_major(ABI_VERSION), 1);
    assert_eq!(abi_minor(ABI_VERSION), 0);
}

#[test]
fn compatible_means_same_major_and_no_newer_minor() {
    let v = abi_version;
    assert!(abi_compatible(v(1, 2), v(1, 2)));
    assert!(abi_compatible(v(1, 2), v(1, 3)));
    assert!(!abi_compatible(v(1, 3), v(1, 2)));
    assert!(!abi_compatible(v(2, 0), v(1, 9)));
    assert!(!abi_compatible(v(0, 1), v(1, 1)));
}

#[test]
fn shutdown_reasons_and_virqs() {
    // SCHED-3: 0 poweroff, 1 reboot, 2 crash; SCHED-3a: others refused.
    let reasons: Vec<_> = (0..4).map(ShutdownReason::from_arg).collect();
    assert_eq!(
        reasons,
        [
            Some(ShutdownReason::Poweroff),
            Some(ShutdownReason::Reboot),
            Some(ShutdownReason::Crash),
            None
        ]
    );
    let names: Vec<_> = reasons.iter().flatten().map(|r| r.name()).collect();
    assert_eq!(names, ["poweroff", "reboot", "crash"]);
    // EVT-3: virq 0 is the timer; EVT-3a: others refused.
    assert_eq!(Virq::from_arg(0), Some(Virq::Timer));
    assert_eq!(Virq::from_arg(1), None);
}

#[test]
fn errors_display_name_and_code() {
    assert_eq!(Error::NotFound.to_string(), "not_found (5)");
    assert_eq!(Error::TypeConflict.to_string(), "type_conflict (8)");
}

#[test]
fn layout_constants() {
    // MEM-2: the window from 4 MiB up to 1 GiB, shared info just below it.
    assert_eq!(WINDOW_BASE, 0x40_0000);
    assert_eq!(WINDOW_MAX_PAGES, 261_120);
    assert_eq!(SHARED_INFO_VA, 0x3f_f000);
    // TRAP-0: a 64 KiB callback stack, the 128-byte red zone.
    assert_eq!(CALLBACK_STACK_SIZE, 65_536);
    assert_eq!(RED_ZONE, 128);
    // TRAP-2: CF, PF, AF, ZF, SF, DF, OF, AC; IF forced.
    assert_eq!(RFLAGS_GUEST_MASK, 0x4_0cd5);
    assert_eq!(RFLAGS_IF, 0x200);
    // MMU-29: frame_info flags.
    assert_eq!((FRAME_PINNED, FRAME_LOADED), (1, 2));
}

#[test]
fn page_table_entry_bits_are_the_cpus() {
    // docs/abi/mmu.md: the x86-64 entry format, bit by bit.
    let bits = [
        (pte::PRESENT, 0),
        (pte::WRITABLE, 1),
        (pte::USER, 2),
        (pte::PWT, 3),
        (pte::PCD, 4),
        (pte::ACCESSED, 5),
        (pte::DIRTY, 6),
        (pte::PS_OR_PAT, 7),
        (pte::GLOBAL, 8),
        (pte::NX, 63),
    ];
    for (value, bit) in bits {
        assert_eq!(value, 1u64 << bit, "bit {bit}");
    }
    assert_eq!(pte::AVAILABLE, 0xe00);
    assert_eq!(pte::HIGH_BITS, 0x7ff0_0000_0000_0000);
    assert_eq!(pte::ADDR_MASK, 0x000f_ffff_ffff_f000);
}
