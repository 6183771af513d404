//! Errors: Linux errno values for what a probe returns, and the typed errors of the registry.
//!
//! The registry's errors carry the errno that Linux's sysfs `bind`/`unbind` files would return
//! (so the shell's `echo` can report `-ENODEV` as Linux does) and a message naming what was
//! wrong, because "No such device" alone does not say whether the device, the driver or the bus
//! was misspelt.

use alloc::string::String;
use core::fmt;

use lull_devres::AcquireError;

/// A Linux errno value (positive, as in `<errno.h>`); probes fail with its negation in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// No such file or directory: a sysfs path that does not exist.
    pub const ENOENT: Self = Self(2);
    /// I/O error.
    pub const EIO: Self = Self(5);
    /// No such device or address: a probe that finds the hardware absent.
    pub const ENXIO: Self = Self(6);
    /// Out of memory: also what an injected devres failure returns, as Linux's failslab.
    pub const ENOMEM: Self = Self(12);
    /// Device or resource busy: already bound, or a region already claimed.
    pub const EBUSY: Self = Self(16);
    /// File exists: a duplicate bus, device or driver name.
    pub const EEXIST: Self = Self(17);
    /// No such device: unknown device, or a driver that does not match it.
    pub const ENODEV: Self = Self(19);
    /// Invalid argument: a device or driver on another bus, a malformed value.
    pub const EINVAL: Self = Self(22);
    /// Function not implemented.
    pub const ENOSYS: Self = Self(38);
    /// Linux's internal "probe deferred" code; never returned to user space.
    pub const EPROBE_DEFER: Self = Self(517);

    /// The symbolic name (`ENODEV`), or `E?` for a value this table does not know.
    pub fn name(self) -> &'static str {
        match self.0 {
            2 => "ENOENT",
            5 => "EIO",
            6 => "ENXIO",
            12 => "ENOMEM",
            16 => "EBUSY",
            17 => "EEXIST",
            19 => "ENODEV",
            22 => "EINVAL",
            38 => "ENOSYS",
            517 => "EPROBE_DEFER",
            _ => "E?",
        }
    }

    /// The negative value a kernel function returns (`-12`).
    pub fn negative(self) -> i32 {
        self.0.wrapping_neg()
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a driver's probe returns when it does not bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The probe failed with this errno; the device stays unbound with the error recorded.
    Errno(Errno),
    /// A supplier (named by its device name) is not bound yet: retry later (`-EPROBE_DEFER`).
    Defer {
        /// The device this one waits for.
        supplier: String,
    },
}

impl From<Errno> for ProbeError {
    fn from(errno: Errno) -> Self {
        Self::Errno(errno)
    }
}

impl From<AcquireError<Errno>> for ProbeError {
    /// An injected failure reads as `-ENOMEM`, as an allocation failed by Linux's fault
    /// injection does; a real failure keeps its errno.
    fn from(error: AcquireError<Errno>) -> Self {
        match error {
            AcquireError::Injected => Self::Errno(Errno::ENOMEM),
            AcquireError::Failed(errno) => Self::Errno(errno),
        }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Errno(errno) => write!(f, "error {} ({errno})", errno.negative()),
            Self::Defer { supplier } => write!(f, "deferred: waiting for supplier {supplier}"),
        }
    }
}

/// Why a registry operation was refused or did not bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelError {
    /// No bus of that name is registered.
    NoSuchBus {
        /// The name asked for.
        bus: String,
    },
    /// No driver of that name on that bus.
    NoSuchDriver {
        /// The bus searched.
        bus: String,
        /// The name asked for.
        driver: String,
    },
    /// No device of that name on any bus.
    NoSuchDevice {
        /// The name asked for.
        device: String,
    },
    /// The device exists, but on another bus than the one the request named.
    WrongBus {
        /// The device.
        device: String,
        /// The bus it is on.
        device_bus: String,
        /// The bus the request named.
        bus: String,
    },
    /// The device already has a driver.
    AlreadyBound {
        /// The device.
        device: String,
        /// Its driver.
        driver: String,
    },
    /// `unbind` of a device that is not bound to that driver.
    NotBound {
        /// The device.
        device: String,
        /// The driver named in the request.
        driver: String,
    },
    /// The driver's ID table does not match the device.
    NoMatch {
        /// The device.
        device: String,
        /// The driver.
        driver: String,
    },
    /// The driver's probe failed; the device is unbound, its managed resources released.
    ProbeFailed {
        /// The device.
        device: String,
        /// The driver.
        driver: String,
        /// What the probe returned.
        errno: Errno,
    },
    /// The driver's probe deferred: a supplier is not bound yet. The device is on the deferred
    /// list and is retried whenever a driver binds.
    Deferred {
        /// The device.
        device: String,
        /// The driver.
        driver: String,
        /// The supplier it waits for.
        supplier: String,
    },
    /// A bus, device or driver of that name already exists.
    Duplicate {
        /// What kind of object (`bus`, `device`, `driver`).
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// A device's match data or a driver's ID table is not of the type its bus matches on.
    BadMatchType {
        /// The bus.
        bus: String,
        /// The device or driver.
        name: String,
    },
    /// `remove_device` of a device that still has child devices.
    HasChildren {
        /// The device.
        device: String,
        /// Its first remaining child.
        child: String,
    },
    /// A sysfs path this registry does not serve.
    NoSuchPath {
        /// The path.
        path: String,
    },
    /// A value written to a sysfs file could not be parsed.
    BadValue {
        /// The file.
        path: String,
        /// The value.
        value: String,
    },
}

impl ModelError {
    /// The errno Linux's sysfs file would return for this (what `echo` reports).
    pub fn errno(&self) -> Errno {
        match self {
            Self::NoSuchBus { .. } | Self::NoSuchDriver { .. } | Self::NoSuchPath { .. } => {
                Errno::ENOENT
            }
            Self::NoSuchDevice { .. } | Self::NotBound { .. } | Self::NoMatch { .. } => {
                Errno::ENODEV
            }
            Self::WrongBus { .. } | Self::BadMatchType { .. } | Self::BadValue { .. } => {
                Errno::EINVAL
            }
            Self::AlreadyBound { .. } | Self::HasChildren { .. } => Errno::EBUSY,
            Self::Duplicate { .. } => Errno::EEXIST,
            Self::ProbeFailed { errno, .. } => *errno,
            Self::Deferred { .. } => Errno::EPROBE_DEFER,
        }
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchBus { bus } => write!(f, "no bus named {bus}"),
            Self::NoSuchDriver { bus, driver } => write!(f, "no driver {driver} on bus {bus}"),
            Self::NoSuchDevice { device } => write!(f, "no device named {device}"),
            Self::WrongBus {
                device,
                device_bus,
                bus,
            } => write!(f, "device {device} is on bus {device_bus}, not {bus}"),
            Self::AlreadyBound { device, driver } => {
                write!(f, "device {device} is already bound to {driver}")
            }
            Self::NotBound { device, driver } => {
                write!(f, "device {device} is not bound to {driver}")
            }
            Self::NoMatch { device, driver } => {
                write!(f, "driver {driver} does not match device {device}")
            }
            Self::ProbeFailed {
                device,
                driver,
                errno,
            } => write!(
                f,
                "{driver}: probe of {device} failed with error {}",
                errno.negative()
            ),
            Self::Deferred {
                device,
                driver,
                supplier,
            } => write!(
                f,
                "{driver}: probe of {device} deferred: waiting for supplier {supplier}"
            ),
            Self::Duplicate { what, name } => write!(f, "{what} {name} already exists"),
            Self::BadMatchType { bus, name } => write!(
                f,
                "{name}: match data is not of the type bus {bus} matches on"
            ),
            Self::HasChildren { device, child } => {
                write!(f, "device {device} still has child device {child}")
            }
            Self::NoSuchPath { path } => write!(f, "{path}: no such file or directory"),
            Self::BadValue { path, value } => write!(f, "{path}: invalid value {value:?}"),
        }?;
        write!(f, " (-{})", self.errno().name())
    }
}

impl core::error::Error for ModelError {}
