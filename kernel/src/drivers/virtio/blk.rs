//! virtio-blk (virtio 1.2 §5.2, device type 2): the block front-end. One request queue; each
//! request is a chain of a 16-byte header (type, sector), the data (if any) and a status byte
//! the device writes. Capacity, block size and the largest request come from the device's
//! configuration space; flush (write-back cache), discard and read-only are used when offered.
//!
//! * Many requests in flight: up to a third of the queue's descriptors' worth of slots, each
//!   with its header and status in one coherent buffer; the block layer's buffer carries the
//!   data. What does not fit waits in a software queue and starts as completions free slots.
//! * Completions arrive through the transport's interrupt thread; nothing polls.
//! * A used element the queue does not believe, or DEVICE_NEEDS_RESET, fails the device: the
//!   log says why, every waiting and in-flight request gets an error, and nothing is submitted
//!   again until an unbind and bind reset it. Buffers of requests the device may still be
//!   writing stay referenced until the device has been reset.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use lull_devres::Revocable;
use lull_driver_core::{Driver, DriverDesc, Errno, ProbeContext, ProbeError, VirtioMatchId};
use lull_virtqueue::{Segment, SplitQueue, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};

use super::queue::{alloc_queue, DmaQueueMemory};
use super::{VirtioCallbacks, VirtioDevice};
use crate::arch::dma::DmaBuffer;
use crate::block::{self, BlockDriver, BlockError, DiskInfo, Op, Request};
use crate::drivers::base::{self, devm};
use crate::kernel::locking::IrqSafeLock;
use crate::{pr_err, printk};

/// The driver's name (`/sys/bus/virtio/drivers/virtio_blk`, as Linux's).
pub const DRIVER: &str = "virtio_blk";
const VIRTIO_ID_BLOCK: u32 = 2;

const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
const VIRTIO_BLK_F_RO: u64 = 1 << 5;
const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
const DRIVER_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_F_RING_EVENT_IDX
    | VIRTIO_BLK_F_SIZE_MAX
    | VIRTIO_BLK_F_RO
    | VIRTIO_BLK_F_BLK_SIZE
    | VIRTIO_BLK_F_FLUSH
    | VIRTIO_BLK_F_DISCARD;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_DISCARD: u32 = 11;
const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Configuration space offsets.
const CONFIG_CAPACITY: usize = 0;
const CONFIG_SIZE_MAX: usize = 8;
const CONFIG_BLK_SIZE: usize = 20;
const CONFIG_MAX_DISCARD_SECTORS: usize = 36;

/// Queue entries asked for (the device may offer fewer).
const QUEUE_SIZE: u16 = 256;
/// Descriptors one request takes at most (header, data, status).
const CHAIN: u16 = 3;
/// Per-slot bytes in the header buffer: header at 0, discard range at 16, status at 32.
const SLOT_BYTES: usize = 48;
const STATUS_AT: usize = 32;
const DISCARD_AT: usize = 16;

const RUNNING: u8 = 0;
const FAILED: u8 = 1;
const REMOVED: u8 = 2;

struct Inner {
    queue: SplitQueue<DmaQueueMemory, u16>,
    /// The request in each slot (kept until the device has answered or been reset).
    slots: Vec<Option<Arc<Request>>>,
    free: Vec<u16>,
    /// Requests waiting for a slot, in order.
    waiting: VecDeque<Arc<Request>>,
}

/// One bound device.
pub struct VirtioBlk {
    device: Arc<VirtioDevice>,
    info: DiskInfo,
    max_discard_sectors: u32,
    inner: IrqSafeLock<Inner>,
    headers: Arc<Revocable<DmaBuffer>>,
    headers_bus: u64,
    state: AtomicU8,
    completions: AtomicU64,
}

impl VirtioBlk {
    fn fail(&self, reason: String) {
        if self
            .state
            .compare_exchange(RUNNING, FAILED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            pr_err!(
                "{}: {DRIVER}: {reason}; device marked failed and no longer used \
                 (unbind and bind to reset it)",
                self.device.name()
            );
            self.device.set_failed();
        }
        self.cancel_all(&reason);
    }

    /// Completes every waiting and in-flight request with an error. In-flight requests stay
    /// in their slots (the device may still write their buffers) until the reset.
    fn cancel_all(&self, reason: &str) {
        let (in_flight, waiting): (Vec<Arc<Request>>, Vec<Arc<Request>>) = {
            let mut inner = self.inner.lock();
            (
                inner.slots.iter().flatten().cloned().collect(),
                inner.waiting.drain(..).collect(),
            )
        };
        for request in in_flight.iter().chain(&waiting) {
            request.complete(Err(BlockError::Gone(String::from(reason))));
        }
    }

    /// Puts `request` into `slot`'s chain. Returns whether the device wants a notification.
    fn start(&self, inner: &mut Inner, slot: u16, request: Arc<Request>) -> Result<bool, String> {
        let base = usize::from(slot) * SLOT_BYTES;
        let header_bus = self.headers_bus + base as u64;
        let (kind, sector) = match request.op {
            Op::Read => (VIRTIO_BLK_T_IN, request.sector),
            Op::Write => (VIRTIO_BLK_T_OUT, request.sector),
            Op::Flush => (VIRTIO_BLK_T_FLUSH, 0),
            Op::Discard => (VIRTIO_BLK_T_DISCARD, 0),
        };
        {
            let Some(headers) = self.headers.try_access() else {
                return Err(String::from("header buffer revoked"));
            };
            headers.write_u32(base, kind);
            headers.write_u32(base + 4, 0);
            headers.write_u64(base + 8, sector);
            headers.write_u64(base + DISCARD_AT, request.sector);
            headers.write_u32(base + DISCARD_AT + 8, request.sectors);
            headers.write_u32(base + DISCARD_AT + 12, 0);
            // Not a status the device writes: a completion that left it unwritten is an error.
            headers.write_u8(base + STATUS_AT, 0xff);
        }
        let header = Segment::new(header_bus, 16);
        let status = Segment::new(header_bus + STATUS_AT as u64, 1);
        let data = request
            .buffer()
            .map(|buffer| Segment::new(buffer.bus_address(), request.bytes() as u32));
        let discard = Segment::new(header_bus + DISCARD_AT as u64, 16);
        let added = match (request.op, data) {
            (Op::Read, Some(data)) => inner.queue.add(&[header], &[data, status], slot),
            (Op::Write, Some(data)) => inner.queue.add(&[header, data], &[status], slot),
            (Op::Flush, _) => inner.queue.add(&[header], &[status], slot),
            (Op::Discard, _) => inner.queue.add(&[header, discard], &[status], slot),
            (_, None) => {
                request.complete(Err(BlockError::Range(String::from("no data buffer"))));
                inner.free.push(slot);
                return Ok(false);
            }
        };
        added.map_err(|error| alloc::format!("request queue: {error}"))?;
        inner.slots[usize::from(slot)] = Some(request);
        inner
            .queue
            .should_notify()
            .map_err(|error| alloc::format!("request queue: {error}"))
    }

    /// Starts waiting requests while slots and descriptors last.
    fn start_waiting(&self, inner: &mut Inner) -> Result<bool, String> {
        let mut notify = false;
        while inner.queue.num_free() >= CHAIN && !inner.free.is_empty() {
            let Some(request) = inner.waiting.pop_front() else {
                break;
            };
            let Some(slot) = inner.free.pop() else {
                break;
            };
            notify |= self.start(inner, slot, request)?;
        }
        Ok(notify)
    }

    /// Takes every completed request, completes it, and starts waiting ones in the slots freed.
    fn complete_used(&self) {
        let mut done = Vec::new();
        let outcome = {
            let mut inner = self.inner.lock();
            let mut outcome = Ok(false);
            loop {
                match inner.queue.pop_used() {
                    Ok(Some((slot, _len))) => {
                        let Some(request) = inner
                            .slots
                            .get_mut(usize::from(slot))
                            .and_then(Option::take)
                        else {
                            outcome = Err(alloc::format!("completion for empty slot {slot}"));
                            break;
                        };
                        let status = self
                            .headers
                            .try_access()
                            .map(|h| h.read_u8(usize::from(slot) * SLOT_BYTES + STATUS_AT))
                            .unwrap_or(0xff);
                        inner.free.push(slot);
                        done.push((request, status));
                    }
                    Ok(None) => break,
                    Err(error) => {
                        outcome = Err(alloc::format!("request queue: {error}"));
                        break;
                    }
                }
            }
            if outcome.is_ok() {
                outcome = self.start_waiting(&mut inner);
            }
            outcome
        };
        for (request, status) in done {
            self.completions.fetch_add(1, Ordering::Relaxed);
            request.complete(match status {
                VIRTIO_BLK_S_OK => Ok(()),
                VIRTIO_BLK_S_UNSUPP => Err(BlockError::Unsupported),
                _ => Err(BlockError::Io),
            });
        }
        match outcome {
            Ok(true) => self.device.notify(0),
            Ok(false) => {}
            Err(reason) => self.fail(reason),
        }
    }
}

impl BlockDriver for VirtioBlk {
    fn submit(&self, request: Arc<Request>) -> Result<(), BlockError> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => {}
            REMOVED => return Err(BlockError::Gone(String::from("unbound"))),
            _ => return Err(BlockError::Gone(String::from("device failed"))),
        }
        if request.op == Op::Discard && request.sectors > self.max_discard_sectors {
            return Err(BlockError::Range(alloc::format!(
                "discard of {} sectors; the device takes at most {}",
                request.sectors,
                self.max_discard_sectors
            )));
        }
        let outcome = {
            let mut inner = self.inner.lock();
            inner.waiting.push_back(request);
            self.start_waiting(&mut inner)
        };
        match outcome {
            Ok(true) => self.device.notify(0),
            Ok(false) => {}
            Err(reason) => {
                self.fail(reason);
                return Err(BlockError::Gone(String::from("device failed")));
            }
        }
        Ok(())
    }

    fn info(&self) -> DiskInfo {
        self.info.clone()
    }
}

impl VirtioCallbacks for VirtioBlk {
    fn vring_interrupt(&self) {
        if self.state.load(Ordering::Acquire) == RUNNING {
            self.complete_used();
        }
    }

    fn config_changed(&self) {
        if self.device.status() & lull_virtqueue::STATUS_DEVICE_NEEDS_RESET != 0 {
            self.fail(String::from("device set DEVICE_NEEDS_RESET"));
        }
    }
}

/// Reads a little-endian `u32` or `u64` from the configuration space.
fn config_u64(device: &VirtioDevice, offset: usize, bytes: usize) -> Option<u64> {
    let mut raw = [0u8; 8];
    device
        .read_config(offset, &mut raw[..bytes])
        .then(|| u64::from_le_bytes(raw))
}

struct VirtioBlkDriver;

impl Driver for VirtioBlkDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let device = super::device(&name).ok_or(Errno::ENODEV)?;
        ctx.require_supplier(device.parent())?;
        let max = device.queue_max(0);
        if max < CHAIN {
            pr_err!("{name}: {DRIVER}: the device's request queue is missing or too small");
            return Err(Errno::ENODEV.into());
        }
        let offered = device.device_features();
        let event_idx = offered & VIRTIO_F_RING_EVENT_IDX != 0;
        let Some(sectors) = config_u64(&device, CONFIG_CAPACITY, 8) else {
            pr_err!("{name}: {DRIVER}: cannot read the capacity from the configuration space");
            return Err(Errno::EIO.into());
        };
        let block_size = if offered & VIRTIO_BLK_F_BLK_SIZE != 0 {
            config_u64(&device, CONFIG_BLK_SIZE, 4)
                .map(|size| size as u32)
                .filter(|size| size.is_power_of_two() && (512..=65536).contains(size))
                .unwrap_or(512)
        } else {
            512
        };
        let size_max = if offered & VIRTIO_BLK_F_SIZE_MAX != 0 {
            config_u64(&device, CONFIG_SIZE_MAX, 4).unwrap_or(0) as usize
        } else {
            0
        };
        let max_request = match size_max {
            0 => block::MAX_REQUEST,
            size => size.min(block::MAX_REQUEST),
        };
        let discard = offered & VIRTIO_BLK_F_DISCARD != 0;
        let max_discard_sectors = if discard {
            config_u64(&device, CONFIG_MAX_DISCARD_SECTORS, 4).unwrap_or(0) as u32
        } else {
            0
        };
        let devres = ctx.devres();
        let queue = alloc_queue(devres, QUEUE_SIZE, max, event_idx)?;
        let slots = queue.size() / CHAIN;
        let headers = devm::alloc_coherent(devres, usize::from(slots) * SLOT_BYTES)?;
        let headers_bus = headers
            .try_access()
            .map(|b| b.bus_address())
            .ok_or(Errno::ENOMEM)?;
        let layouts = [*queue.layout()];
        let blk = Arc::new(VirtioBlk {
            device: Arc::clone(&device),
            info: DiskInfo {
                sectors,
                block_size,
                read_only: offered & VIRTIO_BLK_F_RO != 0,
                flush: offered & VIRTIO_BLK_F_FLUSH != 0,
                discard: discard && max_discard_sectors > 0,
                max_request,
                driver: DRIVER,
                device: name.clone(),
            },
            max_discard_sectors,
            inner: IrqSafeLock::new(Inner {
                queue,
                slots: (0..slots).map(|_| None).collect(),
                free: (0..slots).rev().collect(),
                waiting: VecDeque::new(),
            }),
            headers,
            headers_bus,
            state: AtomicU8::new(RUNNING),
            completions: AtomicU64::new(0),
        });
        // Released after the interrupt and the disk: reset, then let go of the requests the
        // device could still have been writing.
        let for_reset = Arc::clone(&blk);
        devres.add_action(alloc::format!("{name}: reset device"), move || {
            for_reset.device.reset();
            let mut inner = for_reset.inner.lock();
            for slot in inner.slots.iter_mut() {
                *slot = None;
            }
        });
        device.request_irq(devres, Arc::clone(&blk) as Arc<dyn VirtioCallbacks>)?;
        device
            .initialize(DRIVER_FEATURES & offered, &layouts)
            .map_err(|error| {
                pr_err!("{name}: {DRIVER}: initialisation failed: {error}");
                Errno::EIO
            })?;
        let disk = block::register_disk("vd", Arc::clone(&blk) as Arc<dyn BlockDriver>);
        let for_down = Arc::clone(&blk);
        let disk_name = disk.clone();
        devres.add_action(alloc::format!("{name}: disk {disk} down"), move || {
            block::unregister_disk(&disk_name);
            for_down.state.store(REMOVED, Ordering::Release);
            for_down.cancel_all("unbound");
        });
        printk!(
            "{name}: {DRIVER}: {disk}: {} sectors ({} MiB), block size {block_size}{}{}{}, {slots} requests in flight",
            sectors,
            sectors / 2048,
            if offered & VIRTIO_BLK_F_RO != 0 { ", read-only" } else { "" },
            if offered & VIRTIO_BLK_F_FLUSH != 0 { ", write-back cache" } else { "" },
            if discard { ", discard" } else { "" },
        );
        ctx.set_drvdata(alloc::boxed::Box::new(blk));
        Ok(())
    }
}

/// Registers the driver on the virtio bus.
pub fn init() {
    if let Err(error) = base::register_driver(DriverDesc::new(
        "virtio",
        DRIVER,
        alloc::vec![VirtioMatchId::device(VIRTIO_ID_BLOCK)],
        VirtioBlkDriver,
    )) {
        pr_err!("{DRIVER}: cannot register: {error}");
    }
}
