//! Kernel page tables: 4-level identity map of all RAM and the MMIO hole, and TLB flushes.
//! The window of 4 KiB pages mapped at run time is `kmap.rs`.
//!
//! Page 0 is left unmapped so a null dereference faults. The first 2 MiB use 4 KiB pages; the
//! rest use 2 MiB pages. 3-4 GiB (the PCI/LAPIC/IOAPIC hole) is mapped uncached.

use lull_buddy::ZoneKind;

use super::cpu;
use super::memory::PageBlock;

pub(super) const PRESENT: u64 = 1 << 0;
pub(super) const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const GIB: u64 = 1 << 30;
const TWO_MIB: u64 = 2 << 20;

/// A page-table page source: returns the physical address of a fresh 4 KiB frame that is
/// kept for good.
pub(super) type FrameSource<'a> = &'a mut dyn FnMut() -> Option<u64>;

/// A frame from the page allocator kept for good as a page table.
pub(super) fn page_table_frame(zone: ZoneKind) -> Option<u64> {
    PageBlock::alloc(0, zone).map(PageBlock::leak)
}

/// Error when page-table frames run out.
#[derive(Debug)]
pub struct OutOfFrames;

pub(super) fn zeroed_frame(source: FrameSource<'_>) -> Result<u64, OutOfFrames> {
    let frame = source().ok_or(OutOfFrames)?;
    // SAFETY: the frame was just handed out by the page allocator (exclusively ours) and all
    // RAM is identity-mapped by the current page tables.
    unsafe { core::ptr::write_bytes(frame as usize as *mut u8, 0, 4096) };
    Ok(frame)
}

pub(super) fn entry(table: u64, index: usize) -> *mut u64 {
    (table as usize as *mut u64).wrapping_add(index)
}

/// Builds an identity map of `[0, top)` (rounded up to 1 GiB, at least 4 GiB) from frames of
/// the page allocator (below 4 GiB, for the SMP trampoline's 32-bit CR3 load) and switches CR3
/// to it. Returns the number of page-table frames used. Once only: later calls do nothing.
pub fn install_identity_map(top: u64) -> Result<usize, OutOfFrames> {
    static DONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, core::sync::atomic::Ordering::SeqCst) {
        return Ok(0);
    }
    let source = &mut || page_table_frame(ZoneKind::Dma32);
    let top = top.max(4 * GIB).next_multiple_of(GIB);
    let mut frames = 0usize;
    let pml4 = zeroed_frame(source)?;
    frames += 1;
    let mut pdpt = 0u64;
    let mut gib = 0u64;
    while gib * GIB < top {
        let pml4_index = (gib / 512) as usize;
        if gib.is_multiple_of(512) {
            pdpt = zeroed_frame(source)?;
            frames += 1;
            // SAFETY: `pml4` is a zeroed frame we own; index < 512.
            unsafe { *entry(pml4, pml4_index) = pdpt | PRESENT | WRITABLE };
        }
        let directory = zeroed_frame(source)?;
        frames += 1;
        // SAFETY: `pdpt` is a zeroed frame we own; index < 512.
        unsafe { *entry(pdpt, (gib % 512) as usize) = directory | PRESENT | WRITABLE };
        let uncached = (3 * GIB..4 * GIB).contains(&(gib * GIB));
        for slot in 0..512u64 {
            let address = gib * GIB + slot * TWO_MIB;
            let mut flags = PRESENT | WRITABLE | HUGE;
            if uncached {
                flags |= CACHE_DISABLE | WRITE_THROUGH;
            }
            if address == 0 {
                // First 2 MiB: 4 KiB pages with page 0 absent.
                let table = zeroed_frame(source)?;
                frames += 1;
                for page in 1..512u64 {
                    // SAFETY: `table` is a zeroed frame we own; index < 512.
                    unsafe { *entry(table, page as usize) = (page << 12) | PRESENT | WRITABLE };
                }
                // SAFETY: `directory` is a zeroed frame we own; index 0.
                unsafe { *entry(directory, 0) = table | PRESENT | WRITABLE };
                continue;
            }
            // SAFETY: `directory` is a zeroed frame we own; index < 512.
            unsafe { *entry(directory, slot as usize) = address | flags };
        }
        gib += 1;
    }
    // SAFETY: the new tables identity-map everything the old ones did (all RAM, the MMIO
    // hole, the kernel image), except page 0 which nothing uses.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags));
    }
    debug_assert_eq!(cpu::read_cr3() & !0xFFF, pml4);
    Ok(frames)
}

// ---- TLB ----------------------------------------------------------------------------------

/// Beyond this many pages a range flush reloads CR3 instead (Linux's
/// `tlb_single_page_flush_ceiling`).
const SINGLE_PAGE_FLUSH_CEILING: u64 = 33;

/// Drops this CPU's translation of the page holding `address`.
pub fn flush_local_page(address: u64) {
    // SAFETY: invlpg only drops a cached translation; any address is allowed.
    unsafe {
        core::arch::asm!("invlpg [{}]", in(reg) address, options(nostack, preserves_flags));
    }
}

/// Drops this CPU's translations of `[start, end)` (page by page, or all for a large range).
pub fn flush_local_range(start: u64, end: u64) {
    let first = start & !0xFFF;
    let pages = end.saturating_sub(first).div_ceil(4096);
    if pages > SINGLE_PAGE_FLUSH_CEILING {
        flush_local_all();
        return;
    }
    for page in 0..pages {
        flush_local_page(first + page * 4096);
    }
}

/// Drops every non-global translation of this CPU (CR3 reload; the kernel uses no global pages).
pub fn flush_local_all() {
    let cr3 = cpu::read_cr3();
    // SAFETY: writing back the current CR3 keeps the same tables; it only flushes the TLB.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack, preserves_flags)) };
}
