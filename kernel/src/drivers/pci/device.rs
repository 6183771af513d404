//! [`PciDevice`]: what a PCI driver holds (Linux's `struct pci_dev`): the function's
//! address, ids, class and BARs from the scan, config-space access, enabling decoding and bus
//! mastering, BAR mapping through the owned handles (`Mmio`, `IoPorts`) and capability lookup.
// The drivers that use this API (virtio-pci, SMBus) land with the driver model; until then only
// the in-kernel tests and lspci call parts of it.
#![cfg_attr(not(feature = "ktest"), allow(dead_code))]

use alloc::string::String;
use alloc::vec::Vec;

use lull_pci::header::{command, set_command};
use lull_pci::{
    read16, read8, Bar, Capability, CommandRegister, ConfigAccess, PciAddress, PciFunction,
    VendorCapability, VirtioPciCap,
};

use super::config;
use crate::arch::io::{ClaimError, IoPorts};
use crate::arch::mmio::{Mmio, MmioError};

/// Why a PCI operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PciError {
    /// No BAR with that index (0..=5), or the slot is empty / the upper half of a 64-bit BAR.
    NoSuchBar(usize),
    /// The BAR is an I/O BAR where memory was asked for, or the reverse.
    WrongBarKind(usize),
    /// Firmware left the BAR unassigned (address 0).
    BarUnassigned(usize),
    /// The requested part lies outside the BAR.
    OutsideBar { bar: usize, offset: u64, len: u64 },
    /// Mapping or claiming the memory failed (names the holder when busy).
    Mmio(MmioError),
    /// Claiming the ports failed (names the holder when busy).
    Ports(ClaimError),
    /// Memory decoding is off: call `enable_device` first.
    NotEnabled,
    /// The function has no interrupt of the kinds asked for (or too few vectors).
    NoIrq(String),
    /// IRQ vectors are already allocated for the function.
    VectorsAllocated,
    /// No IRQ vectors are allocated for the function.
    NoVectors,
    /// An IRQ of the function still has a handler (`free_irq` it first).
    IrqBusy(u32),
}

impl core::fmt::Display for PciError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PciError::NoSuchBar(i) => write!(f, "no BAR {i}"),
            PciError::WrongBarKind(i) => write!(f, "BAR {i} is not of the kind asked for"),
            PciError::BarUnassigned(i) => write!(f, "BAR {i} has no address assigned"),
            PciError::OutsideBar { bar, offset, len } => {
                write!(f, "{offset:#x}+{len:#x} lies outside BAR {bar}")
            }
            PciError::Mmio(e) => write!(f, "{e}"),
            PciError::Ports(e) => write!(f, "{e}"),
            PciError::NotEnabled => write!(f, "memory decoding is off (enable the device first)"),
            PciError::NoIrq(why) => write!(f, "{why}"),
            PciError::VectorsAllocated => write!(f, "IRQ vectors are already allocated"),
            PciError::NoVectors => write!(f, "no IRQ vectors are allocated"),
            PciError::IrqBusy(irq) => write!(f, "IRQ {irq} still has a handler"),
        }
    }
}

const COMMAND: u16 = 0x04;

/// A PCI function found by the scan. Cheap to copy (it refers to the scan's record).
#[derive(Clone, Copy, Debug)]
pub struct PciDevice {
    function: &'static PciFunction,
}

impl PciDevice {
    /// The function at `address`, if the scan found one.
    pub fn get(address: PciAddress) -> Option<PciDevice> {
        super::scan()
            .function(address)
            .map(|function| PciDevice { function })
    }

    /// Every function, in scan order.
    pub fn all() -> impl Iterator<Item = PciDevice> {
        super::scan()
            .functions
            .iter()
            .map(|function| PciDevice { function })
    }

    /// The first function with these vendor and device ids.
    pub fn find(vendor: u16, device: u16) -> Option<PciDevice> {
        Self::all().find(|d| d.vendor_id() == vendor && d.device_id() == device)
    }

    /// The scan's record (BARs sized, capabilities parsed).
    pub fn function(&self) -> &'static PciFunction {
        self.function
    }

    /// Segment, bus, device, function.
    pub fn address(&self) -> PciAddress {
        self.function.address
    }

    /// The sysfs name, `0000:00:03.0`.
    pub fn name(&self) -> String {
        alloc::format!("{}", self.function.address)
    }

    /// Vendor ID.
    pub fn vendor_id(&self) -> u16 {
        self.function.vendor
    }

    /// Device ID.
    pub fn device_id(&self) -> u16 {
        self.function.device
    }

    /// Subsystem vendor and device IDs.
    pub fn subsystem(&self) -> (u16, u16) {
        (self.function.subsystem_vendor, self.function.subsystem_id)
    }

    /// The 24-bit class code (class, subclass, prog-if).
    pub fn class_code(&self) -> u32 {
        self.function.class_code()
    }

    /// Revision ID.
    pub fn revision(&self) -> u8 {
        self.function.revision
    }

    /// BAR `index` as sized by the scan ([`Bar::Absent`] past the header's BARs).
    pub fn bar(&self, index: usize) -> Bar {
        self.function
            .bars
            .get(index)
            .copied()
            .unwrap_or(Bar::Absent)
    }

    // ---- config space ------------------------------------------------------------------------

    /// Reads the byte at `offset`.
    pub fn read_config_u8(&self, offset: u16) -> u8 {
        read8(config(), self.address(), offset)
    }

    /// Reads the 16-bit word at `offset` (rounded down to even).
    pub fn read_config_u16(&self, offset: u16) -> u16 {
        read16(config(), self.address(), offset)
    }

    /// Reads the dword at `offset` (rounded down to a multiple of 4).
    pub fn read_config_u32(&self, offset: u16) -> u32 {
        config().read32(self.address(), offset & !3)
    }

    /// Writes the dword at `offset` (rounded down to a multiple of 4).
    pub fn write_config_u32(&self, offset: u16, value: u32) {
        config().write32(self.address(), offset & !3, value)
    }

    /// Writes the 16-bit word at `offset` (even) through its dword. When the other half is the
    /// Status register (offset 4), zeros are written there: its bits are write-1-to-clear.
    pub fn write_config_u16(&self, offset: u16, value: u16) {
        let at = offset & !3;
        let shift = (offset & 2) * 8;
        let mut dword = self.read_config_u32(at);
        if at == COMMAND {
            dword &= 0xFFFF;
        }
        dword = (dword & !(0xFFFF << shift)) | (u32::from(value) << shift);
        self.write_config_u32(at, dword);
    }

    /// Writes the byte at `offset` through its dword (Status written as zeros, as above).
    pub fn write_config_u8(&self, offset: u16, value: u8) {
        let at = offset & !3;
        let shift = (offset & 3) * 8;
        let mut dword = self.read_config_u32(at);
        if at == COMMAND {
            dword &= 0xFFFF;
        }
        dword = (dword & !(0xFF << shift)) | (u32::from(value) << shift);
        self.write_config_u32(at, dword);
    }

    /// The Command register now.
    pub fn command(&self) -> CommandRegister {
        command(config(), self.address())
    }

    fn update_command(&self, set: CommandRegister, clear: CommandRegister) {
        let mut cmd = self.command();
        cmd.insert(set);
        cmd.remove(clear);
        set_command(config(), self.address(), cmd);
    }

    /// Linux's `pci_enable_device`: turns on memory and/or I/O decoding for the kinds of BARs
    /// the function has.
    pub fn enable_device(&self) {
        let mut decode = CommandRegister::empty();
        for bar in &self.function.bars {
            match bar {
                Bar::Memory { .. } => decode |= CommandRegister::MEMORY_ENABLE,
                Bar::Io { .. } => decode |= CommandRegister::IO_ENABLE,
                _ => {}
            }
        }
        self.update_command(decode, CommandRegister::empty());
    }

    /// Linux's `pci_disable_device`: decoding and bus mastering off.
    pub fn disable_device(&self) {
        self.update_command(
            CommandRegister::empty(),
            CommandRegister::MEMORY_ENABLE
                | CommandRegister::IO_ENABLE
                | CommandRegister::BUS_MASTER_ENABLE,
        );
    }

    /// Linux's `pci_set_master`: the function may initiate DMA (and MSI writes).
    pub fn set_master(&self) {
        self.update_command(CommandRegister::BUS_MASTER_ENABLE, CommandRegister::empty());
    }

    /// Linux's `pci_clear_master`.
    pub fn clear_master(&self) {
        self.update_command(CommandRegister::empty(), CommandRegister::BUS_MASTER_ENABLE);
    }

    // ---- BARs --------------------------------------------------------------------------------

    fn memory_bar(&self, index: usize) -> Result<(u64, u64), PciError> {
        match self.bar(index) {
            Bar::Memory { address: 0, .. } => Err(PciError::BarUnassigned(index)),
            Bar::Memory { address, size, .. } => Ok((address, size)),
            Bar::Io { .. } => Err(PciError::WrongBarKind(index)),
            _ => Err(PciError::NoSuchBar(index)),
        }
    }

    /// Claims memory BAR `index` whole for `owner` and maps it (Linux's
    /// `pci_request_region` + `pci_iomap`).
    pub fn map_bar(&self, index: usize, owner: &str) -> Result<Mmio, PciError> {
        let (_, size) = self.memory_bar(index)?;
        self.map_bar_range(index, 0, size, owner)
    }

    /// Claims and maps `len` bytes at `offset` of memory BAR `index` (a virtio-pci structure
    /// the capability list points at). The claim nests in the BAR's entry in `/proc/iomem`.
    pub fn map_bar_range(
        &self,
        index: usize,
        offset: u64,
        len: u64,
        owner: &str,
    ) -> Result<Mmio, PciError> {
        let (address, size) = self.memory_bar(index)?;
        if offset.checked_add(len).is_none_or(|end| end > size) || len == 0 {
            return Err(PciError::OutsideBar {
                bar: index,
                offset,
                len,
            });
        }
        Mmio::claim(address + offset, len, owner).map_err(PciError::Mmio)
    }

    /// The MSI-X table's or PBA's range, mapped without a claim (the driver may claim the BAR).
    pub(super) fn map_bar_unclaimed(
        &self,
        index: usize,
        offset: u64,
        len: u64,
        owner: &str,
    ) -> Result<Mmio, PciError> {
        let (address, size) = self.memory_bar(index)?;
        if offset.checked_add(len).is_none_or(|end| end > size) || len == 0 {
            return Err(PciError::OutsideBar {
                bar: index,
                offset,
                len,
            });
        }
        Mmio::map_unclaimed(address + offset, len, owner).map_err(PciError::Mmio)
    }

    /// Claims I/O BAR `index` for `owner` (Linux's `pci_request_region` on an I/O BAR).
    pub fn request_io_bar(&self, index: usize, owner: &'static str) -> Result<IoPorts, PciError> {
        match self.bar(index) {
            Bar::Io { port, size } => {
                let (Ok(base), Ok(len)) = (u16::try_from(port), u16::try_from(size)) else {
                    return Err(PciError::WrongBarKind(index));
                };
                if base == 0 {
                    return Err(PciError::BarUnassigned(index));
                }
                IoPorts::claim(base, len, owner).map_err(PciError::Ports)
            }
            Bar::Memory { .. } => Err(PciError::WrongBarKind(index)),
            _ => Err(PciError::NoSuchBar(index)),
        }
    }

    // ---- capabilities ------------------------------------------------------------------------

    /// The conventional capability list as the scan parsed it.
    pub fn capabilities(&self) -> &'static [Capability] {
        &self.function.capabilities
    }

    /// The first capability with ID `id` (`lull_pci::capability::CAP_ID_*`).
    pub fn find_capability(&self, id: u8) -> Option<&'static Capability> {
        self.function.capabilities.iter().find(|c| c.id() == id)
    }

    /// The vendor-specific capabilities (ID 0x09), raw, in list order.
    pub fn vendor_capabilities(&self) -> impl Iterator<Item = &'static VendorCapability> {
        self.function.capabilities.iter().filter_map(|c| match c {
            Capability::Vendor(v) => Some(v),
            _ => None,
        })
    }

    /// The virtio-pci capabilities (`virtio_pci_cap`) that parse, in list order (virtio-pci
    /// modern: common, notify, ISR, device config, PCI config access).
    pub fn virtio_capabilities(&self) -> Vec<VirtioPciCap> {
        self.vendor_capabilities()
            .filter_map(|v| v.virtio().ok())
            .collect()
    }

    /// The extended capability IDs present (ECAM only), with their offsets.
    pub fn extended_capabilities(&self) -> &'static [lull_pci::ExtendedCapability] {
        &self.function.extended_capabilities
    }
}
