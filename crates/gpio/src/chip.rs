//! The controller side: what a GPIO chip driver implements (Linux's `struct gpio_chip`).
//!
//! Every method takes `&self`: a chip does its own locking (a register lock, or the virtqueue
//! request lock of a virtio-gpio chip), because gpiolib calls it from several descriptors at once
//! and never with its own locks held. Values here are always *raw* (the electrical level); the
//! active-low inversion belongs to the descriptor, not to the chip.

use core::fmt;

/// The direction of a line, as the chip reports or sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The line is read.
    Input,
    /// The line is driven.
    Output,
}

impl Direction {
    /// `input` or `output`, as libgpiod's tools print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Output => "output",
        }
    }
}

/// How a line's interrupt triggers, in raw (electrical) terms. The numeric values are
/// virtio-gpio's `VIRTIO_GPIO_IRQ_TYPE_*` (and Linux's `IRQ_TYPE_*`), so a virtio chip passes
/// them through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrqType {
    /// Interrupt disabled.
    None = 0,
    /// Low-to-high transitions.
    EdgeRising = 1,
    /// High-to-low transitions.
    EdgeFalling = 2,
    /// Both transitions.
    EdgeBoth = 3,
    /// While the line is high.
    LevelHigh = 4,
    /// While the line is low.
    LevelLow = 8,
}

impl IrqType {
    /// Whether this is a level (rather than edge) trigger.
    pub fn is_level(self) -> bool {
        matches!(self, Self::LevelHigh | Self::LevelLow)
    }

    /// The same trigger seen through an inverter: what a logical trigger on an active-low line
    /// means electrically (and back).
    pub fn inverted(self) -> Self {
        match self {
            Self::None => Self::None,
            Self::EdgeRising => Self::EdgeFalling,
            Self::EdgeFalling => Self::EdgeRising,
            Self::EdgeBoth => Self::EdgeBoth,
            Self::LevelHigh => Self::LevelLow,
            Self::LevelLow => Self::LevelHigh,
        }
    }
}

/// Why a chip operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChipError {
    /// The chip does not implement this operation (a fixed-direction line, no interrupts).
    NotSupported,
    /// The offset is not below the chip's line count (gpiolib checks this first; a chip that
    /// still sees it reports it rather than panicking).
    InvalidOffset(u32),
    /// The hardware or the transport failed (a virtio request answered with an error).
    Io,
}

impl fmt::Display for ChipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSupported => f.write_str("operation not supported by the chip"),
            Self::InvalidOffset(offset) => write!(f, "no line at offset {offset}"),
            Self::Io => f.write_str("I/O error"),
        }
    }
}

impl core::error::Error for ChipError {}

/// A GPIO controller, as its driver presents it to gpiolib.
///
/// Offsets are `0..num_lines()`; gpiolib never passes another. Bulk operations take bitmaps of
/// 64-bit words, bit `n % 64` of word `n / 64` for offset `n` (Linux's `unsigned long` bitmaps):
/// only the lines set in `mask` are read or written.
///
/// Context: the methods may sleep when [`can_sleep`](Self::can_sleep) says so (a virtio or I2C
/// chip waits for its answer); gpiolib calls them with none of its spin locks held.
pub trait GpioChip: Send + Sync {
    /// A short name for the controller (Linux's `gpio_chip.label`): `virtio-gpio`, `parport`.
    fn label(&self) -> &str;

    /// How many lines the chip has.
    fn num_lines(&self) -> u32;

    /// The device the chip belongs to, as `bus/device` (`virtio/virtio1`, `pnp/00:03`), for
    /// the debugfs listing's `parent:` field.
    fn parent(&self) -> Option<&str> {
        None
    }

    /// The name of line `offset`, if the hardware or firmware names it (`amp-enable`).
    fn line_name(&self, offset: u32) -> Option<&str> {
        let _ = offset;
        None
    }

    /// Whether the chip's operations may sleep (Linux's `can_sleep`): such lines cannot be
    /// touched from interrupt context.
    fn can_sleep(&self) -> bool {
        false
    }

    /// Reads the raw level of line `offset`.
    fn get(&self, offset: u32) -> Result<bool, ChipError>;

    /// Drives line `offset` to the raw level `value` (only meaningful for outputs).
    fn set(&self, offset: u32, value: bool) -> Result<(), ChipError>;

    /// The line's current direction.
    fn get_direction(&self, offset: u32) -> Result<Direction, ChipError>;

    /// Makes the line an input.
    fn direction_input(&self, offset: u32) -> Result<(), ChipError>;

    /// Makes the line an output driving the raw level `value`, without a glitch to the other
    /// level where the hardware allows it.
    fn direction_output(&self, offset: u32, value: bool) -> Result<(), ChipError>;

    /// Reads the raw levels of the lines in `mask` into `bits` in one operation if the chip can.
    /// The default reads them one by one.
    fn get_multiple(&self, mask: &[u64], bits: &mut [u64]) -> Result<(), ChipError> {
        for offset in bitmap_iter(mask) {
            let value = self.get(offset)?;
            bitmap_assign(bits, offset, value);
        }
        Ok(())
    }

    /// Drives the lines in `mask` to the raw levels in `bits` in one operation if the chip can.
    /// The default writes them one by one.
    fn set_multiple(&self, mask: &[u64], bits: &[u64]) -> Result<(), ChipError> {
        for offset in bitmap_iter(mask) {
            self.set(offset, bitmap_test(bits, offset))?;
        }
        Ok(())
    }

    /// Whether the chip can raise line interrupts (and so report events through its
    /// [`EventSink`](crate::EventSink)).
    fn irq_capable(&self) -> bool {
        false
    }

    /// Sets how line `offset` triggers. [`IrqType::None`] disables it.
    fn irq_set_type(&self, offset: u32, trigger: IrqType) -> Result<(), ChipError> {
        let _ = (offset, trigger);
        Err(ChipError::NotSupported)
    }

    /// Unmasks line `offset`'s interrupt. For a level trigger gpiolib calls it again after each
    /// event has been read and acknowledged (virtio-gpio's "re-queue the event buffer").
    fn irq_enable(&self, offset: u32) -> Result<(), ChipError> {
        let _ = offset;
        Err(ChipError::NotSupported)
    }

    /// Masks line `offset`'s interrupt.
    fn irq_disable(&self, offset: u32) -> Result<(), ChipError> {
        let _ = offset;
        Err(ChipError::NotSupported)
    }
}

/// Words needed for a bitmap of `lines` bits.
pub fn bitmap_words(lines: u32) -> usize {
    (lines as usize).div_ceil(64)
}

/// Whether bit `offset` is set (an offset past the end reads as clear).
pub fn bitmap_test(bits: &[u64], offset: u32) -> bool {
    bits.get(offset as usize / 64)
        .is_some_and(|word| word & (1 << (offset % 64)) != 0)
}

/// Sets or clears bit `offset` (ignored past the end).
pub fn bitmap_assign(bits: &mut [u64], offset: u32, value: bool) {
    if let Some(word) = bits.get_mut(offset as usize / 64) {
        let bit = 1 << (offset % 64);
        if value {
            *word |= bit;
        } else {
            *word &= !bit;
        }
    }
}

/// The offsets of the set bits, ascending.
pub fn bitmap_iter(bits: &[u64]) -> impl Iterator<Item = u32> + '_ {
    bits.iter().enumerate().flat_map(|(index, &word)| {
        (0..64u32)
            .filter(move |bit| word & (1 << bit) != 0)
            .map(move |bit| index as u32 * 64 + bit)
    })
}
