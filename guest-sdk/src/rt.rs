//! The runtime: start-up (`MEM-3`), the heap, the panic handler.
//!
//! `_start` (in `arch`) calls [`start`], which checks the start-info page,
//! sets up the heap, the logger and the callbacks, runs the guest's `main`
//! (named by [`crate::entry!`]) and shuts down with its exit code.
#![allow(unsafe_code)]

use core::alloc::{GlobalAlloc, Layout};
use core::panic::PanicInfo;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use hypercall_abi::layout::{self, SHARED_INFO_VA, START_INFO_MAGIC, WINDOW_BASE};
use hypercall_abi::{abi_compatible, ABI_VERSION, PAGE_SIZE};

use crate::sched::{self, ShutdownReason};
use crate::start::{self, StartInfo};
use crate::upcall::CALLBACK_STACK_SIZE;
use crate::{arch, console, event, paging, println, trap};

unsafe extern "Rust" {
    /// The guest's `main`, defined by `entry!` in the binary. A link error
    /// naming this symbol means the guest forgot `guest_sdk::entry!(main);`.
    safe fn __tahoma_guest_main(start_info: &StartInfo) -> i32;
}

/// The callback stack (`TRAP-0`): in `.bss`, so it exists however small
/// the heap is. Only its address is taken; the hypervisor and the entries
/// write it, Rust never makes a reference to it.
#[repr(C, align(16))]
struct CallbackStack([u8; CALLBACK_STACK_SIZE]);

static mut CALLBACK_STACK: CallbackStack = CallbackStack([0; CALLBACK_STACK_SIZE]);

/// Prints `why` and shuts down: start-up cannot go on.
fn fail(why: core::fmt::Arguments<'_>) -> ! {
    println!("guest-sdk: cannot start: {why}");
    sched::shutdown(ShutdownReason::Crash, 1)
}

/// Called by `_start` with the start-info address from `rdi`.
pub(crate) extern "C" fn start(si: *const layout::StartInfo) -> ! {
    if si.is_null() || (si as usize) & (PAGE_SIZE - 1) != 0 {
        fail(format_args!("start info at {si:p} is not a page"));
    }
    // MEM-3: `rdi` is the start-info page, mapped readable for the domain's
    // life; page-aligned (checked), and a `StartInfo` fits in a page.
    // SAFETY: `si` is readable for a whole `StartInfo` (MEM-3, page-aligned
    // as checked); `StartInfo` is plain data (any bit pattern valid) and is
    // copied out once. A plain read, not a volatile one: the page is
    // read-only to the domain and the hypervisor wrote it before the
    // domain's first instruction, and a volatile read of the 3.7 KiB struct
    // is compiled field by field, byte by byte for its arrays (~3 x the
    // instructions of a `memcpy`; `guest_start.run` in docs/benchmarks.md).
    let raw = unsafe { core::ptr::read(si) };
    if raw.magic != START_INFO_MAGIC {
        fail(format_args!("bad start-info magic {:02x?}", raw.magic));
    }
    if !abi_compatible(ABI_VERSION, raw.abi_version) {
        fail(format_args!(
            "built for ABI {:#x}, hypervisor speaks {:#x}",
            ABI_VERSION, raw.abi_version
        ));
    }
    let reported = crate::abi_version();
    if reported != raw.abi_version {
        fail(format_args!(
            "abi_version() = {reported:#x} but the start info says {:#x}",
            raw.abi_version
        ));
    }
    if raw.window_base != WINDOW_BASE || raw.shared_info_va != SHARED_INFO_VA {
        fail(format_args!(
            "window at {:#x}, shared info at {:#x}: the SDK expects {WINDOW_BASE:#x}, {SHARED_INFO_VA:#x}",
            raw.window_base, raw.shared_info_va
        ));
    }
    let si = start::install(raw);

    // The read-only self entry, for reading page tables and growing the heap.
    let paging = paging::init();
    init_heap(si);
    let level = si
        .cmdline_value("log")
        .and_then(console::parse_level)
        .unwrap_or(log::LevelFilter::Info);
    console::init_log(level);
    // Named channels (EVT-7) are connected before this domain ran, so a
    // peer may already have sent: keep those events pending (EVT-0d) until
    // the guest sets a handler with `Channel::listen`, instead of having
    // the first upcall drop them for want of one.
    for c in si.channels() {
        crate::event::mask(c.port);
    }
    // Virtual-disk channels likewise (IO-5); device ports the hypervisor
    // masked itself (IO-2).
    for v in si.vblks() {
        crate::event::mask(v.port);
    }
    // And vNIC channels (MEM-3c).
    for v in si.vnics() {
        crate::event::mask(v.port);
    }
    init_callbacks();
    if let Err(e) = paging {
        log::warn!("paging: no self entry ({e}): page tables cannot be read, the heap cannot grow");
    }

    let code = __tahoma_guest_main(si);
    sched::shutdown(ShutdownReason::Poweroff, code)
}

/// Registers the event entry and the callback stack (no trap entry until
/// the guest sets a trap handler).
fn init_callbacks() {
    let stack_top = (&raw mut CALLBACK_STACK) as u64 + CALLBACK_STACK_SIZE as u64;
    let (event_entry, trap_entry) = (arch::event_entry(), arch::trap_entry());
    trap::init(event_entry, trap_entry, stack_top);
    // SAFETY: the event entry is the SDK's assembly stub, which follows
    // TRAP-0; the stack is the dedicated, 16-aligned CALLBACK_STACK of
    // exactly CALLBACK_STACK_SIZE bytes, used for nothing else.
    if let Err(e) = unsafe { crate::upcall::set_callbacks(event_entry, 0, stack_top) } {
        fail(format_args!("set_callbacks: {e}"));
    }
}

/// The heap: `linked_list_allocator` over the window's free pages and, when
/// those are exhausted, over pages the SDK populates and maps from
/// [`paging::HEAP_GROW_BASE`] up (within `max_pages`). Locked with upcalls
/// masked so an event handler that allocates cannot find the lock held by
/// the code it interrupted.
struct Heap(spin::Mutex<HeapState>);

struct HeapState {
    /// The window's free pages (`MEM-2`).
    window: linked_list_allocator::Heap,
    /// The growth region, `[HEAP_GROW_BASE, grown_top)`.
    grown: linked_list_allocator::Heap,
    /// End of the mapped growth region.
    grown_top: u64,
    /// Used to map the growth region (a batch per growth).
    mapper: paging::Mapper,
}

#[global_allocator]
static HEAP: Heap = Heap(spin::Mutex::new(HeapState {
    window: linked_list_allocator::Heap::empty(),
    grown: linked_list_allocator::Heap::empty(),
    grown_top: paging::HEAP_GROW_BASE,
    mapper: paging::Mapper::new(),
}));

/// Smallest growth, in pages (fewer hypercalls for many small allocations).
const GROW_MIN_PAGES: u64 = 16;

impl HeapState {
    fn allocate(&mut self, layout: Layout) -> *mut u8 {
        if let Ok(p) = self.window.allocate_first_fit(layout) {
            return p.as_ptr();
        }
        if self.grown.size() > 0 {
            if let Ok(p) = self.grown.allocate_first_fit(layout) {
                return p.as_ptr();
            }
        }
        if self.grow(layout) {
            if let Ok(p) = self.grown.allocate_first_fit(layout) {
                return p.as_ptr();
            }
        }
        core::ptr::null_mut()
    }

    /// Maps more pages at `grown_top` for an allocation of `layout`; false
    /// when the reservation (or the region) is exhausted.
    fn grow(&mut self, layout: Layout) -> bool {
        if !paging::ready() {
            return false;
        }
        let page = PAGE_SIZE as u64;
        // Room for the block, its alignment and the allocator's hole record.
        let need = (layout.size() as u64 + layout.align() as u64 + 64).div_ceil(page);
        let Ok((owned, max)) = paging::memory_info() else {
            return false;
        };
        let room = (paging::HEAP_GROW_TOP - self.grown_top) / page;
        let mut pages = need.max(GROW_MIN_PAGES).min(room);
        // Tables: an L1 per 2 MiB started, an L2 for the region's first GiB.
        let tables = |n: u64| n.div_ceil(512) + 2;
        let avail = max.saturating_sub(owned);
        while pages > need && pages + tables(pages) > avail {
            pages -= 1;
        }
        if pages < need || pages + tables(pages) > avail {
            return false;
        }
        let mut mapped = 0u64;
        let mut frames = [0u64; crate::usize_const(paging::MEMORY_BATCH_MAX)];
        while mapped < pages {
            let n = usize::try_from((pages - mapped).min(paging::MEMORY_BATCH_MAX))
                .unwrap_or(frames.len());
            let chunk = &mut frames[..n];
            if paging::populate(chunk).is_err() {
                break;
            }
            let base = self.grown_top + mapped * page;
            let mut ok = true;
            for (i, &mfn) in chunk.iter().enumerate() {
                // SAFETY: the growth region above `grown_top` holds nothing;
                // only this heap maps it, under the heap lock.
                let r = unsafe {
                    self.mapper
                        .map_unchecked(base + i as u64 * page, mfn, paging::Flags::WRITABLE)
                };
                if r.is_err() {
                    ok = false;
                    break;
                }
            }
            if ok && self.mapper.flush().is_err() {
                ok = false;
            }
            if !ok {
                let _ = self.mapper.flush();
                for i in 0..n as u64 {
                    // SAFETY: `unmap_unchecked` requires nothing Rust
                    // reaches at `base + i * page`: these growth-region
                    // pages were mapped just now and never handed out.
                    let _ = unsafe { self.mapper.unmap_unchecked(base + i * page) };
                }
                let _ = self.mapper.flush();
                let _ = paging::release(chunk);
                break;
            }
            mapped += n as u64;
        }
        if mapped == 0 {
            return false;
        }
        let Ok(bytes) = usize::try_from(mapped * page) else {
            return false;
        };
        if self.grown.size() == 0 {
            // SAFETY: `[HEAP_GROW_BASE, + bytes)` was just mapped read-write
            // to fresh, zeroed frames of ours and is used by nothing else.
            unsafe { self.grown.init(paging::HEAP_GROW_BASE as *mut u8, bytes) };
        } else {
            // SAFETY: the pages right above the growth heap's top were just
            // mapped as above.
            unsafe { self.grown.extend(bytes) };
        }
        self.grown_top += mapped * page;
        mapped >= need
    }
}

// SAFETY: allocation is delegated to `linked_list_allocator::Heap`, which
// returns blocks that fit `layout` and are not in use; the lock serialises
// it, and masking upcalls around the lock keeps an upcall from re-entering.
// A block is given back to the heap whose range holds it.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        event::without_upcalls(|| self.0.lock().allocate(layout))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            event::without_upcalls(|| {
                let mut h = self.0.lock();
                let addr = ptr.as_ptr() as u64;
                let grown = (paging::HEAP_GROW_BASE..h.grown_top).contains(&addr);
                // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` on
                // this heap with this `layout`, hence from the part whose
                // range holds it.
                unsafe {
                    if grown {
                        h.grown.deallocate(ptr, layout)
                    } else {
                        h.window.deallocate(ptr, layout)
                    }
                }
            });
        }
    }
}

/// Pages below the initial stack (`MEM-2d`: `INITIAL_STACK_PAGES`, 4) that
/// the SDK keeps out of its heap for the stack to grow into: with them a
/// guest's main stack is 64 KiB, as it was when the ABI's initial stack
/// was 16 pages. In a small window it keeps at most half the free pages.
pub const STACK_RESERVE_PAGES: u64 = 12;

/// The lowest page the SDK leaves to the main stack: the initial stack
/// (`stack_first_page ..`, MEM-2d) and the reserve below it
/// ([`STACK_RESERVE_PAGES`], at most half the free pages). The heap ends
/// here.
pub fn stack_floor_page(si: &StartInfo) -> u64 {
    let (first, stack) = (si.first_free_page, si.stack_first_page);
    stack - STACK_RESERVE_PAGES.min(stack.saturating_sub(first) / 2)
}

/// Gives the heap the pages `[first_free_page, stack_first_page)`
/// (`MEM-2`), less the stack's reserve below the initial stack
/// ([`STACK_RESERVE_PAGES`]).
fn init_heap(si: &StartInfo) {
    let (first, stack) = (si.first_free_page, si.stack_first_page);
    if first > stack || stack > si.nr_pages {
        fail(format_args!(
            "free pages {first}..{stack} do not fit the window of {} pages",
            si.nr_pages
        ));
    }
    let stack = stack_floor_page(si);
    let bottom = si.page_va(first);
    let Ok(size) = usize::try_from((stack - first) * PAGE_SIZE as u64) else {
        fail(format_args!("heap too large"));
    };
    if size == 0 {
        return;
    }
    // SAFETY: MEM-2: the pages from first_free_page up to stack_first_page
    // are mapped read-write, hold nothing (scrubbed), and are left to the
    // guest; nothing else in the SDK or the guest uses them. Called once.
    unsafe { HEAP.0.lock().window.init(bottom as *mut u8, size) };
}

/// Heap usage: `(used, free)` bytes, over the window and the growth region.
pub fn heap_usage() -> (usize, usize) {
    event::without_upcalls(|| {
        let h = HEAP.0.lock();
        let (gu, gf) = if h.grown.size() > 0 {
            (h.grown.used(), h.grown.free())
        } else {
            (0, 0)
        };
        (h.window.used() + gu, h.window.free() + gf)
    })
}

/// Bytes the heap has grown by beyond the window (mapped from
/// [`paging::HEAP_GROW_BASE`]).
pub fn heap_grown() -> usize {
    event::without_upcalls(|| {
        usize::try_from(HEAP.0.lock().grown_top - paging::HEAP_GROW_BASE).unwrap_or(usize::MAX)
    })
}

static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::AcqRel) {
        let _ = console::write_str("panicked while panicking\n");
        sched::shutdown(ShutdownReason::Crash, 1);
    }
    match info.location() {
        Some(l) => println!(
            "panicked at {}:{}:{}: {}",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        ),
        None => println!("panicked: {}", info.message()),
    }
    sched::shutdown(ShutdownReason::Crash, 1)
}
