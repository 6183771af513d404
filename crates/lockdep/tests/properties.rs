//! Property tests: acquisitions consistent with one global order are never reported; random
//! lock traffic never panics, stays within its tables, reports only real cycles, and reports
//! each cycle once.

use lull_lockdep::{
    AcquireKind, ClassId, ExecContext, HeldLocks, Limits, LockKind, Lockdep, Report, Site,
};
use proptest::prelude::*;

const NAMES: [&str; 8] = ["l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7"];
const SITES: [Site; 4] = [
    Site::new("s0"),
    Site::new("s1"),
    Site::new("s2"),
    Site::new("s3"),
];

#[derive(Clone, Debug)]
enum Step {
    /// Task `task` takes lock `lock` (in the ordered test: only if above everything it holds).
    Acquire {
        task: usize,
        lock: usize,
        site: usize,
        try_lock: bool,
        context: u8,
    },
    /// Task `task` releases its `nth` held lock (any order).
    Release {
        task: usize,
        nth: usize,
    },
    MightSleep {
        task: usize,
        context: u8,
    },
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..3, 0usize..NAMES.len(), 0usize..SITES.len(), prop::bool::weighted(0.1), 0u8..4)
            .prop_map(|(task, lock, site, try_lock, context)| Step::Acquire { task, lock, site, try_lock, context }),
        2 => (0usize..3, 0usize..8).prop_map(|(task, nth)| Step::Release { task, nth }),
        1 => (0usize..3, 0u8..4).prop_map(|(task, context)| Step::MightSleep { task, context }),
    ]
}

fn context(code: u8) -> ExecContext {
    match code {
        0 => ExecContext::TASK,
        1 => ExecContext::IRQS_DISABLED,
        2 => ExecContext::HARDIRQ,
        _ => ExecContext {
            preempt_count: 1,
            ..ExecContext::TASK
        },
    }
}

fn setup(limits: Limits) -> (Lockdep, Vec<ClassId>) {
    let mut lockdep = Lockdep::new(limits);
    let classes = NAMES
        .iter()
        .enumerate()
        .map(|(index, name)| {
            // The last two are mutexes, so sleeping checks get traffic.
            let kind = if index >= 6 {
                LockKind::Sleeping
            } else {
                LockKind::Spin
            };
            lockdep
                .register_class(name, kind)
                .unwrap_or(ClassId::UNTRACKED)
        })
        .collect();
    (lockdep, classes)
}

fn release_nth(lockdep: &mut Lockdep, stack: &mut HeldLocks, nth: usize) -> Option<Report> {
    let class = stack
        .iter()
        .nth(nth % stack.depth().max(1))
        .map(|held| held.class)?;
    lockdep.release(stack, class, Site::new("release"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Three tasks interleave, each only ever taking a lock ranked above all it holds (one
    /// global order), with try-locks, out-of-order releases and interrupts disabled: no report.
    #[test]
    fn acquisitions_in_one_global_order_are_never_reported(
        steps in proptest::collection::vec(step_strategy(), 1..300)
    ) {
        let (mut lockdep, classes) = setup(Limits::default());
        let mut stacks = [HeldLocks::default(), HeldLocks::default(), HeldLocks::default()];
        for step in &steps {
            match *step {
                Step::Acquire { task, lock, site, try_lock, .. } => {
                    let stack = &mut stacks[task];
                    let highest_held = stack
                        .iter()
                        .filter_map(|held| classes.iter().position(|&c| c == held.class))
                        .max();
                    if highest_held.is_some_and(|highest| lock <= highest) {
                        continue;
                    }
                    // Interrupts stay disabled so IRQ-safety and sleeping checks stay quiet:
                    // only ordering is under test (mutexes come last in the order, and are
                    // taken only with no spinlock held, in task context).
                    let holds_spinlock = stack.iter().any(|held| classes[..6].contains(&held.class));
                    let is_mutex = lock >= 6;
                    if is_mutex && holds_spinlock {
                        continue;
                    }
                    let context = if is_mutex { ExecContext::TASK } else { ExecContext::IRQS_DISABLED };
                    let kind = if try_lock { AcquireKind::Try } else { AcquireKind::Blocking };
                    let reports = lockdep.acquire(stack, classes[lock], SITES[site], context, kind);
                    prop_assert!(reports.is_empty(), "{:?}", reports);
                }
                Step::Release { task, nth } => {
                    let report = release_nth(&mut lockdep, &mut stacks[task], nth);
                    prop_assert!(report.is_none(), "{:?}", report);
                }
                Step::MightSleep { .. } => {}
            }
        }
        prop_assert_eq!(lockdep.stats().reports, 0);
    }

    /// Anything goes, with small tables: no panic, tables never exceed their limits, every
    /// reported cycle is a closed chain whose new link was not known before, no cycle is
    /// reported twice, and every report renders.
    #[test]
    fn random_lock_traffic_reports_only_real_cycles_and_each_once(
        steps in proptest::collection::vec(step_strategy(), 1..300),
        max_dependencies in 3usize..40,
    ) {
        let limits = Limits { max_classes: 8, max_dependencies, max_distinct_reports: 16 };
        let (mut lockdep, classes) = setup(limits);
        let mut stacks = [HeldLocks::new(6), HeldLocks::new(6), HeldLocks::new(6)];
        let mut cycles_seen: Vec<Vec<(&str, &str)>> = Vec::new();
        let mut table_full_reports = 0;
        for step in &steps {
            let mut reports = Vec::new();
            match *step {
                Step::Acquire { task, lock, site, try_lock, context: code } => {
                    let kind = if try_lock { AcquireKind::Try } else { AcquireKind::Blocking };
                    reports = lockdep.acquire(&mut stacks[task], classes[lock], SITES[site], context(code), kind);
                }
                Step::Release { task, nth } => {
                    reports.extend(release_nth(&mut lockdep, &mut stacks[task], nth));
                }
                Step::MightSleep { task, context: code } => {
                    reports.extend(lockdep.might_sleep(&stacks[task], context(code), Site::new("sleep")));
                }
            }
            for report in &reports {
                prop_assert!(report.to_string().starts_with("lockdep: "));
                match report {
                    Report::CircularDependency { cycle } => {
                        prop_assert!(cycle.len() >= 2);
                        for pair in cycle.windows(2) {
                            prop_assert_eq!(pair[0].acquired, pair[1].held);
                        }
                        prop_assert_eq!(cycle[cycle.len() - 1].acquired, cycle[0].held);
                        let links: Vec<_> = cycle.iter().map(|d| (d.held.name, d.acquired.name)).collect();
                        // The new link closes the cycle now; the same closing link is never
                        // reported again.
                        prop_assert!(!cycles_seen.iter().any(|seen| seen[0] == links[0]));
                        cycles_seen.push(links);
                    }
                    Report::TableFull { .. } => table_full_reports += 1,
                    _ => {}
                }
            }
            let stats = lockdep.stats();
            prop_assert!(stats.dependencies <= max_dependencies);
            prop_assert!(stats.classes <= 8);
            prop_assert!(stacks.iter().all(|stack| stack.depth() <= 6));
            prop_assert!(table_full_reports <= 1);
            prop_assert_eq!(stats.enabled, table_full_reports == 0);
        }
    }
}
