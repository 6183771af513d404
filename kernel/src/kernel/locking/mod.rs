//! Locks and per-CPU data. There is no global kernel lock: each lock guards one structure and
//! is documented next to it.
//!
//! - [`SpinLock`]: a fair (ticket) spinlock; its guard disables preemption.
//! - [`IrqSafeLock`]: the same, also masking local interrupts (`spin_lock_irqsave`), for data
//!   shared with interrupt handlers.
//! - [`Mutex`] and [`RwLock`]: sleeping locks (Linux's `mutex`, `rw_semaphore`) for thread
//!   context; a contended taker sleeps on a wait queue. Taking one in atomic context is a bug
//!   that lockdep reports ("sleeping while atomic").
//! - [`PreemptDisabled`]: Linux's `preempt_disable()` as a guard; with [`InterruptsDisabled`]
//!   it is the proof [`PerCpu::this_cpu`] asks for.
//!
//! Releasing the last preemption-disabling guard is a preemption point (Linux's
//! `preempt_enable`): if the scheduler asked this CPU to reschedule meanwhile, it switches
//! there, so a woken higher-priority thread does not wait for the next interrupt.
//!
//! Lock order (outermost first), documented here as the kernel grows:
//! - `console::CONSOLE` is a leaf; `arch::memory::PAGES` is a leaf; `shell` input ring is a
//!   leaf.
//! - time: `time::CPU_TIME[cpu]` → `time::JIFFIES` → `time::CLOCKS` (see time/mod.rs). No two
//!   CPUs' `CPU_TIME` locks are held together (readers of every CPU take one at a time).
//! - smp: `smp::CALL_QUEUE[cpu]` is a leaf (never held while waiting for another CPU).
//! - irq: `irq::LINES` → `irq::IOAPIC` (a leaf serialising the index/data register pair).
//!   `LINES` is taken by every device interrupt, so nothing under it sleeps, spawns a thread or
//!   waits for another CPU; line threads are woken after it is released, and `free_irq` holds
//!   no lock while it waits.
//! - `smp::FLUSH_QUEUE[cpu]` is a leaf; no spinlock is held across `flush_tlb_*` (it waits for
//!   the other CPUs). `arch::kmap::WINDOW` → `arch::memory::PAGES`, never held across a
//!   shootdown.
//! - `procfs::FILES` and `procfs::DIRECTORIES` are leaves.
//! - `time::CPU_TIME[cpu]` → `sched::PREEMPTION_TIMER[cpu]` (a leaf; the scheduler arms it with
//!   `SCHED` released).
//! - sched: `time::CPU_TIME[cpu]` → `time::JIFFIES` → `sched::SCHED` (timer callbacks wake
//!   threads); `SCHED` is the scheduler lock (policy + thread table, not a big kernel lock) and
//!   never takes a time lock; under it only leaves are taken (`CLOCKS`, a thread's entry slot,
//!   `arch::memory::PAGES`). A wait queue's waiter list (`sched::WaitQueue`) is a leaf released
//!   before `SCHED` is taken. No lock is held across a context switch.
//! - Sleeping locks (`Mutex`, `RwLock`) are outermost: taken only in thread context with no
//!   spinlock held; their wait queue's list is a leaf.
//! - Preemption: returning from an interrupt is a preemption point only when the interrupted
//!   code had interrupts enabled and a zero preempt count (no spinlock, no per-CPU reference).

pub mod lockdep;

use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering;

use lull_lockdep::{AcquireKind, LockKind};

pub use crate::arch::percpu::{InterruptsDisabled, MAX_CPUS};
use crate::arch::sync::{self, SpinCell, SpinCellGuard, SpinWait};
use crate::arch::{cpu, percpu};

/// Proof that the holder stays on one CPU: interrupts or preemption are off.
pub trait CpuPinned {
    /// Index of the CPU this code runs on (0 = the boot CPU).
    fn cpu_index(&self) -> usize;
}

impl CpuPinned for InterruptsDisabled {
    fn cpu_index(&self) -> usize {
        InterruptsDisabled::cpu_index(self)
    }
}

/// Linux's `preempt_disable()` as a guard: the scheduler does not switch this CPU away until
/// it is dropped. Dropping the last one is a preemption point. Guards nest.
pub struct PreemptDisabled {
    /// Not `Send`: the proof holds only on the CPU that made it.
    _this_cpu_only: core::marker::PhantomData<*const ()>,
}

impl PreemptDisabled {
    /// Disables preemption until the guard is dropped.
    pub fn new() -> Self {
        percpu::preempt_count_add(1);
        Self {
            _this_cpu_only: core::marker::PhantomData,
        }
    }
}

impl Default for PreemptDisabled {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuPinned for PreemptDisabled {
    fn cpu_index(&self) -> usize {
        percpu::this_cpu_index()
    }
}

impl Drop for PreemptDisabled {
    fn drop(&mut self) {
        preempt_enable();
    }
}

/// Linux's `preempt_enable()`: drops one level of the preemption count; a reschedule asked for
/// while we could not be preempted happens now (only with interrupts on and nothing else
/// holding preemption off).
fn preempt_enable() {
    percpu::preempt_count_sub(1);
    if percpu::preempt_count() == 0 && percpu::need_resched() && cpu::interrupts_enabled() {
        crate::kernel::sched::preempt_point();
    }
}

/// Makes the portable crates' spin locks (gpiolib's line tables, devres' leak counters)
/// disable preemption while held, as [`SpinLock`] does. Without it, a real-time interrupt
/// thread spinning on such a lock held by a thread it preempted spins forever on one CPU
/// (virtio-gpio's event thread and `gpiomon` did).
fn install_portable_lock_hooks() {
    lull_spinlock::set_preempt_hooks(lull_spinlock::PreemptHooks {
        disable: || percpu::preempt_count_add(1),
        enable: preempt_enable,
    });
}

/// Whether this CPU runs a hard-interrupt handler.
pub fn in_hardirq() -> bool {
    percpu::preempt_count() >= percpu::HARDIRQ_OFFSET
}

/// Lockdep identity of a lock: its class name (untracked when `None`) and registered class.
struct LockClass {
    name: Option<&'static str>,
    class: spin::Once<lull_lockdep::ClassId>,
}

impl LockClass {
    const fn new(name: Option<&'static str>) -> Self {
        Self {
            name,
            class: spin::Once::new(),
        }
    }

    /// Tells lockdep the lock is about to be taken; returns whether it is tracked (so the
    /// release is reported too).
    #[track_caller]
    fn acquire(&self, kind: LockKind, how: AcquireKind) -> bool {
        match self.name {
            Some(name) if crate::kernel::locking::lockdep::enabled() => {
                crate::kernel::locking::lockdep::acquire(
                    name,
                    &self.class,
                    kind,
                    how,
                    lull_lockdep::Site::caller(),
                );
                true
            }
            _ => false,
        }
    }

    /// A sleeping lock is about to be taken: lockdep checks the context and names the lock
    /// (when tracked); otherwise the always-on `might_sleep` check runs.
    #[track_caller]
    fn acquire_sleeping(&self) -> bool {
        let tracked = self.acquire(LockKind::Sleeping, AcquireKind::Blocking);
        if !tracked {
            might_sleep();
        }
        tracked
    }

    #[track_caller]
    fn release(&self) {
        crate::kernel::locking::lockdep::release(&self.class, lull_lockdep::Site::caller());
    }
}

// ---- the raw lock word ---------------------------------------------------------------------

/// Spinlock parameters.
pub const PARAMS: &[lull_cmdline::ParamSpec] = &[lull_cmdline::ParamSpec {
    name: "spinlock",
    kind: lull_cmdline::Kind::Choice(&["auto", "ticket", "tas", "pv"]),
    default: "auto",
    help: "Spinlock waiting: fair tickets, test-and-set, or paravirt tickets (auto: tickets on \
           bare metal, paravirt tickets under KVM with PV_UNHALT, test-and-set under any other \
           hypervisor, where a preempted waiter stalls a ticket queue).",
}];

/// Chooses how spinlocks wait (`spinlock=`). A fair ticket lock serves CPUs in arrival order,
/// but in a virtual machine the next ticket's vCPU may not be running when the lock is
/// released: every other waiter then spins until the host schedules it (lock-waiter
/// preemption; 4 vCPUs on 2 host cores turned 80 000 contended increments from 0.1 s into
/// 18 s). Under KVM with PV_UNHALT the waiters keep their tickets but halt after a while, and
/// the unlocker kicks the next one (Linux's pv-ticketlocks; `lull_pv::pv_spinlock`); on any
/// other hypervisor Lull falls back to a test-and-set lock as Linux does (`virt_spin_lock`).
/// `nopvspin` refuses the paravirt mode. Called once at boot, after `paravirt::init` and
/// before secondary CPUs start.
pub fn init_spinlocks() {
    use crate::kernel::paravirt::{self, Op};
    let choice = crate::kernel::params::parsed()
        .get_str("spinlock")
        .unwrap_or("auto");
    let hypervisor = cpu::running_on_hypervisor();
    let pv = paravirt::uses_kvm(Op::SpinWait);
    let mode = match choice {
        "ticket" => SpinWait::Ticket,
        "tas" => SpinWait::TestAndSet,
        "pv" if pv => SpinWait::Paravirt,
        "pv" => {
            crate::pr_warn!("spinlock=pv: the host offers no PV_UNHALT (or nopvspin); ignored");
            if hypervisor {
                SpinWait::TestAndSet
            } else {
                SpinWait::Ticket
            }
        }
        _ if pv => SpinWait::Paravirt,
        _ if hypervisor => SpinWait::TestAndSet,
        _ => SpinWait::Ticket,
    };
    sync::set_spin_wait(mode);
    install_portable_lock_hooks();
    crate::printk!(
        "spinlock: {}{}",
        match mode {
            SpinWait::Ticket => "fair tickets",
            SpinWait::TestAndSet => "test-and-set",
            SpinWait::Paravirt => "paravirt tickets (halt after spinning, kicked by the unlocker)",
        },
        match (choice, mode) {
            ("auto", SpinWait::TestAndSet) => " (hypervisor without paravirt spinlocks)",
            ("auto", SpinWait::Ticket) => " (bare metal)",
            ("auto", SpinWait::Paravirt) => " (KVM PV_UNHALT)",
            _ => " (spinlock=)",
        }
    );
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // the tests exercise both modes
/// Switches the waiting mode at run time (tests). Safe with locks held or contended: every
/// mode uses the same two counters, and "free" means `next == owner` in each.
pub fn set_spin_wait(mode: SpinWait) -> SpinWait {
    sync::set_spin_wait(mode)
}

// The lock word and the cell it guards are `arch::sync::SpinCell` (the `UnsafeCell` needs
// `unsafe`); this module adds preemption, interrupt masking and lockdep around it.

// ---- spinlocks -------------------------------------------------------------------------------

/// A fair spinlock (a ticket lock: CPUs get it in the order they asked; see
/// [`init_spinlocks`] for virtual machines). Its guard disables preemption; do not use it for
/// data an interrupt handler touches (use [`IrqSafeLock`]).
pub struct SpinLock<T> {
    inner: SpinCell<T>,
    class: LockClass,
}

/// Guard for [`SpinLock`]: releases the lock, then re-enables preemption (a preemption point).
pub struct SpinGuard<'a, T> {
    // Field order is drop order: the lock is released before preemption comes back.
    guard: SpinCellGuard<'a, T>,
    class: Option<&'a LockClass>,
    _preempt: PreemptDisabled,
}

impl<T> SpinLock<T> {
    /// An unlocked lock, not tracked by lockdep.
    pub const fn new(value: T) -> Self {
        Self {
            inner: SpinCell::new(value),
            class: LockClass::new(None),
        }
    }

    /// An unlocked lock that lockdep tracks as class `name`.
    pub const fn named(name: &'static str, value: T) -> Self {
        Self {
            inner: SpinCell::new(value),
            class: LockClass::new(Some(name)),
        }
    }

    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    /// CPUs queued for the lock behind its holder.
    pub fn waiters(&self) -> u32 {
        self.inner.waiters()
    }

    /// Disables preemption, takes a ticket and spins until it is served.
    #[track_caller]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        let preempt = PreemptDisabled::new();
        let tracked = self.class.acquire(LockKind::Spin, AcquireKind::Blocking);
        SpinGuard {
            guard: self.inner.lock(),
            class: tracked.then_some(&self.class),
            _preempt: preempt,
        }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[track_caller]
    fn drop(&mut self) {
        if let Some(class) = self.class {
            class.release();
        }
    }
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A fair spinlock whose guard also keeps local interrupts disabled, so data shared with
/// interrupt handlers cannot deadlock against the code it interrupted. A lock made with
/// [`IrqSafeLock::named`] is checked by lockdep (`lockdep=1`) under that name.
pub struct IrqSafeLock<T> {
    inner: SpinCell<T>,
    class: LockClass,
}

/// Guard for [`IrqSafeLock`]; releases the lock, restores the interrupt flag, then re-enables
/// preemption (a preemption point when interrupts come back on).
pub struct IrqSafeGuard<'a, T> {
    // Field order is drop order: the lock is released before interrupts come back on, and
    // interrupts before preemption.
    guard: SpinCellGuard<'a, T>,
    class: Option<&'a LockClass>,
    interrupts: InterruptsDisabled,
    _preempt: PreemptDisabled,
}

/// What [`IrqSafeLock::lock`] does before it spins, in that order: preemption off,
/// interrupts off, lockdep told. It does not depend on the data's type, so it is one copy for
/// every lock type (under TCG, less code translated at boot); returns whether lockdep tracks
/// the lock.
#[track_caller]
#[inline(never)]
fn irq_safe_enter(class: &LockClass) -> (PreemptDisabled, InterruptsDisabled, bool) {
    let preempt = PreemptDisabled::new();
    let interrupts = InterruptsDisabled::new();
    let tracked = class.acquire(LockKind::Spin, AcquireKind::Blocking);
    (preempt, interrupts, tracked)
}

impl<T> IrqSafeLock<T> {
    /// Creates an unlocked lock (not tracked by lockdep).
    pub const fn new(value: T) -> Self {
        Self {
            inner: SpinCell::new(value),
            class: LockClass::new(None),
        }
    }

    /// Creates an unlocked lock that lockdep tracks as class `name`.
    pub const fn named(name: &'static str, value: T) -> Self {
        Self {
            inner: SpinCell::new(value),
            class: LockClass::new(Some(name)),
        }
    }

    /// Disables preemption and interrupts, then spins until the lock is ours. A named lock is
    /// checked by lockdep first (so an inversion is reported before it can deadlock).
    #[track_caller]
    // One copy per lock type, not per call site (see `SpinCell::lock`).
    #[inline(never)]
    pub fn lock(&self) -> IrqSafeGuard<'_, T> {
        let (preempt, interrupts, tracked) = irq_safe_enter(&self.class);
        IrqSafeGuard {
            guard: self.inner.lock(),
            class: tracked.then_some(&self.class),
            interrupts,
            _preempt: preempt,
        }
    }

    /// Takes the lock if it is free (used by the emergency console path; not tracked).
    pub fn try_lock(&self) -> Option<IrqSafeGuard<'_, T>> {
        let preempt = PreemptDisabled::new();
        let interrupts = InterruptsDisabled::new();
        let guard = self.inner.try_lock()?;
        Some(IrqSafeGuard {
            guard,
            class: None,
            interrupts,
            _preempt: preempt,
        })
    }
}

impl<T> Drop for IrqSafeGuard<'_, T> {
    #[track_caller]
    fn drop(&mut self) {
        if let Some(class) = self.class {
            class.release();
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

// ---- sleeping locks --------------------------------------------------------------------------

/// Linux's `might_sleep()`: reports (through lockdep, once per site) a call that may sleep
/// made in atomic context. Always on for the cheap checks: a hard-IRQ handler or a raised
/// preempt count is reported even without `lockdep=1` (as `CONFIG_DEBUG_ATOMIC_SLEEP`).
#[track_caller]
pub fn might_sleep() {
    // Boot runs with interrupts off and sleeps on nothing contended (Linux skips the check
    // while `system_state` is booting, too).
    if !system_running() {
        return;
    }
    let site = lull_lockdep::Site::caller();
    if crate::kernel::locking::lockdep::enabled() {
        crate::kernel::locking::lockdep::might_sleep(site);
    } else if percpu::preempt_count() != 0 || !cpu::interrupts_enabled() {
        crate::kernel::locking::lockdep::report_atomic_sleep(site);
    }
}

static SYSTEM_RUNNING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Boot is over (threads run): `might_sleep` checks from now on.
pub fn set_system_running() {
    SYSTEM_RUNNING.store(true, Ordering::Release);
}

/// Whether boot is over (Linux's `system_state == SYSTEM_RUNNING`).
pub fn system_running() -> bool {
    SYSTEM_RUNNING.load(Ordering::Acquire)
}

type Scheduler = crate::kernel::sched::KernelScheduler;

/// Guard of a sleeping lock ([`Mutex`], [`RwLock`]), over the cell's own guard `G`. Dropping
/// it tells lockdep, then drops `G`, which releases the grant and wakes the waiters.
pub struct SleepGuard<'a, G> {
    guard: Option<G>,
    class: Option<&'a LockClass>,
}

/// Guard for [`Mutex`].
pub type MutexGuard<'a, T> = SleepGuard<'a, sync::MutexCellGuard<'a, Scheduler, T>>;
/// Shared guard for [`RwLock`].
pub type ReadGuard<'a, T> = SleepGuard<'a, sync::RwLockCellReadGuard<'a, Scheduler, T>>;
/// Exclusive guard for [`RwLock`].
pub type WriteGuard<'a, T> = SleepGuard<'a, sync::RwLockCellWriteGuard<'a, Scheduler, T>>;

impl<G> Drop for SleepGuard<'_, G> {
    #[track_caller]
    fn drop(&mut self) {
        if let Some(class) = self.class {
            class.release();
        }
        drop(self.guard.take());
    }
}

impl<G: Deref> Deref for SleepGuard<'_, G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        // The guard is `Some` from construction until drop.
        self.guard.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl<G: DerefMut> DerefMut for SleepGuard<'_, G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        self.guard.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

/// A sleeping mutual-exclusion lock (Linux's `struct mutex`): a contended taker sleeps on the
/// lock's wait queue instead of spinning. Thread context only. The grant and its wait/wake
/// protocol are `lull-waitqueue`'s (loom-checked); this adds lockdep and `might_sleep`.
pub struct Mutex<T> {
    cell: sync::MutexCell<Scheduler, T>,
    class: LockClass,
}

impl<T> Mutex<T> {
    /// An unlocked mutex that lockdep tracks as class `name`.
    pub const fn named(name: &'static str, value: T) -> Self {
        Self {
            cell: sync::MutexCell::new(crate::kernel::sched::protocol_queue(), value),
            class: LockClass::new(Some(name)),
        }
    }

    /// Takes the mutex, sleeping while another thread holds it.
    #[track_caller]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let tracked = self.class.acquire_sleeping();
        SleepGuard {
            guard: Some(self.cell.lock()),
            class: tracked.then_some(&self.class),
        }
    }
}

/// A sleeping reader-writer lock (Linux's `rw_semaphore`): many readers or one writer. A
/// waiting writer stops new readers from entering, so writers are not starved. The grant is
/// `lull-waitqueue`'s (loom-checked).
pub struct RwLock<T> {
    cell: sync::RwLockCell<Scheduler, T>,
    class: LockClass,
}

impl<T> RwLock<T> {
    /// An unlocked lock that lockdep tracks as class `name`.
    pub const fn named(name: &'static str, value: T) -> Self {
        Self {
            cell: sync::RwLockCell::new(crate::kernel::sched::protocol_queue(), value),
            class: LockClass::new(Some(name)),
        }
    }

    /// Writers waiting for the lock (tests).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn writers_waiting(&self) -> u32 {
        self.cell.writers_waiting()
    }

    /// Shared access, sleeping while a writer holds or waits for the lock.
    #[track_caller]
    pub fn read(&self) -> ReadGuard<'_, T> {
        let tracked = self.class.acquire_sleeping();
        SleepGuard {
            guard: Some(self.cell.read()),
            class: tracked.then_some(&self.class),
        }
    }

    /// Exclusive access, sleeping while readers or a writer hold the lock.
    #[track_caller]
    pub fn write(&self) -> WriteGuard<'_, T> {
        let tracked = self.class.acquire_sleeping();
        SleepGuard {
            guard: Some(self.cell.write()),
            class: tracked.then_some(&self.class),
        }
    }
}

// ---- per-CPU data ----------------------------------------------------------------------------

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

    /// The running CPU's slot, for as long as the proof (interrupts or preemption off) lives.
    pub fn this_cpu<'a, P: CpuPinned>(&'a self, proof: &'a P) -> &'a T {
        &self.slots[proof.cpu_index().min(MAX_CPUS - 1)]
    }

    /// CPU `cpu`'s slot (`cpu` < [`MAX_CPUS`], else the last slot: callers pass indices from
    /// `smp`, which never hands out larger ones).
    pub fn on_cpu(&self, cpu: usize) -> &T {
        &self.slots[cpu.min(MAX_CPUS - 1)]
    }
}
