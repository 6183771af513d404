//! The stack of locks one task (or one CPU's interrupt context) holds, owned by the caller.

use alloc::vec::Vec;

use crate::{ClassId, Site};

/// One held lock: its class and where it was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub class: ClassId,
    pub site: Site,
    /// Taken with a try-lock, which cannot block, so nothing is learned from taking it.
    pub try_lock: bool,
    /// Taken in hard-interrupt context: dependencies are not recorded across the boundary
    /// between an interrupt handler and the task it interrupted (as Linux `irq_context`).
    pub in_hardirq: bool,
}

/// The locks one task holds, in acquisition order. The kernel keeps one per task and passes
/// it to every [`crate::Lockdep`] call made on that task's behalf; only the checker changes it.
///
/// Its capacity is fixed at creation (bounded memory); exceeding it disables checking with a
/// table-full report rather than growing.
#[derive(Clone, Debug)]
pub struct HeldLocks {
    entries: Vec<HeldLock>,
    capacity: usize,
}

impl HeldLocks {
    /// Linux's `MAX_LOCK_DEPTH`: deeper nesting than this is a bug in itself.
    pub const DEFAULT_CAPACITY: usize = 48;

    /// An empty stack with room for `capacity` locks (allocated now, never grown).
    pub fn new(capacity: usize) -> HeldLocks {
        HeldLocks {
            entries: Vec::with_capacity(capacity),
            capacity,
        }
    }

    /// How many locks are held.
    pub fn depth(&self) -> usize {
        self.entries.len()
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The held locks, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &HeldLock> {
        self.entries.iter()
    }

    /// Whether a lock of `class` is held.
    pub fn holds(&self, class: ClassId) -> bool {
        self.entries.iter().any(|held| held.class == class)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    pub(crate) fn push(&mut self, held: HeldLock) {
        if !self.is_full() {
            self.entries.push(held);
        }
    }

    /// Removes the most recent lock of `class` (releases need not be in reverse order).
    pub(crate) fn remove_latest(&mut self, class: ClassId) -> Option<HeldLock> {
        let position = self.entries.iter().rposition(|held| held.class == class)?;
        Some(self.entries.remove(position))
    }
}

impl Default for HeldLocks {
    fn default() -> Self {
        HeldLocks::new(Self::DEFAULT_CAPACITY)
    }
}
