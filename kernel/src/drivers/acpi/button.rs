//! The ACPI power button on the fixed-hardware event registers (PM1 status/enable), signalled
//! through the SCI. Its handler acknowledges the event and asks the PM core for an orderly
//! shutdown (`pm::request_shutdown`), which runs later in thread context.
//!
//! The SCI is requested with `request_irq`, so `threadirqs` threads it.

use crate::arch::acpi::{AcpiInfo, AcpiRegister};
use crate::{pr_warn, printk};

const PM1_STATUS_POWER_BUTTON: u32 = 1 << 8;
const PM1_ENABLE_POWER_BUTTON: u32 = 1 << 8;
const PM1_CONTROL_SCI_ENABLE: u32 = 1 << 0;

fn event_registers(info: &AcpiInfo) -> Option<(AcpiRegister, AcpiRegister)> {
    Some((info.pm1a_status?, info.pm1a_enable?))
}

/// The SCI handler (hard-IRQ context, or the line's thread under `threadirqs`; the line is
/// level-triggered and stays masked until this ran): acknowledges the power button and
/// records the request.
fn sci_interrupt(_irq: u32, _dev: crate::kernel::irq::DevId) -> crate::kernel::irq::IrqReturn {
    let Some((status, _)) = crate::acpi().and_then(event_registers) else {
        return crate::kernel::irq::IrqReturn::None;
    };
    let pending = status.read();
    if pending & PM1_STATUS_POWER_BUTTON != 0 {
        status.write(PM1_STATUS_POWER_BUTTON); // write-1-to-clear
        crate::kernel::pm::request_shutdown();
        return crate::kernel::irq::IrqReturn::Handled;
    }
    crate::kernel::irq::IrqReturn::None
}

/// Switches the platform to ACPI mode if needed, enables the power-button event and routes
/// the SCI. Called once at boot with interrupts disabled.
pub fn init(info: Option<&AcpiInfo>) {
    let Some(info) = info else { return };
    if info.hardware_reduced {
        // Hardware-reduced ACPI (microvm) has no PM1 block: its power button is an event of
        // the Generic Event Device (`ged.rs`).
        return;
    }
    let (Some(sci), Some((_, enable)), Some(control)) =
        (info.sci_irq, event_registers(info), info.pm1a_control_block)
    else {
        pr_warn!("ACPI: no SCI or PM1 event block; the power button is not available");
        return;
    };
    if let Some(smi_command) = info.smi_command {
        if control.read() & PM1_CONTROL_SCI_ENABLE == 0 {
            smi_command.write(info.acpi_enable_value as u32);
            let mut spins = 0;
            while control.read() & PM1_CONTROL_SCI_ENABLE == 0 && spins < 1_000_000 {
                spins += 1;
                core::hint::spin_loop();
            }
        }
    }
    if control.read() & PM1_CONTROL_SCI_ENABLE == 0 {
        pr_warn!("ACPI: could not switch to ACPI mode; the power button is not available");
        return;
    }
    let gsi = crate::kernel::irq::isa_irq_to_gsi(sci as u8);
    // The firmware's override says how the SCI signals; without one, level-triggered and
    // active-high, as QEMU and lull-vmm wire it.
    let flags = if crate::kernel::irq::firmware_trigger(gsi).is_some() {
        crate::kernel::irq::IrqFlags::NONE
    } else {
        crate::kernel::irq::IrqFlags::TRIGGER_HIGH
    };
    // Shared, as Linux requests the SCI: an ACPI device may be wired to it as well.
    let vector = match crate::kernel::irq::request_irq(
        gsi,
        sci_interrupt,
        flags | crate::kernel::irq::IrqFlags::SHARED,
        "acpi",
        crate::kernel::irq::DevId::NONE,
    ) {
        Ok(vector) => vector,
        Err(error) => {
            pr_warn!("ACPI: cannot request the SCI ({error}); the power button is not available");
            return;
        }
    };
    enable.write(enable.read() | PM1_ENABLE_POWER_BUTTON);
    printk!("ACPI: SCI on IRQ {sci} (GSI {gsi}, vector {vector:#x}); power button enabled");
}
