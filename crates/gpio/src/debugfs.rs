//! `/sys/kernel/debug/gpio`: every chip with its global range, and every requested or named line,
//! in the layout of Linux's `gpiolib_seq_show`/`gpiochip_dbg_show`.
//!
//! ```text
//! gpiochip0: GPIOs 512-519, parent: virtio/virtio1, virtio-gpio, can sleep:
//!  gpio-512 (amp-enable          |amp                 ) out hi
//!  gpio-513 (button              )
//! ```
//!
//! (Linux leaves a space after `hi`/`lo` even when no flag follows; so does this.)

use alloc::string::String;
use core::fmt::Write;

use crate::chip::Direction;
use crate::registry::{line_infos, GpioRegistry};

/// The whole listing.
pub fn debugfs_gpio(registry: &GpioRegistry) -> String {
    let mut out = String::new();
    for (index, chip) in registry.chip_list().iter().enumerate() {
        let _ = write!(
            out,
            "{}{}: GPIOs {}-{}",
            if index == 0 { "" } else { "\n" },
            chip.name(),
            chip.base,
            chip.base + chip.ngpio - 1
        );
        if let Some(parent) = &chip.parent {
            let _ = write!(out, ", parent: {parent}");
        }
        if !chip.label.is_empty() {
            let _ = write!(out, ", {}", chip.label);
        }
        if chip.can_sleep {
            out.push_str(", can sleep");
        }
        out.push_str(":\n");
        for line in line_infos(chip) {
            let gpio = chip.base + line.offset;
            let name = line.name.as_deref().unwrap_or("");
            match &line.consumer {
                Some(consumer) => {
                    let value = chip.with_chip(|c| c.get(line.offset)).map_or("?  ", |v| {
                        if v {
                            "hi"
                        } else {
                            "lo"
                        }
                    });
                    let _ = writeln!(
                        out,
                        " gpio-{:<3} ({:<20.20}|{:<20.20}) {} {} {}{}",
                        gpio,
                        name,
                        consumer,
                        if line.direction == Some(Direction::Output) {
                            "out"
                        } else {
                            "in "
                        },
                        value,
                        if line.used_as_irq { "IRQ " } else { "" },
                        if line.active_low { "ACTIVE LOW" } else { "" }
                    );
                }
                None if line.name.is_some() => {
                    let _ = writeln!(out, " gpio-{gpio:<3} ({name:<20.20})");
                }
                None => {}
            }
        }
    }
    out
}
