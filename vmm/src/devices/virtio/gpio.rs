//! virtio-gpio (virtio 1.2 §5.18) with simulated lines: queue 0 carries requests, queue 1
//! (with VIRTIO_GPIO_F_IRQ) the event buffers that unmask line interrupts.
//!
//! The device logic is lull-virtio-gpio's state machine and the chip around it (control
//! socket, timestamped log) is lull-gpio-sim's, both shared with lull-gpio-backend, so the
//! control socket speaks the same commands (`set LINE 0|1`, `pulse LINE`, `get LINE`, `dump`,
//! `help`) and the log has the same lines. This file is only the virtio-mmio side: chains are
//! popped and validated here, their bytes handed to the state machine, its answers written back.
//!
//! Wiring: an edge made on the control socket completes an event buffer inside the chip (its
//! `pending` list) and writes the chip's wake-up eventfd, which is this backend's host
//! descriptor: the device's worker thread wakes, writes the status bytes and puts the buffers
//! on the used ring. Nothing polls.
//!
//! Malformed chains (no readable request, no writable byte, over the size limit, any of
//! [`super::queue`]'s checks) are protocol violations: DEVICE_NEEDS_RESET. A well-formed chain
//! with a bad message is answered `VIRTIO_GPIO_STATUS_ERR` by the state machine.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use crate::vstate::memory::GuestMemoryMmap;
use lull_gpio_sim::gpio::Gpio as Chip;
use lull_gpio_sim::log::Log;
use lull_virtio_gpio::{
    EventCompletion, SavedDevice, SavedLine, VirtioGpioDevice, EVENT_QUEUE, REQUEST_LEN,
    REQUEST_QUEUE, VIRTIO_GPIO_F_IRQ, VIRTIO_ID_GPIO,
};
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::queue::{add_used, pop_chain, ChainError, Reader, Writer};

/// Descriptors per queue (as QEMU's vhost-user-gpio).
pub const QUEUE_SIZE: u16 = 256;
/// Largest event chain: `le16 gpio` and a status byte, with room for padding.
const MAX_EVENT_CHAIN_BYTES: u64 = 64;
/// Readable bytes looked at: any more than a request has makes it malformed anyway.
const MAX_READ: u64 = REQUEST_LEN as u64 + 1;

/// `--gpio lines=NAME,...[,control=PATH][,log=PATH]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpioConfig {
    /// One name per line (`""` unnamed).
    pub lines: Vec<String>,
    /// The control socket, if any.
    pub control: Option<PathBuf>,
    /// The log file; stderr without one.
    pub log: Option<PathBuf>,
}

/// Parses `--gpio lines=NAME,NAME,...|default[,control=PATH][,log=PATH]`: the names run from
/// `lines=` to the next `key=`; without `lines=` (`default`, or only `control=`/`log=`) the
/// chip has lull-gpio-backend's 8 lines.
pub fn parse_gpio(value: &str) -> Result<GpioConfig, String> {
    let (mut lines, mut control, mut log) = (None::<Vec<String>>, None, None);
    let mut in_lines = false;
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("lines", first)) => {
                if lines.is_some() {
                    return Err("lines= is given twice".into());
                }
                lines = Some(vec![first.to_string()]);
                in_lines = true;
            }
            Some(("control", path)) if !path.is_empty() => {
                control = Some(PathBuf::from(path));
                in_lines = false;
            }
            Some(("log", path)) if !path.is_empty() => {
                log = Some(PathBuf::from(path));
                in_lines = false;
            }
            Some((key, _)) if ["control", "log"].contains(&key) => {
                return Err(format!("{key}= needs a path"))
            }
            Some((key, _)) => {
                return Err(format!(
                    "'{key}=' is not lines=NAME,..., control=PATH or log=PATH \
                     (line names cannot contain '=')"
                ))
            }
            None if in_lines => lines.as_mut().expect("in lines=").push(part.to_string()),
            None if part == "default" && lines.is_none() => {}
            None => {
                return Err(format!(
                    "'{part}' is not lines=NAME,..., control=PATH or log=PATH"
                ))
            }
        }
    }
    let lines = lines.unwrap_or_else(|| {
        lull_gpio_sim::DEFAULT_LINES
            .iter()
            .map(|name| name.to_string())
            .collect()
    });
    let names: Vec<&str> = lines.iter().map(String::as_str).collect();
    VirtioGpioDevice::new(&names).map_err(|e| format!("lines=: {e}"))?;
    Ok(GpioConfig {
        lines,
        control,
        log,
    })
}

/// Why the GPIO device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("--gpio log={path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("--gpio: {0}")]
    Setup(String),
    #[error("saved virtio-gpio device: {0}")]
    Restore(String),
}

/// A virtio-gpio backend.
pub struct Gpio {
    chip: Arc<Chip>,
    config: GpioConfig,
    /// The control socket while this process serves it (see [`Gpio::release_host`]).
    control: Option<lull_gpio_sim::socket::ControlSocket>,
}

/// One line as saved (lull-virtio-gpio's [`SavedLine`], which is not serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpioLineState {
    pub name: Option<String>,
    pub direction: u8,
    pub output: bool,
    pub input: bool,
    pub irq_type: u8,
    pub buffer: Option<u16>,
    pub latched: bool,
}

/// Saved form: the configuration (the control socket and log are reopened on restore), the
/// state machine, the event buffers held (head and guest address of the status byte) and the
/// completions the control socket made that the worker had not delivered yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpioState {
    pub config: GpioConfig,
    pub lines: Vec<GpioLineState>,
    pub irq_negotiated: bool,
    pub acked_features: u64,
    pub event_buffers: Vec<(u16, u64)>,
    /// (head, gpio, status).
    pub pending: Vec<(u16, u16, u8)>,
}

impl Gpio {
    /// Builds the chip, opens the log and binds the control socket.
    pub fn open(config: &GpioConfig) -> Result<Self, GpioError> {
        let out: Box<dyn io::Write + Send> = match &config.log {
            Some(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| GpioError::Log {
                        path: path.clone(),
                        source,
                    })?,
            ),
            None => Box::new(io::stderr()),
        };
        let chip =
            Arc::new(Chip::new(&config.lines, Arc::new(Log::new(out))).map_err(GpioError::Setup)?);
        let mut gpio = Self {
            chip,
            config: config.clone(),
            control: None,
        };
        gpio.reacquire_host()?;
        Ok(gpio)
    }

    /// Closes the control socket and frees its path (a migration source, at the final pause:
    /// the destination binds the same path). Clients already connected stay connected here.
    pub fn release_host(&mut self) {
        if let Some(control) = self.control.take() {
            control.close();
            self.chip.log.line(format_args!(
                "control socket {} handed over",
                self.config
                    .control
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            ));
        }
    }

    /// Binds the control socket (again: a failed migration gives it back).
    pub fn reacquire_host(&mut self) -> Result<(), GpioError> {
        if let (Some(path), None) = (&self.config.control, &self.control) {
            self.control = Some(
                lull_gpio_sim::socket::spawn_closable_control_socket(
                    path,
                    "--gpio control=",
                    self.chip.clone(),
                )
                .map_err(GpioError::Setup)?,
            );
            self.chip
                .log
                .line(format_args!("control socket {}", path.display()));
        }
        Ok(())
    }

    /// The chip (tests drive inputs through it as the control socket does).
    pub fn chip(&self) -> &Arc<Chip> {
        &self.chip
    }

    /// The control socket's path while this process serves it (not after a migration
    /// source handed it over: the path is the destination's then, and this process must not
    /// remove it as it exits).
    pub fn control_socket(&self) -> Option<&std::path::Path> {
        self.control.as_ref().and(self.config.control.as_deref())
    }

    pub fn device_id(&self) -> u32 {
        VIRTIO_ID_GPIO
    }

    pub fn features(&self) -> u64 {
        self.chip.lock().device.device_features() & VIRTIO_GPIO_F_IRQ
    }

    pub fn config(&self) -> Vec<u8> {
        self.chip.lock().device.config().to_vec()
    }

    pub fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }

    /// The driver accepted `features` (DRIVER_OK).
    pub fn activate(&mut self, features: u64) {
        let mut state = self.chip.lock();
        state.acked_features = features;
        state.device.ack_features(features);
    }

    /// Device reset: lines back to their initial state, buffers forgotten (the driver owns
    /// them again); host-driven input levels stay.
    pub fn reset(&mut self) {
        self.chip.reset("the driver reset the device");
    }

    /// The control socket's wake-up, for the worker.
    pub fn host_fd(&self) -> Option<RawFd> {
        Some(self.chip.wake_consumer().as_raw_fd())
    }

    /// `3 lines (amp-enable, ...), control socket PATH`, for the log line.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} line(s) [{}]",
            self.config.lines.len(),
            self.config.lines.join(",")
        );
        if let Some(path) = &self.config.control {
            text.push_str(&format!(", control socket {}", path.display()));
        }
        if let Some(path) = &self.config.log {
            text.push_str(&format!(", log {}", path.display()));
        }
        text
    }

    /// Serves the request queue: every available chain, answered in order.
    pub fn process_requests(
        &mut self,
        queues: &mut [Queue],
        memory: &GuestMemoryMmap,
    ) -> Result<u64, ChainError> {
        let ring = |e: virtio_queue::Error| ChainError::Ring(e.to_string());
        let mut released = Vec::new();
        let mut used = false;
        {
            let Some(queue) = queues.get_mut(usize::from(REQUEST_QUEUE)) else {
                return Ok(0);
            };
            let mut state = self.chip.lock();
            let names = u64::from(u32::from_le_bytes(
                state.device.config()[4..8].try_into().expect("4 bytes"),
            ));
            let max_bytes = MAX_READ + 1 + names;
            loop {
                queue.disable_notification(memory).map_err(ring)?;
                while let Some(chain) = pop_chain(queue, memory, max_bytes)? {
                    let layout = |what| ChainError::Layout {
                        head: chain.head,
                        what,
                    };
                    if chain.readable.is_empty() {
                        return Err(layout("no device-readable request"));
                    }
                    if chain.writable_bytes() == 0 {
                        return Err(layout("no device-writable response buffer"));
                    }
                    let length = chain.readable_bytes().min(MAX_READ) as usize;
                    let mut request = vec![0u8; length];
                    if !Reader::new(memory, &chain.readable).read_exact(&mut request) {
                        return Err(ChainError::Ring("request unreadable".into()));
                    }
                    let writable = chain.writable_bytes() as usize;
                    let result = state.device.handle_request(&request, writable);
                    let readable = usize::try_from(chain.readable_bytes()).unwrap_or(usize::MAX);
                    self.chip
                        .log_request(&state.device, readable, writable, &result);
                    let mut writer = Writer::new(memory, &chain.writable);
                    if !writer.write_all(&result.response) {
                        return Err(ChainError::Ring("response unwritable".into()));
                    }
                    add_used(queue, memory, chain.head, writer.written() as u32)?;
                    released.extend(result.events);
                    used = true;
                }
                if !queue.enable_notification(memory).map_err(ring)? {
                    break;
                }
            }
            state.pending.append(&mut released);
        }
        let events = self.deliver(queues, memory)?;
        Ok(u64::from(used) << REQUEST_QUEUE | events)
    }

    /// Takes the event buffers the driver queued (each unmasks a line's interrupt), then
    /// delivers what is pending.
    pub fn process_events(
        &mut self,
        queues: &mut [Queue],
        memory: &GuestMemoryMmap,
    ) -> Result<u64, ChainError> {
        let ring = |e: virtio_queue::Error| ChainError::Ring(e.to_string());
        let Some(queue) = queues.get_mut(usize::from(EVENT_QUEUE)) else {
            return Ok(0);
        };
        if !queue.ready() {
            return Ok(0);
        }
        {
            let mut state = self.chip.lock();
            loop {
                queue.disable_notification(memory).map_err(ring)?;
                while let Some(chain) = pop_chain(queue, memory, MAX_EVENT_CHAIN_BYTES)? {
                    let layout = |what| ChainError::Layout {
                        head: chain.head,
                        what,
                    };
                    if chain.readable.is_empty() {
                        return Err(layout("no device-readable line number"));
                    }
                    let status = chain
                        .writable
                        .iter()
                        .find(|b| b.len > 0)
                        .ok_or(layout("no device-writable status byte"))?
                        .address;
                    let length = chain.readable_bytes().min(2) as usize;
                    let mut request = vec![0u8; length];
                    if !Reader::new(memory, &chain.readable).read_exact(&mut request) {
                        return Err(ChainError::Ring("event buffer unreadable".into()));
                    }
                    // A second buffer under a head the device holds cannot happen with a
                    // driver that follows the protocol (the head is in flight): refuse it.
                    if state.event_buffers.contains_key(&chain.head) {
                        return Err(layout("head already held by the device"));
                    }
                    state.event_buffers.insert(chain.head, status);
                    match state.device.queue_event_buffer(chain.head, &request) {
                        None => {
                            let gpio = request
                                .get(..2)
                                .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
                            let line = self.chip.describe(&state.device, gpio);
                            self.chip.log.line(format_args!(
                                "event buffer {}: line {line} unmasked",
                                chain.head
                            ));
                        }
                        Some(completion) => state.pending.push(completion),
                    }
                }
                if !queue.enable_notification(memory).map_err(ring)? {
                    break;
                }
            }
        }
        self.deliver(queues, memory)
    }

    /// Completes the event buffers the chip released (edges from the control socket, a
    /// trigger disabled, buffers answered at once): status byte, used ring. Returns the
    /// event queue's bit if any was used.
    pub fn deliver(
        &mut self,
        queues: &mut [Queue],
        memory: &GuestMemoryMmap,
    ) -> Result<u64, ChainError> {
        let _ = self.chip.wake_consumer().consume();
        let Some(queue) = queues.get_mut(usize::from(EVENT_QUEUE)) else {
            return Ok(0);
        };
        let mut state = self.chip.lock();
        if state.pending.is_empty() || !queue.ready() {
            return Ok(0);
        }
        let pending = std::mem::take(&mut state.pending);
        let mut used = false;
        for completion in pending {
            let Some(status) = state.event_buffers.remove(&completion.head) else {
                self.chip.log.line(format_args!(
                    "event buffer {} is not one the device holds: dropped",
                    completion.head
                ));
                continue;
            };
            memory
                .write_obj(completion.status, status)
                .map_err(|e| ChainError::Ring(e.to_string()))?;
            self.chip.log_event(&state.device, &completion);
            add_used(queue, memory, completion.head, 1)?;
            used = true;
        }
        Ok(u64::from(used) << EVENT_QUEUE)
    }

    pub fn save(&self) -> GpioState {
        let state = self.chip.lock();
        let saved = state.device.save();
        let mut event_buffers: Vec<(u16, u64)> = state
            .event_buffers
            .iter()
            .map(|(&head, address)| (head, address.0))
            .collect();
        event_buffers.sort_unstable();
        GpioState {
            config: self.config.clone(),
            lines: saved
                .lines
                .into_iter()
                .map(|line| GpioLineState {
                    name: line.name,
                    direction: line.direction,
                    output: line.output,
                    input: line.input,
                    irq_type: line.irq_type,
                    buffer: line.buffer,
                    latched: line.latched,
                })
                .collect(),
            irq_negotiated: saved.irq_negotiated,
            acked_features: state.acked_features,
            event_buffers,
            pending: state
                .pending
                .iter()
                .map(|c| (c.head, c.gpio, c.status))
                .collect(),
        }
    }

    /// Rebuilds the device (checked by lull-virtio-gpio as untrusted input), reopening its
    /// log and control socket.
    pub fn restore(state: &GpioState) -> Result<Self, GpioError> {
        let saved = SavedDevice {
            lines: state
                .lines
                .iter()
                .map(|line| SavedLine {
                    name: line.name.clone(),
                    direction: line.direction,
                    output: line.output,
                    input: line.input,
                    irq_type: line.irq_type,
                    buffer: line.buffer,
                    latched: line.latched,
                })
                .collect(),
            irq_negotiated: state.irq_negotiated,
        };
        let device =
            VirtioGpioDevice::restore(&saved).map_err(|e| GpioError::Restore(e.to_string()))?;
        let names = |lines: &[Option<String>]| -> Vec<String> {
            lines
                .iter()
                .map(|n| n.clone().unwrap_or_default())
                .collect()
        };
        let saved_names: Vec<Option<String>> = state.lines.iter().map(|l| l.name.clone()).collect();
        if names(&saved_names) != state.config.lines {
            return Err(GpioError::Restore(
                "the line names differ from the device's configuration".into(),
            ));
        }
        // Every buffer the device holds must have its status byte's address, and no more.
        let held: Vec<u16> = state.lines.iter().filter_map(|l| l.buffer).collect();
        let pending: Vec<u16> = state.pending.iter().map(|p| p.0).collect();
        let mut expected: Vec<u16> = held.iter().chain(&pending).copied().collect();
        expected.sort_unstable();
        let mut addressed: Vec<u16> = state.event_buffers.iter().map(|b| b.0).collect();
        addressed.sort_unstable();
        if expected.windows(2).any(|w| w[0] == w[1]) || expected != addressed {
            return Err(GpioError::Restore(
                "the event buffers held do not match the lines' state".into(),
            ));
        }
        let gpio = Self::open(&state.config)?;
        {
            let mut chip = gpio.chip.lock();
            chip.device = device;
            chip.acked_features = state.acked_features;
            chip.event_buffers = state
                .event_buffers
                .iter()
                .map(|&(head, address)| (head, GuestAddress(address)))
                .collect();
            chip.pending = state
                .pending
                .iter()
                .map(|&(head, gpio, status)| EventCompletion { head, gpio, status })
                .collect();
        }
        gpio.chip.log.line(format_args!(
            "restored from a snapshot: {} event buffer(s) held, {} completion(s) to deliver",
            state.event_buffers.len() - state.pending.len(),
            state.pending.len()
        ));
        Ok(gpio)
    }
}
