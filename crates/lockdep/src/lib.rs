//! Lull's lock-order checker: the logic of Linux lockdep, as a value the kernel feeds.
//!
//! Locks belong to *classes* (one per static name, as all locks initialised at one place share
//! a `lock_class_key` in Linux). Each time a lock is taken while others are held, the checker
//! learns the dependency "held → taken", with the source site of both acquisitions. It then
//! reports, naming every lock and site involved:
//! - a new dependency that closes a **cycle** (two locks, or a chain of three or more, taken
//!   in opposite orders on different paths: an ABBA deadlock waiting to happen);
//! - **recursive** locking of one class;
//! - **sleeping while atomic** (a sleeping lock, or `might_sleep`, under a spinlock, in an
//!   interrupt handler, or with interrupts or preemption disabled);
//! - **IRQ-safety** problems: one lock taken both in a hard-interrupt handler and with
//!   interrupts enabled, or a chain from an IRQ-safe lock to an IRQ-unsafe one.
//!
//! The problem need not happen to be found: one run through each path is enough. Reports are
//! values (render them with `Display`); each distinct problem is reported once and checking
//! goes on. Memory is bounded: tables are sized once, and a full table turns checking off with
//! one "table full, checking disabled" report.
//!
//! ```
//! use lull_lockdep::{site, AcquireKind, ExecContext, HeldLocks, LockKind, Lockdep, Report};
//!
//! let mut lockdep = Lockdep::new(Default::default());
//! let a = lockdep.register_class("a", LockKind::Spin).unwrap();
//! let b = lockdep.register_class("b", LockKind::Spin).unwrap();
//! let mut task = HeldLocks::default();
//! let ctx = ExecContext::IRQS_DISABLED;
//!
//! // One path takes a then b...
//! assert!(lockdep.acquire(&mut task, a, site!(), ctx, AcquireKind::Blocking).is_empty());
//! assert!(lockdep.acquire(&mut task, b, site!(), ctx, AcquireKind::Blocking).is_empty());
//! lockdep.release(&mut task, b, site!());
//! lockdep.release(&mut task, a, site!());
//!
//! // ...another takes b then a: reported, though it did not deadlock this time.
//! lockdep.acquire(&mut task, b, site!(), ctx, AcquireKind::Blocking);
//! let reports = lockdep.acquire(&mut task, a, site!(), ctx, AcquireKind::Blocking);
//! assert!(matches!(&reports[..], [Report::CircularDependency { cycle }] if cycle.len() == 2));
//! assert!(reports[0].to_string().starts_with("lockdep: possible circular locking dependency"));
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod checker;
mod held;
mod report;
mod site;

pub use checker::{AcquireKind, ClassId, ExecContext, Limits, LockKind, Lockdep, LockdepStats};
pub use held::{HeldLock, HeldLocks};
pub use report::{AtomicReason, Dependency, LockName, Report};
pub use site::Site;
