//! Property tests: random operation sequences on the small machine, with
//! the from-scratch audit after every step, "refused means unchanged" for
//! single operations and "prefix applied" for batches.

use super::*;
use crate::mm::pte::{ACCESSED, DIRTY, PS_OR_PAT};
use crate::mm::validator::{Budget, Pending, Progress, Teardown};
use alloc::collections::BTreeMap;
use proptest::prelude::*;

/// One step a guest (or the CPU, or the hypervisor) can take.
#[derive(Clone, Debug)]
enum Op {
    Pin(DomId, Pfn, Level),
    Unpin(DomId, Pfn),
    Update(DomId, u64, u64),
    Batch(DomId, Vec<(u64, u64)>),
    UpdateVa(DomId, Pfn, u64, u64),
    Switch(usize, Pfn),
    /// Resolved against the current state, so that deep states are reached:
    /// an update of slot `.1` of the `.0`-th table in use.
    UpdateInUse(usize, usize, u64),
    /// Load the `.1`-th pinned L4 on vCPU `.0`.
    SwitchPinned(usize, usize),
    /// The fast path on the `.0`-th L4 in use.
    UpdateVaInUse(usize, u64, u64),
    /// Unpin the `.0`-th pinned frame.
    UnpinPinned(usize),
    /// The guest writes a frame it can write (type `None` or `Writable`):
    /// builds tables before pinning them.
    GuestWrite(DomId, Pfn, usize, u64),
    /// The CPU sets A (and D) in an entry of a table in use.
    CpuSetsAccessed(Pfn, usize),
    Teardown(DomId),
    Flush,
    /// The hypervisor takes a hold on a frame (MEM-8).
    Hold(DomId, Pfn),
    /// The hypervisor drops the `.0`-th hold it recorded.
    ReleaseHold(usize),
    /// The hypervisor tries to give a frame back to the free pool (as
    /// `memory_release` does): refused while anything, a hold included,
    /// refers to it.
    Free(Pfn),
    /// A bounded pin of at most `.3` steps (MMU-35), continuing the
    /// domain's pending one when frame and level match.
    PinSteps(DomId, Pfn, Level, u64),
    /// A bounded unpin of at most `.2` steps of the `.0`-th pinned frame.
    UnpinSteps(usize, u64),
}

fn domain() -> impl Strategy<Value = DomId> {
    prop_oneof![8 => Just(DOM), 1 => Just(OTHER), 1 => Just(7u16)]
}

/// Mostly the guest's own frames, sometimes others', sometimes past the end.
fn frame() -> impl Strategy<Value = Pfn> {
    prop_oneof![
        12 => 0..12u64,
        2 => 0..FRAMES,
        1 => Just(FRAMES),
        1 => any::<u64>(),
    ]
}

/// Few slots, so that entries collide; plus the L4 boundary.
fn slot() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0..4usize, 1 => Just(255usize), 1 => Just(256usize), 1 => 0..512usize]
}

/// Entries that are plausible (present, user, some flags) or anything.
fn value() -> impl Strategy<Value = u64> {
    let flags = prop_oneof![
        4 => Just(PRESENT | USER | WRITABLE),
        4 => Just(PRESENT | USER),
        1 => Just(PRESENT | USER | WRITABLE | NX | ACCESSED),
        1 => Just(PRESENT | USER | WRITABLE | PS_OR_PAT),
        1 => Just(PRESENT | WRITABLE),
        1 => Just(PRESENT | USER | DIRTY),
    ];
    prop_oneof![
        8 => (frame(), flags).prop_map(|(p, f)| p.wrapping_shl(12) | f),
        1 => Just(0u64),
        1 => any::<u64>(),
    ]
}

fn ptr_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        10 => (frame(), slot()).prop_map(|(p, i)| p.wrapping_shl(12) | (i as u64 * 8)),
        1 => any::<u64>(),
    ]
}

fn level() -> impl Strategy<Value = Level> {
    prop_oneof![
        Just(Level::L1),
        Just(Level::L2),
        Just(Level::L3),
        Just(Level::L4)
    ]
}

fn va() -> impl Strategy<Value = u64> {
    let idx = || prop_oneof![4 => 0..3u64, 1 => 0..512u64];
    prop_oneof![
        10 => (idx(), idx(), idx(), idx())
            .prop_map(|(a, b, c, d)| (a << 39) | (b << 30) | (c << 21) | (d << 12)),
        1 => any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (domain(), frame(), level()).prop_map(|(d, p, l)| Op::Pin(d, p, l)),
        1 => (domain(), frame()).prop_map(|(d, p)| Op::Unpin(d, p)),
        6 => (domain(), ptr_strategy(), value()).prop_map(|(d, p, v)| Op::Update(d, p, v)),
        2 => (domain(), prop::collection::vec((ptr_strategy(), value()), 0..6))
            .prop_map(|(d, b)| Op::Batch(d, b)),
        2 => (domain(), frame(), va(), value()).prop_map(|(d, r, a, v)| Op::UpdateVa(d, r, a, v)),
        1 => (0..3usize, frame()).prop_map(|(s, p)| Op::Switch(s, p)),
        8 => (any::<usize>(), slot(), value()).prop_map(|(t, i, v)| Op::UpdateInUse(t, i, v)),
        2 => (0..3usize, any::<usize>()).prop_map(|(s, t)| Op::SwitchPinned(s, t)),
        4 => (any::<usize>(), va(), value()).prop_map(|(t, a, v)| Op::UpdateVaInUse(t, a, v)),
        1 => any::<usize>().prop_map(Op::UnpinPinned),
        6 => (domain(), 0..12u64, slot(), value())
            .prop_map(|(d, p, i, v)| Op::GuestWrite(d, p, i, v)),
        1 => (0..12u64, slot()).prop_map(|(p, i)| Op::CpuSetsAccessed(p, i)),
        1 => prop_oneof![20 => Just(Op::Flush), 1 => domain().prop_map(Op::Teardown)],
        2 => (domain(), frame()).prop_map(|(d, p)| Op::Hold(d, p)),
        1 => any::<usize>().prop_map(Op::ReleaseHold),
        1 => frame().prop_map(Op::Free),
        3 => (domain(), frame(), level(), 0..40u64).prop_map(|(d, p, l, s)| Op::PinSteps(d, p, l, s)),
        1 => (any::<usize>(), 0..40u64).prop_map(|(t, s)| Op::UnpinSteps(t, s)),
    ]
}

/// The machine under test plus the vCPUs' address spaces.
struct World {
    mm: Mm,
    mem: Mem,
    spaces: [AddressSpace; 3],
    /// The holds the "hypervisor" took, as it records them.
    holds: Vec<Pfn>,
    /// The bounded pin or unpin each domain has in progress, by domain id.
    pending: BTreeMap<DomId, Pending>,
}

impl World {
    fn new() -> World {
        let (mut mm, mem) = machine();
        mm.share_special(11, DOM, true).unwrap();
        World {
            mm,
            mem,
            spaces: [
                AddressSpace::new(DOM),
                AddressSpace::new(DOM),
                AddressSpace::new(OTHER),
            ],
            holds: vec![11],
            pending: BTreeMap::new(),
        }
    }

    /// The `sel`-th frame (cyclically) that satisfies `pred`, if any.
    fn pick(&self, sel: usize, pred: impl Fn(&FrameInfo) -> bool) -> Option<Pfn> {
        let found: Vec<Pfn> = (0..FRAMES)
            .filter(|p| pred(self.mm.frame(*p).unwrap()))
            .collect();
        (!found.is_empty()).then(|| found[sel % found.len()])
    }

    /// A virtual address whose walk from `root` reaches an L1, steered by
    /// the bits of `seed`, if there is one.
    fn mapped_va(&self, root: Pfn, seed: u64) -> Option<u64> {
        let mut table = root;
        let mut va = seed & 0x1f_f000;
        for (n, level) in [Level::L4, Level::L3, Level::L2].into_iter().enumerate() {
            let below = level.below()?;
            let slots: Vec<usize> = (0..level.guest_slots())
                .filter(|i| {
                    self.mm
                        .rules()
                        .target_of(self.mem.peek(table, *i))
                        .and_then(|t| self.mm.frame(t.pfn))
                        .is_some_and(|f| f.table_level() == Some(below))
                })
                .collect();
            if slots.is_empty() {
                return None;
            }
            let i = slots[(seed >> (21 + 9 * n)) as usize % slots.len()];
            va |= (i as u64) << (39 - 9 * n);
            table = self.mm.rules().target_of(self.mem.peek(table, i))?.pfn;
        }
        Some(va)
    }

    /// Turns the state-resolved ops into plain ones.
    fn resolve(&self, op: &Op) -> Op {
        let in_use = |f: &FrameInfo| f.table_level().is_some();
        let l4 = |f: &FrameInfo| f.table_level() == Some(Level::L4);
        match op {
            Op::UpdateInUse(t, i, v) => match self.pick(*t, in_use) {
                Some(p) => {
                    let d = match self.mm.frame(p).unwrap().owner() {
                        Owner::Domain(d) => d,
                        _ => DOM,
                    };
                    Op::Update(d, ptr(p, *i), *v)
                }
                None => Op::Flush,
            },
            Op::SwitchPinned(s, t) => match self.pick(*t, l4) {
                Some(p) => Op::Switch(*s, p),
                None => Op::Flush,
            },
            Op::UpdateVaInUse(t, a, v) => match self.pick(*t, l4) {
                Some(p) => Op::UpdateVa(DOM, p, self.mapped_va(p, *a).unwrap_or(*a), *v),
                None => Op::Flush,
            },
            Op::UnpinPinned(t) => match self.pick(*t, |f| f.pinned()) {
                Some(p) => Op::Unpin(DOM, p),
                None => Op::Flush,
            },
            other => other.clone(),
        }
    }

    /// Applies one op, checking the per-op properties.
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let op = &self.resolve(op);
        let before = snapshot(&self.mm, &self.mem);
        let single = match op {
            Op::Pin(d, p, l) => Some(self.mm.pin(&mut self.mem, *d, *p, *l)),
            Op::Unpin(d, p) => Some(self.mm.unpin(&mut self.mem, *d, *p)),
            Op::Update(d, p, v) => Some(self.mm.mmu_update_one(&mut self.mem, *d, *p, *v)),
            Op::UpdateVa(d, r, a, v) => {
                Some(self.mm.update_va_mapping(&mut self.mem, *d, *r, *a, *v))
            }
            Op::Switch(s, p) => {
                let space = &mut self.spaces[*s];
                let old = *space;
                let r = self.mm.switch_root(space, *p).map(|_| ());
                if r.is_err() {
                    prop_assert_eq!(*space, old);
                }
                Some(r)
            }
            Op::Batch(d, b) => {
                self.batch(*d, b)?;
                None
            }
            Op::GuestWrite(d, p, i, v) => {
                let f = self.mm.frame(*p).unwrap();
                let writable = matches!(f.page_type(), PageType::None | PageType::Writable)
                    || (f.page_type() == PageType::Special && f.special_writable());
                if f.owner() == Owner::Domain(*d) && writable {
                    self.mem.poke(*p, *i, *v);
                }
                None
            }
            Op::CpuSetsAccessed(p, i) => {
                let f = self.mm.frame(*p).unwrap();
                let e = self.mem.peek(*p, *i);
                if f.table_level().is_some() && e & PRESENT != 0 {
                    let bits = if f.page_type() == PageType::L1 {
                        ACCESSED | DIRTY
                    } else {
                        ACCESSED
                    };
                    self.mem.poke(*p, *i, e | bits);
                }
                None
            }
            Op::PinSteps(d, p, l, steps) => {
                let mut pending = self.pending.remove(d);
                let fresh = pending.is_none();
                let r = self.mm.pin_bounded(
                    &mut self.mem,
                    *d,
                    *p,
                    *l,
                    &mut pending,
                    &mut Budget::new(*steps),
                );
                // Pending exactly while preempted, or when another
                // operation is what is pending.
                let pending_expected =
                    matches!(r, Ok(Progress::Preempted) | Err(MmError::OperationPending));
                prop_assert_eq!(pending.is_some(), pending_expected);
                if let Some(p) = pending {
                    self.pending.insert(*d, p);
                }
                fresh.then_some(r.map(|_| ()))
            }
            Op::UnpinSteps(t, steps) => {
                let Some(p) = self.pick(*t, |f| f.pinned()) else {
                    return Ok(());
                };
                let mut pending = self.pending.remove(&DOM);
                let fresh = pending.is_none();
                let r = self.mm.unpin_bounded(
                    &mut self.mem,
                    DOM,
                    p,
                    &mut pending,
                    &mut Budget::new(*steps),
                );
                if let Some(p) = pending {
                    self.pending.insert(DOM, p);
                }
                fresh.then_some(r.map(|_| ()))
            }
            Op::Teardown(d) => {
                let mut pending = self.pending.remove(d);
                let mut t = Teardown::new(*d);
                while self.mm.teardown_bounded(
                    &mut self.mem,
                    &mut t,
                    &mut pending,
                    &mut Budget::new(32),
                ) == Progress::Preempted
                {
                    if let Err(e) = audit::audit(&self.mm, &self.mem) {
                        return Err(TestCaseError::fail(format!("audit mid-teardown: {e:?}")));
                    }
                }
                prop_assert!(pending.is_none());
                // Then the hypervisor drops its holds on the domain's frames.
                let mine = |p: &Pfn| self.mm.frame(*p).unwrap().owner() == Owner::Domain(*d);
                let (gone, kept): (Vec<Pfn>, Vec<Pfn>) = self.holds.iter().partition(|p| mine(p));
                for p in gone {
                    self.mm.release_hold(p).unwrap();
                }
                self.holds = kept;
                for s in self.spaces.iter_mut().filter(|s| s.domain() == *d) {
                    *s = AddressSpace::new(*d);
                }
                for pfn in 0..FRAMES {
                    let f = self.mm.frame(pfn).unwrap();
                    if f.owner() == Owner::Domain(*d) {
                        prop_assert!(f.idle(), "frame {} not idle after teardown", pfn);
                    }
                }
                None
            }
            Op::Flush => {
                let _ = self.mm.take_flush_request();
                None
            }
            Op::Hold(d, p) => {
                let r = self.mm.hold(*p, *d);
                if r.is_ok() {
                    self.holds.push(*p);
                }
                Some(r)
            }
            Op::ReleaseHold(i) => {
                if self.holds.is_empty() {
                    None
                } else {
                    let at = i % self.holds.len();
                    let r = self.mm.release_hold(self.holds[at]);
                    if r.is_ok() {
                        self.holds.remove(at);
                    }
                    Some(r)
                }
            }
            Op::Free(p) => {
                let held = self.holds.contains(p);
                let r = self.mm.assign(*p, Owner::Free);
                if held {
                    prop_assert!(r.is_err(), "held frame {} given away", p);
                }
                Some(r)
            }
            Op::UpdateInUse(..)
            | Op::SwitchPinned(..)
            | Op::UpdateVaInUse(..)
            | Op::UnpinPinned(_) => None,
        };
        if let Some(Err(_)) = single {
            prop_assert_eq!(&snapshot(&self.mm, &self.mem), &before);
        }
        if let Err(e) = audit::audit_holds(&self.mm, &self.mem, &self.holds) {
            return Err(TestCaseError::fail(format!("audit after {op:?}: {e:?}")));
        }
        Ok(())
    }

    /// A batch must equal its updates applied one by one, up to the first
    /// refusal.
    fn batch(&mut self, d: DomId, b: &[(u64, u64)]) -> Result<(), TestCaseError> {
        let mut mm = self.mm.clone();
        let mut mem = self.mem.clone();
        let mut first_err = None;
        for (i, (p, v)) in b.iter().enumerate() {
            if let Err(e) = mm.mmu_update_one(&mut mem, d, *p, *v) {
                first_err = Some(BatchError { index: i, error: e });
                break;
            }
        }
        let r = self.mm.mmu_update(&mut self.mem, d, b.iter().copied());
        match first_err {
            Some(e) => prop_assert_eq!(r, Err(e)),
            None => prop_assert_eq!(r, Ok(b.len())),
        }
        prop_assert_eq!(snapshot(&self.mm, &self.mem), snapshot(&mm, &mem));
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_every_invariant(ops in prop::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op)?;
        }
        // Whatever happened (pins or unpins left half done too), teardown
        // returns every frame and drops every hold.
        for d in [DOM, OTHER, 7] {
            w.step(&Op::Teardown(d))?;
        }
        prop_assert!(w.holds.is_empty(), "holds left: {:?}", w.holds);
        for pfn in 0..FRAMES {
            prop_assert!(w.mm.frame(pfn).unwrap().idle(), "frame {} not idle", pfn);
        }
        audit::audit_holds(&w.mm, &w.mem, &[]).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    }

    #[test]
    fn entry_check_never_panics_and_is_consistent(v in any::<u64>(), l in level()) {
        let rules = EntryRules::new(46).unwrap();
        if let Ok(Some(t)) = rules.check(l, v) {
            prop_assert!(t.pfn < 1 << 34);
            prop_assert_eq!(Some(t), rules.target_of(v));
            prop_assert!(v & USER != 0);
        }
    }
}

/// Drives a crafted sequence that reaches deep states: a real tree built
/// the way a guest does, then random ops on top.
#[test]
fn random_operations_on_a_built_tree() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            let (mm, mem, space) = tree();
            let mut w = World {
                mm,
                mem,
                spaces: [space, AddressSpace::new(DOM), AddressSpace::new(OTHER)],
                holds: Vec::new(),
                pending: BTreeMap::new(),
            };
            for op in &ops {
                w.step(op)?;
            }
            Ok(())
        })
        .unwrap();
}
