//! `serial`: the PC UART (`PNP0501` on the `acpi` bus) that carries the console, as a driver of
//! the model (Linux's `8250_pnp` taking over the port its early console set up).
//!
//! The console cannot wait for the model: the kernel writes to COM1 from its first instruction
//! and the shell reads it from the prompt on, so the boot reserves the ports and routes the
//! input interrupt itself ([`request_boot_irq`]). When the probe thread binds `PNP0501:00`, the
//! driver takes both over through devres: it claims the ports (`serial` in `/proc/ioports`)
//! and requests the interrupt (`ttyS0`), each after an action that hands it back to the boot's
//! console if the probe fails later, so a failed probe (the fault sweep runs every one) leaves
//! the console exactly as the boot set it. Bytes that arrived during the hand-over are read at
//! once (an edge lost meanwhile would otherwise leave the UART's interrupt raised, unseen).
//!
//! The driver has no `bind`/`unbind` files (Linux's `suppress_bind_attrs`): unbinding it would
//! take the shell's input away. Only the console's UART is driven; another `PNP0501` (a second
//! port) is refused with a message.

use alloc::string::String;
use alloc::vec;

use lull_driver_core::{Driver, DriverDesc, Errno, PlatformMatchId, ProbeContext, ProbeError};

use crate::arch::serial::{COM1, COM1_IRQ};
use crate::drivers::acpi::Resource;
use crate::drivers::base::devm;
use crate::kernel::irq::{self, DevId, IrqFlags};
use crate::{pr_warn, printk};

pub const DRIVER: &str = "serial";
/// The console's interrupt name, as Linux's (`/proc/interrupts`).
const TTY: &str = "ttyS0";
/// Ports of a 16550.
const PORTS: u16 = 8;

/// Routes COM1's interrupt to the shell at boot, before the model exists (a thread under
/// `threadirqs`, so after the scheduler).
pub fn request_boot_irq() {
    let gsi = irq::isa_irq_to_gsi(COM1_IRQ);
    if let Err(why) = irq::request_irq(
        gsi,
        crate::shell::serial_interrupt,
        IrqFlags::NONE,
        TTY,
        DevId::NONE,
    ) {
        pr_warn!("irq: COM1 input unavailable ({why}); the shell cannot read input");
    }
}

/// The driver's cookie for its interrupt (the boot's request uses [`DevId::NONE`]).
fn dev_id() -> DevId {
    DevId::of(&DRIVER)
}

struct SerialDriver;

impl Driver for SerialDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let device = crate::drivers::acpi::bus_device(&name).ok_or(Errno::ENODEV)?;
        let base = device.resources.iter().find_map(|resource| match resource {
            Resource::Io { base, length } if *length >= PORTS => Some(*base),
            _ => None,
        });
        let line = device.resources.iter().find_map(|resource| match resource {
            Resource::Interrupt { irqs, .. } => irqs.first().copied(),
            _ => None,
        });
        if (base, line) != (Some(COM1), Some(u32::from(COM1_IRQ))) {
            pr_warn!(
                "{DRIVER}: {name}: {base:x?} irq {line:?} is not the console's UART \
                 (0x3f8, irq 4), the only one driven"
            );
            return Err(Errno::ENODEV.into());
        }
        let devres = ctx.devres();
        // The ports: the boot's reservation goes, the driver's claim comes; a later failure
        // puts the boot's back (actions run last-first, after the claim is released).
        let released = crate::arch::serial::release_boot_claim();
        devres.add_action("serial_restore_boot_claim", move || {
            if released {
                crate::arch::serial::restore_boot_claim();
            }
        });
        devm::request_region(devres, COM1, PORTS, DRIVER)?;
        // The interrupt, the same way: the boot's handler is freed, and requested again if the
        // probe fails after this point.
        let gsi = irq::isa_irq_to_gsi(COM1_IRQ);
        let had_boot_irq = irq::free_irq(gsi, DevId::NONE).is_ok();
        devres.add_action("serial_restore_boot_irq", move || {
            if had_boot_irq {
                request_boot_irq();
                // Bytes that came while no handler was there.
                crate::shell::serial_interrupt(gsi, DevId::NONE);
            }
        });
        devm::request_irq(
            devres,
            gsi,
            crate::shell::serial_interrupt,
            IrqFlags::NONE,
            TTY,
            dev_id(),
        )?;
        // Bytes that came during the hand-over: their edge may have found no handler.
        crate::shell::serial_interrupt(gsi, dev_id());
        printk!("{DRIVER} {name}: {TTY} at I/O {COM1:#x} (irq = {COM1_IRQ}) is a 16550A");
        Ok(())
    }
}

/// Registers the `serial` driver on the `acpi` bus.
pub fn register() {
    let driver = DriverDesc::new(
        "acpi",
        DRIVER,
        vec![PlatformMatchId::Acpi("PNP0501")],
        SerialDriver,
    )
    .suppress_bind_attrs();
    if let Err(error) = crate::drivers::base::register_driver(driver) {
        pr_warn!("{DRIVER}: cannot register the driver: {error}");
    }
}
