//! lull-gpio-backend: a vhost-user-gpio back-end with simulated lines, for testing virtio-gpio
//! drivers under QEMU (`-device vhost-user-gpio-pci`).
//!
//! The device logic is lull-virtio-gpio's and the simulated chip (control channel, log) is
//! lull-gpio-sim's, both shared with lull-vmm's virtio-mmio device; this crate is the
//! transport around them (vhost-user, vrings over the guest memory QEMU shares). Through the
//! control channel a test plays the outside world: it drives input levels, and the edges it
//! makes complete the guest's event buffers.

#![forbid(unsafe_code)]

pub mod backend;
pub mod cli;
pub use lull_gpio_sim::{control, gpio, log};
