//! The AC'97 card (q35 suites run QEMU's `AC97` with the `none` audio back-end): a short tone
//! plays to its end by interrupts, 100 unbind/bind rounds leave every leak counter where it
//! was and playback works again, and the probe fails cleanly at each managed acquisition. On a
//! machine without the card (microvm) each case is skipped.

use lull_driver_core::DeviceState;

use super::leaks::{quiet_snapshot, quietly, settles_to, sys_write};
use super::TestResult;
use crate::drivers::base;
use crate::drivers::pci::PciDevice;
use crate::drivers::sound::ac97;

fn device() -> Option<alloc::string::String> {
    PciDevice::all()
        .find(|d| d.vendor_id() == 0x8086 && d.device_id() == 0x2415)
        .map(|d| d.name())
}

fn needs_card() -> Result<alloc::string::String, super::Failure> {
    let Some(name) = device() else {
        skip!("no AC'97 controller (PCI 8086:2415) on this machine");
    };
    let state = base::with_model(|m| m.device_state("pci", &name).cloned()).flatten();
    if !matches!(state, Some(DeviceState::Bound { .. })) {
        sys_write(
            &alloc::format!("/sys/bus/pci/drivers/{}/bind", ac97::DRIVER),
            &name,
        )?;
    }
    Ok(name)
}

/// 0.2 s of silence: its periods complete by interrupt and the engine halts after the last.
fn play_briefly() -> Result<ac97::PlayStats, alloc::string::String> {
    let mut left = ac97::RATE as usize / 5 * 4;
    ac97::play(|period| {
        let n = period.len().min(left);
        left -= n;
        n
    })
}

pub fn ac97_plays_a_short_stream_by_interrupts() -> TestResult {
    needs_card()?;
    let stats = play_briefly()?;
    ensure!(
        stats.bytes == u64::from(ac97::RATE) / 5 * 4,
        "played {} bytes",
        stats.bytes
    );
    ensure!(stats.interrupts >= 1 && stats.underruns == 0, "{stats:?}");
    // 0.2 s of audio cannot end before 0.15 s of real time, nor take a second.
    ensure!(
        (150_000_000..1_000_000_000).contains(&stats.elapsed_ns),
        "0.2 s played in {} ns",
        stats.elapsed_ns
    );
    Ok(())
}

pub fn ac97_unbind_bind_100_times_leaks_nothing() -> TestResult {
    let name = needs_card()?;
    let unbind = alloc::format!("/sys/bus/pci/drivers/{}/unbind", ac97::DRIVER);
    let bind = alloc::format!("/sys/bus/pci/drivers/{}/bind", ac97::DRIVER);
    quietly(|| -> TestResult {
        sys_write(&unbind, &name)?;
        sys_write(&bind, &name)?;
        let before = quiet_snapshot();
        for round in 0..100 {
            sys_write(&unbind, &name).map_err(|e| alloc::format!("round {round}: {e}"))?;
            ensure!(
                play_briefly().is_err(),
                "round {round}: playback with the driver unbound"
            );
            sys_write(&bind, &name).map_err(|e| alloc::format!("round {round}: {e}"))?;
        }
        settles_to(before, "100 unbind/bind rounds")?;
        Ok(())
    })?;
    let stats = play_briefly()?;
    ensure!(stats.underruns == 0, "after the rounds: {stats:?}");
    Ok(())
}

pub fn ac97_probe_fails_cleanly_at_every_acquisition() -> TestResult {
    let name = needs_card()?;
    sys_write(
        &alloc::format!("/sys/bus/pci/drivers/{}/unbind", ac97::DRIVER),
        &name,
    )?;
    let before = quiet_snapshot();
    let tracker = lull_devres::LeakTracker::new();
    let report = quietly(|| {
        base::with_model(|m| m.sweep_probe_faults("pci", &name, ac97::DRIVER, &tracker))
    })
    .ok_or("no driver model")?
    .map_err(|e| alloc::format!("sweep: {e}"))?;
    // Enable, the two I/O BARs, the descriptor list, the periods, the IRQ.
    ensure!(
        report.acquisition_points == 6 && report.absorbed.is_empty(),
        "acquisition points {} ({report:?})",
        report.acquisition_points
    );
    drop(report);
    drop(tracker);
    sys_write(
        &alloc::format!("/sys/bus/pci/drivers/{}/unbind", ac97::DRIVER),
        &name,
    )?;
    settles_to(before, "fault sweep, then unbind")?;
    sys_write(
        &alloc::format!("/sys/bus/pci/drivers/{}/bind", ac97::DRIVER),
        &name,
    )?;
    Ok(())
}
