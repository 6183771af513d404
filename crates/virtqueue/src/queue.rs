//! The driver side of a split virtqueue: descriptor free list, available ring, used ring,
//! notification and interrupt suppression, and validation of everything the device writes.

use alloc::vec::Vec;

use crate::memory::{QueueLayout, QueueMemory};
use crate::Error;

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer (otherwise it reads it).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Available ring flag: the driver does not want used-buffer notifications (interrupts).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want available-buffer notifications (kicks).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// One buffer of a chain: guest-physical address and length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where the buffer is, as the device addresses it.
    pub addr: u64,
    /// Its length; never zero.
    pub len: u32,
}

impl Segment {
    /// A segment of `len` bytes at `addr`.
    pub const fn new(addr: u64, len: u32) -> Self {
        Self { addr, len }
    }
}

/// The event-index test (`vring_need_event`): whether moving an index from `old` to `new`
/// crossed `event`, in 16-bit wrapping arithmetic: `(new - event - 1) < (new - old)`.
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// What the driver knows about one descriptor. Kept in driver memory: the device can read the
/// descriptor table, and nothing it writes anywhere changes what the driver believes a chain is.
#[derive(Clone, Debug)]
struct Slot<T> {
    /// Next descriptor in the free list or in the chain.
    next: u16,
    /// For the head of an in-flight chain: its token, its descriptor count and the bytes the
    /// device may write. `None` for free descriptors and for chain members after the head.
    head: Option<InFlight<T>>,
}

#[derive(Clone, Debug)]
struct InFlight<T> {
    token: T,
    descriptors: u16,
    writable: u64,
}

/// The driver side of one split virtqueue over memory `M`; each chain carries a token `T`
/// (a request id, a buffer handle) handed back when the device completes it.
///
/// Nothing the device writes is trusted: a bad used element makes the call return an error and
/// the queue **broken** (every call returns [`Error::Broken`] until [`reset`](Self::reset)),
/// because after one lie from the device no later element can be believed either. Nothing
/// panics on any value in device-writable memory.
#[derive(Debug)]
pub struct SplitQueue<M, T> {
    memory: M,
    layout: QueueLayout,
    slots: Vec<Slot<T>>,
    free_head: u16,
    num_free: u16,
    in_flight_chains: u16,
    /// The driver's copy of the available index (the device's copy is only written).
    avail_idx: u16,
    /// Chains made available since the last `should_notify`.
    num_added: u32,
    last_used_idx: u16,
    event_idx: bool,
    callbacks_enabled: bool,
    broken: bool,
}

impl<M: QueueMemory, T> SplitQueue<M, T> {
    /// A queue over `memory` laid out as `layout`, with all descriptors free and the rings'
    /// driver-owned fields zeroed. `event_idx` is whether VIRTIO_F_RING_EVENT_IDX was
    /// negotiated.
    pub fn new(mut memory: M, layout: QueueLayout, event_idx: bool) -> Self {
        init_rings(&mut memory, &layout);
        Self {
            memory,
            layout,
            slots: free_slots(layout.size()),
            free_head: 0,
            num_free: layout.size(),
            in_flight_chains: 0,
            avail_idx: 0,
            num_added: 0,
            last_used_idx: 0,
            event_idx,
            callbacks_enabled: true,
            broken: false,
        }
    }

    /// The queue's layout (to program the transport with).
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.layout.size()
    }

    /// Free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains made available and not yet completed.
    pub fn in_flight(&self) -> u16 {
        self.in_flight_chains
    }

    /// Whether a bad value from the device broke the queue.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The ring memory (for a fake device in tests).
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// The ring memory, mutably (for a fake device in tests).
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.memory
    }

    /// Makes a chain available: `readable` segments (device reads) then `writable` ones (device
    /// writes), as descriptors taken from the free list. Returns the head descriptor's index.
    /// Nothing is changed when it fails.
    pub fn add(
        &mut self,
        readable: &[Segment],
        writable: &[Segment],
        token: T,
    ) -> Result<u16, Error> {
        self.check()?;
        let total = readable.len().saturating_add(writable.len());
        if total == 0 {
            return Err(Error::EmptyChain);
        }
        if readable.iter().chain(writable).any(|s| s.len == 0) {
            return Err(Error::ZeroLengthSegment);
        }
        let needed = u16::try_from(total).map_err(|_| Error::QueueFull {
            needed: total,
            free: self.num_free,
        })?;
        if needed > self.num_free {
            return Err(Error::QueueFull {
                needed: total,
                free: self.num_free,
            });
        }
        let writable_bytes = writable
            .iter()
            .fold(0_u64, |sum, s| sum.saturating_add(u64::from(s.len)));

        let head = self.free_head;
        let mut index = head;
        let segments = readable
            .iter()
            .map(|s| (s, 0))
            .chain(writable.iter().map(|s| (s, VIRTQ_DESC_F_WRITE)));
        for (position, (segment, write)) in segments.enumerate() {
            let last = position.saturating_add(1) == total;
            let next = self.slot(index)?.next;
            let flags = write | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let addr = self.layout.desc(index);
            self.memory.write_u64(addr, segment.addr);
            self.memory.write_u32(addr.wrapping_add(8), segment.len);
            self.memory.write_u16(addr.wrapping_add(12), flags);
            self.memory
                .write_u16(addr.wrapping_add(14), if last { 0 } else { next });
            if !last {
                index = next;
            } else {
                self.free_head = next;
            }
        }
        self.num_free = self.num_free.wrapping_sub(needed);
        self.in_flight_chains = self.in_flight_chains.wrapping_add(1);
        self.slot_mut(head)?.head = Some(InFlight {
            token,
            descriptors: needed,
            writable: writable_bytes,
        });

        let slot = self.avail_idx & self.size().wrapping_sub(1);
        self.memory.write_u16(self.layout.avail_ring(slot), head);
        // The descriptors and the ring entry before the index that publishes them.
        self.memory.store_fence();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.memory
            .write_u16(self.layout.avail_idx(), self.avail_idx);
        self.num_added = self.num_added.saturating_add(1);
        Ok(head)
    }

    /// Whether the device must be notified of the chains added since the last call (Linux's
    /// `virtqueue_kick_prepare`). With VIRTIO_F_RING_EVENT_IDX: whether the available index
    /// crossed the device's `avail_event`; otherwise: unless the device set
    /// `VRING_USED_F_NO_NOTIFY`. Always `true` after 65,536 or more additions, where 16-bit
    /// index arithmetic can no longer tell.
    pub fn should_notify(&mut self) -> Result<bool, Error> {
        self.check()?;
        // Our index store before the device's event load.
        self.memory.full_fence();
        let added = core::mem::take(&mut self.num_added);
        if added == 0 {
            return Ok(false);
        }
        if added > u32::from(u16::MAX) {
            return Ok(true);
        }
        let new = self.avail_idx;
        // `added` fits in u16 here.
        let old = new.wrapping_sub(u16::try_from(added).unwrap_or(u16::MAX));
        Ok(if self.event_idx {
            let event = self.memory.read_u16(self.layout.avail_event());
            vring_need_event(event, new, old)
        } else {
            self.memory.read_u16(self.layout.used_flags()) & VRING_USED_F_NO_NOTIFY == 0
        })
    }

    /// Whether the device has completed chains not yet popped (validating its used index).
    pub fn has_used(&mut self) -> Result<bool, Error> {
        self.check()?;
        Ok(self.pending_used()? > 0)
    }

    /// Takes the next completed chain: its token and the bytes the device says it wrote.
    /// `Ok(None)` when there is none.
    ///
    /// Errors (the queue is broken after each): [`Error::BadUsedIndex`] when the used index is
    /// ahead by more than the chains in flight; [`Error::BadUsedId`] when the element's id is out
    /// of range or not the head of an in-flight chain (including one already completed);
    /// [`Error::BadUsedLength`] when the length exceeds the chain's writable bytes.
    pub fn pop_used(&mut self) -> Result<Option<(T, u32)>, Error> {
        self.check()?;
        if self.pending_used()? == 0 {
            return Ok(None);
        }
        let slot = self.last_used_idx & self.size().wrapping_sub(1);
        let elem = self.layout.used_elem(slot);
        let id = self.memory.read_u32(elem);
        let len = self.memory.read_u32(elem.wrapping_add(4));
        let head = match u16::try_from(id) {
            Ok(head) if head < self.size() => head,
            _ => return Err(self.break_with(Error::BadUsedId { id })),
        };
        let Some(in_flight) = self.slot(head)?.head.as_ref() else {
            return Err(self.break_with(Error::BadUsedId { id }));
        };
        if u64::from(len) > in_flight.writable {
            let writable = in_flight.writable;
            return Err(self.break_with(Error::BadUsedLength { id, len, writable }));
        }
        let token = self.free_chain(head)?;
        self.last_used_idx = self.last_used_idx.wrapping_add(1);
        if self.event_idx && self.callbacks_enabled {
            // Ask for the next interrupt when the device passes what we have consumed.
            self.memory
                .write_u16(self.layout.used_event(), self.last_used_idx);
            self.memory.full_fence();
        }
        Ok(Some((token, len)))
    }

    /// Asks the device not to interrupt for completions (`virtqueue_disable_cb`). Without
    /// EVENT_IDX this sets `VRING_AVAIL_F_NO_INTERRUPT` (a hint the device may ignore); with
    /// it, `used_event` is parked just behind the driver's position, which the device reaches
    /// only after 65,535 more completions — never, with at most 32,768 in flight.
    pub fn disable_callbacks(&mut self) {
        self.callbacks_enabled = false;
        if self.event_idx {
            self.memory
                .write_u16(self.layout.used_event(), self.last_used_idx.wrapping_sub(1));
        } else {
            let flags = self.memory.read_u16(self.layout.avail_flags());
            self.memory.write_u16(
                self.layout.avail_flags(),
                flags | VRING_AVAIL_F_NO_INTERRUPT,
            );
        }
    }

    /// Asks for an interrupt at the next completion (`virtqueue_enable_cb`), and returns whether
    /// completions raced in already — if so the caller must poll again rather than wait, since
    /// their interrupt may have been suppressed.
    pub fn enable_callbacks(&mut self) -> Result<bool, Error> {
        self.check()?;
        self.callbacks_enabled = true;
        if self.event_idx {
            self.memory
                .write_u16(self.layout.used_event(), self.last_used_idx);
        } else {
            let flags = self.memory.read_u16(self.layout.avail_flags());
            self.memory.write_u16(
                self.layout.avail_flags(),
                flags & !VRING_AVAIL_F_NO_INTERRUPT,
            );
        }
        // Our enable before the device's used index: otherwise a completion between the two
        // would neither interrupt nor be seen.
        self.memory.full_fence();
        Ok(self.pending_used()? > 0)
    }

    /// Returns the queue to its initial state after the device was reset (the caller resets
    /// the device first: the device must not be using the rings). Hands back the tokens of the
    /// chains that were in flight, in head-index order, and clears the broken state.
    pub fn reset(&mut self) -> Vec<T> {
        let slots = core::mem::replace(&mut self.slots, free_slots(self.layout.size()));
        let tokens = slots
            .into_iter()
            .filter_map(|slot| slot.head.map(|h| h.token))
            .collect();
        init_rings(&mut self.memory, &self.layout);
        self.free_head = 0;
        self.num_free = self.layout.size();
        self.in_flight_chains = 0;
        self.avail_idx = 0;
        self.num_added = 0;
        self.last_used_idx = 0;
        self.callbacks_enabled = true;
        self.broken = false;
        tokens
    }

    fn check(&self) -> Result<(), Error> {
        if self.broken {
            Err(Error::Broken)
        } else {
            Ok(())
        }
    }

    fn break_with(&mut self, error: Error) -> Error {
        self.broken = true;
        error
    }

    /// Completions the device published and we have not popped, checked against what is in
    /// flight.
    fn pending_used(&mut self) -> Result<u16, Error> {
        let used_idx = self.memory.read_u16(self.layout.used_idx());
        // The index before the elements it publishes.
        self.memory.load_fence();
        let pending = used_idx.wrapping_sub(self.last_used_idx);
        if pending > self.in_flight_chains {
            return Err(self.break_with(Error::BadUsedIndex {
                used_idx,
                last_used_idx: self.last_used_idx,
                in_flight: self.in_flight_chains,
            }));
        }
        Ok(pending)
    }

    /// Returns a completed chain's descriptors to the free list, following the driver's own
    /// links (never the descriptor table, which the device could have scribbled on).
    fn free_chain(&mut self, head: u16) -> Result<T, Error> {
        let in_flight = match self.slot_mut(head)?.head.take() {
            Some(in_flight) => in_flight,
            None => return Err(self.break_with(Error::BadUsedId { id: head.into() })),
        };
        let mut tail = head;
        for _ in 1..in_flight.descriptors {
            tail = self.slot(tail)?.next;
        }
        let old_free = self.free_head;
        self.slot_mut(tail)?.next = old_free;
        self.free_head = head;
        self.num_free = self.num_free.wrapping_add(in_flight.descriptors);
        self.in_flight_chains = self.in_flight_chains.wrapping_sub(1);
        Ok(in_flight.token)
    }

    /// A descriptor's driver-side record. Indices come from the driver's own free list, so a
    /// miss is an internal bug; it breaks the queue rather than panicking.
    fn slot(&self, index: u16) -> Result<&Slot<T>, Error> {
        self.slots.get(usize::from(index)).ok_or(Error::Broken)
    }

    fn slot_mut(&mut self, index: u16) -> Result<&mut Slot<T>, Error> {
        if usize::from(index) >= self.slots.len() {
            self.broken = true;
        }
        self.slots.get_mut(usize::from(index)).ok_or(Error::Broken)
    }
}

fn free_slots<T>(size: u16) -> Vec<Slot<T>> {
    (0..size)
        .map(|i| Slot {
            next: i.wrapping_add(1) & size.wrapping_sub(1),
            head: None,
        })
        .collect()
}

/// Zeroes the driver-owned ring fields (available flags, index, ring, `used_event`) and, for a
/// fresh queue, the used ring's header the device will own.
fn init_rings<M: QueueMemory>(memory: &mut M, layout: &QueueLayout) {
    memory.write_u16(layout.avail_flags(), 0);
    memory.write_u16(layout.avail_idx(), 0);
    memory.write_u16(layout.used_event(), 0);
    memory.write_u16(layout.used_flags(), 0);
    memory.write_u16(layout.used_idx(), 0);
    memory.write_u16(layout.avail_event(), 0);
}
