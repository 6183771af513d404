//! virtio devices over the virtio-mmio transport: block (a raw image file), net (a TAP) and
//! gpio (simulated lines with a control socket).
//!
//! Each device has a 4 KiB register window in the MMIO hole and an ISA IRQ of its own, both
//! fixed by its position on the command line (`--disk`/`--net`/`--gpio` in order):
//!
//! | device n | window                          | IRQ (edge, active high)       |
//! |----------|---------------------------------|-------------------------------|
//! | 0..7     | `0xd000_0000 + n * 0x1000`      | 5, 6, 7, 10, 11, 12, 14, 15   |
//!
//! The guest learns of them the Linux way: `virtio_mmio.device=4K@0xd0000000:5` per device is
//! appended to its command line.
//!
//! Wiring: each queue's QueueNotify write is caught by KVM (an ioeventfd with the queue index
//! as datamatch) and wakes the device's worker thread, which waits in epoll on those eventfds,
//! the TAP (net) or the control socket's wake-up (gpio) and a control eventfd, and does no work when the guest does nothing. Used
//! buffers and configuration changes raise the IRQ through an irqfd. The vCPU threads only
//! serve register reads and writes. Device state is behind one mutex per device; pausing the
//! VM takes it, so nothing is in flight while the VM is paused or snapshotted.
//!
//! Live migration: what the worker threads write into guest RAM marks the guest memory's
//! dirty bitmaps (`vstate::memory::GuestMemoryMmap`), which the source unites with KVM's log.
//! At the final pause, once the state is saved, [`VirtioDevices::release_host`] hands the
//! host side over to the destination (disks fdatasync'ed, TAPs closed: a TAP without
//! IFF_MULTI_QUEUE takes one file at a time; gpio control sockets closed and unlinked);
//! a failed migration's resume takes them back ([`VirtioDevices::reacquire_host`]) and the
//! workers watch the new TAP descriptors.

pub mod block;
pub mod gpio;
pub mod mmio;
pub mod net;
pub mod queue;
mod sys;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod gpio_tests;
#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::vstate::memory::GuestMemoryMmap;
use kvm_ioctls::{IoEventAddress, VmFd};
use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::lock;
use crate::persist::Persist;
use block::{Block, BlockError, BlockState};
use gpio::{Gpio, GpioConfig, GpioError, GpioState};
use mmio::{MmioTransport, TransportError, TransportState, WINDOW_BYTES};
use net::{Net, NetError, NetState};
use queue::ChainError;

/// First device window, in the 32-bit MMIO hole below the IOAPIC.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// The ISA IRQs devices get, in order (0-2, 4 (COM1), 8 (RTC), 9 (SCI), 13 (FPU) are taken).
pub const IRQS: [u32; 8] = [5, 6, 7, 10, 11, 12, 14, 15];
/// Most virtio devices a VM can have.
pub const MAX_DEVICES: usize = IRQS.len();

/// The window and IRQ of device `index`.
pub fn slot(index: usize) -> (u64, u32) {
    (MMIO_BASE + index as u64 * WINDOW_BYTES, IRQS[index])
}

/// Command-line fragment describing `count` devices (with a leading space).
pub fn cmdline_fragment(count: usize) -> String {
    (0..count.min(MAX_DEVICES))
        .map(|index| {
            let (base, irq) = slot(index);
            format!(" virtio_mmio.device=4K@{base:#x}:{irq}")
        })
        .collect()
}

/// A device asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtioConfig {
    Block { path: PathBuf, readonly: bool },
    Net { tap: String, mac: Option<[u8; 6]> },
    Gpio(GpioConfig),
}

/// Parses `--disk path=FILE[,readonly]`.
pub fn parse_disk(value: &str) -> Result<VirtioConfig, String> {
    let (mut path, mut readonly) = (None, false);
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("path", file)) if !file.is_empty() => path = Some(PathBuf::from(file)),
            None if part == "readonly" || part == "ro" => readonly = true,
            Some(("readonly", "on" | "true")) => readonly = true,
            Some(("readonly", "off" | "false")) => readonly = false,
            _ => return Err(format!("'{part}' is not path=FILE or readonly")),
        }
    }
    let path = path.ok_or("path=FILE is missing")?;
    Ok(VirtioConfig::Block { path, readonly })
}

/// Parses `--net tap=NAME[,mac=XX:XX:XX:XX:XX:XX]`.
pub fn parse_net(value: &str) -> Result<VirtioConfig, String> {
    let (mut tap, mut mac) = (None, None);
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) if !name.is_empty() && name.len() < 16 => {
                tap = Some(name.to_string())
            }
            Some(("tap", name)) => return Err(format!("'{name}' is not a 1-15 byte TAP name")),
            Some(("mac", text)) => mac = Some(parse_mac(text)?),
            _ => return Err(format!("'{part}' is not tap=NAME or mac=XX:XX:XX:XX:XX:XX")),
        }
    }
    let tap = tap.ok_or("tap=NAME is missing")?;
    Ok(VirtioConfig::Net { tap, mac })
}

/// Parses `--gpio [lines=NAME,...][,control=PATH][,log=PATH]`.
pub fn parse_gpio(value: &str) -> Result<VirtioConfig, String> {
    gpio::parse_gpio(value).map(VirtioConfig::Gpio)
}

fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("'{text}' is not a MAC address (XX:XX:XX:XX:XX:XX)");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!("'{text}' is a multicast address"));
    }
    Ok(mac)
}

/// The device-specific half of a virtio device.
pub enum Backend {
    Block(Block),
    Net(Net),
    Gpio(Gpio),
}

/// What woke a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendEvent {
    /// The driver notified queue n.
    Queue(usize),
    /// The host side has work (the TAP is readable).
    Host,
}

/// Saved form of a backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendState {
    Block(BlockState),
    Net(NetState),
    Gpio(GpioState),
}

impl BackendState {
    /// `virtio-blk`, `virtio-net` or `virtio-gpio`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendState::Block(_) => "virtio-blk",
            BackendState::Net(_) => "virtio-net",
            BackendState::Gpio(_) => "virtio-gpio",
        }
    }
}

/// Why a device could not be set up or restored.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Gpio(#[from] GpioError),
    #[error("{device}: {source}")]
    Transport {
        device: String,
        source: TransportError,
    },
    #[error("at most {MAX_DEVICES} virtio devices (--disk, --net and --gpio together), not {0}")]
    TooMany(usize),
    #[error("{what}: {source}")]
    Host {
        what: String,
        source: std::io::Error,
    },
    #[error("KVM {operation} for {device}: {source}")]
    Kvm {
        operation: &'static str,
        device: String,
        source: kvm_ioctls::Error,
    },
}

impl Backend {
    /// Opens the host side of a configured device.
    pub fn open(config: &VirtioConfig) -> Result<Self, VirtioError> {
        Ok(match config {
            VirtioConfig::Block { path, readonly } => Backend::Block(Block::open(path, *readonly)?),
            VirtioConfig::Net { tap, mac } => Backend::Net(Net::open(tap, *mac)?),
            VirtioConfig::Gpio(config) => Backend::Gpio(Gpio::open(config)?),
        })
    }

    pub fn device_id(&self) -> u32 {
        match self {
            Backend::Block(block) => block.device_id(),
            Backend::Net(net) => net.device_id(),
            Backend::Gpio(gpio) => gpio.device_id(),
        }
    }

    pub fn features(&self) -> u64 {
        match self {
            Backend::Block(block) => block.features(),
            Backend::Net(net) => net.features(),
            Backend::Gpio(gpio) => gpio.features(),
        }
    }

    pub fn config(&self) -> Vec<u8> {
        match self {
            Backend::Block(block) => block.config(),
            Backend::Net(net) => net.config(),
            Backend::Gpio(gpio) => gpio.config(),
        }
    }

    pub fn queue_max_sizes(&self) -> Vec<u16> {
        match self {
            Backend::Block(block) => block.queue_max_sizes(),
            Backend::Net(net) => net.queue_max_sizes(),
            Backend::Gpio(gpio) => gpio.queue_max_sizes(),
        }
    }

    pub fn reset(&mut self) {
        match self {
            Backend::Net(net) => net.reset(),
            Backend::Gpio(gpio) => gpio.reset(),
            Backend::Block(_) => {}
        }
    }

    /// DRIVER_OK with the features the driver accepted.
    pub fn activate(&mut self, features: u64) {
        if let Backend::Gpio(gpio) = self {
            gpio.activate(features);
        }
    }

    /// The host descriptor the worker waits on besides the queues (the TAP).
    pub fn host_fd(&self) -> Option<RawFd> {
        match self {
            Backend::Block(_) => None,
            Backend::Net(net) => net.host_fd(),
            Backend::Gpio(gpio) => gpio.host_fd(),
        }
    }

    /// Does the work `event` calls for; returns the queues (bitmask) given used buffers. The
    /// block device stops between requests once `preempt` is set (a pause is waiting).
    pub fn process(
        &mut self,
        event: BackendEvent,
        queues: &mut [Queue],
        memory: &GuestMemoryMmap,
        preempt: &AtomicBool,
    ) -> Result<u64, ChainError> {
        let ready = |queues: &[Queue], index: usize| {
            queues.get(index).is_some_and(virtio_queue::QueueT::ready)
        };
        match (self, event) {
            (Backend::Block(block), BackendEvent::Queue(0)) => {
                Ok(u64::from(block.process(&mut queues[0], memory, preempt)?))
            }
            (Backend::Net(net), BackendEvent::Queue(net::TX_QUEUE)) => {
                Ok(u64::from(net.transmit(&mut queues[net::TX_QUEUE], memory)?) << net::TX_QUEUE)
            }
            (Backend::Net(net), BackendEvent::Queue(net::RX_QUEUE) | BackendEvent::Host)
                if ready(queues, net::RX_QUEUE) =>
            {
                queue::check_queue(&queues[net::RX_QUEUE], memory)?;
                Ok(u64::from(net.receive(&mut queues[net::RX_QUEUE], memory)?) << net::RX_QUEUE)
            }
            (Backend::Gpio(gpio), BackendEvent::Queue(0)) => gpio.process_requests(queues, memory),
            (Backend::Gpio(gpio), BackendEvent::Queue(1)) => gpio.process_events(queues, memory),
            (Backend::Gpio(gpio), BackendEvent::Host) => {
                if ready(queues, 1) {
                    queue::check_queue(&queues[1], memory)?;
                }
                gpio.deliver(queues, memory)
            }
            _ => Ok(0),
        }
    }

    /// Lets another process take over the host side (a migration source at the final pause,
    /// its state saved): the disk's answered writes reach the file (fdatasync), the TAP and
    /// the gpio control socket are closed for the destination to open.
    pub fn release_host(&mut self) -> Result<(), VirtioError> {
        match self {
            Backend::Block(block) => block.sync()?,
            Backend::Net(net) => net.detach(),
            Backend::Gpio(gpio) => gpio.release_host(),
        }
        Ok(())
    }

    /// Takes back what [`Backend::release_host`] let go (the migration failed).
    pub fn reacquire_host(&mut self) -> Result<(), VirtioError> {
        match self {
            Backend::Block(_) => {}
            Backend::Net(net) if net.is_detached() => net.reattach()?,
            Backend::Net(_) => {}
            Backend::Gpio(gpio) => gpio.reacquire_host()?,
        }
        Ok(())
    }

    pub fn save(&self) -> BackendState {
        match self {
            Backend::Block(block) => BackendState::Block(block.save()),
            Backend::Net(net) => BackendState::Net(net.save()),
            Backend::Gpio(gpio) => BackendState::Gpio(gpio.save()),
        }
    }

    pub fn restore(state: &BackendState) -> Result<Self, VirtioError> {
        Ok(match state {
            BackendState::Block(block) => Backend::Block(Block::restore(block)?),
            BackendState::Net(net) => Backend::Net(Net::restore(net)?),
            BackendState::Gpio(gpio) => Backend::Gpio(Gpio::restore(gpio)?),
        })
    }

    /// `virtio-blk` or `virtio-net`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Block(_) => "virtio-blk",
            Backend::Net(_) => "virtio-net",
            Backend::Gpio(_) => "virtio-gpio",
        }
    }

    /// What the device is backed by, for the log line.
    pub fn describe(&self) -> String {
        match self {
            Backend::Block(block) => format!(
                "{} ({} sectors{})",
                block.path().display(),
                block.capacity_sectors(),
                if block.readonly() { ", read-only" } else { "" }
            ),
            Backend::Net(net) => {
                let m = net.mac();
                format!(
                    "tap {} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                    net.tap(),
                    m[0],
                    m[1],
                    m[2],
                    m[3],
                    m[4],
                    m[5]
                )
            }
            Backend::Gpio(gpio) => gpio.describe(),
        }
    }
}

/// Raises a device's interrupt.
pub trait Interrupt: Send + Sync {
    fn trigger(&self);
}

/// An irqfd: a write makes KVM inject an edge on the GSI.
struct IrqFd(EventFd);

impl Interrupt for IrqFd {
    fn trigger(&self) {
        // Fails only if the counter would overflow, i.e. an interrupt is pending anyway.
        let _ = self.0.write(1);
    }
}

/// Saved form of one device: where it is, and its transport and backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    pub base: u64,
    pub irq: u32,
    pub transport: TransportState,
}

/// What restoring a transport needs besides its state.
pub struct TransportResources {
    pub name: String,
    pub memory: GuestMemoryMmap,
    pub interrupt: Arc<dyn Interrupt>,
}

impl Persist for MmioTransport {
    type State = TransportState;
    type RestoreArgs = TransportResources;
    type Error = VirtioError;

    fn save(&self) -> Result<TransportState, VirtioError> {
        Ok(MmioTransport::save(self))
    }

    /// Reopens the backend's file or TAP, then applies the registers and queues.
    fn restore(args: TransportResources, state: &TransportState) -> Result<Self, VirtioError> {
        let backend = Backend::restore(&state.backend)?;
        let device = args.name.clone();
        let mut transport = MmioTransport::new(args.name, backend, args.memory, args.interrupt)
            .map_err(|source| VirtioError::Transport {
                device: device.clone(),
                source,
            })?;
        transport
            .apply(state)
            .map_err(|source| VirtioError::Transport { device, source })?;
        Ok(transport)
    }
}

/// The windows vCPUs reach the devices through.
#[derive(Clone, Default)]
pub struct MmioBus {
    windows: Vec<(u64, Arc<Mutex<MmioTransport>>)>,
}

impl MmioBus {
    fn find(&self, address: u64) -> Option<(u64, &Arc<Mutex<MmioTransport>>)> {
        self.windows
            .iter()
            .find(|(base, _)| address >= *base && address - base < WINDOW_BYTES)
            .map(|(base, device)| (address - base, device))
    }

    /// A read of a device register; false if no device is at `address`.
    pub fn read(&self, address: u64, data: &mut [u8]) -> bool {
        match self.find(address) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// A write of a device register; false if no device is at `address`.
    pub fn write(&self, address: u64, data: &[u8]) -> bool {
        match self.find(address) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Names devices by kind and order: `virtio-blk0`, `virtio-blk1`, `virtio-net0`, `virtio-gpio0`.
#[derive(Default)]
struct DeviceNames(Vec<(&'static str, usize)>);

impl DeviceNames {
    fn next(&mut self, kind: &'static str) -> String {
        let count = match self.0.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, count)) => count,
            None => {
                self.0.push((kind, 0));
                &mut self.0.last_mut().expect("just pushed").1
            }
        };
        let name = format!("{kind}{count}");
        *count += 1;
        name
    }
}

/// A device with its worker thread and KVM wiring.
struct Attached {
    base: u64,
    irq: u32,
    transport: Arc<Mutex<MmioTransport>>,
    control: EventFd,
    stop: Arc<AtomicBool>,
    /// The transport's [`MmioTransport::preempt`], reachable without its lock.
    preempt: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

/// The VM's virtio devices.
#[derive(Default)]
pub struct VirtioDevices {
    devices: Vec<Attached>,
}

const CONTROL_TOKEN: u64 = u64::MAX;
const HOST_TOKEN: u64 = u64::MAX - 1;

/// Opens every configured backend (before anything else of the VM exists, so a bad
/// `--disk`/`--net` leaves nothing half-started).
pub fn open_backends(configs: &[VirtioConfig]) -> Result<Vec<Backend>, VirtioError> {
    if configs.len() > MAX_DEVICES {
        return Err(VirtioError::TooMany(configs.len()));
    }
    configs.iter().map(Backend::open).collect()
}

impl VirtioDevices {
    /// Puts `backends` at their slots: irqfds, ioeventfds, worker threads. Logs one line per
    /// device.
    pub fn attach(
        vm: &VmFd,
        memory: &GuestMemoryMmap,
        backends: Vec<Backend>,
    ) -> Result<Self, VirtioError> {
        let mut devices = Self::default();
        let mut names = DeviceNames::default();
        for (index, backend) in backends.into_iter().enumerate() {
            let name = names.next(backend.kind());
            devices.attach_one(vm, index, name, |interrupt| {
                MmioTransport::new(String::new(), backend, memory.clone(), interrupt).map_err(
                    |source| VirtioError::Transport {
                        device: format!("device {index}"),
                        source,
                    },
                )
            })?;
        }
        Ok(devices)
    }

    /// Rebuilds saved devices (reopening their files and TAPs) at their saved slots.
    pub fn restore(
        vm: &VmFd,
        memory: &GuestMemoryMmap,
        states: &[VirtioDeviceState],
    ) -> Result<Self, VirtioError> {
        if states.len() > MAX_DEVICES {
            return Err(VirtioError::TooMany(states.len()));
        }
        let mut devices = Self::default();
        let mut names = DeviceNames::default();
        for (index, state) in states.iter().enumerate() {
            let name = names.next(state.transport.backend.kind());
            let expected = slot(index);
            if (state.base, state.irq) != expected {
                return Err(VirtioError::Transport {
                    device: name,
                    source: TransportError::Queue {
                        index: 0,
                        reason: format!(
                            "saved at {:#x} irq {}, expected {:#x} irq {}",
                            state.base, state.irq, expected.0, expected.1
                        ),
                    },
                });
            }
            devices.attach_one(vm, index, name.clone(), |interrupt| {
                MmioTransport::restore(
                    TransportResources {
                        name,
                        memory: memory.clone(),
                        interrupt,
                    },
                    &state.transport,
                )
            })?;
        }
        Ok(devices)
    }

    fn attach_one(
        &mut self,
        vm: &VmFd,
        index: usize,
        name: String,
        build: impl FnOnce(Arc<dyn Interrupt>) -> Result<MmioTransport, VirtioError>,
    ) -> Result<(), VirtioError> {
        let (base, irq) = slot(index);
        let host = |what: &str| {
            let what = format!("{what} for {name}");
            move |source| VirtioError::Host { what, source }
        };
        let kvm = |operation| {
            let device = name.clone();
            move |source| VirtioError::Kvm {
                operation,
                device,
                source,
            }
        };
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(host("creating an eventfd"))?;
        vm.register_irqfd(&irqfd, irq).map_err(kvm("KVM_IRQFD"))?;
        let mut transport = build(Arc::new(IrqFd(irqfd)))?;
        transport.name = format!("{name} at {base:#x} irq {irq}");
        let notify = MmioTransport::notify_address(base).0;
        let mut queue_events = Vec::new();
        for (queue, event) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(event, &IoEventAddress::Mmio(notify), queue as u32)
                .map_err(kvm("KVM_IOEVENTFD"))?;
            queue_events.push(event.try_clone().map_err(host("duplicating an eventfd"))?);
        }
        eprintln!(
            "lull-vmm: {}: {} (virtio_mmio.device=4K@{base:#x}:{irq})",
            transport.name,
            transport.backend.describe()
        );
        let control = EventFd::new(libc::EFD_NONBLOCK).map_err(host("creating an eventfd"))?;
        let worker_control = control
            .try_clone()
            .map_err(host("duplicating an eventfd"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let preempt = transport.preempt.clone();
        let transport = Arc::new(Mutex::new(transport));
        let worker = {
            let (transport, stop) = (transport.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("{name}-io"))
                .spawn(move || worker(&transport, &queue_events, &worker_control, &stop))
                .map_err(host("starting the I/O thread"))?
        };
        self.devices.push(Attached {
            base,
            irq,
            transport,
            control,
            stop,
            preempt,
            worker: Some(worker),
        });
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The register windows, for the vCPUs.
    pub fn bus(&self) -> MmioBus {
        MmioBus {
            windows: self
                .devices
                .iter()
                .map(|device| (device.base, device.transport.clone()))
                .collect(),
        }
    }

    /// Stops device work; returns once no request is being served. A device serving a batch
    /// of requests stops after the one in progress (its `preempt` flag is set before its lock
    /// is taken): the others stay queued in guest memory for the resume or a restore, so a
    /// pause waits for one request, not for everything the guest queued.
    pub fn pause(&self) {
        let flags: Vec<Arc<AtomicBool>> = self
            .devices
            .iter()
            .map(|device| device.preempt.clone())
            .collect();
        for flag in &flags {
            flag.store(true, Ordering::Release);
        }
        for device in &self.devices {
            lock(&device.transport).pause();
        }
        for flag in &flags {
            flag.store(false, Ordering::Release);
        }
    }

    pub fn resume(&self) {
        for device in &self.devices {
            lock(&device.transport).resume();
        }
    }

    /// Hands the host side of every device over (see [`Backend::release_host`]); the VM must
    /// be paused (its devices quiesced) and its state saved.
    pub fn release_host(&self) -> Result<(), VirtioError> {
        for device in &self.devices {
            let result = lock(&device.transport).backend.release_host();
            // The worker watches the host descriptor anew (the TAP's is gone).
            let _ = device.control.write(1);
            result?;
        }
        Ok(())
    }

    /// Takes the host side of every device back after [`VirtioDevices::release_host`] (a
    /// failed migration); tries every device, returns the first error.
    pub fn reacquire_host(&self) -> Result<(), VirtioError> {
        let mut first = Ok(());
        for device in &self.devices {
            let result = lock(&device.transport).backend.reacquire_host();
            let _ = device.control.write(1);
            if first.is_ok() {
                first = result;
            }
        }
        first
    }

    /// After a restore, once the vCPUs may run: serve what the guest had queued.
    pub fn kick_all(&self) {
        for device in &self.devices {
            lock(&device.transport).kick_all();
        }
    }

    pub fn save(&self) -> Vec<VirtioDeviceState> {
        self.devices
            .iter()
            .map(|device| {
                let transport = lock(&device.transport);
                let queued: u32 = transport.queued().iter().map(|&n| u32::from(n)).sum();
                if queued > 0 {
                    eprintln!(
                        "lull-vmm: {}: {queued} requests queued by the guest and not yet served \
                         are saved; the device serves them at resume or after a restore",
                        transport.name
                    );
                }
                VirtioDeviceState {
                    base: device.base,
                    irq: device.irq,
                    transport: transport.save(),
                }
            })
            .collect()
    }

    /// Stops and joins the worker threads.
    pub fn stop(&mut self) {
        for device in &self.devices {
            device.stop.store(true, Ordering::Release);
            let _ = device.control.write(1);
        }
        for device in &mut self.devices {
            if let Some(worker) = device.worker.take() {
                let _ = worker.join();
            }
        }
    }

    /// Sockets the devices serve on the host (virtio-gpio's control sockets).
    pub fn host_sockets(&self) -> Vec<PathBuf> {
        self.devices
            .iter()
            .filter_map(|device| match &lock(&device.transport).backend {
                Backend::Gpio(gpio) => gpio.control_socket().map(PathBuf::from),
                _ => None,
            })
            .collect()
    }

    /// The worker thread ids (for tests that measure their CPU time).
    pub fn transports(&self) -> Vec<Arc<Mutex<MmioTransport>>> {
        self.devices.iter().map(|d| d.transport.clone()).collect()
    }
}

impl Drop for VirtioDevices {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A device's I/O thread: waits for queue notifications, the TAP and the control eventfd;
/// uses no CPU while none fires. The control eventfd without `stop` means the backend's host
/// descriptor changed (a TAP handed over or taken back): it is watched anew.
fn worker(
    transport: &Mutex<MmioTransport>,
    queue_events: &[EventFd],
    control: &EventFd,
    stop: &AtomicBool,
) {
    let Ok(epoll) = Epoll::new() else {
        eprintln!("lull-vmm: cannot create an epoll instance; a virtio device will not work");
        return;
    };
    let add = |fd: RawFd, events: EventSet, token: u64| {
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
            .is_ok()
    };
    let mut ok = add(control.as_raw_fd(), EventSet::IN, CONTROL_TOKEN);
    for (index, event) in queue_events.iter().enumerate() {
        ok &= add(event.as_raw_fd(), EventSet::IN, index as u64);
    }
    // Edge-triggered: the backend reads until the TAP is empty, or holds a frame and is woken
    // by the RX queue's notification instead.
    let watch_host = |fd: Option<RawFd>| {
        fd.is_none_or(|fd| add(fd, EventSet::IN | EventSet::EDGE_TRIGGERED, HOST_TOKEN))
    };
    let mut host_fd = lock(transport).backend.host_fd();
    ok &= watch_host(host_fd);
    if !ok {
        eprintln!("lull-vmm: cannot watch a virtio device's events; it will not work");
        return;
    }
    let mut events = vec![EpollEvent::default(); queue_events.len() + 2];
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for event in &events[..count] {
            match event.data() {
                CONTROL_TOKEN => {
                    let _ = control.read();
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    // A closed descriptor left the epoll set by itself; one still open (or a
                    // new one that got its number) is removed first.
                    if let Some(fd) = host_fd {
                        let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    }
                    host_fd = lock(transport).backend.host_fd();
                    if !watch_host(host_fd) {
                        eprintln!(
                            "lull-vmm: cannot watch a virtio device's host descriptor anew; \
                             it will not receive"
                        );
                    }
                }
                HOST_TOKEN => lock(transport).handle(BackendEvent::Host),
                index => {
                    let index = index as usize;
                    if let Some(event) = queue_events.get(index) {
                        let _ = event.read();
                        lock(transport).handle(BackendEvent::Queue(index));
                    }
                }
            }
        }
    }
}
