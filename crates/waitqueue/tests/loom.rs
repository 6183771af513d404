//! Exhaustive checks of the wait/wake protocol with loom: every interleaving of the threads
//! (up to a bound on preemptions) is run, and a thread left asleep forever is a deadlock that
//! loom reports as a panic.
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p lull-waitqueue --release --test loom
//! ```
//!
//! `LOOM_MAX_PREEMPTIONS` overrides the default bound ([`PREEMPTIONS`]). A model that fails
//! with a deadlock may abort the test binary right after loom prints it ("panic in a
//! destructor during cleanup": loom objects cannot be dropped once the model has stopped);
//! the first panic message is the finding. The regression test avoids this with
//! [`LeakOnPanic`] so that it can catch the failure it expects.

#![cfg(loom)]

mod support;

use lull_waitqueue::{MutexGrant, Order, Scheduler};
use support::{completion, current, mutex, queue, rwlock, spin_until, thread, Model};
use support::{Arc, AtomicBool, AtomicU32, AtomicUsize, Mutex, Ordering};

/// Preemptions per execution unless `LOOM_MAX_PREEMPTIONS` says otherwise. Three keep every
/// test within seconds (four: about a minute and a half, mostly the rwlock test) and are what
/// the lost wake-up of the old order needs (with two, loom does not reach it).
const PREEMPTIONS: usize = 3;

fn check(model: impl Fn() + Sync + Send + 'static) {
    check_with_at_least(0, model);
}

/// Like [`check`], exploring at least `preemptions` preemptions whatever the environment says.
fn check_with_at_least(preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    let bound = builder.preemption_bound.unwrap_or(PREEMPTIONS);
    builder.preemption_bound = Some(bound.max(preemptions));
    builder.check(model);
}

/// Takes `lock`, checks that nobody else is inside, and counts with a separate load and
/// store (a second holder would lose an update).
fn critical_section(lock: &MutexGrant<Model>, count: &AtomicUsize, inside: &AtomicBool) {
    lock.lock();
    assert!(!inside.swap(true, Ordering::Relaxed), "two holders");
    let seen = count.load(Ordering::Relaxed);
    count.store(seen + 1, Ordering::Relaxed);
    inside.store(false, Ordering::Relaxed);
    lock.unlock();
}

#[test]
fn mutex_counts_exactly() {
    check(|| {
        let lock = Arc::new(mutex());
        let count = Arc::new(AtomicUsize::new(0));
        let inside = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (lock, count, inside) = (lock.clone(), count.clone(), inside.clone());
                thread::spawn(move || critical_section(&lock, &count, &inside))
            })
            .collect();
        critical_section(&lock, &count, &inside);
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(count.load(Ordering::Relaxed), 3);
        assert!(!lock.is_locked());
    });
}

/// Shared state that is leaked instead of dropped while a panic unwinds: a deadlock that
/// loom reports unwinds a model thread, and dropping a loom object then (with no thread left
/// running) panics again, which aborts the test process instead of failing the model.
struct LeakOnPanic<T>(Option<T>);

impl<T> Drop for LeakOnPanic<T> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

impl<T> std::ops::Deref for LeakOnPanic<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("present until dropped")
    }
}

/// What the threads of [`waiter_against_relocker`] share.
struct Shared {
    lock: MutexGrant<Model>,
    count: AtomicUsize,
    inside: AtomicBool,
}

/// The situation of commit 428a572: a thread waits for the mutex while another releases it
/// and takes it again. With the old order the waiter can be "woken" while still running,
/// miss the release, and sleep off the list forever.
fn waiter_against_relocker(order: Order) {
    let shared = LeakOnPanic(Some(Arc::new(Shared {
        lock: MutexGrant::new(queue().with_order(order)),
        count: AtomicUsize::new(0),
        inside: AtomicBool::new(false),
    })));
    let waiter = {
        let shared = LeakOnPanic(Some(Arc::clone(&shared)));
        thread::spawn(move || critical_section(&shared.lock, &shared.count, &shared.inside))
    };
    for _ in 0..2 {
        critical_section(&shared.lock, &shared.count, &shared.inside);
    }
    waiter.join().unwrap();
    assert_eq!(shared.count.load(Ordering::Relaxed), 3);
}

#[test]
fn mutex_waiter_against_relocker() {
    check(|| waiter_against_relocker(Order::PrepareThenJoin));
}

/// The regression check: loom must find the lost wake-up of the old order (join the list,
/// then prepare to sleep), as a deadlock.
#[test]
fn old_order_loses_a_wake_up_and_loom_finds_it() {
    let found = std::panic::catch_unwind(|| {
        check_with_at_least(3, || waiter_against_relocker(Order::JoinThenPrepare));
    });
    let Err(panic) = found else {
        panic!("loom explored the join-then-prepare order and found no lost wake-up");
    };
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(not a string)");
    assert!(
        message.contains("deadlock"),
        "loom failed the old order, but not with a deadlock: {message}"
    );
    println!("old order (join, then prepare): loom found: {message}");
}

#[test]
fn rwlock_readers_and_writer() {
    check(|| {
        let lock = Arc::new(rwlock());
        let readers = Arc::new(AtomicU32::new(0));
        let writing = Arc::new(AtomicBool::new(false));
        let value = Arc::new(AtomicUsize::new(0));
        let reader_threads: Vec<_> = (0..2)
            .map(|_| {
                let (lock, readers, writing, value) = (
                    lock.clone(),
                    readers.clone(),
                    writing.clone(),
                    value.clone(),
                );
                thread::spawn(move || {
                    lock.read();
                    readers.fetch_add(1, Ordering::Relaxed);
                    assert!(!writing.load(Ordering::Relaxed), "a reader with the writer");
                    let seen = value.load(Ordering::Relaxed);
                    readers.fetch_sub(1, Ordering::Relaxed);
                    lock.read_unlock();
                    seen
                })
            })
            .collect();
        lock.write();
        writing.store(true, Ordering::Relaxed);
        assert_eq!(
            readers.load(Ordering::Relaxed),
            0,
            "the writer with a reader"
        );
        value.store(1, Ordering::Relaxed);
        writing.store(false, Ordering::Relaxed);
        lock.write_unlock();
        for reader in reader_threads {
            let seen = reader.join().unwrap();
            assert!(seen <= 1);
        }
        assert_eq!((lock.readers(), lock.writers_waiting()), (0, 0));
        assert!(!lock.is_write_locked());
    });
}

/// A writer waiting behind a reader is granted before a reader that arrives after it: a
/// reader that saw the writer waiting must see its write. (Spinning until the writer waits
/// would need two spinning threads, which loom cannot schedule fairly.)
#[test]
fn waiting_writer_goes_before_later_readers() {
    check(|| {
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
        let late_reader = {
            let (lock, written) = (lock.clone(), written.clone());
            thread::spawn(move || {
                let writer_was_waiting = lock.writers_waiting() == 1;
                lock.read();
                let saw_write = written.load(Ordering::Relaxed);
                lock.read_unlock();
                !writer_was_waiting || saw_write
            })
        };
        lock.read_unlock();
        writer.join().unwrap();
        assert!(
            late_reader.join().unwrap(),
            "a reader that arrived while the writer waited entered first"
        );
    });
}

#[test]
fn completion_waiter_and_completer() {
    check(|| {
        let done = Arc::new(completion());
        let waiter = {
            let done = done.clone();
            thread::spawn(move || done.wait())
        };
        done.complete();
        waiter.join().unwrap();
        assert_eq!(done.pending(), 0);
    });
}

#[test]
fn complete_all_releases_every_waiter() {
    check(|| {
        let done = Arc::new(completion());
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let done = done.clone();
                thread::spawn(move || done.wait())
            })
            .collect();
        done.complete_all();
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert!(done.try_wait(), "complete_all stays done");
    });
}

/// A completion racing a timeout: the wait returns whether it consumed the completion, and a
/// completion it did not consume stays pending. The timer marks expiry and then wakes the
/// thread directly, as the kernel's hrtimer callback does.
#[test]
fn completion_wait_or_timeout() {
    check(|| {
        let done = Arc::new(completion());
        let fired = Arc::new(AtomicBool::new(false));
        let waiter_task = Arc::new(Mutex::new(None));
        let waiter = {
            let (done, fired, waiter_task) = (done.clone(), fired.clone(), waiter_task.clone());
            thread::spawn(move || {
                *waiter_task.lock().unwrap() = Some(current());
                done.wait_or(|| fired.load(Ordering::Acquire))
            })
        };
        let timer = {
            let (fired, waiter_task) = (fired.clone(), waiter_task.clone());
            thread::spawn(move || {
                spin_until(|| waiter_task.lock().unwrap().is_some());
                fired.store(true, Ordering::Release);
                if let Some(task) = waiter_task.lock().unwrap().as_ref() {
                    Model.wake(task);
                }
            })
        };
        done.complete();
        let consumed = waiter.join().unwrap();
        timer.join().unwrap();
        assert_eq!(u64::from(consumed) + done.pending(), 1);
    });
}

/// Several waits and wakes on one queue: two consumers take three tokens that a producer adds
/// one at a time, waking one waiter each time (the last with a wake-all).
#[test]
fn wake_storm() {
    check(|| {
        let queue = Arc::new(queue());
        let tokens = Arc::new(AtomicUsize::new(0));
        let take = |tokens: &AtomicUsize| {
            tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
        };
        let consumers: Vec<_> = [2, 1]
            .into_iter()
            .map(|wanted| {
                let (queue, tokens) = (queue.clone(), tokens.clone());
                thread::spawn(move || {
                    for _ in 0..wanted {
                        queue.wait_until(|| take(&tokens));
                    }
                })
            })
            .collect();
        for token in 0..3 {
            tokens.fetch_add(1, Ordering::AcqRel);
            if token == 2 {
                queue.wake_all();
            } else {
                queue.wake_one();
            }
        }
        for consumer in consumers {
            consumer.join().unwrap();
        }
        assert_eq!(tokens.load(Ordering::Relaxed), 0);
        assert_eq!(queue.waiters(), 0);
    });
}
