//! Building a domain from its boot-pack record and ELF image (MEM-2, MEM-3).
#![forbid(unsafe_code)]

use super::*;
use crate::report;

/// Builds domain `id` from its boot-pack record and ELF image: allocates and
/// scrubs its frames, loads the image, builds its page tables and
/// start-info page, and sets up its entry state (MEM-2, MEM-3). A driver
/// domain (`io` names devices) also gets its DMA region and its device
/// mappings (IO-0, IO-3; MEM-3b).
pub fn build(
    id: DomId,
    rec: &DomainRecord,
    elf: &[u8],
    cmdline: &[u8],
    mm: &mut Mm,
    images: &mut SharedImages,
    io: &DriverPlan,
) -> Result<Domain, BuildError> {
    let built_at = crate::time::now_tsc();
    let nr_pages = u64::from(rec.mem_pages);
    // The same checks xtask made before boot (MEM-2b, MEM-2c).
    let (img, plan) = loader::check(elf, nr_pages).map_err(BuildError::Image)?;
    let (entry, segs) = (img.entry, img.segments);
    // A driver domain's window: the DMA region (machine-contiguous), then
    // its device L2 and L1, at the start of the free pages (MEM-3b).
    let dma_pages = match (io.is_driver(), rec.dma_pages) {
        (false, _) => 0,
        (true, 0) => tahoma_core::io::DEFAULT_DMA_PAGES,
        (true, n) => u64::from(n),
    };
    let dma_first = plan.first_free;
    let dev_tables = if io.is_driver() { 2 } else { 0 };
    let first_free = dma_first + dma_pages + dev_tables;
    if first_free >= plan.stack_first {
        return Err(BuildError::NoRoomForDevices {
            needed: dma_pages + dev_tables,
            free: plan.stack_first - plan.first_free,
        });
    }
    let (dev_l2_page, dev_l1_page) = (dma_first + dma_pages, dma_first + dma_pages + 1);
    // A page of the image is writable (executable) if any segment covering
    // it is. Computed per page, without a table: a build allocates nothing
    // it frees again, so the heap does not fragment with the number of
    // domains (issue 13).
    let perms = |page: u64| {
        let va = WINDOW_BASE + page * 4096;
        segs.iter()
            .filter(|s| s.va < va + 4096 && va < s.va + s.mem)
            .fold((false, false), |(w, x), s| (w | s.write, x | s.exec))
    };
    // The image's read-only pages (no writable segment touches them: text,
    // rodata) are shared by every domain of the image, one copy (MEM-2e).
    // A domain past the first maps the copy instead of taking frames.
    // (A blob index past `ImageId`'s range keeps private copies.)
    let image = ImageId::try_from(rec.image_blob)
        .ok()
        .filter(|&i| i < ImageId::MAX);
    let shareable = |page: u64| image.is_some() && page < plan.image_pages && !perms(page).0;
    let existing = image.and_then(|i| images.pages(i)).unwrap_or(&[]);
    let reused = existing.len() as u64;
    // The existing copy covers exactly the shareable pages: the same image
    // gives the same segments.
    let reusing = |page: u64| reused > 0 && shareable(page);
    // Every frame the domain takes, checked before any is taken.
    let no_memory = || BuildError::NoMemory {
        needed: nr_pages + 1 - reused,
        free: mem::free_frames(),
    };
    if mem::free_frames() < nr_pages + 1 - reused {
        return Err(no_memory());
    }
    let dma_base = if dma_pages > 0 {
        match mem::alloc_contiguous_zeroed(dma_pages) {
            Some(b) => Some(b),
            None => return Err(no_memory()),
        }
    } else {
        None
    };

    // Frames: the window, then the shared-info page. All scrubbed. The
    // list has room for the whole reservation now, so `memory_populate`
    // never allocates hypervisor memory (LIM-6).
    let mut frames = Vec::new();
    let max_pages = u64::from(rec.max_pages).max(nr_pages);
    if frames.try_reserve_exact(max_pages as usize).is_err() {
        return Err(no_memory());
    }
    let take = || mem::alloc_zeroed_frame();
    // The existing copy of page `page`, if it is one of the image's shared
    // pages (`existing` is sorted by page).
    let copy_of = |page: u64| {
        if reused == 0 || page >= plan.image_pages {
            return None;
        }
        existing
            .binary_search_by_key(&page, |&(p, _)| p)
            .ok()
            .map(|i| existing[i].1)
    };
    // On failure: every frame taken so far, the DMA run included (the
    // image's shared copy is not this domain's to free).
    let undo = |frames: &[u64]| {
        frames
            .iter()
            .enumerate()
            .filter(|&(page, _)| !reusing(page as u64))
            .for_each(|(_, &f)| mem::free_frame(f));
        if let Some(b) = dma_base {
            (b..b + dma_pages)
                .filter(|f| !frames.contains(f))
                .for_each(mem::free_frame);
        }
    };
    // Without a DMA region, the window's frames are taken at once, as
    // runs of contiguous frames, then spread over their pages around the
    // image's existing copy.
    let batched = dma_base.is_none()
        && mem::alloc_zeroed_runs(nr_pages - reused, |first, count| {
            frames.extend(first..first + count)
        });
    if batched && reused > 0 {
        frames.resize(nr_pages as usize, 0);
        // From the top down: a page's own frame is never further up than
        // the page (`src <= page`), so nothing is overwritten unread.
        let (mut src, mut left) = ((nr_pages - reused) as usize, existing.len());
        for page in (0..nr_pages as usize).rev() {
            match existing[..left].last() {
                Some(&(p, c)) if p == page as u64 => {
                    frames[page] = c;
                    left -= 1;
                }
                _ => {
                    src -= 1;
                    frames[page] = frames[src];
                }
            }
        }
    }
    for page in (if batched { nr_pages } else { 0 })..nr_pages {
        let f = match dma_base {
            Some(b) if (dma_first..dma_first + dma_pages).contains(&page) => {
                Some(b + page - dma_first)
            }
            _ => copy_of(page).or_else(take),
        };
        match f {
            Some(f) => frames.push(f),
            None => {
                undo(&frames);
                return Err(no_memory());
            }
        }
    }
    let Some(shared_mfn) = take() else {
        undo(&frames);
        return Err(no_memory());
    };
    // The image's copy: the existing one gains a user, or this domain's
    // frames of those pages become it (filled below with the image).
    let new_copy = image.is_some() && reused == 0;
    let mut copy = Vec::new();
    if new_copy {
        // The image's read-only pages, a span at a time.
        let mut n = 0;
        loader::image_spans(&segs, plan.image_pages, |pages, w, _| {
            if !w {
                n += pages.end - pages.start;
            }
        });
        if copy.try_reserve_exact(n as usize).is_err() {
            undo(&frames);
            mem::free_frame(shared_mfn);
            return Err(no_memory());
        }
        loader::image_spans(&segs, plan.image_pages, |pages, w, _| {
            if !w {
                copy.extend(pages.map(|p| (p, frames[p as usize])));
            }
        });
    }
    let sharing = image.filter(|_| reused > 0 || !copy.is_empty());
    // Undoes everything from here: the domain's own frames freed, its use
    // of the image's copy dropped (the copy freed if it was the only one).
    let give_back = |mm: &mut Mm, images: &mut SharedImages, frames: &[u64]| {
        // Not held yet if sharing it is what failed.
        let _ = mm.release_hold(shared_mfn);
        let _ = mm.set_domain_image(id, None);
        for &f in frames.iter().chain(core::iter::once(&shared_mfn)) {
            if mm
                .frame(f)
                .is_some_and(|i| matches!(i.owner(), Owner::Image(_)))
            {
                continue;
            }
            let _ = mm.assign(f, Owner::Free);
            mem::free_frame(f);
        }
        if let Some(img) = sharing {
            super::release_image(mm, images, img);
        }
    };
    if let Some(img) = sharing {
        let recorded = if reused > 0 {
            images.attach(img).map(|_| ())
        } else {
            images.create(img, core::mem::take(&mut copy))
        };
        if recorded.is_err() {
            undo(&frames);
            mem::free_frame(shared_mfn);
            return Err(no_memory());
        }
        if let Err(e) = mm.set_domain_image(id, Some(img)) {
            give_back(mm, images, &frames);
            return Err(BuildError::Tables(e));
        }
    }
    // Ownership: the initial tables' frames are the domain's before they
    // are linked, a new copy's frames become the image's; every other
    // frame of the window is adopted with its leaf below
    // (`Mm::adopt_leaves`), nobody's until then.
    let table_pages = (plan.pt_first..plan.pt_first + plan.pt_pages)
        .chain((dev_tables > 0).then_some(dev_l2_page))
        .chain((dev_tables > 0).then_some(dev_l1_page));
    let mut owned = table_pages
        .map(|page| frames[page as usize])
        .try_for_each(|f| mm.assign(f, Owner::Domain(id)));
    if let (Ok(()), Some(img), 0) = (&owned, sharing, reused) {
        let copy = images.pages(img).unwrap_or(&[]);
        owned = copy.iter().try_for_each(|&(_, f)| mm.share_image(f, img));
    }
    if let Err(e) = owned {
        give_back(mm, images, &frames);
        return Err(BuildError::Tables(e));
    }
    if let Err(e) = mm.share_special(shared_mfn, id, true) {
        give_back(mm, images, &frames);
        return Err(BuildError::Tables(e));
    }

    // The image (an existing shared copy has it already).
    for s in &segs {
        let data = &elf[s.file_offset..s.file_offset + s.file_len];
        let mut done = 0usize;
        while done < data.len() {
            let va = s.va + done as u64;
            let page = (va - WINDOW_BASE) / 4096;
            let off = va & 0xfff;
            let n = ((4096 - off) as usize).min(data.len() - done);
            if !reusing(page) {
                mem::copy_to_phys((frames[page as usize] << 12) + off, &data[done..done + n]);
            }
            done += n;
        }
    }

    // Page tables, typed and counted as they are built (issue 13): the
    // root starts pinned and empty, each entry is checked and counted by
    // the validator's own rules as it is written, every table it links is
    // a frame just taken zeroed (`Mm::build_entry`). No second pass
    // validates them; `testopt=verify-build` proves the result equal to
    // one (`verify_built`).
    let pt = |i: u64| frames[(plan.pt_first + i) as usize];
    let (l4, l3, l2, l1_low) = (pt(0), pt(1), pt(2), pt(3));
    let table = |mfn: u64| (mfn << 12) | pte::PRESENT | pte::WRITABLE | pte::USER;
    let dm = &mut mem::DirectMap;
    let tables = (|| {
        let tree = mm.build_root(dm, id, l4)?;
        mm.build_entry(dm, &tree, l4, 0, table(l3))?;
        mm.build_entry(dm, &tree, l3, 0, table(l2))?;
        mm.build_entry(
            dm,
            &tree,
            l2,
            (SHARED_INFO_VA >> 21) as usize & 0x1ff,
            table(l1_low),
        )?;
        mm.build_entry(
            dm,
            &tree,
            l1_low,
            (SHARED_INFO_VA >> 12) as usize & 0x1ff,
            (shared_mfn << 12) | pte::PRESENT | pte::WRITABLE | pte::USER | pte::NX,
        )?;
        // One L1 per 2 MiB of the window.
        for j in 0..nr_pages.div_ceil(512) {
            let slot = (WINDOW_BASE >> 21) as usize + j as usize;
            mm.build_entry(dm, &tree, l2, slot, table(pt(4 + j)))?;
        }
        // The leaves, a span of pages mapped alike at a time, cut at the
        // L1s' edges: the window's own frames adopted, fresh, in one pass
        // (`Mm::adopt_leaves`); tables and the image's shared copy, which
        // are not fresh, checked and counted entry by entry.
        let mut map = |mm: &mut Mm, pages: core::ops::Range<u64>, w: bool, x: bool, fresh: bool| {
            let mut flags = pte::PRESENT | pte::USER;
            if w {
                flags |= pte::WRITABLE;
            }
            if !x {
                flags |= pte::NX;
            }
            let mut page = pages.start;
            while page < pages.end {
                let end = pages.end.min((page / 512 + 1) * 512);
                let (l1, index) = (pt(4 + page / 512), (page % 512) as usize);
                let run = &frames[page as usize..end as usize];
                if fresh {
                    mm.adopt_leaves(dm, &tree, l1, index, run, flags)?;
                } else {
                    let values = run.iter().map(|&f| (f << 12) | flags);
                    mm.build_leaves(dm, &tree, l1, index, values)?;
                }
                page = end;
            }
            Ok::<(), MmError>(())
        };
        let mut spans = Ok(());
        loader::image_spans(&segs, plan.image_pages, |pages, w, x| {
            if spans.is_ok() {
                // Read-only pages are the image's shared copy (MEM-2e).
                spans = map(mm, pages, w, x, image.is_none() || w);
            }
        });
        spans?;
        let pt_end = plan.pt_first + plan.pt_pages;
        map(mm, plan.pt_first..pt_end, false, false, false)?;
        map(mm, pt_end..plan.start_info_page, true, false, true)?;
        map(
            mm,
            plan.start_info_page..plan.start_info_page + 1,
            false,
            false,
            true,
        )?;
        if dev_tables > 0 {
            // The DMA region, then the device tables.
            map(mm, dma_first..dev_l2_page, true, false, true)?;
            map(mm, dev_l2_page..dev_l1_page + 1, false, false, false)?;
        }
        map(mm, first_free..nr_pages, true, false, true)?;
        // The device region (IO-0): L3[1] -> device L2 -> device L1, whose
        // entries the hypervisor installs below.
        if dev_tables > 0 {
            let (dl2, dl1) = (frames[dev_l2_page as usize], frames[dev_l1_page as usize]);
            mm.build_entry(
                dm,
                &tree,
                l3,
                ((DEVICE_VA_BASE >> 30) & 0x1ff) as usize,
                table(dl2),
            )?;
            mm.build_entry(
                dm,
                &tree,
                dl2,
                ((DEVICE_VA_BASE >> 21) & 0x1ff) as usize,
                table(dl1),
            )?;
        }
        Ok(())
    })();
    if let Err(e) = tables {
        mm.teardown(&mut mem::DirectMap, id);
        give_back(mm, images, &frames);
        return Err(BuildError::Tables(e));
    }

    // The frame list: one copy per page of it.
    for (i, chunk) in frames.chunks(512).enumerate() {
        let page = frames[(plan.frame_list_first + i as u64) as usize];
        mem::copy_to_phys(page << 12, chunk.as_bytes());
    }
    let va_of = |page: u64| WINDOW_BASE + page * 4096;

    // The start-info page, written in place: its frame came zeroed
    // (MEM-2a), so only the fields that are not zero are stored; no 3.7 KiB
    // record is built on the stack, zeroed and copied (issue 13).
    let start_info = frames[plan.start_info_page as usize];
    let page = mem::table_mut(start_info).as_mut_bytes();
    let Ok((si, _)) = <StartInfo as zerocopy::FromBytes>::mut_from_prefix(page) else {
        unreachable!("a start-info record fits in a page, aligned")
    };
    si.magic = START_INFO_MAGIC;
    si.abi_version = hypercall_abi::ABI_VERSION;
    si.domain_id = id;
    if DomainFlags::from_bits_truncate(rec.flags).contains(DomainFlags::PRIVILEGED) {
        si.flags = StartFlags::PRIVILEGED.bits();
    }
    si.nr_pages = nr_pages;
    si.max_pages = u64::from(rec.max_pages).max(nr_pages);
    si.window_base = WINDOW_BASE;
    si.shared_info_va = SHARED_INFO_VA;
    si.first_free_page = first_free;
    si.stack_first_page = plan.stack_first;
    si.pt_first_page = plan.pt_first;
    si.pt_pages = plan.pt_pages;
    si.frame_list_va = va_of(plan.frame_list_first);
    si.tsc_hz = crate::time::tsc_hz();
    si.name = rec.name;
    // The channel table is filled by `named::write_tables` once every
    // domain is built (EVT-7); the DMA region and the device table here
    // (IO-3, IO-0; the ports by `io::setup`), virtual disks and vNICs by
    // `io::setup` (IO-5, MEM-3c).
    if dma_pages > 0 {
        si.dma_first_page = dma_first;
        si.dma_pages = dma_pages;
        si.dma_machine_base = dma_base.map_or(0, |b| b << 12);
    }
    si.device_count = io.devices.len() as u32;
    for (slot, dev) in si.devices.iter_mut().zip(&io.devices) {
        *slot = *dev;
    }
    let n = cmdline.len().min(si.cmdline.len());
    si.cmdline[..n].copy_from_slice(&cmdline[..n]);
    si.cmdline_len = n as u32;
    let _ = plan.frame_list_pages;

    if crate::testopt::verify_build() {
        verify_built(mm, id, l4, &frames, shared_mfn);
    }
    // Loading the root marks it in use.
    let mut space = AddressSpace::new(id);
    let pinned = mm.switch_root(&mut space, l4);
    // Device frames (IO-0): delegated to this domain and installed in its
    // device L1, uncached; nothing else of I/O memory is mapped.
    let devices = pinned.and_then(|_| {
        if !io.is_driver() {
            return Ok(());
        }
        let dl1 = frames[dev_l1_page as usize];
        for (i, &mfn) in io.frames.iter().enumerate() {
            mm.delegate_io(mfn, id)?;
            mm.install_io(&mut mem::DirectMap, id, dl1, i, mfn)?;
        }
        Ok(())
    });
    if let Err(e) = devices {
        mm.detach(&mut space);
        mm.teardown(&mut mem::DirectMap, id);
        mm.revoke_io(id);
        give_back(mm, images, &frames);
        return Err(BuildError::Tables(e));
    }

    let shared = SharedPage::new(shared_mfn);
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
        ctx: super::Frame::new(ctx),
        fpu: FpuState::initial(),
        selectors: Selectors::default(),
        root: l4 << 12,
        frames,
        image: sharing,
        max_pages: u64::from(rec.max_pages).max(nr_pages),
        space,
        shared,
        start_info,
        callbacks: Callbacks::default(),
        upcall_word: crate::hv::schedule::no_upcall_word(),
        upcall_depth: 0,
        slice: crate::time::ms_to_ticks(weight),
        console: tahoma_core::console::LineBuffer::new(),
        mm_pending: None,
        freed: 0,
        grants_released: false,
        hypercalls: 0,
        built_at,
        first_run_at: None,
    })
}

/// `testopt=verify-build`: checks that the tables [`build()`] typed and
/// counted as it wrote them are exactly what a full validation of the same
/// tables gives. Takes every frame's accounting, unpins the root (which
/// releases the whole tree: each frame must be left idle, the held
/// shared-info page aside), pins it again (the validator reads and checks
/// every entry of every table), and compares type, counts, pin and hold of
/// every frame of the domain. A difference is an internal inconsistency:
/// the run fails. Reports `@ verify-build id= frames= tables= status=`.
fn verify_built(mm: &mut Mm, id: DomId, l4: u64, frames: &[u64], shared: u64) {
    let all = || frames.iter().copied().chain(core::iter::once(shared));
    let view = |mm: &Mm, f: u64| mm.frame(f).map(|i| i.view());
    let built: Vec<_> = all().map(|f| view(mm, f)).collect();
    let tables = built
        .iter()
        .flatten()
        .filter(|v| tahoma_core::mm::TableType::level(v.ty).is_some())
        .count();
    let mut bad = 0u64;
    let mut problem = |f: u64, what: core::fmt::Arguments<'_>| {
        bad += 1;
        mem::inconsistency(f, what);
    };
    if let Err(e) = mm.unpin(&mut mem::DirectMap, id, l4) {
        problem(
            l4,
            format_args!("verify-build: unpin of the built root refused: {e:?}"),
        );
    }
    let own = |mm: &Mm, f: u64| mm.frame(f).is_some_and(|i| i.owner() == Owner::Domain(id));
    for f in all().filter(|&f| f != shared && own(mm, f)) {
        if !mm.frame(f).is_some_and(|i| i.idle()) {
            problem(
                f,
                format_args!("verify-build: still referenced once the built tree is released"),
            );
        }
    }
    if let Err(e) = mm.pin(&mut mem::DirectMap, id, l4, Level::L4) {
        problem(
            l4,
            format_args!("verify-build: full validation refused the built tree: {e:?}"),
        );
    }
    for (f, was) in all().zip(&built) {
        let now = view(mm, f);
        if now != *was {
            problem(
                f,
                format_args!("verify-build: built as {was:?}, validated as {now:?}"),
            );
        }
    }
    report!(
        "verify-build",
        "id={} frames={} tables={} status={}",
        id,
        built.len(),
        tables,
        if bad == 0 { "ok" } else { "failed" }
    );
}
