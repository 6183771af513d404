//! gpiolib on real (emulated) hardware: the parallel port (q35's LPT1, `PNP0400:00`) as a GPIO
//! chip, one owner per line, the chip gone with its driver and back with it, 200 unbind/bind
//! rounds with every leak counter back where it was, and its probe failed at each managed
//! acquisition. On a machine without the port (microvm) each case is skipped.

use alloc::string::{String, ToString};

use lull_driver_core::DeviceState;
use lull_gpio::LineConfig;

use super::leaks::{quiet_snapshot, quietly, settles_to, sweep_fails_every_acquisition, sys_write};
use super::TestResult;
use crate::drivers::base;
use crate::drivers::gpio::GPIO;

const DEVICE: &str = "PNP0400:00";
const DRIVER: &str = "parport";

fn state() -> Option<DeviceState> {
    base::with_model(|m| m.device_state("acpi", DEVICE).cloned()).flatten()
}

/// Skips unless the machine has the port; binds it if an earlier test left it unbound.
fn needs_parport() -> TestResult {
    match state() {
        None => skip!("no parallel port ({DEVICE}) on this machine"),
        Some(DeviceState::Bound { .. }) => Ok(()),
        Some(_) => {
            sys_write(
                &alloc::format!("/sys/bus/acpi/drivers/{DRIVER}/bind"),
                DEVICE,
            )?;
            Ok(())
        }
    }
}

fn parport_chip() -> Option<String> {
    GPIO.chips()
        .into_iter()
        .find(|chip| chip.label == DRIVER)
        .map(|chip| chip.name())
}

pub fn parport_lines_have_one_owner_and_outlive_no_unbind() -> TestResult {
    needs_parport()?;
    let chip = parport_chip().ok_or("the bound port registered no chip")?;
    let d5 = GPIO
        .get(&chip, 5, "ktest-amp", LineConfig::output(true))
        .map_err(|e| alloc::format!("first claim: {e}"))?;
    ensure!(d5.get_value() == Ok(true), "D5 reads {:?}", d5.get_value());
    let second = GPIO.get_by_name("D5", "ktest-other", LineConfig::as_is());
    match second {
        Err(error) => ensure!(
            error.to_string().contains("\"ktest-amp\""),
            "the refusal does not name the holder: {error}"
        ),
        Ok(_) => return Err("a second claim of a held line succeeded".into()),
    }
    d5.set_value(false).map_err(|e| alloc::format!("{e}"))?;
    ensure!(d5.get_value() == Ok(false), "D5 reads {:?}", d5.get_value());
    // The driver goes while the line is held: the descriptor answers an error, never a call
    // into ports that are gone.
    let unbind = alloc::format!("/sys/bus/acpi/drivers/{DRIVER}/unbind");
    let bind = alloc::format!("/sys/bus/acpi/drivers/{DRIVER}/bind");
    sys_write(&unbind, DEVICE)?;
    ensure!(parport_chip().is_none(), "the chip outlived its driver");
    ensure!(
        d5.set_value(true).is_err() && d5.is_chip_gone(),
        "a descriptor of a removed chip still works"
    );
    drop(d5);
    sys_write(&bind, DEVICE)?;
    let chip = parport_chip().ok_or("no chip after rebind")?;
    let again = GPIO
        .get(&chip, 5, "ktest-amp", LineConfig::output(true))
        .map_err(|e| alloc::format!("claim after rebind: {e}"))?;
    ensure!(again.get_value() == Ok(true), "D5 after rebind");
    Ok(())
}

pub fn parport_unbind_bind_200_times_leaks_nothing() -> TestResult {
    needs_parport()?;
    let unbind = alloc::format!("/sys/bus/acpi/drivers/{DRIVER}/unbind");
    let bind = alloc::format!("/sys/bus/acpi/drivers/{DRIVER}/bind");
    quietly(|| -> TestResult {
        // One warm-up round (tables reach their size), then the baseline, taken bound.
        sys_write(&unbind, DEVICE)?;
        sys_write(&bind, DEVICE)?;
        let before = quiet_snapshot();
        for round in 0..200 {
            sys_write(&unbind, DEVICE).map_err(|e| alloc::format!("round {round}: {e}"))?;
            ensure!(
                parport_chip().is_none(),
                "round {round}: chip left after unbind"
            );
            sys_write(&bind, DEVICE).map_err(|e| alloc::format!("round {round}: {e}"))?;
        }
        settles_to(before, "200 unbind/bind rounds")?;
        Ok(())
    })?;
    let chip = parport_chip().ok_or("no chip after the rounds")?;
    let line = GPIO
        .get(&chip, 0, "ktest", LineConfig::output(true))
        .map_err(|e| alloc::format!("{e}"))?;
    ensure!(line.get_value() == Ok(true), "D0 after the rounds");
    Ok(())
}

pub fn parport_probe_fails_cleanly_at_every_acquisition() -> TestResult {
    needs_parport()?;
    let unbind = alloc::format!("/sys/bus/acpi/drivers/{DRIVER}/unbind");
    sys_write(&unbind, DEVICE)?;
    let before = quiet_snapshot();
    // The port region and the chip registration.
    sweep_fails_every_acquisition("acpi", DEVICE, DRIVER, 2)?;
    // The sweep leaves the device bound: unbind and compare.
    ensure!(parport_chip().is_some(), "no chip after the sweep");
    sys_write(&unbind, DEVICE)?;
    settles_to(before, "fault sweep, then unbind")?;
    sys_write(
        &alloc::format!("/sys/bus/acpi/drivers/{DRIVER}/bind"),
        DEVICE,
    )?;
    Ok(())
}

/// The waiter gpiomon sleeps on in the test below.
static MONITOR_WAIT: crate::kernel::sched::WaitQueue = crate::kernel::sched::WaitQueue::new();

/// Line events through the kernel's side of gpiolib: a chip with interrupts (the crate's fake,
/// registered in the kernel's registry) reports an edge from another thread 20 ms after
/// `gpiomon` went to sleep; the waker wakes it and it prints the edge, in libgpiod's format.
pub fn gpio_event_wakes_a_sleeping_gpiomon() -> TestResult {
    use lull_gpio::testing::FakeChip;
    let chip = FakeChip::new("ktest-irq", &["ktest-button"]);
    let handle = GPIO
        .add_chip(alloc::boxed::Box::new(chip.clone()), None)
        .map_err(|e| alloc::format!("add_chip: {e}"))?;
    chip.attach(handle.event_sink());
    let name = handle.name();
    let for_thread = chip.clone();
    super::spawn(
        "ktest-gpio-edge",
        lull_sched::SchedClass::NORMAL,
        lull_sched::CpuSet::ALL,
        move || {
            crate::kernel::time::msleep(20);
            for_thread.drive_input(0, true, crate::kernel::time::uptime_ns());
        },
    )?;
    let started = crate::kernel::time::uptime_ns();
    let mut printed = String::new();
    let deadline = started + 2_000_000_000;
    let result = crate::drivers::gpio::gpiomon(
        &["-n", "1", "-r", &name, "0"],
        &MONITOR_WAIT,
        || crate::kernel::time::uptime_ns() > deadline,
        |text| printed.push_str(text),
    );
    let waited = crate::kernel::time::uptime_ns() - started;
    let removed = GPIO.remove_chip(handle.number(), core::hint::spin_loop);
    result?;
    ensure!(
        removed.is_ok_and(|r| r.still_requested.is_empty()),
        "gpiomon left its line requested"
    );
    ensure!(
        printed.starts_with("event:  RISING EDGE offset: 0 timestamp: ["),
        "gpiomon printed {printed:?} after {waited} ns"
    );
    ensure!(
        (15_000_000..1_000_000_000).contains(&waited),
        "gpiomon returned after {waited} ns for an edge raised at 20 ms"
    );
    Ok(())
}
