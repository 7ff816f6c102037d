//! `role=bench`: what page-table updates cost, in `lfence; rdtsc` ticks
//! (instructions under `-icount shift=0`; indicative only under plain TCG).
//!
//! Reports `@ bench name=NAME value=MEDIAN min=MIN mean=MEAN iters=N
//! unit=ticks`, the contract of `cargo xtask bench`:
//!
//! * `mmu_update_batch_{1,32,512}`: ticks per entry of `mmu_update`, each
//!   sample a sweep remapping 512 L1 entries (writable) from one frame to
//!   another in batches of that size;
//! * `mmu_pin_fresh_space`, `mmu_unpin_fresh_space`: one pin (unpin) of an
//!   address space of `tables=11` tables (`entries=4096` leaves), and
//!   `mmu_pin_per_table` the pin divided by the tables.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use guest_sdk::abi::args::MmuUpdate;
use guest_sdk::paging::{self, entry_ptr, leaf_entry, self_entry, table_entry, Flags, Level};
use guest_sdk::println;

use crate::lab::{self, rdtsc, upd};

/// Where the benchmark maps its 512 pages.
const BASE: u64 = paging::MAP_BASE + (2 << 30);
/// Leaf tables in the address space pinned by the pin benchmark.
const PIN_L1S: usize = 8;
/// Samples per figure (after one warm-up).
const SAMPLES: usize = 16;

pub fn run() -> i32 {
    match bench() {
        Ok(()) => 0,
        Err(e) => {
            println!("mmutest bench: {e}");
            1
        }
    }
}

fn report(name: &str, mut samples: Vec<u64>, extra: &str) {
    samples.sort_unstable();
    let n = samples.len().max(1) as u64;
    let median = samples.get(samples.len() / 2).copied().unwrap_or(0);
    let min = samples.first().copied().unwrap_or(0);
    let mean = samples.iter().sum::<u64>() / n;
    println!(
        "@ bench name={name} value={median} min={min} mean={mean} iters={} unit=ticks{extra}",
        samples.len()
    );
}

fn e<T>(what: &str, r: Result<T, guest_sdk::Error>) -> Result<T, String> {
    r.map_err(|x| format!("{what}: {}", x.name()))
}

fn bench() -> Result<(), String> {
    let mut fr = [0u64; 2];
    e("populate", paging::populate(&mut fr))?;
    let [a, b] = fr;
    {
        let mut m = paging::Mapper::new();
        for i in 0..512 {
            e("map", m.map(BASE + i * 4096, a, Flags::WRITABLE))?;
        }
        e("flush", m.flush().map_err(guest_sdk::Error::from))?;
    }
    let l1 = paging::table_mfn(BASE, Level::L1).ok_or("no L1")?;
    let to = |f: u64| -> Vec<MmuUpdate> {
        (0..512)
            .map(|i| upd(entry_ptr(l1, i), leaf_entry(f, Flags::WRITABLE)))
            .collect()
    };
    let (to_b, to_a) = (to(b), to(a));
    for bs in [1usize, 32, 512] {
        let mut samples = Vec::new();
        // An even number of sweeps: the entries end on `a` again.
        for s in 0..=SAMPLES + 1 {
            let q = if s % 2 == 0 { &to_b } else { &to_a };
            let t0 = rdtsc();
            for chunk in q.chunks(bs) {
                paging::mmu_update(chunk).map_err(|x| format!("batch {bs}: {x:?}"))?;
            }
            let dt = rdtsc() - t0;
            if s > 0 && samples.len() < SAMPLES {
                samples.push(dt / 512);
            }
        }
        report(&format!("mmu_update_batch_{bs}"), samples, " per=entry");
    }
    e("flush tlb", paging::flush_tlb())?;
    {
        let mut m = paging::Mapper::new();
        for i in 0..512 {
            e("unmap", m.unmap(BASE + i * 4096))?;
        }
    }

    // Pin and unpin a fresh address space: L4, L3, L2 and PIN_L1S full L1s.
    let tables = 3 + PIN_L1S;
    let mut t = alloc::vec![0u64; tables];
    e("populate tables", paging::populate(&mut t))?;
    let (t4, t3, t2, l1s) = (t[0], t[1], t[2], &t[3..]);
    let leaves: Vec<u64> = (0..512).map(|_| leaf_entry(a, Flags::READ_ONLY)).collect();
    for &m in l1s {
        e("write L1", lab::write_table(m, &leaves))?;
    }
    let e2: Vec<(usize, u64)> = l1s
        .iter()
        .enumerate()
        .map(|(i, &m)| (i, table_entry(m)))
        .collect();
    e("write L2", lab::write_frame(t2, &e2))?;
    e("write L3", lab::write_frame(t3, &[(0, table_entry(t2))]))?;
    e(
        "write L4",
        lab::write_frame(t4, &[(0, table_entry(t3)), (255, self_entry(t4))]),
    )?;
    let (mut pins, mut unpins) = (Vec::new(), Vec::new());
    for s in 0..=SAMPLES {
        let t0 = rdtsc();
        e("pin", paging::pin(t4, Level::L4))?;
        let t1 = rdtsc();
        e("unpin", paging::unpin(t4))?;
        let t2 = rdtsc();
        if s > 0 {
            pins.push(t1 - t0);
            unpins.push(t2 - t1);
        }
    }
    let extra = format!(" tables={tables} entries={}", PIN_L1S * 512);
    let per_table = pins.iter().map(|&p| p / tables as u64).collect();
    report("mmu_pin_fresh_space", pins, &extra);
    report("mmu_pin_per_table", per_table, "");
    report("mmu_unpin_fresh_space", unpins, &extra);
    e("release tables", paging::release(&t))?;
    e("release data", paging::release(&fr))?;
    println!("@ mmutest role=bench done");
    Ok(())
}
