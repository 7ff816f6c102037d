//! Tests of the validator: a small machine, one test per rule and attack
//! (named after its clause in `docs/abi/mmu.md`), and property tests
//! against the from-scratch audit.

mod audit_teeth;
mod bounded;
mod built;
mod holds;
mod io;
mod props;
mod pure;
mod rules;
mod shared;

use super::pte::{ENTRIES, NX, PRESENT, USER, WRITABLE};
use super::*;
use alloc::vec;
use alloc::vec::Vec;

/// Frames in the test machine.
pub(super) const FRAMES: u64 = 64;
/// The guest under test owns frames 0..40.
pub(super) const DOM: DomId = 1;
/// Another guest owns 40..48.
pub(super) const OTHER: DomId = 2;
pub(super) const OTHER_FRAMES: core::ops::Range<u64> = 40..48;
/// The hypervisor owns 48..56; 56..64 are free.
pub(super) const HYP_FRAMES: core::ops::Range<u64> = 48..56;
pub(super) const FREE_FRAME: Mfn = 60;

/// Dense physical memory: every frame is 512 entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Mem {
    frames: Vec<[u64; ENTRIES]>,
}

impl Mem {
    pub(super) fn new(frames: u64) -> Mem {
        Mem {
            frames: vec![[0; ENTRIES]; frames as usize],
        }
    }
    /// A write that bypasses the validator: the guest writing a frame it
    /// may write, or the CPU setting A/D bits.
    pub(super) fn poke(&mut self, mfn: Mfn, index: usize, value: u64) {
        self.frames[mfn as usize][index] = value;
    }
    pub(super) fn peek(&self, mfn: Mfn, index: usize) -> u64 {
        self.frames[mfn as usize][index]
    }
}

impl PhysMem for Mem {
    fn read_entry(&self, mfn: Mfn, index: usize) -> u64 {
        self.frames[mfn as usize][index]
    }
    fn write_entry(&mut self, mfn: Mfn, index: usize, value: u64) {
        self.frames[mfn as usize][index] = value;
    }
    fn entries_mut(&mut self, mfn: Mfn) -> &mut [u64; ENTRIES] {
        &mut self.frames[mfn as usize]
    }
}

/// The hypervisor's L4 slots: supervisor-only tables at fixed frames.
pub(super) fn template() -> [u64; HYPERVISOR_SLOTS] {
    let mut t = [0; HYPERVISOR_SLOTS];
    t[0] = (HYP_FRAMES.start << 12) | PRESENT | WRITABLE;
    t[255] = ((HYP_FRAMES.start + 1) << 12) | PRESENT | WRITABLE;
    t
}

/// A machine with ownership assigned, nothing typed.
pub(super) fn machine() -> (Mm, Mem) {
    let mut mm = Mm::new(&MmConfig {
        frames: FRAMES,
        max_phys_bits: 46,
        hypervisor_slots: template(),
    })
    .unwrap();
    for mfn in 0..FRAMES {
        let owner = if mfn < OTHER_FRAMES.start {
            Owner::Domain(DOM)
        } else if OTHER_FRAMES.contains(&mfn) {
            Owner::Domain(OTHER)
        } else if HYP_FRAMES.contains(&mfn) {
            Owner::Hypervisor
        } else {
            Owner::Free
        };
        mm.assign(mfn, owner).unwrap();
    }
    (mm, Mem::new(FRAMES))
}

/// A non-leaf entry pointing at `mfn`.
pub(super) fn table(mfn: Mfn) -> u64 {
    (mfn << 12) | PRESENT | WRITABLE | USER
}
/// A writable leaf entry.
pub(super) fn rw(mfn: Mfn) -> u64 {
    (mfn << 12) | PRESENT | WRITABLE | USER | NX
}
/// A read-only leaf entry (or read-only non-leaf entry).
pub(super) fn ro(mfn: Mfn) -> u64 {
    (mfn << 12) | PRESENT | USER
}
/// The machine address of entry `index` of `mfn`.
pub(super) fn ptr(mfn: Mfn, index: usize) -> u64 {
    (mfn << 12) | (index as u64 * 8)
}

/// Frames of the standard tree.
pub(super) const L4: Mfn = 1;
pub(super) const L3: Mfn = 2;
pub(super) const L2: Mfn = 3;
pub(super) const L1: Mfn = 4;
/// Data frames mapped writable at L1[0..4] (va 0x0, 0x1000, ...).
pub(super) const DATA: Mfn = 10;

/// The standard tree, built the way a guest does it: fill the frames while
/// they are plain memory, pin the L4 (which validates downwards), load it.
pub(super) fn tree() -> (Mm, Mem, AddressSpace) {
    let (mut mm, mut mem) = machine();
    mem.poke(L4, 0, table(L3));
    mem.poke(L3, 0, table(L2));
    mem.poke(L2, 0, table(L1));
    for i in 0..4 {
        mem.poke(L1, i as usize, rw(DATA + i));
    }
    mm.pin(&mut mem, DOM, L4, Level::L4).unwrap();
    let mut space = AddressSpace::new(DOM);
    mm.switch_root(&mut space, L4).unwrap();
    audit::audit(&mm, &mem).unwrap();
    (mm, mem, space)
}

/// Everything a refused operation must leave unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Snapshot {
    frames: Vec<FrameView>,
    mem: Mem,
}

pub(super) fn snapshot(mm: &Mm, mem: &Mem) -> Snapshot {
    Snapshot {
        frames: (0..mm.frame_count())
            .map(|p| mm.frame(p).unwrap().view())
            .collect(),
        mem: mem.clone(),
    }
}

/// Asserts a refusal: the exact error, and that nothing changed.
#[track_caller]
pub(super) fn assert_refused<T: core::fmt::Debug>(
    mm: &Mm,
    mem: &Mem,
    before: &Snapshot,
    result: Result<T, MmError>,
    want: MmError,
) {
    assert_eq!(result.unwrap_err(), want);
    assert_eq!(
        &snapshot(mm, mem),
        before,
        "a refused operation changed state"
    );
    audit::audit(mm, mem).unwrap();
}

pub(super) fn view(mm: &Mm, mfn: Mfn) -> FrameView {
    mm.frame(mfn).unwrap().view()
}
