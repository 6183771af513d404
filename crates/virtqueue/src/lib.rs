//! The driver side of virtio 1.x split virtqueues (virtio 1.2 §2.7), as logic over a memory
//! trait, plus device initialisation over a transport trait.
//!
//! Why its own crate, host-tested: a virtqueue is shared memory with a device that Lull does
//! not trust (a buggy or hostile VMM, a device model fuzzed by someone else). Every value the
//! device writes — used index, used element id and length, `avail_event`, ring flags — is
//! checked before it is used, and the checks are exercised here by a fake device that lies on
//! purpose. The crate has no `unsafe` and, outside tests, no indexing, unchecked arithmetic,
//! `unwrap` or `panic` (enforced by clippy), so no device-written value can crash the kernel.
//!
//! * [`QueueMemory`] — little-endian loads and stores at the addresses of the rings, with the
//!   virtio barriers; the kernel implements it over its DMA memory, tests use [`VecMemory`].
//! * [`QueueLayout`] — where the descriptor table, available and used rings lie (alignment and
//!   sizes per spec, power-of-two sizes up to 32768).
//! * [`SplitQueue`] — add a chain of readable and writable [`Segment`]s, decide whether to
//!   notify ([`vring_need_event`] with VIRTIO_F_RING_EVENT_IDX, `VRING_USED_F_NO_NOTIFY`
//!   without), pop completions, suppress interrupts, reset.
//! * [`DeviceInit`] over a [`Transport`] — reset with a bounded wait, ACKNOWLEDGE → DRIVER →
//!   FEATURES_OK (re-read) → DRIVER_OK, FAILED on any error, queue addresses and MSI-X vectors
//!   with the `VIRTIO_MSI_NO_VECTOR` read-back check.
//!
//! Not here: indirect descriptors and packed rings (negotiation refuses packed), and the
//! notification doorbell write itself (the transport's, after `should_notify` says so).
//!
//! ```
//! use lull_virtqueue::{QueueLayout, QueueMemory, Segment, SplitQueue, VecMemory};
//!
//! let layout = QueueLayout::contiguous(8, 0x1000).unwrap();
//! let memory = VecMemory::new(0x1000, QueueLayout::contiguous_bytes(8) as usize);
//! let mut queue = SplitQueue::new(memory, layout, false);
//! let head = queue.add(&[Segment::new(0x8000, 16)], &[Segment::new(0x9000, 512)], "read")?;
//! assert!(queue.should_notify()?);
//!
//! // The device completes the chain, writing 512 bytes.
//! let mem = queue.memory_mut();
//! mem.write_u32(layout.used_elem(0), head.into());
//! mem.write_u32(layout.used_elem(0) + 4, 512);
//! mem.write_u16(layout.used_idx(), 1);
//! assert_eq!(queue.pop_used()?, Some(("read", 512)));
//! assert_eq!(queue.num_free(), 8);
//! # Ok::<(), lull_virtqueue::Error>(())
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

extern crate alloc;

mod memory;
mod queue;
#[cfg(test)]
mod tests;
mod transport;

pub use memory::{QueueLayout, QueueMemory, VecMemory, MAX_QUEUE_SIZE};
pub use queue::{
    vring_need_event, Segment, SplitQueue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY,
};
pub use transport::{
    reset_device, DeviceInit, InitError, InitStage, QueueSetup, Transport, STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    VIRTIO_F_ACCESS_PLATFORM, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, VIRTIO_MSI_NO_VECTOR,
};

use core::fmt;

/// Why a queue operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Queue size not a power of two in `1..=32768`.
    InvalidSize(u16),
    /// A ring part is not aligned as the spec requires.
    Misaligned {
        /// Which part.
        what: &'static str,
        /// Its address.
        addr: u64,
        /// The alignment required.
        align: u64,
    },
    /// A ring part would end past the last address.
    AddressOverflow {
        /// Which part.
        what: &'static str,
    },
    /// Two ring parts overlap.
    Overlap,
    /// `add` with no segments.
    EmptyChain,
    /// `add` with a zero-length segment.
    ZeroLengthSegment,
    /// Not enough free descriptors for the chain (nothing was added).
    QueueFull {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free.
        free: u16,
    },
    /// The device returned a used element whose id is out of range, not the head of an
    /// in-flight chain, or already completed. The queue is now broken.
    BadUsedId {
        /// The id it wrote.
        id: u32,
    },
    /// The device claims to have written more bytes than the chain's writable buffers hold.
    /// The queue is now broken.
    BadUsedLength {
        /// The chain's head.
        id: u32,
        /// The length it wrote.
        len: u32,
        /// The chain's writable bytes.
        writable: u64,
    },
    /// The device's used index is ahead of ours by more than the chains in flight (at most the
    /// queue size). The queue is now broken.
    BadUsedIndex {
        /// The used index it wrote.
        used_idx: u16,
        /// The driver's position.
        last_used_idx: u16,
        /// Chains in flight.
        in_flight: u16,
    },
    /// An earlier device error broke the queue; reset the device and the queue.
    Broken,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSize(size) => {
                write!(f, "queue size {size} is not a power of two up to 32768")
            }
            Self::Misaligned { what, addr, align } => {
                write!(f, "{what} at {addr:#x} is not {align}-byte aligned")
            }
            Self::AddressOverflow { what } => write!(f, "{what} runs past the address space"),
            Self::Overlap => f.write_str("ring parts overlap"),
            Self::EmptyChain => f.write_str("buffer chain has no segments"),
            Self::ZeroLengthSegment => f.write_str("buffer chain has a zero-length segment"),
            Self::QueueFull { needed, free } => {
                write!(f, "chain needs {needed} descriptors, {free} free")
            }
            Self::BadUsedId { id } => {
                write!(f, "device returned used id {id}, not an in-flight chain head")
            }
            Self::BadUsedLength { id, len, writable } => write!(
                f,
                "device claims {len} bytes written to chain {id}, which has {writable} writable"
            ),
            Self::BadUsedIndex {
                used_idx,
                last_used_idx,
                in_flight,
            } => write!(
                f,
                "device used index {used_idx} is ahead of {last_used_idx} by more than the {in_flight} chains in flight"
            ),
            Self::Broken => f.write_str("queue broken by an earlier device error; reset it"),
        }
    }
}

impl core::error::Error for Error {}
