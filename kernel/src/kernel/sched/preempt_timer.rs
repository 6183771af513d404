//! The scheduler's preemption timer: a per-CPU hrtimer armed only when the running thread's
//! slice must end, so preemption does not depend on the tick's rate (and an idle CPU or a lone
//! task arms nothing).

use lull_time::hrtimer::{ClockId, FiringTimer, HrTimerId, HrTimerMode, HrTimerRestart};
use lull_time::tick::TimerFunction;
use lull_time::timer_stats::StartInfo;

use crate::kernel::locking::{InterruptsDisabled, IrqSafeLock, PerCpu, MAX_CPUS};
use crate::kernel::time::{self, TimeContext};

/// Per CPU: the scheduler's preemption hrtimer and the deadline it is armed for. Taken inside
/// this CPU's time lock (a leaf).
static PREEMPTION_TIMER: PerCpu<IrqSafeLock<(Option<HrTimerId>, Option<u64>)>> =
    PerCpu::new([const { IrqSafeLock::named("sched::PREEMPTION_TIMER", (None, None)) }; MAX_CPUS]);

/// hrtimer callback: the running thread's slice is over (or a higher class waits); the
/// scheduler tick sets need-resched and the switch happens on the way out of the interrupt.
fn preemption_timer_fired(
    _context: &mut TimeContext,
    _timer: &mut FiringTimer<TimerFunction<TimeContext>>,
) -> HrTimerRestart {
    let interrupts_off = InterruptsDisabled::new();
    PREEMPTION_TIMER.this_cpu(&interrupts_off).lock().1 = None;
    super::tick();
    HrTimerRestart::NoRestart
}

/// Arms this CPU's preemption hrtimer for `deadline_ns` (the scheduler's
/// `next_preemption_deadline`), or cancels it for `None` (idle, a lone task, a FIFO task), so
/// preemption does not depend on the tick's rate. Called with no scheduler or time lock held.
pub fn program_preemption(deadline_ns: Option<u64>) {
    time::with_this_cpu_timers(|percpu, now, cpu| {
        let interrupts_off = InterruptsDisabled::new();
        let mut slot = PREEMPTION_TIMER.this_cpu(&interrupts_off).lock();
        if slot.1 == deadline_ns {
            return;
        }
        let id = match slot.0 {
            Some(id) => id,
            None if deadline_ns.is_none() => return,
            None => match percpu.hrtimer_create(
                ClockId::Monotonic,
                TimerFunction::new("sched_preemption", preemption_timer_fired),
                cpu as u64,
            ) {
                Ok(id) => *slot.0.insert(id),
                Err(_) => return,
            },
        };
        let armed = match deadline_ns {
            Some(deadline) => percpu
                .hrtimer_start(
                    id,
                    deadline,
                    HrTimerMode::Absolute,
                    0,
                    now,
                    StartInfo::kernel("sched_preemption"),
                )
                .is_ok(),
            None => {
                let _ = percpu.hrtimer_cancel(id, now);
                false
            }
        };
        slot.1 = if armed { deadline_ns } else { None };
    });
}
