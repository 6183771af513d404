//! The `hda` debugging command: the controller, raw verbs, a walk of a codec's widgets (as
//! Linux's /proc/asound/card0/codec#N, abridged), and `hda play-test`, which plays a tone
//! through the first output converter with the least codec setup that makes it audible. The
//! codec driver proper (ASoC codec and machine) is another layer's; this is for debugging the
//! controller.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use super::{run_stream, verb, Direction, StreamConfig, StreamData};

// Verbs (12-bit ids, shifted into place) and parameters.
const GET_PARAMETER: u32 = 0xf00 << 8;
const GET_CONNECT_LIST: u32 = 0xf02 << 8;
const GET_SUBSYSTEM_ID: u32 = 0xf20 << 8;
const GET_PIN_CONTROL: u32 = 0xf07 << 8;
const SET_POWER_STATE: u32 = 0x705 << 8;
const SET_CHANNEL_STREAMID: u32 = 0x706 << 8;
const SET_PIN_CONTROL: u32 = 0x707 << 8;
/// 4-bit ids with a 16-bit payload.
const SET_STREAM_FORMAT: u32 = 0x2 << 16;
const SET_AMP_GAIN_MUTE: u32 = 0x3 << 16;

const PAR_VENDOR_ID: u32 = 0x00;
const PAR_REVISION_ID: u32 = 0x02;
const PAR_NODE_COUNT: u32 = 0x04;
const PAR_FUNCTION_TYPE: u32 = 0x05;
const PAR_AUDIO_WIDGET_CAP: u32 = 0x09;
const PAR_PCM: u32 = 0x0a;
const PAR_PIN_CAP: u32 = 0x0c;
const PAR_AMP_IN_CAP: u32 = 0x0d;
const PAR_CONNLIST_LEN: u32 = 0x0e;
const PAR_AMP_OUT_CAP: u32 = 0x12;

const WCAP_STEREO: u32 = 1 << 0;
const WCAP_IN_AMP: u32 = 1 << 1;
const WCAP_OUT_AMP: u32 = 1 << 2;
const WCAP_AMP_OVRD: u32 = 1 << 3;
const WCAP_CONN_LIST: u32 = 1 << 8;
const WCAP_DIGITAL: u32 = 1 << 9;
const WCAP_POWER: u32 = 1 << 10;

const TYPE_AUD_OUT: u32 = 0x0;
const TYPE_PIN: u32 = 0x4;

const PINCAP_OUT: u32 = 1 << 4;
const PINCTL_OUT_EN: u32 = 1 << 6;

fn param(codec: u8, nid: u8, id: u32) -> Result<u32, String> {
    verb(codec, nid, GET_PARAMETER | id)
}

/// `(first node, count)` of `nid`'s subordinate nodes.
fn subnodes(codec: u8, nid: u8) -> Result<(u8, u8), String> {
    let value = param(codec, nid, PAR_NODE_COUNT)?;
    let first = (value >> 16 & 0xff) as u8;
    let count = (value & 0xff) as u8;
    if u32::from(first) + u32::from(count) > 0x80 {
        return Err(alloc::format!(
            "hda: codec {codec} node {nid:#04x} reports nodes {first:#x}+{count}: beyond 0x7f"
        ));
    }
    Ok((first, count))
}

/// `nid`'s connection list (ranges expanded).
fn connections(codec: u8, nid: u8) -> Result<Vec<u8>, String> {
    let len = param(codec, nid, PAR_CONNLIST_LEN)?;
    let long = len & 0x80 != 0;
    let count = (len & 0x7f) as usize;
    let per = if long { 2 } else { 4 };
    let mut list: Vec<u8> = Vec::new();
    let mut index = 0;
    while index < count {
        let word = verb(codec, nid, GET_CONNECT_LIST | index as u32)?;
        for k in 0..per.min(count - index) {
            let (entry, range) = if long {
                let e = word >> (16 * k) & 0xffff;
                ((e & 0x7f) as u8, e & 0x8000 != 0)
            } else {
                let e = word >> (8 * k) & 0xff;
                ((e & 0x7f) as u8, e & 0x80 != 0)
            };
            match (range, list.last().copied()) {
                (true, Some(previous)) if previous < entry && entry - previous <= 64 => {
                    list.extend(previous + 1..=entry)
                }
                _ => list.push(entry),
            }
        }
        index += per;
    }
    Ok(list)
}

/// One widget's description (also what the ASoC codec driver builds its DAPM widgets from).
pub(crate) struct Widget {
    pub(crate) nid: u8,
    pub(crate) caps: u32,
    pub(crate) conns: Vec<u8>,
    /// Amplifier capabilities (the function group's unless the widget overrides them).
    pub(crate) amp_in: Option<u32>,
    pub(crate) amp_out: Option<u32>,
    pub(crate) pin_caps: Option<u32>,
}

impl Widget {
    /// The widget type (audio widget capabilities bits 23:20).
    pub(crate) fn kind(&self) -> u32 {
        self.caps >> 20 & 0xf
    }
}

/// The codec's function groups: each one's node, its type (PAR_FUNCTION_TYPE) and widgets.
pub(crate) fn walk(codec: u8) -> Result<Vec<(u8, u32, Vec<Widget>)>, String> {
    let (first, count) = subnodes(codec, 0)?;
    let mut groups = Vec::new();
    for fg in first..first + count {
        let fg_type = param(codec, fg, PAR_FUNCTION_TYPE)?;
        let fg_amp_in = param(codec, fg, PAR_AMP_IN_CAP)?;
        let fg_amp_out = param(codec, fg, PAR_AMP_OUT_CAP)?;
        let (wfirst, wcount) = subnodes(codec, fg)?;
        let mut widgets = Vec::new();
        for nid in wfirst..wfirst + wcount {
            let caps = param(codec, nid, PAR_AUDIO_WIDGET_CAP)?;
            let ovrd = caps & WCAP_AMP_OVRD != 0;
            let amp = |present: u32, id: u32, default: u32| -> Result<Option<u32>, String> {
                if caps & present == 0 {
                    Ok(None)
                } else if ovrd {
                    param(codec, nid, id).map(Some)
                } else {
                    Ok(Some(default))
                }
            };
            let widget = Widget {
                nid,
                caps,
                conns: if caps & WCAP_CONN_LIST != 0 {
                    connections(codec, nid)?
                } else {
                    Vec::new()
                },
                amp_in: amp(WCAP_IN_AMP, PAR_AMP_IN_CAP, fg_amp_in)?,
                amp_out: amp(WCAP_OUT_AMP, PAR_AMP_OUT_CAP, fg_amp_out)?,
                pin_caps: if caps >> 20 & 0xf == TYPE_PIN {
                    Some(param(codec, nid, PAR_PIN_CAP)?)
                } else {
                    None
                },
            };
            widgets.push(widget);
        }
        groups.push((fg, fg_type, widgets));
    }
    Ok(groups)
}

fn type_name(kind: u32) -> &'static str {
    match kind {
        0x0 => "Audio Output",
        0x1 => "Audio Input",
        0x2 => "Audio Mixer",
        0x3 => "Audio Selector",
        0x4 => "Pin Complex",
        0x5 => "Power Widget",
        0x6 => "Volume Knob Widget",
        0x7 => "Beep Generator Widget",
        0xf => "Vendor Defined Widget",
        _ => "Unknown Widget",
    }
}

fn amp_caps(out: &mut String, label: &str, caps: u32) {
    let _ = writeln!(
        out,
        "  {label} caps: ofs={:#04x}, nsteps={:#04x}, stepsize={:#04x}, mute={}",
        caps & 0x7f,
        caps >> 8 & 0x7f,
        caps >> 16 & 0x7f,
        caps >> 31
    );
}

/// `hda widgets [CODEC]`, printed like /proc/asound/card0/codec#N (abridged).
fn widgets(codec: u8) -> Result<String, String> {
    let mut out = String::new();
    let vendor = param(codec, 0, PAR_VENDOR_ID)?;
    let subsystem = verb(codec, 0, GET_SUBSYSTEM_ID)?;
    let revision = param(codec, 0, PAR_REVISION_ID)?;
    let _ = writeln!(out, "Codec: {codec}");
    let _ = writeln!(out, "Address: {codec}");
    let _ = writeln!(out, "Vendor Id: {vendor:#010x}");
    let _ = writeln!(out, "Subsystem Id: {subsystem:#010x}");
    let _ = writeln!(out, "Revision Id: {revision:#x}");
    for (fg, fg_type, widgets) in walk(codec)? {
        let kind = match fg_type & 0xff {
            1 => "Audio Function Group",
            2 => "Modem Function Group",
            _ => "Function Group",
        };
        let _ = writeln!(out, "Node {fg:#04x} [{kind}]");
        if let Ok(pcm) = param(codec, fg, PAR_PCM) {
            let _ = writeln!(
                out,
                "Default PCM:\n    rates [{:#x}]\n    bits [{:#x}]",
                pcm & 0xfff,
                pcm >> 16 & 0x1f
            );
        }
        for w in &widgets {
            let mut flags = String::new();
            for (bit, name) in [
                (WCAP_STEREO, " Stereo"),
                (WCAP_IN_AMP, " Amp-In"),
                (WCAP_OUT_AMP, " Amp-Out"),
                (WCAP_DIGITAL, " Digital"),
                (WCAP_POWER, " Power"),
            ] {
                if w.caps & bit != 0 {
                    flags.push_str(name);
                }
            }
            if w.caps & WCAP_STEREO == 0 {
                flags.insert_str(0, " Mono");
            }
            let _ = writeln!(
                out,
                "Node {:#04x} [{}] wcaps {:#x}:{flags}",
                w.nid,
                type_name(w.kind()),
                w.caps
            );
            if let Some(caps) = w.amp_in {
                amp_caps(&mut out, "Amp-In", caps);
            }
            if let Some(caps) = w.amp_out {
                amp_caps(&mut out, "Amp-Out", caps);
            }
            if let Some(caps) = w.pin_caps {
                let mut names = String::new();
                for (bit, name) in [
                    (1 << 2, " Detect"),
                    (1 << 3, " HP"),
                    (PINCAP_OUT, " OUT"),
                    (1 << 5, " IN"),
                    (1 << 16, " EAPD"),
                ] {
                    if caps & bit != 0 {
                        names.push_str(name);
                    }
                }
                let _ = writeln!(out, "  Pincap {caps:#010x}:{names}");
                if let Ok(ctl) = verb(codec, w.nid, GET_PIN_CONTROL) {
                    let _ = writeln!(
                        out,
                        "  Pin-ctls: {:#04x}:{}{}",
                        ctl,
                        if ctl & 0x40 != 0 { " OUT" } else { "" },
                        if ctl & 0x20 != 0 { " IN" } else { "" }
                    );
                }
            }
            if !w.conns.is_empty() {
                let _ = writeln!(out, "  Connection: {}", w.conns.len());
                let list: Vec<String> =
                    w.conns.iter().map(|c| alloc::format!("{c:#04x}")).collect();
                let _ = writeln!(out, "     {}", list.join(" "));
            }
        }
    }
    Ok(out)
}

/// The first output converter of `codec`'s audio function group and a pin that reaches it
/// (directly or through one mixer/selector), with the nodes between.
struct OutputPath {
    fg: u8,
    dac: u8,
    dac_amp: Option<u32>,
    /// Pin, then any node between it and the DAC: `(nid, output amp caps)`.
    nodes: Vec<(u8, Option<u32>)>,
    pin: u8,
}

fn output_path(codec: u8) -> Result<OutputPath, String> {
    for (fg, fg_type, widgets) in walk(codec)? {
        if fg_type & 0xff != 1 {
            continue;
        }
        let by_nid = |nid: u8| widgets.iter().find(|w| w.nid == nid);
        for dac in widgets.iter().filter(|w| w.kind() == TYPE_AUD_OUT) {
            for pin in widgets
                .iter()
                .filter(|w| w.kind() == TYPE_PIN && w.pin_caps.is_some_and(|c| c & PINCAP_OUT != 0))
            {
                if pin.conns.contains(&dac.nid) {
                    return Ok(OutputPath {
                        fg,
                        dac: dac.nid,
                        dac_amp: dac.amp_out,
                        nodes: alloc::vec![(pin.nid, pin.amp_out)],
                        pin: pin.nid,
                    });
                }
                for &hop in &pin.conns {
                    if let Some(mid) = by_nid(hop) {
                        if mid.conns.contains(&dac.nid) {
                            return Ok(OutputPath {
                                fg,
                                dac: dac.nid,
                                dac_amp: dac.amp_out,
                                nodes: alloc::vec![(pin.nid, pin.amp_out), (mid.nid, mid.amp_out)],
                                pin: pin.nid,
                            });
                        }
                    }
                }
            }
        }
    }
    Err(alloc::format!(
        "hda: codec {codec} has no output converter reaching an output pin"
    ))
}

/// Output amp unmuted at 0 dB (its offset step), both channels.
fn unmute_out(codec: u8, nid: u8, caps: Option<u32>) -> Result<(), String> {
    if let Some(caps) = caps {
        verb(codec, nid, SET_AMP_GAIN_MUTE | 0xb000 | (caps & 0x7f))?;
    }
    Ok(())
}

/// The minimal codec setup for playback on `path`: powered, unmuted, the pin's output on,
/// the converter on `tag` (channel 0) with `format`.
fn setup_output(codec: u8, path: &OutputPath, tag: u8, format: u16) -> Result<(), String> {
    verb(codec, path.fg, SET_POWER_STATE)?;
    verb(codec, path.dac, SET_POWER_STATE)?;
    verb(codec, path.dac, SET_CHANNEL_STREAMID | u32::from(tag) << 4)?;
    verb(codec, path.dac, SET_STREAM_FORMAT | u32::from(format))?;
    unmute_out(codec, path.dac, path.dac_amp)?;
    for &(nid, amp) in &path.nodes {
        verb(codec, nid, SET_POWER_STATE)?;
        unmute_out(codec, nid, amp)?;
    }
    verb(codec, path.pin, SET_PIN_CONTROL | PINCTL_OUT_EN)?;
    Ok(())
}

/// `hda play-test`: 1 s of a 1 kHz sine at 50 % (48 kHz stereo) through the first codec's
/// first output converter.
fn play_test() -> Result<String, String> {
    let codec = *super::codecs()?
        .first()
        .ok_or("hda: no codec answered the link reset")?;
    let path = output_path(codec)?;
    let mut sine =
        lull_pcm::Sine::new(1000, 48_000, 2, 50).map_err(|e| alloc::format!("hda: {e}"))?;
    let mut left: usize = 48_000 * 4;
    let config = StreamConfig {
        direction: Direction::Playback,
        rate: 48_000,
        channels: 2,
        period_bytes: 4096,
        periods: 16,
    };
    let mut fill = |period: &mut [u8]| {
        let want = period.len().min(left);
        let n = sine.fill(&mut period[..want]);
        left -= n;
        n
    };
    let mut prepare = |tag: u8, format: u16| setup_output(codec, &path, tag, format);
    let stats = run_stream(&config, &mut prepare, StreamData::Play(&mut fill))?;
    Ok(alloc::format!(
        "codec {codec}: DAC {:#04x} -> pin {:#04x}\nplayed {} frames: {} periods, {} interrupts, \
         {} underruns, {} ms\n",
        path.dac,
        path.pin,
        stats.bytes / 4,
        stats.periods,
        stats.interrupts,
        stats.underruns,
        stats.elapsed_ns / 1_000_000
    ))
}

/// `0x`-prefixed or bare hex (`f0000`), or decimal when all digits.
fn number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None if text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        None => u32::from_str_radix(text, 16).ok(),
    }
}

const USAGE: &str = "usage: hda | hda verb CODEC NID VERB | hda widgets [CODEC] | hda play-test";

/// `hda`, `hda verb CODEC NID VERB`, `hda widgets [CODEC]`, `hda play-test`. Returns what it
/// prints.
pub fn cmd_hda(args: &[&str]) -> Result<String, String> {
    crate::drivers::wait_for_device_probe();
    match args {
        [] => {
            let info = super::controller()?;
            let mut out = String::new();
            let _ = writeln!(
                out,
                "{} {} ({}): IRQ {} ({}), {} input / {} output streams",
                info.pci_name,
                info.description,
                super::DRIVER,
                info.irq,
                info.irq_kind,
                info.inputs,
                info.outputs
            );
            for codec in super::codecs()? {
                match param(codec, 0, PAR_VENDOR_ID) {
                    Ok(vendor) => {
                        let _ = writeln!(out, "  codec {codec}: vendor id {vendor:#010x}");
                    }
                    Err(error) => {
                        let _ = writeln!(out, "  codec {codec}: {error}");
                    }
                }
            }
            if info.late_responses != 0 {
                let _ = writeln!(
                    out,
                    "  {} responses came without their interrupt",
                    info.late_responses
                );
            }
            Ok(out)
        }
        ["verb", codec, nid, v] => {
            let (Some(codec), Some(nid), Some(v)) = (number(codec), number(nid), number(v)) else {
                return Err(String::from(USAGE));
            };
            if codec > 14 || nid > 0x7f {
                return Err(String::from("hda: codec 0-14, node 0-0x7f"));
            }
            let response = verb(codec as u8, nid as u8, v)?;
            Ok(alloc::format!("{response:#010x}\n"))
        }
        ["widgets"] => {
            let codec = *super::codecs()?.first().ok_or("hda: no codec")?;
            widgets(codec)
        }
        ["widgets", codec] => {
            let codec = number(codec).filter(|&c| c <= 14).ok_or(USAGE)?;
            widgets(codec as u8)
        }
        ["play-test"] => play_test(),
        _ => Err(String::from(USAGE)),
    }
}
