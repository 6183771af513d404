//! The device side of virtio-gpio (virtio 1.2, §5.18) as a pure state machine over byte
//! buffers: configuration space, the request queue's messages, and the event queue.
//!
//! Why a crate: two programs implement this device — the vhost-user back-end QEMU talks to, and
//! lull-vmm's own virtio-mmio device — and both must answer the guest identically. Neither the
//! transport (virtqueues, guest memory, notifications) nor a clock lives here: the caller pops a
//! descriptor chain, hands this crate the readable bytes and the writable length, and writes back
//! what it returns. Guest-controlled bytes never reach a panic; a malformed message is answered
//! with `VIRTIO_GPIO_STATUS_ERR`.
//!
//! # The protocol, as implemented
//!
//! * Config space: `ngpio` (le16), 2 bytes padding, `gpio_names_size` (le32). Names are one
//!   NUL-terminated string per line (empty for an unnamed line); without any name the size is 0
//!   and `GET_NAMES` fails.
//! * requestq: `{le16 type, le16 gpio, le32 value}` in, `{u8 status, u8 value}` out (for
//!   `GET_NAMES`, `{u8 status, u8 names[gpio_names_size]}`). `SET_VALUE` is accepted in any
//!   direction and is what the line drives once it becomes an output. `SET_DIRECTION` to NONE
//!   discards the line's state. `IRQ_TYPE` needs `VIRTIO_GPIO_F_IRQ`, is refused on an output,
//!   and may only change an enabled trigger to NONE or while the line is masked.
//! * eventq: the driver unmasks a line's interrupt by queueing one buffer pair
//!   (`{le16 gpio}` in, `{u8 status}` out). The device answers `VALID` when the interrupt fires,
//!   which masks the line again until the next buffer. Edges are latched while masked and
//!   delivered at the next unmask; levels are not latched, but a level that holds when the line
//!   is unmasked fires at once. Setting the trigger to NONE (or the direction away from input)
//!   returns the queued buffer with `INVALID` and forgets any latched edge. A second buffer for
//!   a line that already has one, a buffer for an invalid line or a disabled interrupt, is
//!   returned at once with `INVALID`.
//!
//! ```
//! use lull_virtio_gpio::*;
//!
//! let mut device = VirtioGpioDevice::new(&["amp-enable", "button"]).unwrap();
//! device.ack_features(device.device_features());
//! // The guest drives the amplifier line high: value first, then direction.
//! let set = Message { kind: MSG_SET_VALUE, gpio: 0, value: 1 }.encode();
//! device.handle_request(&set, 2);
//! let out = Message { kind: MSG_SET_DIRECTION, gpio: 0, value: 1 }.encode();
//! let result = device.handle_request(&out, 2);
//! assert_eq!(result.response, [STATUS_OK, 0]);
//! assert_eq!(result.output_change, Some((0, true)));
//! assert_eq!(result.message.unwrap().to_string(), "SET_DIRECTION gpio 0 value 1");
//!
//! // It watches the button for rising edges and unmasks it with an event buffer.
//! for (kind, value) in [(MSG_SET_DIRECTION, 2), (MSG_IRQ_TYPE, 1)] {
//!     device.handle_request(&Message { kind, gpio: 1, value }.encode(), 2);
//! }
//! assert_eq!(device.queue_event_buffer(17, &1u16.to_le_bytes()), None);
//! // The host presses the button: buffer 17 goes back VALID.
//! let event = device.set_input(1, true).unwrap();
//! assert_eq!((event.head, event.status), (17, IRQ_STATUS_VALID));
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

/// virtio device ID of a GPIO device.
pub const VIRTIO_ID_GPIO: u32 = 41;
/// Feature bit: the device has an event queue and supports interrupts.
pub const VIRTIO_GPIO_F_IRQ: u64 = 1 << 0;
/// Feature bit `VIRTIO_F_VERSION_1` (every modern device offers it).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Index of the request queue.
pub const REQUEST_QUEUE: u16 = 0;
/// Index of the event queue.
pub const EVENT_QUEUE: u16 = 1;
/// Size of the configuration space.
pub const CONFIG_SIZE: usize = 8;

/// `VIRTIO_GPIO_MSG_GET_NAMES` (the spec's `VIRTIO_GPIO_MSG_GET_LINE_NAMES`).
pub const MSG_GET_NAMES: u16 = 0x0001;
/// `VIRTIO_GPIO_MSG_GET_DIRECTION`.
pub const MSG_GET_DIRECTION: u16 = 0x0002;
/// `VIRTIO_GPIO_MSG_SET_DIRECTION`.
pub const MSG_SET_DIRECTION: u16 = 0x0003;
/// `VIRTIO_GPIO_MSG_GET_VALUE`.
pub const MSG_GET_VALUE: u16 = 0x0004;
/// `VIRTIO_GPIO_MSG_SET_VALUE`.
pub const MSG_SET_VALUE: u16 = 0x0005;
/// `VIRTIO_GPIO_MSG_IRQ_TYPE`.
pub const MSG_IRQ_TYPE: u16 = 0x0006;

/// `VIRTIO_GPIO_STATUS_OK`.
pub const STATUS_OK: u8 = 0;
/// `VIRTIO_GPIO_STATUS_ERR`.
pub const STATUS_ERR: u8 = 1;
/// `VIRTIO_GPIO_IRQ_STATUS_INVALID`: the buffer is returned without an interrupt.
pub const IRQ_STATUS_INVALID: u8 = 0;
/// `VIRTIO_GPIO_IRQ_STATUS_VALID`: the interrupt fired.
pub const IRQ_STATUS_VALID: u8 = 1;

/// Length of a request message.
pub const REQUEST_LEN: usize = 8;
/// Length of a response to any message but `GET_NAMES`.
pub const RESPONSE_LEN: usize = 2;

/// A line's direction (`VIRTIO_GPIO_DIRECTION_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Unused (0x00): the line's state is discarded.
    None = 0,
    /// Output (0x01).
    Out = 1,
    /// Input (0x02).
    In = 2,
}

impl Direction {
    fn from_wire(value: u32) -> Option<Self> {
        match value {
            0 => Some(Self::None),
            1 => Some(Self::Out),
            2 => Some(Self::In),
            _ => None,
        }
    }
}

/// Interrupt triggers (`VIRTIO_GPIO_IRQ_TYPE_*`).
pub mod irq_type {
    /// Disabled.
    pub const NONE: u8 = 0x00;
    /// Rising edges.
    pub const EDGE_RISING: u8 = 0x01;
    /// Falling edges.
    pub const EDGE_FALLING: u8 = 0x02;
    /// Both edges.
    pub const EDGE_BOTH: u8 = 0x03;
    /// While high.
    pub const LEVEL_HIGH: u8 = 0x04;
    /// While low.
    pub const LEVEL_LOW: u8 = 0x08;
}

fn valid_irq_type(value: u32) -> Option<u8> {
    match value {
        0x00 | 0x01 | 0x02 | 0x03 | 0x04 | 0x08 => u8::try_from(value).ok(),
        _ => None,
    }
}

/// Why a device could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// virtio-gpio has between 1 and 65535 lines.
    LineCount(usize),
    /// A line name contains a NUL byte, which would split the names block.
    NulInName(usize),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineCount(count) => write!(f, "virtio-gpio needs 1 to 65535 lines, not {count}"),
            Self::NulInName(line) => write!(f, "the name of line {line} contains a NUL byte"),
        }
    }
}

impl core::error::Error for ConfigError {}

/// A request-queue message, decoded, for the back-end's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// `type`.
    pub kind: u16,
    /// `gpio`.
    pub gpio: u16,
    /// `value`.
    pub value: u32,
}

impl Message {
    /// Decodes the first [`REQUEST_LEN`] bytes; `None` if there are fewer.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes = bytes.get(..REQUEST_LEN)?;
        Some(Self {
            kind: u16::from_le_bytes([bytes[0], bytes[1]]),
            gpio: u16::from_le_bytes([bytes[2], bytes[3]]),
            value: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        })
    }

    /// Encodes the message (for drivers and tests).
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut bytes = [0; REQUEST_LEN];
        bytes[..2].copy_from_slice(&self.kind.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.gpio.to_le_bytes());
        bytes[4..].copy_from_slice(&self.value.to_le_bytes());
        bytes
    }

    /// The message's name, `SET_VALUE`, or `UNKNOWN`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            MSG_GET_NAMES => "GET_NAMES",
            MSG_GET_DIRECTION => "GET_DIRECTION",
            MSG_SET_DIRECTION => "SET_DIRECTION",
            MSG_GET_VALUE => "GET_VALUE",
            MSG_SET_VALUE => "SET_VALUE",
            MSG_IRQ_TYPE => "IRQ_TYPE",
            _ => "UNKNOWN",
        }
    }
}

impl fmt::Display for Message {
    /// `SET_VALUE gpio 3 value 1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "UNKNOWN" => write!(
                f,
                "UNKNOWN({:#06x}) gpio {} value {}",
                self.kind, self.gpio, self.value
            ),
            name => write!(f, "{name} gpio {} value {}", self.gpio, self.value),
        }
    }
}

/// An event-queue buffer to hand back to the driver: write `status` into its writable part
/// (one byte) and put it on the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventCompletion {
    /// The buffer's descriptor head, as given to [`VirtioGpioDevice::queue_event_buffer`].
    pub head: u16,
    /// The line it was queued for (as the driver wrote it).
    pub gpio: u16,
    /// [`IRQ_STATUS_VALID`] or [`IRQ_STATUS_INVALID`].
    pub status: u8,
}

/// What handling one request produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestResult {
    /// The bytes to write into the request's writable buffer; the used length is their count.
    pub response: Vec<u8>,
    /// The message as decoded, if the request was long enough.
    pub message: Option<Message>,
    /// A line whose driven level changed (line, level): what the back-end shows the host.
    pub output_change: Option<(u16, bool)>,
    /// Event buffers the request released (an interrupt disabled): complete them on the
    /// event queue.
    pub events: Vec<EventCompletion>,
}

/// One line's state, for the back-end's listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineState {
    /// The line's name, if any.
    pub name: Option<String>,
    /// Its direction.
    pub direction: Direction,
    /// What the driver last set with `SET_VALUE` (driven while the direction is out).
    pub output: bool,
    /// What the host drives into it (read while the direction is in or none).
    pub input: bool,
    /// Its interrupt trigger ([`irq_type`]).
    pub irq_type: u8,
    /// Whether the driver has a buffer queued (the interrupt is unmasked).
    pub unmasked: bool,
    /// Whether an edge is latched, waiting for the next unmask.
    pub latched: bool,
}

#[derive(Clone, Debug)]
struct Line {
    state: LineState,
    /// The queued event buffer's head.
    buffer: Option<u16>,
}

impl Line {
    fn level_active(&self) -> bool {
        let trigger = self.state.irq_type;
        if self.state.input {
            trigger & irq_type::LEVEL_HIGH != 0
        } else {
            trigger & irq_type::LEVEL_LOW != 0
        }
    }

    /// Disables the interrupt: forgets the latch and returns the buffer, if any, as INVALID.
    fn disable_irq(&mut self, gpio: u16) -> Option<EventCompletion> {
        self.state.irq_type = irq_type::NONE;
        self.state.latched = false;
        self.state.unmasked = false;
        self.buffer.take().map(|head| EventCompletion {
            head,
            gpio,
            status: IRQ_STATUS_INVALID,
        })
    }
}

/// A virtio-gpio device: its lines, the negotiated features, and its outstanding event buffers.
#[derive(Clone, Debug)]
pub struct VirtioGpioDevice {
    lines: Vec<Line>,
    names_block: Vec<u8>,
    irq_negotiated: bool,
}

impl VirtioGpioDevice {
    /// A device with one line per name (`""` for an unnamed line), all inputs at low level.
    pub fn new(names: &[&str]) -> Result<Self, ConfigError> {
        if names.is_empty() || names.len() > usize::from(u16::MAX) {
            return Err(ConfigError::LineCount(names.len()));
        }
        if let Some(line) = names.iter().position(|n| n.contains('\0')) {
            return Err(ConfigError::NulInName(line));
        }
        let names_block = if names.iter().all(|n| n.is_empty()) {
            Vec::new()
        } else {
            names
                .iter()
                .flat_map(|n| n.bytes().chain(core::iter::once(0)))
                .collect()
        };
        let lines = names
            .iter()
            .map(|n| Line {
                state: LineState {
                    name: (!n.is_empty()).then(|| (*n).to_owned()),
                    direction: Direction::None,
                    output: false,
                    input: false,
                    irq_type: irq_type::NONE,
                    unmasked: false,
                    latched: false,
                },
                buffer: None,
            })
            .collect();
        Ok(Self {
            lines,
            names_block,
            irq_negotiated: false,
        })
    }

    /// Features the device offers.
    pub fn device_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_GPIO_F_IRQ
    }

    /// Records the features the driver accepted (only offered ones count).
    pub fn ack_features(&mut self, features: u64) {
        self.irq_negotiated = features & self.device_features() & VIRTIO_GPIO_F_IRQ != 0;
    }

    /// The configuration space.
    pub fn config(&self) -> [u8; CONFIG_SIZE] {
        let mut config = [0; CONFIG_SIZE];
        let ngpio = u16::try_from(self.lines.len()).unwrap_or(u16::MAX);
        config[..2].copy_from_slice(&ngpio.to_le_bytes());
        let size = u32::try_from(self.names_block.len()).unwrap_or(u32::MAX);
        config[4..].copy_from_slice(&size.to_le_bytes());
        config
    }

    /// Reads `data.len()` bytes of configuration space at `offset`; bytes past its end read
    /// as zero (the transport decides whether such an access is legal).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (index, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(index))
                .and_then(|i| config.get(i))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Device reset: every line back to its initial state, outstanding event buffers dropped
    /// (the driver reclaims them itself after a reset), features forgotten. Host-driven input
    /// levels stay: they are the outside world's, not the device's.
    pub fn reset(&mut self) {
        for line in &mut self.lines {
            line.state.direction = Direction::None;
            line.state.output = false;
            line.state.irq_type = irq_type::NONE;
            line.state.unmasked = false;
            line.state.latched = false;
            line.buffer = None;
        }
        self.irq_negotiated = false;
    }

    /// The number of lines.
    pub fn num_lines(&self) -> u16 {
        u16::try_from(self.lines.len()).unwrap_or(u16::MAX)
    }

    /// A line's state.
    pub fn line(&self, gpio: u16) -> Option<&LineState> {
        self.lines.get(usize::from(gpio)).map(|l| &l.state)
    }

    /// The level the line drives, while it is an output.
    pub fn output_level(&self, gpio: u16) -> Option<bool> {
        self.line(gpio)
            .filter(|l| l.direction == Direction::Out)
            .map(|l| l.output)
    }

    /// Handles one request-queue message: `request` is the readable part of the chain,
    /// `writable_len` the size of its writable part.
    pub fn handle_request(&mut self, request: &[u8], writable_len: usize) -> RequestResult {
        let message = Message::decode(request);
        let mut result = RequestResult {
            response: Vec::new(),
            message,
            output_change: None,
            events: Vec::new(),
        };
        let answer = match message {
            Some(message) if request.len() == REQUEST_LEN => self.execute(message, &mut result),
            _ => Err(()),
        };
        let response = match answer {
            Ok(Answer::Value(value)) => vec![STATUS_OK, value],
            Ok(Answer::Names) => {
                let mut names = Vec::with_capacity(1 + self.names_block.len());
                names.push(STATUS_OK);
                names.extend_from_slice(&self.names_block);
                names
            }
            Err(()) => vec![STATUS_ERR, 0],
        };
        let needed = match answer {
            Ok(Answer::Names) => response.len(),
            _ => RESPONSE_LEN,
        };
        result.response = if writable_len >= needed {
            response
        } else if writable_len >= 1 {
            // Not room for the answer: say so in the one byte we may write.
            vec![STATUS_ERR]
        } else {
            Vec::new()
        };
        result
    }

    fn execute(&mut self, message: Message, result: &mut RequestResult) -> Result<Answer, ()> {
        if message.kind == MSG_GET_NAMES {
            return if self.names_block.is_empty() {
                Err(())
            } else {
                Ok(Answer::Names)
            };
        }
        let irq_negotiated = self.irq_negotiated;
        let gpio = message.gpio;
        let line = self.lines.get_mut(usize::from(gpio)).ok_or(())?;
        match message.kind {
            MSG_GET_DIRECTION => Ok(Answer::Value(line.state.direction as u8)),
            MSG_SET_DIRECTION => {
                let direction = Direction::from_wire(message.value).ok_or(())?;
                if direction == Direction::Out && line.state.irq_type != irq_type::NONE {
                    // An interrupt line must be disabled before it becomes an output.
                    return Err(());
                }
                let was_driving = line.state.direction == Direction::Out;
                if direction == Direction::None {
                    result.events.extend(line.disable_irq(gpio));
                    line.state.output = false;
                }
                line.state.direction = direction;
                let driving = direction == Direction::Out;
                if driving != was_driving {
                    // The line starts driving its stored value, or stops driving.
                    result.output_change = Some((gpio, driving && line.state.output));
                }
                Ok(Answer::Value(0))
            }
            MSG_GET_VALUE => {
                let level = match line.state.direction {
                    Direction::Out => line.state.output,
                    Direction::In | Direction::None => line.state.input,
                };
                Ok(Answer::Value(u8::from(level)))
            }
            MSG_SET_VALUE => {
                let value = match message.value {
                    0 => false,
                    1 => true,
                    _ => return Err(()),
                };
                let changed = line.state.output != value;
                line.state.output = value;
                if changed && line.state.direction == Direction::Out {
                    result.output_change = Some((gpio, value));
                }
                Ok(Answer::Value(0))
            }
            MSG_IRQ_TYPE => {
                if !irq_negotiated || line.state.direction == Direction::Out {
                    return Err(());
                }
                let trigger = valid_irq_type(message.value).ok_or(())?;
                if trigger == irq_type::NONE {
                    result.events.extend(line.disable_irq(gpio));
                } else {
                    if line.buffer.is_some() && trigger != line.state.irq_type {
                        // The trigger of an unmasked interrupt cannot change in place.
                        return Err(());
                    }
                    if trigger != line.state.irq_type {
                        line.state.latched = false;
                    }
                    line.state.irq_type = trigger;
                }
                Ok(Answer::Value(0))
            }
            _ => Err(()),
        }
    }

    /// The driver queued an event buffer (unmasking a line's interrupt): `request` is its
    /// readable part (`le16 gpio`), `head` identifies it. Returns a completion if it is
    /// answered at once: a latched edge or an active level fires, and a buffer that cannot be
    /// kept (bad line, interrupts disabled or not negotiated, one already queued, too short)
    /// goes back `INVALID`.
    pub fn queue_event_buffer(&mut self, head: u16, request: &[u8]) -> Option<EventCompletion> {
        let invalid = |gpio| EventCompletion {
            head,
            gpio,
            status: IRQ_STATUS_INVALID,
        };
        let Some(bytes) = request.get(..2) else {
            return Some(invalid(0));
        };
        let gpio = u16::from_le_bytes([bytes[0], bytes[1]]);
        if !self.irq_negotiated {
            return Some(invalid(gpio));
        }
        let Some(line) = self.lines.get_mut(usize::from(gpio)) else {
            return Some(invalid(gpio));
        };
        if line.state.irq_type == irq_type::NONE || line.buffer.is_some() {
            return Some(invalid(gpio));
        }
        if line.state.latched || line.level_active() {
            line.state.latched = false;
            return Some(EventCompletion {
                head,
                gpio,
                status: IRQ_STATUS_VALID,
            });
        }
        line.buffer = Some(head);
        line.state.unmasked = true;
        None
    }

    /// The host drives input `gpio` to `level` (the back-end's control socket, a test). Returns
    /// the event buffer to complete if this fires the line's interrupt; an edge on a masked
    /// line is latched instead. Out-of-range lines are ignored.
    pub fn set_input(&mut self, gpio: u16, level: bool) -> Option<EventCompletion> {
        let line = self.lines.get_mut(usize::from(gpio))?;
        let old = line.state.input;
        line.state.input = level;
        if line.state.direction == Direction::Out || line.state.irq_type == irq_type::NONE {
            return None;
        }
        let trigger = line.state.irq_type;
        let edge = match (old, level) {
            (false, true) => trigger & irq_type::EDGE_RISING != 0,
            (true, false) => trigger & irq_type::EDGE_FALLING != 0,
            _ => false,
        };
        if !(edge || line.level_active()) {
            return None;
        }
        match line.buffer.take() {
            Some(head) => {
                line.state.unmasked = false;
                Some(EventCompletion {
                    head,
                    gpio,
                    status: IRQ_STATUS_VALID,
                })
            }
            None => {
                // Masked: remember an edge (not a level) for the next unmask.
                if edge {
                    line.state.latched = true;
                }
                None
            }
        }
    }
}

/// One line as saved in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SavedLine {
    /// The line's name (`None` unnamed).
    pub name: Option<String>,
    /// `VIRTIO_GPIO_DIRECTION_*`.
    pub direction: u8,
    /// The value the driver set.
    pub output: bool,
    /// The level the host drives.
    pub input: bool,
    /// `VIRTIO_GPIO_IRQ_TYPE_*`.
    pub irq_type: u8,
    /// The head of the queued event buffer, while the line is unmasked. The transport's saved
    /// queue state must still hold that buffer as in flight.
    pub buffer: Option<u16>,
    /// An edge waiting for the next unmask.
    pub latched: bool,
}

/// Everything a snapshot needs to rebuild the device (lull-vmm wraps it in its own
/// serializable state); restore treats it as untrusted input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SavedDevice {
    /// The lines.
    pub lines: Vec<SavedLine>,
    /// Whether `VIRTIO_GPIO_F_IRQ` was negotiated.
    pub irq_negotiated: bool,
}

/// Why a saved device was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreError {
    /// The line configuration is not one a device could have.
    Config(ConfigError),
    /// A direction that is not `VIRTIO_GPIO_DIRECTION_*`.
    Direction {
        /// The line.
        line: usize,
        /// The value found.
        value: u8,
    },
    /// A trigger that is not `VIRTIO_GPIO_IRQ_TYPE_*`, or one on an output line.
    IrqType {
        /// The line.
        line: usize,
        /// The value found.
        value: u8,
    },
    /// A queued buffer or latched edge on a line whose interrupt is disabled, or a buffer
    /// without the interrupt feature.
    IrqState {
        /// The line.
        line: usize,
    },
}

impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(error) => write!(f, "saved virtio-gpio configuration: {error}"),
            Self::Direction { line, value } => {
                write!(f, "saved virtio-gpio line {line} has direction {value:#x}")
            }
            Self::IrqType { line, value } => write!(
                f,
                "saved virtio-gpio line {line} has an impossible interrupt type {value:#x}"
            ),
            Self::IrqState { line } => write!(
                f,
                "saved virtio-gpio line {line} has interrupt state without an enabled interrupt"
            ),
        }
    }
}

impl core::error::Error for RestoreError {}

impl VirtioGpioDevice {
    /// The device's state, for a snapshot (taken while the VM is paused).
    pub fn save(&self) -> SavedDevice {
        SavedDevice {
            lines: self
                .lines
                .iter()
                .map(|line| SavedLine {
                    name: line.state.name.clone(),
                    direction: line.state.direction as u8,
                    output: line.state.output,
                    input: line.state.input,
                    irq_type: line.state.irq_type,
                    buffer: line.buffer,
                    latched: line.state.latched,
                })
                .collect(),
            irq_negotiated: self.irq_negotiated,
        }
    }

    /// Rebuilds a device from a snapshot, checking that the state is one the device could
    /// have reached.
    pub fn restore(saved: &SavedDevice) -> Result<Self, RestoreError> {
        let names: Vec<&str> = saved
            .lines
            .iter()
            .map(|line| line.name.as_deref().unwrap_or(""))
            .collect();
        let mut device = Self::new(&names).map_err(RestoreError::Config)?;
        device.irq_negotiated = saved.irq_negotiated;
        for (index, (line, saved)) in device.lines.iter_mut().zip(&saved.lines).enumerate() {
            let direction = Direction::from_wire(u32::from(saved.direction)).ok_or(
                RestoreError::Direction {
                    line: index,
                    value: saved.direction,
                },
            )?;
            let trigger = valid_irq_type(u32::from(saved.irq_type))
                .filter(|&t| t == irq_type::NONE || direction != Direction::Out)
                .ok_or(RestoreError::IrqType {
                    line: index,
                    value: saved.irq_type,
                })?;
            let enabled = trigger != irq_type::NONE && device.irq_negotiated;
            if (saved.buffer.is_some() || saved.latched || trigger != irq_type::NONE) && !enabled {
                return Err(RestoreError::IrqState { line: index });
            }
            line.state.direction = direction;
            line.state.output = saved.output;
            line.state.input = saved.input;
            line.state.irq_type = trigger;
            line.state.latched = saved.latched;
            line.state.unmasked = saved.buffer.is_some();
            line.buffer = saved.buffer;
        }
        Ok(device)
    }
}

enum Answer {
    Value(u8),
    Names,
}
