//! Managed PCI resources (Linux's `pcim_*`), on a device's devres list like the helpers of
//! `drivers::base::devm`: each consults the fault injector first, and is released in reverse
//! order on unbind or probe failure.
//!
//! | helper                      | Linux                        | released by                       |
//! |-----------------------------|------------------------------|-----------------------------------|
//! | [`pcim_enable_device`]      | `pcim_enable_device`         | `disable_device` (and bus master) |
//! | [`pcim_iomap`]              | `pcim_iomap_region`          | revoke, unmap, unclaim            |
//! | [`pcim_iomap_range`]        | `pcim_iomap_range`           | revoke, unmap, unclaim            |
//! | [`pcim_request_io_bar`]     | `pcim_request_region` (I/O)  | revoke, unclaim                   |
//! | [`pcim_alloc_irq_vectors`]  | `pci_alloc_irq_vectors` (managed) | `free_irq_vectors`           |
//!
//! Request the vectors' IRQs *after* [`pcim_alloc_irq_vectors`] (with
//! `drivers::base::devm::request_threaded_irq`): the IRQs are then freed first at unbind, as
//! `free_irq_vectors` requires.
// The virtio-pci and SMBus drivers use these next; today only the in-kernel tests do.
#![cfg_attr(not(feature = "ktest"), allow(dead_code))]

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;

use lull_devres::{DevresList, ResourceInfo, ResourceKind, Revocable};
use lull_driver_core::{Errno, ProbeError};

use super::{IrqVectorFlags, PciDevice, PciError};
use crate::arch::io::IoPorts;
use crate::arch::mmio::Mmio;

fn errno(dev: &PciDevice, what: &str, error: PciError) -> Errno {
    crate::pr_err!("pci {}: {what}: {error}", dev.name());
    match error {
        PciError::Mmio(crate::arch::mmio::MmioError::Busy(_)) | PciError::Ports(_) => Errno::EBUSY,
        PciError::NoIrq(_) => Errno::ENOSYS,
        PciError::VectorsAllocated | PciError::IrqBusy(_) => Errno::EBUSY,
        _ => Errno::EINVAL,
    }
}

/// Decoding (and bus mastering, if the driver turned it on) switched off at release.
struct Enabled {
    dev: PciDevice,
}

impl lull_devres::ManagedResource for Enabled {
    fn describe(&self) -> ResourceInfo {
        ResourceInfo::new(ResourceKind::Other("pci-enable"), self.dev.name())
    }
    fn release(self: Box<Self>) {
        self.dev.disable_device();
    }
}

/// `pcim_enable_device`: memory/I/O decoding on now, off again (with bus mastering) at unbind.
pub fn pcim_enable_device(devres: &mut DevresList, dev: &PciDevice) -> Result<(), ProbeError> {
    devres
        .acquire(|| {
            dev.enable_device();
            Ok::<_, Errno>(Enabled { dev: *dev })
        })
        .map(|_| ())
        .map_err(ProbeError::from)
}

/// Claims and maps memory BAR `bar` whole for `owner`; the handle is revoked, then unmapped and
/// unclaimed, at unbind (a driver that kept it gets `None` from `try_access`).
pub fn pcim_iomap(
    devres: &mut DevresList,
    dev: &PciDevice,
    bar: usize,
    owner: &str,
) -> Result<Arc<Revocable<Mmio>>, ProbeError> {
    let size = dev.bar(bar).window().map_or(0, |(_, size)| size);
    pcim_iomap_range(devres, dev, bar, 0, size, owner)
}

/// As [`pcim_iomap`] for `len` bytes at `offset` of the BAR (a virtio-pci structure).
pub fn pcim_iomap_range(
    devres: &mut DevresList,
    dev: &PciDevice,
    bar: usize,
    offset: u64,
    len: u64,
    owner: &str,
) -> Result<Arc<Revocable<Mmio>>, ProbeError> {
    let start = dev.bar(bar).window().map_or(0, |(base, _)| base) + offset;
    let info = ResourceInfo::new(
        ResourceKind::Mmio,
        format!("BAR {bar} {start:#x}-{:#x}", start + len.max(1) - 1),
    )
    .with_size(len);
    devres
        .acquire_revocable(info, || {
            dev.map_bar_range(bar, offset, len, owner)
                .map_err(|e| errno(dev, "map BAR", e))
        })
        .map_err(ProbeError::from)
}

/// Claims I/O BAR `bar` for `owner`; revoked and unclaimed at unbind.
pub fn pcim_request_io_bar(
    devres: &mut DevresList,
    dev: &PciDevice,
    bar: usize,
    owner: &'static str,
) -> Result<Arc<Revocable<IoPorts>>, ProbeError> {
    let (base, len) = dev.bar(bar).window().unwrap_or((0, 0));
    let info = ResourceInfo::new(
        ResourceKind::IoPort,
        format!("BAR {bar} {base:#06x}-{:#06x}", base + len.max(1) - 1),
    )
    .with_size(len);
    devres
        .acquire_revocable(info, || {
            dev.request_io_bar(bar, owner)
                .map_err(|e| errno(dev, "claim I/O BAR", e))
        })
        .map_err(ProbeError::from)
}

/// A function's IRQ vectors, freed at release.
struct Vectors {
    dev: PciDevice,
    count: usize,
}

impl lull_devres::ManagedResource for Vectors {
    fn describe(&self) -> ResourceInfo {
        let kind = super::irq_vectors(self.dev.address())
            .map_or(String::from("none"), |(kind, irqs)| {
                format!("{kind} {irqs:?}")
            });
        ResourceInfo::new(ResourceKind::Irq, format!("{} vectors: {kind}", self.count))
    }
    fn release(self: Box<Self>) {
        if let Err(error) = self.dev.free_irq_vectors() {
            crate::pr_err!("pci {}: free_irq_vectors: {error}", self.dev.name());
        }
    }
}

/// Managed [`alloc_irq_vectors`](super::alloc_irq_vectors): the vectors are freed at unbind.
/// Returns how many were allocated; [`PciDevice::irq_vector`] gives their IRQ numbers.
pub fn pcim_alloc_irq_vectors(
    devres: &mut DevresList,
    dev: &PciDevice,
    min: usize,
    max: usize,
    flags: IrqVectorFlags,
) -> Result<usize, ProbeError> {
    let mut count = 0;
    devres
        .acquire(|| {
            count = dev
                .alloc_irq_vectors(min, max, flags)
                .map_err(|e| errno(dev, "alloc_irq_vectors", e))?;
            Ok::<_, Errno>(Vectors { dev: *dev, count })
        })
        .map_err(ProbeError::from)?;
    Ok(count)
}
