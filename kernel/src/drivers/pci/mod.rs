//! PCI: the bus scan and `lspci` (first step of the driver model's PCI bus).
//!
//! The logic (enumeration through bridges, BAR sizing with decoding off, capability walks,
//! lspci formatting) is `lull-pci`, host-tested against fake config spaces; this module runs
//! it on the machine's config mechanism (`arch::pci::Conf1`, the 0xCF8/0xCFC ports, segment
//! 0). The scan happens on first use, in thread context, so it adds nothing to boot. Not yet
//! here: ECAM (MCFG), binding drivers, MSI/MSI-X set-up and `/sys/bus/pci`.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use lull_pci::{enumerate, Enumeration, HostBridge};
use spin::Once;

use crate::arch::pci::Conf1;

static SCAN: Once<Enumeration> = Once::new();

/// The functions found on the PCI buses (scanned once, on first call).
pub fn scan() -> &'static Enumeration {
    SCAN.call_once(|| enumerate(Conf1::get(), &[HostBridge::LEGACY]))
}

/// `lspci [-n|-v]`: one line per function as Linux's `lspci -nn` (`-n`: numbers only; `-v`:
/// BARs, IRQ pin/line and capabilities too).
pub fn lspci(args: &[&str]) -> Result<String, String> {
    let mode = match args {
        [] => 'd',
        ["-n"] => 'n',
        ["-v"] => 'v',
        _ => return Err(String::from("usage: lspci [-n|-v]")),
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

// ---- Devices on the model's `pci` bus (interim glue) ----
//
// The PCI layer proper (`PciDevice`: BAR mapping, `_PRT` routing, MSI) comes with the PCI
// branch; until it lands, this registers each scanned function as a device of the driver
// model's `pci` bus and gives drivers the few config-space accesses they need. Drivers use only
// [`PciFunctionRef`], so the switch is local to this file.

use lull_driver_core::{DeviceDesc, PciDeviceId};
use lull_pci::{ConfigAccess, PciAddress};

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

/// Adds every scanned function to the driver model's `pci` bus (once; thread context: drivers
/// probe as their devices are added).
pub fn register_devices() {
    static DONE: Once<()> = Once::new();
    DONE.call_once(|| {
        for function in &scan().functions {
            let id = PciDeviceId {
                vendor: function.vendor,
                device: function.device,
                subvendor: function.subsystem_vendor,
                subdevice: function.subsystem_id,
                class: u32::from(function.class) << 16
                    | u32::from(function.subclass) << 8
                    | u32::from(function.prog_if),
            };
            let name = device_name(function.address);
            if let Err(error) = crate::drivers::base::add_device(DeviceDesc::new("pci", &*name, id))
            {
                crate::pr_warn!("pci {name}: not added to the driver model: {error}");
            }
        }
    });
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

    /// Config dword at `offset` (aligned down).
    pub fn read32(&self, offset: u16) -> u32 {
        Conf1::get().read32(self.address, offset & !3)
    }

    /// Config byte at `offset`.
    pub fn read8(&self, offset: u16) -> u8 {
        lull_pci::read8(Conf1::get(), self.address, offset)
    }

    /// Writes the config byte at `offset` (read-modify-write of its dword).
    pub fn write8(&self, offset: u16, value: u8) {
        let shift = u32::from(offset & 3) * 8;
        let old = self.read32(offset);
        let new = (old & !(0xff << shift)) | u32::from(value) << shift;
        Conf1::get().write32(self.address, offset & !3, new);
    }

    /// Sets the I/O space enable bit of the command register (`pci_enable_device` for an
    /// I/O-only function).
    pub fn enable_io(&self) {
        let command = self.read8(0x04);
        if command & 1 == 0 {
            self.write8(0x04, command | 1);
        }
    }

    /// The GSI the function's INTx pin is routed to by the root's `_PRT` (root-bus functions;
    /// `None` without a pin or an entry).
    pub fn intx_gsi(&self) -> Option<u32> {
        let pin = self.read8(0x3d);
        if !(1..=4).contains(&pin) || self.address.bus() != 0 {
            return None;
        }
        let device = u16::from(self.address.device());
        crate::drivers::acpi::pci_routing()
            .iter()
            .flat_map(|(_, entries)| entries.iter())
            .find(|e| e.device == device && e.pin == pin - 1)
            .and_then(|e| match &e.source {
                crate::drivers::acpi::PrtSource::Gsi(gsi) => Some(*gsi),
                crate::drivers::acpi::PrtSource::Link { gsi, .. } => *gsi,
            })
    }
}
