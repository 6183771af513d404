//! The console's UART as a driver of the model (`serial` on `PNP0501:00`): bound, it holds the
//! ports and the input interrupt the boot set up; it has no `bind`/`unbind` files; and a probe
//! failed at each managed acquisition hands both back to the boot's console, leaving every leak
//! counter where it was. On a machine without the UART in its ACPI namespace each case is
//! skipped.

use lull_driver_core::DeviceState;

use super::leaks::{quiet_snapshot, quietly, settles_to, sweep_fails_every_acquisition, sys_write};
use super::TestResult;
use crate::drivers::base;
use crate::drivers::serial::DRIVER;

const DEVICE: &str = "PNP0501:00";

fn state() -> Option<DeviceState> {
    base::with_model(|m| m.device_state("acpi", DEVICE).cloned()).flatten()
}

fn port_owner() -> Option<&'static str> {
    crate::arch::io::claimed()
        .iter()
        .find(|&&(base, _, _)| base == crate::arch::serial::COM1)
        .map(|&(_, _, owner)| owner)
}

fn tty_irq_requested() -> bool {
    crate::fs::procfs::read("/proc/interrupts").is_ok_and(|text| {
        text.lines()
            .any(|l| l.trim_start().starts_with("4:") && l.ends_with("ttyS0"))
    })
}

fn model_call(
    what: &str,
    call: impl FnOnce(&mut lull_driver_core::DeviceModel) -> Result<(), lull_driver_core::ModelError>,
) -> TestResult {
    base::with_model(call)
        .ok_or("no driver model")?
        .map_err(|e| alloc::format!("{what}: {e}").into())
}

pub fn serial_driver_holds_the_console_and_failed_probes_give_it_back() -> TestResult {
    match state() {
        None => skip!("no PNP0501 UART on this machine"),
        Some(DeviceState::Bound { .. }) => {}
        Some(other) => return Err(alloc::format!("{DEVICE}: {other:?}").into()),
    }
    ensure!(
        port_owner() == Some("serial"),
        "ports held by {:?}",
        port_owner()
    );
    ensure!(tty_irq_requested(), "no ttyS0 on IRQ 4 while bound");
    // No sysfs unbind: it would take the shell's input away.
    ensure!(
        sys_write(
            &alloc::format!("/sys/bus/acpi/drivers/{DRIVER}/unbind"),
            DEVICE
        )
        .is_err(),
        "the console's UART was unbound from sysfs"
    );
    ensure!(
        matches!(state(), Some(DeviceState::Bound { .. })),
        "{:?}",
        state()
    );
    // Unbound by the kernel itself: the boot's console has the port and the line again.
    model_call("unbind", |m| m.unbind("acpi", DEVICE, DRIVER))?;
    ensure!(
        port_owner() == Some("serial (COM1)"),
        "ports after unbind held by {:?}",
        port_owner()
    );
    ensure!(tty_irq_requested(), "no ttyS0 on IRQ 4 after unbind");
    let before = quiet_snapshot();
    // The port range and the interrupt (the two hand-back actions cannot fail).
    sweep_fails_every_acquisition("acpi", DEVICE, DRIVER, 2)?;
    ensure!(
        port_owner() == Some("serial"),
        "after the sweep: {:?}",
        port_owner()
    );
    quietly(|| model_call("unbind", |m| m.unbind("acpi", DEVICE, DRIVER)))?;
    settles_to(before, "fault sweep, then unbind")?;
    ensure!(port_owner() == Some("serial (COM1)"), "{:?}", port_owner());
    model_call("bind", |m| m.bind("acpi", DEVICE, DRIVER))?;
    ensure!(
        port_owner() == Some("serial") && tty_irq_requested(),
        "rebound: ports {:?}",
        port_owner()
    );
    Ok(())
}
