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
use crate::mm::kmap::{self, Kmap};
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
    let dma32_address = dma32.address();
    ensure!(
        dma32_address < (4 << 30),
        "DMA32 page above 4 GiB: {dma32_address:#x}"
    );
    ensure!(
        dma32_address % (8 * 4096) == 0,
        "order-3 block misaligned: {dma32_address:#x}"
    );
    let (_, free_held) = mm::page_counts();
    ensure!(
        free_held + 9 == free_before,
        "free pages {free_before} -> {free_held} with 9 held"
    );
    // Freeing is dropping the owned block, so a double free cannot be written (the buddy
    // allocator's own refusal is tested on the host).
    drop(page);
    drop(dma32);
    let (_, free_after) = mm::page_counts();
    ensure!(
        free_before == free_after,
        "free pages {free_before} -> {free_after}"
    );
    Ok(())
}

pub(super) fn page_allocator_coalesces_on_hardware() -> TestResult {
    let (_, free_before) = mm::page_counts();
    let mut pages: Vec<mm::PageBlock> = (0..512)
        .filter_map(|_| mm::alloc_pages(0, ZoneKind::Dma32))
        .collect();
    ensure!(pages.len() == 512, "only {} of 512 pages", pages.len());
    while let Some(page) = pages.pop() {
        drop(page);
    }
    let big =
        mm::alloc_pages(9, ZoneKind::Dma32).ok_or("no order-9 block after freeing 512 pages")?;
    drop(big);
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
        ensure!(
            page.address() < (16 << 20),
            "DMA page above 16 MiB: {:#x}",
            page.address()
        );
    } else {
        ensure!(result.is_none(), "DMA request succeeded without ZONE_DMA");
    }
    Ok(())
}

pub(super) fn freed_pages_are_writable() -> TestResult {
    let mut block = mm::alloc_pages(4, ZoneKind::Normal).ok_or("order-4 allocation failed")?;
    let address = block.address();
    ensure!(
        !mm::reserved_ranges()
            .iter()
            .any(|(r, _)| r.contains(&address)),
        "page in a reserved range"
    );
    // Written and read through the owned block's own view of its pages.
    let bytes = block.as_mut_bytes();
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&0xA5A5_A5A5u64.to_le_bytes());
    }
    let sum = bytes.chunks_exact(8).fold(0u64, |sum, chunk| {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        sum.wrapping_add(u64::from_le_bytes(word))
    });
    drop(block);
    ensure!(
        sum == (16 * 4096 / 8) * 0xA5A5_A5A5,
        "page contents did not read back: {sum:#x}"
    );
    Ok(())
}

/// What each CPU read through the window.
static WINDOW_READ: [AtomicU64; crate::kernel::locking::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::kernel::locking::MAX_CPUS];
/// The window page the TLB test maps (the test's `Kmap` holds it).
static WINDOW_TEST_PAGE: AtomicU64 = AtomicU64::new(0);

fn read_window_here(_: u64) {
    let address = WINDOW_TEST_PAGE.load(Ordering::Acquire);
    let value = kmap::read_window_u64(address, 8).unwrap_or(u64::MAX);
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

/// A page frame holding `pattern` at offset 8, written through the identity map.
fn frame_with(pattern: u64) -> Result<mm::PageBlock, String> {
    let mut frame = mm::alloc_pages(0, ZoneKind::Normal).ok_or("no frame")?;
    frame.as_mut_bytes()[8..16].copy_from_slice(&pattern.to_le_bytes());
    Ok(frame)
}

/// A window page remapped from frame A to frame B is read as B by every CPU after the TLB
/// shootdown, although each had just cached the translation to A. The control case remaps
/// without the shootdown and counts the CPUs still reading A through their stale TLB entry.
pub(super) fn tlb_shootdown_reaches_every_cpu() -> TestResult {
    cpu::enable_interrupts();
    const PATTERN_A: u64 = 0xAAAA_0000_0000_000A;
    const PATTERN_B: u64 = 0xBBBB_0000_0000_000B;
    let error = |e: kmap::WindowError| alloc::format!("{e}");
    let refused = |(e, _): (kmap::WindowError, mm::PageBlock)| alloc::format!("{e}");
    let frame_b = mm::alloc_pages(0, ZoneKind::Normal).ok_or("no frame B")?;
    let frame_b_address = frame_b.address();
    let mut window = Kmap::new(frame_b).map_err(refused)?;
    window.write_u64(8, PATTERN_B).map_err(error)?;
    let frame_a = mm::alloc_pages(0, ZoneKind::Normal).ok_or("no frame A")?;
    let frame_b = window.remap(frame_a).map_err(refused)?;
    window.write_u64(8, PATTERN_A).map_err(error)?;
    WINDOW_TEST_PAGE.store(window.address(), Ordering::Release);
    let me = smp::this_cpu();
    let others = smp::online_count() - 1;
    // Control: every CPU caches VA -> A, then the entry changes with a local flush only.
    let wrong = cpus_not_seeing(PATTERN_A)?;
    ensure!(wrong.is_empty(), "CPUs {wrong:?} did not read frame A");
    window.remap_without_shootdown(frame_b).map_err(refused)?;
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
    let frame_a = frame_with(PATTERN_A)?;
    let frame_b = window.remap(frame_a).map_err(refused)?;
    let wrong = cpus_not_seeing(PATTERN_A)?;
    ensure!(
        wrong.is_empty(),
        "after remapping to frame A with a shootdown, CPUs {wrong:?} read the old frame"
    );
    let frame_a = window.remap(frame_b).map_err(refused)?;
    drop(frame_a);
    let wrong = cpus_not_seeing(PATTERN_B)?;
    ensure!(
        wrong.is_empty(),
        "after remapping to frame B with a shootdown, CPUs {wrong:?} read the old frame"
    );
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
        window.read_u64(4096).is_err(),
        "an offset past the page was accepted"
    );
    let address = window.address();
    let frame_b = window.unmap();
    ensure!(
        frame_b.address() == frame_b_address,
        "unmap did not return frame B"
    );
    ensure!(
        kmap::read_window_u64(address, 8).is_err(),
        "an unmapped window page was readable"
    );
    let two_pages = mm::alloc_pages(1, ZoneKind::Normal).ok_or("no order-1 block")?;
    ensure!(
        Kmap::new(two_pages).is_err(),
        "a block of two pages was mapped as one"
    );
    Ok(())
}

/// `/proc/iomem` in Linux's format: the kernel image nested (indented) inside System RAM, the
/// LAPIC claimed, and nothing refused.
pub(super) fn proc_iomem_nests_the_kernel_in_system_ram() -> TestResult {
    let text = crate::fs::procfs::read("/proc/iomem")?;
    let image = crate::arch::kernel_image_range();
    let kernel_line = alloc::format!("  {:08x}-{:08x} : Kernel image", image.start, image.end - 1);
    ensure!(
        text.lines().any(|line| line == kernel_line),
        "no {kernel_line:?} in:\n{text}"
    );
    let ram_before_kernel = text
        .lines()
        .take_while(|line| *line != kernel_line)
        .last()
        .is_some_and(|line| line.ends_with(" : System RAM"));
    ensure!(
        ram_before_kernel,
        "the kernel is not inside System RAM:\n{text}"
    );
    ensure!(
        text.lines()
            .any(|line| line == "fee00000-fee00fff : Local APIC"),
        "no LAPIC in:\n{text}"
    );
    ensure!(!text.contains("not claimed"), "refused claims:\n{text}");
    Ok(())
}

/// `DmaBuffer::write_bytes`/`read_bytes` copy whole words and then a tail: every offset and
/// length around a word boundary lands exactly where asked, and nothing beside it changes.
pub(super) fn dma_buffer_byte_copies_are_exact_at_every_alignment() -> TestResult {
    use crate::arch::dma::DmaBuffer;
    let buffer = DmaBuffer::alloc(64).ok_or("DMA buffer of 64 bytes")?;
    for offset in 0..9 {
        for len in 0..20 {
            buffer.write_bytes(0, &[0xee; 64]);
            let data: alloc::vec::Vec<u8> = (0..len).map(|i| i as u8 + 1).collect();
            buffer.write_bytes(offset, &data);
            let mut whole = [0u8; 64];
            buffer.read_bytes(0, &mut whole);
            for (at, &byte) in whole.iter().enumerate() {
                let expected = if (offset..offset + len).contains(&at) {
                    (at - offset) as u8 + 1
                } else {
                    0xee
                };
                ensure!(
                    byte == expected,
                    "write of {len} at {offset}: byte {at} is {byte:#x}, not {expected:#x}"
                );
            }
            let mut back = alloc::vec![0u8; len];
            buffer.read_bytes(offset, &mut back);
            ensure!(back == data, "read of {len} at {offset}: {back:?}");
        }
    }
    Ok(())
}
