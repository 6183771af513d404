//! The `pci` bus of the driver model: every scanned function is a device named as Linux names
//! it (`0000:00:1f.3`), matched by its `lull_driver_core::PciDeviceId`, with the attribute files
//! of `/sys/bus/pci/devices/NAME/` (`vendor`, `device`, `subsystem_vendor`,
//! `subsystem_device`, `class`, `revision`, `irq`, `resource`, formatted by `lull_pci::sysfs`).

use alloc::string::String;

use lull_driver_core::{DeviceState, PciDeviceId};

use super::{irq_vectors, IrqVectorKind, PciDevice};

/// Adds the scanned functions to the model's `pci` bus (thread context: the boot probe).
pub fn add_bus_devices() {
    for dev in PciDevice::all() {
        let f = dev.function();
        let id = PciDeviceId {
            vendor: f.vendor,
            device: f.device,
            subvendor: f.subsystem_vendor,
            subdevice: f.subsystem_id,
            class: f.class_code(),
        };
        let desc = lull_driver_core::DeviceDesc::new("pci", dev.name(), id);
        if let Err(error) = crate::drivers::base::add_device(desc) {
            crate::pr_warn!("pci {}: {error}", dev.name());
        }
    }
    crate::drivers::base::register_attributes("pci", attribute);
}

const ATTRIBUTES: &str =
    "vendor\ndevice\nsubsystem_vendor\nsubsystem_device\nclass\nrevision\nirq\nresource\n";

/// The IRQ Linux's `irq` file shows: the first MSI vector while MSI is on, else the INTx line
/// (0 without one). MSI-X does not change it, as in Linux.
fn irq_of(dev: &PciDevice) -> u32 {
    match irq_vectors(dev.address()) {
        Some((IrqVectorKind::Msi, irqs)) => irqs.first().copied().unwrap_or(0),
        _ => dev.intx_irq().map_or(0, |intx| intx.gsi),
    }
}

fn attribute(name: &str, attribute: Option<&str>) -> Option<String> {
    let dev = PciDevice::all().find(|d| d.name() == name)?;
    let f = dev.function();
    Some(match attribute {
        None => String::from(ATTRIBUTES),
        Some("vendor") => lull_pci::sysfs::vendor(f),
        Some("device") => lull_pci::sysfs::device(f),
        Some("subsystem_vendor") => lull_pci::sysfs::subsystem_vendor(f),
        Some("subsystem_device") => lull_pci::sysfs::subsystem_device(f),
        Some("class") => lull_pci::sysfs::class(f),
        Some("revision") => lull_pci::sysfs::revision(f),
        Some("irq") => lull_pci::sysfs::irq(irq_of(&dev)),
        Some("resource") => lull_pci::sysfs::resource(f),
        Some(_) => return None,
    })
}

/// The driver bound to `address`, if any (lspci's "Kernel driver in use").
pub fn bound_driver(name: &str) -> Option<String> {
    crate::drivers::base::with_model(|model| match model.device_state("pci", name) {
        Some(DeviceState::Bound { driver, .. }) => Some(String::from(&**driver)),
        _ => None,
    })
    .flatten()
}
