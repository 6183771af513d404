//! The idle path: what a CPU does when there is nothing to run.
//!
//! Today: halt with interrupts enabled atomically (`sti; hlt`), so the next interrupt — a key
//! press, a timer — wakes it. No periodic tick runs, so an idle Lull takes no interrupts at all.

use crate::arch::cpu;

/// Sleeps until the next interrupt. Called with interrupts disabled; returns with them enabled.
pub fn idle_once() {
    cpu::enable_interrupts_and_halt();
}
