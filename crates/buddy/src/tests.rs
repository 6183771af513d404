//! Unit tests of the allocator through its public API, with brute-force invariant checks.

#![allow(
    clippy::single_range_in_vec_init,
    reason = "a memory map with one usable range is a common case, not a mistaken `vec![a..b]`"
)]

use alloc::vec::Vec;
use core::ops::Range;

use crate::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Bytes in a block of `MAX_ORDER`.
const MAX_BLOCK: u64 = PAGE_SIZE << MAX_ORDER;

fn histogram(allocator: &PhysAllocator, kind: ZoneKind) -> [u64; ORDER_COUNT] {
    allocator.zone_stats(kind).expect("zone built").free_blocks
}

fn all_histograms(allocator: &PhysAllocator) -> Vec<[u64; ORDER_COUNT]> {
    allocator.zones().map(|stats| stats.free_blocks).collect()
}

/// `[0, …, 0, count]`: a histogram of `count` maximal blocks only.
fn only_max_blocks(count: u64) -> [u64; ORDER_COUNT] {
    let mut blocks = [0; ORDER_COUNT];
    blocks[usize::from(MAX_ORDER)] = count;
    blocks
}

/// Allocate order-0 pages from `zone` (and its fallbacks) until none is left.
fn drain_pages(allocator: &mut PhysAllocator, zone: ZoneKind) -> Vec<u64> {
    let mut pages = Vec::new();
    loop {
        match allocator.alloc(0, zone) {
            Ok(address) => pages.push(address),
            Err(AllocError::OutOfMemory { .. }) => return pages,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
}

fn new_allocator(regions: &[Range<u64>], with_dma_zone: bool) -> PhysAllocator {
    let allocator = PhysAllocator::new(regions, with_dma_zone).expect("allocator builds");
    assert_eq!(
        allocator.table_bytes(),
        metadata_bytes(regions, with_dma_zone)
    );
    allocator.check_consistency();
    allocator
}

#[test]
fn allocating_one_page_splits_a_maximal_block_into_one_block_per_order() {
    let mut allocator = new_allocator(&[4 * MIB..8 * MIB], false);
    assert_eq!(histogram(&allocator, ZoneKind::Dma32), only_max_blocks(1));

    let page = allocator.alloc(0, ZoneKind::Dma32).unwrap();
    assert_eq!(page, 4 * MIB, "the lower half is kept at each split");
    let mut split = [1; ORDER_COUNT];
    split[usize::from(MAX_ORDER)] = 0;
    assert_eq!(histogram(&allocator, ZoneKind::Dma32), split);
    assert_eq!(allocator.free_pages(), 1023);
    allocator.check_consistency();

    allocator.free(page, 0).unwrap();
    assert_eq!(histogram(&allocator, ZoneKind::Dma32), only_max_blocks(1));
    assert_eq!(allocator.free_pages(), 1024);
    allocator.check_consistency();
}

#[test]
fn blocks_are_aligned_to_their_size_and_coalesce_back_in_any_free_order() {
    let mut allocator = new_allocator(&[0..16 * MIB], false);
    let initial = all_histograms(&allocator);
    let mut blocks = Vec::new();
    for order in [3, 0, 7, 1, 10, 2, 0, 5, 9, 4] {
        let address = allocator.alloc(order, ZoneKind::Dma32).unwrap();
        assert_eq!(
            address % (PAGE_SIZE << order),
            0,
            "order {order} misaligned"
        );
        blocks.push((address, order));
    }
    allocator.check_consistency();
    // Free in an order unrelated to allocation order.
    blocks.sort_by_key(|&(address, _)| address.rotate_left(17));
    for (address, order) in blocks {
        allocator.free(address, order).unwrap();
        allocator.check_consistency();
    }
    assert_eq!(all_histograms(&allocator), initial);
}

#[test]
fn freeing_every_other_page_leaves_no_order_one_block_until_the_rest_is_freed() {
    // 9 MiB from an odd page: not a whole number of maximal blocks.
    let regions = [MIB + 3 * PAGE_SIZE..10 * MIB + 3 * PAGE_SIZE];
    let mut allocator = new_allocator(&regions, false);
    let initial = all_histograms(&allocator);
    let total = allocator.total_pages();

    let mut pages = drain_pages(&mut allocator, ZoneKind::Normal);
    assert_eq!(pages.len() as u64, total);
    assert_eq!(allocator.free_pages(), 0);
    assert_eq!(histogram(&allocator, ZoneKind::Dma32), [0; ORDER_COUNT]);

    pages.sort_unstable();
    let (even, odd): (Vec<u64>, Vec<u64>) = pages
        .iter()
        .partition(|&&address| (address / PAGE_SIZE).is_multiple_of(2));
    for &address in &even {
        allocator.free(address, 0).unwrap();
    }
    allocator.check_consistency();
    let mut fragmented = [0; ORDER_COUNT];
    fragmented[0] = even.len() as u64;
    assert_eq!(histogram(&allocator, ZoneKind::Dma32), fragmented);
    assert_eq!(allocator.free_pages(), even.len() as u64);
    // Half the memory is free, yet not even two contiguous pages are.
    assert_eq!(
        allocator.alloc(1, ZoneKind::Normal),
        Err(AllocError::OutOfMemory {
            order: 1,
            zone: ZoneKind::Normal
        })
    );

    for &address in &odd {
        allocator.free(address, 0).unwrap();
    }
    allocator.check_consistency();
    assert_eq!(all_histograms(&allocator), initial);
    assert_eq!(allocator.free_pages(), total);
}

#[test]
fn exhaustion_and_oversized_orders_are_errors() {
    // Three pages: one order-1 block and one order-0 block.
    let mut allocator = new_allocator(&[8 * PAGE_SIZE..11 * PAGE_SIZE], false);
    let out_of_memory = |order| {
        Err(AllocError::OutOfMemory {
            order,
            zone: ZoneKind::Dma32,
        })
    };
    assert_eq!(allocator.alloc(2, ZoneKind::Dma32), out_of_memory(2));
    assert_eq!(
        allocator.alloc(MAX_ORDER + 1, ZoneKind::Dma32),
        Err(AllocError::OrderTooLarge {
            order: MAX_ORDER + 1
        })
    );
    assert_eq!(allocator.alloc(1, ZoneKind::Dma32), Ok(8 * PAGE_SIZE));
    assert_eq!(allocator.alloc(0, ZoneKind::Dma32), Ok(10 * PAGE_SIZE));
    assert_eq!(allocator.alloc(0, ZoneKind::Dma32), out_of_memory(0));
    assert_eq!(allocator.free_pages(), 0);
    allocator.check_consistency();
}

#[test]
fn empty_memory_map_builds_empty_zones() {
    let mut allocator = new_allocator(&[], true);
    assert_eq!(allocator.total_pages(), 0);
    assert_eq!(allocator.zones().count(), 3);
    assert!(allocator.alloc(0, ZoneKind::Dma).is_err());
    assert!(allocator.alloc(0, ZoneKind::Normal).is_err());
    assert_eq!(
        allocator.free(0, 0),
        Err(FreeError::OutOfRange { address: 0 })
    );
    assert_eq!(allocator.to_string(), "");
}

/// 12 MiB of DMA, 16 MiB of DMA32 and 8 MiB of Normal memory, all in maximal blocks.
fn three_zone_map() -> [Range<u64>; 3] {
    [
        4 * MIB..16 * MIB,
        16 * MIB..32 * MIB,
        4 * GIB..4 * GIB + 8 * MIB,
    ]
}

#[test]
fn normal_requests_fall_back_to_dma32_then_dma_and_never_upward() {
    let mut allocator = new_allocator(&three_zone_map(), true);
    let mut served_by = Vec::new();
    while let Ok(address) = allocator.alloc(MAX_ORDER, ZoneKind::Normal) {
        served_by.push(allocator.zone_of(address).unwrap());
    }
    use ZoneKind::*;
    assert_eq!(
        served_by,
        [Normal, Normal, Dma32, Dma32, Dma32, Dma32, Dma, Dma, Dma]
    );
    assert_eq!(allocator.free_pages(), 0);
    allocator.check_consistency();
}

#[test]
fn dma32_requests_fall_back_to_dma_only() {
    let mut allocator = new_allocator(&three_zone_map(), true);
    let mut served_by = Vec::new();
    while let Ok(address) = allocator.alloc(MAX_ORDER, ZoneKind::Dma32) {
        served_by.push(allocator.zone_of(address).unwrap());
    }
    use ZoneKind::*;
    assert_eq!(served_by, [Dma32, Dma32, Dma32, Dma32, Dma, Dma, Dma]);
    // Normal memory is untouched: a DMA32 request must never reach above 4 GiB.
    assert_eq!(histogram(&allocator, Normal), only_max_blocks(2));
    assert_eq!(
        allocator.alloc(0, Dma32),
        Err(AllocError::OutOfMemory {
            order: 0,
            zone: Dma32
        })
    );
}

#[test]
fn dma_requests_never_fall_back_upward() {
    let mut allocator = new_allocator(&three_zone_map(), true);
    for _ in 0..3 {
        let address = allocator.alloc(MAX_ORDER, ZoneKind::Dma).unwrap();
        assert!(address + MAX_BLOCK <= 16 * MIB);
    }
    assert_eq!(
        allocator.alloc(0, ZoneKind::Dma),
        Err(AllocError::OutOfMemory {
            order: 0,
            zone: ZoneKind::Dma
        })
    );
    assert_eq!(histogram(&allocator, ZoneKind::Dma32), only_max_blocks(4));
    assert_eq!(histogram(&allocator, ZoneKind::Normal), only_max_blocks(2));
}

#[test]
fn requests_prefer_their_own_zone_while_it_has_memory() {
    let mut allocator = new_allocator(&three_zone_map(), true);
    let normal = allocator.alloc(0, ZoneKind::Normal).unwrap();
    let dma32 = allocator.alloc(0, ZoneKind::Dma32).unwrap();
    let dma = allocator.alloc(0, ZoneKind::Dma).unwrap();
    assert_eq!(
        (normal, dma32, dma),
        (4 * GIB, 16 * MIB, 4 * MIB),
        "each zone hands out its lowest page first"
    );
}

#[test]
fn without_a_dma_zone_dma32_starts_at_zero_and_dma_requests_fail() {
    let regions = [0..640 * KIB, MIB..64 * MIB];
    let mut allocator = new_allocator(&regions, false);
    assert!(!allocator.has_dma_zone());
    let kinds: Vec<ZoneKind> = allocator.zones().map(|stats| stats.kind).collect();
    assert_eq!(kinds, [ZoneKind::Dma32, ZoneKind::Normal]);
    let dma32 = allocator.zone_stats(ZoneKind::Dma32).unwrap();
    assert_eq!((dma32.span_start, dma32.span_end), (0, 64 * MIB));
    assert_eq!(dma32.present_pages, (640 * KIB + 63 * MIB) / PAGE_SIZE);
    assert_eq!(allocator.zone_stats(ZoneKind::Dma), None);
    assert_eq!(
        allocator.alloc(0, ZoneKind::Dma),
        Err(AllocError::NoSuchZone {
            zone: ZoneKind::Dma
        })
    );
    // Low memory is DMA32 memory now, and Normal requests fall back into it.
    assert_eq!(allocator.zone_of(0), Some(ZoneKind::Dma32));
    let page = allocator.alloc(0, ZoneKind::Normal).unwrap();
    assert_eq!(allocator.zone_of(page), Some(ZoneKind::Dma32));
}

#[test]
fn with_a_dma_zone_low_memory_is_split_at_16_mib() {
    let regions = [0..640 * KIB, MIB..64 * MIB];
    let allocator = new_allocator(&regions, true);
    assert!(allocator.has_dma_zone());
    let dma = allocator.zone_stats(ZoneKind::Dma).unwrap();
    let dma32 = allocator.zone_stats(ZoneKind::Dma32).unwrap();
    assert_eq!((dma.span_start, dma.span_end), (0, 16 * MIB));
    assert_eq!(dma.present_pages, (640 * KIB + 15 * MIB) / PAGE_SIZE);
    assert_eq!((dma32.span_start, dma32.span_end), (16 * MIB, 64 * MIB));
    assert_eq!(histogram(&allocator, ZoneKind::Dma32), only_max_blocks(12));
    assert_eq!(allocator.zone_of(16 * MIB - 1), Some(ZoneKind::Dma));
    assert_eq!(allocator.zone_of(16 * MIB), Some(ZoneKind::Dma32));
}

#[test]
fn holes_are_never_handed_out_and_never_coalesced_across() {
    // A hole inside a section (640 KiB..1 MiB) and a whole-section hole (8..12 MiB).
    let regions = [0..640 * KIB, MIB..8 * MIB, 12 * MIB..16 * MIB];
    let mut allocator = new_allocator(&regions, false);
    let usable = |address: u64| regions.iter().any(|range| range.contains(&address));
    assert_eq!(allocator.total_pages(), (640 * KIB + 11 * MIB) / PAGE_SIZE);

    let pages = drain_pages(&mut allocator, ZoneKind::Dma32);
    assert_eq!(pages.len() as u64, allocator.total_pages());
    assert!(pages.iter().all(|&address| usable(address)));

    for hole in [640 * KIB, MIB - PAGE_SIZE, 8 * MIB, 12 * MIB - PAGE_SIZE] {
        assert_eq!(
            allocator.free(hole, 0),
            Err(FreeError::Hole { address: hole })
        );
    }
    for address in pages {
        allocator.free(address, 0).unwrap();
    }
    allocator.check_consistency();
    // 0..640 KiB is 128 + 32 pages; 1..4 MiB is 256 + 512 pages; then 1 + 1 maximal blocks.
    let mut expected = [0; ORDER_COUNT];
    expected[5] = 1;
    expected[7] = 1;
    expected[8] = 1;
    expected[9] = 1;
    expected[10] = 2;
    assert_eq!(histogram(&allocator, ZoneKind::Dma32), expected);
    // The 1 MiB and 4 MiB neighbours of the hole stay apart: no order-10 block at 0.
    assert!(allocator.alloc(MAX_ORDER, ZoneKind::Dma32).unwrap() >= 4 * MIB);
}

#[test]
fn unaligned_regions_become_maximal_aligned_blocks() {
    // From 100 bytes into page 3 (first whole page: 4) to 12345 bytes into page 3072.
    let regions = [3 * PAGE_SIZE + 100..3 * MAX_BLOCK + 12345];
    let allocator = new_allocator(&regions, false);
    // Frames 4..3075: 4+8+16+…+512 up to 1024, two order-10 blocks, then 2 + 1 pages.
    assert_eq!(allocator.total_pages(), 3075 - 4);
    assert_eq!(
        histogram(&allocator, ZoneKind::Dma32),
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2]
    );
    let stats = allocator.zone_stats(ZoneKind::Dma32).unwrap();
    assert_eq!(
        (stats.span_start, stats.span_end),
        (4 * PAGE_SIZE, 3075 * PAGE_SIZE)
    );
}

#[test]
fn overlapping_and_unsorted_regions_are_merged_not_counted_twice() {
    let regions = [8 * MIB..12 * MIB, 0..6 * MIB, 4 * MIB..9 * MIB];
    let allocator = new_allocator(&regions, false);
    assert_eq!(allocator.total_pages(), 12 * MIB / PAGE_SIZE);
    assert_eq!(histogram(&allocator, ZoneKind::Dma32), only_max_blocks(3));
}

#[test]
fn pci_hole_between_3_and_4_gib_costs_no_per_page_metadata() {
    // A q35-style map: low RAM stops at 3 GiB, the rest is remapped above 4 GiB.
    let regions = [0..640 * KIB, MIB..3 * GIB, 4 * GIB..5 * GIB];
    let mut allocator = new_allocator(&regions, false);
    let dma32 = allocator.zone_stats(ZoneKind::Dma32).unwrap();
    let normal = allocator.zone_stats(ZoneKind::Normal).unwrap();
    assert_eq!((dma32.span_start, dma32.span_end), (0, 3 * GIB));
    assert_eq!((normal.span_start, normal.span_end), (4 * GIB, 5 * GIB));
    assert_eq!(
        allocator.total_pages(),
        (640 * KIB + 3 * GIB - MIB + GIB) / PAGE_SIZE
    );

    // Per-page tables cover only the 4 MiB sections with memory (768 + 256 of them).
    let sections = (3 * GIB + GIB) / MAX_BLOCK;
    let per_page_bytes = sections * (1 << MAX_ORDER) * 9;
    let table_bytes = metadata_bytes(&regions, false) as u64;
    assert!(table_bytes >= per_page_bytes);
    assert!(table_bytes < per_page_bytes + 2 * sections * 4 + 64);

    // Draining DMA32 through Normal requests never touches the hole.
    let mut served = 0;
    while let Ok(address) = allocator.alloc(MAX_ORDER, ZoneKind::Normal) {
        assert!(!(3 * GIB..4 * GIB).contains(&address), "{address:#x}");
        served += 1;
    }
    assert_eq!(served, (GIB + 3 * GIB - 4 * MIB) / MAX_BLOCK);
    assert_eq!(
        allocator.free(3 * GIB, 0),
        Err(FreeError::OutOfRange { address: 3 * GIB })
    );
}

#[test]
fn a_24_gib_map_builds_with_about_9_bytes_per_page() {
    // 24 GiB of RAM on q35: 3 GiB below the PCI hole, 21 GiB above 4 GiB.
    let regions = [0..640 * KIB, MIB..3 * GIB, 4 * GIB..25 * GIB];
    let mut allocator = new_allocator(&regions, true);
    let pages = allocator.total_pages();
    assert_eq!(pages, (640 * KIB + 3 * GIB - MIB + 21 * GIB) / PAGE_SIZE);
    let bytes = metadata_bytes(&regions, true) as u64;
    assert!(
        bytes >= pages * 9 && bytes < pages * 9 + pages / 100,
        "{bytes}"
    );

    assert_eq!(
        histogram(&allocator, ZoneKind::Normal),
        only_max_blocks(21 * GIB / MAX_BLOCK)
    );
    let dma = allocator.zone_stats(ZoneKind::Dma).unwrap();
    assert_eq!((dma.span_start, dma.span_end), (0, 16 * MIB));
    let dma32 = allocator.zone_stats(ZoneKind::Dma32).unwrap();
    assert_eq!((dma32.span_start, dma32.span_end), (16 * MIB, 3 * GIB));

    let high = allocator.alloc(MAX_ORDER, ZoneKind::Normal).unwrap();
    let low = allocator.alloc(0, ZoneKind::Dma32).unwrap();
    assert_eq!((high, low), (4 * GIB, 16 * MIB));
    allocator.free(low, 0).unwrap();
    allocator.free(high, MAX_ORDER).unwrap();
    assert_eq!(allocator.free_pages(), pages);
}

#[test]
fn bad_frees_are_refused_with_typed_errors_and_change_nothing() {
    let mut allocator = new_allocator(&[MIB..3 * MIB, 4 * MIB..8 * MIB], false);
    let block = allocator.alloc(2, ZoneKind::Dma32).unwrap();
    let page = allocator.alloc(0, ZoneKind::Dma32).unwrap();
    allocator.free(page, 0).unwrap(); // merges back into a larger free block
    let before = all_histograms(&allocator);
    let free_before = allocator.free_pages();

    let cases = [
        (
            block,
            MAX_ORDER + 1,
            FreeError::OrderTooLarge {
                order: MAX_ORDER + 1,
            },
        ),
        (
            block + PAGE_SIZE,
            1,
            FreeError::Misaligned {
                address: block + PAGE_SIZE,
                order: 1,
            },
        ),
        (64 * MIB, 0, FreeError::OutOfRange { address: 64 * MIB }),
        (3 * MIB, 0, FreeError::Hole { address: 3 * MIB }),
        (page, 0, FreeError::DoubleFree { address: page }),
        (
            block + PAGE_SIZE,
            0,
            FreeError::NotBlockStart {
                address: block + PAGE_SIZE,
            },
        ),
        (
            block,
            1,
            FreeError::OrderMismatch {
                address: block,
                order: 1,
                allocated_order: 2,
            },
        ),
        // Never allocated: inside a free maximal block.
        (5 * MIB, 0, FreeError::DoubleFree { address: 5 * MIB }),
        (4 * MIB, 0, FreeError::DoubleFree { address: 4 * MIB }),
    ];
    for (address, order, error) in cases {
        assert_eq!(allocator.free(address, order), Err(error));
        assert_eq!(all_histograms(&allocator), before);
        assert_eq!(allocator.free_pages(), free_before);
        allocator.check_consistency();
    }

    allocator.free(block, 2).unwrap();
    assert_eq!(
        allocator.free(block, 2),
        Err(FreeError::DoubleFree { address: block })
    );
    allocator.check_consistency();
}

#[test]
fn buddyinfo_lists_zones_with_memory_and_their_free_blocks() {
    let allocator = new_allocator(&[4 * MIB..8 * MIB + 3 * PAGE_SIZE], true);
    let expected = "\
Node 0, zone      DMA      1      1      0      0      0      0      0      0      0      0      1
";
    assert_eq!(allocator.to_string(), expected);
}

#[test]
fn zone_stats_report_span_present_and_free_pages() {
    let mut allocator = new_allocator(&three_zone_map(), true);
    let page = allocator.alloc(3, ZoneKind::Normal).unwrap();
    let normal = allocator.zone_stats(ZoneKind::Normal).unwrap();
    assert_eq!(normal.kind, ZoneKind::Normal);
    assert_eq!(
        (normal.span_start, normal.span_end),
        (4 * GIB, 4 * GIB + 8 * MIB)
    );
    assert_eq!(normal.present_pages, 2048);
    assert_eq!(normal.free_pages, 2048 - 8);
    let counted: u64 = (0..ORDER_COUNT)
        .map(|order| normal.free_blocks[order] << order)
        .sum();
    assert_eq!(counted, normal.free_pages);
    assert_eq!(allocator.total_pages(), (12 + 16 + 8) * MIB / PAGE_SIZE);
    assert_eq!(allocator.free_pages(), allocator.total_pages() - 8);
    allocator.free(page, 3).unwrap();
    assert_eq!(allocator.free_pages(), allocator.total_pages());
}

#[test]
fn zone_names_match_linux() {
    let names: Vec<&str> = ZoneKind::ALL.iter().map(|kind| kind.name()).collect();
    assert_eq!(names, ["DMA", "DMA32", "Normal"]);
    assert_eq!(alloc::format!("{}", ZoneKind::Dma32), "DMA32");
}

#[test]
fn metadata_bytes_does_not_depend_on_region_order_or_overlap() {
    let sorted = [0..640 * KIB, MIB..3 * GIB, 4 * GIB..6 * GIB];
    let shuffled = [
        4 * GIB..5 * GIB,
        MIB..3 * GIB,
        5 * GIB - MIB..6 * GIB,
        0..640 * KIB,
    ];
    assert_eq!(
        metadata_bytes(&sorted, true),
        metadata_bytes(&shuffled, true)
    );
    assert!(metadata_bytes(&sorted, true) > 0);
}

#[test]
fn a_zone_too_large_for_32_bit_page_indices_is_an_error() {
    // 2^32 sections of span: the section table alone would need u32 indices past NIL.
    let regions = [
        4 * GIB..4 * GIB + PAGE_SIZE,
        (1 << 62)..(1 << 62) + PAGE_SIZE,
    ];
    assert_eq!(
        PhysAllocator::new(&regions, false).err(),
        Some(InitError::ZoneTooLarge {
            zone: ZoneKind::Normal
        })
    );
}
