//! Lull's DAPM core (ASoC's Dynamic Audio Power Management): the graph of a sound card's
//! widgets and routes, and the decision of which widgets are powered, in which order, and when.
//!
//! Why a portable crate: DAPM is where an audio driver's correctness lives and where it is hard
//! to see — a DAC left powered while idle costs power, an amplifier enabled before its DAC pops,
//! a power-down racing a reopen clicks. The graph and its decisions are pure (STYLE.md §12), so
//! they are tested here on synthetic graphs, including a model test over random graphs; the
//! codec driver only applies the [`PowerUpdate`]s (HDA verbs, AC97 registers), the machine
//! driver reacts to its widgets' events (the `amp-enable` GPIO), and the kernel drives the
//! delayed power-down with an hrtimer at [`Dapm::next_deadline`].
//!
//! # The rules, as Linux's `soc-dapm.c`
//!
//! * Endpoints: an active stream's interface widget ([`Widget::aif_in`] for playback,
//!   [`Widget::aif_out`] for capture) and connected pins (microphones, line inputs, signal
//!   generators as sources; speakers, headphones, line outputs as sinks).
//! * A route is connected when its control allows it: a switch that is on, the selected item of
//!   a mux, a volume unless it is muted-to-zero (only when configured so; volume otherwise never
//!   affects power).
//! * A widget is powered exactly when it lies on a complete path — reachable from an active
//!   source endpoint and reaching an active sink endpoint over connected routes — or forced on
//!   ([`Dapm::force_enable_pin`], a microphone bias for jack detection). A supply is powered
//!   while any widget it supplies is.
//! * Changes are applied bias first (Off → Standby → Prepare), then widgets powering down in
//!   [`WidgetKind::down_seq`] order (speakers first, supplies last), then the control write that
//!   caused the change, then widgets powering up in [`WidgetKind::up_seq`] order (supplies
//!   first, speakers last), then the final bias (On, or Standby → Off when idle). Each step's
//!   pre events come before its power changes and register update, its post events after: an
//!   amplifier enabled at the speaker's post-power-up is enabled after its DAC and pin.
//! * A playback stream's stop powers down after `pmdown_time` (5000 ms by default); starting it
//!   again before then cancels the power-down, so nothing is power-cycled. Capture stops at once.
//!
//! ```
//! use lull_dapm::{Dapm, EventMask, PowerEvent, Widget, WidgetKind};
//!
//! let mut card = Dapm::new();
//! card.add_widget(Widget::aif_in("HDA RX", "Playback")).unwrap();
//! card.add_widget(Widget::new(WidgetKind::Dac, "DAC")).unwrap();
//! let amp = EventMask::POST_PMU | EventMask::PRE_PMD;
//! card.add_widget(Widget::new(WidgetKind::Speaker, "Speaker").events(amp)).unwrap();
//! card.add_route("DAC", None, "HDA RX").unwrap();
//! card.add_route("Speaker", None, "DAC").unwrap();
//!
//! let up = card.stream_start("Playback", 0).unwrap();
//! assert_eq!(up.events().collect::<Vec<_>>(), [("Speaker", PowerEvent::PostPowerUp)]);
//! // Stopped at t = 1 s: nothing happens until pmdown_time has passed.
//! assert!(card.stream_stop("Playback", 1_000_000_000).unwrap().is_empty());
//! assert_eq!(card.next_deadline(), Some(6_000_000_000));
//! let down = card.advance(6_000_000_000);
//! assert_eq!(down.events().collect::<Vec<_>>(), [("Speaker", PowerEvent::PrePowerDown)]);
//! assert!(card.powered_widgets().is_empty());
//! ```

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod graph;
#[cfg(test)]
mod model_tests;
mod ops;
#[cfg(test)]
mod tests;
mod widget;

pub use graph::{Dapm, DEFAULT_PMDOWN_TIME_MS};
pub use ops::{BiasLevel, ControlValue, DapmBackend, DapmError, DapmOp, PowerUpdate};
pub use widget::{EventMask, PowerBit, PowerEvent, StreamDirection, Widget, WidgetKind};
