//! Tasks as the scheduler sees them: identity, state machine, class, affinity and CPU time.

use core::fmt;

use crate::{CpuId, CpuSet, SchedClass};

/// A task's identity. Ids are never reused, so a stale id finds nothing rather than a stranger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(u64);

impl TaskId {
    /// The number `ps` shows.
    pub const fn get(self) -> u64 {
        self.0
    }

    pub(crate) const fn from_raw(raw: u64) -> TaskId {
        TaskId(raw)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a task is in its life. The legal moves, and the call that makes each:
///
/// | from               | to                 | by                                                      |
/// |--------------------|--------------------|---------------------------------------------------------|
/// | (new)              | `Runnable`         | `spawn`                                                 |
/// | (new)              | `Running`          | `adopt_current`                                         |
/// | `Runnable`         | `Running`          | `pick_next` / `preempt` choosing it                     |
/// | `Running`          | `Runnable`         | `pick_next` / `preempt` choosing another task           |
/// | `Running`          | `PreparingToSleep` | `prepare_to_sleep`                                      |
/// | `PreparingToSleep` | `Running`          | `wake_up` (the wake-up is not lost), `finish_wait`, `preempt` |
/// | `PreparingToSleep` | `Sleeping`         | `pick_next` (the task's own `schedule()`)               |
/// | `Sleeping`         | `Runnable`         | `wake_up`, `enqueue`                                    |
/// | `Runnable`         | `Sleeping`         | `dequeue`                                               |
/// | `Running`, `PreparingToSleep` | `Dead`  | `exit`                                                  |
/// | `Dead`             | (gone)             | `reap`, once it is off its CPU                          |
///
/// Every other move is refused with [`crate::SchedError::IllegalTransition`].
///
/// `PreparingToSleep` is Linux's "`set_current_state(TASK_INTERRUPTIBLE)` done, `schedule()` not
/// yet called": the task has put itself on a wait queue and is re-checking its condition. A
/// wake-up in that window turns it back into `Running`, so its `schedule()` does not sleep — the
/// rule that makes sleep/wake free of lost wake-ups. Preemption in that window also leaves it
/// runnable (at worst a spurious wake-up, which wait loops tolerate; never a lost one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// On a CPU right now (the current task of [`TaskInfo::cpu`]).
    Running,
    /// Waiting in the run queue of [`TaskInfo::cpu`].
    Runnable,
    /// Still on its CPU, but about to sleep unless woken first.
    PreparingToSleep,
    /// Off every run queue until woken.
    Sleeping,
    /// Exited; the id is kept until reaped so its CPU time can still be read.
    Dead,
}

impl TaskState {
    /// The one-letter code `ps` shows (`R` running or runnable, `S` sleeping, `X` dead).
    pub const fn ps_code(self) -> char {
        match self {
            TaskState::Running | TaskState::Runnable => 'R',
            TaskState::PreparingToSleep | TaskState::Sleeping => 'S',
            TaskState::Dead => 'X',
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskState::Running => "running",
            TaskState::Runnable => "runnable",
            TaskState::PreparingToSleep => "preparing to sleep",
            TaskState::Sleeping => "sleeping",
            TaskState::Dead => "dead",
        })
    }
}

/// A snapshot of one task, for `ps` and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub id: TaskId,
    pub state: TaskState,
    pub class: SchedClass,
    /// The CPU it runs or waits on, or last ran on when sleeping.
    pub cpu: CpuId,
    pub affinity: CpuSet,
    /// CPU time consumed, in nanoseconds, up to the last accounting point of its CPU.
    pub cpu_time_ns: u64,
    /// Fair-class virtual runtime in nanoseconds (meaningful only against the same run queue).
    pub vruntime: u128,
    /// Switches away because it slept (or exited).
    pub voluntary_switches: u64,
    /// Switches away while it could still run (preempted or yielded).
    pub involuntary_switches: u64,
    /// Times it moved to another CPU.
    pub migrations: u64,
}

/// The scheduler's private record of a task.
#[derive(Clone, Debug)]
pub(crate) struct Task {
    pub(crate) id: TaskId,
    pub(crate) state: TaskState,
    pub(crate) class: SchedClass,
    pub(crate) affinity: CpuSet,
    pub(crate) cpu: CpuId,
    /// Fair class: the position on its run queue's timeline (nanoseconds, weighted).
    /// u128, so that even a nice-19 task alone for centuries cannot wrap it.
    pub(crate) vruntime: u128,
    /// Tie-break among equal virtual runtimes: insertion order, so equal tasks take turns.
    pub(crate) queue_sequence: u64,
    /// Total CPU time.
    pub(crate) sum_exec_ns: u64,
    /// `sum_exec_ns` when it was last picked: how long the current turn has lasted.
    pub(crate) turn_start_exec_ns: u64,
    /// Run-queue clock when its CPU time was last accounted (valid while on a CPU).
    pub(crate) exec_start: u64,
    /// Asked to go behind its equals at the next switch (real-time `yield_now`).
    pub(crate) yield_pending: bool,
    pub(crate) voluntary_switches: u64,
    pub(crate) involuntary_switches: u64,
    pub(crate) migrations: u64,
}

impl Task {
    pub(crate) fn new(id: TaskId, class: SchedClass, affinity: CpuSet, cpu: CpuId) -> Task {
        Task {
            id,
            state: TaskState::Sleeping,
            class,
            affinity,
            cpu,
            vruntime: 0,
            queue_sequence: 0,
            sum_exec_ns: 0,
            turn_start_exec_ns: 0,
            exec_start: 0,
            yield_pending: false,
            voluntary_switches: 0,
            involuntary_switches: 0,
            migrations: 0,
        }
    }

    pub(crate) fn info(&self) -> TaskInfo {
        TaskInfo {
            id: self.id,
            state: self.state,
            class: self.class,
            cpu: self.cpu,
            affinity: self.affinity,
            cpu_time_ns: self.sum_exec_ns,
            vruntime: self.vruntime,
            voluntary_switches: self.voluntary_switches,
            involuntary_switches: self.involuntary_switches,
            migrations: self.migrations,
        }
    }
}
