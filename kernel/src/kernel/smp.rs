//! Multiprocessing: which CPUs exist (the ACPI MADT, trimmed by `nr_cpus=`), bringing them
//! online at boot (`maxcpus=`), IPIs (call-function to one or many CPUs, reschedule, stop),
//! and stopping the other CPUs at power-off and panic.
//!
//! Which CPUs are online is a set of atomics (no lock): a CPU marks itself online once its
//! APIC and tick run, and offline when it takes the stop IPI.
//!
//! CPU indices are dense: 0 is the boot CPU, then the MADT's other enabled processors in
//! table order. Every per-CPU structure is indexed by them.
//!
//! TLB shootdowns (Linux's `flush_tlb_others`): [`flush_tlb_range`] / [`flush_tlb_all`] flush
//! this CPU's TLB and send every other online CPU the TLB IPI, then wait until each has
//! flushed. The wait runs with interrupts disabled (no migration between the local flush and
//! the choice of targets) and serves this CPU's own flush requests while it spins, so two CPUs
//! shooting down at once cannot wait for each other.
//!
//! Locks: `CALL_QUEUE[cpu]` and `FLUSH_QUEUE[cpu]` (IRQ-safe) are leaves: held only to push or
//! take requests, never while running one or waiting for another CPU. No lock is held across
//! an IPI wait, and no caller may hold a spinlock across `flush_tlb_*` (a CPU spinning on it
//! with interrupts off could never take the IPI).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use lull_cmdline::{Kind, ParamSpec};

use crate::arch::acpi::AcpiInfo;
use crate::arch::{apic, cpu, interrupts};
use crate::kernel::locking::{InterruptsDisabled, IrqSafeLock, PerCpu, MAX_CPUS};
use crate::{pr_warn, printk};

/// Vector of the reschedule IPI (Linux's RESCHEDULE_VECTOR): wakes a CPU to look for work.
pub const RESCHEDULE_VECTOR: u8 = 0xFD;
/// Vector of the call-function IPI (Linux's CALL_FUNCTION_SINGLE_VECTOR).
pub const CALL_FUNCTION_VECTOR: u8 = 0xFB;
/// Vector of the TLB shootdown IPI (Linux's old INVALIDATE_TLB_VECTOR).
pub const TLB_FLUSH_VECTOR: u8 = 0xFA;
/// Vector of the stop IPI (Linux's REBOOT_VECTOR): the CPU goes offline and halts for good.
pub const STOP_VECTOR: u8 = 0xF8;

// The parameters' defaults below spell MAX_CPUS out (a `ParamSpec` default is a literal).
const _: () = assert!(MAX_CPUS == 64, "update the nr_cpus/maxcpus defaults");

/// SMP parameters.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "nr_cpus",
        kind: Kind::U64 {
            min: 1,
            max: MAX_CPUS as u64,
        },
        default: "64",
        help: "Most CPUs the kernel will ever use (possible CPUs); the rest are ignored.",
    },
    ParamSpec {
        name: "maxcpus",
        kind: Kind::U64 {
            min: 0,
            max: MAX_CPUS as u64,
        },
        default: "64",
        help: "CPUs brought online at boot (0: the boot CPU only); the others stay offline.",
    },
];

/// One possible CPU.
struct CpuSlot {
    apic_id: AtomicU32,
    online: AtomicBool,
}

static CPUS: [CpuSlot; MAX_CPUS] = [const {
    CpuSlot {
        apic_id: AtomicU32::new(0),
        online: AtomicBool::new(false),
    }
}; MAX_CPUS];
/// Number of possible CPUs (indices `0..POSSIBLE`).
static POSSIBLE: AtomicUsize = AtomicUsize::new(1);
/// Processors in the MADT (before `nr_cpus=`).
static FIRMWARE_CPUS: AtomicUsize = AtomicUsize::new(1);

/// Number of possible CPUs.
pub fn possible_cpus() -> usize {
    POSSIBLE.load(Ordering::Relaxed)
}

/// Whether CPU `cpu` is online.
pub fn is_online(cpu: usize) -> bool {
    cpu < MAX_CPUS && CPUS[cpu].online.load(Ordering::Acquire)
}

/// Indices of the online CPUs, ascending.
pub fn online_cpus() -> impl Iterator<Item = usize> {
    (0..possible_cpus()).filter(|&cpu| is_online(cpu))
}

/// Number of online CPUs.
pub fn online_count() -> usize {
    online_cpus().count()
}

/// APIC ID of CPU `cpu`.
pub fn apic_id(cpu: usize) -> u32 {
    CPUS.get(cpu)
        .map_or(0, |slot| slot.apic_id.load(Ordering::Relaxed))
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Index of the CPU running this code.
pub fn this_cpu() -> usize {
    InterruptsDisabled::new().cpu_index()
}

/// Lists the possible CPUs from the MADT (the boot CPU first) and marks the boot CPU online.
/// Called once on the boot CPU after the local APIC is enabled.
pub fn init(acpi: Option<&AcpiInfo>) {
    let boot_apic_id = apic::local_apic_id();
    let mut ids: Vec<u32> = alloc::vec![boot_apic_id];
    if let Some(info) = acpi {
        ids.extend(
            info.local_apic_ids
                .iter()
                .copied()
                .filter(|&id| id != boot_apic_id),
        );
    }
    FIRMWARE_CPUS.store(ids.len(), Ordering::Relaxed);
    let parsed = crate::kernel::params::parsed();
    let limit = parsed
        .get_u64("nr_cpus")
        .map_or(MAX_CPUS, |n| n as usize)
        .min(MAX_CPUS);
    if ids.len() > limit {
        printk!(
            "smp: {} CPUs in the MADT, using {limit} (nr_cpus={limit} or the kernel's limit)",
            ids.len()
        );
        ids.truncate(limit);
    }
    for (index, id) in ids.iter().enumerate() {
        CPUS[index].apic_id.store(*id, Ordering::Relaxed);
    }
    POSSIBLE.store(ids.len(), Ordering::Relaxed);
    CPUS[0].online.store(true, Ordering::Release);
    interrupts::set_handler(RESCHEDULE_VECTOR, reschedule_interrupt);
    interrupts::set_handler(CALL_FUNCTION_VECTOR, call_function_interrupt);
    interrupts::set_handler(STOP_VECTOR, stop_interrupt);
    interrupts::set_handler(TLB_FLUSH_VECTOR, tlb_flush_interrupt);
    crate::kernel::pm::register_notifier(crate::kernel::pm::Notifier {
        name: "smp",
        priority: 10,
        call: pm_notifier,
    });
}

/// PM notifier (runs first): the other CPUs stop before devices and ticks are shut down, so
/// the power-off runs on one CPU (Linux's `smp_send_stop` in `kernel_power_off`).
fn pm_notifier(_event: crate::kernel::pm::PmEvent) {
    let stopped = stop_other_cpus();
    if stopped > 0 {
        printk!("smp: stopped {stopped} other CPU(s)");
    }
}

/// Sends every other online CPU the stop IPI and waits (at most ~100 ms) until they say they
/// are offline. Returns how many stopped. Takes no lock and does not allocate, so the panic
/// path can use it too.
pub fn stop_other_cpus() -> usize {
    let me = InterruptsDisabled::new().cpu_index();
    let mut sent = 0;
    for cpu in online_cpus().filter(|&cpu| cpu != me) {
        apic::send_ipi(apic_id(cpu), STOP_VECTOR);
        sent += 1;
    }
    let start = cpu::rdtsc();
    let limit = crate::kernel::time::tsc_hz().max(1_000_000_000) / 10;
    while online_cpus().any(|cpu| cpu != me) && cpu::rdtsc().wrapping_sub(start) < limit {
        core::hint::spin_loop();
    }
    sent - online_cpus().filter(|&cpu| cpu != me).count().min(sent)
}

/// Stop IPI (hard-IRQ context): this CPU leaves for good. Its LAPIC timer is silenced
/// directly (no time lock: the CPU asking may hold any of them, e.g. when panicking).
fn stop_interrupt(_vector: u8) {
    let interrupts_off = InterruptsDisabled::new();
    apic::timer::stop();
    CPUS[interrupts_off.cpu_index()]
        .online
        .store(false, Ordering::Release);
    cpu::halt_forever()
}

/// Brings every possible CPU online, up to `maxcpus=` in all. Called once on the boot CPU,
/// interrupts disabled, after the boot CPU's time is running (each CPU starts its own tick).
pub fn bring_up_secondary_cpus() {
    let parsed = crate::kernel::params::parsed();
    let wanted = parsed
        .get_u64("maxcpus")
        .map_or(MAX_CPUS, |n| n as usize)
        .max(1);
    let possible = possible_cpus();
    let target = possible.min(wanted);
    if possible > 1 {
        if crate::mm::trampoline_page().is_none() {
            pr_warn!("smp: no trampoline page; secondary CPUs stay offline");
            return;
        }
        for cpu in 1..target {
            start_one(cpu);
        }
    }
    let offline = possible - online_count();
    printk!(
        "smp: Brought up {} CPUs ({} possible{}), {} offline",
        online_count(),
        possible,
        if FIRMWARE_CPUS.load(Ordering::Relaxed) > possible {
            ", nr_cpus"
        } else {
            ""
        },
        offline
    );
}

fn start_one(cpu: usize) {
    let apic_id = apic_id(cpu);
    // 64 KiB, as the boot CPU's; the CPU keeps it for good.
    let Some(stack) = crate::arch::context::KernelStack::alloc() else {
        pr_warn!("smp: no memory for CPU {cpu}'s stack");
        return;
    };
    if let Err(error) = crate::arch::smp::start_cpu(
        apic_id,
        cpu,
        stack,
        crate::kernel::time::tsc_hz(),
        secondary_main,
    ) {
        pr_warn!("smp: CPU {cpu} (APIC {apic_id}) did not start: {error}");
        return;
    }
    // The CPU runs Rust code; wait until it has set up its APIC and tick and says so.
    let start = cpu::rdtsc();
    let limit = crate::kernel::time::tsc_hz().max(1_000_000) * 2;
    while !is_online(cpu) {
        if cpu::rdtsc().wrapping_sub(start) > limit {
            pr_warn!("smp: CPU {cpu} (APIC {apic_id}) started but did not come online");
            return;
        }
        core::hint::spin_loop();
    }
}

/// A secondary CPU's life after the arch code loaded its GDT, TSS and IDT: its local APIC,
/// its own tick device, then the idle loop (tickless: the tick stops whenever it idles).
fn secondary_main(cpu: usize) -> ! {
    apic::init_local(interrupts::SPURIOUS_VECTOR, false);
    crate::kernel::paravirt::cpu_init();
    crate::kernel::time::start_secondary_tick();
    crate::kernel::sched::cpu_online();
    printk!("smp: CPU {cpu} (APIC {}) online", apic::local_apic_id());
    CPUS[cpu].online.store(true, Ordering::Release);
    crate::kernel::sched::idle_loop()
}

// ---- IPIs ------------------------------------------------------------------------------------

/// A function run on another CPU in hard-IRQ context (interrupts disabled; it must not sleep
/// or wait for other CPUs).
pub type RemoteFunction = fn(data: u64);

struct CallRequest {
    function: RemoteFunction,
    data: u64,
    done: Arc<AtomicBool>,
}

static CALL_QUEUE: PerCpu<IrqSafeLock<Vec<CallRequest>>> =
    PerCpu::new([const { IrqSafeLock::new(Vec::new()) }; MAX_CPUS]);

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Why a cross-CPU call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// The CPU is not online.
    Offline(usize),
    /// Waiting with interrupts disabled could deadlock against a CPU calling us.
    InterruptsDisabled,
}

impl core::fmt::Display for CallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CallError::Offline(cpu) => write!(f, "CPU {cpu} is offline"),
            CallError::InterruptsDisabled => {
                write!(f, "cannot wait for another CPU with interrupts disabled")
            }
        }
    }
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Runs `function(data)` on CPU `cpu` (Linux's `smp_call_function_single` with wait = 1) and
/// returns once it has run. On this CPU it runs directly (with interrupts disabled, as it
/// would in the IPI handler). Must be called with interrupts enabled: the caller spins, and a
/// CPU that is at the same time calling us must be able to interrupt that spin.
pub fn call_function_single(
    cpu: usize,
    function: RemoteFunction,
    data: u64,
) -> Result<(), CallError> {
    if !is_online(cpu) {
        return Err(CallError::Offline(cpu));
    }
    if !cpu::interrupts_enabled() {
        return Err(CallError::InterruptsDisabled);
    }
    {
        let interrupts_off = InterruptsDisabled::new();
        if interrupts_off.cpu_index() == cpu {
            function(data);
            return Ok(());
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    CALL_QUEUE.on_cpu(cpu).lock().push(CallRequest {
        function,
        data,
        done: Arc::clone(&done),
    });
    crate::kernel::paravirt::send_ipi(apic_id(cpu), CALL_FUNCTION_VECTOR);
    while !done.load(Ordering::Acquire) {
        crate::kernel::paravirt::spin_wait_for(cpu);
    }
    Ok(())
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Runs `function(data)` on every CPU in `cpus` at the same time (Linux's
/// `smp_call_function_many` with wait = 1, plus this CPU if listed, which runs it last, while
/// the others run theirs) and returns once all have run. Every request is queued and every
/// IPI sent before waiting. Same rules as [`call_function_single`].
pub fn call_function_many(
    cpus: &[usize],
    function: RemoteFunction,
    data: u64,
) -> Result<(), CallError> {
    if let Some(&offline) = cpus.iter().find(|&&cpu| !is_online(cpu)) {
        return Err(CallError::Offline(offline));
    }
    if !cpu::interrupts_enabled() {
        return Err(CallError::InterruptsDisabled);
    }
    let me = this_cpu();
    let mut pending = Vec::new();
    for &cpu in cpus.iter().filter(|&&cpu| cpu != me) {
        let done = Arc::new(AtomicBool::new(false));
        CALL_QUEUE.on_cpu(cpu).lock().push(CallRequest {
            function,
            data,
            done: Arc::clone(&done),
        });
        crate::kernel::paravirt::send_ipi(apic_id(cpu), CALL_FUNCTION_VECTOR);
        pending.push((cpu, done));
    }
    if cpus.contains(&me) {
        let _interrupts_off = InterruptsDisabled::new();
        function(data);
    }
    for (cpu, done) in pending {
        while !done.load(Ordering::Acquire) {
            crate::kernel::paravirt::spin_wait_for(cpu);
        }
    }
    Ok(())
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
/// Runs `function(data)` on every other online CPU at once and waits for all of them.
pub fn call_function_others(function: RemoteFunction, data: u64) -> Result<(), CallError> {
    let me = this_cpu();
    let others: Vec<usize> = online_cpus().filter(|&cpu| cpu != me).collect();
    call_function_many(&others, function, data)
}

/// Sends a reschedule IPI to `cpu` (it wakes from idle and re-checks for work).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn send_reschedule(cpu: usize) -> Result<(), CallError> {
    if !is_online(cpu) {
        return Err(CallError::Offline(cpu));
    }
    crate::kernel::paravirt::send_ipi(apic_id(cpu), RESCHEDULE_VECTOR);
    Ok(())
}

/// Reschedule IPI (hard-IRQ context): nothing to do here. Waking the CPU from `hlt` (its idle
/// loop then looks for work) or returning from the interrupt (a preemption point) is the point.
fn reschedule_interrupt(_vector: u8) {}

/// Call-function IPI (hard-IRQ context): runs every request queued for this CPU.
fn call_function_interrupt(_vector: u8) {
    let interrupts_off = InterruptsDisabled::new();
    let requests = core::mem::take(&mut *CALL_QUEUE.this_cpu(&interrupts_off).lock());
    for request in requests {
        (request.function)(request.data);
        request.done.store(true, Ordering::Release);
    }
}

// ---- TLB shootdowns ---------------------------------------------------------------------------

/// What one CPU must flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlushRange {
    /// The pages of `[start, end)`.
    Pages { start: u64, end: u64 },
    /// Every (non-global) translation.
    All,
}

struct FlushRequest {
    range: FlushRange,
    done: Arc<AtomicBool>,
}

static FLUSH_QUEUE: PerCpu<IrqSafeLock<Vec<FlushRequest>>> =
    PerCpu::new([const { IrqSafeLock::new(Vec::new()) }; MAX_CPUS]);
/// Flush requests each CPU carried out for another CPU (`/proc/interrupts` TLB row).
static TLB_SHOOTDOWNS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Remote flushes skipped because the target vCPU was preempted (PV TLB flush).
static PV_FLUSHES: AtomicU64 = AtomicU64::new(0);

/// Remote TLB flushes left to the host (the target vCPU was preempted) since boot.
pub fn pv_tlb_flushes() -> u64 {
    PV_FLUSHES.load(Ordering::Relaxed)
}

/// Shootdowns CPU `cpu` has carried out for other CPUs since boot.
pub fn tlb_shootdowns(cpu: usize) -> u64 {
    TLB_SHOOTDOWNS
        .get(cpu)
        .map_or(0, |count| count.load(Ordering::Relaxed))
}

fn flush_here(range: FlushRange) {
    match range {
        FlushRange::Pages { start, end } => crate::arch::paging::flush_local_range(start, end),
        FlushRange::All => crate::arch::paging::flush_local_all(),
    }
}

/// Runs the flush requests queued for this CPU.
fn serve_flush_requests(interrupts_off: &InterruptsDisabled) {
    let requests = core::mem::take(&mut *FLUSH_QUEUE.this_cpu(interrupts_off).lock());
    for request in requests {
        flush_here(request.range);
        TLB_SHOOTDOWNS[interrupts_off.cpu_index()].fetch_add(1, Ordering::Relaxed);
        request.done.store(true, Ordering::Release);
    }
}

/// TLB IPI (hard-IRQ context).
fn tlb_flush_interrupt(_vector: u8) {
    serve_flush_requests(&InterruptsDisabled::new());
}

/// Flushes `range` here and on every other online CPU, and returns once all have.
fn flush_tlb_everywhere(range: FlushRange) {
    let interrupts_off = InterruptsDisabled::new();
    let me = interrupts_off.cpu_index();
    flush_here(range);
    let mut pending: Vec<(usize, Arc<AtomicBool>)> = Vec::new();
    for cpu in online_cpus().filter(|&cpu| cpu != me) {
        if crate::kernel::paravirt::flush_tlb_without_ipi(cpu) {
            // Its vCPU is preempted: the host flushes its TLB before it runs again.
            PV_FLUSHES.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let done = Arc::new(AtomicBool::new(false));
        FLUSH_QUEUE.on_cpu(cpu).lock().push(FlushRequest {
            range,
            done: Arc::clone(&done),
        });
        crate::kernel::paravirt::send_ipi(apic_id(cpu), TLB_FLUSH_VECTOR);
        pending.push((cpu, done));
    }
    for (cpu, done) in pending {
        // A CPU stopped meanwhile (power-off, panic) no longer translates anything.
        while !done.load(Ordering::Acquire) && is_online(cpu) {
            serve_flush_requests(&interrupts_off);
            crate::kernel::paravirt::spin_wait_for(cpu);
        }
    }
}

/// Flushes the translations of the kernel pages in `[start, end)` on every online CPU
/// (Linux's `flush_tlb_kernel_range`), after their page-table entries changed. Any context
/// but hard-IRQ; the caller must hold no spinlock.
pub fn flush_tlb_range(start: u64, end: u64) {
    if start < end {
        flush_tlb_everywhere(FlushRange::Pages { start, end });
    }
}

/// Flushes every CPU's whole TLB (Linux's `flush_tlb_all`). Same rules as [`flush_tlb_range`].
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn flush_tlb_all() {
    flush_tlb_everywhere(FlushRange::All);
}
