//! The checker's findings: inversions (across three and more locks, with every site),
//! recursive locking, sleeping while atomic, IRQ safety, unbalanced release, table-full
//! behaviour, and no false positives for a consistent order.

use lull_lockdep::{
    site, AcquireKind, AtomicReason, ClassId, ExecContext, HeldLocks, Limits, LockKind, LockName,
    Lockdep, Report, Site,
};

const BLOCKING: AcquireKind = AcquireKind::Blocking;
const TASK: ExecContext = ExecContext::TASK;
const IRQS_OFF: ExecContext = ExecContext::IRQS_DISABLED;

fn name(name: &'static str) -> LockName {
    LockName { name, subclass: 0 }
}

/// Takes `locks` in order at the given sites and releases them all; returns every report.
fn path(
    lockdep: &mut Lockdep,
    stack: &mut HeldLocks,
    locks: &[(ClassId, Site)],
    context: ExecContext,
) -> Vec<Report> {
    let mut reports = Vec::new();
    for &(class, at) in locks {
        reports.extend(lockdep.acquire(stack, class, at, context, BLOCKING));
    }
    for &(class, at) in locks.iter().rev() {
        reports.extend(lockdep.release(stack, class, at));
    }
    reports
}

fn spin_classes(lockdep: &mut Lockdep, names: &[&'static str]) -> Vec<ClassId> {
    names
        .iter()
        .map(|name| lockdep.register_class(name, LockKind::Spin).unwrap())
        .collect()
}

#[test]
fn an_inversion_across_three_locks_is_reported_with_every_site() {
    let mut lockdep = Lockdep::new(Limits::default());
    let [a, b, c] = spin_classes(&mut lockdep, &["a", "b", "c"])[..] else {
        unreachable!()
    };
    let mut cpu0 = HeldLocks::default();
    let mut cpu1 = HeldLocks::default();
    let mut cpu2 = HeldLocks::default();
    let s = Site::new;
    // Three different paths on three CPUs; each alone is fine.
    assert!(path(
        &mut lockdep,
        &mut cpu0,
        &[(a, s("fs.rs:10")), (b, s("fs.rs:11"))],
        IRQS_OFF
    )
    .is_empty());
    assert!(path(
        &mut lockdep,
        &mut cpu1,
        &[(b, s("net.rs:20")), (c, s("net.rs:21"))],
        IRQS_OFF
    )
    .is_empty());
    let reports = path(
        &mut lockdep,
        &mut cpu2,
        &[(c, s("mm.rs:30")), (a, s("mm.rs:31"))],
        IRQS_OFF,
    );

    let [Report::CircularDependency { cycle }] = &reports[..] else {
        panic!("expected one cycle report, got {reports:?}");
    };
    let links: Vec<_> = cycle
        .iter()
        .map(|d| (d.held.name, d.held_site, d.acquired.name, d.acquired_site))
        .collect();
    assert_eq!(
        links,
        [
            ("c", s("mm.rs:30"), "a", s("mm.rs:31")),
            ("a", s("fs.rs:10"), "b", s("fs.rs:11")),
            ("b", s("net.rs:20"), "c", s("net.rs:21")),
        ]
    );
    let text = reports[0].to_string();
    assert!(text.starts_with("lockdep: possible circular locking dependency detected (3 locks)"));
    assert!(
        text.contains("order: \"c\" -> \"a\" -> \"b\" -> \"c\""),
        "{text}"
    );
    for site in [
        "fs.rs:10",
        "fs.rs:11",
        "net.rs:20",
        "net.rs:21",
        "mm.rs:30",
        "mm.rs:31",
    ] {
        assert!(text.contains(site), "{site} missing from:\n{text}");
    }

    // Reported once: the same paths again say nothing.
    assert!(path(
        &mut lockdep,
        &mut cpu2,
        &[(c, s("mm.rs:30")), (a, s("mm.rs:31"))],
        IRQS_OFF
    )
    .is_empty());
    assert!(path(
        &mut lockdep,
        &mut cpu0,
        &[(a, s("fs.rs:10")), (b, s("fs.rs:11"))],
        IRQS_OFF
    )
    .is_empty());
    assert_eq!(lockdep.stats().reports, 1);
    assert!(lockdep.is_enabled(), "a report does not stop checking");
}

#[test]
fn a_cycle_through_nested_holds_and_five_locks_is_found() {
    let mut lockdep = Lockdep::new(Limits::default());
    let locks = spin_classes(&mut lockdep, &["l0", "l1", "l2", "l3", "l4"]);
    let mut task = HeldLocks::default();
    // l0 → l1 → l2 in one nest, l2 → l3 → l4 in another.
    let nest = |from: usize, to: usize| -> Vec<(ClassId, Site)> {
        (from..=to).map(|i| (locks[i], Site::caller())).collect()
    };
    assert!(path(&mut lockdep, &mut task, &nest(0, 2), IRQS_OFF).is_empty());
    assert!(path(&mut lockdep, &mut task, &nest(2, 4), IRQS_OFF).is_empty());
    // Holding l4 while taking l0 closes l0 → … → l4 → l0.
    let reports = path(
        &mut lockdep,
        &mut task,
        &[(locks[4], site!()), (locks[0], site!())],
        IRQS_OFF,
    );
    let [Report::CircularDependency { cycle }] = &reports[..] else {
        panic!("{reports:?}");
    };
    assert_eq!(cycle.len(), 5);
    for pair in cycle.windows(2) {
        assert_eq!(pair[0].acquired, pair[1].held, "the chain is connected");
    }
    assert_eq!(cycle.last().unwrap().acquired, cycle[0].held, "and closed");
}

#[test]
fn a_consistent_order_is_never_reported() {
    let mut lockdep = Lockdep::new(Limits::default());
    let locks = spin_classes(&mut lockdep, &["a", "b", "c", "d", "e"]);
    let mut stacks = [HeldLocks::default(), HeldLocks::default()];
    // Every subsequence of a < b < c < d < e, in order, released in assorted orders.
    for mask in 1u32..32 {
        let chosen: Vec<_> = (0..5)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| locks[i])
            .collect();
        let stack = &mut stacks[mask as usize % 2];
        for &class in &chosen {
            assert!(lockdep
                .acquire(stack, class, site!(), IRQS_OFF, BLOCKING)
                .is_empty());
        }
        // Release the middle one first, then the rest oldest-first.
        if let Some(&middle) = chosen.get(chosen.len() / 2) {
            assert_eq!(lockdep.release(stack, middle, site!()), None);
        }
        for &class in &chosen {
            if stack.holds(class) {
                assert_eq!(lockdep.release(stack, class, site!()), None);
            }
        }
        assert!(stack.is_empty());
    }
    let stats = lockdep.stats();
    assert_eq!(stats.reports, 0);
    assert!(
        stats.dependencies >= 4 && stats.dependencies <= 10,
        "{stats:?}"
    );
    assert_eq!(stats.max_held_depth, 5);
}

#[test]
fn recursive_locking_is_reported_once_and_nested_subclasses_are_not() {
    let mut lockdep = Lockdep::new(Limits::default());
    let rq = lockdep.register_class("rq", LockKind::Spin).unwrap();
    assert_eq!(
        lockdep.register_class("rq", LockKind::Spin),
        Ok(rq),
        "same name, same class"
    );
    let mut task = HeldLocks::default();
    let first = Site::new("sched.rs:100");
    let second = Site::new("sched.rs:101");
    let reports = path(
        &mut lockdep,
        &mut task,
        &[(rq, first), (rq, second)],
        IRQS_OFF,
    );
    assert_eq!(
        reports,
        [Report::RecursiveLocking {
            lock: name("rq"),
            held_site: first,
            acquired_site: second,
        }]
    );
    let text = reports[0].to_string();
    assert!(
        text.contains("sched.rs:100") && text.contains("sched.rs:101"),
        "{text}"
    );
    assert!(path(
        &mut lockdep,
        &mut task,
        &[(rq, first), (rq, second)],
        IRQS_OFF
    )
    .is_empty());
    assert_eq!(lockdep.stats().duplicates_suppressed, 1);

    // double_rq_lock: the second run queue is taken as subclass 1.
    let rq_nested = lockdep.subclass(rq, 1).unwrap();
    assert_ne!(rq_nested, rq);
    assert_eq!(
        lockdep.lock_name(rq_nested),
        Some(LockName {
            name: "rq",
            subclass: 1
        })
    );
    assert!(path(
        &mut lockdep,
        &mut task,
        &[(rq, site!()), (rq_nested, site!())],
        IRQS_OFF
    )
    .is_empty());
}

#[test]
fn taking_a_sleeping_lock_under_a_spinlock_is_sleeping_while_atomic() {
    let mut lockdep = Lockdep::new(Limits::default());
    let spin = lockdep.register_class("zone_lock", LockKind::Spin).unwrap();
    let mutex = lockdep
        .register_class("inode_mutex", LockKind::Sleeping)
        .unwrap();
    let other_mutex = lockdep
        .register_class("sb_mutex", LockKind::Sleeping)
        .unwrap();
    let mut task = HeldLocks::default();
    let spin_site = Site::new("mm.rs:5");
    let mutex_site = Site::new("fs.rs:9");
    assert!(lockdep
        .acquire(&mut task, spin, spin_site, IRQS_OFF, BLOCKING)
        .is_empty());
    let reports = lockdep.acquire(&mut task, mutex, mutex_site, IRQS_OFF, BLOCKING);
    assert_eq!(
        reports,
        [Report::SleepingWhileAtomic {
            site: mutex_site,
            sleeping_lock: Some(name("inode_mutex")),
            reason: AtomicReason::HoldingSpinlock {
                lock: name("zone_lock"),
                site: spin_site,
            },
        }]
    );
    let text = reports[0].to_string();
    assert!(
        text.contains("fs.rs:9") && text.contains("mm.rs:5"),
        "{text}"
    );
    lockdep.release(&mut task, mutex, site!());
    lockdep.release(&mut task, spin, site!());

    // A try-lock never sleeps; mutexes nest under mutexes.
    lockdep.acquire(&mut task, spin, spin_site, IRQS_OFF, BLOCKING);
    assert!(lockdep
        .acquire(&mut task, other_mutex, site!(), IRQS_OFF, AcquireKind::Try)
        .is_empty());
    lockdep.release(&mut task, other_mutex, site!());
    lockdep.release(&mut task, spin, site!());
    assert!(path(
        &mut lockdep,
        &mut task,
        &[(other_mutex, site!()), (mutex, site!())],
        TASK
    )
    .is_empty());
}

#[test]
fn might_sleep_names_why_the_context_is_atomic() {
    let mut lockdep = Lockdep::new(Limits::default());
    let spin = lockdep.register_class("list_lock", LockKind::Spin).unwrap();
    let empty = HeldLocks::default();
    let at = Site::new("alloc.rs:77");
    assert_eq!(lockdep.might_sleep(&empty, TASK, at), None);
    let reason = |lockdep: &mut Lockdep, held: &HeldLocks, context, at| match lockdep
        .might_sleep(held, context, at)
    {
        Some(Report::SleepingWhileAtomic {
            reason,
            sleeping_lock: None,
            ..
        }) => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reason(&mut lockdep, &empty, ExecContext::HARDIRQ, at),
        AtomicReason::InHardIrq
    );
    assert_eq!(
        reason(&mut lockdep, &empty, IRQS_OFF, at),
        AtomicReason::InterruptsDisabled
    );
    let preempt_off = ExecContext {
        preempt_count: 2,
        ..TASK
    };
    assert_eq!(
        reason(&mut lockdep, &empty, preempt_off, at),
        AtomicReason::PreemptionDisabled { count: 2 }
    );
    let mut held = HeldLocks::default();
    lockdep.acquire(&mut held, spin, Site::new("slab.rs:3"), TASK, BLOCKING);
    assert_eq!(
        reason(&mut lockdep, &held, TASK, at),
        AtomicReason::HoldingSpinlock {
            lock: name("list_lock"),
            site: Site::new("slab.rs:3")
        }
    );
    // The same problem at the same site is reported once; another site is a new problem.
    assert_eq!(lockdep.might_sleep(&held, TASK, at), None);
    assert!(lockdep
        .might_sleep(&held, TASK, Site::new("alloc.rs:99"))
        .is_some());
    assert_eq!(lockdep.stats().sleep_checks, 7);
}

#[test]
fn a_lock_taken_in_an_interrupt_handler_and_with_interrupts_enabled_is_reported() {
    let mut lockdep = Lockdep::new(Limits::default());
    let lock = lockdep.register_class("rx_lock", LockKind::Spin).unwrap();
    let mut task = HeldLocks::default();
    let mut irq = HeldLocks::default();
    assert!(path(
        &mut lockdep,
        &mut irq,
        &[(lock, Site::new("net_irq.rs:4"))],
        ExecContext::HARDIRQ
    )
    .is_empty());
    assert!(
        path(
            &mut lockdep,
            &mut task,
            &[(lock, Site::new("net.rs:8"))],
            IRQS_OFF
        )
        .is_empty(),
        "irqsave is fine"
    );
    let reports = path(
        &mut lockdep,
        &mut task,
        &[(lock, Site::new("net.rs:12"))],
        TASK,
    );
    assert_eq!(
        reports,
        [Report::InconsistentIrqUsage {
            lock: name("rx_lock"),
            in_irq_site: Site::new("net_irq.rs:4"),
            irqs_enabled_site: Site::new("net.rs:12"),
        }]
    );
}

#[test]
fn a_chain_from_an_irq_safe_lock_to_an_irq_unsafe_lock_is_reported_whichever_is_learned_last() {
    for edge_first in [false, true] {
        let mut lockdep = Lockdep::new(Limits::default());
        let [safe, middle, unsafe_lock] =
            spin_classes(&mut lockdep, &["timer_base", "hrtimer", "stats"])[..]
        else {
            unreachable!()
        };
        let mut task = HeldLocks::default();
        let mut irq = HeldLocks::default();
        let mut reports = Vec::new();
        let mut learn_edges = |lockdep: &mut Lockdep, reports: &mut Vec<Report>| {
            reports.extend(path(
                lockdep,
                &mut task,
                &[(safe, site!()), (middle, site!())],
                IRQS_OFF,
            ));
            reports.extend(path(
                lockdep,
                &mut task,
                &[(middle, site!()), (unsafe_lock, site!())],
                IRQS_OFF,
            ));
        };
        if edge_first {
            learn_edges(&mut lockdep, &mut reports);
        }
        reports.extend(path(
            &mut lockdep,
            &mut irq,
            &[(safe, Site::new("tick.rs:1"))],
            ExecContext::HARDIRQ,
        ));
        reports.extend(path(
            &mut lockdep,
            &mut HeldLocks::default(),
            &[(unsafe_lock, Site::new("proc.rs:2"))],
            TASK,
        ));
        if !edge_first {
            learn_edges(&mut lockdep, &mut reports);
        }
        let [Report::IrqLockInversion {
            safe: safe_name,
            safe_in_irq_site,
            unsafe_lock: unsafe_name,
            unsafe_irqs_enabled_site,
            chain,
        }] = &reports[..]
        else {
            panic!("edge_first={edge_first}: {reports:?}");
        };
        assert_eq!((safe_name.name, unsafe_name.name), ("timer_base", "stats"));
        assert_eq!(
            (*safe_in_irq_site, *unsafe_irqs_enabled_site),
            (Site::new("tick.rs:1"), Site::new("proc.rs:2"))
        );
        let hops: Vec<_> = chain
            .iter()
            .map(|d| (d.held.name, d.acquired.name))
            .collect();
        assert_eq!(hops, [("timer_base", "hrtimer"), ("hrtimer", "stats")]);
    }
}

#[test]
fn dependencies_do_not_cross_from_a_task_into_the_interrupt_that_interrupted_it() {
    let mut lockdep = Lockdep::new(Limits::default());
    let [task_lock, irq_lock] = spin_classes(&mut lockdep, &["task_lock", "irq_lock"])[..] else {
        unreachable!()
    };
    let mut stack = HeldLocks::default();
    lockdep.acquire(&mut stack, task_lock, site!(), IRQS_OFF, BLOCKING);
    // An interrupt arrives on this CPU (the kernel shares the stack with the handler).
    lockdep.acquire(
        &mut stack,
        irq_lock,
        site!(),
        ExecContext::HARDIRQ,
        BLOCKING,
    );
    lockdep.release(&mut stack, irq_lock, site!());
    lockdep.release(&mut stack, task_lock, site!());
    assert_eq!(lockdep.stats().dependencies, 0);
    // So the opposite order elsewhere is no inversion.
    assert!(path(
        &mut lockdep,
        &mut stack,
        &[(irq_lock, site!()), (task_lock, site!())],
        IRQS_OFF
    )
    .is_empty());
}

#[test]
fn a_try_lock_teaches_no_order_into_itself() {
    let mut lockdep = Lockdep::new(Limits::default());
    let [a, b, c] = spin_classes(&mut lockdep, &["a", "b", "c"])[..] else {
        unreachable!()
    };
    let mut task = HeldLocks::default();
    lockdep.acquire(&mut task, a, site!(), IRQS_OFF, BLOCKING);
    assert!(lockdep
        .acquire(&mut task, b, site!(), IRQS_OFF, AcquireKind::Try)
        .is_empty());
    lockdep.acquire(&mut task, c, site!(), IRQS_OFF, BLOCKING);
    for class in [c, b, a] {
        lockdep.release(&mut task, class, site!());
    }
    // Learned a → c and b → c, not a → b: so b then a is fine, c then a is not.
    assert_eq!(lockdep.stats().dependencies, 2);
    assert!(path(
        &mut lockdep,
        &mut task,
        &[(b, site!()), (a, site!())],
        IRQS_OFF
    )
    .is_empty());
    let reports = path(
        &mut lockdep,
        &mut task,
        &[(c, site!()), (a, site!())],
        IRQS_OFF,
    );
    assert!(
        matches!(&reports[..], [Report::CircularDependency { .. }]),
        "{reports:?}"
    );
}

#[test]
fn releasing_a_lock_not_held_is_reported_once() {
    let mut lockdep = Lockdep::new(Limits::default());
    let lock = lockdep.register_class("dev_lock", LockKind::Spin).unwrap();
    let mut task = HeldLocks::default();
    let at = Site::new("gpio.rs:40");
    assert_eq!(
        lockdep.release(&mut task, lock, at),
        Some(Report::UnbalancedRelease {
            lock: name("dev_lock"),
            site: at
        })
    );
    assert_eq!(lockdep.release(&mut task, lock, at), None);
}

#[test]
fn a_full_class_table_disables_checking_with_one_report() {
    let mut lockdep = Lockdep::new(Limits {
        max_classes: 3,
        ..Limits::default()
    });
    let classes = spin_classes(&mut lockdep, &["a", "b", "c"]);
    let full = lockdep.register_class("d", LockKind::Spin).unwrap_err();
    assert_eq!(
        full,
        Report::TableFull {
            table: "lock class"
        }
    );
    assert!(full
        .to_string()
        .starts_with("lockdep: table full, checking disabled"));
    assert!(!lockdep.is_enabled());
    assert_eq!(
        lockdep.register_class("e", LockKind::Spin),
        Ok(ClassId::UNTRACKED)
    );
    // Nothing is checked any more, and nothing breaks.
    let mut task = HeldLocks::default();
    assert!(path(
        &mut lockdep,
        &mut task,
        &[
            (classes[1], site!()),
            (classes[0], site!()),
            (classes[0], site!())
        ],
        TASK
    )
    .is_empty());
    assert!(path(
        &mut lockdep,
        &mut task,
        &[(ClassId::UNTRACKED, site!())],
        TASK
    )
    .is_empty());
    let stats = lockdep.stats();
    assert!(!stats.enabled);
    assert_eq!((stats.classes, stats.reports), (3, 1));
    assert!(stats
        .to_string()
        .contains("debug_locks:                          0"));
}

#[test]
fn a_full_dependency_table_disables_checking_with_one_report() {
    let mut lockdep = Lockdep::new(Limits {
        max_dependencies: 2,
        ..Limits::default()
    });
    let locks = spin_classes(&mut lockdep, &["a", "b", "c", "d"]);
    let mut task = HeldLocks::default();
    assert!(path(
        &mut lockdep,
        &mut task,
        &[
            (locks[0], site!()),
            (locks[1], site!()),
            (locks[2], site!())
        ],
        IRQS_OFF
    )
    .is_empty());
    let reports = path(
        &mut lockdep,
        &mut task,
        &[(locks[2], site!()), (locks[3], site!())],
        IRQS_OFF,
    );
    assert_eq!(
        reports,
        [Report::TableFull {
            table: "lock dependency"
        }]
    );
    assert!(!lockdep.is_enabled());
    assert!(path(
        &mut lockdep,
        &mut task,
        &[(locks[3], site!()), (locks[0], site!())],
        IRQS_OFF
    )
    .is_empty());
    assert_eq!(lockdep.stats().dependencies, 2);
}

#[test]
fn a_full_held_lock_stack_disables_checking_with_one_report() {
    let mut lockdep = Lockdep::new(Limits::default());
    let locks = spin_classes(&mut lockdep, &["a", "b", "c"]);
    let mut shallow = HeldLocks::new(2);
    lockdep.acquire(&mut shallow, locks[0], site!(), IRQS_OFF, BLOCKING);
    lockdep.acquire(&mut shallow, locks[1], site!(), IRQS_OFF, BLOCKING);
    let reports = lockdep.acquire(&mut shallow, locks[2], site!(), IRQS_OFF, BLOCKING);
    assert_eq!(
        reports,
        [Report::TableFull {
            table: "held-lock stack"
        }]
    );
    assert_eq!(shallow.depth(), 2);
}

#[test]
fn checking_continues_after_a_report_and_finds_the_next_distinct_problem() {
    let mut lockdep = Lockdep::new(Limits::default());
    let [a, b, c, d] = spin_classes(&mut lockdep, &["a", "b", "c", "d"])[..] else {
        unreachable!()
    };
    let mut task = HeldLocks::default();
    path(
        &mut lockdep,
        &mut task,
        &[(a, site!()), (b, site!())],
        IRQS_OFF,
    );
    assert_eq!(
        path(
            &mut lockdep,
            &mut task,
            &[(b, site!()), (a, site!())],
            IRQS_OFF
        )
        .len(),
        1
    );
    path(
        &mut lockdep,
        &mut task,
        &[(c, site!()), (d, site!())],
        IRQS_OFF,
    );
    let second = path(
        &mut lockdep,
        &mut task,
        &[(d, site!()), (c, site!())],
        IRQS_OFF,
    );
    let [Report::CircularDependency { cycle }] = &second[..] else {
        panic!("{second:?}");
    };
    assert_eq!((cycle[0].held.name, cycle[0].acquired.name), ("d", "c"));
    assert_eq!(lockdep.stats().reports, 2);
}

#[test]
fn sites_name_the_caller_of_a_track_caller_lock_function() {
    #[track_caller]
    fn lock_site() -> Site {
        Site::caller()
    }
    let here = lock_site();
    assert_eq!(here.file(), file!());
    assert_eq!(here.line(), line!() - 2);
    assert_eq!(site!().to_string(), format!("{}:{}", file!(), line!()));
    assert_eq!(Site::new("label").to_string(), "label");
}

#[test]
fn stats_render_for_proc_lockdep_stats() {
    let mut lockdep = Lockdep::new(Limits::default());
    let [a, b] = spin_classes(&mut lockdep, &["a", "b"])[..] else {
        unreachable!()
    };
    let mut task = HeldLocks::default();
    path(
        &mut lockdep,
        &mut task,
        &[(a, site!()), (b, site!())],
        IRQS_OFF,
    );
    let stats = lockdep.stats();
    assert_eq!((stats.classes, stats.dependencies, stats.checks), (2, 1, 2));
    let text = stats.to_string();
    assert!(
        text.contains(" lock-classes:                         2 [max: 512]"),
        "{text}"
    );
    assert!(
        text.contains(" direct dependencies:                  1 [max: 4096]"),
        "{text}"
    );
    assert!(
        text.contains(" acquisitions checked:                 2"),
        "{text}"
    );
    assert!(
        text.contains("debug_locks:                          1"),
        "{text}"
    );
}
