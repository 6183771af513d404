//! One memory zone: a binary buddy allocator whose bookkeeping lives entirely in side tables.
//!
//! The managed pages are never read or written: the kernel must not touch all of RAM at boot,
//! and host tests have no such memory. Instead every usable page has a slot in three tables
//! (`next`, `prev`, `state`), indexed by a dense *page index*:
//!
//! * The zone's span is cut into sections of `2^MAX_ORDER` pages, aligned in physical memory.
//!   Only sections holding usable memory get slots, so a hole such as the 3–4 GiB PCI window
//!   costs 4 bytes per 4 MiB instead of 9 bytes per page.
//! * `index = slot * SECTION_PAGES + (frame % SECTION_PAGES)`. A block of order `k` and its buddy
//!   lie in one section, so the buddy's index is `index ^ (1 << k)`: no lookup needed.
//!
//! `state[index]` says what the page is (see [`PageState`]); `next`/`prev` link the heads of free
//! blocks into one doubly linked list per order, so unlinking a buddy is O(1) and no free list is
//! ever scanned.

use alloc::vec::Vec;
use core::ops::Range;

use crate::layout::{zone_frames, ZoneLayout, SECTION_PAGES, SECTION_SHIFT};
use crate::{FreeError, InitError, ZoneKind, ZoneStats, MAX_ORDER, ORDER_COUNT, PAGE_SIZE};

/// End of a free list, and "no slot" in the section table.
const NIL: u32 = u32::MAX;

/// What one page is, as stored in its `state` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PageState {
    /// Not usable memory (firmware hole, reserved range): never handed out, never a buddy.
    Hole,
    /// Usable, and not the first page of a block: its block's head says what it is.
    Tail,
    /// First page of a free block of this order, linked on that order's free list.
    FreeHead(u8),
    /// First page of a block of this order that `alloc` handed out.
    AllocatedHead(u8),
}

/// Encoding: orders are at most 10, so the high bit marks allocated heads and two values above
/// every order mark holes and tails.
const HOLE_BYTE: u8 = 0xFF;
const TAIL_BYTE: u8 = 0xFE;
const ALLOCATED_BIT: u8 = 0x80;

impl PageState {
    fn encode(self) -> u8 {
        match self {
            PageState::Hole => HOLE_BYTE,
            PageState::Tail => TAIL_BYTE,
            PageState::FreeHead(order) => order,
            PageState::AllocatedHead(order) => ALLOCATED_BIT | order,
        }
    }

    fn decode(byte: u8) -> PageState {
        match byte {
            HOLE_BYTE => PageState::Hole,
            TAIL_BYTE => PageState::Tail,
            byte if byte & ALLOCATED_BIT != 0 => PageState::AllocatedHead(byte & !ALLOCATED_BIT),
            order => PageState::FreeHead(order),
        }
    }
}

/// Allocate a table of `len` copies of `value`, reporting failure instead of aborting: the
/// kernel sizes its heap from [`crate::metadata_bytes`], and a mistake there must be an error.
fn filled_table<T: Copy>(len: u64, value: T, zone: ZoneKind) -> Result<Vec<T>, InitError> {
    let len = usize::try_from(len).map_err(|_| InitError::ZoneTooLarge { zone })?;
    let mut table = Vec::new();
    table
        .try_reserve_exact(len)
        .map_err(|_| InitError::OutOfMetadataMemory {
            zone,
            bytes: len.saturating_mul(core::mem::size_of::<T>()),
        })?;
    table.resize(len, value);
    Ok(table)
}

/// A buddy allocator over the usable pages of one zone.
pub(crate) struct Zone {
    kind: ZoneKind,
    /// Lowest usable frame to one past the highest.
    span: Range<u64>,
    /// Absolute section number of the span's first frame.
    first_section: u64,
    /// Per spanned section (relative to `first_section`): its slot, or [`NIL`] for a hole.
    section_slot: Vec<u32>,
    /// Per slot: its section, relative to `first_section`.
    slot_section: Vec<u32>,
    /// Per page index: the next free block head of the same order, or [`NIL`].
    next: Vec<u32>,
    /// Per page index: the previous free block head of the same order, or [`NIL`].
    prev: Vec<u32>,
    /// Per page index: an encoded [`PageState`].
    state: Vec<u8>,
    /// Per order: first and last free block head ([`NIL`] when empty).
    free_head: [u32; ORDER_COUNT],
    free_tail: [u32; ORDER_COUNT],
    /// Per order: how many free blocks the list holds (kept for statistics; never recounted).
    free_blocks: [u64; ORDER_COUNT],
    free_pages: u64,
    present_pages: u64,
}

impl Zone {
    /// Build the zone from the usable memory inside `bounds`, with every usable page free.
    ///
    /// Cost: the side-table fill plus one list insertion per maximal aligned block.
    pub(crate) fn new(
        kind: ZoneKind,
        regions: &[Range<u64>],
        bounds: Range<u64>,
    ) -> Result<Zone, InitError> {
        let layout = ZoneLayout::compute(regions, bounds.clone());
        // Page indices are u32 with NIL reserved, and relative section numbers are u32 too.
        let max_pages = u64::from(NIL - 1);
        if layout.present_sections.saturating_mul(SECTION_PAGES) > max_pages
            || layout.spanned_sections > max_pages
        {
            return Err(InitError::ZoneTooLarge { zone: kind });
        }
        let first_section = layout.span.start >> SECTION_SHIFT;
        let mut zone = Zone {
            kind,
            span: layout.span.clone(),
            first_section,
            section_slot: filled_table(layout.spanned_sections, NIL, kind)?,
            slot_section: filled_table(layout.present_sections, NIL, kind)?,
            next: filled_table(layout.present_sections * SECTION_PAGES, NIL, kind)?,
            prev: filled_table(layout.present_sections * SECTION_PAGES, NIL, kind)?,
            state: filled_table(layout.present_sections * SECTION_PAGES, HOLE_BYTE, kind)?,
            free_head: [NIL; ORDER_COUNT],
            free_tail: [NIL; ORDER_COUNT],
            free_blocks: [0; ORDER_COUNT],
            free_pages: 0,
            present_pages: layout.present_pages,
        };

        // Give slots to the sections holding memory, in address order.
        let mut next_slot: u32 = 0;
        for frames in zone_frames(regions, bounds.clone()) {
            let first = (frames.start >> SECTION_SHIFT) - first_section;
            let last = ((frames.end - 1) >> SECTION_SHIFT) - first_section;
            for relative_section in first..=last {
                // Both fit in u32: checked against NIL above.
                let relative_section = relative_section as u32;
                let entry = &mut zone.section_slot[relative_section as usize];
                if *entry == NIL {
                    *entry = next_slot;
                    zone.slot_section[next_slot as usize] = relative_section;
                    next_slot += 1;
                }
            }
        }

        // Free every usable page as maximal naturally aligned blocks, lowest address first, so
        // that a fresh allocator hands out low memory first (deterministic for tests and logs).
        for frames in zone_frames(regions, bounds) {
            let mut frame = frames.start;
            while frame < frames.end {
                let alignment_order = frame.trailing_zeros().min(u32::from(MAX_ORDER));
                let fit_order = (frames.end - frame).ilog2();
                let order = alignment_order.min(fit_order) as u8;
                let head = zone
                    .index_of(frame)
                    .ok_or(InitError::ZoneTooLarge { zone: kind })?;
                let block = head as usize..head as usize + (1 << order);
                zone.state[block].fill(TAIL_BYTE);
                zone.set_state(head, PageState::FreeHead(order));
                zone.push_back(head, order);
                zone.free_pages += 1 << order;
                frame += 1 << order;
            }
        }
        Ok(zone)
    }

    pub(crate) fn kind(&self) -> ZoneKind {
        self.kind
    }

    pub(crate) fn contains_frame(&self, frame: u64) -> bool {
        self.span.contains(&frame)
    }

    pub(crate) fn free_pages(&self) -> u64 {
        self.free_pages
    }

    pub(crate) fn present_pages(&self) -> u64 {
        self.present_pages
    }

    pub(crate) fn stats(&self) -> ZoneStats {
        ZoneStats {
            kind: self.kind,
            span_start: self.span.start * PAGE_SIZE,
            span_end: self.span.end * PAGE_SIZE,
            present_pages: self.present_pages,
            free_pages: self.free_pages,
            free_blocks: self.free_blocks,
        }
    }

    /// The page index of a frame, or `None` when the frame lies in a hole section or outside.
    fn index_of(&self, frame: u64) -> Option<u32> {
        if !self.span.contains(&frame) {
            return None;
        }
        let relative_section = (frame >> SECTION_SHIFT) - self.first_section;
        let slot = self.section_slot[relative_section as usize];
        // The offset is below SECTION_PAGES and slot * SECTION_PAGES was checked to fit in u32.
        (slot != NIL).then(|| slot * SECTION_PAGES as u32 + (frame % SECTION_PAGES) as u32)
    }

    /// The frame of a page index (inverse of [`Zone::index_of`]).
    fn frame_of(&self, index: u32) -> u64 {
        let slot = index >> SECTION_SHIFT;
        let section = self.first_section + u64::from(self.slot_section[slot as usize]);
        (section << SECTION_SHIFT) | (u64::from(index) % SECTION_PAGES)
    }

    fn state(&self, index: u32) -> PageState {
        PageState::decode(self.state[index as usize])
    }

    fn set_state(&mut self, index: u32, state: PageState) {
        self.state[index as usize] = state.encode();
    }

    fn push_front(&mut self, index: u32, order: u8) {
        let order_slot = usize::from(order);
        let old_head = self.free_head[order_slot];
        self.next[index as usize] = old_head;
        self.prev[index as usize] = NIL;
        if old_head == NIL {
            self.free_tail[order_slot] = index;
        } else {
            self.prev[old_head as usize] = index;
        }
        self.free_head[order_slot] = index;
        self.free_blocks[order_slot] += 1;
    }

    fn push_back(&mut self, index: u32, order: u8) {
        let order_slot = usize::from(order);
        let old_tail = self.free_tail[order_slot];
        self.prev[index as usize] = old_tail;
        self.next[index as usize] = NIL;
        if old_tail == NIL {
            self.free_head[order_slot] = index;
        } else {
            self.next[old_tail as usize] = index;
        }
        self.free_tail[order_slot] = index;
        self.free_blocks[order_slot] += 1;
    }

    fn unlink(&mut self, index: u32, order: u8) {
        let order_slot = usize::from(order);
        let (prev, next) = (self.prev[index as usize], self.next[index as usize]);
        if prev == NIL {
            self.free_head[order_slot] = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next == NIL {
            self.free_tail[order_slot] = prev;
        } else {
            self.prev[next as usize] = prev;
        }
        self.next[index as usize] = NIL;
        self.prev[index as usize] = NIL;
        self.free_blocks[order_slot] -= 1;
    }

    /// Allocate a block of `2^order` pages and return its first frame.
    ///
    /// Takes the head of the smallest non-empty free list of order `>= order` and splits it,
    /// putting each unused upper half on its own list: O(MAX_ORDER).
    pub(crate) fn alloc(&mut self, order: u8) -> Option<u64> {
        let mut found_order =
            (order..=MAX_ORDER).find(|&k| self.free_head[usize::from(k)] != NIL)?;
        let head = self.free_head[usize::from(found_order)];
        self.unlink(head, found_order);
        while found_order > order {
            found_order -= 1;
            let upper_half = head | (1 << found_order);
            self.set_state(upper_half, PageState::FreeHead(found_order));
            self.push_front(upper_half, found_order);
        }
        self.set_state(head, PageState::AllocatedHead(order));
        self.free_pages -= 1 << order;
        Some(self.frame_of(head))
    }

    /// Return a block that [`Zone::alloc`] handed out, merging it with free buddies.
    ///
    /// `frame` must lie in this zone's span and be aligned to `2^order` pages (the caller checks
    /// both). Only an allocated head of exactly this order is accepted, so double frees, frees
    /// of holes and frees with the wrong order are refused without touching any list.
    pub(crate) fn free(&mut self, frame: u64, order: u8) -> Result<(), FreeError> {
        let address = frame * PAGE_SIZE;
        let Some(mut head) = self.index_of(frame) else {
            return Err(FreeError::Hole { address });
        };
        match self.state(head) {
            PageState::AllocatedHead(allocated) if allocated == order => {}
            PageState::AllocatedHead(allocated_order) => {
                return Err(FreeError::OrderMismatch {
                    address,
                    order,
                    allocated_order,
                })
            }
            PageState::FreeHead(_) => return Err(FreeError::DoubleFree { address }),
            PageState::Hole => return Err(FreeError::Hole { address }),
            PageState::Tail => return Err(self.classify_tail(head, address)),
        }

        let mut merged_order = order;
        while merged_order < MAX_ORDER {
            let buddy = head ^ (1 << merged_order);
            if self.state(buddy) != PageState::FreeHead(merged_order) {
                break;
            }
            self.unlink(buddy, merged_order);
            self.set_state(buddy, PageState::Tail);
            self.set_state(head, PageState::Tail);
            head = head.min(buddy);
            merged_order += 1;
        }
        self.set_state(head, PageState::FreeHead(merged_order));
        self.push_front(head, merged_order);
        self.free_pages += 1 << order;
        Ok(())
    }

    /// Why freeing a page that is not a block head is wrong: it lies inside a free block
    /// (double free, possibly after coalescing) or inside an allocated one.
    ///
    /// The block holding the page starts at the page rounded down to some power of two, and
    /// every candidate between the page and that head is a tail, so the first non-tail
    /// candidate going up is the owner: O(MAX_ORDER).
    fn classify_tail(&self, index: u32, address: u64) -> FreeError {
        for order in 1..=MAX_ORDER {
            let candidate = index & !((1 << order) - 1);
            match self.state(candidate) {
                PageState::Tail => continue,
                PageState::FreeHead(owner_order) if owner_order >= order => {
                    return FreeError::DoubleFree { address }
                }
                _ => break,
            }
        }
        FreeError::NotBlockStart { address }
    }

    /// Heap bytes held by the side tables (tests compare it with [`crate::metadata_bytes`]).
    #[cfg(test)]
    pub(crate) fn table_bytes(&self) -> usize {
        use core::mem::size_of_val;
        [
            size_of_val(self.section_slot.as_slice()),
            size_of_val(self.slot_section.as_slice()),
            size_of_val(self.next.as_slice()),
            size_of_val(self.prev.as_slice()),
            size_of_val(self.state.as_slice()),
        ]
        .iter()
        .sum()
    }

    /// Check every invariant the O(1) operations rely on, by brute force (tests only).
    #[cfg(test)]
    pub(crate) fn check_consistency(&self) {
        let mut free_blocks = [0u64; ORDER_COUNT];
        let mut free_pages = 0;
        for order in 0..=MAX_ORDER {
            let mut previous = NIL;
            let mut index = self.free_head[usize::from(order)];
            while index != NIL {
                assert_eq!(self.state(index), PageState::FreeHead(order));
                assert_eq!(self.prev[index as usize], previous, "broken back link");
                assert_eq!(index % (1 << order), 0, "misaligned free block");
                for tail in index + 1..index + (1 << order) {
                    assert_eq!(self.state(tail), PageState::Tail);
                }
                if order < MAX_ORDER {
                    let buddy = index ^ (1 << order);
                    assert_ne!(
                        self.state(buddy),
                        PageState::FreeHead(order),
                        "two free buddies left unmerged"
                    );
                }
                free_blocks[usize::from(order)] += 1;
                free_pages += 1 << order;
                previous = index;
                index = self.next[index as usize];
            }
            assert_eq!(self.free_tail[usize::from(order)], previous);
        }
        assert_eq!(free_blocks, self.free_blocks);
        assert_eq!(free_pages, self.free_pages);
        let heads = self
            .state
            .iter()
            .filter(|&&byte| matches!(PageState::decode(byte), PageState::FreeHead(_)))
            .count() as u64;
        assert_eq!(
            heads,
            free_blocks.iter().sum::<u64>(),
            "free head not on a list"
        );
        let usable = self.state.iter().filter(|&&byte| byte != HOLE_BYTE).count() as u64;
        assert_eq!(usable, self.present_pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_state_encoding_round_trips() {
        let mut states = alloc::vec![PageState::Hole, PageState::Tail];
        for order in 0..=MAX_ORDER {
            states.push(PageState::FreeHead(order));
            states.push(PageState::AllocatedHead(order));
        }
        for state in states {
            assert_eq!(PageState::decode(state.encode()), state);
        }
    }

    #[test]
    fn page_index_and_frame_are_inverse_across_hole_sections() {
        let page = PAGE_SIZE;
        let section = SECTION_PAGES * page;
        // Sections 2, 3 and 7 hold memory; 4..=6 are a hole with no per-page tables.
        let regions = [
            2 * section + 5 * page..3 * section + 7 * page,
            7 * section..8 * section,
        ];
        let zone = Zone::new(ZoneKind::Normal, &regions, 0..u64::MAX).unwrap();
        assert_eq!(zone.state.len() as u64, 3 * SECTION_PAGES);
        assert_eq!(zone.section_slot.len(), 6);
        for frame in [
            2 * SECTION_PAGES + 5,
            3 * SECTION_PAGES + 6,
            7 * SECTION_PAGES + 1023,
        ] {
            let index = zone.index_of(frame).unwrap();
            assert_eq!(zone.frame_of(index), frame);
        }
        assert_eq!(zone.index_of(5 * SECTION_PAGES), None);
        assert_eq!(zone.index_of(8 * SECTION_PAGES), None);
        assert_eq!(
            zone.state(zone.index_of(3 * SECTION_PAGES + 7).unwrap()),
            PageState::Hole
        );
        zone.check_consistency();
    }
}
