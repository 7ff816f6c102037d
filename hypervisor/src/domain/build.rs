//! Building a domain from its boot-pack record and ELF image (MEM-2, MEM-3).
#![forbid(unsafe_code)]

use super::*;

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
    let Some(shared_mfn) = take() else {
        frames.iter().for_each(|&f| mem::free_frame(f));
        return Err(BuildError::NoMemory);
    };
    let give_back = |mm: &mut Mm, frames: &[u64]| {
        // Not held yet if sharing it is what failed.
        let _ = mm.release_hold(shared_mfn);
        for &f in frames.iter().chain(core::iter::once(&shared_mfn)) {
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
    if let Err(e) = mm.share_special(shared_mfn, id, true) {
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
    let table = |mfn: u64| (mfn << 12) | pte::PRESENT | pte::WRITABLE | pte::USER;
    let kernel = mem::table_mut(mem::kernel_pml4());
    let root = mem::table_mut(l4);
    root[256..].copy_from_slice(&kernel[256..]);
    root[0] = table(l3);
    mem::table_mut(l3)[0] = table(l2);
    mem::table_mut(l2)[(SHARED_INFO_VA >> 21) as usize & 0x1ff] = table(l1_low);
    mem::table_mut(l1_low)[(SHARED_INFO_VA >> 12) as usize & 0x1ff] =
        (shared_mfn << 12) | pte::PRESENT | pte::WRITABLE | pte::USER | pte::NX;
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
        // Device, DMA and virtual-disk tables (IO-*, BLK-*): none yet.
        dma_first_page: 0,
        dma_pages: 0,
        dma_machine_base: 0,
        device_count: 0,
        vblk_count: 0,
        devices: zerocopy::FromZeros::new_zeroed(),
        vblks: zerocopy::FromZeros::new_zeroed(),
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

    let shared = SharedPage { mfn: shared_mfn };
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
        grants_released: false,
        hypercalls: 0,
        built_at,
        first_run_at: None,
    })
}
