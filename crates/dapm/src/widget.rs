//! Widgets: the kinds DAPM knows, their place in the power-up and power-down sequences, which
//! ones are endpoints, and how a widget is described when it is added.

use alloc::borrow::ToOwned;
use alloc::string::String;
use core::ops::BitOr;

/// What a widget is. The kind decides whether it can be an endpoint and where it falls in the
/// power sequences (Linux's `enum snd_soc_dapm_type`, the subset a codec and machine here need).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WidgetKind {
    /// Digital audio interface receiving a playback stream (`snd_soc_dapm_aif_in`): a source
    /// endpoint while its stream is active.
    AifIn,
    /// Digital audio interface sending a capture stream (`aif_out`): a sink endpoint while its
    /// stream is active.
    AifOut,
    /// Digital-to-analogue converter.
    Dac,
    /// Analogue-to-digital converter.
    Adc,
    /// Mixer: its inputs are gated by switch controls on the routes into it.
    Mixer,
    /// Multiplexer: exactly the input named by its enum control's selection is connected.
    Mux,
    /// Programmable-gain amplifier (volume does not affect power).
    Pga,
    /// Output driver.
    OutDrv,
    /// Generic output pin (sink endpoint while connected).
    Output,
    /// Speaker, usually with a machine event for an external amplifier (sink endpoint).
    Speaker,
    /// Headphone jack (sink endpoint).
    Headphone,
    /// Line output (sink endpoint).
    LineOut,
    /// Generic input pin (source endpoint while connected).
    Input,
    /// Microphone (source endpoint).
    Mic,
    /// Line input (source endpoint).
    LineIn,
    /// Signal generator: a source endpoint that needs no stream (and does not force the bias
    /// level to On by itself).
    Siggen,
    /// Supply (a regulator, clock or bias) powered while any widget it supplies is powered.
    Supply,
}

impl WidgetKind {
    /// Position in the power-up sequence (Linux's `dapm_up_seq`): supplies first, then
    /// interfaces and inputs, the converters, mixers and gain stages, outputs, speakers last.
    pub fn up_seq(self) -> u8 {
        match self {
            Self::Supply => 3,
            Self::AifIn | Self::AifOut => 5,
            Self::Mic | Self::Siggen | Self::Input | Self::Output => 6,
            Self::Mux => 7,
            Self::Dac => 8,
            Self::Mixer => 9,
            Self::Pga => 10,
            Self::Adc => 11,
            Self::OutDrv | Self::Headphone | Self::LineOut | Self::LineIn => 12,
            Self::Speaker => 13,
        }
    }

    /// Position in the power-down sequence (Linux's `dapm_down_seq`): speakers and outputs
    /// first, supplies last.
    pub fn down_seq(self) -> u8 {
        match self {
            Self::Adc => 3,
            Self::Speaker => 4,
            Self::Headphone | Self::LineOut | Self::LineIn | Self::OutDrv => 5,
            Self::Pga => 6,
            Self::Mixer => 7,
            Self::Dac => 8,
            Self::Mic | Self::Siggen | Self::Input | Self::Output => 9,
            Self::Mux => 11,
            Self::AifIn | Self::AifOut => 12,
            Self::Supply => 14,
        }
    }

    /// Whether the widget is a pin: an endpoint the machine driver connects and disconnects
    /// (`snd_soc_dapm_enable_pin`/`disable_pin`).
    pub fn is_pin(self) -> bool {
        self.is_source_pin() || self.is_sink_pin()
    }

    /// Source endpoints that need no stream.
    pub(crate) fn is_source_pin(self) -> bool {
        matches!(self, Self::Input | Self::Mic | Self::LineIn | Self::Siggen)
    }

    /// Sink endpoints that need no stream.
    pub(crate) fn is_sink_pin(self) -> bool {
        matches!(
            self,
            Self::Output | Self::Speaker | Self::Headphone | Self::LineOut
        )
    }

    /// The stream direction of a stream widget.
    pub(crate) fn stream_direction(self) -> Option<StreamDirection> {
        match self {
            Self::AifIn => Some(StreamDirection::Playback),
            Self::AifOut => Some(StreamDirection::Capture),
            _ => None,
        }
    }

    /// A short lower-case name for listings.
    pub fn name(self) -> &'static str {
        match self {
            Self::AifIn => "aif_in",
            Self::AifOut => "aif_out",
            Self::Dac => "dac",
            Self::Adc => "adc",
            Self::Mixer => "mixer",
            Self::Mux => "mux",
            Self::Pga => "pga",
            Self::OutDrv => "out_drv",
            Self::Output => "output",
            Self::Speaker => "spk",
            Self::Headphone => "hp",
            Self::LineOut => "line_out",
            Self::Input => "input",
            Self::Mic => "mic",
            Self::LineIn => "line_in",
            Self::Siggen => "siggen",
            Self::Supply => "supply",
        }
    }
}

/// Which way a stream moves audio.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamDirection {
    /// Host to codec: its power-down is delayed by `pmdown_time` after it stops.
    Playback,
    /// Codec to host: powered down as soon as it stops, as Linux does.
    Capture,
}

/// The power events a widget asks to be told about (Linux's `SND_SOC_DAPM_PRE_PMU` …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EventMask(u8);

impl EventMask {
    /// No events.
    pub const NONE: Self = Self(0);
    /// Before the widget powers up.
    pub const PRE_PMU: Self = Self(1);
    /// After the widget has powered up (an external amplifier is enabled here).
    pub const POST_PMU: Self = Self(2);
    /// Before the widget powers down (an external amplifier is disabled here).
    pub const PRE_PMD: Self = Self(4);
    /// After the widget has powered down.
    pub const POST_PMD: Self = Self(8);

    /// Whether every event in `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for EventMask {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// One power event, as emitted in a [`PowerUpdate`](crate::PowerUpdate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerEvent {
    /// `SND_SOC_DAPM_PRE_PMU`.
    PrePowerUp,
    /// `SND_SOC_DAPM_POST_PMU`.
    PostPowerUp,
    /// `SND_SOC_DAPM_PRE_PMD`.
    PrePowerDown,
    /// `SND_SOC_DAPM_POST_PMD`.
    PostPowerDown,
}

impl PowerEvent {
    pub(crate) fn mask(self) -> EventMask {
        match self {
            Self::PrePowerUp => EventMask::PRE_PMU,
            Self::PostPowerUp => EventMask::POST_PMU,
            Self::PrePowerDown => EventMask::PRE_PMD,
            Self::PostPowerDown => EventMask::POST_PMD,
        }
    }
}

/// The register bit that powers a widget (Linux's `reg`/`shift`/`on_val`/`off_val` for one
/// bit): set when powered, or cleared when `invert` (a power-*down* bit, as AC97's 0x26).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PowerBit {
    /// Register number or address, in the codec's own numbering.
    pub reg: u32,
    /// Bit position.
    pub shift: u8,
    /// The bit is a power-down bit.
    pub invert: bool,
}

impl PowerBit {
    pub(crate) fn mask(self) -> u32 {
        1u32.checked_shl(u32::from(self.shift)).unwrap_or(0)
    }

    pub(crate) fn value(self, on: bool) -> u32 {
        if on != self.invert {
            self.mask()
        } else {
            0
        }
    }
}

/// A widget as the codec or machine driver declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Widget {
    pub(crate) name: String,
    pub(crate) kind: WidgetKind,
    pub(crate) power_bit: Option<PowerBit>,
    pub(crate) events: EventMask,
    pub(crate) subseq: i32,
    pub(crate) stream: Option<String>,
    pub(crate) mux_control: Option<String>,
}

impl Widget {
    /// A widget of `kind` without register, events or stream.
    pub fn new(kind: WidgetKind, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            power_bit: None,
            events: EventMask::NONE,
            subseq: 0,
            stream: None,
            mux_control: None,
        }
    }

    /// An interface widget receiving the playback stream `stream`.
    pub fn aif_in(name: &str, stream: &str) -> Self {
        let mut widget = Self::new(WidgetKind::AifIn, name);
        widget.stream = Some(stream.to_owned());
        widget
    }

    /// An interface widget sending the capture stream `stream`.
    pub fn aif_out(name: &str, stream: &str) -> Self {
        let mut widget = Self::new(WidgetKind::AifOut, name);
        widget.stream = Some(stream.to_owned());
        widget
    }

    /// A mux whose selection is the enum control `control`; routes into it name the enum item
    /// that connects them.
    pub fn mux(name: &str, control: &str) -> Self {
        let mut widget = Self::new(WidgetKind::Mux, name);
        widget.mux_control = Some(control.to_owned());
        widget
    }

    /// The same widget powered by a register bit.
    #[must_use]
    pub fn power_bit(mut self, reg: u32, shift: u8, invert: bool) -> Self {
        self.power_bit = Some(PowerBit { reg, shift, invert });
        self
    }

    /// The same widget, reporting `events`.
    #[must_use]
    pub fn events(mut self, events: EventMask) -> Self {
        self.events = events;
        self
    }

    /// The same widget at sub-sequence `subseq` among widgets of its kind (ascending at power
    /// up, descending at power down).
    #[must_use]
    pub fn subseq(mut self, subseq: i32) -> Self {
        self.subseq = subseq;
        self
    }
}
