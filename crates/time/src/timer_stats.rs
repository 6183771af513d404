//! `/proc/timer_stats`: who starts timers, and which callbacks run how often.
//!
//! Linux's timer statistics (2.6.21, format v0.2): while collection is active, every timer
//! that expires is counted under the key (pid, command, start site, callback, deferrable).
//! Writing `1` to the file starts a fresh sample, `0` stops it; reading prints
//!
//! ```text
//! Timer Stats Version: v0.2
//! Sample period: 2.004 s
//!   501,     0 swapper          hrtimer_start_range_ns (tick_sched_timer)
//!    3D,   117 kworker/0        queue_delayed_work (delayed_work_timer_fn)
//! 504 total events, 251.497 events/sec
//! ```
//!
//! Each CPU keeps its own [`TimerStats`] (no shared lock on the expiry path); the report
//! merges them ([`write_report`]).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use crate::clocksource::NSEC_PER_SEC;

/// Task command name, at most 16 bytes like Linux's `TASK_COMM_LEN` (including the NUL
/// there; here up to 16 bytes of UTF-8, cut at a character boundary).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskComm {
    bytes: [u8; 16],
    len: u8,
}

impl TaskComm {
    /// Makes a command name from `name`, truncated to 16 bytes.
    pub fn new(name: &str) -> Self {
        let mut end = name.len().min(16);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; 16];
        bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        Self {
            bytes,
            len: end as u8,
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?")
    }
}

impl fmt::Debug for TaskComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TaskComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Who started a timer, and from where (recorded when the timer is started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    /// The function that started the timer (Linux prints the caller's symbol).
    pub site: &'static str,
    /// Process id of the task that started it (0: the idle task / interrupt context).
    pub pid: u32,
    /// Command name of that task.
    pub comm: TaskComm,
}

impl StartInfo {
    /// A start from kernel context (pid 0, `swapper`).
    pub fn kernel(site: &'static str) -> Self {
        Self {
            site,
            pid: 0,
            comm: TaskComm::new("swapper"),
        }
    }
}

/// Linux's table size: counts beyond this many distinct keys are reported as overflow.
pub const MAX_ENTRIES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    pid: u32,
    start_site: &'static str,
    function: &'static str,
    deferrable: bool,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: Key,
    comm: TaskComm,
    count: u64,
}

/// Why a write to `/proc/timer_stats` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidControl;

impl fmt::Display for InvalidControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timer_stats: write 1 to start or 0 to stop")
    }
}

/// One CPU's timer statistics collector.
#[derive(Clone, Debug, Default)]
pub struct TimerStats {
    active: bool,
    start_ns: u64,
    stop_ns: u64,
    /// Entries in first-seen order (the order Linux prints).
    entries: Vec<Entry>,
    index: BTreeMap<Key, usize>,
    overflow: u64,
}

impl TimerStats {
    /// An inactive, empty collector.
    pub const fn new() -> Self {
        Self {
            active: false,
            start_ns: 0,
            stop_ns: 0,
            entries: Vec::new(),
            index: BTreeMap::new(),
            overflow: 0,
        }
    }

    /// True while collecting.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Starts a fresh sample at monotonic `now_ns` (clears previous counts).
    pub fn start(&mut self, now_ns: u64) {
        self.clear();
        self.active = true;
        self.start_ns = now_ns;
        self.stop_ns = now_ns;
    }

    /// Stops collecting at `now_ns`; the counts stay readable.
    pub fn stop(&mut self, now_ns: u64) {
        if self.active {
            self.active = false;
            self.stop_ns = now_ns;
        }
    }

    /// Forgets all counts.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.overflow = 0;
    }

    /// Handles a write to `/proc/timer_stats`: `1` starts, `0` stops (trailing newline and
    /// spaces allowed).
    pub fn write_control(&mut self, input: &[u8], now_ns: u64) -> Result<(), InvalidControl> {
        let trimmed = input
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect::<Vec<u8>>();
        match trimmed.as_slice() {
            b"1" => {
                self.start(now_ns);
                Ok(())
            }
            b"0" => {
                self.stop(now_ns);
                Ok(())
            }
            _ => Err(InvalidControl),
        }
    }

    /// Counts one expiry of a timer started by `start` running `function`. Does nothing
    /// unless collecting. Context: the CPU's timer interrupt.
    pub fn account(&mut self, start: &StartInfo, function: &'static str, deferrable: bool) {
        if !self.active {
            return;
        }
        let key = Key {
            pid: start.pid,
            start_site: start.site,
            function,
            deferrable,
        };
        if let Some(&position) = self.index.get(&key) {
            self.entries[position].count += 1;
            return;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.overflow += 1;
            return;
        }
        self.index.insert(key, self.entries.len());
        self.entries.push(Entry {
            key,
            comm: start.comm,
            count: 1,
        });
    }

    /// Total expiries counted.
    pub fn total_events(&self) -> u64 {
        self.entries.iter().map(|e| e.count).sum()
    }

    fn period_ns(&self, now_ns: u64) -> u64 {
        let end = if self.active { now_ns } else { self.stop_ns };
        end.saturating_sub(self.start_ns)
    }
}

/// Writes the `/proc/timer_stats` report for all CPUs' collectors (merged by key, in
/// first-seen order), with the sample period of the first collector.
pub fn write_report(out: &mut dyn Write, now_ns: u64, cpus: &[&TimerStats]) -> fmt::Result {
    let period = cpus.first().map_or(0, |s| s.period_ns(now_ns));
    let seconds = period / NSEC_PER_SEC;
    let milliseconds = (period % NSEC_PER_SEC) / 1_000_000;
    out.write_str("Timer Stats Version: v0.2\n")?;
    writeln!(out, "Sample period: {seconds}.{milliseconds:03} s")?;
    let overflow: u64 = cpus.iter().map(|s| s.overflow).sum();
    if overflow != 0 {
        writeln!(out, "Overflow: {overflow} entries")?;
    }
    let mut merged: Vec<Entry> = Vec::new();
    let mut index: BTreeMap<Key, usize> = BTreeMap::new();
    for stats in cpus {
        for entry in &stats.entries {
            match index.get(&entry.key) {
                Some(&position) => merged[position].count += entry.count,
                None => {
                    index.insert(entry.key, merged.len());
                    merged.push(*entry);
                }
            }
        }
    }
    let mut events: u64 = 0;
    for entry in &merged {
        if entry.key.deferrable {
            write!(
                out,
                "{:4}D, {:5} {:<16} ",
                entry.count, entry.key.pid, entry.comm
            )?;
        } else {
            write!(
                out,
                " {:4}, {:5} {:<16} ",
                entry.count, entry.key.pid, entry.comm
            )?;
        }
        writeln!(out, "{} ({})", entry.key.start_site, entry.key.function)?;
        events += entry.count;
    }
    let total_ms = (seconds * 1000 + milliseconds).max(1);
    if events != 0 && seconds != 0 {
        writeln!(
            out,
            "{events} total events, {}.{:03} events/sec",
            events * 1000 / total_ms,
            (events * 1_000_000 / total_ms) % 1000
        )
    } else {
        writeln!(out, "{events} total events")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn tick_start() -> StartInfo {
        StartInfo::kernel("hrtimer_start_range_ns")
    }

    #[test]
    fn report_matches_linux_format() {
        let mut cpu0 = TimerStats::new();
        let mut cpu1 = TimerStats::new();
        cpu0.start(1_000_000_000);
        cpu1.start(1_000_000_000);
        for _ in 0..501 {
            cpu0.account(&tick_start(), "tick_sched_timer", false);
        }
        let worker = StartInfo {
            site: "queue_delayed_work",
            pid: 117,
            comm: TaskComm::new("kworker/0"),
        };
        for _ in 0..3 {
            cpu1.account(&worker, "delayed_work_timer_fn", true);
        }
        cpu1.account(&tick_start(), "tick_sched_timer", false);
        let mut text = String::new();
        write_report(&mut text, 3_004_000_000, &[&cpu0, &cpu1]).unwrap();
        assert_eq!(
            text,
            "Timer Stats Version: v0.2\n\
             Sample period: 2.004 s\n  \
             502,     0 swapper          hrtimer_start_range_ns (tick_sched_timer)\n   \
             3D,   117 kworker/0        queue_delayed_work (delayed_work_timer_fn)\n\
             505 total events, 251.996 events/sec\n"
        );
    }

    #[test]
    fn short_sample_prints_total_only_and_stop_freezes_period() {
        let mut stats = TimerStats::new();
        stats.write_control(b"1\n", 0).unwrap();
        stats.account(&tick_start(), "tick_sched_timer", false);
        stats.write_control(b"0", 500_000_000).unwrap();
        // Not counted after stop.
        stats.account(&tick_start(), "tick_sched_timer", false);
        let mut text = String::new();
        write_report(&mut text, 9_000_000_000, &[&stats]).unwrap();
        assert!(text.contains("Sample period: 0.500 s\n"), "{text}");
        assert!(text.ends_with("\n1 total events\n"), "{text}");
    }

    #[test]
    fn bad_control_is_refused_and_start_clears() {
        let mut stats = TimerStats::new();
        assert_eq!(stats.write_control(b"2", 0), Err(InvalidControl));
        assert_eq!(stats.write_control(b"", 0), Err(InvalidControl));
        stats.start(0);
        stats.account(&tick_start(), "f", false);
        stats.start(10);
        assert_eq!(stats.total_events(), 0);
    }

    #[test]
    fn overflow_is_counted_beyond_table_size() {
        let mut stats = TimerStats::new();
        stats.start(0);
        for pid in 0..(MAX_ENTRIES as u32 + 5) {
            let start = StartInfo {
                site: "s",
                pid,
                comm: TaskComm::new("t"),
            };
            stats.account(&start, "f", false);
        }
        let mut text = String::new();
        write_report(&mut text, 0, &[&stats]).unwrap();
        assert!(text.contains("Overflow: 5 entries\n"));
    }

    #[test]
    fn comm_is_truncated_at_char_boundary() {
        assert_eq!(
            TaskComm::new("a-very-long-task-name").as_str(),
            "a-very-long-task"
        );
        assert_eq!(TaskComm::new("ééééééééé").as_str(), "éééééééé");
    }
}
