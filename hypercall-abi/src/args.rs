//! The argument and result values of individual hypercalls, under the names
//! they had before the family modules ([`crate::console`], [`crate::sched`],
//! [`crate::event`], [`crate::mmu`], [`crate::memory`]) took them in. New
//! code names the family module; these re-exports keep old callers
//! building.

pub use crate::console::{CONSOLE_WRITE_MAX, CONSOLE_WRITE_STEP};
pub use crate::event::{Virq, DOMID_SELF};
pub use crate::memory::MEMORY_BATCH_MAX;
pub use crate::mmu::FrameRecord as FrameInfo;
pub use crate::mmu::{
    FrameType, MmuUpdate, FRAME_HELD, FRAME_LOADED, FRAME_PARTIAL, FRAME_PINNED, MMU_BATCH_MAX,
    UVM_INVLPG,
};
pub use crate::sched::{BlockResult, ShutdownReason, NO_DEADLINE};
