//! Message-signalled IRQs: numbers above the IOAPIC's GSIs, each with a (CPU, vector) from the
//! per-CPU allocator of `lull-pci` (Linux's vector matrix), so `request_irq`, `free_irq`,
//! `/proc/interrupts` and `/proc/irq/N/smp_affinity` treat them as any other line.
//!
//! The device side is an [`MsiChip`] (the PCI layer implements it for an MSI capability or an
//! MSI-X table): the irq layer composes each vector's x86 message and asks the chip to write it,
//! to mask and to unmask. An allocated vector is masked until a handler is requested and again
//! once it is freed.
//!
//! Vectors: the device range of the IDT (0x30..=0xEF) minus the IOAPIC lines' vectors
//! (`DEVICE_VECTOR_BASE + GSI`), the bench's self-IPI vector and everything from the first
//! system vector (the local timer's) up. The IDT is shared by all CPUs, so every MSI vector has
//! the same entry, [`msi_dispatch`], which finds the IRQ from (this CPU, vector).
//!
//! Affinity: moving an IRQ allocates a vector on the target CPU, installs the (CPU, vector) →
//! IRQ entry, and has the chip rewrite the message (an MSI-X entry is masked meanwhile). The old
//! vector stays allocated and routed to the IRQ until the first interrupt arrives on the new one
//! (a message the device sent before the rewrite may still land on the old one: Linux's
//! `irq_complete_move`), or until the next move or the free. A multi-message MSI block shares
//! one address, so its IRQs' affinity is fixed (as Linux without interrupt remapping).
//!
//! Locks (IRQ-safe): `MSI_IRQS` → `VECTORS`. Neither is taken under `LINES`, and `LINES` is not
//! taken under them.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use lull_pci::{CpuMask, MsiMessage, VectorAllocator, VectorAssignment, X86Msi};

use super::IrqError;
use crate::arch::interrupts;
use crate::kernel::locking::{IrqSafeLock, MAX_CPUS};

/// The device end of message-signalled vectors.
pub trait MsiChip: Send + Sync {
    /// Writes vector `index`'s message into the device (an MSI-X entry masked while it is
    /// rewritten; MSI as `lull_pci::msi_set_message` does).
    fn write_message(&self, index: u16, msg: MsiMessage);
    /// Masks or unmasks vector `index` (nothing where the device cannot mask one vector).
    fn set_masked(&self, index: u16, masked: bool);
}

/// One message-signalled IRQ.
struct MsiIrq {
    chip: Arc<dyn MsiChip>,
    index: u16,
    /// `/proc/interrupts`' chip column, e.g. `PCI-MSIX-0000:00:02.0`.
    label: Arc<str>,
    /// Part of a multi-message MSI block: affinity fixed.
    block: bool,
    assignment: VectorAssignment,
    /// The vector left by a move, until the first interrupt on the new one.
    old: Option<VectorAssignment>,
    affinity: CpuMask,
    counts: Arc<[AtomicU64; MAX_CPUS]>,
}

static MSI_IRQS: IrqSafeLock<BTreeMap<u32, MsiIrq>> = IrqSafeLock::new(BTreeMap::new());
static VECTORS: IrqSafeLock<Option<VectorAllocator>> = IrqSafeLock::new(None);
/// (CPU, vector) → IRQ + 1 (0: none), read by the hard-IRQ entry without a lock.
static VECTOR_IRQ: [[AtomicU32; 256]; MAX_CPUS] =
    [const { [const { AtomicU32::new(0) }; 256] }; MAX_CPUS];
/// Vector of `bench pvops`' self-IPIs (kept out of the allocator).
const BENCH_IPI_VECTOR: u8 = 0xE0;

/// The first MSI IRQ number: the first past the IOAPIC's GSIs (at least 24, as Linux).
fn first_msi_irq() -> u32 {
    super::ioapic_gsi_end().max(24)
}

fn with_vectors<R>(f: impl FnOnce(&mut VectorAllocator) -> R) -> R {
    let mut slot = VECTORS.lock();
    let allocator = slot.get_or_insert_with(|| {
        let ioapic_end = super::ioapic_gsi_end();
        let mut reserved: Vec<u8> = (0..ioapic_end)
            .filter_map(|gsi| u8::try_from(u32::from(interrupts::DEVICE_VECTOR_BASE) + gsi).ok())
            .collect();
        reserved.push(BENCH_IPI_VECTOR);
        reserved.extend(crate::kernel::time::LOCAL_TIMER_VECTOR..=u8::MAX);
        VectorAllocator::new(crate::kernel::smp::possible_cpus(), &reserved)
    });
    f(allocator)
}

fn message(assignment: VectorAssignment) -> MsiMessage {
    let apic_id = super::apic_id_of(assignment.cpu);
    X86Msi::fixed(apic_id as u8, assignment.vector).compose()
}

fn route(assignment: VectorAssignment, irq: Option<u32>) {
    VECTOR_IRQ[assignment.cpu][usize::from(assignment.vector)]
        .store(irq.map_or(0, |irq| irq + 1), Ordering::Release);
    if irq.is_some() {
        interrupts::set_handler(assignment.vector, msi_dispatch);
    }
}

fn online_mask() -> CpuMask {
    let mut mask = CpuMask::empty();
    for cpu in crate::kernel::smp::online_cpus() {
        mask.insert(cpu);
    }
    mask
}

/// Allocates `count` message-signalled IRQs for `chip`'s vectors `0..count`, each with a
/// vector on the online CPU with the fewest in use (`block`: one aligned block on one CPU, for
/// multi-message MSI). Returns each IRQ with the message to program; every vector starts masked
/// (the caller enables the function with the entries masked). Nothing is kept on failure.
pub fn alloc_msi_irqs(
    chip: Arc<dyn MsiChip>,
    count: usize,
    block: bool,
    label: &str,
) -> Result<Vec<(u32, MsiMessage)>, IrqError> {
    let affinity = online_mask();
    let assignments = with_vectors(|vectors| {
        if block {
            return vectors.allocate_block(&affinity, count);
        }
        let mut taken = Vec::with_capacity(count);
        for _ in 0..count {
            match vectors.allocate(&affinity) {
                Ok(a) => taken.push(a),
                Err(error) => {
                    for a in taken {
                        let _ = vectors.free(a);
                    }
                    return Err(error);
                }
            }
        }
        Ok(taken)
    })
    .map_err(|error| IrqError::NoVector(alloc::format!("{error}")))?;
    let label: Arc<str> = Arc::from(label);
    let mut irqs = MSI_IRQS.lock();
    let mut out = Vec::with_capacity(count);
    let mut next = first_msi_irq();
    for (index, assignment) in assignments.into_iter().enumerate() {
        while irqs.contains_key(&next) {
            next += 1;
        }
        irqs.insert(
            next,
            MsiIrq {
                chip: Arc::clone(&chip),
                index: index as u16,
                label: Arc::clone(&label),
                block,
                assignment,
                old: None,
                affinity,
                counts: Arc::new([const { AtomicU64::new(0) }; MAX_CPUS]),
            },
        );
        route(assignment, Some(next));
        out.push((next, message(assignment)));
        next += 1;
    }
    Ok(out)
}

/// Returns message-signalled IRQs and every vector they hold. Refused, freeing nothing, while
/// any of them still has a handler (`free_irq` first, as Linux insists).
pub fn free_msi_irqs(irqs: &[u32]) -> Result<(), IrqError> {
    for &irq in irqs {
        if let Some(holder) = super::holder(irq) {
            return Err(IrqError::Busy(irq, holder));
        }
    }
    let mut table = MSI_IRQS.lock();
    for &irq in irqs {
        let Some(entry) = table.remove(&irq) else {
            continue;
        };
        entry.chip.set_masked(entry.index, true);
        for assignment in [Some(entry.assignment), entry.old].into_iter().flatten() {
            route(assignment, None);
            with_vectors(|vectors| {
                if let Err(error) = vectors.free(assignment) {
                    crate::pr_warn!("msi: IRQ {irq}: {error}");
                }
            });
        }
    }
    Ok(())
}

/// Vectors allocated to message-signalled IRQs now, on all CPUs (the leak counter).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // leak checks
pub fn vectors_in_use() -> usize {
    VECTORS
        .lock()
        .as_ref()
        .map_or(0, VectorAllocator::total_in_use)
}

/// Message-signalled IRQs allocated now.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // leak checks
pub fn irqs_in_use() -> usize {
    MSI_IRQS.lock().len()
}

/// `irq`'s vector, CPU and affinity, if it is message-signalled.
pub(super) fn placement(irq: u32) -> Option<(u8, usize, CpuMask)> {
    MSI_IRQS
        .lock()
        .get(&irq)
        .map(|e| (e.assignment.vector, e.assignment.cpu, e.affinity))
}

/// `/proc/interrupts`' description (`PCI-MSIX-0000:00:02.0 0-edge`) and per-CPU counts.
pub(super) fn describe(irq: u32) -> Option<(String, Arc<[AtomicU64; MAX_CPUS]>)> {
    MSI_IRQS.lock().get(&irq).map(|e| {
        (
            alloc::format!("{} {}-edge", e.label, e.index),
            Arc::clone(&e.counts),
        )
    })
}

/// Masks or unmasks `irq`'s vector in the device.
pub(super) fn set_masked(irq: u32, masked: bool) {
    if let Some(entry) = MSI_IRQS.lock().get(&irq) {
        entry.chip.set_masked(entry.index, masked);
    }
}

/// Releases the vector a move left, if any (with `MSI_IRQS` held).
fn complete_move(entry: &mut MsiIrq) {
    if let Some(old) = entry.old.take() {
        route(old, None);
        with_vectors(|vectors| {
            let _ = vectors.free(old);
        });
    }
}

/// Moves `irq` to `cpu` (`mask` is the new `smp_affinity`): a vector there, the device
/// reprogrammed. Nothing changes on failure.
pub(super) fn move_to(irq: u32, cpu: usize, mask: CpuMask) -> Result<u8, IrqError> {
    let mut irqs = MSI_IRQS.lock();
    let entry = irqs.get_mut(&irq).ok_or(IrqError::NotRequested(irq))?;
    if entry.assignment.cpu == cpu {
        entry.affinity = mask;
        return Ok(entry.assignment.vector);
    }
    if entry.block {
        return Err(IrqError::AffinityFixed(irq));
    }
    complete_move(entry);
    let pending = with_vectors(|vectors| vectors.move_vector(entry.assignment, cpu))
        .map_err(|error| IrqError::NoVector(alloc::format!("{error}")))?;
    let lull_pci::PendingMove { old, new } = pending;
    route(new, Some(irq));
    entry.chip.write_message(entry.index, message(new));
    entry.assignment = new;
    entry.old = Some(old);
    entry.affinity = mask;
    Ok(new.vector)
}

/// The IDT entry of every MSI vector: finds the IRQ for (this CPU, vector) and runs it.
fn msi_dispatch(vector: u8) {
    let cpu = crate::kernel::smp::this_cpu();
    let irq = match VECTOR_IRQ[cpu][usize::from(vector)].load(Ordering::Acquire) {
        0 => return,
        n => n - 1,
    };
    {
        let mut irqs = MSI_IRQS.lock();
        if let Some(entry) = irqs.get_mut(&irq) {
            entry.counts[cpu].fetch_add(1, Ordering::Relaxed);
            if entry.old.is_some() && entry.assignment == (VectorAssignment { cpu, vector }) {
                complete_move(entry);
            }
        }
    }
    super::handle_irq(irq);
}
