//! The event-channel family (`EVT-*`).

use crate::call::{plain, Args, Words};
use crate::layout::NR_PORTS;
use crate::Error;

/// Pass as a domain id to mean "the calling domain" (`EVT-1`).
pub const DOMID_SELF: u64 = 0x7FF0;

/// Virtual interrupts a port can be bound to (`EVT-3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Virq {
    /// The one-shot timer armed by `timer_set` fired.
    Timer = 0,
}

impl Virq {
    /// Number of defined virtual interrupts.
    pub const COUNT: usize = 1;

    /// From the argument register.
    pub fn from_arg(v: u64) -> Option<Virq> {
        match v {
            0 => Some(Virq::Timer),
            _ => None,
        }
    }
}

/// A port number as the caller passed it: a port that cannot exist (does
/// not fit 32 bits) is `NotFound`, like any port that is not allocated.
fn port(w: u64) -> Result<u32, Error> {
    u32::try_from(w).map_err(|_| Error::NotFound)
}

plain! {
    /// `event_alloc_unbound` (`EVT-1`): a port that domain `remote` may
    /// bind to. The domain is resolved (and refused) against the caller's
    /// view, so it stays a word here.
    AllocUnbound {
        /// The domain allowed to bind, or [`DOMID_SELF`].
        remote,
    }
}

plain! {
    /// `event_bind_interdomain` (`EVT-2`): binds a fresh local port to
    /// `remote`'s unbound port `remote_port`.
    BindInterdomain {
        /// The peer domain, or [`DOMID_SELF`].
        remote,
        /// The peer's unbound port.
        remote_port,
    }
}

/// `event_bind_virq` (`EVT-3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindVirq {
    /// The virtual interrupt.
    pub virq: Virq,
}

impl Args for BindVirq {
    const USED: usize = 1;

    fn encode(&self) -> Words {
        [self.virq as u64, 0, 0, 0, 0, 0]
    }

    /// `EVT-3`: an undefined virq is `InvalidArgument`.
    fn decode(w: Words) -> Result<Self, Error> {
        let virq = Virq::from_arg(w[0]).ok_or(Error::InvalidArgument)?;
        Ok(BindVirq { virq })
    }
}

/// Defines a call whose only argument is a port of the caller's.
macro_rules! port_call {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            /// One of the caller's ports.
            pub port: u32,
        }

        impl Args for $name {
            const USED: usize = 1;

            fn encode(&self) -> Words {
                [u64::from(self.port), 0, 0, 0, 0, 0]
            }

            /// A port number that cannot exist (0, `NR_PORTS` or above,
            /// which includes every word that does not fit 32 bits) is
            /// `NotFound`, as the port table would say (EVT-4a, EVT-5a).
            /// Written as one range test and a branch (`1..NR_PORTS` as
            /// `w - 1 < NR_PORTS - 1`): with `?` the compiler built the
            /// whole `Result` in a register before testing it, and a test
            /// of 32 bits here left the table's own tests of 0 and
            /// `NR_PORTS` to be made again (three tests and branches on
            /// `event_send`'s fast path; the table's are folded away now).
            #[inline(always)]
            fn decode(w: Words) -> Result<Self, Error> {
                const LIMIT: u64 = NR_PORTS as u64 - 1;
                if w[0].wrapping_sub(1) >= LIMIT {
                    return Err(Error::NotFound);
                }
                match u32::try_from(w[0]) {
                    Ok(port) => Ok($name { port }),
                    Err(_) => Err(Error::NotFound),
                }
            }
        }
    };
}

port_call! {
    /// `event_send` (`EVT-4`): raises the event on the peer of `port`.
    Send
}

port_call! {
    /// `event_close` (`EVT-5`): closes `port`.
    Close
}

/// `event_unmask` (`EVT-6`): clears `port`'s mask bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmask {
    /// A port number, `1..NR_PORTS`.
    pub port: u32,
}

impl Args for Unmask {
    const USED: usize = 1;

    fn encode(&self) -> Words {
        [u64::from(self.port), 0, 0, 0, 0, 0]
    }

    /// `EVT-6`: port 0 or one past the table is `NotFound`.
    fn decode(w: Words) -> Result<Self, Error> {
        let p = port(w[0])?;
        if p == 0 || usize::try_from(p).map_or(true, |p| p >= NR_PORTS) {
            return Err(Error::NotFound);
        }
        Ok(Unmask { port: p })
    }
}
