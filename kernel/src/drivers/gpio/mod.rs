//! gpiolib in the kernel: one [`GpioRegistry`] for every GPIO controller, the controllers'
//! drivers, `/sys/kernel/debug/gpio`, and libgpiod's tools as shell commands.
//!
//! The bookkeeping (numbering, one owner per line, active-low, events) is `lull-gpio`'s, tested
//! on the host; here are the hardware and the kernel's side of it. Controllers:
//! - [`parport`]: the PC parallel port (`PNP0400` on the `acpi` bus), 17 lines.
//! - [`virtio`]: virtio-gpio on either virtio transport, with line interrupts.

pub mod parport;
pub mod virtio;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use lull_gpio::tools::{self, HoldMode};
use lull_gpio::GpioRegistry;

use crate::pr_warn;

/// Every registered GPIO chip (Linux's `gpio_devices`).
pub static GPIO: GpioRegistry = GpioRegistry::new();

/// Registers the controllers' drivers and the debugfs listing. Thread context, from the
/// boot-time probe (before the buses' devices are matched against drivers registered later).
pub fn init() {
    crate::fs::procfs::register(crate::fs::procfs::ProcFile {
        path: "/sys/kernel/debug/gpio",
        read: Some(|| lull_gpio::debugfs_gpio(&GPIO)),
        write: None,
    });
    parport::register();
    virtio::register();
}

/// `gpiodetect`, `gpioinfo`, `gpioget`, `gpioset`, `gpiofind` with libgpiod v1's syntax: `args`
/// starts with the tool's name. Returns what the tool prints, or its error (`gpioget: …`).
pub fn cmd_tool(args: &[&str]) -> Result<String, String> {
    let (tool, rest) = args.split_first().ok_or("gpio: no tool named")?;
    // Controllers appear during the boot-time probe, which runs beside the shell.
    crate::drivers::wait_for_device_probe();
    let text = match *tool {
        "gpiodetect" => {
            if let Some(extra) = rest.first() {
                return Err(alloc::format!(
                    "gpiodetect: unrecognized argument '{extra}'"
                ));
            }
            tools::gpiodetect(&GPIO)
        }
        "gpioinfo" => tools::gpioinfo(&GPIO, rest).map_err(|e| e.to_string())?,
        "gpioget" => tools::gpioget(&GPIO, rest).map_err(|e| e.to_string())?,
        "gpiofind" => tools::gpiofind(&GPIO, rest).map_err(|e| e.to_string())?,
        "gpioset" => return gpioset(rest),
        other => return Err(alloc::format!("gpio: unknown tool {other}")),
    };
    Ok(text)
}

/// `gpioset`: the lines are set on return from the tool; they are held for `-m time` (in the
/// background with `-b`) and released at once in the default `exit` mode. Linux keeps a
/// released output at its level, and so do Lull's chips.
fn gpioset(args: &[&str]) -> Result<String, String> {
    let outcome = tools::gpioset(&GPIO, args).map_err(|e| e.to_string())?;
    match outcome.hold {
        HoldMode::Exit => drop(outcome.lines),
        HoldMode::Time { nanoseconds } => {
            let lines = outcome.lines;
            if outcome.background {
                let spawned = crate::kernel::sched::kthread_spawn(
                    "gpioset",
                    lull_sched::SchedClass::NORMAL,
                    lull_sched::CpuSet::ALL,
                    move || {
                        crate::kernel::time::sleep_ns(nanoseconds);
                        drop(lines);
                    },
                );
                if let Err(error) = spawned {
                    return Err(alloc::format!(
                        "gpioset: cannot start the holder: {error:?}"
                    ));
                }
            } else {
                crate::kernel::time::sleep_ns(nanoseconds);
                drop(lines);
            }
        }
        HoldMode::Wait | HoldMode::Signal => {
            return Err(String::from(
                "gpioset: this shell has no signals or input to wait for; use -m time -s SEC",
            ))
        }
    }
    Ok(String::new())
}

/// Wakes a wait queue when a GPIO event is queued (the waker gpiolib keeps for a line).
struct QueueWaker {
    queue: &'static crate::kernel::sched::WaitQueue,
    woken: core::sync::atomic::AtomicBool,
}

impl alloc::task::Wake for QueueWaker {
    fn wake(self: alloc::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &alloc::sync::Arc<Self>) {
        self.woken
            .store(true, core::sync::atomic::Ordering::Release);
        self.queue.wake_all();
    }
}

/// `gpiomon [-l] [-n NUM] [-s] [-r] [-f] [-F FMT] CHIP OFFSET...`: requests the lines for edge
/// events and prints each one (libgpiod v1's format) as it arrives, sleeping on `queue` in
/// between (woken by the chip's interrupt path, through gpiolib's waker). Ends after `-n`
/// events, or when `stop()` says so (the shell: a key was pressed); `queue` must also be woken
/// for whatever `stop` watches. Thread context.
pub fn gpiomon(
    args: &[&str],
    queue: &'static crate::kernel::sched::WaitQueue,
    mut stop: impl FnMut() -> bool,
    mut print: impl FnMut(&str),
) -> Result<(), String> {
    crate::drivers::wait_for_device_probe();
    let mut monitor = tools::gpiomon(&GPIO, args).map_err(|e| e.to_string())?;
    let state = alloc::sync::Arc::new(QueueWaker {
        queue,
        woken: core::sync::atomic::AtomicBool::new(false),
    });
    let waker = core::task::Waker::from(alloc::sync::Arc::clone(&state));
    loop {
        let output = monitor.poll().map_err(|e| alloc::format!("gpiomon: {e}"))?;
        print(&output.text);
        if output.finished {
            return Ok(());
        }
        // Woken at once if an event came in since the poll.
        monitor
            .set_waker(&waker)
            .map_err(|e| alloc::format!("gpiomon: {e}"))?;
        let mut stopped = false;
        queue.wait_until(|| {
            stopped = stop();
            stopped || state.woken.load(core::sync::atomic::Ordering::Acquire)
        });
        state
            .woken
            .store(false, core::sync::atomic::Ordering::Release);
        if stopped {
            return Ok(());
        }
    }
}

/// The chips' names, for tests and listings.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn chip_labels() -> Vec<String> {
    GPIO.chips().into_iter().map(|chip| chip.label).collect()
}

/// Logs a chip that could not be registered.
fn registration_failed(what: &str, error: &dyn core::fmt::Display) {
    pr_warn!("gpio: {what}: {error}");
}
