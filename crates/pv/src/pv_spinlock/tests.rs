use super::*;
use std::cell::RefCell;
use std::vec::Vec;

/// Single-threaded ops: records kicks; `halt` must not block (it checks the kicked flag).
struct Recorder {
    cpu: core::cell::Cell<usize>,
    slots: Vec<WaitSlot>,
    kicked: RefCell<Vec<bool>>,
    kicks: RefCell<Vec<usize>>,
}

impl Recorder {
    fn new(cpus: usize) -> Self {
        Self {
            cpu: core::cell::Cell::new(0),
            slots: (0..cpus).map(|_| WaitSlot::new()).collect(),
            kicked: RefCell::new(vec![false; cpus]),
            kicks: RefCell::new(Vec::new()),
        }
    }
    fn on(&self, cpu: usize) -> &Self {
        self.cpu.set(cpu);
        self
    }
}

impl PvLockOps for Recorder {
    fn this_cpu(&self) -> usize {
        self.cpu.get()
    }
    fn wait_slots(&self) -> &[WaitSlot] {
        &self.slots
    }
    fn halt(&self, cpu: usize) {
        assert!(
            std::mem::take(&mut self.kicked.borrow_mut()[cpu]),
            "cpu {cpu} halted with no kick pending: it would sleep forever"
        );
    }
    fn kick(&self, cpu: usize) {
        self.kicked.borrow_mut()[cpu] = true;
        self.kicks.borrow_mut().push(cpu);
    }
}

const PV: WaitMode = WaitMode::PvTicket { spin_threshold: 3 };

/// Polls until the acquisition halts (or acquires).
fn poll_until_halt(acq: &mut Acquire, lock: &PvTicketLock, ops: &Recorder) -> Poll {
    loop {
        match acq.poll(lock, ops) {
            Poll::Spin => continue,
            other => return other,
        }
    }
}

#[test]
fn uncontended_lock_unlock_keeps_next_equal_owner_when_free() {
    let ops = Recorder::new(1);
    let lock = PvTicketLock::new();
    assert!(lock.is_free());
    assert_eq!(lock.lock(PV, &ops), 0);
    assert_eq!(lock.raw(), (TICKET_STEP, 0));
    assert!(!lock.is_free());
    assert_eq!(lock.try_acquire(), None);
    lock.unlock(&ops);
    assert!(lock.is_free());
    assert_eq!(lock.try_acquire(), Some(TICKET_STEP));
    lock.unlock(&ops);
    assert_eq!(lock.raw(), (2 * TICKET_STEP, 2 * TICKET_STEP));
    assert!(ops.kicks.borrow().is_empty(), "no slow waiter, no kick");
}

#[test]
fn halted_waiter_is_kicked_by_the_unlock_that_serves_it() {
    let ops = Recorder::new(3);
    let lock = PvTicketLock::new();
    lock.lock(PV, ops.on(0));
    let mut b = Acquire::new(PV);
    let mut c = Acquire::new(PV);
    assert_eq!(poll_until_halt(&mut b, &lock, ops.on(1)), Poll::Halt);
    assert_eq!(poll_until_halt(&mut c, &lock, ops.on(2)), Poll::Halt);
    assert_eq!(lock.slow_waiters(), 2);
    assert_eq!(lock.waiters(), 2);
    assert!(!lock.is_free());
    assert_eq!(ops.slots[1].waiting_for(), Some((lock.id(), TICKET_STEP)));

    lock.unlock(ops.on(0));
    assert_eq!(*ops.kicks.borrow(), [1], "only the next ticket's CPU");
    ops.halt(1);
    assert_eq!(b.poll(&lock, ops.on(1)), Poll::Acquired(TICKET_STEP));
    assert_eq!(ops.slots[1].waiting_for(), None);
    assert_eq!(lock.slow_waiters(), 1);
    // C was not kicked and stays halted.
    assert_eq!(c.poll(&lock, ops.on(2)), Poll::Halt);

    lock.unlock(ops.on(1));
    assert_eq!(*ops.kicks.borrow(), [1, 2]);
    ops.halt(2);
    assert_eq!(c.poll(&lock, ops.on(2)), Poll::Acquired(2 * TICKET_STEP));
    lock.unlock(ops.on(2));
    assert!(lock.is_free(), "{:?}", lock.raw());
    assert_eq!(lock.slow_waiters(), 0);
}

#[test]
fn kick_between_recheck_and_halt_is_not_lost() {
    let ops = Recorder::new(2);
    let lock = PvTicketLock::new();
    lock.lock(PV, ops.on(0));
    let mut b = Acquire::new(PV);
    // B registered and saw its ticket not served: it is about to halt...
    assert_eq!(poll_until_halt(&mut b, &lock, ops.on(1)), Poll::Halt);
    // ...when A unlocks and kicks it.
    lock.unlock(ops.on(0));
    // The halt returns at once because of the pending kick (the Recorder asserts that).
    ops.halt(1);
    assert_eq!(b.poll(&lock, ops.on(1)), Poll::Acquired(TICKET_STEP));
}

#[test]
fn unlock_before_registration_means_no_halt() {
    let ops = Recorder::new(2);
    let lock = PvTicketLock::new();
    lock.lock(PV, ops.on(0));
    let mut b = Acquire::new(PV);
    // Spin up to the threshold, then publish the slot (still Spin).
    while !matches!(b.step, Step::Published { .. }) {
        assert_eq!(b.poll(&lock, ops.on(1)), Poll::Spin);
    }
    lock.unlock(ops.on(0));
    assert!(ops.kicks.borrow().is_empty(), "nobody was registered yet");
    // The registration's own RMW sees the ticket served.
    assert_eq!(b.poll(&lock, ops.on(1)), Poll::Acquired(TICKET_STEP));
    assert_eq!(lock.slow_waiters(), 0);
}

#[test]
fn cpus_without_a_slot_spin_instead_of_halting() {
    let ops = Recorder::new(1);
    let lock = PvTicketLock::new();
    lock.lock(PV, ops.on(0));
    let mut b = Acquire::new(PV);
    for _ in 0..100 {
        assert_eq!(b.poll(&lock, ops.on(5)), Poll::Spin);
    }
    lock.unlock(ops.on(0));
    assert_eq!(b.poll(&lock, ops.on(5)), Poll::Acquired(TICKET_STEP));
}

#[test]
fn test_and_set_waits_out_slow_waiters() {
    let ops = Recorder::new(2);
    let lock = PvTicketLock::new();
    lock.lock(PV, ops.on(0));
    let mut b = Acquire::new(PV);
    assert_eq!(poll_until_halt(&mut b, &lock, ops.on(1)), Poll::Halt);
    lock.unlock(ops.on(0));
    // Handed to B (halted, not yet running): a test-and-set taker must not barge in.
    let mut tas = Acquire::new(WaitMode::TestAndSet);
    assert_eq!(tas.poll(&lock, ops.on(0)), Poll::Spin);
    ops.halt(1);
    assert_eq!(b.poll(&lock, ops.on(1)), Poll::Acquired(TICKET_STEP));
    lock.unlock(ops.on(1));
    assert_eq!(tas.poll(&lock, ops.on(0)), Poll::Acquired(2 * TICKET_STEP));
}

#[test]
fn tickets_wrap_around() {
    let ops = Recorder::new(2);
    let lock = PvTicketLock {
        next: AtomicU32::new(0u32.wrapping_sub(TICKET_STEP)),
        owner: AtomicU32::new(0u32.wrapping_sub(TICKET_STEP)),
    };
    lock.lock(PV, ops.on(0));
    let mut b = Acquire::new(PV);
    assert_eq!(poll_until_halt(&mut b, &lock, ops.on(1)), Poll::Halt);
    lock.unlock(ops.on(0));
    assert_eq!(*ops.kicks.borrow(), [1]);
    ops.halt(1);
    assert_eq!(b.poll(&lock, ops.on(1)), Poll::Acquired(0));
    lock.unlock(ops.on(1));
    assert!(lock.is_free());
    assert_eq!(lock.waiters(), 0);
}
