//! Frame references and the hypervisor's own accesses (issue 7, findings
//! 1, 6 and 7, and the suite's teeth for MMU-22a and MEM-2a/MEM-5):
//! MEM-8, MEM-9, MMU-30 .. MMU-32. Each attack checks the exact refusal,
//! that nothing changed, and what the hypervisor still does afterwards.

use alloc::format;

use guest_sdk::abi::args::{FRAME_HELD, MMU_BATCH_MAX};
use guest_sdk::abi::layout::SHARED_INFO_VA;
use guest_sdk::abi::Hypercall;
use guest_sdk::event::{self, DomId};
use guest_sdk::paging::{self, entry_mfn, entry_ptr, index, leaf_entry, table_entry, Flags, Level};
use guest_sdk::{raw, trap, Error};

use super::{check, info, ok, on_fault, refused, Lab, Outcome, FAULTS, FAULT_CR2, W};
use crate::lab::{self, peek, poke, upd, update1};
use core::sync::atomic::Ordering;
use guest_sdk::abi::args::FrameType;

/// MEM-8, finding 1: the guest maps another frame at `SHARED_INFO_VA`,
/// then tries to release the shared-info frame (and to make it a table).
/// Refused with `wrong_state` / `type_conflict`, the frame's record
/// unchanged, and events are still raised in the real shared page, not in
/// the impostor.
pub fn mem_8(l: &Lab) -> Outcome {
    let (sh, _) = paging::translate(SHARED_INFO_VA).ok_or("shared info not mapped")?;
    let f = ok("frame_info", paging::frame_info(sh))?;
    check(f.flags & FRAME_HELD != 0, || {
        format!("shared info {sh:#x}: flags {:#x} lack FRAME_HELD", f.flags)
    })?;
    let l1 = paging::table_mfn(SHARED_INFO_VA, Level::L1).ok_or("no L1 for shared info")?;
    let si_ptr = entry_ptr(l1, index(SHARED_INFO_VA, Level::L1));
    let si_entry = paging::read_entry(SHARED_INFO_VA, Level::L1).ok_or("no shared entry")?;
    let fake = ok("populate", paging::populate_one())?;
    // A loopback channel, masked so that nothing is delivered meanwhile.
    let p1 = ok("alloc_unbound", event::alloc_unbound(DomId::SELF))?;
    let p2 = ok("bind", event::bind_interdomain(DomId::SELF, p1))?;
    event::mask(p1);
    let (word, bit) = ((p1.0 / 64) as usize, 1u64 << (p1.0 % 64));
    let view = l.slot_va(45);
    let r = event::without_upcalls(|| -> Result<(), alloc::string::String> {
        // The attack: shared info's address now maps a frame of ours.
        ok("remap", update1(si_ptr, leaf_entry(fake, Flags::WRITABLE)))?;
        ok("invlpg", paging::invlpg(SHARED_INFO_VA))?;
        let attack = (|| {
            let ws = [W::F(sh), W::F(fake)];
            refused("release shared info", Error::WrongState, &ws, || {
                paging::release(&[sh])
            })?;
            refused("release it among others", Error::WrongState, &ws, || {
                paging::release(&[fake, sh])
            })?;
            for lv in [Level::L1, Level::L2] {
                refused(&format!("pin {lv:?}"), Error::TypeConflict, &ws, || {
                    paging::pin(sh, lv)
                })?;
            }
            refused("as an L1", Error::TypeConflict, &ws, || {
                update1(
                    entry_ptr(l.lab_l2, index(LAB_L2_FREE, Level::L2)),
                    table_entry(sh),
                )
            })?;
            let (ty, flags, _, total) = info(sh)?;
            check(ty == FrameType::Special && flags & FRAME_HELD != 0, || {
                format!("shared info now {ty:?} flags {flags:#x}")
            })?;
            check(total == 0, || {
                format!("unmapped shared info has total {total}")
            })?;
            // The hypervisor still writes the real page.
            ok("send", event::send(p2))?;
            ok(
                "map real page",
                update1(l.slot_ptr(45), leaf_entry(sh, Flags::READ_ONLY)),
            )?;
            let real = peek(view + word as u64 * 8);
            ok("unmap", update1(l.slot_ptr(45), 0))?;
            ok("invlpg", paging::invlpg(view))?;
            let impostor = ok("read fake", lab::read_frame(fake, word))?;
            check(real & bit != 0, || {
                format!("event not raised in the real shared page (word {real:#x})")
            })?;
            check(impostor == 0, || {
                format!("the impostor frame got {impostor:#x}")
            })
        })();
        ok("restore", update1(si_ptr, si_entry))?;
        ok("invlpg", paging::invlpg(SHARED_INFO_VA))?;
        attack
    });
    let closed = event::close(p1).and_then(|()| event::close(p2));
    let released = paging::release(&[fake]);
    r?;
    ok("close", closed)?;
    ok("release fake", released)?;
    check(
        paging::translate(SHARED_INFO_VA).map(|t| t.0) == Some(sh),
        || "shared info not restored".into(),
    )?;
    Ok("shared info unmapped by its guest: release wrong_state, pin/table type_conflict, record unchanged, events still land in the real page".into())
}

/// An L2 slot of the lab's L2 that nothing uses.
const LAB_L2_FREE: u64 = paging::MAP_BASE + (3 << 21);

/// MEM-9: a frame given back is scrubbed before anyone gets it again.
/// The run boots with `testopt=poison-free`, so the hypervisor also checks
/// every frame it hands out (xtask checks no `@ inconsistency`).
pub fn mem_9(_l: &Lab) -> Outcome {
    let x = ok("populate", paging::populate_one())?;
    let all: alloc::vec::Vec<(usize, u64)> =
        (0..512).map(|i| (i, 0x5ec2_e700 + i as u64)).collect();
    ok("fill", lab::write_frame(x, &all))?;
    ok("release", paging::release(&[x]))?;
    let mut fresh = [0u64; 64];
    ok("populate 64", paging::populate(&mut fresh))?;
    let mut dirty = None;
    for &m in &fresh {
        for i in [0, 1, 255, 511] {
            let w = ok("read", lab::read_frame(m, i))?;
            if w != 0 && dirty.is_none() {
                dirty = Some((m, i, w));
            }
        }
    }
    let reused = fresh.contains(&x);
    ok("release 64", paging::release(&fresh))?;
    check(dirty.is_none(), || {
        format!("fresh frame word not zero: {dirty:x?}")
    })?;
    Ok(format!(
        "a filled frame released, 64 populated: all zero (the filled one {}reused)",
        if reused { "" } else { "not " }
    ))
}

/// MMU-30, finding 6: a batch that makes its own `done` page read-only.
pub fn mmu_30(l: &Lab) -> Outcome {
    let s = 40;
    let va = l.slot_va(s);
    let x = ok("populate", paging::populate_one())?;
    ok(
        "map rw",
        update1(l.slot_ptr(s), leaf_entry(x, Flags::WRITABLE)),
    )?;
    poke(va, 0x5555);
    let batch = [upd(l.slot_ptr(s), leaf_entry(x, Flags::READ_ONLY))];
    let r = raw::call(
        Hypercall::MmuUpdate,
        [batch.as_ptr() as u64, 1, va, 0, 0, 0],
    );
    let entry = paging::read_entry(va, Level::L1).unwrap_or(0);
    ok("invlpg", paging::invlpg(va))?;
    let word = peek(va);
    // The same batch with `done` elsewhere: written.
    let mut done = u64::MAX;
    let again = raw::call(
        Hypercall::MmuUpdate,
        [batch.as_ptr() as u64, 1, &raw mut done as u64, 0, 0, 0],
    );
    ok("unmap", update1(l.slot_ptr(s), 0))?;
    ok("release", paging::release(&[x]))?;
    check(r == Err(Error::BadAddress), || {
        format!("done made read-only by the batch: {r:?}, want bad_address")
    })?;
    check(
        entry_mfn(entry) == x && entry & paging::pte::WRITABLE == 0,
        || format!("the update was not applied: {entry:#x}"),
    )?;
    check(word == 0x5555, || format!("done page changed to {word:#x}"))?;
    check(again == Ok(1) && done == 1, || {
        format!("writable done: {again:?}, *done {done}")
    })?;
    Ok("batch making *done read-only: bad_address, update applied, nothing written; writable done: 1".into())
}

/// MMU-31, finding 7: a write through a stale TLB entry into a frame just
/// given back with `memory_release` must fault.
pub fn mmu_31(l: &Lab) -> Outcome {
    let s = 41;
    let va = l.slot_va(s);
    let x = ok("populate", paging::populate_one())?;
    ok(
        "map rw",
        update1(l.slot_ptr(s), leaf_entry(x, Flags::WRITABLE)),
    )?;
    poke(va, 1); // cached in the TLB, writable and dirty
    ok("unmap, no invlpg", update1(l.slot_ptr(s), 0))?;
    ok("release", paging::release(&[x]))?;
    FAULTS.store(0, Ordering::Release);
    ok("trap handler", trap::set_handler(on_fault))?;
    // SAFETY: a deliberate write through a translation that must be gone;
    // the page fault is caught above and skips the 3-byte instruction.
    unsafe {
        core::arch::asm!("mov qword ptr [rcx], rax", in("rcx") va, in("rax") 0xbad_u64, options(nostack));
    }
    ok("clear handler", trap::clear_handler())?;
    let faults = FAULTS.load(Ordering::Acquire);
    let cr2 = FAULT_CR2.load(Ordering::Acquire);
    check(faults == 1 && cr2 == va, || {
        format!(
            "write into a released frame: faults {faults} cr2 {cr2:#x}, want one #PF at {va:#x}"
        )
    })?;
    Ok("write through a dropped, uninvalidated mapping of a released frame: page fault".into())
}

/// MMU-32, the suite's teeth for MMU-22a: more than one chunk (32) of
/// updates whose last entry lies in an unmapped page applies nothing; the
/// same 32 entries that are mapped apply.
pub fn mmu_32(l: &Lab) -> Outcome {
    const CHUNK: u64 = 32;
    let (page, hole, target) = (42, 43, 44);
    let x = ok("populate", paging::populate_one())?;
    ok(
        "map array page",
        update1(l.slot_ptr(page), leaf_entry(x, Flags::WRITABLE)),
    )?;
    check(
        !paging::read_entry(l.slot_va(hole), Level::L1).is_some_and(paging::is_present),
        || "the page after the array is mapped".into(),
    )?;
    let size = core::mem::size_of::<guest_sdk::abi::args::MmuUpdate>() as u64;
    let array = l.slot_va(page) + 4096 - CHUNK * size;
    for i in 0..CHUNK {
        poke(array + i * size, l.slot_ptr(target));
        poke(array + i * size + 8, leaf_entry(l.d2, Flags::READ_ONLY));
    }
    let ws = [l.slot(target), W::F(l.d2), W::F(l.lab_l1)];
    let mut done = u64::MAX;
    let r = refused(
        "33 entries, the 33rd unmapped",
        Error::BadAddress,
        &ws,
        || {
            raw::call(
                Hypercall::MmuUpdate,
                [array, CHUNK + 1, &raw mut done as u64, 0, 0, 0],
            )
        },
    );
    let done_after = done;
    let r2 = refused("the maximum, tail unmapped", Error::BadAddress, &ws, || {
        raw::call(Hypercall::MmuUpdate, [array, MMU_BATCH_MAX, 0, 0, 0, 0])
    });
    let fine = raw::call(
        Hypercall::MmuUpdate,
        [array, CHUNK, &raw mut done as u64, 0, 0, 0],
    );
    let applied = paging::read_entry(l.slot_va(target), Level::L1).map(entry_mfn);
    ok("clean target", update1(l.slot_ptr(target), 0))?;
    ok("unmap array", update1(l.slot_ptr(page), 0))?;
    ok("release", paging::release(&[x]))?;
    r?;
    r2?;
    check(done_after == u64::MAX, || {
        format!("*done written: {done_after}")
    })?;
    check(
        fine == Ok(CHUNK) && done == CHUNK && applied == Some(l.d2),
        || format!("32 mapped entries: {fine:?}, *done {done}, target {applied:x?}"),
    )?;
    Ok("33 and 512 entries with the tail unmapped: bad_address, nothing applied, *done untouched; the 32 mapped: applied".into())
}

static ACKED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

fn on_ack(_: event::Port) {
    ACKED.store(true, Ordering::Release);
}

/// After every attack: asks the victim (the canary) to check its secret,
/// through the port it offered us, and waits up to a second for its answer
/// so that it reports before the run ends. Returns `acked`, `no-ack` or
/// `no-port`; xtask reads the victim's `@ mmutest role=victim secret=...`.
pub fn poke_victim() -> &'static str {
    let victim = DomId(crate::VICTIM);
    let bound = event::without_upcalls(|| {
        (1..64u32).find_map(|p| {
            let local = event::bind_interdomain(victim, event::Port(p)).ok()?;
            event::set_handler(local, on_ack);
            Some(local)
        })
    });
    let Some(local) = bound else { return "no-port" };
    if event::send(local).is_err() {
        return "no-port";
    }
    let deadline = guest_sdk::time::now_ns() + 1_000_000_000;
    let acked = event::wait_for_until(|| ACKED.load(Ordering::Acquire), deadline);
    let _ = event::close(local);
    if acked {
        "acked"
    } else {
        "no-ack"
    }
}
