//! The block layer: disks registered by their drivers (`vda`, `vdb`, … as Linux names virtio
//! disks), requests with their data in DMA-able buffers, and the helpers the rest of the kernel
//! and the shell use (read, write, flush, discard, SHA-256 of a range), which keep up to
//! [`DEFAULT_DEPTH`] requests in flight at once.
//!
//! A driver takes a request with [`BlockDriver::submit`] and completes it later (normally from
//! its interrupt thread) with [`Request::complete`]; it queues what its hardware queue cannot
//! hold yet, so submitting never fails for lack of room. Nothing here polls: a waiter sleeps on
//! the request's completion, with a timeout so a dead device gives an error, not a hang.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::arch::dma::DmaBuffer;
use crate::kernel::locking::Mutex;
use crate::kernel::sched::Completion;

/// Bytes in the sector unit requests are addressed in (virtio and Linux: always 512).
pub const SECTOR: u64 = 512;
/// Requests the helpers keep in flight.
pub const DEFAULT_DEPTH: usize = 32;
/// Largest request the helpers build (drivers may announce less).
pub const MAX_REQUEST: usize = 64 << 10;
/// How long a request may take before its waiter gives up on the device.
const TIMEOUT_NS: u64 = 30_000_000_000;

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    /// Makes every completed write durable (the device's write-back cache).
    Flush,
    /// The range's contents may be dropped.
    Discard,
}

/// Why a request or a helper failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockError {
    /// The device reported an I/O error.
    Io,
    /// The device does not do this operation.
    Unsupported,
    /// The disk is read-only.
    ReadOnly,
    /// Outside the disk, or not aligned to its logical block size.
    Range(String),
    /// The device is failed, unbound or gone.
    Gone(String),
    /// No completion within the timeout.
    TimedOut,
    /// No DMA memory for the data.
    NoMemory,
    NoSuchDisk(String),
}

impl fmt::Display for BlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockError::Io => write!(f, "I/O error"),
            BlockError::Unsupported => write!(f, "operation not supported by the device"),
            BlockError::ReadOnly => write!(f, "read-only disk"),
            BlockError::Range(why) => write!(f, "{why}"),
            BlockError::Gone(why) => write!(f, "device unavailable: {why}"),
            BlockError::TimedOut => write!(f, "the device did not answer within 30 s"),
            BlockError::NoMemory => write!(f, "out of DMA memory"),
            BlockError::NoSuchDisk(name) => write!(f, "no disk named {name} (see `blk list`)"),
        }
    }
}

const PENDING: u8 = 0;
const DONE_OK: u8 = 1;
const DONE_IO: u8 = 2;
const DONE_UNSUPPORTED: u8 = 3;
const DONE_GONE: u8 = 4;

/// One request: `op` on `sectors` 512-byte sectors from `sector`, the data (reads and
/// writes) in `buffer`.
pub struct Request {
    pub op: Op,
    pub sector: u64,
    pub sectors: u32,
    buffer: Option<DmaBuffer>,
    status: AtomicU8,
    done: Completion,
}

impl Request {
    fn new(op: Op, sector: u64, sectors: u32, buffer: Option<DmaBuffer>) -> Arc<Request> {
        Arc::new(Request {
            op,
            sector,
            sectors,
            buffer,
            status: AtomicU8::new(PENDING),
            done: Completion::new(),
        })
    }

    /// The data buffer (reads and writes).
    pub fn buffer(&self) -> Option<&DmaBuffer> {
        self.buffer.as_ref()
    }

    /// Bytes of data.
    pub fn bytes(&self) -> usize {
        self.sectors as usize * SECTOR as usize
    }

    /// The driver's verdict: `Ok`, or the error the device gave. Only the first call counts.
    pub fn complete(&self, result: Result<(), BlockError>) {
        let status = match result {
            Ok(()) => DONE_OK,
            Err(BlockError::Unsupported) => DONE_UNSUPPORTED,
            Err(BlockError::Io) => DONE_IO,
            Err(_) => DONE_GONE,
        };
        if self
            .status
            .compare_exchange(PENDING, status, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.done.complete();
        }
    }

    /// Whether the request has completed.
    pub fn is_done(&self) -> bool {
        self.status.load(Ordering::Acquire) != PENDING
    }

    /// Sleeps until the request completes (or the timeout passes).
    pub fn wait(&self) -> Result<(), BlockError> {
        if !self.is_done() && !self.done.wait_timeout(TIMEOUT_NS) {
            return Err(BlockError::TimedOut);
        }
        match self.status.load(Ordering::Acquire) {
            DONE_OK => Ok(()),
            DONE_IO => Err(BlockError::Io),
            DONE_UNSUPPORTED => Err(BlockError::Unsupported),
            _ => Err(BlockError::Gone(String::from("the request was cancelled"))),
        }
    }
}

/// What a disk is.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// The logical block size: the unit reads and writes must be aligned to.
    pub block_size: u32,
    pub read_only: bool,
    /// The device has a write-back cache that `flush` empties.
    pub flush: bool,
    pub discard: bool,
    /// Largest request in bytes the driver takes.
    pub max_request: usize,
    /// The driver's name and the device's (`virtio_blk`, `virtio1`).
    pub driver: &'static str,
    pub device: String,
}

/// A block driver's side of a disk.
pub trait BlockDriver: Send + Sync {
    /// Starts `request`, or queues it until the device has room. `Err` only when the device
    /// cannot take requests at all (failed, going away).
    fn submit(&self, request: Arc<Request>) -> Result<(), BlockError>;
    fn info(&self) -> DiskInfo;
}

/// A registered disk.
pub struct Disk {
    name: String,
    driver: Arc<dyn BlockDriver>,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_sectors: AtomicU64,
    pub written_sectors: AtomicU64,
    pub flushes: AtomicU64,
}

static DISKS: Mutex<Vec<Arc<Disk>>> = Mutex::named("block::DISKS", Vec::new());

/// Registers a disk named `prefix` plus the first free letter (`vd` → `vda`, `vdb`, …).
/// Thread context.
pub fn register_disk(prefix: &str, driver: Arc<dyn BlockDriver>) -> String {
    let mut disks = DISKS.lock();
    let name = (b'a'..=b'z')
        .map(|letter| alloc::format!("{prefix}{}", letter as char))
        .find(|candidate| !disks.iter().any(|d| &d.name == candidate))
        .unwrap_or_else(|| alloc::format!("{prefix}{}", disks.len()));
    disks.push(Arc::new(Disk {
        name: name.clone(),
        driver,
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        read_sectors: AtomicU64::new(0),
        written_sectors: AtomicU64::new(0),
        flushes: AtomicU64::new(0),
    }));
    name
}

/// Removes a disk (its driver is unbinding). Thread context.
pub fn unregister_disk(name: &str) {
    DISKS.lock().retain(|disk| disk.name != name);
}

/// The registered disks, in registration order.
pub fn disks() -> Vec<Arc<Disk>> {
    crate::drivers::wait_for_device_probe();
    DISKS.lock().clone()
}

/// The disk called `name`.
pub fn disk(name: &str) -> Result<Arc<Disk>, BlockError> {
    disks()
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| BlockError::NoSuchDisk(String::from(name)))
}

impl Disk {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn info(&self) -> DiskInfo {
        self.driver.info()
    }

    /// Capacity in bytes.
    pub fn bytes(&self) -> u64 {
        self.info().sectors * SECTOR
    }

    /// Checks that `offset..offset + len` is inside the disk and aligned to its block size.
    fn check_range(&self, offset: u64, len: u64) -> Result<DiskInfo, BlockError> {
        let info = self.info();
        let unit = u64::from(info.block_size.max(SECTOR as u32));
        if !offset.is_multiple_of(unit) || !len.is_multiple_of(unit) {
            return Err(BlockError::Range(alloc::format!(
                "offset {offset} and length {len} must be multiples of {}'s block size, {unit} bytes",
                self.name
            )));
        }
        let end = offset.saturating_add(len);
        if end > info.sectors * SECTOR {
            return Err(BlockError::Range(alloc::format!(
                "{}..{end} is beyond the end of {} ({} bytes)",
                offset,
                self.name,
                info.sectors * SECTOR
            )));
        }
        Ok(info)
    }

    /// Submits one request and counts it.
    pub fn submit(&self, request: Arc<Request>) -> Result<(), BlockError> {
        match request.op {
            Op::Read => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                self.read_sectors
                    .fetch_add(u64::from(request.sectors), Ordering::Relaxed);
            }
            Op::Write => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                self.written_sectors
                    .fetch_add(u64::from(request.sectors), Ordering::Relaxed);
            }
            Op::Flush => {
                self.flushes.fetch_add(1, Ordering::Relaxed);
            }
            Op::Discard => {}
        }
        self.driver.submit(request)
    }

    /// A single request of `bytes` at `offset` (a multiple of the block size, at most the
    /// driver's largest request), its buffer allocated (and, for writes, filled by `fill`).
    /// Returns it in flight.
    pub fn start(
        &self,
        op: Op,
        offset: u64,
        bytes: usize,
        fill: impl FnOnce(&DmaBuffer),
    ) -> Result<Arc<Request>, BlockError> {
        let buffer = match op {
            Op::Read | Op::Write => {
                let buffer = DmaBuffer::alloc(bytes).ok_or(BlockError::NoMemory)?;
                if op == Op::Write {
                    fill(&buffer);
                }
                Some(buffer)
            }
            Op::Flush | Op::Discard => None,
        };
        let request = Request::new(op, offset / SECTOR, (bytes as u64 / SECTOR) as u32, buffer);
        self.submit(Arc::clone(&request))?;
        Ok(request)
    }

    /// Runs `op` over `offset..offset + len` in requests of at most the driver's size, with up
    /// to `depth` in flight. `fill(request_offset_in_range, buffer)` fills each write's data;
    /// `take(request_offset_in_range, buffer)` gets each read's data, in order.
    pub fn transfer(
        &self,
        op: Op,
        offset: u64,
        len: u64,
        depth: usize,
        mut fill: impl FnMut(u64, &DmaBuffer),
        mut take: impl FnMut(u64, &DmaBuffer),
    ) -> Result<(), BlockError> {
        let info = self.check_range(offset, len)?;
        if op == Op::Write && info.read_only {
            return Err(BlockError::ReadOnly);
        }
        let unit = u64::from(info.block_size.max(SECTOR as u32));
        let chunk = (info.max_request.min(MAX_REQUEST) as u64 / unit).max(1) * unit;
        let mut in_flight: alloc::collections::VecDeque<(u64, Arc<Request>)> =
            alloc::collections::VecDeque::new();
        let mut next = 0u64;
        let mut result = Ok(());
        while next < len || !in_flight.is_empty() {
            if result.is_ok() && next < len && in_flight.len() < depth.max(1) {
                let bytes = chunk.min(len - next) as usize;
                let at = next;
                match self.start(op, offset + at, bytes, |buffer| fill(at, buffer)) {
                    Ok(request) => in_flight.push_back((at, request)),
                    Err(error) => result = Err(error),
                }
                next += bytes as u64;
                continue;
            }
            let Some((at, request)) = in_flight.pop_front() else {
                break;
            };
            match request.wait() {
                Ok(()) => {
                    if op == Op::Read && result.is_ok() {
                        if let Some(buffer) = request.buffer() {
                            take(at, buffer);
                        }
                    }
                }
                Err(error) => {
                    if result.is_ok() {
                        result = Err(error);
                    }
                }
            }
            if result.is_err() {
                // Stop issuing; wait for what is in flight so no buffer is freed under DMA.
                next = len;
            }
        }
        result
    }

    /// Reads `out.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BlockError> {
        self.transfer(
            Op::Read,
            offset,
            out.len() as u64,
            DEFAULT_DEPTH,
            |_, _| {},
            |at, buffer| {
                let at = at as usize;
                let n = buffer.len().min(out.len() - at);
                buffer.read_bytes(0, &mut out[at..at + n]);
            },
        )
    }

    /// Writes `data` at `offset`.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        self.transfer(
            Op::Write,
            offset,
            data.len() as u64,
            DEFAULT_DEPTH,
            |at, buffer| {
                let at = at as usize;
                let n = buffer.len().min(data.len() - at);
                buffer.write_bytes(0, &data[at..at + n]);
            },
            |_, _| {},
        )
    }

    /// Empties the device's write-back cache (nothing to do without one).
    pub fn flush(&self) -> Result<(), BlockError> {
        if !self.info().flush {
            return Ok(());
        }
        self.start(Op::Flush, 0, 0, |_| {})?.wait()
    }

    /// Tells the device `offset..offset + len` is unused.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let info = self.check_range(offset, len)?;
        if !info.discard {
            return Err(BlockError::Unsupported);
        }
        if info.read_only {
            return Err(BlockError::ReadOnly);
        }
        let request = Request::new(Op::Discard, offset / SECTOR, (len / SECTOR) as u32, None);
        self.submit(Arc::clone(&request))?;
        request.wait()
    }
}

/// `/proc/partitions` in Linux's format (whole disks only; 1 KiB blocks).
pub fn proc_partitions() -> String {
    use core::fmt::Write as _;
    let mut text = String::from("major minor  #blocks  name\n\n");
    for (index, disk) in disks().iter().enumerate() {
        let _ = writeln!(
            text,
            "{:4} {:7} {:10} {}",
            253,
            index * 16,
            disk.bytes() / 1024,
            disk.name
        );
    }
    text
}

/// `/proc/diskstats`: Linux's first seven fields per disk (reads, merged, sectors read, ms,
/// writes, merged, sectors written), plus flushes as the last field.
pub fn proc_diskstats() -> String {
    use core::fmt::Write as _;
    let mut text = String::new();
    for (index, disk) in disks().iter().enumerate() {
        let _ = writeln!(
            text,
            "{:4} {:7} {} {} 0 {} 0 {} 0 {} 0 0 0 0 0 0 0 0 0 {} 0",
            253,
            index * 16,
            disk.name,
            disk.reads.load(Ordering::Relaxed),
            disk.read_sectors.load(Ordering::Relaxed),
            disk.writes.load(Ordering::Relaxed),
            disk.written_sectors.load(Ordering::Relaxed),
            disk.flushes.load(Ordering::Relaxed),
        );
    }
    text
}
