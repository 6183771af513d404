//! Per-CPU interrupt vector allocation, and the CPU masks of `/proc/irq/N/smp_affinity`.
//!
//! On x86 a device interrupt is identified by (CPU, vector): each CPU has its own IDT, so vector
//! 0x41 on CPU 0 and 0x41 on CPU 1 are different interrupts. Vectors 0x00..0x1F are exceptions,
//! 0x20..0x2F are kept for the legacy PIC range and system use, and 0xF0..0xFF for the kernel's
//! own (IPIs, the APIC timer, spurious); devices get [`FIRST_DEVICE_VECTOR`]..=
//! [`LAST_DEVICE_VECTOR`] minus whatever else the kernel reserves (it passes that set in). With
//! many MSI-X queues one CPU's 192 vectors run out, so, as Linux's matrix allocator does, an
//! allocation for an affinity mask goes to the CPU of the mask with the fewest vectors in use.
//!
//! Moving a vector to another CPU (a write to `smp_affinity`) is two-phase:
//! [`VectorAllocator::move_vector`] allocates on the new CPU and returns a [`PendingMove`]
//! holding both; the kernel reprograms the device with the new vector, and only then calls
//! [`VectorAllocator::complete_move`], which frees the old one. Linux does the same
//! (`irq_complete_move` / the vector cleanup IPI) because the device may still fire at the old
//! (CPU, vector) until the new message is written, and a message already in flight lands there
//! even after: freeing the old vector first would hand it to another device whose handler then
//! sees a stray interrupt, or leave it unhandled. The old vector's handler must stay installed
//! until the move completes.
//!
//! Allocation state is plain data with no hidden history: freeing everything returns the
//! allocator to exactly (`==`) its freshly built state, which the kernel's leak tests rely on.

use alloc::vec::Vec;
use core::fmt;

/// First vector handed to devices.
pub const FIRST_DEVICE_VECTOR: u8 = 0x30;
/// Last vector handed to devices.
pub const LAST_DEVICE_VECTOR: u8 = 0xEF;
/// Most CPUs a [`CpuMask`] can name.
pub const MAX_CPUS: usize = 256;

/// A set of CPUs (ids 0..[`MAX_CPUS`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuMask([u64; MAX_CPUS / 64]);

impl CpuMask {
    /// No CPU.
    pub const fn empty() -> Self {
        CpuMask([0; MAX_CPUS / 64])
    }

    /// CPUs `0..n`.
    pub fn first(n: usize) -> Self {
        let mut m = CpuMask::empty();
        for cpu in 0..n.min(MAX_CPUS) {
            m.insert(cpu);
        }
        m
    }

    /// Only `cpu`.
    pub fn single(cpu: usize) -> Self {
        let mut m = CpuMask::empty();
        m.insert(cpu);
        m
    }

    /// Add `cpu` (ignored past [`MAX_CPUS`]).
    pub fn insert(&mut self, cpu: usize) {
        if cpu < MAX_CPUS {
            self.0[cpu / 64] |= 1 << (cpu % 64);
        }
    }

    /// Remove `cpu`.
    pub fn remove(&mut self, cpu: usize) {
        if cpu < MAX_CPUS {
            self.0[cpu / 64] &= !(1 << (cpu % 64));
        }
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: usize) -> bool {
        cpu < MAX_CPUS && self.0[cpu / 64] & (1 << (cpu % 64)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The CPUs in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_CPUS).filter(move |c| self.contains(*c))
    }

    fn chunk32(&self, i: usize) -> u32 {
        (self.0[i / 2] >> ((i % 2) * 32)) as u32
    }

    /// Parse what a user writes to `smp_affinity`: hexadecimal, optionally in comma-separated
    /// 32-bit groups, most significant first (`3`, `ff`, `00000001,00000000`), with an optional
    /// trailing newline. Bits at or above `nr_cpus` must be clear.
    pub fn parse_hex(text: &str, nr_cpus: usize) -> Result<Self, CpuMaskError> {
        let text = text.trim_end_matches('\n').trim();
        if text.is_empty() {
            return Err(CpuMaskError::Empty);
        }
        let groups: Vec<&str> = text.split(',').collect();
        if groups.len() > MAX_CPUS / 32 {
            return Err(CpuMaskError::TooManyCpus);
        }
        let mut mask = CpuMask::empty();
        for (i, group) in groups.iter().rev().enumerate() {
            if group.is_empty() || group.len() > 8 {
                return Err(CpuMaskError::BadGroup);
            }
            let value = u32::from_str_radix(group, 16).map_err(|_| CpuMaskError::BadDigit)?;
            mask.0[i / 2] |= u64::from(value) << ((i % 2) * 32);
        }
        if mask.iter().any(|c| c >= nr_cpus) {
            return Err(CpuMaskError::TooManyCpus);
        }
        Ok(mask)
    }

    /// Display as `smp_affinity` reads for a system of `nr_cpus` CPUs: 32-bit groups separated
    /// by commas, most significant first; the first group has only as many hex digits as its CPUs
    /// need, the others eight (2 CPUs: `3`; 40 CPUs: `ff,ffffffff`).
    pub fn display(&self, nr_cpus: usize) -> CpuMaskDisplay {
        CpuMaskDisplay {
            mask: *self,
            nr_cpus: nr_cpus.clamp(1, MAX_CPUS),
        }
    }
}

/// [`CpuMask::display`]'s result.
#[derive(Clone, Copy, Debug)]
pub struct CpuMaskDisplay {
    mask: CpuMask,
    nr_cpus: usize,
}

impl fmt::Display for CpuMaskDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups = self.nr_cpus.div_ceil(32);
        let top_bits = match self.nr_cpus % 32 {
            0 => 32,
            n => n,
        };
        for g in (0..groups).rev() {
            let value = self.mask.chunk32(g);
            if g == groups - 1 {
                write!(f, "{value:0width$x}", width = top_bits.div_ceil(4))?;
            } else {
                write!(f, ",{value:08x}")?;
            }
        }
        Ok(())
    }
}

/// Why an `smp_affinity` string was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMaskError {
    /// Nothing was written.
    Empty,
    /// A character that is not a hex digit.
    BadDigit,
    /// A comma-separated group is empty or longer than 8 digits.
    BadGroup,
    /// A CPU at or beyond the number of CPUs.
    TooManyCpus,
}

impl fmt::Display for CpuMaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuMaskError::Empty => "empty CPU mask",
            CpuMaskError::BadDigit => "CPU mask is not hexadecimal",
            CpuMaskError::BadGroup => "CPU mask group is empty or longer than 8 digits",
            CpuMaskError::TooManyCpus => "CPU mask names a CPU that does not exist",
        })
    }
}

/// A vector allocated on a CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VectorAssignment {
    /// The CPU whose IDT the vector is in.
    pub cpu: usize,
    /// The vector.
    pub vector: u8,
}

/// A move in progress: both vectors are allocated until [`VectorAllocator::complete_move`] (or
/// [`VectorAllocator::abort_move`]).
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the old vector stays allocated until the move is completed or aborted"]
pub struct PendingMove {
    /// The vector being left.
    pub old: VectorAssignment,
    /// The vector to program into the device.
    pub new: VectorAssignment,
}

/// Why an allocation or free failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorError {
    /// Every CPU of the mask has all its device vectors in use.
    Exhausted {
        /// The CPUs tried.
        cpus: CpuMask,
        /// Vectors each had available when empty.
        per_cpu: usize,
    },
    /// The affinity mask names no CPU the allocator manages.
    NoCpuInMask,
    /// A CPU number past those the allocator manages.
    NoSuchCpu(usize),
    /// Freeing a vector that is not allocated (double free, or never allocated).
    NotAllocated(VectorAssignment),
    /// A block size that is not a power of two from 1 to 32.
    BadBlock(usize),
}

impl fmt::Display for VectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VectorError::Exhausted { cpus, per_cpu } => {
                write!(f, "no free interrupt vector on CPUs")?;
                for cpu in cpus.iter() {
                    write!(f, " {cpu}")?;
                }
                write!(f, " (all {per_cpu} device vectors of each in use)")
            }
            VectorError::NoCpuInMask => f.write_str("affinity mask names no online CPU"),
            VectorError::NoSuchCpu(c) => write!(f, "no CPU {c}"),
            VectorError::BadBlock(n) => {
                write!(f, "a block of {n} vectors is not 1, 2, 4, 8, 16 or 32")
            }
            VectorError::NotAllocated(a) => {
                write!(
                    f,
                    "vector {:#x} on CPU {} is not allocated",
                    a.vector, a.cpu
                )
            }
        }
    }
}

const WORDS: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq)]
struct CpuVectors {
    used: [u64; WORDS],
    in_use: usize,
}

fn bit(word: &[u64; WORDS], v: u8) -> bool {
    word[usize::from(v) / 64] & (1 << (v % 64)) != 0
}

/// Per-CPU vector allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorAllocator {
    /// Vectors never handed out: outside 0x30..=0xEF or reserved by the kernel.
    unavailable: [u64; WORDS],
    per_cpu: usize,
    cpus: Vec<CpuVectors>,
}

impl VectorAllocator {
    /// An allocator for CPUs `0..nr_cpus` where `reserved` vectors (in addition to those outside
    /// 0x30..=0xEF) are never handed out.
    pub fn new(nr_cpus: usize, reserved: &[u8]) -> Self {
        let mut unavailable = [0u64; WORDS];
        for v in 0..=255u8 {
            if !(FIRST_DEVICE_VECTOR..=LAST_DEVICE_VECTOR).contains(&v) || reserved.contains(&v) {
                unavailable[usize::from(v) / 64] |= 1 << (v % 64);
            }
        }
        let per_cpu = 256
            - unavailable
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>();
        let cpus = (0..nr_cpus.min(MAX_CPUS))
            .map(|_| CpuVectors {
                used: [0; WORDS],
                in_use: 0,
            })
            .collect();
        VectorAllocator {
            unavailable,
            per_cpu,
            cpus,
        }
    }

    /// Number of CPUs managed.
    pub fn nr_cpus(&self) -> usize {
        self.cpus.len()
    }

    /// Device vectors each CPU has when none is in use.
    pub fn vectors_per_cpu(&self) -> usize {
        self.per_cpu
    }

    /// Vectors in use on `cpu` (0 for an unknown CPU).
    pub fn used_on(&self, cpu: usize) -> usize {
        self.cpus.get(cpu).map_or(0, |c| c.in_use)
    }

    /// Vectors still free on `cpu`.
    pub fn free_on(&self, cpu: usize) -> usize {
        self.cpus.get(cpu).map_or(0, |c| self.per_cpu - c.in_use)
    }

    /// Whether `a` is currently allocated.
    pub fn is_allocated(&self, a: VectorAssignment) -> bool {
        self.cpus.get(a.cpu).is_some_and(|c| bit(&c.used, a.vector))
    }

    /// Allocate on the CPU of `affinity` with the fewest vectors in use (lowest id on a tie),
    /// taking that CPU's lowest free vector.
    pub fn allocate(&mut self, affinity: &CpuMask) -> Result<VectorAssignment, VectorError> {
        let candidates = affinity.iter().take_while(|c| *c < self.cpus.len());
        let Some(cpu) = candidates.min_by_key(|c| self.cpus[*c].in_use) else {
            return Err(VectorError::NoCpuInMask);
        };
        if self.cpus[cpu].in_use == self.per_cpu {
            let mut cpus = *affinity;
            for c in self.cpus.len()..MAX_CPUS {
                cpus.remove(c);
            }
            return Err(VectorError::Exhausted {
                cpus,
                per_cpu: self.per_cpu,
            });
        }
        self.allocate_on(cpu)
    }

    /// Allocate the lowest free vector on `cpu`.
    pub fn allocate_on(&mut self, cpu: usize) -> Result<VectorAssignment, VectorError> {
        let unavailable = self.unavailable;
        let per_cpu = self.per_cpu;
        let state = self.cpus.get_mut(cpu).ok_or(VectorError::NoSuchCpu(cpu))?;
        let vector = (FIRST_DEVICE_VECTOR..=LAST_DEVICE_VECTOR)
            .find(|v| !bit(&unavailable, *v) && !bit(&state.used, *v))
            .ok_or(VectorError::Exhausted {
                cpus: CpuMask::single(cpu),
                per_cpu,
            })?;
        state.used[usize::from(vector) / 64] |= 1 << (vector % 64);
        state.in_use += 1;
        Ok(VectorAssignment { cpu, vector })
    }

    /// Vectors in use on every CPU together (the kernel's leak counter).
    pub fn total_in_use(&self) -> usize {
        self.cpus.iter().map(|c| c.in_use).sum()
    }

    /// Allocate `count` (a power of two, at most 32) consecutive vectors on one CPU of
    /// `affinity`, the first aligned to `count`: multi-message MSI, where the device ORs the
    /// message number into the data's low bits. The CPU is the one of the mask with the fewest
    /// vectors in use that has such a block free (lowest id on a tie); the lowest block is
    /// taken. The assignments come back in message order.
    pub fn allocate_block(
        &mut self,
        affinity: &CpuMask,
        count: usize,
    ) -> Result<Vec<VectorAssignment>, VectorError> {
        if !count.is_power_of_two() || count > 32 {
            return Err(VectorError::BadBlock(count));
        }
        let unavailable = self.unavailable;
        let free_block = |state: &CpuVectors| {
            (usize::from(FIRST_DEVICE_VECTOR)..=usize::from(LAST_DEVICE_VECTOR) + 1 - count)
                .step_by(count)
                .find(|&first| {
                    (first..first + count)
                        .all(|v| !bit(&unavailable, v as u8) && !bit(&state.used, v as u8))
                })
        };
        let mut candidates: Vec<usize> = affinity
            .iter()
            .take_while(|c| *c < self.cpus.len())
            .collect();
        if candidates.is_empty() {
            return Err(VectorError::NoCpuInMask);
        }
        candidates.sort_by_key(|c| (self.cpus[*c].in_use, *c));
        for cpu in candidates {
            if let Some(first) = free_block(&self.cpus[cpu]) {
                let state = &mut self.cpus[cpu];
                let mut out = Vec::with_capacity(count);
                for v in first..first + count {
                    let v = v as u8;
                    state.used[usize::from(v) / 64] |= 1 << (v % 64);
                    state.in_use += 1;
                    out.push(VectorAssignment { cpu, vector: v });
                }
                return Ok(out);
            }
        }
        let mut cpus = *affinity;
        for c in self.cpus.len()..MAX_CPUS {
            cpus.remove(c);
        }
        Err(VectorError::Exhausted {
            cpus,
            per_cpu: self.per_cpu,
        })
    }

    /// Return a vector. Freeing one that is not allocated is an error, never a silent success.
    pub fn free(&mut self, a: VectorAssignment) -> Result<(), VectorError> {
        let state = self
            .cpus
            .get_mut(a.cpu)
            .ok_or(VectorError::NoSuchCpu(a.cpu))?;
        if !bit(&state.used, a.vector) {
            return Err(VectorError::NotAllocated(a));
        }
        state.used[usize::from(a.vector) / 64] &= !(1 << (a.vector % 64));
        state.in_use -= 1;
        Ok(())
    }

    /// Phase one of an affinity change: allocate on `new_cpu`, keep `old`. On failure nothing
    /// changes and `old` stays in service.
    pub fn move_vector(
        &mut self,
        old: VectorAssignment,
        new_cpu: usize,
    ) -> Result<PendingMove, VectorError> {
        if !self.is_allocated(old) {
            return Err(VectorError::NotAllocated(old));
        }
        let new = self.allocate_on(new_cpu)?;
        Ok(PendingMove { old, new })
    }

    /// Phase two: the device has been reprogrammed with `pending.new`; free the old vector.
    pub fn complete_move(&mut self, pending: PendingMove) -> Result<VectorAssignment, VectorError> {
        self.free(pending.old)?;
        Ok(pending.new)
    }

    /// Give up a move before reprogramming: free the new vector, keep the old.
    pub fn abort_move(&mut self, pending: PendingMove) -> Result<VectorAssignment, VectorError> {
        self.free(pending.new)?;
        Ok(pending.old)
    }
}
