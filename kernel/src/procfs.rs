//! A small in-kernel procfs: named files whose contents are generated on read, some writable.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::sync::IrqSafeLock;

/// Generates a file's contents.
pub type ReadFn = fn() -> String;
/// Applies a value written to a file; the error is shown to the user.
pub type WriteFn = fn(&str) -> Result<(), String>;

/// One procfs file.
#[derive(Clone, Copy)]
pub struct ProcFile {
    pub path: &'static str,
    pub read: Option<ReadFn>,
    pub write: Option<WriteFn>,
}

static FILES: IrqSafeLock<Vec<ProcFile>> = IrqSafeLock::new(Vec::new());

/// Errors from procfs operations, worded for the shell.
#[derive(Debug, PartialEq, Eq)]
pub enum ProcError {
    NotFound,
    NotReadable,
    NotWritable,
    Invalid(String),
}

impl core::fmt::Display for ProcError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProcError::NotFound => f.write_str("No such file or directory"),
            ProcError::NotReadable => f.write_str("Permission denied (write-only file)"),
            ProcError::NotWritable => f.write_str("Permission denied (read-only file)"),
            ProcError::Invalid(why) => write!(f, "Invalid argument: {why}"),
        }
    }
}

/// Registers a file (replacing one with the same path). Subsystems call this at init.
pub fn register(file: ProcFile) {
    let mut files = FILES.lock();
    files.retain(|existing| existing.path != file.path);
    files.push(file);
    files.sort_by(|a, b| a.path.cmp(b.path));
}

fn find(path: &str) -> Option<ProcFile> {
    let path = path.trim_end_matches('/');
    FILES.lock().iter().find(|file| file.path == path).copied()
}

/// Reads a file.
pub fn read(path: &str) -> Result<String, ProcError> {
    let file = find(path).ok_or(ProcError::NotFound)?;
    let read = file.read.ok_or(ProcError::NotReadable)?;
    Ok(read())
}

/// Writes a value to a file.
pub fn write(path: &str, value: &str) -> Result<(), ProcError> {
    let file = find(path).ok_or(ProcError::NotFound)?;
    let write = file.write.ok_or(ProcError::NotWritable)?;
    write(value).map_err(ProcError::Invalid)
}

/// Lists the files under `directory` (one level, like `ls`).
pub fn list(directory: &str) -> Result<String, ProcError> {
    let prefix = alloc::format!("{}/", directory.trim_end_matches('/'));
    let files = FILES.lock();
    let mut names: Vec<&str> = files
        .iter()
        .filter_map(|file| file.path.strip_prefix(prefix.as_str()))
        .map(|rest| rest.split('/').next().unwrap_or(rest))
        .collect();
    names.dedup();
    if names.is_empty() {
        return Err(ProcError::NotFound);
    }
    let mut out = String::new();
    for name in names {
        let _ = writeln!(out, "{name}");
    }
    Ok(out)
}
