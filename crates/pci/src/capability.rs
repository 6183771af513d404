//! Capability lists: the conventional list in the first 256 bytes and the PCI Express extended
//! list from 0x100, walked defensively.
//!
//! The conventional list starts at the byte at 0x34 when the status register's CAP_LIST bit is
//! set; each entry is `id, next, …`. Nothing stops a broken or hostile device from pointing
//! `next` back at an earlier entry, into the header, or at the same entry forever, so the walk
//! follows Linux's rules: pointers have their two reserved low bits masked (the specification
//! tells software to), a pointer below 0x40 (inside the standard header) ends the walk with an
//! error, a revisited entry is reported as a loop, and at most [`MAX_CAPABILITIES`] entries are
//! followed ((256 - 0x40) / 4: more cannot fit). An ID of 0xFF means the function stopped
//! answering. Capabilities found before the fault are kept.
//!
//! The extended list is only reachable through ECAM; its entries are `id:16, version:4,
//! next:12`, and the same guards apply with 0x100 as the floor and (4096 - 256) / 8 entries as
//! the bound.
//!
//! MSI, MSI-X and vendor-specific capabilities are parsed here, including the virtio-pci
//! "modern" vendor capabilities that locate the common, notify, ISR and device configuration
//! structures inside the BARs.

use alloc::vec::Vec;
use core::fmt;

use crate::access::{read16, read8, ConfigAccess, EXTENDED_CONFIG_SIZE, LEGACY_CONFIG_SIZE};
use crate::header::{status, CAPABILITIES_POINTER};
use pci_types::capability::MultipleMessageSupport;
use pci_types::PciAddress;

/// Most conventional capabilities a walk follows.
pub const MAX_CAPABILITIES: usize = 48;
/// Most extended capabilities a walk follows.
pub const MAX_EXTENDED_CAPABILITIES: usize = 480;

/// Capability ID: power management.
pub const CAP_ID_PM: u8 = 0x01;
/// Capability ID: message signalled interrupts.
pub const CAP_ID_MSI: u8 = 0x05;
/// Capability ID: vendor specific.
pub const CAP_ID_VENDOR: u8 = 0x09;
/// Capability ID: PCI Express.
pub const CAP_ID_PCIE: u8 = 0x10;
/// Capability ID: MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;

/// A parsed MSI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiCapability {
    /// Offset of the capability header in configuration space.
    pub offset: u8,
    /// Message Control at the time of parsing.
    pub control: u16,
    /// How many vectors the function can use (Multiple Message Capable).
    pub multiple_message_capable: MultipleMessageSupport,
    /// How many vectors are enabled (Multiple Message Enable), as a power-of-two exponent.
    pub multiple_message_enable_log2: u8,
    /// MSI Enable.
    pub enabled: bool,
    /// The address register is 64 bits (the upper dword exists).
    pub is_64bit: bool,
    /// Mask and pending registers exist.
    pub per_vector_masking: bool,
}

impl MsiCapability {
    /// Parse from the capability offset and its Message Control word.
    pub fn from_control(offset: u8, control: u16) -> Self {
        let mmc = ((control >> 1) & 7) as u8;
        MsiCapability {
            offset,
            control,
            // 110b and 111b are reserved; treat as a single vector, as Linux does.
            multiple_message_capable: MultipleMessageSupport::try_from(mmc)
                .unwrap_or(MultipleMessageSupport::Int1),
            multiple_message_enable_log2: ((control >> 4) & 7) as u8,
            enabled: control & 1 != 0,
            is_64bit: control & (1 << 7) != 0,
            per_vector_masking: control & (1 << 8) != 0,
        }
    }

    /// Maximum number of vectors (1, 2, 4, … 32).
    pub fn max_vectors(&self) -> u8 {
        1 << (self.multiple_message_capable as u8)
    }
    /// Offset of Message Control.
    pub fn control_offset(&self) -> u16 {
        u16::from(self.offset) + 2
    }
    /// Offset of Message Address (low dword).
    pub fn address_lo_offset(&self) -> u16 {
        u16::from(self.offset) + 4
    }
    /// Offset of Message Upper Address, when 64-bit.
    pub fn address_hi_offset(&self) -> Option<u16> {
        self.is_64bit.then_some(u16::from(self.offset) + 8)
    }
    /// Offset of Message Data (16 bits).
    pub fn data_offset(&self) -> u16 {
        u16::from(self.offset) + if self.is_64bit { 0x0C } else { 0x08 }
    }
    /// Offset of the Mask Bits register, when per-vector masking is supported.
    pub fn mask_offset(&self) -> Option<u16> {
        let base = u16::from(self.offset) + if self.is_64bit { 0x10 } else { 0x0C };
        self.per_vector_masking.then_some(base)
    }
    /// Offset of the Pending Bits register, when per-vector masking is supported.
    pub fn pending_offset(&self) -> Option<u16> {
        self.mask_offset().map(|m| m + 4)
    }
}

/// A parsed MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Offset of the capability header in configuration space.
    pub offset: u8,
    /// Message Control at the time of parsing.
    pub control: u16,
    /// Number of table entries (Table Size + 1, 1..=2048).
    pub table_size: u16,
    /// BAR (0..=5; 6 and 7 are reserved) holding the table.
    pub table_bir: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the Pending Bit Array.
    pub pba_bir: u8,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u32,
    /// MSI-X Enable.
    pub enabled: bool,
    /// Function Mask: every vector masked regardless of its entry.
    pub function_masked: bool,
}

impl MsixCapability {
    /// Parse from the capability offset, Message Control and the Table and PBA dwords.
    pub fn from_registers(offset: u8, control: u16, table: u32, pba: u32) -> Self {
        MsixCapability {
            offset,
            control,
            table_size: (control & 0x7FF) + 1,
            table_bir: (table & 7) as u8,
            table_offset: table & !7,
            pba_bir: (pba & 7) as u8,
            pba_offset: pba & !7,
            enabled: control & (1 << 15) != 0,
            function_masked: control & (1 << 14) != 0,
        }
    }

    /// Offset of Message Control.
    pub fn control_offset(&self) -> u16 {
        u16::from(self.offset) + 2
    }
}

/// A vendor-specific capability, returned raw: its layout is the vendor's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VendorCapability {
    /// Offset of the capability header in configuration space.
    pub offset: u8,
    /// The capability's bytes from its header on, `cap_len` long (byte 2, clamped to the end of
    /// the 256-byte space and to at least the 3-byte header).
    pub bytes: Vec<u8>,
}

impl VendorCapability {
    /// Interpret as a virtio-pci `virtio_pci_cap`.
    pub fn virtio(&self) -> Result<VirtioPciCap, VirtioCapError> {
        VirtioPciCap::parse(&self.bytes)
    }
}

/// virtio-pci configuration structure type (`cfg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioCfgType {
    /// Common configuration (1).
    Common,
    /// Notifications (2); carries `notify_off_multiplier`.
    Notify,
    /// ISR status (3).
    Isr,
    /// Device-specific configuration (4).
    Device,
    /// PCI configuration access window (5).
    PciCfg,
    /// Shared memory region (8).
    SharedMemory,
    /// Vendor data (9).
    Vendor,
    /// Any other value; drivers ignore such capabilities.
    Other(u8),
}

impl VirtioCfgType {
    fn from_byte(b: u8) -> Self {
        match b {
            1 => VirtioCfgType::Common,
            2 => VirtioCfgType::Notify,
            3 => VirtioCfgType::Isr,
            4 => VirtioCfgType::Device,
            5 => VirtioCfgType::PciCfg,
            8 => VirtioCfgType::SharedMemory,
            9 => VirtioCfgType::Vendor,
            other => VirtioCfgType::Other(other),
        }
    }
}

/// A parsed `virtio_pci_cap`: where a virtio configuration structure lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioPciCap {
    /// Which structure.
    pub cfg_type: VirtioCfgType,
    /// BAR holding it (0..=5).
    pub bar: u8,
    /// Distinguishes several capabilities of one type (shared memory regions).
    pub id: u8,
    /// Offset of the structure in the BAR.
    pub offset: u32,
    /// Length of the structure.
    pub length: u32,
    /// For [`VirtioCfgType::Notify`]: queue `q`'s notify address is
    /// `offset + queue_notify_off(q) * notify_off_multiplier`.
    pub notify_off_multiplier: Option<u32>,
}

/// Why a vendor capability is not a usable `virtio_pci_cap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirtioCapError {
    /// `cap_len` is below the 16 bytes of `virtio_pci_cap` (20 for a notify capability).
    TooShort {
        /// The capability's length.
        len: usize,
    },
    /// `bar` is not 0..=5; the virtio specification says to ignore the capability.
    ReservedBar(u8),
}

impl fmt::Display for VirtioCapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VirtioCapError::TooShort { len } => {
                write!(f, "virtio capability too short ({len} bytes)")
            }
            VirtioCapError::ReservedBar(b) => write!(f, "virtio capability names reserved BAR {b}"),
        }
    }
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl VirtioPciCap {
    /// Parse a `virtio_pci_cap` from the capability's bytes (header included).
    pub fn parse(bytes: &[u8]) -> Result<Self, VirtioCapError> {
        if bytes.len() < 16 {
            return Err(VirtioCapError::TooShort { len: bytes.len() });
        }
        let cfg_type = VirtioCfgType::from_byte(bytes[3]);
        let bar = bytes[4];
        if bar > 5 {
            return Err(VirtioCapError::ReservedBar(bar));
        }
        let notify_off_multiplier = if cfg_type == VirtioCfgType::Notify {
            if bytes.len() < 20 {
                return Err(VirtioCapError::TooShort { len: bytes.len() });
            }
            Some(le32(bytes, 16))
        } else {
            None
        };
        Ok(VirtioPciCap {
            cfg_type,
            bar,
            id: bytes[5],
            offset: le32(bytes, 8),
            length: le32(bytes, 12),
            notify_off_multiplier,
        })
    }
}

/// One entry of the conventional capability list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// MSI (0x05).
    Msi(MsiCapability),
    /// MSI-X (0x11).
    MsiX(MsixCapability),
    /// Vendor specific (0x09), raw.
    Vendor(VendorCapability),
    /// Any other capability, by ID and offset.
    Other {
        /// Capability ID.
        id: u8,
        /// Offset of its header.
        offset: u8,
    },
}

impl Capability {
    /// The capability ID.
    pub fn id(&self) -> u8 {
        match self {
            Capability::Msi(_) => CAP_ID_MSI,
            Capability::MsiX(_) => CAP_ID_MSIX,
            Capability::Vendor(_) => CAP_ID_VENDOR,
            Capability::Other { id, .. } => *id,
        }
    }

    /// Offset of the capability's header.
    pub fn offset(&self) -> u8 {
        match self {
            Capability::Msi(c) => c.offset,
            Capability::MsiX(c) => c.offset,
            Capability::Vendor(c) => c.offset,
            Capability::Other { offset, .. } => *offset,
        }
    }
}

/// Name of a conventional capability ID, as lspci spells it (`None` for unknown IDs).
pub fn capability_name(id: u8) -> Option<&'static str> {
    Some(match id {
        0x01 => "Power Management",
        0x02 => "AGP",
        0x03 => "Vital Product Data",
        0x04 => "Slot ID",
        0x05 => "MSI",
        0x06 => "CompactPCI hot-swap",
        0x07 => "PCI-X",
        0x08 => "HyperTransport",
        0x09 => "Vendor Specific Information",
        0x0A => "Debug port",
        0x0B => "CompactPCI central resource control",
        0x0C => "Hot-plug capable",
        0x0D => "Subsystem",
        0x0E => "AGP3",
        0x0F => "Secure device",
        0x10 => "Express",
        0x11 => "MSI-X",
        0x12 => "SATA HBA",
        0x13 => "PCI Advanced Features",
        0x14 => "Enhanced Allocation",
        0x15 => "Flattening Portal Bridge",
        _ => return None,
    })
}

/// One entry of the extended capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendedCapability {
    /// Extended capability ID (e.g. 0x0001 AER, 0x000E ARI, 0x0010 SR-IOV).
    pub id: u16,
    /// Capability version.
    pub version: u8,
    /// Offset of its header (>= 0x100).
    pub offset: u16,
}

/// Why a capability walk stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapabilityError {
    /// A pointer into the standard header (below 0x40) or, for the extended list, below 0x100
    /// or past the end of configuration space.
    PointerOutOfRange {
        /// The entry whose `next` it was (0x34 for the list head).
        from: u16,
        /// The offending pointer.
        pointer: u16,
    },
    /// An entry pointed back at one already visited.
    Loop {
        /// The entry whose `next` closes the loop.
        from: u16,
        /// The revisited entry.
        pointer: u16,
    },
    /// More entries than can fit.
    TooMany,
    /// An entry read as all ones: the function stopped answering.
    AllOnes {
        /// The entry's offset.
        at: u16,
    },
}

impl fmt::Display for CapabilityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CapabilityError::PointerOutOfRange { from, pointer } => {
                write!(
                    f,
                    "capability pointer {pointer:#x} at {from:#x} is out of range"
                )
            }
            CapabilityError::Loop { from, pointer } => {
                write!(
                    f,
                    "capability at {from:#x} points back to {pointer:#x} (loop)"
                )
            }
            CapabilityError::TooMany => f.write_str("too many capabilities (chain does not end)"),
            CapabilityError::AllOnes { at } => write!(f, "capability at {at:#x} reads all ones"),
        }
    }
}

/// What a walk found, and why it stopped if not at the end of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityWalk<T> {
    /// Entries in list order, up to the fault if any.
    pub capabilities: Vec<T>,
    /// The fault that ended the walk.
    pub error: Option<CapabilityError>,
}

impl<T> Default for CapabilityWalk<T> {
    fn default() -> Self {
        CapabilityWalk {
            capabilities: Vec::new(),
            error: None,
        }
    }
}

fn parse_capability<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
    offset: u8,
    id: u8,
) -> Capability {
    let at = u16::from(offset);
    match id {
        CAP_ID_MSI => Capability::Msi(MsiCapability::from_control(
            offset,
            read16(access, addr, at + 2),
        )),
        CAP_ID_MSIX => Capability::MsiX(MsixCapability::from_registers(
            offset,
            read16(access, addr, at + 2),
            access.read32(addr, at + 4),
            access.read32(addr, at + 8),
        )),
        CAP_ID_VENDOR => {
            let room = LEGACY_CONFIG_SIZE - at;
            let len = u16::from(read8(access, addr, at + 2)).clamp(3, room);
            let bytes = (0..len).map(|i| read8(access, addr, at + i)).collect();
            Capability::Vendor(VendorCapability { offset, bytes })
        }
        _ => Capability::Other { id, offset },
    }
}

/// Walk the conventional capability list of `addr`. Empty when the status register's CAP_LIST
/// bit is clear.
pub fn capabilities<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
) -> CapabilityWalk<Capability> {
    let mut walk = CapabilityWalk::default();
    if !status(access, addr).has_capability_list() {
        return walk;
    }
    let mut visited = [false; 64];
    let mut from = CAPABILITIES_POINTER;
    let mut pointer = u16::from(read8(access, addr, CAPABILITIES_POINTER) & !3);
    while pointer != 0 {
        if pointer < 0x40 {
            walk.error = Some(CapabilityError::PointerOutOfRange { from, pointer });
            break;
        }
        if visited[usize::from(pointer / 4)] {
            walk.error = Some(CapabilityError::Loop { from, pointer });
            break;
        }
        if walk.capabilities.len() == MAX_CAPABILITIES {
            walk.error = Some(CapabilityError::TooMany);
            break;
        }
        visited[usize::from(pointer / 4)] = true;
        let header = read16(access, addr, pointer);
        let (id, next) = (header as u8, (header >> 8) as u8);
        if id == 0xFF {
            walk.error = Some(CapabilityError::AllOnes { at: pointer });
            break;
        }
        // ID 0 is a null capability: skipped, but its `next` is followed (as Linux does).
        if id != 0 {
            walk.capabilities
                .push(parse_capability(access, addr, pointer as u8, id));
        }
        from = pointer;
        pointer = u16::from(next & !3);
    }
    walk
}

/// Walk the PCI Express extended capability list of `addr`. Empty when `access` does not reach
/// past 256 bytes (legacy port access) or when the dword at 0x100 is 0 or all ones (no list;
/// conventional PCI functions behind an ECAM window read it that way).
pub fn extended_capabilities<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
) -> CapabilityWalk<ExtendedCapability> {
    let mut walk = CapabilityWalk::default();
    if access.config_size() < EXTENDED_CONFIG_SIZE {
        return walk;
    }
    let mut visited = [false; (EXTENDED_CONFIG_SIZE / 4) as usize];
    let mut from = 0u16;
    let mut pointer = LEGACY_CONFIG_SIZE;
    loop {
        if !(LEGACY_CONFIG_SIZE..EXTENDED_CONFIG_SIZE).contains(&pointer) {
            walk.error = Some(CapabilityError::PointerOutOfRange { from, pointer });
            break;
        }
        if visited[usize::from(pointer / 4)] {
            walk.error = Some(CapabilityError::Loop { from, pointer });
            break;
        }
        if walk.capabilities.len() == MAX_EXTENDED_CAPABILITIES {
            walk.error = Some(CapabilityError::TooMany);
            break;
        }
        visited[usize::from(pointer / 4)] = true;
        let header = access.read32(addr, pointer);
        if header == 0xFFFF_FFFF {
            if pointer != LEGACY_CONFIG_SIZE {
                walk.error = Some(CapabilityError::AllOnes { at: pointer });
            }
            break;
        }
        if header == 0 {
            break;
        }
        let id = header as u16;
        if id != 0 {
            walk.capabilities.push(ExtendedCapability {
                id,
                version: ((header >> 16) & 0xF) as u8,
                offset: pointer,
            });
        }
        let next = ((header >> 20) as u16) & !3;
        if next == 0 {
            break;
        }
        from = pointer;
        pointer = next;
    }
    walk
}
