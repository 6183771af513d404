//! The time subsystem's /proc views: `/proc/timer_list` and `/proc/timer_stats`.

use alloc::string::String;
use alloc::vec::Vec;

use super::{uptime_ns, CPU_TIME, JIFFIES};

// ---- procfs ----------------------------------------------------------------------------------

/// `/proc/timer_list`: every online CPU's hrtimer bases, tick device and tick-sched state.
/// Each CPU's part is written under that CPU's lock alone (Linux takes one base lock at a
/// time too), so a reader stalls at most one CPU's timers, briefly, never all of them.
pub fn proc_timer_list() -> String {
    use lull_time::timer_list;
    let now = uptime_ns();
    let mut out = String::new();
    let _ = timer_list::write_header(&mut out, now);
    let mut started = false;
    for cpu in crate::kernel::smp::online_cpus() {
        let guard = CPU_TIME.on_cpu(cpu).lock();
        let Some(percpu) = guard.as_ref() else {
            continue;
        };
        let jiffies = JIFFIES.lock();
        if let Some(jiffies) = jiffies.as_ref() {
            started = true;
            let _ = timer_list::write_cpu(&mut out, now, jiffies, percpu);
        }
    }
    if !started {
        return String::from("timer_list: time subsystem not started\n");
    }
    for cpu in crate::kernel::smp::online_cpus() {
        if let Some(percpu) = CPU_TIME.on_cpu(cpu).lock().as_ref() {
            let _ = timer_list::write_tick_device(&mut out, percpu);
        }
    }
    out
}

/// `/proc/timer_stats` (read): the statistics of every online CPU together. Each CPU's are
/// copied under its own lock; the report is written with no lock held.
pub fn proc_timer_stats() -> String {
    let now = uptime_ns();
    let stats: Vec<lull_time::timer_stats::TimerStats> = crate::kernel::smp::online_cpus()
        .filter_map(|cpu| {
            let guard = CPU_TIME.on_cpu(cpu).lock();
            let stats = guard.as_ref().map(|percpu| percpu.timer_stats().clone());
            stats
        })
        .collect();
    let mut out = String::new();
    if stats.is_empty() {
        out.push_str("timer_stats: time subsystem not started\n");
    } else {
        let refs: Vec<&lull_time::timer_stats::TimerStats> = stats.iter().collect();
        let _ = lull_time::timer_stats::write_report(&mut out, now, &refs);
    }
    out
}

/// `/proc/timer_stats` (write `1` start, `0` stop), on every online CPU.
pub fn proc_timer_stats_write(value: &str) -> Result<(), String> {
    let now = uptime_ns();
    let mut any = false;
    for cpu in crate::kernel::smp::online_cpus() {
        let mut guard = CPU_TIME.on_cpu(cpu).lock();
        let Some(percpu) = guard.as_mut() else {
            continue;
        };
        any = true;
        percpu
            .timer_stats_mut()
            .write_control(value.trim().as_bytes(), now)
            .map_err(|_| String::from("write 1 to start collecting, 0 to stop"))?;
    }
    if any {
        Ok(())
    } else {
        Err(String::from("time subsystem not started"))
    }
}
