//! The base family (`BASE-*`).
#![forbid(unsafe_code)]

use crate::hv::Hv;
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;

/// BASE-1: the ABI version this hypervisor speaks.
pub(crate) fn abi_version(
    _hv: &mut Hv,
    _cur: DomId,
    a: abi::base::AbiVersion,
) -> Result<u64, Error> {
    let abi::base::AbiVersion {} = a;
    Ok(u64::from(abi::ABI_VERSION))
}
