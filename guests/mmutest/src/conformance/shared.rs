//! MEM-2e: the read-only pages of this image (its text and rodata) are one
//! copy shared with the victim, which runs the same image. They are listed
//! in our frame list but are not ours: mapped read-only they read as our
//! code; anything else (writable, as a table, pinned, released, granted,
//! asked about) is refused with `permission_denied` and changes nothing.
//! The victim answering the canary afterwards shows its code still runs.

use alloc::format;

use guest_sdk::abi::grant::{CopyOp, CopyPtr};
use guest_sdk::abi::layout::WINDOW_BASE;
use guest_sdk::event::DomId;
use guest_sdk::grant;
use guest_sdk::paging::{self, entry_ptr, index, leaf_entry, table_entry, Flags, Level};
use guest_sdk::Error;

use super::{check, ok, refused, Lab, Outcome, LAB, W};
use crate::lab::update1;

/// The lab slot the shared page is mapped at.
const SLOT: usize = 50;

/// A checksum of the page at `va` (read through a mapping that exists).
fn sum(va: u64) -> u64 {
    (0..512u64).fold(0u64, |acc, i| {
        // SAFETY: `va` is page aligned and mapped readable for the whole
        // page (our own code page, or the lab slot just mapped to it).
        let w = unsafe { core::ptr::read_volatile((va + i * 8) as *const u64) };
        acc.rotate_left(7) ^ w
    })
}

pub fn mem_2e(l: &Lab) -> Outcome {
    // The page holding this function: executable, no writable segment.
    let code_va = (mem_2e as *const () as u64) & !0xfff;
    let page = (code_va - WINDOW_BASE) / 4096;
    let list = paging::frame_list();
    let shared = *list
        .get(page as usize)
        .ok_or_else(|| format!("page {page} beyond the frame list"))?;
    let before = sum(code_va);
    // Listed, but not ours: mmu_frame_info answers only for our frames.
    check(
        paging::frame_info(shared) == Err(Error::PermissionDenied),
        || format!("frame_info of the shared page {shared:#x}: want permission_denied"),
    )?;
    let (va, ptr) = (l.slot_va(SLOT), l.slot_ptr(SLOT));
    let ws = [l.slot(SLOT), W::F(l.lab_l1)];
    // Writable: refused, through either path.
    refused("map it writable", Error::PermissionDenied, &ws, || {
        update1(ptr, leaf_entry(shared, Flags::WRITABLE))
    })?;
    refused(
        "update_va_mapping writable",
        Error::PermissionDenied,
        &ws,
        || paging::update_va_mapping(va, leaf_entry(shared, Flags::WRITABLE), true),
    )?;
    // Read-only: it reads as our code.
    ok(
        "map it read-only",
        update1(ptr, leaf_entry(shared, Flags::READ_ONLY)),
    )?;
    let through = sum(va);
    // A read-only mapping does not become writable by a flags-only update.
    let ws = [l.slot(SLOT), W::F(l.lab_l1)];
    refused(
        "make the mapping writable",
        Error::PermissionDenied,
        &ws,
        || update1(ptr, leaf_entry(shared, Flags::WRITABLE)),
    )?;
    ok("unmap it", update1(ptr, 0))?;
    check(through == before, || {
        format!("the shared page reads {through:#x} mapped, {before:#x} as our code")
    })?;
    // Never a page table, a root, a hold, a grant (ring pages are granted
    // frames), or a frame to give back.
    let ws = [W::E(LAB + (2 << 21), Level::L2)];
    refused("link it as an L1", Error::PermissionDenied, &ws, || {
        update1(
            entry_ptr(l.lab_l2, index(LAB, Level::L2) + 2),
            table_entry(shared),
        )
    })?;
    for lv in [Level::L1, Level::L2, Level::L3, Level::L4] {
        refused(
            &format!("pin as {lv:?}"),
            Error::PermissionDenied,
            &[],
            || paging::pin(shared, lv),
        )?;
    }
    refused("unpin it", Error::PermissionDenied, &[], || {
        paging::unpin(shared)
    })?;
    refused(
        "switch to it",
        Error::PermissionDenied,
        &[W::F(l.l4)],
        || paging::switch_root(shared),
    )?;
    refused(
        "update an entry in it",
        Error::PermissionDenied,
        &[],
        || update1(entry_ptr(shared, 0), 0),
    )?;
    let own = ok("populate", paging::populate_one())?;
    refused("release it", Error::PermissionDenied, &[W::F(own)], || {
        paging::release(&[shared])
    })?;
    refused(
        "release it among ours",
        Error::PermissionDenied,
        &[W::F(own)],
        || paging::release(&[own, shared]),
    )?;
    // grant_copy (GNT-5): a source it may read, never a destination.
    let mut ops = [
        CopyOp {
            src: CopyPtr::own(shared, 0),
            dst: CopyPtr::own(own, 0),
            len: 4096,
            status: 0,
        },
        CopyOp {
            src: CopyPtr::own(own, 0),
            dst: CopyPtr::own(shared, 0),
            len: 8,
            status: 0,
        },
    ];
    // SAFETY: `own` was just populated and is not mapped: no Rust object
    // lives in it; the second element (into the shared page) must be
    // refused, and is checked below with our code page's checksum.
    ok("grant_copy", unsafe { grant::copy_unchecked(&mut ops) })?;
    check(ops[0].result().is_ok(), || {
        format!("grant_copy from the shared page: {:?}", ops[0].result())
    })?;
    check(ops[1].result() == Err(Error::PermissionDenied), || {
        format!(
            "grant_copy into the shared page: {:?}, want permission_denied",
            ops[1].result()
        )
    })?;
    ok(
        "map the copy",
        update1(ptr, leaf_entry(own, Flags::READ_ONLY)),
    )?;
    let copied = sum(va);
    ok("unmap the copy", update1(ptr, 0))?;
    check(copied == before, || {
        format!("grant_copy of the shared page gave {copied:#x}, want {before:#x}")
    })?;
    ok("release ours", paging::release(&[own]))?;
    for ro in [true, false] {
        refused(
            &format!("grant it (readonly={ro})"),
            Error::PermissionDenied,
            &[],
            || grant::grant_access(shared, DomId(crate::VICTIM), ro),
        )?;
    }
    let after = sum(code_va);
    check(after == before, || {
        format!("our code page changed: {before:#x} -> {after:#x}")
    })?;
    Ok(format!(
        "page {page} (mfn {shared:#x}): read-only map reads as our code; writable (mmu_update, update_va_mapping), \
         table, pin, unpin, switch, update in it, release, grant, copy into, frame_info: permission_denied, nothing changed; copy from: ok"
    ))
}
