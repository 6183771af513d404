//! Paravirt ticket spinlocks: FIFO tickets that halt instead of spinning behind a preempted
//! vCPU.
//!
//! A ticket lock serves waiters strictly in order, which is what makes it fair on bare metal
//! and what ruins it in a VM: when the vCPU holding the *next* ticket is preempted by the host,
//! every other waiter spins until the host runs it again, even though the lock is free. (With
//! 4 vCPUs on 2 host cores Lull measured 470× slowdowns, hence its test-and-set mode, which
//! gives up FIFO order.) The paravirt answer (Linux 3.12's pv-ticketlocks; this design is
//! Lull's) keeps tickets but lets a waiter that has spun [`SPIN_THRESHOLD`] times *halt*
//! its vCPU, giving the host core to someone useful, after saying which ticket of which lock
//! it waits for; the unlocker that serves that ticket *kicks* the halted vCPU (KVM's
//! `KVM_HC_KICK_CPU` hypercall).
//!
//! # The lock word
//!
//! It is the kernel's existing pair of `u32` counters, `next` and `owner`, with two changes:
//!
//! * tickets step by [`TICKET_STEP`] (256) instead of 1, in both counters;
//! * the low 8 bits of `owner` ([`SLOW_MASK`]) count the waiters that are on the slow path
//!   (registered to be kicked). Waiters add and remove themselves with atomic add/sub on
//!   `owner`; the unlocker's `fetch_add(TICKET_STEP)` never carries into or out of them.
//!
//! Consequences: `next`'s low bits are always 0, so "free" is still `next == owner` (when the
//! lock is free nobody waits, so the count is 0), and the test-and-set acquire (CAS `next`
//! from `owner` to `owner + TICKET_STEP`) keeps working unchanged: it simply fails while slow
//! waiters exist, which is right, since the lock is then held or handed over. The native
//! unlock stays one `fetch_add` plus one predictable branch, on the value that `fetch_add`
//! returned (no extra load): `if owner.fetch_add(TICKET_STEP) & SLOW_MASK != 0 { kick }`. A
//! counter rather than a flag also means nobody ever has to *clear* it: with two separate
//! words a flag could not be cleared without racing a waiter that is just setting it again.
//! The price is 24 bits of ticket (16 M tickets before wrapping, far more than CPUs) and at
//! most [`MAX_PV_CPUS`] (255) CPUs on the slow path; CPUs numbered beyond the wait slots spin
//! without ever halting.
//!
//! # The slow path, and why no kick is lost
//!
//! Waiter with ticket `t` on CPU `c`, after spinning: (1) store `(lock, t)` in `c`'s
//! [`WaitSlot`]; (2) `owner.fetch_add(1)` (AcqRel) — the registration; if the value it returns
//! already serves `t`, take the lock; (3) else `halt()`; after each return, re-check `owner`
//! and halt again unless `t` is served. When served: clear the slot, `owner.fetch_sub(1)`.
//!
//! Unlocker: `prev = owner.fetch_add(TICKET_STEP)`; if `prev`'s count is non-zero, an acquire
//! fence, then find the slot holding `(lock, prev's ticket + TICKET_STEP)` and kick its CPU.
//!
//! Every write to `owner` is a read-modify-write, so the registration (2) and the unlock that
//! serves `t` are totally ordered. If the unlock came first, (2) returns a value serving `t`
//! and the waiter never halts. If the registration came first, the unlock sees a count of at
//! least 1, and its acquire fence (the registration heads a release sequence the unlock's RMW
//! reads from) makes the slot stored in (1) visible: the waiter is found and kicked. The kick
//! may land between the waiter's check and its `halt()`; [`PvLockOps::halt`] must then return
//! at once, which is KVM's semantics (a kick sets the target's "unhalted" flag, and HLT with
//! the flag set does not block).
//!
//! # What the kernel does with this module
//!
//! `SpinCell` keeps a [`PvTicketLock`] instead of its two counters and delegates: `lock` to
//! [`PvTicketLock::lock`] with [`WaitMode::PvTicket`] when running on KVM with
//! `KVM_FEATURE_PV_UNHALT` (CPUID 0x4000_0001 EAX bit 7, [`KVM_FEATURE_PV_UNHALT`]),
//! [`WaitMode::TestAndSet`] or [`WaitMode::Ticket`] otherwise; the guard's drop to
//! [`PvTicketLock::unlock`]; `try_lock` and `waiters` to the same-named methods. The
//! [`PvLockOps`] it implements: a static array of [`WaitSlot`]s indexed by CPU number;
//! `kick` = `KVM_HC_KICK_CPU` hypercall ([`KVM_HC_KICK_CPU`], arguments 0 and the target's
//! APIC ID); `halt` = `hlt` with interrupts as they are (a kick ends HLT even with IF=0, so
//! an IRQ-safe lock may halt with interrupts masked; with IF=1 any interrupt also ends it,
//! which the re-check absorbs).

use core::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};

/// Bits of `owner` that count slow-path waiters.
pub const SLOW_BITS: u32 = 8;
/// What one ticket adds to `next` and `owner`.
pub const TICKET_STEP: u32 = 1 << SLOW_BITS;
/// The slow-path waiter count in `owner`.
pub const SLOW_MASK: u32 = TICKET_STEP - 1;
/// CPUs that can be on a lock's slow path at once (the count must not overflow its bits).
pub const MAX_PV_CPUS: usize = SLOW_MASK as usize;
/// Default spins before a waiter halts (Linux uses the same 2^15: long enough that an
/// unpreempted holder's critical section never sends waiters to sleep).
pub const SPIN_THRESHOLD: u32 = 1 << 15;
/// CPUID 0x4000_0001 EAX bit: the host implements [`KVM_HC_KICK_CPU`] and unhalts on it.
pub const KVM_FEATURE_PV_UNHALT: u32 = 7;
/// Hypercall number that wakes a halted vCPU (a0 = flags, 0; a1 = APIC ID).
pub const KVM_HC_KICK_CPU: u64 = 5;

/// No lock (a lock's id is its address, never 0).
const NO_LOCK: usize = 0;

/// One CPU's "I am halted waiting for this ticket of this lock" record.
#[derive(Debug)]
pub struct WaitSlot {
    lock: AtomicUsize,
    ticket: AtomicU32,
}

impl WaitSlot {
    /// An empty slot.
    pub const fn new() -> Self {
        Self {
            lock: AtomicUsize::new(NO_LOCK),
            ticket: AtomicU32::new(0),
        }
    }

    /// The lock id and ticket this CPU waits for, if any (for debugging dumps).
    pub fn waiting_for(&self) -> Option<(usize, u32)> {
        let lock = self.lock.load(Ordering::Acquire);
        (lock != NO_LOCK).then(|| (lock, self.ticket.load(Ordering::Relaxed)))
    }
}

impl Default for WaitSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// What the slow path needs from the platform.
pub trait PvLockOps {
    /// The calling CPU's number (index into [`wait_slots`](Self::wait_slots)).
    fn this_cpu(&self) -> usize;
    /// One slot per CPU, shared by all locks.
    fn wait_slots(&self) -> &[WaitSlot];
    /// Stops `cpu` (always the calling CPU) until it is kicked. Must return immediately if a
    /// kick arrived since the previous `halt` returned; may return spuriously.
    fn halt(&self, cpu: usize);
    /// Wakes `cpu` from [`halt`](Self::halt), or makes its next `halt` return at once.
    fn kick(&self, cpu: usize);
}

/// How a contended acquisition waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// Take a ticket and spin until it is served (FIFO; collapses when vCPUs are preempted).
    Ticket,
    /// Spin on "claim the lock if free" (no order; robust to preemption).
    TestAndSet,
    /// Take a ticket, spin `spin_threshold` times, then halt until kicked.
    PvTicket {
        /// Spins before halting ([`SPIN_THRESHOLD`] in the kernel; small in simulations).
        spin_threshold: u32,
    },
}

impl WaitMode {
    /// [`WaitMode::PvTicket`] with the default threshold.
    pub const PV: Self = Self::PvTicket {
        spin_threshold: SPIN_THRESHOLD,
    };
}

/// What the caller of [`Acquire::poll`] must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// The lock is held; the value is the ticket that was served.
    Acquired(u32),
    /// Not yet: spin (`core::hint::spin_loop`) and poll again.
    Spin,
    /// Not yet: call [`PvLockOps::halt`] for this CPU, then poll again.
    Halt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Start,
    Spinning { ticket: u32, spins: u32 },
    Slow { ticket: u32 },
    Published { ticket: u32, cpu: usize },
    Halted { ticket: u32, cpu: usize },
    TestAndSet,
    Done,
}

/// One acquisition in progress, as a state machine whose every [`poll`](Self::poll) does one
/// shared-memory step. [`PvTicketLock::lock`] just polls it in a loop; a simulation can
/// interleave (and preempt) many of them deterministically.
#[derive(Clone, Copy, Debug)]
pub struct Acquire {
    mode: WaitMode,
    step: Step,
}

impl Acquire {
    /// An acquisition that has not touched the lock yet.
    pub const fn new(mode: WaitMode) -> Self {
        let step = match mode {
            WaitMode::TestAndSet => Step::TestAndSet,
            _ => Step::Start,
        };
        Self { mode, step }
    }

    /// Advances by one step.
    pub fn poll<O: PvLockOps + ?Sized>(&mut self, lock: &PvTicketLock, ops: &O) -> Poll {
        match self.step {
            Step::Start => {
                let ticket = lock.next.fetch_add(TICKET_STEP, Ordering::Relaxed);
                self.check_spin(lock, ticket, 0)
            }
            Step::Spinning { ticket, spins } => self.check_spin(lock, ticket, spins),
            Step::Slow { ticket } => {
                let cpu = ops.this_cpu();
                let Some(slot) = ops.wait_slots().get(cpu).filter(|_| cpu < MAX_PV_CPUS) else {
                    // No slot for this CPU: it cannot be found to be kicked, so it spins.
                    self.mode = WaitMode::Ticket;
                    return self.check_spin(lock, ticket, 0);
                };
                // Published before the registration, which releases it to the unlocker.
                slot.ticket.store(ticket, Ordering::Relaxed);
                slot.lock.store(lock.id(), Ordering::Relaxed);
                self.step = Step::Published { ticket, cpu };
                Poll::Spin
            }
            Step::Published { ticket, cpu } => {
                // The registration and the re-check in one RMW (see the module docs).
                let owner = lock.owner.fetch_add(1, Ordering::AcqRel);
                self.step = Step::Halted { ticket, cpu };
                if serves(owner, ticket) {
                    self.acquired_slow(lock, ops, ticket, cpu)
                } else {
                    Poll::Halt
                }
            }
            Step::Halted { ticket, cpu } => {
                if serves(lock.owner.load(Ordering::Acquire), ticket) {
                    self.acquired_slow(lock, ops, ticket, cpu)
                } else {
                    Poll::Halt
                }
            }
            Step::TestAndSet => match lock.try_acquire() {
                Some(ticket) => {
                    self.step = Step::Done;
                    Poll::Acquired(ticket)
                }
                None => Poll::Spin,
            },
            Step::Done => panic!("Acquire polled after it acquired the lock"),
        }
    }

    fn check_spin(&mut self, lock: &PvTicketLock, ticket: u32, spins: u32) -> Poll {
        if serves(lock.owner.load(Ordering::Acquire), ticket) {
            self.step = Step::Done;
            return Poll::Acquired(ticket);
        }
        let spins = spins.saturating_add(1);
        self.step = Step::Spinning { ticket, spins };
        if let WaitMode::PvTicket { spin_threshold } = self.mode {
            if spins >= spin_threshold {
                self.step = Step::Slow { ticket };
            }
        }
        Poll::Spin
    }

    fn acquired_slow<O: PvLockOps + ?Sized>(
        &mut self,
        lock: &PvTicketLock,
        ops: &O,
        ticket: u32,
        cpu: usize,
    ) -> Poll {
        ops.wait_slots()[cpu].lock.store(NO_LOCK, Ordering::Relaxed);
        // Ours now: no unlocker needs to find us any more. (Done before our own unlock, so
        // the count never includes a holder.)
        lock.owner.fetch_sub(1, Ordering::Relaxed);
        self.step = Step::Done;
        Poll::Acquired(ticket)
    }
}

/// Whether an `owner` value serves `ticket` (the slow-path count masked off).
fn serves(owner: u32, ticket: u32) -> bool {
    owner & !SLOW_MASK == ticket
}

/// The lock word: the kernel's two ticket counters, with tickets stepping by [`TICKET_STEP`]
/// and the slow-path waiter count in `owner`'s low bits (see the module docs).
#[derive(Debug, Default)]
pub struct PvTicketLock {
    next: AtomicU32,
    owner: AtomicU32,
}

impl PvTicketLock {
    /// A free lock.
    pub const fn new() -> Self {
        Self {
            next: AtomicU32::new(0),
            owner: AtomicU32::new(0),
        }
    }

    /// The id published in wait slots: the lock's address (never 0).
    pub fn id(&self) -> usize {
        core::ptr::from_ref(self) as usize
    }

    /// Takes the lock, waiting as `mode` says; returns the ticket served.
    pub fn lock<O: PvLockOps + ?Sized>(&self, mode: WaitMode, ops: &O) -> u32 {
        // The uncontended case costs one CAS in every mode, as the kernel's SpinCell does.
        if let Some(ticket) = self.try_acquire() {
            return ticket;
        }
        let mut acquire = Acquire::new(mode);
        loop {
            match acquire.poll(self, ops) {
                Poll::Acquired(ticket) => return ticket,
                Poll::Spin => core::hint::spin_loop(),
                Poll::Halt => ops.halt(ops.this_cpu()),
            }
        }
    }

    /// Takes the lock if it is free (test-and-set: CAS `next` from `owner` to the following
    /// ticket); returns the ticket taken.
    pub fn try_acquire(&self) -> Option<u32> {
        // Acquire: pairs with the previous holder's release of `owner`. While slow waiters
        // are counted in `owner`'s low bits it cannot equal `next`, and the CAS fails.
        let owner = self.owner.load(Ordering::Acquire);
        self.next
            .compare_exchange(
                owner,
                owner.wrapping_add(TICKET_STEP),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .ok()
    }

    /// Releases the lock: serves the next ticket, and kicks its CPU if it is halted.
    #[inline]
    pub fn unlock<O: PvLockOps + ?Sized>(&self, ops: &O) {
        // Release publishes the critical section to the next holder.
        let prev = self.owner.fetch_add(TICKET_STEP, Ordering::Release);
        if prev & SLOW_MASK != 0 {
            self.kick_next(prev, ops);
        }
    }

    #[cold]
    fn kick_next<O: PvLockOps + ?Sized>(&self, prev: u32, ops: &O) {
        // Pairs with the registrations counted in `prev`: their wait slots are visible now.
        fence(Ordering::Acquire);
        let served = (prev & !SLOW_MASK).wrapping_add(TICKET_STEP);
        let id = self.id();
        for (cpu, slot) in ops.wait_slots().iter().enumerate() {
            if slot.lock.load(Ordering::Relaxed) == id
                && slot.ticket.load(Ordering::Relaxed) == served
            {
                ops.kick(cpu);
                return;
            }
        }
    }

    /// Whether nobody holds or waits for the lock (`next == owner`).
    pub fn is_free(&self) -> bool {
        self.next.load(Ordering::Relaxed) == self.owner.load(Ordering::Relaxed)
    }

    /// CPUs waiting for their ticket (0 when free or held uncontended).
    pub fn waiters(&self) -> u32 {
        let next = self.next.load(Ordering::Relaxed);
        let owner = self.owner.load(Ordering::Relaxed) & !SLOW_MASK;
        (next.wrapping_sub(owner) / TICKET_STEP).saturating_sub(1)
    }

    /// Waiters currently registered on the slow path (halted or about to halt).
    pub fn slow_waiters(&self) -> u32 {
        self.owner.load(Ordering::Relaxed) & SLOW_MASK
    }

    /// Raw `(next, owner)`, for debugging dumps and tests.
    pub fn raw(&self) -> (u32, u32) {
        (
            self.next.load(Ordering::Relaxed),
            self.owner.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests;
