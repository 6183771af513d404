//! In-kernel tests: a test build (`--features ktest`) runs these at boot on real (emulated)
//! hardware, prints `N passed, N failed` and exits QEMU with a status through isa-debug-exit.

use alloc::string::String;
use alloc::vec::Vec;

use lull_buddy::ZoneKind;

use crate::arch::{self, interrupts};
use crate::{mm, params, printk, procfs};

type TestResult = Result<(), String>;

macro_rules! ensure {
    ($condition:expr, $($message:tt)*) => {
        if !$condition {
            return Err(alloc::format!($($message)*));
        }
    };
}

type TestCase = (&'static str, fn() -> TestResult);

const TESTS: &[TestCase] = &[
    ("heap_allocates_and_frees", heap_allocates_and_frees),
    (
        "page_allocator_serves_every_zone",
        page_allocator_serves_every_zone,
    ),
    (
        "page_allocator_coalesces_on_hardware",
        page_allocator_coalesces_on_hardware,
    ),
    ("zone_dma_matches_build", zone_dma_matches_build),
    ("freed_pages_are_writable", freed_pages_are_writable),
    ("command_line_stored_exactly", command_line_stored_exactly),
    ("tsc_calibration_is_plausible", tsc_calibration_is_plausible),
    ("uptime_is_monotonic", uptime_is_monotonic),
    (
        "software_interrupt_reaches_dispatch",
        software_interrupt_reaches_dispatch,
    ),
    ("acpi_tables_found", acpi_tables_found),
    (
        "procfs_reads_and_validates_writes",
        procfs_reads_and_validates_writes,
    ),
];

fn heap_allocates_and_frees() -> TestResult {
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

fn page_allocator_serves_every_zone() -> TestResult {
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

fn page_allocator_coalesces_on_hardware() -> TestResult {
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

fn zone_dma_matches_build() -> TestResult {
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

fn freed_pages_are_writable() -> TestResult {
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

fn command_line_stored_exactly() -> TestResult {
    let line = params::command_line();
    ensure!(
        line.len() == line.iter().position(|&b| b == 0).unwrap_or(line.len()),
        "NUL inside"
    );
    ensure!(
        params::command_line_sha256().len() == 64,
        "bad digest length"
    );
    Ok(())
}

fn tsc_calibration_is_plausible() -> TestResult {
    let hz = crate::time::tsc_hz();
    ensure!((50_000_000..20_000_000_000).contains(&hz), "TSC at {hz} Hz");
    Ok(())
}

fn uptime_is_monotonic() -> TestResult {
    let mut last = crate::time::uptime_ns();
    for _ in 0..1000 {
        let now = crate::time::uptime_ns();
        ensure!(now >= last, "uptime went back: {last} -> {now}");
        last = now;
    }
    Ok(())
}

fn software_interrupt_reaches_dispatch() -> TestResult {
    let before = interrupts::count(0x80);
    arch::software_interrupt_0x80();
    arch::software_interrupt_0x80();
    ensure!(
        interrupts::count(0x80) == before + 2,
        "vector 0x80 count did not advance by 2"
    );
    Ok(())
}

fn acpi_tables_found() -> TestResult {
    let info = crate::acpi().ok_or("no ACPI")?;
    ensure!(info.tables.iter().any(|t| t == b"APIC"), "no MADT");
    ensure!(!info.io_apics.is_empty(), "no IOAPIC");
    ensure!(!info.local_apic_ids.is_empty(), "no CPU in the MADT");
    ensure!(info.s5_sleep_type.is_some(), "no \\_S5 in the DSDT");
    ensure!(
        info.pm1a_control_block.is_some() || info.sleep_control.is_some(),
        "no way to enter S5"
    );
    Ok(())
}

fn procfs_reads_and_validates_writes() -> TestResult {
    ensure!(
        procfs::read("/proc/version")?.starts_with("Lull version"),
        "bad /proc/version"
    );
    ensure!(
        procfs::read("/proc/nonexistent").is_err(),
        "missing file read succeeded"
    );
    ensure!(
        procfs::write("/proc/sys/kernel/printk", "banana").is_err(),
        "bad value accepted"
    );
    procfs::write("/proc/sys/kernel/printk", "7")?;
    ensure!(
        procfs::write("/proc/version", "x").is_err(),
        "read-only file written"
    );
    Ok(())
}

impl From<procfs::ProcError> for String {
    fn from(error: procfs::ProcError) -> String {
        alloc::format!("{error}")
    }
}

/// Runs every test, prints the summary line and exits QEMU (33 = all passed, 35 = failures).
pub fn run_and_exit() -> ! {
    let mut passed = 0;
    let mut failed = 0;
    for (name, test) in TESTS {
        match test() {
            Ok(()) => {
                passed += 1;
                printk!("ktest {name} ... ok");
            }
            Err(why) => {
                failed += 1;
                printk!("ktest {name} ... FAILED: {why}");
            }
        }
    }
    crate::kprintln!("{passed} passed, {failed} failed");
    let status = if failed == 0 {
        arch::power::EXIT_TESTS_PASSED
    } else {
        arch::power::EXIT_TESTS_FAILED
    };
    arch::power::exit_failure(status)
}
