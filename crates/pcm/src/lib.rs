//! PCM for Lull's sound commands and for the tests that judge them from outside.
//!
//! Why a crate: the kernel plays a tone (`speaker-test -t sine`) and the host checks the WAV
//! file QEMU recorded. Both generate the samples with this code, so the test can ask for the
//! recording to be *bit-identical* to what was sent, and a second, independent check (the
//! spectral peak) says the tone is the frequency it claims.
//!
//! The tone is a 1024-point sine table (built once with a Taylor series; no `libm` in
//! `no_std`) read by a 32-bit phase accumulator with linear interpolation: the frequency is
//! exact to `rate / 2^32` Hz and the same integers come out on every machine.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec::Vec;

/// Entries in the sine table (a power of two).
const TABLE_BITS: u32 = 10;
const TABLE_LEN: usize = 1 << TABLE_BITS;

/// `sin(x)` for `x` in `[-pi, pi]`, by its Taylor series to the x^21 term (error < 1e-9).
fn sin_reduced(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 1.0;
    while n < 21.0 {
        term = -term * x2 / ((n + 1.0) * (n + 2.0));
        sum += term;
        n += 2.0;
    }
    sum
}

/// The table: `TABLE_LEN + 1` entries of `sin` scaled to `i16::MAX` (the last repeats the
/// first, for interpolation).
fn table() -> Vec<i32> {
    const PI: f64 = core::f64::consts::PI;
    (0..=TABLE_LEN)
        .map(|i| {
            let mut x = 2.0 * PI * (i as f64) / (TABLE_LEN as f64);
            if x > PI {
                x -= 2.0 * PI;
            }
            let value = sin_reduced(x) * f64::from(i16::MAX);
            // Round half away from zero without `f64::round` (not in core).
            if value >= 0.0 {
                (value + 0.5) as i32
            } else {
                (value - 0.5) as i32
            }
        })
        .collect()
}

/// A sine tone generator: interleaved signed 16-bit little-endian frames.
pub struct Sine {
    table: Vec<i32>,
    phase: u32,
    increment: u32,
    /// Amplitude in 1/65536 of full scale.
    gain: u32,
    channels: usize,
}

/// Why a tone cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToneError {
    /// The frequency is zero or not below half the rate (Nyquist).
    Frequency,
    /// The rate is zero.
    Rate,
    /// No channels, or more than 8.
    Channels,
    /// Amplitude above 100 %.
    Amplitude,
}

impl core::fmt::Display for ToneError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Frequency => "the frequency must be above 0 and below half the rate",
            Self::Rate => "the rate must be above 0",
            Self::Channels => "1 to 8 channels",
            Self::Amplitude => "the amplitude is a percentage, 0 to 100",
        })
    }
}

impl Sine {
    /// A tone of `frequency_hz` at `rate_hz`, `channels` interleaved, `amplitude_percent` of
    /// full scale.
    pub fn new(
        frequency_hz: u32,
        rate_hz: u32,
        channels: usize,
        amplitude_percent: u32,
    ) -> Result<Self, ToneError> {
        if rate_hz == 0 {
            return Err(ToneError::Rate);
        }
        if frequency_hz == 0 || u64::from(frequency_hz) * 2 >= u64::from(rate_hz) {
            return Err(ToneError::Frequency);
        }
        if !(1..=8).contains(&channels) {
            return Err(ToneError::Channels);
        }
        if amplitude_percent > 100 {
            return Err(ToneError::Amplitude);
        }
        let increment =
            ((u64::from(frequency_hz) << 32) + u64::from(rate_hz) / 2) / u64::from(rate_hz);
        Ok(Self {
            table: table(),
            phase: 0,
            increment: increment as u32,
            gain: amplitude_percent * 65536 / 100,
            channels,
        })
    }

    /// The next sample (the same value goes to every channel of the frame).
    fn next_sample(&mut self) -> i16 {
        let index = (self.phase >> (32 - TABLE_BITS)) as usize;
        let fraction = i64::from(self.phase & ((1 << (32 - TABLE_BITS)) - 1));
        let (a, b) = (
            i64::from(self.table[index]),
            i64::from(self.table[index + 1]),
        );
        let value = a + (((b - a) * fraction) >> (32 - TABLE_BITS));
        self.phase = self.phase.wrapping_add(self.increment);
        ((value * i64::from(self.gain)) >> 16) as i16
    }

    /// Fills `out` with whole frames of little-endian samples; returns the bytes written (a
    /// multiple of the frame size).
    pub fn fill(&mut self, out: &mut [u8]) -> usize {
        let frame = 2 * self.channels;
        let frames = out.len() / frame;
        for chunk in out[..frames * frame].chunks_exact_mut(frame) {
            let sample = self.next_sample().to_le_bytes();
            for channel in chunk.chunks_exact_mut(2) {
                channel.copy_from_slice(&sample);
            }
        }
        frames * frame
    }
}

/// `frames` frames of the tone, as bytes (host tests compare recordings with this).
pub fn sine_bytes(
    frequency_hz: u32,
    rate_hz: u32,
    channels: usize,
    amplitude_percent: u32,
    frames: usize,
) -> Result<Vec<u8>, ToneError> {
    let mut sine = Sine::new(frequency_hz, rate_hz, channels, amplitude_percent)?;
    let mut out = alloc::vec![0u8; frames * 2 * channels];
    sine.fill(&mut out);
    Ok(out)
}

/// A test pattern that shows any dropped, repeated, reordered or swapped sample: sample `i` of
/// the interleaved stream (frame `i / channels`, channel `i % channels`) is `i` as a 16-bit
/// two's-complement value, so one second of stereo at 48 kHz passes every value there is.
pub struct Pattern {
    next: u16,
    channels: usize,
}

impl Pattern {
    /// The pattern for `channels` interleaved channels (1 to 8).
    pub fn new(channels: usize) -> Result<Self, ToneError> {
        if !(1..=8).contains(&channels) {
            return Err(ToneError::Channels);
        }
        Ok(Self { next: 0, channels })
    }

    /// Fills `out` with whole frames; returns the bytes written.
    pub fn fill(&mut self, out: &mut [u8]) -> usize {
        let frame = 2 * self.channels;
        let bytes = out.len() / frame * frame;
        for sample in out[..bytes].chunks_exact_mut(2) {
            sample.copy_from_slice(&self.next.to_le_bytes());
            self.next = self.next.wrapping_add(1);
        }
        bytes
    }
}

/// `frames` frames of the pattern, as bytes.
pub fn pattern_bytes(channels: usize, frames: usize) -> Result<Vec<u8>, ToneError> {
    let mut pattern = Pattern::new(channels)?;
    let mut out = alloc::vec![0u8; frames * 2 * channels];
    pattern.fill(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_counts_samples_across_fills() {
        let whole = pattern_bytes(2, 40_000).unwrap();
        let values: Vec<i16> = whole
            .chunks_exact(2)
            .map(|p| i16::from_le_bytes([p[0], p[1]]))
            .collect();
        assert_eq!(values[0], 0);
        assert_eq!(values[1], 1);
        assert_eq!(values[32_768], i16::MIN);
        assert_eq!(values[65_535], -1);
        assert_eq!(values[65_536], 0);
        let mut pattern = Pattern::new(2).unwrap();
        let mut pieces = Vec::new();
        for size in [6usize, 4096, 3] {
            let mut buffer = vec![0u8; size];
            let n = pattern.fill(&mut buffer);
            assert_eq!(n % 4, 0);
            pieces.extend_from_slice(&buffer[..n]);
        }
        assert_eq!(&pieces[..], &whole[..pieces.len()]);
        assert!(Pattern::new(0).is_err());
    }

    fn samples(bytes: &[u8], channels: usize) -> Vec<i16> {
        bytes
            .chunks_exact(2 * channels)
            .map(|f| i16::from_le_bytes([f[0], f[1]]))
            .collect()
    }

    #[test]
    fn a_thousand_hertz_crosses_zero_two_thousand_times_a_second() {
        let bytes = sine_bytes(1000, 48000, 2, 50, 48000).unwrap();
        let s = samples(&bytes, 2);
        let rising = s.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
        assert!((999..=1001).contains(&rising), "{rising} rising crossings");
        let peak = s.iter().map(|v| v.unsigned_abs()).max().unwrap();
        // 50 % of 32767, within interpolation error.
        assert!((16_300..=16_400).contains(&peak), "peak {peak}");
    }

    #[test]
    fn both_channels_carry_the_same_sample() {
        let bytes = sine_bytes(440, 44100, 2, 100, 100).unwrap();
        for frame in bytes.chunks_exact(4) {
            assert_eq!(frame[..2], frame[2..]);
        }
    }

    #[test]
    fn chunked_fill_equals_one_fill() {
        let whole = sine_bytes(997, 48000, 2, 80, 11_000).unwrap();
        let mut sine = Sine::new(997, 48000, 2, 80).unwrap();
        let mut pieces = Vec::new();
        for size in [4096usize, 4, 1000, 36_000] {
            let mut buf = vec![0u8; size];
            let n = sine.fill(&mut buf);
            pieces.extend_from_slice(&buf[..n]);
        }
        assert_eq!(&pieces[..], &whole[..pieces.len()]);
    }

    #[test]
    fn the_table_is_a_sine() {
        let t = table();
        assert_eq!(t[0], 0);
        assert_eq!(t[TABLE_LEN / 4], i32::from(i16::MAX));
        assert_eq!(t[TABLE_LEN / 2], 0);
        assert_eq!(t[3 * TABLE_LEN / 4], -i32::from(i16::MAX));
        assert_eq!(t[TABLE_LEN], 0);
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert_eq!(Sine::new(0, 48000, 2, 50).err(), Some(ToneError::Frequency));
        assert_eq!(
            Sine::new(24000, 48000, 2, 50).err(),
            Some(ToneError::Frequency)
        );
        assert_eq!(Sine::new(1000, 0, 2, 50).err(), Some(ToneError::Rate));
        assert_eq!(
            Sine::new(1000, 48000, 0, 50).err(),
            Some(ToneError::Channels)
        );
        assert_eq!(
            Sine::new(1000, 48000, 2, 101).err(),
            Some(ToneError::Amplitude)
        );
    }
}
