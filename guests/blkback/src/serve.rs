//! Serving virtual disks: one loop, driven by events, over every backend
//! entry of the start info (`BLK-*`).
//!
//! Each disk ([`Vdisk`]) waits for its frontend's first event, then maps the
//! ring the frontend granted at reference `index` (`BLK-2`; a failure leaves
//! it waiting, `BLK-2a`). Requests are copied once and validated by
//! `guest_sdk::blkback`; valid reads and writes go to the device through a
//! request slot, writes after a `grant_copy` from the frontend's pages into
//! the slot's DMA buffer, reads followed by a `grant_copy` back. A flush
//! waits until the device has nothing in flight (it stops the device taking
//! new requests meanwhile), then does a virtio flush and only then answers
//! (`BLK-6`).
//!
//! Fairness and containment (`BLK-7`): the disks are taken round-robin, one
//! request each per turn while the device has a free slot, so a flood on one
//! ring does not starve another; a ring with insane indices, or whose
//! frontend is gone (its port no longer connected), is disconnected and its
//! mapping dropped, alone.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use guest_sdk::abi::blk::Status;
use guest_sdk::abi::grant::CopyOp;
use guest_sdk::abi::layout::{VblkInfo, NR_PORTS, VBLK_ROLE_BACKEND};
use guest_sdk::blkback::{
    copy_outcome, plan_copies, Conn, CopyDir, DevOp, Extent, Next, Valid, MAX_COPIES,
};
use guest_sdk::event::{self, Port};
use guest_sdk::ring::RingPage;
use guest_sdk::{paging, println};

use crate::dev::{Disk, Kind};
use crate::hv;

/// Where ring `i` is mapped: in the SDK's mapping region, one page each.
const RING_VA_BASE: u64 = paging::MAP_BASE + 0x10_0000;

use crate::Job;

static FIRED: [AtomicBool; NR_PORTS] = [const { AtomicBool::new(false) }; NR_PORTS];

pub fn on_event(port: Port) {
    if let Some(f) = FIRED.get(port.0 as usize) {
        f.store(true, Ordering::Release);
    }
}

pub fn fired(port: u32) -> bool {
    FIRED
        .get(port as usize)
        .is_some_and(|f| f.swap(false, Ordering::AcqRel))
}

enum State {
    /// No ring yet: waiting for the frontend's event.
    Waiting,
    /// Serving.
    Connected {
        conn: Conn<RingPage>,
        handle: guest_sdk::grant::MapHandle,
    },
    /// Disconnected for good (broken ring, or the frontend is gone).
    Closed,
}

/// One virtual disk served.
pub struct Vdisk {
    info: VblkInfo,
    extent: Extent,
    disk: usize,
    state: State,
    /// A flush waiting for the device to drain.
    flush: Option<Valid>,
    /// A valid request taken from the ring that found no device slot.
    stash: Option<Valid>,
    /// Responses pushed and not yet published.
    unpublished: bool,
    /// Failed connection attempts (only the first is reported: a frontend
    /// sending events with a bad grant cannot flood the console).
    refusals: u32,
}

impl Vdisk {
    fn va(&self, i: usize) -> u64 {
        RING_VA_BASE + i as u64 * 4096
    }

    fn name(&self) -> &str {
        let n = &self.info.peer_name;
        let len = n.iter().position(|&b| b == 0).unwrap_or(n.len());
        core::str::from_utf8(&n[..len]).unwrap_or("?")
    }
}

/// Everything the loop serves.
pub struct Server {
    disks: Vec<Disk<Job>>,
    vdisks: Vec<Vdisk>,
    /// Per device: a flush is waiting, take no new requests.
    draining: Vec<bool>,
    next_turn: usize,
    /// Requests done, for the final report.
    pub served: u64,
    /// `cpu_marks=a,b,...` (benchmarks): the `k`-th flush served reports
    /// the serving CPU per request since the one before as
    /// `blk_cpu_serve_<k-th name>` (`-` for none).
    marks: Vec<alloc::string::String>,
    /// Flushes taken, and `(ticks, blocked ticks, served)` at the last one.
    mark: (usize, u64, u64, u64),
    /// The copy batch's memory, kept between passes (2.5 KiB of elements:
    /// zeroing it on every pass of the loop cost more than the copies).
    spare: Option<alloc::boxed::Box<CopyBatch>>,
}

impl Server {
    /// The disks to serve: every backend entry of the start info whose
    /// device was brought up and whose extent lies inside it.
    pub fn new(si: &guest_sdk::StartInfo, disks: Vec<Disk<Job>>) -> Server {
        let n = usize::try_from(si.vblk_count)
            .unwrap_or(0)
            .min(si.vblks.len());
        let mut vdisks = Vec::new();
        for info in &si.vblks[..n] {
            if info.role != VBLK_ROLE_BACKEND {
                continue;
            }
            let dev = disks.iter().position(|d| d.index == info.device as usize);
            let Some(extent) = Extent::of(info) else {
                println!(
                    "blkback: disk {} of domain {}: extent not whole sectors, not served",
                    info.index, info.peer_domain
                );
                continue;
            };
            let Some(d) = dev.filter(|&d| extent.fits(disks[d].capacity())) else {
                println!("blkback: disk {} of domain {}: no such device or extent past its end, not served", info.index, info.peer_domain);
                continue;
            };
            if disks[d].readonly() && !extent.readonly {
                println!(
                    "blkback: disk {} of domain {}: the device is read-only, not served",
                    info.index, info.peer_domain
                );
                continue;
            }
            vdisks.push(Vdisk {
                info: *info,
                extent,
                disk: d,
                state: State::Waiting,
                flush: None,
                stash: None,
                unpublished: false,
                refusals: 0,
            });
        }
        let draining = alloc::vec![false; disks.len()];
        let marks = si
            .cmdline_value("cpu_marks")
            .map(|m| m.split(',').map(alloc::string::String::from).collect())
            .unwrap_or_default();
        Server {
            disks,
            vdisks,
            draining,
            next_turn: 0,
            served: 0,
            marks,
            mark: (0, 0, 0, 0),
            spare: None,
        }
    }

    /// Whether a device has requests in flight (their completions are due
    /// from outside the machine: see `guests/driverdom`'s loop).
    pub fn device_busy(&self) -> bool {
        self.disks.iter().any(|d| d.in_flight() > 0)
    }

    /// Disks served.
    pub fn vdisks(&self) -> usize {
        self.vdisks.len()
    }

    /// Sets the event handlers and unmasks the ports: the devices'
    /// interrupts and each disk's channel (events sent before now were
    /// held pending and arrive at once).
    pub fn listen(&mut self) {
        for i in 0..self.vdisks.len() {
            // Make sure the L1 table for the ring's address exists, with the
            // entry empty, as `grant_map` requires (GNT-3).
            if let Err(e) = hv::prepare_va(self.vdisks[i].va(i)) {
                let v = &self.vdisks[i];
                println!(
                    "blkback: cannot prepare a ring address ({e}); disk {} of {} not served: give the driver domain max_memory for page tables",
                    v.info.index,
                    v.name()
                );
                self.vdisks[i].state = State::Closed;
            }
        }
        for d in &self.disks {
            event::set_handler(Port(d.irq_port), on_event);
            let _ = event::unmask(Port(d.irq_port));
        }
        for v in &self.vdisks {
            event::set_handler(Port(v.info.port), on_event);
            let _ = event::unmask(Port(v.info.port));
        }
    }

    /// Runs forever (until `stop()` returns true after a pass with nothing
    /// to do).
    pub fn run(&mut self, mut stop: impl FnMut(&Server) -> bool) {
        loop {
            if self.poll() {
                continue;
            }
            if stop(self) {
                return;
            }
            if self.final_checks() {
                continue;
            }
            event::wait();
        }
    }

    /// One pass: the devices' interrupts, new connections, completions,
    /// flushes, new requests (bounded by the devices' free slots), then
    /// every ring's responses published. Whether anything moved. A loop
    /// that also serves something else (`guests/driverdom`) calls this,
    /// then [`Server::final_checks`] before it sleeps.
    pub fn poll(&mut self) -> bool {
        let mut progress = self.interrupts();
        progress |= self.connect();
        progress |= self.completions();
        progress |= self.flushes();
        progress |= self.intake();
        self.publish();
        progress
    }

    fn interrupts(&mut self) -> bool {
        let mut any = false;
        for d in &mut self.disks {
            if fired(d.irq_port) {
                d.ack_interrupt();
                if let Err(e) = hv::irq_ack(d.index) {
                    log::error!("io_irq_ack({}) refused: {e}", d.index);
                }
                any = true;
            }
        }
        any
    }

    fn connect(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.vdisks.len() {
            let v = &mut self.vdisks[i];
            if !fired(v.info.port) {
                continue;
            }
            any = true;
            if !matches!(v.state, State::Waiting) {
                continue;
            }
            let va = v.va(i);
            match hv::map_ring(v.info.peer_domain, v.info.index, va) {
                Ok(handle) => {
                    // SAFETY: `map_ring` just mapped the frontend's granted
                    // page writable at `va` (page-aligned, in the mapping
                    // region where no Rust object lives); it stays mapped
                    // until `hv::unmap` in `close`, which drops the ring
                    // first; it is only accessed through `RingPage`.
                    let page = unsafe { RingPage::new(va as *mut u8) };
                    let Some(page) = page else { continue };
                    v.state = State::Connected {
                        conn: Conn::attach(page, v.extent),
                        handle,
                    };
                    println!(
                        "@ blk-connected frontend={} disk={} sectors={} readonly={}",
                        v.name(),
                        v.info.index,
                        v.extent.capacity,
                        v.extent.readonly
                    );
                }
                Err(e) => {
                    v.refusals += 1;
                    if v.refusals == 1 {
                        println!(
                            "@ blk-refused frontend={} disk={} error={}",
                            v.name(),
                            v.info.index,
                            e.name()
                        );
                    }
                }
            }
        }
        any
    }

    fn close(&mut self, i: usize, why: &str) {
        let v = &mut self.vdisks[i];
        if let State::Connected { handle, .. } = core::mem::replace(&mut v.state, State::Closed) {
            if let Err(e) = hv::unmap(handle) {
                log::error!("grant_unmap of a ring refused: {e}");
            }
        }
        v.flush = None;
        v.stash = None;
        println!(
            "@ blk-disconnected frontend={} disk={} why=\"{why}\"",
            v.name(),
            v.info.index
        );
    }

    /// Answers the device's completions; the data of every completed read
    /// goes back to its frontend in one `grant_copy` batch (up to 64
    /// elements) rather than one call per request.
    fn completions(&mut self) -> bool {
        let mut any = false;
        let mut batch = self
            .spare
            .take()
            .unwrap_or_else(|| alloc::boxed::Box::new(CopyBatch::new()));
        for d in 0..self.disks.len() {
            while let Some((slot, job, ok)) = self.disks[d].poll() {
                let Job::Serve(vi, v) = job else { continue };
                any = true;
                if ok && v.dev_op == DevOp::Read {
                    if !batch.room() {
                        self.flush_copies(&mut batch);
                    }
                    let (_, pa) = self.disks[d].buffer(slot);
                    batch.add(vi, v, self.vdisks[vi].info.peer_domain, pa);
                } else {
                    self.respond(vi, &v, if ok { Status::Ok } else { Status::IoError });
                }
            }
        }
        self.flush_copies(&mut batch);
        self.spare = Some(batch);
        any
    }

    /// Copies a batch of reads' data and answers each with its outcome.
    fn flush_copies(&mut self, batch: &mut CopyBatch) {
        if batch.reqs.is_empty() {
            return;
        }
        let n = batch.n;
        let r = hv::copy_to_grants(&mut batch.ops[..n]);
        let reqs = core::mem::take(&mut batch.reqs);
        for (vi, v, a, b) in reqs {
            let status = copy_outcome(&batch.ops[a..b], r);
            self.respond(vi, &v, status);
        }
        batch.n = 0;
    }

    fn respond(&mut self, vi: usize, v: &Valid, status: Status) {
        self.served += 1;
        let r = match &mut self.vdisks[vi].state {
            State::Connected { conn, .. } => conn.respond(v, status),
            _ => return, // closed meanwhile: the answer has nowhere to go
        };
        self.vdisks[vi].unpublished = true;
        if r.is_err() {
            self.close(vi, "ring broken");
        }
    }

    fn flushes(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.vdisks.len() {
            let Some(v) = self.vdisks[i].flush else {
                continue;
            };
            let d = self.vdisks[i].disk;
            if self.disks[d].in_flight() != 0 {
                continue;
            }
            let ok = self.disks[d].flush();
            self.vdisks[i].flush = None;
            self.respond(i, &v, if ok { Status::Ok } else { Status::IoError });
            self.cpu_rebase();
            any = true;
        }
        for (d, drain) in self.draining.iter_mut().enumerate() {
            *drain = self.vdisks.iter().any(|v| v.disk == d && v.flush.is_some());
        }
        any
    }

    /// Takes requests round-robin, one per disk per turn.
    fn intake(&mut self) -> bool {
        let n = self.vdisks.len();
        let mut any = false;
        loop {
            let mut took = false;
            for k in 0..n {
                let i = (self.next_turn + k) % n;
                took |= self.take_one(i);
            }
            self.next_turn = (self.next_turn + 1) % n.max(1);
            any |= took;
            if !took {
                return any;
            }
        }
    }

    /// One request from disk `i`, if it may take one: `true` if it did.
    fn take_one(&mut self, i: usize) -> bool {
        let d = self.vdisks[i].disk;
        if self.vdisks[i].flush.is_some() || self.draining[d] {
            return false;
        }
        let Some(slot) = self.disks[d].free_slot() else {
            return false;
        };
        let v = match self.vdisks[i].stash.take() {
            Some(v) => v,
            None => {
                let State::Connected { conn, .. } = &mut self.vdisks[i].state else {
                    return false;
                };
                match conn.take() {
                    Ok(Next::Idle) => return false,
                    Ok(Next::Refused(_)) => {
                        self.vdisks[i].unpublished = true;
                        self.served += 1;
                        return true;
                    }
                    Ok(Next::Serve(v)) => v,
                    Err(e) => {
                        let guest_sdk::blkback::Disconnect::Ring(e) = e;
                        log::warn!("disk {i}: {e:?}");
                        self.close(i, "ring indices insane (RING-5)");
                        return true;
                    }
                }
            }
        };
        let kind = match v.dev_op {
            DevOp::Flush => {
                self.cpu_mark();
                self.vdisks[i].flush = Some(v);
                self.draining[d] = true;
                return true;
            }
            DevOp::Read => Kind::Read,
            DevOp::Write => {
                let (_, pa) = self.disks[d].buffer(slot);
                let status = copy(
                    &v,
                    self.vdisks[i].info.peer_domain,
                    pa,
                    CopyDir::FromFrontend,
                );
                if status != Status::Ok {
                    self.respond(i, &v, status);
                    return true;
                }
                Kind::Write
            }
        };
        let bytes = usize::try_from(v.bytes()).unwrap_or(0);
        if self.disks[d]
            .submit(slot, kind, v.device_sector, bytes, Job::Serve(i, v))
            .is_err()
        {
            // The queue is full after all: keep it for the next turn.
            self.vdisks[i].stash = Some(v);
            return false;
        }
        true
    }

    /// A flush was taken: with `cpu_marks=`, reports this domain's CPU
    /// work (time not blocked in `event::wait`) per request served since
    /// the previous flush.
    fn cpu_mark(&mut self) {
        if self.marks.is_empty() {
            return;
        }
        let (now, blocked) = (guest_sdk::time::rdtsc(), guest_sdk::event::blocked_ticks());
        let (k, t0, b0, s0) = self.mark;
        let n = self.served.saturating_sub(s0);
        if let Some(name) = self.marks.get(k).filter(|m| m.as_str() != "-") {
            if k > 0 && n > 0 {
                let cpu = now
                    .saturating_sub(t0)
                    .saturating_sub(blocked.saturating_sub(b0))
                    / n;
                println!(
                    "@ bench name=blk_cpu_serve_{name} value={cpu} min={cpu} mean={cpu} iters={n} unit=ticks"
                );
            }
        }
        self.mark = (k + 1, now, blocked, self.served);
    }

    /// A flush was answered: the next interval starts now (the device's
    /// flush, a busy wait in the driver, is no request's CPU work).
    fn cpu_rebase(&mut self) {
        if !self.marks.is_empty() {
            self.mark = (
                self.mark.0,
                guest_sdk::time::rdtsc(),
                guest_sdk::event::blocked_ticks(),
                self.served,
            );
        }
    }

    fn publish(&mut self) {
        for i in 0..self.vdisks.len() {
            if !core::mem::take(&mut self.vdisks[i].unpublished) {
                continue;
            }
            let State::Connected { conn, .. } = &mut self.vdisks[i].state else {
                continue;
            };
            match conn.publish() {
                Ok(true) => {
                    if event::send(Port(self.vdisks[i].info.port)).is_err() {
                        // Our port is no longer connected: the frontend
                        // closed it or died.
                        self.close(i, "frontend gone (port unbound)");
                    }
                }
                Ok(false) => {}
                Err(_) => self.close(i, "ring broken"),
            }
        }
    }

    /// `true` if a ring has requests after all (RING-3): call before
    /// sleeping, after a [`Server::poll`] that found nothing to do.
    pub fn final_checks(&mut self) -> bool {
        let mut again = false;
        for i in 0..self.vdisks.len() {
            if self.vdisks[i].flush.is_some() || self.vdisks[i].stash.is_some() {
                continue;
            }
            let State::Connected { conn, .. } = &mut self.vdisks[i].state else {
                continue;
            };
            match conn.final_check() {
                Ok(true) => again = true,
                Ok(false) => {}
                Err(_) => {
                    self.close(i, "ring indices insane (RING-5)");
                    again = true;
                }
            }
        }
        again
    }
}

/// Reads whose data waits to be copied to their frontends in one call.
struct CopyBatch {
    ops: [CopyOp; COPY_BATCH],
    n: usize,
    /// `(disk, request, first op, end op)`.
    reqs: Vec<(usize, Valid, usize, usize)>,
}

const COPY_BATCH: usize = guest_sdk::abi::grant::COPY_BATCH_MAX as usize;

impl CopyBatch {
    fn new() -> Self {
        CopyBatch {
            ops: [CopyOp::default(); COPY_BATCH],
            n: 0,
            reqs: Vec::new(),
        }
    }

    /// Whether one more request (at most [`MAX_COPIES`] elements) fits.
    fn room(&self) -> bool {
        self.n + MAX_COPIES <= COPY_BATCH
    }

    fn add(&mut self, vi: usize, v: Valid, frontend: u16, pa: u64) {
        let mut one = [CopyOp::default(); MAX_COPIES];
        let k = plan_copies(&v, frontend, pa, CopyDir::ToFrontend, &mut one);
        self.ops[self.n..self.n + k].copy_from_slice(&one[..k]);
        self.reqs.push((vi, v, self.n, self.n + k));
        self.n += k;
    }
}

/// Copies a request's data between the frontend's grants and the DMA
/// buffer at machine address `pa`; the request's status.
fn copy(v: &Valid, frontend: u16, pa: u64, dir: CopyDir) -> Status {
    let mut ops = [CopyOp::default(); MAX_COPIES];
    let n = plan_copies(v, frontend, pa, dir, &mut ops);
    let r = match dir {
        CopyDir::ToFrontend => hv::copy_to_grants(&mut ops[..n]),
        CopyDir::FromFrontend => hv::copy_into_dma(&mut ops[..n]),
    };
    copy_outcome(&ops[..n], r)
}
