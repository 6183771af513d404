//! ACPI tables: RSDP → XSDT → {FADT → (FACS, DSDT), MADT}, built with rust-vmm's `acpi_tables`.
//!
//! The platform is a legacy-free PC with ACPI fixed hardware only:
//! - PM1a event block (status + enable) and control block at [`PM1A_EVENT_PORT`] /
//!   [`PM1A_CONTROL_PORT`], a 32-bit PM timer at [`PM_TIMER_PORT`], SCI on ISA IRQ 9
//!   (level, active high: an interrupt source override in the MADT says so);
//! - a fixed-feature power button (FADT flag PWR_BUTTON clear), no sleep button;
//! - no SMI command port: the platform is always in ACPI mode (SCI_EN reads 1);
//! - DSDT: `\_S5` = {5, 5} (so S5 is SLP_TYP 5) and COM1 (PNP0501, 0x3f8, IRQ 4).
//!
//! The MADT lists one enabled local APIC per vCPU, the in-kernel IOAPIC, and overrides
//! ISA IRQ 0 → GSI 2 (the PIT, as on every PC) and ISA IRQ 9 → GSI 9 level/high (the SCI).

use crate::vstate::memory::GuestMemoryMmap;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    ACPI_TABLES_ADDRESS, EBDA_START, HIGH_MEMORY_START, IOAPIC_ADDRESS, LAPIC_ADDRESS,
};

const OEM_ID: [u8; 6] = *b"LULLVM";
const OEM_TABLE_ID: [u8; 8] = *b"LULLVMM ";
const OEM_REVISION: u32 = 1;

/// PM1a_EVT_BLK: PM1 status (2 bytes) then PM1 enable (2 bytes).
pub const PM1A_EVENT_PORT: u16 = 0x600;
/// PM1a_CNT_BLK (2 bytes): SCI_EN, SLP_TYP, SLP_EN.
pub const PM1A_CONTROL_PORT: u16 = 0x604;
/// PM_TMR_BLK (4 bytes): 3.579545 MHz, 32 bits wide (FADT TMR_VAL_EXT).
pub const PM_TIMER_PORT: u16 = 0x608;
/// The System Control Interrupt: ISA IRQ 9, routed to GSI 9.
pub const SCI_IRQ: u32 = 9;
/// SLP_TYP value that `\_S5` declares: writing it with SLP_EN powers the machine off.
pub const S5_SLEEP_TYPE: u16 = 5;
/// COM1's legacy IRQ.
pub const COM1_IRQ: u32 = 4;
/// COM1's I/O base.
pub const COM1_PORT: u16 = 0x3f8;

/// MADT flag: the platform also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
/// MPS INTI flags: active high (01), level triggered (11 << 2).
const INTI_ACTIVE_HIGH_LEVEL: u16 = 0b1101;

/// Why the tables could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes but only {available} are reserved for them")]
    TooLarge { needed: u64, available: u64 },
    #[error("writing ACPI tables into guest memory failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Tables laid out at their guest addresses, ready to copy.
#[derive(Debug, Default)]
pub struct AcpiTables {
    /// (guest address, bytes) for every table, RSDP first.
    pub tables: Vec<(u64, Vec<u8>)>,
}

impl AcpiTables {
    pub fn rsdp_address(&self) -> u64 {
        self.tables[0].0
    }

    /// Copies every table into guest memory.
    pub fn write_to(&self, memory: &GuestMemoryMmap) -> Result<(), AcpiError> {
        for (address, bytes) in &self.tables {
            memory.write_slice(bytes, GuestAddress(*address))?;
        }
        Ok(())
    }
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

fn io_register(port: u16, bit_width: u8, access: AccessSize) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        bit_width,
        0,
        access,
        u64::from(port),
    )
}

/// The DSDT: `\_S5` for poweroff and COM1 as a device with its resources.
fn dsdt() -> Vec<u8> {
    let mut body = Vec::new();
    let s5_type = S5_SLEEP_TYPE as u8;
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5_type, &s5_type, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);
    let com1_ports = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_interrupt = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_resources = aml::ResourceTemplate::new(vec![&com1_ports, &com1_interrupt]);
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_name = aml::Name::new("_HID".into(), &com1_hid);
    let com1_uid = aml::Name::new("_UID".into(), &0u8);
    let com1_crs = aml::Name::new("_CRS".into(), &com1_resources);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_name, &com1_uid, &com1_crs]);
    aml::Scope::new("\\_SB_".into(), vec![&com1]).to_aml_bytes(&mut body);

    let mut table = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

/// The MADT: local APICs, IOAPIC, interrupt source overrides, LINT1 = NMI.
fn madt(vcpu_count: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(LAPIC_ADDRESS as u32).to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for index in 0..vcpu_count {
        // Processor Local APIC: type 0, length 8, ACPI UID, APIC ID, flags (enabled).
        body.extend_from_slice(&[0, 8, index, index]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, length 12, id 0, reserved, address, GSI base 0.
    body.extend_from_slice(&[1, 12, 0, 0]);
    body.extend_from_slice(&(IOAPIC_ADDRESS as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source overrides: type 2, length 10, bus 0 (ISA), source, GSI, flags.
    let mut interrupt_override = |source: u8, gsi: u32, flags: u16| {
        body.extend_from_slice(&[2, 10, 0, source]);
        body.extend_from_slice(&gsi.to_le_bytes());
        body.extend_from_slice(&flags.to_le_bytes());
    };
    interrupt_override(0, 2, 0);
    interrupt_override(SCI_IRQ as u8, SCI_IRQ, INTI_ACTIVE_HIGH_LEVEL);
    // Local APIC NMI: type 4, length 6, all processors (0xff), flags 0, LINT1.
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);

    let mut table = Sdt::new(*b"APIC", 36, 4, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

/// The FADT for the fixed hardware described in the module comment.
fn fadt(facs_address: u64, dsdt_address: u64) -> Vec<u8> {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_address)
        .firmware_ctrl_64(facs_address)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::SlpButton)
        .flag(Flags::TmrValExt);
    // 32-bit copies too, for parsers that read only the ACPI 1.0 fields.
    builder.dsdt = (dsdt_address as u32).into();
    builder.firmware_ctrl = (facs_address as u32).into();
    builder.sci_int = (SCI_IRQ as u16).into();
    builder.pm1a_evt_blk = u32::from(PM1A_EVENT_PORT).into();
    builder.pm1a_cnt_blk = u32::from(PM1A_CONTROL_PORT).into();
    builder.pm_tmr_blk = u32::from(PM_TIMER_PORT).into();
    builder.pm1_evt_len = 4;
    builder.pm1_cnt_len = 2;
    builder.pm_tmr_len = 4;
    builder.x_pm1a_evt_blk = io_register(PM1A_EVENT_PORT, 32, AccessSize::WordAccess);
    builder.x_pm1a_cnt_blk = io_register(PM1A_CONTROL_PORT, 16, AccessSize::WordAccess);
    builder.x_pm_tmr_blk = io_register(PM_TIMER_PORT, 32, AccessSize::DwordAccess);
    // IAPC_BOOT_ARCH: no VGA (bit 2), no CMOS RTC (bit 5).
    builder.iapc_boot_arch = ((1u16 << 2) | (1 << 5)).into();
    bytes_of(&builder.finalize())
}

/// Builds every table for `vcpu_count` vCPUs at [`ACPI_TABLES_ADDRESS`].
pub fn build_tables(vcpu_count: u8) -> Result<AcpiTables, AcpiError> {
    let rsdp_address = ACPI_TABLES_ADDRESS;
    let xsdt_address = rsdp_address + 0x40;
    let facs_address = xsdt_address + 0x40;
    let facs = bytes_of(&acpi_tables::facs::FACS::new());
    let dsdt_address = (facs_address + facs.len() as u64).next_multiple_of(16);
    let dsdt = dsdt();
    let fadt_address = (dsdt_address + dsdt.len() as u64).next_multiple_of(16);
    let fadt = fadt(facs_address, dsdt_address);
    let madt_address = (fadt_address + fadt.len() as u64).next_multiple_of(16);
    let madt = madt(vcpu_count);
    let end = madt_address + madt.len() as u64;
    let limit = HIGH_MEMORY_START;
    if end > limit || rsdp_address < EBDA_START {
        return Err(AcpiError::TooLarge {
            needed: end - rsdp_address,
            available: limit - rsdp_address,
        });
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_address);
    xsdt.add_entry(madt_address);
    let xsdt = bytes_of(&xsdt);
    assert!(xsdt.len() <= 0x40, "XSDT with two entries fits its slot");
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt_address));
    Ok(AcpiTables {
        tables: vec![
            (rsdp_address, rsdp),
            (xsdt_address, xsdt),
            (facs_address, facs),
            (dsdt_address, dsdt),
            (fadt_address, fadt),
            (madt_address, madt),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)) == 0
    }

    fn table<'a>(tables: &'a AcpiTables, signature: &[u8; 4]) -> &'a [u8] {
        &tables
            .tables
            .iter()
            .find(|(_, bytes)| &bytes[..4] == signature)
            .unwrap()
            .1
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn every_sdt_has_a_valid_checksum_and_length() {
        let tables = build_tables(4).unwrap();
        for (_, bytes) in &tables.tables[1..] {
            if &bytes[..4] == b"FACS" {
                continue;
            }
            assert!(checksum_ok(bytes), "{:?}", std::str::from_utf8(&bytes[..4]));
            assert_eq!(u32_at(bytes, 4) as usize, bytes.len());
        }
        let rsdp = &tables.tables[0].1;
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(rsdp));
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_sci_override() {
        let tables = build_tables(3).unwrap();
        let madt = table(&tables, b"APIC");
        let mut offset = 44;
        let mut lapic_ids = Vec::new();
        let mut sci_flags = None;
        while offset < madt.len() {
            let (kind, length) = (madt[offset], madt[offset + 1] as usize);
            if kind == 0 {
                lapic_ids.push(madt[offset + 3]);
            }
            if kind == 2 && madt[offset + 3] == 9 {
                sci_flags = Some(u16::from_le_bytes([madt[offset + 8], madt[offset + 9]]));
            }
            offset += length;
        }
        assert_eq!(offset, madt.len());
        assert_eq!(lapic_ids, vec![0, 1, 2]);
        assert_eq!(sci_flags, Some(0b1101));
    }

    #[test]
    fn fadt_points_at_dsdt_and_pm_blocks() {
        let tables = build_tables(1).unwrap();
        let fadt = table(&tables, b"FACP");
        let dsdt_address = tables
            .tables
            .iter()
            .find(|(_, b)| &b[..4] == b"DSDT")
            .unwrap()
            .0;
        assert_eq!(u32_at(fadt, 40) as u64, dsdt_address);
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9); // SCI_INT
        assert_eq!(u32_at(fadt, 56), u32::from(PM1A_EVENT_PORT));
        assert_eq!(u32_at(fadt, 64), u32::from(PM1A_CONTROL_PORT));
        assert_eq!(u32_at(fadt, 76), u32::from(PM_TIMER_PORT));
        assert_eq!(
            u32_at(fadt, 112) & (1 << 4),
            0,
            "fixed power button present"
        );
    }

    #[test]
    fn dsdt_declares_s5() {
        let tables = build_tables(1).unwrap();
        let dsdt = table(&tables, b"DSDT");
        let at = dsdt
            .windows(4)
            .position(|w| w == b"_S5_")
            .expect("_S5_ present");
        // NameOp, "_S5_", PackageOp, PkgLength, NumElements=4, BytePrefix 5, BytePrefix 5.
        assert_eq!(&dsdt[at + 4..at + 11], &[0x12, 0x08, 4, 0x0a, 5, 0x0a, 5]);
        assert!(dsdt.windows(4).any(|w| w == b"COM1"));
    }
}
