//! Hypercall numbers (spec: `docs/abi/`, one section per number).
//!
//! Numbers are grouped by family in ranges of 16. A number, once assigned, is
//! never reused; a retired call stays in the table as reserved. The table below
//! is the only place a number is written: the enum, its decoding, its name and
//! the list used by the spec-coverage test are all generated from it.

macro_rules! hypercalls {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $spec:literal, $clause:literal, $args:ty; )*) => {
        /// A hypercall number, as passed in `rax`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u64)]
        pub enum Hypercall {
            $( $(#[$doc])* $name = $num, )*
        }

        impl Hypercall {
            /// Every defined hypercall, in numeric order.
            pub const ALL: &'static [Hypercall] = &[$(Hypercall::$name,)*];

            /// Decodes `rax`; `None` for an undefined or reserved number.
            // Inline: the hypervisor's hypercall entry folds it into its
            // own table lookup (a call here cost it ~8 instructions).
            #[inline]
            pub const fn from_number(n: u64) -> Option<Hypercall> {
                match n {
                    $( $num => Some(Hypercall::$name), )*
                    _ => None,
                }
            }

            /// The number placed in `rax`.
            pub const fn number(self) -> u64 {
                self as u64
            }

            /// The name used in the specification's section heading.
            pub const fn spec_name(self) -> &'static str {
                match self { $( Hypercall::$name => $spec, )* }
            }

            /// The specification clause that defines this call.
            pub const fn clause(self) -> &'static str {
                match self { $( Hypercall::$name => $clause, )* }
            }

            /// The path of this call's argument type (see [`crate::call::Args`]).
            pub const fn args_type(self) -> &'static str {
                match self { $( Hypercall::$name => stringify!($args), )* }
            }
        }

        $( impl crate::call::Call for $args {
            const CALL: Hypercall = Hypercall::$name;
        } )*
    };
}

hypercalls! {
    /// Returns [`crate::ABI_VERSION`].
    AbiVersion = 0x00, "abi_version", "BASE-1", crate::base::AbiVersion;
    /// Writes bytes to the domain's console.
    ConsoleWrite = 0x01, "console_write", "CON-1", crate::console::Write;
    /// Gives up the rest of the time slice.
    Yield = 0x10, "yield", "SCHED-1", crate::sched::Yield;
    /// Idles until an unmasked event is pending or a deadline passes.
    Block = 0x11, "block", "SCHED-2", crate::sched::Block;
    /// Ends the domain with a reason.
    Shutdown = 0x12, "shutdown", "SCHED-3", crate::sched::Shutdown;
    /// Arms or cancels the domain's one-shot timer.
    TimerSet = 0x13, "timer_set", "TIME-1", crate::time::TimerSet;
    /// Allocates a port that one named domain may bind to.
    EventAllocUnbound = 0x20, "event_alloc_unbound", "EVT-1", crate::event::AllocUnbound;
    /// Binds a local port to a peer's unbound port.
    EventBindInterdomain = 0x21, "event_bind_interdomain", "EVT-2", crate::event::BindInterdomain;
    /// Binds a local port to a virtual interrupt (e.g. the timer).
    EventBindVirq = 0x22, "event_bind_virq", "EVT-3", crate::event::BindVirq;
    /// Raises the event on the peer of a bound port.
    EventSend = 0x23, "event_send", "EVT-4", crate::event::Send;
    /// Closes a port.
    EventClose = 0x24, "event_close", "EVT-5", crate::event::Close;
    /// Clears a port's mask bit and delivers it if pending.
    EventUnmask = 0x25, "event_unmask", "EVT-6", crate::event::Unmask;
    /// Registers the event upcall entry, the trap entry and their stack.
    SetCallbacks = 0x30, "set_callbacks", "TRAP-1", crate::trap::SetCallbacks;
    /// Returns from an upcall or a reflected trap, restoring the saved frame.
    UpcallReturn = 0x31, "upcall_return", "TRAP-2", crate::trap::UpcallReturn;
    /// Applies a batch of page-table entry updates.
    MmuUpdate = 0x40, "mmu_update", "MMU-22", crate::mmu::Update;
    /// Validates a page table and the tree below it, and pins it.
    MmuPin = 0x41, "mmu_pin", "MMU-23", crate::mmu::Pin;
    /// Unpins a page table.
    MmuUnpin = 0x42, "mmu_unpin", "MMU-24", crate::mmu::Unpin;
    /// Loads a pinned L4 as the domain's address space.
    MmuSwitchRoot = 0x43, "mmu_switch_root", "MMU-25", crate::mmu::SwitchRoot;
    /// Invalidates the TLB entry of one virtual address.
    MmuInvlpg = 0x44, "mmu_invlpg", "MMU-26", crate::mmu::Invlpg;
    /// Flushes the domain's TLB entries.
    MmuFlushTlb = 0x45, "mmu_flush_tlb", "MMU-27", crate::mmu::FlushTlb;
    /// Replaces the leaf entry mapping one virtual address.
    UpdateVaMapping = 0x46, "update_va_mapping", "MMU-28", crate::mmu::UpdateVaMapping;
    /// Reads the frame table's record of one of the caller's frames.
    MmuFrameInfo = 0x47, "mmu_frame_info", "MMU-29", crate::mmu::FrameInfo;
    /// Takes more frames, within the domain's quota.
    MemoryPopulate = 0x50, "memory_populate", "MEM-5", crate::memory::Populate;
    /// Returns frames to the hypervisor.
    MemoryRelease = 0x51, "memory_release", "MEM-6", crate::memory::Release;
    /// The domain's current and maximum reservation.
    MemoryInfo = 0x52, "memory_info", "MEM-7", crate::memory::Info;
    /// Offers one of the caller's frames to one named domain.
    GrantAccess = 0x60, "grant_access", "GNT-1", crate::grant::Access;
    /// Ends one of the caller's grants (refused while mapped).
    GrantRevoke = 0x61, "grant_revoke", "GNT-2", crate::grant::Revoke;
    /// Maps a grant made to the caller at one of its virtual addresses.
    GrantMap = 0x62, "grant_map", "GNT-3", crate::grant::Map;
    /// Removes a grant mapping.
    GrantUnmap = 0x63, "grant_unmap", "GNT-4", crate::grant::Unmap;
    /// Copies bytes between the caller's frames and grants made to it.
    GrantCopy = 0x64, "grant_copy", "GNT-5", crate::grant::Copy;
    /// Unmasks the interrupt line of one of the caller's delegated devices.
    IoIrqAck = 0x70, "io_irq_ack", "IO-1", crate::io::IrqAck;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_decode_to_themselves() {
        for &h in Hypercall::ALL {
            assert_eq!(Hypercall::from_number(h.number()), Some(h));
        }
    }

    #[test]
    fn numbers_are_unique_and_sorted() {
        for w in Hypercall::ALL.windows(2) {
            assert!(w[0].number() < w[1].number(), "{:?} !< {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn undefined_numbers_are_refused() {
        assert_eq!(Hypercall::from_number(0x0f), None);
        assert_eq!(Hypercall::from_number(u64::MAX), None);
    }

    #[test]
    fn clause_ids_are_unique() {
        for (i, a) in Hypercall::ALL.iter().enumerate() {
            for b in &Hypercall::ALL[i + 1..] {
                assert_ne!(a.clause(), b.clause());
                assert_ne!(a.spec_name(), b.spec_name());
            }
        }
    }
}
