//! INTx routing: which GSI a function's legacy interrupt pin arrives on, from the ACPI `_PRT`
//! tables.
//!
//! A host bridge's (or a PCI-to-PCI bridge's) `_PRT` method returns a package of entries
//! `{address, pin, source, source_index}`: `address` is `device << 16 | 0xFFFF` (any function of
//! that slot), `pin` is 0..=3 for INTA#..INTD#, and the interrupt arrives either directly on GSI
//! `source_index` (when `source` is the integer 0) or through a PCI interrupt link device named by
//! `source` (`\_SB.LNKA`, whose current resource picks the GSI; `source_index` then selects among
//! its interrupts, and is 0 in practice).
//!
//! Behind a bridge without its own `_PRT`, a device's pin is wired to one of the bridge's own
//! pins, rotated by the device number so that slots share the four lines evenly: the pin seen one
//! level up is `(pin + device) % 4` (0-based pins; the "swizzle" of the PCI-to-PCI bridge
//! specification). The lookup walks up swizzling until a bus has a `_PRT` entry for the
//! (device, pin) in hand, as Linux's `acpi_pci_irq_lookup` does.
//!
//! The kernel's ACPI code evaluates the AML and fills [`RoutingTables`]; this module is the
//! model and the lookup.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::enumerate::Enumeration;
use pci_types::PciAddress;

/// Where a `_PRT` entry's interrupt goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrtSource {
    /// Hard-wired to this global system interrupt.
    Gsi(u32),
    /// Through an interrupt link device; the kernel resolves it to a GSI.
    Link {
        /// The link device's ACPI path, e.g. `\_SB.GSIA`.
        name: String,
        /// Index into the link's resources.
        index: u32,
    },
}

/// One `_PRT` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrtEntry {
    /// `device << 16 | 0xFFFF`.
    pub address: u32,
    /// 0..=3 for INTA#..INTD#.
    pub pin: u8,
    /// The interrupt's source.
    pub source: PrtSource,
}

impl PrtEntry {
    /// An entry for `device`'s `pin` (0-based).
    pub fn new(device: u8, pin: u8, source: PrtSource) -> Self {
        PrtEntry {
            address: (u32::from(device) << 16) | 0xFFFF,
            pin,
            source,
        }
    }

    /// The device (slot) number the entry applies to.
    pub fn device(&self) -> u8 {
        (self.address >> 16) as u8
    }
}

/// The `_PRT` of one bus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingTable {
    /// The entries, in `_PRT` order.
    pub entries: Vec<PrtEntry>,
}

impl RoutingTable {
    /// The entry for `device`'s 0-based `pin` (function ignored: the address's low 16 bits are
    /// 0xFFFF, "any function").
    pub fn lookup(&self, device: u8, pin: u8) -> Option<&PrtEntry> {
        self.entries
            .iter()
            .find(|e| e.device() == device && e.address & 0xFFFF == 0xFFFF && e.pin == pin)
    }
}

/// `_PRT` tables by (segment, bus): the root bus's from the host bridge's `_PRT`, a secondary
/// bus's from the `_PRT` of the ACPI device describing the bridge, if firmware has one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutingTables {
    tables: BTreeMap<(u16, u8), RoutingTable>,
}

impl RoutingTables {
    /// No tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the table of `bus` in `segment`.
    pub fn insert(&mut self, segment: u16, bus: u8, table: RoutingTable) {
        self.tables.insert((segment, bus), table);
    }

    /// The table of `bus` in `segment`.
    pub fn table(&self, segment: u16, bus: u8) -> Option<&RoutingTable> {
        self.tables.get(&(segment, bus))
    }
}

/// The swizzle through one bridge: the 0-based pin seen on the bridge's side for `pin` of a
/// device in slot `device` behind it.
pub fn swizzle(pin: u8, device: u8) -> u8 {
    ((u16::from(pin) + u16::from(device)) % 4) as u8
}

/// A resolved route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntxRoute {
    /// Where the interrupt goes.
    pub source: PrtSource,
    /// The device whose `_PRT` entry matched: the function itself, or the bridge up the tree
    /// it was swizzled to.
    pub matched_at: PciAddress,
    /// The 0-based pin matched there.
    pub pin: u8,
}

/// Why no route was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntxError {
    /// Interrupt pin register 0 (no INTx) or above 4.
    NoPin(u8),
    /// Walked to a root bus without meeting a `_PRT` entry.
    NoEntry {
        /// The last device tried (on the root bus).
        device: PciAddress,
        /// Its swizzled 0-based pin.
        pin: u8,
    },
}

impl fmt::Display for IntxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntxError::NoPin(p) => write!(f, "interrupt pin {p} is not INTA..INTD"),
            IntxError::NoEntry { device, pin } => {
                write!(f, "no _PRT entry for {device} INT{}", (b'A' + pin) as char)
            }
        }
    }
}

/// Route `function`'s INTx: `interrupt_pin` is the config-space value (1..=4 = INTA#..INTD#).
/// `topology` provides the bridge above each bus (from [`enumerate`](crate::enumerate)).
pub fn route_intx(
    tables: &RoutingTables,
    topology: &Enumeration,
    function: PciAddress,
    interrupt_pin: u8,
) -> Result<IntxRoute, IntxError> {
    if !(1..=4).contains(&interrupt_pin) {
        return Err(IntxError::NoPin(interrupt_pin));
    }
    let mut device = function;
    let mut pin = interrupt_pin - 1;
    // Each step goes to the bridge above, whose bus is strictly lower (the scan enforces it), so
    // this ends within 256 steps; the bound is belt and braces.
    for _ in 0..=256 {
        if let Some(entry) = tables
            .table(device.segment(), device.bus())
            .and_then(|t| t.lookup(device.device(), pin))
        {
            return Ok(IntxRoute {
                source: entry.source.clone(),
                matched_at: device,
                pin,
            });
        }
        match topology.upstream_bridge(device.segment(), device.bus()) {
            Some(bridge) if bridge.address.bus() < device.bus() => {
                pin = swizzle(pin, device.device());
                device = bridge.address;
            }
            _ => break,
        }
    }
    Err(IntxError::NoEntry { device, pin })
}
