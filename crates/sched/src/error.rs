//! Why a scheduler operation was refused.

use core::fmt;

use crate::{CpuId, CpuSet, TaskId, TaskState};

/// Why a scheduler operation was refused. A refused operation changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// A [`crate::SchedConfig`] value makes no sense (named by the message).
    InvalidConfig(&'static str),
    /// The scheduler was built for 1..=64 CPUs.
    TooManyCpus(usize),
    /// No such CPU number in this scheduler.
    NoSuchCpu(CpuId),
    /// The CPU exists but has not been brought online.
    CpuOffline(CpuId),
    /// No task with this id (never created, or already reaped).
    NoSuchTask(TaskId),
    /// Real-time priorities are `1..=99`.
    PriorityOutOfRange(u8),
    /// Nice values are `-20..=19`.
    NiceOutOfRange(i8),
    /// The affinity mask names no online CPU, so the task could never run.
    NoOnlineCpuInAffinity(CpuSet),
    /// The task's affinity does not allow this CPU.
    CpuNotAllowed { task: TaskId, cpu: CpuId },
    /// The operation needs the task in another state (see [`TaskState`] for the legal moves).
    IllegalTransition {
        task: TaskId,
        from: TaskState,
        operation: &'static str,
    },
    /// The CPU has no current task to act on.
    NoCurrentTask(CpuId),
    /// The CPU already has a current task.
    CpuBusy(CpuId),
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedError::InvalidConfig(what) => write!(f, "invalid scheduler configuration: {what}"),
            SchedError::TooManyCpus(count) => {
                write!(f, "{count} CPUs requested; the scheduler supports 1 to 64")
            }
            SchedError::NoSuchCpu(cpu) => write!(f, "CPU {cpu} does not exist"),
            SchedError::CpuOffline(cpu) => write!(f, "CPU {cpu} is not online"),
            SchedError::NoSuchTask(task) => write!(f, "task {task} does not exist"),
            SchedError::PriorityOutOfRange(priority) => {
                write!(f, "real-time priority {priority} is outside 1..=99")
            }
            SchedError::NiceOutOfRange(nice) => write!(f, "nice value {nice} is outside -20..=19"),
            SchedError::NoOnlineCpuInAffinity(mask) => {
                write!(f, "affinity mask [{mask}] contains no online CPU")
            }
            SchedError::CpuNotAllowed { task, cpu } => {
                write!(f, "task {task} is not allowed to run on CPU {cpu}")
            }
            SchedError::IllegalTransition {
                task,
                from,
                operation,
            } => write!(f, "task {task} is {from}: cannot {operation}"),
            SchedError::NoCurrentTask(cpu) => write!(f, "CPU {cpu} has no current task"),
            SchedError::CpuBusy(cpu) => write!(f, "CPU {cpu} already has a current task"),
        }
    }
}
