//! The network driver domain (`docs/network.md`, scenario `net`).
//!
//! It owns the virtio-net device delegated by `[net]` (the uplink to
//! QEMU's user network) and is the backend of every guest's vNIC: the
//! hypervisor lists them in its start-info vNIC table (MEM-3c), each with
//! an event channel already connected to the frontend.
//!
//! What it does today: checks its side of the wiring (MEM-3c: the uplink
//! in its device table, one backend entry per vNIC with the frontend's MAC
//! and address), answers each frontend's first event on its vNIC port, and
//! reads the uplink's virtio-mmio identity through its mapping. The rings
//! and the switch are not built yet (docs/network.md says what remains).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use guest_sdk::abi::layout::{MAX_START_VNICS, VNIC_ROLE_BACKEND};
use guest_sdk::{event, println, time, Port, StartInfo, Vnic, VnicRole};
use harness::{clause, Ck};

guest_sdk::entry!(main);

/// virtio-mmio magic ("virt") at offset 0, device id at offset 8.
const VIRTIO_MAGIC: u32 = 0x7472_6976;
/// virtio device id of a network device.
const VIRTIO_ID_NET: u32 = 1;

/// Bit `i`: an event arrived on the port of backend entry `i`.
static SEEN: AtomicU64 = AtomicU64::new(0);
/// The backend entries' ports, for the handler (at most 8, MEM-3c).
static PORTS: [AtomicU64; MAX_START_VNICS] = [const { AtomicU64::new(0) }; MAX_START_VNICS];

fn on_vnic(port: Port) {
    for (i, p) in PORTS.iter().enumerate() {
        if p.load(Ordering::SeqCst) == u64::from(port.0) {
            SEEN.fetch_or(1 << i, Ordering::SeqCst);
        }
    }
}

/// Reads the 32-bit virtio-mmio register at `off` of the window at `va`.
fn mmio_r(va: u64, off: u64) -> u32 {
    // SAFETY: `va` is the uplink's window, mapped uncached by the
    // hypervisor at build (IO-0) and checked to be in the device table by
    // the caller; `off` is a register offset below 0x200, 4-byte aligned,
    // inside that mapped page. Reading the identity registers has no side
    // effect on the device.
    unsafe { core::ptr::read_volatile((va + off) as *const u32) }
}

fn main(si: &StartInfo) -> i32 {
    let nics: Vec<Vnic> = si.vnics().collect();
    let uplink = si.devices().find(|d| d.virtio_id == VIRTIO_ID_NET);
    println!(
        "netback: {} vNIC(s), uplink {}",
        nics.len(),
        if uplink.is_some() {
            "present"
        } else {
            "missing"
        }
    );
    for (i, v) in nics.iter().enumerate() {
        PORTS[i].store(u64::from(v.port.0), Ordering::SeqCst);
        event::set_handler(v.port, on_vnic);
        let _ = event::unmask(v.port);
    }
    let want = (1u64 << nics.len()) - 1;
    let all_seen = event::wait_for_until(
        || SEEN.load(Ordering::SeqCst) & want == want,
        time::now_ns() + 10_000_000_000,
    );
    let answered = nics.iter().all(|v| event::send(v.port).is_ok());

    clause("MEM-3c", "start-info vNIC table (switch side)", |ck| {
        check_table(ck, si, &nics);
        match uplink {
            None => ck.t(false, "no virtio-net device in the device table"),
            Some(d) => {
                ck.eq("uplink virtio id", d.virtio_id, VIRTIO_ID_NET);
                ck.eq("uplink magic", mmio_r(d.mmio_va, 0), VIRTIO_MAGIC);
                ck.eq("uplink device id", mmio_r(d.mmio_va, 8), VIRTIO_ID_NET);
                ck.t(
                    nics.iter().all(|v| v.device == d.index),
                    "every entry names the uplink's device index",
                );
            }
        }
        ck.t(
            all_seen,
            "each frontend's event arrived on its entry's port",
        );
        ck.t(answered, "an event sent back on each port");
    });
    0
}

/// The scenario's two vNICs: `a` (domain 2, 10.0.2.10, MAC derived from
/// its name) and `b` (domain 3, 10.0.2.11, 02:00:00:00:00:0b).
fn check_table(ck: &mut Ck, si: &StartInfo, nics: &[Vnic]) {
    ck.eq("vnic_count", si.raw().vnic_count, 2);
    ck.eq("entries", nics.len(), 2);
    ck.t(
        si.raw().vnics[2..]
            .iter()
            .all(|v| v.role == 0 && v.port == 0 && v.mac == [0; 6]),
        "entries past the count are zero",
    );
    let want = [
        (2u16, [10, 0, 2, 10], derived_mac("a", 0)),
        (3, [10, 0, 2, 11], [2, 0, 0, 0, 0, 0x0b]),
    ];
    for (i, (v, (peer, ip, mac))) in nics.iter().zip(want).enumerate() {
        ck.eq("role", v.role, VnicRole::Backend);
        ck.eq("raw role", si.raw().vnics[i].role, VNIC_ROLE_BACKEND);
        ck.eq("index (each frontend's first)", v.index, 0);
        ck.eq("peer", v.peer.0, peer);
        ck.eq("ipv4", v.ipv4, ip);
        ck.eq("mac", v.mac, mac);
        ck.eq("mtu", v.mtu, 1500);
        ck.eq("prefix", v.prefix_len, 24);
        ck.eq("gateway", v.gateway, [10, 0, 2, 2]);
    }
    ck.t(
        nics.len() < 2 || nics[0].port != nics[1].port,
        "one port per vNIC",
    );
}

/// xtask's MAC for a vNIC without `mac` (`devices::derived_mac`): `02:`
/// then the first five bytes of FNV-1a/64 of `name`, `/`, the index.
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
