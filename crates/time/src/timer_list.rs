//! `/proc/timer_list`: every CPU's hrtimer bases, tick-sched state and tick device.
//!
//! The layout follows Linux's `kernel/time/timer_list.c` (format version v0.9): a header,
//! then per CPU each clock base with its queued timers (`#N: <id>, function, S:01` and
//! `# expires at SOFT-HARD nsecs [in X to Y nsecs]`), the hrtimer and tick-sched fields and
//! jiffies; then per CPU the tick device and its clock event device. As in Linux 2.6.21 with
//! `CONFIG_TIMER_STATS`, a timer line also names who started it (`, site, comm/pid`).
//! Fields Lull does not track (`idle_waketime`, `iowait_sleeptime`, broadcast devices) are
//! left out rather than printed as made-up zeros. Times with no value print as `KTIME_MAX`,
//! as Linux does.

use core::fmt::{self, Write};

use crate::clockevents::{ClockEventDevice, Features};
use crate::hrtimer::{ClockId, CLOCK_BASES};
use crate::tick::{JiffiesClock, PerCpuTime, TickContext};

/// Linux's `KTIME_MAX`, printed for "never".
const KTIME_MAX: i64 = i64::MAX;

fn ktime(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(KTIME_MAX)
}

/// Writes `/proc/timer_list` for `cpus` at monotonic time `now`.
pub fn write_timer_list<D: ClockEventDevice, C: TickContext>(
    out: &mut dyn Write,
    now: u64,
    jiffies: &JiffiesClock,
    cpus: &[&PerCpuTime<D, C>],
) -> fmt::Result {
    write_header(out, now)?;
    for cpu in cpus {
        write_cpu(out, now, jiffies, cpu)?;
    }
    for cpu in cpus {
        write_tick_device(out, cpu)?;
    }
    Ok(())
}

/// The header of `/proc/timer_list`. A kernel writes it, then [`write_cpu`] for every CPU,
/// then [`write_tick_device`] for every CPU, each under that CPU's own lock only (as Linux
/// does), so reading the file never stalls every CPU's timers at once.
pub fn write_header(out: &mut dyn Write, now: u64) -> fmt::Result {
    out.write_str("Timer List Version: v0.9\n")?;
    writeln!(out, "HRTIMER_MAX_CLOCK_BASES: {CLOCK_BASES}")?;
    writeln!(out, "now at {} nsecs", ktime(now))?;
    out.write_str("\n")
}

/// One CPU's clock bases, queued timers, tick-sched state and jiffies.
pub fn write_cpu<D: ClockEventDevice, C: TickContext>(
    out: &mut dyn Write,
    now: u64,
    jiffies: &JiffiesClock,
    cpu: &PerCpuTime<D, C>,
) -> fmt::Result {
    let base = cpu.hrtimers();
    writeln!(out, "cpu: {}", cpu.cpu())?;
    let resolution = if base.hres_active() {
        1
    } else {
        jiffies.period_ns()
    };
    for clock in ClockId::ALL {
        let offset = match clock {
            ClockId::Monotonic => 0,
            ClockId::Realtime => base.realtime_offset_ns(),
        };
        writeln!(out, " clock {}:", clock as usize)?;
        writeln!(
            out,
            "  .base:       {:016x}",
            (u64::from(cpu.cpu()) << 8) | clock as u64
        )?;
        writeln!(out, "  .index:      {}", clock as usize)?;
        writeln!(out, "  .resolution: {resolution} nsecs")?;
        writeln!(out, "  .get_time:   {}", clock.get_time_name())?;
        writeln!(out, "  .offset:     {offset} nsecs")?;
        out.write_str("active timers:\n")?;
        let clock_now = i128::from(base.clock_now(clock, now));
        for (position, timer) in base.queued(clock).enumerate() {
            write!(
                out,
                " #{position}: <{:016x}>, {}, S:01",
                timer.id.index(),
                crate::hrtimer::TimerFunction::name(&timer.function)
            )?;
            if let Some(start) = timer.start {
                write!(out, ", {}, {}/{}", start.site, start.comm, start.pid)?;
            }
            out.write_str("\n")?;
            writeln!(
                out,
                " # expires at {}-{} nsecs [in {} to {} nsecs]",
                timer.soft_expires,
                timer.hard_expires,
                i128::from(timer.soft_expires) - clock_now,
                i128::from(timer.hard_expires) - clock_now
            )?;
        }
    }
    let counters = base.counters();
    let field = |out: &mut dyn Write, name: &str, value: i128| -> fmt::Result {
        writeln!(out, "  .{name:<15}: {value}")
    };
    let field_ns = |out: &mut dyn Write, name: &str, value: u64| -> fmt::Result {
        writeln!(out, "  .{name:<15}: {} nsecs", ktime(value))
    };
    field_ns(out, "expires_next", base.expires_next().unwrap_or(u64::MAX))?;
    field(out, "hres_active", i128::from(base.hres_active()))?;
    field(out, "nr_events", i128::from(counters.nr_events))?;
    field(out, "nr_retries", i128::from(counters.nr_retries))?;
    field(out, "nr_hangs", i128::from(counters.nr_hangs))?;
    field(out, "max_hang_time", i128::from(counters.max_hang_time))?;
    let tick = cpu.tick_sched();
    field(out, "nohz_mode", tick.nohz_mode as i128)?;
    field_ns(out, "last_tick", tick.last_tick)?;
    field(out, "tick_stopped", i128::from(tick.tick_stopped))?;
    field(out, "idle_jiffies", i128::from(tick.idle_jiffies))?;
    field(out, "idle_calls", i128::from(tick.idle_calls))?;
    field(out, "idle_sleeps", i128::from(tick.idle_sleeps))?;
    field_ns(out, "idle_entrytime", tick.idle_entrytime)?;
    field_ns(out, "idle_exittime", tick.idle_exittime)?;
    field_ns(out, "idle_sleeptime", tick.idle_sleeptime)?;
    field(out, "last_jiffies", i128::from(tick.last_jiffies))?;
    field(out, "next_timer", i128::from(ktime(tick.next_timer)))?;
    field_ns(out, "idle_expires", tick.idle_expires)?;
    writeln!(out, "jiffies: {}", jiffies.jiffies())?;
    out.write_str("\n")
}

/// One CPU's tick device and its clock event device.
pub fn write_tick_device<D: ClockEventDevice, C: TickContext>(
    out: &mut dyn Write,
    cpu: &PerCpuTime<D, C>,
) -> fmt::Result {
    let event = cpu.event_device();
    let device = event.device();
    let name = device.name();
    writeln!(out, "Tick Device: mode:     {}", cpu.mode() as u32)?;
    writeln!(out, "Per CPU device: {}", cpu.cpu())?;
    writeln!(out, "Clock Event Device: {name}")?;
    writeln!(out, " max_delta_ns:   {}", event.max_delta_ns())?;
    writeln!(out, " min_delta_ns:   {}", event.min_delta_ns())?;
    writeln!(out, " mult:           {}", event.ns_to_cycles().mult)?;
    writeln!(out, " shift:          {}", event.ns_to_cycles().shift)?;
    writeln!(out, " mode:           {}", event.state() as u32)?;
    writeln!(
        out,
        " next_event:     {} nsecs",
        ktime(event.next_event_ns().unwrap_or(u64::MAX))
    )?;
    writeln!(out, " set_next_event: {name}::set_next_event")?;
    writeln!(out, " shutdown:       {name}::set_state_shutdown")?;
    if device.features().contains(Features::PERIODIC) {
        writeln!(out, " periodic:       {name}::set_state_periodic")?;
    }
    if device.features().contains(Features::ONESHOT) {
        writeln!(out, " oneshot:        {name}::set_state_oneshot")?;
        writeln!(out, " oneshot stopped: {name}::set_state_oneshot_stopped")?;
    }
    writeln!(out, " event_handler:  {}", event.handler_name())?;
    writeln!(out, " retries:        {}", event.retries())?;
    out.write_str("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hrtimer::{FiringTimer, HrTimerMode, HrTimerRestart};
    use crate::test_support::FakeEventDevice;
    use crate::tick::{TickConfig, TimerFunction};
    use crate::timer_stats::{StartInfo, TaskComm};
    use alloc::string::String;

    struct Kernel;
    impl TickContext for Kernel {}

    fn wakeup(_: &mut Kernel, _: &mut FiringTimer<TimerFunction<Kernel>>) -> HrTimerRestart {
        HrTimerRestart::NoRestart
    }

    #[test]
    fn layout_matches_linux() {
        let mut jiffies = JiffiesClock::new(0, 0, 250).unwrap();
        let mut cpu: PerCpuTime<FakeEventDevice, Kernel> =
            PerCpuTime::new(0, FakeEventDevice::lapic(), TickConfig::default(), &jiffies).unwrap();
        cpu.start(0, &mut jiffies).unwrap();
        let sleeper = cpu
            .hrtimer_create(
                ClockId::Monotonic,
                TimerFunction::new("hrtimer_wakeup", wakeup),
                0,
            )
            .unwrap();
        let start = StartInfo {
            site: "do_nanosleep",
            pid: 42,
            comm: TaskComm::new("sleep"),
        };
        cpu.hrtimer_start(
            sleeper,
            10_000_000,
            HrTimerMode::Absolute,
            50_000,
            1_000,
            start,
        )
        .unwrap();
        let mut text = String::new();
        write_timer_list(&mut text, 1_000, &jiffies, &[&cpu]).unwrap();
        let expected = "\
Timer List Version: v0.9
HRTIMER_MAX_CLOCK_BASES: 2
now at 1000 nsecs

cpu: 0
 clock 0:
  .base:       0000000000000000
  .index:      0
  .resolution: 1 nsecs
  .get_time:   ktime_get
  .offset:     0 nsecs
active timers:
 #0: <0000000000000000>, tick_sched_timer, S:01, tick_setup_sched_timer, swapper/0
 # expires at 4000000-4000000 nsecs [in 3999000 to 3999000 nsecs]
 #1: <0000000000000001>, hrtimer_wakeup, S:01, do_nanosleep, sleep/42
 # expires at 10000000-10050000 nsecs [in 9999000 to 10049000 nsecs]
 clock 1:
  .base:       0000000000000001
  .index:      1
  .resolution: 1 nsecs
  .get_time:   ktime_get_real
  .offset:     0 nsecs
active timers:
  .expires_next   : 4000000 nsecs
  .hres_active    : 1
  .nr_events      : 0
  .nr_retries     : 0
  .nr_hangs       : 0
  .max_hang_time  : 0
  .nohz_mode      : 2
  .last_tick      : 0 nsecs
  .tick_stopped   : 0
  .idle_jiffies   : 0
  .idle_calls     : 0
  .idle_sleeps    : 0
  .idle_entrytime : 0 nsecs
  .idle_exittime  : 0 nsecs
  .idle_sleeptime : 0 nsecs
  .last_jiffies   : 0
  .next_timer     : 0
  .idle_expires   : 0 nsecs
jiffies: 0

Tick Device: mode:     1
Per CPU device: 0
Clock Event Device: lapic
 max_delta_ns:   4000000000
 min_delta_ns:   1000
 mult:           2147483648
 shift:          31
 mode:           3
 next_event:     4000000 nsecs
 set_next_event: lapic::set_next_event
 shutdown:       lapic::set_state_shutdown
 periodic:       lapic::set_state_periodic
 oneshot:        lapic::set_state_oneshot
 oneshot stopped: lapic::set_state_oneshot_stopped
 event_handler:  hrtimer_interrupt
 retries:        0

";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn stopped_tick_shows_in_nohz_fields() {
        let mut jiffies = JiffiesClock::new(0, 0, 250).unwrap();
        let mut cpu: PerCpuTime<FakeEventDevice, Kernel> =
            PerCpuTime::new(0, FakeEventDevice::lapic(), TickConfig::default(), &jiffies).unwrap();
        cpu.start(0, &mut jiffies).unwrap();
        cpu.idle_enter(100, &mut jiffies).unwrap();
        let mut text = String::new();
        write_timer_list(&mut text, 200, &jiffies, &[&cpu]).unwrap();
        assert!(text.contains("  .tick_stopped   : 1\n"), "{text}");
        assert!(text.contains("  .idle_calls     : 1\n"));
        assert!(text.contains("  .idle_expires   : 9223372036854775807 nsecs\n"));
        assert!(text.contains("  .expires_next   : 9223372036854775807 nsecs\n"));
        assert!(
            text.contains(" mode:           4\n"),
            "device should be oneshot-stopped"
        );
        assert!(
            !text.contains("tick_sched_timer"),
            "stopped tick must not be queued"
        );
    }
}
