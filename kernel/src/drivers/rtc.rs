//! `rtc_cmos`: the PC's CMOS real-time clock (`PNP0B00` on the `acpi` bus) as a driver of the
//! model, Linux's `drivers/rtc/rtc-cmos.c` in miniature.
//!
//! The boot still reads the clock once through the raw ports to set the wall clock (before any
//! driver exists, as Linux's `mach_get_cmos_time`); that path does not fit the model. What the
//! driver owns is the clock afterwards: its probe claims the `_CRS` I/O range through devres
//! (`/proc/ioports` shows `rtc0` while it is bound), checks that a clock answers, and publishes
//! it as `rtc0`; `hwclock` reads the time through the claimed ports. Unbinding revokes the
//! ports (a reader in flight finishes first) and releases the range; `hwclock` then says there
//! is no clock, as util-linux does.
//!
//! The RTC's alarm interrupt (IRQ 8) is not used: nothing here sets alarms.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;

use lull_devres::Revocable;
use lull_driver_core::{Driver, DriverDesc, Errno, PlatformMatchId, ProbeContext, ProbeError};

use crate::arch::io::IoPorts;
use crate::arch::rtc::{CmosRegisters, RtcTime};
use crate::drivers::acpi::Resource;
use crate::drivers::base::devm;
use crate::kernel::locking::SpinLock;
use crate::{pr_warn, printk};

pub const DRIVER: &str = "rtc_cmos";
/// The name of the claimed range and of the clock, as Linux's `rtc0`.
const NAME: &str = "rtc0";

/// The bound clock's ports (revoked at unbind). The lock also serialises the index/data pair:
/// a register is selected, then read, by one reader at a time.
static RTC: SpinLock<Option<Arc<Revocable<IoPorts>>>> = SpinLock::new(None);

struct Claimed<'a>(&'a IoPorts);

impl CmosRegisters for Claimed<'_> {
    fn read(&self, register: u8) -> u8 {
        self.0.write_u8(0, register | 0x80); // bit 7: keep NMIs masked while selecting
        self.0.read_u8(1)
    }
}

/// Why there is no time to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcError {
    /// No clock is bound to the driver.
    NoDevice,
    /// The clock is bound but gave no sane time.
    BadTime,
}

/// Reads `rtc0` through the driver's ports.
pub fn read_time() -> Result<RtcTime, RtcError> {
    let rtc = RTC.lock();
    let ports = rtc.as_ref().ok_or(RtcError::NoDevice)?;
    let ports = ports.try_access().ok_or(RtcError::NoDevice)?;
    crate::arch::rtc::read_via(&Claimed(&ports)).ok_or(RtcError::BadTime)
}

/// `hwclock [-r|--show]`: the RTC's time, in util-linux's ISO format (UTC).
pub fn cmd_hwclock(args: &[&str]) -> String {
    if let Some(other) = args.iter().find(|a| !matches!(**a, "-r" | "--show")) {
        return alloc::format!("hwclock: unsupported option '{other}' (only -r/--show)\n");
    }
    match read_time() {
        Ok(t) => alloc::format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00:00\n",
            t.year,
            t.month,
            t.day,
            t.hour,
            t.minute,
            t.second
        ),
        Err(RtcError::NoDevice) => {
            String::from("hwclock: Cannot access the Hardware Clock via any known method.\n")
        }
        Err(RtcError::BadTime) => String::from("hwclock: the RTC gave no valid time\n"),
    }
}

struct RtcCmosDriver;

impl Driver for RtcCmosDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let device = crate::drivers::acpi::bus_device(&name).ok_or(Errno::ENODEV)?;
        let Some((base, length)) = device.resources.iter().find_map(|resource| match resource {
            Resource::Io { base, length } if *length >= 2 => Some((*base, *length)),
            _ => None,
        }) else {
            pr_warn!("{DRIVER}: {}: no I/O range of 2 ports in _CRS", device.path);
            return Err(Errno::ENXIO.into());
        };
        let devres = ctx.devres();
        let ports = devm::request_region(devres, base, length, NAME)?;
        let answers = ports
            .try_access()
            .is_some_and(|p| crate::arch::rtc::present(&Claimed(&p)));
        if !answers {
            pr_warn!("{DRIVER}: {name}: no clock answers at {base:#x}");
            return Err(Errno::ENODEV.into());
        }
        {
            let mut rtc = RTC.lock();
            if rtc.is_some() {
                pr_warn!("{DRIVER}: {name}: rtc0 is taken; one CMOS clock is supported");
                return Err(Errno::EBUSY.into());
            }
            *rtc = Some(Arc::clone(&ports));
        }
        devres.add_action("rtc_cmos_unpublish", || *RTC.lock() = None);
        printk!("{DRIVER} {name}: registered as {NAME} (ports {base:#x}+{length:#x})");
        Ok(())
    }
}

/// Registers the `rtc_cmos` driver on the `acpi` bus.
pub fn register() {
    let driver = DriverDesc::new(
        "acpi",
        DRIVER,
        vec![PlatformMatchId::Acpi("PNP0B00")],
        RtcCmosDriver,
    );
    if let Err(error) = crate::drivers::base::register_driver(driver) {
        pr_warn!("{DRIVER}: cannot register the driver: {error}");
    }
}
