//! Measures what one scheduling decision costs on the host: a switch (`pick_next`), a tick,
//! and a sleep/wake-up round trip, with 4 CPUs and many tasks (host only).
//!
//! Run with `cargo run --release -p lull-sched --example decision_cost`.

use std::hint::black_box;
use std::time::Instant;

use lull_sched::{CpuSet, Nice, RtPriority, SchedClass, SchedConfig, Scheduler, Wakeup};

const CPUS: usize = 4;
const ROUNDS: u64 = 200_000;

fn build(tasks_per_cpu: usize) -> Scheduler {
    let mut sched = Scheduler::new(CPUS, SchedConfig::default()).expect("valid");
    for cpu in 1..CPUS {
        sched.set_cpu_online(cpu, 0).expect("cpu");
    }
    for index in 0..tasks_per_cpu * CPUS {
        let class = if index % 8 == 7 {
            SchedClass::RealTime(RtPriority::new(1 + (index % 50) as u8).expect("prio"))
        } else {
            SchedClass::Fair(Nice::new((index % 40) as i8 - 20).expect("nice"))
        };
        // Sleep the real-time ones at once so fair tasks get picked too.
        let (task, _) = sched
            .spawn(class, CpuSet::ALL, index % CPUS, 0)
            .expect("spawn");
        if class.is_real_time() {
            sched.dequeue(task).expect("dequeue");
        }
    }
    sched
}

/// Nanoseconds per call of `work` over `ROUNDS` calls; best of three runs.
fn per_call(mut work: impl FnMut(u64)) -> f64 {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            for round in 0..ROUNDS {
                work(round);
            }
            start.elapsed().as_nanos() as f64 / ROUNDS as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    for tasks_per_cpu in [4, 64] {
        let mut sched = build(tasks_per_cpu);
        let mut now = 0u64;
        for cpu in 0..CPUS {
            let _ = sched.pick_next(cpu, now).expect("pick");
        }
        let switch = per_call(|_| {
            now += 1_000_000;
            let _ = black_box(sched.pick_next(0, now).expect("pick"));
        });
        // A tick every 100 us on CPU 1, switching when it says so (every few ticks).
        let tick = per_call(|_| {
            now += 100_000;
            if sched.tick(1, now).expect("tick") {
                let _ = black_box(sched.pick_next(1, now).expect("pick"));
            }
        });
        let deadline = per_call(|_| {
            black_box(sched.next_preemption_deadline(2));
        });
        // The current task of CPU 3 sleeps, and is woken from CPU 0.
        let round_trip = per_call(|_| {
            now += 50_000;
            let Some(task) = sched.current(3) else {
                let _ = sched.pick_next(3, now);
                return;
            };
            sched.prepare_to_sleep(task).expect("prepare");
            let _ = black_box(sched.pick_next(3, now).expect("pick"));
            let woke = sched.wake_up(task, 0, now).expect("wake");
            black_box(matches!(woke, Wakeup::Placed(_)));
        });
        sched.check_consistency().expect("consistent after the run");
        println!(
            "{tasks_per_cpu:>3} tasks/CPU: pick_next {switch:>6.0} ns  tick(+switch) {tick:>5.0} ns  \
             deadline {deadline:>4.0} ns  sleep+switch+wake {round_trip:>6.0} ns"
        );
    }
}
