//! Arch-internal locking: a spinning cell that masks local interrupts while held.
//!
//! arch does not use the kernel's lock types (they carry policy: preemption, lockdep,
//! sleeping). Its own state (the port registry, the page allocator, the kmap window) is guarded
//! by [`IrqSpinCell`], which only spins and masks interrupts, so any context may take it.

use core::ops::{Deref, DerefMut};

use lull_waitqueue::{MutexGrant, RwLockGrant, Scheduler, WaitQueue};

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
use core::sync::atomic::{AtomicU8, Ordering};

use lull_pv::pv_spinlock::{PvLockOps, PvTicketLock, WaitMode, WaitSlot};

use super::percpu::MAX_CPUS;

/// How contended spin cells wait (a static key, read once per contended acquisition;
/// `spinlock=`): 0 fair tickets, 1 test-and-set, 2 paravirt tickets (halt and be kicked).
static WAIT_MODE: AtomicU8 = AtomicU8::new(0);

/// How a contended [`SpinCell`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpinWait {
    /// Fair tickets, spinning (bare metal).
    Ticket,
    /// Claim the cell when free, no order (a hypervisor without PV spinlocks).
    TestAndSet,
    /// Fair tickets; after a while the waiter halts and its ticket's unlocker kicks it
    /// (KVM PV_UNHALT). Only set when the host advertised PV_UNHALT.
    Paravirt,
}

/// Switches how [`SpinCell`]s wait. Sound with cells held or contended: every mode uses the
/// same two counters, and "free" means `next == owner` in each (see `lull_pv::pv_spinlock`).
/// Returns the previous mode.
pub fn set_spin_wait(mode: SpinWait) -> SpinWait {
    let mode = if mode == SpinWait::Paravirt && !super::kvm::pv_unhalt_adopted() {
        SpinWait::TestAndSet
    } else {
        mode
    };
    match WAIT_MODE.swap(mode as u8, Ordering::AcqRel) {
        0 => SpinWait::Ticket,
        1 => SpinWait::TestAndSet,
        _ => SpinWait::Paravirt,
    }
}

fn wait_mode() -> WaitMode {
    match WAIT_MODE.load(Ordering::Relaxed) {
        0 => WaitMode::Ticket,
        1 => WaitMode::TestAndSet,
        _ => WaitMode::PV,
    }
}

/// One wait slot per CPU for the paravirt slow path (which ticket of which lock it halts for).
static WAIT_SLOTS: [WaitSlot; MAX_CPUS] = [const { WaitSlot::new() }; MAX_CPUS];

/// The platform side of the PV spinlock slow path: halt this CPU, kick another through KVM.
struct KvmLockOps;

impl PvLockOps for KvmLockOps {
    fn this_cpu(&self) -> usize {
        super::percpu::this_cpu_index()
    }
    fn wait_slots(&self) -> &[WaitSlot] {
        &WAIT_SLOTS
    }
    fn halt(&self, _cpu: usize) {
        super::kvm::halt_for_kick();
    }
    fn kick(&self, cpu: usize) {
        super::kvm::kick_cpu_index(cpu);
    }
}

/// Data behind a spinning lock word: `lull_pv::pv_spinlock::PvTicketLock`'s two ticket
/// counters (`next` to hand out, `owner` being served, plus the count of halted waiters in
/// `owner`'s low bits). Ticket mode takes a ticket and waits its turn; test-and-set mode
/// claims the cell only when it is free; paravirt mode takes a ticket, spins, then halts until
/// its ticket's unlocker kicks it. No preemption or interrupt control: the caller's guard
/// adds that.
pub struct SpinCell<T> {
    word: PvTicketLock,
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

/// The body of every [`SpinCell::lock`]: it does not depend on the cell's type, so it is one
/// copy for all of them, out of line. Under TCG each copy is more code translated the first
/// time it runs (~10 us a block at boot); a copy per cell type was ~3 blocks each.
#[inline(never)]
fn acquire_word(word: &PvTicketLock) {
    if word.try_acquire().is_none() {
        word.lock(wait_mode(), &KvmLockOps);
    }
}

impl<T> SpinCell<T> {
    /// A free cell holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            word: PvTicketLock::new(),
            value: UnsafeCell::new(value),
        }
    }

    /// Spins (or, in paravirt mode, halts) until the cell is ours. The uncontended case is
    /// one compare-exchange in every mode.
    #[inline]
    pub fn lock(&self) -> SpinCellGuard<'_, T> {
        acquire_word(&self.word);
        SpinCellGuard { cell: self }
    }

    /// Takes the cell if it is free. (The guard is built only after the word was won: a
    /// guard built and dropped on failure would release someone else's lock.)
    pub fn try_lock(&self) -> Option<SpinCellGuard<'_, T>> {
        self.word
            .try_acquire()
            .map(|_| SpinCellGuard { cell: self })
    }

    /// CPUs waiting for their ticket (0 when free or held uncontended).
    pub fn waiters(&self) -> u32 {
        self.word.waiters()
    }
}

impl<T> Drop for SpinCellGuard<'_, T> {
    fn drop(&mut self) {
        // Serves the next ticket (Release publishes our writes to the next holder), and kicks
        // its CPU when it halted: on bare metal one `fetch_add` and a branch never taken.
        self.cell.word.unlock(&KvmLockOps);
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

/// Data of a sleeping mutex, behind the grant of `lull-waitqueue` (model-checked with loom on
/// the host): the grant's locked flag says who may touch the value, and a contended taker
/// sleeps on the grant's wait queue through the kernel's scheduler `S`. arch adds only the
/// cell; the kernel's `Mutex` adds lockdep.
pub struct MutexCell<S: Scheduler, T> {
    grant: MutexGrant<S>,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reached only through a `MutexCellGuard`, made only after the grant was
// won (`lock`) and released only when the guard drops, so at most one exists:
// sharing the cell between CPUs shares `T` by moving it (`T: Send`). The grant itself must be
// shareable (its wait queue's list is a lock).
unsafe impl<S: Scheduler, T: Send> Sync for MutexCell<S, T> where MutexGrant<S>: Sync {}

/// Exclusive access to a [`MutexCell`]'s value; releases the grant (waking a waiter) on drop.
pub struct MutexCellGuard<'a, S: Scheduler, T> {
    cell: &'a MutexCell<S, T>,
}

impl<S: Scheduler, T> MutexCell<S, T> {
    /// A free cell holding `value`, whose takers sleep on `waiters`.
    pub const fn new(waiters: WaitQueue<S>, value: T) -> Self {
        Self {
            grant: MutexGrant::new(waiters),
            value: UnsafeCell::new(value),
        }
    }

    /// Takes the cell, sleeping while another thread holds it.
    pub fn lock(&self) -> MutexCellGuard<'_, S, T> {
        self.grant.lock();
        MutexCellGuard { cell: self }
    }
}

impl<S: Scheduler, T> Drop for MutexCellGuard<'_, S, T> {
    fn drop(&mut self) {
        self.cell.grant.unlock();
    }
}

impl<S: Scheduler, T> Deref for MutexCellGuard<'_, S, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while the grant is ours, so no other reference is live.
        unsafe { &*self.cell.value.get() }
    }
}

impl<S: Scheduler, T> DerefMut for MutexCellGuard<'_, S, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this reference unique.
        unsafe { &mut *self.cell.value.get() }
    }
}

/// Data of a sleeping reader-writer lock, behind `lull-waitqueue`'s [`RwLockGrant`]: one word
/// holding the writer bit or the reader count, changed only by successful attempts; a waiting
/// writer keeps new readers out (writers are not starved); releases wake the waiters.
pub struct RwLockCell<S: Scheduler, T> {
    grant: RwLockGrant<S>,
    value: UnsafeCell<T>,
}

// SAFETY: readers get `&T` only while the grant counts them and no writer holds it; a writer
// gets `&mut T` only while the grant is its. `T: Send + Sync` because readers on several CPUs
// share `&T` and a writer may move data across CPUs.
unsafe impl<S: Scheduler, T: Send + Sync> Sync for RwLockCell<S, T> where RwLockGrant<S>: Sync {}

/// Shared access to an [`RwLockCell`]'s value.
pub struct RwLockCellReadGuard<'a, S: Scheduler, T> {
    cell: &'a RwLockCell<S, T>,
}

/// Exclusive access to an [`RwLockCell`]'s value.
pub struct RwLockCellWriteGuard<'a, S: Scheduler, T> {
    cell: &'a RwLockCell<S, T>,
}

impl<S: Scheduler, T> RwLockCell<S, T> {
    /// A free cell holding `value`, whose waiters sleep on `waiters`.
    pub const fn new(waiters: WaitQueue<S>, value: T) -> Self {
        Self {
            grant: RwLockGrant::new(waiters),
            value: UnsafeCell::new(value),
        }
    }

    /// Shared access, sleeping while a writer holds or waits for the cell.
    pub fn read(&self) -> RwLockCellReadGuard<'_, S, T> {
        self.grant.read();
        RwLockCellReadGuard { cell: self }
    }

    /// Exclusive access, sleeping while readers or a writer hold the cell.
    pub fn write(&self) -> RwLockCellWriteGuard<'_, S, T> {
        self.grant.write();
        RwLockCellWriteGuard { cell: self }
    }

    /// Writers waiting for the cell (a snapshot).
    pub fn writers_waiting(&self) -> u32 {
        self.grant.writers_waiting()
    }
}

impl<S: Scheduler, T> Drop for RwLockCellReadGuard<'_, S, T> {
    fn drop(&mut self) {
        self.cell.grant.read_unlock();
    }
}

impl<S: Scheduler, T> Drop for RwLockCellWriteGuard<'_, S, T> {
    fn drop(&mut self) {
        self.cell.grant.write_unlock();
    }
}

impl<S: Scheduler, T> Deref for RwLockCellReadGuard<'_, S, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the grant counts this reader, so no writer holds the cell while it lives.
        unsafe { &*self.cell.value.get() }
    }
}

impl<S: Scheduler, T> Deref for RwLockCellWriteGuard<'_, S, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the grant is this writer's while the guard lives: no other reference.
        unsafe { &*self.cell.value.get() }
    }
}

impl<S: Scheduler, T> DerefMut for RwLockCellWriteGuard<'_, S, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and `&mut self` makes this reference unique.
        unsafe { &mut *self.cell.value.get() }
    }
}
