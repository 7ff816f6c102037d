//! Domain lifecycle: building the boot pack's domains and starting the run,
//! destroying a domain, reaping its memory, the end of the run and its audit.

use super::*;

/// Destroying a domain, reaping, the end of the run and its audit.
mod teardown;

/// Creates the boot pack's domains and runs them. Never returns: the run
/// ends when the scenario's critical domains have ended (SCHED-3b).
pub fn start(pack: &Pack<'_>) -> ! {
    let mut mm = match Mm::new(&MmConfig {
        frames: mem::frame_limit(),
        max_phys_bits: mem::max_phys_bits(),
        hypervisor_slots: mem::hypervisor_slots(),
    }) {
        Ok(mm) => mm,
        Err(e) => panic!("frame table: {e:?}"),
    };
    // Every frame the allocator does not hold is the hypervisor's (its
    // image, its tables, firmware areas); free frames are nobody's.
    for mfn in 0..mm.frame_count() {
        if !mem::is_free_frame(mfn) {
            let _ = mm.assign(mfn, Owner::Hypervisor);
        }
    }
    report!(
        "frame-table",
        "frames={} max_phys_bits={}",
        mm.frame_count(),
        mem::max_phys_bits()
    );
    let mut hv = Hv {
        domains: Domains {
            slots: alloc::vec![None],
            dying: VecDeque::new(),
            live: 0,
            critical_left: 0,
            critical_total: 0,
        },
        memory: Memory {
            mm,
            loaded_root: mem::kernel_pml4() << 12,
            baseline_free: mem::free_frames(),
            images: tahoma_core::mm::SharedImages::new(),
        },
        sched: Scheduler {
            current: None,
            runq: RunQueue::new(),
            deadlines: Deadlines::new(),
            slice_end: 0,
            armed: u64::MAX,
            timer_dirty: true,
            cpu_state_of: None,
            calls: 0,
            fast_routes: &crate::hypercall::NO_FAST_ROUTES,
            upcall_shared: super::schedule::no_upcall_word(),
            retired: crate::domain::Frame::new(TrapFrame::default()),
            unsettled: true,
        },
        channels: Channels::new(),
        grants: GrantTables::new(),
        orphans: Vec::new(),
        remembered: guestmem::Remembered::new(),
        failed: false,
    };
    let wanted = pack.header().domain_count as usize;
    // The id-indexed tables grow to their final size once, before the
    // heap fills with domains (a late doubling could not be admitted).
    let reserved = hv.domains.slots.try_reserve_exact(wanted).is_ok()
        && hv.channels.reserve(wanted + 1).is_ok();
    // The deadline queue reserves exactly per domain added: sized once for
    // the last id here, each `add_domain` below is O(1) instead of a
    // reallocation (O(n^2) for n domains). Only built domains run, so the
    // slots of a refused one stay empty.
    if let Some(last) = tahoma_core::event::boot_domain_id(
        wanted
            .min(tahoma_core::event::MAX_DOMAINS)
            .saturating_sub(1),
    ) {
        hv.sched.deadlines.add_domain(last);
    }
    if !reserved {
        log::warn!("no heap for the tables of {wanted} domains; later domains may be refused");
    }
    let mut density = Density::default();
    // The boot scrub (MEM-2a, issue 13): the frames the pack's domains are
    // about to take, zeroed in one pass before the first build, so that no
    // build zeroes a frame (every frame given back later is scrubbed as it
    // is freed, so the pool stays clean). Frames beyond these stay unknown
    // and are zeroed when first handed out.
    let need: u64 = pack.domains().map(|r| u64::from(r.mem_pages) + 1).sum();
    let t0 = time::now_tsc();
    let scrubbed = mem::scrub_free_frames(need);
    report!(
        "scrub",
        "frames={} ticks={}",
        scrubbed,
        time::now_tsc().saturating_sub(t0)
    );
    for (i, rec) in pack.domains().enumerate() {
        let name = bootpack::name_str(&rec.name);
        // Domain ids are 1.. in boot order, and never reach the reserved
        // values (`DOMID_SELF` = 0x7FF0 and above): a domain past them is
        // refused, not given an id that aliases one.
        let Some(id) = tahoma_core::event::boot_domain_id(i) else {
            refuse(
                &mut hv,
                i + 1,
                name,
                format_args!(
                    "domain ids end at {:#x} (DOMID_SELF and above are reserved): at most {} domains",
                    tahoma_core::event::MAX_DOMAINS,
                    tahoma_core::event::MAX_DOMAINS
                ),
            );
            continue;
        };
        let image = pack.blob(rec.image_blob).unwrap_or(&[]);
        let cmdline = if rec.cmdline_blob == bootpack::NO_BLOB {
            &[][..]
        } else {
            pack.blob(rec.cmdline_blob).unwrap_or(&[])
        };
        if hv.domains.slots.len() <= usize::from(id) && hv.domains.slots.try_reserve(1).is_err() {
            refuse(
                &mut hv,
                usize::from(id),
                name,
                format_args!("no heap for its slot"),
            );
            continue;
        }
        hv.domains.slots.push(None);
        // Admission (issue 13): the domain's heap structures must fit with
        // the runtime reserve left over, so no allocation of the build
        // below (nor of a hypercall later) can fail and panic.
        let pages = u64::from(rec.max_pages).max(u64::from(rec.mem_pages));
        let need = domain_heap_need(pages);
        let reserve = mem::HEAP_RUNTIME_RESERVE + 64 * u64::from(hv.domains.live);
        let free = mem::heap_free() as u64;
        if free < need + reserve {
            refuse(
                &mut hv,
                usize::from(id),
                name,
                format_args!(
                    "hypervisor heap full: {free} bytes free, a domain of {pages} pages needs {need} plus the {reserve}-byte runtime reserve (the heap is sized from the machine's memory: give it more, or ask for fewer guests)"
                ),
            );
            continue;
        }
        let io = crate::io::plan_for(pack, id);
        let heap_before = mem::heap_free();
        let t0 = time::now_tsc();
        let memory = &mut hv.memory;
        match domain::build(
            id,
            &rec,
            image,
            cmdline,
            &mut memory.mm,
            &mut memory.images,
            &io,
        ) {
            Ok(d) => {
                let (pages, critical, fpu_bytes) = (d.frames.len(), d.critical(), d.fpu.bytes());
                if d.critical() {
                    hv.domains.critical_left += 1;
                    hv.domains.critical_total += 1;
                }
                // Its own frames: the image's shared copy is counted once,
                // with the domain that made it (MEM-2e).
                let shared = d.image.map_or(0, |i| {
                    if memory.images.users(i) > 1 {
                        memory.images.pages(i).map_or(0, <[_]>::len)
                    } else {
                        0
                    }
                });
                let frames = (d.frames.len() - shared) as u64 + 1;

                hv.channels.add_domain(id);
                hv.grants.add_domain(id);
                hv.sched.deadlines.add_domain(id);
                hv.sched.runq.push(id);
                hv.domains.live += 1;
                hv.domains.slots[usize::from(id)] = Some(Box::new(d));
                let used = heap_before.saturating_sub(mem::heap_free()) as u64;
                // The build, up to the domain in every table; its fact
                // below is not counted (~700 instructions into the console
                // ring, docs/bench-history/issue-13-start-and-density.md "Guest start, round 4").
                density.add(frames, time::now_tsc().saturating_sub(t0), used);
                // Encoded without `core::fmt` (`console::fact`): it is
                // on the start path, before the domain's first instruction.
                crate::console::fact("domain-start", |f| {
                    f.num("id", u64::from(id))
                        .quoted("name", name)
                        .num("pages", pages as u64)
                        .num("shared", shared as u64)
                        .num("critical", u64::from(critical))
                        .num("fpu_bytes", fpu_bytes as u64);
                });
                // Its own structures must fit `need`; the id-indexed tables
                // that grow by doubling (run queue, grant map) take theirs
                // from the runtime reserve, which admission kept free.
                if used > need + reserve {
                    mem::inconsistency(
                        0,
                        format_args!(
                            "domain {id} took {used} heap bytes, more than the {need} admitted and the {reserve} reserve: raise mem::DOMAIN_HEAP_BYTES"
                        ),
                    );
                }
            }
            Err(e) => {
                let mut msg = heapless::String::<160>::new();
                let _ = core::fmt::write(&mut msg, format_args!("{e}"));
                refuse(&mut hv, usize::from(id), name, format_args!("{msg}"));
            }
        }
    }
    // This fact and `@ domains` are encoded without `core::fmt`
    // (`console::fact`): they lie between the last domain's build and its
    // first instruction.
    crate::console::fact("density", |f| {
        f.num("started", density.started)
            .num("refused", (wanted as u64).saturating_sub(density.started))
            .num(
                "frames_per_domain",
                density.frames.checked_div(density.started).unwrap_or(0),
            )
            .num(
                "build_ticks_per_domain",
                density.ticks.checked_div(density.started).unwrap_or(0),
            )
            .num(
                "heap_per_domain",
                density.heap.checked_div(density.started).unwrap_or(0),
            )
            .num("heap_per_domain_max", density.heap_max)
            .num("heap_free", mem::heap_free() as u64)
            .num("heap_bytes", mem::heap_size() as u64);
    });
    // Named channels (EVT-7): both ends exist before either runs.
    if !crate::named::wire(pack, &mut hv.channels, &hv.domains.slots) {
        hv.failed = true;
    }
    // Device interrupts and virtual disks (IO-2, IO-5), likewise.
    if !crate::io::setup(pack, &mut hv.channels, &hv.domains.slots) {
        hv.failed = true;
    }
    if crate::testopt::leak_frame() {
        // Deliberately lost: taken from the pool, owned by nobody, never
        // returned. The end-of-run audit must fail the run.
        let leaked = mem::alloc_zeroed_frame().unwrap_or(0);
        report!("testopt", "leak-frame mfn={:#x}", leaked);
    }
    crate::console::fact("domains", |f| {
        f.num("started", u64::from(hv.domains.live))
            .num("free_frames", mem::free_frames());
    });
    hv.run_next();
    hv.leave();
    // SAFETY: boot, interrupts disabled, no guest has run: nothing else
    // can hold a reference into the cell.
    unsafe { HV.install(hv) };
    arch::enter_guest()
}

/// What building the boot pack's domains took (`@ density`).
#[derive(Default)]
struct Density {
    started: u64,
    frames: u64,
    ticks: u64,
    heap: u64,
    heap_max: u64,
}

impl Density {
    fn add(&mut self, frames: u64, ticks: u64, heap: u64) {
        self.started += 1;
        self.frames += frames;
        self.ticks += ticks;
        self.heap += heap;
        self.heap_max = self.heap_max.max(heap);
    }
}

/// The most heap building a domain of `pages` (its reservation) takes:
/// the fixed part, the FPU area, and its frame list (8 bytes a page,
/// reserved for the whole reservation so `memory_populate` never
/// allocates, LIM-6).
fn domain_heap_need(pages: u64) -> u64 {
    mem::DOMAIN_HEAP_BYTES + crate::arch::fpu::config().size as u64 + 8 * pages
}

/// Reports that domain `id` was not started, and why; the others start
/// and run, but the run is marked failed (the scenario asked for it).
fn refuse(hv: &mut Hv, id: usize, name: &str, why: core::fmt::Arguments<'_>) {
    let mut msg = heapless::String::<240>::new();
    let _ = core::fmt::write(&mut msg, why);
    report!(
        "domain-error",
        "id={} name={} error={}",
        id,
        Quoted(name),
        Quoted(&msg)
    );
    log::error!("domain {name:?} not started: {msg}; fix its manifest entry or image");
    hv.failed = true;
}
