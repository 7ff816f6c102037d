//! The trap and upcall family (`TRAP-*`).

use crate::call::{plain, Args, Words};
use crate::layout::GUEST_VA_TOP;
use crate::Error;

/// `set_callbacks` (`TRAP-1`): the event upcall entry, the trap entry and
/// the stack both run on. All zero unregisters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetCallbacks {
    /// Entry for event upcalls (0: none).
    pub event: u64,
    /// Entry for reflected traps (0: none).
    pub trap: u64,
    /// Top of the callback stack, 16-byte aligned.
    pub stack: u64,
}

impl Args for SetCallbacks {
    const USED: usize = 3;

    fn encode(&self) -> Words {
        [self.event, self.trap, self.stack, 0, 0, 0]
    }

    /// `TRAP-1`: an address in the hypervisor's half is `BadAddress`; a
    /// misaligned stack, or entries without a stack, `InvalidArgument`.
    fn decode(w: Words) -> Result<Self, Error> {
        let [event, trap, stack, ..] = w;
        if event >= GUEST_VA_TOP || trap >= GUEST_VA_TOP || stack >= GUEST_VA_TOP {
            return Err(Error::BadAddress);
        }
        if stack % 16 != 0 || (stack == 0 && (event != 0 || trap != 0)) {
            return Err(Error::InvalidArgument);
        }
        Ok(SetCallbacks { event, trap, stack })
    }
}

plain! {
    /// `upcall_return` (`TRAP-2`): restores the [`crate::layout::UpcallFrame`]
    /// at `frame`.
    UpcallReturn {
        /// Guest address of the saved frame.
        frame,
    }
}
