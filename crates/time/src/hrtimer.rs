//! High-resolution timers: per-CPU bases with one ordered queue per clock.
//!
//! Each CPU owns an [`HrTimerCpuBase`] (Linux's `struct hrtimer_cpu_base`) holding one
//! ordered queue ([`KeyedHeap`]) per clock ([`ClockId::Monotonic`], [`ClockId::Realtime`]).
//! Timers are persistent objects: [`HrTimerCpuBase::create`] makes one, `start`/`cancel`
//! queue and dequeue it as often as needed, `destroy` frees it — so a handle stays valid
//! across restarts, as a `struct hrtimer` embedded in its owner does in Linux.
//!
//! Range timers: a timer has a *soft* expiry (the earliest it may run) and a *hard* expiry
//! (soft + slack, the latest it should run). Queues are ordered by hard expiry and the device
//! is programmed for the earliest hard expiry over all clocks; when any interrupt comes, every
//! timer whose soft expiry has passed runs, so timers with slack batch into fewer wakeups.
//! A timer never runs before its soft expiry: [`HrTimerCpuBase::run_expired`] checks it
//! against the `now` it is given, whatever woke the CPU.
//!
//! The device is reprogrammed only when the earliest expiry changes (`expires_next`), which is
//! what keeps an idle CPU's timer interrupts to the ones it needs.
//!
//! Callbacks are identified by a caller-defined [`TimerFunction`] value (a function pointer
//! or an id) that also carries a `&'static str` name for `/proc/timer_list` and
//! `/proc/timer_stats`. The base does not call them itself: the interrupt code hands each due
//! timer to a dispatch closure, which returns [`HrTimerRestart`].
//!
//! Layout: start, cancel and expiry cost O(log n) in the queue, but with many timers what they
//! really pay for is cache misses on the per-timer records they touch at random. So each timer
//! has a 32-byte hot record (expiries, generation, state, clock, heap position), which is all
//! that start and cancel touch; the callback and data word sit in a parallel table read only
//! when the timer fires, and the [`StartInfo`] in another, read only by timer_list,
//! timer_stats and firing when one was recorded. The heap keeps each timer's position in the
//! hot record itself, so there is no second per-timer table in the queue. With 100 000
//! timers this keeps the cost per operation within 2x of that with 1 000
//! (`cargo run --release -p lull-time --example timer_scale`).

use alloc::vec::Vec;
use core::fmt;

use lull_timerqueue::KeyedHeap;

use crate::clockevents::{ClockEvent, ClockEventDevice, ClockEventError, ClockEventState};
use crate::timer_stats::StartInfo;

/// The clocks an hrtimer can be based on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClockId {
    /// Nanoseconds since boot; never jumps.
    Monotonic = 0,
    /// Wall-clock nanoseconds since the Unix epoch; jumps when the clock is set.
    Realtime = 1,
}

impl ClockId {
    /// All clocks, in base order.
    pub const ALL: [ClockId; CLOCK_BASES] = [ClockId::Monotonic, ClockId::Realtime];

    /// Linux's name of the function that reads this clock (timer_list's `.get_time`).
    pub fn get_time_name(self) -> &'static str {
        match self {
            ClockId::Monotonic => "ktime_get",
            ClockId::Realtime => "ktime_get_real",
        }
    }
}

/// Number of clock bases per CPU.
pub const CLOCK_BASES: usize = 2;

/// How `start` interprets its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HrTimerMode {
    /// Expiry is an absolute time on the timer's clock.
    Absolute,
    /// Expiry is a delay from now.
    Relative,
}

/// What a callback wants done with its timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HrTimerRestart {
    /// The timer stays inactive.
    NoRestart,
    /// Re-queue the timer at its (usually forwarded) expiry.
    Restart,
}

/// Identity of a timer callback: a copyable value (function pointer, enum, id) with a name.
pub trait TimerFunction: Copy {
    /// Name printed in `/proc/timer_list` and `/proc/timer_stats` (`tick_sched_timer`).
    fn name(&self) -> &'static str;
}

/// Names one hrtimer object of one [`HrTimerCpuBase`]; refused after `destroy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HrTimerId {
    index: u32,
    generation: u32,
}

impl HrTimerId {
    /// Slot index: a stable printable identity (timer_list's `<address>` column).
    pub fn index(self) -> u32 {
        self.index
    }
}

/// Errors from hrtimer operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HrTimerError {
    /// The id does not name a live timer of this base.
    StaleId,
    /// No more timer objects can be created.
    Full,
    /// `forward` on a queued timer (cancel it first, or forward inside its callback).
    Queued,
    /// `forward` with a zero interval.
    ZeroInterval,
    /// The timer is queued, but programming the event device failed.
    Device(ClockEventError),
}

impl fmt::Display for HrTimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HrTimerError::StaleId => f.write_str("hrtimer: stale timer id"),
            HrTimerError::Full => f.write_str("hrtimer: no free timer slots"),
            HrTimerError::Queued => f.write_str("hrtimer: cannot forward a queued timer"),
            HrTimerError::ZeroInterval => f.write_str("hrtimer: forward interval is 0"),
            HrTimerError::Device(error) => write!(f, "hrtimer: {error}"),
        }
    }
}

/// Where a timer object is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerState {
    /// Destroyed (or never created); `link` is the next free slot.
    Free,
    /// Created, not queued.
    Inactive,
    /// In its clock's heap at position `link`.
    Enqueued,
    /// Its callback is being dispatched.
    Running,
}

/// The part of a timer that start, cancel and expiry touch, and nothing else: 32 bytes, two
/// per cache line. With 100 000 timers these records are touched at random, so their size is
/// what decides whether they stay in the cache; everything else lives in [`FireInfo`] (read
/// when the timer fires) and the `starts` table (read only when a start was recorded).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
struct HotTimer {
    soft_expires: u64,
    hard_expires: u64,
    generation: u32,
    /// Enqueued: heap position in its clock's queue (kept by the heap's `moved` reports).
    /// Free: the next free slot.
    link: u32,
    state: TimerState,
    clock: ClockId,
    /// `starts` holds a recorded start for this timer.
    has_start: bool,
}

const _: () = assert!(core::mem::size_of::<HotTimer>() == 32);

/// What only firing needs: the callback identity and its data word.
#[derive(Clone, Copy, Debug)]
struct FireInfo<F> {
    function: F,
    data: u64,
}

const NO_SLOT: u32 = u32::MAX;

/// Moves `expires` forward by whole `interval`s until it is after `now`; returns how many
/// intervals were added (Linux's `hrtimer_forward`: 0 when `now` is still before `expires`).
fn forward_expiry(soft: &mut u64, hard: &mut u64, now: u64, interval: u64) -> u64 {
    if now < *hard {
        return 0;
    }
    let delta = now - *hard;
    let overruns = delta / interval + 1;
    let add = overruns.saturating_mul(interval);
    *soft = soft.saturating_add(add);
    *hard = hard.saturating_add(add);
    overruns
}

/// A due timer handed to the dispatch closure of [`HrTimerCpuBase::run_expired`].
#[derive(Debug)]
pub struct FiringTimer<F> {
    id: HrTimerId,
    clock: ClockId,
    function: F,
    data: u64,
    soft_expires: u64,
    hard_expires: u64,
    now: u64,
    start: Option<StartInfo>,
}

impl<F: Copy> FiringTimer<F> {
    /// The timer's id.
    pub fn id(&self) -> HrTimerId {
        self.id
    }
    /// Its clock.
    pub fn clock(&self) -> ClockId {
        self.clock
    }
    /// Its callback identity.
    pub fn function(&self) -> F {
        self.function
    }
    /// The data word given at `create`.
    pub fn data(&self) -> u64 {
        self.data
    }
    /// Current time on the timer's clock.
    pub fn now(&self) -> u64 {
        self.now
    }
    /// Soft expiry (never after `now`).
    pub fn soft_expires(&self) -> u64 {
        self.soft_expires
    }
    /// Hard expiry.
    pub fn hard_expires(&self) -> u64 {
        self.hard_expires
    }
    /// Who started it, if recorded.
    pub fn start_info(&self) -> Option<&StartInfo> {
        self.start.as_ref()
    }
    /// Pushes the expiry forward by whole `interval`s past now (for periodic timers);
    /// returns the number of intervals added (overruns). A zero interval adds nothing.
    pub fn forward(&mut self, interval: u64) -> u64 {
        if interval == 0 {
            return 0;
        }
        forward_expiry(
            &mut self.soft_expires,
            &mut self.hard_expires,
            self.now,
            interval,
        )
    }
    /// Sets a new absolute expiry with `slack` (for a restart at an arbitrary time).
    pub fn set_expires(&mut self, expires: u64, slack: u64) {
        self.soft_expires = expires;
        self.hard_expires = expires.saturating_add(slack);
    }
}

/// A queued timer as listed by [`HrTimerCpuBase::queued`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedHrTimer<F> {
    /// Its id.
    pub id: HrTimerId,
    /// Its callback identity.
    pub function: F,
    /// Soft expiry on its clock.
    pub soft_expires: u64,
    /// Hard expiry on its clock.
    pub hard_expires: u64,
    /// Who started it.
    pub start: Option<StartInfo>,
}

/// Counters shown in `/proc/timer_list`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HrTimerCounters {
    /// Interrupts handled.
    pub nr_events: u64,
    /// Times the next event was already due when programming it.
    pub nr_retries: u64,
    /// Interrupt-storm hangs detected (Lull never loops, so this stays 0).
    pub nr_hangs: u64,
    /// Longest hang in ns.
    pub max_hang_time: u64,
}

/// One CPU's hrtimers; see the module documentation.
///
/// Context: a CPU's base is only touched by that CPU with interrupts disabled (the kernel
/// reaches it through its per-CPU, interrupts-off guard).
pub struct HrTimerCpuBase<F> {
    cpu: u32,
    /// Per timer slot, indexed by [`HrTimerId::index`]: the hot record...
    timers: Vec<HotTimer>,
    /// ...what firing needs (stale in free slots; overwritten by `create`)...
    fire: Vec<FireInfo<F>>,
    /// ...and who last started it (timer_stats, timer_list).
    starts: Vec<Option<StartInfo>>,
    free_head: u32,
    /// Per clock: the timers queued on it, by hard expiry, keyed by slot index.
    queues: [KeyedHeap; CLOCK_BASES],
    realtime_offset_ns: i64,
    /// Monotonic ns the device is programmed for (`u64::MAX`: nothing).
    expires_next: u64,
    hres_active: bool,
    /// Inside `interrupt`: programming is deferred to its end.
    in_interrupt: bool,
    counters: HrTimerCounters,
}

impl<F: TimerFunction> HrTimerCpuBase<F> {
    /// An empty base for `cpu`, in low-resolution mode until
    /// [`switch_to_high_res`](Self::switch_to_high_res).
    pub fn new(cpu: u32) -> Self {
        Self {
            cpu,
            timers: Vec::new(),
            fire: Vec::new(),
            starts: Vec::new(),
            free_head: NO_SLOT,
            queues: [KeyedHeap::new(), KeyedHeap::new()],
            realtime_offset_ns: 0,
            expires_next: u64::MAX,
            hres_active: false,
            in_interrupt: false,
            counters: HrTimerCounters::default(),
        }
    }

    /// The CPU this base belongs to.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// True once the device is programmed event by event.
    pub fn hres_active(&self) -> bool {
        self.hres_active
    }

    /// Monotonic ns the device is programmed for, if any.
    pub fn expires_next(&self) -> Option<u64> {
        (self.expires_next != u64::MAX).then_some(self.expires_next)
    }

    /// Counters for timer_list.
    pub fn counters(&self) -> HrTimerCounters {
        self.counters
    }

    /// Realtime minus monotonic, as last set.
    pub fn realtime_offset_ns(&self) -> i64 {
        self.realtime_offset_ns
    }

    /// The time on `clock` when monotonic time is `now`.
    pub fn clock_now(&self, clock: ClockId, now: u64) -> u64 {
        match clock {
            ClockId::Monotonic => now,
            ClockId::Realtime => saturate(i128::from(now) + i128::from(self.realtime_offset_ns)),
        }
    }

    /// Monotonic time of `expires` on `clock`.
    fn to_monotonic(&self, clock: ClockId, expires: u64) -> u64 {
        match clock {
            ClockId::Monotonic => expires,
            ClockId::Realtime if expires == u64::MAX => u64::MAX,
            ClockId::Realtime => {
                saturate(i128::from(expires) - i128::from(self.realtime_offset_ns))
            }
        }
    }

    /// Creates an inactive timer on `clock` that will run `function` with `data`.
    pub fn create(
        &mut self,
        clock: ClockId,
        function: F,
        data: u64,
    ) -> Result<HrTimerId, HrTimerError> {
        let fire = FireInfo { function, data };
        if self.free_head != NO_SLOT {
            let index = self.free_head;
            let slot = index as usize;
            let timer = &mut self.timers[slot];
            self.free_head = timer.link;
            *timer = HotTimer {
                soft_expires: 0,
                hard_expires: 0,
                generation: timer.generation,
                link: NO_SLOT,
                state: TimerState::Inactive,
                clock,
                has_start: false,
            };
            let generation = timer.generation;
            self.fire[slot] = fire;
            self.starts[slot] = None;
            return Ok(HrTimerId { index, generation });
        }
        let index = u32::try_from(self.timers.len()).map_err(|_| HrTimerError::Full)?;
        if index == NO_SLOT {
            return Err(HrTimerError::Full);
        }
        self.timers.push(HotTimer {
            soft_expires: 0,
            hard_expires: 0,
            generation: 0,
            link: NO_SLOT,
            state: TimerState::Inactive,
            clock,
            has_start: false,
        });
        self.fire.push(fire);
        self.starts.push(None);
        Ok(HrTimerId {
            index,
            generation: 0,
        })
    }

    fn timer(&self, id: HrTimerId) -> Result<&HotTimer, HrTimerError> {
        match self.timers.get(id.index as usize) {
            Some(timer) if timer.generation == id.generation && timer.state != TimerState::Free => {
                Ok(timer)
            }
            _ => Err(HrTimerError::StaleId),
        }
    }

    /// Cancels (if queued) and frees a timer; its id is refused afterwards.
    pub fn destroy<D: ClockEventDevice>(
        &mut self,
        device: &mut ClockEvent<D>,
        id: HrTimerId,
        now: u64,
    ) -> Result<(), HrTimerError> {
        // Validate first: a stale id must not free the slot's new owner.
        self.timer(id)?;
        let cancel = self.cancel(device, id, now);
        let slot = id.index as usize;
        self.starts[slot] = None;
        let timer = &mut self.timers[slot];
        timer.state = TimerState::Free;
        timer.has_start = false;
        timer.link = NO_SLOT;
        // A slot whose generation would wrap is retired (never reused): a wrapped generation
        // could make an ancient id valid again.
        if let Some(next) = timer.generation.checked_add(1) {
            timer.generation = next;
            timer.link = self.free_head;
            self.free_head = id.index;
        }
        cancel.map(|_| ())
    }

    /// Queues timer `id` to expire at `expires` (absolute on its clock, or relative to
    /// `now`), no earlier than that and ideally no later than `expires + slack_ns`. A queued
    /// timer is moved. `now` is monotonic ns. The device is reprogrammed only if the earliest
    /// expiry changed. If programming fails the timer stays queued and the error is returned.
    #[allow(clippy::too_many_arguments, reason = "mirrors hrtimer_start_range_ns")]
    pub fn start<D: ClockEventDevice>(
        &mut self,
        device: &mut ClockEvent<D>,
        id: HrTimerId,
        expires: u64,
        mode: HrTimerMode,
        slack_ns: u64,
        now: u64,
        start: Option<StartInfo>,
    ) -> Result<(), HrTimerError> {
        self.enqueue(id, expires, mode, slack_ns, now, start)?;
        self.reprogram(device, now)
    }

    /// Queues without touching the device (low-resolution mode, or batched by the caller).
    pub(crate) fn enqueue(
        &mut self,
        id: HrTimerId,
        expires: u64,
        mode: HrTimerMode,
        slack_ns: u64,
        now: u64,
        start: Option<StartInfo>,
    ) -> Result<(), HrTimerError> {
        let timer = *self.timer(id)?;
        let clock = timer.clock;
        let soft = match mode {
            HrTimerMode::Absolute => expires,
            HrTimerMode::Relative => self.clock_now(clock, now).saturating_add(expires),
        };
        let hard = soft.saturating_add(slack_ns);
        let timers = &mut self.timers;
        let queue = &mut self.queues[clock as usize];
        let mut moved = |key: u32, position: u32| set_link(timers, key, position);
        // Re-arming a queued timer moves it in place (it goes behind equal expiries, as a
        // fresh insert would) instead of a remove plus an insert.
        let moved_in_place = timer.state == TimerState::Enqueued
            && queue
                .set_expiry(timer.link, id.index, hard, &mut moved)
                .is_ok();
        if !moved_in_place {
            if timer.state == TimerState::Enqueued {
                // Unreachable while the position index is kept right; stay consistent anyway.
                let _ = queue.remove(timer.link, id.index, &mut moved);
            }
            queue
                .push(hard, id.index, &mut moved)
                .map_err(|_| HrTimerError::Full)?;
        }
        let timer = &mut self.timers[id.index as usize];
        timer.soft_expires = soft;
        timer.hard_expires = hard;
        timer.state = TimerState::Enqueued;
        if start.is_some() {
            timer.has_start = true;
            self.starts[id.index as usize] = start;
        }
        Ok(())
    }

    /// Removes `id` from its queue if queued; returns whether it was.
    fn dequeue(&mut self, id: HrTimerId) -> Result<bool, HrTimerError> {
        let timer = *self.timer(id)?;
        if timer.state != TimerState::Enqueued {
            return Ok(false);
        }
        let timers = &mut self.timers;
        let _ = self.queues[timer.clock as usize].remove(timer.link, id.index, |key, position| {
            set_link(timers, key, position)
        });
        let timer = &mut self.timers[id.index as usize];
        timer.state = TimerState::Inactive;
        timer.link = NO_SLOT;
        Ok(true)
    }

    /// Dequeues timer `id`; returns whether it was queued. Reprograms the device if it was
    /// the earliest.
    pub fn cancel<D: ClockEventDevice>(
        &mut self,
        device: &mut ClockEvent<D>,
        id: HrTimerId,
        now: u64,
    ) -> Result<bool, HrTimerError> {
        let was_queued = self.dequeue(id)?;
        if was_queued {
            self.reprogram(device, now)?;
        }
        Ok(was_queued)
    }

    /// Moves an *inactive* timer's expiry forward by whole `interval`s past `now` (on its
    /// clock); returns the overrun count. Queued timers are refused.
    pub fn forward(&mut self, id: HrTimerId, now: u64, interval: u64) -> Result<u64, HrTimerError> {
        if interval == 0 {
            return Err(HrTimerError::ZeroInterval);
        }
        let clock = self.timer(id)?.clock;
        let clock_now = self.clock_now(clock, now);
        let timer = &mut self.timers[id.index as usize];
        if timer.state == TimerState::Enqueued {
            return Err(HrTimerError::Queued);
        }
        Ok(forward_expiry(
            &mut timer.soft_expires,
            &mut timer.hard_expires,
            clock_now,
            interval,
        ))
    }

    /// True while the timer is queued.
    pub fn is_queued(&self, id: HrTimerId) -> bool {
        self.timer(id)
            .is_ok_and(|t| t.state == TimerState::Enqueued)
    }

    /// `(soft, hard)` expiry of a timer on its clock (its last values if inactive).
    pub fn expires(&self, id: HrTimerId) -> Result<(u64, u64), HrTimerError> {
        self.timer(id).map(|t| (t.soft_expires, t.hard_expires))
    }

    /// The recorded start of the timer in `slot`; the `starts` table is read only when
    /// there is one.
    fn start_of(&self, timer: &HotTimer, slot: usize) -> Option<StartInfo> {
        if timer.has_start {
            self.starts.get(slot).copied().flatten()
        } else {
            None
        }
    }

    /// Nanoseconds from `now` (monotonic) to the timer's soft expiry (negative if past).
    pub fn remaining(&self, id: HrTimerId, now: u64) -> Result<i64, HrTimerError> {
        let timer = self.timer(id)?;
        let clock_now = self.clock_now(timer.clock, now);
        Ok(saturate_i64(
            i128::from(timer.soft_expires) - i128::from(clock_now),
        ))
    }

    /// Earliest hard expiry over all clocks, in monotonic ns.
    pub fn next_event(&self) -> Option<u64> {
        self.next_event_without(None)
    }

    /// Earliest hard expiry over all clocks ignoring timer `excluded` (tick-sched asks this
    /// without its own tick timer, like Linux's `hrtimer_next_event_without`).
    pub fn next_event_without(&self, excluded: Option<HrTimerId>) -> Option<u64> {
        let mut best = u64::MAX;
        for clock in ClockId::ALL {
            let queue = &self.queues[clock as usize];
            // The cached head is O(1); only when it is the excluded timer do we look behind it.
            let head_expiry = match queue.peek() {
                None => continue,
                Some(head) if Some(head.key) != excluded.map(|e| e.index) => head.expiry,
                Some(_) => match queue.iter().nth(1) {
                    Some(second) => second.expiry,
                    None => continue,
                },
            };
            best = best.min(self.to_monotonic(clock, head_expiry));
        }
        (best != u64::MAX).then_some(best)
    }

    /// Queued timers of `clock` in expiry order.
    pub fn queued(&self, clock: ClockId) -> impl Iterator<Item = QueuedHrTimer<F>> + '_ {
        self.queues[clock as usize].iter().filter_map(move |entry| {
            let slot = entry.key as usize;
            let timer = self.timers.get(slot)?;
            Some(QueuedHrTimer {
                id: HrTimerId {
                    index: entry.key,
                    generation: timer.generation,
                },
                function: self.fire.get(slot)?.function,
                soft_expires: timer.soft_expires,
                hard_expires: timer.hard_expires,
                start: self.start_of(timer, slot),
            })
        })
    }

    /// Number of queued timers over all clocks.
    pub fn queued_count(&self) -> usize {
        self.queues.iter().map(KeyedHeap::len).sum()
    }

    /// Enters high-resolution mode: from now on the device (in one-shot state) is programmed
    /// for the earliest expiry.
    pub fn switch_to_high_res<D: ClockEventDevice>(
        &mut self,
        device: &mut ClockEvent<D>,
        now: u64,
    ) -> Result<(), HrTimerError> {
        self.hres_active = true;
        self.expires_next = u64::MAX;
        self.reprogram(device, now)
    }

    /// The wall clock was set: realtime timers are re-evaluated against the new offset
    /// (Linux's `clock_was_set` → `retrigger_next_event`).
    pub fn set_realtime_offset<D: ClockEventDevice>(
        &mut self,
        device: &mut ClockEvent<D>,
        realtime_offset_ns: i64,
        now: u64,
    ) -> Result<(), HrTimerError> {
        self.realtime_offset_ns = realtime_offset_ns;
        self.reprogram(device, now)
    }

    /// Programs the device for the earliest expiry if it changed. No-op in low-res mode and
    /// inside `interrupt` (which programs once at its end).
    pub(crate) fn reprogram<D: ClockEventDevice>(
        &mut self,
        device: &mut ClockEvent<D>,
        now: u64,
    ) -> Result<(), HrTimerError> {
        if !self.hres_active || self.in_interrupt {
            return Ok(());
        }
        let next = self.next_event().unwrap_or(u64::MAX);
        if next == self.expires_next {
            return Ok(());
        }
        let earlier_head = next < self.expires_next;
        self.expires_next = next;
        // A new head the device cannot reach sooner than it is already armed: leave the armed
        // event. An expiry closer than the device's minimum delta (or already past) would be
        // programmed at `now + min_delta`, which can be *later* than the event armed for the
        // old head; moving it there made that old head's timer late (found by the property
        // test `never_early_and_on_time`). The armed interrupt runs the new head as well.
        if earlier_head && device.state() == ClockEventState::OneShot {
            if let Some(armed) = device.next_event_ns() {
                if armed <= next.max(now.saturating_add(device.min_delta_ns())) {
                    return Ok(());
                }
            }
        }
        program_tick_device(device, next, now).map_err(HrTimerError::Device)
    }

    /// The event device interrupted (Linux's `hrtimer_interrupt`): runs every due timer,
    /// then programs the device for the next expiry. Returns the number of callbacks run.
    pub fn interrupt<D: ClockEventDevice>(
        &mut self,
        device: &mut ClockEvent<D>,
        now: u64,
        dispatch: impl FnMut(&mut FiringTimer<F>) -> HrTimerRestart,
    ) -> Result<usize, HrTimerError> {
        self.counters.nr_events += 1;
        self.in_interrupt = true;
        let ran = self.run_expired(now, dispatch);
        self.in_interrupt = false;
        let next = self.next_event().unwrap_or(u64::MAX);
        if next <= now {
            self.counters.nr_retries += 1;
        }
        if self.hres_active {
            // Always program here: the event the device was armed for has been consumed.
            self.expires_next = next;
            program_tick_device(device, next, now).map_err(HrTimerError::Device)?;
        }
        Ok(ran)
    }

    /// Runs every timer whose soft expiry is at or before `now` (monotonic; realtime timers
    /// are compared on the realtime clock), in hard-expiry order per clock. Callbacks that
    /// return [`HrTimerRestart::Restart`] are re-queued *after* this pass, so a callback that
    /// restarts without moving its expiry runs again at the next interrupt instead of looping.
    /// Does not touch the device (low-resolution mode calls this from the tick).
    pub fn run_expired(
        &mut self,
        now: u64,
        mut dispatch: impl FnMut(&mut FiringTimer<F>) -> HrTimerRestart,
    ) -> usize {
        let mut ran = 0;
        // Timers restarted by their callback, chained through their (unused while not queued)
        // `link` in firing order: no allocation in the interrupt, and no scratch list whose
        // capacity would grow the first time a CPU restarts a timer.
        let (mut restart_head, mut restart_tail) = (NO_SLOT, NO_SLOT);
        for clock in ClockId::ALL {
            let clock_now = self.clock_now(clock, now);
            while let Some(head) = self.queues[clock as usize].peek() {
                let index = head.key;
                let slot = index as usize;
                let Some(&timer) = self.timers.get(slot) else {
                    break;
                };
                if timer.soft_expires > clock_now {
                    // Never early: the head's soft expiry is not reached; slack timers behind
                    // it wait too (their hard expiry is later still).
                    break;
                }
                let timers = &mut self.timers;
                let _ = self.queues[clock as usize]
                    .pop(|key, position| set_link(timers, key, position));
                let Some(&fire) = self.fire.get(slot) else {
                    break;
                };
                let mut firing = FiringTimer {
                    id: HrTimerId {
                        index,
                        generation: timer.generation,
                    },
                    clock,
                    function: fire.function,
                    data: fire.data,
                    soft_expires: timer.soft_expires,
                    hard_expires: timer.hard_expires,
                    now: clock_now,
                    start: self.start_of(&timer, slot),
                };
                let running = &mut self.timers[slot];
                running.state = TimerState::Running;
                running.link = NO_SLOT;
                let restart = dispatch(&mut firing);
                ran += 1;
                let timer = &mut self.timers[slot];
                timer.state = TimerState::Inactive;
                timer.soft_expires = firing.soft_expires;
                timer.hard_expires = firing.hard_expires;
                if restart == HrTimerRestart::Restart {
                    match self.timers.get_mut(restart_tail as usize) {
                        Some(tail) => tail.link = index,
                        None => restart_head = index,
                    }
                    restart_tail = index;
                }
            }
        }
        let mut next = restart_head;
        while let Some(timer) = self.timers.get_mut(next as usize) {
            let index = next;
            next = core::mem::replace(&mut timer.link, NO_SLOT);
            let id = HrTimerId {
                index,
                generation: timer.generation,
            };
            let (soft, hard) = (timer.soft_expires, timer.hard_expires);
            let _ = self.enqueue(id, soft, HrTimerMode::Absolute, hard - soft, now, None);
        }
        ran
    }
}

/// Records a heap position reported by a queue's `moved` callback in the timer's hot record.
#[inline]
fn set_link(timers: &mut [HotTimer], key: u32, position: u32) {
    // Keys are slot indices of queued timers, so the slot exists.
    if let Some(timer) = timers.get_mut(key as usize) {
        timer.link = position;
    }
}

/// Programs a one-shot tick device for `expires` (monotonic; `u64::MAX` = nothing to do),
/// moving it between `OneShot` and `OneShotStopped` as needed (Linux's `tick_program_event`).
/// An expiry already due programs the minimum delta.
pub(crate) fn program_tick_device<D: ClockEventDevice>(
    device: &mut ClockEvent<D>,
    expires: u64,
    now: u64,
) -> Result<(), ClockEventError> {
    if expires == u64::MAX {
        if device.state() == ClockEventState::OneShot {
            device.switch_state(ClockEventState::OneShotStopped)?;
        }
        return Ok(());
    }
    if device.state() == ClockEventState::OneShotStopped {
        device.switch_state(ClockEventState::OneShot)?;
    }
    device.program_event(expires, now, true)
}

fn saturate(value: i128) -> u64 {
    value.clamp(0, i128::from(u64::MAX)) as u64
}

fn saturate_i64(value: i128) -> i64 {
    value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests;
