//! Scenario tests of density (issue 13): many guests at once, and those
//! that do not fit machine memory or the hypervisor heap refused with a
//! report while the rest run (moved out of `guests.rs` unchanged).

use crate::guests::{ensure, powered_off_cleanly, succeeded_and_audited};
use crate::{BootRequest, Exit, Machine, ScenarioTest};

/// The density scenario tests, in the order `guests::tests` lists them.
pub fn tests() -> Vec<ScenarioTest> {
    vec![
        ScenarioTest {
            name: "sixty_four_guests_at_once",
            run: sixty_four_guests_at_once,
        },
        ScenarioTest {
            name: "five_thousand_guests_run_and_every_frame_returns",
            run: five_thousand_guests_run_and_every_frame_returns,
        },
        ScenarioTest {
            name: "domains_that_do_not_fit_are_refused_and_the_rest_run",
            run: domains_that_do_not_fit_are_refused_and_the_rest_run,
        },
        ScenarioTest {
            name: "domains_that_do_not_fit_the_heap_are_refused",
            run: domains_that_do_not_fit_the_heap_are_refused,
        },
    ]
}

fn sixty_four_guests_at_once(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("many"))?;
    succeeded_and_audited(&out)?;
    let started = out.facts.one("domains")?.number("started")?;
    ensure!(started == 64, "{started} domains started, expected 64");
    for i in 0..64 {
        powered_off_cleanly(&out, &format!("g-{i}"))?;
    }
    let greeted = out
        .transcript
        .lines()
        .filter(|l| l.starts_with("[g-") && l.contains("Hello"))
        .count();
    ensure!(greeted == 64, "{greeted} of 64 guests greeted");
    Ok(())
}

/// Issue 13: `density` starts 5,000 idle guests (and the sleeper) at
/// 1 GiB. Every one is built (17 frames each, under 4 KiB of hypervisor
/// heap each on average), makes its first hypercall (`block`) and is still
/// blocked when the sleeper ends the run; every one is torn down
/// (`@ domain-released`) and every frame comes back.
fn five_thousand_guests_run_and_every_frame_returns(m: &dyn Machine) -> Result<(), String> {
    const IDLE: u64 = 5000;
    let out = m.boot(&BootRequest::scenario("density"))?;
    succeeded_and_audited(&out)?;
    let density = out.facts.one("density")?;
    ensure!(
        density.number("started")? == IDLE + 1 && density.number("refused")? == 0,
        "`{density}`: expected {} started, none refused",
        IDLE + 1
    );
    ensure!(
        density.number("heap_per_domain")? <= 4096,
        "`{density}`: a small domain should take under 4 KiB of the hypervisor's heap"
    );
    powered_off_cleanly(&out, "sleeper")?;
    let blocked = out
        .facts
        .of_kind("domain-exit")
        .filter(|e| {
            e.get("name").is_some_and(|n| n.starts_with("idle-"))
                && e.get("reason") == Some("scenario-end")
                && e.get("hypercalls") == Some("1")
        })
        .count() as u64;
    ensure!(
        blocked == IDLE,
        "{blocked} of {IDLE} idle guests ran and blocked"
    );
    let released = out.facts.of_kind("domain-released").count() as u64;
    ensure!(
        released == IDLE + 1,
        "{released} domains torn down, expected {}",
        IDLE + 1
    );
    Ok(())
}

/// Issue 13: `density-refuse` asks for 1,501 guests in 64 MiB. Those that
/// fit are started and run (each idle guest makes its one `block`, the
/// sleeper wakes and powers off); each that does not is refused with a
/// report naming the limit (`machine memory full: the domain needs 15
/// frames, N are free`: its 16-page window and shared-info page, less the
/// image's two read-only pages it shares with the first idle guest,
/// MEM-2e), in boot order, after the last one that fit; the
/// hypervisor does not panic; every frame comes back (a clean audit); the
/// run is a failure only because the manifest asked for the impossible.
fn domains_that_do_not_fit_are_refused_and_the_rest_run(m: &dyn Machine) -> Result<(), String> {
    const ASKED: u64 = 1501;
    let out = m.boot(&BootRequest::scenario("density-refuse"))?;
    ensure!(
        out.facts.of_kind("panic").next().is_none(),
        "the hypervisor panicked: `{}`",
        out.facts.one("panic")?
    );
    ensure!(
        out.exit == Exit::Failure,
        "the run ended with {}, expected failure (domains were refused)",
        out.exit
    );
    let audit = out.facts.one("audit")?;
    ensure!(
        audit.get("status") == Some("ok")
            && audit.number("free_frames")? == audit.number("baseline")?,
        "`{audit}`: the audit must be clean"
    );
    let density = out.facts.one("density")?;
    let (started, refused) = (density.number("started")?, density.number("refused")?);
    ensure!(
        started + refused == ASKED && started >= 100 && refused >= 100,
        "`{density}`: expected {ASKED} in all, at least 100 started and 100 refused"
    );
    ensure!(
        density.number("frames_per_domain")? <= 16,
        "`{density}`: an idle guest should take 15 frames of its own (its 16-page window and shared page, less its image's 2 shared read-only pages)"
    );
    let errors: Vec<_> = out.facts.of_kind("domain-error").collect();
    ensure!(
        errors.len() as u64 == refused,
        "{} refusal reports for {refused} refused domains",
        errors.len()
    );
    for e in &errors {
        let id = e.number("id")?;
        let why = e.get("error").unwrap_or("");
        ensure!(
            id > started && why.starts_with("machine memory full: the domain needs 15 frames"),
            "`{e}`: expected a refusal after the last domain that fit, naming the limit"
        );
    }
    powered_off_cleanly(&out, "sleeper")?;
    let ran = out
        .facts
        .of_kind("domain-exit")
        .filter(|e| {
            e.get("name").is_some_and(|n| n.starts_with("idle-"))
                && e.get("reason") == Some("scenario-end")
                && e.get("hypercalls") == Some("1")
        })
        .count() as u64;
    ensure!(
        ran == started - 1,
        "{ran} idle guests blocked and were ended at the scenario's end; {} started",
        started - 1
    );
    Ok(())
}

/// Issue 13: `heap-refuse` asks for three guests that may grow to 4 GiB
/// each (an 8 MiB frame list apiece, reserved at build) on a 64 MiB
/// machine whose hypervisor heap is about 10 MiB. At least two are refused
/// with a report naming the heap and what they need (no panic: before,
/// the build's allocation failed and the hypervisor stopped); `hello` runs
/// and powers off; every frame comes back.
fn domains_that_do_not_fit_the_heap_are_refused(m: &dyn Machine) -> Result<(), String> {
    let out = m.boot(&BootRequest::scenario("heap-refuse"))?;
    ensure!(
        out.facts.of_kind("panic").next().is_none(),
        "the hypervisor panicked: `{}`",
        out.facts.one("panic")?
    );
    ensure!(
        out.exit == Exit::Failure,
        "the run ended with {}, expected failure (domains were refused)",
        out.exit
    );
    let audit = out.facts.one("audit")?;
    ensure!(
        audit.get("status") == Some("ok")
            && audit.number("free_frames")? == audit.number("baseline")?,
        "`{audit}`: the audit must be clean"
    );
    let refused: Vec<_> = out.facts.of_kind("domain-error").collect();
    ensure!(
        refused.len() >= 2 && refused.len() <= 3,
        "{} refusals, expected two or three",
        refused.len()
    );
    for e in &refused {
        let why = e.get("error").unwrap_or("");
        ensure!(
            e.get("name").is_some_and(|n| n.starts_with("greedy-"))
                && why.starts_with("hypervisor heap full: ")
                && why.contains("a domain of 1048576 pages needs"),
            "`{e}`: expected a greedy guest refused for the heap, naming its need"
        );
    }
    powered_off_cleanly(&out, "hello")?;
    Ok(())
}
