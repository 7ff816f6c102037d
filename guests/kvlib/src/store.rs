//! The durable store: an append-only log of checksummed batches.
//!
//! Disk layout (512-byte sectors):
//!
//! - sectors 0 and 1: two copies of the superblock; the valid copy with the
//!   highest generation wins. It names the active region, its epoch and the
//!   sequence number of the region's first record.
//! - two equal regions after them; the log lives in the active one.
//!
//! A batch starts on a sector boundary: a 32-byte header (magic, epoch,
//! first sequence number, record count, body length, CRC-32 of header and
//! body), then its records (kind, key length, value length, key, value; the
//! sequence number of record i is first + i). Every batch write ends with a
//! zeroed sector after its last one, so the scan after the newest batch
//! always meets a zero header. The scan at open accepts a batch only if its
//! magic, epoch, first sequence number (the expected next one), length and
//! CRC all check, and stops at the first one that does not: that is the torn
//! or corrupt tail, dropped; the next batch is written over it.
//!
//! Compaction writes the live records into the other region under a new
//! epoch, flushes, then writes the superblock copy not holding the current
//! generation and flushes again. A crash before that last write leaves the
//! old superblock naming the untouched old region; a torn superblock fails
//! its CRC and the other copy wins. Nothing acknowledged is lost at any point.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

/// Bytes in a sector of the device.
pub const SECTOR: usize = 512;
/// Longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// Largest body of one batch (a group commit is split beyond it).
pub const MAX_BATCH_BODY: usize = 512 * 1024;

const SUPER_MAGIC: u64 = u64::from_le_bytes(*b"TKVSUPR1");
const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"TKVB");
const HEADER: usize = 32;
const RECORD_HEADER: usize = 7;
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// Regions smaller than this are refused at format time.
const MIN_REGION_SECTORS: u64 = 16;

/// A block device: whole sectors, written in order, durable after `flush`.
pub trait BlockDevice {
    /// Sectors on the device.
    fn sectors(&self) -> u64;
    /// Reads `buf.len() / SECTOR` sectors from `sector`.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error>;
    /// Writes `buf.len() / SECTOR` sectors at `sector`.
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> Result<(), Error>;
}

/// What can go wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The device reported an error.
    Io,
    /// The device is too small to hold a store.
    TooSmall,
    /// The live data does not fit in a region even after compaction.
    Full,
    /// Key empty or longer than [`MAX_KEY`].
    BadKey,
    /// Value longer than [`MAX_VALUE`].
    ValueTooLarge,
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Remove `key` (a tombstone).
    Delete(Vec<u8>),
}

impl Op {
    fn key(&self) -> &[u8] {
        match self {
            Op::Put(k, _) | Op::Delete(k) => k,
        }
    }
    fn encoded_len(&self) -> usize {
        RECORD_HEADER
            + self.key().len()
            + match self {
                Op::Put(_, v) => v.len(),
                Op::Delete(_) => 0,
            }
    }
}

/// Where a live value lives: a byte offset in the active region and a length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    offset: u64,
    len: u32,
    /// Bytes of the whole record (for the dead-space count).
    record: u32,
}

/// What the store reports in `/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live keys.
    pub keys: u64,
    /// Bytes of live values.
    pub value_bytes: u64,
    /// Bytes of the log in the active region (up to its tail).
    pub log_bytes: u64,
    /// Bytes of the log no longer live (overwritten or deleted records).
    pub dead_bytes: u64,
    /// Batches written (group commits) since open.
    pub batches: u64,
    /// Records written since open.
    pub records: u64,
    /// Flushes since open.
    pub flushes: u64,
    /// Compactions since open.
    pub compactions: u64,
    /// Whether the scan at open stopped on a batch that did not check (a
    /// torn or corrupt tail, dropped) rather than on a zero header.
    pub dropped_tail: bool,
    /// Records replayed at open.
    pub recovered_records: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Super {
    generation: u64,
    active: u8,
    epoch: u64,
    base_seq: u64,
    region_sectors: u64,
}

impl Super {
    fn encode(&self) -> [u8; SECTOR] {
        let mut s = [0u8; SECTOR];
        s[0..8].copy_from_slice(&SUPER_MAGIC.to_le_bytes());
        s[8..16].copy_from_slice(&self.generation.to_le_bytes());
        s[16] = self.active;
        s[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        s[32..40].copy_from_slice(&self.base_seq.to_le_bytes());
        s[40..48].copy_from_slice(&self.region_sectors.to_le_bytes());
        let crc = crc32fast::hash(&s[0..48]);
        s[48..52].copy_from_slice(&crc.to_le_bytes());
        s
    }
    fn decode(s: &[u8]) -> Option<Super> {
        let u64at = |i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or([0; 8]));
        if u64at(0) != SUPER_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(s[48..52].try_into().ok()?);
        if crc != crc32fast::hash(&s[0..48]) || s[16] > 1 {
            return None;
        }
        Some(Super {
            generation: u64at(8),
            active: s[16],
            epoch: u64at(24),
            base_seq: u64at(32),
            region_sectors: u64at(40),
        })
    }
}

/// The store.
pub struct Store<D: BlockDevice> {
    dev: D,
    sb: Super,
    index: BTreeMap<Vec<u8>, Entry>,
    /// Byte offset of the tail (next batch) in the active region; a
    /// multiple of [`SECTOR`].
    tail: u64,
    next_seq: u64,
    staged: Vec<Op>,
    stats: StoreStats,
}

fn align_up(x: u64) -> u64 {
    x.div_ceil(SECTOR as u64) * SECTOR as u64
}

impl<D: BlockDevice> Store<D> {
    /// Opens the store on `dev`, formatting it if no valid superblock is
    /// found, and replays the log.
    pub fn open(mut dev: D) -> Result<Self, Error> {
        let total = dev.sectors();
        if total < 2 + 2 * MIN_REGION_SECTORS {
            return Err(Error::TooSmall);
        }
        let mut buf = vec![0u8; 2 * SECTOR];
        dev.read(0, &mut buf)?;
        let a = Super::decode(&buf[..SECTOR]);
        let b = Super::decode(&buf[SECTOR..]);
        let region_sectors = (total - 2) / 2;
        let sb = match (a, b) {
            (Some(a), Some(b)) => Some(if a.generation >= b.generation { a } else { b }),
            (a, b) => a.or(b),
        };
        let sb = match sb {
            Some(sb) if sb.region_sectors <= region_sectors => sb,
            _ => {
                // Fresh (or foreign) disk: an empty log in region 0.
                let sb = Super {
                    generation: 1,
                    active: 0,
                    epoch: 1,
                    base_seq: 1,
                    region_sectors,
                };
                dev.write(2, &[0u8; SECTOR])?;
                dev.flush()?;
                dev.write(1, &sb.encode())?;
                dev.write(
                    0,
                    &Super {
                        generation: 0,
                        ..sb
                    }
                    .encode(),
                )?;
                dev.flush()?;
                sb
            }
        };
        let mut store = Store {
            dev,
            sb,
            index: BTreeMap::new(),
            tail: 0,
            next_seq: sb.base_seq,
            staged: Vec::new(),
            stats: StoreStats::default(),
        };
        store.replay()?;
        Ok(store)
    }

    /// Gives the device back.
    pub fn into_device(self) -> D {
        self.dev
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutably (tests clear [`MemDisk::writes`] through it).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    fn region_base(&self, region: u8) -> u64 {
        2 + region as u64 * self.sb.region_sectors
    }

    fn region_bytes(&self) -> u64 {
        self.sb.region_sectors * SECTOR as u64
    }

    /// Reads `out.len()` bytes at byte `offset` of region `region`.
    fn read_bytes(&mut self, region: u8, offset: u64, out: &mut [u8]) -> Result<(), Error> {
        if out.is_empty() {
            return Ok(());
        }
        let first = offset / SECTOR as u64;
        let last = (offset + out.len() as u64 - 1) / SECTOR as u64;
        let mut buf = vec![0u8; ((last - first + 1) as usize) * SECTOR];
        let base = self.region_base(region);
        self.dev.read(base + first, &mut buf)?;
        let skip = (offset % SECTOR as u64) as usize;
        out.copy_from_slice(&buf[skip..skip + out.len()]);
        Ok(())
    }

    fn replay(&mut self) -> Result<(), Error> {
        let region = self.sb.active;
        let limit = self.region_bytes();
        let mut pos = 0u64;
        let mut header = [0u8; HEADER];
        loop {
            if pos + SECTOR as u64 > limit {
                break;
            }
            self.read_bytes(region, pos, &mut header)?;
            let Some((count, body_len)) = self.check_header(&header, pos, limit) else {
                self.stats.dropped_tail = header.iter().any(|&b| b != 0);
                break;
            };
            let mut body = vec![0u8; body_len];
            self.read_bytes(region, pos + HEADER as u64, &mut body)?;
            let mut h = crc32fast::Hasher::new();
            h.update(&header[..28]);
            h.update(&body);
            let crc = u32::from_le_bytes(header[28..32].try_into().unwrap_or([0; 4]));
            if h.finalize() != crc {
                self.stats.dropped_tail = true;
                break;
            }
            let Some(records) = parse_records(&body, count) else {
                self.stats.dropped_tail = true;
                break;
            };
            for (kind, off, klen, vlen) in records {
                let key = body[off..off + klen].to_vec();
                let record = (RECORD_HEADER + klen + vlen) as u32;
                let value_off = pos + (HEADER + off + klen) as u64;
                self.apply(kind, key, value_off, vlen as u32, record);
                self.stats.recovered_records += 1;
            }
            self.next_seq += count as u64;
            pos = align_up(pos + (HEADER + body_len) as u64);
        }
        self.tail = pos;
        Ok(())
    }

    /// Checks a batch header; returns (records, body length).
    fn check_header(&self, h: &[u8; HEADER], pos: u64, limit: u64) -> Option<(usize, usize)> {
        let magic = u32::from_le_bytes(h[0..4].try_into().ok()?);
        let epoch = u64::from_le_bytes(h[4..12].try_into().ok()?);
        let first = u64::from_le_bytes(h[12..20].try_into().ok()?);
        let count = u32::from_le_bytes(h[20..24].try_into().ok()?) as usize;
        let body_len = u32::from_le_bytes(h[24..28].try_into().ok()?) as usize;
        let ok = magic == BATCH_MAGIC
            && epoch == self.sb.epoch
            && first == self.next_seq
            && count > 0
            && body_len <= MAX_BATCH_BODY
            && count * RECORD_HEADER <= body_len
            && pos + align_up((HEADER + body_len) as u64) <= limit;
        ok.then_some((count, body_len))
    }

    fn apply(&mut self, kind: u8, key: Vec<u8>, value_off: u64, vlen: u32, record: u32) {
        self.stats.log_bytes = self.stats.log_bytes.max(value_off + vlen as u64);
        if kind == KIND_PUT {
            let e = Entry {
                offset: value_off,
                len: vlen,
                record,
            };
            if let Some(old) = self.index.insert(key, e) {
                self.stats.dead_bytes += old.record as u64;
            }
        } else {
            // A tombstone is dead from the moment it is written.
            self.stats.dead_bytes += record as u64;
            if let Some(old) = self.index.remove(&key) {
                self.stats.dead_bytes += old.record as u64;
            }
        }
    }

    /// The value of `key`, as of the last commit.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let Some(e) = self.index.get(key).copied() else {
            return Ok(None);
        };
        let mut v = vec![0u8; e.len as usize];
        self.read_bytes(self.sb.active, e.offset, &mut v)?;
        Ok(Some(v))
    }

    /// Whether `key` is live (as of the last commit).
    pub fn contains(&self, key: &[u8]) -> bool {
        self.index.contains_key(key)
    }

    /// Up to `limit` live keys starting with `prefix`, in order.
    pub fn keys_with_prefix(&self, prefix: &[u8], limit: usize) -> Vec<Vec<u8>> {
        self.index
            .range::<[u8], _>((
                core::ops::Bound::Included(prefix),
                core::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The counters.
    pub fn stats(&self) -> StoreStats {
        let mut s = self.stats;
        s.keys = self.index.len() as u64;
        s.value_bytes = self.index.values().map(|e| e.len as u64).sum();
        s.log_bytes = self.tail;
        s
    }

    /// Stages a write for the next [`Store::commit`]; not visible and not
    /// durable before it.
    pub fn stage(&mut self, op: Op) -> Result<(), Error> {
        let key = op.key();
        if key.is_empty() || key.len() > MAX_KEY {
            return Err(Error::BadKey);
        }
        if let Op::Put(_, v) = &op {
            if v.len() > MAX_VALUE {
                return Err(Error::ValueTooLarge);
            }
        }
        self.staged.push(op);
        Ok(())
    }

    /// Staged ops not yet committed.
    pub fn staged(&self) -> usize {
        self.staged.len()
    }

    /// Writes every staged op in as few batches as fit (one for up to
    /// [`MAX_BATCH_BODY`] bytes) and flushes once: after `Ok`, all of them
    /// are durable and visible. On `Err` none is acknowledged (some may
    /// still be found after a restart, as unacknowledged writes may).
    pub fn commit(&mut self) -> Result<usize, Error> {
        let ops = core::mem::take(&mut self.staged);
        if ops.is_empty() {
            return Ok(0);
        }
        let n = ops.len();
        let mut batches = Vec::new();
        let mut need = SECTOR as u64;
        let mut start = 0;
        while start < ops.len() {
            let mut end = start;
            let mut body = 0;
            while end < ops.len()
                && (end == start || body + ops[end].encoded_len() <= MAX_BATCH_BODY)
            {
                body += ops[end].encoded_len();
                end += 1;
            }
            need += align_up((HEADER + body) as u64);
            batches.push(start..end);
            start = end;
        }
        // All of it fits, or none of it is written. Writes that add data
        // leave a reserve, so that deletes (which make room) always fit.
        if ops.iter().any(|op| matches!(op, Op::Put(..))) {
            need += self.delete_reserve();
        }
        if self.tail + need > self.region_bytes() {
            self.compact()?;
            if self.tail + need > self.region_bytes() {
                return Err(Error::Full);
            }
        }
        for range in batches {
            self.write_batch(&ops[range])?;
        }
        self.dev.flush()?;
        self.stats.flushes += 1;
        // Compact when the dead share passes half of a log of some size.
        // The commit is durable already: a compaction that cannot finish
        // changes nothing (the old region stays active) and is retried later.
        let s = self.stats();
        if s.dead_bytes * 2 > s.log_bytes && s.log_bytes * 4 > self.region_bytes() {
            let _ = self.compact();
        }
        Ok(n)
    }

    /// Room kept free of puts for deletes: an eighth of a region, at most
    /// 16 KiB (a commit of 60 deletes of the longest keys).
    fn delete_reserve(&self) -> u64 {
        (self.region_bytes() / 8).min(16 * 1024)
    }

    fn encode_batch(&self, epoch: u64, first: u64, ops: &[Op]) -> Vec<u8> {
        let body: usize = ops.iter().map(Op::encoded_len).sum();
        let len = align_up((HEADER + body) as u64) as usize + SECTOR;
        let mut buf = vec![0u8; len];
        buf[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        buf[4..12].copy_from_slice(&epoch.to_le_bytes());
        buf[12..20].copy_from_slice(&first.to_le_bytes());
        buf[20..24].copy_from_slice(&(ops.len() as u32).to_le_bytes());
        buf[24..28].copy_from_slice(&(body as u32).to_le_bytes());
        let mut p = HEADER;
        for op in ops {
            let (kind, key, value): (u8, &[u8], &[u8]) = match op {
                Op::Put(k, v) => (KIND_PUT, k, v),
                Op::Delete(k) => (KIND_DELETE, k, &[]),
            };
            buf[p] = kind;
            buf[p + 1..p + 3].copy_from_slice(&(key.len() as u16).to_le_bytes());
            buf[p + 3..p + 7].copy_from_slice(&(value.len() as u32).to_le_bytes());
            p += RECORD_HEADER;
            buf[p..p + key.len()].copy_from_slice(key);
            p += key.len();
            buf[p..p + value.len()].copy_from_slice(value);
            p += value.len();
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&buf[..28]);
        h.update(&buf[HEADER..HEADER + body]);
        let crc = h.finalize();
        buf[28..32].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Writes one batch at the tail (with its trailing zero sector),
    /// compacting first if it does not fit; updates the index.
    fn write_batch(&mut self, ops: &[Op]) -> Result<(), Error> {
        let body: usize = ops.iter().map(Op::encoded_len).sum();
        let need = align_up((HEADER + body) as u64) + SECTOR as u64;
        if self.tail + need > self.region_bytes() {
            self.compact()?;
            if self.tail + need > self.region_bytes() {
                return Err(Error::Full);
            }
        }
        let buf = self.encode_batch(self.sb.epoch, self.next_seq, ops);
        let sector = self.region_base(self.sb.active) + self.tail / SECTOR as u64;
        self.dev.write(sector, &buf)?;
        let pos = self.tail;
        let mut off = HEADER;
        for op in ops {
            let klen = op.key().len();
            let (kind, vlen) = match op {
                Op::Put(_, v) => (KIND_PUT, v.len()),
                Op::Delete(_) => (KIND_DELETE, 0),
            };
            let value_off = pos + (off + RECORD_HEADER + klen) as u64;
            self.apply(
                kind,
                op.key().to_vec(),
                value_off,
                vlen as u32,
                (RECORD_HEADER + klen + vlen) as u32,
            );
            off += op.encoded_len();
        }
        self.next_seq += ops.len() as u64;
        self.tail = align_up(pos + (HEADER + body) as u64);
        self.stats.batches += 1;
        self.stats.records += ops.len() as u64;
        Ok(())
    }

    /// Copies the live records into the other region under a new epoch,
    /// then switches the superblock (see the module comment for why a crash
    /// at any point loses nothing acknowledged).
    pub fn compact(&mut self) -> Result<(), Error> {
        let old = self.sb.active;
        let new = 1 - old;
        let epoch = self.sb.epoch + 1;
        let base_seq = self.next_seq;
        let keys: Vec<(Vec<u8>, Entry)> = self.index.iter().map(|(k, e)| (k.clone(), *e)).collect();
        let mut new_index = BTreeMap::new();
        let mut pos = 0u64;
        let mut seq = base_seq;
        let region_bytes = self.region_bytes();
        let new_base = self.region_base(new);
        let mut i = 0;
        while i < keys.len() {
            let mut ops = Vec::new();
            let mut body = 0;
            while i < keys.len() {
                let (k, e) = &keys[i];
                let len = RECORD_HEADER + k.len() + e.len as usize;
                if !ops.is_empty() && body + len > MAX_BATCH_BODY {
                    break;
                }
                let mut v = vec![0u8; e.len as usize];
                self.read_bytes(old, e.offset, &mut v)?;
                ops.push(Op::Put(k.clone(), v));
                body += len;
                i += 1;
            }
            let need = align_up((HEADER + body) as u64) + SECTOR as u64;
            if pos + need > region_bytes {
                return Err(Error::Full);
            }
            let buf = self.encode_batch(epoch, seq, &ops);
            self.dev.write(new_base + pos / SECTOR as u64, &buf)?;
            let mut off = HEADER;
            for op in &ops {
                if let Op::Put(k, v) = op {
                    let e = Entry {
                        offset: pos + (off + RECORD_HEADER + k.len()) as u64,
                        len: v.len() as u32,
                        record: op.encoded_len() as u32,
                    };
                    new_index.insert(k.clone(), e);
                }
                off += op.encoded_len();
            }
            seq += ops.len() as u64;
            pos = align_up(pos + (HEADER + body) as u64);
        }
        if keys.is_empty() {
            self.dev.write(new_base, &[0u8; SECTOR])?;
        }
        self.dev.flush()?;
        let sb = Super {
            generation: self.sb.generation + 1,
            active: new,
            epoch,
            base_seq,
            region_sectors: self.sb.region_sectors,
        };
        // The copy not holding the current generation: a torn write of it
        // leaves the current one intact.
        let slot = sb.generation % 2;
        self.dev.write(slot, &sb.encode())?;
        self.dev.flush()?;
        self.stats.flushes += 2;
        self.sb = sb;
        self.index = new_index;
        self.tail = pos;
        self.next_seq = seq;
        self.stats.dead_bytes = 0;
        self.stats.compactions += 1;
        Ok(())
    }
}

/// Parses `count` records filling `body` exactly: (kind, key offset, key
/// length, value length) each.
fn parse_records(body: &[u8], count: usize) -> Option<Vec<(u8, usize, usize, usize)>> {
    let mut out = Vec::with_capacity(count);
    let mut p = 0;
    for _ in 0..count {
        let h = body.get(p..p + RECORD_HEADER)?;
        let kind = h[0];
        let klen = u16::from_le_bytes([h[1], h[2]]) as usize;
        let vlen = u32::from_le_bytes([h[3], h[4], h[5], h[6]]) as usize;
        let ok = match kind {
            KIND_PUT => vlen <= MAX_VALUE,
            KIND_DELETE => vlen == 0,
            _ => false,
        };
        if !ok || klen == 0 || klen > MAX_KEY {
            return None;
        }
        let end = p.checked_add(RECORD_HEADER + klen + vlen)?;
        if end > body.len() {
            return None;
        }
        out.push((kind, p + RECORD_HEADER, klen, vlen));
        p = end;
    }
    (p == body.len()).then_some(out)
}

/// A block device in memory: the service's RAM disk (a guest given no
/// vblk, the std build) and the tests'. Made with [`MemDisk::recording`],
/// it also keeps a copy of every write, so a test can "crash" at any byte of
/// what was written since the last flush; made with [`MemDisk::new`] it
/// keeps nothing but the bytes, so a long-running service's memory stays
/// the disk's size.
#[derive(Clone, Debug)]
pub struct MemDisk {
    /// The bytes.
    pub data: Vec<u8>,
    /// With recording on: every write since the device was made (or the
    /// list was cleared), byte offset and data, in order. Always empty
    /// with recording off.
    pub writes: Vec<(u64, Vec<u8>)>,
    record: bool,
}

impl MemDisk {
    /// A zeroed disk of `sectors` sectors that keeps no record of writes.
    pub fn new(sectors: u64) -> Self {
        MemDisk {
            data: vec![0; sectors as usize * SECTOR],
            writes: Vec::new(),
            record: false,
        }
    }

    /// A zeroed disk of `sectors` sectors that records every write in
    /// [`MemDisk::writes`] (the crash tests; memory grows with every write
    /// until the list is cleared).
    pub fn recording(sectors: u64) -> Self {
        MemDisk {
            record: true,
            ..MemDisk::new(sectors)
        }
    }

    /// Whether writes are recorded.
    pub fn is_recording(&self) -> bool {
        self.record
    }

    /// Turns the record on or off; off also drops what was recorded.
    pub fn set_recording(&mut self, on: bool) {
        self.record = on;
        if !on {
            self.writes = Vec::new();
        }
    }
}

impl BlockDevice for MemDisk {
    fn sectors(&self) -> u64 {
        (self.data.len() / SECTOR) as u64
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        let s = sector as usize * SECTOR;
        let src = self.data.get(s..s + buf.len()).ok_or(Error::Io)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        let s = sector as usize * SECTOR;
        let dst = self.data.get_mut(s..s + buf.len()).ok_or(Error::Io)?;
        dst.copy_from_slice(buf);
        if self.record {
            self.writes.push((s as u64, buf.to_vec()));
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
}
