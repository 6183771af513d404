//! In-kernel tests: a test build (`--features ktest`) runs these at boot on real (emulated)
//! hardware, prints one line per test (`ktest NAME ... ok`, `... FAILED: why` or
//! `... skipped: reason`), then `N passed, N failed, N skipped`, and exits QEMU with a status
//! through isa-debug-exit. The test runner (xtask) holds the list of skips each suite expects;
//! an unexpected skip fails the suite there.
//!
//! One file per subsystem; the table below gives the order they run in.

use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use lull_sched::{CpuSet, SchedClass};

use crate::arch;
use crate::kernel::{sched, time};
use crate::printk;

/// Why a test did not pass.
pub enum Failure {
    /// It ran and an assertion failed.
    Failed(String),
    /// It could not run here (the hardware or CPU count it needs is absent).
    Skipped(String),
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure::Failed(why)
    }
}

impl From<&str> for Failure {
    fn from(why: &str) -> Self {
        Failure::Failed(String::from(why))
    }
}

impl From<crate::fs::procfs::ProcError> for Failure {
    fn from(error: crate::fs::procfs::ProcError) -> Self {
        Failure::Failed(alloc::format!("{error}"))
    }
}

type TestResult = Result<(), Failure>;

/// Fails the test with a formatted message unless `condition` holds.
macro_rules! ensure {
    ($condition:expr, $($message:tt)*) => {
        if !$condition {
            return Err($crate::ktest::Failure::Failed(alloc::format!($($message)*)));
        }
    };
}

/// Ends the test as skipped, with the reason (the hardware it needs is absent here).
macro_rules! skip {
    ($($reason:tt)*) => {
        return Err($crate::ktest::Failure::Skipped(alloc::format!($($reason)*)))
    };
}

type TestCase = (&'static str, fn() -> TestResult);

mod block;
mod boot;
mod driver_model;
mod gpio;
mod i2c;
mod irq;
mod leaks;
mod locks;
mod mm;
mod net;
mod paravirt;
mod pci;
mod rtc;
mod sched_tests;
mod serial;
mod smp;
mod sound;
mod time_tests;
mod virtio;

const TESTS: &[TestCase] = &[
    ("heap_allocates_and_frees", mm::heap_allocates_and_frees),
    (
        "page_allocator_serves_every_zone",
        mm::page_allocator_serves_every_zone,
    ),
    (
        "page_allocator_coalesces_on_hardware",
        mm::page_allocator_coalesces_on_hardware,
    ),
    ("zone_dma_matches_build", mm::zone_dma_matches_build),
    (
        "dma_buffer_byte_copies_are_exact_at_every_alignment",
        mm::dma_buffer_byte_copies_are_exact_at_every_alignment,
    ),
    ("freed_pages_are_writable", mm::freed_pages_are_writable),
    (
        "proc_iomem_nests_the_kernel_in_system_ram",
        mm::proc_iomem_nests_the_kernel_in_system_ram,
    ),
    (
        "ecam_and_conf1_read_the_same_config_space",
        pci::ecam_and_conf1_read_the_same_config_space,
    ),
    (
        "mmio_claims_map_and_release",
        pci::mmio_claims_map_and_release,
    ),
    ("intx_routes_through_prt", pci::intx_routes_through_prt),
    (
        "msix_vectors_allocate_move_and_free",
        pci::msix_vectors_allocate_move_and_free,
    ),
    (
        "msi_vectors_allocate_and_free",
        pci::msi_vectors_allocate_and_free,
    ),
    (
        "command_line_stored_exactly",
        boot::command_line_stored_exactly,
    ),
    (
        "every_parameter_declaration_is_valid",
        boot::every_parameter_declaration_is_valid,
    ),
    (
        "tsc_calibration_is_plausible",
        time_tests::tsc_calibration_is_plausible,
    ),
    ("uptime_is_monotonic", time_tests::uptime_is_monotonic),
    (
        "software_interrupt_reaches_dispatch",
        boot::software_interrupt_reaches_dispatch,
    ),
    ("acpi_tables_found", boot::acpi_tables_found),
    (
        "acpi_namespace_has_expected_devices",
        boot::acpi_namespace_has_expected_devices,
    ),
    (
        "rsdp_scan_validates_and_unmaps",
        boot::rsdp_scan_validates_and_unmaps,
    ),
    (
        "failed_try_lock_leaves_the_holder_alone",
        locks::failed_try_lock_leaves_the_holder_alone,
    ),
    (
        "io_port_claims_are_exclusive",
        boot::io_port_claims_are_exclusive,
    ),
    (
        "procfs_reads_and_validates_writes",
        boot::procfs_reads_and_validates_writes,
    ),
    (
        "hrtimer_sleep_never_returns_early",
        time_tests::hrtimer_sleep_never_returns_early,
    ),
    (
        "jiffies_catch_up_across_tickless_sleep",
        time_tests::jiffies_catch_up_across_tickless_sleep,
    ),
    (
        "timer_list_shows_the_tick",
        time_tests::timer_list_shows_the_tick,
    ),
    (
        "every_possible_cpu_comes_online",
        smp::every_possible_cpu_comes_online,
    ),
    (
        "call_function_ipi_runs_on_each_cpu",
        smp::call_function_ipi_runs_on_each_cpu,
    ),
    (
        "reschedule_ipi_is_delivered",
        smp::reschedule_ipi_is_delivered,
    ),
    (
        "secondary_cpus_idle_with_tick_stopped",
        smp::secondary_cpus_idle_with_tick_stopped,
    ),
    (
        "hrtimer_fires_on_the_cpu_that_armed_it",
        smp::hrtimer_fires_on_the_cpu_that_armed_it,
    ),
    (
        "threads_on_every_cpu_count_exactly_under_a_lock",
        sched_tests::threads_on_every_cpu_count_exactly_under_a_lock,
    ),
    (
        "wakeup_storm_loses_no_wakeup",
        sched_tests::wakeup_storm_loses_no_wakeup,
    ),
    (
        "yield_to_runs_the_target_next",
        sched_tests::yield_to_runs_the_target_next,
    ),
    (
        "ping_pong_between_two_threads",
        sched_tests::ping_pong_between_two_threads,
    ),
    (
        "two_busy_threads_share_one_cpu_by_preemption",
        sched_tests::two_busy_threads_share_one_cpu_by_preemption,
    ),
    (
        "woken_fifo_thread_preempts_a_busy_fair_thread",
        sched_tests::woken_fifo_thread_preempts_a_busy_fair_thread,
    ),
    (
        "sleeping_thread_lets_its_cpu_run_others",
        sched_tests::sleeping_thread_lets_its_cpu_run_others,
    ),
    (
        "threaded_irq_handles_the_hpet_comparator",
        irq::threaded_irq_handles_the_hpet_comparator,
    ),
    (
        "shared_line_runs_every_action_and_free_irq_takes_one",
        irq::shared_line_runs_every_action_and_free_irq_takes_one,
    ),
    (
        "free_irq_waits_for_the_thread_and_stops_it",
        irq::free_irq_waits_for_the_thread_and_stops_it,
    ),
    (
        "level_oneshot_line_stays_masked_until_its_thread_ran",
        irq::level_oneshot_line_stays_masked_until_its_thread_ran,
    ),
    (
        "threaded_irq_request_free_cycles_leak_nothing",
        irq::threaded_irq_request_free_cycles_leak_nothing,
    ),
    (
        "cpu_masks_parse_and_print_as_linux",
        irq::cpu_masks_parse_and_print_as_linux,
    ),
    (
        "irq_affinity_moves_the_hpet_line",
        irq::irq_affinity_moves_the_hpet_line,
    ),
    (
        "tlb_shootdown_reaches_every_cpu",
        mm::tlb_shootdown_reaches_every_cpu,
    ),
    (
        "lockdep_reports_an_inverted_lock_pair",
        locks::lockdep_reports_an_inverted_lock_pair,
    ),
    (
        "tsc_is_synchronized_across_cpus",
        smp::tsc_is_synchronized_across_cpus,
    ),
    (
        "lock_stress_on_every_cpu_counts_exactly",
        smp::lock_stress_on_every_cpu_counts_exactly,
    ),
    (
        "proc_files_have_a_column_per_cpu",
        smp::proc_files_have_a_column_per_cpu,
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
    (
        "devres_releases_real_resources_in_reverse",
        driver_model::devres_releases_real_resources_in_reverse,
    ),
    (
        "bind_unbind_1000_times_leaks_nothing",
        driver_model::bind_unbind_1000_times_leaks_nothing,
    ),
    (
        "every_probe_acquisition_failure_unwinds",
        driver_model::every_probe_acquisition_failure_unwinds,
    ),
    ("loopback_answers_ping", net::loopback_answers_ping),
    (
        "loopback_tcp_transfer_keeps_every_byte",
        net::loopback_tcp_transfer_keeps_every_byte,
    ),
    (
        "pci_functions_are_devices_of_the_pci_bus",
        pci::pci_functions_are_devices_of_the_pci_bus,
    ),
    (
        "pci_driver_binds_unbinds_and_leaks_nothing",
        pci::pci_driver_binds_unbinds_and_leaks_nothing,
    ),
    (
        "virtio_mmio_device_parameter_parses_as_linux",
        virtio::virtio_mmio_device_parameter_parses_as_linux,
    ),
    (
        "virtio_rng_bytes_arrive_by_interrupt",
        virtio::virtio_rng_bytes_arrive_by_interrupt,
    ),
    (
        "virtio_rng_unbind_then_bind_through_sysfs",
        virtio::virtio_rng_unbind_then_bind_through_sysfs,
    ),
    (
        "virtio_rng_malformed_used_ring_fails_the_device",
        virtio::virtio_rng_malformed_used_ring_fails_the_device,
    ),
    (
        "virtio_probe_fault_sweeps_leave_nothing",
        virtio::virtio_probe_fault_sweeps_leave_nothing,
    ),
    (
        "virtio_rng_bind_unbind_1000_times_leaks_nothing",
        virtio::virtio_rng_bind_unbind_1000_times_leaks_nothing,
    ),
    (
        "virtio_blk_more_requests_than_slots_complete",
        block::virtio_blk_more_requests_than_slots_complete,
    ),
    (
        "virtio_blk_unbind_with_requests_in_flight_loses_nothing",
        block::virtio_blk_unbind_with_requests_in_flight_loses_nothing,
    ),
    (
        "virtio_blk_unbind_bind_200_times_leaks_nothing",
        block::virtio_blk_unbind_bind_200_times_leaks_nothing,
    ),
    (
        "smbus_binds_with_eight_eeprom_clients",
        i2c::smbus_binds_with_eight_eeprom_clients,
    ),
    (
        "eeprom_write_read_back_completes_by_interrupt",
        i2c::eeprom_write_read_back_completes_by_interrupt,
    ),
    (
        "smbus_unbind_bind_1000_times_leaks_nothing",
        i2c::smbus_unbind_bind_1000_times_leaks_nothing,
    ),
    (
        "smbus_probe_fails_cleanly_at_every_acquisition",
        i2c::smbus_probe_fails_cleanly_at_every_acquisition,
    ),
    (
        "ac97_plays_a_short_stream_by_interrupts",
        sound::ac97_plays_a_short_stream_by_interrupts,
    ),
    (
        "ac97_unbind_bind_100_times_leaks_nothing",
        sound::ac97_unbind_bind_100_times_leaks_nothing,
    ),
    (
        "ac97_probe_fails_cleanly_at_every_acquisition",
        sound::ac97_probe_fails_cleanly_at_every_acquisition,
    ),
    (
        "hda_codec_answers_vendor_id",
        sound::hda_codec_answers_vendor_id,
    ),
    (
        "hda_format_word_is_the_spec_encoding",
        sound::hda_format_word_is_the_spec_encoding,
    ),
    (
        "hda_plays_and_captures_by_interrupts",
        sound::hda_plays_and_captures_by_interrupts,
    ),
    (
        "hda_late_refill_counts_underruns",
        sound::hda_late_refill_counts_underruns,
    ),
    (
        "hda_unbind_bind_100_times_leaks_nothing",
        sound::hda_unbind_bind_100_times_leaks_nothing,
    ),
    (
        "hda_probe_fails_cleanly_at_every_acquisition",
        sound::hda_probe_fails_cleanly_at_every_acquisition,
    ),
    (
        "gpio_event_wakes_a_sleeping_gpiomon",
        gpio::gpio_event_wakes_a_sleeping_gpiomon,
    ),
    (
        "serial_driver_holds_the_console_and_failed_probes_give_it_back",
        serial::serial_driver_holds_the_console_and_failed_probes_give_it_back,
    ),
    (
        "rtc_cmos_reads_the_clock_and_gives_its_ports_back_at_unbind",
        rtc::rtc_cmos_reads_the_clock_and_gives_its_ports_back_at_unbind,
    ),
    (
        "rtc_cmos_unbind_bind_and_failed_probes_leak_nothing",
        rtc::rtc_cmos_unbind_bind_and_failed_probes_leak_nothing,
    ),
    (
        "parport_lines_have_one_owner_and_outlive_no_unbind",
        gpio::parport_lines_have_one_owner_and_outlive_no_unbind,
    ),
    (
        "parport_unbind_bind_200_times_leaks_nothing",
        gpio::parport_unbind_bind_200_times_leaks_nothing,
    ),
    (
        "parport_probe_fails_cleanly_at_every_acquisition",
        gpio::parport_probe_fails_cleanly_at_every_acquisition,
    ),
    (
        "paravirt_native_everywhere_without_kvm",
        paravirt::native_everywhere_without_kvm,
    ),
    (
        "proc_stat_has_linux_layout",
        paravirt::proc_stat_has_linux_layout,
    ),
    (
        "async_pf_tokens_sleep_and_wake",
        paravirt::async_pf_tokens_sleep_and_wake,
    ),
    (
        "async_pf_in_atomic_context_halts_until_ready",
        paravirt::async_pf_in_atomic_context_halts_until_ready,
    ),
];

/// Skips the test unless at least `count` CPUs are online.
fn needs_cpus(count: usize) -> TestResult {
    let online = crate::kernel::smp::online_cpus().count();
    if online < count {
        skip!("needs {count} CPUs, {online} online");
    }
    Ok(())
}

/// Selecting tests, for chasing one by hand (Linux's `kunit.filter_glob` in spirit): the test
/// runner (xtask) passes neither and runs everything once.
pub const PARAMS: &[lull_cmdline::ParamSpec] = &[
    lull_cmdline::ParamSpec {
        name: "ktest.filter",
        kind: lull_cmdline::Kind::Str,
        default: "",
        help: "Run only the tests whose names contain one of these comma-separated words \
               (the clock-device tests at boot always run).",
    },
    lull_cmdline::ParamSpec {
        name: "ktest.repeat",
        kind: lull_cmdline::Kind::U64 {
            min: 1,
            max: 100_000,
        },
        default: "1",
        help: "Run the selected tests this many times over (each result line counts).",
    },
];

/// Whether `name` is selected by `ktest.filter` (`words` empty: every test).
fn selected(name: &str, words: &str) -> bool {
    words.is_empty()
        || words
            .split(',')
            .any(|word| !word.is_empty() && name.contains(word))
}

/// Tallies of the tests run so far (the clock-device tests run at boot, before the others).
static PASSED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static SKIPPED: AtomicU64 = AtomicU64::new(0);

/// Prints one test's result line and counts it.
fn report(name: &str, result: TestResult) {
    match result {
        Ok(()) => {
            PASSED.fetch_add(1, Ordering::Relaxed);
            printk!("ktest {name} ... ok");
        }
        Err(Failure::Failed(why)) => {
            FAILED.fetch_add(1, Ordering::Relaxed);
            printk!("ktest {name} ... FAILED: {why}");
        }
        Err(Failure::Skipped(reason)) => {
            SKIPPED.fetch_add(1, Ordering::Relaxed);
            printk!("ktest {name} ... skipped: {reason}");
        }
    }
}

/// Runs the clock-hardware tests before the tick starts (called from boot in test builds).
pub fn run_device_tests() {
    for (name, result) in time_tests::device_tests() {
        report(&name, result);
    }
}

/// Runs every test, prints the summary line and exits QEMU (33 = none failed, 35 = failures).
pub fn run_and_exit() -> ! {
    // The boot-time probe allocates as it goes; the heap and leak tests need it finished.
    crate::drivers::wait_for_device_probe();
    // ... and its thread gone: it signals before it exits, and its stack (16 pages) came back
    // in the middle of the page-allocator test that counts free pages.
    let probe_thread_gone = wait_for(5_000, || {
        sched::threads()
            .iter()
            .all(|thread| thread.name != "kprobe")
            && sched::task_counts().2 == 0
    });
    if !probe_thread_gone {
        crate::pr_warn!("ktest: the probe thread has not exited after 5 s");
    }
    let parsed = crate::kernel::params::parsed();
    let words = parsed.get_str("ktest.filter").unwrap_or("");
    let repeat = parsed.get_u64("ktest.repeat").unwrap_or(1);
    if !words.is_empty() || repeat > 1 {
        let chosen = TESTS
            .iter()
            .filter(|(name, _)| selected(name, words))
            .count();
        printk!(
            "ktest: {chosen} of {} tests selected (ktest.filter={words:?}), {repeat} time(s)",
            TESTS.len()
        );
    }
    for _ in 0..repeat {
        for (name, test) in TESTS {
            if selected(name, words) {
                report(name, test());
            }
        }
    }
    let failed = FAILED.load(Ordering::Relaxed);
    crate::kprintln!(
        "{} passed, {failed} failed, {} skipped",
        PASSED.load(Ordering::Relaxed),
        SKIPPED.load(Ordering::Relaxed)
    );
    let status = if failed == 0 {
        arch::power::EXIT_TESTS_PASSED
    } else {
        arch::power::EXIT_TESTS_FAILED
    };
    arch::power::exit_failure(status)
}

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

/// Starts a test thread, naming it in the error.
fn spawn(
    name: &str,
    class: SchedClass,
    cpus: CpuSet,
    body: impl FnOnce() + Send + 'static,
) -> Result<u64, String> {
    sched::kthread_spawn(name, class, cpus, body).map_err(|e| alloc::format!("spawn {name}: {e}"))
}
