//! The PC parallel port as a GPIO controller: the `parport` driver binds `PNP0400` devices of the
//! `acpi` bus (q35's `LPT1` at 0x378), claims the data, status and control ports through
//! devres and registers a 17-line chip (`lull_gpio::parport`: 8 data and 4 control outputs, 5
//! status inputs, wire levels) whose registration is managed too: unbinding removes the chip
//! (descriptors still held then answer "chip gone") and then releases the ports.
//!
//! No interrupt: the port's ACK interrupt (IRQ 7) is not used, so its lines cannot report
//! events (`gpiomon` says so). QEMU shows every register write in its `parallel_ioport_write`
//! trace, which is how the end-to-end test watches the lines from outside.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;

use lull_devres::Revocable;
use lull_driver_core::{Driver, DriverDesc, Errno, PlatformMatchId, ProbeContext, ProbeError};
use lull_gpio::parport::{ParportChip, ParportIo, PORTS};
use lull_gpio::ChipRegistration;

use crate::arch::io::IoPorts;
use crate::drivers::acpi::Resource;
use crate::drivers::base::devm;
use crate::{pr_warn, printk};

const DRIVER: &str = "parport";

/// The claimed ports, reached only while the driver is bound.
struct Ports(Arc<Revocable<IoPorts>>);

impl ParportIo for Ports {
    fn read(&self, reg: u8) -> Option<u8> {
        self.0
            .try_access()
            .map(|ports| ports.read_u8(u16::from(reg)))
    }

    fn write(&self, reg: u8, value: u8) -> bool {
        match self.0.try_access() {
            Some(ports) => {
                ports.write_u8(u16::from(reg), value);
                true
            }
            None => false,
        }
    }
}

struct ParportDriver;

impl Driver for ParportDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let device = crate::drivers::acpi::bus_device(&name).ok_or(Errno::ENODEV)?;
        let Some(base) = device.resources.iter().find_map(|resource| match resource {
            Resource::Io { base, length } if *length >= PORTS => Some(*base),
            _ => None,
        }) else {
            pr_warn!(
                "{DRIVER}: {}: no I/O range of {PORTS} ports in _CRS",
                device.path
            );
            return Err(Errno::ENXIO.into());
        };
        let devres = ctx.devres();
        let ports = devm::request_region(devres, base, PORTS, DRIVER)?;
        let parent = alloc::format!("acpi/{name}");
        let chip = ParportChip::new(Ports(ports), Some(&parent));
        devres
            .acquire(|| {
                ChipRegistration::new(&super::GPIO, Box::new(chip), None).map_err(|error| {
                    super::registration_failed(&parent, &error);
                    Errno::EBUSY
                })
            })
            .map_err(ProbeError::from)?;
        printk!("{DRIVER}: {name} at {base:#x}: 17 GPIO lines (8 data, 4 control, 5 status)");
        Ok(())
    }
}

/// Registers the `parport` driver on the `acpi` bus.
pub fn register() {
    let driver = DriverDesc::new(
        "acpi",
        DRIVER,
        vec![PlatformMatchId::Acpi("PNP0400")],
        ParportDriver,
    );
    if let Err(error) = crate::drivers::base::register_driver(driver) {
        pr_warn!("{DRIVER}: cannot register the driver: {error}");
    }
}
