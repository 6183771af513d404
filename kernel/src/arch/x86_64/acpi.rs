//! ACPI discovery: the RSDP (the loader's pointer, else the EBDA and BIOS ROM scan), then the
//! static tables through the rust-osdev `acpi` crate (`acpi_tables.rs`: FADT power control, PM
//! timer, SCI, sleep and reset registers; MADT CPUs, IOAPICs, overrides; HPET; MCFG), then the
//! DSDT and SSDTs loaded into Lull's AML interpreter (`acpi_aml.rs`), which gives `\_S5`.
//!
//! Tables live in firmware-reserved memory, identity-mapped. Every table's checksum is
//! verified before it is trusted; a bad one is skipped, never a crash. Without the loader's
//! RSDP pointer the BIOS areas are scanned; page 0 (the EBDA pointer), unmapped to catch null
//! dereferences, is read through a temporary read-only window mapping.

use alloc::vec::Vec;

/// A Generic Address Structure (ACPI 5.2.3.2), as the firmware gave it. Plain data with
/// private fields: only the table parser builds one, and only through an [`AcpiRegister`]
/// (also built here) can anything be read or written at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenericAddress {
    space: AddressSpace,
    bit_width: u8,
    address: u64,
}

impl GenericAddress {
    pub(super) fn new(space: AddressSpace, bit_width: u8, address: u64) -> Self {
        Self {
            space,
            bit_width,
            address,
        }
    }

    /// The address space (memory, I/O ports, other).
    pub fn space(&self) -> AddressSpace {
        self.space
    }

    /// Register width in bits as the table states it (0: unspecified).
    pub fn bit_width(&self) -> u8 {
        self.bit_width
    }

    /// The port number or physical address.
    pub fn address(&self) -> u64 {
        self.address
    }
}

/// A fixed-hardware register the firmware described (PM1 status/enable/control, PM timer,
/// sleep control, SMI command), with the access width the specification gives it. Built only
/// by the table parser, so a read or write goes to the port or MMIO address the firmware named
/// and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiRegister {
    location: GenericAddress,
    width_bytes: u8,
}

impl AcpiRegister {
    pub(super) fn new(location: GenericAddress, width_bytes: u8) -> Self {
        Self {
            location,
            width_bytes,
        }
    }

    /// Where the register is (for reports).
    pub fn location(&self) -> GenericAddress {
        self.location
    }

    /// Reads the register.
    pub fn read(&self) -> u32 {
        read_register(self.location, self.width_bytes)
    }

    /// Writes the register.
    pub fn write(&self, value: u32) {
        write_register(self.location, self.width_bytes, value)
    }
}

/// An MMIO block a table names (the HPET's registers, an IOAPIC's window): an address only the
/// parser can produce, which the arch drivers for that block take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareMmio(u64);

impl FirmwareMmio {
    pub(super) fn new(address: u64) -> Self {
        Self(address)
    }

    /// The physical address (for reports).
    pub fn address(&self) -> u64 {
        self.0
    }
}

/// Where a `GenericAddress` points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSpace {
    Memory,
    Io,
    Other(u8),
}

/// One interrupt source override from the MADT (ISA IRQ → GSI with polarity/trigger).
#[derive(Debug, Clone, Copy)]
pub struct InterruptOverride {
    pub isa_irq: u8,
    pub gsi: u32,
    pub active_low: bool,
    pub level_triggered: bool,
}

/// One IOAPIC from the MADT.
#[derive(Debug, Clone, Copy)]
pub struct IoApicEntry {
    pub id: u8,
    pub address: FirmwareMmio,
    pub gsi_base: u32,
}

/// One PCI Express ECAM window from the MCFG: configuration space of buses
/// `bus_start..=bus_end` of a segment, 1 MiB per bus from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamRegion {
    pub base: FirmwareMmio,
    pub segment: u16,
    pub bus_start: u8,
    pub bus_end: u8,
}

/// A definition block (DSDT or SSDT) the table walk found: where it is, whole, header
/// included. Only the parser makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareTable {
    address: u64,
    length: u32,
}

impl FirmwareTable {
    pub(super) fn new(address: u64, length: u32) -> Self {
        Self { address, length }
    }

    /// Physical address (for reports).
    pub fn address(&self) -> u64 {
        self.address
    }

    /// The table's bytes, if it is inside the identity map and its checksum holds.
    pub(super) fn bytes(&self) -> Option<&'static [u8]> {
        let length = self.length as usize;
        let end = self.address.checked_add(length as u64)?;
        if self.address < 4096 || end > 1 << 32 || !(36..=16 << 20).contains(&length) {
            return None;
        }
        let bytes = read_bytes(self.address, length);
        checksum_ok(bytes).then_some(bytes)
    }
}

/// What Lull uses from the ACPI tables.
#[derive(Debug, Clone, Default)]
pub struct AcpiInfo {
    pub rsdp_address: u64,
    pub revision: u8,
    pub oem_id: [u8; 6],
    pub tables: Vec<[u8; 4]>,
    pub local_apic_ids: Vec<u32>,
    pub io_apics: Vec<IoApicEntry>,
    pub overrides: Vec<InterruptOverride>,
    pub sci_irq: Option<u16>,
    /// The SMI command port (written `acpi_enable_value` to switch to ACPI mode).
    pub smi_command: Option<AcpiRegister>,
    pub acpi_enable_value: u8,
    /// PM1a status register (the first half of the PM1a event block).
    pub pm1a_status: Option<AcpiRegister>,
    /// PM1a enable register (the second half of the PM1a event block).
    pub pm1a_enable: Option<AcpiRegister>,
    pub pm1a_control_block: Option<AcpiRegister>,
    pub pm1b_control_block: Option<AcpiRegister>,
    pub pm_timer: Option<AcpiRegister>,
    pub pm_timer_32bit: bool,
    pub hardware_reduced: bool,
    pub sleep_control: Option<AcpiRegister>,
    /// Hardware-reduced sleep status register (WAK_STS, bit 7).
    pub sleep_status: Option<AcpiRegister>,
    /// The FADT's reset register and the value that resets the machine.
    pub reset_register: Option<AcpiRegister>,
    pub reset_value: u8,
    pub hpet_address: Option<FirmwareMmio>,
    /// PCI Express configuration windows (MCFG), for the PCI subsystem.
    pub pci_ecam: Vec<EcamRegion>,
    /// The DSDT (first) and SSDTs, as loaded into the AML interpreter.
    pub aml_tables: Vec<FirmwareTable>,
    pub warnings: Vec<alloc::string::String>,
}

pub(super) fn read_bytes(address: u64, length: usize) -> &'static [u8] {
    // SAFETY: callers pass ranges inside ACPI tables (or the first MiB above page 0), which
    // firmware keeps reserved and the kernel keeps identity-mapped for its whole life.
    unsafe { core::slice::from_raw_parts(address as usize as *const u8, length) }
}

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    bytes
        .get(offset..offset + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .unwrap_or(0)
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)) == 0
}

/// End of the first MiB, the legacy BIOS areas: the BIOS data area (page 0), the EBDA and the
/// BIOS ROM area 0xE0000-0xFFFFF, where firmware without a loader hint leaves the RSDP.
const BIOS_AREA_END: u64 = 0x10_0000;
/// Bytes the checksums of an RSDP cover: revision 0 (ACPI 1.0), revision 2 and later.
const RSDP_V1_LENGTH: usize = 20;
const RSDP_V2_LENGTH: usize = 36;

/// Copies `[start, start + length)` of the first MiB into an owned buffer; `None` if the range
/// leaves the first MiB or page 0 cannot be mapped.
///
/// Page 0 (the BIOS data area, holding the EBDA pointer) is unmapped in the kernel's address
/// space so that null dereferences fault; it is read through a temporary read-only mapping in
/// the kernel window, unmapped again (on every CPU) before this returns. The rest of the first
/// MiB is identity-mapped.
fn copy_bios_area(start: u64, length: usize) -> Option<Vec<u8>> {
    let end = start.checked_add(length as u64)?;
    if end > BIOS_AREA_END {
        return None;
    }
    let mut bytes = Vec::with_capacity(length);
    if start < 4096 {
        let page_end = end.min(4096);
        let copied = super::kmap::copy_unmapped_firmware_page(
            0,
            start as usize,
            (page_end - start) as usize,
        )
        .ok()?;
        bytes.extend_from_slice(&copied);
    }
    let rest = start.max(4096);
    if rest < end {
        bytes.extend_from_slice(read_bytes(rest, (end - rest) as usize));
    }
    Some(bytes)
}

/// Whether `bytes` starts with a valid RSDP: signature, the ACPI 1.0 checksum over the first
/// 20 bytes and, for revision 2 or later, the extended checksum over all 36 (as Linux's
/// `acpi_tb_validate_rsdp`; the length field is not trusted).
fn rsdp_valid(bytes: &[u8]) -> bool {
    let Some(v1) = bytes.get(..RSDP_V1_LENGTH) else {
        return false;
    };
    if &v1[..8] != b"RSD PTR " || !checksum_ok(v1) {
        return false;
    }
    v1[15] < 2 || bytes.get(..RSDP_V2_LENGTH).is_some_and(checksum_ok)
}

/// A found RSDP: its address and its first 36 bytes (zero past 20 for revision 0 when the
/// structure ends a scanned area).
struct Rsdp {
    address: u64,
    bytes: [u8; RSDP_V2_LENGTH],
}

impl Rsdp {
    fn new(address: u64, found: &[u8]) -> Self {
        let mut bytes = [0u8; RSDP_V2_LENGTH];
        let length = found.len().min(RSDP_V2_LENGTH);
        bytes[..length].copy_from_slice(&found[..length]);
        Self { address, bytes }
    }
}

/// Scans `area` (a copy of the memory at `base`) for an RSDP on the 16-byte boundaries the
/// specification puts it on.
fn scan_for_rsdp(base: u64, area: &[u8]) -> Option<Rsdp> {
    (0..area.len())
        .step_by(16)
        .find(|&offset| rsdp_valid(&area[offset..]))
        .map(|offset| Rsdp::new(base + offset as u64, &area[offset..]))
}

/// The RSDP at the loader's hint, if it is one.
fn rsdp_at(address: u64) -> Option<Rsdp> {
    let bytes = if address < BIOS_AREA_END {
        copy_bios_area(
            address,
            RSDP_V2_LENGTH.min((BIOS_AREA_END - address) as usize),
        )?
    } else {
        read_bytes(address, RSDP_V2_LENGTH).to_vec()
    };
    rsdp_valid(&bytes).then(|| Rsdp::new(address, &bytes))
}

/// Finds the RSDP: the loader's pointer if it gave one, else the BIOS areas (ACPI 5.2.5.1):
/// the first KiB of the EBDA, whose segment is the word at 0x40E, then 0xE0000-0xFFFFF.
/// Firecracker, for one, passes no pointer in `hvm_start_info`.
fn find_rsdp(hint: Option<u64>) -> Option<Rsdp> {
    if let Some(rsdp) = hint.and_then(rsdp_at) {
        return Some(rsdp);
    }
    let ebda = copy_bios_area(0x40E, 2).map_or(0, |word| (u16_at(&word, 0) as u64) << 4);
    if (0x80000..0xA0000).contains(&ebda) {
        let length = 1024.min(0xA0000 - ebda) as usize;
        if let Some(rsdp) = copy_bios_area(ebda, length).and_then(|area| scan_for_rsdp(ebda, &area))
        {
            return Some(rsdp);
        }
    }
    copy_bios_area(0xE0000, 0x20000).and_then(|area| scan_for_rsdp(0xE0000, &area))
}

/// The in-kernel test of the RSDP scan: validation rejects a wrong signature or checksum,
/// BIOS-area copies stay inside the first MiB, page 0 is read through the window and
/// unmapped again, and a scan without the loader's hint finds `found_at_boot` when that is
/// in the BIOS ROM area (QEMU's firmware puts it there). Returns what went wrong.
#[cfg(feature = "ktest")]
pub fn rsdp_scan_self_test(found_at_boot: Option<u64>) -> Result<(), &'static str> {
    let mut rsdp = [0u8; RSDP_V2_LENGTH];
    rsdp[..8].copy_from_slice(b"RSD PTR ");
    rsdp[15] = 2;
    rsdp[20] = RSDP_V2_LENGTH as u8;
    rsdp[8] = 0u8.wrapping_sub(rsdp[..20].iter().fold(0u8, |s, b| s.wrapping_add(*b)));
    rsdp[32] = 0u8.wrapping_sub(rsdp.iter().fold(0u8, |s, b| s.wrapping_add(*b)));
    if !rsdp_valid(&rsdp) {
        return Err("a well-formed revision 2 RSDP was rejected");
    }
    if rsdp_valid(&rsdp[..RSDP_V1_LENGTH]) {
        return Err("a revision 2 RSDP cut short of its extended checksum was accepted");
    }
    let mut bad = rsdp;
    bad[33] ^= 1;
    if rsdp_valid(&bad) {
        return Err("a bad extended checksum was accepted");
    }
    bad = rsdp;
    bad[9] ^= 1;
    if rsdp_valid(&bad) {
        return Err("a bad ACPI 1.0 checksum was accepted");
    }
    let mut area = alloc::vec![0u8; 64];
    area[32..].copy_from_slice(&rsdp[..32]);
    area[32 + 15] = 0; // revision 0: only the first 20 bytes count
    area[32 + 8] = 0;
    area[32 + 8] = 0u8.wrapping_sub(area[32..52].iter().fold(0u8, |s, b| s.wrapping_add(*b)));
    if scan_for_rsdp(0xE0000, &area).map(|found| found.address) != Some(0xE0020) {
        return Err("the scan missed a revision 0 RSDP on a 16-byte boundary");
    }
    let slots_before = super::kmap::window_slots_in_use();
    if copy_bios_area(0xFFFFF, 2).is_some() || copy_bios_area(0x40E, 2).is_none() {
        return Err("BIOS-area copies are not bounded to the first MiB");
    }
    if super::kmap::window_slots_in_use() != slots_before {
        return Err("page 0 stayed mapped in the window");
    }
    if let Some(address) = found_at_boot.filter(|a| (0xE0000..BIOS_AREA_END).contains(a)) {
        if find_rsdp(None).map(|found| found.address) != Some(address) {
            return Err("the scan without a hint missed the RSDP the loader pointed at");
        }
    }
    Ok(())
}

/// Discovers and parses the tables Lull uses; the AML in `aml_tables` is loaded later (see
/// [`super::acpi_aml::load`]). `None` when there is no ACPI at all.
pub fn discover(rsdp_hint: Option<u64>) -> Option<AcpiInfo> {
    let found = find_rsdp(rsdp_hint)?;
    let mut info = AcpiInfo {
        rsdp_address: found.address,
        revision: found.bytes[15],
        ..AcpiInfo::default()
    };
    info.oem_id.copy_from_slice(&found.bytes[9..15]);
    super::acpi_tables::parse(&mut info, found.address);
    Some(info)
}

/// Reads a register described by a Generic Address Structure the parser built.
fn read_register(register: GenericAddress, width_bytes: u8) -> u32 {
    match register.space {
        AddressSpace::Io => match width_bytes {
            1 => super::port::inb(register.address as u16) as u32,
            2 => super::port::inw(register.address as u16) as u32,
            _ => super::port::inl(register.address as u16),
        },
        AddressSpace::Memory => {
            // SAFETY: ACPI fixed-hardware registers in memory space are MMIO below 4 GiB,
            // identity-mapped uncached; the width comes from the FADT.
            unsafe {
                match width_bytes {
                    1 => core::ptr::read_volatile(register.address as usize as *const u8) as u32,
                    2 => core::ptr::read_volatile(register.address as usize as *const u16) as u32,
                    _ => core::ptr::read_volatile(register.address as usize as *const u32),
                }
            }
        }
        AddressSpace::Other(_) => 0,
    }
}

/// Writes a register described by a Generic Address Structure the parser built.
fn write_register(register: GenericAddress, width_bytes: u8, value: u32) {
    match register.space {
        AddressSpace::Io => match width_bytes {
            1 => super::port::outb(register.address as u16, value as u8),
            2 => super::port::outw(register.address as u16, value as u16),
            _ => super::port::outl(register.address as u16, value),
        },
        AddressSpace::Memory => {
            // SAFETY: as for `read_register`.
            unsafe {
                match width_bytes {
                    1 => {
                        core::ptr::write_volatile(register.address as usize as *mut u8, value as u8)
                    }
                    2 => core::ptr::write_volatile(
                        register.address as usize as *mut u16,
                        value as u16,
                    ),
                    _ => core::ptr::write_volatile(register.address as usize as *mut u32, value),
                }
            }
        }
        AddressSpace::Other(_) => {}
    }
}
