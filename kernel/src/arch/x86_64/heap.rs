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
            let p = heap
                .allocate_first_fit(layout)
                .map_or(core::ptr::null_mut(), |p| p.as_ptr());
            #[cfg(feature = "heap-trace")]
            trace::record(p as usize, layout.size());
            p
        })
    }

    #[inline(never)]
    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if let Some(pointer) = NonNull::new(pointer) {
            self.with(|heap| {
                #[cfg(feature = "heap-trace")]
                trace::forget(pointer.as_ptr() as usize);
                // SAFETY: GlobalAlloc's contract: `pointer` came from `alloc` with this `layout`.
                unsafe { heap.deallocate(pointer, layout) }
            });
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

/// `heap-trace` (a debugging build): every live allocation with its size and the return
/// addresses of its first callers (the frame-pointer chain), listed by `/proc/heap_live`, so a
/// leak test's stray bytes can be traced to the code that allocated them.
#[cfg(feature = "heap-trace")]
pub mod trace {
    use alloc::collections::BTreeMap;
    use alloc::string::String;
    use core::fmt::Write;

    const SLOTS: usize = 1 << 15;
    const DEPTH: usize = 6;

    #[derive(Clone, Copy)]
    struct Slot {
        ptr: usize,
        size: usize,
        callers: [usize; DEPTH],
    }

    const EMPTY: Slot = Slot {
        ptr: 0,
        size: 0,
        callers: [0; DEPTH],
    };

    static TABLE: spin::Mutex<[Slot; SLOTS]> = spin::Mutex::new([EMPTY; SLOTS]);

    fn callers() -> [usize; DEPTH] {
        let mut out = [0; DEPTH];
        let mut rbp: usize;
        // SAFETY: reads the frame-pointer register only.
        unsafe { core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack)) };
        for slot in out.iter_mut() {
            if !(0x10_0000..(1 << 32)).contains(&rbp) || !rbp.is_multiple_of(8) {
                break;
            }
            // SAFETY: the kernel is built with frame pointers; `rbp` is a frame of the current
            // stack, in identity-mapped RAM below 4 GiB (checked above), holding the caller's
            // frame pointer and then the return address.
            let (next, ret) = unsafe { (*(rbp as *const usize), *((rbp + 8) as *const usize)) };
            *slot = ret;
            if next <= rbp {
                break;
            }
            rbp = next;
        }
        out
    }

    pub(super) fn record(ptr: usize, size: usize) {
        if ptr == 0 {
            return;
        }
        let callers = callers();
        let mut table = TABLE.lock();
        let mut i = (ptr >> 4) % SLOTS;
        for _ in 0..SLOTS {
            if table[i].ptr == 0 {
                table[i] = Slot { ptr, size, callers };
                return;
            }
            i = (i + 1) % SLOTS;
        }
    }

    pub(super) fn forget(ptr: usize) {
        let mut table = TABLE.lock();
        let mut i = (ptr >> 4) % SLOTS;
        for _ in 0..SLOTS {
            if table[i].ptr == ptr {
                table[i] = EMPTY;
                // Re-place the rest of the probe run (linear probing without tombstones).
                let mut j = (i + 1) % SLOTS;
                while table[j].ptr != 0 {
                    let moved = table[j];
                    table[j] = EMPTY;
                    let mut k = (moved.ptr >> 4) % SLOTS;
                    while table[k].ptr != 0 {
                        k = (k + 1) % SLOTS;
                    }
                    table[k] = moved;
                    j = (j + 1) % SLOTS;
                }
                return;
            }
            if table[i].ptr == 0 {
                return;
            }
            i = (i + 1) % SLOTS;
        }
    }

    /// Live allocations grouped by size and callers: `count size caller...` a line.
    pub fn live() -> String {
        let snapshot: alloc::vec::Vec<Slot> = {
            let mut v = alloc::vec::Vec::new();
            let copy = super::HEAP.with(|_| TABLE.lock().iter().filter(|s| s.ptr != 0).count());
            v.reserve(copy + 64);
            // Under the heap lock: no allocation is recorded while the table is copied, and
            // the copy itself does not allocate (it stays within the reserved capacity).
            super::HEAP.with(|_| {
                let table = TABLE.lock();
                for s in table.iter().filter(|s| s.ptr != 0) {
                    if v.len() < v.capacity() {
                        v.push(*s);
                    }
                }
            });
            v
        };
        let mut groups: BTreeMap<(usize, [usize; DEPTH]), usize> = BTreeMap::new();
        for s in &snapshot {
            *groups.entry((s.size, s.callers)).or_default() += 1;
        }
        let mut out = String::new();
        for ((size, callers), count) in groups {
            let _ = write!(out, "{count} {size}");
            for c in callers {
                let _ = write!(out, " {c:x}");
            }
            out.push('\n');
        }
        out
    }
}
