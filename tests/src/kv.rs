//! The sample unikernel (docs/kvstore.md) from the host: the test is an
//! HTTP client of `guests/kvstore` through QEMU's forward of
//! 127.0.0.1:47082 (scenario `kvstore-http`) or 127.0.0.1:47100
//! (`kvstore-cuts`); from a client guest over the virtual switch (scenario
//! `kvclient`); and its store under power cuts (scenario `kvstore-durable`).
//! The served scenarios keep the store on the service's vblk, served by the
//! one driver domain `guests/driverdom` that also switches the network.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::{BootRequest, Exit, Machine, ScenarioTest};

/// The scenario tests of the key-value service.
pub fn tests() -> Vec<ScenarioTest> {
    vec![
        ScenarioTest {
            name: "kvstore_answers_the_host_and_outlasts_hostile_clients",
            run: kvstore_answers_the_host_and_outlasts_hostile_clients,
        },
        ScenarioTest {
            name: "kvstore_answers_a_client_guest_over_the_switch",
            run: kvstore_answers_a_client_guest_over_the_switch,
        },
        ScenarioTest {
            name: "kvstore_acknowledged_commits_survive_power_cuts_on_its_vblk",
            run: kvstore_acknowledged_commits_survive_power_cuts_on_its_vblk,
        },
        ScenarioTest {
            name: "kvstore_http_data_survives_a_restart_through_the_forward",
            run: kvstore_http_data_survives_a_restart_through_the_forward,
        },
        ScenarioTest {
            name: "kvstore_http_puts_acknowledged_survive_qemu_kills",
            run: kvstore_http_puts_acknowledged_survive_qemu_kills,
        },
        ScenarioTest {
            name: "kvstore_and_its_driver_domain_miss_no_wake_up",
            run: kvstore_and_its_driver_domain_miss_no_wake_up,
        },
    ]
}

const PORT: u16 = 47082;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Issue 11 (scenario `kv-wakeups`, under `-icount ... sleep=off`): the
/// client guest's GETs and PUTs at 1 and 16 connections to the service,
/// whose store is on a vblk served by the driver domain that also switches
/// the network. Every request answered right (`wrong=0`, 300 per run, four
/// runs); the driver domain never woke by its deadline to find work
/// pending (no `@ drv-late-wake`), the service's vblk never waited its
/// 100 ms probe (`@ kv-disk timeouts=0`). (No bound on the slowest
/// request: it counts the instructions run while the host does the disk
/// I/O, which on a loaded host once reached 33 ms.) With the driver domain sleeping while its device works (the bug), the
/// first late wake-up came within the first run.
fn kvstore_and_its_driver_domain_miss_no_wake_up(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("kv-wakeups").fresh_disk())?;
    ensure!(
        out.exit == Exit::Success,
        "the run ended with {}, not success",
        out.exit
    );
    if let Ok(e) = out.facts.guest_one("client", "kvc-error") {
        return Err(format!("the client guest gave up: `{e}`"));
    }
    if let Some((g, f)) = out.facts.guest_of_kind("drv-late-wake").next() {
        return Err(format!(
            "guest `{g}` slept until its deadline with work pending (a missed wake-up): `{f}`"
        ));
    }
    let disk = out.facts.guest_one("kv", "kv-disk")?;
    ensure!(
        disk.number("timeouts")? == 0,
        "the service's vblk waited its 100 ms probe for answers: `{disk}`"
    );
    ensure!(
        disk.number("events")? > 0,
        "the service sent its disk no request: `{disk}`"
    );
    let runs: Vec<&crate::Fact> = out
        .facts
        .guest_of_kind("kv-guest-bench")
        .filter(|(n, _)| *n == "client")
        .map(|(_, f)| f)
        .collect();
    let names: Vec<&str> = runs.iter().filter_map(|f| f.get("name")).collect();
    ensure!(
        names
            == [
                "kv_guest_get_1",
                "kv_guest_get_16",
                "kv_guest_put_1",
                "kv_guest_put_16"
            ],
        "the client's runs: {names:?}"
    );
    for f in runs {
        ensure!(
            f.number("wrong")? == 0 && f.number("requests")? == 300,
            "wrong answers or requests missing: `{f}`"
        );
    }
    Ok(())
}

fn connect() -> Result<TcpStream, String> {
    connect_to(PORT)
}

fn connect_to(port: u16) -> Result<TcpStream, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// One response: status, headers (lower-cased names), body.
struct Response {
    status: u16,
    close: bool,
    body: Vec<u8>,
}

/// Reads one response from `s`, with `pending` holding bytes read past the
/// previous one.
fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> Result<Response, String> {
    let head_end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        ensure!(n > 0, "the connection closed before a whole response head");
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in `{head}`"))?;
    let mut len = 0usize;
    let mut close = false;
    for line in head.lines().skip(1) {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v
                .trim()
                .parse()
                .map_err(|_| format!("bad length in `{head}`"))?;
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    while pending.len() < head_end + len {
        let mut buf = [0u8; 8192];
        let n = s.read(&mut buf).map_err(|e| format!("read body: {e}"))?;
        ensure!(n > 0, "the connection closed inside a body");
        pending.extend_from_slice(&buf[..n]);
    }
    let body = pending[head_end..head_end + len].to_vec();
    pending.drain(..head_end + len);
    Ok(Response {
        status,
        close,
        body,
    })
}

/// Sends `req` on `s` and reads one response.
fn ask(s: &mut TcpStream, req: &[u8]) -> Result<Response, String> {
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    read_response(s, &mut Vec::new())
}

fn ask_new(req: &[u8]) -> Result<Response, String> {
    ask(&mut connect()?, req)
}

/// [`ask_new`] for a well-behaved client beside hostile ones: a connection
/// refused or reset (all 16 sockets taken at that instant: the service's
/// bound answers a further connection with a reset, and frees a socket
/// within about a second by evicting the longest-idle one) is tried again,
/// up to 4 times 500 ms apart. A wrong status is not retried.
fn ask_new_retrying(req: &[u8]) -> Result<Response, String> {
    let mut last = String::new();
    for _ in 0..4 {
        match ask_new(req) {
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("4 tries, each refused or reset (last: {last})"))
}

fn wait_for_health() -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::from("never tried");
    while start.elapsed() < Duration::from_secs(150) {
        match ask_new(b"GET /health HTTP/1.1\r\n\r\n") {
            Ok(r) if r.status == 200 && r.body == b"ok\n" => return Ok(()),
            Ok(r) => last = format!("status {}", r.status),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(2500));
    }
    Err(format!(
        "no /health answer through the forward in 150 s (last: {last})"
    ))
}

/// Every route and status, keep-alive, pipelining, 16 writers at once, a
/// hostile client beside a well-behaved one.
fn client() -> Result<(), String> {
    wait_for_health()?;
    // Every route on one keep-alive connection.
    let mut s = connect()?;
    let value = vec![b'v'; 1000];
    let mut put = format!(
        "PUT /kv/fruit%2Fapple HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        value.len()
    )
    .into_bytes();
    put.extend_from_slice(&value);
    type Step<'a> = (Vec<u8>, u16, Option<&'a [u8]>);
    let steps: Vec<Step> = vec![
        (put, 201, None),
        (
            b"PUT /kv/fruit%2Fpear HTTP/1.1\r\nContent-Length: 4\r\n\r\ngood".to_vec(),
            201,
            None,
        ),
        (
            b"PUT /kv/veg HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".to_vec(),
            201,
            None,
        ),
        (
            b"GET /kv/fruit%2Fpear HTTP/1.1\r\n\r\n".to_vec(),
            200,
            Some(b"good"),
        ),
        (
            b"GET /kv?prefix=fruit%2F HTTP/1.1\r\n\r\n".to_vec(),
            200,
            Some(b"{\"keys\":[\"fruit/apple\",\"fruit/pear\"],\"truncated\":false}\n"),
        ),
        (
            b"GET /kv?prefix=fruit&limit=1 HTTP/1.1\r\n\r\n".to_vec(),
            200,
            Some(b"{\"keys\":[\"fruit/apple\"],\"truncated\":true}\n"),
        ),
        (b"DELETE /kv/veg HTTP/1.1\r\n\r\n".to_vec(), 204, None),
        (b"DELETE /kv/veg HTTP/1.1\r\n\r\n".to_vec(), 404, None),
        (b"GET /kv/veg HTTP/1.1\r\n\r\n".to_vec(), 404, None),
        (b"GET /nowhere HTTP/1.1\r\n\r\n".to_vec(), 404, None),
        (
            b"POST /kv/veg HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(),
            405,
            None,
        ),
        (
            format!("GET /kv/{} HTTP/1.1\r\n\r\n", "k".repeat(257)).into_bytes(),
            414,
            None,
        ),
        (b"GET /health HTTP/1.1\r\n\r\n".to_vec(), 200, Some(b"ok\n")),
    ];
    for (req, status, body) in &steps {
        let r = ask(&mut s, req)?;
        let what = String::from_utf8_lossy(&req[..req.len().min(50)]).into_owned();
        ensure!(
            r.status == *status,
            "`{what}`: status {} (want {status})",
            r.status
        );
        ensure!(!r.close, "`{what}`: the connection must stay open");
        if let Some(b) = body {
            ensure!(
                r.body == *b,
                "`{what}`: body `{}`",
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    let r = ask(&mut s, b"GET /kv/fruit%2Fapple HTTP/1.1\r\n\r\n")?;
    ensure!(
        r.body == value,
        "the 1000-byte value came back as {} bytes",
        r.body.len()
    );

    // Statuses that close the connection.
    let closing: Vec<(Vec<u8>, u16)> = vec![
        (
            format!(
                "PUT /kv/big HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                64 * 1024 + 1
            )
            .into_bytes(),
            413,
        ),
        (
            format!("GET /health HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)).into_bytes(),
            431,
        ),
        (b"PUT /kv/a HTTP/1.1\r\n\r\n".to_vec(), 411),
        (
            b"PUT /kv/a HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            501,
        ),
        (b"\x01\x02 nonsense\r\n\r\n".to_vec(), 400),
    ];
    for (req, status) in &closing {
        let mut c = connect()?;
        let r = ask(&mut c, req)?;
        ensure!(
            r.status == *status && r.close,
            "status {} close={} (want {status}, close)",
            r.status,
            r.close
        );
        let mut rest = [0u8; 16];
        let n = c.read(&mut rest).unwrap_or(0);
        ensure!(
            n == 0,
            "{status}: the connection must be closed after the answer"
        );
    }

    // Pipelining: everything in one write, answers in order, each GET
    // seeing the PUT before it.
    let mut p = connect()?;
    let mut pipe = Vec::new();
    for i in 0..10 {
        pipe.extend_from_slice(
            format!(
                "PUT /kv/p HTTP/1.1\r\nContent-Length: 2\r\n\r\n{i:02}GET /kv/p HTTP/1.1\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    p.write_all(&pipe)
        .map_err(|e| format!("pipelined write: {e}"))?;
    let mut pending = Vec::new();
    for i in 0..10 {
        let put = read_response(&mut p, &mut pending)?;
        let get = read_response(&mut p, &mut pending)?;
        ensure!(
            put.status == 201 && get.status == 200,
            "pipelined pair {i}: {} {}",
            put.status,
            get.status
        );
        ensure!(
            get.body == format!("{i:02}").as_bytes(),
            "pipelined GET {i} saw `{}`",
            String::from_utf8_lossy(&get.body)
        );
    }

    // 16 writers at once, each on its own connection.
    let writers: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || -> Result<(), String> {
                let mut c = connect()?;
                for j in 0..5 {
                    let req = format!("PUT /kv/w{i}-{j} HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
                    let r = ask(&mut c, req.as_bytes())?;
                    ensure!(r.status == 201, "writer {i}: status {}", r.status);
                }
                Ok(())
            })
        })
        .collect();
    for w in writers {
        w.join().map_err(|_| "a writer panicked".to_string())??;
    }
    let r = ask_new(b"GET /kv?prefix=w&limit=1000 HTTP/1.1\r\n\r\n")?;
    let listed = String::from_utf8_lossy(&r.body).matches("\"w").count();
    ensure!(
        listed == 80,
        "80 keys written by 16 writers; {listed} listed"
    );

    // Hostile clients: a slowloris dripping a head, one that never sends,
    // and one that sends an endless header; a well-behaved client is
    // answered meanwhile, and the slow ones are cut off (408).
    let mut slow = connect()?;
    let _silent = connect()?;
    let mut endless = connect()?;
    // Past the 8 KiB head limit at once (so that the request timeout
    // cannot answer first on a loaded machine), then more of it.
    let mut head = b"GET /health HTTP/1.1\r\nX-Endless: ".to_vec();
    head.resize(10_000, b'X');
    endless.write_all(&head).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut cut_off = None;
    for i in 0..40 {
        if slow.write_all(b"G").is_err() {
            cut_off = Some(start.elapsed());
            break;
        }
        let _ = endless.write_all(&[b'X'; 1000]);
        if i % 5 == 0 {
            let r = ask_new_retrying(b"GET /health HTTP/1.1\r\n\r\n")?;
            ensure!(
                r.status == 200,
                "a well-behaved client beside hostile ones got {}",
                r.status
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = read_response(&mut slow, &mut Vec::new());
    ensure!(
        matches!(&r, Ok(r) if r.status == 408),
        "the dripping client must get 408 (got {:?}, write refused after {cut_off:?})",
        r.map(|r| r.status)
    );
    let r = read_response(&mut endless, &mut Vec::new());
    ensure!(
        matches!(&r, Ok(r) if r.status == 431),
        "the endless header must get 431 (got {:?})",
        r.map(|r| r.status)
    );
    let r = ask_new_retrying(b"GET /kv/fruit%2Fpear HTTP/1.1\r\n\r\n")?;
    ensure!(
        r.status == 200 && r.body == b"good",
        "after the hostile clients: status {}",
        r.status
    );

    // A flood of silent connections (more than the service's 16) does not
    // keep a well-behaved client out: idle ones are evicted.
    let flood: Vec<TcpStream> = (0..20).filter_map(|_| connect().ok()).collect();
    std::thread::sleep(Duration::from_millis(2500));
    let r = ask_new(b"GET /health HTTP/1.1\r\n\r\n")?;
    ensure!(
        r.status == 200,
        "beside {} silent connections: status {}",
        flood.len(),
        r.status
    );
    drop(flood);

    let r = ask_new(b"GET /stats HTTP/1.1\r\n\r\n")?;
    let stats = String::from_utf8_lossy(&r.body).into_owned();
    ensure!(stats.contains("\"keys\":83,"), "stats: `{stats}`");
    let r = ask_new(b"POST /quit HTTP/1.1\r\nContent-Length: 0\r\n\r\n")?;
    ensure!(r.status == 200, "/quit: {}", r.status);
    Ok(())
}

fn kvstore_answers_the_host_and_outlasts_hostile_clients(m: &dyn Machine) -> Result<(), String> {
    let _port = crate::hold_port(PORT)?;
    let c = std::thread::spawn(client);
    // A fresh image: the test counts the keys it wrote.
    let out = m.boot(&BootRequest::scenario("kvstore-http").fresh_disk())?;
    let result = c
        .join()
        .map_err(|_| "the host client panicked".to_string())?;
    result?;
    ensure!(
        out.exit == Exit::Success,
        "the run ended with {}, not success",
        out.exit
    );
    let done = out.facts.guest_one("kv", "kv-done")?;
    ensure!(
        done.number("408")? >= 1 && done.number("431")? >= 2 && done.number("413")? == 1,
        "`{done}`: the guest must count the refusals the client saw"
    );
    ensure!(
        done.number("evicted")? >= 1,
        "`{done}`: the silent flood must have cost idle connections their slot"
    );
    ensure!(
        done.number("flushes")? < done.number("records")?,
        "`{done}`: writers at once must share flushes (group commit)"
    );
    Ok(())
}

/// Power cuts per run of the store's durability loop in `cargo xtask
/// test`; `TAHOMA_KV_CUTS` asks for more (1000 for the long run).
pub const KV_CUTS: u32 = 20;

/// The store on its vblk (`kvstore-durable`): QEMU is killed the moment
/// the guest prints a commit's acknowledgement (`@ kv-acked seq=N`, printed
/// after the flush) while it keeps committing; each next boot must find
/// at least round N (the last acknowledgement printed) with its
/// 3000-byte value intact, on a store reopened
/// from the disk image. Looped [`KV_CUTS`] times.
fn kvstore_acknowledged_commits_survive_power_cuts_on_its_vblk(
    m: &dyn Machine,
) -> Result<(), String> {
    let loops = std::env::var("TAHOMA_KV_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KV_CUTS);
    let mut acked: Option<u64> = None;
    for i in 0..loops {
        let out = m.boot(&BootRequest::scenario("kvstore-durable").kill_on("@ kv-acked seq="))?;
        ensure!(
            out.exit == Exit::Killed,
            "cut {i}: the run ended with {} before an acknowledgement",
            out.exit
        );
        let found = out.facts.guest_one("kv", "kv-found")?;
        let seq = found.number("seq")?;
        ensure!(
            found.get("ok") == Some("1"),
            "cut {i}: `{found}`: the value of round {seq} is damaged"
        );
        // The first boot finds whatever earlier runs left; from the second
        // on, at least the last round acknowledged before the cut (a
        // commit flushed while QEMU was being killed may also be there,
        // its acknowledgement unprinted).
        if let Some(a) = acked {
            ensure!(
                seq >= a,
                "cut {i}: found seq={seq}, but seq={a} was acknowledged before the last cut"
            );
        }
        // The rounds this boot acknowledged (the kill lands on the first;
        // a few more may be printed before QEMU is gone): consecutive
        // from the one after what it found.
        let mut acks: Vec<(u64, &str)> = Vec::new();
        for (_, f) in out
            .facts
            .guest_of_kind("kv-acked")
            .filter(|(n, _)| *n == "kv")
        {
            acks.push((
                f.number("seq").unwrap_or(u64::MAX),
                f.get("seq").unwrap_or(""),
            ));
        }
        // The kill may cut the very last line mid-print: `seq=` with some
        // or all of its digits missing (`seq=48` of 482 parses, so parsing
        // cannot tell). A transcript that does not end in a newline has its
        // last line cut; if that line is an acknowledgement, its digits
        // must be a prefix of the number due, and the commit counts as
        // acknowledged (the guest prints only after the flush).
        let cut_last = !out.transcript.ends_with('\n')
            && out
                .transcript
                .rsplit('\n')
                .next()
                .is_some_and(|l| l.contains("kv-acked"));
        let want = |k: usize| seq + 1 + k as u64;
        let mut last_ok = seq;
        for (k, (n, digits)) in acks.iter().enumerate() {
            let due = want(k);
            let whole = *n == due;
            let torn = cut_last && k + 1 == acks.len() && due.to_string().starts_with(digits);
            ensure!(
                whole || torn,
                "cut {i}: acknowledgement {k} says seq={digits}, due seq={due} after finding seq={seq}"
            );
            last_ok = due;
        }
        ensure!(
            !acks.is_empty(),
            "cut {i}: killed on an acknowledgement, but none is in the transcript"
        );
        acked = Some(last_ok);
    }
    Ok(())
}

/// PUT `key` = `value` on `s`: the status.
fn put(s: &mut TcpStream, key: &str, value: &[u8]) -> Result<u16, String> {
    let mut req = format!(
        "PUT /kv/{key} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        value.len()
    )
    .into_bytes();
    req.extend_from_slice(value);
    Ok(ask(s, &req)?.status)
}

/// GET `key` on `s`: status and body.
fn get(s: &mut TcpStream, key: &str) -> Result<(u16, Vec<u8>), String> {
    let r = ask(s, format!("GET /kv/{key} HTTP/1.1\r\n\r\n").as_bytes())?;
    Ok((r.status, r.body))
}

/// Waits until `/health` answers on `port` (polled every 100 ms), for at
/// most `secs`.
fn wait_for_health_on(port: u16, secs: u64) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::from("never tried");
    while start.elapsed() < Duration::from_secs(secs) {
        // A short wait per try: a connection the forward took before the
        // guest listened waits for the user network's SYN retransmission
        // (seconds); a new one is tried at once.
        let probe = connect_to(port).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .map_err(|e| e.to_string())?;
            ask(&mut s, b"GET /health HTTP/1.1\r\n\r\n")
        });
        match probe {
            Ok(r) if r.status == 200 && r.body == b"ok\n" => return Ok(()),
            Ok(r) => last = format!("status {}", r.status),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "no /health answer on 127.0.0.1:{port} in {secs} s (last: {last})"
    ))
}

/// Undoes `guests/kvclient`'s escaping of a body in a fact value (the
/// fact parser has already undone `\"` and `\\`): `%XX` is byte XX.
fn unpercent(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in `{s}`"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// FNV-1a/64, as `guests/kvclient` reports it for every body.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The numbers of a flat JSON object's `"key":N` members inside `json`'s
/// object named `name` (`"requests":{"200":15,...}`), in order.
fn json_object_numbers(json: &str, name: &str) -> Result<Vec<(String, u64)>, String> {
    let start = json
        .find(&format!("\"{name}\":{{"))
        .ok_or_else(|| format!("no `{name}` object in `{json}`"))?
        + name.len()
        + 4;
    let end = json[start..]
        .find('}')
        .ok_or_else(|| format!("`{name}` object not closed in `{json}`"))?;
    json[start..start + end]
        .split(',')
        .filter(|m| !m.is_empty())
        .map(|m| {
            let (k, v) = m
                .split_once(':')
                .ok_or_else(|| format!("bad member `{m}` in `{json}`"))?;
            let v = v
                .parse()
                .map_err(|_| format!("`{m}`: not a number in `{json}`"))?;
            Ok((k.trim_matches('"').to_string(), v))
        })
        .collect()
}

/// The number of top-level member `"name":N` of `json`.
fn json_number(json: &str, name: &str) -> Result<u64, String> {
    let key = format!("\"{name}\":");
    let start = json
        .find(&key)
        .ok_or_else(|| format!("no `{name}` in `{json}`"))?
        + key.len();
    let digits: String = json[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .map_err(|_| format!("`{name}` is not a number in `{json}`"))
}

/// Persistence through the forward (`kvstore-http`, a fresh image): the
/// first boot PUTs five keys, DELETEs one and stops (POST /quit); the
/// second boot, on the same image, GETs the four live ones with their
/// values, a 404 for the deleted one, and /stats counts four keys
/// recovered from the log.
fn kvstore_http_data_survives_a_restart_through_the_forward(m: &dyn Machine) -> Result<(), String> {
    let _port = crate::hold_port(PORT)?;
    let value = |i: usize| format!("value {i}: {}", "#".repeat(i * 700)).into_bytes();
    let first = std::thread::spawn(move || -> Result<(), String> {
        wait_for_health_on(PORT, 150)?;
        let mut s = connect()?;
        for i in 0..5 {
            let st = put(&mut s, &format!("keep{i}"), &value(i))?;
            ensure!(st == 201, "PUT keep{i}: {st}");
        }
        let r = ask(&mut s, b"DELETE /kv/keep2 HTTP/1.1\r\n\r\n")?;
        ensure!(r.status == 204, "DELETE keep2: {}", r.status);
        let r = ask(&mut s, b"POST /quit HTTP/1.1\r\nContent-Length: 0\r\n\r\n")?;
        ensure!(r.status == 200, "/quit: {}", r.status);
        Ok(())
    });
    let out = m.boot(&BootRequest::scenario("kvstore-http").fresh_disk())?;
    first
        .join()
        .map_err(|_| "the first client panicked".to_string())??;
    ensure!(
        out.exit == Exit::Success,
        "the first run ended with {}",
        out.exit
    );
    let listen = out.facts.guest_one("kv", "kv-listen")?;
    ensure!(
        listen.get("store") == Some("vblk"),
        "`{listen}`: the store must be on the vblk"
    );

    let second = std::thread::spawn(move || -> Result<String, String> {
        wait_for_health_on(PORT, 150)?;
        let mut s = connect()?;
        for i in [0, 1, 3, 4] {
            let (st, body) = get(&mut s, &format!("keep{i}"))?;
            ensure!(
                st == 200 && body == value(i),
                "after the restart, keep{i}: status {st}, {} bytes (want 200 and its {} bytes)",
                body.len(),
                value(i).len()
            );
        }
        let (st, _) = get(&mut s, "keep2")?;
        ensure!(st == 404, "the deleted keep2 after the restart: {st}");
        let stats = String::from_utf8_lossy(&ask(&mut s, b"GET /stats HTTP/1.1\r\n\r\n")?.body)
            .into_owned();
        let r = ask(&mut s, b"POST /quit HTTP/1.1\r\nContent-Length: 0\r\n\r\n")?;
        ensure!(r.status == 200, "/quit: {}", r.status);
        Ok(stats)
    });
    let out = m.boot(&BootRequest::scenario("kvstore-http"))?;
    let stats = second
        .join()
        .map_err(|_| "the second client panicked".to_string())??;
    ensure!(
        out.exit == Exit::Success,
        "the second run ended with {}",
        out.exit
    );
    ensure!(
        json_number(&stats, "keys")? == 4 && json_number(&stats, "recovered_records")? >= 6,
        "stats after the restart: `{stats}` (want 4 keys, the 6 records recovered)"
    );
    Ok(())
}

/// Kill rounds of the HTTP durability loop in `cargo xtask test`;
/// `TAHOMA_KV_HTTP_CUTS` asks for more (docs/kvstore.md: 1000 for the long
/// run).
pub const KV_HTTP_CUTS: u32 = 20;

/// The forward of `kvstore-cuts`.
const CUTS_PORT: u16 = 47100;
/// Writers (connections) at once during a round's PUTs.
const CUT_WRITERS: usize = 4;
/// PUTs per writer per round at most (keeps the store's live data bounded).
const CUT_MAX_PUTS: usize = 100;

/// A xorshift generator: the rounds' kill moments and values.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// The value of a round's key: 1..=1024 bytes, from the key and the round.
fn cut_value(round: u32, key: &str) -> Vec<u8> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(round);
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let len = 1 + (h % 1024) as usize;
    (0..len)
        .map(|_| {
            h = h
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            b'!' + ((h >> 33) % 94) as u8
        })
        .collect()
}

/// What one boot of the loop saw.
struct CutRound {
    /// Keys acknowledged (201) this round, with their values.
    acked: Vec<(String, Vec<u8>)>,
    /// Keys whose PUT was sent but not answered before the kill.
    unsure: Vec<String>,
}

/// One boot's client: checks that every key `expect` holds is there with
/// exactly its value, that every key listed is one this test wrote and
/// /stats agrees, then (unless `last`) writes with [`CUT_WRITERS`]
/// connections as fast as it can and, at a random moment, creates
/// `kill` (xtask kills QEMU then).
fn cut_client(
    round: u32,
    expect: Vec<(String, Vec<u8>)>,
    written: std::collections::BTreeSet<String>,
    kill: std::path::PathBuf,
    delay_ms: u64,
    last: bool,
) -> Result<CutRound, String> {
    wait_for_health_on(CUTS_PORT, 120)?;
    let mut s = connect_to(CUTS_PORT)?;
    // Pipelined GETs, 32 at a time: answers in order.
    for batch in expect.chunks(32) {
        let mut req = Vec::new();
        for (k, _) in batch {
            req.extend_from_slice(format!("GET /kv/{k} HTTP/1.1\r\n\r\n").as_bytes());
        }
        s.write_all(&req).map_err(|e| format!("write: {e}"))?;
        let mut pending = Vec::new();
        for (k, v) in batch {
            let r = read_response(&mut s, &mut pending)?;
            ensure!(
                r.status == 200 && r.body == *v,
                "round {round}: acknowledged `{k}` came back with status {} and {} bytes (want its {} bytes)",
                r.status,
                r.body.len(),
                v.len()
            );
        }
    }
    // Every key listed (one listing per key set: each is below the
    // listing's limit) is one this test wrote.
    let mut keys: Vec<String> = Vec::new();
    for set in 0..4 {
        let r = ask(
            &mut s,
            format!("GET /kv?prefix=c{set}-&limit=1000 HTTP/1.1\r\n\r\n").as_bytes(),
        )?;
        let list = String::from_utf8_lossy(&r.body).into_owned();
        ensure!(
            r.status == 200 && list.ends_with("\"truncated\":false}\n"),
            "round {round}: listing set {set}: status {}, `{list}`",
            r.status
        );
        keys.extend(
            list.trim_start_matches("{\"keys\":[")
                .split("],\"truncated\"")
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|k| !k.is_empty())
                .map(|k| k.trim_matches('"').to_string()),
        );
    }
    for k in &keys {
        ensure!(
            written.contains(k),
            "round {round}: the store lists `{k}`, a key this test never wrote (a corrupt record?)"
        );
    }
    let stats =
        String::from_utf8_lossy(&ask(&mut s, b"GET /stats HTTP/1.1\r\n\r\n")?.body).into_owned();
    ensure!(
        json_number(&stats, "keys")? == keys.len() as u64
            && json_number(&stats, "recovered_records")? >= keys.len() as u64,
        "round {round}: /stats `{stats}` disagrees with the {} keys listed",
        keys.len()
    );
    if last {
        let r = ask(&mut s, b"POST /quit HTTP/1.1\r\nContent-Length: 0\r\n\r\n")?;
        ensure!(r.status == 200, "/quit: {}", r.status);
        return Ok(CutRound {
            acked: Vec::new(),
            unsure: Vec::new(),
        });
    }
    drop(s);
    // Keys cycle over four sets (`c0-..` to `c3-..`): the store's live
    // data stays bounded over any number of rounds.
    let writers: Vec<_> = (0..CUT_WRITERS)
        .map(|w| {
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                let mut unsure = Vec::new();
                let Ok(mut c) = connect_to(CUTS_PORT) else {
                    return (acked, unsure);
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                for j in 0..CUT_MAX_PUTS {
                    let key = format!("c{}-{w}-{j}", round % 4);
                    let value = cut_value(round, &key);
                    match put(&mut c, &key, &value) {
                        Ok(201) => acked.push((key, value)),
                        _ => {
                            unsure.push(key);
                            break;
                        }
                    }
                }
                (acked, unsure)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(delay_ms));
    std::fs::write(&kill, b"cut").map_err(|e| format!("cannot write {}: {e}", kill.display()))?;
    let mut out = CutRound {
        acked: Vec::new(),
        unsure: Vec::new(),
    };
    for w in writers {
        let (a, u) = w.join().map_err(|_| "a writer panicked".to_string())?;
        out.acked.extend(a);
        out.unsure.extend(u);
    }
    Ok(out)
}

/// The kill-QEMU durability loop through the forward (`kvstore-cuts`):
/// each boot first checks that every PUT acknowledged (201) before the
/// last kill is there with exactly its value, that no key it never wrote
/// appears and /stats agrees with the listing; then four host connections
/// PUT distinct keys as fast as they can, and QEMU is killed (SIGKILL) at
/// a random moment 0.05..0.7 s into the writes. [`KV_HTTP_CUTS`] rounds
/// (`TAHOMA_KV_HTTP_CUTS` for more), then a last boot checks and stops.
fn kvstore_http_puts_acknowledged_survive_qemu_kills(m: &dyn Machine) -> Result<(), String> {
    let _port = crate::hold_port(CUTS_PORT)?;
    let rounds = std::env::var("TAHOMA_KV_HTTP_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KV_HTTP_CUTS);
    let kill = std::env::temp_dir().join(format!("tahoma-kv-cut-{}.kill", std::process::id()));
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let first_seed = seed;
    // What the store must hold (acknowledged, not overwritten since), and
    // every key ever written.
    let mut expect: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let mut written: std::collections::BTreeSet<String> = Default::default();
    let (mut total_acked, mut total_unsure) = (0usize, 0usize);
    let mut prev: std::collections::BTreeSet<String> = Default::default();
    let started = Instant::now();
    for round in 0..=rounds {
        let last = round == rounds;
        let delay = 50 + next_rand(&mut seed) % 650;
        // Keys this round may write are "written" before it starts: a PUT
        // cut before its answer may still have landed.
        if !last {
            for w in 0..CUT_WRITERS {
                for j in 0..CUT_MAX_PUTS {
                    written.insert(format!("c{}-{w}-{j}", round % 4));
                }
            }
        }
        // Checked by value: every PUT the last round acknowledged, and a
        // random eighth of the older ones still standing (all of them were
        // checked after their own round's kill).
        let exp: Vec<(String, Vec<u8>)> = expect
            .iter()
            .filter(|(k, _)| prev.contains(*k) || next_rand(&mut seed).is_multiple_of(8))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let wr = written.clone();
        let k = kill.clone();
        let client = std::thread::spawn(move || cut_client(round, exp, wr, k, delay, last));
        let mut req = BootRequest::scenario("kvstore-cuts").kill_file(&kill);
        if round == 0 {
            req = req.fresh_disk();
        }
        let out = m.boot(&req)?;
        let _ = std::fs::remove_file(&kill);
        let seen = client
            .join()
            .map_err(|_| "the host client panicked".to_string())?
            .map_err(|e| format!("{e} (seed {first_seed})"))?;
        let want = if last { Exit::Success } else { Exit::Killed };
        ensure!(
            out.exit == want,
            "round {round}: the run ended with {} (want {want}; seed {first_seed})",
            out.exit
        );
        // A key whose PUT was unanswered may hold the old or the new value:
        // no longer checked by value (it stays in `written`).
        for k in &seen.unsure {
            expect.remove(k);
        }
        total_acked += seen.acked.len();
        prev = seen.acked.iter().map(|(k, _)| k.clone()).collect();
        total_unsure += seen.unsure.len();
        expect.extend(seen.acked);
    }
    let _ = std::fs::remove_file(&kill);
    ensure!(
        total_acked >= rounds as usize,
        "only {total_acked} PUTs acknowledged over {rounds} rounds: the kills landed before the writes"
    );
    println!(
        "    kvstore-cuts: {rounds} kills, {total_acked} PUTs acknowledged (each round's found again by value), {total_unsure} cut in flight, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What the check expects of one answer: step, status, whether the
/// service closes after it, and the body (`None`: not checked here).
type Want = (&'static str, u16, bool, Option<Vec<u8>>);

fn wanted_answers() -> Vec<Want> {
    let text = |s: &str| Some(s.as_bytes().to_vec());
    let apple: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut want: Vec<Want> = vec![
        ("put-apple", 201, false, text("")),
        ("put-pear", 201, false, text("")),
        ("put-veg", 201, false, text("")),
        ("get-pear", 200, false, text("good")),
        ("get-apple", 200, false, Some(apple)),
        (
            "list-fruit",
            200,
            false,
            text("{\"keys\":[\"fruit/apple\",\"fruit/pear\"],\"truncated\":false}\n"),
        ),
        (
            "list-limit",
            200,
            false,
            text("{\"keys\":[\"fruit/apple\"],\"truncated\":true}\n"),
        ),
        ("delete-veg", 204, false, text("")),
        ("delete-veg-again", 404, false, text("Not Found\n")),
        ("get-veg", 404, false, text("Not Found\n")),
        ("health", 200, false, text("ok\n")),
    ];
    const PIPE: [&str; 20] = [
        "pipe-put-0",
        "pipe-get-0",
        "pipe-put-1",
        "pipe-get-1",
        "pipe-put-2",
        "pipe-get-2",
        "pipe-put-3",
        "pipe-get-3",
        "pipe-put-4",
        "pipe-get-4",
        "pipe-put-5",
        "pipe-get-5",
        "pipe-put-6",
        "pipe-get-6",
        "pipe-put-7",
        "pipe-get-7",
        "pipe-put-8",
        "pipe-get-8",
        "pipe-put-9",
        "pipe-get-9",
    ];
    for (i, step) in PIPE.iter().enumerate() {
        if i % 2 == 0 {
            want.push((step, 201, false, text("")));
        } else {
            want.push((step, 200, false, Some(format!("{:02}", i / 2).into_bytes())));
        }
    }
    want.push(("put-65k", 413, true, text("Content Too Large\n")));
    want.push(("malformed", 400, true, text("Bad Request\n")));
    want
}

/// A client guest over the virtual switch (scenario `kvclient`): what
/// `guests/kvclient` observed, answer by answer, in order: every route
/// (PUT 201, GET the value, the prefix list with and without a limit,
/// DELETE 204 then 404), all on one keep-alive connection; ten pipelined
/// PUT/GET pairs on that connection answered in order, each GET seeing the
/// PUT before it; a 65 KiB value refused with 413 and a malformed request
/// line with 400, each followed by the service closing. The service's
/// `/stats`, fetched by the client, must agree: its answers by status are
/// exactly the client's tally, three keys live, one record per write;
/// and the service's own end-of-run counts must include them.
fn kvstore_answers_a_client_guest_over_the_switch(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("kvclient").fresh_disk())?;
    ensure!(
        out.exit == Exit::Success,
        "the run ended with {}, not success",
        out.exit
    );
    if let Some(bad) = out.facts.guest_bad.first() {
        return Err(format!(
            "malformed guest report line {}: `{}`",
            bad.line, bad.text
        ));
    }
    if let Ok(e) = out.facts.guest_one("client", "kvc-error") {
        return Err(format!("the client guest gave up: `{e}`"));
    }
    let answers: Vec<&crate::Fact> = out
        .facts
        .guest_of_kind("kvc-answer")
        .filter(|(n, _)| *n == "client")
        .map(|(_, f)| f)
        .collect();
    let want = wanted_answers();
    let steps: Vec<&str> = answers.iter().filter_map(|f| f.get("step")).collect();
    let want_steps: Vec<&str> = want.iter().map(|w| w.0).collect();
    ensure!(
        steps == want_steps,
        "the client's answers came in this order: {steps:?}; want {want_steps:?}"
    );
    for (f, (step, status, closes, body)) in answers.iter().zip(&want) {
        ensure!(
            f.number("status")? == u64::from(*status),
            "{step}: status {} (want {status}): `{f}`",
            f.number("status")?
        );
        ensure!(
            (f.number("close")? == 1) == *closes,
            "{step}: `Connection: close` {} (want {closes}): `{f}`",
            f.number("close")? == 1
        );
        if *closes {
            ensure!(
                f.number("peer_closed")? == 1,
                "{step}: the service must close the connection after it: `{f}`"
            );
        } else {
            // Every answer that keeps the connection came on the first one.
            ensure!(
                f.number("conn")? == 1,
                "{step}: answered on connection {}, not the first (keep-alive): `{f}`",
                f.number("conn")?
            );
        }
        if let Some(b) = body {
            ensure!(
                f.number("len")? == b.len() as u64 && f.number("fnv")? == fnv(b),
                "{step}: the body is not the one expected ({} bytes): `{f}`",
                b.len()
            );
            if b.len() <= 100 {
                let shown = unpercent(f.get("body").unwrap_or("<none>"))?;
                ensure!(
                    shown == *b,
                    "{step}: body `{}`, want `{}`",
                    String::from_utf8_lossy(&shown),
                    String::from_utf8_lossy(b)
                );
            }
        }
    }
    let pipe = out.facts.guest_one("client", "kvc-pipeline")?;
    ensure!(
        pipe.number("requests")? == 20 && pipe.number("conn")? == 1,
        "`{pipe}`: the pipelined batch must be 20 requests on the keep-alive connection"
    );
    // The client's tally against the expected statuses.
    let tally = out.facts.guest_one("client", "kvc-tally")?;
    let mut counted = std::collections::BTreeMap::<String, u64>::new();
    for (_, status, _, _) in &want {
        *counted.entry(status.to_string()).or_default() += 1;
    }
    for (status, n) in &counted {
        ensure!(
            tally.number(status)? == *n,
            "`{tally}`: want {n} answers with status {status}"
        );
    }
    for f in &tally.fields {
        ensure!(
            f.key == "connections" || counted.contains_key(&f.key),
            "`{tally}`: the client received answers with status {} (none expected)",
            f.key
        );
    }
    // /stats, as the client received it, in parts.
    let stats = out.facts.guest_one("client", "kvc-stats")?;
    ensure!(stats.number("status")? == 200, "`{stats}`: /stats failed");
    let mut body = Vec::new();
    for (i, (_, p)) in out
        .facts
        .guest_of_kind("kvc-stats-part")
        .filter(|(n, _)| *n == "client")
        .enumerate()
    {
        ensure!(
            p.number("n")? == i as u64,
            "`{p}`: /stats parts out of order"
        );
        body.extend(unpercent(p.get("body").unwrap_or_default())?);
    }
    ensure!(
        body.len() as u64 == stats.number("len")?,
        "/stats: {} bytes in its parts, `{stats}` says {}",
        body.len(),
        stats.number("len")?
    );
    let json = String::from_utf8(body).map_err(|_| "/stats is not UTF-8".to_string())?;
    let requests = json_object_numbers(&json, "requests")?;
    let served: std::collections::BTreeMap<String, u64> = requests.into_iter().collect();
    ensure!(
        served == counted,
        "/stats counts answers {served:?}; the client received {counted:?}"
    );
    // Live keys: fruit/apple, fruit/pear, p (veg deleted, big refused);
    // 13 PUTs and a DELETE acknowledged: 14 records.
    ensure!(
        json_number(&json, "keys")? == 3 && json_number(&json, "records")? == 14,
        "/stats: want 3 keys and 14 records: `{json}`"
    );
    let quit = out.facts.guest_one("client", "kvc-quit")?;
    ensure!(quit.number("status")? == 200, "`{quit}`: /quit refused");
    // The service's own end-of-run count: the client's answers plus the
    // ones to /stats and /quit.
    let done = out.facts.guest_one("kv", "kv-done")?;
    for (status, extra) in [
        ("200", 2u64),
        ("201", 0),
        ("204", 0),
        ("400", 0),
        ("404", 0),
        ("413", 0),
    ] {
        let want = counted.get(status).copied().unwrap_or(0) + extra;
        ensure!(
            done.number(status)? == want,
            "`{done}`: the service counts {} answers with status {status}; want {want}",
            done.number(status)?
        );
    }
    ensure!(
        done.number("accepted")? == tally.number("connections")? + 1,
        "`{done}`: the service accepted a different number of connections than the client opened (`{tally}` + 1 for /stats)"
    );
    for name in ["kv", "client"] {
        let e = out
            .facts
            .of_kind("domain-exit")
            .find(|f| f.get("name") == Some(name))
            .ok_or_else(|| format!("no `@ domain-exit` for `{name}`"))?;
        ensure!(
            e.get("reason") == Some("poweroff") && e.number("code")? == 0,
            "`{e}`: expected reason=poweroff code=0"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! `kvstore_answers_a_client_guest_over_the_switch` against a canned
    //! transcript (a real run's facts): it passes on it and fails on each
    //! defect a broken service or client would show.

    use super::*;
    use crate::BootOutcome;

    struct Canned(String);

    impl Machine for Canned {
        fn boot(&self, req: &BootRequest) -> Result<BootOutcome, String> {
            assert_eq!(req.scenario, "kvclient");
            Ok(BootOutcome::new(Exit::Success, Some(33), self.0.clone()))
        }
    }

    /// The facts of a `cargo xtask run kvclient` (2026-12-01).
    const RUN: &str = r#"[client] @ kvc-answer step=put-apple conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=put-pear conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=put-veg conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=get-pear conn=1 status=200 close=0 len=4 fnv=0x9ce4d6720e9c9118 body="good"
[client] @ kvc-answer step=get-apple conn=1 status=200 close=0 len=1000 fnv=0xe81c9c635bfcf6f1 body=""
[client] @ kvc-answer step=list-fruit conn=1 status=200 close=0 len=56 fnv=0x58fb3507554f3c78 body="{\"keys\":[\"fruit/apple\",\"fruit/pear\"],\"truncated\":false}%0A"
[client] @ kvc-answer step=list-limit conn=1 status=200 close=0 len=42 fnv=0xb486abcdaec9a606 body="{\"keys\":[\"fruit/apple\"],\"truncated\":true}%0A"
[client] @ kvc-answer step=delete-veg conn=1 status=204 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=delete-veg-again conn=1 status=404 close=0 len=10 fnv=0x8852fb94e9f40750 body="Not Found%0A"
[client] @ kvc-answer step=get-veg conn=1 status=404 close=0 len=10 fnv=0x8852fb94e9f40750 body="Not Found%0A"
[client] @ kvc-answer step=health conn=1 status=200 close=0 len=3 fnv=0x1a19f91921d9561f body="ok%0A"
[client] @ kvc-pipeline conn=1 requests=20 bytes=650
[client] @ kvc-answer step=pipe-put-0 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-0 conn=1 status=200 close=0 len=2 fnv=0x07fc1807b4bd222d body="00"
[client] @ kvc-answer step=pipe-put-1 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-1 conn=1 status=200 close=0 len=2 fnv=0x07fc1707b4bd207a body="01"
[client] @ kvc-answer step=pipe-put-2 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-2 conn=1 status=200 close=0 len=2 fnv=0x07fc1607b4bd1ec7 body="02"
[client] @ kvc-answer step=pipe-put-3 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-3 conn=1 status=200 close=0 len=2 fnv=0x07fc1507b4bd1d14 body="03"
[client] @ kvc-answer step=pipe-put-4 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-4 conn=1 status=200 close=0 len=2 fnv=0x07fc1407b4bd1b61 body="04"
[client] @ kvc-answer step=pipe-put-5 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-5 conn=1 status=200 close=0 len=2 fnv=0x07fc1307b4bd19ae body="05"
[client] @ kvc-answer step=pipe-put-6 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-6 conn=1 status=200 close=0 len=2 fnv=0x07fc1207b4bd17fb body="06"
[client] @ kvc-answer step=pipe-put-7 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-7 conn=1 status=200 close=0 len=2 fnv=0x07fc1107b4bd1648 body="07"
[client] @ kvc-answer step=pipe-put-8 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-8 conn=1 status=200 close=0 len=2 fnv=0x07fc1007b4bd1495 body="08"
[client] @ kvc-answer step=pipe-put-9 conn=1 status=201 close=0 len=0 fnv=0xcbf29ce484222325 body=""
[client] @ kvc-answer step=pipe-get-9 conn=1 status=200 close=0 len=2 fnv=0x07fc0f07b4bd12e2 body="09"
[client] @ kvc-answer step=put-65k conn=2 status=413 close=1 len=18 fnv=0x399586a1868d494b peer_closed=1 body="Content Too Large%0A"
[client] @ kvc-answer step=malformed conn=3 status=400 close=1 len=12 fnv=0x265ca9cc9ff89629 peer_closed=1 body="Bad Request%0A"
[client] @ kvc-tally 200=15 201=13 204=1 400=1 404=2 413=1 connections=3
[client] @ kvc-stats conn=4 status=200 len=235 parts=3
[client] @ kvc-stats-part n=0 body="{\"keys\":3,\"bytes\":1006,\"log_bytes\":8192,\"dead_bytes\":111,\"batches\":14,\"records\":14,\"flushes\":14,\"com"
[client] @ kvc-stats-part n=1 body="pactions\":0,\"recovered_records\":0,\"dropped_tail\":false,\"uptime_ms\":249,\"requests\":{\"200\":15,\"201\":13"
[client] @ kvc-stats-part n=2 body=",\"204\":1,\"400\":1,\"404\":2,\"413\":1}}%0A"
[client] @ kvc-quit status=200
@ domain-exit id=3 name="client" reason=poweroff code=0 hypercalls=267
[kv] @ kv-done accepted=4 evicted=0 keys=3 records=14 batches=14 flushes=14 200=17 201=13 204=1 400=1 404=2 408=0 413=1 431=0
@ domain-exit id=2 name="kv" reason=poweroff code=0 hypercalls=225
@ domain-exit id=1 name="netback" reason=scenario-end code=0 hypercalls=452
@ exit status=success
"#;

    #[test]
    fn passes_on_a_good_run() {
        assert_eq!(
            kvstore_answers_a_client_guest_over_the_switch(&Canned(RUN.into())),
            Ok(())
        );
    }

    #[test]
    fn fails_on_each_defect() {
        let cases: &[(&str, &str, &str)] = &[
            // A pipelined GET that did not see the PUT before it.
            (
                "len=2 fnv=0x07fc1507b4bd1d14 body=\"03\"",
                "len=2 fnv=0x07fc1607b4bd1ec7 body=\"02\"",
                "pipe-get-3",
            ),
            // Answers out of order.
            ("step=pipe-put-4", "step=pipe-get-4x", "order"),
            // A new connection for a step that must be keep-alive.
            ("step=health conn=1", "step=health conn=2", "keep-alive"),
            // The 413 without the close.
            (
                "status=413 close=1",
                "status=413 close=0",
                "Connection: close",
            ),
            (
                "peer_closed=1 body=\"Bad",
                "peer_closed=0 body=\"Bad",
                "must close",
            ),
            // A wrong body shown, and a wrong long body (by FNV).
            ("body=\"good\"", "body=\"gooD\"", "get-pear"),
            (
                "len=1000 fnv=0xe81c9c635bfcf6f1",
                "len=1000 fnv=0xe81c9c635bfcf6f2",
                "get-apple",
            ),
            // /stats disagreeing with what the client received.
            ("\\\"404\\\":2", "\\\"404\\\":3", "/stats counts"),
            ("{\\\"keys\\\":3", "{\\\"keys\\\":4", "3 keys"),
            ("n=1 body", "n=2 body", "out of order"),
            // The tally off by one, or with an unexpected status.
            ("@ kvc-tally 200=15", "@ kvc-tally 200=14", "status 200"),
            (
                "413=1 connections",
                "413=1 500=1 connections",
                "none expected",
            ),
            // The service's own counts.
            ("accepted=4", "accepted=5", "connections"),
            ("flushes=14 200=17", "flushes=14 200=16", "status 200"),
            ("@ kvc-quit status=200", "@ kvc-quit status=404", "/quit"),
            (
                "name=\"kv\" reason=poweroff code=0",
                "name=\"kv\" reason=poweroff code=1",
                "code=0",
            ),
        ];
        for (from, to, why) in cases {
            assert!(RUN.contains(from), "the canned run has no `{from}`");
            let err =
                kvstore_answers_a_client_guest_over_the_switch(&Canned(RUN.replace(from, to)))
                    .expect_err(from);
            assert!(err.contains(why), "{from} -> {to}: {err}");
        }
        let err = kvstore_answers_a_client_guest_over_the_switch(&Canned(format!(
            "{RUN}[client] @ kvc-error what=\"no answer\"\n"
        )))
        .unwrap_err();
        assert!(err.contains("gave up"), "{err}");
    }
}

#[cfg(test)]
mod power_cut_tests {
    //! `kvstore_acknowledged_commits_survive_power_cuts_on_its_vblk` against
    //! canned boots: a last acknowledgement cut mid-print (no newline) is
    //! accepted only if its digits begin the number due; a whole line must
    //! be exactly the number due; a next boot must find the last one.

    use super::*;
    use crate::BootOutcome;
    use std::cell::RefCell;

    /// Hands out one canned transcript per boot; an error once they run out.
    struct Boots(RefCell<Vec<String>>);

    impl Machine for Boots {
        fn boot(&self, req: &BootRequest) -> Result<BootOutcome, String> {
            assert_eq!(req.scenario, "kvstore-durable");
            let mut b = self.0.borrow_mut();
            if b.is_empty() {
                return Err("no more canned boots".into());
            }
            Ok(BootOutcome::new(Exit::Killed, None, b.remove(0)))
        }
    }

    fn boot(found: u64, acks: &str) -> String {
        format!("[kv] @ kv-found seq={found} ok=1 keys=1 recovered=1 dropped_tail=0 log_bytes=1\n{acks}")
    }

    /// Runs the test over `boots` (it boots `KV_CUTS` times).
    fn run(boots: Vec<String>) -> Result<(), String> {
        kvstore_acknowledged_commits_survive_power_cuts_on_its_vblk(&Boots(RefCell::new(boots)))
    }

    #[test]
    fn a_cut_last_line_counts_only_as_a_prefix_of_the_number_due() {
        // Boot 1 finds 47, acknowledges 48 and a cut `4` (of 49); later
        // boots find 49 and acknowledge nothing new but a cut `5` (of 50)
        // — then find 50.
        let good = vec![
            boot(47, "[kv] @ kv-acked seq=48\n[kv] @ kv-acked seq=4"),
            boot(49, "[kv] @ kv-acked seq=5"),
        ];
        let mut boots = good.clone();
        for _ in 2..KV_CUTS {
            boots.push(boot(50, "[kv] @ kv-acked seq=51\n"));
        }
        // Every boot after the third finds 50 while 51 was acknowledged:
        // a loss, which must fail.
        assert!(run(boots).is_err(), "a lost acknowledged commit must fail");
        let mut boots = good;
        for f in (50..).take(KV_CUTS as usize - 2) {
            boots.push(boot(f, &format!("[kv] @ kv-acked seq={}\n", f + 1)));
        }
        run(boots).expect("cut last lines that begin the number due pass");
    }

    #[test]
    fn a_whole_line_or_a_cut_line_with_other_digits_fails() {
        // `seq=48` printed whole where 482 is due: not a cut, a wrong number.
        let whole = vec![boot(
            480,
            "[kv] @ kv-acked seq=481\n[kv] @ kv-acked seq=48\n",
        )];
        assert!(run(whole).is_err());
        // Cut, but `5` does not begin 482.
        let cut = vec![boot(480, "[kv] @ kv-acked seq=481\n[kv] @ kv-acked seq=5")];
        assert!(run(cut).is_err());
        // A boot killed on an acknowledgement that shows none.
        let none = vec![boot(480, "")];
        assert!(run(none).is_err());
    }
}
