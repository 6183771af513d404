//! What a managed resource is: its kind, its description for listings, and how it is released.

use alloc::boxed::Box;
use alloc::string::String;
use core::fmt;

/// The class of a managed resource, used for per-device listings and leak accounting.
///
/// The named kinds are the ones Linux's devres was written for; `Other` lets a subsystem register
/// a kind of its own (for example `"clk"` or `"gpio"`) without changing this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// A claimed I/O port range.
    IoPort,
    /// A claimed or mapped MMIO region.
    Mmio,
    /// A requested interrupt line.
    Irq,
    /// A DMA buffer or mapping.
    Dma,
    /// Memory allocated for the device (`devm_kzalloc`).
    Alloc,
    /// A custom action to run at release (`devm_add_action`).
    Action,
    /// Any other kind, named by the subsystem that registers it.
    Other(&'static str),
}

impl ResourceKind {
    /// The short name used in listings: `ioport`, `mmio`, `irq`, `dma`, `alloc`, `action`, or the
    /// name given to `Other`.
    pub fn name(self) -> &'static str {
        match self {
            Self::IoPort => "ioport",
            Self::Mmio => "mmio",
            Self::Irq => "irq",
            Self::Dma => "dma",
            Self::Alloc => "alloc",
            Self::Action => "action",
            Self::Other(name) => name,
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of a device's resource listing: kind, a free-form description (`0x3f8-0x3ff`,
/// `irq 4`, a function name) and, where it means something, a size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// The class of the resource.
    pub kind: ResourceKind,
    /// What the resource is, for a person reading the listing.
    pub description: String,
    /// Size in bytes (port ranges, MMIO, DMA buffers, allocations); `None` for IRQs and actions.
    pub size: Option<u64>,
}

impl ResourceInfo {
    /// A resource without a size.
    pub fn new(kind: ResourceKind, description: impl Into<String>) -> Self {
        Self {
            kind,
            description: description.into(),
            size: None,
        }
    }

    /// The same resource, `size` bytes long.
    #[must_use]
    pub fn with_size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }
}

impl fmt::Display for ResourceInfo {
    /// `ioport 0x3f8-0x3ff (8 bytes)`, `irq 4`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.description)?;
        if let Some(size) = self.size {
            write!(f, " ({size} bytes)")?;
        }
        Ok(())
    }
}

/// A resource a device list can own and release: the interface the kernel's `devm_*` wrappers
/// implement for each resource type (I/O ports, MMIO mappings, IRQs, DMA buffers…).
///
/// `release` consumes the resource, so the type system guarantees it runs at most once; the list
/// guarantees it runs exactly once (at release of the list, its group, or the list's drop) unless
/// the resource is taken back with [`DevresList::remove`](crate::DevresList::remove).
///
/// Context: `release` runs in whatever context the list is released from (driver unbind or a
/// failed probe, in process context in the kernel); it is never called with the list borrowed, so
/// it may take locks the list's owner does not hold.
pub trait ManagedResource: Send {
    /// Describes the resource for listings and leak accounting.
    fn describe(&self) -> ResourceInfo;

    /// Releases the resource (unmap, free, unclaim, run the action).
    fn release(self: Box<Self>);
}

/// A value released by dropping it: for handles whose `Drop` already gives the resource back
/// (the kernel's `IoPorts`, `PageBlock`, `Kmap`).
pub(crate) struct Owned<T> {
    pub(crate) info: ResourceInfo,
    pub(crate) value: T,
}

impl<T: Send> ManagedResource for Owned<T> {
    fn describe(&self) -> ResourceInfo {
        self.info.clone()
    }

    fn release(self: Box<Self>) {
        drop(self.value);
    }
}

/// Arbitrary data with a release function, as Linux's `devres_alloc(release, size)`: the
/// function receives the data back.
pub(crate) struct WithRelease<T, F> {
    pub(crate) info: ResourceInfo,
    pub(crate) value: T,
    pub(crate) release: F,
}

impl<T: Send, F: FnOnce(T) + Send> ManagedResource for WithRelease<T, F> {
    fn describe(&self) -> ResourceInfo {
        self.info.clone()
    }

    fn release(self: Box<Self>) {
        let this = *self;
        (this.release)(this.value);
    }
}
