//! The ring memory the queue reads and writes, and where its three parts lie in it.

use alloc::vec;
use alloc::vec::Vec;

use crate::Error;

/// Little-endian access to the memory holding a queue's rings, at guest-physical-style
/// addresses (the addresses the device is told).
///
/// The kernel implements it over its DMA allocation (volatile accesses); tests use
/// [`VecMemory`]. Accesses are infallible: the queue only touches addresses inside the
/// [`QueueLayout`] it was built with, which the kernel's memory covers.
///
/// The fences are the virtio memory barriers (`virtio_wmb`, `virtio_rmb`, `virtio_mb`); the
/// defaults do nothing, which is right for a single-threaded fake device and for x86 stores
/// and loads ordered by the compiler, but the kernel must at least make them compiler fences,
/// and `full_fence` a real `mfence` (a store followed by a load needs one on x86 too).
pub trait QueueMemory {
    /// Reads a `u16` at `addr`.
    fn read_u16(&self, addr: u64) -> u16;
    /// Writes a `u16` at `addr`.
    fn write_u16(&mut self, addr: u64, value: u16);
    /// Reads a `u32` at `addr`.
    fn read_u32(&self, addr: u64) -> u32;
    /// Writes a `u32` at `addr`.
    fn write_u32(&mut self, addr: u64, value: u32);
    /// Reads a `u64` at `addr`.
    fn read_u64(&self, addr: u64) -> u64;
    /// Writes a `u64` at `addr`.
    fn write_u64(&mut self, addr: u64, value: u64);
    /// Reads `out.len()` bytes from `addr`.
    fn read_bytes(&self, addr: u64, out: &mut [u8]);
    /// Writes `data` at `addr`.
    fn write_bytes(&mut self, addr: u64, data: &[u8]);
    /// Orders earlier stores before later stores (before publishing an available index).
    fn store_fence(&self) {}
    /// Orders earlier loads before later loads (after reading the used index).
    fn load_fence(&self) {}
    /// Orders earlier stores before later loads (before reading the device's event index).
    fn full_fence(&self) {}
}

/// A `Vec`-backed [`QueueMemory`] starting at `base`, for host tests and fakes. Accesses outside
/// it read zero and write nothing, so a test can aim a device at a wild address without a panic.
#[derive(Clone, Debug)]
pub struct VecMemory {
    base: u64,
    bytes: Vec<u8>,
}

impl VecMemory {
    /// `len` zeroed bytes at `base`.
    pub fn new(base: u64, len: usize) -> Self {
        Self {
            base,
            bytes: vec![0; len],
        }
    }

    fn range(&self, addr: u64, len: usize) -> Option<core::ops::Range<usize>> {
        let start = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= self.bytes.len()).then_some(start..end)
    }

    fn read<const N: usize>(&self, addr: u64) -> [u8; N] {
        let mut out = [0; N];
        self.read_bytes(addr, &mut out);
        out
    }
}

impl QueueMemory for VecMemory {
    fn read_u16(&self, addr: u64) -> u16 {
        u16::from_le_bytes(self.read(addr))
    }
    fn write_u16(&mut self, addr: u64, value: u16) {
        self.write_bytes(addr, &value.to_le_bytes());
    }
    fn read_u32(&self, addr: u64) -> u32 {
        u32::from_le_bytes(self.read(addr))
    }
    fn write_u32(&mut self, addr: u64, value: u32) {
        self.write_bytes(addr, &value.to_le_bytes());
    }
    fn read_u64(&self, addr: u64) -> u64 {
        u64::from_le_bytes(self.read(addr))
    }
    fn write_u64(&mut self, addr: u64, value: u64) {
        self.write_bytes(addr, &value.to_le_bytes());
    }
    fn read_bytes(&self, addr: u64, out: &mut [u8]) {
        match self.range(addr, out.len()).and_then(|r| self.bytes.get(r)) {
            Some(src) => out.copy_from_slice(src),
            None => out.fill(0),
        }
    }
    fn write_bytes(&mut self, addr: u64, data: &[u8]) {
        if let Some(dst) = self
            .range(addr, data.len())
            .and_then(|r| self.bytes.get_mut(r))
        {
            dst.copy_from_slice(data);
        }
    }
}

/// The largest split queue (virtio 1.2 §2.7: "Queue Size ... maximum is 32768").
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Where a split queue's three parts lie (virtio 1.2 §2.7):
///
/// | part             | size            | alignment |
/// |------------------|-----------------|-----------|
/// | descriptor table | 16 × size       | 16        |
/// | available ring   | 6 + 2 × size    | 2         |
/// | used ring        | 6 + 8 × size    | 4         |
///
/// The available ring is `flags, idx, ring[size], used_event`; the used ring is `flags, idx,
/// ring[size] of {id: u32, len: u32}, avail_event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl QueueLayout {
    /// Checks a layout: `size` a power of two up to [`MAX_QUEUE_SIZE`], each part aligned, no
    /// part wrapping past the end of the address space, no two parts overlapping.
    pub fn new(size: u16, desc: u64, avail: u64, used: u64) -> Result<Self, Error> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidSize(size));
        }
        let layout = Self {
            size,
            desc,
            avail,
            used,
        };
        let parts = [
            ("descriptor table", desc, Self::desc_bytes(size), 16_u64),
            ("available ring", avail, Self::avail_bytes(size), 2),
            ("used ring", used, Self::used_bytes(size), 4),
        ];
        let mut ranges = [(0_u64, 0_u64); 3];
        for ((what, start, len, align), range) in parts.into_iter().zip(ranges.iter_mut()) {
            if start & align.wrapping_sub(1) != 0 {
                return Err(Error::Misaligned {
                    what,
                    addr: start,
                    align,
                });
            }
            let end = start
                .checked_add(len)
                .ok_or(Error::AddressOverflow { what })?;
            *range = (start, end);
        }
        let [a, b, c] = ranges;
        let overlap = |x: (u64, u64), y: (u64, u64)| x.0 < y.1 && y.0 < x.1;
        if overlap(a, b) || overlap(a, c) || overlap(b, c) {
            return Err(Error::Overlap);
        }
        Ok(layout)
    }

    /// The three parts one after another from `base` (the used ring rounded up to 4 bytes), as
    /// one DMA allocation of [`contiguous_bytes`](Self::contiguous_bytes) holds them.
    pub fn contiguous(size: u16, base: u64) -> Result<Self, Error> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidSize(size));
        }
        let avail = base
            .checked_add(Self::desc_bytes(size))
            .ok_or(Error::AddressOverflow {
                what: "available ring",
            })?;
        let used = avail
            .checked_add(Self::avail_bytes(size))
            .and_then(|end| end.checked_add(3))
            .map(|end| end & !3)
            .ok_or(Error::AddressOverflow { what: "used ring" })?;
        Self::new(size, base, avail, used)
    }

    /// Bytes a [`contiguous`](Self::contiguous) layout of `size` spans (the DMA allocation).
    pub fn contiguous_bytes(size: u16) -> u64 {
        let avail_end = Self::desc_bytes(size).saturating_add(Self::avail_bytes(size));
        let used = avail_end.saturating_add(3) & !3;
        used.saturating_add(Self::used_bytes(size))
    }

    fn desc_bytes(size: u16) -> u64 {
        u64::from(size).saturating_mul(16)
    }

    fn avail_bytes(size: u16) -> u64 {
        u64::from(size).saturating_mul(2).saturating_add(6)
    }

    fn used_bytes(size: u16) -> u64 {
        u64::from(size).saturating_mul(8).saturating_add(6)
    }

    /// Number of descriptors (and ring entries).
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Address of the descriptor table (`queue_desc`).
    pub fn desc_addr(&self) -> u64 {
        self.desc
    }

    /// Address of the available ring (`queue_driver`).
    pub fn avail_addr(&self) -> u64 {
        self.avail
    }

    /// Address of the used ring (`queue_device`).
    pub fn used_addr(&self) -> u64 {
        self.used
    }

    // Field addresses. `new` checked that every part fits below `u64::MAX`, and callers pass
    // indices below `size`, so the wrapping arithmetic never wraps.

    /// Address of descriptor `index`.
    pub fn desc(&self, index: u16) -> u64 {
        self.desc.wrapping_add(u64::from(index).wrapping_mul(16))
    }

    /// Address of the available ring's `flags`.
    pub fn avail_flags(&self) -> u64 {
        self.avail
    }

    /// Address of the available ring's `idx`.
    pub fn avail_idx(&self) -> u64 {
        self.avail.wrapping_add(2)
    }

    /// Address of available ring entry `slot`.
    pub fn avail_ring(&self, slot: u16) -> u64 {
        self.avail
            .wrapping_add(4)
            .wrapping_add(u64::from(slot).wrapping_mul(2))
    }

    /// Address of `used_event` (after the available ring's entries).
    pub fn used_event(&self) -> u64 {
        self.avail_ring(self.size)
    }

    /// Address of the used ring's `flags`.
    pub fn used_flags(&self) -> u64 {
        self.used
    }

    /// Address of the used ring's `idx`.
    pub fn used_idx(&self) -> u64 {
        self.used.wrapping_add(2)
    }

    /// Address of used ring element `slot` (`id` at +0, `len` at +4).
    pub fn used_elem(&self, slot: u16) -> u64 {
        self.used
            .wrapping_add(4)
            .wrapping_add(u64::from(slot).wrapping_mul(8))
    }

    /// Address of `avail_event` (after the used ring's elements).
    pub fn avail_event(&self) -> u64 {
        self.used_elem(self.size)
    }
}
