//! Clock event devices: programmable interrupt sources and their explicit state machine.
//!
//! A clock event device raises an interrupt after a programmed number of its cycles (LAPIC
//! timer one-shot, TSC-deadline, HPET comparator) or periodically (PIT, LAPIC periodic). The
//! kernel implements [`ClockEventDevice`] for the hardware; [`ClockEvent`] wraps it with the
//! logic Linux keeps in `struct clock_event_device` and `kernel/time/clockevents.c`: the
//! ns↔cycles factors, the min/max programmable delta, the current state, and the rules for
//! changing state.
//!
//! # States and legal transitions
//!
//! | from \ to          | Detached | Shutdown | Periodic | OneShot | OneShotStopped |
//! |--------------------|----------|----------|----------|---------|----------------|
//! | **Detached**       | (no-op)  | yes      | no       | no      | no             |
//! | **Shutdown**       | yes      | (no-op)  | yes¹     | yes²    | no             |
//! | **Periodic**       | yes      | yes      | (no-op)  | yes²    | no             |
//! | **OneShot**        | yes      | yes      | yes¹     | (no-op) | yes            |
//! | **OneShotStopped** | yes      | yes      | yes¹     | yes²    | (no-op)        |
//!
//! ¹ only with [`Features::PERIODIC`]; ² only with [`Features::ONESHOT`]. A detached device
//! belongs to nobody and must be bound (shut down) before use; "stopped" only makes sense for
//! a one-shot device that has nothing to do. Same-state requests succeed without touching the
//! hardware. Leaving for `Detached` shuts the hardware down. Illegal requests are refused with
//! [`ClockEventError::IllegalTransition`] and leave the state unchanged.

use core::fmt;

use crate::clocksource::{calc_mult_shift, MultShift, NSEC_PER_SEC};

/// Capabilities of a clock event device (Linux `CLOCK_EVT_FEAT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Features(u32);

impl Features {
    /// Can interrupt periodically on its own.
    pub const PERIODIC: Features = Features(1 << 0);
    /// Can be programmed for a single interrupt after a delta.
    pub const ONESHOT: Features = Features(1 << 1);
    /// Programmed with an absolute deadline by the driver (TSC-deadline); the framework still
    /// hands it a delta in cycles.
    pub const DEADLINE: Features = Features(1 << 2);
    /// Stops in deep C-states (needs a broadcast device then).
    pub const C3STOP: Features = Features(1 << 3);
    /// A per-CPU device (LAPIC) rather than a global one (HPET, PIT).
    pub const PER_CPU: Features = Features(1 << 6);

    /// No features.
    pub const fn empty() -> Self {
        Features(0)
    }

    /// True when every feature in `other` is present.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// Union of two feature sets.
    pub const fn union(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }

    /// Raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl core::ops::BitOr for Features {
    type Output = Features;
    fn bitor(self, other: Features) -> Features {
        self.union(other)
    }
}

/// Errors a device driver reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The requested event time has already passed (Linux `-ETIME`, e.g. an HPET comparator
    /// set behind the counter). The framework retries with the minimum delta.
    Time,
    /// The device cannot do this.
    Unsupported,
    /// The hardware refused; the text says what.
    Hardware(&'static str),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Time => f.write_str("event time already passed"),
            DeviceError::Unsupported => f.write_str("operation not supported by the device"),
            DeviceError::Hardware(what) => write!(f, "hardware error: {what}"),
        }
    }
}

/// A programmable timer interrupt source, implemented by the kernel for each device.
///
/// Context: all methods are called with interrupts disabled on the CPU that owns the device.
pub trait ClockEventDevice {
    /// Name shown in `/proc/timer_list` (`lapic`, `lapic-deadline`, `hpet`, `pit`).
    fn name(&self) -> &'static str;
    /// Quality; the best-rated device with the needed features is used.
    fn rating(&self) -> u32;
    /// Capabilities.
    fn features(&self) -> Features;
    /// Frequency of the cycles `set_next_event` counts, in Hz (LAPIC: calibrated bus clock
    /// divided by the divide configuration; TSC-deadline: TSC frequency).
    fn frequency_hz(&self) -> u64;
    /// Smallest delta the device can be programmed with, in its cycles.
    fn min_delta_cycles(&self) -> u64;
    /// Largest delta the device can be programmed with, in its cycles.
    fn max_delta_cycles(&self) -> u64;
    /// Stop raising interrupts.
    fn set_state_shutdown(&mut self) -> Result<(), DeviceError>;
    /// Raise an interrupt every `period_cycles`.
    fn set_state_periodic(&mut self, period_cycles: u64) -> Result<(), DeviceError>;
    /// Prepare for one-shot programming (no interrupt until `set_next_event`).
    fn set_state_oneshot(&mut self) -> Result<(), DeviceError>;
    /// One-shot mode with nothing to do: stop the pending event. Defaults to a shutdown.
    fn set_state_oneshot_stopped(&mut self) -> Result<(), DeviceError> {
        self.set_state_shutdown()
    }
    /// Raise one interrupt `cycles` from now (`min_delta_cycles..=max_delta_cycles`).
    fn set_next_event(&mut self, cycles: u64) -> Result<(), DeviceError>;
}

/// The state of a clock event device (numbered as Linux's `enum clock_event_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockEventState {
    /// Not used by any tick device.
    Detached = 0,
    /// Bound but silent.
    Shutdown = 1,
    /// Interrupting every tick period.
    Periodic = 2,
    /// Programmed event by event.
    OneShot = 3,
    /// One-shot, with nothing programmed.
    OneShotStopped = 4,
}

impl ClockEventState {
    /// The legal-transition table from the module documentation.
    pub const fn may_switch_to(self, to: ClockEventState) -> bool {
        use ClockEventState::*;
        matches!(
            (self, to),
            (Detached, Detached | Shutdown)
                | (Shutdown, _)
                | (Periodic, Detached | Shutdown | Periodic | OneShot)
                | (OneShot, _)
                | (OneShotStopped, _)
        ) && !matches!((self, to), (Shutdown | Periodic, OneShotStopped))
    }

    /// All states, for exhaustive checks.
    pub const ALL: [ClockEventState; 5] = [
        ClockEventState::Detached,
        ClockEventState::Shutdown,
        ClockEventState::Periodic,
        ClockEventState::OneShot,
        ClockEventState::OneShotStopped,
    ];
}

/// Errors from [`ClockEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClockEventError {
    /// The transition is not in the table (module documentation).
    IllegalTransition {
        /// Current state.
        from: ClockEventState,
        /// Requested state.
        to: ClockEventState,
    },
    /// The device lacks the feature the mode needs.
    UnsupportedMode {
        /// Requested state.
        to: ClockEventState,
    },
    /// `program_event` needs the device in one-shot state.
    NotOneShot {
        /// Current state.
        state: ClockEventState,
    },
    /// The event time is not after `now` and `force` was not given.
    Expired,
    /// The device's description is unusable (zero frequency, min > max, ...).
    InvalidDevice(&'static str),
    /// The driver failed.
    Device(DeviceError),
}

impl fmt::Display for ClockEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockEventError::IllegalTransition { from, to } => {
                write!(f, "clockevents: illegal state change {from:?} -> {to:?}")
            }
            ClockEventError::UnsupportedMode { to } => {
                write!(f, "clockevents: device cannot enter {to:?}")
            }
            ClockEventError::NotOneShot { state } => {
                write!(f, "clockevents: cannot program an event in state {state:?}")
            }
            ClockEventError::Expired => f.write_str("clockevents: event time already passed"),
            ClockEventError::InvalidDevice(what) => {
                write!(f, "clockevents: invalid device: {what}")
            }
            ClockEventError::Device(error) => write!(f, "clockevents: {error}"),
        }
    }
}

impl From<DeviceError> for ClockEventError {
    fn from(error: DeviceError) -> Self {
        ClockEventError::Device(error)
    }
}

/// Deltas below this are noise (Linux's `cev_delta2ns` floor).
const MIN_DELTA_FLOOR_NS: u64 = 1000;
/// How often `program_event(force)` retries with the minimum delta before giving up.
const FORCE_RETRIES: u32 = 3;

/// A clock event device with its framework state; see the module documentation.
pub struct ClockEvent<D> {
    device: D,
    state: ClockEventState,
    /// Nanoseconds → device cycles.
    ns_to_cycles: MultShift,
    min_delta_ns: u64,
    max_delta_ns: u64,
    /// Period used when entering `Periodic`.
    period_ns: u64,
    /// Monotonic ns of the programmed event (`u64::MAX`: none).
    next_event_ns: u64,
    /// Events programmed (for tests and diagnostics).
    programmed: u64,
    /// Times the driver said the event had passed and a retry was needed.
    retries: u64,
    /// Name of the function that handles this device's interrupts (for timer_list).
    handler_name: &'static str,
}

impl<D: ClockEventDevice> ClockEvent<D> {
    /// Takes ownership of `device` (in state `Detached`), computing its conversion factors
    /// and ns limits. `period_ns` is the tick period used if the device goes periodic.
    pub fn new(device: D, period_ns: u64) -> Result<Self, ClockEventError> {
        let frequency = device.frequency_hz();
        if frequency == 0 {
            return Err(ClockEventError::InvalidDevice("frequency is 0 Hz"));
        }
        let (min_cycles, max_cycles) = (device.min_delta_cycles(), device.max_delta_cycles());
        if max_cycles == 0 || min_cycles > max_cycles {
            return Err(ClockEventError::InvalidDevice("min delta above max delta"));
        }
        if period_ns == 0 {
            return Err(ClockEventError::InvalidDevice("tick period is 0 ns"));
        }
        let seconds = (max_cycles / frequency).clamp(1, 600) as u32;
        let ns_to_cycles = calc_mult_shift(NSEC_PER_SEC, frequency, seconds)
            .map_err(|_| ClockEventError::InvalidDevice("frequency out of range"))?;
        // min: round up so programming min_delta_ns yields at least min cycles; max: round
        // down so it yields at most max cycles.
        let min_delta_ns = ns_to_cycles
            .invert_round_up(min_cycles)
            .max(MIN_DELTA_FLOOR_NS);
        let max_delta_ns = ns_to_cycles.invert(max_cycles).max(min_delta_ns);
        Ok(Self {
            device,
            state: ClockEventState::Detached,
            ns_to_cycles,
            min_delta_ns,
            max_delta_ns,
            period_ns,
            next_event_ns: u64::MAX,
            programmed: 0,
            retries: 0,
            handler_name: "clockevents_handle_noop",
        })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably (for driver-specific maintenance; do not change its state behind
    /// the framework's back).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Current state.
    pub fn state(&self) -> ClockEventState {
        self.state
    }

    /// ns → cycles factors.
    pub fn ns_to_cycles(&self) -> MultShift {
        self.ns_to_cycles
    }

    /// Smallest programmable delta in ns.
    pub fn min_delta_ns(&self) -> u64 {
        self.min_delta_ns
    }

    /// Largest programmable delta in ns.
    pub fn max_delta_ns(&self) -> u64 {
        self.max_delta_ns
    }

    /// Monotonic ns of the programmed event, `None` when nothing is programmed.
    pub fn next_event_ns(&self) -> Option<u64> {
        (self.next_event_ns != u64::MAX).then_some(self.next_event_ns)
    }

    /// Events programmed so far.
    pub fn programmed_events(&self) -> u64 {
        self.programmed
    }

    /// Retries after the driver reported a passed deadline.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// Name of this device's interrupt handler.
    pub fn handler_name(&self) -> &'static str {
        self.handler_name
    }

    pub(crate) fn set_handler_name(&mut self, name: &'static str) {
        self.handler_name = name;
    }

    /// Requests a state change, following the table in the module documentation.
    pub fn switch_state(&mut self, to: ClockEventState) -> Result<(), ClockEventError> {
        let from = self.state;
        if from == to {
            return Ok(());
        }
        if !from.may_switch_to(to) {
            return Err(ClockEventError::IllegalTransition { from, to });
        }
        let features = self.device.features();
        match to {
            ClockEventState::Detached => {
                if from != ClockEventState::Shutdown {
                    self.device.set_state_shutdown()?;
                }
            }
            ClockEventState::Shutdown => self.device.set_state_shutdown()?,
            ClockEventState::Periodic => {
                if !features.contains(Features::PERIODIC) {
                    return Err(ClockEventError::UnsupportedMode { to });
                }
                let period_cycles = self.ns_to_cycles.convert(self.period_ns).max(1);
                self.device.set_state_periodic(period_cycles)?;
            }
            ClockEventState::OneShot => {
                if !features.contains(Features::ONESHOT) {
                    return Err(ClockEventError::UnsupportedMode { to });
                }
                self.device.set_state_oneshot()?;
            }
            ClockEventState::OneShotStopped => self.device.set_state_oneshot_stopped()?,
        }
        if to != ClockEventState::OneShot {
            self.next_event_ns = u64::MAX;
        }
        self.state = to;
        Ok(())
    }

    /// Programs the next event for monotonic time `expires_ns`, given the current time. The
    /// delta is clamped to `[min_delta_ns, max_delta_ns]` (an event beyond the max fires
    /// early at the max, and the hrtimer code simply re-programs) and converted to cycles
    /// rounding *up*, so the device does not fire before `expires_ns`.
    ///
    /// An `expires_ns` not after `now_ns` is refused with [`ClockEventError::Expired`] unless
    /// `force` is set, in which case the minimum delta is programmed (retrying a few times if
    /// the driver reports that time already passed).
    pub fn program_event(
        &mut self,
        expires_ns: u64,
        now_ns: u64,
        force: bool,
    ) -> Result<(), ClockEventError> {
        if self.state != ClockEventState::OneShot {
            return Err(ClockEventError::NotOneShot { state: self.state });
        }
        self.next_event_ns = expires_ns;
        if expires_ns <= now_ns {
            return if force {
                self.program_min_delta(now_ns)
            } else {
                Err(ClockEventError::Expired)
            };
        }
        let delta_ns = (expires_ns - now_ns).clamp(self.min_delta_ns, self.max_delta_ns);
        let cycles = self.delta_cycles(delta_ns);
        match self.device.set_next_event(cycles) {
            Ok(()) => {
                self.programmed += 1;
                Ok(())
            }
            Err(DeviceError::Time) if force => {
                self.retries += 1;
                self.program_min_delta(now_ns)
            }
            Err(DeviceError::Time) => Err(ClockEventError::Expired),
            Err(error) => Err(ClockEventError::Device(error)),
        }
    }

    fn delta_cycles(&self, delta_ns: u64) -> u64 {
        self.ns_to_cycles.convert_round_up(delta_ns).clamp(
            self.device.min_delta_cycles(),
            self.device.max_delta_cycles(),
        )
    }

    fn program_min_delta(&mut self, now_ns: u64) -> Result<(), ClockEventError> {
        let cycles = self.delta_cycles(self.min_delta_ns);
        let mut last = DeviceError::Time;
        for _ in 0..FORCE_RETRIES {
            match self.device.set_next_event(cycles) {
                Ok(()) => {
                    self.programmed += 1;
                    self.next_event_ns = now_ns.saturating_add(self.min_delta_ns);
                    return Ok(());
                }
                Err(error) => {
                    self.retries += 1;
                    last = error;
                }
            }
        }
        Err(ClockEventError::Device(last))
    }
}

/// True when device `candidate` should replace `current` for a per-CPU tick (Linux's
/// `tick_check_preferred`): a one-shot capable device beats one that is not; otherwise the
/// higher rating wins, and a per-CPU device beats a global one of equal rating.
pub fn is_preferred(candidate: &dyn ClockEventDevice, current: &dyn ClockEventDevice) -> bool {
    let (new, old) = (candidate.features(), current.features());
    let new_oneshot = new.contains(Features::ONESHOT);
    let old_oneshot = old.contains(Features::ONESHOT);
    if new_oneshot != old_oneshot {
        return new_oneshot;
    }
    if candidate.rating() != current.rating() {
        return candidate.rating() > current.rating();
    }
    new.contains(Features::PER_CPU) && !old.contains(Features::PER_CPU)
}

/// Index of the best device among `candidates` that has all of `required`, if any.
pub fn select_best_device(
    candidates: &[&dyn ClockEventDevice],
    required: Features,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (index, candidate) in candidates.iter().enumerate() {
        if !candidate.features().contains(required) {
            continue;
        }
        if best.is_none_or(|b| is_preferred(*candidate, candidates[b])) {
            best = Some(index);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{DeviceCall, FakeEventDevice};
    use ClockEventState::*;

    fn device(features: Features) -> ClockEvent<FakeEventDevice> {
        let fake = FakeEventDevice::new("lapic", 100, features, 1_000_000_000, 2, 1 << 32);
        ClockEvent::new(fake, 4_000_000).unwrap()
    }

    fn reach(event: &mut ClockEvent<FakeEventDevice>, state: ClockEventState) {
        // Paths from Detached that use only legal steps.
        let path: &[ClockEventState] = match state {
            Detached => &[],
            Shutdown => &[Shutdown],
            Periodic => &[Shutdown, Periodic],
            OneShot => &[Shutdown, OneShot],
            OneShotStopped => &[Shutdown, OneShot, OneShotStopped],
        };
        for &step in path {
            event.switch_state(step).unwrap();
        }
        assert_eq!(event.state(), state);
    }

    /// Every (from, to) pair: legal ones succeed and reach `to`; illegal ones are refused
    /// with a typed error and change neither the state nor the hardware.
    #[test]
    fn every_transition_follows_the_table() {
        let expected_legal = |from: ClockEventState, to: ClockEventState| -> bool {
            match (from, to) {
                (a, b) if a == b => true,
                (Detached, Shutdown) => true,
                (Detached, _) => false,
                (_, OneShotStopped) => matches!(from, OneShot),
                _ => true,
            }
        };
        for from in ClockEventState::ALL {
            for to in ClockEventState::ALL {
                assert_eq!(
                    from.may_switch_to(to),
                    expected_legal(from, to),
                    "{from:?}->{to:?}"
                );
                let mut event = device(Features::PERIODIC | Features::ONESHOT);
                reach(&mut event, from);
                let calls_before = event.device().calls.len();
                let result = event.switch_state(to);
                if expected_legal(from, to) {
                    assert_eq!(result, Ok(()), "{from:?}->{to:?}");
                    assert_eq!(event.state(), to);
                    if from == to {
                        assert_eq!(event.device().calls.len(), calls_before, "no-op touched hw");
                    }
                } else {
                    assert_eq!(result, Err(ClockEventError::IllegalTransition { from, to }));
                    assert_eq!(event.state(), from);
                    assert_eq!(event.device().calls.len(), calls_before);
                }
            }
        }
    }

    #[test]
    fn modes_need_features() {
        let mut periodic_only = device(Features::PERIODIC);
        periodic_only.switch_state(Shutdown).unwrap();
        assert_eq!(
            periodic_only.switch_state(OneShot),
            Err(ClockEventError::UnsupportedMode { to: OneShot })
        );
        let mut oneshot_only = device(Features::ONESHOT);
        oneshot_only.switch_state(Shutdown).unwrap();
        assert_eq!(
            oneshot_only.switch_state(Periodic),
            Err(ClockEventError::UnsupportedMode { to: Periodic })
        );
        assert_eq!(oneshot_only.state(), Shutdown);
    }

    #[test]
    fn periodic_uses_tick_period_in_cycles() {
        let mut event = device(Features::PERIODIC | Features::ONESHOT);
        reach(&mut event, Periodic);
        assert_eq!(
            event.device().calls.last(),
            Some(&DeviceCall::Periodic(4_000_000))
        );
    }

    #[test]
    fn detach_shuts_hardware_down() {
        let mut event = device(Features::ONESHOT);
        reach(&mut event, OneShot);
        event.switch_state(Detached).unwrap();
        assert_eq!(event.device().calls.last(), Some(&DeviceCall::Shutdown));
    }

    #[test]
    fn program_requires_oneshot_and_clamps_deltas() {
        // 10 MHz device: 100 ns per cycle, min 5 cycles, max 1000 cycles.
        let fake = FakeEventDevice::new("hpet", 50, Features::ONESHOT, 10_000_000, 5, 1000);
        let mut event = ClockEvent::new(fake, 4_000_000).unwrap();
        assert_eq!(
            event.program_event(10_000, 0, false),
            Err(ClockEventError::NotOneShot { state: Detached })
        );
        event.switch_state(Shutdown).unwrap();
        event.switch_state(OneShot).unwrap();
        assert_eq!(event.min_delta_ns(), 1000); // 500 ns raised to the 1 µs floor
                                                // max: 1000 cycles of 100 ns, rounded down so it never exceeds the device limit.
        assert!((99_990..=100_000).contains(&event.max_delta_ns()));
        assert!(event.ns_to_cycles().convert(event.max_delta_ns()) <= 1000);
        let last_cycles = |event: &ClockEvent<FakeEventDevice>| match event.device().calls.last() {
            Some(&DeviceCall::Next(cycles)) => cycles,
            other => panic!("expected a programmed event, got {other:?}"),
        };
        // Too short: clamped up to min (1000 ns = 10 cycles; the rounding-up conversion may
        // add one cycle for the multiplier's own rounding, never remove one).
        event.program_event(1_000_010, 1_000_000, false).unwrap();
        assert!((10..=11).contains(&last_cycles(&event)));
        // Too long: clamped down to max (1000 cycles).
        event.program_event(50_000_000, 0, false).unwrap();
        assert_eq!(event.device().calls.last(), Some(&DeviceCall::Next(1000)));
        // 12_345 ns is 123.45 cycles: rounds up, never down.
        event.program_event(12_345, 0, false).unwrap();
        assert!((124..=125).contains(&last_cycles(&event)));
        assert_eq!(event.next_event_ns(), Some(12_345));
    }

    #[test]
    fn expired_event_is_refused_or_forced_to_min_delta() {
        let mut event = device(Features::ONESHOT);
        reach(&mut event, OneShot);
        assert_eq!(
            event.program_event(100, 100, false),
            Err(ClockEventError::Expired)
        );
        event.program_event(100, 200, true).unwrap();
        assert_eq!(event.device().calls.last(), Some(&DeviceCall::Next(1000)));
    }

    #[test]
    fn driver_time_error_is_retried_when_forced() {
        let mut event = device(Features::ONESHOT);
        reach(&mut event, OneShot);
        event.device_mut().fail_next_with_time = 1;
        event.program_event(50_000, 0, true).unwrap();
        assert_eq!(event.retries(), 1);
        event.device_mut().fail_next_with_time = 10;
        assert!(matches!(
            event.program_event(50_000, 0, true),
            Err(ClockEventError::Device(DeviceError::Time))
        ));
    }

    #[test]
    fn invalid_devices_are_refused() {
        let zero = FakeEventDevice::new("x", 1, Features::ONESHOT, 0, 1, 10);
        assert!(matches!(
            ClockEvent::new(zero, 1),
            Err(ClockEventError::InvalidDevice(_))
        ));
        let inverted = FakeEventDevice::new("x", 1, Features::ONESHOT, 1000, 10, 1);
        assert!(ClockEvent::new(inverted, 1).is_err());
    }

    #[test]
    fn best_device_prefers_oneshot_then_rating_then_per_cpu() {
        let pit = FakeEventDevice::new("pit", 0, Features::PERIODIC, 1_193_182, 1, 0xffff);
        let hpet = FakeEventDevice::new(
            "hpet",
            50,
            Features::PERIODIC | Features::ONESHOT,
            14_318_180,
            1,
            u32::MAX.into(),
        );
        let lapic = FakeEventDevice::new(
            "lapic",
            100,
            Features::ONESHOT | Features::PER_CPU | Features::C3STOP,
            1_000_000_000,
            1,
            u32::MAX.into(),
        );
        let lapic_global = FakeEventDevice::new("lapic2", 100, Features::ONESHOT, 1, 1, 2);
        let all: [&dyn ClockEventDevice; 4] = [&pit, &hpet, &lapic_global, &lapic];
        assert_eq!(select_best_device(&all, Features::empty()), Some(3));
        assert_eq!(select_best_device(&all, Features::PERIODIC), Some(1));
        assert!(is_preferred(&hpet, &pit));
        assert!(!is_preferred(&pit, &hpet));
        assert_eq!(select_best_device(&all[..1], Features::ONESHOT), None);
    }
}
