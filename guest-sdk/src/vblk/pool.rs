//! The persistent pages a [`super::Vblk`] grants its backend (`BLK-2b`)
//! and the ring page: memory the backend may write at any moment, so this
//! side never makes a Rust reference to it, only the raw copies here.

use super::device::{PageBytes, PAGE};
use super::*;

/// A persistent page (`BLK-2b`): a leaked, page-aligned [`PageBytes`] box
/// granted writable to the backend, which may write it at any time, so this
/// side never makes a Rust reference to it: only word-wise volatile copies
/// in and out ([`pool_put`], [`pool_get`]).
#[derive(Debug)]
pub(super) struct PoolPage {
    pub(super) va: u64,
    pub(super) gref: u32,
}

/// Allocates and grants [`POOL_PAGES`] persistent pages writable to
/// `backend` (`BLK-2b`); fewer (logged) if memory or grants run out: the
/// requests that find no free page then grant their own frames.
pub(super) fn grant_pool(backend: u16, index: u32) -> Vec<PoolPage> {
    let mut pool = Vec::new();
    for _ in 0..POOL_PAGES {
        let va = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(PageBytes([0; PAGE]))) as u64;
        let Some((mfn, _)) = crate::paging::translate(va) else {
            log::warn!(
                "vblk {index}: persistent page not translatable; using {} pages",
                pool.len()
            );
            break;
        };
        match crate::grant::grant_access(mfn, DomId(backend), false) {
            Ok(g) => pool.push(PoolPage { va, gref: g.0 }),
            Err(e) => {
                // Never granted: the page can go back.
                pool_free(PoolPage { va, gref: 0 });
                log::warn!(
                    "vblk {index}: persistent grant refused ({e}); using {} pages",
                    pool.len()
                );
                break;
            }
        }
    }
    pool
}

/// Copies `src` into persistent page `p` at `off` (both multiples of 8
/// bytes; anything else is ignored, never out of the page).
pub(super) fn pool_put(p: &PoolPage, off: usize, src: &[u8]) {
    if !off.is_multiple_of(8) || !src.len().is_multiple_of(8) || off + src.len() > PAGE {
        return;
    }
    shared_copy(
        src.as_ptr(),
        (p.va as *mut u8).wrapping_add(off),
        src.len() / 8,
    );
}

/// Copies persistent page `p` at `off` into `dst` (as [`pool_put`]).
pub(super) fn pool_get(p: &PoolPage, off: usize, dst: &mut [u8]) {
    if !off.is_multiple_of(8) || !dst.len().is_multiple_of(8) || off + dst.len() > PAGE {
        return;
    }
    shared_copy(
        (p.va as *const u8).wrapping_add(off),
        dst.as_mut_ptr(),
        dst.len() / 8,
    );
}

/// Copies `words` 8-byte words from `src` to `dst` with one `rep movsq`,
/// one side being a persistent page the backend may write at any moment:
/// the copy is opaque to the compiler (like a volatile access, it assumes
/// nothing about that memory), and the data is never trusted. A quarter
/// of the instructions of a word-wise volatile loop.
#[allow(unsafe_code)]
fn shared_copy(src: *const u8, dst: *mut u8, words: usize) {
    // SAFETY: both callers checked that the persistent-page side lies
    // inside its page (a leaked, live `Box<PageBytes>` no Rust reference
    // reaches, valid for reads and writes until `pool_free`), and the other
    // side is a slice of exactly `words * 8` bytes borrowed by the caller
    // (shared for `src`, unique for `dst`), so the ranges do not overlap;
    // `rep movsq` with DF clear (the ABI's state at any call) copies
    // forwards and touches nothing else; rcx, rsi, rdi are clobbered.
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rcx") words => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
    }
}

/// Gives a persistent page back to the heap: it must no longer be granted.
#[allow(unsafe_code)]
pub(super) fn pool_free(p: PoolPage) {
    // SAFETY: `p.va` came from `Box::into_raw` of a `Box<PageBytes>` in
    // `grant_pool` and is freed once (`p` is consumed); its grant is
    // revoked (or was never made), so no one else may write it any more.
    drop(unsafe { alloc::boxed::Box::from_raw(p.va as *mut PageBytes) });
}

/// The ring page at `va` (a leaked, page-aligned [`PageBytes`] box this
/// module never references).
#[allow(unsafe_code)]
pub(super) fn ring_page(va: u64) -> Option<RingPage> {
    // SAFETY: `va` is a leaked `Box<PageBytes>` (page-aligned, writable,
    // never freed, so mapped for the domain's life) that no Rust reference
    // reaches: only its raw pointer was kept, and `RingPage`'s atomic and
    // volatile accesses are the only ones made to it.
    unsafe { RingPage::new(va as *mut u8) }
}
