//! Device interrupt lines: routing ISA/GSI lines through the IOAPIC to handlers, threaded
//! handlers (`request_threaded_irq`, `threadirqs`), and the `/proc/interrupts` view.
//!
//! Locks: `LINES`, `IOAPIC` and `THREADED` are leaves (a threaded line's wait queue is woken
//! after `THREADED` is released).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::arch::acpi::AcpiInfo;
use crate::arch::{apic, interrupts};
use crate::sync::IrqSafeLock;

/// Interrupt parameters.
pub const PARAMS: &[lull_cmdline::ParamSpec] = &[lull_cmdline::ParamSpec {
    name: "threadirqs",
    kind: lull_cmdline::Kind::Bool,
    default: "off",
    help: "Run every handler requested with request_irq in a thread (timer and IPIs stay hard).",
}];

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
/// What a primary (hard-IRQ) handler did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqReturn {
    /// The interrupt was not from this device.
    None,
    /// Handled completely in hard-IRQ context.
    Handled,
    /// Wake the line's thread to finish the work.
    WakeThread,
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
/// A primary handler: hard-IRQ context, interrupts disabled; must not sleep or allocate.
pub type PrimaryHandler = fn(vector: u8) -> IrqReturn;
#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
/// A threaded handler: runs in the line's kernel thread (RT FIFO 50), may sleep.
pub type ThreadHandler = fn(vector: u8);

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
/// A line with a handler thread.
struct ThreadedLine {
    gsi: u32,
    primary: Option<PrimaryHandler>,
    thread_fn: ThreadHandler,
    /// The line stays masked from the primary handler until the thread finished.
    oneshot: bool,
    pending: core::sync::atomic::AtomicBool,
    wait: crate::sched::WaitQueue,
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
static THREADED: IrqSafeLock<alloc::collections::BTreeMap<u8, alloc::sync::Arc<ThreadedLine>>> =
    IrqSafeLock::new(alloc::collections::BTreeMap::new());

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
/// Whether `threadirqs` was given.
pub fn force_threading() -> bool {
    crate::params::parsed()
        .get_bool("threadirqs")
        .unwrap_or(false)
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
/// Hard-IRQ entry of every threaded line: runs the primary handler and wakes the thread.
fn threaded_hard_irq(vector: u8) {
    let Some(line) = THREADED.lock().get(&vector).cloned() else {
        return;
    };
    let verdict = match line.primary {
        Some(primary) => primary(vector),
        None => IrqReturn::WakeThread,
    };
    if verdict == IrqReturn::WakeThread {
        if line.oneshot {
            if let Some(ioapic) = *IOAPIC.lock() {
                ioapic.set_masked(line.gsi, true);
            }
        }
        line.pending
            .store(true, core::sync::atomic::Ordering::Release);
        line.wait.wake_all();
    }
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
/// Why a line could not be requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    NoIoApic,
    GsiTooLarge(u32),
    Thread(String),
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
impl core::fmt::Display for RequestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RequestError::NoIoApic => write!(f, "no IOAPIC"),
            RequestError::GsiTooLarge(gsi) => write!(f, "GSI {gsi} has no vector"),
            RequestError::Thread(why) => write!(f, "cannot start the handler thread: {why}"),
        }
    }
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
/// Linux's `request_threaded_irq`: routes edge-triggered `gsi` to a vector whose hard handler
/// runs `primary` (none: always wake the thread) and, when it returns
/// [`IrqReturn::WakeThread`], wakes the line's thread `irq/GSI-name` (RT FIFO 50) to run
/// `thread_fn`. With `oneshot`, the line stays masked until `thread_fn` returned.
/// Returns the vector.
pub fn request_threaded_irq(
    gsi: u32,
    name: &'static str,
    primary: Option<PrimaryHandler>,
    thread_fn: ThreadHandler,
    oneshot: bool,
) -> Result<u8, RequestError> {
    let ioapic = (*IOAPIC.lock()).ok_or(RequestError::NoIoApic)?;
    let vector = u8::try_from(interrupts::DEVICE_VECTOR_BASE as u32 + gsi)
        .map_err(|_| RequestError::GsiTooLarge(gsi))?;
    let line = alloc::sync::Arc::new(ThreadedLine {
        gsi,
        primary,
        thread_fn,
        oneshot,
        pending: core::sync::atomic::AtomicBool::new(false),
        wait: crate::sched::WaitQueue::new(),
    });
    let for_thread = alloc::sync::Arc::clone(&line);
    let thread_name = alloc::format!("irq/{gsi}-{name}");
    crate::sched::kthread_spawn(
        &thread_name,
        lull_sched::SchedClass::RealTime(lull_sched::RtPriority::IRQ_THREAD),
        lull_sched::CpuSet::ALL,
        move || loop {
            let line = &for_thread;
            line.wait.wait_until(|| {
                line.pending
                    .swap(false, core::sync::atomic::Ordering::AcqRel)
            });
            (line.thread_fn)(vector);
            if line.oneshot {
                if let Some(ioapic) = *IOAPIC.lock() {
                    ioapic.set_masked(line.gsi, false);
                }
            }
        },
    )
    .map_err(|error| RequestError::Thread(alloc::format!("{error}")))?;
    THREADED.lock().insert(vector, line);
    interrupts::set_handler(vector, threaded_hard_irq);
    route_gsi(gsi, vector, name, false, false);
    let _ = ioapic;
    crate::printk!(
        "irq: {name} (GSI {gsi}) -> vector {vector:#x}, threaded{}",
        if oneshot { ", oneshot" } else { "" }
    );
    Ok(vector)
}

#[cfg_attr(not(feature = "ktest"), allow(dead_code))] // no non-test user yet
/// Linux's `request_irq` for edge-triggered `gsi`: `handler` runs in hard-IRQ context, or,
/// with `threadirqs` (or `force_thread`), in the line's thread with the line masked meanwhile
/// (forced threading, as Linux's `irq_setup_forced_threading`). Returns the vector.
pub fn request_irq(
    gsi: u32,
    name: &'static str,
    handler: interrupts::IrqHandler,
    force_thread: bool,
) -> Result<u8, RequestError> {
    if force_thread || force_threading() {
        return request_threaded_irq(gsi, name, None, handler, true);
    }
    let vector = u8::try_from(interrupts::DEVICE_VECTOR_BASE as u32 + gsi)
        .map_err(|_| RequestError::GsiTooLarge(gsi))?;
    if IOAPIC.lock().is_none() {
        return Err(RequestError::NoIoApic);
    }
    interrupts::set_handler(vector, handler);
    route_gsi(gsi, vector, name, false, false);
    Ok(vector)
}

/// A requested line, for `/proc/interrupts`.
#[derive(Clone, Copy)]
struct Line {
    vector: u8,
    gsi: u32,
    level: bool,
    name: &'static str,
}

/// Requested lines (a leaf lock).
static LINES: IrqSafeLock<Vec<Line>> = IrqSafeLock::new(Vec::new());
static IOAPIC: IrqSafeLock<Option<apic::IoApic>> = IrqSafeLock::new(None);

/// Enables the local APIC and masks every IOAPIC input. Called once at boot.
pub fn init(acpi: Option<&AcpiInfo>) {
    apic::init_local(interrupts::SPURIOUS_VECTOR, true);
    let Some(entry) = acpi.and_then(|info| info.io_apics.first()) else {
        crate::pr_warn!("irq: no IOAPIC in the MADT; device interrupts are unavailable");
        return;
    };
    let ioapic = apic::IoApic {
        base: entry.address,
        gsi_base: entry.gsi_base,
    };
    ioapic.mask_all();
    *IOAPIC.lock() = Some(ioapic);
    crate::pm::register_notifier(crate::pm::Notifier {
        name: "irq",
        priority: -10,
        call: pm_notifier,
    });
}

/// Routes ISA interrupt `isa_irq` (honouring the MADT's source overrides) to `handler` on this
/// CPU. The handler runs in hard-IRQ context with interrupts disabled and must not allocate.
pub fn request_isa_irq(
    acpi: Option<&AcpiInfo>,
    isa_irq: u8,
    name: &'static str,
    handler: interrupts::IrqHandler,
) -> Result<u8, &'static str> {
    let ioapic = (*IOAPIC.lock()).ok_or("no IOAPIC")?;
    let (gsi, level, active_low) = acpi
        .and_then(|info| info.overrides.iter().find(|o| o.isa_irq == isa_irq))
        .map(|o| (o.gsi, o.level_triggered, o.active_low))
        .unwrap_or((isa_irq as u32, false, false));
    let vector =
        u8::try_from(interrupts::DEVICE_VECTOR_BASE as u32 + gsi).map_err(|_| "GSI too large")?;
    interrupts::set_handler(vector, handler);
    LINES.lock().push(Line {
        vector,
        gsi,
        level,
        name,
    });
    ioapic.route(gsi, vector, apic::local_apic_id(), level, active_low);
    crate::printk!("irq: {name} (IRQ {isa_irq}) -> GSI {gsi} -> vector {vector:#x}");
    Ok(vector)
}

/// Routes global system interrupt `gsi` to `vector` on this CPU (handler installed by the
/// caller with `interrupts::set_handler`).
pub fn route_gsi(gsi: u32, vector: u8, name: &'static str, level: bool, active_low: bool) {
    let Some(ioapic) = *IOAPIC.lock() else { return };
    let mut lines = LINES.lock();
    lines.retain(|line| line.gsi != gsi);
    lines.push(Line {
        vector,
        gsi,
        level,
        name,
    });
    drop(lines);
    ioapic.route(gsi, vector, apic::local_apic_id(), level, active_low);
}

/// PM notifier: masks every device line before power-off.
fn pm_notifier(_event: crate::pm::PmEvent) {
    if let Some(ioapic) = *IOAPIC.lock() {
        ioapic.mask_all();
    }
}

/// Renders `/proc/interrupts`: one column per online CPU, as Linux.
pub fn proc_interrupts() -> String {
    let cpus: Vec<usize> = crate::smp::online_cpus().collect();
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
    for line in LINES.lock().iter() {
        row(
            &mut out,
            &alloc::format!("{}", line.gsi),
            &|cpu| interrupts::count_on(cpu, line.vector),
            &alloc::format!(
                "IO-APIC {:>3}-{}   {}",
                line.gsi,
                if line.level { "fasteoi" } else { "edge" },
                line.name
            ),
        );
    }
    row(
        &mut out,
        "LOC",
        &crate::time::local_timer_interrupts,
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
        &|cpu| interrupts::count_on(cpu, crate::smp::RESCHEDULE_VECTOR),
        "Rescheduling interrupts",
    );
    row(
        &mut out,
        "CAL",
        &|cpu| interrupts::count_on(cpu, crate::smp::CALL_FUNCTION_VECTOR),
        "Function call interrupts",
    );
    out
}
