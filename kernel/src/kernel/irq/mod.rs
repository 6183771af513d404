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
//! A requested line has one action per device, or several when every device on it asked for
//! [`IrqFlags::SHARED`] (PCI INTx: several functions on one IOAPIC input). An action is told
//! apart by its [`DevId`], which its handlers get back and `free_irq` names. Its hard part
//! (`handler`) runs in hard-IRQ context on the line's CPU; a threaded action also has a kernel
//! thread `irq/N-name` (RT FIFO 50) that runs `thread_fn` when the hard part returns
//! [`IrqReturn::WakeThread`]. Every action of a shared line runs for every interrupt, and each
//! says whether its device raised it. As in Linux, a one-shot *level* line is masked from the
//! hard IRQ until every thread it woke has run (the device keeps the line asserted until its
//! thread quiets it, so unmasking earlier would storm); an edge line is never masked: an edge
//! that arrives while the thread runs marks it pending and the thread runs again. A line whose
//! handlers disown 99,900 of 100,000 interrupts is masked with "nobody cared" (Linux's
//! `note_interrupt`), so a stuck device cannot take a CPU.
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
    None,
    /// Handled completely.
    Handled,
    /// Wake the line's thread to finish the work (hard handler of a threaded line only).
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // only the tests' primary handlers
    WakeThread,
}

/// A handler. As the hard part: hard-IRQ context, interrupts disabled, must not sleep or
/// allocate. As a thread function: the line's kernel thread, may sleep. `irq` is the GSI (or
/// MSI IRQ number), `dev_id` the cookie the action was requested with.
pub type IrqHandler = fn(irq: u32, dev_id: DevId) -> IrqReturn;

/// Which device an action belongs to (Linux's `dev_id`): any value unique among the users of
/// one line (a device index, an address used only as a number). Handlers get it back;
/// `free_irq` removes the action it names. A line that is not shared may use [`DevId::NONE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevId(pub usize);

impl DevId {
    /// The cookie of a line's only user.
    pub const NONE: DevId = DevId(0);

    /// The cookie for the device state at `state`: its address, as a number only.
    pub fn of<T: ?Sized>(state: &T) -> DevId {
        DevId((state as *const T).cast::<()>() as usize)
    }
}

/// Most actions on one line (a fixed array, so the hard IRQ does not allocate).
pub const MAX_SHARED: usize = 8;

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
    /// Other devices may request the line too, if each of them says so (Linux's
    /// `IRQF_SHARED`; PCI INTx lines are shared).
    pub const SHARED: IrqFlags = IrqFlags(0x80);
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
    /// The line has a handler that does not share it, this request does not share, the line
    /// drives a tick device, or it has [`MAX_SHARED`] users (Linux's -EBUSY). The owner's name.
    Busy(u32, &'static str),
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
            IrqError::Busy(irq, owner) => write!(f, "IRQ {irq} is busy (used by {owner})"),
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

/// What one device on a requested line runs.
struct Action {
    irq: u32,
    dev_id: DevId,
    name: &'static str,
    handler: Option<IrqHandler>,
    thread_fn: Option<IrqHandler>,
    /// Requested with [`IrqFlags::SHARED`].
    shared: bool,
    /// A one-shot level line: masked from the hard IRQ until `thread_fn` returned.
    mask_until_thread_done: bool,
    /// This action's thread owes a run before the (one-shot, level) line may be unmasked.
    oneshot_pending: AtomicBool,
    thread: Option<LineThread>,
    /// CPUs inside `handler` right now (`free_irq` waits for 0: `synchronize_irq`).
    hard_running: AtomicU32,
}

/// Who owns a line.
#[derive(Clone)]
enum Owner {
    /// Requested through `request_irq` / `request_threaded_irq`: one action per device, in
    /// request order (never empty, at most [`MAX_SHARED`]).
    Actions(Vec<Arc<Action>>),
    /// Routed by the time subsystem for a tick device (hard handler installed directly, its
    /// CPU fixed).
    TickDevice,
}

/// One routed line.
#[derive(Clone)]
struct Line {
    vector: u8,
    /// The tick device's name (a requested line is named by its actions).
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

/// Who holds line `irq` (its first action's name, or the tick device's), if anyone.
fn holder(irq: u32) -> Option<&'static str> {
    LINES.lock().get(&irq).map(|line| match &line.owner {
        Owner::Actions(chain) => chain[0].name,
        Owner::TickDevice => line.name,
    })
}

/// Requested handlers, one per device on a shared line (leak checks compare it across
/// bind/unbind cycles).
pub fn requested_lines() -> usize {
    LINES
        .lock()
        .values()
        .map(|line| match &line.owner {
            Owner::Actions(chain) => chain.len(),
            Owner::TickDevice => 0,
        })
        .sum()
}

/// Line `irq`'s users as `/proc/interrupts` names them ("a, b" on a shared line).
fn line_names(line: &Line) -> String {
    match &line.owner {
        Owner::Actions(chain) => {
            let names: Vec<&str> = chain.iter().map(|action| action.name).collect();
            names.join(", ")
        }
        Owner::TickDevice => String::from(line.name),
    }
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

/// Interrupts counted and disowned per IRQ number, for [`note_interrupt`].
static NOTED: [(AtomicU32, AtomicU32); 256] =
    [const { (AtomicU32::new(0), AtomicU32::new(0)) }; 256];

/// Linux's `note_interrupt`: of every 100,000 interrupts on a line, if 99,900 or more were
/// disowned by every handler, the line is stuck (a device nobody drives holds it asserted) and
/// is masked for good, with a message, instead of taking the CPU.
fn note_interrupt(irq: u32, handled: bool) {
    let Some((count, unhandled)) = NOTED.get(irq as usize) else {
        return;
    };
    if !handled {
        unhandled.fetch_add(1, Ordering::Relaxed);
    }
    if count.fetch_add(1, Ordering::Relaxed) + 1 < 100_000 {
        return;
    }
    count.store(0, Ordering::Relaxed);
    if unhandled.swap(0, Ordering::Relaxed) > 99_900 {
        crate::pr_err!("irq {irq}: nobody cared; disabling it");
        if msi::placement(irq).is_some() {
            msi::set_masked(irq, true);
        } else {
            with_ioapic(|ioapic| ioapic.set_masked(irq, true));
        }
    }
}

/// Runs every action of line `irq` (hard-IRQ context; no allocation: the actions are taken
/// into a fixed array).
fn handle_irq(irq: u32) {
    let mut actions: [Option<Arc<Action>>; MAX_SHARED] = Default::default();
    {
        let lines = LINES.lock();
        let Some(Line {
            owner: Owner::Actions(chain),
            ..
        }) = lines.get(&irq)
        else {
            return;
        };
        for (slot, action) in actions.iter_mut().zip(chain) {
            // Counted before the lock is released: `free_irq` removes the action under the
            // lock, then waits for this count to drop, so it cannot miss a handler that started.
            action.hard_running.fetch_add(1, Ordering::AcqRel);
            *slot = Some(Arc::clone(action));
        }
    }
    let mut verdicts = [IrqReturn::None; MAX_SHARED];
    let mut handled = false;
    let mut mask = false;
    for (verdict, action) in verdicts.iter_mut().zip(&actions) {
        let Some(action) = action else { break };
        *verdict = match action.handler {
            Some(handler) => handler(irq, action.dev_id),
            None => IrqReturn::WakeThread,
        };
        if *verdict == IrqReturn::WakeThread && action.thread.is_some() {
            if action.mask_until_thread_done {
                // Before the line is masked and the thread woken: a thread finishing
                // meanwhile then sees this one still owed and leaves the line masked.
                action.oneshot_pending.store(true, Ordering::Release);
                mask = true;
            }
        } else if *verdict == IrqReturn::WakeThread {
            // A hard handler without a thread asked for one: nothing to wake.
            *verdict = IrqReturn::Handled;
        }
        handled |= *verdict != IrqReturn::None;
    }
    if mask {
        with_ioapic(|ioapic| ioapic.set_masked(irq, true));
    }
    for (verdict, action) in verdicts.iter().zip(&actions) {
        let Some(action) = action else { break };
        if *verdict == IrqReturn::WakeThread {
            if let Some(thread) = &action.thread {
                thread.pending.store(true, Ordering::Release);
                thread.wake.wake_all();
            }
        }
        action.hard_running.fetch_sub(1, Ordering::AcqRel);
    }
    note_interrupt(irq, handled);
}

/// After a one-shot thread ran (or its action left the line): unmasks line `irq` if no action
/// still on it owes a thread run. `LINES` held by the caller.
fn unmask_if_no_thread_owed(lines: &BTreeMap<u32, Line>, irq: u32) {
    if let Some(Line {
        owner: Owner::Actions(chain),
        ..
    }) = lines.get(&irq)
    {
        let owed = chain
            .iter()
            .any(|action| action.oneshot_pending.load(Ordering::Acquire));
        if !owed && chain.iter().any(|action| action.mask_until_thread_done) {
            with_ioapic(|ioapic| ioapic.set_masked(irq, false));
        }
    }
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
                thread_fn(action.irq, action.dev_id);
            }
            if action.mask_until_thread_done {
                // Only while the action is still on the line: after `free_irq` took the line's
                // last action away and masked it, it stays masked.
                let lines = LINES.lock();
                action.oneshot_pending.store(false, Ordering::Release);
                let ours = matches!(
                    lines.get(&action.irq),
                    Some(Line { owner: Owner::Actions(chain), .. })
                        if chain.iter().any(|a| Arc::ptr_eq(a, &action))
                );
                if ours {
                    unmask_if_no_thread_owed(&lines, action.irq);
                }
            }
        } else if thread.stop.load(Ordering::Acquire) {
            break;
        }
    }
    thread.exited.store(true, Ordering::Release);
    thread.exit_wait.wake_all();
}

/// Whether an action requested with `flags` (resolving to `trigger`) may join line `irq` as it
/// is now, and on which CPU its thread should start. Linux's `__setup_irq` checks: both sides
/// must share, with the same trigger, and a `dev_id` not already there. Unlike Linux, a
/// one-shot threaded action may share with one that is not: the line is masked while any
/// one-shot thread owes a run and unmasked when none does, so the other device's interrupt
/// waits for that thread at worst (Linux refuses the mix; here virtio's threaded handlers and
/// the SMBus controller's hard one meet on q35's PCI lines).
fn may_join(
    lines: &BTreeMap<u32, Line>,
    irq: u32,
    flags: IrqFlags,
    trigger: Trigger,
    dev_id: DevId,
) -> Result<usize, IrqError> {
    let Some(line) = lines.get(&irq) else {
        return Ok(0);
    };
    let chain = match &line.owner {
        Owner::Actions(chain) if !line.msi => chain,
        _ => return Err(IrqError::Busy(irq, line.name)),
    };
    let first = &chain[0];
    if !flags.contains(IrqFlags::SHARED) || !first.shared || chain.len() >= MAX_SHARED {
        return Err(IrqError::Busy(irq, first.name));
    }
    if line.trigger != trigger {
        return Err(IrqError::InvalidRequest(
            "the trigger differs from the shared line's",
        ));
    }
    if chain.iter().any(|action| action.dev_id == dev_id) {
        return Err(IrqError::InvalidRequest(
            "this dev_id is on the shared line already",
        ));
    }
    Ok(line.effective_cpu)
}

/// Linux's `request_threaded_irq`: routes line `irq` (a GSI) to `handler` (hard-IRQ context;
/// `None`: always wake the thread) and, when that returns [`IrqReturn::WakeThread`], wakes the
/// action's thread `irq/N-name` (RT FIFO 50) to run `thread_fn`. Both get `dev_id` back. The
/// trigger comes from `flags` (or the firmware); a level line with a thread must be
/// [`IrqFlags::ONESHOT`] or have a hard handler that quiets the device (else it would storm),
/// as Linux insists. With [`IrqFlags::SHARED`] the line may already have other users that
/// share it; each handler must then return [`IrqReturn::None`] when its device did not
/// interrupt. Returns the vector. Thread context (it may start a thread).
pub fn request_threaded_irq(
    irq: u32,
    handler: Option<IrqHandler>,
    thread_fn: Option<IrqHandler>,
    flags: IrqFlags,
    name: &'static str,
    dev_id: DevId,
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
    let thread_cpu = may_join(&LINES.lock(), irq, flags, trigger, dev_id)?;
    let action = Arc::new(Action {
        irq,
        dev_id,
        name,
        handler,
        thread_fn,
        shared: flags.contains(IrqFlags::SHARED),
        mask_until_thread_done: thread_fn.is_some() && oneshot && trigger.level,
        oneshot_pending: AtomicBool::new(false),
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
        // The thread starts where the line's interrupts go (CPU 0 for a new line, below).
        let id = crate::kernel::sched::kthread_spawn(
            &alloc::format!("irq/{irq}-{name}"),
            lull_sched::SchedClass::RealTime(lull_sched::RtPriority::IRQ_THREAD),
            lull_sched::CpuSet::single(thread_cpu),
            move || line_thread(for_thread),
        )
        .map_err(|error| IrqError::Thread(alloc::format!("{error}")))?;
        thread.id.store(id, Ordering::Release);
    }
    {
        let mut lines = LINES.lock();
        if let Err(error) = may_join(&lines, irq, flags, trigger, dev_id) {
            // A tick device took the line meanwhile (`route_gsi` does not take `REQUEST`).
            drop(lines);
            stop_thread(&action);
            return Err(error);
        }
        if let Some(line) = lines.get_mut(&irq) {
            // A shared line, already routed: one more action runs for its interrupts.
            if let Owner::Actions(chain) = &mut line.owner {
                chain.push(Arc::clone(&action));
            }
            let vector = line.vector;
            drop(lines);
            crate::pr_debug!("irq: {name} shares IRQ {irq} (vector {vector:#x})");
            return Ok(vector);
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
        if let Some((count, unhandled)) = NOTED.get(irq as usize) {
            count.store(0, Ordering::Relaxed);
            unhandled.store(0, Ordering::Relaxed);
        }
        lines.insert(
            irq,
            Line {
                vector,
                name,
                trigger,
                owner: Owner::Actions(alloc::vec![Arc::clone(&action)]),
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
/// [`IrqFlags::FORCE_THREAD`]) it runs in the action's thread instead, one-shot (Linux's
/// `irq_setup_forced_threading`), unless [`IrqFlags::NO_THREAD`]. Returns the vector.
pub fn request_irq(
    irq: u32,
    handler: IrqHandler,
    flags: IrqFlags,
    name: &'static str,
    dev_id: DevId,
) -> Result<u8, IrqError> {
    let forced = !flags.contains(IrqFlags::NO_THREAD)
        && (flags.contains(IrqFlags::FORCE_THREAD) || force_threading());
    if forced {
        request_threaded_irq(
            irq,
            None,
            Some(handler),
            flags | IrqFlags::ONESHOT,
            name,
            dev_id,
        )
    } else {
        request_threaded_irq(irq, Some(handler), None, flags, name, dev_id)
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

/// Linux's `free_irq`: removes the action `dev_id` requested on line `irq`. The last action
/// takes the line with it: masked and dropped from `/proc/interrupts`. Then waits for the
/// action's hard handler running on another CPU and for its thread (including a run in
/// progress or pending: `synchronize_irq`), and stops the thread. The line may then be
/// requested again. Thread context, not from the action's own thread.
pub fn free_irq(irq: u32, dev_id: DevId) -> Result<(), IrqError> {
    let _request = REQUEST.lock();
    let (action, vector, is_msi, last) = {
        let mut lines = LINES.lock();
        let Some(line) = lines.get_mut(&irq) else {
            return Err(IrqError::NotRequested(irq));
        };
        let (vector, is_msi) = (line.vector, line.msi);
        let Owner::Actions(chain) = &mut line.owner else {
            return Err(IrqError::NotRequested(irq));
        };
        let Some(position) = chain.iter().position(|action| action.dev_id == dev_id) else {
            return Err(IrqError::NotRequested(irq));
        };
        if let Some(thread) = &chain[position].thread {
            let id = thread.id.load(Ordering::Acquire);
            if id != 0 && crate::kernel::sched::current() == Some(id) {
                return Err(IrqError::FreedFromOwnThread(irq));
            }
        }
        let action = chain.remove(position);
        let last = chain.is_empty();
        if last {
            lines.remove(&irq);
            if !is_msi {
                with_ioapic(|ioapic| ioapic.set_masked(irq, true));
            }
        }
        (action, vector, is_msi, last)
    };
    if last {
        if is_msi {
            // The vector's IDT entry is shared by every MSI IRQ; masking stops this one.
            msi::set_masked(irq, true);
        } else {
            interrupts::clear_handler(vector);
        }
    }
    // synchronize_irq: a hard handler that looked the line up before the action left it.
    while action.hard_running.load(Ordering::Acquire) != 0 {
        core::hint::spin_loop();
    }
    stop_thread(&action);
    if !last && action.mask_until_thread_done {
        // Its thread's last run found the action gone and left the line masked for it.
        action.oneshot_pending.store(false, Ordering::Release);
        unmask_if_no_thread_owed(&LINES.lock(), irq);
    }
    crate::pr_debug!("irq: freed IRQ {irq} ({})", action.name);
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
    let threads: Vec<u64> = match &line.owner {
        Owner::Actions(chain) => chain
            .iter()
            .filter_map(|action| action.thread.as_ref())
            .map(|thread| thread.id.load(Ordering::Acquire))
            .collect(),
        Owner::TickDevice => Vec::new(),
    };
    drop(lines);
    // The line's threads follow the interrupt to its CPU (Linux's irq_thread_check_affinity),
    // so the hard half and the threads share a cache.
    for id in threads.into_iter().filter(|&id| id != 0) {
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
    let lines: Vec<(u32, u8, bool, String, bool)> = LINES
        .lock()
        .iter()
        .map(|(&irq, line)| {
            let names = line_names(line);
            (irq, line.vector, line.trigger.level, names, line.msi)
        })
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
/// How line `irq` signals, if it is routed (tests).
pub fn line_trigger(irq: u32) -> Option<Trigger> {
    LINES.lock().get(&irq).map(|line| line.trigger)
}

#[cfg(feature = "ktest")]
/// The task id of the thread of line `irq`'s first action (tests).
pub fn thread_id(irq: u32) -> Option<u64> {
    match &LINES.lock().get(&irq)?.owner {
        Owner::Actions(chain) => chain[0]
            .thread
            .as_ref()
            .map(|thread| thread.id.load(Ordering::Acquire)),
        Owner::TickDevice => None,
    }
}
