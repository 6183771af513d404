//! The virtio bus (Linux's `drivers/virtio`): its devices come from transports, its drivers
//! match by device type.
//!
//! * A transport is a device on another bus whose driver finds a virtio device behind it and
//!   adds a child `virtioN` on the `virtio` bus ([`mmio`]: virtio-mmio version 2, platform
//!   devices from `virtio_mmio.device=` and ACPI `LNRO0005`). virtio-pci arrives with the PCI
//!   layer.
//! * The child keeps its name across rebinds of the transport: unbinding the transport unbinds
//!   the child first (the child's probe links it to the transport as its supplier), and the
//!   child goes on the deferred list until the transport binds again.
//! * A virtio driver reaches its device through [`VirtioDevice`]: feature negotiation and queue
//!   set-up through `lull-virtqueue`'s [`DeviceInit`], queues in DMA-coherent memory
//!   ([`queue`]), the doorbell, the status byte, and a threaded interrupt whose handler reads
//!   and acknowledges the interrupt status and calls the driver's [`VirtioCallbacks`].
//!
//! Drivers here: [`rng`] (virtio-rng, device type 4).

pub mod mmio;
pub mod net;
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
use crate::kernel::irq::{IrqFlags, IrqReturn};
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

/// Lines with a virtio driver's handler: (irq, device, callbacks).
type IrqTarget = (u32, Arc<VirtioDevice>, Arc<dyn VirtioCallbacks>);
static IRQ_TARGETS: IrqSafeLock<Vec<IrqTarget>> = IrqSafeLock::new(Vec::new());

/// Interrupt line names (`/proc/interrupts` shows `virtio0` as Linux does).
const LINE_NAMES: [&str; 8] = [
    "virtio0", "virtio1", "virtio2", "virtio3", "virtio4", "virtio5", "virtio6", "virtio7",
];

/// The bound device called `name` (`virtio0`).
pub fn device(name: &str) -> Option<Arc<VirtioDevice>> {
    DEVICES.lock().iter().find(|d| d.name == name).cloned()
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
    fn with_regs<R>(&self, f: impl FnOnce(&mut mmio::MmioRegs<'_>) -> R) -> Option<R> {
        match &self.transport {
            Transport::Mmio { regs, .. } => {
                let regs = regs.try_access()?;
                Some(f(&mut mmio::MmioRegs::new(&regs)))
            }
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
            for (index, layout) in queues.iter().enumerate() {
                init.setup_queue(index as u16, layout, None)
                    .map_err(|e| alloc::format!("{e}"))?;
            }
            init.finish().map_err(|e| alloc::format!("{e}"))?;
            Ok(features)
        })
        .unwrap_or_else(|| Err(String::from("transport gone")))
    }

    /// Reads `out.len()` bytes of the device-specific configuration space from `offset`;
    /// `false` when the transport is gone or the space is shorter.
    pub fn read_config(&self, offset: usize, out: &mut [u8]) -> bool {
        self.with_regs(|regs| {
            for (index, byte) in out.iter_mut().enumerate() {
                match regs.read_config_u8(offset + index) {
                    Some(value) => *byte = value,
                    None => return false,
                }
            }
            true
        })
        .unwrap_or(false)
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
        self.with_regs(|regs| regs.notify(queue));
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

    /// The interrupt line this device signals on.
    pub fn irq(&self) -> u32 {
        match &self.transport {
            Transport::Mmio { irq, .. } => *irq,
        }
    }

    /// Requests the device's interrupt (managed: freed at unbind before anything the probe
    /// acquired earlier), delivering it to `callbacks` from the line's thread.
    pub fn request_irq(
        self: &Arc<Self>,
        devres: &mut DevresList,
        callbacks: Arc<dyn VirtioCallbacks>,
    ) -> Result<(), ProbeError> {
        let (irq, flags) = match &self.transport {
            Transport::Mmio { irq, flags, .. } => (*irq, *flags),
        };
        let name = LINE_NAMES
            .iter()
            .find(|n| **n == self.name)
            .copied()
            .unwrap_or("virtio");
        {
            let mut targets = IRQ_TARGETS.lock();
            targets.retain(|(line, _, _)| *line != irq);
            targets.push((irq, Arc::clone(self), callbacks));
        }
        devres.add_action(
            alloc::format!("{}: interrupt target", self.name),
            move || {
                IRQ_TARGETS.lock().retain(|(line, _, _)| *line != irq);
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
        )
    }
}

/// The thread of every virtio line: read and acknowledge the interrupt status, then tell the
/// driver (Linux's `vm_interrupt`).
fn interrupt_thread(irq: u32) -> IrqReturn {
    let target = IRQ_TARGETS
        .lock()
        .iter()
        .find(|(line, _, _)| *line == irq)
        .map(|(_, device, callbacks)| (Arc::clone(device), Arc::clone(callbacks)));
    let Some((device, callbacks)) = target else {
        return IrqReturn::None;
    };
    let status = device.with_regs(|regs| regs.ack_interrupt()).unwrap_or(0);
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
    mmio::init();
}
