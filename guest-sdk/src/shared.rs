//! Access to the shared-info page (`MEM-4`): atomics only, never a `&mut`.
//!
//! The hypervisor writes this page while the guest runs (it is interrupted at
//! any instruction, `TRAP-4`), so every field is read and written through an
//! atomic created with `Atomic*::from_ptr` at the field's ABI offset
//! (`hypercall_abi::layout::SHARED_*_OFFSET`).
#![allow(unsafe_code)]

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

use hypercall_abi::layout::{
    SharedInfo, PORT_WORDS, SHARED_MASK_OFFSET, SHARED_PENDING_OFFSET, SHARED_PENDING_SEL_OFFSET,
    SHARED_TIME_OFFSET, SHARED_UPCALL_MASK_OFFSET, SHARED_UPCALL_PENDING_OFFSET,
};

/// A handle on a shared-info page.
#[derive(Clone, Copy)]
pub(crate) struct Shared {
    base: *mut u8,
}

impl Shared {
    /// The domain's shared-info page, at `SHARED_INFO_VA`.
    #[cfg(target_os = "none")]
    #[inline]
    pub(crate) fn get() -> Shared {
        // MEM-2/4: mapped read-write at SHARED_INFO_VA for the domain's life
        // (checked against the start-info page at start).
        // SAFETY: `from_ptr` needs an 8-aligned page valid for reads and
        // writes for the program's life, reached only through `Shared`: the
        // page is at the page-aligned SHARED_INFO_VA for the domain's life
        // (MEM-2/4, checked at start), and the SDK touches it only through
        // the atomics below.
        unsafe { Shared::from_ptr(hypercall_abi::layout::SHARED_INFO_VA as *mut SharedInfo) }
    }

    /// The SDK's host tests: the fake hypervisor's page for this thread.
    #[cfg(test)]
    pub(crate) fn get() -> Shared {
        crate::fake::shared()
    }

    /// Host build: there is no shared-info page.
    #[cfg(not(any(test, target_os = "none")))]
    pub(crate) fn get() -> Shared {
        panic!("the shared-info page exists only on the x86_64-unknown-none target")
    }

    /// A handle on the `SharedInfo` at `page`.
    ///
    /// # Safety
    ///
    /// `page` must be 8-byte aligned, valid for reads and writes of a
    /// `SharedInfo` for the rest of the program, and accessed by this
    /// program only through `Shared` (atomics), never through a reference.
    #[cfg_attr(not(any(test, target_os = "none")), allow(dead_code))]
    pub(crate) unsafe fn from_ptr(page: *mut SharedInfo) -> Shared {
        Shared { base: page.cast() }
    }

    #[inline]
    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset & 7 == 0 && offset + 8 <= core::mem::size_of::<SharedInfo>());
        let p = self.base.wrapping_add(offset).cast::<u64>();
        // SAFETY: `from_ptr`'s contract: the page is valid, 8-aligned and only
        // accessed atomically; callers pass ABI offsets of u64 fields, which
        // are 8-aligned and inside the struct.
        unsafe { AtomicU64::from_ptr(p) }
    }

    #[inline]
    fn u8_at(&self, offset: usize) -> &AtomicU8 {
        debug_assert!(offset < core::mem::size_of::<SharedInfo>());
        let p = self.base.wrapping_add(offset);
        // SAFETY: `AtomicU8::from_ptr` needs a valid pointer accessed only
        // atomically: the page is valid and only accessed atomically
        // (`from_ptr`'s contract), `offset` is inside the struct (asserted
        // in debug, ABI offsets otherwise), and a u8 needs no alignment.
        unsafe { AtomicU8::from_ptr(p) }
    }

    /// `pending[word]`.
    #[inline]
    pub(crate) fn pending(&self, word: usize) -> &AtomicU64 {
        assert!(word < PORT_WORDS);
        self.u64_at(SHARED_PENDING_OFFSET + word * 8)
    }

    /// `mask[word]`.
    #[inline]
    pub(crate) fn mask(&self, word: usize) -> &AtomicU64 {
        assert!(word < PORT_WORDS);
        self.u64_at(SHARED_MASK_OFFSET + word * 8)
    }

    /// `pending_sel`.
    #[inline]
    pub(crate) fn pending_sel(&self) -> &AtomicU64 {
        self.u64_at(SHARED_PENDING_SEL_OFFSET)
    }

    /// `upcall_pending`.
    #[inline]
    pub(crate) fn upcall_pending(&self) -> &AtomicU8 {
        self.u8_at(SHARED_UPCALL_PENDING_OFFSET)
    }

    /// `upcall_mask`.
    #[inline]
    pub(crate) fn upcall_mask(&self) -> &AtomicU8 {
        self.u8_at(SHARED_UPCALL_MASK_OFFSET)
    }

    /// `time.version`.
    pub(crate) fn time_version(&self) -> &AtomicU32 {
        let p = self.base.wrapping_add(SHARED_TIME_OFFSET).cast::<u32>();
        // SAFETY: `AtomicU32::from_ptr` needs a 4-aligned pointer valid for
        // the program's life and accessed only atomically: the page is valid
        // and only accessed atomically (`from_ptr`'s contract); `time` is at
        // an 8-aligned ABI offset and `version` is its first (u32) field.
        unsafe { AtomicU32::from_ptr(p) }
    }

    /// `time.tsc_timestamp`, `time.system_time_ns`, `time.tsc_mul`.
    pub(crate) fn time_fields(&self) -> [&AtomicU64; 3] {
        [
            self.u64_at(SHARED_TIME_OFFSET + TIME_TSC_TIMESTAMP),
            self.u64_at(SHARED_TIME_OFFSET + TIME_SYSTEM_TIME_NS),
            self.u64_at(SHARED_TIME_OFFSET + TIME_TSC_MUL),
        ]
    }
}

const TIME_TSC_TIMESTAMP: usize =
    core::mem::offset_of!(hypercall_abi::layout::TimeInfo, tsc_timestamp);
const TIME_SYSTEM_TIME_NS: usize =
    core::mem::offset_of!(hypercall_abi::layout::TimeInfo, system_time_ns);
const TIME_TSC_MUL: usize = core::mem::offset_of!(hypercall_abi::layout::TimeInfo, tsc_mul);

/// A zeroed `SharedInfo` on the host heap, leaked, for unit tests.
#[cfg(test)]
pub(crate) fn test_page() -> Shared {
    use hypercall_abi::layout::TimeInfo;
    let page = std::boxed::Box::new(SharedInfo {
        pending: [0; PORT_WORDS],
        mask: [0; PORT_WORDS],
        pending_sel: 0,
        upcall_pending: 0,
        upcall_mask: 0,
        reserved: [0; 6],
        time: TimeInfo {
            version: 0,
            reserved: 0,
            tsc_timestamp: 0,
            system_time_ns: 0,
            tsc_mul: 0,
        },
    });
    // SAFETY: a leaked Box lives for the rest of the program and is aligned;
    // the test reaches it only through the returned handle.
    unsafe { Shared::from_ptr(std::boxed::Box::leak(page)) }
}
