//! The driver model in the kernel (Linux's `drivers/base`): one registry of buses, devices and
//! drivers (`lull-driver-core`'s [`DeviceModel`], host-tested there), the `/sys/bus` tree that
//! binds and unbinds from the shell, and the `devm_*` helpers ([`devm`]) that put the kernel's
//! real resources on a device's managed list.
//!
//! # Locking and context
//!
//! The registry sits behind one sleeping mutex (`drivers::MODEL`), held across every probe and
//! remove, as Linux's bus-wide `device_lock` nesting does for a simple system: probes run one at
//! a time, in thread context, and may sleep. Nothing in interrupt context takes it; a driver's
//! interrupt handler and shell commands reach the driver's state through handles the driver
//! keeps itself (revocable, so an unbind withdraws them).
//!
//! # Buses
//!
//! `platform` (firmware-described devices without an ACPI identity), `acpi` (ACPI namespace
//! devices by `_HID`), `pci`, `virtio` and `i2c`. Bus code calls [`add_device`]; drivers call
//! [`register_driver`] at init. Every message the registry records (a failed probe, a deferral)
//! goes to the kernel log.

pub mod devm;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use lull_cmdline::{Kind, ParamSpec};
use lull_driver_core::{
    DeviceDesc, DeviceModel, DeviceState, DriverDesc, FaultRule, I2cMatch, ModelError, PciMatch,
    PlatformMatch, VirtioMatch,
};

use crate::fs::procfs::{self, ProcDirectory, ProcError, ProcFile};
use crate::kernel::locking::{IrqSafeLock, Mutex};
use crate::{pr_debug, pr_err, pr_warn, printk};

/// Driver-model parameters.
pub const PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "devres.fail",
    kind: Kind::Str,
    default: "",
    help: "Fail the Nth managed acquisition of matching probes, to run every probe unwind \
           path: N, DRIVER:N, @DEVICE:N or DRIVER@DEVICE:N, each optionally ,TIMES; \
           several rules separated by ';'.",
}];

/// The buses of the model, in registration order.
pub const BUSES: &[&str] = &["platform", "acpi", "pci", "virtio", "i2c"];

static MODEL: Mutex<Option<DeviceModel>> = Mutex::named("driver_model", None);

/// Extra per-device files a bus serves (`vendor`, `irq`…): `(bus, provider)`.
type AttrProvider = fn(device: &str, attribute: Option<&str>) -> Option<String>;
static ATTRIBUTES: IrqSafeLock<Vec<(&'static str, AttrProvider)>> = IrqSafeLock::new(Vec::new());

/// Yields while a revoked resource still has accessors (devres release waits for them).
fn revoke_wait() {
    crate::kernel::sched::yield_now();
}

/// Registers `/sys` and `/proc/devres_leaks`. Boot, once. Their readers go through
/// [`with_model`], which waits for the device probe, whose first step is [`create_model`].
pub fn init() {
    procfs::register_directory(ProcDirectory {
        path: "/sys",
        read: sys_read,
        write: sys_write,
        list: sys_list,
    });
    procfs::register_table(&[ProcFile {
        path: "/proc/devres_leaks",
        read: Some(|| alloc::format!("{}", devm::LeakSnapshot::take())),
        write: None,
    }]);
}

/// Creates the registry and its buses and applies `devres.fail=`: the device probe's first
/// step, in its thread after the prompt. Nothing before the prompt uses the model (everything
/// that does calls [`with_model`], which waits for the probe), and creating it was ~100 of
/// the ~3,700 code blocks TCG translated before the prompt. Thread context (the lock sleeps).
pub fn create_model() {
    let mut model = DeviceModel::new();
    model.set_revoke_wait(revoke_wait);
    let buses: [(&str, Result<(), ModelError>); 5] = [
        ("platform", model.add_bus("platform", PlatformMatch)),
        ("acpi", model.add_bus("acpi", PlatformMatch)),
        ("pci", model.add_bus("pci", PciMatch)),
        ("virtio", model.add_bus("virtio", VirtioMatch)),
        ("i2c", model.add_bus("i2c", I2cMatch)),
    ];
    for (name, result) in buses {
        if let Err(error) = result {
            pr_err!("driver model: bus {name}: {error}");
        }
    }
    let rules = crate::kernel::params::parsed()
        .get_str("devres.fail")
        .unwrap_or("");
    for text in rules.split(';').map(str::trim).filter(|t| !t.is_empty()) {
        match FaultRule::parse(text) {
            Some(rule) => {
                printk!("devres: fault injection armed: {rule}");
                model.add_fault_rule(rule);
            }
            None => pr_warn!("devres.fail: cannot parse rule {text:?} (expected DRIVER:N)"),
        }
    }
    *MODEL.lock() = Some(model);
}

/// Runs `f` on the registry with its lock held, then logs what it recorded. Thread context.
/// `None` if the probe could not create the model.
pub fn with_model<R>(f: impl FnOnce(&mut DeviceModel) -> R) -> Option<R> {
    super::wait_for_device_probe();
    let mut guard = MODEL.lock();
    let model = guard.as_mut()?;
    let result = f(model);
    let log = model.take_log();
    drop(guard);
    for line in log {
        // Binding and unbinding are routine (debug level, as Linux's driver core logs them);
        // a failed or deferred probe is worth a warning.
        if line.contains("failed") || line.contains("deferred") {
            pr_warn!("{line}");
        } else {
            pr_debug!("{line}");
        }
    }
    // Devices a probe created (a transport's child): added now that the lock is free.
    loop {
        let next = {
            let mut pending = PENDING.lock();
            if pending.is_empty() {
                None
            } else {
                Some(pending.remove(0))
            }
        };
        let Some(desc) = next else { break };
        if let Err(error) = add_device(desc) {
            pr_err!("driver model: adding a probe's child device: {error}");
        }
    }
    Some(result)
}

/// Devices queued by [`add_device_later`].
static PENDING: IrqSafeLock<Vec<DeviceDesc>> = IrqSafeLock::new(Vec::new());

/// Adds a device once the registry's lock is released: for a probe that creates child devices
/// (a virtio transport adding its `virtioN`; Linux's `register_virtio_device` from the
/// transport's probe), which cannot call [`add_device`] while the registry runs it.
pub fn add_device_later(desc: DeviceDesc) {
    PENDING.lock().push(desc);
}

fn not_ready() -> ModelError {
    ModelError::NoSuchBus {
        bus: String::from("(driver model not initialised)"),
    }
}

/// Adds a device; matching drivers are probed at once. Returns its state afterwards.
pub fn add_device(desc: DeviceDesc) -> Result<DeviceState, ModelError> {
    with_model(|model| model.add_device(desc)).unwrap_or_else(|| Err(not_ready()))
}

/// Removes a device (unbinding it first).
#[allow(dead_code)] // hot-unplug users arrive with the virtio and PCI drivers
pub fn remove_device(bus: &str, name: &str) -> Result<(), ModelError> {
    with_model(|model| model.remove_device(bus, name)).unwrap_or_else(|| Err(not_ready()))
}

/// Registers a driver; it is tried on every unbound device of its bus. Returns how many
/// devices it bound.
pub fn register_driver(desc: DriverDesc) -> Result<usize, ModelError> {
    with_model(|model| model.register_driver(desc)).unwrap_or_else(|| Err(not_ready()))
}

/// Registers a bus's extra device files: `provider(device, None)` lists them (one name a
/// line), `provider(device, Some(name))` reads one.
pub fn register_attributes(bus: &'static str, provider: AttrProvider) {
    let mut providers = ATTRIBUTES.lock();
    providers.retain(|(b, _)| *b != bus);
    providers.push((bus, provider));
}

fn attributes_of(bus: &str) -> Option<AttrProvider> {
    ATTRIBUTES
        .lock()
        .iter()
        .find(|(b, _)| *b == bus)
        .map(|(_, provider)| *provider)
}

fn to_proc(error: ModelError) -> ProcError {
    match &error {
        ModelError::NoSuchPath { .. } | ModelError::NoSuchBus { .. } => ProcError::NotFound,
        ModelError::BadValue { .. } => ProcError::Invalid(alloc::format!("{error}")),
        other => ProcError::Failed(alloc::format!("{other}")),
    }
}

fn full(relative: &str) -> String {
    if relative.is_empty() {
        String::from("/sys")
    } else {
        alloc::format!("/sys/{relative}")
    }
}

/// `["bus", B, "devices", D, rest…]`.
fn device_path(relative: &str) -> Option<(&str, &str, Option<&str>)> {
    let mut parts = relative.split('/').filter(|p| !p.is_empty());
    if parts.next()? != "bus" {
        return None;
    }
    let bus = parts.next()?;
    if parts.next()? != "devices" {
        return None;
    }
    let device = parts.next()?;
    let attribute = parts.next();
    if parts.next().is_some() {
        return None;
    }
    Some((bus, device, attribute))
}

fn sys_read(relative: &str) -> Result<String, ProcError> {
    let path = full(relative);
    let from_model = with_model(|model| model.sysfs_read(&path)).ok_or(ProcError::NotFound)?;
    match from_model {
        Ok(text) => Ok(text),
        Err(error) => {
            if let Some((bus, device, Some(attribute))) = device_path(relative) {
                if let Some(text) = attributes_of(bus).and_then(|p| p(device, Some(attribute))) {
                    return Ok(text);
                }
            }
            Err(to_proc(error))
        }
    }
}

fn sys_write(relative: &str, value: &str) -> Result<(), ProcError> {
    let path = full(relative);
    with_model(|model| model.sysfs_write(&path, value))
        .ok_or(ProcError::NotFound)?
        .map_err(to_proc)
}

fn sys_list(relative: &str) -> Result<String, ProcError> {
    let path = full(relative);
    let mut names = match relative.trim_matches('/') {
        "" => alloc::vec![String::from("bus"), String::from("kernel")],
        "kernel" => alloc::vec![String::from("debug")],
        "kernel/debug" => alloc::vec![
            String::from("devices_deferred"),
            String::from("devres_fail"),
            String::from("gpio")
        ],
        _ => with_model(|model| model.sysfs_list(&path))
            .ok_or(ProcError::NotFound)?
            .map_err(to_proc)?,
    };
    if let Some((bus, device, None)) = device_path(relative) {
        if let Some(extra) = attributes_of(bus).and_then(|p| p(device, None)) {
            names.extend(extra.lines().map(String::from));
            names.sort();
            names.dedup();
        }
    }
    let mut out = String::new();
    for name in names {
        let _ = writeln!(out, "{name}");
    }
    Ok(out)
}

/// `devres [BUS DEVICE]`: every bound device with its managed resources (or one device's),
/// then the live totals the leak checks compare.
pub fn cmd_devres(args: &[&str]) -> Result<String, String> {
    let mut out = String::new();
    match args {
        [] => {
            let listing = with_model(|model| {
                let mut text = String::new();
                for bus in BUSES {
                    for device in model.sysfs_bus_devices(bus).unwrap_or_default() {
                        let Some(state) = model.device_state(bus, &device) else {
                            continue;
                        };
                        let resources = model.devres_listing(bus, &device).unwrap_or_default();
                        let _ = writeln!(text, "{bus} {device}: {}", state_text(state));
                        for line in resources.lines() {
                            let _ = writeln!(text, "    {line}");
                        }
                    }
                }
                text
            })
            .ok_or_else(|| String::from("devres: driver model not initialised"))?;
            out.push_str(&listing);
        }
        [bus, device] => {
            let listing = with_model(|model| model.devres_listing(bus, device))
                .ok_or_else(|| String::from("devres: driver model not initialised"))?
                .map_err(|e| alloc::format!("devres: {e}"))?;
            out.push_str(&listing);
        }
        _ => return Err(String::from("usage: devres [BUS DEVICE]")),
    }
    let _ = write!(out, "{}", devm::LeakSnapshot::take());
    Ok(out)
}

fn state_text(state: &DeviceState) -> String {
    match state {
        DeviceState::Unbound => String::from("unbound"),
        DeviceState::Probing { driver } => alloc::format!("probing by {driver}"),
        DeviceState::Bound { driver, .. } => alloc::format!("bound to {driver}"),
        DeviceState::Failed { driver, errno } => {
            alloc::format!("probe by {driver} failed ({errno})")
        }
        DeviceState::Deferred { driver, supplier } => {
            alloc::format!("deferred: {driver} waits for {supplier}")
        }
    }
}
