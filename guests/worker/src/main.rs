//! A well-behaved domain: `iterations=N` rounds of a little work, a short
//! sleep and a yield, then a report. Scenarios run it beside misbehaving
//! domains, which must not stop it from finishing.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_code)]

use guest_sdk::{println, sched, time, StartInfo};

guest_sdk::entry!(main);

fn main(si: &StartInfo) -> i32 {
    let iterations: u64 = si
        .cmdline_value("iterations")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let start = time::now_ns();
    let mut acc = 0u64;
    for i in 0..iterations {
        for j in 0..10_000u64 {
            acc = acc.wrapping_mul(6364136223846793005).wrapping_add(i ^ j);
        }
        time::sleep_ns(1_000_000);
        sched::yield_now();
    }
    println!(
        "@ worker done iterations={} elapsed_ns={} acc={:#x}",
        iterations,
        time::now_ns() - start,
        acc
    );
    0
}
