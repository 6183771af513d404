//! Lull's managed device resources (devres): what a driver acquires is released for it, last
//! acquired first, when its probe fails or its device unbinds.
//!
//! Linux 2.6.21 introduced devres so that drivers stop writing (and getting wrong) the unwind
//! ladder at the end of every probe: each resource acquired through a `devm_*` call is recorded
//! on the device with its release function, and the driver core releases the record in reverse
//! order. This crate is the portable core of that, written against traits so the kernel can
//! register any resource type and the logic can be tested on the host:
//!
//! * [`DevresList`] — the per-device record: [`add`](DevresList::add) any
//!   [`ManagedResource`], [`add_action`](DevresList::add_action) /
//!   [`remove_action`](DevresList::remove_action), [`release_all`](DevresList::release_all)
//!   (LIFO), groups ([`open_group`](DevresList::open_group), `close_group`, `release_group`,
//!   `remove_group`) as Linux's, and [`probe`](DevresList::probe), which releases everything when
//!   a probe fails.
//! * [`Revocable`] — a handle the driver keeps (Rust-for-Linux's `Devres<T>`): access is refused
//!   once the device's resources are released, and the value is dropped when no accessor holds it.
//! * [`FaultInjector`] and [`sweep_probe_faults`] — fail the Nth managed acquisition of a probe,
//!   for every N, and check that each failure leaves nothing behind.
//! * [`LeakTracker`] — live resources per kind, counted by the resources themselves.
//!
//! ```
//! use lull_devres::{DevresList, ResourceInfo, ResourceKind};
//! use std::sync::{Arc, Mutex};
//!
//! let log = Arc::new(Mutex::new(Vec::new()));
//! let mut device = DevresList::new();
//! let (ports, irq) = (log.clone(), log.clone());
//! let info = ResourceInfo::new(ResourceKind::IoPort, "0x3f8-0x3ff").with_size(8);
//! device.add_with_release(info, 0x3f8_u16, move |base| ports.lock().unwrap().push(base));
//! device.add_action("free_irq(4)", move || irq.lock().unwrap().push(4));
//! assert_eq!(device.resources().next().unwrap().1.to_string(), "ioport 0x3f8-0x3ff (8 bytes)");
//!
//! // Unbind: the IRQ goes before the ports it was acquired after.
//! assert_eq!(device.release_all(), 2);
//! assert_eq!(*log.lock().unwrap(), [4, 0x3f8]);
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod fault;
mod leak;
mod list;
#[cfg(test)]
mod model_tests;
mod resource;
mod revocable;
#[cfg(test)]
mod tests;

pub use fault::{sweep_probe_faults, FaultInjector, SweepError, SweepReport, MAX_SWEEP_POINTS};
pub use leak::{LeakTracker, Tracked};
pub use list::{AcquireError, DevresError, DevresList, GroupId, ReleaseBatch, ResourceId};
pub use resource::{ManagedResource, ResourceInfo, ResourceKind};
pub use revocable::{Revocable, RevocableGuard, RevokeState};
