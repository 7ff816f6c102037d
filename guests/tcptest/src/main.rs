//! smoltcp on the SDK's vNIC (`guest_sdk::vnic`, `docs/network.md`): an
//! unmodified smoltcp application but for its device line
//! (`vnic::Device(Frontend::connect(..))`).
//!
//! `role=server`: answers pings (smoltcp does), accepts one TCP connection
//! on port 80, reads until the peer closes, sends back the stream's length
//! and FNV-1a/64 checksum (16 bytes), closes.
//! `role=client server=IP [port=80] [pings=3]`: pings the server (`pings`
//! echo requests, one at a time), connects to `port`,
//! sends `bytes=N` (default 1 MiB) of a fixed pattern, closes its side,
//! reads the server's length and checksum and compares them with its own.
//! `bench=NAME` on either role also reports the transfer's ticks as `@ bench`.
//! Both print `@` facts the scenario test asserts on.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;

use guest_sdk::vnic::{self, Frontend};
use guest_sdk::{println, time, StartInfo};
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::phy::{ChecksumCapabilities, Device as _};
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, Ipv4Address};

guest_sdk::entry!(main);

const PORT: u16 = 80;
const BUF: usize = 64 * 1024;

struct Fnv(u64);
impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Byte `i` of the client's stream.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

fn main(si: &StartInfo) -> i32 {
    let Some(v) = si.vnic(0) else {
        println!("tcptest: no vNIC");
        return 1;
    };
    let front = match Frontend::connect(v) {
        Ok(f) => f,
        Err(e) => {
            println!("tcptest: vNIC setup failed: {e}");
            return 1;
        }
    };
    match si.cmdline_value("role") {
        Some("bench-tx") => return bench_tx(si, front),
        Some("bench-rx") => return bench_rx(front),
        _ => {}
    }
    // The one line an smoltcp example changes: its device.
    let mut dev = vnic::Device(front);
    let mut iface = vnic::interface(&mut dev, &v);
    let deadline = time::now_ns() + 90_000_000_000;
    match si.cmdline_value("role") {
        Some("server") => server(&mut iface, &mut dev, deadline, si.cmdline_value("bench")),
        Some("client") => {
            let ip = si
                .cmdline_value("server")
                .and_then(|s| s.parse::<Ipv4Address>().ok());
            let bytes = si
                .cmdline_value("bytes")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1 << 20);
            let port = si
                .cmdline_value("port")
                .and_then(|s| s.parse().ok())
                .unwrap_or(PORT);
            let pings = si
                .cmdline_value("pings")
                .and_then(|s| s.parse().ok())
                .unwrap_or(3);
            match ip {
                Some(ip) => client(
                    &mut iface,
                    &mut dev,
                    ClientArgs {
                        server: ip,
                        port,
                        pings,
                        bytes,
                        deadline,
                        bench: si.cmdline_value("bench"),
                    },
                ),
                None => {
                    println!("tcptest: client needs server=IP");
                    2
                }
            }
        }
        other => {
            println!("tcptest: unknown role {other:?} (role=server or role=client)");
            2
        }
    }
}

/// How long the client lingers after both FINs (see `client`).
const TIME_WAIT_NS: u64 = 3_500_000_000;

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; BUF]),
        tcp::SocketBuffer::new(vec![0; BUF]),
    )
}

fn server(
    iface: &mut Interface,
    dev: &mut vnic::Device,
    deadline: u64,
    bench: Option<&str>,
) -> i32 {
    let mut sockets = SocketSet::new(vec![]);
    let h = sockets.add(tcp_socket());
    if sockets.get_mut::<tcp::Socket>(h).listen(PORT).is_err() {
        println!("tcptest: cannot listen");
        return 1;
    }
    let mut sum = Fnv::new();
    let mut total = 0usize;
    let mut replied = false;
    let mut buf = vec![0u8; 8192];
    let mut start_tsc = None;
    let done = vnic::run(iface, dev, &mut sockets, deadline, |_, s| {
        let sock = s.get_mut::<tcp::Socket>(h);
        if start_tsc.is_none() && sock.state() != tcp::State::Listen {
            start_tsc = Some(time::rdtsc());
        }
        while sock.can_recv() {
            match sock.recv_slice(&mut buf) {
                Ok(n) if n > 0 => {
                    sum.add(&buf[..n]);
                    total += n;
                }
                _ => break,
            }
        }
        if !replied && !sock.may_recv() && sock.is_active() && sock.can_send() {
            let mut out = [0u8; 16];
            out[..8].copy_from_slice(&(total as u64).to_le_bytes());
            out[8..].copy_from_slice(&sum.0.to_le_bytes());
            replied = sock.send_slice(&out) == Ok(16);
            if replied {
                sock.close();
            }
        }
        replied && sock.state() == tcp::State::Closed
    });
    let ticks = start_tsc.map_or(0, |t| time::rdtsc().wrapping_sub(t));
    let state = sockets.get::<tcp::Socket>(h).state();
    // `bench=NAME` (scenario `bench-net-host`): SYN received to closed.
    if let Some(name) = bench.filter(|_| done) {
        println!(
            "@ bench name={name} value={ticks} min={ticks} mean={ticks} iters=1 unit=ticks bytes={total}"
        );
    }
    println!(
        "@ tcp-server bytes={} sum={:#018x} done={} state={state}",
        total,
        sum.0,
        u8::from(done)
    );
    i32::from(!done)
}

struct ClientArgs<'a> {
    server: Ipv4Address,
    port: u16,
    pings: u16,
    bytes: usize,
    deadline: u64,
    /// `bench=NAME`: report the transfer's ticks as `@ bench name=NAME`.
    bench: Option<&'a str>,
}

fn client(iface: &mut Interface, dev: &mut vnic::Device, args: ClientArgs<'_>) -> i32 {
    let ClientArgs {
        server,
        port,
        pings,
        bytes,
        deadline,
        bench: si_bench,
    } = args;
    let mut sockets = SocketSet::new(vec![]);
    let icmp_h = sockets.add(icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
    ));
    let _ = sockets
        .get_mut::<icmp::Socket>(icmp_h)
        .bind(icmp::Endpoint::Ident(0x7a4d));
    let caps = dev.capabilities().checksum;
    // Pings: one echo request at a time, 3 replies wanted.
    let mut sent = 0u16;
    let mut replies = 0u16;
    let mut sent_at = 0u64;
    let mut rtt_ns = 0u64;
    let mut retries = 0u32;
    let ping_deadline = (time::now_ns() + 30_000_000_000).min(deadline);
    vnic::run(iface, dev, &mut sockets, ping_deadline, |_, s| {
        let sock = s.get_mut::<icmp::Socket>(icmp_h);
        if sock.can_recv() {
            if let Ok((payload, _)) = sock.recv() {
                let ok = Icmpv4Packet::new_checked(payload)
                    .and_then(|p| Icmpv4Repr::parse(&p, &ChecksumCapabilities::default()));
                if let Ok(Icmpv4Repr::EchoReply { seq_no, data, .. }) = ok {
                    if seq_no == sent && data == b"tahoma-ping" {
                        replies += 1;
                        rtt_ns += time::now_ns() - sent_at;
                    }
                }
            }
        }
        // The first request may go while the server's MAC is unknown
        // (smoltcp sends an ARP request instead): ask again after 500 ms.
        let lost = replies < sent && time::now_ns() - sent_at > 500_000_000;
        if (replies == sent && sent < pings || lost) && sock.can_send() {
            if lost {
                retries += 1;
            } else {
                sent += 1;
            }
            let repr = Icmpv4Repr::EchoRequest {
                ident: 0x7a4d,
                seq_no: sent,
                data: b"tahoma-ping",
            };
            if let Ok(buf) = sock.send(repr.buffer_len(), IpAddress::Ipv4(server)) {
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
                sent_at = time::now_ns();
            }
        }
        replies >= pings
    });
    println!(
        "@ ping sent={sent} replies={replies} retries={retries} avg_rtt_us={}",
        rtt_ns / u64::from(replies.max(1)) / 1000
    );

    let h = sockets.add(tcp_socket());
    {
        let cx = iface.context();
        if sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, (IpAddress::Ipv4(server), port), 49152)
            .is_err()
        {
            println!("tcptest: connect refused locally");
            return 1;
        }
    }
    let mut sum = Fnv::new();
    let mut off = 0usize;
    let mut answer = [0u8; 16];
    let mut got = 0usize;
    let mut chunk = vec![0u8; 8192];
    let start = time::now_ns();
    let start_tsc = time::rdtsc();
    let mut closed = false;
    let done = vnic::run(iface, dev, &mut sockets, deadline, |_, s| {
        let sock = s.get_mut::<tcp::Socket>(h);
        while off < bytes && sock.can_send() {
            let n = chunk.len().min(bytes - off);
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(off + k);
            }
            match sock.send_slice(&chunk[..n]) {
                Ok(m) if m > 0 => {
                    sum.add(&chunk[..m]);
                    off += m;
                }
                _ => break,
            }
        }
        if off == bytes && !closed && sock.is_active() {
            sock.close();
            closed = true;
        }
        while got < 16 && sock.can_recv() {
            match sock.recv_slice(&mut answer[got..]) {
                Ok(n) if n > 0 => got += n,
                _ => break,
            }
        }
        // Done once the answer is in and both FINs are acknowledged.
        got == 16 && matches!(sock.state(), tcp::State::TimeWait | tcp::State::Closed)
    });
    let ms = (time::now_ns() - start) / 1_000_000;
    let ticks = time::rdtsc().wrapping_sub(start_tsc);
    // TIME-WAIT, shortened: stay long enough to acknowledge the server's
    // FIN again should the last ACK be lost (a switch queue full of a
    // hostile guest's flood drops it, NET-3). smoltcp retransmits no sooner
    // than its minimum RTO, 1 s, then doubles it: 3.5 s covers the first
    // two retransmissions. Leaving after 200 ms, as this did, left the
    // server in LAST-ACK until its deadline whenever that ACK was dropped.
    let linger = time::now_ns() + TIME_WAIT_NS;
    vnic::run(iface, dev, &mut sockets, linger, |_, _| false);
    let their_len = u64::from_le_bytes(answer[..8].try_into().unwrap_or([0; 8]));
    let their_sum = u64::from_le_bytes(answer[8..].try_into().unwrap_or([0; 8]));
    let matched = done && their_len == bytes as u64 && their_sum == sum.0;
    println!(
        "@ tcp-client bytes={off} sum={:#018x} server_bytes={their_len} server_sum={their_sum:#018x} match={} ms={ms}",
        sum.0,
        u8::from(matched)
    );
    // `bench=NAME` (scenario `bench-net-tcp`): the whole transfer, from
    // connect to both FINs acknowledged, as one `cargo xtask bench` figure.
    if let Some(name) = si_bench.filter(|_| matched) {
        println!("@ bench name={name} value={ticks} min={ticks} mean={ticks} iters=1 unit=ticks");
    }
    let st = dev.0.stats();
    println!(
        "@ vnic-stats tx={} rx={} tx_errors={} rx_errors={}",
        st.tx, st.rx, st.tx_errors, st.rx_errors
    );
    i32::from(!matched || replies < pings)
}

/// `role=bench-tx [iters=I] [warmup=W]` (scenario `bench-net`, `cargo
/// xtask bench`): raw frames through the switch to `bench-rx`
/// (02:00:00:00:00:0b), the frontend API without smoltcp, 64 and 1514
/// bytes, batches of 1 and 32. Each iteration sends `batch` frames and
/// waits until the driver has answered them all; the figure is ticks per
/// frame (instructions under `-icount`: the sender, the hypervisor, the
/// driver domain and the receiver all run on the one vCPU).
fn bench_tx(si: &StartInfo, mut f: Frontend) -> i32 {
    let num = |k: &str, d: usize| {
        si.cmdline_value(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let iters = num("iters", 500).max(1);
    let warmup = num("warmup", 20);
    let mut failed = 0u32;
    for (size, batch) in [(64usize, 1usize), (64, 32), (1514, 1), (1514, 32)] {
        let mut frame = vec![0u8; size];
        frame[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 0x0b]);
        frame[6..12].copy_from_slice(&f.info().mac);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]);
        let mut samples = alloc::vec::Vec::with_capacity(iters);
        for k in 0..warmup + iters {
            let t0 = time::rdtsc();
            let mut sent = 0;
            while sent < batch {
                match f.send(&frame) {
                    Ok(()) => sent += 1,
                    Err(vnic::SendError::Busy) => {
                        f.wait_until(time::now_ns() + 1_000_000);
                    }
                    Err(_) => {
                        failed += 1;
                        break;
                    }
                }
            }
            while f.in_flight() > 0 {
                f.wait_until(time::now_ns() + 1_000_000);
            }
            let t = (time::rdtsc() - t0) / batch as u64;
            if k >= warmup {
                samples.push(t);
            }
        }
        samples.sort_unstable();
        let n = samples.len() as u64;
        let mean = samples.iter().sum::<u64>() / n.max(1);
        println!(
            "@ bench name=vnic_frame_{size}_batch{batch} value={} min={} mean={mean} iters={n} unit=ticks",
            samples[samples.len() / 2],
            samples[0]
        );
    }
    let st = f.stats();
    println!(
        "@ vnic-stats tx={} tx_errors={} failed={failed}",
        st.tx, st.tx_errors
    );
    0
}

/// `role=bench-rx`: takes every frame it is sent, forever (non-critical).
fn bench_rx(mut f: Frontend) -> i32 {
    loop {
        while f.recv_with(|_| ()).is_some() {}
        f.wait_until(time::now_ns() + 100_000_000);
    }
}
