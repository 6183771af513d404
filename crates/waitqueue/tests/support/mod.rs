//! A model of the kernel scheduler's sleep states for the protocol tests: std threads, or loom's
//! under `--cfg loom` (where a thread that sleeps forever makes loom report a deadlock).
//!
//! A task is *running*, *preparing to sleep*, or *sleeping* (preparing and parked). As in the
//! kernel's scheduler, waking a running task does nothing, waking a preparing one cancels its
//! next sleep, and waking a sleeping one unparks it.

#![allow(dead_code, unused_imports)] // each test file uses its own part

use std::collections::VecDeque;

#[cfg(loom)]
pub use loom::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
};
#[cfg(not(loom))]
pub use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
};

#[cfg(loom)]
use loom::thread_local;

use lull_waitqueue::{Completion, MutexGrant, RwLockGrant, Scheduler, WaitQueue, WaiterList};

const RUNNING: u8 = 0;
const PREPARING: u8 = 1;

struct TaskState {
    state: AtomicU8,
    thread: thread::Thread,
}

/// A thread's handle; equal when it names the same thread. Its reference count is std's, not
/// modelled: it lives in a thread-local, which loom drops after a failed model has ended, when
/// a loom `Arc` could no longer be dropped.
#[derive(Clone)]
pub struct Task(std::sync::Arc<TaskState>);

impl PartialEq for Task {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

thread_local! {
    static CURRENT: Task = Task(std::sync::Arc::new(TaskState {
        state: AtomicU8::new(RUNNING),
        thread: thread::current(),
    }));
}

/// The scheduler model. Every change of a task's state is a read-modify-write, so each one
/// synchronises with the previous one, as the kernel's scheduler lock orders them (a plain
/// store would let the waiter miss what a waker published before its no-op wake-up; loom
/// models `SeqCst` loads and stores as only acquire/release).
#[derive(Clone, Copy, Default)]
pub struct Model;

impl Scheduler for Model {
    type Task = Task;
    type List = List;

    fn current(&self) -> Option<Task> {
        Some(CURRENT.with(Task::clone))
    }

    fn prepare_to_sleep(&self, task: &Task) {
        task.0.state.swap(PREPARING, Ordering::AcqRel);
    }

    fn finish_wait(&self, task: &Task) {
        task.0.state.swap(RUNNING, Ordering::AcqRel);
    }

    fn schedule(&self) {
        let me = CURRENT.with(Task::clone);
        // Parks may return spuriously (or consume an old unpark): sleep until woken.
        while me.0.state.fetch_add(0, Ordering::AcqRel) == PREPARING {
            thread::park();
        }
    }

    fn wake(&self, task: &Task) {
        if task.0.state.swap(RUNNING, Ordering::AcqRel) == PREPARING {
            task.0.thread.unpark();
        }
    }
}

/// A waiter list under a (std or loom) mutex.
#[derive(Default)]
pub struct List(Mutex<VecDeque<Task>>);

impl WaiterList<Task> for List {
    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<Task>) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }
}

/// The running thread's handle (for a timer that wakes it).
pub fn current() -> Task {
    CURRENT.with(Task::clone)
}

pub fn queue() -> WaitQueue<Model> {
    WaitQueue::new(Model, List::default())
}

pub fn mutex() -> MutexGrant<Model> {
    MutexGrant::new(queue())
}

pub fn rwlock() -> RwLockGrant<Model> {
    RwLockGrant::new(queue())
}

pub fn completion() -> Completion<Model> {
    Completion::new(queue())
}

/// Waits (spinning) until `ready` holds: loom's `yield_now` tells the model checker this
/// thread cannot progress until another runs.
pub fn spin_until(mut ready: impl FnMut() -> bool) {
    while !ready() {
        thread::yield_now();
    }
}
