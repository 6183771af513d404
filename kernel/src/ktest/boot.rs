//! In-kernel tests of what boot sets up: the command line, interrupt dispatch, ACPI, procfs.

use alloc::string::String;

use super::TestResult;
use crate::arch::{self, interrupts};
use crate::fs::procfs;
use crate::kernel::params;

pub(super) fn command_line_stored_exactly() -> TestResult {
    let line = params::command_line();
    ensure!(
        line.len() == line.iter().position(|&b| b == 0).unwrap_or(line.len()),
        "NUL inside"
    );
    ensure!(
        params::command_line_sha256().len() == 64,
        "bad digest length"
    );
    Ok(())
}

pub(super) fn software_interrupt_reaches_dispatch() -> TestResult {
    let before = interrupts::count(0x80);
    arch::software_interrupt_0x80();
    arch::software_interrupt_0x80();
    ensure!(
        interrupts::count(0x80) == before + 2,
        "vector 0x80 count did not advance by 2"
    );
    Ok(())
}

pub(super) fn acpi_tables_found() -> TestResult {
    let info = crate::acpi().ok_or("no ACPI")?;
    ensure!(info.tables.iter().any(|t| t == b"APIC"), "no MADT");
    ensure!(!info.io_apics.is_empty(), "no IOAPIC");
    ensure!(!info.local_apic_ids.is_empty(), "no CPU in the MADT");
    crate::drivers::acpi::devices();
    ensure!(
        crate::arch::acpi_aml::s5_sleep_type().is_some(),
        "no \\_S5 in the DSDT"
    );
    ensure!(
        info.pm1a_control_block.is_some() || info.sleep_control.is_some(),
        "no way to enter S5"
    );
    Ok(())
}

/// The AML namespace, enumerated through the interpreter: on q35 a PCI Express root (PNP0A08)
/// whose `_PRT` routes every pin to a GSI, the serial port (PNP0501) at 0x3f8 from `_CRS`;
/// on hardware-reduced microvm the Generic Event Device (ACPI0013) with an interrupt, a power
/// button (PNP0C0C) and the same serial port. `/proc/acpi/devices` lists them.
pub(super) fn acpi_namespace_has_expected_devices() -> TestResult {
    use crate::drivers::acpi::{self, PrtSource, Resource};
    let info = crate::acpi().ok_or("no ACPI")?;
    let devices = acpi::devices();
    let find = |id: &str| devices.iter().find(|d| d.is(id) && d.status & 1 != 0);
    let serial = find("PNP0501").ok_or("no PNP0501 serial port")?;
    ensure!(
        serial
            .resources
            .iter()
            .any(|r| matches!(r, Resource::Io { base: 0x3f8, length } if *length == 8)),
        "COM1's _CRS has no I/O 0x3f8-0x3ff: {:?}",
        serial.resources
    );
    if info.hardware_reduced {
        let ged = find("ACPI0013").ok_or("no ACPI0013 GED on a hardware-reduced machine")?;
        ensure!(
            ged.resources
                .iter()
                .any(|r| matches!(r, Resource::Interrupt { irqs, .. } if !irqs.is_empty())),
            "the GED's _CRS has no interrupt"
        );
        ensure!(find("PNP0C0C").is_some(), "no power button device");
    } else {
        let root = find("PNP0A08").ok_or("no PNP0A08 PCI Express root")?;
        let routing = acpi::pci_routing();
        let (_, entries) = routing
            .iter()
            .find(|(path, _)| *path == root.path)
            .ok_or("the PCI root has no _PRT")?;
        ensure!(!entries.is_empty(), "the PCI root's _PRT is empty");
        ensure!(
            entries.iter().all(|e| match &e.source {
                PrtSource::Gsi(gsi) => *gsi >= 16,
                PrtSource::Link { gsi, .. } => gsi.is_some_and(|g| g >= 16),
            }),
            "a _PRT pin has no IOAPIC GSI (is \\_PIC(1) in effect?)"
        );
    }
    let listing = procfs::read("/proc/acpi/devices")?;
    ensure!(
        listing.contains(&serial.path),
        "/proc/acpi/devices lacks {}",
        serial.path
    );
    Ok(())
}

/// The RSDP scan used when the loader gives no RSDP address: checksums are validated, reads
/// stay inside the first MiB, page 0 is unmapped again, and the scan finds the boot's RSDP.
pub(super) fn rsdp_scan_validates_and_unmaps() -> TestResult {
    arch::acpi::rsdp_scan_self_test(crate::acpi().map(|info| info.rsdp_address))
        .map_err(|why| String::from(why).into())
}

pub(super) fn procfs_reads_and_validates_writes() -> TestResult {
    ensure!(
        procfs::read("/proc/version")?.starts_with("Lull version"),
        "bad /proc/version"
    );
    ensure!(
        procfs::read("/proc/nonexistent").is_err(),
        "missing file read succeeded"
    );
    ensure!(
        procfs::write("/proc/sys/kernel/printk", "banana").is_err(),
        "bad value accepted"
    );
    procfs::write("/proc/sys/kernel/printk", "7")?;
    ensure!(
        procfs::write("/proc/version", "x").is_err(),
        "read-only file written"
    );
    Ok(())
}

impl From<procfs::ProcError> for String {
    fn from(error: procfs::ProcError) -> String {
        alloc::format!("{error}")
    }
}

/// Port ranges are claimed once: a claim overlapping arch's own devices or ACPI's blocks is
/// refused naming the holder, and dropping a handle releases its range.
pub(super) fn io_port_claims_are_exclusive() -> TestResult {
    use crate::arch::io::{ClaimError, IoPorts};
    match IoPorts::claim(0x3FC, 2, "ktest") {
        // The boot's reservation, or the `serial` driver's claim once it took the UART over.
        Err(ClaimError::Busy { owner, .. }) => ensure!(
            owner == "serial (COM1)" || owner == "serial",
            "COM1's ports held by {owner:?}"
        ),
        other => return Err(alloc::format!("a claim inside COM1 gave {other:?}").into()),
    }
    if let Some(register) = crate::acpi().and_then(|info| info.pm1a_control_block) {
        let location = register.location();
        if location.space() == crate::arch::acpi::AddressSpace::Io {
            let port = location.address() as u16;
            ensure!(
                matches!(
                    IoPorts::claim(port, 1, "ktest"),
                    Err(ClaimError::Busy { owner: "ACPI", .. })
                ),
                "the PM1a control port {port:#x} could be claimed"
            );
        }
    }
    // COM4's range: free on every machine Lull runs on.
    let ports = IoPorts::claim(0x2E8, 8, "ktest").map_err(|e| alloc::format!("{e}"))?;
    ensure!(
        IoPorts::claim(0x2EC, 1, "ktest2").is_err(),
        "an overlapping claim was accepted"
    );
    let listed = crate::fs::procfs::read("/proc/ioports")?;
    ensure!(
        listed.contains("02e8-02ef : ktest"),
        "/proc/ioports does not list the claim:\n{listed}"
    );
    drop(ports);
    let again = IoPorts::claim(0x2E8, 8, "ktest").map_err(|e| alloc::format!("{e}"))?;
    ensure!(again.owner() == "ktest", "owner not kept");
    Ok(())
}

/// Every subsystem's parameter declarations pass the checks the boot skips (a writable name,
/// a kind that accepts something, a default the kind accepts), with no name declared twice.
pub(super) fn every_parameter_declaration_is_valid() -> TestResult {
    let mut registry = lull_cmdline::Registry::new();
    let mut declared = 0;
    for table in crate::PARAM_TABLES {
        registry
            .declare_all(table)
            .map_err(|error| alloc::format!("{error}"))?;
        declared += table.len();
    }
    ensure!(
        registry.len() == declared && declared > 20,
        "{declared} declarations, {} in the registry",
        registry.len()
    );
    Ok(())
}
