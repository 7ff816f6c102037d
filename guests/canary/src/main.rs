//! The canary: a guest that holds a secret and checks that nobody touched it.
//!
//! It sits beside an attacker or a fuzzer (`guests/hcfuzz`). The secret lives
//! in two places:
//!
//! * memory: `words` u64s (default 8192, 64 KiB) in `.bss`, word `i` holding
//!   `secret ^ i`;
//! * registers: nine general registers loaded with values derived from the
//!   secret and held across yields and preemptions (the domain is switched
//!   out while they are live), then compared.
//!
//! It checks both every `interval_us` (default 2000) of guest time, on every
//! event on its *poke* port, and once more on its *final* port, after which it
//! reports and powers off. Protocol with the peer domain `peer` (the fuzzer):
//! the canary offers port 1 (poke) and port 2 (final) to `peer`; an event on
//! poke means "check now" and is answered on poke; an event on final means
//! "the peer is done": the canary checks, prints its report, answers on final
//! and exits with 0 if the secret was intact everywhere, 1 otherwise.
//!
//! Report lines: `@ canary-breach kind=memory|registers ...` as soon as a
//! check fails, and at the end
//! `@ canary checks=N reg_checks=N pokes=N breaches=N secret=intact|broken`.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use guest_sdk::abi::Hypercall;
use guest_sdk::event::{self, DomId, Port};
use guest_sdk::{println, time, StartInfo};

guest_sdk::entry!(main);

/// Most words of secret memory.
const MAX_WORDS: usize = 16 * 1024;

/// The secret memory. Only reached through raw pointers (`&raw`), never a
/// Rust reference, so writes by anyone else would not be undefined
/// behaviour here, just a detected breach.
static mut SECRET: [u64; MAX_WORDS] = [0; MAX_WORDS];

static POKES: AtomicU64 = AtomicU64::new(0);
static FINAL: AtomicBool = AtomicBool::new(false);

fn on_poke(_: Port) {
    POKES.fetch_add(1, Ordering::AcqRel);
}

fn on_final(_: Port) {
    FINAL.store(true, Ordering::Release);
}

fn arg(si: &StartInfo, key: &str, default: u64) -> u64 {
    si.cmdline_value(key)
        .and_then(|v| match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        })
        .unwrap_or(default)
}

/// Value `i` of the nine register secrets.
fn reg_secret(secret: u64, i: u32) -> u64 {
    secret.rotate_left(7 * i) ^ (u64::from(i) << 56)
}

/// Loads nine registers with the secret, spins and yields `yields` times
/// while they are live (so the domain is switched out and other domains
/// run), and returns how many registers came back changed.
fn check_registers(secret: u64, yields: u64) -> u32 {
    let want: [u64; 9] = core::array::from_fn(|i| reg_secret(secret, i as u32));
    let mut got = want;
    // SAFETY: only registers are touched. `syscall` is the yield hypercall,
    // which by CALL-1 preserves every register except rax, rcx and r11
    // (declared clobbered); rdx, the loop counter, is an argument register
    // and preserved too. No memory is read or written (`nomem`), the stack is
    // not used (`nostack`).
    unsafe {
        core::arch::asm!(
            "2:",
            "mov eax, 20000",
            "3:",
            "dec eax",
            "jnz 3b",
            "mov eax, {yield_nr}",
            "syscall",
            "dec rdx",
            "jnz 2b",
            yield_nr = const Hypercall::Yield as u64,
            inout("rdx") yields.max(1) => _,
            inout("rsi") got[0],
            inout("rdi") got[1],
            inout("r8") got[2],
            inout("r9") got[3],
            inout("r10") got[4],
            inout("r12") got[5],
            inout("r13") got[6],
            inout("r14") got[7],
            inout("r15") got[8],
            out("rax") _,
            out("rcx") _,
            out("r11") _,
            options(nomem, nostack),
        );
    }
    let mut bad = 0;
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        if g != w {
            println!("@ canary-breach kind=registers index={i} got={g:#x} want={w:#x}");
            bad += 1;
        }
    }
    bad
}

fn fill_memory(secret: u64, words: usize) {
    let base = (&raw mut SECRET).cast::<u64>();
    for i in 0..words {
        // SAFETY: `i < words <= MAX_WORDS`: inside the static; raw pointer
        // writes, no reference is formed.
        unsafe { base.add(i).write_volatile(secret ^ i as u64) };
    }
}

/// Compares the secret memory; reports the first bad word. Returns the
/// number of bad words.
fn check_memory(secret: u64, words: usize) -> u64 {
    let base = (&raw const SECRET).cast::<u64>();
    let mut bad = 0;
    for i in 0..words {
        // SAFETY: as in `fill_memory`, reading.
        let got = unsafe { base.add(i).read_volatile() };
        let want = secret ^ i as u64;
        if got != want {
            if bad == 0 {
                println!("@ canary-breach kind=memory index={i} got={got:#x} want={want:#x}");
            }
            bad += 1;
        }
    }
    bad
}

fn main(si: &StartInfo) -> i32 {
    let peer = DomId(arg(si, "peer", 1) as u16);
    let secret = arg(si, "secret", 0x5ec2_e7c0_ffee_d00d);
    let words = (arg(si, "words", 8192) as usize).clamp(1, MAX_WORDS);
    let interval_ns = arg(si, "interval_us", 2000).max(100) * 1000;
    let yields = arg(si, "yields", 2);
    fill_memory(secret, words);

    let ports = event::without_upcalls(|| {
        let poke = event::alloc_unbound(peer)?;
        let fin = event::alloc_unbound(peer)?;
        event::set_handler(poke, on_poke);
        event::set_handler(fin, on_final);
        Ok::<_, guest_sdk::Error>((poke, fin))
    });
    let (poke, fin) = match ports {
        Ok(p) => p,
        Err(e) => {
            println!("canary: cannot offer ports to domain {}: {e}", peer.0);
            return 2;
        }
    };
    println!(
        "canary: {} words of secret, ports poke={} final={} for domain {}",
        words, poke.0, fin.0, peer.0
    );

    let (mut checks, mut reg_checks, mut breaches, mut answered) = (0u64, 0u64, 0u64, 0u64);
    loop {
        let done = FINAL.load(Ordering::Acquire);
        breaches += u64::from(check_registers(secret, yields));
        reg_checks += 1;
        breaches += check_memory(secret, words);
        checks += 1;
        let pokes = POKES.load(Ordering::Acquire);
        if pokes != answered {
            // The poke port is the fuzzer's to attack: it may have closed
            // its end, so a failed answer is not the canary's problem.
            let _ = event::send(poke);
            answered = pokes;
        }
        if done {
            break;
        }
        event::wait_until(time::now_ns().saturating_add(interval_ns));
    }
    println!(
        "@ canary checks={} reg_checks={} pokes={} breaches={} secret={}",
        checks,
        reg_checks,
        POKES.load(Ordering::Acquire),
        breaches,
        if breaches == 0 { "intact" } else { "broken" }
    );
    let _ = event::send(fin);
    i32::from(breaches != 0)
}
