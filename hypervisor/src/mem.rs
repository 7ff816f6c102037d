//! Physical memory: the direct map, the heap, the frame allocator, and the
//! hypervisor's own page tables.
//!
//! Address-space layout (the top half belongs to the hypervisor in every
//! address space, guests included; all of it is supervisor-only):
//!
//! | PML4 slot | virtual base | what |
//! |---|---|---|
//! | 0..=255 | `0x0000_0000_0000_0000` | guest (empty in the hypervisor's own tables) |
//! | 256 | `0xFFFF_8000_0000_0000` | direct map of physical memory, 2 MiB pages, NX |
//! | 511 | `0xFFFF_FFFF_8000_0000` | the hypervisor image, 4 KiB pages, W^X |

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;
use tahoma_core::frames::FrameAllocator;
use tahoma_core::memmap::{self, Kind, Range};
use talc::base::Talc;
use talc::source::Manual;
use talc::DefaultBinning;

/// Base of the direct map.
pub const PHYS_OFFSET: u64 = 0xFFFF_8000_0000_0000;
/// Base the image is linked at (minus its physical load address).
pub const KERNEL_VMA: u64 = 0xFFFF_FFFF_8000_0000;

/// Page-table entry bits: the ABI's definition, plus the two names the
/// hypervisor's own tables use.
pub mod pte {
    pub use hypercall_abi::pte::{ACCESSED, GLOBAL, NX, PCD, PRESENT, PWT, USER, WRITABLE};
    /// PS: a 2 MiB leaf in an L2 entry.
    pub const HUGE: u64 = hypercall_abi::pte::PS;
    /// The physical-address field of an entry.
    pub const ADDR: u64 = hypercall_abi::pte::ADDR_MASK;
}

/// How far the direct map reaches (bytes of physical address space).
static DIRECT_MAP_LIMIT: AtomicU64 = AtomicU64::new(1 << 30);

/// The boot heap: a static area for what is allocated before the frame
/// allocator exists (the firmware map, the allocator's own bitmaps).
const BOOT_HEAP_SIZE: usize = 4 << 20;
#[repr(C, align(4096))]
struct HeapArea([u8; BOOT_HEAP_SIZE]);
static mut HEAP_AREA: HeapArea = HeapArea([0; BOOT_HEAP_SIZE]);

pub use tahoma_core::memmap::{main_heap_bytes, DOMAIN_HEAP_BYTES};

mod phys;
pub use phys::{
    copy_from_phys, copy_phys, copy_to_phys, phys_words_hold, read_phys, DirectMap, PhysPage,
    PhysWord, PhysWords,
};

/// Heap kept free for the allocations hypercalls make while domains run
/// (ports, grants, pins): a domain is not built into it.
pub const HEAP_RUNTIME_RESERVE: u64 = 1 << 20;

/// The hypervisor's heap: the boot area, then (from [`init`] on) the main
/// heap, taken from RAM as one machine-contiguous run whose size follows
/// the machine's memory ([`main_heap_bytes`]). Both are regions of one
/// `talc` allocator: binned (dlmalloc-like), so an allocation does not walk
/// the holes earlier domains left, and building the n-th domain costs what
/// building the first did (issue 13; `linked_list_allocator`'s first fit
/// walked every hole, +24 instructions per domain present). A failed
/// allocation returns null (callers that can fail use `try_reserve`, and
/// domain builds are admitted only with their need and the runtime
/// reserve free, see [`heap_free`]).
struct Heaps {
    talc: Mutex<Talc<Manual, DefaultBinning>>,
}

// SAFETY: every request goes to the one allocator behind the lock, and
// every free goes back to it with the layout it was allocated with (the
// `GlobalAlloc` contract the callers keep).
unsafe impl core::alloc::GlobalAlloc for Heaps {
    unsafe fn alloc(&self, layout: core::alloc::Layout) -> *mut u8 {
        // SAFETY: `GlobalAlloc::alloc` is never called with a zero size.
        unsafe { self.talc.lock().allocate(layout) }.map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: core::alloc::Layout) {
        // SAFETY: `ptr` was allocated by this allocator with `layout`.
        unsafe { self.talc.lock().deallocate(ptr, layout) }
    }
}

#[global_allocator]
static HEAP: Heaps = Heaps {
    talc: Mutex::new(Talc::new(Manual)),
};

/// The physical frame allocator (set up by [`init`]).
pub static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);

/// Hands the static boot area to the allocator. Called once, first.
pub fn init_heap() {
    // SAFETY: HEAP_AREA is used by nothing but this allocator, and this runs
    // once, before any allocation; the area is large enough for talc's
    // metadata (the first claim).
    let ok = unsafe {
        HEAP.talc
            .lock()
            .claim(&raw mut HEAP_AREA as *mut u8, BOOT_HEAP_SIZE)
    };
    assert!(ok.is_some(), "the boot heap is too small for the allocator");
}

/// Takes the main heap from the frame allocator (once, from [`init`]).
fn init_main_heap(frames: u64) -> Option<u64> {
    let bytes = main_heap_bytes(frames);
    let first = FRAMES
        .lock()
        .as_mut()?
        .alloc_contiguous(bytes / 4096, 512)?;
    let start = phys_to_virt(first << 12);
    // SAFETY: the frames were just taken from the allocator for good (never
    // freed, so never handed to a guest), are direct-mapped writable, and
    // nothing else uses them.
    unsafe { HEAP.talc.lock().claim(start as *mut u8, bytes as usize) }?;
    Some(bytes)
}

/// Heap bytes in total (boot area and main heap).
pub fn heap_size() -> usize {
    HEAP.talc.lock().counters().claimed_bytes
}

/// Heap bytes free now (boot area and main heap).
pub fn heap_free() -> usize {
    HEAP.talc.lock().counters().available_bytes
}

/// The direct-map address of physical address `pa`.
pub fn phys_to_virt(pa: u64) -> u64 {
    PHYS_OFFSET + pa
}

/// A byte slice over physical memory `[pa, pa + len)`.
///
/// Panics (a hypervisor bug, never guest input) when the range is outside the
/// direct map.
pub fn phys_slice(pa: u64, len: u64) -> &'static [u8] {
    let end = pa.checked_add(len).expect("physical range wraps");
    assert!(
        end <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed),
        "physical range {pa:#x}+{len:#x} not direct-mapped"
    );
    // SAFETY: the range lies inside the direct map (checked above), which maps
    // every byte of it for the hypervisor's lifetime. The callers read boot
    // structures and the boot module, which nothing writes after boot.
    unsafe { core::slice::from_raw_parts(phys_to_virt(pa) as *const u8, len as usize) }
}

/// The 512 entries of the page-table frame `mfn`, through the direct map.
pub fn table_mut(mfn: u64) -> &'static mut [u64; 512] {
    assert!(
        (mfn + 1) << 12 <= DIRECT_MAP_LIMIT.load(Ordering::Relaxed),
        "frame {mfn:#x} not direct-mapped"
    );
    // SAFETY: the frame is direct-mapped (checked), 4 KiB aligned, and owned by
    // the caller as a page table; the hypervisor runs on one CPU with no
    // concurrent writer of the same table.
    unsafe { &mut *(phys_to_virt(mfn << 12) as *mut [u64; 512]) }
}

/// Takes a zeroed frame from the allocator.
///
/// Every frame given back through [`free_frame`] was scrubbed there
/// (MEM-2a), and so was every frame of the boot scrub
/// ([`scrub_free_frames`]); the allocator remembers it: such a frame is
/// handed out as it is, without a second zeroing (issue 13). Only a frame
/// not known to be zero (free since boot, beyond the boot scrub) is zeroed
/// here.
///
/// With `testopt=poison-free` (see [`poison_free_frames`]) it first checks
/// what it hands out: a frame known to be scrubbed must be all zero (a
/// frame freed without scrubbing, or written while free, is caught
/// here), and any other must be all zero or all [`POISON`] (never handed
/// out since boot); anything else is an internal inconsistency that fails
/// the run.
pub fn alloc_zeroed_frame() -> Option<u64> {
    let (mfn, clean) = FRAMES.lock().as_mut()?.alloc_known()?;
    hand_out(mfn, clean);
    Some(mfn)
}

/// Makes frame `mfn`, just taken from the allocator, fit to hand out:
/// zeroed unless `clean`, checked under `testopt=poison-free`.
#[inline]
fn hand_out(mfn: u64, clean: bool) {
    let t = table_mut(mfn);
    if POISONED.load(Ordering::Relaxed) {
        let bad = if clean {
            t.iter().position(|&w| w != 0)
        } else if t.iter().all(|&w| w == 0) || t.iter().all(|&w| w == POISON) {
            None
        } else {
            t.iter().position(|&w| w != 0 && w != POISON)
        };
        if let Some(i) = bad {
            inconsistency(
                mfn,
                format_args!(
                    "free frame handed out unscrubbed (known clean: {clean}): word {i} is {:#x}",
                    t[i]
                ),
            );
        }
    }
    if clean {
        HANDED_CLEAN.fetch_add(1, Ordering::Relaxed);
    } else {
        t.fill(0);
        HANDED_ZEROED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Takes `n` zeroed frames at once, the frames [`alloc_zeroed_frame`]
/// would hand out one by one (in the same order, with the same checks, one
/// lock, the bitmap a word at a time), and passes them to
/// `take(first, count)` as runs of contiguous frames
/// (`FrameAllocator::alloc_runs`): a domain's build adopts a run in one
/// pass, and a run of frames known clean costs nothing here (issue 13).
/// Takes nothing and returns `false` when fewer than `n` are free.
pub fn alloc_zeroed_runs(n: u64, mut take: impl FnMut(u64, u64)) -> bool {
    let mut guard = FRAMES.lock();
    let Some(a) = guard.as_mut() else {
        return false;
    };
    a.alloc_runs(n, |first, count, clean| {
        if clean && !POISONED.load(Ordering::Relaxed) {
            HANDED_CLEAN.fetch_add(count, Ordering::Relaxed);
        } else {
            for mfn in first..first + count {
                hand_out(mfn, clean);
            }
        }
        take(first, count);
    })
}

/// Frames [`alloc_zeroed_frame`] handed out as they were (scrubbed when
/// freed) and frames it had to zero (free since boot).
static HANDED_CLEAN: AtomicU64 = AtomicU64::new(0);
static HANDED_ZEROED: AtomicU64 = AtomicU64::new(0);

/// `(handed out without zeroing, zeroed)` so far.
pub fn zeroing_counts() -> (u64, u64) {
    (
        HANDED_CLEAN.load(Ordering::Relaxed),
        HANDED_ZEROED.load(Ordering::Relaxed),
    )
}

/// Takes `count` machine-contiguous frames, zeroed; returns the first
/// (a driver domain's DMA region, IO-3). Each is freed on its own later.
pub fn alloc_contiguous_zeroed(count: u64) -> Option<u64> {
    let first = FRAMES.lock().as_mut()?.alloc_contiguous(count, 1)?;
    for mfn in first..first + count {
        table_mut(mfn).fill(0);
    }
    Some(first)
}

/// The pattern `testopt=poison-free` fills free memory with at boot: a
/// frame handed out without being zeroed shows it to its guest (MEM-2a,
/// MEM-5 check for zeroes), and a frame freed without being scrubbed is
/// caught when it is handed out again.
pub const POISON: u64 = 0xA5C3_5A3C_DEAD_F00D;
static POISONED: AtomicBool = AtomicBool::new(false);

/// Test-only (`testopt=poison-free`): fills every free frame with
/// [`POISON`] and makes [`alloc_zeroed_frame`] check what it hands out.
/// QEMU's RAM starts zeroed, so without this a hypervisor that forgot to
/// zero frames would pass every check. Returns the frames filled.
pub fn poison_free_frames() -> u64 {
    let limit = frame_limit();
    let mut n = 0;
    for mfn in 0..limit {
        if is_free_frame(mfn) {
            table_mut(mfn).fill(POISON);
            n += 1;
        }
    }
    POISONED.store(true, Ordering::Relaxed);
    n
}

/// The boot scrub (issue 13, MEM-2a): zeroes up to `limit` free frames
/// not known to be zero, in the order the allocator hands frames out, and
/// marks them clean; called once before the boot pack's domains are built,
/// with the frames they will take, so that no build zeroes a frame
/// ([`alloc_zeroed_frame`] hands clean frames out as they are, and
/// [`free_frame`] scrubs every frame given back). Returns the frames
/// zeroed.
pub fn scrub_free_frames(limit: u64) -> u64 {
    FRAMES
        .lock()
        .as_mut()
        .map_or(0, |a| a.scrub_free(limit, |mfn| table_mut(mfn).fill(0)))
}

/// Internal inconsistencies found so far (issue 7, finding 9).
static INCONSISTENCIES: AtomicU64 = AtomicU64::new(0);

/// Reports an internal inconsistency loudly (`@ inconsistency` and
/// `log::error!`) and marks the run failed: the end of the run exits with
/// a failure status. For states that are hypervisor bugs, never for guest
/// errors (those get an error code).
pub fn inconsistency(mfn: u64, what: core::fmt::Arguments<'_>) {
    INCONSISTENCIES.fetch_add(1, Ordering::Relaxed);
    let mut msg = heapless::String::<160>::new();
    let _ = core::fmt::write(&mut msg, what);
    crate::report!(
        "inconsistency",
        "mfn={:#x} what={}",
        mfn,
        crate::console::Quoted(&msg)
    );
    log::error!(
        "internal inconsistency at frame {mfn:#x}: {msg}; this is a hypervisor bug, the run will fail: keep this log for the bug report"
    );
}

/// How many internal inconsistencies were reported.
pub fn inconsistencies() -> u64 {
    INCONSISTENCIES.load(Ordering::Relaxed)
}

extern "C" {
    static __image_start_phys: u8;
    static __image_end_phys: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
}

/// The hypervisor image's physical range.
pub fn image_range() -> Range {
    let (s, e) = (
        &raw const __image_start_phys as u64,
        &raw const __image_end_phys as u64,
    );
    Range { start: s, end: e }
}

/// What [`init`] found.
pub struct MemoryReport {
    /// Firmware map entries.
    pub regions: usize,
    /// Bytes of RAM in the firmware map.
    pub ram_bytes: u64,
    /// Frames handed to the allocator.
    pub usable_frames: u64,
    /// The physical address of the hypervisor's PML4.
    pub pml4: u64,
}

/// The hypervisor's PML4 (physical frame number), for new address spaces to copy.
static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);

/// The hypervisor's PML4 frame.
pub fn kernel_pml4() -> u64 {
    KERNEL_PML4.load(Ordering::Relaxed)
}

/// Sets up the frame allocator over usable RAM (minus the image, the boot
/// module, low memory and the boot structures), builds the hypervisor's page
/// tables and switches to them.
pub fn init(map: &[(Range, Kind)], exclude: &[Range]) -> MemoryReport {
    let mut excl = alloc::vec![
        Range {
            start: 0,
            end: 0x10_0000
        },
        image_range()
    ];
    excl.extend_from_slice(exclude);
    let usable = memmap::usable(map, &excl);
    let alloc = FrameAllocator::new(&usable);
    let usable_frames = alloc.total();
    *FRAMES.lock() = Some(alloc);

    let ram_top = map
        .iter()
        .filter(|(_, k)| *k == Kind::Ram)
        .map(|(r, _)| r.end)
        .max()
        .unwrap_or(0);
    let limit = ram_top.max(4 << 30).next_multiple_of(2 << 20);
    let pml4 = alloc_zeroed_frame().expect("a frame for the PML4");
    map_direct(pml4, limit);
    map_image(pml4);
    // SAFETY: the new tables map the running image at the same virtual
    // addresses with compatible permissions, and the direct map over all RAM,
    // so execution and the stack continue unchanged.
    unsafe { crate::arch::load_root(pml4 << 12) };
    DIRECT_MAP_LIMIT.store(limit, Ordering::Relaxed);
    KERNEL_PML4.store(pml4, Ordering::Relaxed);
    // The rest of the heap, sized from the machine's memory; without it
    // the boot area is all there is (a machine too small for both).
    if init_main_heap(usable_frames).is_none() {
        log::warn!(
            "no {} contiguous bytes for the main heap: running on the {} KiB boot heap; give the machine more memory",
            main_heap_bytes(usable_frames),
            BOOT_HEAP_SIZE >> 10
        );
    }
    MemoryReport {
        regions: map.len(),
        ram_bytes: map
            .iter()
            .filter(|(_, k)| *k == Kind::Ram)
            .map(|(r, _)| r.len())
            .sum(),
        usable_frames,
        pml4: pml4 << 12,
    }
}

fn next_table(table: u64, index: usize) -> u64 {
    let t = table_mut(table);
    if t[index] & pte::PRESENT == 0 {
        let f = alloc_zeroed_frame().expect("a frame for a page table");
        // Intermediate entries allow everything; leaves decide.
        table_mut(table)[index] = (f << 12) | pte::PRESENT | pte::WRITABLE | pte::ACCESSED;
        f
    } else {
        (t[index] & pte::ADDR) >> 12
    }
}

fn idx(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

fn map_direct(pml4: u64, limit: u64) {
    let mut pa = 0;
    while pa < limit {
        let va = phys_to_virt(pa);
        let pdpt = next_table(pml4, idx(va, 4));
        let pd = next_table(pdpt, idx(va, 3));
        let mut flags = pte::PRESENT | pte::WRITABLE | pte::HUGE | pte::GLOBAL | pte::NX;
        // The 32 MiB under 4 GiB hold the local APIC, I/O APIC and
        // virtio-mmio windows: uncached.
        if (0xFE00_0000..(1 << 32)).contains(&pa) {
            flags |= pte::PCD | pte::PWT;
        }
        table_mut(pd)[idx(va, 2)] = pa | flags;
        pa += 2 << 20;
    }
}

fn map_image(pml4: u64) {
    let sections = [
        (
            &raw const __text_start as u64,
            &raw const __text_end as u64,
            0,
        ),
        (
            &raw const __rodata_start as u64,
            &raw const __rodata_end as u64,
            pte::NX,
        ),
        (
            &raw const __data_start as u64,
            &raw const __data_end as u64,
            pte::NX | pte::WRITABLE,
        ),
    ];
    for (start, end, flags) in sections {
        let mut va = start;
        while va < end {
            let pdpt = next_table(pml4, idx(va, 4));
            let pd = next_table(pdpt, idx(va, 3));
            let pt = next_table(pd, idx(va, 2));
            table_mut(pt)[idx(va, 1)] = (va - KERNEL_VMA) | pte::PRESENT | pte::GLOBAL | flags;
            va += 4096;
        }
    }
}

/// Zeroes frame `mfn` (scrubbing before reuse).
pub fn scrub(mfn: u64) {
    table_mut(mfn).fill(0);
}

/// Returns frame `mfn` to the allocator after scrubbing it; the
/// allocator marks it clean, so it is not zeroed again when handed out.
pub fn free_frame(mfn: u64) {
    scrub(mfn);
    if let Some(a) = FRAMES.lock().as_mut() {
        if let Err(e) = a.free_scrubbed(mfn) {
            inconsistency(mfn, format_args!("freeing the frame: {e:?}"));
        }
    }
}

/// Frames free now.
pub fn free_frames() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |a| a.free_count())
}
/// The CPU's physical address width (CPUID 0x8000_0008), clamped to 32..=52.
pub fn max_phys_bits() -> u8 {
    let leaf = core::arch::x86_64::__cpuid(0x8000_0008);
    ((leaf.eax & 0xff) as u8).clamp(32, 52)
}

/// The hypervisor's PML4 slots 256..=511, the template every guest L4 gets.
pub fn hypervisor_slots() -> [u64; 256] {
    let mut slots = [0u64; 256];
    slots.copy_from_slice(&table_mut(kernel_pml4())[256..]);
    slots
}

/// The highest RAM frame number + 1.
pub fn frame_limit() -> u64 {
    FRAMES.lock().as_ref().map_or(0, |a| a.frame_limit())
}

/// Whether the allocator holds `mfn` as free.
pub fn is_free_frame(mfn: u64) -> bool {
    FRAMES.lock().as_ref().is_some_and(|a| a.is_free(mfn))
}
