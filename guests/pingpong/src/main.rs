//! Two domains bounce an event back and forth `rounds` times over the
//! channel the manifest names `pingpong` (`[[channel]]`, ABI `EVT-7`).
//!
//! `role=ping rounds=N`: sends and waits for the answer N times.
//! `role=pong rounds=N`: answers each event. Neither knows the other's
//! domain id or a port number: the hypervisor connected the channel before
//! either ran, and each finds its end by name in its start info. Both
//! report what they counted, and whom they found at the other end.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_code)]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_sdk::event::{self, Port};
use guest_sdk::{println, StartInfo};

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
    let rounds = arg(si, "rounds", 1000);
    let ping = si.cmdline_value("role") == Some("ping");
    let Some(ch) = event::channel("pingpong") else {
        println!(
            "no channel named `pingpong`: declare it in the manifest, \
             [[channel]] name = \"pingpong\" ends = [\"ping\", \"pong\"]"
        );
        return 2;
    };
    // Events the peer sent before now were held pending; listen delivers them.
    ch.listen(on_event)
        .expect("listen on a channel wired at boot");
    println!(
        "@ pingpong-channel port={} peer={} peer_name={}",
        ch.port.number(),
        ch.peer.0,
        ch.peer_name
    );
    let start = guest_sdk::time::now_ns();
    for i in 0..rounds {
        if ping {
            // The peer's end exists already: an event it is not waiting
            // for yet stays pending until it does (EVT-0a).
            ch.send().expect("send on a channel wired at boot");
            event::wait_for(|| RECEIVED.load(Ordering::Acquire) > i);
        } else {
            event::wait_for(|| RECEIVED.load(Ordering::Acquire) > i);
            ch.send().expect("answer on a channel wired at boot");
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
