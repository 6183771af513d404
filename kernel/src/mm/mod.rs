//! Memory management at boot: the firmware memory map, the kernel heap, the physical page
//! allocator (zones + buddy, from `lull-buddy`) and the kernel page tables.
//!
//! Boot does not touch RAM it does not use: the page allocator keeps its state in side tables
//! on the heap, and page tables are built with large pages.

pub mod iomem;
pub mod kmap;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};
use lull_cmdline::{Kind, ParamSpec};

use lull_buddy::{ZoneKind, ORDER_COUNT, PAGE_SIZE};

pub use crate::arch::memory::PageBlock;
use crate::arch::{self, BootInfo, MEMORY_RAM};
use crate::kernel::locking::IrqSafeLock;

/// Parameters of memory management (`mem=` is also read early, before the heap exists).
pub const PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "mem",
    kind: Kind::Size,
    default: "0",
    help: "Use at most this much RAM (K/M/G suffixes); 0 means all of it.",
}];

/// Whether this kernel was built with ZONE_DMA.
pub const WITH_DMA_ZONE: bool = cfg!(feature = "zone-dma");

/// Heap reserved beyond the page allocator's metadata, for everything else the kernel keeps.
const HEAP_BASE_BYTES: u64 = 16 << 20;

/// Size of a kernel stack (order 4): the pool below the heap is counted in these.
const BOOT_STACK_BYTES: u64 = 64 << 10;

/// Room between the kernel image and the heap (without ZONE_DMA) for the page allocator's
/// first blocks, which the buddy allocator hands out first (smallest fitting block first):
/// at least this much for the identity map's page tables (7 frames for 4 GiB), up to the next
/// 64 KiB boundary ...
const BOOT_PAGE_TABLE_BYTES: u64 = 8 * PAGE_SIZE;

/// ... then the kernel stacks of the threads started before the prompt (the shell and the
/// device probe).
const BOOT_PAGE_POOL_BYTES: u64 = 2 * BOOT_STACK_BYTES;

/// What boot learnt about memory, for `meminfo`.
struct MemoryLayout {
    /// Usable RAM from the firmware map (after `mem=`), page aligned.
    ram: Vec<Range<u64>>,
    /// What the kernel itself holds outside the page allocator, with a label.
    reserved: Vec<(Range<u64>, &'static str)>,
    /// Bytes of RAM (type 1) the firmware map reported, before `mem=`.
    firmware_ram_bytes: u64,
    page_table_frames: usize,
    /// The firmware's memory map as given: `(address, size, type)`.
    firmware_map: Vec<(u64, u64, u32)>,
}

static LAYOUT: IrqSafeLock<Option<MemoryLayout>> = IrqSafeLock::new(None);

/// The page below 1 MiB set aside for the SMP trampoline (0: none found). Low memory is never
/// given to the page allocator, so only the boot structures and firmware can be in the way.
static TRAMPOLINE_PAGE: AtomicU64 = AtomicU64::new(0);

/// Preferred trampoline page (Linux's real-mode trampoline also sits low; 0x8000 is clear of
/// the BIOS data area, the PVH start info our VMM puts at 0x6000, and the EBDA).
const PREFERRED_TRAMPOLINE_PAGE: u64 = 0x8000;

/// Picks a page below 640 KiB that the firmware map calls RAM and that holds none of the
/// boot structures (`avoid`); 0x8000 if it qualifies, else the lowest that does.
fn pick_trampoline_page(firmware_ram: &[Range<u64>], avoid: &[Range<u64>]) -> Option<u64> {
    let usable = |page: u64| {
        let range = page..page + PAGE_SIZE;
        firmware_ram
            .iter()
            .any(|ram| ram.start <= range.start && range.end <= ram.end)
            && !avoid
                .iter()
                .any(|hole| hole.start < range.end && range.start < hole.end)
    };
    core::iter::once(PREFERRED_TRAMPOLINE_PAGE)
        .chain((1..0xA0).map(|page| page * PAGE_SIZE))
        .find(|&page| usable(page))
}

/// The page reserved for the SMP trampoline, if boot found one.
pub fn trampoline_page() -> Option<u64> {
    Some(TRAMPOLINE_PAGE.load(Ordering::Relaxed)).filter(|&page| page != 0)
}

fn page_down(value: u64) -> u64 {
    value & !(PAGE_SIZE - 1)
}

fn page_up(value: u64) -> u64 {
    value.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// Subtracts `hole` from every range in `ranges`.
fn subtract(ranges: &[Range<u64>], hole: &Range<u64>, out: &mut Vec<Range<u64>>) {
    for range in ranges {
        if hole.end <= range.start || hole.start >= range.end {
            out.push(range.clone());
            continue;
        }
        if range.start < hole.start {
            out.push(range.start..hole.start);
        }
        if hole.end < range.end {
            out.push(hole.end..range.end);
        }
    }
}

/// A small fixed scratch list used before the heap exists (the memory map is short; entries
/// beyond the capacity are ignored with a warning after the heap is up).
struct EarlyRanges {
    items: [Range<u64>; 128],
    len: usize,
    dropped: usize,
}

impl EarlyRanges {
    fn new() -> Self {
        Self {
            items: [const { 0..0 }; 128],
            len: 0,
            dropped: 0,
        }
    }
    fn push(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        if self.len < self.items.len() {
            self.items[self.len] = range;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }
    fn as_slice(&self) -> &[Range<u64>] {
        &self.items[..self.len]
    }
}

/// Brings up the heap, the page allocator and the page tables. `mem_limit` is `mem=`.
pub fn init(boot: &BootInfo, mem_limit: Option<u64>) {
    // 1. Usable RAM from the memory map, page aligned, capped by mem=. The map itself is
    //    copied now (for /proc/iomem): it lives in low memory, unmapped once paging is set up.
    let mut firmware_map = [(0u64, 0u64, 0u32); 128];
    let firmware_entries = boot.memory_map.len().min(firmware_map.len());
    for (slot, entry) in firmware_map.iter_mut().zip(boot.memory_map) {
        *slot = (entry.address, entry.size, entry.kind);
    }
    let mut ram = EarlyRanges::new();
    let mut firmware_ram_bytes = 0u64;
    for entry in boot.memory_map {
        if entry.kind != MEMORY_RAM {
            continue;
        }
        firmware_ram_bytes += entry.size;
        let start = page_up(entry.address);
        let mut end = page_down(entry.address.saturating_add(entry.size));
        if let Some(limit) = mem_limit {
            end = end.min(page_down(limit));
        }
        ram.push(start..end);
    }

    // 2. What must not be handed out: low memory (firmware, boot structures), the kernel
    //    image, the start info, the memory map and the command line where the loader put them.
    let image = arch::kernel_image_range();
    let command_line_end = boot.command_line_address + boot.command_line.len() as u64 + 1;
    let boot_holes: [(Range<u64>, &'static str); 5] = [
        (0..0x10_0000, "firmware and low memory"),
        (page_down(image.start)..page_up(image.end), "kernel image"),
        (
            page_down(boot.start_info_address)..page_up(boot.start_info_address + 64),
            "PVH start info",
        ),
        (
            page_down(boot.memory_map_address)
                ..page_up(boot.memory_map_address + 24 * boot.memory_map.len() as u64),
            "memory map",
        ),
        (
            page_down(boot.command_line_address)..page_up(command_line_end),
            "boot command line",
        ),
    ];

    // 3. Carve the heap from the first free range large enough: page-allocator metadata plus
    //    room for everything else, including a generous margin for the command line.
    let heap_bytes = page_up(
        lull_buddy::metadata_bytes(ram.as_slice(), WITH_DMA_ZONE) as u64
            + HEAP_BASE_BYTES
            + 16 * boot.command_line.len() as u64,
    );
    let mut free_ranges = EarlyRanges::new();
    for range in ram.as_slice() {
        free_ranges.push(range.clone());
    }
    for (hole, _) in &boot_holes {
        let mut next = EarlyRanges::new();
        for range in free_ranges.as_slice() {
            if hole.end <= range.start || hole.start >= range.end {
                next.push(range.clone());
                continue;
            }
            next.push(range.start..hole.start.max(range.start));
            next.push(hole.end.min(range.end)..range.end);
        }
        free_ranges = next;
    }
    // Where the heap goes. With ZONE_DMA built: above 16 MiB, so the DMA zone stays free for
    // devices that need it (Linux keeps early allocations out of it). Without it: right after
    // the kernel image, leaving only a small pool in between for boot's page allocations (the
    // page tables and the first kernel stacks). The host may back guest RAM with 2 MiB pages
    // (QEMU asks for transparent huge pages), and the first touch of one costs the host a 2 MiB
    // fault: 0.4 ms measured when the host has a free huge page at hand, 14 ms when it has to
    // find fresh memory. The image already occupies the 2 MiB page it ends in, so packing boot's
    // heap use and first page allocations there instead of at 16 and 33 MiB saves two of those.
    let heap_floor = if WITH_DMA_ZONE {
        16 << 20
    } else {
        (page_up(image.end) + BOOT_PAGE_TABLE_BYTES).next_multiple_of(BOOT_STACK_BYTES)
            + BOOT_PAGE_POOL_BYTES
    };
    let fits_from = |floor: u64| {
        free_ranges.as_slice().iter().find_map(|range| {
            let start = range.start.max(floor);
            let end = range.end.min(4 << 30);
            (end > start && end - start >= heap_bytes).then(|| {
                // The heap ends on a 2 MiB boundary when there is room, so the page allocator
                // has no small blocks right after it: the buddy allocator hands out its
                // smallest fitting block first, and those should be the pool's.
                let aligned = (start + heap_bytes).next_multiple_of(2 << 20);
                start..if aligned <= end {
                    aligned
                } else {
                    start + heap_bytes
                }
            })
        })
    };
    let Some(heap) = fits_from(heap_floor).or_else(|| fits_from(0)) else {
        crate::kernel::printk::emergency_print(format_args!(
            "Lull: no RAM range of {} KiB below 4 GiB for the kernel heap\n",
            heap_bytes / 1024
        ));
        arch::power::exit_failure(arch::power::EXIT_PANIC);
    };
    // arch checks the range against its own record of the memory map before using it.
    if let Err(why) = arch::heap::init_region(heap.clone()) {
        crate::kernel::printk::emergency_print(format_args!(
            "Lull: heap at {:#x}: {why}\n",
            heap.start
        ));
        arch::power::exit_failure(arch::power::EXIT_PANIC);
    }

    // 4. The page allocator gets everything else.
    let mut reserved: Vec<(Range<u64>, &'static str)> = boot_holes.to_vec();
    let mut low_avoid: Vec<Range<u64>> = boot_holes[1..].iter().map(|(r, _)| r.clone()).collect();
    if let Some(rsdp) = boot.rsdp_address {
        low_avoid.push(page_down(rsdp)..page_up(rsdp + 36));
    }
    let firmware_ram: Vec<Range<u64>> = boot
        .memory_map
        .iter()
        .filter(|entry| entry.kind == MEMORY_RAM)
        .map(|entry| entry.address..entry.address.saturating_add(entry.size))
        .collect();
    match pick_trampoline_page(&firmware_ram, &low_avoid) {
        Some(page) => match arch::smp::reserve_trampoline_page(page) {
            Ok(()) => {
                TRAMPOLINE_PAGE.store(page, Ordering::Relaxed);
                reserved.push((page..page + PAGE_SIZE, "SMP trampoline"));
            }
            Err(error) => crate::pr_warn!("mm: {error}; only the boot CPU can run"),
        },
        None => crate::pr_warn!("mm: no free RAM page below 640 KiB; only the boot CPU can run"),
    }
    reserved.push((heap.clone(), "kernel heap"));
    let mut managed: Vec<Range<u64>> = free_ranges.as_slice().to_vec();
    let mut next = Vec::new();
    subtract(&managed, &heap, &mut next);
    managed = next;
    if let Err(error) = arch::memory::init_page_allocator(&managed, WITH_DMA_ZONE) {
        panic!("page allocator: {error}");
    }
    if ram.dropped != 0 {
        crate::pr_warn!(
            "mm: memory map has more than 128 RAM ranges; {} ignored",
            ram.dropped
        );
    }

    // 5. Page tables covering all RAM.
    let top = ram.as_slice().iter().map(|r| r.end).max().unwrap_or(0);
    let page_table_frames = match arch::paging::install_identity_map(top) {
        Ok(frames) => frames,
        Err(_) => panic!("out of memory building the kernel page tables"),
    };

    for (range, label) in &reserved {
        if range.end > range.start {
            crate::pr_debug!(
                "mm: reserved [{:#010x}-{:#010x}] {label}",
                range.start,
                range.end - 1
            );
        }
    }
    *LAYOUT.lock() = Some(MemoryLayout {
        ram: ram.as_slice().to_vec(),
        reserved,
        firmware_ram_bytes,
        page_table_frames,
        firmware_map: firmware_map[..firmware_entries].to_vec(),
    });
    crate::printk!(
        "mm: {} MiB usable RAM, heap {} KiB at {:#x}, {} page-table frames, ZONE_DMA {}",
        ram.as_slice().iter().map(|r| r.end - r.start).sum::<u64>() >> 20,
        (heap.end - heap.start) / 1024,
        heap.start,
        page_table_frames,
        if WITH_DMA_ZONE { "built" } else { "not built" }
    );
}

/// Allocates `2^order` contiguous pages from `zone` (with Linux fallback to lower zones),
/// owned by the caller: they are freed when the block is dropped.
pub fn alloc_pages(order: u8, zone: ZoneKind) -> Option<PageBlock> {
    PageBlock::alloc(order, zone)
}

/// (total, free) pages managed by the page allocator.
pub fn page_counts() -> (u64, u64) {
    arch::memory::with_allocator(|p| (p.total_pages(), p.free_pages())).unwrap_or((0, 0))
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Whether the page allocator has a DMA zone.
pub fn has_dma_zone() -> bool {
    arch::memory::with_allocator(|p| p.has_dma_zone()).unwrap_or(false)
}

fn zone_range(kind: ZoneKind) -> Range<u64> {
    match kind {
        ZoneKind::Dma => 0..16 << 20,
        ZoneKind::Dma32 if WITH_DMA_ZONE => 16 << 20..4 << 30,
        ZoneKind::Dma32 => 0..4 << 30,
        ZoneKind::Normal => 4 << 30..u64::MAX,
    }
}

fn overlap(a: &Range<u64>, b: &Range<u64>) -> u64 {
    a.end.min(b.end).saturating_sub(a.start.max(b.start))
}

/// Renders the `meminfo` report (also `/proc/meminfo`).
pub fn meminfo() -> String {
    let mut out = String::new();
    let layout = LAYOUT.lock();
    let Some(layout) = layout.as_ref() else {
        return String::from("memory not initialised\n");
    };
    let Some(zones) = arch::memory::with_allocator(|pages| {
        (
            pages.free_pages(),
            pages.total_pages(),
            pages.zones().collect::<Vec<_>>(),
        )
    }) else {
        return String::from("memory not initialised\n");
    };
    let (free_pages, total_pages, zones) = zones;
    let usable: u64 = layout.ram.iter().map(|r| r.end - r.start).sum();
    let (heap_used, heap_free) = arch::heap::usage();
    let _ = writeln!(out, "MemTotal:       {:>10} kB", usable / 1024);
    let _ = writeln!(
        out,
        "MemFree:        {:>10} kB",
        free_pages * PAGE_SIZE / 1024
    );
    let _ = writeln!(
        out,
        "FirmwareRAM:    {:>10} kB",
        layout.firmware_ram_bytes / 1024
    );
    let _ = writeln!(out, "HeapUsed:       {:>10} kB", heap_used / 1024);
    let _ = writeln!(out, "HeapFree:       {:>10} kB", heap_free / 1024);
    let _ = writeln!(
        out,
        "PageTables:     {:>10} kB",
        layout.page_table_frames as u64 * PAGE_SIZE / 1024
    );
    let _ = writeln!(
        out,
        "Zone      present    managed   reserved       free   free per order 0..{}",
        ORDER_COUNT - 1
    );
    for stats in zones {
        let range = zone_range(stats.kind);
        let present: u64 = layout.ram.iter().map(|r| overlap(r, &range)).sum::<u64>() / PAGE_SIZE;
        let reserved = present.saturating_sub(stats.present_pages);
        let _ = write!(
            out,
            "{:<8} {:>8} {:>10} {:>10} {:>10}  ",
            stats.kind.name(),
            present,
            stats.present_pages,
            reserved,
            stats.free_pages
        );
        for count in stats.free_blocks {
            let _ = write!(out, " {count}");
        }
        out.push('\n');
    }
    let total_present: u64 = layout.ram.iter().map(|r| r.end - r.start).sum::<u64>() / PAGE_SIZE;
    let _ = writeln!(
        out,
        "Total    {:>8} {:>10}             {:>10}",
        total_present, total_pages, free_pages
    );
    let _ = writeln!(
        out,
        "(pages of 4 KiB; present = RAM in the zone, managed = in the buddy allocator)"
    );
    out
}

/// The firmware memory map as the loader gave it: `(address, size, type)` (E820 types).
pub fn firmware_map() -> Vec<(u64, u64, u32)> {
    LAYOUT
        .lock()
        .as_ref()
        .map(|l| l.firmware_map.clone())
        .unwrap_or_default()
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Labelled reserved ranges (for `dmesg`-style reports and tests).
pub fn reserved_ranges() -> Vec<(Range<u64>, &'static str)> {
    LAYOUT
        .lock()
        .as_ref()
        .map(|l| l.reserved.clone())
        .unwrap_or_default()
}
