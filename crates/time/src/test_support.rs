//! Fake hardware for host tests (Tock's `FakeAlarm` idea): a counter and an event device.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::clockevents::{ClockEventDevice, DeviceError, Features};
use crate::clocksource::{ClockSource, NSEC_PER_SEC};

/// A counter whose time is set by the test.
pub struct FakeCounter {
    name: &'static str,
    rating: u32,
    mask: u64,
    frequency_hz: u64,
    now_ns: AtomicU64,
}

impl FakeCounter {
    pub fn new(name: &'static str, rating: u32, mask: u64, frequency_hz: u64) -> Self {
        Self {
            name,
            rating,
            mask,
            frequency_hz,
            now_ns: AtomicU64::new(0),
        }
    }

    pub fn set_ns(&self, ns: u64) {
        self.now_ns.store(ns, Ordering::Relaxed);
    }
}

impl ClockSource for FakeCounter {
    fn name(&self) -> &'static str {
        self.name
    }
    fn rating(&self) -> u32 {
        self.rating
    }
    fn mask(&self) -> u64 {
        self.mask
    }
    fn read(&self) -> u64 {
        let ns = u128::from(self.now_ns.load(Ordering::Relaxed));
        let cycles = ns * u128::from(self.frequency_hz) / u128::from(NSEC_PER_SEC);
        (cycles as u64) & self.mask
    }
    fn frequency_hz(&self) -> u64 {
        self.frequency_hz
    }
}

/// What the framework asked the fake device to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceCall {
    Shutdown,
    Periodic(u64),
    OneShot,
    OneShotStopped,
    Next(u64),
}

/// An event device that records calls; the test decides when it "fires".
pub struct FakeEventDevice {
    pub name: &'static str,
    pub rating: u32,
    pub features: Features,
    pub frequency_hz: u64,
    pub min_cycles: u64,
    pub max_cycles: u64,
    pub calls: Vec<DeviceCall>,
    /// Fail this many upcoming `set_next_event` calls with `DeviceError::Time`.
    pub fail_next_with_time: u32,
}

impl FakeEventDevice {
    pub fn new(
        name: &'static str,
        rating: u32,
        features: Features,
        frequency_hz: u64,
        min_cycles: u64,
        max_cycles: u64,
    ) -> Self {
        Self {
            name,
            rating,
            features,
            frequency_hz,
            min_cycles,
            max_cycles,
            calls: Vec::new(),
            fail_next_with_time: 0,
        }
    }

    /// A LAPIC-like one-shot device counting nanoseconds (1 GHz), deltas 1 µs .. 4 s.
    pub fn lapic() -> Self {
        Self::new(
            "lapic",
            100,
            Features::ONESHOT | Features::PERIODIC | Features::PER_CPU,
            NSEC_PER_SEC,
            1000,
            4 * NSEC_PER_SEC,
        )
    }

    /// Number of `set_next_event` calls so far.
    pub fn next_event_calls(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| matches!(c, DeviceCall::Next(_)))
            .count()
    }
}

impl ClockEventDevice for FakeEventDevice {
    fn name(&self) -> &'static str {
        self.name
    }
    fn rating(&self) -> u32 {
        self.rating
    }
    fn features(&self) -> Features {
        self.features
    }
    fn frequency_hz(&self) -> u64 {
        self.frequency_hz
    }
    fn min_delta_cycles(&self) -> u64 {
        self.min_cycles
    }
    fn max_delta_cycles(&self) -> u64 {
        self.max_cycles
    }
    fn set_state_shutdown(&mut self) -> Result<(), DeviceError> {
        self.calls.push(DeviceCall::Shutdown);
        Ok(())
    }
    fn set_state_periodic(&mut self, period_cycles: u64) -> Result<(), DeviceError> {
        self.calls.push(DeviceCall::Periodic(period_cycles));
        Ok(())
    }
    fn set_state_oneshot(&mut self) -> Result<(), DeviceError> {
        self.calls.push(DeviceCall::OneShot);
        Ok(())
    }
    fn set_state_oneshot_stopped(&mut self) -> Result<(), DeviceError> {
        self.calls.push(DeviceCall::OneShotStopped);
        Ok(())
    }
    fn set_next_event(&mut self, cycles: u64) -> Result<(), DeviceError> {
        if self.fail_next_with_time > 0 {
            self.fail_next_with_time -= 1;
            return Err(DeviceError::Time);
        }
        self.calls.push(DeviceCall::Next(cycles));
        Ok(())
    }
}
