//! Property tests: random operation sequences never lose or duplicate a task, the highest
//! real-time priority always runs first, the tickless preemption deadline is exact, and fair
//! shares follow weights for any mix of nice values.

mod common;

use std::collections::BTreeSet;

use common::*;
use lull_sched::{CpuSet, SchedClass, SchedConfig, SchedError, Scheduler, TaskId, TaskState};
use proptest::prelude::*;

const CPUS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Spawn {
        class: SchedClass,
        mask: u64,
        caller: usize,
    },
    Wake {
        task: usize,
        caller: usize,
    },
    /// The current task of `cpu` prepares to sleep and calls `schedule()`.
    Sleep {
        cpu: usize,
    },
    /// The current task of `cpu` prepares to sleep but has not called `schedule()` yet.
    PrepareOnly {
        cpu: usize,
    },
    FinishWait {
        task: usize,
    },
    Schedule {
        cpu: usize,
    },
    Preempt {
        cpu: usize,
    },
    Tick {
        cpu: usize,
    },
    Yield {
        cpu: usize,
    },
    YieldTo {
        cpu: usize,
        task: usize,
    },
    IdleBalance {
        cpu: usize,
    },
    SetAffinity {
        task: usize,
        mask: u64,
        caller: usize,
    },
    SetClass {
        task: usize,
        class: SchedClass,
        caller: usize,
    },
    Dequeue {
        task: usize,
    },
    Exit {
        cpu: usize,
    },
    Reap {
        task: usize,
    },
    Advance {
        ns: u64,
    },
    Online {
        cpu: usize,
    },
}

fn class_strategy() -> impl Strategy<Value = SchedClass> {
    prop_oneof![
        3 => (-20i8..=19).prop_map(fair),
        1 => (1u8..=99).prop_map(rt),
        // Few distinct priorities, so FIFO order among equals is exercised.
        1 => (1u8..=3).prop_map(rt),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let cpu = 0..CPUS;
    let task = 0usize..64;
    let mask = 1u64..(1 << CPUS);
    prop_oneof![
        4 => (class_strategy(), mask.clone(), cpu.clone())
            .prop_map(|(class, mask, caller)| Op::Spawn { class, mask, caller }),
        4 => (task.clone(), cpu.clone()).prop_map(|(task, caller)| Op::Wake { task, caller }),
        3 => cpu.clone().prop_map(|cpu| Op::Sleep { cpu }),
        1 => cpu.clone().prop_map(|cpu| Op::PrepareOnly { cpu }),
        1 => task.clone().prop_map(|task| Op::FinishWait { task }),
        4 => cpu.clone().prop_map(|cpu| Op::Schedule { cpu }),
        2 => cpu.clone().prop_map(|cpu| Op::Preempt { cpu }),
        4 => cpu.clone().prop_map(|cpu| Op::Tick { cpu }),
        1 => cpu.clone().prop_map(|cpu| Op::Yield { cpu }),
        1 => (cpu.clone(), task.clone()).prop_map(|(cpu, task)| Op::YieldTo { cpu, task }),
        2 => cpu.clone().prop_map(|cpu| Op::IdleBalance { cpu }),
        1 => (task.clone(), mask, cpu.clone())
            .prop_map(|(task, mask, caller)| Op::SetAffinity { task, mask, caller }),
        1 => (task.clone(), class_strategy(), cpu.clone())
            .prop_map(|(task, class, caller)| Op::SetClass { task, class, caller }),
        1 => task.clone().prop_map(|task| Op::Dequeue { task }),
        1 => cpu.clone().prop_map(|cpu| Op::Exit { cpu }),
        1 => task.prop_map(|task| Op::Reap { task }),
        4 => (0u64..5 * MS).prop_map(|ns| Op::Advance { ns }),
        1 => cpu.prop_map(|cpu| Op::Online { cpu }),
    ]
}

/// The task `index` names among those created so far (wrapping), if any.
fn pick_task(created: &[TaskId], index: usize) -> Option<TaskId> {
    if created.is_empty() {
        None
    } else {
        Some(created[index % created.len()])
    }
}

fn rt_priority(sched: &Scheduler, task: TaskId) -> Option<u8> {
    sched
        .task_info(task)
        .and_then(|info| info.class.rt_priority())
        .map(|priority| priority.get())
}

/// After a switch on `cpu` chose `next`: nothing waiting there outranks it.
fn assert_highest_first(sched: &Scheduler, cpu: usize, next: Option<TaskId>) {
    let waiting = sched.run_order(cpu);
    let Some(next) = next else {
        assert!(
            waiting.is_empty(),
            "CPU {cpu} idles with {waiting:?} waiting"
        );
        return;
    };
    let best_waiting = waiting
        .iter()
        .filter_map(|&task| rt_priority(sched, task))
        .max();
    match (rt_priority(sched, next), best_waiting) {
        (Some(running), Some(waiting)) => {
            assert!(running >= waiting, "RT {running} ran before RT {waiting}")
        }
        (None, Some(waiting)) => panic!("fair task ran before RT {waiting} on CPU {cpu}"),
        _ => {}
    }
}

/// At any moment: a CPU whose current task is outranked by a waiting real-time task (or that
/// idles with work queued) has been told to reschedule.
fn assert_no_missed_preemption(sched: &Scheduler) {
    for cpu in sched.online_cpus().iter() {
        let best_waiting = sched
            .run_order(cpu)
            .iter()
            .filter_map(|&task| rt_priority(sched, task))
            .max();
        let outranked = match sched.current(cpu) {
            None => !sched.run_order(cpu).is_empty(),
            Some(current) => match (rt_priority(sched, current), best_waiting) {
                (Some(running), Some(waiting)) => waiting > running,
                (None, Some(_)) => true,
                _ => false,
            },
        };
        if outranked {
            assert!(sched.need_resched(cpu), "CPU {cpu} missed a preemption");
        }
    }
}

/// The deadline a tickless CPU would program is exact: the tick says "reschedule" at the
/// deadline and not one nanosecond before; `None` means it never would.
fn assert_deadline_exact(sched: &Scheduler, now: u64) {
    for cpu in sched.online_cpus().iter() {
        match sched.next_preemption_deadline(cpu) {
            Some(deadline) if deadline > now => {
                let mut before = sched.clone();
                assert!(
                    !before.tick(cpu, deadline - 1).unwrap(),
                    "CPU {cpu} early at {}",
                    deadline - 1
                );
                let mut at = sched.clone();
                assert!(
                    at.tick(cpu, deadline).unwrap(),
                    "CPU {cpu} not due at {deadline}"
                );
            }
            Some(_) => {
                let mut at = sched.clone();
                assert!(
                    at.tick(cpu, now).unwrap(),
                    "CPU {cpu} overdue but tick says no"
                );
            }
            None => {
                let mut later = sched.clone();
                assert!(
                    !later.tick(cpu, now + 1_000_000 * MS).unwrap(),
                    "CPU {cpu} has no deadline"
                );
            }
        }
    }
}

/// What the model says an operation must answer, computed from the state before it: `Ok`, or
/// the exact refusal (for [`SchedError::IllegalTransition`], the task and its state; the
/// operation's wording is not part of the contract).
type Expected = Result<(), SchedError>;

/// Asserts that `result` is what the model expected of `op`.
fn check<T: std::fmt::Debug>(op: &Op, result: &Result<T, SchedError>, expected: Expected) {
    let same = match (result, &expected) {
        (Ok(_), Ok(())) => true,
        (
            Err(SchedError::IllegalTransition { task, from, .. }),
            Err(SchedError::IllegalTransition {
                task: want_task,
                from: want_from,
                ..
            }),
        ) => task == want_task && from == want_from,
        (Err(got), Err(want)) => got == want,
        _ => false,
    };
    assert!(
        same,
        "{op:?}: got {result:?}, the model expected {expected:?}"
    );
}

/// The refusal of an operation on `task` that is legal only in the states `allowed`.
fn transition(sched: &Scheduler, task: TaskId, allowed: &[TaskState]) -> Expected {
    let Some(info) = sched.task_info(task) else {
        return Err(SchedError::NoSuchTask(task));
    };
    if allowed.contains(&info.state) {
        Ok(())
    } else {
        Err(SchedError::IllegalTransition {
            task,
            from: info.state,
            operation: "",
        })
    }
}

fn cpu_online(sched: &Scheduler, cpu: usize) -> Expected {
    if sched.online_cpus().contains(cpu) {
        Ok(())
    } else {
        Err(SchedError::CpuOffline(cpu))
    }
}

fn affinity_reachable(sched: &Scheduler, mask: u64) -> Expected {
    let affinity = CpuSet::from_bits(mask);
    if affinity.intersection(sched.online_cpus()).is_empty() {
        Err(SchedError::NoOnlineCpuInAffinity(affinity))
    } else {
        Ok(())
    }
}

/// The current task of `cpu`, which must be `Running`, for yields.
fn running_current(sched: &Scheduler, cpu: usize) -> Expected {
    let current = sched.current(cpu).ok_or(SchedError::NoCurrentTask(cpu))?;
    transition(sched, current, &[TaskState::Running])
}

const ALIVE: &[TaskState] = &[
    TaskState::Running,
    TaskState::Runnable,
    TaskState::PreparingToSleep,
    TaskState::Sleeping,
];
const ON_CPU: &[TaskState] = &[TaskState::Running, TaskState::PreparingToSleep];

fn apply(
    sched: &mut Scheduler,
    created: &mut Vec<TaskId>,
    reaped: &mut BTreeSet<TaskId>,
    now: &mut u64,
    op: &Op,
) {
    // Every operation either works or returns the typed error the model predicts from the
    // state before it; none may panic, and none may fail where the model says it works.
    match *op {
        Op::Spawn {
            class,
            mask,
            caller,
        } => {
            let expected = cpu_online(sched, caller).and(affinity_reachable(sched, mask));
            let result = sched.spawn(class, CpuSet::from_bits(mask), caller, *now);
            check(op, &result, expected);
            if let Ok((task, _)) = result {
                created.push(task);
            }
        }
        Op::Wake { task, caller } => {
            if let Some(task) = pick_task(created, task) {
                let expected = cpu_online(sched, caller).and(transition(sched, task, ALIVE));
                let result = sched.wake_up(task, caller, *now);
                check(op, &result, expected);
            }
        }
        Op::Sleep { cpu } => {
            if let Some(current) = sched.current(cpu) {
                let expected = transition(sched, current, &[TaskState::Running]);
                let result = sched.prepare_to_sleep(current);
                check(op, &result, expected);
                if result.is_ok() {
                    let pick = sched.pick_next(cpu, *now);
                    check(op, &pick, Ok(()));
                    if let Ok(pick) = pick {
                        assert_highest_first(sched, cpu, pick.next);
                        assert_ne!(sched.task_info(current).unwrap().state, TaskState::Runnable);
                    }
                }
            }
        }
        Op::PrepareOnly { cpu } => {
            if let Some(current) = sched.current(cpu) {
                let expected = transition(sched, current, &[TaskState::Running]);
                check(op, &sched.prepare_to_sleep(current), expected);
            }
        }
        Op::FinishWait { task } => {
            if let Some(task) = pick_task(created, task) {
                let expected = transition(sched, task, ON_CPU);
                check(op, &sched.finish_wait(task), expected);
            }
        }
        Op::Schedule { cpu } => {
            let expected = cpu_online(sched, cpu);
            let result = sched.pick_next(cpu, *now);
            check(op, &result, expected);
            if let Ok(pick) = result {
                assert_highest_first(sched, cpu, pick.next);
            }
        }
        Op::Preempt { cpu } => {
            let expected = cpu_online(sched, cpu);
            let result = sched.preempt(cpu, *now);
            check(op, &result, expected);
            if let Ok(pick) = result {
                assert_highest_first(sched, cpu, pick.next);
                if let Some(previous) = pick.previous {
                    let state = sched.task_info(previous).map(|info| info.state);
                    assert_ne!(
                        state,
                        Some(TaskState::Sleeping),
                        "preemption put a task to sleep"
                    );
                }
            }
        }
        Op::Tick { cpu } => {
            let expected = cpu_online(sched, cpu);
            check(op, &sched.tick(cpu, *now), expected);
        }
        Op::Yield { cpu } => {
            let expected = cpu_online(sched, cpu).and_then(|()| running_current(sched, cpu));
            check(op, &sched.yield_now(cpu, *now), expected);
        }
        Op::YieldTo { cpu, task } => {
            if let Some(task) = pick_task(created, task) {
                // A target that cannot take the slice is answered `Ok(NotYielded(..))`.
                let expected = cpu_online(sched, cpu)
                    .and_then(|()| {
                        sched
                            .task_info(task)
                            .map(drop)
                            .ok_or(SchedError::NoSuchTask(task))
                    })
                    .and_then(|()| running_current(sched, cpu));
                check(op, &sched.yield_to(cpu, task, *now), expected);
            }
        }
        Op::IdleBalance { cpu } => {
            let expected = cpu_online(sched, cpu);
            check(op, &sched.idle_balance(cpu, *now), expected);
        }
        Op::SetAffinity { task, mask, caller } => {
            if let Some(task) = pick_task(created, task) {
                let expected = cpu_online(sched, caller)
                    .and(affinity_reachable(sched, mask))
                    .and(transition(sched, task, ALIVE));
                let result = sched.set_affinity(task, CpuSet::from_bits(mask), caller, *now);
                check(op, &result, expected);
            }
        }
        Op::SetClass {
            task,
            class,
            caller,
        } => {
            if let Some(task) = pick_task(created, task) {
                let expected = cpu_online(sched, caller).and(transition(sched, task, ALIVE));
                check(op, &sched.set_class(task, class, caller, *now), expected);
            }
        }
        Op::Dequeue { task } => {
            if let Some(task) = pick_task(created, task) {
                let expected = transition(sched, task, &[TaskState::Runnable]);
                check(op, &sched.dequeue(task), expected);
            }
        }
        Op::Exit { cpu } => {
            if let Some(current) = sched.current(cpu) {
                let expected = transition(sched, current, ON_CPU);
                check(op, &sched.exit(current), expected);
            }
        }
        Op::Reap { task } => {
            if let Some(task) = pick_task(created, task) {
                // Only a dead task that has left its CPU can be reaped.
                let expected = match sched.task_info(task) {
                    Some(info) if sched.current(info.cpu) == Some(task) => {
                        Err(SchedError::IllegalTransition {
                            task,
                            from: info.state,
                            operation: "",
                        })
                    }
                    _ => transition(sched, task, &[TaskState::Dead]),
                };
                let result = sched.reap(task);
                check(op, &result, expected);
                if result.is_ok() {
                    reaped.insert(task);
                }
            }
        }
        Op::Advance { ns } => *now += ns,
        Op::Online { cpu } => {
            // Every CPU of the strategy exists; bringing one online twice is a no-op.
            check(op, &sched.set_cpu_online(cpu, *now), Ok(()));
        }
    }
}

fn four_cpus_three_online() -> Scheduler {
    let mut sched = Scheduler::new(CPUS, SchedConfig::default()).unwrap();
    sched.set_cpu_online(1, 0).unwrap();
    sched.set_cpu_online(2, 0).unwrap();
    sched
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random sequences of every operation never lose or duplicate a task, never break a
    /// queue's bookkeeping, run the highest real-time priority first and never miss a
    /// preemption.
    #[test]
    fn random_operations_keep_every_task_in_exactly_one_place(
        ops in proptest::collection::vec(op_strategy(), 1..200)
    ) {
        let mut sched = four_cpus_three_online();
        let mut created = Vec::new();
        let mut reaped = BTreeSet::new();
        let mut now = 0;
        for op in &ops {
            apply(&mut sched, &mut created, &mut reaped, &mut now, op);
            if let Err(error) = sched.check_consistency() {
                panic!("after {op:?}: {error}");
            }
            let alive: BTreeSet<TaskId> = sched.tasks().map(|info| info.id).collect();
            let expected: BTreeSet<TaskId> =
                created.iter().copied().filter(|task| !reaped.contains(task)).collect();
            prop_assert_eq!(alive, expected);
            assert_no_missed_preemption(&sched);
        }
    }

    /// The preemption deadline handed to a tickless CPU's timer is exact in every state random
    /// operations reach.
    #[test]
    fn the_preemption_deadline_is_exact(
        ops in proptest::collection::vec(op_strategy(), 1..80)
    ) {
        let mut sched = four_cpus_three_online();
        let mut created = Vec::new();
        let mut reaped = BTreeSet::new();
        let mut now = 0;
        for op in &ops {
            apply(&mut sched, &mut created, &mut reaped, &mut now, op);
            assert_deadline_exact(&sched, now);
        }
    }

    /// Any mix of nice values on one CPU: every task's CPU time is its weight's share, to
    /// within 0.5% of the run (about one scheduling period's worth of rounding).
    #[test]
    fn fair_shares_follow_weights_for_any_nice_mix(
        nices in proptest::collection::vec(-20i8..=19, 2..6)
    ) {
        let mut sched = scheduler(1);
        let tasks: Vec<_> = nices.iter().map(|&nice| spawn_on(&mut sched, fair(nice), 0, 0)).collect();
        let total = 3_000 * MS;
        run_cpu(&mut sched, 0, 0, total);
        let weights: Vec<u64> = nices
            .iter()
            .map(|&nice| u64::from(fair(nice).fair_weight().unwrap()))
            .collect();
        let weight_sum: u64 = weights.iter().sum();
        let mut charged = 0;
        for (task, weight) in tasks.iter().zip(&weights) {
            let expected = u128::from(total) * u128::from(*weight) / u128::from(weight_sum);
            let got = u128::from(cpu_time(&sched, *task));
            charged += got;
            prop_assert!(got.abs_diff(expected) <= u128::from(total / 200),
                "weight {weight}: got {got}, expected {expected}");
        }
        prop_assert_eq!(charged, u128::from(total));
    }

    /// A wake-up storm: tasks on four CPUs go to sleep while wakers fire at random moments,
    /// including between `prepare_to_sleep` and `schedule()`. A task woken after it announced
    /// its sleep never ends up asleep, and a woken sleeper is always runnable again.
    #[test]
    fn a_wake_up_storm_loses_no_wake_up(
        events in proptest::collection::vec((0u8..4, 0usize..12, 0usize..CPUS), 1..400)
    ) {
        let mut sched = scheduler(CPUS);
        let tasks: Vec<TaskId> = (0..12)
            .map(|i| sched.spawn(fair(0), CpuSet::ALL, i % CPUS, 0).unwrap().0)
            .collect();
        for cpu in 0..CPUS {
            let _ = sched.pick_next(cpu, 0).unwrap();
        }
        // Per task: a wake-up arrived after its latest prepare_to_sleep.
        let mut woken_since_prepare = [false; 12];
        let mut now = 0;
        for (kind, task_index, cpu) in events {
            now += 10_000;
            let task = tasks[task_index];
            match kind {
                0 => {
                    if let Some(current) = sched.current(cpu) {
                        if sched.prepare_to_sleep(current).is_ok() {
                            let index = tasks.iter().position(|&t| t == current).unwrap();
                            woken_since_prepare[index] = false;
                        }
                    }
                }
                1 => {
                    let before = sched.task_info(task).unwrap().state;
                    sched.wake_up(task, cpu, now).unwrap();
                    let after = sched.task_info(task).unwrap().state;
                    prop_assert!(!matches!(after, TaskState::Sleeping | TaskState::PreparingToSleep),
                        "woken task is {after:?} (was {before:?})");
                    woken_since_prepare[task_index] = true;
                }
                _ => {
                    let previous = sched.current(cpu);
                    let _ = sched.pick_next(cpu, now).unwrap();
                    if let Some(previous) = previous {
                        let index = tasks.iter().position(|&t| t == previous).unwrap();
                        let state = sched.task_info(previous).unwrap().state;
                        if woken_since_prepare[index] {
                            prop_assert_ne!(state, TaskState::Sleeping, "lost wake-up");
                        }
                    }
                }
            }
            prop_assert!(sched.check_consistency().is_ok());
        }
    }

    /// Real-time tasks of random priorities released at once on one CPU run in priority order,
    /// FIFO among equals.
    #[test]
    fn real_time_tasks_run_by_priority_then_arrival(
        priorities in proptest::collection::vec(1u8..=5, 1..20)
    ) {
        let mut sched = scheduler(1);
        let tasks: Vec<_> = priorities.iter().map(|&p| spawn_on(&mut sched, rt(p), 0, 0)).collect();
        let mut expected: Vec<(u8, usize)> =
            priorities.iter().enumerate().map(|(arrival, &p)| (p, arrival)).collect();
        // Highest priority first, earliest arrival first among equals.
        expected.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut ran = Vec::new();
        let mut now = 0;
        let _ = sched.pick_next(0, now).unwrap();
        while let Some(current) = sched.current(0) {
            ran.push(current);
            now += MS;
            let _ = sleep_current(&mut sched, 0, now);
        }
        let expected: Vec<TaskId> = expected.iter().map(|&(_, arrival)| tasks[arrival]).collect();
        prop_assert_eq!(ran, expected);
    }
}
