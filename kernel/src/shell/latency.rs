//! The shell's `latency` tool: cyclictest's measurement, the wake-up lateness of a thread
//! sleeping on an absolute periodic hrtimer, as a histogram.

use alloc::vec::Vec;

use crate::kernel::time;

/// Histogram bucket width and range for wake-up lateness.
pub const LATENCY_BUCKETS_US: usize = 10_000;

/// Wake-up lateness of a thread sleeping on an absolute periodic hrtimer (cyclictest's view).
pub struct LatencyReport {
    pub samples: u64,
    /// `histogram[n]` = samples late by n..n+1 µs; the last bucket also holds everything later.
    pub histogram: Vec<u32>,
    pub max_ns: u64,
    pub min_ns: u64,
    pub total_ns: u64,
}

impl LatencyReport {
    /// The lateness below which `fraction` (0..=1) of samples fall, in µs (bucket upper edge).
    pub fn percentile_us(&self, fraction_per_mille: u64) -> u64 {
        let wanted = (self.samples * fraction_per_mille).div_ceil(1000).max(1);
        let mut seen = 0u64;
        for (bucket, count) in self.histogram.iter().enumerate() {
            seen += *count as u64;
            if seen >= wanted {
                return bucket as u64;
            }
        }
        LATENCY_BUCKETS_US as u64
    }
}

/// Sleeps on an absolute hrtimer every `period_ns` for `samples` periods and records how late
/// each wake-up was (never early: that would be a bug, and is counted as a failure by tests).
pub fn measure_latency(samples: u64, period_ns: u64) -> LatencyReport {
    let mut report = LatencyReport {
        samples: 0,
        histogram: alloc::vec![0; LATENCY_BUCKETS_US],
        max_ns: 0,
        min_ns: u64::MAX,
        total_ns: 0,
    };
    let mut next = time::uptime_ns() + period_ns;
    for _ in 0..samples {
        let woke = time::sleep_until(next, "latency_thread");
        let late = woke.saturating_sub(next);
        report.samples += 1;
        report.max_ns = report.max_ns.max(late);
        report.min_ns = report.min_ns.min(late);
        report.total_ns += late;
        let bucket = ((late / 1000) as usize).min(LATENCY_BUCKETS_US - 1);
        report.histogram[bucket] += 1;
        next += period_ns;
        // If we fell behind by more than a period, skip the missed periods (as cyclictest
        // reports them as latency of the next one rather than a burst of zero-wait wake-ups).
        let now = time::uptime_ns();
        while next <= now {
            next += period_ns;
        }
    }
    report
}
