//! The portable core of Lull's driver model, after Linux's `drivers/base`: buses, devices,
//! drivers with ID tables, match → probe → remove, deferred probe, device links, and the sysfs
//! files that bind and unbind from the shell.
//!
//! Why a separate, host-tested crate: the driver core's correctness is all in its unwind paths
//! (a probe that fails halfway, a supplier unbound under its consumer, the thousandth rebind).
//! Those are exercised here with fake buses whose resources are counted by
//! [`LeakTracker`](lull_devres::LeakTracker), where a leak is a failed assertion instead of a
//! slow drift in a running kernel. The kernel supplies the bus-specific parts: enumeration (who
//! calls [`DeviceModel::add_device`]), the `devm_*` wrappers that put real resources on a
//! device's [`DevresList`](lull_devres::DevresList), locking, and the file system that serves
//! the [`sysfs`] strings.
//!
//! # The cycle
//!
//! * [`DeviceModel::add_bus`] registers a bus with its [`BusMatch`] (ready-made: [`PciMatch`],
//!   [`VirtioMatch`], [`PlatformMatch`] for platform and ACPI, [`I2cMatch`]).
//! * [`DeviceModel::add_device`] tries the bus's drivers in registration order;
//!   [`DeviceModel::register_driver`] tries the new driver on every unbound device of its bus.
//! * A probe ([`Driver::probe`]) gets a [`ProbeContext`]: the device's match data, the matched
//!   table entry, the device's devres list. If it fails, everything it acquired through the list
//!   is released (LIFO) and the device is left unbound with `DRV: probe of DEV failed with error
//!   -12` recorded ([`DeviceState::Failed`], [`DeviceModel::take_log`]); the next matching
//!   driver, if any, gets its try.
//! * A probe that needs another device calls [`ProbeContext::require_supplier`]: if the supplier
//!   is bound a link is made, else the probe returns [`ProbeError::Defer`] and the device goes
//!   on the deferred list ([`DeviceModel::deferred`]). Every successful bind retries the list, as
//!   Linux's `driver_deferred_probe_trigger`.
//! * [`DeviceModel::unbind`] (or the sysfs `unbind` file) unbinds the supplier's consumers first
//!   (they go back on the deferred list, so they rebind when it does), then calls
//!   [`Driver::remove`], then releases the device's managed resources, LIFO.
//!
//! # Fault injection
//!
//! [`FaultRule`]s (parsed from `devres.fail=DRIVER:N`-style text, or set through the
//! `devres_fail_nth` sysfs knobs) arm the device list's
//! [`FaultInjector`](lull_devres::FaultInjector) before each probe they cover.
//! [`DeviceModel::sweep_probe_faults`] fails acquisition 1, 2, … of one driver's probe of one
//! device in turn, checking after each that nothing is held and the error is recorded, until the
//! probe binds.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod bus;
mod error;
mod fault;
mod model;
pub mod sysfs;
#[cfg(test)]
mod tests;

pub use bus::{
    BusMatch, I2cDeviceId, I2cMatch, PciDeviceId, PciMatch, PciMatchId, PlatformDeviceId,
    PlatformMatch, PlatformMatchId, VirtioDeviceId, VirtioMatch, VirtioMatchId, PCI_ANY_ID,
    VIRTIO_DEV_ANY_ID,
};
pub use error::{Errno, ModelError, ProbeError};
pub use fault::{FaultRule, FaultTarget};
pub use model::{
    AnyData, DeferredDevice, DeviceDesc, DeviceModel, DeviceState, Driver, DriverDesc,
    FaultSweepError, FaultSweepReport, ProbeContext, RemoveContext,
};
