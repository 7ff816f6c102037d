//! The base family (`BASE-*`): the ABI version.
#![forbid(unsafe_code)]

use hypercall_abi::base;

use crate::raw;

/// `abi_version` (`BASE-1`): the hypervisor's ABI version,
/// `major << 16 | minor` (0 if it answered something else).
///
/// The SDK already checked at start that it is compatible with the version
/// this guest was built for ([`crate::abi::ABI_VERSION`]).
pub fn abi_version() -> u32 {
    let v = raw::invoke(&base::AbiVersion {}).unwrap_or(0);
    u32::try_from(v).unwrap_or(0)
}
