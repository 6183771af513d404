//! The virtio-mmio transport, version 2 (virtio 1.2 §4.2): the register window of one device,
//! its device status state machine, feature negotiation, queue set-up, notifications and
//! interrupt status. The device-specific part is a [`Backend`].
//!
//! Rules kept here (the guest is not trusted):
//! - registers are 32-bit, naturally aligned; other accesses read as 0 and are ignored;
//! - the driver may only add status bits (0 resets); FEATURES_OK sticks only if the driver
//!   accepted VIRTIO_F_VERSION_1 and nothing the device did not offer;
//! - features are written only between DRIVER and FEATURES_OK, queue registers only after
//!   FEATURES_OK and while the selected queue is not ready;
//! - at DRIVER_OK every ready queue's rings must lie in guest RAM;
//! - a protocol violation (bad ring, bad chain) sets DEVICE_NEEDS_RESET and raises a
//!   configuration-change interrupt, logging one line; the device then does nothing until
//!   the driver resets it. Other devices and the VMM are unaffected.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::vstate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::queue::{check_queue, ChainError};
use super::{Backend, BackendEvent, BackendState, Interrupt};

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio register layout.
pub const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the guest ("LULL").
pub const VENDOR_ID: u32 = 0x4c55_4c4c;
/// Size of one device's register window.
pub const WINDOW_BYTES: u64 = 0x1000;

/// A virtio-mmio device: transport registers, queues and the backend.
pub struct MmioTransport {
    /// For log lines: `virtio-blk0 at 0xd0000000`.
    pub name: String,
    pub backend: Backend,
    queues: Vec<Queue>,
    /// One per queue: written on QueueNotify (by KVM through an ioeventfd, or by
    /// [`MmioTransport::write`] when the write exits to the VMM). The worker waits on them.
    queue_events: Vec<EventFd>,
    memory: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    interrupt_status: u32,
    config_generation: u32,
    /// Set while the VM is paused: no queue is processed, kicks are remembered in `pending`.
    paused: bool,
    pending: u64,
    /// Set (without the device's lock) by a pause that waits for the lock: the backend
    /// stops between requests instead of serving every one the guest has queued, and the
    /// rest stay in the avail ring (served at resume, or after a restore).
    pub preempt: Arc<AtomicBool>,
    /// Why the device needs a reset (for tests and diagnostics).
    pub needs_reset_reason: Option<String>,
}

/// Saved form of a queue (`virtio_queue::QueueState`, which is not serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for SavedQueue {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<SavedQueue> for QueueState {
    fn from(q: SavedQueue) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// Saved form of a transport and its backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransportState {
    pub status: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub driver_features: u64,
    pub queue_select: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub queues: Vec<SavedQueue>,
    pub needs_reset_reason: Option<String>,
    pub backend: BackendState,
}

/// Why a transport could not be built or restored.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("creating an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("queue {index} of the snapshot is invalid: {reason}")]
    Queue { index: usize, reason: String },
    #[error("the snapshot has {found} queues for a device with {expected}")]
    QueueCount { found: usize, expected: usize },
}

fn has(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

impl MmioTransport {
    pub fn new(
        name: String,
        backend: Backend,
        memory: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
    ) -> Result<Self, TransportError> {
        let queues = backend
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("queue sizes are powers of two"))
            .collect::<Vec<_>>();
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name,
            backend,
            queues,
            queue_events,
            memory,
            interrupt,
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            interrupt_status: 0,
            config_generation: 0,
            paused: false,
            pending: 0,
            preempt: Arc::new(AtomicBool::new(false)),
            needs_reset_reason: None,
        })
    }

    /// Features offered: the backend's plus VERSION_1 and EVENT_IDX.
    pub fn device_features(&self) -> u64 {
        self.backend.features() | (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }

    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn running(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            let config = self.backend.config();
            let start = (offset - u64::from(VIRTIO_MMIO_CONFIG)) as usize;
            if let Some(end) = start.checked_add(data.len()) {
                if end <= config.len() {
                    data.copy_from_slice(&config[start..end]);
                }
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            return;
        }
        let queue = self.queues.get(self.queue_select as usize);
        let value = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.backend.device_id(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status,
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX, // no shared memory
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            // Neither device has writable configuration fields it offers.
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        let value = u32::from_le_bytes(bytes);
        let setting_features = self.status & VIRTIO_CONFIG_S_DRIVER != 0
            && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
        let queue_setup = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
            && self
                .queues
                .get(self.queue_select as usize)
                .is_some_and(|q| !q.ready());
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES if setting_features => match self.driver_features_select {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM if queue_setup => {
                if let Some(queue) = self.selected_queue() {
                    // An invalid size (0, not a power of 2, over the maximum) is not taken;
                    // the queue keeps its maximum.
                    let _ = u16::try_from(value)
                        .ok()
                        .map(|size| queue.try_set_size(size));
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW if queue_setup => {
                self.set_queue_address(|q, v| q.set_desc_table_address(Some(v), None), value)
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH if queue_setup => {
                self.set_queue_address(|q, v| q.set_desc_table_address(None, Some(v)), value)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if queue_setup => {
                self.set_queue_address(|q, v| q.set_avail_ring_address(Some(v), None), value)
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if queue_setup => {
                self.set_queue_address(|q, v| q.set_avail_ring_address(None, Some(v)), value)
            }
            VIRTIO_MMIO_QUEUE_USED_LOW if queue_setup => {
                self.set_queue_address(|q, v| q.set_used_ring_address(Some(v), None), value)
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH if queue_setup => {
                self.set_queue_address(|q, v| q.set_used_ring_address(None, Some(v)), value)
            }
            VIRTIO_MMIO_QUEUE_READY => {
                let allowed = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
                    && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0;
                let event_idx = has(self.driver_features, VIRTIO_RING_F_EVENT_IDX);
                if let (true, Some(queue)) = (allowed, self.selected_queue()) {
                    queue.set_event_idx(event_idx);
                    queue.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                // Reached only when the write was not taken by an ioeventfd: hand it to the
                // worker the same way, so device work never runs on a vCPU thread.
                if let Some(event) = self.queue_events.get(value as usize) {
                    let _ = event.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status &= !value,
            VIRTIO_MMIO_STATUS => self.write_status(value),
            _ => {}
        }
    }

    fn set_queue_address(&mut self, set: impl FnOnce(&mut Queue, u32), value: u32) {
        if let Some(queue) = self.selected_queue() {
            set(queue, value);
        }
    }

    /// Whether the driver's features are acceptable: VERSION_1, nothing not offered.
    fn features_acceptable(&self) -> bool {
        has(self.driver_features, VIRTIO_F_VERSION_1)
            && self.driver_features & !self.device_features() == 0
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver sets bits one step at a time; it never clears one (only a reset does)
        // and never sets DEVICE_NEEDS_RESET, which is the device's.
        let value = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let current = self.status & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if current & !value != 0 {
            return;
        }
        let mut value = value;
        let added = value & !current;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && (value & VIRTIO_CONFIG_S_DRIVER == 0 || !self.features_acceptable())
        {
            value &= !VIRTIO_CONFIG_S_FEATURES_OK;
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && value & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            value &= !VIRTIO_CONFIG_S_DRIVER_OK;
        }
        self.status = value | (self.status & VIRTIO_CONFIG_S_NEEDS_RESET);
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 && value & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// DRIVER_OK: every ready queue must be usable; then look at the queues once (the driver
    /// may have made buffers available before it said DRIVER_OK).
    fn activate(&mut self) {
        for (index, queue) in self.queues.iter().enumerate() {
            if queue.ready() && check_queue(queue, &self.memory).is_err() {
                self.needs_reset(&format!("queue {index}: {}", ChainError::QueueInvalid));
                return;
            }
        }
        self.backend.activate(self.driver_features);
        for event in &self.queue_events {
            let _ = event.write(1);
        }
    }

    /// Device reset (status 0 written): back to the power-on state; the backend keeps its
    /// host resources (file, TAP).
    pub fn reset(&mut self) {
        self.status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.interrupt_status = 0;
        self.pending = 0;
        self.needs_reset_reason = None;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.backend.reset();
    }

    /// The guest broke the protocol: DEVICE_NEEDS_RESET, a configuration-change interrupt
    /// and one log line (once per reset cycle).
    pub fn needs_reset(&mut self, reason: &str) {
        if self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return;
        }
        eprintln!(
            "lull-vmm: {}: the guest broke the virtio protocol ({reason}); device needs reset",
            self.name
        );
        self.needs_reset_reason = Some(reason.to_string());
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            self.config_generation = self.config_generation.wrapping_add(1);
            self.interrupt_status |= VIRTIO_MMIO_INT_CONFIG;
            self.interrupt.trigger();
        }
    }

    /// Work for the device: a queue was notified or the backend's host side is ready.
    pub fn handle(&mut self, event: BackendEvent) {
        if self.paused {
            self.pending |= match event {
                BackendEvent::Queue(index) => 1 << index.min(62),
                BackendEvent::Host => 1 << 63,
            };
            return;
        }
        if !self.running() {
            return;
        }
        if let BackendEvent::Queue(index) = event {
            match self.queues.get(index) {
                Some(queue) if queue.ready() => {
                    if let Err(error) = check_queue(queue, &self.memory) {
                        self.needs_reset(&format!("queue {index}: {error}"));
                        return;
                    }
                }
                _ => return,
            }
        }
        let result = self
            .backend
            .process(event, &mut self.queues, &self.memory, &self.preempt);
        match result {
            Ok(used) => self.signal_used(used),
            Err(error) => self.needs_reset(&error.to_string()),
        }
    }

    /// After used-ring updates of the queues in `used` (a bitmask): interrupt unless the
    /// driver suppressed it (EVENT_IDX's used_event, or VIRTQ_AVAIL_F_NO_INTERRUPT).
    fn signal_used(&mut self, used: u64) {
        let mut notify = false;
        for (index, queue) in self.queues.iter_mut().enumerate() {
            if used & (1 << index) == 0 {
                continue;
            }
            // A ring that cannot be read means the guest moved it out of RAM under us: the
            // next access to it fails and puts the device into needs-reset; interrupt now.
            notify |= queue.needs_notification(&self.memory).unwrap_or(true);
        }
        if notify {
            self.interrupt_status |= VIRTIO_MMIO_INT_VRING;
            self.interrupt.trigger();
        }
    }

    /// The VM pauses: stop processing (the caller holds the lock, so nothing is in flight
    /// once this returns).
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// The VM resumes: process what was kicked meanwhile, and every queue once (a pause may
    /// have stopped the backend between requests, leaving some queued).
    pub fn resume(&mut self) {
        self.paused = false;
        let pending = std::mem::take(&mut self.pending);
        for index in 0..self.queues.len() {
            if pending & (1 << index) != 0 || self.queues[index].ready() {
                self.handle(BackendEvent::Queue(index));
            }
        }
        if pending & (1 << 63) != 0 {
            self.handle(BackendEvent::Host);
        }
    }

    /// After a restore: look at every queue once (kicks that arrived before the snapshot
    /// but were not processed are not in the snapshot), re-raise a pending interrupt.
    pub fn kick_all(&self) {
        for event in &self.queue_events {
            let _ = event.write(1);
        }
        if self.interrupt_status != 0 {
            self.interrupt.trigger();
        }
    }

    /// Requests the guest has made available on each queue that the device has not taken
    /// yet (avail index minus the device's next): what a restore serves first.
    pub fn queued(&self) -> Vec<u16> {
        self.queues
            .iter()
            .map(|queue| {
                if !queue.ready() {
                    return 0;
                }
                queue
                    .avail_idx(&self.memory, std::sync::atomic::Ordering::Acquire)
                    .map_or(0, |avail| avail.0.wrapping_sub(queue.next_avail()))
            })
            .collect()
    }

    pub fn save(&self) -> TransportState {
        TransportState {
            status: self.status,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
            needs_reset_reason: self.needs_reset_reason.clone(),
            backend: self.backend.save(),
        }
    }

    /// Applies `state` to a transport freshly built around the restored backend.
    pub fn apply(&mut self, state: &TransportState) -> Result<(), TransportError> {
        if state.queues.len() != self.queues.len() {
            return Err(TransportError::QueueCount {
                found: state.queues.len(),
                expected: self.queues.len(),
            });
        }
        for (index, (queue, saved)) in self.queues.iter_mut().zip(&state.queues).enumerate() {
            *queue =
                Queue::try_from(QueueState::from(*saved)).map_err(|e| TransportError::Queue {
                    index,
                    reason: e.to_string(),
                })?;
        }
        self.status = state.status;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.queue_select = state.queue_select;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        self.needs_reset_reason = state.needs_reset_reason.clone();
        Ok(())
    }

    /// The address of the QueueNotify register of the window at `base`.
    pub fn notify_address(base: u64) -> GuestAddress {
        GuestAddress(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY))
    }
}
