//! Locks. `IrqSafeLock` masks local interrupts while held, so data shared with interrupt
//! handlers cannot deadlock against the code it interrupted.
//!
//! Lock order (outermost first), documented here as the kernel grows:
//! `console::CONSOLE` is a leaf; `mm::PAGES` is a leaf; `shell` input ring is a leaf.

use core::ops::{Deref, DerefMut};

use crate::arch::cpu;

/// A spinlock whose guard keeps local interrupts disabled.
pub struct IrqSafeLock<T> {
    inner: spin::Mutex<T>,
}

/// Guard for [`IrqSafeLock`]; restores the interrupt flag when dropped.
pub struct IrqSafeGuard<'a, T> {
    guard: Option<spin::MutexGuard<'a, T>>,
    interrupts_were_enabled: bool,
}

impl<T> IrqSafeLock<T> {
    /// Creates an unlocked lock.
    pub const fn new(value: T) -> Self {
        Self {
            inner: spin::Mutex::new(value),
        }
    }

    /// Disables interrupts, then spins until the lock is ours.
    pub fn lock(&self) -> IrqSafeGuard<'_, T> {
        let interrupts_were_enabled = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        IrqSafeGuard {
            guard: Some(self.inner.lock()),
            interrupts_were_enabled,
        }
    }

    /// Takes the lock if it is free (used by the emergency console path).
    pub fn try_lock(&self) -> Option<IrqSafeGuard<'_, T>> {
        let interrupts_were_enabled = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        match self.inner.try_lock() {
            Some(guard) => Some(IrqSafeGuard {
                guard: Some(guard),
                interrupts_were_enabled,
            }),
            None => {
                if interrupts_were_enabled {
                    cpu::enable_interrupts();
                }
                None
            }
        }
    }
}

impl<T> Deref for IrqSafeGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("guard is present until drop")
    }
}

impl<T> DerefMut for IrqSafeGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("guard is present until drop")
    }
}

impl<T> Drop for IrqSafeGuard<'_, T> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if self.interrupts_were_enabled {
            cpu::enable_interrupts();
        }
    }
}
