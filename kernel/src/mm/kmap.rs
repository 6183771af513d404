//! Kernel pages mapped at run time outside the identity map (the idea of Linux's fixmap and
//! kmap): a page of the window can be mapped to any frame, remapped and unmapped; every change
//! that could leave a stale translation behind is followed by a TLB shootdown on every CPU, so
//! once a call returns no CPU still reaches the old frame through the window.
//!
//! Callers own the window addresses they use (there is no allocator for them yet: the in-kernel
//! tests use page 7, ACPI's scan of physical page 0 page 511); a caller must hold no spinlock
//! (the shootdown waits for other CPUs).

use lull_buddy::ZoneKind;

use crate::arch::paging;
pub use crate::arch::paging::{WindowError, WINDOW_BASE};

fn page_table_frame() -> Option<u64> {
    crate::mm::alloc_pages(0, ZoneKind::Normal)
}

/// Maps window page `address` to `frame` (replacing what was there, on every CPU).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn map_page(address: u64, frame: u64) -> Result<(), WindowError> {
    let old = paging::set_window_page(address, Some(frame), &mut page_table_frame)?;
    if old.is_some() {
        crate::kernel::smp::flush_tlb_range(address, address + 4096);
    }
    Ok(())
}

/// Maps window page `address` to `frame` read-only (replacing what was there, on every CPU).
pub fn map_page_readonly(address: u64, frame: u64) -> Result<(), WindowError> {
    let old = paging::set_window_page_readonly(address, frame, &mut page_table_frame)?;
    if old.is_some() {
        crate::smp::flush_tlb_range(address, address + 4096);
    }
    Ok(())
}

/// Unmaps window page `address` on every CPU; returns the frame it mapped.
pub fn unmap_page(address: u64) -> Result<u64, WindowError> {
    let old = paging::set_window_page(address, None, &mut page_table_frame)?
        .ok_or(WindowError::NotMapped(address))?;
    crate::kernel::smp::flush_tlb_range(address, address + 4096);
    Ok(old)
}

/// Remaps window page `address` to `frame` flushing only this CPU's TLB: the bug the
/// shootdown exists to prevent (the TLB test's control case).
#[cfg(feature = "ktest")]
pub fn map_page_without_shootdown(address: u64, frame: u64) -> Result<(), WindowError> {
    paging::set_window_page(address, Some(frame), &mut page_table_frame).map(|_| ())
}

/// Reads the u64 at `offset` of window page `address`, through this CPU's translation.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn read_u64(address: u64, offset: u64) -> Result<u64, WindowError> {
    paging::read_window_u64(address, offset)
}

/// Writes the u64 at `offset` of window page `address`.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn write_u64(address: u64, offset: u64, value: u64) -> Result<(), WindowError> {
    paging::write_window_u64(address, offset, value)
}
