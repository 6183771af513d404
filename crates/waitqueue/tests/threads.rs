//! The protocol under real (std) threads, many times over: the quick check that `cargo test`
//! runs. The exhaustive one is `tests/loom.rs` (`--cfg loom`).

#![cfg(not(loom))]

mod support;

use std::time::Duration;

use support::{completion, current, mutex, rwlock, spin_until, Arc, AtomicBool, AtomicUsize};
use support::{queue, thread, Model, Ordering};

use lull_waitqueue::Scheduler;

#[test]
fn mutex_counts_exactly() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 20_000;
    let lock = Arc::new(mutex());
    let count = Arc::new(AtomicUsize::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (lock, count, inside) = (lock.clone(), count.clone(), inside.clone());
            thread::spawn(move || {
                for _ in 0..ROUNDS {
                    lock.lock();
                    assert!(!inside.swap(true, Ordering::Relaxed), "two holders");
                    // A separate load and store: a second holder would lose updates.
                    let seen = count.load(Ordering::Relaxed);
                    count.store(seen + 1, Ordering::Relaxed);
                    inside.store(false, Ordering::Relaxed);
                    lock.unlock();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(count.load(Ordering::Relaxed), THREADS * ROUNDS);
    assert!(!lock.is_locked());
    assert_eq!(lock.waiters().waiters(), 0);
}

#[test]
fn rwlock_readers_share_and_writers_exclude() {
    const ROUNDS: usize = 5_000;
    let lock = Arc::new(rwlock());
    let readers = Arc::new(AtomicUsize::new(0));
    let writing = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for id in 0..4 {
        let (lock, readers, writing, writes) = (
            lock.clone(),
            readers.clone(),
            writing.clone(),
            writes.clone(),
        );
        threads.push(thread::spawn(move || {
            for _ in 0..ROUNDS {
                if id % 2 == 0 {
                    lock.write();
                    assert!(!writing.swap(true, Ordering::Relaxed), "two writers");
                    assert_eq!(readers.load(Ordering::Relaxed), 0, "a reader with a writer");
                    let seen = writes.load(Ordering::Relaxed);
                    writes.store(seen + 1, Ordering::Relaxed);
                    writing.store(false, Ordering::Relaxed);
                    lock.write_unlock();
                } else {
                    lock.read();
                    readers.fetch_add(1, Ordering::Relaxed);
                    assert!(!writing.load(Ordering::Relaxed), "a writer with a reader");
                    readers.fetch_sub(1, Ordering::Relaxed);
                    lock.read_unlock();
                }
            }
        }));
    }
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(writes.load(Ordering::Relaxed), 2 * ROUNDS);
    assert_eq!((lock.readers(), lock.writers_waiting()), (0, 0));
}

#[test]
fn waiting_writer_goes_before_later_readers() {
    let lock = Arc::new(rwlock());
    let written = Arc::new(AtomicBool::new(false));
    lock.read();
    let writer = {
        let (lock, written) = (lock.clone(), written.clone());
        thread::spawn(move || {
            lock.write();
            written.store(true, Ordering::Relaxed);
            lock.write_unlock();
        })
    };
    spin_until(|| lock.writers_waiting() == 1);
    let reader = {
        let (lock, written) = (lock.clone(), written.clone());
        thread::spawn(move || {
            lock.read();
            let saw_write = written.load(Ordering::Relaxed);
            lock.read_unlock();
            saw_write
        })
    };
    // Give the late reader time to arrive and be held back.
    thread::sleep(Duration::from_millis(20));
    lock.read_unlock();
    writer.join().unwrap();
    assert!(
        reader.join().unwrap(),
        "the later reader entered before the waiting writer"
    );
}

#[test]
fn completion_wakes_waiters() {
    let done = Arc::new(completion());
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let done = done.clone();
            thread::spawn(move || done.wait())
        })
        .collect();
    thread::sleep(Duration::from_millis(10));
    for _ in 0..3 {
        done.complete();
    }
    for waiter in waiters {
        waiter.join().unwrap();
    }
    assert_eq!(done.pending(), 0);
}

#[test]
fn completion_wait_times_out_through_a_timer_wake_up() {
    let done = Arc::new(completion());
    let waiter = {
        let done = done.clone();
        thread::spawn(move || {
            let me = current();
            let fired = Arc::new(AtomicBool::new(false));
            // The timer: mark expiry, then wake the thread (the kernel's hrtimer callback).
            let timer = {
                let fired = fired.clone();
                thread::spawn(move || {
                    thread::sleep(Duration::from_millis(20));
                    fired.store(true, Ordering::Release);
                    Model.wake(&me);
                })
            };
            let consumed = done.wait_or(|| fired.load(Ordering::Acquire));
            timer.join().unwrap();
            consumed
        })
    };
    assert!(!waiter.join().unwrap(), "nothing was completed");
    done.complete();
    assert_eq!(done.pending(), 1, "the late completion stays pending");
}

#[test]
fn wake_storm_loses_no_token() {
    const CONSUMERS: usize = 4;
    const TOKENS: usize = 20_000;
    let queue = Arc::new(queue());
    let tokens = Arc::new(AtomicUsize::new(0));
    let taken = Arc::new(AtomicUsize::new(0));
    let take = |tokens: &AtomicUsize| {
        tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    };
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (queue, tokens, taken) = (queue.clone(), tokens.clone(), taken.clone());
            thread::spawn(move || {
                for _ in 0..TOKENS / CONSUMERS {
                    queue.wait_until(|| take(&tokens));
                    taken.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for token in 0..TOKENS {
        tokens.fetch_add(1, Ordering::AcqRel);
        if token % 3 == 0 {
            queue.wake_all();
        } else {
            queue.wake_one();
        }
    }
    for consumer in consumers {
        consumer.join().unwrap();
    }
    assert_eq!(taken.load(Ordering::Relaxed), TOKENS);
    assert_eq!(queue.waiters(), 0);
}
