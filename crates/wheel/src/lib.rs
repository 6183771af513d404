//! Hierarchical, non-cascading timer wheel for coarse timeouts on u64 jiffies.
//!
//! Modelled on Linux's timer wheel since 4.8 (`kernel/time/timer.c`): [`LEVEL_DEPTH`] levels of
//! [`LEVEL_SIZE`] buckets, each level [`LEVEL_CLOCK_DIVISOR`] times coarser than the one below.
//! A timer is put once, into the finest level whose 64 upcoming buckets reach its expiry, and is
//! never moved again ("non-cascading"). The price is precision: a timer in level *n* is rounded
//! *up* to that level's granularity, so it may expire late by less than one granule, but it
//! never expires early. Timeouts (network retransmits, watchdogs, `poll` limits) are nearly
//! always cancelled before they expire, so an O(1) insert and cancel matter more than an exact
//! expiry; exact timers belong in the hrtimer queue (`lull-timerqueue`).
//!
//! # Granularity trade-off at HZ = 250 (one jiffy = 4 ms)
//!
//! | level | granularity            | timeouts placed here (delta from now) |
//! |-------|------------------------|----------------------------------------|
//! | 0     | 1 jiffy = 4 ms         | 0 – 63 jiffies      (0 – 252 ms)       |
//! | 1     | 8 jiffies = 32 ms      | up to 504 jiffies   (~2.0 s)           |
//! | 2     | 64 jiffies = 256 ms    | up to 4 032 jiffies (~16 s)            |
//! | 3     | 512 jiffies = 2.0 s    | up to 32 256        (~2.2 min)         |
//! | 4     | 4 096 jiffies = 16.4 s | up to 258 048       (~17 min)          |
//! | 5     | 32 768 = ~2.2 min      | up to 2 064 384     (~2.3 h)           |
//! | 6     | 262 144 = ~17.5 min    | up to 16 515 072    (~18 h)            |
//! | 7     | 2 097 152 = ~2.3 h     | up to 132 120 576   (~6.1 days)        |
//! | 8     | 16 777 216 = ~18.6 h   | up to 1 056 964 608 (~49 days)         |
//!
//! A timer placed in level *n* ≥ 1 is late by less than one granule of that level, which is
//! less than 8/63 ≈ 12.7 % of its timeout (it did not fit in level *n* − 1, so its timeout was
//! more than 63 granules of that level). Timeouts beyond the horizon ([`HORIZON_JIFFIES`],
//! ~49 days at HZ = 250) are parked in the farthest top-level bucket and re-queued when that
//! bucket comes due: like every other timer they still never expire early.
//!
//! # Wrapping
//!
//! Jiffies are a wrapping u64 counter. Expiries are always compared through the wrapping
//! difference `expires - now` read as a signed number (Linux's `time_after_eq`), never with
//! `>=`, so the wheel works across the wrap at `u64::MAX`. An expiry more than 2^63 jiffies
//! "ahead" therefore reads as being in the past and fires at once; callers that mean "never"
//! should not arm a timer at all.
//!
//! # Costs
//!
//! Insert, cancel and modify are O(1) (a slab of entries linked into intrusive doubly linked
//! bucket lists). [`TimerWheel::next_expiry`] is O([`LEVEL_DEPTH`]) using one occupancy bitmap
//! per level. [`TimerWheel::advance_to`] skips straight to the next occupied bucket, so catching
//! up after a long idle period costs per occupied bucket, not per elapsed jiffy.
//!
//! With many timers (100 000: the slab outgrows the cache) what costs is cache misses, so:
//! - Collecting a due bucket walks its list, a chain of dependent loads, one miss after the
//!   other. The walk goes in from both ends at once: two chains that do not wait for each
//!   other, so the CPU overlaps their misses.
//! - Collected timers go to a ready *array*, so handing them out reads entries whose indices
//!   are all known in advance (independent loads), instead of walking a second list. A
//!   timer cancelled while waiting there is replaced by the array's last one.
//! - Every timer collected together shares one bucket expiry, kept once instead of per entry.
//!
//! Timers due at the same jiffy are handed out in no promised order.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// log2 of the number of buckets per level.
pub const LEVEL_BITS: u32 = 6;
/// Buckets per level.
pub const LEVEL_SIZE: usize = 1 << LEVEL_BITS;
/// log2 of how much coarser each level is than the one below.
pub const LEVEL_CLOCK_SHIFT: u32 = 3;
/// How much coarser each level is than the one below.
pub const LEVEL_CLOCK_DIVISOR: u64 = 1 << LEVEL_CLOCK_SHIFT;
/// Number of levels (Linux uses 9 for HZ > 100).
pub const LEVEL_DEPTH: usize = 9;
/// Timeouts up to about this many jiffies are placed directly; longer ones are parked at the
/// horizon and re-queued (see the crate documentation).
pub const HORIZON_JIFFIES: u64 = level_range(LEVEL_DEPTH - 1);

const BUCKET_COUNT: usize = LEVEL_DEPTH * LEVEL_SIZE;
const LEVEL_MASK: u64 = LEVEL_SIZE as u64 - 1;
/// Room for this many due timers at once in the ready array from the start (256 bytes).
pub const READY_RESERVED: usize = 64;

/// Location of an entry that is due and waiting in the ready list.
const READY_LIST: u16 = BUCKET_COUNT as u16;
/// Location of an entry on the free list.
const FREE: u16 = u16::MAX;
const NONE: u32 = u32::MAX;

/// Granularity of `level` in jiffies.
pub const fn level_granularity(level: usize) -> u64 {
    1 << (level as u32 * LEVEL_CLOCK_SHIFT)
}

/// Largest timeout (in jiffies) that is always placed in `level` or a finer one.
pub const fn level_range(level: usize) -> u64 {
    LEVEL_MASK * level_granularity(level)
}

/// Signed wrapping distance `a - b` (Linux's `(long)(a - b)`).
#[inline]
fn wrapping_distance(a: u64, b: u64) -> i64 {
    a.wrapping_sub(b) as i64
}

/// True when `a` is at or after `b` on the wrapping jiffies line (`time_after_eq`).
#[inline]
pub fn time_after_eq(a: u64, b: u64) -> bool {
    wrapping_distance(a, b) >= 0
}

/// Names one armed wheel timer; refused once the timer expired or was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WheelHandle {
    index: u32,
    generation: u32,
}

impl WheelHandle {
    /// Slab index, stable while the timer is armed (a printable identity).
    pub fn index(self) -> u32 {
        self.index
    }
}

/// Errors from [`TimerWheel`] operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WheelError {
    /// The handle does not name an armed timer (it expired, was cancelled, or is foreign).
    StaleHandle,
    /// All 2^32 - 1 slab entries are in use or retired.
    Full,
}

impl fmt::Display for WheelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WheelError::StaleHandle => {
                f.write_str("wheel timer handle is stale: the timer is no longer armed")
            }
            WheelError::Full => f.write_str("timer wheel is full"),
        }
    }
}

/// A timer handed out by [`TimerWheel::pop_expired`] or [`TimerWheel::advance_to`].
#[derive(Debug, PartialEq, Eq)]
pub struct ExpiredTimer<T> {
    /// The handle it had while armed (now stale).
    pub handle: WheelHandle,
    /// The expiry it was armed with.
    pub expires: u64,
    /// The jiffy of the bucket it was collected from: `expires` rounded up to its level's
    /// granularity. Always at or after `expires`.
    pub bucket_expiry: u64,
    /// The caller's payload.
    pub value: T,
}

struct Entry<T> {
    expires: u64,
    generation: u32,
    /// In a bucket: the previous entry of its list.
    prev: u32,
    /// In a bucket: the next entry of its list. Ready: its position in the ready list.
    /// Free: the next free entry.
    next: u32,
    /// Bucket index, [`READY_LIST`], or [`FREE`].
    location: u16,
    value: Option<T>,
}

/// The timer wheel; see the crate documentation.
pub struct TimerWheel<T> {
    /// Next jiffy to process: every bucket expiry before it has been collected.
    clock: u64,
    entries: Vec<Entry<T>>,
    free_head: u32,
    /// Per bucket: first and last entry of its list.
    heads: Vec<u32>,
    tails: Vec<u32>,
    /// Due timers of the last collected bucket expiry; `ready[ready_next..]` are still to be
    /// handed out.
    ready: Vec<u32>,
    ready_next: usize,
    /// The bucket expiry the ready timers were collected at.
    ready_expiry: u64,
    /// Per level: bit *i* set when bucket *i* is non-empty.
    occupied: [u64; LEVEL_DEPTH],
    armed: usize,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose next jiffy to process is `now`.
    pub fn new(now: u64) -> Self {
        Self {
            clock: now,
            entries: Vec::new(),
            free_head: NONE,
            heads: vec![NONE; BUCKET_COUNT],
            tails: vec![NONE; BUCKET_COUNT],
            // Reserved up front: a CPU's first due timers are handed out from its timer
            // interrupt, which should not allocate, and a wheel whose ready array first grew
            // there would look like a leak to the heap counters of the kernel's leak tests.
            // More timers due together than this still grow it.
            ready: Vec::with_capacity(READY_RESERVED),
            ready_next: 0,
            ready_expiry: now,
            occupied: [0; LEVEL_DEPTH],
            armed: 0,
        }
    }

    /// The next jiffy the wheel will process (all earlier buckets are done).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Number of armed timers (including due ones not yet handed out).
    pub fn len(&self) -> usize {
        self.armed
    }

    /// True when no timer is armed.
    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    /// Arms a timer to expire at jiffy `expires`. It is handed out by the first
    /// [`advance_to`](Self::advance_to)/[`pop_expired`](Self::pop_expired) whose `now` is at or
    /// after `expires`, late by less than its level's granularity. An expiry already in the
    /// past fires on the next advance.
    pub fn insert(&mut self, expires: u64, value: T) -> Result<WheelHandle, WheelError> {
        let index = self.allocate(expires, value)?;
        self.place(index);
        self.armed += 1;
        Ok(WheelHandle {
            index,
            generation: self.entries[index as usize].generation,
        })
    }

    /// Disarms a timer and hands back its payload.
    pub fn cancel(&mut self, handle: WheelHandle) -> Result<T, WheelError> {
        let index = self.validate(handle)?;
        self.unlink(index);
        self.armed -= 1;
        self.release(index).ok_or(WheelError::StaleHandle)
    }

    /// Moves an armed timer to a new expiry, keeping its handle (Linux's `mod_timer`).
    pub fn modify(&mut self, handle: WheelHandle, expires: u64) -> Result<(), WheelError> {
        let index = self.validate(handle)?;
        self.unlink(index);
        self.entries[index as usize].expires = expires;
        self.place(index);
        Ok(())
    }

    /// True while `handle` names an armed timer.
    pub fn is_armed(&self, handle: WheelHandle) -> bool {
        self.validate(handle).is_ok()
    }

    /// The expiry an armed timer was armed with.
    pub fn expires(&self, handle: WheelHandle) -> Result<u64, WheelError> {
        let index = self.validate(handle)?;
        Ok(self.entries[index as usize].expires)
    }

    /// The payload of an armed timer.
    pub fn get(&self, handle: WheelHandle) -> Result<&T, WheelError> {
        let index = self.validate(handle)?;
        self.entries[index as usize]
            .value
            .as_ref()
            .ok_or(WheelError::StaleHandle)
    }

    /// The payload of an armed timer, mutably.
    pub fn get_mut(&mut self, handle: WheelHandle) -> Result<&mut T, WheelError> {
        let index = self.validate(handle)?;
        self.entries[index as usize]
            .value
            .as_mut()
            .ok_or(WheelError::StaleHandle)
    }

    /// The jiffy at which the wheel will next hand out a timer: the earliest occupied bucket's
    /// expiry, or a jiffy before [`clock`](Self::clock) when due timers are waiting. `None`
    /// when nothing is armed. This is what a tickless idle CPU may sleep until.
    pub fn next_expiry(&self) -> Option<u64> {
        if self.ready_next < self.ready.len() {
            return Some(self.clock.wrapping_sub(1));
        }
        self.next_bucket_expiry()
    }

    /// Hands out one timer that is due at `now`, advancing the wheel as far as needed (but
    /// never past `now`). Callers loop until `None`; between calls they may run the timer's
    /// callback, which may arm or cancel timers (a timer re-armed for `now` or earlier fires
    /// on the next advance, not in this one, so a callback cannot loop forever).
    pub fn pop_expired(&mut self, now: u64) -> Option<ExpiredTimer<T>> {
        loop {
            if let Some(&index) = self.ready.get(self.ready_next) {
                self.ready_next += 1;
                self.armed -= 1;
                let entry = &self.entries[index as usize];
                let handle = WheelHandle {
                    index,
                    generation: entry.generation,
                };
                let expires = entry.expires;
                let value = self.release(index)?;
                return Some(ExpiredTimer {
                    handle,
                    expires,
                    bucket_expiry: self.ready_expiry,
                    value,
                });
            }
            self.ready.clear();
            self.ready_next = 0;
            if !self.collect_next_bucket(now) {
                return None;
            }
        }
    }

    /// Advances the wheel to `now` and hands every due timer to `on_expired`, bucket by bucket.
    /// To arm timers from a callback, use [`pop_expired`](Self::pop_expired) in a loop instead.
    pub fn advance_to(&mut self, now: u64, mut on_expired: impl FnMut(ExpiredTimer<T>)) {
        while let Some(timer) = self.pop_expired(now) {
            on_expired(timer);
        }
    }

    /// Armed timers (bucket order, not expiry order) as `(handle, expires, payload)`.
    pub fn iter(&self) -> impl Iterator<Item = (WheelHandle, u64, &T)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| {
                let value = entry.value.as_ref()?;
                Some((
                    WheelHandle {
                        index: index as u32,
                        generation: entry.generation,
                    },
                    entry.expires,
                    value,
                ))
            })
    }

    fn validate(&self, handle: WheelHandle) -> Result<u32, WheelError> {
        match self.entries.get(handle.index as usize) {
            Some(entry) if entry.generation == handle.generation && entry.location != FREE => {
                Ok(handle.index)
            }
            _ => Err(WheelError::StaleHandle),
        }
    }

    fn allocate(&mut self, expires: u64, value: T) -> Result<u32, WheelError> {
        if self.free_head != NONE {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            self.free_head = entry.next;
            entry.expires = expires;
            entry.value = Some(value);
            entry.prev = NONE;
            entry.next = NONE;
            return Ok(index);
        }
        let index = u32::try_from(self.entries.len()).map_err(|_| WheelError::Full)?;
        if index == NONE {
            return Err(WheelError::Full);
        }
        self.entries.push(Entry {
            expires,
            generation: 0,
            prev: NONE,
            next: NONE,
            location: FREE,
            value: Some(value),
        });
        Ok(index)
    }

    /// Takes the payload out and recycles the entry (bumping its generation so old handles are
    /// refused; an entry whose generation would wrap is retired instead).
    fn release(&mut self, index: u32) -> Option<T> {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take();
        entry.location = FREE;
        entry.prev = NONE;
        entry.next = NONE;
        if let Some(next) = entry.generation.checked_add(1) {
            entry.generation = next;
            entry.next = self.free_head;
            self.free_head = index;
        }
        value
    }

    /// Chooses the bucket for entry `index` relative to the current clock and links it there.
    fn place(&mut self, index: u32) {
        let expires = self.entries[index as usize].expires;
        let bucket = self.bucket_for(expires);
        self.link(index, bucket);
    }

    /// The bucket for a timer expiring at `expires`. (Its bucket expiry is not kept: every
    /// timer collected together shares it, see `ready_expiry`.)
    fn bucket_for(&self, expires: u64) -> u16 {
        let clock = self.clock;
        if wrapping_distance(expires, clock) < 0 {
            // Already due: the next bucket to be processed.
            return (clock & LEVEL_MASK) as u16;
        }
        for level in 0..LEVEL_DEPTH {
            let shift = level as u32 * LEVEL_CLOCK_SHIFT;
            let granule = level_granularity(level);
            // Bucket numbers on this level, rounded up so the timer is never early. The
            // numbers live on a ring of 2^(64 - shift); their low 6 bits pick the bucket.
            let expires_slot = expires.wrapping_add(granule - 1) >> shift;
            let clock_slot = clock.wrapping_add(granule - 1) >> shift;
            let ring_mask = u64::MAX >> shift;
            let ahead = expires_slot.wrapping_sub(clock_slot) & ring_mask;
            if ahead <= LEVEL_MASK {
                return bucket_index(level, expires_slot);
            }
        }
        // Beyond the horizon: park in the farthest top-level bucket; it is re-queued (not
        // fired) when that bucket comes due, because its real expiry is still ahead.
        let level = LEVEL_DEPTH - 1;
        let shift = level as u32 * LEVEL_CLOCK_SHIFT;
        let clock_slot = clock.wrapping_add(level_granularity(level) - 1) >> shift;
        bucket_index(level, clock_slot.wrapping_add(LEVEL_MASK))
    }

    /// Appends entry `index` to `bucket`'s list (or to the ready list).
    fn link(&mut self, index: u32, bucket: u16) {
        if bucket == READY_LIST {
            // Positions fit u32: the ready list holds distinct slab indices, which are u32.
            let position = self.ready.len() as u32;
            self.ready.push(index);
            let entry = &mut self.entries[index as usize];
            entry.location = READY_LIST;
            entry.prev = NONE;
            entry.next = position;
            return;
        }
        let (level, position) = split_bucket(bucket);
        self.occupied[level] |= 1 << position;
        let tail = self.tails[bucket as usize];
        let entry = &mut self.entries[index as usize];
        entry.location = bucket;
        entry.prev = tail;
        entry.next = NONE;
        if tail == NONE {
            self.heads[bucket as usize] = index;
        } else {
            self.entries[tail as usize].next = index;
        }
        self.tails[bucket as usize] = index;
    }

    /// Takes entry `index` out of its bucket's list, or out of the ready list (whose last
    /// entry then moves into its place).
    fn unlink(&mut self, index: u32) {
        let (bucket, prev, next) = {
            let entry = &mut self.entries[index as usize];
            let place = (entry.location, entry.prev, entry.next);
            entry.prev = NONE;
            entry.next = NONE;
            place
        };
        if bucket == READY_LIST {
            let position = next as usize;
            if self.ready.get(position) != Some(&index) {
                // Not where the entry says it is: cannot happen while `next` is kept right.
                return;
            }
            self.ready.swap_remove(position);
            if let Some(&moved) = self.ready.get(position) {
                self.entries[moved as usize].next = position as u32;
            }
            return;
        }
        if prev == NONE {
            self.heads[bucket as usize] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NONE {
            self.tails[bucket as usize] = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        if prev == NONE && next == NONE {
            let (level, position) = split_bucket(bucket);
            self.occupied[level] &= !(1 << position);
        }
    }

    /// Earliest bucket expiry over all levels, scanning each level's bitmap from the next
    /// bucket that level will process.
    fn next_bucket_expiry(&self) -> Option<u64> {
        let mut best: Option<u64> = None;
        for level in 0..LEVEL_DEPTH {
            let bits = self.occupied[level];
            if bits == 0 {
                continue;
            }
            let shift = level as u32 * LEVEL_CLOCK_SHIFT;
            let clock_slot = self.clock.wrapping_add(level_granularity(level) - 1) >> shift;
            let start = (clock_slot & LEVEL_MASK) as u32;
            let ahead = u64::from(bits.rotate_right(start).trailing_zeros());
            let expiry = clock_slot.wrapping_add(ahead).wrapping_shl(shift);
            best = Some(match best {
                Some(current)
                    if expiry.wrapping_sub(self.clock) >= current.wrapping_sub(self.clock) =>
                {
                    current
                }
                _ => expiry,
            });
        }
        best
    }

    /// Moves entry `index`, just detached from a bucket collected at `due`, to the ready list
    /// if it is due, or back into the wheel if it was parked beyond the horizon.
    fn collect(&mut self, index: u32, due: u64) {
        if time_after_eq(due, self.entries[index as usize].expires) {
            self.link(index, READY_LIST);
        } else {
            self.place(index);
        }
    }

    /// Collects the next occupied bucket expiry if it is at or before `now`: its timers move
    /// to the ready list (or, if parked beyond the horizon, back into the wheel). Returns
    /// false when nothing more is due by `now` (the clock then moves to `now + 1`).
    fn collect_next_bucket(&mut self, now: u64) -> bool {
        if wrapping_distance(now, self.clock) < 0 {
            return false;
        }
        let due = match self.next_bucket_expiry() {
            Some(expiry) if wrapping_distance(now, expiry) >= 0 => expiry,
            _ => {
                // No bucket before `now`: skip the empty jiffies at once.
                self.clock = now.wrapping_add(1);
                return false;
            }
        };
        self.clock = due.wrapping_add(1);
        self.ready_expiry = due;
        for level in 0..LEVEL_DEPTH {
            let shift = level as u32 * LEVEL_CLOCK_SHIFT;
            if level > 0 && due & (level_granularity(level) - 1) != 0 {
                break;
            }
            let bucket = bucket_index(level, due >> shift);
            // Detach the whole list first: a parked timer may be re-queued into this very
            // bucket number (one lap later).
            let mut front = core::mem::replace(&mut self.heads[bucket as usize], NONE);
            let mut back = core::mem::replace(&mut self.tails[bucket as usize], NONE);
            self.occupied[level] &= !(1 << (bucket as usize % LEVEL_SIZE));
            // Walk in from both ends at once: two chains of loads that do not depend on each
            // other, so the CPU overlaps their cache misses (see the crate documentation).
            while front != NONE {
                if front == back {
                    self.collect(front, due);
                    break;
                }
                // Read both links before `collect` reuses them for the ready list.
                let after_front = self.entries[front as usize].next;
                let before_back = self.entries[back as usize].prev;
                self.collect(front, due);
                self.collect(back, due);
                if after_front == back {
                    break;
                }
                front = after_front;
                back = before_back;
            }
        }
        true
    }
}

fn bucket_index(level: usize, slot: u64) -> u16 {
    (level * LEVEL_SIZE + (slot & LEVEL_MASK) as usize) as u16
}

fn split_bucket(bucket: u16) -> (usize, usize) {
    (bucket as usize / LEVEL_SIZE, bucket as usize % LEVEL_SIZE)
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("clock", &self.clock)
            .field("armed", &self.armed)
            .field("next_expiry", &self.next_expiry())
            .finish()
    }
}

#[cfg(test)]
mod tests;
