//! `/proc/ioports`: the I/O port space as a resource tree (`lull-resource`, Linux's
//! `ioport_resource`), in Linux's format. Built when read: the PCI root bridges' I/O windows
//! (from their ACPI `_CRS`) as containers, the PCI functions' I/O BARs inside them, and every
//! claimed range (`IoPorts` handles: arch's own devices, drivers' `devm_request_region`) as
//! busy regions nested where they fall. A range that would overlap another is named at the end.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use lull_aml::resource::Resource;
use lull_resource::{Occupancy, ResourceTree};

/// The text of `/proc/ioports`. Thread context (enumerates ACPI and PCI on first use).
pub fn proc_ioports() -> String {
    let mut tree = ResourceTree::io_ports();
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
    let roots = crate::drivers::acpi::devices()
        .iter()
        .filter(|d| d.status & 1 != 0 && (d.is("PNP0A08") || d.is("PNP0A03")));
    for (index, root) in roots.enumerate() {
        let name = format!("PCI Bus 0000:{index:02x}");
        for resource in &root.resources {
            if let Resource::AddressRange {
                kind: 1,
                base,
                length,
            } = resource
            {
                container(&mut tree, *base, *length, &name);
            }
        }
    }
    for function in &crate::drivers::pci::scan().functions {
        for bar in &function.bars {
            if let lull_pci::Bar::Io { port, size } = bar {
                let name = format!("{}", function.address);
                container(&mut tree, u64::from(*port), u64::from(*size), &name);
            }
        }
    }
    for (base, len, owner) in crate::arch::io::claimed() {
        if let Err(error) =
            tree.request_region(u64::from(base), u64::from(len), String::from(owner))
        {
            refused.push(format!("{owner} [{base:#x}+{len:#x}]: {error}"));
        }
    }
    let mut text = tree.proc_text();
    for line in refused {
        let _ = writeln!(text, "# not claimed: {line}");
    }
    text
}
