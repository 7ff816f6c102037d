//! Misbehaves on request (`do=ACTION`), to show that the damage stays in
//! this domain (TRAP-0c, TRAP-3). Without a trap handler each action below
//! must get the domain destroyed with a report; `do=trap-*` installs a
//! handler first, observes the reflected exception and carries on.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use guest_sdk::{println, trap, StartInfo, UpcallFrame};

guest_sdk::entry!(main);

static SEEN_VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
static SEEN_CR2: AtomicU64 = AtomicU64::new(0);
static SKIP: AtomicU64 = AtomicU64::new(0);

fn observe(frame: &mut UpcallFrame) -> trap::TrapAction {
    SEEN_VECTOR.store(frame.vector, Ordering::Release);
    SEEN_CR2.store(frame.cr2, Ordering::Release);
    frame.rip += SKIP.load(Ordering::Acquire);
    trap::TrapAction::Resume
}

/// Runs one privileged or faulting instruction; returns its length in bytes.
fn act(what: &str) -> Option<u64> {
    // SAFETY: each arm deliberately executes an instruction a ring-3 guest
    // may not (or touches memory it does not own); none can harm this
    // guest's own memory, and the hypervisor must turn each into a fault of
    // this domain (reflected or fatal), which is what the scenario checks.
    unsafe {
        match what {
            "hlt" => asm!("hlt"),
            "cli" => asm!("cli"),
            "in" => asm!("in al, dx", in("dx") 0x3f8u16, out("al") _),
            "out" => asm!("out dx, al", in("dx") 0xf4u16, in("al") 0u8),
            "wrmsr" => asm!("wrmsr", in("ecx") 0xc000_0082u32, in("eax") 0u32, in("edx") 0u32),
            "movcr3" => asm!("mov cr3, {}", in(reg) 0u64),
            "lgdt" => {
                let zero = [0u64; 2];
                asm!("lgdt [{}]", in(reg) zero.as_ptr());
            }
            "wild" => asm!("mov qword ptr [{}], 1", in(reg) 0xdead_0000u64),
            "hyper" => asm!("mov {}, qword ptr [{}]", out(reg) _, in(reg) 0xffff_ffff_8010_0000u64),
            "directmap" => asm!("mov qword ptr [{}], 0", in(reg) 0xffff_8000_0010_0000u64),
            "ud2" => asm!("ud2"),
            "loop" => loop {
                core::hint::spin_loop();
            },
            _ => return None,
        }
    }
    Some(0)
}

/// Recurses `depth` frames of about 1 KiB each (the buffer is written and
/// read, so every frame's pages are touched); returns the lowest stack
/// address reached.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let mut buf = [0u8; 1000];
    core::hint::black_box(&mut buf)[0] = depth as u8;
    let here = buf.as_ptr() as u64;
    let below = if depth == 0 { here } else { recurse(depth - 1) };
    core::hint::black_box(&buf);
    here.min(below)
}

/// `do=stack-deep` / `do=stack-overflow`: the main stack's reserve grown
/// on demand (`guest_sdk::stack`, issue 13). `stack-deep` recurses
/// `kib=N` KiB (default 40: past the 16 KiB initial stack, inside the
/// reserve) and reports the reserve pages mapped lazily beside the pages
/// the recursion reached below the initial stack; `stack-overflow`
/// recurses without end and must be stopped at the guard page.
fn stack(si: &StartInfo, what: &str) -> i32 {
    let growable = match guest_sdk::stack::grow_on_demand() {
        Ok(n) => n,
        Err(e) => {
            println!("grow_on_demand refused: {e}");
            return 2;
        }
    };
    let before = guest_sdk::stack::grown_pages();
    let kib = if what == "stack-overflow" {
        u64::MAX
    } else {
        si.cmdline_value("kib")
            .and_then(|v| v.parse().ok())
            .unwrap_or(40)
    };
    let lowest = recurse(kib);
    // Pages below the initial stack the recursion's frames reached.
    let stack_first = si.page_va(si.stack_first_page);
    let reached = stack_first.saturating_sub(lowest & !0xfff) / 4096;
    println!(
        "@ stack growable={} grown_before={} grown={} reached={}",
        growable,
        before,
        guest_sdk::stack::grown_pages(),
        reached
    );
    0
}

fn main(si: &StartInfo) -> i32 {
    let what = si.cmdline_value("do").unwrap_or("");
    if what.starts_with("stack-") {
        return stack(si, what);
    }
    if let Some(inner) = what.strip_prefix("trap-") {
        // `mov [rcx], rax` is 3 bytes; the single-byte privileged
        // instructions are 1; others as encoded by the assembler.
        let len = match inner {
            "hlt" | "cli" => 1,
            "out" | "in" => 1,
            "wild" => 3,
            "ud2" | "wrmsr" => 2,
            _ => 0,
        };
        SKIP.store(len, Ordering::Release);
        trap::set_handler(observe).expect("register the trap handler");
        if inner == "wild" {
            // SAFETY: a deliberate write to the unmapped page 0xdead_0000;
            // the #PF is reflected to `observe`, which skips the 3-byte
            // instruction, so execution resumes right after it.
            unsafe { asm!("mov qword ptr [rcx], rax", in("rcx") 0xdead_0000u64, in("rax") 1u64) };
        } else if act(inner).is_none() {
            println!("unknown action {inner:?}");
            return 2;
        }
        println!(
            "@ trapped action={} vector={} cr2={:#x}",
            inner,
            SEEN_VECTOR.load(Ordering::Acquire),
            SEEN_CR2.load(Ordering::Acquire)
        );
        return 0;
    }
    if act(what).is_none() {
        println!("unknown action {what:?}");
        return 2;
    }
    println!("@ survived action={what}");
    1
}
