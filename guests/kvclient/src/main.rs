//! A client of the sample unikernel (`guests/kvstore`, docs/kvstore.md):
//! HTTP/1.1 on smoltcp over the SDK's vNIC, talking to the service through
//! the virtual switch in the network driver domain (no host involved).
//!
//! `mode=check` (scenario `kvclient`): every route on one keep-alive
//! connection (PUT 201, GET the value, the prefix list with and without a
//! limit, DELETE 204, then 404s), a pipelined batch of ten PUT/GET pairs in
//! one write on that same connection, a 65 KiB value (413, then the
//! service closes) and a malformed request line (400, then the service
//! closes) on connections of their own, then `/stats`. It judges nothing:
//! it reports every answer it received (`@ kvc-answer`: step, connection,
//! status, body) and its own tally of statuses before `/stats`
//! (`@ kvc-tally`), then the `/stats` body in parts (`@ kvc-stats-part`:
//! a console line holds 256 bytes), and the scenario test compares them
//! with what the service must have answered and with the service's
//! `/stats`.
//!
//! `mode=bench op=get|put[,..] conns=N[,..]`: loads `keys=K` keys of
//! `value=V` bytes, then for each op and each connection count drives that
//! many keep-alive connections, one request outstanding on each, until
//! `requests=R` requests (after `warmup=W`) are answered; reports requests
//! per second and the p50/p99 latency (request handed to the socket to
//! answer complete) on the hypervisor's clock (`time::now_ns`) as
//! `@ kv-guest-bench`, and the same latencies in `rdtsc` ticks as `@ bench`
//! lines for `cargo xtask bench` (`xtask/src/bench/kv_guest.rs`), with
//! the client's own work per request (`client_ticks=`: the window's ticks
//! minus those it spent blocked in `event::wait_until`). Under
//! `-icount shift=0,sleep=off` the clock is virtual and advances with
//! instructions: the figures repeat run after run. A wrong answer (a GET
//! not 200 with the value's length, a PUT not 201) is counted (`wrong=`)
//! and fails the guest.
//!
//! Common: `server=IP` (default 10.0.2.10), `port=N` (80), `quit=1` (end
//! the service with `POST /quit` when done: the service must be started
//! with `quit=1`), `time_s=N` (give up after N seconds, default 300).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use guest_sdk::vnic::{self, Frontend};
use guest_sdk::{println, time, StartInfo};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, Ipv4Address};

guest_sdk::entry!(main);

const RX_BUF: usize = 16 * 1024;
const TX_BUF: usize = 16 * 1024;
/// Bodies up to this long are reported whole on their `@ kvc-answer` line
/// (longer ones by length and FNV-1a/64): a console line holds 256 bytes.
const SHOWN_BODY: usize = 100;
/// Bytes of `/stats` per `@ kvc-stats-part` line.
const STATS_PART: usize = 100;
/// A connection the service neither accepts nor refuses in this long is
/// given up and dialled again (smoltcp resends the SYN meanwhile). Long,
/// so that a slow but accepted handshake on a loaded host is not counted
/// twice by the service (the check test compares connection counts).
const CONNECT_TRY_NS: u64 = 10_000_000_000;

/// FNV-1a/64 of a body, reported beside its length.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A body as the value of a quoted fact field: `"` and `\` escaped with a
/// backslash (docs/xtask.md, report lines), and `%`, control and non-ASCII
/// bytes as `%XX`, so that a body with a newline stays on one line.
fn fact_text(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() + 2);
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(char::from(b));
            }
            b'%' | 0..=0x1f | 0x7f..=0xff => s.push_str(&format!("%{b:02X}")),
            _ => s.push(char::from(b)),
        }
    }
    s
}

/// One answer of the service.
struct Answer {
    status: u16,
    /// `Connection: close` was in its head.
    close: bool,
    body: Vec<u8>,
}

/// Parses one whole answer at the start of `buf`: `Ok(None)` while it is
/// incomplete, the answer and its length once it is all there.
fn parse_answer(buf: &[u8]) -> Result<Option<(Answer, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(n)) => n,
        Err(e) => return Err(format!("the service sent a malformed answer head: {e}")),
    };
    let status = r.code.unwrap_or(0);
    let mut len = 0usize;
    let mut close = false;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = core::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| String::from("the service sent a bad Content-Length"))?;
        } else if h.name.eq_ignore_ascii_case("connection")
            && h.value.eq_ignore_ascii_case(b"close")
        {
            close = true;
        }
    }
    if buf.len() < head_len + len {
        return Ok(None);
    }
    let body = buf[head_len..head_len + len].to_vec();
    Ok(Some((
        Answer {
            status,
            close,
            body,
        },
        head_len + len,
    )))
}

/// One TCP connection to the service and what passes over it.
struct Conn {
    h: SocketHandle,
    /// Number of this connection, in the order they were opened (1, 2, ..).
    id: u32,
    /// Request bytes not yet taken by the socket.
    out: Vec<u8>,
    /// Answer bytes not yet parsed.
    input: Vec<u8>,
    answers: VecDeque<Answer>,
}

impl Conn {
    /// Moves bytes between the socket and this connection: what is to be
    /// sent in, what was received out and parsed into answers.
    fn service(&mut self, sock: &mut tcp::Socket<'_>) -> Result<(), String> {
        while !self.out.is_empty() && sock.can_send() {
            match sock.send_slice(&self.out) {
                Ok(n) if n > 0 => {
                    self.out.drain(..n);
                }
                _ => break,
            }
        }
        let mut buf = [0u8; 2048];
        while sock.can_recv() {
            match sock.recv_slice(&mut buf) {
                Ok(n) if n > 0 => self.input.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        while let Some((a, used)) = parse_answer(&self.input)? {
            self.input.drain(..used);
            self.answers.push_back(a);
        }
        Ok(())
    }
}

/// The interface, its device and sockets, and where the service is.
struct Net {
    iface: Interface,
    dev: vnic::Device,
    sockets: SocketSet<'static>,
    server: (IpAddress, u16),
    next_port: u16,
    opened: u32,
    deadline: u64,
}

impl Net {
    /// Runs the interface until `step` says done or `until` (bounded by the
    /// run's deadline) passes; returns whether `step` said done.
    fn run(
        &mut self,
        until: u64,
        step: impl FnMut(&mut Interface, &mut SocketSet<'_>) -> bool,
    ) -> bool {
        vnic::run(
            &mut self.iface,
            &mut self.dev,
            &mut self.sockets,
            until.min(self.deadline),
            step,
        )
    }

    /// A new socket connecting to the service from a fresh local port.
    fn dial(&mut self) -> Result<SocketHandle, String> {
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; RX_BUF]),
            tcp::SocketBuffer::new(vec![0; TX_BUF]),
        );
        // Requests go out as soon as they are written; the answers carry
        // the acknowledgements.
        sock.set_nagle_enabled(false);
        let port = self.next_port;
        self.next_port = if port == u16::MAX { 49152 } else { port + 1 };
        sock.connect(self.iface.context(), self.server, port)
            .map_err(|e| format!("connect from port {port}: {e}"))?;
        Ok(self.sockets.add(sock))
    }

    /// Opens `n` connections at once; a connection the service refuses
    /// (a reset: all its sockets busy, or one still closing) is dialled
    /// again.
    fn connect_all(&mut self, n: usize) -> Result<Vec<Conn>, String> {
        let mut pending: Vec<(SocketHandle, u64)> = Vec::new();
        let mut up: Vec<SocketHandle> = Vec::new();
        for _ in 0..n {
            pending.push((self.dial()?, time::now_ns()));
        }
        let mut refused = 0u32;
        while !pending.is_empty() {
            if time::now_ns() >= self.deadline {
                return Err(format!(
                    "{} of {n} connections to the service did not come up ({refused} refused)",
                    pending.len()
                ));
            }
            let until = time::now_ns() + 20_000_000;
            self.run(until, |_, s| {
                pending.iter().any(|(h, _)| {
                    let st = s.get::<tcp::Socket>(*h).state();
                    st == tcp::State::Established || st == tcp::State::Closed
                })
            });
            let now = time::now_ns();
            let mut again = 0usize;
            let mut k = 0;
            while k < pending.len() {
                let (h, since) = pending[k];
                let st = self.sockets.get::<tcp::Socket>(h).state();
                if st == tcp::State::Established {
                    up.push(h);
                    pending.swap_remove(k);
                } else if st == tcp::State::Closed || now.saturating_sub(since) > CONNECT_TRY_NS {
                    self.sockets.get_mut::<tcp::Socket>(h).abort();
                    self.sockets.remove(h);
                    pending.swap_remove(k);
                    refused += 1;
                    again += 1;
                } else {
                    k += 1;
                }
            }
            for _ in 0..again {
                pending.push((self.dial()?, time::now_ns()));
            }
        }
        Ok(up
            .into_iter()
            .map(|h| {
                self.opened += 1;
                Conn {
                    h,
                    id: self.opened,
                    out: Vec::new(),
                    input: Vec::new(),
                    answers: VecDeque::new(),
                }
            })
            .collect())
    }

    fn connect(&mut self) -> Result<Conn, String> {
        self.connect_all(1)?
            .pop()
            .ok_or_else(|| String::from("no connection"))
    }

    /// Sends `req` on `c` (all of it, as the socket takes it) and waits for
    /// `n` answers, or for the service to close the connection, or the
    /// deadline. Returns the answers received (possibly fewer than `n`).
    fn exchange(&mut self, c: &mut Conn, req: &[u8], n: usize) -> Result<Vec<Answer>, String> {
        c.out.extend_from_slice(req);
        let mut err = None;
        self.run(self.deadline, |_, s| {
            let sock = s.get_mut::<tcp::Socket>(c.h);
            if let Err(e) = c.service(sock) {
                err = Some(e);
                return true;
            }
            c.answers.len() >= n || (!sock.may_recv() && !sock.can_recv())
        });
        if let Some(e) = err {
            return Err(e);
        }
        Ok(c.answers.drain(..).collect())
    }

    /// Waits until the service has closed `c` (its FIN or a reset seen);
    /// returns whether it did within `ns`.
    fn peer_closes(&mut self, c: &mut Conn, ns: u64) -> bool {
        let until = time::now_ns() + ns;
        self.run(until, |_, s| {
            let sock = s.get_mut::<tcp::Socket>(c.h);
            let _ = c.service(sock);
            !sock.may_recv() && !sock.can_recv()
        })
    }

    /// Closes `c` and forgets its socket once both sides are done (or
    /// after a second, with a reset).
    fn close(&mut self, c: Conn) {
        self.close_all(vec![c]);
    }

    fn close_all(&mut self, conns: Vec<Conn>) {
        for c in &conns {
            let sock = self.sockets.get_mut::<tcp::Socket>(c.h);
            if c.out.is_empty() {
                sock.close();
            } else {
                // Unsent request bytes (the refused 65 KiB value): a reset.
                sock.abort();
            }
        }
        let until = time::now_ns() + 1_000_000_000;
        self.run(until, |_, s| {
            conns.iter().all(|c| {
                matches!(
                    s.get::<tcp::Socket>(c.h).state(),
                    tcp::State::TimeWait | tcp::State::Closed
                )
            })
        });
        for c in conns {
            self.sockets.get_mut::<tcp::Socket>(c.h).abort();
            self.sockets.remove(c.h);
        }
    }
}

fn main(si: &StartInfo) -> i32 {
    // Its CPU figures are its time minus its blocked time: count the latter.
    guest_sdk::event::track_blocked(true);
    let Some(v) = si.vnic(0) else {
        println!("kvclient: no vNIC (give the guest a [[guest.vnic]])");
        return 1;
    };
    let front = match Frontend::connect(v) {
        Ok(f) => f,
        Err(e) => {
            println!("kvclient: vNIC setup failed: {e}");
            return 1;
        }
    };
    let num = |k: &str, d: u64| {
        si.cmdline_value(k)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let Some(server) = si
        .cmdline_value("server")
        .unwrap_or("10.0.2.10")
        .parse::<Ipv4Address>()
        .ok()
    else {
        println!("kvclient: server= must be an IPv4 address");
        return 2;
    };
    let port = u16::try_from(num("port", 80)).unwrap_or(80);
    let mut dev = vnic::Device(front);
    let iface = vnic::interface(&mut dev, &v);
    let mut net = Net {
        iface,
        dev,
        sockets: SocketSet::new(vec![]),
        server: (IpAddress::Ipv4(server), port),
        next_port: 49152,
        opened: 0,
        deadline: time::now_ns().saturating_add(num("time_s", 300).saturating_mul(1_000_000_000)),
    };
    let result = match si.cmdline_value("mode") {
        Some("check") => check(&mut net),
        Some("bench") => bench(&mut net, si),
        other => {
            println!("kvclient: unknown mode {other:?} (mode=check or mode=bench)");
            return 2;
        }
    };
    let result = result.and_then(|()| {
        let mut c = net.connect()?;
        let stats = net.exchange(&mut c, b"GET /stats HTTP/1.1\r\n\r\n", 1)?;
        let s = stats
            .first()
            .ok_or_else(|| String::from("no answer to GET /stats"))?;
        // In parts: a console line holds 256 bytes.
        let parts = s.body.chunks(STATS_PART).count();
        println!(
            "@ kvc-stats conn={} status={} len={} parts={parts}",
            c.id,
            s.status,
            s.body.len()
        );
        for (i, part) in s.body.chunks(STATS_PART).enumerate() {
            println!("@ kvc-stats-part n={i} body=\"{}\"", fact_text(part));
        }
        if num("quit", 0) == 1 {
            let bye = net.exchange(
                &mut c,
                b"POST /quit HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                1,
            )?;
            let status = bye.first().map_or(0, |a| a.status);
            println!("@ kvc-quit status={status}");
        }
        net.close(c);
        Ok(())
    });
    let st = net.dev.0.stats();
    println!(
        "@ kvc-vnic tx={} rx={} tx_errors={} rx_errors={}",
        st.tx, st.rx, st.tx_errors, st.rx_errors
    );
    match result {
        Ok(()) => 0,
        Err(e) => {
            println!("kvclient: {e}");
            println!("@ kvc-error what=\"{}\"", fact_text(e.as_bytes()));
            1
        }
    }
}

/// Statuses the client has seen, by code.
#[derive(Default)]
struct Tally(BTreeMap<u16, u64>);

impl Tally {
    fn add(&mut self, status: u16) {
        *self.0.entry(status).or_insert(0) += 1;
    }
    fn fields(&self) -> String {
        let mut s = String::new();
        for (status, n) in &self.0 {
            s.push_str(&format!(" {status}={n}"));
        }
        s
    }
}

fn report(step: &str, conn: &Conn, a: &Answer, extra: &str) {
    let shown = if a.body.len() <= SHOWN_BODY {
        &a.body[..]
    } else {
        &a.body[..0]
    };
    println!(
        "@ kvc-answer step={step} conn={} status={} close={} len={} fnv={:#018x}{extra} body=\"{}\"",
        conn.id,
        a.status,
        u8::from(a.close),
        a.body.len(),
        fnv(&a.body),
        fact_text(shown)
    );
}

fn put(key: &str, value: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "PUT /kv/{key} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        value.len()
    )
    .into_bytes();
    r.extend_from_slice(value);
    r
}

/// The 1000-byte value of `mode=check` (the test computes its FNV too).
fn apple() -> Vec<u8> {
    (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `mode=check`: every route and the error statuses, reported answer by
/// answer.
fn check(net: &mut Net) -> Result<(), String> {
    let mut tally = Tally::default();
    let mut c = net.connect()?;
    let steps: Vec<(&str, Vec<u8>)> = vec![
        ("put-apple", put("fruit%2Fapple", &apple())),
        ("put-pear", put("fruit%2Fpear", b"good")),
        ("put-veg", put("veg", b"x")),
        (
            "get-pear",
            b"GET /kv/fruit%2Fpear HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "get-apple",
            b"GET /kv/fruit%2Fapple HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "list-fruit",
            b"GET /kv?prefix=fruit%2F HTTP/1.1\r\n\r\n".to_vec(),
        ),
        (
            "list-limit",
            b"GET /kv?prefix=fruit&limit=1 HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("delete-veg", b"DELETE /kv/veg HTTP/1.1\r\n\r\n".to_vec()),
        (
            "delete-veg-again",
            b"DELETE /kv/veg HTTP/1.1\r\n\r\n".to_vec(),
        ),
        ("get-veg", b"GET /kv/veg HTTP/1.1\r\n\r\n".to_vec()),
        ("health", b"GET /health HTTP/1.1\r\n\r\n".to_vec()),
    ];
    for (step, req) in &steps {
        let got = net.exchange(&mut c, req, 1)?;
        let a = got
            .first()
            .ok_or_else(|| format!("{step}: no answer (the connection closed or time ran out)"))?;
        tally.add(a.status);
        report(step, &c, a, "");
    }

    // Pipelining: ten PUT/GET pairs of one key in one write on the same
    // keep-alive connection; each GET must see the PUT before it.
    let mut pipe = Vec::new();
    for i in 0..10 {
        pipe.extend_from_slice(&put("p", format!("{i:02}").as_bytes()));
        pipe.extend_from_slice(b"GET /kv/p HTTP/1.1\r\n\r\n");
    }
    println!(
        "@ kvc-pipeline conn={} requests=20 bytes={}",
        c.id,
        pipe.len()
    );
    let got = net.exchange(&mut c, &pipe, 20)?;
    if got.len() != 20 {
        return Err(format!("pipelined batch: {} answers of 20", got.len()));
    }
    for (i, a) in got.iter().enumerate() {
        tally.add(a.status);
        let kind = if i % 2 == 0 { "put" } else { "get" };
        report(&format!("pipe-{kind}-{}", i / 2), &c, a, "");
    }
    net.close(c);

    // Answers that close the connection, each on a connection of its own.
    // A 65 KiB value: the client writes all of it as the socket takes it;
    // the service answers 413 from the head and closes.
    let closing: [(&str, Vec<u8>); 2] = [
        ("put-65k", put("big", &vec![b'b'; 65 * 1024])),
        ("malformed", b"\x01\x02 nonsense\r\n\r\n".to_vec()),
    ];
    for (step, req) in &closing {
        let mut k = net.connect()?;
        let got = net.exchange(&mut k, req, 1)?;
        let a = got
            .first()
            .ok_or_else(|| format!("{step}: no answer before the connection closed"))?;
        tally.add(a.status);
        let closed = net.peer_closes(&mut k, 5_000_000_000);
        report(step, &k, a, &format!(" peer_closed={}", u8::from(closed)));
        net.close(k);
    }
    println!("@ kvc-tally{} connections={}", tally.fields(), net.opened);
    Ok(())
}

/// A comma-separated list from the command line.
fn list<'a>(si: &'a StartInfo, key: &str, default: &'a str) -> impl Iterator<Item = &'a str> {
    si.cmdline_value(key)
        .unwrap_or(default)
        .split(',')
        .filter(|s| !s.is_empty())
}

/// `mode=bench`: the load, then each op at each connection count.
fn bench(net: &mut Net, si: &StartInfo) -> Result<(), String> {
    let num = |k: &str, d: usize| {
        si.cmdline_value(k)
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let p = BenchParams {
        keys: num("keys", 64).clamp(1, 10_000),
        value: num("value", 128).clamp(1, 64 * 1024),
        requests: num("requests", 2000).max(1),
        warmup: num("warmup", 100),
    };
    // The key set, loaded by pipelined PUTs, 16 to a write.
    let mut c = net.connect()?;
    let val = bench_value(p.value, 0);
    for chunk in (0..p.keys).collect::<Vec<_>>().chunks(16) {
        let mut req = Vec::new();
        for &k in chunk {
            req.extend_from_slice(&put(&key_name(k), &val));
        }
        let got = net.exchange(&mut c, &req, chunk.len())?;
        if got.len() != chunk.len() || got.iter().any(|a| a.status != 201) {
            return Err(format!(
                "loading keys: {} answers to {} PUTs, statuses {:?}",
                got.len(),
                chunk.len(),
                got.iter().map(|a| a.status).collect::<Vec<_>>()
            ));
        }
    }
    net.close(c);
    println!(
        "@ kvc-loaded keys={} value={} requests={} warmup={}",
        p.keys, p.value, p.requests, p.warmup
    );
    let mut failed = 0u64;
    for op in list(si, "op", "get") {
        let put = match op {
            "get" => false,
            "put" => true,
            other => return Err(format!("op={other}: want get or put")),
        };
        for n in list(si, "conns", "1") {
            let n: usize = n
                .parse()
                .ok()
                .filter(|&n| (1..=64).contains(&n))
                .ok_or_else(|| format!("conns={n}: want 1 to 64"))?;
            failed += bench_run(net, &p, put, n)?;
        }
    }
    if failed > 0 {
        return Err(format!("{failed} bench requests got a wrong answer"));
    }
    Ok(())
}

struct BenchParams {
    keys: usize,
    value: usize,
    requests: usize,
    warmup: usize,
}

fn key_name(k: usize) -> String {
    format!("bench-{k:05}")
}

/// The value a bench PUT writes: `len` bytes depending on `round`.
fn bench_value(len: usize, round: usize) -> Vec<u8> {
    (0..len).map(|i| b'0' + ((i + round) % 10) as u8).collect()
}

/// Nearest-rank percentile `p` (in %) of sorted `v`.
fn percentile(v: &[u64], p: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = (v.len() * p).div_ceil(100).max(1);
    v[rank - 1]
}

/// One op at one connection count; returns how many answers were wrong.
fn bench_run(net: &mut Net, p: &BenchParams, put_op: bool, n: usize) -> Result<u64, String> {
    let name = format!("kv_guest_{}_{n}", if put_op { "put" } else { "get" });
    let mut conns = net.connect_all(n)?;
    let total = p.warmup + p.requests;
    // Per connection: the index of its outstanding request and when it was
    // handed to the socket (hypervisor clock, TSC).
    let mut outstanding: Vec<Option<(usize, u64, u64)>> = vec![None; n];
    let mut issued = 0usize;
    let mut answered = 0usize;
    let mut wrong = 0u64;
    let mut lat_ns: Vec<u64> = Vec::with_capacity(p.requests);
    let mut lat_ticks: Vec<u64> = Vec::with_capacity(p.requests);
    let mut first_ns: Option<u64> = None;
    let mut last_ns = 0u64;
    // The client's own work over the measured window: its length in ticks
    // minus the ticks spent blocked (event::wait_until), when the other
    // domains and the hypervisor ran.
    let mut first_tsc = (0u64, 0u64);
    let mut last_tsc = (0u64, 0u64);
    let values: Vec<Vec<u8>> = (0..10).map(|r| bench_value(p.value, r)).collect();
    let mut err = None;
    let deadline = net.deadline;
    let done = net.run(deadline, |_, s| {
        for (i, c) in conns.iter_mut().enumerate() {
            let sock = s.get_mut::<tcp::Socket>(c.h);
            if let Err(e) = c.service(sock) {
                err = Some(e);
                return true;
            }
            while let Some(a) = c.answers.pop_front() {
                let (now, tsc) = (time::now_ns(), time::rdtsc());
                let Some((idx, t_ns, t_tsc)) = outstanding[i].take() else {
                    err = Some(format!("connection {}: an answer nobody asked for", c.id));
                    return true;
                };
                let ok = if put_op {
                    a.status == 201
                } else {
                    a.status == 200 && a.body.len() == p.value
                };
                wrong += u64::from(!ok);
                answered += 1;
                if idx >= p.warmup {
                    lat_ns.push(now - t_ns);
                    lat_ticks.push(tsc.wrapping_sub(t_tsc));
                    last_ns = now;
                    last_tsc = (tsc, guest_sdk::event::blocked_ticks());
                }
            }
            if outstanding[i].is_none() && issued < total {
                let key = key_name(issued % p.keys);
                let req = if put_op {
                    put(&key, &values[issued % values.len()])
                } else {
                    format!("GET /kv/{key} HTTP/1.1\r\n\r\n").into_bytes()
                };
                c.out.extend_from_slice(&req);
                let now = time::now_ns();
                if issued == p.warmup {
                    first_ns = Some(now);
                    first_tsc = (time::rdtsc(), guest_sdk::event::blocked_ticks());
                }
                outstanding[i] = Some((issued, now, time::rdtsc()));
                issued += 1;
                if let Err(e) = c.service(sock) {
                    err = Some(e);
                    return true;
                }
            }
            if !sock.may_send() {
                err = Some(format!("connection {}: closed by the service", c.id));
                return true;
            }
        }
        answered == total
    });
    for c in &mut conns {
        c.out.clear();
    }
    net.close_all(conns);
    if let Some(e) = err {
        return Err(format!("{name}: {e}"));
    }
    if !done {
        return Err(format!(
            "{name}: {answered} of {total} requests answered before the deadline"
        ));
    }
    let elapsed = last_ns.saturating_sub(first_ns.unwrap_or(last_ns)).max(1);
    let count = lat_ns.len() as u64;
    let rps = count.saturating_mul(1_000_000_000) / elapsed;
    lat_ns.sort_unstable();
    lat_ticks.sort_unstable();
    let mean = lat_ticks.iter().sum::<u64>() / count.max(1);
    let window = last_tsc.0.saturating_sub(first_tsc.0);
    let blocked = last_tsc.1.saturating_sub(first_tsc.1);
    let client_ticks = window.saturating_sub(blocked) / count.max(1);
    for (pct, label) in [(50, "p50"), (99, "p99")] {
        println!(
            "@ bench name={name}.{label} value={} min={} mean={mean} iters={count} unit=ticks",
            percentile(&lat_ticks, pct),
            lat_ticks.first().copied().unwrap_or(0)
        );
    }
    println!(
        "@ kv-guest-bench name={name} op={} conns={n} requests={count} wrong={wrong} elapsed_ns={elapsed} rps={rps} p50_ns={} p99_ns={} max_ns={} client_ticks={client_ticks} window_ticks={window}",
        if put_op { "put" } else { "get" },
        percentile(&lat_ns, 50),
        percentile(&lat_ns, 99),
        lat_ns.last().copied().unwrap_or(0)
    );
    Ok(wrong)
}
