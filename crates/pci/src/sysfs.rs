//! The attribute files of `/sys/bus/pci/devices/SSSS:BB:DD.F/`, formatted as Linux formats them,
//! so scripts written for Linux read Lull's the same way.
//!
//! The directory name is pci_types' `PciAddress` display (`0000:00:1f.3`). The numeric
//! attributes are `0x`-prefixed hex with a newline; `resource` has one line per BAR (then the
//! expansion ROM, not sized here, as zeros) of `start end flags`, each `0x%016x`, where flags are
//! Linux's `IORESOURCE_*` bits so tools that decode them keep working.

use alloc::format;
use alloc::string::String;

use crate::bar::{Bar, MemoryWidth};
use crate::enumerate::PciFunction;

/// `IORESOURCE_IO`.
pub const IORESOURCE_IO: u64 = 0x0000_0100;
/// `IORESOURCE_MEM`.
pub const IORESOURCE_MEM: u64 = 0x0000_0200;
/// `IORESOURCE_PREFETCH`.
pub const IORESOURCE_PREFETCH: u64 = 0x0000_2000;
/// `IORESOURCE_SIZEALIGN`: the resource's alignment is its size, as for every BAR.
pub const IORESOURCE_SIZEALIGN: u64 = 0x0004_0000;
/// `IORESOURCE_MEM_64`.
pub const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// The device directory's name: `0000:00:1f.3`.
pub fn device_dir_name(f: &PciFunction) -> String {
    format!("{}", f.address)
}

/// `vendor`: `0x8086\n`.
pub fn vendor(f: &PciFunction) -> String {
    format!("0x{:04x}\n", f.vendor)
}

/// `device`: `0x2930\n`.
pub fn device(f: &PciFunction) -> String {
    format!("0x{:04x}\n", f.device)
}

/// `subsystem_vendor`.
pub fn subsystem_vendor(f: &PciFunction) -> String {
    format!("0x{:04x}\n", f.subsystem_vendor)
}

/// `subsystem_device`.
pub fn subsystem_device(f: &PciFunction) -> String {
    format!("0x{:04x}\n", f.subsystem_id)
}

/// `class`: the 24-bit class code, `0x0c0500\n`.
pub fn class(f: &PciFunction) -> String {
    format!("0x{:06x}\n", f.class_code())
}

/// `revision`: `0x02\n`.
pub fn revision(f: &PciFunction) -> String {
    format!("0x{:02x}\n", f.revision)
}

/// `irq`: the interrupt the kernel assigned (decimal).
pub fn irq(assigned: u32) -> String {
    format!("{assigned}\n")
}

/// `resource`: six BAR lines and the ROM line.
pub fn resource(f: &PciFunction) -> String {
    let mut out = String::new();
    for bar in &f.bars {
        let (start, end, flags) = match *bar {
            Bar::Memory {
                address,
                size,
                width,
                prefetchable,
            } => {
                let mut flags = IORESOURCE_MEM | IORESOURCE_SIZEALIGN;
                if prefetchable {
                    flags |= IORESOURCE_PREFETCH | 0x8;
                }
                match width {
                    MemoryWidth::Bits64 => flags |= IORESOURCE_MEM_64 | 0x4,
                    MemoryWidth::Below1M => flags |= 0x2,
                    MemoryWidth::Bits32 => {}
                }
                (address, address + size - 1, flags)
            }
            Bar::Io { port, size } => {
                let flags = IORESOURCE_IO | IORESOURCE_SIZEALIGN | 0x1;
                (
                    u64::from(port),
                    u64::from(port) + u64::from(size) - 1,
                    flags,
                )
            }
            _ => (0, 0, 0),
        };
        out.push_str(&format!("0x{start:016x} 0x{end:016x} 0x{flags:016x}\n"));
    }
    out.push_str(&format!("0x{:016x} 0x{:016x} 0x{:016x}\n", 0, 0, 0));
    out
}
