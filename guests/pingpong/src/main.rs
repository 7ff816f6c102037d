//! Two domains bounce an event back and forth `rounds` times.
//!
//! `role=ping peer=D rounds=N`: offers port 1 to domain D, then sends and
//! waits for the answer N times. `role=pong peer=D rounds=N`: binds D's port
//! 1 and answers each event. Both report what they counted.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_sdk::event::{self, DomId, Port};
use guest_sdk::{println, sched, StartInfo};

guest_sdk::entry!(main);

static RECEIVED: AtomicU64 = AtomicU64::new(0);

fn on_event(_: Port) {
    RECEIVED.fetch_add(1, Ordering::AcqRel);
}

fn arg(si: &StartInfo, key: &str, default: u64) -> u64 {
    si.cmdline_value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main(si: &StartInfo) -> i32 {
    let peer = DomId(arg(si, "peer", 0) as u16);
    let rounds = arg(si, "rounds", 1000);
    let ping = si.cmdline_value("role") == Some("ping");
    let port = event::without_upcalls(|| {
        let port = if ping {
            event::alloc_unbound(peer).expect("offer a port to the peer")
        } else {
            loop {
                match event::bind_interdomain(peer, Port(1)) {
                    Ok(p) => break p,
                    Err(_) => sched::yield_now(),
                }
            }
        };
        event::set_handler(port, on_event);
        port
    });
    let start = guest_sdk::time::now_ns();
    for i in 0..rounds {
        if ping {
            // The first send waits until the peer has bound the port.
            while event::send(port).is_err() {
                sched::yield_now();
            }
            event::wait_for(|| RECEIVED.load(Ordering::Acquire) > i);
        } else {
            event::wait_for(|| RECEIVED.load(Ordering::Acquire) > i);
            event::send(port).expect("answer on a bound port");
        }
    }
    let elapsed = guest_sdk::time::now_ns() - start;
    let received = RECEIVED.load(Ordering::Acquire);
    println!(
        "@ pingpong role={} rounds={} received={} elapsed_ns={}",
        if ping { "ping" } else { "pong" },
        rounds,
        received,
        elapsed
    );
    if received == rounds {
        0
    } else {
        1
    }
}
