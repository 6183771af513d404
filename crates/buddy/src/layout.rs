//! Usable-memory layout: the firmware's ranges as sorted page frames, split into zones.
//!
//! Everything here works without allocating, because [`crate::metadata_bytes`] runs before the
//! kernel has a heap and must agree exactly with what [`crate::PhysAllocator::new`] allocates.

use core::ops::Range;

use crate::{ZoneKind, MAX_ORDER, PAGE_SIZE};

/// Pages per section: the unit in which a zone's side tables are allocated. A section is as
/// large as the largest buddy block, so no block and no buddy pair ever crosses a section.
pub(crate) const SECTION_PAGES: u64 = 1 << MAX_ORDER;

/// log2 of [`SECTION_PAGES`].
pub(crate) const SECTION_SHIFT: u32 = MAX_ORDER as u32;

/// First page frame above the DMA zone (16 MiB): the ISA DMA limit.
pub(crate) const DMA_END_FRAME: u64 = (16 << 20) / PAGE_SIZE;

/// First page frame above the DMA32 zone (4 GiB): the limit of 32-bit DMA masters.
pub(crate) const DMA32_END_FRAME: u64 = (4 << 30) / PAGE_SIZE;

/// Whole pages inside a byte range: the start rounds up, the end rounds down.
fn whole_page_frames(bytes: &Range<u64>) -> Option<Range<u64>> {
    let first = bytes.start.div_ceil(PAGE_SIZE);
    let end = bytes.end / PAGE_SIZE;
    (first < end).then_some(first..end)
}

/// The union of the usable byte ranges as sorted, disjoint, non-touching page-frame ranges.
///
/// Firmware maps may be unsorted, overlapping or not page aligned; feeding such a map straight
/// into the free lists would hand a page out twice. The union is computed by repeated minimum
/// search (quadratic in the number of ranges, which is small) so that no heap is needed.
#[derive(Clone)]
pub(crate) struct MergedFrames<'a> {
    regions: &'a [Range<u64>],
    /// Every frame below this one has already been produced.
    cursor: u64,
}

impl<'a> MergedFrames<'a> {
    pub(crate) fn new(regions: &'a [Range<u64>]) -> Self {
        MergedFrames { regions, cursor: 0 }
    }
}

impl Iterator for MergedFrames<'_> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        let cursor = self.cursor;
        let frames = self.regions.iter().filter_map(whole_page_frames);
        // The lowest not-yet-produced frame starts the next merged range.
        let mut merged = frames
            .clone()
            .filter(|f| f.end > cursor)
            .map(|f| f.start.max(cursor)..f.end)
            .min_by_key(|f| f.start)?;
        // Grow it while some range overlaps or touches its end.
        loop {
            let grown = frames
                .clone()
                .filter(|f| f.start <= merged.end && f.end > merged.end)
                .map(|f| f.end)
                .max();
            match grown {
                Some(end) => merged.end = end,
                None => break,
            }
        }
        self.cursor = merged.end;
        Some(merged)
    }
}

/// The page frames a zone may cover, before looking at the memory map.
pub(crate) fn zone_bounds(kind: ZoneKind, with_dma_zone: bool) -> Range<u64> {
    match kind {
        ZoneKind::Dma => 0..DMA_END_FRAME,
        ZoneKind::Dma32 if with_dma_zone => DMA_END_FRAME..DMA32_END_FRAME,
        // Without ZONE_DMA, DMA32 takes the low 16 MiB too (Linux 2.6.21's optional ZONE_DMA).
        ZoneKind::Dma32 => 0..DMA32_END_FRAME,
        ZoneKind::Normal => DMA32_END_FRAME..u64::MAX,
    }
}

/// The zones that exist for this configuration, lowest first.
pub(crate) fn built_zones(with_dma_zone: bool) -> impl Iterator<Item = ZoneKind> + Clone {
    ZoneKind::ALL
        .into_iter()
        .filter(move |&kind| with_dma_zone || kind != ZoneKind::Dma)
}

/// The usable page frames inside one zone, sorted and disjoint.
pub(crate) fn zone_frames(
    regions: &[Range<u64>],
    bounds: Range<u64>,
) -> impl Iterator<Item = Range<u64>> + Clone + '_ {
    MergedFrames::new(regions)
        .map(move |f| f.start.max(bounds.start)..f.end.min(bounds.end))
        .filter(|f| f.start < f.end)
}

/// Sizes of one zone, enough to size its side tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ZoneLayout {
    /// Lowest usable frame to one past the highest (empty when the zone has no memory).
    pub span: Range<u64>,
    /// Usable pages inside the span (the span minus its holes).
    pub present_pages: u64,
    /// Sections from the span's first section to its last one, holes included.
    pub spanned_sections: u64,
    /// Sections holding at least one usable page: only these get per-page side tables.
    pub present_sections: u64,
}

impl ZoneLayout {
    pub(crate) fn compute(regions: &[Range<u64>], bounds: Range<u64>) -> ZoneLayout {
        let mut layout = ZoneLayout {
            span: 0..0,
            present_pages: 0,
            spanned_sections: 0,
            present_sections: 0,
        };
        let mut last_counted_section: Option<u64> = None;
        for frames in zone_frames(regions, bounds) {
            if layout.present_pages == 0 {
                layout.span.start = frames.start;
            }
            layout.span.end = frames.end;
            layout.present_pages += frames.end - frames.start;
            let first_section = frames.start >> SECTION_SHIFT;
            let last_section = (frames.end - 1) >> SECTION_SHIFT;
            // Ranges are sorted, so only the previous range can share this range's first section.
            let new_first = match last_counted_section {
                Some(counted) if counted >= first_section => counted + 1,
                _ => first_section,
            };
            if new_first <= last_section {
                layout.present_sections += last_section - new_first + 1;
            }
            last_counted_section = Some(last_section);
        }
        if layout.present_pages > 0 {
            layout.spanned_sections =
                ((layout.span.end - 1) >> SECTION_SHIFT) - (layout.span.start >> SECTION_SHIFT) + 1;
        }
        layout
    }

    /// Heap bytes the zone's side tables take (see [`crate::zone::Zone`] for the tables).
    pub(crate) fn metadata_bytes(&self) -> u64 {
        let slot_entry = core::mem::size_of::<u32>() as u64;
        let per_page = 2 * core::mem::size_of::<u32>() as u64 + 1;
        let section_table = self.spanned_sections.saturating_mul(slot_entry);
        let slot_table = self.present_sections.saturating_mul(slot_entry);
        let pages = self
            .present_sections
            .saturating_mul(SECTION_PAGES)
            .saturating_mul(per_page);
        section_table
            .saturating_add(slot_table)
            .saturating_add(pages)
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::single_range_in_vec_init,
        reason = "a memory map with one usable range is a common case, not a mistaken `vec![a..b]`"
    )]

    use super::*;
    use alloc::vec::Vec;

    const MIB: u64 = 1 << 20;

    fn merged(regions: &[Range<u64>]) -> Vec<Range<u64>> {
        MergedFrames::new(regions).collect()
    }

    #[test]
    fn merging_sorts_joins_overlaps_and_touching_ranges() {
        let regions = [
            10 * PAGE_SIZE..20 * PAGE_SIZE,
            0..4 * PAGE_SIZE,
            15 * PAGE_SIZE..25 * PAGE_SIZE,
            4 * PAGE_SIZE..5 * PAGE_SIZE,
            30 * PAGE_SIZE..31 * PAGE_SIZE,
        ];
        assert_eq!(merged(&regions), [0..5, 10..25, 30..31]);
    }

    #[test]
    fn merging_drops_partial_pages_and_empty_or_inverted_ranges() {
        #[allow(clippy::reversed_empty_ranges)]
        // An inverted range is exactly the bad input tested.
        let regions = [
            100..PAGE_SIZE - 1,
            PAGE_SIZE + 1..3 * PAGE_SIZE + 5,
            50 * PAGE_SIZE..40 * PAGE_SIZE,
            u64::MAX - 10..u64::MAX,
        ];
        assert_eq!(merged(&regions), [2..3]);
    }

    #[test]
    fn merging_a_range_contained_in_another_yields_the_outer_one() {
        let regions = [0..100 * PAGE_SIZE, 10 * PAGE_SIZE..20 * PAGE_SIZE];
        assert_eq!(merged(&regions), [0..100]);
    }

    #[test]
    fn zone_frames_split_at_the_zone_boundaries() {
        let regions = [MIB..5 * 1024 * MIB];
        let dma: Vec<_> = zone_frames(&regions, zone_bounds(ZoneKind::Dma, true)).collect();
        let dma32: Vec<_> = zone_frames(&regions, zone_bounds(ZoneKind::Dma32, true)).collect();
        let normal: Vec<_> = zone_frames(&regions, zone_bounds(ZoneKind::Normal, true)).collect();
        assert_eq!(dma, [256..DMA_END_FRAME]);
        assert_eq!(dma32, [DMA_END_FRAME..DMA32_END_FRAME]);
        assert_eq!(normal, [DMA32_END_FRAME..5 * 1024 * 256]);
        let dma32_alone: Vec<_> =
            zone_frames(&regions, zone_bounds(ZoneKind::Dma32, false)).collect();
        assert_eq!(dma32_alone, [256..DMA32_END_FRAME]);
    }

    #[test]
    fn layout_counts_sections_shared_by_neighbouring_ranges_once() {
        // Two ranges inside section 0, one straddling sections 1 and 2, and one in section 5.
        let regions = [
            0..10 * PAGE_SIZE,
            20 * PAGE_SIZE..30 * PAGE_SIZE,
            1000 * PAGE_SIZE..2050 * PAGE_SIZE,
            5200 * PAGE_SIZE..5201 * PAGE_SIZE,
        ];
        let layout = ZoneLayout::compute(&regions, 0..u64::MAX);
        assert_eq!(layout.span, 0..5201);
        assert_eq!(layout.present_pages, 10 + 10 + 1050 + 1);
        assert_eq!(layout.present_sections, 4); // sections 0, 1, 2, 5
        assert_eq!(layout.spanned_sections, 6); // sections 0..=5
    }

    #[test]
    fn empty_zone_has_no_metadata() {
        let layout = ZoneLayout::compute(&[0..512 * MIB], zone_bounds(ZoneKind::Normal, false));
        assert_eq!(layout.present_pages, 0);
        assert_eq!(layout.span, 0..0);
        assert_eq!(layout.metadata_bytes(), 0);
    }
}
