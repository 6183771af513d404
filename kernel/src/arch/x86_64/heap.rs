//! The kernel heap: a first-fit allocator over one region carved out of RAM at boot.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands `[start, start + size)` to the heap. Called once, before any allocation.
///
/// # Safety
/// The range must be usable RAM, identity-mapped, not used for anything else, ever.
pub unsafe fn init(start: u64, size: usize) {
    // SAFETY: the caller guarantees the range is exclusively ours.
    unsafe { HEAP.lock().init(start as usize as *mut u8, size) };
}

/// Bytes in use and bytes free in the heap.
pub fn usage() -> (usize, usize) {
    let heap = HEAP.lock();
    (heap.used(), heap.free())
}

/// Hands the boot-chosen heap region to the allocator (the safe entry point for `mm`).
/// Called exactly once; later calls are ignored.
pub fn init_region(range: core::ops::Range<u64>) {
    static DONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, core::sync::atomic::Ordering::SeqCst) {
        return;
    }
    // SAFETY: `mm::init` chose `range` from usable RAM outside the kernel image, boot
    // structures and low memory, identity-mapped, and never hands it to the page allocator.
    unsafe { init(range.start, (range.end - range.start) as usize) };
}
