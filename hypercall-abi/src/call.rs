//! The shape every family module follows: a call's typed arguments and the
//! one place their register positions are written.

use crate::{Error, Hypercall};

/// The six argument words of a call, in `CALL-1` order (`rdi`, `rsi`,
/// `rdx`, `r10`, `r8`, `r9`).
pub type Words = [u64; 6];

/// A hypercall's typed arguments.
///
/// `encode` is what a guest places in the argument registers (unused words
/// are 0); `decode` is what the hypervisor reads back. `decode` only refuses
/// what the call's clause refuses before looking at any state, with the
/// documented error; everything that needs the caller's state is checked by
/// the handler.
pub trait Args: Sized {
    /// How many argument words the call uses (`rdi` first, in `CALL-1`
    /// order): `encode` leaves every word from here on 0 and `decode` reads
    /// none of them, so a guest need not set those registers at all
    /// (`CALL-1b`; the SDK sets only these).
    const USED: usize;
    /// The argument registers for these values.
    fn encode(&self) -> Words;
    /// The values from the argument registers, or the documented error for
    /// an out-of-range one.
    fn decode(words: Words) -> Result<Self, Error>;
}

/// Binds an argument type to its hypercall number. Implemented only by the
/// number table (`numbers.rs`), so each number is written once.
pub trait Call: Args {
    /// The call these arguments go with.
    const CALL: Hypercall;
}

/// Defines a call whose arguments are plain words taken as they are:
/// `plain!(Name { a, b })` puts `a` in word 0 and `b` in word 1.
macro_rules! plain {
    ($(#[$doc:meta])* $name:ident { $( $(#[$fdoc:meta])* $field:ident ),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: u64, )*
        }

        impl $crate::call::Args for $name {
            const USED: usize = 0 $( + { let _ = stringify!($field); 1 } )*;

            #[allow(unused_mut, unused_variables, unused_assignments)]
            fn encode(&self) -> $crate::call::Words {
                let mut w = [0u64; 6];
                let mut i = 0;
                $( w[i] = self.$field; i += 1; )*
                w
            }

            #[allow(unused_mut, unused_variables, unused_assignments)]
            fn decode(words: $crate::call::Words) -> Result<Self, $crate::Error> {
                let mut i = 0;
                $( let $field = words[i]; i += 1; )*
                Ok($name { $( $field, )* })
            }
        }
    };
}
pub(crate) use plain;
