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
const LAPIC_LVT_TIMER: usize = 0x320;
const LAPIC_LVT_LINT0: usize = 0x350;
const LAPIC_LVT_LINT1: usize = 0x360;
const LAPIC_LVT_ERROR: usize = 0x370;
const LVT_MASKED: u32 = 1 << 16;

static LAPIC_BASE: AtomicU64 = AtomicU64::new(0);

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
/// vector table entry masked (the time subsystem programs the timer LVT itself).
pub fn init_local(spurious_vector: u8) {
    disable_legacy_pic();
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

/// Signals end of interrupt to the local APIC.
pub fn end_of_interrupt() {
    lapic_write(LAPIC_EOI, 0);
}

/// One IOAPIC's register window.
#[derive(Debug, Clone, Copy)]
pub struct IoApic {
    pub base: u64,
    pub gsi_base: u32,
}

impl IoApic {
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

    /// Routes global system interrupt `gsi` to `vector` on the CPU with APIC ID `destination`.
    pub fn route(&self, gsi: u32, vector: u8, destination: u32, level: bool, active_low: bool) {
        let pin = gsi - self.gsi_base;
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
