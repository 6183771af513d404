//! The driver model with real resources: a platform driver whose probe takes one of each
//! managed kind (heap, ports, DMA pages, a threaded IRQ, an action, a group) is bound and
//! unbound through the `/sys` files, 1,000 times, and has each of its acquisitions failed in
//! turn; every counter the leak checks watch must come back exactly.

use alloc::string::String;
use alloc::vec::Vec;

use lull_driver_core::{
    DeviceDesc, DeviceState, Driver, DriverDesc, PlatformDeviceId, PlatformMatchId, ProbeContext,
    ProbeError, RemoveContext,
};

use super::leaks::{quiet_snapshot, settles_to, sys_write};
use super::TestResult;
use crate::drivers::base::{self, devm, devm::LeakSnapshot};
use crate::fs::procfs;
use crate::kernel::irq::{IrqFlags, IrqReturn};
use crate::kernel::locking::IrqSafeLock;

const DEVICE: &str = "ktest-devres.0";
const DRIVER: &str = "ktest-devres";
/// COM2's ports: QEMU's q35 and microvm have no second UART, and nothing else claims them.
const PORTS: u16 = 0x2f8;

/// Release order, as the actions saw it.
static RELEASED: IrqSafeLock<Vec<&'static str>> = IrqSafeLock::new(Vec::new());

fn no_interrupt(_: u32, _: crate::kernel::irq::DevId) -> IrqReturn {
    IrqReturn::Handled
}

/// An IOAPIC input no one has requested (PCI INTx lines 16–23 are free until a driver takes
/// them).
fn free_gsi() -> Option<u32> {
    (16..24)
        .rev()
        .find(|&gsi| crate::kernel::irq::irq_affinity(gsi).is_none())
}

struct TestDriver {
    gsi: u32,
}

impl Driver for TestDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let devres = ctx.devres();
        let memory = devm::kzalloc(devres, 4096)?;
        devres.add_action("ktest: first action", || RELEASED.lock().push("first"));
        let ports = devm::request_region(devres, PORTS, 8, "ktest-devres")?;
        let dma = devm::alloc_coherent(devres, 8192)?;
        let group = devres.open_group();
        devres.add_action("ktest: grouped action", || RELEASED.lock().push("grouped"));
        devres
            .close_group(group)
            .map_err(|_| lull_driver_core::Errno::EINVAL)?;
        devm::request_threaded_irq(
            devres,
            self.gsi,
            Some(no_interrupt),
            None,
            IrqFlags::NONE,
            "ktest-devres",
            crate::kernel::irq::DevId::NONE,
        )?;
        devres.add_action("ktest: last action", || RELEASED.lock().push("last"));
        // The handles work while bound.
        let ok = memory.try_access().is_some_and(|m| m.len() == 4096)
            && ports.try_access().is_some_and(|p| p.base() == PORTS)
            && dma.try_access().is_some_and(|d| {
                d.write_u32(8188, 0x5a5a_a5a5);
                d.read_u32(8188) == 0x5a5a_a5a5
            });
        if !ok {
            return Err(lull_driver_core::Errno::EIO.into());
        }
        ctx.set_drvdata(alloc::boxed::Box::new((memory, ports, dma)));
        Ok(())
    }

    fn remove(&self, ctx: &mut RemoveContext<'_>) {
        let _ = ctx;
        RELEASED.lock().push("remove");
    }
}

fn state() -> Option<DeviceState> {
    base::with_model(|m| m.device_state("platform", DEVICE).cloned()).flatten()
}

/// Registers the device and the driver once (the first test to run does it).
fn setup() -> Result<(), String> {
    if state().is_some() {
        return Ok(());
    }
    let gsi = free_gsi().ok_or("no free IOAPIC input for the test driver")?;
    let id = PlatformDeviceId {
        name: String::from(DRIVER),
        ..PlatformDeviceId::default()
    };
    base::add_device(DeviceDesc::new("platform", DEVICE, id)).map_err(|e| alloc::format!("{e}"))?;
    base::register_driver(DriverDesc::new(
        "platform",
        DRIVER,
        alloc::vec![PlatformMatchId::Name(DRIVER)],
        TestDriver { gsi },
    ))
    .map_err(|e| alloc::format!("{e}"))?;
    Ok(())
}

pub fn devres_releases_real_resources_in_reverse() -> TestResult {
    setup()?;
    ensure!(
        matches!(state(), Some(DeviceState::Bound { .. })),
        "device not bound after registration: {:?}",
        state()
    );
    let link = procfs::read(&alloc::format!("/sys/bus/platform/devices/{DEVICE}/driver"))?;
    ensure!(
        link.trim() == alloc::format!("/sys/bus/platform/drivers/{DRIVER}"),
        "driver link reads {link:?}"
    );
    let listing = procfs::read(&alloc::format!("/sys/bus/platform/devices/{DEVICE}/devres"))?;
    let kinds: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    ensure!(
        kinds == ["alloc", "action", "ioport", "dma", "action", "irq", "action"],
        "devres listing:\n{listing}"
    );
    ensure!(
        crate::arch::io::claimed()
            .iter()
            .any(|&(b, _, owner)| b == PORTS && owner == "ktest-devres"),
        "ports not claimed in /proc/ioports"
    );
    RELEASED.lock().clear();
    sys_write(
        &alloc::format!("/sys/bus/platform/drivers/{DRIVER}/unbind"),
        DEVICE,
    )?;
    let order = RELEASED.lock().clone();
    ensure!(
        order == ["remove", "last", "grouped", "first"],
        "release order {order:?}"
    );
    ensure!(
        !crate::arch::io::claimed()
            .iter()
            .any(|&(b, _, _)| b == PORTS),
        "ports still claimed after unbind"
    );
    sys_write(
        &alloc::format!("/sys/bus/platform/drivers/{DRIVER}/bind"),
        DEVICE,
    )?;
    ensure!(
        matches!(state(), Some(DeviceState::Bound { .. })),
        "rebind: {:?}",
        state()
    );
    Ok(())
}

pub fn bind_unbind_1000_times_leaks_nothing() -> TestResult {
    setup()?;
    let unbind = alloc::format!("/sys/bus/platform/drivers/{DRIVER}/unbind");
    let bind = alloc::format!("/sys/bus/platform/drivers/{DRIVER}/bind");
    if matches!(state(), Some(DeviceState::Bound { .. })) {
        sys_write(&unbind, DEVICE)?;
    }
    // One warm-up cycle (lazily grown tables reach their size), then the baseline.
    sys_write(&bind, DEVICE)?;
    sys_write(&unbind, DEVICE)?;
    RELEASED.lock().clear();
    let before = quiet_snapshot();
    for round in 0..1000 {
        sys_write(&bind, DEVICE).map_err(|e| alloc::format!("round {round}: {e}"))?;
        sys_write(&unbind, DEVICE).map_err(|e| alloc::format!("round {round}: {e}"))?;
        RELEASED.lock().clear();
    }
    settles_to(before, "1,000 bind/unbind rounds")?;
    sys_write(&bind, DEVICE)?;
    Ok(())
}

pub fn every_probe_acquisition_failure_unwinds() -> TestResult {
    setup()?;
    let unbind = alloc::format!("/sys/bus/platform/drivers/{DRIVER}/unbind");
    if matches!(state(), Some(DeviceState::Bound { .. })) {
        sys_write(&unbind, DEVICE)?;
    }
    RELEASED.lock().clear();
    // The rule the knob below adds is a heap allocation of its own: arm and clear it once
    // first, so the baseline has the rule list at its size.
    let knob = alloc::format!("/sys/bus/platform/drivers/{DRIVER}/devres_fail_nth");
    sys_write(&knob, "3")?;
    sys_write(&knob, "0")?;
    let before = quiet_snapshot();
    let tracker = lull_devres::LeakTracker::new();
    let report = base::with_model(|m| m.sweep_probe_faults("platform", DEVICE, DRIVER, &tracker))
        .ok_or("no driver model")?
        .map_err(|e| alloc::format!("sweep: {e:?}"))?;
    // kzalloc, ports, DMA, IRQ: four managed acquisitions (actions and groups do not fail).
    ensure!(
        report.acquisition_points == 4,
        "acquisition points {} ({report:?})",
        report.acquisition_points
    );
    ensure!(
        report
            .failures
            .iter()
            .all(|m| m.contains("probe of ktest-devres.0 failed with error -12")),
        "messages {:?}",
        report.failures
    );
    drop((report, tracker));
    // The sweep leaves the device bound; unbind and compare with the counters before.
    sys_write(&unbind, DEVICE)?;
    RELEASED.lock().clear();
    settles_to(before, "fault sweep")?;
    // The same through the command-line/sysfs knob: the 3rd acquisition fails, then a clean
    // bind and unbind. The first cycle may size tables that stay (first use, not a leak); the
    // third must leave every counter exactly where the second left it. The counters are read
    // right after each cycle, without sleeping in between: while this thread sleeps, other
    // kernel activity (timers, the clocksource watchdog) moves the heap by tens of bytes, which
    // is not this driver's doing.
    let bind = alloc::format!("/sys/bus/platform/drivers/{DRIVER}/bind");
    let mut baseline = None;
    for cycle in 0..3 {
        sys_write(&knob, "3")?;
        ensure!(
            sys_write(&bind, DEVICE).is_err(),
            "bind with the 3rd acquisition failed succeeded"
        );
        ensure!(
            matches!(state(), Some(DeviceState::Failed { .. })),
            "state after injected failure: {:?}",
            state()
        );
        sys_write(&knob, "0")?;
        sys_write(&bind, DEVICE)?;
        ensure!(
            matches!(state(), Some(DeviceState::Bound { .. })),
            "clean bind after the knob was cleared: {:?}",
            state()
        );
        sys_write(&unbind, DEVICE)?;
        RELEASED.lock().clear();
        let now = LeakSnapshot::take();
        match (cycle, baseline) {
            (0, _) => {}
            (_, None) => baseline = Some(now),
            (_, Some(first)) => ensure!(
                now == first,
                "cycle {cycle} of devres_fail_nth=3, clean bind, unbind: counters did not \
                 return: before\n{first}after\n{now}"
            ),
        }
    }
    sys_write(&bind, DEVICE)?;
    Ok(())
}
