//! Early timekeeping: the TSC, calibrated at boot, gives uptime until the clocksource layer is up.
//!
//! The full time subsystem (clocksources, clock event devices, hrtimers, NO_HZ) builds on
//! this; until then uptime is TSC-based with a frequency measured once.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{cpu, pit};

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Records the TSC value at kernel entry (uptime zero).
pub fn set_boot_tsc(tsc: u64) {
    BOOT_TSC.store(tsc, Ordering::Relaxed);
}

/// A TSC calibration under way: [`start_calibration`] opens it, [`finish_calibration`] ends it.
pub enum Calibration {
    /// CPUID or the hypervisor said the rate; nothing to measure.
    Known(u64),
    /// A PIT window runs while the boot sets up memory and parameters (milliseconds of
    /// first-time code under TCG) instead of the boot spinning through windows of its own.
    Pit(pit::OpenWindow),
}

/// Starts the TSC calibration. A rate CPUID or the hypervisor timing leaf gives (leaf
/// 0x15/0x16, 0x40000010) is used at once; otherwise the PIT starts counting, and until
/// [`finish_calibration`] uptime reads 0 (the console's first lines say `[    0.000000]`, as
/// Linux's do before its clock is calibrated).
pub fn start_calibration() -> Calibration {
    match tsc_hz_from_cpuid() {
        Some(hz) => {
            TSC_HZ.store(hz, Ordering::Relaxed);
            Calibration::Known(hz)
        }
        None => Calibration::Pit(pit::open_window()),
    }
}

/// Ends the calibration and sets the TSC rate: the PIT window opened at
/// [`start_calibration`] (at least 1.5 ms, both ends read quickly: within 0.1 %), else the
/// median of three 0.5 ms PIT windows, else an assumed 1 GHz.
pub fn finish_calibration(calibration: Calibration) -> (u64, &'static str) {
    const SHARP_LONG_WINDOW_PPM: u64 = 1_000;
    let (hz, method) = match calibration {
        Calibration::Known(hz) => (hz, "cpuid"),
        Calibration::Pit(window) => pit::close_window(window, 1790)
            .filter(|measurement| measurement.blur_ppm <= SHARP_LONG_WINDOW_PPM)
            .map(|measurement| (measurement.hz, "PIT, one window over the boot"))
            .or_else(|| pit_calibration().map(|hz| (hz, "PIT, median of 0.5 ms windows")))
            .unwrap_or((1_000_000_000, "assumed")),
    };
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, method)
}

/// Median of three 0.5 ms PIT windows whose end reads were quick. The first window also pays
/// for translating (under TCG) or faulting in the calibration code, and any read can lose the
/// vCPU to the host for a while: a window whose end reads took more than 1 % of it is measured
/// again (up to 12 windows), and the median ignores one outlier among the rest. Under heavy
/// host load three windows in a row could all be off by a few percent.
fn pit_calibration() -> Option<u64> {
    const SHARP_PPM: u64 = 10_000;
    let mut sharp = [0u64; 3];
    let mut found = 0;
    let mut blurred = [0u64; 3];
    // A 10 us warm-up window first, discarded: under TCG the first one pays for translating
    // this code inside its end reads.
    pit::calibrate_tsc_hz(12)?;
    for attempt in 0..12 {
        let measurement = pit::calibrate_tsc_hz(597)?;
        if measurement.blur_ppm <= SHARP_PPM {
            sharp[found] = measurement.hz;
            found += 1;
            if found == sharp.len() {
                break;
            }
        } else if attempt < blurred.len() {
            blurred[attempt] = measurement.hz;
        }
    }
    match found {
        3 => {
            sharp.sort_unstable();
            Some(sharp[1])
        }
        // A host too busy for three sharp windows: the sharp ones there were ...
        1 => Some(sharp[0]),
        2 => Some(sharp[0] / 2 + sharp[1] / 2),
        // ... or, with none, the median of the first three.
        _ => {
            blurred.sort_unstable();
            Some(blurred[1])
        }
    }
}

fn tsc_hz_from_cpuid() -> Option<u64> {
    let max_leaf = cpu::cpuid(0, 0).eax;
    if max_leaf >= 0x15 {
        let leaf = cpu::cpuid(0x15, 0);
        if leaf.eax != 0 && leaf.ebx != 0 && leaf.ecx != 0 {
            return Some(leaf.ecx as u64 * leaf.ebx as u64 / leaf.eax as u64);
        }
    }
    // Leaf 0x16: processor base frequency in MHz (the TSC runs at it on parts without 0x15).
    if max_leaf >= 0x16 {
        let mhz = cpu::cpuid(0x16, 0).eax as u64 & 0xFFFF;
        if mhz != 0 {
            return Some(mhz * 1_000_000);
        }
    }
    // Hypervisor timing leaf (VMware/KVM convention): TSC frequency in kHz.
    let hypervisor = cpu::cpuid(1, 0).ecx & (1 << 31) != 0;
    if hypervisor && cpu::cpuid(0x4000_0000, 0).eax >= 0x4000_0010 {
        let khz = cpu::cpuid(0x4000_0010, 0).eax as u64;
        if khz != 0 {
            return Some(khz * 1000);
        }
    }
    None
}

/// TSC frequency in Hz (0 before calibration).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Converts TSC cycles to nanoseconds without overflow for centuries of uptime.
fn cycles_to_ns(cycles: u64) -> u64 {
    let hz = tsc_hz();
    if hz == 0 {
        return 0;
    }
    ((cycles as u128 * 1_000_000_000) / hz as u128) as u64
}

/// Uptime already counted when the frequency was last changed, and the TSC at that moment
/// (so a better frequency learned later never moves uptime backwards).
static BASE_NS: AtomicU64 = AtomicU64::new(0);
static BASE_TSC: AtomicU64 = AtomicU64::new(0);

/// Replaces the calibrated TSC frequency with a better one (the hypervisor's own, from
/// kvm-clock) before the clocksources are registered. Boot-CPU only, interrupts off.
pub fn refine_tsc_hz(hz: u64) {
    if hz == 0 {
        return;
    }
    let now = cpu::rdtsc();
    let base_ns = uptime_at(now);
    BASE_NS.store(base_ns, Ordering::Relaxed);
    BASE_TSC.store(now, Ordering::Relaxed);
    TSC_HZ.store(hz, Ordering::Relaxed);
}

fn uptime_at(tsc: u64) -> u64 {
    let base_tsc = BASE_TSC.load(Ordering::Relaxed);
    if base_tsc == 0 {
        return cycles_to_ns(tsc.saturating_sub(BOOT_TSC.load(Ordering::Relaxed)));
    }
    BASE_NS.load(Ordering::Relaxed) + cycles_to_ns(tsc.saturating_sub(base_tsc))
}

/// Nanoseconds since kernel entry.
pub fn uptime_ns() -> u64 {
    uptime_at(cpu::rdtsc())
}
