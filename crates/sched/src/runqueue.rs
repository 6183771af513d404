//! One CPU's run queue: a FIFO list per real-time priority and the fair class's timeline.

use alloc::collections::{BTreeSet, VecDeque};
use alloc::vec::Vec;

use crate::{RtPriority, TaskId};

/// Position on the fair timeline: smallest virtual runtime first, then insertion order.
pub(crate) type FairKey = (u128, u64, TaskId);

/// Per-CPU scheduling state. The current task is *not* in the queues (Linux keeps the current
/// fair task out of its tree too); `nr_running` counts it.
#[derive(Clone, Debug)]
pub(crate) struct RunQueue {
    pub(crate) online: bool,
    pub(crate) current: Option<TaskId>,
    /// `rt_lists[p - 1]` holds the waiting tasks of priority `p`, in run order.
    rt_lists: Vec<VecDeque<TaskId>>,
    /// Bit `p` set when `rt_lists[p - 1]` is non-empty: the highest priority is one instruction.
    rt_bitmap: u128,
    rt_queued: usize,
    fair_timeline: BTreeSet<FairKey>,
    /// Sum of the weights of the fair tasks in the timeline.
    fair_queued_weight: u64,
    /// Monotonic floor of the fair timeline; placement of new and woken tasks is relative to it.
    pub(crate) min_vruntime: u128,
    /// A fair task to run next once, ahead of the timeline (set by `yield_to`).
    pub(crate) next_buddy: Option<TaskId>,
    /// The current task should be switched out at the next preemption point.
    pub(crate) need_resched: bool,
    /// The last time this queue accounted CPU time; never goes backwards.
    pub(crate) clock: u64,
    /// When the CPU went idle, while it is idle.
    pub(crate) idle_since: Option<u64>,
    pub(crate) idle_ns: u64,
    /// Steal time (the hypervisor ran something else while this CPU was runnable) reported
    /// by [`crate::Scheduler::account_steal`] and not yet taken off a charge.
    pub(crate) steal_pending: u64,
    /// All steal time reported for this CPU.
    pub(crate) steal_ns: u64,
    pub(crate) context_switches: u64,
    next_sequence: u64,
}

impl RunQueue {
    pub(crate) fn new(online: bool) -> RunQueue {
        RunQueue {
            online,
            current: None,
            rt_lists: (0..RtPriority::MAX.get())
                .map(|_| VecDeque::new())
                .collect(),
            rt_bitmap: 0,
            rt_queued: 0,
            fair_timeline: BTreeSet::new(),
            fair_queued_weight: 0,
            min_vruntime: 0,
            next_buddy: None,
            need_resched: false,
            clock: 0,
            idle_since: if online { Some(0) } else { None },
            idle_ns: 0,
            steal_pending: 0,
            steal_ns: 0,
            context_switches: 0,
            next_sequence: 0,
        }
    }

    /// Moves the queue clock to `now` (never backwards) and returns the queue's time.
    pub(crate) fn advance_clock(&mut self, now: u64) -> u64 {
        self.clock = self.clock.max(now);
        self.clock
    }

    /// Takes up to `elapsed` nanoseconds of pending steal time: the part of `elapsed` the CPU
    /// did not really run.
    pub(crate) fn take_steal(&mut self, elapsed: u64) -> u64 {
        let stolen = self.steal_pending.min(elapsed);
        self.steal_pending -= stolen;
        stolen
    }

    pub(crate) fn nr_queued(&self) -> usize {
        self.rt_queued + self.fair_timeline.len()
    }

    /// Tasks on this CPU: the waiting ones plus the current one.
    pub(crate) fn nr_running(&self) -> usize {
        self.nr_queued() + usize::from(self.current.is_some())
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.nr_running() == 0
    }

    pub(crate) fn rt_queued(&self) -> usize {
        self.rt_queued
    }

    pub(crate) fn fair_queued(&self) -> usize {
        self.fair_timeline.len()
    }

    pub(crate) fn fair_queued_weight(&self) -> u64 {
        self.fair_queued_weight
    }

    /// The highest priority with a waiting real-time task.
    pub(crate) fn highest_rt_queued(&self) -> Option<u8> {
        if self.rt_bitmap == 0 {
            None
        } else {
            Some((127 - self.rt_bitmap.leading_zeros()) as u8)
        }
    }

    pub(crate) fn next_sequence(&mut self) -> u64 {
        self.next_sequence += 1;
        self.next_sequence
    }

    /// Queues a real-time task behind its equals, or in front of them when it was preempted
    /// (a preempted FIFO task keeps its place, as in Linux).
    pub(crate) fn push_rt(&mut self, task: TaskId, priority: RtPriority, at_front: bool) {
        let priority = priority.get();
        if let Some(list) = self.rt_lists.get_mut(usize::from(priority) - 1) {
            if at_front {
                list.push_front(task);
            } else {
                list.push_back(task);
            }
            self.rt_bitmap |= 1 << priority;
            self.rt_queued += 1;
        }
    }

    pub(crate) fn remove_rt(&mut self, task: TaskId, priority: RtPriority) -> bool {
        let priority = priority.get();
        let Some(list) = self.rt_lists.get_mut(usize::from(priority) - 1) else {
            return false;
        };
        let Some(position) = list.iter().position(|&queued| queued == task) else {
            return false;
        };
        list.remove(position);
        if list.is_empty() {
            self.rt_bitmap &= !(1 << priority);
        }
        self.rt_queued -= 1;
        true
    }

    /// Takes the first task of the highest real-time priority.
    pub(crate) fn pop_rt(&mut self) -> Option<TaskId> {
        let priority = self.highest_rt_queued()?;
        let list = self.rt_lists.get_mut(usize::from(priority) - 1)?;
        let task = list.pop_front()?;
        if list.is_empty() {
            self.rt_bitmap &= !(1 << priority);
        }
        self.rt_queued -= 1;
        Some(task)
    }

    /// Real-time tasks waiting here with their priority: highest first, FIFO within a priority.
    pub(crate) fn rt_waiting(&self) -> impl Iterator<Item = (u8, TaskId)> + '_ {
        self.rt_lists
            .iter()
            .enumerate()
            .rev()
            .flat_map(|(index, list)| {
                // Index p - 1 holds priority p, and there are 99 lists.
                let priority = index as u8 + 1;
                list.iter().map(move |&task| (priority, task))
            })
    }

    /// Whether the priority bitmap and counter agree with the lists (for consistency checks).
    pub(crate) fn rt_bookkeeping_consistent(&self) -> bool {
        let mut bitmap = 0u128;
        let mut count = 0;
        for (index, list) in self.rt_lists.iter().enumerate() {
            if !list.is_empty() {
                bitmap |= 1 << (index + 1);
            }
            count += list.len();
        }
        bitmap == self.rt_bitmap && count == self.rt_queued
    }

    pub(crate) fn insert_fair(&mut self, key: FairKey, weight: u32) {
        if self.fair_timeline.insert(key) {
            self.fair_queued_weight += u64::from(weight);
        }
    }

    pub(crate) fn remove_fair(&mut self, key: FairKey, weight: u32) -> bool {
        let removed = self.fair_timeline.remove(&key);
        if removed {
            self.fair_queued_weight -= u64::from(weight);
            if self.next_buddy == Some(key.2) {
                self.next_buddy = None;
            }
        }
        removed
    }

    pub(crate) fn leftmost_fair(&self) -> Option<FairKey> {
        self.fair_timeline.first().copied()
    }

    pub(crate) fn rightmost_fair(&self) -> Option<FairKey> {
        self.fair_timeline.last().copied()
    }

    /// Fair tasks waiting here, smallest virtual runtime first.
    pub(crate) fn fair_waiting(&self) -> impl DoubleEndedIterator<Item = FairKey> + '_ {
        self.fair_timeline.iter().copied()
    }

    /// Raises `min_vruntime` to the smallest of the current fair task's and the leftmost
    /// waiting task's virtual runtime; it never goes down, so placement stays stable.
    pub(crate) fn update_min_vruntime(&mut self, current_fair_vruntime: Option<u128>) {
        let leftmost = self.fair_timeline.first().map(|key| key.0);
        let candidate = match (current_fair_vruntime, leftmost) {
            (Some(current), Some(left)) => current.min(left),
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => return,
        };
        self.min_vruntime = self.min_vruntime.max(candidate);
    }
}
