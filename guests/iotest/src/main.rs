//! Device delegation from the guest side (`docs/abi/io.md`, scenario `io`).
//!
//! `role=driver` (the privileged `drv`, owner of the disk): reads the
//! virtio-mmio registers through its mapping, resets the device and brings
//! up one virtqueue of 4 descriptors in its DMA region, reads sector 0 three
//! times to see interrupts arrive as events and the line stay masked until
//! `io_irq_ack`, checks its start-info tables and its backend disk entry,
//! tries to map I/O memory itself, then dies on an invalid opcode: the
//! hypervisor must reset the device before reusing its frames (IO-4, judged
//! by xtask).
//!
//! `role=plain` (an ordinary guest with a virtual disk): checks it has no
//! device, cannot map one nor ack an interrupt, checks its frontend disk
//! entry and signals the driver on it, then waits for the driver's death to
//! close the channel.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

use core::sync::atomic::{AtomicU32, Ordering};

use guest_sdk::abi::layout::{DEVICE_VA_BASE, VBLK_ROLE_BACKEND};
use guest_sdk::abi::mmu::MmuUpdate;
use guest_sdk::abi::pte;
use guest_sdk::paging::{self, Level};
use guest_sdk::{event, io, mmu, println, time, Error, Port, StartInfo, VblkRole};
use harness::{clause, Ck};

guest_sdk::entry!(main);

fn main(si: &StartInfo) -> i32 {
    match si.cmdline_value("role") {
        Some("driver") => driver(si),
        Some("plain") => plain(si),
        other => {
            println!("iotest: unknown role {other:?} (role=driver or role=plain)");
            2
        }
    }
}

/// The frames a guest must never map itself (IO-0a): the virtio-mmio
/// frame, the IOAPIC, the local APIC.
const DEVICE_FRAMES: [u64; 3] = [0xfeb00, 0xfec00, 0xfee00];

/// A leaf entry for `mfn`, read-write, user, no-execute.
fn rw(mfn: u64) -> u64 {
    (mfn << 12) | pte::PRESENT | pte::WRITABLE | pte::USER | pte::NX
}

/// Tries to map every device frame at the empty page `va` (whose L1
/// exists): each refused with the documented error, nothing mapped after.
fn try_map_devices(ck: &mut Ck, va: u64) {
    let Some(l1) = paging::table_mfn(va, Level::L1) else {
        ck.t(false, "no L1 for the probe page");
        return;
    };
    ck.t(paging::translate(va).is_none(), "probe page empty before");
    let ptr = paging::entry_ptr(l1, paging::index(va, Level::L1));
    for mfn in DEVICE_FRAMES {
        let r = mmu::update(&[MmuUpdate { ptr, val: rw(mfn) }]).map_err(|e| e.error);
        ck.eq("map a device frame", r, Err(Error::NotFound));
        let r = mmu::update(&[MmuUpdate {
            ptr,
            val: rw(mfn) | pte::PCD | pte::PWT,
        }])
        .map_err(|e| e.error);
        ck.eq(
            "map a device frame uncached",
            r,
            Err(Error::InvalidArgument),
        );
        let r = mmu::update_va_mapping(va, rw(mfn), true);
        ck.eq("update_va_mapping a device frame", r, Err(Error::NotFound));
    }
    ck.t(
        paging::translate(va).is_none(),
        "probe page still empty after",
    );
    try_pin_devices(ck);
}

/// Pins a table holding a device entry (a page of its heap, unmapped for
/// the attempt): refused, nothing pinned.
fn try_pin_devices(ck: &mut Ck) {
    let layout = core::alloc::Layout::from_size_align(4096, 4096).expect("a page layout");
    // SAFETY: a non-zero-sized layout; the page is freed below.
    let page = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if page.is_null() {
        ck.t(false, "no heap page for the pin attempt");
        return;
    }
    let va = page as u64;
    let Some((mfn, _)) = paging::translate(va) else {
        ck.t(false, "heap page not mapped");
        return;
    };
    let saved = paging::read_entry(va, Level::L1).unwrap_or(0);
    for dev in DEVICE_FRAMES {
        dma_w::<u64>(va, rw(dev));
        ck.eq(
            "unmap the page",
            mmu::update_va_mapping(va, 0, true),
            Ok(()),
        );
        ck.eq(
            "pin it as an L1",
            mmu::pin(mfn, Level::L1),
            Err(Error::NotFound),
        );
        ck.eq(
            "map it back",
            mmu::update_va_mapping(va, saved, true),
            Ok(()),
        );
    }
    dma_w::<u64>(va, 0);
    // SAFETY: allocated above with this layout, mapped again, not used since.
    unsafe { alloc::alloc::dealloc(page, layout) };
}

/// Hypercall buffers in the device window are refused like any frame the
/// caller does not own (CALL-4): nothing read from or written to the device.
fn try_buffers_in(ck: &mut Ck, mmio_va: u64, status_before: u32, status_now: impl Fn() -> u32) {
    use guest_sdk::abi::{console, memory};
    let r = guest_sdk::raw::invoke(&console::Write {
        ptr: mmio_va,
        len: 16,
    });
    ck.eq(
        "console_write from the device window",
        r,
        Err(Error::BadAddress),
    );
    let r = guest_sdk::raw::invoke(&memory::Info {
        out: mmio_va + 0x70,
    });
    ck.eq(
        "memory_info into the device's Status",
        r,
        Err(Error::BadAddress),
    );
    ck.eq("Status untouched", status_now(), status_before);
}

/// Waits up to `ms` for `cond`.
fn wait_ms(ms: u64, cond: impl FnMut() -> bool) -> bool {
    event::wait_for_until(cond, time::now_ns() + ms * 1_000_000)
}

// ---------------------------------------------------------------------------
// The driver.

/// Interrupt events seen on the device's port.
static IRQS: AtomicU32 = AtomicU32::new(0);
/// Events seen on the backend disk port.
static DISK_EVENTS: AtomicU32 = AtomicU32::new(0);

fn on_irq(_: Port) {
    IRQS.fetch_add(1, Ordering::SeqCst);
}

fn on_disk(_: Port) {
    DISK_EVENTS.fetch_add(1, Ordering::SeqCst);
}

/// A virtio-mmio register window at a virtual address.
#[derive(Clone, Copy)]
struct Mmio(u64);

impl Mmio {
    fn r(self, off: u64) -> u32 {
        // SAFETY: `self.0` is the device window the hypervisor mapped
        // uncached (IO-0, checked by the caller before any access) and
        // `off` one of the virtio-mmio register offsets below 0x200: an
        // aligned 32-bit register inside the mapped page.
        unsafe { core::ptr::read_volatile((self.0 + off) as *const u32) }
    }
    fn w(self, off: u64, v: u32) {
        // SAFETY: as in `r`; writing a register has no effect on this
        // domain's memory beyond what the device is programmed to DMA into
        // (its DMA region only).
        unsafe { core::ptr::write_volatile((self.0 + off) as *mut u32, v) }
    }
}

/// Volatile accesses to the DMA region (shared with the device).
fn dma_w<T>(va: u64, v: T) {
    // SAFETY: callers pass addresses inside the DMA region (mapped
    // read-write, IO-3), aligned for `T`; the device may read it, so the
    // store is volatile.
    unsafe { core::ptr::write_volatile(va as *mut T, v) }
}
fn dma_r<T: Copy>(va: u64) -> T {
    // SAFETY: as in `dma_w`; the device may have written it, so the load
    // is volatile.
    unsafe { core::ptr::read_volatile(va as *const T) }
}

const STATUS: u64 = 0x070;
/// The io scenario's `dma = "1M"` (the default is 2M).
const DMA_PAGES: u64 = 256;
const QUEUE_SIZE: u16 = 4;

/// One read of sector 0 on queue 0 (three descriptors: header, 512 data
/// bytes, status byte), all in the DMA region.
struct Queue {
    m: Mmio,
    dma: io::DmaRegion,
    avail_idx: u16,
}

impl Queue {
    fn desc(&self) -> u64 {
        self.dma.va
    }
    fn avail(&self) -> u64 {
        self.dma.va + 0x100
    }
    fn used(&self) -> u64 {
        self.dma.va + 0x200
    }
    fn hdr(&self) -> u64 {
        self.dma.va + 0x1000
    }
    fn status(&self) -> u64 {
        self.dma.va + 0x1100
    }
    fn data(&self) -> u64 {
        self.dma.va + 0x2000
    }
    fn machine(&self, va: u64) -> u64 {
        self.dma.machine_of(va).unwrap_or(0)
    }

    /// Reset, feature negotiation (VERSION_1 only), queue 0, DRIVER_OK.
    fn up(m: Mmio, dma: io::DmaRegion, ck: &mut Ck) -> Queue {
        let q = Queue {
            m,
            dma,
            avail_idx: 0,
        };
        m.w(STATUS, 0);
        ck.eq("status after reset", m.r(STATUS), 0);
        m.w(STATUS, 1 | 2);
        m.w(0x014, 1);
        ck.t(m.r(0x010) & 1 != 0, "device offers VIRTIO_F_VERSION_1");
        m.w(0x024, 0);
        m.w(0x020, 0);
        m.w(0x024, 1);
        m.w(0x020, 1);
        m.w(STATUS, 1 | 2 | 8);
        ck.t(m.r(STATUS) & 8 != 0, "FEATURES_OK accepted");
        m.w(0x030, 0);
        ck.t(
            m.r(0x034) >= u32::from(QUEUE_SIZE),
            "queue 0 holds 4 descriptors",
        );
        m.w(0x038, u32::from(QUEUE_SIZE));
        for (lo, va) in [(0x080, q.desc()), (0x090, q.avail()), (0x0a0, q.used())] {
            let pa = q.machine(va);
            m.w(lo, pa as u32);
            m.w(lo + 4, (pa >> 32) as u32);
        }
        m.w(0x044, 1);
        m.w(STATUS, 1 | 2 | 4 | 8);
        ck.eq("status DRIVER_OK", m.r(STATUS) & 0x4f, 1 | 2 | 4 | 8);
        q
    }

    fn used_idx(&self) -> u16 {
        dma_r::<u16>(self.used() + 2)
    }

    /// Queues the read and notifies the device.
    fn submit(&mut self) {
        dma_w::<u32>(self.hdr(), 0); // VIRTIO_BLK_T_IN
        dma_w::<u32>(self.hdr() + 4, 0);
        dma_w::<u64>(self.hdr() + 8, 0);
        dma_w::<u8>(self.status(), 0xff);
        let d = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
            let at = self.desc() + i * 16;
            dma_w::<u64>(at, addr);
            dma_w::<u32>(at + 8, len);
            dma_w::<u16>(at + 12, flags);
            dma_w::<u16>(at + 14, next);
        };
        d(0, self.machine(self.hdr()), 16, 1, 1);
        d(1, self.machine(self.data()), 512, 1 | 2, 2);
        d(2, self.machine(self.status()), 1, 2, 0);
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        dma_w::<u16>(self.avail() + 4 + 2 * slot, 0);
        core::sync::atomic::fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        dma_w::<u16>(self.avail() + 2, self.avail_idx);
        core::sync::atomic::fence(Ordering::SeqCst);
        self.m.w(0x050, 0);
    }

    /// Acknowledges the interrupt at the device.
    fn ack_device(&self) {
        let s = self.m.r(0x060);
        self.m.w(0x064, s);
    }
}

fn driver(si: &StartInfo) -> i32 {
    let dev = si.devices().next();
    let dma = si.dma();

    clause(
        "IO-0",
        "delegated MMIO windows mapped exactly, uncached",
        |ck| {
            ck.eq("device_count", si.device_count, 1);
            let Some(d) = dev else {
                ck.t(false, "no device in start info");
                return;
            };
            ck.eq("virtio id", d.virtio_id, 2);
            ck.eq("machine address", d.mmio_machine, 0xfeb0_0e00);
            ck.eq("mapped at", d.mmio_va, DEVICE_VA_BASE + 0xe00);
            ck.eq("window size", d.mmio_size, 0x200);
            ck.eq("IOAPIC input", d.irq, 12);
            let e = paging::read_entry(DEVICE_VA_BASE, Level::L1).unwrap_or(0);
            ck.eq("device frame", paging::entry_mfn(e), 0xfeb00);
            ck.t(
                e & (pte::PCD | pte::PWT) == pte::PCD | pte::PWT,
                "uncached (PCD|PWT)",
            );
            ck.t(
                e & pte::WRITABLE != 0 && e & pte::NX != 0,
                "writable, not executable",
            );
            ck.t(
                paging::translate(DEVICE_VA_BASE + 0x1000).is_none(),
                "nothing mapped after the device frame",
            );
            let m = Mmio(d.mmio_va);
            ck.eq("magic 'virt'", m.r(0x000), 0x7472_6976);
            ck.eq("virtio-mmio version", m.r(0x004), 2);
            ck.eq("device id (block)", m.r(0x008), 2);
            // Config space: capacity in sectors (the io scenario's disk: 16M).
            let cap = u64::from(m.r(0x100)) | (u64::from(m.r(0x104)) << 32);
            ck.eq("capacity read through the mapping", cap, 16 << 11);
        },
    );

    let mut dma_seen = false;
    clause(
        "IO-2",
        "interrupts arrive as events; the line stays masked until io_irq_ack",
        |ck| {
            let (Some(d), Some(dma)) = (dev, dma) else {
                ck.t(false, "no device or no DMA region");
                return;
            };
            ck.t(event::is_masked(d.irq_port), "the irq port starts masked");
            ck.t(!event::is_pending(d.irq_port), "nothing pending at start");
            ck.eq(
                "send on the irq port",
                event::send(d.irq_port),
                Err(Error::WrongState),
            );
            let mut q = Queue::up(Mmio(d.mmio_va), dma, ck);
            event::set_handler(d.irq_port, on_irq);
            ck.eq("unmask", event::unmask(d.irq_port), Ok(()));
            q.submit();
            ck.t(
                wait_ms(2000, || IRQS.load(Ordering::SeqCst) >= 1),
                "first interrupt as an event",
            );
            ck.eq("used index after 1", q.used_idx(), 1);
            dma_seen = dma_r::<u8>(q.status()) == 0;
            ck.t(dma_seen, "the device wrote status OK into the DMA region");
            // Neither acked at the device nor io_irq_ack: the line is masked.
            q.submit();
            ck.t(wait_ms(2000, || q.used_idx() == 2), "second request done");
            wait_ms(50, || false);
            ck.eq(
                "no event while the line is masked",
                IRQS.load(Ordering::SeqCst),
                1,
            );
            // Unmasked while the device still asserts it: at once again.
            ck.eq("io_irq_ack", io::irq_ack(d.index), Ok(()));
            ck.t(
                wait_ms(2000, || IRQS.load(Ordering::SeqCst) >= 2),
                "the still-asserted line interrupts on io_irq_ack",
            );
            q.ack_device();
            ck.eq("io_irq_ack", io::irq_ack(d.index), Ok(()));
            wait_ms(50, || false);
            ck.eq("acked at the device: quiet", IRQS.load(Ordering::SeqCst), 2);
            q.submit();
            ck.t(
                wait_ms(2000, || IRQS.load(Ordering::SeqCst) >= 3),
                "third request's interrupt",
            );
            q.ack_device();
            ck.eq("final io_irq_ack", io::irq_ack(d.index), Ok(()));
        },
    );

    clause("IO-1", "io_irq_ack: own devices only", |ck| {
        ck.eq(
            "index past its devices",
            io::irq_ack(1),
            Err(Error::NotFound),
        );
        ck.eq("index past the table", io::irq_ack(4), Err(Error::NotFound));
        ck.eq(
            "index u32::MAX",
            io::irq_ack(u32::MAX),
            Err(Error::NotFound),
        );
        ck.eq("its device", io::irq_ack(0), Ok(()));
    });

    clause(
        "IO-3",
        "a machine-contiguous DMA region in the window",
        |ck| {
            let Some(d) = dma else {
                ck.t(false, "no DMA region");
                return;
            };
            ck.eq("dma_pages", d.pages, DMA_PAGES);
            ck.t(d.machine_base % 4096 == 0, "page-aligned machine base");
            let list = paging::frame_list();
            let first = d.first_page as usize;
            let ok = (0..DMA_PAGES as usize)
                .all(|k| list.get(first + k).copied() == Some(d.machine_base / 4096 + k as u64));
            ck.t(
                ok,
                "the frame list holds contiguous frames from dma_machine_base",
            );
            ck.eq(
                "first_free_page after it",
                si.first_free_page,
                d.first_page + DMA_PAGES + 2,
            );
            let last = d.va + (DMA_PAGES - 1) * 4096;
            dma_w::<u64>(last, 0x1234_5678_9abc_def0);
            ck.eq("writable", dma_r::<u64>(last), 0x1234_5678_9abc_def0);
            ck.t(dma_seen, "the device DMAed into it (IO-2's status byte)");
            // mmu_frame_info answers for the caller's own frames only (MMU-29).
            for k in [0, DMA_PAGES - 1] {
                let r = mmu::frame_info(d.machine_base / 4096 + k).map(drop);
                ck.eq("a DMA frame is this domain's own", r, Ok(()));
            }
        },
    );

    clause("MEM-3b", "start-info device, DMA and vblk tables", |ck| {
        let r = si.raw();
        ck.eq("device_count", r.device_count, 1);
        ck.eq("vblk_count", r.vblk_count, 1);
        ck.t(
            r.devices[1..]
                .iter()
                .all(|d| d.kind == 0 && d.mmio_va == 0 && d.irq_port == 0),
            "device entries past the count are zero",
        );
        ck.t(
            r.vblks[1..].iter().all(|v| v.role == 0 && v.port == 0),
            "vblk entries past the count are zero",
        );
        ck.t(
            r.dma_pages == DMA_PAGES && r.dma_machine_base != 0,
            "DMA fields set",
        );
        ck.t(
            r.dma_first_page > r.pt_first_page && r.dma_first_page < r.stack_first_page,
            "DMA region inside the window",
        );
    });

    clause(
        "IO-5",
        "virtual disks wired at boot: the backend side",
        |ck| {
            let b: alloc::vec::Vec<_> = si.vblks().collect();
            ck.eq("one disk served", b.len(), 1);
            let Some(v) = b.first() else { return };
            ck.eq("role", v.role, VblkRole::Backend);
            ck.eq("raw role", si.vblks[0].role, VBLK_ROLE_BACKEND);
            ck.eq("index", v.index, 0);
            ck.eq("peer name", v.peer_name, "plain");
            ck.eq("peer id", v.peer.0, 2);
            ck.eq("capacity", v.capacity_sectors, (8 << 20) / 512);
            ck.eq("sector size", v.sector_size, 512);
            ck.eq("extent offset", v.extent_offset, 4 << 20);
            ck.eq("device index", v.device, 0);
            ck.t(!v.readonly, "writable extent");
            event::set_handler(v.port, on_disk);
            ck.eq("unmask", event::unmask(v.port), Ok(()));
            ck.t(
                wait_ms(5000, || DISK_EVENTS.load(Ordering::SeqCst) >= 1),
                "the frontend's event arrives on the backend port",
            );
        },
    );

    clause("IO-0a", "no guest-made mapping of I/O memory", |ck| {
        // Its own device L1, page after the device frame; then a heap page's.
        try_map_devices(ck, DEVICE_VA_BASE + 0x1000);
        try_map_devices(ck, DEVICE_VA_BASE + 0x3000);
        ck.t(
            paging::read_entry(DEVICE_VA_BASE, Level::L1).unwrap_or(0) & pte::PRESENT != 0,
            "the hypervisor's entry is still there",
        );
        if let Some(d) = dev {
            let m = Mmio(d.mmio_va);
            try_buffers_in(ck, d.mmio_va, m.r(STATUS), || m.r(STATUS));
        }
        // It may drop the hypervisor's entry, and then never get it back.
        let Some(l1) = paging::table_mfn(DEVICE_VA_BASE, Level::L1) else {
            ck.t(false, "no device L1");
            return;
        };
        let ptr = paging::entry_ptr(l1, 0);
        ck.eq(
            "overwrite the device entry",
            mmu::update(&[MmuUpdate { ptr, val: 0 }]).map_err(|e| e.error),
            Ok(()),
        );
        ck.t(
            paging::translate(DEVICE_VA_BASE).is_none(),
            "device unmapped",
        );
        ck.eq(
            "map it back",
            mmu::update(&[MmuUpdate {
                ptr,
                val: rw(0xfeb00),
            }])
            .map_err(|e| e.error),
            Err(Error::NotFound),
        );
    });

    println!("@ iotest role=driver dying=1");
    // Killed mid-run: the hypervisor must reset the device and mask its
    // line before reusing this domain's frames (IO-4).
    // SAFETY: `ud2` raises #UD; with no trap entry registered the
    // hypervisor destroys this domain (TRAP-0c). Nothing runs after it.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

// ---------------------------------------------------------------------------
// The ordinary guest.

fn plain(si: &StartInfo) -> i32 {
    clause("IO-0b", "an ordinary guest has no device", |ck| {
        ck.eq("device_count", si.device_count, 0);
        ck.t(si.dma().is_none(), "no DMA region");
        ck.t(
            si.dma_first_page == 0 && si.dma_machine_base == 0,
            "DMA fields zero",
        );
        ck.eq("io_irq_ack", io::irq_ack(0), Err(Error::PermissionDenied));
        ck.t(
            paging::translate(DEVICE_VA_BASE).is_none(),
            "nothing at DEVICE_VA_BASE",
        );
        // A page of its heap whose L1 exists: the last free page.
        let va = si.page_va(si.stack_first_page - 1);
        let saved = paging::read_entry(va, Level::L1).unwrap_or(0);
        if mmu::update_va_mapping(va, 0, true).is_ok() {
            try_map_devices(ck, va);
            ck.eq("restore", mmu::update_va_mapping(va, saved, true), Ok(()));
        } else {
            ck.t(false, "could not empty a probe page");
        }
    });

    let disk = si.vblk(0);
    clause(
        "IO-5a",
        "virtual disks wired at boot: the frontend side",
        |ck| {
            let Some(v) = disk else {
                ck.t(false, "no disk 0 in start info");
                return;
            };
            ck.eq("vblk_count", si.vblk_count, 1);
            ck.eq("role", v.role, VblkRole::Frontend);
            ck.eq("peer name", v.peer_name, "drv");
            ck.eq("peer id", v.peer.0, 1);
            ck.eq("capacity", v.capacity_sectors, (8 << 20) / 512);
            ck.eq("sector size", v.sector_size, 512);
            ck.eq("extent offset", v.extent_offset, 0);
            ck.eq("device", v.device, 0);
            ck.t(!v.readonly, "writable");
            ck.eq("send to the backend", event::send(v.port), Ok(()));
        },
    );

    // The driver dies (IO-4): its end closes, so send turns wrong_state.
    // (Its death raises no event here: poll every 20 ms, for 20 s at most.)
    let gone = disk.is_some_and(|v| {
        (0..1000).any(|_| {
            event::send(v.port) == Err(Error::WrongState) || {
                wait_ms(20, || false);
                false
            }
        })
    });
    println!("@ iotest role=plain driver_gone={}", u8::from(gone));
    0
}
