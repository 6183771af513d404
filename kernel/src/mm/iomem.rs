//! `/proc/iomem`: the physical address space as a resource tree (`lull-resource`, Linux's
//! `iomem_resource`), in Linux's format, and the claims drivers make in it
//! ([`claim`], which `arch::mmio::Mmio` calls; Linux's `request_mem_region`).
//!
//! The tree is built on first use (a `/proc/iomem` read or the first claim; not at boot): the
//! firmware memory map as the outer regions, the kernel image inside System RAM, the LAPIC,
//! IOAPICs, HPET and PCIe ECAM windows from ACPI, and the memory BARs of the PCI functions as
//! containers named by the function (`0000:00:03.0`, as Linux), which a driver's claim then
//! nests in. A region that would overlap another is left out and named at the end, as Linux
//! logs a refused claim.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use lull_resource::{Occupancy, ResourceError, ResourceId, ResourceTree};
use spin::Once;

use crate::kernel::locking::IrqSafeLock;

struct Iomem {
    tree: ResourceTree,
    /// Firmware and platform regions that could not be inserted (shown at the end).
    refused: Vec<String>,
}

static IOMEM: Once<IrqSafeLock<Iomem>> = Once::new();

fn iomem() -> &'static IrqSafeLock<Iomem> {
    // Built outside any lock: it scans PCI, which maps the ECAM window (unclaimed).
    IOMEM.call_once(|| {
        let (tree, refused) = build();
        IrqSafeLock::named("iomem", Iomem { tree, refused })
    })
}

/// A claim in the iomem tree; released when dropped.
#[derive(Debug)]
pub struct IomemClaim {
    id: ResourceId,
}

impl Drop for IomemClaim {
    fn drop(&mut self) {
        let _ = iomem().lock().tree.release(self.id);
    }
}

/// Claims `[start, start + len)` for `owner` (Linux's `request_mem_region`): nests in the
/// deepest container covering it (a BAR, a firmware block); refused when it overlaps another
/// claim or crosses a container's boundary, naming the resource in the way.
pub fn claim(start: u64, len: u64, owner: String) -> Result<IomemClaim, ResourceError> {
    let id = iomem().lock().tree.request_region(start, len, owner)?;
    Ok(IomemClaim { id })
}

/// Busy (claimed) resources in the tree now (for leak checks: drivers' claims come and go,
/// the platform's stay).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // leak checks
pub fn busy_count() -> usize {
    iomem()
        .lock()
        .tree
        .iter()
        .filter(|r| r.occupancy == Occupancy::Busy)
        .count()
}

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
    let iomem = iomem().lock();
    let mut text = iomem.tree.proc_text();
    for line in &iomem.refused {
        let _ = writeln!(text, "# not claimed: {line}");
    }
    text
}

/// The platform's part of the tree, and what could not be inserted.
fn build() -> (ResourceTree, Vec<String>) {
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
    for function in &crate::drivers::pci::scan().functions {
        for bar in &function.bars {
            if let lull_pci::Bar::Memory { address, size, .. } = bar {
                if *address != 0 {
                    container(&mut tree, *address, *size, &format!("{}", function.address));
                }
            }
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
    (tree, refused)
}
