//! A spin lock for the portable crates (gpiolib, devres) whose holder the kernel must not
//! preempt, as Linux's `spin_lock` disables preemption.
//!
//! Why: on one CPU, a thread preempted while holding a plain spin lock cannot run again while
//! a higher-priority thread spins on that lock. gpiolib's line table is taken by the shell's
//! `gpiomon` (an ordinary thread) and by the virtio-gpio interrupt thread (real-time): the
//! interrupt thread spun forever on a lock whose holder it had preempted.
//!
//! The crate has no kernel to call, so the kernel plugs its `preempt_disable` and
//! `preempt_enable` in once at boot with [`set_preempt_hooks`]; on the host (tests) no hooks
//! are set and the lock is a plain spin lock. Guards must not be held across anything that
//! sleeps, as with any spin lock.
#![no_std]

use core::ops::{Deref, DerefMut};

/// What the kernel does around a critical section.
#[derive(Clone, Copy, Debug)]
pub struct PreemptHooks {
    /// Called before the lock is taken (`preempt_disable`).
    pub disable: fn(),
    /// Called after it is released (`preempt_enable`, a preemption point).
    pub enable: fn(),
}

static HOOKS: spin::Once<PreemptHooks> = spin::Once::new();

/// Installs the kernel's hooks. Only the first call takes effect (returns `false` after that):
/// a hook changed while a guard is held would unbalance the preemption count.
pub fn set_preempt_hooks(hooks: PreemptHooks) -> bool {
    let mut installed = false;
    HOOKS.call_once(|| {
        installed = true;
        hooks
    });
    installed
}

/// The hooks in effect, if any.
pub fn preempt_hooks() -> Option<PreemptHooks> {
    HOOKS.get().copied()
}

/// A spin lock whose holder is not preempted (once the kernel set the hooks).
#[derive(Debug, Default)]
pub struct SpinLock<T> {
    inner: spin::Mutex<T>,
}

impl<T> SpinLock<T> {
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    /// Disables preemption, then spins until the lock is free.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        let hooks = preempt_hooks();
        if let Some(hooks) = hooks {
            (hooks.disable)();
        }
        SpinLockGuard {
            guard: Some(self.inner.lock()),
            hooks,
        }
    }

    /// Takes the lock if it is free; preemption is left as it was when it is not.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let hooks = preempt_hooks();
        if let Some(hooks) = hooks {
            (hooks.disable)();
        }
        match self.inner.try_lock() {
            Some(guard) => Some(SpinLockGuard {
                guard: Some(guard),
                hooks,
            }),
            None => {
                if let Some(hooks) = hooks {
                    (hooks.enable)();
                }
                None
            }
        }
    }

    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

/// Holds the lock (and preemption off); dropping it releases the lock, then re-enables
/// preemption.
pub struct SpinLockGuard<'a, T> {
    /// `None` only inside `drop`, after the lock was released.
    guard: Option<spin::MutexGuard<'a, T>>,
    /// The hooks called at `lock`, so `drop` calls the matching `enable`.
    hooks: Option<PreemptHooks>,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("held until drop")
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("held until drop")
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // Released first: a preemption point at `enable` must not switch away with it held.
        self.guard = None;
        if let Some(hooks) = self.hooks {
            (hooks.enable)();
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};

    static DEPTH: AtomicI32 = AtomicI32::new(0);
    static ENABLES_WITH_LOCK_HELD: AtomicU32 = AtomicU32::new(0);
    static LOCK: SpinLock<u32> = SpinLock::new(0);

    fn disable() {
        DEPTH.fetch_add(1, Ordering::SeqCst);
    }

    fn enable() {
        if LOCK.inner.is_locked() {
            ENABLES_WITH_LOCK_HELD.fetch_add(1, Ordering::SeqCst);
        }
        DEPTH.fetch_sub(1, Ordering::SeqCst);
    }

    // One test, since the hooks are process-wide and set once.
    #[test]
    fn holders_run_with_preemption_off_and_release_before_enabling_it() {
        let hooks = PreemptHooks { disable, enable };
        assert!(set_preempt_hooks(hooks));
        assert!(!set_preempt_hooks(hooks), "only the first call counts");
        {
            let mut guard = LOCK.lock();
            assert_eq!(DEPTH.load(Ordering::SeqCst), 1);
            *guard += 1;
            // A second taker fails and leaves preemption as it was.
            assert!(LOCK.try_lock().is_none());
            assert_eq!(DEPTH.load(Ordering::SeqCst), 1);
            // (Its `enable` ran with our lock held, as it must.)
            ENABLES_WITH_LOCK_HELD.store(0, Ordering::SeqCst);
        }
        assert_eq!(DEPTH.load(Ordering::SeqCst), 0);
        assert_eq!(ENABLES_WITH_LOCK_HELD.load(Ordering::SeqCst), 0);
        let guard = LOCK.try_lock().expect("free");
        assert_eq!((*guard, DEPTH.load(Ordering::SeqCst)), (1, 1));
        drop(guard);
        assert_eq!(DEPTH.load(Ordering::SeqCst), 0);

        // Threads contending: the count balances (the held-lock check above only means
        // something without other holders, so it is not repeated here).
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1000 {
                        *LOCK.lock() += 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*LOCK.lock(), 4001);
        assert_eq!(DEPTH.load(Ordering::SeqCst), 0);
    }
}
