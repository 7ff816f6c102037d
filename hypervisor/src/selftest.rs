//! Deliberate hypervisor faults, selected with `selftest=NAME` on the
//! command line, so the scenario tests can check that a fault in ring 0 is
//! reported and fails the run instead of hanging.

/// The address `selftest=pagefault` reads (unmapped in the hypervisor's tables).
pub const FAULT_ADDRESS: u64 = 0xdead_b000;

/// Runs the named self-test; unknown names are reported and ignored.
pub fn run(name: &str) {
    log::warn!("running self-test {name:?}");
    match name {
        "pagefault" => {
            // SAFETY: deliberately unsound: the low half is unmapped in the
            // hypervisor's own tables, so this read faults, which is the test.
            let v = unsafe { core::ptr::read_volatile(FAULT_ADDRESS as *const u64) };
            log::error!("read of an unmapped address returned {v:#x}");
        }
        "ud" => {
            // SAFETY: ud2 raises #UD, the behaviour under test.
            unsafe { core::arch::asm!("ud2") };
        }
        "panic" => panic!("selftest: deliberate panic"),
        other => log::warn!("unknown self-test {other:?}; known: pagefault, ud, panic"),
    }
}
