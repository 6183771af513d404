//! The kernel's `devm_*` helpers: each acquires a real resource, consults the device list's
//! fault injector first (so `devres.fail=` reaches every acquisition point), and records the
//! resource on the device's [`DevresList`] with its release. Handles a driver keeps after probe
//! are [`Revocable`]: unbind withdraws them before releasing the resource.
//!
//! | helper                        | Linux                          | released by              |
//! |-------------------------------|--------------------------------|--------------------------|
//! | [`kzalloc`]                   | `devm_kzalloc`                 | dropping the allocation  |
//! | [`request_region`]            | `devm_request_region`          | unclaiming the ports     |
//! | [`request_threaded_irq`]      | `devm_request_threaded_irq`    | `free_irq`               |
//! | [`alloc_coherent`]            | `dmam_alloc_coherent`          | freeing the pages        |
//! | `DevresList::add_action`      | `devm_add_action`              | running the action       |
//! | `DevresList::open_group` …    | `devres_open_group` …          | `release_group`          |
//!
//! MMIO mappings and PCI vectors have their managed forms beside their owners
//! (`drivers::pci::devm`: `pcim_enable_device`, `pcim_iomap`, `pcim_alloc_irq_vectors`…).

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use core::fmt;

use lull_devres::{AcquireError, DevresList, ResourceInfo, ResourceKind, Revocable};
use lull_driver_core::{Errno, ProbeError};

use crate::arch::dma::DmaBuffer;
use crate::arch::io::{ClaimError, IoPorts};
use crate::arch::mmio::{Mmio, MmioError};
use crate::kernel::irq::{self, DevId, IrqError, IrqFlags, IrqHandler};

fn injected_or(error: AcquireError<Errno>) -> ProbeError {
    ProbeError::from(error)
}

/// `devm_kzalloc`: `len` zeroed bytes owned by the device until unbind.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn kzalloc(
    devres: &mut DevresList,
    len: usize,
) -> Result<Arc<Revocable<Box<[u8]>>>, ProbeError> {
    let info = ResourceInfo::new(ResourceKind::Alloc, "kzalloc").with_size(len as u64);
    devres
        .acquire_revocable(info, || {
            let mut bytes = alloc::vec::Vec::new();
            bytes.try_reserve_exact(len).map_err(|_| Errno::ENOMEM)?;
            bytes.resize(len, 0u8);
            Ok(bytes.into_boxed_slice())
        })
        .map_err(injected_or)
}

/// `devm_request_region`: claims `len` ports at `base` for `owner` (refused, naming the holder,
/// when they are taken).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn request_region(
    devres: &mut DevresList,
    base: u16,
    len: u16,
    owner: &'static str,
) -> Result<Arc<Revocable<IoPorts>>, ProbeError> {
    let last = u32::from(base) + u32::from(len).max(1) - 1;
    let info = ResourceInfo::new(ResourceKind::IoPort, format!("{base:#06x}-{last:#06x}"))
        .with_size(u64::from(len));
    devres
        .acquire_revocable(info, || {
            IoPorts::claim(base, len, owner).map_err(|error| {
                match error {
                    ClaimError::Busy {
                        owner: holder,
                        base: held,
                        len: held_len,
                    } => crate::pr_err!(
                        "{owner}: ports {base:#x}+{len:#x} busy: held by {holder} \
                         ({held:#x}+{held_len:#x})"
                    ),
                    other => crate::pr_err!("{owner}: ports {base:#x}+{len:#x}: {other:?}"),
                }
                Errno::EBUSY
            })
        })
        .map_err(injected_or)
}

/// A requested IRQ, freed on release.
struct IrqLine {
    irq: u32,
    name: &'static str,
    dev_id: DevId,
}

impl lull_devres::ManagedResource for IrqLine {
    fn describe(&self) -> ResourceInfo {
        ResourceInfo::new(ResourceKind::Irq, format!("{} ({})", self.irq, self.name))
    }

    fn release(self: Box<Self>) {
        if let Err(error) = irq::free_irq(self.irq, self.dev_id) {
            crate::pr_err!(
                "devres: free_irq({}) for {}: {error:?}",
                self.irq,
                self.name
            );
        }
    }
}

fn irq_errno(error: IrqError) -> Errno {
    match error {
        IrqError::Busy(..) => Errno::EBUSY,
        IrqError::NoSuchLine(_) | IrqError::NoIoApic => Errno::ENXIO,
        _ => Errno::EINVAL,
    }
}

/// `devm_request_threaded_irq`: routes `irq` to `handler`/`thread_fn` (see
/// [`irq::request_threaded_irq`]); `free_irq(irq, dev_id)` runs at release, before any
/// resource acquired earlier (so the handler never outlives what it uses).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no shell-build driver uses it yet
pub fn request_threaded_irq(
    devres: &mut DevresList,
    irq_number: u32,
    handler: Option<IrqHandler>,
    thread_fn: Option<IrqHandler>,
    flags: IrqFlags,
    name: &'static str,
    dev_id: DevId,
) -> Result<(), ProbeError> {
    devres
        .acquire(|| {
            irq::request_threaded_irq(irq_number, handler, thread_fn, flags, name, dev_id)
                .map(|_| IrqLine {
                    irq: irq_number,
                    name,
                    dev_id,
                })
                .map_err(|error| {
                    crate::pr_err!("{name}: cannot request IRQ {irq_number}: {error}");
                    irq_errno(error)
                })
        })
        .map(|_| ())
        .map_err(injected_or)
}

/// `devm_request_irq`: as [`request_threaded_irq`] with a hard handler only (threaded anyway
/// under `threadirqs`).
pub fn request_irq(
    devres: &mut DevresList,
    irq_number: u32,
    handler: IrqHandler,
    flags: IrqFlags,
    name: &'static str,
    dev_id: DevId,
) -> Result<(), ProbeError> {
    devres
        .acquire(|| {
            irq::request_irq(irq_number, handler, flags, name, dev_id)
                .map(|_| IrqLine {
                    irq: irq_number,
                    name,
                    dev_id,
                })
                .map_err(|error| {
                    crate::pr_err!("{name}: cannot request IRQ {irq_number}: {error}");
                    irq_errno(error)
                })
        })
        .map(|_| ())
        .map_err(injected_or)
}

/// `dmam_alloc_coherent`: a zeroed DMA buffer of at least `len` bytes below 4 GiB.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no shell-build driver uses it yet
pub fn alloc_coherent(
    devres: &mut DevresList,
    len: usize,
) -> Result<Arc<Revocable<DmaBuffer>>, ProbeError> {
    let info = ResourceInfo::new(ResourceKind::Dma, "coherent").with_size(len as u64);
    devres
        .acquire_revocable(info, || DmaBuffer::alloc(len).ok_or(Errno::ENOMEM))
        .map_err(injected_or)
}

/// `devm_ioremap_resource`: claims and maps `len` bytes of device memory at `phys` for `owner`
/// (refused, naming the holder, when someone else has them).
pub fn ioremap(
    devres: &mut DevresList,
    phys: u64,
    len: u64,
    owner: &'static str,
) -> Result<Arc<Revocable<Mmio>>, ProbeError> {
    let last = phys.saturating_add(len.max(1) - 1);
    let info = ResourceInfo::new(ResourceKind::Mmio, format!("{phys:#x}-{last:#x}")).with_size(len);
    devres
        .acquire_revocable(info, || {
            Mmio::claim(phys, len, owner).map_err(|error| {
                crate::pr_err!("{owner}: memory {phys:#x}+{len:#x}: {error}");
                match error {
                    MmioError::Busy(_) => Errno::EBUSY,
                    MmioError::WindowFull => Errno::ENOMEM,
                    _ => Errno::EINVAL,
                }
            })
        })
        .map_err(injected_or)
}

/// What the leak checks compare: every counter a bind/unbind cycle must return to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeakSnapshot {
    /// Heap bytes in use.
    pub heap_bytes: usize,
    /// Requested IRQ lines (IOAPIC and MSI).
    pub irq_lines: usize,
    /// Claimed I/O port ranges.
    pub port_claims: usize,
    /// Pages held by DMA-coherent buffers.
    pub dma_pages: usize,
    /// Free pages in the page allocator.
    pub free_pages: u64,
    /// Interrupt vectors held by MSI / MSI-X IRQs (all CPUs).
    pub msi_vectors: usize,
    /// Claimed MMIO ranges in the iomem tree.
    pub mmio_claims: usize,
}

impl LeakSnapshot {
    /// The counters now.
    pub fn take() -> LeakSnapshot {
        // Before the heap is read: the first look builds the iomem tree (and scans PCI).
        let mmio_claims = crate::mm::iomem::busy_count();
        let msi_vectors = irq::msi::vectors_in_use();
        LeakSnapshot {
            heap_bytes: crate::arch::heap::usage().0,
            irq_lines: irq::requested_lines(),
            port_claims: crate::arch::io::claimed().len(),
            dma_pages: crate::arch::dma::pages_in_use(),
            free_pages: crate::mm::page_counts().1,
            msi_vectors,
            mmio_claims,
        }
    }
}

impl fmt::Display for LeakSnapshot {
    /// The `/proc/devres_leaks` format: one `name value` a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "heap_bytes {}", self.heap_bytes)?;
        writeln!(f, "irq_lines {}", self.irq_lines)?;
        writeln!(f, "port_claims {}", self.port_claims)?;
        writeln!(f, "dma_pages {}", self.dma_pages)?;
        writeln!(f, "free_pages {}", self.free_pages)?;
        writeln!(f, "msi_vectors {}", self.msi_vectors)?;
        writeln!(f, "mmio_claims {}", self.mmio_claims)
    }
}
