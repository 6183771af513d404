//! Physical memory ownership: the page allocator (zones + buddy from `lull-buddy`) lives here,
//! and what it hands out is a [`PageBlock`], an owned handle that frees its pages when dropped.
//! No safe code can make a `PageBlock` from an integer, so only pages the holder owns can be
//! written through one, mapped in the kmap window ([`super::paging::Kmap`]) or used as a thread
//! stack ([`super::context::KernelStack`]).
//!
//! `mm` decides which RAM the allocator and the heap get (it reads the firmware map and the
//! command line); arch checks every range against its own record of the boot memory map, the
//! kernel image and the loader's structures before it hands the range over, once.
//!
//! Lock: `PAGES` (interrupts masked) is a leaf.

use alloc::string::String;
use core::ops::Range;

use lull_buddy::{PhysAllocator, ZoneKind, PAGE_SIZE};
use spin::Once;

use super::pvh::BootInfo;
use super::sync::IrqSpinCell;

static PAGES: IrqSpinCell<Option<PhysAllocator>> = IrqSpinCell::new(None);

/// The loader's boot information, recorded at entry (what ranges are checked against).
static BOOT: Once<BootInfo> = Once::new();

pub(super) fn record_boot_info(boot: BootInfo) {
    BOOT.call_once(|| boot);
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Whether `range` is RAM nothing else owns: inside one RAM entry of the boot memory map,
/// above 1 MiB, clear of the kernel image and the loader's structures.
pub(super) fn is_free_ram(range: &Range<u64>) -> bool {
    range.start >= 0x10_0000 && is_unused_ram(range)
}

/// Whether `range` (below 1 MiB too) is RAM in the boot memory map that holds neither the
/// kernel nor the loader's structures (start info, memory map, command line, RSDP).
pub(super) fn is_unused_ram(range: &Range<u64>) -> bool {
    let Some(boot) = BOOT.get() else { return false };
    if range.start >= range.end || range.start == 0 {
        return false;
    }
    let in_ram = boot.memory_map.iter().any(|entry| {
        entry.kind == super::MEMORY_RAM
            && entry.address <= range.start
            && range.end <= entry.address.saturating_add(entry.size)
    });
    let page = |start: u64, len: u64| {
        (start & !(PAGE_SIZE - 1))..(start + len).next_multiple_of(PAGE_SIZE)
    };
    let holes = [
        super::kernel_image_range(),
        page(boot.start_info_address, 64),
        page(boot.memory_map_address, 24 * boot.memory_map.len() as u64),
        page(
            boot.command_line_address,
            boot.command_line.len() as u64 + 1,
        ),
        boot.rsdp_address.map_or(0..0, |rsdp| page(rsdp, 36)),
    ];
    in_ram && !holes.iter().any(|hole| overlaps(hole, range))
}

/// Why the page allocator was not set up.
#[derive(Debug)]
pub enum InitError {
    /// A range is not free RAM (named), or overlaps the heap.
    NotFreeRam(Range<u64>),
    /// The allocator exists already.
    AlreadyDone,
    /// The heap has no region yet (it must be set first).
    NoHeap,
    /// The buddy allocator refused the ranges.
    Buddy(String),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NotFreeRam(range) => {
                write!(f, "[{:#x}-{:#x}) is not free RAM", range.start, range.end)
            }
            InitError::AlreadyDone => write!(f, "already initialised"),
            InitError::NoHeap => write!(f, "the heap must be set up first"),
            InitError::Buddy(error) => write!(f, "{error}"),
        }
    }
}

/// Gives `ranges` to the page allocator. Every range must be free RAM outside the heap; the
/// first successful call wins.
pub fn init_page_allocator(ranges: &[Range<u64>], with_dma_zone: bool) -> Result<(), InitError> {
    // The heap comes first, so the two can be checked not to overlap.
    let Some(heap) = super::heap::region() else {
        return Err(InitError::NoHeap);
    };
    for range in ranges {
        if !is_free_ram(range) || overlaps(&heap, range) {
            return Err(InitError::NotFreeRam(range.clone()));
        }
    }
    let mut pages = PAGES.lock();
    if pages.is_some() {
        return Err(InitError::AlreadyDone);
    }
    let allocator = PhysAllocator::new(ranges, with_dma_zone)
        .map_err(|error| InitError::Buddy(alloc::format!("{error}")))?;
    *pages = Some(allocator);
    Ok(())
}

/// Reads the allocator's state (counts, zones) under its lock.
pub fn with_allocator<R>(f: impl FnOnce(&PhysAllocator) -> R) -> Option<R> {
    PAGES.lock().as_ref().map(f)
}

/// `2^order` contiguous pages, owned: they go back to the allocator when this is dropped.
/// The contents are whatever the RAM held (not zeroed).
#[derive(Debug)]
pub struct PageBlock {
    address: u64,
    order: u8,
}

impl PageBlock {
    /// Allocates `2^order` pages from `zone` (falling back to lower zones as Linux does).
    pub fn alloc(order: u8, zone: ZoneKind) -> Option<PageBlock> {
        let address = PAGES.lock().as_mut()?.alloc(order, zone).ok()?;
        Some(PageBlock { address, order })
    }

    /// Physical (and identity-mapped) address of the first page.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// The block's order (it holds `2^order` pages).
    pub fn order(&self) -> u8 {
        self.order
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        (PAGE_SIZE << self.order) as usize
    }

    /// The block's bytes through the identity map.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        // SAFETY: the block is RAM the allocator handed to this handle alone (it is not freed,
        // mapped elsewhere or used as a stack while the handle lives: those uses consume the
        // handle), identity-mapped for the kernel's life; `&mut self` makes the slice unique.
        // RAM always holds some value, so every byte is initialised as far as u8 goes.
        unsafe { core::slice::from_raw_parts_mut(self.address as usize as *mut u8, self.size()) }
    }

    /// Gives up ownership without freeing (memory arch keeps for good: page tables, the stacks
    /// of CPUs that never stop).
    pub(super) fn leak(self) -> u64 {
        let address = self.address;
        core::mem::forget(self);
        address
    }
}

impl Drop for PageBlock {
    fn drop(&mut self) {
        if let Some(pages) = PAGES.lock().as_mut() {
            // Cannot fail: the block came from this allocator and is freed once.
            let _ = pages.free(self.address, self.order);
        }
    }
}
