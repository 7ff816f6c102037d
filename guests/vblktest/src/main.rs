//! Virtual-disk tests: a frontend guest with one role per command line
//! (`role=...`), each printing `@ vblk ...` facts the scenario tests judge,
//! or `@ conformance` lines for the `BLK-*` and `RING-*` clauses.
//!
//! * `conf`: the clause checks (`conf.rs`); disk 0 through the SDK's
//!   `Vblk`, disks 1 (read-only) and 2 through a hand-driven ring.
//! * `load ops=N`: N random writes and read-backs on disk 0, then
//!   `@ vblk load ops=.. errors=.. disconnected=..`.
//! * `persist`: checks the pattern a previous boot left (header in sector
//!   0), then writes a new one and flushes: `@ vblk persist found=.. ok=..`
//!   then `@ vblk persist wrote nonce=..`.
//! * `flushkill`: finds the last acknowledged sequence number, writes the
//!   next, flushes, prints `@ vblk acked=..` and keeps writing
//!   (unflushed) until the machine is killed.
//! * `isolate`: fills its whole disk with its own pattern, flushes, reads
//!   it all back; out-of-range reads fail: `@ vblk isolate ok=..`.
//! * `bench ops=N`: random 4 KiB reads and writes at depth 1 and 32.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod conf;
mod rawdisk;

use alloc::vec::Vec;

use guest_sdk::abi::blk::Status;
use guest_sdk::vblk::{Buffer, Vblk, VblkError};
use guest_sdk::{println, StartInfo};

guest_sdk::entry!(main);

fn main(si: &StartInfo) -> i32 {
    // Its CPU figures are its time minus its blocked time: count the latter.
    guest_sdk::event::track_blocked(true);
    let arg = |k: &str, d: u64| {
        si.cmdline_value(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    match si.cmdline_value("role").unwrap_or("") {
        "conf" => conf::run(si),
        "load" => load(arg("ops", 200), arg("seed", 1)),
        "persist" => persist(),
        "flushkill" => flushkill(),
        "isolate" => isolate(si),
        "bench" => bench(arg("ops", 400)),
        r => {
            println!("vblktest: unknown role `{r}`");
            2
        }
    }
}

/// Opens disk 0 or says why not.
fn open0() -> Option<Vblk> {
    match Vblk::open(0) {
        Ok(v) => Some(v),
        Err(e) => {
            println!("@ vblk open error={}", e.name());
            None
        }
    }
}

/// A page buffer, or a message.
fn buffer(pages: usize) -> Buffer {
    match Buffer::new(pages) {
        Ok(b) => b,
        Err(e) => {
            println!("vblktest: no buffer: {e}");
            guest_sdk::sched::shutdown(guest_sdk::sched::ShutdownReason::Crash, 3)
        }
    }
}

/// Fills `b` with the pattern of `tag` starting at disk byte `base`.
pub fn fill(b: &mut Buffer, tag: u64, base: u64) {
    for (i, w) in b.bytes_mut().chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&word(tag, base + i as u64 * 8).to_le_bytes());
    }
}

/// Whether `b` holds the pattern of `tag` from disk byte `base`.
pub fn holds(b: &Buffer, tag: u64, base: u64) -> bool {
    b.bytes()
        .chunks_exact(8)
        .enumerate()
        .all(|(i, w)| w == word(tag, base + i as u64 * 8).to_le_bytes())
}

fn word(tag: u64, offset: u64) -> u64 {
    (tag.rotate_left(17) ^ offset).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// A xorshift step.
pub fn rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn load(ops: u64, seed: u64) -> i32 {
    let Some(mut v) = open0() else { return 1 };
    let pages = v.geometry().capacity / 8;
    let mut x = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    let (mut errors, mut done) = (0u64, 0u64);
    let mut disconnected = false;
    let mut b = buffer(1);
    for _ in 0..ops {
        let page = rand(&mut x) % pages;
        fill(&mut b, seed, page * 4096);
        let w = v.write(page * 8, &mut b);
        let r = v.read(page * 8, &mut b);
        match (w, r) {
            (Ok(()), Ok(())) if holds(&b, seed, page * 4096) => {}
            (Err(VblkError::Disconnected), _) | (_, Err(VblkError::Disconnected)) => {
                disconnected = true;
                break;
            }
            (w, r) => {
                errors += 1;
                if errors <= 5 {
                    println!("vblktest: load page {page}: write {w:?} read {r:?}");
                }
            }
        }
        done += 1;
    }
    println!(
        "@ vblk load ops={done} errors={errors} disconnected={}",
        u8::from(disconnected)
    );
    i32::from(errors != 0)
}

const MAGIC: u64 = 0x5441_484f_4d41_424b; // "TAHOMABK"
const DATA_PAGES: u64 = 16;

/// The header in sector 0: `(magic, nonce)`.
fn header(v: &mut Vblk) -> Result<(u64, u64), VblkError> {
    let mut b = buffer(1);
    v.read(0, &mut b)?;
    let w = |i: usize| u64::from_le_bytes(b.bytes()[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    Ok((w(0), w(1)))
}

fn write_header(v: &mut Vblk, nonce: u64) -> Result<(), VblkError> {
    let mut b = buffer(1);
    b.bytes_mut()[..8].copy_from_slice(&MAGIC.to_le_bytes());
    b.bytes_mut()[8..16].copy_from_slice(&nonce.to_le_bytes());
    v.write(0, &mut b)
}

/// Whether the data pages of `area` hold `nonce`'s pattern.
fn check_data(v: &mut Vblk, nonce: u64, area: u64) -> Result<bool, VblkError> {
    let mut ok = true;
    for p in 1..=DATA_PAGES {
        let page = area * DATA_PAGES + p;
        let mut b = buffer(1);
        v.read(page * 8, &mut b)?;
        ok &= holds(&b, nonce, page * 4096);
    }
    Ok(ok)
}

/// Writes `nonce`'s pattern in the data pages of `area` (0 or 1: pages
/// 1..=16 or 17..=32), four pages a request, all in flight at once.
fn write_data(v: &mut Vblk, nonce: u64, area: u64) -> Result<(), VblkError> {
    let mut tags = Vec::new();
    for p in (1..=DATA_PAGES).step_by(4) {
        let page = area * DATA_PAGES + p;
        let mut b = buffer(4);
        fill(&mut b, nonce, page * 4096);
        tags.push(v.submit_write(page * 8, b).map_err(|(e, _)| e)?);
    }
    v.kick()?;
    for t in tags {
        v.wait_for(t).result?;
    }
    Ok(())
}

fn persist() -> i32 {
    let Some(mut v) = open0() else { return 1 };
    let r = (|| -> Result<u64, VblkError> {
        let (magic, nonce) = header(&mut v)?;
        if magic == MAGIC {
            let ok = check_data(&mut v, nonce, 0)?;
            println!("@ vblk persist found={nonce} ok={}", u8::from(ok));
        } else {
            println!("@ vblk persist found=none ok=1");
        }
        let new = guest_sdk::time::rdtsc() | 1;
        write_data(&mut v, new, 0)?;
        write_header(&mut v, new)?;
        v.flush()?;
        if !check_data(&mut v, new, 0)? {
            return Err(VblkError::Refused(Status::IoError));
        }
        Ok(new)
    })();
    match r {
        Ok(n) => {
            println!("@ vblk persist wrote nonce={n}");
            0
        }
        Err(e) => {
            println!("@ vblk persist error=\"{e}\"");
            1
        }
    }
}

fn flushkill() -> i32 {
    let Some(mut v) = open0() else { return 1 };
    let r = (|| -> Result<(), VblkError> {
        let (magic, seq) = header(&mut v)?;
        let seq = if magic == MAGIC { seq } else { 0 };
        // Sequence number N's data lives in area N % 2, so the unflushed
        // writes after an acknowledgement (of N + 1, in the other area)
        // never touch what was acknowledged.
        let ok = seq == 0 || check_data(&mut v, seq, seq % 2)?;
        println!("@ vblk found={seq} ok={}", u8::from(ok));
        let next = seq + 1;
        write_data(&mut v, next, next % 2)?;
        v.flush()?;
        write_header(&mut v, next)?;
        v.flush()?;
        println!("@ vblk acked={next}");
        // Keep the device busy with unflushed writes of the next pattern
        // (never the header, never the acknowledged area) until the
        // machine is killed.
        loop {
            write_data(&mut v, next + 1, (next + 1) % 2)?;
        }
    })();
    if let Err(e) = r {
        println!("@ vblk flushkill error=\"{e}\"");
    }
    1
}

fn isolate(si: &StartInfo) -> i32 {
    let Some(mut v) = open0() else { return 1 };
    let tag = u64::from(si.domain_id) * 0x1_0001;
    let cap = v.geometry().capacity;
    let chunk = 8u64; // pages per request
    let r = (|| -> Result<bool, VblkError> {
        let mut p = 0;
        while p * 8 < cap {
            let n = chunk.min(cap / 8 - p);
            let mut b = buffer(n as usize);
            fill(&mut b, tag, p * 4096);
            v.write(p * 8, &mut b)?;
            p += n;
        }
        v.flush()?;
        let mut ok = true;
        p = 0;
        while p * 8 < cap {
            let n = chunk.min(cap / 8 - p);
            let mut b = buffer(n as usize);
            v.read(p * 8, &mut b)?;
            ok &= holds(&b, tag, p * 4096);
            p += n;
        }
        // Past the end: the backend's error, not a neighbour's bytes.
        let b = buffer(1);
        let t = v
            .submit_unchecked(guest_sdk::abi::blk::OP_READ, cap, b, 0, 7)
            .map_err(|(e, _)| e)?;
        v.kick()?;
        let c = v.wait_for(t);
        ok &= c.result == Err(VblkError::Refused(Status::OutOfRange));
        ok &= c.buffer.is_some_and(|b| b.bytes().iter().all(|&x| x == 0));
        Ok(ok)
    })();
    match r {
        Ok(ok) => {
            println!("@ vblk isolate ok={} sectors={cap}", u8::from(ok));
            i32::from(!ok)
        }
        Err(e) => {
            println!("@ vblk isolate ok=0 error=\"{e}\"");
            1
        }
    }
}

fn bench(ops: u64) -> i32 {
    let Some(mut v) = open0() else { return 1 };
    let pages = v.geometry().capacity / 8;
    // Connected and warm (the driver measures the device directly first):
    // one request answered before the clock starts.
    let mut warm = buffer(1);
    if let Err(e) = v.read(0, &mut warm).and_then(|()| v.flush()) {
        println!("vblktest: bench: first read or flush failed: {e}");
        return 1;
    }
    for (write, name) in [(true, "write"), (false, "read")] {
        for depth in [1u32, 32] {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut free: Vec<Buffer> = (0..depth).map(|_| buffer(1)).collect();
            let b0 = guest_sdk::event::blocked_ticks();
            let t0 = guest_sdk::time::rdtsc();
            let (mut sent, mut done, mut failed) = (0u64, 0u64, 0u64);
            while done < ops {
                let mut queued = false;
                while sent < ops {
                    let Some(b) = free.pop() else { break };
                    let sector = (rand(&mut x) % pages) * 8;
                    let r = if write {
                        v.submit_write(sector, b)
                    } else {
                        v.submit_read(sector, b)
                    };
                    match r {
                        Ok(_) => {
                            sent += 1;
                            queued = true;
                        }
                        Err((_, b)) => {
                            free.push(b);
                            break;
                        }
                    }
                }
                if queued && v.kick().is_err() {
                    break;
                }
                // Every request that has completed, before refilling: the
                // refill is then one batch with at most one event.
                let Some(first) = v.wait() else { break };
                let mut next = Some(first);
                while let Some(c) = next {
                    done += 1;
                    failed += u64::from(c.result.is_err());
                    if let Some(b) = c.buffer {
                        free.push(b);
                    }
                    next = v.poll();
                }
            }
            let elapsed = guest_sdk::time::rdtsc().saturating_sub(t0);
            let per = elapsed / done.max(1);
            let blocked = guest_sdk::event::blocked_ticks().saturating_sub(b0);
            let cpu = elapsed.saturating_sub(blocked) / done.max(1);
            if failed != 0 || done != ops {
                println!(
                    "vblktest: bench {name} depth {depth}: {failed} failed, {done} of {ops} done"
                );
                return 1;
            }
            println!(
                "@ bench name=blk_vblk_{name}_d{depth} value={per} min={per} mean={per} iters={done} unit=ticks"
            );
            println!(
                "@ bench name=blk_cpu_front_{name}_d{depth} value={cpu} min={cpu} mean={cpu} iters={done} unit=ticks"
            );
            // A flush, untimed, marks the phase's end for the driver's own
            // CPU figure (`cpu_marks=` on its command line).
            if let Err(e) = v.flush() {
                println!("vblktest: bench: flush after {name} depth {depth}: {e}");
                return 1;
            }
        }
    }
    0
}
