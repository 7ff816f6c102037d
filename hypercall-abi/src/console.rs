//! The console family (`CON-*`).

use crate::call::plain;

/// Largest number of bytes one `console_write` accepts (`CON-1`).
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// Most bytes one `console_write` consumes (`CON-2`): a longer write is
/// short, returns the count taken, and the caller writes the rest.
pub const CONSOLE_WRITE_STEP: u64 = 256;

plain! {
    /// `console_write` (`CON-1`): `len` bytes at guest address `ptr`.
    Write {
        /// Guest virtual address of the bytes.
        ptr,
        /// How many bytes (at most [`CONSOLE_WRITE_MAX`]).
        len,
    }
}
