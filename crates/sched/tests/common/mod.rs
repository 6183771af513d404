//! Shared helpers for the scheduler policy tests: a fake clock driving CPUs the way a tickless
//! kernel would.

#![allow(dead_code)] // Each test binary uses a different subset of the helpers.

use lull_sched::{CpuId, CpuSet, Nice, RtPriority, SchedClass, Scheduler, TaskId};

pub const MS: u64 = 1_000_000;

pub fn fair(nice: i8) -> SchedClass {
    SchedClass::Fair(Nice::new(nice).expect("nice in range"))
}

pub fn rt(priority: u8) -> SchedClass {
    SchedClass::RealTime(RtPriority::new(priority).expect("priority in range"))
}

/// A scheduler with `cpus` CPUs, all online at time 0.
pub fn scheduler(cpus: usize) -> Scheduler {
    let mut sched = Scheduler::new(cpus, Default::default()).expect("valid scheduler");
    for cpu in 1..cpus {
        sched.set_cpu_online(cpu, 0).expect("cpu exists");
    }
    sched
}

/// Spawns a task pinned to `cpu`.
pub fn spawn_on(sched: &mut Scheduler, class: SchedClass, cpu: CpuId, now: u64) -> TaskId {
    sched
        .spawn(class, CpuSet::single(cpu), cpu, now)
        .expect("spawn")
        .0
}

/// Spawns a fair task queued on `cpu` that may run anywhere (spawned pinned, then unpinned).
pub fn spawn_movable_on(sched: &mut Scheduler, cpu: CpuId) -> TaskId {
    let task = spawn_on(sched, fair(0), cpu, 0);
    sched
        .set_affinity(task, CpuSet::ALL, cpu, 0)
        .expect("affinity");
    task
}

/// Runs `cpu` from `from` to `until` like a tickless kernel: the timer fires only at the
/// scheduler's preemption deadline, and the CPU switches whenever the tick says so.
/// Returns the time reached (`until`).
pub fn run_cpu(sched: &mut Scheduler, cpu: CpuId, from: u64, until: u64) -> u64 {
    let mut now = from;
    if sched.need_resched(cpu) || sched.current(cpu).is_none() {
        let _ = sched.pick_next(cpu, now).expect("pick");
    }
    while now < until {
        now = sched
            .next_preemption_deadline(cpu)
            .map_or(until, |deadline| deadline.max(now + 1))
            .min(until);
        if sched.tick(cpu, now).expect("tick") {
            let _ = sched.pick_next(cpu, now).expect("pick");
        }
    }
    sched.account(cpu, now).expect("account");
    now
}

pub fn cpu_time(sched: &Scheduler, task: TaskId) -> u64 {
    sched.task_info(task).expect("task exists").cpu_time_ns
}

/// The current task of `cpu` goes to sleep through its own `schedule()`.
pub fn sleep_current(sched: &mut Scheduler, cpu: CpuId, now: u64) -> Option<TaskId> {
    let current = sched.current(cpu)?;
    sched.prepare_to_sleep(current).expect("prepare");
    let _ = sched.pick_next(cpu, now).expect("pick");
    Some(current)
}
