//! What happens on a trap: the policy above the arch entry path.
//!
//! A trap taken in ring 0 is a hypervisor bug: it is reported (vector, error
//! code, RIP, CR2, a backtrace of return addresses) and the run ends with a
//! failure status. It never hangs silently.

use crate::arch::lapic;
use crate::arch::traps::{vector_name, TrapFrame};
use crate::arch::{self, cpu};

/// An exception or interrupt, by vector: the trap entry registered with
/// `arch` ([`arch::entries`]).
pub extern "C" fn handle(frame: *mut TrapFrame) {
    // SAFETY: the frame the trap stub completed (from ring 3 the current
    // domain's own frame, from ring 0 one on the ring-0 stack), live for
    // the entry; read by value, no reference kept: the handlers below take
    // their own, short-lived ones (a switch in them makes another frame
    // current, which `Hv::leave` finds itself).
    let (cs, vector, rip) = unsafe { ((*frame).cs, (*frame).vector, (*frame).rip) };
    let from_guest = cs & 3 == 3;
    // A guest's exception first, with one test: the reflected page fault's
    // path (docs/bench-history/issue-13-fast-paths.md, "The page fault, round 7"): every vector
    // below 32 from ring 3 but 2, 8 and 18, which the match below sends to
    // `hypervisor_fault`, as it does any exception from ring 0.
    if from_guest && vector < 32 && (1u64 << vector) & GUEST_NEVER == 0 {
        return crate::hv::guest_exception(frame);
    }
    match vector {
        v if v == u64::from(lapic::TIMER_VECTOR) => crate::hv::timer_interrupt(frame),
        v if v == u64::from(lapic::SPURIOUS_VECTOR) => {}
        v if arch::ioapic::pin_of(v).is_some() => {
            crate::io::interrupt(frame, arch::ioapic::pin_of(v).unwrap_or(0))
        }
        // NMI, double fault and machine check are never the guest's.
        // SAFETY: as above; the run ends in this call.
        2 | 8 | 18 => hypervisor_fault(unsafe { &*frame }),
        // A guest's `sysenter` with TF set single-steps into the sysenter
        // entry: the trap is the guest's doing; the entry destroys it
        // (CPU-4). Continue there with TF clear.
        1 if !from_guest && rip == arch::syscall::sysenter_entry_address() => {
            // SAFETY: as above; a ring-0 frame on the ring-0 stack.
            unsafe { (*frame).rflags &= !(1 << 8) };
        }
        // A guest's exceptions (but 2, 8 and 18) were taken above.
        // SAFETY: as above; the run ends in this call.
        0..=31 => hypervisor_fault(unsafe { &*frame }),
        v => log::warn!("unexpected interrupt vector {v}; ignored"),
    }
}

// The interrupt vectors the match tests first are not exceptions, so the
// early exception test takes none of them.
// (The spurious vector is 0xff.)
const _: () = assert!(lapic::TIMER_VECTOR >= 32);
const _: () = assert!(arch::ioapic::VECTOR_BASE >= 32);

/// NMI, double fault and machine check: never the guest's, from ring 3
/// too (the `2 | 8 | 18` arm of [`handle`]).
const GUEST_NEVER: u64 = (1 << 2) | (1 << 8) | (1 << 18);

fn hypervisor_fault(frame: &TrapFrame) -> ! {
    let cr2 = if frame.vector == 14 { arch::cr2() } else { 0 };
    crate::report!(
        "exception",
        "vector={} name={} error={:#x} rip={:#x} cr2={:#x} rsp={:#x} cs={:#x}",
        frame.vector,
        vector_name(frame.vector),
        frame.error_code,
        frame.rip,
        cr2,
        frame.rsp,
        frame.cs
    );
    log::error!(
        "hypervisor fault: {} (vector {}) at rip {:#x}, error code {:#x}, cr2 {:#x}; \
         resolve the backtrace with addr2line -e target/x86_64-unknown-none/release/tahoma",
        vector_name(frame.vector),
        frame.vector,
        frame.rip,
        frame.error_code,
        cr2
    );
    backtrace(frame.rip, frame.rbp);
    crate::report!("exit", "status=failure");
    arch::exit_qemu(arch::EXIT_FAILURE)
}

/// Prints `@ backtrace` with `first` and the return addresses found by
/// walking the frame-pointer chain from `rbp` (the image is built with frame
/// pointers). Only frames on the hypervisor's own stacks are followed.
pub fn backtrace(first: u64, mut rbp: u64) {
    let mut line = heapless::String::<512>::new();
    use core::fmt::Write;
    let _ = write!(line, "{first:#x}");
    for _ in 0..16 {
        if !rbp.is_multiple_of(8) || !cpu::on_kernel_stack(rbp) || !cpu::on_kernel_stack(rbp + 8) {
            break;
        }
        // SAFETY: rbp and rbp+8 lie inside one of the hypervisor's stacks
        // (checked above), which are always mapped and readable.
        let (next, ret) = unsafe { (*(rbp as *const u64), *((rbp + 8) as *const u64)) };
        if ret == 0 {
            break;
        }
        let _ = write!(line, " {ret:#x}");
        rbp = next;
    }
    crate::report!("backtrace", "{}", line);
}
