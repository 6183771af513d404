//! Per-CPU areas reached through the GS base, and the interrupts-off guard that proves a
//! caller stays on one CPU while it uses them.
//!
//! Each CPU's `IA32_GS_BASE` points at its own [`CpuArea`]; `gs:[0]` is then the CPU's index
//! (0 = the boot CPU), read with one instruction and no lock. The areas are built at compile
//! time; only its atomics change afterwards, so the read is always sound once the
//! base is set.
//! Interrupts off means preemption off, so the [`InterruptsDisabled`] guard proves that the CPU
//! index read stays true; so does `sync::PreemptDisabled`, built on the preempt count here.

use core::marker::PhantomData;

use super::cpu;

/// Most CPUs Lull brings up (Linux's `NR_CPUS`); MADT entries beyond it are ignored.
pub const MAX_CPUS: usize = 64;

const IA32_GS_BASE: u32 = 0xC000_0101;

/// One CPU's area: what `gs:[offset]` reads. Cache-line sized so CPUs never share a line.
#[repr(C, align(64))]
pub struct CpuArea {
    /// This CPU's index (offset 0).
    cpu_index: u64,
    /// The id of the thread running on this CPU (offset 8; 0: the CPU's idle thread). Written
    /// only by this CPU, with interrupts disabled, when it switches threads.
    current_task: core::sync::atomic::AtomicU64,
    /// Preemption-disable depth in bits 0..16 and hard-IRQ nesting in bits 16..24, Linux's
    /// `preempt_count` layout (offset 16). Changed only by this CPU, with one `gs`-relative
    /// instruction, so an interrupt sees it either before or after.
    preempt_count: core::sync::atomic::AtomicU32,
    /// Nonzero when the scheduler wants this CPU to pick again (offset 20; Linux's
    /// `TIF_NEED_RESCHED`). Written by any CPU under the scheduler lock, read locklessly here.
    need_resched: core::sync::atomic::AtomicU32,
}

const fn build_areas() -> [CpuArea; MAX_CPUS] {
    let mut areas = [const {
        CpuArea {
            cpu_index: 0,
            current_task: core::sync::atomic::AtomicU64::new(0),
            preempt_count: core::sync::atomic::AtomicU32::new(0),
            need_resched: core::sync::atomic::AtomicU32::new(0),
        }
    }; MAX_CPUS];
    let mut index = 0;
    while index < MAX_CPUS {
        areas[index].cpu_index = index as u64;
        index += 1;
    }
    areas
}

static AREAS: [CpuArea; MAX_CPUS] = build_areas();

/// The id of the thread running on this CPU (0: its idle thread). One `gs`-relative load, so
/// the answer is right even if the caller is preempted and moved right after: a thread's id
/// does not depend on where it runs.
pub fn current_task() -> u64 {
    let id: u64;
    // SAFETY: GS base points at this CPU's 'static `CpuArea` (set before interrupts are first
    // enabled); offset 8 is its `current_task` atomic, read with one aligned load.
    unsafe {
        core::arch::asm!(
            "mov {}, qword ptr gs:[8]",
            out(reg) id,
            options(nostack, readonly, preserves_flags)
        )
    };
    id
}

/// Index of the CPU this code runs on: exact only while the caller cannot migrate (hence
/// crate-private users wrap it in a guard that proves so).
pub fn this_cpu_index() -> usize {
    let index: u64;
    // SAFETY: GS base points at this CPU's 'static `CpuArea` (set first thing on every CPU);
    // offset 0 is its index. Reading it has no side effects.
    unsafe {
        core::arch::asm!(
            "mov {}, qword ptr gs:[0]",
            out(reg) index,
            options(nostack, readonly, preserves_flags)
        )
    };
    index as usize
}

/// One level of hard-IRQ nesting in [`preempt_count`].
pub const HARDIRQ_OFFSET: u32 = 1 << 16;
/// The preemption-disable part of [`preempt_count`].
pub const PREEMPT_MASK: u32 = 0xFFFF;

/// Adds `amount` to this CPU's preempt count (one instruction: interrupt-atomic). Also a
/// compiler barrier, so accesses inside the section are not moved out of it.
pub fn preempt_count_add(amount: u32) {
    // SAFETY: GS base points at this CPU's 'static `CpuArea` (set first thing on every CPU);
    // offset 16 is its `preempt_count` atomic, changed only by this CPU.
    unsafe {
        core::arch::asm!(
            "add dword ptr gs:[16], {0:e}",
            in(reg) amount,
            options(nostack)
        )
    };
}

/// Subtracts `amount` from this CPU's preempt count (see [`preempt_count_add`]).
pub fn preempt_count_sub(amount: u32) {
    // SAFETY: as in `preempt_count_add`.
    unsafe {
        core::arch::asm!(
            "sub dword ptr gs:[16], {0:e}",
            in(reg) amount,
            options(nostack)
        )
    };
}

/// This CPU's preempt count (preemption depth | hard-IRQ nesting << 16).
pub fn preempt_count() -> u32 {
    let count: u32;
    // SAFETY: as in `preempt_count_add`; a plain aligned load.
    unsafe {
        core::arch::asm!(
            "mov {0:e}, dword ptr gs:[16]",
            out(reg) count,
            options(nostack, readonly, preserves_flags)
        )
    };
    count
}

/// Replaces the preemption-disable depth of this CPU (the context switch hands each thread
/// its own depth), leaving the hard-IRQ bits. Interrupts must be disabled.
pub fn set_preempt_depth(_proof: &InterruptsDisabled, depth: u32) {
    let count = preempt_count();
    let new = (count & !PREEMPT_MASK) | (depth & PREEMPT_MASK);
    preempt_count_add(new.wrapping_sub(count));
}

/// Whether the scheduler asked this CPU to reschedule.
pub fn need_resched() -> bool {
    let flag: u32;
    // SAFETY: as in `preempt_count_add`; offset 20 is `need_resched`, a plain aligned load.
    unsafe {
        core::arch::asm!(
            "mov {0:e}, dword ptr gs:[20]",
            out(reg) flag,
            options(nostack, readonly, preserves_flags)
        )
    };
    flag != 0
}

/// Sets or clears CPU `cpu`'s reschedule request (the scheduler, under its lock).
pub fn set_need_resched(cpu: usize, value: bool) {
    if let Some(area) = AREAS.get(cpu) {
        area.need_resched
            .store(u32::from(value), core::sync::atomic::Ordering::Release);
    }
}

/// Records the thread this CPU is switching to (the scheduler, interrupts disabled).
pub fn set_current_task(proof: &InterruptsDisabled, task: u64) {
    AREAS[proof.cpu_index().min(MAX_CPUS - 1)]
        .current_task
        .store(task, core::sync::atomic::Ordering::Relaxed);
}

/// Points this CPU's GS base at the area of CPU `cpu_index`. Called first thing on every CPU
/// (before anything reads the CPU index), with interrupts disabled.
pub(super) fn set_this_cpu(cpu_index: usize) {
    let area = &AREAS[cpu_index.min(MAX_CPUS - 1)];
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; the value is the address of a 'static,
    // never-written area, and nothing else in the kernel uses GS.
    unsafe { cpu::wrmsr(IA32_GS_BASE, area as *const CpuArea as u64) };
}

/// Proof that local interrupts are off (and so, today, that the caller cannot be moved to
/// another CPU): per-CPU data is reached only through a reference to one. Restores the
/// previous interrupt state when dropped; guards nest if dropped in reverse order.
pub struct InterruptsDisabled {
    were_enabled: bool,
    /// Not `Send`: the proof holds only on the CPU that made it.
    _this_cpu_only: PhantomData<*const ()>,
}

impl InterruptsDisabled {
    /// Disables local interrupts until the guard is dropped.
    pub fn new() -> Self {
        let were_enabled = cpu::interrupts_enabled();
        cpu::disable_interrupts();
        Self {
            were_enabled,
            _this_cpu_only: PhantomData,
        }
    }

    /// Index of the CPU this code runs on (0 = the boot CPU).
    pub fn cpu_index(&self) -> usize {
        this_cpu_index()
    }
}

impl Default for InterruptsDisabled {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InterruptsDisabled {
    fn drop(&mut self) {
        if self.were_enabled {
            cpu::enable_interrupts();
        }
    }
}
