//! Lull's physical page allocator: memory zones, each managed by a binary buddy allocator.
//!
//! Physical memory is split into zones by what devices can reach, as in Linux:
//!
//! | zone   | frames                         | exists when                                   |
//! |--------|--------------------------------|-----------------------------------------------|
//! | DMA    | below 16 MiB (ISA DMA)         | `with_dma_zone` (the kernel's `zone-dma` feature) |
//! | DMA32  | below 4 GiB (from 0 without DMA) | always (may be empty)                        |
//! | Normal | 4 GiB and above                | always (empty on small machines)              |
//!
//! Linux 2.6.21 made ZONE_DMA optional: a machine with no ISA DMA devices should not keep
//! 16 MiB aside for them. Requests fall back downward only (Normal → DMA32 → DMA), never upward,
//! so a DMA32 request never returns memory a 32-bit device cannot reach.
//!
//! Each zone is a buddy allocator with orders `0..=MAX_ORDER` whose bookkeeping lives in side
//! tables, so the managed memory itself is never touched.
//! [`metadata_bytes`] tells the kernel how much heap [`PhysAllocator::new`] will take, before it
//! has a heap to allocate from.
//!
//! ```
//! use lull_buddy::{metadata_bytes, PhysAllocator, ZoneKind};
//!
//! // 1 MiB .. 256 MiB usable; no ZONE_DMA, so everything below 4 GiB is DMA32.
//! let usable = [0x10_0000..0x1000_0000];
//! let heap_for_tables = metadata_bytes(&usable, false);
//! assert!(heap_for_tables < 600 * 1024);
//! let mut pages = PhysAllocator::new(&usable, false)?;
//! let block = pages.alloc(2, ZoneKind::Normal)?; // no Normal memory: served from DMA32
//! assert_eq!(pages.zone_of(block), Some(ZoneKind::Dma32));
//! pages.free(block, 2)?;
//! assert_eq!(pages.free_pages(), pages.total_pages());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod layout;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
mod zone;

use core::fmt;
use core::ops::Range;

use layout::{built_zones, zone_bounds, ZoneLayout};
use zone::Zone;

/// Size of one page frame in bytes.
pub const PAGE_SIZE: u64 = 4096;

/// Largest block order: blocks of `2^MAX_ORDER` pages (4 MiB).
pub const MAX_ORDER: u8 = 10;

/// Number of block orders, `0..=MAX_ORDER`.
pub const ORDER_COUNT: usize = MAX_ORDER as usize + 1;

/// A memory zone: the physical range a class of device can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ZoneKind {
    /// Below 16 MiB, for ISA DMA; only built when asked for.
    Dma,
    /// Below 4 GiB, for 32-bit DMA masters.
    Dma32,
    /// Everything from 4 GiB up.
    Normal,
}

impl ZoneKind {
    /// Every zone kind, lowest memory first.
    pub const ALL: [ZoneKind; 3] = [ZoneKind::Dma, ZoneKind::Dma32, ZoneKind::Normal];

    /// The name Linux prints for this zone (`/proc/buddyinfo`, `/proc/zoneinfo`).
    pub fn name(self) -> &'static str {
        match self {
            ZoneKind::Dma => "DMA",
            ZoneKind::Dma32 => "DMA32",
            ZoneKind::Normal => "Normal",
        }
    }

    /// The zones a request for this zone may be served from, in the order they are tried.
    ///
    /// Only lower zones are fallbacks: their memory is reachable by everything that can reach
    /// this zone, while higher memory would break a device's addressing limit.
    pub fn fallback_order(self) -> &'static [ZoneKind] {
        match self {
            ZoneKind::Normal => &[ZoneKind::Normal, ZoneKind::Dma32, ZoneKind::Dma],
            ZoneKind::Dma32 => &[ZoneKind::Dma32, ZoneKind::Dma],
            ZoneKind::Dma => &[ZoneKind::Dma],
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ZoneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why [`PhysAllocator::new`] could not build the allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The zone spans more page frames than 32-bit page indices can number (16 TiB of present
    /// sections); such a memory map is not supported.
    ZoneTooLarge { zone: ZoneKind },
    /// The heap could not provide a side table of `bytes` bytes: size the heap with
    /// [`metadata_bytes`] before building the allocator.
    OutOfMetadataMemory { zone: ZoneKind, bytes: usize },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::ZoneTooLarge { zone } => {
                write!(f, "zone {zone} spans too much memory for 32-bit page indices")
            }
            InitError::OutOfMetadataMemory { zone, bytes } => write!(
                f,
                "no heap for the {bytes}-byte side table of zone {zone}; size the heap with metadata_bytes()"
            ),
        }
    }
}

impl core::error::Error for InitError {}

/// Why [`PhysAllocator::alloc`] returned no memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocError {
    /// `order` is above [`MAX_ORDER`].
    OrderTooLarge { order: u8 },
    /// The requested zone was not built (DMA without `with_dma_zone`).
    NoSuchZone { zone: ZoneKind },
    /// Neither the zone nor any of its fallbacks has a free block of this order.
    OutOfMemory { order: u8, zone: ZoneKind },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::OrderTooLarge { order } => {
                write!(f, "order {order} is above the maximum order {MAX_ORDER}")
            }
            AllocError::NoSuchZone { zone } => write!(
                f,
                "zone {zone} does not exist (ZONE_DMA is built only with the zone-dma feature)"
            ),
            AllocError::OutOfMemory { order, zone } => write!(
                f,
                "no free block of order {order} in zone {zone} or its fallbacks"
            ),
        }
    }
}

impl core::error::Error for AllocError {}

/// Why [`PhysAllocator::free`] refused a block; the allocator is unchanged in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// `order` is above [`MAX_ORDER`].
    OrderTooLarge { order: u8 },
    /// The address is not aligned to the block size `PAGE_SIZE << order`.
    Misaligned { address: u64, order: u8 },
    /// The address lies outside every zone's span.
    OutOfRange { address: u64 },
    /// The address lies in a hole of a zone (not usable memory).
    Hole { address: u64 },
    /// The block is already free (or lies inside a free block).
    DoubleFree { address: u64 },
    /// The address lies inside an allocated block but is not where that block starts.
    NotBlockStart { address: u64 },
    /// The block was allocated with a different order.
    OrderMismatch {
        address: u64,
        order: u8,
        allocated_order: u8,
    },
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FreeError::OrderTooLarge { order } => {
                write!(f, "order {order} is above the maximum order {MAX_ORDER}")
            }
            FreeError::Misaligned { address, order } => {
                write!(f, "{address:#x} is not aligned for an order-{order} block")
            }
            FreeError::OutOfRange { address } => {
                write!(f, "{address:#x} is outside every memory zone")
            }
            FreeError::Hole { address } => write!(f, "{address:#x} is not usable memory"),
            FreeError::DoubleFree { address } => write!(f, "{address:#x} is already free"),
            FreeError::NotBlockStart { address } => {
                write!(
                    f,
                    "{address:#x} is inside an allocated block, not at its start"
                )
            }
            FreeError::OrderMismatch {
                address,
                order,
                allocated_order,
            } => write!(
                f,
                "{address:#x} was allocated with order {allocated_order}, freed with order {order}"
            ),
        }
    }
}

impl core::error::Error for FreeError {}

/// A snapshot of one zone, for `meminfo`-style reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneStats {
    pub kind: ZoneKind,
    /// Physical address of the zone's lowest usable page (0 for an empty zone).
    pub span_start: u64,
    /// Physical address one past the zone's highest usable page (0 for an empty zone).
    pub span_end: u64,
    /// Usable pages in the span (holes excluded).
    pub present_pages: u64,
    /// Pages currently free.
    pub free_pages: u64,
    /// Free blocks per order, index = order (the columns of `/proc/buddyinfo`).
    pub free_blocks: [u64; ORDER_COUNT],
}

/// Heap bytes that [`PhysAllocator::new`] allocates for its side tables, for the same arguments.
///
/// Runs without allocating, so the kernel can size its heap first. The figure is the exact sum
/// of the requested table sizes; the heap allocator's own per-allocation slack (a few tables per
/// zone) comes on top. Roughly 9 bytes per page of every 4 MiB section holding usable memory,
/// plus 4 bytes per 4 MiB of span (holes included). Saturates instead of overflowing.
pub fn metadata_bytes(regions: &[Range<u64>], with_dma_zone: bool) -> usize {
    let bytes = built_zones(with_dma_zone)
        .map(|kind| ZoneLayout::compute(regions, zone_bounds(kind, with_dma_zone)).metadata_bytes())
        .fold(0u64, u64::saturating_add);
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// The physical page allocator: one buddy allocator per zone.
///
/// Not synchronised: the kernel wraps it in its own lock (it is called with that lock held).
pub struct PhysAllocator {
    /// Indexed by [`ZoneKind::slot`]; `None` for a zone this configuration does not build.
    zones: [Option<Zone>; 3],
}

impl PhysAllocator {
    /// Build the allocator over `usable` physical byte ranges, every usable page free.
    ///
    /// `usable` is the firmware memory map minus what is already in use (kernel image, heap).
    /// Ranges may be unsorted, overlap or touch, and need not be page aligned: partial pages are
    /// dropped. They are split at 16 MiB (only when `with_dma_zone`) and 4 GiB into zones.
    /// Cost: proportional to the side tables ([`metadata_bytes`]) plus one list insertion per
    /// maximal aligned block; the managed memory is not touched.
    pub fn new(usable: &[Range<u64>], with_dma_zone: bool) -> Result<PhysAllocator, InitError> {
        let mut zones = [None, None, None];
        for kind in built_zones(with_dma_zone) {
            zones[kind.slot()] = Some(Zone::new(kind, usable, zone_bounds(kind, with_dma_zone))?);
        }
        Ok(PhysAllocator { zones })
    }

    /// Whether the DMA zone was built.
    pub fn has_dma_zone(&self) -> bool {
        self.zones[ZoneKind::Dma.slot()].is_some()
    }

    /// Allocate `2^order` contiguous pages, aligned to their size, from `want` or a lower zone
    /// (see [`ZoneKind::fallback_order`]). Returns the physical address of the first page.
    ///
    /// O(MAX_ORDER) per zone tried; never scans a free list.
    pub fn alloc(&mut self, order: u8, want: ZoneKind) -> Result<u64, AllocError> {
        if order > MAX_ORDER {
            return Err(AllocError::OrderTooLarge { order });
        }
        if self.zones[want.slot()].is_none() {
            return Err(AllocError::NoSuchZone { zone: want });
        }
        for &kind in want.fallback_order() {
            if let Some(zone) = &mut self.zones[kind.slot()] {
                if let Some(frame) = zone.alloc(order) {
                    return Ok(frame * PAGE_SIZE);
                }
            }
        }
        Err(AllocError::OutOfMemory { order, zone: want })
    }

    /// Return a block that [`PhysAllocator::alloc`] handed out with the same `order`.
    ///
    /// Coalesces with free buddies up to [`MAX_ORDER`]: O(MAX_ORDER). Misaligned addresses,
    /// addresses outside every zone or in a hole, double frees, addresses inside an allocated
    /// block and order mismatches are refused with an error and change nothing.
    pub fn free(&mut self, address: u64, order: u8) -> Result<(), FreeError> {
        if order > MAX_ORDER {
            return Err(FreeError::OrderTooLarge { order });
        }
        if !address.is_multiple_of(PAGE_SIZE << order) {
            return Err(FreeError::Misaligned { address, order });
        }
        let frame = address / PAGE_SIZE;
        let zone = self
            .zones
            .iter_mut()
            .flatten()
            .find(|zone| zone.contains_frame(frame))
            .ok_or(FreeError::OutOfRange { address })?;
        zone.free(frame, order)
    }

    /// The zone whose span holds `address`, if any (holes inside a span count as in the zone).
    pub fn zone_of(&self, address: u64) -> Option<ZoneKind> {
        let frame = address / PAGE_SIZE;
        self.built()
            .find(|zone| zone.contains_frame(frame))
            .map(Zone::kind)
    }

    /// Statistics for every built zone (empty ones included), lowest memory first.
    pub fn zones(&self) -> impl Iterator<Item = ZoneStats> + '_ {
        self.built().map(Zone::stats)
    }

    /// Statistics for one zone, or `None` when it was not built.
    pub fn zone_stats(&self, kind: ZoneKind) -> Option<ZoneStats> {
        self.zones[kind.slot()].as_ref().map(Zone::stats)
    }

    /// Usable pages in all zones.
    pub fn total_pages(&self) -> u64 {
        self.built().map(Zone::present_pages).sum()
    }

    /// Free pages in all zones.
    pub fn free_pages(&self) -> u64 {
        self.built().map(Zone::free_pages).sum()
    }

    fn built(&self) -> impl Iterator<Item = &Zone> + '_ {
        self.zones.iter().flatten()
    }

    #[cfg(test)]
    fn table_bytes(&self) -> usize {
        self.built().map(Zone::table_bytes).sum()
    }

    #[cfg(test)]
    fn check_consistency(&self) {
        for zone in self.built() {
            zone.check_consistency();
        }
    }
}

/// A `/proc/buddyinfo`-style table: one line per zone with memory, free blocks per order.
///
/// ```text
/// Node 0, zone    DMA32      1      0      1      1      1      1      1      1      1      1    111
/// ```
impl fmt::Display for PhysAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for stats in self.zones().filter(|stats| stats.present_pages > 0) {
            write!(f, "Node 0, zone {:>8}", stats.kind.name())?;
            for count in stats.free_blocks {
                write!(f, " {count:>6}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for PhysAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.zones()).finish()
    }
}
