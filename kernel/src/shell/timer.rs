//! The shell's `timer MS` command: a one-shot hrtimer on this CPU that shows up in
//! `/proc/timer_list` while pending and in `/proc/timer_stats` as started by the shell.

use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use lull_time::hrtimer::{ClockId, FiringTimer, HrTimerMode, HrTimerRestart};
use lull_time::tick::TimerFunction;
use lull_time::timer_stats::StartInfo;

use crate::kernel::time::{self, TimeContext};
use crate::printk;

fn shell_timer_fn(
    _context: &mut TimeContext,
    timer: &mut FiringTimer<TimerFunction<TimeContext>>,
) -> HrTimerRestart {
    let late_ns = timer.now().saturating_sub(timer.soft_expires());
    printk!(
        "timer: shell timer {} fired ({} ns after its expiry)",
        timer.data(),
        late_ns
    );
    HrTimerRestart::NoRestart
}

/// Starts a one-shot hrtimer `delay_ns` from now on this CPU from the shell (it shows up in
/// timer_list while pending and in timer_stats as started by `shell_timer_command`). Returns
/// its id.
pub fn start_shell_timer(delay_ns: u64) -> Result<u32, String> {
    let serial = SHELL_TIMER_SERIAL.fetch_add(1, Ordering::Relaxed) + 1;
    time::with_this_cpu_timers(|percpu, now, _cpu| {
        let id = percpu
            .hrtimer_create(
                ClockId::Monotonic,
                TimerFunction::new("shell_timer_fn", shell_timer_fn),
                serial,
            )
            .map_err(|e| alloc::format!("{e:?}"))?;
        let start = StartInfo {
            site: "shell_timer_command",
            pid: 1,
            comm: lull_time::timer_stats::TaskComm::new("shell"),
        };
        percpu
            .hrtimer_start(id, delay_ns, HrTimerMode::Relative, 0, now, start)
            .map_err(|e| alloc::format!("{e:?}"))?;
        Ok(serial as u32)
    })
    .unwrap_or(Err(String::from("no tick device")))
}

static SHELL_TIMER_SERIAL: AtomicU64 = AtomicU64::new(0);
