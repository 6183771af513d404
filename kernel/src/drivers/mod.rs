//! Device drivers, laid out as Linux's `drivers/`.
//!
//! Today: the clock hardware behind the time subsystem (`clocksource`), ACPI (namespace, power
//! button, GED) and the PCI bus scan (`pci`, `lspci`), the I2C/SMBus core with the i801 SMBus and EEPROM drivers (`i2c`). The driver model (`base`: buses, devices, drivers, devres), `pci`,
//! `virtio`, `gpio`, `i2c` and `sound/soc` are the next wave's homes, beside these.

pub mod acpi;
pub mod base;
pub mod clocksource;
pub mod i2c;
pub mod pci;

/// Registers the drivers of the model and adds the PCI functions as devices, so drivers bind
/// (the SMBus controller, its EEPROMs). Thread context: probes sleep. Called once by the first
/// thread (the shell, or the in-kernel tests); later calls do nothing.
pub fn probe_devices() {
    static DONE: spin::Once<()> = spin::Once::new();
    DONE.call_once(|| {
        i2c::init();
        pci::register_devices();
    });
}
