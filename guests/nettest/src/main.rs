//! A vNIC frontend for the `net` scenario (`docs/network.md`).
//!
//! Checks its start-info vNIC entry (MEM-3c) against what the manifest
//! says (`ip=` and, when the manifest gave one, `mac=` on its command
//! line; otherwise the MAC xtask derives from the guest's name), then
//! signals the network driver domain on the vNIC's port and waits for its
//! answer: the channel is connected at boot.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use core::sync::atomic::{AtomicU32, Ordering};

use guest_sdk::abi::layout::VNIC_ROLE_FRONTEND;
use guest_sdk::{event, println, time, Port, StartInfo, VnicRole};
use harness::clause;

guest_sdk::entry!(main);

static EVENTS: AtomicU32 = AtomicU32::new(0);

fn on_vnic(_: Port) {
    EVENTS.fetch_add(1, Ordering::SeqCst);
}

fn main(si: &StartInfo) -> i32 {
    let Some(v) = si.vnic(0) else {
        println!("nettest: no vNIC in the start info");
        clause("MEM-3c", "start-info vNIC table (frontend side)", |ck| {
            ck.t(false, "no frontend vNIC entry")
        });
        return 1;
    };
    event::set_handler(v.port, on_vnic);
    let _ = event::unmask(v.port);
    let sent = event::send(v.port);
    let answered = event::wait_for_until(
        || EVENTS.load(Ordering::SeqCst) >= 1,
        time::now_ns() + 10_000_000_000,
    );
    let name = si.name();
    clause("MEM-3c", "start-info vNIC table (frontend side)", |ck| {
        ck.eq("vnic_count", si.raw().vnic_count, 1);
        ck.eq("role", v.role, VnicRole::Frontend);
        ck.eq("raw role", si.raw().vnics[0].role, VNIC_ROLE_FRONTEND);
        ck.eq("index", v.index, 0);
        ck.eq("peer (the driver domain, id 1)", v.peer.0, 1);
        let ip = si.cmdline_value("ip").and_then(parse_ipv4);
        ck.eq("ipv4 as in the manifest", Some(v.ipv4), ip);
        let mac = match si.cmdline_value("mac") {
            Some(m) => parse_mac(m),
            None => Some(derived_mac(name, 0)),
        };
        ck.eq("mac as in the manifest (or derived)", Some(v.mac), mac);
        ck.eq("mtu", v.mtu, 1500);
        ck.eq("prefix", v.prefix_len, 24);
        ck.eq("gateway", v.gateway, [10, 0, 2, 2]);
        ck.eq("device", v.device, 0);
        ck.t(
            si.raw().vnics[1..]
                .iter()
                .all(|e| e.role == 0 && e.port == 0),
            "entries past the count are zero",
        );
        ck.eq("event to the driver", sent, Ok(()));
        ck.t(answered, "the driver's answer arrived on the port");
    });
    0
}

fn parse_ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in out.iter_mut() {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// xtask's MAC for a vNIC without `mac` (`devices::derived_mac`).
fn derived_mac(name: &str, index: u8) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let digit = [b'0' + index];
    for &b in name.as_bytes().iter().chain(b"/").chain(digit.iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x02, b[0], b[1], b[2], b[3], b[4]]
}
