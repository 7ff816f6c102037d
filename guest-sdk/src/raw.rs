//! The raw hypercall: one `syscall` instruction (`CALL-1`), and the result
//! decoding (`CALL-2`).
//!
//! The typed wrappers elsewhere in the SDK are the normal way to call the
//! hypervisor. This module is for code that must pass arbitrary (even
//! invalid) arguments or numbers, such as a conformance guest.
//!
//! Safety split: a hypercall whose only effect is on the hypervisor's state
//! or on memory the hypervisor checks (`CALL-4`) cannot break the guest's
//! memory safety, so [`call`] is safe. Two calls transfer control
//! (`set_callbacks` installs entry points, `upcall_return` resumes an
//! arbitrary context); [`call`] refuses them and they are reachable only
//! through the `unsafe` functions [`call_unchecked`] and [`syscall`].
//!
//! The instruction sits behind the [`Hypervisor`] trait (as libtock-rs's
//! `RawSyscalls`): [`Syscall`] is the real stub, a zero-sized type whose
//! method is the inlined `syscall` instruction, so a guest pays nothing for
//! the trait. Host unit tests (`cargo test -p guest-sdk`) compile the SDK
//! against a recording fake instead (`crate::fake`), which logs every call
//! made and answers with scripted results; [`Active`] names the one in use.
#![allow(unsafe_code)]

use hypercall_abi::{regs, Call, Error, Hypercall, Words};

/// What executes a hypercall: the register words in, the `rax` word out.
///
/// Implemented by [`Syscall`] (the `syscall` instruction) and, in host
/// tests, by a fake that records the calls and returns scripted words.
pub trait Hypervisor {
    /// Makes hypercall `nr` with the six argument words (`CALL-1`) and
    /// returns `rax` undecoded (`CALL-2`).
    ///
    /// # Safety
    ///
    /// As [`syscall`]: for a call that transfers control (`set_callbacks`,
    /// `upcall_return`, or a number a later ABI defines) the caller must
    /// make sure the code and context its arguments name are valid to run.
    unsafe fn syscall(&self, nr: u64, args: Words) -> u64;

    /// [`Hypervisor::syscall`] for a call that uses only its first `used`
    /// argument words (`Args::USED`): the real stub sets only those
    /// registers (`CALL-1b`: the others are ignored, so zeroing them would
    /// be work for nothing); a fake records all six as given.
    ///
    /// # Safety
    ///
    /// As [`Hypervisor::syscall`].
    #[inline(always)]
    unsafe fn syscall_used(&self, nr: u64, args: Words, used: usize) -> u64 {
        let _ = used;
        // SAFETY: the caller upholds this method's contract, which is
        // `syscall`'s own.
        unsafe { self.syscall(nr, args) }
    }
}

/// The real hypercall: the `syscall` instruction. Zero-sized; its method is
/// [`syscall`], inlined.
#[derive(Clone, Copy, Debug, Default)]
pub struct Syscall;

impl Hypervisor for Syscall {
    #[inline(always)]
    unsafe fn syscall(&self, nr: u64, args: Words) -> u64 {
        // SAFETY: the caller upholds `Hypervisor::syscall`'s contract, which
        // is `syscall`'s own.
        unsafe { syscall(nr, args) }
    }

    #[inline(always)]
    unsafe fn syscall_used(&self, nr: u64, args: Words, used: usize) -> u64 {
        // SAFETY: as `syscall` above.
        unsafe { syscall_used(nr, args, used) }
    }
}

/// The hypervisor the SDK's wrappers call: [`Syscall`] in every real build,
/// the recording fake in the SDK's own host tests.
#[cfg(not(test))]
pub type Active = Syscall;
/// The hypervisor the SDK's wrappers call: [`Syscall`] in every real build,
/// the recording fake in the SDK's own host tests.
#[cfg(test)]
pub type Active = crate::fake::Installed;

/// Executes `syscall` with `rax` = `nr` and the six argument registers
/// (`rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9`), and returns `rax` undecoded.
///
/// # Safety
///
/// `nr` may name a call that transfers control (`set_callbacks`,
/// `upcall_return`, or a number defined by a later ABI). The caller must make
/// sure the arguments of such a call name code and a context that are valid
/// to run; for every other call any argument values are sound.
#[cfg(target_os = "none")]
#[inline(always)]
pub unsafe fn syscall(nr: u64, args: [u64; 6]) -> u64 {
    let rax: u64;
    // The register convention is CALL-1: rax = number, arguments in rdi,
    // rsi, rdx, r10, r8, r9 (preserved), rcx and r11 clobbered, the stack and
    // everything else preserved (`nostack`: the red zone survives). The call
    // may read or write memory its arguments name (not `nomem`), and flags
    // are not declared preserved.
    // SAFETY: the convention above is declared exactly; control-transfer
    // calls are the caller's obligation (see `# Safety`).
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr => rax,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    rax
}

/// [`syscall`] setting only the first `used` argument registers (`rdi`,
/// then `rsi`, `rdx`, `r10`, `r8`, `r9`); the others keep whatever they
/// held, which the hypervisor ignores (`CALL-1b`). `used` is a constant
/// at every call site (`Args::USED`), so one `asm!` block remains.
///
/// # Safety
///
/// As [`syscall`].
#[cfg(target_os = "none")]
#[inline(always)]
pub unsafe fn syscall_used(nr: u64, args: [u64; 6], used: usize) -> u64 {
    /// One `syscall` with the named argument registers as inputs, under
    /// [`syscall`]'s register convention (the rest preserved).
    macro_rules! with {
        ($($reg:tt = $i:tt),*) => {{
            let rax: u64;
            // SAFETY: as in `syscall`: CALL-1's convention declared
            // exactly; the registers not named are preserved by the
            // hypervisor and ignored by it as arguments (CALL-1b).
            unsafe {
                core::arch::asm!(
                    "syscall",
                    inlateout("rax") nr => rax,
                    $(in($reg) args[$i],)*
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            rax
        }};
    }
    match used {
        0 => with!(),
        1 => with!("rdi" = 0),
        2 => with!("rdi" = 0, "rsi" = 1),
        3 => with!("rdi" = 0, "rsi" = 1, "rdx" = 2),
        4 => with!("rdi" = 0, "rsi" = 1, "rdx" = 2, "r10" = 3),
        5 => with!("rdi" = 0, "rsi" = 1, "rdx" = 2, "r10" = 3, "r8" = 4),
        // SAFETY: the caller's contract, passed on.
        _ => unsafe { syscall(nr, args) },
    }
}

/// Host build (unit tests): there is no hypervisor to call.
///
/// # Safety
///
/// Always sound; it panics.
#[cfg(not(target_os = "none"))]
pub unsafe fn syscall_used(nr: u64, args: [u64; 6], _used: usize) -> u64 {
    // SAFETY: always sound on the host (it panics).
    unsafe { syscall(nr, args) }
}

/// Host build (unit tests): there is no hypervisor to call.
///
/// # Safety
///
/// Always sound; it panics.
#[cfg(not(target_os = "none"))]
pub unsafe fn syscall(nr: u64, _args: [u64; 6]) -> u64 {
    panic!("hypercall {nr:#x}: hypercalls exist only on the x86_64-unknown-none target")
}

/// Makes hypercall `nr` and decodes the result (`CALL-2`).
///
/// # Safety
///
/// As [`syscall`]: for `SetCallbacks` and `UpcallReturn` the caller must
/// make sure the entries, stack or frame are valid to run.
#[inline(always)]
pub unsafe fn call_unchecked(nr: Hypercall, args: [u64; 6]) -> Result<u64, Error> {
    // SAFETY: the control-transfer obligation of `Hypervisor::syscall` is
    // this function's own `# Safety` contract, so the caller holds it.
    regs::decode(unsafe { Active::default().syscall(nr.number(), args) })
}

/// [`call_unchecked`] for a call that uses only its first `used` words:
/// the other argument registers are not set (`CALL-1b`).
///
/// # Safety
///
/// As [`call_unchecked`].
#[inline(always)]
pub unsafe fn call_used_unchecked(
    nr: Hypercall,
    args: [u64; 6],
    used: usize,
) -> Result<u64, Error> {
    // SAFETY: as `call_unchecked`: the caller holds the contract.
    regs::decode(unsafe { Active::default().syscall_used(nr.number(), args, used) })
}

/// Whether `nr` transfers control to guest code named by its arguments.
pub const fn transfers_control(nr: Hypercall) -> bool {
    matches!(nr, Hypercall::SetCallbacks | Hypercall::UpcallReturn)
}

/// Makes hypercall `nr` with any arguments and decodes the result.
///
/// # Panics
///
/// For `SetCallbacks` and `UpcallReturn`, which can resume arbitrary code;
/// use [`call_unchecked`] or the wrappers in [`crate::upcall`].
#[inline]
pub fn call(nr: Hypercall, args: [u64; 6]) -> Result<u64, Error> {
    assert!(
        !transfers_control(nr),
        "{} transfers control: use raw::call_unchecked",
        nr.spec_name()
    );
    // SAFETY: `nr` is not a control-transfer call (checked above); every
    // other call only acts on hypervisor state and on guest memory that the
    // hypervisor checks and accesses like a DMA device (CALL-4).
    unsafe { call_unchecked(nr, args) }
}

/// Makes the call `A` names with `args`, encoded by the ABI's `encode`
/// (argument positions are written once, in `hypercall-abi`), and decodes
/// the result.
///
/// # Panics
///
/// For the control-transfer calls, as [`call`].
#[inline]
pub fn invoke<A: Call>(args: &A) -> Result<u64, Error> {
    assert!(
        !transfers_control(A::CALL),
        "{} transfers control: use raw::call_unchecked",
        A::CALL.spec_name()
    );
    // SAFETY: not a control-transfer call (checked above; a constant test
    // for each `A`), so as in `call`. Only the `A::USED` registers are set:
    // the hypervisor ignores the others (CALL-1b).
    unsafe { invoke_unchecked(args) }
}

/// [`invoke`] for a call whose result the caller does not look at (one
/// that never fails, as `yield` and `block`: SCHED-1, SCHED-2d): `rax` is
/// dropped undecoded, so the call costs its arguments and the `syscall`
/// only (decoding it is a test and a branch to the error decoder, which
/// the compiler keeps even for a discarded result).
///
/// # Panics
///
/// For the control-transfer calls, as [`call`].
#[inline(always)]
pub fn invoke_ignored<A: Call>(args: &A) {
    assert!(
        !transfers_control(A::CALL),
        "{} transfers control: use raw::call_unchecked",
        A::CALL.spec_name()
    );
    // SAFETY: not a control-transfer call (checked above), so any
    // arguments are sound (CALL-4); only the `A::USED` registers are set.
    let _ = unsafe { Active::default().syscall_used(A::CALL.number(), args.encode(), A::USED) };
}

/// [`invoke`] for any call, the control transfers too: the call `A` names
/// with `args`, only its `A::USED` argument registers set (`CALL-1b`).
///
/// # Safety
///
/// As [`call_unchecked`]: for `SetCallbacks` and `UpcallReturn` the caller
/// must make sure the entries, stack or frame are valid to run.
#[inline(always)]
pub unsafe fn invoke_unchecked<A: Call>(args: &A) -> Result<u64, Error> {
    // SAFETY: the caller holds `call_unchecked`'s contract.
    unsafe { call_used_unchecked(A::CALL, args.encode(), A::USED) }
}

/// [`call`] with no arguments.
#[inline]
pub fn call0(nr: Hypercall) -> Result<u64, Error> {
    call(nr, [0; 6])
}

/// [`call`] with one argument (the others 0, `CALL-1b`).
#[inline]
pub fn call1(nr: Hypercall, a0: u64) -> Result<u64, Error> {
    call(nr, [a0, 0, 0, 0, 0, 0])
}

/// [`call`] with two arguments (the others 0, `CALL-1b`).
#[inline]
pub fn call2(nr: Hypercall, a0: u64, a1: u64) -> Result<u64, Error> {
    call(nr, [a0, a1, 0, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_control_transfers_are_refused() {
        for &h in Hypercall::ALL {
            let refused = matches!(h, Hypercall::SetCallbacks | Hypercall::UpcallReturn);
            assert_eq!(transfers_control(h), refused, "{h:?}");
        }
    }

    #[test]
    #[should_panic(expected = "transfers control")]
    fn safe_call_refuses_upcall_return() {
        let _ = call1(Hypercall::UpcallReturn, 0);
    }
}
