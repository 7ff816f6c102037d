//! The sample unikernel (docs/kvstore.md): `guests/kvlib`'s HTTP key-value
//! service on smoltcp over the SDK's vNIC.
//!
//! [`CONNECTIONS`] TCP sockets listen on port 80 (a further connection is
//! refused by smoltcp with a reset: the bound). Each turn reads what every
//! connection received, parses and answers it in order, makes every staged
//! write durable with one commit (group commit), then answers the writes
//! that waited and sends.
//!
//! Command line: `disk_kib=N` (the store's disk, default 4096),
//! `request_ms=N` and `idle_ms=N` (the time limits), `quit=1` (serve
//! `POST /quit`, which ends the guest: the scenario tests use it),
//! `serve_s=N` (give up after N seconds, default 600).
//!
//! The store is on the guest's first virtual disk (`[[guest.vblk]]`, through
//! [`disk::VblkDisk`]), so acknowledged writes survive a restart; only a
//! guest given no disk falls back to a RAM disk (`kvlib::store::MemDisk`,
//! `disk_kib`), and the boot line says which (`store=vblk|ram`).
#![no_std]
#![no_main]

extern crate alloc;

mod disk;

use alloc::vec;
use alloc::vec::Vec;

use guest_sdk::vblk::Vblk;
use guest_sdk::vnic::{self, Frontend};
use guest_sdk::{println, time, Error, StartInfo};
use kvlib::cache::{CachedDevice, DEFAULT_CACHE_KIB};
use kvlib::http::{Conn, Server};
use kvlib::store::{BlockDevice, MemDisk, Op, Store, SECTOR};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

guest_sdk::entry!(main);

const PORT: u16 = 80;
/// Sockets listening on the port: 16 clients at once (what the service
/// promises) plus 4 for connections still closing (a socket waits in
/// LAST-ACK for the peer's final ACK), so 16 clients reconnecting at once
/// never find every socket taken and evict one of themselves.
const CONNECTIONS: usize = 20;
/// A connection idle this long may lose its socket to a new one.
const EVICT_IDLE_MS: u64 = 1000;
const RX_BUF: usize = 16 * 1024;
const TX_BUF: usize = 32 * 1024;

fn now_ms() -> u64 {
    time::now_ns() / 1_000_000
}

/// The value of round `seq` of the durability mode: 3000 bytes (it
/// straddles pages, so the vblk adapter's partial-page writes are used).
fn pattern(seq: u64) -> Vec<u8> {
    (0..3000u64)
        .map(|i| (seq.wrapping_mul(31).wrapping_add(i) % 251) as u8)
        .collect()
}

/// `durable=N` (a guest with a disk and no vNIC; tests/src/kv.rs): the
/// store's recovery under power cuts without the network. Reports what the
/// store holds (`@ kv-found seq=F ok=1` when the value of round F is
/// intact), then N rounds each committing `seq` and its value and printing
/// `@ kv-acked seq=` only after the commit's flush: the test kills QEMU on
/// that line, and the next boot must find exactly that round.
fn durable(store: &mut Store<disk::Disk>, rounds: u64) -> i32 {
    let found: u64 = match store.get(b"seq") {
        Ok(Some(v)) => core::str::from_utf8(&v)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(u64::MAX),
        Ok(None) => 0,
        Err(e) => {
            println!("kvstore: reading seq failed: {e:?}");
            return 1;
        }
    };
    let ok = found == 0
        || store
            .get(alloc::format!("v{}", found % 8).as_bytes())
            .is_ok_and(|v| v == Some(pattern(found)));
    let st = store.stats();
    println!(
        "@ kv-found seq={found} ok={} keys={} recovered={} dropped_tail={} log_bytes={}",
        u8::from(ok),
        st.keys,
        st.recovered_records,
        u8::from(st.dropped_tail),
        st.log_bytes
    );
    for seq in found.saturating_add(1)..found.saturating_add(1).saturating_add(rounds) {
        let staged = store
            .stage(Op::Put(
                alloc::format!("v{}", seq % 8).into_bytes(),
                pattern(seq),
            ))
            .and_then(|()| {
                store.stage(Op::Put(
                    b"seq".to_vec(),
                    alloc::format!("{seq}").into_bytes(),
                ))
            })
            .and_then(|()| store.commit());
        if let Err(e) = staged {
            println!("kvstore: commit of round {seq} failed: {e:?}");
            return 1;
        }
        println!("@ kv-acked seq={seq}");
    }
    let st = store.stats();
    println!(
        "@ kv-durable rounds={rounds} compactions={}",
        st.compactions
    );
    0
}

fn main(si: &StartInfo) -> i32 {
    let num = |k: &str, d: u64| {
        si.cmdline_value(k)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let dev = match Vblk::open(0) {
        Ok(v) => match disk::VblkDisk::new(v) {
            Some(d) => {
                // The read cache: `cache_kib=N` (0 turns it off), at most
                // 4 MiB of the guest's memory.
                let cache_kib = num("cache_kib", DEFAULT_CACHE_KIB).min(4096);
                println!(
                    "kvstore: store on virtual disk 0 ({} KiB): it survives a restart; read cache {cache_kib} KiB",
                    d.sectors() * SECTOR as u64 / 1024
                );
                disk::Disk::Vblk(alloc::boxed::Box::new(CachedDevice::new(d, cache_kib)))
            }
            None => {
                println!(
                    "kvstore: virtual disk 0 is read-only: give the store a writable [[guest.vblk]]"
                );
                return 1;
            }
        },
        Err(Error::NotFound) => {
            let kib = num("disk_kib", 4096).clamp(64, 1 << 20);
            println!(
                "kvstore: no [[guest.vblk]] in the manifest: store on a {kib} KiB RAM disk, lost when the guest ends"
            );
            disk::Disk::Ram(MemDisk::new(kib * 1024 / SECTOR as u64))
        }
        Err(e) => {
            println!("kvstore: cannot open virtual disk 0: {e}");
            return 1;
        }
    };
    let store_kind = dev.kind();
    let disk_kib = dev.sectors() * SECTOR as u64 / 1024;
    let mut store = match Store::open(dev) {
        Ok(s) => s,
        Err(e) => {
            println!("kvstore: cannot open the store: {e:?}");
            return 1;
        }
    };
    if let Some(rounds) = si.cmdline_value("durable").and_then(|s| s.parse().ok()) {
        return durable(&mut store, rounds);
    }
    let Some(v) = si.vnic(0) else {
        println!("kvstore: no vNIC (give the guest a [[guest.vnic]])");
        return 1;
    };
    let front = match Frontend::connect(v) {
        Ok(f) => f,
        Err(e) => {
            println!("kvstore: vNIC setup failed: {e}");
            return 1;
        }
    };
    let mut server = Server::new(store, now_ms());
    server.timeouts.request_ms = num("request_ms", server.timeouts.request_ms);
    server.timeouts.idle_ms = num("idle_ms", server.timeouts.idle_ms);
    server.quit_route = num("quit", 0) == 1;

    let mut dev = vnic::Device(front);
    let mut iface = vnic::interface(&mut dev, &v);

    let mut sockets = SocketSet::new(vec![]);
    let handles: Vec<SocketHandle> = (0..CONNECTIONS)
        .map(|_| {
            sockets.add(tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RX_BUF]),
                tcp::SocketBuffer::new(vec![0; TX_BUF]),
            ))
        })
        .collect();
    let mut conns: Vec<Option<Conn>> = (0..CONNECTIONS).map(|_| None).collect();
    let mut buf = vec![0u8; 8192];
    let mut accepted = 0u64;
    let mut evicted = 0u64;
    println!(
        "@ kv-listen port={PORT} connections={CONNECTIONS} disk_kib={disk_kib} store={store_kind}"
    );

    let give_up = time::now_ns() + num("serve_s", 600) * 1_000_000_000;
    let mut quit_at: Option<u64> = None;
    loop {
        let t = time::now_ns();
        if t >= give_up || quit_at.is_some_and(|q| t >= q) {
            break;
        }
        // Wake at least every 200 ms for the time limits.
        let turn_end = (t + 200_000_000).min(give_up);
        vnic::run(&mut iface, &mut dev, &mut sockets, turn_end, |_, s| {
            let now = now_ms();
            for (h, slot) in handles.iter().zip(conns.iter_mut()) {
                let sock = s.get_mut::<tcp::Socket>(*h);
                if !sock.is_open() {
                    *slot = None;
                    let _ = sock.listen(PORT);
                    continue;
                }
                if slot.is_none() && sock.is_active() {
                    *slot = Some(Conn::new(now));
                    accepted += 1;
                }
                let Some(c) = slot.as_mut() else { continue };
                while c.wants_input() && sock.can_recv() {
                    match sock.recv_slice(&mut buf) {
                        Ok(n) if n > 0 => c.feed(&buf[..n], now),
                        _ => break,
                    }
                }
                server.drive(c, now);
            }
            // Group commit: every connection's staged writes, one flush.
            server.commit();
            for (h, slot) in handles.iter().zip(conns.iter_mut()) {
                let Some(c) = slot.as_mut() else { continue };
                let sock = s.get_mut::<tcp::Socket>(*h);
                server.drive(c, now);
                let expired = server.expire(c, now);
                while !c.out.is_empty() && sock.can_send() {
                    match sock.send_slice(&c.out) {
                        Ok(n) if n > 0 => {
                            c.out.drain(..n);
                        }
                        _ => break,
                    }
                }
                // The peer closed its side and everything it sent is answered.
                let peer_done =
                    sock.state() == tcp::State::CloseWait && !sock.can_recv() && !c.waiting();
                if c.out.is_empty() && (expired || c.closing() || peer_done) {
                    sock.close();
                }
            }
            // Never out of listening sockets for long: when every socket
            // holds a connection, the longest idle one (idle for at least
            // EVICT_IDLE_MS) is closed, so that silent connections cannot
            // keep others out for the whole idle limit.
            let listening = handles
                .iter()
                .any(|h| s.get::<tcp::Socket>(*h).state() == tcp::State::Listen);
            if !listening {
                let oldest = conns
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| Some((c.as_ref()?.idle_since()?, i)))
                    .filter(|&(since, _)| now.saturating_sub(since) >= EVICT_IDLE_MS)
                    .min();
                if let Some((_, i)) = oldest {
                    s.get_mut::<tcp::Socket>(handles[i]).abort();
                    conns[i] = None;
                    evicted += 1;
                }
            }
            if server.quit_requested && quit_at.is_none() {
                // Let the answer to /quit go out.
                quit_at = Some(time::now_ns() + 300_000_000);
            }
            false
        });
    }
    let st = server.store.stats();
    if let disk::Disk::Vblk(d) = server.store.device() {
        let (events, probes) = d.inner().stats();
        println!("@ kv-disk events={events} timeouts={probes}");
        let c = d.stats();
        println!(
            "kvstore: read cache {} of {} pages held, {} hits, {} misses, {} device reads, {} evictions, {} dropped by failed writes",
            d.cached_pages(),
            d.capacity_pages(),
            c.hits,
            c.misses,
            c.device_reads,
            c.evictions,
            c.invalidations
        );
    }
    println!(
        "@ kv-done accepted={accepted} evicted={evicted} keys={} records={} batches={} flushes={} 200={} 201={} 204={} 400={} 404={} 408={} 413={} 431={}",
        st.keys,
        st.records,
        st.batches,
        st.flushes,
        server.counters.get(200),
        server.counters.get(201),
        server.counters.get(204),
        server.counters.get(400),
        server.counters.get(404),
        server.counters.get(408),
        server.counters.get(413),
        server.counters.get(431)
    );
    i32::from(!server.quit_requested)
}
