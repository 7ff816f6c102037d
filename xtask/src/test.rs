//! `cargo xtask test`: host unit tests, scenario tests, conformance; one tally.
//!
//! Nothing is skipped silently: a scenario test that cannot run (the images
//! did not build, QEMU is missing) counts as failed, with the reason.

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use tahoma_tests::scenario_tests;
use xshell::{cmd, Shell};

use crate::images;
use crate::machine::{Booter, TestMachine};
use crate::qemu::{self, Accel};

/// Options of `cargo xtask test`.
pub struct Options {
    /// Only scenario tests whose name contains this.
    pub filter: Option<String>,
    /// Accelerator override.
    pub accel: Option<Accel>,
    /// Per-boot timeout override.
    pub timeout: Option<Duration>,
}

/// Lines of transcript shown for a failed scenario test.
const TAIL_LINES: usize = 30;
/// The conformance scenario, once it exists.
const CONFORMANCE: &str = "conformance";

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

/// Runs the tests and prints the closing line.
pub fn test(opts: &Options) -> Result<ExitCode, String> {
    let sh = Shell::new().map_err(|e| format!("cannot set up a shell: {e}"))?;
    let root = images::root();
    let mut tally = Tally::default();

    if opts.filter.is_none() {
        unit_tests(&sh, &root, &mut tally);
        lints(&root, &mut tally);
    }

    let booter = qemu::find_qemu(&sh).and_then(|qemu| {
        let images = images::build(&sh, &root)?;
        Ok(Booter {
            sh: &sh,
            root: root.clone(),
            images,
            qemu,
            accel: opts.accel.unwrap_or_else(Accel::detect),
        })
    });
    if let Err(e) = &booter {
        eprintln!("xtask: cannot boot anything: {e}");
    }
    let booter = booter.as_ref().map_err(|e| e.as_str());

    scenarios(booter, opts, &mut tally);
    for (name, run) in XTASK_TESTS {
        if opts
            .filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
        {
            xtask_test(name, *run, booter, opts.timeout, &mut tally);
        }
    }
    if opts.filter.is_none() {
        conformance(booter, &root, opts.timeout, &mut tally);
    }

    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Counts from one `test result: ok. 3 passed; 1 failed; ...` line.
fn parse_test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result:")?;
    let mut passed = None;
    let mut failed = None;
    for part in rest.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(label), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        match (label, n.parse::<u64>()) {
            ("passed", Ok(n)) => passed = Some(n),
            ("failed", Ok(n)) => failed = Some(n),
            _ => {}
        }
    }
    Some((passed?, failed?))
}

/// `cargo test` over the default members, streamed to stderr; every
/// `test result:` line is summed. A build failure counts as one failure.
fn unit_tests(sh: &Shell, root: &Path, tally: &mut Tally) {
    eprintln!("xtask: host unit tests: cargo test");
    let _dir = sh.push_dir(root);
    let mut command: Command = cmd!(sh, "cargo test").into();
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("unit tests ... FAILED (cannot start cargo test: {e})");
            tally.failed += 1;
            return;
        }
    };
    let (mut passed, mut failed) = (0, 0);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some((p, f)) = parse_test_result(&line) {
                passed += p;
                failed += f;
            }
        }
    }
    let ok = child.wait().map(|s| s.success()).unwrap_or(false);
    tally.passed += passed;
    tally.failed += failed;
    if !ok && failed == 0 {
        eprintln!("unit tests ... FAILED (cargo test did not build or run; see its output above)");
        tally.failed += 1;
    } else {
        eprintln!(
            "unit tests ... {} ({passed} passed, {failed} failed)",
            if failed == 0 { "ok" } else { "FAILED" }
        );
    }
}

/// The checks that keep the tree readable, one test each: the formatting
/// `cargo fmt` gives, and the documentation of the hypervisor and the
/// crates a guest author reads (the ABI, the SDK, the hypervisor's pure
/// core) built with every rustdoc warning an error, so a link to an item
/// that moved or went private fails here rather than in a reader's browser.
const LINTS: &[(&str, &[&str], &str)] = &[
    (
        "lint: formatting (cargo fmt --all --check)",
        &["fmt", "--all", "--check"],
        "run `cargo fmt --all` (rustup component add rustfmt if cargo fmt is missing)",
    ),
    (
        "lint: rustdoc of tahoma-hypervisor, tahoma-core, guest-sdk, hypercall-abi",
        &[
            "doc",
            "--no-deps",
            "--target",
            "x86_64-unknown-none",
            "-p",
            "tahoma-hypervisor",
            "-p",
            "tahoma-core",
            "-p",
            "guest-sdk",
            "-p",
            "hypercall-abi",
        ],
        "fix the doc comments rustdoc names above (broken or private links)",
    ),
];

fn lints(root: &Path, tally: &mut Tally) {
    for (name, args, fix) in LINTS {
        let out = Command::new("cargo")
            .args(*args)
            .current_dir(root)
            .env("RUSTDOCFLAGS", "-D warnings")
            .output();
        match out {
            Ok(o) if o.status.success() => {
                eprintln!("{name} ... ok");
                tally.passed += 1;
            }
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(TAIL_LINES)..] {
                    eprintln!("  {line}");
                }
                eprintln!("{name} ... FAILED: {fix}");
                tally.failed += 1;
            }
            Err(e) => {
                eprintln!("{name} ... FAILED (cannot start cargo: {e})");
                tally.failed += 1;
            }
        }
    }
}

fn scenarios(booter: Result<&Booter<'_>, &str>, opts: &Options, tally: &mut Tally) {
    let all = scenario_tests();
    let selected: Vec<_> = all
        .iter()
        .filter(|t| {
            opts.filter
                .as_ref()
                .is_none_or(|f| t.name.contains(f.as_str()))
        })
        .collect();
    let xtask_match = opts
        .filter
        .as_ref()
        .is_some_and(|f| XTASK_TESTS.iter().any(|(n, _)| n.contains(f.as_str())));
    if selected.is_empty() && !xtask_match {
        let names: Vec<_> = all.iter().map(|t| t.name).collect();
        eprintln!(
            "scenario tests ... FAILED (no test matches {:?}; the tests are: {})",
            opts.filter.as_deref().unwrap_or(""),
            names.join(", ")
        );
        tally.failed += 1;
        return;
    }
    for t in selected {
        let booter = match booter {
            Ok(b) => b,
            Err(e) => {
                eprintln!("scenario {} ... FAILED (could not run: {e})", t.name);
                tally.failed += 1;
                continue;
            }
        };
        let machine = TestMachine {
            booter,
            test: t.name,
            boots: Cell::new(0),
            timeout: opts.timeout,
        };
        match (t.run)(&machine) {
            Ok(()) => {
                eprintln!("scenario {} ... ok", t.name);
                tally.passed += 1;
            }
            Err(reason) => {
                eprintln!("scenario {} ... FAILED ({reason})", t.name);
                tally.failed += 1;
                if let Some(log) = machine.last_log() {
                    show_tail(&log, &booter.root);
                }
            }
        }
    }
}

fn show_tail(log: &Path, root: &Path) {
    let shown = log.strip_prefix(root).unwrap_or(log);
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<_> = text.lines().collect();
            let from = lines.len().saturating_sub(TAIL_LINES);
            eprintln!(
                "    log: {} (last {} lines):",
                shown.display(),
                lines.len() - from
            );
            for l in &lines[from..] {
                eprintln!("    | {l}");
            }
        }
        Err(e) => eprintln!("    log: {} (unreadable: {e})", shown.display()),
    }
}

/// A test that needs more of xtask than a [`tahoma_tests::Machine`] gives
/// (gdb beside QEMU, a generated manifest): name and body.
type XtaskTest = fn(&Booter<'_>, Duration) -> Result<(), String>;

/// The xtask-level scenario tests, run after the others and counted alike.
const XTASK_TESTS: &[(&str, XtaskTest)] = &[
    ("gdb-walkthrough", crate::gdb::walkthrough),
    ("image-run-any-elf", image_run),
    ("run-summary-symbolized", run_summary),
];

fn xtask_test(
    name: &str,
    run: XtaskTest,
    booter: Result<&Booter<'_>, &str>,
    timeout: Option<Duration>,
    tally: &mut Tally,
) {
    let result = booter
        .map_err(str::to_string)
        .and_then(|b| run(b, timeout.unwrap_or(Duration::from_secs(120))));
    match result {
        Ok(()) => {
            eprintln!("scenario {name} ... ok");
            tally.passed += 1;
        }
        Err(e) => {
            eprintln!("scenario {name} ... FAILED ({e})");
            tally.failed += 1;
        }
    }
}

/// `cargo xtask run`'s closing table on `misbehave`: one row per domain,
/// each ended as it should, and every fault located by function, file and
/// line in the guest's own source (symbolized from its image's DWARF).
fn run_summary(booter: &Booter<'_>, timeout: Duration) -> Result<(), String> {
    let scenario = crate::manifest::Scenario::load(&booter.root, "misbehave")?;
    let mut req = tahoma_tests::BootRequest::scenario("misbehave");
    req.timeout = Some(timeout);
    let how = crate::machine::Presentation {
        echo: false,
        gdb: None,
        log_name: "tests/run-summary-symbolized".into(),
    };
    let (o, _, _) = booter.boot(&req, &how)?;
    let syms = crate::symbols::Symbols::new(&booter.root);
    let rows = crate::explain::rows(booter, &scenario, &o.transcript, &syms);
    let table = crate::summary::render(&rows);
    if rows.len() != scenario.guests.len() {
        return Err(format!(
            "{} rows for {} guests:\n{table}",
            rows.len(),
            scenario.guests.len()
        ));
    }
    let row = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .ok_or(format!("no row for {name}"))
    };
    if row("worker")?.verdict() != "finished normally" {
        return Err(format!("worker: {}", row("worker")?.verdict()));
    }
    if row("spin")?.ended() != "ended with the scenario" {
        return Err(format!("spin: {}", row("spin")?.ended()));
    }
    for r in rows.iter().filter(|r| r.name.starts_with("bad-")) {
        match &r.ending {
            crate::summary::Ending::Fault {
                location: Some(at), ..
            } if at.contains("guests/misbehave/src/main.rs:") && at.contains("misbehave::") => {}
            other => {
                return Err(format!(
                    "{}: not a symbolized fault: {other:?}\n{table}",
                    r.name
                ))
            }
        }
    }
    Ok(())
}

/// `cargo xtask run --image FILE`'s path: an ELF copied outside the guest
/// crates (as one built elsewhere would be), a generated one-guest manifest
/// around it, booted; the guest must run with the given command line and
/// power off. A file that is not an ELF must be refused before boot.
fn image_run(booter: &Booter<'_>, timeout: Duration) -> Result<(), String> {
    let dir = booter.work_dir().join("external");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let app = dir.join("app.elf");
    std::fs::copy(booter.images.dir.join("hello"), &app)
        .map_err(|e| format!("cannot copy the hello image: {e}"))?;
    let text = crate::manifest::image_manifest(&app, "2M", "greeting=elsewhere")?;
    let manifest = dir.join("image-app.toml");
    std::fs::write(&manifest, text).map_err(|e| e.to_string())?;
    let mut req = tahoma_tests::BootRequest::scenario(&manifest.display().to_string());
    req.timeout = Some(timeout);
    let how = crate::machine::Presentation {
        echo: false,
        gdb: None,
        log_name: "tests/image-run-any-elf".into(),
    };
    let (o, _, _) = booter.boot(&req, &how)?;
    if o.exit != tahoma_tests::Exit::Success {
        return Err(format!("the run ended with {}", o.exit));
    }
    if !o
        .transcript
        .lines()
        .any(|l| l.starts_with("[app] ") && l.contains("greeting=elsewhere"))
    {
        return Err("no console line from `app` quoting its command line".into());
    }
    let exit = o.facts.one("domain-exit")?;
    if exit.get("name") != Some("app") || exit.get("reason") != Some("poweroff") {
        return Err(format!("`app` did not power off: {exit}"));
    }
    // Not an ELF: refused before any boot, naming the generated manifest.
    let junk = dir.join("junk.elf");
    std::fs::write(&junk, b"definitely not an ELF").map_err(|e| e.to_string())?;
    let text = crate::manifest::image_manifest(&junk, "2M", "")?;
    let manifest = dir.join("image-junk.toml");
    std::fs::write(&manifest, text).map_err(|e| e.to_string())?;
    let req = tahoma_tests::BootRequest::scenario(&manifest.display().to_string());
    match booter.boot(&req, &how) {
        Ok(_) => Err("a non-ELF image was booted instead of refused".into()),
        Err(e) if e.contains("image-junk.toml:") && e.contains("image refused") => Ok(()),
        Err(e) => Err(format!(
            "the non-ELF image was refused without its line or reason: {e}"
        )),
    }
}

/// Runs the conformance suite (the same code as `cargo xtask conformance`)
/// and counts each documented clause as one test; a run that could not
/// boot or reported nothing is one more failure.
fn conformance(
    booter: Result<&Booter<'_>, &str>,
    root: &Path,
    timeout: Option<Duration>,
    tally: &mut Tally,
) {
    let manifest = root.join(format!("guests/scenarios/{CONFORMANCE}.toml"));
    if !manifest.exists() {
        eprintln!("conformance: none yet (guests/scenarios/{CONFORMANCE}.toml does not exist)");
        return;
    }
    let booter = match booter {
        Ok(b) => b,
        Err(e) => {
            eprintln!("conformance ... FAILED (could not run: {e})");
            tally.failed += 1;
            return;
        }
    };
    let report = match crate::conformance::run(booter, timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("conformance ... FAILED ({e})");
            tally.failed += 1;
            return;
        }
    };
    for r in &report.records {
        if r.passed() {
            eprintln!("conformance {} {} ... ok", r.clause, r.name);
            tally.passed += 1;
        } else {
            eprintln!(
                "conformance {} {} ... FAILED ({})",
                r.clause, r.name, r.detail
            );
            tally.failed += 1;
        }
    }
    for p in &report.problems {
        eprintln!("conformance ... FAILED ({p})");
        tally.failed += 1;
    }
    if !report.problems.is_empty() {
        if let Some(log) = &report.log {
            show_tail(log, root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_result_lines() {
        assert_eq!(
            parse_test_result("test result: ok. 19 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s"),
            Some((19, 0))
        );
        assert_eq!(
            parse_test_result(
                "test result: FAILED. 7 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out"
            ),
            Some((7, 2))
        );
        assert_eq!(parse_test_result("test foo ... ok"), None);
        assert_eq!(parse_test_result("test result: garbled"), None);
    }
}
