//! virtio-net (virtio 1.2 §5.1, device type 1): the network front-end. One receive and one
//! transmit queue, the MAC from the device's configuration space, no offloads negotiated (none
//! is implemented: checksums are computed by the stack, frames are at most 1514 bytes).
//!
//! * Receive: a pool of [`RX_BUFFERS`] DMA buffers is kept posted. The interrupt thread takes
//!   each completed buffer, hands the frame (the 12-byte virtio header stripped) to the stack
//!   with `net::netif_rx`, and posts the buffer again. NAPI's scheme, in the threaded handler:
//!   the first interrupt turns the device's receive interrupts off, the thread polls in passes
//!   of at most [`NAPI_BUDGET`] frames (yielding the CPU between passes under load), and turns
//!   interrupts back on only when a pass finds the ring empty — re-checking after enabling, so
//!   a frame that raced in is not left waiting. While idle nothing runs.
//! * Transmit: [`TX_SLOTS`] DMA slots; `transmit` copies the frame behind a zeroed header,
//!   offers it, rings the doorbell when the device wants, and reclaims completed slots first.
//!   With every slot in flight the frame is dropped and counted (the stack retransmits).
//! * A used element the queue does not believe fails the device (logged, FAILED status, no
//!   more traffic), as for every virtio driver here. Unbinding takes the interface down first,
//!   then frees the interrupt, resets the device and frees the buffers (devres order).

use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};

use lull_devres::Revocable;
use lull_driver_core::{Driver, DriverDesc, Errno, ProbeContext, ProbeError, VirtioMatchId};
use lull_virtqueue::{Segment, SplitQueue, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};

use super::queue::{alloc_queue, DmaQueueMemory};
use super::{VirtioCallbacks, VirtioDevice};
use crate::arch::dma::DmaBuffer;
use crate::drivers::base::{self, devm};
use crate::kernel::locking::IrqSafeLock;
use crate::net::{self, NetDevice, TxError};
use crate::{pr_err, printk};

/// The driver's name (`/sys/bus/virtio/drivers/virtio_net`, as Linux's).
pub const DRIVER: &str = "virtio_net";
const VIRTIO_ID_NET: u32 = 1;
/// The device has a MAC address in its configuration space.
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const DRIVER_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | VIRTIO_NET_F_MAC;
/// `struct virtio_net_hdr` with `num_buffers`: 12 bytes under VERSION_1.
const HEADER: usize = 12;
/// Largest frame (1500-byte MTU plus the Ethernet header).
const MAX_FRAME: usize = 1514;
/// Bytes per buffer slot (header + frame, rounded).
const SLOT: usize = 2048;
/// Receive buffers kept posted.
pub const RX_BUFFERS: u16 = 64;
/// Transmit slots.
pub const TX_SLOTS: u16 = 64;
/// Frames one receive pass takes before the thread yields (Linux's NAPI weight is 64).
pub const NAPI_BUDGET: usize = 64;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;

const RUNNING: u8 = 0;
const FAILED: u8 = 1;

struct Tx {
    queue: SplitQueue<DmaQueueMemory, u16>,
    /// Free slot numbers.
    free: alloc::vec::Vec<u16>,
}

/// One bound device.
pub struct VirtioNet {
    device: Arc<VirtioDevice>,
    mac: [u8; 6],
    rx: IrqSafeLock<SplitQueue<DmaQueueMemory, u16>>,
    rx_buffers: Arc<Revocable<DmaBuffer>>,
    rx_bus: u64,
    tx: IrqSafeLock<Tx>,
    tx_buffers: Arc<Revocable<DmaBuffer>>,
    tx_bus: u64,
    state: AtomicU8,
    /// The stack's interface index, once registered.
    netif: AtomicUsize,
    tx_dropped: AtomicU64,
}

impl VirtioNet {
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
    }

    /// Posts receive buffer `slot`.
    fn post_rx(queue: &mut SplitQueue<DmaQueueMemory, u16>, bus: u64, slot: u16) -> bool {
        let segment = Segment::new(bus + u64::from(slot) * SLOT as u64, SLOT as u32);
        queue.add(&[], &[segment], slot).is_ok()
    }

    /// NAPI: receive interrupts off, passes of at most [`NAPI_BUDGET`] frames until one
    /// finds nothing, then interrupts on again (and one more pass if frames raced in).
    fn poll_receive(&self) {
        self.rx.lock().disable_callbacks();
        loop {
            if self.state.load(Ordering::Acquire) != RUNNING {
                return;
            }
            let taken = self.receive(NAPI_BUDGET);
            if taken == NAPI_BUDGET {
                // More may be waiting: let other threads (the stack's) run, then go on.
                crate::kernel::sched::yield_now();
                continue;
            }
            // (Its own statement: the lock must be released before an arm takes it again.)
            let raced = self.rx.lock().enable_callbacks();
            match raced {
                Ok(false) => return,
                Ok(true) => self.rx.lock().disable_callbacks(),
                Err(error) => {
                    self.fail(alloc::format!("receive queue: {error}"));
                    return;
                }
            }
        }
    }

    /// Takes up to `budget` completed receive buffers, hands their frames to the stack,
    /// reposts them. Returns how many it took.
    fn receive(&self, budget: usize) -> usize {
        let index = self.netif.load(Ordering::Acquire);
        let mut repost = false;
        let mut taken = 0;
        while taken < budget {
            let popped = self.rx.lock().pop_used();
            match popped {
                Ok(Some((slot, len))) => {
                    taken += 1;
                    let len = (len as usize).min(SLOT);
                    if len > HEADER && index != usize::MAX {
                        let mut frame = alloc::vec![0u8; len - HEADER];
                        if let Some(buffers) = self.rx_buffers.try_access() {
                            buffers.read_bytes(usize::from(slot) * SLOT + HEADER, &mut frame);
                        }
                        net::netif_rx(index, frame);
                    }
                    let mut queue = self.rx.lock();
                    if !Self::post_rx(&mut queue, self.rx_bus, slot) {
                        drop(queue);
                        self.fail(String::from("cannot repost a receive buffer"));
                        return taken;
                    }
                    repost = true;
                }
                Ok(None) => break,
                Err(error) => {
                    self.fail(alloc::format!("receive queue: {error}"));
                    return taken;
                }
            }
        }
        if repost && self.rx.lock().should_notify().unwrap_or(false) {
            self.device.notify(RX_QUEUE);
        }
        taken
    }

    /// Reclaims transmitted slots (transmit lock held).
    fn reclaim(&self, tx: &mut Tx) -> Result<(), String> {
        loop {
            match tx.queue.pop_used() {
                Ok(Some((slot, _))) => tx.free.push(slot),
                Ok(None) => return Ok(()),
                Err(error) => return Err(alloc::format!("transmit queue: {error}")),
            }
        }
    }
}

impl NetDevice for VirtioNet {
    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }

    fn transmit(&self, frame: &[u8]) -> Result<(), TxError> {
        if self.state.load(Ordering::Acquire) != RUNNING || frame.len() > MAX_FRAME {
            return Err(TxError::Down);
        }
        let notify = {
            let mut tx = self.tx.lock();
            if let Err(reason) = self.reclaim(&mut tx) {
                drop(tx);
                self.fail(reason);
                return Err(TxError::Down);
            }
            let Some(slot) = tx.free.pop() else {
                self.tx_dropped.fetch_add(1, Ordering::Relaxed);
                return Err(TxError::Busy);
            };
            let offset = usize::from(slot) * SLOT;
            match self.tx_buffers.try_access() {
                Some(buffers) => {
                    buffers.write_bytes(offset, &[0u8; HEADER]);
                    buffers.write_bytes(offset + HEADER, frame);
                }
                None => return Err(TxError::Down),
            }
            let segment = Segment::new(self.tx_bus + offset as u64, (HEADER + frame.len()) as u32);
            match tx
                .queue
                .add(&[segment], &[], slot)
                .and_then(|_| tx.queue.should_notify())
            {
                Ok(notify) => notify,
                Err(error) => {
                    drop(tx);
                    self.fail(alloc::format!("transmit queue: {error}"));
                    return Err(TxError::Down);
                }
            }
        };
        if notify {
            self.device.notify(TX_QUEUE);
        }
        Ok(())
    }
}

impl VirtioCallbacks for VirtioNet {
    fn vring_interrupt(&self) {
        if self.state.load(Ordering::Acquire) != RUNNING {
            return;
        }
        self.poll_receive();
        let reclaimed = {
            let mut tx = self.tx.lock();
            self.reclaim(&mut tx)
        };
        if let Err(reason) = reclaimed {
            self.fail(reason);
        }
    }

    fn config_changed(&self) {
        if self.device.status() & lull_virtqueue::STATUS_DEVICE_NEEDS_RESET != 0 {
            self.fail(String::from("device set DEVICE_NEEDS_RESET"));
        }
    }
}

struct VirtioNetDriver;

impl Driver for VirtioNetDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let device = super::device(&name).ok_or(Errno::ENODEV)?;
        ctx.require_supplier(device.parent())?;
        let (rx_max, tx_max) = (device.queue_max(RX_QUEUE), device.queue_max(TX_QUEUE));
        if rx_max == 0 || tx_max == 0 {
            pr_err!("{name}: {DRIVER}: the device lacks its receive or transmit queue");
            return Err(Errno::ENODEV.into());
        }
        let offered = device.device_features();
        let event_idx = offered & VIRTIO_F_RING_EVENT_IDX != 0;
        let mut mac = [0u8; 6];
        if offered & VIRTIO_NET_F_MAC == 0 || !device.read_config(0, &mut mac) {
            // Linux picks a random locally administered address; this one is made from the
            // boot clock (unicast, locally administered: 02:…).
            let seed = crate::kernel::time::uptime_ns().to_le_bytes();
            mac = [0x02, 0x4c, seed[0], seed[1], seed[2], seed[3]];
        }
        let devres = ctx.devres();
        let mut rx = alloc_queue(devres, RX_BUFFERS, rx_max, event_idx)?;
        let tx_queue = alloc_queue(devres, TX_SLOTS, tx_max, event_idx)?;
        let rx_count = rx.size();
        let tx_count = tx_queue.size();
        let rx_buffers = devm::alloc_coherent(devres, usize::from(rx_count) * SLOT)?;
        let tx_buffers = devm::alloc_coherent(devres, usize::from(tx_count) * SLOT)?;
        let bus = |b: &Arc<Revocable<DmaBuffer>>| b.try_access().map(|d| d.bus_address());
        let (rx_bus, tx_bus) = (
            bus(&rx_buffers).ok_or(Errno::ENOMEM)?,
            bus(&tx_buffers).ok_or(Errno::ENOMEM)?,
        );
        let layouts = [*rx.layout(), *tx_queue.layout()];
        let for_reset = Arc::clone(&device);
        devres.add_action(alloc::format!("{name}: reset device"), move || {
            for_reset.reset();
        });
        for slot in 0..rx_count {
            if !VirtioNet::post_rx(&mut rx, rx_bus, slot) {
                return Err(Errno::EIO.into());
            }
        }
        let net = Arc::new(VirtioNet {
            device: Arc::clone(&device),
            mac,
            rx: IrqSafeLock::new(rx),
            rx_buffers,
            rx_bus,
            tx: IrqSafeLock::new(Tx {
                queue: tx_queue,
                free: (0..tx_count).rev().collect(),
            }),
            tx_buffers,
            tx_bus,
            state: AtomicU8::new(RUNNING),
            netif: AtomicUsize::new(usize::MAX),
            tx_dropped: AtomicU64::new(0),
        });
        device.request_irq(devres, Arc::clone(&net) as Arc<dyn VirtioCallbacks>)?;
        device
            .initialize(DRIVER_FEATURES & offered, &layouts)
            .map_err(|error| {
                pr_err!("{name}: {DRIVER}: initialisation failed: {error}");
                Errno::EIO
            })?;
        // The posted receive buffers are visible to the device once DRIVER_OK is set.
        device.notify(RX_QUEUE);
        let index =
            net::register_netdev(Arc::clone(&net) as Arc<dyn NetDevice>).ok_or(Errno::ENODEV)?;
        net.netif.store(index, Ordering::Release);
        let for_down = Arc::clone(&net);
        devres.add_action(alloc::format!("{name}: interface down"), move || {
            net::unregister_netdev(index);
            for_down.netif.store(usize::MAX, Ordering::Release);
        });
        printk!(
            "{name}: {DRIVER}: {rx_count} receive buffers, {tx_count} transmit slots{}",
            if event_idx { ", event index" } else { "" }
        );
        ctx.set_drvdata(alloc::boxed::Box::new(net));
        Ok(())
    }
}

/// Registers the driver on the virtio bus.
pub fn init() {
    if let Err(error) = base::register_driver(DriverDesc::new(
        "virtio",
        DRIVER,
        alloc::vec![VirtioMatchId::device(VIRTIO_ID_NET)],
        VirtioNetDriver,
    )) {
        pr_err!("{DRIVER}: cannot register: {error}");
    }
}
