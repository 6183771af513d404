//! The checker: lock classes, the bounded dependency graph, and the checks run at each
//! acquisition, release and possible sleep.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::report::{AtomicReason, Dependency, LockName, Report};
use crate::{HeldLock, HeldLocks, Site};

/// A registered lock class (all locks that share a name share a class, as all locks that share
/// a `lock_class_key` do in Linux).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassId(u16);

impl ClassId {
    /// The class of a lock registered after the class table filled: never checked.
    pub const UNTRACKED: ClassId = ClassId(u16::MAX);

    fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// How a lock waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// Spins; holding it makes the context atomic (it disables preemption).
    Spin,
    /// Sleeps while contended (mutex, semaphore): must not be taken in atomic context.
    Sleeping,
}

/// How a lock is being taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcquireKind {
    /// Waits until the lock is free: can deadlock, so it is checked and teaches the order.
    Blocking,
    /// A try-lock that succeeded: it never waited, so it neither deadlocks nor teaches an order
    /// into it, but locks taken while it is held depend on it.
    Try,
}

/// The execution context of an acquisition, as the kernel knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExecContext {
    /// Running a hard-interrupt handler.
    pub in_hardirq: bool,
    /// Local interrupts are disabled.
    pub irqs_disabled: bool,
    /// Preemption-disable depth, not counting spinlocks in the held-lock stack (those are
    /// known already) — e.g. a per-CPU guard.
    pub preempt_count: u32,
}

impl ExecContext {
    /// Ordinary task context: interrupts on, preemptible.
    pub const TASK: ExecContext = ExecContext {
        in_hardirq: false,
        irqs_disabled: false,
        preempt_count: 0,
    };

    /// Task context with local interrupts disabled (inside `spin_lock_irqsave`).
    pub const IRQS_DISABLED: ExecContext = ExecContext {
        in_hardirq: false,
        irqs_disabled: true,
        preempt_count: 0,
    };

    /// A hard-interrupt handler (interrupts disabled).
    pub const HARDIRQ: ExecContext = ExecContext {
        in_hardirq: true,
        irqs_disabled: true,
        preempt_count: 0,
    };
}

/// Table sizes. Memory is allocated once, in [`Lockdep::new`], and never grows; roughly
/// 100 bytes per class and 60 per dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Lock classes (at most 65 534).
    pub max_classes: usize,
    /// Distinct "A held while taking B" dependencies.
    pub max_dependencies: usize,
    /// Distinct non-cycle problems remembered so each is reported once; further new ones are
    /// counted, not reported.
    pub max_distinct_reports: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_classes: 512,
            max_dependencies: 4096,
            max_distinct_reports: 256,
        }
    }
}

/// The figures `/proc/lockdep_stats` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockdepStats {
    pub classes: usize,
    pub max_classes: usize,
    pub dependencies: usize,
    pub max_dependencies: usize,
    /// Acquisitions checked.
    pub checks: u64,
    /// `might_sleep` checks.
    pub sleep_checks: u64,
    /// Reports emitted.
    pub reports: u64,
    /// Repeats of an already-reported problem, not reported again.
    pub duplicates_suppressed: u64,
    /// New problems not reported because the table of reported problems was full.
    pub reports_dropped: u64,
    /// Deepest held-lock stack seen.
    pub max_held_depth: usize,
    /// False once a table filled up: no more checking.
    pub enabled: bool,
}

impl fmt::Display for LockdepStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            " lock-classes:                  {:>8} [max: {}]",
            self.classes, self.max_classes
        )?;
        writeln!(
            f,
            " direct dependencies:           {:>8} [max: {}]",
            self.dependencies, self.max_dependencies
        )?;
        writeln!(f, " acquisitions checked:          {:>8}", self.checks)?;
        writeln!(
            f,
            " might-sleep checks:            {:>8}",
            self.sleep_checks
        )?;
        writeln!(f, " reports:                       {:>8}", self.reports)?;
        writeln!(
            f,
            " duplicate reports suppressed:  {:>8}",
            self.duplicates_suppressed
        )?;
        writeln!(
            f,
            " reports dropped (table full):  {:>8}",
            self.reports_dropped
        )?;
        writeln!(
            f,
            " max held-lock depth:           {:>8}",
            self.max_held_depth
        )?;
        writeln!(
            f,
            " debug_locks:                   {:>8}",
            u8::from(self.enabled)
        )
    }
}

const NO_EDGE: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Class {
    name: &'static str,
    subclass: u8,
    kind: LockKind,
    first_out: u32,
    first_in: u32,
    /// First acquisition in hard-interrupt context.
    irq_safe_at: Option<Site>,
    /// First acquisition with interrupts enabled.
    irq_unsafe_at: Option<Site>,
}

impl Class {
    fn lock_name(&self) -> LockName {
        LockName {
            name: self.name,
            subclass: self.subclass,
        }
    }
}

/// "`to` was taken while holding `from`", first seen at these sites. Each edge is on two
/// intrusive lists (out of `from`, into `to`), so the graph never allocates after `new`.
#[derive(Clone, Debug)]
struct Edge {
    from: u16,
    to: u16,
    held_site: Site,
    acquired_site: Site,
    next_out: u32,
    next_in: u32,
}

/// Problems other than cycles, remembered so each is reported once. (A cycle is reported when
/// its closing edge is first added; the edge then exists, so it is never reported again.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProblemKey {
    Recursive {
        class: u16,
        held: Site,
        acquired: Site,
    },
    Sleep {
        site: Site,
        reason: AtomicReason,
    },
    IrqUsage {
        class: u16,
    },
    IrqInversion {
        safe: u16,
        unsafe_lock: u16,
    },
    Unbalanced {
        class: u16,
        site: Site,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Backward,
}

/// Breadth-first search buffers, sized for every class at construction.
#[derive(Clone, Debug)]
struct Scratch {
    queue: Vec<u16>,
    via_edge: Vec<u32>,
    visited: Vec<u32>,
    epoch: u32,
}

/// The lock-order checker (Linux lockdep's core ideas). One instance serves the whole kernel;
/// the caller serialises calls (its own internal lock, taken with interrupts disabled and
/// not itself checked).
///
/// Call [`Lockdep::acquire`] *before* waiting for a lock, so a real deadlock is reported
/// before the CPU hangs; for a try-lock, only after it succeeded. Call
/// [`Lockdep::release`] when unlocking. Nothing here panics, and checking continues after
/// every report except a full table.
#[derive(Clone, Debug)]
pub struct Lockdep {
    limits: Limits,
    enabled: bool,
    classes: Vec<Class>,
    edges: Vec<Edge>,
    reported: Vec<ProblemKey>,
    scratch: Scratch,
    checks: u64,
    sleep_checks: u64,
    reports: u64,
    duplicates_suppressed: u64,
    reports_dropped: u64,
    max_held_depth: usize,
}

impl Lockdep {
    /// A checker with tables of the given sizes, allocated now.
    pub fn new(limits: Limits) -> Lockdep {
        let limits = Limits {
            max_classes: limits.max_classes.min(usize::from(u16::MAX) - 1),
            max_dependencies: limits.max_dependencies.min(NO_EDGE as usize - 1),
            ..limits
        };
        Lockdep {
            limits,
            enabled: true,
            classes: Vec::with_capacity(limits.max_classes),
            edges: Vec::with_capacity(limits.max_dependencies),
            reported: Vec::with_capacity(limits.max_distinct_reports),
            scratch: Scratch {
                queue: Vec::with_capacity(limits.max_classes),
                via_edge: vec![NO_EDGE; limits.max_classes],
                visited: vec![0; limits.max_classes],
                epoch: 0,
            },
            checks: 0,
            sleep_checks: 0,
            reports: 0,
            duplicates_suppressed: 0,
            reports_dropped: 0,
            max_held_depth: 0,
        }
    }

    /// Whether checking is on (it turns off for good when a table fills).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The class for locks named `name` (registering the same name again returns the same
    /// class, whatever `kind` says). `Err` carries the one table-full report when the class
    /// table fills; use [`ClassId::UNTRACKED`] then. Once checking is off, every name gets
    /// `UNTRACKED`.
    pub fn register_class(
        &mut self,
        name: &'static str,
        kind: LockKind,
    ) -> Result<ClassId, Report> {
        self.class_for(name, 0, kind)
    }

    /// The class for nested locking of `class` at level `subclass` (Linux
    /// `spin_lock_nested`), e.g. taking two run-queue locks in a fixed order. Subclass 0 is
    /// `class` itself.
    pub fn subclass(&mut self, class: ClassId, subclass: u8) -> Result<ClassId, Report> {
        let Some(base) = self.classes.get(class.index()) else {
            return Ok(ClassId::UNTRACKED);
        };
        let (name, kind) = (base.name, base.kind);
        self.class_for(name, subclass, kind)
    }

    /// How reports name `class`.
    pub fn lock_name(&self, class: ClassId) -> Option<LockName> {
        self.classes.get(class.index()).map(Class::lock_name)
    }

    /// Checks and records taking a lock of `class` at `site` in `context`, then pushes it onto
    /// `held` (the stack of the task or context doing it). Returns the problems found.
    pub fn acquire(
        &mut self,
        held: &mut HeldLocks,
        class: ClassId,
        site: Site,
        context: ExecContext,
        kind: AcquireKind,
    ) -> Vec<Report> {
        let mut reports = Vec::new();
        let Some(lock) = self.classes.get(class.index()) else {
            return reports;
        };
        if !self.enabled {
            return reports;
        }
        self.checks += 1;
        let blocking = kind == AcquireKind::Blocking;
        let lock_kind = lock.kind;

        if blocking && lock_kind == LockKind::Sleeping {
            if let Some(reason) = self.atomic_reason(held, context) {
                let report = Report::SleepingWhileAtomic {
                    site,
                    sleeping_lock: self.lock_name(class),
                    reason,
                };
                self.emit(
                    &mut reports,
                    Some(ProblemKey::Sleep { site, reason }),
                    report,
                );
            }
        }

        self.record_irq_usage(class.0, site, context, &mut reports);

        if blocking {
            if let Some(previous) = held.iter().rev().find(|held| held.class == class) {
                let key = ProblemKey::Recursive {
                    class: class.0,
                    held: previous.site,
                    acquired: site,
                };
                let report = Report::RecursiveLocking {
                    lock: lock_name_of(&self.classes, class.0),
                    held_site: previous.site,
                    acquired_site: site,
                };
                self.emit(&mut reports, Some(key), report);
            }
            // New dependencies from the most recent held lock of this interrupt context, and
            // from try-locks above it (it, in turn, already depends on everything below).
            for previous in held.iter().rev() {
                if previous.in_hardirq != context.in_hardirq {
                    break;
                }
                if previous.class != class {
                    self.add_dependency(previous, class.0, site, &mut reports);
                    if !self.enabled {
                        return reports;
                    }
                }
                if !previous.try_lock {
                    break;
                }
            }
        }

        if held.is_full() {
            self.disable("held-lock stack", &mut reports);
            return reports;
        }
        held.push(HeldLock {
            class,
            site,
            try_lock: !blocking,
            in_hardirq: context.in_hardirq,
        });
        self.max_held_depth = self.max_held_depth.max(held.depth());
        reports
    }

    /// Records releasing a lock of `class` (the most recent one held, in any order). Releasing
    /// a lock that is not held is reported.
    pub fn release(&mut self, held: &mut HeldLocks, class: ClassId, site: Site) -> Option<Report> {
        if !self.enabled || class.index() >= self.classes.len() {
            return None;
        }
        if held.remove_latest(class).is_some() {
            return None;
        }
        let report = Report::UnbalancedRelease {
            lock: lock_name_of(&self.classes, class.0),
            site,
        };
        let mut reports = Vec::new();
        let key = ProblemKey::Unbalanced {
            class: class.0,
            site,
        };
        self.emit(&mut reports, Some(key), report);
        reports.pop()
    }

    /// Linux `might_sleep()`: reports when something at `site` that may sleep runs in atomic
    /// context (a spinlock held, in an interrupt handler, interrupts or preemption disabled).
    pub fn might_sleep(
        &mut self,
        held: &HeldLocks,
        context: ExecContext,
        site: Site,
    ) -> Option<Report> {
        if !self.enabled {
            return None;
        }
        self.sleep_checks += 1;
        let reason = self.atomic_reason(held, context)?;
        let report = Report::SleepingWhileAtomic {
            site,
            sleeping_lock: None,
            reason,
        };
        let mut reports = Vec::new();
        self.emit(
            &mut reports,
            Some(ProblemKey::Sleep { site, reason }),
            report,
        );
        reports.pop()
    }

    /// The figures for `/proc/lockdep_stats`.
    pub fn stats(&self) -> LockdepStats {
        LockdepStats {
            classes: self.classes.len(),
            max_classes: self.limits.max_classes,
            dependencies: self.edges.len(),
            max_dependencies: self.limits.max_dependencies,
            checks: self.checks,
            sleep_checks: self.sleep_checks,
            reports: self.reports,
            duplicates_suppressed: self.duplicates_suppressed,
            reports_dropped: self.reports_dropped,
            max_held_depth: self.max_held_depth,
            enabled: self.enabled,
        }
    }

    // ----- internals ---------------------------------------------------------------------------

    fn class_for(
        &mut self,
        name: &'static str,
        subclass: u8,
        kind: LockKind,
    ) -> Result<ClassId, Report> {
        if !self.enabled {
            return Ok(ClassId::UNTRACKED);
        }
        if let Some(index) = self
            .classes
            .iter()
            .position(|class| class.name == name && class.subclass == subclass)
        {
            // The table holds at most 65 534 classes, so the index fits.
            return Ok(ClassId(index as u16));
        }
        if self.classes.len() >= self.limits.max_classes {
            let mut reports = Vec::new();
            self.disable("lock class", &mut reports);
            return Err(reports.pop().unwrap_or(Report::TableFull {
                table: "lock class",
            }));
        }
        let id = ClassId(self.classes.len() as u16);
        self.classes.push(Class {
            name,
            subclass,
            kind,
            first_out: NO_EDGE,
            first_in: NO_EDGE,
            irq_safe_at: None,
            irq_unsafe_at: None,
        });
        Ok(id)
    }

    fn disable(&mut self, table: &'static str, reports: &mut Vec<Report>) {
        if self.enabled {
            self.enabled = false;
            self.reports += 1;
            reports.push(Report::TableFull { table });
        }
    }

    /// Pushes `report` unless `key` was reported before (or the reported-problems table is
    /// full, in which case it is counted as dropped).
    fn emit(&mut self, reports: &mut Vec<Report>, key: Option<ProblemKey>, report: Report) {
        if let Some(key) = key {
            if self.reported.contains(&key) {
                self.duplicates_suppressed += 1;
                return;
            }
            if self.reported.len() >= self.limits.max_distinct_reports {
                self.reports_dropped += 1;
                return;
            }
            self.reported.push(key);
        }
        self.reports += 1;
        reports.push(report);
    }

    fn atomic_reason(&self, held: &HeldLocks, context: ExecContext) -> Option<AtomicReason> {
        let spinlock = held.iter().rev().find(|held| {
            self.classes
                .get(held.class.index())
                .is_some_and(|class| class.kind == LockKind::Spin)
        });
        if let Some(spinlock) = spinlock {
            return Some(AtomicReason::HoldingSpinlock {
                lock: lock_name_of(&self.classes, spinlock.class.0),
                site: spinlock.site,
            });
        }
        if context.in_hardirq {
            Some(AtomicReason::InHardIrq)
        } else if context.irqs_disabled {
            Some(AtomicReason::InterruptsDisabled)
        } else if context.preempt_count > 0 {
            Some(AtomicReason::PreemptionDisabled {
                count: context.preempt_count,
            })
        } else {
            None
        }
    }

    /// Learns whether the class is IRQ-safe / IRQ-unsafe and checks the new usage against the
    /// class itself and against every class connected to it in the graph.
    fn record_irq_usage(
        &mut self,
        class: u16,
        site: Site,
        context: ExecContext,
        reports: &mut Vec<Report>,
    ) {
        let Some(record) = self.classes.get_mut(usize::from(class)) else {
            return;
        };
        let (newly_safe, newly_unsafe) = if context.in_hardirq {
            (record.irq_safe_at.is_none(), false)
        } else if !context.irqs_disabled {
            (false, record.irq_unsafe_at.is_none())
        } else {
            (false, false)
        };
        if newly_safe {
            record.irq_safe_at = Some(site);
        }
        if newly_unsafe {
            record.irq_unsafe_at = Some(site);
        }
        if !(newly_safe || newly_unsafe) {
            return;
        }
        if let (Some(in_irq_site), Some(irqs_enabled_site)) =
            (record.irq_safe_at, record.irq_unsafe_at)
        {
            let report = Report::InconsistentIrqUsage {
                lock: record.lock_name(),
                in_irq_site,
                irqs_enabled_site,
            };
            self.emit(reports, Some(ProblemKey::IrqUsage { class }), report);
            return;
        }
        if newly_safe {
            // Does this lock lead to a lock taken with interrupts enabled?
            let found = search(
                &self.classes,
                &self.edges,
                &mut self.scratch,
                class,
                Direction::Forward,
                |index, other| index != class && other.irq_unsafe_at.is_some(),
            );
            if let Some(unsafe_lock) = found {
                let chain = path_edges(
                    &self.edges,
                    &self.scratch,
                    class,
                    unsafe_lock,
                    Direction::Forward,
                );
                self.report_irq_inversion(class, unsafe_lock, &chain, None, &[], reports);
            }
        } else {
            // Does a lock taken in an interrupt handler lead to this one?
            let found = search(
                &self.classes,
                &self.edges,
                &mut self.scratch,
                class,
                Direction::Backward,
                |index, other| index != class && other.irq_safe_at.is_some(),
            );
            if let Some(safe) = found {
                let chain =
                    path_edges(&self.edges, &self.scratch, class, safe, Direction::Backward);
                self.report_irq_inversion(safe, class, &chain, None, &[], reports);
            }
        }
    }

    /// Adds "`to` taken while holding `previous`" unless known, reporting a cycle it closes and
    /// an IRQ-safe → IRQ-unsafe chain it creates.
    fn add_dependency(
        &mut self,
        previous: &HeldLock,
        to: u16,
        site: Site,
        reports: &mut Vec<Report>,
    ) {
        let from = previous.class.0;
        if usize::from(from) >= self.classes.len() || usize::from(to) >= self.classes.len() {
            return;
        }
        let mut edge = self.classes[usize::from(from)].first_out;
        while edge != NO_EDGE {
            let existing = &self.edges[edge as usize];
            if existing.to == to {
                return;
            }
            edge = existing.next_out;
        }
        let new_dependency = Dependency {
            held: lock_name_of(&self.classes, from),
            held_site: previous.site,
            acquired: lock_name_of(&self.classes, to),
            acquired_site: site,
        };

        // (a) A path back from `to` to `from` plus this edge is a cycle.
        let closes_cycle = search(
            &self.classes,
            &self.edges,
            &mut self.scratch,
            to,
            Direction::Forward,
            |index, _| index == from,
        );
        if closes_cycle.is_some() {
            let back = path_edges(&self.edges, &self.scratch, to, from, Direction::Forward);
            let mut cycle = Vec::with_capacity(back.len() + 1);
            cycle.push(new_dependency);
            cycle.extend(
                back.iter()
                    .map(|&edge| dependency_of(&self.classes, &self.edges, edge)),
            );
            self.emit(reports, None, Report::CircularDependency { cycle });
        }

        // (d) An IRQ-safe lock at or before `from` now reaches an IRQ-unsafe lock at or after
        // `to`.
        let unsafe_after = search(
            &self.classes,
            &self.edges,
            &mut self.scratch,
            to,
            Direction::Forward,
            |_, other| other.irq_unsafe_at.is_some(),
        );
        if let Some(unsafe_lock) = unsafe_after {
            let after = path_edges(
                &self.edges,
                &self.scratch,
                to,
                unsafe_lock,
                Direction::Forward,
            );
            let safe_before = search(
                &self.classes,
                &self.edges,
                &mut self.scratch,
                from,
                Direction::Backward,
                |_, other| other.irq_safe_at.is_some(),
            );
            if let Some(safe) = safe_before.filter(|&safe| safe != unsafe_lock) {
                let before =
                    path_edges(&self.edges, &self.scratch, from, safe, Direction::Backward);
                self.report_irq_inversion(
                    safe,
                    unsafe_lock,
                    &before,
                    Some(new_dependency),
                    &after,
                    reports,
                );
            }
        }

        if self.edges.len() >= self.limits.max_dependencies {
            self.disable("lock dependency", reports);
            return;
        }
        let index = self.edges.len() as u32;
        let (from_index, to_index) = (usize::from(from), usize::from(to));
        self.edges.push(Edge {
            from,
            to,
            held_site: previous.site,
            acquired_site: site,
            next_out: self.classes[from_index].first_out,
            next_in: self.classes[to_index].first_in,
        });
        self.classes[from_index].first_out = index;
        self.classes[to_index].first_in = index;
    }

    /// Reports the chain `before` + `middle` + `after` from IRQ-safe `safe` to IRQ-unsafe
    /// `unsafe_lock`.
    fn report_irq_inversion(
        &mut self,
        safe: u16,
        unsafe_lock: u16,
        before: &[u32],
        middle: Option<Dependency>,
        after: &[u32],
        reports: &mut Vec<Report>,
    ) {
        let (Some(safe_class), Some(unsafe_class)) = (
            self.classes.get(usize::from(safe)),
            self.classes.get(usize::from(unsafe_lock)),
        ) else {
            return;
        };
        let (Some(safe_in_irq_site), Some(unsafe_irqs_enabled_site)) =
            (safe_class.irq_safe_at, unsafe_class.irq_unsafe_at)
        else {
            return;
        };
        let mut chain: Vec<Dependency> = before
            .iter()
            .map(|&edge| dependency_of(&self.classes, &self.edges, edge))
            .collect();
        chain.extend(middle);
        chain.extend(
            after
                .iter()
                .map(|&edge| dependency_of(&self.classes, &self.edges, edge)),
        );
        let report = Report::IrqLockInversion {
            safe: safe_class.lock_name(),
            safe_in_irq_site,
            unsafe_lock: unsafe_class.lock_name(),
            unsafe_irqs_enabled_site,
            chain,
        };
        self.emit(
            reports,
            Some(ProblemKey::IrqInversion { safe, unsafe_lock }),
            report,
        );
    }
}

fn lock_name_of(classes: &[Class], class: u16) -> LockName {
    classes.get(usize::from(class)).map_or(
        LockName {
            name: "<untracked>",
            subclass: 0,
        },
        Class::lock_name,
    )
}

fn dependency_of(classes: &[Class], edges: &[Edge], edge: u32) -> Dependency {
    let edge = &edges[edge as usize];
    Dependency {
        held: lock_name_of(classes, edge.from),
        held_site: edge.held_site,
        acquired: lock_name_of(classes, edge.to),
        acquired_site: edge.acquired_site,
    }
}

/// Breadth-first search from `start` along edges in `direction` for the first class (nearest,
/// so reported chains are shortest) that satisfies `goal`. Leaves in `scratch.via_edge` the
/// edge each visited class was reached by, for [`path_edges`].
fn search(
    classes: &[Class],
    edges: &[Edge],
    scratch: &mut Scratch,
    start: u16,
    direction: Direction,
    goal: impl Fn(u16, &Class) -> bool,
) -> Option<u16> {
    scratch.epoch = scratch.epoch.wrapping_add(1);
    if scratch.epoch == 0 {
        scratch.visited.fill(0);
        scratch.epoch = 1;
    }
    let epoch = scratch.epoch;
    scratch.queue.clear();
    let start_index = usize::from(start);
    if start_index >= classes.len() || start_index >= scratch.visited.len() {
        return None;
    }
    scratch.visited[start_index] = epoch;
    scratch.via_edge[start_index] = NO_EDGE;
    scratch.queue.push(start);
    let mut head = 0;
    while let Some(&node) = scratch.queue.get(head) {
        head += 1;
        let class = &classes[usize::from(node)];
        if goal(node, class) {
            return Some(node);
        }
        let mut edge_index = match direction {
            Direction::Forward => class.first_out,
            Direction::Backward => class.first_in,
        };
        while let Some(edge) = edges.get(edge_index as usize) {
            let (next, following) = match direction {
                Direction::Forward => (edge.to, edge.next_out),
                Direction::Backward => (edge.from, edge.next_in),
            };
            let next_index = usize::from(next);
            if scratch.visited[next_index] != epoch {
                scratch.visited[next_index] = epoch;
                scratch.via_edge[next_index] = edge_index;
                scratch.queue.push(next);
            }
            edge_index = following;
        }
    }
    None
}

/// The edges of the path the last [`search`] from `start` found to `found`, in graph order
/// (for a backward search: from `found` to `start`).
fn path_edges(
    edges: &[Edge],
    scratch: &Scratch,
    start: u16,
    found: u16,
    direction: Direction,
) -> Vec<u32> {
    let mut path = Vec::new();
    let mut node = found;
    while node != start {
        let edge_index = scratch.via_edge[usize::from(node)];
        let Some(edge) = edges.get(edge_index as usize) else {
            break;
        };
        path.push(edge_index);
        node = match direction {
            Direction::Forward => edge.from,
            Direction::Backward => edge.to,
        };
    }
    if direction == Direction::Forward {
        path.reverse();
    }
    path
}
