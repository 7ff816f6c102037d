//! The `BLK-*` and `RING-*` clauses (`docs/abi/blk.md`, `docs/abi/ring.md`;
//! map: `docs/conformance.md`), checked from the frontend's side against
//! the real driver domain of the `blk-conf` scenario:
//!
//! | disk | size | how it is driven |
//! |---|---|---|
//! | 0 | 1 MiB, writable | the SDK's `Vblk` |
//! | 1 | 512 KiB, read-only | by hand (`rawdisk`), first with a wrong ring grant |
//! | 2 | 512 KiB, writable | by hand: bad requests, bad grants, then insane indices |
//!
//! The driver domain is domain 1 (`drv`); a `peer` guest runs its own I/O
//! meanwhile and must see no error (judged by xtask).

use alloc::format;
use alloc::vec::Vec;

use guest_sdk::abi::blk::{BlkRing, Response, Status, OP_FLUSH, OP_READ, OP_WRITE, RING_DEPTH};
use guest_sdk::abi::layout::{VblkInfo, MAX_START_VBLKS, VBLK_READONLY, VBLK_ROLE_FRONTEND};
use guest_sdk::abi::ring::{RingProtocol, RING_HEADER_SIZE};
use guest_sdk::ring::SharedPage;
use guest_sdk::vblk::{Buffer, Core, Geometry, Host, PageRef, Vblk, VblkError, POOL_PAGES};
use guest_sdk::{println, Error, StartInfo};
use harness::clause;

use crate::rawdisk::{grant, leak_page, request, revoke, RawDisk};
use crate::{fill, holds};

const DRV: u16 = 1;
const CAPS: [u64; 3] = [2048, 1024, 1024];

fn buf(pages: usize) -> Buffer {
    crate::buffer(pages)
}

/// Writes `tag`'s pattern to two pages at sector 0 of a hand-driven disk
/// (the baseline a refused request must leave alone); `true` if done.
fn baseline(d: &mut RawDisk, tag: u64) -> bool {
    let mut b = buf(2);
    fill(&mut b, tag, 0);
    let g0 = grant(b.mfn(0).unwrap_or(0), DRV, true, None).unwrap_or(0);
    let g1 = grant(b.mfn(1).unwrap_or(0), DRV, true, None).unwrap_or(0);
    let r = d.call(&request(OP_WRITE, 1000 + tag, 0, &[(g0, 0, 7), (g1, 0, 7)]));
    let _ = revoke(g0);
    let _ = revoke(g1);
    status(&r) == Some(0)
}

/// Whether the first two pages of a hand-driven disk still hold `tag`'s
/// pattern.
fn still(d: &mut RawDisk, tag: u64) -> bool {
    let z = buf(2);
    let g0 = grant(z.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
    let g1 = grant(z.mfn(1).unwrap_or(0), DRV, false, None).unwrap_or(0);
    let r = d.call(&request(OP_READ, 2000 + tag, 0, &[(g0, 0, 7), (g1, 0, 7)]));
    let _ = revoke(g0);
    let _ = revoke(g1);
    status(&r) == Some(0) && holds(&z, tag, 0)
}

fn status(r: &Option<Response>) -> Option<i16> {
    r.as_ref().map(|r| r.status)
}

/// Runs every clause in order; 0 if all passed.
pub fn run(si: &StartInfo) -> i32 {
    let infos: Vec<VblkInfo> = si.vblks.to_vec();
    blk_1(si);
    blk_1a(si);
    let Some(mut v) = blk_2() else {
        println!("vblktest: disk 0 did not connect; the remaining clauses cannot run");
        return 1;
    };
    let Some(mut ro) = blk_2a(&infos[1]) else {
        return 1;
    };
    let mut rw = match RawDisk::open(&infos[2], false) {
        Ok(d) => d,
        Err(e) => {
            println!("vblktest: raw disk 2: {e}");
            return 1;
        }
    };
    ring_1_2_blk_3(&mut v);
    blk_3a();
    blk_4(&mut v);
    blk_2b(&mut v, &mut rw);
    blk_4a(&mut rw);
    blk_5(&mut v);
    blk_5a(&mut ro);
    blk_5b(&mut rw);
    blk_5c(&mut rw);
    blk_6(&mut v);
    ring_3(&mut v);
    ring_4(&mut rw);
    ring_5_blk_7(&mut rw, &mut ro, &mut v);
    0
}

fn blk_1(si: &StartInfo) {
    clause("BLK-1", "disks in start info", |ck| {
        ck.eq("vblk_count", si.vblk_count, 3);
        let mut ports = Vec::new();
        for (i, cap) in CAPS.iter().enumerate() {
            let d = &si.vblks[i];
            let w = |what: &str| format!("disk {i}: {what}");
            ck.eq(&w("role"), d.role, VBLK_ROLE_FRONTEND);
            ck.eq(&w("index"), d.index as usize, i);
            ck.eq(&w("peer"), d.peer_domain, DRV);
            ck.eq(&w("peer name"), &d.peer_name[..4], b"drv\0".as_slice());
            ck.eq(&w("read-only"), d.flags & VBLK_READONLY != 0, i == 1);
            ck.eq(&w("sector size"), d.sector_size, 512);
            ck.eq(&w("capacity"), d.capacity_sectors, *cap);
            ck.eq(&w("extent offset hidden"), d.extent_offset, 0);
            ck.eq(&w("device hidden"), d.device, 0);
            ck.t(
                d.port != 0 && d.port < 1024 && !ports.contains(&d.port),
                &w("a port of its own"),
            );
            ports.push(d.port);
        }
    });
}

fn blk_1a(si: &StartInfo) {
    clause("BLK-1a", "unused entries are zero", |ck| {
        for i in 3..MAX_START_VBLKS {
            let b = zerocopy::IntoBytes::as_bytes(&si.vblks[i]);
            ck.t(b.iter().all(|&x| x == 0), &format!("entry {i} zero"));
        }
    });
}

fn blk_2() -> Option<Vblk> {
    let mut out = None;
    clause(
        "BLK-2",
        "connection: ring at the well-known reference",
        |ck| {
            match Vblk::open(0) {
                Ok(mut v) => {
                    let mut b = buf(1);
                    ck.eq("first read once connected", v.read(0, &mut b), Ok(()));
                    // The ring is at reference 0: granting there again is refused.
                    let (_, mfn) = leak_page();
                    ck.err(
                        "reference 0 is taken by the ring",
                        grant(mfn, DRV, false, Some(0)).map(u64::from),
                        Error::WrongState,
                    );
                    out = Some(v);
                }
                Err(e) => ck.t(false, &format!("Vblk::open(0): {e}")),
            }
        },
    );
    out
}

fn blk_2a(info: &VblkInfo) -> Option<RawDisk> {
    let mut out = None;
    clause(
        "BLK-2a",
        "a wrong ring grant leaves the disk unconnected",
        |ck| {
            // The ring granted read-only: the backend cannot map it writable.
            let mut bad = match RawDisk::open(info, true) {
                Ok(d) => d,
                Err(e) => {
                    ck.t(false, &format!("read-only ring grant: {e}"));
                    return;
                }
            };
            let b = buf(1);
            let g = grant(b.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
            bad.send(&request(OP_READ, 1, 0, &[(g, 0, 7)]));
            ck.eq(
                "no answer on the unmapped ring",
                status(&bad.response(300)),
                None,
            );
            ck.eq(
                "its grant is not mapped: revoke works",
                revoke(bad.gref),
                Ok(()),
            );
            let _ = revoke(g);
            // Granted right, the same disk connects.
            match RawDisk::open(info, false) {
                Ok(mut d) => {
                    let g = grant(b.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
                    let r = d.call(&request(OP_READ, 2, 0, &[(g, 0, 7)]));
                    ck.eq("answered once granted right", status(&r), Some(0));
                    ck.eq("its id", r.map(|r| r.id), Some(2));
                    let _ = revoke(g);
                    out = Some(d);
                }
                Err(e) => ck.t(false, &format!("second ring: {e}")),
            }
        },
    );
    out
}

/// Slot size, depth, and a batch of 32 with one event.
fn ring_1_2_blk_3(v: &mut Vblk) {
    let mut tags = Vec::new();
    let (events0, _) = v.stats();
    let mut refused = 0;
    for i in 0..RING_DEPTH {
        match v.submit_read(u64::from(i) * 8, buf(1)) {
            Ok(t) => tags.push(t),
            Err(_) => refused += 1,
        }
    }
    let extra = v.submit_read(0, buf(1));
    let kicked = v.kick();
    let (events1, _) = v.stats();
    let mut done = Vec::new();
    let mut fails = 0;
    while let Some(c) = v.wait() {
        fails += u32::from(c.result.is_err());
        done.push(c.tag);
    }
    clause("RING-1", "one page, 32 slots of 112 bytes", |ck| {
        ck.eq("slot size", <BlkRing as RingProtocol>::SLOT_SIZE, 112);
        ck.eq("slots", <BlkRing as RingProtocol>::SLOTS, 32);
        ck.eq("header", RING_HEADER_SIZE, 64);
        ck.eq("32 requests queued at once", refused, 0);
        ck.t(
            matches!(extra, Err((VblkError::Busy, _))),
            "a 33rd is refused: the ring is full",
        );
    });
    clause("RING-2", "a batch costs one event", |ck| {
        ck.eq("kick", kicked, Ok(()));
        ck.eq("events for a batch of 32", events1 - events0, 1);
    });
    clause("BLK-3", "requests answered once, by id", |ck| {
        ck.eq("answers", done.len(), tags.len());
        ck.eq("failed", fails, 0);
        let mut sorted = done.clone();
        sorted.sort_by_key(|t| t.0);
        sorted.dedup();
        ck.eq("each once", sorted.len(), tags.len());
        ck.t(tags.iter().all(|t| done.contains(t)), "every id answered");
    });
}

/// A hypervisor for the in-guest hostile-backend check: grants are numbers,
/// nothing is called.
struct Pretend(u32);
impl Host for Pretend {
    fn grant(&mut self, _mfn: u64, _ro: bool) -> Result<u32, Error> {
        self.0 += 1;
        Ok(self.0)
    }
    fn revoke(&mut self, _gref: u32) -> Result<(), Error> {
        Ok(())
    }
    fn notify(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

fn blk_3a() {
    clause("BLK-3a", "the frontend does not trust its backend", |ck| {
        // A ring in our own memory; we play a hostile backend on it.
        for (case, id_delta, op, st) in [
            ("unknown id", 5u64, OP_READ, 0i16),
            ("another op", 0, OP_WRITE, 0),
            ("undefined status", 0, OP_READ, 99),
        ] {
            let (va, _) = leak_page();
            let Some(page) = crate::rawdisk::ring_page(va) else {
                ck.t(false, "ring page");
                return;
            };
            let geo = Geometry {
                capacity: 64,
                readonly: false,
            };
            let mut core = Core::new(page, Pretend(100), geo);
            let t = core
                .read(0, &[PageRef::whole(1)])
                .unwrap_or(guest_sdk::vblk::Tag(0));
            let _ = core.kick();
            let rsp = Response {
                id: t.0 + id_delta,
                op,
                status: st,
                ..Default::default()
            };
            if let Some(p) = crate::rawdisk::ring_page(va) {
                p.write(RING_HEADER_SIZE, zerocopy::IntoBytes::as_bytes(&rsp));
                p.store(guest_sdk::abi::ring::RSP_PROD_OFFSET, 1);
            }
            match case {
                "undefined status" => {
                    let d = core.poll();
                    ck.t(
                        matches!(d, Ok(Some(ref d)) if d.result == Err(VblkError::BadStatus(99))),
                        &format!("{case}: {d:?}"),
                    );
                }
                _ => {
                    ck.eq(
                        case,
                        core.poll(),
                        Err(VblkError::BadResponse { id: rsp.id }),
                    );
                    let mut failed = Vec::new();
                    core.fail_all(|d| failed.push(d.result));
                    ck.eq(
                        "the request fails, no hang",
                        failed,
                        alloc::vec![Err(VblkError::Disconnected)],
                    );
                }
            }
        }
    });
}

fn blk_4(v: &mut Vblk) {
    clause("BLK-4", "read, write, flush", |ck| {
        let mut b = buf(2);
        fill(&mut b, 0x44, 8 * 512);
        ck.eq("write", v.write(8, &mut b), Ok(()));
        ck.eq("flush", v.flush(), Ok(()));
        let mut r = buf(2);
        ck.eq("read", v.read(8, &mut r), Ok(()));
        ck.t(holds(&r, 0x44, 8 * 512), "read back what was written");
        // A read of part of a page: sectors 2..=5 only.
        let part = buf(1);
        let t = v.submit_unchecked(OP_READ, 8, part, 2, 5);
        let c = t.ok().map(|t| {
            let _ = v.kick();
            v.wait_for(t)
        });
        let ok = c.is_some_and(|c| {
            c.result.is_ok()
                && c.buffer.is_some_and(|b| {
                    let by = b.bytes();
                    by[..1024].iter().all(|&x| x == 0)
                        && by[3072..].iter().all(|&x| x == 0)
                        && by[1024..3072] == r.bytes()[..2048]
                })
        });
        ck.t(
            ok,
            "sectors 2..=5 of a page receive the disk's first 4 sectors, nothing else",
        );
    });
}

fn blk_2b(v: &mut Vblk, rw: &mut RawDisk) {
    clause("BLK-2b", "persistent pages", |ck| {
        // The SDK's frontend: 40 one-page writes, then 40 reads, 32 in
        // flight at a time, all through its persistent pages (no grant per
        // request), every byte back.
        let (pool, grants0) = v.grant_stats();
        ck.eq("persistent pages granted at open", pool, POOL_PAGES);
        let base = 1024u64;
        let mut ok = true;
        for write in [true, false] {
            let mut tags = Vec::new();
            let mut done = 0;
            for i in 0..40u64 {
                let mut b = buf(1);
                if write {
                    fill(&mut b, 0x2b0 + i, (base + i * 8) * 512);
                }
                let r = if write {
                    v.submit_write(base + i * 8, b)
                } else {
                    v.submit_read(base + i * 8, b)
                };
                match r {
                    Ok(t) => tags.push((t, i)),
                    Err((e, _)) => {
                        ck.t(false, &format!("submit {i}: {e}"));
                        return;
                    }
                }
                if tags.len() - done == RING_DEPTH as usize || i == 39 {
                    let _ = v.kick();
                    while done < tags.len() {
                        let Some(c) = v.wait() else { break };
                        let Some(&(_, k)) = tags.iter().find(|(t, _)| *t == c.tag) else {
                            ok = false;
                            break;
                        };
                        ok &= c.result.is_ok();
                        if !write {
                            ok &= c
                                .buffer
                                .is_some_and(|b| holds(&b, 0x2b0 + k, (base + k * 8) * 512));
                        }
                        done += 1;
                    }
                }
            }
            ok &= done == 40;
        }
        ck.t(ok, "40 writes and 40 reads at depth 32 read back exactly");
        ck.eq(
            "grants made for single requests meanwhile",
            v.grant_stats().1 - grants0,
            0,
        );
        // The backend's side, by hand: one page granted writable once and
        // named by several requests both ways; once revoked, the next
        // request naming it is bad_grant and writes nothing (the backend
        // keeps nothing across requests).
        ck.t(baseline(rw, 0x2b), "a baseline written");
        let mut b = buf(1);
        let g = grant(b.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
        for k in 0..3u64 {
            fill(&mut b, 0x2b1 + k, 64 * 512);
            ck.eq(
                "write from the persistent page",
                status(&rw.call(&request(OP_WRITE, 0x2b00 + k, 64, &[(g, 0, 7)]))),
                Some(0),
            );
            fill(&mut b, 0, 0);
            ck.eq(
                "read into the same page",
                status(&rw.call(&request(OP_READ, 0x2b10 + k, 64, &[(g, 0, 7)]))),
                Some(0),
            );
            ck.t(
                holds(&b, 0x2b1 + k, 64 * 512),
                "the page holds what was written",
            );
        }
        ck.eq("revoke the persistent page", revoke(g), Ok(()));
        ck.eq(
            "write naming the revoked page",
            status(&rw.call(&request(OP_WRITE, 0x2b20, 0, &[(g, 0, 7)]))),
            Some(Status::BadGrant.code()),
        );
        ck.t(still(rw, 0x2b), "nothing written: the baseline reads back");
    });
}

fn blk_4a(rw: &mut RawDisk) {
    clause("BLK-4a", "unknown op", |ck| {
        let b = buf(1);
        let g = grant(b.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
        for op in [2u8, 4, 255] {
            let r = rw.call(&request(op, 40 + u64::from(op), 0, &[(g, 0, 7)]));
            ck.eq(
                &format!("op {op}"),
                status(&r),
                Some(Status::Unsupported.code()),
            );
            ck.eq("op echoed", r.map(|r| r.op), Some(op));
        }
        let _ = revoke(g);
    });
}

fn blk_5(v: &mut Vblk) {
    clause(
        "BLK-5",
        "past the disk: out_of_range, nothing touched",
        |ck| {
            let cap = v.geometry().capacity;
            let mut last = buf(1);
            fill(&mut last, 0x55, (cap - 8) * 512);
            ck.eq(
                "the last page is writable",
                v.write(cap - 8, &mut last),
                Ok(()),
            );
            for (what, op, sector) in [
                ("read straddling the end", OP_READ, cap - 7),
                ("write straddling the end", OP_WRITE, cap - 4),
                ("read at the end", OP_READ, cap),
                ("write far past", OP_WRITE, 1 << 40),
                ("overflowing sum", OP_READ, u64::MAX - 3),
            ] {
                let mut b = buf(1);
                fill(&mut b, 0x66, 0);
                let r = v.submit_unchecked(op, sector, b, 0, 7).map(|t| {
                    let _ = v.kick();
                    v.wait_for(t)
                });
                let got = r.map(|c| c.result).map_err(|(e, _)| e);
                ck.eq(what, got, Ok(Err(VblkError::Refused(Status::OutOfRange))));
            }
            let mut r = buf(1);
            ck.eq("read the last page", v.read(cap - 8, &mut r), Ok(()));
            ck.t(holds(&r, 0x55, (cap - 8) * 512), "the last page unchanged");
        },
    );
}

fn blk_5a(ro: &mut RawDisk) {
    clause("BLK-5a", "read-only disk", |ck| {
        let b = buf(1);
        let g = grant(b.mfn(0).unwrap_or(0), DRV, true, None).unwrap_or(0);
        let r = ro.call(&request(OP_WRITE, 50, 0, &[(g, 0, 7)]));
        ck.eq("write", status(&r), Some(Status::ReadOnly.code()));
        let _ = revoke(g);
        let g = grant(b.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
        ck.eq(
            "read",
            status(&ro.call(&request(OP_READ, 51, 0, &[(g, 0, 7)]))),
            Some(0),
        );
        ck.t(
            b.bytes().iter().all(|&x| x == 0),
            "the disk still reads as zeros",
        );
        ck.eq(
            "flush",
            status(&ro.call(&request(OP_FLUSH, 52, 0, &[]))),
            Some(0),
        );
        let _ = revoke(g);
    });
}

fn blk_5b(rw: &mut RawDisk) {
    clause("BLK-5b", "misaligned or malformed: bad_request", |ck| {
        ck.t(baseline(rw, 0x5b0), "a baseline written");
        let mut b = buf(1);
        fill(&mut b, 0x5b, 0);
        let g = grant(b.mfn(0).unwrap_or(0), DRV, true, None).unwrap_or(0);
        let seg = (g, 0u8, 7u8);
        let bad = Status::BadRequest.code();
        let mut r = request(OP_READ, 60, 0, &[]);
        ck.eq("read with 0 segments", status(&rw.call(&r)), Some(bad));
        r = request(OP_WRITE, 61, 0, &[seg; 11]);
        r.nr_segments = 12;
        ck.eq("12 segments", status(&rw.call(&r)), Some(bad));
        r.nr_segments = 255;
        ck.eq("255 segments", status(&rw.call(&r)), Some(bad));
        ck.eq(
            "flush with a segment",
            status(&rw.call(&request(OP_FLUSH, 62, 0, &[seg]))),
            Some(bad),
        );
        ck.eq(
            "first > last",
            status(&rw.call(&request(OP_WRITE, 63, 0, &[(g, 4, 3)]))),
            Some(bad),
        );
        ck.eq(
            "last past the page",
            status(&rw.call(&request(OP_WRITE, 64, 0, &[(g, 0, 8)]))),
            Some(bad),
        );
        ck.eq(
            "a good segment then a bad one",
            status(&rw.call(&request(OP_WRITE, 65, 0, &[seg, (g, 7, 9)]))),
            Some(bad),
        );
        let _ = revoke(g);
        ck.t(still(rw, 0x5b0), "nothing written: the baseline reads back");
    });
}

fn blk_5c(rw: &mut RawDisk) {
    clause("BLK-5c", "bad grants: bad_grant", |ck| {
        ck.t(baseline(rw, 0x5c0), "a baseline written");
        let bg = Status::BadGrant.code();
        ck.eq(
            "read into a reference never granted",
            status(&rw.call(&request(OP_READ, 70, 0, &[(300, 0, 7)]))),
            Some(bg),
        );
        let mut b = buf(1);
        fill(&mut b, 0x5c, 0);
        let g = grant(b.mfn(0).unwrap_or(0), DRV, true, None).unwrap_or(0);
        ck.eq(
            "read into a read-only grant",
            status(&rw.call(&request(OP_READ, 71, 0, &[(g, 0, 7)]))),
            Some(bg),
        );
        ck.t(holds(&b, 0x5c, 0), "the read-only page unchanged");
        ck.eq(
            "write with a good and a bad segment",
            status(&rw.call(&request(OP_WRITE, 72, 0, &[(g, 0, 7), (301, 0, 7)]))),
            Some(bg),
        );
        let _ = revoke(g);
        ck.eq(
            "write from a revoked reference",
            status(&rw.call(&request(OP_WRITE, 73, 0, &[(g, 0, 7)]))),
            Some(bg),
        );
        ck.t(still(rw, 0x5c0), "nothing written: the baseline reads back");
    });
}

fn blk_6(v: &mut Vblk) {
    clause("BLK-6", "flush answered after the device's flush", |ck| {
        let mut b = buf(1);
        fill(&mut b, 0x66, 16 * 512);
        ck.eq("write", v.write(16, &mut b), Ok(()));
        ck.eq("flush", v.flush(), Ok(()));
        ck.note = alloc::string::String::from("; the device's flush: judged by xtask");
    });
}

fn ring_3(v: &mut Vblk) {
    clause("RING-3", "no lost wake-up", |ck| {
        // Every wake-up must come from an event: a 2 s fallback timer that
        // never fires (a loaded host delays answers, it does not lose them).
        v.set_probe_ns(2_000_000_000);
        let (_, probes0) = v.stats();
        let mut b = buf(1);
        let mut fails = 0;
        for i in 0..300u64 {
            if v.read((i % 200) * 8, &mut b).is_err() {
                fails += 1;
            }
        }
        let (_, probes1) = v.stats();
        v.set_probe_ns(guest_sdk::vblk::PROBE_NS);
        ck.eq("300 blocking reads failed", fails, 0);
        ck.eq("waits that needed a timeout to wake", probes1 - probes0, 0);
    });
}

fn ring_4(rw: &mut RawDisk) {
    clause("RING-4", "a request rewritten after publication", |ck| {
        ck.t(baseline(rw, 0x40), "a baseline written");
        let b = buf(1);
        let mut w = buf(1);
        fill(&mut w, 0x44, 0);
        let g = grant(b.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
        let gw = grant(w.mfn(0).unwrap_or(0), DRV, true, None).unwrap_or(0);
        let slot = rw.ring_next();
        let read = request(OP_READ, 80, 8, &[(g, 0, 7)]);
        rw.send(&read);
        // Rewrite it into a write of sector 8 at once.
        rw.rewrite_slot(slot, &request(OP_WRITE, 81, 8, &[(gw, 0, 7)]));
        let r = rw.response(1000);
        let z = buf(1);
        let gz = grant(z.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
        let after = rw.call(&request(OP_READ, 82, 8, &[(gz, 0, 7)]));
        ck.eq("read back", status(&after), Some(0));
        let written = holds(&z, 0x44, 0);
        match r.map(|r| (r.id, r.op, r.status)) {
            Some((80, OP_READ, 0)) => ck.t(!written, "served as the read: sector 8 not written"),
            Some((81, OP_WRITE, 0)) => ck.t(written, "served as the write: sector 8 written"),
            other => ck.t(false, &format!("one consistent answer, got {other:?}")),
        }
        for x in [g, gw, gz] {
            let _ = revoke(x);
        }
    });
}

fn ring_5_blk_7(rw: &mut RawDisk, ro: &mut RawDisk, v: &mut Vblk) {
    let prod = rw.ring_next();
    rw.poke_req_prod(prod.wrapping_add(1000));
    let _ = guest_sdk::event::send(rw.port);
    // The backend sees it on its next look.
    let b = buf(1);
    let g = grant(b.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
    let _ = rw.response(300);
    let mut good = buf(1);
    let mut fails = 0;
    for i in 0..50u64 {
        fails += u32::from(v.read(i * 8, &mut good).is_err());
    }
    // A request on the disconnected ring is never answered.
    rw.poke_req_prod(prod);
    let late = rw.call(&request(OP_READ, 90, 0, &[(g, 0, 7)]));
    let _ = revoke(g);
    // Disk 1 floods: 32 reads of 11 pages at a time, again and again; a
    // read on disk 0 in between is still answered (round-robin service).
    let big = buf(11);
    let mut grefs = Vec::new();
    for i in 0..11 {
        grefs.push((
            grant(big.mfn(i).unwrap_or(0), DRV, false, None).unwrap_or(0),
            0u8,
            7u8,
        ));
    }
    let mut flood_answers = 0u32;
    let mut flood_sent = 0u32;
    for round in 0..5u64 {
        for k in 0..RING_DEPTH {
            let id = 500 + round * 100 + u64::from(k);
            if ro
                .ring
                .push_request(&request(OP_READ, id, 0, &grefs))
                .is_ok()
            {
                flood_sent += 1;
            }
        }
        ro.kick();
        fails += u32::from(v.read(round * 8, &mut good).is_err());
        while let Some(r) = ro.response(1000) {
            flood_answers += u32::from(r.status == 0);
            if flood_answers == flood_sent {
                break;
            }
        }
    }
    for (g, _, _) in grefs {
        let _ = revoke(g);
    }
    // Disk 1: a request published (no event), then its port closed: the
    // backend finds it while serving disk 0, answers, cannot notify, and
    // drops the ring (judged by xtask); disk 0 carries on.
    let g1 = grant(b.mfn(0).unwrap_or(0), DRV, false, None).unwrap_or(0);
    let _ = ro.ring.final_check();
    let pushed = ro
        .ring
        .push_request(&request(OP_READ, 91, 0, &[(g1, 0, 7)]))
        .is_ok();
    let _ = ro.ring.publish();
    let closed = guest_sdk::event::close(ro.port);
    for i in 0..20u64 {
        fails += u32::from(v.read(i * 8, &mut good).is_err());
    }
    clause("RING-5", "insane indices disconnect the ring", |ck| {
        ck.eq("no answer on the disconnected ring", status(&late), None);
        ck.note = alloc::string::String::from("; the disconnect: judged by xtask");
    });
    clause("BLK-7", "containment: others carry on", |ck| {
        ck.eq("flood on disk 1: requests sent", flood_sent, 5 * RING_DEPTH);
        ck.eq(
            "flood on disk 1: all answered ok",
            flood_answers,
            flood_sent,
        );
        ck.t(pushed, "a request pushed on disk 1");
        ck.eq("disk 1's port closed", closed, Ok(()));
        ck.eq(
            "disk 0 reads after disks 2 and 1 misbehaved, failed",
            fails,
            0,
        );
        ck.note = alloc::string::String::from("; the peer's I/O: judged by xtask");
    });
}
