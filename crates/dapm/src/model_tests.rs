//! Property test: random graphs and random stream, control, pin and time operations, checked
//! against an independent model of DAPM's power rule.
//!
//! The model keeps its own copy of the controls, pins and streams (with their own deadline
//! arithmetic) and decides power by a transitive closure (Floyd–Warshall over connected audio
//! routes) instead of the crate's breadth-first walks: a widget should be powered exactly when
//! some active source endpoint reaches it and it reaches some active sink endpoint, and a supply
//! exactly when something it feeds is powered. Checked after every operation:
//!
//! * no widget is powered that is not on a complete path (except forced widgets and supplies of
//!   powered widgets),
//!   and none on a complete path is left unpowered — a stopped playback stream counts as active
//!   until its deadline, and once `advance` passes the deadline its widgets must be down;
//! * the update's power changes, applied to the previous state, give the new state; downs come
//!   before ups, each in Linux's sequence order; each pre event precedes its widget's power
//!   change and each post event follows it; the bias moves one level at a time and ends On
//!   exactly when a non-generator widget is powered.

use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use crate::{
    BiasLevel, Dapm, DapmOp, EventMask, PowerEvent, PowerUpdate, Widget, WidgetKind,
    DEFAULT_PMDOWN_TIME_MS,
};

const KINDS: [WidgetKind; 14] = [
    WidgetKind::AifIn,
    WidgetKind::AifOut,
    WidgetKind::Dac,
    WidgetKind::Adc,
    WidgetKind::Mixer,
    WidgetKind::Mux,
    WidgetKind::Pga,
    WidgetKind::Speaker,
    WidgetKind::Headphone,
    WidgetKind::LineOut,
    WidgetKind::Mic,
    WidgetKind::LineIn,
    WidgetKind::Siggen,
    WidgetKind::Supply,
];
const SWITCHES: usize = 3;
const STREAMS: [&str; 3] = ["P0", "P1", "C0"];
const MUX_ITEMS: [&str; 3] = ["a", "b", "c"];
const MS: u64 = 1_000_000;

#[derive(Clone, Copy, Debug)]
enum ModelGate {
    Always,
    Switch(usize),
    /// Volume 0 mutes (mute_at_min) or 1 (never gates).
    Volume(usize),
    MuxItem {
        mux: usize,
        item: usize,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Start(usize),
    Stop(usize),
    Switch(usize, bool),
    Mux(usize, usize),
    Volume(usize, bool),
    Pin(usize, bool),
    /// Force a widget on (released by disabling it).
    Force(usize),
    /// Let time pass and call `advance`.
    Wait,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..STREAMS.len()).prop_map(Op::Start),
        3 => (0..STREAMS.len()).prop_map(Op::Stop),
        2 => (0..SWITCHES, any::<bool>()).prop_map(|(s, on)| Op::Switch(s, on)),
        1 => (any::<usize>(), 0..MUX_ITEMS.len()).prop_map(|(m, i)| Op::Mux(m, i)),
        1 => (0..2usize, any::<bool>()).prop_map(|(v, zero)| Op::Volume(v, zero)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(w, on)| Op::Pin(w, on)),
        1 => any::<usize>().prop_map(Op::Force),
        2 => Just(Op::Wait),
    ]
}

struct Model {
    kinds: Vec<WidgetKind>,
    /// Stream index per widget (stream widgets only).
    stream_of: Vec<Option<usize>>,
    routes: Vec<(usize, usize, ModelGate)>,
    switches: [bool; SWITCHES],
    volume_zero: [bool; 2],
    mux_selection: BTreeMap<usize, usize>,
    pins: Vec<bool>,
    forced: Vec<bool>,
    active: [bool; 3],
    deadline: [Option<u64>; 3],
}

impl Model {
    fn gate_open(&self, gate: ModelGate) -> bool {
        match gate {
            ModelGate::Always => true,
            ModelGate::Switch(s) => self.switches[s],
            ModelGate::Volume(v) => !(v == 0 && self.volume_zero[0]),
            ModelGate::MuxItem { mux, item } => self.mux_selection.get(&mux) == Some(&item),
        }
    }

    fn is_supply(&self, w: usize) -> bool {
        self.kinds[w] == WidgetKind::Supply
    }

    fn source_endpoint(&self, w: usize) -> bool {
        match self.kinds[w] {
            WidgetKind::AifIn => self.stream_of[w].is_some_and(|s| self.active[s]),
            WidgetKind::Mic | WidgetKind::LineIn | WidgetKind::Siggen => self.pins[w],
            _ => false,
        }
    }

    fn sink_endpoint(&self, w: usize) -> bool {
        match self.kinds[w] {
            WidgetKind::AifOut => self.stream_of[w].is_some_and(|s| self.active[s]),
            WidgetKind::Speaker | WidgetKind::Headphone | WidgetKind::LineOut => self.pins[w],
            _ => false,
        }
    }

    fn expected_power(&self) -> Vec<bool> {
        let n = self.kinds.len();
        // Reflexive-transitive closure over connected audio routes.
        let mut reach = vec![vec![false; n]; n];
        for (i, row) in reach.iter_mut().enumerate() {
            row[i] = true;
        }
        for &(source, sink, gate) in &self.routes {
            if !self.is_supply(source) && !self.is_supply(sink) && self.gate_open(gate) {
                reach[source][sink] = true;
            }
        }
        for k in 0..n {
            let through_k = reach[k].clone();
            for row in reach.iter_mut() {
                if row[k] {
                    for (cell, &onward) in row.iter_mut().zip(&through_k) {
                        *cell |= onward;
                    }
                }
            }
        }
        let mut power: Vec<bool> = (0..n)
            .map(|w| {
                self.forced[w]
                    || (!self.is_supply(w)
                        && (0..n).any(|s| self.source_endpoint(s) && reach[s][w])
                        && (0..n).any(|t| self.sink_endpoint(t) && reach[w][t]))
            })
            .collect();
        loop {
            let mut changed = false;
            for &(source, sink, gate) in &self.routes {
                if self.is_supply(source) && !power[source] && power[sink] && self.gate_open(gate) {
                    power[source] = true;
                    changed = true;
                }
            }
            if !changed {
                return power;
            }
        }
    }

    fn expire(&mut self, now: u64, except: Option<usize>) {
        for s in 0..STREAMS.len() {
            if Some(s) != except && self.deadline[s].is_some_and(|d| d <= now) {
                self.deadline[s] = None;
                self.active[s] = false;
            }
        }
    }
}

fn bias_step_ok(from: BiasLevel, to: BiasLevel) -> bool {
    let (a, b) = (from as i32, to as i32);
    (a - b).abs() == 1
}

fn check_update(
    update: &PowerUpdate,
    before: &[bool],
    dapm: &Dapm,
    kinds: &[WidgetKind],
    names: &[String],
    mut bias: BiasLevel,
) -> Result<(), TestCaseError> {
    let index = |name: &str| names.iter().position(|n| n == name).unwrap();
    let mut state = before.to_vec();
    let mut seen_up = false;
    let mut last_seq = 0u8;
    for (position, op) in update.ops.iter().enumerate() {
        match op {
            DapmOp::Power { widget, on } => {
                let w = index(widget);
                prop_assert_ne!(state[w], *on, "{} changed to its own state", widget);
                state[w] = *on;
                if *on {
                    if !seen_up {
                        seen_up = true;
                        last_seq = 0;
                    }
                    prop_assert!(kinds[w].up_seq() >= last_seq, "up order at {}", widget);
                    last_seq = kinds[w].up_seq();
                } else {
                    prop_assert!(!seen_up, "power-down of {} after a power-up", widget);
                    prop_assert!(kinds[w].down_seq() >= last_seq, "down order at {}", widget);
                    last_seq = kinds[w].down_seq();
                }
            }
            DapmOp::Event { widget, event } => {
                let on = matches!(event, PowerEvent::PrePowerUp | PowerEvent::PostPowerUp);
                let change = DapmOp::Power {
                    widget: widget.clone(),
                    on,
                };
                let at = update.ops.iter().position(|o| *o == change);
                prop_assert!(at.is_some(), "event without power change for {}", widget);
                let at = at.unwrap_or(0);
                match event {
                    PowerEvent::PrePowerUp | PowerEvent::PrePowerDown => {
                        prop_assert!(position < at)
                    }
                    _ => prop_assert!(position > at),
                }
            }
            DapmOp::Bias(level) => {
                prop_assert!(bias_step_ok(bias, *level), "bias {:?} -> {:?}", bias, level);
                bias = *level;
            }
            _ => {}
        }
    }
    let now: Vec<bool> = names.iter().map(|n| dapm.is_powered(n).unwrap()).collect();
    prop_assert_eq!(state, now.clone());
    prop_assert_eq!(bias, dapm.bias_level());
    let busy = now
        .iter()
        .zip(kinds)
        .any(|(&on, &kind)| on && kind != WidgetKind::Siggen);
    prop_assert_eq!(busy, bias == BiasLevel::On);
    Ok(())
}

/// A route as generated: source, sink (both taken modulo the widget count), gate selector, and
/// mux item.
type RawRoute = (usize, usize, u8, usize);

fn graph() -> impl Strategy<Value = (Vec<usize>, Vec<RawRoute>)> {
    (
        prop::collection::vec(0..KINDS.len(), 2..10),
        prop::collection::vec(
            (any::<usize>(), any::<usize>(), 0..6u8, 0..MUX_ITEMS.len()),
            0..24,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn power_is_exactly_the_complete_paths(
        (kind_indices, raw_routes) in graph(),
        ops in prop::collection::vec((op(), 0..4000u64), 1..40),
    ) {
        let kinds: Vec<WidgetKind> = kind_indices.iter().map(|&k| KINDS[k]).collect();
        let names: Vec<String> = (0..kinds.len()).map(|i| format!("w{i}")).collect();
        let mut dapm = Dapm::new();
        for s in 0..SWITCHES {
            dapm.add_switch(&format!("s{s}"), s % 2 == 0).unwrap();
        }
        dapm.add_volume("v0", 0, 10, 5, true).unwrap();
        dapm.add_volume("v1", 0, 10, 5, false).unwrap();
        let mut stream_of = vec![None; kinds.len()];
        let mut mux_selection = BTreeMap::new();
        let amp = EventMask::PRE_PMU | EventMask::POST_PMU | EventMask::PRE_PMD | EventMask::POST_PMD;
        for (w, &kind) in kinds.iter().enumerate() {
            let name = &names[w];
            let widget = match kind {
                WidgetKind::AifIn => {
                    let s = w % 2;
                    stream_of[w] = Some(s);
                    Widget::aif_in(name, STREAMS[s])
                }
                WidgetKind::AifOut => {
                    stream_of[w] = Some(2);
                    Widget::aif_out(name, STREAMS[2])
                }
                WidgetKind::Mux => {
                    dapm.add_enum(&format!("{name} sel"), &MUX_ITEMS, 0).unwrap();
                    mux_selection.insert(w, 0);
                    Widget::mux(name, &format!("{name} sel"))
                }
                kind => Widget::new(kind, name),
            };
            let widget = match w % 3 {
                0 => widget.events(amp),
                1 => widget.power_bit((w % 2) as u32, (w % 8) as u8, w % 4 == 1),
                _ => widget,
            };
            dapm.add_widget(widget).unwrap();
        }
        // Streams nobody bound are created empty, so every op can name them.
        for (s, name) in STREAMS.iter().enumerate() {
            if !stream_of.contains(&Some(s)) {
                let helper = if s < 2 { Widget::aif_in(&format!("unbound {name}"), name) } else { Widget::aif_out(&format!("unbound {name}"), name) };
                dapm.add_widget(helper).unwrap();
            }
        }
        let mut routes = Vec::new();
        for (source, sink, gate, item) in raw_routes {
            let (source, sink) = (source % kinds.len(), sink % kinds.len());
            let (control, model_gate) = if kinds[sink] == WidgetKind::Mux {
                (Some(MUX_ITEMS[item].to_owned()), ModelGate::MuxItem { mux: sink, item })
            } else {
                match gate {
                    0 | 1 => (None, ModelGate::Always),
                    2 | 3 => (Some(format!("s{}", item % SWITCHES)), ModelGate::Switch(item % SWITCHES)),
                    v => (Some(format!("v{}", v - 4)), ModelGate::Volume(usize::from(v - 4))),
                }
            };
            dapm.add_route(&names[sink], control.as_deref(), &names[source]).unwrap();
            routes.push((source, sink, model_gate));
        }
        let mut model = Model {
            stream_of,
            routes,
            switches: [true, false, true],
            volume_zero: [false, false],
            mux_selection,
            pins: vec![true; kinds.len()],
            forced: vec![false; kinds.len()],
            active: [false; 3],
            deadline: [None; 3],
            kinds: kinds.clone(),
        };
        // No stream is active yet, but pins and generators can already make complete paths.
        let power_now: Vec<bool> = names.iter().map(|n| dapm.is_powered(n).unwrap()).collect();
        prop_assert_eq!(power_now, model.expected_power());

        let mut now = 0u64;
        let pmdown = DEFAULT_PMDOWN_TIME_MS * MS;
        for (op, dt_ms) in ops {
            now += dt_ms * MS;
            let before: Vec<bool> = names.iter().map(|n| dapm.is_powered(n).unwrap()).collect();
            let bias_before = dapm.bias_level();
            let update = match op {
                Op::Start(s) => {
                    model.expire(now, Some(s));
                    model.deadline[s] = None;
                    model.active[s] = true;
                    dapm.stream_start(STREAMS[s], now).unwrap()
                }
                Op::Stop(s) => {
                    if model.active[s] && model.deadline[s].is_none() {
                        if s < 2 {
                            model.deadline[s] = Some(now + pmdown);
                        } else {
                            model.active[s] = false;
                        }
                    }
                    model.expire(now, None);
                    dapm.stream_stop(STREAMS[s], now).unwrap()
                }
                Op::Switch(s, on) => {
                    model.switches[s] = on;
                    dapm.set_switch(&format!("s{s}"), on).unwrap()
                }
                Op::Mux(m, item) => {
                    let muxes: Vec<usize> = model.mux_selection.keys().copied().collect();
                    if muxes.is_empty() {
                        continue;
                    }
                    let mux = muxes[m % muxes.len()];
                    model.mux_selection.insert(mux, item);
                    dapm.set_enum(&format!("{} sel", names[mux]), MUX_ITEMS[item]).unwrap()
                }
                Op::Volume(v, zero) => {
                    model.volume_zero[v] = zero;
                    dapm.set_volume(&format!("v{v}"), if zero { 0 } else { 7 }).unwrap()
                }
                Op::Force(w) => {
                    let w = w % kinds.len();
                    model.forced[w] = true;
                    if kinds[w].is_pin() {
                        model.pins[w] = true;
                    }
                    dapm.force_enable_pin(&names[w]).unwrap()
                }
                Op::Pin(w, false) if model.forced[w % kinds.len()] => {
                    let w = w % kinds.len();
                    model.forced[w] = false;
                    if kinds[w].is_pin() {
                        model.pins[w] = false;
                    }
                    dapm.disable_pin(&names[w]).unwrap()
                }
                Op::Pin(w, on) => {
                    let w = w % kinds.len();
                    if kinds[w].is_pin() {
                        model.pins[w] = on;
                        if on { dapm.enable_pin(&names[w]).unwrap() } else { dapm.disable_pin(&names[w]).unwrap() }
                    } else {
                        // Only pins connect and disconnect (disabling a forced non-pin
                        // releases its force, handled above).
                        let refused = if on || model.forced[w] {
                            dapm.enable_pin(&names[w])
                        } else {
                            dapm.disable_pin(&names[w])
                        };
                        prop_assert!(refused.is_err());
                        continue;
                    }
                }
                Op::Wait => {
                    model.expire(now, None);
                    dapm.advance(now)
                }
            };
            check_update(&update, &before, &dapm, &kinds, &names, bias_before)?;
            let power_now: Vec<bool> = names.iter().map(|n| dapm.is_powered(n).unwrap()).collect();
            prop_assert_eq!(&power_now, &model.expected_power(), "after {:?} at {}", op, now);
            prop_assert_eq!(dapm.next_deadline(), model.deadline.iter().flatten().min().copied());
        }

        // Let every pending power-down elapse: whatever is still powered is on a complete
        // path of the streams that remain active.
        if let Some(deadline) = dapm.next_deadline() {
            let before: Vec<bool> = names.iter().map(|n| dapm.is_powered(n).unwrap()).collect();
            let bias_before = dapm.bias_level();
            let update = dapm.advance(deadline + pmdown);
            model.expire(deadline + pmdown, None);
            check_update(&update, &before, &dapm, &kinds, &names, bias_before)?;
            prop_assert_eq!(dapm.next_deadline(), None);
        }
        let power_now: Vec<bool> = names.iter().map(|n| dapm.is_powered(n).unwrap()).collect();
        prop_assert_eq!(power_now, model.expected_power());
        prop_assert!(dapm.advance(u64::MAX).is_empty(), "nothing left to do");
    }
}
