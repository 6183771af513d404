//! An ACPI Machine Language interpreter for Lull: loads the DSDT and SSDTs into a namespace and
//! evaluates control methods, with every hardware access (operation regions in system memory,
//! I/O space and PCI configuration space) and every `Notify` handed to a [`Host`].
//!
//! Why Lull has its own: the rust-osdev `acpi` crate's interpreter (6.x, and 7.0.0-pre1) needs
//! nightly Rust (`#![feature(allocator_api)]`, `allocator_ext`), and so does the older `aml`
//! crate (`decl_macro`); Lull builds on stable only. That interpreter also leaves `Notify`
//! unimplemented, which a Generic Event Device's `_EVT` needs to report the power button. The
//! kernel still uses the `acpi` crate for the static tables.
//!
//! Scope: what firmware uses to describe devices and power states on virtual machines and
//! ordinary PCs: named objects (`Scope`, `Device`, `Name`, `Method`, `OperationRegion`, `Field`,
//! `IndexField`, `BankField`, `Processor`, `PowerResource`, `ThermalZone`, `Mutex`, `Event`,
//! `Alias`, buffer fields), the statements (`If`/`Else`, `While`, `Return`, `Break`,
//! `Continue`, `Notify`, `Sleep`, `Stall`, ...) and the integer, string, buffer and package
//! expressions. Not supported (evaluation fails with [`Error::Unsupported`] naming the opcode):
//! `Load`/`LoadTable`, `DataTableRegion`, `Match`, BCD conversions, region spaces other than
//! memory, I/O and PCI configuration. Firmware input never panics the interpreter: malformed AML
//! is an error, loops and recursion are bounded.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod devices;
pub mod resource;

mod exec;
mod namespace;

pub use exec::Host;
pub use namespace::{Namespace, NodeId, ObjectKind};

use alloc::string::String;
use alloc::vec::Vec;

/// Errors from loading or evaluating AML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The AML ended in the middle of an object.
    UnexpectedEnd,
    /// A byte that is no opcode AML defines (at this offset of the table).
    BadOpcode { opcode: u16, offset: usize },
    /// A valid opcode this interpreter does not implement.
    Unsupported(&'static str),
    /// A name that is not in the namespace.
    NotFound(String),
    /// An object of the wrong type for the operation.
    Type(&'static str),
    /// An index past the end of a buffer, string or package.
    Index,
    /// Division by zero.
    DivideByZero,
    /// A name that already exists was created again.
    AlreadyExists(String),
    /// The evaluation ran past its operation budget (a loop that does not end).
    Timeout,
    /// Method calls or expressions nested too deeply.
    TooDeep,
    /// The host refused a region access.
    Host(&'static str),
    /// A malformed resource descriptor.
    BadResource,
    /// The method executed `Fatal`.
    Fatal { kind: u8, code: u32, argument: u64 },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::UnexpectedEnd => write!(f, "AML ends mid-object"),
            Error::BadOpcode { opcode, offset } => {
                write!(f, "bad opcode {opcode:#x} at offset {offset:#x}")
            }
            Error::Unsupported(what) => write!(f, "{what} is not supported"),
            Error::NotFound(name) => write!(f, "{name} not found"),
            Error::Type(what) => write!(f, "wrong object type: {what}"),
            Error::Index => write!(f, "index out of range"),
            Error::DivideByZero => write!(f, "division by zero"),
            Error::AlreadyExists(name) => write!(f, "{name} already exists"),
            Error::Timeout => write!(f, "operation budget exceeded"),
            Error::TooDeep => write!(f, "nesting too deep"),
            Error::Host(why) => write!(f, "host: {why}"),
            Error::BadResource => write!(f, "malformed resource descriptor"),
            Error::Fatal {
                kind,
                code,
                argument,
            } => write!(f, "Fatal({kind:#x}, {code:#x}, {argument:#x})"),
        }
    }
}

/// A value AML computes or stores.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Value {
    #[default]
    Uninitialized,
    Integer(u64),
    String(String),
    Buffer(Vec<u8>),
    Package(Vec<Value>),
    /// A name inside a package (a `_PRT` entry's link device): the absolute path it resolved
    /// to, or the name as written if it did not resolve when the package was built.
    Name(String),
    /// A reference to a namespace object (`RefOf`, or a device named as a value).
    Reference(NodeId),
}

impl Value {
    /// The integer, or an error naming the wrong type.
    pub fn as_integer(&self) -> Result<u64, Error> {
        match self {
            Value::Integer(value) => Ok(*value),
            Value::Buffer(bytes) => {
                let mut raw = [0u8; 8];
                let length = bytes.len().min(8);
                raw[..length].copy_from_slice(&bytes[..length]);
                Ok(u64::from_le_bytes(raw))
            }
            Value::String(text) => Ok(parse_integer(text)),
            _ => Err(Error::Type("integer expected")),
        }
    }
}

/// `ToInteger` on a string: hexadecimal with `0x`, else decimal; stops at the first bad digit.
fn parse_integer(text: &str) -> u64 {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(rest) => (rest, 16),
        None => (text, 10),
    };
    let mut value: u64 = 0;
    for c in digits.chars() {
        match c.to_digit(radix) {
            Some(digit) => value = value.wrapping_mul(radix as u64).wrapping_add(digit as u64),
            None => break,
        }
    }
    value
}

/// Where an operation region lives, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Physical memory (MMIO).
    Memory,
    /// I/O ports.
    Io,
    /// PCI configuration space of one function; the address is the register offset.
    PciConfig {
        segment: u16,
        bus: u8,
        device: u8,
        function: u8,
    },
}

#[cfg(test)]
mod tests;
