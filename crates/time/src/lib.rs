//! Lull's time subsystem logic, layered like Linux `kernel/time/` and tested on the host.
//!
//! Layers, bottom up (each only uses the ones below it; glue between them is `pub(crate)`):
//!
//! 1. [`clocksource`]: free-running counters (TSC, HPET, ACPI PM) behind the
//!    [`ClockSource`](clocksource::ClockSource) trait; cycle→ns factors, selection, watchdog.
//! 2. [`timekeeping`]: monotonic and realtime nanoseconds accumulated from a clock source.
//! 3. [`clockevents`]: programmable interrupt sources (LAPIC, HPET, PIT) behind the
//!    [`ClockEventDevice`](clockevents::ClockEventDevice) trait, with an explicit state machine.
//! 4. [`hrtimer`]: per-CPU hrtimer bases, one ordered queue per clock; the earliest expiry
//!    programs the device.
//! 5. [`tick`]: jiffies, the per-CPU tick (an hrtimer), tickless idle, and the coarse timer
//!    wheel run from the tick; [`tick::PerCpuTime`] bundles one CPU's time state.
//! 6. Views: [`timer_list`] (`/proc/timer_list`) and [`timer_stats`] (`/proc/timer_stats`).
//!
//! The kernel supplies the hardware by implementing the two traits; everything else is here,
//! `no_std` + `alloc`, free of `unsafe`, and tested with fake hardware.
//!
//! # Wiring (what the kernel does)
//!
//! ```text
//! boot:     registry.register(&tsc, true); registry.register(&hpet, false) ...
//!           id = registry.select(cmdline "clocksource=")   // print Err's Display, use fallback
//!           timekeeper = Timekeeper::new(id, registry.get(id), tsc.read())
//!           jiffies = JiffiesClock::new(INITIAL, 0, HZ)           // behind a global lock
//!           per CPU: PerCpuTime::new(cpu, lapic, config, &jiffies)?.start(now, &mut jiffies)
//! timer IRQ: percpu.interrupt(now, &mut jiffies, &mut ctx)       // ctx: TickContext
//! idle loop: percpu.idle_enter(now, &mut jiffies); hlt; percpu.idle_exit(now, &mut jiffies, &mut ctx)
//! every 0.5 s: watchdog.check(&mut registry, hpet.read(), tsc_id, tsc.read())
//! ```
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod clockevents;
pub mod clocksource;
pub mod hrtimer;
pub mod tick;
pub mod timekeeping;
pub mod timer_list;
pub mod timer_stats;

#[cfg(test)]
#[allow(dead_code, reason = "fakes shared by tests of every layer")]
mod test_support;
