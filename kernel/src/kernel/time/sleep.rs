//! Sleeping on hrtimers: a CPU's sleeper (before threads) and a thread's sleep, which lets its
//! CPU run other threads or idle tickless meanwhile; `msleep`, `sleep_ns`, `wait_event_timeout`.

use core::sync::atomic::{AtomicBool, Ordering};

use lull_time::hrtimer::{ClockId, FiringTimer, HrTimerId, HrTimerMode, HrTimerRestart};
use lull_time::tick::TimerFunction;
use lull_time::timer_stats::StartInfo;

use crate::kernel::locking::{InterruptsDisabled, IrqSafeLock, PerCpu, MAX_CPUS};

use super::{idle, uptime_ns, TimeContext, CPU_TIME};
use crate::arch::cpu;

// ---- sleeping ------------------------------------------------------------------------------

/// One sleeper per CPU: its wake-up flag and its (reused) hrtimer. A CPU's sleeper is whatever
/// runs on it (the shell, a test); there are no threads to switch to yet.
static SLEEP_WOKEN: PerCpu<AtomicBool> = PerCpu::new([const { AtomicBool::new(false) }; MAX_CPUS]);
static SLEEP_TIMER: PerCpu<IrqSafeLock<Option<HrTimerId>>> =
    PerCpu::new([const { IrqSafeLock::named("time::SLEEP_TIMER", None) }; MAX_CPUS]);

/// hrtimer callback: wakes the sleeper of the CPU in `data` (the timer's own CPU).
fn wake_sleeper(
    _context: &mut TimeContext,
    timer: &mut FiringTimer<TimerFunction<TimeContext>>,
) -> HrTimerRestart {
    SLEEP_WOKEN
        .on_cpu(timer.data() as usize)
        .store(true, Ordering::Release);
    HrTimerRestart::NoRestart
}

/// Sleeps until monotonic time `deadline_ns` on an absolute hrtimer, idling (tickless) in the
/// meantime. Returns the monotonic time at wake-up. Never returns before the deadline.
/// Called with interrupts enabled; they are enabled on return.
pub fn sleep_until(deadline_ns: u64, site: &'static str) -> u64 {
    if let Some(thread) = crate::kernel::sched::current() {
        return thread_sleep_until(thread, deadline_ns, site);
    }
    cpu::disable_interrupts();
    let interrupts_off = InterruptsDisabled::new();
    let cpu = interrupts_off.cpu_index();
    let started = {
        let mut guard = CPU_TIME.this_cpu(&interrupts_off).lock();
        let now = uptime_ns();
        let Some(percpu) = guard.as_mut() else {
            drop(guard);
            cpu::enable_interrupts();
            return busy_wait_until(deadline_ns);
        };
        let mut timer_slot = SLEEP_TIMER.this_cpu(&interrupts_off).lock();
        let id = match *timer_slot {
            Some(id) => id,
            None => match percpu.hrtimer_create(
                ClockId::Monotonic,
                TimerFunction::new("hrtimer_wakeup", wake_sleeper),
                cpu as u64,
            ) {
                Ok(id) => *timer_slot.insert(id),
                Err(_) => {
                    drop(timer_slot);
                    drop(guard);
                    cpu::enable_interrupts();
                    return busy_wait_until(deadline_ns);
                }
            },
        };
        SLEEP_WOKEN
            .this_cpu(&interrupts_off)
            .store(false, Ordering::Relaxed);
        percpu
            .hrtimer_start(
                id,
                deadline_ns,
                HrTimerMode::Absolute,
                0,
                now,
                StartInfo::kernel(site),
            )
            .is_ok()
    };
    // Interrupts stay off until `idle` halts (it was made with them off: dropping it keeps
    // them off). Without a scheduler nothing moves this code to another CPU while it idles.
    drop(interrupts_off);
    if !started {
        cpu::enable_interrupts();
        return busy_wait_until(deadline_ns);
    }
    while !SLEEP_WOKEN.on_cpu(cpu).load(Ordering::Acquire) {
        idle(); // returns with interrupts enabled
        cpu::disable_interrupts();
    }
    cpu::enable_interrupts();
    uptime_ns()
}

/// hrtimer callback: wakes the thread whose id is the timer's data (through the scheduler).
fn wake_sleeping_thread(
    _context: &mut TimeContext,
    timer: &mut FiringTimer<TimerFunction<TimeContext>>,
) -> HrTimerRestart {
    SLEEP_TIMER_FIRED.lock().insert(timer.data());
    crate::kernel::sched::wake_up(timer.data());
    HrTimerRestart::NoRestart
}

/// Threads whose sleep timer fired (a leaf lock, taken inside `CPU_TIME`). The sleeper waits for
/// this rather than re-reading the clock: the timer's verdict is final, so a clock read on
/// another CPU that lags a little (or a clocksource change) cannot send it back to sleep with
/// no timer left to wake it.
static SLEEP_TIMER_FIRED: IrqSafeLock<alloc::collections::BTreeSet<u64>> =
    IrqSafeLock::new(alloc::collections::BTreeSet::new());

/// A thread's sleep: an absolute hrtimer on this CPU wakes it through the scheduler, and the
/// CPU runs other threads (or idles tickless) meanwhile. The timer is destroyed on the CPU it
/// was armed on, wherever the thread runs when it wakes.
fn thread_sleep_until(thread: u64, deadline_ns: u64, site: &'static str) -> u64 {
    // Nobody else wakes this sleep: a queue of its own, which only the timer's wake-up ends.
    let alone = crate::kernel::sched::WaitQueue::new();
    let slept = with_sleep_timer(thread, deadline_ns, site, |expired| {
        alone.wait_until(expired)
    });
    if slept.is_none() {
        return busy_wait_until(deadline_ns);
    }
    let woke = uptime_ns();
    // Never earlier than asked (the timer fired at its expiry by the clock of its own CPU).
    if woke < deadline_ns {
        return busy_wait_until(deadline_ns);
    }
    woke
}

/// Arms a sleep timer for thread `thread` (the running thread) at monotonic `deadline_ns` on
/// this CPU and runs `wait(expired)`: `expired()` turns true once the timer fired, and the
/// timer's callback wakes the thread, so a wait on any wait queue can give up at the deadline
/// (the engine of `wait_event_timeout`). The timer is destroyed afterwards on the CPU it was
/// armed on. Returns `wait`'s result, or `None` if no timer could be armed (the caller falls
/// back to polling).
pub(crate) fn with_sleep_timer<R>(
    thread: u64,
    deadline_ns: u64,
    site: &'static str,
    wait: impl FnOnce(&mut dyn FnMut() -> bool) -> R,
) -> Option<R> {
    let armed = {
        let interrupts_off = InterruptsDisabled::new();
        let cpu = interrupts_off.cpu_index();
        let mut guard = CPU_TIME.this_cpu(&interrupts_off).lock();
        let now = uptime_ns();
        guard.as_mut().and_then(|percpu| {
            let timer = percpu
                .hrtimer_create(
                    ClockId::Monotonic,
                    TimerFunction::new("hrtimer_wakeup", wake_sleeping_thread),
                    thread,
                )
                .ok()?;
            let start = StartInfo::kernel(site);
            match percpu.hrtimer_start(timer, deadline_ns, HrTimerMode::Absolute, 0, now, start) {
                Ok(_) => Some((cpu, timer)),
                Err(_) => {
                    let _ = percpu.hrtimer_destroy(timer, now);
                    None
                }
            }
        })
    };
    let (cpu, timer) = armed?;
    let result = wait(&mut || SLEEP_TIMER_FIRED.lock().remove(&thread));
    if let Some(percpu) = CPU_TIME.on_cpu(cpu).lock().as_mut() {
        let _ = percpu.hrtimer_destroy(timer, uptime_ns());
    }
    // The callback runs under `CPU_TIME[cpu]`: once the timer is destroyed it has either run
    // (its mark is removed here, so it cannot end a later sleep early) or never will.
    SLEEP_TIMER_FIRED.lock().remove(&thread);
    Some(result)
}

fn busy_wait_until(deadline_ns: u64) -> u64 {
    loop {
        let now = uptime_ns();
        if now >= deadline_ns {
            return now;
        }
        core::hint::spin_loop();
    }
}

/// Sleeps for `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    sleep_until(uptime_ns().saturating_add(ns), "sleep_ns");
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Sleeps for `ms` milliseconds.
pub fn msleep(ms: u64) {
    sleep_until(
        uptime_ns().saturating_add(ms.saturating_mul(1_000_000)),
        "msleep",
    );
}
