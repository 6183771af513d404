//! Wait queues and completions: the kernel's side of `lull-waitqueue`, which owns the protocol
//! (prepare to sleep → join → re-check → sleep; wake) and checks it with loom on the host. Here
//! the scheduler plugs in ([`KernelScheduler`]) and each queue's waiter list is a leaf IRQ-safe
//! lock, released before the scheduler lock is taken (wakers take the list, drop it, then wake
//! each waiter).

use alloc::collections::VecDeque;

use crate::arch::cpu;
use crate::kernel::locking::IrqSafeLock;

/// The scheduler as the wait/wake protocol sees it: threads by id.
pub struct KernelScheduler;

impl lull_waitqueue::Scheduler for KernelScheduler {
    type Task = u64;
    type List = WaiterList;

    fn current(&self) -> Option<u64> {
        super::current()
    }

    fn prepare_to_sleep(&self, task: &u64) {
        super::prepare_to_sleep(*task);
    }

    fn finish_wait(&self, task: &u64) {
        super::finish_wait(*task);
    }

    fn schedule(&self) {
        super::schedule();
    }

    fn wake(&self, task: &u64) {
        super::wake_up(*task);
    }

    /// Outside a thread (a CPU's idle code, boot before threads): halt until an interrupt.
    fn relax(&self) {
        cpu::disable_interrupts();
        crate::kernel::time::idle();
    }
}

/// A queue's waiters, in the order they joined (a leaf IRQ-safe lock: interrupt handlers wake).
///
/// A queue nobody waits on owns no heap: the list's buffer is given back when its last waiter
/// leaves. Otherwise what a queue holds would depend on history (whether a completion's
/// waiter got there before or after the `complete`, how many waited at once), and a device's
/// state would differ by a buffer from one bind to the next, which the exact leak counts of
/// the bind/unbind tests see.
pub struct WaiterList(IrqSafeLock<VecDeque<u64>>);

impl lull_waitqueue::WaiterList<u64> for WaiterList {
    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<u64>) -> R) -> R {
        let mut waiters = self.0.lock();
        let result = f(&mut waiters);
        if waiters.is_empty() && waiters.capacity() != 0 {
            *waiters = VecDeque::new();
        }
        result
    }
}

/// An empty protocol queue over the kernel's scheduler (for the sleeping locks' grants too).
pub(crate) const fn protocol_queue() -> lull_waitqueue::WaitQueue<KernelScheduler> {
    lull_waitqueue::WaitQueue::new(
        KernelScheduler,
        WaiterList(IrqSafeLock::new(VecDeque::new())),
    )
}

/// Threads waiting for a condition (Linux's `wait_queue_head_t`).
pub struct WaitQueue(lull_waitqueue::WaitQueue<KernelScheduler>);

impl WaitQueue {
    /// An empty wait queue.
    pub const fn new() -> Self {
        Self(protocol_queue())
    }

    /// Sleeps until `condition` is true (Linux's `wait_event`). The waker must make the
    /// condition true *before* calling [`WaitQueue::wake_all`] or [`WaitQueue::wake_one`].
    pub fn wait_until(&self, condition: impl FnMut() -> bool) {
        self.0.wait_until(condition);
    }

    /// Wakes every waiting thread. Callable from any context.
    pub fn wake_all(&self) {
        self.0.wake_all();
    }

    /// Sleeps until `condition` is true or `timeout_ns` passed (Linux's
    /// `wait_event_timeout`); returns whether the condition held. The timeout is an hrtimer.
    pub fn wait_until_timeout(&self, timeout_ns: u64, condition: impl FnMut() -> bool) -> bool {
        wait_with_timeout(
            timeout_ns,
            "wait_event_timeout",
            condition,
            |condition, expired| self.0.wait_until_or(condition, expired),
        )
    }

    /// Wakes the longest-waiting thread, if any. Callable from any context. Use it only when
    /// any waiter can take what the wake-up announces (a mutex's release).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn wake_one(&self) {
        self.0.wake_one();
    }
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `wait(condition, expired)` with a sleep timer armed for `timeout_ns` from now, whose
/// firing makes `expired` true and wakes the thread; outside a thread, or with no timer to be
/// had, polls the condition until the deadline instead.
fn wait_with_timeout<C: FnMut() -> bool>(
    timeout_ns: u64,
    site: &'static str,
    mut condition: C,
    wait: impl FnOnce(&mut C, &mut dyn FnMut() -> bool) -> bool,
) -> bool {
    let deadline = crate::kernel::time::uptime_ns().saturating_add(timeout_ns);
    if let Some(thread) = super::current() {
        let waited = crate::kernel::time::with_sleep_timer(thread, deadline, site, |expired| {
            wait(&mut condition, expired)
        });
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

/// A counted completion (Linux's `struct completion`): each `complete` lets one `wait` return.
pub struct Completion(lull_waitqueue::Completion<KernelScheduler>);

impl Completion {
    /// A completion with nothing completed yet.
    pub const fn new() -> Self {
        Self(lull_waitqueue::Completion::new(protocol_queue()))
    }

    /// Signals one completion and wakes the waiters. Callable from any context.
    pub fn complete(&self) {
        self.0.complete();
    }

    /// Sleeps until a completion is available and consumes it.
    pub fn wait(&self) {
        self.0.wait();
    }

    /// Like [`Completion::wait`], giving up after `timeout_ns` (Linux's
    /// `wait_for_completion_timeout`). Returns whether a completion was consumed.
    pub fn wait_timeout(&self, timeout_ns: u64) -> bool {
        wait_with_timeout(
            timeout_ns,
            "wait_for_completion_timeout",
            || self.0.try_wait(),
            |_, expired| self.0.wait_or(expired),
        )
    }

    /// Completions signalled and not yet consumed.
    pub fn pending(&self) -> u64 {
        self.0.pending()
    }
}

impl Default for Completion {
    fn default() -> Self {
        Self::new()
    }
}
