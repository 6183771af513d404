//! The static ACPI tables through the rust-osdev `acpi` crate: its `AcpiHandler` (physical
//! "mappings" are the kernel's identity map), the RSDT/XSDT walk and the typed FADT, MADT,
//! HPET and MCFG. What the crate does not check (a FADT shorter than its revision promises,
//! MADT entries of length zero or shorter than their type) is checked here first, so firmware
//! input can neither crash nor hang the parse.

use core::ptr::NonNull;

use acpi::fadt::Fadt;
use acpi::hpet::HpetTable;
use acpi::madt::{Madt, MadtEntry};
use acpi::mcfg::Mcfg;
use acpi::{AcpiHandler, AcpiTable, AcpiTables, PhysicalMapping};

use super::acpi::{
    read_bytes, AcpiInfo, AcpiRegister, AddressSpace, EcamRegion, FirmwareMmio, FirmwareTable,
    GenericAddress, InterruptOverride, IoApicEntry,
};

/// Addresses the identity map always covers (the kernel maps at least the first 4 GiB).
const IDENTITY_MAPPED_END: usize = 1 << 32;
/// An SDT header (signature, length, revision, checksum, OEM fields).
const SDT_HEADER_LENGTH: usize = 36;
/// No table is larger (the RSDT/XSDT walk refuses more, as the hand-written parser did).
const MAX_TABLE: usize = 16 * 1024 * 1024;

/// What a request outside the identity map, or for page 0, gets: zeros, which match no table
/// signature, so the crate skips that table instead of reading unmapped memory.
#[repr(align(4096))]
struct ZeroPage([u8; 4096]);
static ZERO_PAGE: ZeroPage = ZeroPage([0; 4096]);

/// The `acpi` crate's handler. Not constructible outside this module: only the table parser
/// hands physical addresses to it.
#[derive(Clone, Copy, Debug)]
pub struct IdentityMapped {
    _private: (),
}

impl AcpiHandler for IdentityMapped {
    unsafe fn map_physical_region<T>(
        &self,
        physical_address: usize,
        size: usize,
    ) -> PhysicalMapping<Self, T> {
        let (virtual_address, length) =
            mapping_for(physical_address, size, core::mem::size_of::<T>());
        let pointer = NonNull::new(virtual_address as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: `virtual_address` is either the identity-mapped physical range (firmware
        // tables stay reserved and mapped for the kernel's life) or the static zero page,
        // which holds at least `length` bytes; the crate only reads through the mapping.
        unsafe { PhysicalMapping::new(physical_address, pointer, length, length, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Where a mapping of `size` bytes at `physical_address` (for a `T` of `type_size` bytes)
/// points, and how long it is: the identity map when the range (and, for a table header, the
/// whole table it announces) lies inside it, else the zero page. Not generic, so the boot
/// translates one copy of it rather than one per table type.
#[inline(never)]
fn mapping_for(physical_address: usize, size: usize, type_size: usize) -> (usize, usize) {
    let fits = |length: usize| {
        physical_address >= 4096
            && length <= MAX_TABLE
            && physical_address
                .checked_add(length)
                .is_some_and(|end| end <= IDENTITY_MAPPED_END)
    };
    let mut inside = fits(size);
    if inside && size == SDT_HEADER_LENGTH {
        // A table header: the crate goes on to checksum `length` bytes from it, so a
        // length running off the identity map must not get that far. (The RSDP is mapped
        // with the same size; its signature tells it apart.)
        let header = read_bytes(physical_address as u64, SDT_HEADER_LENGTH);
        if &header[..8] != b"RSD PTR " {
            let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            inside = fits(length as usize);
        }
    }
    let fits_zero_page = size.max(type_size) <= ZERO_PAGE.0.len();
    if inside {
        (physical_address, size)
    } else if fits_zero_page {
        (ZERO_PAGE.0.as_ptr() as usize, size)
    } else {
        (ZERO_PAGE.0.as_ptr() as usize, 0)
    }
}

fn convert(address: acpi::address::GenericAddress) -> Option<GenericAddress> {
    if address.address == 0 {
        return None;
    }
    let space = match address.address_space {
        acpi::address::AddressSpace::SystemMemory => AddressSpace::Memory,
        acpi::address::AddressSpace::SystemIo => AddressSpace::Io,
        _ => AddressSpace::Other(0xFF),
    };
    Some(GenericAddress::new(
        space,
        address.bit_width,
        address.address,
    ))
}

/// Reserves an I/O-space register block for ACPI in the port registry (as before: a clash is
/// reported, not fatal).
fn reserve_io(info: &mut AcpiInfo, block: GenericAddress, len: u16) {
    if block.space() != AddressSpace::Io || block.address() > 0xFFFF {
        return;
    }
    match super::io::reserve(block.address() as u16, len, "ACPI") {
        Ok(()) | Err(super::io::ClaimError::Busy { owner: "ACPI", .. }) => {}
        Err(error) => info.warnings.push(alloc::format!(
            "ACPI: cannot reserve ports {:#x}: {error}",
            block.address()
        )),
    }
}

/// Walks the tables from a validated RSDP with the crate and fills `info`.
pub(super) fn parse(info: &mut AcpiInfo, rsdp_address: u64) {
    let handler = IdentityMapped { _private: () };
    // SAFETY: `rsdp_address` is an RSDP `find_rsdp` validated (signature and checksums).
    let tables = match unsafe { AcpiTables::from_rsdp(handler, rsdp_address as usize) } {
        Ok(tables) => tables,
        Err(error) => {
            info.warnings.push(alloc::format!(
                "ACPI: cannot read the root table: {error:?}"
            ));
            return;
        }
    };
    for header in tables.headers() {
        if header
            .signature
            .as_str()
            .bytes()
            .any(|b| !b.is_ascii_alphanumeric())
        {
            info.warnings
                .push("ACPI: a root-table entry is not a valid table; skipped".into());
            continue;
        }
        info.tables.push(
            header
                .signature
                .as_str()
                .as_bytes()
                .try_into()
                .unwrap_or(*b"????"),
        );
    }
    match tables.find_table::<Fadt>() {
        Ok(fadt) => parse_fadt(info, &fadt),
        Err(error) => info
            .warnings
            .push(alloc::format!("ACPI: no usable FADT ({error:?})")),
    }
    if let Ok(madt) = tables.find_table::<Madt>() {
        parse_madt(info, madt);
    }
    if let Ok(hpet) = tables.find_table::<HpetTable>() {
        // The crate's HpetInfo asserts the block is in memory space; check that first.
        let table = read_bytes(hpet.physical_start() as u64, 56);
        let address_space = table[40];
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&table[44..52]);
        let address = u64::from_le_bytes(raw);
        if address_space == 0 && address != 0 {
            info.hpet_address = Some(FirmwareMmio::new(address));
        } else {
            info.warnings
                .push("ACPI: HPET table names no memory-space block; ignored".into());
        }
    }
    if let Ok(mcfg) = tables.find_table::<Mcfg>() {
        for entry in mcfg.entries() {
            let (base, segment, start, end) = (
                entry.base_address,
                entry.pci_segment_group,
                entry.bus_number_start,
                entry.bus_number_end,
            );
            if base != 0 && start <= end {
                info.pci_ecam.push(EcamRegion {
                    base: FirmwareMmio::new(base),
                    segment,
                    bus_start: start,
                    bus_end: end,
                });
            }
        }
    }
    match tables.dsdt() {
        Ok(dsdt) => {
            info.tables.push(*b"DSDT");
            // The crate gives the AML stream; the interpreter takes the whole table.
            info.aml_tables.push(FirmwareTable::new(
                (dsdt.address as u64).saturating_sub(36),
                dsdt.length + 36,
            ));
        }
        Err(error) => info
            .warnings
            .push(alloc::format!("ACPI: no usable DSDT ({error:?})")),
    }
    for ssdt in tables.ssdts() {
        info.aml_tables.push(FirmwareTable::new(
            (ssdt.address as u64).saturating_sub(36),
            ssdt.length + 36,
        ));
    }
}

/// FADT byte offsets where the ACPI 2.0 extended fields and the ACPI 5.0 sleep registers end:
/// a table that says revision 2+ but is shorter has them absent (the crate goes by revision).
const FADT_EXTENDED_END: u32 = 244;
const FADT_SLEEP_REGISTERS_END: u32 = 268;

fn parse_fadt(info: &mut AcpiInfo, fadt: &PhysicalMapping<IdentityMapped, Fadt>) {
    let length = fadt.header().length;
    let revision = fadt.header().revision;
    let extended = length >= FADT_EXTENDED_END;
    info.sci_irq = Some(fadt.sci_interrupt);
    let smi_command_port = fadt.smi_cmd_port;
    info.smi_command = (smi_command_port != 0).then(|| {
        AcpiRegister::new(
            GenericAddress::new(AddressSpace::Io, 8, smi_command_port as u64),
            1,
        )
    });
    info.acpi_enable_value = fadt.acpi_enable;
    let flags = fadt.flags;
    info.pm_timer_32bit = flags.pm_timer_is_32_bit();
    info.hardware_reduced = flags.system_is_hw_reduced_acpi();
    let raw = read_bytes(fadt.physical_start() as u64, length as usize);
    let pm1_event_length = raw.get(88).copied().unwrap_or(0);
    if revision >= 2 && !extended {
        // The crate reads the 64-bit blocks whenever the revision is 2 or more; this table
        // ends before them, so they would be read past its end. Use the 32-bit blocks.
        info.warnings.push(alloc::format!(
            "ACPI: FADT revision {revision} is only {length} bytes; using its 32-bit blocks"
        ));
        let legacy = |offset: usize| {
            let port = raw
                .get(offset..offset + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            (port != 0).then(|| GenericAddress::new(AddressSpace::Io, 0, port as u64))
        };
        set_pm_blocks(
            info,
            pm1_event_length,
            [legacy(56), legacy(64), legacy(68), legacy(76)],
        );
    } else {
        let block = |result: Result<acpi::address::GenericAddress, acpi::AcpiError>| {
            result.ok().and_then(convert)
        };
        let optional = |result: Result<Option<acpi::address::GenericAddress>, acpi::AcpiError>| {
            result.ok().flatten().and_then(convert)
        };
        set_pm_blocks(
            info,
            pm1_event_length,
            [
                block(fadt.pm1a_event_block()),
                block(fadt.pm1a_control_block()),
                optional(fadt.pm1b_control_block()),
                optional(fadt.pm_timer_block()),
            ],
        );
        if length >= FADT_SLEEP_REGISTERS_END {
            if let Some(control) = optional(fadt.sleep_control_register()) {
                info.sleep_control = Some(AcpiRegister::new(control, 1));
                reserve_io(info, control, 1);
            }
            if let Some(status) = optional(fadt.sleep_status_register()) {
                info.sleep_status = Some(AcpiRegister::new(status, 1));
                reserve_io(info, status, 1);
            }
        }
        if extended && flags.supports_system_reset_via_fadt() {
            if let Some(reset) = block(fadt.reset_register()) {
                info.reset_register = Some(AcpiRegister::new(reset, 1));
                info.reset_value = fadt.reset_value;
            }
        }
    }
    if let Some(port) = info.smi_command {
        reserve_io(info, port.location(), 1);
    }
}

/// Records PM1a event (status + enable), PM1a/PM1b control and the PM timer.
fn set_pm_blocks(info: &mut AcpiInfo, pm1_event_length: u8, blocks: [Option<GenericAddress>; 4]) {
    let [pm1a_event, pm1a_control, pm1b_control, pm_timer] = blocks;
    if let Some(status) = pm1a_event {
        let enable = GenericAddress::new(
            status.space(),
            status.bit_width(),
            status.address() + (pm1_event_length / 2).max(2) as u64,
        );
        info.pm1a_status = Some(AcpiRegister::new(status, 2));
        info.pm1a_enable = Some(AcpiRegister::new(enable, 2));
        reserve_io(info, status, pm1_event_length.max(4) as u16);
    }
    if let Some(control) = pm1a_control {
        info.pm1a_control_block = Some(AcpiRegister::new(control, 2));
        reserve_io(info, control, 2);
    }
    if let Some(control) = pm1b_control {
        info.pm1b_control_block = Some(AcpiRegister::new(control, 2));
        reserve_io(info, control, 2);
    }
    if let Some(timer) = pm_timer {
        info.pm_timer = Some(AcpiRegister::new(timer, 4));
        reserve_io(info, timer, 4);
    }
}

/// Entry lengths the crate's MADT structures need, by entry type (0 = type it skips).
fn madt_entry_minimum(kind: u8) -> usize {
    use acpi::madt::*;
    use core::mem::size_of;
    match kind {
        0x0 => size_of::<LocalApicEntry>(),
        0x1 => size_of::<acpi::madt::IoApicEntry>(),
        0x2 => size_of::<InterruptSourceOverrideEntry>(),
        0x3 => size_of::<NmiSourceEntry>(),
        0x4 => size_of::<LocalApicNmiEntry>(),
        0x5 => size_of::<LocalApicAddressOverrideEntry>(),
        0x6 => size_of::<IoSapicEntry>(),
        0x7 => size_of::<LocalSapicEntry>(),
        0x8 => size_of::<PlatformInterruptSourceEntry>(),
        0x9 => size_of::<LocalX2ApicEntry>(),
        0xA => size_of::<X2ApicNmiEntry>(),
        0xB => size_of::<GiccEntry>(),
        0xC => size_of::<GicdEntry>(),
        0xD => size_of::<GicMsiFrameEntry>(),
        0xE => size_of::<GicRedistributorEntry>(),
        0xF => size_of::<GicInterruptTranslationServiceEntry>(),
        0x10 => size_of::<MultiprocessorWakeupEntry>(),
        _ => 2,
    }
}

fn parse_madt(info: &mut AcpiInfo, madt: PhysicalMapping<IdentityMapped, Madt>) {
    // The crate's iterator trusts each entry's length (zero loops forever, a short entry is
    // read past its end): count the well-formed entries it will yield and stop there.
    let length = madt.get().header.length as usize;
    let bytes = read_bytes(madt.physical_start() as u64, length);
    let mut offset = 44;
    let mut yielded = 0;
    while offset + 2 <= length {
        let (kind, entry_length) = (bytes[offset], bytes[offset + 1] as usize);
        if entry_length < madt_entry_minimum(kind).max(2) || offset + entry_length > length {
            info.warnings.push(alloc::format!(
                "ACPI: MADT entry at offset {offset} is malformed; the rest is ignored"
            ));
            break;
        }
        if kind <= 0x10 {
            yielded += 1;
        }
        offset += entry_length;
    }
    for entry in madt.get().entries().take(yielded) {
        match entry {
            // Enabled or online-capable processors only.
            MadtEntry::LocalApic(lapic) if { lapic.flags } & 0b11 != 0 => {
                info.local_apic_ids.push(lapic.apic_id as u32);
            }
            MadtEntry::LocalX2Apic(x2apic) if { x2apic.flags } & 0b11 != 0 => {
                info.local_apic_ids.push(x2apic.x2apic_id);
            }
            MadtEntry::IoApic(ioapic) => info.io_apics.push(IoApicEntry {
                id: ioapic.io_apic_id,
                address: FirmwareMmio::new(ioapic.io_apic_address as u64),
                gsi_base: ioapic.global_system_interrupt_base,
            }),
            MadtEntry::InterruptSourceOverride(iso) => {
                let flags = iso.flags;
                info.overrides.push(InterruptOverride {
                    isa_irq: iso.irq,
                    gsi: iso.global_system_interrupt,
                    active_low: flags & 0b11 == 0b11,
                    level_triggered: (flags >> 2) & 0b11 == 0b11,
                });
            }
            _ => {}
        }
    }
}
