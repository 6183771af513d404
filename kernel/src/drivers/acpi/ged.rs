//! The Generic Event Device (`ACPI0013`) of hardware-reduced ACPI (QEMU's microvm): platform
//! events arrive as its interrupt; the handler evaluates the device's `_EVT` with the GSI, and
//! the AML reads the event register and `Notify`s the device concerned. A notification 0x80
//! to a power button (`PNP0C0C`) asks the PM core for an orderly shutdown, as the q35
//! fixed-hardware button does.
//!
//! A driver of the model (`acpi-ged` on the `acpi` bus, as Linux's): its interrupt is a
//! managed resource, so `echo ACPI0013:00 > /sys/bus/acpi/drivers/acpi-ged/unbind` frees it.
//!
//! `_EVT` runs in the line's interrupt thread (`request_threaded_irq`, one-shot): AML may
//! sleep, and the namespace lock is a sleeping lock.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use lull_driver_core::{Driver, DriverDesc, Errno, PlatformMatchId, ProbeContext, ProbeError};

use super::{AcpiDevice, Resource};
use crate::drivers::base::devm;
use crate::kernel::irq::{DevId, IrqFlags, IrqReturn};
use crate::kernel::locking::SpinLock;
use crate::{pr_warn, printk};

/// ACPI's notification for a button: pressed.
const NOTIFY_BUTTON_PRESSED: u64 = 0x80;
const POWER_BUTTON_HID: &str = "PNP0C0C";

/// Each GED's interrupt line and its `_EVT` path.
static GEDS: SpinLock<Vec<(u32, String)>> = SpinLock::named("acpi::GEDS", Vec::new());
/// The power buttons' paths (`PNP0C0C` devices), found at boot.
static POWER_BUTTONS: SpinLock<Vec<String>> = SpinLock::named("acpi::POWER_BUTTONS", Vec::new());

/// The line's thread: evaluates `_EVT(gsi)` and acts on the power button's notification.
fn ged_thread(gsi: u32, _dev: DevId) -> IrqReturn {
    let method = GEDS
        .lock()
        .iter()
        .find(|(line, _)| *line == gsi)
        .map(|(_, path)| path.clone());
    let Some(method) = method else {
        return IrqReturn::None;
    };
    let Some((result, notified)) =
        super::evaluate(&method, vec![lull_aml::Value::Integer(gsi as u64)])
    else {
        return IrqReturn::None;
    };
    if let Err(error) = result {
        pr_warn!("ACPI: {method}: {error}");
    }
    for (path, value) in notified {
        let is_power_button = POWER_BUTTONS.lock().contains(&path);
        if is_power_button && value == NOTIFY_BUTTON_PRESSED {
            crate::kernel::pm::request_shutdown();
        } else {
            printk!("ACPI: notify {path} {value:#x} (no handler)");
        }
    }
    IrqReturn::Handled
}

fn interrupt_of(device: &AcpiDevice) -> Option<(u32, IrqFlags)> {
    device.resources.iter().find_map(|resource| match resource {
        Resource::Interrupt {
            irqs,
            level_triggered,
            active_low,
            ..
        } => {
            let flags = match (level_triggered, active_low) {
                (false, false) => IrqFlags::TRIGGER_RISING,
                (false, true) => IrqFlags::TRIGGER_FALLING,
                (true, false) => IrqFlags::TRIGGER_HIGH,
                (true, true) => IrqFlags::TRIGGER_LOW,
            };
            irqs.first().map(|&gsi| (gsi, flags))
        }
        _ => None,
    })
}

/// The `acpi-ged` driver: binds each present `ACPI0013` device of the `acpi` bus.
struct GedDriver;

impl Driver for GedDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let device = super::bus_device(&name).ok_or(Errno::ENODEV)?;
        let Some((gsi, flags)) = interrupt_of(device) else {
            pr_warn!("ACPI: {}: GED without an interrupt in _CRS", device.path);
            return Err(Errno::ENXIO.into());
        };
        let method = alloc::format!("{}._EVT", device.path);
        GEDS.lock().push((gsi, method));
        let devres = ctx.devres();
        devres.add_action("ged: forget _EVT", move || {
            GEDS.lock().retain(|(line, _)| *line != gsi)
        });
        devm::request_threaded_irq(
            devres,
            gsi,
            None,
            Some(ged_thread),
            flags | IrqFlags::ONESHOT,
            "acpi-ged",
            DevId::NONE,
        )?;
        printk!(
            "ACPI: GED {} on GSI {gsi}; power button enabled",
            device.path
        );
        Ok(())
    }
}

/// Notes the power buttons and registers the `acpi-ged` driver (it binds the GEDs the `acpi`
/// bus has). Thread context, from the boot-time probe.
pub fn register() {
    *POWER_BUTTONS.lock() = super::find_by_id(&[POWER_BUTTON_HID])
        .iter()
        .map(|d| d.path.clone())
        .collect();
    let driver = DriverDesc::new(
        "acpi",
        "acpi-ged",
        vec![PlatformMatchId::Acpi("ACPI0013")],
        GedDriver,
    );
    if let Err(error) = crate::drivers::base::register_driver(driver) {
        pr_warn!("ACPI: cannot register the GED driver: {error}");
    }
}
