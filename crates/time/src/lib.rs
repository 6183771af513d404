//! Lull's time subsystem logic, layered like Linux `kernel/time/` and tested on the host.
//!
//! Layers, bottom up (each only uses the ones below it; glue between them is `pub(crate)`):
//!
//! 1. [`clocksource`]: free-running counters (TSC, HPET, ACPI PM) behind the
//!    [`ClockSource`](clocksource::ClockSource) trait; cycle→ns factors, selection, watchdog.
//! 2. [`timekeeping`]: monotonic and realtime nanoseconds accumulated from a clock source.
//! 3. [`clockevents`]: programmable interrupt sources (LAPIC, HPET, PIT) behind the
//!    [`ClockEventDevice`](clockevents::ClockEventDevice) trait, with an explicit state machine.
//!
//! The kernel supplies the hardware by implementing the two traits; everything else is here,
//! `no_std` + `alloc`, free of `unsafe`, and tested with fake hardware.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod clockevents;
pub mod clocksource;
pub mod hrtimer;
pub mod tick;
pub mod timekeeping;
pub mod timer_stats;

#[cfg(test)]
#[allow(dead_code, reason = "fakes shared by tests of every layer")]
mod test_support;
