//! Arch-internal locking: a spinning cell that masks local interrupts while held.
//!
//! arch does not use the kernel's lock types (they carry policy: preemption, lockdep,
//! sleeping). Its own state (the port registry, the page allocator, the kmap window) is guarded
//! by [`IrqSpinCell`], which only spins and masks interrupts, so any context may take it.

use core::ops::{Deref, DerefMut};

use super::percpu::InterruptsDisabled;

/// Data behind a test-and-set lock that is held with local interrupts masked.
pub struct IrqSpinCell<T> {
    inner: spin::Mutex<T>,
}

/// Access to the data of an [`IrqSpinCell`]; interrupts come back on drop (if they were on).
pub struct IrqSpinGuard<'a, T> {
    guard: spin::MutexGuard<'a, T>,
    _interrupts_off: InterruptsDisabled,
}

impl<T> IrqSpinCell<T> {
    /// A free cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    /// Masks interrupts and spins until the cell is ours.
    pub fn lock(&self) -> IrqSpinGuard<'_, T> {
        let interrupts_off = InterruptsDisabled::new();
        IrqSpinGuard {
            guard: self.inner.lock(),
            _interrupts_off: interrupts_off,
        }
    }
}

impl<T> Deref for IrqSpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for IrqSpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

// ---- the kernel's lock cells -----------------------------------------------------------------
//
// The kernel's lock types (`kernel::locking`) keep their data in these cells: each pairs an
// `UnsafeCell` with the lock word that guards it, so the data is reached only through a guard
// that proves the word is held. The policy (preemption, interrupt masking, lockdep, sleeping,
// writer preference) stays in safe code there.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Whether spin cells wait by test-and-set instead of in ticket order (a static key, read once
/// per contended acquisition; `spinlock=`).
static TEST_AND_SET: AtomicBool = AtomicBool::new(false);

/// Switches how [`SpinCell`]s wait. Sound with cells held or contended: both modes use the
/// same two counters, and "free" means `next == owner` in each. Returns the previous mode.
pub fn set_test_and_set(test_and_set: bool) -> bool {
    TEST_AND_SET.swap(test_and_set, Ordering::AcqRel)
}

/// Data behind a spinning lock word: `next` is the next ticket to hand out, `owner` the ticket
/// being served; the cell is free when they are equal. Ticket mode takes a ticket and waits
/// its turn; test-and-set mode claims the cell only when it is free (`next` CAS
/// `owner → owner+1`). No preemption or interrupt control: the caller's guard adds that.
pub struct SpinCell<T> {
    next: AtomicU32,
    owner: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a `SpinCellGuard`, and at most one guard exists at
// a time (it is made only after this CPU won the lock word, and the word is released only when
// the guard drops), so sharing the cell between CPUs shares `T` by moving it (`T: Send`).
unsafe impl<T: Send> Sync for SpinCell<T> {}

/// Exclusive access to a [`SpinCell`]'s value; releases the word on drop.
pub struct SpinCellGuard<'a, T> {
    cell: &'a SpinCell<T>,
}

impl<T> SpinCell<T> {
    /// A free cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            next: AtomicU32::new(0),
            owner: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    fn try_acquire(&self) -> bool {
        // Acquire: pairs with the previous holder's release of `owner`.
        let owner = self.owner.load(Ordering::Acquire);
        self.next
            .compare_exchange(
                owner,
                owner.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Spins until the cell is ours.
    pub fn lock(&self) -> SpinCellGuard<'_, T> {
        if !self.try_acquire() {
            if TEST_AND_SET.load(Ordering::Relaxed) {
                loop {
                    core::hint::spin_loop();
                    if self.try_acquire() {
                        break;
                    }
                }
            } else {
                let ticket = self.next.fetch_add(1, Ordering::Relaxed);
                while self.owner.load(Ordering::Acquire) != ticket {
                    core::hint::spin_loop();
                }
            }
        }
        SpinCellGuard { cell: self }
    }

    /// Takes the cell if it is free. (The guard is built only after the word was won: a
    /// guard built and dropped on failure would release someone else's lock.)
    pub fn try_lock(&self) -> Option<SpinCellGuard<'_, T>> {
        self.try_acquire().then(|| SpinCellGuard { cell: self })
    }

    /// CPUs waiting for their ticket (0 when free or held uncontended).
    pub fn waiters(&self) -> u32 {
        let (next, owner) = (
            self.next.load(Ordering::Relaxed),
            self.owner.load(Ordering::Relaxed),
        );
        next.wrapping_sub(owner).saturating_sub(1)
    }
}

impl<T> Drop for SpinCellGuard<'_, T> {
    fn drop(&mut self) {
        // Serves the next ticket; Release publishes our writes to the next holder.
        self.cell.owner.fetch_add(1, Ordering::Release);
    }
}

impl<T> Deref for SpinCellGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard exists only while its CPU holds the lock word (see `Sync`), so
        // no other reference to the value is live.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> DerefMut for SpinCellGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference through the guard.
        unsafe { &mut *self.cell.value.get() }
    }
}

/// Data behind a lock word that is only ever tried, never waited for here (a sleeping mutex:
/// the caller sleeps on its own wait queue between tries).
pub struct TryLockCell<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: as for `SpinCell`: one `TryLockGuard` at most, made only by winning `locked`.
unsafe impl<T: Send> Sync for TryLockCell<T> {}

/// Exclusive access to a [`TryLockCell`]'s value; releases the word on drop.
pub struct TryLockGuard<'a, T> {
    cell: &'a TryLockCell<T>,
}

impl<T> TryLockCell<T> {
    /// A free cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the cell if it is free.
    pub fn try_lock(&self) -> Option<TryLockGuard<'_, T>> {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then(|| TryLockGuard { cell: self })
    }
}

impl<T> Drop for TryLockGuard<'_, T> {
    fn drop(&mut self) {
        self.cell.locked.store(false, Ordering::Release);
    }
}

impl<T> Deref for TryLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while `locked` is ours, so no other reference is live.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> DerefMut for TryLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this reference unique.
        unsafe { &mut *self.cell.value.get() }
    }
}

/// Data behind a reader-writer word: [`RwCell::WRITER`] or the number of readers. Only tried
/// (a sleeping rwlock waits on its own queue). A failed try never changes the word (a
/// transient reader count could fail a writer's try with no holder left to wake it).
pub struct RwCell<T> {
    word: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: readers get `&T` only while the word counts them and no writer holds it; a writer
// gets `&mut T` only while the word is `WRITER`. `T: Send + Sync` because readers on several
// CPUs share `&T` and a writer may move data across CPUs.
unsafe impl<T: Send + Sync> Sync for RwCell<T> {}

/// Shared access to an [`RwCell`]'s value.
pub struct RwCellReadGuard<'a, T> {
    cell: &'a RwCell<T>,
}

/// Exclusive access to an [`RwCell`]'s value.
pub struct RwCellWriteGuard<'a, T> {
    cell: &'a RwCell<T>,
}

impl<T> RwCell<T> {
    const WRITER: u32 = 1 << 31;

    /// A free cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            word: AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Shared access if no writer holds the cell and `admit` agrees (checked before each
    /// attempt: a rwlock that prefers writers refuses new readers while one waits).
    pub fn try_read(&self, admit: impl Fn() -> bool) -> Option<RwCellReadGuard<'_, T>> {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & Self::WRITER != 0 || !admit() {
                return None;
            }
            match self.word.compare_exchange_weak(
                word,
                word + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(RwCellReadGuard { cell: self }),
                Err(now) => word = now,
            }
        }
    }

    /// Exclusive access if nobody holds the cell.
    pub fn try_write(&self) -> Option<RwCellWriteGuard<'_, T>> {
        self.word
            .compare_exchange(0, Self::WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then(|| RwCellWriteGuard { cell: self })
    }
}

impl<T> RwCellReadGuard<'_, T> {
    /// Releases the shared access; true if it was the last reader.
    pub fn unlock(self) -> bool {
        let cell = self.cell;
        core::mem::forget(self);
        cell.word.fetch_sub(1, Ordering::Release) == 1
    }
}

impl<T> Drop for RwCellReadGuard<'_, T> {
    fn drop(&mut self) {
        self.cell.word.fetch_sub(1, Ordering::Release);
    }
}

impl<T> Drop for RwCellWriteGuard<'_, T> {
    fn drop(&mut self) {
        self.cell.word.store(0, Ordering::Release);
    }
}

impl<T> Deref for RwCellReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the word counts this reader, so no writer holds the cell while it lives.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> Deref for RwCellWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the word is `WRITER` (ours) while this guard lives: no other reference.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> DerefMut for RwCellWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this reference unique.
        unsafe { &mut *self.cell.value.get() }
    }
}
