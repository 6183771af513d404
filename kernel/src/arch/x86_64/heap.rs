//! The kernel heap: a first-fit allocator over one region carved out of RAM at boot.
//!
//! The heap lock is IRQ-safe: interrupt handlers (timer callbacks, timer_stats) may allocate,
//! so the lock is only ever held with local interrupts disabled; otherwise an interrupt
//! arriving while the interrupted code held the lock would spin on it forever.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use linked_list_allocator::Heap;

use super::cpu;

struct IrqSafeHeap(spin::Mutex<Heap>);

impl IrqSafeHeap {
    fn with<R>(&self, f: impl FnOnce(&mut Heap) -> R) -> R {
        let interrupts_were_enabled = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        let result = f(&mut self.0.lock());
        if interrupts_were_enabled {
            cpu::enable_interrupts();
        }
        result
    }
}

// SAFETY: allocation is delegated to linked_list_allocator's `Heap`, which hands out
// non-overlapping blocks of at least `layout.size()` bytes aligned to `layout.align()` from
// the region given to `init`, under a lock that makes it safe to call from any context.
unsafe impl GlobalAlloc for IrqSafeHeap {
    // Out of line, so `realloc` and `alloc_zeroed` (the trait's defaults) call this copy
    // instead of inlining their own: less boot code for TCG to translate.
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|heap| {
            heap.allocate_first_fit(layout)
                .map_or(core::ptr::null_mut(), |p| p.as_ptr())
        })
    }

    #[inline(never)]
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if let Some(pointer) = NonNull::new(pointer) {
            // SAFETY: GlobalAlloc's contract: `pointer` came from `alloc` with this `layout`.
            self.with(|heap| unsafe { heap.deallocate(pointer, layout) });
        }
    }
}

#[global_allocator]
static HEAP: IrqSafeHeap = IrqSafeHeap(spin::Mutex::new(Heap::empty()));

/// Hands `[start, start + size)` to the heap. Called once, before any allocation.
///
/// # Safety
/// The range must be usable RAM, identity-mapped, not used for anything else, ever.
unsafe fn init(start: u64, size: usize) {
    // SAFETY: the caller guarantees the range is exclusively ours.
    HEAP.with(|heap| unsafe { heap.init(start as usize as *mut u8, size) });
}

/// Bytes in use and bytes free in the heap.
pub fn usage() -> (usize, usize) {
    HEAP.with(|heap| (heap.used(), heap.free()))
}

static REGION: spin::Once<core::ops::Range<u64>> = spin::Once::new();

/// The heap's RAM, once given.
pub(super) fn region() -> Option<core::ops::Range<u64>> {
    REGION.get().cloned()
}

/// Hands the boot-chosen heap region to the allocator (the safe entry point for `mm`).
/// The first call with a range of free RAM below 4 GiB (checked against arch's record of the
/// boot memory map) wins; later calls and unusable ranges are refused.
pub fn init_region(range: core::ops::Range<u64>) -> Result<(), &'static str> {
    if range.end > (4 << 30) || !super::memory::is_free_ram(&range) {
        return Err("not free RAM below 4 GiB");
    }
    let mut first = false;
    REGION.call_once(|| {
        first = true;
        range.clone()
    });
    if !first {
        return Err("the heap has its region already");
    }
    // SAFETY: `range` is RAM in the firmware map outside the kernel image, the loader's
    // structures and low memory (checked above), identity-mapped; this is the only call that
    // gets here, and the page allocator refuses any range overlapping it.
    unsafe { init(range.start, (range.end - range.start) as usize) };
    Ok(())
}
