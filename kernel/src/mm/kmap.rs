//! Kernel pages mapped at run time outside the identity map (the idea of Linux's fixmap and
//! kmap): a [`Kmap`] maps one page frame its holder owns (a [`super::PageBlock`]) at a free
//! address of the window, can be remapped to another owned frame, and unmaps on drop. Every
//! change that could leave a stale translation behind is followed by a TLB shootdown on every
//! CPU (`smp::flush_tlb_range`, installed here), so once a call returns no CPU still reaches
//! the old frame through the window.
//!
//! A caller that maps, remaps or drops a `Kmap` must hold no spinlock (the shootdown waits for
//! other CPUs).

#[cfg_attr(not(feature = "ktest"), allow(unused_imports))] // used by the in-kernel tests
pub use crate::arch::kmap::{read_window_u64, Kmap, WindowError};

/// Makes window changes shoot down other CPUs' translations. Called once at boot, before the
/// secondary CPUs start.
pub fn init() {
    crate::arch::kmap::set_remote_flush(crate::kernel::smp::flush_tlb_range);
}
