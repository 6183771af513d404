//! Measures what the checker adds to a lock operation on the host: an acquire/release pair
//! on a known path (the common case), and learning a new dependency in a large graph
//! (host only).
//!
//! Run with `cargo run --release -p lull-lockdep --example check_cost`.

use std::hint::black_box;
use std::time::Instant;

use lull_lockdep::{AcquireKind, ExecContext, HeldLocks, Limits, LockKind, Lockdep, Site};

const NAMES: usize = 500;

fn main() {
    let names: Vec<&'static str> = (0..NAMES)
        .map(|i| &*Box::leak(format!("lock{i}").into_boxed_str()))
        .collect();
    let limits = Limits {
        max_classes: NAMES,
        max_dependencies: 4 * NAMES,
        ..Limits::default()
    };
    let mut lockdep = Lockdep::new(limits);
    let classes: Vec<_> = names
        .iter()
        .map(|name| lockdep.register_class(name, LockKind::Spin).expect("room"))
        .collect();
    let context = ExecContext::IRQS_DISABLED;
    let site = Site::new("bench");
    let mut held = HeldLocks::default();

    // A chain lock0 → lock1 → … plus some skips: a deep graph for searches.
    let start = Instant::now();
    let mut learned = 0;
    for i in 0..NAMES - 1 {
        for step in [1, 7] {
            if i + step < NAMES {
                lockdep.acquire(&mut held, classes[i], site, context, AcquireKind::Blocking);
                let reports = lockdep.acquire(
                    &mut held,
                    classes[i + step],
                    site,
                    context,
                    AcquireKind::Blocking,
                );
                assert!(reports.is_empty());
                lockdep.release(&mut held, classes[i + step], site);
                lockdep.release(&mut held, classes[i], site);
                learned += 1;
            }
        }
    }
    let learn_ns = start.elapsed().as_nanos() as f64 / learned as f64;

    // The hot path: a known pair, three deep.
    const ROUNDS: u32 = 1_000_000;
    let start = Instant::now();
    for _ in 0..ROUNDS {
        for &class in &classes[10..13] {
            black_box(lockdep.acquire(&mut held, class, site, context, AcquireKind::Blocking));
        }
        for &class in classes[10..13].iter().rev() {
            black_box(lockdep.release(&mut held, class, site));
        }
    }
    let pair_ns = start.elapsed().as_nanos() as f64 / (3.0 * ROUNDS as f64);

    // Closing a cycle across the whole chain: the worst-case search, reported once.
    let start = Instant::now();
    lockdep.acquire(
        &mut held,
        classes[NAMES - 1],
        site,
        context,
        AcquireKind::Blocking,
    );
    let reports = lockdep.acquire(&mut held, classes[0], site, context, AcquireKind::Blocking);
    let cycle_us = start.elapsed().as_secs_f64() * 1e6;
    let cycle_len = match &reports[..] {
        [lull_lockdep::Report::CircularDependency { cycle }] => cycle.len(),
        other => panic!("expected a cycle, got {other:?}"),
    };

    let stats = lockdep.stats();
    println!(
        "{} classes, {} dependencies: two acquire+release pairs that learn a dependency {learn_ns:.0} ns, \
         acquire+release on a known path {pair_ns:.0} ns, find a {cycle_len}-lock cycle {cycle_us:.0} us",
        stats.classes, stats.dependencies
    );
}
