//! TRAP-0d: the callback stack's translation the hypervisor remembers
//! between upcalls, and every way the stack's mapping can change under it.

use super::*;

/// Replaces the L1 table that maps `region`'s 2 MiB with a copy of it in
/// a fresh frame in which `page` maps `frame` (writable): the copy is
/// written through a view that is unmapped again (and left out of the
/// copy), then installed by `mmu_update` of the region's L2 entry. Only
/// the L2 entry changes; the old L1 still holds the old entry for `page`.
fn swap_l1(region: u64, page: u64, frame: u64) -> Result<(), Error> {
    use guest_sdk::abi::mmu::MmuUpdate;
    use guest_sdk::paging::{self, entry_ptr, index, leaf_entry, table_entry, Flags, Level};
    let base = region & !0x1f_ffff;
    let view = base + 0x12_000;
    let l1 = guest_sdk::memory::populate_one()?;
    paging::map(view, l1, Flags::WRITABLE)?;
    for i in 0..512u64 {
        let va = base + i * 4096;
        let e = if va == page {
            leaf_entry(frame, Flags::WRITABLE)
        } else if va == view {
            0
        } else {
            paging::read_entry(va, Level::L1).unwrap_or(0)
        };
        // SAFETY: `view` maps `l1`, a fresh frame of ours, writable; i < 512.
        unsafe { ((view + i * 8) as *mut u64).write_volatile(e) };
    }
    paging::unmap(view)?;
    let l2 = paging::table_mfn(base, Level::L2).ok_or(Error::NotFound)?;
    guest_sdk::mmu::update(&[MmuUpdate {
        ptr: entry_ptr(l2, index(base, Level::L2)),
        val: table_entry(l1),
    }])?;
    guest_sdk::mmu::flush_tlb()
}

/// Builds and pins another root, the loaded one's copy but for the tables
/// on `region`'s path (L3, L2, L1: fresh copies) in which `page` maps
/// `frame` (writable). Each copy is written through a view in the region
/// that is unmapped again (and left out of the L1 copy). Returns the new
/// tables, the L4 first (pinned; the caller unpins and releases them).
fn other_root(region: u64, page: u64, frame: u64) -> Result<[u64; 4], Error> {
    use guest_sdk::paging::{
        self, index, leaf_entry, self_entry, table_entry, Flags, Level, RECURSIVE_SLOT,
    };
    let base = region & !0x1f_ffff;
    let view = base + 0x12_000;
    let mut t = [0u64; 4];
    guest_sdk::memory::populate(&mut t)?;
    let [n4, n3, n2, n1] = t;
    let l1: Vec<u64> = (0..512u64)
        .map(|i| {
            let va = base + i * 4096;
            if va == page {
                leaf_entry(frame, Flags::WRITABLE)
            } else if va == view {
                0
            } else {
                paging::read_entry(va, Level::L1).unwrap_or(0)
            }
        })
        .collect();
    let (b2, b3) = (region & !0x3fff_ffff, region & !0x7f_ffff_ffff);
    let l2: Vec<u64> = (0..512u64)
        .map(|i| {
            let va = b2 + (i << 21);
            if va == base {
                table_entry(n1)
            } else {
                paging::read_entry(va, Level::L2).unwrap_or(0)
            }
        })
        .collect();
    let l3: Vec<u64> = (0..512u64)
        .map(|i| {
            let va = b3 + (i << 30);
            if va == b2 {
                table_entry(n2)
            } else {
                paging::read_entry(va, Level::L3).unwrap_or(0)
            }
        })
        .collect();
    let slot = index(region, Level::L4);
    let l4: Vec<u64> = (0..256usize)
        .map(|i| {
            if i == slot {
                table_entry(n3)
            } else if i as u64 == RECURSIVE_SLOT {
                self_entry(n4)
            } else {
                paging::read_root_slot(i).unwrap_or(0)
            }
        })
        .collect();
    for (m, entries) in [(n1, &l1), (n2, &l2), (n3, &l3), (n4, &l4)] {
        paging::map(view, m, Flags::WRITABLE)?;
        for (i, &e) in entries.iter().enumerate() {
            // SAFETY: `view` maps `m`, a fresh frame of ours, writable;
            // i < 512.
            unsafe { ((view + i as u64 * 8) as *mut u64).write_volatile(e) };
        }
        paging::unmap(view)?;
    }
    paging::pin(n4, Level::L4)?;
    Ok(t)
}

/// TRAP-0d (run in the `traps` phase): the hypervisor remembers the
/// callback stack's translation between upcalls; every change to the
/// mapping must void it. The stack's top page is moved between two frames
/// of ours (by `update_va_mapping`, then by `mmu_update`, then by replacing
/// the L1 table above it through its L2 entry, then by loading another
/// root whose tables map it elsewhere, then by clearing its entry and
/// filling it again) between upcalls: each frame
/// must land in the frame mapped *now*, and the frame mapped before must
/// keep every word of the secret we filled it with.
pub fn trap_0d(fsize: u64) {
    use guest_sdk::paging::{self, leaf_entry, Flags, MAP_BASE};
    clause(
        "TRAP-0d",
        "upcall frames follow the stack's mapping",
        |ck| {
            const CB: u64 = MAP_BASE + 0xe0_0000;
            const TOP: u64 = CB + 4 * 4096;
            const TOP_PAGE: u64 = TOP - 4096;
            // Our views of the two candidate frames.
            const VIEW: [u64; 2] = [CB + 0x10_000, CB + 0x11_000];
            const SECRET: u64 = 0x5EC2_E7C0_FFEE_0D0D;
            let mut f = [0u64; 5];
            if let Err(e) = guest_sdk::memory::populate(&mut f) {
                ck.t(false, &format!("populate: {e}"));
                return;
            }
            let [lo0, lo1, lo2, fa, fb] = f;
            let mapped = [
                (CB, lo0),
                (CB + 4096, lo1),
                (CB + 8192, lo2),
                (TOP_PAGE, fa),
                (VIEW[0], fa),
                (VIEW[1], fb),
            ]
            .iter()
            .all(|&(va, mfn)| paging::map(va, mfn, Flags::WRITABLE).is_ok());
            ck.t(mapped, "mapping the stack and the views");
            let word = |view: u64, i: u64| -> u64 {
                // SAFETY: `view` is one of the two pages mapped above, i < 512.
                unsafe { ((view + i * 8) as *const u64).read_volatile() }
            };
            let fill = |view: u64| {
                for i in 0..512 {
                    // SAFETY: as above; nothing Rust reaches lives there.
                    unsafe { ((view + i * 8) as *mut u64).write_volatile(SECRET) };
                }
            };
            let intact = |view: u64| (0..512).all(|i| word(view, i) == SECRET);
            let (a, b) = loopback();
            up::EV_CLEAR[0].store(b, SeqCst);
            ck.eq(
                "register the mapped stack",
                set_callbacks(arch::event_entry(), arch::trap_entry(), TOP),
                Ok(0),
            );
            let off = (TOP - fsize) & 0xfff;
            // The frame as delivered must be in the frame behind `view`.
            let landed = |ck: &mut Ck, what: &str, view: u64| {
                let rec = arch::frame_words(&up::recorded(&up::EV_FRAME));
                let held: Vec<u64> = (0..22).map(|i| word(view, off / 8 + i)).collect();
                ck.eq(
                    &format!("{what}: frame address"),
                    up::EV_ADDR.load(SeqCst),
                    TOP - fsize,
                );
                ck.t(
                    held[..] == rec[..],
                    &format!("{what}: frame not in the mapped frame"),
                );
            };
            // 1. Warm: the translation is remembered now.
            let n = up::EV_COUNT.load(SeqCst);
            let _ = send(a);
            ck.eq("first upcall", up::EV_COUNT.load(SeqCst), n + 1);
            landed(ck, "first", VIEW[0]);
            // 2. update_va_mapping moves the top page to fb.
            fill(VIEW[0]);
            ck.eq(
                "update_va_mapping to the second frame",
                guest_sdk::mmu::update_va_mapping(TOP_PAGE, leaf_entry(fb, Flags::WRITABLE), true),
                Ok(()),
            );
            let _ = send(a);
            ck.eq("second upcall", up::EV_COUNT.load(SeqCst), n + 2);
            landed(ck, "after update_va_mapping", VIEW[1]);
            ck.t(
                intact(VIEW[0]),
                "the old frame was written after update_va_mapping",
            );
            // 3. mmu_update (the SDK's map) moves it back to fa.
            fill(VIEW[1]);
            ck.eq(
                "mmu_update back to the first frame",
                paging::map(TOP_PAGE, fa, Flags::WRITABLE),
                Ok(()),
            );
            let _ = send(a);
            ck.eq("third upcall", up::EV_COUNT.load(SeqCst), n + 3);
            landed(ck, "after mmu_update", VIEW[0]);
            ck.t(
                intact(VIEW[1]),
                "the old frame was written after mmu_update",
            );
            // 4. The read of upcall_return: the frame just written (and read
            // back) in fa is remembered; move the page to fb, put a copy of a
            // live frame in both (rax = a different mark in each) and return
            // with the stack's address from an upcall on our own stack. The
            // interrupted send must return fb's mark: the frame mapped now.
            ck.eq(
                "register our own stack",
                set_callbacks(
                    arch::event_entry(),
                    arch::trap_entry(),
                    crate::own_stack_top(),
                ),
                Ok(0),
            );
            ck.eq(
                "update_va_mapping to the second frame again",
                guest_sdk::mmu::update_va_mapping(TOP_PAGE, leaf_entry(fb, Flags::WRITABLE), true),
                Ok(()),
            );
            up::EV_ELSEWHERE[0].store(VIEW[0] + off, SeqCst);
            up::EV_ELSEWHERE[1].store(VIEW[1] + off, SeqCst);
            up::EV_ELSEWHERE[2].store(TOP - fsize, SeqCst);
            up::EV_RET_FAIL.store(0, SeqCst);
            up::EV_MODE.store(up::EV_RETURN_ELSEWHERE, SeqCst);
            ck.eq(
                "upcall_return read the frame mapped now",
                send(a),
                Ok(up::EV_MARKS[1]),
            );
            ck.eq(
                "that upcall_return succeeded",
                up::EV_RET_FAIL.load(SeqCst),
                0,
            );
            ck.eq("fourth upcall", up::EV_COUNT.load(SeqCst), n + 4);
            // 5. Unmapped: warm the slot again (an upcall on the mapped
            // stack), unmap the page, and return from an upcall on our own
            // stack with the unmapped page's address: bad_address (TRAP-2a),
            // never a read through the remembered frame.
            ck.eq(
                "register the mapped stack again",
                set_callbacks(arch::event_entry(), arch::trap_entry(), TOP),
                Ok(0),
            );
            let _ = send(a);
            ck.eq("fifth upcall", up::EV_COUNT.load(SeqCst), n + 5);
            landed(ck, "warm again", VIEW[1]);
            ck.eq(
                "register our own stack once more",
                set_callbacks(
                    arch::event_entry(),
                    arch::trap_entry(),
                    crate::own_stack_top(),
                ),
                Ok(0),
            );
            ck.eq(
                "unmap the stack's top page",
                guest_sdk::mmu::update_va_mapping(TOP_PAGE, 0, true),
                Ok(()),
            );
            up::EV_RET_FAIL.store(0, SeqCst);
            up::EV_MODE.store(up::EV_RETURN_ELSEWHERE, SeqCst);
            ck.eq("the interrupted send", send(a), Ok(0));
            ck.err(
                "upcall_return from the unmapped page",
                up::dec(up::EV_RET_FAIL.load(SeqCst)),
                Error::BadAddress,
            );
            ck.eq("sixth upcall", up::EV_COUNT.load(SeqCst), n + 6);
            up::EV_RET_FAIL.store(0, SeqCst);
            // 6. A table above the page replaced: warm the translation on
            // the mapped stack (the page back at fa), then swap the L1 that
            // maps the region for a copy that maps the page at fb: an L2
            // entry is written, the L1 entry remembered for the page is not
            // (the old table still holds it). The next frame must land in
            // fb, and fa must keep the secret.
            ck.eq(
                "map the stack's top page again",
                paging::map(TOP_PAGE, fa, Flags::WRITABLE),
                Ok(()),
            );
            ck.eq(
                "register the mapped stack before the table swap",
                set_callbacks(arch::event_entry(), arch::trap_entry(), TOP),
                Ok(0),
            );
            let _ = send(a);
            ck.eq("seventh upcall", up::EV_COUNT.load(SeqCst), n + 7);
            landed(ck, "warm before the table swap", VIEW[0]);
            fill(VIEW[0]);
            let swapped = swap_l1(CB, TOP_PAGE, fb);
            ck.eq(
                "replace the region's L1 by mmu_update of its L2 entry",
                swapped,
                Ok(()),
            );
            let _ = send(a);
            ck.eq("eighth upcall", up::EV_COUNT.load(SeqCst), n + 8);
            landed(ck, "after the table swap", VIEW[1]);
            ck.t(
                intact(VIEW[0]),
                "the old frame was written after the table above it was replaced",
            );
            // 7. Another root (`new_baseptr`), no entry written in between:
            // a root whose tables map the page at fa (the loaded one maps it
            // at fb since step 6) is built and pinned first; then the
            // translation is warmed on the loaded root, fb filled, the new
            // root loaded. The next frame must land in fa, and fb keep the
            // secret: the remembered translation is the old root's.
            let other = other_root(CB, TOP_PAGE, fa);
            ck.t(other.is_ok(), &format!("build another root: {other:?}"));
            if let Ok(tables) = other {
                let _ = send(a);
                ck.eq("ninth upcall", up::EV_COUNT.load(SeqCst), n + 9);
                landed(ck, "warm before the root switch", VIEW[1]);
                fill(VIEW[1]);
                let old_root = paging::root_mfn().unwrap_or(0);
                ck.eq(
                    "switch to the other root",
                    paging::switch_root(tables[0]),
                    Ok(()),
                );
                let _ = send(a);
                let count = up::EV_COUNT.load(SeqCst);
                let back = paging::switch_root(old_root);
                ck.eq("switch back to our root", back, Ok(()));
                ck.eq("tenth upcall", count, n + 10);
                landed(ck, "after the root switch", VIEW[0]);
                ck.t(
                    intact(VIEW[1]),
                    "the old root's frame was written after new_baseptr",
                );
                ck.eq("unpin the other root", paging::unpin(tables[0]), Ok(()));
                ck.eq(
                    "release the other root's tables",
                    guest_sdk::memory::release(&tables),
                    Ok(()),
                );
            }
            // 8. Cleared, then filled: the page unmapped and mapped at fa
            // again by two `update_va_mapping`s with no upcall between. The
            // second writes over a not-present entry, which bumps no
            // generation (`DirectMap::replace_entry`: no remembered walk
            // read it); the first wrote over the remembered entry and must
            // have, or the next frame would land in fb.
            fill(VIEW[1]);
            ck.eq(
                "unmap the stack's top page before filling it again",
                guest_sdk::mmu::update_va_mapping(TOP_PAGE, 0, true),
                Ok(()),
            );
            ck.eq(
                "map it at the first frame over the cleared entry",
                guest_sdk::mmu::update_va_mapping(TOP_PAGE, leaf_entry(fa, Flags::WRITABLE), true),
                Ok(()),
            );
            let _ = send(a);
            ck.eq("eleventh upcall", up::EV_COUNT.load(SeqCst), n + 11);
            landed(ck, "after clearing and filling", VIEW[0]);
            ck.t(
                intact(VIEW[1]),
                "the old frame was written after the entry was cleared and filled",
            );
            // Back to our own stack; give everything back.
            ck.eq(
                "register our own stack again",
                set_callbacks(
                    arch::event_entry(),
                    arch::trap_entry(),
                    crate::own_stack_top(),
                ),
                Ok(0),
            );
            up::EV_CLEAR[0].store(0, SeqCst);
            let _ = close(a);
            let _ = close(b);
            for va in [CB, CB + 4096, CB + 8192, TOP_PAGE, VIEW[0], VIEW[1]] {
                let _ = paging::unmap(va);
            }
            ck.eq("release the frames", guest_sdk::memory::release(&f), Ok(()));
        },
    );
}
