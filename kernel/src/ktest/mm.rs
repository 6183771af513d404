//! In-kernel tests of memory: the heap, the page allocator and its zones, the kmap window
//! with TLB shootdowns.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use lull_buddy::ZoneKind;

use super::TestResult;
use crate::arch::{self, cpu};
use crate::fs::procfs;
use crate::kernel::smp;
use crate::{mm, printk};

pub(super) fn heap_allocates_and_frees() -> TestResult {
    let (used_before, _) = arch::heap::usage();
    let mut blocks: Vec<Vec<u8>> = (0..64)
        .map(|i| alloc::vec![i as u8; 1024 * (i + 1)])
        .collect();
    for (i, block) in blocks.iter().enumerate() {
        ensure!(block.iter().all(|&b| b == i as u8), "block {i} corrupted");
    }
    blocks.clear();
    blocks.shrink_to_fit();
    let (used_after, _) = arch::heap::usage();
    ensure!(
        used_after <= used_before + 64,
        "heap leaked: {used_before} -> {used_after}"
    );
    Ok(())
}

pub(super) fn page_allocator_serves_every_zone() -> TestResult {
    let (_, free_before) = mm::page_counts();
    let page =
        mm::alloc_pages(0, ZoneKind::Normal).ok_or("Normal request (with fallback) failed")?;
    let dma32 = mm::alloc_pages(3, ZoneKind::Dma32).ok_or("DMA32 order-3 request failed")?;
    ensure!(dma32 < (4 << 30), "DMA32 page above 4 GiB: {dma32:#x}");
    ensure!(
        dma32 % (8 * 4096) == 0,
        "order-3 block misaligned: {dma32:#x}"
    );
    mm::free_pages(page, 0)?;
    mm::free_pages(dma32, 3)?;
    ensure!(
        mm::free_pages(dma32, 3).is_err(),
        "double free was accepted"
    );
    let (_, free_after) = mm::page_counts();
    ensure!(
        free_before == free_after,
        "free pages {free_before} -> {free_after}"
    );
    Ok(())
}

pub(super) fn page_allocator_coalesces_on_hardware() -> TestResult {
    let (_, free_before) = mm::page_counts();
    let pages: Vec<u64> = (0..512)
        .filter_map(|_| mm::alloc_pages(0, ZoneKind::Dma32))
        .collect();
    ensure!(pages.len() == 512, "only {} of 512 pages", pages.len());
    for &page in pages.iter().rev() {
        mm::free_pages(page, 0)?;
    }
    let big =
        mm::alloc_pages(9, ZoneKind::Dma32).ok_or("no order-9 block after freeing 512 pages")?;
    mm::free_pages(big, 9)?;
    let (_, free_after) = mm::page_counts();
    ensure!(
        free_before == free_after,
        "free pages {free_before} -> {free_after}"
    );
    Ok(())
}

pub(super) fn zone_dma_matches_build() -> TestResult {
    ensure!(
        mm::has_dma_zone() == mm::WITH_DMA_ZONE,
        "DMA zone presence differs from the build"
    );
    let result = mm::alloc_pages(0, ZoneKind::Dma);
    if mm::WITH_DMA_ZONE {
        let page = result.ok_or("DMA zone empty")?;
        ensure!(page < (16 << 20), "DMA page above 16 MiB: {page:#x}");
        mm::free_pages(page, 0)?;
    } else {
        ensure!(result.is_none(), "DMA request succeeded without ZONE_DMA");
    }
    Ok(())
}

pub(super) fn freed_pages_are_writable() -> TestResult {
    let page = mm::alloc_pages(4, ZoneKind::Normal).ok_or("order-4 allocation failed")?;
    ensure!(
        !mm::reserved_ranges().iter().any(|(r, _)| r.contains(&page)),
        "page in a reserved range"
    );
    let sum = arch::scribble_and_sum(page, 16 * 4096);
    mm::free_pages(page, 4)?;
    ensure!(
        sum == (16 * 4096 / 8) * 0xA5A5_A5A5,
        "page contents did not read back: {sum:#x}"
    );
    Ok(())
}

/// What each CPU read through the window.
static WINDOW_READ: [AtomicU64; crate::kernel::locking::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::kernel::locking::MAX_CPUS];
const WINDOW_TEST_PAGE: u64 = crate::mm::kmap::WINDOW_BASE + 7 * 4096;

fn read_window_here(_: u64) {
    let value = crate::mm::kmap::read_u64(WINDOW_TEST_PAGE, 8).unwrap_or(u64::MAX);
    WINDOW_READ[smp::this_cpu()].store(value, Ordering::Release);
}

/// Every online CPU reads the window page; returns the CPUs that did not see `expected`.
fn cpus_not_seeing(expected: u64) -> Result<Vec<usize>, String> {
    let cpus: Vec<usize> = smp::online_cpus().collect();
    smp::call_function_many(&cpus, read_window_here, 0).map_err(|e| alloc::format!("{e}"))?;
    Ok(cpus
        .into_iter()
        .filter(|&cpu| WINDOW_READ[cpu].load(Ordering::Acquire) != expected)
        .collect())
}

/// A window page remapped from frame A to frame B is read as B by every CPU after the TLB
/// shootdown, although each had just cached the translation to A. The control case remaps
/// without the shootdown and counts the CPUs still reading A through their stale TLB entry.
pub(super) fn tlb_shootdown_reaches_every_cpu() -> TestResult {
    cpu::enable_interrupts();
    const PATTERN_A: u64 = 0xAAAA_0000_0000_000A;
    const PATTERN_B: u64 = 0xBBBB_0000_0000_000B;
    let frame_a = mm::alloc_pages(0, ZoneKind::Normal).ok_or("no frame A")?;
    let frame_b = mm::alloc_pages(0, ZoneKind::Normal).ok_or("no frame B")?;
    let result = (|| -> TestResult {
        let error = |e: crate::mm::kmap::WindowError| alloc::format!("{e}");
        crate::mm::kmap::map_page(WINDOW_TEST_PAGE, frame_b).map_err(error)?;
        crate::mm::kmap::write_u64(WINDOW_TEST_PAGE, 8, PATTERN_B).map_err(error)?;
        crate::mm::kmap::map_page(WINDOW_TEST_PAGE, frame_a).map_err(error)?;
        crate::mm::kmap::write_u64(WINDOW_TEST_PAGE, 8, PATTERN_A).map_err(error)?;
        let me = smp::this_cpu();
        let others = smp::online_count() - 1;
        // Control: every CPU caches VA -> A, then the entry changes with a local flush only.
        let wrong = cpus_not_seeing(PATTERN_A)?;
        ensure!(wrong.is_empty(), "CPUs {wrong:?} did not read frame A");
        crate::mm::kmap::map_page_without_shootdown(WINDOW_TEST_PAGE, frame_b).map_err(error)?;
        let stale = cpus_not_seeing(PATTERN_B)?;
        ensure!(
            !stale.contains(&me),
            "this CPU read a stale translation after its own flush"
        );
        printk!(
            "ktest tlb: without a shootdown {} of {others} other CPUs still read the old frame",
            stale.len()
        );
        let shootdowns_before: Vec<u64> = smp::online_cpus().map(smp::tlb_shootdowns).collect();
        smp::flush_tlb_all();
        let wrong = cpus_not_seeing(PATTERN_B)?;
        ensure!(
            wrong.is_empty(),
            "CPUs {wrong:?} read a stale frame after flush_tlb_all"
        );
        // The real thing, both ways: remap (with the shootdown) after every CPU cached the
        // translation.
        for (frame, pattern, name) in [(frame_a, PATTERN_A, "A"), (frame_b, PATTERN_B, "B")] {
            crate::mm::kmap::map_page(WINDOW_TEST_PAGE, frame).map_err(error)?;
            let wrong = cpus_not_seeing(pattern)?;
            ensure!(
                wrong.is_empty(),
                "after remapping to frame {name} with a shootdown, CPUs {wrong:?} read the old frame"
            );
        }
        for (cpu, before) in smp::online_cpus().zip(shootdowns_before) {
            let received = smp::tlb_shootdowns(cpu) - before;
            let expected = if cpu == me { 0 } else { 3 };
            ensure!(
                received == expected,
                "CPU {cpu} carried out {received} shootdowns, expected {expected}"
            );
        }
        let listed = procfs::read("/proc/interrupts")?;
        ensure!(
            listed.contains("TLB shootdowns"),
            "no TLB row in /proc/interrupts"
        );
        ensure!(
            crate::mm::kmap::unmap_page(WINDOW_TEST_PAGE) == Ok(frame_b),
            "unmap did not return frame B"
        );
        ensure!(
            crate::mm::kmap::read_u64(WINDOW_TEST_PAGE, 8).is_err(),
            "an unmapped window page was readable"
        );
        ensure!(
            crate::mm::kmap::map_page(0x1000, frame_a).is_err()
                && crate::mm::kmap::map_page(WINDOW_TEST_PAGE, frame_a + 1).is_err(),
            "a map outside the window or of a misaligned frame was accepted"
        );
        Ok(())
    })();
    let _ = crate::mm::kmap::unmap_page(WINDOW_TEST_PAGE);
    mm::free_pages(frame_a, 0)?;
    mm::free_pages(frame_b, 0)?;
    result
}
