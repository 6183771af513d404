//! virtio-mmio (virtio 1.2 §4.2), version 2 ("modern") only: a platform driver `virtio-mmio`
//! whose devices come from Linux's `virtio_mmio.device=SIZE@ADDR:IRQ` parameter (repeatable,
//! platform bus) and from ACPI `LNRO0005` devices (acpi bus) (`_CRS`: a memory range and an interrupt; QEMU's microvm
//! lists its populated transports so with `acpi=on`). Its probe maps the registers (managed),
//! checks the magic and version, reads the device type and adds `virtioN` to the virtio bus.
//!
//! Legacy devices (version 1: guest page size and PFN registers, no FEATURES_OK) are refused
//! with a message: QEMU makes them unless given `-global virtio-mmio.force-legacy=false`.

use alloc::string::String;
use alloc::vec::Vec;

use lull_driver_core::{
    DeviceDesc, Driver, DriverDesc, Errno, PlatformDeviceId, PlatformMatchId, ProbeContext,
    ProbeError, RemoveContext, VirtioDeviceId,
};
use lull_virtqueue::{Transport as VirtqueueTransport, VIRTIO_MSI_NO_VECTOR};

use super::Transport;
use crate::arch::mmio::Mmio;
use crate::drivers::base::{self, devm};
use crate::kernel::irq::IrqFlags;
use crate::kernel::locking::IrqSafeLock;
use crate::{pr_err, pr_warn, printk};

const DRIVER: &str = "virtio-mmio";

// Register offsets (virtio 1.2 §4.2.2).
const MAGIC_VALUE: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const VENDOR_ID: usize = 0x00c;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC_LOW: usize = 0x080;
const QUEUE_DESC_HIGH: usize = 0x084;
const QUEUE_DRIVER_LOW: usize = 0x090;
const QUEUE_DRIVER_HIGH: usize = 0x094;
const QUEUE_DEVICE_LOW: usize = 0x0a0;
const QUEUE_DEVICE_HIGH: usize = 0x0a4;
/// The registers before the device-specific configuration space.
const REGISTERS_LEN: u64 = 0x100;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;

/// Interrupt status: a used buffer notification.
pub const INTERRUPT_VRING: u32 = 1;
/// Interrupt status: a configuration change.
pub const INTERRUPT_CONFIG: u32 = 2;

/// MMIO transports have no queue count register; queues past the last read QueueNumMax 0.
const MAX_QUEUES: u16 = 1024;

/// The register interface over a mapped transport, for `lull-virtqueue`'s [`DeviceInit`].
///
/// [`DeviceInit`]: lull_virtqueue::DeviceInit
pub struct MmioRegs<'a> {
    mmio: &'a Mmio,
}

impl<'a> MmioRegs<'a> {
    pub(super) fn new(mmio: &'a Mmio) -> Self {
        Self { mmio }
    }

    /// Writes QueueNotify.
    pub fn notify(&mut self, queue: u16) {
        self.mmio.write_u32(QUEUE_NOTIFY, u32::from(queue));
    }

    /// Reads InterruptStatus and acknowledges what it says; returns it.
    pub fn ack_interrupt(&mut self) -> u32 {
        let status = self.mmio.read_u32(INTERRUPT_STATUS);
        if status != 0 {
            self.mmio.write_u32(INTERRUPT_ACK, status);
        }
        status
    }

    /// Reads byte `offset` of the device-specific configuration space (at 0x100), if the
    /// transport's region covers it.
    pub fn read_config_u8(&mut self, offset: usize) -> Option<u8> {
        let at = REGISTERS_LEN as usize + offset;
        (at < self.mmio.len() as usize).then(|| self.mmio.read_u8(at))
    }

    fn write_u64(&mut self, low: usize, high: usize, value: u64) {
        self.mmio.write_u32(low, value as u32);
        self.mmio.write_u32(high, (value >> 32) as u32);
    }
}

impl VirtqueueTransport for MmioRegs<'_> {
    fn read_status(&mut self) -> u8 {
        self.mmio.read_u32(STATUS) as u8
    }
    fn write_status(&mut self, status: u8) {
        self.mmio.write_u32(STATUS, u32::from(status));
    }
    fn read_device_features(&mut self, select: u32) -> u32 {
        self.mmio.write_u32(DEVICE_FEATURES_SEL, select);
        self.mmio.read_u32(DEVICE_FEATURES)
    }
    fn write_driver_features(&mut self, select: u32, features: u32) {
        self.mmio.write_u32(DRIVER_FEATURES_SEL, select);
        self.mmio.write_u32(DRIVER_FEATURES, features);
    }
    fn num_queues(&mut self) -> u16 {
        MAX_QUEUES
    }
    fn select_queue(&mut self, queue: u16) {
        self.mmio.write_u32(QUEUE_SEL, u32::from(queue));
    }
    fn queue_max_size(&mut self) -> u16 {
        // A device claiming more than a u16 is capped (the spec's maximum is 32768).
        self.mmio.read_u32(QUEUE_NUM_MAX).min(32768) as u16
    }
    fn set_queue_size(&mut self, size: u16) {
        self.mmio.write_u32(QUEUE_NUM, u32::from(size));
    }
    fn set_queue_addresses(&mut self, desc: u64, driver: u64, device: u64) {
        self.write_u64(QUEUE_DESC_LOW, QUEUE_DESC_HIGH, desc);
        self.write_u64(QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, driver);
        self.write_u64(QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, device);
    }
    fn set_queue_enable(&mut self, enable: bool) {
        self.mmio.write_u32(QUEUE_READY, u32::from(enable));
    }
    fn queue_notify_off(&mut self) -> u16 {
        0
    }
    // No MSI-X on MMIO: nothing to write, and "no vector" reads back.
    fn write_queue_msix_vector(&mut self, _vector: u16) {}
    fn read_queue_msix_vector(&mut self) -> u16 {
        VIRTIO_MSI_NO_VECTOR
    }
    fn write_config_msix_vector(&mut self, _vector: u16) {}
    fn read_config_msix_vector(&mut self) -> u16 {
        VIRTIO_MSI_NO_VECTOR
    }
    fn delay(&mut self) {
        core::hint::spin_loop();
    }
}

/// A transport's firmware description.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Resources {
    device: String,
    base: u64,
    size: u64,
    irq: u32,
    flags: IrqFlags,
}

/// Every transport device added, by platform device name.
static RESOURCES: IrqSafeLock<Vec<Resources>> = IrqSafeLock::new(Vec::new());

fn resources_of(device: &str) -> Option<Resources> {
    RESOURCES
        .lock()
        .iter()
        .find(|r| r.device == device)
        .cloned()
}

struct VirtioMmioDriver;

impl Driver for VirtioMmioDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let res = if ctx.bus() == "acpi" {
            acpi_resources(&name)?
        } else {
            resources_of(&name).ok_or(Errno::ENODEV)?
        };
        let regs = devm::ioremap(ctx.devres(), res.base, res.size, DRIVER)?;
        let (magic, version, device, vendor) = {
            let mmio = regs.try_access().ok_or(Errno::ENODEV)?;
            (
                mmio.read_u32(MAGIC_VALUE),
                mmio.read_u32(VERSION),
                mmio.read_u32(DEVICE_ID),
                mmio.read_u32(VENDOR_ID),
            )
        };
        if magic != MAGIC {
            pr_err!("{name}: wrong magic value {magic:#010x} at {:#x}", res.base);
            return Err(Errno::ENODEV.into());
        }
        match version {
            2 => {}
            1 => {
                pr_err!(
                    "{name}: legacy virtio-mmio (version 1) is not supported; Lull drives \
                     virtio 1.x devices only (QEMU: -global virtio-mmio.force-legacy=false)"
                );
                return Err(Errno::ENODEV.into());
            }
            other => {
                pr_err!("{name}: virtio-mmio version {other} not supported");
                return Err(Errno::ENODEV.into());
            }
        }
        if device == 0 {
            // A transport with nothing plugged in (virtio 1.2 §4.2.3.1.1).
            return Err(Errno::ENODEV.into());
        }
        let id = VirtioDeviceId { device, vendor };
        let child = super::register_transport_device(
            ctx.bus(),
            &name,
            id,
            Transport::Mmio {
                regs,
                irq: res.irq,
                flags: res.flags,
            },
        );
        crate::pr_debug!(
            "{name}: virtio-mmio v2 at {:#x} irq {}: device type {device} vendor {vendor:#x} -> {child}",
            res.base,
            res.irq
        );
        Ok(())
    }

    fn remove(&self, ctx: &mut RemoveContext<'_>) {
        // The child was unbound first (it links to us as its supplier) and reset the device.
        let _ = ctx;
    }
}

/// Parses `SIZE@ADDR:IRQ[:ID]` (SIZE with K/M/G suffixes, numbers decimal or 0x-hex).
pub(crate) fn parse_device(text: &str) -> Option<(u64, u64, u32)> {
    let (size, rest) = text.split_once('@')?;
    let mut parts = rest.split(':');
    let base = parse_number(parts.next()?)?;
    let irq = u32::try_from(parse_number(parts.next()?)?).ok()?;
    if let Some(id) = parts.next() {
        parse_number(id)?;
    }
    if parts.next().is_some() {
        return None;
    }
    let size = crate::kernel::params::parse_size(size)?;
    Some((size, base, irq))
}

fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Every `virtio_mmio.device=` value on the command line (the parameter registry keeps one).
fn command_line_devices() -> Vec<String> {
    // The registry parsed the line once; rescan it (it may be megabytes) only when it has one.
    if !crate::kernel::params::parsed().is_set("virtio_mmio.device") {
        return Vec::new();
    }
    let line = crate::kernel::params::command_line();
    let text = core::str::from_utf8(line).unwrap_or("");
    text.split_whitespace()
        .take_while(|word| *word != "--")
        .filter_map(|word| word.strip_prefix("virtio_mmio.device="))
        .map(String::from)
        .collect()
}

fn add_transport(device: String, id: PlatformDeviceId, res: Resources) {
    RESOURCES.lock().push(res);
    if let Err(error) = base::add_device(DeviceDesc::new("platform", device.clone(), id)) {
        pr_err!("{device}: {error}");
    }
}

/// The memory range and interrupt of an ACPI `LNRO0005` device (`_CRS`).
fn acpi_resources(name: &str) -> Result<Resources, ProbeError> {
    let acpi = crate::drivers::acpi::bus_device(name).ok_or(Errno::ENODEV)?;
    acpi_crs(acpi).ok_or_else(|| {
        pr_warn!(
            "{}: LNRO0005 without a memory range and an interrupt",
            acpi.path
        );
        Errno::ENXIO.into()
    })
}

fn acpi_crs(acpi: &crate::drivers::acpi::AcpiDevice) -> Option<Resources> {
    let mut memory = None;
    let mut interrupt = None;
    for resource in &acpi.resources {
        match resource {
            crate::drivers::acpi::Resource::Memory { base, length, .. } if memory.is_none() => {
                memory = Some((*base, *length));
            }
            crate::drivers::acpi::Resource::Interrupt {
                irqs,
                level_triggered,
                active_low,
                ..
            } if interrupt.is_none() => {
                let flags = match (level_triggered, active_low) {
                    (true, false) => IrqFlags::TRIGGER_HIGH,
                    (true, true) => IrqFlags::TRIGGER_LOW,
                    (false, false) => IrqFlags::TRIGGER_RISING,
                    (false, true) => IrqFlags::TRIGGER_FALLING,
                };
                interrupt = irqs.first().map(|&irq| (irq, flags));
            }
            _ => {}
        }
    }
    let ((base, size), (irq, flags)) = (memory?, interrupt?);
    Some(Resources {
        device: String::new(),
        base,
        size: size.max(REGISTERS_LEN),
        irq,
        flags,
    })
}

/// Registers the `virtio-mmio` driver on the platform bus (transports from the command line)
/// and on the acpi bus (`LNRO0005` devices), and adds the command line's transports.
pub fn init() {
    if let Err(error) = base::register_driver(DriverDesc::new(
        "platform",
        DRIVER,
        alloc::vec![
            PlatformMatchId::Name(DRIVER),
            PlatformMatchId::Acpi("LNRO0005")
        ],
        VirtioMmioDriver,
    )) {
        pr_err!("{DRIVER}: cannot register: {error}");
        return;
    }
    let mut count = 0;
    for text in command_line_devices() {
        let Some((size, base, irq)) = parse_device(&text) else {
            pr_warn!("virtio_mmio.device={text}: expected SIZE@ADDR:IRQ[:ID]; ignored");
            continue;
        };
        let in_acpi = crate::drivers::acpi::find_by_id(&["LNRO0005"])
            .iter()
            .any(|acpi| acpi_crs(acpi).is_some_and(|r| r.base == base));
        if in_acpi {
            printk!("virtio_mmio.device={text}: also described by ACPI; bound there");
            continue;
        }
        let device = alloc::format!("{DRIVER}.{count}");
        count += 1;
        let id = PlatformDeviceId {
            name: String::from(DRIVER),
            ..PlatformDeviceId::default()
        };
        // Edge, active high, as Linux treats these lines (an ISA IRQ without firmware trigger
        // information): lull-vmm and Firecracker raise them through an irqfd, an edge that
        // KVM's IOAPIC drops while the pin is masked. As level lines they were masked until
        // the interrupt thread finished, and a buffer used in that window went unannounced
        // until the next interrupt (gpiomon under a pulse storm waited forever). QEMU holds
        // the line high while the status is non-zero and re-raises it on each change; the
        // thread acknowledges the status, so the next change is a new edge.
        let res = Resources {
            device: device.clone(),
            base,
            size,
            irq,
            flags: IrqFlags::TRIGGER_RISING,
        };
        add_transport(device, id, res);
    }
    if let Err(error) = base::register_driver(DriverDesc::new(
        "acpi",
        DRIVER,
        alloc::vec![PlatformMatchId::Acpi("LNRO0005")],
        VirtioMmioDriver,
    )) {
        pr_err!("{DRIVER}: cannot register on the acpi bus: {error}");
    }
}
