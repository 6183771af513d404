//! Power management: an orderly shutdown through a notifier chain that subsystems join (Linux's
//! `register_reboot_notifier` / PM notifiers), and shutdown requests from devices.
//!
//! A device (the ACPI power button) asks for a shutdown from interrupt context with
//! `request_shutdown`; that only records the request and tells the atomic chain (Linux's
//! `atomic_notifier_chain`), whose listeners must not sleep. The shutdown itself runs in
//! thread context (the shell notices the request), so the blocking chain's notifiers may sleep.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::kernel::locking::{IrqSafeLock, RwLock};
use crate::printk;

/// Events a notifier is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PmEvent {
    /// The machine is about to power off (S5).
    PowerOff,
    /// A device asked for an orderly shutdown (the power button); told to the atomic chain.
    ShutdownRequested,
}

/// A notifier: name (printed), priority (higher runs first), callback.
#[derive(Clone, Copy)]
pub struct Notifier {
    pub name: &'static str,
    pub priority: i32,
    pub call: fn(PmEvent),
}

/// The chain (Linux's blocking notifier chain, which is also behind an rw_semaphore): read
/// while notifying, so a notifier may sleep; written when a subsystem joins. Thread context or
/// boot only, never an interrupt handler.
static NOTIFIERS: RwLock<Vec<Notifier>> = RwLock::named("pm::NOTIFIERS", Vec::new());
static SHUTDOWN_REQUESTED: AtomicBool = AtomicBool::new(false);
/// The atomic chain: listeners called from interrupt context (a leaf lock; they must not sleep
/// or take a lock that is held with interrupts on).
static ATOMIC_NOTIFIERS: IrqSafeLock<Vec<Notifier>> = IrqSafeLock::new(Vec::new());

/// Joins the notifier chain.
pub fn register_notifier(notifier: Notifier) {
    let mut notifiers = NOTIFIERS.write();
    notifiers.push(notifier);
    notifiers.sort_by_key(|n| core::cmp::Reverse(n.priority));
}

/// Joins the atomic chain (listeners run in interrupt context and must not sleep).
pub fn register_atomic_notifier(notifier: Notifier) {
    let mut notifiers = ATOMIC_NOTIFIERS.lock();
    notifiers.push(notifier);
    notifiers.sort_by_key(|n| core::cmp::Reverse(n.priority));
}

/// Records a device's request for an orderly shutdown and tells the atomic chain. Callable from
/// hard-IRQ context.
pub fn request_shutdown() {
    SHUTDOWN_REQUESTED.store(true, Ordering::Release);
    let notifiers = ATOMIC_NOTIFIERS.lock();
    for notifier in notifiers.iter() {
        (notifier.call)(PmEvent::ShutdownRequested);
    }
}

/// Whether a shutdown was requested (power button) and not yet carried out.
pub fn shutdown_requested() -> bool {
    SHUTDOWN_REQUESTED.load(Ordering::Acquire)
}

/// Orderly power-off: runs every notifier (printing each), then enters ACPI S5.
pub fn power_off() -> ! {
    // `\_S5` comes with the AML namespace, which a poweroff right after boot may precede.
    crate::drivers::acpi::load_namespace();
    printk!("pm: powering off");
    let notifiers: Vec<Notifier> = NOTIFIERS.read().clone();
    for notifier in notifiers {
        printk!("pm: notifying {} (power off)", notifier.name);
        (notifier.call)(PmEvent::PowerOff);
    }
    crate::power_off()
}
