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
