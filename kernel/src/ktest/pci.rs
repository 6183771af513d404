//! PCI: ECAM against conf1, MMIO claims and mappings, INTx routing, MSI-X and MSI vectors.

use alloc::string::String;

use super::TestResult;
use crate::arch::mmio::{window_mappings, Mmio, MmioError};
use crate::arch::pci::Conf1;
use crate::drivers::pci::{self, IrqVectorFlags, IrqVectorKind, PciConfig, PciDevice};
use crate::fs::procfs;
use crate::kernel::irq::{self, msi, IrqFlags, IrqReturn};
use lull_pci::{Capability, ConfigAccess};

fn no_pci() -> bool {
    pci::scan().functions.is_empty()
}

/// Every function's first 256 bytes read the same through ECAM and the 0xCF8/0xCFC ports; the
/// extended space is reachable through ECAM only.
pub(super) fn ecam_and_conf1_read_the_same_config_space() -> TestResult {
    let PciConfig::Ecam(ecam) = pci::config() else {
        skip!("no MCFG: config space is reached through conf1 only");
    };
    ensure!(!no_pci(), "ECAM in use but the scan found no function");
    let conf1 = Conf1::get();
    let mut compared = 0;
    for function in &pci::scan().functions {
        let a = function.address;
        for offset in (0..0x100u16).step_by(4) {
            let (through_ecam, through_ports) = (ecam.read32(a, offset), conf1.read32(a, offset));
            ensure!(
                through_ecam == through_ports,
                "{a} at {offset:#x}: ECAM {through_ecam:#010x}, conf1 {through_ports:#010x}"
            );
            compared += 1;
        }
        ensure!(
            conf1.read32(a, 0x100) == u32::MAX,
            "conf1 reached extended space"
        );
        // The extended space exists: a PCIe function's first extended header is never all ones.
        let express = function
            .capabilities
            .iter()
            .any(|c| c.id() == lull_pci::capability::CAP_ID_PCIE);
        if express {
            ensure!(
                ecam.read32(a, 0x100) != u32::MAX,
                "{a}: ECAM's extended space reads as absent"
            );
        }
    }
    ensure!(ecam.config_size() == 0x1000, "ECAM config size");
    crate::printk!(
        "ktest pci: {} functions, {compared} dwords compared, ECAM at {:#x}",
        pci::scan().functions.len(),
        ecam.regions().next().map_or(0, |r| r.base)
    );
    Ok(())
}

/// A claim is refused while another holds an overlapping range (naming it), RAM is refused,
/// the claim nests in its BAR in /proc/iomem, and dropping releases the claim and the mapping.
pub(super) fn mmio_claims_map_and_release() -> TestResult {
    let busy_before = crate::mm::iomem::busy_count();
    let windows_before = window_mappings();
    // RAM: never a device mapping.
    let image = crate::arch::kernel_image_range();
    ensure!(
        matches!(
            Mmio::claim(image.start, 4096, "ktest"),
            Err(MmioError::Ram { .. })
        ),
        "the kernel image was accepted as MMIO"
    );
    // High, unbacked addresses: mapped through the window (4 KiB and 2 MiB pages).
    {
        let small = Mmio::claim(0x40_0000_1000, 0x2000, "ktest-high")
            .map_err(|e| alloc::format!("high claim: {e}"))?;
        let huge = Mmio::claim(0x40_0020_0000, 0x40_0000, "ktest-huge")
            .map_err(|e| alloc::format!("huge claim: {e}"))?;
        ensure!(
            window_mappings() == windows_before + 2,
            "window mappings {} (before {windows_before})",
            window_mappings()
        );
        let _ = small.read_u32(0x1FFC);
        let _ = huge.read_u64(0x3F_FFF8);
        match Mmio::claim(0x40_0000_2000, 0x10, "ktest-other") {
            Err(MmioError::Busy(why)) => ensure!(why.contains("ktest-high"), "{why}"),
            Ok(_) => return Err("an overlapping claim was accepted".into()),
            Err(e) => return Err(alloc::format!("wrong refusal: {e}").into()),
        }
        let iomem = procfs::read("/proc/iomem")?;
        ensure!(
            iomem.contains("4000001000-4000002fff : ktest-high"),
            "claim missing from /proc/iomem:\n{iomem}"
        );
    }
    ensure!(
        window_mappings() == windows_before,
        "window mappings not released"
    );
    // A BAR: the claim nests in the function's entry.
    if let Some((dev, index)) = PciDevice::all().find_map(|d| {
        (0..6).find_map(|i| match d.bar(i) {
            lull_pci::Bar::Memory { address, .. } if address != 0 => Some((d, i)),
            _ => None,
        })
    }) {
        let mmio = dev
            .map_bar(index, "ktest-bar")
            .map_err(|e| alloc::format!("{}: BAR {index}: {e}", dev.name()))?;
        let iomem = procfs::read("/proc/iomem")?;
        let line = alloc::format!(
            "{:08x}-{:08x} : ktest-bar",
            mmio.phys(),
            mmio.phys() + mmio.len() - 1
        );
        let owner_at = iomem.lines().position(|l| l.trim_start() == line);
        let bar_at = iomem.lines().position(|l| {
            l.trim_start()
                .ends_with(&alloc::format!(": {}", dev.name()))
        });
        ensure!(
            owner_at.is_some() && bar_at.is_some_and(|b| Some(b) < owner_at),
            "{line} not nested in {}:\n{iomem}",
            dev.name()
        );
        match dev.map_bar(index, "ktest-again") {
            Err(pci::PciError::Mmio(MmioError::Busy(why))) => {
                ensure!(why.contains("ktest-bar"), "{why}")
            }
            other => return Err(alloc::format!("second BAR claim: {other:?}").into()),
        }
    }
    ensure!(
        crate::mm::iomem::busy_count() == busy_before,
        "iomem claims {} (before {busy_before})",
        crate::mm::iomem::busy_count()
    );
    Ok(())
}

/// Every function with an interrupt pin routes through `_PRT` to an IOAPIC GSI (16..=23 on
/// q35), level-triggered and active low.
pub(super) fn intx_routes_through_prt() -> TestResult {
    if crate::acpi().is_none_or(|a| a.hardware_reduced) || no_pci() {
        skip!("no PCI root with a _PRT here");
    }
    let mut routed = 0;
    for dev in PciDevice::all().filter(|d| d.function().interrupt_pin != 0) {
        let intx = dev
            .intx_irq()
            .ok_or_else(|| alloc::format!("{}: no INTx route", dev.name()))?;
        ensure!(
            intx.source.starts_with("_PRT") && intx.gsi >= 16 && intx.level && intx.active_low,
            "{}: {intx:?}",
            dev.name()
        );
        routed += 1;
    }
    ensure!(routed > 0, "no function has an interrupt pin");
    Ok(())
}

fn ktest_msi_handler(_irq: u32, _dev: crate::kernel::irq::DevId) -> IrqReturn {
    IrqReturn::Handled
}

/// The first function with MSI-X (q35: the e1000e at 00:02.0), and one with MSI only (AHCI).
/// A function with MSI-X (or with MSI only) whose vectors no driver holds.
fn find_with(msix: bool) -> Option<PciDevice> {
    PciDevice::all().find(|d| {
        if pci::irq_vectors(d.address()).is_some() {
            return false;
        }
        let caps = d.capabilities();
        let has_msix = caps.iter().any(|c| matches!(c, Capability::MsiX(_)));
        let has_msi = caps.iter().any(|c| matches!(c, Capability::Msi(_)));
        if msix {
            has_msix
        } else {
            has_msi && !has_msix
        }
    })
}

struct Counts {
    vectors: usize,
    irqs: usize,
    busy: usize,
    windows: usize,
}

fn counts() -> Counts {
    Counts {
        vectors: msi::vectors_in_use(),
        irqs: msi::irqs_in_use(),
        busy: crate::mm::iomem::busy_count(),
        windows: window_mappings(),
    }
}

fn same_counts(before: &Counts) -> TestResult {
    let now = counts();
    ensure!(
        (now.vectors, now.irqs, now.busy, now.windows)
            == (before.vectors, before.irqs, before.busy, before.windows),
        "vectors {} irqs {} claims {} windows {}, before {} {} {} {}",
        now.vectors,
        now.irqs,
        now.busy,
        now.windows,
        before.vectors,
        before.irqs,
        before.busy,
        before.windows
    );
    Ok(())
}

/// MSI-X: vectors allocated (entries masked), a handler unmasks its entry and shows in
/// /proc/interrupts as Linux prints it, affinity moves the vector (on 2+ CPUs: a vector on the
/// new CPU, the entry rewritten), and freeing returns every vector (the counter's before-value,
/// ten times over).
pub(super) fn msix_vectors_allocate_move_and_free() -> TestResult {
    let Some(dev) = find_with(true) else {
        skip!("no PCI function with MSI-X");
    };
    let before = counts();
    dev.enable_device();
    let Some(Capability::MsiX(cap)) = dev.find_capability(lull_pci::capability::CAP_ID_MSIX) else {
        return Err("MSI-X capability vanished".into());
    };
    for round in 0..10 {
        let n = dev
            .alloc_irq_vectors(1, 3, IrqVectorFlags::MSIX | IrqVectorFlags::MSI)
            .map_err(|e| alloc::format!("{}: {e}", dev.name()))?;
        ensure!(n == 3.min(usize::from(cap.table_size)), "got {n} vectors");
        let (kind, irqs) = pci::irq_vectors(dev.address()).ok_or("no vectors recorded")?;
        ensure!(kind == IrqVectorKind::Msix, "kind {kind}");
        ensure!(
            irqs.iter().all(|&i| i >= 24) && msi::vectors_in_use() == before.vectors + n,
            "IRQs {irqs:?}, vectors in use {}",
            msi::vectors_in_use()
        );
        let control = dev.read_config_u16(cap.control_offset());
        ensure!(
            control & 0xC000 == 0x8000,
            "MSI-X control {control:#x}: not enabled or still function-masked"
        );
        ensure!(dev.read_config_u16(4) & (1 << 10) != 0, "INTx not disabled");
        let table = dev
            .function()
            .bars
            .get(usize::from(cap.table_bir))
            .and_then(|b| b.window())
            .ok_or("no table BAR")?;
        let table = Mmio::map_unclaimed(
            table.0 + u64::from(cap.table_offset),
            u64::from(cap.table_size) * 16,
            "ktest-table",
        )
        .map_err(|e| alloc::format!("{e}"))?;
        let entry_masked = |i: usize| table.read_u32(i * 16 + 12) & 1 != 0;
        ensure!(
            (0..n).all(entry_masked),
            "entries unmasked before a handler"
        );
        let irq0 = irqs[0];
        irq::request_irq(
            irq0,
            ktest_msi_handler,
            IrqFlags::NO_THREAD,
            "ktest-msix",
            crate::kernel::irq::DevId::NONE,
        )
        .map_err(|e| alloc::format!("request_irq({irq0}): {e}"))?;
        ensure!(!entry_masked(0), "entry 0 still masked with a handler");
        ensure!(entry_masked(1), "entry 1 unmasked without a handler");
        let interrupts = procfs::read("/proc/interrupts")?;
        let label = alloc::format!("PCI-MSIX-{} 0-edge   ktest-msix", dev.name());
        ensure!(
            interrupts
                .lines()
                .any(|l| l.trim_start().starts_with(&alloc::format!("{irq0}:"))
                    && l.ends_with(&label)),
            "no {label:?} line for IRQ {irq0}:\n{interrupts}"
        );
        ensure!(
            matches!(dev.free_irq_vectors(), Err(pci::PciError::IrqBusy(i)) if i == irq0),
            "vectors freed under a requested handler"
        );
        // Affinity: every CPU in turn (one CPU: the move is a no-op that must still work).
        let cpus: alloc::vec::Vec<usize> = crate::kernel::smp::online_cpus().collect();
        for (step, &cpu) in cpus.iter().rev().enumerate() {
            procfs::write(
                &alloc::format!("/proc/irq/{irq0}/smp_affinity_list"),
                &alloc::format!("{cpu}"),
            )?;
            let effective =
                procfs::read(&alloc::format!("/proc/irq/{irq0}/effective_affinity_list"))?;
            ensure!(
                effective.trim() == alloc::format!("{cpu}"),
                "effective affinity {effective:?}, wanted {cpu}"
            );
            let address = table.read_u32(0);
            let data = table.read_u32(8);
            let apic = crate::kernel::smp::apic_id(cpu);
            ensure!(
                (address >> 12) & 0xFF == apic && address & 0xFFF0_0000 == 0xFEE0_0000,
                "round {round} step {step}: entry 0 address {address:#x}, CPU {cpu} is APIC {apic}"
            );
            ensure!(
                Some(data as u8) == irq::irq_vector(irq0),
                "entry 0 data {data:#x}, line vector {:?}",
                irq::irq_vector(irq0)
            );
            ensure!(!entry_masked(0), "entry 0 left masked by the move");
        }
        irq::free_irq(irq0, crate::kernel::irq::DevId::NONE)
            .map_err(|e| alloc::format!("free_irq: {e}"))?;
        ensure!(entry_masked(0), "entry 0 unmasked after free_irq");
        dev.free_irq_vectors()
            .map_err(|e| alloc::format!("free_irq_vectors: {e}"))?;
        ensure!(
            dev.read_config_u16(cap.control_offset()) & 0x8000 == 0,
            "MSI-X still enabled"
        );
        drop(table);
        same_counts(&before)?;
    }
    ensure!(
        !procfs::read("/proc/interrupts")?.contains("ktest-msix"),
        "freed line still listed"
    );
    dev.disable_device();
    Ok(())
}

/// MSI (a function without MSI-X; q35: AHCI): one vector, programmed into the capability, and
/// everything returned on free.
pub(super) fn msi_vectors_allocate_and_free() -> TestResult {
    let Some(dev) = find_with(false) else {
        skip!("no PCI function with MSI only");
    };
    let Some(Capability::Msi(cap)) = dev.find_capability(lull_pci::capability::CAP_ID_MSI) else {
        return Err("MSI capability vanished".into());
    };
    let before = counts();
    ensure!(
        matches!(
            dev.alloc_irq_vectors(1, 1, IrqVectorFlags::MSIX),
            Err(pci::PciError::NoIrq(_))
        ),
        "MSI-X granted to a function without it"
    );
    let n = dev
        .alloc_irq_vectors(1, 8, IrqVectorFlags::ALL)
        .map_err(|e| alloc::format!("{}: {e}", dev.name()))?;
    ensure!(n == usize::from(cap.max_vectors()).min(8), "{n} vectors");
    let (kind, irqs) = pci::irq_vectors(dev.address()).ok_or("no vectors recorded")?;
    ensure!(kind == IrqVectorKind::Msi, "kind {kind}");
    let control = dev.read_config_u16(cap.control_offset());
    ensure!(control & 1 == 1, "MSI not enabled ({control:#x})");
    let irq0 = irqs[0];
    irq::request_irq(
        irq0,
        ktest_msi_handler,
        IrqFlags::NO_THREAD,
        "ktest-msi",
        crate::kernel::irq::DevId::NONE,
    )
    .map_err(|e| alloc::format!("request_irq({irq0}): {e}"))?;
    let data = dev.read_config_u16(cap.data_offset());
    ensure!(
        Some(data as u8) == irq::irq_vector(irq0),
        "MSI data {data:#x}, line vector {:?}",
        irq::irq_vector(irq0)
    );
    let interrupts = procfs::read("/proc/interrupts")?;
    ensure!(
        interrupts.contains(&alloc::format!("PCI-MSI-{} 0-edge   ktest-msi", dev.name())),
        "no MSI line:\n{interrupts}"
    );
    if let Some(&cpu) = crate::kernel::smp::online_cpus()
        .collect::<alloc::vec::Vec<_>>()
        .last()
    {
        if n == 1 {
            irq::set_irq_affinity(irq0, 1 << cpu).map_err(|e| alloc::format!("{e}"))?;
            let address = dev.read_config_u32(cap.address_lo_offset());
            ensure!(
                (address >> 12) & 0xFF == crate::kernel::smp::apic_id(cpu),
                "MSI address {address:#x} after moving to CPU {cpu}"
            );
        }
    }
    irq::free_irq(irq0, crate::kernel::irq::DevId::NONE).map_err(|e| alloc::format!("{e}"))?;
    dev.free_irq_vectors().map_err(|e| alloc::format!("{e}"))?;
    ensure!(
        dev.read_config_u16(cap.control_offset()) & 1 == 0,
        "MSI still enabled"
    );
    ensure!(
        dev.read_config_u16(4) & (1 << 10) == 0,
        "INTx not re-enabled"
    );
    same_counts(&before)?;
    Ok(())
}

// ---- the pci bus of the driver model ---------------------------------------------------------

const PCI_DRIVER: &str = "ktest-pci";

/// The MMIO handle the test driver keeps (to check it is revoked at unbind).
static KEPT: crate::kernel::locking::IrqSafeLock<
    Option<alloc::sync::Arc<lull_devres::Revocable<Mmio>>>,
> = crate::kernel::locking::IrqSafeLock::new(None);

/// A PCI driver built only from managed helpers: enable, map a BAR, MSI-X/MSI vectors, a
/// handler on the first.
struct KtestPciDriver;

impl lull_driver_core::Driver for KtestPciDriver {
    fn probe(
        &self,
        ctx: &mut lull_driver_core::ProbeContext<'_>,
    ) -> Result<(), lull_driver_core::ProbeError> {
        use crate::drivers::pci::devm::{pcim_alloc_irq_vectors, pcim_enable_device, pcim_iomap};
        use lull_driver_core::Errno;
        let name = String::from(ctx.device_name());
        let dev = PciDevice::all()
            .find(|d| d.name() == name)
            .ok_or(Errno::ENODEV)?;
        let bar = (0..6)
            .find(|&i| matches!(dev.bar(i), lull_pci::Bar::Memory { address, .. } if address != 0))
            .ok_or(Errno::ENODEV)?;
        let devres = ctx.devres();
        pcim_enable_device(devres, &dev)?;
        dev.set_master();
        let mmio = pcim_iomap(devres, &dev, bar, PCI_DRIVER)?;
        pcim_alloc_irq_vectors(
            devres,
            &dev,
            1,
            2,
            IrqVectorFlags::MSIX | IrqVectorFlags::MSI,
        )?;
        let irq = dev.irq_vector(0).ok_or(Errno::EINVAL)?;
        crate::drivers::base::devm::request_threaded_irq(
            devres,
            irq,
            Some(ktest_msi_handler),
            None,
            IrqFlags::NONE,
            PCI_DRIVER,
            crate::kernel::irq::DevId::NONE,
        )?;
        if mmio.try_access().is_none() {
            return Err(Errno::EIO.into());
        }
        *KEPT.lock() = Some(mmio.clone());
        ctx.set_drvdata(alloc::boxed::Box::new(mmio));
        Ok(())
    }
}

fn pci_state(name: &str) -> Option<lull_driver_core::DeviceState> {
    crate::drivers::base::with_model(|m| m.device_state("pci", name).cloned()).flatten()
}

/// Every scanned function is a device of the `pci` bus with Linux's attribute files.
pub(super) fn pci_functions_are_devices_of_the_pci_bus() -> TestResult {
    if no_pci() {
        skip!("no PCI functions");
    }
    crate::drivers::wait_for_device_probe();
    let listing = procfs::list("/sys/bus/pci/devices")?;
    for dev in PciDevice::all() {
        let name = dev.name();
        ensure!(
            listing.lines().any(|l| l == name),
            "{name} not in /sys/bus/pci/devices:\n{listing}"
        );
        let at = |file: &str| procfs::read(&alloc::format!("/sys/bus/pci/devices/{name}/{file}"));
        ensure!(
            at("vendor")? == alloc::format!("0x{:04x}\n", dev.vendor_id())
                && at("device")? == alloc::format!("0x{:04x}\n", dev.device_id())
                && at("class")? == alloc::format!("0x{:06x}\n", dev.class_code()),
            "{name}: ids"
        );
        ensure!(at("resource")?.lines().count() == 7, "{name}: resource");
        let irq: u32 = at("irq")?.trim().parse().map_err(|_| "irq not a number")?;
        // Linux's `irq`: the MSI vector's IRQ while a driver uses MSI (HD Audio), else INTx.
        let expected = match pci::irq_vectors(dev.address()) {
            Some((IrqVectorKind::Msi, irqs)) => irqs.first().copied().unwrap_or(0),
            _ => dev.intx_irq().map_or(0, |i| i.gsi),
        };
        ensure!(irq == expected, "{name}: irq {irq}, expected {expected}");
    }
    Ok(())
}

/// A PCI driver on managed helpers binds (lspci -k names it), unbinds and rebinds 200 times
/// through /sys, has each managed acquisition failed in turn, and leaves every counter (MSI
/// vectors and MMIO claims included) as it found it; its kept BAR handle is revoked at unbind.
pub(super) fn pci_driver_binds_unbinds_and_leaks_nothing() -> TestResult {
    use super::leaks::{quiet_snapshot, settles_to};
    let Some(dev) = find_with(true).or_else(|| find_with(false)) else {
        skip!("no PCI function with MSI or MSI-X");
    };
    crate::drivers::wait_for_device_probe();
    let name = dev.name();
    if let Some(lull_driver_core::DeviceState::Bound { driver, .. }) = pci_state(&name) {
        skip!("{name} is bound to {driver}");
    }
    let empty = quiet_snapshot();
    let ids = alloc::vec![lull_driver_core::PciMatchId::device(
        dev.vendor_id(),
        dev.device_id()
    )];
    crate::drivers::base::register_driver(lull_driver_core::DriverDesc::new(
        "pci",
        PCI_DRIVER,
        ids,
        KtestPciDriver,
    ))
    .map_err(|e| alloc::format!("register: {e}"))?;
    ensure!(
        matches!(
            pci_state(&name),
            Some(lull_driver_core::DeviceState::Bound { .. })
        ),
        "{name} not bound: {:?}",
        pci_state(&name)
    );
    let lspci = pci::lspci(&["-k"])?;
    ensure!(
        lspci.contains(&alloc::format!("\tKernel driver in use: {PCI_DRIVER}")),
        "lspci -k:\n{lspci}"
    );
    ensure!(
        msi::vectors_in_use() > empty.msi_vectors
            && crate::mm::iomem::busy_count() > empty.mmio_claims,
        "bound without vectors or a claim"
    );
    let unbind = alloc::format!("/sys/bus/pci/drivers/{PCI_DRIVER}/unbind");
    let bind = alloc::format!("/sys/bus/pci/drivers/{PCI_DRIVER}/bind");
    procfs::write(&unbind, &name)?;
    ensure!(
        (msi::vectors_in_use(), crate::mm::iomem::busy_count())
            == (empty.msi_vectors, empty.mmio_claims),
        "unbind left vectors or claims"
    );
    let kept = KEPT.lock().take().ok_or("probe kept no handle")?;
    ensure!(
        kept.try_access().is_none(),
        "the BAR mapping outlived the unbind"
    );
    drop(kept);
    // One warm-up cycle (lazily grown tables reach their size), then the baseline.
    procfs::write(&bind, &name)?;
    procfs::write(&unbind, &name)?;
    KEPT.lock().take();
    let before = quiet_snapshot();
    for round in 0..200 {
        procfs::write(&bind, &name).map_err(|e| alloc::format!("round {round}: bind: {e}"))?;
        procfs::write(&unbind, &name).map_err(|e| alloc::format!("round {round}: unbind: {e}"))?;
        KEPT.lock().take();
    }
    settles_to(before, "200 PCI bind/unbind rounds")?;
    let tracker = lull_devres::LeakTracker::new();
    let report = crate::drivers::base::with_model(|m| {
        m.sweep_probe_faults("pci", &name, PCI_DRIVER, &tracker)
    })
    .ok_or("no driver model")?
    .map_err(|e| alloc::format!("sweep: {e:?}"))?;
    // Enable, BAR map, vectors, IRQ.
    ensure!(
        report.acquisition_points == 4,
        "acquisition points {} ({report:?})",
        report.acquisition_points
    );
    drop((report, tracker));
    procfs::write(&unbind, &name)?;
    KEPT.lock().take();
    settles_to(before, "PCI fault sweep")?;
    Ok(())
}
