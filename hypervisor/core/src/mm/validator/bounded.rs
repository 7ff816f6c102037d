//! Long page-table operations in bounded steps (MMU-35, MMU-36).
//!
//! Pinning a tree validates every entry below its root, unpinning the last
//! reference releases them all, and tearing a domain down does both for
//! every pinned table: work proportional to the tree, 16,000 L1 tables and
//! more. Done in one go, that is half a second with interrupts off. Here
//! each of them does at most a [`Budget`] of work per invocation, leaves
//! its progress in the frame table and a small [`Pending`] record, and is
//! resumed by the next invocation: Xen's `PGT_partial` plus
//! `hypercall_create_continuation`.
//!
//! The progress lives in the frame table so that the accounting stays
//! exact at every preemption point (the audit passes in the middle):
//!
//! * a table being validated or released is flagged *partial*, and only its
//!   first [`FrameInfo::partial_entries`] guest entries hold references;
//! * the partial tables of one operation form a *chain* from its root down:
//!   the last referencing entry of each partial table names the next one,
//!   so the chain (at most four tables) is found again from the root alone;
//! * the root holds the operation's own reference (flag `OP_REF`): the pin
//!   being taken, or the pin being dropped;
//! * every other operation refuses to reference, update or walk a partial
//!   table (`MmError::Busy`), so nothing but the operation itself sees one,
//!   and nothing changes the entries it has yet to visit (a table-typed
//!   frame is never guest-writable).
//!
//! A pin that meets a refused entry undoes what it did, in bounded steps
//! too, and reports the refusal when it has: as with the unbounded pin, a
//! refused pin leaves the frame table as it found it.
//!
//! An `mmu_update` entry that links a table not yet in use, or drops a
//! table's last reference, runs the same machinery within what is left of
//! its call's budget, but never leaves anything pending: if the budget runs
//! out it undoes its work and refuses the entry (MMU-37 .. MMU-39), so a
//! large subtree is pinned first (preemptible) and then linked or unlinked
//! in O(1).

use super::super::frame::{DomId, FrameInfo, FrameType, Owner, OP_REF, PARTIAL, PINNED};
use super::super::pte::{Level, ENTRIES, FIRST_HYPERVISOR_SLOT};
use super::super::{MmError, PhysMem};
use super::Mm;
use crate::frames::Mfn;
use crate::mm::TableType;

/// The step budget of one invocation: the hypervisor gives each pin, unpin
/// and `mmu_update` call this many (about 0.3 ms of work under TCG), and an
/// `mmu_update` entry links or unlinks at most what remains of it (MMU-37).
pub const OP_STEPS: u64 = 4096;

/// How much work one invocation may still do, in steps: one page-table
/// entry validated or released, one table finished, or (teardown's scan)
/// one owned frame or 16 others looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    left: u64,
    spent: u64,
}

impl Budget {
    /// At most `steps` steps.
    pub const fn new(steps: u64) -> Budget {
        Budget {
            left: steps,
            spent: 0,
        }
    }

    /// No bound: the operation runs to its end.
    pub const fn unlimited() -> Budget {
        Budget::new(u64::MAX)
    }

    /// Steps taken so far.
    pub const fn spent(&self) -> u64 {
        self.spent
    }

    /// Takes one step, if any is left.
    fn take(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.spent += 1;
        true
    }
}

/// Whether a bounded operation finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// It is done.
    Done,
    /// The budget ran out; invoke it again to continue.
    Preempted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Pin(Level),
    Unpin,
    /// An `mmu_update` entry linking a table not yet in use (MMU-37); it
    /// runs within one call, never left pending.
    Link,
    /// An `mmu_update` entry dropping a table's last reference (MMU-38);
    /// also within one call.
    Unlink,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Validating entries, front to back.
    Validate,
    /// Releasing entries, back to front.
    Release,
}

/// A pin or unpin that has started and not finished: what its caller keeps
/// between invocations (the hypervisor keeps one per domain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    dom: DomId,
    root: Mfn,
    op: Op,
    mode: Mode,
    /// A pin met this refusal and is undoing its work, after which it
    /// reports it.
    error: Option<MmError>,
}

impl Pending {
    /// The domain it acts for.
    pub const fn domain(&self) -> DomId {
        self.dom
    }
    /// The frame being pinned or unpinned.
    pub const fn root(&self) -> Mfn {
        self.root
    }
    /// Whether it is a pin (else an unpin).
    pub const fn is_pin(&self) -> bool {
        matches!(self.op, Op::Pin(_))
    }
}

/// A domain's teardown in progress (see [`Mm::teardown_bounded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Teardown {
    dom: DomId,
    /// The next frame to look at.
    next: Mfn,
    /// The unpin of one of its tables that the teardown started.
    current: Option<Pending>,
    unpinned: usize,
}

impl Teardown {
    /// The teardown of `dom`, not started.
    pub const fn new(dom: DomId) -> Teardown {
        Teardown {
            dom,
            next: 0,
            current: None,
            unpinned: 0,
        }
    }
    /// The domain.
    pub const fn domain(&self) -> DomId {
        self.dom
    }
    /// Pins dropped so far.
    pub const fn unpinned(&self) -> usize {
        self.unpinned
    }
}

/// The partial tables of one operation, root first.
struct Chain {
    tables: [(Mfn, Level); 4],
    len: usize,
}

impl Chain {
    fn top(&self) -> Option<(Mfn, Level)> {
        self.len.checked_sub(1).map(|i| self.tables[i])
    }
    fn push(&mut self, mfn: Mfn, level: Level) {
        // Levels strictly decrease down a chain, so four always suffice.
        if let Some(slot) = self.tables.get_mut(self.len) {
            *slot = (mfn, level);
            self.len += 1;
        }
    }
    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }
}

impl Mm {
    fn frame_ref(&mut self, mfn: Mfn) -> Option<&mut FrameInfo> {
        usize::try_from(mfn)
            .ok()
            .and_then(|i| self.frames.get_mut(i))
    }

    /// [`Mm::pin`] in bounded steps (MMU-35). The first invocation checks
    /// and starts the pin and, if the tree is not done within `budget`,
    /// leaves `*pending` set and returns [`Progress::Preempted`]; invoke it
    /// again with the same frame, level and `pending` to continue. When it
    /// ends, `*pending` is `None` again and the result is what
    /// [`Mm::pin`] would have returned. While `*pending` is set, a call for
    /// another frame or level is refused with `OperationPending`.
    pub fn pin_bounded<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        mfn: Mfn,
        level: Level,
        pending: &mut Option<Pending>,
        budget: &mut Budget,
    ) -> Result<Progress, MmError> {
        if let Some(p) = pending {
            if p.dom != dom || p.root != mfn || p.op != Op::Pin(level) {
                return Err(MmError::OperationPending);
            }
            return self.resume(mem, pending, budget);
        }
        let f = self.info(mfn)?;
        if f.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner(mfn));
        }
        if f.held > 0 {
            // The hypervisor writes it on its own account: as a table, its
            // writes would become page-table entries (MEM-8).
            return Err(MmError::HeldFrame(mfn));
        }
        if f.pinned() {
            return Err(MmError::AlreadyPinned(mfn));
        }
        if f.total_count == u32::MAX {
            return Err(MmError::CountOverflow(mfn));
        }
        if f.is_partial() {
            return Err(MmError::Busy(mfn));
        }
        let want = FrameType::table(level);
        if f.ty == want {
            // Already valid (an entry references it): the pin is one more
            // reference.
            let count = f
                .type_count
                .checked_add(1)
                .ok_or(MmError::CountOverflow(mfn))?;
            let f = self.info_mut(mfn)?;
            f.type_count = count;
            f.total_count += 1;
            f.flags |= PINNED;
            return Ok(Progress::Done);
        }
        if f.ty != FrameType::None {
            return Err(MmError::TypeConflict {
                mfn,
                has: f.ty,
                wants: want,
            });
        }
        // Type first, then entries (as `get_table`): a reference back to
        // this frame from below sees a partial table and is refused.
        self.retype(mfn, want)?;
        self.get_total(mfn)?;
        let f = self.info_mut(mfn)?;
        f.flags |= PARTIAL | OP_REF;
        f.partial = 0;
        *pending = Some(Pending {
            dom,
            root: mfn,
            op: Op::Pin(level),
            mode: Mode::Validate,
            error: None,
        });
        self.resume(mem, pending, budget)
    }

    /// Sets entry `index` of `table` (a table of `dom`'s in use, not
    /// partial, `index` a guest slot: [`Mm::update_entry`] checked that) to `new` within `budget`
    /// (MMU-37, MMU-38). References move from the old target to the new
    /// one, as in [`Mm::mmu_update_one`], but a table the new value links
    /// that still needs validating is validated, and a table whose last
    /// reference the old value held is released, only as far as `budget`
    /// goes: if it runs out, whatever was done is undone (which costs no
    /// more than it did), the entry is left as it was, and the entry is
    /// refused with [`MmError::SubtreeTooLarge`]. Nothing is left pending.
    pub(super) fn update_entry_bounded<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        table: Mfn,
        index: usize,
        new: u64,
        budget: &mut Budget,
    ) -> Result<(), MmError> {
        let level = self
            .info(table)?
            .table_level()
            .ok_or(MmError::NotATable(table))?;
        let old = mem.read_entry(table, index);
        // New references first (no "only the flags changed" shortcut), so
        // an unchanged target never drops to zero.
        if let Some(c) = self.validate_one_outlined(dom, table, level, new)? {
            self.link(mem, dom, c, budget)?;
        }
        // `old` as read above: validating `new` wrote only tables below.
        mem.replace_entry(table, index, old, new);
        if self.rules.target_of(old).is_some() {
            self.note_dropping();
        }
        let Some(c) = self.release_one(table, level, old) else {
            return Ok(());
        };
        // `old` held `c`'s last reference: it becomes the operation's.
        if let Some(f) = self.frame_ref(c) {
            f.flags |= OP_REF;
        }
        let mut p = Pending {
            dom,
            root: c,
            op: Op::Unlink,
            mode: Mode::Release,
            error: None,
        };
        if self.run(mem, &mut p, budget) {
            return Ok(());
        }
        // Out of budget: validate again what was released. The entries of
        // `c`'s tree are the ones that were valid at the start of this call
        // (table frames are never guest-writable, and nothing else ran),
        // beside references that were valid with them, so this succeeds.
        p.mode = Mode::Validate;
        let done = self.run(mem, &mut p, &mut Budget::unlimited());
        debug_assert!(done);
        if p.error.is_some() {
            // Cannot happen (see above); were it to, `run` has finished
            // the release instead, and the entry stands as written: the
            // accounting is exact either way.
            return Ok(());
        }
        if let Some(f) = self.frame_ref(c) {
            // The operation's reference is the entry's again.
            f.flags &= !OP_REF;
        }
        mem.write_entry(table, index, old);
        // Drop what `new` took: a table it linked was validated within
        // this call's budget, so releasing it is bounded too.
        self.put_entry(mem, table, level, new);
        Err(MmError::SubtreeTooLarge)
    }

    /// Validates `c`, just typed and made partial by [`Mm::validate_one`],
    /// and the tree below it, within `budget`. On a refusal or when the
    /// budget runs out, undoes it (`c` untyped, its reference dropped).
    fn link<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        c: Mfn,
        budget: &mut Budget,
    ) -> Result<(), MmError> {
        if let Some(f) = self.frame_ref(c) {
            f.flags |= OP_REF;
        }
        let mut p = Pending {
            dom,
            root: c,
            op: Op::Link,
            mode: Mode::Validate,
            error: None,
        };
        if !self.run(mem, &mut p, budget) {
            // Undo, at no more cost than the work done.
            p.mode = Mode::Release;
            p.error = p.error.or(Some(MmError::SubtreeTooLarge));
            let done = self.run(mem, &mut p, &mut Budget::unlimited());
            debug_assert!(done);
        }
        if let Some(e) = p.error {
            return Err(e);
        }
        if let Some(f) = self.frame_ref(c) {
            // The operation's reference becomes the entry's.
            f.flags &= !OP_REF;
        }
        Ok(())
    }

    /// [`Mm::unpin`] in bounded steps (MMU-35), resumed like
    /// [`Mm::pin_bounded`]. The pin is gone from the first invocation on;
    /// the rest releases the tree.
    pub fn unpin_bounded<M: PhysMem>(
        &mut self,
        mem: &mut M,
        dom: DomId,
        mfn: Mfn,
        pending: &mut Option<Pending>,
        budget: &mut Budget,
    ) -> Result<Progress, MmError> {
        if let Some(p) = pending {
            if p.dom != dom || p.root != mfn || p.op != Op::Unpin {
                return Err(MmError::OperationPending);
            }
            return self.resume(mem, pending, budget);
        }
        let f = self.info(mfn)?;
        if f.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner(mfn));
        }
        let level = match f.ty.level() {
            Some(level) if f.pinned() => level,
            _ => return Err(MmError::NotPinned(mfn)),
        };
        if f.loaded > 0 {
            return Err(MmError::RootLoaded(mfn));
        }
        if !self.start_release(mfn, level) {
            return Ok(Progress::Done);
        }
        *pending = Some(Pending {
            dom,
            root: mfn,
            op: Op::Unpin,
            mode: Mode::Release,
            error: None,
        });
        self.resume(mem, pending, budget)
    }

    /// Drops the pin on `mfn`. Returns whether that was its last reference,
    /// in which case the pin became the operation's reference and the tree
    /// is to be released.
    fn start_release(&mut self, mfn: Mfn, level: Level) -> bool {
        self.note_dropped(mfn);
        let Some(f) = self.frame_ref(mfn) else {
            return false;
        };
        f.flags &= !PINNED;
        if f.type_count > 1 {
            f.type_count -= 1;
            f.total_count = f.total_count.saturating_sub(1);
            return false;
        }
        f.flags |= PARTIAL | OP_REF;
        f.partial = slot16(level.guest_slots());
        true
    }

    /// Runs `*pending` on; reports its end when it ends.
    fn resume<M: PhysMem>(
        &mut self,
        mem: &mut M,
        pending: &mut Option<Pending>,
        budget: &mut Budget,
    ) -> Result<Progress, MmError> {
        let Some(p) = pending.as_mut() else {
            return Ok(Progress::Done);
        };
        if !self.run(mem, p, budget) {
            return Ok(Progress::Preempted);
        }
        let p = *p;
        *pending = None;
        if let Some(e) = p.error {
            return Err(e);
        }
        if p.op != Op::Unpin {
            // The operation's reference becomes the pin.
            if let Some(f) = self.frame_ref(p.root) {
                f.flags = (f.flags & !OP_REF) | PINNED;
            }
        }
        Ok(Progress::Done)
    }

    /// The partial tables of the operation rooted at `root`.
    fn chain<M: PhysMem>(&self, mem: &M, root: Mfn) -> Chain {
        let mut chain = Chain {
            tables: [(0, Level::L1); 4],
            len: 0,
        };
        let Some(level) = self.frame(root).and_then(|f| f.ty.level()) else {
            return chain;
        };
        chain.push(root, level);
        while let Some((table, level)) = chain.top() {
            let Some(f) = self.frame(table) else { break };
            let (Some(below), Some(last)) = (level.below(), f.partial_entries().checked_sub(1))
            else {
                break;
            };
            let Some(t) = self.rules.target_of(mem.read_entry(table, last)) else {
                break;
            };
            if t.mfn == table || !self.frame(t.mfn).is_some_and(|c| c.is_partial()) {
                break;
            }
            chain.push(t.mfn, below);
        }
        chain
    }

    /// Works on the operation `p` until it ends (`true`) or `budget` runs
    /// out (`false`). Every step leaves the accounting exact.
    fn run<M: PhysMem>(&mut self, mem: &mut M, p: &mut Pending, budget: &mut Budget) -> bool {
        let mut chain = self.chain(mem, p.root);
        while let Some((table, level)) = chain.top() {
            if !budget.take() {
                return false;
            }
            let Ok(f) = self.info(table) else {
                return true;
            };
            let v = f.partial_entries();
            match p.mode {
                Mode::Validate if v >= level.guest_slots() => {
                    // The table is valid: it leaves the chain.
                    if level == Level::L4 {
                        for (i, e) in self.template.iter().enumerate() {
                            mem.write_entry(table, FIRST_HYPERVISOR_SLOT + i, *e);
                        }
                    }
                    if let Some(f) = self.frame_ref(table) {
                        f.flags &= !PARTIAL;
                        f.partial = 0;
                    }
                    chain.pop();
                }
                Mode::Validate => {
                    let (v, child, error, preempted) =
                        self.validate_entries(mem, p.dom, table, level, v, budget);
                    if let Some(f) = self.frame_ref(table) {
                        f.partial = slot16(v);
                    }
                    if let Some(e) = error {
                        // Undo, back to front, then report `e`.
                        p.error = Some(e);
                        p.mode = Mode::Release;
                    }
                    if preempted {
                        return false;
                    }
                    if let (Some(c), Some(below)) = (child, level.below()) {
                        chain.push(c, below);
                    }
                }
                Mode::Release if v == 0 => {
                    // Nothing left in the table: drop the reference that
                    // kept it (its parent's entry, or the operation's).
                    // An L4 is only ever a chain's root; it carries the
                    // hypervisor's slots if it was valid (an unpin), and
                    // they must not stay in a frame the guest may read.
                    if level == Level::L4 && p.op == Op::Unpin {
                        for i in FIRST_HYPERVISOR_SLOT..ENTRIES {
                            mem.write_entry(table, i, 0);
                        }
                    }
                    self.note_dropped(table);
                    if let Some(f) = self.frame_ref(table) {
                        f.flags &= !(PARTIAL | OP_REF);
                        f.partial = 0;
                        f.type_count = f.type_count.saturating_sub(1);
                        f.total_count = f.total_count.saturating_sub(1);
                        if f.type_count == 0 {
                            f.ty = FrameType::None;
                        }
                    }
                    chain.pop();
                    if let Some((parent, _)) = chain.top() {
                        if let Some(f) = self.frame_ref(parent) {
                            f.partial = f.partial.saturating_sub(1);
                        }
                    }
                }
                Mode::Release => {
                    let (v, child, preempted) =
                        self.release_entries_from(mem, table, level, v, budget);
                    if let Some(f) = self.frame_ref(table) {
                        f.partial = slot16(v);
                    }
                    if preempted {
                        return false;
                    }
                    if let (Some(c), Some(below)) = (child, level.below()) {
                        chain.push(c, below);
                    }
                }
            }
        }
        true
    }

    /// Validates entries `v..` of `table` in a tight loop, the first one
    /// already paid for: until a table below must be validated first (it
    /// is returned), an entry is refused (the error), the table is done, or
    /// `budget` runs out (`true`). Returns the entries now validated.
    ///
    /// Never inlined, like [`Mm::release_entries_from`]: each per-entry
    /// loop gets the registers of a function of its own (inlined into
    /// [`Mm::run`] together, one loop's values were spilled around the
    /// other's).
    #[inline(never)]
    fn validate_entries<M: PhysMem>(
        &mut self,
        mem: &M,
        dom: DomId,
        table: Mfn,
        level: Level,
        mut v: usize,
        budget: &mut Budget,
    ) -> (usize, Option<Mfn>, Option<MmError>, bool) {
        let slots = level.guest_slots();
        // The budget in a local: this loop runs once per entry.
        let (allowed, mut taken) = (budget.left, 0);
        let r = loop {
            match self.validate_one(dom, table, level, mem.read_entry(table, v)) {
                Ok(None) => v += 1,
                Ok(Some(c)) => break (v + 1, Some(c), None, false),
                Err(e) => break (v, None, Some(e), false),
            }
            if v >= slots {
                break (v, None, None, false);
            }
            if taken == allowed {
                break (v, None, None, true);
            }
            taken += 1;
        };
        budget.left -= taken;
        budget.spent += taken;
        r
    }

    /// Releases entries `..v` of `table`, back to front, the first one
    /// already paid for: until a table below must be released first (it
    /// is returned, its entry still counted), none is left, or `budget`
    /// runs out (`true`). Returns the entries still holding references.
    /// Never inlined (see [`Mm::validate_entries`]).
    #[inline(never)]
    fn release_entries_from<M: PhysMem>(
        &mut self,
        mem: &M,
        table: Mfn,
        level: Level,
        mut v: usize,
        budget: &mut Budget,
    ) -> (usize, Option<Mfn>, bool) {
        let (allowed, mut taken) = (budget.left, 0);
        // Once for the batch, not per entry (see `put_data_unflagged`):
        // `release_one` drops references without setting it.
        self.note_dropping();
        let r = loop {
            if let Some(c) = self.release_one(table, level, mem.read_entry(table, v - 1)) {
                break (v, Some(c), false);
            }
            v -= 1;
            if v == 0 {
                break (0, None, false);
            }
            if taken == allowed {
                break (v, None, true);
            }
            taken += 1;
        };
        budget.left -= taken;
        budget.spent += taken;
        r
    }

    /// [`Mm::validate_one`] as a call of its own, for the one entry of an
    /// `mmu_update`: inlined there, it made each entry 6 instructions
    /// dearer (`mmu_update_batch_*`, see docs/benchmarks.md).
    #[inline(never)]
    fn validate_one_outlined(
        &mut self,
        dom: DomId,
        table: Mfn,
        level: Level,
        value: u64,
    ) -> Result<Option<Mfn>, MmError> {
        self.validate_one(dom, table, level, value)
    }

    /// Takes the references entry `value` of `table` needs, without
    /// descending: a table not yet in use below it is typed, made partial
    /// and returned, to be validated next.
    ///
    /// Always inlined: it runs once per entry of every table a pin
    /// validates, and as a call it cost ~20 instructions of the ~70 an entry
    /// takes (six saved registers, the argument moves, the result passed
    /// through memory); see docs/bench-history/regressions.md, issue 8's regressions.
    #[inline(always)]
    pub(super) fn validate_one(
        &mut self,
        dom: DomId,
        table: Mfn,
        level: Level,
        value: u64,
    ) -> Result<Option<Mfn>, MmError> {
        let Some(t) = self.rules.check(level, value)? else {
            return Ok(None);
        };
        self.info(t.mfn)?;
        let Some(below) = level.below() else {
            self.get_data(dom, t)?;
            return Ok(None);
        };
        if level == Level::L4 && t.mfn == table {
            // A linear entry: read-only, no reference (MMU-10).
            return if t.writable {
                Err(MmError::WritableSelfMap)
            } else {
                Ok(None)
            };
        }
        let want = FrameType::table(below);
        let f = self.info(t.mfn)?;
        if f.owner != Owner::Domain(dom) {
            return Err(MmError::NotOwner(t.mfn));
        }
        if f.held > 0 {
            // As in the pin above (MEM-8).
            return Err(MmError::HeldFrame(t.mfn));
        }
        if f.total_count == u32::MAX {
            return Err(MmError::CountOverflow(t.mfn));
        }
        if f.is_partial() {
            return Err(MmError::Busy(t.mfn));
        }
        if f.ty == want {
            let count = f
                .type_count
                .checked_add(1)
                .ok_or(MmError::CountOverflow(t.mfn))?;
            self.info_mut(t.mfn)?.type_count = count;
            self.get_total(t.mfn)?;
            return Ok(None);
        }
        if f.ty != FrameType::None {
            return Err(MmError::TypeConflict {
                mfn: t.mfn,
                has: f.ty,
                wants: want,
            });
        }
        self.retype(t.mfn, want)?;
        self.get_total(t.mfn)?;
        let f = self.info_mut(t.mfn)?;
        f.flags |= PARTIAL;
        f.partial = 0;
        Ok(Some(t.mfn))
    }

    /// Drops the references entry `value` of `table` holds, without
    /// descending: a table whose last reference it is becomes partial
    /// (all its entries still hold theirs) and is returned, to be released
    /// next; the entry keeps its reference until then.
    ///
    /// Does not set `dropped_this_epoch`: the caller must have noted the
    /// drop ([`Mm::note_dropping`]) if `value` names a target.
    #[inline]
    fn release_one(&mut self, table: Mfn, level: Level, value: u64) -> Option<Mfn> {
        let t = self.rules.target_of(value)?;
        let Some(below) = level.below() else {
            self.put_data_unflagged(t);
            return None;
        };
        if level == Level::L4 && t.mfn == table {
            return None;
        }
        let f = self.frame_ref(t.mfn)?;
        if f.type_count > 1 {
            f.type_count -= 1;
            f.total_count = f.total_count.saturating_sub(1);
            self.note_dropped_unflagged(t.mfn);
            return None;
        }
        f.flags |= PARTIAL;
        f.partial = slot16(below.guest_slots());
        Some(t.mfn)
    }

    /// Tears `t`'s domain down in bounded steps (MMU-16, MMU-36): first
    /// undoes the pin or finishes the unpin it left half done (`*pending`,
    /// if it is that domain's), then unloads its roots and unpins every
    /// pinned table, releasing their trees. Invoke again with the same `t`
    /// until it returns [`Progress::Done`]; then every frame of the domain
    /// is idle (or `Special`) and may be given back with [`Mm::assign`].
    /// The domain must not run in between.
    ///
    /// Looks at every frame of the machine (one step per 16 it does not
    /// own); [`Mm::teardown_frames_bounded`] looks only at a list.
    pub fn teardown_bounded<M: PhysMem>(
        &mut self,
        mem: &mut M,
        t: &mut Teardown,
        pending: &mut Option<Pending>,
        budget: &mut Budget,
    ) -> Progress {
        let count = self.frame_count();
        self.teardown_scan(mem, t, pending, budget, |i| (i < count).then_some(i))
    }

    /// [`Mm::teardown_bounded`] looking only at `frames`, which must hold
    /// every frame the domain owns (the hypervisor's list of them): work
    /// proportional to the domain, not to the machine. Pass the same list
    /// to every invocation.
    pub fn teardown_frames_bounded<M: PhysMem>(
        &mut self,
        mem: &mut M,
        t: &mut Teardown,
        frames: &[Mfn],
        pending: &mut Option<Pending>,
        budget: &mut Budget,
    ) -> Progress {
        self.teardown_scan(mem, t, pending, budget, |i| {
            usize::try_from(i).ok().and_then(|i| frames.get(i)).copied()
        })
    }

    /// The teardown, over the frames `frame_at(0)`, `frame_at(1)`, ...
    /// until `None`.
    fn teardown_scan<M: PhysMem>(
        &mut self,
        mem: &mut M,
        t: &mut Teardown,
        pending: &mut Option<Pending>,
        budget: &mut Budget,
        frame_at: impl Fn(u64) -> Option<Mfn>,
    ) -> Progress {
        if let Some(p) = pending.as_mut().filter(|p| p.dom == t.dom) {
            // An abandoned pin is undone; an unpin is finished. Either way
            // what remains is releasing.
            p.mode = Mode::Release;
            if !self.run(mem, p, budget) {
                return Progress::Preempted;
            }
            *pending = None;
        }
        loop {
            if let Some(p) = t.current.as_mut() {
                if !self.run(mem, p, budget) {
                    return Progress::Preempted;
                }
                t.current = None;
            }
            let Some(mfn) = frame_at(t.next) else {
                return Progress::Done;
            };
            let f = self.frame(mfn).copied().unwrap_or_default();
            let owned = f.owner == Owner::Domain(t.dom);
            if (owned || t.next.is_multiple_of(16)) && !budget.take() {
                return Progress::Preempted;
            }
            t.next += 1;
            if !owned {
                continue;
            }
            if let Some(f) = self.frame_ref(mfn) {
                f.loaded = 0;
            }
            if f.held_by_operation() {
                // The root of an operation whose record was not handed in:
                // its chain is found again from here, and released.
                t.current = Some(Pending {
                    dom: t.dom,
                    root: mfn,
                    op: Op::Unpin,
                    mode: Mode::Release,
                    error: None,
                });
                continue;
            }
            let Some(level) = f.ty.level().filter(|_| f.pinned()) else {
                continue;
            };
            t.unpinned += 1;
            if self.start_release(mfn, level) {
                t.current = Some(Pending {
                    dom: t.dom,
                    root: mfn,
                    op: Op::Unpin,
                    mode: Mode::Release,
                    error: None,
                });
            }
        }
    }
}

/// An entry index of a table (at most 512, `Level::guest_slots`) as the
/// frame's `partial` field. Not guest-controlled, and on the validator's
/// hot path: a plain conversion, its bound asserted in debug builds.
#[inline(always)]
#[allow(clippy::cast_possible_truncation)]
fn slot16(v: usize) -> u16 {
    debug_assert!(v <= 512);
    v as u16
}
