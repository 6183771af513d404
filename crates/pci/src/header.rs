//! The standard header: register offsets shared by type 0 (endpoint) and type 1 (PCI-to-PCI
//! bridge) headers, and the few accessors the rest of the crate builds on.

use crate::access::{read16, read8, ConfigAccess};
use pci_types::{CommandRegister, HeaderType, PciAddress, StatusRegister};

/// Vendor ID (16 bits); 0xFFFF means no function answers.
pub const VENDOR_ID: u16 = 0x00;
/// Device ID (16 bits).
pub const DEVICE_ID: u16 = 0x02;
/// Command register (16 bits).
pub const COMMAND: u16 = 0x04;
/// Status register (16 bits).
pub const STATUS: u16 = 0x06;
/// Revision ID (8 bits); the class code follows in 0x09..0x0C.
pub const REVISION_ID: u16 = 0x08;
/// Programming interface (8 bits).
pub const PROG_IF: u16 = 0x09;
/// Sub-class (8 bits).
pub const SUBCLASS: u16 = 0x0A;
/// Base class (8 bits).
pub const CLASS: u16 = 0x0B;
/// Header type (8 bits): layout in bits 6:0, multi-function in bit 7.
pub const HEADER_TYPE: u16 = 0x0E;
/// First base address register.
pub const BAR0: u16 = 0x10;
/// Type 1: primary, secondary and subordinate bus numbers (bytes 0x18, 0x19, 0x1A).
pub const BRIDGE_BUS_NUMBERS: u16 = 0x18;
/// Type 0: subsystem vendor ID (16 bits).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2C;
/// Type 0: subsystem ID (16 bits).
pub const SUBSYSTEM_ID: u16 = 0x2E;
/// Capabilities pointer (8 bits), valid when the status register's CAP_LIST bit is set.
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// Interrupt line (8 bits): what firmware wrote, the legacy IRQ it routed, or 0xFF.
pub const INTERRUPT_LINE: u16 = 0x3C;
/// Interrupt pin (8 bits): 0 none, 1..=4 INTA#..INTD#.
pub const INTERRUPT_PIN: u16 = 0x3D;

/// Header-type bit 7: the device implements functions 1..=7 too.
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

/// Decode the layout bits of a header-type byte with pci_types' vocabulary.
pub fn header_type_from_byte(byte: u8) -> HeaderType {
    match byte & 0x7F {
        0 => HeaderType::Endpoint,
        1 => HeaderType::PciPciBridge,
        2 => HeaderType::CardBusBridge,
        other => HeaderType::Unknown(other),
    }
}

/// Number of BARs a header layout has: 6 for endpoints, 2 for PCI-to-PCI bridges, none
/// otherwise (a CardBus bridge's single register is its socket window, not sized here).
pub fn bar_count(header_type: HeaderType) -> usize {
    match header_type {
        HeaderType::Endpoint => 6,
        HeaderType::PciPciBridge => 2,
        _ => 0,
    }
}

/// Read the vendor ID; 0xFFFF means no function.
pub fn vendor_id<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress) -> u16 {
    read16(access, addr, VENDOR_ID)
}

/// Read the command register.
pub fn command<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress) -> CommandRegister {
    CommandRegister::from_bits_retain(read16(access, addr, COMMAND))
}

/// Write the command register. The dword written has zero in its upper half, so no status bit
/// (several are write-1-to-clear) is disturbed.
pub fn set_command<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress, cmd: CommandRegister) {
    access.write32(addr, COMMAND, u32::from(cmd.bits()));
}

/// Read the status register.
pub fn status<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress) -> StatusRegister {
    StatusRegister::new(read16(access, addr, STATUS))
}

/// Read the raw header-type byte (layout and multi-function bit).
pub fn header_type_byte<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress) -> u8 {
    read8(access, addr, HEADER_TYPE)
}

/// A type 1 header's bus numbers, as firmware programmed them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeBuses {
    /// The bus the bridge sits on.
    pub primary: u8,
    /// The bus directly behind it.
    pub secondary: u8,
    /// The highest bus behind it.
    pub subordinate: u8,
}

/// Read a bridge's bus numbers.
pub fn bridge_buses<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress) -> BridgeBuses {
    let v = access.read32(addr, BRIDGE_BUS_NUMBERS);
    BridgeBuses {
        primary: v as u8,
        secondary: (v >> 8) as u8,
        subordinate: (v >> 16) as u8,
    }
}
