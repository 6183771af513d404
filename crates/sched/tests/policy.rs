//! Scheduler policy against a fake clock: fair ordering and weights, real-time preemption and
//! FIFO order, wake-up placement, idle balancing, directed yield, CPU time, state machine.

mod common;

use common::*;
use lull_sched::{
    CpuSet, NotYieldedReason, SchedConfig, SchedError, Scheduler, TaskState, Wakeup, YieldTo,
};

// ----- fair class ---------------------------------------------------------------------------------

#[test]
fn fair_cpu_shares_follow_nice_weights() {
    let mut sched = scheduler(1);
    let heavy = spawn_on(&mut sched, fair(0), 0, 0); // weight 1024
    let light = spawn_on(&mut sched, fair(5), 0, 0); // weight 335
    let end = run_cpu(&mut sched, 0, 0, 1_000 * MS);
    assert_eq!(end, 1_000 * MS);
    let (heavy_ns, light_ns) = (cpu_time(&sched, heavy), cpu_time(&sched, light));
    assert_eq!(
        heavy_ns + light_ns,
        1_000 * MS,
        "all time is charged to someone"
    );
    let expected_heavy = 1_000 * MS * 1024 / (1024 + 335);
    let error = heavy_ns.abs_diff(expected_heavy);
    assert!(
        error < 10 * MS,
        "heavy got {heavy_ns}, expected ~{expected_heavy}"
    );
    sched.check_consistency().unwrap();
}

#[test]
fn equal_fair_tasks_take_turns_in_virtual_runtime_order_with_equal_slices() {
    let mut sched = scheduler(1);
    let tasks = [
        spawn_on(&mut sched, fair(0), 0, 0),
        spawn_on(&mut sched, fair(0), 0, 0),
        spawn_on(&mut sched, fair(0), 0, 0),
    ];
    let mut now = 0;
    let mut order = Vec::new();
    order.push(sched.pick_next(0, now).unwrap().next.unwrap());
    for _ in 0..5 {
        // Three nice-0 tasks share the 6 ms latency: 2 ms each.
        let deadline = sched.next_preemption_deadline(0).unwrap();
        assert_eq!(deadline, now + 2 * MS);
        let mut early = sched.clone();
        assert!(
            !early.tick(0, deadline - 1).unwrap(),
            "no switch before the slice ends"
        );
        assert!(
            sched.tick(0, deadline).unwrap(),
            "switch when the slice ends"
        );
        now = deadline;
        order.push(sched.pick_next(0, now).unwrap().next.unwrap());
    }
    assert_eq!(
        order,
        [tasks[0], tasks[1], tasks[2], tasks[0], tasks[1], tasks[2]]
    );
    // Five turns of 2 ms so far; the sixth has just begun.
    let times: Vec<_> = tasks.iter().map(|&task| cpu_time(&sched, task)).collect();
    assert_eq!(times, [4 * MS, 4 * MS, 2 * MS]);
}

#[test]
fn a_lone_task_is_never_preempted_so_its_cpu_need_not_tick() {
    let mut sched = scheduler(1);
    let only = spawn_on(&mut sched, fair(0), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(only));
    assert_eq!(sched.next_preemption_deadline(0), None);
    assert!(!sched.tick(0, 10_000 * MS).unwrap());
    assert_eq!(cpu_time(&sched, only), 10_000 * MS);
}

#[test]
fn min_granularity_protects_a_fresh_turn_from_the_virtual_runtime_rule() {
    // A large wake-up granularity so the woken task does not preempt at once, and a sleeper
    // credit larger than the slice so the virtual-runtime rule alone would preempt at once.
    let config = SchedConfig {
        wakeup_granularity_ns: 10 * MS,
        sleeper_credit_ns: 4 * MS,
        ..SchedConfig::default()
    };
    let mut sched = Scheduler::new(1, config).unwrap();
    let runner = spawn_on(&mut sched, fair(0), 0, 0);
    let sleeper = spawn_on(&mut sched, fair(0), 0, 0);
    sched.dequeue(sleeper).unwrap();
    run_cpu(&mut sched, 0, 0, 100 * MS);
    // A fresh turn for the runner, then the sleeper wakes 4 ms behind it.
    assert_eq!(sched.pick_next(0, 100 * MS).unwrap().next, Some(runner));
    let Wakeup::Placed(placement) = sched.wake_up(sleeper, 0, 100 * MS).unwrap() else {
        panic!("sleeper should be queued");
    };
    assert!(!placement.preempt);
    let lead =
        sched.task_info(runner).unwrap().vruntime - sched.task_info(sleeper).unwrap().vruntime;
    assert_eq!(lead, 4 * MS as u128, "more than the 3 ms slice");

    assert_eq!(sched.next_preemption_deadline(0), Some(100 * MS + 750_000));
    let mut early = sched.clone();
    assert!(!early.tick(0, 100 * MS + 749_999).unwrap());
    assert!(sched.tick(0, 100 * MS + 750_000).unwrap());
    assert_eq!(
        sched.pick_next(0, 100 * MS + 750_000).unwrap().next,
        Some(sleeper)
    );
}

#[test]
fn a_new_task_starts_at_the_queue_minimum() {
    let mut sched = scheduler(1);
    let old = spawn_on(&mut sched, fair(0), 0, 0);
    run_cpu(&mut sched, 0, 0, 50 * MS);
    let min_vruntime = sched.cpu_info(0).unwrap().min_vruntime;
    assert_eq!(min_vruntime, 50 * MS as u128);
    let new = spawn_on(&mut sched, fair(0), 0, 50 * MS);
    assert_eq!(sched.task_info(new).unwrap().vruntime, min_vruntime);
    // It did not jump the queue by 50 ms: the two now split the CPU evenly.
    run_cpu(&mut sched, 0, 50 * MS, 150 * MS);
    let old_share = cpu_time(&sched, old) - 50 * MS;
    assert!(old_share.abs_diff(50 * MS) <= 3 * MS, "old ran {old_share}");
}

#[test]
fn a_long_sleeper_wakes_with_bounded_credit_and_preempts() {
    let mut sched = scheduler(1);
    let runner = spawn_on(&mut sched, fair(0), 0, 0);
    let sleeper = spawn_on(&mut sched, fair(0), 0, 0);
    sched.dequeue(sleeper).unwrap();
    assert_eq!(sched.task_info(sleeper).unwrap().state, TaskState::Sleeping);
    run_cpu(&mut sched, 0, 0, 100 * MS);
    let Wakeup::Placed(placement) = sched.wake_up(sleeper, 0, 100 * MS).unwrap() else {
        panic!("sleeper should be queued");
    };
    // Placed 3 ms (half the latency) below the minimum, not 100 ms below.
    assert_eq!(
        sched.task_info(sleeper).unwrap().vruntime,
        sched.task_info(runner).unwrap().vruntime - 3 * MS as u128
    );
    assert_eq!(placement.cpu, 0);
    assert!(
        placement.preempt,
        "3 ms behind beats the 1 ms wake-up granularity"
    );
    assert!(!placement.send_resched_ipi, "the waker is on that CPU");
    assert!(sched.need_resched(0));
    assert_eq!(sched.pick_next(0, 100 * MS).unwrap().next, Some(sleeper));
}

#[test]
fn a_short_sleeper_keeps_its_own_vruntime_and_preempts_only_past_the_granularity() {
    let mut sched = scheduler(1);
    let runner = spawn_on(&mut sched, fair(0), 0, 0);
    let sleeper = spawn_on(&mut sched, fair(0), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(runner));
    assert!(sched.tick(0, 3 * MS).unwrap());
    assert_eq!(sched.pick_next(0, 3 * MS).unwrap().next, Some(sleeper));
    sched.account(0, 6 * MS).unwrap();
    assert_eq!(sleep_current(&mut sched, 0, 6 * MS), Some(sleeper));
    assert_eq!(sched.current(0), Some(runner));
    let sleeper_vruntime = sched.task_info(sleeper).unwrap().vruntime;
    assert_eq!(sleeper_vruntime, 3 * MS as u128);

    // 0.5 ms later the runner is only 0.5 ms ahead: no preemption.
    let mut soon = sched.clone();
    let Wakeup::Placed(placement) = soon.wake_up(sleeper, 0, 6 * MS + MS / 2).unwrap() else {
        panic!("sleeper should be queued");
    };
    assert_eq!(soon.task_info(sleeper).unwrap().vruntime, sleeper_vruntime);
    assert!(!placement.preempt);
    assert!(!soon.need_resched(0));

    // 1.5 ms later it is 1.5 ms ahead: the woken task preempts.
    let Wakeup::Placed(placement) = sched.wake_up(sleeper, 0, 6 * MS + 3 * MS / 2).unwrap() else {
        panic!("sleeper should be queued");
    };
    assert_eq!(sched.task_info(sleeper).unwrap().vruntime, sleeper_vruntime);
    assert!(placement.preempt);
}

// ----- real-time class ----------------------------------------------------------------------------

#[test]
fn a_real_time_task_preempts_a_fair_task_at_once() {
    let mut sched = scheduler(1);
    let fair_task = spawn_on(&mut sched, fair(-20), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(fair_task));
    let (rt_task, placement) = sched.spawn(rt(1), CpuSet::single(0), 0, MS).unwrap();
    assert!(placement.preempt);
    assert_eq!(sched.pick_next(0, MS).unwrap().next, Some(rt_task));
    // FIFO: no slice, the fair task waits however long the real-time task runs.
    assert_eq!(sched.next_preemption_deadline(0), None);
    assert!(!sched.tick(0, 10_000 * MS).unwrap());
    assert_eq!(cpu_time(&sched, fair_task), MS);
}

#[test]
fn higher_real_time_priority_wins_and_lower_waits() {
    let mut sched = scheduler(1);
    let middle = spawn_on(&mut sched, rt(50), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(middle));
    let (low, placement) = sched.spawn(rt(49), CpuSet::single(0), 0, 0).unwrap();
    assert!(!placement.preempt, "a lower priority never preempts");
    assert!(!sched.tick(0, MS).unwrap());
    let (high, placement) = sched.spawn(rt(99), CpuSet::single(0), 0, 0).unwrap();
    assert!(placement.preempt);
    assert_eq!(sched.pick_next(0, 2 * MS).unwrap().next, Some(high));
    assert_eq!(sleep_current(&mut sched, 0, 3 * MS), Some(high));
    assert_eq!(sched.current(0), Some(middle));
    assert_eq!(sleep_current(&mut sched, 0, 4 * MS), Some(middle));
    assert_eq!(sched.current(0), Some(low));
}

#[test]
fn equal_real_time_priorities_run_in_fifo_order_and_a_preempted_task_keeps_its_turn() {
    let mut sched = scheduler(1);
    let first = spawn_on(&mut sched, rt(10), 0, 0);
    let second = spawn_on(&mut sched, rt(10), 0, 0);
    let third = spawn_on(&mut sched, rt(10), 0, 0);
    assert_eq!(sched.run_order(0), [first, second, third]);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(first));

    // Preempted by a higher priority, `first` goes back to the head, not behind `second`.
    let urgent = spawn_on(&mut sched, rt(20), 0, MS);
    assert_eq!(sched.pick_next(0, MS).unwrap().next, Some(urgent));
    assert_eq!(sched.run_order(0), [first, second, third]);
    assert_eq!(sleep_current(&mut sched, 0, 2 * MS), Some(urgent));
    assert_eq!(sched.current(0), Some(first));

    // Yielding sends it behind its equals.
    assert!(sched.yield_now(0, 3 * MS).unwrap());
    assert_eq!(sched.pick_next(0, 3 * MS).unwrap().next, Some(second));
    assert_eq!(sched.run_order(0), [third, first]);
}

#[test]
fn real_time_yield_does_not_let_lower_priorities_run() {
    let mut sched = scheduler(1);
    let high = spawn_on(&mut sched, rt(30), 0, 0);
    let _low = spawn_on(&mut sched, rt(29), 0, 0);
    let _fair = spawn_on(&mut sched, fair(0), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(high));
    assert!(!sched.yield_now(0, MS).unwrap());
    assert!(!sched.need_resched(0));
    assert_eq!(sched.pick_next(0, MS).unwrap().next, Some(high));
}

#[test]
fn fair_yield_goes_behind_every_waiting_fair_task() {
    let mut sched = scheduler(1);
    let a = spawn_on(&mut sched, fair(0), 0, 0);
    let b = spawn_on(&mut sched, fair(0), 0, 0);
    let c = spawn_on(&mut sched, fair(0), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(a));
    assert!(sched.yield_now(0, 100_000).unwrap());
    assert_eq!(sched.pick_next(0, 100_000).unwrap().next, Some(b));
    assert_eq!(sched.run_order(0), [c, a]);
    assert_eq!(sched.task_info(a).unwrap().involuntary_switches, 1);
}

// ----- wake-up placement --------------------------------------------------------------------------

/// Four CPUs; `sleeper` last ran on CPU 2 and sleeps; its affinity is then `affinity`.
fn with_sleeper_from_cpu_2(affinity: CpuSet) -> (Scheduler, lull_sched::TaskId) {
    let mut sched = scheduler(4);
    let sleeper = spawn_on(&mut sched, fair(0), 2, 0);
    assert_eq!(sched.pick_next(2, 0).unwrap().next, Some(sleeper));
    assert_eq!(sleep_current(&mut sched, 2, MS), Some(sleeper));
    assert_eq!(sched.set_affinity(sleeper, affinity, 0, MS).unwrap(), None);
    (sched, sleeper)
}

/// Puts `count` running-or-waiting fair tasks on `cpu`.
fn load_cpu(sched: &mut Scheduler, cpu: usize, count: usize) {
    for _ in 0..count {
        spawn_on(sched, fair(0), cpu, MS);
    }
    if count > 0 && sched.current(cpu).is_none() {
        let _ = sched.pick_next(cpu, MS).unwrap();
    }
}

#[test]
fn wake_up_prefers_the_previous_cpu_when_it_is_idle() {
    let (mut sched, sleeper) = with_sleeper_from_cpu_2(CpuSet::ALL);
    let Wakeup::Placed(placement) = sched.wake_up(sleeper, 0, 2 * MS).unwrap() else {
        panic!("should be placed");
    };
    assert_eq!(placement.cpu, 2);
    assert!(placement.preempt, "an idle CPU must pick it up");
    assert!(
        placement.send_resched_ipi,
        "CPU 2 is halted and remote: kick it"
    );
}

#[test]
fn wake_up_takes_an_idle_allowed_cpu_when_the_previous_one_is_busy() {
    let (mut sched, sleeper) = with_sleeper_from_cpu_2(CpuSet::from_bits(0b1110));
    load_cpu(&mut sched, 2, 1);
    load_cpu(&mut sched, 1, 1);
    // CPU 0 is idle but not allowed; CPU 3 is idle and allowed.
    let Wakeup::Placed(placement) = sched.wake_up(sleeper, 0, 2 * MS).unwrap() else {
        panic!("should be placed");
    };
    assert_eq!(placement.cpu, 3);
    assert!(placement.send_resched_ipi);
    assert_eq!(sched.task_info(sleeper).unwrap().migrations, 1);
}

#[test]
fn wake_up_takes_the_least_loaded_allowed_cpu_when_none_is_idle() {
    let (mut sched, sleeper) = with_sleeper_from_cpu_2(CpuSet::from_bits(0b1110));
    load_cpu(&mut sched, 0, 0);
    load_cpu(&mut sched, 1, 3);
    load_cpu(&mut sched, 2, 2);
    load_cpu(&mut sched, 3, 1);
    let Wakeup::Placed(placement) = sched.wake_up(sleeper, 0, 2 * MS).unwrap() else {
        panic!("should be placed");
    };
    assert_eq!(placement.cpu, 3, "CPU 0 is idle but not allowed");
    // The woken task has a smaller vruntime than CPU 3's runner only by the credit: it
    // preempts, and CPU 3 is remote, so it gets an IPI.
    assert_eq!(placement.send_resched_ipi, placement.preempt);
}

#[test]
fn wake_up_prefers_the_previous_cpu_on_a_load_tie() {
    let (mut sched, sleeper) = with_sleeper_from_cpu_2(CpuSet::ALL);
    for cpu in 0..4 {
        load_cpu(&mut sched, cpu, 2);
    }
    let Wakeup::Placed(placement) = sched.wake_up(sleeper, 0, 2 * MS).unwrap() else {
        panic!("should be placed");
    };
    assert_eq!(placement.cpu, 2);
}

#[test]
fn a_second_wake_up_to_the_same_pending_cpu_sends_no_second_ipi() {
    let mut sched = scheduler(2);
    let (_, first) = sched.spawn(fair(0), CpuSet::single(1), 0, 0).unwrap();
    assert!(first.send_resched_ipi);
    let (_, second) = sched.spawn(fair(0), CpuSet::single(1), 0, 0).unwrap();
    assert_eq!(second.cpu, 1);
    assert!(second.preempt);
    assert!(
        !second.send_resched_ipi,
        "CPU 1 already has an IPI on its way"
    );
    let _ = sched.pick_next(1, 0).unwrap();
    let (_, third) = sched.spawn(rt(5), CpuSet::single(1), 0, 0).unwrap();
    assert!(
        third.send_resched_ipi,
        "after it rescheduled, a new kick is needed"
    );
}

#[test]
fn new_tasks_spread_over_idle_cpus() {
    let mut sched = scheduler(4);
    let boot = sched.adopt_current(0, fair(0), CpuSet::ALL, 0).unwrap();
    assert_eq!(sched.current(0), Some(boot));
    let cpus: Vec<_> = (0..3)
        .map(|_| sched.spawn(fair(0), CpuSet::ALL, 0, 0).unwrap().1.cpu)
        .collect();
    assert_eq!(cpus, [1, 2, 3]);
}

// ----- sleep and wake-up without lost wake-ups ----------------------------------------------------

#[test]
fn a_wake_up_while_preparing_to_sleep_is_not_lost() {
    let mut sched = scheduler(1);
    let waiter = spawn_on(&mut sched, fair(0), 0, 0);
    let _other = spawn_on(&mut sched, fair(0), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(waiter));
    sched.prepare_to_sleep(waiter).unwrap();
    // The condition becomes true and the waker wakes it before it called schedule().
    assert_eq!(
        sched.wake_up(waiter, 0, 10).unwrap(),
        Wakeup::SleepCancelled
    );
    assert_eq!(sched.task_info(waiter).unwrap().state, TaskState::Running);
    let _ = sched.pick_next(0, 20).unwrap();
    assert_ne!(sched.task_info(waiter).unwrap().state, TaskState::Sleeping);
    assert_eq!(sched.task_info(waiter).unwrap().voluntary_switches, 0);
    sched.check_consistency().unwrap();
}

#[test]
fn preemption_while_preparing_to_sleep_does_not_put_the_task_to_sleep() {
    let mut sched = scheduler(1);
    let waiter = spawn_on(&mut sched, fair(0), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(waiter));
    sched.prepare_to_sleep(waiter).unwrap();
    let urgent = spawn_on(&mut sched, rt(1), 0, 10);
    let pick = sched.preempt(0, 10).unwrap();
    assert_eq!(pick.next, Some(urgent));
    assert_eq!(sched.task_info(waiter).unwrap().state, TaskState::Runnable);
    // Had this been schedule(), it would sleep:
    assert_eq!(sleep_current(&mut sched, 0, 20), Some(urgent));
    assert_eq!(sched.current(0), Some(waiter));
}

#[test]
fn a_task_that_sleeps_is_off_every_queue_until_woken() {
    let mut sched = scheduler(1);
    let task = spawn_on(&mut sched, fair(0), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(task));
    assert_eq!(sleep_current(&mut sched, 0, 5), Some(task));
    assert_eq!(sched.current(0), None);
    assert_eq!(sched.task_info(task).unwrap().state, TaskState::Sleeping);
    assert_eq!(sched.task_info(task).unwrap().voluntary_switches, 1);
    assert!(sched.run_order(0).is_empty());
    assert!(matches!(
        sched.wake_up(task, 0, 10).unwrap(),
        Wakeup::Placed(_)
    ));
    assert_eq!(sched.wake_up(task, 0, 11).unwrap(), Wakeup::AlreadyRunnable);
    assert_eq!(sched.run_order(0), [task]);
}

#[test]
fn illegal_transitions_are_refused_and_change_nothing() {
    let mut sched = scheduler(1);
    let runner = spawn_on(&mut sched, fair(0), 0, 0);
    let waiting = spawn_on(&mut sched, fair(0), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(runner));
    let refused = |result: Result<(), SchedError>| {
        assert!(
            matches!(result, Err(SchedError::IllegalTransition { .. })),
            "{result:?}"
        )
    };
    refused(sched.prepare_to_sleep(waiting));
    refused(sched.exit(waiting));
    refused(sched.finish_wait(waiting));
    refused(sched.dequeue(runner));
    refused(sched.enqueue(waiting, 0, 0, 0).map(|_| ()));
    refused(sched.reap(runner).map(|_| ()));

    sched.exit(runner).unwrap();
    assert!(sched.need_resched(0));
    refused(sched.reap(runner).map(|_| ()));
    refused(sched.wake_up(runner, 0, 1).map(|_| ()));
    refused(sched.set_class(runner, rt(1), 0, 1).map(|_| ()));
    let pick = sched.pick_next(0, 1).unwrap();
    assert_eq!((pick.previous, pick.next), (Some(runner), Some(waiting)));
    let final_figures = sched.reap(runner).unwrap();
    assert_eq!(final_figures.cpu_time_ns, 1);
    assert_eq!(final_figures.state, TaskState::Dead);
    assert_eq!(sched.task_info(runner), None);
    assert_eq!(
        sched.wake_up(runner, 0, 2),
        Err(SchedError::NoSuchTask(runner))
    );
    sched.check_consistency().unwrap();
}

#[test]
fn bad_cpus_and_masks_are_typed_errors() {
    assert_eq!(
        Scheduler::new(0, SchedConfig::default()).err(),
        Some(SchedError::TooManyCpus(0))
    );
    assert!(Scheduler::new(65, SchedConfig::default()).is_err());
    let bad_config = SchedConfig {
        min_granularity_ns: 0,
        ..SchedConfig::default()
    };
    assert!(matches!(
        Scheduler::new(1, bad_config),
        Err(SchedError::InvalidConfig(_))
    ));
    let mut sched = Scheduler::new(2, SchedConfig::default()).unwrap();
    assert_eq!(sched.pick_next(1, 0).err(), Some(SchedError::CpuOffline(1)));
    assert_eq!(sched.tick(7, 0).err(), Some(SchedError::NoSuchCpu(7)));
    assert_eq!(
        sched.spawn(fair(0), CpuSet::single(1), 0, 0).err(),
        Some(SchedError::NoOnlineCpuInAffinity(CpuSet::single(1)))
    );
    let task = spawn_on(&mut sched, fair(0), 0, 0);
    assert!(sched.set_affinity(task, CpuSet::single(1), 0, 0).is_err());
    sched.set_cpu_online(1, 5).unwrap();
    assert!(sched.set_affinity(task, CpuSet::single(1), 0, 5).is_ok());
    assert_eq!(sched.task_info(task).unwrap().cpu, 1);
    sched.check_consistency().unwrap();
}

// ----- balancing and affinity ---------------------------------------------------------------------

#[test]
fn idle_balance_pulls_from_the_busiest_allowed_queue() {
    let config = SchedConfig {
        pull_when_idle: false,
        ..SchedConfig::default()
    };
    let mut sched = Scheduler::new(3, config).unwrap();
    sched.set_cpu_online(1, 0).unwrap();
    sched.set_cpu_online(2, 0).unwrap();
    // CPU 0: three tasks, one pinned. CPU 1: two tasks. CPU 2: idle.
    let pinned = spawn_on(&mut sched, fair(0), 0, 0);
    let movable: Vec<_> = (0..2).map(|_| spawn_movable_on(&mut sched, 0)).collect();
    let _ = sched.pick_next(0, 0).unwrap();
    let on_one: Vec<_> = (0..2).map(|_| spawn_movable_on(&mut sched, 1)).collect();
    let _ = sched.pick_next(1, 0).unwrap();
    assert_eq!(sched.current(0), Some(pinned));

    assert_eq!(sched.pick_next(2, MS).unwrap().next, None, "pulling is off");
    let pulled = sched.idle_balance(2, MS).unwrap().expect("work to pull");
    assert!(movable.contains(&pulled), "from CPU 0, the busiest");
    assert!(!on_one.contains(&pulled));
    let info = sched.task_info(pulled).unwrap();
    assert_eq!(
        (info.cpu, info.state, info.migrations),
        (2, TaskState::Runnable, 1)
    );
    assert!(sched.need_resched(2));
    assert_eq!(sched.pick_next(2, MS).unwrap().next, Some(pulled));

    // Nothing to pull when every other queue has only its running task, or pinned ones.
    let mut idle_cpu_sched = sched.clone();
    let _ = sleep_current(&mut idle_cpu_sched, 2, 2 * MS);
    let pulled_again = idle_cpu_sched.idle_balance(2, 2 * MS).unwrap();
    assert!(
        pulled_again.is_some(),
        "CPU 0 and 1 still have waiting tasks"
    );
    sched.check_consistency().unwrap();
    idle_cpu_sched.check_consistency().unwrap();
}

#[test]
fn idle_balance_respects_affinity_and_leaves_running_tasks_alone() {
    let config = SchedConfig {
        pull_when_idle: false,
        ..SchedConfig::default()
    };
    let mut sched = Scheduler::new(2, config).unwrap();
    sched.set_cpu_online(1, 0).unwrap();
    let first = spawn_on(&mut sched, fair(0), 0, 0);
    let second = spawn_on(&mut sched, fair(0), 0, 0);
    let _ = sched.pick_next(0, 0).unwrap();
    assert_eq!(
        sched.idle_balance(1, MS).unwrap(),
        None,
        "both pinned to CPU 0"
    );
    sched.set_affinity(second, CpuSet::ALL, 0, MS).unwrap();
    sched.set_affinity(first, CpuSet::ALL, 0, MS).unwrap();
    assert_eq!(
        sched.idle_balance(1, MS).unwrap(),
        Some(second),
        "the waiting one only"
    );
    assert_eq!(
        sched.idle_balance(1, MS).unwrap(),
        None,
        "CPU 1 has work now"
    );
    assert_eq!(sched.current(0), Some(first));
}

#[test]
fn an_idle_cpu_pulls_work_by_itself_in_pick_next() {
    let mut sched = scheduler(2);
    let a = spawn_on(&mut sched, fair(0), 0, 0);
    let b = sched.spawn(fair(0), CpuSet::ALL, 0, 0).unwrap().0;
    let _ = sched.pick_next(1, 0).unwrap();
    let _ = sched.pick_next(0, 0).unwrap();
    // b was placed on idle CPU 1; put both on CPU 0 by making b sleep then waking it there.
    assert_eq!(sleep_current(&mut sched, 1, MS), Some(b));
    sched.enqueue(b, 0, 0, MS).unwrap();
    assert_eq!(sched.current(0), Some(a));
    let pick = sched.pick_next(1, 2 * MS).unwrap();
    assert_eq!(pick.next, Some(b));
    assert_eq!(sched.task_info(b).unwrap().cpu, 1);
}

#[test]
fn narrowing_the_affinity_of_a_running_task_pushes_it_away_at_its_next_switch() {
    let mut sched = scheduler(2);
    let task = sched.spawn(fair(0), CpuSet::ALL, 0, 0).unwrap().0;
    let _ = sched.pick_next(0, 0).unwrap();
    assert_eq!(sched.current(0), Some(task));
    let placement = sched
        .set_affinity(task, CpuSet::single(1), 1, MS)
        .unwrap()
        .unwrap();
    assert_eq!(placement.cpu, 0);
    assert!(placement.send_resched_ipi, "the caller is CPU 1");
    assert!(sched.tick(0, 2 * MS).unwrap());
    let pick = sched.pick_next(0, 2 * MS).unwrap();
    assert_eq!(pick.next, None);
    assert_eq!(pick.resched_ipi, Some(1));
    let info = sched.task_info(task).unwrap();
    assert_eq!((info.cpu, info.state), (1, TaskState::Runnable));
    assert_eq!(info.cpu_time_ns, 2 * MS);
    assert_eq!((info.involuntary_switches, info.migrations), (1, 1));
    sched.check_consistency().unwrap();
}

#[test]
fn raising_a_waiting_task_to_real_time_preempts_its_cpu() {
    let mut sched = scheduler(2);
    let runner = spawn_on(&mut sched, fair(0), 1, 0);
    let waiter = spawn_on(&mut sched, fair(0), 1, 0);
    let _ = sched.pick_next(1, 0).unwrap();
    let placement = sched.set_class(waiter, rt(10), 0, MS).unwrap().unwrap();
    assert_eq!(placement.cpu, 1);
    assert!(placement.preempt && placement.send_resched_ipi);
    assert_eq!(sched.pick_next(1, MS).unwrap().next, Some(waiter));
    // And back to fair: it rejoins at the queue minimum, behind the runner's turn.
    sched.set_class(waiter, fair(0), 1, 2 * MS).unwrap();
    assert!(sched.need_resched(1));
    assert_eq!(sched.pick_next(1, 2 * MS).unwrap().next, Some(runner));
    sched.check_consistency().unwrap();
}

// ----- directed yield -----------------------------------------------------------------------------

#[test]
fn yield_to_a_task_on_the_same_cpu_runs_it_next() {
    let mut sched = scheduler(1);
    let yielder = spawn_on(&mut sched, fair(0), 0, 0);
    let bystander = spawn_on(&mut sched, fair(0), 0, 0);
    let target = spawn_on(&mut sched, fair(0), 0, 0);
    assert_eq!(sched.pick_next(0, 0).unwrap().next, Some(yielder));
    assert_eq!(sched.run_order(0), [bystander, target]);
    let before = sched.task_info(yielder).unwrap().vruntime;
    let result = sched.yield_to(0, target, MS).unwrap();
    assert_eq!(
        result,
        YieldTo::Yielded {
            target_cpu: 0,
            send_resched_ipi: false
        }
    );
    // The yielder ran 1 ms of its 2 ms slice and pays for the donated other 1 ms.
    assert_eq!(
        sched.task_info(yielder).unwrap().vruntime,
        before + 2 * MS as u128
    );
    assert!(sched.need_resched(0));
    assert_eq!(
        sched.pick_next(0, MS).unwrap().next,
        Some(target),
        "ahead of the bystander"
    );
    assert!(sched.pick_next(0, 2 * MS).unwrap().next.is_some());
    sched.check_consistency().unwrap();
}

#[test]
fn yield_to_a_task_on_another_cpu_boosts_it_there_and_kicks_that_cpu() {
    let mut sched = scheduler(2);
    let yielder = spawn_on(&mut sched, fair(0), 0, 0);
    let holder = spawn_on(&mut sched, fair(0), 1, 0); // e.g. the vCPU holding a spinlock
    let busy = spawn_on(&mut sched, fair(0), 1, 0);
    let _ = sched.pick_next(0, 0).unwrap();
    let _ = sched.pick_next(1, 0).unwrap();
    assert_eq!(sched.current(1), Some(holder));
    assert!(sched.tick(1, 3 * MS).unwrap());
    assert_eq!(sched.pick_next(1, 3 * MS).unwrap().next, Some(busy));
    let holder_before = sched.task_info(holder).unwrap().vruntime;

    let result = sched.yield_to(0, holder, 3 * MS + MS / 2).unwrap();
    assert_eq!(
        result,
        YieldTo::Yielded {
            target_cpu: 1,
            send_resched_ipi: true
        }
    );
    assert!(sched.task_info(holder).unwrap().vruntime < holder_before);
    assert_eq!(sched.current(0), Some(yielder));
    assert!(sched.need_resched(0), "the yielder's CPU reschedules");
    assert!(sched.need_resched(1));
    assert_eq!(
        sched.pick_next(1, 3 * MS + MS / 2).unwrap().next,
        Some(holder)
    );
    sched.check_consistency().unwrap();
}

#[test]
fn yield_to_refuses_running_sleeping_real_time_and_self_targets() {
    let mut sched = scheduler(2);
    let yielder = spawn_on(&mut sched, fair(0), 0, 0);
    let running_elsewhere = spawn_on(&mut sched, fair(0), 1, 0);
    let sleeper = spawn_on(&mut sched, fair(0), 0, 0);
    sched.dequeue(sleeper).unwrap();
    let real_time = spawn_on(&mut sched, rt(3), 1, 0);
    let _ = sched.pick_next(0, 0).unwrap();
    let _ = sched.pick_next(1, 0).unwrap();
    assert_eq!(sched.current(1), Some(real_time));
    let not = |reason| Ok(YieldTo::NotYielded(reason));
    assert_eq!(
        sched.yield_to(0, yielder, 1),
        not(NotYieldedReason::TargetIsSelf)
    );
    assert_eq!(
        sched.yield_to(0, real_time, 1),
        not(NotYieldedReason::TargetNotRunnable(TaskState::Running))
    );
    assert_eq!(
        sched.yield_to(0, sleeper, 1),
        not(NotYieldedReason::TargetNotRunnable(TaskState::Sleeping))
    );
    // running_elsewhere waits behind the real-time task: runnable, but a fair target
    // cannot preempt a real-time CPU, so no IPI.
    assert_eq!(
        sched.yield_to(0, running_elsewhere, 1),
        Ok(YieldTo::Yielded {
            target_cpu: 1,
            send_resched_ipi: false
        })
    );
    let mut rt_sched = scheduler(1);
    let rt_task = spawn_on(&mut rt_sched, rt(5), 0, 0);
    let fair_task = spawn_on(&mut rt_sched, fair(0), 0, 0);
    let _ = rt_sched.pick_next(0, 0).unwrap();
    assert_eq!(rt_sched.current(0), Some(rt_task));
    assert_eq!(
        rt_sched.yield_to(0, fair_task, 1),
        not(NotYieldedReason::ClassMismatch)
    );
}

// ----- CPU time -----------------------------------------------------------------------------------

#[test]
fn cpu_time_is_charged_per_task_and_idle_time_per_cpu() {
    let mut sched = scheduler(1);
    let a = spawn_on(&mut sched, rt(1), 0, MS); // idle 0..1 ms
    let b = spawn_on(&mut sched, fair(0), 0, MS);
    assert_eq!(sched.pick_next(0, MS).unwrap().next, Some(a));
    assert_eq!(sleep_current(&mut sched, 0, 4 * MS), Some(a)); // a: 3 ms
    assert_eq!(sched.current(0), Some(b));
    assert_eq!(sleep_current(&mut sched, 0, 6 * MS), Some(b)); // b: 2 ms
    assert_eq!(sched.current(0), None);
    sched.account(0, 11 * MS).unwrap(); // idle 6..11 ms
    assert_eq!(cpu_time(&sched, a), 3 * MS);
    assert_eq!(cpu_time(&sched, b), 2 * MS);
    let cpu = sched.cpu_info(0).unwrap();
    assert_eq!(cpu.idle_ns, 6 * MS);
    assert_eq!(cpu.context_switches, 3, "idle→a, a→b, b→idle");
    // A clock that goes backwards is ignored, not charged negatively.
    sched.account(0, 10 * MS).unwrap();
    assert_eq!(sched.cpu_info(0).unwrap().idle_ns, 6 * MS);
}

// ----- steal time ---------------------------------------------------------------------------------

#[test]
fn steal_time_is_not_charged_to_the_running_task() {
    let mut sched = scheduler(1);
    let task = spawn_on(&mut sched, fair(0), 0, 0);
    let _ = sched.pick_next(0, 0).expect("pick");
    sched.account(0, 40 * MS).expect("account");
    // The hypervisor ran something else for 30 ms of the next 60 ms.
    sched.account_steal(0, 30 * MS).expect("steal");
    sched.account(0, 100 * MS).expect("account");
    assert_eq!(
        cpu_time(&sched, task),
        70 * MS,
        "40 ms + (60 - 30) ms really ran"
    );
    let info = sched.cpu_info(0).expect("cpu 0");
    assert_eq!(info.steal_ns, 30 * MS);
    // Steal beyond the elapsed time is kept for the next charge, never underflows.
    sched.account_steal(0, 50 * MS).expect("steal");
    sched.account(0, 120 * MS).expect("account");
    assert_eq!(cpu_time(&sched, task), 70 * MS);
    sched.account(0, 200 * MS).expect("account");
    assert_eq!(cpu_time(&sched, task), 70 * MS + 50 * MS);
    assert!(matches!(
        sched.account_steal(7, 1),
        Err(SchedError::NoSuchCpu(7))
    ));
}

#[test]
fn a_task_robbed_by_the_hypervisor_gets_its_fair_share_of_real_cpu_time() {
    let mut sched = scheduler(1);
    let robbed = spawn_on(&mut sched, fair(0), 0, 0);
    let other = spawn_on(&mut sched, fair(0), 0, 0);
    let mut now = 0;
    let _ = sched.pick_next(0, now).expect("pick");
    while now < 2_000 * MS {
        let deadline = sched
            .next_preemption_deadline(0)
            .map_or(now + MS, |deadline| deadline.max(now + 1));
        // Half of every turn of `robbed` is stolen by the host.
        if sched.current(0) == Some(robbed) {
            sched.account_steal(0, (deadline - now) / 2).expect("steal");
        }
        now = deadline;
        if sched.tick(0, now).expect("tick") {
            let _ = sched.pick_next(0, now).expect("pick");
        }
    }
    sched.account(0, now).expect("account");
    let (robbed_ns, other_ns) = (cpu_time(&sched, robbed), cpu_time(&sched, other));
    // Both are charged only what they ran, and the fair class evens out what they ran.
    assert!(
        robbed_ns.abs_diff(other_ns) < 10 * MS,
        "robbed ran {robbed_ns} ns, other {other_ns} ns"
    );
    let steal = sched.cpu_info(0).expect("cpu 0").steal_ns;
    assert_eq!(
        robbed_ns + other_ns + steal,
        now,
        "every nanosecond is accounted once"
    );
    sched.check_consistency().unwrap();
}
