//! The hypercall fuzz run (issue 7, deliverable 5): `guests/hcfuzz` calls
//! every hypercall with hostile arguments beside `guests/canary`, which
//! holds a secret. [`check_fuzz_run`] is the verdict on such a run; the
//! scenario test applies it to the short, fixed-seed run of
//! `guests/scenarios/fuzz.toml`, and `cargo xtask fuzz` to long runs.

use hypercall_abi::Hypercall;

use crate::facts::Fact;
use crate::{BootOutcome, BootRequest, Exit, Machine, ScenarioTest};

/// The scenario.
pub const SCENARIO: &str = "fuzz";
/// The fuzzer's domain name in the scenario.
pub const FUZZER: &str = "hcfuzz";
/// The canary's domain name in the scenario.
pub const CANARY: &str = "canary";
/// Fewest calls the test run must make (the scenario asks for 50,000).
pub const TEST_MIN_CALLS: u64 = 20_000;

/// The fuzz scenario tests.
pub fn tests() -> Vec<ScenarioTest> {
    vec![ScenarioTest {
        name: "fuzz_run_leaves_hypervisor_and_canary_intact",
        run: fuzz_run_leaves_hypervisor_and_canary_intact,
    }]
}

fn fuzz_run_leaves_hypervisor_and_canary_intact(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario(SCENARIO))?;
    check_fuzz_run(&out, TEST_MIN_CALLS).map(drop)
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// What a good fuzz run reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuzzReport {
    /// The seed (reproduces the run).
    pub seed: u64,
    /// Hypercalls made by the fuzzer's loop.
    pub calls: u64,
    /// Calls per second of guest time.
    pub calls_per_sec: u64,
    /// Guest milliseconds the loop took.
    pub elapsed_ms: u64,
    /// Checks the canary made.
    pub canary_checks: u64,
    /// Per call: (name, calls, successes).
    pub per_call: Vec<(String, u64, u64)>,
}

/// The verdict on a fuzz run: the hypervisor never faulted or panicked and
/// exited with success, the frame audit balanced, the fuzzer finished all
/// its calls (at least `min_calls`) without a fatal fault of its own, every
/// call number was exercised and answered with a defined code (undefined
/// numbers always `no_such_call`), memory the fuzzer maps read-only never
/// changed, and the canary's secret was intact at every check including one
/// after the last call.
pub fn check_fuzz_run(out: &BootOutcome, min_calls: u64) -> Result<FuzzReport, String> {
    let facts = &out.facts;
    if let Some(bad) = facts.bad.first() {
        return Err(format!(
            "malformed report line {}: `{}`",
            bad.line, bad.text
        ));
    }
    for kind in ["exception", "panic"] {
        if let Some(f) = facts.of_kind(kind).next() {
            return Err(format!("the hypervisor faulted: `{f}`"));
        }
    }
    for kind in ["fuzz-fatal", "fuzz-breach", "canary-breach"] {
        if let Some((who, f)) = facts.guest_of_kind(kind).next() {
            return Err(format!("`{who}` reported `{f}`"));
        }
    }
    if let Some(f) = facts.of_kind("domain-fault").next() {
        return Err(format!("a domain was destroyed: `{f}`"));
    }
    ensure!(
        out.exit == Exit::Success,
        "the run ended with {}, not success",
        out.exit
    );
    let audit = facts.one("audit")?;
    let (free, base) = (audit.number("free_frames")?, audit.number("baseline")?);
    ensure!(
        free == base,
        "`{audit}`: {} frames were not returned",
        base.abs_diff(free)
    );
    for name in [FUZZER, CANARY] {
        let e = facts
            .of_kind("domain-exit")
            .find(|f| f.get("name") == Some(name))
            .ok_or_else(|| format!("no `@ domain-exit` for `{name}`"))?;
        ensure!(
            e.get("reason") == Some("poweroff") && e.number("code")? == 0,
            "`{e}`: expected reason=poweroff code=0"
        );
    }

    let summary = facts.guest_one(FUZZER, "fuzz-summary")?;
    let (calls, target) = (summary.number("calls")?, summary.number("target")?);
    ensure!(
        calls == target,
        "`{summary}`: the fuzzer made {calls} of its {target} calls"
    );
    ensure!(
        calls >= min_calls,
        "`{summary}`: {calls} calls, fewer than the {min_calls} this run must make"
    );
    let checks = facts.guest_one(FUZZER, "fuzz-checks")?;
    ensure!(
        checks.number("ro_intact")? == 1,
        "`{checks}`: memory the fuzzer maps read-only changed (a write went through a read-only mapping)"
    );
    ensure!(
        checks.number("secret_seen")? == 0,
        "`{checks}`: the fuzzer read the canary's secret"
    );
    ensure!(
        checks.number("canary_acked")? == 1,
        "`{checks}`: the canary did not answer the final check"
    );

    let per_call = per_call(
        facts
            .guest_of_kind("fuzz-call")
            .filter(|(n, _)| *n == FUZZER),
    )?;
    let total: u64 = per_call.iter().map(|(_, n, _)| n).sum();
    ensure!(
        total == calls,
        "the per-call lines add up to {total} calls, the summary says {calls}"
    );
    for h in Hypercall::ALL {
        let n = per_call
            .iter()
            .find(|(name, _, _)| name == h.spec_name())
            .map_or(0, |(_, n, _)| *n);
        ensure!(n > 0, "`{}` was never called", h.spec_name());
    }

    let canary = facts.guest_one(CANARY, "canary")?;
    ensure!(
        canary.get("secret") == Some("intact") && canary.number("breaches")? == 0,
        "`{canary}`: the canary's secret was touched"
    );
    let canary_checks = canary.number("checks")?;
    ensure!(
        canary_checks >= 2,
        "`{canary}`: the canary checked only {canary_checks} time(s)"
    );
    Ok(FuzzReport {
        seed: summary.number("seed")?,
        calls,
        calls_per_sec: summary.number("calls_per_sec")?,
        elapsed_ms: summary.number("elapsed_ms")?,
        canary_checks,
        per_call,
    })
}

/// The `@ fuzz-call` lines as (name, calls, successes), checking each: the
/// buckets add up, no undefined result code, `no_such_call` exactly for
/// the undefined numbers.
fn per_call<'a>(
    lines: impl Iterator<Item = (&'a str, &'a Fact)>,
) -> Result<Vec<(String, u64, u64)>, String> {
    const BUCKETS: [&str; 10] = [
        "ok",
        "no_such_call",
        "invalid_argument",
        "bad_address",
        "permission_denied",
        "not_found",
        "wrong_state",
        "no_resources",
        "type_conflict",
        "undefined_code",
    ];
    let mut out = Vec::new();
    for (_, f) in lines {
        let name = f.get("call").ok_or(format!("`{f}` has no `call=`"))?;
        let n = f.number("n")?;
        let mut sum = 0;
        for b in BUCKETS {
            sum += f.number(b)?;
        }
        ensure!(sum == n, "`{f}`: the results add up to {sum}, not {n}");
        ensure!(
            f.number("undefined_code")? == 0,
            "`{f}`: the hypervisor returned a code that is not a defined error (CALL-2)"
        );
        let nsc = f.number("no_such_call")?;
        if name == "undefined" {
            ensure!(
                n > 0 && nsc == n,
                "`{f}`: every undefined number must be refused with no_such_call (CALL-3)"
            );
        } else {
            ensure!(
                Hypercall::ALL.iter().any(|h| h.spec_name() == name),
                "`{f}`: no hypercall is called `{name}`"
            );
            ensure!(nsc == 0, "`{f}`: a defined call was answered no_such_call");
        }
        out.push((name.to_string(), n, f.number("ok")?));
    }
    ensure!(
        !out.is_empty(),
        "the fuzzer reported no `@ fuzz-call` lines"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The verdict against canned transcripts: it passes a good run and
    //! fails each way a run can go wrong.

    use super::*;

    /// Calls in the canned run: one per defined hypercall and 5 undefined
    /// (so the fixture follows the number table as it grows).
    fn total() -> u64 {
        Hypercall::ALL.len() as u64 + 5
    }

    fn good() -> String {
        let mut t = format!(
            "@ boot abi=0x1 cmdline=\"\"\n\
             [hcfuzz] @ fuzz-start seed=0x7 calls={} canary=2 holes=avoid\n",
            total()
        );
        let per = 1;
        for h in Hypercall::ALL {
            t.push_str(&format!(
                "[hcfuzz] @ fuzz-call call={} n={per} ok={per} no_such_call=0 invalid_argument=0 bad_address=0 permission_denied=0 not_found=0 wrong_state=0 no_resources=0 type_conflict=0 undefined_code=0\n",
                h.spec_name()
            ));
        }
        let undefined = total() - Hypercall::ALL.len() as u64;
        t.push_str(&format!(
            "[hcfuzz] @ fuzz-call call=undefined n={undefined} ok=0 no_such_call={undefined} invalid_argument=0 bad_address=0 permission_denied=0 not_found=0 wrong_state=0 no_resources=0 type_conflict=0 undefined_code=0\n"
        ));
        t.push_str(&format!(
            "[canary] @ canary checks=5 reg_checks=5 pokes=1 breaches=0 secret=intact\n\
             @ domain-exit id=2 name=\"canary\" reason=poweroff code=0 hypercalls=9\n\
             [hcfuzz] @ fuzz-summary seed=0x7 calls={n} target={n} elapsed_ms=1 calls_per_sec=30000 aux_calls=3 holes=avoid\n\
             [hcfuzz] @ fuzz-checks ro_intact=1 canary_acked=1 secret_seen=0 probes=1 probe_faults=1 pages_read=0 guarded=0 identity=0 blocks=1 populated=0 released=0\n\
             @ domain-exit id=1 name=\"hcfuzz\" reason=poweroff code=0 hypercalls=40\n\
             @ audit free_frames=100 baseline=100\n\
             @ exit status=success\n",
            n = total()
        ));
        t
    }

    fn verdict(t: &str, exit: Exit) -> Result<FuzzReport, String> {
        check_fuzz_run(&BootOutcome::new(exit, Some(33), t.to_string()), total())
    }

    #[test]
    fn a_good_run_passes() {
        let r = verdict(&good(), Exit::Success).unwrap();
        assert_eq!((r.seed, r.calls, r.calls_per_sec), (7, total(), 30000));
        assert_eq!(r.canary_checks, 5);
        assert_eq!(r.per_call.len(), Hypercall::ALL.len() + 1);
    }

    #[test]
    fn each_defect_fails_the_run() {
        let g = good();
        let (n, less) = (total(), total() - 1);
        let calls = format!("calls={n} target={n}");
        let fewer = format!("calls={less} target={n}");
        let made = format!("made {less} of its {n}");
        let cases: &[(&str, &str, &str)] = &[
            ("@ exit status=success\n", "@ exception vector=14 rip=0x1\n@ exit status=success\n", "hypervisor faulted"),
            ("@ exit status=success\n", "@ panic message=\"x\" location=\"y\"\n", "hypervisor faulted"),
            ("baseline=100", "baseline=101", "not returned"),
            (&calls, &fewer, &made),
            ("ro_intact=1", "ro_intact=0", "read-only"),
            ("secret_seen=0", "secret_seen=1", "canary's secret"),
            ("canary_acked=1", "canary_acked=0", "final check"),
            ("breaches=0 secret=intact", "breaches=1 secret=broken", "secret was touched"),
            ("checks=5 reg", "checks=1 reg", "checked only 1"),
            ("name=\"hcfuzz\" reason=poweroff code=0", "name=\"hcfuzz\" reason=crash code=1", "reason=poweroff"),
            ("[canary] @ canary checks", "[canary] @ canary-breach kind=memory index=3\n[canary] @ canary checks", "canary-breach"),
            ("[hcfuzz] @ fuzz-summary", "[hcfuzz] @ fuzz-fatal index=3 vector=14\n[hcfuzz] @ fuzz-summary", "fuzz-fatal"),
            ("call=yield n=1 ok=1", "call=yield n=2 ok=1", "add up"),
            ("call=yield n=1 ok=1 no_such_call=0", "call=yield n=1 ok=0 no_such_call=1", "answered no_such_call"),
            (
                "call=memory_info n=1 ok=1 no_such_call=0 invalid_argument=0 bad_address=0 permission_denied=0 not_found=0 wrong_state=0 no_resources=0 type_conflict=0 undefined_code=0",
                "call=memory_info n=1 ok=0 no_such_call=0 invalid_argument=0 bad_address=0 permission_denied=0 not_found=0 wrong_state=0 no_resources=0 type_conflict=0 undefined_code=1",
                "not a defined error",
            ),
        ];
        // The undefined calls: however many the fixture has (`total()`
        // minus the defined ones), one answered with success is a defect.
        let u = usize::try_from(total()).unwrap() - Hypercall::ALL.len();
        let (from, to) = (
            format!("call=undefined n={u} ok=0 no_such_call={u}"),
            format!("call=undefined n={u} ok=1 no_such_call={}", u - 1),
        );
        let cases: Vec<(&str, &str, &str)> = cases
            .iter()
            .copied()
            .chain([(from.as_str(), to.as_str(), "refused with no_such_call")])
            .collect();
        for (from, to, why) in cases {
            assert!(g.contains(from), "fixture lacks {from:?}");
            let t = g.replacen(from, to, 1);
            let err = verdict(&t, Exit::Success).expect_err(to);
            assert!(err.contains(why), "{from} -> {to}: {err}");
        }
        let never = g
            .replace("call=mmu_pin n=1 ok=1", "call=mmu_pin n=0 ok=0")
            .replace(
                &format!("call=undefined n={u} ok=0 no_such_call={u}"),
                &format!("call=undefined n={} ok=0 no_such_call={}", u + 1, u + 1),
            );
        let err = verdict(&never, Exit::Success).unwrap_err();
        assert!(err.contains("`mmu_pin` was never called"), "{err}");
        let err = verdict(&g, Exit::Failure).unwrap_err();
        assert!(err.contains("not success"), "{err}");
        let err = check_fuzz_run(&BootOutcome::new(Exit::Success, Some(33), g.clone()), n + 1)
            .unwrap_err();
        assert!(err.contains(&format!("fewer than the {}", n + 1)), "{err}");
        let dup = g.replace("[canary] @ canary checks", "[hcfuzz] @ fuzz-summary seed=0x8 calls=35 target=35 elapsed_ms=1 calls_per_sec=1 aux_calls=0 holes=avoid\n[canary] @ canary checks");
        assert!(verdict(&dup, Exit::Success)
            .unwrap_err()
            .contains("several"));
    }
}
