//! The graph and its power decisions (Linux's `dapm_power_widgets`), streams with delayed
//! power-down, controls, pins and the state dump.

use alloc::borrow::ToOwned;
use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::ops::{BiasLevel, ControlValue, DapmError, DapmOp, PowerUpdate};
use crate::widget::{PowerEvent, StreamDirection, Widget, WidgetKind};

/// Linux's default delay between a playback stream's stop and its power-down, in milliseconds.
pub const DEFAULT_PMDOWN_TIME_MS: u64 = 5000;

const NS_PER_MS: u64 = 1_000_000;

/// What gates a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gate {
    /// A static route (`"static"` in the dump).
    Always,
    /// Connected while the switch (or volume, see [`ControlKind::Volume`]) control allows.
    Control(usize),
    /// Connected while the mux control selects this item.
    MuxItem { control: usize, item: usize },
}

#[derive(Clone, Debug)]
struct Route {
    source: usize,
    sink: usize,
    gate: Gate,
    /// A route from or to a supply: it powers, it carries no audio.
    supply: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ControlKind {
    Switch {
        on: bool,
    },
    Enum {
        items: Vec<String>,
        selected: usize,
    },
    /// A volume never gates a route unless `mute_at_min`, in which case its minimum
    /// disconnects the routes it is attached to (a muted-to-zero volume).
    Volume {
        min: i32,
        max: i32,
        value: i32,
        mute_at_min: bool,
    },
}

#[derive(Clone, Debug)]
struct Control {
    name: String,
    kind: ControlKind,
}

#[derive(Clone, Debug)]
struct Stream {
    name: String,
    direction: StreamDirection,
    active: bool,
    /// When a stopped playback stream's power-down is due (nanoseconds, caller's clock).
    pending_stop: Option<u64>,
}

#[derive(Clone, Debug)]
struct Node {
    widget: Widget,
    stream: Option<usize>,
    mux_control: Option<usize>,
    /// Pin state (`snd_soc_dapm_enable_pin`); meaningful for pins only.
    connected: bool,
    /// Powered whatever the paths say (`snd_soc_dapm_force_enable_pin`).
    forced: bool,
    powered: bool,
}

/// A card's DAPM context: widgets, routes, controls, streams, and the power state DAPM decided.
///
/// Every change ([`stream_start`](Self::stream_start), [`set_switch`](Self::set_switch),
/// [`disable_pin`](Self::disable_pin), [`advance`](Self::advance) …) re-decides power at once and
/// returns the [`PowerUpdate`] to apply. There is no clock inside: stopping a playback stream
/// records a deadline `pmdown_time` after the `now` given, [`next_deadline`](Self::next_deadline)
/// says when the caller should come back (the kernel arms an hrtimer for it, so an idle card
/// costs no timer ticks), and [`advance`](Self::advance) with that time powers down.
///
/// Context: plain data; the kernel keeps it behind the card's mutex (Linux's `dapm_mutex`) and
/// applies each update before releasing it.
#[derive(Clone, Debug)]
pub struct Dapm {
    nodes: Vec<Node>,
    routes: Vec<Route>,
    controls: Vec<Control>,
    streams: Vec<Stream>,
    bias: BiasLevel,
    idle_bias_off: bool,
    pmdown_time_ms: u64,
}

impl Default for Dapm {
    fn default() -> Self {
        Self::new()
    }
}

impl Dapm {
    /// An empty context: bias Off, idle bias off (idle means Off, not Standby), `pmdown_time`
    /// 5000 ms.
    pub fn new() -> Self {
        Self {
            nodes: Vec::new(),
            routes: Vec::new(),
            controls: Vec::new(),
            streams: Vec::new(),
            bias: BiasLevel::Off,
            idle_bias_off: true,
            pmdown_time_ms: DEFAULT_PMDOWN_TIME_MS,
        }
    }

    /// The delay between a playback stream's stop and its power-down.
    pub fn pmdown_time_ms(&self) -> u64 {
        self.pmdown_time_ms
    }

    /// Sets the delay (Linux's `pmdown_time` sysfs file); applies to later stops.
    pub fn set_pmdown_time_ms(&mut self, milliseconds: u64) {
        self.pmdown_time_ms = milliseconds;
    }

    /// Whether the idle card goes to Off (`true`, the default) or stays in Standby.
    pub fn set_idle_bias_off(&mut self, off: bool) -> PowerUpdate {
        self.idle_bias_off = off;
        self.power_widgets(None)
    }

    /// The card's bias level.
    pub fn bias_level(&self) -> BiasLevel {
        self.bias
    }

    fn widget_index(&self, name: &str) -> Result<usize, DapmError> {
        self.nodes
            .iter()
            .position(|n| n.widget.name == name)
            .ok_or_else(|| DapmError::UnknownWidget(name.to_owned()))
    }

    fn control_index(&self, name: &str) -> Result<usize, DapmError> {
        self.controls
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| DapmError::UnknownControl(name.to_owned()))
    }

    fn stream_index(&self, name: &str) -> Result<usize, DapmError> {
        self.streams
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| DapmError::UnknownStream(name.to_owned()))
    }

    fn add_control(&mut self, name: &str, kind: ControlKind) -> Result<(), DapmError> {
        if self.controls.iter().any(|c| c.name == name) {
            return Err(DapmError::Duplicate(name.to_owned()));
        }
        self.controls.push(Control {
            name: name.to_owned(),
            kind,
        });
        Ok(())
    }

    /// Adds a switch control (a mixer input's `... Switch`), initially `on` or off.
    pub fn add_switch(&mut self, name: &str, on: bool) -> Result<(), DapmError> {
        self.add_control(name, ControlKind::Switch { on })
    }

    /// Adds an enum control (a mux's selection) with its items, initially `items[selected]`.
    pub fn add_enum(
        &mut self,
        name: &str,
        items: &[&str],
        selected: usize,
    ) -> Result<(), DapmError> {
        if selected >= items.len() {
            return Err(DapmError::Invalid(format!(
                "enum {name:?} needs an item at index {selected}"
            )));
        }
        self.add_control(
            name,
            ControlKind::Enum {
                items: items.iter().map(|i| (*i).to_owned()).collect(),
                selected,
            },
        )
    }

    /// Adds a volume control over `min..=max`. It does not affect power, unless `mute_at_min`:
    /// then routes it is attached to are disconnected while it is at `min`.
    pub fn add_volume(
        &mut self,
        name: &str,
        min: i32,
        max: i32,
        value: i32,
        mute_at_min: bool,
    ) -> Result<(), DapmError> {
        if min > max || !(min..=max).contains(&value) {
            return Err(DapmError::OutOfRange {
                control: name.to_owned(),
                value,
            });
        }
        self.add_control(
            name,
            ControlKind::Volume {
                min,
                max,
                value,
                mute_at_min,
            },
        )
    }

    /// Adds a widget. A stream widget's stream is created with it (or joined, if another
    /// widget of the same direction already named it); a mux's enum control must exist.
    pub fn add_widget(&mut self, widget: Widget) -> Result<(), DapmError> {
        if self.nodes.iter().any(|n| n.widget.name == widget.name) {
            return Err(DapmError::Duplicate(widget.name));
        }
        let mux_control = match (widget.kind, &widget.mux_control) {
            (WidgetKind::Mux, Some(control)) => {
                let index = self.control_index(control)?;
                if !matches!(self.controls[index].kind, ControlKind::Enum { .. }) {
                    return Err(DapmError::WrongControlKind(control.clone()));
                }
                Some(index)
            }
            (WidgetKind::Mux, None) => {
                return Err(DapmError::Invalid(format!(
                    "mux {:?} needs an enum control",
                    widget.name
                )))
            }
            _ => None,
        };
        let stream = match (&widget.stream, widget.kind.stream_direction()) {
            (Some(name), Some(direction)) => Some(match self.stream_index(name) {
                Ok(index) if self.streams[index].direction == direction => index,
                Ok(_) => {
                    return Err(DapmError::Invalid(format!(
                        "stream {name:?} is bound to widgets of both directions"
                    )))
                }
                Err(_) => {
                    self.streams.push(Stream {
                        name: name.clone(),
                        direction,
                        active: false,
                        pending_stop: None,
                    });
                    self.streams.len() - 1
                }
            }),
            _ => None,
        };
        self.nodes.push(Node {
            widget,
            stream,
            mux_control,
            connected: true,
            forced: false,
            powered: false,
        });
        Ok(())
    }

    /// Adds a route from `source` to `sink`, in Linux's `{sink, control, source}` order. Into a
    /// mux, `control` is the enum item that selects this input; otherwise it names a switch or
    /// volume control gating the route (`None`: always connected). Re-decides power.
    pub fn add_route(
        &mut self,
        sink: &str,
        control: Option<&str>,
        source: &str,
    ) -> Result<PowerUpdate, DapmError> {
        let sink_index = self.widget_index(sink)?;
        let source_index = self.widget_index(source)?;
        let gate = match (self.nodes[sink_index].mux_control, control) {
            (Some(mux), Some(item)) => {
                let ControlKind::Enum { items, .. } = &self.controls[mux].kind else {
                    return Err(DapmError::WrongControlKind(self.controls[mux].name.clone()));
                };
                let item_index = items.iter().position(|i| i == item).ok_or_else(|| {
                    DapmError::UnknownMuxItem {
                        control: self.controls[mux].name.clone(),
                        item: item.to_owned(),
                    }
                })?;
                Gate::MuxItem {
                    control: mux,
                    item: item_index,
                }
            }
            (Some(mux), None) => {
                return Err(DapmError::UnknownMuxItem {
                    control: self.controls[mux].name.clone(),
                    item: String::new(),
                })
            }
            (None, Some(name)) => {
                let index = self.control_index(name)?;
                if matches!(self.controls[index].kind, ControlKind::Enum { .. }) {
                    return Err(DapmError::WrongControlKind(name.to_owned()));
                }
                Gate::Control(index)
            }
            (None, None) => Gate::Always,
        };
        let supply = self.nodes[source_index].widget.kind == WidgetKind::Supply
            || self.nodes[sink_index].widget.kind == WidgetKind::Supply;
        self.routes.push(Route {
            source: source_index,
            sink: sink_index,
            gate,
            supply,
        });
        Ok(self.power_widgets(None))
    }

    fn route_connected(&self, route: &Route) -> bool {
        match route.gate {
            Gate::Always => true,
            Gate::Control(index) => match self.controls[index].kind {
                ControlKind::Switch { on } => on,
                ControlKind::Volume {
                    min,
                    value,
                    mute_at_min,
                    ..
                } => !(mute_at_min && value == min),
                ControlKind::Enum { .. } => false,
            },
            Gate::MuxItem { control, item } => matches!(
                self.controls[control].kind,
                ControlKind::Enum { selected, .. } if selected == item
            ),
        }
    }

    fn is_source_endpoint(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        match node.widget.kind {
            WidgetKind::AifIn => node.stream.is_some_and(|s| self.streams[s].active),
            kind => kind.is_source_pin() && node.connected,
        }
    }

    fn is_sink_endpoint(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        match node.widget.kind {
            WidgetKind::AifOut => node.stream.is_some_and(|s| self.streams[s].active),
            kind => kind.is_sink_pin() && node.connected,
        }
    }

    /// Widgets reachable from `starts` over connected audio routes, forward (source to sink)
    /// or backward.
    fn reach(&self, starts: impl Iterator<Item = usize>, forward: bool) -> Vec<bool> {
        let mut seen = vec![false; self.nodes.len()];
        let mut queue: VecDeque<usize> = VecDeque::new();
        for start in starts {
            if !seen[start] {
                seen[start] = true;
                queue.push_back(start);
            }
        }
        while let Some(at) = queue.pop_front() {
            for route in &self.routes {
                if route.supply || !self.route_connected(route) {
                    continue;
                }
                let (from, to) = if forward {
                    (route.source, route.sink)
                } else {
                    (route.sink, route.source)
                };
                if from == at && !seen[to] {
                    seen[to] = true;
                    queue.push_back(to);
                }
            }
        }
        seen
    }

    /// The power each widget should have now: on a complete path from an active source
    /// endpoint to an active sink endpoint, forced on, or a supply of a powered widget.
    fn decide(&self) -> Vec<bool> {
        let count = self.nodes.len();
        let from_sources = self.reach((0..count).filter(|&i| self.is_source_endpoint(i)), true);
        let to_sinks = self.reach((0..count).filter(|&i| self.is_sink_endpoint(i)), false);
        let mut power: Vec<bool> = (0..count)
            .map(|i| {
                self.nodes[i].forced
                    || (self.nodes[i].widget.kind != WidgetKind::Supply
                        && from_sources[i]
                        && to_sinks[i])
            })
            .collect();
        // Supplies (which may feed each other) until nothing changes.
        loop {
            let mut changed = false;
            for route in &self.routes {
                if route.supply
                    && self.nodes[route.source].widget.kind == WidgetKind::Supply
                    && !power[route.source]
                    && power[route.sink]
                    && self.route_connected(route)
                {
                    power[route.source] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        power
    }

    /// Re-decides power and sequences the changes (Linux's `dapm_power_widgets`): bias first,
    /// then the power-down sequence, then the control write that caused this, then the
    /// power-up sequence, then the final bias.
    fn power_widgets(&mut self, control: Option<DapmOp>) -> PowerUpdate {
        let power = self.decide();
        let mut up: Vec<usize> = Vec::new();
        let mut down: Vec<usize> = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            match (node.powered, power[index]) {
                (false, true) => up.push(index),
                (true, false) => down.push(index),
                _ => {}
            }
        }
        let target = if power
            .iter()
            .enumerate()
            .any(|(i, &on)| on && self.nodes[i].widget.kind != WidgetKind::Siggen)
        {
            BiasLevel::On
        } else if self.idle_bias_off {
            BiasLevel::Off
        } else {
            BiasLevel::Standby
        };

        let mut update = PowerUpdate::default();
        if self.bias == BiasLevel::Off && target != BiasLevel::Off {
            self.set_bias(BiasLevel::Standby, &mut update);
        }
        if (target == BiasLevel::On) != (self.bias == BiasLevel::On) {
            self.set_bias(BiasLevel::Prepare, &mut update);
        }
        self.run_sequence(&mut down, false, &mut update);
        if let Some(op) = control {
            update.ops.push(op);
        }
        self.run_sequence(&mut up, true, &mut update);
        if self.bias == BiasLevel::Prepare && target != BiasLevel::On {
            self.set_bias(BiasLevel::Standby, &mut update);
        }
        if self.bias == BiasLevel::Standby && target == BiasLevel::Off {
            self.set_bias(BiasLevel::Off, &mut update);
        }
        if self.bias == BiasLevel::Prepare && target == BiasLevel::On {
            self.set_bias(BiasLevel::On, &mut update);
        }
        update
    }

    fn set_bias(&mut self, level: BiasLevel, update: &mut PowerUpdate) {
        if self.bias != level {
            self.bias = level;
            update.ops.push(DapmOp::Bias(level));
        }
    }

    /// Sorts `widgets` into sequence order and emits them step by step: widgets of one step
    /// (same sequence position, sub-sequence and register) get their pre events, their power
    /// changes and one coalesced register update, then their post events.
    fn run_sequence(&mut self, widgets: &mut [usize], up: bool, update: &mut PowerUpdate) {
        let key = |node: &Node| {
            let kind = node.widget.kind;
            let seq = if up { kind.up_seq() } else { kind.down_seq() };
            let subseq = if up {
                node.widget.subseq
            } else {
                node.widget.subseq.saturating_neg()
            };
            (seq, subseq, node.widget.power_bit.map(|bit| bit.reg))
        };
        // Stable: widgets of equal keys keep their order of creation, as Linux's list insert.
        widgets.sort_by_key(|&index| key(&self.nodes[index]));
        let (pre, post) = if up {
            (PowerEvent::PrePowerUp, PowerEvent::PostPowerUp)
        } else {
            (PowerEvent::PrePowerDown, PowerEvent::PostPowerDown)
        };
        let mut start = 0;
        while start < widgets.len() {
            let step_key = key(&self.nodes[widgets[start]]);
            let end = widgets[start..]
                .iter()
                .position(|&index| key(&self.nodes[index]) != step_key)
                .map_or(widgets.len(), |offset| start + offset);
            let step = &widgets[start..end];
            self.emit_events(step, pre, update);
            let (mut mask, mut value) = (0u32, 0u32);
            for &index in step {
                let node = &mut self.nodes[index];
                node.powered = up;
                update.ops.push(DapmOp::Power {
                    widget: node.widget.name.clone(),
                    on: up,
                });
                if let Some(bit) = node.widget.power_bit {
                    mask |= bit.mask();
                    value = (value & !bit.mask()) | bit.value(up);
                }
            }
            if let (Some(reg), true) = (step_key.2, mask != 0) {
                update.ops.push(DapmOp::UpdateBits { reg, mask, value });
            }
            self.emit_events(step, post, update);
            start = end;
        }
    }

    fn emit_events(&self, step: &[usize], event: PowerEvent, update: &mut PowerUpdate) {
        for &index in step {
            let widget = &self.nodes[index].widget;
            if widget.events.contains(event.mask()) {
                update.ops.push(DapmOp::Event {
                    widget: widget.name.clone(),
                    event,
                });
            }
        }
    }

    /// Expires every pending stop due at `now_ns`; returns whether any did.
    fn expire(&mut self, now_ns: u64, except: Option<usize>) -> bool {
        let mut expired = false;
        for (index, stream) in self.streams.iter_mut().enumerate() {
            if Some(index) == except {
                continue;
            }
            if stream.pending_stop.is_some_and(|due| due <= now_ns) {
                stream.pending_stop = None;
                stream.active = false;
                expired = true;
            }
        }
        expired
    }

    /// A stream starts (Linux's `SND_SOC_DAPM_STREAM_START` at prepare). If its power-down was
    /// pending it is cancelled and nothing is power-cycled; other streams' stops that are due
    /// by `now_ns` are carried out in the same update.
    pub fn stream_start(&mut self, stream: &str, now_ns: u64) -> Result<PowerUpdate, DapmError> {
        let index = self.stream_index(stream)?;
        let expired = self.expire(now_ns, Some(index));
        let target = &mut self.streams[index];
        target.pending_stop = None;
        let started = !target.active;
        target.active = true;
        Ok(if started || expired {
            self.power_widgets(None)
        } else {
            PowerUpdate::default()
        })
    }

    /// A stream stops. A playback stream stays powered for `pmdown_time` (so a quick reopen
    /// does not pop); a capture stream, or any stream with `pmdown_time` 0, powers down now.
    /// A second stop keeps the first deadline.
    pub fn stream_stop(&mut self, stream: &str, now_ns: u64) -> Result<PowerUpdate, DapmError> {
        let index = self.stream_index(stream)?;
        let delay_ns = self.pmdown_time_ms.saturating_mul(NS_PER_MS);
        let target = &mut self.streams[index];
        if target.active && target.pending_stop.is_none() {
            if target.direction == StreamDirection::Playback && delay_ns > 0 {
                target.pending_stop = Some(now_ns.saturating_add(delay_ns));
            } else {
                target.active = false;
            }
        }
        let expired = self.expire(now_ns, None);
        let stopped_now = !self.streams[index].active;
        Ok(if expired || stopped_now {
            self.power_widgets(None)
        } else {
            PowerUpdate::default()
        })
    }

    /// Carries out every delayed power-down due by `now_ns` (the pmdown timer fired).
    pub fn advance(&mut self, now_ns: u64) -> PowerUpdate {
        if self.expire(now_ns, None) {
            self.power_widgets(None)
        } else {
            PowerUpdate::default()
        }
    }

    /// When the next delayed power-down is due, if any: arm a timer for it and call
    /// [`advance`](Self::advance) then.
    pub fn next_deadline(&self) -> Option<u64> {
        self.streams.iter().filter_map(|s| s.pending_stop).min()
    }

    /// Whether the stream is active (including while its power-down is pending).
    pub fn stream_active(&self, stream: &str) -> Result<bool, DapmError> {
        Ok(self.streams[self.stream_index(stream)?].active)
    }

    fn set_control(&mut self, name: &str, value: ControlValue) -> Result<PowerUpdate, DapmError> {
        let index = self.control_index(name)?;
        let control = &mut self.controls[index];
        let changed = match (&mut control.kind, &value) {
            (ControlKind::Switch { on }, ControlValue::Switch(new)) => {
                core::mem::replace(on, *new) != *new
            }
            (ControlKind::Enum { selected, .. }, ControlValue::Enum(new, _)) => {
                core::mem::replace(selected, *new) != *new
            }
            (ControlKind::Volume { value: current, .. }, ControlValue::Volume(new)) => {
                core::mem::replace(current, *new) != *new
            }
            _ => return Err(DapmError::WrongControlKind(name.to_owned())),
        };
        Ok(if changed {
            self.power_widgets(Some(DapmOp::Control {
                name: name.to_owned(),
                value,
            }))
        } else {
            PowerUpdate::default()
        })
    }

    /// Sets a switch control.
    pub fn set_switch(&mut self, name: &str, on: bool) -> Result<PowerUpdate, DapmError> {
        self.set_control(name, ControlValue::Switch(on))
    }

    /// Selects a mux item by its text.
    pub fn set_enum(&mut self, name: &str, item: &str) -> Result<PowerUpdate, DapmError> {
        let index = self.control_index(name)?;
        let ControlKind::Enum { items, .. } = &self.controls[index].kind else {
            return Err(DapmError::WrongControlKind(name.to_owned()));
        };
        let position =
            items
                .iter()
                .position(|i| i == item)
                .ok_or_else(|| DapmError::UnknownMuxItem {
                    control: name.to_owned(),
                    item: item.to_owned(),
                })?;
        self.set_control(name, ControlValue::Enum(position, item.to_owned()))
    }

    /// Sets a volume control (in range).
    pub fn set_volume(&mut self, name: &str, value: i32) -> Result<PowerUpdate, DapmError> {
        let index = self.control_index(name)?;
        match self.controls[index].kind {
            ControlKind::Volume { min, max, .. } if (min..=max).contains(&value) => {
                self.set_control(name, ControlValue::Volume(value))
            }
            ControlKind::Volume { .. } => Err(DapmError::OutOfRange {
                control: name.to_owned(),
                value,
            }),
            _ => Err(DapmError::WrongControlKind(name.to_owned())),
        }
    }

    /// A control's current value.
    pub fn control_value(&self, name: &str) -> Result<ControlValue, DapmError> {
        let control = &self.controls[self.control_index(name)?];
        Ok(match &control.kind {
            ControlKind::Switch { on } => ControlValue::Switch(*on),
            ControlKind::Enum { items, selected } => {
                ControlValue::Enum(*selected, items.get(*selected).cloned().unwrap_or_default())
            }
            ControlKind::Volume { value, .. } => ControlValue::Volume(*value),
        })
    }

    /// Every control with its current value, in order of creation (for an `amixer`-like
    /// listing).
    pub fn controls(&self) -> Vec<(&str, ControlValue)> {
        self.controls
            .iter()
            .filter_map(|c| Some((c.name.as_str(), self.control_value(&c.name).ok()?)))
            .collect()
    }

    /// The items of an enum control.
    pub fn enum_items(&self, name: &str) -> Result<Vec<&str>, DapmError> {
        match &self.controls[self.control_index(name)?].kind {
            ControlKind::Enum { items, .. } => Ok(items.iter().map(String::as_str).collect()),
            _ => Err(DapmError::WrongControlKind(name.to_owned())),
        }
    }

    /// A volume control's range, `(min, max)`.
    pub fn volume_range(&self, name: &str) -> Result<(i32, i32), DapmError> {
        match self.controls[self.control_index(name)?].kind {
            ControlKind::Volume { min, max, .. } => Ok((min, max)),
            _ => Err(DapmError::WrongControlKind(name.to_owned())),
        }
    }

    fn set_pin(&mut self, name: &str, connected: bool) -> Result<PowerUpdate, DapmError> {
        let index = self.widget_index(name)?;
        let node = &mut self.nodes[index];
        if !connected && node.forced {
            // Disabling a forced widget releases the force, as Linux's `dapm_set_pin`.
            node.forced = false;
            if node.widget.kind.is_pin() {
                node.connected = false;
            }
            return Ok(self.power_widgets(None));
        }
        if !node.widget.kind.is_pin() {
            return Err(DapmError::NotAPin(name.to_owned()));
        }
        if node.connected == connected {
            return Ok(PowerUpdate::default());
        }
        node.connected = connected;
        Ok(self.power_widgets(None))
    }

    /// Powers a widget whatever its paths (`snd_soc_dapm_force_enable_pin`): a microphone bias
    /// kept up for jack detection, for example. Any widget may be forced; a forced pin is also
    /// connected. [`disable_pin`](Self::disable_pin) releases the force.
    pub fn force_enable_pin(&mut self, name: &str) -> Result<PowerUpdate, DapmError> {
        let index = self.widget_index(name)?;
        let node = &mut self.nodes[index];
        if node.forced {
            return Ok(PowerUpdate::default());
        }
        node.forced = true;
        if node.widget.kind.is_pin() {
            node.connected = true;
        }
        Ok(self.power_widgets(None))
    }

    /// Connects a pin (`snd_soc_dapm_enable_pin` followed by `sync`).
    pub fn enable_pin(&mut self, name: &str) -> Result<PowerUpdate, DapmError> {
        self.set_pin(name, true)
    }

    /// Disconnects a pin (a jack unplugged, a speaker switched off by the machine), and
    /// releases a force on any widget.
    pub fn disable_pin(&mut self, name: &str) -> Result<PowerUpdate, DapmError> {
        self.set_pin(name, false)
    }

    /// Whether the widget is powered.
    pub fn is_powered(&self, name: &str) -> Result<bool, DapmError> {
        Ok(self.nodes[self.widget_index(name)?].powered)
    }

    /// The powered widgets, in order of creation.
    pub fn powered_widgets(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter(|n| n.powered)
            .map(|n| n.widget.name.as_str())
            .collect()
    }

    /// Every widget's name, in order of creation.
    pub fn widget_names(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.widget.name.as_str()).collect()
    }

    /// The state of the card and of every widget, for the shell's `dapm` command, in the
    /// layout of Linux's per-widget debugfs files:
    ///
    /// ```text
    /// Speaker: On  in 1 out 1
    ///  in  "static" "Speaker PGA"
    /// ```
    ///
    /// `in`/`out` count the active source endpoints that reach the widget and the active sink
    /// endpoints it reaches; the routes listed are the connected ones.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "bias: {}", self.bias);
        let _ = writeln!(out, "pmdown_time: {} ms", self.pmdown_time_ms);
        for stream in &self.streams {
            let direction = match stream.direction {
                StreamDirection::Playback => "playback",
                StreamDirection::Capture => "capture",
            };
            let state = match (stream.active, stream.pending_stop) {
                (true, Some(due)) => format!("active, power-down due at {due} ns"),
                (true, None) => "active".to_owned(),
                (false, _) => "inactive".to_owned(),
            };
            let _ = writeln!(out, "stream {} ({direction}): {state}", stream.name);
        }
        let reach = self.endpoint_reach();
        for index in 0..self.nodes.len() {
            self.write_widget(&mut out, index, &reach);
        }
        out
    }

    /// One widget's part of the [`dump`](Self::dump), for `dapm <widget>`.
    pub fn dump_widget(&self, name: &str) -> Result<String, DapmError> {
        let index = self.widget_index(name)?;
        let mut out = String::new();
        self.write_widget(&mut out, index, &self.endpoint_reach());
        Ok(out)
    }

    /// For each active source endpoint, what it reaches; for each active sink endpoint, what
    /// reaches it.
    fn endpoint_reach(&self) -> (Vec<Vec<bool>>, Vec<Vec<bool>>) {
        let count = self.nodes.len();
        let from_sources = (0..count)
            .filter(|&i| self.is_source_endpoint(i))
            .map(|s| self.reach(core::iter::once(s), true))
            .collect();
        let to_sinks = (0..count)
            .filter(|&i| self.is_sink_endpoint(i))
            .map(|s| self.reach(core::iter::once(s), false))
            .collect();
        (from_sources, to_sinks)
    }

    fn write_widget(
        &self,
        out: &mut String,
        index: usize,
        reach: &(Vec<Vec<bool>>, Vec<Vec<bool>>),
    ) {
        let node = &self.nodes[index];
        let inputs = reach.0.iter().filter(|r| r[index]).count();
        let outputs = reach.1.iter().filter(|r| r[index]).count();
        let _ = write!(
            out,
            "{}: {}{}  in {inputs} out {outputs}",
            node.widget.name,
            if node.powered { "On" } else { "Off" },
            if node.forced { " (forced)" } else { "" }
        );
        if let Some(bit) = node.widget.power_bit {
            let _ = write!(
                out,
                " - R{}({:#x}) mask {:#x}",
                bit.reg,
                bit.reg,
                bit.mask()
            );
        }
        out.push('\n');
        if node.widget.kind.is_pin() && !node.connected {
            out.push_str(" pin disconnected\n");
        }
        if let Some(stream) = node.stream {
            let stream = &self.streams[stream];
            let _ = writeln!(
                out,
                " stream {} {}",
                stream.name,
                if stream.active { "active" } else { "inactive" }
            );
        }
        for (incoming, route) in self
            .routes
            .iter()
            .filter(|r| r.sink == index)
            .map(|r| (true, r))
            .chain(
                self.routes
                    .iter()
                    .filter(|r| r.source == index)
                    .map(|r| (false, r)),
            )
        {
            if !self.route_connected(route) {
                continue;
            }
            let name = match route.gate {
                Gate::Always => "static".to_owned(),
                Gate::Control(control) => self.controls[control].name.clone(),
                Gate::MuxItem { control, item } => match &self.controls[control].kind {
                    ControlKind::Enum { items, .. } => items.get(item).cloned().unwrap_or_default(),
                    _ => String::new(),
                },
            };
            let (label, other) = if incoming {
                ("in", route.source)
            } else {
                ("out", route.sink)
            };
            let _ = writeln!(
                out,
                " {label}  \"{name}\" \"{}\"",
                self.nodes[other].widget.name
            );
        }
    }
}
