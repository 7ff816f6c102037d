//! The end of a domain and of the run: destroying a domain, reaping its
//! memory in bounded steps (SCHED-4), finishing the run and its frame
//! audit.

use super::*;

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
            self.sched.upcall_shared = crate::hv::schedule::no_upcall_word();
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
