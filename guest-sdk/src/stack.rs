//! The main stack's reserve mapped on demand, below a guard page (issue 13).
//!
//! The initial stack is the window's top `INITIAL_STACK_PAGES` pages
//! (MEM-2d); the SDK keeps [`crate::STACK_RESERVE_PAGES`] more below it out
//! of its heap (`guest_sdk::stack_floor_page`). Those pages are mapped like
//! every page of the window, so a stack that runs past the reserve goes on
//! into the heap's top unnoticed. [`grow_on_demand`] changes that for this
//! domain: the lowest page of the reserve becomes a guard page and the rest
//! are unmapped; a page fault in the reserve maps that page's own frame
//! back (one `update_va_mapping`, counted by [`grown_pages`]) and the code
//! resumes; a fault on the guard page is a stack overflow, reported as such,
//! and the domain shuts down with reason `crash` (its peers run on).
//!
//! It needs the SDK's trap entry: if no trap handler is set,
//! [`grow_on_demand`] sets one that gives up on every other exception
//! (`TrapAction::Crash`: a fault report, then `crash`) instead of the
//! hypervisor destroying the domain (TRAP-0c). A guest's own handler set
//! later keeps the stack growing (the SDK asks first); `trap::clear_handler`
//! ends it.

use core::sync::atomic::{AtomicU64, Ordering};

use hypercall_abi::layout::{UpcallFrame, UpcallKind};
use hypercall_abi::pte::{NX, PRESENT, USER, WRITABLE};
use hypercall_abi::Error;

use crate::trap::TrapAction;

/// The guard page's address; 0 until [`grow_on_demand`] ran.
static GUARD: AtomicU64 = AtomicU64::new(0);
/// One past the reserve: the initial stack's first page.
static TOP: AtomicU64 = AtomicU64::new(0);
/// Reserve pages mapped back on a fault so far.
static GROWN: AtomicU64 = AtomicU64::new(0);

const PAGE: u64 = 4096;
/// The page-fault vector; the error code's "page present" bit.
const PF: u64 = 14;
const PF_PRESENT: u64 = 1;

/// Makes the main stack's reserve grow on demand below a guard page (see
/// the module). Returns the pages that may grow (the reserve less the
/// guard). Refused with `WrongState` when it already ran, and when the
/// window leaves no reserve of two pages or more; an error of
/// `update_va_mapping` is returned as it is (the pages unmapped so far are
/// mapped back on a fault all the same).
pub fn grow_on_demand() -> Result<u64, Error> {
    let (floor, top) = reserve_pages()?;
    if top < floor + 2 || GUARD.load(Ordering::Acquire) != 0 {
        return Err(Error::WrongState);
    }
    let si = crate::start_info();
    // The handler is in place before any page goes.
    if !crate::trap::has_handler() {
        crate::trap::set_handler(|_| TrapAction::Crash)?;
    }
    TOP.store(si.page_va(top), Ordering::Release);
    GUARD.store(si.page_va(floor), Ordering::Release);
    // From the top down: the pages nearest the stack in use first, so a
    // fault while this runs finds the reserve's bounds set.
    for page in (floor..top).rev() {
        crate::mmu::update_va_mapping(si.page_va(page), 0, true)?;
    }
    Ok(top - floor - 1)
}

/// Reserve pages mapped back on a fault so far (0 before the stack first
/// reaches below the initial stack).
pub fn grown_pages() -> u64 {
    GROWN.load(Ordering::Acquire)
}

/// The SDK's floor of the main stack and the initial stack's first page.
#[cfg(target_os = "none")]
fn reserve_pages() -> Result<(u64, u64), Error> {
    let si = crate::start_info();
    Ok((crate::stack_floor_page(si), si.stack_first_page))
}

/// Host build: no window.
#[cfg(not(target_os = "none"))]
fn reserve_pages() -> Result<(u64, u64), Error> {
    Err(Error::WrongState)
}

/// The trap entry asks here first: a not-present page fault in the reserve
/// maps the page back (`Resume`), one on the guard page is a stack overflow
/// (`Crash`, after a report); `None` for everything else.
///
/// The tests that let every other trap through are inline (a call here
/// cost each reflected fault ~10 instructions); the rest is out of line.
#[inline(always)]
pub(crate) fn on_fault(frame: &UpcallFrame) -> Option<TrapAction> {
    let guard = GUARD.load(Ordering::Acquire);
    if guard == 0
        || frame.kind != UpcallKind::Trap as u64
        || frame.vector != PF
        || frame.error_code & PF_PRESENT != 0
    {
        return None;
    }
    reserve_fault(frame, guard)
}

/// [`on_fault`] of a not-present page fault while the stack grows on
/// demand (`guard` set).
#[inline(never)]
fn reserve_fault(frame: &UpcallFrame, guard: u64) -> Option<TrapAction> {
    let top = TOP.load(Ordering::Acquire);
    let va = frame.cr2 & !(PAGE - 1);
    if va == guard {
        crate::println!(
            "stack overflow: the main stack ran past its reserve of {} pages into the guard page at {:#x} (rip={:#x} rsp={:#x}); stopping",
            (top - guard) / PAGE - 1,
            guard,
            frame.rip,
            frame.rsp
        );
        return Some(TrapAction::Crash);
    }
    if !(guard + PAGE..top).contains(&va) {
        return None;
    }
    let si = crate::start_info();
    let page = (va - si.window_base) / PAGE;
    let mfn = crate::paging::page_mfn(page)?;
    // The page's own frame, as the hypervisor mapped it at start (MEM-2d:
    // read+write, no-execute).
    let leaf = (mfn << 12) | PRESENT | WRITABLE | USER | NX;
    match crate::mmu::update_va_mapping(va, leaf, true) {
        Ok(()) => {
            GROWN.fetch_add(1, Ordering::AcqRel);
            Some(TrapAction::Resume)
        }
        Err(e) => {
            crate::println!("stack: cannot map the reserve page {va:#x} back: {e}; stopping");
            Some(TrapAction::Crash)
        }
    }
}
