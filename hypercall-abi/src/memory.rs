//! The memory-reservation family (`MEM-*`).

use crate::call::{plain, Args, Words};
use crate::Error;

/// Most frames one `memory_populate` or `memory_release` call takes (`MEM-5`).
pub const MEMORY_BATCH_MAX: u64 = 512;

/// Defines a call taking a guest array of `count` frame numbers.
macro_rules! batch_call {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            /// Guest address of an array of `count` `u64` machine frame numbers.
            pub list: u64,
            /// Entries in `list`, at most [`MEMORY_BATCH_MAX`].
            pub count: u64,
        }

        impl Args for $name {
            const USED: usize = 2;

            fn encode(&self) -> Words {
                [self.list, self.count, 0, 0, 0, 0]
            }

            /// `MEM-5`/`MEM-6`: more than [`MEMORY_BATCH_MAX`] is `InvalidArgument`.
            fn decode(w: Words) -> Result<Self, Error> {
                if w[1] > MEMORY_BATCH_MAX {
                    return Err(Error::InvalidArgument);
                }
                Ok($name { list: w[0], count: w[1] })
            }
        }
    };
}

batch_call! {
    /// `memory_populate` (`MEM-5`): takes `count` fresh frames and writes
    /// their numbers to `list`.
    Populate
}

batch_call! {
    /// `memory_release` (`MEM-6`): gives back the `count` frames listed.
    Release
}

plain! {
    /// `memory_info` (`MEM-7`): the current and maximum reservation,
    /// written as two `u64` at `out` unless it is 0.
    Info {
        /// Guest address of two `u64`, or 0.
        out,
    }
}
