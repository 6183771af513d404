//! The sysfs-like view: Linux's `/sys/bus` tree as plain strings the kernel's file system code
//! can serve, and the writable files (`bind`, `unbind`, the fault knobs) routed to the registry.
//!
//! | path                                      | kind | content                                  |
//! |-------------------------------------------|------|------------------------------------------|
//! | `/sys/bus`                                | dir  | the buses                                 |
//! | `/sys/bus/B`                              | dir  | `devices`, `drivers`                      |
//! | `/sys/bus/B/devices`                      | dir  | device names                              |
//! | `/sys/bus/B/devices/D`                    | dir  | `devres`, `devres_fail_nth`, `driver` (when bound) |
//! | `/sys/bus/B/devices/D/driver`             | link | `/sys/bus/B/drivers/DRV` (read = target)  |
//! | `/sys/bus/B/devices/D/devres`             | file | managed resources, acquisition order      |
//! | `/sys/bus/B/devices/D/devres_fail_nth`    | file | `N` fails the Nth acquisition of its probes; `0` disarms |
//! | `/sys/bus/B/drivers`                      | dir  | driver names                              |
//! | `/sys/bus/B/drivers/DRV`                  | dir  | bound devices, `bind`, `devres_fail_nth`, `unbind` |
//! | `/sys/bus/B/drivers/DRV/bind`, `unbind`   | file | write a device name                       |
//! | `/sys/bus/B/drivers/DRV/devres_fail_nth`  | file | as the device's, for the driver's probes  |
//! | `/sys/kernel/debug/devices_deferred`      | file | `NAME\tREASON` lines, as Linux's          |
//! | `/sys/kernel/debug/devres_fail`           | file | the fault rules, one a line, in `devres.fail=` syntax; write a rule to add it, `0` or nothing to clear all |
//!
//! Directory listings are sorted bytewise, as `ls` shows them. The `devres` file and the
//! `devres_fail*` knobs are Lull's: Linux has only a devres trace in debugfs and its fault
//! injection is per task.
//!
//! The per-device `devres` file lists resources **in acquisition order** (oldest first), one a
//! line, numbered: `0: ioport 0x3f8-0x3ff (8 bytes)`. Release runs from the last line up.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::num::NonZeroUsize;

use crate::error::ModelError;
use crate::fault::{FaultRule, FaultTarget};
use crate::model::DeviceModel;

impl DeviceModel {
    /// `/sys/bus/BUS/devices`: the bus's device names, sorted.
    pub fn sysfs_bus_devices(&self, bus: &str) -> Result<Vec<String>, ModelError> {
        self.buses()
            .any(|b| b == bus)
            .then_some(())
            .ok_or_else(|| ModelError::NoSuchBus {
                bus: bus.to_string(),
            })?;
        Ok(sorted(
            self.devices
                .values()
                .filter(|d| d.bus == bus)
                .map(|d| d.name.to_string()),
        ))
    }

    /// `/sys/bus/BUS/drivers`: the bus's driver names, sorted.
    pub fn sysfs_bus_drivers(&self, bus: &str) -> Result<Vec<String>, ModelError> {
        self.buses()
            .any(|b| b == bus)
            .then_some(())
            .ok_or_else(|| ModelError::NoSuchBus {
                bus: bus.to_string(),
            })?;
        Ok(sorted(
            self.drivers
                .values()
                .filter(|d| d.bus == bus)
                .map(|d| d.name.to_string()),
        ))
    }

    /// `/sys/bus/BUS/drivers/DRV`: its bound devices, `bind`, `devres_fail_nth`, `unbind`,
    /// sorted.
    pub fn sysfs_driver_dir(&self, bus: &str, driver: &str) -> Result<Vec<String>, ModelError> {
        let key = self.find_driver(bus, driver)?;
        let bound = self
            .devices
            .values()
            .filter(|d| d.bus == bus && d.state.driver() == Some(driver))
            .map(|d| d.name.clone());
        let files: &[&str] = if self.drivers[&key].suppress_bind_attrs {
            &["devres_fail_nth"]
        } else {
            &["bind", "devres_fail_nth", "unbind"]
        };
        Ok(sorted(bound.chain(files.iter().map(|f| f.to_string()))))
    }

    /// The driver `driver` on `bus` if it has `bind`/`unbind` files (not suppressed).
    fn find_driver_with_bind_attrs(
        &self,
        bus: &str,
        driver: &str,
        path: &str,
    ) -> Result<u64, ModelError> {
        let key = self.find_driver(bus, driver)?;
        if self.drivers[&key].suppress_bind_attrs {
            return Err(no_path(path));
        }
        Ok(key)
    }

    /// The target of `/sys/bus/BUS/devices/DEV/driver`: `Some("/sys/bus/BUS/drivers/DRV")`
    /// when bound, `None` (no link) otherwise.
    pub fn sysfs_device_driver(
        &self,
        bus: &str,
        device: &str,
    ) -> Result<Option<String>, ModelError> {
        self.find_device(bus, device)?;
        Ok(self
            .device_state(bus, device)
            .and_then(|state| state.driver())
            .map(|driver| format!("/sys/bus/{bus}/drivers/{driver}")))
    }

    /// `/sys/bus/BUS/devices/DEV/devres`: one line per managed resource, in acquisition order
    /// (oldest first; release goes from the last line up), `INDEX: KIND DESCRIPTION (SIZE
    /// bytes)`.
    pub fn devres_listing(&self, bus: &str, device: &str) -> Result<String, ModelError> {
        self.find_device(bus, device)?;
        let list = self
            .device_devres(bus, device)
            .ok_or_else(|| ModelError::NoSuchDevice {
                device: device.to_string(),
            })?;
        Ok(list
            .resources()
            .enumerate()
            .map(|(index, (_, info))| format!("{index}: {info}\n"))
            .collect())
    }

    /// Lists a directory of the view (see the [module documentation](self)).
    pub fn sysfs_list(&self, path: &str) -> Result<Vec<String>, ModelError> {
        let parts = components(path);
        match parts.as_slice() {
            ["sys", "bus"] => Ok(sorted(self.buses().map(String::from))),
            ["sys", "bus", bus] => {
                self.sysfs_bus_devices(bus)?;
                Ok(["devices", "drivers"].map(String::from).to_vec())
            }
            ["sys", "bus", bus, "devices"] => self.sysfs_bus_devices(bus),
            ["sys", "bus", bus, "drivers"] => self.sysfs_bus_drivers(bus),
            ["sys", "bus", bus, "drivers", driver] => self.sysfs_driver_dir(bus, driver),
            ["sys", "bus", bus, "devices", device] => {
                let bound = self.sysfs_device_driver(bus, device)?.is_some();
                let mut entries = ["devres", "devres_fail_nth"].map(String::from).to_vec();
                if bound {
                    entries.push("driver".to_string());
                }
                Ok(entries)
            }
            _ => Err(no_path(path)),
        }
    }

    /// Reads a file of the view; a `driver` link reads as its target.
    pub fn sysfs_read(&self, path: &str) -> Result<String, ModelError> {
        let parts = components(path);
        match parts.as_slice() {
            ["sys", "bus", bus, "devices", device, "driver"] => self
                .sysfs_device_driver(bus, device)?
                .map(|target| target + "\n")
                .ok_or_else(|| no_path(path)),
            ["sys", "bus", bus, "devices", device, "devres"] => self.devres_listing(bus, device),
            ["sys", "bus", bus, "devices", device, "devres_fail_nth"] => {
                self.find_device(bus, device)?;
                Ok(self.knob_value(&FaultTarget::Device(device.to_string())))
            }
            ["sys", "bus", bus, "drivers", driver, "devres_fail_nth"] => {
                self.find_driver(bus, driver)?;
                Ok(self.knob_value(&FaultTarget::Driver(driver.to_string())))
            }
            ["sys", "bus", bus, "drivers", driver, "bind" | "unbind"] => {
                // Write-only in Linux (mode 0200); reading gives nothing rather than an error.
                self.find_driver_with_bind_attrs(bus, driver, path)?;
                Ok(String::new())
            }
            ["sys", "kernel", "debug", "devices_deferred"] => Ok(self.devices_deferred_text()),
            ["sys", "kernel", "debug", "devres_fail"] => Ok(self
                .fault_rules()
                .iter()
                .map(|rule| format!("{rule}\n"))
                .collect()),
            _ => Err(no_path(path)),
        }
    }

    /// Writes a file of the view, as `echo VALUE > PATH` (surrounding white space, the
    /// newline `echo` adds included, is ignored).
    pub fn sysfs_write(&mut self, path: &str, value: &str) -> Result<(), ModelError> {
        let parts = components(path);
        let value = value.trim();
        match parts.as_slice() {
            ["sys", "bus", bus, "drivers", driver, "bind"] => {
                self.find_driver_with_bind_attrs(bus, driver, path)?;
                self.bind(bus, value, driver)
            }
            ["sys", "bus", bus, "drivers", driver, "unbind"] => {
                self.find_driver_with_bind_attrs(bus, driver, path)?;
                self.unbind(bus, value, driver)
            }
            ["sys", "bus", bus, "devices", device, "devres_fail_nth"] => {
                self.find_device(bus, device)?;
                let target = FaultTarget::Device(device.to_string());
                self.set_knob(path, target, value)
            }
            ["sys", "bus", bus, "drivers", driver, "devres_fail_nth"] => {
                self.find_driver(bus, driver)?;
                let target = FaultTarget::Driver(driver.to_string());
                self.set_knob(path, target, value)
            }
            ["sys", "kernel", "debug", "devres_fail"] => {
                if value.is_empty() || value == "0" {
                    self.clear_fault_rules();
                    return Ok(());
                }
                let rule = FaultRule::parse(value).ok_or_else(|| bad_value(path, value))?;
                self.add_fault_rule(rule);
                Ok(())
            }
            _ => Err(no_path(path)),
        }
    }

    fn knob_value(&self, target: &FaultTarget) -> String {
        let nth = self
            .fault_rules()
            .iter()
            .find(|rule| rule.target == *target)
            .map_or(0, |rule| rule.nth.get());
        format!("{nth}\n")
    }

    /// A knob holds at most one rule for its target: writing replaces it, `0` removes it.
    fn set_knob(&mut self, path: &str, target: FaultTarget, value: &str) -> Result<(), ModelError> {
        let nth: usize = value.parse().map_err(|_| bad_value(path, value))?;
        let mut rules: Vec<FaultRule> = self
            .fault_rules()
            .iter()
            .filter(|rule| rule.target != target)
            .cloned()
            .collect();
        if let Some(nth) = NonZeroUsize::new(nth) {
            rules.push(FaultRule::new(target, nth));
        }
        self.clear_fault_rules();
        for rule in rules {
            self.add_fault_rule(rule);
        }
        Ok(())
    }
}

fn components(path: &str) -> Vec<&str> {
    path.split('/').filter(|part| !part.is_empty()).collect()
}

fn sorted(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = names.collect();
    names.sort();
    names
}

fn no_path(path: &str) -> ModelError {
    ModelError::NoSuchPath {
        path: path.to_string(),
    }
}

fn bad_value(path: &str, value: &str) -> ModelError {
    ModelError::BadValue {
        path: path.to_string(),
        value: value.to_string(),
    }
}
