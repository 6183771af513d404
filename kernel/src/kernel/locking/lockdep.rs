//! Lock-order checking at run time (`lockdep=1`): the portable `lull-lockdep` checker fed by
//! named locks of `crate::kernel::locking` (spinlocks, IRQ-safe spinlocks, mutexes and rwlocks) and
//! `might_sleep` checks. Problems (inversions, recursive locking) are printed
//! with both acquisition sites and counted; the machine keeps running.
//!
//! Held locks are kept per thread (a sleeping lock is held across switches), with hard-IRQ
//! acquisitions stacked on the interrupted context's locks. The checker's own locks are
//! unnamed IRQ-safe locks (never tracked; `CHECKER` → `HELD`, the others leaves): their guards
//! keep interrupts off, so an interrupt handler's own locking can never reach them while they
//! are held on its CPU. Reports are printed after they are released.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lull_lockdep::{AcquireKind, ClassId, ExecContext, HeldLocks, LockKind, Lockdep, Site};

use crate::kernel::locking::IrqSafeLock;

/// Lockdep parameters.
pub const PARAMS: &[lull_cmdline::ParamSpec] = &[lull_cmdline::ParamSpec {
    name: "lockdep",
    kind: lull_cmdline::Kind::Bool,
    default: "off",
    help: "Check the lock order of named locks at run time and report inversions.",
}];

static ENABLED: AtomicBool = AtomicBool::new(false);
static CHECKER: IrqSafeLock<Option<Lockdep>> = IrqSafeLock::new(None);
/// Held-lock stacks by holder (see [`holder`]); a leaf taken with interrupts off.
static HELD: IrqSafeLock<BTreeMap<u64, HeldLocks>> = IrqSafeLock::new(BTreeMap::new());
/// Sites already reported by the always-on atomic-sleep check.
static ATOMIC_SLEEP_SITES: IrqSafeLock<Vec<Site>> = IrqSafeLock::new(Vec::new());
static REPORTS: AtomicU64 = AtomicU64::new(0);
/// The last reports' text (tests read them).
static LAST_REPORTS: IrqSafeLock<Vec<String>> = IrqSafeLock::new(Vec::new());

/// Turns checking on when `lockdep=1` was given. Called once at boot after the command line.
pub fn init() {
    if crate::kernel::params::parsed()
        .get_bool("lockdep")
        .unwrap_or(false)
    {
        *CHECKER.lock() = Some(Lockdep::new(Default::default()));
        ENABLED.store(true, Ordering::Release);
        crate::printk!("lockdep: lock-order checking enabled");
    }
}

/// Turns checking on now (in-kernel tests run without `lockdep=1` on the command line).
#[cfg(feature = "ktest")]
pub fn enable() {
    let mut checker = CHECKER.lock();
    if checker.is_none() {
        *checker = Some(Lockdep::new(Default::default()));
    }
    ENABLED.store(true, Ordering::Release);
}

/// Whether checking is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Reports found since boot.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn report_count() -> u64 {
    REPORTS.load(Ordering::Acquire)
}

/// The text of the most recent reports (at most 8).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn recent_reports() -> Vec<String> {
    let reports = LAST_REPORTS.lock().clone();
    reports
}

/// Whose held-lock stack an acquisition goes on: the running thread's (a sleeping lock stays
/// held across a switch and may be released on another CPU), or, for code that is not a
/// thread (a CPU's idle loop, boot), the CPU's. A hard-IRQ handler's locks go on top of the
/// interrupted context's stack, marked as hard-IRQ, as lull-lockdep expects.
fn holder() -> u64 {
    match crate::kernel::sched::current() {
        Some(thread) => thread,
        None => u64::MAX - crate::arch::percpu::this_cpu_index() as u64,
    }
}

fn context() -> ExecContext {
    let count = crate::arch::percpu::preempt_count();
    ExecContext {
        in_hardirq: crate::kernel::locking::in_hardirq(),
        irqs_disabled: !crate::arch::cpu::interrupts_enabled(),
        preempt_count: count & crate::arch::percpu::PREEMPT_MASK,
    }
}

fn publish(printed: Vec<String>) {
    if printed.is_empty() {
        return;
    }
    REPORTS.fetch_add(printed.len() as u64, Ordering::AcqRel);
    for text in &printed {
        crate::pr_warn!("{text}");
    }
    let mut last = LAST_REPORTS.lock();
    last.extend(printed);
    let excess = last.len().saturating_sub(8);
    last.drain(..excess);
}

/// The lock `name` (of `kind`) at `site` is about to be taken by the running context.
pub fn acquire(
    name: &'static str,
    class: &spin::Once<ClassId>,
    kind: LockKind,
    how: AcquireKind,
    site: Site,
) {
    if !enabled() {
        return;
    }
    // The context is read before interrupts are masked for the checker's own locks. Boot runs
    // with interrupts off and one thread of control, so a sleeping lock taken then never
    // sleeps: it is checked as task context (as `might_sleep` skips boot).
    let context = if kind == LockKind::Sleeping && !crate::kernel::locking::system_running() {
        ExecContext::TASK
    } else {
        context()
    };
    let mut printed: Vec<String> = Vec::new();
    {
        let mut checker = CHECKER.lock();
        let Some(checker) = checker.as_mut() else {
            return;
        };
        let class = *class.call_once(|| {
            checker
                .register_class(name, kind)
                .unwrap_or(ClassId::UNTRACKED)
        });
        let mut held = HELD.lock();
        let held = held
            .entry(holder())
            .or_insert_with(|| HeldLocks::new(HeldLocks::DEFAULT_CAPACITY));
        for report in checker.acquire(held, class, site, context, how) {
            printed.push(alloc::format!("{report}"));
        }
    }
    publish(printed);
}

/// The lock of `class` was released by the running context.
pub fn release(class: &spin::Once<ClassId>, site: Site) {
    if !enabled() {
        return;
    }
    let Some(&class) = class.get() else { return };
    let printed = {
        let mut checker = CHECKER.lock();
        let Some(checker) = checker.as_mut() else {
            return;
        };
        let mut held = HELD.lock();
        let report = held
            .get_mut(&holder())
            .and_then(|held| checker.release(held, class, site));
        report.map(|report| alloc::format!("{report}"))
    };
    publish(printed.into_iter().collect());
}

/// Thread `thread` is gone (reaped): drops whatever held-lock stack it still has without a
/// report. An exiting thread takes the scheduler's lock after [`thread_exited`] and switches
/// away holding it (the next thread releases it), which makes a fresh stack for it; without
/// this, each thread that ever ran left ~1.6 KB behind.
pub fn forget_thread(thread: u64) {
    let stack = HELD.lock().remove(&thread);
    drop(stack);
}

/// Thread `thread` is exiting: its held-lock stack goes, and locks still on it are reported
/// (Linux's "lock held when returning"; they can never be released now).
pub fn thread_exited(thread: u64) {
    if !enabled() {
        return;
    }
    // Bound to a local: the guard is dropped at the end of this statement.
    let still_held = HELD.lock().remove(&thread).map_or(0, |held| held.depth());
    if still_held != 0 {
        publish(alloc::vec![alloc::format!(
            "lockdep: thread {thread} exited holding {still_held} lock(s)"
        )]);
    }
}

/// Linux's `might_sleep()` with lockdep on: reports a possible sleep at `site` in atomic
/// context (naming the spinlock held, if one is).
pub fn might_sleep(site: Site) {
    if !enabled() {
        return;
    }
    let context = context();
    let printed = {
        let mut checker = CHECKER.lock();
        let Some(checker) = checker.as_mut() else {
            return;
        };
        let mut held = HELD.lock();
        let held = held
            .entry(holder())
            .or_insert_with(|| HeldLocks::new(HeldLocks::DEFAULT_CAPACITY));
        checker
            .might_sleep(held, context, site)
            .map(|report| alloc::format!("{report}"))
    };
    publish(printed.into_iter().collect());
}

/// The always-on part of `might_sleep` (lockdep off): a sleep at `site` with preemption or
/// interrupts off is reported once per site, like Linux's "BUG: sleeping function called from
/// invalid context" (the machine keeps running).
pub fn report_atomic_sleep(site: Site) {
    let context = context();
    {
        let mut seen = ATOMIC_SLEEP_SITES.lock();
        if seen.contains(&site) || seen.len() >= 64 {
            return;
        }
        seen.push(site);
    }
    let why = if context.in_hardirq {
        String::from("in a hard-interrupt handler")
    } else if context.irqs_disabled {
        String::from("interrupts are disabled")
    } else {
        alloc::format!("preemption is disabled (count {})", context.preempt_count)
    };
    publish(alloc::vec![alloc::format!(
        "BUG: sleeping function called from invalid context at {site}: {why}"
    )]);
}

/// `/proc/lockdep_stats`.
pub fn proc_stats() -> String {
    let checker = CHECKER.lock();
    match checker.as_ref() {
        None => String::from("lockdep: off (boot with lockdep=1)\n"),
        Some(checker) => {
            let stats = checker.stats();
            alloc::format!(
                " lock-classes:                  {:>6} [max: {}]\n direct dependencies:           {:>6} [max: {}]\n checks:                        {:>6}\n reports:                       {:>6}\n",
                stats.classes,
                stats.max_classes,
                stats.dependencies,
                stats.max_dependencies,
                stats.checks,
                REPORTS.load(Ordering::Acquire)
            )
        }
    }
}
