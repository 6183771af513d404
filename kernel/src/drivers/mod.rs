//! Device drivers, laid out as Linux's `drivers/`.
//!
//! Today: the clock hardware behind the time subsystem (`clocksource`), ACPI (namespace, power
//! button, GED) and the PCI bus scan (`pci`, `lspci`). The driver model (`base`: buses, devices, drivers, devres), `pci`,
//! `virtio`, `gpio`, `i2c` and `sound/soc` are the next wave's homes, beside these.

pub mod acpi;
pub mod base;
pub mod clocksource;
pub mod pci;
pub mod virtio;
