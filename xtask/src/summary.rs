//! What a run did, in words: one row per domain (how it ended, where it
//! faulted, how much it printed), built from the hypervisor's report lines,
//! plus the per-guest console logs.
//!
//! Pure over the transcript: the symbolizer is passed in, so the table is
//! unit-tested on canned transcripts.

use std::fmt::Write as _;

use tahoma_tests::facts::{guest_line, Fact, Facts};

/// How one domain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// `shutdown(poweroff, 0)`.
    PowerOff,
    /// Any other shutdown: reason and code.
    Shutdown { reason: String, code: i64 },
    /// Destroyed by the hypervisor for a fault it could not reflect.
    Fault {
        exception: String,
        vector: u64,
        rip: u64,
        cr2: Option<u64>,
        why: String,
        /// `function (file:line)` when the image had debug info for `rip`.
        location: Option<String>,
    },
    /// Ended by the hypervisor when the scenario's critical domains were
    /// done.
    ScenarioEnd,
    /// Never started: the hypervisor refused to build it.
    NotStarted { error: String },
    /// Still running when QEMU stopped (timeout, Ctrl-C, a hypervisor
    /// failure).
    Killed,
}

/// One domain's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Its name.
    pub name: String,
    /// Its id, if the hypervisor gave it one.
    pub id: Option<u64>,
    /// How it ended.
    pub ending: Ending,
    /// Console lines it printed (report lines included).
    pub console_lines: usize,
    /// Its last console line that is not a report line, if any.
    pub last_line: Option<String>,
}

impl Row {
    /// The short "ended" column.
    pub fn ended(&self) -> String {
        match &self.ending {
            Ending::PowerOff => "power-off".into(),
            Ending::Shutdown { reason, code } => format!("{reason} ({code})"),
            Ending::Fault {
                exception, vector, ..
            } if *vector > 0 || exception.ends_with("-error") => {
                format!("fault: {exception} (#{vector})")
            }
            Ending::Fault { exception, .. } => format!("killed: {exception}"),
            Ending::ScenarioEnd => "ended with the scenario".into(),
            Ending::NotStarted { .. } => "not started".into(),
            Ending::Killed => "killed".into(),
        }
    }

    /// The one-line verdict, in words.
    pub fn verdict(&self) -> String {
        match &self.ending {
            Ending::PowerOff => "finished normally".into(),
            Ending::Shutdown { reason, code } if reason == "crash" => match &self.last_line {
                Some(l) => format!("crashed (code {code}): {l}"),
                None => format!("crashed (code {code}) without a message"),
            },
            Ending::Shutdown { reason, code } => {
                format!("shut down with reason {reason}, code {code}")
            }
            Ending::Fault {
                rip,
                cr2,
                why,
                location,
                ..
            } => {
                let at = location
                    .clone()
                    .unwrap_or_else(|| format!("rip {rip:#x} (no symbol)"));
                let addr = cr2.map(|c| format!(", address {c:#x}")).unwrap_or_default();
                format!("destroyed: {why}, at {at}{addr}")
            }
            Ending::ScenarioEnd => "still running when the scenario ended".into(),
            Ending::NotStarted { error } => format!("refused at build: {error}"),
            Ending::Killed => "never ended: QEMU stopped with it still running".into(),
        }
    }
}

/// Maps `(domain name, address)` to `function (file:line)`.
pub type Symbolize<'a> = dyn Fn(&str, u64) -> Option<String> + 'a;

/// One row per domain the hypervisor named, in id order, then any manifest
/// guest it never named (listed in `expected`) as not started.
pub fn summarize(transcript: &str, expected: &[String], symbolize: &Symbolize<'_>) -> Vec<Row> {
    let facts = Facts::parse(transcript);
    let mut rows: Vec<Row> = Vec::new();
    let row_of = |rows: &mut Vec<Row>, f: &Fact| -> Option<usize> {
        let name = f.get("name")?.to_string();
        let id = f.number("id").ok();
        if let Some(i) = rows.iter().position(|r| r.name == name) {
            if rows[i].id.is_none() {
                rows[i].id = id;
            }
            return Some(i);
        }
        rows.push(Row {
            name,
            id,
            ending: Ending::Killed,
            console_lines: 0,
            last_line: None,
        });
        Some(rows.len() - 1)
    };
    for f in &facts.facts {
        match f.kind.as_str() {
            "domain-start" => {
                row_of(&mut rows, f);
            }
            "domain-error" => {
                if let Some(i) = row_of(&mut rows, f) {
                    rows[i].ending = Ending::NotStarted {
                        error: f.get("error").unwrap_or("unknown").to_string(),
                    };
                }
            }
            "domain-exit" => {
                if let Some(i) = row_of(&mut rows, f) {
                    let reason = f.get("reason").unwrap_or("unknown").to_string();
                    let code = f
                        .get("code")
                        .and_then(|c| c.parse::<i64>().ok())
                        .unwrap_or(0);
                    rows[i].ending = match (reason.as_str(), code) {
                        ("poweroff", 0) => Ending::PowerOff,
                        ("scenario-end", _) => Ending::ScenarioEnd,
                        _ => Ending::Shutdown { reason, code },
                    };
                }
            }
            "domain-fault" => {
                if let Some(i) = row_of(&mut rows, f) {
                    let rip = f.number("rip").unwrap_or(0);
                    let vector = f.number("vector").unwrap_or(0);
                    let cr2 = f.number("cr2").ok().filter(|&c| c != 0 || vector == 14);
                    let location = symbolize(&rows[i].name, rip);
                    rows[i].ending = Ending::Fault {
                        // `kind=exception` faults name their exception;
                        // the others (event-upcall, sysenter, ...) their kind.
                        exception: f
                            .get("exception")
                            .or(f.get("kind"))
                            .unwrap_or("fault")
                            .to_string(),
                        vector,
                        rip,
                        cr2,
                        why: f.get("reason").unwrap_or("unreflectable fault").to_string(),
                        location,
                    };
                }
            }
            _ => {}
        }
    }
    for name in expected {
        if !rows.iter().any(|r| &r.name == name) {
            rows.push(Row {
                name: name.clone(),
                id: None,
                ending: Ending::NotStarted {
                    error: "the hypervisor never reached it".into(),
                },
                console_lines: 0,
                last_line: None,
            });
        }
    }
    for line in transcript.lines() {
        let Some((name, rest)) = guest_line(line) else {
            continue;
        };
        if let Some(r) = rows.iter_mut().find(|r| r.name == name) {
            r.console_lines += 1;
            if !rest.starts_with("@ ") && !rest.trim().is_empty() {
                r.last_line = Some(rest.trim().to_string());
            }
        }
    }
    rows.sort_by_key(|r| r.id.unwrap_or(u64::MAX));
    rows
}

/// Each guest's console lines (without the `[name] ` prefix), by name.
pub fn console_logs(transcript: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in transcript.lines() {
        let Some((name, rest)) = guest_line(line) else {
            continue;
        };
        let i = match out.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                out.push((name.to_string(), String::new()));
                out.len() - 1
            }
        };
        out[i].1.push_str(rest);
        out[i].1.push('\n');
    }
    out
}

/// The table, with a header; long verdicts are cut to keep one line a row.
pub fn render(rows: &[Row]) -> String {
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(6);
    let ended_w = rows
        .iter()
        .map(|r| r.ended().len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<name_w$}  {:>4}  {:<ended_w$}  {:>7}  verdict",
        "domain", "id", "ended", "console"
    );
    for r in rows {
        let id = r.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
        let mut verdict = r.verdict();
        if verdict.chars().count() > 160 {
            verdict = verdict.chars().take(157).collect::<String>() + "...";
        }
        let _ = writeln!(
            s,
            "{:<name_w$}  {:>4}  {:<ended_w$}  {:>7}  {}",
            r.name,
            id,
            r.ended(),
            r.console_lines,
            verdict
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "\
@ boot ok
@ domain-start id=1 name=\"worker\" pages=256 critical=1
@ domain-start id=2 name=\"bad-hlt\" pages=256 critical=0
@ domain-start id=3 name=\"crashy\" pages=256 critical=0
@ domain-error id=4 name=\"huge\" error=\"not enough free frames\"
[worker] hello
[worker] @ worker done=20
[crashy] panicked at src/main.rs:9: boom
@ domain-exit id=3 name=\"crashy\" reason=crash code=1 hypercalls=4
@ domain-fault id=2 name=\"bad-hlt\" vector=13 exception=general-protection error=0x0 rip=0x400123 cr2=0x0 reason=\"no trap handler registered\"
@ domain-exit id=1 name=\"worker\" reason=poweroff code=0 hypercalls=99
@ exit status=success
";

    fn sym(name: &str, rip: u64) -> Option<String> {
        (name == "bad-hlt" && rip == 0x400123).then(|| "misbehave::main (src/main.rs:42)".into())
    }

    #[test]
    fn every_domain_has_a_row_in_id_order() {
        let rows = summarize(RUN, &["worker".into(), "late".into()], &sym);
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["worker", "bad-hlt", "crashy", "huge", "late"]);
        assert_eq!(rows[0].ending, Ending::PowerOff);
        assert_eq!(rows[0].console_lines, 2);
        assert_eq!(rows[0].verdict(), "finished normally");
    }

    #[test]
    fn faults_are_symbolized_and_explained() {
        let rows = summarize(RUN, &[], &sym);
        let bad = &rows[1];
        assert_eq!(bad.ended(), "fault: general-protection (#13)");
        assert_eq!(
            bad.verdict(),
            "destroyed: no trap handler registered, at misbehave::main (src/main.rs:42)"
        );
    }

    #[test]
    fn crashes_carry_their_last_line_and_refusals_their_error() {
        let rows = summarize(RUN, &[], &sym);
        assert_eq!(
            rows[2].verdict(),
            "crashed (code 1): panicked at src/main.rs:9: boom"
        );
        assert_eq!(
            rows[3].verdict(),
            "refused at build: not enough free frames"
        );
        assert_eq!(rows[3].id, Some(4));
    }

    #[test]
    fn kills_that_are_not_exceptions_say_their_kind() {
        let t = "@ domain-start id=1 name=\"u\" pages=256 critical=0\n\
                 @ domain-fault id=1 name=\"u\" kind=event-upcall rip=0x401000 reason=\"callback stack not writable\"\n";
        let rows = summarize(t, &[], &|_, _| None);
        assert_eq!(rows[0].ended(), "killed: event-upcall");
        assert!(rows[0].verdict().contains("callback stack not writable"));
    }

    #[test]
    fn a_domain_without_an_end_was_killed() {
        let t = "@ domain-start id=1 name=\"spin\" pages=256 critical=0\n[spin] looping\n";
        let rows = summarize(t, &[], &sym);
        assert_eq!(rows[0].ending, Ending::Killed);
        assert_eq!(rows[0].last_line.as_deref(), Some("looping"));
    }

    #[test]
    fn console_logs_split_by_guest() {
        let logs = console_logs(RUN);
        assert_eq!(
            logs[0],
            ("worker".into(), "hello\n@ worker done=20\n".into())
        );
        assert_eq!(logs[1].0, "crashy");
    }

    #[test]
    fn render_has_a_header_and_a_row_each() {
        let out = render(&summarize(RUN, &[], &sym));
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[0].starts_with("domain"));
        assert!(lines[2].contains("bad-hlt") && lines[2].contains("src/main.rs:42"));
    }
}
