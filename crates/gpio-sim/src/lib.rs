//! A simulated GPIO chip for virtio-gpio transports on the host: the device state machine
//! (lull-virtio-gpio) behind a lock, the event buffers it holds, the completions the control
//! channel produced, the control channel's line protocol, and the timestamped log.
//!
//! Shared by lull-gpio-backend (vhost-user, under QEMU) and lull-vmm's virtio-mmio device, so
//! a test talks to either with the same commands and reads the same log lines.

#![forbid(unsafe_code)]

pub mod control;
pub mod gpio;
pub mod log;
pub mod socket;

/// The default lines: what a small audio board might expose, so a log reads naturally.
pub const DEFAULT_LINES: [&str; 8] = [
    "amp-enable",
    "button",
    "led0",
    "led1",
    "headphone-detect",
    "mute",
    "reset",
    "irq",
];
