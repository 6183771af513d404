//! Device drivers, laid out as Linux's `drivers/`.
//!
//! Today: the clock hardware behind the time subsystem (`clocksource`), ACPI (namespace, power
//! button, GED) and the PCI bus scan (`pci`, `lspci`), the I2C/SMBus core with the i801 SMBus and EEPROM drivers (`i2c`). The driver model (`base`: buses, devices, drivers, devres), `pci`,
//! `virtio`, `gpio`, `i2c` and `sound/soc` are the next wave's homes, beside these.

pub mod acpi;
pub mod base;
pub mod clocksource;
pub mod gpio;
pub mod i2c;
pub mod pci;
pub mod rtc;
pub mod serial;
pub mod sound;
pub mod virtio;

use crate::kernel::sched::Completion;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Signalled once the boot-time probe has run (Linux's `wait_for_device_probe`).
static PROBED: Completion = Completion::new();
static PROBE_DONE: AtomicBool = AtomicBool::new(false);
/// The probing thread (it must not wait for itself).
static PROBE_THREAD: AtomicU64 = AtomicU64::new(u64::MAX);

/// Enumerates the buses and registers the drivers, in a kernel thread (`kprobe`) so that the
/// shell's prompt does not wait for it: enumerating ACPI's namespace and the PCI buses costs
/// milliseconds under TCG. Whatever needs the devices calls [`wait_for_device_probe`] first.
pub fn start_device_probe() {
    // Nice 19: the probe is background work and must not halve the console's share of a
    // slow CPU (under an instruction emulator, enumerating ACPI's namespace takes seconds).
    let spawned = crate::kernel::sched::kthread_spawn(
        "kprobe",
        lull_sched::SchedClass::Fair(lull_sched::Nice::MAX),
        lull_sched::CpuSet::ALL,
        || {
            if let Some(id) = crate::kernel::sched::current() {
                PROBE_THREAD.store(id, Ordering::Release);
            }
            probe_devices();
            PROBE_DONE.store(true, Ordering::Release);
            // One completion per waiter would be consumed; waiters re-signal (see below).
            PROBED.complete();
        },
    );
    if let Err(error) = spawned {
        crate::pr_err!("drivers: cannot start the probe thread ({error:?}); probing inline");
        probe_devices();
        PROBE_DONE.store(true, Ordering::Release);
        PROBED.complete();
    }
}

/// The boot-time device set-up: buses' devices, then drivers (each driver probes what matches).
fn probe_devices() {
    base::create_model();
    // Then the network stack: network drivers register their interfaces with it.
    crate::net::init();
    acpi::add_bus_devices();
    pci::add_bus_devices();
    acpi::ged::register();
    rtc::register();
    serial::register();
    gpio::init();
    sound::init();
    virtio::init();
    // The I2C client drivers, then the SMBus controller's (it probes 00:1f.3 at once and adds
    // the EEPROMs it finds as clients).
    i2c::init();
}

/// Sleeps until the boot-time probe has finished (at once afterwards, and from the probing
/// thread itself). Thread context.
pub fn wait_for_device_probe() {
    if PROBE_DONE.load(Ordering::Acquire)
        || crate::kernel::sched::current() == Some(PROBE_THREAD.load(Ordering::Acquire))
    {
        return;
    }
    PROBED.wait();
    // Pass the completion on to the next waiter.
    PROBED.complete();
}
