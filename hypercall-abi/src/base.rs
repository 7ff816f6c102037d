//! The base family (`docs/abi/base.md`, `BASE-*`).

use crate::call::plain;

plain! {
    /// `abi_version` (`BASE-1`): no arguments; returns [`crate::ABI_VERSION`].
    AbiVersion {}
}
