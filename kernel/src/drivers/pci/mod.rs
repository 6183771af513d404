//! PCI: config access (ECAM from the MCFG, else the 0xCF8/0xCFC ports), the bus scan, `lspci`,
//! and the device API drivers use ([`PciDevice`]: config space, enabling, BAR mapping,
//! capabilities, INTx through `_PRT`, and MSI-X / MSI / INTx vectors with
//! [`alloc_irq_vectors`]).
//!
//! The logic (enumeration through bridges, BAR sizing with decoding off, capability walks, MSI
//! programming sequences, the vector allocator, the `_PRT` swizzle, lspci formatting) is
//! `lull-pci`, host-tested against fake config spaces; this module runs it on the machine. The
//! scan happens on first use, in thread context, so it adds nothing to boot.

mod bus;
mod device;
pub mod devm;
mod irq;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use lull_pci::{enumerate, ConfigAccess, EcamRegion, Enumeration, HostBridge, PciAddress};
use spin::Once;

use crate::arch::pci::{Conf1, Ecam};

pub use bus::{add_bus_devices, bound_driver};
pub use device::{PciDevice, PciError};
#[allow(unused_imports)] // the API of the drivers to come (virtio-pci, SMBus)
pub use irq::{
    alloc_irq_vectors, free_irq_vectors, irq_vector, irq_vectors, IntxIrq, IrqVectorFlags,
    IrqVectorKind,
};

/// The machine's configuration mechanism.
pub enum PciConfig {
    /// The MCFG's memory-mapped windows (4 KiB per function).
    Ecam(Ecam),
    /// The legacy port pair (256 bytes per function, segment 0).
    Conf1,
}

impl ConfigAccess for PciConfig {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        match self {
            PciConfig::Ecam(ecam) => ecam.read32(addr, offset),
            PciConfig::Conf1 => Conf1::get().read32(addr, offset),
        }
    }

    fn write32(&self, addr: PciAddress, offset: u16, value: u32) {
        match self {
            PciConfig::Ecam(ecam) => ecam.write32(addr, offset, value),
            PciConfig::Conf1 => Conf1::get().write32(addr, offset, value),
        }
    }

    fn config_size(&self) -> u16 {
        match self {
            PciConfig::Ecam(ecam) => ecam.config_size(),
            PciConfig::Conf1 => Conf1::get().config_size(),
        }
    }
}

/// The MCFG's windows, in `lull-pci`'s terms (empty without ACPI or MCFG).
pub fn mcfg_regions() -> Vec<EcamRegion> {
    crate::acpi()
        .map(|acpi| {
            acpi.pci_ecam
                .iter()
                .map(|e| EcamRegion {
                    base: e.base.address(),
                    segment: e.segment,
                    start_bus: e.bus_start,
                    end_bus: e.bus_end,
                })
                .collect()
        })
        .unwrap_or_default()
}

static CONFIG: Once<PciConfig> = Once::new();

/// The config mechanism: ECAM when the MCFG lists windows (and they map), else conf1. Chosen
/// on first use.
pub fn config() -> &'static PciConfig {
    CONFIG.call_once(|| {
        let regions = mcfg_regions();
        if regions.is_empty() {
            return PciConfig::Conf1;
        }
        match Ecam::new(&regions) {
            Ok(ecam) => PciConfig::Ecam(ecam),
            Err(error) => {
                crate::pr_warn!("pci: ECAM unusable ({error}); using conf1");
                PciConfig::Conf1
            }
        }
    })
}

/// The host bridges to scan: one per MCFG window, else the legacy segment 0.
fn host_bridges() -> Vec<HostBridge> {
    match config() {
        PciConfig::Ecam(ecam) => ecam
            .regions()
            .map(|r| HostBridge {
                segment: r.segment,
                root_bus: r.start_bus,
                end_bus: r.end_bus,
            })
            .collect(),
        PciConfig::Conf1 => alloc::vec![HostBridge::LEGACY],
    }
}

static SCAN: Once<Enumeration> = Once::new();

/// The functions found on the PCI buses (scanned once, on first call).
pub fn scan() -> &'static Enumeration {
    SCAN.call_once(|| enumerate(config(), &host_bridges()))
}

/// `lspci [-n|-k|-v]`: one line per function as Linux's `lspci -nn` (`-n`: numbers only;
/// `-k`: and the driver bound, as Linux's `lspci -k`; `-v`: BARs, IRQ pin/line, capabilities,
/// the INTx route, the IRQ vectors allocated and the driver too).
pub fn lspci(args: &[&str]) -> Result<String, String> {
    let mode = match args {
        [] => 'd',
        ["-n"] => 'n',
        ["-k"] => 'k',
        ["-v"] => 'v',
        _ => return Err(String::from("usage: lspci [-n|-k|-v]")),
    };
    let scan = scan();
    let mut text = String::new();
    for function in &scan.functions {
        let line = match mode {
            'n' => lull_pci::lspci_numeric_line(function),
            'v' => lull_pci::lspci_verbose(function),
            _ => lull_pci::lspci_line(function),
        };
        let _ = writeln!(text, "{line}");
        if mode == 'v' {
            if let Some(intx) = PciDevice::get(function.address).and_then(|d| d.intx_irq()) {
                let _ = writeln!(
                    text,
                    "\tINTx: IRQ {} ({}, {}) from {}",
                    intx.gsi,
                    if intx.level { "level" } else { "edge" },
                    if intx.active_low {
                        "active low"
                    } else {
                        "active high"
                    },
                    intx.source
                );
            }
            if let Some((kind, irqs)) = irq_vectors(function.address) {
                let list: Vec<String> = irqs.iter().map(|i| alloc::format!("{i}")).collect();
                let _ = writeln!(text, "\tIRQ vectors: {kind} {}", list.join(" "));
            }
        }
        if mode == 'k' || mode == 'v' {
            if let Some(driver) = bound_driver(&alloc::format!("{}", function.address)) {
                let _ = writeln!(text, "\tKernel driver in use: {driver}");
            }
        }
    }
    let problems: Vec<String> = scan
        .problems
        .iter()
        .map(|p| alloc::format!("{p}"))
        .collect();
    for problem in problems {
        let _ = writeln!(text, "lspci: {problem}");
    }
    Ok(text)
}

// ---- The few config accesses the SMBus driver uses, on `PciDevice` ----

/// Linux's device name: `0000:00:1f.3`.
pub fn device_name(address: PciAddress) -> String {
    alloc::format!(
        "{:04x}:{:02x}:{:02x}.{}",
        address.segment(),
        address.bus(),
        address.device(),
        address.function()
    )
}

/// A PCI function a driver was bound to, by its model name: config space and INTx routing.
#[derive(Clone, Copy, Debug)]
pub struct PciFunctionRef {
    address: PciAddress,
}

impl PciFunctionRef {
    /// The function named `0000:BB:DD.F`, if it was found by the scan.
    pub fn from_name(name: &str) -> Option<Self> {
        scan()
            .functions
            .iter()
            .find(|f| device_name(f.address) == name)
            .map(|f| Self { address: f.address })
    }

    fn device(&self) -> Option<device::PciDevice> {
        device::PciDevice::get(self.address)
    }

    /// Config dword at `offset` (aligned down).
    pub fn read32(&self, offset: u16) -> u32 {
        self.device()
            .map_or(u32::MAX, |d| d.read_config_u32(offset & !3))
    }

    /// Config byte at `offset`.
    pub fn read8(&self, offset: u16) -> u8 {
        self.device().map_or(u8::MAX, |d| d.read_config_u8(offset))
    }

    /// Writes the config byte at `offset`.
    pub fn write8(&self, offset: u16, value: u8) {
        if let Some(device) = self.device() {
            device.write_config_u8(offset, value);
        }
    }

    /// Sets the I/O space enable bit of the command register (`pci_enable_device` for an
    /// I/O-only function).
    pub fn enable_io(&self) {
        let command = self.read8(0x04);
        if command & 1 == 0 {
            self.write8(0x04, command | 1);
        }
    }

    /// The GSI the function's INTx pin is routed to (`_PRT` with the bridge swizzle, else the
    /// Interrupt Line register); `None` without a pin.
    pub fn intx_gsi(&self) -> Option<u32> {
        self.device()?.intx_irq().map(|irq| irq.gsi)
    }
}
