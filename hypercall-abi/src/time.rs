//! The time family (`TIME-*`).

use crate::call::plain;

plain! {
    /// `timer_set` (`TIME-1`): arms the one-shot timer at `deadline_ns`
    /// (system time); 0 cancels it.
    TimerSet {
        /// Deadline in nanoseconds of system time; 0 cancels.
        deadline_ns,
    }
}
