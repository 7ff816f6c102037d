//! The I/O delegation family (`IO-*`, `docs/abi/io.md`).
#![forbid(unsafe_code)]

use crate::hv::Hv;
use hypercall_abi::{self as abi, Error};
use tahoma_core::event::DomId;

/// IO-1: unmasks the interrupt line of the caller's device `device`.
pub(crate) fn irq_ack(_hv: &mut Hv, cur: DomId, a: abi::io::IrqAck) -> Result<u64, Error> {
    crate::io::irq_ack(cur, a.device)
}
