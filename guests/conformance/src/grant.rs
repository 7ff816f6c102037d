//! Clauses of `docs/abi/grant.md` (GNT-*): one function per clause. The
//! other side is the `granter` helper (domain 9, `guests/conf-peer` role
//! `grant`): its grants to us at fixed references, and three steps it runs
//! on command (see that role's header). Raw calls throughout, so every
//! documented error can be provoked; what the helper saw comes back as a
//! yes or no on its answer ports.

#[allow(unused_imports)]
use crate::*;

use guest_sdk::abi::grant::{CopyOp, CopyPtr, ACCESS_AT_REF, ACCESS_READONLY, MAP_READONLY};
use guest_sdk::abi::layout::SHARED_INFO_VA;
use guest_sdk::abi::mmu::FRAME_HELD;
use guest_sdk::event::DomId;
use guest_sdk::grant::{self as gr, GrantRef};
use guest_sdk::paging::{self, Flags, Level, MAP_BASE};

/// The helper's domain id (manifest order, conformance.toml).
pub const PEER: u64 = 9;
/// The helper's references (conf-peer role `grant`).
const P_RO: u64 = 0;
const P_RW: u64 = 1;
const P_OTHER: u64 = 2;
const P_TABLE: u64 = 3;
const P_STALE: u64 = 4;
/// Its magic word at the start of P_RW.
const MAGIC: u64 = 0x4753_4e54_4752_414e;
const RRRR: u64 = u64::from_le_bytes(*b"RRRRRRRR");

/// Our grant mapping slots (an L1 made in [`setup`]).
const SLOTS: u64 = MAP_BASE + 0x60_0000;
fn slot(i: u64) -> u64 {
    SLOTS + i * 4096
}
/// Where we map our own frames to look at them.
const LOOK: u64 = MAP_BASE + 0xa0_0000;

fn access(mfn: u64, grantee: u64, flags: u64, gref: u64) -> Result<u64, Error> {
    call(Hypercall::GrantAccess, [mfn, grantee, flags, gref, 0, 0])
}
fn revoke(gref: u64) -> Result<u64, Error> {
    c1(Hypercall::GrantRevoke, gref)
}
fn map(granter: u64, gref: u64, va: u64, flags: u64) -> Result<u64, Error> {
    call(Hypercall::GrantMap, [granter, gref, va, flags, 0, 0])
}
fn unmap(handle: u64) -> Result<u64, Error> {
    c1(Hypercall::GrantUnmap, handle)
}
fn copy(ops: &mut [CopyOp]) -> Result<u64, Error> {
    c2(
        Hypercall::GrantCopy,
        ops.as_mut_ptr() as u64,
        ops.len() as u64,
    )
}
fn peek(va: u64) -> u64 {
    // SAFETY: only called on addresses this module mapped (a slot or a
    // LOOK page) and checked present; volatile, the helper may write them.
    unsafe { (va as *const u64).read_volatile() }
}
fn poke(va: u64, v: u64) {
    // SAFETY: only called on a slot this module mapped writable.
    unsafe { (va as *mut u64).write_volatile(v) }
}
fn mapped(va: u64) -> bool {
    paging::translate(va).is_some()
}
/// The reference the next automatic grant gets (grants and revokes one).
fn next_ref(mfn: u64) -> u64 {
    let r = access(mfn, PEER, ACCESS_READONLY, 0).unwrap_or(u64::MAX);
    let _ = revoke(r);
    r
}
/// Reads our own frame `mfn` through a read-only mapping at LOOK.
fn look(mfn: u64, word: u64) -> u64 {
    if paging::map(LOOK, mfn, Flags::READ_ONLY).is_err() {
        return u64::MAX;
    }
    let v = peek(LOOK + word * 8);
    let _ = paging::unmap(LOOK);
    v
}
fn own_op(mfn: u64, off: u64) -> CopyPtr {
    CopyPtr::own(mfn, off)
}
fn peer_op(gref: u64, off: u64) -> CopyPtr {
    CopyPtr::granted(PEER, gref, off)
}
fn op(src: CopyPtr, dst: CopyPtr, len: u32) -> CopyOp {
    CopyOp {
        src,
        dst,
        len,
        status: 0,
    }
}

/// What the clauses share: our frames, the helper's ports.
#[derive(Clone, Copy)]
pub struct Env {
    /// Granted to the helper writable at reference 0 (it writes into it).
    f1: u64,
    /// Granted to the helper read-only at reference 1, filled with 'C',
    /// not mapped by us (so only the helper's hold keeps it from a table).
    f2: u64,
    /// A spare frame of ours, never granted for long.
    f3: u64,
    /// A scratch frame of ours, copy destination, mapped at LOOK when read.
    f4: u64,
    ctl: u64,
    /// The helper's secret page (read from its writable grant).
    secret: u64,
}

/// Connects to the helper, takes our frames, grants f1 and f2.
pub fn setup() -> Result<Env, String> {
    let e = |what: &str, r: Error| format!("{what}: {r}");
    let ctl = bind_retry(PEER, 1).map_err(|r| e("bind ctl", r))?;
    let yes = bind(PEER, 2).map_err(|r| e("bind yes", r))?;
    let no = bind(PEER, 3).map_err(|r| e("bind no", r))?;
    event::without_upcalls(|| {
        event::set_handler(Port(yes as u32), on_yes);
        event::set_handler(Port(no as u32), on_no);
    });
    let mut f = [0u64; 4];
    guest_sdk::memory::populate(&mut f).map_err(|r| e("populate", r))?;
    // An L1 for the slots: map a page at the end of their 2 MiB, unmap it.
    paging::map(slot(511), f[3], Flags::READ_ONLY).map_err(|r| e("slot table", r))?;
    paging::unmap(slot(511)).map_err(|r| e("slot table", r))?;
    // f2 full of 'C', then unmapped again.
    paging::map(LOOK, f[1], Flags::WRITABLE).map_err(|r| e("map f2", r))?;
    for k in 0..512 {
        poke(LOOK + k * 8, u64::from_le_bytes(*b"CCCCCCCC"));
    }
    paging::unmap(LOOK).map_err(|r| e("unmap f2", r))?;
    access(f[0], PEER, ACCESS_AT_REF, 0).map_err(|r| e("grant f1", r))?;
    access(f[1], PEER, ACCESS_AT_REF | ACCESS_READONLY, 1).map_err(|r| e("grant f2", r))?;
    // The helper's secret page number, from its writable grant.
    let mut head = [0u64; 2];
    let mut ops = [op(peer_op(P_RW, 0), own_op(f[3], 0), 16)];
    // SAFETY: the destination is f[3], a frame of ours nothing lives in.
    unsafe { gr::copy_unchecked(&mut ops) }.map_err(|r| e("read the helper's page", r))?;
    head[0] = look(f[3], 0);
    head[1] = look(f[3], 1);
    if head[0] != MAGIC {
        return Err(format!("the helper's page starts {:#x}", head[0]));
    }
    Ok(Env {
        f1: f[0],
        f2: f[1],
        f3: f[2],
        f4: f[3],
        ctl,
        secret: head[1],
    })
}

/// Every clause failed: the helper could not be reached.
pub fn unreachable(why: &str) {
    for id in CLAUSES {
        emit(id, "grants", false, why);
    }
}

const CLAUSES: [&str; 31] = [
    "GNT-0", "GNT-0a", "GNT-0b", "GNT-0c", "GNT-0d", "GNT-0e", "GNT-1", "GNT-1a", "GNT-1b",
    "GNT-1c", "GNT-1d", "GNT-1e", "GNT-2", "GNT-2a", "GNT-2b", "GNT-3", "GNT-3a", "GNT-3b",
    "GNT-3c", "GNT-3d", "GNT-3e", "GNT-3f", "GNT-4", "GNT-4a", "GNT-4b", "GNT-5", "GNT-5a",
    "GNT-5b", "GNT-5c", "GNT-5d", "GNT-5e",
];

/// Runs every GNT clause (the helper must have been set up).
pub fn run(env: Env) {
    gnt_1(env);
    gnt_0a(env);
    gnt_1a(env);
    gnt_1b(env);
    gnt_1c(env);
    gnt_1d(env);
    gnt_1e(env);
    gnt_2(env);
    gnt_2a(env);
    gnt_3(env);
    gnt_3a(env);
    gnt_3b(env);
    gnt_3c(env);
    gnt_3d(env);
    gnt_3e(env);
    gnt_3f(env);
    gnt_4(env);
    gnt_4a(env);
    gnt_4b(env);
    gnt_5(env);
    gnt_5a(env);
    gnt_5b(env);
    gnt_5c(env);
    gnt_5d(env);
    gnt_5e(env);
    // The helper's steps: 1 and 2 (the hold), 3 (both sides dying).
    let step1 = ask(env.ctl);
    gnt_0(env, step1);
    gnt_0b(env, step1);
    gnt_2b(env);
    let step2 = ask(env.ctl);
    let (handle, step3) = gnt_0c(env, step2);
    gnt_0d(env, handle);
    gnt_0e(env, step3);
}

pub fn gnt_1(env: Env) {
    clause("GNT-1", "grant_access", |ck| {
        // Setup granted f1 at 0 and f2 at 1 by number.
        let r = access(env.f3, PEER, 0, 0);
        ck.eq("automatic reference", r, Ok(16));
        ck.eq("revoke it", revoke(16), Ok(0));
        ck.eq(
            "f1 at 0 is in use",
            access(env.f1, PEER, ACCESS_AT_REF, 0),
            Err(Error::WrongState),
        );
        ck.eq(
            "f2 at 1 is in use",
            access(env.f2, PEER, ACCESS_AT_REF, 1),
            Err(Error::WrongState),
        );
    });
}

pub fn gnt_0a(env: Env) {
    clause(
        "GNT-0a",
        "references from 16, well-known ones by number",
        |ck| {
            let a = access(env.f3, PEER, ACCESS_READONLY, 0);
            let b = access(env.f3, PEER, ACCESS_READONLY, 0);
            ck.eq("two automatic references", (a, b), (Ok(16), Ok(17)));
            ck.eq(
                "by number, 5",
                access(env.f3, PEER, ACCESS_READONLY | ACCESS_AT_REF, 5),
                Ok(5),
            );
            ck.eq(
                "by number, 511",
                access(env.f3, PEER, ACCESS_READONLY | ACCESS_AT_REF, 511),
                Ok(511),
            );
            for r in [16, 17, 5, 511] {
                ck.eq("revoke", revoke(r), Ok(0));
            }
            ck.eq("next is 16 again", next_ref(env.f3), 16);
        },
    );
}

pub fn gnt_1a(env: Env) {
    clause(
        "GNT-1a",
        "not the caller's frame: permission_denied",
        |ck| {
            let shared = paging::translate(SHARED_INFO_VA).map_or(0, |t| t.0);
            ck.t(shared != 0, "shared info not found");
            for (what, mfn) in [
                ("the helper's secret page", env.secret),
                ("frame 0", 0),
                ("beyond the frame table", 1 << 36),
                ("u64::MAX", u64::MAX),
                ("the shared-info page", shared),
            ] {
                ck.eq(what, access(mfn, PEER, 0, 0), Err(Error::PermissionDenied));
            }
            ck.eq("nothing allocated", next_ref(env.f3), 16);
        },
    );
}

pub fn gnt_1b(env: Env) {
    clause("GNT-1b", "unknown or self grantee", |ck| {
        for d in [0, 99, 0x7fef, 1 << 16, u64::MAX] {
            ck.eq(
                &format!("grantee {d:#x}"),
                access(env.f3, d, 0, 0),
                Err(Error::NotFound),
            );
        }
        ck.eq(
            "ourselves",
            access(env.f3, 1, 0, 0),
            Err(Error::InvalidArgument),
        );
        ck.eq(
            "DOMID_SELF",
            access(env.f3, DOMID_SELF, 0, 0),
            Err(Error::InvalidArgument),
        );
        ck.eq("nothing allocated", next_ref(env.f3), 16);
    });
}

pub fn gnt_1c(env: Env) {
    clause("GNT-1c", "a table frame is never granted writable", |ck| {
        let root = paging::root_mfn().unwrap_or(0);
        let l1 = paging::table_mfn(slot(0), Level::L1).unwrap_or(0);
        ck.eq(
            "our L4 writable",
            access(root, PEER, 0, 0),
            Err(Error::TypeConflict),
        );
        ck.eq(
            "an L1 writable",
            access(l1, PEER, 0, 0),
            Err(Error::TypeConflict),
        );
        ck.eq("nothing allocated", next_ref(env.f3), 16);
        let r = access(l1, PEER, ACCESS_READONLY, 0);
        ck.eq("an L1 read-only", r, Ok(16));
        ck.eq("revoke it", revoke(16), Ok(0));
    });
}

pub fn gnt_1d(env: Env) {
    clause("GNT-1d", "flags and references by number", |ck| {
        for flags in [4, 8, 1 << 63] {
            ck.eq(
                &format!("flags {flags:#x}"),
                access(env.f3, PEER, flags, 0),
                Err(Error::InvalidArgument),
            );
        }
        for r in [512, 1 << 32, u64::MAX] {
            ck.eq(
                &format!("at {r:#x}"),
                access(env.f3, PEER, ACCESS_AT_REF, r),
                Err(Error::InvalidArgument),
            );
        }
        ck.eq(
            "at 0, in use",
            access(env.f3, PEER, ACCESS_AT_REF, 0),
            Err(Error::WrongState),
        );
        ck.eq("nothing allocated", next_ref(env.f3), 16);
    });
}

pub fn gnt_1e(env: Env) {
    clause("GNT-1e", "table full: no_resources", |ck| {
        let mut n = 0;
        let last = loop {
            match access(env.f3, PEER, ACCESS_READONLY, 0) {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
            if n > 600 {
                break Error::InvalidArgument;
            }
        };
        ck.eq("automatic references", n, 496);
        ck.eq("then", last, Error::NoResources);
        ck.eq(
            "by number still works",
            access(env.f3, PEER, ACCESS_READONLY | ACCESS_AT_REF, 7),
            Ok(7),
        );
        let _ = revoke(7);
        for r in 16..512 {
            let _ = revoke(r);
        }
        ck.eq("free again", next_ref(env.f3), 16);
    });
}

pub fn gnt_2(env: Env) {
    clause("GNT-2", "grant_revoke", |ck| {
        let r = access(env.f3, PEER, 0, 0).unwrap_or(0);
        ck.eq("revoke", revoke(r), Ok(0));
        ck.eq("the reference is free", next_ref(env.f3), r);
    });
}

pub fn gnt_2a(env: Env) {
    clause("GNT-2a", "bad or stale reference: not_found", |ck| {
        let r = access(env.f3, PEER, 0, 0).unwrap_or(0);
        let _ = revoke(r);
        ck.eq("stale", revoke(r), Err(Error::NotFound));
        for r in [2, 300, 511, 512, 1 << 32, u64::MAX] {
            ck.eq(&format!("ref {r:#x}"), revoke(r), Err(Error::NotFound));
        }
        ck.eq(
            "f1's grant intact",
            access(env.f1, PEER, ACCESS_AT_REF, 0),
            Err(Error::WrongState),
        );
    });
}

pub fn gnt_3(_env: Env) {
    clause("GNT-3", "grant_map", |ck| {
        let h = map(PEER, P_RW, slot(0), 0);
        ck.t(h.is_ok(), "map the helper's writable grant");
        ck.t(mapped(slot(0)), "nothing mapped at the slot");
        if let Ok(h) = h {
            ck.eq("magic", peek(slot(0)), MAGIC);
            let f = paging::translate(slot(0)).map(|t| t.1);
            ck.eq(
                "writable",
                f.map(|f| f.contains(Flags::WRITABLE)),
                Some(true),
            );
            poke(slot(0) + 200 * 8, 0x1234);
            ck.eq("our write stays", peek(slot(0) + 200 * 8), 0x1234);
            ck.eq("unmap", unmap(h), Ok(0));
        }
        let h = map(PEER, P_RO, slot(1), MAP_READONLY);
        ck.t(h.is_ok(), "map the read-only grant read-only");
        if let Ok(h) = h {
            ck.eq("its bytes", peek(slot(1) + 4000), RRRR);
            ck.eq("unmap", unmap(h), Ok(0));
        }
    });
}

pub fn gnt_3a(_env: Env) {
    clause("GNT-3a", "bad or stale reference: not_found", |ck| {
        for (what, d, r) in [
            ("stale", PEER, P_STALE),
            ("never made", PEER, 200),
            ("beyond the table", PEER, 512),
            ("2^32", PEER, 1 << 32),
            ("no domain 99", 99, 0),
            ("domain 2^16", 1 << 16, 0),
        ] {
            ck.eq(what, map(d, r, slot(0), MAP_READONLY), Err(Error::NotFound));
        }
        ck.t(!mapped(slot(0)), "something was mapped");
    });
}

pub fn gnt_3b(_env: Env) {
    clause("GNT-3b", "wrong domain: permission_denied", |ck| {
        ck.eq(
            "granted to domain 8",
            map(PEER, P_OTHER, slot(0), MAP_READONLY),
            Err(Error::PermissionDenied),
        );
        ck.t(!mapped(slot(0)), "something was mapped");
    });
}

pub fn gnt_3c(_env: Env) {
    clause("GNT-3c", "read-only grant mapped writable", |ck| {
        ck.eq(
            "writable",
            map(PEER, P_RO, slot(0), 0),
            Err(Error::PermissionDenied),
        );
        ck.t(!mapped(slot(0)), "something was mapped");
        if let Ok(h) = map(PEER, P_RO, slot(0), MAP_READONLY) {
            let f = paging::translate(slot(0)).map(|t| t.1);
            ck.eq(
                "mapped read-only",
                f.map(|f| f.contains(Flags::WRITABLE)),
                Some(false),
            );
            let _ = unmap(h);
        } else {
            ck.t(false, "read-only map refused");
        }
    });
}

pub fn gnt_3d(_env: Env) {
    clause("GNT-3d", "bad va, flags, or a taken entry", |ck| {
        ck.eq(
            "unaligned",
            map(PEER, P_RO, slot(0) + 8, MAP_READONLY),
            Err(Error::InvalidArgument),
        );
        ck.eq(
            "flags 2",
            map(PEER, P_RO, slot(0), 2),
            Err(Error::InvalidArgument),
        );
        ck.eq(
            "hypervisor half",
            map(PEER, P_RO, 0xffff_8000_0000_0000, MAP_READONLY),
            Err(Error::BadAddress),
        );
        ck.eq(
            "non-canonical",
            map(PEER, P_RO, 1 << 47, MAP_READONLY),
            Err(Error::BadAddress),
        );
        ck.eq(
            "no L1 on the walk",
            map(PEER, P_RO, 0x7000_0000_0000, MAP_READONLY),
            Err(Error::BadAddress),
        );
        let heap = guest_sdk::start_info().page_va(guest_sdk::start_info().first_free_page);
        let before = paging::translate(heap);
        ck.eq(
            "a present entry",
            map(PEER, P_RO, heap, MAP_READONLY),
            Err(Error::WrongState),
        );
        ck.eq("the entry unchanged", paging::translate(heap), before);
        ck.eq(
            "the reference still works",
            map(PEER, P_RO, slot(0), MAP_READONLY).map(unmap),
            Ok(Ok(0)),
        );
    });
}

pub fn gnt_3e(env: Env) {
    clause("GNT-3e", "a grant that became a table", |ck| {
        ck.eq(
            "map the helper's table",
            map(PEER, P_TABLE, slot(0), MAP_READONLY),
            Err(Error::TypeConflict),
        );
        let mut ops = [op(peer_op(P_TABLE, 0), own_op(env.f4, 0), 8)];
        // SAFETY: the destination is f4, a frame nothing lives in.
        let r = unsafe { gr::copy_unchecked(&mut ops) };
        ck.eq(
            "copy from it",
            (r, ops[0].result()),
            (Ok(()), Err(Error::TypeConflict)),
        );
        ck.t(!mapped(slot(0)), "something was mapped");
    });
}

pub fn gnt_3f(_env: Env) {
    clause("GNT-3f", "the entry cannot be copied", |ck| {
        let Ok(h) = map(PEER, P_RW, slot(0), 0) else {
            ck.t(false, "map refused");
            return;
        };
        let entry = paging::read_entry(slot(0), Level::L1).unwrap_or(0);
        let l1 = paging::table_mfn(slot(0), Level::L1).unwrap_or(0);
        ck.eq(
            "update_va_mapping with the entry",
            c2(Hypercall::UpdateVaMapping, slot(2), entry).and(Ok(())),
            Err(Error::PermissionDenied),
        );
        let upd = [guest_sdk::abi::args::MmuUpdate {
            ptr: (l1 << 12) + 3 * 8,
            val: entry,
        }];
        ck.eq(
            "mmu_update with the entry",
            guest_sdk::mmu::update(&upd).map_err(|e| e.error),
            Err(Error::PermissionDenied),
        );
        ck.t(!mapped(slot(2)) && !mapped(slot(3)), "the entry was copied");
        // The grantee drops the entry itself: unmap still works.
        ck.eq(
            "drop it ourselves",
            guest_sdk::mmu::update_va_mapping(slot(0), 0, true),
            Ok(()),
        );
        ck.eq("unmap", unmap(h), Ok(0));
        ck.eq(
            "map again",
            map(PEER, P_RW, slot(0), 0).map(unmap),
            Ok(Ok(0)),
        );
    });
}

pub fn gnt_4(_env: Env) {
    clause("GNT-4", "grant_unmap", |ck| {
        let h = map(PEER, P_RW, slot(4), 0);
        ck.t(mapped(slot(4)), "not mapped");
        ck.eq("unmap", h.map(unmap), Ok(Ok(0)));
        ck.t(!mapped(slot(4)), "still mapped");
    });
}

pub fn gnt_4a(_env: Env) {
    clause("GNT-4a", "bad handle: not_found", |ck| {
        let h = map(PEER, P_RW, slot(4), 0).unwrap_or(u64::MAX);
        ck.eq("unmap", unmap(h), Ok(0));
        ck.eq("twice", unmap(h), Err(Error::NotFound));
        for bad in [1000, 1024, 5000, 1 << 32, u64::MAX] {
            ck.eq(
                &format!("handle {bad:#x}"),
                unmap(bad),
                Err(Error::NotFound),
            );
        }
    });
}

pub fn gnt_4b(_env: Env) {
    clause("GNT-4b", "nothing left at va after unmap", |ck| {
        let h = map(PEER, P_RW, slot(5), 0).unwrap_or(u64::MAX);
        ck.eq("read", peek(slot(5)), MAGIC);
        ck.eq("unmap", unmap(h), Ok(0));
        ck.eq("the entry", paging::read_entry(slot(5), Level::L1), Some(0));
        ck.eq(
            "the slot is free again",
            map(PEER, P_RO, slot(5), MAP_READONLY).map(unmap),
            Ok(Ok(0)),
        );
    });
}

pub fn gnt_5(env: Env) {
    clause("GNT-5", "grant_copy", |ck| {
        let mut buf = [0u8; 16];
        ck.eq(
            "read the grant",
            gr::copy_from_granted(DomId(9), GrantRef(1), 0, &mut buf),
            Ok(()),
        );
        ck.eq(
            "magic",
            u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8])),
            MAGIC,
        );
        ck.eq(
            "write it",
            gr::copy_to_granted(DomId(9), GrantRef(1), 3000, b"hello, grant"),
            Ok(()),
        );
        let mut back = [0u8; 12];
        ck.eq(
            "read back",
            gr::copy_from_granted(DomId(9), GrantRef(1), 3000, &mut back),
            Ok(()),
        );
        ck.eq("bytes", &back, b"hello, grant");
        // A whole page, local to local through the raw call: its count.
        let mut ops = [
            op(peer_op(P_RO, 0), own_op(env.f4, 0), 4096),
            op(own_op(env.f4, 8), own_op(env.f4, 0), 8),
        ];
        ck.eq("returns count", copy(&mut ops), Ok(2));
        ck.eq("statuses", (ops[0].status, ops[1].status), (0, 0));
        ck.eq("copied", (look(env.f4, 0), look(env.f4, 511)), (RRRR, RRRR));
    });
}

pub fn gnt_5a(env: Env) {
    clause("GNT-5a", "a batch refused as a whole", |ck| {
        let mut ops = [op(peer_op(P_RW, 0), own_op(env.f4, 0), 8); 65];
        ck.eq("65 elements", copy(&mut ops), Err(Error::InvalidArgument));
        ck.t(ops.iter().all(|o| o.status == 0), "a status was written");
        ck.eq(
            "null array",
            c2(Hypercall::GrantCopy, 0, 1),
            Err(Error::BadAddress),
        );
        ck.eq(
            "hypervisor half",
            c2(Hypercall::GrantCopy, 0xffff_8000_0000_0000, 1),
            Err(Error::BadAddress),
        );
        // The start-info page is read-only: statuses cannot be written.
        ck.eq(
            "read-only array",
            c2(Hypercall::GrantCopy, start_info_va(), 1),
            Err(Error::BadAddress),
        );
        ck.eq("zero elements", c2(Hypercall::GrantCopy, 0, 0), Ok(0));
    });
}

pub fn gnt_5b(env: Env) {
    clause("GNT-5b", "zero length, crossing a page", |ck| {
        let before = (look(env.f4, 0), look(env.f4, 511));
        let mut ops = [
            op(peer_op(P_RW, 0), own_op(env.f4, 0), 0),
            op(peer_op(P_RW, 4095), own_op(env.f4, 0), 2),
            op(peer_op(P_RW, 0), own_op(env.f4, 4090), 8),
            op(peer_op(P_RW, 0), own_op(env.f4, 4096), 1),
            op(peer_op(P_RW, 1 << 40), own_op(env.f4, 0), 1),
            op(peer_op(P_RW, 0), own_op(env.f4, 0), 4097),
            op(peer_op(P_RW, 0), own_op(env.f4, 0), u32::MAX),
        ];
        ck.eq("count", copy(&mut ops), Ok(7));
        for (i, o) in ops.iter().enumerate() {
            ck.eq(
                &format!("element {i}"),
                o.result(),
                Err(Error::InvalidArgument),
            );
        }
        ck.eq(
            "nothing copied",
            (look(env.f4, 0), look(env.f4, 511)),
            before,
        );
    });
}

pub fn gnt_5c(env: Env) {
    clause(
        "GNT-5c",
        "sources and destinations the caller may not use",
        |ck| {
            let root = paging::root_mfn().unwrap_or(0);
            let f4 = own_op(env.f4, 0);
            let mut ops = [
                op(own_op(env.secret, 0), f4, 8),
                op(own_op(0, 0), f4, 8),
                op(own_op(u64::MAX, 0), f4, 8),
                op(peer_op(P_OTHER, 0), f4, 8),
                op(peer_op(P_STALE, 0), f4, 8),
                op(CopyPtr::granted(99, 0, 0), f4, 8),
                op(peer_op(P_RW, 0), peer_op(P_RO, 0), 8),
                op(peer_op(P_RW, 0), own_op(root, 0), 8),
                op(peer_op(P_RW, 0), own_op(env.secret, 0), 8),
            ];
            let want = [
                Error::PermissionDenied,
                Error::PermissionDenied,
                Error::PermissionDenied,
                Error::PermissionDenied,
                Error::NotFound,
                Error::NotFound,
                Error::PermissionDenied,
                Error::TypeConflict,
                Error::PermissionDenied,
            ];
            let before = look(env.f4, 0);
            // SAFETY: the own destinations are f4 (nothing lives there) and our
            // L4, which the hypervisor must refuse.
            let r = unsafe { gr::copy_unchecked(&mut ops) };
            ck.eq("the batch", r, Ok(()));
            for (i, (o, w)) in ops.iter().zip(want).enumerate() {
                ck.eq(&format!("element {i}"), o.result(), Err(w));
            }
            ck.eq("f4 unchanged", look(env.f4, 0), before);
        },
    );
}

pub fn gnt_5d(env: Env) {
    clause("GNT-5d", "a batch failing midway", |ck| {
        // Clear f4's first two words through a copy from our zero f3.
        let mut z = [op(own_op(env.f3, 0), own_op(env.f4, 0), 16)];
        // SAFETY: f4 is a frame nothing lives in.
        let _ = unsafe { gr::copy_unchecked(&mut z) };
        let mut ops = [
            op(peer_op(P_RW, 0), own_op(env.f4, 0), 8),
            op(peer_op(P_STALE, 0), own_op(env.f4, 16), 8),
            op(peer_op(P_RO, 0), own_op(env.f4, 8), 8),
            op(peer_op(P_RW, 0), peer_op(P_RO, 0), 8),
        ];
        // SAFETY: the own destination is f4.
        let r = unsafe { gr::copy_unchecked(&mut ops) };
        ck.eq("the batch", r, Ok(()));
        let st: Vec<_> = ops.iter().map(|o| o.result()).collect();
        ck.eq(
            "statuses",
            st,
            alloc::vec![
                Ok(()),
                Err(Error::NotFound),
                Ok(()),
                Err(Error::PermissionDenied)
            ],
        );
        ck.eq(
            "first and third copied",
            (look(env.f4, 0), look(env.f4, 1)),
            (MAGIC, RRRR),
        );
        ck.eq("second did nothing", look(env.f4, 2), RRRR);
    });
}

/// After step 1: the helper wrote into f1 through its mapping.
pub fn gnt_5e(env: Env) {
    clause("GNT-5e", "overlapping ranges in one frame", |ck| {
        // f4's first four words 1, 2, 3, 4 (f4 is a frame nothing lives in).
        if paging::map(LOOK, env.f4, Flags::WRITABLE).is_err() {
            ck.t(false, "map f4 writable");
            return;
        }
        for w in 0..4 {
            poke(LOOK + w * 8, w + 1);
        }
        let _ = paging::unmap(LOOK);
        let words = || (0..4).map(|w| look(env.f4, w)).collect::<Vec<_>>();
        // Three words up by one (the destination above the source), then,
        // as the batch's second element, three words down by one: a copy
        // front to back would give 1, 1, 1, 1 after the first.
        let mut ops = [
            op(own_op(env.f4, 0), own_op(env.f4, 8), 24),
            op(own_op(env.f4, 16), own_op(env.f4, 8), 16),
        ];
        ck.eq("the batch", copy(&mut ops[..1]), Ok(1));
        ck.eq("up by a word", words(), alloc::vec![1, 1, 2, 3]);
        ck.eq("second batch", copy(&mut ops[1..]), Ok(1));
        ck.eq("down by a word", words(), alloc::vec![1, 2, 3, 3]);
        // Both in one batch, in order: the second reads the first's bytes.
        for w in 0..4 {
            let mut set = [op(own_op(env.f3, 0), own_op(env.f4, w * 8), 8)];
            let _ = copy(&mut set); // f3 is zero
        }
        let mut one = [
            op(own_op(env.f4, 0), own_op(env.f4, 8), 8),
            op(own_op(env.f4, 8), own_op(env.f4, 16), 8),
        ];
        if paging::map(LOOK, env.f4, Flags::WRITABLE).is_ok() {
            poke(LOOK, 7);
            let _ = paging::unmap(LOOK);
        }
        ck.eq("one batch", copy(&mut one), Ok(2));
        ck.eq("statuses", (one[0].status, one[1].status), (0, 0));
        ck.eq("in order", words(), alloc::vec![7, 7, 7, 0]);
    });
}

pub fn gnt_0(env: Env, step1: Option<bool>) {
    clause("GNT-0", "grant model: both sides see one frame", |ck| {
        ck.eq("the helper's step 1", step1, Some(true));
        let word = look(env.f1, 0);
        ck.eq("its write, seen here", word.to_le_bytes(), *b"PEERWROT");
    });
}

/// While the helper maps f1 (writable) and f2 (read-only).
pub fn gnt_0b(env: Env, step1: Option<bool>) {
    clause("GNT-0b", "a mapped grant is held", |ck| {
        ck.eq("the helper's step 1", step1, Some(true));
        ck.eq(
            "release f2",
            guest_sdk::memory::release(&[env.f2]),
            Err(Error::WrongState),
        );
        ck.eq(
            "pin f2",
            guest_sdk::mmu::pin(env.f2, Level::L1),
            Err(Error::TypeConflict),
        );
        ck.eq(
            "pin f1 (writable-typed)",
            guest_sdk::mmu::pin(env.f1, Level::L1),
            Err(Error::TypeConflict),
        );
        ck.eq(
            "f1 is Writable-typed",
            guest_sdk::mmu::frame_info(env.f1).map(|r| r.page_type),
            Ok(guest_sdk::mmu::FrameType::Writable as u32),
        );
        let held = |f| guest_sdk::mmu::frame_info(f).map(|r| r.flags & FRAME_HELD != 0);
        ck.eq(
            "f1 and f2 held",
            (held(env.f1), held(env.f2)),
            (Ok(true), Ok(true)),
        );
    });
}

pub fn gnt_2b(env: Env) {
    clause("GNT-2b", "revoke while mapped: wrong_state", |ck| {
        ck.eq("revoke 0", revoke(0), Err(Error::WrongState));
        ck.eq("revoke 1", revoke(1), Err(Error::WrongState));
        ck.eq(
            "grant 0 intact",
            access(env.f1, PEER, ACCESS_AT_REF, 0),
            Err(Error::WrongState),
        );
    });
}

/// Step 2 (the helper unmapped), then step 3: it maps f1 again and dies.
/// Returns our mapping of its writable grant (made before it dies).
pub fn gnt_0c(env: Env, step2: Option<bool>) -> (Option<u64>, Option<bool>) {
    let mut handle = None;
    let mut step3 = None;
    clause("GNT-0c", "a dying grantee's mappings go", |ck| {
        ck.eq("the helper's step 2", step2, Some(true));
        let held = guest_sdk::mmu::frame_info(env.f2).map(|r| r.flags & FRAME_HELD != 0);
        ck.eq("f2 no longer held", held, Ok(false));
        // Our mapping of the helper's page, kept across its death (GNT-0d).
        handle = map(PEER, P_RW, slot(10), 0).ok();
        poke(slot(10) + 300 * 8, 0xa11e);
        step3 = ask(env.ctl);
        ck.eq(
            "the helper's step 3 (mapped f1, then shut down)",
            step3.is_some(),
            true,
        );
        let deadline = now() + 10_000 * MS;
        let mut last = revoke(0);
        while last.is_err() && now() < deadline {
            guest_sdk::sched::yield_now();
            last = revoke(0);
        }
        ck.eq("revoke f1's grant once the helper is gone", last, Ok(0));
        ck.eq(
            "f1 idle: release works",
            guest_sdk::memory::release(&[env.f1]),
            Ok(()),
        );
    });
    (handle, step3)
}

pub fn gnt_0d(_env: Env, handle: Option<u64>) {
    clause(
        "GNT-0d",
        "a dying granter's mapped frame stays until unmapped",
        |ck| {
            ck.t(handle.is_some(), "map of the helper's page failed");
            ck.eq(
                "the helper is gone",
                map(PEER, P_RO, slot(11), MAP_READONLY),
                Err(Error::NotFound),
            );
            ck.eq(
                "our mapping still reads",
                (peek(slot(10)), peek(slot(10) + 300 * 8)),
                (MAGIC, 0xa11e),
            );
            poke(slot(10) + 301 * 8, 7);
            ck.eq("and writes", peek(slot(10) + 301 * 8), 7);
            ck.eq(
                "no new map",
                map(PEER, P_RW, slot(11), 0),
                Err(Error::WrongState),
            );
            let mut b = [0u8; 8];
            ck.eq(
                "no copy",
                gr::copy_from_granted(DomId(9), GrantRef(1), 0, &mut b),
                Err(Error::WrongState),
            );
            ck.eq("unmap", handle.map(unmap), Some(Ok(0)));
            ck.t(!mapped(slot(10)), "still mapped");
            ck.eq(
                "then the grant is gone",
                map(PEER, P_RW, slot(11), 0),
                Err(Error::NotFound),
            );
        },
    );
}

pub fn gnt_0e(env: Env, step3: Option<bool>) {
    clause("GNT-0e", "a third domain's frames are untouched", |ck| {
        ck.eq(
            "the helper's secret and pages intact (its step 3)",
            step3,
            Some(true),
        );
        ck.eq(
            "its secret frame, to domain 8",
            access(env.secret, 8, 0, 0),
            Err(Error::PermissionDenied),
        );
    });
}
