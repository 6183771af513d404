//! Local APIC and IOAPIC: interrupt delivery to this CPU, and routing of device lines.
//!
//! The legacy 8259 PICs are remapped away from the exception vectors and fully masked: every
//! device interrupt goes through the IOAPIC, as on any SMP-capable system.

use core::sync::atomic::{AtomicU64, Ordering};

use super::cpu;
use super::port::outb;

const IA32_APIC_BASE: u32 = 0x1B;
const APIC_BASE_ENABLE: u64 = 1 << 11;

const LAPIC_ID: usize = 0x20;
const LAPIC_EOI: usize = 0xB0;
const LAPIC_SPURIOUS: usize = 0xF0;
const LAPIC_ICR_LOW: usize = 0x300;
const LAPIC_ICR_HIGH: usize = 0x310;
/// ICR: the previous IPI is still being sent.
const ICR_SEND_PENDING: u32 = 1 << 12;
/// ICR: level assert (required for everything but INIT de-assert).
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_DELIVERY_FIXED: u32 = 0 << 8;
const ICR_DELIVERY_INIT: u32 = 5 << 8;
const ICR_DELIVERY_STARTUP: u32 = 6 << 8;
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_TIMER_INITIAL: usize = 0x380;
const LAPIC_TIMER_CURRENT: usize = 0x390;
const LAPIC_TIMER_DIVIDE: usize = 0x3E0;
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
const LVT_TIMER_TSC_DEADLINE: u32 = 2 << 17;
const IA32_TSC_DEADLINE: u32 = 0x6E0;
const LAPIC_LVT_LINT0: usize = 0x350;
const LAPIC_LVT_LINT1: usize = 0x360;
const LAPIC_LVT_ERROR: usize = 0x370;
const LVT_MASKED: u32 = 1 << 16;

static LAPIC_BASE: AtomicU64 = AtomicU64::new(0);

// One copy for the ~20 callers (less boot code for TCG to translate).
#[inline(never)]
fn lapic_write(register: usize, value: u32) {
    let base = LAPIC_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return;
    }
    // SAFETY: `base` is the LAPIC MMIO page (identity-mapped, uncached) read from
    // IA32_APIC_BASE; `register` is an in-page, 16-byte-aligned register offset.
    unsafe { core::ptr::write_volatile((base as usize + register) as *mut u32, value) }
}

fn lapic_read(register: usize) -> u32 {
    let base = LAPIC_BASE.load(Ordering::Relaxed);
    if base == 0 {
        return 0;
    }
    // SAFETY: as for `lapic_write`.
    unsafe { core::ptr::read_volatile((base as usize + register) as *const u32) }
}

/// Masks both 8259 PICs after moving them to vectors 0x20..0x2F (so a stray legacy interrupt
/// cannot be mistaken for an exception).
fn disable_legacy_pic() {
    outb(0x20, 0x11);
    outb(0xA0, 0x11);
    outb(0x21, 0x20);
    outb(0xA1, 0x28);
    outb(0x21, 0x04);
    outb(0xA1, 0x02);
    outb(0x21, 0x01);
    outb(0xA1, 0x01);
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
}

/// Enables this CPU's local APIC in xAPIC mode with the spurious vector set and every local
/// vector table entry masked (the time subsystem programs the timer LVT itself). The boot CPU
/// also masks the legacy 8259 PICs (once, for the whole machine).
pub fn init_local(spurious_vector: u8, boot_cpu: bool) {
    if boot_cpu {
        disable_legacy_pic();
    }
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU with an APIC (all of them).
    let base_msr = unsafe { cpu::rdmsr(IA32_APIC_BASE) };
    // SAFETY: setting the global-enable bit keeps the same base address.
    unsafe { cpu::wrmsr(IA32_APIC_BASE, base_msr | APIC_BASE_ENABLE) };
    LAPIC_BASE.store(base_msr & 0xFFFF_F000, Ordering::Relaxed);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT1, LVT_MASKED);
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_SPURIOUS, 0x100 | spurious_vector as u32);
}

/// This CPU's local APIC ID.
pub fn local_apic_id() -> u32 {
    lapic_read(LAPIC_ID) >> 24
}

/// Writes the interrupt command register: `low` (vector, delivery mode, level) to the CPU
/// with APIC ID `destination`. Waits for the previous IPI to leave first. Called with
/// interrupts disabled, so the two halves of the ICR are not interleaved with another sender
/// on this CPU (each CPU has its own ICR).
fn send_command(destination: u32, low: u32) {
    while lapic_read(LAPIC_ICR_LOW) & ICR_SEND_PENDING != 0 {
        core::hint::spin_loop();
    }
    lapic_write(LAPIC_ICR_HIGH, destination << 24);
    lapic_write(LAPIC_ICR_LOW, low);
}

/// Sends a fixed interrupt on `vector` to the CPU with APIC ID `destination`.
pub fn send_ipi(destination: u32, vector: u8) {
    let _interrupts_off = super::percpu::InterruptsDisabled::new();
    send_command(
        destination,
        ICR_DELIVERY_FIXED | ICR_LEVEL_ASSERT | vector as u32,
    );
}

/// Sends INIT (the CPU resets and waits for a start-up IPI).
pub(super) fn send_init(destination: u32) {
    let _interrupts_off = super::percpu::InterruptsDisabled::new();
    send_command(destination, ICR_DELIVERY_INIT | ICR_LEVEL_ASSERT);
}

/// Sends a start-up IPI: the CPU starts in real mode at `page_number << 12`.
pub(super) fn send_startup(destination: u32, page_number: u8) {
    let _interrupts_off = super::percpu::InterruptsDisabled::new();
    send_command(
        destination,
        ICR_DELIVERY_STARTUP | ICR_LEVEL_ASSERT | page_number as u32,
    );
}

/// Signals end of interrupt to the local APIC.
pub fn end_of_interrupt() {
    lapic_write(LAPIC_EOI, 0);
}

/// One IOAPIC's register window, at the address the MADT gave.
#[derive(Debug, Clone, Copy)]
pub struct IoApic {
    base: u64,
    pub gsi_base: u32,
}

impl IoApic {
    /// The IOAPIC an MADT entry describes.
    pub fn new(entry: &super::acpi::IoApicEntry) -> IoApic {
        IoApic {
            base: entry.address.address(),
            gsi_base: entry.gsi_base,
        }
    }

    fn write(&self, register: u32, value: u32) {
        // SAFETY: `base` is the IOAPIC MMIO window from the MADT (identity-mapped, uncached);
        // IOREGSEL is at +0 and IOWIN at +0x10.
        unsafe {
            core::ptr::write_volatile(self.base as *mut u32, register);
            core::ptr::write_volatile((self.base + 0x10) as *mut u32, value);
        }
    }

    fn read(&self, register: u32) -> u32 {
        // SAFETY: as for `write`.
        unsafe {
            core::ptr::write_volatile(self.base as *mut u32, register);
            core::ptr::read_volatile((self.base + 0x10) as *const u32)
        }
    }

    /// Number of redirection entries.
    pub fn entries(&self) -> u32 {
        ((self.read(1) >> 16) & 0xFF) + 1
    }

    /// Masks every redirection entry.
    pub fn mask_all(&self) {
        for pin in 0..self.entries() {
            self.write(0x10 + 2 * pin, LVT_MASKED);
            self.write(0x11 + 2 * pin, 0);
        }
    }

    /// Masks or unmasks the redirection entry of `gsi`, keeping its routing.
    pub fn set_masked(&self, gsi: u32, masked: bool) {
        let Some(pin) = gsi
            .checked_sub(self.gsi_base)
            .filter(|&pin| pin < self.entries())
        else {
            return;
        };
        let low = self.read(0x10 + 2 * pin);
        let low = if masked {
            low | LVT_MASKED
        } else {
            low & !LVT_MASKED
        };
        self.write(0x10 + 2 * pin, low);
    }

    /// Sends `gsi` to the CPU with APIC ID `destination` (physical mode), keeping its vector,
    /// trigger and mask. One write of the entry's high half, so it is never seen half-updated.
    pub fn set_destination(&self, gsi: u32, destination: u32) {
        let Some(pin) = gsi
            .checked_sub(self.gsi_base)
            .filter(|&pin| pin < self.entries())
        else {
            return;
        };
        self.write(0x11 + 2 * pin, destination << 24);
    }

    /// Routes global system interrupt `gsi` to `vector` on the CPU with APIC ID `destination`.
    pub fn route(&self, gsi: u32, vector: u8, destination: u32, level: bool, active_low: bool) {
        let Some(pin) = gsi
            .checked_sub(self.gsi_base)
            .filter(|&pin| pin < self.entries())
        else {
            return;
        };
        let mut low = vector as u32;
        if active_low {
            low |= 1 << 13;
        }
        if level {
            low |= 1 << 15;
        }
        self.write(0x11 + 2 * pin, destination << 24);
        self.write(0x10 + 2 * pin, low);
    }
}

/// The local APIC timer of this CPU. Its input clock is the bus clock divided by 16.
pub mod timer {
    use super::*;

    /// Divide configuration register value for "divide by 16".
    const DIVIDE_BY_16: u32 = 0b0011;

    /// Whether this CPU supports TSC-deadline mode (CPUID.01H:ECX[24]).
    pub fn tsc_deadline_supported() -> bool {
        cpu::cpuid(1, 0).ecx & (1 << 24) != 0
    }

    /// Stops the timer and masks its interrupt.
    pub fn stop() {
        lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
        lapic_write(LAPIC_TIMER_INITIAL, 0);
        if tsc_deadline_supported() {
            // SAFETY: IA32_TSC_DEADLINE exists when CPUID reports TSC-deadline support;
            // writing 0 disarms it.
            unsafe { cpu::wrmsr(IA32_TSC_DEADLINE, 0) };
        }
    }

    /// Counts `ticks` timer clocks once, then interrupts on `vector`.
    pub fn oneshot(vector: u8, ticks: u32) {
        lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_16);
        lapic_write(LAPIC_LVT_TIMER, vector as u32);
        lapic_write(LAPIC_TIMER_INITIAL, ticks.max(1));
    }

    /// Interrupts on `vector` every `ticks` bus clocks.
    pub fn periodic(vector: u8, ticks: u32) {
        lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_16);
        lapic_write(LAPIC_LVT_TIMER, vector as u32 | LVT_TIMER_PERIODIC);
        lapic_write(LAPIC_TIMER_INITIAL, ticks.max(1));
    }

    /// Switches the LVT to TSC-deadline mode on `vector` (disarmed until `arm_deadline`).
    pub fn deadline_mode(vector: u8) {
        lapic_write(LAPIC_LVT_TIMER, vector as u32 | LVT_TIMER_TSC_DEADLINE);
    }

    /// Arms TSC-deadline mode: interrupt when the TSC reaches `tsc` (0 disarms).
    pub fn arm_deadline(tsc: u64) {
        if tsc_deadline_supported() {
            // SAFETY: the MSR exists (checked above); any value is a valid deadline.
            unsafe { cpu::wrmsr(IA32_TSC_DEADLINE, tsc) };
        }
    }

    /// Current count of the one-shot/periodic counter.
    pub fn current_count() -> u32 {
        lapic_read(LAPIC_TIMER_CURRENT)
    }

    /// Starts a masked one-shot count of `ticks` (for calibration).
    pub fn start_masked_count(ticks: u32) {
        lapic_write(LAPIC_TIMER_DIVIDE, DIVIDE_BY_16);
        lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
        lapic_write(LAPIC_TIMER_INITIAL, ticks);
    }
}
