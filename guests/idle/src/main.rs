//! The smallest Tahoma guest: it blocks, with no deadline and no event
//! bound, until the scenario ends (issue 13, density). No SDK runtime: no
//! callback stack, heap or start-info copy, so its image is two pages and
//! it fits the smallest window (`WINDOW_MIN_PAGES`, 16), 17 frames in all with
//! its shared page. Its first and only hypercall is `block`.
#![no_std]
#![no_main]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use hypercall_abi::args::NO_DEADLINE;
use hypercall_abi::Hypercall;

/// The entry point: `block(NO_DEADLINE)` in a loop (a spurious wake-up
/// blocks again).
#[allow(unsafe_code)]
mod entry {
    use super::{Hypercall, NO_DEADLINE};
    // SAFETY: the entry point, entered once in ring 3 by the hypervisor
    // (MEM-3); it touches no memory (not even the stack) and never returns.
    core::arch::global_asm!(
        ".globl _start",
        "_start:",
        "mov rdi, {deadline}",
        "2:",
        "mov eax, {block}",
        "syscall",
        "jmp 2b",
        block = const Hypercall::Block.number(),
        deadline = const NO_DEADLINE as i64,
    );
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
