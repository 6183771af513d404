//! The KVM paravirtual interface, hardware side: CPUID leaves 0x4000_0000/0x4000_0001, the
//! per-CPU areas KVM writes into (pvclock, steal time, async page faults, PV EOI), the MSRs
//! that hand their addresses to the host, and the hypercall instruction.
//!
//! The areas are statics in the kernel image, which is identity-mapped, so a static's address
//! is its guest-physical address. Their fields are atomics: the host writes them at any time,
//! as another CPU would, and the kernel only ever reads them with atomic loads (and, for the
//! two words the protocol says the guest clears, atomic read-modify-writes). Nothing here
//! writes through an address a caller supplies.
//!
//! Policy (which implementation each operation uses, the command-line switches) lives in
//! `kernel::paravirt`; the protocol logic (pvclock scaling, steal deltas, the async-PF token
//! table, the PV-EOI and PV-spinlock protocols) in the host-tested `lull-pv` crate.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use lull_pv::pvclock::PvclockSnapshot;

use super::cpu;
use super::percpu::{InterruptsDisabled, MAX_CPUS};

/// CPUID 0x4000_0001 EAX feature bits (Linux's `KVM_FEATURE_*`).
pub mod feature {
    pub const CLOCKSOURCE: u32 = 1 << 0;
    pub const NOP_IO_DELAY: u32 = 1 << 1;
    pub const CLOCKSOURCE2: u32 = 1 << 3;
    pub const ASYNC_PF: u32 = 1 << 4;
    pub const STEAL_TIME: u32 = 1 << 5;
    pub const PV_EOI: u32 = 1 << 6;
    pub const PV_UNHALT: u32 = 1 << 7;
    pub const PV_TLB_FLUSH: u32 = 1 << 9;
    pub const ASYNC_PF_VMEXIT: u32 = 1 << 10;
    pub const PV_SEND_IPI: u32 = 1 << 11;
    pub const POLL_CONTROL: u32 = 1 << 12;
    pub const PV_SCHED_YIELD: u32 = 1 << 13;
    pub const ASYNC_PF_INT: u32 = 1 << 14;
    pub const CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;

    /// Names for `dmesg` and `cpus`, in bit order.
    pub const NAMES: &[(u32, &str)] = &[
        (CLOCKSOURCE, "clocksource"),
        (NOP_IO_DELAY, "nop_io_delay"),
        (CLOCKSOURCE2, "clocksource2"),
        (ASYNC_PF, "async_pf"),
        (STEAL_TIME, "steal_time"),
        (PV_EOI, "pv_eoi"),
        (PV_UNHALT, "pv_unhalt"),
        (PV_TLB_FLUSH, "pv_tlb_flush"),
        (ASYNC_PF_VMEXIT, "async_pf_vmexit"),
        (PV_SEND_IPI, "pv_send_ipi"),
        (POLL_CONTROL, "poll_control"),
        (PV_SCHED_YIELD, "pv_sched_yield"),
        (ASYNC_PF_INT, "async_pf_int"),
        (CLOCKSOURCE_STABLE_BIT, "clocksource_stable"),
    ];
}

const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
const MSR_KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;
const MSR_KVM_ASYNC_PF_ACK: u32 = 0x4b56_4d07;

/// Hypercall numbers (Linux's `KVM_HC_*`).
const KVM_HC_KICK_CPU: u64 = 5;
const KVM_HC_SEND_IPI: u64 = 10;
const KVM_HC_SCHED_YIELD: u64 = 11;

/// What CPUID says about the KVM interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvmCpuid {
    /// Highest hypervisor leaf (EAX of 0x4000_0000).
    pub max_leaf: u32,
    /// 0x4000_0001 EAX.
    pub features: u32,
}

impl KvmCpuid {
    /// Whether every bit of `mask` is advertised.
    pub fn has(&self, mask: u32) -> bool {
        self.features & mask == mask
    }
}

/// Reads the KVM leaves when CPUID says a hypervisor runs us and its signature is
/// `KVMKVMKVM\0\0\0`; `None` on bare metal, under TCG and under other hypervisors.
pub fn detect() -> Option<KvmCpuid> {
    if !cpu::running_on_hypervisor() {
        return None;
    }
    let leaf = cpu::cpuid(0x4000_0000, 0);
    let mut signature = [0u8; 12];
    signature[0..4].copy_from_slice(&leaf.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&leaf.ecx.to_le_bytes());
    signature[8..12].copy_from_slice(&leaf.edx.to_le_bytes());
    if &signature != b"KVMKVMKVM\0\0\0" {
        return None;
    }
    // KVM sets EAX to 0 in old versions, meaning "0x4000_0001 exists".
    let max_leaf = leaf.eax.max(0x4000_0001);
    let features = cpu::cpuid(0x4000_0001, 0).eax;
    Some(KvmCpuid { max_leaf, features })
}

/// The features this kernel may rely on, set once by [`adopt`] (0 until then, and always on
/// bare metal). Every MSR write and hypercall below checks it, so none can #GP or hang on a
/// host that did not advertise it.
static ADOPTED: AtomicU32 = AtomicU32::new(0);

/// Records the features the kernel will use (those CPUID advertised, minus what the command
/// line switched off). Called once on the boot CPU before any `enable_*` call.
pub fn adopt(cpuid: &KvmCpuid, mask: u32) {
    ADOPTED.store(cpuid.features & mask, Ordering::Release);
}

fn adopted(mask: u32) -> bool {
    ADOPTED.load(Ordering::Acquire) & mask == mask
}

// ---- shared areas ---------------------------------------------------------------------------

/// `struct pvclock_vcpu_time_info` (32 bytes), padded to a cache line.
#[repr(C, align(64))]
pub struct PvclockArea {
    version: AtomicU32,
    _pad0: AtomicU32,
    tsc_timestamp: AtomicU64,
    system_time: AtomicU64,
    tsc_to_system_mul: AtomicU32,
    /// `tsc_shift` (i8) in bits 0..8, `flags` in bits 8..16.
    shift_and_flags: AtomicU32,
}

/// `struct kvm_steal_time` (64 bytes, 64-byte aligned as KVM requires).
#[repr(C, align(64))]
pub struct StealArea {
    steal: AtomicU64,
    version: AtomicU32,
    flags: AtomicU32,
    /// Bit 0 PREEMPTED, bit 1 SHOULD_FLUSH.
    preempted: AtomicU8,
    _pad8: [AtomicU8; 3],
    _pad: [AtomicU32; 11],
}

/// `struct kvm_vcpu_pv_apf_data` (64 bytes, 64-byte aligned).
#[repr(C, align(64))]
pub struct AsyncPfArea {
    /// Reason of a "page not present" #PF (1), 0 when the #PF is a real one.
    flags: AtomicU32,
    /// Token of a "page ready" notification.
    token: AtomicU32,
    _pad: [AtomicU8; 56],
    enabled: AtomicU32,
}

/// One CPU's PV-EOI word, alone in its cache line.
#[repr(C, align(64))]
pub struct PvEoiWord(AtomicU32);

/// `struct pvclock_wall_clock` (version, sec, nsec).
#[repr(C, align(16))]
pub struct WallClockArea {
    version: AtomicU32,
    sec: AtomicU32,
    nsec: AtomicU32,
}

static PVCLOCK: [PvclockArea; MAX_CPUS] = [const {
    PvclockArea {
        version: AtomicU32::new(0),
        _pad0: AtomicU32::new(0),
        tsc_timestamp: AtomicU64::new(0),
        system_time: AtomicU64::new(0),
        tsc_to_system_mul: AtomicU32::new(0),
        shift_and_flags: AtomicU32::new(0),
    }
}; MAX_CPUS];

static STEAL: [StealArea; MAX_CPUS] = [const {
    StealArea {
        steal: AtomicU64::new(0),
        version: AtomicU32::new(0),
        flags: AtomicU32::new(0),
        preempted: AtomicU8::new(0),
        _pad8: [const { AtomicU8::new(0) }; 3],
        _pad: [const { AtomicU32::new(0) }; 11],
    }
}; MAX_CPUS];

static ASYNC_PF: [AsyncPfArea; MAX_CPUS] = [const {
    AsyncPfArea {
        flags: AtomicU32::new(0),
        token: AtomicU32::new(0),
        _pad: [const { AtomicU8::new(0) }; 56],
        enabled: AtomicU32::new(0),
    }
}; MAX_CPUS];

static PV_EOI: [PvEoiWord; MAX_CPUS] = [const { PvEoiWord(AtomicU32::new(0)) }; MAX_CPUS];

static WALL_CLOCK: WallClockArea = WallClockArea {
    version: AtomicU32::new(0),
    sec: AtomicU32::new(0),
    nsec: AtomicU32::new(0),
};

/// Per-CPU "this area is registered with the host".
static KVMCLOCK_ON: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static STEAL_ON: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static PV_EOI_ON: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
static ASYNC_PF_ON: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// The guest-physical address of a static (the kernel image is identity-mapped).
fn physical<T>(value: &'static T) -> u64 {
    value as *const T as u64
}

/// Writes a KVM MSR whose feature bit was adopted. Returns false (writing nothing) otherwise.
fn write_kvm_msr(required: u32, msr: u32, value: u64) -> bool {
    if !adopted(required) {
        return false;
    }
    // SAFETY: the MSR belongs to a feature KVM advertised in CPUID 0x4000_0001 (adopted),
    // so it exists; every value written is an address of one of this module's 'static areas
    // (with the ABI's flag bits) or a protocol constant, which the host may write into at any
    // time without breaking Rust's rules (the areas are atomics).
    unsafe { cpu::wrmsr(msr, value) };
    true
}

// ---- kvmclock -------------------------------------------------------------------------------

/// Registers this CPU's pvclock area (MSR_KVM_SYSTEM_TIME_NEW). False when kvmclock was not
/// adopted.
pub fn enable_kvmclock(cpu_guard: &InterruptsDisabled) -> bool {
    let cpu = cpu_guard.cpu_index();
    let on = write_kvm_msr(
        feature::CLOCKSOURCE2,
        MSR_KVM_SYSTEM_TIME_NEW,
        physical(&PVCLOCK[cpu]) | 1,
    );
    KVMCLOCK_ON[cpu].store(on, Ordering::Release);
    on
}

/// Reads CPU `cpu`'s pvclock area and the TSC inside one consistent version window.
/// `None` when the area is not registered.
pub fn read_pvclock(cpu: usize) -> Option<(PvclockSnapshot, u64)> {
    let area = PVCLOCK.get(cpu)?;
    if !KVMCLOCK_ON[cpu].load(Ordering::Relaxed) {
        return None;
    }
    loop {
        let version = area.version.load(Ordering::Acquire);
        if version & 1 != 0 {
            core::hint::spin_loop();
            continue;
        }
        let tsc_timestamp = area.tsc_timestamp.load(Ordering::Relaxed);
        let system_time = area.system_time.load(Ordering::Relaxed);
        let tsc_to_system_mul = area.tsc_to_system_mul.load(Ordering::Relaxed);
        let shift_and_flags = area.shift_and_flags.load(Ordering::Relaxed);
        let tsc = cpu::rdtsc();
        // Acquire fence: the field loads above happen before the version re-read.
        core::sync::atomic::fence(Ordering::Acquire);
        if area.version.load(Ordering::Relaxed) == version {
            let fields = PvclockSnapshot {
                version,
                tsc_timestamp,
                system_time,
                tsc_to_system_mul,
                tsc_shift: shift_and_flags as u8 as i8,
                flags: (shift_and_flags >> 8) as u8,
            };
            return Some((fields, tsc));
        }
    }
}

/// Clears the pvclock GUEST_STOPPED flag (bit 1) in this CPU's area, returning whether it was
/// set (the host sets it when the VM was paused, snapshotted or migrated).
pub fn take_guest_stopped(cpu: usize) -> bool {
    const GUEST_STOPPED: u32 = 1 << 1 << 8;
    let Some(area) = PVCLOCK.get(cpu) else {
        return false;
    };
    if !KVMCLOCK_ON[cpu].load(Ordering::Relaxed) {
        return false;
    }
    area.shift_and_flags
        .fetch_and(!GUEST_STOPPED, Ordering::AcqRel)
        & GUEST_STOPPED
        != 0
}

/// Asks the host for the wall clock at boot (MSR_KVM_WALL_CLOCK_NEW) and returns
/// `(seconds, nanoseconds)` of the moment kvmclock's system time was 0.
pub fn read_wall_clock() -> Option<(u32, u32)> {
    if !write_kvm_msr(
        feature::CLOCKSOURCE2,
        MSR_KVM_WALL_CLOCK_NEW,
        physical(&WALL_CLOCK),
    ) {
        return None;
    }
    loop {
        let version = WALL_CLOCK.version.load(Ordering::Acquire);
        let sec = WALL_CLOCK.sec.load(Ordering::Relaxed);
        let nsec = WALL_CLOCK.nsec.load(Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Acquire);
        if version & 1 == 0 && WALL_CLOCK.version.load(Ordering::Relaxed) == version {
            return Some((sec, nsec));
        }
        core::hint::spin_loop();
    }
}

// ---- steal time -----------------------------------------------------------------------------

/// Registers this CPU's steal-time area (MSR_KVM_STEAL_TIME, enable bit 0).
pub fn enable_steal_time(cpu_guard: &InterruptsDisabled) -> bool {
    let cpu = cpu_guard.cpu_index();
    let on = write_kvm_msr(
        feature::STEAL_TIME,
        MSR_KVM_STEAL_TIME,
        physical(&STEAL[cpu]) | 1,
    );
    STEAL_ON[cpu].store(on, Ordering::Release);
    on
}

/// Nanoseconds the host has not run CPU `cpu`'s vCPU while it was runnable (consistent
/// read under the area's version). `None` when its area is not registered.
pub fn steal_ns(cpu: usize) -> Option<u64> {
    let area = STEAL.get(cpu)?;
    if !STEAL_ON[cpu].load(Ordering::Relaxed) {
        return None;
    }
    loop {
        let version = area.version.load(Ordering::Acquire);
        let steal = area.steal.load(Ordering::Relaxed);
        core::sync::atomic::fence(Ordering::Acquire);
        if version & 1 == 0 && area.version.load(Ordering::Relaxed) == version {
            return Some(steal);
        }
        core::hint::spin_loop();
    }
}

/// Whether the host has preempted CPU `cpu`'s vCPU right now (steal-time `preempted` bit 0).
pub fn vcpu_is_preempted(cpu: usize) -> bool {
    STEAL_ON
        .get(cpu)
        .is_some_and(|on| on.load(Ordering::Relaxed))
        && STEAL[cpu].preempted.load(Ordering::Acquire) & 1 != 0
}

/// PV TLB flush: if CPU `cpu`'s vCPU is preempted, asks the host to flush its TLB before it
/// runs again (sets SHOULD_FLUSH with a compare-exchange against a concurrent resume) and
/// returns true: no IPI needed. False means the vCPU runs, or PV TLB flush is off.
pub fn flush_tlb_on_entry(cpu: usize) -> bool {
    const PREEMPTED: u8 = 1;
    const SHOULD_FLUSH: u8 = 2;
    if !adopted(feature::PV_TLB_FLUSH | feature::STEAL_TIME)
        || !STEAL_ON
            .get(cpu)
            .is_some_and(|on| on.load(Ordering::Relaxed))
    {
        return false;
    }
    let preempted = &STEAL[cpu].preempted;
    let state = preempted.load(Ordering::Acquire);
    state & PREEMPTED != 0
        && preempted
            .compare_exchange(
                state,
                state | SHOULD_FLUSH,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
}

// ---- PV EOI ---------------------------------------------------------------------------------

/// Registers this CPU's PV-EOI word (MSR_KVM_PV_EOI_EN, enable bit 0).
pub fn enable_pv_eoi(cpu_guard: &InterruptsDisabled) -> bool {
    let cpu = cpu_guard.cpu_index();
    let on = write_kvm_msr(
        feature::PV_EOI,
        MSR_KVM_PV_EOI_EN,
        physical(&PV_EOI[cpu]) | 1,
    );
    PV_EOI_ON[cpu].store(on, Ordering::Release);
    if on {
        PV_EOI_ANY.store(true, Ordering::Release);
    }
    on
}

/// PV EOI at the end of an interrupt: true when the host said this EOI may be skipped (and
/// the protocol's test-and-clear took that permission), false when the caller must write the
/// LAPIC EOI register as usual. On a CPU without PV EOI: one load and a branch.
#[inline(always)]
pub fn pv_eoi_done(cpu_guard: &InterruptsDisabled) -> bool {
    #[cfg(feature = "no-paravirt")]
    {
        let _ = cpu_guard;
        false
    }
    #[cfg(not(feature = "no-paravirt"))]
    {
        PV_EOI_ANY.load(Ordering::Relaxed) && pv_eoi_take(cpu_guard)
    }
}

/// Set once any CPU registered a PV-EOI word: the only thing the native path reads.
static PV_EOI_ANY: AtomicBool = AtomicBool::new(false);

#[cold]
#[inline(never)]
fn pv_eoi_take(cpu_guard: &InterruptsDisabled) -> bool {
    let cpu = cpu_guard.cpu_index();
    PV_EOI_ON[cpu].load(Ordering::Relaxed)
        && lull_pv::pv_eoi::guest_eoi(&PV_EOI[cpu].0) == lull_pv::pv_eoi::EoiAction::Skipped
}

// ---- async page faults ----------------------------------------------------------------------

/// Delivery bits of MSR_KVM_ASYNC_PF_EN.
const ASYNC_PF_ENABLED: u64 = 1 << 0;
const ASYNC_PF_SEND_ALWAYS: u64 = 1 << 1;
const ASYNC_PF_DELIVERY_AS_INT: u64 = 1 << 3;

/// Enables async page faults on this CPU with "page ready" delivered as interrupt `vector`
/// (MSR_KVM_ASYNC_PF_INT first, as KVM requires) and "page not present" also for faults in
/// kernel mode (SEND_ALWAYS: Lull has only kernel threads).
pub fn enable_async_pf(cpu_guard: &InterruptsDisabled, vector: u8) -> bool {
    let cpu = cpu_guard.cpu_index();
    let required = feature::ASYNC_PF | feature::ASYNC_PF_INT;
    let on = write_kvm_msr(required, MSR_KVM_ASYNC_PF_INT, u64::from(vector))
        && write_kvm_msr(
            required,
            MSR_KVM_ASYNC_PF_EN,
            physical(&ASYNC_PF[cpu])
                | ASYNC_PF_ENABLED
                | ASYNC_PF_SEND_ALWAYS
                | ASYNC_PF_DELIVERY_AS_INT,
        );
    ASYNC_PF_ON[cpu].store(on, Ordering::Release);
    on
}

/// Disables async page faults on this CPU (before power-off or a CPU stops).
pub fn disable_async_pf(cpu_guard: &InterruptsDisabled) {
    let cpu = cpu_guard.cpu_index();
    if ASYNC_PF_ON[cpu].swap(false, Ordering::AcqRel) {
        write_kvm_msr(feature::ASYNC_PF, MSR_KVM_ASYNC_PF_EN, 0);
    }
}

/// Reads and clears the "page not present" reason of the #PF being handled on this CPU
/// (0: an ordinary page fault).
pub fn take_async_pf_reason(cpu_guard: &InterruptsDisabled) -> u32 {
    let cpu = cpu_guard.cpu_index();
    if !ASYNC_PF_ON[cpu].load(Ordering::Relaxed) {
        return 0;
    }
    ASYNC_PF[cpu].flags.swap(0, Ordering::AcqRel)
}

/// Reads the "page ready" token on this CPU, clears it, and acknowledges the notification
/// (MSR_KVM_ASYNC_PF_ACK) so the host can deliver the next one. `None` when no token is
/// posted (a spurious interrupt) or async PF is off.
pub fn take_page_ready_token(cpu_guard: &InterruptsDisabled) -> Option<u32> {
    let cpu = cpu_guard.cpu_index();
    if !ASYNC_PF_ON[cpu].load(Ordering::Relaxed) {
        return None;
    }
    let token = ASYNC_PF[cpu].token.swap(0, Ordering::AcqRel);
    write_kvm_msr(feature::ASYNC_PF_INT, MSR_KVM_ASYNC_PF_ACK, 1);
    (token != 0).then_some(token)
}

// ---- hypercalls -----------------------------------------------------------------------------

/// Executes a hypercall. Only reached through the wrappers below, each of which checks that
/// its feature was adopted (the VMM hides them where hypercalls do not return).
fn hypercall(number: u64, a0: u64, a1: u64, a2: u64) -> i64 {
    let result: i64;
    // SAFETY: VMCALL traps to the hypervisor, which advertised the feature this hypercall
    // belongs to (checked by the caller); it touches no guest memory, and KVM returns the
    // result in RAX leaving other registers intact.
    unsafe {
        core::arch::asm!(
            // RBX is reserved by LLVM: swap the first argument in and out around VMCALL.
            "xchg {a0}, rbx",
            "vmcall",
            "xchg {a0}, rbx",
            a0 = inout(reg) a0 => _,
            inlateout("rax") number as i64 => result,
            in("rcx") a1,
            in("rdx") a2,
            options(nostack)
        )
    };
    result
}

/// APIC id of each CPU index, recorded by each CPU for the PV-spinlock kick.
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

/// Records this CPU's APIC id (from its own LAPIC) so others can kick it.
pub fn record_apic_id(cpu_guard: &InterruptsDisabled) {
    APIC_IDS[cpu_guard.cpu_index()].store(super::apic::local_apic_id(), Ordering::Relaxed);
}

/// Whether PV_UNHALT (halt in the spinlock slow path, kicked by the unlocker) was adopted.
pub fn pv_unhalt_adopted() -> bool {
    adopted(feature::PV_UNHALT)
}

/// Wakes CPU `cpu` from a PV-spinlock halt (KVM_HC_KICK_CPU to its APIC id). False when
/// PV_UNHALT was not adopted or the CPU never recorded its APIC id.
pub fn kick_cpu_index(cpu: usize) -> bool {
    let Some(apic_id) = APIC_IDS
        .get(cpu)
        .map(|id| id.load(Ordering::Relaxed))
        .filter(|&id| id != u32::MAX)
    else {
        return false;
    };
    if !adopted(feature::PV_UNHALT) {
        return false;
    }
    hypercall(KVM_HC_KICK_CPU, 0, u64::from(apic_id), 0);
    true
}

/// Sends `vector` to the APIC ids in `bitmap` (bit i = APIC id `min + i`, 128 ids in two
/// words) with one hypercall (KVM_HC_SEND_IPI). False when PV_SEND_IPI was not adopted.
pub fn send_ipi_mask(bitmap: [u64; 2], min: u32, vector: u8) -> bool {
    if !adopted(feature::PV_SEND_IPI) {
        return false;
    }
    // KVM_HC_SEND_IPI: a0/a1 = bitmap low/high, a2 = min APIC id, a3 (RSI) = ICR low.
    let result: i64;
    // SAFETY: as in `hypercall`; the fourth argument travels in RSI.
    unsafe {
        core::arch::asm!(
            "xchg {a0}, rbx",
            "vmcall",
            "xchg {a0}, rbx",
            a0 = inout(reg) bitmap[0] => _,
            inlateout("rax") KVM_HC_SEND_IPI as i64 => result,
            in("rcx") bitmap[1],
            in("rdx") u64::from(min),
            in("rsi") u64::from(vector),
            options(nostack)
        )
    };
    result >= 0
}

/// Asks the host to run the vCPU with APIC id `apic_id` (preempted while holding something
/// this CPU waits for: KVM_HC_SCHED_YIELD). False when PV_SCHED_YIELD was not adopted.
pub fn sched_yield_to(apic_id: u32) -> bool {
    if !adopted(feature::PV_SCHED_YIELD) {
        return false;
    }
    hypercall(KVM_HC_SCHED_YIELD, u64::from(apic_id), 0, 0);
    true
}

/// Halts until an interrupt or a PV kick, with interrupts as they are (a kicked vCPU leaves
/// HLT even with IF clear under PV_UNHALT).
pub fn halt_for_kick() {
    if !adopted(feature::PV_UNHALT) {
        core::hint::spin_loop();
        return;
    }
    x86_64::instructions::hlt();
}
