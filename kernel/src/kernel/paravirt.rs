//! Paravirt operations: one kernel binary, native or KVM implementation per operation, chosen
//! once at boot (Linux's `pv_ops`, the VMI idea of 2.6.21).
//!
//! Mechanism: every operation that differs is a call site that tests one bit of [`CHOSEN`] (a
//! relaxed load of a word that never changes after boot, and a branch the CPU predicts
//! perfectly) and falls through to the native code when it is clear. On bare metal and under
//! QEMU TCG the bit is never set, so the native path costs that load and branch and nothing
//! else. The `no-paravirt` cargo feature compiles the tests out altogether, which is the
//! baseline `cargo xtask bench --filter pvops` compares instruction counts against.
//!
//! Operations and their KVM implementations:
//! - clock reads: the `kvm-clock` clocksource (per-CPU pvclock areas) instead of TSC/HPET;
//!   the wall clock from MSR_KVM_WALL_CLOCK_NEW instead of the CMOS RTC;
//! - EOI: PV EOI (skip the LAPIC EOI write when the host says it may be skipped);
//! - spinlock slow path: halt and be kicked (PV_UNHALT) instead of spinning;
//! - IPI sending: one KVM_HC_SEND_IPI hypercall for a set of CPUs;
//! - remote TLB flush: preempted vCPUs are flagged to flush on entry instead of interrupted;
//! - idle: HLT in both (KVM's host-side halt polling is left as the host configured it);
//! - steal accounting: steal time from the host, taken off the scheduler's charges;
//! - yield hints: KVM_HC_SCHED_YIELD towards a preempted vCPU we are waiting for;
//! - async page faults: sleep on a token while the host fetches a page.
//!
//! Switches as Linux: `nopv` (native everywhere), `no-kvmclock`, `no-steal-acc`, `no-kvmapf`,
//! `nopvspin`.

use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};

use alloc::string::String;
use lull_cmdline::{Kind, ParamSpec};

use crate::arch::kvm::{self, feature, KvmCpuid};
use crate::arch::percpu::{InterruptsDisabled, MAX_CPUS};
use crate::printk;

/// Paravirt parameters (Linux's names).
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "nopv",
        kind: Kind::Flag,
        default: "",
        help: "Use the native implementation of every paravirt operation, even under KVM.",
    },
    ParamSpec {
        name: "no-kvmclock",
        kind: Kind::Flag,
        default: "",
        help: "Do not use kvm-clock (clocksource or wall clock).",
    },
    ParamSpec {
        name: "no-steal-acc",
        kind: Kind::Flag,
        default: "",
        help: "Do not take the host's steal time off the scheduler's charges.",
    },
    ParamSpec {
        name: "no-kvmapf",
        kind: Kind::Flag,
        default: "",
        help: "Do not enable KVM asynchronous page faults.",
    },
    ParamSpec {
        name: "nopvspin",
        kind: Kind::Flag,
        default: "",
        help: "Do not use paravirt spinlocks (halt and kick) or PV sched yield.",
    },
];

/// One paravirt operation (a bit of [`CHOSEN`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    Clock = 1 << 0,
    WallClock = 1 << 1,
    Eoi = 1 << 2,
    SpinWait = 1 << 3,
    SendIpi = 1 << 4,
    TlbFlush = 1 << 5,
    Steal = 1 << 6,
    Yield = 1 << 7,
    AsyncPf = 1 << 8,
}

/// Every operation, in the order `dmesg` and `cpus` list them.
pub const ALL_OPS: [Op; 9] = [
    Op::Clock,
    Op::WallClock,
    Op::Eoi,
    Op::SpinWait,
    Op::SendIpi,
    Op::TlbFlush,
    Op::Steal,
    Op::Yield,
    Op::AsyncPf,
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Clock => "clock",
            Op::WallClock => "wall clock",
            Op::Eoi => "eoi",
            Op::SpinWait => "spinlock wait",
            Op::SendIpi => "ipi",
            Op::TlbFlush => "tlb flush",
            Op::Steal => "steal",
            Op::Yield => "yield",
            Op::AsyncPf => "async pf",
        }
    }

    /// The implementation names: (native, KVM).
    fn implementations(self) -> (&'static str, &'static str) {
        match self {
            Op::Clock => ("tsc/hpet/acpi_pm", "kvm-clock"),
            Op::WallClock => ("cmos rtc", "kvm wall clock"),
            Op::Eoi => ("apic", "pv-eoi"),
            Op::SpinWait => ("spin", "halt+kick"),
            Op::SendIpi => ("apic", "kvm send-ipi"),
            Op::TlbFlush => ("ipi", "skip preempted"),
            Op::Steal => ("none", "kvm steal time"),
            Op::Yield => ("none", "kvm sched-yield"),
            Op::AsyncPf => ("none", "kvm async pf (interrupt)"),
        }
    }

    /// The CPUID features the KVM implementation needs.
    fn needs(self) -> u32 {
        match self {
            Op::Clock | Op::WallClock => feature::CLOCKSOURCE2,
            Op::Eoi => feature::PV_EOI,
            Op::SpinWait => feature::PV_UNHALT,
            Op::SendIpi => feature::PV_SEND_IPI,
            Op::TlbFlush => feature::PV_TLB_FLUSH | feature::STEAL_TIME,
            Op::Steal => feature::STEAL_TIME,
            Op::Yield => feature::PV_SCHED_YIELD | feature::STEAL_TIME,
            Op::AsyncPf => feature::ASYNC_PF | feature::ASYNC_PF_INT,
        }
    }
}

/// The operations using their KVM implementation (bits of [`Op`]); written once at boot.
static CHOSEN: AtomicU32 = AtomicU32::new(0);

/// Whether `op` uses its KVM implementation. The native path's whole cost: one relaxed load
/// and a branch (none at all in a `no-paravirt` build).
#[inline(always)]
pub fn uses_kvm(op: Op) -> bool {
    #[cfg(feature = "no-paravirt")]
    {
        let _ = op;
        false
    }
    #[cfg(not(feature = "no-paravirt"))]
    {
        CHOSEN.load(Ordering::Relaxed) & op as u32 != 0
    }
}

static CPUID: spin::Once<Option<KvmCpuid>> = spin::Once::new();

/// What CPUID said about KVM (`None`: bare metal, TCG or another hypervisor).
pub fn kvm_cpuid() -> Option<KvmCpuid> {
    CPUID.get().copied().flatten()
}

/// Chooses each operation's implementation and enables this (the boot) CPU's areas. Called
/// once after the command line is parsed and before the clocksources are registered.
pub fn init() {
    let detected = *CPUID.call_once(kvm::detect);
    let parsed = crate::kernel::params::parsed();
    let Some(cpuid) = detected else {
        printk!("paravirt: native (no KVM interface in CPUID)");
        return;
    };
    let mut names = String::new();
    for (bit, name) in feature::NAMES {
        if cpuid.features & bit != 0 {
            let _ = write!(names, " {name}");
        }
    }
    printk!(
        "paravirt: KVM (leaves to {:#x}), features {:#010x}:{names}",
        cpuid.max_leaf,
        cpuid.features
    );
    if cfg!(feature = "no-paravirt") || parsed.flag("nopv") {
        printk!("paravirt: native everywhere (nopv)");
        return;
    }
    let mut refused = 0u32;
    if parsed.flag("no-kvmclock") {
        refused |= Op::Clock as u32 | Op::WallClock as u32;
    }
    if parsed.flag("no-steal-acc") {
        refused |= Op::Steal as u32;
    }
    if parsed.flag("no-kvmapf") {
        refused |= Op::AsyncPf as u32;
    }
    if parsed.flag("nopvspin") {
        refused |= Op::SpinWait as u32 | Op::Yield as u32;
    }
    let mut chosen = 0u32;
    let mut adopted = feature::STEAL_TIME; // steal areas back TLB flush and yield too
    for op in ALL_OPS {
        if cpuid.has(op.needs()) && refused & op as u32 == 0 {
            chosen |= op as u32;
            adopted |= op.needs();
        }
    }
    if refused & Op::Steal as u32 != 0 && chosen & (Op::TlbFlush as u32 | Op::Yield as u32) == 0 {
        adopted &= !feature::STEAL_TIME;
    }
    kvm::adopt(&cpuid, adopted);
    CHOSEN.store(chosen, Ordering::Relaxed);
    for op in ALL_OPS {
        let (native, pv) = op.implementations();
        let why = if chosen & op as u32 != 0 {
            ""
        } else if refused & op as u32 != 0 {
            " (switched off on the command line)"
        } else {
            " (not advertised)"
        };
        printk!(
            "paravirt: {}: {}{why}",
            op.name(),
            if chosen & op as u32 != 0 { pv } else { native }
        );
    }
    cpu_init();
    if chosen & Op::Clock as u32 != 0 {
        refine_tsc_from_kvmclock();
    }
    if chosen & Op::AsyncPf as u32 != 0 {
        crate::kernel::pm::register_notifier(crate::kernel::pm::Notifier {
            name: "kvm-apf",
            priority: 0,
            call: |_| kvm::disable_async_pf(&InterruptsDisabled::new()),
        });
    }
}

/// Takes the TSC frequency from kvm-clock's scale factors (Linux's `kvm_get_tsc_khz`): the
/// host's own figure, where a 1.5 ms PIT calibration under emulation was measured 0.5 % off
/// (enough for the clocksource watchdog to condemn the TSC after 14 s).
fn refine_tsc_from_kvmclock() {
    let Some((snapshot, _)) = kvm::read_pvclock(0) else {
        return;
    };
    let mul = u128::from(snapshot.tsc_to_system_mul);
    if mul == 0 {
        return;
    }
    // ns = ((cycles << shift) * mul) >> 32, so cycles per second = 1e9 << 32 / (mul << shift).
    let scaled = 1_000_000_000u128 << 32;
    let hz = if snapshot.tsc_shift >= 0 {
        scaled / (mul << snapshot.tsc_shift)
    } else {
        (scaled << snapshot.tsc_shift.unsigned_abs()) / mul
    };
    let Ok(hz) = u64::try_from(hz) else {
        return;
    };
    let calibrated = crate::kernel::time::tsc_hz();
    crate::kernel::time::refine_tsc_hz(hz);
    printk!(
        "tsc: {}.{:03} MHz from kvm-clock (calibration said {}.{:03} MHz)",
        hz / 1_000_000,
        (hz / 1000) % 1000,
        calibrated / 1_000_000,
        (calibrated / 1000) % 1000
    );
}

/// Registers this CPU's shared areas with the host (each CPU, interrupts disabled).
pub fn cpu_init() {
    if kvm_cpuid().is_none() {
        return;
    }
    let interrupts_off = InterruptsDisabled::new();
    kvm::record_apic_id(&interrupts_off);
    if uses_kvm(Op::Clock) || uses_kvm(Op::WallClock) {
        kvm::enable_kvmclock(&interrupts_off);
    }
    kvm::enable_steal_time(&interrupts_off);
    if uses_kvm(Op::Eoi) {
        kvm::enable_pv_eoi(&interrupts_off);
    }
    crate::kernel::async_pf::cpu_init(&interrupts_off);
}

/// One line per operation for `cpus`: `name: implementation`.
pub fn summary() -> String {
    let mut text = String::new();
    for op in ALL_OPS {
        let (native, pv) = op.implementations();
        let _ = write!(
            text,
            "{}{}: {}",
            if text.is_empty() { "" } else { ", " },
            op.name(),
            if uses_kvm(op) { pv } else { native }
        );
    }
    text
}

/// Whether the host stopped the VM (pause, snapshot, migration) since the last call: reads
/// and clears the pvclock GUEST_STOPPED flag of every online CPU (Linux's
/// `kvm_check_and_clear_guest_paused`), so watchdogs can start their measurements anew.
pub fn take_guest_stopped() -> bool {
    if !uses_kvm(Op::Clock) {
        return false;
    }
    let mut stopped = false;
    for cpu in crate::kernel::smp::online_cpus() {
        stopped |= kvm::take_guest_stopped(cpu);
    }
    stopped
}

// ---- steal time -----------------------------------------------------------------------------

static STEAL: [crate::arch::sync::SpinCell<lull_pv::steal::StealAccount>; MAX_CPUS] =
    [const { crate::arch::sync::SpinCell::new(lull_pv::steal::StealAccount::new()) }; MAX_CPUS];

/// Steal time on this CPU since the last call (ns), for the scheduler's accounting. Zero
/// unless steal accounting uses KVM.
#[inline(always)]
pub fn steal_delta(interrupts_off: &InterruptsDisabled) -> u64 {
    if !uses_kvm(Op::Steal) {
        return 0;
    }
    steal_delta_kvm(interrupts_off)
}

#[cold]
#[inline(never)]
fn steal_delta_kvm(interrupts_off: &InterruptsDisabled) -> u64 {
    let cpu = interrupts_off.cpu_index();
    match kvm::steal_ns(cpu) {
        Some(reading) => STEAL[cpu].lock().observe(reading),
        None => 0,
    }
}

/// All steal time the host reported for `cpu` (ns), for `cpus` and `/proc/stat`.
pub fn steal_total(cpu: usize) -> u64 {
    if !uses_kvm(Op::Steal) {
        return 0;
    }
    kvm::steal_ns(cpu).unwrap_or(0)
}

// ---- PV TLB flush, IPIs, yield --------------------------------------------------------------

/// Remote TLB flush: true when CPU `cpu` need not be interrupted (its vCPU is preempted and
/// the host will flush its TLB before it runs again).
#[inline(always)]
pub fn flush_tlb_without_ipi(cpu: usize) -> bool {
    uses_kvm(Op::TlbFlush) && kvm::flush_tlb_on_entry(cpu)
}

/// Sends `vector` to the CPU with APIC id `apic_id`.
#[inline(always)]
pub fn send_ipi(apic_id: u32, vector: u8) {
    if uses_kvm(Op::SendIpi) && send_ipi_kvm(apic_id, vector) {
        return;
    }
    crate::arch::apic::send_ipi(apic_id, vector);
}

#[cold]
#[inline(never)]
fn send_ipi_kvm(apic_id: u32, vector: u8) -> bool {
    if apic_id >= 128 {
        return false;
    }
    let mut bitmap = [0u64; 2];
    bitmap[(apic_id / 64) as usize] |= 1 << (apic_id % 64);
    kvm::send_ipi_mask(bitmap, 0, vector)
}

/// A hint while spinning for CPU `cpu` (an acknowledgement, a lock holder): when its vCPU is
/// preempted, ask the host to run it (KVM_HC_SCHED_YIELD); otherwise a pause.
#[inline(always)]
pub fn spin_wait_for(cpu: usize) {
    if uses_kvm(Op::Yield) && kvm::vcpu_is_preempted(cpu) {
        yield_to_vcpu(cpu);
        return;
    }
    core::hint::spin_loop();
}

#[cold]
#[inline(never)]
fn yield_to_vcpu(cpu: usize) {
    kvm::sched_yield_to(crate::kernel::smp::apic_id(cpu));
}
