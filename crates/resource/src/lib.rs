//! Resource trees: who owns which I/O ports and which physical addresses, as Linux's `kernel/resource.c`.
//!
//! There are two address spaces, each a [`ResourceTree`] with an implicit root covering the whole
//! space (Linux's `ioport_resource` and `iomem_resource`):
//!
//! | space              | root range          | proc file       | address width printed |
//! |--------------------|---------------------|-----------------|-----------------------|
//! | [`Space::IoPorts`] | `0..=0xffff`        | `/proc/ioports` | at least 4 hex digits |
//! | [`Space::Memory`]  | `0..=u64::MAX`      | `/proc/iomem`   | at least 8 hex digits |
//!
//! Every resource is an inclusive range `start..=end` with an owner's name, and is either a
//! *container* or *busy* (Linux's `IORESOURCE_BUSY`):
//!
//! * A **container** describes a window that others may claim parts of: a PCI bus window
//!   (`PCI Bus 0000:00`), a firmware-described block (`Reserved`). Containers are added with
//!   [`ResourceTree::insert_resource`], which follows Linux's `insert_resource`: the new resource
//!   goes as deep as it fits, and becomes the parent of the existing resources it covers.
//! * A **busy** resource is a driver's claim: [`ResourceTree::request_region`], Linux's
//!   `__request_region`. A request that lies wholly inside a container nests in it (as deep as
//!   containers go); a request that overlaps a busy resource, or crosses the boundary of any
//!   resource, is refused with an error naming the owner it collided with and its range.
//!
//! Siblings never overlap and children always lie within their parent: these two invariants are
//! what the model test in `model_tests.rs` checks after every operation.
//!
//! ```
//! use lull_resource::{Occupancy, ResourceError, ResourceTree};
//!
//! let mut io = ResourceTree::io_ports();
//! io.request_region(0x3f8, 8, "serial")?;
//! let bus = io.insert_resource(0x1000, 0x1000, "PCI Bus 0000:00", Occupancy::Container)?;
//! let bar = io.request_region(0x1040, 0x20, "0000:00:03.0")?; // nests in the bus window
//! assert_eq!(io.parent(bar), Some(bus));
//! assert_eq!(io.owner_of(0x1041), Some("0000:00:03.0"));
//! match io.request_region(0x3fc, 2, "other") {
//!     Err(ResourceError::Busy { owner, start, end }) => {
//!         assert_eq!((&*owner, start, end), ("serial", 0x3f8, 0x3ff));
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert_eq!(
//!     io.proc_text(),
//!     "03f8-03ff : serial\n1000-1fff : PCI Bus 0000:00\n  1040-105f : 0000:00:03.0\n",
//! );
//! # Ok::<(), ResourceError>(())
//! ```
//!
//! # Release
//!
//! [`ResourceTree::release`] frees one resource by its handle. A resource that still has
//! children is **refused** with [`ResourceError::HasChildren`] and nothing changes. This is where
//! Lull departs from Linux on purpose: Linux's `release_resource` unlinks the whole subtree and
//! leaves the children attached to a resource no longer in the tree (their owners' later releases
//! then act on a detached tree), and `__release_region` drops a busy region's children with it.
//! A Rust handle held by a child's owner must keep naming a resource in the tree, so the parent
//! cannot go first. [`ResourceTree::remove_resource`] is Linux's `remove_resource`: the resource
//! goes and its children move up to its parent, keeping their handles.
//!
//! Handles are `(space, slot, generation)`: a handle kept after its resource was released, or
//! used with the other space's tree, is refused with [`ResourceError::UnknownHandle`] rather than
//! naming whatever reused the slot.
//!
//! # `/proc/ioports` and `/proc/iomem`
//!
//! [`ResourceTree::write_proc`] prints every resource in address order, parents before their
//! children, as Linux's `r_show` does: `seq_printf("%*s%0*llx-%0*llx : %s\n", depth * 2, "",
//! width, start, width, end, name)`, where `width` is 4 when the root ends below `0x10000` (I/O
//! ports) and 8 otherwise (memory). The width is a *minimum*, as in `printf`: memory above 4 GiB
//! prints with as many digits as it needs (`100000000-17fffffff : System RAM`). As in Linux the
//! indentation stops growing at depth 5 (`MAX_IORES_LEVEL`); deeper resources are still listed.
//! Linux prints zeros for the addresses to readers without `CAP_SYS_ADMIN`; Lull has no users,
//! so the real addresses are always printed.
//!
//! # Costs
//!
//! Each level keeps its children in a `Vec` sorted by address. Finding the first sibling that
//! overlaps a range is a binary search, so a request, insert or lookup costs O(log n) per level
//! it descends. Inserting into or removing from a level shifts that level's `Vec` (memmove of
//! handles; levels are short in practice: a PCI bus has tens of BARs).

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Linux's `MAX_IORES_LEVEL`: `/proc/ioports` and `/proc/iomem` indent at most this many levels.
pub const MAX_PROC_INDENT_LEVEL: usize = 5;

/// An owner's name, borrowed when it is a constant (`"serial"`), owned when built at run time
/// (a PCI device's `0000:00:03.0`).
pub type OwnerName = Cow<'static, str>;

/// Which address space a tree describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// x86 I/O ports `0..=0xffff` (Linux's `ioport_resource`, `/proc/ioports`).
    IoPorts,
    /// Physical memory addresses `0..=u64::MAX` (Linux's `iomem_resource`, `/proc/iomem`).
    Memory,
}

impl Space {
    /// The last address of the space (the root's inclusive end).
    pub const fn last_address(self) -> u64 {
        match self {
            Space::IoPorts => 0xffff,
            Space::Memory => u64::MAX,
        }
    }

    /// Minimum number of hex digits per address in the proc file: 4 when the root ends below
    /// `0x10000`, else 8 (Linux's `r_show`).
    pub const fn proc_width(self) -> usize {
        if self.last_address() < 0x1_0000 {
            4
        } else {
            8
        }
    }
}

/// Whether others may claim parts of a resource (Linux: `IORESOURCE_BUSY` clear or set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Occupancy {
    /// A window requests may nest in (a bus window, a firmware-described block).
    Container,
    /// Claimed for exclusive use; [`ResourceTree::request_region`] never nests inside it.
    Busy,
}

/// A handle naming one resource of one tree. Refused once the resource is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResourceId {
    space: Space,
    slot: u32,
    generation: u32,
}

impl ResourceId {
    /// The address space whose tree issued this handle.
    pub fn space(self) -> Space {
        self.space
    }
}

/// Why a request, insert or release was refused. Nothing in the tree changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceError {
    /// A range of length zero was asked for.
    ZeroLength {
        /// Its first address.
        start: u64,
    },
    /// `start + len - 1` does not fit in 64 bits.
    Overflow {
        /// The first address asked for.
        start: u64,
        /// The length asked for.
        len: u64,
    },
    /// The range ends beyond the address space (an I/O port above `0xffff`).
    OutOfRange {
        /// The first address asked for.
        start: u64,
        /// The last address asked for.
        end: u64,
        /// The last address of the space.
        limit: u64,
    },
    /// The range overlaps a busy resource: `owner` holds `start..=end`.
    Busy {
        /// Name of the resource in the way.
        owner: OwnerName,
        /// Its first address.
        start: u64,
        /// Its last address.
        end: u64,
    },
    /// The range crosses the boundary of an existing resource (`owner`, `start..=end`), so it
    /// can neither nest inside it nor contain it.
    PartialOverlap {
        /// Name of the resource in the way.
        owner: OwnerName,
        /// Its first address.
        start: u64,
        /// Its last address.
        end: u64,
    },
    /// [`ResourceTree::release`] of a resource that still has children; `owner` holds the first
    /// of them, `start..=end`. Release the children first, or use
    /// [`ResourceTree::remove_resource`].
    HasChildren {
        /// Name of the first child.
        owner: OwnerName,
        /// Its first address.
        start: u64,
        /// Its last address.
        end: u64,
    },
    /// The handle was already released, or belongs to the other address space's tree.
    UnknownHandle,
}

impl fmt::Display for ResourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceError::ZeroLength { start } => {
                write!(
                    f,
                    "empty range at {start:#x}: a resource needs a length of at least 1"
                )
            }
            ResourceError::Overflow { start, len } => write!(
                f,
                "range at {start:#x} of length {len:#x} runs past the end of a 64-bit address"
            ),
            ResourceError::OutOfRange { start, end, limit } => write!(
                f,
                "range {start:#x}-{end:#x} lies outside the address space, which ends at {limit:#x}"
            ),
            ResourceError::Busy { owner, start, end } => {
                write!(
                    f,
                    "range is busy: {start:#x}-{end:#x} is claimed by \"{owner}\""
                )
            }
            ResourceError::PartialOverlap { owner, start, end } => write!(
                f,
                "range partially overlaps \"{owner}\" at {start:#x}-{end:#x}: it must lie wholly \
                 inside or wholly outside it"
            ),
            ResourceError::HasChildren { owner, start, end } => write!(
                f,
                "resource still has children, first \"{owner}\" at {start:#x}-{end:#x}: release \
                 them first"
            ),
            ResourceError::UnknownHandle => {
                write!(
                    f,
                    "no such resource: the handle was released or is from the other tree"
                )
            }
        }
    }
}

impl core::error::Error for ResourceError {}

/// One resource as seen from outside: what [`ResourceTree::get`] and [`ResourceTree::iter`]
/// return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource<'tree> {
    /// Its handle.
    pub id: ResourceId,
    /// First address.
    pub start: u64,
    /// Last address (inclusive, as Linux's `struct resource`).
    pub end: u64,
    /// The owner's name.
    pub name: &'tree str,
    /// Container or busy.
    pub occupancy: Occupancy,
    /// Nesting level: 0 for a direct child of the root.
    pub depth: usize,
}

/// A resource in its slot. `parent` is `None` for a direct child of the root.
#[derive(Debug)]
struct Node {
    start: u64,
    end: u64,
    name: OwnerName,
    occupancy: Occupancy,
    parent: Option<u32>,
    /// Slots of the children, sorted by `start`; they never overlap, so `end` is sorted too.
    children: Vec<u32>,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    node: Option<Node>,
}

/// One address space's resources: the root's children, nested.
///
/// Not locked: the kernel wraps each tree in its own lock (Linux's `resource_lock`).
#[derive(Debug)]
pub struct ResourceTree {
    space: Space,
    slots: Vec<Slot>,
    /// Free slots that may be reused (a slot whose generation would wrap is never listed).
    free: Vec<u32>,
    /// The root's children, sorted by `start`.
    top: Vec<u32>,
    len: usize,
}

impl ResourceTree {
    /// An empty tree for `space`.
    pub const fn new(space: Space) -> Self {
        ResourceTree {
            space,
            slots: Vec::new(),
            free: Vec::new(),
            top: Vec::new(),
            len: 0,
        }
    }

    /// An empty I/O port tree (`0..=0xffff`).
    pub const fn io_ports() -> Self {
        Self::new(Space::IoPorts)
    }

    /// An empty memory tree (`0..=u64::MAX`).
    pub const fn memory() -> Self {
        Self::new(Space::Memory)
    }

    /// The address space this tree describes.
    pub fn space(&self) -> Space {
        self.space
    }

    /// Number of resources in the tree (the root not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is claimed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Claims `start..start + len` for `owner` for exclusive use, as Linux's `request_region` /
    /// `request_mem_region`. The claim nests inside the deepest container that wholly covers it.
    ///
    /// Refused with [`ResourceError::Busy`] when it overlaps a busy resource,
    /// [`ResourceError::PartialOverlap`] when it crosses a container's boundary, and
    /// [`ResourceError::ZeroLength`], [`ResourceError::Overflow`] or
    /// [`ResourceError::OutOfRange`] for a range that is not one.
    pub fn request_region(
        &mut self,
        start: u64,
        len: u64,
        owner: impl Into<OwnerName>,
    ) -> Result<ResourceId, ResourceError> {
        let end = self.checked_range(start, len)?;
        let mut parent = None;
        loop {
            let siblings = self.children(parent);
            let index = first_ending_at_or_after(&self.slots, siblings, start);
            let Some(&conflict) = siblings.get(index) else {
                break;
            };
            let node = self.node(conflict);
            if node.start > end {
                // Nothing at this level overlaps: the gap before `conflict` is free.
                break;
            }
            if node.occupancy == Occupancy::Busy {
                return Err(ResourceError::Busy {
                    owner: node.name.clone(),
                    start: node.start,
                    end: node.end,
                });
            }
            if node.start <= start && end <= node.end {
                parent = Some(conflict);
                continue;
            }
            return Err(ResourceError::PartialOverlap {
                owner: node.name.clone(),
                start: node.start,
                end: node.end,
            });
        }
        let index = first_ending_at_or_after(&self.slots, self.children(parent), start);
        let id = self.allocate(Node {
            start,
            end,
            name: owner.into(),
            occupancy: Occupancy::Busy,
            parent,
            children: Vec::new(),
        });
        self.children_mut(parent).insert(index, id.slot);
        Ok(id)
    }

    /// Adds a resource described by firmware or a bus (a PCI bus window, `System RAM`,
    /// `Reserved`), as Linux's `insert_resource`: it goes inside the deepest resource that
    /// covers it (busy or not, as in Linux: `Kernel code` goes inside the busy `System RAM`), and
    /// the resources at that level that it covers become its children. A resource with exactly
    /// the same range as an existing one goes *around* it, as in Linux.
    ///
    /// Refused with [`ResourceError::PartialOverlap`] when it crosses any resource's boundary.
    pub fn insert_resource(
        &mut self,
        start: u64,
        len: u64,
        owner: impl Into<OwnerName>,
        occupancy: Occupancy,
    ) -> Result<ResourceId, ResourceError> {
        let end = self.checked_range(start, len)?;
        let mut parent = None;
        // Descend while the first overlapping sibling strictly covers the new range.
        let (first, past) = loop {
            let siblings = self.children(parent);
            let first = first_ending_at_or_after(&self.slots, siblings, start);
            let covering = siblings
                .get(first)
                .map(|&slot| self.node(slot))
                .filter(|node| {
                    node.start <= start && end <= node.end && (node.start, node.end) != (start, end)
                });
            if covering.is_some() {
                parent = Some(siblings[first]);
                continue;
            }
            // Every sibling overlapping the range must lie wholly inside it, to be adopted.
            let mut past = first;
            while let Some(&slot) = siblings.get(past) {
                let node = self.node(slot);
                if node.start > end {
                    break;
                }
                if node.start < start || node.end > end {
                    return Err(ResourceError::PartialOverlap {
                        owner: node.name.clone(),
                        start: node.start,
                        end: node.end,
                    });
                }
                past += 1;
            }
            break (first, past);
        };
        let adopted: Vec<u32> = self.children_mut(parent).drain(first..past).collect();
        let id = self.allocate(Node {
            start,
            end,
            name: owner.into(),
            occupancy,
            parent,
            children: Vec::new(),
        });
        for &child in &adopted {
            self.node_mut(child).parent = Some(id.slot);
        }
        self.node_mut(id.slot).children = adopted;
        self.children_mut(parent).insert(first, id.slot);
        Ok(id)
    }

    /// Releases a resource that has no children. One with children is refused with
    /// [`ResourceError::HasChildren`] and the tree is unchanged (see the crate documentation for
    /// why this differs from Linux's `release_resource`).
    pub fn release(&mut self, id: ResourceId) -> Result<(), ResourceError> {
        let node = self.lookup(id)?;
        if let Some(&child) = node.children.first() {
            let child = self.node(child);
            return Err(ResourceError::HasChildren {
                owner: child.name.clone(),
                start: child.start,
                end: child.end,
            });
        }
        self.remove_resource(id)
    }

    /// Removes a resource and moves its children up to its parent, where they take its place
    /// (Linux's `remove_resource`). The children's handles stay valid.
    pub fn remove_resource(&mut self, id: ResourceId) -> Result<(), ResourceError> {
        let node = self.lookup(id)?;
        let (parent, start) = (node.parent, node.start);
        let siblings = self.children(parent);
        let index = first_ending_at_or_after(&self.slots, siblings, start);
        debug_assert_eq!(siblings.get(index), Some(&id.slot));
        let slot = &mut self.slots[id.slot as usize];
        let node = slot.node.take().expect("lookup checked the slot");
        // Retire a slot whose generation would wrap rather than let an old handle alias it.
        if let Some(next) = slot.generation.checked_add(1) {
            slot.generation = next;
            self.free.push(id.slot);
        }
        self.len -= 1;
        for &child in &node.children {
            self.node_mut(child).parent = parent;
        }
        self.children_mut(parent)
            .splice(index..=index, node.children);
        Ok(())
    }

    /// The resource a handle names, with its depth.
    pub fn get(&self, id: ResourceId) -> Option<Resource<'_>> {
        let node = self.lookup(id).ok()?;
        let mut depth = 0;
        let mut parent = node.parent;
        while let Some(slot) = parent {
            depth += 1;
            parent = self.node(slot).parent;
        }
        Some(self.view(id.slot, depth))
    }

    /// The resource a handle's resource is nested in, `None` for a direct child of the root (or
    /// a handle no longer valid).
    pub fn parent(&self, id: ResourceId) -> Option<ResourceId> {
        let parent = self.lookup(id).ok()?.parent?;
        Some(self.id_of(parent))
    }

    /// The innermost resource containing `address`, with its depth.
    pub fn find(&self, address: u64) -> Option<Resource<'_>> {
        let mut found = None;
        let mut parent = None;
        let mut depth = 0;
        loop {
            let siblings = self.children(parent);
            let index = first_ending_at_or_after(&self.slots, siblings, address);
            match siblings.get(index) {
                Some(&slot) if self.node(slot).start <= address => {
                    found = Some((slot, depth));
                    parent = Some(slot);
                    depth += 1;
                }
                _ => break,
            }
        }
        found.map(|(slot, depth)| self.view(slot, depth))
    }

    /// The owner of the innermost resource containing `address`.
    pub fn owner_of(&self, address: u64) -> Option<&str> {
        self.find(address).map(|resource| resource.name)
    }

    /// Every resource in address order, each parent before its children (the order of the proc
    /// files).
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            tree: self,
            stack: alloc::vec![(None, 0)],
        }
    }

    /// Writes the tree as Linux prints `/proc/ioports` or `/proc/iomem` (see the crate
    /// documentation for the format).
    pub fn write_proc(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let width = self.space.proc_width();
        for resource in self.iter() {
            let indent = resource.depth.min(MAX_PROC_INDENT_LEVEL) * 2;
            writeln!(
                out,
                "{:indent$}{:0width$x}-{:0width$x} : {}",
                "", resource.start, resource.end, resource.name
            )?;
        }
        Ok(())
    }

    /// The proc file's text ([`ResourceTree::write_proc`] into a `String`).
    pub fn proc_text(&self) -> String {
        let mut text = String::new();
        self.write_proc(&mut text)
            .expect("writing to a String cannot fail");
        text
    }

    /// `start + len - 1`, if the range is one within the space.
    fn checked_range(&self, start: u64, len: u64) -> Result<u64, ResourceError> {
        if len == 0 {
            return Err(ResourceError::ZeroLength { start });
        }
        let end = start
            .checked_add(len - 1)
            .ok_or(ResourceError::Overflow { start, len })?;
        let limit = self.space.last_address();
        if end > limit {
            return Err(ResourceError::OutOfRange { start, end, limit });
        }
        Ok(end)
    }

    fn allocate(&mut self, node: Node) -> ResourceId {
        self.len += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].node = Some(node);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 resources");
                self.slots.push(Slot {
                    generation: 0,
                    node: Some(node),
                });
                slot
            }
        };
        self.id_of(slot)
    }

    fn lookup(&self, id: ResourceId) -> Result<&Node, ResourceError> {
        if id.space != self.space {
            return Err(ResourceError::UnknownHandle);
        }
        match self.slots.get(id.slot as usize) {
            Some(Slot {
                generation,
                node: Some(node),
            }) if *generation == id.generation => Ok(node),
            _ => Err(ResourceError::UnknownHandle),
        }
    }

    fn id_of(&self, slot: u32) -> ResourceId {
        ResourceId {
            space: self.space,
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    fn view(&self, slot: u32, depth: usize) -> Resource<'_> {
        let node = self.node(slot);
        Resource {
            id: self.id_of(slot),
            start: node.start,
            end: node.end,
            name: &node.name,
            occupancy: node.occupancy,
            depth,
        }
    }

    fn node(&self, slot: u32) -> &Node {
        node_in(&self.slots, slot)
    }

    fn node_mut(&mut self, slot: u32) -> &mut Node {
        self.slots[slot as usize]
            .node
            .as_mut()
            .expect("the tree links only live slots")
    }

    fn children(&self, parent: Option<u32>) -> &Vec<u32> {
        match parent {
            Some(slot) => &self.node(slot).children,
            None => &self.top,
        }
    }

    fn children_mut(&mut self, parent: Option<u32>) -> &mut Vec<u32> {
        match parent {
            Some(slot) => &mut self.node_mut(slot).children,
            None => &mut self.top,
        }
    }
}

fn node_in(slots: &[Slot], slot: u32) -> &Node {
    slots[slot as usize]
        .node
        .as_ref()
        .expect("the tree links only live slots")
}

/// Index of the first sibling whose end is at or after `address`: the only one that can contain
/// or overlap a range starting at `address` (siblings are sorted and disjoint), or where a new
/// resource starting at `address` goes.
fn first_ending_at_or_after(slots: &[Slot], siblings: &[u32], address: u64) -> usize {
    siblings.partition_point(|&slot| node_in(slots, slot).end < address)
}

/// Iterator over a tree in address order; see [`ResourceTree::iter`].
#[derive(Debug)]
pub struct Iter<'tree> {
    tree: &'tree ResourceTree,
    /// For each level being walked: whose children, and the index of the next one.
    stack: Vec<(Option<u32>, usize)>,
}

impl<'tree> Iterator for Iter<'tree> {
    type Item = Resource<'tree>;

    fn next(&mut self) -> Option<Resource<'tree>> {
        loop {
            let depth = self.stack.len().checked_sub(1)?;
            let (parent, next) = self.stack[depth];
            match self.tree.children(parent).get(next) {
                Some(&slot) => {
                    self.stack[depth].1 += 1;
                    self.stack.push((Some(slot), 0));
                    return Some(self.tree.view(slot, depth));
                }
                None => {
                    self.stack.pop();
                }
            }
        }
    }
}
