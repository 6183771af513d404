//! The kmap window: 4 KiB kernel pages mapped at run time.
//!
//! The window ([`WINDOW_BASE`], PML4 slot 511, far above any identity-mapped address) holds
//! 512 single pages that can be mapped, remapped and unmapped while every CPU runs on the same
//! tables (one CR3 for the whole kernel). Changing a present entry leaves stale translations in
//! other CPUs' TLBs: the caller shoots them down (`smp::flush_tlb_range`).
//!
//! A window page is only ever mapped to a frame a [`Kmap`] owns: a `Kmap` takes a
//! [`PageBlock`] and gives it back (or frees it) only after every CPU's translation of the page
//! is gone, so no CPU can reach a frame through the window once it was freed or handed on.
//!
//! Lock: `WINDOW` (interrupts masked) guards the window's page table and slot bitmap;
//! `memory::PAGES` is taken under it (the first map allocates the tables). No TLB shootdown is
//! waited for under it.
// Only the in-kernel tests map pages so far.
#![cfg_attr(not(feature = "ktest"), allow(dead_code))]

use alloc::vec::Vec;

use lull_buddy::ZoneKind;

use super::cpu;
use super::memory::PageBlock;
use super::paging::{entry, flush_local_page, page_table_frame, zeroed_frame, PRESENT, WRITABLE};
use super::sync::IrqSpinCell;

/// First address of the window (PML4 slot 511).
pub const WINDOW_BASE: u64 = 0xFFFF_FF80_0000_0000;
/// Pages in the window (one page table).
pub const WINDOW_PAGES: u64 = 512;

/// Why a window operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowError {
    /// The address is not a page-aligned address inside the window.
    NotInWindow(u64),
    /// The block is more than one page.
    NotOnePage,
    /// Every window page is in use.
    Full,
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
            WindowError::NotOnePage => write!(f, "only single pages are mapped"),
            WindowError::Full => write!(f, "every window page is in use"),
            WindowError::OutOfFrames => write!(f, "no memory for the window's page tables"),
            WindowError::NotMapped(address) => write!(f, "nothing is mapped at {address:#x}"),
            WindowError::BadOffset(offset) => write!(f, "offset {offset:#x} is not a u64 slot"),
        }
    }
}

/// The window's page table (physical address, 0 until the first map builds it) and which of
/// its slots a [`Kmap`] holds.
struct Window {
    table: u64,
    used: [u64; WINDOW_PAGES as usize / 64],
}

static WINDOW: IrqSpinCell<Window> = IrqSpinCell::new(Window {
    table: 0,
    used: [0; WINDOW_PAGES as usize / 64],
});

/// Flushes a kernel address range on every other online CPU and waits until they have (the
/// kernel's TLB-shootdown IPI). Installed once at boot, before any other CPU starts.
pub type RemoteFlush = fn(start: u64, end: u64);

static REMOTE_FLUSH: spin::Once<RemoteFlush> = spin::Once::new();

/// Installs the shootdown the window uses when a mapping changes (first call wins).
pub fn set_remote_flush(flush: RemoteFlush) {
    REMOTE_FLUSH.call_once(|| flush);
}

/// Drops other CPUs' translations of kernel range `[start, end)` (the MMIO window's unmaps).
pub(super) fn remote_flush(start: u64, end: u64) {
    if let Some(flush) = REMOTE_FLUSH.get() {
        flush(start, end);
    }
}

/// Drops every CPU's translation of window page `address` (this CPU's is already gone).
fn shoot_down(address: u64) {
    if let Some(flush) = REMOTE_FLUSH.get() {
        flush(address, address + 4096);
    }
}

fn window_index(address: u64) -> Result<usize, WindowError> {
    let index = address.wrapping_sub(WINDOW_BASE) / 4096;
    if address < WINDOW_BASE || index >= WINDOW_PAGES || !address.is_multiple_of(4096) {
        return Err(WindowError::NotInWindow(address));
    }
    Ok(index as usize)
}

/// Builds the window's PDPT, directory and page table under PML4 slot 511.
fn build_window() -> Result<u64, WindowError> {
    let zeroed = || {
        zeroed_frame(&mut || page_table_frame(ZoneKind::Normal))
            .map_err(|_| WindowError::OutOfFrames)
    };
    let pdpt = zeroed()?;
    let directory = zeroed()?;
    let table = zeroed()?;
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

/// Points window slot `index` at `frame` (or nothing) and flushes this CPU's TLB. The caller
/// holds `window` and owns both the new frame and the one mapped before.
fn set_slot(window: &mut Window, index: usize, frame: Option<u64>) {
    let slot = entry(window.table, index);
    let new = frame.map_or(0, |frame| frame | PRESENT | WRITABLE);
    // SAFETY: `slot` is an entry of the window's page table (built, identity-mapped, ours),
    // written under the lock; the entry maps only a window address, which nothing but the
    // slot's `Kmap` uses, and the frames involved are that `Kmap`'s.
    unsafe { core::ptr::write_volatile(slot, new) };
    flush_local_page(WINDOW_BASE + index as u64 * 4096);
}

/// Copies `length` bytes at `offset` of physical page `frame`, which the kernel does not map
/// (page 0, the BIOS data area: left unmapped so null dereferences fault), through a temporary
/// read-only mapping at a free window address; the mapping is gone on every CPU before this
/// returns. Private to arch: only firmware pages arch itself reads (ACPI's RSDP scan) go here.
pub(super) fn copy_unmapped_firmware_page(
    frame: u64,
    offset: usize,
    length: usize,
) -> Result<Vec<u8>, WindowError> {
    if !frame.is_multiple_of(4096) || offset.checked_add(length).is_none_or(|end| end > 4096) {
        return Err(WindowError::BadOffset(offset as u64));
    }
    let mut window = WINDOW.lock();
    if window.table == 0 {
        window.table = build_window()?;
    }
    let index = (0..WINDOW_PAGES as usize)
        .find(|&i| window.used[i / 64] & (1 << (i % 64)) == 0)
        .ok_or(WindowError::Full)?;
    window.used[index / 64] |= 1 << (index % 64);
    let slot = entry(window.table, index);
    // SAFETY: `slot` is a free entry of the window's page table (built, identity-mapped, ours),
    // written under the lock; it maps the firmware page read-only (no WRITABLE bit), so nothing
    // can write through it, and only this function uses the slot until it is freed below.
    unsafe { core::ptr::write_volatile(slot, frame | PRESENT) };
    let address = WINDOW_BASE + index as u64 * 4096;
    flush_local_page(address);
    drop(window);
    let mut bytes = Vec::with_capacity(length);
    // SAFETY: `address..address + 4096` maps `frame` (just above, read-only) until the slot is
    // cleared below; `[offset, offset + length)` lies within the page (checked on entry).
    bytes.extend_from_slice(unsafe {
        core::slice::from_raw_parts((address as usize + offset) as *const u8, length)
    });
    let mut window = WINDOW.lock();
    set_slot(&mut window, index, None);
    drop(window);
    shoot_down(address);
    WINDOW.lock().used[index / 64] &= !(1 << (index % 64));
    Ok(bytes)
}

/// How many window pages are mapped now (for the RSDP scan's self-test).
#[cfg(feature = "ktest")]
pub(super) fn window_slots_in_use() -> u32 {
    WINDOW
        .lock()
        .used
        .iter()
        .map(|word| word.count_ones())
        .sum()
}

/// A kernel mapping of one page frame the holder owns, at an address of the window (Linux's
/// `kmap`). Dropping it unmaps the page on every CPU, then frees the frame.
pub struct Kmap {
    index: usize,
    frame: Option<PageBlock>,
    /// Frames this page mapped before that other CPUs may still reach through a stale TLB
    /// entry (only after [`Kmap::remap_without_shootdown`]); kept until the next shootdown.
    stale: Vec<PageBlock>,
}

impl Kmap {
    /// Maps `frame` (one page: order 0) at a free window address. On failure the frame comes
    /// back with the reason.
    pub fn new(frame: PageBlock) -> Result<Kmap, (WindowError, PageBlock)> {
        if frame.order() != 0 {
            return Err((WindowError::NotOnePage, frame));
        }
        let mut window = WINDOW.lock();
        if window.table == 0 {
            match build_window() {
                Ok(table) => window.table = table,
                Err(error) => return Err((error, frame)),
            }
        }
        let Some(index) =
            (0..WINDOW_PAGES as usize).find(|&i| window.used[i / 64] & (1 << (i % 64)) == 0)
        else {
            return Err((WindowError::Full, frame));
        };
        window.used[index / 64] |= 1 << (index % 64);
        // A free slot maps nothing, and its last unmap was shot down: no CPU translates it.
        set_slot(&mut window, index, Some(frame.address()));
        drop(window);
        Ok(Kmap {
            index,
            frame: Some(frame),
            stale: Vec::new(),
        })
    }

    /// The page's address in the window.
    pub fn address(&self) -> u64 {
        WINDOW_BASE + self.index as u64 * 4096
    }

    /// The frame mapped now.
    pub fn frame(&self) -> &PageBlock {
        self.frame.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// Maps `frame` here instead and shoots the old translation down on every CPU; returns the
    /// frame mapped before, which no CPU reaches through the window any more. The caller must
    /// hold no spinlock (the shootdown waits for other CPUs).
    pub fn remap(&mut self, frame: PageBlock) -> Result<PageBlock, (WindowError, PageBlock)> {
        if frame.order() != 0 {
            return Err((WindowError::NotOnePage, frame));
        }
        set_slot(&mut WINDOW.lock(), self.index, Some(frame.address()));
        let old = self.frame.replace(frame).unwrap_or_else(|| unreachable!());
        shoot_down(self.address());
        self.stale.clear();
        Ok(old)
    }

    /// As [`Kmap::remap`] but flushing only this CPU's TLB: the bug the shootdown exists to
    /// prevent (the TLB test's control case). The old frame stays with this mapping until the
    /// next shootdown, so the stale translations other CPUs keep still reach a frame it owns.
    #[cfg(feature = "ktest")]
    pub fn remap_without_shootdown(
        &mut self,
        frame: PageBlock,
    ) -> Result<(), (WindowError, PageBlock)> {
        if frame.order() != 0 {
            return Err((WindowError::NotOnePage, frame));
        }
        set_slot(&mut WINDOW.lock(), self.index, Some(frame.address()));
        let old = self.frame.replace(frame).unwrap_or_else(|| unreachable!());
        self.stale.push(old);
        Ok(())
    }

    /// Unmaps the page on every CPU and gives the frame back.
    pub fn unmap(mut self) -> PageBlock {
        self.release();
        self.frame.take().unwrap_or_else(|| unreachable!())
    }

    fn release(&mut self) {
        let mut window = WINDOW.lock();
        set_slot(&mut window, self.index, None);
        drop(window);
        shoot_down(self.address());
        // Only now may the slot be mapped again and the frames go elsewhere.
        WINDOW.lock().used[self.index / 64] &= !(1 << (self.index % 64));
        self.stale.clear();
    }

    /// Reads the u64 at `offset` of the page.
    pub fn read_u64(&self, offset: u64) -> Result<u64, WindowError> {
        read_window_u64(self.address(), offset)
    }

    /// Writes the u64 at `offset` of the page.
    pub fn write_u64(&self, offset: u64, value: u64) -> Result<(), WindowError> {
        let offset = slot_offset(offset)?;
        // SAFETY: this slot maps the frame this `Kmap` owns (set under the lock, and no other
        // `Kmap` has the slot); the write is aligned and inside the page. Other CPUs reach
        // only this frame or, through stale entries, frames kept in `stale`.
        unsafe { core::ptr::write_volatile((self.address() + offset) as *mut u64, value) };
        Ok(())
    }
}

impl Drop for Kmap {
    fn drop(&mut self) {
        if self.frame.is_some() {
            self.release();
        }
    }
}

fn slot_offset(offset: u64) -> Result<u64, WindowError> {
    if offset >= 4096 || !offset.is_multiple_of(8) {
        return Err(WindowError::BadOffset(offset));
    }
    Ok(offset)
}

/// Reads the u64 at `offset` in window page `address` *through the window* (this CPU's TLB,
/// stale or not), if the page is mapped. Any CPU may read any window page this way (the TLB
/// test reads a page another thread's [`Kmap`] holds).
pub fn read_window_u64(address: u64, offset: u64) -> Result<u64, WindowError> {
    let offset = slot_offset(offset)?;
    let index = window_index(address)?;
    let window = WINDOW.lock();
    if window.table == 0 {
        return Err(WindowError::NotMapped(address));
    }
    // SAFETY: an entry of the window's page table; we hold the lock.
    let pte = unsafe { *entry(window.table, index) };
    if pte & PRESENT == 0 {
        return Err(WindowError::NotMapped(address));
    }
    // SAFETY: the page is mapped (checked under the lock, which every unmap takes) to a frame
    // a `Kmap` owns; the read is aligned. Through a stale translation it reads a frame that
    // `Kmap` still keeps (`stale`), since frames are released only after a shootdown.
    let value = unsafe { core::ptr::read_volatile((address + offset) as *const u64) };
    drop(window);
    Ok(value)
}
