//! Lull's scheduler policy: per-CPU run queues, real-time FIFO and fair classes, wake-up
//! placement, idle balancing, directed yield and per-task CPU time.
//!
//! This crate decides *what* runs *where*; it never touches hardware. The kernel calls it with
//! the time (monotonic nanoseconds) and does what it says: switch to [`Pick::next`], send a
//! reschedule IPI when a [`Placement`] asks for one, program the one-shot timer for
//! [`Scheduler::next_preemption_deadline`] (so a CPU with one task, or none, never ticks).
//!
//! Two classes, as Linux `SCHED_FIFO` and CFS:
//! - **real-time FIFO**, priorities 1..=99: the highest priority runs; it preempts every fair
//!   task and lower real-time tasks; equal priorities run in arrival order, and a preempted task
//!   keeps its turn; no time slice.
//! - **fair**: each task's virtual runtime grows by its runtime × 1024 / weight (weight from its
//!   nice value), and the smallest virtual runtime runs. A task gets a slice of the scheduling
//!   period in proportion to its weight, but is never switched by the tick before the minimum
//!   granularity. New tasks start at the queue's minimum virtual runtime; woken ones at
//!   `max(own, minimum − sleeper credit)`.
//!
//! ```
//! use lull_sched::{CpuSet, Nice, SchedClass, SchedConfig, Scheduler};
//!
//! const MS: u64 = 1_000_000;
//! let mut sched = Scheduler::new(1, SchedConfig::default())?;
//! let light = SchedClass::Fair(Nice::new(5)?);
//! let (heavy_task, _) = sched.spawn(SchedClass::NORMAL, CpuSet::ALL, 0, 0)?;
//! let (light_task, _) = sched.spawn(light, CpuSet::ALL, 0, 0)?;
//!
//! // Run for 100 ms, switching whenever the scheduler asks.
//! let mut now = 0;
//! let _ = sched.pick_next(0, now)?;
//! while now < 100 * MS {
//!     now = sched.next_preemption_deadline(0).unwrap_or(now + MS).max(now + 1);
//!     if sched.tick(0, now)? {
//!         let _ = sched.pick_next(0, now)?;
//!     }
//! }
//! sched.account(0, now)?;
//! let heavy = sched.task_info(heavy_task).unwrap().cpu_time_ns;
//! let light = sched.task_info(light_task).unwrap().cpu_time_ns;
//! // Weights 1024 : 335, so about 75% : 25%.
//! assert!(heavy > 2 * light && heavy < 4 * light);
//! # Ok::<(), lull_sched::SchedError>(())
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod class;
mod cpuset;
mod error;
mod fair;
mod runqueue;
mod scheduler;
mod task;

pub use class::{Nice, RtPriority, SchedClass};
pub use cpuset::{CpuId, CpuSet};
pub use error::SchedError;
pub use fair::SchedConfig;
pub use scheduler::{
    ConsistencyError, CpuInfo, NotYieldedReason, Pick, Placement, Scheduler, Wakeup, YieldTo,
};
pub use task::{TaskId, TaskInfo, TaskState};
