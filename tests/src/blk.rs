//! Virtual block devices end to end (issue 9; `docs/io.md`, `BLK-*`): a
//! driver domain (`guests/blkback`) serving frontends (`guests/vblktest`)
//! from a virtio-blk disk image that persists across boots. Each test
//! judges what the guests observed and what the hypervisor reported.
//! The protocol's clauses themselves are the `blk-conf` conformance run.

use crate::{BootOutcome, BootRequest, Exit, Fact, Machine, ScenarioTest};

/// The block-device scenario tests.
pub fn tests() -> Vec<ScenarioTest> {
    vec![
        ScenarioTest {
            name: "vblk_pattern_survives_a_qemu_restart",
            run: vblk_pattern_survives_a_qemu_restart,
        },
        ScenarioTest {
            name: "vblk_extents_of_two_guests_are_isolated",
            run: vblk_extents_of_two_guests_are_isolated,
        },
        ScenarioTest {
            name: "vblk_acknowledged_flush_survives_a_power_cut",
            run: vblk_acknowledged_flush_survives_a_power_cut,
        },
        ScenarioTest {
            name: "vblk_driver_domain_death_fails_requests_not_hangs",
            run: vblk_driver_domain_death_fails_requests_not_hangs,
        },
    ]
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Power cuts per run of the flush test in `cargo xtask test`; the
/// environment variable `TAHOMA_FLUSH_LOOPS` asks for more (docs/testing.md:
/// 1000 for the long run).
pub const FLUSH_LOOPS: u32 = 20;

fn audited(out: &BootOutcome) -> Result<(), String> {
    if let Some(bad) = out.facts.bad.first() {
        return Err(format!(
            "malformed report line {}: `{}`",
            bad.line, bad.text
        ));
    }
    let a = out.facts.one("audit")?;
    ensure!(
        a.get("status") == Some("ok"),
        "`{a}`: the frame audit failed"
    );
    Ok(())
}

fn succeeded(out: &BootOutcome) -> Result<(), String> {
    audited(out)?;
    ensure!(
        out.exit == Exit::Success,
        "the run ended with {}, not success",
        out.exit
    );
    Ok(())
}

/// The one `@ vblk` fact of `guest` that has `key`.
fn vblk<'a>(out: &'a BootOutcome, guest: &str, key: &str) -> Result<&'a Fact, String> {
    let all: Vec<&Fact> = out
        .facts
        .guest_of_kind("vblk")
        .filter(|(n, f)| *n == guest && f.get(key).is_some())
        .map(|(_, f)| f)
        .collect();
    match all.as_slice() {
        [f] => Ok(f),
        _ => Err(format!(
            "want exactly one `@ vblk ... {key}=` from {guest}, got {all:?}"
        )),
    }
}

/// A pattern written and flushed by one boot reads back in the next: the
/// second boot finds the first boot's nonce and its 16 data pages intact.
fn vblk_pattern_survives_a_qemu_restart(m: &dyn Machine) -> Result<(), String> {
    let first = m.boot(&BootRequest::scenario("blk-persist"))?;
    succeeded(&first)?;
    let wrote = vblk(&first, "keeper", "nonce")?.number("nonce")?;
    let second = m.boot(&BootRequest::scenario("blk-persist"))?;
    succeeded(&second)?;
    let found = vblk(&second, "keeper", "found")?;
    ensure!(
        found.get("found") == Some(wrote.to_string().as_str()) && found.get("ok") == Some("1"),
        "`{found}`: the second boot must find nonce {wrote} with its pattern intact"
    );
    Ok(())
}

/// Two guests fill adjacent extents and read them back: each sees only its
/// own pattern, and a read past its end is `out_of_range` with its buffer
/// untouched.
fn vblk_extents_of_two_guests_are_isolated(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("blk-two"))?;
    succeeded(&out)?;
    for g in ["a", "b"] {
        let f = vblk(&out, g, "sectors")?;
        ensure!(
            f.get("ok") == Some("1") && f.get("sectors") == Some("1024"),
            "`{f}` from {g}: want ok=1 over its 1024 sectors"
        );
    }
    Ok(())
}

/// The power cut: QEMU is killed the moment the guest prints the flush's
/// acknowledgement (while it keeps writing), and the next boot must find
/// that sequence number with its data. Looped [`FLUSH_LOOPS`] times (more
/// with `TAHOMA_FLUSH_LOOPS`).
fn vblk_acknowledged_flush_survives_a_power_cut(m: &dyn Machine) -> Result<(), String> {
    let loops = std::env::var("TAHOMA_FLUSH_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FLUSH_LOOPS);
    let mut acked: Option<u64> = None;
    for i in 0..loops {
        let out = m.boot(&BootRequest::scenario("blk-flush").kill_on("@ vblk acked="))?;
        ensure!(
            out.exit == Exit::Killed,
            "cut {i}: the run ended with {} before the acknowledgement",
            out.exit
        );
        let found = vblk(&out, "writer", "found")?;
        let seq = found.number("found")?;
        // The first boot finds whatever runs before this test left (an
        // older build, a run cut anywhere); from the second on, it must be
        // exactly what was acknowledged, data and all.
        if let Some(a) = acked {
            ensure!(
                found.get("ok") == Some("1"),
                "cut {i}: `{found}`: the data of acknowledged seq={a} is damaged"
            );
            ensure!(
                seq == a,
                "cut {i}: found seq={seq}, but seq={a} was acknowledged before the last cut"
            );
        }
        let ack = vblk(&out, "writer", "acked")?.number("acked")?;
        ensure!(
            ack == seq + 1,
            "cut {i}: acknowledged seq={ack} after finding {seq}"
        );
        acked = Some(ack);
    }
    Ok(())
}

/// The driver domain dies after 150 requests while a frontend keeps
/// writing: the frontend's next request fails (disconnected), it reports
/// and ends; the device was reset before the driver's frames went back,
/// and the audit is clean.
fn vblk_driver_domain_death_fails_requests_not_hangs(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("blk-drvkill"))?;
    succeeded(&out)?;
    let dying = out.facts.guest_one("drv", "blk-dying")?;
    ensure!(dying.number("served")? >= 150, "`{dying}`: died too early");
    let load = vblk(&out, "user", "ops")?;
    ensure!(
        load.get("disconnected") == Some("1") && load.get("errors") == Some("0"),
        "`{load}`: want the frontend disconnected, with no other error"
    );
    ensure!(
        load.number("ops")? >= 50,
        "`{load}`: the frontend did too little before the death"
    );
    let reset = out.facts.one("device-reset")?;
    ensure!(
        reset.get("status") == Some("0") && reset.get("masked") == Some("1"),
        "`{reset}`: the device must be reset and its line masked"
    );
    Ok(())
}
