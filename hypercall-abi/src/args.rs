//! Argument and result values of individual hypercalls.

/// Pass as a domain id to mean "the calling domain" (`EVT-1`).
pub const DOMID_SELF: u64 = 0x7FF0;

/// Largest number of bytes one `console_write` accepts (`CON-1`).
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// Most bytes one `console_write` consumes (`CON-2`): a longer write is
/// short, returns the count taken, and the caller writes the rest.
pub const CONSOLE_WRITE_STEP: u64 = 256;

/// `block`'s deadline meaning "no deadline" (`SCHED-2`).
pub const NO_DEADLINE: u64 = u64::MAX;

/// What ended a `block` (`SCHED-2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum BlockResult {
    /// An unmasked event is pending.
    Event = 0,
    /// The deadline passed first.
    Deadline = 1,
}

/// Why a domain shuts down (`SCHED-3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ShutdownReason {
    /// Finished; the exit code says how.
    Poweroff = 0,
    /// Asks to be started again (reported; restarting is the scenario's policy).
    Reboot = 1,
    /// The guest detected a fatal error (e.g. its panic handler).
    Crash = 2,
}

impl ShutdownReason {
    /// From the argument register.
    pub fn from_arg(v: u64) -> Option<ShutdownReason> {
        match v {
            0 => Some(ShutdownReason::Poweroff),
            1 => Some(ShutdownReason::Reboot),
            2 => Some(ShutdownReason::Crash),
            _ => None,
        }
    }

    /// Stable name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ShutdownReason::Poweroff => "poweroff",
            ShutdownReason::Reboot => "reboot",
            ShutdownReason::Crash => "crash",
        }
    }
}

/// One entry of an `mmu_update` batch (`MMU-22`): store `val` in the
/// page-table entry at machine address `ptr` (8-byte aligned; the low 3 bits
/// are reserved and must be 0).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::KnownLayout,
    zerocopy::Immutable,
)]
#[repr(C)]
pub struct MmuUpdate {
    /// Machine address of the entry: `frame << 12 | index * 8`.
    pub ptr: u64,
    /// The new entry.
    pub val: u64,
}

const _: () = assert!(core::mem::size_of::<MmuUpdate>() == 16);

/// Most entries one `mmu_update` call takes (`MMU-22`).
pub const MMU_BATCH_MAX: u64 = 512;

/// Most frames one `memory_populate` or `memory_release` call takes (`MEM-5`).
pub const MEMORY_BATCH_MAX: u64 = 512;

/// A frame's record in the frame table, as `mmu_frame_info` reports it
/// (`MMU-29`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    zerocopy::FromBytes,
    zerocopy::IntoBytes,
    zerocopy::KnownLayout,
    zerocopy::Immutable,
)]
#[repr(C)]
pub struct FrameInfo {
    /// [`FrameType`] as a number.
    pub page_type: u32,
    /// [`FRAME_PINNED`], [`FRAME_LOADED`], [`FRAME_HELD`], [`FRAME_PARTIAL`].
    pub flags: u32,
    /// References that depend on the type.
    pub type_count: u64,
    /// All references.
    pub total_count: u64,
}

/// `FrameInfo::flags`: the owner pinned the frame.
pub const FRAME_PINNED: u32 = 1 << 0;
/// `FrameInfo::flags`: the frame is a loaded root.
pub const FRAME_LOADED: u32 = 1 << 1;
/// `FrameInfo::flags`: the hypervisor holds the frame (it reads or writes
/// it on the domain's behalf, e.g. shared info): it cannot be released or
/// become a page table (`MEM-8`).
pub const FRAME_HELD: u32 = 1 << 2;
/// `FrameInfo::flags`: the frame is a table half way through a pin or unpin
/// that was preempted (`MMU-36`); only some of its entries hold references.
pub const FRAME_PARTIAL: u32 = 1 << 3;

/// A frame's type (`MMU-1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum FrameType {
    /// No constraining use.
    None = 0,
    /// Level-1 table.
    L1 = 1,
    /// Level-2 table.
    L2 = 2,
    /// Level-3 table.
    L3 = 3,
    /// Level-4 table.
    L4 = 4,
    /// Mapped writable.
    Writable = 5,
    /// Shared by the hypervisor (e.g. shared info).
    Special = 6,
}

/// `update_va_mapping` flag: invalidate the address's TLB entry afterwards.
pub const UVM_INVLPG: u64 = 1;

/// Virtual interrupts a port can be bound to (`EVT-3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Virq {
    /// The one-shot timer armed by `timer_set` fired.
    Timer = 0,
}

impl Virq {
    /// Number of defined virtual interrupts.
    pub const COUNT: usize = 1;

    /// From the argument register.
    pub fn from_arg(v: u64) -> Option<Virq> {
        match v {
            0 => Some(Virq::Timer),
            _ => None,
        }
    }
}
