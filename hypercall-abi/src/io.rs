//! The I/O delegation family (`IO-*`, `docs/abi/io.md`): what a privileged
//! driver domain may do with the devices the boot pack delegated to it.
//! Its devices, their MMIO mappings, interrupt ports and its DMA region are
//! described in its start info ([`crate::layout::DeviceInfo`]).

use crate::call::{Args, Words};
use crate::layout::MAX_START_DEVICES;
use crate::Error;

/// `io_irq_ack` (`IO-*`): the driver has handled (and acknowledged at the
/// device) an interrupt of its device `device`; the hypervisor unmasks the
/// device's interrupt line again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqAck {
    /// Index of the device in the caller's start-info device table.
    pub device: u32,
}

impl Args for IrqAck {
    const USED: usize = 1;

    fn encode(&self) -> Words {
        [u64::from(self.device), 0, 0, 0, 0, 0]
    }

    /// An index past the start-info table is `NotFound`.
    fn decode(w: Words) -> Result<Self, Error> {
        match u32::try_from(w[0]) {
            Ok(d) if (d as usize) < MAX_START_DEVICES => Ok(IrqAck { device: d }),
            _ => Err(Error::NotFound),
        }
    }
}
