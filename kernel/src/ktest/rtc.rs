//! The CMOS clock as a driver of the model (`rtc_cmos` on `PNP0B00:00`): it reads the time
//! through the ports it claimed, gives them back at unbind, and 200 unbind/bind rounds and a
//! probe failed at each managed acquisition leave every leak counter where it was. On a machine
//! without the clock in its ACPI namespace each case is skipped.

use lull_driver_core::DeviceState;

use super::leaks::{quiet_snapshot, quietly, settles_to, sweep_fails_every_acquisition, sys_write};
use super::TestResult;
use crate::drivers::base;
use crate::drivers::rtc::{self, RtcError, DRIVER};

const DEVICE: &str = "PNP0B00:00";

fn state() -> Option<DeviceState> {
    base::with_model(|m| m.device_state("acpi", DEVICE).cloned()).flatten()
}

fn path(file: &str) -> alloc::string::String {
    alloc::format!("/sys/bus/acpi/drivers/{DRIVER}/{file}")
}

/// Skips unless the machine has the clock; binds it if an earlier test left it unbound.
fn needs_rtc() -> TestResult {
    match state() {
        None => skip!("no CMOS clock ({DEVICE}) on this machine"),
        Some(DeviceState::Bound { .. }) => Ok(()),
        Some(_) => Ok(sys_write(&path("bind"), DEVICE)?),
    }
}

fn ports_claimed() -> bool {
    crate::arch::io::claimed()
        .iter()
        .any(|&(base, _, owner)| base == 0x70 && owner == "rtc0")
}

pub fn rtc_cmos_reads_the_clock_and_gives_its_ports_back_at_unbind() -> TestResult {
    needs_rtc()?;
    let time = rtc::read_time().map_err(|e| alloc::format!("read through the driver: {e:?}"))?;
    let rtc_seconds = crate::kernel::time::unix_seconds(&time);
    let wall = crate::kernel::time::realtime_ns().div_euclid(1_000_000_000);
    // The wall clock was set from this clock at boot (or from kvm-clock, which QEMU keeps on
    // the host's UTC as the RTC): they agree to the second, give or take the read itself.
    ensure!(
        (rtc_seconds - wall).abs() <= 2,
        "the RTC says {time:?} ({rtc_seconds}), the wall clock {wall}"
    );
    ensure!(
        ports_claimed(),
        "ports 0x70.. not claimed as rtc0 while bound"
    );
    sys_write(&path("unbind"), DEVICE)?;
    ensure!(
        rtc::read_time() == Err(RtcError::NoDevice),
        "a read after unbind: {:?}",
        rtc::read_time()
    );
    ensure!(!ports_claimed(), "ports still claimed after unbind");
    ensure!(
        rtc::cmd_hwclock(&[]).contains("Cannot access the Hardware Clock"),
        "hwclock unbound: {}",
        rtc::cmd_hwclock(&[])
    );
    sys_write(&path("bind"), DEVICE)?;
    let again = rtc::read_time().map_err(|e| alloc::format!("read after rebind: {e:?}"))?;
    ensure!(
        crate::kernel::time::unix_seconds(&again) >= rtc_seconds,
        "the clock went back across the rebind: {time:?} -> {again:?}"
    );
    Ok(())
}

pub fn rtc_cmos_unbind_bind_and_failed_probes_leak_nothing() -> TestResult {
    needs_rtc()?;
    let (unbind, bind) = (path("unbind"), path("bind"));
    quietly(|| -> TestResult {
        // One warm-up round (tables reach their size), then the baseline, taken bound.
        sys_write(&unbind, DEVICE)?;
        sys_write(&bind, DEVICE)?;
        let before = quiet_snapshot();
        for round in 0..200 {
            sys_write(&unbind, DEVICE).map_err(|e| alloc::format!("round {round}: {e}"))?;
            sys_write(&bind, DEVICE).map_err(|e| alloc::format!("round {round}: {e}"))?;
        }
        ensure!(rtc::read_time().is_ok(), "no clock after the rounds");
        Ok(settles_to(before, "200 unbind/bind rounds")?)
    })?;
    sys_write(&unbind, DEVICE)?;
    let before = quiet_snapshot();
    // The port range (publishing the clock is an action, which cannot fail).
    sweep_fails_every_acquisition("acpi", DEVICE, DRIVER, 1)?;
    ensure!(rtc::read_time().is_ok(), "no clock after the sweep");
    sys_write(&unbind, DEVICE)?;
    settles_to(before, "fault sweep, then unbind")?;
    Ok(sys_write(&bind, DEVICE)?)
}
