//! The output of a power decision: an ordered batch of bias changes, widget events, widget power
//! changes, register updates and control writes, for the codec and machine drivers to apply.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::widget::PowerEvent;

/// The card's bias level (Linux's `enum snd_soc_bias_level`), ordered from least to most power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BiasLevel {
    /// Everything off.
    Off,
    /// Low power, ready to come up quickly (references and VMID up).
    Standby,
    /// Transitional, on the way to or from On.
    Prepare,
    /// Audio paths powered.
    On,
}

impl BiasLevel {
    /// `Off`, `Standby`, `Prepare`, `On` as Linux's debugfs `bias_level` file prints them.
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "Off",
            Self::Standby => "Standby",
            Self::Prepare => "Prepare",
            Self::On => "On",
        }
    }
}

impl fmt::Display for BiasLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A control's new value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ControlValue {
    /// A switch, on or off.
    Switch(bool),
    /// An enum (mux selection): the item's index and text.
    Enum(usize, String),
    /// A volume.
    Volume(i32),
}

/// One step of a power update, in the order it must be applied.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DapmOp {
    /// Set the card's bias level (the codec's `set_bias_level`).
    Bias(BiasLevel),
    /// Tell the widget's owner about a power transition (a machine driver enables or disables
    /// its amplifier here).
    Event {
        /// The widget.
        widget: String,
        /// Which transition.
        event: PowerEvent,
    },
    /// The widget is now powered (`true`) or not: a codec without power registers maps
    /// widgets to its own commands here (HDA `SET_POWER_STATE` verbs, for example).
    Power {
        /// The widget.
        widget: String,
        /// Its new state.
        on: bool,
    },
    /// Update bits of a register: the power bits of every widget of one sequence step that
    /// shares the register, coalesced into one write as Linux's `dapm_seq_run_coalesced`.
    UpdateBits {
        /// The register.
        reg: u32,
        /// Bits to change.
        mask: u32,
        /// Their new values.
        value: u32,
    },
    /// Write a control's new value to the hardware: between the power-down and power-up
    /// sequences, so a path is never live through a half-powered chain.
    Control {
        /// The control.
        name: String,
        /// Its value.
        value: ControlValue,
    },
}

/// What a change did to the card: the operations to apply, in order (empty when nothing
/// changed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerUpdate {
    /// The operations.
    pub ops: Vec<DapmOp>,
}

impl PowerUpdate {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The widget events, in order, as `(widget, event)`.
    pub fn events(&self) -> impl Iterator<Item = (&str, PowerEvent)> {
        self.ops.iter().filter_map(|op| match op {
            DapmOp::Event { widget, event } => Some((widget.as_str(), *event)),
            _ => None,
        })
    }

    /// The widgets powered up and down, in order, as `(widget, on)`.
    pub fn power_changes(&self) -> impl Iterator<Item = (&str, bool)> {
        self.ops.iter().filter_map(|op| match op {
            DapmOp::Power { widget, on } => Some((widget.as_str(), *on)),
            _ => None,
        })
    }

    /// Applies the operations through `backend`, in order.
    pub fn apply(&self, backend: &mut impl DapmBackend) {
        for op in &self.ops {
            match op {
                DapmOp::Bias(level) => backend.set_bias(*level),
                DapmOp::Event { widget, event } => backend.widget_event(widget, *event),
                DapmOp::Power { widget, on } => backend.widget_power(widget, *on),
                DapmOp::UpdateBits { reg, mask, value } => backend.update_bits(*reg, *mask, *value),
                DapmOp::Control { name, value } => backend.control(name, value),
            }
        }
    }
}

/// What applies a [`PowerUpdate`]: the codec driver (registers, verbs, bias) and the machine
/// driver (events). Every method but `update_bits` has an empty default.
///
/// Context: called in order from the thread that made the change (a stream open, a control
/// write, the pmdown timer's work); methods may sleep (a GPIO on a sleeping chip, a codec
/// verb that waits for its answer).
pub trait DapmBackend {
    /// Updates `mask` bits of register `reg` to `value`.
    fn update_bits(&mut self, reg: u32, mask: u32, value: u32);

    /// A widget's power event.
    fn widget_event(&mut self, widget: &str, event: PowerEvent) {
        let _ = (widget, event);
    }

    /// A widget's new power state.
    fn widget_power(&mut self, widget: &str, on: bool) {
        let _ = (widget, on);
    }

    /// The card's new bias level.
    fn set_bias(&mut self, level: BiasLevel) {
        let _ = level;
    }

    /// A control's new value.
    fn control(&mut self, name: &str, value: &ControlValue) {
        let _ = (name, value);
    }
}

/// Why a DAPM call was refused; the graph is unchanged when one is returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DapmError {
    /// No widget of this name.
    UnknownWidget(String),
    /// No control of this name.
    UnknownControl(String),
    /// No stream of this name.
    UnknownStream(String),
    /// A widget or control of this name already exists.
    Duplicate(String),
    /// The control exists but is of another kind (a switch set as a volume).
    WrongControlKind(String),
    /// The mux has no such item, or a route into a mux does not name one of its items.
    UnknownMuxItem {
        /// The mux's enum control.
        control: String,
        /// The item asked for.
        item: String,
    },
    /// A volume outside its control's range.
    OutOfRange {
        /// The control.
        control: String,
        /// The value asked for.
        value: i32,
    },
    /// Pins can be connected and disconnected; this widget is not a pin.
    NotAPin(String),
    /// A mux widget without an enum control, or a stream name used for both directions.
    Invalid(String),
}

impl fmt::Display for DapmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownWidget(name) => write!(f, "no DAPM widget {name:?}"),
            Self::UnknownControl(name) => write!(f, "no control {name:?}"),
            Self::UnknownStream(name) => write!(f, "no stream {name:?}"),
            Self::Duplicate(name) => write!(f, "{name:?} already exists"),
            Self::WrongControlKind(name) => write!(f, "control {name:?} is of another kind"),
            Self::UnknownMuxItem { control, item } => {
                write!(f, "control {control:?} has no item {item:?}")
            }
            Self::OutOfRange { control, value } => {
                write!(f, "value {value} is out of range for control {control:?}")
            }
            Self::NotAPin(name) => write!(f, "widget {name:?} is not a pin"),
            Self::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl core::error::Error for DapmError {}
