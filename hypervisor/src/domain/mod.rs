//! Domains: the per-domain state, and tearing a domain down. Building one
//! is in [`build()`]; its shared-info page, the one accessor the hypervisor
//! has for it, in [`shared`].

mod build;
mod shared;

pub use build::build;
pub use shared::SharedPage;

use crate::arch::cpu::{Selectors, USER_CS, USER_SS};
use crate::arch::fpu::FpuState;
use crate::arch::traps::TrapFrame;
use crate::mem::{self, pte};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use hypercall_abi::layout::{
    SharedInfo, StartFlags, StartInfo, TimeInfo, DEVICE_VA_BASE, PORT_WORDS, RFLAGS_IF,
    SHARED_INFO_VA, START_INFO_MAGIC, WINDOW_BASE,
};
use tahoma_core::bootpack::{DomainFlags, DomainRecord, NAME_LEN};
use tahoma_core::event::DomId;
use tahoma_core::grant::GrantTables;
use tahoma_core::io::DriverPlan;
use tahoma_core::loader::{self, ImageError};
use tahoma_core::mm::{
    AddressSpace, Budget, ImageId, Level, Mm, MmError, Owner, Pending, Progress, SharedImages,
    Teardown,
};
use zerocopy::IntoBytes;

/// Default time slice in milliseconds (weight 0).
pub const DEFAULT_SLICE_MS: u64 = 10;
/// Validator steps (entries) in one step of a teardown (SCHED-4).
const RELEASE_STEPS: u64 = 4096;
/// Frames scrubbed and freed in one step of a teardown (each is 4 KiB of
/// stores, about as long as 512 validator steps).
const FREE_FRAMES_PER_STEP: usize = 8;

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// In the run queue, or running.
    Runnable,
    /// Sleeping in `block`.
    Blocked,
}

/// Entries registered with `set_callbacks`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Callbacks {
    /// Event upcall entry (0 = none).
    pub event: u64,
    /// Trap entry (0 = none).
    pub trap: u64,
    /// Callback stack top.
    pub stack: u64,
}

/// A domain's register frame, in a heap slot of its own that never moves:
/// while the domain runs, its address is the current guest frame
/// (`arch::traps::set_guest_frame`: the `syscall` stub saves into it, TSS.RSP0
/// is its end, `trap_return` loads from it), so a switch copies nothing.
///
/// Held by pointer, not by value or `Box`: the CPU and the entry stubs
/// write it behind Rust's back, and the entries hand it to the hypervisor
/// as a raw pointer, so no `&mut Domain` (the domain table) ever covers the
/// frame's memory and no reference into it outlives the entry that made it.
pub struct Frame(core::ptr::NonNull<crate::arch::traps::FrameSlot>);

impl Frame {
    /// A slot holding `f`.
    pub fn new(f: TrapFrame) -> Self {
        let slot = alloc::boxed::Box::new(crate::arch::traps::FrameSlot(
            core::cell::UnsafeCell::new(f),
        ));
        Frame(core::ptr::NonNull::from(alloc::boxed::Box::leak(slot)))
    }

    /// The slot, for `set_guest_frame`.
    pub fn slot(&self) -> &crate::arch::traps::FrameSlot {
        // SAFETY: the slot was leaked from a Box in `new` and is freed only
        // by `drop`; the shared reference covers the `UnsafeCell` wrapper,
        // whose contents may change through raw pointers.
        unsafe { self.0.as_ref() }
    }

    /// The frame's address (what the entries pass to the hypervisor).
    pub fn ptr(&self) -> *mut TrapFrame {
        self.slot().0.get()
    }

    /// Sets the saved `rax` of a domain that is not running (a blocked
    /// domain's `block` result, SCHED-2).
    pub fn set_rax(&mut self, v: u64) {
        // SAFETY: the slot is live (see `slot`); the domain is not running,
        // so no entry holds a reference into its frame (one CPU, and the
        // entries make references only to the current domain's frame, for
        // the span of the entry).
        unsafe { (*self.ptr()).rax = v };
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // SAFETY: leaked from a Box in `new`, freed once here. The caller
        // (the domain's destruction) has made sure it is not the current
        // guest frame: `Hv::destroy` clears that first.
        drop(unsafe { alloc::boxed::Box::from_raw(self.0.as_ptr()) });
    }
}

/// A guest domain.
pub struct Domain {
    /// Its id (1-based; never reused).
    pub id: DomId,
    /// Its name from the manifest.
    pub name: heapless::String<NAME_LEN>,
    /// Manifest flags.
    pub flags: DomainFlags,
    /// Scheduling state.
    pub state: RunState,
    /// Its registers: saved here in place by every entry from ring 3 while
    /// it runs (the current guest frame), and kept here while it does not.
    pub ctx: Frame,
    /// Saved x87/MMX/SSE/AVX state while not running (CPU-1); the initial
    /// state until the domain first runs (CPU-1a).
    pub fpu: FpuState,
    /// Saved data-segment selectors while not running (CPU-2); null at start.
    pub selectors: Selectors,
    /// Physical address of the root page table (loaded into CR3).
    pub root: u64,
    /// Every frame of its window (pseudo-physical order), then frames
    /// taken with `memory_populate`. All its own, but for the shared
    /// read-only pages of its image (MEM-2e), owned by the image.
    pub frames: Vec<u64>,
    /// The image whose shared read-only pages it maps (MEM-2e), if any.
    pub image: Option<ImageId>,
    /// Most frames the domain may own (MEM-5).
    pub max_pages: u64,
    /// The domain's vCPU address space (its loaded root).
    pub space: AddressSpace,
    /// The shared-info page.
    pub shared: SharedPage,
    /// The frame of the start-info page (written before the domain runs).
    pub start_info: u64,
    /// Registered upcall entries.
    pub callbacks: Callbacks,
    /// The direct-map address of its shared page's `upcall_pending` byte
    /// while it has an event entry registered, else the address of a static
    /// zero word (never 0: the `syscall` stub reads through it without a
    /// test): what the scheduler
    /// loads into `Scheduler::upcall_shared` when it runs (computed once,
    /// by `Hv::note_upcall_entry` when the callbacks change, not on every
    /// switch).
    pub upcall_word: core::num::NonZeroU64,
    /// Upcall frames pushed and not yet returned.
    pub upcall_depth: u32,
    /// Time slice in TSC ticks.
    pub slice: u64,
    /// Console bytes not yet ended by a newline.
    pub console: tahoma_core::console::LineBuffer,
    /// The pin or unpin this domain has in progress (MMU-35), restarted by
    /// its next `mmu_pin`/`mmu_unpin`.
    pub mm_pending: Option<Pending>,
    /// Frames of `frames` already given back by a teardown in progress.
    pub freed: usize,
    /// A teardown in progress has dropped the domain's side of the grant
    /// tables (after its page tables, before its frames).
    pub grants_released: bool,
    /// Hypercalls made.
    pub hypercalls: u64,
    /// TSC when the hypervisor began building the domain.
    pub built_at: u64,
    /// TSC when the domain first ran, if it has.
    pub first_run_at: Option<u64>,
}

/// Why a domain could not be built (MEM-2b).
#[derive(Debug)]
pub enum BuildError {
    /// The image or the window size was refused (MEM-2b, MEM-2c).
    Image(ImageError),
    /// Not enough free frames (the machine's memory is the limit).
    NoMemory {
        /// Frames the domain needs (its window and shared page; with
        /// machine-contiguous DMA, that run).
        needed: u64,
        /// Frames free when it was built.
        free: u64,
    },
    /// The validator refused the initial page tables (a hypervisor bug).
    Tables(MmError),
    /// A driver domain's window has no room for its DMA region and device
    /// tables after the image (IO-3).
    NoRoomForDevices {
        /// Pages the DMA region and the device tables take.
        needed: u64,
        /// Pages free in the window.
        free: u64,
    },
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Image(e) => write!(f, "{e}"),
            BuildError::NoMemory { needed, free } => write!(
                f,
                "machine memory full: the domain needs {needed} frames, {free} are free (give the machine more memory, or ask for fewer or smaller guests)"
            ),
            BuildError::Tables(e) => write!(f, "initial page tables refused: {e:?}"),
            BuildError::NoRoomForDevices { needed, free } => write!(
                f,
                "a driver domain needs {needed} pages for its DMA region and device tables, its window has {free} free: give it more memory"
            ),
        }
    }
}

impl Domain {
    /// One bounded step of dropping every page-table reference the domain
    /// holds, then scrubbing and returning every frame it owns (SCHED-3,
    /// MMU-16, SCHED-4): a few
    /// thousand page-table entries released, or a few frames scrubbed and
    /// freed. Returns whether the teardown `t` is complete. The domain must
    /// not run again, nor its root be loaded in CR3.
    ///
    /// Grants (GNT-0c, GNT-0d): once its page tables are gone (so no entry
    /// of its references a granted frame any more) its grant mappings are
    /// released and its unmapped grants revoked (`GrantTables::destroy`);
    /// a frame of its own still held by another domain's grant mapping is
    /// not freed here but pushed on `orphans`, and freed by whoever drops
    /// its last hold (`Hv::sweep_orphans`).
    pub fn release_step(
        &mut self,
        mm: &mut Mm,
        t: &mut Teardown,
        grants: &mut GrantTables,
        orphans: &mut Vec<u64>,
        images: &mut SharedImages,
    ) -> bool {
        mm.detach(&mut self.space);
        let mut budget = Budget::new(RELEASE_STEPS);
        let tables = mm.teardown_frames_bounded(
            &mut mem::DirectMap,
            t,
            &self.frames,
            &mut self.mm_pending,
            &mut budget,
        );
        if tables == Progress::Preempted {
            return false;
        }
        if !self.grants_released {
            grants.destroy(mm, self.id);
            self.grants_released = true;
        }
        let end = (self.freed + FREE_FRAMES_PER_STEP).min(self.frames.len());
        for &f in &self.frames[self.freed..end] {
            if mm
                .frame(f)
                .is_some_and(|i| matches!(i.owner(), Owner::Image(_)))
            {
                // A shared page of its image (MEM-2e): not its to free;
                // the image's last domain frees it (below).
                continue;
            }
            if mm.frame(f).is_some_and(|i| i.held() > 0) {
                // Mapped by a grantee through a grant: freed with its
                // last mapping.
                orphans.push(f);
                continue;
            }
            free_owned(mm, self.id, f);
        }
        self.freed = end;
        if self.freed < self.frames.len() {
            return false;
        }
        // The hypervisor's hold on the shared page (MEM-8) ends with the
        // domain: nothing raises events into it any more.
        if let Err(e) = mm.release_hold(self.shared.mfn) {
            mem::inconsistency(
                self.shared.mfn,
                format_args!(
                    "shared page of domain {} not held at teardown: {e:?}",
                    self.id
                ),
            );
        }
        free_owned(mm, self.id, self.shared.mfn);
        self.frames.clear();
        // Its tables are gone: it maps no shared page of its image any
        // more. The image's last domain frees the copy (MEM-2e).
        let _ = mm.set_domain_image(self.id, None);
        if let Some(image) = self.image.take() {
            release_image(mm, images, image);
        }
        true
    }

    /// Whether this domain ends the scenario when it ends.
    pub fn critical(&self) -> bool {
        self.flags.contains(DomainFlags::CRITICAL)
    }
}

/// One domain of `image` is gone (released, or its build undone): when it
/// was the last, the image's shared copy goes back to the pool, scrubbed
/// (MEM-2e). Nothing maps it then: every domain that could is released.
pub(crate) fn release_image(mm: &mut Mm, images: &mut SharedImages, image: ImageId) {
    match images.detach(image) {
        Ok(None) => {}
        Ok(Some(pages)) => {
            for (_, f) in pages {
                if let Err(e) = mm.unshare_image(f, image) {
                    mem::inconsistency(
                        f,
                        format_args!(
                            "shared page of image {image} still in use after its last domain: {e:?}"
                        ),
                    );
                    continue;
                }
                mem::free_frame(f);
            }
        }
        Err(e) => mem::inconsistency(
            0,
            format_args!("image {image} released without a shared copy: {e:?}"),
        ),
    }
}

/// Gives one of domain `id`'s frames back to the pool, scrubbed.
pub(crate) fn free_owned(mm: &mut Mm, id: DomId, f: u64) {
    if let Err(e) = mm.assign(f, Owner::Free) {
        mem::inconsistency(
            f,
            format_args!("frame of domain {id} still in use at teardown: {e:?}"),
        );
        return;
    }
    mem::free_frame(f);
}
