//! Fair-class arithmetic: weighted virtual runtime, the scheduling period and time slices.
//!
//! As in Linux CFS: a task's virtual runtime advances by its real runtime scaled by
//! `1024 / weight`, so a heavier (lower-nice) task's clock runs slower and it gets picked more
//! often; the run queue always runs the task with the smallest virtual runtime.

use crate::SchedError;

/// The weight of a nice-0 task: virtual time runs at real speed for it.
pub(crate) const NICE_0_WEIGHT: u64 = 1024;

/// Tunables of the fair class and of balancing. Defaults are Linux's unscaled defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedConfig {
    /// Target period in which every runnable fair task runs once (Linux `sched_latency_ns`).
    pub latency_ns: u64,
    /// No task is preempted by the tick before it ran this long (Linux `sched_min_granularity_ns`),
    /// and the period stretches to `tasks × min_granularity` when there are many tasks.
    pub min_granularity_ns: u64,
    /// A woken fair task preempts the current one only when it is behind by more than this
    /// (scaled by the woken task's weight) (Linux `sched_wakeup_granularity_ns`).
    pub wakeup_granularity_ns: u64,
    /// How far below the queue's minimum virtual runtime a woken sleeper may be placed, so
    /// interactive tasks get to run soon without being able to bank unbounded credit
    /// (Linux `GENTLE_FAIR_SLEEPERS`: half the latency).
    pub sleeper_credit_ns: u64,
    /// Whether `pick_next` on a CPU with nothing to run first tries to pull a waiting task from
    /// the busiest other CPU (Linux's new-idle balance).
    pub pull_when_idle: bool,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            latency_ns: 6_000_000,
            min_granularity_ns: 750_000,
            wakeup_granularity_ns: 1_000_000,
            sleeper_credit_ns: 3_000_000,
            pull_when_idle: true,
        }
    }
}

impl SchedConfig {
    pub(crate) fn validate(&self) -> Result<(), SchedError> {
        if self.min_granularity_ns == 0 {
            return Err(SchedError::InvalidConfig(
                "min_granularity_ns must be above 0",
            ));
        }
        if self.latency_ns < self.min_granularity_ns {
            return Err(SchedError::InvalidConfig(
                "latency_ns must be at least min_granularity_ns",
            ));
        }
        Ok(())
    }

    /// The period in which each of `fair_tasks` runnable fair tasks should run once.
    pub(crate) fn period_ns(&self, fair_tasks: u64) -> u64 {
        let tasks_per_latency = self.latency_ns / self.min_granularity_ns;
        if fair_tasks > tasks_per_latency {
            fair_tasks.saturating_mul(self.min_granularity_ns)
        } else {
            self.latency_ns
        }
    }

    /// The wall-clock slice a task of `weight` gets out of one period, among `fair_tasks`
    /// tasks of `total_weight` (which includes `weight`).
    pub(crate) fn slice_ns(&self, weight: u32, total_weight: u64, fair_tasks: u64) -> u64 {
        let period = u128::from(self.period_ns(fair_tasks));
        let total = u128::from(total_weight.max(u64::from(weight)).max(1));
        let slice = period * u128::from(weight) / total;
        u64::try_from(slice).unwrap_or(u64::MAX)
    }
}

/// Real nanoseconds → virtual nanoseconds for a task of `weight`.
pub(crate) fn to_virtual(real_ns: u64, weight: u32) -> u128 {
    u128::from(real_ns) * u128::from(NICE_0_WEIGHT) / u128::from(weight.max(1))
}

/// The fewest real nanoseconds after which a task of `weight` has gained more than
/// `virtual_gap` virtual nanoseconds.
pub(crate) fn real_to_exceed(virtual_gap: u128, weight: u32) -> u64 {
    // Smallest d with floor(d * 1024 / w) > gap, i.e. d * 1024 >= (gap + 1) * w.
    let needed = virtual_gap
        .saturating_add(1)
        .saturating_mul(u128::from(weight.max(1)));
    let real = needed.div_ceil(u128::from(NICE_0_WEIGHT));
    u64::try_from(real).unwrap_or(u64::MAX)
}

/// Moves a virtual runtime from one run queue's timeline to another's, keeping its distance
/// from the queue minimum (the two queues' virtual clocks are unrelated).
pub(crate) fn renormalize(vruntime: u128, from_min: u128, to_min: u128) -> u128 {
    if vruntime >= from_min {
        to_min.saturating_add(vruntime - from_min)
    } else {
        to_min.saturating_sub(from_min - vruntime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_time_scales_with_weight() {
        assert_eq!(to_virtual(1_000, 1024), 1_000);
        assert_eq!(to_virtual(1_000, 2048), 500);
        assert_eq!(
            to_virtual(1_000, 0),
            1_024_000,
            "weight 0 is treated as 1, not divided by"
        );
    }

    #[test]
    fn real_to_exceed_is_the_first_nanosecond_past_the_gap() {
        for weight in [15u32, 820, 1024, 1277, 88761] {
            for gap in [0u128, 1, 999, 1_000_000] {
                let real = real_to_exceed(gap, weight);
                assert!(to_virtual(real, weight) > gap, "w={weight} gap={gap}");
                assert!(to_virtual(real - 1, weight) <= gap, "w={weight} gap={gap}");
            }
        }
    }

    #[test]
    fn period_stretches_with_many_tasks() {
        let config = SchedConfig::default();
        assert_eq!(config.period_ns(2), 6_000_000);
        assert_eq!(config.period_ns(8), 6_000_000);
        assert_eq!(config.period_ns(9), 9 * 750_000);
        assert_eq!(config.slice_ns(1024, 2048, 2), 3_000_000);
    }

    #[test]
    fn renormalize_keeps_distance_from_the_minimum() {
        assert_eq!(renormalize(150, 100, 1000), 1050);
        assert_eq!(renormalize(90, 100, 1000), 990);
        assert_eq!(renormalize(0, 100, 50), 0, "saturates instead of wrapping");
    }
}
