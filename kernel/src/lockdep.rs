//! Lock-order checking at run time (`lockdep=1`): the portable `lull-lockdep` checker fed by
//! named [`crate::sync::IrqSafeLock`]s. Problems (inversions, recursive locking) are printed
//! with both acquisition sites and counted; the machine keeps running.
//!
//! Every tracked lock is IRQ-safe, so while one is held its CPU can neither take an interrupt
//! nor switch threads: a per-CPU held-lock stack is the holder's stack. The checker's own
//! locks are plain spinlocks taken with interrupts off, never tracked, and leaves.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lull_lockdep::{AcquireKind, ClassId, ExecContext, HeldLocks, LockKind, Lockdep, Site};

use crate::sync::{InterruptsDisabled, PerCpu, MAX_CPUS};

/// Lockdep parameters.
pub const PARAMS: &[lull_cmdline::ParamSpec] = &[lull_cmdline::ParamSpec {
    name: "lockdep",
    kind: lull_cmdline::Kind::Bool,
    default: "off",
    help: "Check the lock order of named locks at run time and report inversions.",
}];

static ENABLED: AtomicBool = AtomicBool::new(false);
static CHECKER: spin::Mutex<Option<Lockdep>> = spin::Mutex::new(None);
static HELD: PerCpu<spin::Mutex<Option<HeldLocks>>> =
    PerCpu::new([const { spin::Mutex::new(None) }; MAX_CPUS]);
static REPORTS: AtomicU64 = AtomicU64::new(0);
/// The last reports' text (tests read them).
static LAST_REPORTS: spin::Mutex<Vec<String>> = spin::Mutex::new(Vec::new());

/// Turns checking on when `lockdep=1` was given. Called once at boot after the command line.
pub fn init() {
    if crate::params::parsed().get_bool("lockdep").unwrap_or(false) {
        let _interrupts_off = InterruptsDisabled::new();
        *CHECKER.lock() = Some(Lockdep::new(Default::default()));
        ENABLED.store(true, Ordering::Release);
        crate::printk!("lockdep: lock-order checking enabled");
    }
}

/// Turns checking on now (in-kernel tests run without `lockdep=1` on the command line).
#[cfg(feature = "ktest")]
pub fn enable() {
    let _interrupts_off = InterruptsDisabled::new();
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
    let _interrupts_off = InterruptsDisabled::new();
    let reports = LAST_REPORTS.lock().clone();
    reports
}

/// The lock `name` at `site` is about to be taken (blocking) on this CPU.
pub fn acquire(
    name: &'static str,
    class: &spin::Once<ClassId>,
    site: Site,
    proof: &InterruptsDisabled,
) {
    if !enabled() {
        return;
    }
    let mut printed: Vec<String> = Vec::new();
    {
        let mut checker = CHECKER.lock();
        let Some(checker) = checker.as_mut() else {
            return;
        };
        let class = *class.call_once(|| {
            checker
                .register_class(name, LockKind::Spin)
                .unwrap_or(ClassId::UNTRACKED)
        });
        let mut held = HELD.this_cpu(proof).lock();
        let held = held.get_or_insert_with(|| HeldLocks::new(HeldLocks::DEFAULT_CAPACITY));
        for report in checker.acquire(
            held,
            class,
            site,
            ExecContext::IRQS_DISABLED,
            AcquireKind::Blocking,
        ) {
            printed.push(alloc::format!("{report}"));
        }
    }
    if !printed.is_empty() {
        REPORTS.fetch_add(printed.len() as u64, Ordering::AcqRel);
        for text in &printed {
            crate::pr_warn!("{text}");
        }
        let mut last = LAST_REPORTS.lock();
        last.extend(printed);
        let excess = last.len().saturating_sub(8);
        last.drain(..excess);
    }
}

/// The lock of `class` was released on this CPU.
pub fn release(class: &spin::Once<ClassId>, site: Site, proof: &InterruptsDisabled) {
    if !enabled() {
        return;
    }
    let Some(&class) = class.get() else { return };
    let mut checker = CHECKER.lock();
    let Some(checker) = checker.as_mut() else {
        return;
    };
    if let Some(held) = HELD.this_cpu(proof).lock().as_mut() {
        let _ = checker.release(held, class, site);
    }
}

/// `/proc/lockdep_stats`.
pub fn proc_stats() -> String {
    let _interrupts_off = InterruptsDisabled::new();
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
