//! The hardware behind the time subsystem: clocksources (TSC, HPET, ACPI PM timer) and clock
//! event devices (LAPIC timer in one-shot or TSC-deadline mode, HPET comparator, PIT), each
//! implementing the portable traits of `lull-time`.

pub mod kvmclock;

use lull_time::clockevents::{ClockEventDevice, DeviceError, Features};
use lull_time::clocksource::ClockSource;

use crate::arch::acpi::AcpiRegister;
use crate::arch::{apic, cpu, hpet::Hpet, pit};

/// Vector of the per-CPU local timer interrupt (Linux's LOCAL_TIMER_VECTOR).
pub const LOCAL_TIMER_VECTOR: u8 = 0xEC;

/// The time-stamp counter.
pub struct TscSource {
    pub hz: u64,
    pub invariant: bool,
}

impl ClockSource for TscSource {
    fn name(&self) -> &'static str {
        "tsc"
    }
    fn rating(&self) -> u32 {
        // Linux rates every TSC 300. Lull rates a TSC that is not invariant (for example QEMU's
        // default CPU model) below the HPET: its frequency is only as good as a 1 ms boot
        // calibration, while the HPET, PIT and LAPIC timer share one clock in the hypervisor,
        // so timers measured against the HPET are never early by calibration error.
        if self.invariant {
            300
        } else {
            240
        }
    }
    fn mask(&self) -> u64 {
        u64::MAX
    }
    fn read(&self) -> u64 {
        cpu::rdtsc()
    }
    fn frequency_hz(&self) -> u64 {
        self.hz
    }
}

/// The HPET main counter.
pub struct HpetSource(pub Hpet);

impl ClockSource for HpetSource {
    fn name(&self) -> &'static str {
        "hpet"
    }
    fn rating(&self) -> u32 {
        250
    }
    fn mask(&self) -> u64 {
        if self.0.counter_is_64bit() {
            u64::MAX
        } else {
            u32::MAX as u64
        }
    }
    fn read(&self) -> u64 {
        self.0.counter()
    }
    fn frequency_hz(&self) -> u64 {
        self.0.frequency_hz()
    }
}

/// The ACPI power-management timer (3.579545 MHz, 24 or 32 bits).
pub struct AcpiPmSource {
    pub register: AcpiRegister,
    pub bits32: bool,
}

/// ACPI PM timer frequency.
pub const ACPI_PM_HZ: u64 = 3_579_545;

impl ClockSource for AcpiPmSource {
    fn name(&self) -> &'static str {
        "acpi_pm"
    }
    fn rating(&self) -> u32 {
        200
    }
    fn mask(&self) -> u64 {
        if self.bits32 {
            u32::MAX as u64
        } else {
            0xFF_FFFF
        }
    }
    fn read(&self) -> u64 {
        self.register.read() as u64 & self.mask()
    }
    fn frequency_hz(&self) -> u64 {
        ACPI_PM_HZ
    }
}

/// The clock event devices Lull drives. One enum (not `dyn`) so each CPU's tick device is a
/// plain value the portable time code can own.
pub enum TickDevice {
    /// LAPIC timer, TSC-deadline mode: programmed with an absolute TSC value.
    LapicDeadline { tsc_hz: u64 },
    /// LAPIC timer, one-shot/periodic count mode at the calibrated bus clock divided by 16
    /// (as Linux: 32 bits then reach over a minute, so an idle CPU need not wake for it).
    Lapic { bus_hz: u64 },
    /// An HPET comparator routed to an IOAPIC input.
    Hpet { hpet: Hpet, timer: u8, gsi: u8 },
    /// The 8254 PIT channel 0 (IRQ 0).
    Pit,
}

impl ClockEventDevice for TickDevice {
    fn name(&self) -> &'static str {
        match self {
            TickDevice::LapicDeadline { .. } => "lapic-deadline",
            TickDevice::Lapic { .. } => "lapic",
            TickDevice::Hpet { .. } => "hpet",
            TickDevice::Pit => "pit",
        }
    }

    fn rating(&self) -> u32 {
        // Linux's ratings: lapic-deadline 150, lapic 100, hpet 50, pit 0 (here 10).
        match self {
            TickDevice::LapicDeadline { .. } => 150,
            TickDevice::Lapic { .. } => 100,
            TickDevice::Hpet { .. } => 50,
            TickDevice::Pit => 10,
        }
    }

    fn features(&self) -> Features {
        match self {
            TickDevice::LapicDeadline { .. } => {
                Features::ONESHOT | Features::DEADLINE | Features::PER_CPU
            }
            TickDevice::Lapic { .. } => Features::ONESHOT | Features::PERIODIC | Features::PER_CPU,
            TickDevice::Hpet { hpet, timer, .. } if hpet.periodic_capable(*timer) => {
                Features::ONESHOT | Features::PERIODIC
            }
            TickDevice::Hpet { .. } => Features::ONESHOT,
            TickDevice::Pit => Features::ONESHOT | Features::PERIODIC,
        }
    }

    fn frequency_hz(&self) -> u64 {
        match self {
            TickDevice::LapicDeadline { tsc_hz } => *tsc_hz,
            TickDevice::Lapic { bus_hz } => *bus_hz,
            TickDevice::Hpet { hpet, .. } => hpet.frequency_hz(),
            TickDevice::Pit => pit::PIT_HZ,
        }
    }

    fn min_delta_cycles(&self) -> u64 {
        match self {
            TickDevice::LapicDeadline { .. } => 0xF,
            TickDevice::Lapic { .. } => 0xF,
            // The comparator must be set comfortably ahead of the counter (Linux: 5000 cycles
            // at 14.3 MHz; ours runs at 100 MHz under QEMU).
            TickDevice::Hpet { hpet, .. } => (hpet.frequency_hz() / 20_000).max(16),
            TickDevice::Pit => 1,
        }
    }

    fn max_delta_cycles(&self) -> u64 {
        match self {
            TickDevice::LapicDeadline { .. } => u64::MAX >> 1,
            TickDevice::Lapic { .. } => u32::MAX as u64,
            TickDevice::Hpet { .. } => 0x7FFF_FFFF,
            TickDevice::Pit => 0xFFFF,
        }
    }

    fn set_state_shutdown(&mut self) -> Result<(), DeviceError> {
        match self {
            TickDevice::LapicDeadline { .. } | TickDevice::Lapic { .. } => apic::timer::stop(),
            TickDevice::Hpet { hpet, timer, .. } => hpet.stop(*timer),
            TickDevice::Pit => pit::shutdown(),
        }
        Ok(())
    }

    fn set_state_periodic(&mut self, period_cycles: u64) -> Result<(), DeviceError> {
        match self {
            TickDevice::LapicDeadline { .. } => return Err(DeviceError::Unsupported),
            TickDevice::Lapic { .. } => apic::timer::periodic(
                LOCAL_TIMER_VECTOR,
                period_cycles.min(u32::MAX as u64) as u32,
            ),
            TickDevice::Hpet { hpet, timer, gsi } => {
                if !hpet.periodic_capable(*timer) {
                    return Err(DeviceError::Unsupported);
                }
                hpet.arm_periodic(*timer, *gsi, period_cycles)
            }
            TickDevice::Pit => pit::periodic(period_cycles),
        }
        Ok(())
    }

    fn set_state_oneshot(&mut self) -> Result<(), DeviceError> {
        match self {
            TickDevice::LapicDeadline { .. } => apic::timer::deadline_mode(LOCAL_TIMER_VECTOR),
            TickDevice::Lapic { .. } => apic::timer::stop(),
            TickDevice::Hpet { hpet, timer, .. } => hpet.stop(*timer),
            TickDevice::Pit => pit::shutdown(),
        }
        Ok(())
    }

    fn set_next_event(&mut self, cycles: u64) -> Result<(), DeviceError> {
        match self {
            TickDevice::LapicDeadline { .. } => {
                apic::timer::arm_deadline(cpu::rdtsc().wrapping_add(cycles));
            }
            TickDevice::Lapic { .. } => {
                apic::timer::oneshot(LOCAL_TIMER_VECTOR, cycles.min(u32::MAX as u64) as u32)
            }
            TickDevice::Hpet { hpet, timer, gsi } => {
                let deadline = hpet.counter().wrapping_add(cycles);
                hpet.arm_oneshot(*timer, *gsi, deadline);
                // If the counter already passed the comparator the interrupt is lost: say so,
                // and the framework retries with a larger delta (Linux's -ETIME).
                let now = hpet.counter();
                if (now.wrapping_sub(deadline) as i64) >= 0 {
                    return Err(DeviceError::Time);
                }
            }
            TickDevice::Pit => pit::oneshot(cycles),
        }
        Ok(())
    }
}
