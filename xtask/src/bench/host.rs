//! What `cargo xtask bench` measures on the host itself: the baselines
//! of the wall pass (getpid, a pipe ping-pong with the `bench-echo` child,
//! a spawn, 1 MiB over TCP loopback), the rows that divide guest figures by
//! them, and the TCP client of `bench-net-host`.

use std::io::{BufRead, Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::{blk_ratio_rows, BootFigures, Record, Row, Value};

/// Host baselines, in nanoseconds of wall time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Host {
    pub getpid_ns: f64,
    pub pipe_round_trip_ns: f64,
    pub spawn_ns: f64,
    /// 1 MiB written to a TCP connection over 127.0.0.1 and read on the
    /// other end (connect to the last byte read, one process, two threads).
    pub tcp_loopback_1m_ns: f64,
}

/// Which host baseline a guest figure is divided by.
fn baseline_for(name: &str, host: &Host) -> Option<(&'static str, f64)> {
    match name {
        "null_hypercall" => Some(("getpid", host.getpid_ns)),
        "event_round_trip"
        | "event_round_trip_block"
        | "event_round_trip_poll"
        | "yield_round_trip" => Some(("pipe_round_trip", host.pipe_round_trip_ns)),
        "domain_switch" => Some(("pipe_round_trip/2", host.pipe_round_trip_ns / 2.0)),
        "guest_start.total" => Some(("spawn", host.spawn_ns)),
        "tcp_guest_to_guest_1m" | "tcp_host_to_guest_1m" => {
            Some(("tcp_loopback_1m", host.tcp_loopback_1m_ns))
        }
        _ => None,
    }
}

/// The rows of the wall-clock pass: host baselines in ns, guest figures only
/// as ratios to them.
pub fn wall_rows(host: &Host, boots: &[BootFigures]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (name, ns, what) in [
        (
            "host.getpid",
            host.getpid_ns,
            "std::process::id() (a getpid syscall)",
        ),
        (
            "host.pipe_round_trip",
            host.pipe_round_trip_ns,
            "1 byte there and back between two processes over pipes",
        ),
        ("host.spawn", host.spawn_ns, "spawn and wait for `true`"),
        (
            "host.tcp_loopback_1m",
            host.tcp_loopback_1m_ns,
            "1 MiB over a TCP connection on 127.0.0.1, connect to last byte read",
        ),
    ] {
        rows.push(Row {
            record: Record {
                name: name.into(),
                value: Value::Real(ns),
                unit: "ns".into(),
            },
            detail: what.into(),
            compare: "host, wall clock, this run".into(),
        });
    }
    for b in boots {
        let Some(hz) = b.tsc_hz.filter(|&h| h > 0) else {
            continue;
        };
        let ns = |ticks: u64| ticks as f64 * 1e9 / hz as f64;
        let mut figures: Vec<(String, f64)> = b
            .figures
            .iter()
            .map(|g| (g.name.clone(), ns(g.median)))
            .collect();
        if let Some((_, _, total)) = b.start {
            figures.push(("guest_start.total".into(), ns(total)));
        }
        rows.extend(blk_ratio_rows(b, "wall clock, TCG"));
        for (name, guest_ns) in figures {
            let Some((base, base_ns)) = baseline_for(&name, host) else {
                continue;
            };
            if name.starts_with("tcp_") && guest_ns > 0.0 {
                // A transfer of 1 MiB: its throughput, for the reader.
                rows.push(Row {
                    record: Record {
                        name: format!("{name}.wall_mb_s"),
                        value: Value::Real(1_048_576.0 / 1e6 / (guest_ns / 1e9)),
                        unit: "MB/s".into(),
                    },
                    detail: "TCG, no icount".into(),
                    compare: format!(
                        "host loopback {:.0} MB/s in this run",
                        1_048_576.0 / 1e6 / (base_ns / 1e9)
                    ),
                });
            }
            rows.push(Row {
                record: Record {
                    name: format!("{name}.wall_vs_host_{}", base.replace("/2", "_half")),
                    value: Value::Real(guest_ns / base_ns),
                    unit: "ratio".into(),
                },
                detail: "TCG, no icount".into(),
                compare: format!("x host {base} ({base_ns:.0} ns) in this run"),
            });
        }
    }
    rows
}

/// The scenario whose TCP client is `cargo xtask bench` itself, through
/// its forwarded host port; wall pass only (under `-icount ... sleep=off`
/// the guest's clock races past its deadline while it waits for the host).
pub(super) const HOST_CLIENT_SCENARIO: &str = "bench-net-host";
/// The host port `bench-net-host.toml` forwards to the guest's port 80.
pub(super) const HOST_CLIENT_PORT: u16 = 47090;
/// What the host sends it: 1 MiB, as `host.tcp_loopback_1m`.
pub(super) const HOST_CLIENT_BYTES: usize = 1 << 20;

/// FNV-1a/64, as `guests/tcptest` computes it.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The host side of `bench-net-host`: connects to the forwarded port
/// (retrying while the guest is not listening yet), sends `data`, closes
/// its write side and checks the guest's answer (length, FNV-1a/64).
pub(super) fn host_tcp_client(port: u16, data: &[u8]) -> Result<(), String> {
    let once = || tahoma_tests::host_client_once(port, data);
    let start = Instant::now();
    let mut last = String::from("never tried");
    while start.elapsed() < Duration::from_secs(120) {
        match once() {
            Ok(a) => {
                let len = u64::from_le_bytes(a[..8].try_into().unwrap_or([0; 8]));
                let sum = u64::from_le_bytes(a[8..].try_into().unwrap_or([0; 8]));
                let want = fnv(data);
                if len != data.len() as u64 || sum != want {
                    return Err(format!(
                        "the guest answered {len} bytes, checksum {sum:#x}; \
                         the host sent {}, checksum {want:#x}",
                        data.len()
                    ));
                }
                return Ok(());
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!(
        "no answer through 127.0.0.1:{port} in 120 s (last: {last})"
    ))
}

/// Median of `batches` timings of `per_batch` operations, in ns per op.
fn median_ns(batches: usize, per_batch: u32, mut f: impl FnMut(u32)) -> f64 {
    let mut v: Vec<f64> = (0..batches)
        .map(|_| {
            let t = Instant::now();
            f(per_batch);
            t.elapsed().as_nanos() as f64 / f64::from(per_batch)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures the host baselines.
pub fn host_baselines() -> Result<Host, String> {
    let getpid_ns = median_ns(9, 200_000, |n| {
        for _ in 0..n {
            std::hint::black_box(std::process::id());
        }
    });
    let exe = std::env::current_exe().map_err(|e| format!("cannot find xtask itself: {e}"))?;
    let mut child = Command::new(&exe)
        .arg(ECHO_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the pipe echo process: {e}"))?;
    let (Some(mut to), Some(mut from)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        return Err("the echo process's pipes were not set up".into());
    };
    let mut failed = None;
    let mut round = |n: u32| {
        let mut b = [0u8; 1];
        for _ in 0..n {
            if let Err(e) = to.write_all(b"x").and_then(|_| from.read_exact(&mut b)) {
                failed.get_or_insert(e);
                return;
            }
        }
    };
    round(2_000);
    let pipe_round_trip_ns = median_ns(9, 5_000, &mut round);
    drop(to);
    let _ = child.wait();
    if let Some(e) = failed {
        return Err(format!("the pipe ping-pong failed: {e}"));
    }
    let mut spawn_failed = None;
    let spawn_ns = median_ns(9, 5, |n| {
        for _ in 0..n {
            if let Err(e) = Command::new("true").status() {
                spawn_failed.get_or_insert(e);
            }
        }
    });
    if let Some(e) = spawn_failed {
        return Err(format!("cannot spawn `true`: {e}"));
    }
    let tcp_loopback_1m_ns = median_ns(9, 1, |n| {
        for _ in 0..n {
            if let Err(e) = tcp_loopback(1 << 20) {
                spawn_failed.get_or_insert(e);
            }
        }
    });
    if let Some(e) = spawn_failed {
        return Err(format!("the TCP loopback transfer failed: {e}"));
    }
    Ok(Host {
        getpid_ns,
        pipe_round_trip_ns,
        spawn_ns,
        tcp_loopback_1m_ns,
    })
}

/// `bytes` over a fresh TCP connection on 127.0.0.1 (an ephemeral port):
/// a thread writes, this one reads until the writer closes.
fn tcp_loopback(bytes: usize) -> std::io::Result<()> {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        let chunk = [0x5au8; 8192];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n])?;
            left -= n;
        }
        Ok(())
    });
    let (mut conn, _) = listener.accept()?;
    let mut buf = [0u8; 65536];
    let mut got = 0usize;
    loop {
        match conn.read(&mut buf)? {
            0 => break,
            n => got += n,
        }
    }
    writer
        .join()
        .map_err(|_| std::io::Error::other("the writer thread panicked"))??;
    if got != bytes {
        return Err(std::io::Error::other(format!(
            "read {got} bytes of {bytes}"
        )));
    }
    Ok(())
}

/// The hidden subcommand the pipe baseline runs in its child process.
pub const ECHO_COMMAND: &str = "bench-echo";

/// The child's side of the pipe ping-pong: copy each byte from stdin back
/// to stdout at once (one read and one write system call per byte) until
/// end of file.
pub fn echo() -> Result<ExitCode, String> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut output = stdout.lock();
    loop {
        let n = match input.fill_buf() {
            Ok([]) => return Ok(ExitCode::SUCCESS),
            Ok(buf) => {
                let n = buf.len();
                output
                    .write_all(buf)
                    .and_then(|_| output.flush())
                    .map_err(|e| format!("echo: {e}"))?;
                n
            }
            Err(e) => return Err(format!("echo: {e}")),
        };
        input.consume(n);
    }
}
