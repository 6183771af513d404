//! Names for `lspci`-style output, and the output itself.
//!
//! The name table is deliberately tiny: the vendors and devices QEMU's q35 and microvm machines
//! present (the Intel ICH9 chipset functions, virtio, the Bochs display, the e1000e NIC), plus
//! the class names. Anything else is shown by number (`Device [vvvv:dddd]`), as lspci does for
//! an ID missing from its database. A full `pci.ids` would cost over a megabyte in the kernel for
//! devices a Lull guest never sees.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::bar::region_line;
use crate::capability::{capability_name, Capability, VirtioCfgType};
use crate::enumerate::PciFunction;
use pci_types::PciAddress;

/// The vendor's name, if in the built-in table.
pub fn vendor_name(vendor: u16) -> Option<&'static str> {
    Some(match vendor {
        0x8086 => "Intel Corporation",
        0x1af4 => "Red Hat, Inc.",
        0x1b36 => "Red Hat, Inc.",
        0x1234 => "Technical Corp.",
        _ => return None,
    })
}

/// The device's name, if in the built-in table.
pub fn device_name(vendor: u16, device: u16) -> Option<&'static str> {
    Some(match (vendor, device) {
        (0x8086, 0x29c0) => "82G33/G31/P35/P31 Express DRAM Controller",
        (0x8086, 0x2918) => "82801IB (ICH9) LPC Interface Controller",
        (0x8086, 0x2922) => "82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode]",
        (0x8086, 0x2930) => "82801I (ICH9 Family) SMBus Controller",
        (0x8086, 0x293e) => "82801I (ICH9 Family) HD Audio Controller",
        (0x8086, 0x2415) => "82801AA AC'97 Audio Controller",
        (0x8086, 0x10d3) => "82574L Gigabit Network Connection",
        (0x1234, 0x1111) => "QEMU Virtual Video Controller",
        (0x1af4, 0x1000) => "Virtio network device",
        (0x1af4, 0x1001) => "Virtio block device",
        (0x1af4, 0x1002) => "Virtio memory balloon",
        (0x1af4, 0x1003) => "Virtio console",
        (0x1af4, 0x1004) => "Virtio SCSI",
        (0x1af4, 0x1005) => "Virtio RNG",
        (0x1af4, 0x1041) => "Virtio 1.0 network device",
        (0x1af4, 0x1042) => "Virtio 1.0 block device",
        (0x1af4, 0x1043) => "Virtio 1.0 console",
        (0x1af4, 0x1044) => "Virtio 1.0 RNG",
        (0x1af4, 0x1045) => "Virtio 1.0 balloon",
        _ => return None,
    })
}

/// The class/sub-class name lspci shows; falls back to the base class's name for an unknown
/// sub-class, and `None` for an unknown base class.
pub fn class_name(class: u8, subclass: u8) -> Option<&'static str> {
    let specific = match (class, subclass) {
        (0x00, 0x00) => Some("Non-VGA unclassified device"),
        (0x00, 0x01) => Some("VGA compatible unclassified device"),
        (0x01, 0x00) => Some("SCSI storage controller"),
        (0x01, 0x01) => Some("IDE interface"),
        (0x01, 0x06) => Some("SATA controller"),
        (0x01, 0x08) => Some("Non-Volatile memory controller"),
        (0x02, 0x00) => Some("Ethernet controller"),
        (0x03, 0x00) => Some("VGA compatible controller"),
        (0x03, 0x80) => Some("Display controller"),
        (0x04, 0x03) => Some("Audio device"),
        (0x05, 0x00) => Some("RAM memory"),
        (0x06, 0x00) => Some("Host bridge"),
        (0x06, 0x01) => Some("ISA bridge"),
        (0x06, 0x04) => Some("PCI bridge"),
        (0x06, 0x80) => Some("Bridge"),
        (0x07, 0x00) => Some("Serial controller"),
        (0x07, 0x80) => Some("Communication controller"),
        (0x08, 0x80) => Some("System peripheral"),
        (0x0c, 0x03) => Some("USB controller"),
        (0x0c, 0x05) => Some("SMBus"),
        _ => None,
    };
    specific.or(match class {
        0x00 => Some("Unclassified device"),
        0x01 => Some("Mass storage controller"),
        0x02 => Some("Network controller"),
        0x03 => Some("Display controller"),
        0x04 => Some("Multimedia controller"),
        0x05 => Some("Memory controller"),
        0x06 => Some("Bridge"),
        0x07 => Some("Communication controller"),
        0x08 => Some("Generic system peripheral"),
        0x09 => Some("Input device controller"),
        0x0a => Some("Docking station"),
        0x0b => Some("Processor"),
        0x0c => Some("Serial bus controller"),
        0x0d => Some("Wireless controller"),
        0x0e => Some("Intelligent controller"),
        0x0f => Some("Satellite communications controller"),
        0x10 => Some("Encryption controller"),
        0x11 => Some("Signal processing controller"),
        0x12 => Some("Processing accelerators"),
        0xff => Some("Unassigned class"),
        _ => None,
    })
}

/// `bb:dd.f` in segment 0, `ssss:bb:dd.f` elsewhere (lspci's slot name).
pub fn slot_name(addr: PciAddress) -> String {
    if addr.segment() == 0 {
        format!(
            "{:02x}:{:02x}.{}",
            addr.bus(),
            addr.device(),
            addr.function()
        )
    } else {
        format!("{addr}")
    }
}

fn revision_suffix(f: &PciFunction) -> String {
    if f.revision != 0 {
        format!(" (rev {:02x})", f.revision)
    } else {
        String::new()
    }
}

/// `vendor device [vvvv:dddd]` with names where known (lspci `-nn`).
fn id_with_names(vendor: u16, device: u16) -> String {
    match (vendor_name(vendor), device_name(vendor, device)) {
        (Some(v), Some(d)) => format!("{v} {d} [{vendor:04x}:{device:04x}]"),
        (Some(v), None) => format!("{v} Device [{vendor:04x}:{device:04x}]"),
        _ => format!("Device [{vendor:04x}:{device:04x}]"),
    }
}

/// One line as `lspci -nn` prints it:
/// `00:1f.3 SMBus [0c05]: Intel Corporation 82801I (ICH9 Family) SMBus Controller [8086:2930] (rev 02)`.
pub fn lspci_line(f: &PciFunction) -> String {
    let class_id = format!("{:02x}{:02x}", f.class, f.subclass);
    let class = match class_name(f.class, f.subclass) {
        Some(name) => format!("{name} [{class_id}]"),
        None => format!("Class [{class_id}]"),
    };
    format!(
        "{} {class}: {}{}",
        slot_name(f.address),
        id_with_names(f.vendor, f.device),
        revision_suffix(f)
    )
}

/// One line as `lspci -n` prints it: `00:1f.3 0c05: 8086:2930 (rev 02)`.
pub fn lspci_numeric_line(f: &PciFunction) -> String {
    format!(
        "{} {:02x}{:02x}: {:04x}:{:04x}{}",
        slot_name(f.address),
        f.class,
        f.subclass,
        f.vendor,
        f.device,
        revision_suffix(f)
    )
}

fn flag(b: bool) -> char {
    if b {
        '+'
    } else {
        '-'
    }
}

fn capability_line(cap: &Capability) -> String {
    let body = match cap {
        Capability::Msi(m) => format!(
            "MSI: Enable{} Count={}/{} Maskable{} 64bit{}",
            flag(m.enabled),
            1u32 << m.multiple_message_enable_log2.min(5),
            m.max_vectors(),
            flag(m.per_vector_masking),
            flag(m.is_64bit)
        ),
        Capability::MsiX(x) => format!(
            "MSI-X: Enable{} Count={} Masked{}",
            flag(x.enabled),
            x.table_size,
            flag(x.function_masked)
        ),
        Capability::Vendor(v) => match v.virtio() {
            Ok(vc) => {
                let what = match vc.cfg_type {
                    VirtioCfgType::Common => String::from("CommonCfg"),
                    VirtioCfgType::Notify => {
                        format!("Notify off-mult={}", vc.notify_off_multiplier.unwrap_or(0))
                    }
                    VirtioCfgType::Isr => String::from("ISR"),
                    VirtioCfgType::Device => String::from("DeviceCfg"),
                    VirtioCfgType::PciCfg => String::from("PCICfg"),
                    VirtioCfgType::SharedMemory => String::from("SharedMemory"),
                    VirtioCfgType::Vendor => String::from("VendorCfg"),
                    VirtioCfgType::Other(t) => format!("<unknown type {t}>"),
                };
                format!(
                    "Vendor Specific Information: VirtIO: {what} BAR={} offset={:08x} size={:08x}",
                    vc.bar, vc.offset, vc.length
                )
            }
            Err(_) => format!("Vendor Specific Information: Len={:02x} <?>", v.bytes.len()),
        },
        Capability::Other { id, .. } => match capability_name(*id) {
            Some(name) => String::from(name),
            None => format!("[{id:02x}] <?>"),
        },
    };
    format!("\tCapabilities: [{:02x}] {body}", cap.offset())
}

/// The block `lspci -vnn` prints for a function (lines joined with `\n`): the header line, the
/// subsystem, a bridge's bus numbers, the interrupt pin, the regions and the capabilities.
/// Every vendor capability is tried as a virtio one and shown by length otherwise.
pub fn lspci_verbose(f: &PciFunction) -> String {
    let mut lines: Vec<String> = Vec::new();
    lines.push(lspci_line(f));
    if f.subsystem_vendor != 0 || f.subsystem_id != 0 {
        lines.push(format!(
            "\tSubsystem: {}",
            id_with_names(f.subsystem_vendor, f.subsystem_id)
        ));
    }
    if let Some(b) = f.bridge {
        lines.push(format!(
            "\tBus: primary={:02x}, secondary={:02x}, subordinate={:02x}",
            b.primary, b.secondary, b.subordinate
        ));
    }
    if (1..=4).contains(&f.interrupt_pin) {
        lines.push(format!(
            "\tInterrupt: pin {} routed to IRQ {}",
            (b'A' + f.interrupt_pin - 1) as char,
            f.interrupt_line
        ));
    }
    for (slot, bar) in f.bars.iter().enumerate() {
        if let Some(line) = region_line(slot, bar) {
            lines.push(format!("\t{line}"));
        }
    }
    for cap in &f.capabilities {
        lines.push(capability_line(cap));
    }
    lines.join("\n")
}
