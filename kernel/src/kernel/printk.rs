//! The console and the kernel log: `printk!` writes a timestamped line to COM1 and to the log
//! ring that `dmesg` reads back.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU8, Ordering};
use lull_cmdline::{Kind, ParamSpec};

use crate::arch::serial;
use crate::kernel::locking::IrqSafeLock;

/// Parameters of the console and log.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "loglevel",
        kind: Kind::U64 { min: 0, max: 8 },
        default: "7",
        help: "Messages at or below this level are printed on the console (0-8).",
    },
    ParamSpec {
        name: "quiet",
        kind: Kind::Flag,
        default: "",
        help: "Console log level 4.",
    },
];

/// Size of the kernel log ring. Old lines are overwritten once it wraps (as Linux's log_buf).
const LOG_BYTES: usize = 128 * 1024;

struct LogRing {
    bytes: [u8; LOG_BYTES],
    /// Total bytes ever written; `written % LOG_BYTES` is the next write position.
    written: usize,
}

impl LogRing {
    fn push(&mut self, data: &[u8]) {
        for &byte in data {
            self.bytes[self.written % LOG_BYTES] = byte;
            self.written += 1;
        }
    }

    fn for_each_chunk(&self, mut f: impl FnMut(&[u8])) {
        if self.written <= LOG_BYTES {
            f(&self.bytes[..self.written]);
        } else {
            let split = self.written % LOG_BYTES;
            f(&self.bytes[split..]);
            f(&self.bytes[..split]);
        }
    }
}

struct Console {
    log: LogRing,
}

static CONSOLE: IrqSafeLock<Console> = IrqSafeLock::new(Console {
    log: LogRing {
        bytes: [0; LOG_BYTES],
        written: 0,
    },
});

/// Messages below this level reach the serial console (all reach the log ring).
static CONSOLE_LOGLEVEL: AtomicU8 = AtomicU8::new(7);

/// Sets the console log level (`/proc/sys/kernel/printk`, `loglevel=`).
pub fn set_console_loglevel(level: u8) {
    CONSOLE_LOGLEVEL.store(level.min(8), Ordering::Relaxed);
}

/// The console log level.
pub fn console_loglevel() -> u8 {
    CONSOLE_LOGLEVEL.load(Ordering::Relaxed)
}

struct SerialWriter;

impl Write for SerialWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        serial::write_bytes(s.as_bytes());
        Ok(())
    }
}

struct LogWriter<'a> {
    console: &'a mut Console,
    to_serial: bool,
}

impl Write for LogWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.console.log.push(s.as_bytes());
        if self.to_serial {
            serial::write_bytes(s.as_bytes());
        }
        Ok(())
    }
}

/// Writes a log line at `level` with an uptime timestamp. Use the `printk!` macro.
pub fn log(level: u8, args: fmt::Arguments<'_>) {
    let ns = crate::kernel::time::uptime_ns();
    let mut console = CONSOLE.lock();
    // As Linux: a message reaches the console when its level is below the console log level
    // (default 7: everything but debug messages).
    let to_serial = level < console_loglevel();
    let mut writer = LogWriter {
        console: &mut console,
        to_serial,
    };
    let _ = writeln!(
        writer,
        "[{:5}.{:06}] {}",
        ns / 1_000_000_000,
        (ns / 1000) % 1_000_000,
        args
    );
}

/// Writes text to the console only (shell output), not the log.
pub fn print(args: fmt::Arguments<'_>) {
    let _guard = CONSOLE.lock();
    let _ = SerialWriter.write_fmt(args);
}

/// Writes to the serial port even if the console lock is held (exceptions, panics).
pub fn emergency_print(args: fmt::Arguments<'_>) {
    match CONSOLE.try_lock() {
        Some(mut console) => {
            let mut writer = LogWriter {
                console: &mut console,
                to_serial: true,
            };
            let _ = writer.write_fmt(args);
        }
        None => {
            let _ = SerialWriter.write_fmt(args);
        }
    }
}

/// Copies the whole log ring (oldest first) into `out`.
pub fn read_log(out: &mut alloc::vec::Vec<u8>) {
    let console = CONSOLE.lock();
    console
        .log
        .for_each_chunk(|chunk| out.extend_from_slice(chunk));
}

/// Kernel log at the default level (6, "info").
#[macro_export]
macro_rules! printk {
    ($($arg:tt)*) => { $crate::kernel::printk::log(6, format_args!($($arg)*)) };
}

/// Kernel log at debug level (7): in the log ring (`dmesg`), not on the console by default.
#[macro_export]
macro_rules! pr_debug {
    ($($arg:tt)*) => { $crate::kernel::printk::log(7, format_args!($($arg)*)) };
}

/// Kernel log at warning level (4).
#[macro_export]
macro_rules! pr_warn {
    ($($arg:tt)*) => { $crate::kernel::printk::log(4, format_args!($($arg)*)) };
}

/// Kernel log at error level (3).
#[macro_export]
macro_rules! pr_err {
    ($($arg:tt)*) => { $crate::kernel::printk::log(3, format_args!($($arg)*)) };
}

/// Shell/console output without a timestamp.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::kernel::printk::print(format_args!($($arg)*)) };
}

/// Shell/console output line without a timestamp.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::kernel::printk::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::kernel::printk::print(format_args!("{}\n", format_args!($($arg)*))) };
}
