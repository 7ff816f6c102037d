//! The scheduling family (`SCHED-*`).

use crate::call::{plain, Args, Words};
use crate::Error;

/// `block`'s deadline meaning "no deadline" (`SCHED-2`).
pub const NO_DEADLINE: u64 = u64::MAX;

/// What ended a `block` (`SCHED-2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum BlockResult {
    /// An unmasked event is pending.
    Event = 0,
    /// The deadline passed first.
    Deadline = 1,
}

/// Why a domain shuts down (`SCHED-3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ShutdownReason {
    /// Finished; the exit code says how.
    Poweroff = 0,
    /// Asks to be started again (reported; restarting is the scenario's policy).
    Reboot = 1,
    /// The guest detected a fatal error (e.g. its panic handler).
    Crash = 2,
}

impl ShutdownReason {
    /// From the argument register.
    pub fn from_arg(v: u64) -> Option<ShutdownReason> {
        match v {
            0 => Some(ShutdownReason::Poweroff),
            1 => Some(ShutdownReason::Reboot),
            2 => Some(ShutdownReason::Crash),
            _ => None,
        }
    }

    /// Stable name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ShutdownReason::Poweroff => "poweroff",
            ShutdownReason::Reboot => "reboot",
            ShutdownReason::Crash => "crash",
        }
    }
}

plain! {
    /// `yield` (`SCHED-1`): no arguments.
    Yield {}
}

plain! {
    /// `block` (`SCHED-2`): idle until an unmasked event is pending or
    /// `deadline_ns` passes ([`NO_DEADLINE`]: never).
    Block {
        /// Deadline in nanoseconds of system time, or [`NO_DEADLINE`].
        deadline_ns,
    }
}

/// `shutdown` (`SCHED-3`): ends the caller with a reason and a code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shutdown {
    /// Why.
    pub reason: ShutdownReason,
    /// The exit code reported with it.
    pub code: u64,
}

impl Args for Shutdown {
    const USED: usize = 2;

    fn encode(&self) -> Words {
        [self.reason as u64, self.code, 0, 0, 0, 0]
    }

    /// `SCHED-3a`: an undefined reason is `InvalidArgument`.
    fn decode(w: Words) -> Result<Self, Error> {
        Ok(Shutdown {
            reason: ShutdownReason::from_arg(w[0]).ok_or(Error::InvalidArgument)?,
            code: w[1],
        })
    }
}
