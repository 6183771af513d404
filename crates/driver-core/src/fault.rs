//! Which probes the devres fault injector fails, and where.
//!
//! A [`FaultRule`] says "fail the Nth managed acquisition of probes of device X / driver Y /
//! any", optionally only a given number of times. Before each probe the registry arms the
//! device's [`FaultInjector`](lull_devres::FaultInjector) from the first rule that applies and
//! disarms it otherwise. The kernel maps its command-line parameter and its sysfs knobs onto
//! rules with [`FaultRule::parse`]:
//!
//! | text                 | meaning                                                      |
//! |----------------------|--------------------------------------------------------------|
//! | `N`                  | every probe fails its Nth acquisition                        |
//! | `DRIVER:N`           | probes by driver `DRIVER`                                    |
//! | `@DEVICE:N`          | probes of device `DEVICE` (`@0000:00:1f.3:2`)               |
//! | `DRIVER@DEVICE:N`    | probes of that device by that driver                          |
//! | any of them `,T`     | only the first `T` probes in which the failure fired          |
//!
//! The count is taken after the last `:` so PCI names, full of colons, need no quoting.

use alloc::string::{String, ToString};
use core::fmt;
use core::num::{NonZeroU32, NonZeroUsize};

/// Whose probes a [`FaultRule`] applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    /// Every probe.
    Any,
    /// Probes by this driver (of any device).
    Driver(String),
    /// Probes of this device (by any driver).
    Device(String),
    /// Probes of this device by this driver.
    DriverDevice {
        /// The driver's name.
        driver: String,
        /// The device's name.
        device: String,
    },
}

impl FaultTarget {
    /// Whether a probe of `device` by `driver` is covered.
    pub fn applies(&self, driver: &str, device: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Driver(d) => d == driver,
            Self::Device(d) => d == device,
            Self::DriverDevice {
                driver: want_driver,
                device: want_device,
            } => want_driver == driver && want_device == device,
        }
    }
}

/// "Fail the `nth` managed acquisition of probes covered by `target`", `times` times or forever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// Whose probes.
    pub target: FaultTarget,
    /// Which acquisition, counting from 1.
    pub nth: NonZeroUsize,
    /// How many more probes in which the failure actually fires; `None`: no limit. The rule is
    /// dropped when this reaches zero (a probe with fewer acquisitions than `nth` does not
    /// count).
    pub times: Option<NonZeroU32>,
}

impl FaultRule {
    /// A rule without a limit.
    pub fn new(target: FaultTarget, nth: NonZeroUsize) -> Self {
        Self {
            target,
            nth,
            times: None,
        }
    }

    /// Parses the syntax in the [module documentation](self) (`e1000e:3`, `@virtio0:2,1`).
    /// `None` for text that is not a rule, including a zero count.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (rule, times) = match text.rsplit_once(',') {
            Some((rule, times)) => (rule, Some(times.trim().parse::<NonZeroU32>().ok()?)),
            None => (text, None),
        };
        let (target, nth) = match rule.rsplit_once(':') {
            Some((target, nth)) => (Some(target), nth),
            None => (None, rule),
        };
        let nth = nth.trim().parse::<NonZeroUsize>().ok()?;
        let target = match target {
            None => FaultTarget::Any,
            Some(target) => match target.split_once('@') {
                Some(("", device)) if !device.is_empty() => FaultTarget::Device(device.to_string()),
                Some((driver, device)) if !driver.is_empty() && !device.is_empty() => {
                    FaultTarget::DriverDevice {
                        driver: driver.to_string(),
                        device: device.to_string(),
                    }
                }
                Some(_) => return None,
                None if target.is_empty() => return None,
                None => FaultTarget::Driver(target.to_string()),
            },
        };
        Some(Self { target, nth, times })
    }
}

impl fmt::Display for FaultRule {
    /// The same syntax [`parse`](Self::parse) reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            FaultTarget::Any => {}
            FaultTarget::Driver(driver) => write!(f, "{driver}:")?,
            FaultTarget::Device(device) => write!(f, "@{device}:")?,
            FaultTarget::DriverDevice { driver, device } => write!(f, "{driver}@{device}:")?,
        }
        write!(f, "{}", self.nth)?;
        if let Some(times) = self.times {
            write!(f, ",{times}")?;
        }
        Ok(())
    }
}
