//! The scenario tests. Each boots something and checks the facts it reported.

use crate::{BootOutcome, BootRequest, Exit, Machine, PackMutation, ScenarioTest};

/// Every scenario test, in the order `cargo xtask test` runs them.
pub fn scenario_tests() -> Vec<ScenarioTest> {
    let mut tests = vec![
        ScenarioTest {
            name: "boot_reports_memory_and_heap",
            run: boot_reports_memory_and_heap,
        },
        ScenarioTest {
            name: "hypervisor_exception_is_reported_and_fails",
            run: hypervisor_exception_is_reported_and_fails,
        },
        ScenarioTest {
            name: "hypervisor_panic_is_reported_and_fails",
            run: hypervisor_panic_is_reported_and_fails,
        },
        ScenarioTest {
            name: "truncated_boot_module_is_refused",
            run: truncated_boot_module_is_refused,
        },
        ScenarioTest {
            name: "missing_boot_module_is_reported",
            run: missing_boot_module_is_reported,
        },
        ScenarioTest {
            name: "leaked_frame_fails_the_run_with_an_audit_report",
            run: leaked_frame_fails_the_run_with_an_audit_report,
        },
        ScenarioTest {
            name: "cpu_without_smep_or_smap_is_refused",
            run: cpu_without_smep_or_smap_is_refused,
        },
    ];
    tests.extend(crate::guests::tests());
    tests.extend(crate::blk::tests());
    tests.extend(crate::kv::tests());
    tests.extend(crate::fuzz::tests());
    tests
}

/// Returns `Err(format!(...))` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Checks that hold for every run: every `@ ` line is well formed, and an
/// `@ exit` line (if any) agrees with how QEMU actually exited.
fn consistent(out: &BootOutcome) -> Result<(), String> {
    if let Some(bad) = out.facts.bad.first() {
        return Err(format!(
            "malformed report line {} `{}`: {} ({} malformed in all)",
            bad.line,
            bad.text,
            bad.error,
            out.facts.bad.len()
        ));
    }
    let exits: Vec<_> = out.facts.of_kind("exit").collect();
    ensure!(
        exits.len() <= 1,
        "{} `@ exit` lines; the hypervisor must exit once",
        exits.len()
    );
    if let Some(fact) = exits.first() {
        let said = fact.get("status").unwrap_or("");
        let agrees = match said {
            "success" => out.exit == Exit::Success,
            "failure" => out.exit == Exit::Failure,
            _ => false,
        };
        ensure!(
            agrees,
            "`{fact}` but the run ended with {}: the exit port and the report disagree",
            out.exit
        );
    }
    Ok(())
}

fn expect_exit(out: &BootOutcome, want: &Exit) -> Result<(), String> {
    consistent(out)?;
    ensure!(
        out.exit == *want,
        "expected the run to end with {want}, it ended with {}",
        out.exit
    );
    Ok(())
}

/// The decimal numbers in `text`.
fn numbers_in(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Issue #2: a plain boot reports its memory map, a working heap, the boot
/// pack it received (byte-exact size, scenario name) and exits with success.
fn boot_reports_memory_and_heap(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("boot"))?;
    expect_exit(&out, &Exit::Success)?;

    let boot = out.facts.one("boot")?;
    ensure!(boot.get("abi").is_some(), "`{boot}` has no `abi=`");

    let mm = out.facts.one("memmap")?;
    let usable = mm.number("usable_frames")?;
    let free = mm.number("free_frames")?;
    ensure!(mm.number("regions")? > 0, "`{mm}`: no memory regions");
    ensure!(mm.number("ram_bytes")? > 0, "`{mm}`: no RAM");
    ensure!(usable > 0, "`{mm}`: no usable frames");
    ensure!(
        free <= usable,
        "`{mm}`: more free frames ({free}) than usable ones ({usable})"
    );

    let heap = out.facts.one("heap")?;
    ensure!(heap.has_word("ok"), "`{heap}`: the heap is not ok");
    ensure!(heap.number("bytes")? > 0, "`{heap}`: an empty heap");

    let pack = out.facts.one("bootpack")?;
    let handed = out
        .pack_size
        .ok_or("the machine handed over no boot pack for scenario `boot`")?;
    let seen = pack.number("size")?;
    ensure!(
        seen == handed,
        "`{pack}`: the hypervisor saw {seen} bytes but the pack file holds {handed}"
    );
    ensure!(
        pack.number("domains")? == 0,
        "`{pack}`: boot.toml has no guests"
    );
    ensure!(
        pack.get("scenario") == Some("boot"),
        "`{pack}`: the scenario name recorded in the pack is `boot`"
    );

    let exit = out.facts.one("exit")?;
    ensure!(
        exit.get("status") == Some("success"),
        "`{exit}`: expected status=success"
    );
    Ok(())
}

/// A page fault inside the hypervisor is reported with its registers and a
/// backtrace, and the run fails (rather than hanging or rebooting).
fn hypervisor_exception_is_reported_and_fails(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("boot").cmdline("selftest=pagefault"))?;
    expect_exit(&out, &Exit::Failure)?;

    let exc = out.facts.one("exception")?;
    ensure!(
        exc.number("vector")? == 14,
        "`{exc}`: expected vector=14 (page fault)"
    );
    ensure!(
        exc.number("cr2")? == 0xdead_b000,
        "`{exc}`: expected cr2=0xdeadb000, the address the selftest touches"
    );
    for key in ["error", "rip", "rsp"] {
        exc.number(key)?;
    }
    let exc_at = out
        .facts
        .facts
        .iter()
        .position(|f| f.kind == "exception")
        .unwrap_or(0);
    ensure!(
        out.facts.facts[exc_at..]
            .iter()
            .any(|f| f.kind == "backtrace"),
        "no `@ backtrace` line after `{exc}`"
    );
    Ok(())
}

/// A panic inside the hypervisor is reported with its message and location,
/// and the run fails.
fn hypervisor_panic_is_reported_and_fails(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("boot").cmdline("selftest=panic"))?;
    expect_exit(&out, &Exit::Failure)?;

    let panic = out.facts.one("panic")?;
    let message = panic
        .get("message")
        .ok_or(format!("`{panic}` has no message="))?;
    ensure!(
        message.contains("selftest"),
        "`{panic}`: the message should mention the selftest that panicked"
    );
    let location = panic.get("location").unwrap_or("");
    ensure!(
        location.contains(':'),
        "`{panic}`: expected location=\"file:line\""
    );
    Ok(())
}

/// Issue 7, finding 9: the end-of-run frame audit has teeth. With
/// `testopt=leak-frame` the hypervisor loses one frame on purpose; the
/// guest itself ends well, and the run must still FAIL, with an audit
/// report that names the leaked frame.
fn leaked_frame_fails_the_run_with_an_audit_report(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("hello").cmdline("testopt=leak-frame"))?;
    expect_exit(&out, &Exit::Failure)?;
    let leak = out
        .facts
        .of_kind("testopt")
        .find(|f| f.has_word("leak-frame"))
        .ok_or("no `@ testopt leak-frame mfn=...`: the option was not applied")?;
    let mfn = leak.number("mfn")?;
    let hello = out.facts.one("domain-exit")?;
    ensure!(
        hello.get("reason") == Some("poweroff") && hello.get("code") == Some("0"),
        "`{hello}`: the guest should end well; only the audit fails the run"
    );
    let audit = out.facts.one("audit")?;
    ensure!(
        audit.get("status") == Some("failed"),
        "`{audit}`: expected status=failed"
    );
    ensure!(
        audit.number("baseline")? == audit.number("free_frames")? + 1,
        "`{audit}`: expected exactly one frame missing"
    );
    ensure!(
        out.facts
            .of_kind("audit-error")
            .any(|e| e.number("mfn").ok() == Some(mfn)
                && e.get("what").is_some_and(|w| w.contains("leaked"))),
        "no `@ audit-error mfn={mfn:#x} what=\"...leaked\"` naming the lost frame"
    );
    let exit = out.facts.one("exit")?;
    ensure!(
        exit.get("status") == Some("failure"),
        "`{exit}`: expected status=failure"
    );
    Ok(())
}

/// A boot module one byte short is refused with both sizes named, and the
/// run fails.
fn truncated_boot_module_is_refused(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("boot").pack(PackMutation::Truncate(1)))?;
    expect_exit(&out, &Exit::Failure)?;

    let handed = out
        .pack_size
        .ok_or("the machine handed over no boot module")?;
    let pack = out.facts.one("bootpack")?;
    let error = pack.get("error").ok_or(format!(
        "`{pack}`: expected `@ bootpack error=...` for a truncated module"
    ))?;
    let numbers = numbers_in(error);
    ensure!(
        numbers.contains(&handed) && numbers.contains(&(handed + 1)),
        "`{pack}`: the error should name the declared size ({}) and the size received ({handed})",
        handed + 1
    );
    Ok(())
}

/// Without a boot module the hypervisor says so and still boots cleanly.
fn missing_boot_module_is_reported(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("boot").pack(PackMutation::Omit))?;
    expect_exit(&out, &Exit::Success)?;
    ensure!(
        out.pack_size.is_none(),
        "the machine handed over a module although none was asked for"
    );
    let pack = out.facts.one("bootpack")?;
    ensure!(
        pack.has_word("none"),
        "`{pack}`: expected `@ bootpack none` when no module was given"
    );
    Ok(())
}

/// CPU models without SMEP, SMAP or both, and what the hypervisor must
/// name as missing (docs/abi/cpu.md, "Requirements of the CPU").
pub const WEAK_CPUS: [(&str, &str); 3] = [
    ("qemu64", "smep smap"),
    ("qemu64,+smep", "smap"),
    ("qemu64,+smap", "smep"),
];

/// On a CPU without SMEP or SMAP the hypervisor refuses to start: it names
/// what is missing, says what to do, builds no domain and fails the run.
fn cpu_without_smep_or_smap_is_refused(m: &dyn Machine) -> Result<(), String> {
    for (model, missing) in WEAK_CPUS {
        let out = m.boot(&BootRequest::scenario("hello").cpu(model))?;
        expect_exit(&out, &Exit::Failure).map_err(|e| format!("-cpu {model}: {e}"))?;
        let r = out.facts.one("cpu-refused")?;
        ensure!(
            r.get("missing") == Some(missing),
            "-cpu {model}: `{r}`: expected missing=\"{missing}\""
        );
        ensure!(
            out.facts.of_kind("cpu").next().is_none(),
            "-cpu {model}: the hypervisor reported `@ cpu` (it went on)"
        );
        ensure!(
            out.facts.of_kind("domain-start").next().is_none(),
            "-cpu {model}: a domain was started on a refused CPU"
        );
        ensure!(
            out.transcript.contains(&format!("lacks {missing}"))
                && out.transcript.contains("-cpu qemu64,+smep,+smap"),
            "-cpu {model}: no message naming what is missing and what to do"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Each scenario test against canned transcripts: it passes on a
    //! transcript that satisfies it and fails on ones that do not.

    use super::*;
    use std::cell::RefCell;

    /// Answers every boot with the same canned outcome and records requests.
    struct Canned {
        exit: Exit,
        transcript: String,
        pack_size: Option<u64>,
        seen: RefCell<Vec<BootRequest>>,
    }

    impl Canned {
        fn new(exit: Exit, pack_size: Option<u64>, transcript: &str) -> Self {
            Canned {
                exit,
                transcript: transcript.to_string(),
                pack_size,
                seen: RefCell::new(Vec::new()),
            }
        }
    }

    impl Machine for Canned {
        fn boot(&self, req: &BootRequest) -> Result<BootOutcome, String> {
            self.seen.borrow_mut().push(req.clone());
            let raw = match self.exit {
                Exit::Success => Some(33),
                Exit::Failure => Some(35),
                Exit::Unexpected(s) => Some(s),
                _ => None,
            };
            let mut out = BootOutcome::new(self.exit.clone(), raw, self.transcript.clone());
            out.pack_size = self.pack_size;
            Ok(out)
        }
    }

    const GOOD_BOOT: &str = "\
Tahoma 0.1
@ boot abi=1 cmdline=\"\"
@ memmap regions=6 ram_bytes=536346624 usable_frames=130000 free_frames=129500
@ heap ok bytes=1048576
@ bootpack size=144 domains=0 scenario=\"boot\"
@ exit status=success
";

    fn run(name: &str, m: &Canned) -> Result<(), String> {
        let t = scenario_tests()
            .into_iter()
            .find(|t| t.name == name)
            .expect("test exists");
        (t.run)(m)
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = scenario_tests().iter().map(|t| t.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn boot_test_passes_on_a_good_boot() {
        let m = Canned::new(Exit::Success, Some(144), GOOD_BOOT);
        assert_eq!(run("boot_reports_memory_and_heap", &m), Ok(()));
        assert_eq!(m.seen.borrow()[0], BootRequest::scenario("boot"));
    }

    #[test]
    fn boot_test_fails_on_each_defect() {
        let cases: &[(&str, &str, &str)] = &[
            ("size=144", "size=143", "pack file holds 144"),
            (
                "free_frames=129500",
                "free_frames=130001",
                "more free frames",
            ),
            (
                "usable_frames=130000",
                "usable_frames=0",
                "no usable frames",
            ),
            ("@ heap ok", "@ heap failed", "heap is not ok"),
            ("scenario=\"boot\"", "scenario=\"other\"", "scenario name"),
            ("@ exit status=success\n", "", "no `@ exit`"),
            ("@ memmap", "@ memmapx", "no `@ memmap`"),
            ("cmdline=\"\"", "cmdline=\"", "malformed report line 2"),
        ];
        for (from, to, why) in cases {
            let t = GOOD_BOOT.replace(from, to);
            let m = Canned::new(Exit::Success, Some(144), &t);
            let err = run("boot_reports_memory_and_heap", &m).expect_err(from);
            assert!(err.contains(why), "{from} -> {to}: {err}");
        }
        let m = Canned::new(Exit::Failure, Some(144), GOOD_BOOT);
        let err = run("boot_reports_memory_and_heap", &m).unwrap_err();
        assert!(err.contains("disagree"), "{err}");
        let m = Canned::new(
            Exit::TimedOut(std::time::Duration::from_secs(60)),
            Some(144),
            "",
        );
        let err = run("boot_reports_memory_and_heap", &m).unwrap_err();
        assert!(err.contains("timed out after 60 s"), "{err}");
    }

    const PAGEFAULT: &str = "\
@ boot abi=1 cmdline=\"selftest=pagefault\"
@ exception vector=14 name=page-fault error=0x2 rip=0xffffffff80012345 cr2=0xdeadb000 rsp=0xffffffff80100000
@ backtrace frame=0 rip=0xffffffff80012345
@ exit status=failure
";

    #[test]
    fn exception_test() {
        let name = "hypervisor_exception_is_reported_and_fails";
        let m = Canned::new(Exit::Failure, Some(144), PAGEFAULT);
        assert_eq!(run(name, &m), Ok(()));
        assert_eq!(m.seen.borrow()[0].cmdline, "selftest=pagefault");
        let cases: &[(&str, &str, &str)] = &[
            ("vector=14", "vector=13", "vector=14"),
            ("cr2=0xdeadb000", "cr2=0x0", "cr2=0xdeadb000"),
            ("@ backtrace", "# backtrace", "no `@ backtrace`"),
            ("rip=0xffffffff80012345 cr2", "cr2", "has no `rip=`"),
        ];
        for (from, to, why) in cases {
            let m = Canned::new(Exit::Failure, Some(144), &PAGEFAULT.replace(from, to));
            let err = run(name, &m).expect_err(from);
            assert!(err.contains(why), "{from} -> {to}: {err}");
        }
        let m = Canned::new(
            Exit::TimedOut(std::time::Duration::from_secs(60)),
            Some(144),
            &PAGEFAULT.replace("@ exit status=failure\n", ""),
        );
        assert!(run(name, &m).unwrap_err().contains("timed out"));
        let m = Canned::new(Exit::Unexpected(0), Some(144), "");
        assert!(run(name, &m).unwrap_err().contains("triple fault"));
    }

    #[test]
    fn panic_test() {
        let name = "hypervisor_panic_is_reported_and_fails";
        let good = "@ panic message=\"selftest=panic requested\" location=\"hypervisor/src/selftest.rs:12\"\n";
        assert_eq!(run(name, &Canned::new(Exit::Failure, None, good)), Ok(()));
        let err = run(name, &Canned::new(Exit::Success, None, good)).unwrap_err();
        assert!(
            err.contains("expected the run to end with failure"),
            "{err}"
        );
        let other = good.replace("selftest=panic requested", "oops");
        assert!(run(name, &Canned::new(Exit::Failure, None, &other)).is_err());
        assert!(run(name, &Canned::new(Exit::Failure, None, "")).is_err());
    }

    const LEAK: &str = "\
@ boot abi=1 cmdline=\"testopt=leak-frame\"
@ testopt leak-frame mfn=0x128f
@ domain-exit id=1 name=\"hello\" reason=poweroff code=0 hypercalls=5
@ audit-error mfn=0x0 what=\"126188 frames free at the end, 126189 before the first domain: 1 not returned\"
@ audit-error mfn=0x128f what=\"owned by nobody but not in the free pool: leaked\"
@ audit free_frames=126188 baseline=126189 frames=130685 errors=2 status=failed
@ exit status=failure
";

    #[test]
    fn leak_test() {
        let name = "leaked_frame_fails_the_run_with_an_audit_report";
        let m = Canned::new(Exit::Failure, Some(144), LEAK);
        assert_eq!(run(name, &m), Ok(()));
        assert_eq!(m.seen.borrow()[0].cmdline, "testopt=leak-frame");
        let cases: &[(&str, &str, &str)] = &[
            ("status=failed", "status=ok", "expected status=failed"),
            (
                "free_frames=126188",
                "free_frames=126189",
                "exactly one frame",
            ),
            (
                "mfn=0x128f what",
                "mfn=0x1290 what",
                "naming the lost frame",
            ),
            ("@ testopt", "# testopt", "not applied"),
            ("code=0", "code=1", "only the audit fails"),
        ];
        for (from, to, why) in cases {
            let m = Canned::new(Exit::Failure, Some(144), &LEAK.replace(from, to));
            let err = run(name, &m).expect_err(from);
            assert!(err.contains(why), "{from} -> {to}: {err}");
        }
        let passed = LEAK.replace("@ exit status=failure", "@ exit status=success");
        let err = run(name, &Canned::new(Exit::Success, Some(144), &passed)).unwrap_err();
        assert!(
            err.contains("expected the run to end with failure"),
            "{err}"
        );
    }

    #[test]
    fn truncation_test() {
        let name = "truncated_boot_module_is_refused";
        let good = "@ bootpack error=\"boot pack declares 144 bytes but the module holds 143: truncated or padded\"\n";
        let m = Canned::new(Exit::Failure, Some(143), good);
        assert_eq!(run(name, &m), Ok(()));
        assert_eq!(m.seen.borrow()[0].pack, PackMutation::Truncate(1));
        let vague = "@ bootpack error=\"bad\"\n";
        assert!(run(name, &Canned::new(Exit::Failure, Some(143), vague)).is_err());
        assert!(run(name, &Canned::new(Exit::Success, Some(143), good)).is_err());
        let accepted = "@ bootpack size=143 domains=0 scenario=\"boot\"\n";
        assert!(run(name, &Canned::new(Exit::Failure, Some(143), accepted)).is_err());
    }

    #[test]
    fn missing_module_test() {
        let name = "missing_boot_module_is_reported";
        let good = "@ bootpack none\n@ exit status=success\n";
        let m = Canned::new(Exit::Success, None, good);
        assert_eq!(run(name, &m), Ok(()));
        assert_eq!(m.seen.borrow()[0].pack, PackMutation::Omit);
        assert!(run(name, &Canned::new(Exit::Failure, None, good)).is_err());
        let wrong = "@ bootpack error=\"bad magic\"\n";
        assert!(run(name, &Canned::new(Exit::Success, None, wrong)).is_err());
    }

    /// Answers each boot from its `-cpu` model.
    struct ByCpu(fn(&str) -> (Exit, String));

    impl Machine for ByCpu {
        fn boot(&self, req: &BootRequest) -> Result<BootOutcome, String> {
            let (exit, t) = (self.0)(req.cpu.as_deref().unwrap_or(""));
            Ok(BootOutcome::new(exit, None, t))
        }
    }

    fn refusal(model: &str) -> (Exit, String) {
        let missing = WEAK_CPUS
            .iter()
            .find(|(m, _)| *m == model)
            .map_or("", |(_, w)| w);
        (
            Exit::Failure,
            format!(
                "@ cpu-refused missing=\"{missing}\"\n[ERROR tahoma] this CPU lacks {missing}, ...; \
                 boot on a CPU that has them (QEMU: -cpu qemu64,+smep,+smap or -cpu max)\n@ exit status=failure\n"
            ),
        )
    }

    #[test]
    fn cpu_refusal_test() {
        let name = "cpu_without_smep_or_smap_is_refused";
        assert_eq!(run_on(name, &ByCpu(refusal)), Ok(()));
        // Booting anyway, naming the wrong feature, or no advice: each fails.
        let booted = |m: &str| {
            let (_, t) = refusal(m);
            (Exit::Success, t.replace("failure", "success"))
        };
        assert!(run_on(name, &ByCpu(booted)).is_err());
        let wrong = |m: &str| {
            let (e, t) = refusal(m);
            (e, t.replace("missing=\"smap\"", "missing=\"smep\""))
        };
        assert!(run_on(name, &ByCpu(wrong)).is_err());
        let mute = |m: &str| {
            let (e, t) = refusal(m);
            (e, t.replace("-cpu qemu64,+smep,+smap", ""))
        };
        assert!(run_on(name, &ByCpu(mute)).is_err());
        let went_on = |m: &str| {
            let (e, t) = refusal(m);
            (
                e,
                t + "@ domain-start id=1 name=\"hello\" pages=256 critical=1\n",
            )
        };
        assert!(run_on(name, &ByCpu(went_on))
            .unwrap_err()
            .contains("a domain was started"));
    }

    fn run_on(name: &str, m: &dyn Machine) -> Result<(), String> {
        let t = scenario_tests()
            .into_iter()
            .find(|t| t.name == name)
            .expect("test exists");
        (t.run)(m)
    }

    #[test]
    fn numbers_in_text() {
        assert_eq!(
            numbers_in("declares 4096 bytes but holds 4095"),
            vec![4096, 4095]
        );
        assert!(numbers_in("no digits").is_empty());
    }
}
