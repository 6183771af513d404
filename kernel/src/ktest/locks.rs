//! In-kernel tests of the locking toolkit: ticket fairness, the sleeping mutex and rwlock,
//! preemption at lock release, and the sleeping-while-atomic check.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use lull_sched::{CpuSet, RtPriority, SchedClass};

use super::{spawn, wait_for, TestResult};
use crate::kernel::locking::IrqSafeLock;
use crate::kernel::locking::{Mutex, PreemptDisabled, RwLock, SpinLock};
use crate::kernel::sched::{self, Completion};
use crate::kernel::{smp, time};

/// Two CPUs queue for a held ticket lock one after the other; released, it serves them in
/// arrival order (a test-and-set lock lets either win). Needs three CPUs.
pub fn ticket_spinlock_serves_cpus_in_arrival_order() -> TestResult {
    super::needs_cpus(3)?;
    let cpus: Vec<usize> = smp::online_cpus().collect();
    let was = crate::kernel::locking::set_spin_wait(crate::arch::sync::SpinWait::Ticket);
    let lock = Arc::new(SpinLock::new(Vec::<usize>::new()));
    let done = Arc::new(Completion::new());
    let mut result = Ok(());
    for round in 0..5 {
        // Alternate which CPU queues first, so an unfair lock could not pass by luck.
        let (first, second) = if round % 2 == 0 {
            (cpus[1], cpus[2])
        } else {
            (cpus[2], cpus[1])
        };
        let held = lock.lock();
        for (cpu, expected_waiters) in [(first, 1), (second, 2)] {
            let (queued, done) = (Arc::clone(&lock), Arc::clone(&done));
            spawn(
                "ticket",
                SchedClass::NORMAL,
                CpuSet::single(cpu),
                move || {
                    queued.lock().push(cpu);
                    done.complete();
                },
            )?;
            // Spin (we hold a spinlock: no sleeping) until the CPU has taken its ticket.
            let deadline = time::uptime_ns() + 2_000_000_000;
            while lock.waiters() < expected_waiters && time::uptime_ns() < deadline {
                core::hint::spin_loop();
            }
            if lock.waiters() < expected_waiters {
                result = Err(alloc::format!(
                    "CPU {cpu} never queued for the lock ({} waiters)",
                    lock.waiters()
                ));
            }
        }
        drop(held);
        done.wait();
        done.wait();
        let order = core::mem::take(&mut *lock.lock());
        if result.is_ok() && order != [first, second] {
            result = Err(alloc::format!(
                "round {round}: CPUs {first} then {second} queued, served {order:?}"
            ));
        }
        if result.is_err() {
            break;
        }
    }
    crate::kernel::locking::set_spin_wait(was);
    Ok(result?)
}

static COUNTED: Mutex<u64> = Mutex::named("ktest::COUNTED", 0);

/// Threads on every CPU increment a counter under the sleeping mutex, each sometimes sleeping
/// while holding it (so others must sleep on the mutex, not spin); the count is exact and
/// contended takers slept (their CPUs switched threads).
pub fn mutex_holders_sleep_and_count_exactly() -> TestResult {
    const PER_THREAD: u64 = 300;
    let cpus: Vec<usize> = smp::online_cpus().collect();
    let threads = cpus.len().max(2) * 2;
    *COUNTED.lock() = 0;
    let finished = Arc::new(Completion::new());
    let inside = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicBool::new(false));
    let switches_before: u64 = cpus.iter().map(|&cpu| sched::context_switches(cpu)).sum();
    for index in 0..threads {
        let cpu = cpus[index % cpus.len()];
        let (finished, inside, overlap) = (
            Arc::clone(&finished),
            Arc::clone(&inside),
            Arc::clone(&overlap),
        );
        spawn(
            "mutex",
            SchedClass::NORMAL,
            CpuSet::single(cpu),
            move || {
                for round in 0..PER_THREAD {
                    let mut counter = COUNTED.lock();
                    if inside.fetch_add(1, Ordering::AcqRel) != 0 {
                        overlap.store(true, Ordering::Release);
                    }
                    let value = *counter;
                    if round % 50 == 0 {
                        time::sleep_ns(200_000); // sleeping with the mutex held is allowed
                    }
                    *counter = value + 1;
                    inside.fetch_sub(1, Ordering::AcqRel);
                }
                finished.complete();
            },
        )?;
    }
    for _ in 0..threads {
        if !finished.wait_timeout(60_000_000_000) {
            return Err(String::from("mutex threads did not finish within 60 s").into());
        }
    }
    let counted = *COUNTED.lock();
    let switches: u64 = cpus
        .iter()
        .map(|&cpu| sched::context_switches(cpu))
        .sum::<u64>()
        - switches_before;
    ensure!(
        !overlap.load(Ordering::Acquire),
        "two threads were inside the mutex at once"
    );
    ensure!(
        counted == threads as u64 * PER_THREAD,
        "counted {counted}, expected {}",
        threads as u64 * PER_THREAD
    );
    ensure!(
        switches >= threads as u64,
        "only {switches} context switches: contended takers did not sleep"
    );
    crate::printk!(
        "ktest locks: {threads} threads x {PER_THREAD} mutex increments, {switches} switches"
    );
    Ok(())
}

static HANDOFF_MUTEX: Mutex<u64> = Mutex::named("ktest::HANDOFF_MUTEX", 0);
static HANDOFF_RWLOCK: RwLock<u64> = RwLock::named("ktest::HANDOFF_RWLOCK", 0);

/// Short, hot critical sections on every CPU: a released lock is often grabbed by a thread
/// that never slept before the woken waiter runs, which then sleeps again. No waiter may be
/// left asleep on a free lock (a wake-up that lands between a waiter joining the queue and
/// marking itself as about to sleep used to be lost: the threads then never finished).
pub fn contended_sleeping_locks_lose_no_waiter() -> TestResult {
    const PER_THREAD: u64 = 1500;
    let cpus: Vec<usize> = smp::online_cpus().collect();
    let threads = cpus.len() * 2;
    // Mutex; rwlock writers only; rwlock with every other thread a reader.
    for mode in ["mutex", "rwlock writers", "rwlock readers and writers"] {
        *HANDOFF_MUTEX.lock() = 0;
        *HANDOFF_RWLOCK.write() = 0;
        let finished = Arc::new(Completion::new());
        let mut writers = 0;
        for index in 0..threads {
            let finished = Arc::clone(&finished);
            let cpu = cpus[index % cpus.len()];
            let reader = mode == "rwlock readers and writers" && index % 2 == 1;
            writers += u64::from(!reader);
            spawn(
                "handoff",
                SchedClass::NORMAL,
                CpuSet::single(cpu),
                move || {
                    for _ in 0..PER_THREAD {
                        match mode {
                            "mutex" => *HANDOFF_MUTEX.lock() += 1,
                            _ if reader => {
                                core::hint::black_box(*HANDOFF_RWLOCK.read());
                            }
                            _ => *HANDOFF_RWLOCK.write() += 1,
                        }
                    }
                    finished.complete();
                },
            )?;
        }
        for done in 0..threads {
            ensure!(
                finished.wait_timeout(60_000_000_000),
                "{mode}: {done} of {threads} threads finished within 60 s: a waiter sleeps on a free lock"
            );
        }
        let counted = if mode == "mutex" {
            *HANDOFF_MUTEX.lock()
        } else {
            *HANDOFF_RWLOCK.write()
        };
        ensure!(
            counted == writers * PER_THREAD,
            "{mode}: counted {counted}, expected {}",
            writers * PER_THREAD
        );
    }
    Ok(())
}

static SHARED: RwLock<u64> = RwLock::named("ktest::SHARED", 0);

/// Two readers hold the rwlock at once; a writer waits for both; a reader arriving while the
/// writer waits goes after it (writers are not starved).
pub fn rwlock_shares_readers_and_excludes_writers() -> TestResult {
    let cpu = *smp::online_cpus().collect::<Vec<_>>().last().unwrap_or(&0);
    let readers_in = Arc::new(AtomicUsize::new(0));
    let release_readers = Arc::new(AtomicBool::new(false));
    let log = Arc::new(SpinLock::new(Vec::<&'static str>::new()));
    let done = Arc::new(Completion::new());
    *SHARED.write() = 0;
    for _ in 0..2 {
        let (readers_in, release, done) = (
            Arc::clone(&readers_in),
            Arc::clone(&release_readers),
            Arc::clone(&done),
        );
        spawn(
            "reader",
            SchedClass::NORMAL,
            CpuSet::single(cpu),
            move || {
                let guard = SHARED.read();
                readers_in.fetch_add(1, Ordering::AcqRel);
                while !release.load(Ordering::Acquire) {
                    time::msleep(1);
                }
                drop(guard);
                done.complete();
            },
        )?;
    }
    ensure!(
        wait_for(5_000, || readers_in.load(Ordering::Acquire) == 2),
        "two readers could not hold the lock together ({} in)",
        readers_in.load(Ordering::Acquire)
    );
    let (writer_log, writer_done) = (Arc::clone(&log), Arc::clone(&done));
    spawn(
        "writer",
        SchedClass::NORMAL,
        CpuSet::single(cpu),
        move || {
            let mut value = SHARED.write();
            *value += 1;
            writer_log.lock().push("writer");
            drop(value);
            writer_done.complete();
        },
    )?;
    ensure!(
        wait_for(5_000, || SHARED.writers_waiting() == 1),
        "the writer never waited"
    );
    let (late_log, late_done) = (Arc::clone(&log), Arc::clone(&done));
    spawn(
        "late-reader",
        SchedClass::NORMAL,
        CpuSet::single(cpu),
        move || {
            let value = *SHARED.read();
            late_log.lock().push(if value == 1 {
                "reader-after"
            } else {
                "reader-before"
            });
            late_done.complete();
        },
    )?;
    time::msleep(20);
    ensure!(
        log.lock().is_empty(),
        "ran while two readers held the lock: {:?}",
        *log.lock()
    );
    release_readers.store(true, Ordering::Release);
    for _ in 0..4 {
        if !done.wait_timeout(10_000_000_000) {
            return Err(String::from("rwlock threads did not finish").into());
        }
    }
    let log = log.lock().clone();
    ensure!(
        log == ["writer", "reader-after"],
        "expected the writer, then the late reader seeing its write; got {log:?}"
    );
    Ok(())
}

/// A fair thread holding a spinlock wakes a FIFO thread on its own CPU: the FIFO thread cannot
/// run while the lock is held (preemption is off), and runs at the release itself, before
/// the releasing thread's next statement.
pub fn preemption_happens_at_spinlock_release() -> TestResult {
    let cpu = *smp::online_cpus().collect::<Vec<_>>().last().unwrap_or(&0);
    let lock = Arc::new(SpinLock::new(()));
    let wake = Arc::new(Completion::new());
    let ran = Arc::new(AtomicBool::new(false));
    let (fifo_wake, fifo_ran) = (Arc::clone(&wake), Arc::clone(&ran));
    spawn(
        "fifo",
        SchedClass::RealTime(RtPriority::new(60).unwrap_or(RtPriority::MAX)),
        CpuSet::single(cpu),
        move || {
            fifo_wake.wait();
            fifo_ran.store(true, Ordering::Release);
        },
    )?;
    time::msleep(10); // the FIFO thread is asleep on the completion
    let verdict = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(Completion::new());
    let (fair_verdict, fair_finished, fair_ran) = (
        Arc::clone(&verdict),
        Arc::clone(&finished),
        Arc::clone(&ran),
    );
    spawn("fair", SchedClass::NORMAL, CpuSet::single(cpu), move || {
        let guard = lock.lock();
        wake.complete();
        // Spin a while: an interrupt return here must not switch (preemption is off).
        let until = time::uptime_ns() + 5_000_000;
        while time::uptime_ns() < until {
            core::hint::spin_loop();
        }
        let before = fair_ran.load(Ordering::Acquire);
        drop(guard);
        let after = fair_ran.load(Ordering::Acquire);
        fair_verdict.store(u64::from(before) | u64::from(after) << 1, Ordering::Release);
        fair_finished.complete();
    })?;
    ensure!(
        finished.wait_timeout(10_000_000_000),
        "the fair thread did not finish"
    );
    let verdict = verdict.load(Ordering::Acquire);
    ensure!(
        verdict & 1 == 0,
        "the FIFO thread ran while the spinlock was held"
    );
    ensure!(
        verdict & 2 != 0,
        "the FIFO thread had not run right after the release"
    );
    Ok(())
}

static ATOMIC_OUTER: SpinLock<()> = SpinLock::named("ktest::ATOMIC_OUTER", ());
static ATOMIC_INNER: Mutex<()> = Mutex::named("ktest::ATOMIC_INNER", ());

/// Taking a sleeping lock under a spinlock is reported (lockdep on: naming the spinlock; and
/// the always-on check with preemption disabled), and the machine keeps running.
pub fn sleeping_lock_under_a_spinlock_is_reported() -> TestResult {
    crate::kernel::locking::lockdep::enable();
    let before = crate::kernel::locking::lockdep::report_count();
    {
        let _outer = ATOMIC_OUTER.lock();
        let _inner = ATOMIC_INNER.lock(); // uncontended: it does not actually sleep
    }
    let reports = crate::kernel::locking::lockdep::recent_reports();
    ensure!(
        crate::kernel::locking::lockdep::report_count() > before
            && reports
                .iter()
                .any(|r| r.contains("ktest::ATOMIC_INNER") && r.contains("ktest::ATOMIC_OUTER")),
        "no sleeping-while-atomic report naming both locks: {reports:?}"
    );
    let before = crate::kernel::locking::lockdep::report_count();
    {
        let _pinned = PreemptDisabled::new();
        crate::kernel::locking::might_sleep();
    }
    ensure!(
        crate::kernel::locking::lockdep::report_count() > before,
        "might_sleep with preemption disabled was not reported"
    );
    Ok(())
}

static LOCKDEP_TEST_A: IrqSafeLock<u32> = IrqSafeLock::named("ktest::LOCK_A", 0);
static LOCKDEP_TEST_B: IrqSafeLock<u32> = IrqSafeLock::named("ktest::LOCK_B", 0);

/// Lockdep (turned on here, as `lockdep=1` would) learns A → B from one path and reports the
/// other path's B → A, naming both locks and sites, without stopping the machine.
pub(super) fn lockdep_reports_an_inverted_lock_pair() -> TestResult {
    crate::kernel::locking::lockdep::enable();
    let before = crate::kernel::locking::lockdep::report_count();
    {
        let a = LOCKDEP_TEST_A.lock();
        let b = LOCKDEP_TEST_B.lock();
        drop(b);
        drop(a);
    }
    ensure!(
        crate::kernel::locking::lockdep::report_count() == before,
        "the consistent order A then B was reported: {:?}",
        crate::kernel::locking::lockdep::recent_reports()
    );
    {
        let b = LOCKDEP_TEST_B.lock();
        let a = LOCKDEP_TEST_A.lock();
        drop(a);
        drop(b);
    }
    ensure!(
        crate::kernel::locking::lockdep::report_count() == before + 1,
        "{} reports for the inversion, expected 1",
        crate::kernel::locking::lockdep::report_count() - before
    );
    let reports = crate::kernel::locking::lockdep::recent_reports();
    let text = reports.last().cloned().unwrap_or_default();
    ensure!(
        text.contains("circular")
            && text.contains("ktest::LOCK_A")
            && text.contains("ktest::LOCK_B")
            && text.contains("src/ktest/locks.rs"),
        "report does not name both locks and sites: {text}"
    );
    // The kernel's own named locks (scheduler, jiffies, clocks) ran under the checker during
    // the test too, and checking goes on.
    let stats = crate::kernel::locking::lockdep::proc_stats();
    ensure!(stats.contains("lock-classes"), "lockdep_stats: {stats}");
    Ok(())
}

/// A failed try leaves the lock with its holder: the next try fails too, and only the holder's
/// release frees it (regression: a guard built and dropped on a failed try released the lock).
pub(super) fn failed_try_lock_leaves_the_holder_alone() -> TestResult {
    static LOCK: IrqSafeLock<u32> = IrqSafeLock::new(0);
    let held = LOCK.lock();
    ensure!(LOCK.try_lock().is_none(), "try_lock took a held lock");
    ensure!(
        LOCK.try_lock().is_none(),
        "a failed try_lock released the holder's lock"
    );
    drop(held);
    ensure!(LOCK.try_lock().is_some(), "try_lock failed on a free lock");
    Ok(())
}
