//! Model-based test: random memory maps and alloc/free sequences checked against a reference.
//!
//! The reference model is a map of live blocks. After every operation the allocator must agree
//! with it: blocks lie in usable memory, in a permitted zone, never overlap, free counts match,
//! refused frees change nothing, and freeing everything restores the initial free blocks.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Range;

use proptest::prelude::*;

use crate::layout::MergedFrames;
use crate::*;

const MIB: u64 = 1 << 20;

/// Interesting places for regions: low memory, the 16 MiB DMA boundary, the 4 GiB DMA32
/// boundary, and well into Normal memory.
const WINDOWS: [u64; 4] = [0, 12 * MIB, (4 << 30) - 6 * MIB, (4 << 30) + 40 * MIB];

fn memory_map() -> impl Strategy<Value = Vec<Range<u64>>> {
    let region = (0..WINDOWS.len(), 0..2048u64, 1..3000u64, 0..PAGE_SIZE).prop_map(
        |(window, start_page, pages, ragged_start)| {
            // Ragged starts exercise page rounding; the region then loses its first page.
            let start = WINDOWS[window] + start_page * PAGE_SIZE + ragged_start;
            start..start + pages * PAGE_SIZE
        },
    );
    proptest::collection::vec(region, 1..5)
}

#[derive(Clone, Debug)]
enum Operation {
    Alloc {
        order: u8,
        zone: ZoneKind,
    },
    /// Free the live block at this position (modulo the number of live blocks).
    Free {
        pick: usize,
    },
    /// Free an address that is not the start of a live block; it must be refused.
    BadFree {
        address: u64,
        order: u8,
    },
}

fn operation() -> impl Strategy<Value = Operation> {
    let zone = prop_oneof![
        Just(ZoneKind::Dma),
        Just(ZoneKind::Dma32),
        Just(ZoneKind::Normal)
    ];
    // Mostly small orders, as in a kernel, with enough large ones to exhaust memory.
    let order = prop_oneof![4 => 0..=2u8, 2 => 3..=6u8, 1 => 7..=MAX_ORDER + 1];
    let window_address = (0..WINDOWS.len(), 0..4096u64)
        .prop_map(|(window, page)| WINDOWS[window] + page * PAGE_SIZE);
    prop_oneof![
        5 => (order.clone(), zone).prop_map(|(order, zone)| Operation::Alloc { order, zone }),
        4 => any::<usize>().prop_map(|pick| Operation::Free { pick }),
        1 => (window_address, 0..=MAX_ORDER).prop_map(|(address, order)| Operation::BadFree { address, order }),
    ]
}

fn block_bytes(order: u8) -> u64 {
    PAGE_SIZE << order
}

/// Whether a zone has a free block of at least `order` (from a statistics snapshot).
fn has_block(stats: &Option<ZoneStats>, order: u8) -> bool {
    stats.is_some_and(|stats| {
        stats.free_blocks[usize::from(order)..]
            .iter()
            .any(|&n| n > 0)
    })
}

struct Model {
    usable: Vec<Range<u64>>,
    /// Live blocks: start address → order.
    live: BTreeMap<u64, u8>,
    initial_free: u64,
}

impl Model {
    fn overlaps_live(&self, block: Range<u64>) -> bool {
        let before = self.live.range(..block.end).next_back();
        before.is_some_and(|(&start, &order)| start + block_bytes(order) > block.start)
    }

    fn is_usable(&self, block: &Range<u64>) -> bool {
        self.usable.iter().any(|frames| {
            frames.start * PAGE_SIZE <= block.start && block.end <= frames.end * PAGE_SIZE
        })
    }

    fn live_pages(&self) -> u64 {
        self.live.values().map(|&order| 1u64 << order).sum()
    }
}

fn check_alloc(
    allocator: &mut PhysAllocator,
    model: &mut Model,
    order: u8,
    want: ZoneKind,
) -> Result<(), TestCaseError> {
    let before: Vec<Option<ZoneStats>> = ZoneKind::ALL
        .iter()
        .map(|&kind| allocator.zone_stats(kind))
        .collect();
    match allocator.alloc(order, want) {
        Ok(address) => {
            prop_assert!(order <= MAX_ORDER);
            let block = address..address + block_bytes(order);
            prop_assert_eq!(address % block_bytes(order), 0, "misaligned block");
            prop_assert!(
                model.is_usable(&block),
                "block {:x?} not usable memory",
                block
            );
            prop_assert!(
                !model.overlaps_live(block.clone()),
                "block {:x?} overlaps",
                block
            );
            let served = allocator.zone_of(address).expect("block in a zone");
            prop_assert_eq!(allocator.zone_of(block.end - 1), Some(served));
            // Fallback goes to lower zones only (ZoneKind orders zones by address)…
            prop_assert!(served <= want, "{:?} request served by {:?}", want, served);
            // …and only when every zone between had no suitable block.
            for skipped in ZoneKind::ALL
                .into_iter()
                .filter(|&kind| served < kind && kind <= want)
            {
                prop_assert!(
                    !has_block(&before[skipped as usize], order),
                    "skipped {:?}",
                    skipped
                );
            }
            model.live.insert(address, order);
        }
        Err(AllocError::OrderTooLarge { order: refused }) => {
            prop_assert_eq!(refused, order);
            prop_assert!(order > MAX_ORDER);
        }
        Err(AllocError::NoSuchZone { zone }) => {
            prop_assert_eq!(zone, ZoneKind::Dma);
            prop_assert!(!allocator.has_dma_zone());
        }
        Err(AllocError::OutOfMemory { .. }) => {
            for kind in ZoneKind::ALL.into_iter().filter(|&kind| kind <= want) {
                prop_assert!(
                    !has_block(&before[kind as usize], order),
                    "{:?} had a block",
                    kind
                );
            }
        }
    }
    Ok(())
}

fn check_counts(allocator: &PhysAllocator, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        allocator.free_pages(),
        model.initial_free - model.live_pages()
    );
    for stats in allocator.zones() {
        let histogram_pages: u64 = (0..ORDER_COUNT)
            .map(|order| stats.free_blocks[order] << order)
            .sum();
        prop_assert_eq!(histogram_pages, stats.free_pages);
        prop_assert!(stats.free_pages <= stats.present_pages);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_alloc_free_sequences_agree_with_the_model(
        regions in memory_map(),
        with_dma_zone in any::<bool>(),
        operations in proptest::collection::vec(operation(), 1..150),
    ) {
        let mut allocator = PhysAllocator::new(&regions, with_dma_zone).unwrap();
        let initial: Vec<ZoneStats> = allocator.zones().collect();
        prop_assert_eq!(allocator.free_pages(), allocator.total_pages());
        let mut model = Model {
            usable: MergedFrames::new(&regions).collect(),
            live: BTreeMap::new(),
            initial_free: allocator.free_pages(),
        };
        prop_assert_eq!(
            model.initial_free,
            model.usable.iter().map(|frames| frames.end - frames.start).sum::<u64>()
        );

        for (step, operation) in operations.into_iter().enumerate() {
            match operation {
                Operation::Alloc { order, zone } => {
                    check_alloc(&mut allocator, &mut model, order, zone)?;
                }
                Operation::Free { pick } => {
                    if !model.live.is_empty() {
                        let (&address, &order) = model.live.iter().nth(pick % model.live.len()).unwrap();
                        prop_assert_eq!(allocator.free(address, order), Ok(()));
                        model.live.remove(&address);
                    }
                }
                Operation::BadFree { address, order } => {
                    if model.live.get(&address) != Some(&order) {
                        let before: Vec<ZoneStats> = allocator.zones().collect();
                        prop_assert!(allocator.free(address, order).is_err());
                        prop_assert_eq!(allocator.zones().collect::<Vec<_>>(), before);
                    }
                }
            }
            check_counts(&allocator, &model)?;
            if step % 8 == 0 {
                allocator.check_consistency();
            }
        }
        allocator.check_consistency();

        for (address, order) in core::mem::take(&mut model.live) {
            prop_assert_eq!(allocator.free(address, order), Ok(()));
        }
        allocator.check_consistency();
        prop_assert_eq!(allocator.zones().collect::<Vec<_>>(), initial);
    }
}
