//! ABI conformance: boots `guests/scenarios/conformance.toml`, collects the
//! conformance guest's `@ conformance clause=... outcome=...` lines, adds
//! the clauses that can only be judged from the transcript (console
//! prefixes, reports, how the run ended) and those that need a boot of
//! their own (MEM-2b: refused images), and reconciles the result with the
//! clause list parsed from `docs/abi/*.md`: a documented clause with no
//! result is a failure, so a new clause cannot be forgotten.
//!
//! Used by `cargo xtask conformance` and by `cargo xtask test` (one test
//! per clause). See `docs/conformance.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hypercall_abi::layout::{WINDOW_MAX_PAGES, WINDOW_MIN_PAGES};
use serde::Serialize;
use tahoma_core::bootpack::{DomainFlags, DomainSpec, PackBuilder};
use tahoma_tests::{BootOutcome, BootRequest, Exit};

use crate::machine::{Booter, Presentation};
use crate::qemu::Run;

/// The scenario.
pub const SCENARIO: &str = "conformance";
/// The domain that reports clause results.
pub const GUEST: &str = "conf";
/// The direct-paging attack suite's scenario (MMU-*, MEM-5..7).
pub const MMU_SCENARIO: &str = "mmu";
/// The domain in it that reports clause results.
pub const MMU_GUEST: &str = "mmu";
/// The CPU-state suite's scenario (CPU-*, TRAP-7), booted once per model
/// in [`CPU_MODELS`].
pub const CPU_SCENARIO: &str = "cpu";
/// The domain in it that reports clause results.
pub const CPU_GUEST: &str = "cpu";
/// The device-delegation scenario (IO-*, MEM-3b): a driver domain and an
/// ordinary guest, both reporting clauses.
pub const IO_SCENARIO: &str = "io";
/// The domains in it that report clause results.
pub const IO_GUESTS: [&str; 2] = ["drv", "plain"];
/// The network scenario (MEM-3c, NET-*, `docs/network.md`): the network driver
/// domain and two vNIC frontends, all reporting clauses.
pub const NET_SCENARIO: &str = "net";
/// The domains in it that report clause results. A clause several of them
/// report (MEM-3c: each end checks its side) passes only if all do.
pub const NET_GUESTS: [&str; 3] = ["netback", "a", "b"];
/// The `-cpu` models (under TCG) the CPU-state clauses must hold under:
/// the default one (FXSAVE, no UMIP, AMD vendor: `sysenter` is #UD) and
/// QEMU's `max` (XSAVE with AVX, UMIP, FSGSBASE, RDPID) with an Intel
/// vendor, where `sysenter` reaches the hypervisor's entry.
pub const CPU_MODELS: [&str; 2] = [crate::qemu::TCG_CPU, crate::qemu::TCG_CPU_MAX];
/// The block protocol's scenario (BLK-*, RING-*): a driver domain, the
/// reporting frontend and a peer frontend doing its own I/O.
pub const BLK_SCENARIO: &str = "blk-conf";
/// The domain in it that reports clause results.
pub const BLK_GUEST: &str = "vconf";
/// Clause families that are not tested yet.
pub const SKIPPED_FAMILIES: &[&str] = &[];

/// The result of one clause.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The clause ID, e.g. `EVT-4a`.
    pub clause: String,
    /// A short description.
    pub name: String,
    /// `pass` or `fail`.
    pub outcome: Outcome,
    /// Why (not in the JSON).
    #[serde(skip)]
    pub detail: String,
}

/// Pass or fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The clause holds.
    Pass,
    /// It does not, or was not tested.
    Fail,
}

impl Record {
    fn new(clause: &str, name: &str, pass: bool, detail: impl Into<String>) -> Record {
        Record {
            clause: clause.to_string(),
            name: name.to_string(),
            outcome: if pass { Outcome::Pass } else { Outcome::Fail },
            detail: detail.into(),
        }
    }

    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Pass
    }
}

/// Whether `s` looks like a clause ID: `FAMILY-N` with an optional
/// lower-case letter suffix.
pub fn is_clause_id(s: &str) -> bool {
    let Some((family, rest)) = s.split_once('-') else {
        return false;
    };
    let digits = rest.trim_end_matches(|c: char| c.is_ascii_lowercase());
    !family.is_empty()
        && family.chars().all(|c| c.is_ascii_uppercase())
        && !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && rest.len() - digits.len() <= 1
}

/// The clause IDs defined in one page of the spec: headings `## ID ...`
/// and bold rules `**ID**`, in order of appearance.
pub fn clauses_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("## ") {
            let id = rest.split_whitespace().next().unwrap_or("");
            if is_clause_id(id) {
                out.push(id.to_string());
            }
        }
        let mut rest = line;
        while let Some(start) = rest.find("**") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("**") else { break };
            // `**EVT-1a**`, or a titled rule `**MMU-1 (types and counts).**`.
            let inner = &after[..end];
            let id = inner.split(' ').next().unwrap_or("");
            if is_clause_id(id) && (id == inner || inner[id.len()..].starts_with(" (")) {
                out.push(id.to_string());
            }
            rest = &after[end + 2..];
        }
    }
    out
}

/// The spec's pages in the order of the family table in
/// `docs/abi/README.md` (one page per family; `CALL` is "this page", the
/// README): `(family, file name)`.
pub fn spec_pages(readme: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(family) = cells
            .get(1)
            .and_then(|c| c.strip_prefix('`'))
            .and_then(|c| c.strip_suffix('`'))
        else {
            continue;
        };
        if family.is_empty() || !family.chars().all(|c| c.is_ascii_uppercase()) {
            continue;
        }
        let page = match cells.get(2) {
            Some(&"this page") => "README.md",
            Some(cell) => match cell.split_once("](").and_then(|(_, p)| p.strip_suffix(')')) {
                Some(p) => p,
                None => continue,
            },
            None => continue,
        };
        out.push((family.to_string(), page.to_string()));
    }
    out
}

/// Every clause ID in `docs/abi/*.md`, page by page in the order of the
/// README's family table, without duplicates and without the skipped
/// families. A page the table does not name is an error (it would hold
/// clauses no family owns).
pub fn doc_clauses(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("docs/abi");
    let readme = std::fs::read_to_string(dir.join("README.md"))
        .map_err(|e| format!("cannot read {}/README.md: {e}", dir.display()))?;
    let pages = spec_pages(&readme);
    let files: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".md"))
        .collect();
    if let Some(stray) = files.iter().find(|f| !pages.iter().any(|(_, p)| p == *f)) {
        return Err(format!(
            "docs/abi/{stray} is not in the family table of docs/abi/README.md: add its family's row"
        ));
    }
    let mut ids = Vec::new();
    for (_, page) in &pages {
        let f = dir.join(page);
        let text =
            std::fs::read_to_string(&f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        for id in clauses_in(&text) {
            let family = id.split('-').next().unwrap_or("");
            if !SKIPPED_FAMILIES.contains(&family) && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    if ids.is_empty() {
        return Err(format!("no clause IDs found in {}", dir.display()));
    }
    Ok(ids)
}

/// The results guest `guest` reported in a transcript.
fn guest_records(outcome: &BootOutcome, guest: &str) -> Vec<Record> {
    outcome
        .facts
        .guest_of_kind("conformance")
        .filter(|(n, _)| *n == guest)
        .map(|(_, f)| {
            Record::new(
                f.get("clause").unwrap_or("?"),
                f.get("name").unwrap_or(""),
                f.get("outcome") == Some("pass"),
                f.get("detail").unwrap_or(""),
            )
        })
        .collect()
}

/// A check made on the transcript.
struct HostCheck {
    fails: Vec<String>,
}

impl HostCheck {
    fn new() -> Self {
        HostCheck { fails: Vec::new() }
    }
    fn t(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.fails.push(what.into());
        }
    }
    fn result(self) -> (bool, String) {
        if self.fails.is_empty() {
            (true, "transcript checks passed".into())
        } else {
            (false, format!("transcript: {}", self.fails.join("; ")))
        }
    }
}

/// Console lines of domain `name`, without the prefix.
fn lines_of<'a>(transcript: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("[{name}] ");
    transcript
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// Judges the clauses that are (also) checked from outside, from the
/// conformance boot's transcript: clause -> (pass, detail).
pub fn host_checks(outcome: &BootOutcome) -> BTreeMap<&'static str, (bool, String)> {
    let t = &outcome.transcript;
    let facts = &outcome.facts;
    let conf = lines_of(t, GUEST);
    let has = |line: &str| conf.contains(&line);
    let mut out = BTreeMap::new();

    let mut c = HostCheck::new();
    c.t(
        has("TAHOMASI"),
        "console_write from the read-only start-info page printed nothing",
    );
    out.insert("CALL-4", c.result());

    let mut c = HostCheck::new();
    c.t(
        has("CALL-1b marker"),
        "the write with garbage arguments was not printed",
    );
    out.insert("CALL-1b", c.result());

    let mut c = HostCheck::new();
    c.t(
        has("CON-1 marker: hello"),
        "`[conf] CON-1 marker: hello` missing",
    );
    out.insert("CON-1", c.result());

    for (clause, leak) in [
        ("CON-1a", "CON1A-LEAK"),
        ("CON-1b", "CON1B-LEAK"),
        ("CON-1c", "CON1C-LEAK"),
    ] {
        let mut c = HostCheck::new();
        c.t(!t.contains(leak), format!("a refused write printed {leak}"));
        out.insert(clause, c.result());
    }

    // CON-2: 4096 bytes in 16 short writes, every line printed once, and a
    // refused range whose first 256 bytes were readable printed nothing.
    let mut c = HostCheck::new();
    c.t(
        !t.contains("CON2-LEAK"),
        "a refused write printed CON2-LEAK",
    );
    for i in 0..64 {
        let mut line = format!("CON2 line {i:02} ");
        while line.len() < 63 {
            line.push('-');
        }
        let n = conf.iter().filter(|l| **l == line).count();
        c.t(n == 1, format!("`{line}` printed {n} times, not once"));
    }
    out.insert("CON-2", c.result());

    let mut c = HostCheck::new();
    c.t(
        has("CON1D partial line joined"),
        "a line written in two calls was not printed as one",
    );
    c.t(
        has("CON1D ctl:?[1m???|\t|end"),
        "control characters not shown as `?` (or tab altered)",
    );
    c.t(
        has("@ forged by=conf"),
        "the guest's `@` line lost its prefix",
    );
    c.t(
        facts.of_kind("forged").next().is_none(),
        "a guest forged a hypervisor report line",
    );
    match conf.iter().position(|l| l.starts_with("CON1D long ")) {
        Some(i) => {
            c.t(
                conf[i].len() == 256,
                format!("a long line was cut at {} bytes, not 256", conf[i].len()),
            );
            c.t(
                conf.get(i + 1) == Some(&"y".repeat(44).as_str()),
                "the rest of a long line did not follow on a line of its own",
            );
        }
        None => c.t(false, "the 300-byte line is missing"),
    }
    c.t(
        has("CON1D utf8: héllo ✓ 🦀"),
        "valid UTF-8 was not passed through unchanged",
    );
    c.t(
        has("CON1D bad:\u{fffd}|\u{fffd}|end"),
        "invalid UTF-8 was not replaced by one U+FFFD per sequence, keeping the rest",
    );
    match conf.iter().position(|l| l.starts_with("CON1D straddle ")) {
        Some(i) => {
            c.t(
                conf[i].len() == 254 && conf[i].ends_with('x'),
                format!(
                    "a line cut inside a character was not cut before it ({} bytes)",
                    conf[i].len()
                ),
            );
            c.t(
                conf.get(i + 1) == Some(&"🦀tail"),
                "the character at the 256-byte cut did not move whole to the next line",
            );
        }
        None => c.t(false, "the straddling line is missing"),
    }
    c.t(
        facts.guest_bad.is_empty(),
        format!("{} malformed guest report line(s)", facts.guest_bad.len()),
    );
    out.insert("CON-1d", c.result());

    let fault = |name: &str| {
        facts
            .of_kind("domain-fault")
            .find(|f| f.get("name") == Some(name))
    };
    let exit = |name: &str| {
        facts
            .of_kind("domain-exit")
            .find(|f| f.get("name") == Some(name))
    };
    let mut c = HostCheck::new();
    match fault("crasher") {
        Some(f) => {
            c.t(f.get("vector") == Some("14"), "crasher: vector is not 14");
            c.t(
                f.number("cr2") == Ok(0xdead_0000),
                "crasher: cr2 is not 0xdead0000",
            );
            c.t(f.get("rip").is_some(), "crasher: no rip");
        }
        None => c.t(false, "no `@ domain-fault name=crasher` (no trap entry)"),
    }
    match fault("rostack") {
        Some(f) => c.t(
            f.get("reason").is_some_and(|r| r.contains("writable")),
            "rostack: reason does not say the frame could not be written",
        ),
        None => c.t(
            false,
            "no `@ domain-fault name=rostack` (read-only callback stack)",
        ),
    }
    match fault("nest") {
        Some(f) => c.t(
            f.get("reason").is_some_and(|r| r.contains("nested")),
            "nest: reason does not say traps nested too deep",
        ),
        None => c.t(false, "no `@ domain-fault name=nest` (traps nested > 8)"),
    }
    for n in ["crasher", "rostack", "nest"] {
        c.t(
            exit(n).is_none(),
            format!("{n} has a domain-exit after its fault"),
        );
    }
    out.insert("TRAP-0c", c.result());

    // TRAP-5 / LIM-2: the nest peer's handler is entered at depths 1..=8,
    // never a 9th time, and the 9th trap destroys it.
    let mut c = HostCheck::new();
    let depths: Vec<u64> = lines_of(t, "nest")
        .iter()
        .filter_map(|l| l.strip_prefix("nest depth=")?.parse().ok())
        .collect();
    c.t(
        depths == (1..=8).collect::<Vec<u64>>(),
        format!("nest: handler entered at depths {depths:?}, not exactly 1..=8"),
    );
    c.t(
        fault("nest").is_some_and(|f| f.get("reason").is_some_and(|r| r.contains("nested"))),
        "nest: not destroyed for nesting too deep",
    );
    let (ok, detail) = c.result();
    out.insert("TRAP-5", (ok, detail.clone()));
    out.insert("LIM-2", (ok, detail));

    // LIM-4: the refused 4097-byte write printed nothing.
    let mut c = HostCheck::new();
    c.t(
        !t.contains("LIM4-LEAK"),
        "a refused 4097-byte write printed",
    );
    out.insert("LIM-4", c.result());

    // LIM-5: a 256-byte line stays whole; the 257th byte starts a new line.
    let mut c = HostCheck::new();
    let a_line = format!("LIM5 {}", "a".repeat(251));
    let b_line = format!("LIM5 {}", "b".repeat(251));
    c.t(
        conf.contains(&a_line.as_str()),
        "the 256-byte line was not printed whole",
    );
    match conf.iter().position(|l| *l == b_line) {
        Some(i) => c.t(
            conf.get(i + 1) == Some(&"Z"),
            "the 257th byte did not start a line of its own",
        ),
        None => c.t(false, "the 257-byte line was not cut after 256 bytes"),
    }
    out.insert("LIM-5", c.result());

    let mut c = HostCheck::new();
    match exit("helper") {
        Some(f) => {
            c.t(
                f.get("reason") == Some("reboot"),
                "helper: reason is not reboot",
            );
            c.t(
                f.get("code") == Some("-7"),
                "helper: code is not -7 (signed decimal)",
            );
        }
        None => c.t(false, "no `@ domain-exit name=helper`"),
    }
    match facts.of_kind("audit").next() {
        Some(a) => c.t(
            a.get("free_frames").is_some() && a.get("free_frames") == a.get("baseline"),
            "frames not all returned (`@ audit` free_frames != baseline)",
        ),
        None => c.t(false, "no `@ audit` report"),
    }
    out.insert("SCHED-3", c.result());

    out.insert("MEM-2a", poisoned(outcome).result());

    let mut c = HostCheck::new();
    let reported = facts.of_kind("time").next().and_then(|f| f.get("tsc_hz"));
    let seen = conf
        .iter()
        .find_map(|l| l.strip_prefix("TIME-0 start-info tsc_hz="));
    c.t(
        reported.is_some() && reported == seen,
        format!("`@ time tsc_hz={reported:?}` but the start info says {seen:?}"),
    );
    out.insert("TIME-0", c.result());

    let mut c = HostCheck::new();
    c.t(
        outcome.exit == Exit::Success,
        format!("the run ended with {}", outcome.exit),
    );
    let order: Vec<(String, Option<String>)> = facts
        .facts
        .iter()
        .filter(|f| f.kind == "domain-exit" || f.kind == "exit")
        .map(|f| {
            (
                f.get("name").unwrap_or(&f.kind).to_string(),
                f.get("reason").or(f.get("status")).map(str::to_string),
            )
        })
        .collect();
    let pos = |n: &str| order.iter().position(|(name, _)| name == n);
    match exit(GUEST) {
        Some(f) => c.t(
            f.get("reason") == Some("poweroff") && f.get("code") == Some("0"),
            "conf did not power off with code 0",
        ),
        None => c.t(false, "no `@ domain-exit name=conf`"),
    }
    c.t(
        exit("spin").and_then(|f| f.get("reason")) == Some("scenario-end"),
        "the endless loop (spin) was not ended by the scenario",
    );
    c.t(
        pos(GUEST) < pos("spin") && pos("spin").is_some(),
        "non-critical domains were not ended after the critical one",
    );
    c.t(
        order.last().map(|(n, s)| (n.as_str(), s.as_deref())) == Some(("exit", Some("success"))),
        "the last report is not `@ exit status=success`",
    );
    out.insert("SCHED-3b", c.result());

    // SCHED-4: every destroyed domain (exit or fault) is released once,
    // after it was destroyed, and the frame audit comes after every release.
    let mut c = HostCheck::new();
    let seq: Vec<(&str, Option<&str>)> = facts
        .facts
        .iter()
        .filter(|f| {
            matches!(
                f.kind.as_str(),
                "domain-exit" | "domain-fault" | "domain-released" | "audit"
            )
        })
        .map(|f| (f.kind.as_str(), f.get("id")))
        .collect();
    let ended: Vec<(usize, &str)> = seq
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| *k == "domain-exit" || *k == "domain-fault")
        .filter_map(|(i, (_, id))| id.map(|id| (i, id)))
        .collect();
    let audit_at = seq.iter().position(|(k, _)| *k == "audit");
    c.t(!ended.is_empty(), "no domain was destroyed");
    c.t(audit_at.is_some(), "no `@ audit` report");
    for (at, id) in &ended {
        let released: Vec<usize> = seq
            .iter()
            .enumerate()
            .filter(|(_, (k, i))| *k == "domain-released" && *i == Some(*id))
            .map(|(i, _)| i)
            .collect();
        c.t(
            released.len() == 1,
            format!(
                "domain {id}: {} `@ domain-released` reports, not 1",
                released.len()
            ),
        );
        if let Some(&r) = released.first() {
            c.t(
                r > *at,
                format!("domain {id} released before it was destroyed"),
            );
            c.t(
                audit_at.is_some_and(|a| a > r),
                format!("the frame audit came before domain {id} was released"),
            );
        }
    }
    out.insert("SCHED-4", c.result());
    out
}

/// "Zeroed" is only observable when free memory is not zero to begin with:
/// the run must have booted with `testopt=poison-free` (docs/testing.md),
/// and the hypervisor's own check of every frame it handed out must have
/// found none unscrubbed (no `@ inconsistency`).
fn poisoned(outcome: &BootOutcome) -> HostCheck {
    let mut c = HostCheck::new();
    let facts = &outcome.facts;
    c.t(
        facts
            .of_kind("testopt")
            .any(|f| f.has_word("poison-free") && f.number("frames").is_ok_and(|n| n > 0)),
        "no `@ testopt poison-free frames=N`: boot the scenario with cmdline = \"testopt=poison-free\"",
    );
    if let Some(f) = facts.of_kind("inconsistency").next() {
        c.t(false, format!("the hypervisor reported `{f}`"));
    }
    c
}

/// MEM-8's canary: after every attack the `mmu` guest asks the victim to
/// check the secret it keeps in a mapped page; the victim must report it
/// intact, and the attacker must have had the answer.
/// MEM-2e, the host's side: the victim (the second domain of the mmu
/// image) was built on the attacker's copy of the image's read-only pages
/// (`@ domain-start shared=`: 0 for the first, more for the second), it
/// still answered the canary after the attacks, and the copy was freed
/// with the last of them (a clean audit with every frame back).
fn shared_copy(outcome: &BootOutcome) -> HostCheck {
    let mut c = canary(outcome);
    let shared_of = |name: &str| {
        outcome
            .facts
            .of_kind("domain-start")
            .find(|f| f.get("name") == Some(name))
            .and_then(|f| f.number("shared").ok())
    };
    let (first, second) = (shared_of(MMU_GUEST), shared_of("victim"));
    c.t(
        first == Some(0),
        format!("`{MMU_GUEST}` (first of its image) reports shared={first:?}, want 0"),
    );
    c.t(
        second.is_some_and(|n| n > 0),
        format!("`victim` (second of the image) reports shared={second:?}, want > 0"),
    );
    match outcome.facts.one("audit") {
        Ok(a) => c.t(
            a.get("status") == Some("ok") && a.get("free_frames") == a.get("baseline"),
            format!("`{a}`: the shared copy was not freed with the image's last domain"),
        ),
        Err(e) => c.t(false, e),
    }
    c
}

fn canary(outcome: &BootOutcome) -> HostCheck {
    let mut c = HostCheck::new();
    let says = |guest: &str, key: &str| -> Vec<String> {
        outcome
            .facts
            .guest_of_kind("mmutest")
            .filter(|(n, f)| *n == guest && f.get(key).is_some())
            .filter_map(|(_, f)| f.get(key).map(str::to_string))
            .collect()
    };
    let secret = says("victim", "secret");
    c.t(
        !secret.is_empty() && secret.iter().all(|s| s == "intact"),
        format!("the victim's secret: {secret:?}, want `intact`"),
    );
    let canary = says(MMU_GUEST, "canary");
    c.t(
        canary == ["acked"],
        format!("the attacker's canary check: {canary:?}, want `acked`"),
    );
    c
}

/// Names of the clauses judged only here.
fn host_name(clause: &str) -> &'static str {
    match clause {
        "SCHED-3b" => "the last critical domain ends the run",
        "CPU-4" => "sysenter destroys the caller (or is #UD)",
        "CALL-1c" => "a syscall returning to GUEST_VA_TOP is a #GP, not a call",
        "TRAP-7" => "an undeliverable upcall is reported as such",
        "SCHED-4" => "destroyed domains are released in turns, then audited",
        _ => "judged from the transcript",
    }
}

/// Combines the guest's results with the host's: a clause judged in both
/// places passes only if both pass.
fn merge(mut guest: Vec<Record>, host: BTreeMap<&'static str, (bool, String)>) -> Vec<Record> {
    for (clause, (pass, detail)) in host {
        match guest.iter_mut().find(|r| r.clause == clause) {
            Some(r) => {
                if !pass {
                    r.outcome = Outcome::Fail;
                    r.detail = if r.detail.contains("judged by xtask") || r.detail.is_empty() {
                        detail
                    } else {
                        format!("{}; {detail}", r.detail)
                    };
                } else if r.detail.contains("judged by xtask") {
                    r.detail = detail;
                }
            }
            None => guest.push(Record::new(clause, host_name(clause), pass, detail)),
        }
    }
    guest
}

/// One result per documented clause, in documentation order: missing
/// clauses fail, as do duplicates and IDs the documentation does not have.
pub fn reconcile(doc: &[String], results: Vec<Record>) -> Vec<Record> {
    let mut out = Vec::new();
    for id in doc {
        let mine: Vec<&Record> = results.iter().filter(|r| &r.clause == id).collect();
        match mine.as_slice() {
            [] => out.push(Record::new(
                id,
                "(no result)",
                false,
                "no test reported this clause: add one (docs/conformance.md)",
            )),
            [one] => out.push((*one).clone()),
            many => {
                let mut r = many[0].clone();
                r.outcome = Outcome::Fail;
                r.detail = format!("reported {} times; a clause is reported once", many.len());
                out.push(r);
            }
        }
    }
    let mut extra: Vec<&Record> = results
        .iter()
        .filter(|r| !doc.contains(&r.clause))
        .collect();
    extra.dedup_by(|a, b| a.clause == b.clause);
    for r in extra {
        let mut r = r.clone();
        r.outcome = Outcome::Fail;
        r.detail = format!("`{}` is not a clause of docs/abi", r.clause);
        out.push(r);
    }
    out
}

// ---------------------------------------------------------------- MEM-2b

/// Patches an ELF image for a MEM-2b case.
fn patch(elf: &[u8], how: &str) -> Vec<u8> {
    let mut e = elf.to_vec();
    let put16 =
        |e: &mut Vec<u8>, at: usize, v: u16| e[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |e: &mut Vec<u8>, at: usize, v: u64| e[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let get = |e: &[u8], at: usize, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&e[at..at + n]);
        u64::from_le_bytes(b)
    };
    match how {
        "type" => put16(&mut e, 16, 3),     // ET_DYN
        "machine" => put16(&mut e, 18, 40), // ARM
        "class" => e[4] = 1,                // ELFCLASS32
        "entry" => put64(&mut e, 24, 0x10), // outside every segment
        "segment" => {
            // Move the first PT_LOAD below the window.
            let phoff = get(&e, 32, 8) as usize;
            let phentsize = get(&e, 54, 2) as usize;
            let phnum = get(&e, 56, 2) as usize;
            for i in 0..phnum {
                let ph = phoff + i * phentsize;
                if get(&e, ph, 4) == 1 {
                    put64(&mut e, ph + 16, 0x1000);
                    put64(&mut e, ph + 24, 0x1000);
                    break;
                }
            }
        }
        "garbage" => e = b"this is not an ELF image".to_vec(),
        _ => {}
    }
    e
}

/// The MEM-2b cases: (domain name, patch).
const MEM2B_CASES: [(&str, &str); 6] = [
    ("bad-type", "type"),
    ("bad-machine", "machine"),
    ("bad-class", "class"),
    ("bad-entry", "entry"),
    ("bad-segment", "segment"),
    ("bad-garbage", "garbage"),
];

/// Boots a pack of refused images and windows around one good domain and
/// judges MEM-2b and MEM-2c.
fn mem2b(booter: &Booter<'_>, timeout: Option<Duration>) -> Vec<Record> {
    let name = "image refused at boot, others start";
    let run = || -> Result<BootOutcome, String> {
        let peer = booter.images.dir.join("conf-peer");
        let hello = booter.images.dir.join("hello");
        let idle = booter.images.dir.join("idle");
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let (peer, hello, idle) = (read(&peer)?, read(&hello)?, read(&idle)?);
        let mut b = PackBuilder::new();
        b.scenario("conformance-mem2b");
        let spec = |name, blob, critical| DomainSpec {
            name,
            mem_pages: 256,
            max_pages: 256,
            flags: if critical {
                DomainFlags::CRITICAL
            } else {
                DomainFlags::empty()
            },
            image_blob: blob,
            cmdline: "",
            weight: 0,
            dma_pages: 0,
        };
        for (i, (dom, how)) in MEM2B_CASES.iter().enumerate() {
            let blob = b.blob(&patch(&peer, how));
            b.domain(&spec(dom, blob, false))?;
            if i == 2 {
                // MEM-2c: a window of exactly the minimum starts; first in
                // the run queue, so it makes its one hypercall (`block`)
                // before the good domain ends the run.
                let idle_blob = b.blob(&idle);
                let mut d = spec(MEM2C_MIN, idle_blob, false);
                d.mem_pages = WINDOW_MIN_PAGES as u32;
                d.max_pages = WINDOW_MIN_PAGES as u32;
                b.domain(&d)?;
                // A good domain in the middle: those after it start too.
                let good = b.blob(&hello);
                b.domain(&spec("good", good, true))?;
            }
        }
        // EVT-7b: a channel from the good domain (index 4) to a refused
        // one (index 0) cannot be wired.
        b.channel(ORPHAN, 4, 0)?;
        // MEM-2c: windows one page outside the documented range.
        let hello_blob = b.blob(&hello);
        for (dom, pages) in MEM2C_CASES {
            let mut d = spec(dom, hello_blob, false);
            d.mem_pages = pages;
            d.max_pages = pages;
            b.domain(&d)?;
        }
        let packs = booter.work_dir().join("packs");
        std::fs::create_dir_all(&packs)
            .map_err(|e| format!("cannot create {}: {e}", packs.display()))?;
        let pack = packs.join("conformance-mem2b.pack");
        std::fs::write(&pack, b.finish())
            .map_err(|e| format!("cannot write {}: {e}", pack.display()))?;
        let log = booter.work_dir().join("logs/tests/conformance-mem2b.log");
        let run = Run {
            qemu: booter.qemu.clone(),
            accel: booter.accel,
            memory_mib: 128,
            kernel: booter.images.hypervisor.clone(),
            initrd: Some(pack),
            append: String::new(),
            gdb: None,
            extra: Vec::new(),
            cpu: None,
            timeout: Some(timeout.unwrap_or(Duration::from_secs(60))),
            echo: false,
            log: log.clone(),
            kill_on: None,
            kill_file: None,
        };
        let ended = run.run(booter.sh)?;
        let mut o = BootOutcome::new(ended.exit, ended.raw_status, ended.transcript);
        o.log = Some(log);
        Ok(o)
    };
    let name_c = "window size outside the documented range: refused";
    let name_7b = "a channel to a domain not built is not wired";
    match run() {
        Ok(o) => {
            let (pass, detail) = judge_mem2b(&o);
            let (pass_c, detail_c) = judge_mem2c(&o);
            let (pass_7b, detail_7b) = judge_evt7b(&o);
            vec![
                Record::new("MEM-2b", name, pass, detail),
                Record::new("MEM-2c", name_c, pass_c, detail_c),
                Record::new("EVT-7b", name_7b, pass_7b, detail_7b),
            ]
        }
        Err(e) => vec![
            Record::new("MEM-2b", name, false, format!("could not boot: {e}")),
            Record::new("MEM-2c", name_c, false, format!("could not boot: {e}")),
            Record::new("EVT-7b", name_7b, false, format!("could not boot: {e}")),
        ],
    }
}

/// The channel of the MEM-2b pack whose far end is a refused image.
const ORPHAN: &str = "orphan";

/// EVT-7b from the refused-images transcript: the channel to the refused
/// domain is reported unwired, nothing was wired for the good end, and the
/// good domain still ran.
pub fn judge_evt7b(o: &BootOutcome) -> (bool, String) {
    let mut c = HostCheck::new();
    let f = &o.facts;
    let err = f
        .of_kind("channel-error")
        .find(|x| x.get("name") == Some(ORPHAN));
    c.t(err.is_some(), "no `@ channel-error name=\"orphan\"`");
    c.t(
        err.and_then(|e| e.get("error"))
            .is_some_and(|e| e.contains("domain 1 was not built")),
        "the error does not name domain 1 as not built",
    );
    c.t(
        !f.of_kind("channel").any(|x| x.get("name") == Some(ORPHAN)),
        "a port was wired for the orphan channel",
    );
    c.t(
        f.of_kind("domain-exit")
            .any(|x| x.get("name") == Some("good") && x.get("code") == Some("0")),
        "the good domain did not run to its end",
    );
    c.result()
}

/// The MEM-2c cases: (domain name, window pages), each one page outside
/// `WINDOW_MIN_PAGES..=WINDOW_MAX_PAGES`.
const MEM2C_CASES: [(&str, u32); 2] = [
    ("small-window", WINDOW_MIN_PAGES as u32 - 1),
    ("huge-window", WINDOW_MAX_PAGES as u32 + 1),
];

/// The MEM-2c domain of exactly `WINDOW_MIN_PAGES` (the `idle` image).
const MEM2C_MIN: &str = "min-window";

/// MEM-2c from the same transcript: each out-of-range window refused with
/// a report naming its size, never started; the window of exactly the
/// minimum started, took its window and shared page, and made its one
/// hypercall (`block`) before the run ended.
pub fn judge_mem2c(o: &BootOutcome) -> (bool, String) {
    let mut c = HostCheck::new();
    let f = &o.facts;
    c.t(
        f.of_kind("domain-start").any(|x| {
            x.get("name") == Some(MEM2C_MIN)
                && x.get("pages") == Some(WINDOW_MIN_PAGES.to_string().as_str())
        }),
        format!("{MEM2C_MIN}: no `@ domain-start` with pages={WINDOW_MIN_PAGES}"),
    );
    c.t(
        f.of_kind("domain-exit").any(|x| {
            x.get("name") == Some(MEM2C_MIN)
                && x.get("reason") == Some("scenario-end")
                && x.get("hypercalls") == Some("1")
        }),
        format!("{MEM2C_MIN}: did not run and block until the scenario's end"),
    );
    for (dom, pages) in MEM2C_CASES {
        let err = f
            .of_kind("domain-error")
            .find(|x| x.get("name") == Some(dom))
            .and_then(|x| x.get("error").map(str::to_string));
        c.t(err.is_some(), format!("{dom}: no `@ domain-error`"));
        c.t(
            err.is_some_and(|e| e.contains(&pages.to_string())),
            format!("{dom}: the error does not name its {pages} pages"),
        );
        c.t(
            !f.of_kind("domain-start")
                .any(|x| x.get("name") == Some(dom)),
            format!("{dom} was started"),
        );
    }
    c.result()
}

/// MEM-2b from the transcript of the refused-images boot.
pub fn judge_mem2b(o: &BootOutcome) -> (bool, String) {
    let mut c = HostCheck::new();
    let f = &o.facts;
    for (dom, _) in MEM2B_CASES {
        c.t(
            f.of_kind("domain-error")
                .any(|x| x.get("name") == Some(dom)),
            format!("{dom}: no `@ domain-error`"),
        );
        c.t(
            !f.of_kind("domain-start")
                .any(|x| x.get("name") == Some(dom)),
            format!("{dom} was started"),
        );
    }
    c.t(
        f.of_kind("domain-start")
            .any(|x| x.get("name") == Some("good")),
        "the good domain did not start",
    );
    c.t(
        f.of_kind("domain-exit")
            .any(|x| x.get("name") == Some("good") && x.get("code") == Some("0")),
        "the good domain did not run to its end",
    );
    c.t(
        // The good one and MEM-2c's window of the minimum size.
        f.of_kind("domains").any(|x| x.get("started") == Some("2")),
        "`@ domains started=2` missing",
    );
    c.result()
}

// ---------------------------------------------------------------- running

/// What a conformance run produced.
pub struct Report {
    /// One record per documented clause (plus unknown ones), in order.
    pub records: Vec<Record>,
    /// Problems with the run itself (boot failed, no results), each one
    /// more failure.
    pub problems: Vec<String>,
    /// The serial log of the main boot.
    pub log: Option<PathBuf>,
}

/// Boots the conformance scenario (and the MEM-2b pack) and reconciles the
/// results with the documented clauses.
pub fn run(booter: &Booter<'_>, timeout: Option<Duration>) -> Result<Report, String> {
    let doc = doc_clauses(&booter.root)?;
    let how = Presentation {
        echo: false,
        gdb: None,
        log_name: format!("tests/{SCENARIO}"),
    };
    let mut req = BootRequest::scenario(SCENARIO);
    req.timeout = timeout;
    let mut problems = Vec::new();
    let (results, log) = match booter.boot(&req, &how) {
        Ok((outcome, _, _)) => {
            let guest = guest_records(&outcome, GUEST);
            if guest.is_empty() {
                problems.push(format!(
                    "the conformance guest reported no clause (run ended with {})",
                    outcome.exit
                ));
            } else if outcome.exit != Exit::Success {
                problems.push(format!("the run ended with {}", outcome.exit));
            }
            (merge(guest, host_checks(&outcome)), outcome.log)
        }
        Err(e) => {
            problems.push(format!("could not boot: {e}"));
            (Vec::new(), None)
        }
    };
    let mut results = results;
    results.retain(|r| r.clause != "MEM-2b" && r.clause != "MEM-2c");
    results.extend(mem2b(booter, timeout));
    results.extend(mmu(booter, timeout, &mut problems));
    results.extend(cpu(booter, timeout, &mut problems));
    results.extend(io(booter, timeout, &mut problems));
    results.extend(blk(booter, timeout, &mut problems));
    results.extend(net(booter, timeout, &mut problems));
    Ok(Report {
        records: reconcile(&doc, results),
        problems,
        log,
    })
}

/// Boots the direct-paging attack suite and takes its clause results, plus
/// MMU-16 (teardown), which only the hypervisor's frame audit shows: the
/// victim domain still holds a pinned tree and live mappings when the run
/// ends, and every one of its frames must come back.
fn mmu(booter: &Booter<'_>, timeout: Option<Duration>, problems: &mut Vec<String>) -> Vec<Record> {
    let how = Presentation {
        echo: false,
        gdb: None,
        log_name: format!("tests/{MMU_SCENARIO}"),
    };
    let mut req = BootRequest::scenario(MMU_SCENARIO);
    req.timeout = timeout;
    let outcome = match booter.boot(&req, &how) {
        Ok((outcome, _, _)) => outcome,
        Err(e) => {
            problems.push(format!("could not boot `{MMU_SCENARIO}`: {e}"));
            return Vec::new();
        }
    };
    let records = guest_records(&outcome, MMU_GUEST);
    if records.is_empty() {
        problems.push(format!(
            "the `{MMU_SCENARIO}` guest reported no clause (run ended with {})",
            outcome.exit
        ));
    } else if outcome.exit != Exit::Success {
        problems.push(format!(
            "the `{MMU_SCENARIO}` run ended with {}",
            outcome.exit
        ));
    }
    let host = poisoned(&outcome).result();
    let mut host_map = BTreeMap::new();
    host_map.insert("MEM-9", host.clone());
    // Frames freed scrubbed are handed out again without a second zeroing
    // (issue 13); under poison-free each one is checked all zero when it
    // is. The populate-after-release tests must have exercised that path.
    let mut reuse = poisoned(&outcome);
    let clean = outcome
        .facts
        .of_kind("audit")
        .next()
        .and_then(|a| a.number("handed_clean").ok());
    reuse.t(
        clean.is_some_and(|n| n > 0),
        "no frame handed out again after being scrubbed (`@ audit handed_clean=`): \
         populate after release should reuse scrubbed frames, each checked all zero",
    );
    host_map.insert("MEM-5", reuse.result());
    host_map.insert("MEM-8", canary(&outcome).result());
    host_map.insert("MEM-2e", shared_copy(&outcome).result());
    let mut records = merge(records, host_map);
    let mut c = HostCheck::new();
    match outcome.facts.one("audit") {
        Ok(a) => {
            c.t(
                a.get("status") == Some("ok"),
                format!("`{a}`: the end-of-run frame audit failed"),
            );
            let (free, base) = (
                a.number("free_frames").unwrap_or(0),
                a.number("baseline").unwrap_or(1),
            );
            c.t(
                free == base,
                format!("`{a}`: {} frames not returned", base.abs_diff(free)),
            );
        }
        Err(e) => c.t(false, e),
    }
    let victim_torn_down = outcome
        .facts
        .of_kind("domain-exit")
        .any(|f| f.get("name") == Some("victim"));
    c.t(victim_torn_down, "the victim domain was not torn down");
    let (pass, detail) = c.result();
    records.push(Record::new(
        "MMU-16",
        "teardown releases pinned tables and mappings",
        pass,
        detail,
    ));
    records
}

/// Boots the device-delegation scenario and takes both guests' clause
/// results, plus IO-4, which only the transcript shows ([`io_reset`]).
fn io(booter: &Booter<'_>, timeout: Option<Duration>, problems: &mut Vec<String>) -> Vec<Record> {
    let how = Presentation {
        echo: false,
        gdb: None,
        log_name: format!("tests/{IO_SCENARIO}"),
    };
    let mut req = BootRequest::scenario(IO_SCENARIO);
    req.timeout = timeout;
    let outcome = match booter.boot(&req, &how) {
        Ok((outcome, _, _)) => outcome,
        Err(e) => {
            problems.push(format!("could not boot `{IO_SCENARIO}`: {e}"));
            return Vec::new();
        }
    };
    let mut records = Vec::new();
    for guest in IO_GUESTS {
        let r = guest_records(&outcome, guest);
        if r.is_empty() {
            problems.push(format!(
                "the `{IO_SCENARIO}` guest `{guest}` reported no clause (run ended with {})",
                outcome.exit
            ));
        }
        records.extend(r);
    }
    if outcome.exit != Exit::Success {
        problems.push(format!(
            "the `{IO_SCENARIO}` run ended with {}",
            outcome.exit
        ));
    }
    let (pass, detail) = io_reset(&outcome).result();
    records.push(Record::new(
        "IO-4",
        "a dead driver's devices are reset and masked before its frames go",
        pass,
        detail,
    ));
    records
}

/// Boots the network scenario and takes its guests' clause results; a
/// clause reported by several of them (each checks its own side) becomes
/// one record that passes only if every guest that should report it did
/// and passed.
fn net(booter: &Booter<'_>, timeout: Option<Duration>, problems: &mut Vec<String>) -> Vec<Record> {
    let how = Presentation {
        echo: false,
        gdb: None,
        log_name: format!("tests/{NET_SCENARIO}"),
    };
    let mut req = BootRequest::scenario(NET_SCENARIO);
    req.timeout = timeout;
    let outcome = match booter.boot(&req, &how) {
        Ok((outcome, _, _)) => outcome,
        Err(e) => {
            problems.push(format!("could not boot `{NET_SCENARIO}`: {e}"));
            return Vec::new();
        }
    };
    let per_guest: Vec<(&str, Vec<Record>)> = NET_GUESTS
        .iter()
        .map(|&g| (g, guest_records(&outcome, g)))
        .collect();
    for (g, r) in &per_guest {
        if r.is_empty() {
            problems.push(format!(
                "the `{NET_SCENARIO}` guest `{g}` reported no clause (run ended with {})",
                outcome.exit
            ));
        }
    }
    if outcome.exit != Exit::Success {
        problems.push(format!(
            "the `{NET_SCENARIO}` run ended with {}",
            outcome.exit
        ));
    }
    combine_sides(&per_guest, NET_SHARED)
}

/// Clauses of the `net` scenario that several guests check, each its own
/// side, and who must report them.
const NET_SHARED: &[(&str, &[&str])] = &[("MEM-3c", &NET_GUESTS), ("NET-4", &["a", "b"])];

/// Merges the records of several guests: each clause in `shared` must be
/// reported exactly once by every guest listed with it and becomes one
/// record (failing with the failing guests' details, or naming the guests
/// that did not report it); any other clause is kept as reported.
fn combine_sides(per_guest: &[(&str, Vec<Record>)], shared: &[(&str, &[&str])]) -> Vec<Record> {
    let mut out = Vec::new();
    for &(id, reporters) in shared {
        let mut name = String::new();
        let mut fails = Vec::new();
        for &g in reporters {
            let records = per_guest
                .iter()
                .find(|(n, _)| *n == g)
                .map_or(&[][..], |(_, r)| r.as_slice());
            let mine: Vec<&Record> = records.iter().filter(|r| r.clause == id).collect();
            match mine.as_slice() {
                [] => fails.push(format!("`{g}` did not report it")),
                [r] => {
                    name.clone_from(&r.name);
                    if !r.passed() {
                        fails.push(format!("`{g}`: {}", r.detail));
                    }
                }
                _ => fails.push(format!("`{g}` reported it {} times", mine.len())),
            }
        }
        let name = name.split(" (").next().unwrap_or("").to_string();
        out.push(Record::new(id, &name, fails.is_empty(), fails.join("; ")));
    }
    for (_, records) in per_guest {
        out.extend(
            records
                .iter()
                .filter(|r| !shared.iter().any(|(id, _)| *id == r.clause))
                .cloned(),
        );
    }
    out
}

/// IO-4 from the `io` transcript: the driver `drv` (domain 1) died on a
/// fault; its device was reset (`status=0`) and its line masked, reported
/// before its memory was released; the other guest ran on after it and saw
/// the disk channel close; the frame audit is clean.
fn io_reset(outcome: &BootOutcome) -> HostCheck {
    let mut c = HostCheck::new();
    let t = &outcome.transcript;
    let at = |needle: &str| t.lines().position(|l| l.starts_with(needle));
    let fault = at("@ domain-fault id=1 name=\"drv\"");
    let reset = at("@ device-reset dom=1 ");
    let released = at("@ domain-released id=1 ");
    let gone = at("[plain] @ iotest role=plain driver_gone=1");
    c.t(
        fault.is_some(),
        "the driver domain was not destroyed by a fault",
    );
    match reset {
        None => c.t(false, "no `@ device-reset` for the driver's device"),
        Some(i) => {
            let line = t.lines().nth(i).unwrap_or_default();
            c.t(
                line.contains(" status=0 ") && line.ends_with(" masked=1"),
                format!("`{line}`: want status=0 and masked=1"),
            );
            c.t(
                released.is_some_and(|r| i < r),
                "the device was not reset before the driver's frames were released",
            );
        }
    }
    c.t(
        gone.is_some_and(|g| released.is_some_and(|r| g > r) || fault.is_some_and(|f| g > f)),
        "`plain` did not run on and see the disk channel close",
    );
    match outcome.facts.one("audit") {
        Ok(a) => c.t(
            a.get("status") == Some("ok"),
            format!("`{a}`: the frame audit failed"),
        ),
        Err(e) => c.t(false, e),
    }
    c
}

/// Boots the block protocol's suite: the frontend `vconf` reports the
/// clauses; what only the driver domain and the peer frontend show is
/// judged here ([`blk_host_checks`]).
fn blk(booter: &Booter<'_>, timeout: Option<Duration>, problems: &mut Vec<String>) -> Vec<Record> {
    let how = Presentation {
        echo: false,
        gdb: None,
        log_name: format!("tests/{BLK_SCENARIO}"),
    };
    let mut req = BootRequest::scenario(BLK_SCENARIO);
    req.timeout = timeout;
    let outcome = match booter.boot(&req, &how) {
        Ok((outcome, _, _)) => outcome,
        Err(e) => {
            problems.push(format!("could not boot `{BLK_SCENARIO}`: {e}"));
            return Vec::new();
        }
    };
    let records = guest_records(&outcome, BLK_GUEST);
    if records.is_empty() {
        problems.push(format!(
            "the `{BLK_SCENARIO}` guest reported no clause (run ended with {})",
            outcome.exit
        ));
    } else if outcome.exit != Exit::Success {
        problems.push(format!(
            "the `{BLK_SCENARIO}` run ended with {}",
            outcome.exit
        ));
    }
    merge(records, blk_host_checks(&outcome))
}

/// What the `blk-conf` transcript must show beside the frontend's checks:
/// the refused ring grant (BLK-2a), a device that offered FLUSH (BLK-6),
/// the hostile ring disconnected (RING-5), the peer's I/O done without an
/// error and the frames all back (BLK-7).
pub fn blk_host_checks(o: &BootOutcome) -> BTreeMap<&'static str, (bool, String)> {
    let drv = |kind: &'static str| -> Vec<&tahoma_tests::Fact> {
        o.facts
            .guest_of_kind(kind)
            .filter(|(n, _)| *n == "drv")
            .map(|(_, f)| f)
            .collect()
    };
    let mut m = BTreeMap::new();
    let mut c = HostCheck::new();
    let refused = drv("blk-refused");
    c.t(
        refused.iter().any(|f| {
            f.get("frontend") == Some(BLK_GUEST)
                && f.get("disk") == Some("1")
                && f.get("error") == Some("permission_denied")
        }),
        "no `@ blk-refused frontend=vconf disk=1 error=permission_denied` from the driver",
    );
    c.t(
        drv("blk-connected")
            .iter()
            .any(|f| f.get("frontend") == Some(BLK_GUEST) && f.get("disk") == Some("1")),
        "disk 1 was not connected after the right grant",
    );
    m.insert("BLK-2a", c.result());
    let mut c = HostCheck::new();
    let devices = drv("blk-device");
    c.t(
        !devices.is_empty() && devices.iter().all(|f| f.get("flush") == Some("yes")),
        "the driver served a device without `flush=yes`",
    );
    m.insert("BLK-6", c.result());
    let mut c = HostCheck::new();
    c.t(
        drv("blk-disconnected").iter().any(|f| {
            f.get("frontend") == Some(BLK_GUEST)
                && f.get("disk") == Some("2")
                && f.get("why").is_some_and(|w| w.contains("RING-5"))
        }),
        "the driver did not disconnect vconf's disk 2 for its insane index",
    );
    c.t(
        drv("blk-disconnected")
            .iter()
            .all(|f| f.get("frontend") == Some(BLK_GUEST) && f.get("disk") != Some("0")),
        "a ring other than vconf's disks 1 and 2 was disconnected",
    );
    m.insert("RING-5", c.result());
    let mut c = HostCheck::new();
    c.t(
        drv("blk-disconnected").iter().any(|f| {
            f.get("frontend") == Some(BLK_GUEST)
                && f.get("disk") == Some("1")
                && f.get("why").is_some_and(|w| w.contains("frontend gone"))
        }),
        "the driver did not drop vconf's disk 1 after its port was closed mid-request",
    );
    let load: Vec<_> = o
        .facts
        .guest_of_kind("vblk")
        .filter(|(n, f)| *n == "peer" && f.get("ops").is_some())
        .map(|(_, f)| f)
        .collect();
    c.t(
        load.len() == 1
            && load[0].get("errors") == Some("0")
            && load[0].get("disconnected") == Some("0")
            && load[0].number("ops").unwrap_or(0) > 0,
        format!("the peer's I/O: {load:?}, want one `@ vblk load` with errors=0 disconnected=0"),
    );
    match o.facts.one("audit") {
        Ok(a) => c.t(
            a.get("status") == Some("ok"),
            format!("`{a}`: the frame audit failed"),
        ),
        Err(e) => c.t(false, e),
    }
    m.insert("BLK-7", c.result());
    m
}

/// Boots the CPU-state suite under every model of [`CPU_MODELS`] and
/// takes its clause results plus the ones judged from the transcript
/// ([`cpu_host_checks`]); a clause passes only if it passes under every
/// model. Under KVM (`-cpu host`) there is one boot.
fn cpu(booter: &Booter<'_>, timeout: Option<Duration>, problems: &mut Vec<String>) -> Vec<Record> {
    let models: Vec<Option<&str>> = match booter.accel {
        crate::qemu::Accel::Tcg => CPU_MODELS.iter().copied().map(Some).collect(),
        crate::qemu::Accel::Kvm => vec![None],
    };
    let mut per_model = Vec::new();
    for (i, model) in models.iter().enumerate() {
        let how = Presentation {
            echo: false,
            gdb: None,
            log_name: format!("tests/{CPU_SCENARIO}.{i}"),
        };
        let mut req = BootRequest::scenario(CPU_SCENARIO);
        req.timeout = timeout;
        req.cpu = model.map(str::to_string);
        let label = model.unwrap_or("host");
        let outcome = match booter.boot(&req, &how) {
            Ok((outcome, _, _)) => outcome,
            Err(e) => {
                problems.push(format!("could not boot `{CPU_SCENARIO}` ({label}): {e}"));
                continue;
            }
        };
        let guest = guest_records(&outcome, CPU_GUEST);
        if guest.is_empty() {
            problems.push(format!(
                "the `{CPU_SCENARIO}` guest reported no clause under {label} (run ended with {})",
                outcome.exit
            ));
        } else if outcome.exit != Exit::Success {
            problems.push(format!(
                "the `{CPU_SCENARIO}` run under {label} ended with {}",
                outcome.exit
            ));
        }
        per_model.push((label, merge(guest, cpu_host_checks(&outcome, label))));
    }
    let mut records = combine_models(per_model);
    let how = Presentation {
        echo: false,
        gdb: None,
        log_name: format!("tests/{CPU_COMPAT_SCENARIO}"),
    };
    let mut req = BootRequest::scenario(CPU_COMPAT_SCENARIO);
    req.timeout = timeout;
    let name = "syscall from compatibility mode destroys the caller";
    records.push(match booter.boot(&req, &how) {
        Ok((o, _, _)) => {
            let (pass, detail) = judge_compat(&o);
            Record::new("CPU-3b", name, pass, detail)
        }
        Err(e) => Record::new("CPU-3b", name, false, format!("could not boot: {e}")),
    });
    records
}

/// The test boot for CPU-3b (a GDT with a 32-bit ring-3 code segment).
pub const CPU_COMPAT_SCENARIO: &str = "cpu-compat";

/// CPU-3b from the `cpu-compat` boot: the domain that executed `syscall`
/// in compatibility mode was destroyed with `kind=compat-syscall` (not an
/// exception, not a hypervisor fault), the test segment was really there,
/// and the canary `watch` kept its registers and secret and ended the run.
pub fn judge_compat(o: &BootOutcome) -> (bool, String) {
    let f = &o.facts;
    let mut c = HostCheck::new();
    c.t(
        f.of_kind("testonly")
            .any(|x| x.get("compat32") == Some("1")),
        "no `@ testonly compat32=1`: the test segment was not installed",
    );
    match f
        .of_kind("domain-fault")
        .find(|x| x.get("name") == Some("compat"))
    {
        Some(x) => {
            c.t(
                x.get("kind") == Some("compat-syscall"),
                format!("`{x}`: kind is not compat-syscall"),
            );
            c.t(
                x.get("vector").is_none(),
                format!("`{x}`: reported as an exception"),
            );
        }
        None => c.t(false, "no `@ domain-fault name=compat`"),
    }
    c.t(
        !f.of_kind("domain-exit")
            .any(|x| x.get("name") == Some("compat")),
        "compat survived",
    );
    c.t(
        f.guest_of_kind("cpu-watch")
            .any(|(n, x)| n == "watch" && x.get("ok") == Some("1")),
        "the canary `watch` did not report its registers and secret intact",
    );
    c.t(
        f.of_kind("exception").next().is_none(),
        "the hypervisor reported an exception of its own",
    );
    c.t(
        o.exit == Exit::Success,
        format!("the run ended with {}", o.exit),
    );
    c.result()
}

/// One record per clause from per-model results: a pass only when every
/// model passed it; the detail names each model.
fn combine_models(per_model: Vec<(&str, Vec<Record>)>) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let n = per_model.len();
    for (label, records) in &per_model {
        for r in records {
            let short = label.split(',').next().unwrap_or(label);
            match out.iter_mut().find(|o| o.clause == r.clause) {
                Some(o) => {
                    if !r.passed() {
                        o.outcome = Outcome::Fail;
                    }
                    o.detail = format!("{}; {short}: {}", o.detail, r.detail);
                    o.name.clone_from(&r.name);
                }
                None => {
                    let mut r = r.clone();
                    r.detail = format!("{short}: {}", r.detail);
                    out.push(r);
                }
            }
        }
    }
    // A clause missing under one model did not hold there.
    for o in &mut out {
        let seen = per_model
            .iter()
            .filter(|(_, rs)| rs.iter().any(|r| r.clause == o.clause))
            .count();
        if seen != n {
            o.outcome = Outcome::Fail;
            o.detail = format!("reported under {seen} of {n} CPU models; {}", o.detail);
        }
    }
    out
}

/// The CPU-state clauses judged from one boot's transcript under `model`:
/// CPU-4 (`sysenter` destroys its caller with a `kind=sysenter` report, or
/// raises #UD where the CPU has no `sysenter` in 64-bit mode: AMD-vendor
/// models) and TRAP-7 (an undeliverable event upcall destroys the domain
/// with `kind=event-upcall`, not an exception). Both also need the canary
/// (`peer`) to have finished cleanly and the hypervisor not to have faulted.
pub fn cpu_host_checks(o: &BootOutcome, model: &str) -> BTreeMap<&'static str, (bool, String)> {
    let f = &o.facts;
    let fault = |name: &str| {
        f.of_kind("domain-fault")
            .find(|x| x.get("name") == Some(name))
    };
    let exit = |name: &str| {
        f.of_kind("domain-exit")
            .find(|x| x.get("name") == Some(name))
    };
    let canary = |c: &mut HostCheck| {
        c.t(
            exit("peer")
                .is_some_and(|e| e.get("reason") == Some("poweroff") && e.get("code") == Some("0")),
            "the canary `peer` did not power off with 0",
        );
        c.t(
            f.of_kind("exception").next().is_none(),
            "the hypervisor reported an exception of its own",
        );
        c.t(
            o.exit == Exit::Success,
            format!("the run ended with {}", o.exit),
        );
    };
    let mut out = BTreeMap::new();

    let mut c = HostCheck::new();
    // Which outcome the model calls for: `None` under `-cpu host` (either).
    let expect_kill = (model != "host").then(|| model.contains("GenuineIntel"));
    let said_ud = lines_of(&o.transcript, "sysenter")
        .iter()
        .any(|l| l.starts_with("sysenter raised #UD"));
    match fault("sysenter") {
        Some(x) => {
            c.t(
                x.get("kind") == Some("sysenter"),
                format!("`{x}`: kind is not sysenter"),
            );
            c.t(
                x.get("vector").is_none(),
                format!("`{x}`: reported as an exception"),
            );
            c.t(
                expect_kill != Some(false),
                format!("{model}: sysenter reached the hypervisor on an AMD-vendor model"),
            );
        }
        None => {
            c.t(
                said_ud,
                "sysenter neither destroyed its domain nor raised #UD",
            );
            c.t(
                expect_kill != Some(true),
                format!("{model}: sysenter did not reach the hypervisor's entry"),
            );
            c.t(
                exit("sysenter").is_some_and(|e| e.get("code") == Some("0")),
                "the sysenter domain did not exit after its #UD",
            );
        }
    }
    canary(&mut c);
    out.insert("CPU-4", c.result());

    // CALL-1c: the `syscall` in the last two bytes below GUEST_VA_TOP (a
    // console_write, which the fast path would run) did not run; its
    // domain took #GP at GUEST_VA_TOP, after an `abi_version` from the same
    // page returned.
    let mut c = HostCheck::new();
    let said = lines_of(&o.transcript, "sysrettop");
    c.t(
        said.iter()
            .any(|l| l.starts_with("sysrettop: the top page is mapped")),
        "the sysrettop domain did not map the top page",
    );
    c.t(
        !said
            .iter()
            .any(|l| l.contains("the call from the last two bytes ran")),
        "the console_write from the last two bytes ran",
    );
    match fault("sysrettop") {
        Some(x) => c.t(
            x.get("kind") == Some("exception")
                && x.get("vector") == Some("13")
                && x.get("error") == Some("0x0")
                && x.get("rip") == Some("0x800000000000"),
            format!("`{x}`: not a #GP (error 0) at rip 0x800000000000"),
        ),
        None => c.t(
            false,
            "the sysrettop domain was not destroyed by an exception",
        ),
    }
    c.t(
        exit("sysrettop").is_none(),
        "the sysrettop domain exited instead of taking the #GP",
    );
    canary(&mut c);
    out.insert("CALL-1c", c.result());

    let mut c = HostCheck::new();
    match fault("upcallfail") {
        Some(x) => {
            c.t(
                x.get("kind") == Some("event-upcall"),
                format!("`{x}`: kind is not event-upcall"),
            );
            c.t(
                x.get("vector").is_none() && x.get("exception").is_none(),
                format!("`{x}`: reported as an exception"),
            );
            c.t(
                x.get("reason").is_some_and(|r| r.contains("writable")),
                format!("`{x}`: the reason does not say the frame could not be written"),
            );
        }
        None => c.t(false, "no `@ domain-fault name=upcallfail`"),
    }
    c.t(
        exit("upcallfail").is_none(),
        "upcallfail has a domain-exit: it survived",
    );
    canary(&mut c);
    out.insert("TRAP-7", c.result());
    out
}

/// Writes the records as a JSON array of `{"clause", "name", "outcome"}`.
pub fn write_json(path: &Path, records: &[Record]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(records).map_err(|e| format!("cannot encode: {e}"))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clause_ids() {
        for ok in ["CALL-1", "EVT-4a", "SCHED-0b", "MEM-2"] {
            assert!(is_clause_id(ok), "{ok}");
        }
        for bad in ["Clause", "EVT-", "-1", "EVT-4ab", "evt-1", "EVT-4A", "ABI"] {
            assert!(!is_clause_id(bad), "{bad}");
        }
    }

    #[test]
    fn clauses_from_headings_and_bold_rules() {
        let text = "# Title\n## Clause IDs\n## EVT-1 event_alloc_unbound (0x20)\n\
                    - **EVT-1a** No domain: `not_found`.\n- **EVT-1b** All ports.\n\
                    Words: **MUST** and **not** are no clauses.\n## TRAP-0 Upcalls\n\
                    **MMU-2 (writable mappings).** A rule. **EVT-9 is** no title.\n";
        assert_eq!(
            clauses_in(text),
            ["EVT-1", "EVT-1a", "EVT-1b", "TRAP-0", "MMU-2"]
        );
    }

    #[test]
    fn the_real_spec_has_the_known_clauses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let ids = doc_clauses(root).unwrap();
        for id in [
            "CALL-1a", "BASE-1", "CON-1d", "MEM-2b", "SCHED-3b", "TIME-1", "EVT-6a", "TRAP-4",
        ] {
            assert!(ids.contains(&id.to_string()), "{id} missing from {ids:?}");
        }
        for id in [
            "MMU-1", "MMU-16", "MMU-22b", "MEM-5b", "CPU-1", "CPU-1a", "CPU-3b", "CPU-6", "TRAP-7",
            "TIME-3", "TRAP-5", "LIM-6",
        ] {
            assert!(ids.contains(&id.to_string()), "{id} missing");
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "duplicates");
        // Documentation order is the family table's: CALL first, then each
        // family's page in turn.
        let first = |f: &str| ids.iter().position(|i| i.starts_with(&format!("{f}-")));
        let order: Vec<Option<usize>> = ["CALL", "BASE", "CON", "MEM", "SCHED", "TIME", "EVT"]
            .iter()
            .map(|f| first(f))
            .collect();
        assert!(order.iter().all(Option::is_some), "{order:?}");
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    }

    #[test]
    fn spec_pages_follow_the_family_table() {
        let readme = "| family | page | scope |\n|---|---|---|\n| `CALL` | this page | x |\n\
                      | `CON` | [console.md](console.md) | console |\n\
                      | `rax` | [`Hypercall`](../numbers.rs) | no |\n";
        assert_eq!(
            spec_pages(readme),
            [
                ("CALL".to_string(), "README.md".to_string()),
                ("CON".to_string(), "console.md".to_string())
            ]
        );
    }

    fn rec(c: &str, pass: bool) -> Record {
        Record::new(c, c, pass, "")
    }

    #[test]
    fn missing_duplicate_and_unknown_clauses_fail() {
        let doc: Vec<String> = ["A-1", "A-2", "A-3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = reconcile(
            &doc,
            vec![
                rec("A-1", true),
                rec("A-3", true),
                rec("A-3", true),
                rec("B-9", true),
            ],
        );
        let v: Vec<(&str, bool)> = out
            .iter()
            .map(|r| (r.clause.as_str(), r.passed()))
            .collect();
        assert_eq!(
            v,
            [
                ("A-1", true),
                ("A-2", false),
                ("A-3", false),
                ("B-9", false)
            ]
        );
    }

    #[test]
    fn host_failures_override_guest_passes() {
        let mut host = BTreeMap::new();
        host.insert("A-1", (false, "transcript: leak".to_string()));
        host.insert("A-2", (true, "transcript checks passed".to_string()));
        let mut judged = rec("A-2", true);
        judged.detail = "judged by xtask".into();
        let out = merge(vec![rec("A-1", true), judged], host);
        assert!(!out[0].passed());
        assert!(out[0].detail.contains("leak"));
        assert!(out[1].passed());
        assert_eq!(out[1].detail, "transcript checks passed");
    }

    fn canned(t: &str, exit: Exit) -> BootOutcome {
        BootOutcome::new(exit, None, t.to_string())
    }

    /// What the hypervisor prints for the conformance guest's UTF-8 lines
    /// (CON-1d): valid text as is, one U+FFFD per invalid sequence, a
    /// character at the 256-byte cut moved whole to the next line.
    fn utf8_lines() -> String {
        format!(
            "[conf] CON1D utf8: héllo ✓ 🦀\n[conf] CON1D bad:\u{fffd}|\u{fffd}|end\n\
             [conf] CON1D straddle {}\n[conf] 🦀tail\n",
            "x".repeat(254 - 15)
        )
    }

    #[test]
    fn con_1d_utf8_checks_have_teeth() {
        let ok = |t: &str| host_checks(&canned(t, Exit::Success))["CON-1d"].0;
        let base = format!(
            "[conf] CON1D partial line joined\n[conf] CON1D ctl:?[1m???|\t|end\n\
             [conf] @ forged by=conf\n[conf] CON1D long {}\n[conf] {}\n",
            "y".repeat(245),
            "y".repeat(44)
        );
        assert!(ok(&(base.clone() + &utf8_lines())));
        // The old behaviour: a line with an invalid byte replaced whole.
        let whole = utf8_lines().replace("CON1D bad:\u{fffd}|\u{fffd}|end", "<invalid utf-8>");
        assert!(!ok(&(base.clone() + &whole)));
        // Invalid bytes each replaced, but the rest of the line dropped.
        let cut = utf8_lines().replace("|\u{fffd}|end", "");
        assert!(!ok(&(base.clone() + &cut)));
        // A character split at the cut (both halves lost).
        let split = utf8_lines().replace(
            &format!("{}\n[conf] 🦀tail", "x".repeat(254 - 15)),
            &format!("{}\u{fffd}\n[conf] \u{fffd}tail", "x".repeat(254 - 15)),
        );
        assert!(!ok(&(base.clone() + &split)));
        // Valid UTF-8 altered.
        let ascii = utf8_lines().replace("héllo ✓ 🦀", "h?llo ? ?");
        assert!(!ok(&(base + &ascii)));
    }

    #[test]
    fn console_checks_read_the_transcript() {
        let long = format!(
            "[conf] CON1D long {}\n[conf] {}\n{}",
            "y".repeat(245),
            "y".repeat(44),
            utf8_lines()
        );
        let con2: String = (0..64)
            .map(|i| {
                let mut l = format!("[conf] CON2 line {i:02} ");
                while l.len() < 63 + 7 {
                    l.push('-');
                }
                l + "\n"
            })
            .collect();
        let nest: String = (1..=8)
            .map(|d| format!("[nest] nest depth={d}\n"))
            .collect();
        let lim5 = format!(
            "[conf] LIM5 {}\n[conf] LIM5 {}\n[conf] Z\n",
            "a".repeat(251),
            "b".repeat(251)
        );
        let good = format!(
            "{nest}{lim5}@ testopt poison-free frames=9 pattern=0x1\n@ time tsc_hz=123 apic_hz=1 source=pit\n[conf] TIME-0 start-info tsc_hz=123\n[conf] TAHOMASI\n[conf] CALL-1b marker\n[conf] CON-1 marker: hello\n\
             [conf] CON1D partial line joined\n[conf] CON1D ctl:?[1m???|\t|end\n\
             [conf] @ forged by=conf\n{long}{con2}\
             @ domain-fault id=4 name=\"crasher\" vector=14 rip=0x1 cr2=0xdead0000 reason=\"no trap handler registered\"\n\
             @ domain-fault id=6 name=\"rostack\" vector=6 rip=0x1 cr2=0x0 reason=\"callback stack not writable\"\n\
             @ domain-fault id=7 name=\"nest\" vector=6 rip=0x1 cr2=0x0 reason=\"traps nested too deep\"\n\
             @ domain-exit id=2 name=\"helper\" reason=reboot code=-7\n\
             @ domain-exit id=1 name=\"conf\" reason=poweroff code=0\n\
             @ domain-exit id=5 name=\"spin\" reason=scenario-end code=0\n\
             @ domain-released id=4 name=\"crasher\" unpinned=1 ticks=9\n\
             @ domain-released id=6 name=\"rostack\" unpinned=1 ticks=9\n\
             @ domain-released id=7 name=\"nest\" unpinned=1 ticks=9\n\
             @ domain-released id=2 name=\"helper\" unpinned=1 ticks=9\n\
             @ domain-released id=1 name=\"conf\" unpinned=1 ticks=9\n\
             @ domain-released id=5 name=\"spin\" unpinned=1 ticks=9\n\
             @ audit free_frames=7 baseline=7\n@ exit status=success\n"
        );
        let h = host_checks(&canned(&good, Exit::Success));
        for (k, (pass, d)) in &h {
            assert!(pass, "{k}: {d}");
        }
        let bad = good
            .replace(
                "[conf] CON1D partial line joined\n",
                "[conf] CON1D partial \n[conf] line joined\n",
            )
            .replace("[conf] @ forged by=conf\n", "@ forged by=conf\n")
            .replace("code=-7", "code=18446744073709551609")
            .replace("tsc_hz=123\n", "tsc_hz=124\n")
            .replace("@ testopt poison-free frames=9", "@ testopt frames=9")
            .replace(
                "@ domain-released id=6 name=\"rostack\" unpinned=1 ticks=9\n",
                "",
            )
            .replace("[conf] CON2 line 07 ", "[conf] CON2 line 7 ")
            + "[conf] CON1A-LEAK\n";
        let h = host_checks(&canned(&bad, Exit::Failure));
        for k in [
            "CON-1d", "SCHED-3", "SCHED-3b", "CON-1a", "TIME-0", "MEM-2a", "SCHED-4", "CON-2",
        ] {
            assert!(!h[k].0, "{k} should fail");
        }
        assert!(h["CON-1b"].0);
        // The nesting limit moved to 9 or to 7, a refused write printed, a
        // line cut in the wrong place.
        let nine = good.replace(
            "[nest] nest depth=8\n",
            "[nest] nest depth=8\n[nest] nest depth=9\n",
        );
        let seven = good.replace("[nest] nest depth=8\n", "");
        for t in [nine, seven] {
            let h = host_checks(&canned(&t, Exit::Success));
            assert!(!h["TRAP-5"].0 && !h["LIM-2"].0);
            assert!(h["LIM-5"].0);
        }
        let leak = good.clone() + "[conf] LIM4-LEAK====\n";
        assert!(!host_checks(&canned(&leak, Exit::Success))["LIM-4"].0);
        let uncut = good.replace("[conf] Z\n", "");
        assert!(!host_checks(&canned(&uncut, Exit::Success))["LIM-5"].0);
    }

    #[test]
    fn zeroed_means_something_only_with_poisoned_memory() {
        let good = "@ testopt poison-free frames=9 pattern=0x1\n";
        assert!(poisoned(&canned(good, Exit::Success)).fails.is_empty());
        for bad in [
            "",
            "@ testopt leak-frame mfn=0x1\n",
            "@ testopt poison-free frames=0 pattern=0x1\n",
            "@ testopt poison-free frames=9 pattern=0x1\n@ inconsistency mfn=0x5 what=\"free frame handed out unscrubbed\"\n",
        ] {
            assert!(!poisoned(&canned(bad, Exit::Success)).fails.is_empty(), "{bad}");
        }
    }

    #[test]
    fn a_clause_both_sides_report_passes_only_if_every_side_does() {
        let rec = |id: &str, pass: bool| Record::new(id, "vNIC table (side)", pass, "why");
        let all = [
            ("s", vec![rec("MEM-3c", true), rec("NET-1", true)]),
            ("a", vec![rec("MEM-3c", true)]),
        ];
        let both: &[(&str, &[&str])] = &[("MEM-3c", &["s", "a"])];
        let out = combine_sides(&all, both);
        assert_eq!(out.len(), 2);
        assert!(out[0].passed() && out[0].clause == "MEM-3c", "{out:?}");
        assert_eq!(out[0].name, "vNIC table");
        assert_eq!(out[1].clause, "NET-1");
        let one_fails = [
            ("s", vec![rec("MEM-3c", true)]),
            ("a", vec![rec("MEM-3c", false)]),
        ];
        let out = combine_sides(&one_fails, both);
        assert!(!out[0].passed());
        assert!(out[0].detail.contains("`a`: why"), "{}", out[0].detail);
        let missing = [("s", vec![rec("MEM-3c", true)]), ("a", vec![])];
        let out = combine_sides(&missing, both);
        assert!(!out[0].passed());
        assert!(out[0].detail.contains("`a` did not report it"));
        let twice = [("s", vec![rec("MEM-3c", true), rec("MEM-3c", true)])];
        assert!(!combine_sides(&twice, &[("MEM-3c", &["s"])])[0].passed());
        // Only the listed guests must report it.
        let one: &[(&str, &[&str])] = &[("NET-1", &["s"])];
        assert!(combine_sides(&all, one)[0].passed());
    }

    #[test]
    fn io_4_needs_the_reset_before_the_release() {
        let good = "[drv] @ iotest role=driver dying=1\n\
                    @ device-reset dom=1 index=0 mmio=0xfeb00e00 status=0 irq=12 masked=1\n\
                    @ domain-fault id=1 name=\"drv\" kind=exception vector=6 exception=invalid-opcode error=0x0 rip=0x1 cr2=0x0 reason=\"no trap handler registered\"\n\
                    @ domain-released id=1 name=\"drv\" unpinned=1 ticks=1 busy_ticks=1\n\
                    [plain] @ iotest role=plain driver_gone=1\n\
                    @ audit free_frames=1 baseline=1 frames=2 errors=0 status=ok ticks=1\n";
        let h = io_reset(&canned(good, Exit::Success));
        assert!(h.fails.is_empty(), "{:?}", h.fails);
        let late = good
            .replace(
                "@ device-reset dom=1 index=0 mmio=0xfeb00e00 status=0 irq=12 masked=1\n",
                "",
            )
            .replace(
                "[plain]",
                "@ device-reset dom=1 index=0 mmio=0xfeb00e00 status=0 irq=12 masked=1\n[plain]",
            );
        for bad in [
            good.replace("status=0 irq", "status=15 irq"),
            good.replace("masked=1", "masked=0"),
            good.replace("@ device-reset dom=1", "@ device-reset dom=2"),
            good.replace("driver_gone=1", "driver_gone=0"),
            good.replace("status=ok", "status=failed"),
            good.replace("@ domain-fault id=1", "@ domain-exit id=1"),
            late,
        ] {
            assert!(
                !io_reset(&canned(&bad, Exit::Success)).fails.is_empty(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_canary_must_answer_intact() {
        let good = "[victim] @ mmutest role=victim secret=intact bad_words=0\n\
                    [mmu] @ mmutest role=conformance canary=acked\n";
        assert!(canary(&canned(good, Exit::Success)).fails.is_empty());
        for bad in [
            good.replace("secret=intact bad_words=0", "secret=corrupted bad_words=3"),
            good.replace("canary=acked", "canary=no-ack"),
            good.replace(
                "[victim] @ mmutest role=victim secret=intact bad_words=0\n",
                "",
            ),
            good.replace("[victim]", "[mmu]"),
        ] {
            assert!(
                !canary(&canned(&bad, Exit::Success)).fails.is_empty(),
                "{bad}"
            );
        }
    }

    #[test]
    fn cpu_checks_need_the_kill_reports() {
        let intel = "@ domain-fault id=4 name=\"upcallfail\" kind=event-upcall rip=0x1 reason=\"callback stack not writable\"\n\
                     @ domain-fault id=3 name=\"sysenter\" kind=sysenter rip=0x0 reason=\"sysenter is not a hypercall entry\"\n\
                     [sysrettop] sysrettop: the top page is mapped\n\
                     @ domain-fault id=5 name=\"sysrettop\" kind=exception vector=13 exception=general-protection error=0x0 rip=0x800000000000 cr2=0x0 reason=\"no trap handler registered\"\n\
                     @ domain-exit id=2 name=\"peer\" reason=poweroff code=0 hypercalls=3\n@ exit status=success\n";
        let h = cpu_host_checks(&canned(intel, Exit::Success), crate::qemu::TCG_CPU_MAX);
        for (k, (pass, d)) in &h {
            assert!(pass, "{k}: {d}");
        }
        // The same kill on an AMD-vendor model is wrong: sysenter is #UD there.
        assert!(!cpu_host_checks(&canned(intel, Exit::Success), crate::qemu::TCG_CPU)["CPU-4"].0);
        let amd = intel.replace(
            "@ domain-fault id=3 name=\"sysenter\" kind=sysenter rip=0x0 reason=\"sysenter is not a hypercall entry\"\n",
            "[sysenter] sysenter raised #UD (vector 6)\n@ domain-exit id=3 name=\"sysenter\" reason=poweroff code=0\n",
        );
        let h = cpu_host_checks(&canned(&amd, Exit::Success), crate::qemu::TCG_CPU);
        assert!(h["CPU-4"].0, "{:?}", h["CPU-4"]);
        // Finding 8: an upcall failure reported as a divide error fails.
        let old = intel.replace("kind=event-upcall", "vector=0 exception=divide-error");
        assert!(
            !cpu_host_checks(&canned(&old, Exit::Success), crate::qemu::TCG_CPU_MAX)["TRAP-7"].0
        );
        // A canary that did not finish fails both.
        let dead = intel.replace(
            "name=\"peer\" reason=poweroff code=0",
            "name=\"peer\" reason=crash code=1",
        );
        let h = cpu_host_checks(&canned(&dead, Exit::Success), crate::qemu::TCG_CPU_MAX);
        assert!(!h["CPU-4"].0 && !h["TRAP-7"].0 && !h["CALL-1c"].0);
        // CALL-1c: the call from the last two bytes ran (even with the
        // #GP after it), or the domain exited, or the fault is not that #GP.
        let ran = intel.replace(
            "[sysrettop] sysrettop: the top page is mapped\n",
            "[sysrettop] sysrettop: the top page is mapped\n\
             [sysrettop] sysrettop: the call from the last two bytes ran\n",
        );
        assert!(
            !cpu_host_checks(&canned(&ran, Exit::Success), crate::qemu::TCG_CPU_MAX)["CALL-1c"].0
        );
        let exited = intel.replace(
            "@ domain-fault id=5 name=\"sysrettop\" kind=exception vector=13 exception=general-protection error=0x0 rip=0x800000000000 cr2=0x0 reason=\"no trap handler registered\"\n",
            "@ domain-exit id=5 name=\"sysrettop\" reason=poweroff code=0 hypercalls=9\n",
        );
        assert!(
            !cpu_host_checks(&canned(&exited, Exit::Success), crate::qemu::TCG_CPU_MAX)["CALL-1c"]
                .0
        );
        let elsewhere = intel.replace("rip=0x800000000000", "rip=0x7ffffffffffc");
        assert!(
            !cpu_host_checks(&canned(&elsewhere, Exit::Success), crate::qemu::TCG_CPU_MAX)
                ["CALL-1c"]
                .0
        );
    }

    #[test]
    fn compat_syscall_must_kill_as_such() {
        let good = "@ testonly compat32=1\n\
                    @ domain-fault id=2 name=\"compat\" kind=compat-syscall rip=0x1 reason=\"x\"\n\
                    [watch] @ cpu-watch ok=1 rounds=100 bad=0 bad_sel=0 secret=1\n\
                    @ domain-exit id=1 name=\"watch\" reason=poweroff code=0\n@ exit status=success\n";
        assert!(judge_compat(&canned(good, Exit::Success)).0);
        for (from, to) in [
            ("@ testonly compat32=1\n", ""),
            (
                "kind=compat-syscall",
                "kind=exception vector=13 exception=general-protection",
            ),
            ("ok=1", "ok=0"),
        ] {
            let bad = good.replace(from, to);
            assert!(!judge_compat(&canned(&bad, Exit::Success)).0, "{from}");
        }
        assert!(!judge_compat(&canned(good, Exit::Failure)).0);
    }

    #[test]
    fn a_clause_must_pass_under_every_model() {
        let both = combine_models(vec![
            ("a", vec![rec("CPU-1", true), rec("CPU-2", true)]),
            ("b", vec![rec("CPU-1", true), rec("CPU-2", false)]),
        ]);
        assert!(both[0].passed());
        assert!(!both[1].passed());
        let missing = combine_models(vec![("a", vec![rec("CPU-1", true)]), ("b", vec![])]);
        assert!(!missing[0].passed());
    }

    #[test]
    fn mem2b_needs_every_refusal() {
        let mut t = String::new();
        for (d, _) in MEM2B_CASES {
            t += &format!("@ domain-error id=1 name=\"{d}\" error=\"image refused\"\n");
        }
        t += "@ domain-start id=4 name=\"good\" pages=256 critical=1\n@ domains started=2 free_frames=1\n\
              @ domain-exit id=4 name=\"good\" reason=poweroff code=0\n";
        assert!(judge_mem2b(&canned(&t, Exit::Failure)).0);
        let started = t.replace(
            "domain-error id=1 name=\"bad-entry\"",
            "domain-start id=1 name=\"bad-entry\"",
        );
        assert!(!judge_mem2b(&canned(&started, Exit::Failure)).0);
    }

    #[test]
    fn mem2c_needs_both_refusals_and_the_minimum_running() {
        let mut t = String::new();
        for (d, pages) in MEM2C_CASES {
            t += &format!(
                "@ domain-error id=1 name=\"{d}\" error=\"{pages} pages is outside 16..=261120\"\n"
            );
        }
        t += &format!(
            "@ domain-start id=9 name=\"{MEM2C_MIN}\" pages={WINDOW_MIN_PAGES} critical=0\n\
             @ domain-exit id=9 name=\"{MEM2C_MIN}\" reason=scenario-end code=0 hypercalls=1\n"
        );
        assert!(judge_mem2c(&canned(&t, Exit::Failure)).0);
        let never_ran = t.replace("hypercalls=1", "hypercalls=0");
        assert!(!judge_mem2c(&canned(&never_ran, Exit::Failure)).0);
        let refused = t.replace("domain-start id=9", "domain-error id=9");
        assert!(!judge_mem2c(&canned(&refused, Exit::Failure)).0);
        let small_started = t.replacen("domain-error id=1", "domain-start id=1", 1);
        assert!(!judge_mem2c(&canned(&small_started, Exit::Failure)).0);
    }

    #[test]
    fn evt7b_needs_the_refusal_and_nothing_wired() {
        let good = "@ channel-error name=\"orphan\" error=\"domain 1 was not built\"\n\
                    @ domain-exit id=4 name=\"good\" reason=poweroff code=0\n";
        assert!(judge_evt7b(&canned(good, Exit::Failure)).0);
        let wired =
            format!("{good}@ channel name=\"orphan\" dom=4 port=1 peer=1 peer_name=\"x\"\n");
        assert!(!judge_evt7b(&canned(&wired, Exit::Failure)).0);
        assert!(!judge_evt7b(&canned(&good.replace("channel-error", "x"), Exit::Failure)).0);
    }

    #[test]
    fn blk_checks_need_the_driver_and_the_peer() {
        let good = "[drv] @ blk-device index=0 capacity=16384 slots=16 readonly=false flush=yes irq_port=1\n\
                    [drv] @ blk-refused frontend=vconf disk=1 error=permission_denied\n\
                    [drv] @ blk-connected frontend=vconf disk=1 sectors=1024 readonly=true\n\
                    [peer] @ vblk load ops=300 errors=0 disconnected=0\n\
                    [drv] @ blk-disconnected frontend=vconf disk=2 why=\"ring indices insane (RING-5)\"\n\
                    [drv] @ blk-disconnected frontend=vconf disk=1 why=\"frontend gone (port unbound)\"\n\
                    @ audit free_frames=1 baseline=1 frames=2 errors=0 status=ok ticks=1\n";
        let all_pass = |t: &str| {
            blk_host_checks(&canned(t, Exit::Success))
                .into_iter()
                .filter(|(_, (p, _))| !p)
                .map(|(c, _)| c)
                .collect::<Vec<_>>()
        };
        assert!(all_pass(good).is_empty(), "{:?}", all_pass(good));
        assert_eq!(all_pass(&good.replace("flush=yes", "flush=no")), ["BLK-6"]);
        assert_eq!(
            all_pass(&good.replace("error=permission_denied", "error=not_found")),
            ["BLK-2a"]
        );
        assert_eq!(
            all_pass(&good.replace("disk=2 why", "disk=0 why")),
            ["RING-5"]
        );
        assert_eq!(
            all_pass(&good.replace("disk=1 why", "disk=3 why")),
            ["BLK-7"]
        );
        assert_eq!(
            all_pass(&good.replace("errors=0 disc", "errors=3 disc")),
            ["BLK-7"]
        );
        assert_eq!(
            all_pass(&good.replace("status=ok", "status=failed")),
            ["BLK-7"]
        );
        // Another frontend's disconnect is one too many.
        let two =
            format!("{good}[drv] @ blk-disconnected frontend=peer disk=0 why=\"ring broken\"\n");
        assert_eq!(all_pass(&two), ["RING-5"]);
    }

    #[test]
    fn elf_patches_change_the_named_field() {
        let mut elf = vec![0u8; 256];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(&patch(&elf, "type")[16..18], &[3, 0]);
        assert_eq!(&patch(&elf, "entry")[24..32], &0x10u64.to_le_bytes());
        assert_eq!(
            &patch(&elf, "segment")[64 + 16..64 + 24],
            &0x1000u64.to_le_bytes()
        );
    }
}
