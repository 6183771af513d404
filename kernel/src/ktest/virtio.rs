//! virtio on a real device (QEMU's virtio-rng behind a virtio-mmio transport on microvm, behind
//! virtio-pci on q35; the suites without one skip): bytes arrive by interrupt, unbind/bind through `/sys`, 1,000
//! rebinds and a fault sweep over the probes leave every counter as it was, and a device that
//! lies in its used ring is failed with a message while the kernel goes on.

use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use lull_driver_core::DeviceState;

use super::leaks::{quiet_snapshot, sys_write};
use super::{wait_for, TestResult};
use crate::drivers::base::{self, devm::LeakSnapshot};
use crate::drivers::virtio::rng::{self, VirtioRng, CORRUPT_NEXT_USED};
use crate::fs::procfs;

const UNBIND: &str = "/sys/bus/virtio/drivers/virtio_rng/unbind";
const BIND: &str = "/sys/bus/virtio/drivers/virtio_rng/bind";

/// The bound rng (bound again if an earlier test left it unbound), or a skip when the machine
/// has none.
fn bound_rng() -> Result<Arc<VirtioRng>, super::Failure> {
    if let Some(rng) = rng::current() {
        return Ok(rng);
    }
    let candidate = (0..8)
        .map(|i| alloc::format!("virtio{i}"))
        .find(|name| crate::drivers::virtio::device(name).is_some_and(|d| d.id().device == 4));
    match candidate {
        Some(name) => {
            let _ = sys_write(BIND, &name);
            rng::current().ok_or_else(|| {
                alloc::format!(
                    "{name} is a virtio-rng device but does not bind: {:?}",
                    state(&name)
                )
                .into()
            })
        }
        None => skip!("no virtio-rng device (QEMU: -device virtio-rng-device on microvm)"),
    }
}

fn state(name: &str) -> Option<DeviceState> {
    base::with_model(|m| m.device_state("virtio", name).cloned()).flatten()
}

/// The count `/proc/interrupts` shows for the line named `name`, summed over the CPU columns
/// (an MSI-X vector may be delivered to any CPU).
fn interrupts_of(name: &str) -> Option<u64> {
    let text = procfs::read("/proc/interrupts").ok()?;
    let line = text
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))?;
    let counts = line
        .split_whitespace()
        .skip(1)
        .map_while(|w| w.parse::<u64>().ok());
    Some(counts.sum())
}

fn settles_to(before: LeakSnapshot) -> Result<(), String> {
    super::leaks::settles_to(before, "virtio").map_err(|error| {
        alloc::format!(
            "{error}(live rng states {}, threads {})",
            rng::live(),
            crate::kernel::sched::threads().len()
        )
    })
}

/// Rebinds `name` if a test left it unbound or failed.
fn rebind(name: &str) -> Result<(), String> {
    if matches!(state(name), Some(DeviceState::Bound { .. })) {
        sys_write(UNBIND, name)?;
    }
    sys_write(BIND, name)
}

pub fn virtio_rng_bytes_arrive_by_interrupt() -> TestResult {
    let rng = bound_rng()?;
    let name = String::from(rng.name());
    let irqs_before = interrupts_of(&name).ok_or("no virtio line in /proc/interrupts")?;
    let completions_before = rng.completions();
    let first = rng::read(64)?;
    let second = rng::read(64)?;
    ensure!(first.len() == 64 && second.len() == 64, "short reads");
    ensure!(first.iter().any(|&b| b != 0), "64 zero bytes");
    ensure!(first != second, "two reads returned the same bytes");
    ensure!(
        rng.completions() >= completions_before + 2,
        "completions {} -> {}",
        completions_before,
        rng.completions()
    );
    let irqs_after = interrupts_of(&name).unwrap_or(0);
    ensure!(
        irqs_after >= irqs_before + 2,
        "{name} interrupts {irqs_before} -> {irqs_after}"
    );
    ensure!(
        crate::kernel::random::entropy_avail() > 0,
        "entropy_avail is 0 after feeding the pool"
    );
    if rng.device().parent_bus() == "pci" {
        // MSI-X: the queue's vector is a line of the function's MSI-X chip.
        let chip = alloc::format!("PCI-MSIX-{}", rng.device().parent());
        let text = procfs::read("/proc/interrupts").map_err(|e| alloc::format!("{e}"))?;
        ensure!(
            text.lines()
                .any(|l| l.contains(&chip) && l.split_whitespace().last() == Some(name.as_str())),
            "no {chip} line named {name} in /proc/interrupts:\n{text}"
        );
    }
    let large = rng::read(1000)?;
    ensure!(
        large.len() == 1000,
        "1000-byte read returned {}",
        large.len()
    );
    Ok(())
}

pub fn virtio_rng_unbind_then_bind_through_sysfs() -> TestResult {
    let rng = bound_rng()?;
    let name = String::from(rng.name());
    drop(rng);
    sys_write(UNBIND, &name)?;
    ensure!(
        matches!(state(&name), Some(DeviceState::Unbound)),
        "after unbind: {:?}",
        state(&name)
    );
    let error = rng::read(16).err().unwrap_or_default();
    ensure!(
        error.contains("no virtio-rng device is bound"),
        "read while unbound: {error:?}"
    );
    sys_write(BIND, &name)?;
    ensure!(
        matches!(state(&name), Some(DeviceState::Bound { .. })),
        "after bind: {:?}",
        state(&name)
    );
    let bytes = rng::read(32)?;
    ensure!(bytes.iter().any(|&b| b != 0), "32 zero bytes after rebind");
    Ok(())
}

pub fn virtio_rng_bind_unbind_1000_times_leaks_nothing() -> TestResult {
    let rng = bound_rng()?;
    let name = String::from(rng.name());
    drop(rng);
    // One warm-up cycle (lazily grown tables reach their size), then the baseline.
    sys_write(UNBIND, &name)?;
    sys_write(BIND, &name)?;
    sys_write(UNBIND, &name)?;
    let before = quiet_snapshot();
    let threads = crate::kernel::sched::threads().len();
    let live = rng::live();
    for round in 0..1000 {
        sys_write(BIND, &name).map_err(|e| alloc::format!("round {round}: {e}"))?;
        sys_write(UNBIND, &name).map_err(|e| alloc::format!("round {round}: {e}"))?;
    }
    settles_to(before)
        .map_err(|e| alloc::format!("{e} (before: live {live}, threads {threads})"))?;
    sys_write(BIND, &name)?;
    let bytes = rng::read(32)?;
    ensure!(
        bytes.iter().any(|&b| b != 0),
        "32 zero bytes after 1000 rebinds"
    );
    Ok(())
}

pub fn virtio_probe_fault_sweeps_leave_nothing() -> TestResult {
    let rng = bound_rng()?;
    let name = String::from(rng.name());
    let transport = String::from(rng.device().parent());
    let transport_bus = String::from(rng.device().parent_bus());
    let irq_count = rng.device().irq_count();
    let (transport_driver, transport_points) = if transport_bus == "pci" {
        // Enable, the common/notify/ISR ranges, the device-specific range when the function
        // has one, the vectors.
        let device_cfg = crate::drivers::pci::PciDevice::all()
            .find(|d| d.name() == transport)
            .is_some_and(|d| {
                d.virtio_capabilities()
                    .iter()
                    .any(|c| c.cfg_type == lull_pci::VirtioCfgType::Device && c.length > 0)
            });
        (
            crate::drivers::virtio::pci::DRIVER,
            5 + usize::from(device_cfg),
        )
    } else {
        // The registers.
        ("virtio-mmio", 1)
    };
    drop(rng);
    sys_write(UNBIND, &name)?;
    let tracker = lull_devres::LeakTracker::new();
    let sweep = || {
        base::with_model(|m| m.sweep_probe_faults("virtio", &name, rng::DRIVER, &tracker))
            .ok_or_else(|| String::from("no driver model"))?
            .map_err(|e| alloc::format!("virtio_rng sweep: {e:?}"))
    };
    // A warm-up sweep (the registry's fault-rule and resource tables reach their size), then
    // the measured one.
    sweep()?;
    sys_write(UNBIND, &name)?;
    let before = quiet_snapshot();
    let report = sweep()?;
    // The rings, the buffer, the interrupt(s).
    ensure!(
        report.acquisition_points == 2 + irq_count,
        "virtio_rng acquisition points {} ({report:?})",
        report.acquisition_points
    );
    ensure!(
        report
            .failures
            .iter()
            .all(|m| m.contains(&alloc::format!("probe of {name} failed with error -12"))),
        "messages {:?}",
        report.failures
    );
    drop(report); // its messages are heap the "before" did not have
    sys_write(UNBIND, &name)?;
    settles_to(before).map_err(|e| alloc::format!("virtio_rng sweep: {e}"))?;
    // The transport: unbinding it unbinds (defers) the rng; its sweep's final bind brings both
    // back.
    sys_write(BIND, &name)?;
    let transport_unbind =
        alloc::format!("/sys/bus/{transport_bus}/drivers/{transport_driver}/unbind");
    sys_write(&transport_unbind, &transport)?;
    ensure!(
        matches!(state(&name), Some(DeviceState::Deferred { .. })),
        "rng after the transport's unbind: {:?}",
        state(&name)
    );
    let transport_sweep = || {
        base::with_model(|m| {
            m.sweep_probe_faults(&transport_bus, &transport, transport_driver, &tracker)
        })
        .ok_or_else(|| String::from("no driver model"))?
        .map_err(|e| alloc::format!("{transport_driver} sweep: {e:?}"))
    };
    // Warm-up, as above.
    transport_sweep()?;
    sys_write(&transport_unbind, &transport)?;
    let before = quiet_snapshot();
    let report = transport_sweep()?;
    ensure!(
        report.acquisition_points == transport_points,
        "{transport_driver} acquisition points {} ({report:?})",
        report.acquisition_points
    );
    drop(report);
    // Both unbound again: everything the sweep and the rebinds took is back.
    sys_write(&transport_unbind, &transport)?;
    settles_to(before).map_err(|e| alloc::format!("{transport_driver} sweep: {e}"))?;
    sys_write(
        &alloc::format!("/sys/bus/{transport_bus}/drivers/{transport_driver}/bind"),
        &transport,
    )?;
    ensure!(
        wait_for(1000, || matches!(
            state(&name),
            Some(DeviceState::Bound { .. })
        )),
        "rng not rebound after its transport: {:?}",
        state(&name)
    );
    let bytes = rng::read(32)?;
    ensure!(bytes.iter().any(|&b| b != 0), "zero bytes after the sweeps");
    Ok(())
}

pub fn virtio_rng_malformed_used_ring_fails_the_device() -> TestResult {
    let rng = bound_rng()?;
    let name = String::from(rng.name());
    drop(rng);
    for (kind, expected) in [(1u8, "claims 257 bytes written"), (2, "used id 30583")] {
        rng::read(8)?; // a healthy round first
        CORRUPT_NEXT_USED.store(kind, Ordering::Release);
        let error = match rng::read(16) {
            Ok(bytes) => {
                CORRUPT_NEXT_USED.store(0, Ordering::Release);
                return Err(
                    alloc::format!("read after corruption {kind} gave {bytes:02x?}").into(),
                );
            }
            Err(error) => error,
        };
        ensure!(
            error.contains("device failed") && error.contains(expected),
            "corruption {kind}: error {error:?}"
        );
        let rng = rng::current().ok_or("rng vanished")?;
        ensure!(
            rng.device().status() & lull_virtqueue::STATUS_FAILED != 0,
            "FAILED not set in the status: {:#x}",
            rng.device().status()
        );
        // Still failed, and says so, on the next read: the queue is not touched again.
        let again = rng::read(8).err().unwrap_or_default();
        ensure!(again.contains("device failed"), "second read: {again:?}");
        drop(rng);
        let mut log = alloc::vec::Vec::new();
        crate::kernel::printk::read_log(&mut log);
        ensure!(
            String::from_utf8_lossy(&log).contains(expected),
            "no kernel-log message for the failure"
        );
        // Unbind and bind reset the device; it works again.
        rebind(&name)?;
        let bytes = rng::read(32)?;
        ensure!(bytes.iter().any(|&b| b != 0), "zero bytes after the reset");
    }
    Ok(())
}

pub fn virtio_mmio_device_parameter_parses_as_linux() -> TestResult {
    use crate::drivers::virtio::mmio::parse_device;
    for (text, expected) in [
        ("512@0xfeb00e00:12", Some((512, 0xfeb0_0e00, 12))),
        ("4K@0xd0000000:5:3", Some((4096, 0xd000_0000, 5))),
        ("0x200@4272950784:47", Some((512, 0xfeb0_0e00, 47))),
        ("512@0xfeb00e00", None),
        ("@0xfeb00e00:5", None),
        ("512@0xfeb00e00:5:1:2", None),
        ("512@zz:5", None),
    ] {
        let got = parse_device(text);
        ensure!(got == expected, "{text}: {got:?}, expected {expected:?}");
    }
    Ok(())
}
