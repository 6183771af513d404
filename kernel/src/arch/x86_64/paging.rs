//! Kernel page tables: 4-level identity map of all RAM and the MMIO hole, a window of 4 KiB
//! pages mapped at run time, and TLB flushes.
//!
//! Page 0 is left unmapped so a null dereference faults. The first 2 MiB use 4 KiB pages; the
//! rest use 2 MiB pages. 3-4 GiB (the PCI/LAPIC/IOAPIC hole) is mapped uncached.
//!
//! The window ([`WINDOW_BASE`], PML4 slot 511, far above any identity-mapped address) holds
//! 512 single pages that can be mapped, remapped and unmapped while every CPU runs on the same
//! tables (one CR3 for the whole kernel). Changing a present entry leaves stale translations in
//! other CPUs' TLBs: the caller shoots them down (`smp::flush_tlb_range`).
//!
//! Lock: `WINDOW` (IRQ-safe) guards the window's page table; `mm::PAGES` is taken under it (the
//! first map allocates the tables). No TLB shootdown is waited for under it.

use super::cpu;
use crate::kernel::locking::IrqSafeLock;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const GIB: u64 = 1 << 30;
const TWO_MIB: u64 = 2 << 20;

/// A page-table page source: returns the physical address of a fresh 4 KiB frame.
pub type FrameSource<'a> = &'a mut dyn FnMut() -> Option<u64>;

/// Error when page-table frames run out.
#[derive(Debug)]
pub struct OutOfFrames;

fn zeroed_frame(source: FrameSource<'_>) -> Result<u64, OutOfFrames> {
    let frame = source().ok_or(OutOfFrames)?;
    // SAFETY: the frame was just handed out by the page allocator (exclusively ours) and all
    // RAM is identity-mapped by the current page tables.
    unsafe { core::ptr::write_bytes(frame as usize as *mut u8, 0, 4096) };
    Ok(frame)
}

fn entry(table: u64, index: usize) -> *mut u64 {
    (table as usize as *mut u64).wrapping_add(index)
}

/// Builds an identity map of `[0, top)` (rounded up to 1 GiB, at least 4 GiB) and switches
/// CR3 to it. Returns the number of page-table frames used.
pub fn install_identity_map(top: u64, source: FrameSource<'_>) -> Result<usize, OutOfFrames> {
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

// ---- the run-time page window -------------------------------------------------------------

/// First address of the window (PML4 slot 511).
pub const WINDOW_BASE: u64 = 0xFFFF_FF80_0000_0000;
/// Pages in the window (one page table).
pub const WINDOW_PAGES: u64 = 512;

/// Why a window operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowError {
    /// The address is not a page-aligned address inside the window.
    NotInWindow(u64),
    /// The frame is not page-aligned.
    MisalignedFrame(u64),
    /// No frame for the window's page tables.
    OutOfFrames,
    /// Nothing is mapped there.
    NotMapped(u64),
    /// The offset does not leave room for 8 bytes in the page, or is not 8-aligned.
    BadOffset(u64),
}

impl core::fmt::Display for WindowError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WindowError::NotInWindow(address) => {
                write!(f, "{address:#x} is not a page of the kernel window")
            }
            WindowError::MisalignedFrame(frame) => write!(f, "frame {frame:#x} is not aligned"),
            WindowError::OutOfFrames => write!(f, "no memory for the window's page tables"),
            WindowError::NotMapped(address) => write!(f, "nothing is mapped at {address:#x}"),
            WindowError::BadOffset(offset) => write!(f, "offset {offset:#x} is not a u64 slot"),
        }
    }
}

/// Physical address of the window's page table (0 until the first map builds it).
static WINDOW: IrqSafeLock<u64> = IrqSafeLock::new(0);

fn window_index(address: u64) -> Result<usize, WindowError> {
    let index = address.wrapping_sub(WINDOW_BASE) / 4096;
    if address < WINDOW_BASE || index >= WINDOW_PAGES || !address.is_multiple_of(4096) {
        return Err(WindowError::NotInWindow(address));
    }
    Ok(index as usize)
}

/// Builds the window's PDPT, directory and page table under PML4 slot 511.
fn build_window(source: FrameSource<'_>) -> Result<u64, WindowError> {
    let zeroed =
        |source: FrameSource<'_>| zeroed_frame(source).map_err(|_| WindowError::OutOfFrames);
    let pdpt = zeroed(source)?;
    let directory = zeroed(source)?;
    let table = zeroed(source)?;
    let pml4 = cpu::read_cr3() & !0xFFF;
    // SAFETY: the three frames are fresh, zeroed and ours; the PML4 is the live one, identity-
    // mapped, and slot 511 (the window's) is unused by the identity map, which stops far below.
    // Linking a new subtree into an empty slot needs no TLB flush (not-present entries are not
    // cached), and every CPU shares this PML4.
    unsafe {
        *entry(directory, 0) = table | PRESENT | WRITABLE;
        *entry(pdpt, 0) = directory | PRESENT | WRITABLE;
        *entry(pml4, 511) = pdpt | PRESENT | WRITABLE;
    }
    Ok(table)
}

/// Maps window page `address` to `frame` (writable, cached, not global), or unmaps it
/// (`None`). Returns the frame mapped there before: if there was one, other CPUs may still
/// translate `address` to it until the caller flushes their TLBs. This CPU's TLB is flushed.
pub fn set_window_page(
    address: u64,
    frame: Option<u64>,
    source: FrameSource<'_>,
) -> Result<Option<u64>, WindowError> {
    set_window_entry(address, frame, WRITABLE, source)
}

/// As [`set_window_page`], but maps `frame` read-only (CR0.WP is set: a kernel write faults).
pub fn set_window_page_readonly(
    address: u64,
    frame: u64,
    source: FrameSource<'_>,
) -> Result<Option<u64>, WindowError> {
    set_window_entry(address, Some(frame), 0, source)
}

fn set_window_entry(
    address: u64,
    frame: Option<u64>,
    flags: u64,
    source: FrameSource<'_>,
) -> Result<Option<u64>, WindowError> {
    let index = window_index(address)?;
    if let Some(frame) = frame.filter(|frame| !frame.is_multiple_of(4096)) {
        return Err(WindowError::MisalignedFrame(frame));
    }
    let mut table = WINDOW.lock();
    if *table == 0 {
        if frame.is_none() {
            return Err(WindowError::NotMapped(address));
        }
        *table = build_window(source)?;
    }
    let slot = entry(*table, index);
    // SAFETY: `slot` is an entry of the window's page table (ours, identity-mapped), and the
    // lock serialises every writer.
    let old = unsafe { *slot };
    let new = frame.map_or(0, |frame| frame | PRESENT | flags);
    // SAFETY: as above; the entry maps only window addresses, which nothing else relies on.
    unsafe { core::ptr::write_volatile(slot, new) };
    drop(table);
    flush_local_page(address);
    Ok((old & PRESENT != 0).then_some(old & 0x000F_FFFF_FFFF_F000))
}

/// The frame window page `address` maps, if any.
fn window_frame(table: u64, address: u64) -> Result<u64, WindowError> {
    let index = window_index(address)?;
    if table == 0 {
        return Err(WindowError::NotMapped(address));
    }
    // SAFETY: an entry of the window's page table; the caller holds the lock.
    let pte = unsafe { *entry(table, index) };
    if pte & PRESENT == 0 {
        return Err(WindowError::NotMapped(address));
    }
    Ok(pte & 0x000F_FFFF_FFFF_F000)
}

fn slot_offset(offset: u64) -> Result<u64, WindowError> {
    if offset >= 4096 || !offset.is_multiple_of(8) {
        return Err(WindowError::BadOffset(offset));
    }
    Ok(offset)
}

/// Reads the u64 at `offset` in window page `address` *through the window* (this CPU's TLB,
/// stale or not), if the page is mapped.
pub fn read_window_u64(address: u64, offset: u64) -> Result<u64, WindowError> {
    let offset = slot_offset(offset)?;
    let table = WINDOW.lock();
    window_frame(*table, address)?;
    // SAFETY: the page is mapped (checked under the lock, which every unmap takes) to a frame
    // its mapper owns; the read is aligned. Through a stale translation it would read the
    // frame mapped before, which the remapper still owned when it changed the entry.
    let value = unsafe { core::ptr::read_volatile((address + offset) as *const u64) };
    drop(table);
    Ok(value)
}

/// Writes the u64 at `offset` in window page `address` through the window.
pub fn write_window_u64(address: u64, offset: u64, value: u64) -> Result<(), WindowError> {
    let offset = slot_offset(offset)?;
    let table = WINDOW.lock();
    window_frame(*table, address)?;
    // SAFETY: as for `read_window_u64`.
    unsafe { core::ptr::write_volatile((address + offset) as *mut u64, value) };
    drop(table);
    Ok(())
}
