//! Scenario tests of the virtual network (`docs/network.md`): guests on the
//! SDK's vNIC through the switch in a network driver domain, the host
//! through QEMU's forward and gateway, and hostile frontends contained
//! (moved out of `guests.rs` unchanged).

use crate::guests::{ensure, powered_off_cleanly, succeeded_and_audited};
use crate::{BootOutcome, BootRequest, Machine, ScenarioTest};

/// The network scenario tests, in the order `guests::tests` lists them.
pub fn tests() -> Vec<ScenarioTest> {
    vec![
        ScenarioTest {
            name: "net_guests_ping_and_move_a_mebibyte_over_tcp",
            run: net_guests_ping_and_move_a_mebibyte_over_tcp,
        },
        ScenarioTest {
            name: "host_reaches_a_guest_through_a_forwarded_port",
            run: host_reaches_a_guest_through_a_forwarded_port,
        },
        ScenarioTest {
            name: "a_guest_reaches_the_host_through_the_gateway",
            run: a_guest_reaches_the_host_through_the_gateway,
        },
        ScenarioTest {
            name: "a_hostile_vnic_frontend_is_contained",
            run: a_hostile_vnic_frontend_is_contained,
        },
        ScenarioTest {
            name: "one_driver_domain_contains_a_hostile_vblk_and_a_hostile_vnic",
            run: one_driver_domain_contains_a_hostile_vblk_and_a_hostile_vnic,
        },
    ]
}

/// Networking (`docs/network.md`): two guests running smoltcp on the SDK's
/// vNIC reach each other through the switch in the network driver domain:
/// the client's three pings are answered, and the 1 MiB it sends over TCP
/// arrives whole (the server's length and checksum, computed on the far
/// side, equal the client's); QEMU ran with the user network and the
/// virtio-net device delegated to `netback`; the run ends audited.
fn net_guests_ping_and_move_a_mebibyte_over_tcp(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("net-tcp"))?;
    succeeded_and_audited(&out)?;
    for name in ["server", "client"] {
        powered_off_cleanly(&out, name)?;
    }
    let ping = out.facts.guest_one("client", "ping")?;
    ensure!(
        ping.number("sent")? == 3 && ping.number("replies")? == 3,
        "`{ping}`: every echo request must be answered"
    );
    let server = out.facts.guest_one("server", "tcp-server")?;
    let client = out.facts.guest_one("client", "tcp-client")?;
    ensure!(
        server.number("bytes")? == 1 << 20 && server.number("done")? == 1,
        "`{server}`: the server must receive 1 MiB and close cleanly"
    );
    ensure!(
        client.number("bytes")? == 1 << 20
            && client.get("sum").is_some()
            && client.get("sum") == server.get("sum")
            && client.get("server_sum") == server.get("sum")
            && client.number("match")? == 1,
        "the checksums differ: client `{client}`, server `{server}`"
    );
    let dev = out.facts.one("device")?;
    ensure!(
        dev.get("dom") == Some("1") && dev.get("virtio_id") == Some("1"),
        "`{dev}`: the virtio-net device must be delegated to netback (domain 1)"
    );
    ensure!(
        out.facts.of_kind("vnic").count() == 4,
        "want 4 `@ vnic` lines (two vNICs, two ends each)"
    );
    let log = out
        .log
        .as_ref()
        .ok_or("no serial log to find QEMU's command line in")?;
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let cmd = text.lines().next().unwrap_or_default();
    ensure!(
        cmd.contains("-netdev user,id=n0,net=10.0.2.0/24")
            && cmd.contains("-device virtio-net-device,netdev=n0"),
        "QEMU ran without the network: `{cmd}`"
    );
    Ok(())
}

/// The host port `net-host.toml` forwards to `server`:80.
const FORWARDED_PORT: u16 = 47080;
/// Bytes the host sends the guest.
const HOST_BYTES: usize = 256 * 1024;

/// FNV-1a/64, as `guests/tcptest` computes it.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One attempt of a host client of `guests/tcptest`'s server through a
/// forward on 127.0.0.1:`port`: connect, send `data`, close the write side,
/// read the server's 16-byte answer (length, checksum). The bench's
/// `bench-net-host` uses it too.
pub fn host_client_once(port: u16, data: &[u8]) -> Result<[u8; 16], String> {
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpStream};
    use std::time::Duration;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(data).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut answer = [0u8; 16];
    s.read_exact(&mut answer)
        .map_err(|e| format!("read the answer: {e}"))?;
    Ok(answer)
}

/// Networking from the host (`docs/network.md`): the test itself connects
/// to 127.0.0.1:47080, which QEMU forwards through the uplink and the
/// switch in `netback` to the guest `server` (smoltcp on the SDK's vNIC),
/// sends 256 KiB and reads back the length and checksum the guest computed:
/// they must equal its own. The guest reports the same; the run ends
/// audited. (Attempts before the guest listens are refused and retried.)
fn host_reaches_a_guest_through_a_forwarded_port(m: &dyn Machine) -> Result<(), String> {
    let _port = crate::hold_port(FORWARDED_PORT)?;
    let data: Vec<u8> = (0..HOST_BYTES).map(|i| (i * 7 + (i >> 8)) as u8).collect();
    let want_sum = fnv(&data);
    let client = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let mut last = String::from("never tried");
        while start.elapsed() < std::time::Duration::from_secs(120) {
            match host_client_once(FORWARDED_PORT, &data) {
                Ok(a) => return Ok(a),
                Err(e) => last = e,
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        Err(format!(
            "no answer through the forward in 120 s (last: {last})"
        ))
    });
    let out = m.boot(&BootRequest::scenario("net-host"))?;
    let answer = client
        .join()
        .map_err(|_| "the host client panicked".to_string())??;
    succeeded_and_audited(&out)?;
    powered_off_cleanly(&out, "server")?;
    let len = u64::from_le_bytes(answer[..8].try_into().unwrap_or([0; 8]));
    let sum = u64::from_le_bytes(answer[8..].try_into().unwrap_or([0; 8]));
    ensure!(
        len == HOST_BYTES as u64 && sum == want_sum,
        "the guest answered {len} bytes, checksum {sum:#x}; the host sent {HOST_BYTES}, checksum {want_sum:#x}"
    );
    let server = out.facts.guest_one("server", "tcp-server")?;
    ensure!(
        server.number("bytes")? == HOST_BYTES as u64
            && server.get("sum") == Some(format!("{want_sum:#018x}").as_str()),
        "`{server}`: the guest must report the host's bytes and checksum"
    );
    let log = out
        .log
        .as_ref()
        .ok_or("no serial log to find QEMU's command line in")?;
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let cmd = text.lines().next().unwrap_or_default();
    ensure!(
        cmd.contains("hostfwd=tcp:127.0.0.1:47080-10.0.2.10:80") && !cmd.contains("hostfwd=tcp::"),
        "the forward must be bound to 127.0.0.1 only: `{cmd}`"
    );
    Ok(())
}

/// The port the test listens on for `net-out.toml`'s client.
const HOST_SERVER_PORT: u16 = 47081;

/// Networking out of a guest (`docs/network.md`): the test listens on
/// 127.0.0.1:47081; the guest `client` (smoltcp on the SDK's vNIC) connects
/// to 10.0.2.2:47081, QEMU's gateway, through the switch and the uplink,
/// sends 256 KiB and closes its side; the test answers with the length and
/// checksum it received, which the guest compares with its own and
/// reports. The test checks the bytes it got too.
fn a_guest_reaches_the_host_through_the_gateway(m: &dyn Machine) -> Result<(), String> {
    use std::io::{Read, Write};
    let _port = crate::hold_port(HOST_SERVER_PORT)?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", HOST_SERVER_PORT))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{HOST_SERVER_PORT}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let start = std::time::Instant::now();
        let (mut s, _) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > std::time::Duration::from_secs(120) {
                        return Err("no connection from the guest in 120 s".into());
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .map_err(|e| format!("read from the guest: {e}"))?;
        let mut answer = (got.len() as u64).to_le_bytes().to_vec();
        answer.extend_from_slice(&fnv(&got).to_le_bytes());
        s.write_all(&answer)
            .map_err(|e| format!("answer the guest: {e}"))?;
        Ok(got)
    });
    let out = m.boot(&BootRequest::scenario("net-out"))?;
    let got = server
        .join()
        .map_err(|_| "the host server panicked".to_string())??;
    succeeded_and_audited(&out)?;
    powered_off_cleanly(&out, "client")?;
    let want: Vec<u8> = (0..262_144usize)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect();
    ensure!(
        got == want,
        "the host received {} bytes, not the guest's 262144-byte pattern",
        got.len()
    );
    let c = out.facts.guest_one("client", "tcp-client")?;
    ensure!(
        c.number("match")? == 1 && c.number("server_bytes")? == 262_144,
        "`{c}`: the guest must see the host's answer match what it sent"
    );
    Ok(())
}

/// Containment (`docs/network.md`, NET-2..4): while `hostile` floods
/// broadcasts, rewrites TX requests after publishing them (only the
/// published frame may reach `observer`), sends malformed and ungranted
/// TX requests, never consumes its RX ring, publishes a producer index past its ring and storms the
/// driver with events, `client` and `server` (smoltcp) complete 3 pings and
/// a 4 MiB TCP transfer whose checksum matches on the far side. The driver
/// refused the malformed requests, disconnected only the hostile ring, and
/// kept running; the run ends audited.
fn a_hostile_vnic_frontend_is_contained(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("net-hostile"))?;
    hostile_vnic_contained(&out, "netback")
}

/// The checks of [`a_hostile_vnic_frontend_is_contained`] on a run whose
/// network driver domain is the guest `driver`.
fn hostile_vnic_contained(out: &BootOutcome, driver: &str) -> Result<(), String> {
    succeeded_and_audited(out)?;
    for name in ["server", "client", "hostile", "observer"] {
        powered_off_cleanly(out, name)?;
    }
    let h = out.facts.guest_one("hostile", "hostile")?;
    ensure!(
        h.number("flood_ok")? > 0 && h.number("refused")? > 0 && h.number("storms")? > 1000,
        "`{h}`: the hostile guest must have flooded, been refused and stormed"
    );
    // TX requests rewritten after they were published (slot size over the
    // MTU, bytes from a foreign source, and back): the driver acted on
    // either version (both must have happened), and only the validated,
    // published frame ever reached the observer, byte for byte.
    let seen = out.facts.guest_one("observer", "observer")?;
    let (ok, refused) = (h.number("rewrite_ok")?, h.number("rewrite_refused")?);
    ensure!(
        ok > 0 && refused > 0,
        "`{h}`: the driver must have answered rewritten requests both ways"
    );
    ensure!(
        seen.number("bad")? == 0 && seen.number("good")? > 0 && seen.number("good")? <= ok,
        "`{seen}` (hostile: `{h}`): a rewritten request's bytes reached the observer, \
         or none of the accepted frames did"
    );
    let cut = out.facts.guest_one(driver, "vnic-disconnected")?;
    ensure!(
        cut.get("dom") == Some("4") && cut.number("tx")? == 1,
        "`{cut}`: only the hostile guest's (domain 4) TX ring must be cut"
    );
    let ping = out.facts.guest_one("client", "ping")?;
    ensure!(
        ping.number("replies")? == 3,
        "`{ping}`: the pings must be answered beside the hostile guest"
    );
    let server = out.facts.guest_one("server", "tcp-server")?;
    let client = out.facts.guest_one("client", "tcp-client")?;
    ensure!(
        client.number("match")? == 1
            && client.number("bytes")? == 4 << 20
            && server.number("bytes")? == 4 << 20
            && client.get("sum") == server.get("sum"),
        "the stream beside the hostile guest broke: client `{client}`, server `{server}`"
    );
    ensure!(
        !out.facts
            .of_kind("domain-exit")
            .any(|f| f.get("name") == Some(driver) && f.get("reason") != Some("scenario-end")),
        "the driver domain must run to the end of the scenario"
    );
    Ok(())
}

/// One driver domain for disk and network (`drv-hostile`, `guests/driverdom`):
/// a hostile vNIC frontend and a hostile vblk frontend attack it at once.
/// The network side is judged as in [`a_hostile_vnic_frontend_is_contained`]
/// (the TCP stream beside the attacks completes with its checksum); the disk
/// side as the block conformance run judges it: every clause `vconf` checks
/// passes (bad requests, bad grants, rewritten requests, a flood, an
/// overrun ring: BLK-*, RING-*), the overrun ring alone is disconnected,
/// and `peer`'s 1500 operations all succeed. Neither attack stalls the
/// other device: both sets of clients finish within the run.
fn one_driver_domain_contains_a_hostile_vblk_and_a_hostile_vnic(
    m: &dyn Machine,
) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("drv-hostile"))?;
    hostile_vnic_contained(&out, "drv")?;
    let clauses: Vec<_> = out
        .facts
        .guest_of_kind("conformance")
        .filter(|(n, _)| *n == "vconf")
        .map(|(_, f)| f)
        .collect();
    ensure!(
        clauses.len() == 20,
        "want the 20 block clauses from vconf, got {}",
        clauses.len()
    );
    for c in &clauses {
        ensure!(
            c.get("outcome") == Some("pass"),
            "`{c}`: a block clause failed against the combined driver domain"
        );
    }
    // vconf's disk 2 for its overrun (RING-5), its disk 1 after it closed
    // the port (BLK-7); no other ring.
    let cuts: Vec<String> = out
        .facts
        .guest_of_kind("blk-disconnected")
        .filter(|(n, _)| *n == "drv")
        .map(|(_, f)| {
            format!(
                "{}/{}",
                f.get("frontend").unwrap_or("?"),
                f.get("disk").unwrap_or("?")
            )
        })
        .collect();
    let mut sorted = cuts.clone();
    sorted.sort();
    ensure!(
        sorted == ["vconf/1", "vconf/2"],
        "disconnected rings {cuts:?}: want exactly vconf's disks 1 and 2"
    );
    let load = out.facts.guest_one("peer", "vblk")?;
    ensure!(
        load.number("ops")? == 1500
            && load.number("errors")? == 0
            && load.number("disconnected")? == 0,
        "`{load}`: the peer's I/O beside the hostile frontends"
    );
    for name in ["vconf", "peer"] {
        powered_off_cleanly(&out, name)?;
    }
    Ok(())
}
