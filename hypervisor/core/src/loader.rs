//! Guest images: the checks an ELF must pass and the plan of the window it
//! is loaded into (ABI clauses MEM-2, MEM-2b, MEM-2c).
//!
//! Pure, so that the hypervisor (when it builds a domain) and xtask (before
//! it boots anything) make exactly the same checks: a bad image is refused
//! on the host with its manifest line, not half-way through a boot.

use alloc::vec::Vec;
use core::fmt;

use hypercall_abi::layout::{INITIAL_STACK_PAGES, WINDOW_BASE, WINDOW_MAX_PAGES, WINDOW_MIN_PAGES};
use xmas_elf::program::Type as SegType;
use xmas_elf::ElfFile;

/// Why an image cannot be loaded into a window (MEM-2b, MEM-2c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The window size is out of range or leaves no room beside the image.
    BadSize(u64),
    /// Not an ELF64 x86-64 `ET_EXEC` image.
    BadElf(&'static str),
    /// A segment lies outside the window.
    BadSegment(u64),
    /// The entry point is not in an executable segment.
    BadEntry(u64),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::BadSize(p) => write!(
                f,
                "{p} pages is outside {WINDOW_MIN_PAGES}..={WINDOW_MAX_PAGES} or leaves no room for the image"
            ),
            ImageError::BadElf(why) => write!(f, "image refused: {why}"),
            ImageError::BadSegment(va) => write!(f, "segment at {va:#x} lies outside the window"),
            ImageError::BadEntry(va) => {
                write!(f, "entry point {va:#x} is not in an executable segment")
            }
        }
    }
}

/// One loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Virtual address (inside the window).
    pub va: u64,
    /// Offset of its bytes in the file.
    pub file_offset: usize,
    /// Bytes in the file (the rest of `mem` is zero).
    pub file_len: usize,
    /// Bytes in memory.
    pub mem: u64,
    /// Mapped writable.
    pub write: bool,
    /// Mapped executable.
    pub exec: bool,
}

/// A checked image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The entry point.
    pub entry: u64,
    /// Its loadable segments.
    pub segments: Vec<Segment>,
    /// Window pages the image covers, from the window base.
    pub pages: u64,
}

/// How the window's pages are used (MEM-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Pages the image covers.
    pub image_pages: u64,
    /// First page of the initial page tables.
    pub pt_first: u64,
    /// Pages of initial page tables (L4, L3, L2, the L1 holding the
    /// shared-info page, then the window's L1s).
    pub pt_pages: u64,
    /// First page of the frame list.
    pub frame_list_first: u64,
    /// Pages of the frame list.
    pub frame_list_pages: u64,
    /// The start-info page.
    pub start_info_page: u64,
    /// The first page free for the guest.
    pub first_free: u64,
    /// The first page of the initial stack.
    pub stack_first: u64,
}

/// Checks `image` for a window of `nr_pages` pages: ELF64, x86-64,
/// `ET_EXEC`, every loadable segment inside the file and the window, the
/// entry point in an executable segment (MEM-2b), the size in range
/// (MEM-2c).
pub fn parse(image: &[u8], nr_pages: u64) -> Result<Image, ImageError> {
    if !(WINDOW_MIN_PAGES..=WINDOW_MAX_PAGES).contains(&nr_pages) {
        return Err(ImageError::BadSize(nr_pages));
    }
    let elf = ElfFile::new(image).map_err(ImageError::BadElf)?;
    if elf.header.pt1.class() != xmas_elf::header::Class::SixtyFour {
        return Err(ImageError::BadElf("not ELF64"));
    }
    if elf.header.pt2.machine().as_machine() != xmas_elf::header::Machine::X86_64 {
        return Err(ImageError::BadElf("not x86-64"));
    }
    if elf.header.pt2.type_().as_type() != xmas_elf::header::Type::Executable {
        return Err(ImageError::BadElf(
            "not ET_EXEC (link with relocation-model=static)",
        ));
    }
    let window_end = WINDOW_BASE + nr_pages * 4096;
    let mut segments = Vec::new();
    let mut image_end = WINDOW_BASE;
    for ph in elf.program_iter() {
        if ph.get_type() != Ok(SegType::Load) || ph.mem_size() == 0 {
            continue;
        }
        let (off, filesz) = (ph.offset(), ph.file_size());
        let end = off
            .checked_add(filesz)
            .ok_or(ImageError::BadElf("segment wraps"))?;
        if end > image.len() as u64 || filesz > ph.mem_size() {
            return Err(ImageError::BadElf("segment outside the file"));
        }
        let va = ph.virtual_addr();
        let mem_end = va
            .checked_add(ph.mem_size())
            .ok_or(ImageError::BadSegment(va))?;
        if va < WINDOW_BASE || mem_end > window_end {
            return Err(ImageError::BadSegment(va));
        }
        image_end = image_end.max(mem_end);
        segments.push(Segment {
            va,
            // Both fit: `end` is within the image's length.
            file_offset: usize::try_from(off).map_err(|_| ImageError::BadElf("huge offset"))?,
            file_len: usize::try_from(filesz).map_err(|_| ImageError::BadElf("huge segment"))?,
            mem: ph.mem_size(),
            write: ph.flags().is_write(),
            exec: ph.flags().is_execute(),
        });
    }
    let entry = elf.header.pt2.entry_point();
    if !segments
        .iter()
        .any(|s| s.exec && entry >= s.va && entry - s.va < s.mem)
    {
        return Err(ImageError::BadEntry(entry));
    }
    Ok(Image {
        entry,
        segments,
        pages: (image_end - WINDOW_BASE).div_ceil(4096),
    })
}

/// Plans a window of `nr_pages` for an image covering `image_pages`: the
/// initial tables, the frame list and the start-info page follow the image,
/// the stack takes the top; refused when they do not fit (MEM-2c).
pub fn plan(nr_pages: u64, image_pages: u64) -> Result<Plan, ImageError> {
    let window_l1s = nr_pages.div_ceil(512);
    let pt_pages = 4 + window_l1s;
    let frame_list_pages = (nr_pages * 8).div_ceil(4096);
    let pt_first = image_pages;
    let frame_list_first = pt_first + pt_pages;
    let start_info_page = frame_list_first + frame_list_pages;
    let first_free = start_info_page + 1;
    let stack_first = nr_pages.saturating_sub(INITIAL_STACK_PAGES);
    if first_free > stack_first {
        return Err(ImageError::BadSize(nr_pages));
    }
    Ok(Plan {
        image_pages,
        pt_first,
        pt_pages,
        frame_list_first,
        frame_list_pages,
        start_info_page,
        first_free,
        stack_first,
    })
}

/// The image's pages (from the window base, `0..image_pages`) as spans
/// mapped alike: calls `f(pages, write, exec)` for consecutive spans, in
/// order, covering every page once. A page is writable (executable) if any
/// segment touching it is; a page no segment touches is neither (MEM-2).
/// One call per change of the segments touching a page, so the build
/// composes the leaves of a span at once instead of asking each page
/// (issue 13).
pub fn image_spans(
    segments: &[Segment],
    image_pages: u64,
    mut f: impl FnMut(core::ops::Range<u64>, bool, bool),
) {
    // Segment `s` touches pages first..end.
    let pages = |s: &Segment| {
        let first = (s.va - WINDOW_BASE) / 4096;
        (first, (s.va + s.mem - WINDOW_BASE).div_ceil(4096))
    };
    let mut cur = 0;
    while cur < image_pages {
        let (mut next, mut w, mut x) = (image_pages, false, false);
        for s in segments {
            let (a, b) = pages(s);
            if a <= cur && cur < b {
                w |= s.write;
                x |= s.exec;
            }
            for edge in [a, b] {
                if edge > cur {
                    next = next.min(edge);
                }
            }
        }
        f(cur..next, w, x);
        cur = next;
    }
}

/// [`parse`] then [`plan`]: everything the hypervisor will check before it
/// allocates a frame.
pub fn check(image: &[u8], nr_pages: u64) -> Result<(Image, Plan), ImageError> {
    let img = parse(image, nr_pages)?;
    let plan = plan(nr_pages, img.pages)?;
    Ok((img, plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A minimal ELF64 x86-64 ET_EXEC with one PT_LOAD (R+X) of `mem`
    /// bytes at `va`, entry `entry`.
    fn elf(va: u64, mem: u64, entry: u64) -> Vec<u8> {
        let mut e = vec![0u8; 0x1000];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2; // ELFCLASS64
        e[5] = 1; // little-endian
        e[6] = 1; // version
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        e[20..24].copy_from_slice(&1u32.to_le_bytes());
        e[24..32].copy_from_slice(&entry.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        let ph = 64;
        e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        e[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
        e[ph + 8..ph + 16].copy_from_slice(&0u64.to_le_bytes()); // offset
        e[ph + 16..ph + 24].copy_from_slice(&va.to_le_bytes());
        e[ph + 24..ph + 32].copy_from_slice(&va.to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&0x1000u64.min(mem).to_le_bytes());
        e[ph + 40..ph + 48].copy_from_slice(&mem.to_le_bytes());
        e[ph + 48..ph + 56].copy_from_slice(&0x1000u64.to_le_bytes());
        e
    }

    proptest::proptest! {
        /// The spans cover the image's pages once, in order, and give each
        /// page what asking every segment about that page gives.
        #[test]
        fn image_spans_agree_with_each_page(
            segs in proptest::collection::vec(
                (0u64..40 * 4096, 1u64..6 * 4096, proptest::bool::ANY, proptest::bool::ANY),
                0..6,
            ),
        ) {
            let segments: Vec<Segment> = segs
                .iter()
                .map(|&(off, mem, write, exec)| Segment {
                    va: WINDOW_BASE + off,
                    file_offset: 0,
                    file_len: 0,
                    mem,
                    write,
                    exec,
                })
                .collect();
            let image_pages = segments
                .iter()
                .map(|s| (s.va + s.mem - WINDOW_BASE).div_ceil(4096))
                .max()
                .unwrap_or(0);
            let mut next = 0;
            let mut spans = 0;
            image_spans(&segments, image_pages, |pages, w, x| {
                assert_eq!(pages.start, next, "in order, no gap");
                assert!(pages.end > pages.start, "never empty");
                next = pages.end;
                spans += 1;
                for page in pages {
                    let va = WINDOW_BASE + page * 4096;
                    let want = segments
                        .iter()
                        .filter(|s| s.va < va + 4096 && va < s.va + s.mem)
                        .fold((false, false), |(w, x), s| (w | s.write, x | s.exec));
                    assert_eq!((w, x), want, "page {}", page);
                }
            });
            proptest::prop_assert_eq!(next, image_pages);
            proptest::prop_assert!(spans <= 2 * segments.len() + 1);
        }
    }

    #[test]
    fn a_good_image_is_planned() {
        let (img, plan) = check(&elf(WINDOW_BASE, 0x3000, WINDOW_BASE + 0x10), 256).unwrap();
        assert_eq!(img.pages, 3);
        assert_eq!(img.entry, WINDOW_BASE + 0x10);
        assert_eq!(plan.pt_first, 3);
        assert_eq!(plan.pt_pages, 5);
        assert_eq!(plan.frame_list_first, 8);
        assert_eq!(plan.start_info_page, 9);
        assert_eq!(plan.stack_first, 256 - INITIAL_STACK_PAGES);
    }

    #[test]
    fn the_plan_is_exact_and_may_fill_the_window() {
        let p = plan(256, 3).unwrap();
        assert_eq!(
            p,
            Plan {
                image_pages: 3,
                pt_first: 3,
                pt_pages: 5,
                frame_list_first: 8,
                frame_list_pages: 1,
                start_info_page: 9,
                first_free: 10,
                stack_first: 256 - INITIAL_STACK_PAGES,
            }
        );
        // 1024 pages: two window L1s, two pages of frame list.
        let p = plan(1024, 0).unwrap();
        assert_eq!((p.pt_pages, p.frame_list_pages), (6, 2));
        assert_eq!((p.start_info_page, p.first_free), (8, 9));
        // The image may grow until the first free page is the stack's.
        let n = 64;
        let fits = n - INITIAL_STACK_PAGES - 7;
        assert_eq!(plan(n, fits).unwrap().first_free, n - INITIAL_STACK_PAGES);
        assert_eq!(plan(n, fits + 1), Err(ImageError::BadSize(n)));
    }

    #[test]
    fn segments_and_entry_are_checked_at_their_edges() {
        // A segment ending exactly at the window's end is inside it.
        let va = WINDOW_BASE + 31 * 4096;
        let img = parse(&elf(va, 0x1000, va), 32).unwrap();
        assert_eq!(img.pages, 32);
        let s = img.segments[0];
        assert_eq!(
            (s.va, s.file_offset, s.file_len, s.mem),
            (va, 0, 0x1000, 0x1000)
        );
        assert!(s.exec && !s.write);
        // Partial pages round up.
        assert_eq!(
            parse(&elf(WINDOW_BASE, 0x1800, WINDOW_BASE), 32)
                .unwrap()
                .pages,
            2
        );
        // The entry must lie inside the segment: its last byte, not its end.
        let last = WINDOW_BASE + 0xfff;
        assert!(parse(&elf(WINDOW_BASE, 0x1000, last), 32).is_ok());
        assert_eq!(
            parse(&elf(WINDOW_BASE, 0x1000, last + 1), 32),
            Err(ImageError::BadEntry(last + 1))
        );
        // ... and in an executable one.
        let mut e = elf(WINDOW_BASE, 0x1000, WINDOW_BASE);
        e[64 + 4] = 6; // R+W
        assert_eq!(parse(&e, 32), Err(ImageError::BadEntry(WINDOW_BASE)));
        // File bytes beyond the file, or more of them than memory.
        let mut e = elf(WINDOW_BASE, 0x1000, WINDOW_BASE);
        e[64 + 8] = 1; // offset 1: the last byte is past the file
        assert_eq!(
            parse(&e, 32),
            Err(ImageError::BadElf("segment outside the file"))
        );
        let mut e = elf(WINDOW_BASE, 0x1000, WINDOW_BASE);
        e[64 + 40] = 0xff; // memsz 0xff < filesz 0x1000
        e[64 + 41] = 0;
        assert_eq!(
            parse(&e, 32),
            Err(ImageError::BadElf("segment outside the file"))
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        use alloc::string::ToString;
        assert_eq!(
            ImageError::BadSegment(0x1000).to_string(),
            "segment at 0x1000 lies outside the window"
        );
        assert_eq!(
            ImageError::BadEntry(0x10).to_string(),
            "entry point 0x10 is not in an executable segment"
        );
        assert_eq!(
            ImageError::BadElf("not x86-64").to_string(),
            "image refused: not x86-64"
        );
        assert!(ImageError::BadSize(3)
            .to_string()
            .starts_with("3 pages is outside "));
    }

    #[test]
    fn window_sizes_outside_the_range_are_refused() {
        let e = elf(WINDOW_BASE, 0x1000, WINDOW_BASE);
        assert_eq!(
            parse(&e, WINDOW_MIN_PAGES - 1),
            Err(ImageError::BadSize(WINDOW_MIN_PAGES - 1))
        );
        assert_eq!(
            parse(&e, WINDOW_MAX_PAGES + 1),
            Err(ImageError::BadSize(WINDOW_MAX_PAGES + 1))
        );
        assert!(parse(&e, WINDOW_MIN_PAGES).is_ok());
        // An image that leaves no room for tables and stack.
        let big = elf(WINDOW_BASE, 30 * 4096, WINDOW_BASE);
        assert_eq!(check(&big, 32), Err(ImageError::BadSize(32)));
    }

    #[test]
    fn only_loadable_segments_with_memory_count() {
        // A second program header: a PT_NOTE (4) "at" 0x1000 with memory,
        // and then a PT_LOAD of size 0 there too. Neither is loaded, so
        // neither is checked against the window.
        let mut e = elf(WINDOW_BASE, 0x1000, WINDOW_BASE);
        e[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = 64 + 56;
        let second = |e: &mut Vec<u8>, ty: u32, mem: u64| {
            e[ph..ph + 4].copy_from_slice(&ty.to_le_bytes());
            e[ph + 16..ph + 24].copy_from_slice(&0x1000u64.to_le_bytes());
            e[ph + 32..ph + 40].copy_from_slice(&0u64.to_le_bytes());
            e[ph + 40..ph + 48].copy_from_slice(&mem.to_le_bytes());
        };
        second(&mut e, 4, 0x100);
        assert_eq!(parse(&e, 256).map(|i| i.segments.len()), Ok(1));
        second(&mut e, 1, 0);
        assert_eq!(parse(&e, 256).map(|i| i.segments.len()), Ok(1));
        second(&mut e, 1, 0x100);
        assert_eq!(parse(&e, 256), Err(ImageError::BadSegment(0x1000)));
    }

    #[test]
    fn bad_images_are_refused_with_their_reason() {
        let good = elf(WINDOW_BASE, 0x1000, WINDOW_BASE);
        let mut e = good.clone();
        e[16] = 3; // ET_DYN
        assert!(matches!(parse(&e, 256), Err(ImageError::BadElf(_))));
        let mut e = good.clone();
        e[18] = 40; // ARM
        assert_eq!(parse(&e, 256), Err(ImageError::BadElf("not x86-64")));
        assert!(parse(b"not an elf at all", 256).is_err());
        assert_eq!(
            parse(&elf(0x1000, 0x1000, 0x1000), 256),
            Err(ImageError::BadSegment(0x1000))
        );
        assert_eq!(
            parse(&elf(WINDOW_BASE, 0x1000, 0x10), 256),
            Err(ImageError::BadEntry(0x10))
        );
        // A segment past the end of a small window.
        assert_eq!(
            parse(
                &elf(WINDOW_BASE + 40 * 4096, 0x1000, WINDOW_BASE + 40 * 4096),
                32
            ),
            Err(ImageError::BadSegment(WINDOW_BASE + 40 * 4096))
        );
    }
}
