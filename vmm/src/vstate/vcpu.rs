//! A vCPU: boot configuration, its run loop on its own thread, pause/resume by signal, and
//! the per-vCPU state a snapshot needs.
//!
//! Pausing: the controller queues a command and sends [`kick_signal`] to the vCPU thread.
//! The handler sets `kvm_run.immediate_exit`, so KVM_RUN returns EINTR whether the signal
//! landed before or during the call; the loop then reads its commands. Before reporting
//! itself paused the vCPU re-enters KVM_RUN once with `immediate_exit` set, which completes
//! a pending port/MMIO read, so the saved registers never miss an IN's result.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_device_attr, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_run, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVMIO,
    KVM_MAX_CPUID_ENTRIES, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::arch::regs;
use crate::devices::{MachineRequest, PortDevice, PortIoBus};
use crate::persist::Persist;
use crate::vstate::vm::ClockRestore;

/// Why a vCPU could not be configured, saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: KVM {operation} failed: {source}")]
    Kvm {
        index: u8,
        operation: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(
        "vCPU {index}: KVM accepted only {accepted} of {total} MSRs; MSR {msr:#x} was refused"
    )]
    MsrRefused {
        index: u8,
        accepted: usize,
        total: usize,
        msr: u32,
    },
    #[error("vCPU {index}: too many {what} entries ({count}) for KVM")]
    TooManyEntries {
        index: u8,
        what: &'static str,
        count: usize,
    },
}

/// Per-vCPU counters of exits to the VMM, by reason (the VMM's own view of guest cost).
#[derive(Debug, Default)]
pub struct VcpuExitCounters {
    pub io_serial: AtomicU64,
    pub io_acpi_pm: AtomicU64,
    pub io_debug_exit: AtomicU64,
    pub io_i8042: AtomicU64,
    pub io_unclaimed: AtomicU64,
    pub mmio: AtomicU64,
    pub hlt: AtomicU64,
    /// KVM_RUN interrupted by a kick (pause, stop) or another signal.
    pub interrupted: AtomicU64,
    pub other: AtomicU64,
}

impl VcpuExitCounters {
    fn count_port(&self, device: PortDevice) {
        let counter = match device {
            PortDevice::Serial => &self.io_serial,
            PortDevice::AcpiPm => &self.io_acpi_pm,
            PortDevice::DebugExit => &self.io_debug_exit,
            PortDevice::I8042 => &self.io_i8042,
            PortDevice::Unclaimed => &self.io_unclaimed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (name, value) pairs, in a stable order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        vec![
            ("io_serial", load(&self.io_serial)),
            ("io_acpi_pm", load(&self.io_acpi_pm)),
            ("io_debug_exit", load(&self.io_debug_exit)),
            ("io_i8042", load(&self.io_i8042)),
            ("io_unclaimed", load(&self.io_unclaimed)),
            ("mmio", load(&self.mmio)),
            ("hlt", load(&self.hlt)),
            ("interrupted", load(&self.interrupted)),
            ("other", load(&self.other)),
        ]
    }
}

/// Orders from the controller to a vCPU thread.
#[derive(Debug)]
pub enum VcpuCommand {
    Pause,
    Resume,
    Save,
    Stop,
}

/// Answers from a vCPU thread to the controller.
#[derive(Debug)]
pub enum VcpuResponse {
    Paused,
    Resumed,
    Saved(Box<Result<VcpuState, VcpuError>>),
    Stopped,
}

/// Something a vCPU reports to the whole VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The guest asked for poweroff, reset or a debug exit.
    Machine(MachineRequest),
    /// The vCPU cannot continue (triple fault, entry failure, KVM error).
    Failed { index: u8, reason: String },
    /// The host user asked to quit (console escape).
    HostQuit,
    /// The guest was migrated and runs on the destination now; this VMM is done.
    MigratedAway,
    /// The guest cannot go on (post-copy lost the other side); the reason was logged.
    Fatal(String),
}

/// A vCPU and its KVM fd.
pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    /// MSRs saved in snapshots (those of KVM_GET_MSR_INDEX_LIST that this vCPU can read).
    pub msr_indices: Vec<u32>,
}

/// Saved form of a vCPU (Firecracker's set, in KVM's get order).
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
    pub tsc_khz: Option<u32>,
    /// Guest TSC minus host TSC (KVM_VCPU_TSC_OFFSET), where KVM exposes it.
    pub tsc_offset: Option<i64>,
}

/// KVM's paravirt MSRs (Linux `asm/kvm_para.h`): legacy kvmclock, then the 0x4b564dxx range.
pub const MSR_KVM_WALL_CLOCK: u32 = 0x11;
pub const MSR_KVM_SYSTEM_TIME: u32 = 0x12;
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
pub const MSR_KVM_ASYNC_PF_EN: u32 = 0x4b56_4d02;
pub const MSR_KVM_STEAL_TIME: u32 = 0x4b56_4d03;
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
pub const MSR_KVM_POLL_CONTROL: u32 = 0x4b56_4d05;
pub const MSR_KVM_ASYNC_PF_INT: u32 = 0x4b56_4d06;
pub const MSR_KVM_ASYNC_PF_ACK: u32 = 0x4b56_4d07;

/// The paravirt MSRs every snapshot holds (where the host's KVM has them), in the order a
/// restore writes them, after all other MSRs:
/// - the kvmclock MSRs first. The wall-clock ones make KVM write the guest's wall-clock
///   structure at once, from the VM's kvmclock, so they must come after KVM_SET_CLOCK: the VM's
///   clock is restored (`Vm::restore`) before any vCPU exists;
/// - MSR_KVM_ASYNC_PF_INT (the "page ready" vector) before MSR_KVM_ASYNC_PF_EN: KVM's
///   documentation requires the vector to be set before the mechanism is enabled (enabling it
///   queues a "page ready" for every waiter at once);
/// - MSR_KVM_ASYNC_PF_ACK last (it reads 0 and writing 0 does nothing; kept for symmetry).
pub const PV_MSRS_IN_RESTORE_ORDER: [u32; 10] = [
    MSR_KVM_WALL_CLOCK,
    MSR_KVM_SYSTEM_TIME,
    MSR_KVM_WALL_CLOCK_NEW,
    MSR_KVM_SYSTEM_TIME_NEW,
    MSR_KVM_STEAL_TIME,
    MSR_KVM_PV_EOI_EN,
    MSR_KVM_POLL_CONTROL,
    MSR_KVM_ASYNC_PF_INT,
    MSR_KVM_ASYNC_PF_EN,
    MSR_KVM_ASYNC_PF_ACK,
];

/// `entries` in the order a restore writes them: every other MSR first, in saved order (KVM's
/// index-list order), then the paravirt MSRs in [`PV_MSRS_IN_RESTORE_ORDER`]. KVM applies a
/// KVM_SET_MSRS batch entry by entry, so this order is the order KVM sees.
pub fn msr_restore_order(entries: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let rank = |entry: &kvm_msr_entry| {
        PV_MSRS_IN_RESTORE_ORDER
            .iter()
            .position(|&index| index == entry.index)
            .map_or(0, |position| position + 1)
    };
    let mut ordered = entries.to_vec();
    ordered.sort_by_key(rank); // stable: the others keep their order
    ordered
}

/// Largest MSR batch KVM takes in one KVM_GET_MSRS/KVM_SET_MSRS.
const MSR_BATCH: usize = 256;

/// LAPIC register offsets and delivery modes for LINT0/LINT1 (what a BIOS programs).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

impl Vcpu {
    fn error(&self, operation: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError + '_ {
        move |source| VcpuError::Kvm {
            index: self.index,
            operation,
            source,
        }
    }

    /// Sets CPUID and the PVH entry state: registers, segments, FPU, MSRs, LINT0/LINT1.
    pub fn configure_for_boot(
        &self,
        cpuid: &CpuId,
        entry: regs::KernelEntry,
    ) -> Result<(), VcpuError> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(self.error("KVM_SET_CPUID2"))?;
        let msrs = regs::boot_msrs();
        let written = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.error("KVM_SET_MSRS"))?;
        if written != msrs.as_slice().len() {
            return Err(VcpuError::MsrRefused {
                index: self.index,
                accepted: written,
                total: msrs.as_slice().len(),
                msr: msrs.as_slice()[written].index,
            });
        }
        let sregs = self.fd.get_sregs().map_err(self.error("KVM_GET_SREGS"))?;
        self.fd
            .set_sregs(&regs::boot_sregs(sregs))
            .map_err(self.error("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs::boot_regs(entry))
            .map_err(self.error("KVM_SET_REGS"))?;
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(self.error("KVM_SET_FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(self.error("KVM_GET_LAPIC"))?;
        set_lapic_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        set_lapic_delivery_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.error("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// Keeps the MSRs of `candidates` (plus the paravirt MSRs, should KVM's list lack them)
    /// that this vCPU can read (KVM lists some that a given host CPU lacks; GET_MSRS stops at
    /// the first of those).
    pub fn select_readable_msrs(&mut self, candidates: &[u32]) -> Result<(), VcpuError> {
        let mut candidates = candidates.to_vec();
        for index in PV_MSRS_IN_RESTORE_ORDER {
            if !candidates.contains(&index) {
                candidates.push(index);
            }
        }
        let entries = self.read_msrs(&candidates, true)?;
        self.msr_indices = entries.iter().map(|entry| entry.index).collect();
        Ok(())
    }

    fn read_msrs(
        &self,
        indices: &[u32],
        skip_unreadable: bool,
    ) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let mut result = Vec::with_capacity(indices.len());
        let mut remaining = indices;
        while !remaining.is_empty() {
            let batch = &remaining[..remaining.len().min(MSR_BATCH)];
            let entries: Vec<kvm_msr_entry> = batch
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::TooManyEntries {
                index: self.index,
                what: "MSR",
                count: entries.len(),
            })?;
            let read = self
                .fd
                .get_msrs(&mut msrs)
                .map_err(self.error("KVM_GET_MSRS"))?;
            result.extend_from_slice(&msrs.as_slice()[..read]);
            if read < batch.len() {
                if !skip_unreadable {
                    return Err(VcpuError::MsrRefused {
                        index: self.index,
                        accepted: result.len(),
                        total: indices.len(),
                        msr: batch[read],
                    });
                }
                remaining = &remaining[read + 1..];
            } else {
                remaining = &remaining[read..];
            }
        }
        Ok(result)
    }

    fn write_msrs(&self, entries: &[kvm_msr_entry]) -> Result<(), VcpuError> {
        for (batch_number, batch) in entries.chunks(MSR_BATCH).enumerate() {
            let msrs = Msrs::from_entries(batch).map_err(|_| VcpuError::TooManyEntries {
                index: self.index,
                what: "MSR",
                count: batch.len(),
            })?;
            let written = self
                .fd
                .set_msrs(&msrs)
                .map_err(self.error("KVM_SET_MSRS"))?;
            if written < batch.len() {
                return Err(VcpuError::MsrRefused {
                    index: self.index,
                    accepted: batch_number * MSR_BATCH + written,
                    total: entries.len(),
                    msr: batch[written].index,
                });
            }
        }
        Ok(())
    }
}

vmm_sys_util::ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);
vmm_sys_util::ioctl_iow_nr!(KVM_GET_DEVICE_ATTR, KVMIO, 0xe2, kvm_device_attr);

impl Vcpu {
    /// KVM_VCPU_TSC_OFFSET (guest TSC − host TSC), if this KVM has it (Linux 5.16+).
    /// kvm-ioctls wraps vCPU device attributes only for Arm, hence the raw ioctl.
    pub fn tsc_offset(&self) -> Option<i64> {
        let mut offset = 0i64;
        let attribute = kvm_device_attr {
            group: KVM_VCPU_TSC_CTRL,
            attr: u64::from(KVM_VCPU_TSC_OFFSET),
            addr: std::ptr::addr_of_mut!(offset) as u64,
            flags: 0,
        };
        // SAFETY: KVM_GET_DEVICE_ATTR on a vCPU fd we own reads `attribute` and writes 8
        // bytes (a u64 offset) to `attribute.addr`, which points at `offset`, live here.
        let result = unsafe { ioctl_with_ref(&self.fd, KVM_GET_DEVICE_ATTR(), &attribute) };
        (result == 0).then_some(offset)
    }

    fn set_tsc_offset(&self, offset: i64) -> Result<(), VcpuError> {
        let attribute = kvm_device_attr {
            group: KVM_VCPU_TSC_CTRL,
            attr: u64::from(KVM_VCPU_TSC_OFFSET),
            addr: std::ptr::addr_of!(offset) as u64,
            flags: 0,
        };
        // SAFETY: KVM_SET_DEVICE_ATTR on a vCPU fd we own reads `attribute` and 8 bytes
        // from `attribute.addr`, which points at `offset`, live here.
        let result = unsafe { ioctl_with_ref(&self.fd, KVM_SET_DEVICE_ATTR(), &attribute) };
        if result != 0 {
            return Err(VcpuError::Kvm {
                index: self.index,
                operation: "KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)",
                source: vmm_sys_util::errno::Error::last(),
            });
        }
        Ok(())
    }

    /// After [`Persist::restore`]: moves the guest TSC forward by the guest time kvmclock
    /// moved across the restore (see `Vm::restore`), so TSC and kvmclock keep the relation
    /// they had at the snapshot. With the TSC offset and the host TSC on both sides, exactly
    /// (the algorithm of KVM's documentation for KVM_VCPU_TSC_OFFSET); otherwise by writing
    /// the TSC MSR, as close as two ioctls apart. Then tells a kvmclock guest it was stopped
    /// (KVM_KVMCLOCK_CTRL), so its watchdogs do not take the jump for a lockup.
    pub fn restore_tsc(
        &self,
        state: &VcpuState,
        clock: &ClockRestore,
        clock_now: impl FnOnce() -> Option<u64>,
    ) -> Result<(), VcpuError> {
        let khz = state.tsc_khz.or_else(|| self.fd.get_tsc_khz().ok());
        let cycles = |nanoseconds: u64| -> i64 {
            (u128::from(nanoseconds) * u128::from(khz.unwrap_or(0)) / 1_000_000) as i64
        };
        // KVM_VCPU_TSC_OFFSET is asked for only when the exact way has the rest of what it
        // needs (a vCPU ioctl, ~15 µs here, is restore latency).
        match (
            state.tsc_offset,
            clock.saved_host_tsc,
            clock.restored_host_tsc,
        ) {
            (Some(saved_offset), Some(saved_host), Some(restored_host))
                if self.tsc_offset().is_some() =>
            {
                let offset = saved_offset
                    .wrapping_add(cycles(clock.elapsed_ns()))
                    .wrapping_add(saved_host.wrapping_sub(restored_host) as i64);
                self.set_tsc_offset(offset)?;
            }
            _ => {
                let saved_tsc = state
                    .msrs
                    .iter()
                    .find(|entry| entry.index == regs::MSR_IA32_TSC);
                if let (Some(saved_tsc), Some(now)) = (saved_tsc, clock_now()) {
                    let elapsed = now.saturating_sub(clock.saved_ns);
                    let entry = kvm_msr_entry {
                        index: regs::MSR_IA32_TSC,
                        data: saved_tsc.data.wrapping_add(cycles(elapsed) as u64),
                        ..Default::default()
                    };
                    self.write_msrs(&[entry])?;
                }
            }
        }
        let _ = self.fd.kvmclock_ctrl(); // EINVAL when the guest has no kvmclock: nothing to tell
        Ok(())
    }
}

fn set_lapic_delivery_mode(lapic: &mut kvm_lapic_state, register: usize, mode: u32) {
    let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[register + i] as u8);
    let value = u32::from_le_bytes(bytes);
    let value = (value & !0x700) | (mode << 8);
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[register + i] = *byte as _;
    }
}

/// Saving reads every piece KVM keeps for the vCPU; restoring writes them to a new vCPU in
/// the order that keeps dependencies right (LAPIC before MSRs for TSC-deadline, paravirt MSRs
/// last and in [`msr_restore_order`], events last). The VM's clock must be restored first
/// (see [`PV_MSRS_IN_RESTORE_ORDER`]).
impl Persist for Vcpu {
    type State = VcpuState;
    type RestoreArgs = Vcpu;
    type Error = VcpuError;

    fn save(&self) -> Result<VcpuState, VcpuError> {
        let mp_state = self
            .fd
            .get_mp_state()
            .map_err(self.error("KVM_GET_MP_STATE"))?;
        let regs = self.fd.get_regs().map_err(self.error("KVM_GET_REGS"))?;
        let sregs = self.fd.get_sregs().map_err(self.error("KVM_GET_SREGS"))?;
        let xsave = self.fd.get_xsave().map_err(self.error("KVM_GET_XSAVE"))?;
        let xcrs = self.fd.get_xcrs().map_err(self.error("KVM_GET_XCRS"))?;
        let debug_regs = self
            .fd
            .get_debug_regs()
            .map_err(self.error("KVM_GET_DEBUGREGS"))?;
        let lapic = self.fd.get_lapic().map_err(self.error("KVM_GET_LAPIC"))?;
        let tsc_khz = self.fd.get_tsc_khz().ok();
        let cpuid = self
            .fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(self.error("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let msrs = self.read_msrs(&self.msr_indices, false)?;
        let vcpu_events = self
            .fd
            .get_vcpu_events()
            .map_err(self.error("KVM_GET_VCPU_EVENTS"))?;
        let tsc_offset = self.tsc_offset();
        Ok(VcpuState {
            index: self.index,
            cpuid,
            mp_state,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            msrs,
            vcpu_events,
            tsc_khz,
            tsc_offset,
        })
    }

    fn restore(mut vcpu: Vcpu, state: &VcpuState) -> Result<Vcpu, VcpuError> {
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(|_| VcpuError::TooManyEntries {
            index: vcpu.index,
            what: "CPUID",
            count: state.cpuid.len(),
        })?;
        vcpu.fd
            .set_cpuid2(&cpuid)
            .map_err(vcpu.error("KVM_SET_CPUID2"))?;
        vcpu.fd
            .set_mp_state(state.mp_state)
            .map_err(vcpu.error("KVM_SET_MP_STATE"))?;
        vcpu.fd
            .set_regs(&state.regs)
            .map_err(vcpu.error("KVM_SET_REGS"))?;
        vcpu.fd
            .set_sregs(&state.sregs)
            .map_err(vcpu.error("KVM_SET_SREGS"))?;
        // SAFETY: `state.xsave` is a full `kvm_xsave` (4 KiB) as KVM_GET_XSAVE returned it;
        // the host's XSAVE area fits it (KVM_CAP_XSAVE2 ≤ 4096 is checked at VM creation).
        unsafe { vcpu.fd.set_xsave(&state.xsave) }.map_err(vcpu.error("KVM_SET_XSAVE"))?;
        vcpu.fd
            .set_xcrs(&state.xcrs)
            .map_err(vcpu.error("KVM_SET_XCRS"))?;
        vcpu.fd
            .set_debug_regs(&state.debug_regs)
            .map_err(vcpu.error("KVM_SET_DEBUGREGS"))?;
        vcpu.fd
            .set_lapic(&state.lapic)
            .map_err(vcpu.error("KVM_SET_LAPIC"))?;
        vcpu.write_msrs(&msr_restore_order(&state.msrs))?;
        vcpu.fd
            .set_vcpu_events(&state.vcpu_events)
            .map_err(vcpu.error("KVM_SET_VCPU_EVENTS"))?;
        vcpu.msr_indices = state.msrs.iter().map(|entry| entry.index).collect();
        Ok(vcpu)
    }
}

thread_local! {
    /// This thread's `kvm_run` page, for the kick handler. Const-initialised and without a
    /// destructor, so reading it from a signal handler is async-signal-safe.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The real-time signal that kicks vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's kvm_run mapping, set by `run_loop` and cleared
        // before the VcpuFd (which owns the mapping) is dropped; a volatile byte write is
        // async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler; call once before starting vCPU threads.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
}

/// Installs the kick handler once per process (later calls do nothing).
pub fn ensure_kick_handler() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Without the handler a kick would kill the process; failing to install it is a
        // broken host, and pause would then be impossible, so say so loudly.
        if let Err(error) = install_kick_handler() {
            eprintln!(
                "lull-vmm: cannot install the vCPU kick handler ({error}); pause will not work"
            );
        }
    });
}

/// A thread a vCPU runs on that has no `JoinHandle` to kick it through: the caller's own (a
/// restore runs vCPU 0 on the process's main thread, see `Machine::restore_here`).
#[derive(Debug, Clone, Copy)]
pub struct KickableThread {
    /// The `pthread_t`, as an integer: it is a pointer (not Send) in musl.
    id: usize,
}

impl KickableThread {
    /// The calling thread.
    pub fn current() -> Self {
        // SAFETY: pthread_self has no preconditions.
        let id = unsafe { libc::pthread_self() } as usize;
        Self { id }
    }

    /// Sends it [`kick_signal`]. Only for a thread that outlives its machine, such as the main
    /// thread, which ends only with the process.
    pub fn kick(&self) {
        // SAFETY: the thread is alive (above); pthread_kill only queues a signal, whose
        // handler (installed by `ensure_kick_handler` before any vCPU runs) is
        // async-signal-safe.
        unsafe { libc::pthread_kill(self.id as libc::pthread_t, kick_signal()) };
    }
}

/// CPU time this thread has used (CLOCK_THREAD_CPUTIME_ID).
pub fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer, which points at `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// How [`run_with_deadline`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DeadlineRun<T> {
    /// The exit handler returned this.
    Done(T),
    /// The deadline passed and the vCPU was kicked out of KVM_RUN; `cpu_time` is the CPU
    /// time this thread used meanwhile (close to the wall time when KVM_RUN spun in the host
    /// kernel, much less when the thread merely waited for a core).
    TimedOut { cpu_time: std::time::Duration },
}

/// Runs `fd` on the calling thread, giving each KVM_RUN result to `handle` until it returns
/// `Some`, for at most `timeout` of wall time: then a watchdog thread sends [`kick_signal`] to
/// this thread (again every millisecond until KVM_RUN returns, since a spin inside the host
/// kernel ends only on a signal). For the hypercall probe and for tests, which must never
/// wait on a guest forever; the VM's own vCPU threads use `run_loop`.
pub fn run_with_deadline<T>(
    fd: &mut VcpuFd,
    timeout: std::time::Duration,
    mut handle: impl FnMut(Result<VcpuExit, kvm_ioctls::Error>) -> Option<T>,
) -> DeadlineRun<T> {
    ensure_kick_handler();
    // SAFETY: pthread_self has no preconditions. Carried as an integer: pthread_t is an
    // integer in glibc but a pointer (not Send) in musl.
    let this_thread = unsafe { libc::pthread_self() } as usize;
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, done_receiver) = std::sync::mpsc::channel::<()>();
    KVM_RUN.with(|cell| cell.set(fd.get_kvm_run() as *mut kvm_run));
    let watchdog = {
        let fired = fired.clone();
        std::thread::spawn(move || {
            use std::sync::mpsc::RecvTimeoutError::Timeout;
            if done_receiver.recv_timeout(timeout) != Err(Timeout) {
                return;
            }
            fired.store(true, Ordering::SeqCst);
            loop {
                // SAFETY: `this_thread` is alive: it joins this thread before it returns.
                unsafe { libc::pthread_kill(this_thread as libc::pthread_t, kick_signal()) };
                if done_receiver.recv_timeout(std::time::Duration::from_millis(1)) != Err(Timeout) {
                    return;
                }
            }
        })
    };
    let cpu_before = thread_cpu_time();
    let outcome = loop {
        let exit = fd.run();
        let interrupted = matches!(&exit, Err(error) if error.errno() == libc::EINTR);
        if interrupted {
            if fired.load(Ordering::SeqCst) {
                break DeadlineRun::TimedOut {
                    cpu_time: thread_cpu_time().saturating_sub(cpu_before),
                };
            }
            fd.set_kvm_immediate_exit(0); // some other signal: carry on
            continue;
        }
        if let Some(result) = handle(exit) {
            break DeadlineRun::Done(result);
        }
        if fired.load(Ordering::SeqCst) {
            break DeadlineRun::TimedOut {
                cpu_time: thread_cpu_time().saturating_sub(cpu_before),
            };
        }
    };
    drop(done);
    let _ = watchdog.join();
    // Every kick was delivered by now (the watchdog is gone and signals to this thread are
    // taken on its way back from each system call), so nothing sets immediate_exit later.
    KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
    fd.set_kvm_immediate_exit(0);
    outcome
}

/// What a vCPU thread needs besides its vCPU.
pub struct VcpuContext {
    pub bus: Arc<PortIoBus>,
    pub commands: Receiver<VcpuCommand>,
    pub responses: Sender<VcpuResponse>,
    pub events: Sender<VmEvent>,
    pub counters: Arc<VcpuExitCounters>,
    /// Told once, when the thread is about to enter KVM_RUN for the first time, and when.
    pub started: Sender<std::time::Instant>,
}

enum LoopControl {
    Continue,
    /// Stop running the guest and wait for commands (after a machine request or failure).
    Park,
}

impl Vcpu {
    /// Runs the vCPU until told to stop. Called on the vCPU's own thread.
    pub fn run_loop(mut self, context: VcpuContext) {
        KVM_RUN.with(|cell| cell.set(self.fd.get_kvm_run() as *mut kvm_run));
        crate::vstate::async_pf::register_vcpu(self.index);
        let _ = context.started.send(std::time::Instant::now());
        let stopped = 'outer: loop {
            // Commands first: a kick may have been for one.
            while let Ok(command) = context.commands.try_recv() {
                match command {
                    VcpuCommand::Pause => {
                        if self.paused(&context, true) {
                            break 'outer true;
                        }
                    }
                    VcpuCommand::Stop => break 'outer true,
                    VcpuCommand::Resume => {
                        let _ = context.responses.send(VcpuResponse::Resumed);
                    }
                    VcpuCommand::Save => {
                        let _ = context
                            .responses
                            .send(VcpuResponse::Saved(Box::new(self.save())));
                    }
                }
            }
            match self.run_once(&context) {
                LoopControl::Continue => {}
                LoopControl::Park => {
                    if self.paused(&context, false) {
                        break true;
                    }
                }
            }
        };
        KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
        if stopped {
            let _ = context.responses.send(VcpuResponse::Stopped);
        }
    }

    /// Pause: complete pending I/O, report (if `announce`: parking after a machine request
    /// answers no command), serve commands until Resume (false) or Stop (true).
    fn paused(&mut self, context: &VcpuContext, announce: bool) -> bool {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
        let _ = self.fd.kvmclock_ctrl(); // tells a kvmclock guest it was paused; EINVAL otherwise
        if announce {
            let _ = context.responses.send(VcpuResponse::Paused);
        }
        loop {
            match context.commands.recv() {
                Ok(VcpuCommand::Resume) => {
                    let _ = context.responses.send(VcpuResponse::Resumed);
                    return false;
                }
                Ok(VcpuCommand::Save) => {
                    let _ = context
                        .responses
                        .send(VcpuResponse::Saved(Box::new(self.save())));
                }
                Ok(VcpuCommand::Pause) => {
                    let _ = context.responses.send(VcpuResponse::Paused);
                }
                Ok(VcpuCommand::Stop) | Err(_) => return true,
            }
        }
    }

    fn run_once(&mut self, context: &VcpuContext) -> LoopControl {
        let counters = &context.counters;
        let index = self.index;
        crate::vstate::async_pf::entering_guest(index);
        let exit = self.fd.run();
        crate::vstate::async_pf::left_guest(index);
        let failure = match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                counters.count_port(context.bus.read(port, data));
                return LoopControl::Continue;
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let (device, request) = context.bus.write(port, data);
                counters.count_port(device);
                let Some(request) = request else {
                    return LoopControl::Continue;
                };
                let _ = context.events.send(VmEvent::Machine(request));
                return LoopControl::Park;
            }
            Ok(VcpuExit::MmioRead(address, data)) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                if !context.bus.mmio.read(address, data) {
                    data.fill(0xff);
                }
                return LoopControl::Continue;
            }
            Ok(VcpuExit::MmioWrite(address, data)) => {
                counters.mmio.fetch_add(1, Ordering::Relaxed);
                context.bus.mmio.write(address, data);
                return LoopControl::Continue;
            }
            Ok(VcpuExit::Hlt) => {
                counters.hlt.fetch_add(1, Ordering::Relaxed);
                return LoopControl::Continue;
            }
            Ok(VcpuExit::Shutdown) => "triple fault (KVM_EXIT_SHUTDOWN)".to_string(),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                format!("VM entry failed: hardware reason {reason:#x} on host CPU {cpu}")
            }
            Ok(VcpuExit::InternalError) => "KVM internal error (emulation failure)".to_string(),
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let request = if kind == kvm_bindings::KVM_SYSTEM_EVENT_RESET {
                    MachineRequest::Reset
                } else {
                    MachineRequest::PowerOff
                };
                let _ = context.events.send(VmEvent::Machine(request));
                return LoopControl::Park;
            }
            Ok(other) => {
                counters.other.fetch_add(1, Ordering::Relaxed);
                format!("unexpected exit {other:?}")
            }
            Err(error) if error.errno() == libc::EINTR => {
                counters.interrupted.fetch_add(1, Ordering::Relaxed);
                self.fd.set_kvm_immediate_exit(0);
                // The kick may be an async-PF request from the page-fault thread.
                crate::vstate::async_pf::on_kick(&self.fd, index);
                return LoopControl::Continue;
            }
            Err(error) if error.errno() == libc::EAGAIN => return LoopControl::Continue,
            Err(error) => format!("KVM_RUN failed: {error}"),
        };
        let _ = context.events.send(VmEvent::Failed {
            index,
            reason: failure,
        });
        LoopControl::Park
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout::RamRegion;
    use crate::vstate::memory::GuestMemory;
    use crate::vstate::vm::Vm;

    fn vcpu_on_new_vm(kvm: &kvm_ioctls::Kvm) -> (Vm, Vcpu, GuestMemory) {
        let memory = GuestMemory::anonymous(&[RamRegion {
            guest_address: 0,
            size: 2 << 20,
        }])
        .unwrap();
        let vm = Vm::create(kvm, &memory).unwrap();
        let fd = vm.fd.create_vcpu(0).unwrap();
        let mut vcpu = Vcpu {
            index: 0,
            fd,
            msr_indices: Vec::new(),
        };
        let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        vcpu.configure_for_boot(
            &crate::arch::cpuid::vcpu_cpuid(&supported, 0, 1, true, true),
            regs::KernelEntry::Pvh(0x100000),
        )
        .unwrap();
        let msr_list = kvm.get_msr_index_list().unwrap();
        vcpu.select_readable_msrs(msr_list.as_slice()).unwrap();
        (vm, vcpu, memory)
    }

    #[test]
    fn lapic_delivery_mode_is_written_in_bits_8_to_10() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[APIC_LVT0 + 2] = 1; // a masked bit (16) that must survive
        set_lapic_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(lapic.regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(lapic.regs[APIC_LVT0 + 2] as u8, 1);
    }

    fn msr(index: u32, data: u64) -> kvm_msr_entry {
        kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }
    }

    #[test]
    fn pv_msrs_are_restored_last_with_the_async_pf_vector_before_enabling() {
        // KVM's index-list order: ASYNC_PF_EN comes before ASYNC_PF_INT there.
        let saved = [
            msr(MSR_KVM_SYSTEM_TIME, 1),
            msr(MSR_KVM_WALL_CLOCK_NEW, 2),
            msr(MSR_KVM_ASYNC_PF_EN, 3),
            msr(regs::MSR_IA32_TSC, 4),
            msr(MSR_KVM_STEAL_TIME, 5),
            msr(MSR_KVM_ASYNC_PF_INT, 6),
            msr(regs::MSR_IA32_APICBASE, 7),
            msr(MSR_KVM_POLL_CONTROL, 8),
        ];
        let order: Vec<u32> = msr_restore_order(&saved)
            .iter()
            .map(|entry| entry.index)
            .collect();
        assert_eq!(
            order,
            [
                regs::MSR_IA32_TSC,
                regs::MSR_IA32_APICBASE,
                MSR_KVM_SYSTEM_TIME,
                MSR_KVM_WALL_CLOCK_NEW,
                MSR_KVM_STEAL_TIME,
                MSR_KVM_POLL_CONTROL,
                MSR_KVM_ASYNC_PF_INT,
                MSR_KVM_ASYNC_PF_EN,
            ]
        );
        let position = |index| order.iter().position(|&i| i == index).unwrap();
        assert!(position(MSR_KVM_ASYNC_PF_INT) < position(MSR_KVM_ASYNC_PF_EN));
        // Values travel with their MSRs; nothing is lost or invented.
        let reordered = msr_restore_order(&saved);
        assert_eq!(reordered.len(), saved.len());
        for entry in &saved {
            assert!(reordered
                .iter()
                .any(|r| r.index == entry.index && r.data == entry.data));
        }
    }

    #[test]
    fn restore_order_lists_every_pv_msr_once() {
        let mut sorted = PV_MSRS_IN_RESTORE_ORDER.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), PV_MSRS_IN_RESTORE_ORDER.len());
    }

    /// Guest code (32-bit, at `at`): WRMSR each of `writes`, OUT to 0x510, then RDMSR each of
    /// `reads` and OUT its low half to 0x511, then OUT to 0x512 and halt.
    fn pv_msr_guest(writes: &[(u32, u32)], reads: &[u32]) -> Vec<u8> {
        let mut code = Vec::new();
        let imm = |code: &mut Vec<u8>, opcode: u8, value: u32| {
            code.push(opcode);
            code.extend_from_slice(&value.to_le_bytes());
        };
        for &(index, value) in writes {
            imm(&mut code, 0xb9, index); // mov $index, %ecx
            imm(&mut code, 0xb8, value); // mov $value, %eax
            imm(&mut code, 0xba, 0); // mov $0, %edx
            code.extend_from_slice(&[0x0f, 0x30]); // wrmsr
        }
        code.extend_from_slice(&[0x66, 0xba, 0x10, 0x05, 0xee]); // out %al, $0x510
        for &index in reads {
            imm(&mut code, 0xb9, index);
            code.extend_from_slice(&[0x0f, 0x32]); // rdmsr
            code.extend_from_slice(&[0x66, 0xba, 0x11, 0x05, 0xef]); // out %eax, $0x511
        }
        code.extend_from_slice(&[0x66, 0xba, 0x12, 0x05, 0xee, 0xf4, 0xeb, 0xfd]);
        code
    }

    /// What the guest OUTs until it writes `last_port` (port, value), under a deadline.
    fn run_guest_until(vcpu: &mut Vcpu, last_port: u16) -> Vec<(u16, u32)> {
        let mut outs = Vec::new();
        let outcome =
            run_with_deadline(
                &mut vcpu.fd,
                std::time::Duration::from_secs(20),
                |exit| match exit {
                    Ok(VcpuExit::IoOut(port, data)) => {
                        let mut value = [0u8; 4];
                        value[..data.len()].copy_from_slice(data);
                        outs.push((port, u32::from_le_bytes(value)));
                        (port == last_port).then_some(Ok(()))
                    }
                    other => Some(Err(format!("{other:?}"))),
                },
            );
        match outcome {
            DeadlineRun::Done(Ok(())) => outs,
            other => panic!("guest did not reach port {last_port:#x}: {other:?}, outs {outs:x?}"),
        }
    }

    /// A guest enables every paravirt MSR the way Linux does (vector before ASYNC_PF_EN); the
    /// VM and vCPU are saved, restored into a second VM (clock first, as `Machine::restore`
    /// does), and both KVM (KVM_GET_MSRS) and the guest itself (RDMSR, after the restore) read
    /// back what it wrote.
    #[test]
    #[ignore = "needs /dev/kvm"]
    fn pv_msrs_written_by_the_guest_survive_snapshot_and_restore() {
        let kvm = crate::testing::kvm("pv_msrs_written_by_the_guest_survive_snapshot_and_restore");
        // Guest-physical addresses of the structures KVM keeps in guest RAM (all in the 2 MiB).
        let writes = [
            (MSR_KVM_WALL_CLOCK_NEW, 0x1_0000),
            (MSR_KVM_SYSTEM_TIME_NEW, 0x1_1000 | 1),
            (MSR_KVM_STEAL_TIME, 0x1_2000 | 1),
            (MSR_KVM_PV_EOI_EN, 0x1_3000 | 1),
            (MSR_KVM_POLL_CONTROL, 0), // KVM's default is 1
            (MSR_KVM_ASYNC_PF_INT, 0xec),
            (MSR_KVM_ASYNC_PF_EN, 0x1_4000 | 0x8 | 1), // delivery as interrupt, enabled
        ];
        let reads: Vec<u32> = writes.iter().map(|&(index, _)| index).collect();
        let (vm, mut vcpu, memory) = vcpu_on_new_vm(&kvm);
        regs::write_boot_gdt(&memory.mmap).unwrap();
        let code = pv_msr_guest(&writes, &reads);
        vm_memory::Bytes::write_slice(&memory.mmap, &code, vm_memory::GuestAddress(0x10_0000))
            .unwrap();
        let outs = run_guest_until(&mut vcpu, 0x510);
        assert_eq!(outs.len(), 1, "{outs:x?}");
        // Complete the OUT (as a pause does) so the saved RIP is past it.
        vcpu.fd.set_kvm_immediate_exit(1);
        let _ = vcpu.fd.run();
        vcpu.fd.set_kvm_immediate_exit(0);
        let vm_state = vm.save().unwrap();
        let state = vcpu.save().unwrap();
        let saved = |index: u32| {
            state
                .msrs
                .iter()
                .find(|entry| entry.index == index)
                .map(|entry| entry.data)
        };
        for &(index, value) in &writes {
            assert_eq!(saved(index), Some(u64::from(value)), "saved MSR {index:#x}");
        }
        // The legacy kvmclock MSRs read the same KVM fields as the new ones.
        assert_eq!(saved(MSR_KVM_WALL_CLOCK), Some(0x1_0000));
        assert_eq!(saved(MSR_KVM_SYSTEM_TIME), Some(0x1_1001));
        drop(vcpu);
        drop(vm);

        let (fresh_vm, fresh_vcpu, fresh_memory) = vcpu_on_new_vm(&kvm);
        // The new VM gets the old one's RAM (the guest's code and KVM's structures).
        let mut ram = vec![0u8; 2 << 20];
        vm_memory::Bytes::read_slice(&memory.mmap, &mut ram, vm_memory::GuestAddress(0)).unwrap();
        vm_memory::Bytes::write_slice(&fresh_memory.mmap, &ram, vm_memory::GuestAddress(0))
            .unwrap();
        let _restored_vm = Vm::restore(fresh_vm, &vm_state).unwrap();
        let mut restored = Vcpu::restore(fresh_vcpu, &state).unwrap();
        let indices: Vec<u32> = PV_MSRS_IN_RESTORE_ORDER
            .iter()
            .copied()
            .filter(|&index| saved(index).is_some())
            .collect();
        for entry in restored.read_msrs(&indices, false).unwrap() {
            assert_eq!(
                Some(entry.data),
                saved(entry.index),
                "MSR {:#x} after restore",
                entry.index
            );
        }
        let outs = run_guest_until(&mut restored, 0x512);
        let read_back: Vec<u32> = outs
            .iter()
            .filter(|(port, _)| *port == 0x511)
            .map(|&(_, value)| value)
            .collect();
        let written: Vec<u32> = writes.iter().map(|&(_, value)| value).collect();
        assert_eq!(read_back, written, "what the restored guest reads");
    }

    /// Saves a configured vCPU with distinctive registers and MSRs, restores into a vCPU of a
    /// second VM, saves again: registers, segments, LAPIC, XSAVE and MSRs come back equal.
    #[test]
    #[ignore = "needs /dev/kvm"]
    fn vcpu_state_round_trips_through_a_second_vm() {
        let kvm = crate::testing::kvm("vcpu_state_round_trips_through_a_second_vm");
        let (_vm, vcpu, _memory) = vcpu_on_new_vm(&kvm);
        let mut regs = vcpu.fd.get_regs().unwrap();
        regs.rax = 0x1122_3344;
        regs.r15 = 0xfeed_f00d;
        vcpu.fd.set_regs(&regs).unwrap();
        let tsc_aux = kvm_msr_entry {
            index: 0xc000_0103,
            data: 7,
            ..Default::default()
        };
        let _ = vcpu.fd.set_msrs(&Msrs::from_entries(&[tsc_aux]).unwrap());
        let state = vcpu.save().unwrap();
        assert!(!state.msrs.is_empty());
        let json = serde_json::to_vec(&state).unwrap();
        let state: VcpuState = serde_json::from_slice(&json).unwrap();

        let (_vm2, fresh, _memory2) = vcpu_on_new_vm(&kvm);
        let restored = Vcpu::restore(fresh, &state).unwrap();
        let again = restored.save().unwrap();
        assert_eq!(again.regs.rax, 0x1122_3344);
        assert_eq!(again.regs.r15, 0xfeed_f00d);
        assert_eq!(again.regs.rip, state.regs.rip);
        assert_eq!(again.sregs.cr0, state.sregs.cr0);
        assert_eq!(again.sregs.cs.base, state.sregs.cs.base);
        assert_eq!(again.lapic.regs[..0x400], state.lapic.regs[..0x400]);
        assert_eq!(again.xsave.region[..], state.xsave.region[..]);
        assert_eq!(again.xcrs.xcrs[0].value, state.xcrs.xcrs[0].value);
        let msr =
            |s: &VcpuState, index: u32| s.msrs.iter().find(|m| m.index == index).map(|m| m.data);
        for entry in &state.msrs {
            if entry.index == regs::MSR_IA32_TSC {
                continue; // keeps counting
            }
            assert_eq!(
                msr(&again, entry.index),
                Some(entry.data),
                "MSR {:#x}",
                entry.index
            );
        }
        assert_eq!(
            msr(&again, regs::MSR_IA32_MISC_ENABLE).map(|v| v & 1),
            Some(1)
        );
        assert_eq!(again.cpuid.len(), state.cpuid.len());
    }

    /// Regression test: after a restore the guest's TSC and kvmclock have both moved on by
    /// the interval since the snapshot. Before, kvmclock was set back to its snapshot value
    /// while the TSC (the host's own under PVM, whatever the VMM writes) had moved on, so the
    /// guest's two clocks disagreed by the whole interval.
    #[test]
    #[ignore = "needs /dev/kvm"]
    fn restored_tsc_and_kvmclock_move_together() {
        let kvm = crate::testing::kvm("restored_tsc_and_kvmclock_move_together");
        let (vm, vcpu, _memory) = vcpu_on_new_vm(&kvm);
        let vm_state = vm.save().unwrap();
        let vcpu_state = vcpu.save().unwrap();
        let interval = std::time::Duration::from_millis(100);
        std::thread::sleep(interval);

        let (fresh_vm, fresh_vcpu, _memory2) = vcpu_on_new_vm(&kvm);
        let restored_vm = Vm::restore(fresh_vm, &vm_state).unwrap();
        let restored = Vcpu::restore(fresh_vcpu, &vcpu_state).unwrap();
        let clock = restored_vm.restored_clock.expect("set by restore");
        restored
            .restore_tsc(&vcpu_state, &clock, || {
                restored_vm.clock().ok().map(|now| now.clock)
            })
            .unwrap();

        let tsc = |msrs: &[kvm_msr_entry]| {
            msrs.iter()
                .find(|entry| entry.index == regs::MSR_IA32_TSC)
                .map(|entry| entry.data)
                .expect("IA32_TSC saved")
        };
        let kvmclock_now = restored_vm.clock().unwrap().clock;
        let tsc_now = tsc(&restored.read_msrs(&[regs::MSR_IA32_TSC], false).unwrap());
        let khz = vcpu_state
            .tsc_khz
            .or_else(|| restored.fd.get_tsc_khz().ok())
            .unwrap();
        let kvmclock_moved = kvmclock_now.saturating_sub(vm_state.clock.clock) as f64;
        let tsc_moved =
            tsc_now.wrapping_sub(tsc(&vcpu_state.msrs)) as i64 as f64 * 1e6 / f64::from(khz);
        assert!(
            kvmclock_moved >= interval.as_nanos() as f64,
            "kvmclock moved {kvmclock_moved} ns over a {interval:?} interval"
        );
        assert!(
            (tsc_moved - kvmclock_moved).abs() < 5e6,
            "TSC moved {tsc_moved} ns, kvmclock {kvmclock_moved} ns"
        );
    }
}
