//! Real threads on the paravirt ticket lock: halt parks the thread, kick unparks it (with the
//! "kick before halt" flag KVM has). Checks mutual exclusion, FIFO service, and that no halted
//! waiter is left waiting for a kick that never comes — detected by a halt timeout, so a lost
//! wake-up fails the test instead of hanging it.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Barrier, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use lull_pv::pv_spinlock::{PvLockOps, PvTicketLock, WaitMode, WaitSlot, TICKET_STEP};

/// Far longer than any legitimate wait for a handover here (microseconds), even on a loaded
/// 2-core machine; a halt that lasts this long was never kicked.
const LOST_WAKEUP_AFTER: Duration = Duration::from_secs(5);

struct Shared {
    slots: Vec<WaitSlot>,
    kicked: Vec<AtomicBool>,
    threads: Vec<OnceLock<Thread>>,
    lost_wakeup: AtomicBool,
    halts: AtomicU64,
    kicks: AtomicU64,
}

struct CpuOps<'a> {
    shared: &'a Shared,
    cpu: usize,
}

impl PvLockOps for CpuOps<'_> {
    fn this_cpu(&self) -> usize {
        self.cpu
    }

    fn wait_slots(&self) -> &[WaitSlot] {
        &self.shared.slots
    }

    fn halt(&self, cpu: usize) {
        let shared = self.shared;
        shared.halts.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + LOST_WAKEUP_AFTER;
        loop {
            // A kick since the last halt makes this one return at once (KVM's unhalt flag).
            if shared.kicked[cpu].swap(false, Ordering::Acquire) {
                return;
            }
            // After one lost wake-up, stop halting (yield instead, so a preempted ticket holder
            // gets to run) so the run finishes quickly, and then fails.
            if shared.lost_wakeup.load(Ordering::Relaxed) {
                std::thread::yield_now();
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                shared.lost_wakeup.store(true, Ordering::Relaxed);
                return;
            }
            std::thread::park_timeout(deadline - now);
        }
    }

    fn kick(&self, cpu: usize) {
        self.shared.kicks.fetch_add(1, Ordering::Relaxed);
        self.shared.kicked[cpu].store(true, Ordering::Release);
        self.shared.threads[cpu]
            .get()
            .expect("kicked CPUs have registered")
            .unpark();
    }
}

#[test]
fn mutual_exclusion_fifo_and_no_lost_wakeup() {
    const CPUS: usize = 8;
    const ROUNDS: u32 = 2_000;
    let total = CPUS as u32 * ROUNDS;
    let shared = Shared {
        slots: (0..CPUS).map(|_| WaitSlot::new()).collect(),
        kicked: (0..CPUS).map(|_| AtomicBool::new(false)).collect(),
        threads: (0..CPUS).map(|_| OnceLock::new()).collect(),
        lost_wakeup: AtomicBool::new(false),
        halts: AtomicU64::new(0),
        kicks: AtomicU64::new(0),
    };
    let lock = PvTicketLock::new();
    // Guarded by the lock: written with plain load/store, so a broken lock loses updates.
    let counter = AtomicU64::new(0);
    let inside = AtomicBool::new(false);
    let served: Vec<AtomicU32> = (0..total).map(|_| AtomicU32::new(u32::MAX)).collect();
    let start = Barrier::new(CPUS);
    // A small threshold sends waiters to the slow path often.
    let mode = WaitMode::PvTicket { spin_threshold: 64 };

    std::thread::scope(|s| {
        for cpu in 0..CPUS {
            let (shared, lock, counter, inside, served, start) =
                (&shared, &lock, &counter, &inside, &served, &start);
            s.spawn(move || {
                shared.threads[cpu].set(std::thread::current()).unwrap();
                start.wait();
                let ops = CpuOps { shared, cpu };
                for _ in 0..ROUNDS {
                    // Already failed: stop taking tickets (only between acquisitions, so every
                    // ticket taken is still served).
                    if shared.lost_wakeup.load(Ordering::Relaxed) {
                        break;
                    }
                    let ticket = lock.lock(mode, &ops);
                    assert!(!inside.swap(true, Ordering::Relaxed), "two holders");
                    let n = counter.load(Ordering::Relaxed);
                    served[n as usize].store(ticket, Ordering::Relaxed);
                    // Hold the lock a little, so waiters outlast their spin threshold.
                    for _ in 0..200 {
                        std::hint::spin_loop();
                    }
                    counter.store(n + 1, Ordering::Relaxed);
                    inside.store(false, Ordering::Relaxed);
                    lock.unlock(&ops);
                }
            });
        }
    });

    assert!(
        !shared.lost_wakeup.load(Ordering::Relaxed),
        "a halted waiter was never kicked (lost wake-up)"
    );
    assert_eq!(counter.load(Ordering::Relaxed), u64::from(total));
    // FIFO: the n-th holder held the n-th ticket.
    for (n, ticket) in served.iter().enumerate() {
        assert_eq!(
            ticket.load(Ordering::Relaxed),
            n as u32 * TICKET_STEP,
            "acquisition {n} out of ticket order"
        );
    }
    assert!(lock.is_free(), "{:?}", lock.raw());
    assert_eq!(lock.slow_waiters(), 0);
    let (halts, kicks) = (
        shared.halts.load(Ordering::Relaxed),
        shared.kicks.load(Ordering::Relaxed),
    );
    println!("halts {halts}, kicks {kicks}");
    assert!(kicks > 0, "the slow path was never exercised");
}
