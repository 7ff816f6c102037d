//! Scheduler queues: the round-robin run queue and the deadline queue.
//!
//! Both are O(1) or O(log n) per operation, so the cost of a switch does
//! not grow with the number of domains (SCHED-0).

use crate::event::DomId;
use alloc::collections::{BinaryHeap, VecDeque};
use core::cmp::Reverse;

/// Runnable domains in round-robin order. A domain is in the queue at most
/// once.
#[derive(Debug, Default)]
pub struct RunQueue {
    queue: VecDeque<DomId>,
    queued: alloc::vec::Vec<bool>,
}

impl RunQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn flag(&mut self, dom: DomId) -> &mut bool {
        let i = usize::from(dom);
        if self.queued.len() <= i {
            self.queued.resize(i + 1, false);
        }
        &mut self.queued[i]
    }

    /// Appends `dom` unless it is already queued. Returns whether it was added.
    pub fn push(&mut self, dom: DomId) -> bool {
        let f = self.flag(dom);
        if *f {
            return false;
        }
        *f = true;
        self.queue.push_back(dom);
        true
    }

    /// Takes the domain at the front.
    pub fn pop(&mut self) -> Option<DomId> {
        let d = self.queue.pop_front()?;
        *self.flag(d) = false;
        Some(d)
    }

    /// Whether `dom` is queued.
    pub fn contains(&self, dom: DomId) -> bool {
        self.queued.get(usize::from(dom)).copied().unwrap_or(false)
    }

    /// Removes `dom` wherever it is (O(n); only on destruction).
    pub fn remove(&mut self, dom: DomId) {
        if self.contains(dom) {
            self.queue.retain(|&d| d != dom);
            *self.flag(dom) = false;
        }
    }

    /// Queued domains.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is runnable.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// The domain's `block` deadline.
    Block,
    /// The domain's one-shot timer (`timer_set`).
    OneShot,
}

/// Pending deadlines of all domains, earliest first. Cancelling is lazy:
/// the owner records which deadline is armed and [`Deadlines::expire`]
/// drops entries that no longer match.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(u64, DomId, TimerKind)>>,
}

impl Deadlines {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a deadline.
    pub fn arm(&mut self, at: u64, dom: DomId, kind: TimerKind) {
        self.heap.push(Reverse((at, dom, kind)));
    }

    /// The earliest deadline still armed according to `is_armed`, dropping
    /// stale entries on the way.
    pub fn next(&mut self, mut is_armed: impl FnMut(DomId, TimerKind, u64) -> bool) -> Option<u64> {
        while let Some(&Reverse((at, dom, kind))) = self.heap.peek() {
            if is_armed(dom, kind, at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Removes and returns one deadline at or before `now` that is still
    /// armed; call until `None`.
    pub fn expire(
        &mut self,
        now: u64,
        mut is_armed: impl FnMut(DomId, TimerKind, u64) -> bool,
    ) -> Option<(DomId, TimerKind)> {
        while let Some(&Reverse((at, dom, kind))) = self.heap.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if is_armed(dom, kind, at) {
                return Some((dom, kind));
            }
        }
        None
    }

    /// Entries held (armed or stale).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn round_robin_without_duplicates() {
        let mut q = RunQueue::new();
        assert!(q.push(3) && q.push(1) && !q.push(3));
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(3));
        q.push(3);
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(1), Some(3), None));
        q.push(5);
        q.push(6);
        q.remove(5);
        assert!(!q.contains(5));
        assert_eq!(q.pop(), Some(6));
    }

    #[test]
    fn deadlines_fire_in_order_and_stale_ones_are_dropped() {
        let mut d = Deadlines::new();
        let mut armed: HashMap<(DomId, TimerKind), u64> = HashMap::new();
        for (at, dom) in [(30, 1), (10, 2), (20, 3)] {
            d.arm(at, dom, TimerKind::OneShot);
            armed.insert((dom, TimerKind::OneShot), at);
        }
        // Domain 2 re-arms later: its old entry is stale.
        d.arm(40, 2, TimerKind::OneShot);
        armed.insert((2, TimerKind::OneShot), 40);
        assert_eq!(
            d.next(|dom, kind, at| armed.get(&(dom, kind)) == Some(&at)),
            Some(20)
        );
        assert_eq!(
            d.expire(25, |dom, kind, at| armed.get(&(dom, kind)) == Some(&at)),
            Some((3, TimerKind::OneShot))
        );
        armed.remove(&(3, TimerKind::OneShot));
        assert_eq!(
            d.expire(25, |dom, kind, at| armed.get(&(dom, kind)) == Some(&at)),
            None
        );
        let mut fired = vec![];
        while let Some(x) = d.expire(100, |dom, kind, at| armed.get(&(dom, kind)) == Some(&at)) {
            fired.push(x);
            armed.remove(&x);
        }
        assert_eq!(
            fired,
            vec![(1, TimerKind::OneShot), (2, TimerKind::OneShot)]
        );
        assert!(d.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn every_pushed_domain_pops_exactly_once(doms in proptest::collection::vec(0u16..50, 0..200)) {
            let mut q = RunQueue::new();
            let mut set = std::collections::BTreeSet::new();
            for d in &doms { q.push(*d); set.insert(*d); }
            let mut out = vec![];
            while let Some(d) = q.pop() { out.push(d); }
            let got: std::collections::BTreeSet<_> = out.iter().copied().collect();
            proptest::prop_assert_eq!(out.len(), got.len());
            proptest::prop_assert_eq!(got, set);
        }
    }
}
