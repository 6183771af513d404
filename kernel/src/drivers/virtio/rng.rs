//! virtio-rng (virtio 1.2 §5.4, device type 4): one request queue; the driver offers a
//! writable buffer, the device fills it with random bytes. Interrupt-driven: each completion
//! arrives through the transport's interrupt thread, whose callback takes the used buffers,
//! mixes them into the kernel's entropy pool and wakes a waiting reader. Nothing polls.
//!
//! The `hwrng [N]` shell command (and `cat /dev/hwrng`, 32 bytes) reads from the first bound
//! device. A device that returns a used element the queue does not believe (a length beyond
//! the buffer, an id that is not in flight) is marked failed: FAILED goes into its status, the
//! log says why, readers get an error, and the queue is not touched again until an unbind and
//! bind reset it.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use lull_devres::Revocable;
use lull_driver_core::{
    Driver, DriverDesc, Errno, ProbeContext, ProbeError, RemoveContext, VirtioMatchId,
};
use lull_virtqueue::{Segment, SplitQueue, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1};

use super::queue::{alloc_queue, DmaQueueMemory};
use super::{VirtioCallbacks, VirtioDevice};
use crate::arch::dma::DmaBuffer;
use crate::drivers::base::{self, devm};
use crate::fs::procfs::{self, ProcFile};
use crate::kernel::locking::{IrqSafeLock, Mutex};
use crate::kernel::sched::Completion;
use crate::pr_err;

/// The driver's name (`/sys/bus/virtio/drivers/virtio_rng`, as Linux's).
pub const DRIVER: &str = "virtio_rng";
/// The device type.
const VIRTIO_ID_RNG: u32 = 4;
/// Bytes one request asks for.
pub const BUFFER: usize = 256;
/// Descriptors in the request queue (one request is in flight at a time).
const QUEUE_SIZE: u16 = 8;
/// Bytes requested at probe to seed the pool.
const SEED_BYTES: u32 = 64;
/// The most `hwrng N` reads.
pub const MAX_READ: usize = 4096;
/// How long a reader waits for one completion before declaring the device dead.
const TIMEOUT_NS: u64 = 2_000_000_000;
/// Features the driver implements (nothing device-specific exists for virtio-rng).
const DRIVER_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX;

const RUNNING: u8 = 0;
const FAILED: u8 = 1;
const REMOVED: u8 = 2;

/// One bound device.
pub struct VirtioRng {
    device: Arc<VirtioDevice>,
    queue: IrqSafeLock<SplitQueue<DmaQueueMemory, ()>>,
    data: Arc<Revocable<DmaBuffer>>,
    data_bus: u64,
    state: AtomicU8,
    reason: IrqSafeLock<Option<String>>,
    /// Bytes of the last completion not yet taken by a reader.
    last: IrqSafeLock<Option<Vec<u8>>>,
    done: Completion,
    /// One reader at a time (one buffer).
    reader: Mutex<()>,
    completions: AtomicU64,
}

/// Live driver states (a leak check: 0 once every device is unbound and its interrupt thread
/// has let go).
static LIVE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Live [`VirtioRng`] states.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

impl Drop for VirtioRng {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bound devices, in bind order.
static RNGS: IrqSafeLock<Vec<Arc<VirtioRng>>> = IrqSafeLock::new(Vec::new());

/// Test hook: corrupt the next used element the device writes before the driver reads it
/// (1: length one past the buffer, 2: an id not in flight).
#[cfg(feature = "ktest")]
pub static CORRUPT_NEXT_USED: AtomicU8 = AtomicU8::new(0);

impl VirtioRng {
    /// The device's name (`virtio0`).
    pub fn name(&self) -> &str {
        self.device.name()
    }

    /// The virtio device.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn device(&self) -> &Arc<VirtioDevice> {
        &self.device
    }

    /// Completions handled so far.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn completions(&self) -> u64 {
        self.completions.load(Ordering::Relaxed)
    }

    /// Why the device is failed, if it is.
    pub fn failure(&self) -> Option<String> {
        match self.state.load(Ordering::Acquire) {
            RUNNING => None,
            REMOVED => Some(alloc::format!("{}: unbound", self.name())),
            _ => Some(
                self.reason
                    .lock()
                    .clone()
                    .unwrap_or_else(|| String::from("failed")),
            ),
        }
    }

    /// Marks the device failed (once): logs why, sets FAILED in its status, wakes readers.
    fn fail(&self, reason: String) {
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
            *self.reason.lock() = Some(alloc::format!("{}: device failed: {reason}", self.name()));
            self.device.set_failed();
        }
        self.done.complete();
    }

    /// Offers `len` bytes of the buffer to the device and rings the doorbell if it wants.
    fn submit(&self, len: u32) -> Result<(), String> {
        let notify = {
            let mut queue = self.queue.lock();
            queue
                .add(&[], &[Segment::new(self.data_bus, len)], ())
                .and_then(|_| queue.should_notify())
        };
        match notify {
            Ok(true) => {
                self.device.notify(0);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(error) => {
                let reason = alloc::format!("request queue: {error}");
                self.fail(reason.clone());
                Err(reason)
            }
        }
    }

    /// Waits until `condition` holds, the device fails, or the timeout passes.
    fn wait(&self, mut condition: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = crate::kernel::time::uptime_ns().saturating_add(TIMEOUT_NS);
        loop {
            if let Some(failure) = self.failure() {
                return Err(failure);
            }
            if condition() {
                return Ok(());
            }
            let now = crate::kernel::time::uptime_ns();
            if now >= deadline || !self.done.wait_timeout(deadline - now) {
                if condition() {
                    return Ok(());
                }
                let reason = String::from("no completion within 2 s");
                self.fail(reason.clone());
                return Err(alloc::format!("{}: {reason}", self.name()));
            }
        }
    }

    /// Reads `count` bytes from the device (sleeping for its interrupts).
    pub fn read(&self, count: usize) -> Result<Vec<u8>, String> {
        let _reader = self.reader.lock();
        let mut out = Vec::with_capacity(count);
        let mut empty_rounds = 0;
        while out.len() < count {
            // A request made at probe (the pool's seed) may still be in flight.
            self.wait(|| self.queue.lock().in_flight() == 0)?;
            *self.last.lock() = None;
            let want = (count - out.len()).min(BUFFER);
            self.submit(want as u32)?;
            self.wait(|| self.last.lock().is_some())?;
            let bytes = self.last.lock().take().unwrap_or_default();
            if bytes.is_empty() {
                empty_rounds += 1;
                if empty_rounds == 16 {
                    return Err(alloc::format!(
                        "{}: the device returned no bytes 16 times",
                        self.name()
                    ));
                }
            }
            out.extend_from_slice(&bytes);
        }
        out.truncate(count);
        Ok(out)
    }

    /// The test hook: rewrites the pending used element as `CORRUPT_NEXT_USED` asks.
    #[cfg(feature = "ktest")]
    fn corrupt_pending(&self, queue: &mut SplitQueue<DmaQueueMemory, ()>) {
        use lull_virtqueue::QueueMemory;
        if !queue.has_used().unwrap_or(false) {
            return;
        }
        let kind = CORRUPT_NEXT_USED.swap(0, Ordering::AcqRel);
        if kind == 0 {
            return;
        }
        let layout = *queue.layout();
        let used_idx = queue.memory().read_u16(layout.used_idx());
        let slot = used_idx.wrapping_sub(1) & (layout.size() - 1);
        let elem = layout.used_elem(slot);
        match kind {
            1 => queue.memory_mut().write_u32(elem + 4, BUFFER as u32 + 1),
            _ => queue.memory_mut().write_u32(elem, 0x7777),
        }
    }
}

impl VirtioCallbacks for VirtioRng {
    fn vring_interrupt(&self) {
        if self.state.load(Ordering::Acquire) != RUNNING {
            return; // a failed device's rings are not read again
        }
        loop {
            let popped = {
                let mut queue = self.queue.lock();
                #[cfg(feature = "ktest")]
                self.corrupt_pending(&mut queue);
                queue.pop_used()
            };
            match popped {
                Ok(Some(((), len))) => {
                    // `len` is at most the chain's writable bytes (checked by the queue), which
                    // is at most the buffer.
                    let mut bytes = alloc::vec![0u8; (len as usize).min(BUFFER)];
                    if let Some(data) = self.data.try_access() {
                        data.read_bytes(0, &mut bytes);
                    }
                    crate::kernel::random::add_hwgenerator_randomness(
                        &bytes,
                        (bytes.len() * 8) as u32,
                    );
                    *self.last.lock() = Some(bytes);
                    self.completions.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => break,
                Err(error) => {
                    self.fail(alloc::format!("{error}"));
                    return;
                }
            }
        }
        self.done.complete();
    }

    fn config_changed(&self) {
        if self.device.status() & lull_virtqueue::STATUS_DEVICE_NEEDS_RESET != 0 {
            self.fail(String::from("device set DEVICE_NEEDS_RESET"));
        }
    }
}

struct VirtioRngDriver;

impl Driver for VirtioRngDriver {
    fn probe(&self, ctx: &mut ProbeContext<'_>) -> Result<(), ProbeError> {
        let name = String::from(ctx.device_name());
        let device = super::device(&name).ok_or(Errno::ENODEV)?;
        // Unbinding the transport unbinds us first.
        ctx.require_supplier(device.parent())?;
        let max = device.queue_max(0);
        if max == 0 {
            pr_err!("{name}: {DRIVER}: the device has no request queue");
            return Err(Errno::ENODEV.into());
        }
        let event_idx = device.device_features() & VIRTIO_F_RING_EVENT_IDX != 0;
        let devres = ctx.devres();
        let queue = alloc_queue(devres, QUEUE_SIZE, max, event_idx)?;
        let layout = *queue.layout();
        let data = devm::alloc_coherent(devres, BUFFER)?;
        let data_bus = data
            .try_access()
            .map(|d| d.bus_address())
            .ok_or(Errno::ENOMEM)?;
        // Released after the interrupt is freed and before the rings and buffer are: the
        // device stops writing to them before they go back to the allocator.
        let for_reset = Arc::clone(&device);
        devres.add_action(alloc::format!("{name}: reset device"), move || {
            for_reset.reset();
        });
        LIVE.fetch_add(1, Ordering::Relaxed);
        let rng = Arc::new(VirtioRng {
            device: Arc::clone(&device),
            queue: IrqSafeLock::new(queue),
            data,
            data_bus,
            state: AtomicU8::new(RUNNING),
            reason: IrqSafeLock::new(None),
            last: IrqSafeLock::new(None),
            done: Completion::new(),
            reader: Mutex::named("virtio_rng::reader", ()),
            completions: AtomicU64::new(0),
        });
        device.request_irq(devres, Arc::clone(&rng) as Arc<dyn VirtioCallbacks>)?;
        let features = device
            .initialize(DRIVER_FEATURES, &[layout])
            .map_err(|error| {
                pr_err!("{name}: {DRIVER}: initialisation failed: {error}");
                Errno::EIO
            })?;
        if (features & VIRTIO_F_RING_EVENT_IDX != 0) != event_idx {
            pr_err!("{name}: {DRIVER}: RING_EVENT_IDX negotiated differently than offered");
            device.set_failed();
            return Err(Errno::EIO.into());
        }
        // Seed the pool; the completion arrives through the interrupt.
        if let Err(error) = rng.submit(SEED_BYTES) {
            pr_err!("{name}: {DRIVER}: {error}");
            return Err(Errno::EIO.into());
        }
        crate::pr_debug!(
            "{name}: {DRIVER}: ready (queue of {}, {}event index, irq {})",
            layout.size(),
            if event_idx { "" } else { "no " },
            device.irq()
        );
        RNGS.lock().push(Arc::clone(&rng));
        ctx.set_drvdata(Box::new(rng));
        Ok(())
    }

    fn remove(&self, ctx: &mut RemoveContext<'_>) {
        let Some(rng) = ctx.drvdata::<Arc<VirtioRng>>().cloned() else {
            return;
        };
        rng.state.store(REMOVED, Ordering::Release);
        rng.done.complete();
        RNGS.lock().retain(|r| !Arc::ptr_eq(r, &rng));
        // The device stops before its interrupt, rings and buffer are released.
        rng.device.reset();
    }
}

/// The first bound device.
pub fn current() -> Option<Arc<VirtioRng>> {
    RNGS.lock().first().cloned()
}

/// Reads `count` bytes from the first bound device.
pub fn read(count: usize) -> Result<Vec<u8>, String> {
    crate::drivers::wait_for_device_probe();
    let rng = current().ok_or_else(|| {
        String::from("no hardware RNG: no virtio-rng device is bound to virtio_rng")
    })?;
    rng.read(count)
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for line in bytes.chunks(32) {
        for byte in line {
            let _ = write!(out, "{byte:02x}");
        }
        out.push('\n');
    }
    out
}

/// `hwrng [N]`: N bytes (default 32, at most 4096) from the hardware RNG, in hex.
pub fn cmd_hwrng(args: &[&str]) -> Result<String, String> {
    let count = match args {
        [] => 32,
        [n] => n
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=MAX_READ).contains(&n))
            .ok_or_else(|| alloc::format!("hwrng: N must be 1..={MAX_READ}"))?,
        _ => return Err(String::from("usage: hwrng [N]")),
    };
    read(count)
        .map(|bytes| hex(&bytes))
        .map_err(|e| alloc::format!("hwrng: {e}"))
}

/// Registers the driver and `/dev/hwrng`.
pub fn init() {
    procfs::register(ProcFile {
        path: "/dev/hwrng",
        read: Some(|| match read(32) {
            Ok(bytes) => hex(&bytes),
            Err(error) => alloc::format!("hwrng: {error}\n"),
        }),
        write: None,
    });
    if let Err(error) = base::register_driver(DriverDesc::new(
        "virtio",
        DRIVER,
        alloc::vec![VirtioMatchId::device(VIRTIO_ID_RNG)],
        VirtioRngDriver,
    )) {
        pr_err!("{DRIVER}: cannot register: {error}");
    }
}
