//! The kernel command line: stored at its exact size, parsed against every subsystem's
//! declared parameters.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use lull_cmdline::{ParamSpec, Parsed, Registry};
use sha2::{Digest, Sha256};
use spin::Once;

/// The command line as the loader gave it, copied to the heap at its exact length.
static COMMAND_LINE: Once<Box<[u8]>> = Once::new();
static PARSED: Once<Parsed> = Once::new();

/// Reads `mem=` straight from boot memory, before the heap exists.
pub fn early_mem_limit(line: &[u8]) -> Option<u64> {
    let value = lull_cmdline::lookup(line, "mem")??;
    let registry_free_parse = core::str::from_utf8(value).ok()?;
    parse_size(registry_free_parse).filter(|&bytes| bytes >= 16 << 20)
}

pub fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => digits.parse::<u64>().ok()?,
    };
    value.checked_mul(1u64 << shift)
}

/// Copies the command line to the heap and parses it against `declarations`: each subsystem's
/// own `PARAMS`, declared where the subsystem lives (Linux's `early_param`/`module_param`) and
/// listed by the boot code, so a duplicate name is caught at boot. Prints one warning line for
/// unknown parameters and one per malformed value. Called once the heap is up.
pub fn init(boot_line: &[u8], declarations: &[&[ParamSpec]]) -> Vec<Problem> {
    let stored = COMMAND_LINE.call_once(|| Box::from(boot_line));
    let mut problems = Vec::new();
    let mut registry = Registry::new();
    for specs in declarations {
        // The tables are checked by a ktest; a name declared twice is still caught here.
        if let Err(error) = registry.declare_all_trusted(specs) {
            problems.push(Problem::Error(alloc::format!(
                "cmdline: bad parameter declaration: {error:?}"
            )));
        }
    }
    let parsed = PARSED.call_once(|| registry.into_parsed(stored));
    let unknown = parsed.unknown();
    if !unknown.is_empty() {
        // One line, kept readable even for a megabyte of unknown words.
        let mut line = String::from("cmdline: unknown parameters ignored:");
        for word in unknown.iter().take(16) {
            let _ = write!(line, " {}", truncate(word, 64));
        }
        if unknown.len() > 16 {
            let _ = write!(line, " ... ({} in all)", unknown.len());
        }
        problems.push(Problem::Warning(line));
    }
    for error in parsed.errors() {
        problems.push(Problem::Warning(alloc::format!("cmdline: {error}")));
    }
    problems
}

/// What `init` found wrong, for the boot code to log (params depends on no other subsystem,
/// not even the console).
pub enum Problem {
    /// A kernel bug: two subsystems declared the same parameter, or a declaration is invalid.
    Error(String),
    /// A user's mistake: an unknown parameter or a malformed value (the default is used).
    Warning(String),
}

fn truncate(text: &str, limit: usize) -> &str {
    match text.char_indices().nth(limit) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// The stored command line (empty before `init`).
pub fn command_line() -> &'static [u8] {
    COMMAND_LINE.get().map(|line| &line[..]).unwrap_or(&[])
}

/// The parsed command line. Panics only if called before `init` (a kernel bug).
pub fn parsed() -> &'static Parsed {
    PARSED
        .get()
        .expect("params::init runs before any subsystem reads parameters")
}

/// SHA-256 of the stored command line, as lowercase hex.
pub fn command_line_sha256() -> String {
    let digest = Sha256::digest(command_line());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}
