//! Device enumeration and PCI interrupt routing from a loaded namespace: what a kernel wants
//! to know about each device (`_HID`, `_CID`, `_UID`, `_ADR`, `_STA`, `_CRS`) and a root
//! bridge's `_PRT`, as plain data.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::namespace::{NameString, Namespace, NodeId, ObjectKind, ROOT};
use crate::resource::{self, Resource};
use crate::{Error, Host, Value};

/// `_STA` when a device has none: present, enabled, shown, functioning.
pub const STA_DEFAULT: u64 = 0x0F;

/// One device of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub node: NodeId,
    /// Absolute path, `\_SB_.PCI0.S08_`.
    pub path: String,
    /// `_HID` as text (an EISA id decoded, `PNP0A08`; or the string, `ACPI0013`).
    pub hid: Option<String>,
    /// `_CID` entries as text.
    pub cids: Vec<String>,
    /// `_UID` as text.
    pub uid: Option<String>,
    /// `_ADR` (PCI: device << 16 | function).
    pub adr: Option<u64>,
    /// `_STA` (bit 0 present, 1 enabled, 2 shown in UI, 3 functioning).
    pub status: u64,
    /// The decoded `_CRS` of a present device.
    pub resources: Vec<Resource>,
    /// Methods that failed on this device, with why (the rest of the listing still stands).
    pub errors: Vec<String>,
}

impl DeviceInfo {
    /// Whether `_HID` or a `_CID` is `id`.
    pub fn is(&self, id: &str) -> bool {
        self.hid.as_deref() == Some(id) || self.cids.iter().any(|c| c == id)
    }
}

/// A hardware id as text: a compressed EISA id or a string.
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::Integer(v) => Some(
            resource::eisa_id(*v as u32)
                .iter()
                .map(|&b| b as char)
                .collect(),
        ),
        Value::String(text) => Some(text.clone()),
        _ => None,
    }
}

fn uid_text(value: &Value) -> Option<String> {
    match value {
        Value::Integer(v) => Some(v.to_string()),
        Value::String(text) => Some(text.clone()),
        _ => None,
    }
}

/// Lists every device (and processor) below the root with its identification, status and
/// current resources. As Linux does, the children of a device that is neither present nor
/// functioning are not visited.
pub fn devices(ns: &mut Namespace, host: &mut dyn Host) -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    let mut stack: Vec<NodeId> = ns.children(ROOT).into_iter().rev().collect();
    while let Some(node) = stack.pop() {
        let is_device = matches!(ns.kind(node), ObjectKind::Device | ObjectKind::Processor);
        let mut visit_children = true;
        if is_device {
            let info = describe(ns, host, node);
            visit_children = info.status & 0b1001 != 0;
            out.push(info);
        }
        if visit_children {
            stack.extend(ns.children(node).into_iter().rev());
        }
    }
    out
}

/// Describes one device (see [`DeviceInfo`]).
pub fn describe(ns: &mut Namespace, host: &mut dyn Host, node: NodeId) -> DeviceInfo {
    let mut info = DeviceInfo {
        node,
        path: ns.path(node),
        hid: None,
        cids: Vec::new(),
        uid: None,
        adr: None,
        status: STA_DEFAULT,
        resources: Vec::new(),
        errors: Vec::new(),
    };
    let mut evaluate = |ns: &mut Namespace, name: &str, errors: &mut Vec<String>| match ns
        .evaluate_child(host, node, name)?
    {
        Ok(value) => Some(value),
        Err(error) => {
            errors.push(alloc::format!("{name}: {error}"));
            None
        }
    };
    if let Some(value) = evaluate(ns, "_STA", &mut info.errors) {
        match value.as_integer() {
            Ok(status) => info.status = status,
            Err(error) => info.errors.push(alloc::format!("_STA: {error}")),
        }
    }
    info.hid = evaluate(ns, "_HID", &mut info.errors).and_then(|v| id_text(&v));
    info.cids = match evaluate(ns, "_CID", &mut info.errors) {
        Some(Value::Package(ids)) => ids.iter().filter_map(id_text).collect(),
        Some(single) => id_text(&single).into_iter().collect(),
        None => Vec::new(),
    };
    info.uid = evaluate(ns, "_UID", &mut info.errors).and_then(|v| uid_text(&v));
    info.adr = evaluate(ns, "_ADR", &mut info.errors).and_then(|v| v.as_integer().ok());
    if info.status & 1 != 0 {
        match evaluate(ns, "_CRS", &mut info.errors) {
            Some(Value::Buffer(bytes)) => match resource::parse(&bytes) {
                Ok(resources) => info.resources = resources,
                Err(error) => info.errors.push(alloc::format!("_CRS: {error}")),
            },
            Some(_) => info.errors.push("_CRS: not a buffer".into()),
            None => {}
        }
    }
    info
}

/// Where one PCI interrupt pin is routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrtSource {
    /// Hard-wired to a global system interrupt.
    Gsi(u32),
    /// Through a link device (`PNP0C0F`); `gsi` is what its `_CRS` says now, if readable.
    Link {
        path: String,
        index: u32,
        gsi: Option<u32>,
    },
}

/// One `_PRT` entry: a PCI device (all its functions when `function` is 0xFFFF) and an INTx
/// pin (0 = INTA) routed to a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrtEntry {
    pub device: u16,
    pub function: u16,
    pub pin: u8,
    pub source: PrtSource,
}

fn malformed() -> Error {
    Error::Type("malformed _PRT entry")
}

/// Evaluates a root bridge's `_PRT` and resolves link devices through their `_CRS`.
pub fn pci_routing(
    ns: &mut Namespace,
    host: &mut dyn Host,
    bridge: NodeId,
) -> Result<Vec<PrtEntry>, Error> {
    let table = ns
        .evaluate_child(host, bridge, "_PRT")
        .ok_or_else(|| Error::NotFound(alloc::format!("{}._PRT", ns.path(bridge))))??;
    let Value::Package(entries) = table else {
        return Err(Error::Type("_PRT is not a package"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Package(fields) = entry else {
            return Err(malformed());
        };
        let [address, pin, source, index] = &fields[..] else {
            return Err(malformed());
        };
        let address = address.as_integer()?;
        let pin = pin.as_integer()? as u8;
        let index = index.as_integer()? as u32;
        let source = match source {
            Value::Integer(0) => PrtSource::Gsi(index),
            Value::Name(path) => {
                // Names in a package may refer forward (the links are often declared after
                // the table): resolve them now, from the bridge's scope.
                let link = NameString::parse_text(path).and_then(|name| ns.lookup(bridge, &name));
                match link {
                    Some(link) => PrtSource::Link {
                        path: ns.path(link),
                        index,
                        gsi: link_gsi(ns, host, link, index),
                    },
                    None => PrtSource::Link {
                        path: path.clone(),
                        index,
                        gsi: None,
                    },
                }
            }
            Value::String(path) => PrtSource::Link {
                path: path.clone(),
                index,
                gsi: None,
            },
            _ => return Err(malformed()),
        };
        out.push(PrtEntry {
            device: (address >> 16) as u16,
            function: address as u16,
            pin,
            source,
        });
    }
    Ok(out)
}

fn link_gsi(ns: &mut Namespace, host: &mut dyn Host, link: NodeId, index: u32) -> Option<u32> {
    let Ok(Value::Buffer(bytes)) = ns.evaluate_child(host, link, "_CRS")? else {
        return None;
    };
    resource::parse(&bytes)
        .ok()?
        .into_iter()
        .find_map(|r| match r {
            Resource::Interrupt { irqs, .. } => irqs.get(index as usize).or(irqs.first()).copied(),
            _ => None,
        })
}

/// The devices whose `_HID` or `_CID` is one of `ids`, described in full; cheaper than
/// [`devices`] when a driver looks for its own: ids given as plain names (the usual case) are
/// compared without running the interpreter, and only matches are described.
pub fn find_by_id(ns: &mut Namespace, host: &mut dyn Host, ids: &[&str]) -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    for node in ns.walk(ROOT) {
        if !matches!(ns.kind(node), ObjectKind::Device) {
            continue;
        }
        let mut matches = false;
        for method in [*b"_HID", *b"_CID"] {
            let Some(child) = ns.child(node, method) else {
                continue;
            };
            let value = match ns.kind(child) {
                ObjectKind::Name(value) => Ok(value.clone()),
                _ => ns.evaluate_node(host, child, Vec::new()),
            };
            let texts: Vec<String> = match value {
                Ok(Value::Package(values)) => values.iter().filter_map(id_text).collect(),
                Ok(value) => id_text(&value).into_iter().collect(),
                Err(_) => Vec::new(),
            };
            matches |= texts.iter().any(|t| ids.contains(&t.as_str()));
        }
        if matches {
            out.push(describe(ns, host, node));
        }
    }
    out
}
