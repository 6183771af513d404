//! Ordered timer queue keyed by absolute u64 expiry with generation-checked handles.
//!
//! This is Lull's counterpart of Linux's `lib/timerqueue.c`. Timers are ordered by
//! `(expiry, insertion sequence)`, so timers with the same expiry leave the queue in the order
//! they entered it (FIFO), which keeps timer callbacks deterministic. [`TimerQueue`] is the
//! self-contained queue (handles, payloads); [`KeyedHeap`] is its heap alone, for an owner
//! that keeps its own record per timer, and is what each hrtimer clock base uses.
//!
//! Costs (n = number of queued timers):
//!
//! | operation                      | cost                                        |
//! |--------------------------------|---------------------------------------------|
//! | [`TimerQueue::insert`]         | O(log n), O(1) expected for random expiries |
//! | [`TimerQueue::remove`]         | O(log n)                                    |
//! | [`TimerQueue::set_expiry`]     | O(log n)                                    |
//! | [`TimerQueue::pop`]            | O(log n)                                    |
//! | [`TimerQueue::peek`]           | O(1)                                        |
//! | [`TimerQueue::get`] / `expiry` | O(1)                                        |
//! | [`TimerQueue::iter`], k items  | O(k log k), lazily                          |
//!
//! # Layout
//!
//! The order lives in an indexed 4-ary implicit min-heap (`heap` module): one contiguous
//! array of 16-byte entries (expiry, sequence, slot) in which the four children of a node
//! share one 64-byte cache line. Each slot holds a timer's generation, payload and heap
//! position, so a handle reaches its entry through one slot. Compared with a balanced tree
//! (this queue was a `BTreeMap` before) nothing is allocated per timer, nothing is chased
//! through pointers, and the heap is half as deep as a binary one; with 100 000 timers an
//! operation touches a handful of cache lines, so its cost grows slowly from a thousand to a
//! hundred thousand timers (`cargo run --release -p lull-timerqueue --example queue_scale`).
//! Payloads are never moved by the heap.
//!
//! Sequences are 32-bit to keep entries compact. When the counter runs out the queue
//! renumbers its entries in order (once every ~4 billion inserts; O(n log n), no allocation),
//! so FIFO order among equal expiries holds for ever.
//!
//! Handles are `(slot index, generation)` pairs. Every time a slot is freed its generation is
//! bumped, so a handle kept after its timer was removed or expired is *refused* with
//! [`StaleHandle`] instead of silently naming whatever timer reused the slot. A slot whose
//! generation counter would wrap is retired for good, so aliasing is impossible even after
//! 2^32 reuses.
//!
//! [`KeyedHeap`] is the same heap without the slots, for an owner that keeps a record per timer
//! anyway (the hrtimer base): the owner stores each timer's heap position in its own record,
//! so an operation touches one record per timer instead of two.
//!
//! Expiries are plain `u64` values compared with `<`: the queue is meant for monotonic
//! nanoseconds since boot, which do not wrap for 584 years. (Wrapping tick counters belong in
//! `lull-wheel`, which compares with wrapping differences.)
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod heap;
mod keyed;

pub use keyed::{KeyedEntry, KeyedHeap, PositionMismatch};

use alloc::vec::Vec;
use core::fmt;

use heap::{Heap, HeapEntry};

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

/// Where a timer's payload lives, and everything a handle needs checked, in one place: a
/// handle lookup touches one slot and then its heap entry.
struct Slot<T> {
    generation: u32,
    /// Occupied: the heap index of the slot's entry. Vacant: the next free slot.
    link: u32,
    /// `Some` exactly while the slot holds a queued timer.
    value: Option<T>,
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
    /// Implicit 4-ary min-heap by `(expiry, sequence)`; position 0 is the earliest timer.
    heap: Heap,
    slots: Vec<Slot<T>>,
    free_head: u32,
    /// Next insertion sequence; `u32::MAX` is never handed out (it triggers renumbering).
    next_sequence: u32,
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
            heap: Heap::new(),
            slots: Vec::new(),
            free_head: NO_SLOT,
            next_sequence: 0,
        }
    }

    /// Number of queued timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no timer is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.len() == 0
    }

    /// Queues `value` to expire at `expiry`. Among equal expiries, earlier inserts come first.
    pub fn insert(&mut self, expiry: u64, value: T) -> Result<TimerHandle, QueueFull> {
        let index = if self.free_head != NO_SLOT {
            let index = self.free_head;
            let slot = &mut self.slots[index as usize];
            self.free_head = slot.link;
            slot.value = Some(value);
            index
        } else {
            let index = u32::try_from(self.slots.len()).map_err(|_| QueueFull)?;
            if index == NO_SLOT {
                return Err(QueueFull);
            }
            self.slots.push(Slot {
                generation: 0,
                link: 0,
                value: Some(value),
            });
            index
        };
        // Taken before the push: renumbering sorts the entries already queued.
        let sequence = self.take_sequence();
        let slots = &mut self.slots;
        self.heap.push(
            HeapEntry::new(expiry, sequence, index),
            &mut |entry, position| link(slots, entry, position),
        );
        Ok(TimerHandle {
            index,
            generation: self.slots[index as usize].generation,
        })
    }

    /// The occupied slot named by a live handle.
    fn occupied(&self, handle: TimerHandle) -> Result<&Slot<T>, StaleHandle> {
        match self.slots.get(handle.index as usize) {
            Some(slot) if slot.generation == handle.generation && slot.value.is_some() => Ok(slot),
            _ => Err(StaleHandle),
        }
    }

    /// Heap index of the entry of a live handle.
    fn position(&self, handle: TimerHandle) -> Result<usize, StaleHandle> {
        self.occupied(handle).map(|slot| slot.link as usize)
    }

    /// True while `handle` names a queued timer.
    pub fn contains(&self, handle: TimerHandle) -> bool {
        self.occupied(handle).is_ok()
    }

    /// The expiry of a queued timer.
    pub fn expiry(&self, handle: TimerHandle) -> Result<u64, StaleHandle> {
        let position = self.position(handle)?;
        Ok(self.heap.get(position).expiry)
    }

    /// The payload of a queued timer.
    pub fn get(&self, handle: TimerHandle) -> Result<&T, StaleHandle> {
        self.occupied(handle)?.value.as_ref().ok_or(StaleHandle)
    }

    /// The payload of a queued timer, mutably (its expiry cannot change this way).
    pub fn get_mut(&mut self, handle: TimerHandle) -> Result<&mut T, StaleHandle> {
        match self.slots.get_mut(handle.index as usize) {
            Some(slot) if slot.generation == handle.generation => {
                slot.value.as_mut().ok_or(StaleHandle)
            }
            _ => Err(StaleHandle),
        }
    }

    /// The queued timer of a heap entry.
    fn queued(&self, entry: HeapEntry) -> Option<QueuedTimer<'_, T>> {
        let slot = self.slots.get(entry.slot() as usize)?;
        // Heap entries only name occupied slots, so `value` is there.
        Some(QueuedTimer {
            handle: TimerHandle {
                index: entry.slot(),
                generation: slot.generation,
            },
            expiry: entry.expiry,
            value: slot.value.as_ref()?,
        })
    }

    /// The earliest timer, without removing it. O(1).
    pub fn peek(&self) -> Option<QueuedTimer<'_, T>> {
        self.queued(self.heap.first()?)
    }

    /// Expiry of the earliest timer. O(1).
    pub fn earliest_expiry(&self) -> Option<u64> {
        self.heap.first().map(|entry| entry.expiry)
    }

    /// Removes a queued timer and hands back its expiry and payload.
    pub fn remove(&mut self, handle: TimerHandle) -> Result<(u64, T), StaleHandle> {
        let position = self.position(handle)?;
        let slots = &mut self.slots;
        let entry = self
            .heap
            .remove(position, &mut |entry, position| {
                link(slots, entry, position)
            })
            .ok_or(StaleHandle)?;
        let value = self.free_slot(entry.slot()).ok_or(StaleHandle)?;
        Ok((entry.expiry, value))
    }

    /// Moves a queued timer to a new expiry, keeping its handle. It goes behind timers that
    /// already have the same expiry (as if it were inserted now).
    pub fn set_expiry(&mut self, handle: TimerHandle, expiry: u64) -> Result<(), StaleHandle> {
        self.position(handle)?;
        // Taken before reading the position: renumbering may move the entry.
        let sequence = self.take_sequence();
        let position = self.slots[handle.index as usize].link as usize;
        let slots = &mut self.slots;
        self.heap.replace(
            position,
            HeapEntry::new(expiry, sequence, handle.index),
            &mut |entry, position| link(slots, entry, position),
        );
        Ok(())
    }

    /// Removes and returns the earliest timer.
    pub fn pop(&mut self) -> Option<RemovedTimer<T>> {
        let slots = &mut self.slots;
        let entry = self
            .heap
            .remove(0, &mut |entry, position| link(slots, entry, position))?;
        let generation = self.slots[entry.slot() as usize].generation;
        let value = self.free_slot(entry.slot())?;
        Some(RemovedTimer {
            handle: TimerHandle {
                index: entry.slot(),
                generation,
            },
            expiry: entry.expiry,
            value,
        })
    }

    /// Removes and returns the earliest timer if its expiry is at or before `now`.
    pub fn pop_expired(&mut self, now: u64) -> Option<RemovedTimer<T>> {
        match self.heap.first() {
            Some(entry) if entry.expiry <= now => self.pop(),
            _ => None,
        }
    }

    /// Queued timers in expiry order.
    ///
    /// Lazy: the first item is the heap root, and each further item costs O(log k) for the
    /// k-th, so `iter().nth(1)` (the timer behind the earliest) is cheap even in a large
    /// queue. Walking past the first item allocates a small frontier of candidates.
    pub fn iter(&self) -> impl Iterator<Item = QueuedTimer<'_, T>> + '_ {
        OrderedWalk {
            queue: self,
            positions: self.heap.ordered_positions(),
        }
    }

    /// Hands out the next insertion sequence. When the 32-bit counter is exhausted the queued
    /// entries are renumbered 0..len in queue order first, which keeps every relative order
    /// (and so FIFO among equal expiries) and leaves the heap valid: a sorted array is a heap.
    fn take_sequence(&mut self) -> u32 {
        if self.next_sequence == u32::MAX {
            self.renumber_sequences();
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        sequence
    }

    /// O(n log n), in place, once every ~2^32 inserts or re-expiries.
    fn renumber_sequences(&mut self) {
        let slots = &mut self.slots;
        self.next_sequence = self
            .heap
            .renumber(&mut |entry, position| link(slots, entry, position));
    }

    /// Empties the slot, bumps its generation (so old handles are refused) and recycles it
    /// unless its generation is exhausted.
    fn free_slot(&mut self, index: u32) -> Option<T> {
        let slot = &mut self.slots[index as usize];
        let value = slot.value.take();
        // When the generation is exhausted the slot is retired (not put back on the free list):
        // a wrapped generation could make an ancient handle valid again.
        if let Some(next) = slot.generation.checked_add(1) {
            slot.generation = next;
            slot.link = self.free_head;
            self.free_head = index;
        }
        // Callers validate occupancy first, so this is `Some`.
        value
    }
}

/// Points the slot of `entry` at its new heap `position`.
#[inline]
fn link<T>(slots: &mut [Slot<T>], entry: HeapEntry, position: usize) {
    // Heap positions fit u32: there is at most one entry per slot and slots are u32-indexed.
    slots[entry.slot() as usize].link = position as u32;
}

/// [`TimerQueue::iter`]: the heap's in-order walk, mapped to queued timers.
struct OrderedWalk<'a, T> {
    queue: &'a TimerQueue<T>,
    positions: heap::OrderedPositions<'a>,
}

impl<'a, T> Iterator for OrderedWalk<'a, T> {
    type Item = QueuedTimer<'a, T>;

    fn next(&mut self) -> Option<Self::Item> {
        let (_, entry) = self.positions.next()?;
        self.queue.queued(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.positions.size_hint()
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

    #[test]
    fn fifo_ties_survive_sequence_renumbering() {
        let mut queue = TimerQueue::new();
        // Three sequences left before the counter runs out.
        queue.next_sequence = u32::MAX - 3;
        let names = ["t0", "t1", "t2", "t3", "t4", "t5", "t6"];
        for (i, name) in names.iter().enumerate() {
            // Alternating expiries: ties at 7 and at 3, inserted across the renumbering.
            queue.insert(if i % 2 == 0 { 7 } else { 3 }, *name).unwrap();
        }
        assert!(
            queue.next_sequence < 100,
            "the counter was renumbered, not wrapped"
        );
        assert_heap_invariants(&queue);
        let order: Vec<_> = core::iter::from_fn(|| queue.pop().map(|t| t.value)).collect();
        assert_eq!(order, ["t1", "t3", "t5", "t0", "t2", "t4", "t6"]);
    }

    #[test]
    fn set_expiry_renumbering_keeps_the_moved_timer_last_among_equals() {
        let mut queue = TimerQueue::new();
        queue.next_sequence = u32::MAX - 2;
        let a = queue.insert(5, 'a').unwrap();
        queue.insert(5, 'b').unwrap();
        // The counter is exhausted here: set_expiry renumbers, then takes a fresh sequence.
        queue.set_expiry(a, 5).unwrap();
        queue.insert(5, 'c').unwrap();
        assert_heap_invariants(&queue);
        let order: Vec<_> = core::iter::from_fn(|| queue.pop().map(|t| t.value)).collect();
        assert_eq!(order, ['b', 'a', 'c']);
    }

    #[test]
    fn second_earliest_is_found_without_walking_the_queue() {
        let mut queue = TimerQueue::new();
        for expiry in (0..10_000u64).rev() {
            queue.insert(expiry * 2, expiry).unwrap();
        }
        let mut walk = queue.iter();
        assert_eq!(walk.next().map(|t| t.expiry), Some(0));
        assert_eq!(walk.next().map(|t| t.expiry), Some(2));
        // Only the root's and the second's children were visited, not the whole queue.
        assert!(walk.size_hint().0 <= 2 * heap::ARITY);
    }

    /// Many timers (a deep heap) under a deterministic mix of operations, checked against a
    /// sorted model at the end: the proptest's queues stay small, this one is ~6 levels deep.
    #[test]
    fn large_random_workload_pops_in_model_order() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let mut queue = TimerQueue::new();
        // (expiry, sequence, handle)
        let mut model: Vec<(u64, u64, TimerHandle)> = Vec::new();
        for sequence in 0..20_000u64 {
            match random(4) {
                0 | 1 => {
                    let expiry = random(5_000);
                    let handle = queue.insert(expiry, sequence).unwrap();
                    model.push((expiry, sequence, handle));
                }
                2 if !model.is_empty() => {
                    let victim = model.swap_remove(random(model.len() as u64) as usize);
                    assert_eq!(queue.remove(victim.2).map(|(e, _)| e), Ok(victim.0));
                }
                3 if !model.is_empty() => {
                    let i = random(model.len() as u64) as usize;
                    let expiry = random(5_000);
                    queue.set_expiry(model[i].2, expiry).unwrap();
                    model[i].0 = expiry;
                    model[i].1 = sequence;
                }
                _ => {}
            }
        }
        assert_heap_invariants(&queue);
        assert!(queue.len() > 2_000);
        model.sort();
        let popped: Vec<_> =
            core::iter::from_fn(|| queue.pop().map(|t| (t.expiry, t.handle))).collect();
        let expected: Vec<_> = model.iter().map(|m| (m.0, m.2)).collect();
        assert_eq!(popped, expected);
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

    /// Checks the heap's own bookkeeping: parents go before children, every entry's slot
    /// points back at it and is occupied, sequences were handed out, no other slot is
    /// occupied.
    fn assert_heap_invariants<T>(queue: &TimerQueue<T>) {
        queue.heap.assert_valid();
        for position in 0..queue.heap.len() {
            let entry = queue.heap.get(position);
            let slot = entry.slot() as usize;
            assert_eq!(queue.slots[slot].link as usize, position);
            assert!(queue.slots[slot].value.is_some());
            assert!(entry.sequence() < queue.next_sequence);
        }
        let occupied = queue
            .slots
            .iter()
            .filter(|slot| slot.value.is_some())
            .count();
        assert_eq!(occupied, queue.heap.len());
    }

    /// Runs `ops` on `queue` (empty) and on a Vec kept sorted by (expiry, insertion order),
    /// checking after each step that they agree and that handles of timers that left are
    /// refused.
    fn check_against_sorted_vec_model(
        mut queue: TimerQueue<u32>,
        ops: Vec<Op>,
    ) -> Result<(), TestCaseError> {
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
                    let expected = if model.is_empty() {
                        None
                    } else {
                        Some(model.remove(0))
                    };
                    let got = queue.pop();
                    prop_assert_eq!(
                        got.as_ref().map(|t| (t.expiry, t.handle, t.value)),
                        expected.map(|(e, _, h, id)| (e, h, id))
                    );
                    if let Some(t) = got {
                        gone.push(t.handle);
                    }
                }
                _ => {}
            }
            model.sort();
            prop_assert_eq!(queue.len(), model.len());
            prop_assert_eq!(queue.peek().map(|t| t.handle), model.first().map(|m| m.2));
            prop_assert_eq!(queue.earliest_expiry(), model.first().map(|m| m.0));
            let listed: Vec<_> = queue.iter().map(|t| (t.expiry, t.handle)).collect();
            let expected: Vec<_> = model.iter().map(|m| (m.0, m.2)).collect();
            prop_assert_eq!(listed, expected);
            for m in &model {
                prop_assert_eq!(queue.expiry(m.2), Ok(m.0));
                prop_assert_eq!(queue.get(m.2), Ok(&m.3));
            }
            for h in &gone {
                prop_assert!(!queue.contains(*h));
            }
            assert_heap_invariants(&queue);
        }
        Ok(())
    }

    proptest! {
        /// The queue behaves like a Vec kept sorted by (expiry, insertion order), and handles of
        /// timers that left are always refused.
        #[test]
        fn matches_sorted_vec_model(ops in proptest::collection::vec(op(), 1..200)) {
            check_against_sorted_vec_model(TimerQueue::new(), ops)?;
        }

        /// The same, with the 32-bit sequence counter running out within the first steps, so
        /// the in-order renumbering happens (often repeatedly) mid-sequence.
        #[test]
        fn matches_sorted_vec_model_across_sequence_renumbering(
            ops in proptest::collection::vec(op(), 1..200),
            left in 1u32..40,
        ) {
            let mut queue = TimerQueue::new();
            queue.next_sequence = u32::MAX - left;
            check_against_sorted_vec_model(queue, ops)?;
        }
    }
}
