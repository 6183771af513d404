//! kvm-clock: the clocksource KVM publishes in per-CPU pvclock areas (Linux's
//! `arch/x86/kernel/kvmclock.c`). It counts nanoseconds of the VM's system time, scaled by the
//! host from the TSC, so it needs no calibration and stays right across pause, snapshot,
//! restore and migration, where a raw TSC jumps.

use lull_pv::pvclock::MonotonicClamp;
use lull_time::clocksource::ClockSource;

use crate::arch::kvm;
use crate::arch::percpu::InterruptsDisabled;

/// The kvm-clock clocksource.
pub struct KvmClock {
    /// Monotonic across CPUs when the host does not promise TSC-stable readings.
    clamp: MonotonicClamp,
    stable: bool,
}

impl KvmClock {
    /// kvm-clock on the boot CPU's area, or `None` when it is not registered.
    pub fn new(stable_bit_advertised: bool) -> Option<KvmClock> {
        let (snapshot, _) = kvm::read_pvclock(0)?;
        Some(KvmClock {
            clamp: MonotonicClamp::new(stable_bit_advertised),
            stable: stable_bit_advertised && snapshot.tsc_stable(),
        })
    }

    /// Whether the host marked the clock TSC-stable (same reading on every vCPU).
    pub fn stable(&self) -> bool {
        self.stable
    }
}

/// Nanoseconds of the VM's system time on this CPU's pvclock area (CPU 0's while this CPU's is
/// not registered yet), not clamped.
pub fn system_time_ns() -> Option<u64> {
    let cpu = InterruptsDisabled::new().cpu_index();
    let (snapshot, tsc) = kvm::read_pvclock(cpu).or_else(|| kvm::read_pvclock(0))?;
    Some(snapshot.nanoseconds_at(tsc))
}

impl ClockSource for KvmClock {
    fn name(&self) -> &'static str {
        "kvm-clock"
    }
    fn rating(&self) -> u32 {
        // Above every TSC when the host says all vCPUs read the same clock; otherwise just
        // below an invariant TSC (Linux rates kvm-clock 400, and 299 when the TSC is good).
        if self.stable {
            400
        } else {
            299
        }
    }
    fn mask(&self) -> u64 {
        u64::MAX
    }
    fn read(&self) -> u64 {
        // Interrupts off: the area read is this CPU's, and no preemption moves us mid-read.
        let interrupts_off = InterruptsDisabled::new();
        let cpu = interrupts_off.cpu_index();
        match kvm::read_pvclock(cpu).or_else(|| kvm::read_pvclock(0)) {
            Some((snapshot, tsc)) => self.clamp.read(&snapshot, tsc),
            None => self.clamp.last(),
        }
    }
    fn frequency_hz(&self) -> u64 {
        1_000_000_000
    }
}
