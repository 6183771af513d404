//! The i2c-tools commands as the kernel's shell runs them: argument parsing with i2c-tools'
//! own error messages, and their output formats. The shell has no `/dev/i2c-N`: a command is
//! parsed to a [`Command`], the kernel runs its transactions on the adapter, and the text comes
//! from here.
//!
//! | command                                   | does                                          |
//! |-------------------------------------------|-----------------------------------------------|
//! | `i2cdetect -l`                            | one line per adapter                           |
//! | `i2cdetect [-y] [-q\|-r] [-a] BUS [FIRST LAST]` | the 16×8 grid of addresses that answer   |
//! | `i2cget [-y] [-a] BUS ADDR [REG [b\|w\|c]]` | one read; prints `0xNN` or `0xNNNN`         |
//! | `i2cset [-y] [-a] BUS ADDR REG [VALUE [b\|w]]` | one write; prints nothing                  |
//! | `i2cdump [-y] [-a] BUS ADDR [b]`          | 256 byte-data reads as a hex/ASCII table       |
//!
//! Differences from i2c-tools: no interactive confirmation exists, so `-y` is accepted and
//! implied; `-f` (force past a bound driver) is accepted and has no effect (the core's lock
//! serialises the driver's and the shell's transactions).

use alloc::format;
use alloc::string::String;
use core::fmt::Write;

use crate::{SmbusData, SmbusOp};

/// How `i2cdetect` probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeMode {
    /// Read byte at 0x30-0x37 and 0x50-0x5f, quick write elsewhere (the default).
    Auto,
    /// Quick write everywhere (`-q`).
    Quick,
    /// Read byte everywhere (`-r`).
    Read,
}

impl ProbeMode {
    /// The transaction that probes `address`.
    pub fn op(self, address: u8) -> SmbusOp {
        match self {
            ProbeMode::Auto => crate::default_probe_op(address),
            ProbeMode::Quick => SmbusOp::Quick { read: false },
            ProbeMode::Read => SmbusOp::ReadByte,
        }
    }
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `i2cdetect -l`.
    List,
    /// `i2cdetect BUS`.
    Detect {
        /// Adapter number.
        bus: u32,
        /// First address probed.
        first: u8,
        /// Last address probed.
        last: u8,
        /// How.
        mode: ProbeMode,
    },
    /// `i2cget`.
    Get {
        /// Adapter number.
        bus: u32,
        /// Chip address.
        address: u8,
        /// The read.
        op: SmbusOp,
    },
    /// `i2cset`.
    Set {
        /// Adapter number.
        bus: u32,
        /// Chip address.
        address: u8,
        /// The write.
        op: SmbusOp,
    },
    /// `i2cdump` (byte mode).
    Dump {
        /// Adapter number.
        bus: u32,
        /// Chip address.
        address: u8,
    },
}

/// `strtol(text, NULL, 0)` restricted to whole, non-negative numbers: `0x` hex, leading `0`
/// octal, else decimal.
pub fn parse_number(text: &str) -> Option<u32> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        return u32::from_str_radix(hex, 16).ok();
    }
    if text.len() > 1 && text.starts_with('0') {
        return u32::from_str_radix(&text[1..], 8).ok();
    }
    text.parse().ok()
}

fn usage(tool: &str) -> String {
    match tool {
        "i2cdetect" => String::from(
            "Usage: i2cdetect [-y] [-a] [-q|-r] I2CBUS [FIRST LAST]\n       i2cdetect -l",
        ),
        "i2cget" => String::from("Usage: i2cget [-f] [-y] [-a] I2CBUS CHIP-ADDRESS [DATA-ADDRESS [MODE]]\n  MODE is one of:\n    b (read byte data, default)\n    w (read word data)\n    c (write byte/read byte)"),
        "i2cset" => String::from("Usage: i2cset [-f] [-y] [-a] I2CBUS CHIP-ADDRESS DATA-ADDRESS [VALUE] [MODE]\n  MODE is one of:\n    c (byte, no value)\n    b (byte data, default)\n    w (word data)"),
        _ => String::from("Usage: i2cdump [-f] [-y] [-a] I2CBUS ADDRESS [b]"),
    }
}

fn parse_bus(text: &str) -> Result<u32, String> {
    let name = text.strip_prefix("i2c-").unwrap_or(text);
    parse_number(name)
        .filter(|&bus| bus <= 0xfffff)
        .ok_or_else(|| String::from("Error: I2C bus name doesn't match any bus present!"))
}

fn parse_chip(text: &str, all: bool) -> Result<u8, String> {
    let address =
        parse_number(text).ok_or_else(|| String::from("Error: Chip address is not a number!"))?;
    let (low, high) = if all { (0x00, 0x7f) } else { (0x08, 0x77) };
    if !(low..=high).contains(&address) {
        return Err(format!(
            "Error: Chip address out of range (0x{low:02x}-0x{high:02x})!"
        ));
    }
    Ok(address as u8)
}

fn parse_register(text: &str) -> Result<u8, String> {
    parse_number(text)
        .filter(|&r| r <= 0xff)
        .map(|r| r as u8)
        .ok_or_else(|| String::from("Error: Data address invalid!"))
}

/// Parses `args` (the tool's name first). `Err` holds the text i2c-tools print.
pub fn parse(args: &[&str]) -> Result<Command, String> {
    let Some((&tool, rest)) = args.split_first() else {
        return Err(usage("i2cdetect"));
    };
    let mut all = false;
    let mut list = false;
    let mut mode = ProbeMode::Auto;
    let mut words = alloc::vec::Vec::new();
    for &word in rest {
        match word {
            "-y" | "-f" => {}
            "-a" => all = true,
            "-l" if tool == "i2cdetect" => list = true,
            "-q" if tool == "i2cdetect" => mode = ProbeMode::Quick,
            "-r" if tool == "i2cdetect" => mode = ProbeMode::Read,
            flag if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!(
                    "Error: Unsupported option \"{flag}\"!\n{}",
                    usage(tool)
                ))
            }
            word => words.push(word),
        }
    }
    match tool {
        "i2cdetect" => {
            if list {
                return Ok(Command::List);
            }
            let (bus, range) = match words.as_slice() {
                [bus] => (bus, None),
                [bus, first, last] => (bus, Some((first, last))),
                [] => return Err(format!("Error: No i2c-bus specified!\n{}", usage(tool))),
                _ => return Err(usage(tool)),
            };
            let bus = parse_bus(bus)?;
            let (mut first, mut last) = if all { (0x00, 0x7f) } else { (0x08, 0x77) };
            if let Some((f, l)) = range {
                first = parse_number(f)
                    .filter(|&v| v <= 0x7f)
                    .ok_or("Error: FIRST argument out of range (0x00-0x7f)!")?;
                last = parse_number(l)
                    .filter(|&v| v <= 0x7f)
                    .ok_or("Error: LAST argument out of range (0x00-0x7f)!")?;
                if last < first {
                    return Err(String::from(
                        "Error: LAST address is lower than FIRST address!",
                    ));
                }
            }
            Ok(Command::Detect {
                bus,
                first: first as u8,
                last: last as u8,
                mode,
            })
        }
        "i2cget" => {
            let [bus, chip, more @ ..] = words.as_slice() else {
                return Err(usage(tool));
            };
            let bus = parse_bus(bus)?;
            let address = parse_chip(chip, all)?;
            let op = match more {
                [] => SmbusOp::ReadByte,
                [reg] => SmbusOp::ReadByteData(parse_register(reg)?),
                [reg, "b"] => SmbusOp::ReadByteData(parse_register(reg)?),
                [reg, "w"] => SmbusOp::ReadWordData(parse_register(reg)?),
                [reg, "c"] => {
                    parse_register(reg)?;
                    SmbusOp::ReadByte
                }
                [_, _] => return Err(format!("Error: Invalid mode!\n{}", usage(tool))),
                _ => return Err(usage(tool)),
            };
            Ok(Command::Get { bus, address, op })
        }
        "i2cset" => {
            let [bus, chip, reg, more @ ..] = words.as_slice() else {
                return Err(usage(tool));
            };
            let bus = parse_bus(bus)?;
            let address = parse_chip(chip, all)?;
            let reg = parse_register(reg)?;
            let value = |text: &str, max: u32| {
                parse_number(text)
                    .filter(|&v| v <= max)
                    .ok_or_else(|| String::from("Error: Data value out of range!"))
            };
            let op = match more {
                [] | ["c"] => SmbusOp::WriteByte(reg),
                [v] | [v, "b"] => SmbusOp::WriteByteData(reg, value(v, 0xff)? as u8),
                [v, "w"] => SmbusOp::WriteWordData(reg, value(v, 0xffff)? as u16),
                [_, _] => return Err(format!("Error: Invalid mode!\n{}", usage(tool))),
                _ => return Err(usage(tool)),
            };
            Ok(Command::Set { bus, address, op })
        }
        "i2cdump" => {
            let (bus, chip) = match words.as_slice() {
                [bus, chip] | [bus, chip, "b"] => (bus, chip),
                [_, _, _] => return Err(format!("Error: Invalid mode!\n{}", usage(tool))),
                _ => return Err(usage(tool)),
            };
            Ok(Command::Dump {
                bus: parse_bus(bus)?,
                address: parse_chip(chip, all)?,
            })
        }
        other => Err(format!("{other}: not an i2c-tools command")),
    }
}

/// i2c-tools' message when the adapter does not exist.
pub fn no_such_bus(bus: u32) -> String {
    format!(
        "Error: Could not open file `/dev/i2c-{bus}' or `/dev/i2c/{bus}': No such file or directory"
    )
}

/// One `i2cdetect -l` line: name, type, adapter name, algorithm.
pub fn list_line(bus: u32, adapter_name: &str) -> String {
    format!("i2c-{bus}\tsmbus     \t{adapter_name:<32}\tSMBus adapter")
}

/// What `i2cdetect` found at one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Something acknowledged: printed as the address.
    Present,
    /// Nothing answered: `--`.
    Absent,
    /// A kernel driver is bound there and the address was not probed: `UU`.
    Busy,
}

const GRID_HEADER: &str = "     0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f";

/// The `i2cdetect` grid for `first..=last`; `probe` is called for each address in order.
pub fn detect_grid(first: u8, last: u8, mut probe: impl FnMut(u8) -> Cell) -> String {
    let mut out = String::from(GRID_HEADER);
    out.push('\n');
    for row in (0u8..0x80).step_by(16) {
        let _ = write!(out, "{row:02x}: ");
        for address in row..row + 16 {
            if address < first || address > last {
                out.push_str("   ");
                continue;
            }
            match probe(address) {
                Cell::Present => {
                    let _ = write!(out, "{address:02x} ");
                }
                Cell::Absent => out.push_str("-- "),
                Cell::Busy => out.push_str("UU "),
            }
        }
        out.push('\n');
    }
    out
}

/// `i2cget`'s output for a value read.
pub fn format_value(data: SmbusData) -> String {
    match data {
        SmbusData::Word(word) => format!("0x{word:04x}"),
        other => format!("0x{:02x}", other.value()),
    }
}

/// The `i2cdump` byte-mode table; `read(register)` returns the byte or `None` (printed `XX`).
pub fn dump_bytes(mut read: impl FnMut(u8) -> Option<u8>) -> String {
    let mut out = format!("{GRID_HEADER}    0123456789abcdef\n");
    for row in (0u16..256).step_by(16) {
        let mut ascii = String::new();
        let _ = write!(out, "{row:02x}: ");
        for register in row..row + 16 {
            match read(register as u8) {
                Some(byte) => {
                    let _ = write!(out, "{byte:02x} ");
                    ascii.push(match byte {
                        0x00 | 0xff => '.',
                        0x20..=0x7e => char::from(byte),
                        _ => '?',
                    });
                }
                None => {
                    out.push_str("XX ");
                    ascii.push('X');
                }
            }
        }
        let _ = writeln!(out, "   {ascii}");
    }
    out
}
