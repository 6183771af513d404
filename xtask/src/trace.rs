//! Counting a guest's interrupts from outside, with QEMU's own trace events.
//!
//! QEMU 7.2 as Debian builds it has the `log` trace backend: `-trace enable=NAME` turns an event
//! on, `-D FILE` sends the lines to a file, and `-msg timestamp=on` makes each line carry the host's
//! wall-clock time (`gettimeofday`, the same clock as [`SystemTime`]):
//!
//! ```text
//! 32353@1795356627.009168:apic_local_deliver vector 0 delivery mode 0
//! ^pid  ^seconds.microseconds ^event            ^its arguments
//! ```
//!
//! What each traced event means (QEMU 7.2 `hw/intc/apic.c`, `ioapic.c`, `i8259.c`, `hw/i386/x86.c`):
//! - `apic_local_deliver vector N`: a local APIC LVT source fired; `N` is the LVT *index*, not an IDT
//!   vector (0 timer, 1 thermal, 2 performance counter, 3 LINT0, 4 LINT1, 5 error). It is traced
//!   before the mask bit is checked, but QEMU only arms the LAPIC timer while its LVT is unmasked, so
//!   index 0 counts timer interrupts. Index 3 (LINT0) fires whenever the 8259's output rises, masked
//!   or not; the interrupts that really reach the CPU that way are counted by `pic_interrupt`.
//! - `apic_deliver_irq`: a message (from the IOAPIC, or an MSI) delivered to a local APIC, with its
//!   IDT vector.
//! - `pic_interrupt`: the CPU acknowledged an 8259 interrupt (ExtINT).
//! - `apic_mem_writel OFFSET = VALUE`: a guest write to the xAPIC page. A write to the ICR (0x300)
//!   sends an IPI (the only trace of IPIs in 7.2); 0x380 (initial count) programs the LAPIC timer.
//! - `x86_gsi_interrupt GSI #N level:L`: a device line changed level (attribution, not delivery).
//! - `ioapic_set_irq`, `x86_pic_interrupt`: the same line changes seen by the IOAPIC and the 8259;
//!   traced so a reader of the log can follow a delivery, not counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::qemu::QemuConfig;

/// The trace events [`enable`] turns on: every interrupt delivery QEMU 7.2 traces on x86.
pub const INTERRUPT_EVENTS: &[&str] = &[
    "apic_local_deliver",
    "apic_deliver_irq",
    "pic_interrupt",
    "apic_mem_writel",
    "x86_gsi_interrupt",
    "ioapic_set_irq",
    "x86_pic_interrupt",
];

/// LVT index of the LAPIC timer in `apic_local_deliver`.
pub const LVT_TIMER: u32 = 0;
/// LVT index of LINT0 (the 8259's output in virtual-wire mode).
pub const LVT_LINT0: u32 = 3;
/// xAPIC register offsets seen in `apic_mem_writel`.
const APIC_ICR_LOW: u64 = 0x300;
const APIC_TIMER_INITIAL_COUNT: u64 = 0x380;

/// Adds interrupt tracing to `config`: the events of [`INTERRUPT_EVENTS`], logged with host
/// timestamps to `log` (a stale log from an earlier run is removed first, so it cannot be
/// counted by mistake).
pub fn enable(config: &mut QemuConfig, log: &Path) -> Result<(), String> {
    match std::fs::remove_file(log) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot remove old trace {}: {e}", log.display())),
    }
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for event in INTERRUPT_EVENTS {
        config.extra.push("-trace".into());
        config.extra.push(format!("enable={event}"));
    }
    config.extra.push("-D".into());
    config.extra.push(log.display().to_string());
    config.extra.extend(["-msg".into(), "timestamp=on".into()]);
    Ok(())
}

/// `(start + guard, end - guard)`: a window with its edges trimmed, so the interrupts a guest
/// takes while printing the markers that delimit it (serial transmit interrupts land a
/// millisecond or two before the host reads the text) are left out.
pub fn trim_window(
    start: SystemTime,
    end: SystemTime,
    guard: Duration,
) -> (SystemTime, SystemTime) {
    let from = start + guard;
    let to = end.checked_sub(guard).unwrap_or(end).max(from);
    (from, to)
}

/// Interrupt deliveries counted in a host-time window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Length of the window in seconds.
    pub window_s: f64,
    /// LAPIC timer interrupts (`apic_local_deliver` LVT index 0).
    pub lapic_timer: u64,
    /// Other local APIC sources by LVT index (1 thermal, 2 perf, 3 LINT0, 4 LINT1, 5 error).
    pub lapic_local_other: BTreeMap<u32, u64>,
    /// IOAPIC and MSI messages delivered to a LAPIC, by IDT vector.
    pub external: BTreeMap<u8, u64>,
    /// Interrupts acknowledged from the 8259, by its IRQ line.
    pub pic: BTreeMap<u32, u64>,
    /// IPIs sent (writes to the ICR).
    pub ipis: u64,
    /// Writes to the LAPIC timer's initial count: each (re)programs the timer.
    pub lapic_timer_writes: u64,
    /// Device line raises by GSI (which device asked; a raise need not become a delivery).
    pub gsi_raises: BTreeMap<u32, u64>,
    /// Lines (anywhere in the log) that were not trace lines of the expected shape.
    pub unparsed: u64,
    /// Trace events in the whole log, inside the window or not.
    pub log_events: u64,
    /// LAPIC timer interrupts in the whole log (the guest's boot takes some).
    pub log_lapic_timer: u64,
}

impl Counts {
    /// `Ok` when the log shows that tracing worked: it holds events, LAPIC timer interrupts
    /// among them (every boot takes some). A count from an empty log (QEMU built without the
    /// `log` trace backend, or a log that was never written) would read as "no interrupts" and
    /// pass any "at most N" check, so it is an error instead.
    pub fn ensure_traced(&self) -> Result<(), String> {
        if self.log_events == 0 {
            return Err(format!(
                "the trace holds no events ({} other lines): was QEMU built with the log trace backend?",
                self.unparsed
            ));
        }
        if self.log_lapic_timer == 0 {
            return Err(format!(
                "the trace holds {} events but no LAPIC timer interrupt (apic_local_deliver vector 0), \
                 which every boot takes: is the event traced?",
                self.log_events
            ));
        }
        Ok(())
    }

    /// Interrupts other than the LAPIC timer that reached the CPU: IOAPIC/MSI messages, 8259
    /// interrupts, IPIs and the LVT sources other than the timer and LINT0 (LINT0's real
    /// deliveries are the 8259 ones).
    pub fn other_deliveries(&self) -> u64 {
        let local: u64 = self
            .lapic_local_other
            .iter()
            .filter(|(index, _)| **index != LVT_LINT0)
            .map(|(_, n)| n)
            .sum();
        self.external.values().sum::<u64>() + self.pic.values().sum::<u64>() + self.ipis + local
    }

    /// `count` per second of the window (0 for an empty window).
    pub fn per_second(&self, count: u64) -> f64 {
        if self.window_s > 0.0 {
            count as f64 / self.window_s
        } else {
            0.0
        }
    }

    /// One line: the timer rate, the other deliveries by kind, and the timer programming rate.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{:.1} s: LAPIC timer {} ({:.2}/s), other deliveries {} ({:.2}/s)",
            self.window_s,
            self.lapic_timer,
            self.per_second(self.lapic_timer),
            self.other_deliveries(),
            self.per_second(self.other_deliveries()),
        );
        let mut kinds = Vec::new();
        for (vector, n) in &self.external {
            kinds.push(format!("vector {vector}: {n}"));
        }
        for (irq, n) in &self.pic {
            kinds.push(format!("8259 irq {irq}: {n}"));
        }
        if self.ipis > 0 {
            kinds.push(format!("IPI: {}", self.ipis));
        }
        for (index, n) in &self.lapic_local_other {
            kinds.push(format!("LVT {index}: {n}"));
        }
        if !kinds.is_empty() {
            let _ = write!(text, " [{}]", kinds.join(", "));
        }
        let _ = write!(
            text,
            "; LAPIC timer programmed {} times",
            self.lapic_timer_writes
        );
        if !self.gsi_raises.is_empty() {
            let raises: Vec<String> = self
                .gsi_raises
                .iter()
                .map(|(gsi, n)| format!("GSI {gsi}: {n}"))
                .collect();
            let _ = write!(text, "; device lines raised [{}]", raises.join(", "));
        }
        if self.unparsed > 0 {
            let _ = write!(text, "; {} unparsed log lines", self.unparsed);
        }
        text
    }
}

/// Counts the interrupt deliveries logged in `log` (written by a QEMU started with [`enable`])
/// whose host timestamp lies in `[window.0, window.1)`.
pub fn count_events(log: &Path, window: (SystemTime, SystemTime)) -> Result<Counts, String> {
    let file = File::open(log).map_err(|e| format!("cannot read trace {}: {e}", log.display()))?;
    count_lines(BufReader::new(file), window).map_err(|e| format!("trace {}: {e}", log.display()))
}

/// [`count_events`] on any reader.
pub fn count_lines(
    reader: impl BufRead,
    window: (SystemTime, SystemTime),
) -> Result<Counts, String> {
    let (from, to) = window;
    let mut counts = Counts {
        window_s: to.duration_since(from).unwrap_or_default().as_secs_f64(),
        ..Counts::default()
    };
    let mut timestamped = 0u64;
    for line in reader.split(b'\n') {
        let line = line.map_err(|e| format!("read error: {e}"))?;
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let Some(event) = TraceLine::parse(line) else {
            counts.unparsed += 1;
            continue;
        };
        timestamped += 1;
        counts.log_events += 1;
        if event.name == "apic_local_deliver" && field(event.args, "vector") == Some(0) {
            counts.log_lapic_timer += 1;
        }
        if event.time < from || event.time >= to {
            continue;
        }
        tally(&mut counts, event.name, event.args);
    }
    if timestamped == 0 && counts.unparsed > 0 {
        return Err(format!(
            "none of its {} lines has a timestamp (was QEMU started with -msg timestamp=on?)",
            counts.unparsed
        ));
    }
    Ok(counts)
}

/// One line of QEMU's log trace backend with timestamps.
#[derive(Debug, PartialEq)]
struct TraceLine<'a> {
    time: SystemTime,
    name: &'a str,
    args: &'a str,
}

impl<'a> TraceLine<'a> {
    /// `PID@SECONDS.MICROSECONDS:NAME ARGS`, or `None`.
    fn parse(line: &'a str) -> Option<TraceLine<'a>> {
        let (pid, rest) = line.split_once('@')?;
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (stamp, rest) = rest.split_once(':')?;
        let (seconds, micros) = stamp.split_once('.')?;
        let seconds: u64 = seconds.parse().ok()?;
        // Printed with %06zu: always six digits.
        if micros.len() != 6 {
            return None;
        }
        let micros: u32 = micros.parse().ok()?;
        let time = UNIX_EPOCH.checked_add(Duration::new(seconds, micros * 1000))?;
        let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
        if name.is_empty() {
            return None;
        }
        Some(TraceLine { time, name, args })
    }
}

/// The number after `key` in `args` (`key` followed by a space or a colon), decimal or `0x` hex.
fn field(args: &str, key: &str) -> Option<u64> {
    let start = args.find(key)? + key.len();
    let rest = args[start..].trim_start_matches([' ', ':', '=']);
    let token = rest.split([' ', ',']).next()?;
    match token.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => token.parse().ok(),
    }
}

fn tally(counts: &mut Counts, name: &str, args: &str) {
    match name {
        "apic_local_deliver" => {
            // "vector %d delivery mode %d": the "vector" is the LVT index.
            if let Some(index) = field(args, "vector") {
                if index == u64::from(LVT_TIMER) {
                    counts.lapic_timer += 1;
                } else {
                    *counts.lapic_local_other.entry(index as u32).or_default() += 1;
                }
            }
        }
        "apic_deliver_irq" => {
            // "dest %d dest_mode %d delivery_mode %d vector %d trigger_mode %d"
            if let Some(vector) = field(args, "vector") {
                *counts.external.entry(vector as u8).or_default() += 1;
            }
        }
        "pic_interrupt" => {
            // "irq %d intno %d"
            if let Some(irq) = field(args, "irq") {
                *counts.pic.entry(irq as u32).or_default() += 1;
            }
        }
        "apic_mem_writel" => {
            // "0x%"PRIx64" = 0x%08x": the offset in the xAPIC page, then the value.
            let offset = args
                .split_whitespace()
                .next()
                .and_then(|a| a.strip_prefix("0x"))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            match offset.map(|o| o & 0xff0) {
                Some(APIC_ICR_LOW) => counts.ipis += 1,
                Some(APIC_TIMER_INITIAL_COUNT) => counts.lapic_timer_writes += 1,
                _ => {}
            }
        }
        "x86_gsi_interrupt" => {
            // "GSI interrupt #%d level:%d"
            if let (Some(gsi), Some(1)) = (field(args, "#"), field(args, "level")) {
                *counts.gsi_raises.entry(gsi as u32).or_default() += 1;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines captured from Debian's QEMU 7.2.22 booting Debian's Linux 6.1 (q35, TCG).
    const SAMPLE: &str = "\
32353@1795356622.953414:apic_mem_writel 0xf0 = 0x000001ff
32353@1795356622.966468:pic_interrupt irq 0 intno 8
32135@1795356604.088921:apic_deliver_irq dest 0 dest_mode 0 delivery_mode 0 vector 0 trigger_mode 0
32353@1795356627.100000:apic_local_deliver vector 0 delivery mode 0
32353@1795356627.200000:apic_mem_writel 0x380 = 0x0003d08f
32353@1795356627.200010:apic_mem_writel 0xb0 = 0x00000000
32353@1795356628.067468:x86_gsi_interrupt GSI interrupt #0 level:0
32350@1795356628.067496:x86_pic_interrupt PIC interrupt #0 level:0
32350@1795356628.067499:ioapic_set_irq vector: 0 level: 0
32353@1795356629.100000:apic_local_deliver vector 0 delivery mode 0
32353@1795356629.500000:apic_local_deliver vector 3 delivery mode 7
32353@1795356630.013852:x86_gsi_interrupt GSI interrupt #4 level:1
32353@1795356630.013865:ioapic_set_irq vector: 4 level: 1
32353@1795356630.013870:apic_deliver_irq dest 1 dest_mode 1 delivery_mode 0 vector 37 trigger_mode 0
32353@1795356630.013880:apic_mem_writel 0x300 = 0x000c40f6
32353@1795356630.013890:pic_interrupt irq 0 intno 48
32353@1795356630.013900:apic_local_deliver vector 4 delivery mode 4
32353@1795356637.015613:apic_local_deliver vector 0 delivery mode 0
";

    fn at(seconds: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, micros * 1000)
    }

    fn count(window: (SystemTime, SystemTime)) -> Counts {
        count_lines(SAMPLE.as_bytes(), window).expect("sample parses")
    }

    #[test]
    fn parses_a_timestamped_line() {
        let line =
            TraceLine::parse("32353@1795356627.009168:apic_local_deliver vector 0 delivery mode 0")
                .expect("parses");
        assert_eq!(line.time, at(1795356627, 9168));
        assert_eq!(line.name, "apic_local_deliver");
        assert_eq!(line.args, "vector 0 delivery mode 0");
    }

    #[test]
    fn rejects_lines_without_a_timestamp() {
        for line in [
            "apic_local_deliver vector 0 delivery mode 0",
            "32353@1795356627.9168:apic_local_deliver vector 0",
            "x@1.000000:apic_local_deliver vector 0",
            "32353@1795356627.009168:",
            "qemu-system-x86_64: terminating on signal 15",
        ] {
            assert_eq!(TraceLine::parse(line), None, "{line}");
        }
    }

    #[test]
    fn counts_each_kind_in_a_window() {
        let counts = count((at(1795356627, 0), at(1795356637, 0)));
        assert_eq!(counts.window_s, 10.0);
        assert_eq!(counts.lapic_timer, 2);
        assert_eq!(counts.lapic_local_other, BTreeMap::from([(3, 1), (4, 1)]));
        assert_eq!(counts.external, BTreeMap::from([(37, 1)]));
        assert_eq!(counts.pic, BTreeMap::from([(0, 1)]));
        assert_eq!(counts.ipis, 1);
        assert_eq!(counts.lapic_timer_writes, 1);
        assert_eq!(counts.gsi_raises, BTreeMap::from([(4, 1)]));
        // vector 37 + 8259 irq 0 + IPI + LINT1; LINT0 is not a delivery of its own.
        assert_eq!(counts.other_deliveries(), 4);
        assert_eq!(counts.per_second(counts.lapic_timer), 0.2);
        assert_eq!(counts.unparsed, 0);
    }

    #[test]
    fn window_is_half_open() {
        // Starts exactly on the first timer line, ends exactly on the last one.
        let counts = count((at(1795356627, 100_000), at(1795356637, 15_613)));
        assert_eq!(counts.lapic_timer, 2);
        let counts = count((at(1795356627, 100_001), at(1795356637, 15_614)));
        assert_eq!(counts.lapic_timer, 2);
    }

    #[test]
    fn empty_or_reversed_window_counts_nothing() {
        let counts = count((at(1795356637, 0), at(1795356627, 0)));
        assert_eq!(counts.window_s, 0.0);
        assert_eq!(
            counts,
            Counts {
                log_events: 18,
                log_lapic_timer: 3,
                ..Counts::default()
            }
        );
        assert_eq!(counts.per_second(5), 0.0);
    }

    #[test]
    fn a_log_without_timestamps_is_an_error() {
        let text = "apic_local_deliver vector 0 delivery mode 0\n";
        let error = count_lines(text.as_bytes(), (UNIX_EPOCH, SystemTime::now()))
            .expect_err("no timestamps");
        assert!(error.contains("timestamp=on"), "{error}");
    }

    #[test]
    fn an_empty_trace_is_an_error() {
        let counts = count_lines(&b""[..], (UNIX_EPOCH, SystemTime::now())).expect("reads");
        let error = counts.ensure_traced().expect_err("empty trace");
        assert!(error.contains("no events"), "{error}");
    }

    #[test]
    fn a_trace_without_timer_interrupts_is_an_error() {
        let text = "1@1795356622.953414:apic_mem_writel 0xf0 = 0x000001ff\n";
        let counts = count_lines(text.as_bytes(), (UNIX_EPOCH, SystemTime::now())).expect("reads");
        let error = counts.ensure_traced().expect_err("no timer events");
        assert!(error.contains("no LAPIC timer interrupt"), "{error}");
    }

    #[test]
    fn the_sample_trace_is_usable_even_with_a_quiet_window() {
        let counts = count((at(1795356631, 0), at(1795356636, 0)));
        assert_eq!(counts.lapic_timer, 0);
        assert_eq!((counts.log_events, counts.log_lapic_timer), (18, 3));
        counts
            .ensure_traced()
            .expect("the log shows tracing worked");
    }

    #[test]
    fn a_missing_trace_file_is_an_error() {
        let error = count_events(
            Path::new("/nonexistent/lull-trace.log"),
            (UNIX_EPOCH, SystemTime::now()),
        )
        .expect_err("no file");
        assert!(error.contains("cannot read trace"), "{error}");
    }

    #[test]
    fn stray_lines_are_counted_not_fatal() {
        let text = format!("{SAMPLE}garbage \u{fffd} line\n\n");
        let counts =
            count_lines(text.as_bytes(), (at(1795356627, 0), at(1795356637, 0))).expect("parses");
        assert_eq!(counts.unparsed, 1);
        assert_eq!(counts.lapic_timer, 2);
    }

    #[test]
    fn non_utf8_bytes_do_not_stop_the_count() {
        let mut bytes = b"\xff\xfe\n".to_vec();
        bytes.extend_from_slice(SAMPLE.as_bytes());
        let counts =
            count_lines(bytes.as_slice(), (at(1795356627, 0), at(1795356637, 0))).expect("parses");
        assert_eq!(counts.lapic_timer, 2);
        assert_eq!(counts.unparsed, 1);
    }

    #[test]
    fn enable_adds_events_log_and_timestamps() {
        let dir = std::env::temp_dir().join(format!("lull-trace-test-{}", std::process::id()));
        let log = dir.join("trace.log");
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(&log, "stale").expect("write");
        let mut config = QemuConfig::new(Path::new("/nonexistent"));
        enable(&mut config, &log).expect("enable");
        assert!(!log.exists(), "stale log removed");
        let extra = config.extra.join(" ");
        assert!(
            extra.contains("-trace enable=apic_local_deliver"),
            "{extra}"
        );
        assert!(extra.contains("-trace enable=apic_deliver_irq"), "{extra}");
        assert!(extra.contains(&format!("-D {}", log.display())), "{extra}");
        assert!(extra.ends_with("-msg timestamp=on"), "{extra}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn trim_window_shrinks_both_ends_and_never_inverts() {
        let (from, to) = trim_window(at(10, 0), at(20, 0), Duration::from_millis(100));
        assert_eq!((from, to), (at(10, 100_000), at(19, 900_000)));
        let (from, to) = trim_window(at(10, 0), at(10, 50_000), Duration::from_millis(100));
        assert_eq!(from, to);
    }

    #[test]
    fn describe_names_the_kinds() {
        let counts = count((at(1795356627, 0), at(1795356637, 0)));
        let text = counts.describe();
        assert!(text.contains("LAPIC timer 2 (0.20/s)"), "{text}");
        assert!(text.contains("vector 37: 1"), "{text}");
        assert!(text.contains("IPI: 1"), "{text}");
    }
}
