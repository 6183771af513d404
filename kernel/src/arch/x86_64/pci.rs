//! PCI configuration space accessors for the logic of `lull-pci`: ECAM ([`Ecam`], the MCFG's
//! memory-mapped windows) and mechanism #1 ([`Conf1`], ports 0xCF8/0xCFC, reserved for arch in
//! `io.rs`), with the one lock every user of the two ports takes (the pair of port accesses must not interleave between CPUs, nor with
//! the AML interpreter's PCI operation regions).

use lull_pci::{ConfigAccess, EcamRegion, PciAddress};

use super::mmio::{Mmio, MmioError};
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

/// The enhanced configuration access mechanism: the MCFG's windows, each mapped uncached (not
/// claimed: `/proc/iomem` shows them as `PCI ECAM` containers), 4 KiB of config space per
/// function. Buses of segment 0 outside every window fall back to [`Conf1`] (256 bytes); other
/// segments' read as all ones.
pub struct Ecam {
    windows: alloc::vec::Vec<(EcamRegion, Mmio)>,
}

impl Ecam {
    /// Maps each MCFG window (`base` is the address of bus 0, MCFG's convention).
    pub fn new(regions: &[EcamRegion]) -> Result<Ecam, MmioError> {
        let mut windows = alloc::vec::Vec::with_capacity(regions.len());
        for region in regions {
            let start = region.base + (u64::from(region.start_bus) << 20);
            let name = alloc::format!("PCI ECAM {:04x}", region.segment);
            let mmio = Mmio::map_unclaimed(start, region.window_len(), &name)?;
            windows.push((*region, mmio));
        }
        Ok(Ecam { windows })
    }

    /// The windows in use.
    pub fn regions(&self) -> impl Iterator<Item = &EcamRegion> {
        self.windows.iter().map(|(region, _)| region)
    }

    fn locate(&self, addr: PciAddress, offset: u16) -> Option<(&Mmio, usize)> {
        self.windows.iter().find_map(|(region, mmio)| {
            let phys = region.physical_address(addr, offset & !3)?;
            Some((mmio, (phys - mmio.phys()) as usize))
        })
    }
}

impl ConfigAccess for Ecam {
    fn read32(&self, addr: PciAddress, offset: u16) -> u32 {
        match self.locate(addr, offset) {
            Some((mmio, at)) => mmio.read_u32(at),
            None => Conf1::get().read32(addr, offset),
        }
    }

    fn write32(&self, addr: PciAddress, offset: u16, value: u32) {
        match self.locate(addr, offset) {
            Some((mmio, at)) => mmio.write_u32(at, value),
            None => Conf1::get().write32(addr, offset, value),
        }
    }

    fn config_size(&self) -> u16 {
        lull_pci::access::EXTENDED_CONFIG_SIZE
    }
}
