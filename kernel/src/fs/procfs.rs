//! A small in-kernel procfs: named files whose contents are generated on read, some writable,
//! and directories whose files a subsystem generates (`/proc/irq/N/...`).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::kernel::locking::IrqSafeLock;

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

/// A directory whose entries a subsystem generates (paths below it are passed relative,
/// `""` being the directory itself).
#[derive(Clone, Copy)]
pub struct ProcDirectory {
    pub path: &'static str,
    pub read: fn(relative: &str) -> Result<String, ProcError>,
    pub write: fn(relative: &str, value: &str) -> Result<(), ProcError>,
    pub list: fn(relative: &str) -> Result<String, ProcError>,
}

/// Files registered one by one (drivers, at probe time).
static FILES: IrqSafeLock<Vec<ProcFile>> = IrqSafeLock::new(Vec::new());
/// Fixed tables of files, registered whole at boot.
static TABLES: IrqSafeLock<Vec<&'static [ProcFile]>> = IrqSafeLock::new(Vec::new());
/// Generated directories (a leaf lock, as `FILES`; neither is held while a handler runs).
static DIRECTORIES: IrqSafeLock<Vec<ProcDirectory>> = IrqSafeLock::new(Vec::new());

/// Errors from procfs operations, worded for the shell.
#[derive(Debug, PartialEq, Eq)]
pub enum ProcError {
    NotFound,
    NotReadable,
    NotWritable,
    Invalid(String),
    /// The write reached its handler and failed; the message says why (with the errno).
    Failed(String),
}

impl core::fmt::Display for ProcError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProcError::NotFound => f.write_str("No such file or directory"),
            ProcError::NotReadable => f.write_str("Permission denied (write-only file)"),
            ProcError::NotWritable => f.write_str("Permission denied (read-only file)"),
            ProcError::Invalid(why) => write!(f, "Invalid argument: {why}"),
            ProcError::Failed(why) => f.write_str(why),
        }
    }
}

/// Registers a file (replacing one registered the same way with the same path; it also
/// hides a table's file of that path).
pub fn register(file: ProcFile) {
    let mut files = FILES.lock();
    match files.iter_mut().find(|existing| existing.path == file.path) {
        Some(existing) => *existing = file,
        None => files.push(file),
    }
}

/// Registers a fixed table of files (a subsystem's files that exist from boot on). One
/// pointer is stored: under TCG, where the boot pays for every new piece of code it runs, a
/// table costs nothing per file.
pub fn register_table(files: &'static [ProcFile]) {
    TABLES.lock().push(files);
}

/// Registers a generated directory (replacing one with the same path).
pub fn register_directory(directory: ProcDirectory) {
    let mut directories = DIRECTORIES.lock();
    match directories
        .iter_mut()
        .find(|existing| existing.path == directory.path)
    {
        Some(existing) => *existing = directory,
        None => directories.push(directory),
    }
}

/// The generated directory holding `path`, and `path` relative to it.
fn find_directory(path: &str) -> Option<(ProcDirectory, String)> {
    let path = path.trim_end_matches('/');
    DIRECTORIES.lock().iter().find_map(|directory| {
        if path == directory.path {
            return Some((*directory, String::new()));
        }
        let relative = path.strip_prefix(directory.path)?.strip_prefix('/')?;
        Some((*directory, String::from(relative)))
    })
}

fn find(path: &str) -> Option<ProcFile> {
    let path = path.trim_end_matches('/');
    let registered = FILES.lock().iter().find(|file| file.path == path).copied();
    registered.or_else(|| {
        TABLES
            .lock()
            .iter()
            .find_map(|table| table.iter().find(|file| file.path == path))
            .copied()
    })
}

/// Reads a file.
pub fn read(path: &str) -> Result<String, ProcError> {
    let Some(file) = find(path) else {
        let (directory, relative) = find_directory(path).ok_or(ProcError::NotFound)?;
        return (directory.read)(&relative);
    };
    let read = file.read.ok_or(ProcError::NotReadable)?;
    Ok(read())
}

/// Writes a value to a file.
pub fn write(path: &str, value: &str) -> Result<(), ProcError> {
    let Some(file) = find(path) else {
        let (directory, relative) = find_directory(path).ok_or(ProcError::NotFound)?;
        return (directory.write)(&relative, value);
    };
    let write = file.write.ok_or(ProcError::NotWritable)?;
    write(value).map_err(ProcError::Invalid)
}

/// Lists the files under `directory` (one level, like `ls`).
pub fn list(directory: &str) -> Result<String, ProcError> {
    if let Some((generated, relative)) = find_directory(directory) {
        return (generated.list)(&relative);
    }
    let prefix = alloc::format!("{}/", directory.trim_end_matches('/'));
    let mut paths: Vec<&'static str> = FILES.lock().iter().map(|file| file.path).collect();
    for table in TABLES.lock().iter() {
        paths.extend(table.iter().map(|file| file.path));
    }
    paths.extend(DIRECTORIES.lock().iter().map(|generated| generated.path));
    let mut names: Vec<&str> = paths
        .iter()
        .filter_map(|path| path.strip_prefix(prefix.as_str()))
        .map(|rest| rest.split('/').next().unwrap_or(rest))
        .collect();
    names.sort_unstable();
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
