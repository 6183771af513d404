//! Timekeeping: monotonic and realtime nanoseconds accumulated from a clock source.
//!
//! The timekeeper remembers the counter value at its last update (`cycle_last`) and the
//! nanoseconds accumulated up to then. Reading time adds the (masked, wrap-safe) cycles since
//! `cycle_last`. Because a narrow counter wraps (ACPI PM: every ~4.7 s), [`Timekeeper::update`]
//! must run at least every [`Timekeeper::max_deferment_ns`]: the tick does it, and a tickless
//! CPU never sleeps longer than that. Sub-nanosecond remainders are carried between updates
//! (Linux keeps `xtime_nsec` shifted for the same reason), so frequent updates do not drift.
//!
//! Realtime is monotonic time plus an offset (Linux's `offs_real`): setting the wall clock
//! only changes the offset, so monotonic time never jumps.

use crate::clocksource::{cycles_delta, ClockSourceId, ClockSourceInfo, MultShift};

/// Monotonic and realtime clocks derived from one clock source.
#[derive(Clone, Debug)]
pub struct Timekeeper {
    source: ClockSourceId,
    to_ns: MultShift,
    mask: u64,
    max_idle_ns: u64,
    cycle_last: u64,
    /// Monotonic ns at `cycle_last`.
    monotonic_ns: u64,
    /// Sub-nanosecond remainder, in units of 2^-shift ns.
    remainder: u64,
    /// Realtime minus monotonic, in ns.
    realtime_offset_ns: i64,
}

impl Timekeeper {
    /// Starts keeping time from `source` at monotonic 0, reading `cycles_now`.
    pub fn new(source: ClockSourceId, info: &ClockSourceInfo, cycles_now: u64) -> Self {
        Self {
            source,
            to_ns: info.to_ns,
            mask: info.mask,
            max_idle_ns: info.max_idle_ns,
            cycle_last: cycles_now,
            monotonic_ns: 0,
            remainder: 0,
            realtime_offset_ns: 0,
        }
    }

    /// The clock source in use.
    pub fn source(&self) -> ClockSourceId {
        self.source
    }

    /// Cycles since the last update, with the wrap handled by the mask. On a full 64-bit
    /// counter a reading *behind* `cycle_last` (another CPU's counter slightly skewed) reads
    /// as zero instead of as a jump of centuries.
    fn elapsed_cycles(&self, cycles_now: u64) -> u64 {
        let delta = cycles_delta(cycles_now, self.cycle_last, self.mask);
        if self.mask == u64::MAX && delta > (u64::MAX >> 1) {
            0
        } else {
            delta
        }
    }

    /// Nanoseconds and new remainder for `cycles` on top of the stored remainder.
    fn accumulate(&self, cycles: u64) -> (u64, u64) {
        let total = u128::from(cycles) * u128::from(self.to_ns.mult) + u128::from(self.remainder);
        let ns = u64::try_from(total >> self.to_ns.shift).unwrap_or(u64::MAX);
        let remainder = (total & ((1u128 << self.to_ns.shift) - 1)) as u64;
        (ns, remainder)
    }

    /// Monotonic ns since boot at counter value `cycles_now` (does not change state).
    pub fn monotonic_ns(&self, cycles_now: u64) -> u64 {
        let (ns, _) = self.accumulate(self.elapsed_cycles(cycles_now));
        self.monotonic_ns.saturating_add(ns)
    }

    /// Realtime ns since the Unix epoch at counter value `cycles_now`.
    pub fn realtime_ns(&self, cycles_now: u64) -> i64 {
        (self.monotonic_ns(cycles_now) as i64).saturating_add(self.realtime_offset_ns)
    }

    /// Realtime minus monotonic: what hrtimer bases use to convert realtime expiries.
    pub fn realtime_offset_ns(&self) -> i64 {
        self.realtime_offset_ns
    }

    /// Folds the cycles since the last update into the accumulated time. Call at least every
    /// [`max_deferment_ns`](Self::max_deferment_ns) (the tick does). Returns monotonic ns.
    pub fn update(&mut self, cycles_now: u64) -> u64 {
        let cycles = self.elapsed_cycles(cycles_now);
        let (ns, remainder) = self.accumulate(cycles);
        self.monotonic_ns = self.monotonic_ns.saturating_add(ns);
        self.remainder = remainder;
        self.cycle_last = self.cycle_last.wrapping_add(cycles) & self.mask;
        self.monotonic_ns
    }

    /// Sets the wall clock: realtime becomes `realtime_ns` at counter value `cycles_now`.
    /// Returns the new realtime offset (hand it to every CPU's hrtimer base).
    pub fn set_realtime(&mut self, realtime_ns: i64, cycles_now: u64) -> i64 {
        let monotonic = self.update(cycles_now);
        self.realtime_offset_ns = realtime_ns.saturating_sub(monotonic as i64);
        self.realtime_offset_ns
    }

    /// Switches to another clock source without a jump: time is accumulated up to
    /// `old_cycles_now` on the old source and continues from `new_cycles_now` on the new one
    /// (both read back to back).
    pub fn change_source(
        &mut self,
        source: ClockSourceId,
        info: &ClockSourceInfo,
        old_cycles_now: u64,
        new_cycles_now: u64,
    ) {
        self.update(old_cycles_now);
        self.source = source;
        self.to_ns = info.to_ns;
        self.mask = info.mask;
        self.max_idle_ns = info.max_idle_ns;
        self.cycle_last = new_cycles_now & info.mask;
        self.remainder = 0;
    }

    /// The longest time between updates that keeps the count unambiguous.
    pub fn max_deferment_ns(&self) -> u64 {
        self.max_idle_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clocksource::{ClockSource, ClockSourceRegistry, NSEC_PER_SEC};
    use crate::test_support::FakeCounter;

    fn keeper(counter: &FakeCounter) -> (Timekeeper, ClockSourceRegistry) {
        let mut registry = ClockSourceRegistry::new();
        let id = registry.register(counter, false).unwrap();
        let info = registry.get(id).unwrap().clone();
        (Timekeeper::new(id, &info, counter.read()), registry)
    }

    #[test]
    fn narrow_counter_wraps_are_absorbed_by_regular_updates() {
        let pm = FakeCounter::new("acpi_pm", 200, (1 << 24) - 1, 3_579_545);
        let (mut tk, _) = keeper(&pm);
        // 60 s of updates every 1 s: the 24-bit counter wraps ~12 times.
        for second in 1..=60u64 {
            pm.set_ns(second * NSEC_PER_SEC);
            let mono = tk.update(pm.read());
            // Fake counter truncates to whole cycles: within one cycle (~280 ns).
            assert!(
                mono.abs_diff(second * NSEC_PER_SEC) < 300,
                "{second}: {mono}"
            );
        }
        assert!(tk.max_deferment_ns() < 4_700_000_000);
    }

    #[test]
    fn remainder_prevents_drift_over_many_small_updates() {
        // 3 cycles per update at 14.318 MHz: each update is ~209.5 ns, the fraction matters.
        let hpet = FakeCounter::new("hpet", 250, u64::MAX, 14_318_180);
        let (mut tk, _) = keeper(&hpet);
        let mut cycles = hpet.read();
        for _ in 0..1_000_000 {
            cycles += 3;
            tk.update(cycles);
        }
        let exact = 3_000_000u128 * 1_000_000_000 / 14_318_180;
        assert!(u128::from(tk.monotonic_ns(cycles)).abs_diff(exact) <= 1);
    }

    #[test]
    fn realtime_is_offset_and_monotonic_does_not_jump() {
        let tsc = FakeCounter::new("tsc", 300, u64::MAX, 1_000_000_000);
        let (mut tk, _) = keeper(&tsc);
        tsc.set_ns(5_000);
        let offset = tk.set_realtime(1_700_000_000_000_000_000, tsc.read());
        assert_eq!(offset, 1_700_000_000_000_000_000 - 5_000);
        tsc.set_ns(6_000);
        assert_eq!(tk.monotonic_ns(tsc.read()), 6_000);
        assert_eq!(tk.realtime_ns(tsc.read()), 1_700_000_000_000_001_000);
    }

    #[test]
    fn skewed_reading_behind_last_update_reads_as_no_time() {
        let tsc = FakeCounter::new("tsc", 300, u64::MAX, 1_000_000_000);
        let (mut tk, _) = keeper(&tsc);
        tsc.set_ns(1_000_000);
        tk.update(tsc.read());
        assert_eq!(tk.monotonic_ns(tsc.read() - 10), 1_000_000);
    }

    #[test]
    fn change_source_continues_without_jump() {
        let tsc = FakeCounter::new("tsc", 300, u64::MAX, 2_000_000_000);
        let hpet = FakeCounter::new("hpet", 250, u64::MAX, 14_318_180);
        let mut registry = ClockSourceRegistry::new();
        let tsc_id = registry.register(&tsc, false).unwrap();
        let hpet_id = registry.register(&hpet, false).unwrap();
        let mut tk = Timekeeper::new(tsc_id, registry.get(tsc_id).unwrap(), tsc.read());
        tsc.set_ns(1_000_000_000);
        hpet.set_ns(1_000_000_000);
        let hpet_info = registry.get(hpet_id).unwrap().clone();
        tk.change_source(hpet_id, &hpet_info, tsc.read(), hpet.read());
        assert_eq!(tk.source(), hpet_id);
        hpet.set_ns(2_000_000_000);
        let mono = tk.monotonic_ns(hpet.read());
        assert!(mono.abs_diff(2_000_000_000) < 100, "{mono}");
    }
}
