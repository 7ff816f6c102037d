//! `cargo xtask`: build, boot and test Tahoma.
//!
//! One tool, in Rust, for every workflow: `build` compiles the bare-metal
//! images, `run` boots a scenario in QEMU with its serial console on the
//! terminal, `test` runs every kind of test and ends with one `N passed, N
//! failed` line. Progress goes to stderr; the serial console (for `run`) and
//! the final tally (for `test`) go to stdout. Every error says what to do
//! next. See `docs/xtask.md`.

#![forbid(unsafe_code)]

mod bench;
mod conformance;
mod devices;
mod explain;
mod fuzz;
mod gdb;
mod images;
mod kv;
mod kvbench;
mod linux;
mod machine;
mod manifest;
mod plot;
mod qemu;
mod status;
mod summary;
mod sweep;
mod symbols;
mod test;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tahoma_tests::{BootRequest, Exit};
use xshell::Shell;

use crate::machine::{Booter, Presentation};
use crate::manifest::Scenario;
use crate::qemu::Accel;

/// Build, boot and test Tahoma, the paravirtualized microkernel hypervisor.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the hypervisor and every guest crate under guests/ (release,
    /// x86_64-unknown-none, one cargo invocation).
    Build,
    /// Build, then boot a scenario in QEMU: stream its serial console to
    /// stdout, keep it in target/tahoma/logs/SCENARIO/serial.log (and each
    /// guest's console in target/tahoma/logs/SCENARIO/GUEST.log), and end
    /// with a table of how each domain ended (exit status 0 only if the
    /// hypervisor reported success).
    Run(RunArgs),
    /// List every scenario under guests/scenarios: its description, its
    /// guests (image, memory, count) and devices.
    List,
    /// Run everything: host unit tests (cargo test), then the scenario tests
    /// in QEMU, then conformance. Ends with one line `N passed, N failed`.
    Test(TestArgs),
    /// Run the benchmarks (never part of `test`): boot the bench*
    /// scenarios under TCG with -icount (figures in guest instructions,
    /// deterministic) and print a table beside the reference figures.
    Bench(BenchArgs),
    /// (internal) The child of the host pipe ping-pong baseline.
    #[command(name = "bench-echo", hide = true)]
    BenchEcho,
    /// Build, then run the ABI conformance suite: one line per clause of
    /// docs/abi (ID, pass/fail, name) and a summary; exits non-zero if any
    /// clause fails or has no result. See docs/conformance.md.
    Conformance(ConformanceArgs),
    /// Build, then run the hypercall fuzzer (guests/hcfuzz) beside the
    /// canary for as long as you like (`test` runs a short fixed-seed fuzz);
    /// prints calls per second and the verdict: no hypervisor fault, a
    /// balanced frame audit, the canary's secret intact. See
    /// docs/testing.md.
    Fuzz(FuzzArgs),
}

#[derive(Args)]
struct FuzzArgs {
    /// The PRNG seed, decimal or 0x-hex (default: from the clock; printed,
    /// so a failing run can be repeated).
    #[arg(long, value_name = "S", value_parser = parse_u64)]
    seed: Option<u64>,
    /// Hypercalls the fuzzer makes.
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    calls: u64,
    /// Also aim at the known holes of issue 7 that are fixed on other
    /// branches (far-future `timer_set`): only useful once they are merged.
    #[arg(long)]
    try_holes: bool,
    /// Log every call from index I on (to the serial log), to find the
    /// call that failed: the run is the same for the same seed.
    #[arg(long, value_name = "I")]
    trace: Option<u64>,
    /// Kill QEMU after S seconds (default: 300 + calls / 2000).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// Accelerator (default as for `run`).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
}

/// Parses a decimal or 0x-hexadecimal u64.
fn parse_u64(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("`{s}` is not a decimal or 0x-hex number: {e}"))
}

#[derive(Args)]
struct BenchArgs {
    /// Also write the figures as a JSON array of {"name", "value", "unit"}.
    #[arg(long, value_name = "PATH")]
    json: Option<std::path::PathBuf>,
    /// Also measure wall-clock time: host baselines (getpid, a pipe
    /// ping-pong, spawning a process), then every scenario again without
    /// -icount, reported only as ratios to those baselines.
    #[arg(long)]
    wall: bool,
    /// Kill each boot after S seconds (default: each scenario's `timeout`).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// Boot only the bench scenarios whose name contains SUBSTR (e.g.
    /// `net`); the host baselines are measured all the same. A SUBSTR of
    /// `density-sweep` (e.g. `density`) runs the density sweep too.
    #[arg(long, value_name = "SUBSTR")]
    only: Option<String>,
    /// Write SVG charts into DIR: the density curve (bench-density.svg)
    /// and each path beside Linux's and Xen's anchors (bench-anchors.svg).
    /// Runs the density sweep too (bench-density at several counts).
    #[arg(long, value_name = "DIR")]
    plot: Option<std::path::PathBuf>,
    /// With --plot: draw the charts from a file `--json` wrote, booting
    /// nothing.
    #[arg(long, value_name = "FILE", requires = "plot")]
    from: Option<std::path::PathBuf>,
    /// Run the density sweep with these counts of idle guests (default:
    /// 0, 1, 3, 10, 30, ... up to bench-density.toml's count).
    #[arg(long, value_name = "N,N,...", value_delimiter = ',')]
    counts: Option<Vec<u64>>,
}

#[derive(Args)]
struct ConformanceArgs {
    /// Also write the results as a JSON array of
    /// {"clause", "name", "outcome"} records to PATH.
    #[arg(long, value_name = "PATH")]
    json: Option<std::path::PathBuf>,
    /// Accelerator (default as for `run`).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Kill each boot after S seconds (default: the scenario's `timeout`).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
}

#[derive(Args)]
struct RunArgs {
    /// The scenario: guests/scenarios/SCENARIO.toml (or a path to a .toml).
    /// Default: kvstore (the sample unikernel, docs/kvstore.md).
    #[arg(conflicts_with = "image")]
    scenario: Option<String>,
    /// Boot one guest from an ELF built elsewhere (a static x86_64 ELF
    /// linked at 0x400000, e.g. built with the guest SDK in another
    /// project), in a generated one-guest scenario.
    #[arg(long, value_name = "FILE")]
    image: Option<std::path::PathBuf>,
    /// With --image: the guest's memory (K/M/G suffix).
    #[arg(long, value_name = "SIZE", default_value = "4M", requires = "image")]
    memory: String,
    /// With --image: the guest's command line.
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        requires = "image",
        allow_hyphen_values = true
    )]
    cmdline: String,
    /// Accelerator. Default: kvm only if /proc/cpuinfo advertises vmx or svm,
    /// otherwise tcg (a nested /dev/kvm cannot run a PV hypervisor).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Start paused with a gdb server on 127.0.0.1 (port: --gdb-port),
    /// write a gdb script that loads the symbols and defines per-domain
    /// commands (target/tahoma/gdb/SCENARIO.gdb), print how to use it;
    /// disables the timeout.
    #[arg(long)]
    gdb: bool,
    /// The gdb server's port (with --gdb).
    #[arg(long, value_name = "N", default_value_t = 1234, requires = "gdb")]
    gdb_port: u16,
    /// Kill QEMU after S seconds (default: the scenario's `timeout`).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// Extra hypervisor command line, appended to the scenario's `cmdline`
    /// (e.g. --append "selftest=panic").
    #[arg(
        long,
        value_name = "ARGS",
        default_value = "",
        allow_hyphen_values = true
    )]
    append: String,
    /// QEMU `-cpu` model under TCG (default `qemu64,+smep,+smap`; e.g.
    /// `max,vendor=GenuineIntel` for XSAVE, AVX and UMIP).
    #[arg(long, value_name = "MODEL")]
    cpu: Option<String>,
}

#[derive(Args)]
struct TestArgs {
    /// Run only the scenario tests whose name contains SUBSTR (no host unit
    /// tests, no conformance).
    #[arg(long, value_name = "SUBSTR")]
    filter: Option<String>,
    /// Accelerator for every boot (default as for `run`).
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// Kill each boot after S seconds (default: each scenario's `timeout`).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build => build(),
        Command::Run(args) => run(args),
        Command::List => list(),
        Command::Test(args) => test::test(&test::Options {
            filter: args.filter,
            accel: args.accel,
            timeout: args.timeout.map(Duration::from_secs),
        }),
        Command::Bench(args) => bench::bench(&bench::Options {
            json: args.json,
            wall: args.wall,
            timeout: args.timeout.map(Duration::from_secs),
            only: args.only,
            plot: args.plot,
            from: args.from,
            counts: args.counts,
        }),
        Command::BenchEcho => bench::echo(),
        Command::Conformance(args) => conformance(args),
        Command::Fuzz(args) => fuzz::fuzz(&fuzz::Options {
            seed: args.seed,
            calls: args.calls,
            try_holes: args.try_holes,
            trace: args.trace,
            timeout: args.timeout.map(Duration::from_secs),
            accel: args.accel,
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn shell() -> Result<Shell, String> {
    Shell::new().map_err(|e| format!("cannot set up a shell: {e}"))
}

fn build() -> Result<ExitCode, String> {
    let sh = shell()?;
    let images = images::build(&sh, &images::root())?;
    eprintln!("xtask: hypervisor: {}", images.hypervisor.display());
    for g in &images.guests {
        eprintln!("xtask: guest:      {}", images.dir.join(g).display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> Result<ExitCode, String> {
    let sh = shell()?;
    let root = images::root();
    let scenario_arg = match &args.image {
        Some(file) => {
            let text = manifest::image_manifest(file, &args.memory, &args.cmdline)?;
            let dir = root.join("target/tahoma/scenarios");
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
            let path = dir.join(format!("image-{}.toml", stem.unwrap_or_default()));
            std::fs::write(&path, text)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            path.display().to_string()
        }
        None => args.scenario.clone().unwrap_or_else(|| "kvstore".into()),
    };
    // A typo in the manifest should fail before a long build.
    let scenario = Scenario::load(&root, &scenario_arg)?;
    scenario.check_images(&images::guest_crates(&root)?)?;
    let qemu = qemu::find_qemu(&sh)?;
    let images = images::build(&sh, &root)?;
    let accel = args.accel.unwrap_or_else(Accel::detect);
    let booter = Booter {
        sh: &sh,
        root: root.clone(),
        images,
        qemu,
        accel,
    };
    let timeout = args.timeout.map(Duration::from_secs);
    let shown = timeout.unwrap_or(scenario.timeout).as_secs();
    eprintln!(
        "xtask: booting scenario `{}`{} with {} guest(s) under {}, {}",
        scenario.name,
        scenario
            .description
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default(),
        scenario.guests.len(),
        accel.name(),
        if args.gdb {
            "no timeout (gdb)".to_string()
        } else {
            format!("timeout {shown} s")
        }
    );
    if args.gdb {
        let script = gdb::write(&root, &scenario, &booter.images, args.gdb_port)?;
        let shown = script.strip_prefix(&root).unwrap_or(&script);
        for line in gdb::instructions(&scenario, shown, args.gdb_port).lines() {
            eprintln!("xtask: {line}");
        }
    }
    let (_, reach) = machine::endpoints(&scenario);
    for line in reach {
        eprintln!("xtask: {line}");
    }
    for line in kv::curl_lines(&scenario) {
        eprintln!("xtask: {line}");
    }
    for line in kv::storage_lines(&scenario, &root) {
        eprintln!("xtask: {line}");
    }
    let req = BootRequest {
        scenario: scenario_arg.clone(),
        cmdline: args.append,
        timeout,
        cpu: args.cpu,
        ..Default::default()
    };
    let how = Presentation {
        echo: true,
        gdb: args.gdb.then_some(args.gdb_port),
        log_name: format!("{}/serial", scenario.name),
    };
    let (outcome, _, ended) = booter.boot(&req, &how)?;
    explain::explain(&booter, &scenario, &outcome.transcript);
    for line in ended.qemu_stderr.lines() {
        eprintln!("qemu: {line}");
    }
    let log = outcome
        .log
        .as_ref()
        .map(|l| l.strip_prefix(&root).unwrap_or(l).display().to_string())
        .unwrap_or_default();
    // Ctrl-C reaches QEMU too (same process group): it ends with status 0,
    // which would otherwise read as a triple fault.
    let interrupted = ended.qemu_stderr.contains("terminating on signal 2");
    if interrupted {
        eprintln!(
            "xtask: scenario `{}` stopped by Ctrl-C (serial log: {log}; one log per guest beside it)",
            scenario.name
        );
        for line in kv::storage_lines(&scenario, &root) {
            eprintln!("xtask: {line}");
        }
        return Ok(ExitCode::from(130));
    }
    eprintln!(
        "xtask: scenario `{}` ended: {} (serial log: {log}; one log per guest beside it)",
        scenario.name, outcome.exit
    );
    if let Some(bad) = outcome.facts.bad.first() {
        eprintln!(
            "xtask: warning: {} malformed report line(s), first at line {}: {}",
            outcome.facts.bad.len(),
            bad.line,
            bad.error
        );
    }
    Ok(if outcome.exit == Exit::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn list() -> Result<ExitCode, String> {
    print!("{}", explain::list_text(&images::root())?);
    Ok(ExitCode::SUCCESS)
}

fn conformance(args: ConformanceArgs) -> Result<ExitCode, String> {
    let sh = shell()?;
    let root = images::root();
    // Parse the spec first: a broken docs/abi should fail before a build.
    conformance::doc_clauses(&root)?;
    let qemu = qemu::find_qemu(&sh)?;
    let images = images::build(&sh, &root)?;
    let booter = Booter {
        sh: &sh,
        root: root.clone(),
        images,
        qemu,
        accel: args.accel.unwrap_or_else(Accel::detect),
    };
    eprintln!("xtask: booting scenario `{}`", conformance::SCENARIO);
    let report = conformance::run(&booter, args.timeout.map(Duration::from_secs))?;
    let width = report
        .records
        .iter()
        .map(|r| r.clause.len())
        .max()
        .unwrap_or(0);
    for r in &report.records {
        if r.passed() {
            println!("{:<width$}  pass  {}", r.clause, r.name);
        } else {
            println!("{:<width$}  FAIL  {}  ({})", r.clause, r.name, r.detail);
        }
    }
    for p in &report.problems {
        println!("run: FAIL ({p})");
    }
    if let Some(log) = &report.log {
        eprintln!(
            "xtask: serial log: {}",
            log.strip_prefix(&root).unwrap_or(log).display()
        );
    }
    if let Some(path) = &args.json {
        conformance::write_json(path, &report.records)?;
        eprintln!("xtask: wrote {}", path.display());
    }
    let failed = report.records.iter().filter(|r| !r.passed()).count();
    println!(
        "{} clauses: {} passed, {} failed{}",
        report.records.len(),
        report.records.len() - failed,
        failed,
        if report.problems.is_empty() {
            String::new()
        } else {
            format!(", {} run problem(s)", report.problems.len())
        }
    );
    Ok(if failed == 0 && report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
