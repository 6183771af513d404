//! The core of the kernel, laid out as Linux's `kernel/`: scheduling, time, interrupts,
//! locking, CPUs, power management, the command line and the kernel log.

pub mod async_pf;
pub mod ioports;
pub mod irq;
pub mod locking;
pub mod params;
pub mod paravirt;
pub mod pm;
pub mod printk;
pub mod sched;
pub mod smp;
pub mod time;
