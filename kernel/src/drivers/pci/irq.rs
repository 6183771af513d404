//! A PCI function's interrupts: INTx routed through ACPI `_PRT` (with the bridge swizzle), and
//! Linux's `pci_alloc_irq_vectors` / `pci_irq_vector` / `pci_free_irq_vectors`: MSI-X preferred
//! (table and PBA in their BAR, one vector per entry, each masked until a handler is
//! requested), then MSI (multi-message when the function allows, a power of two), then INTx.
//! Every vector is an IRQ number of the irq layer (MSI ones above the IOAPIC's GSIs), so
//! `request_irq` / `request_threaded_irq` / `free_irq`, `/proc/interrupts` and
//! `/proc/irq/N/smp_affinity` work on them.
// The drivers that use this API (virtio-pci, SMBus) land with the driver model; until then only
// the in-kernel tests and lspci call parts of it.
#![cfg_attr(not(feature = "ktest"), allow(dead_code))]

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use lull_pci::{
    msi_disable, msi_enable, msi_set_message, msi_set_vector_masked, msix_disable,
    msix_enable_masked, msix_set_entry_masked, msix_update_entry, route_intx, Capability,
    MsiCapability, MsiMessage, MsixCapability, MsixTable, PciAddress, PrtSource, RoutingTable,
    RoutingTables,
};
use spin::Once;

use super::{config, PciDevice, PciError};
use crate::arch::mmio::Mmio;
use crate::kernel::irq::msi::{alloc_msi_irqs, free_msi_irqs, MsiChip};
use crate::kernel::irq::IrqFlags;
use crate::kernel::locking::Mutex;

/// Which kinds of interrupt [`alloc_irq_vectors`] may use (Linux's `PCI_IRQ_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqVectorFlags(u8);

impl IrqVectorFlags {
    /// Legacy INTx (one vector).
    pub const INTX: IrqVectorFlags = IrqVectorFlags(1);
    /// MSI.
    pub const MSI: IrqVectorFlags = IrqVectorFlags(2);
    /// MSI-X.
    pub const MSIX: IrqVectorFlags = IrqVectorFlags(4);
    /// Any kind (Linux's `PCI_IRQ_ALL_TYPES`).
    pub const ALL: IrqVectorFlags = IrqVectorFlags(7);

    /// Whether every kind of `other` is allowed.
    pub const fn contains(self, other: IrqVectorFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for IrqVectorFlags {
    type Output = IrqVectorFlags;
    fn bitor(self, other: IrqVectorFlags) -> IrqVectorFlags {
        IrqVectorFlags(self.0 | other.0)
    }
}

/// The kind of interrupt vectors a function got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqVectorKind {
    /// MSI-X.
    Msix,
    /// MSI.
    Msi,
    /// The INTx line (a GSI, level-triggered, active low, possibly shared).
    Intx,
}

impl core::fmt::Display for IrqVectorKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            IrqVectorKind::Msix => "MSI-X",
            IrqVectorKind::Msi => "MSI",
            IrqVectorKind::Intx => "INTx",
        })
    }
}

/// A function's INTx, routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntxIrq {
    /// The GSI (= IRQ number) it arrives on.
    pub gsi: u32,
    /// Level-triggered (always for a routed PCI INTx).
    pub level: bool,
    /// Active low.
    pub active_low: bool,
    /// Where the route came from: `_PRT` (with the bridge the lookup ended at) or the Interrupt
    /// Line register firmware wrote.
    pub source: String,
}

impl IntxIrq {
    /// The flags to request it with (level, active low, shared: a PCI line, which other
    /// functions may be wired to as well).
    pub fn request_flags(&self) -> IrqFlags {
        IrqFlags::SHARED
            | if self.active_low {
                IrqFlags::TRIGGER_LOW
            } else {
                IrqFlags::TRIGGER_HIGH
            }
    }
}

/// The root bus's `_PRT` in `lull-pci`'s terms (links resolved by the AML layer where their
/// `_CRS` says). The first PCI root is taken as segment 0 bus 0: q35 and microvm have one root.
fn routing_tables() -> &'static RoutingTables {
    static TABLES: Once<RoutingTables> = Once::new();
    TABLES.call_once(|| {
        let mut tables = RoutingTables::new();
        if let Some((_, entries)) = crate::drivers::acpi::pci_routing().first() {
            let table = RoutingTable {
                entries: entries
                    .iter()
                    .map(|e| {
                        let source = match &e.source {
                            crate::drivers::acpi::PrtSource::Gsi(gsi) => PrtSource::Gsi(*gsi),
                            crate::drivers::acpi::PrtSource::Link { gsi: Some(gsi), .. } => {
                                PrtSource::Gsi(*gsi)
                            }
                            crate::drivers::acpi::PrtSource::Link { path, index, .. } => {
                                PrtSource::Link {
                                    name: path.clone(),
                                    index: *index,
                                }
                            }
                        };
                        lull_pci::PrtEntry::new(e.device as u8, e.pin, source)
                    })
                    .collect(),
            };
            tables.insert(0, 0, table);
        }
        tables
    })
}

impl PciDevice {
    /// The function's INTx: through `_PRT` (swizzled through bridges without their own table),
    /// level-triggered and active low; else the Interrupt Line register firmware wrote (an ISA
    /// IRQ, through the MADT's overrides). `None` when the function has no interrupt pin or no
    /// route.
    pub fn intx_irq(&self) -> Option<IntxIrq> {
        let pin = self.function().interrupt_pin;
        if !(1..=4).contains(&pin) {
            return None;
        }
        match route_intx(routing_tables(), super::scan(), self.address(), pin) {
            Ok(route) => match route.source {
                PrtSource::Gsi(gsi) => {
                    return Some(IntxIrq {
                        gsi,
                        level: true,
                        active_low: true,
                        source: alloc::format!(
                            "_PRT ({} INT{})",
                            route.matched_at,
                            (b'A' + route.pin) as char
                        ),
                    })
                }
                PrtSource::Link { name, .. } => {
                    crate::pr_warn!("pci {}: INTx link {name} has no GSI", self.address());
                }
            },
            Err(error) => crate::pr_debug!("pci {}: {error}", self.address()),
        }
        let line = self.read_config_u8(0x3C);
        if line == 0 || line == 0xFF {
            return None;
        }
        let gsi = crate::kernel::irq::isa_irq_to_gsi(line);
        let trigger = crate::kernel::irq::firmware_trigger(gsi);
        Some(IntxIrq {
            gsi,
            level: trigger.is_none_or(|t| t.level),
            active_low: trigger.is_none_or(|t| t.active_low),
            source: alloc::format!("Interrupt Line {line}"),
        })
    }

    /// Method form of [`alloc_irq_vectors`].
    pub fn alloc_irq_vectors(
        &self,
        min: usize,
        max: usize,
        flags: IrqVectorFlags,
    ) -> Result<usize, PciError> {
        alloc_irq_vectors(self, min, max, flags)
    }

    /// Method form of [`irq_vector`].
    pub fn irq_vector(&self, nr: usize) -> Option<u32> {
        irq_vector(self, nr)
    }

    /// Method form of [`free_irq_vectors`].
    pub fn free_irq_vectors(&self) -> Result<(), PciError> {
        free_irq_vectors(self)
    }
}

/// An MSI-X table in its BAR.
struct MsixChip {
    table: Mmio,
    cap: MsixCapability,
}

impl MsixTable for MsixChip {
    fn read32(&self, offset: u32) -> u32 {
        self.table.read_u32(offset as usize)
    }
    fn write32(&self, offset: u32, value: u32) {
        self.table.write_u32(offset as usize, value)
    }
}

impl MsiChip for MsixChip {
    fn write_message(&self, index: u16, msg: MsiMessage) {
        if let Err(error) = msix_update_entry(self, &self.cap, index, msg) {
            crate::pr_warn!("msix: {error}");
        }
    }
    fn set_masked(&self, index: u16, masked: bool) {
        if index < self.cap.table_size {
            msix_set_entry_masked(self, index, masked);
        }
    }
}

/// An MSI capability.
struct MsiCapChip {
    address: PciAddress,
    cap: MsiCapability,
}

impl MsiChip for MsiCapChip {
    fn write_message(&self, index: u16, msg: MsiMessage) {
        // Only single-vector MSI moves (a block's affinity is fixed), so index is 0.
        if index == 0 {
            if let Err(error) = msi_set_message(config(), self.address, &self.cap, msg) {
                crate::pr_warn!("msi {}: {error}", self.address);
            }
        }
    }
    fn set_masked(&self, index: u16, masked: bool) {
        if self.cap.per_vector_masking {
            let _ = msi_set_vector_masked(config(), self.address, &self.cap, index.into(), masked);
        }
    }
}

/// What a function got from [`alloc_irq_vectors`].
struct Vectors {
    kind: IrqVectorKind,
    irqs: Vec<u32>,
    msix: Option<Arc<MsixChip>>,
    msi: Option<MsiCapability>,
}

static VECTORS: Mutex<BTreeMap<PciAddress, Vectors>> =
    Mutex::named("pci::VECTORS", BTreeMap::new());

fn msix_cap(dev: &PciDevice) -> Option<MsixCapability> {
    dev.capabilities().iter().find_map(|c| match c {
        Capability::MsiX(x) => Some(*x),
        _ => None,
    })
}

fn msi_cap(dev: &PciDevice) -> Option<MsiCapability> {
    dev.capabilities().iter().find_map(|c| match c {
        Capability::Msi(m) => Some(*m),
        _ => None,
    })
}

fn try_msix(dev: &PciDevice, cap: MsixCapability, count: usize) -> Result<Vectors, PciError> {
    if !dev
        .command()
        .contains(lull_pci::CommandRegister::MEMORY_ENABLE)
    {
        return Err(PciError::NotEnabled);
    }
    let table = dev.map_bar_unclaimed(
        usize::from(cap.table_bir),
        u64::from(cap.table_offset),
        u64::from(cap.table_size) * 16,
        "MSI-X table",
    )?;
    let chip = Arc::new(MsixChip { table, cap });
    let label = alloc::format!("PCI-MSIX-{}", dev.address());
    let allocated = alloc_msi_irqs(chip.clone(), count, false, &label)
        .map_err(|e| PciError::NoIrq(alloc::format!("{e}")))?;
    let messages: Vec<MsiMessage> = allocated.iter().map(|(_, m)| *m).collect();
    let irqs: Vec<u32> = allocated.iter().map(|(irq, _)| *irq).collect();
    if let Err(error) = msix_enable_masked(config(), dev.address(), &cap, &*chip, &messages) {
        let _ = free_msi_irqs(&irqs);
        return Err(PciError::NoIrq(alloc::format!("{error}")));
    }
    Ok(Vectors {
        kind: IrqVectorKind::Msix,
        irqs,
        msix: Some(chip),
        msi: None,
    })
}

fn try_msi(dev: &PciDevice, cap: MsiCapability, count: usize) -> Result<Vectors, PciError> {
    let chip = Arc::new(MsiCapChip {
        address: dev.address(),
        cap,
    });
    let label = alloc::format!("PCI-MSI-{}", dev.address());
    let allocated = alloc_msi_irqs(chip.clone(), count, count > 1, &label)
        .map_err(|e| PciError::NoIrq(alloc::format!("{e}")))?;
    let irqs: Vec<u32> = allocated.iter().map(|(irq, _)| *irq).collect();
    if let Err(error) = msi_enable(config(), dev.address(), &cap, allocated[0].1, count) {
        let _ = free_msi_irqs(&irqs);
        return Err(PciError::NoIrq(alloc::format!("{error}")));
    }
    for index in 0..count {
        chip.set_masked(index as u16, true);
    }
    Ok(Vectors {
        kind: IrqVectorKind::Msi,
        irqs,
        msix: None,
        msi: Some(cap),
    })
}

/// Linux's `pci_alloc_irq_vectors`: between `min` and `max` vectors of the first kind in
/// `flags` the function supports, in the order MSI-X, MSI (a power of two, at most 32),
/// INTx (one). Returns how many; [`irq_vector`] gives each one's IRQ number. MSI-X needs
/// memory decoding on ([`PciDevice::enable_device`]); bus mastering
/// ([`PciDevice::set_master`]) is needed for any MSI to be delivered. Thread context.
pub fn alloc_irq_vectors(
    dev: &PciDevice,
    min: usize,
    max: usize,
    flags: IrqVectorFlags,
) -> Result<usize, PciError> {
    if min == 0 || max < min {
        return Err(PciError::NoIrq(alloc::format!(
            "bad vector range {min}..={max}"
        )));
    }
    let mut table = VECTORS.lock();
    if table.contains_key(&dev.address()) {
        return Err(PciError::VectorsAllocated);
    }
    let mut why: Vec<String> = Vec::new();
    let mut got = None;
    if flags.contains(IrqVectorFlags::MSIX) {
        match msix_cap(dev) {
            Some(cap) if usize::from(cap.table_size) >= min => {
                match try_msix(dev, cap, max.min(usize::from(cap.table_size))) {
                    Ok(v) => got = Some(v),
                    Err(e) => why.push(alloc::format!("MSI-X: {e}")),
                }
            }
            Some(cap) => why.push(alloc::format!("MSI-X: only {} entries", cap.table_size)),
            None => why.push(String::from("no MSI-X")),
        }
    }
    if got.is_none() && flags.contains(IrqVectorFlags::MSI) {
        match msi_cap(dev) {
            Some(cap) => {
                let supported = usize::from(cap.max_vectors());
                let mut count = max.min(supported).min(32);
                count = 1 << (usize::BITS - 1 - count.leading_zeros());
                if count >= min {
                    match try_msi(dev, cap, count) {
                        Ok(v) => got = Some(v),
                        Err(e) => why.push(alloc::format!("MSI: {e}")),
                    }
                } else {
                    why.push(alloc::format!("MSI: at most {count} vectors"));
                }
            }
            None => why.push(String::from("no MSI")),
        }
    }
    if got.is_none() && flags.contains(IrqVectorFlags::INTX) {
        match dev.intx_irq() {
            Some(intx) if min == 1 => {
                got = Some(Vectors {
                    kind: IrqVectorKind::Intx,
                    irqs: alloc::vec![intx.gsi],
                    msix: None,
                    msi: None,
                })
            }
            Some(_) => why.push(String::from("INTx: one vector only")),
            None => why.push(String::from("no INTx route")),
        }
    }
    let Some(vectors) = got else {
        return Err(PciError::NoIrq(alloc::format!(
            "{}: {}",
            dev.address(),
            why.join("; ")
        )));
    };
    let count = vectors.irqs.len();
    crate::pr_debug!(
        "pci {}: {count} {} vector(s): IRQ {:?}",
        dev.address(),
        vectors.kind,
        vectors.irqs
    );
    table.insert(dev.address(), vectors);
    Ok(count)
}

/// Linux's `pci_irq_vector`: the IRQ number of vector `nr`.
pub fn irq_vector(dev: &PciDevice, nr: usize) -> Option<u32> {
    VECTORS
        .lock()
        .get(&dev.address())
        .and_then(|v| v.irqs.get(nr).copied())
}

/// The kind and IRQs of `address`'s vectors, if allocated (lspci, sysfs).
pub fn irq_vectors(address: PciAddress) -> Option<(IrqVectorKind, Vec<u32>)> {
    VECTORS
        .lock()
        .get(&address)
        .map(|v| (v.kind, v.irqs.clone()))
}

/// Linux's `pci_free_irq_vectors`: disables MSI-X or MSI (INTx back on) and returns every
/// vector. Refused while any of the IRQs still has a handler.
pub fn free_irq_vectors(dev: &PciDevice) -> Result<(), PciError> {
    let mut table = VECTORS.lock();
    let vectors = table.get(&dev.address()).ok_or(PciError::NoVectors)?;
    if vectors.kind != IrqVectorKind::Intx {
        if let Some(&irq) = vectors
            .irqs
            .iter()
            .find(|&&irq| crate::kernel::irq::irq_affinity(irq).is_some())
        {
            return Err(PciError::IrqBusy(irq));
        }
    }
    let vectors = table.remove(&dev.address()).ok_or(PciError::NoVectors)?;
    match vectors.kind {
        IrqVectorKind::Msix => {
            if let Some(chip) = &vectors.msix {
                msix_disable(config(), dev.address(), &chip.cap, &**chip);
            }
        }
        IrqVectorKind::Msi => {
            if let Some(cap) = &vectors.msi {
                msi_disable(config(), dev.address(), cap);
            }
        }
        IrqVectorKind::Intx => return Ok(()),
    }
    free_msi_irqs(&vectors.irqs).map_err(|e| PciError::NoIrq(alloc::format!("{e}")))
}
