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
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;
use tahoma_tests::{BootOutcome, BootRequest, Exit, Facts};
use xshell::Shell;

use crate::images;

// The host's own baselines and the wall pass's ratio rows.
mod host;
// The icount pass's rows and what each is compared with.
pub(crate) mod rows;
pub use rows::{blk_ratio_rows, icount_rows};
// The client guest's KV rows (kv_guest_*): guests/kvclient over the switch.
mod kv_guest;
use crate::machine::{Booter, Presentation};
use crate::manifest;
use crate::qemu::{self, Accel};
pub use host::{echo, host_baselines, wall_rows};
use host::{host_tcp_client, HOST_CLIENT_BYTES, HOST_CLIENT_PORT, HOST_CLIENT_SCENARIO};

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

#[cfg(test)]
mod tests;
