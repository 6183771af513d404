//! gpiolib in the kernel: one [`GpioRegistry`] for every GPIO controller, the controllers'
//! drivers, `/sys/kernel/debug/gpio`, and libgpiod's tools as shell commands.
//!
//! The bookkeeping (numbering, one owner per line, active-low, events) is `lull-gpio`'s, tested
//! on the host; here are the hardware and the kernel's side of it. Controllers:
//! - [`parport`]: the PC parallel port (`PNP0400` on the `acpi` bus), 17 lines.

pub mod parport;

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

/// The chips' names, for tests and listings.
#[cfg_attr(not(feature = "ktest"), allow(dead_code))]
pub fn chip_labels() -> Vec<String> {
    GPIO.chips().into_iter().map(|chip| chip.label).collect()
}

/// Logs a chip that could not be registered.
fn registration_failed(what: &str, error: &dyn core::fmt::Display) {
    pr_warn!("gpio: {what}: {error}");
}
