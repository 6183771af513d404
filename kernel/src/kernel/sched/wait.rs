//! Wait queues and completions, built on the scheduler's prepare-to-sleep / wake-up protocol.
//!
//! Lock: each queue's waiter list is a leaf IRQ-safe lock, released before the scheduler lock
//! is taken (wakers take the list, drop it, then wake each waiter).

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::kernel::locking::IrqSafeLock;

/// Threads waiting for a condition (Linux's `wait_queue_head_t`).
pub struct WaitQueue {
    waiters: IrqSafeLock<Vec<u64>>,
}

impl WaitQueue {
    /// An empty wait queue.
    pub const fn new() -> Self {
        Self {
            waiters: IrqSafeLock::new(Vec::new()),
        }
    }

    fn add_waiter(&self, id: u64) {
        let mut waiters = self.waiters.lock();
        if !waiters.contains(&id) {
            waiters.push(id);
        }
    }

    fn remove_waiter(&self, id: u64) {
        self.waiters.lock().retain(|&waiter| waiter != id);
    }

    /// Sleeps until `condition` is true (Linux's `wait_event`). The waker must make the
    /// condition true *before* calling [`WaitQueue::wake_all`] or [`WaitQueue::wake_one`].
    pub fn wait_until(&self, condition: impl FnMut() -> bool) {
        super::sleep_until_condition(
            condition,
            |id| self.add_waiter(id),
            |id| self.remove_waiter(id),
        );
    }

    /// Sleeps until `condition` is true or `timeout_ns` has passed (Linux's
    /// `wait_event_timeout`). Returns whether the condition held. Outside a thread it polls.
    pub fn wait_until_timeout(&self, mut condition: impl FnMut() -> bool, timeout_ns: u64) -> bool {
        let deadline = crate::kernel::time::uptime_ns().saturating_add(timeout_ns);
        if let Some(thread) = super::current() {
            let waited = crate::kernel::time::thread_wait_until(
                thread,
                deadline,
                "wait_event_timeout",
                &mut condition,
                |id| self.add_waiter(id),
                |id| self.remove_waiter(id),
            );
            if let Some(met) = waited {
                return met;
            }
        }
        loop {
            if condition() {
                return true;
            }
            if crate::kernel::time::uptime_ns() >= deadline {
                return false;
            }
            core::hint::spin_loop();
        }
    }

    /// Wakes every waiting thread. Callable from any context.
    pub fn wake_all(&self) {
        let waiters = core::mem::take(&mut *self.waiters.lock());
        for id in waiters {
            super::wake_up(id);
        }
    }

    /// Wakes the longest-waiting thread, if any. Callable from any context.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))]
    pub fn wake_one(&self) {
        let first = {
            let mut waiters = self.waiters.lock();
            (!waiters.is_empty()).then(|| waiters.remove(0))
        };
        if let Some(id) = first {
            super::wake_up(id);
        }
    }
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

/// A counted completion (Linux's `struct completion`): each `complete` lets one `wait` return.
pub struct Completion {
    done: AtomicU64,
    queue: WaitQueue,
}

impl Completion {
    /// A completion with nothing completed yet.
    pub const fn new() -> Self {
        Self {
            done: AtomicU64::new(0),
            queue: WaitQueue::new(),
        }
    }

    /// Signals one completion and wakes the waiters. Callable from any context.
    pub fn complete(&self) {
        self.done.fetch_add(1, Ordering::Release);
        self.queue.wake_all();
    }

    /// Sleeps until a completion is available and consumes it.
    pub fn wait(&self) {
        self.queue.wait_until(|| {
            self.done
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |done| {
                    done.checked_sub(1)
                })
                .is_ok()
        });
    }

    /// Like [`Completion::wait`], giving up after `timeout_ns` (Linux's
    /// `wait_for_completion_timeout`). Returns whether a completion was consumed.
    pub fn wait_timeout(&self, timeout_ns: u64) -> bool {
        self.queue.wait_until_timeout(
            || {
                self.done
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |done| {
                        done.checked_sub(1)
                    })
                    .is_ok()
            },
            timeout_ns,
        )
    }

    /// Completions signalled and not yet consumed.
    pub fn pending(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }
}

impl Default for Completion {
    fn default() -> Self {
        Self::new()
    }
}
