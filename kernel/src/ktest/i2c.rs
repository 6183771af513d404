//! The ICH9 SMBus controller (q35's 00:1f.3) and QEMU's SMBus EEPROMs behind it: binding with
//! its clients, transfers completed by the interrupt, the errors, 1,000 unbind/bind rounds with
//! every leak counter back where it was, and its probe failed at each managed acquisition. On a
//! machine without the controller (microvm) each case is skipped.

use alloc::string::String;

use lull_driver_core::DeviceState;
use lull_i2c::{I2cError, SmbusData, SmbusOp};

use super::leaks::{quiet_snapshot, quietly, settles_to, sys_write};
use super::TestResult;
use crate::drivers::base;
use crate::drivers::i2c::{self as core_i2c, i801};
use crate::fs::procfs;

const DEVICE: &str = "0000:00:1f.3";

fn state() -> Option<DeviceState> {
    base::with_model(|m| m.device_state("pci", DEVICE).cloned()).flatten()
}

/// Skips unless the machine has the SMBus controller (q35 does, microvm has no PCI).
fn needs_smbus() -> TestResult {
    if state().is_none() {
        skip!("no ICH9 SMBus controller (PCI {DEVICE}) on this machine");
    }
    Ok(())
}

/// The count in `/proc/interrupts` for the line named `i801_smbus`.
fn smbus_interrupts() -> Option<u64> {
    let text = crate::kernel::irq::proc_interrupts();
    let line = text.lines().find(|l| l.ends_with("i801_smbus"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn client_states() -> alloc::vec::Vec<(String, Option<String>)> {
    base::with_model(|m| {
        m.sysfs_bus_devices("i2c")
            .unwrap_or_default()
            .into_iter()
            .map(|d| {
                let driver = m
                    .device_state("i2c", &d)
                    .and_then(|s| s.driver().map(String::from));
                (d, driver)
            })
            .collect()
    })
    .unwrap_or_default()
}

fn expect_eight_eeproms() -> TestResult {
    let clients = client_states();
    let want: alloc::vec::Vec<(String, Option<String>)> = (0x50..0x58u8)
        .map(|a| {
            (
                lull_i2c::client_name(0, a),
                Some(String::from(core_i2c::eeprom::DRIVER)),
            )
        })
        .collect();
    ensure!(clients == want, "i2c clients {clients:?}");
    Ok(())
}

pub fn smbus_binds_with_eight_eeprom_clients() -> TestResult {
    needs_smbus()?;
    ensure!(
        state()
            .and_then(|s| s.driver().map(String::from))
            .as_deref()
            == Some(i801::DRIVER),
        "{DEVICE} is {:?}",
        state()
    );
    let list = core_i2c::cmd_tools(&["i2cdetect", "-l"])?;
    ensure!(
        list.starts_with("i2c-0\tsmbus     \tSMBus I801 adapter at "),
        "i2cdetect -l: {list:?}"
    );
    expect_eight_eeproms()?;
    let ioports = procfs::read("/proc/ioports")?;
    ensure!(
        ioports.lines().any(|l| l.ends_with(": i801_smbus")),
        "no i801_smbus in /proc/ioports:\n{ioports}"
    );
    ensure!(
        smbus_interrupts().is_some(),
        "no i801_smbus line in /proc/interrupts"
    );
    let grid = core_i2c::cmd_tools(&["i2cdetect", "-y", "0"])?;
    ensure!(
        grid.contains("\n50: UU UU UU UU UU UU UU UU -- -- -- -- -- -- -- -- \n"),
        "i2cdetect -y 0:\n{grid}"
    );
    Ok(())
}

pub fn eeprom_write_read_back_completes_by_interrupt() -> TestResult {
    needs_smbus()?;
    let adapter = core_i2c::adapter(0).ok_or("no i2c-0")?;
    let before = smbus_interrupts().ok_or("no interrupt line")?;
    let old = adapter
        .xfer(0x51, SmbusOp::ReadByteData(0x42))
        .map_err(|e| alloc::format!("read: {e}"))?;
    let value = (old.value() as u8) ^ 0x5a;
    adapter
        .xfer(0x51, SmbusOp::WriteByteData(0x42, value))
        .map_err(|e| alloc::format!("write: {e}"))?;
    let back = adapter.xfer(0x51, SmbusOp::ReadByteData(0x42));
    ensure!(
        back == Ok(SmbusData::Byte(value)),
        "read back {back:?}, wrote {value:#x}"
    );
    adapter
        .xfer(0x51, SmbusOp::WriteWordData(0x80, 0xbeef))
        .map_err(|e| alloc::format!("word write: {e}"))?;
    let word = adapter.xfer(0x51, SmbusOp::ReadWordData(0x80));
    ensure!(word == Ok(SmbusData::Word(0xbeef)), "word read {word:?}");
    // The sysfs file reads the chip through the same adapter.
    let file = procfs::read("/sys/bus/i2c/devices/0-0051/eeprom")?;
    let row = alloc::format!("40: {:02x} {:02x} {value:02x} ", 0, 0);
    ensure!(
        file.lines().nth(5).is_some_and(|l| l.starts_with(&row)),
        "eeprom file row 0x40 is not {row:?}:\n{file}"
    );
    // Every transaction ended with an interrupt (5 above, 256 for the file).
    let after = smbus_interrupts().ok_or("no interrupt line")?;
    ensure!(
        after >= before + 5 + 256,
        "{} SMBus interrupts for 261 transactions",
        after - before
    );
    // Nothing at 0x20: the NACK is ENXIO; the bus works afterwards.
    let nack = adapter.xfer(0x20, SmbusOp::Quick { read: false });
    ensure!(
        nack == Err(I2cError::Nack) && I2cError::Nack.errno() == 6,
        "quick write to 0x20: {nack:?}"
    );
    ensure!(
        core_i2c::cmd_tools(&["i2cget", "-y", "0", "0x20"])
            == Err(String::from("Error: Read failed")),
        "i2cget to an empty address"
    );
    ensure!(
        core_i2c::cmd_tools(&["i2cget", "-y", "0", "0x51", "0x42"])
            == Err(String::from(
                "Error: Could not set address to 0x51: Device or resource busy"
            )),
        "i2cget to a bound address without -f"
    );
    let forced = core_i2c::cmd_tools(&["i2cget", "-f", "-y", "0", "0x51", "0x42"])?;
    ensure!(
        forced == alloc::format!("0x{value:02x}"),
        "i2cget -f: {forced}"
    );
    ensure!(
        core_i2c::cmd_tools(&["i2cget", "-y", "7", "0x51"]) == Err(lull_i2c::tools::no_such_bus(7)),
        "i2cget on a missing bus"
    );
    for (register, byte) in [(0x42, old.value() as u8), (0x80, 0), (0x81, 0)] {
        adapter
            .xfer(0x51, SmbusOp::WriteByteData(register, byte))
            .map_err(|e| alloc::format!("restore: {e}"))?;
    }
    Ok(())
}

pub fn smbus_unbind_bind_1000_times_leaks_nothing() -> TestResult {
    needs_smbus()?;
    let unbind = alloc::format!("/sys/bus/pci/drivers/{}/unbind", i801::DRIVER);
    let bind = alloc::format!("/sys/bus/pci/drivers/{}/bind", i801::DRIVER);
    let result = quietly(|| -> TestResult {
        // One warm-up round (tables reach their size), then the baseline, taken bound.
        sys_write(&unbind, DEVICE)?;
        ensure!(
            client_states().is_empty() && core_i2c::adapter(0).is_none(),
            "clients or adapter left after unbind: {:?}",
            client_states()
        );
        sys_write(&bind, DEVICE)?;
        let before = quiet_snapshot();
        for round in 0..1000 {
            sys_write(&unbind, DEVICE).map_err(|e| alloc::format!("round {round}: {e}"))?;
            sys_write(&bind, DEVICE).map_err(|e| alloc::format!("round {round}: {e}"))?;
        }
        settles_to(before, "1,000 unbind/bind rounds")?;
        Ok(())
    });
    result?;
    expect_eight_eeproms()?;
    let adapter = core_i2c::adapter(0).ok_or("no i2c-0 after the rounds")?;
    ensure!(
        adapter.xfer(0x50, SmbusOp::ReadByteData(0)).is_ok(),
        "the rebound adapter does not transfer"
    );
    Ok(())
}

pub fn smbus_probe_fails_cleanly_at_every_acquisition() -> TestResult {
    needs_smbus()?;
    let unbind = alloc::format!("/sys/bus/pci/drivers/{}/unbind", i801::DRIVER);
    let knob = alloc::format!("/sys/bus/pci/drivers/{}/devres_fail_nth", i801::DRIVER);
    // Made before the baseline: a string of the test's own alive at the comparison would
    // count as a leak (format!'s 56 bytes for this one).
    let bind = alloc::format!("/sys/bus/pci/drivers/{}/bind", i801::DRIVER);
    sys_write(&unbind, DEVICE)?;
    // The knob's rule list is heap of its own: armed and cleared once before the baseline.
    sys_write(&knob, "2")?;
    sys_write(&knob, "0")?;
    let before = quiet_snapshot();
    let tracker = lull_devres::LeakTracker::new();
    let report = quietly(|| {
        base::with_model(|m| m.sweep_probe_faults("pci", DEVICE, i801::DRIVER, &tracker))
    })
    .ok_or("no driver model")?
    .map_err(|e| alloc::format!("sweep: {e}"))?;
    // The port region and the IRQ (the two actions cannot fail).
    ensure!(
        report.acquisition_points == 2 && report.absorbed.is_empty(),
        "acquisition points {} ({report:?})",
        report.acquisition_points
    );
    ensure!(
        report
            .failures
            .iter()
            .all(|m| m.contains("i801_smbus: probe of 0000:00:1f.3 failed with error -12")),
        "messages {:?}",
        report.failures
    );
    // The report and the tracker are heap too: gone before the counters are compared.
    drop(report);
    drop(tracker);
    // The sweep leaves the device bound, with its clients: unbind and compare.
    expect_eight_eeproms()?;
    sys_write(&unbind, DEVICE)?;
    settles_to(before, "fault sweep, then unbind")?;
    // Through the knob: the 2nd acquisition (the IRQ) fails with a message and nothing bound,
    // then the device binds cleanly; the counters are back where they were after the failure
    // and after a clean bind and unbind.
    sys_write(&knob, "2")?;
    ensure!(
        sys_write(&bind, DEVICE).is_err(),
        "bind with the IRQ request failed succeeded"
    );
    ensure!(
        matches!(state(), Some(DeviceState::Failed { .. })) && client_states().is_empty(),
        "after the injected failure: {:?}, clients {:?}",
        state(),
        client_states()
    );
    ensure!(
        crate::drivers::i2c::adapter(0).is_none()
            && !crate::arch::io::claimed()
                .iter()
                .any(|&(_, _, o)| o == i801::DRIVER),
        "the failed probe left the adapter or the ports"
    );
    sys_write(&knob, "0")?;
    settles_to(before, "a bind failed through the knob")?;
    sys_write(&bind, DEVICE)?;
    expect_eight_eeproms()?;
    sys_write(&unbind, DEVICE)?;
    settles_to(
        before,
        "a bind failed through the knob, a clean bind, an unbind",
    )?;
    sys_write(&bind, DEVICE)?;
    expect_eight_eeproms()?;
    Ok(())
}
