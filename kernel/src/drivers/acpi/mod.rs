//! ACPI devices: the namespace the firmware's AML describes (devices with `_HID`, `_UID`,
//! `_STA`, `_CRS`; the PCI roots' `_PRT`), listed in `/proc/acpi/devices` and
//! `/proc/acpi/prt`, and the power button, on the fixed-hardware PM1 event block (q35) or a
//! Generic Event Device (hardware-reduced ACPI: microvm).

pub mod button;
pub mod ged;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use spin::Once;

use crate::arch::acpi::AcpiInfo;
use crate::arch::acpi_aml::FirmwareNamespace;
use crate::kernel::locking::Mutex;
use crate::pr_warn;

pub use lull_aml::devices::{DeviceInfo as AcpiDevice, PrtEntry, PrtSource};
pub use lull_aml::resource::Resource;

/// The namespace, loaded on first use (normally by the device probe after the prompt), for
/// enumerating devices and evaluating methods (`\_S5`, the PCI roots' `_PRT`, the GED's
/// `_EVT`). A sleeping lock: AML may `Sleep`, and only threads evaluate it.
static NAMESPACE: Mutex<Namespace> = Mutex::named("acpi::NAMESPACE", Namespace::NotLoaded);

enum Namespace {
    NotLoaded,
    /// Loaded, or found absent (no ACPI, or no AML tables).
    Loaded(Option<FirmwareNamespace>),
}

/// Runs `f` on the namespace, loading it first if nobody has (thread context). `None` when
/// the firmware has no AML.
fn with_namespace<R>(f: impl FnOnce(&mut FirmwareNamespace) -> R) -> Option<R> {
    let mut namespace = NAMESPACE.lock();
    if matches!(*namespace, Namespace::NotLoaded) {
        let loaded = crate::acpi().and_then(|info| {
            let (loaded, warnings) = crate::arch::acpi_aml::load(info);
            for warning in warnings {
                pr_warn!("{warning}");
            }
            loaded
        });
        *namespace = Namespace::Loaded(loaded);
    }
    match &mut *namespace {
        Namespace::Loaded(Some(loaded)) => Some(f(loaded)),
        _ => None,
    }
}

/// Loads the namespace if nobody has yet, so `\_S5` is known (thread context; before a
/// poweroff).
pub fn load_namespace() {
    with_namespace(|_| ());
}
/// The devices, enumerated on first use: evaluating every device's `_STA`, `_HID`, `_CRS`...
/// costs milliseconds under TCG, too much for every boot.
static DEVICES: Once<Vec<AcpiDevice>> = Once::new();
/// The PCI roots' interrupt routing, (root path, entries), also on first use.
static ROUTING: Once<Vec<(String, Vec<PrtEntry>)>> = Once::new();

/// The namespace's devices (empty without ACPI). The first call enumerates them (thread
/// context: takes the namespace's sleeping lock).
pub fn devices() -> &'static [AcpiDevice] {
    DEVICES.call_once(|| {
        let devices = with_namespace(|namespace| namespace.devices()).unwrap_or_default();
        for device in &devices {
            for error in &device.errors {
                pr_warn!("ACPI: {}: {error}", device.path);
            }
        }
        devices
    })
}

/// Each present PCI root bridge (PNP0A08/PNP0A03) with its `_PRT` (first call evaluates).
pub fn pci_routing() -> &'static [(String, Vec<PrtEntry>)] {
    ROUTING.call_once(|| {
        let roots: Vec<(String, lull_aml::NodeId)> = devices()
            .iter()
            .filter(|d| d.status & 1 != 0 && (d.is("PNP0A08") || d.is("PNP0A03")))
            .map(|d| (d.path.clone(), d.node))
            .collect();
        with_namespace(|namespace| {
            let mut routing = Vec::new();
            for (path, node) in roots {
                match namespace.pci_routing(node) {
                    Ok(entries) => routing.push((path, entries)),
                    Err(error) => pr_warn!("ACPI: {path}._PRT: {error}"),
                }
            }
            routing
        })
        .unwrap_or_default()
    })
}

/// The present devices whose `_HID` or `_CID` is one of `ids`, without enumerating the rest
/// (for drivers at boot).
pub fn find_by_id(ids: &[&str]) -> Vec<AcpiDevice> {
    match DEVICES.get() {
        Some(devices) => devices
            .iter()
            .filter(|d| ids.iter().any(|id| d.is(id)))
            .cloned()
            .collect(),
        None => with_namespace(|ns| ns.find_by_id(ids)).unwrap_or_default(),
    }
}

/// Evaluates `path` in the namespace (thread context: may sleep), returning the value and the
/// notifications it made.
pub fn evaluate(
    path: &str,
    args: Vec<lull_aml::Value>,
) -> Option<(
    Result<lull_aml::Value, lull_aml::Error>,
    crate::arch::acpi_aml::Notifications,
)> {
    with_namespace(|ns| ns.evaluate(path, args))
}

/// Starts the fixed-hardware power button (PM1; the GED's is a driver). Boot, after the IRQ
/// layer and the scheduler.
pub fn init(info: Option<&AcpiInfo>) {
    button::init(info);
    register_proc_files();
}

fn resource_text(resource: &Resource) -> String {
    match resource {
        Resource::Io { base, length } => {
            let last = (*base as u32 + (*length as u32).max(1) - 1) as u16;
            alloc::format!("io {base:#x}-{last:#x}")
        }
        Resource::Memory { base, length, .. } => {
            alloc::format!(
                "mem {base:#x}-{:#x}",
                base.saturating_add(length.saturating_sub(1))
            )
        }
        Resource::AddressRange { kind, base, length } => {
            let what = match kind {
                1 => "io-window",
                2 => "bus",
                _ => "range",
            };
            alloc::format!(
                "{what} {base:#x}-{:#x}",
                base.saturating_add(length.saturating_sub(1))
            )
        }
        Resource::Interrupt { irqs, .. } => {
            let list: Vec<String> = irqs.iter().map(|i| alloc::format!("{i}")).collect();
            alloc::format!("irq {}", list.join(","))
        }
        Resource::Register { address, .. } => alloc::format!("reg {address:#x}"),
        Resource::Other { tag } => alloc::format!("tag {tag:#x}"),
    }
}

/// `/proc/acpi/devices`: one line per device, as Linux's `/sys/bus/acpi/devices/*/{path,hid,
/// status}` put together: path, hid (or `-`), uid, status, `_CRS` resources.
pub fn proc_devices() -> String {
    let mut out = String::new();
    for device in devices() {
        let _ = write!(
            out,
            "{:<28} {:<9} uid={:<4} sta={:#04x}",
            device.path,
            device.hid.as_deref().unwrap_or("-"),
            device.uid.as_deref().unwrap_or("-"),
            device.status
        );
        if let Some(adr) = device.adr {
            let _ = write!(out, " adr={adr:#x}");
        }
        for resource in &device.resources {
            let _ = write!(out, " {}", resource_text(resource));
        }
        out.push('\n');
    }
    out
}

/// `/proc/acpi/prt`: each PCI root's interrupt routing, `slot.function pin -> GSI (link)`.
pub fn proc_prt() -> String {
    let mut out = String::new();
    for (root, entries) in pci_routing() {
        let _ = writeln!(out, "{root}:");
        for entry in entries {
            let function = if entry.function == 0xFFFF {
                String::from("*")
            } else {
                alloc::format!("{}", entry.function)
            };
            let pin = [b'A', b'B', b'C', b'D']
                .get(entry.pin as usize)
                .map_or('?', |&p| p as char);
            let _ = match &entry.source {
                PrtSource::Gsi(gsi) => writeln!(
                    out,
                    "  {:02x}.{function} INT{pin} -> GSI {gsi}",
                    entry.device
                ),
                PrtSource::Link { path, gsi, .. } => writeln!(
                    out,
                    "  {:02x}.{function} INT{pin} -> GSI {} ({path})",
                    entry.device,
                    gsi.map_or(String::from("?"), |g| alloc::format!("{g}"))
                ),
            };
        }
    }
    out
}

fn register_proc_files() {
    use crate::fs::procfs::{register_table, ProcFile};
    register_table(&[
        ProcFile {
            path: "/proc/acpi/devices",
            read: Some(proc_devices),
            write: None,
        },
        ProcFile {
            path: "/proc/acpi/prt",
            read: Some(proc_prt),
            write: None,
        },
    ]);
}

/// Model names of the ACPI devices added to the `acpi` bus, with their index in [`devices`].
static BUS_NAMES: Once<Vec<(String, usize)>> = Once::new();

/// Adds every present ACPI device with a `_HID` to the model's `acpi` bus, named as Linux
/// names them (`PNP0501:00`: the id, then a per-id instance number). Thread context.
pub fn add_bus_devices() {
    let names = BUS_NAMES.call_once(|| {
        let mut names: Vec<(String, usize)> = Vec::new();
        for (index, device) in devices().iter().enumerate() {
            let Some(hid) = &device.hid else { continue };
            if device.status & 1 == 0 {
                continue;
            }
            let instance = names
                .iter()
                .filter(|(name, _)| name.rsplit_once(':').is_some_and(|(id, _)| id == hid))
                .count();
            names.push((alloc::format!("{hid}:{instance:02}"), index));
        }
        names
    });
    for (name, index) in names {
        let device = &devices()[*index];
        let id = lull_driver_core::PlatformDeviceId {
            name: device.hid.clone().unwrap_or_default(),
            hid: device.hid.clone(),
            cids: device.cids.clone(),
            compatible: Vec::new(),
        };
        if let Err(error) = crate::drivers::base::add_device(lull_driver_core::DeviceDesc::new(
            "acpi",
            name.clone(),
            id,
        )) {
            pr_warn!("ACPI: {name}: {error}");
        }
    }
    crate::drivers::base::register_attributes("acpi", bus_attribute);
}

/// The ACPI device behind a model name of the `acpi` bus (`PNP0501:00`).
pub fn bus_device(name: &str) -> Option<&'static AcpiDevice> {
    let index = BUS_NAMES.get()?.iter().find(|(n, _)| n == name)?.1;
    devices().get(index)
}

/// `/sys/bus/acpi/devices/NAME/{path,hid,uid,status,resources}`.
fn bus_attribute(name: &str, attribute: Option<&str>) -> Option<String> {
    let device = bus_device(name)?;
    let text = match attribute {
        None => String::from("path\nhid\nuid\nstatus\nresources\n"),
        Some("path") => alloc::format!("{}\n", device.path),
        Some("hid") => alloc::format!("{}\n", device.hid.as_deref().unwrap_or("")),
        Some("uid") => alloc::format!("{}\n", device.uid.as_deref().unwrap_or("")),
        Some("status") => alloc::format!("{}\n", device.status),
        Some("resources") => {
            let mut text = String::new();
            for resource in &device.resources {
                let _ = writeln!(text, "{}", resource_text(resource));
            }
            text
        }
        Some(_) => return None,
    };
    Some(text)
}
