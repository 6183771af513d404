//! The vhost-user side: vhost-user-backend's `VhostUserBackend` over the shared [`Gpio`] chip.
//! Pops descriptor chains, hands their bytes to lull-virtio-gpio, writes back what it returns.

use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use lull_virtio_gpio::{EventCompletion, EVENT_QUEUE, REQUEST_QUEUE};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::gpio::{Gpio, State};

/// Guest memory as the back-end crate hands it over.
pub type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Two queues: requests and events.
pub const NUM_QUEUES: usize = 2;
/// QEMU's vhost-user-gpio creates both queues with 256 entries.
pub const QUEUE_SIZE: usize = 256;
/// The epoll id of the control channel's wake-up (0 and 1 are the queues, 2 the exit event).
pub const WAKE_EVENT: u64 = NUM_QUEUES as u64 + 1;
/// A writable buffer of a chain: guest address and length.
type Buffer = (GuestAddress, u32);

/// More readable bytes than any request has: the rest is not read (the request is refused).
const MAX_READ: usize = 64;

const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// One connection's back-end.
pub struct GpioBackend {
    gpio: Arc<Gpio>,
    mem: RwLock<Option<Memory>>,
    event_idx: RwLock<bool>,
    /// Whether the front-end asked anything (GET_FEATURES or GET_PROTOCOL_FEATURES, which
    /// every vhost-user front-end sends first): a connection that hangs up without a request
    /// was someone checking whether the socket is served, not a front-end.
    asked: AtomicBool,
}

impl GpioBackend {
    /// A back-end for `gpio`.
    pub fn new(gpio: Arc<Gpio>) -> Self {
        Self {
            gpio,
            mem: RwLock::new(None),
            event_idx: RwLock::new(false),
            asked: AtomicBool::new(false),
        }
    }

    /// Whether this connection's peer sent a request (see the field).
    pub fn was_asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed)
    }

    fn memory(&self) -> Option<Memory> {
        self.mem.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn event_idx(&self) -> bool {
        *self.event_idx.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `process` over the queue, with notifications off meanwhile under EVENT_IDX (and
    /// again if the guest added buffers as they were re-enabled).
    fn drain(
        &self,
        vring: &VringRwLock,
        mut process: impl FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        if !self.event_idx() {
            return process();
        }
        loop {
            vring.disable_notification().map_err(queue_error)?;
            process()?;
            if !vring.enable_notification().map_err(queue_error)? {
                return Ok(());
            }
        }
    }

    fn process_requests(&self, vrings: &[VringRwLock]) -> io::Result<()> {
        let (Some(requests), Some(events), Some(mem)) = (
            vrings.get(usize::from(REQUEST_QUEUE)),
            vrings.get(usize::from(EVENT_QUEUE)),
            self.memory(),
        ) else {
            return Ok(());
        };
        let mem = mem.memory();
        let log = &self.gpio.log;
        let chains = pop_all(requests, &mem)?;
        if chains.is_empty() {
            return Ok(());
        }
        let mut completions = Vec::new();
        {
            let mut state = self.gpio.lock();
            for chain in chains {
                let head = chain.head_index();
                let written = match split_chain(&mem, chain) {
                    Err(why) => {
                        log.line(format_args!("request (head {head}) refused: {why}"));
                        0
                    }
                    Ok((readable, writable)) => {
                        let len = writable.iter().map(|&(_, l)| l as usize).sum();
                        let result = state.device.handle_request(&readable, len);
                        self.gpio
                            .log_request(&state.device, readable.len(), len, &result);
                        completions.extend(result.events);
                        match write_scattered(&mem, &writable, &result.response) {
                            Ok(n) => n,
                            Err(why) => {
                                log.line(format_args!("request (head {head}): {why}"));
                                0
                            }
                        }
                    }
                };
                add_used(log, requests, head, written);
            }
            if !completions.is_empty() {
                self.deliver(&mut state, events, &mem, completions)?;
            }
        }
        signal(requests)
    }

    fn process_events(&self, vrings: &[VringRwLock]) -> io::Result<()> {
        let (Some(events), Some(mem)) = (vrings.get(usize::from(EVENT_QUEUE)), self.memory())
        else {
            return Ok(());
        };
        let mem = mem.memory();
        let log = &self.gpio.log;
        let ring = events.get_ref().get_queue().desc_table();
        let chains = pop_all(events, &mem)?;
        let mut state = self.gpio.lock();
        if state.event_ring.is_some_and(|r| r != ring) && !state.event_buffers.is_empty() {
            // A new ring while we hold buffers of the old one: the guest reset the device
            // (QEMU stops the rings for a pause too, but then they come back where they were).
            let features = state.acked_features;
            drop(state);
            self.gpio
                .reset("the event queue moved: the guest reset the device");
            state = self.gpio.lock();
            state.acked_features = features;
            state.device.ack_features(features);
        }
        state.event_ring = Some(ring);
        let mut used = false;
        for chain in chains {
            let head = chain.head_index();
            match split_chain(&mem, chain) {
                Ok((readable, writable)) if !writable.is_empty() => {
                    let gpio = readable.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
                    match state.device.queue_event_buffer(head, &readable) {
                        None => {
                            let line = self.gpio.describe(&state.device, gpio.unwrap_or(0));
                            log.line(format_args!("event buffer {head}: line {line} unmasked"));
                            state.event_buffers.insert(head, writable[0].0);
                        }
                        Some(completion) => {
                            complete(
                                log,
                                &self.gpio,
                                &state,
                                events,
                                &mem,
                                writable[0].0,
                                completion,
                            );
                            used = true;
                        }
                    }
                }
                Ok(_) => {
                    log.line(format_args!(
                        "event buffer {head} refused: no writable byte"
                    ));
                    add_used(log, events, head, 0);
                    used = true;
                }
                Err(why) => {
                    log.line(format_args!("event buffer {head} refused: {why}"));
                    add_used(log, events, head, 0);
                    used = true;
                }
            }
        }
        let pending = std::mem::take(&mut state.pending);
        if !pending.is_empty() {
            self.deliver(&mut state, events, &mem, pending)?;
        } else if used {
            signal(events)?;
        }
        Ok(())
    }

    /// Completes event buffers the device released (and signals the event queue).
    fn deliver(
        &self,
        state: &mut State,
        events: &VringRwLock,
        mem: &GuestMemoryMmap,
        completions: Vec<EventCompletion>,
    ) -> io::Result<()> {
        if !events.get_ref().get_queue().ready() {
            // Stopped (a pause): deliver when it comes back.
            state.pending.extend(completions);
            return Ok(());
        }
        for completion in completions {
            match state.event_buffers.remove(&completion.head) {
                Some(status) => complete(
                    &self.gpio.log,
                    &self.gpio,
                    state,
                    events,
                    mem,
                    status,
                    completion,
                ),
                None => self.gpio.log.line(format_args!(
                    "event buffer {} is not one the device holds: dropped",
                    completion.head
                )),
            }
        }
        signal(events)
    }
}

/// Writes an event buffer's status byte and puts it on the used ring.
fn complete(
    log: &crate::log::Log,
    gpio: &Gpio,
    state: &State,
    events: &VringRwLock,
    mem: &GuestMemoryMmap,
    status: GuestAddress,
    completion: EventCompletion,
) {
    let len = match mem.write_slice(&[completion.status], status) {
        Ok(()) => 1,
        Err(e) => {
            log.line(format_args!("event buffer {}: {e}", completion.head));
            0
        }
    };
    gpio.log_event(&state.device, &completion);
    add_used(log, events, completion.head, len);
}

fn add_used(log: &crate::log::Log, vring: &VringRwLock, head: u16, len: u32) {
    if let Err(e) = vring.add_used(head, len) {
        log.line(format_args!("used ring: buffer {head}: {e}"));
    }
}

fn signal(vring: &VringRwLock) -> io::Result<()> {
    if vring.needs_notification().map_err(queue_error)? {
        vring.signal_used_queue()?;
    }
    Ok(())
}

fn queue_error(e: virtio_queue::Error) -> io::Error {
    io::Error::other(format!("virtqueue: {e}"))
}

/// Every chain the guest made available.
fn pop_all<M>(vring: &VringRwLock, mem: &M) -> io::Result<Vec<DescriptorChain<M>>>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    if !queue.ready() {
        return Ok(Vec::new());
    }
    Ok(queue.iter(mem.clone()).map_err(queue_error)?.collect())
}

/// A chain's readable bytes (at most [`MAX_READ`] of them) and its writable buffers. Readable
/// descriptors must come first (virtio 1.2, 2.7.4.2).
fn split_chain<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> Result<(Vec<u8>, Vec<Buffer>), String>
where
    M: Deref<Target = GuestMemoryMmap>,
{
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for descriptor in chain {
        if descriptor.is_write_only() {
            writable.push((descriptor.addr(), descriptor.len()));
            continue;
        }
        if !writable.is_empty() {
            return Err("a readable descriptor after a writable one".into());
        }
        let take = (descriptor.len() as usize).min(MAX_READ - readable.len());
        let start = readable.len();
        readable.resize(start + take, 0);
        mem.read_slice(&mut readable[start..], descriptor.addr())
            .map_err(|e| format!("readable descriptor at {:#x}: {e}", descriptor.addr().0))?;
    }
    Ok((readable, writable))
}

/// Writes `bytes` across the writable buffers; the count written.
fn write_scattered(
    mem: &GuestMemoryMmap,
    writable: &[Buffer],
    mut bytes: &[u8],
) -> Result<u32, String> {
    let mut written = 0u32;
    for &(addr, len) in writable {
        if bytes.is_empty() {
            break;
        }
        let n = bytes.len().min(len as usize);
        mem.write_slice(&bytes[..n], addr)
            .map_err(|e| format!("writable descriptor at {:#x}: {e}", addr.0))?;
        bytes = &bytes[n..];
        written += n as u32;
    }
    Ok(written)
}

impl VhostUserBackend for GpioBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.asked.store(true, Ordering::Relaxed);
        let features = self.gpio.lock().device.device_features()
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        self.gpio
            .log
            .line(format_args!("GET_FEATURES: {features:#x}"));
        features
    }

    fn acked_features(&self, features: u64) {
        let mut state = self.gpio.lock();
        state.acked_features = features;
        state.device.ack_features(features);
        self.gpio
            .log
            .line(format_args!("SET_FEATURES {features:#x}"));
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.asked.store(true, Ordering::Relaxed);
        // CONFIG: QEMU reads the config space with GET_CONFIG at realize (and refuses a
        // back-end without it). MQ: GET_QUEUE_NUM tells QEMU there are 2 queues.
        // REPLY_ACK: QEMU can wait for the outcome of each message.
        let features = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        self.gpio
            .log
            .line(format_args!("GET_PROTOCOL_FEATURES: {features:?}"));
        features
    }

    fn reset_device(&self) {
        self.gpio.reset("RESET_DEVICE");
    }

    fn set_event_idx(&self, enabled: bool) {
        *self.event_idx.write().unwrap_or_else(|p| p.into_inner()) = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // The message's payload is at most 256 bytes; never allocate what the front-end asks.
        let mut data = vec![0; (size as usize).min(256)];
        self.gpio
            .lock()
            .device
            .read_config(u64::from(offset), &mut data);
        self.gpio.log.line(format_args!(
            "GET_CONFIG offset {offset} size {size}: {data:02x?}"
        ));
        data
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.gpio.log.line(format_args!(
            "SET_CONFIG offset {offset} size {} refused: the config space is read-only",
            buf.len()
        ));
        Err(io::Error::other("virtio-gpio's config space is read-only"))
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        let regions = mem.memory().num_regions();
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        self.gpio
            .log
            .line(format_args!("SET_MEM_TABLE: {regions} region(s)"));
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        self.gpio
            .log
            .line(format_args!("GET_VRING_BASE {queue_index}: ring stopped"));
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let result = match u64::from(device_event) {
            0 => {
                let requests = &vrings[usize::from(REQUEST_QUEUE)];
                self.drain(requests, || self.process_requests(vrings))
            }
            1 => {
                let events = &vrings[usize::from(EVENT_QUEUE)];
                self.drain(events, || self.process_events(vrings))
            }
            WAKE_EVENT => {
                let _ = self.gpio.wake_consumer().consume();
                // Delivers the pending completions (and takes any new buffers).
                self.process_events(vrings)
            }
            other => {
                self.gpio.log.line(format_args!("unexpected event {other}"));
                Ok(())
            }
        };
        if let Err(e) = &result {
            // The guest cannot make this thread stop: say what happened and go on.
            self.gpio
                .log
                .line(format_args!("queue {device_event}: {e}"));
        }
        Ok(())
    }
}
