//! The 8254 PIT, used only to calibrate the TSC at boot (channel 0, read-back, no interrupt).

use super::cpu;
use super::port::{inb, outb};

/// PIT input clock in Hz.
pub const PIT_HZ: u64 = 1_193_182;

fn read_channel0() -> u16 {
    outb(0x43, 0x00); // latch channel 0
    let low = inb(0x40) as u16;
    let high = inb(0x40) as u16;
    (high << 8) | low
}

/// One TSC-against-PIT measurement: the TSC frequency, and how much of the window the reads at
/// its two ends took (a read the host held up blurs the window's edges by that much).
#[derive(Clone, Copy, Debug)]
pub struct TscMeasurement {
    pub hz: u64,
    /// TSC cycles spent inside the two end reads, per million cycles of window.
    pub blur_ppm: u64,
}

/// Measures the TSC frequency against the PIT over `pit_ticks` PIT periods (≈ 0.84 µs each).
/// Each PIT read is bracketed by two TSC reads and the window runs between the brackets'
/// midpoints. Returns `None` when the PIT does not count (absent device).
pub fn calibrate_tsc_hz(pit_ticks: u16) -> Option<TscMeasurement> {
    // Channel 0, lobyte/hibyte, mode 2 (rate generator), binary; reload 0xFFFF.
    outb(0x43, 0x34);
    outb(0x40, 0xFF);
    outb(0x40, 0xFF);
    let read = bracketed_read;
    let (start_count, start_before, start_after) = read();
    let mut spins = 0u64;
    loop {
        let (now, before, after) = read();
        let elapsed = start_count.wrapping_sub(now);
        if elapsed >= pit_ticks {
            // Stop the counter: mode 0 without a count written leaves it idle.
            outb(0x43, 0x30);
            return Some(measurement(
                elapsed,
                (start_before, start_after),
                (before, after),
            ));
        }
        spins += 1;
        if spins > 50_000_000 {
            outb(0x43, 0x30);
            return None;
        }
    }
}

/// A calibration window left open while the boot does other work: channel 0 counts down
/// from 0xFFFF in mode 0 (55 ms), and its OUT pin, read back at the end, says whether the
/// count ran out meanwhile (a window that long cannot be measured).
pub struct OpenWindow {
    start_count: u16,
    start_before: u64,
    start_after: u64,
}

/// Starts channel 0 counting and reads its start. A read right before, discarded, pays for
/// translating this code under TCG, so the start read itself is quick.
pub fn open_window() -> OpenWindow {
    // Channel 0, lobyte/hibyte, mode 0 (interrupt on terminal count, IRQ 0 unused), binary.
    outb(0x43, 0x30);
    outb(0x40, 0xFF);
    outb(0x40, 0xFF);
    let _ = bracketed_read();
    let (start_count, start_before, start_after) = bracketed_read();
    OpenWindow {
        start_count,
        start_before,
        start_after,
    }
}

/// Ends a window [`open_window`] started, waiting until it is at least `min_ticks` long.
/// `None` when the PIT does not count or the count ran out (the window was over 55 ms).
pub fn close_window(window: OpenWindow, min_ticks: u16) -> Option<TscMeasurement> {
    let mut spins = 0u64;
    let (end_count, end_before, end_after) = loop {
        let (count, before, after) = bracketed_read();
        if window.start_count.wrapping_sub(count) >= min_ticks {
            break (count, before, after);
        }
        spins += 1;
        if spins > 50_000_000 {
            outb(0x43, 0x30);
            return None;
        }
    };
    // Read-back command: latch channel 0's status; bit 7 is OUT, high once the count hit 0.
    outb(0x43, 0xE2);
    let ran_out = inb(0x40) & 0x80 != 0;
    outb(0x43, 0x30);
    let elapsed = window.start_count.wrapping_sub(end_count);
    if ran_out || end_count > window.start_count {
        return None;
    }
    Some(measurement(
        elapsed,
        (window.start_before, window.start_after),
        (end_before, end_after),
    ))
}

/// Channel 0's count between two TSC reads. Never inlined: every read then runs the same
/// code, translated (under TCG) by the first one, so no translation lands between the two
/// TSC reads of a later one (a copy inlined into `close_window` did: 49 us of blur).
#[inline(never)]
fn bracketed_read() -> (u16, u64, u64) {
    let before = cpu::rdtsc();
    let count = read_channel0();
    let after = cpu::rdtsc();
    (count, before, after)
}

/// The TSC rate over `elapsed` PIT ticks between two bracketed reads (the window runs between
/// the brackets' midpoints; their widths are its blur).
fn measurement(elapsed: u16, start: (u64, u64), end: (u64, u64)) -> TscMeasurement {
    let window = (end.0 / 2 + end.1 / 2)
        .saturating_sub(start.0 / 2 + start.1 / 2)
        .max(1);
    let blur = (end.1 - end.0) + (start.1 - start.0);
    TscMeasurement {
        hz: window * PIT_HZ / u64::from(elapsed).max(1),
        blur_ppm: blur.saturating_mul(1_000_000) / window,
    }
}

/// Fires IRQ 0 once after `count` PIT ticks (mode 0). `count` is clamped to 1..=65535.
pub fn oneshot(count: u64) {
    let count = count.clamp(1, 0xFFFF) as u16;
    outb(0x43, 0x30);
    outb(0x40, count as u8);
    outb(0x40, (count >> 8) as u8);
}

/// Fires IRQ 0 every `count` PIT ticks (mode 2).
pub fn periodic(count: u64) {
    let count = count.clamp(2, 0xFFFF) as u16;
    outb(0x43, 0x34);
    outb(0x40, count as u8);
    outb(0x40, (count >> 8) as u8);
}

/// Stops channel 0 (mode 0 with no count written leaves it idle).
pub fn shutdown() {
    outb(0x43, 0x30);
}
