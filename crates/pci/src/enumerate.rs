//! Enumeration: find every function below the host bridges, through PCI-to-PCI bridges, as
//! firmware numbered the buses.
//!
//! The scan is Linux's `pci_scan_child_bus` order: all devices of a bus first (device 0..32,
//! function 0, and functions 1..8 only when function 0's header type has the multi-function bit),
//! then, depth first, the bus behind each bridge found on it in device order. A vendor ID of
//! 0xFFFF means nothing answered. Bus numbers are taken as firmware programmed them and never
//! reassigned (Lull runs under firmware that numbers buses, and reassigning under a running
//! firmware's feet would break ACPI's view of the topology).
//!
//! Bridges are not trusted blindly. A bridge whose secondary bus is not above its own bus, whose
//! range is inverted, which points outside its parent's range or host bridge's decoded range,
//! or whose bus was already scanned (two bridges claiming one bus, or a cycle) is recorded as a
//! [`ScanProblem`] and not descended into. Since every descent goes to a strictly higher bus
//! that has not been visited, the scan ends after at most 256 buses per segment whatever the
//! hardware says. The walk keeps an explicit stack, not recursion, because it runs on a kernel
//! stack.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;
use core::fmt;

use crate::access::{read16, read8, ConfigAccess};
use crate::bar::{size_bars, Bar, MAX_BARS};
use crate::capability::{
    capabilities, extended_capabilities, Capability, CapabilityError, ExtendedCapability,
    MsiCapability, MsixCapability, VendorCapability,
};
use crate::header::{
    bar_count, bridge_buses, command, header_type_byte, header_type_from_byte, vendor_id,
    BridgeBuses, CLASS, DEVICE_ID, HEADER_TYPE_MULTIFUNCTION, INTERRUPT_LINE, INTERRUPT_PIN,
    PROG_IF, REVISION_ID, SUBCLASS, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID,
};
use pci_types::device_type::DeviceType;
use pci_types::{CommandRegister, HeaderType, PciAddress};

/// A host bridge's root bus and the bus range it decodes (from MCFG or ACPI `_CRS`/`_BBN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostBridge {
    /// PCI segment group.
    pub segment: u16,
    /// The root bus, scanned first.
    pub root_bus: u8,
    /// Highest bus number the host bridge decodes; bridges pointing beyond it are skipped.
    pub end_bus: u8,
}

impl HostBridge {
    /// The legacy assumption without MCFG: segment 0, root bus 0, all buses.
    pub const LEGACY: HostBridge = HostBridge {
        segment: 0,
        root_bus: 0,
        end_bus: 0xFF,
    };
}

/// One function found by the scan, with its BARs sized and capabilities walked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciFunction {
    /// Segment, bus, device, function.
    pub address: PciAddress,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Base class.
    pub class: u8,
    /// Sub-class.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Revision ID.
    pub revision: u8,
    /// Header layout.
    pub header_type: HeaderType,
    /// Header-type bit 7 (meaningful on function 0).
    pub multifunction: bool,
    /// Subsystem vendor ID (type 0 headers; 0 otherwise).
    pub subsystem_vendor: u16,
    /// Subsystem ID (type 0 headers; 0 otherwise).
    pub subsystem_id: u16,
    /// Command register as found (BAR sizing restores it).
    pub command: CommandRegister,
    /// The BARs, sized; [`Bar::Absent`] beyond the header's count.
    pub bars: [Bar; MAX_BARS],
    /// Interrupt pin: 0 none, 1..=4 INTA#..INTD#.
    pub interrupt_pin: u8,
    /// Interrupt line as firmware left it.
    pub interrupt_line: u8,
    /// The conventional capability list (up to a fault, reported in the scan's problems).
    pub capabilities: Vec<Capability>,
    /// The extended capability list (ECAM only).
    pub extended_capabilities: Vec<ExtendedCapability>,
    /// For PCI-to-PCI bridges, the bus numbers firmware programmed.
    pub bridge: Option<BridgeBuses>,
}

impl PciFunction {
    /// The 24-bit class code `class << 16 | subclass << 8 | prog_if`.
    pub fn class_code(&self) -> u32 {
        (u32::from(self.class) << 16) | (u32::from(self.subclass) << 8) | u32::from(self.prog_if)
    }

    /// pci_types' classification of the class and sub-class.
    pub fn device_type(&self) -> DeviceType {
        DeviceType::from((self.class, self.subclass))
    }

    /// The MSI capability, if any.
    pub fn msi(&self) -> Option<&MsiCapability> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::Msi(m) => Some(m),
            _ => None,
        })
    }

    /// The MSI-X capability, if any.
    pub fn msix(&self) -> Option<&MsixCapability> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::MsiX(m) => Some(m),
            _ => None,
        })
    }

    /// Vendor-specific capabilities, in list order.
    pub fn vendor_capabilities(&self) -> impl Iterator<Item = &VendorCapability> {
        self.capabilities.iter().filter_map(|c| match c {
            Capability::Vendor(v) => Some(v),
            _ => None,
        })
    }
}

/// Something the scan refused to follow or could not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanProblem {
    /// A bridge's secondary bus is not above the bus it sits on (unconfigured, or a loop).
    BridgeLoop {
        /// The bridge.
        bridge: PciAddress,
        /// Its bus numbers.
        buses: BridgeBuses,
    },
    /// Subordinate below secondary.
    InvertedRange {
        /// The bridge.
        bridge: PciAddress,
        /// Its bus numbers.
        buses: BridgeBuses,
    },
    /// The secondary bus is outside the range the parent bridge (or host bridge) forwards.
    OutsideParentRange {
        /// The bridge.
        bridge: PciAddress,
        /// Its bus numbers.
        buses: BridgeBuses,
        /// Highest bus the parent forwards.
        parent_end: u8,
    },
    /// The bridge's bus range overlaps that of an earlier bridge on the same bus.
    OverlappingRange {
        /// The bridge.
        bridge: PciAddress,
        /// Its bus numbers.
        buses: BridgeBuses,
        /// The earlier bridge whose range it overlaps.
        other: PciAddress,
    },
    /// The secondary bus was already scanned through another path.
    BusAlreadyScanned {
        /// The bridge.
        bridge: PciAddress,
        /// Its bus numbers.
        buses: BridgeBuses,
    },
    /// A function's capability list is broken; entries before the fault are kept.
    Capabilities {
        /// The function.
        function: PciAddress,
        /// What was wrong.
        error: CapabilityError,
    },
    /// A function's extended capability list is broken.
    ExtendedCapabilities {
        /// The function.
        function: PciAddress,
        /// What was wrong.
        error: CapabilityError,
    },
    /// A BAR could not be decoded (see the function's `bars` for the reason).
    Bar {
        /// The function.
        function: PciAddress,
        /// The slot.
        slot: u8,
    },
}

impl fmt::Display for ScanProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanProblem::BridgeLoop { bridge, buses } => write!(
                f,
                "{bridge}: bridge secondary bus {:02x} is not above its own bus {:02x}; not scanned",
                buses.secondary,
                bridge.bus()
            ),
            ScanProblem::InvertedRange { bridge, buses } => write!(
                f,
                "{bridge}: bridge bus range [{:02x}-{:02x}] is inverted; not scanned",
                buses.secondary, buses.subordinate
            ),
            ScanProblem::OutsideParentRange { bridge, buses, parent_end } => write!(
                f,
                "{bridge}: bridge bus range [{:02x}-{:02x}] is outside its parent's (ends at {parent_end:02x}); not scanned",
                buses.secondary, buses.subordinate
            ),
            ScanProblem::OverlappingRange { bridge, buses, other } => write!(
                f,
                "{bridge}: bridge bus range [{:02x}-{:02x}] overlaps that of {other}; not scanned",
                buses.secondary, buses.subordinate
            ),
            ScanProblem::BusAlreadyScanned { bridge, buses } => write!(
                f,
                "{bridge}: bus {:02x} behind this bridge was already scanned; not scanned again",
                buses.secondary
            ),
            ScanProblem::Capabilities { function, error } => {
                write!(f, "{function}: capability list: {error}")
            }
            ScanProblem::ExtendedCapabilities { function, error } => {
                write!(f, "{function}: extended capability list: {error}")
            }
            ScanProblem::Bar { function, slot } => write!(f, "{function}: BAR {slot} is invalid"),
        }
    }
}

/// The scan's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enumeration {
    /// Every function found, in scan order.
    pub functions: Vec<PciFunction>,
    /// What was skipped or broken, in the order met.
    pub problems: Vec<ScanProblem>,
}

impl Enumeration {
    /// The function at `address`.
    pub fn function(&self, address: PciAddress) -> Option<&PciFunction> {
        self.functions.iter().find(|f| f.address == address)
    }

    /// The bridge whose secondary bus is `bus` in `segment` (and that was descended into), i.e.
    /// the upstream device of every function on that bus. `None` for a root bus.
    pub fn upstream_bridge(&self, segment: u16, bus: u8) -> Option<&PciFunction> {
        self.functions.iter().find(|f| {
            f.address.segment() == segment
                && f.bridge.is_some_and(|b| b.secondary == bus)
                && !self
                    .problems
                    .iter()
                    .any(|p| problem_bridge(p) == Some(f.address))
        })
    }

    /// Functions sorted by address, as lspci lists them.
    pub fn sorted(&self) -> Vec<&PciFunction> {
        let mut v: Vec<&PciFunction> = self.functions.iter().collect();
        v.sort_by_key(|f| f.address);
        v
    }
}

fn problem_bridge(p: &ScanProblem) -> Option<PciAddress> {
    match *p {
        ScanProblem::BridgeLoop { bridge, .. }
        | ScanProblem::InvertedRange { bridge, .. }
        | ScanProblem::OutsideParentRange { bridge, .. }
        | ScanProblem::OverlappingRange { bridge, .. }
        | ScanProblem::BusAlreadyScanned { bridge, .. } => Some(bridge),
        _ => None,
    }
}

/// Read everything about one present function.
fn probe_function<A: ConfigAccess + ?Sized>(
    access: &A,
    address: PciAddress,
    problems: &mut Vec<ScanProblem>,
) -> PciFunction {
    let ht = header_type_byte(access, address);
    let header_type = header_type_from_byte(ht);
    let is_endpoint = header_type == HeaderType::Endpoint;
    let bars = size_bars(access, address, bar_count(header_type));
    for (slot, bar) in bars.iter().enumerate() {
        if matches!(bar, Bar::Invalid(_)) {
            problems.push(ScanProblem::Bar {
                function: address,
                slot: slot as u8,
            });
        }
    }
    let caps = capabilities(access, address);
    if let Some(error) = caps.error {
        problems.push(ScanProblem::Capabilities {
            function: address,
            error,
        });
    }
    let ext = extended_capabilities(access, address);
    if let Some(error) = ext.error {
        problems.push(ScanProblem::ExtendedCapabilities {
            function: address,
            error,
        });
    }
    PciFunction {
        address,
        vendor: vendor_id(access, address),
        device: read16(access, address, DEVICE_ID),
        class: read8(access, address, CLASS),
        subclass: read8(access, address, SUBCLASS),
        prog_if: read8(access, address, PROG_IF),
        revision: read8(access, address, REVISION_ID),
        header_type,
        multifunction: ht & HEADER_TYPE_MULTIFUNCTION != 0,
        subsystem_vendor: if is_endpoint {
            read16(access, address, SUBSYSTEM_VENDOR_ID)
        } else {
            0
        },
        subsystem_id: if is_endpoint {
            read16(access, address, SUBSYSTEM_ID)
        } else {
            0
        },
        command: command(access, address),
        bars,
        interrupt_pin: read8(access, address, INTERRUPT_PIN),
        interrupt_line: read8(access, address, INTERRUPT_LINE),
        capabilities: caps.capabilities,
        extended_capabilities: ext.capabilities,
        bridge: (header_type == HeaderType::PciPciBridge).then(|| bridge_buses(access, address)),
    }
}

/// Scan every function of one bus; returns the bridges found, in device order.
fn scan_bus<A: ConfigAccess + ?Sized>(
    access: &A,
    segment: u16,
    bus: u8,
    out: &mut Enumeration,
) -> Vec<(PciAddress, BridgeBuses)> {
    let mut bridges = Vec::new();
    for dev in 0..32 {
        let f0 = PciAddress::new(segment, bus, dev, 0);
        if vendor_id(access, f0) == 0xFFFF {
            continue;
        }
        let functions = if header_type_byte(access, f0) & HEADER_TYPE_MULTIFUNCTION != 0 {
            8
        } else {
            1
        };
        for func in 0..functions {
            let address = PciAddress::new(segment, bus, dev, func);
            if func != 0 && vendor_id(access, address) == 0xFFFF {
                continue;
            }
            let function = probe_function(access, address, &mut out.problems);
            if let Some(buses) = function.bridge {
                bridges.push((address, buses));
            }
            out.functions.push(function);
        }
    }
    bridges
}

/// Enumerate below each host bridge, depth first through PCI-to-PCI bridges.
///
/// BARs are sized as functions are found (with decoding disabled around the sizing), so this
/// writes to configuration space; run it before drivers bind.
pub fn enumerate<A: ConfigAccess + ?Sized>(access: &A, host_bridges: &[HostBridge]) -> Enumeration {
    let mut out = Enumeration::default();
    let mut visited: BTreeSet<(u16, u8)> = BTreeSet::new();
    for host in host_bridges {
        if !visited.insert((host.segment, host.root_bus)) {
            continue;
        }
        // (bus to scan, highest bus its upstream forwards)
        let mut stack: Vec<(u8, u8)> = alloc::vec![(host.root_bus, host.end_bus)];
        while let Some((bus, parent_end)) = stack.pop() {
            let bridges = scan_bus(access, host.segment, bus, &mut out);
            // Push in reverse so the first bridge's bus is scanned next (depth first, in order).
            let mut children: Vec<(PciAddress, BridgeBuses)> = Vec::new();
            for (bridge, buses) in bridges {
                let overlapping = children.iter().find(|(_, c)| {
                    buses.secondary <= c.subordinate && c.secondary <= buses.subordinate
                });
                let problem = if buses.secondary <= bus {
                    Some(ScanProblem::BridgeLoop { bridge, buses })
                } else if buses.subordinate < buses.secondary {
                    Some(ScanProblem::InvertedRange { bridge, buses })
                } else if buses.subordinate > parent_end {
                    Some(ScanProblem::OutsideParentRange {
                        bridge,
                        buses,
                        parent_end,
                    })
                } else if let Some(&(other, _)) = overlapping {
                    Some(ScanProblem::OverlappingRange {
                        bridge,
                        buses,
                        other,
                    })
                } else if !visited.insert((host.segment, buses.secondary)) {
                    Some(ScanProblem::BusAlreadyScanned { bridge, buses })
                } else {
                    None
                };
                match problem {
                    Some(p) => out.problems.push(p),
                    None => children.push((bridge, buses)),
                }
            }
            stack.extend(
                children
                    .into_iter()
                    .rev()
                    .map(|(_, b)| (b.secondary, b.subordinate)),
            );
        }
    }
    out
}
