//! Paravirt: the native path under TCG (no KVM interface), `/proc/stat`, and the async page
//! fault glue (token table, sleeping thread, halting context, wake-all) driven the way the
//! #PF entry and the page-ready interrupt drive it.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

use lull_sched::{CpuSet, SchedClass};
use lull_time::hrtimer::{ClockId, FiringTimer, HrTimerMode, HrTimerRestart};
use lull_time::tick::TimerFunction;
use lull_time::timer_stats::{StartInfo, TaskComm};

use super::TestResult;
use crate::kernel::paravirt;
use crate::kernel::sched::{self, Completion};
use crate::kernel::{async_pf, time};

/// Under QEMU TCG there is no KVM leaf: every operation must use its native implementation,
/// and `nopv`-style reporting must say so.
pub(super) fn native_everywhere_without_kvm() -> TestResult {
    if paravirt::kvm_cpuid().is_some() {
        skip!("running under KVM: the native-path test needs a host without the KVM leaves");
    }
    for op in paravirt::ALL_OPS {
        ensure!(
            !paravirt::uses_kvm(op),
            "{op:?} uses KVM without a KVM leaf"
        );
    }
    let summary = paravirt::summary();
    ensure!(
        summary.contains("clock: tsc/hpet/acpi_pm") && summary.contains("eoi: apic"),
        "summary does not name the native implementations: {summary}"
    );
    ensure!(
        time::current_clocksource() != "kvm-clock",
        "kvm-clock selected without KVM"
    );
    ensure!(paravirt::steal_total(0) == 0, "steal time without KVM");
    Ok(())
}

/// `/proc/stat` has Linux's layout: a `cpu` line with ten columns, one per online CPU, and
/// the `ctxt`/`btime`/`processes` lines; idle plus system never exceeds uptime.
pub(super) fn proc_stat_has_linux_layout() -> TestResult {
    let text = crate::fs::procfs::read("/proc/stat")?;
    let mut lines = text.lines();
    let total = lines.next().unwrap_or("");
    let columns: alloc::vec::Vec<u64> = total
        .split_whitespace()
        .skip(1)
        .filter_map(|word| word.parse().ok())
        .collect();
    ensure!(
        total.starts_with("cpu ") && columns.len() == 10,
        "bad cpu line: {total:?}"
    );
    let uptime_hz = time::uptime_ns() / 10_000_000;
    let cpus = crate::kernel::smp::online_count() as u64;
    ensure!(
        columns.iter().sum::<u64>() <= (uptime_hz + 1) * cpus,
        "more time accounted than passed: {columns:?}, uptime {uptime_hz}"
    );
    ensure!(
        text.lines().filter(|line| line.starts_with("cpu")).count() as u64 == cpus + 1,
        "not one line per CPU:\n{text}"
    );
    for key in [
        "ctxt ",
        "btime ",
        "processes ",
        "procs_running ",
        "procs_blocked ",
    ] {
        ensure!(
            text.lines().any(|line| line.starts_with(key)),
            "no {key:?} line:\n{text}"
        );
    }
    Ok(())
}

/// Waits (sleeping in 1 ms steps, at most 2 s) until `condition` holds.
fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..2000 {
        if condition() {
            return true;
        }
        time::msleep(1);
    }
    condition()
}

/// A thread that takes a "page not present" sleeps (the CPU runs others) until its token's
/// "page ready"; a ready that overtakes its not-present lets the fault proceed at once; the
/// wake-all broadcast wakes every sleeper.
pub(super) fn async_pf_tokens_sleep_and_wake() -> TestResult {
    async_pf::ensure_table();
    let before = async_pf::counts();
    let base_waiters = async_pf::waiters();
    // 1. Not present, then ready.
    let done = Arc::new(Completion::new());
    let woke = Arc::new(AtomicBool::new(false));
    {
        let (done, woke) = (Arc::clone(&done), Arc::clone(&woke));
        sched::kthread_spawn(
            "apf-sleeper",
            SchedClass::NORMAL,
            CpuSet::single(0),
            move || {
                async_pf::page_not_present(0x5151, true);
                woke.store(true, Ordering::Release);
                done.complete();
            },
        )
        .map_err(|e| alloc::format!("spawn: {e}"))?;
    }
    ensure!(
        wait_for(|| async_pf::waiters() == base_waiters + 1),
        "the faulting thread never registered its token"
    );
    time::msleep(5);
    ensure!(
        !woke.load(Ordering::Acquire),
        "the thread ran on before its page was ready"
    );
    async_pf::page_ready(0x5151);
    ensure!(
        done.wait_timeout(2_000_000_000),
        "the page-ready did not wake the sleeping thread"
    );
    // 2. Ready first: the not-present proceeds without sleeping.
    async_pf::page_ready(0x7777);
    async_pf::page_not_present(0x7777, true);
    let after = async_pf::counts();
    ensure!(
        after.3 == before.3 + 1,
        "ready-before-not-present was not recognised (proceeded {} -> {})",
        before.3,
        after.3
    );
    // 3. Wake-all wakes two sleepers with different tokens.
    let all = Arc::new(Completion::new());
    for token in [0x100u32, 0x200] {
        let all = Arc::clone(&all);
        sched::kthread_spawn(
            "apf-sleeper",
            SchedClass::NORMAL,
            CpuSet::single(0),
            move || {
                async_pf::page_not_present(token, true);
                all.complete();
            },
        )
        .map_err(|e| alloc::format!("spawn: {e}"))?;
    }
    ensure!(
        wait_for(|| async_pf::waiters() == base_waiters + 2),
        "two sleepers did not register"
    );
    async_pf::page_ready(lull_pv::async_pf::KVM_WAKE_ALL_TOKEN);
    ensure!(
        all.wait_timeout(2_000_000_000) && all.wait_timeout(2_000_000_000),
        "wake-all left a sleeper asleep"
    );
    ensure!(
        async_pf::waiters() == base_waiters,
        "tokens left in the table"
    );
    Ok(())
}

fn ready_timer_fn(
    _context: &mut time::TimeContext,
    timer: &mut FiringTimer<TimerFunction<time::TimeContext>>,
) -> HrTimerRestart {
    async_pf::page_ready(timer.data() as u32);
    HrTimerRestart::NoRestart
}

/// A fault where the kernel cannot sleep (preemption disabled) halts, interrupts on, until
/// the ready arrives from an interrupt (here an hrtimer, as the host's interrupt would).
pub(super) fn async_pf_in_atomic_context_halts_until_ready() -> TestResult {
    async_pf::ensure_table();
    const TOKEN: u32 = 0xa70;
    let armed = time::with_this_cpu_timers(|percpu, now, _cpu| {
        let id = percpu
            .hrtimer_create(
                ClockId::Monotonic,
                TimerFunction::new("apf_ready_timer", ready_timer_fn),
                u64::from(TOKEN),
            )
            .map_err(|e| alloc::format!("{e:?}"))?;
        let start = StartInfo {
            site: "ktest_async_pf",
            pid: 0,
            comm: TaskComm::new("ktest"),
        };
        percpu
            .hrtimer_start(id, 3_000_000, HrTimerMode::Relative, 0, now, start)
            .map(|()| now)
            .map_err(|e| alloc::format!("{e:?}"))
    });
    // Measured from the arming: a vCPU held up by the host between arming and the fault may
    // see "ready" first, and then rightly returns at once (the token is already there).
    let start = match armed {
        Some(Ok(armed_at)) => armed_at,
        Some(Err(why)) => return Err(why.into()),
        None => skip!("no tick device on this CPU"),
    };
    {
        let _atomic = crate::kernel::locking::PreemptDisabled::new();
        async_pf::page_not_present(TOKEN, false);
    }
    let waited = time::uptime_ns() - start;
    ensure!(
        waited >= 2_000_000,
        "returned {waited} ns after arming, before the 3 ms ready"
    );
    ensure!(waited < 2_000_000_000, "halted {waited} ns");
    Ok(())
}
