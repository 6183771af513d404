//! Locks and per-CPU data. `IrqSafeLock` masks local interrupts while held, so data shared
//! with interrupt handlers cannot deadlock against the code it interrupted. There is no global
//! kernel lock: each lock guards one structure and is documented next to it.
//!
//! Lock order (outermost first), documented here as the kernel grows:
//! - `console::CONSOLE` is a leaf; `mm::PAGES` is a leaf; `shell` input ring is a leaf.
//! - time: `time::CPU_TIME[cpu]` → `time::JIFFIES` → `time::CLOCKS` (see time/mod.rs). Two
//!   CPUs' `CPU_TIME` locks are only held together by readers of every CPU (timer_list), which
//!   take them in ascending CPU order.
//! - smp: `smp::CALL_QUEUE[cpu]` is a leaf (never held while waiting for another CPU).
//! - `irq::LINES`, `irq::IOAPIC` are leaves.
//! - `time::CPU_TIME[cpu]` → `time::PREEMPTION_TIMER[cpu]` (a leaf; the scheduler arms it with
//!   `SCHED` released).
//! - sched: `time::CPU_TIME[cpu]` → `time::JIFFIES` → `sched::SCHED` (timer callbacks wake
//!   threads); `SCHED` is the scheduler lock (policy + thread table, not a big kernel lock) and
//!   never takes a time lock; under it only leaves are taken (`CLOCKS`, a thread's entry slot,
//!   `mm::PAGES`). A wait queue's waiter list (`sched::WaitQueue`) is a leaf released before
//!   `SCHED` is taken. No lock is held across a context switch.
//! - Preemption: code running with interrupts enabled holds no spinlock (every lock masks
//!   interrupts), so returning from an interrupt into it is a preemption point.

use core::ops::{Deref, DerefMut};

pub use crate::arch::percpu::{InterruptsDisabled, MAX_CPUS};

/// A spinlock whose guard keeps local interrupts disabled. A lock made with
/// [`IrqSafeLock::named`] is checked by lockdep (`lockdep=1`) under that name.
pub struct IrqSafeLock<T> {
    inner: spin::Mutex<T>,
    name: Option<&'static str>,
    class: spin::Once<lull_lockdep::ClassId>,
}

/// Guard for [`IrqSafeLock`]; releases the lock, then restores the interrupt flag.
pub struct IrqSafeGuard<'a, T> {
    // Field order is drop order: the lock is released before interrupts come back on.
    guard: spin::MutexGuard<'a, T>,
    /// The lockdep class of a named lock (released from the checker on drop).
    class: Option<&'a spin::Once<lull_lockdep::ClassId>>,
    interrupts: InterruptsDisabled,
}

impl<T> IrqSafeLock<T> {
    /// Creates an unlocked lock (not tracked by lockdep).
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
            name: None,
            class: spin::Once::new(),
        }
    }

    /// Creates an unlocked lock that lockdep tracks as class `name`.
    pub const fn named(name: &'static str, value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
            name: Some(name),
            class: spin::Once::new(),
        }
    }

    /// Disables interrupts, then spins until the lock is ours. A named lock is checked by
    /// lockdep first (so an inversion is reported before it can deadlock).
    #[track_caller]
    pub fn lock(&self) -> IrqSafeGuard<'_, T> {
        let interrupts = InterruptsDisabled::new();
        let class = match self.name {
            Some(name) if crate::lockdep::enabled() => {
                crate::lockdep::acquire(
                    name,
                    &self.class,
                    lull_lockdep::Site::caller(),
                    &interrupts,
                );
                Some(&self.class)
            }
            _ => None,
        };
        IrqSafeGuard {
            guard: self.inner.lock(),
            class,
            interrupts,
        }
    }

    /// Takes the lock if it is free (used by the emergency console path; not tracked).
    pub fn try_lock(&self) -> Option<IrqSafeGuard<'_, T>> {
        let interrupts = InterruptsDisabled::new();
        let guard = self.inner.try_lock()?;
        Some(IrqSafeGuard {
            guard,
            class: None,
            interrupts,
        })
    }
}

impl<T> Drop for IrqSafeGuard<'_, T> {
    #[track_caller]
    fn drop(&mut self) {
        if let Some(class) = self.class {
            crate::lockdep::release(class, lull_lockdep::Site::caller(), &self.interrupts);
        }
    }
}

impl<T> IrqSafeGuard<'_, T> {
    /// The proof that interrupts are off while the guard is held.
    #[allow(dead_code)] // part of the guard's contract; used as per-CPU users appear
    pub fn interrupts_disabled(&self) -> &InterruptsDisabled {
        &self.interrupts
    }
}

impl<T> Deref for IrqSafeGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for IrqSafeGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// One `T` per CPU. The running CPU's own slot is reached with [`PerCpu::this_cpu`], which
/// needs proof that the caller cannot migrate while it holds the reference; another CPU's
/// slot with [`PerCpu::on_cpu`] (for readers such as `/proc/interrupts`, so `T` must be
/// safe to share: atomics or locks).
pub struct PerCpu<T> {
    slots: [T; MAX_CPUS],
}

impl<T> PerCpu<T> {
    /// Wraps one value per CPU (index = CPU index).
    pub const fn new(slots: [T; MAX_CPUS]) -> Self {
        Self { slots }
    }

    /// The running CPU's slot.
    pub fn this_cpu<'a>(&'a self, proof: &'a InterruptsDisabled) -> &'a T {
        &self.slots[proof.cpu_index()]
    }

    /// CPU `cpu`'s slot (`cpu` < [`MAX_CPUS`], else the last slot: callers pass indices from
    /// `smp`, which never hands out larger ones).
    pub fn on_cpu(&self, cpu: usize) -> &T {
        &self.slots[cpu.min(MAX_CPUS - 1)]
    }
}
