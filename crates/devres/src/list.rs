//! The per-device list of managed resources, with group markers (Linux `drivers/base/devres.c`).
//!
//! Resources and group markers share one list in acquisition order. Releasing walks it backwards,
//! so a resource is released before everything it was acquired after (an IRQ handler is freed
//! before the MMIO mapping it reads). A group is a pair of markers: releasing it releases what lies
//! between them, which includes groups opened and closed inside it.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::fault::FaultInjector;
use crate::resource::{ManagedResource, Owned, ResourceInfo, ResourceKind, WithRelease};
use crate::revocable::Revocable;

/// Identifies one resource in its list, for [`DevresList::remove`] and
/// [`DevresList::remove_action`] (Linux matches actions by function and data pointer instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId(u64);

/// Identifies one group, as returned by [`DevresList::open_group`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(u64);

/// Ids come from one counter for all lists, so an id from another device's list never names
/// something in this one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Misuse of the group or action API; the list is unchanged when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevresError {
    /// No such group in this list (never opened here, removed, or released).
    UnknownGroup(GroupId),
    /// `close_group` on a group that is already closed.
    GroupAlreadyClosed(GroupId),
    /// No such resource in this list (never added here, or already released or removed).
    UnknownResource(ResourceId),
}

impl fmt::Display for DevresError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownGroup(id) => write!(f, "devres group {} is not in this list", id.0),
            Self::GroupAlreadyClosed(id) => write!(f, "devres group {} is already closed", id.0),
            Self::UnknownResource(id) => write!(f, "devres resource {} is not in this list", id.0),
        }
    }
}

impl core::error::Error for DevresError {}

/// Why a managed acquisition through [`DevresList::acquire`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireError<E> {
    /// The fault injector failed this acquisition on purpose; nothing was acquired.
    Injected,
    /// The acquisition itself failed.
    Failed(E),
}

impl<E: fmt::Display> fmt::Display for AcquireError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Injected => f.write_str("managed acquisition failed by fault injection"),
            Self::Failed(error) => write!(f, "managed acquisition failed: {error}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for AcquireError<E> {}

/// A registered resource.
struct Entry {
    id: ResourceId,
    resource: Box<dyn ManagedResource>,
}

/// One element of the list: a resource or a group marker.
enum Node {
    Resource(Entry),
    GroupOpen(GroupId),
    GroupClose(GroupId),
}

/// The managed resources of one device, released last-acquired-first.
///
/// The driver core releases the whole list when a probe fails and when the driver unbinds
/// ([`release_all`](Self::release_all)); a driver may also release a group of its own. Dropping
/// the list releases whatever is left, in the same order.
///
/// Context: the list is plain data; the kernel keeps it behind the device's lock. To run release
/// functions without that lock held (as Linux does), detach them with
/// [`take_all`](Self::take_all) or [`take_group`](Self::take_group) under the lock and call
/// [`ReleaseBatch::release`] after dropping it.
pub struct DevresList {
    nodes: Vec<Node>,
    injector: FaultInjector,
    /// Called between attempts while a revocable resource still has accessors at release.
    revoke_wait: fn(),
}

impl Default for DevresList {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DevresList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for node in &self.nodes {
            match node {
                Node::Resource(entry) => list.entry(&format_args!("{}", entry.resource.describe())),
                Node::GroupOpen(id) => list.entry(&format_args!("group {} {{", id.0)),
                Node::GroupClose(id) => list.entry(&format_args!("}} group {}", id.0)),
            };
        }
        list.finish()
    }
}

impl DevresList {
    /// An empty list. Revocable resources still in use at release are waited for with
    /// `core::hint::spin_loop`; the kernel sets its own wait with
    /// [`set_revoke_wait`](Self::set_revoke_wait).
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            injector: FaultInjector::new(),
            revoke_wait: core::hint::spin_loop,
        }
    }

    /// Sets what release does while a revoked resource still has accessors (a yield or sleep in
    /// the kernel); it is called repeatedly until they are gone.
    pub fn set_revoke_wait(&mut self, wait: fn()) {
        self.revoke_wait = wait;
    }

    /// Registers a resource; it will be released with the list or its group.
    pub fn add(&mut self, resource: impl ManagedResource + 'static) -> ResourceId {
        self.add_boxed(Box::new(resource))
    }

    /// Registers an already boxed resource.
    pub fn add_boxed(&mut self, resource: Box<dyn ManagedResource>) -> ResourceId {
        let id = ResourceId(next_id());
        self.nodes.push(Node::Resource(Entry { id, resource }));
        id
    }

    /// Registers a value released by dropping it (a handle whose `Drop` gives the resource back).
    pub fn add_owned<T: Send + 'static>(&mut self, info: ResourceInfo, value: T) -> ResourceId {
        self.add(Owned { info, value })
    }

    /// Registers arbitrary data with a release function that receives it back at release, as
    /// Linux's `devres_alloc` + `devres_add`.
    pub fn add_with_release<T, F>(&mut self, info: ResourceInfo, value: T, release: F) -> ResourceId
    where
        T: Send + 'static,
        F: FnOnce(T) + Send + 'static,
    {
        self.add(WithRelease {
            info,
            value,
            release,
        })
    }

    /// Registers an action to run at release (`devm_add_action`), listed as kind `action` with
    /// `description` (conventionally the function's name).
    pub fn add_action(
        &mut self,
        description: impl Into<String>,
        action: impl FnOnce() + Send + 'static,
    ) -> ResourceId {
        self.add_with_release(
            ResourceInfo::new(ResourceKind::Action, description),
            (),
            move |()| action(),
        )
    }

    /// Registers `value` behind a [`Revocable`] and returns the handle the driver keeps
    /// (Rust-for-Linux's `Devres::new`). Releasing the entry revokes the handle, waits for its
    /// accessors with the list's revoke wait, and drops the value.
    pub fn add_revocable<T: Send + Sync + 'static>(
        &mut self,
        info: ResourceInfo,
        value: T,
    ) -> Arc<Revocable<T>> {
        let handle = Arc::new(Revocable::new(value));
        self.add(RevokeOnRelease {
            info,
            handle: handle.clone(),
            wait: self.revoke_wait,
        });
        handle
    }

    /// Removes an action without running it (`devm_remove_action`); the closure and what it
    /// captured are dropped. Works for any resource id, but forgetting a resource that is not an
    /// action leaks it: use [`remove`](Self::remove) for those.
    pub fn remove_action(&mut self, id: ResourceId) -> Result<(), DevresError> {
        self.remove(id).map(drop)
    }

    /// Removes an action and runs it now (`devm_release_action`).
    pub fn release_action(&mut self, id: ResourceId) -> Result<(), DevresError> {
        self.remove(id).map(ManagedResource::release)
    }

    /// Takes a resource back from the list unreleased (`devres_remove`): the caller now owns
    /// releasing it.
    pub fn remove(&mut self, id: ResourceId) -> Result<Box<dyn ManagedResource>, DevresError> {
        let index = self
            .nodes
            .iter()
            .position(|node| matches!(node, Node::Resource(entry) if entry.id == id))
            .ok_or(DevresError::UnknownResource(id))?;
        match self.nodes.remove(index) {
            Node::Resource(entry) => Ok(entry.resource),
            Node::GroupOpen(_) | Node::GroupClose(_) => {
                unreachable!("position matched a resource node")
            }
        }
    }

    /// Opens a group: resources added from now until [`close_group`](Self::close_group) belong to
    /// it (and to every enclosing group). `devres_open_group`.
    pub fn open_group(&mut self) -> GroupId {
        let id = GroupId(next_id());
        self.nodes.push(Node::GroupOpen(id));
        id
    }

    /// Closes a group: later resources are not in it. `devres_close_group`.
    ///
    /// Groups need not close in the order they were opened; a group's members are simply what
    /// was added between its two markers.
    pub fn close_group(&mut self, id: GroupId) -> Result<(), DevresError> {
        self.open_marker(id)?;
        if self.close_marker(id).is_some() {
            return Err(DevresError::GroupAlreadyClosed(id));
        }
        self.nodes.push(Node::GroupClose(id));
        Ok(())
    }

    /// Forgets a group's markers and keeps its resources, which now belong to the enclosing group
    /// or to the device. `devres_remove_group`.
    pub fn remove_group(&mut self, id: GroupId) -> Result<(), DevresError> {
        self.open_marker(id)?;
        self.nodes
            .retain(|node| !matches!(node, Node::GroupOpen(g) | Node::GroupClose(g) if *g == id));
        Ok(())
    }

    /// Releases the group's resources, last acquired first, and forgets the group
    /// (`devres_release_group`). Returns how many resources were released.
    ///
    /// A closed group releases what lies between its markers; a group still open releases
    /// everything added since it was opened. Groups wholly inside (both markers, or the opening
    /// marker of a group still open) go with it; a group that straddles its boundary keeps its
    /// markers, and its other members stay.
    pub fn release_group(&mut self, id: GroupId) -> Result<usize, DevresError> {
        Ok(self.take_group(id)?.release())
    }

    /// Detaches the group's resources for release, as `release_group` but without running the
    /// release functions yet.
    pub fn take_group(&mut self, id: GroupId) -> Result<ReleaseBatch, DevresError> {
        let start = self.open_marker(id)?;
        let end = match self.close_marker(id) {
            Some(close) => close + 1,
            None => self.nodes.len(),
        };
        Ok(self.take_range(start, end))
    }

    /// Releases every resource, last acquired first, and forgets every group
    /// (`devres_release_all`): on driver unbind and on probe failure. Returns how many resources
    /// were released.
    pub fn release_all(&mut self) -> usize {
        self.take_all().release()
    }

    /// Detaches every resource for release, as `release_all` but without running the release
    /// functions yet.
    pub fn take_all(&mut self) -> ReleaseBatch {
        let entries = core::mem::take(&mut self.nodes)
            .into_iter()
            .filter_map(|node| match node {
                Node::Resource(entry) => Some(entry),
                Node::GroupOpen(_) | Node::GroupClose(_) => None,
            })
            .collect();
        ReleaseBatch { entries }
    }

    /// Whether the list holds no resources (group markers do not count).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many resources the list holds.
    pub fn len(&self) -> usize {
        self.entries().count()
    }

    /// The resources in acquisition order, with their descriptions: the per-device listing.
    pub fn resources(&self) -> impl Iterator<Item = (ResourceId, ResourceInfo)> + '_ {
        self.entries()
            .map(|entry| (entry.id, entry.resource.describe()))
    }

    /// How many resources of each kind the list holds, in kind order; kinds with none are absent.
    pub fn count_by_kind(&self) -> BTreeMap<ResourceKind, usize> {
        let mut counts = BTreeMap::new();
        for (_, info) in self.resources() {
            *counts.entry(info.kind).or_insert(0) += 1;
        }
        counts
    }

    /// Whether the group is in this list (opened and neither removed nor released).
    pub fn has_group(&self, id: GroupId) -> bool {
        self.open_marker(id).is_ok()
    }

    /// The fault injector consulted by [`should_fail`](Self::should_fail).
    pub fn fault_injector(&self) -> &FaultInjector {
        &self.injector
    }

    /// The fault injector, to arm it (`fail_at`) before a probe.
    pub fn fault_injector_mut(&mut self) -> &mut FaultInjector {
        &mut self.injector
    }

    /// Counts one managed acquisition and says whether it must fail on purpose. Every `devm_*`
    /// wrapper calls this once before acquiring; outside [`probe`](Self::probe) it is always
    /// `false`.
    pub fn should_fail(&mut self) -> bool {
        self.injector.should_fail()
    }

    /// The shape of a `devm_*` wrapper: consults the fault injector, acquires, registers.
    /// Nothing is acquired when the injector fails the acquisition.
    pub fn acquire<R, E>(
        &mut self,
        acquire: impl FnOnce() -> Result<R, E>,
    ) -> Result<ResourceId, AcquireError<E>>
    where
        R: ManagedResource + 'static,
    {
        if self.should_fail() {
            return Err(AcquireError::Injected);
        }
        let resource = acquire().map_err(AcquireError::Failed)?;
        Ok(self.add(resource))
    }

    /// As [`acquire`](Self::acquire) for a value the driver keeps behind a revocable handle.
    pub fn acquire_revocable<T, E>(
        &mut self,
        info: ResourceInfo,
        acquire: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<Revocable<T>>, AcquireError<E>>
    where
        T: Send + Sync + 'static,
    {
        if self.should_fail() {
            return Err(AcquireError::Injected);
        }
        let value = acquire().map_err(AcquireError::Failed)?;
        Ok(self.add_revocable(info, value))
    }

    /// Runs a probe as the driver core does: managed acquisitions count for fault injection while
    /// it runs, and if it fails everything acquired through the list is released (LIFO) before
    /// its error is returned. Resources already in the list before the probe are released too:
    /// a device is probed with an empty list.
    pub fn probe<T, E>(&mut self, probe: impl FnOnce(&mut Self) -> Result<T, E>) -> Result<T, E> {
        self.injector.begin_probe();
        let result = probe(self);
        self.injector.end_probe();
        if result.is_err() {
            self.release_all();
        }
        result
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.nodes.iter().filter_map(|node| match node {
            Node::Resource(entry) => Some(entry),
            Node::GroupOpen(_) | Node::GroupClose(_) => None,
        })
    }

    fn open_marker(&self, id: GroupId) -> Result<usize, DevresError> {
        self.nodes
            .iter()
            .position(|node| matches!(node, Node::GroupOpen(g) if *g == id))
            .ok_or(DevresError::UnknownGroup(id))
    }

    fn close_marker(&self, id: GroupId) -> Option<usize> {
        self.nodes
            .iter()
            .position(|node| matches!(node, Node::GroupClose(g) if *g == id))
    }

    /// Detaches the resources in `nodes[start..end]`, and the markers of the groups wholly inside
    /// it (Linux's `remove_nodes`).
    fn take_range(&mut self, start: usize, end: usize) -> ReleaseBatch {
        let in_range = &self.nodes[start..end];
        let contained: Vec<GroupId> = in_range
            .iter()
            .filter_map(|node| match node {
                Node::GroupOpen(g) => match self.close_marker(*g) {
                    None => Some(*g),
                    Some(close) if close < end => Some(*g),
                    Some(_) => None,
                },
                Node::Resource(_) | Node::GroupClose(_) => None,
            })
            .collect();
        let mut entries = Vec::new();
        let mut kept = Vec::with_capacity(self.nodes.len());
        for (index, node) in core::mem::take(&mut self.nodes).into_iter().enumerate() {
            if !(start..end).contains(&index) {
                kept.push(node);
                continue;
            }
            match node {
                Node::Resource(entry) => entries.push(entry),
                Node::GroupOpen(g) | Node::GroupClose(g) if contained.contains(&g) => {}
                marker @ (Node::GroupOpen(_) | Node::GroupClose(_)) => kept.push(marker),
            }
        }
        self.nodes = kept;
        ReleaseBatch { entries }
    }
}

impl Drop for DevresList {
    /// A list dropped with resources in it releases them, last acquired first.
    fn drop(&mut self) {
        self.release_all();
    }
}

/// Resources detached from a list, in acquisition order, waiting to be released.
///
/// [`release`](Self::release) releases them last acquired first; dropping the batch does the same,
/// so detached resources are never leaked.
#[must_use = "dropping a batch releases it at once; call `release` to say so"]
pub struct ReleaseBatch {
    entries: Vec<Entry>,
}

impl ReleaseBatch {
    /// How many resources the batch holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the batch holds no resources.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The batch's resources in acquisition order (release runs them in reverse).
    pub fn resources(&self) -> impl Iterator<Item = (ResourceId, ResourceInfo)> + '_ {
        self.entries
            .iter()
            .map(|entry| (entry.id, entry.resource.describe()))
    }

    /// Releases every resource, last acquired first. Returns how many were released.
    pub fn release(mut self) -> usize {
        self.release_in_reverse()
    }

    fn release_in_reverse(&mut self) -> usize {
        let count = self.entries.len();
        while let Some(entry) = self.entries.pop() {
            entry.resource.release();
        }
        count
    }
}

impl Drop for ReleaseBatch {
    fn drop(&mut self) {
        self.release_in_reverse();
    }
}

impl fmt::Debug for ReleaseBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.resources().map(|(_, info)| info))
            .finish()
    }
}

/// The list entry behind [`DevresList::add_revocable`]: revokes the driver's handle at release.
struct RevokeOnRelease<T> {
    info: ResourceInfo,
    handle: Arc<Revocable<T>>,
    wait: fn(),
}

impl<T: Send + Sync> ManagedResource for RevokeOnRelease<T> {
    fn describe(&self) -> ResourceInfo {
        self.info.clone()
    }

    fn release(self: Box<Self>) {
        self.handle.revoke_and_wait(self.wait);
    }
}
