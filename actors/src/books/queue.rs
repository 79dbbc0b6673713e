//! The waiters' queue: first come, first served, and any waiter may leave (a timeout, a dropped
//! acquire). Ids only grow, so the queue is a deque in id order; a waiter that leaves becomes
//! a hole (found by binary search), skipped when it reaches the front and swept when holes
//! outnumber waiters. Joining is a push at the back — no tree to rebalance, which is what a
//! `BTreeMap` cost on every queued acquire (about 450 instructions at 4 000 waiters, measured
//! with callgrind in bench S5).

use std::collections::VecDeque;

use super::WaiterId;

/// Slots an empty queue may keep for the next waiters.
const KEEP_CAPACITY: usize = 256;

/// Queued waiters' payloads by id, in arrival order.
#[derive(Debug)]
pub(crate) struct WaitQueue<W> {
    slots: VecDeque<(WaiterId, Option<W>)>,
    live: usize,
}

impl<W> Default for WaitQueue<W> {
    fn default() -> Self {
        Self {
            slots: VecDeque::new(),
            live: 0,
        }
    }
}

impl<W> WaitQueue<W> {
    /// Waiters queued.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Slots held, holes included (for leak checks).
    pub(crate) fn storage(&self) -> usize {
        self.slots.len()
    }

    /// Queues `waiter`; `id` must be above every id queued before.
    pub(crate) fn push(&mut self, id: WaiterId, waiter: W) {
        debug_assert!(self.slots.back().is_none_or(|(last, _)| *last < id));
        self.slots.push_back((id, Some(waiter)));
        self.live += 1;
    }

    /// The first waiter in line.
    pub(crate) fn pop_first(&mut self) -> Option<(WaiterId, W)> {
        while let Some((id, slot)) = self.slots.pop_front() {
            if let Some(waiter) = slot {
                self.live -= 1;
                if self.live == 0 {
                    self.emptied();
                }
                return Some((id, waiter));
            }
        }
        None
    }

    /// The last waiter left: holes go, and a burst's storage is given back (a deque keeps its
    /// capacity otherwise — 10 000 waiters would hold ~640 KB for good).
    fn emptied(&mut self) {
        if self.slots.capacity() > KEEP_CAPACITY {
            self.slots = VecDeque::new();
        } else {
            self.slots.clear();
        }
    }

    /// Takes waiter `id` out of the line, if it is queued.
    pub(crate) fn remove(&mut self, id: WaiterId) -> Option<W> {
        let at = self.slots.binary_search_by_key(&id, |(id, _)| *id).ok()?;
        let waiter = self.slots[at].1.take()?;
        self.live -= 1;
        if self.live == 0 {
            self.emptied();
        } else if self.slots.len() > 2 * self.live + 16 {
            self.slots.retain(|(_, slot)| slot.is_some());
        }
        Some(waiter)
    }

    /// Waiter `id`'s payload, if it is queued.
    pub(crate) fn get_mut(&mut self, id: WaiterId) -> Option<&mut W> {
        let at = self.slots.binary_search_by_key(&id, |(id, _)| *id).ok()?;
        self.slots[at].1.as_mut()
    }

    pub(crate) fn contains(&self, id: WaiterId) -> bool {
        self.slots
            .binary_search_by_key(&id, |(id, _)| *id)
            .is_ok_and(|at| self.slots[at].1.is_some())
    }

    /// The queued ids, first in line first.
    pub(crate) fn ids(&self) -> impl Iterator<Item = WaiterId> + '_ {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.is_some())
            .map(|(id, _)| *id)
    }

    /// Empties the queue: every waiter with its id, first in line first.
    pub(crate) fn take_all(&mut self) -> impl Iterator<Item = (WaiterId, W)> {
        self.live = 0;
        std::mem::take(&mut self.slots)
            .into_iter()
            .filter_map(|(id, slot)| Some((id, slot?)))
    }
}

#[cfg(test)]
mod tests {
    use super::WaitQueue;

    #[test]
    fn first_come_first_served_around_waiters_who_left() {
        let mut q = WaitQueue::default();
        for id in 0..5 {
            q.push(id, id * 10);
        }
        assert_eq!(q.remove(1), Some(10));
        assert_eq!(q.remove(1), None, "gone already");
        assert_eq!(q.remove(7), None, "never queued");
        assert!(!q.contains(1) && q.contains(2));
        assert_eq!(q.get_mut(1), None, "a hole has no payload");
        assert_eq!(q.get_mut(9), None, "never queued");
        *q.get_mut(2).unwrap() += 1;
        assert_eq!(q.len(), 4);
        assert_eq!(q.ids().collect::<Vec<_>>(), [0, 2, 3, 4]);
        assert_eq!(q.pop_first(), Some((0, 0)));
        assert_eq!(q.pop_first(), Some((2, 21)), "the hole is skipped");
        assert_eq!(q.take_all().collect::<Vec<_>>(), [(3, 30), (4, 40)]);
        assert!(q.is_empty());
        assert_eq!((q.storage(), q.pop_first()), (0, None));
    }

    #[test]
    fn holes_are_swept_so_storage_follows_the_waiters() {
        let mut q = WaitQueue::default();
        for id in 0..100 {
            q.push(id, ());
        }
        for id in 0..90 {
            q.remove(id).unwrap();
        }
        assert_eq!(q.len(), 10);
        assert!(q.storage() <= 2 * 10 + 16, "{} slots", q.storage());
        assert_eq!(q.ids().collect::<Vec<_>>(), (90..100).collect::<Vec<_>>());
        for id in 90..100 {
            q.remove(id).unwrap();
        }
        assert_eq!(q.storage(), 0, "the last one leaving empties it");
    }

    #[test]
    fn an_emptied_queue_gives_a_burst_s_storage_back() {
        let mut q = WaitQueue::default();
        for id in 0..10_000 {
            q.push(id, ());
        }
        while q.pop_first().is_some() {}
        assert!(
            q.slots.capacity() <= super::KEEP_CAPACITY,
            "{} slots kept",
            q.slots.capacity()
        );
        for id in 10_000..10_010 {
            q.push(id, ());
        }
        q.remove(10_005).unwrap();
        assert_eq!(q.pop_first(), Some((10_000, ())), "it works on after");
    }
}
