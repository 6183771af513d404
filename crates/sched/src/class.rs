//! Scheduling classes: real-time FIFO priorities and fair-class nice values with their weights.

use core::fmt;

use crate::SchedError;

/// A real-time FIFO priority, `1..=99`; a higher number wins (as Linux `SCHED_FIFO`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RtPriority(u8);

impl RtPriority {
    /// The lowest real-time priority.
    pub const MIN: RtPriority = RtPriority(1);
    /// The highest real-time priority.
    pub const MAX: RtPriority = RtPriority(99);
    /// The priority Linux gives threaded interrupt handlers (`MAX_USER_RT_PRIO / 2`).
    pub const IRQ_THREAD: RtPriority = RtPriority(50);

    /// A priority in `1..=99`.
    pub const fn new(priority: u8) -> Result<RtPriority, SchedError> {
        if priority >= Self::MIN.0 && priority <= Self::MAX.0 {
            Ok(RtPriority(priority))
        } else {
            Err(SchedError::PriorityOutOfRange(priority))
        }
    }

    /// The priority number, `1..=99`.
    pub const fn get(self) -> u8 {
        self.0
    }
}

/// A fair-class nice value, `-20..=19`; a lower value gets a larger share of the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Nice(i8);

/// Linux's `sched_prio_to_weight`: each nice step is worth about 10% of CPU time against a
/// task one step away (weights differ by ~1.25x); nice 0 weighs 1024.
const NICE_TO_WEIGHT: [u32; 40] = [
    88761, 71755, 56483, 46273, 36291, // -20 .. -16
    29154, 23254, 18705, 14949, 11916, // -15 .. -11
    9548, 7620, 6100, 4904, 3906, // -10 .. -6
    3121, 2501, 1991, 1586, 1277, // -5 .. -1
    1024, 820, 655, 526, 423, // 0 .. 4
    335, 272, 215, 172, 137, // 5 .. 9
    110, 87, 70, 56, 45, // 10 .. 14
    36, 29, 23, 18, 15, // 15 .. 19
];

impl Nice {
    /// The most favoured nice value.
    pub const MIN: Nice = Nice(-20);
    /// The least favoured nice value.
    pub const MAX: Nice = Nice(19);
    /// The default nice value.
    pub const DEFAULT: Nice = Nice(0);

    /// A nice value in `-20..=19`.
    pub const fn new(nice: i8) -> Result<Nice, SchedError> {
        if nice >= Self::MIN.0 && nice <= Self::MAX.0 {
            Ok(Nice(nice))
        } else {
            Err(SchedError::NiceOutOfRange(nice))
        }
    }

    /// The nice value, `-20..=19`.
    pub const fn get(self) -> i8 {
        self.0
    }

    /// The load weight: the share of CPU time relative to a nice-0 task's 1024.
    pub const fn weight(self) -> u32 {
        // The constructor keeps the value in -20..=19, so the index is in 0..40.
        NICE_TO_WEIGHT[(self.0 as i16 + 20) as usize]
    }
}

/// Which scheduling class a task belongs to, with its class parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchedClass {
    /// Real-time FIFO: runs until it blocks or yields; preempts every fair task and every
    /// lower-priority real-time task; equal priorities run in arrival order.
    RealTime(RtPriority),
    /// Fair: shares the CPU in proportion to weight, ordered by virtual runtime.
    Fair(Nice),
}

impl SchedClass {
    /// The fair class at nice 0: the default for kernel threads.
    pub const NORMAL: SchedClass = SchedClass::Fair(Nice::DEFAULT);

    /// Whether this is the real-time class.
    pub const fn is_real_time(self) -> bool {
        matches!(self, SchedClass::RealTime(_))
    }

    /// The real-time priority, if real-time.
    pub const fn rt_priority(self) -> Option<RtPriority> {
        match self {
            SchedClass::RealTime(priority) => Some(priority),
            SchedClass::Fair(_) => None,
        }
    }

    /// The fair-class load weight; `None` for real-time tasks, which have no weight.
    pub const fn fair_weight(self) -> Option<u32> {
        match self {
            SchedClass::Fair(nice) => Some(nice.weight()),
            SchedClass::RealTime(_) => None,
        }
    }
}

/// Renders as `ps` shows it: `FF 50` for FIFO priority 50, `TS 0` for fair nice 0.
impl fmt::Display for SchedClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedClass::RealTime(priority) => write!(f, "FF {}", priority.get()),
            SchedClass::Fair(nice) => write!(f, "TS {}", nice.get()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced() {
        assert!(RtPriority::new(0).is_err());
        assert!(RtPriority::new(100).is_err());
        assert_eq!(RtPriority::new(99).map(RtPriority::get), Ok(99));
        assert!(Nice::new(-21).is_err());
        assert!(Nice::new(20).is_err());
        assert_eq!(Nice::new(-20).map(Nice::weight), Ok(88761));
        assert_eq!(Nice::new(19).map(Nice::weight), Ok(15));
        assert_eq!(Nice::DEFAULT.weight(), 1024);
    }
}
