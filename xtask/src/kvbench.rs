//! The host-side key-value bench (issue 11 item 5; docs/kvstore.md,
//! "Bench"): a load generator that drives an HTTP key-value service through
//! QEMU's forward, and the `kv_host_*` rows, for Tahoma (scenario
//! `bench-kv-host`: netback and `guests/kvstore`) and for the Linux baseline
//! (`xtask/src/linux.rs`: Debian's kernel and the same `kvlib` code as a
//! static `/init`), booted in the same QEMU with the same settings.
//!
//! The load: `conns` keep-alive connections (one std thread each), each
//! sending one request at a time (closed loop: the next request leaves when
//! the answer is in) — `GET /kv/k{i}` or `PUT /kv/k{i}` with a fixed-size
//! value over a key set loaded beforehand — until `requests` requests have
//! been answered in all. Every answer is checked (status 200 with the
//! value's length, or 201); one wrong answer fails the bench. Reported:
//! requests per second (answered / wall time from the first request sent to
//! the last answer read) and the p50 and p99 latency of one request
//! (written to answer read), nearest rank.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// What a load run sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Put,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
        }
    }
}

/// One load run.
#[derive(Clone, Debug)]
pub struct Load {
    pub op: Op,
    pub conns: usize,
    /// Requests in all (split evenly over the connections).
    pub requests: usize,
    /// The key set: `k0` .. `k{keys-1}`, loaded before the run.
    pub keys: usize,
    /// Bytes of every value.
    pub value_size: usize,
}

/// What a load run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    pub requests: usize,
    pub elapsed: Duration,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

/// The value stored under key `i`: `size` bytes, different per key.
pub fn value(i: usize, size: usize) -> Vec<u8> {
    (0..size).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect()
}

/// The nearest-rank percentile `p` (0 < p ≤ 100) of sorted `v`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The figures of `latencies` answered in `elapsed`.
pub fn figures(mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    latencies.sort();
    let secs = elapsed.as_secs_f64();
    Figures {
        requests: latencies.len(),
        elapsed,
        rps: if secs > 0.0 {
            latencies.len() as f64 / secs
        } else {
            0.0
        },
        p50_us: percentile(&latencies, 50.0).as_secs_f64() * 1e6,
        p99_us: percentile(&latencies, 99.0).as_secs_f64() * 1e6,
        mean_us: if latencies.is_empty() {
            0.0
        } else {
            latencies.iter().sum::<Duration>().as_secs_f64() * 1e6 / latencies.len() as f64
        },
    }
}

/// One HTTP answer: the status and the body.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// How much of `buf` one complete answer takes, and the answer; `None`
/// while incomplete. Only what the service sends is understood: a status
/// line, headers, and a body of `Content-Length` bytes (none for 204).
pub fn parse_answer(buf: &[u8]) -> Result<Option<(usize, Answer)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Err("an answer head over 16 KiB".into());
        }
        return Ok(None);
    };
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| "an answer head not in UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("a bad status line `{status_line}`"))?;
    let mut length = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("a bad Content-Length `{v}`"))?;
            }
        }
    }
    let total = end + 4 + length;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        total,
        Answer {
            status,
            body: buf[end + 4..total].to_vec(),
        },
    )))
}

/// A keep-alive client connection.
pub struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> Result<Client, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Client {
            sock,
            buf: Vec::new(),
        })
    }

    /// Sends one request and reads its answer.
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<Answer, String> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: kv\r\n").into_bytes();
        if method == "PUT" || method == "POST" {
            req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.sock
            .write_all(&req)
            .map_err(|e| format!("{method} {path}: write: {e}"))?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some((n, a)) = parse_answer(&self.buf)? {
                self.buf.drain(..n);
                return Ok(a);
            }
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "{method} {path}: the service closed the connection"
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("{method} {path}: read: {e}")),
            }
        }
    }
}

/// Waits until the service answers `GET /health` with 200 (QEMU's forward
/// accepts connections before the guest listens, so a connect alone says
/// nothing), up to `limit`.
pub fn wait_ready(port: u16, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut last = String::from("never tried");
    while started.elapsed() < limit {
        match Client::connect(port).and_then(|mut c| c.request("GET", "/health", b"")) {
            Ok(a) if a.status == 200 => return Ok(()),
            Ok(a) => last = format!("GET /health answered {}", a.status),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!(
        "the service on 127.0.0.1:{port} did not answer GET /health in {} s (last: {last})",
        limit.as_secs()
    ))
}

/// PUTs every key of the set over `clients`, checking each 201.
pub fn preload(
    clients: Vec<Client>,
    keys: usize,
    value_size: usize,
) -> Result<Vec<Client>, String> {
    let conns = clients.len().max(1);
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(t, mut c)| {
            std::thread::spawn(move || -> Result<Client, String> {
                for i in (t..keys).step_by(conns) {
                    let a = c.request("PUT", &format!("/kv/k{i}"), &value(i, value_size))?;
                    if a.status != 201 {
                        return Err(format!("preload PUT /kv/k{i} answered {}", a.status));
                    }
                }
                Ok(c)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in threads {
        out.push(t.join().map_err(|_| "a preload thread panicked")??);
    }
    Ok(out)
}

/// Opens `n` keep-alive connections, each checked with `GET /health` (a
/// connection the service refused, all its sockets being busy, is retried
/// for up to 10 s).
pub fn connect_all(port: u16, n: usize) -> Result<Vec<Client>, String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let c = loop {
            let r = Client::connect(port).and_then(|mut c| {
                let a = c.request("GET", "/health", b"")?;
                if a.status != 200 {
                    return Err(format!("GET /health answered {}", a.status));
                }
                Ok(c)
            });
            match r {
                Ok(c) => break c,
                Err(e) if started.elapsed() > Duration::from_secs(10) => {
                    return Err(format!("connection {} of {n}: {e}", out.len() + 1))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        out.push(c);
    }
    Ok(out)
}

/// Runs `load` on the first `load.conns` of `pool` and measures it; the
/// connections go back into the pool.
pub fn run(load: &Load, pool: &mut Vec<Client>) -> Result<Figures, String> {
    let conns = load.conns.max(1);
    if pool.len() < conns {
        return Err(format!("{conns} connections wanted, {} open", pool.len()));
    }
    let per = load.requests.div_ceil(conns);
    let clients: Vec<Client> = pool.drain(..conns).collect();
    let barrier = Arc::new(Barrier::new(conns + 1));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(t, mut c)| {
            let barrier = barrier.clone();
            let load = load.clone();
            std::thread::spawn(
                move || -> Result<(Vec<Duration>, Instant, Client), String> {
                    let values: Vec<Vec<u8>> = (0..load.keys.max(1))
                        .map(|i| value(i, load.value_size))
                        .collect();
                    let mut lat = Vec::with_capacity(per);
                    barrier.wait();
                    for n in 0..per {
                        // Spread the connections over the key set.
                        let i = (t * 7919 + n * 31) % load.keys.max(1);
                        let path = format!("/kv/k{i}");
                        let t0 = Instant::now();
                        let a = match load.op {
                            Op::Get => c.request("GET", &path, b"")?,
                            Op::Put => c.request("PUT", &path, &values[i])?,
                        };
                        lat.push(t0.elapsed());
                        let ok = match load.op {
                            Op::Get => a.status == 200 && a.body == values[i],
                            Op::Put => a.status == 201,
                        };
                        if !ok {
                            return Err(format!(
                                "{} {path} answered {} with {} bytes",
                                load.op.name().to_uppercase(),
                                a.status,
                                a.body.len()
                            ));
                        }
                    }
                    Ok((lat, Instant::now(), c))
                },
            )
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut all = Vec::with_capacity(per * conns);
    let mut end = start;
    let mut failed = None;
    for t in threads {
        match t.join() {
            Ok(Ok((lat, done, c))) => {
                all.extend(lat);
                pool.push(c);
                end = end.max(done);
            }
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(_) => {
                failed.get_or_insert("a load thread panicked".into());
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(figures(all, end - start))
}

/// Asks the service to end (`POST /quit`; both servers serve it in the
/// bench). Errors are ignored: the boot's timeout ends it otherwise.
pub fn quit(port: u16) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(a) = Client::connect(port).and_then(|mut c| c.request("POST", "/quit", b"")) {
            if a.status == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The Tahoma scenario of this bench.
pub const SCENARIO: &str = "bench-kv-host";
/// The host port `bench-kv-host.toml` forwards to the service's port 80.
pub const TAHOMA_PORT: u16 = 47110;
/// The host port forwarded to the Linux baseline's port 80.
pub const LINUX_PORT: u16 = 47111;
/// How both machines run (beside the same `-machine microvm`, `-cpu`,
/// `-m`, user network and virtio-net device): TCG with `-icount shift=0`,
/// so the guests' clocks count instructions (1 GHz) while they run, and
/// `sleep=on` (QEMU's default), so that while a guest waits for the host
/// its clock follows the host's instead of leaping to its next timer (with
/// `sleep=off` the unikernel's and Linux's timeouts would race past while
/// the load generator thinks). Requests per second are host wall time.
pub const QEMU_ARGS: [&str; 2] = ["-icount", "shift=0"];
/// RAM of both machines, MiB (the Tahoma scenario's default `-m`).
pub const MEMORY_MIB: u64 = 256;
/// The key set and value size of every run.
pub const KEYS: usize = 256;
pub const VALUE_SIZE: usize = 256;
/// Requests per run (`TAHOMA_KV_REQUESTS` overrides).
pub const REQUESTS: usize = 2000;

/// The runs of one system, in row order: (op, connections).
pub const RUNS: [(Op, usize); 4] = [(Op::Get, 1), (Op::Get, 16), (Op::Put, 1), (Op::Put, 16)];

/// The base name of a run's rows: `kv_host_get_16`.
pub fn row_name(op: Op, conns: usize) -> String {
    format!("kv_host_{}_{conns}", op.name())
}

/// The figures of one system, run by run (in [`RUNS`] order).
pub type System = Vec<(Op, usize, Figures)>;

/// Rounds of every run per system: the figure kept is the round with
/// the median requests/s (the machine is shared; a round can be slowed by
/// other work).
pub const ROUNDS: usize = 3;

/// One run on `port`: fresh connections (closed after it: the unikernel
/// has 16 sockets and, with all 16 taken, closes the longest idle for 1 s
/// so that one listens again, so a pool kept across runs would lose its
/// idle members), a short warm-up on them, then the measured requests.
fn one_run(port: u16, op: Op, conns: usize, requests: usize) -> Result<Figures, String> {
    let load = Load {
        op,
        conns,
        requests,
        keys: KEYS,
        value_size: VALUE_SIZE,
    };
    let mut pool = connect_all(port, conns)?;
    run(
        &Load {
            requests: (requests / 20).max(conns),
            ..load.clone()
        },
        &mut pool,
    )?;
    run(&load, &mut pool)
}

/// The round with the median requests/s.
pub fn median_round(mut rounds: Vec<Figures>) -> Option<Figures> {
    rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let n = rounds.len();
    (n > 0).then(|| rounds.swap_remove(n / 2))
}

/// Waits for both services, preloads both, then measures every run of
/// [`RUNS`] on each, interleaved (Tahoma, Linux, Tahoma, ...; [`ROUNDS`]
/// rounds) so that both see the same machine load; then ends both.
/// Runs on its own thread beside the boots.
pub fn drive(ports: [u16; 2], requests: usize) -> Result<[System; 2], String> {
    let result = (|| {
        for (port, label) in ports.iter().zip(LABELS) {
            wait_ready(*port, Duration::from_secs(300)).map_err(|e| format!("{label}: {e}"))?;
            preload(connect_all(*port, 16)?, KEYS, VALUE_SIZE)
                .map_err(|e| format!("{label}: {e}"))?;
        }
        let mut out: [System; 2] = [Vec::new(), Vec::new()];
        for (op, conns) in RUNS {
            let mut rounds: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
            for _ in 0..ROUNDS {
                for (i, port) in ports.iter().enumerate() {
                    let f = one_run(*port, op, conns, requests)
                        .map_err(|e| format!("{}: {e}", LABELS[i]))?;
                    eprintln!(
                        "xtask: bench: {} {}: {:.0} requests/s, p50 {:.0} us, p99 {:.0} us, mean {:.0} us",
                        LABELS[i],
                        row_name(op, conns),
                        f.rps,
                        f.p50_us,
                        f.p99_us,
                        f.mean_us
                    );
                    rounds[i].push(f);
                }
            }
            for (o, r) in out.iter_mut().zip(rounds) {
                if let Some(f) = median_round(r) {
                    o.push((op, conns, f));
                }
            }
        }
        Ok(out)
    })();
    for port in ports {
        quit(port);
    }
    result
}

/// The two systems, in the order of `drive`'s ports.
const LABELS: [&str; 2] = ["tahoma", "linux"];

/// The rows: per run, Tahoma's requests/s, p50 and p99, Linux's the same,
/// and Tahoma's requests/s as a ratio to Linux's.
pub fn rows(tahoma: &System, linux: &System, how: &str) -> Vec<crate::bench::Row> {
    use crate::bench::{Record, Row, Value};
    let mut rows = Vec::new();
    let row = |name: String, value: f64, unit: &str, detail: String, compare: String| Row {
        record: Record {
            name,
            value: Value::Real(value),
            unit: unit.into(),
        },
        detail,
        compare,
    };
    for (op, conns, t) in tahoma {
        let base = row_name(*op, *conns);
        let l = linux
            .iter()
            .find(|(o, c, _)| o == op && c == conns)
            .map(|x| &x.2);
        let what = format!(
            "{} {} B values, {conns} keep-alive conn(s), n={}, {how}",
            op.name().to_uppercase(),
            VALUE_SIZE,
            t.requests
        );
        rows.push(row(
            base.clone(),
            t.rps,
            "requests/s",
            format!("Tahoma: {what}"),
            l.map(|l| format!("Linux guest {:.0} requests/s", l.rps))
                .unwrap_or_default(),
        ));
        rows.push(row(
            format!("{base}.p50"),
            t.p50_us,
            "us",
            "Tahoma, latency".into(),
            String::new(),
        ));
        rows.push(row(
            format!("{base}.p99"),
            t.p99_us,
            "us",
            "Tahoma, latency".into(),
            String::new(),
        ));
        let Some(l) = l else { continue };
        rows.push(row(
            format!("{base}.linux"),
            l.rps,
            "requests/s",
            format!("Linux guest: {what}"),
            "the same kvlib code, static /init under Debian's kernel".into(),
        ));
        rows.push(row(
            format!("{base}.linux_p50"),
            l.p50_us,
            "us",
            "Linux guest, latency".into(),
            String::new(),
        ));
        rows.push(row(
            format!("{base}.linux_p99"),
            l.p99_us,
            "us",
            "Linux guest, latency".into(),
            String::new(),
        ));
        if l.rps > 0.0 {
            rows.push(row(
                format!("{base}.vs_linux"),
                t.rps / l.rps,
                "ratio",
                "Tahoma requests/s / Linux guest's, same run, same QEMU settings".into(),
                if *op == Op::Get {
                    "issue 11 goal: >= 1.5 for GET".into()
                } else {
                    String::new()
                },
            ));
        }
    }
    rows
}

fn guest_dir(root: &std::path::Path) -> std::path::PathBuf {
    crate::linux::cache_dir(root)
}

/// QEMU arguments giving the Linux guest a disk like the service's vblk
/// in [`SCENARIO`], or `None` if the service has none (RAM disk).
fn linux_disk(
    booter: &crate::machine::Booter<'_>,
    dir: std::path::PathBuf,
) -> Result<Option<Vec<String>>, String> {
    let scenario = crate::manifest::Scenario::load(&booter.root, SCENARIO)?;
    let Some(v) = scenario
        .guests
        .iter()
        .find(|g| g.image == "kvstore")
        .and_then(|g| g.vblk.first())
    else {
        return Ok(None);
    };
    let image = dir.join("kv-disk.img");
    let f = std::fs::File::create(&image)
        .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
    f.set_len(v.size)
        .map_err(|e| format!("cannot size {}: {e}", image.display()))?;
    let disk = crate::devices::Disk {
        file: image.clone(),
        size: v.size,
        driver: 0,
    };
    // Without the machine options (`-machine acpi=off`): Linux needs ACPI.
    Ok(Some(
        disk.qemu_args(&image)
            .into_iter()
            .skip(crate::devices::machine_args().len())
            .collect(),
    ))
}

/// The whole bench: Tahoma's `bench-kv-host` and the Linux baseline,
/// booted side by side with [`QEMU_ARGS`] (an idle QEMU costs little) and
/// driven in turn by the same load.
pub fn bench(
    booter: &crate::machine::Booter<'_>,
    timeout: Option<Duration>,
) -> Result<Vec<crate::bench::Row>, String> {
    let requests = std::env::var("TAHOMA_KV_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(REQUESTS);
    let extra: Vec<String> = QEMU_ARGS.iter().map(|s| s.to_string()).collect();
    let guest = crate::linux::prepare(booter.sh, &booter.root)?;
    let _ports = (
        tahoma_tests::hold_port(TAHOMA_PORT)?,
        tahoma_tests::hold_port(LINUX_PORT)?,
    );

    // Tahoma's machine options but ACPI: Debian's kernel finds virtio-mmio
    // devices only through ACPI (or a device tree), as it is built without
    // VIRTIO_MMIO_CMDLINE_DEVICES; ACPI tables change nothing on the paths
    // measured.
    let mut qemu_extra: Vec<String> = crate::devices::machine_args()
        .into_iter()
        .filter(|a| a != "-machine" && a != "acpi=off")
        .collect();
    // The store where Tahoma's is: on a RAM disk of the same size, or, if
    // the scenario gives the service a `[[guest.vblk]]`, on a virtio disk
    // of the extent's size (a fresh zeroed image each run; the same QEMU
    // drive options as the scenario's disk, first device as there).
    let mut append = String::from("console=ttyS0 quiet reboot=t panic=-1 kv.ip=10.0.2.10");
    match linux_disk(booter, guest_dir(&booter.root))? {
        Some(args) => {
            qemu_extra.extend(args);
            append.push_str(" kv.store=vda");
        }
        None => append.push_str(" kv.disk_kib=4096"),
    }
    qemu_extra.extend([
        "-netdev".into(),
        format!("user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:{LINUX_PORT}-10.0.2.10:80"),
        "-device".into(),
        "virtio-net-device,netdev=n0".into(),
    ]);
    qemu_extra.extend(extra.iter().cloned());
    let linux_log = booter.work_dir().join("logs/bench/linux-kv.log");
    let linux_run = crate::qemu::Run {
        qemu: booter.qemu.clone(),
        accel: crate::qemu::Accel::Tcg,
        memory_mib: MEMORY_MIB,
        kernel: guest.kernel.clone(),
        initrd: Some(guest.initrd.clone()),
        append,
        gdb: None,
        extra: qemu_extra,
        cpu: None,
        timeout: Some(timeout.unwrap_or(Duration::from_secs(900))),
        echo: false,
        log: linux_log.clone(),
        kill_on: None,
        kill_file: None,
    };

    eprintln!(
        "xtask: bench: {SCENARIO} (Tahoma) and the Linux baseline ({}, kvlib as /init), \
         side by side; the host is the client",
        guest.package
    );
    let linux = std::thread::spawn(move || -> Result<(), String> {
        let sh = xshell::Shell::new().map_err(|e| format!("cannot set up a shell: {e}"))?;
        linux_run.run(&sh).map(|_| ())
    });
    let client = std::thread::spawn(move || drive([TAHOMA_PORT, LINUX_PORT], requests));
    let req = tahoma_tests::BootRequest {
        scenario: SCENARIO.into(),
        timeout,
        ..Default::default()
    };
    let how = crate::machine::Presentation {
        echo: false,
        gdb: None,
        log_name: format!("bench/{SCENARIO}"),
    };
    let boot = booter.boot_with(&req, &how, &extra);
    let figures = client
        .join()
        .map_err(|_| "the load generator panicked".to_string())?;
    let linux_ended = linux
        .join()
        .map_err(|_| "the Linux guest's runner panicked".to_string())?;
    let (outcome, _, _) = boot?;
    linux_ended?;
    let logs = format!(
        " (serial logs: {} and {})",
        outcome
            .log
            .as_ref()
            .map(|l| l.display().to_string())
            .unwrap_or_default(),
        linux_log.display()
    );
    let [tahoma, linux] = figures.map_err(|e| format!("the key-value bench: {e}{logs}"))?;
    Ok(rows(
        &tahoma,
        &linux,
        &format!("median of {ROUNDS} interleaved rounds, TCG -icount shift=0, wall clock"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = ms(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        let three = ms(&[10, 20, 30]);
        assert_eq!(percentile(&three, 50.0), Duration::from_millis(20));
        assert_eq!(percentile(&three, 99.0), Duration::from_millis(30));
        assert_eq!(percentile(&ms(&[7]), 1.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn figures_sort_and_count_per_second() {
        // Unsorted on purpose: 200 requests in 0.5 s, one slow outlier.
        let mut lat = ms(&[3; 199]);
        lat.insert(17, Duration::from_millis(400));
        let f = figures(lat, Duration::from_millis(500));
        assert_eq!(f.requests, 200);
        assert!((f.rps - 400.0).abs() < 1e-9, "{f:?}");
        assert!((f.p50_us - 3000.0).abs() < 1e-6, "{f:?}");
        // 1 % of 200 is 2 requests: the p99 is the second slowest.
        assert!((f.p99_us - 3000.0).abs() < 1e-6, "{f:?}");
        let mut lat = ms(&[3; 97]);
        lat.extend(ms(&[400, 500, 600]));
        let f = figures(lat, Duration::from_secs(1));
        assert!((f.p99_us - 500_000.0).abs() < 1e-6, "{f:?}");
        assert_eq!(figures(vec![], Duration::ZERO).rps, 0.0);
    }

    #[test]
    fn answers_parse_only_when_complete() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhelloHTTP/1.1 204 No Content\r\n\r\n";
        for cut in 0..a.len() {
            let r = parse_answer(&a[..cut]).unwrap();
            if cut < 69 {
                assert_eq!(r, None, "cut {cut}");
            } else {
                assert_eq!(r.unwrap().0, 69);
            }
        }
        let (n, first) = parse_answer(a).unwrap().unwrap();
        assert_eq!(
            first,
            Answer {
                status: 200,
                body: b"hello".to_vec()
            }
        );
        let (m, second) = parse_answer(&a[n..]).unwrap().unwrap();
        assert_eq!(m, a.len() - n);
        assert_eq!(second.status, 204);
        assert!(second.body.is_empty());
        assert!(parse_answer(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(parse_answer(&[b'x'; 20_000]).is_err());
    }

    #[test]
    fn rows_pair_each_run_with_linux_and_give_the_ratio() {
        let f = |rps: f64| Figures {
            requests: 2000,
            elapsed: Duration::from_secs(1),
            rps,
            p50_us: 100.0,
            p99_us: 900.0,
            mean_us: 150.0,
        };
        let tahoma: System = vec![(Op::Get, 1, f(3000.0)), (Op::Put, 16, f(500.0))];
        let linux: System = vec![(Op::Get, 1, f(2000.0))];
        let r = rows(&tahoma, &linux, "test");
        let names: Vec<_> = r.iter().map(|r| r.record.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kv_host_get_1",
                "kv_host_get_1.p50",
                "kv_host_get_1.p99",
                "kv_host_get_1.linux",
                "kv_host_get_1.linux_p50",
                "kv_host_get_1.linux_p99",
                "kv_host_get_1.vs_linux",
                // No Linux figure for this run: no Linux rows, no ratio.
                "kv_host_put_16",
                "kv_host_put_16.p50",
                "kv_host_put_16.p99",
            ]
        );
        assert_eq!(r[6].record.value, crate::bench::Value::Real(1.5));
        assert_eq!(r[6].record.unit, "ratio");
        assert!(r[6].compare.contains(">= 1.5"));
        assert_eq!(r[0].record.unit, "requests/s");
        assert_eq!(r[2].record.value, crate::bench::Value::Real(900.0));
        assert_eq!(r[2].record.unit, "us");
    }

    #[test]
    fn the_median_round_is_kept() {
        let f = |rps: f64| Figures {
            requests: 10,
            elapsed: Duration::from_secs(1),
            rps,
            p50_us: rps,
            p99_us: 0.0,
            mean_us: 0.0,
        };
        let m = median_round(vec![f(900.0), f(100.0), f(500.0)]).unwrap();
        assert_eq!((m.rps, m.p50_us), (500.0, 500.0));
        assert_eq!(median_round(vec![f(7.0)]).unwrap().rps, 7.0);
        assert_eq!(median_round(vec![]), None);
    }

    #[test]
    fn values_are_sized_and_differ_per_key() {
        assert_eq!(value(3, 100).len(), 100);
        assert_ne!(value(0, 16), value(1, 16));
        assert_eq!(value(5, 16), value(5, 16));
    }
}
