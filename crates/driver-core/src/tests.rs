//! Host tests with fake buses, devices and drivers whose resources report to a `LeakTracker`
//! and log their release, so order and leaks are both visible.

use std::boxed::Box;
use std::format;
use std::string::{String, ToString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::vec;
use std::vec::Vec;

use lull_devres::{LeakTracker, ManagedResource, ResourceInfo, ResourceKind};
use proptest::prelude::*;

use crate::*;

type Log = Arc<Mutex<Vec<String>>>;

fn take(log: &Log) -> Vec<String> {
    core::mem::take(&mut *log.lock().unwrap())
}

/// A fake resource: release logs `release LABEL`.
struct FakeRes {
    kind: ResourceKind,
    label: String,
    log: Log,
}

impl ManagedResource for FakeRes {
    fn describe(&self) -> ResourceInfo {
        ResourceInfo::new(self.kind, self.label.clone())
    }

    fn release(self: Box<Self>) {
        self.log
            .lock()
            .unwrap()
            .push(format!("release {}", self.label));
    }
}

#[derive(Clone, Copy, Debug)]
enum Step {
    /// A managed acquisition of a tracked fake resource.
    Res(ResourceKind, &'static str),
    /// `devm_add_action`, which can fail (it allocates) and so counts as an acquisition.
    Action(&'static str),
    /// A group holding one managed allocation.
    Group(&'static str),
    /// Acquires a tracked resource that never reaches the list: the leak a sweep must find.
    Leak,
}

#[derive(Clone)]
struct Env {
    tracker: LeakTracker,
    log: Log,
}

impl Env {
    fn new() -> Self {
        Self {
            tracker: LeakTracker::new(),
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

struct TestDriver {
    env: Env,
    name: &'static str,
    plan: Vec<Step>,
    supplier: Option<&'static str>,
    fail_with: Option<Errno>,
    probes: Arc<AtomicUsize>,
}

impl TestDriver {
    fn new(env: &Env, name: &'static str, plan: Vec<Step>) -> Self {
        Self {
            env: env.clone(),
            name,
            plan,
            supplier: None,
            fail_with: None,
            probes: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn supplier(mut self, supplier: &'static str) -> Self {
        self.supplier = Some(supplier);
        self
    }

    fn failing(mut self, errno: Errno) -> Self {
        self.fail_with = Some(errno);
        self
    }
}

/// What a probe keeps for `remove` to check.
struct DrvData {
    device: String,
}

impl Driver for TestDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        self.probes.fetch_add(1, Ordering::Relaxed);
        if let Some(supplier) = self.supplier {
            ctx.require_supplier(supplier)?;
        }
        let device = ctx.device_name().to_string();
        let driver = self.name;
        for step in &self.plan {
            let label = |what: &str| format!("{what}@{device}");
            match *step {
                Step::Res(kind, what) => {
                    let resource = FakeRes {
                        kind,
                        label: label(what),
                        log: self.env.log.clone(),
                    };
                    let tracker = self.env.tracker.clone();
                    ctx.devres()
                        .acquire(move || Ok::<_, Errno>(tracker.track(resource)))?;
                }
                Step::Action(what) => {
                    if ctx.devres().should_fail() {
                        return Err(Errno::ENOMEM.into());
                    }
                    self.env.tracker.acquired(ResourceKind::Action);
                    let (log, tracker, text) =
                        (self.env.log.clone(), self.env.tracker.clone(), label(what));
                    ctx.devres().add_action(what, move || {
                        log.lock().unwrap().push(format!("release {text}"));
                        tracker.released(ResourceKind::Action);
                    });
                }
                Step::Group(what) => {
                    let group = ctx.devres().open_group();
                    let resource = FakeRes {
                        kind: ResourceKind::Alloc,
                        label: label(what),
                        log: self.env.log.clone(),
                    };
                    let tracker = self.env.tracker.clone();
                    ctx.devres()
                        .acquire(move || Ok::<_, Errno>(tracker.track(resource)))?;
                    ctx.devres().close_group(group).map_err(|_| Errno::EINVAL)?;
                }
                Step::Leak => {
                    self.env.tracker.acquired(ResourceKind::Irq);
                    if ctx.devres().should_fail() {
                        return Err(Errno::ENOMEM.into());
                    }
                    let tracker = self.env.tracker.clone();
                    ctx.devres()
                        .add_action("leaky", move || tracker.released(ResourceKind::Irq));
                }
            }
        }
        if let Some(errno) = self.fail_with {
            return Err(errno.into());
        }
        ctx.set_drvdata(Box::new(DrvData {
            device: device.clone(),
        }));
        self.env
            .log
            .lock()
            .unwrap()
            .push(format!("probe {driver} {device}"));
        Ok(())
    }

    fn remove(&self, ctx: &mut RemoveContext<'_>) {
        let device = ctx.device_name().to_string();
        let kept = ctx.drvdata::<DrvData>().map(|d| d.device.clone());
        assert_eq!(
            kept.as_deref(),
            Some(device.as_str()),
            "drvdata reaches remove"
        );
        // Resources are still held while remove runs.
        let held = ctx.devres().len();
        self.env
            .log
            .lock()
            .unwrap()
            .push(format!("remove {} {device} holding {held}", self.name));
    }
}

fn pci(vendor: u16, device: u16, class: u32) -> PciDeviceId {
    PciDeviceId {
        vendor,
        device,
        subvendor: 0x1af4,
        subdevice: 0x1100,
        class,
    }
}

fn model() -> DeviceModel {
    let mut model = DeviceModel::new();
    model.add_bus("pci", PciMatch).unwrap();
    model.add_bus("virtio", VirtioMatch).unwrap();
    model.add_bus("platform", PlatformMatch).unwrap();
    model.add_bus("i2c", I2cMatch).unwrap();
    model
}

const SMBUS: &str = "0000:00:1f.3";

fn six_steps() -> Vec<Step> {
    vec![
        Step::Res(ResourceKind::IoPort, "ports"),
        Step::Res(ResourceKind::Mmio, "mmio"),
        Step::Res(ResourceKind::Irq, "irq"),
        Step::Res(ResourceKind::Dma, "dma"),
        Step::Action("action"),
        Step::Group("group"),
    ]
}

fn add_smbus(model: &mut DeviceModel) -> DeviceState {
    model
        .add_device(DeviceDesc::new("pci", SMBUS, pci(0x8086, 0x2930, 0x0c0500)))
        .unwrap()
}

#[test]
fn first_registered_matching_driver_binds_with_its_matched_entry() {
    let env = Env::new();
    let mut m = model();
    let seen = Arc::new(Mutex::new(Vec::new()));
    struct Recorder(Arc<Mutex<Vec<(String, usize, usize)>>>, &'static str);
    impl Driver for Recorder {
        fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
            let id = ctx.matched_id::<PciMatchId>().unwrap();
            assert!(ctx.match_data::<PciDeviceId>().is_some());
            assert!(ctx.match_data::<VirtioDeviceId>().is_none());
            self.0
                .lock()
                .unwrap()
                .push((self.1.to_string(), ctx.match_index(), id.driver_data));
            Ok(())
        }
    }
    // A virtio driver registered first must not be tried on a PCI device.
    m.register_driver(DriverDesc::new(
        "virtio",
        "virtio_any",
        vec![VirtioMatchId::device(VIRTIO_DEV_ANY_ID)],
        TestDriver::new(&env, "virtio_any", vec![]),
    ))
    .unwrap();
    m.register_driver(DriverDesc::new(
        "pci",
        "i801_smbus",
        vec![
            PciMatchId::device(0x8086, 0x1234).data(1),
            PciMatchId::device(0x8086, 0x2930).data(2),
            PciMatchId::class(0x0c0500, 0xffffff).data(3),
        ],
        Recorder(seen.clone(), "i801_smbus"),
    ))
    .unwrap();
    m.register_driver(DriverDesc::new(
        "pci",
        "generic_smbus",
        vec![PciMatchId::class(0x0c0500, 0xffff00)],
        Recorder(seen.clone(), "generic_smbus"),
    ))
    .unwrap();
    let state = add_smbus(&mut m);
    assert_eq!(
        state,
        DeviceState::Bound {
            driver: "i801_smbus".into(),
            match_index: 1
        }
    );
    assert_eq!(*seen.lock().unwrap(), [("i801_smbus".to_string(), 1, 2)]);

    // The second driver gets the device once the first lets go of it.
    m.unbind("pci", SMBUS, "i801_smbus").unwrap();
    m.bind("pci", SMBUS, "generic_smbus").unwrap();
    assert_eq!(
        m.device_state("pci", SMBUS).unwrap().driver(),
        Some("generic_smbus")
    );
}

#[test]
fn failed_probe_releases_lifo_and_the_next_matching_driver_gets_its_try() {
    let env = Env::new();
    let mut m = model();
    m.register_driver(DriverDesc::new(
        "pci",
        "broken",
        vec![PciMatchId::device(0x8086, 0x2930)],
        TestDriver::new(&env, "broken", six_steps()).failing(Errno::EIO),
    ))
    .unwrap();
    let state = add_smbus(&mut m);
    assert_eq!(
        state,
        DeviceState::Failed {
            driver: "broken".into(),
            errno: Errno::EIO
        }
    );
    let d = "@0000:00:1f.3";
    let want: Vec<String> = ["group", "action", "dma", "irq", "mmio", "ports"]
        .iter()
        .map(|what| format!("release {what}{d}"))
        .collect();
    assert_eq!(take(&env.log), want);
    assert_eq!(env.tracker.live_total(), 0);
    assert!(m.device_devres("pci", SMBUS).unwrap().is_empty());
    assert!(m
        .take_log()
        .contains(&"broken: probe of 0000:00:1f.3 failed with error -5".to_string()));

    // A second matching driver registered later binds; an explicit bind of the broken one
    // reports its probe's error.
    m.register_driver(DriverDesc::new(
        "pci",
        "fallback",
        vec![PciMatchId::class(0x0c0500, 0xffffff)],
        TestDriver::new(&env, "fallback", vec![Step::Res(ResourceKind::Irq, "irq")]),
    ))
    .unwrap();
    assert_eq!(
        m.device_state("pci", SMBUS).unwrap().driver(),
        Some("fallback")
    );
    m.unbind("pci", SMBUS, "fallback").unwrap();
    let error = m.bind("pci", SMBUS, "broken").unwrap_err();
    assert_eq!(error.errno(), Errno::EIO);
    assert_eq!(
        error.to_string(),
        "broken: probe of 0000:00:1f.3 failed with error -5 (-EIO)"
    );
    assert_eq!(env.tracker.live_total(), 0);

    // At add time, a failing first driver does not stop the search either.
    m.remove_device("pci", SMBUS).unwrap();
    assert_eq!(
        add_smbus(&mut m).driver(),
        Some("fallback"),
        "broken failed first, fallback bound"
    );
}

#[test]
fn remove_runs_before_release_and_release_is_lifo() {
    let env = Env::new();
    let mut m = model();
    m.register_driver(DriverDesc::new(
        "pci",
        "i801_smbus",
        vec![PciMatchId::device(0x8086, 0x2930)],
        TestDriver::new(&env, "i801_smbus", six_steps()),
    ))
    .unwrap();
    add_smbus(&mut m);
    assert_eq!(env.tracker.live_total(), 6);
    take(&env.log);
    m.unbind("pci", SMBUS, "i801_smbus").unwrap();
    let log = take(&env.log);
    assert_eq!(log[0], "remove i801_smbus 0000:00:1f.3 holding 6");
    assert_eq!(log[1], "release group@0000:00:1f.3");
    assert_eq!(log[6], "release ports@0000:00:1f.3");
    assert_eq!(env.tracker.live_total(), 0);
    assert_eq!(m.device_state("pci", SMBUS), Some(&DeviceState::Unbound));
}

#[test]
fn deferred_probe_is_resolved_when_the_supplier_binds() {
    let env = Env::new();
    let mut m = model();
    // The sensor's driver needs the I2C controller (a platform device) bound first.
    m.register_driver(DriverDesc::new(
        "i2c",
        "lm75",
        vec!["lm75"],
        TestDriver::new(&env, "lm75", vec![Step::Res(ResourceKind::Irq, "alert")])
            .supplier("i2c_designware.0"),
    ))
    .unwrap();
    m.add_device(DeviceDesc::new(
        "platform",
        "i2c_designware.0",
        PlatformDeviceId {
            name: "i2c_designware".into(),
            hid: Some("INT33C3".into()),
            ..Default::default()
        },
    ))
    .unwrap();
    let state = m
        .add_device(
            DeviceDesc::new(
                "i2c",
                "0-0048",
                I2cDeviceId {
                    name: "lm75".into(),
                },
            )
            .with_parent("i2c_designware.0"),
        )
        .unwrap();
    assert_eq!(
        state,
        DeviceState::Deferred {
            driver: "lm75".into(),
            supplier: "i2c_designware.0".into()
        }
    );
    assert_eq!(
        m.deferred(),
        [DeferredDevice {
            device: "0-0048".into(),
            bus: "i2c".into(),
            driver: "lm75".into(),
            supplier: "i2c_designware.0".into()
        }]
    );
    assert_eq!(
        m.devices_deferred_text(),
        "0-0048\tlm75: waiting for supplier i2c_designware.0\n"
    );
    assert_eq!(
        env.tracker.live_total(),
        0,
        "a deferred probe holds nothing"
    );

    // Binding an unrelated driver retries the list but cannot resolve it.
    m.add_device(DeviceDesc::new(
        "virtio",
        "virtio0",
        VirtioDeviceId {
            device: 4,
            vendor: 0,
        },
    ))
    .unwrap();
    m.register_driver(DriverDesc::new(
        "virtio",
        "virtio_rng",
        vec![VirtioMatchId::device(4)],
        TestDriver::new(&env, "virtio_rng", vec![]),
    ))
    .unwrap();
    assert_eq!(m.deferred().len(), 1);

    // The supplier's driver arrives: it binds, and the consumer follows.
    m.register_driver(DriverDesc::new(
        "platform",
        "i2c_designware",
        vec![PlatformMatchId::Acpi("INT33C3")],
        TestDriver::new(
            &env,
            "i2c_designware",
            vec![Step::Res(ResourceKind::Mmio, "regs")],
        ),
    ))
    .unwrap();
    assert!(m.deferred().is_empty());
    assert_eq!(
        m.device_state("i2c", "0-0048").unwrap().driver(),
        Some("lm75")
    );
    assert_eq!(m.devices_deferred_text(), "");
}

#[test]
fn unbinding_a_supplier_unbinds_its_consumer_first_and_rebinding_restores_it() {
    let env = Env::new();
    let mut m = model();
    m.add_device(DeviceDesc::new(
        "platform",
        "i2c_designware.0",
        PlatformDeviceId {
            name: "i2c_designware".into(),
            ..Default::default()
        },
    ))
    .unwrap();
    m.add_device(DeviceDesc::new(
        "i2c",
        "0-0048",
        I2cDeviceId {
            name: "lm75".into(),
        },
    ))
    .unwrap();
    m.register_driver(DriverDesc::new(
        "platform",
        "i2c_designware",
        vec![PlatformMatchId::Name("i2c_designware")],
        TestDriver::new(
            &env,
            "i2c_designware",
            vec![Step::Res(ResourceKind::Mmio, "regs")],
        ),
    ))
    .unwrap();
    m.register_driver(DriverDesc::new(
        "i2c",
        "lm75",
        vec!["lm75"],
        TestDriver::new(&env, "lm75", vec![Step::Res(ResourceKind::Irq, "alert")])
            .supplier("i2c_designware.0"),
    ))
    .unwrap();
    assert_eq!(
        m.device_state("i2c", "0-0048").unwrap().driver(),
        Some("lm75")
    );
    take(&env.log);

    m.unbind("platform", "i2c_designware.0", "i2c_designware")
        .unwrap();
    assert_eq!(
        take(&env.log),
        [
            "remove lm75 0-0048 holding 1",
            "release alert@0-0048",
            "remove i2c_designware i2c_designware.0 holding 1",
            "release regs@i2c_designware.0",
        ]
    );
    assert_eq!(
        m.device_state("i2c", "0-0048"),
        Some(&DeviceState::Deferred {
            driver: "lm75".into(),
            supplier: "i2c_designware.0".into()
        })
    );
    assert_eq!(env.tracker.live_total(), 0);

    m.bind("platform", "i2c_designware.0", "i2c_designware")
        .unwrap();
    assert_eq!(
        m.device_state("i2c", "0-0048").unwrap().driver(),
        Some("lm75")
    );

    // Hot-unplugging the supplier takes the consumer's binding with it.
    m.remove_device("platform", "i2c_designware.0").unwrap();
    assert!(!m.device_state("i2c", "0-0048").unwrap().is_bound());
    assert_eq!(env.tracker.live_total(), 0);
}

#[test]
fn bind_unbind_rebind_a_thousand_times_leaks_nothing() {
    let env = Env::new();
    let mut m = model();
    let driver = TestDriver::new(&env, "i801_smbus", six_steps());
    let probes = driver.probes.clone();
    m.register_driver(DriverDesc::new(
        "pci",
        "i801_smbus",
        vec![PciMatchId::device(0x8086, 0x2930)],
        driver,
    ))
    .unwrap();
    // A supplier/consumer pair rebinds along with it.
    m.add_device(DeviceDesc::new(
        "i2c",
        "0-0050",
        I2cDeviceId {
            name: "24c02".into(),
        },
    ))
    .unwrap();
    m.register_driver(DriverDesc::new(
        "i2c",
        "at24",
        vec!["24c02"],
        TestDriver::new(&env, "at24", vec![Step::Res(ResourceKind::Alloc, "eeprom")])
            .supplier(SMBUS),
    ))
    .unwrap();
    add_smbus(&mut m);
    let (devices, drivers) = (m.device_count(), m.driver_count());
    assert_eq!(env.tracker.live_total(), 7);
    for round in 0..1_000 {
        m.unbind("pci", SMBUS, "i801_smbus").unwrap();
        assert_eq!(env.tracker.live_total(), 0, "round {round}");
        assert!(env.tracker.over_released().is_empty());
        assert!(m.device_devres("pci", SMBUS).unwrap().is_empty());
        assert!(m.device_devres("i2c", "0-0050").unwrap().is_empty());
        m.bind("pci", SMBUS, "i801_smbus").unwrap();
        assert_eq!(
            m.device_state("i2c", "0-0050").unwrap().driver(),
            Some("at24")
        );
        assert_eq!(env.tracker.live_total(), 7);
        take(&env.log);
        m.take_log();
    }
    m.unbind("pci", SMBUS, "i801_smbus").unwrap();
    for kind in [
        ResourceKind::IoPort,
        ResourceKind::Mmio,
        ResourceKind::Irq,
        ResourceKind::Dma,
        ResourceKind::Action,
        ResourceKind::Alloc,
    ] {
        assert_eq!(env.tracker.live(kind), 0, "{kind}");
    }
    assert_eq!((m.device_count(), m.driver_count()), (devices, drivers));
    assert_eq!(probes.load(Ordering::Relaxed), 1_001);
}

#[test]
fn bad_names_give_linux_errors_with_messages() {
    let env = Env::new();
    let mut m = model();
    m.register_driver(DriverDesc::new(
        "pci",
        "i801_smbus",
        vec![PciMatchId::device(0x8086, 0x2930)],
        TestDriver::new(&env, "i801_smbus", vec![]),
    ))
    .unwrap();
    m.register_driver(DriverDesc::new(
        "pci",
        "e1000e",
        vec![PciMatchId::device(0x8086, 0x10d3)],
        TestDriver::new(&env, "e1000e", vec![]),
    ))
    .unwrap();
    add_smbus(&mut m);
    m.add_device(DeviceDesc::new(
        "virtio",
        "virtio0",
        VirtioDeviceId {
            device: 1,
            vendor: 0,
        },
    ))
    .unwrap();

    let cases: Vec<(ModelError, Errno, &str)> = vec![
        (
            m.bind("pci", "0000:00:02.0", "i801_smbus").unwrap_err(),
            Errno::ENODEV,
            "no device named 0000:00:02.0 (-ENODEV)",
        ),
        (
            m.bind("pci", SMBUS, "i801_smbus").unwrap_err(),
            Errno::EBUSY,
            "device 0000:00:1f.3 is already bound to i801_smbus (-EBUSY)",
        ),
        (
            m.bind("pci", "virtio0", "i801_smbus").unwrap_err(),
            Errno::EINVAL,
            "device virtio0 is on bus virtio, not pci (-EINVAL)",
        ),
        (
            m.unbind("pci", SMBUS, "e1000e").unwrap_err(),
            Errno::ENODEV,
            "device 0000:00:1f.3 is not bound to e1000e (-ENODEV)",
        ),
        (
            m.bind("pci", SMBUS, "nosuch").unwrap_err(),
            Errno::ENOENT,
            "no driver nosuch on bus pci (-ENOENT)",
        ),
        (
            m.bind("usb", SMBUS, "i801_smbus").unwrap_err(),
            Errno::ENOENT,
            "no bus named usb (-ENOENT)",
        ),
        (
            m.add_bus("pci", PciMatch).unwrap_err(),
            Errno::EEXIST,
            "bus pci already exists (-EEXIST)",
        ),
        (
            m.add_device(DeviceDesc::new(
                "pci",
                "0000:00:03.0",
                I2cDeviceId { name: "x".into() },
            ))
            .unwrap_err(),
            Errno::EINVAL,
            "0000:00:03.0: match data is not of the type bus pci matches on (-EINVAL)",
        ),
        (
            m.register_driver(DriverDesc::new(
                "virtio",
                "wrong_table",
                vec![PciMatchId::device(1, 2)],
                TestDriver::new(&env, "wrong_table", vec![]),
            ))
            .unwrap_err(),
            Errno::EINVAL,
            "wrong_table: match data is not of the type bus virtio matches on (-EINVAL)",
        ),
    ];
    for (error, errno, message) in cases {
        assert_eq!(
            (error.errno(), error.to_string()),
            (errno, message.to_string())
        );
    }
    m.unbind("pci", SMBUS, "i801_smbus").unwrap();
    let error = m.bind("pci", SMBUS, "e1000e").unwrap_err();
    assert_eq!(error.errno(), Errno::ENODEV);
    assert_eq!(
        error.to_string(),
        "driver e1000e does not match device 0000:00:1f.3 (-ENODEV)"
    );
    let error = m
        .add_device(DeviceDesc::new("pci", SMBUS, pci(0, 0, 0)))
        .unwrap_err();
    assert_eq!(error.errno(), Errno::EEXIST);
}

#[test]
fn fault_sweep_over_six_managed_acquisitions() {
    let env = Env::new();
    let mut m = model();
    m.add_device(DeviceDesc::new("pci", SMBUS, pci(0x8086, 0x2930, 0x0c0500)))
        .unwrap();
    // Registered while the device is already present: it binds at once, so unbind first.
    m.register_driver(DriverDesc::new(
        "pci",
        "i801_smbus",
        vec![PciMatchId::device(0x8086, 0x2930)],
        TestDriver::new(&env, "i801_smbus", six_steps()),
    ))
    .unwrap();
    m.unbind("pci", SMBUS, "i801_smbus").unwrap();
    let report = m
        .sweep_probe_faults("pci", SMBUS, "i801_smbus", &env.tracker)
        .unwrap();
    assert_eq!(report.acquisition_points, 6);
    assert!(report.absorbed.is_empty());
    assert_eq!(
        report.failures,
        vec!["i801_smbus: probe of 0000:00:1f.3 failed with error -12".to_string(); 6]
    );
    // Each failure released exactly what came before it, newest first: failing point 3
    // released mmio then ports.
    let log = take(&env.log);
    let third = log
        .windows(2)
        .position(|w| w == ["release mmio@0000:00:1f.3", "release ports@0000:00:1f.3"])
        .is_some();
    assert!(third);
    assert_eq!(
        m.device_state("pci", SMBUS).unwrap().driver(),
        Some("i801_smbus")
    );
    assert_eq!(env.tracker.live_total(), 6);
    assert!(m.fault_rules().is_empty(), "the sweep removes its rule");
    m.unbind("pci", SMBUS, "i801_smbus").unwrap();
    assert_eq!(env.tracker.live_total(), 0);
}

#[test]
fn fault_sweep_finds_a_resource_that_bypasses_devres() {
    let env = Env::new();
    let mut m = model();
    add_smbus(&mut m);
    m.register_driver(DriverDesc::new(
        "pci",
        "leaky",
        vec![PciMatchId::device(0x8086, 0x2930)],
        TestDriver::new(
            &env,
            "leaky",
            vec![Step::Res(ResourceKind::IoPort, "ports"), Step::Leak],
        ),
    ))
    .unwrap();
    m.unbind("pci", SMBUS, "leaky").unwrap();
    let error = m
        .sweep_probe_faults("pci", SMBUS, "leaky", &env.tracker)
        .unwrap_err();
    assert_eq!(
        error,
        FaultSweepError::Leaked {
            fail_at: 2,
            live: vec![(ResourceKind::Irq, 1)],
            over_released: vec![],
        }
    );
    assert!(error.to_string().contains("acquisition 2 failed"));
}

#[test]
fn fault_sweep_refuses_a_probe_that_fails_on_its_own() {
    let env = Env::new();
    let mut m = model();
    m.register_driver(DriverDesc::new(
        "pci",
        "broken",
        vec![PciMatchId::device(0x8086, 0x2930)],
        TestDriver::new(&env, "broken", vec![Step::Res(ResourceKind::Irq, "irq")])
            .failing(Errno::ENXIO),
    ))
    .unwrap();
    add_smbus(&mut m);
    let error = m
        .sweep_probe_faults("pci", SMBUS, "broken", &env.tracker)
        .unwrap_err();
    assert!(matches!(
        error,
        FaultSweepError::Model(ModelError::ProbeFailed {
            errno: Errno::ENXIO,
            ..
        })
    ));
}

#[test]
fn fault_rules_by_driver_device_and_count() {
    let env = Env::new();
    let mut m = model();
    m.register_driver(DriverDesc::new(
        "pci",
        "i801_smbus",
        vec![PciMatchId::device(0x8086, 0x2930)],
        TestDriver::new(&env, "i801_smbus", six_steps()),
    ))
    .unwrap();
    // `devres.fail=i801_smbus:4,1`: the first probe fails at its 4th acquisition (the DMA
    // buffer), and the rule is then spent.
    m.add_fault_rule(FaultRule::parse("i801_smbus:4,1").unwrap());
    assert_eq!(
        add_smbus(&mut m),
        DeviceState::Failed {
            driver: "i801_smbus".into(),
            errno: Errno::ENOMEM
        }
    );
    assert_eq!(
        take(&env.log),
        [
            "release irq@0000:00:1f.3",
            "release mmio@0000:00:1f.3",
            "release ports@0000:00:1f.3"
        ]
    );
    assert!(m.fault_rules().is_empty());
    m.bind("pci", SMBUS, "i801_smbus").unwrap();

    // The device's sysfs knob; a rule for another device does not apply.
    m.unbind("pci", SMBUS, "i801_smbus").unwrap();
    m.sysfs_write("/sys/kernel/debug/devres_fail", "@0000:00:02.0:1\n")
        .unwrap();
    m.sysfs_write("/sys/bus/pci/devices/0000:00:1f.3/devres_fail_nth", "6\n")
        .unwrap();
    assert_eq!(
        m.sysfs_read("/sys/bus/pci/devices/0000:00:1f.3/devres_fail_nth")
            .unwrap(),
        "6\n"
    );
    assert_eq!(
        m.sysfs_read("/sys/kernel/debug/devres_fail").unwrap(),
        "@0000:00:02.0:1\n@0000:00:1f.3:6\n"
    );
    let error = m.bind("pci", SMBUS, "i801_smbus").unwrap_err();
    assert_eq!(error.errno(), Errno::ENOMEM);
    assert_eq!(env.tracker.live_total(), 0);
    m.sysfs_write("/sys/bus/pci/devices/0000:00:1f.3/devres_fail_nth", "0")
        .unwrap();
    m.bind("pci", SMBUS, "i801_smbus").unwrap();
    m.sysfs_write("/sys/kernel/debug/devres_fail", "").unwrap();
    assert!(m.fault_rules().is_empty());
    assert_eq!(
        m.sysfs_write("/sys/bus/pci/drivers/i801_smbus/devres_fail_nth", "x")
            .unwrap_err()
            .errno(),
        Errno::EINVAL
    );
}

#[test]
fn fault_rule_syntax_round_trips() {
    let cases = [
        ("3", FaultTarget::Any, 3, None),
        ("e1000e:2", FaultTarget::Driver("e1000e".into()), 2, None),
        (
            "@0000:00:1f.3:5",
            FaultTarget::Device("0000:00:1f.3".into()),
            5,
            None,
        ),
        (
            "virtio_net@virtio0:1,2",
            FaultTarget::DriverDevice {
                driver: "virtio_net".into(),
                device: "virtio0".into(),
            },
            1,
            Some(2),
        ),
    ];
    for (text, target, nth, times) in cases {
        let rule = FaultRule::parse(text).unwrap();
        assert_eq!(rule.target, target, "{text}");
        assert_eq!(rule.nth.get(), nth);
        assert_eq!(rule.times.map(|t| t.get()), times);
        assert_eq!(rule.to_string(), text);
    }
    for bad in [
        "",
        "0",
        "x:0",
        "e1000e:",
        ":3",
        "@:3",
        "d@:3",
        "3,0",
        "e1000e:two",
    ] {
        assert_eq!(FaultRule::parse(bad), None, "{bad:?}");
    }
}

#[test]
fn sysfs_view_lists_binds_and_shows_resources() {
    let env = Env::new();
    let mut m = model();
    m.register_driver(DriverDesc::new(
        "pci",
        "i801_smbus",
        vec![PciMatchId::device(0x8086, 0x2930)],
        TestDriver::new(
            &env,
            "i801_smbus",
            vec![
                Step::Res(ResourceKind::IoPort, "ports"),
                Step::Res(ResourceKind::Irq, "irq"),
            ],
        ),
    ))
    .unwrap();
    add_smbus(&mut m);
    m.add_device(DeviceDesc::new(
        "pci",
        "0000:00:02.0",
        pci(0x1234, 0x1111, 0x030000),
    ))
    .unwrap();

    assert_eq!(
        m.sysfs_list("/sys/bus").unwrap(),
        ["i2c", "pci", "platform", "virtio"]
    );
    assert_eq!(
        m.sysfs_list("/sys/bus/pci").unwrap(),
        ["devices", "drivers"]
    );
    assert_eq!(
        m.sysfs_list("/sys/bus/pci/devices").unwrap(),
        ["0000:00:02.0", "0000:00:1f.3"]
    );
    assert_eq!(
        m.sysfs_list("/sys/bus/pci/drivers/").unwrap(),
        ["i801_smbus"]
    );
    assert_eq!(
        m.sysfs_list("/sys/bus/pci/drivers/i801_smbus").unwrap(),
        ["0000:00:1f.3", "bind", "devres_fail_nth", "unbind"]
    );
    assert_eq!(
        m.sysfs_list("/sys/bus/pci/devices/0000:00:1f.3").unwrap(),
        ["devres", "devres_fail_nth", "driver"]
    );
    assert_eq!(
        m.sysfs_read("/sys/bus/pci/devices/0000:00:1f.3/driver")
            .unwrap(),
        "/sys/bus/pci/drivers/i801_smbus\n"
    );
    assert_eq!(
        m.sysfs_read("/sys/bus/pci/devices/0000:00:1f.3/devres")
            .unwrap(),
        "0: ioport ports@0000:00:1f.3\n1: irq irq@0000:00:1f.3\n"
    );
    // The shell's `echo 0000:00:1f.3 > .../unbind`, then `bind`.
    m.sysfs_write("/sys/bus/pci/drivers/i801_smbus/unbind", "0000:00:1f.3\n")
        .unwrap();
    assert_eq!(
        m.sysfs_read("/sys/bus/pci/devices/0000:00:1f.3/driver")
            .unwrap_err()
            .errno(),
        Errno::ENOENT
    );
    assert_eq!(m.sysfs_device_driver("pci", SMBUS).unwrap(), None);
    assert_eq!(
        m.sysfs_read("/sys/bus/pci/devices/0000:00:1f.3/devres")
            .unwrap(),
        ""
    );
    assert_eq!(
        m.sysfs_list("/sys/bus/pci/drivers/i801_smbus").unwrap(),
        ["bind", "devres_fail_nth", "unbind"]
    );
    m.sysfs_write("/sys/bus/pci/drivers/i801_smbus/bind", "0000:00:1f.3")
        .unwrap();
    assert!(m.device_state("pci", SMBUS).unwrap().is_bound());
    assert_eq!(
        m.sysfs_write("/sys/bus/pci/drivers/i801_smbus/bind", "0000:00:02.0")
            .unwrap_err()
            .errno(),
        Errno::ENODEV
    );
    assert_eq!(
        m.sysfs_list("/sys/bus/usb/devices").unwrap_err().errno(),
        Errno::ENOENT
    );
    assert_eq!(
        m.sysfs_write("/sys/bus/pci/devices", "x")
            .unwrap_err()
            .errno(),
        Errno::ENOENT
    );
    assert_eq!(
        m.sysfs_read("/sys/kernel/debug/devices_deferred").unwrap(),
        ""
    );
}

#[test]
fn remove_device_refuses_parents_and_unregister_unbinds() {
    let env = Env::new();
    let mut m = model();
    m.add_device(DeviceDesc::new(
        "platform",
        "i2c_designware.0",
        PlatformDeviceId::default(),
    ))
    .unwrap();
    m.add_device(
        DeviceDesc::new(
            "i2c",
            "0-0048",
            I2cDeviceId {
                name: "lm75".into(),
            },
        )
        .with_parent("i2c_designware.0"),
    )
    .unwrap();
    let error = m.remove_device("platform", "i2c_designware.0").unwrap_err();
    assert_eq!(error.errno(), Errno::EBUSY);
    assert!(error.to_string().contains("child device 0-0048"));
    m.register_driver(DriverDesc::new(
        "i2c",
        "lm75",
        vec!["lm75"],
        TestDriver::new(&env, "lm75", vec![Step::Res(ResourceKind::Irq, "alert")]),
    ))
    .unwrap();
    assert_eq!(env.tracker.live_total(), 1);
    m.unregister_driver("i2c", "lm75").unwrap();
    assert_eq!(env.tracker.live_total(), 0);
    assert_eq!(m.device_state("i2c", "0-0048"), Some(&DeviceState::Unbound));
    assert_eq!(m.driver_count(), 0);
    m.remove_device("i2c", "0-0048").unwrap();
    m.remove_device("platform", "i2c_designware.0").unwrap();
    assert_eq!(m.device_count(), 0);
}

#[test]
fn pci_matching_honours_any_subsystem_and_class_mask() {
    let dev = pci(0x8086, 0x2930, 0x0c0500);
    assert!(PciMatchId::device(0x8086, 0x2930).matches(&dev));
    assert!(!PciMatchId::device(0x8086, 0x2931).matches(&dev));
    assert!(PciMatchId::device(0x8086, 0x2930)
        .subsystem(0x1af4, 0x1100)
        .matches(&dev));
    assert!(!PciMatchId::device(0x8086, 0x2930)
        .subsystem(0x1af4, 0x1101)
        .matches(&dev));
    assert!(PciMatchId::class(0x0c0500, 0xffff00).matches(&dev));
    assert!(PciMatchId::class(0x0c0000, 0xff0000).matches(&dev));
    assert!(!PciMatchId::class(0x0c0300, 0xffff00).matches(&dev));
    let table = [
        PciMatchId::class(0x020000, 0xff0000),
        PciMatchId::class(0x0c0500, 0xffffff),
        PciMatchId::device(0x8086, 0x2930),
    ];
    assert_eq!(
        PciMatch.matches(&table, &dev),
        Some(1),
        "first matching entry"
    );
    assert_eq!(PciMatch.matches(&table[..1], &dev), None);
}

#[test]
fn virtio_platform_and_i2c_matching() {
    let net = VirtioDeviceId {
        device: 1,
        vendor: 0x1af4,
    };
    assert_eq!(
        VirtioMatch.matches(&[VirtioMatchId::device(2), VirtioMatchId::device(1)], &net),
        Some(1)
    );
    let other_vendor = VirtioMatchId {
        device: 1,
        vendor: 0x1234,
    };
    assert_eq!(VirtioMatch.matches(&[other_vendor], &net), None);
    assert_eq!(
        VirtioMatch.matches(&[VirtioMatchId::device(VIRTIO_DEV_ANY_ID)], &net),
        Some(0)
    );

    let lid = PlatformDeviceId {
        name: "PNP0C0D:00".into(),
        hid: Some("PNP0C0D".into()),
        cids: vec!["PNP0C0C".into()],
        compatible: vec![],
    };
    // The _HID's entry wins over an earlier entry for the _CID.
    let table = [
        PlatformMatchId::Acpi("PNP0C0C"),
        PlatformMatchId::Acpi("PNP0C0D"),
    ];
    assert_eq!(PlatformMatch.matches(&table, &lid), Some(1));
    assert_eq!(
        PlatformMatch.matches(&table[..1], &lid),
        Some(0),
        "the _CID"
    );
    assert_eq!(
        PlatformMatch.matches(&[PlatformMatchId::Name("PNP0C0D:00")], &lid),
        Some(0)
    );
    let uart = PlatformDeviceId {
        name: "serial8250".into(),
        compatible: vec!["ns16550a".into(), "ns16550".into()],
        ..Default::default()
    };
    let table = [
        PlatformMatchId::Name("serial8250"),
        PlatformMatchId::Compatible("ns16550"),
        PlatformMatchId::Compatible("ns16550a"),
    ];
    assert_eq!(
        PlatformMatch.matches(&table, &uart),
        Some(2),
        "compatible first, most specific"
    );
    assert_eq!(PlatformMatch.matches(&table[..1], &uart), Some(0));
    assert_eq!(
        PlatformMatch.matches(&[PlatformMatchId::Acpi("PNP0501")], &uart),
        None
    );

    let sensor = I2cDeviceId {
        name: "lm75".into(),
    };
    assert_eq!(I2cMatch.matches(&["lm73", "lm75"], &sensor), Some(1));
    assert_eq!(I2cMatch.matches(&["lm7"], &sensor), None);
}

/// One operation of the random sequences below.
#[derive(Clone, Debug)]
enum Op {
    Bind(usize),
    Unbind(usize),
    Remove(usize),
    Add(usize),
    Fail(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4_usize).prop_map(Op::Bind),
        (0..4_usize).prop_map(Op::Unbind),
        (0..4_usize).prop_map(Op::Remove),
        (0..4_usize).prop_map(Op::Add),
        (0..4_usize, 1..8_usize).prop_map(|(d, n)| Op::Fail(d, n)),
    ]
}

const DEVS: [&str; 4] = [
    "0000:00:01.0",
    "0000:00:02.0",
    "0000:00:03.0",
    "0000:00:04.0",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the sequence: live resources are exactly those on bound devices' lists, a
    /// device with a supplier is bound only while its supplier is, and unbinding everything
    /// leaves nothing live.
    #[test]
    fn random_sequences_keep_resources_and_links_consistent(ops in prop::collection::vec(op(), 1..60)) {
        let env = Env::new();
        let mut m = model();
        // Device 1 consumes device 0; all are matched by the same driver, so 1 needs 0 bound.
        m.register_driver(DriverDesc::new(
            "pci",
            "drv",
            vec![PciMatchId::device(0x8086, 0x0001)],
            TestDriver::new(&env, "drv", six_steps()),
        )).unwrap();
        m.register_driver(DriverDesc::new(
            "pci",
            "consumer",
            vec![PciMatchId::device(0x8086, 0x0002)],
            TestDriver::new(&env, "consumer", vec![Step::Res(ResourceKind::Irq, "irq")])
                .supplier(DEVS[0]),
        )).unwrap();
        let ids = [1_u16, 2, 1, 1];
        for op in ops {
            match op {
                Op::Bind(d) => {
                    let drv = if ids[d] == 2 { "consumer" } else { "drv" };
                    let _ = m.bind("pci", DEVS[d], drv);
                }
                Op::Unbind(d) => {
                    if let Some(drv) = m.device_state("pci", DEVS[d]).and_then(|s| s.driver()).map(String::from) {
                        m.unbind("pci", DEVS[d], &drv).unwrap();
                    }
                }
                Op::Remove(d) => { let _ = m.remove_device("pci", DEVS[d]); }
                Op::Add(d) => { let _ = m.add_device(DeviceDesc::new("pci", DEVS[d], pci(0x8086, ids[d], 0))); }
                Op::Fail(d, n) => {
                    m.sysfs_write("/sys/kernel/debug/devres_fail", &format!("@{}:{n},1", DEVS[d])).unwrap();
                }
            }
            let listed: usize = DEVS.iter().filter_map(|d| m.device_devres("pci", d)).map(|l| l.len()).sum();
            prop_assert_eq!(env.tracker.live_total(), listed);
            prop_assert!(env.tracker.over_released().is_empty());
            for d in DEVS {
                if let Some(state) = m.device_state("pci", d) {
                    if !state.is_bound() {
                        prop_assert!(m.device_devres("pci", d).unwrap().is_empty());
                    }
                }
            }
            if m.device_state("pci", DEVS[1]).is_some_and(DeviceState::is_bound) {
                prop_assert!(m.device_state("pci", DEVS[0]).is_some_and(DeviceState::is_bound));
            }
        }
        for d in DEVS {
            let _ = m.remove_device("pci", d);
        }
        prop_assert_eq!(m.device_count(), 0);
        prop_assert_eq!(env.tracker.live_total(), 0);
    }
}

/// A bus driver whose probe adds two clients on the `i2c` bus (as an adapter does), and a
/// client driver; both log their probes and removes.
struct AdapterDriver {
    log: Log,
    fail: bool,
}

impl Driver for AdapterDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        for name in ["0-0050", "0-0051"] {
            let id = I2cDeviceId {
                name: "spd".to_string(),
            };
            ctx.add_child(DeviceDesc::new("i2c", name, id));
        }
        if self.fail {
            return Err(Errno::EIO.into());
        }
        self.log.lock().unwrap().push("adapter probe".to_string());
        Ok(())
    }

    fn remove(&self, _ctx: &mut RemoveContext<'_>) {
        self.log.lock().unwrap().push("adapter remove".to_string());
    }
}

struct ClientDriver(Log);

impl Driver for ClientDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let line = format!("client probe {}", ctx.device_name());
        self.0.lock().unwrap().push(line);
        Ok(())
    }

    fn remove(&self, ctx: &mut RemoveContext<'_>) {
        let line = format!("client remove {}", ctx.device_name());
        self.0.lock().unwrap().push(line);
    }
}

fn adapter_model(fail: bool) -> (DeviceModel, Log) {
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let mut model = DeviceModel::new();
    model.add_bus("pci", PciMatch).unwrap();
    model.add_bus("i2c", I2cMatch).unwrap();
    model
        .register_driver(DriverDesc::new(
            "i2c",
            "eeprom",
            vec!["spd"],
            ClientDriver(log.clone()),
        ))
        .unwrap();
    model
        .register_driver(DriverDesc::new(
            "pci",
            "i801_smbus",
            vec![PciMatchId::device(0x8086, 0x2930)],
            AdapterDriver {
                log: log.clone(),
                fail,
            },
        ))
        .unwrap();
    let id = PciDeviceId {
        vendor: 0x8086,
        device: 0x2930,
        subvendor: 0,
        subdevice: 0,
        class: 0x0c0500,
    };
    model
        .add_device(DeviceDesc::new("pci", "0000:00:1f.3", id))
        .unwrap();
    (model, log)
}

#[test]
fn probe_children_bind_after_the_parent_and_go_before_its_remove() {
    let (mut model, log) = adapter_model(false);
    assert_eq!(
        take(&log),
        [
            "adapter probe",
            "client probe 0-0050",
            "client probe 0-0051"
        ]
    );
    assert_eq!(
        model.sysfs_bus_devices("i2c").unwrap(),
        ["0-0050", "0-0051"]
    );
    assert!(model.device_state("i2c", "0-0050").unwrap().is_bound());
    for _ in 0..3 {
        model.unbind("pci", "0000:00:1f.3", "i801_smbus").unwrap();
        assert_eq!(
            take(&log),
            [
                "client remove 0-0051",
                "client remove 0-0050",
                "adapter remove"
            ]
        );
        assert!(model.sysfs_bus_devices("i2c").unwrap().is_empty());
        model.bind("pci", "0000:00:1f.3", "i801_smbus").unwrap();
        assert_eq!(
            take(&log),
            [
                "adapter probe",
                "client probe 0-0050",
                "client probe 0-0051"
            ]
        );
    }
    assert_eq!(model.device_count(), 3);
}

#[test]
fn failed_probe_adds_no_children() {
    let (model, log) = adapter_model(true);
    assert!(take(&log).is_empty());
    assert!(model.sysfs_bus_devices("i2c").unwrap().is_empty());
    assert_eq!(model.device_count(), 1);
}

#[test]
fn suppressed_bind_attrs_hide_bind_and_unbind_but_not_the_sweep() {
    let env = Env::new();
    let mut m = model();
    m.add_device(DeviceDesc::new("pci", SMBUS, pci(0x8086, 0x2930, 0x0c0500)))
        .unwrap();
    m.register_driver(
        DriverDesc::new(
            "pci",
            "console",
            vec![PciMatchId::device(0x8086, 0x2930)],
            TestDriver::new(&env, "console", six_steps()),
        )
        .suppress_bind_attrs(),
    )
    .unwrap();
    assert_eq!(
        m.sysfs_list("/sys/bus/pci/drivers/console").unwrap(),
        [SMBUS, "devres_fail_nth"]
    );
    for file in ["bind", "unbind"] {
        let path = format!("/sys/bus/pci/drivers/console/{file}");
        assert!(matches!(
            m.sysfs_write(&path, SMBUS),
            Err(ModelError::NoSuchPath { .. })
        ));
        assert!(m.sysfs_read(&path).is_err());
    }
    assert_eq!(
        m.device_state("pci", SMBUS).unwrap().driver(),
        Some("console")
    );
    // The kernel's own paths still work: an unbind through the model, and the fault sweep.
    m.unbind("pci", SMBUS, "console").unwrap();
    let report = m
        .sweep_probe_faults("pci", SMBUS, "console", &env.tracker)
        .unwrap();
    assert_eq!(report.acquisition_points, 6);
    assert_eq!(
        m.device_state("pci", SMBUS).unwrap().driver(),
        Some("console")
    );
    m.unbind("pci", SMBUS, "console").unwrap();
    assert_eq!(env.tracker.live_total(), 0);
}
