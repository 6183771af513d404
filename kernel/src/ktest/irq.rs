//! In-kernel tests of device interrupt lines: request_irq, threaded handlers, free_irq,
//! one-shot level lines, affinity (driven by the HPET comparator).

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use lull_time::clockevents::ClockEventDevice;

use super::time_tests::ns_to_cycles;
use super::{wait_for, TestResult};
use crate::arch::{cpu, interrupts};
use crate::fs::procfs;
use crate::kernel::irq::{self, IrqFlags, IrqReturn};
use crate::kernel::locking::IrqSafeLock;
use crate::kernel::sched::{self};
use crate::kernel::smp;
use crate::kernel::time::{self, TickDevice};

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

fn hpet_primary(_irq: u32, _dev: crate::kernel::irq::DevId) -> IrqReturn {
    HPET_PRIMARY_RUNS.fetch_add(1, Ordering::SeqCst);
    HPET_HARD_CPU.store(smp::this_cpu() as u64, Ordering::SeqCst);
    IrqReturn::WakeThread
}

fn hpet_hard_only(_irq: u32, _dev: crate::kernel::irq::DevId) -> IrqReturn {
    HPET_PRIMARY_RUNS.fetch_add(1, Ordering::SeqCst);
    HPET_HARD_CPU.store(smp::this_cpu() as u64, Ordering::SeqCst);
    IrqReturn::Handled
}

fn hpet_thread(irq: u32, _dev: crate::kernel::irq::DevId) -> IrqReturn {
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
    Ok(programmed?)
}

/// A real device interrupt (the HPET comparator) through `request_threaded_irq` (primary wakes
/// the thread, one-shot line), and through `request_irq` with forced threading (what
/// `threadirqs` does); each line is freed afterwards.
pub(super) fn threaded_irq_handles_the_hpet_comparator() -> TestResult {
    let Some(mut device) = test_hpet() else {
        skip!("no HPET");
    };
    let gsi = hpet_gsi(&device);
    for forced in [false, true] {
        reset_hpet_counters(2);
        if forced {
            irq::request_irq(
                gsi,
                hpet_thread,
                IrqFlags::FORCE_THREAD,
                "hpet-test",
                crate::kernel::irq::DevId::NONE,
            )
        } else {
            irq::request_threaded_irq(
                gsi,
                Some(hpet_primary),
                Some(hpet_thread),
                IrqFlags::ONESHOT,
                "hpet-test",
                crate::kernel::irq::DevId::NONE,
            )
        }
        .map_err(|e| alloc::format!("request: {e}"))?;
        let result = fire_hpet(&mut device);
        let ran = result.is_ok() && wait_for(2_000, || HPET_THREAD_RUNS.load(Ordering::SeqCst) > 0);
        let _ = device.set_state_shutdown();
        irq::free_irq(gsi, crate::kernel::irq::DevId::NONE)
            .map_err(|e| alloc::format!("free: {e}"))?;
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
pub(super) fn free_irq_waits_for_the_thread_and_stops_it() -> TestResult {
    let Some(mut device) = test_hpet() else {
        skip!("no HPET");
    };
    let gsi = hpet_gsi(&device);
    let thread_name = alloc::format!("irq/{gsi}-hpet-test");
    // While the time subsystem drives a device on the line, nobody else may request it.
    time::route_device(&device);
    let refused = irq::request_irq(
        gsi,
        hpet_hard_only,
        IrqFlags::NONE,
        "hpet-test",
        crate::kernel::irq::DevId::NONE,
    );
    irq::release_tick_line(gsi);
    ensure!(
        matches!(refused, Err(irq::IrqError::Busy(g, _)) if g == gsi),
        "a tick device's line was handed to a driver: {refused:?}"
    );
    ensure!(
        irq::free_irq(gsi, crate::kernel::irq::DevId::NONE)
            == Err(irq::IrqError::NotRequested(gsi)),
        "freeing a line nobody requested was not refused"
    );
    ensure!(
        irq::request_threaded_irq(
            gsi,
            None,
            Some(hpet_thread),
            IrqFlags::TRIGGER_HIGH,
            "bad",
            crate::kernel::irq::DevId::NONE
        )
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
            crate::kernel::irq::DevId::NONE,
        )
        .map_err(|e| alloc::format!("round {round}: request: {e}"))?;
        let again = irq::request_irq(
            gsi,
            hpet_hard_only,
            IrqFlags::NONE,
            "hpet-again",
            crate::kernel::irq::DevId::NONE,
        );
        ensure!(
            matches!(again, Err(irq::IrqError::Busy(g, "hpet-test")) if g == gsi),
            "a second request for a requested line was not refused"
        );
        ensure!(
            irq_thread_listed(&thread_name),
            "round {round}: no thread {thread_name} after the request"
        );
        fire_hpet(&mut device)?;
        let started = wait_for(2_000, || HPET_THREAD_STARTS.load(Ordering::SeqCst) > 0);
        ensure!(started, "round {round}: the thread handler never started");
        irq::free_irq(gsi, crate::kernel::irq::DevId::NONE)
            .map_err(|e| alloc::format!("round {round}: free: {e}"))?;
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
            irq::free_irq(gsi, crate::kernel::irq::DevId::NONE)
                == Err(irq::IrqError::NotRequested(gsi)),
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
        crate::kernel::irq::DevId::NONE,
    )
    .map_err(|e| alloc::format!("request: {e}"))?;
    let fired = fire_hpet(&mut device);
    let answered = wait_for(2_000, || SELF_FREE_RESULT.load(Ordering::SeqCst) != 0);
    let _ = device.set_state_shutdown();
    irq::free_irq(gsi, crate::kernel::irq::DevId::NONE)
        .map_err(|e| alloc::format!("free after the self-free: {e}"))?;
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

fn hpet_thread_frees_its_line(irq: u32, _dev: crate::kernel::irq::DevId) -> IrqReturn {
    let refused = irq::free_irq(irq, crate::kernel::irq::DevId::NONE)
        == Err(irq::IrqError::FreedFromOwnThread(irq));
    SELF_FREE_RESULT.store(if refused { 1 } else { 2 }, Ordering::SeqCst);
    IrqReturn::Handled
}

/// The level interrupt the comparator raises stays asserted until the thread acknowledges it:
/// with IRQF_ONESHOT the line stays masked meanwhile (one hard interrupt); unmasked it would
/// storm.
pub(super) fn level_oneshot_line_stays_masked_until_its_thread_ran() -> TestResult {
    let Some(device) = test_hpet() else {
        skip!("no HPET");
    };
    let TickDevice::Hpet { hpet, timer, gsi } = device else {
        return Err(String::from("hpet device of another kind").into());
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
        crate::kernel::irq::DevId::NONE,
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
    irq::free_irq(gsi as u32, crate::kernel::irq::DevId::NONE)
        .map_err(|e| alloc::format!("free: {e}"))?;
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
fn level_thread(irq: u32, dev: crate::kernel::irq::DevId) -> IrqReturn {
    hpet_thread(irq, dev);
    if let Some(hpet) = *LEVEL_HPET.lock() {
        hpet.clear_level_interrupt(LEVEL_TIMER.load(Ordering::SeqCst) as u8);
    }
    IrqReturn::Handled
}

/// The text forms of `/proc/irq/N/smp_affinity` and `smp_affinity_list`.
pub(super) fn cpu_masks_parse_and_print_as_linux() -> TestResult {
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
pub(super) fn irq_affinity_moves_the_hpet_line() -> TestResult {
    let Some(mut device) = test_hpet() else {
        skip!("no HPET");
    };
    let gsi = hpet_gsi(&device);
    reset_hpet_counters(0);
    let vector = irq::request_irq(
        gsi,
        hpet_hard_only,
        IrqFlags::NO_THREAD,
        "hpet-affinity",
        crate::kernel::irq::DevId::NONE,
    )
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
    irq::free_irq(gsi, crate::kernel::irq::DevId::NONE).map_err(|e| alloc::format!("free: {e}"))?;
    result
}

fn cycle_hard(_irq: u32, _dev: crate::kernel::irq::DevId) -> IrqReturn {
    IrqReturn::Handled
}

fn cycle_thread(_irq: u32, _dev: crate::kernel::irq::DevId) -> IrqReturn {
    IrqReturn::Handled
}

/// Heap bytes and the scheduler's task counts once quiet: a line's thread stopped by
/// `free_irq` is reaped when its CPU next switches, so two readings 20 ms apart must agree.
fn quiet_heap_and_tasks() -> (usize, (usize, usize, usize)) {
    let take = || (crate::arch::heap::usage().0, sched::task_counts());
    let mut last = take();
    for _ in 0..50 {
        time::msleep(20);
        let now = take();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Requesting and freeing a line with a thread function (a thread started and stopped each
/// time) leaves the heap and the scheduler's tables exactly as they were: each cycle once
/// leaked its thread's context (48 bytes), whatever the thread's class.
pub(super) fn threaded_irq_request_free_cycles_leak_nothing() -> TestResult {
    const CYCLES: usize = 50;
    let gsi = (16..24)
        .rev()
        .find(|&gsi| irq::irq_affinity(gsi).is_none())
        .ok_or("no free IOAPIC input (GSI 16-23)")?;
    let cycle = |round: usize| -> Result<(), String> {
        irq::request_threaded_irq(
            gsi,
            Some(cycle_hard),
            Some(cycle_thread),
            IrqFlags::NONE,
            "ktest-cycle",
            crate::kernel::irq::DevId::NONE,
        )
        .map_err(|e| alloc::format!("round {round}: request IRQ {gsi}: {e}"))?;
        irq::free_irq(gsi, crate::kernel::irq::DevId::NONE)
            .map_err(|e| alloc::format!("round {round}: free IRQ {gsi}: {e}"))
    };
    // One warm-up cycle (lazily grown tables reach their size), then the baseline.
    cycle(0)?;
    let before = quiet_heap_and_tasks();
    for round in 1..=CYCLES {
        cycle(round)?;
    }
    let after = quiet_heap_and_tasks();
    ensure!(
        after == before,
        "{CYCLES} request/free cycles: (heap bytes, (tasks, threads, zombies)) went from \
         {before:?} to {after:?}"
    );
    Ok(())
}

static SHARED_A_RUNS: AtomicU64 = AtomicU64::new(0);
static SHARED_B_RUNS: AtomicU64 = AtomicU64::new(0);
const SHARED_A: irq::DevId = irq::DevId(0xA);
const SHARED_B: irq::DevId = irq::DevId(0xB);

/// A shared line's first user, whose device never raised the interrupt.
fn shared_not_mine(_irq: u32, dev: irq::DevId) -> IrqReturn {
    if dev == SHARED_A {
        SHARED_A_RUNS.fetch_add(1, Ordering::SeqCst);
    }
    IrqReturn::None
}

/// A shared line's second user, whose device did.
fn shared_mine(_irq: u32, dev: irq::DevId) -> IrqReturn {
    if dev == SHARED_B {
        SHARED_B_RUNS.fetch_add(1, Ordering::SeqCst);
    }
    IrqReturn::Handled
}

/// `IRQF_SHARED`: two devices on one line (the HPET comparator's) each get every interrupt
/// with their own `dev_id`; a request that does not share, repeats a `dev_id` or asks for
/// another trigger is refused with the holder named; `free_irq(irq, dev_id)` removes one user
/// and the other keeps its interrupts; the last free takes the line away.
pub(super) fn shared_line_runs_every_action_and_free_irq_takes_one() -> TestResult {
    let Some(mut device) = test_hpet() else {
        skip!("no HPET");
    };
    let gsi = hpet_gsi(&device);
    let before = irq::requested_lines();
    SHARED_A_RUNS.store(0, Ordering::SeqCst);
    SHARED_B_RUNS.store(0, Ordering::SeqCst);
    let flags = IrqFlags::SHARED | IrqFlags::NO_THREAD;
    irq::request_irq(gsi, shared_not_mine, flags, "shared-a", SHARED_A)
        .map_err(|e| alloc::format!("first shared request: {e}"))?;
    let exclusive = irq::request_irq(
        gsi,
        hpet_hard_only,
        IrqFlags::NO_THREAD,
        "exclusive",
        irq::DevId(0xC),
    );
    let same_dev = irq::request_irq(gsi, shared_mine, flags, "shared-b", SHARED_A);
    // The opposite of how the line signals now.
    let other = match irq::line_trigger(gsi) {
        Some(trigger) if trigger.level => IrqFlags::TRIGGER_RISING,
        _ => IrqFlags::TRIGGER_LOW,
    };
    let other_trigger = irq::request_irq(gsi, shared_mine, flags | other, "shared-b", SHARED_B);
    let second = irq::request_irq(gsi, shared_mine, flags, "shared-b", SHARED_B);
    let listed = procfs::read("/proc/interrupts")?;
    let fired = fire_hpet(&mut device).is_ok()
        && wait_for(2_000, || SHARED_B_RUNS.load(Ordering::SeqCst) > 0);
    let runs_both = (
        SHARED_A_RUNS.load(Ordering::SeqCst),
        SHARED_B_RUNS.load(Ordering::SeqCst),
    );
    let freed_a = irq::free_irq(gsi, SHARED_A);
    let freed_a_again = irq::free_irq(gsi, SHARED_A);
    let fired_again = fire_hpet(&mut device).is_ok()
        && wait_for(2_000, || SHARED_B_RUNS.load(Ordering::SeqCst) > runs_both.1);
    let runs_after = (
        SHARED_A_RUNS.load(Ordering::SeqCst),
        SHARED_B_RUNS.load(Ordering::SeqCst),
    );
    let listed_after = procfs::read("/proc/interrupts")?;
    let _ = device.set_state_shutdown();
    let freed_b = irq::free_irq(gsi, SHARED_B);
    ensure!(
        matches!(exclusive, Err(irq::IrqError::Busy(g, "shared-a")) if g == gsi),
        "a request that does not share took a shared line: {exclusive:?}"
    );
    ensure!(
        same_dev.is_err(),
        "a second action with the same dev_id was accepted"
    );
    ensure!(
        other_trigger.is_err(),
        "a shared request with another trigger was accepted"
    );
    second.map_err(|e| alloc::format!("second shared request: {e}"))?;
    ensure!(
        listed.contains("shared-a, shared-b"),
        "/proc/interrupts does not name both users:\n{listed}"
    );
    ensure!(
        fired,
        "the shared line's interrupt never reached the second user"
    );
    ensure!(
        runs_both.0 >= 1,
        "the first user did not run for the shared interrupt (runs {runs_both:?})"
    );
    freed_a.map_err(|e| alloc::format!("free_irq of the first user: {e}"))?;
    ensure!(
        freed_a_again == Err(irq::IrqError::NotRequested(gsi)),
        "freeing the first user twice was not refused: {freed_a_again:?}"
    );
    ensure!(
        fired_again && runs_after.0 == runs_both.0,
        "after the first user left: second fired {fired_again}, runs {runs_both:?} -> {runs_after:?}"
    );
    ensure!(
        !listed_after.contains("shared-a") && listed_after.contains("shared-b"),
        "/proc/interrupts after the first free:\n{listed_after}"
    );
    freed_b.map_err(|e| alloc::format!("free_irq of the last user: {e}"))?;
    ensure!(
        irq::requested_lines() == before,
        "handlers requested: {before} before, {} after",
        irq::requested_lines()
    );
    Ok(())
}
