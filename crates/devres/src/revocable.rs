//! Resource handles whose access is revoked when the device unbinds (Rust-for-Linux's
//! `Revocable<T>` under `Devres<T>`).
//!
//! A driver keeps an `Arc<Revocable<T>>` (from
//! [`DevresList::add_revocable`](crate::DevresList::add_revocable)) and reaches the resource only
//! through [`Revocable::try_access`]. When the device's resources are released, the list revokes
//! the handle: from then on `try_access` returns `None`, and the value is dropped — which releases
//! the resource — once no accessor holds it. A driver therefore cannot touch a region after its
//! device is gone, even from a thread or timer that outlived the unbind.
//!
//! # Contract
//!
//! * [`Revocable::revoke`] never blocks. It returns [`RevokeState::Released`] when it dropped the
//!   value, [`RevokeState::AlreadyReleased`] when an earlier call did, and
//!   [`RevokeState::Busy`] when accessors still hold guards. In the `Busy` case the value is still
//!   alive; the caller must wait (the kernel sleeps or relaxes) and call `revoke` again until it
//!   stops answering `Busy`. [`Revocable::revoke_and_wait`] is that loop, with the waiting
//!   supplied by the caller.
//! * No new access is granted once `revoke` has returned, except to accessors that `revoke`
//!   counted as active (so `Busy` is never followed by a silent new reader that a later
//!   `Released` would race with). See `try_access` for the fence pairing that ensures this.
//! * The value is dropped exactly once: by the `revoke` call that answers `Released`, or with the
//!   `Revocable` itself if it was never revoked.
//!
//! # Soundness without `unsafe`
//!
//! The value lives in a `spin::RwLock<Option<T>>`. Accessors take it with `try_read` (the lock's
//! reader count is the access count); `revoke` takes it with `try_write` and moves the value out.
//! Neither path loops, so nothing here spins; the unsafe cell code is `spin`'s. The guard only
//! exists while the read lock is held and the slot held `Some`, so `revoke` cannot take the value
//! from under it.

use core::fmt;
use core::ops::Deref;
use core::sync::atomic::{fence, AtomicBool, Ordering};

/// What [`Revocable::revoke`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeState {
    /// This call dropped the value; no accessor holds it, and none will get it again.
    Released,
    /// An earlier call already dropped the value.
    AlreadyReleased,
    /// New access is refused, but this many accessors still hold guards (a momentary count: a
    /// refused accessor briefly counts too); call `revoke` again after waiting.
    Busy {
        /// Accessors holding (or, for an instant, trying to take) the value.
        accessors: usize,
    },
}

/// A value whose access can be withdrawn: see the [module documentation](self) for the contract.
pub struct Revocable<T> {
    /// Set by the first `revoke`; checked by every `try_access`.
    revoked: AtomicBool,
    /// The value until revocation; `None` after.
    slot: spin::RwLock<Option<T>>,
}

impl<T> Revocable<T> {
    /// A handle to `value`, accessible until revoked.
    pub const fn new(value: T) -> Self {
        Self {
            revoked: AtomicBool::new(false),
            slot: spin::RwLock::new(Some(value)),
        }
    }

    /// Access to the value, or `None` once revocation has begun. Never waits.
    ///
    /// The guard should be held briefly (a register access, a DMA submission): `revoke` cannot
    /// finish while it exists.
    pub fn try_access(&self) -> Option<RevocableGuard<'_, T>> {
        if self.revoked.load(Ordering::Acquire) {
            return None;
        }
        let guard = self.slot.try_read()?;
        // Pairs with the fence in `revoke`: either this load sees `revoked`, or `revoke`'s
        // `try_write` sees our reader and answers `Busy`. Without the pairing a reader could
        // slip in after `revoke` had checked and returned.
        fence(Ordering::SeqCst);
        if self.revoked.load(Ordering::Relaxed) || guard.is_none() {
            return None;
        }
        Some(RevocableGuard { guard })
    }

    /// Refuses all further access and drops the value if no accessor holds it. Never waits.
    ///
    /// Idempotent: call it again after `Busy` until it answers `Released` or `AlreadyReleased`.
    pub fn revoke(&self) -> RevokeState {
        self.revoked.store(true, Ordering::Relaxed);
        // Pairs with the fence in `try_access`.
        fence(Ordering::SeqCst);
        match self.slot.try_write() {
            Some(mut slot) => {
                let value = slot.take();
                // Drop the value after the lock: its drop (the real release) may be slow, and
                // an accessor racing with it should just be refused, not see a held write lock.
                drop(slot);
                match value {
                    Some(value) => {
                        drop(value);
                        RevokeState::Released
                    }
                    None => RevokeState::AlreadyReleased,
                }
            }
            None => RevokeState::Busy {
                accessors: self.slot.reader_count(),
            },
        }
    }

    /// Revokes, calling `wait` between attempts while accessors still hold the value. Returns
    /// `true` if this call released it, `false` if it had been released before.
    ///
    /// `wait` is the caller's way to let accessors finish: `core::hint::spin_loop` with
    /// interrupts on, a yield or a short sleep in the kernel. It must not be called where an
    /// accessor on this CPU could be the one holding the guard (for example with the guard held
    /// by the caller itself), or this never returns.
    pub fn revoke_and_wait(&self, mut wait: impl FnMut()) -> bool {
        loop {
            match self.revoke() {
                RevokeState::Released => return true,
                RevokeState::AlreadyReleased => return false,
                RevokeState::Busy { .. } => wait(),
            }
        }
    }

    /// Whether revocation has begun (access is refused from now on).
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Accessors holding guards right now: a heuristic for listings and tests, not for
    /// synchronisation.
    pub fn active_accessors(&self) -> usize {
        self.slot.reader_count()
    }
}

impl<T> fmt::Debug for Revocable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocable")
            .field("revoked", &self.is_revoked())
            .field("accessors", &self.active_accessors())
            .finish()
    }
}

/// Access to a [`Revocable`]'s value; revocation waits until it is dropped.
pub struct RevocableGuard<'a, T> {
    /// Read lock on a slot that held `Some` when the guard was made; while it is held the write
    /// lock, the only way to empty the slot, cannot be taken.
    guard: spin::RwLockReadGuard<'a, Option<T>>,
}

impl<T> Deref for RevocableGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &*self.guard {
            Some(value) => value,
            // `try_access` builds a guard only over `Some`, and the slot is emptied only under
            // the write lock, which cannot be taken while this read lock is held.
            None => unreachable!("revocable guard over an empty slot"),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for RevocableGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
