//! The arch boundary: the one module that exports architecture-specific names.
//! Everything outside `arch/` is portable and written without `unsafe`.

mod x86_64;

pub use self::x86_64::*;
