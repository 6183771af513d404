//! The portable half of Lull's I2C/SMBus support, after Linux's `drivers/i2c`:
//!
//! * [`SmbusOp`] / [`SmbusData`]: one SMBus transaction and what it returns (Linux's
//!   `i2c_smbus_xfer` arguments as a typed value), [`I2cError`] with Linux's errno for each
//!   failure (`NACK → ENXIO`, `timeout → ETIMEDOUT`, `lost arbitration → EAGAIN`), and the
//!   [`Adapter`] trait a bus driver implements.
//! * [`i801`]: the Intel ICH SMBus host controller's transaction protocol (register set-up,
//!   status decoding, kill on timeout) over a [`i801::HostRegs`] trait, so it runs here against
//!   a model of the controller and in the kernel against its I/O ports.
//! * [`tools`]: the i2c-tools commands (`i2cdetect`, `i2cget`, `i2cset`, `i2cdump`): argument
//!   parsing with their error messages and their output formats.
//!
//! Why a crate: transactions, error mapping and the tools' text are where the bugs are, and
//! they need no hardware to be checked. The kernel supplies the lock per adapter, the
//! interrupt, the wait, and the device model.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod i801;
pub mod tools;

#[cfg(test)]
mod tests;

use core::fmt;

/// One SMBus transaction to a 7-bit address (SMBus 3.1 §6.5), as `i2c_smbus_xfer`'s
/// `read_write`/`command`/`size` triple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmbusOp {
    /// Quick command: the address with the R/W bit as the only data (`i2cdetect -q`).
    Quick {
        /// The R/W bit sent.
        read: bool,
    },
    /// Receive byte: read one byte without a command.
    ReadByte,
    /// Send byte: write one byte without a command.
    WriteByte(u8),
    /// Read byte data: write `command`, repeated start, read one byte.
    ReadByteData(u8),
    /// Write byte data: `command`, then the byte.
    WriteByteData(u8, u8),
    /// Read word data: write `command`, repeated start, read two bytes (low first).
    ReadWordData(u8),
    /// Write word data: `command`, then the word, low byte first.
    WriteWordData(u8, u16),
}

impl SmbusOp {
    /// Whether data comes back.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            SmbusOp::Quick { read: true }
                | SmbusOp::ReadByte
                | SmbusOp::ReadByteData(_)
                | SmbusOp::ReadWordData(_)
        )
    }

    /// The functionality bit an adapter needs for this transaction.
    pub fn needs(self) -> Functionality {
        match self {
            SmbusOp::Quick { .. } => Functionality::SMBUS_QUICK,
            SmbusOp::ReadByte => Functionality::SMBUS_READ_BYTE,
            SmbusOp::WriteByte(_) => Functionality::SMBUS_WRITE_BYTE,
            SmbusOp::ReadByteData(_) => Functionality::SMBUS_READ_BYTE_DATA,
            SmbusOp::WriteByteData(..) => Functionality::SMBUS_WRITE_BYTE_DATA,
            SmbusOp::ReadWordData(_) => Functionality::SMBUS_READ_WORD_DATA,
            SmbusOp::WriteWordData(..) => Functionality::SMBUS_WRITE_WORD_DATA,
        }
    }
}

/// What a transaction returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmbusData {
    /// A write, or a quick command.
    None,
    /// One byte.
    Byte(u8),
    /// One word.
    Word(u16),
}

impl SmbusData {
    /// The value read (0 for none).
    pub fn value(self) -> u16 {
        match self {
            SmbusData::None => 0,
            SmbusData::Byte(b) => u16::from(b),
            SmbusData::Word(w) => w,
        }
    }
}

/// Linux's `I2C_FUNC_*` bits an adapter advertises (`i2cdetect -F`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Functionality(pub u32);

impl Functionality {
    /// Plain I2C messages (`I2C_FUNC_I2C`).
    pub const I2C: Self = Self(0x0000_0001);
    /// `I2C_FUNC_SMBUS_QUICK`.
    pub const SMBUS_QUICK: Self = Self(0x0001_0000);
    /// `I2C_FUNC_SMBUS_READ_BYTE`.
    pub const SMBUS_READ_BYTE: Self = Self(0x0002_0000);
    /// `I2C_FUNC_SMBUS_WRITE_BYTE`.
    pub const SMBUS_WRITE_BYTE: Self = Self(0x0004_0000);
    /// `I2C_FUNC_SMBUS_READ_BYTE_DATA`.
    pub const SMBUS_READ_BYTE_DATA: Self = Self(0x0008_0000);
    /// `I2C_FUNC_SMBUS_WRITE_BYTE_DATA`.
    pub const SMBUS_WRITE_BYTE_DATA: Self = Self(0x0010_0000);
    /// `I2C_FUNC_SMBUS_READ_WORD_DATA`.
    pub const SMBUS_READ_WORD_DATA: Self = Self(0x0020_0000);
    /// `I2C_FUNC_SMBUS_WRITE_WORD_DATA`.
    pub const SMBUS_WRITE_WORD_DATA: Self = Self(0x0040_0000);

    /// Quick, byte, byte data and word data, both directions (what i801 does without blocks).
    pub const SMBUS_BASIC: Self = Self(0x007f_0000);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Why a transaction failed. Each maps to the errno Linux's SMBus drivers return for it
/// (Documentation/i2c/fault-codes.rst).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I2cError {
    /// No device acknowledged the address (or a byte): `ENXIO`.
    Nack,
    /// The controller did not finish in time and was killed: `ETIMEDOUT`.
    Timeout,
    /// Lost arbitration / bus collision: `EAGAIN` (the caller may retry).
    BusCollision,
    /// The controller was busy with another master's transaction and would not clear: `EBUSY`.
    Busy,
    /// The transaction failed in a way the controller does not explain: `EIO`.
    Io,
    /// The adapter cannot do this transaction type: `EOPNOTSUPP`.
    Unsupported,
    /// Bad address or arguments: `EINVAL`.
    Invalid,
    /// The adapter is gone (its driver was unbound): `ENODEV`.
    NoAdapter,
}

impl I2cError {
    /// Linux's errno, positive.
    pub fn errno(self) -> i32 {
        match self {
            I2cError::Nack => 6,
            I2cError::Timeout => 110,
            I2cError::BusCollision => 11,
            I2cError::Busy => 16,
            I2cError::Io => 5,
            I2cError::Unsupported => 95,
            I2cError::Invalid => 22,
            I2cError::NoAdapter => 19,
        }
    }

    /// `strerror` of the errno, as i2c-tools print it after a failure.
    pub fn strerror(self) -> &'static str {
        match self {
            I2cError::Nack => "No such device or address",
            I2cError::Timeout => "Connection timed out",
            I2cError::BusCollision => "Resource temporarily unavailable",
            I2cError::Busy => "Device or resource busy",
            I2cError::Io => "Input/output error",
            I2cError::Unsupported => "Operation not supported",
            I2cError::Invalid => "Invalid argument",
            I2cError::NoAdapter => "No such device",
        }
    }
}

impl fmt::Display for I2cError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (-{})", self.strerror(), self.errno())
    }
}

/// A bus master (Linux's `struct i2c_algorithm` with its adapter): performs one transaction at
/// a time; the caller (the I2C core) holds the adapter's lock around each call.
pub trait Adapter {
    /// What the adapter can do.
    fn functionality(&self) -> Functionality;

    /// Performs `op` with the device at 7-bit `address` (0x00-0x7f).
    fn smbus_xfer(&mut self, address: u8, op: SmbusOp) -> Result<SmbusData, I2cError>;
}

/// The name of an I2C client device as Linux's: `BUS-00AA` (`0-0050`).
pub fn client_name(bus: u32, address: u8) -> alloc::string::String {
    alloc::format!("{bus}-{:04x}", address)
}

/// Parses a client name made by [`client_name`] back into `(bus, address)`.
pub fn parse_client_name(name: &str) -> Option<(u32, u8)> {
    let (bus, address) = name.split_once('-')?;
    if address.len() != 4 {
        return None;
    }
    let bus = bus.parse().ok()?;
    let address = u16::from_str_radix(address, 16).ok()?;
    (address <= 0x7f).then_some((bus, address as u8))
}

/// How `i2cdetect` (and Linux's `i2c_default_probe`) checks for a device without disturbing it:
/// a read-byte at addresses where a quick write could corrupt an EEPROM's write pointer or
/// lock a chip (0x30-0x37, 0x50-0x5f), a quick write elsewhere.
pub fn default_probe_op(address: u8) -> SmbusOp {
    if (0x30..=0x37).contains(&address) || (0x50..=0x5f).contains(&address) {
        SmbusOp::ReadByte
    } else {
        SmbusOp::Quick { read: false }
    }
}
