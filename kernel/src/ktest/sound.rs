//! The AC'97 card (q35 suites run QEMU's `AC97` with the `none` audio back-end): a short tone
//! plays to its end by interrupts, 100 unbind/bind rounds leave every leak counter where it
//! was and playback works again, and the probe fails cleanly at each managed acquisition. On a
//! machine without the card (microvm) each case is skipped.
//!
//! The HD Audio controller likewise (`ich9-intel-hda` with an `hda-duplex` codec): the codec
//! answers its vendor id through CORB/RIRB, a short playback and a short capture run by
//! interrupts, 100 unbind/bind rounds leak nothing, the probe fails cleanly at each acquisition.

use lull_driver_core::DeviceState;

use super::leaks::{quiet_snapshot, quietly, settles_to, sys_write};
use super::TestResult;
use crate::drivers::base;
use crate::drivers::pci::PciDevice;
use crate::drivers::sound::{ac97, hda};

/// The PCI function `vendor:device`, bound to `driver` (bound here if it is not); skips the
/// test, naming `what`, on a machine without it.
fn needs_pci(
    vendor: u16,
    device: u16,
    driver: &str,
    what: &str,
) -> Result<alloc::string::String, super::Failure> {
    let Some(name) = PciDevice::all()
        .find(|d| d.vendor_id() == vendor && d.device_id() == device)
        .map(|d| d.name())
    else {
        skip!(
            "no {what} (PCI {:04x}:{:04x}) on this machine",
            vendor,
            device
        );
    };
    let state = base::with_model(|m| m.device_state("pci", &name).cloned()).flatten();
    if !matches!(state, Some(DeviceState::Bound { .. })) {
        sys_write(&alloc::format!("/sys/bus/pci/drivers/{driver}/bind"), &name)?;
    }
    Ok(name)
}

fn needs_card() -> Result<alloc::string::String, super::Failure> {
    needs_pci(0x8086, 0x2415, ac97::DRIVER, "AC'97 controller")
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

/// Unbinds PCI device `name` from `driver`, fails its probe at each of its `points` managed
/// acquisitions in turn (`sweep_probe_faults`), unbinds it again and checks every leak counter
/// is back where it was; then binds it cleanly.
fn pci_probe_fails_cleanly_at_every_acquisition(
    name: &str,
    driver: &str,
    points: usize,
) -> TestResult {
    let unbind = alloc::format!("/sys/bus/pci/drivers/{driver}/unbind");
    sys_write(&unbind, name)?;
    let before = quiet_snapshot();
    let tracker = lull_devres::LeakTracker::new();
    let report =
        quietly(|| base::with_model(|m| m.sweep_probe_faults("pci", name, driver, &tracker)))
            .ok_or("no driver model")?
            .map_err(|e| alloc::format!("sweep: {e}"))?;
    ensure!(
        report.acquisition_points == points && report.absorbed.is_empty(),
        "acquisition points {} ({report:?})",
        report.acquisition_points
    );
    // The report and the tracker are heap too: gone before the counters are compared.
    drop(report);
    drop(tracker);
    sys_write(&unbind, name)?;
    settles_to(before, "fault sweep, then unbind")?;
    sys_write(&alloc::format!("/sys/bus/pci/drivers/{driver}/bind"), name)?;
    Ok(())
}

pub fn ac97_probe_fails_cleanly_at_every_acquisition() -> TestResult {
    let name = needs_card()?;
    // Enable, the two I/O BARs, the descriptor list, the periods, the IRQ.
    pci_probe_fails_cleanly_at_every_acquisition(&name, ac97::DRIVER, 6)
}

// The HD Audio controller (q35 suites run QEMU's `ich9-intel-hda` with an `hda-duplex` codec on
// the `none` audio back-end).

fn needs_hda() -> Result<alloc::string::String, super::Failure> {
    needs_pci(0x8086, 0x293e, hda::DRIVER, "HD Audio controller")
}

/// The first codec's vendor id (verb F00, parameter 0).
fn vendor_id() -> Result<u32, alloc::string::String> {
    let codec = *hda::codecs()?.first().ok_or("no codec on the link")?;
    hda::verb(codec, 0, 0xf00 << 8)
}

/// hda-duplex's converters: the DAC is node 2, the ADC node 4.
const HDA_DAC: u8 = 2;
const HDA_ADC: u8 = 4;

/// Points converter `nid` of the first codec at the stream (QEMU's codec moves the data only
/// for a converter on the stream's tag).
fn converter(nid: u8, tag: u8, format: u16) -> Result<(), alloc::string::String> {
    let codec = *hda::codecs()?.first().ok_or("no codec")?;
    hda::verb(codec, nid, 0x706 << 8 | u32::from(tag) << 4)?;
    hda::verb(codec, nid, 0x2 << 16 | u32::from(format))?;
    Ok(())
}

/// 0.2 s of 48 kHz stereo silence on an output stream.
fn hda_play_briefly() -> Result<hda::StreamStats, alloc::string::String> {
    hda_play(8, None)
}

/// 0.2 s of 48 kHz stereo silence in `periods` periods of 1,024 bytes; with `stall`
/// `(call, ns)` the `call`th refill first sleeps `ns` (a late stream thread).
fn hda_play(
    periods: usize,
    stall: Option<(u32, u64)>,
) -> Result<hda::StreamStats, alloc::string::String> {
    let mut calls = 0;
    let mut left = 48_000 / 5 * 4;
    let mut fill = |period: &mut [u8]| {
        calls += 1;
        if let Some((call, ns)) = stall {
            if calls == call {
                crate::kernel::time::sleep_ns(ns);
            }
        }
        let n = period.len().min(left);
        left -= n;
        n
    };
    let config = hda::StreamConfig {
        direction: hda::Direction::Playback,
        rate: 48_000,
        channels: 2,
        period_bytes: 1024,
        periods,
    };
    hda::run_stream(
        &config,
        &mut |tag, format| converter(HDA_DAC, tag, format),
        hda::StreamData::Play(&mut fill),
    )
}

pub fn hda_codec_answers_vendor_id() -> TestResult {
    needs_hda()?;
    let codecs = hda::codecs()?;
    ensure!(codecs == alloc::vec![0], "codecs {codecs:?}");
    let vendor = vendor_id()?;
    ensure!(vendor >> 16 == 0x1af4, "vendor id {vendor:#010x}");
    // Addresses out of range, or with no codec, are refused at once.
    ensure!(hda::verb(15, 0, 0xf00 << 8).is_err(), "codec 15 accepted");
    let started = crate::kernel::time::uptime_ns();
    ensure!(
        hda::verb(3, 0, 0xf00 << 8).is_err(),
        "absent codec 3 answered"
    );
    ensure!(
        crate::kernel::time::uptime_ns() - started < 50_000_000,
        "an absent codec took the verb timeout"
    );
    Ok(())
}

pub fn hda_format_word_is_the_spec_encoding() -> TestResult {
    ensure!(hda::format_word(48_000, 2)? == 0x0011, "48 kHz stereo");
    ensure!(hda::format_word(44_100, 2)? == 0x4011, "44.1 kHz stereo");
    ensure!(hda::format_word(96_000, 2)? == 0x0811, "96 kHz stereo");
    ensure!(hda::format_word(8_000, 1)? == 0x0510, "8 kHz mono");
    ensure!(hda::format_word(22_050, 2)? == 0x4111, "22.05 kHz stereo");
    ensure!(hda::format_word(192_000, 8)? == 0x1817, "192 kHz 8 ch");
    ensure!(hda::format_word(12_345, 2).is_err(), "12345 Hz accepted");
    ensure!(hda::format_word(48_000, 0).is_err(), "0 channels accepted");
    Ok(())
}

pub fn hda_plays_and_captures_by_interrupts() -> TestResult {
    needs_hda()?;
    let stats = hda_play_briefly()?;
    ensure!(
        stats.bytes == 48_000 / 5 * 4,
        "played {} bytes",
        stats.bytes
    );
    ensure!(stats.interrupts >= 1 && stats.underruns == 0, "{stats:?}");
    ensure!(
        (150_000_000..2_000_000_000).contains(&stats.elapsed_ns),
        "0.2 s played in {} ns",
        stats.elapsed_ns
    );
    // Capture: the codec's input converter on the stream's tag, 0.1 s.
    let mut got = 0u64;
    let mut sink = |data: &[u8]| got += data.len() as u64;
    let config = hda::StreamConfig {
        direction: hda::Direction::Capture,
        rate: 48_000,
        channels: 2,
        period_bytes: 1024,
        periods: 8,
    };
    let mut prepare = |tag: u8, format: u16| converter(HDA_ADC, tag, format);
    let stats = hda::run_stream(
        &config,
        &mut prepare,
        hda::StreamData::Capture {
            bytes: 48_000 / 10 * 4,
            sink: &mut sink,
        },
    )?;
    ensure!(
        got == 48_000 / 10 * 4 && stats.bytes == got,
        "captured {got} bytes: {stats:?}"
    );
    ensure!(stats.interrupts >= 1, "{stats:?}");
    Ok(())
}

/// A refill 100 ms late on a 21 ms ring: the periods the link played stale are counted as
/// underruns, and the stream still plays to its end.
pub fn hda_late_refill_counts_underruns() -> TestResult {
    needs_hda()?;
    // A 4,096-byte ring is 21.3 ms at 48 kHz stereo. A 100 ms stall loses 4 whole rings;
    // a 27 ms one loses one ring and a bit, which LPIB alone (a position in the ring) cannot
    // tell from 1.3 ms: the interrupt's count of finished periods must show it.
    for stall_ms in [100, 27] {
        let stats = hda_play(4, Some((10, stall_ms * 1_000_000)))?;
        ensure!(stats.bytes == 48_000 / 5 * 4, "{stats:?}");
        // Periods the link played stale: the stall's length less the ring that was queued.
        let least = (stall_ms * 192 - 4096).div_ceil(1024);
        ensure!(
            stats.underruns >= least,
            "a {stall_ms} ms stall on a 21 ms ring: {stats:?}, expected {least} or more"
        );
    }
    // And a stream with nothing late has none.
    let stats = hda_play_briefly()?;
    ensure!(stats.underruns == 0, "{stats:?}");
    Ok(())
}

pub fn hda_unbind_bind_100_times_leaks_nothing() -> TestResult {
    let name = needs_hda()?;
    let unbind = alloc::format!("/sys/bus/pci/drivers/{}/unbind", hda::DRIVER);
    let bind = alloc::format!("/sys/bus/pci/drivers/{}/bind", hda::DRIVER);
    quietly(|| -> TestResult {
        sys_write(&unbind, &name)?;
        sys_write(&bind, &name)?;
        let before = quiet_snapshot();
        for round in 0..100 {
            sys_write(&unbind, &name).map_err(|e| alloc::format!("round {round}: {e}"))?;
            ensure!(
                vendor_id().is_err(),
                "round {round}: a verb with the driver unbound"
            );
            sys_write(&bind, &name).map_err(|e| alloc::format!("round {round}: {e}"))?;
            let vendor = vendor_id().map_err(|e| alloc::format!("round {round}: {e}"))?;
            ensure!(vendor >> 16 == 0x1af4, "round {round}: vendor {vendor:#x}");
        }
        settles_to(before, "100 unbind/bind rounds")?;
        Ok(())
    })?;
    let stats = hda_play_briefly()?;
    ensure!(stats.underruns == 0, "after the rounds: {stats:?}");
    Ok(())
}

pub fn hda_probe_fails_cleanly_at_every_acquisition() -> TestResult {
    let name = needs_hda()?;
    // Enable, BAR 0, the rings, the IRQ vector, the IRQ.
    pci_probe_fails_cleanly_at_every_acquisition(&name, hda::DRIVER, 5)?;
    vendor_id()?;
    Ok(())
}
