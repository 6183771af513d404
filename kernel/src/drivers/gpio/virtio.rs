//! virtio-gpio (virtio 1.2 §5.18, device type 41) as a GPIO controller: the `virtio_gpio`
//! driver binds the device on either transport (virtio-pci on q35, virtio-mmio on microvm),
//! reads the line count and names, and registers a chip whose operations are requests on the
//! request queue (`{le16 type, le16 gpio, le32 value}` in, `{u8 status, u8 value}` out), one at
//! a time, sleeping until the device answers. With `VIRTIO_GPIO_F_IRQ` the lines can interrupt:
//! unmasking a line queues its event buffer on the event queue, and the device hands it back
//! (VALID) when the line fires.
//!
//! The message formats and constants are `lull-virtio-gpio`'s, the crate whose device side the
//! vhost-user back-end (`lull-gpio-backend`) runs: the driver and that device share one
//! definition of the protocol.
//!
//! Events reach gpiolib from the transport's interrupt thread: an edge trigger's buffer is
//! queued again at once; a level trigger's only when gpiolib unmasks it (after the consumer
//! acknowledged the event). For a both-edges trigger the event does not say which edge, so the
//! line is read (a request made from the interrupt thread, which therefore polls the request
//! queue itself rather than wait for its own interrupt).
//!
//! A device that answers with a used element the queue does not believe, or sets
//! DEVICE_NEEDS_RESET, is marked failed: requests get an I/O error until an unbind and bind.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, Ordering};

use lull_devres::Revocable;
use lull_driver_core::{
    Driver, DriverDesc, Errno, ProbeContext, ProbeError, RemoveContext, VirtioMatchId,
};
use lull_gpio::{ChipError, ChipRegistration, Direction, EventSink, GpioChip, IrqType, RawEvent};
use lull_virtio_gpio::{
    Message, IRQ_STATUS_VALID, MSG_GET_DIRECTION, MSG_GET_NAMES, MSG_GET_VALUE, MSG_IRQ_TYPE,
    MSG_SET_DIRECTION, MSG_SET_VALUE, REQUEST_LEN, STATUS_OK, VIRTIO_GPIO_F_IRQ, VIRTIO_ID_GPIO,
};
use lull_virtqueue::{Segment, SplitQueue, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};

use crate::arch::dma::DmaBuffer;
use crate::drivers::base::{self, devm};
use crate::drivers::virtio::queue::{alloc_queue, DmaQueueMemory};
use crate::drivers::virtio::{VirtioCallbacks, VirtioDevice};
use crate::kernel::locking::{IrqSafeLock, Mutex};
use crate::kernel::sched::Completion;
use crate::{pr_err, printk};

/// The driver's name (`/sys/bus/virtio/drivers/virtio_gpio`, as Linux's).
pub const DRIVER: &str = "virtio_gpio";
/// Descriptors in the request queue (one request in flight).
const REQUEST_QUEUE_SIZE: u16 = 8;
/// Descriptors in the event queue: two per line that can interrupt.
const EVENT_QUEUE_SIZE: u16 = 256;
/// The most lines a chip may have (the spec allows 65535; names and event buffers are per line).
const MAX_LINES: u16 = 1024;
/// The most bytes of line names read.
const MAX_NAMES: usize = 16 * 1024;
/// Where the response starts in the request buffer.
const RESPONSE_AT: usize = 16;
/// Bytes of event buffer per line: `le16 gpio`, then the status byte.
const EVENT_SLOT: usize = 4;
/// How long one request may take before the device is declared dead.
const TIMEOUT_NS: u64 = 2_000_000_000;
/// Features the driver implements.
const DRIVER_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_GPIO_F_IRQ;

const RUNNING: u8 = 0;
const FAILED: u8 = 1;
const REMOVED: u8 = 2;

/// The event side: which lines have a buffer with the device, their triggers and masks.
struct Events {
    queue: SplitQueue<DmaQueueMemory, u16>,
    outstanding: Vec<bool>,
    triggers: Vec<IrqType>,
    masked: Vec<bool>,
}

/// One bound device.
pub struct VirtioGpio {
    device: Arc<VirtioDevice>,
    requests: IrqSafeLock<SplitQueue<DmaQueueMemory, ()>>,
    /// Serialises requests (one buffer).
    request_lock: Mutex<()>,
    request_buffer: Arc<Revocable<DmaBuffer>>,
    request_bus: u64,
    response_cap: usize,
    /// Signalled by the interrupt: something may be on the request queue's used ring.
    answered: Completion,
    events: Option<IrqSafeLock<Events>>,
    event_buffer: Option<(Arc<Revocable<DmaBuffer>>, u64)>,
    sink: IrqSafeLock<Option<EventSink>>,
    ngpio: u16,
    parent: String,
    state: AtomicU8,
}

impl VirtioGpio {
    fn name(&self) -> &str {
        self.device.name()
    }

    fn fail(&self, reason: &str) {
        if self
            .state
            .compare_exchange(RUNNING, FAILED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            pr_err!(
                "{}: {DRIVER}: {reason}; device marked failed and no longer used \
                 (unbind and bind to reset it)",
                self.name()
            );
            self.device.set_failed();
        }
        self.answered.complete();
    }

    /// One request: `{kind, gpio, value}` out, `response_len` bytes back (status first).
    fn transact(
        &self,
        kind: u16,
        gpio: u16,
        value: u32,
        response_len: usize,
    ) -> Result<Vec<u8>, ChipError> {
        let _one = self.request_lock.lock();
        if self.state.load(Ordering::Acquire) != RUNNING || response_len > self.response_cap {
            return Err(ChipError::Io);
        }
        {
            let buffer = self.request_buffer.try_access().ok_or(ChipError::Io)?;
            buffer.write_bytes(0, &Message { kind, gpio, value }.encode());
            buffer.write_u8(RESPONSE_AT, 0xff);
        }
        let notify = {
            let mut queue = self.requests.lock();
            queue
                .add(
                    &[Segment::new(self.request_bus, REQUEST_LEN as u32)],
                    &[Segment::new(
                        self.request_bus + RESPONSE_AT as u64,
                        response_len as u32,
                    )],
                    (),
                )
                .and_then(|_| queue.should_notify())
        };
        match notify {
            Ok(true) => self.device.notify(0),
            Ok(false) => {}
            Err(error) => {
                self.fail(&alloc::format!("request queue: {error}"));
                return Err(ChipError::Io);
            }
        }
        let deadline = crate::kernel::time::uptime_ns().saturating_add(TIMEOUT_NS);
        loop {
            // The requester takes its answer from the used ring itself: the interrupt thread
            // may be the requester (a both-edges event reads its line).
            let popped = self.requests.lock().pop_used();
            match popped {
                Ok(Some(((), len))) => {
                    let buffer = self.request_buffer.try_access().ok_or(ChipError::Io)?;
                    let mut response = vec![0u8; (len as usize).min(response_len)];
                    buffer.read_bytes(RESPONSE_AT, &mut response);
                    if response.first() != Some(&STATUS_OK) {
                        return Err(ChipError::Io);
                    }
                    return Ok(response);
                }
                Ok(None) => {}
                Err(error) => {
                    self.fail(&alloc::format!("request queue: {error}"));
                    return Err(ChipError::Io);
                }
            }
            if self.state.load(Ordering::Acquire) != RUNNING {
                return Err(ChipError::Io);
            }
            let now = crate::kernel::time::uptime_ns();
            if now >= deadline {
                self.fail("no answer to a request within 2 s");
                return Err(ChipError::Io);
            }
            // Woken by the interrupt; short so that a request from the interrupt thread
            // (which cannot be woken by itself) polls.
            self.answered.wait_timeout((deadline - now).min(1_000_000));
        }
    }

    /// Gives line `line`'s event buffer to the device, unless it already has it.
    fn queue_event(&self, line: u16) -> Result<(), ChipError> {
        let (Some(events), Some((buffer, bus))) = (&self.events, &self.event_buffer) else {
            return Err(ChipError::NotSupported);
        };
        let slot = usize::from(line) * EVENT_SLOT;
        let notify = {
            let mut events = events.lock();
            if *events
                .outstanding
                .get(usize::from(line))
                .ok_or(ChipError::NotSupported)?
            {
                return Ok(());
            }
            {
                let buffer = buffer.try_access().ok_or(ChipError::Io)?;
                buffer.write_u16(slot, line);
                buffer.write_u8(slot + 2, 0xff);
            }
            let added = events.queue.add(
                &[Segment::new(bus + slot as u64, 2)],
                &[Segment::new(bus + slot as u64 + 2, 1)],
                line,
            );
            if let Err(error) = added {
                drop(events);
                self.fail(&alloc::format!("event queue: {error}"));
                return Err(ChipError::Io);
            }
            events.outstanding[usize::from(line)] = true;
            events.queue.should_notify()
        };
        match notify {
            Ok(true) => self.device.notify(1),
            Ok(false) => {}
            Err(error) => {
                self.fail(&alloc::format!("event queue: {error}"));
                return Err(ChipError::Io);
            }
        }
        Ok(())
    }

    /// Takes the event buffers the device gave back and reports the valid ones.
    fn drain_events(&self) {
        let (Some(events), Some((buffer, _))) = (&self.events, &self.event_buffer) else {
            return;
        };
        let mut fired = Vec::new();
        loop {
            let mut guard = events.lock();
            match guard.queue.pop_used() {
                Ok(Some((line, _len))) => {
                    let index = usize::from(line);
                    guard.outstanding[index] = false;
                    let status = buffer
                        .try_access()
                        .map_or(0, |b| b.read_u8(index * EVENT_SLOT + 2));
                    if status == IRQ_STATUS_VALID && !guard.masked[index] {
                        fired.push((line, guard.triggers[index]));
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    drop(guard);
                    self.fail(&alloc::format!("event queue: {error}"));
                    return;
                }
            }
        }
        let sink = self.sink.lock().clone();
        for (line, trigger) in fired {
            let raw = match trigger {
                IrqType::EdgeRising => RawEvent::Rising,
                IrqType::EdgeFalling => RawEvent::Falling,
                IrqType::LevelHigh | IrqType::LevelLow => RawEvent::Level,
                IrqType::EdgeBoth => match self.transact(MSG_GET_VALUE, line, 0, 2) {
                    Ok(response) if response.get(1) == Some(&1) => RawEvent::Rising,
                    Ok(_) => RawEvent::Falling,
                    Err(_) => continue,
                },
                IrqType::None => continue,
            };
            if let Some(sink) = &sink {
                sink.report(u32::from(line), raw, crate::kernel::time::uptime_ns());
            }
            if !trigger.is_level() {
                let _ = self.queue_event(line);
            }
        }
    }
}

impl VirtioCallbacks for VirtioGpio {
    fn vring_interrupt(&self) {
        if self.state.load(Ordering::Acquire) != RUNNING {
            return;
        }
        self.answered.complete();
        self.drain_events();
    }

    fn config_changed(&self) {
        if self.device.status() & lull_virtqueue::STATUS_DEVICE_NEEDS_RESET != 0 {
            self.fail("device set DEVICE_NEEDS_RESET");
        }
    }
}

/// The chip gpiolib holds (the device state is shared with the interrupt path), with the
/// line names the device gave at probe.
struct Chip {
    gpio: Arc<VirtioGpio>,
    names: Vec<Option<String>>,
}

fn line(offset: u32) -> Result<u16, ChipError> {
    u16::try_from(offset).map_err(|_| ChipError::InvalidOffset(offset))
}

impl GpioChip for Chip {
    fn label(&self) -> &str {
        "virtio-gpio"
    }

    fn num_lines(&self) -> u32 {
        u32::from(self.gpio.ngpio)
    }

    fn parent(&self) -> Option<&str> {
        Some(&self.gpio.parent)
    }

    fn line_name(&self, offset: u32) -> Option<&str> {
        self.names
            .get(usize::try_from(offset).ok()?)
            .and_then(Option::as_deref)
    }

    fn can_sleep(&self) -> bool {
        true
    }

    fn get(&self, offset: u32) -> Result<bool, ChipError> {
        let response = self.gpio.transact(MSG_GET_VALUE, line(offset)?, 0, 2)?;
        Ok(response.get(1) == Some(&1))
    }

    fn set(&self, offset: u32, value: bool) -> Result<(), ChipError> {
        self.gpio
            .transact(MSG_SET_VALUE, line(offset)?, u32::from(value), 2)
            .map(drop)
    }

    fn get_direction(&self, offset: u32) -> Result<Direction, ChipError> {
        let response = self.gpio.transact(MSG_GET_DIRECTION, line(offset)?, 0, 2)?;
        Ok(if response.get(1) == Some(&1) {
            Direction::Output
        } else {
            Direction::Input
        })
    }

    fn direction_input(&self, offset: u32) -> Result<(), ChipError> {
        self.gpio
            .transact(MSG_SET_DIRECTION, line(offset)?, 2, 2)
            .map(drop)
    }

    fn direction_output(&self, offset: u32, value: bool) -> Result<(), ChipError> {
        // The value first, then the direction: the line never drives the other level.
        let gpio = line(offset)?;
        self.gpio
            .transact(MSG_SET_VALUE, gpio, u32::from(value), 2)?;
        self.gpio.transact(MSG_SET_DIRECTION, gpio, 1, 2).map(drop)
    }

    fn irq_capable(&self) -> bool {
        self.gpio.events.is_some()
    }

    fn irq_set_type(&self, offset: u32, trigger: IrqType) -> Result<(), ChipError> {
        let gpio = line(offset)?;
        let events = self.gpio.events.as_ref().ok_or(ChipError::NotSupported)?;
        if usize::from(gpio) >= events.lock().triggers.len() {
            return Err(ChipError::NotSupported);
        }
        self.gpio.transact(MSG_IRQ_TYPE, gpio, trigger as u32, 2)?;
        events.lock().triggers[usize::from(gpio)] = trigger;
        Ok(())
    }

    fn irq_enable(&self, offset: u32) -> Result<(), ChipError> {
        let gpio = line(offset)?;
        let events = self.gpio.events.as_ref().ok_or(ChipError::NotSupported)?;
        {
            let mut events = events.lock();
            let masked = events
                .masked
                .get_mut(usize::from(gpio))
                .ok_or(ChipError::NotSupported)?;
            *masked = false;
        }
        self.gpio.queue_event(gpio)
    }

    fn irq_disable(&self, offset: u32) -> Result<(), ChipError> {
        // A buffer with the device stays there; what it brings back is not reported, and
        // setting the trigger to none makes the device return it.
        let gpio = line(offset)?;
        let events = self.gpio.events.as_ref().ok_or(ChipError::NotSupported)?;
        if let Some(masked) = events.lock().masked.get_mut(usize::from(gpio)) {
            *masked = true;
        }
        Ok(())
    }
}

/// Splits the device's names (`ngpio` NUL-terminated strings, empty for unnamed lines).
fn parse_names(bytes: &[u8], ngpio: u16) -> Vec<Option<String>> {
    let mut names: Vec<Option<String>> = bytes
        .split(|&b| b == 0)
        .take(usize::from(ngpio))
        .map(|name| {
            (!name.is_empty())
                .then(|| String::from_utf8_lossy(name).into_owned())
                .filter(|n| n.chars().all(|c| !c.is_control()))
        })
        .collect();
    names.resize(usize::from(ngpio), None);
    names
}

fn config_u32(device: &VirtioDevice, offset: usize, bytes: usize) -> Option<u32> {
    let mut raw = [0u8; 4];
    device
        .read_config(offset, &mut raw[..bytes])
        .then(|| u32::from_le_bytes(raw))
}

struct VirtioGpioDriver;

impl Driver for VirtioGpioDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let device = crate::drivers::virtio::device(&name).ok_or(Errno::ENODEV)?;
        ctx.require_supplier(device.parent())?;
        let ngpio = config_u32(&device, 0, 2).unwrap_or(0);
        let names_size = config_u32(&device, 4, 4).unwrap_or(0) as usize;
        if ngpio == 0 || ngpio > u32::from(MAX_LINES) {
            pr_err!("{name}: {DRIVER}: {ngpio} lines (this driver takes 1..={MAX_LINES})");
            return Err(Errno::EINVAL.into());
        }
        let ngpio = ngpio as u16;
        let max = device.queue_max(0);
        if max == 0 {
            pr_err!("{name}: {DRIVER}: the device has no request queue");
            return Err(Errno::ENODEV.into());
        }
        let event_idx = device.device_features() & VIRTIO_F_RING_EVENT_IDX != 0;
        let with_irq =
            device.device_features() & VIRTIO_GPIO_F_IRQ != 0 && device.queue_max(1) >= 2;
        let devres = ctx.devres();
        let requests = alloc_queue(devres, REQUEST_QUEUE_SIZE, max, event_idx)?;
        let mut layouts = vec![*requests.layout()];
        let response_cap = if names_size <= MAX_NAMES {
            1 + names_size.max(1)
        } else {
            2
        };
        let request_buffer = devm::alloc_coherent(devres, RESPONSE_AT + response_cap)?;
        let request_bus = request_buffer
            .try_access()
            .map(|b| b.bus_address())
            .ok_or(Errno::ENOMEM)?;
        let (events, event_buffer) = if with_irq {
            let queue: SplitQueue<DmaQueueMemory, u16> =
                alloc_queue(devres, EVENT_QUEUE_SIZE, device.queue_max(1), event_idx)?;
            layouts.push(*queue.layout());
            // Lines beyond what the queue holds (two descriptors each) cannot interrupt.
            let irq_lines = usize::from(ngpio).min(usize::from(queue.layout().size() / 2));
            let buffer = devm::alloc_coherent(devres, irq_lines * EVENT_SLOT)?;
            let bus = buffer
                .try_access()
                .map(|b| b.bus_address())
                .ok_or(Errno::ENOMEM)?;
            (
                Some(IrqSafeLock::new(Events {
                    queue,
                    outstanding: vec![false; irq_lines],
                    triggers: vec![IrqType::None; irq_lines],
                    masked: vec![true; irq_lines],
                })),
                Some((buffer, bus)),
            )
        } else {
            (None, None)
        };
        // Released after the interrupt is freed and before the rings and buffers: the device
        // stops writing to them before they go back to the allocator.
        let for_reset = Arc::clone(&device);
        devres.add_action(alloc::format!("{name}: reset device"), move || {
            for_reset.reset();
        });
        let gpio = Arc::new(VirtioGpio {
            device: Arc::clone(&device),
            requests: IrqSafeLock::new(requests),
            request_lock: Mutex::named("virtio_gpio::request", ()),
            request_buffer,
            request_bus,
            response_cap,
            answered: Completion::new(),
            events,
            event_buffer,
            sink: IrqSafeLock::new(None),
            ngpio,
            parent: alloc::format!("virtio/{name}"),
            state: AtomicU8::new(RUNNING),
        });
        device.request_irq(devres, Arc::clone(&gpio) as Arc<dyn VirtioCallbacks>)?;
        let features = device
            .initialize(DRIVER_FEATURES, &layouts)
            .map_err(|error| {
                pr_err!("{name}: {DRIVER}: initialisation failed: {error}");
                Errno::EIO
            })?;
        if (features & VIRTIO_GPIO_F_IRQ != 0) != with_irq {
            pr_err!("{name}: {DRIVER}: VIRTIO_GPIO_F_IRQ negotiated differently than offered");
            device.set_failed();
            return Err(Errno::EIO.into());
        }
        let names = if names_size > 0 && names_size <= MAX_NAMES {
            match gpio.transact(MSG_GET_NAMES, 0, 0, 1 + names_size) {
                Ok(response) => parse_names(&response[1..], ngpio),
                Err(error) => {
                    pr_err!("{name}: {DRIVER}: GET_NAMES: {error}; lines unnamed");
                    vec![None; usize::from(ngpio)]
                }
            }
        } else {
            vec![None; usize::from(ngpio)]
        };
        let chip = Chip {
            gpio: Arc::clone(&gpio),
            names,
        };
        let for_sink = Arc::clone(&gpio);
        devres
            .acquire(|| {
                let registration = ChipRegistration::new(&super::GPIO, Box::new(chip), None)
                    .map_err(|error| {
                        super::registration_failed(&for_sink.parent, &error);
                        Errno::EBUSY
                    })?;
                *for_sink.sink.lock() = Some(registration.handle().event_sink());
                Ok::<_, Errno>(registration)
            })
            .map_err(ProbeError::from)?;
        printk!(
            "{name}: {DRIVER}: {ngpio} lines{}",
            if with_irq { ", interrupts" } else { "" }
        );
        ctx.set_drvdata(Box::new(gpio));
        Ok(())
    }

    fn remove(&self, ctx: &mut RemoveContext<'_>) {
        let Some(gpio) = ctx.drvdata::<Arc<VirtioGpio>>().cloned() else {
            return;
        };
        gpio.state.store(REMOVED, Ordering::Release);
        gpio.answered.complete();
        // The sink refers to the chip's registry entry, which refers to the chip: let go.
        *gpio.sink.lock() = None;
        gpio.device.reset();
    }
}

/// Registers the driver on the `virtio` bus.
pub fn register() {
    if let Err(error) = base::register_driver(DriverDesc::new(
        "virtio",
        DRIVER,
        vec![VirtioMatchId::device(VIRTIO_ID_GPIO)],
        VirtioGpioDriver,
    )) {
        pr_err!("{DRIVER}: cannot register: {error}");
    }
}
