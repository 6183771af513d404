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
    let read = || {
        let before = cpu::rdtsc();
        let count = read_channel0();
        let after = cpu::rdtsc();
        (count, before, after)
    };
    let (start_count, start_before, start_after) = read();
    let mut spins = 0u64;
    loop {
        let (now, before, after) = read();
        let elapsed = start_count.wrapping_sub(now);
        if elapsed >= pit_ticks {
            // Stop the counter: mode 0 without a count written leaves it idle.
            outb(0x43, 0x30);
            let window = (before / 2 + after / 2)
                .saturating_sub(start_before / 2 + start_after / 2)
                .max(1);
            let blur = (after - before) + (start_after - start_before);
            return Some(TscMeasurement {
                hz: window * PIT_HZ / elapsed as u64,
                blur_ppm: blur.saturating_mul(1_000_000) / window,
            });
        }
        spins += 1;
        if spins > 50_000_000 {
            outb(0x43, 0x30);
            return None;
        }
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
