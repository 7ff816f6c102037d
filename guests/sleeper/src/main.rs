//! Sleeps on `block` with a deadline, then on the one-shot timer, and
//! reports how long each took against what it asked for (TIME-0, TIME-1).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_code)]

use core::time::Duration;
use guest_sdk::time::{self, Timer};
use guest_sdk::{println, StartInfo};

guest_sdk::entry!(main);

fn main(si: &StartInfo) -> i32 {
    let ms: u64 = si
        .cmdline_value("ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let t0 = time::now_ns();
    time::sleep(Duration::from_millis(ms));
    let slept = time::now_ns() - t0;
    println!(
        "@ sleep requested_ns={} elapsed_ns={}",
        ms * 1_000_000,
        slept
    );

    let timer = Timer::new().expect("bind the timer virq");
    let t1 = time::now_ns();
    timer.set_after(Duration::from_millis(ms));
    timer.wait();
    let waited = time::now_ns() - t1;
    println!(
        "@ timer requested_ns={} elapsed_ns={}",
        ms * 1_000_000,
        waited
    );
    let mut last = time::now_ns();
    for _ in 0..10_000 {
        let now = time::now_ns();
        if now < last {
            println!("@ clock backwards from={last} to={now}");
            return 1;
        }
        last = now;
    }
    0
}
