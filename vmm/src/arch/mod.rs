//! The one architecture boundary: everything x86_64-specific is reached through this module.
#[cfg(not(target_arch = "x86_64"))]
compile_error!("lull-vmm hosts x86_64 guests on x86_64 hosts only");

mod x86_64;

pub use self::x86_64::*;
