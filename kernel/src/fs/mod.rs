//! File-system views: the in-kernel `/proc`.

pub mod procfs;
