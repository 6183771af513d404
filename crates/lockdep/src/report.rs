//! Problem reports: values that render as text naming every lock and acquisition site involved.

use alloc::vec::Vec;
use core::fmt;

use crate::Site;

/// A lock class as reports name it: its name, and its subclass when nested locking of one
/// class is annotated (`rq/1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockName {
    pub name: &'static str,
    pub subclass: u8,
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subclass == 0 {
            write!(f, "\"{}\"", self.name)
        } else {
            write!(f, "\"{}/{}\"", self.name, self.subclass)
        }
    }
}

/// One "`acquired` was taken while holding `held`" dependency, with both acquisition sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dependency {
    pub held: LockName,
    /// Where `held` had been taken.
    pub held_site: Site,
    pub acquired: LockName,
    /// Where `acquired` was taken while `held` was held.
    pub acquired_site: Site,
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} taken at {} while holding {} taken at {}",
            self.acquired, self.acquired_site, self.held, self.held_site
        )
    }
}

/// Why the current context cannot sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomicReason {
    /// A spinning lock is held.
    HoldingSpinlock { lock: LockName, site: Site },
    /// Running a hard-interrupt handler.
    InHardIrq,
    /// Interrupts are disabled.
    InterruptsDisabled,
    /// Preemption is disabled this many levels deep.
    PreemptionDisabled { count: u32 },
}

impl fmt::Display for AtomicReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AtomicReason::HoldingSpinlock { lock, site } => {
                write!(f, "spinlock {lock} is held, taken at {site}")
            }
            AtomicReason::InHardIrq => f.write_str("in a hard-interrupt handler"),
            AtomicReason::InterruptsDisabled => f.write_str("interrupts are disabled"),
            AtomicReason::PreemptionDisabled { count } => {
                write!(f, "preemption is disabled (count {count})")
            }
        }
    }
}

/// A problem the checker found. Each distinct problem is reported once; the checker keeps
/// working after a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Taking a lock closed a cycle in the lock order: the first dependency is the new one,
    /// the rest are the existing chain that leads back to its held lock. Two (or more) CPUs
    /// running these paths at once can deadlock.
    CircularDependency { cycle: Vec<Dependency> },
    /// A lock was taken while a lock of the same class was already held (self-deadlock for a
    /// spinlock). Nested locking of one class needs a subclass annotation.
    RecursiveLocking {
        lock: LockName,
        held_site: Site,
        acquired_site: Site,
    },
    /// Something that may sleep (a sleeping lock, or an explicit `might_sleep`) ran in atomic
    /// context.
    SleepingWhileAtomic {
        site: Site,
        /// The sleeping lock being taken, when that is what may sleep.
        sleeping_lock: Option<LockName>,
        reason: AtomicReason,
    },
    /// One lock is taken both in a hard-interrupt handler and elsewhere with interrupts
    /// enabled: the interrupt can arrive while this CPU holds it, and spin forever.
    InconsistentIrqUsage {
        lock: LockName,
        in_irq_site: Site,
        irqs_enabled_site: Site,
    },
    /// An interrupt-safe lock (taken in hard-interrupt context) is held while taking, directly
    /// or through a chain, an interrupt-unsafe lock (taken with interrupts enabled): a CPU
    /// holding the unsafe lock can be interrupted by a handler that waits for the safe one
    /// while another CPU holds the safe one and waits for the unsafe one.
    IrqLockInversion {
        safe: LockName,
        /// Where `safe` was taken in hard-interrupt context.
        safe_in_irq_site: Site,
        unsafe_lock: LockName,
        /// Where `unsafe_lock` was taken with interrupts enabled.
        unsafe_irqs_enabled_site: Site,
        /// The dependency chain from `safe` to `unsafe_lock`.
        chain: Vec<Dependency>,
    },
    /// A lock was released that the stack does not hold.
    UnbalancedRelease { lock: LockName, site: Site },
    /// A fixed-size table is full: the checker stops checking (and reports nothing more).
    TableFull { table: &'static str },
}

impl Report {
    /// A short title, as the first line of the rendered report.
    pub fn title(&self) -> &'static str {
        match self {
            Report::CircularDependency { .. } => "possible circular locking dependency detected",
            Report::RecursiveLocking { .. } => "possible recursive locking detected",
            Report::SleepingWhileAtomic { .. } => "sleeping function called from atomic context",
            Report::InconsistentIrqUsage { .. } => "inconsistent lock state (hard IRQ)",
            Report::IrqLockInversion { .. } => "hard-IRQ-safe to hard-IRQ-unsafe lock order",
            Report::UnbalancedRelease { .. } => "bad unlock balance detected",
            Report::TableFull { .. } => "table full, checking disabled",
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lockdep: {}", self.title())?;
        match self {
            Report::CircularDependency { cycle } => {
                write!(f, " ({} locks):", cycle.len())?;
                if let Some(first) = cycle.first() {
                    write!(f, "\n  order: {}", first.held)?;
                    for dependency in cycle {
                        write!(f, " -> {}", dependency.acquired)?;
                    }
                }
                for (index, dependency) in cycle.iter().enumerate() {
                    let label = if index == 0 { "new" } else { "old" };
                    write!(f, "\n  {label}: {dependency}")?;
                }
            }
            Report::RecursiveLocking {
                lock,
                held_site,
                acquired_site,
            } => write!(
                f,
                ":\n  {lock} taken at {acquired_site}\n  while already held, taken at {held_site}"
            )?,
            Report::SleepingWhileAtomic {
                site,
                sleeping_lock,
                reason,
            } => {
                match sleeping_lock {
                    Some(lock) => write!(f, ":\n  sleeping lock {lock} taken at {site}")?,
                    None => write!(f, ":\n  may sleep at {site}")?,
                }
                write!(f, "\n  but {reason}")?;
            }
            Report::InconsistentIrqUsage {
                lock,
                in_irq_site,
                irqs_enabled_site,
            } => write!(
                f,
                ":\n  {lock} taken in hard-IRQ context at {in_irq_site}\n  and with interrupts enabled at {irqs_enabled_site}"
            )?,
            Report::IrqLockInversion {
                safe,
                safe_in_irq_site,
                unsafe_lock,
                unsafe_irqs_enabled_site,
                chain,
            } => {
                write!(
                    f,
                    ":\n  {safe} is taken in hard-IRQ context at {safe_in_irq_site}\n  {unsafe_lock} is taken with interrupts enabled at {unsafe_irqs_enabled_site}"
                )?;
                for dependency in chain {
                    write!(f, "\n  chain: {dependency}")?;
                }
            }
            Report::UnbalancedRelease { lock, site } => {
                write!(f, ":\n  {lock} released at {site} but not held")?
            }
            Report::TableFull { table } => write!(f, ": the {table} table is full")?,
        }
        Ok(())
    }
}
