//! Domain lifecycle: building the boot pack's domains and starting the run,
//! destroying a domain, reaping its memory, the end of the run and its audit.

use super::*;

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
            upcall_shared: 0,
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
                // ring, docs/benchmarks.md "Guest start, round 4").
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

impl Hv {
    /// Destroys domain `id`: closes its ports, scrubs and frees its frames,
    /// reports how it ended.
    pub(crate) fn destroy(&mut self, id: DomId, exit: Exit) {
        let Some(mut d) = self
            .domains
            .slots
            .get_mut(usize::from(id))
            .and_then(Option::take)
        else {
            return;
        };
        d.console
            .flush(|line| crate::hypercall::console::print_line(&d.name, line));
        // Its devices stop before any of its frames is scrubbed or reused
        // (IO-5): no DMA into memory handed to someone else.
        crate::io::release(id);
        self.sched.runq.remove(id);
        self.sched.deadlines.remove_domain(id);
        self.channels.remove_domain(id);
        // No new grant, map or copy by or of it from here; its mappings and
        // grants go once its page tables are gone (Domain::release_step).
        self.grants.begin_destroy(id);
        if self.sched.current == Some(id) {
            self.sched.current = None;
            note_current(0);
            d.hypercalls += core::mem::take(&mut self.sched.calls);
            self.sched.fast_routes = &crate::hypercall::NO_FAST_ROUTES;
            self.sched.upcall_shared = 0;
            // The entry in progress still holds its frame (it was saved
            // there in place) and `reap` may free the domain before that
            // entry ends: keep the frame, give the domain the spare (freed
            // with it). The frame address names a static frame until
            // `run_next` makes the next domain's current.
            core::mem::swap(&mut d.ctx, &mut self.sched.retired);
            arch::traps::clear_guest_frame();
        }
        if self.memory.loaded_root == d.root {
            // SAFETY: the hypervisor's own PML4 maps everything ring 0 needs.
            unsafe { arch::load_root(mem::kernel_pml4() << 12) };
            self.memory.loaded_root = mem::kernel_pml4() << 12;
        }
        self.domains.live -= 1;
        self.sched.unsettled = true;
        // Its id may be reused: nothing remembered for it survives.
        guestmem::note_table_write();
        let name = Quoted(&d.name);
        let ok = match exit {
            Exit::Shutdown(reason, code) => {
                report!(
                    "domain-exit",
                    "id={} name={} reason={} code={} hypercalls={}",
                    id,
                    name,
                    reason.name(),
                    code as i64,
                    d.hypercalls
                );
                reason == ShutdownReason::Poweroff && code == 0
            }
            Exit::Fault {
                vector,
                error,
                rip,
                cr2,
                why,
            } => {
                report!(
                    "domain-fault",
                    "id={} name={} kind=exception vector={} exception={} error={:#x} rip={:#x} cr2={:#x} reason={}",
                    id,
                    name,
                    vector,
                    vector_name(vector),
                    error,
                    rip,
                    cr2,
                    Quoted(why)
                );
                log::warn!(
                    "domain {} ({}) destroyed: {} at rip {:#x} ({}); other domains continue",
                    d.name,
                    d.id,
                    vector_name(vector),
                    rip,
                    why
                );
                // A domain destroyed for a fault: its report goes out now.
                crate::console::flush();
                false
            }
            Exit::Killed { kind, rip, why } => {
                report!(
                    "domain-fault",
                    "id={} name={} kind={} rip={:#x} reason={}",
                    id,
                    name,
                    kind,
                    rip,
                    Quoted(why)
                );
                log::warn!(
                    "domain {} ({}) destroyed: {} at rip {:#x} ({}); other domains continue",
                    d.name,
                    d.id,
                    kind,
                    rip,
                    why
                );
                // A domain destroyed for a fault: its report goes out now.
                crate::console::flush();
                false
            }
            Exit::ScenarioEnd => {
                report!(
                    "domain-exit",
                    "id={} name={} reason=scenario-end code=0 hypercalls={}",
                    id,
                    name,
                    d.hypercalls
                );
                true
            }
        };
        if d.critical() {
            self.domains.critical_left = self.domains.critical_left.saturating_sub(1);
            if !ok {
                self.failed = true;
            }
        }
        // Its memory is released in bounded turns at scheduling points
        // (SCHED-4), so a large domain's death stalls nobody.
        let teardown = Teardown::new(id);
        self.domains
            .dying
            .push_back((d, teardown, time::now_tsc(), 0));
    }

    /// Releases dying domains' memory until TSC `until` or until none is
    /// left (SCHED-4); each step is bounded, so this overruns `until` by
    /// one step at most.
    pub(crate) fn reap(&mut self, until: u64) {
        while let Some((mut d, mut t, since, mut busy)) = self.domains.dying.pop_front() {
            let start = time::now_tsc();
            loop {
                if d.release_step(
                    &mut self.memory.mm,
                    &mut t,
                    &mut self.grants,
                    &mut self.orphans,
                    &mut self.memory.images,
                ) {
                    // Its grant mappings are gone: frames of dead granters
                    // they held may be free now.
                    self.sweep_orphans();
                    // No table of its names its device frames any more.
                    self.memory.mm.revoke_io(d.id);
                    // Its frame is freed with it (`d` drops at the end of
                    // this block): the guest frame address must not name it
                    // (`destroy` swaps the current domain's frame out and
                    // points the address at a static frame). Checked on
                    // every release; a failure fails the run.
                    if d.ctx.ptr() as u64 == arch::traps::guest_frame() {
                        report!("frame-dangling", "id={} name={}", d.id, Quoted(&d.name));
                        log::error!(
                            "domain {}'s frame freed while it is the guest frame; \
                             see Hv::destroy and Scheduler::retired",
                            d.id
                        );
                        self.failed = true;
                    }
                    let now = time::now_tsc();
                    report!(
                        "domain-released",
                        "id={} name={} unpinned={} ticks={} busy_ticks={}",
                        d.id,
                        Quoted(&d.name),
                        t.unpinned(),
                        now.saturating_sub(since),
                        busy + now.saturating_sub(start)
                    );
                    break;
                }
                let now = time::now_tsc();
                if now >= until {
                    busy += now.saturating_sub(start);
                    self.domains.dying.push_front((d, t, since, busy));
                    self.flush_if_requested();
                    return;
                }
            }
        }
        self.flush_if_requested();
    }

    /// Ends the run: destroys what is left, audits the frames, exits.
    pub(crate) fn finish(&mut self) -> ! {
        for id in 0..self.domains.slots.len() {
            if self.domains.slots[id].is_some() {
                self.destroy(id as DomId, Exit::ScenarioEnd);
            }
        }
        self.reap(u64::MAX);
        if !self.audit() {
            self.failed = true;
        }
        if self.failed {
            report!("exit", "status=failure");
            arch::exit_qemu(arch::EXIT_FAILURE)
        }
        report!("exit", "status=success");
        arch::exit_qemu(arch::EXIT_SUCCESS)
    }
    /// The end-of-run frame audit (issue 7, finding 9): with every domain
    /// destroyed, every frame it took must be back in the pool. Checks
    /// (1) the free count against the baseline taken before the first
    /// domain was built; (2) the frame table against the allocator, frame
    /// by frame: nobody's frames are free, the hypervisor's are not, no
    /// domain owns anything; (3) `tahoma_core::mm::audit` over the frame
    /// table and page-table contents, with the hypervisor's holds (none
    /// are left once every domain is gone); (4) no internal inconsistency
    /// was reported during the run. Reports `@ audit ... status=ok|failed`
    /// (with the TSC ticks it took) and one `@ audit-error` per problem (the
    /// first 8); returns whether all held.
    pub(crate) fn audit(&mut self) -> bool {
        let started = time::now_tsc();
        let free = mem::free_frames();
        let mut errors = 0u64;
        let mut error = |mfn: u64, what: core::fmt::Arguments<'_>| {
            errors += 1;
            if errors <= 8 {
                let mut msg = heapless::String::<160>::new();
                let _ = core::fmt::write(&mut msg, what);
                report!("audit-error", "mfn={:#x} what={}", mfn, Quoted(&msg));
                log::error!("frame audit: frame {mfn:#x}: {msg}");
            }
        };
        if free != self.memory.baseline_free {
            error(
                0,
                format_args!(
                    "{} frames free at the end, {} before the first domain: {} not returned",
                    free,
                    self.memory.baseline_free,
                    self.memory.baseline_free.abs_diff(free)
                ),
            );
        }
        for mfn in 0..self.memory.mm.frame_count() {
            let Some(f) = self.memory.mm.frame(mfn) else {
                break;
            };
            let pooled = mem::is_free_frame(mfn);
            match f.owner() {
                Owner::Free if !pooled => error(
                    mfn,
                    format_args!("owned by nobody but not in the free pool: leaked"),
                ),
                Owner::Hypervisor if pooled => error(
                    mfn,
                    format_args!("the hypervisor's frame is in the free pool"),
                ),
                Owner::Domain(d) => error(
                    mfn,
                    format_args!("still owned by domain {d} after every domain ended"),
                ),
                Owner::Image(i) => error(
                    mfn,
                    format_args!(
                        "a shared page of image {i} kept after every domain of it ended (MEM-2e)"
                    ),
                ),
                _ => {}
            }
        }
        // Holds: each live domain's shared page, and one per grant mapping
        // (GNT-0d); grant-mapping entries are the only foreign references
        // a table may hold.
        let mut holds: Vec<u64> = self
            .domains
            .slots
            .iter()
            .flatten()
            .map(|d| d.shared.mfn())
            .collect();
        holds.extend(self.grants.holds());
        let foreign: Vec<_> = self.grants.entries().collect();
        if let Err(e) =
            tahoma_core::mm::audit::audit_full(&self.memory.mm, &mem::DirectMap, &holds, &foreign)
        {
            error(e.mfn, format_args!("frame table: {}", e.what));
        }
        if let Err((mfn, what)) = self.memory.images.check(&self.memory.mm) {
            error(mfn, format_args!("shared image pages: {what}"));
        }
        if let Err(e) = self.grants.audit(&self.memory.mm) {
            error(
                0,
                format_args!("grant table of domain {}: {}", e.dom, e.what),
            );
        }
        let mappings = self.grants.mapping_count();
        if mappings > 0 || !self.orphans.is_empty() {
            error(
                0,
                format_args!(
                    "{mappings} grant mappings and {} frames of dead granters left after every domain ended",
                    self.orphans.len()
                ),
            );
        }
        let inconsistencies = mem::inconsistencies();
        if inconsistencies > 0 {
            error(
                0,
                format_args!("{inconsistencies} internal inconsistencies reported during the run"),
            );
        }
        let (clean, zeroed) = mem::zeroing_counts();
        report!(
            "audit",
            "free_frames={} baseline={} frames={} handed_clean={} handed_zeroed={} errors={} status={} ticks={}",
            free,
            self.memory.baseline_free,
            self.memory.mm.frame_count(),
            clean,
            zeroed,
            errors,
            if errors == 0 { "ok" } else { "failed" },
            time::now_tsc().saturating_sub(started)
        );
        if errors > 0 {
            log::error!(
                "frame audit failed with {errors} error(s) (see `@ audit-error`): a hypervisor bug; the run fails"
            );
        }
        errors == 0
    }
}
