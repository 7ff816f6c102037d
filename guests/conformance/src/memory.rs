//! Clauses of `docs/abi/memory.md`: one function per clause.

#[allow(unused_imports)]
use crate::*;

/// Checks accumulated across phases for one clause.
static MEM2: spin::Mutex<Ck> = spin::Mutex::new(Ck::new());

/// MEM-2a (run in the `memory` phase).
pub fn mem_2a(si: &StartInfo) {
    clause("MEM-2a", "frames are scrubbed", |ck| {
        // The last page of the start-info page beyond the record, the frame
        // list's tail, and the highest heap pages are zero.
        let si_end = start_info_va() + core::mem::size_of::<RawStartInfo>() as u64;
        let mut nonzero = 0;
        let mut va = (si_end + 7) & !7;
        while va < start_info_va() + 4096 {
            // SAFETY: inside the start-info page.
            nonzero += u64::from(unsafe { arch::peek(va) } != 0);
            va += 8;
        }
        ck.eq("start-info tail nonzero words", nonzero, 0);
        let fl_end = si.frame_list_va + si.nr_pages * 8;
        let mut nonzero = 0;
        let mut va = fl_end;
        while va & 0xfff != 0 {
            // SAFETY: inside the frame list's last page.
            nonzero += u64::from(unsafe { arch::peek(va) } != 0);
            va += 8;
        }
        ck.eq("frame-list tail nonzero words", nonzero, 0);
        // The top 64 pages of the heap (the allocator fills from the
        // bottom), which ends below the SDK's stack reserve (MEM-2d).
        let hi = si.page_va(guest_sdk::stack_floor_page(si));
        let mut nonzero = 0;
        let mut va = hi - 64 * 4096;
        while va < hi {
            // SAFETY: heap pages are mapped read-write; nothing uses these.
            nonzero += u64::from(unsafe { arch::peek(va) } != 0);
            va += 8;
        }
        ck.eq("high heap nonzero words", nonzero, 0);
        // The lowest page of the stack's reserve (far below anything used).
        let lo = si.page_va(guest_sdk::stack_floor_page(si));
        let mut nonzero = 0;
        for i in 0..512 {
            // SAFETY: the stack pages are mapped read-write.
            nonzero += u64::from(unsafe { arch::peek(lo + 8 * i) } != 0);
        }
        ck.eq("lowest stack reserve page nonzero words", nonzero, 0);
    });
}

/// MEM-2d (run in the `faults` phase, with the conformance entries
/// registered): the initial stack is the window's top
/// `INITIAL_STACK_PAGES`, each page read-write, nothing mapped above it.
pub fn mem_2d(si: &StartInfo) {
    clause("MEM-2d", "the initial stack: the top 4 pages", |ck| {
        ck.eq("INITIAL_STACK_PAGES", INITIAL_STACK_PAGES, 4);
        ck.eq(
            "stack_first_page",
            si.stack_first_page,
            si.nr_pages - INITIAL_STACK_PAGES,
        );
        for page in si.stack_first_page..si.nr_pages {
            // A word read and written back: harmless even where the live
            // stack is (one thread; upcalls run on the callback stack).
            let va = si.page_va(page) + 8;
            let f = trapped(|| {
                at!("mov rax, [rcx]", "mov [rcx], rax"; in("rcx") va, out("rax") _);
            });
            ck.eq("stack page read and written", f.map(|f| f.vector), None);
        }
        let top = si.page_va(si.nr_pages);
        let f = trapped(|| {
            at!("mov qword ptr [rcx], 0"; in("rcx") top);
        });
        ck.eq(
            "a store past the stack's top",
            f.map(|f| (f.vector, f.cr2, f.error_code & 0x7)),
            Some((14, top, 6)),
        );
    });
}

/// MEM-4 (run in the `memory` phase).
pub fn mem_4(si: &StartInfo) {
    clause("MEM-4", "shared-info page", |ck| {
        let t = time_info();
        ck.eq("version even", t.version % 2, 0);
        ck.eq("tsc_mul", t.tsc_mul, TimeInfo::mul_for_hz(si.tsc_hz));
        ck.eq("reserved", t.reserved, 0);
        // The hypervisor relies on no value being sane: garbage in the
        // upcall flags and the selector is survived.
        event::without_upcalls(|| {
            Sh::sel().store(u64::MAX, SeqCst);
            ck.eq(
                "abi_version with garbage sel",
                c1(Hypercall::AbiVersion, 0),
                Ok(u64::from(ABI_VERSION)),
            );
            Sh::sel().store(0, SeqCst);
        });
    });
}

/// MEM-3a (run in the `mem3a` phase).
pub fn mem_3a(si: &StartInfo) {
    use guest_sdk::abi::layout::{NamedChannel, START_INFO_CHANNELS_OFFSET};
    clause("MEM-3a", "the start-info channel table", |ck| {
        let si_va = start_info_va();
        // SAFETY: MEM-3: the start-info page stays mapped read-only.
        let before: RawStartInfo = unsafe { core::ptr::read_volatile(si_va as *const _) };
        ck.eq("channel_count", before.channel_count, 1);
        let e = &before.channels[0];
        let mut name = [0u8; 32];
        name[..4].copy_from_slice(b"link");
        ck.eq("name, NUL-padded", e.name, name);
        let mut peer = [0u8; 32];
        peer[..5].copy_from_slice(b"named");
        ck.eq("peer_name, NUL-padded", e.peer_name, peer);
        ck.eq("peer_domain", e.peer_domain, NAMED);
        ck.eq("reserved", e.reserved, 0);
        ck.eq(
            "port agrees with the SDK",
            Some(e.port),
            si.channel("link").map(|c| c.port.0),
        );
        let rest_zero = before.channels[1..].iter().all(|c| {
            c.name == [0; 32] && c.peer_name == [0; 32] && c.port == 0 && c.peer_domain == 0
        });
        ck.t(rest_zero, "entries after channel_count are not zero");
        ck.t(si.channel("nope").is_none(), "an unknown name is listed");
        // Read-only: writes fault (TRAP-0), and nothing changes.
        let port_va = si_va
            + START_INFO_CHANNELS_OFFSET as u64
            + core::mem::offset_of!(NamedChannel, port) as u64;
        let count_va = si_va + core::mem::offset_of!(RawStartInfo, channel_count) as u64;
        for (what, va) in [("port", port_va), ("channel_count", count_va)] {
            let f = trapped(|| {
                at!("mov dword ptr [rcx], 99"; in("rcx") va);
            });
            ck.eq(
                &format!("write to {what}: #PF, cr2, user write to a present page"),
                f.map(|f| (f.vector, f.cr2, f.error_code & 7)),
                Some((14, va, 7)),
            );
        }
        // SAFETY: MEM-3: the start-info page stays mapped read-only at
        // `si_va`; a volatile read of plain repr(C) data.
        let after: RawStartInfo = unsafe { core::ptr::read_volatile(si_va as *const _) };
        ck.t(bytes(&before) == bytes(&after), "the table changed");
    });
}

/// MEM-1 (run in the `faults` phase).
pub fn mem_1() {
    clause("MEM-1", "the upper half faults from ring 3", |ck| {
        for va in [
            0xffff_8000_0000_0000u64,
            0xffff_8000_0010_0000,
            0xffff_ffff_8000_0000,
        ] {
            let mut start = 0;
            let f = trapped(|| start = at!("mov rax, [rcx]"; in("rcx") va, out("rax") _));
            match f {
                Some(f) => {
                    ck.eq(&format!("vector at {va:#x}"), f.vector, 14);
                    ck.eq("cr2", f.cr2, va);
                    ck.eq("error: user read", f.error_code & 0x6, 0x4);
                    ck.eq("rip", f.rip, start);
                }
                None => ck.t(false, &format!("read of {va:#x} did not trap")),
            }
            let f = trapped(|| {
                at!("mov qword ptr [rcx], 0"; in("rcx") va);
            });
            ck.eq(
                &format!("write {va:#x}"),
                f.map(|f| (f.vector, f.error_code & 6)),
                Some((14, 6)),
            );
        }
    });
}

/// MEM-2b: judged by xtask from a boot of its own (refused images).
pub fn mem_2b() {
    emit(
        "MEM-2b",
        "bad images are refused at boot",
        true,
        "judged by xtask (separate boot)",
    );
}

/// MEM-2, first part: the layout checks, kept in `MEM2` until the fault
/// checks (with the conformance entries registered) report the clause
/// ([`mem_2`]).
pub fn mem_2_layout(si: &StartInfo) {
    MEM2.lock().checks = 0;
    {
        let ck = &mut *MEM2.lock();
        let code = main as *const () as u64;
        ck.t(
            code >= WINDOW_BASE && code < si.page_va(si.pt_first_page),
            "code is not in the image pages",
        );
        ck.t(si.pt_pages >= 5, "fewer than 5 page-table pages");
        let fl = si.page_va(si.pt_first_page + si.pt_pages);
        ck.eq("frame list follows the page tables", si.frame_list_va, fl);
        let fl_pages = (si.nr_pages * 8).div_ceil(4096);
        ck.eq(
            "start info follows the frame list",
            start_info_va(),
            fl + fl_pages * 4096,
        );
        ck.eq(
            "first free page",
            si.first_free_page,
            si.pt_first_page + si.pt_pages + fl_pages + 1,
        );
        // The frame list: nr_pages distinct nonzero frames; page tables readable.
        let mut frames = Vec::new();
        for i in 0..si.nr_pages {
            // SAFETY: the frame list is mapped read-write (MEM-2).
            frames.push(unsafe { arch::peek(si.frame_list_va + 8 * i) });
        }
        ck.t(frames.iter().all(|&f| f != 0), "a zero frame number");
        frames.sort_unstable();
        frames.dedup();
        ck.eq("distinct frames", frames.len() as u64, si.nr_pages);
        // SAFETY: page tables are mapped read-only (MEM-2).
        let l4_0 = unsafe { arch::peek(si.page_va(si.pt_first_page)) };
        ck.t(l4_0 & 1 == 1, "root page table entry 0 not present");
        // The shared-info page is read-write.
        let w = Sh::word(511);
        let old = w.load(SeqCst);
        w.store(0x1234, SeqCst);
        ck.eq("shared info writable", w.load(SeqCst), 0x1234);
        w.store(old, SeqCst);
        // Fault checks (read-only, unmapped, no-execute) are in `faults`,
        // which reports the clause.
    }
}

/// MEM-2: the layout checks made earlier ([`mem_2_layout`]) and the
/// faults (run in the `faults` phase, with the conformance entries
/// registered).
pub fn mem_2(si: &StartInfo) {
    let mut mem2 = core::mem::take(&mut *MEM2.lock());
    finish(
        "MEM-2",
        "the window: layout and permissions",
        &mut mem2,
        |ck| {
            let pf = |va: u64, write: bool| {
                let f = if write {
                    trapped(|| {
                        at!("mov qword ptr [rcx], 0"; in("rcx") va);
                    })
                } else {
                    trapped(|| {
                        at!("mov rax, [rcx]"; in("rcx") va, out("rax") _);
                    })
                };
                f.map(|f| (f.vector, f.cr2, f.error_code & 0x7))
            };
            ck.eq("page 0", pf(0, false), Some((14, 0, 4)));
            ck.eq(
                "below the shared page",
                pf(SHARED_INFO_VA - 8, false),
                Some((14, SHARED_INFO_VA - 8, 4)),
            );
            let end = si.page_va(si.nr_pages);
            ck.eq("past the window", pf(end, false), Some((14, end, 4)));
            let st = start_info_va();
            ck.eq(
                "start info read-only",
                pf(st + 64, true),
                Some((14, st + 64, 7)),
            );
            let pt = si.page_va(si.pt_first_page);
            ck.eq(
                "page tables read-only",
                pf(pt + 8, true),
                Some((14, pt + 8, 7)),
            );
            let code = (main as *const () as u64) & !7;
            ck.eq("code read-only", pf(code, true), Some((14, code, 7)));
            // No-execute: the heap and the shared-info page.
            for (what, target) in [
                ("heap", si.page_va(si.stack_first_page) - 4096),
                ("shared info", SHARED_INFO_VA + 0x800),
            ] {
                up::TR_MODE.store(up::TR_R15, SeqCst);
                let before = up::TR_COUNT.load(SeqCst);
                up::TR_SKIP_LEN.store(8, SeqCst);
                // SAFETY: calls a no-execute page; the fetch faults, the handler
                // resumes at r15 and pops the return address (TR_SKIP_LEN = 8).
                unsafe {
                    core::arch::asm!(
                        "lea r15, [rip + 2f]",
                        "call rax",
                        "2:",
                        in("rax") target,
                        out("r15") _,
                        clobber_abi("C"),
                    )
                };
                up::TR_SKIP_LEN.store(0, SeqCst);
                let n = up::TR_COUNT.load(SeqCst) - before;
                let f = up::recorded(&up::TR_FRAME);
                ck.eq(
                    &format!("{what} executes"),
                    (n, f.vector, f.cr2, f.error_code & 0x10),
                    (1, 14, target, 0x10),
                );
            }
            // Heap and stack pages are writable (no trap).
            let heap = si.page_va(si.stack_first_page) - 8;
            ck.eq("heap writable", pf(heap, true), None);
        },
    );
}

/// MEM-3: the entry state, and the start-info page unchanged from start
/// to end (`at_start`, `at_end`: copies made by `main`).
pub fn mem_3(si: &StartInfo, si_va: u64, at_start: &RawStartInfo, at_end: &RawStartInfo) {
    clause("MEM-3", "entry state and start-info page", |ck| {
        mem3(ck, si, si_va);
        ck.t(
            bytes(at_start) == bytes(at_end),
            "start-info page changed during the run",
        );
    });
}

fn mem3(ck: &mut Ck, si: &StartInfo, si_va: u64) {
    // SAFETY: the start-info page is mapped read-only (MEM-2).
    let magic = unsafe { arch::peek(si_va) };
    ck.eq("magic in the page", magic.to_le_bytes(), START_INFO_MAGIC);
    ck.eq("magic", si.magic, START_INFO_MAGIC);
    ck.eq("abi_version", si.abi_version, ABI_VERSION);
    ck.eq("domain_id", si.domain_id, 1);
    ck.eq("flags (not privileged)", si.flags, 0);
    ck.eq("nr_pages (4M)", si.nr_pages, 1024);
    ck.t(si.max_pages >= si.nr_pages, "max_pages < nr_pages");
    ck.eq("window_base", si.window_base, WINDOW_BASE);
    ck.eq("shared_info_va", si.shared_info_va, SHARED_INFO_VA);
    ck.eq(
        "stack_first_page",
        si.stack_first_page,
        si.nr_pages - INITIAL_STACK_PAGES,
    );
    ck.t(si.tsc_hz > 0, "tsc_hz is 0");
    ck.eq("name", si.name(), "conf");
    ck.eq("cmdline", si.cmdline(), "suite=all");
    ck.eq("cmdline_len", si.cmdline_len as usize, "suite=all".len());
    ck.eq("start info page", si_va & 0xfff, 0);
    // rsp at entry is the window's top: main's stack lies in the stack
    // pages (the initial stack and the SDK's reserve below it, MEM-2d).
    let local = 0u64;
    let sp = &local as *const u64 as u64;
    ck.t(
        sp >= si.page_va(guest_sdk::stack_floor_page(si)) && sp < si.page_va(si.nr_pages),
        "main's stack is not in the stack pages",
    );
}

fn bytes(s: &RawStartInfo) -> &[u8] {
    // SAFETY: StartInfo is plain repr(C) data with no padding.
    unsafe {
        core::slice::from_raw_parts(
            (s as *const RawStartInfo).cast::<u8>(),
            core::mem::size_of::<RawStartInfo>(),
        )
    }
}
