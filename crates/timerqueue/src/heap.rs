//! The queue's order: an implicit 4-ary min-heap laid out in cache-line-aligned families.
//!
//! Node `i` has children `4i + 1 ..= 4i + 4` and parent `(i - 1) / 4`, as in any implicit
//! 4-ary heap. The nodes are stored three places further on, so the four children of node `p`
//! are exactly the 64-byte-aligned [`Family`] `p + 1`: a sift reads one cache line per level
//! and compares the four children without bounds checks, because the unused places of the last
//! family hold [`HeapEntry::SENTINEL`], which every real entry goes before.

use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Reverse;

/// Children per node. Four 16-byte entries fill one 64-byte line, and a 4-ary heap is half
/// as deep as a binary one.
pub(crate) const ARITY: usize = 4;
/// Unused places before the root, which align the families of children (see module docs).
const PAD: usize = ARITY - 1;

const _: () = assert!(ARITY == 4, "earliest_child plays a tournament of four");
const _: () = assert!(core::mem::size_of::<Family>() == ARITY * core::mem::size_of::<HeapEntry>());

/// One heap element: everything a sift compares or moves, and nothing else (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeapEntry {
    pub(crate) expiry: u64,
    /// `sequence << 32 | slot`. The sequence is the insertion order among equal expiries; the
    /// slot holds the payload and its `link` points back at this entry's position. Sequences
    /// are unique, so `(expiry, order)` sorts exactly like `(expiry, sequence)`, and as one
    /// 128-bit number it compares without branches.
    order: u64,
}

impl HeapEntry {
    /// Fills unused places. Sequence `u32::MAX` is never handed out, so every real entry goes
    /// before it, even one expiring at `u64::MAX`.
    const SENTINEL: HeapEntry = HeapEntry {
        expiry: u64::MAX,
        order: u64::MAX,
    };

    #[inline]
    pub(crate) fn new(expiry: u64, sequence: u32, slot: u32) -> Self {
        Self {
            expiry,
            order: (u64::from(sequence) << 32) | u64::from(slot),
        }
    }

    #[inline]
    pub(crate) fn slot(self) -> u32 {
        // Truncation keeps the low half, which is the slot.
        self.order as u32
    }

    #[cfg(test)]
    pub(crate) fn sequence(self) -> u32 {
        (self.order >> 32) as u32
    }

    /// The queue order: earlier expiry first, then earlier insertion.
    #[inline]
    pub(crate) fn key(self) -> u128 {
        (u128::from(self.expiry) << 64) | u128::from(self.order)
    }

    #[inline]
    pub(crate) fn goes_before(self, other: HeapEntry) -> bool {
        self.key() < other.key()
    }
}

/// The children of one node, on one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Family([HeapEntry; ARITY]);

/// The heap array. Every operation that moves an entry reports its new position through
/// `moved`, so the owner can keep its slot -> position index current.
pub(crate) struct Heap {
    /// Node `i` lives at place `i + PAD`; places at or beyond `len + PAD` hold sentinels.
    families: Vec<Family>,
    len: usize,
}

impl Heap {
    pub(crate) const fn new() -> Self {
        Self {
            families: Vec::new(),
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn place(position: usize) -> (usize, usize) {
        let place = position + PAD;
        (place / ARITY, place % ARITY)
    }

    /// The entry at `position` (< `len`).
    #[inline]
    pub(crate) fn get(&self, position: usize) -> HeapEntry {
        let (family, lane) = Self::place(position);
        self.families[family].0[lane]
    }

    #[inline]
    fn set(&mut self, position: usize, entry: HeapEntry) {
        let (family, lane) = Self::place(position);
        self.families[family].0[lane] = entry;
    }

    /// The earliest entry.
    #[inline]
    pub(crate) fn first(&self) -> Option<HeapEntry> {
        (self.len > 0).then(|| self.get(0))
    }

    /// Positions of the children of `parent`, as far as they exist.
    pub(crate) fn children(&self, parent: usize) -> core::ops::Range<usize> {
        let first = parent * ARITY + 1;
        first.min(self.len)..(first + ARITY).min(self.len)
    }

    /// The earliest child of `parent`, or `None` for a leaf.
    #[inline]
    fn earliest_child(&self, parent: usize) -> Option<(usize, HeapEntry)> {
        let first = parent * ARITY + 1;
        if first >= self.len {
            return None;
        }
        let [a, b, c, d] = self.families[parent + 1].0;
        // A fixed two-round tournament, which compiles to conditional moves: which child wins
        // is a coin toss for random expiries, so branches would mispredict half the time.
        let (left, left_entry) = if b.goes_before(a) { (1, b) } else { (0, a) };
        let (right, right_entry) = if d.goes_before(c) { (3, d) } else { (2, c) };
        let (lane, entry) = if right_entry.goes_before(left_entry) {
            (right, right_entry)
        } else {
            (left, left_entry)
        };
        Some((first + lane, entry))
    }

    /// Starts loading the families of the grandchildren of `parent` (four adjacent lines), so
    /// the next level of a sift finds its family in cache instead of waiting for memory: with
    /// 100 000 timers the lower levels are out of L2, and a sift is otherwise a chain of
    /// dependent loads, one per level.
    #[inline]
    fn touch_grandchildren(&self, parent: usize) {
        let first = parent * ARITY + 2;
        if let Some(families) = self.families.get(first..first + ARITY) {
            for family in families {
                core::hint::black_box(family.0[0].expiry);
            }
        }
    }

    /// Writes `entry` at `position` and reports it.
    #[inline]
    fn put(&mut self, position: usize, entry: HeapEntry, moved: &mut impl FnMut(HeapEntry, usize)) {
        self.set(position, entry);
        moved(entry, position);
    }

    /// Adds `entry` at its place in the order.
    pub(crate) fn push(&mut self, entry: HeapEntry, moved: &mut impl FnMut(HeapEntry, usize)) {
        let position = self.len;
        let (family, _) = Self::place(position);
        if family == self.families.len() {
            self.families.push(Family([HeapEntry::SENTINEL; ARITY]));
        }
        self.len += 1;
        self.sift_up(position, entry, moved);
    }

    /// Replaces the entry at `position` with one of a different key and restores the order.
    pub(crate) fn replace(
        &mut self,
        position: usize,
        entry: HeapEntry,
        moved: &mut impl FnMut(HeapEntry, usize),
    ) {
        let old = self.get(position);
        if entry.goes_before(old) {
            self.sift_up(position, entry, moved);
        } else {
            self.sift_down(position, entry, moved);
        }
    }

    /// Takes out the entry at `position` (< `len`), filling the hole with the last entry.
    pub(crate) fn remove(
        &mut self,
        position: usize,
        moved: &mut impl FnMut(HeapEntry, usize),
    ) -> Option<HeapEntry> {
        if position >= self.len {
            return None;
        }
        let removed = self.get(position);
        let last = self.take_last()?;
        if position == self.len {
            return Some(removed);
        }
        if position == 0 {
            self.fill_root(last, moved);
        } else if last.goes_before(self.get((position - 1) / ARITY)) {
            self.sift_up(position, last, moved);
        } else {
            self.sift_down(position, last, moved);
        }
        Some(removed)
    }

    /// Cuts the last entry off, leaving a sentinel in its place.
    fn take_last(&mut self) -> Option<HeapEntry> {
        self.len = self.len.checked_sub(1)?;
        let (family, lane) = Self::place(self.len);
        let last = self.families[family].0[lane];
        self.families[family].0[lane] = HeapEntry::SENTINEL;
        if lane == 0 || self.len == 0 {
            // The family is now all sentinels.
            self.families.truncate(family);
        }
        Some(last)
    }

    /// Puts `last` into the hole at the root. The hole first moves down along the earliest
    /// children to a leaf, then `last` sifts up from there (Floyd's method): `last` came from
    /// the bottom and nearly always belongs there, so this saves comparing it on the way down.
    fn fill_root(&mut self, last: HeapEntry, moved: &mut impl FnMut(HeapEntry, usize)) {
        let mut hole = 0;
        while let Some((child, child_entry)) = self.earliest_child(hole) {
            self.touch_grandchildren(hole);
            self.put(hole, child_entry, moved);
            hole = child;
        }
        self.sift_up(hole, last, moved);
    }

    /// Places `entry` at `position` or above, moving later parents down.
    fn sift_up(
        &mut self,
        mut position: usize,
        entry: HeapEntry,
        moved: &mut impl FnMut(HeapEntry, usize),
    ) {
        while position > 0 {
            let parent = (position - 1) / ARITY;
            let parent_entry = self.get(parent);
            if !entry.goes_before(parent_entry) {
                break;
            }
            self.put(position, parent_entry, moved);
            position = parent;
        }
        self.put(position, entry, moved);
    }

    /// Places `entry` at `position` or below, moving earlier children up.
    fn sift_down(
        &mut self,
        mut position: usize,
        entry: HeapEntry,
        moved: &mut impl FnMut(HeapEntry, usize),
    ) {
        while let Some((child, child_entry)) = self.earliest_child(position) {
            if !child_entry.goes_before(entry) {
                break;
            }
            self.put(position, child_entry, moved);
            position = child;
        }
        self.put(position, entry, moved);
    }

    /// Renumbers the sequences `0..len` in queue order, keeping every relative order, and
    /// returns the next free sequence. In place (heapsort), O(n log n), no allocation: it runs
    /// once every ~2^32 sequences, so it must be correct rather than fast.
    pub(crate) fn renumber(&mut self, moved: &mut impl FnMut(HeapEntry, usize)) -> u32 {
        let len = self.len;
        // Heapsort: move the earliest remaining entry behind a shrinking heap prefix, which
        // leaves the entries in descending order...
        for end in (1..len).rev() {
            let last = self.get(end);
            self.set(end, self.get(0));
            self.sift_down_within(last, end);
        }
        // ...then reverse them: an ascending array is a valid heap.
        for low in 0..len / 2 {
            let high = len - 1 - low;
            let (a, b) = (self.get(low), self.get(high));
            self.set(low, b);
            self.set(high, a);
        }
        let mut next = 0u32;
        for position in 0..len {
            let entry = self.get(position);
            self.put(
                position,
                HeapEntry::new(entry.expiry, next, entry.slot()),
                moved,
            );
            // At most u32::MAX - 1 slots exist, so this stays below u32::MAX.
            next += 1;
        }
        next
    }

    /// `sift_down` for `entry` from the root in the heap prefix `0..bound` (for heapsort).
    fn sift_down_within(&mut self, entry: HeapEntry, bound: usize) {
        let mut position = 0;
        loop {
            let first = position * ARITY + 1;
            let Some(mut best) = (first < bound).then_some(first) else {
                break;
            };
            for child in first + 1..(first + ARITY).min(bound) {
                if self.get(child).goes_before(self.get(best)) {
                    best = child;
                }
            }
            let best_entry = self.get(best);
            if !best_entry.goes_before(entry) {
                break;
            }
            self.set(position, best_entry);
            position = best;
        }
        self.set(position, entry);
    }

    /// Positions of the entries in queue order, lazily; see [`OrderedPositions`].
    pub(crate) fn ordered_positions(&self) -> OrderedPositions<'_> {
        OrderedPositions {
            heap: self,
            started: false,
            frontier: BinaryHeap::new(),
        }
    }

    /// Checks the layout (tests): parents before children, sentinels after the end.
    #[cfg(test)]
    pub(crate) fn assert_valid(&self) {
        for position in 1..self.len {
            let parent = self.get((position - 1) / ARITY);
            assert!(
                parent.goes_before(self.get(position)),
                "heap order broken at {position}"
            );
        }
        let places = self.families.len() * ARITY;
        if self.len == 0 {
            assert!(self.families.is_empty());
        } else {
            assert_eq!(places / ARITY, (self.len + PAD).div_ceil(ARITY));
        }
        for place in self.len + PAD..places {
            assert_eq!(
                self.families[place / ARITY].0[place % ARITY],
                HeapEntry::SENTINEL
            );
        }
    }
}

/// In-order walk of a heap: a small min-heap of candidate entries, seeded with the root;
/// taking the least candidate adds its children. The k-th item costs O(log k), not O(n), so
/// the timer behind the earliest is cheap to find even in a large queue.
pub(crate) struct OrderedPositions<'a> {
    heap: &'a Heap,
    started: bool,
    /// Candidates as `(key, heap position)`, least first.
    frontier: BinaryHeap<Reverse<(u128, usize)>>,
}

impl Iterator for OrderedPositions<'_> {
    /// `(position, entry)`.
    type Item = (usize, HeapEntry);

    fn next(&mut self) -> Option<Self::Item> {
        let heap = self.heap;
        let position = if self.started {
            self.frontier.pop()?.0 .1
        } else {
            self.started = true;
            if heap.len() == 0 {
                return None;
            }
            0
        };
        self.frontier.extend(
            heap.children(position)
                .map(|child| Reverse((heap.get(child).key(), child))),
        );
        Some((position, heap.get(position)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // Items not yet yielded: everything before the walk starts, else at least the
        // frontier (the rest hides below it).
        if self.started {
            (self.frontier.len(), Some(self.heap.len()))
        } else {
            let len = self.heap.len();
            (len, Some(len))
        }
    }
}
