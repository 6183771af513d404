//! The protocol of Lull's sleeping locks, independent of the kernel: wait queues, the grant
//! words of the sleeping [`MutexGrant`] and [`RwLockGrant`], and [`Completion`]s.
//!
//! The kernel plugs in its scheduler through [`Scheduler`] (who runs, prepare to sleep, sleep,
//! wake) and the lock around each queue's waiter list through [`WaiterList`]; this crate owns
//! only the order of the steps and the atomic words. The data a lock protects (its cell) is the
//! kernel's: a grant says who may touch it, so this crate has no `unsafe` at all.
//!
//! # The wait/wake protocol
//!
//! A waiter ([`WaitQueue::wait_until`]), as Linux's `wait_event`:
//!
//! 1. marks itself as preparing to sleep ([`Scheduler::prepare_to_sleep`]);
//! 2. joins the queue's waiter list;
//! 3. re-checks its condition (leaving the list and cancelling the sleep if it holds);
//! 4. sleeps ([`Scheduler::schedule`]), then goes back to 1.
//!
//! A waker first makes the condition true, then takes waiters off the list and wakes them
//! ([`WaitQueue::wake_one`], [`WaitQueue::wake_all`]). Whatever the interleaving, either the
//! waiter's re-check sees the new condition (the waker changed it before the waiter joined), or
//! the waker finds the waiter on the list already preparing to sleep, and its wake-up cancels
//! the sleep.
//!
//! The order of steps 1 and 2 matters. Joining first (Lull before commit 428a572) loses
//! wake-ups: a waker may take the list and "wake" the waiter while it is still running (a
//! no-op), a third thread takes the lock, the waiter's re-check fails, and it sleeps off the
//! list, never to be woken. Under `--cfg loom` the old order is still available
//! (`Order::JoinThenPrepare`, in loom builds only) so the model checker can show that it finds
//! exactly this failure (`tests/loom.rs`).
//!
//! # Model checking
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p lull-waitqueue --release --test loom
//! ```
//!
//! With `--cfg loom` the atomics are loom's, so every interleaving (within a preemption bound)
//! of the tests' threads is explored; a lost wake-up shows up as a deadlock that loom reports.

#![cfg_attr(not(any(test, loom)), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::collections::VecDeque;

use atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// The atomics: `core`'s, or loom's model-checked ones under `--cfg loom`.
mod atomic {
    #[cfg(not(loom))]
    pub(crate) use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
}

/// Declares a constructor that is `const` in normal builds (the kernel's locks are statics) and
/// plain under loom (whose atomics are created inside a model, not at compile time).
macro_rules! constructor {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block) => {
        $(#[$attr])*
        #[cfg(not(loom))]
        $vis const fn $name($($arg: $ty),*) -> $ret $body

        $(#[$attr])*
        #[cfg(loom)]
        $vis fn $name($($arg: $ty),*) -> $ret $body
    };
}

// ---- what the kernel provides -----------------------------------------------------------------

/// The scheduler operations the protocol needs (the kernel: `sched::current`,
/// `prepare_to_sleep`, `finish_wait`, `schedule`, `wake_up`).
///
/// A task's sleep state is *running*, *preparing to sleep* or *sleeping*. [`Scheduler::wake`]
/// makes a preparing task running again (its next [`Scheduler::schedule`] returns at once), a
/// sleeping one runnable, and does nothing to a running one. The operations on one task must
/// be ordered with each other as if under one lock (the kernel's scheduler lock).
pub trait Scheduler {
    /// A thread's handle (the kernel: its thread id).
    type Task: Clone + PartialEq;
    /// The lock around each wait queue's list of waiters (the kernel: an IRQ-safe spinlock,
    /// since interrupt handlers wake threads).
    type List: WaiterList<Self::Task>;

    /// The running thread, or `None` outside a thread (a CPU's idle code, boot), where waiting
    /// polls the condition with [`Scheduler::relax`] between checks.
    fn current(&self) -> Option<Self::Task>;

    /// Marks `task` (the running thread) as preparing to sleep: a [`Scheduler::wake`] from now
    /// on cancels its next sleep.
    fn prepare_to_sleep(&self, task: &Self::Task);

    /// `task` (the running thread) found its condition true: it will not sleep after all
    /// (Linux's `finish_wait`). Fine when a wake-up made it running already.
    fn finish_wait(&self, task: &Self::Task);

    /// Gives up the CPU: a thread preparing to sleep sleeps until woken; one woken since it
    /// prepared returns at once. May also return early (preemption, a spurious wake-up): the
    /// protocol re-checks its condition every time.
    fn schedule(&self);

    /// Wakes `task` (see the trait's documentation). Callable from any context, with no
    /// waiter list locked.
    fn wake(&self, task: &Self::Task);

    /// Waits a little outside a thread, before the condition is checked again (the kernel:
    /// halt until the next interrupt).
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// The lock around a wait queue's waiters, in the order they joined.
pub trait WaiterList<T> {
    /// Runs `f` with the list locked. `f` only edits the list: it never sleeps, wakes a thread
    /// or takes another lock, so the list lock is a leaf.
    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<T>) -> R) -> R;
}

/// Which step comes first before the re-check (loom builds only): the correct order, and the
/// one that lost wake-ups before commit 428a572, kept so the model checker can show that it
/// catches it.
#[cfg(loom)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Prepare to sleep, then join the list (Linux's `prepare_to_wait`; correct).
    PrepareThenJoin,
    /// Join the list, then prepare to sleep (loses wake-ups).
    JoinThenPrepare,
}

// ---- wait queues --------------------------------------------------------------------------------

/// Threads waiting for a condition (Linux's `wait_queue_head_t`).
pub struct WaitQueue<S: Scheduler> {
    scheduler: S,
    list: S::List,
    #[cfg(loom)]
    order: Order,
}

impl<S: Scheduler> WaitQueue<S> {
    /// An empty queue; `list` is the (empty) locked list of waiters.
    pub const fn new(scheduler: S, list: S::List) -> Self {
        Self {
            scheduler,
            list,
            #[cfg(loom)]
            order: Order::PrepareThenJoin,
        }
    }

    /// The same queue, waiting in `order` (loom builds only: to show the old order fails).
    #[cfg(loom)]
    pub fn with_order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// The scheduler the queue sleeps and wakes with.
    pub fn scheduler(&self) -> &S {
        &self.scheduler
    }

    /// Sleeps until `condition` is true (Linux's `wait_event`). The waker must make the
    /// condition true *before* it wakes the queue. `condition` runs with no waiter list locked
    /// and may have effects (taking a lock): it returned `true` exactly once when this returns.
    pub fn wait_until(&self, mut condition: impl FnMut() -> bool) {
        self.wait_until_or(&mut condition, || false);
    }

    /// Sleeps until `condition` is true or `expired` is (checked after `condition`, each time
    /// the thread runs); returns whether `condition` held. Timeouts use it: the caller arms a
    /// timer whose callback makes `expired` true and then [`Scheduler::wake`]s the thread
    /// (Linux's `wait_event_timeout` with `schedule_timeout`).
    pub fn wait_until_or(
        &self,
        mut condition: impl FnMut() -> bool,
        mut expired: impl FnMut() -> bool,
    ) -> bool {
        let Some(task) = self.scheduler.current() else {
            loop {
                if condition() {
                    return true;
                }
                if expired() {
                    return false;
                }
                self.scheduler.relax();
            }
        };
        loop {
            self.prepare_and_join(&task);
            let outcome = if condition() {
                Some(true)
            } else if expired() {
                Some(false)
            } else {
                None
            };
            if let Some(met) = outcome {
                self.scheduler.finish_wait(&task);
                self.leave(&task);
                return met;
            }
            // A thread woken by `wake_*` is off the list and joins again at the back; one
            // that returned early for another reason keeps its place.
            self.scheduler.schedule();
        }
    }

    /// Steps 1 and 2 of the protocol (see the crate documentation).
    fn prepare_and_join(&self, task: &S::Task) {
        #[cfg(loom)]
        if self.order == Order::JoinThenPrepare {
            self.join(task);
            self.scheduler.prepare_to_sleep(task);
            return;
        }
        self.scheduler.prepare_to_sleep(task);
        self.join(task);
    }

    fn join(&self, task: &S::Task) {
        self.list.with(|waiters| {
            if !waiters.contains(task) {
                waiters.push_back(task.clone());
            }
        });
    }

    fn leave(&self, task: &S::Task) {
        self.list
            .with(|waiters| waiters.retain(|waiter| waiter != task));
    }

    /// Wakes the longest-waiting thread, if any; returns whether there was one. The woken
    /// thread leaves the list, so each waiter is woken by one call. Use it only when any waiter
    /// can consume what the wake-up announces and none gives up without consuming it (a waiter
    /// that times out after being picked would leave the others asleep): a mutex's release.
    pub fn wake_one(&self) -> bool {
        let first = self.list.with(VecDeque::pop_front);
        if let Some(task) = &first {
            self.scheduler.wake(task);
        }
        first.is_some()
    }

    /// Wakes every waiting thread; returns how many there were. The list is emptied under its
    /// lock and the threads are woken after it is released.
    pub fn wake_all(&self) -> usize {
        let waiters = self.list.with(core::mem::take);
        for task in &waiters {
            self.scheduler.wake(task);
        }
        waiters.len()
    }

    /// Threads on the list now (a snapshot, for statistics and tests).
    pub fn waiters(&self) -> usize {
        self.list.with(|waiters| waiters.len())
    }
}

// ---- sleeping mutex -------------------------------------------------------------------------------

/// The grant of a sleeping mutex (Linux's `struct mutex`) without its data: a locked flag
/// changed only by a successful [`MutexGrant::try_lock`] and by [`MutexGrant::unlock`], and the
/// queue a contended taker sleeps on. The kernel's `Mutex<T>` pairs it with the cell it
/// guards. Thread context only; not recursive.
pub struct MutexGrant<S: Scheduler> {
    locked: AtomicBool,
    waiters: WaitQueue<S>,
}

impl<S: Scheduler> MutexGrant<S> {
    constructor! {
        /// An unlocked mutex whose takers sleep on `waiters`.
        pub fn new(waiters: WaitQueue<S>) -> Self {
            Self {
                locked: AtomicBool::new(false),
                waiters,
            }
        }
    }

    /// Takes the mutex if it is free. Acquire: the previous holder's writes are visible.
    pub fn try_lock(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the mutex, sleeping while another thread holds it.
    pub fn lock(&self) {
        if !self.try_lock() {
            self.waiters.wait_until(|| self.try_lock());
        }
    }

    /// Releases the mutex (only its holder calls this) and wakes the longest waiter, which
    /// tries again; if a newcomer took the mutex first, that one's release wakes the next.
    pub fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
        self.waiters.wake_one();
    }

    /// Whether some thread holds the mutex (a snapshot).
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }

    /// The queue takers sleep on.
    pub fn waiters(&self) -> &WaitQueue<S> {
        &self.waiters
    }
}

// ---- sleeping reader-writer lock ------------------------------------------------------------------

/// The grant of a sleeping reader-writer lock (Linux's `rw_semaphore`) without its data: one
/// word holding [`RwLockGrant::WRITER`] or the number of readers, changed only by successful
/// attempts and releases (a failed attempt that bumped the count for a moment could fail a
/// writer's attempt with no holder left to wake it), and the queue both kinds sleep on.
///
/// A waiting writer stops new readers from entering, so writers are not starved. Consequently
/// a thread must not take the read side twice: a writer arriving in between waits for the
/// first read and blocks the second.
pub struct RwLockGrant<S: Scheduler> {
    word: AtomicU32,
    writers_waiting: AtomicU32,
    waiters: WaitQueue<S>,
}

impl<S: Scheduler> RwLockGrant<S> {
    /// The word's value while a writer holds the lock.
    pub const WRITER: u32 = 1 << 31;

    constructor! {
        /// A free lock whose waiters sleep on `waiters`.
        pub fn new(waiters: WaitQueue<S>) -> Self {
            Self {
                word: AtomicU32::new(0),
                writers_waiting: AtomicU32::new(0),
                waiters,
            }
        }
    }

    /// Shared access if no writer holds or waits for the lock.
    pub fn try_read(&self) -> bool {
        let mut word = self.word.load(Ordering::Relaxed);
        loop {
            if word & Self::WRITER != 0
                || word + 1 == Self::WRITER
                || self.writers_waiting.load(Ordering::Acquire) != 0
            {
                return false;
            }
            match self.word.compare_exchange_weak(
                word,
                word + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => word = now,
            }
        }
    }

    /// Exclusive access if nobody holds the lock.
    pub fn try_write(&self) -> bool {
        self.word
            .compare_exchange(0, Self::WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Shared access, sleeping while a writer holds or waits for the lock.
    pub fn read(&self) {
        if !self.try_read() {
            self.waiters.wait_until(|| self.try_read());
        }
    }

    /// Exclusive access, sleeping while readers or a writer hold the lock. While it waits,
    /// new readers wait too.
    pub fn write(&self) {
        if !self.try_write() {
            self.writers_waiting.fetch_add(1, Ordering::AcqRel);
            self.waiters.wait_until(|| self.try_write());
            // Readers this writer held back are woken by its release.
            self.writers_waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Ends one shared access; the last reader out wakes the waiters (a writer waits for it).
    pub fn read_unlock(&self) {
        if self.word.fetch_sub(1, Ordering::Release) == 1 {
            self.waiters.wake_all();
        }
    }

    /// Ends the exclusive access and wakes every waiter (readers may all enter, or the next
    /// writer).
    pub fn write_unlock(&self) {
        self.word.store(0, Ordering::Release);
        self.waiters.wake_all();
    }

    /// Writers waiting for the lock (a snapshot).
    pub fn writers_waiting(&self) -> u32 {
        self.writers_waiting.load(Ordering::Acquire)
    }

    /// Readers holding the lock (a snapshot; 0 while a writer holds it).
    pub fn readers(&self) -> u32 {
        let word = self.word.load(Ordering::Relaxed);
        if word & Self::WRITER != 0 {
            0
        } else {
            word
        }
    }

    /// Whether a writer holds the lock (a snapshot).
    pub fn is_write_locked(&self) -> bool {
        self.word.load(Ordering::Relaxed) & Self::WRITER != 0
    }

    /// The queue readers and writers sleep on.
    pub fn waiters(&self) -> &WaitQueue<S> {
        &self.waiters
    }
}

// ---- completions ------------------------------------------------------------------------------

/// A counted completion (Linux's `struct completion`): each [`Completion::complete`] lets one
/// wait return; [`Completion::complete_all`] lets every present and future wait return.
pub struct Completion<S: Scheduler> {
    done: AtomicU64,
    waiters: WaitQueue<S>,
}

impl<S: Scheduler> Completion<S> {
    /// The count after [`Completion::complete_all`]: waits return without consuming it.
    pub const ALL: u64 = u64::MAX;

    constructor! {
        /// Nothing completed yet; waiters sleep on `waiters`.
        pub fn new(waiters: WaitQueue<S>) -> Self {
            Self {
                done: AtomicU64::new(0),
                waiters,
            }
        }
    }

    /// Signals one completion and wakes the waiters. Callable from any context. Every waiter
    /// is woken and re-checks (one consumes it): a waiter that times out after being woken
    /// cannot then leave another asleep with the completion unconsumed.
    pub fn complete(&self) {
        let _ = self
            .done
            .fetch_update(Ordering::Release, Ordering::Relaxed, |done| {
                done.checked_add(1).filter(|&next| next != Self::ALL)
            });
        self.waiters.wake_all();
    }

    /// Completes for good (Linux's `complete_all`): every wait returns from now on, until
    /// [`Completion::reinit`].
    pub fn complete_all(&self) {
        self.done.store(Self::ALL, Ordering::Release);
        self.waiters.wake_all();
    }

    /// Consumes a completion if one is available (Linux's `try_wait_for_completion`).
    pub fn try_wait(&self) -> bool {
        self.done
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |done| match done {
                0 => None,
                Self::ALL => Some(Self::ALL),
                done => Some(done - 1),
            })
            .is_ok()
    }

    /// Sleeps until a completion is available and consumes it.
    pub fn wait(&self) {
        self.waiters.wait_until(|| self.try_wait());
    }

    /// Like [`Completion::wait`], giving up once `expired` is true (see
    /// [`WaitQueue::wait_until_or`] for how a timeout wakes the thread). Returns whether a
    /// completion was consumed; one that arrives as the wait gives up stays pending.
    pub fn wait_or(&self, expired: impl FnMut() -> bool) -> bool {
        self.waiters.wait_until_or(|| self.try_wait(), expired)
    }

    /// Completions signalled and not yet consumed ([`Completion::ALL`] after `complete_all`).
    pub fn pending(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    /// Forgets every completion (Linux's `reinit_completion`); only with no waiter.
    pub fn reinit(&self) {
        self.done.store(0, Ordering::Release);
    }

    /// The queue waiters sleep on.
    pub fn waiters(&self) -> &WaitQueue<S> {
        &self.waiters
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! Single-thread checks of the words; the protocol under threads is in `tests/`.

    use super::*;
    use std::cell::RefCell;

    /// Not a thread: waits poll, and a sleep would be a bug.
    struct NoThreads;

    impl Scheduler for NoThreads {
        type Task = u64;
        type List = RefCell<VecDeque<u64>>;
        fn current(&self) -> Option<u64> {
            None
        }
        fn prepare_to_sleep(&self, _: &u64) {
            unreachable!("no thread prepares to sleep");
        }
        fn finish_wait(&self, _: &u64) {
            unreachable!("no thread waits");
        }
        fn schedule(&self) {
            unreachable!("no thread sleeps");
        }
        fn wake(&self, _: &u64) {}
    }

    impl WaiterList<u64> for RefCell<VecDeque<u64>> {
        fn with<R>(&self, f: impl FnOnce(&mut VecDeque<u64>) -> R) -> R {
            f(&mut self.borrow_mut())
        }
    }

    fn queue() -> WaitQueue<NoThreads> {
        WaitQueue::new(NoThreads, RefCell::new(VecDeque::new()))
    }

    #[test]
    fn mutex_try_lock_is_exclusive() {
        let mutex = MutexGrant::new(queue());
        assert!(mutex.try_lock());
        assert!(mutex.is_locked());
        assert!(!mutex.try_lock());
        mutex.unlock();
        mutex.lock();
        assert!(mutex.is_locked());
    }

    #[test]
    fn rwlock_word_counts_readers_or_one_writer() {
        let lock = RwLockGrant::new(queue());
        assert!(lock.try_read() && lock.try_read());
        assert_eq!(lock.readers(), 2);
        assert!(!lock.try_write(), "readers hold it");
        lock.read_unlock();
        lock.read_unlock();
        assert!(lock.try_write());
        assert!(lock.is_write_locked());
        assert_eq!(lock.readers(), 0);
        assert!(!lock.try_read(), "a writer holds it");
        assert!(!lock.try_write());
        lock.write_unlock();
        lock.read();
        assert_eq!(lock.readers(), 1);
    }

    #[test]
    fn failed_attempts_leave_the_word_alone() {
        let lock = RwLockGrant::new(queue());
        assert!(lock.try_write());
        for _ in 0..3 {
            assert!(!lock.try_read());
        }
        lock.write_unlock();
        assert!(lock.try_write(), "no transient reader count left behind");
    }

    #[test]
    fn completion_counts_and_complete_all_sticks() {
        let done = Completion::new(queue());
        assert!(!done.try_wait());
        assert!(!done.wait_or(|| true), "expired with nothing completed");
        done.complete();
        done.complete();
        assert_eq!(done.pending(), 2);
        done.wait();
        assert!(done.wait_or(|| true), "a completion wins over the expiry");
        assert!(!done.try_wait());
        done.complete_all();
        for _ in 0..3 {
            done.wait();
        }
        done.complete();
        assert_eq!(done.pending(), Completion::<NoThreads>::ALL);
        done.reinit();
        assert!(!done.try_wait());
    }

    #[test]
    fn wake_one_is_fifo_and_wake_all_empties() {
        let queue = queue();
        queue.join(&1);
        queue.join(&2);
        queue.join(&1);
        assert_eq!(queue.waiters(), 2, "joining twice keeps one place");
        assert!(queue.wake_one());
        assert_eq!(queue.list.with(|list| list.front().copied()), Some(2));
        queue.join(&3);
        assert_eq!(queue.wake_all(), 2);
        assert!(!queue.wake_one());
    }
}
