//! The virtio bus (Linux's `drivers/virtio`): its devices come from transports, its drivers
//! match by device type.
//!
//! * A transport is a device on another bus whose driver finds a virtio device behind it and
//!   adds a child `virtioN` on the `virtio` bus ([`mmio`]: virtio-mmio version 2, platform
//!   devices from `virtio_mmio.device=` and ACPI `LNRO0005`; [`pci`]: virtio-pci modern, with
//!   MSI-X vectors or INTx).
//! * The child keeps its name across rebinds of the transport: unbinding the transport unbinds
//!   the child first (the child's probe links it to the transport as its supplier), and the
//!   child goes on the deferred list until the transport binds again.
//! * A virtio driver reaches its device through [`VirtioDevice`]: feature negotiation and queue
//!   set-up through `lull-virtqueue`'s [`DeviceInit`], queues in DMA-coherent memory
//!   ([`queue`]), the doorbell, the status byte, and a threaded interrupt whose handler reads
//!   and acknowledges the interrupt status and calls the driver's [`VirtioCallbacks`].
//!
//! Drivers here: [`rng`] (virtio-rng, device type 4).

pub mod blk;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod queue;
pub mod rng;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;

use lull_cmdline::{Kind, ParamSpec};
use lull_devres::{DevresList, Revocable};
use lull_driver_core::{DeviceDesc, ProbeError, VirtioDeviceId};
use lull_virtqueue::{DeviceInit, QueueLayout, STATUS_FAILED};

use crate::arch::mmio::Mmio;
use crate::drivers::base::{self, devm};
use crate::kernel::irq::{DevId, IrqFlags, IrqReturn};
use crate::kernel::locking::IrqSafeLock;

/// Transport parameters.
pub const PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "virtio_mmio.device",
    kind: Kind::Str,
    default: "",
    help: "A virtio-mmio device as Linux's: SIZE@ADDR:IRQ[:ID] (repeatable).",
}];

/// Status polls after a reset before giving up (the device resets synchronously in QEMU).
const RESET_POLLS: u32 = 1000;

/// What a driver is told from the interrupt thread.
pub trait VirtioCallbacks: Send + Sync {
    /// A used buffer notification (any queue: the MMIO interrupt status does not say which).
    fn vring_interrupt(&self);
    /// The device's configuration changed, or it set DEVICE_NEEDS_RESET.
    fn config_changed(&self) {}
}

/// The transport behind a virtio device.
enum Transport {
    Mmio {
        regs: Arc<Revocable<Mmio>>,
        irq: u32,
        flags: IrqFlags,
    },
    Pci(pci::PciTransport),
}

/// The register interface of either transport, for `lull-virtqueue`.
enum Regs<'a> {
    Mmio(mmio::MmioRegs<'a>),
    Pci(pci::CommonRegs<'a>),
}

macro_rules! regs_dispatch {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            Regs::Mmio($r) => $e,
            Regs::Pci($r) => $e,
        }
    };
}

impl lull_virtqueue::Transport for Regs<'_> {
    fn read_status(&mut self) -> u8 {
        regs_dispatch!(self, r => r.read_status())
    }
    fn write_status(&mut self, status: u8) {
        regs_dispatch!(self, r => r.write_status(status))
    }
    fn read_device_features(&mut self, select: u32) -> u32 {
        regs_dispatch!(self, r => r.read_device_features(select))
    }
    fn write_driver_features(&mut self, select: u32, features: u32) {
        regs_dispatch!(self, r => r.write_driver_features(select, features))
    }
    fn num_queues(&mut self) -> u16 {
        regs_dispatch!(self, r => r.num_queues())
    }
    fn select_queue(&mut self, queue: u16) {
        regs_dispatch!(self, r => r.select_queue(queue))
    }
    fn queue_max_size(&mut self) -> u16 {
        regs_dispatch!(self, r => r.queue_max_size())
    }
    fn set_queue_size(&mut self, size: u16) {
        regs_dispatch!(self, r => r.set_queue_size(size))
    }
    fn set_queue_addresses(&mut self, desc: u64, driver: u64, device: u64) {
        regs_dispatch!(self, r => r.set_queue_addresses(desc, driver, device))
    }
    fn set_queue_enable(&mut self, enable: bool) {
        regs_dispatch!(self, r => r.set_queue_enable(enable))
    }
    fn queue_notify_off(&mut self) -> u16 {
        regs_dispatch!(self, r => r.queue_notify_off())
    }
    fn write_queue_msix_vector(&mut self, vector: u16) {
        regs_dispatch!(self, r => r.write_queue_msix_vector(vector))
    }
    fn read_queue_msix_vector(&mut self) -> u16 {
        regs_dispatch!(self, r => r.read_queue_msix_vector())
    }
    fn write_config_msix_vector(&mut self, vector: u16) {
        regs_dispatch!(self, r => r.write_config_msix_vector(vector))
    }
    fn read_config_msix_vector(&mut self) -> u16 {
        regs_dispatch!(self, r => r.read_config_msix_vector())
    }
    fn delay(&mut self) {
        core::hint::spin_loop();
    }
}

/// A device on the virtio bus, as its driver sees it.
pub struct VirtioDevice {
    name: String,
    parent_bus: String,
    parent: String,
    id: VirtioDeviceId,
    transport: Transport,
}

/// The virtio bus's devices: the latest transport binding of each.
static DEVICES: IrqSafeLock<Vec<Arc<VirtioDevice>>> = IrqSafeLock::new(Vec::new());

/// Lines with a virtio driver's handler: (irq, the action's dev_id, device, callbacks). An INTx
/// line may carry several virtio devices (and other PCI functions): each has its own action.
type IrqTarget = (u32, DevId, Arc<VirtioDevice>, Arc<dyn VirtioCallbacks>);
static IRQ_TARGETS: IrqSafeLock<Vec<IrqTarget>> = IrqSafeLock::new(Vec::new());

/// Interrupt line names (`/proc/interrupts` shows `virtio0` as Linux does).
const LINE_NAMES: [&str; 8] = [
    "virtio0", "virtio1", "virtio2", "virtio3", "virtio4", "virtio5", "virtio6", "virtio7",
];
/// MSI-X configuration vectors' names.
const CONFIG_LINE_NAMES: [&str; 8] = [
    "virtio0-config",
    "virtio1-config",
    "virtio2-config",
    "virtio3-config",
    "virtio4-config",
    "virtio5-config",
    "virtio6-config",
    "virtio7-config",
];

/// The bound device called `name` (`virtio0`).
pub fn device(name: &str) -> Option<Arc<VirtioDevice>> {
    DEVICES.lock().iter().find(|d| d.name == name).cloned()
}

/// The device whose transport is `parent` (`0000:00:03.0`).
fn device_of_parent(parent: &str) -> Option<Arc<VirtioDevice>> {
    DEVICES.lock().iter().find(|d| d.parent == parent).cloned()
}

/// Records a transport's device and, the first time, adds `virtioN` to the bus (after the
/// transport's probe returns). Returns the child's name.
fn register_transport_device(
    parent_bus: &str,
    parent: &str,
    id: VirtioDeviceId,
    transport: Transport,
) -> String {
    let mut devices = DEVICES.lock();
    let existing = devices.iter().position(|d| d.parent == parent);
    let name = match existing {
        Some(index) => devices.remove(index).name.clone(),
        None => {
            let index = (0..)
                .find(|i| {
                    let candidate = alloc::format!("virtio{i}");
                    !devices.iter().any(|d| d.name == candidate)
                })
                .unwrap_or(0);
            alloc::format!("virtio{index}")
        }
    };
    devices.push(Arc::new(VirtioDevice {
        name: name.clone(),
        parent_bus: String::from(parent_bus),
        parent: String::from(parent),
        id,
        transport,
    }));
    drop(devices);
    if existing.is_none() {
        base::add_device_later(DeviceDesc::new("virtio", name.clone(), id).with_parent(parent));
    }
    name
}

impl VirtioDevice {
    /// `virtio0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The transport device (`LNRO0005:00`, `virtio-mmio.0`): the child's supplier.
    pub fn parent(&self) -> &str {
        &self.parent
    }

    /// The transport device's bus (`acpi`, `platform`).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn parent_bus(&self) -> &str {
        &self.parent_bus
    }

    /// Device type and vendor.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn id(&self) -> VirtioDeviceId {
        self.id
    }

    /// Runs `f` on the register interface; `None` once the transport was unbound.
    fn with_regs<R>(&self, f: impl FnOnce(&mut Regs<'_>) -> R) -> Option<R> {
        match &self.transport {
            Transport::Mmio { regs, .. } => {
                let regs = regs.try_access()?;
                Some(f(&mut Regs::Mmio(mmio::MmioRegs::new(&regs))))
            }
            Transport::Pci(pci) => {
                let regs = pci.common.try_access()?;
                Some(f(&mut Regs::Pci(pci::CommonRegs::new(&regs))))
            }
        }
    }

    /// The MSI-X vector for the configuration and for queue `queue` (None: INTx or MMIO).
    fn msix_vectors(&self, queue: usize) -> (Option<u16>, Option<u16>) {
        match &self.transport {
            Transport::Pci(pci::PciTransport {
                irqs: pci::Irqs::Msix { queues, .. },
                ..
            }) if queue < queues.len() => (Some(0), u16::try_from(1 + queue).ok()),
            _ => (None, None),
        }
    }

    /// Resets the device, negotiates `driver_features` (VERSION_1 required), programs
    /// `queues` (queue i with layout i) and sets DRIVER_OK. Returns the negotiated features.
    /// Any failure leaves FAILED written and says why.
    pub fn initialize(&self, driver_features: u64, queues: &[QueueLayout]) -> Result<u64, String> {
        self.with_regs(|regs| {
            let mut init =
                DeviceInit::begin(regs, RESET_POLLS).map_err(|e| alloc::format!("{e}"))?;
            let features = init
                .negotiate(driver_features)
                .map_err(|e| alloc::format!("feature negotiation: {e}"))?;
            if let (Some(config), _) = self.msix_vectors(0) {
                init.set_config_vector(config)
                    .map_err(|e| alloc::format!("{e}"))?;
            }
            let mut notify_offs = Vec::new();
            for (index, layout) in queues.iter().enumerate() {
                let setup = init
                    .setup_queue(index as u16, layout, self.msix_vectors(index).1)
                    .map_err(|e| alloc::format!("{e}"))?;
                notify_offs.push(setup.notify_off);
            }
            if let Transport::Pci(pci) = &self.transport {
                *pci.notify_offs.lock() = notify_offs;
            }
            init.finish().map_err(|e| alloc::format!("{e}"))?;
            Ok(features)
        })
        .unwrap_or_else(|| Err(String::from("transport gone")))
    }

    /// Reads `out.len()` bytes of the device-specific configuration space from `offset`;
    /// `false` when the transport is gone, has no such space, or it is shorter.
    pub fn read_config(&self, offset: usize, out: &mut [u8]) -> bool {
        match &self.transport {
            Transport::Mmio { .. } => self
                .with_regs(|regs| {
                    let Regs::Mmio(mmio) = regs else { return false };
                    for (index, byte) in out.iter_mut().enumerate() {
                        match mmio.read_config_u8(offset + index) {
                            Some(value) => *byte = value,
                            None => return false,
                        }
                    }
                    true
                })
                .unwrap_or(false),
            Transport::Pci(pci) => {
                let Some(device) = pci.device.as_ref().and_then(|d| d.try_access()) else {
                    return false;
                };
                if offset.saturating_add(out.len()) > device.len() as usize {
                    return false;
                }
                for (index, byte) in out.iter_mut().enumerate() {
                    *byte = device.read_u8(offset + index);
                }
                true
            }
        }
    }

    /// Features the device offers.
    pub fn device_features(&self) -> u64 {
        self.with_regs(|regs| {
            use lull_virtqueue::Transport as _;
            u64::from(regs.read_device_features(0)) | u64::from(regs.read_device_features(1)) << 32
        })
        .unwrap_or(0)
    }

    /// The largest size queue `queue` may have (0: no such queue).
    pub fn queue_max(&self, queue: u16) -> u16 {
        self.with_regs(|regs| {
            use lull_virtqueue::Transport as _;
            regs.select_queue(queue);
            regs.queue_max_size()
        })
        .unwrap_or(0)
    }

    /// Rings queue `queue`'s doorbell.
    pub fn notify(&self, queue: u16) {
        match &self.transport {
            Transport::Mmio { regs, .. } => {
                if let Some(regs) = regs.try_access() {
                    mmio::MmioRegs::new(&regs).notify(queue);
                }
            }
            Transport::Pci(pci) => pci.notify(queue),
        }
    }

    /// The status byte (0 when the transport is gone).
    pub fn status(&self) -> u8 {
        self.with_regs(|regs| {
            use lull_virtqueue::Transport as _;
            regs.read_status()
        })
        .unwrap_or(0)
    }

    /// Resets the device: it stops using every queue (unbind, probe failure).
    pub fn reset(&self) {
        self.with_regs(|regs| {
            if let Err(error) = lull_virtqueue::reset_device(regs, RESET_POLLS) {
                crate::pr_err!("{}: reset: {error}", self.name);
            }
        });
    }

    /// Gives up on the device: sets FAILED in its status (virtio 1.2 §2.1: the driver "has
    /// given up on the device"); it is not driven again until it is reset by a rebind.
    pub fn set_failed(&self) {
        self.with_regs(|regs| {
            use lull_virtqueue::Transport as _;
            let status = regs.read_status();
            regs.write_status(status | STATUS_FAILED);
        });
    }

    /// The interrupt line this device signals on (its first queue's MSI-X vector on PCI).
    pub fn irq(&self) -> u32 {
        match &self.transport {
            Transport::Mmio { irq, .. } => *irq,
            Transport::Pci(pci) => match &pci.irqs {
                pci::Irqs::Msix { queues, config } => queues.first().copied().unwrap_or(*config),
                pci::Irqs::Intx { irq, .. } => *irq,
            },
        }
    }

    /// How many interrupts [`request_irq`](Self::request_irq) requests (1, or on MSI-X the
    /// configuration vector and one per queue).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn irq_count(&self) -> usize {
        self.lines().len()
    }

    /// Every interrupt of the device with its flags and name: the line, or on MSI-X the
    /// configuration vector (`virtioN-config`) and one per queue (`virtioN`).
    fn lines(&self) -> Vec<(u32, IrqFlags, &'static str)> {
        let name = LINE_NAMES
            .iter()
            .find(|n| **n == self.name)
            .copied()
            .unwrap_or("virtio");
        match &self.transport {
            // Shared, as Linux's virtio_mmio asks: a board may wire several devices to a line.
            Transport::Mmio { irq, flags, .. } => {
                alloc::vec![(*irq, *flags | IrqFlags::SHARED, name)]
            }
            Transport::Pci(pci) => match &pci.irqs {
                pci::Irqs::Intx { irq, flags } => alloc::vec![(*irq, *flags, name)],
                pci::Irqs::Msix { config, queues } => {
                    let config_name = LINE_NAMES
                        .iter()
                        .position(|n| *n == self.name)
                        .map_or("virtio-config", |i| CONFIG_LINE_NAMES[i]);
                    let mut lines = alloc::vec![(*config, IrqFlags::NONE, config_name)];
                    lines.extend(queues.iter().map(|irq| (*irq, IrqFlags::NONE, name)));
                    lines
                }
            },
        }
    }

    /// Requests the device's interrupt (managed: freed at unbind before anything the probe
    /// acquired earlier), delivering it to `callbacks` from the line's thread.
    pub fn request_irq(
        self: &Arc<Self>,
        devres: &mut DevresList,
        callbacks: Arc<dyn VirtioCallbacks>,
    ) -> Result<(), ProbeError> {
        let dev_id = DevId::of(&**self);
        for (irq, flags, name) in self.lines() {
            {
                let mut targets = IRQ_TARGETS.lock();
                targets.retain(|(line, id, _, _)| (*line, *id) != (irq, dev_id));
                targets.push((irq, dev_id, Arc::clone(self), Arc::clone(&callbacks)));
            }
            devres.add_action(
                alloc::format!("{}: interrupt target", self.name),
                move || {
                    IRQ_TARGETS
                        .lock()
                        .retain(|(line, id, _, _)| (*line, *id) != (irq, dev_id));
                },
            );
            // A level line: masked from the interrupt until the thread has acknowledged it.
            devm::request_threaded_irq(
                devres,
                irq,
                None,
                Some(interrupt_thread),
                flags | IrqFlags::ONESHOT,
                name,
                dev_id,
            )?;
        }
        Ok(())
    }
}

/// The thread of every virtio line: read and acknowledge the interrupt status, then tell the
/// driver (Linux's `vm_interrupt`).
fn interrupt_thread(irq: u32, dev_id: DevId) -> IrqReturn {
    let target = IRQ_TARGETS
        .lock()
        .iter()
        .find(|(line, id, _, _)| (*line, *id) == (irq, dev_id))
        .map(|(_, _, device, callbacks)| (Arc::clone(device), Arc::clone(callbacks)));
    let Some((device, callbacks)) = target else {
        return IrqReturn::None;
    };
    let status = match &device.transport {
        Transport::Mmio { regs, .. } => regs
            .try_access()
            .map_or(0, |regs| mmio::MmioRegs::new(&regs).ack_interrupt()),
        Transport::Pci(pci) => match &pci.irqs {
            // Reading the ISR acknowledges it (virtio 1.2 §4.1.4.5).
            pci::Irqs::Intx { .. } => {
                let isr = pci.read_isr();
                let mut status = 0;
                if isr & pci::ISR_QUEUE != 0 {
                    status |= mmio::INTERRUPT_VRING;
                }
                if isr & pci::ISR_CONFIG != 0 {
                    status |= mmio::INTERRUPT_CONFIG;
                }
                status
            }
            pci::Irqs::Msix { config, .. } if *config == irq => mmio::INTERRUPT_CONFIG,
            pci::Irqs::Msix { .. } => mmio::INTERRUPT_VRING,
        },
    };
    if status & mmio::INTERRUPT_CONFIG != 0 {
        callbacks.config_changed();
    }
    if status & mmio::INTERRUPT_VRING != 0 {
        callbacks.vring_interrupt();
    }
    if status == 0 {
        IrqReturn::None
    } else {
        IrqReturn::Handled
    }
}

/// `/sys/bus/virtio/devices/virtioN/{device,vendor,status,features}`.
fn attributes(device: &str, attribute: Option<&str>) -> Option<String> {
    let dev = self::device(device)?;
    match attribute {
        None => Some(String::from("device\nvendor\nstatus\nfeatures\n")),
        Some("device") => Some(alloc::format!("{:#06x}\n", dev.id.device)),
        Some("vendor") => Some(alloc::format!("{:#06x}\n", dev.id.vendor)),
        Some("status") => Some(alloc::format!("{:#010x}\n", dev.status())),
        Some("features") => {
            let features = dev.device_features();
            let mut text = String::new();
            for bit in 0..64 {
                let _ = write!(text, "{}", (features >> bit) & 1);
            }
            text.push('\n');
            Some(text)
        }
        Some(_) => None,
    }
}

/// Registers the drivers (transports and virtio drivers) and adds the transports' devices.
/// Boot, after the driver model and ACPI.
pub fn init() {
    base::register_attributes("virtio", attributes);
    rng::init();
    net::init();
    blk::init();
    mmio::init();
    pci::init();
}
