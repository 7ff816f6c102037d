//! Domains: building one from an ELF image (spec MEM-2, MEM-3), its shared
//! page, and tearing it down.

use crate::arch::cpu::{Selectors, USER_CS, USER_SS};
use crate::arch::fpu::FpuState;
use crate::arch::traps::TrapFrame;
use crate::mem::{self, pte};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use hypercall_abi::layout::{
    NamedChannel, SharedInfo, StartFlags, StartInfo, TimeInfo, MAX_NAMED_CHANNELS, PORT_WORDS,
    RFLAGS_IF, SHARED_INFO_VA, START_INFO_MAGIC, WINDOW_BASE,
};
use tahoma_core::bootpack::{DomainFlags, DomainRecord, NAME_LEN};
use tahoma_core::event::DomId;
use tahoma_core::loader::{self, ImageError};
use tahoma_core::mm::{
    AddressSpace, Budget, Level, Mm, MmError, Owner, Pending, Progress, Teardown,
};
use zerocopy::IntoBytes;

/// Default time slice in milliseconds (weight 0).
pub const DEFAULT_SLICE_MS: u64 = 10;
/// Validator steps (entries) in one step of a teardown (SCHED-4).
const RELEASE_STEPS: u64 = 4096;
/// Frames scrubbed and freed in one step of a teardown (each is 4 KiB of
/// stores, about as long as 512 validator steps).
const FREE_FRAMES_PER_STEP: usize = 8;

/// Where a domain is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// In the run queue, or running.
    Runnable,
    /// Sleeping in `block`.
    Blocked,
}

/// Entries registered with `set_callbacks`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Callbacks {
    /// Event upcall entry (0 = none).
    pub event: u64,
    /// Trap entry (0 = none).
    pub trap: u64,
    /// Callback stack top.
    pub stack: u64,
}

/// A guest domain.
pub struct Domain {
    /// Its id (1-based; never reused).
    pub id: DomId,
    /// Its name from the manifest.
    pub name: heapless::String<NAME_LEN>,
    /// Manifest flags.
    pub flags: DomainFlags,
    /// Scheduling state.
    pub state: RunState,
    /// Saved registers while not running.
    pub ctx: TrapFrame,
    /// Saved x87/MMX/SSE/AVX state while not running (CPU-1); the initial
    /// state until the domain first runs (CPU-1a).
    pub fpu: FpuState,
    /// Saved data-segment selectors while not running (CPU-2); null at start.
    pub selectors: Selectors,
    /// Physical address of the root page table (loaded into CR3).
    pub root: u64,
    /// Every frame the domain owns: its window (pseudo-physical order),
    /// then frames taken with `memory_populate`.
    pub frames: Vec<u64>,
    /// Most frames the domain may own (MEM-5).
    pub max_pages: u64,
    /// The domain's vCPU address space (its loaded root).
    pub space: AddressSpace,
    /// The shared-info page.
    pub shared: SharedPage,
    /// The frame of the start-info page (written before the domain runs).
    pub start_info: u64,
    /// Registered upcall entries.
    pub callbacks: Callbacks,
    /// Upcall frames pushed and not yet returned.
    pub upcall_depth: u32,
    /// Time slice in TSC ticks.
    pub slice: u64,
    /// Console bytes not yet ended by a newline.
    pub console: tahoma_core::console::LineBuffer,
    /// The pin or unpin this domain has in progress (MMU-35), restarted by
    /// its next `mmu_pin`/`mmu_unpin`.
    pub mm_pending: Option<Pending>,
    /// Frames of `frames` already given back by a teardown in progress.
    pub freed: usize,
    /// Hypercalls made.
    pub hypercalls: u64,
    /// TSC when the hypervisor began building the domain.
    pub built_at: u64,
    /// TSC when the domain first ran, if it has.
    pub first_run_at: Option<u64>,
}

/// Why a domain could not be built (MEM-2b).
#[derive(Debug)]
pub enum BuildError {
    /// The image or the window size was refused (MEM-2b, MEM-2c).
    Image(ImageError),
    /// Not enough free frames.
    NoMemory,
    /// The validator refused the initial page tables (a hypervisor bug).
    Tables(MmError),
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Image(e) => write!(f, "{e}"),
            BuildError::NoMemory => write!(f, "not enough free frames"),
            BuildError::Tables(e) => write!(f, "initial page tables refused: {e:?}"),
        }
    }
}

/// A domain's shared-info page: a frame shared with the domain as
/// `Special` and mapped read-write into the guest. Every access is atomic or
/// volatile, and no value read from it is trusted (MEM-4).
///
/// The hypervisor writes it whenever it raises an event, so it holds a
/// reference on the frame in the frame table (`Mm::share_special` takes it,
/// MEM-8) from the build until [`Domain::release_frames`]: the guest can
/// unmap the page, but never release it, retype it or see it handed to
/// anyone while this accessor exists (issue 7, finding 1).
pub struct SharedPage {
    pfn: u64,
}

impl SharedPage {
    /// The frame.
    pub fn pfn(&self) -> u64 {
        self.pfn
    }

    fn base(&self) -> *mut SharedInfo {
        mem::phys_to_virt(self.pfn << 12) as *mut SharedInfo
    }

    fn word(&self, field: *mut u64) -> &AtomicU64 {
        let _ = self;
        // `field` is in this page: a live, 8-aligned, direct-mapped frame
        // the hypervisor holds in the frame table (MEM-8) for as long as
        // this accessor exists; any bit pattern is a valid u64.
        // SAFETY: as above; the guest runs on this CPU only while we don't.
        unsafe { AtomicU64::from_ptr(field) }
    }

    fn byte(&self, field: *mut u8) -> &AtomicU8 {
        let _ = self;
        // SAFETY: as in `word`, for a byte.
        unsafe { AtomicU8::from_ptr(field) }
    }

    fn pending(&self, w: usize) -> &AtomicU64 {
        // SAFETY (pointer arithmetic): `w < PORT_WORDS`, inside the page.
        self.word(unsafe { &raw mut (*self.base()).pending[w] })
    }

    fn mask(&self, w: usize) -> &AtomicU64 {
        // SAFETY (pointer arithmetic): `w < PORT_WORDS`, inside the page.
        self.word(unsafe { &raw mut (*self.base()).mask[w] })
    }

    /// Sets `port`'s pending bit. Returns true when the guest must be
    /// notified: the bit was clear and the port is not masked (EVT-0).
    pub fn raise(&self, port: u32) -> bool {
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if w >= PORT_WORDS {
            return false;
        }
        let was = self.pending(w).fetch_or(bit, Ordering::SeqCst);
        if was & bit != 0 || self.mask(w).load(Ordering::SeqCst) & bit != 0 {
            return false;
        }
        self.note_pending_word(w);
        true
    }

    fn note_pending_word(&self, w: usize) {
        // SAFETY (pointer arithmetic): fields of the page.
        let (sel, up) = unsafe {
            (
                &raw mut (*self.base()).pending_sel,
                &raw mut (*self.base()).upcall_pending,
            )
        };
        self.word(sel).fetch_or(1 << w, Ordering::SeqCst);
        self.byte(up).store(1, Ordering::SeqCst);
    }

    /// Clears `port`'s mask bit; returns true when it is pending (EVT-6).
    pub fn unmask(&self, port: u32) -> bool {
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if w >= PORT_WORDS {
            return false;
        }
        self.mask(w).fetch_and(!bit, Ordering::SeqCst);
        if self.pending(w).load(Ordering::SeqCst) & bit != 0 {
            self.note_pending_word(w);
            return true;
        }
        false
    }

    /// Clears `port`'s pending bit (on close).
    pub fn clear(&self, port: u32) {
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if w < PORT_WORDS {
            self.pending(w).fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Clears `port`'s pending and mask bits (a freshly allocated port, EVT-1).
    pub fn reset_port(&self, port: u32) {
        self.clear(port);
        let (w, bit) = ((port / 64) as usize, 1u64 << (port % 64));
        if w < PORT_WORDS {
            self.mask(w).fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Whether any port is pending and not masked.
    pub fn any_unmasked_pending(&self) -> bool {
        (0..PORT_WORDS).any(|w| {
            self.pending(w).load(Ordering::SeqCst) & !self.mask(w).load(Ordering::SeqCst) != 0
        })
    }

    /// `upcall_mask` (the guest's virtual interrupt flag; set = disabled).
    pub fn upcall_masked(&self) -> bool {
        // SAFETY (pointer arithmetic): field of the page.
        self.byte(unsafe { &raw mut (*self.base()).upcall_mask })
            .load(Ordering::SeqCst)
            != 0
    }

    /// Sets or clears `upcall_mask`.
    pub fn set_upcall_mask(&self, masked: bool) {
        // SAFETY (pointer arithmetic): field of the page.
        self.byte(unsafe { &raw mut (*self.base()).upcall_mask })
            .store(u8::from(masked), Ordering::SeqCst);
    }

    /// `upcall_pending`.
    pub fn upcall_pending(&self) -> bool {
        // SAFETY (pointer arithmetic): field of the page.
        self.byte(unsafe { &raw mut (*self.base()).upcall_pending })
            .load(Ordering::SeqCst)
            != 0
    }

    fn write_time(&self, t: &TimeInfo) {
        let off = core::mem::offset_of!(SharedInfo, time) as u64;
        mem::copy_to_phys((self.pfn << 12) + off, t.as_bytes());
    }
}

/// Builds domain `id` from its boot-pack record and ELF image: allocates and
/// scrubs its frames, loads the image, builds its page tables and
/// start-info page, and sets up its entry state (MEM-2, MEM-3).
pub fn build(
    id: DomId,
    rec: &DomainRecord,
    image: &[u8],
    cmdline: &[u8],
    mm: &mut Mm,
) -> Result<Domain, BuildError> {
    let built_at = crate::time::now_tsc();
    let nr_pages = u64::from(rec.mem_pages);
    // The same checks xtask made before boot (MEM-2b, MEM-2c).
    let (img, plan) = loader::check(image, nr_pages).map_err(BuildError::Image)?;
    let (entry, segs) = (img.entry, img.segments);

    // Frames: the window, then the shared-info page. All scrubbed. The
    // list has room for the whole reservation now, so `memory_populate`
    // never allocates hypervisor memory (LIM-6).
    let mut frames = Vec::new();
    let max_pages = u64::from(rec.max_pages).max(nr_pages);
    if frames.try_reserve_exact(max_pages as usize).is_err() {
        return Err(BuildError::NoMemory);
    }
    let take = || mem::alloc_zeroed_frame();
    for _ in 0..nr_pages {
        match take() {
            Some(f) => frames.push(f),
            None => {
                frames.iter().for_each(|&f| mem::free_frame(f));
                return Err(BuildError::NoMemory);
            }
        }
    }
    let Some(shared_pfn) = take() else {
        frames.iter().for_each(|&f| mem::free_frame(f));
        return Err(BuildError::NoMemory);
    };
    let give_back = |mm: &mut Mm, frames: &[u64]| {
        // Not held yet if sharing it is what failed.
        let _ = mm.release_hold(shared_pfn);
        for &f in frames.iter().chain(core::iter::once(&shared_pfn)) {
            let _ = mm.assign(f, Owner::Free);
            mem::free_frame(f);
        }
    };
    for &f in &frames {
        if let Err(e) = mm.assign(f, Owner::Domain(id)) {
            give_back(mm, &frames);
            return Err(BuildError::Tables(e));
        }
    }
    if let Err(e) = mm.share_special(shared_pfn, id, true) {
        give_back(mm, &frames);
        return Err(BuildError::Tables(e));
    }

    // The image.
    let mut perms = alloc::vec![(false, false); plan.image_pages as usize];
    for s in &segs {
        let data = &image[s.file_offset..s.file_offset + s.file_len];
        let mut done = 0usize;
        while done < data.len() {
            let va = s.va + done as u64;
            let page = (va - WINDOW_BASE) / 4096;
            let off = va & 0xfff;
            let n = ((4096 - off) as usize).min(data.len() - done);
            mem::copy_to_phys((frames[page as usize] << 12) + off, &data[done..done + n]);
            done += n;
        }
        let first = (s.va - WINDOW_BASE) / 4096;
        let last = (s.va + s.mem - 1 - WINDOW_BASE) / 4096;
        for p in first..=last {
            let e = &mut perms[p as usize];
            e.0 |= s.write;
            e.1 |= s.exec;
        }
    }

    // Page tables.
    let pt = |i: u64| frames[(plan.pt_first + i) as usize];
    let (l4, l3, l2, l1_low) = (pt(0), pt(1), pt(2), pt(3));
    let table = |pfn: u64| (pfn << 12) | pte::PRESENT | pte::WRITABLE | pte::USER;
    let kernel = mem::table_mut(mem::kernel_pml4());
    let root = mem::table_mut(l4);
    root[256..].copy_from_slice(&kernel[256..]);
    root[0] = table(l3);
    mem::table_mut(l3)[0] = table(l2);
    mem::table_mut(l2)[(SHARED_INFO_VA >> 21) as usize & 0x1ff] = table(l1_low);
    mem::table_mut(l1_low)[(SHARED_INFO_VA >> 12) as usize & 0x1ff] =
        (shared_pfn << 12) | pte::PRESENT | pte::WRITABLE | pte::USER | pte::NX;
    for page in 0..nr_pages {
        let l1 = pt(4 + page / 512);
        if page % 512 == 0 {
            mem::table_mut(l2)[((WINDOW_BASE >> 21) + page / 512) as usize] = table(l1);
        }
        let (w, x) = if page < plan.image_pages {
            perms[page as usize]
        } else if (plan.pt_first..plan.pt_first + plan.pt_pages).contains(&page)
            || page == plan.start_info_page
        {
            (false, false)
        } else {
            (true, false)
        };
        let mut e = (frames[page as usize] << 12) | pte::PRESENT | pte::USER;
        if w {
            e |= pte::WRITABLE;
        }
        if !x {
            e |= pte::NX;
        }
        mem::table_mut(l1)[(page % 512) as usize] = e;
    }

    // The frame list.
    let list: Vec<u8> = frames.iter().flat_map(|f| f.to_le_bytes()).collect();
    for (i, chunk) in list.chunks(4096).enumerate() {
        mem::copy_to_phys(
            frames[(plan.frame_list_first + i as u64) as usize] << 12,
            chunk,
        );
    }
    let va_of = |page: u64| WINDOW_BASE + page * 4096;

    // The start-info page.
    let mut si = StartInfo {
        magic: START_INFO_MAGIC,
        abi_version: hypercall_abi::ABI_VERSION,
        domain_id: id,
        flags: if DomainFlags::from_bits_truncate(rec.flags).contains(DomainFlags::PRIVILEGED) {
            StartFlags::PRIVILEGED.bits()
        } else {
            0
        },
        nr_pages,
        max_pages: u64::from(rec.max_pages).max(nr_pages),
        window_base: WINDOW_BASE,
        shared_info_va: SHARED_INFO_VA,
        first_free_page: plan.first_free,
        stack_first_page: plan.stack_first,
        pt_first_page: plan.pt_first,
        pt_pages: plan.pt_pages,
        frame_list_va: va_of(plan.frame_list_first),
        tsc_hz: crate::time::tsc_hz(),
        cmdline_len: 0,
        reserved0: 0,
        name: rec.name,
        cmdline: [0; 1024],
        // Filled in by `named::write_tables` once every domain is built.
        channel_count: 0,
        reserved1: 0,
        channels: [NamedChannel::EMPTY; MAX_NAMED_CHANNELS],
    };
    let n = cmdline.len().min(si.cmdline.len());
    si.cmdline[..n].copy_from_slice(&cmdline[..n]);
    si.cmdline_len = n as u32;
    let start_info = frames[plan.start_info_page as usize];
    mem::copy_to_phys(start_info << 12, si.as_bytes());
    let _ = plan.frame_list_pages;

    // The validator takes the tables over: pinning the root validates the
    // whole tree (and finds any mistake above), loading it marks it in use.
    let mut space = AddressSpace::new(id);
    let pinned = mm
        .pin(&mut mem::DirectMap, id, l4, Level::L4)
        .and_then(|()| mm.switch_root(&mut space, l4));
    if let Err(e) = pinned {
        mm.teardown(&mut mem::DirectMap, id);
        give_back(mm, &frames);
        return Err(BuildError::Tables(e));
    }

    let shared = SharedPage { pfn: shared_pfn };
    shared.write_time(&TimeInfo {
        version: 0,
        reserved: 0,
        tsc_timestamp: crate::time::boot_tsc(),
        system_time_ns: 0,
        tsc_mul: TimeInfo::mul_for_hz(crate::time::tsc_hz()),
    });

    let ctx = TrapFrame {
        rip: entry,
        rsp: WINDOW_BASE + nr_pages * 4096,
        rdi: va_of(plan.start_info_page),
        rflags: RFLAGS_IF | 0x2,
        cs: u64::from(USER_CS),
        ss: u64::from(USER_SS),
        ..TrapFrame::default()
    };
    let weight = if rec.weight == 0 {
        DEFAULT_SLICE_MS
    } else {
        u64::from(rec.weight.min(256))
    };
    let mut name = heapless::String::new();
    let _ = name.push_str(tahoma_core::bootpack::name_str(&rec.name));
    Ok(Domain {
        id,
        name,
        flags: DomainFlags::from_bits_truncate(rec.flags),
        state: RunState::Runnable,
        ctx,
        fpu: FpuState::initial(),
        selectors: Selectors::default(),
        root: l4 << 12,
        frames,
        max_pages: u64::from(rec.max_pages).max(nr_pages),
        space,
        shared,
        start_info,
        callbacks: Callbacks::default(),
        upcall_depth: 0,
        slice: crate::time::ms_to_ticks(weight),
        console: tahoma_core::console::LineBuffer::new(),
        mm_pending: None,
        freed: 0,
        hypercalls: 0,
        built_at,
        first_run_at: None,
    })
}

impl Domain {
    /// One bounded step of dropping every page-table reference the domain
    /// holds, then scrubbing and returning every frame it owns (SCHED-3,
    /// MMU-16, SCHED-4): a few
    /// thousand page-table entries released, or a few frames scrubbed and
    /// freed. Returns whether the teardown `t` is complete. The domain must
    /// not run again, nor its root be loaded in CR3.
    pub fn release_step(&mut self, mm: &mut Mm, t: &mut Teardown) -> bool {
        mm.detach(&mut self.space);
        let mut budget = Budget::new(RELEASE_STEPS);
        let tables = mm.teardown_frames_bounded(
            &mut mem::DirectMap,
            t,
            &self.frames,
            &mut self.mm_pending,
            &mut budget,
        );
        if tables == Progress::Preempted {
            return false;
        }
        let end = (self.freed + FREE_FRAMES_PER_STEP).min(self.frames.len());
        for &f in &self.frames[self.freed..end] {
            free_owned(mm, self.id, f);
        }
        self.freed = end;
        if self.freed < self.frames.len() {
            return false;
        }
        // The hypervisor's hold on the shared page (MEM-8) ends with the
        // domain: nothing raises events into it any more.
        if let Err(e) = mm.release_hold(self.shared.pfn) {
            mem::inconsistency(
                self.shared.pfn,
                format_args!(
                    "shared page of domain {} not held at teardown: {e:?}",
                    self.id
                ),
            );
        }
        free_owned(mm, self.id, self.shared.pfn);
        self.frames.clear();
        true
    }

    /// Whether this domain ends the scenario when it ends.
    pub fn critical(&self) -> bool {
        self.flags.contains(DomainFlags::CRITICAL)
    }
}

/// Gives one of domain `id`'s frames back to the pool, scrubbed.
fn free_owned(mm: &mut Mm, id: DomId, f: u64) {
    if let Err(e) = mm.assign(f, Owner::Free) {
        mem::inconsistency(
            f,
            format_args!("frame of domain {id} still in use at teardown: {e:?}"),
        );
        return;
    }
    mem::free_frame(f);
}
