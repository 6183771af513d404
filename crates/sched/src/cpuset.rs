//! CPU numbers and CPU sets (affinity masks, the online mask) as a 64-bit bitmap.

use core::fmt;

/// A CPU number, `0..CpuSet::CAPACITY`.
pub type CpuId = usize;

/// A set of CPUs, one bit per CPU: affinity masks and the online mask.
///
/// Lull supports at most [`CpuSet::CAPACITY`] CPUs. Operations on CPU numbers outside that range
/// never panic: they find nothing and change nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuSet(u64);

impl CpuSet {
    /// The largest number of CPUs a set can describe.
    pub const CAPACITY: usize = 64;

    /// The empty set.
    pub const EMPTY: CpuSet = CpuSet(0);

    /// Every CPU Lull can number (`0..64`): the default affinity of a new task.
    pub const ALL: CpuSet = CpuSet(u64::MAX);

    /// The set whose bit `n` stands for CPU `n`.
    pub const fn from_bits(bits: u64) -> CpuSet {
        CpuSet(bits)
    }

    /// The bitmap: bit `n` set when CPU `n` is in the set.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The set holding only `cpu` (empty when `cpu` is out of range).
    pub const fn single(cpu: CpuId) -> CpuSet {
        if cpu < Self::CAPACITY {
            CpuSet(1 << cpu)
        } else {
            CpuSet::EMPTY
        }
    }

    /// CPUs `0..count` (all 64 when `count` is 64 or more).
    pub const fn first(count: usize) -> CpuSet {
        if count >= Self::CAPACITY {
            CpuSet::ALL
        } else {
            CpuSet((1u64 << count) - 1)
        }
    }

    /// Whether `cpu` is in the set.
    pub const fn contains(self, cpu: CpuId) -> bool {
        cpu < Self::CAPACITY && self.0 & (1 << cpu) != 0
    }

    /// This set plus `cpu`.
    #[must_use]
    pub const fn with(self, cpu: CpuId) -> CpuSet {
        CpuSet(self.0 | Self::single(cpu).0)
    }

    /// This set without `cpu`.
    #[must_use]
    pub const fn without(self, cpu: CpuId) -> CpuSet {
        CpuSet(self.0 & !Self::single(cpu).0)
    }

    /// CPUs in both sets.
    #[must_use]
    pub const fn intersection(self, other: CpuSet) -> CpuSet {
        CpuSet(self.0 & other.0)
    }

    /// CPUs in either set.
    #[must_use]
    pub const fn union(self, other: CpuSet) -> CpuSet {
        CpuSet(self.0 | other.0)
    }

    /// Whether the set holds no CPU.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// How many CPUs the set holds.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The lowest-numbered CPU in the set.
    pub const fn first_cpu(self) -> Option<CpuId> {
        if self.0 == 0 {
            None
        } else {
            Some(self.0.trailing_zeros() as CpuId)
        }
    }

    /// The CPUs of the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = CpuId> {
        let mut rest = self.0;
        core::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let cpu = rest.trailing_zeros() as CpuId;
            rest &= rest - 1;
            Some(cpu)
        })
    }
}

impl FromIterator<CpuId> for CpuSet {
    fn from_iter<I: IntoIterator<Item = CpuId>>(cpus: I) -> Self {
        cpus.into_iter().fold(CpuSet::EMPTY, CpuSet::with)
    }
}

/// Renders as a Linux CPU list (`0-3,6`), the form of `/proc/<pid>/status`'s `Cpus_allowed_list`.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut cpus = self.iter().peekable();
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if end == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    #[test]
    fn out_of_range_cpus_are_ignored() {
        assert_eq!(CpuSet::single(64), CpuSet::EMPTY);
        assert!(!CpuSet::ALL.contains(64));
        assert_eq!(CpuSet::first(3).with(200), CpuSet::first(3));
        assert_eq!(CpuSet::first(100), CpuSet::ALL);
    }

    #[test]
    fn iterates_lowest_first_and_renders_ranges() {
        let set: CpuSet = [6, 0, 1, 2, 3, 63].into_iter().collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 1, 2, 3, 6, 63]);
        assert_eq!(set.len(), 6);
        assert_eq!(set.first_cpu(), Some(0));
        assert_eq!(set.to_string(), "0-3,6,63");
        assert_eq!(CpuSet::EMPTY.to_string(), "");
        assert_eq!(
            set.without(0).intersection(CpuSet::first(4)).to_string(),
            "1-3"
        );
    }
}
