//! The read cache (`kvlib::cache`): coherent with every write (and so with
//! the store's compaction) under a model, bounded, write-through (the
//! device sees exactly the writes it saw without it), and it spares device
//! reads on repeated GETs.

use std::collections::BTreeMap;

use kvlib::cache::{CachedDevice, PAGE};
use kvlib::store::{BlockDevice, Error, MemDisk, Op, Store, SECTOR};
use proptest::prelude::*;

/// A RAM disk that counts reads and can be told to fail its writes
/// (after changing part of what they cover, as a real device may).
#[derive(Clone)]
struct Probe {
    disk: MemDisk,
    reads: u64,
    fail_writes: bool,
}

impl Probe {
    fn new(sectors: u64) -> Self {
        Probe {
            disk: MemDisk::recording(sectors),
            reads: 0,
            fail_writes: false,
        }
    }
}

impl BlockDevice for Probe {
    fn sectors(&self) -> u64 {
        self.disk.sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.reads += 1;
        self.disk.read(sector, buf)
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        if self.fail_writes {
            // Half of it lands, then the device reports an error.
            let half = (buf.len() / SECTOR / 2) * SECTOR;
            if half > 0 {
                self.disk.write(sector, &buf[..half])?;
            }
            return Err(Error::Io);
        }
        self.disk.write(sector, buf)
    }
    fn flush(&mut self) -> Result<(), Error> {
        self.disk.flush()
    }
}

/// Every cached page holds exactly the device's bytes, and the cache holds
/// no more pages than its capacity.
fn check_coherent(c: &CachedDevice<Probe>) {
    assert!(c.cached_pages() <= c.capacity_pages());
    assert!(c.cached_bytes() <= c.capacity_pages() * PAGE);
    for (sector, data) in c.cached() {
        let s = sector as usize * SECTOR;
        assert!(
            data == &c.inner().disk.data[s..s + data.len()],
            "page at sector {sector} differs from the device"
        );
    }
}

#[derive(Debug, Clone)]
enum DevOp {
    Read(u64, u64),
    Write(u64, u64, u8),
    FailingWrite(u64, u64, u8),
    Flush,
}

fn dev_op(sectors: u64) -> impl Strategy<Value = DevOp> {
    let span = (0..sectors, 1u64..40);
    prop_oneof![
        4 => span.clone().prop_map(|(s, n)| DevOp::Read(s, n)),
        3 => (span.clone(), any::<u8>()).prop_map(|((s, n), b)| DevOp::Write(s, n, b)),
        1 => (span, any::<u8>()).prop_map(|((s, n), b)| DevOp::FailingWrite(s, n, b)),
        1 => Just(DevOp::Flush),
    ]
}

fn store_op() -> impl Strategy<Value = Op> {
    let key = (0u8..12).prop_map(|k| format!("key-{k}").into_bytes());
    prop_oneof![
        3 => (key.clone(), 0usize..3000, any::<u8>()).prop_map(|(k, n, b)| Op::Put(k, vec![b; n])),
        1 => key.prop_map(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Against a plain disk given the same operations: every read returns
    /// the same bytes, every write leaves the same device contents (the
    /// cache is write-through and adds no write), every failed write fails
    /// alike; the cache stays coherent and within its bound throughout.
    #[test]
    fn cache_matches_an_uncached_disk(
        cap_kib in 0u64..40,
        sectors in 60u64..200,
        ops in proptest::collection::vec(dev_op(200), 1..80),
    ) {
        let mut cached = CachedDevice::new(Probe::new(sectors), cap_kib);
        let mut plain = Probe::new(sectors);
        for op in ops {
            match op {
                DevOp::Read(s, n) => {
                    let mut a = vec![0u8; n as usize * SECTOR];
                    let mut b = a.clone();
                    let ra = cached.read(s, &mut a);
                    let rb = plain.read(s, &mut b);
                    prop_assert_eq!(ra, rb);
                    prop_assert!(rb.is_err() || a == b, "read {} +{} differs", s, n);
                }
                DevOp::Write(s, n, byte) | DevOp::FailingWrite(s, n, byte) => {
                    let fail = matches!(op, DevOp::FailingWrite(..));
                    cached.inner_mut().fail_writes = fail;
                    plain.fail_writes = fail;
                    let buf = vec![byte; n as usize * SECTOR];
                    prop_assert_eq!(cached.write(s, &buf), plain.write(s, &buf));
                    cached.inner_mut().fail_writes = false;
                    plain.fail_writes = false;
                }
                DevOp::Flush => prop_assert_eq!(cached.flush(), plain.flush()),
            }
            prop_assert!(cached.inner().disk.data == plain.disk.data, "device contents differ");
            prop_assert!(cached.inner().disk.writes == plain.disk.writes, "device writes differ");
            check_coherent(&cached);
        }
    }

    /// The store on a small cache over a small disk (so compaction runs
    /// often): after every commit it holds exactly the model, the cache
    /// agrees with the device, and the device holds the same bytes as the
    /// same history on an uncached store (the on-disk format and the writes
    /// are untouched); reopened without a cache it holds the model too.
    #[test]
    fn store_on_the_cache_matches_a_model_through_compactions(
        commits in proptest::collection::vec(proptest::collection::vec(store_op(), 1..5), 1..40),
    ) {
        let sectors = 2 + 2 * 64;
        let mut store = Store::open(CachedDevice::new(Probe::new(sectors), 16)).unwrap();
        let mut plain = Store::open(Probe::new(sectors)).unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for ops in &commits {
            for op in ops {
                store.stage(op.clone()).unwrap();
                plain.stage(op.clone()).unwrap();
            }
            let result = store.commit();
            prop_assert_eq!(result, plain.commit());
            // A refused commit (Full) writes nothing and acknowledges nothing.
            if result.is_ok() {
                for op in ops {
                    match op {
                        Op::Put(k, v) => { model.insert(k.clone(), v.clone()); }
                        Op::Delete(k) => { model.remove(k); }
                    }
                }
            }
            for k in 0u8..12 {
                let key = format!("key-{k}").into_bytes();
                let got = store.get(&key).unwrap();
                prop_assert!(got.as_ref() == model.get(&key), "key-{} differs from the model", k);
            }
            check_coherent(store.device());
            prop_assert!(store.device().inner().disk.data == plain.device().disk.data, "device contents differ");
            prop_assert_eq!(store.stats().compactions, plain.stats().compactions);
        }
        let disk = store.into_device().into_inner().disk;
        let mut reopened = Store::open(disk).unwrap();
        for k in 0u8..12 {
            let key = format!("key-{k}").into_bytes();
            let got = reopened.get(&key).unwrap();
            prop_assert!(got.as_ref() == model.get(&key), "reopened key-{} differs", k);
        }
    }
}

/// Overwrites and deletes of cached values, and compactions that move every
/// live value to the other region, are seen by the next GET; the test
/// checks compaction did run.
#[test]
fn gets_see_overwrites_deletes_and_compactions() {
    let mut store = Store::open(CachedDevice::new(Probe::new(2 + 2 * 64), 64)).unwrap();
    let mut model = BTreeMap::new();
    for round in 0u32..200 {
        let key = format!("k{}", round % 7).into_bytes();
        let value = format!("value {round}")
            .repeat(1 + (round as usize % 50))
            .into_bytes();
        if round % 11 == 10 {
            store.stage(Op::Delete(key.clone())).unwrap();
            model.remove(&key);
        } else {
            store.stage(Op::Put(key.clone(), value.clone())).unwrap();
            model.insert(key.clone(), value);
        }
        store.commit().unwrap();
        // Read every key (so all are cached) before the next write.
        for k in 0..7 {
            let key = format!("k{k}").into_bytes();
            assert_eq!(
                store.get(&key).unwrap(),
                model.get(&key).cloned(),
                "round {round}"
            );
        }
        check_coherent(store.device());
    }
    assert!(store.stats().compactions >= 3, "{:?}", store.stats());
    assert!(store.device().stats().hits > 0);
}

/// The point of it: a repeated GET costs no device read.
#[test]
fn a_repeated_get_reads_nothing_from_the_device() {
    let mut store = Store::open(CachedDevice::new(Probe::new(2048), 1024)).unwrap();
    for k in 0..64 {
        store
            .stage(Op::Put(format!("key-{k}").into_bytes(), vec![k as u8; 128]))
            .unwrap();
    }
    store.commit().unwrap();
    // Cold: the first pass may read; the second must not.
    for k in 0..64 {
        store.get(format!("key-{k}").as_bytes()).unwrap().unwrap();
    }
    let before = store.device().inner().reads;
    for _ in 0..10 {
        for k in 0..64 {
            let v = store.get(format!("key-{k}").as_bytes()).unwrap().unwrap();
            assert_eq!(v, vec![k as u8; 128]);
        }
    }
    assert_eq!(store.device().inner().reads, before);

    // Without a cache, every GET is a device read.
    let mut plain = Store::open(Probe::new(2048)).unwrap();
    plain.stage(Op::Put(b"a".to_vec(), vec![1; 128])).unwrap();
    plain.commit().unwrap();
    let before = plain.device().reads;
    for _ in 0..10 {
        plain.get(b"a").unwrap().unwrap();
    }
    assert_eq!(plain.device().reads, before + 10);
}

/// However much is read, the cache holds at most its capacity.
#[test]
fn the_cache_stays_within_its_bound() {
    let mut c = CachedDevice::new(Probe::new(4096), 32); // 8 pages
    assert_eq!(c.capacity_pages(), 8);
    let mut buf = vec![0u8; 64 * SECTOR];
    for s in (0..4096 - 64).step_by(37) {
        c.read(s, &mut buf).unwrap();
        assert!(c.cached_pages() <= 8);
        assert!(c.cached_bytes() <= 8 * PAGE);
    }
    assert!(c.stats().evictions > 0);
    // A write of whole pages past the bound does not grow it either.
    c.write(0, &vec![7u8; 4096 * SECTOR]).unwrap();
    assert!(c.cached_pages() <= 8);
    check_coherent(&c);
}

/// A write the device fails drops the pages it overlaps (the device may hold
/// part of it): the next read fetches them again and sees the device's bytes.
#[test]
fn a_failed_write_drops_the_pages_it_touched() {
    let mut c = CachedDevice::new(Probe::new(256), 64);
    let mut buf = vec![0u8; 32 * SECTOR];
    c.read(0, &mut buf).unwrap();
    assert_eq!(c.cached_pages(), 4);
    c.inner_mut().fail_writes = true;
    assert_eq!(c.write(4, &vec![9u8; 16 * SECTOR]), Err(Error::Io));
    c.inner_mut().fail_writes = false;
    // Pages 0..=2 overlapped the write; page 3 did not.
    assert_eq!(c.cached_pages(), 1);
    assert_eq!(c.stats().invalidations, 3);
    c.read(0, &mut buf).unwrap();
    assert_eq!(&buf[..], &c.inner().disk.data[..32 * SECTOR]);
    // The device really holds half the failed write.
    assert_eq!(buf[4 * SECTOR], 9);
    check_coherent(&c);
}

/// Out-of-range and ragged requests are refused with `Io`, as the device
/// refuses them, and leave the cache as it was.
#[test]
fn bad_requests_fail_like_the_device() {
    let mut c = CachedDevice::new(Probe::new(100), 64);
    let mut buf = vec![0u8; 8 * SECTOR];
    assert_eq!(c.read(96, &mut buf), Err(Error::Io));
    assert_eq!(c.read(u64::MAX - 2, &mut buf), Err(Error::Io));
    let mut ragged = vec![0u8; 100];
    assert_eq!(c.read(0, &mut ragged), Err(Error::Io));
    assert_eq!(c.cached_pages(), 0);
    // The short last page (sectors 96..100) is read and cached whole.
    let mut tail = vec![0u8; 4 * SECTOR];
    c.read(96, &mut tail).unwrap();
    assert_eq!(c.cached_pages(), 1);
    c.write(96, &vec![5u8; 4 * SECTOR]).unwrap();
    c.read(96, &mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 5));
    check_coherent(&c);
}
