//! DMA-coherent buffers (Linux's `dma_alloc_coherent`): RAM below 4 GiB that a device reads and
//! writes while the kernel does, reached only through volatile, bounds-checked accessors.
//!
//! On x86 with no IOMMU the bus address is the physical address, and RAM is identity-mapped
//! write-back and cache-coherent with DMA, so "coherent" costs nothing beyond ordering: the
//! accessors are volatile (the device may change a byte between two reads) and the fences are
//! the driver's (`fence(Release)` before telling the device, `fence(Acquire)` after it says so).

use core::sync::atomic::{AtomicUsize, Ordering};

use lull_buddy::{ZoneKind, PAGE_SIZE};

use super::memory::PageBlock;

/// Pages held by live DMA buffers (leak checks compare it before and after).
static DMA_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Pages currently held by DMA-coherent buffers.
pub fn pages_in_use() -> usize {
    DMA_PAGES.load(Ordering::Relaxed)
}

/// A zeroed, physically contiguous buffer below 4 GiB, freed on drop.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no shell-build driver uses it yet
pub struct DmaBuffer {
    block: PageBlock,
    len: usize,
}

impl core::fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "DmaBuffer({:#x}, {} bytes)",
            self.bus_address(),
            self.len
        )
    }
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
impl DmaBuffer {
    /// Allocates at least `len` bytes (whole pages), zeroed. `None` when memory is short or
    /// `len` is 0 or absurd (over 4 MiB).
    pub fn alloc(len: usize) -> Option<DmaBuffer> {
        if len == 0 || len > 4 << 20 {
            return None;
        }
        let pages = len.div_ceil(PAGE_SIZE as usize);
        let order = pages.next_power_of_two().trailing_zeros() as u8;
        let mut block = PageBlock::alloc(order, ZoneKind::Dma32)?;
        if block.address() + block.size() as u64 > 1 << 32 {
            return None; // dropped: freed
        }
        block.as_mut_bytes().fill(0);
        DMA_PAGES.fetch_add(1 << order, Ordering::Relaxed);
        Some(DmaBuffer { block, len })
    }

    /// The address the device uses.
    pub fn bus_address(&self) -> u64 {
        self.block.address()
    }

    /// Usable length in bytes (as asked).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never: `alloc` refuses 0).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pages held (a power of two).
    pub fn pages(&self) -> usize {
        1 << self.block.order()
    }

    fn check(&self, offset: usize, width: usize) -> usize {
        match offset.checked_add(width) {
            Some(end) if end <= self.len => self.block.address() as usize + offset,
            _ => panic!(
                "DMA buffer access at {offset:#x}+{width} outside its {} bytes",
                self.len
            ),
        }
    }

    /// Reads a value at `offset` (naturally aligned or not; x86 allows both). Panics when the
    /// access leaves the buffer: a driver bug, never a device's doing.
    fn read<T: Copy>(&self, offset: usize) -> T {
        let address = self.check(offset, core::mem::size_of::<T>());
        // SAFETY: `address..address+size_of::<T>()` lies inside this buffer's pages (checked),
        // which this handle owns and which are identity-mapped RAM; the device may write them
        // concurrently, hence a volatile unaligned-tolerant read of a plain integer type.
        unsafe { core::ptr::read_volatile(address as *const T) }
    }

    fn write<T: Copy>(&self, offset: usize, value: T) {
        let address = self.check(offset, core::mem::size_of::<T>());
        // SAFETY: as `read`: inside the owned, identity-mapped buffer; volatile because the
        // device reads it. Shared access is by design (coherent DMA memory is shared with the
        // device anyway); the driver orders its accesses with fences.
        unsafe { core::ptr::write_volatile(address as *mut T, value) }
    }

    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn read_u8(&self, offset: usize) -> u8 {
        self.read(offset)
    }
    pub fn read_u16(&self, offset: usize) -> u16 {
        self.read(offset)
    }
    pub fn read_u32(&self, offset: usize) -> u32 {
        self.read(offset)
    }
    pub fn read_u64(&self, offset: usize) -> u64 {
        self.read(offset)
    }
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub fn write_u8(&self, offset: usize, value: u8) {
        self.write(offset, value)
    }
    pub fn write_u16(&self, offset: usize, value: u16) {
        self.write(offset, value)
    }
    pub fn write_u32(&self, offset: usize, value: u32) {
        self.write(offset, value)
    }
    pub fn write_u64(&self, offset: usize, value: u64) {
        self.write(offset, value)
    }

    /// Copies `out.len()` bytes from `offset`.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        self.check(offset, out.len());
        // Eight bytes per volatile access, then the tail: a 64 KiB block request is 8 Ki
        // accesses rather than 64 Ki (each a few instructions more in an instruction emulator).
        let mut words = out.chunks_exact_mut(8);
        let mut at = offset;
        for word in &mut words {
            word.copy_from_slice(&self.read::<u64>(at).to_ne_bytes());
            at += 8;
        }
        for byte in words.into_remainder() {
            *byte = self.read(at);
            at += 1;
        }
    }

    /// Copies `data` to `offset`.
    pub fn write_bytes(&self, offset: usize, data: &[u8]) {
        self.check(offset, data.len());
        // As `read_bytes`: eight bytes per volatile access, then the tail.
        let mut words = data.chunks_exact(8);
        let mut at = offset;
        for word in &mut words {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            self.write(at, u64::from_ne_bytes(bytes));
            at += 8;
        }
        for &byte in words.remainder() {
            self.write(at, byte);
            at += 1;
        }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        DMA_PAGES.fetch_sub(self.pages(), Ordering::Relaxed);
    }
}
