//! `cargo xtask bench`: boots the `bench*` scenarios under TCG with
//! `-icount shift=0` (every guest `rdtsc` delta is then a count of guest
//! instructions, the same run after run), collects the guests'
//! `@ bench ...` facts and the hypervisor's `@ domain-first-hypercall`
//! report, and prints one table with the reference each figure should be
//! compared with (the anchors table of `docs/benchmarks.md`: Linux and Xen
//! PV measured on the same emulator).
//!
//! With `--wall` it also measures host baselines (getpid, a pipe ping-pong
//! between two processes, spawning a process) and boots the scenarios again
//! without `-icount`; those guest figures are shown only as ratios to the
//! host baselines of the same run, because wall time under TCG is noisy and
//! says little about real hardware.
//!
//! Benchmarks are not tests: `cargo xtask test` never runs them.

use std::fmt::Write as _;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use tahoma_tests::{BootOutcome, BootRequest, Exit, Facts};
use xshell::Shell;

use crate::images;

// The client guest's KV rows (kv_guest_*): guests/kvclient over the switch.
mod kv_guest;
use crate::machine::{Booter, Presentation};
use crate::manifest;
use crate::qemu::{self, Accel};

/// Options of `cargo xtask bench`.
pub struct Options {
    /// Write the records as JSON here.
    pub json: Option<PathBuf>,
    /// Also measure wall-clock ratios (host baselines + a run without icount).
    pub wall: bool,
    /// Per-boot timeout override.
    pub timeout: Option<Duration>,
    /// Boot only the scenarios whose name contains this (and the density
    /// sweep, if `density-sweep` contains it).
    pub only: Option<String>,
    /// Write SVG charts here (runs the density sweep unless `from`).
    pub plot: Option<PathBuf>,
    /// Draw the charts from this `--json` file instead of booting.
    pub from: Option<PathBuf>,
    /// The density sweep's counts of idle guests (runs the sweep).
    pub counts: Option<Vec<u64>>,
}

/// QEMU arguments that make guest `rdtsc` count instructions, deterministically.
pub const ICOUNT_ARGS: [&str; 4] = [
    "-icount",
    "shift=0,sleep=off",
    "-rtc",
    "clock=vm,base=2024-01-01T00:00:00",
];

/// The scenario whose solo domain `bench` gives `guest_start`.
const SOLO_SCENARIO: &str = "bench";
/// The domain whose start-up is reported as `guest_start`.
const SOLO_DOMAIN: &str = "bench";

/// One measured figure: the stable JSON shape `{"name", "value", "unit"}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    pub name: String,
    pub value: Value,
    pub unit: String,
}

/// A figure: a count, or a ratio / nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Count(u64),
    Real(f64),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Value::Count(n) => f.write_str(&group(n)),
            Value::Real(x) if x >= 100.0 => write!(f, "{x:.0}"),
            Value::Real(x) => write!(f, "{x:.2}"),
        }
    }
}

/// A table row: the record, a detail (min, mean, iterations) and what to
/// compare it with.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub record: Record,
    pub detail: String,
    pub compare: String,
}

/// One `@ bench` fact of a guest, in TSC ticks.
#[derive(Clone, Debug, PartialEq)]
pub struct GuestFigure {
    pub name: String,
    pub median: u64,
    pub min: u64,
    pub mean: u64,
    pub iters: u64,
    /// `expected=` (the calibration loop's instruction count).
    pub expected: Option<u64>,
}

/// What one boot of a bench scenario reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BootFigures {
    pub figures: Vec<GuestFigure>,
    /// `(build, run, total)` ticks of the solo domain's start.
    pub start: Option<(u64, u64, u64)>,
    pub tsc_hz: Option<u64>,
    /// `@ density` of a `bench-density*` scenario, with its teardowns.
    pub density: Option<Density>,
    /// `@ kv-guest-bench` of `bench-kv-guest` (rows `kv_guest_*`).
    pub kv_guest: Option<kv_guest::Figures>,
}

/// What the hypervisor reported about building (and tearing down) many
/// domains: `@ density` and the `@ domain-released` of the idle guests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Density {
    pub started: u64,
    pub frames_per_guest: u64,
    pub heap_per_guest: u64,
    /// Build ticks per domain (instructions under icount).
    pub start_per_guest: u64,
    /// Mean `busy_ticks` of the idle guests' teardowns.
    pub teardown_per_guest: u64,
    pub torn_down: u64,
}

/// The `@ density` figures and the mean teardown of domains named `idle-*`.
pub fn collect_density(facts: &Facts) -> Result<Option<Density>, String> {
    let Ok(d) = facts.one("density") else {
        return Ok(None);
    };
    let (mut sum, mut n) = (0u64, 0u64);
    for r in facts.of_kind("domain-released") {
        if r.get("name").is_some_and(|x| x.starts_with("idle-")) {
            sum += r.number("busy_ticks")?;
            n += 1;
        }
    }
    Ok(Some(Density {
        started: d.number("started")?,
        frames_per_guest: d.number("frames_per_domain")?,
        heap_per_guest: d.number("heap_per_domain")?,
        start_per_guest: d.number("build_ticks_per_domain")?,
        teardown_per_guest: sum.checked_div(n).unwrap_or(0),
        torn_down: n,
    }))
}

/// The clock a pass runs under: what its ticks mean, and which checks of
/// the run apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// `-icount`: a tick is an instruction, and a wait that ran to a timer
    /// made the idle machine's clock jump to it.
    Icount,
    /// Real time (`--wall`): the host's own delays (a disk flush) are in
    /// the figures.
    Wall,
}

impl Clock {
    /// The pass's name in progress lines and log file names.
    pub fn label(self) -> &'static str {
        match self {
            Clock::Icount => "icount",
            Clock::Wall => "wall",
        }
    }
}

/// Extracts the bench figures from a transcript's facts.
pub fn collect(
    facts: &Facts,
    solo_domain: Option<&str>,
    clock: Clock,
) -> Result<BootFigures, String> {
    let mut out = BootFigures::default();
    for (guest, f) in facts.guest_of_kind("bench") {
        let name = f
            .get("name")
            .ok_or(format!("guest `{guest}`: `@ bench` without name= ({f})"))?;
        let num = |k: &str| {
            f.number(k)
                .map_err(|e| format!("guest `{guest}`: {e} ({f})"))
        };
        if f.get("unit") != Some("ticks") {
            return Err(format!("guest `{guest}`: expected unit=ticks ({f})"));
        }
        out.figures.push(GuestFigure {
            name: name.to_string(),
            median: num("value")?,
            min: num("min")?,
            mean: num("mean")?,
            iters: num("iters")?,
            expected: f
                .get("expected")
                .and_then(tahoma_tests::facts::parse_number),
        });
    }
    if let Some(dom) = solo_domain {
        if let Some(f) = facts
            .of_kind("domain-first-hypercall")
            .find(|f| f.get("name") == Some(dom))
        {
            out.start = Some((
                f.number("build_ticks")?,
                f.number("run_ticks")?,
                f.number("total_ticks")?,
            ));
        }
    }
    out.tsc_hz = facts.one("time").ok().and_then(|f| f.number("tsc_hz").ok());
    out.density = collect_density(facts)?;
    out.kv_guest = kv_guest::collect(facts, clock)?;
    Ok(out)
}

/// Thousands separated with commas, as in the anchors table.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let first = match s.len() % 3 {
        0 => 3.min(s.len()),
        r => r,
    };
    let mut out = s[..first].to_string();
    for chunk in s.as_bytes()[first..].chunks(3) {
        out.push(',');
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    out
}

/// What a guest figure should be compared with (the anchors measured on
/// the same emulator; `docs/benchmarks.md`).
pub fn reference(name: &str) -> &'static str {
    match name {
        "empty_pair" => "subtracted from every figure below",
        "null_hypercall" => {
            "floor 32 (syscall+swapgs+stack switch+call into Rust; bare syscall+sysretq 9); \
             Linux getpid 322; Xen PV getpid 1,094"
        }
        "event_round_trip" | "event_round_trip_block" | "event_round_trip_poll" => {
            "Linux pipe ping-pong 12,694 (futex 9,691); Xen PV 22,940 (futex 16,303)"
        }
        "yield_round_trip" => "Linux futex ping-pong 9,691; Xen PV 16,303 (2 switches each)",
        "domain_switch" => "half a futex ping-pong: Linux 4,846; Xen PV 8,152",
        "domain_switch_64dom" => "domain_switch with 62 more (blocked) domains: must match it",
        "domain_switch_fpu" => {
            "both domains write XMM0 after each yield: eager FPU switching costs the same"
        }
        "yield_round_trip_fpu" => {
            "yield_round_trip with SIMD in use on both sides (+1 instruction)"
        }
        "domain_switch_density" => {
            "domain_switch with the density scenario's idle guests present: must match it"
        }
        "yield_round_trip_density" => {
            "yield_round_trip with the density scenario's idle guests present: must match it"
        }
        "yield_round_trip_64dom" => {
            "yield_round_trip with 62 more (blocked) domains: must match it"
        }
        "mmu_update_batch_1" | "mmu_update_batch_32" | "mmu_update_batch_512" => {
            "per entry; floor: the null hypercall split over the batch plus one \
             validated store. Linux mprotect of one page 2,923; Xen PV 6,672"
        }
        "mmu_pin_fresh_space" | "mmu_pin_per_table" | "mmu_unpin_fresh_space" => {
            "validates every entry of the tree once (512 per table)"
        }
        "blk_direct_read_d1"
        | "blk_direct_read_d32"
        | "blk_direct_write_d1"
        | "blk_direct_write_d32" => {
            "per 4 KiB request: the driver domain on the device itself (the baseline)"
        }
        "blk_vblk_read_d1" | "blk_vblk_read_d32" | "blk_vblk_write_d1" | "blk_vblk_write_d32" => {
            "per 4 KiB request through the ring: compare blk_direct_* of the same run"
        }
        "blk_cpu_direct_read_d1"
        | "blk_cpu_direct_read_d32"
        | "blk_cpu_direct_write_d1"
        | "blk_cpu_direct_write_d32" => {
            "CPU work per request, the driver on the device (time blocked in event::wait left out)"
        }
        "blk_cpu_front_read_d1"
        | "blk_cpu_front_read_d32"
        | "blk_cpu_front_write_d1"
        | "blk_cpu_front_write_d32" => {
            "CPU work per request in the frontend (vblk); add blk_cpu_serve_* for the ring's total"
        }
        "blk_cpu_serve_read_d1"
        | "blk_cpu_serve_read_d32"
        | "blk_cpu_serve_write_d1"
        | "blk_cpu_serve_write_d32" => {
            "CPU work per request in the driver serving the ring (copies, events, device)"
        }
        "grant_copy_4k" => {
            "one element: checks, then 4 KiB frame to frame through the direct map (one copy, \
             as Xen GNTTABOP_copy)"
        }
        "page_fault" => {
            "guest handler maps the page with update_va_mapping; \
             Linux anonymous page fault 3,314; Xen PV 6,367"
        }
        "grant_map_unmap" => {
            "map installs one entry; unmap clears it and flushes the whole TLB (no PCIDs)"
        }
        "switch_frame_64" | "switch_frame_1514" => {
            "netback's switch, port to port (checks, learning, lookup, copy, pop): \
             compare queue_frame_* of the same boot"
        }
        "queue_frame_64" | "queue_frame_1514" => {
            "the same frame copied into one of netback's own queues, moved to another, popped"
        }
        "tcp_host_to_guest_1m" => {
            "1 MiB from xtask through QEMU's forward, the uplink and the switch to an smoltcp \
             guest, SYN to closed; wall pass only"
        }
        "tcp_guest_to_guest_1m" => {
            "1 MiB over TCP (smoltcp both ends) through the switch, connect to both FINs \
             acknowledged; whole system"
        }
        "vnic_frame_64_batch1"
        | "vnic_frame_64_batch32"
        | "vnic_frame_1514_batch1"
        | "vnic_frame_1514_batch32" => {
            "per frame, whole system: two grant copies, the switch, events per batch \
             (docs/network.md)"
        }
        n if n.starts_with("kv_guest_") => kv_guest::reference(n),
        _ => "",
    }
}

const START_REFERENCE: &str = "no anchor on this emulator (wall clock elsewhere: \
                               Unikraft tens-hundreds of us, LightVM 2.3 ms)";

/// The rows of the instruction-count pass.
pub fn icount_rows(boots: &[BootFigures]) -> Vec<Row> {
    let mut rows = Vec::new();
    for b in boots {
        for g in &b.figures {
            let compare = match (g.name.as_str(), g.expected) {
                ("calibration", Some(exp)) => format!(
                    "expected {} (2 x loop count): {}",
                    group(exp),
                    if g.median == exp && g.min == exp {
                        "1 tick = 1 instruction"
                    } else {
                        "MISMATCH: ticks are not instructions"
                    }
                ),
                (n, _) => reference(n).to_string(),
            };
            rows.push(Row {
                record: Record {
                    name: g.name.clone(),
                    value: Value::Count(g.median),
                    unit: "instructions".into(),
                },
                detail: format!("min {} mean {} n={}", group(g.min), group(g.mean), g.iters),
                compare,
            });
        }
        rows.extend(blk_ratio_rows(b, "instructions per request"));
        kv_guest::add_rows(&mut rows, b);
        if let Some(d) = &b.density {
            for (name, v, unit, what, compare) in [
                (
                    "density.guests",
                    d.started,
                    "guests",
                    "domains started and running (idle guests block)".to_string(),
                    "issue 13 goal: 20,000 at -m 2G; Denali: >10,000 in 1 GiB (2002)".to_string(),
                ),
                (
                    "density.frames_per_guest",
                    d.frames_per_guest,
                    "frames",
                    "own: window and shared-info page, less the image's shared pages".into(),
                    "goal <= 25 for 20,000 in 2 GiB (17 before MEM-2e)".into(),
                ),
                (
                    "density.heap_per_guest",
                    d.heap_per_guest,
                    "bytes",
                    "hypervisor heap per domain (mean)".into(),
                    "a1c1678: over 16 KiB (eager port table)".into(),
                ),
                (
                    "density.start_per_guest",
                    d.start_per_guest,
                    "instructions",
                    "hypervisor builds one idle guest (mean)".into(),
                    "flat in the number of domains (a1c1678: grew ~24 per domain present)".into(),
                ),
                (
                    "density.teardown_per_guest",
                    d.teardown_per_guest,
                    "instructions",
                    format!("busy time tearing one down (mean of {})", d.torn_down),
                    "a1c1678: 110,482 (already its own frames, not the frame table)".into(),
                ),
            ] {
                rows.push(Row {
                    record: Record {
                        name: name.into(),
                        value: Value::Count(v),
                        unit: unit.into(),
                    },
                    detail: what,
                    compare,
                });
            }
        }
        if let Some((build, run, total)) = b.start {
            for (part, v, what) in [
                ("build", build, "hypervisor builds the domain"),
                ("run", run, "first instruction to first hypercall"),
                ("total", total, "build start to first hypercall"),
            ] {
                rows.push(Row {
                    record: Record {
                        name: format!("guest_start.{part}"),
                        value: Value::Count(v),
                        unit: "instructions".into(),
                    },
                    detail: what.into(),
                    compare: if part == "total" {
                        START_REFERENCE.into()
                    } else {
                        String::new()
                    },
                });
            }
        }
    }
    rows
}

/// Requests per second through the ring as a fraction of the driver
/// domain's own, from the same boot: `blk_direct_X / blk_vblk_X` (ticks per
/// request), for each op and depth both reported. Goal (issue 9): at
/// least 0.8 at depth 32.
pub fn blk_ratio_rows(b: &BootFigures, basis: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for g in b.figures.iter().filter(|g| g.name.starts_with("blk_vblk_")) {
        let direct = g.name.replacen("blk_vblk_", "blk_direct_", 1);
        let Some(d) = b.figures.iter().find(|f| f.name == direct) else {
            continue;
        };
        if g.median == 0 {
            continue;
        }
        rows.push(Row {
            record: Record {
                name: format!("{}.vs_direct", g.name),
                value: Value::Real(d.median as f64 / g.median as f64),
                unit: "ratio".into(),
            },
            detail: format!("requests/s through the ring / direct, same run ({basis})"),
            compare: if g.name.ends_with("_d32") {
                "goal >= 0.8 at depth 32".into()
            } else {
                String::new()
            },
        });
    }
    rows
}

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

/// The table, one row per figure, aligned.
pub fn table(rows: &[Row]) -> String {
    let head = ["benchmark", "value", "unit", "detail", "compare with"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.record.name.clone(),
                r.record.value.to_string(),
                r.record.unit.clone(),
                r.detail.clone(),
                r.compare.clone(),
            ]
        })
        .collect();
    let mut w = head.map(str::len);
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |c: [&str; 5]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:>w1$}  {:<w2$}  {:<w3$}  {}",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    };
    line(head);
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3], &c[4]]);
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The records as a JSON array of `{"name", "value", "unit"}`.
pub fn json(rows: &[Row]) -> String {
    let records: Vec<&Record> = rows.iter().map(|r| &r.record).collect();
    serde_json::to_string_pretty(&records).expect("records serialise") + "\n"
}

/// The bench scenarios: `guests/scenarios/bench*.toml`, sorted.
fn scenarios(root: &Path) -> Result<Vec<String>, String> {
    let names: Vec<String> = manifest::list(root)?
        .into_iter()
        .filter(|n| n.starts_with("bench"))
        .collect();
    if names.is_empty() {
        return Err("no guests/scenarios/bench*.toml: nothing to measure".into());
    }
    Ok(names)
}

/// The scenario whose TCP client is `cargo xtask bench` itself, through
/// its forwarded host port; wall pass only (under `-icount ... sleep=off`
/// the guest's clock races past its deadline while it waits for the host).
const HOST_CLIENT_SCENARIO: &str = "bench-net-host";
/// The host port `bench-net-host.toml` forwards to the guest's port 80.
const HOST_CLIENT_PORT: u16 = 47090;
/// What the host sends it: 1 MiB, as `host.tcp_loopback_1m`.
const HOST_CLIENT_BYTES: usize = 1 << 20;

/// FNV-1a/64, as `guests/tcptest` computes it.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The host side of `bench-net-host`: connects to the forwarded port
/// (retrying while the guest is not listening yet), sends `data`, closes
/// its write side and checks the guest's answer (length, FNV-1a/64).
fn host_tcp_client(port: u16, data: &[u8]) -> Result<(), String> {
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

/// Boots every bench scenario once with `extra` QEMU arguments.
fn pass(
    booter: &Booter<'_>,
    names: &[String],
    clock: Clock,
    extra: &[String],
    timeout: Option<Duration>,
) -> Result<Vec<BootFigures>, String> {
    let label = clock.label();
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let started = Instant::now();
        eprint!(
            "xtask: bench [{}/{}] {name} ({label}) ... ",
            i + 1,
            names.len()
        );
        let _ = std::io::stderr().flush();
        // A fresh disk image each boot: the figures must not depend on
        // what an earlier run left on it.
        let req = BootRequest {
            scenario: name.clone(),
            timeout,
            fresh_disk: true,
            ..Default::default()
        };
        let how = Presentation {
            echo: false,
            gdb: None,
            log_name: format!("bench/{name}.{label}"),
        };
        let _port = if name == HOST_CLIENT_SCENARIO {
            Some(tahoma_tests::hold_port(HOST_CLIENT_PORT)?)
        } else {
            None
        };
        let client = (name == HOST_CLIENT_SCENARIO).then(|| {
            let data: Vec<u8> = (0..HOST_CLIENT_BYTES)
                .map(|i| (i * 7 + (i >> 8)) as u8)
                .collect();
            std::thread::spawn(move || host_tcp_client(HOST_CLIENT_PORT, &data))
        });
        let (outcome, _, _) = booter.boot_with(&req, &how, extra)?;
        if let Some(c) = client {
            c.join()
                .map_err(|_| "the host TCP client panicked".to_string())?
                .map_err(|e| format!("scenario `{name}`: {e}{}", log_hint(&outcome)))?;
        }
        eprintln!("{:.1} s", started.elapsed().as_secs_f64());
        check(&outcome, name)?;
        let solo = (name == SOLO_SCENARIO).then_some(SOLO_DOMAIN);
        let mut figures = collect(&outcome.facts, solo, clock)
            .map_err(|e| format!("scenario `{name}`: {e}{}", log_hint(&outcome)))?;
        if !name.starts_with("bench-density") {
            // Every boot reports `@ density`; only these scenarios are
            // about it.
            figures.density = None;
        }
        if figures.figures.is_empty() {
            return Err(format!(
                "scenario `{name}` reported no `@ bench` figure{}",
                log_hint(&outcome)
            ));
        }
        out.push(figures);
    }
    Ok(out)
}

pub(crate) fn log_hint(o: &BootOutcome) -> String {
    o.log
        .as_ref()
        .map(|l| format!(" (serial log: {})", l.display()))
        .unwrap_or_default()
}

pub(crate) fn check(o: &BootOutcome, name: &str) -> Result<(), String> {
    if o.exit != Exit::Success {
        return Err(format!(
            "scenario `{name}` ended: {}{}",
            o.exit,
            log_hint(o)
        ));
    }
    if let Some(bad) = o.facts.bad.first().or(o.facts.guest_bad.first()) {
        return Err(format!(
            "scenario `{name}`: malformed report line {}: {}{}",
            bad.line,
            bad.error,
            log_hint(o)
        ));
    }
    Ok(())
}

/// Runs the benchmarks and prints the table.
pub fn bench(opts: &Options) -> Result<ExitCode, String> {
    if let Some(from) = &opts.from {
        let dir = opts
            .plot
            .as_ref()
            .ok_or("--from FILE draws charts: give --plot DIR too")?;
        return plot_records(dir, &crate::plot::read_json(from)?);
    }
    let sh = Shell::new().map_err(|e| format!("cannot set up a shell: {e}"))?;
    let root = images::root();
    let mut names = scenarios(&root)?;
    let sweep = opts.plot.is_some()
        || opts.counts.is_some()
        || opts
            .only
            .as_ref()
            .is_some_and(|o| crate::sweep::NAME.contains(o.as_str()));
    if let Some(only) = &opts.only {
        names.retain(|n| n.contains(only.as_str()));
        if names.is_empty() && !sweep {
            return Err(format!(
                "no bench scenario's name contains `{only}`: see guests/scenarios/bench*.toml"
            ));
        }
    }
    for n in &names {
        manifest::Scenario::load(&root, n)?.check_images(&images::guest_crates(&root)?)?;
    }
    let qemu = qemu::find_qemu(&sh)?;
    let images = images::build(&sh, &root)?;
    // -icount needs TCG, and the wall-clock ratios are TCG figures too.
    let booter = Booter {
        sh: &sh,
        root: root.clone(),
        images,
        qemu,
        accel: Accel::Tcg,
    };
    let icount: Vec<String> = ICOUNT_ARGS.iter().map(|s| s.to_string()).collect();
    // --- The key-value bench from the host (issue 11 item 5): its own
    // scenario and QEMU settings, its own rows (xtask/src/kvbench.rs). ---
    let kv_host = names.iter().any(|n| n == crate::kvbench::SCENARIO);
    names.retain(|n| n != crate::kvbench::SCENARIO);
    // --- end of the key-value bench's selection ---
    let under_icount: Vec<String> = names
        .iter()
        .filter(|n| n.as_str() != HOST_CLIENT_SCENARIO)
        .cloned()
        .collect();
    let boots = pass(&booter, &under_icount, Clock::Icount, &icount, opts.timeout)?;
    let mut rows = icount_rows(&boots);
    if sweep {
        rows.extend(crate::sweep::run(
            &booter,
            &root,
            opts.counts.as_deref(),
            opts.timeout,
        )?);
    }
    if opts.wall && !names.is_empty() {
        eprintln!("xtask: bench: host baselines (wall clock) ...");
        let host = host_baselines()?;
        let wall = pass(&booter, &names, Clock::Wall, &[], opts.timeout)?;
        rows.extend(wall_rows(&host, &wall));
    }
    // --- The key-value bench from the host: Tahoma, then the Linux guest. ---
    if kv_host {
        rows.extend(crate::kvbench::bench(&booter, opts.timeout)?);
    }
    // --- end of the key-value bench ---
    print!("{}", table(&rows));
    if let Some(path) = &opts.json {
        std::fs::write(path, json(&rows))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("xtask: bench: wrote {}", path.display());
    }
    if let Some(dir) = &opts.plot {
        let records: Vec<Record> = rows.iter().map(|r| r.record.clone()).collect();
        plot_records(dir, &records)?;
    }
    let calibrated = rows.iter().all(|r| !r.compare.contains("MISMATCH"));
    if !calibrated {
        eprintln!(
            "xtask: bench: the calibration loop did not count one tick per instruction; \
             the instruction figures above are not instruction counts"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Draws the charts of `records` into `dir` (`--plot`).
fn plot_records(dir: &Path, records: &[Record]) -> Result<ExitCode, String> {
    for f in crate::plot::write_charts(dir, records)? {
        eprintln!("xtask: bench: wrote {}", f.display());
    }
    Ok(ExitCode::SUCCESS)
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

#[cfg(test)]
mod tests {
    use super::*;

    const SOLO: &str = "\
@ time tsc_hz=1000000000 apic_hz=1000000000 source=pit
@ domain-first-hypercall id=1 name=\"bench\" build_ticks=360248 run_ticks=4820 total_ticks=365068
[bench] @ bench name=empty_pair value=6 min=6 mean=6 iters=10000 unit=ticks
[bench] @ bench name=calibration value=200000 min=200000 mean=200000 iters=31 unit=ticks expected=200000 expected_unit=instructions
[bench] @ bench name=null_hypercall value=151 min=150 mean=152 iters=10000 unit=ticks
@ exit status=success
";

    fn solo() -> BootFigures {
        collect(&Facts::parse(SOLO), Some("bench"), Clock::Icount).unwrap()
    }

    #[test]
    fn collects_guest_figures_and_start() {
        let b = solo();
        assert_eq!(b.figures.len(), 3);
        assert_eq!(
            b.figures[2],
            GuestFigure {
                name: "null_hypercall".into(),
                median: 151,
                min: 150,
                mean: 152,
                iters: 10000,
                expected: None,
            }
        );
        assert_eq!(b.figures[1].expected, Some(200_000));
        assert_eq!(b.start, Some((360_248, 4_820, 365_068)));
        assert_eq!(b.tsc_hz, Some(1_000_000_000));
        // The start-up is only taken for the named domain.
        assert_eq!(
            collect(&Facts::parse(SOLO), None, Clock::Icount)
                .unwrap()
                .start,
            None
        );
    }

    #[test]
    fn rejects_figures_without_ticks() {
        let t = "[g] @ bench name=x value=1 min=1 mean=1 iters=1 unit=ns\n";
        assert!(collect(&Facts::parse(t), None, Clock::Icount).is_err());
        let t = "[g] @ bench name=x value=1 iters=1 unit=ticks\n";
        assert!(collect(&Facts::parse(t), None, Clock::Icount).is_err());
    }

    #[test]
    fn rows_say_instructions_and_check_calibration() {
        let rows = icount_rows(&[solo()]);
        let names: Vec<_> = rows.iter().map(|r| r.record.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "empty_pair",
                "calibration",
                "null_hypercall",
                "guest_start.build",
                "guest_start.run",
                "guest_start.total"
            ]
        );
        assert!(rows.iter().all(|r| r.record.unit == "instructions"));
        assert!(rows[1].compare.contains("1 tick = 1 instruction"));
        assert!(rows[2].compare.contains("Linux getpid 322"));
        assert_eq!(rows[2].record.value, Value::Count(151));

        let mut off = solo();
        off.figures[1].median = 200_001;
        assert!(icount_rows(&[off])[1].compare.contains("MISMATCH"));
    }

    #[test]
    fn wall_figures_are_ratios_only() {
        let host = Host {
            getpid_ns: 100.0,
            pipe_round_trip_ns: 4000.0,
            spawn_ns: 500_000.0,
            tcp_loopback_1m_ns: 1_000_000.0,
        };
        let mut b = solo();
        b.tsc_hz = Some(2_000_000_000); // 151 ticks = 75.5 ns
        b.figures.push(GuestFigure {
            name: "tcp_guest_to_guest_1m".into(),
            median: 200_000_000, // 100 ms
            min: 200_000_000,
            mean: 200_000_000,
            iters: 1,
            expected: None,
        });
        let rows = wall_rows(&host, &[b]);
        let tcp = rows
            .iter()
            .find(|r| r.record.name == "tcp_guest_to_guest_1m.wall_vs_host_tcp_loopback_1m")
            .unwrap();
        assert_eq!(tcp.record.value, Value::Real(100.0));
        let mbs = rows
            .iter()
            .find(|r| r.record.name == "tcp_guest_to_guest_1m.wall_mb_s")
            .unwrap();
        assert_eq!(mbs.record.unit, "MB/s");
        let null = rows
            .iter()
            .find(|r| r.record.name == "null_hypercall.wall_vs_host_getpid")
            .unwrap();
        assert_eq!(null.record.value, Value::Real(0.755));
        assert_eq!(null.record.unit, "ratio");
        let start = rows
            .iter()
            .find(|r| r.record.name == "guest_start.total.wall_vs_host_spawn")
            .unwrap();
        assert_eq!(start.record.unit, "ratio");
        // Guest figures never appear in ns; host baselines do.
        for r in &rows {
            assert!(
                r.record.unit == "ratio"
                    || r.record.unit == "MB/s"
                    || r.record.name.starts_with("host."),
                "{r:?}"
            );
        }
    }

    #[test]
    fn table_and_json() {
        let rows = icount_rows(&[solo()]);
        let t = table(&rows);
        let lines: Vec<_> = t.lines().collect();
        assert!(lines[0].starts_with("benchmark"), "{t}");
        assert!(lines[3].starts_with("null_hypercall"), "{t}");
        assert!(
            lines[3].contains("  151  instructions  min 150 mean 152 n=10000"),
            "{t}"
        );
        assert!(lines[2].contains("200,000"), "{t}");

        let v: serde_json::Value = serde_json::from_str(&json(&rows)).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), rows.len());
        for rec in arr {
            let o = rec.as_object().unwrap();
            let mut keys: Vec<_> = o.keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["name", "unit", "value"]);
        }
        assert_eq!(arr[2]["name"], "null_hypercall");
        assert_eq!(arr[2]["value"], 151);
        assert_eq!(arr[2]["unit"], "instructions");
        let ratio = json(&[Row {
            record: Record {
                name: "r".into(),
                value: Value::Real(1.5),
                unit: "ratio".into(),
            },
            detail: String::new(),
            compare: String::new(),
        }]);
        assert!(ratio.contains("\"value\": 1.5"), "{ratio}");
    }

    #[test]
    fn blk_ratios_pair_each_ring_figure_with_the_direct_one() {
        let fig = |name: &str, v: u64| GuestFigure {
            name: name.into(),
            median: v,
            min: v,
            mean: v,
            iters: 400,
            expected: None,
        };
        let b = BootFigures {
            figures: vec![
                fig("blk_direct_read_d32", 80),
                fig("blk_vblk_read_d32", 100),
                fig("blk_vblk_write_d1", 50), // no direct figure: no ratio
            ],
            ..Default::default()
        };
        let rows = blk_ratio_rows(&b, "x");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].record.name, "blk_vblk_read_d32.vs_direct");
        assert_eq!(rows[0].record.value, Value::Real(0.8));
        assert!(rows[0].compare.contains("0.8"));
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(12_694), "12,694");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
