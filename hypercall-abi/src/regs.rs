//! The register convention (spec clause `CALL-1`) and the result encoding
//! (`CALL-2`), both directions.
//!
//! A guest enters the hypervisor with `syscall`:
//!
//! | register | on entry | on return |
//! |---|---|---|
//! | `rax` | hypercall number | result word |
//! | `rdi`, `rsi`, `rdx`, `r10`, `r8`, `r9` | arguments 0–5 | preserved |
//! | `rcx`, `r11` | — | clobbered (by `syscall` itself) |
//! | everything else | — | preserved |
//!
//! The result word is a signed 64-bit value: `>= 0` is the success value,
//! `-code` is the failure [`Error`] with that code. No call returns a success
//! value above `i64::MAX`.

use crate::Error;

/// The six argument registers, in order.
pub const ARG_REGISTERS: [&str; 6] = ["rdi", "rsi", "rdx", "r10", "r8", "r9"];

/// Encodes a hypercall's outcome into the `rax` word.
pub const fn encode(result: Result<u64, Error>) -> u64 {
    match result {
        Ok(v) => {
            // Success values are documented to fit in 63 bits; clamp rather
            // than let a bug turn into an error code.
            if v > i64::MAX as u64 {
                i64::MAX as u64
            } else {
                v
            }
        }
        // Two's complement of the code: `-code` as a 64-bit word.
        Err(e) => 0u64.wrapping_sub(e.code() as u64),
    }
}

/// Decodes the `rax` word returned by a hypercall.
///
/// A negative word that is not a defined code decodes as
/// [`Error::InvalidArgument`]; the hypervisor never returns one.
///
/// Inline (a guest decodes after every call): the success test is one
/// comparison; the error's look-up is out of line.
#[inline]
pub fn decode(rax: u64) -> Result<u64, Error> {
    if (rax as i64) >= 0 {
        Ok(rax)
    } else {
        Err(decode_error(rax))
    }
}

/// The error of a negative `rax` word ([`decode`]).
#[cold]
#[inline(never)]
fn decode_error(rax: u64) -> Error {
    let code = (rax as i64).unsigned_abs();
    u16::try_from(code)
        .ok()
        .and_then(Error::from_code)
        .unwrap_or(Error::InvalidArgument)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for v in [0u64, 1, 4096, i64::MAX as u64] {
            assert_eq!(decode(encode(Ok(v))), Ok(v));
        }
        for e in Error::ALL {
            assert_eq!(decode(encode(Err(e))), Err(e));
            assert!((encode(Err(e)) as i64) < 0);
        }
    }

    #[test]
    fn oversized_success_is_clamped_not_an_error() {
        assert_eq!(decode(encode(Ok(u64::MAX))), Ok(i64::MAX as u64));
    }
}
