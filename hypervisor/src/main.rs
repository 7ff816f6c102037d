//! Tahoma: a paravirtualizing microkernel hypervisor for x86_64.
//!
//! Boot path (see `docs/boot.md`): PVH entry in 32-bit mode ([`arch::boot`])
//! → long mode on boot page tables → [`kernel_start`]: console, descriptor
//! tables, heap, start info, frame allocator and the hypervisor's own page
//! tables, CPU protections, then the boot pack and its domains.
#![no_std]
#![no_main]
// Every `unsafe` block names its own obligation in a `// SAFETY:` comment.
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod arch;
mod console;
mod domain;
mod guestmem;
mod hv;
mod hypercall;
mod io;
mod mem;
mod named;
mod pvh;
mod selftest;
mod testopt;
mod time;
mod trap;

use console::Quoted;
use tahoma_core::bootpack::Pack;

/// Called from the boot trampoline on the boot stack, with the physical
/// address of `hvm_start_info`.
#[no_mangle]
extern "C" fn kernel_start(start_info: u64) -> ! {
    // First: every entry stub calls through this table (arch is a leaf).
    arch::entries::register(arch::entries::Entries {
        hypercall_slow: hv::hypercall_entry,
        foreign: hv::foreign_entry,
        trap: trap::handle,
    });
    console::init();
    arch::cpu::init();
    mem::init_heap();
    log::info!("Tahoma hypervisor, ABI {:#x}", hypercall_abi::ABI_VERSION);

    let boot = match pvh::parse(start_info) {
        Ok(b) => b,
        Err(e) => fail(format_args!(
            "start info at {start_info:#x} unusable: {e}; boot with a PVH loader (QEMU -kernel)"
        )),
    };
    match boot.arg("console") {
        Some("sync") => console::set_sync(),
        Some("ring") | None => {}
        Some(other) => {
            log::warn!("unknown console={other:?} ignored; known: ring (the default), sync")
        }
    }
    report!(
        "boot",
        "abi={:#x} cmdline={}",
        hypercall_abi::ABI_VERSION,
        Quoted(&boot.cmdline)
    );
    if console::is_sync() {
        report!("console", "mode=sync");
    }

    let mut exclude = boot.boot_ranges.clone();
    exclude.extend(boot.module);
    let mm = mem::init(&boot.memmap, &exclude);
    for (r, k) in &boot.memmap {
        log::info!("  memory {:#012x}-{:#012x} {:?}", r.start, r.end, k);
    }
    let free = mem::FRAMES.lock().as_ref().map_or(0, |a| a.free_count());
    report!(
        "memmap",
        "regions={} ram_bytes={} usable_frames={} free_frames={} pml4={:#x}",
        mm.regions,
        mm.ram_bytes,
        mm.usable_frames,
        free,
        mm.pml4
    );
    check_heap();
    if let Some(list) = boot.arg("testopt") {
        testopt::set(list);
    }
    if testopt::verify_build() {
        report!("testopt", "verify-build");
    }
    if testopt::poison_free() {
        let n = mem::poison_free_frames();
        report!(
            "testopt",
            "poison-free frames={} pattern={:#x}",
            n,
            mem::POISON
        );
    }
    match arch::enable_protections() {
        Ok(p) => report!(
            "cpu",
            "smep=1 smap=1 pge=1 umip={} fpu={} xcr0={:#x} fpu_area={} rdtscp={}",
            u8::from(p.umip),
            if p.fpu.xsave { "xsave" } else { "fxsave" },
            p.fpu.xcr0,
            p.fpu.size,
            u8::from(p.rdtscp)
        ),
        Err(arch::Missing(what)) => {
            report!("cpu-refused", "missing={}", Quoted(&what));
            fail(format_args!(
                "this CPU lacks {what}, which the hypervisor requires to keep guests out of ring 0; \
                 boot on a CPU that has them (QEMU: -cpu qemu64,+smep,+smap or -cpu max)"
            ));
        }
    }
    arch::syscall::init();
    time::init();

    if boot.arg("testonly") == Some("compat32") {
        arch::cpu::add_compat32_segment();
        log::warn!("test boot: a 32-bit ring-3 code segment exists (testonly=compat32)");
        report!("testonly", "compat32=1");
    }
    if let Some(test) = boot.arg("selftest") {
        selftest::run(test);
    }

    match boot.module {
        None => report!("bootpack", "none"),
        Some(m) => {
            let bytes = mem::phys_slice(m.start, m.len());
            match Pack::parse(bytes) {
                Ok(pack) => {
                    report!(
                        "bootpack",
                        "size={} domains={} scenario={}",
                        pack.len(),
                        pack.header().domain_count,
                        Quoted(pack.scenario().unwrap_or(""))
                    );
                    if pack.header().domain_count > 0 {
                        hv::start(&pack);
                    }
                }
                Err(e) => {
                    let mut msg = heapless::String::<160>::new();
                    let _ = core::fmt::write(&mut msg, format_args!("{e}"));
                    report!("bootpack", "error={}", Quoted(&msg));
                    fail(format_args!(
                        "boot module refused: {e}; rebuild it with `cargo xtask build`"
                    ));
                }
            }
        }
    }
    log::info!("nothing left to run; powering off");
    report!("exit", "status=success");
    arch::exit_qemu(arch::EXIT_SUCCESS)
}

/// Allocates, checks and frees some heap memory; reports the result.
fn check_heap() {
    let v: alloc::vec::Vec<u64> = (0..4096u64).map(|i| i * i).collect();
    let b = alloc::boxed::Box::new([7u8; 1000]);
    let ok = v
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i as u64) * (i as u64))
        && b.iter().all(|&x| x == 7);
    if !ok {
        fail(format_args!("heap self-check read back wrong values"));
    }
    report!("heap", "ok bytes={}", mem::heap_size());
}

/// Logs a fatal error and ends the run with a failure status.
fn fail(args: core::fmt::Arguments<'_>) -> ! {
    log::error!("{args}");
    report!("exit", "status=failure");
    arch::exit_qemu(arch::EXIT_FAILURE)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut msg = heapless::String::<256>::new();
    let _ = core::fmt::write(&mut msg, format_args!("{}", info.message()));
    let mut loc = heapless::String::<128>::new();
    if let Some(l) = info.location() {
        let _ = core::fmt::write(&mut loc, format_args!("{}:{}", l.file(), l.line()));
    }
    report!(
        "panic",
        "message={} location={}",
        Quoted(&msg),
        Quoted(&loc)
    );
    log::error!("hypervisor panic at {loc}: {msg}");
    let rbp: u64;
    // SAFETY: reads the frame pointer register; no memory is touched.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags))
    };
    trap::backtrace(0, rbp);
    report!("exit", "status=failure");
    arch::exit_qemu(arch::EXIT_FAILURE)
}
