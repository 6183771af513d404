//! The HD Audio card as ASoC parts: the **codec** driver builds its DAPM widgets from the
//! codec's own description (the function group's widgets, their capabilities and connection
//! lists, as the controller layer's walk reads them) and turns power into
//! verbs (SET_POWER_STATE D0/D3 per widget; the function group is a supply widget that every
//! widget depends on, so it comes up first and goes down last);
//! the **platform** driver is the controller's stream engine ([`super::hda::run_stream`]); the
//! **machine** driver `q35-hda` puts a speaker behind the codec's output pins, a microphone
//! before its input pins, and switches the speaker amplifier through the GPIO line named
//! `amp-enable` (the virtio-gpio back-end's line 0) after the path is powered and before it
//! powers down.
//!
//! QEMU's `hda-output` is DAC nid 2 → pin nid 3; `hda-duplex` adds pin nid 5 → ADC nid 4. It
//! accepts SET_POWER_STATE and does nothing with it, so DAPM is judged from outside by the
//! verbs sent (its `debug=2` log), not by silence.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use lull_dapm::{ControlValue, Dapm, DapmError, EventMask, PowerEvent, Widget, WidgetKind};
use lull_gpio::{GpioDesc, LineConfig};

use super::hda;
use super::soc::{
    self, Direction, SocCodec, SocMachine, SocPlatform, StreamConfig, StreamData, StreamStats,
};
use crate::kernel::locking::Mutex;
use crate::{pr_warn, printk};

// Verbs (HDA spec 7.3) the codec driver sends: 12-bit ids with an 8-bit payload, 4-bit ids
// with a 16-bit one.
const SET_POWER_STATE: u32 = 0x705;
const SET_CHANNEL_STREAMID: u32 = 0x706;
const SET_PIN_WIDGET_CONTROL: u32 = 0x707;
const SET_CONVERTER_FORMAT: u32 = 0x2;
const SET_AMP_GAIN_MUTE: u32 = 0x3;

const PIN_OUT_ENABLE: u32 = 0x40;
const PIN_IN_ENABLE: u32 = 0x20;

fn short(verb: u32, payload: u32) -> u32 {
    verb << 8 | (payload & 0xff)
}

fn long(verb: u32, payload: u32) -> u32 {
    verb << 16 | (payload & 0xffff)
}

/// A widget's type (audio widget capabilities bits 23:20).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeType {
    Output,
    Input,
    Mixer,
    Selector,
    Pin,
    Other,
}

/// One widget of the audio function group, as the codec describes itself.
#[derive(Clone, Debug)]
struct Node {
    nid: u8,
    kind: NodeType,
    connections: Vec<u8>,
    pin_out: bool,
    pin_in: bool,
    /// Output amplifier capabilities (0 if none), input amplifier's.
    out_amp: u32,
    in_amp: u32,
}

impl Node {
    fn widget_name(&self) -> String {
        match self.kind {
            NodeType::Output => format!("DAC{}", self.nid),
            NodeType::Input => format!("ADC{}", self.nid),
            NodeType::Mixer => format!("Mixer{}", self.nid),
            NodeType::Selector => format!("Mux{}", self.nid),
            NodeType::Pin => format!("Pin{}", self.nid),
            NodeType::Other => format!("Node{}", self.nid),
        }
    }
}

/// The codec at `address`: its audio function group and widgets (read by the controller
/// layer's walk, [`hda::walk_codec`]).
fn walk(address: u8) -> Result<(u8, Vec<Node>), String> {
    let (afg, _, widgets) = hda::walk_codec(address)?
        .into_iter()
        .find(|(_, kind, _)| kind & 0xff == 1)
        .ok_or_else(|| format!("codec {address} has no audio function group"))?;
    let node = |widget: hda::CodecWidget| {
        let pin = widget.pin_caps.unwrap_or(0);
        Node {
            nid: widget.nid,
            kind: match widget.kind() {
                0 => NodeType::Output,
                1 => NodeType::Input,
                2 => NodeType::Mixer,
                3 => NodeType::Selector,
                4 => NodeType::Pin,
                _ => NodeType::Other,
            },
            pin_out: pin & (1 << 4) != 0,
            pin_in: pin & (1 << 5) != 0,
            out_amp: widget.amp_out.unwrap_or(0),
            in_amp: widget.amp_in.unwrap_or(0),
            connections: widget.conns,
        }
    };
    Ok((afg, widgets.into_iter().map(node).collect()))
}

/// An amplifier's control: which node and side, its caps, its mute and gain as last set.
struct Amp {
    nid: u8,
    output: bool,
    caps: u32,
    muted: AtomicBool,
    gain: AtomicU16,
}

impl Amp {
    fn steps(&self) -> i32 {
        ((self.caps >> 8) & 0x7f) as i32
    }
    /// (dB of step 0, dB per step), in hundredths.
    fn db_scale(&self) -> (i32, i32) {
        let step = (((self.caps >> 16) & 0x7f) as i32 + 1) * 25;
        let offset = (self.caps & 0x7f) as i32;
        (-offset * step, step)
    }
    fn write(&self, address: u8) {
        let payload = if self.output { 0x8000 } else { 0x4000 }
            | 0x3000
            | u32::from(self.muted.load(Ordering::Relaxed)) << 7
            | u32::from(self.gain.load(Ordering::Relaxed)) & 0x7f;
        if let Err(error) = hda::verb(address, self.nid, long(SET_AMP_GAIN_MUTE, payload)) {
            pr_warn!("hda-codec: nid {}: amplifier: {error}", self.nid);
        }
    }
}

/// The supply widget standing for the audio function group's power.
const AFG_SUPPLY: &str = "AFG Power";

/// The codec driver.
struct HdaCodec {
    address: u8,
    afg: u8,
    nodes: Vec<Node>,
    /// "Master Playback …" on the first DAC's output amp, "Capture …" on the first ADC's
    /// input amp (where they have one).
    master: Option<Amp>,
    capture: Option<Amp>,
}

impl HdaCodec {
    fn node(&self, widget: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.widget_name() == widget)
    }

    fn send(&self, nid: u8, verb: u32) {
        if let Err(error) = hda::verb(self.address, nid, verb) {
            pr_warn!(
                "hda-codec: codec {} nid {nid}: verb {verb:#x}: {error}",
                self.address
            );
        }
    }

    fn converters(&self, direction: Direction) -> impl Iterator<Item = &Node> {
        let kind = match direction {
            Direction::Playback => NodeType::Output,
            Direction::Capture => NodeType::Input,
        };
        self.nodes.iter().filter(move |n| n.kind == kind)
    }
}

impl SocCodec for HdaCodec {
    fn name(&self) -> String {
        format!("hda-codec {}", self.address)
    }

    fn dai_name(&self) -> &'static str {
        "hda-codec-analog"
    }

    fn add_to(&self, dapm: &mut Dapm) -> Result<(), DapmError> {
        if let Some(amp) = &self.master {
            dapm.add_switch("Master Playback Switch", true)?;
            dapm.add_volume(
                "Master Playback Volume",
                0,
                amp.steps(),
                amp.steps().min(i32::from(amp.gain.load(Ordering::Relaxed))),
                false,
            )?;
        }
        if let Some(amp) = &self.capture {
            dapm.add_switch("Capture Switch", true)?;
            dapm.add_volume(
                "Capture Volume",
                0,
                amp.steps(),
                i32::from(amp.gain.load(Ordering::Relaxed)).min(amp.steps()),
                false,
            )?;
        }
        // The audio function group powers every widget of the codec: a supply, so DAPM
        // brings it to D0 before any of them and to D3 after the last.
        dapm.add_widget(Widget::new(WidgetKind::Supply, AFG_SUPPLY))?;
        dapm.add_widget(Widget::aif_in("HDA Playback", Direction::Playback.stream()))?;
        dapm.add_widget(Widget::aif_out("HDA Capture", Direction::Capture.stream()))?;
        for node in &self.nodes {
            let name = node.widget_name();
            let widget = match node.kind {
                NodeType::Output => Widget::new(WidgetKind::Dac, &name),
                NodeType::Input => Widget::new(WidgetKind::Adc, &name),
                NodeType::Mixer => Widget::new(WidgetKind::Mixer, &name),
                NodeType::Selector => {
                    let items: Vec<String> = node
                        .connections
                        .iter()
                        .filter_map(|c| self.nodes.iter().find(|n| n.nid == *c))
                        .map(Node::widget_name)
                        .collect();
                    let items: Vec<&str> = items.iter().map(String::as_str).collect();
                    let control = format!("{name} Capture Source");
                    dapm.add_enum(&control, &items, 0)?;
                    Widget::mux(&name, &control)
                }
                NodeType::Pin => Widget::new(WidgetKind::Pga, &name),
                NodeType::Other => continue,
            };
            dapm.add_widget(widget)?;
            dapm.add_route(&name, None, AFG_SUPPLY)?;
        }
        for node in &self.nodes {
            let name = node.widget_name();
            match node.kind {
                NodeType::Output => {
                    dapm.add_route(&name, None, "HDA Playback")?;
                }
                NodeType::Input => {
                    dapm.add_route("HDA Capture", None, &name)?;
                }
                NodeType::Other => continue,
                _ => {}
            }
            for source in &node.connections {
                let Some(from) = self.nodes.iter().find(|n| n.nid == *source) else {
                    continue;
                };
                if from.kind == NodeType::Other {
                    continue;
                }
                let from = from.widget_name();
                let gate = match node.kind {
                    NodeType::Selector => Some(from.as_str()),
                    NodeType::Pin if self.master.as_ref().is_some_and(|a| a.nid == *source) => {
                        Some("Master Playback Switch")
                    }
                    NodeType::Input if self.capture.as_ref().is_some_and(|a| a.nid == node.nid) => {
                        Some("Capture Switch")
                    }
                    _ => None,
                };
                dapm.add_route(&name, gate, &from)?;
            }
        }
        Ok(())
    }

    fn widget_power(&self, widget: &str, on: bool) {
        if widget == AFG_SUPPLY {
            self.send(self.afg, short(SET_POWER_STATE, if on { 0 } else { 3 }));
            return;
        }
        // SET_POWER_STATE: D0 on, D3 off. (Pin widget control is set once at attach: QEMU's
        // pins have one fixed direction and log any other value as unhandled.)
        if let Some(node) = self.node(widget) {
            self.send(node.nid, short(SET_POWER_STATE, if on { 0 } else { 3 }));
        }
    }

    fn control(&self, name: &str, value: &ControlValue) {
        let amp = match name {
            "Master Playback Switch" | "Master Playback Volume" => &self.master,
            "Capture Switch" | "Capture Volume" => &self.capture,
            _ => return,
        };
        let Some(amp) = amp else {
            return;
        };
        match value {
            ControlValue::Switch(on) => amp.muted.store(!on, Ordering::Relaxed),
            ControlValue::Volume(v) => amp
                .gain
                .store((*v).clamp(0, 0x7f) as u16, Ordering::Relaxed),
            ControlValue::Enum(..) => return,
        }
        amp.write(self.address);
    }

    fn db_scale(&self, control: &str) -> Option<(i32, i32)> {
        match control {
            "Master Playback Volume" => self.master.as_ref().map(Amp::db_scale),
            "Capture Volume" => self.capture.as_ref().map(Amp::db_scale),
            _ => None,
        }
    }

    fn hw_params(&self, direction: Direction, tag: u8, format: u16) -> Result<(), String> {
        for node in self.converters(direction) {
            hda::verb(
                self.address,
                node.nid,
                long(SET_CONVERTER_FORMAT, u32::from(format)),
            )?;
            hda::verb(
                self.address,
                node.nid,
                short(SET_CHANNEL_STREAMID, u32::from(tag) << 4),
            )?;
        }
        Ok(())
    }

    fn hw_free(&self, direction: Direction) {
        for node in self.converters(direction) {
            self.send(node.nid, short(SET_CHANNEL_STREAMID, 0));
        }
    }
}

/// The controller's stream engine as the platform driver.
struct HdaPcm;

impl SocPlatform for HdaPcm {
    fn name(&self) -> String {
        String::from("hda-intel PCM")
    }

    fn dai_name(&self) -> &'static str {
        "hda-link-stream"
    }

    fn rates(&self) -> &'static [u32] {
        &[48_000, 44_100]
    }

    fn default_period_bytes(&self) -> usize {
        4096
    }

    fn run(
        &self,
        config: &StreamConfig,
        prepare: &mut dyn FnMut(u8, u16) -> Result<(), String>,
        data: StreamData<'_>,
    ) -> Result<StreamStats, String> {
        let hda_config = hda::StreamConfig {
            direction: match config.direction {
                Direction::Playback => hda::Direction::Playback,
                Direction::Capture => hda::Direction::Capture,
            },
            rate: config.rate,
            channels: config.channels,
            period_bytes: config.period_bytes,
            periods: config.periods,
        };
        let data = match data {
            StreamData::Play(fill) => hda::StreamData::Play(fill),
            StreamData::Capture { bytes, sink } => hda::StreamData::Capture { bytes, sink },
        };
        let stats = hda::run_stream(&hda_config, prepare, data)?;
        Ok(StreamStats {
            bytes: stats.bytes,
            periods: stats.periods,
            interrupts: stats.interrupts,
            underruns: stats.underruns,
            elapsed_ns: stats.elapsed_ns,
        })
    }
}

/// The machine driver: a speaker behind every output pin with its amplifier on the
/// `amp-enable` GPIO line, a microphone before every input pin.
struct Q35Hda {
    outputs: Vec<String>,
    inputs: Vec<String>,
    amp: Mutex<Option<GpioDesc>>,
    warned: AtomicBool,
}

/// The machine's consumer label on the amplifier line.
pub const AMP_CONSUMER: &str = "q35-hda";
/// The amplifier line's name.
pub const AMP_LINE: &str = "amp-enable";

impl Q35Hda {
    fn set_amp(&self, on: bool) {
        let mut amp = self.amp.lock();
        // A line whose chip went away (its controller unbound) fails: look it up again, once.
        if let Some(desc) = amp.as_ref() {
            match desc.set_value(on) {
                Ok(()) => return,
                Err(error) => {
                    pr_warn!(
                        "q35-hda: {AMP_LINE} -> {}: {error}; looking the line up again",
                        u8::from(on)
                    );
                    *amp = None;
                }
            }
        }
        // Looked up at first use: the GPIO controller may bind after the card.
        match crate::drivers::gpio::GPIO.get_by_name(
            AMP_LINE,
            AMP_CONSUMER,
            LineConfig::output(false),
        ) {
            Ok(desc) => {
                if let Err(error) = desc.set_value(on) {
                    pr_warn!("q35-hda: {AMP_LINE} -> {}: {error}", u8::from(on));
                }
                self.warned.store(false, Ordering::Relaxed);
                *amp = Some(desc);
            }
            Err(error) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    printk!("q35-hda: no speaker amplifier switched ({AMP_LINE}: {error})");
                }
            }
        }
    }
}

impl SocMachine for Q35Hda {
    fn name(&self) -> String {
        String::from("q35-hda")
    }

    fn dai_link(&self) -> soc::DaiLink {
        soc::DaiLink {
            name: "HDA Analog",
            cpu_dai: "hda-link-stream",
            codec_dai: "hda-codec-analog",
        }
    }

    fn add_to(&self, dapm: &mut Dapm) -> Result<(), DapmError> {
        if !self.outputs.is_empty() {
            dapm.add_widget(
                Widget::new(WidgetKind::Speaker, "Speaker")
                    .events(EventMask::POST_PMU | EventMask::PRE_PMD),
            )?;
            for pin in &self.outputs {
                dapm.add_route("Speaker", None, pin)?;
            }
        }
        if !self.inputs.is_empty() {
            dapm.add_widget(Widget::new(WidgetKind::Mic, "Mic"))?;
            for pin in &self.inputs {
                dapm.add_route(pin, None, "Mic")?;
            }
        }
        Ok(())
    }

    fn widget_event(&self, widget: &str, event: PowerEvent) {
        if widget != "Speaker" {
            return;
        }
        match event {
            PowerEvent::PostPowerUp => self.set_amp(true),
            PowerEvent::PrePowerDown => self.set_amp(false),
            _ => {}
        }
    }

    fn remove(&self) {
        // The line goes low and back to gpiolib with the descriptor.
        if let Some(desc) = self.amp.lock().take() {
            let _ = desc.set_value(false);
        }
    }
}

/// Builds the card for the codec at `address` on the bound controller and registers it;
/// returns the card's index. Thread context (verbs sleep).
pub fn attach(address: u8) -> Result<usize, String> {
    let (afg, nodes) = walk(address)?;
    // The function group starts in D3 (bias Off) and every widget unpowered: DAPM powers
    // what a stream needs.
    let send = |nid: u8, verb: u32| hda::verb(address, nid, verb).map(|_| ());
    for node in &nodes {
        if node.kind == NodeType::Pin {
            let control = match (node.pin_out, node.pin_in) {
                (true, false) => PIN_OUT_ENABLE,
                (false, true) => PIN_IN_ENABLE,
                _ => PIN_OUT_ENABLE | PIN_IN_ENABLE,
            };
            send(node.nid, short(SET_PIN_WIDGET_CONTROL, control))?;
        }
        if node.kind != NodeType::Other {
            send(node.nid, short(SET_POWER_STATE, 3))?;
        }
    }
    send(afg, short(SET_POWER_STATE, 3))?;
    let amp = |node: &Node, output: bool| {
        let caps = if output { node.out_amp } else { node.in_amp };
        Amp {
            nid: node.nid,
            output,
            caps,
            muted: AtomicBool::new(false),
            // 0 dB (the offset step) unless the amplifier cannot reach it.
            gain: AtomicU16::new(((caps & 0x7f).min((caps >> 8) & 0x7f)) as u16),
        }
    };
    let master = nodes
        .iter()
        .find(|n| n.kind == NodeType::Output && n.out_amp != 0)
        .map(|n| amp(n, true));
    let capture = nodes
        .iter()
        .find(|n| n.kind == NodeType::Input && n.in_amp != 0)
        .map(|n| amp(n, false));
    for amp in master.iter().chain(capture.iter()) {
        amp.write(address);
    }
    let outputs = nodes
        .iter()
        .filter(|n| n.kind == NodeType::Pin && n.pin_out)
        .map(Node::widget_name)
        .collect();
    let inputs = nodes
        .iter()
        .filter(|n| n.kind == NodeType::Pin && n.pin_in && !n.pin_out)
        .map(Node::widget_name)
        .collect();
    let codec = HdaCodec {
        address,
        afg,
        nodes,
        master,
        capture,
    };
    soc::register_card(
        Box::new(codec),
        Box::new(HdaPcm),
        Box::new(Q35Hda {
            outputs,
            inputs,
            amp: Mutex::named("q35-hda::amp", None),
            warned: AtomicBool::new(false),
        }),
    )
}
