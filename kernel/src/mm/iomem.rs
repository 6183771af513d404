//! `/proc/iomem`: the physical address space as a resource tree (`lull-resource`, Linux's
//! `iomem_resource`), in Linux's format. Built when read: the firmware memory map as the
//! outer regions, the kernel image inside System RAM, the LAPIC, IOAPICs, HPET and PCIe ECAM
//! windows from ACPI, and the memory BARs of the PCI functions (the bus is scanned on first
//! use). A region that would overlap another is left out and named at the end, as Linux
//! logs a refused claim.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use lull_resource::{Occupancy, ResourceTree};

fn e820_name(kind: u32) -> &'static str {
    match kind {
        1 => "System RAM",
        2 => "Reserved",
        3 => "ACPI Tables",
        4 => "ACPI Non-volatile Storage",
        5 => "Unusable memory",
        7 => "Persistent Memory",
        _ => "Unknown E820 type",
    }
}

/// The text of `/proc/iomem`.
pub fn proc_iomem() -> String {
    let mut tree = ResourceTree::memory();
    let mut refused: Vec<String> = Vec::new();
    let mut container = |tree: &mut ResourceTree, start: u64, size: u64, name: &str| {
        if size > 0 {
            if let Err(error) =
                tree.insert_resource(start, size, String::from(name), Occupancy::Container)
            {
                refused.push(format!("{name} [{start:#x}+{size:#x}]: {error}"));
            }
        }
    };
    for (address, size, kind) in super::firmware_map() {
        container(&mut tree, address, size, e820_name(kind));
    }
    if let Some(acpi) = crate::acpi() {
        for ecam in &acpi.pci_ecam {
            let buses = u64::from(ecam.bus_end) - u64::from(ecam.bus_start) + 1;
            let start = ecam.base.address() + (u64::from(ecam.bus_start) << 20);
            let name = format!(
                "PCI ECAM {:04x} [bus {:02x}-{:02x}]",
                ecam.segment, ecam.bus_start, ecam.bus_end
            );
            container(&mut tree, start, buses << 20, &name);
        }
    }
    let mut busy = |tree: &mut ResourceTree, start: u64, size: u64, name: &str| {
        if size > 0 {
            if let Err(error) = tree.request_region(start, size, String::from(name)) {
                refused.push(format!("{name} [{start:#x}+{size:#x}]: {error}"));
            }
        }
    };
    let image = crate::arch::kernel_image_range();
    busy(
        &mut tree,
        image.start,
        image.end - image.start,
        "Kernel image",
    );
    busy(&mut tree, 0xFEE0_0000, 0x1000, "Local APIC");
    if let Some(acpi) = crate::acpi() {
        for ioapic in &acpi.io_apics {
            busy(
                &mut tree,
                ioapic.address.address(),
                0x1000,
                &format!("IOAPIC {}", ioapic.id),
            );
        }
        if let Some(hpet) = acpi.hpet_address {
            busy(&mut tree, hpet.address(), 0x400, "HPET 0");
        }
    }
    for function in &crate::drivers::pci::scan().functions {
        for bar in &function.bars {
            if let lull_pci::Bar::Memory { address, size, .. } = bar {
                busy(&mut tree, *address, *size, &format!("{}", function.address));
            }
        }
    }
    let mut text = tree.proc_text();
    for line in refused {
        let _ = writeln!(text, "# not claimed: {line}");
    }
    text
}
