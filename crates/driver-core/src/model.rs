//! The registry: buses, devices, drivers, and the match → probe → remove cycle between them.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::fmt;
use core::num::NonZeroUsize;

use lull_devres::{DevresList, LeakTracker, ResourceKind};

use crate::bus::{BusMatch, Erased, ErasedMatch};
use crate::error::{Errno, ModelError, ProbeError};
use crate::fault::{FaultRule, FaultTarget};

/// A driver's callbacks. The registry calls them with no lock of its own held; the kernel's
/// wrapper holds the device lock, as Linux's driver core does.
pub trait Driver: Send + Sync {
    /// Binds to the device: acquire resources through [`ProbeContext::devres`] (so they are
    /// released for you on failure and on unbind), check suppliers with
    /// [`ProbeContext::require_supplier`], keep state with [`ProbeContext::set_drvdata`].
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError>;

    /// Unbinds: quiesce the device. Runs before the device's managed resources are released,
    /// so they are still usable here. The default does nothing.
    fn remove(&self, ctx: &mut RemoveContext<'_>) {
        let _ = ctx;
    }
}

/// Type-erased data attached to a device or a binding.
pub type AnyData = Box<dyn Any + Send + Sync>;

/// What a probe sees: the device, the matched ID-table entry, the device's managed resources.
pub struct ProbeContext<'a> {
    devices: &'a BTreeMap<u64, DeviceRecord>,
    device: &'a DeviceRecord,
    driver: &'a str,
    matched: Option<&'a (dyn Any + Send + Sync)>,
    match_index: usize,
    devres: &'a mut DevresList,
    drvdata: Option<AnyData>,
    suppliers: Vec<u64>,
    children: Vec<DeviceDesc>,
}

impl<'a> ProbeContext<'a> {
    /// The device's name (`0000:00:1f.3`).
    pub fn device_name(&self) -> &str {
        &self.device.name
    }

    /// The device's bus (`pci`).
    pub fn bus(&self) -> &str {
        &self.device.bus
    }

    /// The name of the driver being probed.
    pub fn driver_name(&self) -> &str {
        self.driver
    }

    /// The device's match data, as its bus's [`BusMatch::DeviceId`] (`None` for another type).
    pub fn match_data<T: 'static>(&self) -> Option<&T> {
        self.device.match_data.downcast_ref()
    }

    /// The ID-table entry that matched, as the bus's [`BusMatch::DriverId`]. `None` when the
    /// type is wrong.
    pub fn matched_id<T: 'static>(&self) -> Option<&T> {
        self.matched?.downcast_ref()
    }

    /// The position of the matched entry in the driver's table.
    pub fn match_index(&self) -> usize {
        self.match_index
    }

    /// The device's managed resources; empty when the probe starts.
    pub fn devres(&mut self) -> &mut DevresList {
        self.devres
    }

    /// Succeeds when the device `supplier` (on any bus) is bound, and links this device to it
    /// as its consumer: unbinding the supplier will unbind this device first. Otherwise returns
    /// the [`ProbeError::Defer`] to return from the probe.
    pub fn require_supplier(&mut self, supplier: &str) -> Result<(), ProbeError> {
        let bound = self
            .devices
            .iter()
            .find(|(_, d)| d.name == supplier && d.state.is_bound())
            .map(|(&key, _)| key);
        match bound {
            Some(key) => {
                if !self.suppliers.contains(&key) {
                    self.suppliers.push(key);
                }
                Ok(())
            }
            None => Err(ProbeError::Defer {
                supplier: supplier.to_string(),
            }),
        }
    }

    /// Keeps driver state with the binding (`dev_set_drvdata`); dropped after `remove`, or at
    /// once if the probe fails.
    pub fn set_drvdata(&mut self, data: AnyData) {
        self.drvdata = Some(data);
    }

    /// Registers a child device once the probe has succeeded (a bus driver's adapter creating
    /// its clients, as `i2c_add_adapter` → `i2c_new_client_device`). The child's parent is this
    /// device; it belongs to this binding: unbinding this device removes it first (its driver
    /// unbound), before this driver's `remove` runs. Dropped if the probe fails.
    pub fn add_child(&mut self, child: DeviceDesc) {
        self.children.push(child);
    }
}

impl fmt::Debug for ProbeContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeContext")
            .field("device", &self.device.name)
            .field("driver", &self.driver)
            .field("match_index", &self.match_index)
            .finish_non_exhaustive()
    }
}

/// What `remove` sees.
pub struct RemoveContext<'a> {
    name: &'a str,
    devres: &'a mut DevresList,
    drvdata: &'a mut Option<AnyData>,
}

impl RemoveContext<'_> {
    /// The device's name.
    pub fn device_name(&self) -> &str {
        self.name
    }

    /// The device's managed resources, still held (they are released after `remove` returns).
    pub fn devres(&mut self) -> &mut DevresList {
        self.devres
    }

    /// The state the probe kept, if of type `T`.
    pub fn drvdata<T: 'static>(&mut self) -> Option<&mut T> {
        self.drvdata.as_mut()?.downcast_mut()
    }
}

/// Where a device is in its life with drivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// No driver, and no failed attempt recorded.
    Unbound,
    /// A probe by `driver` is running.
    Probing {
        /// The driver.
        driver: Arc<str>,
    },
    /// Bound to `driver`, matched by entry `match_index` of its table.
    Bound {
        /// The driver.
        driver: Arc<str>,
        /// The matched entry.
        match_index: usize,
    },
    /// Unbound: the last probe, by `driver`, failed with `errno`.
    Failed {
        /// The driver.
        driver: Arc<str>,
        /// What its probe returned.
        errno: Errno,
    },
    /// Unbound and on the deferred list: `driver` waits for `supplier`.
    Deferred {
        /// The driver.
        driver: Arc<str>,
        /// The device it waits for.
        supplier: String,
    },
}

impl DeviceState {
    /// Whether a driver is bound.
    pub fn is_bound(&self) -> bool {
        matches!(self, Self::Bound { .. })
    }

    /// The bound driver's name.
    pub fn driver(&self) -> Option<&str> {
        match self {
            Self::Bound { driver, .. } => Some(driver),
            _ => None,
        }
    }
}

/// A device to add: its bus, name, match data and parent.
pub struct DeviceDesc {
    bus: String,
    name: String,
    match_data: AnyData,
    parent: Option<String>,
}

impl DeviceDesc {
    /// A device named `name` on `bus`, matched by `match_data` (the bus's
    /// [`BusMatch::DeviceId`]).
    pub fn new<T: Send + Sync + 'static>(
        bus: impl Into<String>,
        name: impl Into<String>,
        match_data: T,
    ) -> Self {
        Self {
            bus: bus.into(),
            name: name.into(),
            match_data: Box::new(match_data),
            parent: None,
        }
    }

    /// The same device with a parent (a device already added, on any bus): the parent cannot be
    /// removed while this device exists.
    #[must_use]
    pub fn with_parent(mut self, parent: impl Into<String>) -> Self {
        self.parent = Some(parent.into());
        self
    }
}

/// A driver to register: its bus, name, ID table and callbacks.
pub struct DriverDesc {
    bus: String,
    name: String,
    ids: AnyData,
    ops: Arc<dyn Driver>,
    suppress_bind_attrs: bool,
}

impl DriverDesc {
    /// A driver named `name` on `bus`, matching `ids` (entries of the bus's
    /// [`BusMatch::DriverId`]).
    pub fn new<I: Send + Sync + 'static>(
        bus: impl Into<String>,
        name: impl Into<String>,
        ids: Vec<I>,
        ops: impl Driver + 'static,
    ) -> Self {
        Self {
            bus: bus.into(),
            name: name.into(),
            ids: Box::new(ids),
            ops: Arc::new(ops),
            suppress_bind_attrs: false,
        }
    }

    /// No `bind`/`unbind` files for this driver (Linux's `suppress_bind_attrs`): for a device
    /// that must not be unbound from user space, such as the console's UART. Probing,
    /// failed probes and the fault sweep work as for any driver.
    pub fn suppress_bind_attrs(mut self) -> Self {
        self.suppress_bind_attrs = true;
        self
    }
}

pub(crate) struct DeviceRecord {
    pub(crate) bus: String,
    pub(crate) name: String,
    match_data: AnyData,
    pub(crate) parent: Option<u64>,
    pub(crate) state: DeviceState,
    pub(crate) devres: DevresList,
    drvdata: Option<AnyData>,
    /// Devices this one consumes (device links), set by a successful probe.
    suppliers: Vec<u64>,
    /// Added by the probe of its parent's current binding ([`ProbeContext::add_child`]):
    /// removed when that binding ends.
    owned_by_parent_binding: bool,
}

pub(crate) struct DriverRecord {
    pub(crate) bus: String,
    pub(crate) suppress_bind_attrs: bool,
    /// Shared with the states of the devices it probed: recording one allocates nothing.
    pub(crate) name: Arc<str>,
    ids: AnyData,
    ops: Arc<dyn Driver>,
}

struct BusRecord {
    name: String,
    matcher: Box<dyn ErasedMatch>,
}

/// A device on the deferred list (`/sys/kernel/debug/devices_deferred`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeferredDevice {
    /// The device.
    pub device: String,
    /// Its bus.
    pub bus: String,
    /// The driver whose probe deferred.
    pub driver: String,
    /// The supplier it waits for.
    pub supplier: String,
}

/// How one probe ended, inside the registry.
enum ProbeOutcome {
    Bound,
    Failed(Errno),
    Deferred(String),
}

/// The driver model: every bus, device and driver, and which device is bound to which driver.
///
/// Devices are listed in the order they were added and drivers in the order they registered;
/// that is also the order matching tries them.
pub struct DeviceModel {
    buses: Vec<BusRecord>,
    pub(crate) devices: BTreeMap<u64, DeviceRecord>,
    pub(crate) drivers: BTreeMap<u64, DriverRecord>,
    next_key: u64,
    faults: Vec<FaultRule>,
    log: Vec<String>,
    revoke_wait: fn(),
}

impl Default for DeviceModel {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DeviceModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceModel")
            .field(
                "buses",
                &self.buses.iter().map(|b| &b.name).collect::<Vec<_>>(),
            )
            .field("devices", &self.devices.len())
            .field("drivers", &self.drivers.len())
            .finish()
    }
}

impl DeviceModel {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            buses: Vec::new(),
            devices: BTreeMap::new(),
            drivers: BTreeMap::new(),
            next_key: 1,
            faults: Vec::new(),
            log: Vec::new(),
            revoke_wait: core::hint::spin_loop,
        }
    }

    /// What devices' lists do while a revoked resource still has accessors (see
    /// [`DevresList::set_revoke_wait`]); applies to devices added from now on.
    pub fn set_revoke_wait(&mut self, wait: fn()) {
        self.revoke_wait = wait;
    }

    /// Registers a bus and how it matches.
    pub fn add_bus<B: BusMatch>(&mut self, name: &str, matcher: B) -> Result<(), ModelError> {
        if self.buses.iter().any(|b| b.name == name) {
            return Err(ModelError::Duplicate {
                what: "bus",
                name: name.to_string(),
            });
        }
        self.buses.push(BusRecord {
            name: name.to_string(),
            matcher: Erased::boxed(matcher),
        });
        Ok(())
    }

    /// The bus names, in registration order.
    pub fn buses(&self) -> impl Iterator<Item = &str> {
        self.buses.iter().map(|b| b.name.as_str())
    }

    /// How many devices are registered.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// How many drivers are registered.
    pub fn driver_count(&self) -> usize {
        self.drivers.len()
    }

    /// Adds a device and tries the bus's drivers on it (registration order; the first whose
    /// table matches and whose probe succeeds binds; a probe that defers stops the search).
    /// Returns the device's state afterwards: failing to bind is not an error of `add_device`.
    pub fn add_device(&mut self, desc: DeviceDesc) -> Result<DeviceState, ModelError> {
        let bus = self.bus(&desc.bus)?;
        if !bus.matcher.is_device_type(&*desc.match_data) {
            return Err(ModelError::BadMatchType {
                bus: desc.bus,
                name: desc.name,
            });
        }
        if self
            .devices
            .values()
            .any(|d| d.bus == desc.bus && *d.name == *desc.name)
        {
            return Err(ModelError::Duplicate {
                what: "device",
                name: desc.name,
            });
        }
        let parent = match &desc.parent {
            Some(parent) => Some(self.find_device_any_bus(parent)?),
            None => None,
        };
        let key = self.new_key();
        let mut devres = DevresList::new();
        devres.set_revoke_wait(self.revoke_wait);
        self.devices.insert(
            key,
            DeviceRecord {
                bus: desc.bus,
                name: desc.name,
                match_data: desc.match_data,
                parent,
                state: DeviceState::Unbound,
                devres,
                drvdata: None,
                suppliers: Vec::new(),
                owned_by_parent_binding: false,
            },
        );
        if self.attach(key, None) {
            self.trigger_deferred();
        }
        Ok(self.state_of(key))
    }

    /// Removes a device (hot unplug): its consumers are unbound, then it is, then it goes.
    /// Refused while it has child devices.
    pub fn remove_device(&mut self, bus: &str, name: &str) -> Result<(), ModelError> {
        let key = self.find_device(bus, name)?;
        if let Some(child) = self.devices.values().find(|d| d.parent == Some(key)) {
            return Err(ModelError::HasChildren {
                device: name.to_string(),
                child: child.name.clone(),
            });
        }
        if self.devices.get(&key).is_some_and(|d| d.state.is_bound()) {
            self.release_driver(key);
        }
        // Nothing can still name it as a supplier: its consumers were unbound with it, and
        // unbinding clears a device's links.
        self.devices.remove(&key);
        Ok(())
    }

    /// Registers a driver and tries it on every unbound device of its bus (deferred ones
    /// included). Returns how many devices it bound.
    pub fn register_driver(&mut self, desc: DriverDesc) -> Result<usize, ModelError> {
        let bus = self.bus(&desc.bus)?;
        if !bus.matcher.is_table_type(&*desc.ids) {
            return Err(ModelError::BadMatchType {
                bus: desc.bus,
                name: desc.name,
            });
        }
        if self
            .drivers
            .values()
            .any(|d| d.bus == desc.bus && *d.name == *desc.name)
        {
            return Err(ModelError::Duplicate {
                what: "driver",
                name: desc.name,
            });
        }
        let driver_key = self.new_key();
        let bus_name = desc.bus.clone();
        self.drivers.insert(
            driver_key,
            DriverRecord {
                bus: desc.bus,
                name: Arc::from(desc.name),
                suppress_bind_attrs: desc.suppress_bind_attrs,
                ids: desc.ids,
                ops: desc.ops,
            },
        );
        let candidates: Vec<u64> = self
            .devices
            .iter()
            .filter(|(_, d)| d.bus == bus_name && !d.state.is_bound())
            .map(|(&key, _)| key)
            .collect();
        let mut bound = 0_usize;
        for key in candidates {
            if self.attach(key, Some(driver_key)) {
                bound = bound.saturating_add(1);
            }
        }
        if bound > 0 {
            self.trigger_deferred();
        }
        Ok(bound)
    }

    /// Unregisters a driver, unbinding every device bound to it first.
    pub fn unregister_driver(&mut self, bus: &str, name: &str) -> Result<(), ModelError> {
        let driver_key = self.find_driver(bus, name)?;
        let bound: Vec<u64> = self
            .devices
            .iter()
            .filter(|(_, d)| d.bus == bus && d.state.driver() == Some(name))
            .map(|(&key, _)| key)
            .collect();
        for key in bound {
            self.release_driver(key);
        }
        self.drivers.remove(&driver_key);
        Ok(())
    }

    /// Binds `device` to `driver`, as writing the device's name to
    /// `/sys/bus/BUS/drivers/DRIVER/bind`.
    ///
    /// Errors as Linux's `bind_store`: unknown device `ENODEV`; already bound `EBUSY`; the
    /// driver's table does not match `ENODEV`; the probe's own error if it fails. Lull also
    /// refuses a device on another bus with `EINVAL` (Linux says `ENODEV` there too).
    pub fn bind(&mut self, bus: &str, device: &str, driver: &str) -> Result<(), ModelError> {
        let driver_key = self.find_driver(bus, driver)?;
        let key = self.find_device(bus, device)?;
        let record = self.device(key);
        if let DeviceState::Bound { driver: bound, .. } = &record.state {
            return Err(ModelError::AlreadyBound {
                device: device.to_string(),
                driver: bound.to_string(),
            });
        }
        let Some(index) = self.match_index(key, driver_key) else {
            return Err(ModelError::NoMatch {
                device: device.to_string(),
                driver: driver.to_string(),
            });
        };
        match self.really_probe(key, driver_key, index) {
            ProbeOutcome::Bound => {
                self.trigger_deferred();
                Ok(())
            }
            ProbeOutcome::Failed(errno) => Err(ModelError::ProbeFailed {
                device: device.to_string(),
                driver: driver.to_string(),
                errno,
            }),
            ProbeOutcome::Deferred(supplier) => Err(ModelError::Deferred {
                device: device.to_string(),
                driver: driver.to_string(),
                supplier,
            }),
        }
    }

    /// Unbinds `device` from `driver`, as writing its name to
    /// `/sys/bus/BUS/drivers/DRIVER/unbind`: its consumers are unbound first (they go on the
    /// deferred list, waiting for it), then the driver's `remove` runs, then the device's managed
    /// resources are released, last acquired first.
    pub fn unbind(&mut self, bus: &str, device: &str, driver: &str) -> Result<(), ModelError> {
        self.find_driver(bus, driver)?;
        let key = self.find_device(bus, device)?;
        if self.device(key).state.driver() != Some(driver) {
            return Err(ModelError::NotBound {
                device: device.to_string(),
                driver: driver.to_string(),
            });
        }
        self.release_driver(key);
        Ok(())
    }

    /// A device's state, `None` if there is no such device.
    pub fn device_state(&self, bus: &str, name: &str) -> Option<&DeviceState> {
        let key = self.find_device(bus, name).ok()?;
        self.devices.get(&key).map(|d| &d.state)
    }

    /// A device's managed resources (for listings and tests), `None` if there is no such device.
    pub fn device_devres(&self, bus: &str, name: &str) -> Option<&DevresList> {
        let key = self.find_device(bus, name).ok()?;
        self.devices.get(&key).map(|d| &d.devres)
    }

    /// Devices waiting for a supplier, in the order they were added.
    pub fn deferred(&self) -> Vec<DeferredDevice> {
        self.devices
            .values()
            .filter_map(|d| match &d.state {
                DeviceState::Deferred { driver, supplier } => Some(DeferredDevice {
                    device: d.name.clone(),
                    bus: d.bus.clone(),
                    driver: driver.to_string(),
                    supplier: supplier.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The deferred list as Linux's `/sys/kernel/debug/devices_deferred`: one line per device,
    /// `NAME\tREASON`.
    pub fn devices_deferred_text(&self) -> String {
        self.deferred()
            .iter()
            .map(|d| {
                format!(
                    "{}\t{}: waiting for supplier {}\n",
                    d.device, d.driver, d.supplier
                )
            })
            .collect()
    }

    /// Messages the registry logged since the last call (probe failures, deferrals, binds),
    /// for the kernel's log.
    pub fn take_log(&mut self) -> Vec<String> {
        core::mem::take(&mut self.log)
    }

    /// Adds a fault rule; rules are consulted in the order added, the first that applies wins.
    pub fn add_fault_rule(&mut self, rule: FaultRule) {
        self.faults.push(rule);
    }

    /// Removes every fault rule.
    pub fn clear_fault_rules(&mut self) {
        self.faults = Vec::new();
    }

    /// Removes rule `index`; with none left the list gives its buffer back, so that what the
    /// model holds does not depend on whether a fault was ever injected (the kernel's leak
    /// tests compare the heap exactly around fault sweeps).
    fn remove_fault_rule(&mut self, index: usize) {
        if index < self.faults.len() {
            self.faults.remove(index);
        }
        if self.faults.is_empty() {
            self.faults = Vec::new();
        }
    }

    /// The fault rules in force.
    pub fn fault_rules(&self) -> &[FaultRule] {
        &self.faults
    }

    /// Runs the probe of `device` by `driver` once per managed acquisition point with that point
    /// failed, through [`bind`](Self::bind), until a probe completes without reaching its failed
    /// point; that last probe binds the device, which is left bound.
    ///
    /// After each injected failure: `tracker` (to which the driver's resources report) must
    /// count nothing live, the device's list must be empty, and the device must be unbound with
    /// the probe's error recorded. A probe that absorbs an injected failure and binds is
    /// unbound and checked the same way. Any existing fault rules stay, but this sweep's rule
    /// comes first.
    pub fn sweep_probe_faults(
        &mut self,
        bus: &str,
        device: &str,
        driver: &str,
        tracker: &LeakTracker,
    ) -> Result<FaultSweepReport, FaultSweepError> {
        let key = self
            .find_device(bus, device)
            .map_err(FaultSweepError::Model)?;
        self.find_driver(bus, driver)
            .map_err(FaultSweepError::Model)?;
        if self.device(key).state.is_bound() || !self.device(key).devres.is_empty() {
            return Err(FaultSweepError::NotCleanAtStart {
                live: tracker.live_by_kind(),
            });
        }
        check_tracker(tracker, None)?;
        let target = FaultTarget::DriverDevice {
            driver: driver.to_string(),
            device: device.to_string(),
        };
        let mut report = FaultSweepReport::default();
        let result = (1..=lull_devres::MAX_SWEEP_POINTS).find_map(|n| {
            let nth = NonZeroUsize::new(n)?;
            self.faults.insert(0, FaultRule::new(target.clone(), nth));
            let bound = self.bind(bus, device, driver);
            self.remove_fault_rule(0);
            let fired = self.device(key).devres.fault_injector().fired();
            match (bound, fired) {
                (Ok(()), false) => {
                    report.acquisition_points = n.saturating_sub(1);
                    Some(Ok(()))
                }
                (Ok(()), true) => {
                    report.absorbed.push(n);
                    if let Err(error) = self.unbind(bus, device, driver) {
                        return Some(Err(FaultSweepError::Model(error)));
                    }
                    self.check_failed_clean(key, tracker, n, None)
                        .err()
                        .map(Err)
                }
                (Err(ModelError::ProbeFailed { errno, .. }), true) => {
                    let message = format!(
                        "{driver}: probe of {device} failed with error {}",
                        errno.negative()
                    );
                    report.failures.push(message);
                    self.check_failed_clean(key, tracker, n, Some(errno))
                        .err()
                        .map(Err)
                }
                (Err(error), _) => Some(Err(FaultSweepError::Model(error))),
            }
        });
        match result {
            Some(Ok(())) => Ok(report),
            Some(Err(error)) => Err(error),
            None => Err(FaultSweepError::TooManyPoints),
        }
    }

    fn check_failed_clean(
        &self,
        key: u64,
        tracker: &LeakTracker,
        n: usize,
        errno: Option<Errno>,
    ) -> Result<(), FaultSweepError> {
        let record = self.device(key);
        if !record.devres.is_empty() {
            return Err(FaultSweepError::LeftInList {
                fail_at: n,
                remaining: record.devres.len(),
            });
        }
        check_tracker(tracker, Some(n))?;
        let state_ok = match (errno, &record.state) {
            (Some(want), DeviceState::Failed { errno, .. }) => *errno == want,
            (None, DeviceState::Unbound) => true,
            _ => false,
        };
        if !state_ok {
            return Err(FaultSweepError::WrongState {
                fail_at: n,
                state: record.state.clone(),
            });
        }
        Ok(())
    }

    // ---- internals ----

    fn new_key(&mut self) -> u64 {
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        key
    }

    fn bus(&self, name: &str) -> Result<&BusRecord, ModelError> {
        self.buses
            .iter()
            .find(|b| b.name == name)
            .ok_or_else(|| ModelError::NoSuchBus {
                bus: name.to_string(),
            })
    }

    pub(crate) fn find_driver(&self, bus: &str, name: &str) -> Result<u64, ModelError> {
        self.bus(bus)?;
        self.drivers
            .iter()
            .find(|(_, d)| d.bus == bus && *d.name == *name)
            .map(|(&key, _)| key)
            .ok_or_else(|| ModelError::NoSuchDriver {
                bus: bus.to_string(),
                driver: name.to_string(),
            })
    }

    /// The device `name` on `bus`; a device of that name on another bus is `WrongBus`.
    pub(crate) fn find_device(&self, bus: &str, name: &str) -> Result<u64, ModelError> {
        self.bus(bus)?;
        if let Some((&key, _)) = self
            .devices
            .iter()
            .find(|(_, d)| d.bus == bus && *d.name == *name)
        {
            return Ok(key);
        }
        match self.devices.values().find(|d| d.name == name) {
            Some(other) => Err(ModelError::WrongBus {
                device: name.to_string(),
                device_bus: other.bus.clone(),
                bus: bus.to_string(),
            }),
            None => Err(ModelError::NoSuchDevice {
                device: name.to_string(),
            }),
        }
    }

    fn find_device_any_bus(&self, name: &str) -> Result<u64, ModelError> {
        self.devices
            .iter()
            .find(|(_, d)| d.name == name)
            .map(|(&key, _)| key)
            .ok_or_else(|| ModelError::NoSuchDevice {
                device: name.to_string(),
            })
    }

    /// The record behind a key taken from the map in this same call chain.
    fn device(&self, key: u64) -> &DeviceRecord {
        match self.devices.get(&key) {
            Some(record) => record,
            None => unreachable!("device key {key} came from the registry"),
        }
    }

    fn device_mut(&mut self, key: u64) -> &mut DeviceRecord {
        match self.devices.get_mut(&key) {
            Some(record) => record,
            None => unreachable!("device key {key} came from the registry"),
        }
    }

    fn state_of(&self, key: u64) -> DeviceState {
        self.device(key).state.clone()
    }

    fn match_index(&self, device: u64, driver: u64) -> Option<usize> {
        let device = self.devices.get(&device)?;
        let driver = self.drivers.get(&driver)?;
        if driver.bus != device.bus {
            return None;
        }
        let bus = self.bus(&device.bus).ok()?;
        bus.matcher.matches(&*driver.ids, &*device.match_data)
    }

    /// Tries drivers on an unbound device (all of its bus's, or only `only`), in registration
    /// order. Returns whether it bound. The next matching driver gets its try after a failed
    /// probe; a deferral ends the search (Linux's `__device_attach_driver`).
    fn attach(&mut self, key: u64, only: Option<u64>) -> bool {
        let drivers: Vec<u64> = match only {
            Some(driver) => alloc::vec![driver],
            None => self.drivers.keys().copied().collect(),
        };
        for driver in drivers {
            let Some(index) = self.match_index(key, driver) else {
                continue;
            };
            match self.really_probe(key, driver, index) {
                ProbeOutcome::Bound => return true,
                ProbeOutcome::Deferred(_) => return false,
                ProbeOutcome::Failed(_) => {}
            }
        }
        false
    }

    /// Retries deferred devices until a round binds none (Linux retries the whole list whenever
    /// a probe succeeds; a success during the retry triggers another round).
    fn trigger_deferred(&mut self) {
        loop {
            let deferred: Vec<u64> = self
                .devices
                .iter()
                .filter(|(_, d)| matches!(d.state, DeviceState::Deferred { .. }))
                .map(|(&key, _)| key)
                .collect();
            let mut progress = false;
            for key in deferred {
                let still_deferred = self
                    .devices
                    .get(&key)
                    .is_some_and(|d| matches!(d.state, DeviceState::Deferred { .. }));
                if still_deferred && self.attach(key, None) {
                    progress = true;
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// One probe of `key` by `driver_key`, with the device's list bracketing it: on failure or
    /// deferral everything the probe acquired is released before this returns.
    fn really_probe(&mut self, key: u64, driver_key: u64, match_index: usize) -> ProbeOutcome {
        let (ops, driver_name, bus_name) = match self.drivers.get(&driver_key) {
            Some(d) => (d.ops.clone(), d.name.clone(), d.bus.clone()),
            None => unreachable!("driver key came from the registry"),
        };
        let device_name = self.device(key).name.clone();
        let rule = self
            .faults
            .iter()
            .position(|r| r.target.applies(&driver_name, &device_name));
        let record = self.device_mut(key);
        record.state = DeviceState::Probing {
            driver: driver_name.clone(),
        };
        // A device is probed with an empty list; `DevresList::probe` would release leftovers.
        let mut devres = core::mem::take(&mut record.devres);
        match rule.and_then(|index| self.faults.get(index)) {
            Some(rule) => devres.fault_injector_mut().fail_at(rule.nth),
            None => devres.fault_injector_mut().disarm(),
        }

        let mut drvdata = None;
        let mut suppliers = Vec::new();
        let mut children = Vec::new();
        let result = {
            let devices = &self.devices;
            let device = match devices.get(&key) {
                Some(device) => device,
                None => unreachable!("device key came from the registry"),
            };
            let matched = self
                .drivers
                .get(&driver_key)
                .zip(self.buses.iter().find(|b| b.name == bus_name))
                .and_then(|(driver, bus)| bus.matcher.entry(&*driver.ids, match_index));
            devres.probe(|list| {
                let mut ctx = ProbeContext {
                    devices,
                    device,
                    driver: &driver_name,
                    matched,
                    match_index,
                    devres: list,
                    drvdata: None,
                    suppliers: Vec::new(),
                    children: Vec::new(),
                };
                let result = ops.probe(&mut ctx);
                drvdata = ctx.drvdata.take();
                suppliers = core::mem::take(&mut ctx.suppliers);
                children = core::mem::take(&mut ctx.children);
                result
            })
        };
        let fired = devres.fault_injector().fired();
        devres.fault_injector_mut().disarm();
        if fired {
            self.spend_fault_rule(rule);
        }

        let outcome = match result {
            Ok(()) => ProbeOutcome::Bound,
            Err(ProbeError::Errno(errno)) => ProbeOutcome::Failed(errno),
            Err(ProbeError::Defer { supplier }) => ProbeOutcome::Deferred(supplier),
        };
        let (state, message) = match &outcome {
            ProbeOutcome::Bound => (
                DeviceState::Bound {
                    driver: driver_name.clone(),
                    match_index,
                },
                format!("{bus_name} {device_name}: bound to {driver_name}"),
            ),
            ProbeOutcome::Failed(errno) => {
                drvdata = None;
                suppliers.clear();
                (
                    DeviceState::Failed {
                        driver: driver_name.clone(),
                        errno: *errno,
                    },
                    format!(
                        "{driver_name}: probe of {device_name} failed with error {}",
                        errno.negative()
                    ),
                )
            }
            ProbeOutcome::Deferred(supplier) => {
                drvdata = None;
                suppliers.clear();
                (
                    DeviceState::Deferred {
                        driver: driver_name.clone(),
                        supplier: supplier.clone(),
                    },
                    format!(
                        "{bus_name} {device_name}: deferred probe pending: {driver_name} waits for {supplier}"
                    ),
                )
            }
        };
        let record = self.device_mut(key);
        record.devres = devres;
        record.state = state;
        record.drvdata = drvdata;
        record.suppliers = suppliers;
        self.log.push(message);
        if matches!(outcome, ProbeOutcome::Bound) {
            self.add_children(key, children);
        }
        outcome
    }

    /// Adds the children a successful probe of `parent` declared, each marked as belonging to
    /// that binding (they are probed as they are added).
    fn add_children(&mut self, parent: u64, children: Vec<DeviceDesc>) {
        let parent_name = self.device(parent).name.clone();
        for mut child in children {
            child.parent = Some(parent_name.clone());
            let (bus, name) = (child.bus.clone(), child.name.clone());
            match self.add_device(child) {
                Ok(_) => {
                    if let Ok(key) = self.find_device(&bus, &name) {
                        self.device_mut(key).owned_by_parent_binding = true;
                    }
                }
                Err(error) => self.log.push(format!(
                    "{parent_name}: cannot add child {bus} {name}: {error}"
                )),
            }
        }
    }

    /// Removes the children `key`'s binding added (deepest first), each unbound first.
    fn remove_owned_children(&mut self, key: u64) {
        let children: Vec<u64> = self
            .devices
            .iter()
            .filter(|(_, d)| d.parent == Some(key) && d.owned_by_parent_binding)
            .map(|(&k, _)| k)
            .collect();
        for child in children.into_iter().rev() {
            self.remove_owned_children(child);
            if self.device(child).state.is_bound() {
                self.release_driver(child);
            }
            let (bus, name) = {
                let record = self.device(child);
                (record.bus.clone(), record.name.clone())
            };
            self.devices.remove(&child);
            self.log
                .push(format!("{bus} {name}: removed with its parent's binding"));
        }
    }

    fn spend_fault_rule(&mut self, rule: Option<usize>) {
        let Some(index) = rule else { return };
        let Some(rule) = self.faults.get_mut(index) else {
            return;
        };
        if let Some(times) = rule.times {
            match core::num::NonZeroU32::new(times.get().saturating_sub(1)) {
                Some(left) => rule.times = Some(left),
                None => self.remove_fault_rule(index),
            }
        }
    }

    /// Unbinds a bound device: consumers first (each goes on the deferred list, waiting for
    /// this device), then `remove`, then its managed resources, LIFO.
    fn release_driver(&mut self, key: u64) {
        let name = self.device(key).name.clone();
        let consumers: Vec<u64> = self
            .devices
            .iter()
            .filter(|(_, d)| d.suppliers.contains(&key) && d.state.is_bound())
            .map(|(&k, _)| k)
            .collect();
        for consumer in consumers {
            let driver = match &self.device(consumer).state {
                DeviceState::Bound { driver, .. } => Some(Arc::clone(driver)),
                _ => None,
            };
            self.release_driver(consumer);
            if let Some(driver) = driver {
                self.device_mut(consumer).state = DeviceState::Deferred {
                    driver,
                    supplier: name.clone(),
                };
            }
        }
        let Some(driver) = self.device(key).state.driver().map(str::to_string) else {
            return;
        };
        // The children this binding created go first (Linux's `i2c_del_adapter` in remove
        // unregisters the clients before the adapter's resources go).
        self.remove_owned_children(key);
        let ops = self
            .drivers
            .values()
            .find(|d| d.bus == self.device(key).bus && *d.name == *driver)
            .map(|d| d.ops.clone());
        let record = self.device_mut(key);
        let mut devres = core::mem::take(&mut record.devres);
        let mut drvdata = record.drvdata.take();
        if let Some(ops) = ops {
            ops.remove(&mut RemoveContext {
                name: &name,
                devres: &mut devres,
                drvdata: &mut drvdata,
            });
        }
        devres.release_all();
        drop(drvdata);
        let bus = {
            let record = self.device_mut(key);
            record.devres = devres;
            record.state = DeviceState::Unbound;
            record.suppliers.clear();
            record.bus.clone()
        };
        self.log
            .push(format!("{bus} {name}: unbound from {driver}"));
    }
}

fn check_tracker(tracker: &LeakTracker, fail_at: Option<usize>) -> Result<(), FaultSweepError> {
    let live = tracker.live_by_kind();
    let over = tracker.over_released();
    if live.is_empty() && over.is_empty() {
        return Ok(());
    }
    Err(match fail_at {
        Some(fail_at) => FaultSweepError::Leaked {
            fail_at,
            live,
            over_released: over,
        },
        None => FaultSweepError::NotCleanAtStart { live },
    })
}

/// What [`DeviceModel::sweep_probe_faults`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSweepReport {
    /// Managed acquisitions the probe makes when nothing fails; each was failed once.
    pub acquisition_points: usize,
    /// The failure message of each failed point, in order (`DRV: probe of DEV failed with
    /// error -12`).
    pub failures: Vec<String>,
    /// Points whose injected failure the probe absorbed and still bound.
    pub absorbed: Vec<usize>,
}

/// Why [`DeviceModel::sweep_probe_faults`] stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultSweepError {
    /// The device was bound or held resources, or the tracker counted live resources, before
    /// the sweep.
    NotCleanAtStart {
        /// What the tracker counted.
        live: Vec<(ResourceKind, usize)>,
    },
    /// Resources stayed in the device's list after acquisition `fail_at` was failed.
    LeftInList {
        /// The failed point.
        fail_at: usize,
        /// How many.
        remaining: usize,
    },
    /// The tracker counted live (or doubly released) resources after acquisition `fail_at`
    /// was failed.
    Leaked {
        /// The failed point.
        fail_at: usize,
        /// Live resources per kind.
        live: Vec<(ResourceKind, usize)>,
        /// Kinds released more often than acquired.
        over_released: Vec<ResourceKind>,
    },
    /// After the failure the device was not unbound with the probe's error recorded.
    WrongState {
        /// The failed point.
        fail_at: usize,
        /// The state found.
        state: DeviceState,
    },
    /// A bind failed in a way the injection does not explain (no such device, the probe
    /// failing without injection, a deferral).
    Model(ModelError),
    /// More than [`lull_devres::MAX_SWEEP_POINTS`] acquisitions.
    TooManyPoints,
}

impl fmt::Display for FaultSweepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotCleanAtStart { live } => {
                write!(
                    f,
                    "device bound or resources live before the sweep: {live:?}"
                )
            }
            Self::LeftInList { fail_at, remaining } => write!(
                f,
                "{remaining} resources left in the device list with acquisition {fail_at} failed"
            ),
            Self::Leaked {
                fail_at,
                live,
                over_released,
            } => write!(
                f,
                "with acquisition {fail_at} failed: live {live:?}, released twice {over_released:?}"
            ),
            Self::WrongState { fail_at, state } => write!(
                f,
                "with acquisition {fail_at} failed the device was left {state:?}"
            ),
            Self::Model(error) => write!(f, "{error}"),
            Self::TooManyPoints => write!(
                f,
                "more than {} managed acquisitions",
                lull_devres::MAX_SWEEP_POINTS
            ),
        }
    }
}

impl core::error::Error for FaultSweepError {}
