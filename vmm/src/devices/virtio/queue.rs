//! Strictly validated descriptor chains on top of `virtio_queue::Queue`.
//!
//! `virtio_queue` keeps the ring bookkeeping (avail/used indices, EVENT_IDX suppression, the
//! avail-index sanity check); its chain iterator, though, ends a chain silently on a bad
//! descriptor (out-of-range index, loop, unreadable table), which a device cannot tell from a
//! short chain. Here every descriptor of a chain is checked and any violation is an error the
//! transport turns into DEVICE_NEEDS_RESET:
//! - the head and every `next` index are below the queue size;
//! - the chain has at most queue-size descriptors (a loop is caught by this bound);
//! - no INDIRECT descriptor (VIRTIO_F_INDIRECT_DESC is not offered);
//! - every buffer lies wholly in guest RAM;
//! - device-readable buffers come before device-writable ones (virtio 1.2 §2.7.4.2);
//! - the chain's total length is within the device's limit.

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use crate::vstate::memory::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Why a queue or chain was refused: the guest broke the virtio protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("queue is not ready or its rings are outside guest RAM")]
    QueueInvalid,
    #[error("avail index {avail} is more than the queue size {size} ahead of the device's {next}")]
    AvailIndex { avail: u16, next: u16, size: u16 },
    #[error("ring access outside guest RAM ({0})")]
    Ring(String),
    #[error("descriptor index {index} is not below the queue size {size}")]
    IndexOutOfRange { index: u16, size: u16 },
    #[error("chain from head {head} has more than {size} descriptors (loop or overlong chain)")]
    TooLong { head: u16, size: u16 },
    #[error("descriptor {index} is INDIRECT, a feature that was not offered")]
    Indirect { index: u16 },
    #[error("descriptor {index} buffer {address:#x}+{len} is outside guest RAM")]
    OutsideRam { index: u16, address: u64, len: u32 },
    #[error("descriptor {index} is device-readable after a device-writable one")]
    ReadableAfterWritable { index: u16 },
    #[error("chain from head {head} is {bytes} bytes, over the device's limit of {limit}")]
    TooLarge { head: u16, bytes: u64, limit: u64 },
    #[error("chain from head {head}: {what}")]
    Layout { head: u16, what: &'static str },
}

/// One guest buffer of a chain (checked to be inside guest RAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub address: GuestAddress,
    pub len: u32,
}

/// A validated descriptor chain: its head index and its buffers by direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: Vec<Buffer>,
    pub writable: Vec<Buffer>,
}

impl Chain {
    pub fn readable_bytes(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    pub fn writable_bytes(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }
}

/// Checks that a ready queue's rings lie in guest RAM (alignment was checked as the driver
/// set the addresses).
pub fn check_queue(queue: &Queue, memory: &GuestMemoryMmap) -> Result<(), ChainError> {
    if queue.ready() && queue.is_valid(memory) {
        Ok(())
    } else {
        Err(ChainError::QueueInvalid)
    }
}

/// Takes the next available chain, validated; `Ok(None)` when the driver has offered no more.
/// `max_bytes` bounds the chain's total length.
pub fn pop_chain(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    max_bytes: u64,
) -> Result<Option<Chain>, ChainError> {
    let next = queue.next_avail();
    let size = queue.size();
    let avail = queue
        .avail_idx(memory, Ordering::Acquire)
        .map_err(|e| ChainError::Ring(e.to_string()))?;
    if (avail - Wrapping(next)).0 > size {
        return Err(ChainError::AvailIndex {
            avail: avail.0,
            next,
            size,
        });
    }
    let head = {
        let mut iter = queue.iter(memory).map_err(|e| match e {
            virtio_queue::Error::InvalidAvailRingIndex => ChainError::AvailIndex {
                avail: avail.0,
                next,
                size,
            },
            other => ChainError::Ring(other.to_string()),
        })?;
        match iter.next() {
            Some(chain) => chain.head_index(),
            // Either nothing is available, or the avail ring entry is unreadable (the ring
            // was checked to be in RAM, so that means nothing is available).
            None if avail.0 == next => return Ok(None),
            None => return Err(ChainError::Ring("avail ring entry unreadable".into())),
        }
    };
    walk_chain(queue.desc_table(), size, head, memory, max_bytes).map(Some)
}

/// Walks and validates the chain starting at `head` in the descriptor table at `table`.
pub fn walk_chain(
    table: u64,
    size: u16,
    head: u16,
    memory: &GuestMemoryMmap,
    max_bytes: u64,
) -> Result<Chain, ChainError> {
    let mut chain = Chain {
        head,
        ..Default::default()
    };
    let mut index = head;
    let mut count = 0u32;
    let mut total = 0u64;
    loop {
        if index >= size {
            return Err(ChainError::IndexOutOfRange { index, size });
        }
        count += 1;
        if count > u32::from(size) {
            return Err(ChainError::TooLong { head, size });
        }
        let at = GuestAddress(table + u64::from(index) * 16);
        let descriptor: Descriptor = memory
            .read_obj(at)
            .map_err(|e| ChainError::Ring(e.to_string()))?;
        let flags = u32::from(descriptor.flags());
        if flags & VRING_DESC_F_INDIRECT != 0 {
            return Err(ChainError::Indirect { index });
        }
        let buffer = Buffer {
            address: descriptor.addr(),
            len: descriptor.len(),
        };
        if !GuestMemoryBackend::check_range(memory, buffer.address, buffer.len as usize) {
            return Err(ChainError::OutsideRam {
                index,
                address: buffer.address.0,
                len: buffer.len,
            });
        }
        total += u64::from(buffer.len);
        if total > max_bytes {
            return Err(ChainError::TooLarge {
                head,
                bytes: total,
                limit: max_bytes,
            });
        }
        if flags & VRING_DESC_F_WRITE != 0 {
            chain.writable.push(buffer);
        } else if !chain.writable.is_empty() {
            return Err(ChainError::ReadableAfterWritable { index });
        } else {
            chain.readable.push(buffer);
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(chain);
        }
        index = descriptor.next();
    }
}

/// Puts a chain on the used ring with `len` bytes written.
pub fn add_used(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), ChainError> {
    queue
        .add_used(memory, head, len)
        .map_err(|e| ChainError::Ring(e.to_string()))
}

/// Reads sequentially across a chain's buffers.
pub struct Reader<'a> {
    memory: &'a GuestMemoryMmap,
    buffers: &'a [Buffer],
    /// Offset into `buffers[0]`.
    offset: u32,
}

impl<'a> Reader<'a> {
    pub fn new(memory: &'a GuestMemoryMmap, buffers: &'a [Buffer]) -> Self {
        Self {
            memory,
            buffers,
            offset: 0,
        }
    }

    /// Fills `out` completely, or returns false (then what was left is consumed).
    pub fn read_exact(&mut self, out: &mut [u8]) -> bool {
        let mut done = 0;
        while done < out.len() {
            let Some(first) = self.buffers.first() else {
                return false;
            };
            let available = (first.len - self.offset) as usize;
            let take = available.min(out.len() - done);
            let at = GuestAddress(first.address.0 + u64::from(self.offset));
            if self
                .memory
                .read_slice(&mut out[done..done + take], at)
                .is_err()
            {
                return false;
            }
            done += take;
            self.offset += take as u32;
            if self.offset == first.len {
                self.buffers = &self.buffers[1..];
                self.offset = 0;
            }
        }
        true
    }

    /// Bytes left.
    pub fn remaining(&self) -> u64 {
        self.buffers.iter().map(|b| u64::from(b.len)).sum::<u64>() - u64::from(self.offset)
    }
}

/// Writes sequentially across a chain's buffers.
pub struct Writer<'a> {
    memory: &'a GuestMemoryMmap,
    buffers: &'a [Buffer],
    offset: u32,
    written: u64,
}

impl<'a> Writer<'a> {
    pub fn new(memory: &'a GuestMemoryMmap, buffers: &'a [Buffer]) -> Self {
        Self {
            memory,
            buffers,
            offset: 0,
            written: 0,
        }
    }

    /// Writes all of `data`, or returns false.
    pub fn write_all(&mut self, data: &[u8]) -> bool {
        let mut done = 0;
        while done < data.len() {
            let Some(first) = self.buffers.first() else {
                return false;
            };
            let available = (first.len - self.offset) as usize;
            let take = available.min(data.len() - done);
            let at = GuestAddress(first.address.0 + u64::from(self.offset));
            if self
                .memory
                .write_slice(&data[done..done + take], at)
                .is_err()
            {
                return false;
            }
            done += take;
            self.offset += take as u32;
            self.written += take as u64;
            if self.offset == first.len {
                self.buffers = &self.buffers[1..];
                self.offset = 0;
            }
        }
        true
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Room left.
    pub fn remaining(&self) -> u64 {
        self.buffers.iter().map(|b| u64::from(b.len)).sum::<u64>() - u64::from(self.offset)
    }
}

/// The last byte of a chain's writable buffers (where block devices put the status), and the
/// writable buffers before it.
pub fn split_last_byte(writable: &[Buffer]) -> Option<(Vec<Buffer>, GuestAddress)> {
    let mut buffers: Vec<Buffer> = writable.iter().copied().filter(|b| b.len > 0).collect();
    let last = buffers.last_mut()?;
    last.len -= 1;
    let status = GuestAddress(last.address.0 + u64::from(last.len));
    if last.len == 0 {
        buffers.pop();
    }
    Some((buffers, status))
}
