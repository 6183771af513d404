//! A running VM: boot from a kernel or restore from a snapshot, then pause, resume, snapshot,
//! press the power button and report metrics. One `Machine` per process.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{Cap, Kvm};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader, PvhBootCapability};
use serde::Serialize;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::regs::KernelEntry;
use crate::arch::{acpi, cpuid, layout, linux_boot, pvh, regs};
use crate::devices::acpi_pm::{AcpiPm, IrqLine};
use crate::devices::serial::{SerialConsole, SerialOutput};
use crate::devices::virtio::{self, VirtioConfig, VirtioDevices, VirtioError};
use crate::devices::{lock, PortIoBus};
use crate::lazy::{LazyOptions, LazyRestore};
use crate::metrics::{self, KvmStats, MetricsReport, RateTracker, VcpuSample};
use crate::persist::Persist;
use crate::snapshot::{self, SnapshotError, SnapshotState, MEMORY_FILE_NAME};
use crate::vstate::hypercall::{self, HypercallPolicy, PvHypercalls};
use crate::vstate::memory::{GuestMemory, MemoryError};
use crate::vstate::vcpu::{
    self, Vcpu, VcpuCommand, VcpuContext, VcpuError, VcpuExitCounters, VcpuResponse, VmEvent,
};
use crate::vstate::vm::{KvmIrqLine, Vm, VmError};

/// Largest XSAVE area the snapshot format stores (`struct kvm_xsave`).
const MAX_XSAVE_BYTES: i32 = 4096;
/// How long a vCPU may take to acknowledge a command before it is declared stuck.
const VCPU_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineConfig {
    pub kernel: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub cmdline: Vec<u8>,
    /// Whether the boot data points the kernel at the RSDP (`hvm_start_info.rsdp_paddr`, the
    /// zero page's `acpi_rsdp_addr`). `false` leaves them 0, as Firecracker does: the kernel
    /// must then find the RSDP by scanning the BIOS areas (it is at 0xe0000).
    pub rsdp_hint: bool,
    /// virtio-mmio devices (`--disk`, `--net`), in slot order.
    pub virtio: Vec<VirtioConfig>,
}

/// Why a machine operation failed. Messages say what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    BootData(#[from] pvh::PvhError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load kernel {path}: {source}")]
    LoadKernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path} is an ELF without a PVH entry point (ELF note XEN_ELFNOTE_PHYS32_ENTRY); give a PVH ELF or a Linux bzImage")]
    NoPvhEntry { path: PathBuf },
    #[error("vCPU count must be 1 to {maximum}, not {requested}")]
    VcpuCount { requested: u8, maximum: usize },
    #[error("this host's XSAVE area is {0} bytes; lull-vmm snapshots hold at most 4096")]
    XsaveTooLarge(i32),
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot {operation}: the VM is {state}")]
    InvalidState {
        operation: &'static str,
        state: RunState,
    },
    #[error("vCPU {index} did not answer {command} within {seconds} s")]
    VcpuUnresponsive {
        index: u8,
        command: &'static str,
        seconds: u64,
    },
    #[error("cannot create snapshot directory {path}: {source}")]
    SnapshotDirectory {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether vCPUs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
        })
    }
}

/// Outcome of a snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    pub path: PathBuf,
    pub state_bytes: u64,
    pub memory_file_bytes: u64,
    pub memory_written_bytes: u64,
    /// Bytes copied from the snapshot this guest was restored from (pages it did not change).
    pub memory_copied_bytes: u64,
    pub duration_ms: f64,
}

/// Static facts about the VM (GET /vm).
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub state: RunState,
    pub vcpus: usize,
    pub memory_bytes: u64,
    pub restored_from: Option<PathBuf>,
    /// The last (or current) outgoing migration.
    pub migration: crate::migration::MigrationStatus,
}

impl VcpuHandle {
    /// Kicks the vCPU out of KVM_RUN (to see a command).
    fn kick(&self) {
        if let Some(thread) = &self.thread {
            let _ = thread.kill(vcpu::kick_signal());
        } else if let Some(caller) = &self.caller {
            caller.kick();
        }
    }
}

struct VcpuHandle {
    index: u8,
    thread: Option<JoinHandle<()>>,
    /// The caller's thread, when the vCPU runs there ([`Machine::restore_here`]).
    caller: Option<vcpu::KickableThread>,
    commands: Sender<VcpuCommand>,
    responses: Receiver<VcpuResponse>,
    counters: Arc<VcpuExitCounters>,
    stats: Option<KvmStats>,
}

/// A VM with running (or paused) vCPU threads.
pub struct Machine {
    vm: Vm,
    memory: GuestMemory,
    bus: Arc<PortIoBus>,
    vcpus: Vec<VcpuHandle>,
    state: RunState,
    started_at: Instant,
    api_rates: RateTracker,
    restored_from: Option<PathBuf>,
    events: Sender<VmEvent>,
    migration: Arc<crate::migration::MigrationControl>,
    // Kept so the irqfd stays registered for the machine's lifetime.
    _serial_interrupt: EventFd,
    virtio: VirtioDevices,
    /// The devices' host side was handed to a migration destination (until resume).
    host_released: bool,
}

/// A started machine and the channel on which its vCPUs report poweroff or failure.
pub struct Started {
    pub machine: Machine,
    pub events: Receiver<VmEvent>,
    /// When the last vCPU thread entered its run loop.
    pub vcpus_running_at: Instant,
    /// Time spent in each setup phase, in order (for `--timing` and the benchmarks).
    pub phases: Vec<(&'static str, Duration)>,
}

/// A restored machine whose vCPUs other than vCPU 0 run; vCPU 0 is [`CallerVcpu`], for the
/// thread that called [`Machine::restore_here`] to run. [`Starting::wait_running`] (on
/// another thread) waits until all run.
pub struct Starting {
    launched: Launched,
    /// What to log once the vCPUs run.
    notice: RestoreNotice,
}

/// What a restore logs about hypercalls, once its vCPUs run (formatting is not free).
struct RestoreNotice {
    policy: HypercallPolicy,
    /// The hypercall features the guest's own CPUID still shows.
    shown: u32,
    quirk: Option<Result<(), hypercall::QuirkError>>,
}

impl RestoreNotice {
    fn text(&self) -> String {
        hypercall_notice(&self.policy, 0, self.shown, self.quirk.as_ref())
    }
}

impl Starting {
    /// Waits until every vCPU is about to enter KVM_RUN; then kicks the devices (requests
    /// queued at the snapshot) and logs the hypercall notice, as a restore does.
    pub fn wait_running(self) -> Started {
        let Starting { launched, notice } = self;
        let started = launched.wait();
        // Requests the guest queued but the devices had not served at the snapshot.
        started.machine.virtio.kick_all();
        log(&notice.text());
        started
    }
}

/// vCPU 0 of a [`Machine::restore_here`], to run on the thread that called it.
pub struct CallerVcpu {
    vcpu: Vcpu,
    context: VcpuContext,
}

impl CallerVcpu {
    /// Runs the vCPU until the machine stops it (when the machine is dropped, or the guest
    /// powers off and the machine is then stopped).
    pub fn run(self) {
        self.vcpu.run_loop(self.context);
    }
}

/// A VM with its state applied and its vCPUs configured, not yet running.
struct Assembled {
    vm: Vm,
    memory: GuestMemory,
    bus: Arc<PortIoBus>,
    devices: (EventFd, VirtioDevices),
    vcpus: Vec<Vcpu>,
    origin: Origin,
    clock: PhaseClock,
}

/// A machine whose vCPU threads were started, and how to learn when they run.
struct Launched {
    machine: Machine,
    events: Receiver<VmEvent>,
    /// One instant per vCPU: when it was about to enter KVM_RUN for the first time.
    started: Receiver<Instant>,
    vcpus: usize,
    clock: PhaseClock,
    /// vCPU 0's statistics file, when its layout is still to be read.
    deferred_stats: Option<File>,
}

impl Launched {
    /// Waits until every vCPU is about to enter KVM_RUN.
    fn wait(self) -> Started {
        let Launched {
            mut machine,
            events,
            started,
            vcpus,
            mut clock,
            deferred_stats,
        } = self;
        // The instant the last vCPU was about to enter KVM_RUN (as its thread saw it: this
        // thread's own wake-up is not restore latency).
        let mut last_started: Option<Instant> = None;
        for _ in 0..vcpus {
            // An Err means a vCPU ended before starting; its failure shows up on first use.
            if let Ok(at) = started.recv() {
                last_started = last_started.max(Some(at));
            }
        }
        let vcpus_running_at = last_started.unwrap_or_else(Instant::now);
        clock.lap_until("start_vcpu_threads", vcpus_running_at);
        if let (Some(fd), Some(handle)) = (deferred_stats, machine.vcpus.first_mut()) {
            handle.stats = KvmStats::from_file(fd).ok();
        }
        Started {
            machine,
            events,
            vcpus_running_at,
            phases: clock.phases,
        }
    }
}

/// Stack of a vCPU thread.
const VCPU_STACK_BYTES: usize = 256 << 10;

/// A thread started before it has work (a migration destination's vCPU threads exist before
/// the guest's state arrives: creating a thread is not free, and the time from the last frame
/// to running vCPUs is downtime).
struct WaitingThread {
    work: Sender<Box<dyn FnOnce() + Send>>,
    handle: JoinHandle<()>,
}

impl WaitingThread {
    fn spawn(name: String) -> std::io::Result<Self> {
        let (work, receiver) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let handle = std::thread::Builder::new()
            .name(name)
            .stack_size(VCPU_STACK_BYTES)
            .spawn(move || {
                // No work (the migration failed and the sender was dropped): just end.
                if let Ok(work) = receiver.recv() {
                    work();
                }
            })?;
        Ok(Self { work, handle })
    }

    /// Hands the thread its work; returns its handle.
    fn run(self, work: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
        // The thread waits in recv until it gets this or the sender is dropped.
        let _ = self.work.send(Box::new(work));
        self.handle
    }
}

/// A vCPU's thread and statistics file, made ahead of its state.
struct PreparedVcpu {
    thread: WaitingThread,
    stats: Option<KvmStats>,
}

/// Where a started machine came from.
#[derive(Default)]
struct Origin {
    restored_from: Option<PathBuf>,
    prepared: Vec<PreparedVcpu>,
}

/// A VM prepared for a migrated guest ([`Machine::prepare_incoming`]): its RAM is written by
/// the receiver, then [`Machine::restore_incoming`] applies the state and runs it.
pub struct IncomingVm {
    vm: Vm,
    memory: GuestMemory,
    /// vCPUs created ahead of the state (KVM_CREATE_VCPU is not free); empty for a restore.
    vcpu_fds: Vec<kvm_ioctls::VcpuFd>,
    /// Their threads and statistics, likewise.
    prepared: Vec<PreparedVcpu>,
    policy: HypercallDecision,
    clock: PhaseClock,
}

impl IncomingVm {
    /// The guest RAM to fill.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }
}

/// Records how long each setup phase took.
struct PhaseClock {
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl PhaseClock {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            phases: Vec::new(),
        }
    }

    fn lap(&mut self, phase: &'static str) {
        self.lap_until(phase, Instant::now());
    }

    fn lap_until(&mut self, phase: &'static str, now: Instant) {
        self.phases
            .push((phase, now.saturating_duration_since(self.last)));
        self.last = now;
    }
}

fn host_error(what: &'static str) -> impl FnOnce(std::io::Error) -> MachineError {
    move |source| MachineError::Host { what, source }
}

fn open_kvm() -> Result<Kvm, MachineError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let xsave_size = kvm.check_extension_int(Cap::Xsave2);
    if xsave_size > MAX_XSAVE_BYTES {
        return Err(MachineError::XsaveTooLarge(xsave_size));
    }
    Ok(kvm)
}

/// Devices and their interrupt wiring.
fn build_bus(
    vm: &Vm,
    mmio: virtio::MmioBus,
    serial: impl FnOnce(EventFd) -> Result<SerialConsole, MachineError>,
    acpi_pm: impl FnOnce(Arc<dyn IrqLine>) -> AcpiPm,
) -> Result<(Arc<PortIoBus>, EventFd), MachineError> {
    let serial_interrupt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(host_error("creating an eventfd"))?;
    vm.fd
        .register_irqfd(&serial_interrupt, acpi::COM1_IRQ)
        .map_err(|source| VmError::Kvm {
            operation: "KVM_IRQFD",
            source,
        })?;
    let serial_trigger = serial_interrupt
        .try_clone()
        .map_err(host_error("duplicating an eventfd"))?;
    let sci: Arc<dyn IrqLine> = Arc::new(KvmIrqLine {
        vm: vm.fd.clone(),
        gsi: acpi::SCI_IRQ,
    });
    let bus = PortIoBus {
        serial: Arc::new(Mutex::new(serial(serial_trigger)?)),
        acpi_pm: Arc::new(Mutex::new(acpi_pm(sci))),
        mmio,
    };
    Ok((Arc::new(bus), serial_interrupt))
}

impl Machine {
    /// Boots `config.kernel` (a PVH ELF) with serial output to `output`; `pv` says whether
    /// to probe for working hypercalls (see [`hypercall`]).
    pub fn boot(
        config: &MachineConfig,
        pv: PvHypercalls,
        output: SerialOutput,
    ) -> Result<Started, MachineError> {
        let mut clock = PhaseClock::new();
        // The disks and TAPs first: a bad --disk/--net leaves nothing half-started.
        let backends = virtio::open_backends(&config.virtio)?;
        let mut cmdline = config.cmdline.clone();
        cmdline.extend_from_slice(virtio::cmdline_fragment(backends.len()).as_bytes());
        let policy = HypercallDecision::start(pv);
        let kvm = open_kvm()?;
        clock.lap("open_kvm");
        let maximum = kvm.get_max_vcpus().min(255);
        if config.vcpus == 0 || usize::from(config.vcpus) > maximum {
            return Err(MachineError::VcpuCount {
                requested: config.vcpus,
                maximum,
            });
        }
        let layout = layout::MemoryLayout::new(config.memory_mib << 20, cmdline.len() as u64)?;
        let memory = GuestMemory::anonymous(&layout.ram_regions)?;
        let entry = load_kernel(&memory, &config.kernel)?;
        regs::write_boot_gdt(&memory.mmap).map_err(pvh::PvhError::from)?;
        let tables = acpi::build_tables(config.vcpus)?;
        tables.write_to(&memory.mmap)?;
        let rsdp_hint = if config.rsdp_hint {
            tables.rsdp_address()
        } else {
            0
        };
        pvh::write_boot_data(&memory.mmap, &layout, &cmdline, rsdp_hint)?;
        let entry = match entry {
            LoadedKernel::Pvh(address) => KernelEntry::Pvh(address),
            LoadedKernel::BzImage { entry, header } => {
                linux_boot::write_boot_params(
                    &memory.mmap,
                    &layout,
                    header,
                    cmdline.len(),
                    rsdp_hint,
                )?;
                KernelEntry::Linux32(entry)
            }
        };

        clock.lap("memory_and_kernel");
        let vm = Vm::create(&kvm, &memory)?;
        clock.lap("create_vm");
        let virtio = VirtioDevices::attach(&vm.fd, &memory.mmap, backends)?;
        let (bus, serial_interrupt) = build_bus(
            &vm,
            virtio.bus(),
            |trigger| Ok(SerialConsole::new(trigger, output)),
            AcpiPm::new,
        )?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VmError::Kvm {
                operation: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let msr_candidates = kvm.get_msr_index_list().map_err(|source| VmError::Kvm {
            operation: "KVM_GET_MSR_INDEX_LIST",
            source,
        })?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        clock.lap("devices");
        let policy = policy.finish();
        clock.lap("hypercall_policy");
        let host_features = cpuid::pv_features_of(supported.as_slice()).unwrap_or(0);
        let hidden = if policy.hypercalls_return {
            0
        } else {
            cpuid::hypercall_features(host_features)
        };
        let quirk = apply_hypercall_policy(&vm, &policy);
        let mut vcpus = Vec::new();
        for index in 0..config.vcpus {
            let fd = vm
                .fd
                .create_vcpu(u64::from(index))
                .map_err(|source| VmError::Kvm {
                    operation: "KVM_CREATE_VCPU",
                    source,
                })?;
            let mut vcpu = Vcpu {
                index,
                fd,
                msr_indices: Vec::new(),
            };
            vcpu.configure_for_boot(
                &cpuid::vcpu_cpuid(
                    &supported,
                    index,
                    config.vcpus,
                    tsc_deadline,
                    policy.hypercalls_return,
                ),
                entry,
            )?;
            vcpu.select_readable_msrs(msr_candidates.as_slice())?;
            vcpus.push(vcpu);
        }
        clock.lap("vcpus");
        let assembled = Assembled {
            vm,
            memory,
            bus,
            devices: (serial_interrupt, virtio),
            vcpus,
            origin: Origin::default(),
            clock,
        };
        let started = Self::launch(assembled, None).0.wait();
        log(&hypercall_notice(&policy, hidden, 0, quirk.as_ref()));
        Ok(started)
    }

    /// Restores the snapshot in `directory` into this process, serial output to `output`.
    /// The guest keeps the CPUID of its snapshot; `pv` decides (see [`hypercall`]) whether
    /// a VMCALL raises #UD.
    pub fn restore(
        directory: &Path,
        pv: PvHypercalls,
        output: SerialOutput,
    ) -> Result<Started, MachineError> {
        Self::restore_with(directory, pv, output, None)
    }

    /// [`Machine::restore`], or with `lazy` a lazy restore (`crate::lazy`): guest RAM starts
    /// empty and pages come in through userfaultfd as the guest touches them, the recorded
    /// working set first, the rest in the background.
    pub fn restore_with(
        directory: &Path,
        pv: PvHypercalls,
        output: SerialOutput,
        lazy: Option<&LazyOptions>,
    ) -> Result<Started, MachineError> {
        let (incoming, state, loader) = Self::restore_prepare(directory, pv, lazy)?;
        let started = Self::restore_into(incoming, &state, output, Some(directory.to_path_buf()))?;
        if let Some(loader) = loader {
            loader.vcpus_started(started.vcpus_running_at, started.machine.vm.fd.clone());
        }
        Ok(started)
    }

    /// [`Machine::restore`] with vCPU 0 left to the caller: the caller runs [`CallerVcpu::run`]
    /// on this same thread, after handing [`Starting`] to another thread (which waits for the
    /// vCPUs to run, then serves the machine). Starting a thread and waking it costs ~0.1-0.2
    /// ms here, and more on a busy host, which a restore's vCPU 0 then does not wait for.
    /// Must be called on a thread that lives as long as the process (the main thread): the
    /// machine kicks it by its id.
    pub fn restore_here(
        directory: &Path,
        pv: PvHypercalls,
        output: SerialOutput,
    ) -> Result<(Starting, CallerVcpu), MachineError> {
        let (incoming, state, _) = Self::restore_prepare(directory, pv, None)?;
        let (assembled, notice) =
            Self::restore_assemble(incoming, &state, output, Some(directory.to_path_buf()))?;
        let caller = vcpu::KickableThread::current();
        let (parts, vcpu0) = Self::launch(assembled, Some(caller));
        let vcpu0 = vcpu0.expect("launch keeps vCPU 0 for the caller");
        Ok((
            Starting {
                launched: parts,
                notice,
            },
            vcpu0,
        ))
    }

    /// The part of a restore before any state is applied: the snapshot read, guest RAM
    /// mapped, the KVM VM created.
    fn restore_prepare(
        directory: &Path,
        pv: PvHypercalls,
        lazy: Option<&LazyOptions>,
    ) -> Result<(IncomingVm, SnapshotState, Option<LazyRestore>), MachineError> {
        let mut clock = PhaseClock::new();
        let policy = HypercallDecision::start(pv);
        let state = snapshot::read_state(directory)?;
        clock.lap("read_state");
        let kvm = open_kvm()?;
        clock.lap("open_kvm");
        let path = directory.join(MEMORY_FILE_NAME);
        let (memory, loader) = match lazy {
            None => {
                let memory = GuestMemory::restore(path, &state.memory)?;
                clock.lap("map_memory");
                (memory, None)
            }
            Some(options) => {
                let (memory, file) = GuestMemory::restore_lazy(path, &state.memory)?;
                clock.lap("map_memory");
                let loader = LazyRestore::start(&memory, file, directory, options)
                    .map_err(host_error("starting the lazy restore (userfaultfd)"))?;
                clock.lap("uffd_and_prefetch");
                (memory, Some(loader))
            }
        };
        let vm = Vm::create(&kvm, &memory)?;
        clock.lap("create_vm");
        let incoming = IncomingVm {
            vm,
            memory,
            vcpu_fds: Vec::new(),
            prepared: Vec::new(),
            policy,
            clock,
        };
        Ok((incoming, state, loader))
    }

    /// A VM for a guest arriving by migration: RAM of `regions` (anonymous, zero), a KVM VM
    /// with its irqchip and `vcpus` vCPUs, and the hypercall decision under way, all before
    /// the guest's state arrives, so that the stop-and-copy phase only has to apply it.
    pub fn prepare_incoming(
        regions: &[layout::RamRegion],
        vcpus: u8,
        pv: PvHypercalls,
    ) -> Result<IncomingVm, MachineError> {
        let mut clock = PhaseClock::new();
        let policy = HypercallDecision::start(pv);
        let kvm = open_kvm()?;
        let maximum = kvm.get_max_vcpus().min(255);
        if vcpus == 0 || usize::from(vcpus) > maximum {
            return Err(MachineError::VcpuCount {
                requested: vcpus,
                maximum,
            });
        }
        let memory = GuestMemory::anonymous(regions)?;
        let vm = Vm::create(&kvm, &memory)?;
        let mut vcpu_fds = Vec::new();
        let mut prepared = Vec::new();
        for index in 0..vcpus {
            let fd = vm
                .fd
                .create_vcpu(u64::from(index))
                .map_err(|source| VmError::Kvm {
                    operation: "KVM_CREATE_VCPU",
                    source,
                })?;
            prepared.push(PreparedVcpu {
                thread: WaitingThread::spawn(format!("vcpu{index}"))
                    .map_err(host_error("starting a vCPU thread"))?,
                stats: KvmStats::open(&fd).ok(),
            });
            vcpu_fds.push(fd);
        }
        clock.lap("prepare_incoming");
        Ok(IncomingVm {
            vm,
            memory,
            vcpu_fds,
            prepared,
            policy,
            clock,
        })
    }

    /// Applies a migrated guest's state (`state.memory` must describe the RAM `incoming` was
    /// prepared with, which the caller has filled) and starts its vCPUs, as a restore does.
    pub fn restore_incoming(
        mut incoming: IncomingVm,
        state: &SnapshotState,
        output: SerialOutput,
    ) -> Result<Started, MachineError> {
        incoming.clock = PhaseClock::new();
        Self::restore_into(incoming, state, output, None)
    }

    /// The common tail of a restore: VM-wide state, devices, vCPUs (their TSC moved as
    /// kvmclock was), the hypercall policy, then the vCPU threads.
    fn restore_into(
        incoming: IncomingVm,
        state: &SnapshotState,
        output: SerialOutput,
        restored_from: Option<PathBuf>,
    ) -> Result<Started, MachineError> {
        let (assembled, notice) = Self::restore_assemble(incoming, state, output, restored_from)?;
        let (parts, _) = Self::launch(assembled, None);
        Ok(Starting {
            launched: parts,
            notice,
        }
        .wait_running())
    }

    /// A restore up to starting the vCPUs: VM-wide state, devices, vCPUs (their TSC moved
    /// as kvmclock was), the hypercall policy; and the hypercall notice to log once they run.
    fn restore_assemble(
        incoming: IncomingVm,
        state: &SnapshotState,
        output: SerialOutput,
        restored_from: Option<PathBuf>,
    ) -> Result<(Assembled, RestoreNotice), MachineError> {
        let IncomingVm {
            vm,
            memory,
            vcpu_fds,
            prepared,
            policy,
            mut clock,
        } = incoming;
        if vcpu_fds.len() > state.vcpus.len() {
            return Err(MachineError::VcpuCount {
                requested: state.vcpus.len().min(255) as u8,
                maximum: vcpu_fds.len(),
            });
        }
        let vm = Vm::restore(vm, &state.vm)?;
        clock.lap("restore_vm_state");
        let virtio = VirtioDevices::restore(&vm.fd, &memory.mmap, &state.virtio)?;
        let (bus, serial_interrupt) = build_bus(
            &vm,
            virtio.bus(),
            |trigger| {
                SerialConsole::restore((trigger, output), &state.serial).map_err(|e| {
                    MachineError::Host {
                        what: "restoring the serial port",
                        source: std::io::Error::other(e),
                    }
                })
            },
            |sci| match AcpiPm::restore(sci, &state.acpi_pm) {
                Ok(device) => device,
                Err(never) => match never {},
            },
        )?;
        let mut vcpu_fds = vcpu_fds.into_iter();
        let mut vcpus = Vec::new();
        for (index, vcpu_state) in state.vcpus.iter().enumerate() {
            let index = index as u8;
            let fd = match vcpu_fds.next() {
                Some(fd) => fd,
                None => vm
                    .fd
                    .create_vcpu(u64::from(index))
                    .map_err(|source| VmError::Kvm {
                        operation: "KVM_CREATE_VCPU",
                        source,
                    })?,
            };
            let vcpu = Vcpu::restore(
                Vcpu {
                    index,
                    fd,
                    msr_indices: Vec::new(),
                },
                vcpu_state,
            )?;
            if let Some(clock) = &vm.restored_clock {
                vcpu.restore_tsc(vcpu_state, clock, || vm.clock().ok().map(|now| now.clock))?;
            }
            vcpus.push(vcpu);
        }
        clock.lap("devices_and_vcpus");
        let policy = policy.finish();
        let quirk = apply_hypercall_policy(&vm, &policy);
        clock.lap("hypercall_policy");
        let assembled = Assembled {
            vm,
            memory,
            bus,
            devices: (serial_interrupt, virtio),
            vcpus,
            origin: Origin {
                restored_from,
                prepared,
            },
            clock,
        };
        let shown = if policy.hypercalls_return {
            0
        } else {
            state
                .vcpus
                .iter()
                .filter_map(|vcpu| cpuid::pv_features_of(&vcpu.cpuid))
                .fold(0, |shown, eax| shown | cpuid::hypercall_features(eax))
        };
        Ok((
            assembled,
            RestoreNotice {
                policy,
                shown,
                quirk,
            },
        ))
    }

    /// Starts a thread for every vCPU, except vCPU 0 when `caller` is given (the thread that
    /// will run it: it is returned, to run there), and builds the machine.
    fn launch(
        assembled: Assembled,
        caller: Option<vcpu::KickableThread>,
    ) -> (Launched, Option<CallerVcpu>) {
        let Assembled {
            vm,
            memory,
            bus,
            devices: (serial_interrupt, virtio),
            vcpus,
            origin,
            clock,
        } = assembled;
        let Origin {
            restored_from,
            prepared,
        } = origin;
        let mut prepared = prepared.into_iter();
        vcpu::ensure_kick_handler();
        let (event_sender, events) = mpsc::channel();
        let (started_sender, started) = mpsc::channel();
        let mut handles = Vec::new();
        let mut for_caller = None;
        let mut deferred_stats = None;
        for vcpu in vcpus {
            let (command_sender, commands) = mpsc::channel();
            let (response_sender, responses) = mpsc::channel();
            let counters = Arc::new(VcpuExitCounters::default());
            let index = vcpu.index;
            let (waiting, stats) = match prepared.next() {
                Some(PreparedVcpu { thread, stats }) => (Some(thread), stats),
                // The caller's vCPU: its statistics file is read once it runs (`wait`).
                None if caller.is_some() && index == 0 => {
                    deferred_stats = metrics::stats_file(&vcpu.fd).ok();
                    (None, None)
                }
                None => (None, KvmStats::open(&vcpu.fd).ok()),
            };
            let context = VcpuContext {
                bus: bus.clone(),
                commands,
                responses: response_sender,
                events: event_sender.clone(),
                counters: counters.clone(),
                started: started_sender.clone(),
            };
            let (thread, kickable) = match caller {
                Some(caller) if index == 0 => {
                    for_caller = Some(CallerVcpu { vcpu, context });
                    (None, Some(caller))
                }
                _ => {
                    let run = move || vcpu.run_loop(context);
                    let thread = match waiting {
                        Some(waiting) => waiting.run(run),
                        None => std::thread::Builder::new()
                            .name(format!("vcpu{index}"))
                            .stack_size(VCPU_STACK_BYTES)
                            .spawn(run)
                            .expect("spawning a vCPU thread"),
                    };
                    (Some(thread), None)
                }
            };
            handles.push(VcpuHandle {
                index,
                thread,
                caller: kickable,
                commands: command_sender,
                responses,
                counters,
                stats,
            });
        }
        drop(started_sender);
        let vcpus = handles.len();
        let machine = Machine {
            vm,
            memory,
            bus,
            vcpus: handles,
            state: RunState::Running,
            started_at: Instant::now(),
            api_rates: RateTracker::default(),
            restored_from,
            events: event_sender,
            migration: Arc::default(),
            _serial_interrupt: serial_interrupt,
            virtio,
            host_released: false,
        };
        (
            Launched {
                machine,
                events,
                started,
                vcpus,
                clock,
                deferred_stats,
            },
            for_caller,
        )
    }

    /// The devices (the console forwarder writes guest input into `bus.serial`).
    pub fn bus(&self) -> Arc<PortIoBus> {
        self.bus.clone()
    }

    /// A sender on the machine's event channel (for host-side quit requests).
    pub fn event_sender(&self) -> Sender<VmEvent> {
        self.events.clone()
    }

    pub fn state(&self) -> RunState {
        self.state
    }

    pub fn info(&self) -> MachineInfo {
        MachineInfo {
            state: self.state,
            vcpus: self.vcpus.len(),
            memory_bytes: self.memory.regions.iter().map(|r| r.size).sum(),
            restored_from: self.restored_from.clone(),
            migration: self.migration.status(),
        }
    }

    fn command_all(
        &mut self,
        command: fn() -> VcpuCommand,
        name: &'static str,
        kick: bool,
    ) -> Result<Vec<VcpuResponse>, MachineError> {
        for handle in &self.vcpus {
            // A send fails only if the thread is gone; its missing answer reports that below.
            let _ = handle.commands.send(command());
            if kick {
                handle.kick();
            }
        }
        let mut responses = Vec::new();
        for handle in &self.vcpus {
            let response = handle
                .responses
                .recv_timeout(VCPU_RESPONSE_TIMEOUT)
                .map_err(|_| MachineError::VcpuUnresponsive {
                    index: handle.index,
                    command: name,
                    seconds: VCPU_RESPONSE_TIMEOUT.as_secs(),
                })?;
            responses.push(response);
        }
        Ok(responses)
    }

    /// Stops all vCPUs at an instruction boundary (pending port reads completed).
    pub fn pause(&mut self) -> Result<(), MachineError> {
        if self.state != RunState::Running {
            return Err(MachineError::InvalidState {
                operation: "pause",
                state: self.state,
            });
        }
        self.command_all(|| VcpuCommand::Pause, "pause", true)?;
        // Devices after vCPUs: once this returns no request is being served, so the
        // snapshot's device state and guest RAM agree.
        self.virtio.pause();
        self.state = RunState::Paused;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), MachineError> {
        if self.state != RunState::Paused {
            return Err(MachineError::InvalidState {
                operation: "resume",
                state: self.state,
            });
        }
        if self.host_released {
            self.host_released = false;
            // The guest runs on whatever happens: a device that cannot get its host side
            // back (its TAP taken meanwhile) is said so and keeps running without it.
            if let Err(error) = self.virtio.reacquire_host() {
                eprintln!("\r\nlull-vmm: taking the devices back after the migration: {error}");
            }
        }
        self.virtio.resume();
        self.command_all(|| VcpuCommand::Resume, "resume", false)?;
        self.state = RunState::Running;
        Ok(())
    }

    /// Writes a snapshot of the paused VM into `directory` (created if missing).
    pub fn snapshot(&mut self, directory: &Path) -> Result<SnapshotReport, MachineError> {
        if self.state != RunState::Paused {
            return Err(MachineError::InvalidState {
                operation: "snapshot (pause it first)",
                state: self.state,
            });
        }
        let begin = Instant::now();
        std::fs::create_dir_all(directory).map_err(|source| MachineError::SnapshotDirectory {
            path: directory.to_path_buf(),
            source,
        })?;
        let state = self.save_state()?;
        let memory_report = self.memory.write_file(&directory.join(MEMORY_FILE_NAME))?;
        let state_bytes = snapshot::write_state(directory, &state)?;
        Ok(SnapshotReport {
            path: directory.to_path_buf(),
            state_bytes,
            memory_file_bytes: memory_report.file_bytes,
            memory_written_bytes: memory_report.written_bytes,
            memory_copied_bytes: memory_report.copied_bytes,
            duration_ms: begin.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Everything but guest RAM, from the paused VM: VM-wide KVM state, every vCPU (each
    /// thread saves its own), the devices.
    pub fn save_state(&mut self) -> Result<SnapshotState, MachineError> {
        if self.state != RunState::Paused {
            return Err(MachineError::InvalidState {
                operation: "save the VM state (pause it first)",
                state: self.state,
            });
        }
        let mut vcpu_states = Vec::new();
        for response in self.command_all(|| VcpuCommand::Save, "save", false)? {
            if let VcpuResponse::Saved(result) = response {
                vcpu_states.push((*result)?);
            }
        }
        Ok(SnapshotState {
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            memory: self.memory.save()?,
            vm: self.vm.save()?,
            vcpus: vcpu_states,
            serial: lock(&self.bus.serial)
                .save()
                .map_err(|e| MachineError::Host {
                    what: "saving the serial port",
                    source: std::io::Error::other(e),
                })?,
            acpi_pm: match lock(&self.bus.acpi_pm).save() {
                Ok(state) => state,
                Err(never) => match never {},
            },
            virtio: self.virtio.save(),
        })
    }

    /// What a migration source reads guest RAM and the dirty log through: the VM fd and a
    /// handle on the same mappings (shared, not copied).
    pub fn migration_handles(
        &self,
    ) -> (
        Arc<kvm_ioctls::VmFd>,
        crate::vstate::memory::GuestMemoryMmap,
    ) {
        (self.vm.fd.clone(), self.memory.mmap.clone())
    }

    /// See [`GuestMemory::touched_pages`].
    pub fn touched_pages(&self) -> Result<Vec<Vec<u64>>, MachineError> {
        self.memory
            .touched_pages()
            .map_err(host_error("reading which guest pages were touched"))
    }

    /// The shared migration status and controls of this machine.
    pub fn migration(&self) -> Arc<crate::migration::MigrationControl> {
        self.migration.clone()
    }

    /// Presses the ACPI power button (PWRBTN_STS; SCI if the guest enabled it).
    pub fn press_power_button(&self) {
        lock(&self.bus.acpi_pm).press_power_button();
    }

    /// Cumulative counters now (no rates).
    pub fn samples(&self) -> Vec<VcpuSample> {
        self.vcpus
            .iter()
            .map(|handle| VcpuSample {
                index: handle.index,
                kvm: handle
                    .stats
                    .as_ref()
                    .and_then(|stats| stats.read().ok())
                    .unwrap_or_default(),
                vmm_exits: handle
                    .counters
                    .snapshot()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            })
            .collect()
    }

    /// Metrics with rates since `tracker`'s previous sample.
    pub fn metrics_with(&self, tracker: &mut RateTracker) -> MetricsReport {
        let now = Instant::now();
        let vcpus = self.samples();
        let (interval_seconds, rates) = tracker.rates(self.started_at, now, &vcpus);
        MetricsReport {
            uptime_seconds: now.duration_since(self.started_at).as_secs_f64(),
            interval_seconds,
            state: self.state.to_string(),
            vcpus,
            rates,
            host: metrics::host_memory(&self.memory.host_ranges()).unwrap_or_default(),
        }
    }

    /// Metrics with rates since the previous API request (or boot).
    pub fn metrics(&mut self) -> MetricsReport {
        let mut tracker = std::mem::take(&mut self.api_rates);
        let report = self.metrics_with(&mut tracker);
        self.api_rates = tracker;
        report
    }

    /// Host address ranges of guest RAM.
    pub fn guest_memory_ranges(&self) -> Vec<(usize, usize)> {
        self.memory.host_ranges()
    }

    /// A migration source at the final pause, its state saved: lets the destination take the
    /// devices' host side (disks written back, TAPs and gpio control sockets closed). The
    /// next [`Machine::resume`] (a failed migration) takes it back.
    pub fn release_host_devices(&mut self) -> Result<(), MachineError> {
        if self.state != RunState::Paused {
            return Err(MachineError::InvalidState {
                operation: "hand the devices over (pause first)",
                state: self.state,
            });
        }
        // Set first: a device released before another one failed is taken back on resume.
        self.host_released = true;
        self.virtio.release_host()?;
        Ok(())
    }

    /// Sockets the devices serve on the host (virtio-gpio's control sockets), for removal at
    /// exit.
    pub fn device_sockets(&self) -> Vec<std::path::PathBuf> {
        self.virtio.host_sockets()
    }

    /// Stops and joins every vCPU thread (the device threads stop when the machine drops).
    pub fn stop(&mut self) {
        for handle in &self.vcpus {
            let _ = handle.commands.send(VcpuCommand::Stop);
            handle.kick();
        }
        for handle in &mut self.vcpus {
            if let Some(thread) = handle.thread.take() {
                let _ = thread.join();
            } else if handle.caller.take().is_some() {
                // Runs on its caller's thread, which cannot be joined: its answer says its
                // run loop ended (or the channel closing, that it is gone).
                let deadline = Instant::now() + VCPU_RESPONSE_TIMEOUT;
                while let Ok(response) = handle
                    .responses
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    if matches!(response, VcpuResponse::Stopped) {
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The hypercall decision: in line when forced or cached, else a probe on its own thread
/// while the VM is set up (the probe costs its own VM).
enum HypercallDecision {
    Running(JoinHandle<HypercallPolicy>),
    Done(HypercallPolicy),
}

impl HypercallDecision {
    fn start(mode: PvHypercalls) -> Self {
        // Forced or cached (every VM after the first since host boot): a few small reads,
        // cheaper in line than a thread (its start, stack and heap arena are page faults,
        // several µs each on a shadow-paging host, on the restore's critical path).
        if let Some(policy) = hypercall::decide_without_probe(mode) {
            return Self::Done(policy);
        }
        match std::thread::Builder::new()
            .name("hypercall-probe".into())
            .spawn(move || hypercall::decide(mode))
        {
            Ok(thread) => Self::Running(thread),
            Err(_) => Self::Done(hypercall::decide(mode)),
        }
    }

    fn finish(self) -> HypercallPolicy {
        match self {
            Self::Done(policy) => policy,
            Self::Running(thread) => thread.join().unwrap_or_else(|_| HypercallPolicy {
                hypercalls_return: false,
                verdict: None,
                source: hypercall::Source::Unknown("the probe thread panicked".into()),
                warnings: Vec::new(),
            }),
        }
    }
}

/// Disables FIX_HYPERCALL_INSN when hypercalls do not return (`None` when they do: the quirk
/// is left alone).
fn apply_hypercall_policy(
    vm: &Vm,
    policy: &HypercallPolicy,
) -> Option<Result<(), hypercall::QuirkError>> {
    (!policy.hypercalls_return).then(|| hypercall::disable_fix_hypercall_insn_quirk(&vm.fd))
}

/// The lines to log about hypercalls: the policy's warnings and one line saying what was
/// found and done. `hidden` are the 0x4000_0001 features the new guest does not see because
/// of it, `shown` those a restored guest still sees (its snapshot's CPUID). Logged once the
/// vCPUs run: formatting and writing to stderr is not free, and restore latency is measured.
fn hypercall_notice(
    policy: &HypercallPolicy,
    hidden: u32,
    shown: u32,
    quirk: Option<&Result<(), hypercall::QuirkError>>,
) -> String {
    let mut lines: String = policy
        .warnings
        .iter()
        .map(|warning| format!("lull-vmm: warning: {warning}\n"))
        .collect();
    lines += &format!(
        "lull-vmm: {}\n",
        hypercall::summary(
            policy,
            &cpuid::pv_feature_names(hidden),
            &cpuid::pv_feature_names(shown),
            quirk,
        )
    );
    lines
}

/// Writes `lines` to stderr in one write.
fn log(lines: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(lines.as_bytes());
}

/// A kernel in guest memory, and how to enter it.
enum LoadedKernel {
    /// An ELF with a PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`), e.g. Lull.
    Pvh(u64),
    /// A Linux bzImage: its protected-mode code at `entry` (`code32_start`), and its setup
    /// header for the zero page.
    BzImage { entry: u64, header: setup_header },
}

/// Loads a PVH ELF or, if the file is not an ELF, a Linux bzImage.
fn load_kernel(memory: &GuestMemory, path: &Path) -> Result<LoadedKernel, MachineError> {
    let mut file = File::open(path).map_err(|source| MachineError::OpenKernel {
        path: path.to_path_buf(),
        source,
    })?;
    let load_error = |source| MachineError::LoadKernel {
        path: path.to_path_buf(),
        source,
    };
    let elf = Elf::load(
        &memory.mmap,
        None,
        &mut file,
        Some(GuestAddress(layout::HIGH_MEMORY_START)),
    );
    let loaded = match elf {
        Ok(loaded) => loaded,
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {
            let loaded = BzImage::load(
                &memory.mmap,
                None,
                &mut file,
                Some(GuestAddress(layout::HIGH_MEMORY_START)),
            )
            .map_err(load_error)?;
            let header = loaded.setup_header.ok_or(MachineError::NoPvhEntry {
                path: path.to_path_buf(),
            })?;
            return Ok(LoadedKernel::BzImage {
                entry: loaded.kernel_load.0,
                header,
            });
        }
        Err(error) => return Err(load_error(error)),
    };
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel::Pvh(entry.0)),
        _ => Err(MachineError::NoPvhEntry {
            path: path.to_path_buf(),
        }),
    }
}
