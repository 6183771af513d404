//! Device interrupt lines (Linux's genirq, for the IOAPIC): `request_irq` /
//! `request_threaded_irq` / `free_irq`, trigger modes (`IRQF_TRIGGER_*`, or the MADT's ISA
//! overrides), threaded handlers and `threadirqs`, per-line CPU affinity
//! (`/proc/irq/N/smp_affinity`), and the `/proc/interrupts` view.
//!
//! An IRQ number below the IOAPIC's last GSI is that GSI (an IOAPIC input), as Linux numbers
//! IOAPIC lines; its vector is `DEVICE_VECTOR_BASE + GSI`, the same on every CPU (the IDT is
//! shared). The numbers above are message-signalled IRQs (`msi`: PCI MSI and MSI-X), each
//! with its own (CPU, vector), edge-triggered, masked in the device while no handler is
//! requested.
//!
//! Every requested line has one action. Its hard part (`handler`) runs in hard-IRQ context on
//! the line's CPU; a threaded line also has a kernel thread `irq/N-name` (RT FIFO 50) that runs
//! `thread_fn` when the hard part returns [`IrqReturn::WakeThread`]. As in Linux, a one-shot
//! *level* line is masked from the hard IRQ until the thread has run (the device keeps the line
//! asserted until the thread quiets it, so unmasking earlier would storm); an edge line is never
//! masked: an edge that arrives while the thread runs marks it pending and the thread runs again.
//!
//! Locks (all IRQ-safe): `LINES` → `IOAPIC`. `IOAPIC` is a leaf that serialises the IOAPIC's
//! index/data register pair. `LINES` is taken by every device interrupt, so nothing that may
//! sleep, allocate a thread or wait for another CPU runs under it. A line thread's wait queues
//! are woken after `LINES` is released. `free_irq` holds no lock while it waits.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::arch::acpi::AcpiInfo;
use crate::arch::{apic, interrupts};
use crate::fs::procfs::ProcError;
use crate::kernel::locking::{IrqSafeLock, Mutex, MAX_CPUS};

pub mod msi;

/// Interrupt parameters.
pub const PARAMS: &[lull_cmdline::ParamSpec] = &[lull_cmdline::ParamSpec {
    name: "threadirqs",
    kind: lull_cmdline::Kind::Bool,
    default: "off",
    help: "Run every handler requested with request_irq in a thread (timer and IPIs stay hard).",
}];

/// What a handler did (Linux's `irqreturn_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqReturn {
    /// The interrupt was not from this device.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no shared line yet
    None,
    /// Handled completely.
    Handled,
    /// Wake the line's thread to finish the work (hard handler of a threaded line only).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // only the tests' primary handlers
    WakeThread,
}

/// A handler. As the hard part: hard-IRQ context, interrupts disabled, must not sleep or
/// allocate. As a thread function: the line's kernel thread, may sleep. `irq` is the GSI.
pub type IrqHandler = fn(irq: u32) -> IrqReturn;

/// Request flags (Linux's `IRQF_*`; the values are Linux's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IrqFlags(u32);

impl IrqFlags {
    /// No trigger given: the MADT's override for the line, else the bus default (ISA lines
    /// 0-15: edge, active high; others: level, active low, as PCI).
    pub const NONE: IrqFlags = IrqFlags(0);
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // part of the trigger set
    pub const TRIGGER_RISING: IrqFlags = IrqFlags(0x1);
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // part of the trigger set
    pub const TRIGGER_FALLING: IrqFlags = IrqFlags(0x2);
    pub const TRIGGER_HIGH: IrqFlags = IrqFlags(0x4);
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // part of the trigger set
    pub const TRIGGER_LOW: IrqFlags = IrqFlags(0x8);
    const TRIGGER_MASK: u32 = 0xF;
    /// Keep a level line masked until the thread function has run.
    pub const ONESHOT: IrqFlags = IrqFlags(0x2000);
    /// Never thread this handler, even under `threadirqs` (Linux's `IRQF_NO_THREAD`).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no hard-only device yet
    pub const NO_THREAD: IrqFlags = IrqFlags(0x1_0000);
    /// Lull: thread this `request_irq` handler as `threadirqs` would, whatever the command
    /// line says (lets the tests exercise forced threading).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
    pub const FORCE_THREAD: IrqFlags = IrqFlags(0x8000_0000);

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: IrqFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for IrqFlags {
    type Output = IrqFlags;
    fn bitor(self, other: IrqFlags) -> IrqFlags {
        IrqFlags(self.0 | other.0)
    }
}

/// How a line signals (what the IOAPIC redirection entry says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub level: bool,
    pub active_low: bool,
}

/// Why an IRQ request, free or affinity change failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrqError {
    NoIoApic,
    /// The GSI has no IOAPIC input or no vector.
    NoSuchLine(u32),
    /// The line already has a handler or drives a tick device (Linux's -EBUSY; lines are
    /// not shared).
    Busy(u32),
    /// The line was not requested (freeing or configuring it makes no sense).
    NotRequested(u32),
    /// Contradictory or incomplete flags / handlers (Linux's -EINVAL).
    InvalidRequest(&'static str),
    /// `free_irq` from the line's own thread would wait for itself.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // free_irq has only test users
    FreedFromOwnThread(u32),
    Thread(String),
    /// The line's affinity is fixed (a tick device line).
    AffinityFixed(u32),
    /// An affinity mask that is empty, names CPUs that do not exist, or no online CPU.
    BadAffinity(String),
    /// No interrupt vector free for a message-signalled IRQ.
    NoVector(String),
}

impl core::fmt::Display for IrqError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IrqError::NoIoApic => write!(f, "no IOAPIC"),
            IrqError::NoSuchLine(irq) => write!(f, "IRQ {irq} has no IOAPIC input or vector"),
            IrqError::Busy(irq) => write!(f, "IRQ {irq} already has a handler"),
            IrqError::NotRequested(irq) => write!(f, "IRQ {irq} is not requested"),
            IrqError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            IrqError::FreedFromOwnThread(irq) => {
                write!(f, "IRQ {irq} freed from its own handler thread")
            }
            IrqError::Thread(why) => write!(f, "cannot start the handler thread: {why}"),
            IrqError::AffinityFixed(irq) => {
                write!(f, "IRQ {irq} is a tick device line; its affinity is fixed")
            }
            IrqError::BadAffinity(why) => write!(f, "{why}"),
            IrqError::NoVector(why) => write!(f, "{why}"),
        }
    }
}

/// Whether `threadirqs` was given.
pub fn force_threading() -> bool {
    crate::kernel::params::parsed()
        .get_bool("threadirqs")
        .unwrap_or(false)
}

/// A line's kernel thread and its handshake with the hard IRQ and `free_irq`.
struct LineThread {
    /// Task id (0 until `kthread_spawn` returned).
    id: AtomicU64,
    /// The hard part asked for a run the thread has not started yet.
    pending: AtomicBool,
    /// `free_irq` asks the thread to finish (after any pending run).
    stop: AtomicBool,
    /// The thread left its loop (it exits right after).
    exited: AtomicBool,
    /// The thread sleeps here for `pending` or `stop`.
    wake: crate::kernel::sched::WaitQueue,
    /// `free_irq` sleeps here for `exited`.
    exit_wait: crate::kernel::sched::WaitQueue,
}

/// What a requested line runs.
struct Action {
    irq: u32,
    handler: Option<IrqHandler>,
    thread_fn: Option<IrqHandler>,
    /// A one-shot level line: masked from the hard IRQ until `thread_fn` returned.
    mask_until_thread_done: bool,
    thread: Option<LineThread>,
    /// CPUs inside `handler` right now (`free_irq` waits for 0: `synchronize_irq`).
    hard_running: AtomicU32,
}

/// Who owns a line.
#[derive(Clone)]
enum Owner {
    /// Requested through `request_irq` / `request_threaded_irq`.
    Action(Arc<Action>),
    /// Routed by the time subsystem for a tick device (hard handler installed directly, its
    /// CPU fixed).
    TickDevice,
}

/// One routed line.
#[derive(Clone)]
struct Line {
    vector: u8,
    name: &'static str,
    trigger: Trigger,
    owner: Owner,
    /// CPUs the line may go to (`smp_affinity`).
    affinity: u64,
    /// The CPU it goes to (the first online CPU of `affinity`).
    effective_cpu: usize,
    /// A message-signalled IRQ (`msi`), not an IOAPIC input.
    msi: bool,
}

/// Serialises `request_*irq` and `free_irq` (Linux's per-descriptor `request_mutex`): both
/// may sleep (starting or stopping the line's thread), so this is a sleeping lock, outermost.
static REQUEST: Mutex<()> = Mutex::named("irq::REQUEST", ());
/// Routed lines by GSI.
static LINES: IrqSafeLock<BTreeMap<u32, Line>> = IrqSafeLock::new(BTreeMap::new());
/// The IOAPICs, in MADT order (a leaf lock: their registers are index/data pairs and must not
/// interleave). microvm with ACPI has two: GSIs 0-23 and 24-47, its virtio-mmio lines on the
/// second.
static IOAPIC: IrqSafeLock<Vec<apic::IoApic>> = IrqSafeLock::new(Vec::new());
/// APIC ID of the boot CPU (CPU 0), known before `smp` lists the CPUs.
static BOOT_APIC_ID: AtomicU32 = AtomicU32::new(0);

/// Runs `f` on every IOAPIC with their lock held (each ignores GSIs outside its own range).
fn with_ioapic(f: impl Fn(&apic::IoApic)) {
    for ioapic in IOAPIC.lock().iter() {
        f(ioapic);
    }
}

fn apic_id_of(cpu: usize) -> u32 {
    if cpu == 0 {
        BOOT_APIC_ID.load(Ordering::Relaxed)
    } else {
        crate::kernel::smp::apic_id(cpu)
    }
}

/// Enables the local APIC and masks every IOAPIC input. Called once at boot.
pub fn init(acpi: Option<&AcpiInfo>) {
    apic::init_local(interrupts::SPURIOUS_VECTOR, true);
    BOOT_APIC_ID.store(apic::local_apic_id(), Ordering::Relaxed);
    let entries = acpi
        .map(|info| info.io_apics.as_slice())
        .unwrap_or_default();
    if entries.is_empty() {
        crate::pr_warn!("irq: no IOAPIC in the MADT; device interrupts are unavailable");
        return;
    }
    let mut ioapics = IOAPIC.lock();
    for entry in entries {
        let ioapic = apic::IoApic::new(entry);
        ioapic.mask_all();
        ioapics.push(ioapic);
    }
    drop(ioapics);
    crate::kernel::pm::register_notifier(crate::kernel::pm::Notifier {
        name: "irq",
        priority: -10,
        call: pm_notifier,
    });
}

/// The GSI an ISA interrupt arrives on (the MADT's interrupt source override, else the same
/// number).
pub fn isa_irq_to_gsi(isa_irq: u8) -> u32 {
    crate::acpi()
        .and_then(|info| info.overrides.iter().find(|o| o.isa_irq == isa_irq))
        .map_or(isa_irq as u32, |o| o.gsi)
}

/// The trigger the firmware declares for `gsi` (an MADT override), if any.
pub fn firmware_trigger(gsi: u32) -> Option<Trigger> {
    crate::acpi()
        .and_then(|info| info.overrides.iter().find(|o| o.gsi == gsi))
        .map(|o| Trigger {
            level: o.level_triggered,
            active_low: o.active_low,
        })
}

/// The trigger a request asks for (see [`IrqFlags::NONE`]).
fn resolve_trigger(gsi: u32, flags: IrqFlags) -> Result<Trigger, IrqError> {
    let (level, active_low) = match flags.0 & IrqFlags::TRIGGER_MASK {
        0 => {
            return Ok(firmware_trigger(gsi).unwrap_or(Trigger {
                level: gsi >= 16,
                active_low: gsi >= 16,
            }))
        }
        0x1 => (false, false),
        0x2 => (false, true),
        0x4 => (true, false),
        0x8 => (true, true),
        _ => {
            return Err(IrqError::InvalidRequest(
                "more than one IRQF_TRIGGER_* flag",
            ))
        }
    };
    Ok(Trigger { level, active_low })
}

/// The vector of `gsi`, if the IOAPIC has that input.
fn vector_of(gsi: u32) -> Result<u8, IrqError> {
    let ioapics = IOAPIC.lock();
    if ioapics.is_empty() {
        return Err(IrqError::NoIoApic);
    }
    let covered = ioapics
        .iter()
        .any(|ioapic| gsi >= ioapic.gsi_base && gsi - ioapic.gsi_base < ioapic.entries());
    drop(ioapics);
    if !covered {
        return Err(IrqError::NoSuchLine(gsi));
    }
    // Device vectors must stay below the first system vector (the local timer's).
    u8::try_from(interrupts::DEVICE_VECTOR_BASE as u32 + gsi)
        .ok()
        .filter(|&vector| vector < crate::kernel::time::LOCAL_TIMER_VECTOR)
        .ok_or(IrqError::NoSuchLine(gsi))
}

/// One past the last GSI of any IOAPIC (0 without one): where MSI IRQ numbers start, and
/// the vectors below `DEVICE_VECTOR_BASE` + this are the IOAPIC lines'.
fn ioapic_gsi_end() -> u32 {
    IOAPIC
        .lock()
        .iter()
        .map(|ioapic| ioapic.gsi_base + ioapic.entries())
        .max()
        .unwrap_or(0)
}

/// Whether `irq` has a handler.
fn is_requested(irq: u32) -> bool {
    LINES.lock().contains_key(&irq)
}

/// Lines with a handler (leak checks compare it across bind/unbind cycles).
pub fn requested_lines() -> usize {
    LINES
        .lock()
        .values()
        .filter(|line| matches!(line.owner, Owner::Action(_)))
        .count()
}

/// The vector `irq` is delivered on, if it is routed (tests count deliveries with it).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the in-kernel tests
pub fn irq_vector(irq: u32) -> Option<u8> {
    LINES.lock().get(&irq).map(|line| line.vector)
}

/// Hard-IRQ entry of every requested IOAPIC line.
fn irq_dispatch(vector: u8) {
    handle_irq(vector.wrapping_sub(interrupts::DEVICE_VECTOR_BASE) as u32);
}

/// Runs line `irq`'s action (hard-IRQ context).
fn handle_irq(irq: u32) {
    let action = {
        let lines = LINES.lock();
        let Some(Line {
            owner: Owner::Action(action),
            ..
        }) = lines.get(&irq)
        else {
            return;
        };
        // Counted before the lock is released: `free_irq` removes the line under the lock,
        // then waits for this count to drop, so it cannot miss a handler that started.
        action.hard_running.fetch_add(1, Ordering::AcqRel);
        Arc::clone(action)
    };
    let verdict = match action.handler {
        Some(handler) => handler(irq),
        None => IrqReturn::WakeThread,
    };
    if verdict == IrqReturn::WakeThread {
        if let Some(thread) = &action.thread {
            if action.mask_until_thread_done {
                with_ioapic(|ioapic| ioapic.set_masked(irq, true));
            }
            thread.pending.store(true, Ordering::Release);
            thread.wake.wake_all();
        }
    }
    action.hard_running.fetch_sub(1, Ordering::AcqRel);
}

/// The body of a line's thread: runs `thread_fn` for every wake-up until `free_irq` stops it.
fn line_thread(action: Arc<Action>) {
    let Some(thread) = &action.thread else { return };
    loop {
        thread.wake.wait_until(|| {
            thread.pending.load(Ordering::Acquire) || thread.stop.load(Ordering::Acquire)
        });
        if thread.pending.swap(false, Ordering::AcqRel) {
            if let Some(thread_fn) = action.thread_fn {
                thread_fn(action.irq);
            }
            if action.mask_until_thread_done {
                // Only while the line is still ours: after `free_irq` masked it, it stays so.
                let lines = LINES.lock();
                if let Some(Line {
                    owner: Owner::Action(owner),
                    ..
                }) = lines.get(&action.irq)
                {
                    if Arc::ptr_eq(owner, &action) {
                        with_ioapic(|ioapic| ioapic.set_masked(action.irq, false));
                    }
                }
            }
        } else if thread.stop.load(Ordering::Acquire) {
            break;
        }
    }
    thread.exited.store(true, Ordering::Release);
    thread.exit_wait.wake_all();
}

/// Linux's `request_threaded_irq`: routes line `irq` (a GSI) to `handler` (hard-IRQ context;
/// `None`: always wake the thread) and, when that returns [`IrqReturn::WakeThread`], wakes the
/// line's thread `irq/N-name` (RT FIFO 50) to run `thread_fn`. The trigger comes from `flags`
/// (or the firmware); a level line with a thread must be [`IrqFlags::ONESHOT`] or have a hard
/// handler that quiets the device (else it would storm), as Linux insists. Returns the vector.
/// Thread context (it may start a thread).
pub fn request_threaded_irq(
    irq: u32,
    handler: Option<IrqHandler>,
    thread_fn: Option<IrqHandler>,
    flags: IrqFlags,
    name: &'static str,
) -> Result<u8, IrqError> {
    let msi = msi::placement(irq);
    let (trigger, vector) = match msi {
        Some((vector, _, _)) => (
            Trigger {
                level: false,
                active_low: false,
            },
            vector,
        ),
        None => (resolve_trigger(irq, flags)?, vector_of(irq)?),
    };
    if handler.is_none() && thread_fn.is_none() {
        return Err(IrqError::InvalidRequest(
            "neither a handler nor a thread function",
        ));
    }
    let oneshot = flags.contains(IrqFlags::ONESHOT);
    if handler.is_none() && !oneshot {
        return Err(IrqError::InvalidRequest(
            "a thread function without a hard handler needs IRQF_ONESHOT",
        ));
    }
    let _request = REQUEST.lock();
    if LINES.lock().contains_key(&irq) {
        return Err(IrqError::Busy(irq));
    }
    let action = Arc::new(Action {
        irq,
        handler,
        thread_fn,
        mask_until_thread_done: thread_fn.is_some() && oneshot && trigger.level,
        thread: thread_fn.map(|_| LineThread {
            id: AtomicU64::new(0),
            pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            wake: crate::kernel::sched::WaitQueue::new(),
            exit_wait: crate::kernel::sched::WaitQueue::new(),
        }),
        hard_running: AtomicU32::new(0),
    });
    if let Some(thread) = &action.thread {
        let for_thread = Arc::clone(&action);
        // A new line goes to CPU 0 (below), and so does its thread until the affinity moves.
        let id = crate::kernel::sched::kthread_spawn(
            &alloc::format!("irq/{irq}-{name}"),
            lull_sched::SchedClass::RealTime(lull_sched::RtPriority::IRQ_THREAD),
            lull_sched::CpuSet::single(0),
            move || line_thread(for_thread),
        )
        .map_err(|error| IrqError::Thread(alloc::format!("{error}")))?;
        thread.id.store(id, Ordering::Release);
    }
    {
        let mut lines = LINES.lock();
        if lines.contains_key(&irq) {
            // A tick device took the line meanwhile (`route_gsi` does not take `REQUEST`).
            drop(lines);
            stop_thread(&action);
            return Err(IrqError::Busy(irq));
        }
        // A new line goes to CPU 0 with every CPU allowed (Linux's default affinity, no
        // irqbalance).
        let mut affinity = u64::MAX >> (64 - crate::kernel::smp::possible_cpus().clamp(1, 64));
        let mut effective_cpu = 0;
        if let Some((_, cpu, mask)) = msi {
            // Where the vector allocator put it (the MSI IRQ's own affinity).
            effective_cpu = cpu;
            affinity = (0..64)
                .filter(|&c| mask.contains(c))
                .fold(0, |m, c| m | 1 << c);
        }
        lines.insert(
            irq,
            Line {
                vector,
                name,
                trigger,
                owner: Owner::Action(Arc::clone(&action)),
                affinity,
                effective_cpu,
                msi: msi.is_some(),
            },
        );
        if msi.is_some() {
            drop(lines);
            msi::set_masked(irq, false);
            return Ok(vector);
        }
        interrupts::set_handler(vector, irq_dispatch);
        with_ioapic(|ioapic| {
            ioapic.route(
                irq,
                vector,
                apic_id_of(effective_cpu),
                trigger.level,
                trigger.active_low,
            )
        });
    }
    crate::pr_debug!(
        "irq: {name} (IRQ {irq}, {}) -> vector {vector:#x}{}",
        if trigger.level { "level" } else { "edge" },
        match (&action.thread, action.handler) {
            (None, _) => "",
            (Some(_), None) => ", threaded",
            (Some(_), Some(_)) => ", hard + threaded",
        }
    );
    Ok(vector)
}

/// Linux's `request_irq`: `handler` runs in hard-IRQ context; under `threadirqs` (or with
/// [`IrqFlags::FORCE_THREAD`]) it runs in the line's thread instead, one-shot (Linux's
/// `irq_setup_forced_threading`), unless [`IrqFlags::NO_THREAD`]. Returns the vector.
pub fn request_irq(
    irq: u32,
    handler: IrqHandler,
    flags: IrqFlags,
    name: &'static str,
) -> Result<u8, IrqError> {
    let forced = !flags.contains(IrqFlags::NO_THREAD)
        && (flags.contains(IrqFlags::FORCE_THREAD) || force_threading());
    if forced {
        request_threaded_irq(irq, None, Some(handler), flags | IrqFlags::ONESHOT, name)
    } else {
        request_threaded_irq(irq, Some(handler), None, flags, name)
    }
}

/// Asks a line's thread to stop and waits until it has left the scheduler's thread list.
fn stop_thread(action: &Action) {
    let Some(thread) = &action.thread else { return };
    thread.stop.store(true, Ordering::Release);
    thread.wake.wake_all();
    thread
        .exit_wait
        .wait_until(|| thread.exited.load(Ordering::Acquire));
    // The thread returns from its body right after saying so; it is gone once its CPU has
    // switched away from it (normally before we run again: it is RT FIFO).
    let id = thread.id.load(Ordering::Acquire);
    for _ in 0..1000 {
        if id == 0 || crate::kernel::sched::task_info(id).is_none() {
            return;
        }
        crate::kernel::time::msleep(1);
    }
}

/// Linux's `free_irq`: removes line `irq`'s handler, masks the line and drops it from
/// `/proc/interrupts`, waits for a hard handler running on another CPU and for the thread
/// (including a run in progress or pending: `synchronize_irq`), and stops the thread. The line
/// may then be requested again. Thread context, not from the line's own thread.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no driver is unloaded yet
pub fn free_irq(irq: u32) -> Result<(), IrqError> {
    let _request = REQUEST.lock();
    let (action, vector, is_msi) = {
        let mut lines = LINES.lock();
        let action = match lines.get(&irq) {
            Some(Line {
                owner: Owner::Action(action),
                vector,
                msi,
                ..
            }) => (Arc::clone(action), *vector, *msi),
            _ => return Err(IrqError::NotRequested(irq)),
        };
        if let Some(thread) = &action.0.thread {
            let id = thread.id.load(Ordering::Acquire);
            if id != 0 && crate::kernel::sched::current() == Some(id) {
                return Err(IrqError::FreedFromOwnThread(irq));
            }
        }
        lines.remove(&irq);
        if !action.2 {
            with_ioapic(|ioapic| ioapic.set_masked(irq, true));
        }
        action
    };
    if is_msi {
        // The vector's IDT entry is shared by every MSI IRQ; masking stops this one.
        msi::set_masked(irq, true);
    } else {
        interrupts::clear_handler(vector);
    }
    // synchronize_irq: a hard handler that looked the line up before it was removed.
    while action.hard_running.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    stop_thread(&action);
    crate::pr_debug!("irq: freed IRQ {irq}");
    Ok(())
}

/// Routes tick device line `gsi` to `vector` on this CPU, edge-triggered (the time subsystem
/// installs the handler itself with `interrupts::set_handler`; the line's CPU is fixed).
pub fn route_gsi(gsi: u32, vector: u8, name: &'static str, level: bool, active_low: bool) {
    let cpu = crate::kernel::smp::this_cpu();
    let mut lines = LINES.lock();
    lines.insert(
        gsi,
        Line {
            vector,
            name,
            trigger: Trigger { level, active_low },
            owner: Owner::TickDevice,
            affinity: 1 << cpu,
            effective_cpu: cpu,
            msi: false,
        },
    );
    with_ioapic(|ioapic| ioapic.route(gsi, vector, apic::local_apic_id(), level, active_low));
}

/// Releases a tick device line routed with [`route_gsi`] (masked; a driver may then request
/// it: until then `request_irq` refuses it as busy).
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // the device tests borrow the lines
pub fn release_tick_line(gsi: u32) {
    let mut lines = LINES.lock();
    if matches!(
        lines.get(&gsi),
        Some(Line {
            owner: Owner::TickDevice,
            ..
        })
    ) {
        lines.remove(&gsi);
        with_ioapic(|ioapic| ioapic.set_masked(gsi, true));
    }
}

/// PM notifier: masks every device line before power-off.
fn pm_notifier(_event: crate::kernel::pm::PmEvent) {
    with_ioapic(|ioapic| ioapic.mask_all());
}

// ---- affinity --------------------------------------------------------------------------------

/// Sets line `irq`'s affinity to the CPUs of `mask` (bit n = CPU n) and sends it to the first
/// online one (physical destination mode, one CPU, as Linux without irqbalance). Refuses, and
/// changes nothing, if the mask names CPUs that do not exist or no online CPU. Returns the CPU
/// the line now goes to.
pub fn set_irq_affinity(irq: u32, mask: u64) -> Result<usize, IrqError> {
    if mask == 0 {
        return Err(IrqError::BadAffinity(String::from("the CPU mask is empty")));
    }
    let possible = crate::kernel::smp::possible_cpus();
    if let Some(cpu) = (possible..MAX_CPUS).find(|&cpu| mask & (1 << cpu) != 0) {
        return Err(IrqError::BadAffinity(alloc::format!(
            "CPU {cpu} does not exist ({possible} possible CPUs)"
        )));
    }
    let Some(cpu) = crate::kernel::smp::online_cpus().find(|&cpu| mask & (1 << cpu) != 0) else {
        return Err(IrqError::BadAffinity(alloc::format!(
            "no online CPU in the mask {}",
            format_mask(mask)
        )));
    };
    let is_msi = {
        let lines = LINES.lock();
        let line = lines.get(&irq).ok_or(IrqError::NotRequested(irq))?;
        if matches!(line.owner, Owner::TickDevice) {
            return Err(IrqError::AffinityFixed(irq));
        }
        line.msi
    };
    // An MSI IRQ gets a vector on the new CPU and its device is reprogrammed first (outside
    // `LINES`); the line then records where it goes.
    let msi_vector = if is_msi {
        let mut cpus = lull_pci::CpuMask::empty();
        for c in (0..64).filter(|&c| mask & (1 << c) != 0) {
            cpus.insert(c);
        }
        Some(msi::move_to(irq, cpu, cpus)?)
    } else {
        None
    };
    let mut lines = LINES.lock();
    let line = lines.get_mut(&irq).ok_or(IrqError::NotRequested(irq))?;
    line.affinity = mask;
    if let Some(vector) = msi_vector {
        line.vector = vector;
        line.effective_cpu = cpu;
    } else if line.effective_cpu != cpu {
        line.effective_cpu = cpu;
        // One 32-bit write of the destination field: the entry is never half-updated, and an
        // interrupt already delivered to the old CPU is acknowledged there as usual.
        with_ioapic(|ioapic| ioapic.set_destination(irq, apic_id_of(cpu)));
    }
    let thread = match &line.owner {
        Owner::Action(action) => action.thread.as_ref().map(|t| t.id.load(Ordering::Acquire)),
        Owner::TickDevice => None,
    };
    drop(lines);
    // The line's thread follows the interrupt to its CPU (Linux's irq_thread_check_affinity),
    // so the hard half and the thread share a cache.
    if let Some(id) = thread.filter(|&id| id != 0) {
        if let Err(error) = crate::kernel::sched::set_affinity(id, lull_sched::CpuSet::single(cpu))
        {
            crate::pr_warn!("irq {irq}: thread {id} stays where it was: {error}");
        }
    }
    Ok(cpu)
}

/// Line `irq`'s affinity mask and the CPU it goes to.
pub fn irq_affinity(irq: u32) -> Option<(u64, usize)> {
    LINES
        .lock()
        .get(&irq)
        .map(|line| (line.affinity, line.effective_cpu))
}

/// A CPU mask as Linux prints it: hex, one digit per four possible CPUs, a comma every 32.
pub fn format_mask(mask: u64) -> String {
    let digits = crate::kernel::smp::possible_cpus().clamp(1, 64).div_ceil(4);
    let mut out = String::new();
    for digit in (0..digits).rev() {
        let _ = write!(out, "{:x}", (mask >> (digit * 4)) & 0xF);
        if digit % 8 == 0 && digit != 0 {
            out.push(',');
        }
    }
    out
}

/// A CPU mask as a list (`0-2,5`).
pub fn format_mask_list(mask: u64) -> String {
    let mut out = String::new();
    let mut cpu = 0;
    while cpu < 64 {
        if mask & (1 << cpu) == 0 {
            cpu += 1;
            continue;
        }
        let start = cpu;
        while cpu + 1 < 64 && mask & (1 << (cpu + 1)) != 0 {
            cpu += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == cpu {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{cpu}");
        }
        cpu += 1;
    }
    out
}

/// Parses a hex CPU mask (`f`, `0x3`, `00000000,00000002`).
pub fn parse_mask(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits: String = text
        .strip_prefix("0x")
        .unwrap_or(text)
        .chars()
        .filter(|&c| c != ',')
        .collect();
    if digits.is_empty() {
        return Err(String::from("expected a hex CPU mask such as 2 or f"));
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 16 {
        return Err(alloc::format!("mask {text:?} names CPUs beyond 63"));
    }
    if significant.is_empty() {
        return if digits.chars().all(|c| c == '0') {
            Ok(0)
        } else {
            Err(alloc::format!("{text:?} is not a hex CPU mask"))
        };
    }
    u64::from_str_radix(significant, 16)
        .map_err(|_| alloc::format!("{text:?} is not a hex CPU mask"))
}

/// Parses a CPU list (`1`, `0-2,5`).
pub fn parse_mask_list(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(String::from("expected a CPU list such as 1 or 0-2,5"));
    }
    let cpu = |word: &str| -> Result<usize, String> {
        word.trim()
            .parse::<usize>()
            .ok()
            .filter(|&cpu| cpu < 64)
            .ok_or_else(|| alloc::format!("{word:?} is not a CPU number (0-63)"))
    };
    let mut mask = 0u64;
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((first, last)) => (cpu(first)?, cpu(last)?),
            None => (cpu(part)?, cpu(part)?),
        };
        if first > last {
            return Err(alloc::format!("range {part:?} runs backwards"));
        }
        for cpu in first..=last {
            mask |= 1 << cpu;
        }
    }
    Ok(mask)
}

// ---- /proc/irq ----------------------------------------------------------------------------

const IRQ_FILES: [&str; 4] = [
    "effective_affinity",
    "effective_affinity_list",
    "smp_affinity",
    "smp_affinity_list",
];

fn parse_irq_path(relative: &str) -> Result<(u32, &str), ProcError> {
    let (number, file) = relative.split_once('/').unwrap_or((relative, ""));
    let irq: u32 = number.parse().map_err(|_| ProcError::NotFound)?;
    if !LINES.lock().contains_key(&irq) {
        return Err(ProcError::NotFound);
    }
    Ok((irq, file))
}

/// Reads `/proc/irq/<relative>`.
pub fn proc_irq_read(relative: &str) -> Result<String, ProcError> {
    let (irq, file) = parse_irq_path(relative)?;
    let (mask, cpu) = irq_affinity(irq).ok_or(ProcError::NotFound)?;
    let text = match file {
        "smp_affinity" => format_mask(mask),
        "smp_affinity_list" => format_mask_list(mask),
        "effective_affinity" => format_mask(1 << cpu),
        "effective_affinity_list" => alloc::format!("{cpu}"),
        _ => return Err(ProcError::NotFound),
    };
    Ok(text + "\n")
}

/// Writes `/proc/irq/<relative>` (`smp_affinity`, `smp_affinity_list`).
pub fn proc_irq_write(relative: &str, value: &str) -> Result<(), ProcError> {
    let (irq, file) = parse_irq_path(relative)?;
    let mask = match file {
        "smp_affinity" => parse_mask(value),
        "smp_affinity_list" => parse_mask_list(value),
        "effective_affinity" | "effective_affinity_list" => return Err(ProcError::NotWritable),
        _ => return Err(ProcError::NotFound),
    }
    .map_err(ProcError::Invalid)?;
    set_irq_affinity(irq, mask)
        .map(|_| ())
        .map_err(|error| ProcError::Invalid(alloc::format!("{error}")))
}

/// Lists `/proc/irq` (every routed line) or `/proc/irq/N`.
pub fn proc_irq_list(relative: &str) -> Result<String, ProcError> {
    let mut out = String::new();
    if relative.is_empty() {
        for irq in LINES.lock().keys() {
            let _ = writeln!(out, "{irq}");
        }
        return Ok(out);
    }
    let (_, file) = parse_irq_path(relative)?;
    if !file.is_empty() {
        return Err(ProcError::NotFound);
    }
    for name in IRQ_FILES {
        let _ = writeln!(out, "{name}");
    }
    Ok(out)
}

// ---- /proc/interrupts ------------------------------------------------------------------------

/// Renders `/proc/interrupts`: one column per online CPU, as Linux.
pub fn proc_interrupts() -> String {
    let cpus: Vec<usize> = crate::kernel::smp::online_cpus().collect();
    let mut out = String::from("     ");
    for cpu in &cpus {
        let _ = write!(out, " {:>10}", alloc::format!("CPU{cpu}"));
    }
    out.push('\n');
    let row = |out: &mut String, label: &str, count: &dyn Fn(usize) -> u64, what: &str| {
        let _ = write!(out, "{label:>4}:");
        for &cpu in &cpus {
            let _ = write!(out, " {:>10}", count(cpu));
        }
        let _ = writeln!(out, "   {what}");
    };
    let lines: Vec<(u32, u8, bool, &'static str, bool)> = LINES
        .lock()
        .iter()
        .map(|(&irq, line)| (irq, line.vector, line.trigger.level, line.name, line.msi))
        .collect();
    for (irq, vector, level, name, is_msi) in lines {
        if is_msi {
            if let Some((chip, counts)) = msi::describe(irq) {
                row(
                    &mut out,
                    &alloc::format!("{irq}"),
                    &|cpu| counts.get(cpu).map_or(0, |c| c.load(Ordering::Relaxed)),
                    &alloc::format!("{chip}   {name}"),
                );
            }
            continue;
        }
        row(
            &mut out,
            &alloc::format!("{irq}"),
            &|cpu| interrupts::count_on(cpu, vector),
            &alloc::format!(
                "IO-APIC {irq:>3}-{}   {name}",
                if level { "fasteoi" } else { "edge" },
            ),
        );
    }
    row(
        &mut out,
        "LOC",
        &crate::kernel::time::local_timer_interrupts,
        "Local timer interrupts",
    );
    row(
        &mut out,
        "SPU",
        &|cpu| interrupts::count_on(cpu, interrupts::SPURIOUS_VECTOR),
        "Spurious interrupts",
    );
    row(
        &mut out,
        "RES",
        &|cpu| interrupts::count_on(cpu, crate::kernel::smp::RESCHEDULE_VECTOR),
        "Rescheduling interrupts",
    );
    row(
        &mut out,
        "CAL",
        &|cpu| interrupts::count_on(cpu, crate::kernel::smp::CALL_FUNCTION_VECTOR),
        "Function call interrupts",
    );
    row(
        &mut out,
        "TLB",
        &crate::kernel::smp::tlb_shootdowns,
        "TLB shootdowns",
    );
    out
}

#[cfg(feature = "ktest")]
/// The task id of line `irq`'s thread (tests).
pub fn thread_id(irq: u32) -> Option<u64> {
    match &LINES.lock().get(&irq)?.owner {
        Owner::Action(action) => action
            .thread
            .as_ref()
            .map(|thread| thread.id.load(Ordering::Acquire)),
        Owner::TickDevice => None,
    }
}
