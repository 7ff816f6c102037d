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
//! * `grant` (domain 9, GNT-*): grants the conformance guest frames at
//!   fixed references (0: read-only 'R' page; 1: writable page holding a
//!   magic word and the mfn of a secret page it never grants; 2: a page
//!   granted to domain 8 instead; 3: a pinned page table, read-only; 4:
//!   revoked again, a stale reference), then offers 1 = ctl, 2 = yes,
//!   3 = no. Steps: (1) maps the guest's reference 0 writable and writes
//!   `PEERWROTE`, checks its reference 1 maps read-only only, keeps both;
//!   (2) unmaps both; (3) checks its secret and 'R' pages are intact, maps
//!   the guest's reference 0 again and shuts down with it mapped (a dying
//!   grantee and a dying granter at once).
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
        "grant" => grant::run(),
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

/// The `grant` role (GNT-*): see the module header.
mod grant {
    use super::{answer, offer, step, CONF};
    use guest_sdk::abi::args::ShutdownReason;
    use guest_sdk::abi::Error;
    use guest_sdk::event::DomId;
    use guest_sdk::grant::{self as gr, GrantRef};
    use guest_sdk::paging::{self, Flags, Level, MAP_BASE};
    use guest_sdk::{memory, mmu, println, sched};

    /// The pages it owns, mapped writable from here.
    const OWN: u64 = MAP_BASE + 0x40_0000;
    /// Where it maps the guest's grants (its L1 made in advance).
    pub const SLOTS: u64 = MAP_BASE + 0x80_0000;
    /// The magic word at the start of the writable grant (reference 1).
    pub const MAGIC: u64 = 0x4753_4e54_4752_414e;
    /// The secret page's words.
    const SECRET: u64 = 0x5ec2_e75e_c2e7_5ec2;

    fn page(i: u64) -> *mut u64 {
        (OWN + i * 4096) as *mut u64
    }

    fn fill(i: u64, word: u64) {
        for k in 0..512 {
            // SAFETY: page `i` of OWN is mapped writable by `setup` for the
            // domain's life; volatile, the guest may read it concurrently
            // through a grant.
            unsafe { page(i).add(k).write_volatile(word) };
        }
    }

    fn all(i: u64, word: u64) -> bool {
        // SAFETY: as in `fill`.
        (0..512).all(|k| unsafe { page(i).add(k).read_volatile() } == word)
    }

    /// Frames: 0 'R' page, 1 writable grant, 2 secret, 3 granted to 8.
    fn setup() -> Result<(), Error> {
        let mut frames = [0u64; 5];
        memory::populate(&mut frames)?;
        for (i, &f) in frames[..4].iter().enumerate() {
            paging::map(OWN + i as u64 * 4096, f, Flags::WRITABLE)?;
        }
        fill(0, u64::from_le_bytes(*b"RRRRRRRR"));
        fill(1, 0);
        fill(2, SECRET);
        // SAFETY: page 1 is mapped writable (above).
        unsafe {
            page(1).write_volatile(MAGIC);
            page(1).add(1).write_volatile(frames[2]);
        }
        let table = frames[4];
        mmu::pin(table, Level::L1)?;
        gr::grant_access_at(frames[0], CONF, true, GrantRef(0))?;
        gr::grant_access_at(frames[1], CONF, false, GrantRef(1))?;
        gr::grant_access_at(frames[3], DomId(8), false, GrantRef(2))?;
        gr::grant_access_at(table, CONF, true, GrantRef(3))?;
        gr::grant_access_at(frames[0], CONF, true, GrantRef(4))?;
        gr::revoke(GrantRef(4))?;
        // An L1 for the grant slots: map a page at the end, unmap it.
        paging::map(SLOTS + 511 * 4096, frames[0], Flags::READ_ONLY)?;
        paging::unmap(SLOTS + 511 * 4096)?;
        Ok(())
    }

    fn read(va: u64) -> u64 {
        // SAFETY: only called on a slot this role just mapped.
        unsafe { (va as *const u64).read_volatile() }
    }

    pub fn run() -> i32 {
        if let Err(e) = setup() {
            println!("grant: setup failed: {e}");
            return 1;
        }
        offer(CONF, 3);
        // Step 1: map the guest's reference 0 writable, write through it;
        // reference 1 is read-only: writable refused, read-only works.
        step(1);
        let rw = gr::map(CONF, GrantRef(0), SLOTS, false);
        if rw.is_ok() {
            // SAFETY: just mapped writable at SLOTS.
            unsafe { (SLOTS as *mut [u8; 9]).write_volatile(*b"PEERWROTE") };
        }
        let refused = gr::map(CONF, GrantRef(1), SLOTS + 4096, false);
        let ro = gr::map(CONF, GrantRef(1), SLOTS + 4096, true);
        let saw_c = ro.is_ok() && read(SLOTS + 4096) == u64::from_le_bytes(*b"CCCCCCCC");
        let ok1 = rw.is_ok() && refused == Err(Error::PermissionDenied) && saw_c;
        if !ok1 {
            println!("grant: step 1: rw {rw:?} refused {refused:?} ro {ro:?} saw_c {saw_c}");
        }
        answer(ok1);
        // Step 2: unmap both.
        step(2);
        let u1 = rw.map(|h| gr::unmap(h).map_err(|(_, e)| e));
        let u2 = ro.map(|h| gr::unmap(h).map_err(|(_, e)| e));
        answer(matches!(u1, Ok(Ok(()))) && matches!(u2, Ok(Ok(()))));
        // Step 3: canary, then die with the guest's page mapped.
        step(3);
        let intact = all(2, SECRET) && all(0, u64::from_le_bytes(*b"RRRRRRRR"));
        let again = gr::map(CONF, GrantRef(0), SLOTS, false);
        if !intact || again.is_err() {
            println!("grant: step 3: secret intact {intact}, map {again:?}");
        }
        answer(intact && again.is_ok());
        // Kept mapped: the hypervisor tears it down with this domain (GNT-0c).
        let _kept = again;
        sched::shutdown(ShutdownReason::Poweroff, 0)
    }
}
