//! The bare ordered heap under [`TimerQueue`](crate::TimerQueue), for owners that keep positions.
//!
//! [`TimerQueue`](crate::TimerQueue) keeps a slot per timer (generation, payload, heap
//! position), so a handle reaches its heap entry through that slot. An owner that already has
//! a record per timer — the hrtimer base has one per timer object — would then keep two
//! records per timer, and every operation would touch both: with 100 000 timers that is one
//! more cache miss per operation, on a table as large as the heap. [`KeyedHeap`] leaves the
//! position index to the owner instead: entries carry the owner's `u32` key, and every
//! operation reports each entry it moves through a `moved(key, position)` callback, which the
//! owner uses to keep the position in its own record. Same order (expiry, then insertion),
//! same costs and same layout as [`TimerQueue`](crate::TimerQueue).
//!
//! Positions are checked, not trusted: an operation on `(position, key)` is refused with
//! [`PositionMismatch`] when the entry there has another key, so a stale position cannot
//! disturb another timer.

use core::fmt;

use crate::heap::{Heap, HeapEntry, OrderedPositions};
use crate::QueueFull;

/// One entry of a [`KeyedHeap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyedEntry {
    /// Absolute expiry the heap is ordered by.
    pub expiry: u64,
    /// The owner's key.
    pub key: u32,
}

impl KeyedEntry {
    fn of(entry: HeapEntry) -> Self {
        Self {
            expiry: entry.expiry,
            key: entry.slot(),
        }
    }
}

/// The entry at the given position does not have the given key (the position is stale).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PositionMismatch;

impl fmt::Display for PositionMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("keyed heap: no entry with that key at that position")
    }
}

/// An ordered heap of `(expiry, key)` entries whose positions the owner keeps; see the
/// module documentation. Among equal expiries, earlier pushes (or re-expiries) come first.
pub struct KeyedHeap {
    heap: Heap,
    /// Next insertion sequence; `u32::MAX` is never handed out.
    next_sequence: u32,
}

impl Default for KeyedHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyedHeap {
    /// An empty heap. Does not allocate.
    pub const fn new() -> Self {
        Self {
            heap: Heap::new(),
            next_sequence: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when the heap is empty.
    pub fn is_empty(&self) -> bool {
        self.heap.len() == 0
    }

    /// The earliest entry. O(1).
    pub fn peek(&self) -> Option<KeyedEntry> {
        self.heap.first().map(KeyedEntry::of)
    }

    /// The entry at `position`, if there is one.
    pub fn get(&self, position: u32) -> Option<KeyedEntry> {
        let position = position as usize;
        (position < self.heap.len()).then(|| KeyedEntry::of(self.heap.get(position)))
    }

    /// Adds `key` at `expiry`, behind entries with the same expiry. `moved(key, position)` is
    /// called for every entry that changed position, the new one included. O(log n).
    pub fn push(
        &mut self,
        expiry: u64,
        key: u32,
        mut moved: impl FnMut(u32, u32),
    ) -> Result<(), QueueFull> {
        // Positions are reported as u32; `u32::MAX` entries would overflow them.
        if self.heap.len() >= u32::MAX as usize {
            return Err(QueueFull);
        }
        let sequence = self.take_sequence();
        self.heap.push(
            HeapEntry::new(expiry, sequence, key),
            &mut report(&mut moved),
        );
        self.renumber_if_exhausted(&mut moved);
        Ok(())
    }

    /// Moves the entry of `key` at `position` to `expiry`, behind entries that already have
    /// that expiry (as if it were pushed now). O(log n).
    pub fn set_expiry(
        &mut self,
        position: u32,
        key: u32,
        expiry: u64,
        mut moved: impl FnMut(u32, u32),
    ) -> Result<(), PositionMismatch> {
        let position = self.check(position, key)?;
        let sequence = self.take_sequence();
        self.heap.replace(
            position,
            HeapEntry::new(expiry, sequence, key),
            &mut report(&mut moved),
        );
        self.renumber_if_exhausted(&mut moved);
        Ok(())
    }

    /// Removes the entry of `key` at `position`; returns its expiry. O(log n).
    pub fn remove(
        &mut self,
        position: u32,
        key: u32,
        mut moved: impl FnMut(u32, u32),
    ) -> Result<u64, PositionMismatch> {
        let position = self.check(position, key)?;
        self.heap
            .remove(position, &mut report(&mut moved))
            .map(|entry| entry.expiry)
            .ok_or(PositionMismatch)
    }

    /// Removes and returns the earliest entry. O(log n).
    pub fn pop(&mut self, mut moved: impl FnMut(u32, u32)) -> Option<KeyedEntry> {
        self.heap
            .remove(0, &mut report(&mut moved))
            .map(KeyedEntry::of)
    }

    /// Entries in expiry order, lazily: the k-th costs O(log k), so `iter().nth(1)` (the
    /// entry behind the earliest) is cheap even in a large heap. Walking past the first entry
    /// allocates a small frontier of candidates.
    pub fn iter(&self) -> impl Iterator<Item = KeyedEntry> + '_ {
        Walk(self.heap.ordered_positions())
    }

    fn check(&self, position: u32, key: u32) -> Result<usize, PositionMismatch> {
        match self.get(position) {
            Some(entry) if entry.key == key => Ok(position as usize),
            _ => Err(PositionMismatch),
        }
    }

    /// The next insertion sequence. It is always below `u32::MAX`: the counter is renumbered
    /// as soon as it reaches that, after the operation that used the last one (so positions
    /// the caller passed in are never moved under it).
    fn take_sequence(&mut self) -> u32 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        sequence
    }

    /// Once every ~2^32 pushes or re-expiries: renumbers the sequences `0..len` in queue
    /// order (keeping every relative order, so FIFO among equal expiries holds for ever).
    /// O(n log n), no allocation.
    fn renumber_if_exhausted(&mut self, moved: &mut impl FnMut(u32, u32)) {
        if self.next_sequence == u32::MAX {
            self.next_sequence = self.heap.renumber(&mut report(moved));
        }
    }

    #[cfg(test)]
    fn assert_valid(&self) {
        self.heap.assert_valid();
        for position in 0..self.heap.len() {
            assert!(self.heap.get(position).sequence() < self.next_sequence);
        }
    }
}

/// Adapts the owner's `moved(key, position)` to the heap's `(entry, position)` reports.
fn report(moved: &mut impl FnMut(u32, u32)) -> impl FnMut(HeapEntry, usize) + '_ {
    // Positions are below `len`, which `push` keeps below `u32::MAX`.
    move |entry, position| moved(entry.slot(), position as u32)
}

struct Walk<'a>(OrderedPositions<'a>);

impl Iterator for Walk<'_> {
    type Item = KeyedEntry;

    fn next(&mut self) -> Option<KeyedEntry> {
        self.0.next().map(|(_, entry)| KeyedEntry::of(entry))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// A heap with its owner's position table (key -> position; `u32::MAX`: not queued).
    struct Owned {
        heap: KeyedHeap,
        positions: Vec<u32>,
    }

    const NOT_QUEUED: u32 = u32::MAX;

    impl Owned {
        fn new(keys: usize) -> Self {
            Self {
                heap: KeyedHeap::new(),
                positions: vec![NOT_QUEUED; keys],
            }
        }
        fn push(&mut self, expiry: u64, key: u32) {
            let positions = &mut self.positions;
            self.heap
                .push(expiry, key, |k, p| positions[k as usize] = p)
                .unwrap();
        }
        fn set_expiry(&mut self, key: u32, expiry: u64) {
            let positions = &mut self.positions;
            let position = positions[key as usize];
            self.heap
                .set_expiry(position, key, expiry, |k, p| positions[k as usize] = p)
                .unwrap();
        }
        fn remove(&mut self, key: u32) -> u64 {
            let positions = &mut self.positions;
            let position = positions[key as usize];
            let expiry = self
                .heap
                .remove(position, key, |k, p| positions[k as usize] = p)
                .unwrap();
            self.positions[key as usize] = NOT_QUEUED;
            expiry
        }
        fn pop(&mut self) -> Option<KeyedEntry> {
            let positions = &mut self.positions;
            let entry = self.heap.pop(|k, p| positions[k as usize] = p)?;
            self.positions[entry.key as usize] = NOT_QUEUED;
            Some(entry)
        }
        /// Every queued key's recorded position names it, and nothing else is recorded.
        fn assert_consistent(&self) {
            self.heap.assert_valid();
            for (key, &position) in self.positions.iter().enumerate() {
                if position != NOT_QUEUED {
                    assert_eq!(self.heap.get(position).map(|e| e.key), Some(key as u32));
                }
            }
            let recorded = self.positions.iter().filter(|&&p| p != NOT_QUEUED).count();
            assert_eq!(recorded, self.heap.len());
        }
    }

    #[test]
    fn pops_in_expiry_order_with_fifo_ties_and_reports_positions() {
        let mut owned = Owned::new(4);
        owned.push(30, 0);
        owned.push(10, 1);
        owned.push(20, 2);
        owned.push(10, 3);
        owned.assert_consistent();
        assert_eq!(owned.heap.peek(), Some(KeyedEntry { expiry: 10, key: 1 }));
        let order: Vec<u32> = core::iter::from_fn(|| owned.pop().map(|e| e.key)).collect();
        assert_eq!(order, [1, 3, 2, 0]);
        owned.assert_consistent();
    }

    #[test]
    fn stale_position_is_refused_and_changes_nothing() {
        let mut owned = Owned::new(3);
        owned.push(5, 0);
        owned.push(7, 1);
        let position_of_0 = owned.positions[0];
        // Key 1 is not at key 0's position; nothing is at position 9.
        assert_eq!(
            owned.heap.remove(position_of_0, 1, |_, _| {}),
            Err(PositionMismatch)
        );
        assert_eq!(
            owned.heap.set_expiry(9, 0, 1, |_, _| {}),
            Err(PositionMismatch)
        );
        owned.assert_consistent();
        assert_eq!(owned.remove(1), 7);
        assert_eq!(owned.heap.len(), 1);
        owned.assert_consistent();
    }

    #[test]
    fn set_expiry_goes_behind_equal_expiries() {
        let mut owned = Owned::new(3);
        owned.push(5, 0);
        owned.push(5, 1);
        owned.set_expiry(0, 5);
        owned.push(5, 2);
        let order: Vec<u32> = core::iter::from_fn(|| owned.pop().map(|e| e.key)).collect();
        assert_eq!(order, [1, 0, 2]);
    }

    #[test]
    fn fifo_ties_survive_sequence_renumbering() {
        let mut owned = Owned::new(7);
        owned.heap.next_sequence = u32::MAX - 3;
        for key in 0..7u32 {
            owned.push(if key % 2 == 0 { 7 } else { 3 }, key);
            owned.assert_consistent();
        }
        assert!(owned.heap.next_sequence < 100, "renumbered, not wrapped");
        // The last sequence renumbers right after a re-expiry, which moves every entry.
        owned.heap.next_sequence = u32::MAX - 1;
        owned.set_expiry(0, 7);
        owned.assert_consistent();
        let order: Vec<u32> = core::iter::from_fn(|| owned.pop().map(|e| e.key)).collect();
        assert_eq!(order, [1, 3, 5, 2, 4, 6, 0]);
    }

    #[test]
    fn iter_walks_in_order_and_second_is_cheap() {
        let mut owned = Owned::new(10_000);
        for key in (0..10_000u32).rev() {
            owned.push(u64::from(key) * 2, key);
        }
        let mut walk = owned.heap.iter();
        assert_eq!(walk.next().map(|e| e.expiry), Some(0));
        assert_eq!(walk.next().map(|e| e.expiry), Some(2));
        assert!(walk.size_hint().0 <= 2 * crate::heap::ARITY);
        let all: Vec<u64> = owned.heap.iter().map(|e| e.expiry).collect();
        assert_eq!(all, (0..10_000u64).map(|k| k * 2).collect::<Vec<_>>());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32, u64),
        Remove(u32),
        Pop,
        Reexpire(u32, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u32..24, 0u64..32).prop_map(|(k, e)| Op::Push(k, e)),
            2 => (0u32..24).prop_map(Op::Remove),
            1 => Just(Op::Pop),
            2 => (0u32..24, 0u64..32).prop_map(|(k, e)| Op::Reexpire(k, e)),
        ]
    }

    proptest! {
        /// The heap behaves like a Vec sorted by (expiry, operation order), and the owner's
        /// position table stays exact, also across sequence renumbering.
        #[test]
        fn matches_sorted_vec_model(
            ops in proptest::collection::vec(op(), 1..200),
            left in prop_oneof![Just(u32::MAX), 1u32..40],
        ) {
            let mut owned = Owned::new(24);
            owned.heap.next_sequence = u32::MAX - left;
            // (expiry, step, key)
            let mut model: Vec<(u64, usize, u32)> = Vec::new();
            for (step, op) in ops.into_iter().enumerate() {
                let queued = |model: &Vec<(u64, usize, u32)>, key| {
                    model.iter().position(|m| m.2 == key)
                };
                match op {
                    Op::Push(key, expiry) if queued(&model, key).is_none() => {
                        owned.push(expiry, key);
                        model.push((expiry, step, key));
                    }
                    Op::Remove(key) => {
                        if let Some(i) = queued(&model, key) {
                            prop_assert_eq!(owned.remove(key), model.remove(i).0);
                        }
                    }
                    Op::Reexpire(key, expiry) => {
                        if let Some(i) = queued(&model, key) {
                            owned.set_expiry(key, expiry);
                            model[i] = (expiry, step, key);
                        }
                    }
                    Op::Pop => {
                        model.sort();
                        let expected = (!model.is_empty()).then(|| model.remove(0));
                        prop_assert_eq!(
                            owned.pop(),
                            expected.map(|(expiry, _, key)| KeyedEntry { expiry, key })
                        );
                    }
                    Op::Push(..) => {}
                }
                model.sort();
                owned.assert_consistent();
                let listed: Vec<(u64, u32)> =
                    owned.heap.iter().map(|e| (e.expiry, e.key)).collect();
                let expected: Vec<(u64, u32)> = model.iter().map(|m| (m.0, m.2)).collect();
                prop_assert_eq!(listed, expected);
            }
        }
    }
}
