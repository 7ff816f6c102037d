//! The density sweep of `cargo xtask bench` (issue 13): the `bench-density`
//! scenario booted again, under `-icount`, with fewer of its counted guests
//! (the idle ones), so the bench can show how the domain switch, the build
//! of one guest and its frames behave from 2 domains to as many as the
//! scenario holds.
//!
//! The largest count is the one `bench-density.toml` asks for (its one
//! `[[guest]]` with `count`); the others are 0, 1, 3, 10, 30, ... below it,
//! or the counts given with `--counts`. Each point boots a copy of the
//! manifest with that count (written under `target/tahoma/bench-sweep/`),
//! so it is checked like any scenario.
//!
//! What each point reports:
//!
//! * the switch: the ping-pong's `domain_switch_density` with that many
//!   domains present;
//! * frames per idle guest: the mean of `pages - shared + 1` (its frames and its
//!   shared page) over the idle guests' `@ domain-start` lines;
//! * the build of one idle guest: `@ density` gives the mean build over all
//!   domains, the two switch guests (2 MiB each) among them; their share is
//!   measured alone (the point with no idle guest, always booted) and taken
//!   out: `(started * mean - pair's) / idle`. The report's means are
//!   rounded down, so the figure is within `started / idle` instructions
//!   (at most 3) of the exact mean.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tahoma_tests::{BootRequest, Facts};

use crate::bench::{self, Record, Row, Value};
use crate::machine::{Booter, Presentation};

/// The scenario the sweep varies.
pub const SCENARIO: &str = "bench-density";
/// What `--only` matches to run the sweep.
pub const NAME: &str = "density-sweep";
/// The prefix of the sweep's records: `density_sweep.<domains>.<figure>`.
pub const PREFIX: &str = "density_sweep";
/// The bench figure each point's switch is taken from.
const SWITCH_FIGURE: &str = "domain_switch_density";

/// The scenario's manifest and its one counted guest.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    manifest: toml::Table,
    /// Index of the counted guest in `[[guest]]`.
    index: usize,
    /// Its name (copies are `NAME-0`, `NAME-1`, ...).
    pub guest: String,
    /// The count the manifest asks for: the largest point.
    pub max: u64,
    /// The other guests (the switch pair): domains started besides the
    /// counted ones.
    pub others: u64,
}

impl Plan {
    /// Finds the one `[[guest]]` with `count` in the manifest `text`.
    pub fn parse(text: &str) -> Result<Plan, String> {
        let manifest: toml::Table = text.parse().map_err(|e| format!("{SCENARIO}.toml: {e}"))?;
        let guests = manifest
            .get("guest")
            .and_then(toml::Value::as_array)
            .ok_or(format!("{SCENARIO}.toml has no [[guest]]"))?;
        let counted: Vec<(usize, &toml::Table)> = guests
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.as_table().map(|t| (i, t)))
            .filter(|(_, t)| t.contains_key("count"))
            .collect();
        let [(index, g)] = counted[..] else {
            return Err(format!(
                "{SCENARIO}.toml has {} [[guest]] tables with `count`; the sweep varies \
                 exactly one (the idle guests): give one guest a count",
                counted.len()
            ));
        };
        let max = g
            .get("count")
            .and_then(toml::Value::as_integer)
            .and_then(|c| u64::try_from(c).ok())
            .filter(|&c| c >= 1)
            .ok_or(format!(
                "{SCENARIO}.toml: the counted guest's `count` is not a positive integer"
            ))?;
        let guest = g
            .get("name")
            .and_then(toml::Value::as_str)
            .ok_or(format!("{SCENARIO}.toml: the counted guest has no name"))?
            .to_string();
        Ok(Plan {
            others: guests.len() as u64 - 1,
            manifest,
            index,
            guest,
            max,
        })
    }

    /// The manifest with `n` counted guests (none at all for 0).
    pub fn variant(&self, n: u64) -> Result<String, String> {
        let mut m = self.manifest.clone();
        let Some(toml::Value::Array(guests)) = m.get_mut("guest") else {
            return Err(format!("{SCENARIO}.toml has no [[guest]]"));
        };
        if n == 0 {
            guests.remove(self.index);
        } else {
            let count = i64::try_from(n).map_err(|_| format!("count {n} is too large"))?;
            if let Some(t) = guests
                .get_mut(self.index)
                .and_then(toml::Value::as_table_mut)
            {
                t.insert("count".into(), toml::Value::Integer(count));
            }
        }
        let mut text = format!(
            "# Written by `cargo xtask bench` (density sweep): {SCENARIO}.toml with \
             {n} x `{}`.\n",
            self.guest
        );
        text.push_str(&toml::to_string(&m).map_err(|e| format!("cannot write TOML: {e}"))?);
        Ok(text)
    }

    /// The names the counted guest's `n` copies get (as the manifest
    /// expands `count`).
    pub fn names(&self, n: u64) -> Vec<String> {
        match n {
            0 => Vec::new(),
            1 => vec![self.guest.clone()],
            _ => (0..n).map(|i| format!("{}-{i}", self.guest)).collect(),
        }
    }
}

/// The default points: 0 (the switch pair alone), 1, 3, 10, 30, ... below
/// `max`, and `max`.
pub fn default_counts(max: u64) -> Vec<u64> {
    let mut out = vec![0];
    let mut decade = 1u64;
    while decade < max {
        for c in [decade, decade * 3] {
            if c < max {
                out.push(c);
            }
        }
        decade = decade.saturating_mul(10);
    }
    out.push(max);
    out
}

/// The counts to boot: `asked` (or the defaults), sorted, without
/// duplicates, with 0 added (the pair alone, which the build per guest is
/// measured against).
pub fn counts(asked: Option<&[u64]>, max: u64) -> Vec<u64> {
    let mut c = asked.map_or_else(|| default_counts(max), <[u64]>::to_vec);
    c.push(0);
    c.sort_unstable();
    c.dedup();
    c
}

/// What one boot of the sweep reported.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Counted (idle) guests asked for.
    pub idle: u64,
    /// Domains started (`@ density started=`): the pair and the idle guests.
    pub started: u64,
    /// `@ density build_ticks_per_domain=` (mean over all, rounded down).
    pub build_mean: u64,
    /// The switch with that many domains present (instructions).
    pub switch: u64,
    /// Mean frames of an idle guest (none when `idle` is 0).
    pub frames: Option<u64>,
}

/// Reads one point out of a boot's facts.
pub fn point(facts: &Facts, plan: &Plan, idle: u64) -> Result<Point, String> {
    let d = facts.one("density")?;
    let started = d.number("started")?;
    let refused = d.number("refused")?;
    if refused > 0 || started != idle + plan.others {
        let why = facts
            .of_kind("domain-error")
            .next()
            .map(|f| format!(" (first: @ {f})"))
            .unwrap_or_default();
        return Err(format!(
            "{idle} idle guests asked for: {started} domains started, {refused} refused{why}; \
             ask for fewer (--counts) or give {SCENARIO}.toml more memory"
        ));
    }
    let figures = bench::collect(facts, None, bench::Clock::Icount)?;
    let switch = figures
        .figures
        .iter()
        .find(|g| g.name == SWITCH_FIGURE)
        .ok_or(format!(
            "no `@ bench name={SWITCH_FIGURE}` (the switch pair's figure) among {:?}",
            figures.figures.iter().map(|g| &g.name).collect::<Vec<_>>()
        ))?
        .median;
    let names = plan.names(idle);
    let mut pages = Vec::new();
    for f in facts.of_kind("domain-start") {
        if f.get("name").is_some_and(|n| names.iter().any(|x| x == n)) {
            // Its own frames: the image's shared read-only pages are
            // counted once, with the first guest of the image (MEM-2e).
            pages.push(f.number("pages")? - f.number("shared")?);
        }
    }
    if pages.len() as u64 != idle {
        return Err(format!(
            "{} `@ domain-start` lines of `{}` copies, {idle} expected",
            pages.len(),
            plan.guest
        ));
    }
    let frames = (idle > 0).then(|| (pages.iter().sum::<u64>() + idle).div_ceil(idle));
    Ok(Point {
        idle,
        started,
        build_mean: d.number("build_ticks_per_domain")?,
        switch,
        frames,
    })
}

/// The build of one idle guest at `p`: all builds less the pair's (the
/// point with no idle guest), over the idle guests.
pub fn build_per_guest(p: &Point, pair: &Point) -> Option<u64> {
    if p.idle == 0 {
        return None;
    }
    let all = p.started * p.build_mean;
    let pair_total = pair.started * pair.build_mean;
    Some(all.saturating_sub(pair_total).div_ceil(p.idle))
}

/// The table rows (and JSON records) of the sweep:
/// `density_sweep.<domains>.{domain_switch,start_per_guest,frames_per_guest}`.
pub fn rows(points: &[Point]) -> Result<Vec<Row>, String> {
    let pair = points
        .iter()
        .find(|p| p.idle == 0)
        .ok_or("the sweep has no point without idle guests (the pair alone)")?;
    let mut rows = Vec::new();
    let mut row = |name: String, v: u64, unit: &str, detail: String, compare: &str| {
        rows.push(Row {
            record: Record {
                name,
                value: Value::Count(v),
                unit: unit.into(),
            },
            detail,
            compare: compare.into(),
        });
    };
    for p in points {
        let key = format!("{PREFIX}.{}", p.started);
        row(
            format!("{key}.domain_switch"),
            p.switch,
            "instructions",
            format!(
                "{} domains: the switch pair + {} idle",
                bench::group(p.started),
                bench::group(p.idle)
            ),
            "flat: the switch at 2 domains (SCHED-0)",
        );
        if let Some(b) = build_per_guest(p, pair) {
            row(
                format!("{key}.start_per_guest"),
                b,
                "instructions",
                format!("build of one idle guest, mean of {}", bench::group(p.idle)),
                "flat in the number of domains",
            );
        }
        if let Some(f) = p.frames {
            row(
                format!("{key}.frames_per_guest"),
                f,
                "frames",
                "an idle guest's pages and shared page".into(),
                "goal <= 25 for 20,000 in 2 GiB",
            );
        }
    }
    Ok(rows)
}

/// Boots the sweep: one boot of the density scenario per count, under
/// `-icount`. Returns its rows.
pub fn run(
    booter: &Booter<'_>,
    root: &Path,
    asked: Option<&[u64]>,
    timeout: Option<Duration>,
) -> Result<Vec<Row>, String> {
    let path = root.join(format!("guests/scenarios/{SCENARIO}.toml"));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let plan = Plan::parse(&text)?;
    let dir = root.join("target/tahoma/bench-sweep");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let counts = counts(asked, plan.max);
    let icount: Vec<String> = bench::ICOUNT_ARGS.iter().map(|s| s.to_string()).collect();
    let mut points = Vec::new();
    for (i, &n) in counts.iter().enumerate() {
        let file: PathBuf = dir.join(format!("{SCENARIO}-sweep-{n}.toml"));
        std::fs::write(&file, plan.variant(n)?)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        eprint!(
            "xtask: bench sweep [{}/{}] {n} x {} ... ",
            i + 1,
            counts.len(),
            plan.guest
        );
        let started = Instant::now();
        let req = BootRequest {
            scenario: file.display().to_string(),
            timeout,
            ..Default::default()
        };
        let how = Presentation {
            echo: false,
            gdb: None,
            log_name: format!("bench/{SCENARIO}-sweep-{n}.icount"),
        };
        let name = format!("{SCENARIO} with {n} x {}", plan.guest);
        let (outcome, _, _) = booter.boot_with(&req, &how, &icount).map_err(|e| {
            format!("{name}: {e} (a point of the density sweep: ask for fewer with --counts)")
        })?;
        eprintln!("{:.1} s", started.elapsed().as_secs_f64());
        bench::check(&outcome, &name)?;
        let p = point(&outcome.facts, &plan, n)
            .map_err(|e| format!("{name}: {e}{}", bench::log_hint(&outcome)))?;
        points.push(p);
    }
    rows(&points)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "\
description = \"bench: density\"
timeout = 900
memory = \"2G\"

[[guest]]
name = \"switch-a\"
image = \"bench\"
memory = \"2M\"
cmdline = \"role=switch-a iters=2000 warmup=50 suffix=density\"

[[guest]]
name = \"switch-b\"
image = \"bench\"
memory = \"2M\"
critical = false
cmdline = \"role=switch-b\"

[[guest]]
name = \"idle\"
image = \"idle\"
memory = \"128K\"
critical = false
count = 15000
";

    fn scenario(text: &str) -> crate::manifest::Scenario {
        crate::manifest::Scenario::parse(Path::new("sweep.toml"), text).unwrap()
    }

    #[test]
    fn the_largest_point_is_the_manifests_count() {
        let plan = Plan::parse(MANIFEST).unwrap();
        assert_eq!(
            (plan.guest.as_str(), plan.max, plan.others),
            ("idle", 15_000, 2)
        );
        let twenty = MANIFEST.replace("count = 15000", "count = 19998");
        assert_eq!(Plan::parse(&twenty).unwrap().max, 19_998);
        // No counted guest, or two: refused, not guessed.
        let none = MANIFEST.replace("count = 15000\n", "");
        assert!(Plan::parse(&none).unwrap_err().contains("0 [[guest]]"));
        let two = MANIFEST.replace(
            "critical = false\ncmdline = \"role=switch-b\"",
            "critical = false\ncount = 2\ncmdline = \"role=switch-b\"",
        );
        assert!(Plan::parse(&two).unwrap_err().contains("2 [[guest]]"));
    }

    #[test]
    fn variants_are_valid_manifests_with_that_many_guests() {
        let plan = Plan::parse(MANIFEST).unwrap();
        for (n, names) in [
            (0u64, vec!["switch-a", "switch-b"]),
            (1, vec!["switch-a", "switch-b", "idle"]),
            (
                3,
                vec!["switch-a", "switch-b", "idle-0", "idle-1", "idle-2"],
            ),
        ] {
            let s = scenario(&plan.variant(n).unwrap());
            let got: Vec<_> = s.guests.iter().map(|g| g.name.as_str()).collect();
            assert_eq!(got, names, "{n}");
            assert_eq!(s.memory_mib, 2048);
            assert_eq!(
                s.guests[0].cmdline,
                "role=switch-a iters=2000 warmup=50 suffix=density"
            );
            let expected: Vec<String> = names[2..].iter().map(|s| s.to_string()).collect();
            assert_eq!(plan.names(n), expected);
        }
        assert_eq!(
            scenario(&plan.variant(15_000).unwrap()).guests.len(),
            15_002
        );
    }

    #[test]
    fn counts_run_in_decades_up_to_the_manifests() {
        assert_eq!(
            default_counts(15_000),
            [0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 15_000]
        );
        assert_eq!(default_counts(19_998).last(), Some(&19_998));
        assert_eq!(default_counts(30), [0, 1, 3, 10, 30]);
        assert_eq!(default_counts(1), [0, 1]);
        // Asked-for counts always get the pair alone, sorted, once each.
        assert_eq!(counts(Some(&[100, 10, 100]), 15_000), [0, 10, 100]);
        assert_eq!(counts(None, 3), [0, 1, 3]);
    }

    fn boot(idle: u64, build_mean: u64, pages: u64, switch: u64, refused: u64) -> String {
        let started = idle + 2 - refused;
        let mut t = String::from(
            "@ domain-start id=1 name=\"switch-a\" pages=513 shared=0 critical=1 fpu_bytes=512\n\
             @ domain-start id=2 name=\"switch-b\" pages=513 shared=0 critical=0 fpu_bytes=512\n",
        );
        for i in 0..idle - refused {
            let name = if idle == 1 {
                "idle".to_string()
            } else {
                format!("idle-{i}")
            };
            t.push_str(&format!(
                "@ domain-start id={} name=\"{name}\" pages={pages} shared=0 critical=0 fpu_bytes=512\n",
                i + 3
            ));
        }
        if refused > 0 {
            t.push_str("@ domain-error id=9 name=\"idle-8\" what=\"machine memory full\"\n");
        }
        t.push_str(&format!(
            "@ density started={started} refused={refused} frames_per_domain=40 \
             build_ticks_per_domain={build_mean} heap_per_domain=1700 heap_per_domain_max=1800 \
             heap_free=1 heap_bytes=2\n\
             [switch-a] @ bench name=yield_round_trip_density value={} min=1 mean=1 iters=2000 unit=ticks\n\
             [switch-a] @ bench name={SWITCH_FIGURE} value={switch} min=1 mean=1 iters=2000 unit=ticks\n\
             @ exit status=success\n",
            2 * switch
        ));
        t
    }

    #[test]
    fn a_point_takes_the_pairs_builds_out() {
        let plan = Plan::parse(MANIFEST).unwrap();
        // The pair alone: 2 x 480,000; with 10 idle guests of 89,000 each
        // the mean over 12 is 154,166 (rounded down from 154,166.67).
        let pair = point(&Facts::parse(&boot(0, 480_000, 0, 500, 0)), &plan, 0).unwrap();
        assert_eq!((pair.started, pair.switch, pair.frames), (2, 500, None));
        let ten = point(&Facts::parse(&boot(10, 154_166, 32, 501, 0)), &plan, 10).unwrap();
        assert_eq!((ten.started, ten.switch, ten.frames), (12, 501, Some(33)));
        // (12 x 154,166 - 960,000) / 10 = 88,999.2: within 12/10 of 89,000.
        assert_eq!(build_per_guest(&ten, &pair), Some(89_000));
        assert_eq!(build_per_guest(&pair, &pair), None);
        let one = point(&Facts::parse(&boot(1, 349_666, 32, 500, 0)), &plan, 1).unwrap();
        assert_eq!(one.frames, Some(33));
        assert_eq!(build_per_guest(&one, &pair), Some(88_998));

        let rows = rows(&[pair, ten]).unwrap();
        let names: Vec<_> = rows.iter().map(|r| r.record.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "density_sweep.2.domain_switch",
                "density_sweep.12.domain_switch",
                "density_sweep.12.start_per_guest",
                "density_sweep.12.frames_per_guest"
            ]
        );
        assert_eq!(rows[2].record.value, Value::Count(89_000));
        assert_eq!(rows[3].record.unit, "frames");
    }

    #[test]
    fn a_point_with_refused_or_missing_guests_is_an_error() {
        let plan = Plan::parse(MANIFEST).unwrap();
        let e = point(&Facts::parse(&boot(10, 1, 32, 500, 2)), &plan, 10).unwrap_err();
        assert!(
            e.contains("2 refused") && e.contains("machine memory full"),
            "{e}"
        );
        // Fewer idle guests reported than asked for.
        let e = point(&Facts::parse(&boot(10, 1, 32, 500, 0)), &plan, 11).unwrap_err();
        assert!(e.contains("11 idle guests asked for"), "{e}");
        // No switch figure.
        let t = boot(1, 1, 32, 500, 0).replace(SWITCH_FIGURE, "other");
        assert!(point(&Facts::parse(&t), &plan, 1)
            .unwrap_err()
            .contains(SWITCH_FIGURE));
        // The rows need the pair alone.
        let one = point(&Facts::parse(&boot(1, 1, 32, 500, 0)), &plan, 1).unwrap();
        assert!(rows(&[one]).is_err());
    }
}
