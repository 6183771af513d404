//! The request log: one line per event, `[MONOTONIC WALL] message`, flushed as it is written so
//! a test (or a person with `tail -f`) sees it at once.
//!
//! `[    12.345678 2026-12-03T00:37:18.123456Z] SET_VALUE gpio 0 value 1`: seconds since the
//! back-end started (monotonic, comparable between lines) and UTC wall-clock time (comparable
//! with QEMU's and the guest's logs).

use std::io::Write;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A shared, line-buffered log.
pub struct Log {
    start: Instant,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Log {
    /// A log writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            start: Instant::now(),
            out: Mutex::new(out),
        }
    }

    /// Writes one timestamped line. A failing log (disk full, closed pipe) is not a reason to
    /// stop serving the guest: the error is dropped.
    pub fn line(&self, message: impl std::fmt::Display) {
        let elapsed = self.start.elapsed();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let text = format!(
            "[{:6}.{:06} {}] {message}\n",
            elapsed.as_secs(),
            elapsed.subsec_micros(),
            utc(wall.as_secs(), wall.subsec_micros()),
        );
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// `2026-12-03T00:37:18.123456Z` for a Unix time.
pub fn utc(secs: u64, micros: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of the day `days` after 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_format() {
        assert_eq!(utc(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.
        assert_eq!(utc(951_827_696, 7), "2000-02-29T12:34:56.000007Z");
        assert_eq!(utc(1_796_258_238, 500_000), "2026-12-03T00:37:18.500000Z");
    }

    #[test]
    fn lines_are_timestamped_and_flushed() {
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Shared::default();
        let log = Log::new(Box::new(buffer.clone()));
        log.line("SET_VALUE gpio 0 value 1");
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("[     0."), "{text}");
        assert!(text.ends_with("Z] SET_VALUE gpio 0 value 1\n"), "{text}");
    }
}
