//! virtio-pci modern (virtio 1.2 §4.1): a `pci` driver `virtio-pci` for vendor 0x1af4,
//! devices 0x1040–0x107f (modern: device type = id − 0x1040) and the transitional ids
//! 0x1000–0x103f when they expose the modern capabilities (device type from the subsystem id;
//! QEMU's `virtio-rng-pci` is 1af4:1005 with them). Legacy-only functions are refused.
//!
//! The probe enables the function, maps the common, notify, ISR and device configuration
//! structures the vendor capabilities point at (managed BAR ranges), allocates 1 + queues
//! MSI-X vectors (vector 0: configuration changes, vector 1 + i: queue i) or else the INTx
//! line (the ISR register says why and acknowledges by being read), and adds `virtioN`.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use lull_devres::Revocable;
use lull_driver_core::{
    Driver, DriverDesc, Errno, PciMatchId, ProbeContext, ProbeError, RemoveContext, VirtioDeviceId,
};
use lull_pci::VirtioCfgType;
use lull_virtqueue::Transport as VirtqueueTransport;

use super::Transport;
use crate::arch::mmio::Mmio;
use crate::drivers::base;
use crate::drivers::pci::devm::{pcim_alloc_irq_vectors, pcim_enable_device, pcim_iomap_range};
use crate::drivers::pci::{IrqVectorFlags, PciDevice};
use crate::kernel::irq::IrqFlags;
use crate::kernel::locking::IrqSafeLock;
use crate::pr_err;

pub const DRIVER: &str = "virtio-pci";

const VENDOR: u16 = 0x1af4;
const MODERN_FIRST: u16 = 0x1040;
const MODERN_LAST: u16 = 0x107f;
const TRANSITIONAL_FIRST: u16 = 0x1000;
const TRANSITIONAL_LAST: u16 = 0x103f;

// `virtio_pci_common_cfg` (virtio 1.2 §4.1.4.3).
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const CONFIG_MSIX_VECTOR: usize = 0x10;
const NUM_QUEUES: usize = 0x12;
const DEVICE_STATUS: usize = 0x14;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;
/// The structure's size up to `queue_device` (what this driver touches).
const COMMON_LEN: u64 = 0x38;

/// ISR status: a used buffer notification.
pub const ISR_QUEUE: u8 = 1;
/// ISR status: a configuration change.
pub const ISR_CONFIG: u8 = 2;

/// The interrupts of a virtio-pci device.
pub(super) enum Irqs {
    /// MSI-X: IRQ of vector 0 (configuration) and of vector 1 + i (queue i).
    Msix { config: u32, queues: Vec<u32> },
    /// The INTx line (level, possibly shared): the ISR register says why.
    Intx { irq: u32, flags: IrqFlags },
}

/// A virtio-pci function's mapped structures.
pub(super) struct PciTransport {
    pub(super) common: Arc<Revocable<Mmio>>,
    pub(super) notify: Arc<Revocable<Mmio>>,
    pub(super) isr: Arc<Revocable<Mmio>>,
    /// The device-specific configuration structure, when the device has one.
    pub(super) device: Option<Arc<Revocable<Mmio>>>,
    pub(super) notify_off_multiplier: u32,
    /// `queue_notify_off` of each queue set up (index = queue).
    pub(super) notify_offs: IrqSafeLock<Vec<u16>>,
    pub(super) irqs: Irqs,
}

impl PciTransport {
    /// Rings queue `queue`'s doorbell: a 16-bit write of the queue index at
    /// `cap.offset + queue_notify_off * notify_off_multiplier`.
    pub(super) fn notify(&self, queue: u16) {
        let Some(off) = self.notify_offs.lock().get(usize::from(queue)).copied() else {
            return;
        };
        let offset = usize::from(off) * self.notify_off_multiplier as usize;
        if let Some(notify) = self.notify.try_access() {
            if (offset as u64) + 2 <= notify.len() {
                notify.write_u16(offset, queue);
            }
        }
    }

    /// Reads (and so acknowledges) the ISR status byte.
    pub(super) fn read_isr(&self) -> u8 {
        self.isr.try_access().map_or(0, |isr| isr.read_u8(0))
    }
}

/// The common configuration structure, for `lull-virtqueue`'s [`DeviceInit`].
///
/// [`DeviceInit`]: lull_virtqueue::DeviceInit
pub struct CommonRegs<'a> {
    mmio: &'a Mmio,
}

impl<'a> CommonRegs<'a> {
    pub(super) fn new(mmio: &'a Mmio) -> Self {
        Self { mmio }
    }
}

impl VirtqueueTransport for CommonRegs<'_> {
    fn read_status(&mut self) -> u8 {
        self.mmio.read_u8(DEVICE_STATUS)
    }
    fn write_status(&mut self, status: u8) {
        self.mmio.write_u8(DEVICE_STATUS, status);
    }
    fn read_device_features(&mut self, select: u32) -> u32 {
        self.mmio.write_u32(DEVICE_FEATURE_SELECT, select);
        self.mmio.read_u32(DEVICE_FEATURE)
    }
    fn write_driver_features(&mut self, select: u32, features: u32) {
        self.mmio.write_u32(DRIVER_FEATURE_SELECT, select);
        self.mmio.write_u32(DRIVER_FEATURE, features);
    }
    fn num_queues(&mut self) -> u16 {
        self.mmio.read_u16(NUM_QUEUES)
    }
    fn select_queue(&mut self, queue: u16) {
        self.mmio.write_u16(QUEUE_SELECT, queue);
    }
    fn queue_max_size(&mut self) -> u16 {
        self.mmio.read_u16(QUEUE_SIZE).min(32768)
    }
    fn set_queue_size(&mut self, size: u16) {
        self.mmio.write_u16(QUEUE_SIZE, size);
    }
    fn set_queue_addresses(&mut self, desc: u64, driver: u64, device: u64) {
        for (offset, value) in [
            (QUEUE_DESC, desc),
            (QUEUE_DRIVER, driver),
            (QUEUE_DEVICE, device),
        ] {
            self.mmio.write_u32(offset, value as u32);
            self.mmio.write_u32(offset + 4, (value >> 32) as u32);
        }
    }
    fn set_queue_enable(&mut self, enable: bool) {
        self.mmio.write_u16(QUEUE_ENABLE, u16::from(enable));
    }
    fn queue_notify_off(&mut self) -> u16 {
        self.mmio.read_u16(QUEUE_NOTIFY_OFF)
    }
    fn write_queue_msix_vector(&mut self, vector: u16) {
        self.mmio.write_u16(QUEUE_MSIX_VECTOR, vector);
    }
    fn read_queue_msix_vector(&mut self) -> u16 {
        self.mmio.read_u16(QUEUE_MSIX_VECTOR)
    }
    fn write_config_msix_vector(&mut self, vector: u16) {
        self.mmio.write_u16(CONFIG_MSIX_VECTOR, vector);
    }
    fn read_config_msix_vector(&mut self) -> u16 {
        self.mmio.read_u16(CONFIG_MSIX_VECTOR)
    }
    fn delay(&mut self) {
        core::hint::spin_loop();
    }
}

struct VirtioPciDriver;

/// Maps the structure of capability type `kind` (the first whose BAR range maps).
fn map_cap(
    ctx: &mut ProbeContext<'_>,
    dev: &PciDevice,
    kind: VirtioCfgType,
    min_len: u64,
) -> Result<(Arc<Revocable<Mmio>>, Option<u32>), ProbeError> {
    let name = dev.name();
    let cap = dev
        .virtio_capabilities()
        .into_iter()
        .find(|c| c.cfg_type == kind && c.bar < 6 && u64::from(c.length) >= min_len)
        .ok_or_else(|| {
            pr_err!("pci {name}: {DRIVER}: no usable {kind:?} capability");
            ProbeError::from(Errno::ENODEV)
        })?;
    let mmio = pcim_iomap_range(
        ctx.devres(),
        dev,
        usize::from(cap.bar),
        u64::from(cap.offset),
        u64::from(cap.length),
        DRIVER,
    )?;
    Ok((mmio, cap.notify_off_multiplier))
}

impl Driver for VirtioPciDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let dev = PciDevice::all()
            .find(|d| d.name() == name)
            .ok_or(Errno::ENODEV)?;
        let pci_id = dev.device_id();
        let has_modern = [
            VirtioCfgType::Common,
            VirtioCfgType::Notify,
            VirtioCfgType::Isr,
        ]
        .iter()
        .all(|kind| {
            dev.virtio_capabilities()
                .iter()
                .any(|c| c.cfg_type == *kind)
        });
        let device_type = match pci_id {
            MODERN_FIRST..=MODERN_LAST => u32::from(pci_id - MODERN_FIRST),
            TRANSITIONAL_FIRST..=TRANSITIONAL_LAST if has_modern => u32::from(dev.subsystem().1),
            TRANSITIONAL_FIRST..=TRANSITIONAL_LAST => {
                pr_err!(
                    "pci {name}: {DRIVER}: legacy virtio-pci device {VENDOR:04x}:{pci_id:04x} \
                     without the modern capabilities is not supported; Lull drives virtio \
                     1.x devices only (QEMU: disable-legacy=on or disable-modern=off)"
                );
                return Err(Errno::ENODEV.into());
            }
            _ => return Err(Errno::ENODEV.into()),
        };
        if !has_modern {
            pr_err!("pci {name}: {DRIVER}: modern device without the virtio capabilities");
            return Err(Errno::ENODEV.into());
        }
        pcim_enable_device(ctx.devres(), &dev)?;
        dev.set_master();
        let (common, _) = map_cap(ctx, &dev, VirtioCfgType::Common, COMMON_LEN)?;
        let (notify, multiplier) = map_cap(ctx, &dev, VirtioCfgType::Notify, 2)?;
        let (isr, _) = map_cap(ctx, &dev, VirtioCfgType::Isr, 1)?;
        // Optional (virtio-rng has none; virtio-net keeps its MAC there).
        let device_cfg = if dev
            .virtio_capabilities()
            .iter()
            .any(|c| c.cfg_type == VirtioCfgType::Device && c.length > 0)
        {
            Some(map_cap(ctx, &dev, VirtioCfgType::Device, 1)?.0)
        } else {
            None
        };
        let queues = {
            let mmio = common.try_access().ok_or(Errno::ENODEV)?;
            // Reset first: the vectors must not fire into a device left running.
            let mut regs = CommonRegs::new(&mmio);
            if let Err(error) = lull_virtqueue::reset_device(&mut regs, super::RESET_POLLS) {
                pr_err!("pci {name}: {DRIVER}: reset: {error}");
                return Err(Errno::EIO.into());
            }
            usize::from(regs.num_queues())
        };
        let devres = ctx.devres();
        let want = 1 + queues;
        // MSI-X when the function has a vector for the configuration and one per queue (a
        // failure to get them fails the probe); INTx for a function without MSI-X (QEMU:
        // `vectors=0`) or with too few vectors for that (QEMU 7.2's vhost-user-gpio-pci has
        // one), as Linux falls back.
        let msix_entries = match dev.find_capability(lull_pci::capability::CAP_ID_MSIX) {
            Some(lull_pci::capability::Capability::MsiX(msix)) => usize::from(msix.table_size),
            _ => 0,
        };
        if msix_entries > 0 && msix_entries < want {
            crate::printk!(
                "pci {name}: {DRIVER}: {msix_entries} MSI-X vector(s) for {want} interrupts"
            );
        }
        let irqs = if msix_entries >= want {
            pcim_alloc_irq_vectors(devres, &dev, want, want, IrqVectorFlags::MSIX)?;
            Irqs::Msix {
                config: dev.irq_vector(0).ok_or(Errno::EINVAL)?,
                queues: (0..queues)
                    .map(|q| dev.irq_vector(1 + q).ok_or(Errno::EINVAL))
                    .collect::<Result<Vec<_>, _>>()?,
            }
        } else {
            pcim_alloc_irq_vectors(devres, &dev, 1, 1, IrqVectorFlags::INTX)?;
            let intx = dev.intx_irq().ok_or(Errno::ENXIO)?;
            crate::printk!(
                "pci {name}: {DRIVER}: no MSI-X; using INTx (IRQ {})",
                intx.gsi
            );
            Irqs::Intx {
                irq: intx.gsi,
                flags: intx.request_flags(),
            }
        };
        let id = VirtioDeviceId {
            device: device_type,
            vendor: u32::from(dev.subsystem().0),
        };
        let child = super::register_transport_device(
            ctx.bus(),
            &name,
            id,
            Transport::Pci(PciTransport {
                common,
                notify,
                isr,
                device: device_cfg,
                notify_off_multiplier: multiplier.unwrap_or(0),
                notify_offs: IrqSafeLock::new(Vec::new()),
                irqs,
            }),
        );
        crate::pr_debug!("pci {name}: {DRIVER}: device type {device_type} -> {child}");
        Ok(())
    }

    fn remove(&self, ctx: &mut RemoveContext<'_>) {
        // The child was unbound first (its supplier link) and reset the device; reset again in
        // case it never bound, before decoding and the vectors go.
        let name = String::from(ctx.device_name());
        if let Some(device) = super::device_of_parent(&name) {
            device.reset();
        }
    }
}

/// Registers `virtio-pci` on the pci bus.
pub fn init() {
    let mut ids = alloc::vec![];
    for device in TRANSITIONAL_FIRST..=MODERN_LAST {
        ids.push(PciMatchId::device(VENDOR, device));
    }
    if let Err(error) = base::register_driver(DriverDesc::new("pci", DRIVER, ids, VirtioPciDriver))
    {
        pr_err!("{DRIVER}: cannot register: {error}");
    }
}
