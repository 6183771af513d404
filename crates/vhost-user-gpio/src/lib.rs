//! lull-gpio-backend: a vhost-user-gpio back-end with simulated lines, for testing virtio-gpio
//! drivers under QEMU (`-device vhost-user-gpio-pci`).
//!
//! The device logic is lull-virtio-gpio's (shared with lull-vmm's virtio-mmio device); this
//! crate is the transport around it (vhost-user, vrings over the guest memory QEMU shares), the
//! log, and the control channel through which a test plays the outside world: it drives input
//! levels, and the edges it makes complete the guest's event buffers.

#![forbid(unsafe_code)]

pub mod backend;
pub mod cli;
pub mod control;
pub mod gpio;
pub mod log;
