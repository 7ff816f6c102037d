//! Direct paging from the guest side (`docs/abi/mmu.md`), one image, roles
//! by command line:
//!
//! * `role=conformance`: the attack suite; one `@ conformance clause=...`
//!   line per clause. Each refusal is checked for its exact error and for
//!   having changed nothing (entries through the self entry, frame types and
//!   counts through `mmu_frame_info`).
//! * `role=victim`: a second domain whose frames the attacker tries to map;
//!   it builds and pins a tree of its own and never releases it (teardown
//!   must, `MMU-16`; the run's frame audit shows it).
//! * `role=bench`: instructions per entry of `mmu_update` batches, and the
//!   cost of pinning a fresh address space (`@ bench ...`).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod bench;
mod conformance;
mod lab;

use core::sync::atomic::{AtomicBool, Ordering};
use guest_sdk::abi::args::NO_DEADLINE;
use guest_sdk::paging::{self, Flags, Level};
use guest_sdk::{event, println, sched, StartInfo};

guest_sdk::entry!(main);

fn main(si: &StartInfo) -> i32 {
    match si.cmdline_value("role").unwrap_or("conformance") {
        "conformance" => conformance::run(si),
        "victim" => victim(),
        "bench" => bench::run(),
        other => {
            println!("mmutest: unknown role {other:?}");
            2
        }
    }
}

/// The victim's domain id (manifest order in `guests/scenarios/mmu.toml`).
pub const VICTIM: u16 = 2;
/// The attacker's domain id.
pub const ATTACKER: u16 = 1;

/// Word `i` of the canary page's secret.
pub fn secret(i: u64) -> u64 {
    0x5EC2_E700_0000_0000 | (i * 0x9E37) ^ 0xCA11
}

static POKED: AtomicBool = AtomicBool::new(false);

fn on_poke(_: event::Port) {
    POKED.store(true, Ordering::Release);
}

/// Publishes its frame range (for humans reading the log), builds a small
/// tree of its own (pinned, never unpinned) and a mapping holding a secret
/// (the canary), then waits to be torn down with everything still in use.
/// When the attacker, done with its suite, sends on the victim's port, the
/// victim checks its secret, reports `@ mmutest role=victim secret=...`
/// and answers (MEM-8's canary).
fn victim() -> i32 {
    let list = paging::frame_list();
    let (lo, hi) = (
        list.iter().copied().min().unwrap_or(0),
        list.iter().copied().max().unwrap_or(0),
    );
    println!("@ mmutest role=victim first_mfn={lo:#x} last_mfn={hi:#x}");
    let kept = (|| -> Result<(), guest_sdk::Error> {
        let d = paging::populate_one()?;
        paging::map(paging::MAP_BASE, d, Flags::WRITABLE)?;
        let t = paging::populate_one()?;
        paging::pin(t, Level::L1)?;
        Ok(())
    })();
    println!(
        "@ mmutest role=victim tree={}",
        if kept.is_ok() { "pinned" } else { "failed" }
    );
    if kept.is_ok() {
        for i in 0..512 {
            lab::poke(paging::MAP_BASE + i * 8, secret(i));
        }
    }
    let port = event::without_upcalls(|| {
        let p = event::alloc_unbound(event::DomId(ATTACKER))?;
        event::set_handler(p, on_poke);
        Ok::<_, guest_sdk::Error>(p)
    });
    match port {
        Ok(port) => loop {
            event::wait_for(|| POKED.swap(false, Ordering::AcqRel));
            let bad = if kept.is_ok() {
                (0..512)
                    .filter(|&i| lab::peek(paging::MAP_BASE + i * 8) != secret(i))
                    .count()
            } else {
                512
            };
            println!(
                "@ mmutest role=victim secret={} bad_words={bad}",
                if bad == 0 { "intact" } else { "corrupted" }
            );
            let _ = event::send(port);
        },
        Err(e) => {
            println!("@ mmutest role=victim port=failed error={}", e.name());
            loop {
                sched::block(NO_DEADLINE);
            }
        }
    }
}
