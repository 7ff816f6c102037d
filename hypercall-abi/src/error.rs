//! Error codes returned by hypercalls (spec: `docs/abi/README.md`, clause `CALL-3`).

/// Why a hypercall failed. Returned in `rax` as the negated code.
///
/// Codes are stable: a code is never renumbered or reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Error {
    /// The hypercall number is not defined, or is reserved.
    NoSuchCall = 1,
    /// An argument is out of its documented range.
    InvalidArgument = 2,
    /// A pointer or length names memory the caller may not access: not
    /// mapped, in the hypervisor's half, misaligned, or wrapping.
    BadAddress = 3,
    /// The caller lacks the privilege or ownership the call requires.
    PermissionDenied = 4,
    /// A named object (event port, domain, frame) does not exist.
    NotFound = 5,
    /// The object exists but is in the wrong state for this call.
    WrongState = 6,
    /// A table or quota is full.
    NoResources = 7,
    /// A frame's type or reference count forbids the change.
    TypeConflict = 8,
}

impl Error {
    /// Every error code, in numeric order.
    pub const ALL: [Error; 8] = [
        Error::NoSuchCall,
        Error::InvalidArgument,
        Error::BadAddress,
        Error::PermissionDenied,
        Error::NotFound,
        Error::WrongState,
        Error::NoResources,
        Error::TypeConflict,
    ];

    /// The numeric code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The error with this code, if any.
    pub fn from_code(code: u16) -> Option<Error> {
        Error::ALL.iter().copied().find(|e| e.code() == code)
    }

    /// A short, stable name (used in logs and conformance reports).
    pub const fn name(self) -> &'static str {
        match self {
            Error::NoSuchCall => "no_such_call",
            Error::InvalidArgument => "invalid_argument",
            Error::BadAddress => "bad_address",
            Error::PermissionDenied => "permission_denied",
            Error::NotFound => "not_found",
            Error::WrongState => "wrong_state",
            Error::NoResources => "no_resources",
            Error::TypeConflict => "type_conflict",
        }
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (i, e) in Error::ALL.iter().enumerate() {
            assert_eq!(e.code() as usize, i + 1);
            assert_eq!(Error::from_code(e.code()), Some(*e));
        }
        assert_eq!(Error::from_code(0), None);
        assert_eq!(
            Error::from_code(u16::try_from(Error::ALL.len()).unwrap() + 1),
            None
        );
    }
}
