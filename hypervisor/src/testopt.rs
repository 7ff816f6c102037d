//! Test-only boot options, `testopt=NAME[,NAME...]` on the hypervisor
//! command line. They exist so that the test suite can prove that a check
//! has teeth (docs/testing.md); no production scenario sets them, and each
//! announces itself with an `@ testopt` report line.
//!
//! * `poison-free`: fill free memory with a pattern at boot
//!   ([`crate::mem::poison_free_frames`]), so that "fresh frames are zeroed"
//!   (MEM-2a, MEM-5) is observable under QEMU, whose RAM starts zeroed, and
//!   a frame freed unscrubbed is caught when handed out again.
//! * `verify-build`: after building each domain's initial page tables
//!   (typed and counted as they are written), release and re-validate them
//!   in full and compare every frame's accounting (`@ verify-build`); a
//!   difference fails the run.
//! * `leak-frame`: take one frame from the allocator after the audit's
//!   baseline and never return it: the end-of-run audit must fail the run.
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicBool, Ordering};

static POISON_FREE: AtomicBool = AtomicBool::new(false);
static LEAK_FRAME: AtomicBool = AtomicBool::new(false);
static VERIFY_BUILD: AtomicBool = AtomicBool::new(false);

/// Applies the comma-separated option list; unknown names are warned about
/// and ignored.
pub fn set(list: &str) {
    for name in list.split(',').filter(|n| !n.is_empty()) {
        match name {
            "poison-free" => POISON_FREE.store(true, Ordering::Relaxed),
            "leak-frame" => LEAK_FRAME.store(true, Ordering::Relaxed),
            "verify-build" => VERIFY_BUILD.store(true, Ordering::Relaxed),
            other => {
                log::warn!(
                    "unknown testopt {other:?} ignored; known: poison-free, leak-frame, verify-build"
                )
            }
        }
    }
}

/// `testopt=poison-free` is set.
pub fn poison_free() -> bool {
    POISON_FREE.load(Ordering::Relaxed)
}

/// `testopt=leak-frame` is set.
pub fn leak_frame() -> bool {
    LEAK_FRAME.load(Ordering::Relaxed)
}

/// `testopt=verify-build` is set.
pub fn verify_build() -> bool {
    VERIFY_BUILD.load(Ordering::Relaxed)
}
