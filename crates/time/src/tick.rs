//! The tick: jiffies, the per-CPU tick device, tick-sched and tickless (nohz) idle.
//!
//! In high-resolution mode the periodic tick is just an hrtimer (`tick_sched_timer`) that
//! fires every `1/HZ` on a grid shared by all CPUs and re-arms itself. When a CPU goes idle
//! ([`PerCpuTime::idle_enter`]) and nothing is due within the next tick, the tick is
//! *stopped*: the tick hrtimer is moved to the next real event (the next timer-wheel expiry,
//! clamped to the clocksource's maximum deferment) or cancelled outright, so an idle CPU
//! with no timers takes no timer interrupts at all. [`PerCpuTime::idle_exit`] catches
//! jiffies up in one step and restarts the tick on the grid.
//!
//! With a periodic-only device (PIT) or `highres=off` the device interrupts every tick,
//! hrtimers run from the tick at tick resolution, and the tick cannot be stopped.
//!
//! Jiffies are global: [`JiffiesClock`] is shared by all CPUs behind the kernel's lock and
//! updated by the CPU holding the "do_timer" duty (or by any CPU waking from a tickless
//! idle, which finds them stale). Everything else here is per-CPU: [`PerCpuTime`] bundles a
//! CPU's event device, hrtimer base, tick-sched state, timer wheels and timer statistics.
//!
//! Context: every `PerCpuTime` method runs on its own CPU with interrupts disabled; the
//! kernel reaches the structure only through its per-CPU, interrupts-off guard.

use alloc::vec::Vec;
use core::fmt;

use lull_wheel::{TimerWheel, WheelError, WheelHandle};

use crate::clockevents::{
    ClockEvent, ClockEventDevice, ClockEventError, ClockEventState, Features,
};
use crate::clocksource::NSEC_PER_SEC;
use crate::hrtimer::{
    ClockId, FiringTimer, HrTimerCpuBase, HrTimerError, HrTimerId, HrTimerMode, HrTimerRestart,
    TimerFunction as TimerFunctionName,
};
use crate::timer_stats::{StartInfo, TimerStats};

/// Ticks per second chosen at build time (Linux's `CONFIG_HZ`). 250 gives a 4 ms tick.
pub const HZ: u32 = 250;

/// Nanoseconds per tick for `hz` (Linux's `TICK_NSEC`, rounded to nearest).
pub const fn tick_period_ns(hz: u32) -> u64 {
    (NSEC_PER_SEC + hz as u64 / 2) / hz as u64
}

/// Boot-time tick configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickConfig {
    /// Ticks per second.
    pub hz: u32,
    /// Stop the tick while idle (`nohz=off` clears it).
    pub nohz: bool,
    /// Use the event device in one-shot mode for high-resolution timers (`highres=off`
    /// clears it; needs a one-shot capable device).
    pub high_res: bool,
    /// The longest a CPU may go without a tick (the timekeeping clocksource's maximum
    /// deferment, [`crate::timekeeping::Timekeeper::max_deferment_ns`]).
    pub max_deferment_ns: u64,
}

impl Default for TickConfig {
    fn default() -> Self {
        Self {
            hz: HZ,
            nohz: true,
            high_res: true,
            max_deferment_ns: u64::MAX,
        }
    }
}

impl TickConfig {
    /// Applies one boot option (`nohz=on|off`, `highres=on|off`). Returns `Ok(false)` for
    /// options that are not the tick's, and an error for a bad value.
    pub fn apply_option(&mut self, key: &str, value: &str) -> Result<bool, TickError> {
        let flag = match value {
            "on" | "1" => true,
            "off" | "0" => false,
            _ if key == "nohz" || key == "highres" => {
                return Err(TickError::InvalidOption);
            }
            _ => return Ok(false),
        };
        match key {
            "nohz" => self.nohz = flag,
            "highres" => self.high_res = flag,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Errors from the tick layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickError {
    /// `hz` must be 1..=10000.
    InvalidHz(u32),
    /// The device can neither interrupt periodically nor in one-shot mode.
    NoUsableDevice,
    /// A boot option value other than on/off/1/0.
    InvalidOption,
    /// The wheel timer id is stale.
    StaleTimer,
    /// The event device refused.
    ClockEvent(ClockEventError),
    /// The hrtimer layer refused.
    HrTimer(HrTimerError),
    /// The wheel refused.
    Wheel(WheelError),
}

impl fmt::Display for TickError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TickError::InvalidHz(hz) => write!(f, "tick: HZ={hz} is out of range 1..=10000"),
            TickError::NoUsableDevice => {
                f.write_str("tick: clock event device supports neither periodic nor one-shot")
            }
            TickError::InvalidOption => f.write_str("tick: option value must be on or off"),
            TickError::StaleTimer => f.write_str("tick: stale wheel timer id"),
            TickError::ClockEvent(error) => write!(f, "tick: {error}"),
            TickError::HrTimer(error) => write!(f, "tick: {error}"),
            TickError::Wheel(error) => write!(f, "tick: wheel: {error}"),
        }
    }
}

impl From<ClockEventError> for TickError {
    fn from(error: ClockEventError) -> Self {
        TickError::ClockEvent(error)
    }
}

impl From<HrTimerError> for TickError {
    fn from(error: HrTimerError) -> Self {
        TickError::HrTimer(error)
    }
}

impl From<WheelError> for TickError {
    fn from(error: WheelError) -> Self {
        TickError::Wheel(error)
    }
}

/// The global jiffies counter and the monotonic time of its last update (Linux's
/// `jiffies_64` + `last_jiffies_update` + `tick_do_timer_cpu`), shared by all CPUs behind
/// the kernel's lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JiffiesClock {
    jiffies: u64,
    last_update_ns: u64,
    period_ns: u64,
    do_timer_cpu: Option<u32>,
}

impl JiffiesClock {
    /// Jiffies start at `initial_jiffies` at monotonic time `now_ns`. (Linux starts them five
    /// minutes before a 32-bit wrap to flush out wrap bugs; a Lull kernel may start near
    /// `u64::MAX` for the same reason — everything here compares with wrapping differences.)
    pub fn new(initial_jiffies: u64, now_ns: u64, hz: u32) -> Result<Self, TickError> {
        if hz == 0 || hz > 10_000 {
            return Err(TickError::InvalidHz(hz));
        }
        Ok(Self {
            jiffies: initial_jiffies,
            last_update_ns: now_ns,
            period_ns: tick_period_ns(hz),
            do_timer_cpu: None,
        })
    }

    /// Current jiffies.
    pub fn jiffies(&self) -> u64 {
        self.jiffies
    }

    /// Monotonic ns of the last jiffy (a point on the tick grid).
    pub fn last_update_ns(&self) -> u64 {
        self.last_update_ns
    }

    /// Tick period in ns.
    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// Monotonic ns of the next jiffy.
    pub fn next_tick_ns(&self) -> u64 {
        self.last_update_ns.saturating_add(self.period_ns)
    }

    /// The CPU responsible for advancing jiffies, if any (none while all CPUs sleep tickless).
    pub fn do_timer_cpu(&self) -> Option<u32> {
        self.do_timer_cpu
    }

    /// Advances jiffies to `now_ns` in one step (however long the CPU slept); returns the
    /// number of jiffies added. Time before the last update is ignored.
    pub fn update(&mut self, now_ns: u64) -> u64 {
        if now_ns < self.next_tick_ns() {
            return 0;
        }
        let ticks = (now_ns - self.last_update_ns) / self.period_ns;
        self.jiffies = self.jiffies.wrapping_add(ticks);
        self.last_update_ns += ticks * self.period_ns;
        ticks
    }

    /// Monotonic ns at which jiffy `target` begins (the last update time if already past).
    pub fn jiffies_to_ns(&self, target: u64) -> u64 {
        let ahead = target.wrapping_sub(self.jiffies) as i64;
        if ahead <= 0 {
            return self.last_update_ns;
        }
        self.last_update_ns
            .saturating_add((ahead as u64).saturating_mul(self.period_ns))
    }

    fn take_duty_if_free(&mut self, cpu: u32) {
        if self.do_timer_cpu.is_none() {
            self.do_timer_cpu = Some(cpu);
        }
    }
}

/// Hooks the tick calls into the rest of the kernel.
pub trait TickContext {
    /// Per-CPU scheduler bookkeeping on every tick (Linux's `update_process_times`).
    fn scheduler_tick(&mut self, cpu: u32, now_ns: u64) {
        let _ = (cpu, now_ns);
    }
    /// This CPU advanced jiffies by `ticks`: update timekeeping (`Timekeeper::update`).
    fn jiffies_advanced(&mut self, ticks: u64, now_ns: u64) {
        let _ = (ticks, now_ns);
    }
}

/// An hrtimer callback: gets the kernel context and the firing timer (to read its data or
/// forward it), returns whether to restart. It cannot start other timers (the base is busy):
/// record the wish in the context and do it after the interrupt returns.
pub type HrTimerCallback<C> = fn(&mut C, &mut FiringTimer<TimerFunction<C>>) -> HrTimerRestart;

enum FunctionKind<C> {
    TickSched,
    Callback(HrTimerCallback<C>),
}

/// Identity of an hrtimer callback of a [`PerCpuTime`]: a function and its name.
pub struct TimerFunction<C> {
    name: &'static str,
    kind: FunctionKind<C>,
}

impl<C> TimerFunction<C> {
    /// A callback named `name` (shown in timer_list / timer_stats).
    pub const fn new(name: &'static str, callback: HrTimerCallback<C>) -> Self {
        Self {
            name,
            kind: FunctionKind::Callback(callback),
        }
    }

    const fn tick_sched() -> Self {
        Self {
            name: "tick_sched_timer",
            kind: FunctionKind::TickSched,
        }
    }
}

impl<C> Clone for TimerFunction<C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for TimerFunction<C> {}

impl<C> Clone for FunctionKind<C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for FunctionKind<C> {}

impl<C> fmt::Debug for TimerFunction<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl<C> TimerFunctionName for TimerFunction<C> {
    fn name(&self) -> &'static str {
        self.name
    }
}

/// What a wheel timer callback wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WheelAction {
    /// Leave the timer disarmed.
    Done,
    /// Re-arm it for this jiffy.
    RearmAt(u64),
}

/// A wheel (jiffies) timer callback and its name.
pub struct WheelFunction<C> {
    /// Name for timer_stats.
    pub name: &'static str,
    /// The callback; gets the data word given at creation.
    pub function: fn(&mut C, u64) -> WheelAction,
}

impl<C> Clone for WheelFunction<C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for WheelFunction<C> {}

/// Names one wheel timer object of one [`PerCpuTime`]; refused after destroy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WheelTimerId {
    index: u32,
    generation: u32,
}

struct WheelSlot<C> {
    generation: u32,
    live: bool,
    function: WheelFunction<C>,
    data: u64,
    deferrable: bool,
    armed: Option<WheelHandle>,
    start: StartInfo,
}

/// How the tick device is driven (Linux's `TICKDEV_MODE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickDeviceMode {
    /// The device interrupts every tick by itself.
    Periodic = 0,
    /// The device is programmed event by event (high resolution, nohz possible).
    OneShot = 1,
}

/// Linux's `nohz_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NohzMode {
    /// The tick is never stopped.
    #[default]
    Inactive = 0,
    /// Tickless with a low-resolution device (not used by Lull).
    LowRes = 1,
    /// Tickless on top of high-resolution timers.
    HighRes = 2,
}

/// Tick-sched state and statistics of one CPU (the `/proc/timer_list` fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickSched {
    /// Tickless mode.
    pub nohz_mode: NohzMode,
    /// Expiry of the tick when it was last stopped (ns).
    pub last_tick: u64,
    /// The tick is stopped.
    pub tick_stopped: bool,
    /// Jiffies when the tick was stopped.
    pub idle_jiffies: u64,
    /// Times the CPU entered idle (`idle_enter` calls).
    pub idle_calls: u64,
    /// Times the tick was stopped (or re-stopped) for idle.
    pub idle_sleeps: u64,
    /// The CPU is idle.
    pub idle_active: bool,
    /// When idle was entered (ns).
    pub idle_entrytime: u64,
    /// When idle was left (ns).
    pub idle_exittime: u64,
    /// Total time idle (ns).
    pub idle_sleeptime: u64,
    /// Jiffies at the last idle decision.
    pub last_jiffies: u64,
    /// Next timer event found at the last idle decision (ns; `u64::MAX` none).
    pub next_timer: u64,
    /// When the stopped tick is due to fire again (ns; `u64::MAX` never).
    pub idle_expires: u64,
}

/// Why [`PerCpuTime::idle_enter`] kept the tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// `nohz=off`.
    NohzDisabled,
    /// The tick device is periodic.
    PeriodicDevice,
    /// A timer is due within the next tick anyway.
    EventWithinNextTick,
}

/// Outcome of [`PerCpuTime::idle_enter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleDecision {
    /// The tick is stopped; the CPU sleeps until the next event (none: until an interrupt).
    TickStopped {
        /// When the device will next fire (monotonic ns), if at all.
        next_event_ns: Option<u64>,
    },
    /// The tick keeps running.
    TickKept(KeepReason),
}

/// Outcome of [`PerCpuTime::idle_exit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleExit {
    /// Jiffies added in one step to catch up with the time slept.
    pub jiffies_caught_up: u64,
    /// Whether the tick had been stopped and was restarted.
    pub tick_restarted: bool,
}

/// What one timer interrupt did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptReport {
    /// hrtimer callbacks run (the tick included).
    pub hrtimers_run: usize,
    /// Wheel timer callbacks run.
    pub wheel_timers_run: usize,
    /// Jiffies this CPU added.
    pub jiffies_advanced: u64,
}

const NO_SLOT: u32 = u32::MAX;

/// Everything time-related one CPU owns; see the module documentation.
pub struct PerCpuTime<D, C> {
    cpu: u32,
    config: TickConfig,
    mode: TickDeviceMode,
    period_ns: u64,
    event: ClockEvent<D>,
    hrtimers: HrTimerCpuBase<TimerFunction<C>>,
    tick_timer: HrTimerId,
    tick: TickSched,
    /// `[standard, deferrable]`: deferrable timers do not wake an idle CPU.
    wheels: [TimerWheel<u32>; 2],
    wheel_slots: Vec<WheelSlot<C>>,
    wheel_free: u32,
    stats: TimerStats,
}

impl<D: ClockEventDevice, C: TickContext> PerCpuTime<D, C> {
    /// Binds `device` as CPU `cpu`'s tick device (it is shut down until [`start`](Self::start)).
    pub fn new(
        cpu: u32,
        device: D,
        config: TickConfig,
        jiffies: &JiffiesClock,
    ) -> Result<Self, TickError> {
        if config.hz == 0 || config.hz > 10_000 {
            return Err(TickError::InvalidHz(config.hz));
        }
        let period_ns = jiffies.period_ns();
        let features = device.features();
        let mode = if features.contains(Features::ONESHOT)
            && (config.high_res || !features.contains(Features::PERIODIC))
        {
            TickDeviceMode::OneShot
        } else if features.contains(Features::PERIODIC) {
            TickDeviceMode::Periodic
        } else {
            return Err(TickError::NoUsableDevice);
        };
        let mut event = ClockEvent::new(device, period_ns)?;
        event.switch_state(ClockEventState::Shutdown)?;
        event.set_handler_name(match mode {
            TickDeviceMode::OneShot => "hrtimer_interrupt",
            TickDeviceMode::Periodic => "tick_handle_periodic",
        });
        let mut hrtimers = HrTimerCpuBase::new(cpu);
        let tick_timer = hrtimers.create(ClockId::Monotonic, TimerFunction::tick_sched(), 0)?;
        let now_jiffies = jiffies.jiffies();
        Ok(Self {
            cpu,
            config,
            mode,
            period_ns,
            event,
            hrtimers,
            tick_timer,
            tick: TickSched::default(),
            wheels: [TimerWheel::new(now_jiffies), TimerWheel::new(now_jiffies)],
            wheel_slots: Vec::new(),
            wheel_free: NO_SLOT,
            stats: TimerStats::new(),
        })
    }

    /// Starts ticking: periodic device mode, or one-shot with the tick hrtimer aligned to
    /// the global jiffies grid.
    pub fn start(&mut self, now: u64, jiffies: &mut JiffiesClock) -> Result<(), TickError> {
        jiffies.take_duty_if_free(self.cpu);
        match self.mode {
            TickDeviceMode::Periodic => {
                self.event.switch_state(ClockEventState::Periodic)?;
                self.tick.nohz_mode = NohzMode::Inactive;
            }
            TickDeviceMode::OneShot => {
                self.event.switch_state(ClockEventState::OneShot)?;
                self.hrtimers.switch_to_high_res(&mut self.event, now)?;
                let first = first_grid_point_after(jiffies, now);
                self.hrtimers.start(
                    &mut self.event,
                    self.tick_timer,
                    first,
                    HrTimerMode::Absolute,
                    0,
                    now,
                    Some(StartInfo::kernel("tick_setup_sched_timer")),
                )?;
                self.tick.nohz_mode = if self.config.nohz {
                    NohzMode::HighRes
                } else {
                    NohzMode::Inactive
                };
            }
        }
        Ok(())
    }

    /// Stops this CPU's tick device (CPU going offline): the device is shut down and the
    /// jiffies duty handed back.
    pub fn stop(&mut self, now: u64, jiffies: &mut JiffiesClock) -> Result<(), TickError> {
        self.hrtimers
            .cancel(&mut self.event, self.tick_timer, now)?;
        self.event.switch_state(ClockEventState::Shutdown)?;
        if jiffies.do_timer_cpu == Some(self.cpu) {
            jiffies.do_timer_cpu = None;
        }
        Ok(())
    }

    /// The tick device interrupted (call from the timer interrupt handler with the current
    /// monotonic time): runs due hrtimers (the tick among them), then due wheel timers.
    pub fn interrupt(
        &mut self,
        now: u64,
        jiffies: &mut JiffiesClock,
        context: &mut C,
    ) -> Result<InterruptReport, TickError> {
        let mut report = InterruptReport::default();
        if self.tick.tick_stopped {
            // Woken from tickless idle: jiffies may be stale whoever holds the duty.
            report.jiffies_advanced += advance_jiffies(jiffies, now, context);
        }
        let Self {
            cpu,
            mode,
            period_ns,
            event,
            hrtimers,
            tick,
            stats,
            ..
        } = self;
        let (cpu, period_ns) = (*cpu, *period_ns);
        let mut advanced = 0;
        let mut dispatch = |firing: &mut FiringTimer<TimerFunction<C>>| {
            let function = firing.function();
            if let Some(start) = firing.start_info() {
                stats.account(start, function.name, false);
            }
            match function.kind {
                FunctionKind::TickSched => {
                    let (restart, ticks) =
                        tick_sched_timer(cpu, tick, jiffies, context, firing, period_ns);
                    advanced += ticks;
                    restart
                }
                FunctionKind::Callback(callback) => callback(context, firing),
            }
        };
        report.hrtimers_run = match mode {
            TickDeviceMode::OneShot => hrtimers.interrupt(event, now, &mut dispatch)?,
            TickDeviceMode::Periodic => hrtimers.run_expired(now, &mut dispatch),
        };
        if *mode == TickDeviceMode::Periodic {
            // The device itself is the tick.
            jiffies.take_duty_if_free(cpu);
            if jiffies.do_timer_cpu == Some(cpu) {
                advanced += advance_jiffies(jiffies, now, context);
            }
            context.scheduler_tick(cpu, now);
        }
        report.jiffies_advanced += advanced;
        report.wheel_timers_run = self.run_wheels(jiffies.jiffies(), context);
        Ok(report)
    }

    /// Runs due wheel timers (Linux runs them from the timer softirq after the tick).
    fn run_wheels(&mut self, now_jiffies: u64, context: &mut C) -> usize {
        let mut ran = 0;
        for deferrable in [false, true] {
            let wheel = usize::from(deferrable);
            while let Some(expired) = self.wheels[wheel].pop_expired(now_jiffies) {
                let index = expired.value;
                let Some(slot) = self.wheel_slots.get_mut(index as usize) else {
                    continue;
                };
                slot.armed = None;
                let (function, data) = (slot.function, slot.data);
                self.stats.account(&slot.start, function.name, deferrable);
                ran += 1;
                if let WheelAction::RearmAt(at) = (function.function)(context, data) {
                    if let Ok(handle) = self.wheels[wheel].insert(at, index) {
                        self.wheel_slots[index as usize].armed = Some(handle);
                    }
                }
            }
        }
        ran
    }

    /// The CPU is about to idle (call from the idle loop with interrupts disabled, again after
    /// every wakeup that does not end idle). Stops the tick if nothing is due within the next
    /// tick and nohz is enabled; the device is then programmed for the next real event.
    pub fn idle_enter(
        &mut self,
        now: u64,
        jiffies: &mut JiffiesClock,
    ) -> Result<IdleDecision, TickError> {
        self.tick.idle_calls += 1;
        if self.tick.idle_active {
            self.tick.idle_sleeptime += now.saturating_sub(self.tick.idle_entrytime);
        }
        self.tick.idle_active = true;
        self.tick.idle_entrytime = now;
        if self.mode == TickDeviceMode::Periodic {
            return Ok(IdleDecision::TickKept(KeepReason::PeriodicDevice));
        }
        if !self.config.nohz {
            return Ok(IdleDecision::TickKept(KeepReason::NohzDisabled));
        }
        let base_ns = jiffies.last_update_ns();
        self.tick.last_jiffies = jiffies.jiffies();
        // Deferrable wheel timers are ignored: they never wake an idle CPU.
        let next_wheel = self.wheels[0]
            .next_expiry()
            .map(|j| jiffies.jiffies_to_ns(j));
        let next_hrtimer = self.hrtimers.next_event_without(Some(self.tick_timer));
        let next = match (next_wheel, next_hrtimer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.tick.next_timer = next.unwrap_or(u64::MAX);
        let delta = next.map_or(u64::MAX, |n| n.saturating_sub(base_ns));
        if delta <= self.period_ns && !self.tick.tick_stopped {
            return Ok(IdleDecision::TickKept(KeepReason::EventWithinNextTick));
        }
        let delta = delta.min(self.config.max_deferment_ns);
        let expires = if delta == u64::MAX {
            u64::MAX
        } else {
            base_ns.saturating_add(delta)
        };
        if !self.tick.tick_stopped {
            self.tick.last_tick = self
                .hrtimers
                .expires(self.tick_timer)
                .map_or(0, |(_, hard)| hard);
            self.tick.tick_stopped = true;
            self.tick.idle_jiffies = jiffies.jiffies();
            if jiffies.do_timer_cpu == Some(self.cpu) {
                jiffies.do_timer_cpu = None;
            }
        }
        self.tick.idle_sleeps += 1;
        self.tick.idle_expires = expires;
        if expires == u64::MAX {
            self.hrtimers
                .cancel(&mut self.event, self.tick_timer, now)?;
        } else {
            self.hrtimers.start(
                &mut self.event,
                self.tick_timer,
                expires,
                HrTimerMode::Absolute,
                0,
                now,
                None,
            )?;
        }
        Ok(IdleDecision::TickStopped {
            next_event_ns: self.event.next_event_ns(),
        })
    }

    /// The CPU leaves idle: accounts the idle time, catches jiffies up in one step and
    /// restarts the tick on the jiffies grid if it was stopped.
    pub fn idle_exit(
        &mut self,
        now: u64,
        jiffies: &mut JiffiesClock,
        context: &mut C,
    ) -> Result<IdleExit, TickError> {
        if self.tick.idle_active {
            self.tick.idle_sleeptime += now.saturating_sub(self.tick.idle_entrytime);
            self.tick.idle_active = false;
            self.tick.idle_exittime = now;
        }
        if !self.tick.tick_stopped {
            return Ok(IdleExit {
                jiffies_caught_up: 0,
                tick_restarted: false,
            });
        }
        let caught_up = advance_jiffies(jiffies, now, context);
        jiffies.take_duty_if_free(self.cpu);
        self.tick.tick_stopped = false;
        self.tick.idle_expires = u64::MAX;
        let next = first_grid_point_after(jiffies, now);
        self.hrtimers.start(
            &mut self.event,
            self.tick_timer,
            next,
            HrTimerMode::Absolute,
            0,
            now,
            None,
        )?;
        Ok(IdleExit {
            jiffies_caught_up: caught_up,
            tick_restarted: true,
        })
    }

    // ---- hrtimers -------------------------------------------------------------------------

    /// Creates an hrtimer on `clock` running `function` with `data` (Linux `hrtimer_setup`).
    pub fn hrtimer_create(
        &mut self,
        clock: ClockId,
        function: TimerFunction<C>,
        data: u64,
    ) -> Result<HrTimerId, TickError> {
        Ok(self.hrtimers.create(clock, function, data)?)
    }

    /// Starts (or moves) an hrtimer; see [`HrTimerCpuBase::start`]. Refuses the tick timer.
    pub fn hrtimer_start(
        &mut self,
        id: HrTimerId,
        expires: u64,
        mode: HrTimerMode,
        slack_ns: u64,
        now: u64,
        start: StartInfo,
    ) -> Result<(), TickError> {
        self.refuse_tick_timer(id)?;
        self.hrtimers.start(
            &mut self.event,
            id,
            expires,
            mode,
            slack_ns,
            now,
            Some(start),
        )?;
        Ok(())
    }

    /// Cancels an hrtimer; returns whether it was queued.
    pub fn hrtimer_cancel(&mut self, id: HrTimerId, now: u64) -> Result<bool, TickError> {
        self.refuse_tick_timer(id)?;
        Ok(self.hrtimers.cancel(&mut self.event, id, now)?)
    }

    /// Cancels and frees an hrtimer.
    pub fn hrtimer_destroy(&mut self, id: HrTimerId, now: u64) -> Result<(), TickError> {
        self.refuse_tick_timer(id)?;
        Ok(self.hrtimers.destroy(&mut self.event, id, now)?)
    }

    fn refuse_tick_timer(&self, id: HrTimerId) -> Result<(), TickError> {
        if id == self.tick_timer {
            Err(TickError::HrTimer(HrTimerError::StaleId))
        } else {
            Ok(())
        }
    }

    /// The wall clock was set: the new realtime offset re-evaluates realtime timers.
    pub fn set_realtime_offset(&mut self, offset_ns: i64, now: u64) -> Result<(), TickError> {
        Ok(self
            .hrtimers
            .set_realtime_offset(&mut self.event, offset_ns, now)?)
    }

    // ---- wheel timers ---------------------------------------------------------------------

    /// Creates a disarmed wheel timer (Linux `timer_setup`). Deferrable timers still run when
    /// due on a ticking CPU, but never wake an idle one.
    pub fn timer_create(
        &mut self,
        function: WheelFunction<C>,
        data: u64,
        deferrable: bool,
    ) -> Result<WheelTimerId, TickError> {
        let slot = WheelSlot {
            generation: 0,
            live: true,
            function,
            data,
            deferrable,
            armed: None,
            start: StartInfo::kernel("timer_setup"),
        };
        if self.wheel_free != NO_SLOT {
            let index = self.wheel_free;
            let existing = &mut self.wheel_slots[index as usize];
            self.wheel_free = existing.data as u32;
            let generation = existing.generation;
            *existing = WheelSlot { generation, ..slot };
            return Ok(WheelTimerId { index, generation });
        }
        let index = u32::try_from(self.wheel_slots.len()).map_err(|_| WheelError::Full)?;
        if index == NO_SLOT {
            return Err(TickError::Wheel(WheelError::Full));
        }
        self.wheel_slots.push(slot);
        Ok(WheelTimerId {
            index,
            generation: 0,
        })
    }

    fn wheel_slot(&self, id: WheelTimerId) -> Result<&WheelSlot<C>, TickError> {
        match self.wheel_slots.get(id.index as usize) {
            Some(slot) if slot.live && slot.generation == id.generation => Ok(slot),
            _ => Err(TickError::StaleTimer),
        }
    }

    /// Arms or moves a wheel timer to jiffy `expires` (Linux `mod_timer`); returns whether it
    /// was already armed. If this CPU's tick is stopped, the tick is kicked so the idle loop
    /// re-evaluates its sleep (Linux sends the idle CPU an IPI for the same reason).
    pub fn timer_modify(
        &mut self,
        id: WheelTimerId,
        expires: u64,
        now: u64,
        start: StartInfo,
    ) -> Result<bool, TickError> {
        let slot = self.wheel_slot(id)?;
        let wheel = usize::from(slot.deferrable);
        let was_armed = match slot.armed {
            Some(handle) => {
                self.wheels[wheel].modify(handle, expires)?;
                true
            }
            None => {
                let handle = self.wheels[wheel].insert(expires, id.index)?;
                self.wheel_slots[id.index as usize].armed = Some(handle);
                false
            }
        };
        self.wheel_slots[id.index as usize].start = start;
        if self.tick.tick_stopped && wheel == 0 {
            self.hrtimers.start(
                &mut self.event,
                self.tick_timer,
                now,
                HrTimerMode::Absolute,
                0,
                now,
                None,
            )?;
        }
        Ok(was_armed)
    }

    /// Disarms a wheel timer (Linux `del_timer`); returns whether it was armed.
    pub fn timer_cancel(&mut self, id: WheelTimerId) -> Result<bool, TickError> {
        let slot = self.wheel_slot(id)?;
        let wheel = usize::from(slot.deferrable);
        match slot.armed {
            Some(handle) => {
                self.wheels[wheel].cancel(handle)?;
                self.wheel_slots[id.index as usize].armed = None;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// True while the wheel timer is armed.
    pub fn timer_pending(&self, id: WheelTimerId) -> bool {
        self.wheel_slot(id).is_ok_and(|slot| slot.armed.is_some())
    }

    /// Disarms and frees a wheel timer; its id is refused afterwards.
    pub fn timer_destroy(&mut self, id: WheelTimerId) -> Result<(), TickError> {
        self.timer_cancel(id)?;
        let slot = &mut self.wheel_slots[id.index as usize];
        slot.live = false;
        if let Some(next) = slot.generation.checked_add(1) {
            slot.generation = next;
            // The free list is threaded through `data` of dead slots.
            slot.data = u64::from(self.wheel_free);
            self.wheel_free = id.index;
        }
        Ok(())
    }

    // ---- views ----------------------------------------------------------------------------

    /// This CPU's number.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// The configuration in force.
    pub fn config(&self) -> TickConfig {
        self.config
    }

    /// Periodic or one-shot.
    pub fn mode(&self) -> TickDeviceMode {
        self.mode
    }

    /// The tick device.
    pub fn event_device(&self) -> &ClockEvent<D> {
        &self.event
    }

    /// The tick device, mutably (driver maintenance only).
    pub fn event_device_mut(&mut self) -> &mut ClockEvent<D> {
        &mut self.event
    }

    /// The hrtimer base.
    pub fn hrtimers(&self) -> &HrTimerCpuBase<TimerFunction<C>> {
        &self.hrtimers
    }

    /// The tick hrtimer's id.
    pub fn tick_timer(&self) -> HrTimerId {
        self.tick_timer
    }

    /// Tick-sched state and statistics.
    pub fn tick_sched(&self) -> &TickSched {
        &self.tick
    }

    /// Armed wheel timers (standard + deferrable).
    pub fn wheel_timers_armed(&self) -> usize {
        self.wheels[0].len() + self.wheels[1].len()
    }

    /// This CPU's timer statistics.
    pub fn timer_stats(&self) -> &TimerStats {
        &self.stats
    }

    /// This CPU's timer statistics, to start/stop/clear.
    pub fn timer_stats_mut(&mut self) -> &mut TimerStats {
        &mut self.stats
    }
}

/// Jiffies grid point strictly after `now`.
fn first_grid_point_after(jiffies: &JiffiesClock, now: u64) -> u64 {
    let base = jiffies.last_update_ns();
    let period = jiffies.period_ns();
    if now < base {
        return base;
    }
    base.saturating_add(((now - base) / period + 1).saturating_mul(period))
}

fn advance_jiffies<C: TickContext>(jiffies: &mut JiffiesClock, now: u64, context: &mut C) -> u64 {
    let ticks = jiffies.update(now);
    if ticks > 0 {
        context.jiffies_advanced(ticks, now);
    }
    ticks
}

/// The tick hrtimer's callback (Linux `tick_sched_timer`): jiffies duty, scheduler tick,
/// re-arm one period later — unless the tick is stopped (the CPU is tickless-idle and this
/// was a wakeup for a wheel timer), in which case the idle loop decides what comes next.
fn tick_sched_timer<C: TickContext>(
    cpu: u32,
    tick: &mut TickSched,
    jiffies: &mut JiffiesClock,
    context: &mut C,
    firing: &mut FiringTimer<TimerFunction<C>>,
    period_ns: u64,
) -> (HrTimerRestart, u64) {
    let now = firing.now();
    jiffies.take_duty_if_free(cpu);
    let mut ticks = 0;
    if jiffies.do_timer_cpu == Some(cpu) || tick.tick_stopped {
        ticks = advance_jiffies(jiffies, now, context);
    }
    if tick.tick_stopped {
        return (HrTimerRestart::NoRestart, ticks);
    }
    context.scheduler_tick(cpu, now);
    firing.forward(period_ns);
    (HrTimerRestart::Restart, ticks)
}

#[cfg(test)]
mod tests;
