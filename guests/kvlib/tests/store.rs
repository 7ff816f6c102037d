//! The store's recovery: a crash (a write cut short at every byte) at any
//! point of a commit or a compaction loses nothing acknowledged, never
//! yields a corrupt record, and the store keeps working after it.

use std::collections::BTreeMap;

use kvlib::store::{BlockDevice, Error, MemDisk, Op, Store, MAX_KEY, MAX_VALUE, SECTOR};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(model: &mut Model, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put(k, v) => {
                model.insert(k.clone(), v.clone());
            }
            Op::Delete(k) => {
                model.remove(k);
            }
        }
    }
}

/// Everything the store holds.
fn contents(store: &mut Store<MemDisk>) -> Model {
    let keys = store.keys_with_prefix(b"", usize::MAX);
    keys.into_iter()
        .map(|k| {
            let v = store.get(&k).unwrap().unwrap();
            (k, v)
        })
        .collect()
}

fn commit(store: &mut Store<MemDisk>, model: &mut Model, ops: &[Op]) {
    for op in ops {
        store.stage(op.clone()).unwrap();
    }
    assert_eq!(store.commit().unwrap(), ops.len());
    apply(model, ops);
}

/// `before` with the first `cut` bytes of `writes` applied, in order.
fn torn(before: &MemDisk, writes: &[(u64, Vec<u8>)], mut cut: usize) -> MemDisk {
    let mut d = before.clone();
    for (off, data) in writes {
        let n = data.len().min(cut);
        d.data[*off as usize..*off as usize + n].copy_from_slice(&data[..n]);
        cut -= n;
        if cut == 0 {
            break;
        }
    }
    d.writes.clear();
    d
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let key = (0u8..6).prop_map(|k| format!("key-{k}").into_bytes());
    prop_oneof![
        3 => (key.clone(), 0usize..900, any::<u8>()).prop_map(|(k, n, b)| Op::Put(k, vec![b; n])),
        1 => key.prop_map(Op::Delete),
    ]
}

/// Checks a crash at every byte of the writes of `last` (staged on a store
/// holding `history`): the reopened store holds either the state before or
/// the state after, and accepts and keeps a new write.
fn check_every_tear(sectors: u64, history: &[Vec<Op>], last: &[Op]) {
    let mut store = Store::open(MemDisk::recording(sectors)).unwrap();
    let mut model = Model::new();
    for ops in history {
        commit(&mut store, &mut model, ops);
    }
    let before_model = model.clone();
    let mut before = store.device().clone();
    before.writes.clear();
    store.device_mut().writes.clear();
    commit(&mut store, &mut model, last);
    let after_model = model;
    let writes = store.device().writes.clone();
    let total: usize = writes.iter().map(|(_, d)| d.len()).sum();
    assert!(
        last.is_empty() || total > 0,
        "the commit's writes were recorded"
    );
    for cut in 0..=total {
        let disk = torn(&before, &writes, cut);
        let mut s = Store::open(disk).unwrap();
        let got = contents(&mut s);
        assert!(
            got == before_model || got == after_model,
            "cut at byte {cut} of {total}: {} keys, neither the state before nor after",
            got.len()
        );
        if cut == total {
            assert_eq!(
                got, after_model,
                "the whole commit written: it must be there"
            );
        }
        // The store goes on: a new write after recovery is kept.
        let mut m = got;
        let extra = [Op::Put(b"after-crash".to_vec(), vec![7; 100])];
        for op in &extra {
            s.stage(op.clone()).unwrap();
        }
        s.commit().unwrap();
        apply(&mut m, &extra);
        let mut reopened = Store::open(s.into_device()).unwrap();
        assert_eq!(
            contents(&mut reopened),
            m,
            "cut at byte {cut}: write after recovery lost"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random histories on a small disk (so that compactions happen, also
    /// inside the commit that is torn), the last commit cut at every byte.
    #[test]
    fn a_crash_at_any_byte_of_a_commit_loses_nothing_acknowledged(
        history in prop::collection::vec(prop::collection::vec(op_strategy(), 1..5), 0..14),
        last in prop::collection::vec(op_strategy(), 1..4),
    ) {
        check_every_tear(2 + 2 * 24, &history, &last);
    }

    /// A byte of the log region flipped anywhere: open never fails or
    /// panics, and what it finds is the state after some prefix of the
    /// commits (a corrupt batch and everything after it are dropped, never
    /// a record made up).
    #[test]
    fn a_corrupt_byte_anywhere_yields_a_prefix_of_the_history(
        history in prop::collection::vec(prop::collection::vec(op_strategy(), 1..4), 1..10),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut store = Store::open(MemDisk::new(2 + 2 * 64)).unwrap();
        let mut model = Model::new();
        let mut states = vec![model.clone()];
        for ops in &history {
            commit(&mut store, &mut model, ops);
            states.push(model.clone());
        }
        let mut disk = store.into_device();
        let i = 2 * SECTOR + at.index(disk.data.len() - 2 * SECTOR);
        disk.data[i] ^= xor;
        let mut s = Store::open(disk).unwrap();
        let got = contents(&mut s);
        prop_assert!(states.contains(&got), "corruption at byte {} made a state no prefix had", i);
    }
}

/// A compaction cut at every byte of its writes (the live data copied, the
/// superblock switched): nothing is lost at any point.
#[test]
fn a_crash_at_any_byte_of_a_compaction_loses_nothing() {
    let mut store = Store::open(MemDisk::recording(2 + 2 * 32)).unwrap();
    let mut model = Model::new();
    for i in 0..20u8 {
        let ops = [Op::Put(vec![b'k', i % 5], vec![i; 300 + i as usize])];
        commit(&mut store, &mut model, &ops);
    }
    commit(&mut store, &mut model, &[Op::Delete(vec![b'k', 0])]);
    // Two compactions first, so that both superblock copies hold real
    // generations (the first one's spare copy is a twin of the format's).
    store.compact().unwrap();
    commit(
        &mut store,
        &mut model,
        &[Op::Put(b"between".to_vec(), vec![9; 40])],
    );
    store.compact().unwrap();
    commit(&mut store, &mut model, &[Op::Delete(vec![b'k', 1])]);
    let mut before = store.device().clone();
    before.writes.clear();
    store.device_mut().writes.clear();
    let compactions = store.stats().compactions;
    store.compact().unwrap();
    assert_eq!(store.stats().compactions, compactions + 1);
    assert_eq!(contents(&mut store), model);
    let writes = store.device().writes.clone();
    let total: usize = writes.iter().map(|(_, d)| d.len()).sum();
    assert!(total > 4 * SECTOR, "the compaction wrote {total} bytes");
    for cut in 0..=total {
        let mut s = Store::open(torn(&before, &writes, cut)).unwrap();
        assert_eq!(
            contents(&mut s),
            model,
            "compaction cut at byte {cut} of {total}"
        );
    }
}

#[test]
fn deleted_and_overwritten_records_are_reclaimed_by_compaction() {
    let mut store = Store::open(MemDisk::new(2 + 2 * 64)).unwrap();
    let mut model = Model::new();
    // Far more than a region (32 KiB) written over time, little of it live.
    for i in 0..400u32 {
        let k = format!("k{}", i % 7).into_bytes();
        let ops = if i % 11 == 10 {
            vec![Op::Delete(k)]
        } else {
            vec![Op::Put(k, vec![i as u8; 500])]
        };
        for op in &ops {
            store.stage(op.clone()).unwrap();
        }
        store.commit().unwrap();
        apply(&mut model, &ops);
    }
    let stats = store.stats();
    assert!(stats.compactions > 5, "{stats:?}");
    assert_eq!(contents(&mut store), model);
    let mut reopened = Store::open(store.into_device()).unwrap();
    assert_eq!(contents(&mut reopened), model);
    assert!(!reopened.stats().dropped_tail);
}

#[test]
fn live_data_beyond_a_region_is_refused_and_nothing_changes() {
    let mut store = Store::open(MemDisk::new(2 + 2 * 32)).unwrap();
    let mut model = Model::new();
    let mut i = 0u32;
    let err = loop {
        let op = Op::Put(format!("k{i}").into_bytes(), vec![1; 1000]);
        store.stage(op.clone()).unwrap();
        match store.commit() {
            Ok(_) => apply(&mut model, &[op]),
            Err(e) => break e,
        }
        i += 1;
        assert!(i < 100, "a 16 KiB region took 100 KiB of live data");
    };
    assert_eq!(err, Error::Full);
    let mut reopened = Store::open(store.into_device()).unwrap();
    assert_eq!(contents(&mut reopened), model);
}

#[test]
fn group_commit_writes_many_records_with_one_flush() {
    let mut store = Store::open(MemDisk::new(2048)).unwrap();
    for i in 0..64u32 {
        store
            .stage(Op::Put(format!("k{i}").into_bytes(), vec![i as u8; 100]))
            .unwrap();
    }
    assert_eq!(store.commit().unwrap(), 64);
    let s = store.stats();
    assert_eq!((s.batches, s.records, s.flushes), (1, 64, 1));
    let mut reopened = Store::open(store.into_device()).unwrap();
    assert_eq!(reopened.stats().recovered_records, 64);
    assert_eq!(reopened.get(b"k63").unwrap(), Some(vec![63; 100]));
}

#[test]
fn bad_keys_and_values_are_refused_at_stage() {
    let mut store = Store::open(MemDisk::new(2048)).unwrap();
    assert_eq!(store.stage(Op::Put(vec![], vec![1])), Err(Error::BadKey));
    assert_eq!(
        store.stage(Op::Put(vec![b'a'; MAX_KEY + 1], vec![1])),
        Err(Error::BadKey)
    );
    assert_eq!(
        store.stage(Op::Put(vec![b'a'], vec![0; MAX_VALUE + 1])),
        Err(Error::ValueTooLarge)
    );
    assert_eq!(store.staged(), 0);
    store
        .stage(Op::Put(vec![b'a'; MAX_KEY], vec![0; MAX_VALUE]))
        .unwrap();
    store.commit().unwrap();
    assert_eq!(
        store.get(&[b'a'; MAX_KEY]).unwrap(),
        Some(vec![0; MAX_VALUE])
    );
}

#[test]
fn a_too_small_device_is_refused() {
    assert!(matches!(Store::open(MemDisk::new(8)), Err(Error::TooSmall)));
    assert_eq!(MemDisk::new(8).sectors(), 8);
}

/// The service's RAM disk keeps no copy of its writes: 5,000 commits (each
/// a record and, with compactions, more) leave its memory the disk's size.
/// A recording disk keeps every write until told to stop.
#[test]
fn a_ram_disk_keeps_no_record_unless_asked() {
    let mut store = Store::open(MemDisk::new(2 + 2 * 64)).unwrap();
    assert!(!store.device().is_recording());
    for i in 0..5_000u32 {
        store
            .stage(Op::Put(format!("k{}", i % 40).into_bytes(), vec![7; 200]))
            .unwrap();
        store.commit().unwrap();
    }
    assert!(
        store.stats().compactions > 0,
        "the log wrapped: compactions ran"
    );
    assert!(store.device().writes.is_empty());
    assert_eq!(store.device().writes.capacity(), 0, "nothing allocated");
    assert_eq!(store.device().data.len(), (2 + 2 * 64) * SECTOR);
    assert_eq!(store.get(b"k3").unwrap(), Some(vec![7; 200]));

    let mut rec = Store::open(MemDisk::recording(2 + 2 * 64)).unwrap();
    assert!(rec.device().is_recording());
    let before = rec.device().writes.len();
    rec.stage(Op::Put(b"a".to_vec(), vec![1; 100])).unwrap();
    rec.commit().unwrap();
    let recorded = rec.device().writes.len();
    assert!(recorded > before, "the commit's writes are recorded");
    rec.device_mut().set_recording(false);
    assert!(
        rec.device().writes.is_empty(),
        "turning it off drops the record"
    );
    rec.stage(Op::Put(b"b".to_vec(), vec![2; 100])).unwrap();
    rec.commit().unwrap();
    assert!(rec.device().writes.is_empty());
    assert_eq!(rec.get(b"b").unwrap(), Some(vec![2; 100]));
}
