//! The conformance harness: what every suite that reports ABI clauses
//! shares (`guests/conformance`, `guests/mmutest`).
//!
//! A clause reports exactly one line on the console,
//!
//! ```text
//! @ conformance clause=EVT-4a name="..." outcome=pass|fail detail="..."
//! ```
//!
//! which `cargo xtask conformance` collects (`docs/conformance.md`). A
//! clause either makes any number of checks with a [`Ck`] ([`clause`],
//! [`finish`]) or computes an [`Outcome`] ([`report`]).
//!
//! Why a crate of its own and not a feature of `guest-sdk`: the SDK is what
//! every guest links, and the report format belongs to the test suites
//! only; a small library under `guests/` keeps it beside its two users
//! (xtask does not build it as an image: it has no `[[bin]]`).
#![no_std]
#![forbid(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use core::fmt::Debug;

use guest_sdk::{println, Error};

/// The checks of one clause.
#[derive(Default)]
pub struct Ck {
    /// Checks made.
    pub checks: u32,
    /// Checks that failed.
    pub fails: u32,
    /// The first failure, for the report line.
    pub first: String,
    /// Appended to the detail of a passing clause.
    pub note: String,
}

impl Ck {
    /// An empty set of checks (usable in a `static`).
    pub const fn new() -> Ck {
        Ck {
            checks: 0,
            fails: 0,
            first: String::new(),
            note: String::new(),
        }
    }

    /// Checks that `ok` holds.
    pub fn t(&mut self, ok: bool, what: &str) {
        self.checks += 1;
        if !ok {
            self.fails += 1;
            println!("  check failed: {what}");
            if self.first.is_empty() {
                self.first = String::from(what);
            }
        }
    }

    /// Checks `got == want`.
    pub fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        let ok = got == want;
        self.checks += 1;
        if !ok {
            self.fails += 1;
            println!("  check failed: {what}: got {got:?}, want {want:?}");
            if self.first.is_empty() {
                self.first = format!("{what}: got {got:?}, want {want:?}");
            }
        }
    }

    /// Checks that a call failed with exactly `want`.
    pub fn err(&mut self, what: &str, got: Result<u64, Error>, want: Error) {
        self.eq(what, got.map_err(Error::name), Err(want.name()));
    }

    /// Checks that a call succeeded; returns its value (0 if it failed).
    pub fn ok(&mut self, what: &str, got: Result<u64, Error>) -> u64 {
        self.t(got.is_ok(), &format!("{what}: {got:?}"));
        got.unwrap_or(0)
    }
}

/// The detail of a report line: quotes and backslashes become `'`, control
/// characters spaces, and it is cut to 150 bytes so the whole line stays
/// under the hypervisor's 256-byte line buffer and is never split (CON-1d).
pub fn sanitize(detail: &str) -> String {
    let mut d: String = detail
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if d.len() > 150 {
        let mut cut = 150;
        while !d.is_char_boundary(cut) {
            cut -= 1;
        }
        d.truncate(cut);
    }
    d
}

/// Prints the clause's one line.
pub fn emit(id: &str, name: &str, pass: bool, detail: &str) {
    println!(
        "@ conformance clause={id} name=\"{name}\" outcome={} detail=\"{}\"",
        if pass { "pass" } else { "fail" },
        sanitize(detail)
    );
}

/// Runs the checks `f` for a clause and reports it.
pub fn clause(id: &str, name: &str, f: impl FnOnce(&mut Ck)) {
    finish(id, name, &mut Ck::new(), f);
}

/// Runs `f` on checks already made for the clause, then reports it.
pub fn finish(id: &str, name: &str, ck: &mut Ck, f: impl FnOnce(&mut Ck)) {
    f(ck);
    let detail = if ck.fails == 0 {
        format!("{} checks{}", ck.checks, ck.note)
    } else {
        format!("{}/{} failed; first: {}", ck.fails, ck.checks, ck.first)
    };
    emit(id, name, ck.fails == 0, &detail);
}

/// A clause computed as a whole: `Ok(detail)` passes, `Err(why)` fails.
pub type Outcome = Result<String, String>;

/// Reports an [`Outcome`]; returns whether it passed.
pub fn report(id: &str, name: &str, r: &Outcome) -> bool {
    match r {
        Ok(d) => emit(id, name, true, d),
        Err(d) => emit(id, name, false, d),
    }
    r.is_ok()
}
