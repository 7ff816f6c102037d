//! `cargo xtask fuzz`: the hypercall fuzzer (`guests/hcfuzz`) beside the
//! canary, with a seed and a length of your choice, judged by the same
//! verdict as the scenario test (`tahoma_tests::fuzz::check_fuzz_run`).
//!
//! It writes a copy of `guests/scenarios/fuzz.toml` whose fuzzer command
//! line carries the seed, the call count and the hole policy to
//! `target/tahoma/fuzz/`, boots it quietly (the fuzzer's console writes
//! garbage on purpose; the transcript goes to the log) and prints the
//! figures and the verdict.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tahoma_tests::fuzz::{check_fuzz_run, FUZZER, SCENARIO};
use tahoma_tests::BootRequest;

use crate::images;
use crate::machine::{Booter, Presentation};
use crate::qemu::{self, Accel};

/// Options of `cargo xtask fuzz`.
pub struct Options {
    /// The seed; `None`: one from the clock (printed).
    pub seed: Option<u64>,
    /// Calls the fuzzer makes.
    pub calls: u64,
    /// `holes=try`: also go where the known, not yet merged holes are.
    pub try_holes: bool,
    /// Log every call from this index on (`trace=I`).
    pub trace: Option<u64>,
    /// Kill QEMU after this long (default: from `calls`).
    pub timeout: Option<Duration>,
    /// Accelerator override.
    pub accel: Option<Accel>,
}

/// Words of a command line that `fuzz` sets itself.
const OWN_KEYS: [&str; 5] = ["seed", "calls", "holes", "progress", "trace"];

/// The fuzzer's command line with `seed`, `calls`, `holes`, `progress` and
/// `trace` replaced.
pub fn fuzzer_cmdline(
    base: &str,
    seed: u64,
    calls: u64,
    try_holes: bool,
    trace: Option<u64>,
) -> String {
    let mut words: Vec<String> = base
        .split_ascii_whitespace()
        .filter(|w| {
            let key = w.split_once('=').map_or(*w, |(k, _)| k);
            !OWN_KEYS.contains(&key)
        })
        .map(str::to_string)
        .collect();
    words.push(format!("seed={seed:#x}"));
    words.push(format!("calls={calls}"));
    words.push(format!("holes={}", if try_holes { "try" } else { "avoid" }));
    words.push(format!("progress={}", (calls / 10).max(10_000)));
    if let Some(i) = trace {
        words.push(format!("trace={i}"));
    }
    words.join(" ")
}

/// `manifest` (the text of `fuzz.toml`) with the fuzzer's command line
/// rewritten.
pub fn rewrite_manifest(
    manifest: &str,
    seed: u64,
    calls: u64,
    try_holes: bool,
    trace: Option<u64>,
) -> Result<String, String> {
    let mut table: toml::Table = manifest
        .parse()
        .map_err(|e| format!("guests/scenarios/{SCENARIO}.toml: {e}"))?;
    let guests = table
        .get_mut("guest")
        .and_then(|g| g.as_array_mut())
        .ok_or(format!("guests/scenarios/{SCENARIO}.toml has no [[guest]]"))?;
    let fuzzer = guests
        .iter_mut()
        .filter_map(|g| g.as_table_mut())
        .find(|g| g.get("name").and_then(|n| n.as_str()) == Some(FUZZER))
        .ok_or(format!(
            "guests/scenarios/{SCENARIO}.toml has no guest named `{FUZZER}`"
        ))?;
    let base = fuzzer
        .get("cmdline")
        .and_then(|c| c.as_str())
        .unwrap_or("")
        .to_string();
    fuzzer.insert(
        "cmdline".into(),
        fuzzer_cmdline(&base, seed, calls, try_holes, trace).into(),
    );
    toml::to_string(&table).map_err(|e| format!("cannot write the fuzz manifest: {e}"))
}

/// Seconds a run of `calls` calls may take: generous (two helpers may
/// share the CPU), at least the scenario's own timeout.
pub fn default_timeout(calls: u64) -> Duration {
    Duration::from_secs(300 + calls / 2_000)
}

/// Runs `cargo xtask fuzz`.
pub fn fuzz(opts: &Options) -> Result<ExitCode, String> {
    let sh = xshell::Shell::new().map_err(|e| format!("cannot set up a shell: {e}"))?;
    let root = images::root();
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let manifest_path = root.join(format!("guests/scenarios/{SCENARIO}.toml"));
    let text = std::fs::read_to_string(&manifest_path)
        .map_err(|e| format!("cannot read {}: {e}", manifest_path.display()))?;
    let rewritten = rewrite_manifest(&text, seed, opts.calls, opts.try_holes, opts.trace)?;
    let dir = root.join("target/tahoma/fuzz");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path: PathBuf = dir.join(format!("fuzz-{seed:x}.toml"));
    std::fs::write(&path, rewritten)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;

    let qemu = qemu::find_qemu(&sh)?;
    let images = images::build(&sh, &root)?;
    let booter = Booter {
        sh: &sh,
        root: root.clone(),
        images,
        qemu,
        accel: opts.accel.unwrap_or_else(Accel::detect),
    };
    let timeout = opts.timeout.unwrap_or_else(|| default_timeout(opts.calls));
    let log_name = format!("fuzz-{seed:x}");
    let log = booter
        .work_dir()
        .join("logs")
        .join(format!("{log_name}.log"));
    eprintln!(
        "xtask: fuzzing: seed {seed:#x}, {} calls, holes={}, under {}, timeout {} s; serial log {}",
        opts.calls,
        if opts.try_holes { "try" } else { "avoid" },
        booter.accel.name(),
        timeout.as_secs(),
        shown(&log, &root)
    );
    let req = BootRequest {
        scenario: path.display().to_string(),
        timeout: Some(timeout),
        ..Default::default()
    };
    let how = Presentation {
        echo: false,
        gdb: None,
        log_name,
    };
    let started = Instant::now();
    let (outcome, _, _) = booter.boot(&req, &how)?;
    let wall = started.elapsed();
    for f in outcome.facts.guest_of_kind("fuzz-progress") {
        eprintln!("xtask: {}", f.1);
    }
    match check_fuzz_run(&outcome, opts.calls) {
        Ok(r) => {
            println!("{:<24} {:>9} {:>9}", "call", "calls", "ok");
            for (name, n, ok) in &r.per_call {
                println!("{name:<24} {n:>9} {ok:>9}");
            }
            println!(
                "fuzz: PASS seed={:#x} calls={} guest_ms={} calls_per_sec={} (guest clock) wall_s={:.1} canary_checks={}",
                r.seed,
                r.calls,
                r.elapsed_ms,
                r.calls_per_sec,
                wall.as_secs_f64(),
                r.canary_checks
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("fuzz: FAIL seed={seed:#x} calls={}: {e}", opts.calls);
            println!(
                "fuzz: the run ended with {}; reproduce with `cargo xtask fuzz --seed {seed:#x} --calls {}` and read {}",
                outcome.exit,
                opts.calls,
                shown(&log, &root)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn shown(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keys_are_replaced_others_kept() {
        let c = fuzzer_cmdline(
            "seed=0x1 calls=5 canary=2 progress=3 holes=try canary_secret=0x9",
            0xab,
            200_000,
            false,
            None,
        );
        assert_eq!(
            c,
            "canary=2 canary_secret=0x9 seed=0xab calls=200000 holes=avoid progress=20000"
        );
        assert!(fuzzer_cmdline("", 1, 5, true, None).contains("holes=try"));
        assert!(fuzzer_cmdline("trace=1", 1, 5, true, Some(9)).ends_with("progress=10000 trace=9"));
    }

    #[test]
    fn the_manifest_is_rewritten_for_the_fuzzer_only() {
        let text = std::fs::read_to_string(
            images::root().join(format!("guests/scenarios/{SCENARIO}.toml")),
        )
        .unwrap();
        let out = rewrite_manifest(&text, 0x5eed, 1_000_000, false, None).unwrap();
        let t: toml::Table = out.parse().unwrap();
        let guests = t["guest"].as_array().unwrap();
        let fuzzer = guests
            .iter()
            .find(|g| g["name"].as_str() == Some(FUZZER))
            .unwrap();
        let c = fuzzer["cmdline"].as_str().unwrap();
        assert!(
            c.contains("seed=0x5eed") && c.contains("calls=1000000"),
            "{c}"
        );
        assert_eq!(c.matches("seed=").count(), 1, "{c}");
        let canary = guests
            .iter()
            .find(|g| g["name"].as_str() != Some(FUZZER))
            .unwrap();
        assert!(!canary["cmdline"].as_str().unwrap().contains("seed=0x5eed"));
        let e = rewrite_manifest("[[guest]]\nname = \"x\"\n", 1, 1, false, None).unwrap_err();
        assert!(e.contains("no guest named"), "{e}");
    }
}
