//! Lull's gpiolib core: GPIO controllers behind one trait, a registry that numbers them as Linux
//! does, descriptors that give each line one owner, and the text views people use to look at
//! lines (`/sys/kernel/debug/gpio`, libgpiod's tools).
//!
//! Why a portable crate: the rules gpiolib enforces — a second request of a line fails and says
//! who holds it, a descriptor outliving its chip gets an error instead of a call into a removed
//! driver, an active-low line inverts logical values but not raw ones, events keep their order
//! and count what they drop — are all bookkeeping, and are tested here on the host against fake
//! chips. The kernel supplies the chips (virtio-gpio, the parallel port), the wait queues that
//! sleep on [`GpioDesc::set_waker`], and the shell and debugfs files that print the strings.
//!
//! # Contract
//!
//! * A chip driver implements [`GpioChip`] and registers it with [`GpioRegistry::add_chip`],
//!   getting `gpiochipN` (lowest free N) and a global base (its own, or the lowest free range
//!   from 512). Its interrupt handler reports edges and levels through the [`EventSink`] of its
//!   [`ChipHandle`]. [`GpioRegistry::remove_chip`] unregisters it; descriptors still held then
//!   answer [`GpioError::ChipGone`] and never call the chip again.
//! * Consumers request lines by name ([`GpioRegistry::get_by_name`]), by chip and offset
//!   ([`GpioRegistry::get`]), by global number, or several of one chip at once
//!   ([`GpioRegistry::get_array`], all or none). A line has at most one holder; a second request
//!   fails with [`GpioError::Busy`] naming the first consumer. Dropping the [`GpioDesc`] releases
//!   the line; as a [`ManagedResource`](lull_devres::ManagedResource) it can sit on a device's
//!   devres list (`devm_gpiod_get`).
//! * Values: `get_value`/`set_value` are logical (active-low inverts), `*_raw_*` are the wire.
//!   Setting a value on a line that is not an output is refused.
//! * Events: [`GpioDesc::request_events`] with a logical trigger; [`GpioDesc::read_event`]
//!   never blocks, [`GpioDesc::set_waker`] arranges a wake-up. Level triggers deliver one event
//!   and stay masked until [`GpioDesc::ack_level`].
//!
//! ```
//! use lull_gpio::{GpioRegistry, LineConfig, testing::FakeChip};
//!
//! let registry = GpioRegistry::new();
//! let chip = FakeChip::new("virtio-gpio", &["amp-enable", "button"]);
//! registry.add_chip(Box::new(chip.clone()), None).unwrap();
//!
//! let amp = registry.get_by_name("amp-enable", "q35-hda", LineConfig::output(true)).unwrap();
//! assert!(chip.level(0));
//! let error = registry.get("gpiochip0", 0, "gpioset", LineConfig::as_is()).unwrap_err();
//! assert_eq!(error.to_string(), "line 0 of gpiochip0 is busy: requested by \"q35-hda\"");
//! drop(amp);
//! assert!(registry.get("gpiochip0", 0, "gpioset", LineConfig::as_is()).is_ok());
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod chip;
mod debugfs;
mod desc;
mod error;
mod event;
#[cfg(test)]
mod model_tests;
pub mod parport;
mod registry;
pub mod testing;
#[cfg(test)]
mod tests;
pub mod tools;

pub use chip::{
    bitmap_assign, bitmap_iter, bitmap_test, bitmap_words, ChipError, Direction, GpioChip, IrqType,
};
pub use debugfs::debugfs_gpio;
pub use desc::{GpioDesc, GpioDescArray, InitialDirection, LineConfig};
pub use error::GpioError;
pub use event::{EventKind, LineEvent, RawEvent, DEFAULT_EVENT_QUEUE_LEN};
pub use registry::{
    ChipHandle, ChipInfo, ChipRegistration, EventSink, GpioRegistry, LineInfo, RemovedChip,
    GPIO_DYNAMIC_BASE,
};
