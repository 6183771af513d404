//! Host tests for tick-sched and nohz idle with a fake LAPIC and a simulated clock.

use super::*;
use crate::clockevents::ClockEventState;
use crate::test_support::{DeviceCall, FakeEventDevice};

const PERIOD: u64 = 4_000_000;
const SECOND: u64 = 1_000_000_000;

#[derive(Default)]
struct Kernel {
    scheduler_ticks: u64,
    jiffies_reported: u64,
    wheel_fired: Vec<(u64, u64)>,
    hrtimer_fired: Vec<(u64, u64)>,
}

impl TickContext for Kernel {
    fn scheduler_tick(&mut self, _cpu: u32, _now: u64) {
        self.scheduler_ticks += 1;
    }
    fn jiffies_advanced(&mut self, ticks: u64, _now: u64) {
        self.jiffies_reported += ticks;
    }
}

fn wheel_callback(kernel: &mut Kernel, data: u64) -> WheelAction {
    kernel.wheel_fired.push((data, 0));
    WheelAction::Done
}

const WHEEL_FN: WheelFunction<Kernel> = WheelFunction {
    name: "test_wheel_fn",
    function: wheel_callback,
};

fn record_hrtimer(
    kernel: &mut Kernel,
    timer: &mut FiringTimer<TimerFunction<Kernel>>,
) -> HrTimerRestart {
    assert!(timer.now() >= timer.soft_expires(), "hrtimer ran early");
    kernel.hrtimer_fired.push((timer.data(), timer.now()));
    HrTimerRestart::NoRestart
}

struct Machine {
    cpu: PerCpuTime<FakeEventDevice, Kernel>,
    jiffies: JiffiesClock,
    kernel: Kernel,
    now: u64,
    interrupts: u64,
}

impl Machine {
    fn with(config: TickConfig, device: FakeEventDevice, initial_jiffies: u64) -> Self {
        let mut jiffies = JiffiesClock::new(initial_jiffies, 0, config.hz).unwrap();
        let mut cpu = PerCpuTime::new(0, device, config, &jiffies).unwrap();
        cpu.start(0, &mut jiffies).unwrap();
        Self {
            cpu,
            jiffies,
            kernel: Kernel::default(),
            now: 0,
            interrupts: 0,
        }
    }

    fn new(config: TickConfig) -> Self {
        Self::with(config, FakeEventDevice::lapic(), 0)
    }

    /// Lets time run to `until`, delivering every interrupt the one-shot device was
    /// programmed for, exactly on time.
    fn run_until(&mut self, until: u64) {
        while let Some(event) = self.cpu.event_device().next_event_ns() {
            if event > until || self.cpu.event_device().state() != ClockEventState::OneShot {
                break;
            }
            self.now = self.now.max(event);
            self.cpu
                .interrupt(self.now, &mut self.jiffies, &mut self.kernel)
                .unwrap();
            self.interrupts += 1;
            assert!(self.interrupts < 1_000_000);
        }
        self.now = self.now.max(until);
    }

    /// The idle loop: stop the tick, sleep through interrupts (re-evaluating after each),
    /// until `until`.
    fn idle_until(&mut self, until: u64) -> IdleDecision {
        let first = self.cpu.idle_enter(self.now, &mut self.jiffies).unwrap();
        while let Some(event) = self.cpu.event_device().next_event_ns() {
            if event > until || self.cpu.event_device().state() != ClockEventState::OneShot {
                break;
            }
            self.now = self.now.max(event);
            self.cpu
                .interrupt(self.now, &mut self.jiffies, &mut self.kernel)
                .unwrap();
            self.interrupts += 1;
            self.cpu.idle_enter(self.now, &mut self.jiffies).unwrap();
        }
        self.now = self.now.max(until);
        first
    }
}

#[test]
fn periodic_tick_runs_at_hz_and_advances_jiffies() {
    let mut m = Machine::new(TickConfig::default());
    m.run_until(SECOND);
    assert_eq!(m.interrupts, 250);
    assert_eq!(m.jiffies.jiffies(), 250);
    assert_eq!(m.kernel.scheduler_ticks, 250);
    assert_eq!(m.kernel.jiffies_reported, 250);
    assert_eq!(m.jiffies.do_timer_cpu(), Some(0));
    assert_eq!(m.cpu.tick_sched().nohz_mode, NohzMode::HighRes);
}

#[test]
fn idle_with_nothing_due_stops_the_tick_completely() {
    let mut m = Machine::new(TickConfig::default());
    m.run_until(SECOND + 1_000);
    let ticks_before = m.interrupts;
    let decision = m.idle_until(11 * SECOND + 1_000);
    assert_eq!(
        decision,
        IdleDecision::TickStopped {
            next_event_ns: None
        }
    );
    assert_eq!(
        m.interrupts, ticks_before,
        "an idle CPU with no timers took interrupts"
    );
    assert_eq!(
        m.cpu.event_device().state(),
        ClockEventState::OneShotStopped
    );
    assert!(m.cpu.tick_sched().tick_stopped);
    assert_eq!(
        m.jiffies.do_timer_cpu(),
        None,
        "idle CPU kept the jiffies duty"
    );
    // Exit 10 s later: jiffies catch up exactly, in one step.
    let exit = m
        .cpu
        .idle_exit(m.now, &mut m.jiffies, &mut m.kernel)
        .unwrap();
    assert_eq!(
        exit,
        IdleExit {
            jiffies_caught_up: 2500,
            tick_restarted: true
        }
    );
    assert_eq!(m.jiffies.jiffies(), 2750);
    assert_eq!(m.kernel.jiffies_reported, 2750);
    assert_eq!(m.jiffies.last_update_ns(), 11 * SECOND);
    // The tick resumes on the grid.
    assert_eq!(
        m.cpu.event_device().next_event_ns(),
        Some(11 * SECOND + PERIOD)
    );
    m.run_until(12 * SECOND);
    assert_eq!(m.jiffies.jiffies(), 3000);
    let stats = m.cpu.tick_sched();
    assert_eq!((stats.idle_calls, stats.idle_sleeps), (1, 1));
    assert_eq!(stats.idle_sleeptime, 10 * SECOND);
    assert!(!stats.tick_stopped);
}

#[test]
fn idle_sleeps_until_next_wheel_timer_then_runs_it() {
    let mut m = Machine::new(TickConfig::default());
    let timer = m.cpu.timer_create(WHEEL_FN, 42, false).unwrap();
    // 60 jiffies ahead (level 0: exact) = 240 ms.
    m.cpu
        .timer_modify(timer, 60, 0, StartInfo::kernel("test_start"))
        .unwrap();
    let decision = m.idle_until(SECOND);
    assert_eq!(
        decision,
        IdleDecision::TickStopped {
            next_event_ns: Some(60 * PERIOD)
        }
    );
    // One wakeup for the timer, none for ticks.
    assert_eq!(m.interrupts, 1);
    assert_eq!(m.kernel.wheel_fired, [(42, 0)]);
    assert_eq!(m.jiffies.jiffies(), 60);
    assert!(!m.cpu.timer_pending(timer));
    // After the timer, idle with nothing pending: fully stopped again.
    assert_eq!(m.cpu.event_device().next_event_ns(), None);
    assert_eq!(m.cpu.tick_sched().idle_calls, 2);
}

#[test]
fn tick_kept_when_an_event_is_due_within_the_next_tick() {
    let mut m = Machine::new(TickConfig::default());
    let t = m
        .cpu
        .hrtimer_create(
            ClockId::Monotonic,
            TimerFunction::new("record_hrtimer", record_hrtimer),
            5,
        )
        .unwrap();
    m.cpu
        .hrtimer_start(
            t,
            1_000_000,
            HrTimerMode::Relative,
            0,
            0,
            StartInfo::kernel("t"),
        )
        .unwrap();
    let decision = m.cpu.idle_enter(0, &mut m.jiffies).unwrap();
    assert_eq!(
        decision,
        IdleDecision::TickKept(KeepReason::EventWithinNextTick)
    );
    assert!(!m.cpu.tick_sched().tick_stopped);
}

#[test]
fn hrtimer_far_away_lets_tick_stop_and_fires_on_time() {
    let mut m = Machine::new(TickConfig::default());
    let t = m
        .cpu
        .hrtimer_create(
            ClockId::Monotonic,
            TimerFunction::new("record_hrtimer", record_hrtimer),
            9,
        )
        .unwrap();
    m.cpu
        .hrtimer_start(
            t,
            333_333_333,
            HrTimerMode::Absolute,
            0,
            0,
            StartInfo::kernel("t"),
        )
        .unwrap();
    let decision = m.idle_until(SECOND);
    assert_eq!(
        decision,
        IdleDecision::TickStopped {
            next_event_ns: Some(333_333_333)
        }
    );
    assert_eq!(m.kernel.hrtimer_fired, [(9, 333_333_333)]);
    assert_eq!(m.interrupts, 1);
}

#[test]
fn nohz_off_keeps_the_periodic_tick_while_idle() {
    let config = TickConfig {
        nohz: false,
        ..TickConfig::default()
    };
    let mut m = Machine::new(config);
    let decision = m.idle_until(SECOND);
    assert_eq!(decision, IdleDecision::TickKept(KeepReason::NohzDisabled));
    assert_eq!(m.interrupts, 250);
    assert_eq!(m.jiffies.jiffies(), 250);
    assert_eq!(m.cpu.tick_sched().nohz_mode, NohzMode::Inactive);
}

#[test]
fn clocksource_deferment_limits_the_sleep() {
    let config = TickConfig {
        max_deferment_ns: 2 * SECOND,
        ..TickConfig::default()
    };
    let mut m = Machine::new(config);
    let decision = m.idle_until(0);
    assert_eq!(
        decision,
        IdleDecision::TickStopped {
            next_event_ns: Some(2 * SECOND)
        }
    );
    m.idle_until(5 * SECOND);
    // Woken every 2 s to keep time; jiffies advanced on each wakeup.
    assert_eq!(m.interrupts, 2);
    assert_eq!(m.jiffies.jiffies(), 1000);
}

#[test]
fn deferrable_timer_does_not_wake_idle_cpu_but_runs_when_ticking() {
    let mut m = Machine::new(TickConfig::default());
    let lazy = m.cpu.timer_create(WHEEL_FN, 7, true).unwrap();
    m.cpu
        .timer_modify(lazy, 10, 0, StartInfo::kernel("lazy"))
        .unwrap();
    let decision = m.idle_until(SECOND);
    assert_eq!(
        decision,
        IdleDecision::TickStopped {
            next_event_ns: None
        }
    );
    assert!(m.kernel.wheel_fired.is_empty());
    m.cpu
        .idle_exit(m.now, &mut m.jiffies, &mut m.kernel)
        .unwrap();
    m.run_until(SECOND + PERIOD);
    assert_eq!(m.kernel.wheel_fired, [(7, 0)]);
}

#[test]
fn arming_a_wheel_timer_while_tickless_kicks_the_tick() {
    let mut m = Machine::new(TickConfig::default());
    m.cpu.idle_enter(0, &mut m.jiffies).unwrap();
    assert_eq!(m.cpu.event_device().next_event_ns(), None);
    let timer = m.cpu.timer_create(WHEEL_FN, 1, false).unwrap();
    m.now = 100 * PERIOD + 5;
    m.cpu
        .timer_modify(timer, 200, m.now, StartInfo::kernel("irq"))
        .unwrap();
    // Kicked: the device fires right away, the idle loop then re-evaluates.
    let kick = m.cpu.event_device().next_event_ns().unwrap();
    assert!(kick <= m.now + m.cpu.event_device().min_delta_ns());
    m.idle_until(SECOND);
    assert_eq!(m.kernel.wheel_fired, [(1, 0)]);
    // Still idle after the timer: jiffies stay where the wakeup left them.
    assert_eq!(m.jiffies.jiffies(), 200);
}

#[test]
fn jiffies_wrap_near_u64_max_is_harmless() {
    let device = FakeEventDevice::lapic();
    let mut m = Machine::with(TickConfig::default(), device, u64::MAX - 100);
    let before = m.cpu.timer_create(WHEEL_FN, 1, false).unwrap();
    let after = m.cpu.timer_create(WHEEL_FN, 2, false).unwrap();
    m.cpu
        .timer_modify(before, u64::MAX - 1, 0, StartInfo::kernel("w"))
        .unwrap();
    m.cpu
        .timer_modify(after, 20, 0, StartInfo::kernel("w"))
        .unwrap();
    m.idle_until(SECOND);
    assert_eq!(m.kernel.wheel_fired, [(1, 0), (2, 0)]);
    // 121 jiffies ahead lands in wheel level 1 (8-jiffy granules): late by < 8, never early.
    assert!(
        (20..28).contains(&m.jiffies.jiffies()),
        "{}",
        m.jiffies.jiffies()
    );
    // Exactly two wakeups: one per timer.
    assert_eq!(m.interrupts, 2);
}

#[test]
fn periodic_only_device_ticks_by_itself_and_runs_hrtimers_from_the_tick() {
    let pit = FakeEventDevice::new("pit", 0, Features::PERIODIC, 1_193_182, 1, 0xffff);
    let mut m = Machine::with(TickConfig::default(), pit, 0);
    assert_eq!(m.cpu.mode(), TickDeviceMode::Periodic);
    assert!(matches!(
        m.cpu.event_device().device().calls.last(),
        Some(DeviceCall::Periodic(_))
    ));
    let t = m
        .cpu
        .hrtimer_create(
            ClockId::Monotonic,
            TimerFunction::new("record_hrtimer", record_hrtimer),
            3,
        )
        .unwrap();
    m.cpu
        .hrtimer_start(
            t,
            10_000_000,
            HrTimerMode::Absolute,
            0,
            0,
            StartInfo::kernel("t"),
        )
        .unwrap();
    assert_eq!(
        m.cpu.idle_enter(0, &mut m.jiffies).unwrap(),
        IdleDecision::TickKept(KeepReason::PeriodicDevice)
    );
    for tick in 1..=5u64 {
        m.cpu
            .interrupt(tick * PERIOD, &mut m.jiffies, &mut m.kernel)
            .unwrap();
    }
    // Runs at the first tick at or after 10 ms: 12 ms.
    assert_eq!(m.kernel.hrtimer_fired, [(3, 12_000_000)]);
    assert_eq!(m.jiffies.jiffies(), 5);
    assert_eq!(m.kernel.scheduler_ticks, 5);
}

#[test]
fn timer_stats_count_tick_and_callbacks() {
    let mut m = Machine::new(TickConfig::default());
    m.cpu.timer_stats_mut().start(0);
    let timer = m.cpu.timer_create(WHEEL_FN, 1, false).unwrap();
    m.cpu
        .timer_modify(timer, 10, 0, StartInfo::kernel("test_start"))
        .unwrap();
    m.run_until(SECOND);
    let mut text = String::new();
    crate::timer_stats::write_report(&mut text, SECOND, &[m.cpu.timer_stats()]).unwrap();
    assert!(
        text.contains("  250,     0 swapper          tick_setup_sched_timer (tick_sched_timer)\n"),
        "{text}"
    );
    assert!(
        text.contains("    1,     0 swapper          test_start (test_wheel_fn)\n"),
        "{text}"
    );
    assert!(
        text.ends_with("251 total events, 251.000 events/sec\n"),
        "{text}"
    );
}

#[test]
fn stale_wheel_and_tick_timer_ids_are_refused() {
    let mut m = Machine::new(TickConfig::default());
    let timer = m.cpu.timer_create(WHEEL_FN, 1, false).unwrap();
    m.cpu.timer_destroy(timer).unwrap();
    assert_eq!(m.cpu.timer_cancel(timer), Err(TickError::StaleTimer));
    let reused = m.cpu.timer_create(WHEEL_FN, 2, false).unwrap();
    assert_ne!(reused, timer);
    assert!(m
        .cpu
        .timer_modify(timer, 5, 0, StartInfo::kernel("x"))
        .is_err());
    let tick = m.cpu.tick_timer();
    assert!(m.cpu.hrtimer_cancel(tick, 0).is_err());
}

#[test]
fn wheel_callback_can_rearm_itself() {
    fn periodic(kernel: &mut Kernel, data: u64) -> WheelAction {
        kernel.wheel_fired.push((data, 0));
        if kernel.wheel_fired.len() < 3 {
            WheelAction::RearmAt(10 * (kernel.wheel_fired.len() as u64 + 1))
        } else {
            WheelAction::Done
        }
    }
    let mut m = Machine::new(TickConfig::default());
    let timer = m
        .cpu
        .timer_create(
            WheelFunction {
                name: "periodic",
                function: periodic,
            },
            4,
            false,
        )
        .unwrap();
    m.cpu
        .timer_modify(timer, 10, 0, StartInfo::kernel("x"))
        .unwrap();
    m.idle_until(SECOND);
    assert_eq!(m.kernel.wheel_fired.len(), 3);
    assert_eq!(m.interrupts, 3);
    assert!(!m.cpu.timer_pending(timer));
}

#[test]
fn boot_options() {
    let mut config = TickConfig::default();
    assert_eq!(config.apply_option("nohz", "off"), Ok(true));
    assert!(!config.nohz);
    assert_eq!(config.apply_option("highres", "0"), Ok(true));
    assert!(!config.high_res);
    assert_eq!(
        config.apply_option("nohz", "maybe"),
        Err(TickError::InvalidOption)
    );
    assert_eq!(config.apply_option("quiet", "on"), Ok(false));
    assert!(JiffiesClock::new(0, 0, 0).is_err());
    assert_eq!(tick_period_ns(250), PERIOD);
    assert_eq!(tick_period_ns(300), 3_333_333);
}

#[test]
fn highres_off_with_periodic_capable_device_uses_periodic_mode() {
    let config = TickConfig {
        high_res: false,
        ..TickConfig::default()
    };
    let m = Machine::new(config);
    assert_eq!(m.cpu.mode(), TickDeviceMode::Periodic);
    assert_eq!(m.cpu.event_device().state(), ClockEventState::Periodic);
}
