//! Helper domains for the conformance suite (`guests/conformance`), one
//! role per domain (`role=NAME` on the command line). See
//! `docs/conformance.md` for the protocol; in short, every cooperative role
//! offers its ports to domain 1 (the conformance guest) in a fixed order,
//! so their numbers are known in advance (the first port allocated is 1):
//!
//! * `helper`: 1 = ctl, 2 = yes, 3 = no, 4 = a channel the conformance guest
//!   closes (EVT-5), 5 = offered to domain 3 (EVT-2b). Each event on ctl
//!   runs the next step and answers on yes or no.
//! * `third`: 1 = ctl, 2 = yes, 3 = no. On ctl: binds helper's port 5.
//! * `crasher`: 1 = ctl. On ctl: writes to an unmapped page with no trap
//!   entry, and must be destroyed (TRAP-0c).
//! * `spin`: 1 = ctl. On ctl: loops forever without blocking (SCHED-0a).
//! * `rostack`: registers a read-only callback stack, then traps (TRAP-0c).
//! * `nest`: its trap handler prints its depth and traps again, forever
//!   (TRAP-0c; TRAP-5: entered exactly 8 times, the 9th trap destroys it).
//! * `named`: no ports of its own; the manifest's named channels `link`
//!   (to `conf`) and `side` (to `rostack`) are wired at boot (EVT-7). It
//!   checks its start-info table, sends one event on `link` at once if the
//!   table is right, then answers every event on `link` (EVT-7, EVT-7a).
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::sync::atomic::{AtomicU64, Ordering};
use guest_sdk::abi::args::ShutdownReason;
use guest_sdk::abi::Error;
use guest_sdk::event::{self, DomId, Port};
use guest_sdk::{println, sched, trap, StartInfo, UpcallFrame};

guest_sdk::entry!(main);

/// Events seen on the ctl port.
static CTL: AtomicU64 = AtomicU64::new(0);

fn on_ctl(_: Port) {
    CTL.fetch_add(1, Ordering::AcqRel);
}

/// The conformance guest's domain id.
const CONF: DomId = DomId(1);

/// Offers `n` ports to domain `to`, the first of which (port 1) is ctl.
fn offer(to: DomId, n: u32) {
    event::without_upcalls(|| {
        for i in 1..=n {
            let p = event::alloc_unbound(to).expect("offer a port");
            assert_eq!(p, Port(i), "ports are allocated from 1 upwards");
        }
        event::set_handler(Port(1), on_ctl);
    });
}

/// Waits for the `n`th ctl event.
fn step(n: u64) {
    event::wait_for(|| CTL.load(Ordering::Acquire) >= n);
}

fn answer(ok: bool) {
    let port = if ok { Port(2) } else { Port(3) };
    // The conformance guest binds yes and no before its first command.
    let _ = event::send(port);
}

fn main(si: &StartInfo) -> i32 {
    match si.cmdline_value("role").unwrap_or("") {
        "helper" => helper(),
        "third" => third(),
        "crasher" => {
            offer(CONF, 1);
            step(1);
            // SAFETY: a deliberate write to an unmapped page with no trap
            // entry registered: the hypervisor must destroy this domain.
            unsafe {
                core::arch::asm!("mov qword ptr [{}], 1", in(reg) 0xdead_0000u64, options(nostack))
            };
            println!("crasher survived a wild write");
            1
        }
        "spin" => {
            offer(CONF, 1);
            step(1);
            loop {
                core::hint::spin_loop();
            }
        }
        "rostack" => rostack(si),
        "named" => named(si),
        "nest" => {
            trap::set_handler(nest_again).expect("register the trap handler");
            // SAFETY: a deliberate #UD; the handler traps again, forever.
            unsafe { core::arch::asm!("ud2", options(nostack)) };
            println!("nest survived");
            1
        }
        other => {
            println!("conf-peer: unknown role {other:?}");
            2
        }
    }
}

fn helper() -> i32 {
    offer(CONF, 4);
    let five = event::alloc_unbound(DomId(3)).expect("offer port 5 to domain 3");
    assert_eq!(five, Port(5));
    // Step 1 (EVT-5): the conformance guest closed its end of port 4, so a
    // send here must see wrong_state.
    step(1);
    answer(event::send(Port(4)) == Err(Error::WrongState));
    // Step 2 (EVT-0a): answer at once; the conformance guest is busy and
    // must find the event queued when it next runs.
    step(2);
    answer(true);
    // Step 3 (SCHED-3): shut down with a negative code; the conformance
    // guest sees its channels go unbound, xtask checks the report.
    step(3);
    sched::shutdown(ShutdownReason::Reboot, -7)
}

/// Events seen on `link`.
static LINK: AtomicU64 = AtomicU64::new(0);

fn on_link(_: Port) {
    LINK.fetch_add(1, Ordering::AcqRel);
}

/// What is wrong with this domain's channel table, if anything.
fn named_table_problem(si: &StartInfo) -> Option<&'static str> {
    let link = si.channel("link")?;
    let side = si.channel("side")?;
    if link.peer != CONF || link.peer_name != "conf" {
        return Some("link does not lead to conf (domain 1)");
    }
    if side.peer != DomId(6) || side.peer_name != "rostack" {
        return Some("side does not lead to rostack (domain 6)");
    }
    if si.channels().count() != 2 || si.channel("nope").is_some() {
        return Some("the table lists channels the manifest did not give this domain");
    }
    None
}

fn named(si: &StartInfo) -> i32 {
    let Some(link) = si.channel("link") else {
        println!("named: no channel `link` in the start info");
        return 1;
    };
    if si.channel("side").is_none() {
        println!("named: no channel `side` in the start info");
        return 1;
    }
    if let Some(why) = named_table_problem(si) {
        // No first event: the conformance guest reports EVT-7 failed.
        println!("named: {why}");
        return 1;
    }
    // First act: the channel must already be connected (EVT-7).
    if let Err(e) = link.send() {
        println!("named: the first send on link failed: {e}");
        return 1;
    }
    link.listen(on_link).expect("listen on link");
    let mut answered = 0;
    loop {
        event::wait_for(|| LINK.load(Ordering::Acquire) > answered);
        answered += 1;
        let _ = link.send();
    }
}

fn third() -> i32 {
    offer(CONF, 3);
    step(1);
    let first = event::bind_interdomain(DomId(2), Port(5));
    let again = event::bind_interdomain(DomId(2), Port(5));
    answer(first.is_ok() && again == Err(Error::WrongState));
    step(2);
    0
}

/// Registers a callback stack whose top is the end of the read-only
/// start-info page, then traps: the frame cannot be written (TRAP-0c).
#[allow(unsafe_code)]
fn rostack(si: &StartInfo) -> i32 {
    let start_info_va = si.page_va(si.first_free_page - 1);
    let entry = rostack as *const () as u64;
    // SAFETY: the entry is never reached: the frame cannot be pushed, and
    // the hypervisor must destroy the domain instead.
    let r = unsafe { guest_sdk::upcall::set_callbacks(0, entry, start_info_va + 4096) };
    if let Err(e) = r {
        println!("rostack: set_callbacks refused: {e}");
        return 1;
    }
    // SAFETY: a deliberate #UD with an unwritable callback stack.
    unsafe { core::arch::asm!("ud2", options(nostack)) };
    println!("rostack survived");
    1
}

/// Trap handler entries so far (none returns, so this is the depth).
static NEST_DEPTH: AtomicU64 = AtomicU64::new(0);

fn nest_again(_: &mut UpcallFrame) -> trap::TrapAction {
    // TRAP-5: xtask checks that the last depth printed is exactly 8.
    let depth = NEST_DEPTH.fetch_add(1, Ordering::AcqRel) + 1;
    println!("nest depth={depth}");
    // SAFETY: a deliberate #UD inside the trap handler: traps nest.
    unsafe { core::arch::asm!("ud2", options(nostack)) };
    trap::TrapAction::Crash
}
