//! MSI and MSI-X: x86 message composition and the programming sequences.
//!
//! A message-signalled interrupt is a memory write the device performs: on x86 to an address in
//! the 0xFEEx_xxxx window that the local APICs decode, whose bits select the destination CPU,
//! and with data whose low byte is the IDT vector. So routing an interrupt is writing that
//! address/data pair into the device: into the MSI capability (one pair, 1..=32 consecutive
//! vectors whose low bits the device varies) or into an MSI-X table entry in a BAR (one pair per
//! vector, up to 2048, each with its own mask bit).
//!
//! Order matters because a device may fire at any moment:
//!
//! * **MSI**: disable (and mask all vectors when the function has per-vector masking), write the
//!   address and data, set the number of enabled vectors, enable, unmask; then disable INTx (a
//!   function must not raise both). Disabling clears the enable bit and re-enables INTx.
//! * **MSI-X**: set Enable together with Function Mask (some devices only decode their table
//!   once MSI-X is enabled, and the function mask keeps every vector silent meanwhile), mask every
//!   table entry, write each entry's address/data while that entry is masked (the specification
//!   leaves the result undefined if an unmasked entry is rewritten), unmask the entries in use,
//!   disable INTx, and only then clear Function Mask. Disabling masks the function and every
//!   entry, then clears Enable. [`msix_update_entry`] retargets one vector (an affinity change)
//!   under its mask bit.
//!
//! The table lives in device memory the kernel maps; it is reached through [`MsixTable`], which
//! the kernel implements with MMIO on the mapped BAR and tests with
//! [`FakeMsixTable`](crate::FakeMsixTable).

use core::fmt;

use crate::access::{read16, ConfigAccess};
use crate::capability::{MsiCapability, MsixCapability};
use crate::header::{command, set_command};
use pci_types::{CommandRegister, PciAddress};

/// Base of the x86 interrupt-message address window.
pub const X86_MSI_ADDRESS_BASE: u32 = 0xFEE0_0000;

/// How the destination field is interpreted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationMode {
    /// Destination is one local APIC ID.
    Physical,
    /// Destination is a logical APIC ID / cluster mask.
    Logical,
}

/// The x86 delivery modes a device interrupt may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Deliver the vector to the destination (000b).
    Fixed,
    /// Deliver to the lowest-priority CPU among the destinations (001b).
    LowestPriority,
    /// Non-maskable interrupt (100b); the vector is ignored.
    Nmi,
}

/// An x86 interrupt message's parameters. Trigger mode is always edge: MSI is edge triggered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86Msi {
    /// Local APIC ID of the destination (8-bit xAPIC destination).
    pub dest_apic_id: u8,
    /// IDT vector.
    pub vector: u8,
    /// Physical or logical destination.
    pub dest_mode: DestinationMode,
    /// Redirection hint: with logical mode, lets the chipset pick among the destinations.
    pub redirection_hint: bool,
    /// Delivery mode.
    pub delivery: DeliveryMode,
}

impl X86Msi {
    /// Fixed delivery of `vector` to the CPU whose APIC ID is `dest_apic_id`, physical
    /// destination, no redirection: what device interrupts use.
    pub fn fixed(dest_apic_id: u8, vector: u8) -> Self {
        X86Msi {
            dest_apic_id,
            vector,
            dest_mode: DestinationMode::Physical,
            redirection_hint: false,
            delivery: DeliveryMode::Fixed,
        }
    }

    /// The address/data pair: address `0xFEE0_0000 | dest << 12 | RH << 3 | DM << 2`, data
    /// `vector | delivery << 8` with bit 15 (trigger) clear for edge.
    pub fn compose(&self) -> MsiMessage {
        let address = X86_MSI_ADDRESS_BASE
            | (u32::from(self.dest_apic_id) << 12)
            | (u32::from(self.redirection_hint) << 3)
            | (u32::from(self.dest_mode == DestinationMode::Logical) << 2);
        let delivery: u32 = match self.delivery {
            DeliveryMode::Fixed => 0b000,
            DeliveryMode::LowestPriority => 0b001,
            DeliveryMode::Nmi => 0b100,
        };
        MsiMessage {
            address: u64::from(address),
            data: u32::from(self.vector) | (delivery << 8),
        }
    }
}

/// A message address/data pair as written into the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (x86: always below 4 GiB).
    pub address: u64,
    /// Message data (16 bits used).
    pub data: u32,
}

impl MsiMessage {
    /// The x86 destination APIC ID encoded in the address.
    pub fn x86_destination(&self) -> u8 {
        (self.address >> 12) as u8
    }
    /// The x86 vector encoded in the data.
    pub fn x86_vector(&self) -> u8 {
        self.data as u8
    }
}

/// Why an MSI or MSI-X programming request was refused. Nothing has been written when one is
/// returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsiError {
    /// MSI vector counts are powers of two from 1 to 32.
    CountNotPowerOfTwo(usize),
    /// More vectors than the function supports.
    TooManyVectors {
        /// Requested.
        requested: usize,
        /// Supported (MSI's Multiple Message Capable, MSI-X's table size).
        supported: usize,
    },
    /// With several MSI vectors the device ORs the index into the data's low bits, so the base
    /// vector must be aligned to the count.
    MisalignedVector {
        /// The base vector.
        vector: u8,
        /// The count.
        count: usize,
    },
    /// The function's MSI address register is 32-bit and the address is above 4 GiB.
    AddressNeeds64Bit(u64),
    /// The data does not fit MSI's 16-bit data register.
    DataTooWide(u32),
    /// No such vector (MSI) or table entry (MSI-X).
    NoSuchVector(usize),
    /// The function has no per-vector mask bits.
    NoMasking,
}

impl fmt::Display for MsiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MsiError::CountNotPowerOfTwo(n) => {
                write!(f, "MSI vector count {n} is not 1, 2, 4, 8, 16 or 32")
            }
            MsiError::TooManyVectors {
                requested,
                supported,
            } => {
                write!(
                    f,
                    "{requested} vectors requested, the function supports {supported}"
                )
            }
            MsiError::MisalignedVector { vector, count } => {
                write!(
                    f,
                    "base vector {vector:#x} is not aligned to {count} vectors"
                )
            }
            MsiError::AddressNeeds64Bit(a) => {
                write!(f, "address {a:#x} needs a 64-bit MSI capability")
            }
            MsiError::DataTooWide(d) => write!(f, "data {d:#x} does not fit 16 bits"),
            MsiError::NoSuchVector(i) => write!(f, "no vector {i}"),
            MsiError::NoMasking => f.write_str("the function has no per-vector masking"),
        }
    }
}

/// Write the 16-bit register in the upper half of the dword at `cap` (MSI and MSI-X Message
/// Control sit there; the lower half is the read-only ID/next pair, so rewriting it is harmless).
fn write_control<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress, cap: u8, control: u16) {
    let at = u16::from(cap);
    let low = access.read32(addr, at) & 0xFFFF;
    access.write32(addr, at, low | (u32::from(control) << 16));
}

fn set_intx_disabled<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress, disabled: bool) {
    let mut cmd = command(access, addr);
    cmd.set(CommandRegister::INTERRUPT_DISABLE, disabled);
    set_command(access, addr, cmd);
}

const MSI_ENABLE: u16 = 1;
const MSI_MME_MASK: u16 = 0b111 << 4;

/// Program and enable MSI with `count` vectors (a power of two up to the capability's maximum)
/// whose first is `msg`; the device sends `msg.data | i` for vector `i`. INTx is disabled.
pub fn msi_enable<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
    cap: &MsiCapability,
    msg: MsiMessage,
    count: usize,
) -> Result<(), MsiError> {
    if !count.is_power_of_two() || count > 32 {
        return Err(MsiError::CountNotPowerOfTwo(count));
    }
    let supported = usize::from(cap.max_vectors());
    if count > supported {
        return Err(MsiError::TooManyVectors {
            requested: count,
            supported,
        });
    }
    if msg.data > 0xFFFF {
        return Err(MsiError::DataTooWide(msg.data));
    }
    if msg.data as usize & (count - 1) != 0 {
        return Err(MsiError::MisalignedVector {
            vector: msg.data as u8,
            count,
        });
    }
    if !cap.is_64bit && msg.address > u64::from(u32::MAX) {
        return Err(MsiError::AddressNeeds64Bit(msg.address));
    }
    let control = read16(access, addr, cap.control_offset());
    write_control(
        access,
        addr,
        cap.offset,
        control & !(MSI_ENABLE | MSI_MME_MASK),
    );
    if let Some(mask) = cap.mask_offset() {
        access.write32(addr, mask, u32::MAX);
    }
    access.write32(addr, cap.address_lo_offset(), msg.address as u32);
    if let Some(hi) = cap.address_hi_offset() {
        access.write32(addr, hi, (msg.address >> 32) as u32);
    }
    access.write32(addr, cap.data_offset(), msg.data);
    let mme = (count.trailing_zeros() as u16) << 4;
    let control = (control & !MSI_MME_MASK) | mme | MSI_ENABLE;
    write_control(access, addr, cap.offset, control);
    if let Some(mask) = cap.mask_offset() {
        let in_use = if count == 32 {
            u32::MAX
        } else {
            (1u32 << count) - 1
        };
        access.write32(addr, mask, !in_use);
    }
    set_intx_disabled(access, addr, true);
    Ok(())
}

/// Disable MSI and re-enable INTx.
pub fn msi_disable<A: ConfigAccess + ?Sized>(access: &A, addr: PciAddress, cap: &MsiCapability) {
    let control = read16(access, addr, cap.control_offset());
    write_control(
        access,
        addr,
        cap.offset,
        control & !(MSI_ENABLE | MSI_MME_MASK),
    );
    set_intx_disabled(access, addr, false);
}

/// Retarget an enabled MSI function (an affinity change) to `msg`, keeping its vector count.
/// With per-vector masking the vectors are masked while the address and data are rewritten and
/// their previous mask state restored; without it MSI is disabled for the rewrite (a message
/// must never be sent from a half-written address/data pair) and enabled again. INTx stays
/// disabled throughout.
pub fn msi_set_message<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
    cap: &MsiCapability,
    msg: MsiMessage,
) -> Result<(), MsiError> {
    if msg.data > 0xFFFF {
        return Err(MsiError::DataTooWide(msg.data));
    }
    if !cap.is_64bit && msg.address > u64::from(u32::MAX) {
        return Err(MsiError::AddressNeeds64Bit(msg.address));
    }
    let control = read16(access, addr, cap.control_offset());
    let count = 1usize << ((control & MSI_MME_MASK) >> 4);
    if msg.data as usize & (count - 1) != 0 {
        return Err(MsiError::MisalignedVector {
            vector: msg.data as u8,
            count,
        });
    }
    let saved_mask = cap.mask_offset().map(|at| (at, access.read32(addr, at)));
    match saved_mask {
        Some((at, _)) => access.write32(addr, at, u32::MAX),
        None => write_control(access, addr, cap.offset, control & !MSI_ENABLE),
    }
    access.write32(addr, cap.address_lo_offset(), msg.address as u32);
    if let Some(hi) = cap.address_hi_offset() {
        access.write32(addr, hi, (msg.address >> 32) as u32);
    }
    access.write32(addr, cap.data_offset(), msg.data);
    match saved_mask {
        Some((at, bits)) => access.write32(addr, at, bits),
        None => write_control(access, addr, cap.offset, control),
    }
    Ok(())
}

/// Mask or unmask MSI vector `index` (functions with per-vector masking only).
pub fn msi_set_vector_masked<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
    cap: &MsiCapability,
    index: usize,
    masked: bool,
) -> Result<(), MsiError> {
    let Some(mask_at) = cap.mask_offset() else {
        return Err(MsiError::NoMasking);
    };
    if index >= usize::from(cap.max_vectors()) {
        return Err(MsiError::NoSuchVector(index));
    }
    let bits = access.read32(addr, mask_at);
    let bits = if masked {
        bits | (1 << index)
    } else {
        bits & !(1 << index)
    };
    access.write32(addr, mask_at, bits);
    Ok(())
}

/// Size of one MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u32 = 16;
/// Entry offset of Message Address (low dword).
pub const MSIX_ENTRY_ADDR_LO: u32 = 0;
/// Entry offset of Message Upper Address.
pub const MSIX_ENTRY_ADDR_HI: u32 = 4;
/// Entry offset of Message Data.
pub const MSIX_ENTRY_DATA: u32 = 8;
/// Entry offset of Vector Control.
pub const MSIX_ENTRY_VECTOR_CTRL: u32 = 12;
/// Vector Control's mask bit.
pub const MSIX_VECTOR_MASKED: u32 = 1;

const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;

/// Dword access to a function's MSI-X table, relative to the table's start in its BAR.
pub trait MsixTable {
    /// Read the dword at byte `offset` of the table.
    fn read32(&self, offset: u32) -> u32;
    /// Write the dword at byte `offset` of the table.
    fn write32(&self, offset: u32, value: u32);
}

fn entry_offset(index: u16, field: u32) -> u32 {
    u32::from(index) * MSIX_ENTRY_SIZE + field
}

/// Set or clear entry `index`'s mask bit, preserving the reserved bits of Vector Control, and
/// read it back so the (posted) write has reached the device before the caller goes on.
pub fn msix_set_entry_masked<T: MsixTable + ?Sized>(table: &T, index: u16, masked: bool) {
    let at = entry_offset(index, MSIX_ENTRY_VECTOR_CTRL);
    let ctrl = table.read32(at);
    let new = if masked {
        ctrl | MSIX_VECTOR_MASKED
    } else {
        ctrl & !MSIX_VECTOR_MASKED
    };
    if new != ctrl {
        table.write32(at, new);
        let _ = table.read32(at);
    }
}

/// Whether entry `index` is masked.
pub fn msix_entry_masked<T: MsixTable + ?Sized>(table: &T, index: u16) -> bool {
    table.read32(entry_offset(index, MSIX_ENTRY_VECTOR_CTRL)) & MSIX_VECTOR_MASKED != 0
}

fn write_entry<T: MsixTable + ?Sized>(table: &T, index: u16, msg: MsiMessage) {
    table.write32(entry_offset(index, MSIX_ENTRY_ADDR_LO), msg.address as u32);
    table.write32(
        entry_offset(index, MSIX_ENTRY_ADDR_HI),
        (msg.address >> 32) as u32,
    );
    table.write32(entry_offset(index, MSIX_ENTRY_DATA), msg.data);
}

/// Set or clear the MSI-X Function Mask.
pub fn msix_set_function_masked<A: ConfigAccess + ?Sized>(
    access: &A,
    addr: PciAddress,
    cap: &MsixCapability,
    masked: bool,
) {
    let control = read16(access, addr, cap.control_offset());
    let control = if masked {
        control | MSIX_FUNCTION_MASK
    } else {
        control & !MSIX_FUNCTION_MASK
    };
    write_control(access, addr, cap.offset, control);
}

/// Program entries `0..messages.len()` with `messages`, mask the rest, and enable MSI-X in the
/// order given in the module documentation. INTx is disabled.
pub fn msix_enable<A: ConfigAccess + ?Sized, T: MsixTable + ?Sized>(
    access: &A,
    addr: PciAddress,
    cap: &MsixCapability,
    table: &T,
    messages: &[MsiMessage],
) -> Result<(), MsiError> {
    msix_enable_entries(access, addr, cap, table, messages, true)
}

/// As [`msix_enable`], but every entry stays masked: the kernel unmasks an entry when a handler
/// is requested for its vector (Linux's irq startup), so a vector fires only once someone
/// listens.
pub fn msix_enable_masked<A: ConfigAccess + ?Sized, T: MsixTable + ?Sized>(
    access: &A,
    addr: PciAddress,
    cap: &MsixCapability,
    table: &T,
    messages: &[MsiMessage],
) -> Result<(), MsiError> {
    msix_enable_entries(access, addr, cap, table, messages, false)
}

fn msix_enable_entries<A: ConfigAccess + ?Sized, T: MsixTable + ?Sized>(
    access: &A,
    addr: PciAddress,
    cap: &MsixCapability,
    table: &T,
    messages: &[MsiMessage],
    unmask: bool,
) -> Result<(), MsiError> {
    let supported = usize::from(cap.table_size);
    if messages.len() > supported {
        return Err(MsiError::TooManyVectors {
            requested: messages.len(),
            supported,
        });
    }
    let control = read16(access, addr, cap.control_offset());
    write_control(
        access,
        addr,
        cap.offset,
        control | MSIX_ENABLE | MSIX_FUNCTION_MASK,
    );
    for index in 0..cap.table_size {
        msix_set_entry_masked(table, index, true);
    }
    for (index, msg) in messages.iter().enumerate() {
        write_entry(table, index as u16, *msg);
    }
    if unmask {
        for index in 0..messages.len() {
            msix_set_entry_masked(table, index as u16, false);
        }
    }
    set_intx_disabled(access, addr, true);
    write_control(
        access,
        addr,
        cap.offset,
        (control | MSIX_ENABLE) & !MSIX_FUNCTION_MASK,
    );
    Ok(())
}

/// Retarget entry `index` (an affinity change): mask it, write the new pair, and restore its
/// previous mask state.
pub fn msix_update_entry<T: MsixTable + ?Sized>(
    table: &T,
    cap: &MsixCapability,
    index: u16,
    msg: MsiMessage,
) -> Result<(), MsiError> {
    if index >= cap.table_size {
        return Err(MsiError::NoSuchVector(usize::from(index)));
    }
    let was_masked = msix_entry_masked(table, index);
    msix_set_entry_masked(table, index, true);
    write_entry(table, index, msg);
    if !was_masked {
        msix_set_entry_masked(table, index, false);
    }
    Ok(())
}

/// Disable MSI-X: mask the function, mask every entry, clear Enable and Function Mask, and
/// re-enable INTx.
pub fn msix_disable<A: ConfigAccess + ?Sized, T: MsixTable + ?Sized>(
    access: &A,
    addr: PciAddress,
    cap: &MsixCapability,
    table: &T,
) {
    let control = read16(access, addr, cap.control_offset());
    write_control(access, addr, cap.offset, control | MSIX_FUNCTION_MASK);
    for index in 0..cap.table_size {
        msix_set_entry_masked(table, index, true);
    }
    write_control(
        access,
        addr,
        cap.offset,
        control & !(MSIX_ENABLE | MSIX_FUNCTION_MASK),
    );
    set_intx_disabled(access, addr, false);
}
