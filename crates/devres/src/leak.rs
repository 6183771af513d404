//! Leak accounting for tests: live resources per kind, counted where they are acquired and
//! released rather than where they are listed.
//!
//! The list's own [`count_by_kind`](crate::DevresList::count_by_kind) cannot see a resource that
//! never reached the list (the classic leak on a probe's error path); a tracker can, because the
//! fake or real resource reports to it when acquired and when released.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::resource::{ManagedResource, ResourceInfo, ResourceKind};

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    acquired: u64,
    released: u64,
}

/// Shared counters of acquisitions and releases per kind; clones count into the same totals.
#[derive(Clone, Debug, Default)]
pub struct LeakTracker {
    counts: Arc<lull_spinlock::SpinLock<BTreeMap<ResourceKind, Counts>>>,
}

impl LeakTracker {
    /// A tracker with nothing counted.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one acquisition of `kind`.
    pub fn acquired(&self, kind: ResourceKind) {
        self.counts.lock().entry(kind).or_default().acquired += 1;
    }

    /// Counts one release of `kind`.
    pub fn released(&self, kind: ResourceKind) {
        self.counts.lock().entry(kind).or_default().released += 1;
    }

    /// Live resources of `kind`: acquired and not yet released.
    pub fn live(&self, kind: ResourceKind) -> usize {
        self.counts.lock().get(&kind).map_or(0, |counts| {
            usize::try_from(counts.acquired.saturating_sub(counts.released)).unwrap_or(usize::MAX)
        })
    }

    /// Kinds with live resources and how many, in kind order; empty when nothing leaked.
    pub fn live_by_kind(&self) -> Vec<(ResourceKind, usize)> {
        let counts = self.counts.lock();
        counts
            .keys()
            .map(|&kind| (kind, counts[&kind]))
            .filter(|(_, c)| c.acquired > c.released)
            .map(|(kind, c)| {
                let live = usize::try_from(c.acquired - c.released).unwrap_or(usize::MAX);
                (kind, live)
            })
            .collect()
    }

    /// All live resources, of every kind.
    pub fn live_total(&self) -> usize {
        self.live_by_kind().iter().map(|(_, live)| live).sum()
    }

    /// Kinds released more often than acquired: a double release.
    pub fn over_released(&self) -> Vec<ResourceKind> {
        self.counts
            .lock()
            .iter()
            .filter(|(_, c)| c.released > c.acquired)
            .map(|(&kind, _)| kind)
            .collect()
    }

    /// Wraps a resource so that it counts as acquired now and as released when the list
    /// releases it.
    pub fn track<R: ManagedResource>(&self, resource: R) -> Tracked<R> {
        self.acquired(resource.describe().kind);
        Tracked {
            tracker: self.clone(),
            resource,
        }
    }
}

/// A resource counted by a [`LeakTracker`]; see [`LeakTracker::track`].
pub struct Tracked<R> {
    tracker: LeakTracker,
    resource: R,
}

impl<R: ManagedResource> ManagedResource for Tracked<R> {
    fn describe(&self) -> ResourceInfo {
        self.resource.describe()
    }

    fn release(self: Box<Self>) {
        let this = *self;
        let kind = this.resource.describe().kind;
        Box::new(this.resource).release();
        this.tracker.released(kind);
    }
}
