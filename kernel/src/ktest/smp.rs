//! In-kernel tests of SMP: CPU bring-up, IPIs, per-CPU ticks and timers, TSC sync, a lock
//! hammered from every CPU, per-CPU columns in /proc.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::TestResult;
use lull_time::hrtimer::{ClockId, FiringTimer, HrTimerMode, HrTimerRestart};
use lull_time::tick::TimerFunction;
use lull_time::timer_stats::StartInfo;

use crate::arch::{self, cpu, interrupts};
use crate::fs::procfs;
use crate::kernel::locking::{InterruptsDisabled, MAX_CPUS};
use crate::kernel::smp;
use crate::kernel::time::TimeContext;
use crate::kernel::time::{self};
use crate::printk;

pub(super) fn every_possible_cpu_comes_online() -> TestResult {
    let info = crate::acpi().ok_or("no ACPI")?;
    let firmware = info
        .local_apic_ids
        .len()
        .clamp(1, crate::kernel::locking::MAX_CPUS);
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
static RAN_ON: [AtomicU64; crate::kernel::locking::MAX_CPUS] =
    [const { AtomicU64::new(u64::MAX) }; crate::kernel::locking::MAX_CPUS];

fn record_where_this_runs(slot: u64) {
    let interrupts_off = crate::kernel::locking::InterruptsDisabled::new();
    let seen = ((interrupts_off.cpu_index() as u64) << 32) | arch::apic::local_apic_id() as u64;
    RAN_ON[slot as usize].store(seen, Ordering::Release);
}

pub(super) fn call_function_ipi_runs_on_each_cpu() -> TestResult {
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
        smp::call_function_single(
            crate::kernel::locking::MAX_CPUS - 1,
            record_where_this_runs,
            0
        ) == Err(smp::CallError::Offline(
            crate::kernel::locking::MAX_CPUS - 1
        )) || smp::possible_cpus() == crate::kernel::locking::MAX_CPUS,
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

pub(super) fn reschedule_ipi_is_delivered() -> TestResult {
    super::needs_cpus(2)?;
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

pub(super) fn secondary_cpus_idle_with_tick_stopped() -> TestResult {
    super::needs_cpus(2)?;
    if !time::nohz_active() {
        skip!("NO_HZ is inactive here (no verified clocksource), so every CPU keeps its tick");
    }
    // Give every CPU time to reach its idle loop after the IPIs above.
    time::msleep(50);
    for cpu in smp::online_cpus().filter(|&cpu| cpu != 0) {
        let state = time::cpu_tick_state(cpu).ok_or(alloc::format!("CPU {cpu} has no tick"))?;
        ensure!(
            state.device.starts_with("lapic"),
            "CPU {cpu} ticks on {}, not its own LAPIC",
            state.device
        );
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
    if let Err(why) = arm_probe_timer(delay_ns) {
        printk!("ktest: arming the probe timer failed: {why}");
    }
}

/// Each CPU's hrtimers run from its own tick device: a timer armed on CPU n (from the
/// call-function IPI) fires on CPU n and shows as a local timer interrupt there.
pub(super) fn hrtimer_fires_on_the_cpu_that_armed_it() -> TestResult {
    cpu::enable_interrupts();
    for cpu in smp::online_cpus() {
        let before = time::local_timer_interrupts(cpu);
        smp::call_function_single(cpu, arm_probe_timer_here, 2_000_000)
            .map_err(|e| alloc::format!("CPU {cpu}: {e}"))?;
        let deadline = time::uptime_ns() + 2_000_000_000;
        let fired_on = loop {
            if let Some(fired_on) = probe_timer_fired_on(cpu) {
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
pub(super) fn tsc_is_synchronized_across_cpus() -> TestResult {
    super::needs_cpus(2)?;
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
static STRESS_COUNTER: crate::kernel::locking::IrqSafeLock<u64> =
    crate::kernel::locking::IrqSafeLock::new(0);
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
pub(super) fn lock_stress_on_every_cpu_counts_exactly() -> TestResult {
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

pub(super) fn proc_files_have_a_column_per_cpu() -> TestResult {
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

/// Per CPU: the CPU index the probe timer armed there fired on, plus one (0: not fired).
static PROBE_FIRED_ON: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn probe_timer_fired(
    _context: &mut TimeContext,
    timer: &mut FiringTimer<TimerFunction<TimeContext>>,
) -> HrTimerRestart {
    let interrupts_off = InterruptsDisabled::new();
    PROBE_FIRED_ON[timer.data() as usize]
        .store(interrupts_off.cpu_index() as u64 + 1, Ordering::Release);
    HrTimerRestart::NoRestart
}

/// Arms a one-shot hrtimer `delay_ns` from now on this CPU's own base (in-kernel tests: it must
/// fire on this CPU, from this CPU's tick device). Callable from hard-IRQ context.
fn arm_probe_timer(delay_ns: u64) -> Result<(), String> {
    time::with_this_cpu_timers(|percpu, now, cpu| {
        PROBE_FIRED_ON[cpu].store(0, Ordering::Relaxed);
        let id = percpu
            .hrtimer_create(
                ClockId::Monotonic,
                TimerFunction::new("probe_timer_fired", probe_timer_fired),
                cpu as u64,
            )
            .map_err(|e| alloc::format!("{e:?}"))?;
        percpu
            .hrtimer_start(
                id,
                delay_ns,
                HrTimerMode::Relative,
                0,
                now,
                StartInfo::kernel("ktest"),
            )
            .map_err(|e| alloc::format!("{e:?}"))?;
        Ok(())
    })
    .unwrap_or(Err(String::from("no tick on this CPU")))
}

/// Where the probe timer armed on CPU `cpu` fired (`None`: not yet).
fn probe_timer_fired_on(cpu: usize) -> Option<usize> {
    match PROBE_FIRED_ON[cpu].load(Ordering::Acquire) {
        0 => None,
        seen => Some(seen as usize - 1),
    }
}
