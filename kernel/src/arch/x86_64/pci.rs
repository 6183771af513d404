//! PCI configuration mechanism #1 (ports 0xCF8/0xCFC, reserved for arch in `io.rs`): the
//! config-space accessor the PCI logic of `lull-pci` runs on, and the one lock every user of
//! the two ports takes (the pair of port accesses must not interleave between CPUs, nor with
//! the AML interpreter's PCI operation regions).

use lull_pci::{ConfigAccess, PciAddress};

use super::port;
use super::sync::IrqSpinCell;

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// Held across each address/data port pair.
static CONF1: IrqSpinCell<()> = IrqSpinCell::new(());

/// Reads the config dword selected by `address` (an 0xCF8 value) under the lock.
pub(super) fn conf1_read(address: u32, data_offset: u16, width: u8) -> u32 {
    let _guard = CONF1.lock();
    port::outl(CONFIG_ADDRESS, address);
    let data = CONFIG_DATA + (data_offset & 3);
    match width {
        1 => u32::from(port::inb(data)),
        2 => u32::from(port::inw(data)),
        _ => port::inl(CONFIG_DATA),
    }
}

/// Writes the config bytes selected by `address` under the lock.
pub(super) fn conf1_write(address: u32, data_offset: u16, width: u8, value: u32) {
    let _guard = CONF1.lock();
    port::outl(CONFIG_ADDRESS, address);
    let data = CONFIG_DATA + (data_offset & 3);
    match width {
        1 => port::outb(data, value as u8),
        2 => port::outw(data, value as u16),
        _ => port::outl(CONFIG_DATA, value),
    }
}

/// The legacy configuration mechanism: segment 0, 256 bytes per function. Config space is a
/// device's own register file, not memory: reprogramming a device through it is the PCI
/// layer's job (as writing an owned port range is a driver's).
pub struct Conf1 {
    _private: (),
}

static CONF1_ACCESS: Conf1 = Conf1 { _private: () };

impl Conf1 {
    /// The accessor (one for the machine).
    pub fn get() -> &'static Conf1 {
        &CONF1_ACCESS
    }
}

impl ConfigAccess for Conf1 {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        match cf8(addr, offset) {
            Some(address) => conf1_read(address, 0, 4),
            None => u32::MAX,
        }
    }

    fn write32(&self, addr: PciAddress, offset: u16, value: u32) {
        if let Some(address) = cf8(addr, offset) {
            conf1_write(address, 0, 4, value);
        }
    }
}

fn cf8(addr: PciAddress, offset: u16) -> Option<u32> {
    if addr.segment() != 0 {
        return None;
    }
    lull_pci::cf8_address(addr.bus(), addr.device(), addr.function(), offset)
}
