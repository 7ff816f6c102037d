//! Tahoma's scenario tests: boot the system, then assert on what it reported.
//!
//! A scenario test is a plain Rust function. It asks a [`Machine`] to boot a
//! scenario (a manifest under `guests/scenarios/`), gets back a
//! [`BootOutcome`] (how the run ended, the serial transcript and the
//! [facts](facts) parsed from it) and checks the facts. It never settles for
//! "QEMU exited": a test states what the system must have *said*.
//!
//! This crate knows nothing about QEMU. `cargo xtask test` implements
//! [`Machine`] with its QEMU runner; the unit tests below implement it with
//! canned transcripts, which is how each scenario test is shown to be able to
//! fail.

#![forbid(unsafe_code)]

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod blk;
mod density;
pub mod facts;
pub mod fuzz;
mod guests;
pub use net::host_client_once;
mod kv;
mod net;
mod scenarios;

pub use facts::{Fact, Facts};
pub use scenarios::scenario_tests;

/// Value the hypervisor writes to the `isa-debug-exit` port for success.
pub const EXIT_PORT_SUCCESS: u8 = 0x10;
/// Value the hypervisor writes to the `isa-debug-exit` port for failure.
pub const EXIT_PORT_FAILURE: u8 = 0x11;
/// QEMU's exit status after a success write: `(0x10 << 1) | 1`.
pub const STATUS_SUCCESS: i32 = ((EXIT_PORT_SUCCESS as i32) << 1) | 1;
/// QEMU's exit status after a failure write: `(0x11 << 1) | 1`.
pub const STATUS_FAILURE: i32 = ((EXIT_PORT_FAILURE as i32) << 1) | 1;

/// How the boot module handed to the hypervisor differs from the real pack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PackMutation {
    /// The pack exactly as built from the manifest.
    #[default]
    Intact,
    /// The pack with its last `n` bytes cut off.
    Truncate(u64),
    /// No boot module at all (no `-initrd`).
    Omit,
}

/// What to boot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootRequest {
    /// Scenario name: `guests/scenarios/<scenario>.toml`.
    pub scenario: String,
    /// Appended to the scenario's hypervisor command line.
    pub cmdline: String,
    /// What to do to the boot pack before handing it over.
    pub pack: PackMutation,
    /// Overrides the scenario's timeout.
    pub timeout: Option<Duration>,
    /// The QEMU `-cpu` model under TCG instead of the default one
    /// (`qemu64,+smep,+smap`), for behaviour that depends on CPU features.
    pub cpu: Option<String>,
    /// Kill QEMU (SIGKILL, no shutdown) as soon as a console line contains
    /// this text: a power cut at a chosen moment (the run ends
    /// [`Exit::Killed`]).
    pub kill_on: Option<String>,
    /// Kill QEMU (SIGKILL) as soon as this file exists: a power cut at a
    /// moment the test picks from the host (it creates the file), e.g. in
    /// the middle of its own HTTP writes. The file is removed before boot.
    pub kill_file: Option<PathBuf>,
    /// Start from a zeroed disk image: the scenario's `[disk]` image is
    /// deleted before the boot (and created afresh, as on a first run).
    pub fresh_disk: bool,
}

impl BootRequest {
    /// The scenario as its manifest describes it.
    pub fn scenario(name: &str) -> Self {
        BootRequest {
            scenario: name.to_string(),
            ..Default::default()
        }
    }

    /// Adds `extra` to the hypervisor command line.
    pub fn cmdline(mut self, extra: &str) -> Self {
        if !self.cmdline.is_empty() {
            self.cmdline.push(' ');
        }
        self.cmdline.push_str(extra);
        self
    }

    /// Boots under TCG with `-cpu MODEL` instead of the default model.
    pub fn cpu(mut self, model: &str) -> Self {
        self.cpu = Some(model.to_string());
        self
    }

    /// Kills QEMU as soon as a console line contains `text`.
    pub fn kill_on(mut self, text: &str) -> Self {
        self.kill_on = Some(text.to_string());
        self
    }

    /// Kills QEMU as soon as `path` exists (see [`BootRequest::kill_file`]).
    pub fn kill_file(mut self, path: &std::path::Path) -> Self {
        self.kill_file = Some(path.to_path_buf());
        self
    }

    /// Boots on a fresh (zeroed) disk image.
    pub fn fresh_disk(mut self) -> Self {
        self.fresh_disk = true;
        self
    }

    /// Hands over a modified pack (or none).
    pub fn pack(mut self, mutation: PackMutation) -> Self {
        self.pack = mutation;
        self
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    /// The hypervisor wrote [`EXIT_PORT_SUCCESS`] (QEMU status 33).
    Success,
    /// The hypervisor wrote [`EXIT_PORT_FAILURE`] (QEMU status 35).
    Failure,
    /// QEMU exited with any other status: a triple fault with `-no-reboot`
    /// (status 0), an unknown exit-port value, a QEMU error.
    Unexpected(i32),
    /// QEMU did not exit in time and was killed.
    TimedOut(Duration),
    /// QEMU died without an exit status (killed by a signal).
    Killed,
}

impl Exit {
    /// Classifies QEMU's exit status.
    pub fn from_status(status: i32) -> Exit {
        match status {
            STATUS_SUCCESS => Exit::Success,
            STATUS_FAILURE => Exit::Failure,
            other => Exit::Unexpected(other),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Success => write!(f, "success (status {STATUS_SUCCESS})"),
            Exit::Failure => write!(f, "failure (status {STATUS_FAILURE})"),
            Exit::Unexpected(0) => write!(
                f,
                "unexpected status 0 (a triple fault ends QEMU this way under -no-reboot)"
            ),
            Exit::Unexpected(s) => write!(
                f,
                "unexpected status {s} (neither {STATUS_SUCCESS} = success nor {STATUS_FAILURE} = failure)"
            ),
            Exit::TimedOut(d) => write!(f, "timed out after {} s", d.as_secs()),
            Exit::Killed => write!(f, "killed by a signal"),
        }
    }
}

/// What a boot produced.
#[derive(Clone, Debug)]
pub struct BootOutcome {
    /// How the run ended.
    pub exit: Exit,
    /// QEMU's raw exit status, if it exited by itself.
    pub raw_status: Option<i32>,
    /// Everything the serial console printed.
    pub transcript: String,
    /// The facts in `transcript`.
    pub facts: Facts,
    /// Size in bytes of the boot module handed to QEMU (`None`: no module).
    pub pack_size: Option<u64>,
    /// Where the transcript is kept, for humans.
    pub log: Option<PathBuf>,
}

impl BootOutcome {
    /// Builds an outcome from a transcript, parsing its facts.
    pub fn new(exit: Exit, raw_status: Option<i32>, transcript: String) -> Self {
        BootOutcome {
            exit,
            raw_status,
            facts: Facts::parse(&transcript),
            transcript,
            pack_size: None,
            log: None,
        }
    }
}

/// Something that can boot a scenario: QEMU in `cargo xtask test`, canned
/// transcripts in unit tests.
pub trait Machine {
    /// Boots `req` and waits until it ends. `Err` means the boot could not be
    /// attempted (missing image, bad manifest, QEMU not startable), with what
    /// to do about it.
    fn boot(&self, req: &BootRequest) -> Result<BootOutcome, String>;
}

/// One scenario test.
#[derive(Clone, Copy)]
pub struct ScenarioTest {
    /// Unique name, used by `cargo xtask test --filter`.
    pub name: &'static str,
    /// Boots what it needs on `machine` and checks what was reported;
    /// `Err` says what was wrong.
    pub run: fn(&dyn Machine) -> Result<(), String>,
}

impl fmt::Debug for ScenarioTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScenarioTest")
            .field("name", &self.name)
            .finish()
    }
}

/// Holds the host's loopback `port` for the caller, across processes, until
/// the returned file is dropped. The network scenarios forward fixed ports;
/// two `cargo xtask test` runs on one machine (two checkouts, or a bench
/// beside a suite) would otherwise collide on them and fail each other.
pub fn hold_port(port: u16) -> Result<std::fs::File, String> {
    let path = std::env::temp_dir().join(format!("tahoma-port-{port}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open the port lock {}: {e}", path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot take the port lock {}: {e}", path.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        assert_eq!(STATUS_SUCCESS, 33);
        assert_eq!(STATUS_FAILURE, 35);
        assert_eq!(Exit::from_status(33), Exit::Success);
        assert_eq!(Exit::from_status(35), Exit::Failure);
        assert_eq!(Exit::from_status(0), Exit::Unexpected(0));
        assert!(Exit::Unexpected(0).to_string().contains("triple fault"));
        assert_eq!(
            Exit::TimedOut(Duration::from_secs(60)).to_string(),
            "timed out after 60 s"
        );
    }

    #[test]
    fn request_builder() {
        let r = BootRequest::scenario("boot")
            .cmdline("a=1")
            .cmdline("b=2")
            .pack(PackMutation::Truncate(1));
        assert_eq!(r.scenario, "boot");
        assert_eq!(r.cmdline, "a=1 b=2");
        assert_eq!(r.pack, PackMutation::Truncate(1));
    }
}
