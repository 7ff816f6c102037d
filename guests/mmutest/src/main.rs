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

extern crate alloc;

mod bench;
mod conformance;
mod lab;

use guest_sdk::abi::args::NO_DEADLINE;
use guest_sdk::paging::{self, Flags, Level};
use guest_sdk::{println, sched, StartInfo};

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

/// Publishes its frame range (for humans reading the log), builds a small
/// tree of its own (pinned, never unpinned) and a mapping, then waits to be
/// torn down with everything still in use.
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
    loop {
        sched::block(NO_DEADLINE);
    }
}
