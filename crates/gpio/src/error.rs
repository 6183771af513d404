//! What can go wrong with a request or an access, with messages that name the line and, for a
//! conflict, who holds it.

use alloc::string::String;
use core::fmt;

use crate::chip::ChipError;

/// A gpiolib error. Each carries enough to act on: the chip and offset, the name looked up, the
/// consumer already holding a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpioError {
    /// No registered chip matches (`gpiochip7`, a label, a number).
    NoSuchChip(String),
    /// No registered line has this name.
    NoSuchLine(String),
    /// The offset is not below the chip's line count.
    OffsetOutOfRange {
        /// The chip, as `gpiochipN`.
        chip: String,
        /// The offset asked for.
        offset: u32,
        /// The chip's line count.
        lines: u32,
    },
    /// The line is already requested; only one consumer may hold a line (Linux: `-EBUSY`).
    Busy {
        /// The chip, as `gpiochipN`.
        chip: String,
        /// The line's offset.
        offset: u32,
        /// The consumer label of the holder.
        holder: String,
    },
    /// The chip was removed while this descriptor was held; the line is gone.
    ChipGone,
    /// A value was set on a line that is not an output (libgpiod: `-EPERM`).
    NotOutput {
        /// The line's offset.
        offset: u32,
    },
    /// The line is requested for interrupts and so must stay an input (Linux: "tried to set a
    /// GPIO tied to an IRQ as output", `-EIO`).
    UsedAsIrq {
        /// The line's offset.
        offset: u32,
    },
    /// The chip cannot raise interrupts.
    NoInterrupts,
    /// Events were read from a line that was not requested for events.
    EventsNotRequested,
    /// A bulk operation was given lines of more than one chip, or a value count that does not
    /// match its lines.
    InvalidBulk,
    /// The requested global base overlaps another chip's range, or runs past the number space.
    BaseConflict {
        /// The base asked for.
        base: u32,
    },
    /// A chip with no lines cannot be registered.
    NoLines,
    /// The chip driver reported a failure.
    Chip(ChipError),
}

impl GpioError {
    /// The Linux errno a syscall or `gpiod_*` call would return for this error (positive).
    pub fn errno(&self) -> i32 {
        match self {
            Self::NoSuchChip(_) | Self::ChipGone => 19, // ENODEV
            Self::NoSuchLine(_) => 2,                   // ENOENT
            Self::OffsetOutOfRange { .. }
            | Self::InvalidBulk
            | Self::NoLines
            | Self::BaseConflict { .. } => 22, // EINVAL
            Self::Busy { .. } => 16,                    // EBUSY
            Self::NotOutput { .. } => 1,                // EPERM
            Self::UsedAsIrq { .. } => 5,                // EIO
            Self::NoInterrupts | Self::EventsNotRequested => 95, // EOPNOTSUPP
            Self::Chip(ChipError::NotSupported) => 95,
            Self::Chip(ChipError::InvalidOffset(_)) => 22,
            Self::Chip(ChipError::Io) => 5, // EIO
        }
    }
}

impl fmt::Display for GpioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchChip(chip) => write!(f, "no GPIO chip {chip:?}"),
            Self::NoSuchLine(name) => write!(f, "no GPIO line named {name:?}"),
            Self::OffsetOutOfRange {
                chip,
                offset,
                lines,
            } => write!(f, "offset {offset} out of range on {chip} ({lines} lines)"),
            Self::Busy {
                chip,
                offset,
                holder,
            } => write!(
                f,
                "line {offset} of {chip} is busy: requested by {holder:?}"
            ),
            Self::ChipGone => f.write_str("the GPIO chip has been removed"),
            Self::NotOutput { offset } => write!(f, "line {offset} is not an output"),
            Self::UsedAsIrq { offset } => {
                write!(
                    f,
                    "line {offset} is used for interrupts and cannot be an output"
                )
            }
            Self::NoInterrupts => f.write_str("the GPIO chip has no interrupt support"),
            Self::EventsNotRequested => f.write_str("line not requested for events"),
            Self::InvalidBulk => {
                f.write_str("bulk operation needs lines of one chip and one value per line")
            }
            Self::BaseConflict { base } => write!(f, "GPIO base {base} overlaps another chip"),
            Self::NoLines => f.write_str("a GPIO chip needs at least one line"),
            Self::Chip(error) => write!(f, "chip error: {error}"),
        }
    }
}

impl core::error::Error for GpioError {}

impl From<ChipError> for GpioError {
    fn from(error: ChipError) -> Self {
        Self::Chip(error)
    }
}
