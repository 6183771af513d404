//! In-kernel microbenchmarks behind the shell's `bench` command: thread ping-pong, IPI round
//! trip, device-interrupt latency (hard vs threaded handler) and lock contention across CPUs.
//!
//! Each prints one `bench:` line per figure in `key=value` form for `cargo xtask bench`, which
//! boots the kernel, runs them and records the figures. Times come from the TSC (one
//! instruction, no exit), converted with the calibrated frequency; the interrupt latency comes
//! from the HPET itself (its counter when the handler runs minus the comparator it fired on).
//!
//! Locks: none of its own beyond the benchmark's subject; the interrupt-latency samples are
//! atomics written by the handlers.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use lull_sched::{CpuSet, SchedClass};

use crate::arch::cpu;
use crate::kernel::locking::{IrqSafeLock, Mutex, RwLock, SpinLock};
use crate::kernel::sched::{self, Completion};

/// TSC cycles → nanoseconds with the calibrated frequency.
fn cycles_to_ns(cycles: u64) -> u64 {
    let hz = crate::kernel::time::tsc_hz().max(1);
    ((cycles as u128 * 1_000_000_000) / hz as u128) as u64
}

/// Sorted samples' order statistics: min, median, p99, max.
struct Summary {
    min: u64,
    p50: u64,
    p99: u64,
    max: u64,
}

fn summarize(samples: &mut [u64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let at = |per_mille: usize| samples[(samples.len() - 1) * per_mille / 1000];
    Some(Summary {
        min: samples[0],
        p50: at(500),
        p99: at(990),
        max: samples[samples.len() - 1],
    })
}

/// Starts a kernel thread pinned to `cpu`, or says why it could not.
fn spawn_on(
    name: &str,
    cpu: usize,
    class: SchedClass,
    body: impl FnOnce() + Send + 'static,
) -> Result<(), String> {
    sched::kthread_spawn(name, class, CpuSet::single(cpu), body)
        .map(|_| ())
        .map_err(|error| alloc::format!("cannot start thread {name}: {error}"))
}

// ---- ping-pong -----------------------------------------------------------------------------

/// Two fair threads hand a token back and forth through two completions (Linux's
/// `perf bench sched pipe`); returns nanoseconds per one-way hand-off (a wake-up plus a
/// context switch when both share a CPU).
pub fn ping_pong(rounds: u64, cpu_a: usize, cpu_b: usize) -> Result<u64, String> {
    struct Shared {
        ping: Completion,
        pong: Completion,
        done: Completion,
        cycles: AtomicU64,
    }
    let shared = Arc::new(Shared {
        ping: Completion::new(),
        pong: Completion::new(),
        done: Completion::new(),
        cycles: AtomicU64::new(0),
    });
    let responder = Arc::clone(&shared);
    spawn_on("bench-pong", cpu_b, SchedClass::NORMAL, move || {
        for _ in 0..rounds {
            responder.ping.wait();
            responder.pong.complete();
        }
    })?;
    let initiator = Arc::clone(&shared);
    spawn_on("bench-ping", cpu_a, SchedClass::NORMAL, move || {
        let start = cpu::rdtsc();
        for _ in 0..rounds {
            initiator.ping.complete();
            initiator.pong.wait();
        }
        initiator
            .cycles
            .store(cpu::rdtsc().wrapping_sub(start), Ordering::Release);
        initiator.done.complete();
    })?;
    shared.done.wait();
    Ok(cycles_to_ns(shared.cycles.load(Ordering::Acquire)) / (2 * rounds.max(1)))
}

// ---- IPI round trip ------------------------------------------------------------------------

static IPI_HITS: AtomicU64 = AtomicU64::new(0);

fn ipi_target(_data: u64) {
    IPI_HITS.fetch_add(1, Ordering::Relaxed);
}

/// Sends `rounds` call-function IPIs to `target` and waits for each to run (Linux's
/// `smp_call_function_single(wait=1)`): request queued, IPI sent, handler run, completion seen.
/// Returns the per-round times in nanoseconds.
pub fn ipi_round_trip(rounds: u64, target: usize) -> Result<Vec<u64>, String> {
    if target == crate::kernel::smp::this_cpu() {
        return Err(String::from("the target must be another CPU"));
    }
    let before = IPI_HITS.load(Ordering::Relaxed);
    let mut samples = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let start = cpu::rdtsc();
        crate::kernel::smp::call_function_single(target, ipi_target, 0)
            .map_err(|error| alloc::format!("IPI to CPU {target}: {error}"))?;
        samples.push(cycles_to_ns(cpu::rdtsc().wrapping_sub(start)));
    }
    let hits = IPI_HITS.load(Ordering::Relaxed) - before;
    if hits != rounds {
        return Err(alloc::format!("{hits} of {rounds} IPIs ran their function"));
    }
    Ok(samples)
}

// ---- interrupt latency: hard vs threaded ---------------------------------------------------

/// The HPET comparator the latest sample was armed for, and what the handlers saw.
static IRQ_DEADLINE: AtomicU64 = AtomicU64::new(0);
static IRQ_HARD_COUNTER: AtomicU64 = AtomicU64::new(0);
static IRQ_THREAD_COUNTER: AtomicU64 = AtomicU64::new(0);
static IRQ_THREAD_DONE: Completion = Completion::new();

fn hpet_counter() -> u64 {
    crate::kernel::time::hardware()
        .and_then(|hardware| hardware.hpet.as_ref())
        .map_or(0, |hpet| hpet.counter())
}

fn latency_primary(_irq: u32, _dev: crate::kernel::irq::DevId) -> crate::kernel::irq::IrqReturn {
    IRQ_HARD_COUNTER.store(hpet_counter(), Ordering::Release);
    crate::kernel::irq::IrqReturn::WakeThread
}

fn latency_thread(_irq: u32, _dev: crate::kernel::irq::DevId) -> crate::kernel::irq::IrqReturn {
    IRQ_THREAD_COUNTER.store(hpet_counter(), Ordering::Release);
    IRQ_THREAD_DONE.complete();
    crate::kernel::irq::IrqReturn::Handled
}

/// Interrupt-to-handler latency of the HPET comparator 0 (idle on q35, where the tick runs on
/// the LAPIC): each sample arms the comparator `delay_us` ahead; the primary handler (hard-IRQ
/// context) and the handler thread (RT FIFO 50, woken by the primary) each read the HPET
/// counter. Returns (hard, threaded) latencies in nanoseconds, paired per interrupt.
pub fn irq_latency(samples: u64, delay_us: u64) -> Result<(Vec<u64>, Vec<u64>), String> {
    let hardware = crate::kernel::time::hardware().ok_or("no timer hardware")?;
    let (Some(hpet), Some(gsi)) = (hardware.hpet.as_ref(), hardware.hpet_gsi()) else {
        return Err(String::from(
            "no HPET comparator routed to the IOAPIC (q35 has one; microvm does not)",
        ));
    };
    if crate::kernel::smp::online_cpus()
        .filter_map(crate::kernel::time::cpu_tick_state)
        .any(|state| state.device == "hpet")
    {
        return Err(String::from(
            "the HPET is a CPU's tick device; cannot borrow it",
        ));
    }
    crate::kernel::irq::request_threaded_irq(
        gsi as u32,
        Some(latency_primary),
        Some(latency_thread),
        // Rising edge, as the comparator is armed: on the line's firmware default (level, for
        // a PCI-range GSI) a one-shot line stays masked until its thread is done, and a pulse
        // that lands meanwhile is lost (the next sample, armed by another CPU as soon as the
        // thread signalled, could fire before the thread unmasked the line).
        crate::kernel::irq::IrqFlags::ONESHOT | crate::kernel::irq::IrqFlags::TRIGGER_RISING,
        "bench-hpet",
        crate::kernel::irq::DevId::NONE,
    )
    .map_err(|error| alloc::format!("request_threaded_irq: {error}"))?;
    let result = sample_irq_latency(hpet, gsi, samples, delay_us);
    hpet.stop(0);
    if let Err(error) = crate::kernel::irq::free_irq(gsi as u32, crate::kernel::irq::DevId::NONE) {
        crate::pr_warn!("bench: free_irq({gsi}): {error}");
    }
    result
}

fn sample_irq_latency(
    hpet: &crate::arch::hpet::Hpet,
    gsi: u8,
    samples: u64,
    delay_us: u64,
) -> Result<(Vec<u64>, Vec<u64>), String> {
    let hz = hpet.frequency_hz().max(1);
    let to_ns = |ticks: u64| ((ticks as u128 * 1_000_000_000) / hz as u128) as u64;
    let delay = (delay_us * hz / 1_000_000).max(1);
    let (mut hard, mut threaded) = (Vec::new(), Vec::new());
    let mut missed = 0;
    while IRQ_THREAD_DONE.pending() > 0 {
        IRQ_THREAD_DONE.wait(); // a late completion of an earlier, timed-out run
    }
    while (hard.len() as u64) < samples {
        let deadline = {
            // Armed with interrupts off so the handler cannot see a half-written deadline.
            let _interrupts_off = crate::kernel::locking::InterruptsDisabled::new();
            let deadline = hpet.counter().wrapping_add(delay);
            IRQ_DEADLINE.store(deadline, Ordering::Release);
            IRQ_HARD_COUNTER.store(0, Ordering::Release);
            hpet.arm_oneshot(0, gsi, deadline);
            deadline
        };
        if !IRQ_THREAD_DONE.wait_timeout(1_000_000_000) {
            return Err(String::from("the HPET interrupt did not arrive within 1 s"));
        }
        let (hard_at, thread_at) = (
            IRQ_HARD_COUNTER.load(Ordering::Acquire),
            IRQ_THREAD_COUNTER.load(Ordering::Acquire),
        );
        if hard_at < deadline || thread_at < hard_at {
            // Fired on a comparator write that raced the counter; not a sample.
            missed += 1;
            if missed > samples {
                return Err(alloc::format!(
                    "{missed} interrupts arrived before their deadline"
                ));
            }
            continue;
        }
        hard.push(to_ns(hard_at - deadline));
        threaded.push(to_ns(thread_at - deadline));
    }
    Ok((hard, threaded))
}

// ---- lock contention -----------------------------------------------------------------------

/// The contended locks: a counter behind each kind of lock.
static CONTENDED_SPIN: SpinLock<u64> = SpinLock::named("bench::CONTENDED_SPIN", 0);
static CONTENDED_IRQSAFE: IrqSafeLock<u64> = IrqSafeLock::named("bench::CONTENDED_IRQSAFE", 0);
static CONTENDED_MUTEX: Mutex<u64> = Mutex::named("bench::CONTENDED_MUTEX", 0);
static CONTENDED_RWLOCK: RwLock<u64> = RwLock::named("bench::CONTENDED_RWLOCK", 0);

/// Which lock a contention run hammers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// `SpinLock` (ticket, preemption off).
    Spin,
    /// `IrqSafeLock` (ticket, interrupts and preemption off).
    IrqSafe,
    /// The sleeping `Mutex`.
    Mutex,
    /// The sleeping `RwLock`, taken for writing.
    RwLockWrite,
}

impl LockKind {
    const ALL: [LockKind; 4] = [
        LockKind::Spin,
        LockKind::IrqSafe,
        LockKind::Mutex,
        LockKind::RwLockWrite,
    ];

    fn name(self) -> &'static str {
        match self {
            LockKind::Spin => "spin",
            LockKind::IrqSafe => "irqsafe-spin",
            LockKind::Mutex => "mutex",
            LockKind::RwLockWrite => "rwlock-write",
        }
    }

    fn increment(self) {
        match self {
            LockKind::Spin => *CONTENDED_SPIN.lock() += 1,
            LockKind::IrqSafe => *CONTENDED_IRQSAFE.lock() += 1,
            LockKind::Mutex => *CONTENDED_MUTEX.lock() += 1,
            LockKind::RwLockWrite => *CONTENDED_RWLOCK.write() += 1,
        }
    }

    fn take_count(self) -> u64 {
        match self {
            LockKind::Spin => core::mem::take(&mut *CONTENDED_SPIN.lock()),
            LockKind::IrqSafe => core::mem::take(&mut *CONTENDED_IRQSAFE.lock()),
            LockKind::Mutex => core::mem::take(&mut *CONTENDED_MUTEX.lock()),
            LockKind::RwLockWrite => core::mem::take(&mut *CONTENDED_RWLOCK.write()),
        }
    }
}

/// One thread per CPU of `cpus`, each takes the one lock of `kind` `iterations` times to
/// increment a shared counter. Returns (ns per acquisition, wall ns); errors if the count is
/// not exact.
pub fn lock_contention(
    kind: LockKind,
    cpus: &[usize],
    iterations: u64,
) -> Result<(u64, u64), String> {
    struct Shared {
        ready: AtomicUsize,
        go: AtomicBool,
        finished: Completion,
        end: AtomicU64,
    }
    let shared = Arc::new(Shared {
        ready: AtomicUsize::new(0),
        go: AtomicBool::new(false),
        finished: Completion::new(),
        end: AtomicU64::new(0),
    });
    kind.take_count();
    for &cpu in cpus {
        let shared = Arc::clone(&shared);
        spawn_on("bench-lock", cpu, SchedClass::NORMAL, move || {
            shared.ready.fetch_add(1, Ordering::AcqRel);
            while !shared.go.load(Ordering::Acquire) {
                core::hint::spin_loop();
            }
            for _ in 0..iterations {
                kind.increment();
            }
            shared.end.fetch_max(cpu::rdtsc(), Ordering::AcqRel);
            shared.finished.complete();
        })?;
    }
    while shared.ready.load(Ordering::Acquire) < cpus.len() {
        sched::yield_now();
        core::hint::spin_loop();
    }
    let start = cpu::rdtsc();
    shared.go.store(true, Ordering::Release);
    for _ in cpus {
        shared.finished.wait();
    }
    let wall = cycles_to_ns(shared.end.load(Ordering::Acquire).wrapping_sub(start));
    let expected = cpus.len() as u64 * iterations;
    let counted = kind.take_count();
    if counted != expected {
        return Err(alloc::format!(
            "lost updates: counted {counted}, expected {expected}"
        ));
    }
    Ok((wall / expected.max(1), wall))
}

// ---- the shell command ---------------------------------------------------------------------

static SELF_IPIS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn self_ipi_handler(_vector: u8) {
    SELF_IPIS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// A fixed workload through every operation the paravirt layer switches, on this CPU only
/// (so its instruction count does not depend on how the host interleaves vCPUs): `rounds`
/// context-switch hand-offs, spinlock and IRQ-safe lock round trips, sleeping-lock round trips,
/// hrtimer arm/cancel pairs (each reprograms the clock event device), self-IPIs (send + EOI),
/// clock reads and local TLB flush requests. `cargo xtask bench --filter pvops` counts its
/// instructions from outside with a QEMU plugin.
fn pvops_workload(rounds: u64) -> Result<(), String> {
    let me = crate::kernel::sched::current().unwrap_or(0);
    let cpu = crate::kernel::smp::this_cpu();
    crate::kernel::sched::set_affinity(me, lull_sched::CpuSet::single(cpu))?;
    let result = pvops_rounds(rounds, cpu);
    crate::kernel::sched::set_affinity(me, lull_sched::CpuSet::ALL)?;
    result
}

fn pvops_rounds(rounds: u64, cpu: usize) -> Result<(), String> {
    use core::sync::atomic::Ordering;
    use lull_time::hrtimer::{ClockId, HrTimerMode};
    use lull_time::tick::TimerFunction;
    use lull_time::timer_stats::{StartInfo, TaskComm};

    let part = |bit: u32| PVOPS_PARTS.load(Ordering::Relaxed) & bit != 0;
    if part(1) {
        ping_pong(rounds, cpu, cpu)?;
    }
    let spin = crate::kernel::locking::SpinLock::new(0u64);
    let irq_safe = crate::kernel::locking::IrqSafeLock::new(0u64);
    let mutex = crate::kernel::locking::Mutex::named("bench::pvops", 0u64);
    for _ in 0..if part(2) { rounds } else { 0 } {
        *spin.lock() += 1;
        *irq_safe.lock() += 1;
        *mutex.lock() += 1;
        core::hint::black_box(crate::kernel::time::uptime_ns());
    }
    let timers = crate::kernel::time::with_this_cpu_timers(|percpu, now, _cpu| {
        let id = percpu
            .hrtimer_create(
                ClockId::Monotonic,
                TimerFunction::new("pvops_bench", never_fires),
                0,
            )
            .map_err(|e| alloc::format!("{e:?}"))?;
        let start = StartInfo {
            site: "bench_pvops",
            pid: 0,
            comm: TaskComm::new("bench"),
        };
        for round in 0..if part(4) { rounds } else { 0 } {
            percpu
                .hrtimer_start(id, 10_000_000 + round, HrTimerMode::Relative, 0, now, start)
                .map_err(|e| alloc::format!("{e:?}"))?;
            let _ = percpu.hrtimer_cancel(id, now);
        }
        percpu
            .hrtimer_destroy(id, now)
            .map_err(|e| alloc::format!("{e:?}"))
    });
    timers.unwrap_or(Err(String::from("no tick device")))?;
    crate::arch::interrupts::set_handler(PVOPS_IPI_VECTOR, self_ipi_handler);
    let before = SELF_IPIS.load(Ordering::Relaxed);
    let apic = crate::kernel::smp::apic_id(cpu);
    let ipis = if part(8) { rounds } else { 0 };
    for _ in 0..ipis {
        crate::kernel::paravirt::send_ipi(apic, PVOPS_IPI_VECTOR);
        core::hint::spin_loop();
    }
    while SELF_IPIS.load(Ordering::Relaxed) - before < ipis {
        core::hint::spin_loop();
    }
    crate::arch::interrupts::clear_handler(PVOPS_IPI_VECTOR);
    let page = crate::arch::kernel_image_range().start;
    for _ in 0..if part(16) { rounds / 8 } else { 0 } {
        crate::kernel::smp::flush_tlb_range(page, page + 4096);
    }
    Ok(())
}

fn never_fires(
    _context: &mut crate::kernel::time::TimeContext,
    _timer: &mut lull_time::hrtimer::FiringTimer<
        lull_time::tick::TimerFunction<crate::kernel::time::TimeContext>,
    >,
) -> lull_time::hrtimer::HrTimerRestart {
    lull_time::hrtimer::HrTimerRestart::NoRestart
}

/// Which parts of `bench pvops` run (bits: 1 switches, 2 locks and clock reads, 4 timers,
/// 8 self-IPIs, 16 TLB flushes; `bench pvops N MASK`).
static PVOPS_PARTS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0x1f);

/// Vector of the self-IPIs of `bench pvops` (free while the bench runs).
const PVOPS_IPI_VECTOR: u8 = 0xE0;

fn parse_count(arg: Option<&&str>, default: u64, max: u64) -> Result<u64, String> {
    match arg {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(alloc::format!(
                "expected a count in 1..={max}, got {text:?}"
            )),
        },
    }
}

/// `bench pingpong|ipi|irq|lock [COUNT]`: runs one benchmark and prints its `bench:` lines.
pub fn run(args: &[&str]) -> Result<(), String> {
    let cpus: Vec<usize> = crate::kernel::smp::online_cpus().collect();
    let last = *cpus.last().unwrap_or(&0);
    match args.first().copied() {
        Some("pingpong") => {
            let rounds = parse_count(args.get(1), 5_000, 1_000_000)?;
            let ns = ping_pong(rounds, last, last)?;
            crate::kprintln!("bench: pingpong cpus=1 rounds={rounds} ns_per_switch={ns}");
            if cpus.len() >= 2 {
                let other = cpus[cpus.len() - 2];
                let ns = ping_pong(rounds, other, last)?;
                crate::kprintln!("bench: pingpong cpus=2 rounds={rounds} ns_per_switch={ns}");
            }
            Ok(())
        }
        Some("ipi") => {
            let rounds = parse_count(args.get(1), 2_000, 1_000_000)?;
            let me = crate::kernel::smp::this_cpu();
            let Some(&target) = cpus.iter().rev().find(|&&cpu| cpu != me) else {
                return Err(String::from(
                    "needs a second CPU (boot with -smp 2 or more)",
                ));
            };
            let mut samples = ipi_round_trip(rounds, target)?;
            if let Some(s) = summarize(&mut samples) {
                crate::kprintln!(
                    "bench: ipi from={me} to={target} rounds={rounds} min_ns={} p50_ns={} p99_ns={} max_ns={}",
                    s.min, s.p50, s.p99, s.max
                );
            }
            Ok(())
        }
        Some("irq") => {
            let samples = parse_count(args.get(1), 500, 100_000)?;
            let (mut hard, mut threaded) = irq_latency(samples, 200)?;
            for (mode, samples) in [("hard", &mut hard), ("threaded", &mut threaded)] {
                if let Some(s) = summarize(samples) {
                    crate::kprintln!(
                        "bench: irq mode={mode} samples={} min_ns={} p50_ns={} p99_ns={} max_ns={}",
                        samples.len(),
                        s.min,
                        s.p50,
                        s.p99,
                        s.max
                    );
                }
            }
            Ok(())
        }
        Some("lock") => {
            let iterations = parse_count(args.get(1), 20_000, 10_000_000)?;
            for kind in LockKind::ALL {
                for count in 1..=cpus.len().min(4) {
                    let (per_acquisition, wall) =
                        lock_contention(kind, &cpus[..count], iterations)?;
                    crate::kprintln!(
                        "bench: lock kind={} cpus={count} iterations={iterations} ns_per_acquisition={per_acquisition} wall_us={}",
                        kind.name(),
                        wall / 1000
                    );
                }
            }
            Ok(())
        }
        Some("spin") => {
            // Keeps this CPU busy (no exits to a hypervisor but clock reads) for MS ms.
            let ms = parse_count(args.get(1), 1_000, 600_000)?;
            let start = crate::kernel::time::uptime_ns();
            let end = start + ms * 1_000_000;
            let mut iterations = 0u64;
            while crate::kernel::time::uptime_ns() < end {
                for _ in 0..10_000 {
                    iterations = core::hint::black_box(iterations.wrapping_add(1));
                }
            }
            crate::kprintln!("bench: spin ms={ms} iterations={iterations}");
            Ok(())
        }
        Some("clock") => {
            let reads = parse_count(args.get(1), 10_000, 10_000_000)?;
            let tsc_hz = crate::kernel::time::tsc_hz().max(1);
            for (name, ..) in crate::kernel::time::clocksources() {
                if let Some(cycles) = crate::kernel::time::clocksource_read_cycles(name, reads) {
                    crate::kprintln!(
                        "bench: clock source={name} reads={reads} cycles_per_read={cycles} ns_per_read={}",
                        cycles * 1_000_000_000 / tsc_hz
                    );
                }
            }
            Ok(())
        }
        Some("pvops") => {
            let rounds = parse_count(args.get(1), 1_000, 1_000_000)?;
            let parts = parse_count(args.get(2), 0x1f, 0x1f)?;
            PVOPS_PARTS.store(parts as u32, core::sync::atomic::Ordering::Relaxed);
            let start = crate::kernel::time::uptime_ns();
            pvops_workload(rounds)?;
            crate::kprintln!(
                "bench: pvops rounds={rounds} wall_us={}",
                (crate::kernel::time::uptime_ns() - start) / 1000
            );
            Ok(())
        }
        _ => Err(String::from(
            "usage: bench pingpong|ipi|irq|lock|clock|spin|pvops [COUNT]",
        )),
    }
}
