//! Fuzzes the page-table validator with random operation sequences on a
//! small machine, checking after every step:
//!
//! * nothing panics (guest input never panics the hypervisor);
//! * the from-scratch audit passes (counts equal references found by a full
//!   scan; no table-typed frame is mapped writable; every mapped frame is
//!   owned by the table's domain; hypervisor L4 slots equal the template);
//! * a refused single operation changed nothing;
//! * a batch equals its updates applied one by one up to the first refusal;
//! * teardown returns every frame of the domain to idle;
//! * bounded pins and unpins (MMU-35) stopped after a random number of
//!   steps, with anything else in between, keep the audit passing at every
//!   stop, and a domain torn down with one half done gets every frame back.
//!
//! Run: `cargo +nightly fuzz run validator` in `hypervisor/core` (see
//! README.md). The same property runs on stable in `cargo test` (proptest).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tahoma_core::mm::audit::audit;
use tahoma_core::mm::{
    AddressSpace, BatchError, Budget, DomId, FrameView, Level, Mm, MmConfig, Owner, FrameType,
    Pending, PhysMem, Teardown, HYPERVISOR_SLOTS, OP_STEPS,
};

const FRAMES: u64 = 48;
const DOMS: [DomId; 2] = [1, 2];
const ENTRIES: usize = 512;

#[derive(Clone, PartialEq, Eq, Debug)]
struct Mem(Vec<[u64; ENTRIES]>);

impl PhysMem for Mem {
    fn read_entry(&self, mfn: u64, index: usize) -> u64 {
        self.0[mfn as usize][index]
    }
    fn write_entry(&mut self, mfn: u64, index: usize, value: u64) {
        self.0[mfn as usize][index] = value;
    }
    fn entries_mut(&mut self, mfn: u64) -> &mut [u64; ENTRIES] {
        &mut self.0[mfn as usize]
    }
}

/// A frame number: mostly small (the guest's own), sometimes anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum F {
    Small(u8),
    Any(u64),
}

impl F {
    fn mfn(self) -> u64 {
        match self {
            F::Small(n) => u64::from(n) % (FRAMES + 2),
            F::Any(n) => n,
        }
    }
}

/// An entry value: mostly a frame with a few flags, sometimes raw bits.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum V {
    Entry(F, u8),
    Raw(u64),
}

impl V {
    fn value(self) -> u64 {
        match self {
            // Low flag bits P, RW, U, PWT, PCD, A, D, PS from the byte, plus
            // sometimes NX; most often P|U set so that it means something.
            V::Entry(f, bits) => {
                let low = u64::from(bits) & 0xff;
                let low = if bits & 0x80 == 0 { low | 0b101 } else { low };
                f.mfn().wrapping_shl(12) | (low & 0x7f) | (u64::from(bits >> 7) << 63)
            }
            V::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Pin(u8, F, u8),
    Unpin(u8, F),
    Update(u8, F, u16, V),
    /// Update an entry of the `n`-th table in use.
    UpdateInUse(u8, u16, V),
    Batch(u8, Vec<(F, u16, V)>),
    UpdateVa(u8, F, u64, V),
    Switch(u8, F),
    GuestWrite(u8, F, u16, V),
    CpuSetsAccessed(F, u16),
    Teardown(u8),
    Flush,
    /// A bounded pin of at most `.3` steps (continuing the domain's pending
    /// one if the frame and level match).
    PinSteps(u8, F, u8, u8),
    /// A bounded unpin of at most `.2` steps.
    UnpinSteps(u8, F, u8),
}

struct World {
    mm: Mm,
    mem: Mem,
    spaces: [AddressSpace; 3],
    /// Each domain's pin or unpin in progress.
    pending: [Option<Pending>; 2],
}

fn dom(d: u8) -> DomId {
    DOMS[usize::from(d) % DOMS.len()]
}

fn ptr(mfn: u64, slot: u16) -> u64 {
    mfn.wrapping_shl(12) | (u64::from(slot % 512) * 8)
}

fn snapshot(w: &World) -> (Vec<FrameView>, Mem) {
    let views = (0..FRAMES).map(|p| w.mm.frame(p).unwrap().view()).collect();
    (views, w.mem.clone())
}

impl World {
    fn new() -> World {
        let mut slots = [0u64; HYPERVISOR_SLOTS];
        slots[0] = (44 << 12) | 0x23;
        let mut mm = Mm::new(&MmConfig {
            frames: FRAMES,
            max_phys_bits: 46,
            hypervisor_slots: slots,
        })
        .unwrap();
        for mfn in 0..FRAMES {
            let owner = match mfn {
                0..=23 => Owner::Domain(DOMS[0]),
                24..=35 => Owner::Domain(DOMS[1]),
                36..=43 => Owner::Hypervisor,
                _ => Owner::Free,
            };
            mm.assign(mfn, owner).unwrap();
        }
        mm.assign(22, Owner::Free).unwrap();
        mm.share_special(22, DOMS[0], true).unwrap();
        mm.assign(23, Owner::Free).unwrap();
        mm.share_special(23, DOMS[0], false).unwrap();
        World {
            mm,
            mem: Mem(vec![[0; ENTRIES]; FRAMES as usize]),
            spaces: [
                AddressSpace::new(DOMS[0]),
                AddressSpace::new(DOMS[0]),
                AddressSpace::new(DOMS[1]),
            ],
            pending: [None, None],
        }
    }

    fn step(&mut self, op: &Op) {
        let before = snapshot(self);
        let single = match op {
            Op::Pin(d, f, l) => {
                let level = Level::from_number(u64::from(*l % 5));
                Some(level.and_then(|l| self.mm.pin(&mut self.mem, dom(*d), f.mfn(), l)))
            }
            Op::Unpin(d, f) => Some(self.mm.unpin(&mut self.mem, dom(*d), f.mfn())),
            Op::Update(d, f, s, v) => {
                Some(
                    self.mm
                        .mmu_update_one(&mut self.mem, dom(*d), ptr(f.mfn(), *s), v.value()),
                )
            }
            Op::UpdateInUse(n, s, v) => {
                let in_use: Vec<u64> = (0..FRAMES)
                    .filter(|p| self.mm.frame(*p).unwrap().table_level().is_some())
                    .collect();
                if in_use.is_empty() {
                    None
                } else {
                    let p = in_use[usize::from(*n) % in_use.len()];
                    let d = match self.mm.frame(p).unwrap().owner() {
                        Owner::Domain(d) => d,
                        _ => DOMS[0],
                    };
                    Some(
                        self.mm
                            .mmu_update_one(&mut self.mem, d, ptr(p, *s), v.value()),
                    )
                }
            }
            Op::Batch(d, b) => {
                self.batch(dom(*d), b);
                None
            }
            Op::UpdateVa(d, f, va, v) => {
                Some(
                    self.mm
                        .update_va_mapping(&mut self.mem, dom(*d), f.mfn(), *va, v.value()),
                )
            }
            Op::Switch(s, f) => {
                let space = &mut self.spaces[usize::from(*s) % 3];
                let old = *space;
                let r = self.mm.switch_root(space, f.mfn()).map(|_| ());
                if r.is_err() {
                    assert_eq!(*space, old);
                }
                Some(r)
            }
            Op::GuestWrite(d, f, s, v) => {
                let p = f.mfn();
                if let Some(fr) = self.mm.frame(p) {
                    let writable = matches!(fr.frame_type(), FrameType::None | FrameType::Writable)
                        || (fr.frame_type() == FrameType::Special && fr.special_writable());
                    if fr.owner() == Owner::Domain(dom(*d)) && writable {
                        self.mem.0[p as usize][usize::from(*s % 512)] = v.value();
                    }
                }
                None
            }
            Op::CpuSetsAccessed(f, s) => {
                let p = f.mfn();
                if let Some(fr) = self.mm.frame(p) {
                    let e = &mut self.mem.0[p as usize][usize::from(*s % 512)];
                    if fr.table_level().is_some() && *e & 1 != 0 {
                        *e |= if fr.frame_type() == FrameType::L1 {
                            0x60
                        } else {
                            0x20
                        };
                    }
                }
                None
            }
            Op::PinSteps(d, f, l, steps) => {
                let i = usize::from(*d) % DOMS.len();
                let fresh = self.pending[i].is_none();
                let r = Level::from_number(u64::from(*l % 5)).and_then(|l| {
                    self.mm.pin_bounded(
                        &mut self.mem,
                        DOMS[i],
                        f.mfn(),
                        l,
                        &mut self.pending[i],
                        &mut Budget::new(u64::from(*steps)),
                    )
                });
                fresh.then_some(r.map(|_| ()))
            }
            Op::UnpinSteps(d, f, steps) => {
                let i = usize::from(*d) % DOMS.len();
                let fresh = self.pending[i].is_none();
                let r = self.mm.unpin_bounded(
                    &mut self.mem,
                    DOMS[i],
                    f.mfn(),
                    &mut self.pending[i],
                    &mut Budget::new(u64::from(*steps)),
                );
                fresh.then_some(r.map(|_| ()))
            }
            Op::Teardown(d) => {
                let i = usize::from(*d) % DOMS.len();
                let d = DOMS[i];
                let mut t = Teardown::new(d);
                while self.mm.teardown_bounded(
                    &mut self.mem,
                    &mut t,
                    &mut self.pending[i],
                    &mut Budget::new(64),
                ) == tahoma_core::mm::Progress::Preempted
                {
                    if let Err(e) = audit(&self.mm, &self.mem) {
                        panic!("audit failed during teardown: {e:?}");
                    }
                }
                assert!(self.pending[i].is_none(), "teardown left the operation pending");
                for s in self.spaces.iter_mut().filter(|s| s.domain() == d) {
                    *s = AddressSpace::new(d);
                }
                for mfn in 0..FRAMES {
                    let f = self.mm.frame(mfn).unwrap();
                    if f.owner() == Owner::Domain(d) {
                        assert!(f.idle(), "frame {mfn} not idle after teardown");
                    }
                }
                None
            }
            Op::Flush => {
                let _ = self.mm.take_flush_request();
                None
            }
        };
        if let Some(Err(_)) = single {
            assert!(snapshot(self) == before, "refused {op:?} changed state");
        }
        if let Err(e) = audit(&self.mm, &self.mem) {
            panic!("audit failed after {op:?}: {e:?}");
        }
    }

    fn batch(&mut self, d: DomId, b: &[(F, u16, V)]) {
        let updates: Vec<(u64, u64)> = b
            .iter()
            .map(|(f, s, v)| (ptr(f.mfn(), *s), v.value()))
            .collect();
        let mut mm = self.mm.clone();
        let mut mem = self.mem.clone();
        let mut expect = Ok(updates.len());
        // One budget for the whole batch, as `mmu_update` has (MMU-39).
        let mut budget = Budget::new(OP_STEPS);
        for (index, (p, v)) in updates.iter().enumerate() {
            if let Err(error) = mm.mmu_update_one_within(&mut mem, d, *p, *v, &mut budget) {
                expect = Err(BatchError { index, error });
                break;
            }
        }
        let r = self
            .mm
            .mmu_update(&mut self.mem, d, updates.iter().copied());
        assert_eq!(r, expect);
        let views = |m: &Mm| -> Vec<FrameView> {
            (0..FRAMES).map(|p| m.frame(p).unwrap().view()).collect()
        };
        assert!(mem == self.mem, "batch differs from one-by-one updates");
        assert!(views(&mm) == views(&self.mm), "batch accounting differs");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut w = World::new();
    for op in ops.iter().take(256) {
        w.step(op);
    }
    for (i, d) in DOMS.into_iter().enumerate() {
        let mut t = Teardown::new(d);
        let _ = w
            .mm
            .teardown_bounded(&mut w.mem, &mut t, &mut w.pending[i], &mut Budget::unlimited());
    }
    for mfn in 0..FRAMES {
        assert!(
            w.mm.frame(mfn).unwrap().idle(),
            "frame {mfn} not idle at the end"
        );
    }
    audit(&w.mm, &w.mem).unwrap();
});
