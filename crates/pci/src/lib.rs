//! Lull's PCI subsystem, the part that can be tested on the host: everything above the raw
//! configuration-space accessor.
//!
//! The kernel supplies one thing, a [`ConfigAccess`] implementation (ECAM MMIO from the ACPI
//! MCFG table, or the 0xCF8/0xCFC port pair when there is none), plus an [`MsixTable`] over a
//! mapped BAR when it programs MSI-X. Everything else is here, written against those traits and
//! exercised with fake hardware ([`FakeConfigSpace`], [`FakeMsixTable`]):
//!
//! * [`access`]: the trait, byte/word reads, [`ecam_offset`] and [`cf8_address`].
//! * [`enumerate()`]: depth-first scan through bridges, multi-function devices, guarded against
//!   looped or overlapping bus ranges ([`ScanProblem`]); each [`PciFunction`] comes with its BARs
//!   sized and its capabilities parsed.
//! * [`bar`]: the sizing protocol with decoding disabled, and lspci's `Region` lines.
//! * [`capability`]: the conventional and extended lists with loop protection, MSI, MSI-X,
//!   vendor capabilities and virtio-pci's `virtio_pci_cap`.
//! * [`msi`]: x86 message composition and the MSI / MSI-X enable, disable and retarget sequences.
//! * [`vector`]: per-CPU vector allocation and `smp_affinity` masks.
//! * [`intx`]: `_PRT` routing tables and the bridge swizzle.
//! * [`names`] and [`sysfs`]: `lspci` lines and `/sys/bus/pci/devices` attributes.
//!
//! It builds on rust-osdev's `pci_types` for the vocabulary (address, header type, command and
//! status registers, class classification); see `Cargo.toml` for why its accessors are not used.
//!
//! ```
//! use lull_pci::{enumerate, lspci_line, FakeConfigSpace, FakeFunction, HostBridge};
//!
//! let hw = FakeConfigSpace::ecam();
//! hw.insert(0, 0x1f, 3, FakeFunction::endpoint(0x8086, 0x2930, 0x0c, 0x05, 0x00, 0x02).bar_io(4, 0x0700, 64));
//! let found = enumerate(&hw, &[HostBridge::LEGACY]);
//! // Function 3 alone is not found: without function 0 the slot is empty.
//! assert!(found.functions.is_empty());
//!
//! hw.insert(0, 0x1f, 0, FakeFunction::endpoint(0x8086, 0x2918, 0x06, 0x01, 0x00, 0x02).multifunction());
//! let found = enumerate(&hw, &[HostBridge::LEGACY]);
//! assert_eq!(
//!     lspci_line(&found.functions[1]),
//!     "00:1f.3 SMBus [0c05]: Intel Corporation 82801I (ICH9 Family) SMBus Controller [8086:2930] (rev 02)"
//! );
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod access;
pub mod bar;
pub mod capability;
pub mod enumerate;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod header;
pub mod intx;
pub mod msi;
pub mod names;
pub mod sysfs;
pub mod vector;

#[cfg(test)]
mod tests;

pub use access::{cf8_address, ecam_offset, read16, read8, ConfigAccess, EcamRegion};
pub use bar::{format_size, region_line, size_bars, Bar, BarError, MemoryWidth};
pub use capability::{
    capabilities, extended_capabilities, Capability, CapabilityError, CapabilityWalk,
    ExtendedCapability, MsiCapability, MsixCapability, VendorCapability, VirtioCapError,
    VirtioCfgType, VirtioPciCap,
};
pub use enumerate::{enumerate, Enumeration, HostBridge, PciFunction, ScanProblem};
#[cfg(any(test, feature = "fake"))]
pub use fake::{FakeConfigSpace, FakeFunction, FakeMsixTable, FakeWrite};
pub use header::BridgeBuses;
pub use intx::{
    route_intx, swizzle, IntxError, IntxRoute, PrtEntry, PrtSource, RoutingTable, RoutingTables,
};
pub use msi::{
    msi_disable, msi_enable, msi_set_message, msi_set_vector_masked, msix_disable, msix_enable,
    msix_enable_masked, msix_entry_masked, msix_set_entry_masked, msix_set_function_masked,
    msix_update_entry, DeliveryMode, DestinationMode, MsiError, MsiMessage, MsixTable, X86Msi,
};
pub use names::{
    class_name, device_name, lspci_line, lspci_numeric_line, lspci_verbose, slot_name, vendor_name,
};
pub use vector::{
    CpuMask, CpuMaskError, PendingMove, VectorAllocator, VectorAssignment, VectorError,
    FIRST_DEVICE_VECTOR, LAST_DEVICE_VECTOR,
};

/// pci_types, re-exported so users name the same `PciAddress`, `HeaderType`, `CommandRegister`.
pub use pci_types;
pub use pci_types::{CommandRegister, HeaderType, PciAddress};
