//! Split virtqueues in DMA-coherent memory: `lull-virtqueue`'s [`QueueMemory`] over a managed
//! [`DmaBuffer`], so a queue's rings are freed at unbind with the rest of the device's
//! resources and, once revoked, are never touched again (reads give 0, writes are dropped).

use alloc::sync::Arc;
use core::sync::atomic::{fence, Ordering};

use lull_devres::{DevresList, Revocable};
use lull_driver_core::{Errno, ProbeError};
use lull_virtqueue::{QueueLayout, QueueMemory, SplitQueue};

use crate::arch::dma::DmaBuffer;
use crate::drivers::base::devm;

/// A queue's rings: the buffer and its bus address (what the ring addresses are).
pub struct DmaQueueMemory {
    buffer: Arc<Revocable<DmaBuffer>>,
    base: u64,
}

impl DmaQueueMemory {
    /// The offset of `addr` in the buffer, if `addr..addr + width` lies in it.
    fn offset(&self, addr: u64, width: usize) -> Option<usize> {
        let offset = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let buffer = self.buffer.try_access()?;
        (offset.checked_add(width)? <= buffer.len()).then_some(offset)
    }

    fn read<T: Default>(
        &self,
        addr: u64,
        width: usize,
        f: impl FnOnce(&DmaBuffer, usize) -> T,
    ) -> T {
        match (self.offset(addr, width), self.buffer.try_access()) {
            (Some(offset), Some(buffer)) => f(&buffer, offset),
            _ => T::default(),
        }
    }

    fn write(&self, addr: u64, width: usize, f: impl FnOnce(&DmaBuffer, usize)) {
        if let (Some(offset), Some(buffer)) = (self.offset(addr, width), self.buffer.try_access()) {
            f(&buffer, offset);
        }
    }
}

impl QueueMemory for DmaQueueMemory {
    fn read_u16(&self, addr: u64) -> u16 {
        self.read(addr, 2, |b, o| b.read_u16(o))
    }
    fn write_u16(&mut self, addr: u64, value: u16) {
        self.write(addr, 2, |b, o| b.write_u16(o, value));
    }
    fn read_u32(&self, addr: u64) -> u32 {
        self.read(addr, 4, |b, o| b.read_u32(o))
    }
    fn write_u32(&mut self, addr: u64, value: u32) {
        self.write(addr, 4, |b, o| b.write_u32(o, value));
    }
    fn read_u64(&self, addr: u64) -> u64 {
        self.read(addr, 8, |b, o| b.read_u64(o))
    }
    fn write_u64(&mut self, addr: u64, value: u64) {
        self.write(addr, 8, |b, o| b.write_u64(o, value));
    }
    fn read_bytes(&self, addr: u64, out: &mut [u8]) {
        match (self.offset(addr, out.len()), self.buffer.try_access()) {
            (Some(offset), Some(buffer)) => buffer.read_bytes(offset, out),
            _ => out.fill(0),
        }
    }
    fn write_bytes(&mut self, addr: u64, data: &[u8]) {
        self.write(addr, data.len(), |b, o| b.write_bytes(o, data));
    }
    // x86 keeps stores in order and loads in order; the compiler must too. A store followed by
    // a load (publishing the available index, then reading the device's event index) needs a
    // real `mfence`, which a sequentially consistent fence is on x86_64.
    fn store_fence(&self) {
        fence(Ordering::Release);
    }
    fn load_fence(&self) {
        fence(Ordering::Acquire);
    }
    fn full_fence(&self) {
        fence(Ordering::SeqCst);
    }
}

/// Allocates (managed) the rings of a queue of `size` entries, at most the device's `max`.
pub fn alloc_queue<T>(
    devres: &mut DevresList,
    size: u16,
    max: u16,
    event_idx: bool,
) -> Result<SplitQueue<DmaQueueMemory, T>, ProbeError> {
    let size = size.min(max);
    if size == 0 {
        return Err(Errno::ENODEV.into());
    }
    // Round down to a power of two (a device may report any maximum).
    let size = 1u16 << (15 - size.leading_zeros().min(15));
    let bytes = QueueLayout::contiguous_bytes(size) as usize;
    let buffer = devm::alloc_coherent(devres, bytes)?;
    let base = buffer
        .try_access()
        .map(|b| b.bus_address())
        .ok_or(Errno::ENOMEM)?;
    let layout = QueueLayout::contiguous(size, base).map_err(|_| Errno::EINVAL)?;
    Ok(SplitQueue::new(
        DmaQueueMemory { buffer, base },
        layout,
        event_idx,
    ))
}
