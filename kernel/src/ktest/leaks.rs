//! What the unbind/bind and fault-injection tests share: writing sysfs files, a leak baseline
//! taken once the system is quiet, waiting for the counters to come back, and a quiet console.

use crate::drivers::base::devm::LeakSnapshot;
use crate::fs::procfs;

/// `echo VALUE > PATH`, the error naming both.
pub(super) fn sys_write(path: &str, value: &str) -> Result<(), alloc::string::String> {
    procfs::write(path, value).map_err(|e| alloc::format!("echo {value} > {path}: {e}"))
}

/// The counters once they stop moving (up to a second): the baseline is not taken while
/// something started earlier (an IRQ thread stopped by `free_irq`, a thread's exit and its
/// reaped stack, the network stack) is still settling. Two readings 20 ms apart must agree.
pub(super) fn quiet_snapshot() -> LeakSnapshot {
    let mut last = LeakSnapshot::take();
    for _ in 0..50 {
        crate::kernel::time::msleep(20);
        let now = LeakSnapshot::take();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Waits (up to 2 s) until the counters equal `before`.
pub(super) fn settles_to(before: LeakSnapshot, what: &str) -> Result<(), alloc::string::String> {
    if super::wait_for(2000, || LeakSnapshot::take() == before) {
        return Ok(());
    }
    Err(alloc::format!(
        "{what}: counters did not return: before\n{before}after\n{}",
        LeakSnapshot::take()
    ))
}

/// Runs `f` with the console at warnings and worse: drivers log a line per bind and unbind,
/// thousands of serial lines in the loops.
pub(super) fn quietly<R>(f: impl FnOnce() -> R) -> R {
    let level = crate::kernel::printk::console_loglevel();
    crate::kernel::printk::set_console_loglevel(4);
    let result = f();
    crate::kernel::printk::set_console_loglevel(level);
    result
}

/// Runs the driver model's fault sweep over `device`'s probe by `driver` (console quiet):
/// every managed acquisition fails once in turn. It must find `points` of them, none absorbed
/// by the probe, and each failure must be logged as Linux logs a probe's `-ENOMEM`. The device
/// is left bound, as the sweep leaves it.
pub(super) fn sweep_fails_every_acquisition(
    bus: &str,
    device: &str,
    driver: &str,
    points: usize,
) -> Result<(), alloc::string::String> {
    let tracker = lull_devres::LeakTracker::new();
    let report = quietly(|| {
        crate::drivers::base::with_model(|m| m.sweep_probe_faults(bus, device, driver, &tracker))
    })
    .ok_or("no driver model")?
    .map_err(|e| alloc::format!("sweep: {e}"))?;
    if report.acquisition_points != points || !report.absorbed.is_empty() {
        return Err(alloc::format!(
            "acquisition points {} (expected {points}) ({report:?})",
            report.acquisition_points
        ));
    }
    let message = alloc::format!("{driver}: probe of {device} failed with error -12");
    if !report.failures.iter().all(|m| m.contains(&message)) {
        return Err(alloc::format!("messages {:?}", report.failures));
    }
    Ok(())
}
