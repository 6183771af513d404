//! In-kernel tests: a test build (`--features ktest`) runs these at boot on real (emulated)
//! hardware, prints `N passed, N failed` and exits QEMU with a status through isa-debug-exit.

use alloc::string::String;
use alloc::vec::Vec;

use lull_buddy::ZoneKind;

use core::sync::atomic::{AtomicU64, Ordering};

use lull_time::clockevents::{ClockEventDevice, DeviceError, Features};

use crate::arch::{self, cpu, interrupts};
use crate::time::{self, TickDevice};
use crate::{mm, params, printk, procfs, smp};

type TestResult = Result<(), String>;

macro_rules! ensure {
    ($condition:expr, $($message:tt)*) => {
        if !$condition {
            return Err(alloc::format!($($message)*));
        }
    };
}

type TestCase = (&'static str, fn() -> TestResult);

mod locks;

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
        "rsdp_scan_validates_and_unmaps",
        rsdp_scan_validates_and_unmaps,
    ),
    (
        "procfs_reads_and_validates_writes",
        procfs_reads_and_validates_writes,
    ),
    (
        "hrtimer_sleep_never_returns_early",
        hrtimer_sleep_never_returns_early,
    ),
    (
        "jiffies_catch_up_across_tickless_sleep",
        jiffies_catch_up_across_tickless_sleep,
    ),
    ("timer_list_shows_the_tick", timer_list_shows_the_tick),
    (
        "every_possible_cpu_comes_online",
        every_possible_cpu_comes_online,
    ),
    (
        "call_function_ipi_runs_on_each_cpu",
        call_function_ipi_runs_on_each_cpu,
    ),
    ("reschedule_ipi_is_delivered", reschedule_ipi_is_delivered),
    (
        "secondary_cpus_idle_with_tick_stopped",
        secondary_cpus_idle_with_tick_stopped,
    ),
    (
        "hrtimer_fires_on_the_cpu_that_armed_it",
        hrtimer_fires_on_the_cpu_that_armed_it,
    ),
    (
        "threads_on_every_cpu_count_exactly_under_a_lock",
        threads_on_every_cpu_count_exactly_under_a_lock,
    ),
    ("wakeup_storm_loses_no_wakeup", wakeup_storm_loses_no_wakeup),
    (
        "yield_to_runs_the_target_next",
        yield_to_runs_the_target_next,
    ),
    (
        "ping_pong_between_two_threads",
        ping_pong_between_two_threads,
    ),
    (
        "two_busy_threads_share_one_cpu_by_preemption",
        two_busy_threads_share_one_cpu_by_preemption,
    ),
    (
        "woken_fifo_thread_preempts_a_busy_fair_thread",
        woken_fifo_thread_preempts_a_busy_fair_thread,
    ),
    (
        "sleeping_thread_lets_its_cpu_run_others",
        sleeping_thread_lets_its_cpu_run_others,
    ),
    (
        "threaded_irq_handles_the_hpet_comparator",
        threaded_irq_handles_the_hpet_comparator,
    ),
    (
        "free_irq_waits_for_the_thread_and_stops_it",
        free_irq_waits_for_the_thread_and_stops_it,
    ),
    (
        "level_oneshot_line_stays_masked_until_its_thread_ran",
        level_oneshot_line_stays_masked_until_its_thread_ran,
    ),
    (
        "cpu_masks_parse_and_print_as_linux",
        cpu_masks_parse_and_print_as_linux,
    ),
    (
        "irq_affinity_moves_the_hpet_line",
        irq_affinity_moves_the_hpet_line,
    ),
    (
        "tlb_shootdown_reaches_every_cpu",
        tlb_shootdown_reaches_every_cpu,
    ),
    (
        "lockdep_reports_an_inverted_lock_pair",
        lockdep_reports_an_inverted_lock_pair,
    ),
    (
        "tsc_is_synchronized_across_cpus",
        tsc_is_synchronized_across_cpus,
    ),
    (
        "lock_stress_on_every_cpu_counts_exactly",
        lock_stress_on_every_cpu_counts_exactly,
    ),
    (
        "proc_files_have_a_column_per_cpu",
        proc_files_have_a_column_per_cpu,
    ),
    (
        "ticket_spinlock_serves_cpus_in_arrival_order",
        locks::ticket_spinlock_serves_cpus_in_arrival_order,
    ),
    (
        "mutex_holders_sleep_and_count_exactly",
        locks::mutex_holders_sleep_and_count_exactly,
    ),
    (
        "contended_sleeping_locks_lose_no_waiter",
        locks::contended_sleeping_locks_lose_no_waiter,
    ),
    (
        "rwlock_shares_readers_and_excludes_writers",
        locks::rwlock_shares_readers_and_excludes_writers,
    ),
    (
        "preemption_happens_at_spinlock_release",
        locks::preemption_happens_at_spinlock_release,
    ),
    (
        "sleeping_lock_under_a_spinlock_is_reported",
        locks::sleeping_lock_under_a_spinlock_is_reported,
    ),
];

fn every_possible_cpu_comes_online() -> TestResult {
    let info = crate::acpi().ok_or("no ACPI")?;
    let firmware = info.local_apic_ids.len().clamp(1, crate::sync::MAX_CPUS);
    let possible = smp::possible_cpus();
    let online = smp::online_count();
    printk!("ktest smp: {online} CPUs online of {possible} possible ({firmware} in the MADT)");
    ensure!(
        possible == firmware,
        "{possible} possible CPUs, MADT lists {firmware}"
    );
    ensure!(online == possible, "{online} of {possible} CPUs online");
    for cpu in 0..possible {
        let id = smp::apic_id(cpu);
        ensure!(
            (0..possible)
                .filter(|&other| smp::apic_id(other) == id)
                .count()
                == 1,
            "APIC id {id} of CPU {cpu} is not unique"
        );
    }
    Ok(())
}

/// What each CPU saw when the call-function IPI ran there: `cpu index << 32 | APIC id`.
static RAN_ON: [AtomicU64; crate::sync::MAX_CPUS] =
    [const { AtomicU64::new(u64::MAX) }; crate::sync::MAX_CPUS];

fn record_where_this_runs(slot: u64) {
    let interrupts_off = crate::sync::InterruptsDisabled::new();
    let seen = ((interrupts_off.cpu_index() as u64) << 32) | arch::apic::local_apic_id() as u64;
    RAN_ON[slot as usize].store(seen, Ordering::Release);
}

fn call_function_ipi_runs_on_each_cpu() -> TestResult {
    cpu::enable_interrupts();
    let me = smp::this_cpu();
    for cpu in smp::online_cpus() {
        RAN_ON[cpu].store(u64::MAX, Ordering::Relaxed);
        let before = interrupts::count_on(cpu, smp::CALL_FUNCTION_VECTOR);
        let started = time::uptime_ns();
        smp::call_function_single(cpu, record_where_this_runs, cpu as u64)
            .map_err(|e| alloc::format!("call to CPU {cpu}: {e}"))?;
        let round_trip_ns = time::uptime_ns() - started;
        let seen = RAN_ON[cpu].load(Ordering::Acquire);
        ensure!(
            seen >> 32 == cpu as u64,
            "function for CPU {cpu} ran on CPU {}",
            seen >> 32
        );
        ensure!(
            seen & 0xFFFF_FFFF == smp::apic_id(cpu) as u64,
            "CPU {cpu} has APIC id {} but its GS base says it is the CPU with APIC id {}",
            seen & 0xFFFF_FFFF,
            smp::apic_id(cpu)
        );
        let after = interrupts::count_on(cpu, smp::CALL_FUNCTION_VECTOR);
        if cpu != me {
            ensure!(
                after == before + 1,
                "CPU {cpu}: {} call-function interrupts for one call",
                after - before
            );
            printk!("ktest smp: call-function IPI to CPU {cpu}: {round_trip_ns} ns round trip");
        } else {
            ensure!(after == before, "a call to this CPU must not send an IPI");
        }
    }
    ensure!(
        smp::call_function_single(crate::sync::MAX_CPUS - 1, record_where_this_runs, 0)
            == Err(smp::CallError::Offline(crate::sync::MAX_CPUS - 1))
            || smp::possible_cpus() == crate::sync::MAX_CPUS,
        "a call to an offline CPU was not refused"
    );
    cpu::disable_interrupts();
    let refused = smp::call_function_single(0, record_where_this_runs, 0);
    cpu::enable_interrupts();
    ensure!(
        refused == Err(smp::CallError::InterruptsDisabled),
        "waiting with interrupts off was allowed: {refused:?}"
    );
    Ok(())
}

fn reschedule_ipi_is_delivered() -> TestResult {
    cpu::enable_interrupts();
    let me = smp::this_cpu();
    for cpu in smp::online_cpus().filter(|&cpu| cpu != me) {
        let before = interrupts::count_on(cpu, smp::RESCHEDULE_VECTOR);
        smp::send_reschedule(cpu).map_err(|e| alloc::format!("{e}"))?;
        let deadline = time::uptime_ns() + 1_000_000_000;
        while interrupts::count_on(cpu, smp::RESCHEDULE_VECTOR) == before {
            ensure!(
                time::uptime_ns() < deadline,
                "CPU {cpu} did not take the reschedule IPI within 1 s"
            );
            core::hint::spin_loop();
        }
    }
    Ok(())
}

fn secondary_cpus_idle_with_tick_stopped() -> TestResult {
    // Give every CPU time to reach its idle loop after the IPIs above.
    time::msleep(50);
    for cpu in smp::online_cpus().filter(|&cpu| cpu != 0) {
        let state = time::cpu_tick_state(cpu).ok_or(alloc::format!("CPU {cpu} has no tick"))?;
        ensure!(
            state.device.starts_with("lapic"),
            "CPU {cpu} ticks on {}, not its own LAPIC",
            state.device
        );
        if !time::nohz_active() {
            // No verified clocksource (microvm: the TSC alone): every CPU keeps its tick.
            ensure!(
                !state.tick_stopped,
                "CPU {cpu} stopped its tick without NO_HZ"
            );
            continue;
        }
        ensure!(state.tick_stopped, "CPU {cpu} idles with its tick running");
        ensure!(state.idle_sleeps >= 1, "CPU {cpu} never stopped its tick");
        let before = time::local_timer_interrupts(cpu);
        time::msleep(100);
        let after = time::local_timer_interrupts(cpu);
        ensure!(
            after - before <= 1,
            "idle CPU {cpu} took {} timer interrupts in 100 ms",
            after - before
        );
    }
    Ok(())
}

fn arm_probe_timer_here(delay_ns: u64) {
    if let Err(why) = time::arm_probe_timer(delay_ns) {
        printk!("ktest: arming the probe timer failed: {why}");
    }
}

/// Each CPU's hrtimers run from its own tick device: a timer armed on CPU n (from the
/// call-function IPI) fires on CPU n and shows as a local timer interrupt there.
fn hrtimer_fires_on_the_cpu_that_armed_it() -> TestResult {
    cpu::enable_interrupts();
    for cpu in smp::online_cpus() {
        let before = time::local_timer_interrupts(cpu);
        smp::call_function_single(cpu, arm_probe_timer_here, 2_000_000)
            .map_err(|e| alloc::format!("CPU {cpu}: {e}"))?;
        let deadline = time::uptime_ns() + 2_000_000_000;
        let fired_on = loop {
            if let Some(fired_on) = time::probe_timer_fired_on(cpu) {
                break fired_on;
            }
            ensure!(
                time::uptime_ns() < deadline,
                "the timer armed on CPU {cpu} did not fire within 2 s"
            );
            core::hint::spin_loop();
        };
        ensure!(
            fired_on == cpu,
            "timer armed on CPU {cpu} fired on CPU {fired_on}"
        );
        ensure!(
            time::local_timer_interrupts(cpu) > before,
            "CPU {cpu}'s timer fired without a local timer interrupt there"
        );
    }
    Ok(())
}

/// What the TSC read on the CPU a call-function IPI ran on.
static REMOTE_TSC: AtomicU64 = AtomicU64::new(0);

fn read_tsc_here(_: u64) {
    REMOTE_TSC.store(cpu::rdtsc(), Ordering::Release);
}

/// The clocksource may be the TSC, read on whichever CPU asks: every CPU's TSC must lie
/// between two reads on this CPU that bracket it (Linux's `check_tsc_sync_source`, coarse).
fn tsc_is_synchronized_across_cpus() -> TestResult {
    cpu::enable_interrupts();
    for cpu in smp::online_cpus() {
        for _ in 0..3 {
            let before = cpu::rdtsc();
            smp::call_function_single(cpu, read_tsc_here, 0)
                .map_err(|e| alloc::format!("CPU {cpu}: {e}"))?;
            let after = cpu::rdtsc();
            let remote = REMOTE_TSC.load(Ordering::Acquire);
            ensure!(
                before <= remote && remote <= after,
                "CPU {cpu}'s TSC {remote} is outside [{before}, {after}] read on this CPU"
            );
        }
    }
    Ok(())
}

/// Shared by every CPU in the stress test. The increment is a separate read and write (with a
/// pause between) so that two CPUs inside the lock at once would lose counts.
static STRESS_COUNTER: crate::sync::IrqSafeLock<u64> = crate::sync::IrqSafeLock::new(0);
const STRESS_ROUNDS: u64 = 20_000;

fn hammer_the_shared_counter(rounds: u64) {
    for _ in 0..rounds {
        let mut counter = STRESS_COUNTER.lock();
        let seen = core::hint::black_box(*counter);
        core::hint::spin_loop();
        *counter = seen + 1;
    }
}

/// No big lock, but the small ones must hold: every online CPU increments one lock-protected
/// counter at the same time (call-function IPIs to all CPUs at once, this CPU included), and
/// not one increment is lost.
fn lock_stress_on_every_cpu_counts_exactly() -> TestResult {
    cpu::enable_interrupts();
    *STRESS_COUNTER.lock() = 0;
    let cpus: Vec<usize> = smp::online_cpus().collect();
    let started = time::uptime_ns();
    smp::call_function_many(&cpus, hammer_the_shared_counter, STRESS_ROUNDS)
        .map_err(|e| alloc::format!("{e}"))?;
    let elapsed_us = (time::uptime_ns() - started) / 1000;
    let total = *STRESS_COUNTER.lock();
    let expected = STRESS_ROUNDS * cpus.len() as u64;
    printk!(
        "ktest smp: {} CPUs x {STRESS_ROUNDS} locked increments in {elapsed_us} us",
        cpus.len()
    );
    ensure!(
        total == expected,
        "{total} increments counted, {expected} made"
    );
    Ok(())
}

fn proc_files_have_a_column_per_cpu() -> TestResult {
    let online = smp::online_count();
    let interrupts_file = procfs::read("/proc/interrupts")?;
    let header = interrupts_file.lines().next().unwrap_or("");
    ensure!(
        header.split_whitespace().count() == online,
        "/proc/interrupts header {header:?} for {online} CPUs"
    );
    for label in ["LOC:", "CAL:", "RES:"] {
        let row = interrupts_file
            .lines()
            .find(|line| line.trim_start().starts_with(label))
            .ok_or(alloc::format!("no {label} row"))?;
        let numbers = row
            .split_whitespace()
            .skip(1)
            .take_while(|word| word.parse::<u64>().is_ok())
            .count();
        ensure!(numbers == online, "{label} row has {numbers} counts: {row}");
    }
    let list = procfs::read("/proc/timer_list")?;
    for cpu in smp::online_cpus() {
        ensure!(
            list.contains(&alloc::format!("cpu: {cpu}\n")),
            "/proc/timer_list has no block for CPU {cpu}"
        );
    }
    Ok(())
}

fn hrtimer_sleep_never_returns_early() -> TestResult {
    // xorshift: a deterministic spread of delays from 0 to ~1.5 ms.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut worst_late = 0;
    for _ in 0..300 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let deadline = time::uptime_ns() + state % 1_500_000;
        let woke = time::sleep_until(deadline, "ktest");
        ensure!(woke >= deadline, "woke {} ns early", deadline - woke);
        let now = time::uptime_ns();
        ensure!(
            now >= deadline,
            "clock reads {} ns before the deadline after waking",
            deadline - now
        );
        worst_late = worst_late.max(woke - deadline);
    }
    printk!("ktest hrtimer sleeps: worst lateness {worst_late} ns");
    Ok(())
}

fn jiffies_catch_up_across_tickless_sleep() -> TestResult {
    let start_jiffies = time::current_jiffies();
    let start = time::uptime_ns();
    time::msleep(200);
    let elapsed_ns = time::uptime_ns() - start;
    let advanced = time::current_jiffies() - start_jiffies;
    let expected = elapsed_ns * lull_time::tick::HZ as u64 / 1_000_000_000;
    ensure!(
        advanced + 1 >= expected && advanced <= expected + 1,
        "jiffies advanced {advanced} in {elapsed_ns} ns (expected {expected})"
    );
    Ok(())
}

fn timer_list_shows_the_tick() -> TestResult {
    let list = procfs::read("/proc/timer_list")?;
    ensure!(list.contains("Clock Event Device: "), "no device block");
    ensure!(list.contains("jiffies: "), "no jiffies");
    let stats = procfs::read("/proc/timer_stats")?;
    ensure!(
        stats.starts_with("Timer Stats Version: v0.2"),
        "timer_stats: {stats}"
    );
    Ok(())
}

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

fn rsdp_scan_validates_and_unmaps() -> TestResult {
    arch::acpi::rsdp_scan_self_test(crate::acpi().map(|info| info.rsdp_address))
        .map_err(String::from)
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

// ---- time hardware (run before the tick starts, with the devices to themselves) -----------

static DEVICE_FIRED: AtomicU64 = AtomicU64::new(0);
static DEVICE_FIRED_AT: AtomicU64 = AtomicU64::new(0);
static EARLY_PASSED: AtomicU64 = AtomicU64::new(0);
static EARLY_FAILED: AtomicU64 = AtomicU64::new(0);

fn device_test_handler(_vector: u8) {
    DEVICE_FIRED_AT.store(time::uptime_ns(), Ordering::SeqCst);
    DEVICE_FIRED.fetch_add(1, Ordering::SeqCst);
}

/// Halts (interrupts on) until `count` interrupts arrived or `limit_ns` passed.
fn wait_for_interrupts(count: u64, limit_ns: u64) -> bool {
    let start = time::uptime_ns();
    loop {
        cpu::disable_interrupts();
        if DEVICE_FIRED.load(Ordering::SeqCst) >= count {
            cpu::enable_interrupts();
            return true;
        }
        if time::uptime_ns() - start > limit_ns {
            cpu::enable_interrupts();
            return false;
        }
        // A pending interrupt is taken here; a device that never fires is caught by the
        // limit because the serial line or a later check wakes us (and we poll briefly).
        cpu::enable_interrupts();
        for _ in 0..1000 {
            core::hint::spin_loop();
        }
    }
}

fn ns_to_cycles(ns: u64, hz: u64) -> u64 {
    (ns as u128 * hz as u128 / 1_000_000_000) as u64
}

/// One-shot: the interrupt arrives, and never before the programmed delay. Periodic (where
/// supported): five interrupts arrive no sooner than five periods.
fn clock_event_device_works(mut device: TickDevice) -> TestResult {
    let name = device.name();
    let vector = time::device_vector(&device);
    time::route_device(&device);
    interrupts::set_handler(vector, device_test_handler);
    let result = (|| {
        let hz = device.frequency_hz();
        DEVICE_FIRED.store(0, Ordering::SeqCst);
        device
            .set_state_oneshot()
            .map_err(|e| alloc::format!("{name}: oneshot: {e}"))?;
        let delay_ns = 2_000_000;
        let cycles =
            ns_to_cycles(delay_ns, hz).clamp(device.min_delta_cycles(), device.max_delta_cycles());
        let programmed_ns = cycles as u128 * 1_000_000_000 / hz as u128;
        // A device may answer "event time already passed" when the vCPU was descheduled
        // between arming and its own check (Linux's -ETIME): arm again, as the clockevents
        // layer does, up to three times.
        let mut attempt = 0;
        let start = loop {
            DEVICE_FIRED.store(0, Ordering::SeqCst);
            let start = time::uptime_ns();
            match device.set_next_event(cycles) {
                Ok(()) => break start,
                Err(DeviceError::Time) if attempt < 3 => attempt += 1,
                Err(e) => return Err(alloc::format!("{name}: set_next_event: {e}")),
            }
        };
        ensure!(
            wait_for_interrupts(1, 1_000_000_000),
            "{name}: one-shot interrupt never arrived"
        );
        let elapsed = DEVICE_FIRED_AT.load(Ordering::SeqCst) - start;
        // Allow one device cycle of rounding; anything earlier is a bug.
        let tolerance = 1_000_000_000 / hz + 1;
        ensure!(
            elapsed as u128 + tolerance as u128 >= programmed_ns,
            "{name}: fired after {elapsed} ns, programmed for {programmed_ns} ns"
        );
        device
            .set_state_shutdown()
            .map_err(|e| alloc::format!("{name}: shutdown: {e}"))?;
        if device.features().contains(Features::PERIODIC) {
            DEVICE_FIRED.store(0, Ordering::SeqCst);
            let period = ns_to_cycles(1_000_000, hz).max(device.min_delta_cycles());
            let start = time::uptime_ns();
            device
                .set_state_periodic(period)
                .map_err(|e| alloc::format!("{name}: periodic: {e}"))?;
            let arrived = wait_for_interrupts(5, 1_000_000_000);
            device
                .set_state_shutdown()
                .map_err(|e| alloc::format!("{name}: shutdown: {e}"))?;
            ensure!(
                arrived,
                "{name}: only {} periodic interrupts",
                DEVICE_FIRED.load(Ordering::SeqCst)
            );
            let elapsed = DEVICE_FIRED_AT.load(Ordering::SeqCst) - start;
            ensure!(
                elapsed >= 4_900_000,
                "{name}: 5 periods of 1 ms took only {elapsed} ns"
            );
        }
        printk!("ktest {name}: one-shot after {elapsed} ns (programmed {programmed_ns} ns)");
        Ok(())
    })();
    interrupts::clear_handler(vector);
    result
}

/// Every registered clocksource counts at its declared rate (against the TSC) and forwards.
fn clocksources_count_at_their_rate() -> TestResult {
    let sources = time::clocksources();
    let acpi = crate::acpi();
    let expected = 1
        + usize::from(acpi.is_some_and(|a| a.hpet_address.is_some()))
        + usize::from(acpi.is_some_and(|a| a.pm_timer.is_some()));
    ensure!(
        sources.len() == expected,
        "{} clocksources registered, {expected} expected",
        sources.len()
    );
    for (name, _, _, _, _, _) in sources {
        // 20 ms windows, best of three: the host may deschedule the vCPU between the two
        // reads that open or close a window, which shows up as a skew in one window only.
        let mut best: Option<(u128, u128)> = None;
        for _ in 0..3 {
            let tsc_start = cpu::rdtsc();
            let (first, hz, mask) = time::read_clocksource(name).ok_or("clocksource vanished")?;
            let window = time::tsc_hz() / 50;
            while cpu::rdtsc() - tsc_start < window {
                core::hint::spin_loop();
            }
            let (second, _, _) = time::read_clocksource(name).ok_or("clocksource vanished")?;
            let tsc_ns =
                (cpu::rdtsc() - tsc_start) as u128 * 1_000_000_000 / time::tsc_hz() as u128;
            let counted = second.wrapping_sub(first) & mask;
            ensure!(counted > 0, "{name} did not advance");
            let counted_ns = counted as u128 * 1_000_000_000 / hz as u128;
            let error = counted_ns.abs_diff(tsc_ns);
            if best.is_none_or(|(c, t)| error < c.abs_diff(t)) {
                best = Some((counted_ns, tsc_ns));
            }
        }
        let (counted_ns, tsc_ns) = best.ok_or("no sample")?;
        let ratio_per_mille = counted_ns * 1000 / tsc_ns.max(1);
        ensure!(
            (980..=1020).contains(&ratio_per_mille),
            "{name}: counted {counted_ns} ns while the TSC counted {tsc_ns} ns"
        );
        printk!("ktest clocksource {name}: {counted_ns} ns over {tsc_ns} TSC ns");
    }
    Ok(())
}

/// Runs the time-hardware tests before the tick starts (called from boot in test builds).
pub fn run_device_tests() {
    let mut cases: Vec<(String, TestResult)> = Vec::new();
    cases.push((
        String::from("clocksources_count_at_their_rate"),
        clocksources_count_at_their_rate(),
    ));
    let devices = time::available_devices();
    let names: Vec<&str> = devices.iter().map(|d| d.name()).collect();
    cases.push((
        String::from("q35_has_lapic_hpet_and_pit"),
        if ["lapic", "hpet", "pit"].iter().all(|n| names.contains(n))
            || crate::acpi().is_none_or(|a| a.hpet_address.is_none())
        {
            Ok(())
        } else {
            Err(alloc::format!("devices found: {names:?}"))
        },
    ));
    for device in devices {
        let name = alloc::format!("clock_event_device_{}_works", device.name());
        cases.push((name, clock_event_device_works(device)));
    }
    for (name, result) in cases {
        match result {
            Ok(()) => {
                EARLY_PASSED.fetch_add(1, Ordering::Relaxed);
                printk!("ktest {name} ... ok");
            }
            Err(why) => {
                EARLY_FAILED.fetch_add(1, Ordering::Relaxed);
                printk!("ktest {name} ... FAILED: {why}");
            }
        }
    }
}

/// Runs every test, prints the summary line and exits QEMU (33 = all passed, 35 = failures).
pub fn run_and_exit() -> ! {
    let mut passed = EARLY_PASSED.load(Ordering::Relaxed);
    let mut failed = EARLY_FAILED.load(Ordering::Relaxed);
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

// ---- kernel threads and the scheduler ---------------------------------------------------------

use alloc::sync::Arc;
use core::sync::atomic::AtomicBool;

use lull_sched::{CpuSet, SchedClass};

use crate::sched::{self, Completion};
use crate::sync::IrqSafeLock;

/// Waits (sleeping in 5 ms steps) until `done()` or `timeout_ms` passed; returns `done()`.
fn wait_for(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = time::uptime_ns() + timeout_ms * 1_000_000;
    while !done() {
        if time::uptime_ns() > deadline {
            return done();
        }
        time::msleep(5);
    }
    true
}

fn spawn(
    name: &str,
    class: SchedClass,
    cpus: CpuSet,
    body: impl FnOnce() + Send + 'static,
) -> Result<u64, String> {
    sched::kthread_spawn(name, class, cpus, body).map_err(|e| alloc::format!("spawn {name}: {e}"))
}

/// Threads pinned to every online CPU increment one counter under a spinlock with a split
/// read-modify-write (a lost update would show); the total must be exact.
fn threads_on_every_cpu_count_exactly_under_a_lock() -> TestResult {
    const PER_THREAD: u64 = 20_000;
    const THREADS_PER_CPU: usize = 2;
    struct Shared {
        counter: IrqSafeLock<u64>,
        finished: Completion,
        wrong_cpu: AtomicU64,
    }
    let shared = Arc::new(Shared {
        counter: IrqSafeLock::new(0),
        finished: Completion::new(),
        wrong_cpu: AtomicU64::new(0),
    });
    let cpus: Vec<usize> = smp::online_cpus().collect();
    for &cpu in &cpus {
        for _ in 0..THREADS_PER_CPU {
            let shared = Arc::clone(&shared);
            spawn(
                "counter",
                SchedClass::NORMAL,
                CpuSet::single(cpu),
                move || {
                    for _ in 0..PER_THREAD {
                        let mut counter = shared.counter.lock();
                        let value = core::hint::black_box(*counter);
                        *counter = value + 1;
                    }
                    if smp::this_cpu() != cpu {
                        shared.wrong_cpu.fetch_add(1, Ordering::Relaxed);
                    }
                    shared.finished.complete();
                },
            )?;
        }
    }
    let threads = (cpus.len() * THREADS_PER_CPU) as u64;
    for _ in 0..threads {
        shared.finished.wait();
    }
    let total = *shared.counter.lock();
    ensure!(
        total == threads * PER_THREAD,
        "counter {total}, expected {} ({threads} threads on {} CPUs)",
        threads * PER_THREAD,
        cpus.len()
    );
    ensure!(
        shared.wrong_cpu.load(Ordering::Relaxed) == 0,
        "{} pinned threads ran outside their CPU",
        shared.wrong_cpu.load(Ordering::Relaxed)
    );
    printk!(
        "ktest sched: {threads} threads on {} CPUs counted {total} under one spinlock",
        cpus.len()
    );
    Ok(())
}

/// Many wakers complete one counted completion many times while a waiter consumes every one:
/// a lost wake-up would leave the waiter asleep with completions pending.
fn wakeup_storm_loses_no_wakeup() -> TestResult {
    const WAKERS: u64 = 8;
    const PER_WAKER: u64 = 2_000;
    struct Shared {
        completion: Completion,
        consumed: AtomicU64,
        waiter_done: AtomicBool,
        wakers_done: AtomicU64,
    }
    let shared = Arc::new(Shared {
        completion: Completion::new(),
        consumed: AtomicU64::new(0),
        waiter_done: AtomicBool::new(false),
        wakers_done: AtomicU64::new(0),
    });
    let waiter = Arc::clone(&shared);
    spawn("storm-waiter", SchedClass::NORMAL, CpuSet::ALL, move || {
        for _ in 0..WAKERS * PER_WAKER {
            waiter.completion.wait();
            waiter.consumed.fetch_add(1, Ordering::Relaxed);
        }
        waiter.waiter_done.store(true, Ordering::Release);
    })?;
    for _ in 0..WAKERS {
        let waker = Arc::clone(&shared);
        spawn("storm-waker", SchedClass::NORMAL, CpuSet::ALL, move || {
            for round in 0..PER_WAKER {
                waker.completion.complete();
                if round % 64 == 0 {
                    sched::yield_now();
                }
            }
            waker.wakers_done.fetch_add(1, Ordering::Release);
        })?;
    }
    let finished = wait_for(30_000, || shared.waiter_done.load(Ordering::Acquire));
    ensure!(
        finished,
        "waiter stuck after {} of {} completions ({} pending, {} of {WAKERS} wakers done): a wake-up was lost",
        shared.consumed.load(Ordering::Relaxed),
        WAKERS * PER_WAKER,
        shared.completion.pending(),
        shared.wakers_done.load(Ordering::Relaxed)
    );
    ensure!(
        shared.completion.pending() == 0,
        "{} completions left over",
        shared.completion.pending()
    );
    Ok(())
}

/// `yield_to` hands the CPU to a waiting thread on the same CPU: it has run by the time the
/// yielder runs again.
fn yield_to_runs_the_target_next() -> TestResult {
    let mut last_error = String::new();
    for _attempt in 0..5 {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let cpu = smp::this_cpu();
        let target = spawn(
            "yield-target",
            SchedClass::NORMAL,
            CpuSet::single(cpu),
            move || {
                flag.store(true, Ordering::Release);
            },
        )?;
        let runnable_before = sched::task_info(target)
            .is_some_and(|info| info.state == lull_sched::TaskState::Runnable);
        if !runnable_before || ran.load(Ordering::Acquire) {
            last_error = String::from("the target ran before yield_to (preempted); retried");
            wait_for(1000, || ran.load(Ordering::Acquire));
            continue;
        }
        let yielded = sched::yield_to(target);
        ensure!(
            yielded,
            "yield_to a runnable fair thread on this CPU did not yield"
        );
        ensure!(
            ran.load(Ordering::Acquire),
            "the yielder ran again before the target"
        );
        return Ok(());
    }
    Err(last_error)
}

/// Two threads hand a token back and forth through two completions; reports the cost of one
/// switch (wake-up + context switch) on one CPU and across two.
fn ping_pong_between_two_threads() -> TestResult {
    const ROUNDS: u64 = 5_000;
    struct Shared {
        ping: Completion,
        pong: Completion,
        finished: AtomicBool,
    }
    let cpus: Vec<usize> = smp::online_cpus().collect();
    let last = *cpus.last().unwrap_or(&0);
    let mut layouts = alloc::vec![("one CPU", last, last)];
    if cpus.len() >= 3 {
        layouts.push(("two CPUs", cpus[1], cpus[2]));
    }
    for (label, cpu_a, cpu_b) in layouts {
        let shared = Arc::new(Shared {
            ping: Completion::new(),
            pong: Completion::new(),
            finished: AtomicBool::new(false),
        });
        let responder = Arc::clone(&shared);
        spawn(
            "pong",
            SchedClass::NORMAL,
            CpuSet::single(cpu_b),
            move || {
                for _ in 0..ROUNDS {
                    responder.ping.wait();
                    responder.pong.complete();
                }
            },
        )?;
        let initiator = Arc::clone(&shared);
        let elapsed = Arc::new(AtomicU64::new(0));
        let elapsed_out = Arc::clone(&elapsed);
        let switches_before = sched::context_switches(cpu_a);
        spawn(
            "ping",
            SchedClass::NORMAL,
            CpuSet::single(cpu_a),
            move || {
                let start = time::uptime_ns();
                for _ in 0..ROUNDS {
                    initiator.ping.complete();
                    initiator.pong.wait();
                }
                elapsed_out.store(time::uptime_ns() - start, Ordering::Relaxed);
                initiator.finished.store(true, Ordering::Release);
            },
        )?;
        ensure!(
            wait_for(60_000, || shared.finished.load(Ordering::Acquire)),
            "ping-pong on {label} did not finish {ROUNDS} rounds"
        );
        let switches = sched::context_switches(cpu_a) - switches_before;
        let ns = elapsed.load(Ordering::Relaxed);
        if cpu_a == cpu_b {
            ensure!(
                switches >= 2 * ROUNDS,
                "{switches} context switches for {ROUNDS} round trips on one CPU"
            );
        }
        printk!(
            "ktest sched: ping-pong on {label} (CPUs {cpu_a},{cpu_b}): {ROUNDS} round trips in {} us, {} ns per one-way hand-off",
            ns / 1000,
            ns / (2 * ROUNDS)
        );
    }
    Ok(())
}

/// A thread sleeping on an hrtimer gives its CPU to another thread (which runs meanwhile), and
/// is woken by the timer through the scheduler, never early.
fn sleeping_thread_lets_its_cpu_run_others() -> TestResult {
    let cpu = *smp::online_cpus().collect::<Vec<_>>().last().unwrap_or(&0);
    let spins = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sleeper_result = Arc::new(AtomicU64::new(0));
    let (spins_in, stop_in) = (Arc::clone(&spins), Arc::clone(&stop));
    let result = Arc::clone(&sleeper_result);
    let spins_seen = Arc::clone(&spins);
    spawn(
        "sleeper",
        SchedClass::NORMAL,
        CpuSet::single(cpu),
        move || {
            let deadline = time::uptime_ns() + 20_000_000;
            let before = spins_seen.load(Ordering::Relaxed);
            let woke = time::sleep_until(deadline, "ktest_sleeper");
            let ran = spins_seen.load(Ordering::Relaxed) - before;
            // 1 = early, 2 = the spinner never ran meanwhile, 3 = fine.
            result.store(
                if woke < deadline {
                    1
                } else if ran == 0 {
                    2
                } else {
                    3
                },
                Ordering::Release,
            );
        },
    )?;
    spawn(
        "spinner",
        SchedClass::NORMAL,
        CpuSet::single(cpu),
        move || {
            while !stop_in.load(Ordering::Acquire) {
                spins_in.fetch_add(1, Ordering::Relaxed);
                core::hint::spin_loop();
            }
        },
    )?;
    let finished = wait_for(5_000, || sleeper_result.load(Ordering::Acquire) != 0);
    stop.store(true, Ordering::Release);
    ensure!(finished, "the sleeper did not wake within 5 s");
    match sleeper_result.load(Ordering::Acquire) {
        1 => Err(String::from("sleep_until returned before its deadline")),
        2 => Err(String::from(
            "the CPU did not run another thread while the sleeper slept",
        )),
        _ => Ok(()),
    }
}

// ---- device interrupt lines (request_irq, free_irq, affinity) and TLB shootdowns ------------

use crate::irq::{self, IrqFlags, IrqReturn};

static HPET_PRIMARY_RUNS: AtomicU64 = AtomicU64::new(0);
static HPET_THREAD_RUNS: AtomicU64 = AtomicU64::new(0);
/// Thread handler runs that were not in a kernel thread, or found the line's hard IRQ count
/// moving while they ran (the one-shot mask failed).
static HPET_THREAD_WRONG: AtomicU64 = AtomicU64::new(0);
/// How long the thread handler sleeps (ms), so a test can free the line mid-run.
static HPET_THREAD_SLEEP_MS: AtomicU64 = AtomicU64::new(2);
/// Thread handler runs started (finished ones are `HPET_THREAD_RUNS`).
static HPET_THREAD_STARTS: AtomicU64 = AtomicU64::new(0);
/// The CPU the last hard handler ran on.
static HPET_HARD_CPU: AtomicU64 = AtomicU64::new(u64::MAX);

fn reset_hpet_counters(thread_sleep_ms: u64) {
    for counter in [
        &HPET_PRIMARY_RUNS,
        &HPET_THREAD_RUNS,
        &HPET_THREAD_WRONG,
        &HPET_THREAD_STARTS,
    ] {
        counter.store(0, Ordering::SeqCst);
    }
    HPET_THREAD_SLEEP_MS.store(thread_sleep_ms, Ordering::SeqCst);
    HPET_HARD_CPU.store(u64::MAX, Ordering::SeqCst);
}

fn hpet_primary(_irq: u32) -> IrqReturn {
    HPET_PRIMARY_RUNS.fetch_add(1, Ordering::SeqCst);
    HPET_HARD_CPU.store(smp::this_cpu() as u64, Ordering::SeqCst);
    IrqReturn::WakeThread
}

fn hpet_hard_only(_irq: u32) -> IrqReturn {
    HPET_PRIMARY_RUNS.fetch_add(1, Ordering::SeqCst);
    HPET_HARD_CPU.store(smp::this_cpu() as u64, Ordering::SeqCst);
    IrqReturn::Handled
}

fn hpet_thread(irq: u32) -> IrqReturn {
    HPET_THREAD_STARTS.fetch_add(1, Ordering::SeqCst);
    if sched::current().is_none() || !cpu::interrupts_enabled() {
        HPET_THREAD_WRONG.fetch_add(1, Ordering::SeqCst);
    }
    let vector = irq::irq_vector(irq).unwrap_or(0);
    let before = interrupts::count(vector);
    // Sleeping is allowed here.
    time::msleep(HPET_THREAD_SLEEP_MS.load(Ordering::SeqCst));
    if interrupts::count(vector) != before {
        HPET_THREAD_WRONG.fetch_add(1, Ordering::SeqCst);
    }
    HPET_THREAD_RUNS.fetch_add(1, Ordering::SeqCst);
    IrqReturn::Handled
}

/// The HPET comparator as a test interrupt source (idle since the tick moved to the LAPIC);
/// `None` on machines without one (microvm). Its line is released by the time subsystem's
/// device tests, so drivers may request it.
fn test_hpet() -> Option<TickDevice> {
    let device = time::available_devices()
        .into_iter()
        .find(|device| device.name() == "hpet")?;
    if let TickDevice::Hpet { gsi, .. } = device {
        irq::release_tick_line(gsi as u32);
    }
    Some(device)
}

fn hpet_gsi(device: &TickDevice) -> u32 {
    match device {
        TickDevice::Hpet { gsi, .. } => *gsi as u32,
        _ => u32::MAX,
    }
}

/// Arms the HPET comparator once, a few ms ahead. Under a loaded host the comparator write
/// can land after the target time; the device says so and we retry with a longer delay (as
/// clockevents does).
fn fire_hpet(device: &mut TickDevice) -> TestResult {
    let hz = device.frequency_hz();
    device
        .set_state_oneshot()
        .map_err(|e| alloc::format!("oneshot: {e}"))?;
    let mut programmed = Err(String::new());
    for delay_ms in [1, 5, 20, 50] {
        let cycles = ns_to_cycles(delay_ms * 1_000_000, hz)
            .clamp(device.min_delta_cycles(), device.max_delta_cycles());
        programmed = device
            .set_next_event(cycles)
            .map_err(|e| alloc::format!("set_next_event: {e}"));
        if programmed.is_ok() {
            break;
        }
    }
    programmed
}

/// A real device interrupt (the HPET comparator) through `request_threaded_irq` (primary wakes
/// the thread, one-shot line), and through `request_irq` with forced threading (what
/// `threadirqs` does); each line is freed afterwards.
fn threaded_irq_handles_the_hpet_comparator() -> TestResult {
    let Some(mut device) = test_hpet() else {
        return Ok(());
    };
    let gsi = hpet_gsi(&device);
    for forced in [false, true] {
        reset_hpet_counters(2);
        if forced {
            irq::request_irq(gsi, hpet_thread, IrqFlags::FORCE_THREAD, "hpet-test")
        } else {
            irq::request_threaded_irq(
                gsi,
                Some(hpet_primary),
                Some(hpet_thread),
                IrqFlags::ONESHOT,
                "hpet-test",
            )
        }
        .map_err(|e| alloc::format!("request: {e}"))?;
        let result = fire_hpet(&mut device);
        let ran = result.is_ok() && wait_for(2_000, || HPET_THREAD_RUNS.load(Ordering::SeqCst) > 0);
        let _ = device.set_state_shutdown();
        irq::free_irq(gsi).map_err(|e| alloc::format!("free: {e}"))?;
        result?;
        let mode = if forced {
            "forced threading"
        } else {
            "request_threaded_irq"
        };
        ensure!(ran, "{mode}: the handler thread never ran");
        if !forced {
            ensure!(
                HPET_PRIMARY_RUNS.load(Ordering::SeqCst) >= 1,
                "{mode}: the primary handler never ran"
            );
        }
        ensure!(
            HPET_THREAD_WRONG.load(Ordering::SeqCst) == 0,
            "{mode}: the thread handler ran outside a thread or its line fired meanwhile"
        );
    }
    Ok(())
}

fn irq_thread_listed(name: &str) -> bool {
    sched::threads()
        .iter()
        .any(|row| row.name == name && row.info.state != lull_sched::TaskState::Dead)
}

/// `free_irq` waits for a thread handler that is mid-run, stops the line's thread (gone from
/// the thread list), masks the line (a later comparator event reaches no handler and no CPU),
/// refuses a second free, and the line can be requested again.
fn free_irq_waits_for_the_thread_and_stops_it() -> TestResult {
    let Some(mut device) = test_hpet() else {
        return Ok(());
    };
    let gsi = hpet_gsi(&device);
    let thread_name = alloc::format!("irq/{gsi}-hpet-test");
    // While the time subsystem drives a device on the line, nobody else may request it.
    time::route_device(&device);
    let refused = irq::request_irq(gsi, hpet_hard_only, IrqFlags::NONE, "hpet-test");
    irq::release_tick_line(gsi);
    ensure!(
        refused == Err(irq::IrqError::Busy(gsi)),
        "a tick device's line was handed to a driver: {refused:?}"
    );
    ensure!(
        irq::free_irq(gsi) == Err(irq::IrqError::NotRequested(gsi)),
        "freeing a line nobody requested was not refused"
    );
    ensure!(
        irq::request_threaded_irq(gsi, None, Some(hpet_thread), IrqFlags::TRIGGER_HIGH, "bad")
            .is_err(),
        "a level line with a thread and no hard handler was accepted without IRQF_ONESHOT"
    );
    for round in 0..2 {
        // The thread sleeps 50 ms: free_irq is called while it sleeps and must wait for it.
        reset_hpet_counters(50);
        let vector = irq::request_threaded_irq(
            gsi,
            Some(hpet_primary),
            Some(hpet_thread),
            IrqFlags::ONESHOT,
            "hpet-test",
        )
        .map_err(|e| alloc::format!("round {round}: request: {e}"))?;
        ensure!(
            irq::request_irq(gsi, hpet_hard_only, IrqFlags::NONE, "hpet-again")
                == Err(irq::IrqError::Busy(gsi)),
            "a second request for a requested line was not refused"
        );
        ensure!(
            irq_thread_listed(&thread_name),
            "round {round}: no thread {thread_name} after the request"
        );
        fire_hpet(&mut device)?;
        let started = wait_for(2_000, || HPET_THREAD_STARTS.load(Ordering::SeqCst) > 0);
        ensure!(started, "round {round}: the thread handler never started");
        irq::free_irq(gsi).map_err(|e| alloc::format!("round {round}: free: {e}"))?;
        ensure!(
            HPET_THREAD_RUNS.load(Ordering::SeqCst) == HPET_THREAD_STARTS.load(Ordering::SeqCst),
            "round {round}: free_irq returned while the thread handler was still running"
        );
        ensure!(
            !irq_thread_listed(&thread_name),
            "round {round}: thread {thread_name} still listed after free_irq"
        );
        ensure!(
            !procfs::read("/proc/interrupts")?.contains("hpet-test"),
            "round {round}: the freed line is still in /proc/interrupts"
        );
        // Fire again: the line is masked and has no handler.
        let (primary, delivered) = (
            HPET_PRIMARY_RUNS.load(Ordering::SeqCst),
            interrupts::count(vector),
        );
        fire_hpet(&mut device)?;
        time::msleep(60);
        let _ = device.set_state_shutdown();
        ensure!(
            HPET_PRIMARY_RUNS.load(Ordering::SeqCst) == primary
                && interrupts::count(vector) == delivered,
            "round {round}: the comparator reached a CPU or handler after free_irq"
        );
        ensure!(
            irq::free_irq(gsi) == Err(irq::IrqError::NotRequested(gsi)),
            "round {round}: a second free_irq was not refused"
        );
    }
    // A thread handler freeing its own line is refused (it would wait for itself).
    SELF_FREE_RESULT.store(0, Ordering::SeqCst);
    irq::request_threaded_irq(
        gsi,
        None,
        Some(hpet_thread_frees_its_line),
        IrqFlags::ONESHOT,
        "hpet-test",
    )
    .map_err(|e| alloc::format!("request: {e}"))?;
    let fired = fire_hpet(&mut device);
    let answered = wait_for(2_000, || SELF_FREE_RESULT.load(Ordering::SeqCst) != 0);
    let _ = device.set_state_shutdown();
    irq::free_irq(gsi).map_err(|e| alloc::format!("free after the self-free: {e}"))?;
    fired?;
    ensure!(answered, "the self-freeing thread handler never ran");
    ensure!(
        SELF_FREE_RESULT.load(Ordering::SeqCst) == 1,
        "free_irq from the line's own thread was not refused as such"
    );
    Ok(())
}

/// 1: `free_irq` from the line's thread answered `FreedFromOwnThread`; 2: anything else.
static SELF_FREE_RESULT: AtomicU64 = AtomicU64::new(0);

fn hpet_thread_frees_its_line(irq: u32) -> IrqReturn {
    let refused = irq::free_irq(irq) == Err(irq::IrqError::FreedFromOwnThread(irq));
    SELF_FREE_RESULT.store(if refused { 1 } else { 2 }, Ordering::SeqCst);
    IrqReturn::Handled
}

/// The level interrupt the comparator raises stays asserted until the thread acknowledges it:
/// with IRQF_ONESHOT the line stays masked meanwhile (one hard interrupt); unmasked it would
/// storm.
fn level_oneshot_line_stays_masked_until_its_thread_ran() -> TestResult {
    let Some(device) = test_hpet() else {
        return Ok(());
    };
    let TickDevice::Hpet { hpet, timer, gsi } = device else {
        return Err(String::from("hpet device of another kind"));
    };
    LEVEL_TIMER.store(timer as u64, Ordering::SeqCst);
    *LEVEL_HPET.lock() = Some(hpet);
    reset_hpet_counters(10);
    let vector = irq::request_threaded_irq(
        gsi as u32,
        None,
        Some(level_thread),
        IrqFlags::TRIGGER_HIGH | IrqFlags::ONESHOT,
        "hpet-level",
    )
    .map_err(|e| alloc::format!("request: {e}"))?;
    let before = interrupts::count(vector);
    let cycles = ns_to_cycles(2_000_000, hpet.frequency_hz());
    hpet.arm_oneshot_level(timer, gsi, hpet.counter().wrapping_add(cycles));
    let ran = wait_for(2_000, || HPET_THREAD_RUNS.load(Ordering::SeqCst) > 0);
    time::msleep(5);
    hpet.stop(timer);
    hpet.clear_level_interrupt(timer);
    let delivered = interrupts::count(vector) - before;
    let listed = procfs::read("/proc/interrupts")?;
    irq::free_irq(gsi as u32).map_err(|e| alloc::format!("free: {e}"))?;
    ensure!(ran, "the thread of the level line never ran");
    ensure!(
        listed.contains("fasteoi   hpet-level"),
        "the level line is not listed as fasteoi:\n{listed}"
    );
    ensure!(
        HPET_THREAD_WRONG.load(Ordering::SeqCst) == 0,
        "the level line fired while its thread ran (not masked)"
    );
    ensure!(
        delivered == 1,
        "{delivered} hard interrupts for one level event (the line was not kept masked)"
    );
    Ok(())
}

static LEVEL_HPET: IrqSafeLock<Option<crate::arch::hpet::Hpet>> = IrqSafeLock::new(None);
static LEVEL_TIMER: AtomicU64 = AtomicU64::new(0);

/// Thread handler of the level test: the line is still asserted while it sleeps; it then
/// acknowledges the comparator, which deasserts it.
fn level_thread(irq: u32) -> IrqReturn {
    hpet_thread(irq);
    if let Some(hpet) = *LEVEL_HPET.lock() {
        hpet.clear_level_interrupt(LEVEL_TIMER.load(Ordering::SeqCst) as u8);
    }
    IrqReturn::Handled
}

/// The text forms of `/proc/irq/N/smp_affinity` and `smp_affinity_list`.
fn cpu_masks_parse_and_print_as_linux() -> TestResult {
    for (text, mask) in [
        ("f", 0xF),
        ("0x5", 0x5),
        ("00000001,00000000", 1 << 32),
        ("000", 0),
    ] {
        ensure!(
            irq::parse_mask(text) == Ok(mask),
            "{text:?} parsed as {:?}, expected {mask:#x}",
            irq::parse_mask(text)
        );
    }
    for bad in ["", "g", "1 2", "-1", "1,0000000000000000,0"] {
        ensure!(irq::parse_mask(bad).is_err(), "mask {bad:?} was accepted");
    }
    for (text, mask) in [("0-2,5", 0b10_0111), ("3", 0b1000), (" 1,3 ", 0b1010)] {
        ensure!(
            irq::parse_mask_list(text) == Ok(mask),
            "list {text:?} parsed as {:?}",
            irq::parse_mask_list(text)
        );
        ensure!(
            irq::format_mask_list(mask) == text.trim(),
            "{mask:#b} printed as {:?}",
            irq::format_mask_list(mask)
        );
    }
    for bad in ["", "2-1", "64", "a", "1,,2"] {
        ensure!(
            irq::parse_mask_list(bad).is_err(),
            "list {bad:?} was accepted"
        );
    }
    let digits = smp::possible_cpus().div_ceil(4);
    ensure!(
        irq::format_mask(1) == alloc::format!("{:0>digits$}", 1),
        "mask 1 printed as {:?} for {} CPUs",
        irq::format_mask(1),
        smp::possible_cpus()
    );
    Ok(())
}

/// `/proc/irq/N/smp_affinity` moves a line: with the HPET line sent to CPU 1 (and 3), its
/// interrupts are counted there and not on CPU 0. Bad masks are refused and change nothing.
fn irq_affinity_moves_the_hpet_line() -> TestResult {
    let Some(mut device) = test_hpet() else {
        return Ok(());
    };
    let gsi = hpet_gsi(&device);
    reset_hpet_counters(0);
    let vector = irq::request_irq(gsi, hpet_hard_only, IrqFlags::NO_THREAD, "hpet-affinity")
        .map_err(|e| alloc::format!("request: {e}"))?;
    let result = (|| -> TestResult {
        let path = alloc::format!("/proc/irq/{gsi}/smp_affinity");
        let list_path = alloc::format!("/proc/irq/{gsi}/smp_affinity_list");
        let all = irq::format_mask(u64::MAX >> (64 - smp::possible_cpus()));
        ensure!(
            procfs::read(&path)? == alloc::format!("{all}\n"),
            "default {path}: {:?}, expected {all}",
            procfs::read(&path)?
        );
        for bad in ["", "banana", "0", "0x0", "10000000000000000"] {
            ensure!(
                procfs::write(&path, bad).is_err(),
                "{path}: {bad:?} was accepted"
            );
        }
        let missing_cpu = smp::possible_cpus();
        if missing_cpu < 64 {
            ensure!(
                irq::set_irq_affinity(gsi, 1 << missing_cpu).is_err(),
                "a mask naming only CPU {missing_cpu}, which does not exist, was accepted"
            );
        }
        ensure!(
            procfs::write(&list_path, "3-1").is_err() && procfs::write(&list_path, "x").is_err(),
            "{list_path}: a bad list was accepted"
        );
        ensure!(
            irq::irq_affinity(gsi).map(|(_, cpu)| cpu) == Some(0),
            "bad writes changed the line's CPU"
        );
        let targets: Vec<usize> = [1, 3]
            .into_iter()
            .filter(|&cpu| smp::is_online(cpu))
            .chain(core::iter::once(0))
            .collect();
        for target in targets {
            if target == 3 {
                procfs::write(&list_path, "3")?;
            } else {
                procfs::write(&path, &alloc::format!("{:x}", 1u64 << target))?;
            }
            ensure!(
                procfs::read(&alloc::format!("/proc/irq/{gsi}/effective_affinity_list"))?
                    == alloc::format!("{target}\n"),
                "effective affinity is not CPU {target} after the write"
            );
            let counts_before: Vec<u64> = smp::online_cpus()
                .map(|cpu| interrupts::count_on(cpu, vector))
                .collect();
            let runs = HPET_PRIMARY_RUNS.load(Ordering::SeqCst);
            fire_hpet(&mut device)?;
            let fired = wait_for(2_000, || HPET_PRIMARY_RUNS.load(Ordering::SeqCst) > runs);
            ensure!(fired, "the line sent to CPU {target} never fired");
            let risen: Vec<usize> = smp::online_cpus()
                .zip(counts_before)
                .filter(|&(cpu, before)| interrupts::count_on(cpu, vector) > before)
                .map(|(cpu, _)| cpu)
                .collect();
            ensure!(
                risen == [target],
                "line sent to CPU {target}: interrupts counted on CPUs {risen:?}"
            );
            ensure!(
                HPET_HARD_CPU.load(Ordering::SeqCst) == target as u64,
                "the handler ran on CPU {}, not {target}",
                HPET_HARD_CPU.load(Ordering::SeqCst)
            );
        }
        Ok(())
    })();
    let _ = device.set_state_shutdown();
    irq::free_irq(gsi).map_err(|e| alloc::format!("free: {e}"))?;
    result
}

/// What each CPU read through the window.
static WINDOW_READ: [AtomicU64; crate::sync::MAX_CPUS] =
    [const { AtomicU64::new(0) }; crate::sync::MAX_CPUS];
const WINDOW_TEST_PAGE: u64 = crate::kmap::WINDOW_BASE + 7 * 4096;

fn read_window_here(_: u64) {
    let value = crate::kmap::read_u64(WINDOW_TEST_PAGE, 8).unwrap_or(u64::MAX);
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
fn tlb_shootdown_reaches_every_cpu() -> TestResult {
    cpu::enable_interrupts();
    const PATTERN_A: u64 = 0xAAAA_0000_0000_000A;
    const PATTERN_B: u64 = 0xBBBB_0000_0000_000B;
    let frame_a = mm::alloc_pages(0, ZoneKind::Normal).ok_or("no frame A")?;
    let frame_b = mm::alloc_pages(0, ZoneKind::Normal).ok_or("no frame B")?;
    let result = (|| -> TestResult {
        let error = |e: crate::kmap::WindowError| alloc::format!("{e}");
        crate::kmap::map_page(WINDOW_TEST_PAGE, frame_b).map_err(error)?;
        crate::kmap::write_u64(WINDOW_TEST_PAGE, 8, PATTERN_B).map_err(error)?;
        crate::kmap::map_page(WINDOW_TEST_PAGE, frame_a).map_err(error)?;
        crate::kmap::write_u64(WINDOW_TEST_PAGE, 8, PATTERN_A).map_err(error)?;
        let me = smp::this_cpu();
        let others = smp::online_count() - 1;
        // Control: every CPU caches VA -> A, then the entry changes with a local flush only.
        let wrong = cpus_not_seeing(PATTERN_A)?;
        ensure!(wrong.is_empty(), "CPUs {wrong:?} did not read frame A");
        crate::kmap::map_page_without_shootdown(WINDOW_TEST_PAGE, frame_b).map_err(error)?;
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
            crate::kmap::map_page(WINDOW_TEST_PAGE, frame).map_err(error)?;
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
            crate::kmap::unmap_page(WINDOW_TEST_PAGE) == Ok(frame_b),
            "unmap did not return frame B"
        );
        ensure!(
            crate::kmap::read_u64(WINDOW_TEST_PAGE, 8).is_err(),
            "an unmapped window page was readable"
        );
        ensure!(
            crate::kmap::map_page(0x1000, frame_a).is_err()
                && crate::kmap::map_page(WINDOW_TEST_PAGE, frame_a + 1).is_err(),
            "a map outside the window or of a misaligned frame was accepted"
        );
        Ok(())
    })();
    let _ = crate::kmap::unmap_page(WINDOW_TEST_PAGE);
    mm::free_pages(frame_a, 0)?;
    mm::free_pages(frame_b, 0)?;
    result
}

static LOCKDEP_TEST_A: IrqSafeLock<u32> = IrqSafeLock::named("ktest::LOCK_A", 0);
static LOCKDEP_TEST_B: IrqSafeLock<u32> = IrqSafeLock::named("ktest::LOCK_B", 0);

/// Lockdep (turned on here, as `lockdep=1` would) learns A → B from one path and reports the
/// other path's B → A, naming both locks and sites, without stopping the machine.
fn lockdep_reports_an_inverted_lock_pair() -> TestResult {
    crate::lockdep::enable();
    let before = crate::lockdep::report_count();
    {
        let a = LOCKDEP_TEST_A.lock();
        let b = LOCKDEP_TEST_B.lock();
        drop(b);
        drop(a);
    }
    ensure!(
        crate::lockdep::report_count() == before,
        "the consistent order A then B was reported: {:?}",
        crate::lockdep::recent_reports()
    );
    {
        let b = LOCKDEP_TEST_B.lock();
        let a = LOCKDEP_TEST_A.lock();
        drop(a);
        drop(b);
    }
    ensure!(
        crate::lockdep::report_count() == before + 1,
        "{} reports for the inversion, expected 1",
        crate::lockdep::report_count() - before
    );
    let reports = crate::lockdep::recent_reports();
    let text = reports.last().cloned().unwrap_or_default();
    ensure!(
        text.contains("circular")
            && text.contains("ktest::LOCK_A")
            && text.contains("ktest::LOCK_B")
            && text.contains("ktest.rs"),
        "report does not name both locks and sites: {text}"
    );
    // The kernel's own named locks (scheduler, jiffies, clocks) ran under the checker during
    // the test too, and checking goes on.
    let stats = crate::lockdep::proc_stats();
    ensure!(stats.contains("lock-classes"), "lockdep_stats: {stats}");
    Ok(())
}

/// Two CPU-bound fair threads on one CPU never block: only preemption (the slice timer or the
/// tick) lets the second run. Both must progress, with roughly equal CPU time.
fn two_busy_threads_share_one_cpu_by_preemption() -> TestResult {
    let cpu = *smp::online_cpus().collect::<Vec<_>>().last().unwrap_or(&0);
    let stop = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let stop = Arc::clone(&stop);
        ids.push(spawn(
            "busy",
            SchedClass::NORMAL,
            CpuSet::single(cpu),
            move || {
                while !stop.load(Ordering::Acquire) {
                    core::hint::spin_loop();
                }
            },
        )?);
    }
    time::msleep(200);
    let infos: Vec<_> = ids.iter().filter_map(|&id| sched::task_info(id)).collect();
    stop.store(true, Ordering::Release);
    ensure!(infos.len() == 2, "busy threads vanished");
    let (a, b) = (infos[0].cpu_time_ns, infos[1].cpu_time_ns);
    ensure!(
        a > 0 && b > 0 && a.min(b) * 3 > a.max(b),
        "CPU time {a} ns vs {b} ns: not shared by preemption"
    );
    ensure!(
        infos[0].involuntary_switches + infos[1].involuntary_switches >= 2,
        "no involuntary switches between two busy threads"
    );
    Ok(())
}

/// A real-time FIFO thread woken by its timer preempts a CPU-bound fair thread on its CPU at
/// once (on the way out of the timer interrupt), not at the fair thread's next slice end.
fn woken_fifo_thread_preempts_a_busy_fair_thread() -> TestResult {
    let cpu = *smp::online_cpus().collect::<Vec<_>>().last().unwrap_or(&0);
    let stop = Arc::new(AtomicBool::new(false));
    let busy_stop = Arc::clone(&stop);
    spawn("busy", SchedClass::NORMAL, CpuSet::single(cpu), move || {
        while !busy_stop.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
    })?;
    // 0: not done; else lateness + 1 (ns), with the busy thread still spinning.
    let result = Arc::new(AtomicU64::new(0));
    let (rt_result, rt_stop) = (Arc::clone(&result), Arc::clone(&stop));
    let priority = lull_sched::RtPriority::new(60).map_err(|e| alloc::format!("{e}"))?;
    spawn(
        "fifo",
        SchedClass::RealTime(priority),
        CpuSet::single(cpu),
        move || {
            for _ in 0..5 {
                let deadline = time::uptime_ns() + 5_000_000;
                let woke = time::sleep_until(deadline, "ktest_fifo");
                if rt_stop.load(Ordering::Acquire) {
                    return;
                }
                let late = woke - deadline;
                rt_result.fetch_max(late + 1, Ordering::AcqRel);
            }
        },
    )?;
    let finished = wait_for(10_000, || {
        sched::threads()
            .iter()
            .all(|row| row.name != "fifo" || row.info.state == lull_sched::TaskState::Dead)
    });
    stop.store(true, Ordering::Release);
    let worst = result.load(Ordering::Acquire);
    ensure!(
        finished && worst > 0,
        "the FIFO thread did not complete its sleeps beside a busy thread"
    );
    printk!(
        "ktest sched: FIFO thread beside a busy fair thread on CPU {cpu}: worst wake-up lateness {} us",
        (worst - 1) / 1000
    );
    // The fair thread's slice is 6 ms at most and the tick 4 ms: waiting for either would show
    // as more; TCG on a loaded host is noisy, so the bound is generous.
    ensure!(
        worst - 1 < 50_000_000,
        "FIFO wake-up {} us late beside a busy fair thread",
        (worst - 1) / 1000
    );
    Ok(())
}
