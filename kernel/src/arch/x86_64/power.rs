//! Leaving the machine: ACPI S5, QEMU's isa-debug-exit for test statuses, and fallbacks.

use super::acpi::AcpiInfo;
use super::{cpu, port};

/// isa-debug-exit I/O port (QEMU `-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub(super) const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Status written for a kernel panic: QEMU exits with (1 << 1) | 1 = 3.
pub const EXIT_PANIC: u8 = 1;
/// Status written for a fatal CPU exception: QEMU exits with 5.
pub const EXIT_EXCEPTION: u8 = 2;
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
/// In-kernel tests all passed: QEMU exits with 0x21 = 33.
pub const EXIT_TESTS_PASSED: u8 = 0x10;
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
/// In-kernel tests failed: QEMU exits with 0x23 = 35.
pub const EXIT_TESTS_FAILED: u8 = 0x11;

/// Asks QEMU to exit with `(status << 1) | 1` through isa-debug-exit (a no-op when the device
/// is absent), then halts.
pub fn exit_failure(status: u8) -> ! {
    port::outb(DEBUG_EXIT_PORT, status);
    cpu::halt_forever()
}

/// Enters ACPI S5 (soft off). On hardware-reduced ACPI (QEMU microvm) this is the FADT's sleep
/// control register; otherwise PM1a/PM1b control with SLP_EN. If the machine is still running
/// afterwards (no ACPI), falls back to isa-debug-exit and finally a triple fault, which QEMU
/// turns into an exit when started with `-no-reboot`.
pub fn power_off(info: Option<&AcpiInfo>) -> ! {
    cpu::disable_interrupts();
    if let Some(info) = info {
        // Loaded with the namespace (`pm::power_off` makes sure it is, when it can sleep).
        let sleep_type = super::acpi_aml::s5_sleep_type().unwrap_or(0) as u32;
        if info.hardware_reduced {
            if let Some(register) = info.sleep_control {
                register.write(((sleep_type & 7) << 2) | (1 << 5));
            }
        } else if let Some(register) = info.pm1a_control_block {
            let value = ((sleep_type & 7) << 10) | (1 << 13);
            register.write(value);
            if let Some(register_b) = info.pm1b_control_block {
                register_b.write(value);
            }
        }
        // Give the platform a moment to act on the request.
        let deadline = cpu::rdtsc().wrapping_add(200_000_000);
        while cpu::rdtsc() < deadline {
            core::hint::spin_loop();
        }
    }
    port::outb(DEBUG_EXIT_PORT, 0);
    triple_fault()
}

/// Resets the CPU by loading an empty IDT and raising an exception.
fn triple_fault() -> ! {
    let pointer = x86_64::structures::DescriptorTablePointer {
        limit: 0,
        base: x86_64::VirtAddr::zero(),
    };
    // SAFETY: deliberately loads an empty IDT and traps, which resets the machine; nothing
    // runs afterwards.
    unsafe {
        core::arch::asm!("lidt [{}]", "int3", in(reg) &pointer, options(nostack));
    }
    cpu::halt_forever()
}
