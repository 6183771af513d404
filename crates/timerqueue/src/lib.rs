//! Ordered timer queue keyed by absolute u64 expiry with generation-checked handles.
//!
//! This is Lull's counterpart of Linux's `lib/timerqueue.c`: the data structure under each
//! hrtimer clock base. Timers are ordered by `(expiry, insertion sequence)`, so timers with the
//! same expiry leave the queue in the order they entered it (FIFO), which keeps timer callbacks
//! deterministic.
//!
//! Costs (n = number of queued timers):
//!
//! | operation                         | cost          |
//! |-----------------------------------|---------------|
//! | [`TimerQueue::insert`]            | O(log n)      |
//! | [`TimerQueue::remove`]            | O(log n)      |
//! | [`TimerQueue::peek`]              | O(1) (cached) |
//! | [`TimerQueue::pop`]               | O(log n)      |
//! | [`TimerQueue::get`] / `expiry`    | O(1)          |
//!
//! Handles are `(slot index, generation)` pairs. Every time a slot is freed its generation is
//! bumped, so a handle kept after its timer was removed or expired is *refused* with
//! [`StaleHandle`] instead of silently naming whatever timer reused the slot. A slot whose
//! generation counter would wrap is retired for good, so aliasing is impossible even after
//! 2^32 reuses.
//!
//! Expiries are plain `u64` values compared with `<`: the queue is meant for monotonic
//! nanoseconds since boot, which do not wrap for 584 years. (Wrapping tick counters belong in
//! `lull-wheel`, which compares with wrapping differences.)
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

/// Names one queued timer. Cheap to copy; refused once the timer has left the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerHandle {
    index: u32,
    generation: u32,
}

impl TimerHandle {
    /// The slot index, stable while the timer is queued. Useful as a printable identity
    /// (e.g. the `<id>` column of `/proc/timer_list`).
    pub fn index(self) -> u32 {
        self.index
    }

    /// The slot generation this handle was issued for.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// The handle does not name a queued timer (it was removed, expired, or never issued here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleHandle;

impl fmt::Display for StaleHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timer handle is stale: the timer is no longer queued")
    }
}

/// The queue cannot hold more timers: all 2^32 - 1 slot indices are in use or retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

impl fmt::Display for QueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timer queue is full")
    }
}

/// Marks the end of the free-slot list.
const NO_SLOT: u32 = u32::MAX;

enum SlotState<T> {
    Occupied {
        expiry: u64,
        sequence: u64,
        value: T,
    },
    Vacant {
        next_free: u32,
    },
}

struct Slot<T> {
    generation: u32,
    state: SlotState<T>,
}

/// A queued timer as seen through [`TimerQueue::peek`] and [`TimerQueue::iter`].
#[derive(Debug)]
pub struct QueuedTimer<'a, T> {
    /// The timer's handle.
    pub handle: TimerHandle,
    /// Absolute expiry the queue is ordered by.
    pub expiry: u64,
    /// The caller's payload.
    pub value: &'a T,
}

/// A timer that left the queue through [`TimerQueue::pop`] or [`TimerQueue::pop_expired`].
#[derive(Debug, PartialEq, Eq)]
pub struct RemovedTimer<T> {
    /// The handle it had while queued (now stale).
    pub handle: TimerHandle,
    /// Its expiry.
    pub expiry: u64,
    /// The caller's payload, handed back.
    pub value: T,
}

/// Ordered queue of timers; see the crate documentation.
pub struct TimerQueue<T> {
    /// `(expiry, sequence) -> slot index`: the order of expiry.
    order: BTreeMap<(u64, u64), u32>,
    slots: Vec<Slot<T>>,
    free_head: u32,
    next_sequence: u64,
    /// Cached first entry of `order`, so `peek` is O(1).
    earliest: Option<((u64, u64), u32)>,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerQueue<T> {
    /// An empty queue. Does not allocate.
    pub const fn new() -> Self {
        Self {
            order: BTreeMap::new(),
            slots: Vec::new(),
            free_head: NO_SLOT,
            next_sequence: 0,
            earliest: None,
        }
    }

    /// Number of queued timers.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no timer is queued.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Queues `value` to expire at `expiry`. Among equal expiries, earlier inserts come first.
    pub fn insert(&mut self, expiry: u64, value: T) -> Result<TimerHandle, QueueFull> {
        let sequence = self.next_sequence;
        let state = SlotState::Occupied {
            expiry,
            sequence,
            value,
        };
        let index = if self.free_head != NO_SLOT {
            let index = self.free_head;
            let slot = &mut self.slots[index as usize];
            self.free_head = match slot.state {
                SlotState::Vacant { next_free } => next_free,
                // The free list only ever links vacant slots.
                SlotState::Occupied { .. } => NO_SLOT,
            };
            slot.state = state;
            index
        } else {
            let index = u32::try_from(self.slots.len()).map_err(|_| QueueFull)?;
            if index == NO_SLOT {
                return Err(QueueFull);
            }
            self.slots.push(Slot {
                generation: 0,
                state,
            });
            index
        };
        self.next_sequence += 1;
        let key = (expiry, sequence);
        self.order.insert(key, index);
        if self.earliest.is_none_or(|(head_key, _)| key < head_key) {
            self.earliest = Some((key, index));
        }
        Ok(TimerHandle {
            index,
            generation: self.slots[index as usize].generation,
        })
    }

    fn occupied(&self, handle: TimerHandle) -> Result<(u64, u64, &T), StaleHandle> {
        match self.slots.get(handle.index as usize) {
            Some(Slot {
                generation,
                state:
                    SlotState::Occupied {
                        expiry,
                        sequence,
                        value,
                    },
            }) if *generation == handle.generation => Ok((*expiry, *sequence, value)),
            _ => Err(StaleHandle),
        }
    }

    /// True while `handle` names a queued timer.
    pub fn contains(&self, handle: TimerHandle) -> bool {
        self.occupied(handle).is_ok()
    }

    /// The expiry of a queued timer.
    pub fn expiry(&self, handle: TimerHandle) -> Result<u64, StaleHandle> {
        self.occupied(handle).map(|(expiry, _, _)| expiry)
    }

    /// The payload of a queued timer.
    pub fn get(&self, handle: TimerHandle) -> Result<&T, StaleHandle> {
        self.occupied(handle).map(|(_, _, value)| value)
    }

    /// The payload of a queued timer, mutably (its expiry cannot change this way).
    pub fn get_mut(&mut self, handle: TimerHandle) -> Result<&mut T, StaleHandle> {
        match self.slots.get_mut(handle.index as usize) {
            Some(Slot {
                generation,
                state: SlotState::Occupied { value, .. },
            }) if *generation == handle.generation => Ok(value),
            _ => Err(StaleHandle),
        }
    }

    /// The earliest timer, without removing it. O(1).
    pub fn peek(&self) -> Option<QueuedTimer<'_, T>> {
        let ((expiry, _), index) = self.earliest?;
        let slot = &self.slots[index as usize];
        match &slot.state {
            SlotState::Occupied { value, .. } => Some(QueuedTimer {
                handle: TimerHandle {
                    index,
                    generation: slot.generation,
                },
                expiry,
                value,
            }),
            SlotState::Vacant { .. } => None,
        }
    }

    /// Expiry of the earliest timer. O(1).
    pub fn earliest_expiry(&self) -> Option<u64> {
        self.earliest.map(|((expiry, _), _)| expiry)
    }

    /// Removes a queued timer and hands back its expiry and payload.
    pub fn remove(&mut self, handle: TimerHandle) -> Result<(u64, T), StaleHandle> {
        let (expiry, sequence, _) = self.occupied(handle)?;
        self.order.remove(&(expiry, sequence));
        if self
            .earliest
            .is_some_and(|(_, index)| index == handle.index)
        {
            self.earliest = self.order.first_key_value().map(|(k, v)| (*k, *v));
        }
        let value = self.free_slot(handle.index).ok_or(StaleHandle)?;
        Ok((expiry, value))
    }

    /// Moves a queued timer to a new expiry, keeping its handle. It goes behind timers that
    /// already have the same expiry (as if it were inserted now).
    pub fn set_expiry(&mut self, handle: TimerHandle, expiry: u64) -> Result<(), StaleHandle> {
        let (old_expiry, old_sequence, _) = self.occupied(handle)?;
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.order.remove(&(old_expiry, old_sequence));
        self.order.insert((expiry, sequence), handle.index);
        if let SlotState::Occupied {
            expiry: slot_expiry,
            sequence: slot_sequence,
            ..
        } = &mut self.slots[handle.index as usize].state
        {
            *slot_expiry = expiry;
            *slot_sequence = sequence;
        }
        self.earliest = self.order.first_key_value().map(|(k, v)| (*k, *v));
        Ok(())
    }

    /// Removes and returns the earliest timer.
    pub fn pop(&mut self) -> Option<RemovedTimer<T>> {
        let (_, index) = self.earliest?;
        let generation = self.slots[index as usize].generation;
        let handle = TimerHandle { index, generation };
        let (expiry, value) = self.remove(handle).ok()?;
        Some(RemovedTimer {
            handle,
            expiry,
            value,
        })
    }

    /// Removes and returns the earliest timer if its expiry is at or before `now`.
    pub fn pop_expired(&mut self, now: u64) -> Option<RemovedTimer<T>> {
        match self.earliest {
            Some(((expiry, _), _)) if expiry <= now => self.pop(),
            _ => None,
        }
    }

    /// Queued timers in expiry order.
    pub fn iter(&self) -> impl Iterator<Item = QueuedTimer<'_, T>> + '_ {
        self.order.iter().filter_map(move |(&(expiry, _), &index)| {
            let slot = &self.slots[index as usize];
            match &slot.state {
                SlotState::Occupied { value, .. } => Some(QueuedTimer {
                    handle: TimerHandle {
                        index,
                        generation: slot.generation,
                    },
                    expiry,
                    value,
                }),
                SlotState::Vacant { .. } => None,
            }
        })
    }

    /// Empties the slot, bumps its generation (so old handles are refused) and recycles it
    /// unless its generation is exhausted.
    fn free_slot(&mut self, index: u32) -> Option<T> {
        let slot = &mut self.slots[index as usize];
        let old = core::mem::replace(&mut slot.state, SlotState::Vacant { next_free: NO_SLOT });
        // When the generation is exhausted the slot is retired (not put back on the free list):
        // a wrapped generation could make an ancient handle valid again.
        if let Some(next) = slot.generation.checked_add(1) {
            slot.generation = next;
            slot.state = SlotState::Vacant {
                next_free: self.free_head,
            };
            self.free_head = index;
        }
        match old {
            SlotState::Occupied { value, .. } => Some(value),
            // Callers validate occupancy first, so this is not reached.
            SlotState::Vacant { .. } => None,
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for TimerQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|t| (t.handle, t.expiry, t.value)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pops_in_expiry_order_with_fifo_ties() {
        let mut queue = TimerQueue::new();
        queue.insert(30, "c").unwrap();
        queue.insert(10, "a1").unwrap();
        queue.insert(20, "b").unwrap();
        queue.insert(10, "a2").unwrap();
        let order: Vec<_> = core::iter::from_fn(|| queue.pop().map(|t| t.value)).collect();
        assert_eq!(order, ["a1", "a2", "b", "c"]);
        assert!(queue.is_empty());
    }

    #[test]
    fn stale_handles_are_refused_after_remove_and_slot_reuse() {
        let mut queue = TimerQueue::new();
        let first = queue.insert(5, 1).unwrap();
        assert_eq!(queue.remove(first), Ok((5, 1)));
        let second = queue.insert(7, 2).unwrap();
        // Same slot, new generation.
        assert_eq!(first.index(), second.index());
        assert_ne!(first.generation(), second.generation());
        assert_eq!(queue.remove(first), Err(StaleHandle));
        assert_eq!(queue.get(first), Err(StaleHandle));
        assert_eq!(queue.expiry(first), Err(StaleHandle));
        assert!(queue.set_expiry(first, 1).is_err());
        assert_eq!(queue.get(second), Ok(&2));
    }

    #[test]
    fn handle_from_a_popped_timer_is_stale() {
        let mut queue = TimerQueue::new();
        let h = queue.insert(1, ()).unwrap();
        let popped = queue.pop().unwrap();
        assert_eq!(popped.handle, h);
        assert!(!queue.contains(h));
    }

    #[test]
    fn peek_follows_head_removal_and_reexpiry() {
        let mut queue = TimerQueue::new();
        let a = queue.insert(100, 'a').unwrap();
        let b = queue.insert(200, 'b').unwrap();
        assert_eq!(queue.peek().unwrap().handle, a);
        queue.remove(a).unwrap();
        assert_eq!(queue.peek().unwrap().handle, b);
        let c = queue.insert(50, 'c').unwrap();
        assert_eq!(queue.earliest_expiry(), Some(50));
        queue.set_expiry(c, 300).unwrap();
        assert_eq!(queue.peek().unwrap().handle, b);
        assert_eq!(queue.expiry(c), Ok(300));
    }

    #[test]
    fn pop_expired_respects_now() {
        let mut queue = TimerQueue::new();
        queue.insert(10, ()).unwrap();
        assert!(queue.pop_expired(9).is_none());
        assert_eq!(queue.pop_expired(10).unwrap().expiry, 10);
    }

    #[test]
    fn extreme_expiries_order_correctly() {
        let mut queue = TimerQueue::new();
        queue.insert(u64::MAX, "max").unwrap();
        queue.insert(0, "zero").unwrap();
        queue.insert(u64::MAX - 1, "max-1").unwrap();
        assert_eq!(queue.pop().unwrap().value, "zero");
        assert_eq!(queue.pop().unwrap().value, "max-1");
        assert_eq!(queue.pop().unwrap().value, "max");
    }

    #[test]
    fn retired_slot_is_never_reused_after_generation_exhaustion() {
        let mut queue: TimerQueue<u8> = TimerQueue::new();
        let h = queue.insert(1, 0).unwrap();
        queue.slots[h.index as usize].generation = u32::MAX;
        let h = TimerHandle {
            index: h.index,
            generation: u32::MAX,
        };
        queue.remove(h).unwrap();
        let next = queue.insert(1, 1).unwrap();
        assert_ne!(next.index(), h.index());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(usize),
        Pop,
        Reexpire(usize, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..64).prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Remove),
            1 => Just(Op::Pop),
            1 => (any::<usize>(), 0u64..64).prop_map(|(i, e)| Op::Reexpire(i, e)),
        ]
    }

    proptest! {
        /// The queue behaves like a Vec kept sorted by (expiry, insertion order), and handles of
        /// timers that left are always refused.
        #[test]
        fn matches_sorted_vec_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut queue = TimerQueue::new();
            // Model: (expiry, sequence, handle, id)
            let mut model: Vec<(u64, u64, TimerHandle, u32)> = Vec::new();
            let mut gone: Vec<TimerHandle> = Vec::new();
            let mut sequence = 0u64;
            let mut next_id = 0u32;
            for op in ops {
                match op {
                    Op::Insert(expiry) => {
                        let h = queue.insert(expiry, next_id).unwrap();
                        model.push((expiry, sequence, h, next_id));
                        sequence += 1;
                        next_id += 1;
                    }
                    Op::Remove(i) if !model.is_empty() => {
                        let (expiry, _, h, id) = model.remove(i % model.len());
                        prop_assert_eq!(queue.remove(h), Ok((expiry, id)));
                        gone.push(h);
                    }
                    Op::Reexpire(i, expiry) if !model.is_empty() => {
                        let i = i % model.len();
                        queue.set_expiry(model[i].2, expiry).unwrap();
                        model[i].0 = expiry;
                        model[i].1 = sequence;
                        sequence += 1;
                    }
                    Op::Pop => {
                        model.sort();
                        let expected = if model.is_empty() { None } else { Some(model.remove(0)) };
                        let got = queue.pop();
                        prop_assert_eq!(got.as_ref().map(|t| (t.expiry, t.handle, t.value)),
                            expected.map(|(e, _, h, id)| (e, h, id)));
                        if let Some(t) = got { gone.push(t.handle); }
                    }
                    _ => {}
                }
                model.sort();
                prop_assert_eq!(queue.len(), model.len());
                prop_assert_eq!(queue.peek().map(|t| t.handle), model.first().map(|m| m.2));
                let listed: Vec<_> = queue.iter().map(|t| (t.expiry, t.handle)).collect();
                let expected: Vec<_> = model.iter().map(|m| (m.0, m.2)).collect();
                prop_assert_eq!(listed, expected);
                for h in &gone {
                    prop_assert!(!queue.contains(*h));
                }
            }
        }
    }
}
