//! The HPET: a free-running main counter (a clocksource) and comparators that raise interrupts
//! (clock event devices). Register layout from the IA-PC HPET specification 1.0a.

const CAPABILITIES: u64 = 0x000;
const CONFIGURATION: u64 = 0x010;
const INTERRUPT_STATUS: u64 = 0x020;
const MAIN_COUNTER: u64 = 0x0F0;
const TIMER_BASE: u64 = 0x100;
const TIMER_STRIDE: u64 = 0x20;

const CONFIG_ENABLE: u64 = 1 << 0;
const CONFIG_LEGACY_ROUTE: u64 = 1 << 1;

const TIMER_LEVEL: u64 = 1 << 1;
const TIMER_INTERRUPT_ENABLE: u64 = 1 << 2;
const TIMER_PERIODIC: u64 = 1 << 3;
const TIMER_PERIODIC_CAPABLE: u64 = 1 << 4;
const TIMER_VALUE_SET: u64 = 1 << 6;
const TIMER_32BIT_MODE: u64 = 1 << 8;

/// An HPET block found through the ACPI HPET table.
#[derive(Debug, Clone, Copy)]
pub struct Hpet {
    base: u64,
    period_fs: u64,
    counter_64bit: bool,
}

impl Hpet {
    fn read(&self, register: u64) -> u64 {
        // SAFETY: `base` is the HPET MMIO block from the ACPI table (below 4 GiB, identity-
        // mapped uncached); registers are 64-bit aligned offsets inside its 1 KiB window.
        unsafe { core::ptr::read_volatile((self.base + register) as usize as *const u64) }
    }

    fn write(&self, register: u64, value: u64) {
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.base + register) as usize as *mut u64, value) }
    }

    /// Checks the block the ACPI HPET table names and returns it if its capabilities are sane.
    pub fn probe(block: super::acpi::FirmwareMmio) -> Option<Hpet> {
        let base = block.address();
        if base == 0 || base >= (1 << 32) {
            return None;
        }
        let probe = Hpet {
            base,
            period_fs: 0,
            counter_64bit: false,
        };
        let capabilities = probe.read(CAPABILITIES);
        let period_fs = capabilities >> 32;
        // The specification bounds the period at 100 ns (10 MHz minimum).
        if period_fs == 0 || period_fs > 100_000_000 {
            return None;
        }
        Some(Hpet {
            base,
            period_fs,
            counter_64bit: capabilities & (1 << 13) != 0,
        })
    }

    /// Counter frequency in Hz.
    pub fn frequency_hz(&self) -> u64 {
        1_000_000_000_000_000 / self.period_fs
    }

    /// Whether the main counter is 64 bits wide (else 32).
    pub fn counter_is_64bit(&self) -> bool {
        self.counter_64bit
    }

    /// Starts the main counter, with or without legacy replacement routing.
    pub fn enable(&self, legacy_route: bool) {
        let mut config = self.read(CONFIGURATION) | CONFIG_ENABLE;
        if legacy_route {
            config |= CONFIG_LEGACY_ROUTE;
        } else {
            config &= !CONFIG_LEGACY_ROUTE;
        }
        self.write(CONFIGURATION, config);
    }

    /// Reads the main counter.
    pub fn counter(&self) -> u64 {
        self.read(MAIN_COUNTER)
    }

    /// IOAPIC inputs comparator `timer` can be routed to (bit n = GSI n).
    pub fn route_capabilities(&self, timer: u8) -> u32 {
        (self.read(TIMER_BASE + TIMER_STRIDE * timer as u64) >> 32) as u32
    }

    /// Whether comparator `timer` supports periodic mode.
    pub fn periodic_capable(&self, timer: u8) -> bool {
        self.read(TIMER_BASE + TIMER_STRIDE * timer as u64) & TIMER_PERIODIC_CAPABLE != 0
    }

    /// Disables comparator `timer`'s interrupt.
    pub fn stop(&self, timer: u8) {
        let register = TIMER_BASE + TIMER_STRIDE * timer as u64;
        let config = self.read(register) & !(TIMER_INTERRUPT_ENABLE | TIMER_PERIODIC);
        self.write(register, config);
    }

    fn configure(&self, timer: u8, gsi: u8, periodic: bool) -> u64 {
        let register = TIMER_BASE + TIMER_STRIDE * timer as u64;
        let mut config = self.read(register);
        config &= !(0x1F << 9 | TIMER_LEVEL | TIMER_PERIODIC | TIMER_32BIT_MODE);
        config |= ((gsi as u64) & 0x1F) << 9 | TIMER_INTERRUPT_ENABLE;
        if periodic {
            config |= TIMER_PERIODIC;
        }
        self.write(register, config);
        register
    }

    /// Arms comparator `timer` to fire once when the counter reaches `deadline`.
    ///
    /// The comparator is written while the comparator's interrupt is still disabled: enabling
    /// it first lets the stale comparator (after reset `!0`, which QEMU treats as already
    /// passed) fire at once, before the new deadline lands. Under host load QEMU's timer thread
    /// won that race and the in-kernel HPET test saw its one-shot 50 us into a 2 ms delay.
    pub fn arm_oneshot(&self, timer: u8, gsi: u8, deadline: u64) {
        self.stop(timer);
        let register = TIMER_BASE + TIMER_STRIDE * timer as u64;
        self.write(register + 8, deadline);
        self.write(INTERRUPT_STATUS, 1 << timer);
        self.configure(timer, gsi, false);
    }

    /// As [`Hpet::arm_oneshot`], but level-triggered: the comparator keeps its interrupt line
    /// asserted until [`Hpet::clear_level_interrupt`] (the threaded-IRQ tests need a line that
    /// stays asserted).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn arm_oneshot_level(&self, timer: u8, gsi: u8, deadline: u64) {
        self.arm_oneshot(timer, gsi, deadline);
        let register = TIMER_BASE + TIMER_STRIDE * timer as u64;
        self.write(register, self.read(register) | TIMER_LEVEL);
    }

    /// Acknowledges comparator `timer`'s level interrupt (its line is deasserted).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn clear_level_interrupt(&self, timer: u8) {
        self.write(INTERRUPT_STATUS, 1 << timer);
    }

    /// Makes comparator `timer` fire every `period` counter ticks, starting one period from now.
    /// As for one-shot, the comparator is set before the interrupt is enabled (otherwise the
    /// stale comparator fires at once and the first period is short).
    pub fn arm_periodic(&self, timer: u8, gsi: u8, period: u64) {
        self.stop(timer);
        let register = TIMER_BASE + TIMER_STRIDE * timer as u64;
        let config = self.read(register) & !(TIMER_INTERRUPT_ENABLE | TIMER_32BIT_MODE);
        self.write(register, config | TIMER_PERIODIC | TIMER_VALUE_SET);
        // With VALUE_SET, the first write sets the comparator, the second the period.
        self.write(register + 8, self.counter().wrapping_add(period));
        self.write(register + 8, period);
        self.write(INTERRUPT_STATUS, 1 << timer);
        self.configure(timer, gsi, true);
    }
}
