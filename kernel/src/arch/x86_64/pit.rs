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

/// Measures the TSC frequency against the PIT over `pit_ticks` PIT periods (≈ 0.84 µs each).
/// Returns `None` when the PIT does not count (absent device).
pub fn calibrate_tsc_hz(pit_ticks: u16) -> Option<u64> {
    // Channel 0, lobyte/hibyte, mode 2 (rate generator), binary; reload 0xFFFF.
    outb(0x43, 0x34);
    outb(0x40, 0xFF);
    outb(0x40, 0xFF);
    let start_count = read_channel0();
    let tsc_start = cpu::rdtsc();
    let mut spins = 0u64;
    loop {
        let now = read_channel0();
        let elapsed = start_count.wrapping_sub(now);
        if elapsed >= pit_ticks {
            let tsc_end = cpu::rdtsc();
            // Stop the counter: mode 0 without a count written leaves it idle.
            outb(0x43, 0x30);
            return Some((tsc_end - tsc_start) * PIT_HZ / elapsed as u64);
        }
        spins += 1;
        if spins > 50_000_000 {
            outb(0x43, 0x30);
            return None;
        }
    }
}
