//! Sound: ASoC cards ([`soc`]: codec, platform and machine drivers with DAPM) and the
//! alsa-utils-like commands that use them.
//!
//! Cards: q35's `AC97` ([`ac97`]: the AC'97 codec's power-down bits and master volume, the
//! bus-master PCM-out box, a line-out jack).

pub mod ac97;
pub mod hda;
pub mod hda_soc;
pub mod soc;

use alloc::string::String;
use alloc::vec::Vec;

use lull_dapm::ControlValue;

use soc::{Direction, StreamConfig, StreamData};

/// Registers the sound drivers. Thread context, from the boot-time probe.
pub fn init() {
    crate::fs::procfs::register(crate::fs::procfs::ProcFile {
        path: "/proc/asound/cards",
        read: Some(proc_cards),
        write: None,
    });
    ac97::register();
    hda::register();
}

/// `-D hw:N` / `-c N`: a card index.
fn card_index(text: &str) -> Result<usize, String> {
    let number = text.strip_prefix("hw:").unwrap_or(text);
    let number = number.split(',').next().unwrap_or(number);
    number
        .parse()
        .map_err(|_| alloc::format!("invalid card {text:?} (hw:N)"))
}

/// Options shared by `speaker-test` and `arecord`.
struct PcmOptions {
    card: Option<usize>,
    rate: Option<u32>,
    channels: u8,
    period_bytes: Option<usize>,
}

/// `speaker-test [-D hw:N] [-t sine|pattern] [-f FREQ] [-A PERCENT] [-l LOOPS] [-r RATE]
/// [-c CHANNELS] [-p PERIOD_US]` (alsa-utils' options, plus Lull's `-A` amplitude and
/// `-t pattern`, a counting pattern a recording can be checked against bit for bit): plays one
/// second per loop (default 1 loop; a 440 Hz sine at 50 % of full scale) through card N
/// (default the first). Returns what it prints.
pub fn cmd_speaker_test(args: &[&str]) -> Result<String, String> {
    let mut frequency = 440u32;
    let mut loops = 1u32;
    let mut period_us = None;
    let mut pattern = false;
    let mut amplitude = 50u32;
    let mut options = PcmOptions {
        card: None,
        rate: None,
        channels: 2,
        period_bytes: None,
    };
    let mut index = 0;
    let number = |option: &str, value: Option<&&str>| -> Result<u32, String> {
        value
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| alloc::format!("speaker-test: option {option} takes a number"))
    };
    while index < args.len() {
        let option = args[index];
        let value = args.get(index + 1);
        match option {
            "-t" | "--test" => match value.copied() {
                Some("sine") => pattern = false,
                Some("pattern") => pattern = true,
                Some(other) => {
                    return Err(alloc::format!(
                        "speaker-test: test type {other:?}: sine or pattern"
                    ))
                }
                None => return Err(String::from("speaker-test: option -t takes a type")),
            },
            "-A" | "--amplitude" => amplitude = number(option, value)?,
            "-D" | "--device" => {
                let text = value.ok_or("speaker-test: option -D takes a device (hw:N)")?;
                options.card =
                    Some(card_index(text).map_err(|e| alloc::format!("speaker-test: {e}"))?);
            }
            "-f" | "--frequency" => frequency = number(option, value)?,
            "-l" | "--nloops" => loops = number(option, value)?,
            "-r" | "--rate" => options.rate = Some(number(option, value)?),
            "-c" | "--channels" => options.channels = number(option, value)?.min(255) as u8,
            "-p" | "--period" => period_us = Some(number(option, value)?),
            other => return Err(alloc::format!("speaker-test: unknown option {other}")),
        }
        index += 2;
    }
    if loops == 0 || loops > 60 {
        return Err(String::from(
            "speaker-test: 1 to 60 loops (this shell cannot be interrupted)",
        ));
    }
    crate::drivers::wait_for_device_probe();
    let card = soc::card(options.card).map_err(|e| alloc::format!("speaker-test: {e}"))?;
    let rate = options.rate.unwrap_or(card.rates()[0]);
    let channels = options.channels;
    let frame = 2 * usize::from(channels);
    if let Some(us) = period_us {
        let frames = (u64::from(rate) * u64::from(us) / 1_000_000) as usize;
        options.period_bytes = Some((frames * frame).max(frame));
    }
    let period_bytes = options.period_bytes.unwrap_or(card.default_period_bytes());
    let mut sine = lull_pcm::Sine::new(frequency, rate, usize::from(channels), amplitude)
        .map_err(|e| alloc::format!("speaker-test: {e}"))?;
    let mut counter = lull_pcm::Pattern::new(usize::from(channels))
        .map_err(|e| alloc::format!("speaker-test: {e}"))?;
    let mut left = u64::from(loops) * u64::from(rate) * frame as u64;
    crate::kprint!(
        "speaker-test (Lull)\n\nPlayback device is hw:{} ({})\nStream parameters are {rate}Hz, \
         S16_LE, {channels} channels\n{}\n",
        card.index(),
        card.name(),
        if pattern {
            String::from("Counting pattern (sample i is i mod 2^16)")
        } else {
            alloc::format!("Sine wave rate is {frequency}.0000Hz, {amplitude} % of full scale")
        }
    );
    let mut fill = |period: &mut [u8]| {
        let want = (period.len() as u64).min(left) as usize;
        let written = if pattern {
            counter.fill(&mut period[..want])
        } else {
            sine.fill(&mut period[..want])
        };
        left -= written as u64;
        written
    };
    let config = StreamConfig {
        direction: Direction::Playback,
        rate,
        channels,
        period_bytes,
        periods: 32,
    };
    let stats = card
        .run_stream(&config, StreamData::Play(&mut fill))
        .map_err(|e| alloc::format!("speaker-test: {e}"))?;
    Ok(alloc::format!(
        "played {} frames: {} periods of {period_bytes} bytes, {} interrupts, {} underruns, {} \
         ms; DAPM power-up {} us\n",
        stats.bytes / frame as u64,
        stats.periods,
        stats.interrupts,
        stats.underruns,
        stats.elapsed_ns / 1_000_000,
        card.last_power_up_ns
            .load(core::sync::atomic::Ordering::Relaxed)
            / 1000
    ))
}

/// `arecord [-D hw:N] [-d SECONDS] [-f S16_LE] [-r RATE] [-c CHANNELS]`: captures through
/// card N (DAPM powers the capture path) and prints how much arrived and its SHA-256 (no file
/// system to write a WAV to).
pub fn cmd_arecord(args: &[&str]) -> Result<String, String> {
    let mut seconds = 1u32;
    let mut options = PcmOptions {
        card: None,
        rate: None,
        channels: 2,
        period_bytes: None,
    };
    let mut index = 0;
    while index < args.len() {
        let option = args[index];
        let value = args.get(index + 1).copied();
        let number = || {
            value
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| alloc::format!("arecord: option {option} takes a number"))
        };
        match option {
            "-D" | "--device" => {
                let text = value.ok_or("arecord: option -D takes a device (hw:N)")?;
                options.card = Some(card_index(text).map_err(|e| alloc::format!("arecord: {e}"))?);
            }
            "-d" | "--duration" => seconds = number()?,
            "-r" | "--rate" => options.rate = Some(number()?),
            "-c" | "--channels" => options.channels = number()?.min(255) as u8,
            "-f" | "--format" => {
                if value != Some("S16_LE") && value != Some("cd") && value != Some("dat") {
                    return Err(String::from("arecord: only -f S16_LE is implemented"));
                }
            }
            other => return Err(alloc::format!("arecord: unknown option {other}")),
        }
        index += 2;
    }
    if seconds == 0 || seconds > 60 {
        return Err(String::from("arecord: -d 1 to 60 seconds"));
    }
    crate::drivers::wait_for_device_probe();
    let card = soc::card(options.card).map_err(|e| alloc::format!("arecord: {e}"))?;
    let rate = options.rate.unwrap_or(card.rates()[0]);
    let frame = 2 * u64::from(options.channels);
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    let mut sink = |bytes: &[u8]| {
        got += bytes.len() as u64;
        hasher.update(bytes);
    };
    crate::kprint!(
        "Recording WAVE 'stdout' : Signed 16 bit Little Endian, Rate {rate} Hz, {}\n",
        if options.channels == 2 {
            String::from("Stereo")
        } else {
            alloc::format!("{} channels", options.channels)
        }
    );
    let config = StreamConfig {
        direction: Direction::Capture,
        rate,
        channels: options.channels,
        period_bytes: card.default_period_bytes(),
        periods: 32,
    };
    let result = card.run_stream(
        &config,
        StreamData::Capture {
            bytes: u64::from(seconds) * u64::from(rate) * frame,
            sink: &mut sink,
        },
    );
    match result {
        Ok(stats) => Ok(alloc::format!(
            "captured {} frames: {} periods, {} interrupts, {} overruns, {} ms, sha256 {}\n",
            got / frame,
            stats.periods,
            stats.interrupts,
            stats.underruns,
            stats.elapsed_ns / 1_000_000,
            hex(&hasher.finalize())
        )),
        Err(error) => Err(alloc::format!(
            "arecord: {error} ({} frames arrived)",
            got / frame
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    use core::fmt::Write;
    let mut out = String::new();
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// `aplay -l`: the cards, as alsa-utils lists them.
pub fn cmd_aplay(args: &[&str]) -> Result<String, String> {
    if args != ["-l"] && args != ["--list-devices"] {
        return Err(String::from("usage: aplay -l (playback is speaker-test's)"));
    }
    crate::drivers::wait_for_device_probe();
    let mut out = String::from("**** List of PLAYBACK Hardware Devices ****\n");
    for card in soc::cards() {
        let link = card.dai_link();
        out += &alloc::format!(
            "card {}: {} [{}], device 0: {} [{} <-> {}]\n",
            card.index(),
            card.name(),
            card.describe(),
            link.name,
            link.cpu_dai,
            link.codec_dai
        );
    }
    Ok(out)
}

/// `/proc/asound/cards`.
pub fn proc_cards() -> String {
    let mut out = String::new();
    for card in soc::cards() {
        out += &alloc::format!(
            " {} [{:<15}]: {}\n",
            card.index(),
            card.name(),
            card.describe()
        );
    }
    if out.is_empty() {
        out = String::from("--- no soundcards ---\n");
    }
    out
}

/// The control names a simple-mixer name (`Master`) stands for.
fn simple_controls(name: &str) -> [String; 4] {
    [
        alloc::format!("{name} Playback Switch"),
        alloc::format!("{name} Playback Volume"),
        alloc::format!("{name} Capture Switch"),
        alloc::format!("{name} Capture Volume"),
    ]
}

fn describe_value(
    card: &soc::Card,
    name: &str,
    value: &ControlValue,
    range: Option<(i32, i32)>,
) -> String {
    match value {
        ControlValue::Switch(on) => String::from(if *on { "[on]" } else { "[off]" }),
        ControlValue::Enum(_, item) => alloc::format!("'{item}'"),
        ControlValue::Volume(v) => {
            let (min, max) = range.unwrap_or((0, 0));
            let percent = if max > min {
                (v - min) * 100 / (max - min)
            } else {
                0
            };
            let db = card
                .db_scale(name)
                .map(|(low, step)| {
                    let centi = low + (v - min) * step;
                    alloc::format!(
                        " [{}{}.{:02}dB]",
                        if centi < 0 { "-" } else { "" },
                        centi.unsigned_abs() / 100,
                        centi.unsigned_abs() % 100
                    )
                })
                .unwrap_or_default();
            alloc::format!("{v} [{percent}%]{db}")
        }
    }
}

/// `amixer [-c N] [scontents|contents]`, `amixer [-c N] sset NAME VALUE`, `amixer [-c N]
/// cset name='FULL NAME' VALUE`: VALUE is `mute`/`off`, `unmute`/`on`, `toggle`, a raw
/// number, `N%`, `[-]NdB`, or an enum item.
pub fn cmd_amixer(args: &[&str]) -> Result<String, String> {
    let mut args: Vec<&str> = args.to_vec();
    let mut index = None;
    if let Some(at) = args.iter().position(|a| *a == "-c" || *a == "-D") {
        let text = args.get(at + 1).ok_or("amixer: -c takes a card number")?;
        index = Some(card_index(text).map_err(|e| alloc::format!("amixer: {e}"))?);
        args.drain(at..at + 2);
    }
    crate::drivers::wait_for_device_probe();
    let card = soc::card(index).map_err(|e| alloc::format!("amixer: {e}"))?;
    let controls = card.controls();
    match args.as_slice() {
        [] | ["scontents"] | ["contents"] | ["controls"] => {
            let mut out = String::new();
            for (numid, (name, value, range)) in controls.iter().enumerate() {
                out += &alloc::format!(
                    "numid={},iface=MIXER,name='{name}'\n  : values={}\n",
                    numid + 1,
                    describe_value(&card, name, value, *range)
                );
            }
            Ok(out)
        }
        ["sset" | "set", name, value] | ["cset", name, value] => {
            let name = name
                .strip_prefix("name=")
                .unwrap_or(name)
                .trim_matches('\'');
            let candidates: Vec<String> = if controls.iter().any(|(n, _, _)| n == name) {
                alloc::vec![String::from(name)]
            } else {
                simple_controls(name)
                    .into_iter()
                    .filter(|full| controls.iter().any(|(n, _, _)| n == full))
                    .collect()
            };
            if candidates.is_empty() {
                return Err(alloc::format!(
                    "amixer: Unable to find simple control '{name}',0"
                ));
            }
            let mut changed = false;
            for full in &candidates {
                let (_, current, range) = controls.iter().find(|(n, _, _)| n == full).unwrap();
                let new = match (current, *value) {
                    (ControlValue::Switch(_), "mute" | "off") => Some(ControlValue::Switch(false)),
                    (ControlValue::Switch(_), "unmute" | "on") => Some(ControlValue::Switch(true)),
                    (ControlValue::Switch(on), "toggle") => Some(ControlValue::Switch(!on)),
                    (ControlValue::Switch(_), _) => None,
                    (ControlValue::Volume(_), "mute" | "off" | "unmute" | "on" | "toggle") => None,
                    (ControlValue::Volume(_), text) => Some(ControlValue::Volume(volume_value(
                        &card, full, *range, text,
                    )?)),
                    (ControlValue::Enum(..), item) => {
                        Some(ControlValue::Enum(0, String::from(item)))
                    }
                };
                if let Some(new) = new {
                    card.set_control(full, &new)
                        .map_err(|e| alloc::format!("amixer: {e}"))?;
                    changed = true;
                }
            }
            if !changed {
                return Err(alloc::format!(
                    "amixer: invalid value {value:?} for '{name}'"
                ));
            }
            let after = card.controls();
            let mut out = alloc::format!("Simple mixer control '{name}',0\n ");
            for full in &candidates {
                if let Some((n, v, r)) = after.iter().find(|(n, _, _)| n == full) {
                    out += " ";
                    out += &describe_value(&card, n, v, *r);
                }
            }
            out.push('\n');
            Ok(out)
        }
        _ => Err(String::from(
            "usage: amixer [-c N] [contents] | sset NAME mute|unmute|toggle|N|N%|-NdB|ITEM",
        )),
    }
}

/// A volume control's raw value for `N`, `N%` or `[-]NdB` (rounded toward the quieter step).
fn volume_value(
    card: &soc::Card,
    name: &str,
    range: Option<(i32, i32)>,
    text: &str,
) -> Result<i32, String> {
    let (min, max) = range.ok_or_else(|| alloc::format!("amixer: '{name}' is not a volume"))?;
    let invalid = || alloc::format!("amixer: invalid value {text:?} for '{name}'");
    let value = if let Some(percent) = text.strip_suffix('%') {
        let p: i32 = percent.parse().map_err(|_| invalid())?;
        min + (max - min) * p.clamp(0, 100) / 100
    } else if let Some(db) = text.strip_suffix("dB") {
        let (low, step) = card
            .db_scale(name)
            .ok_or_else(|| alloc::format!("amixer: '{name}' has no dB scale"))?;
        let centi = parse_centi(db).ok_or_else(invalid)?;
        if step <= 0 {
            return Err(invalid());
        }
        min + (centi - low).div_euclid(step)
    } else {
        text.parse().map_err(|_| invalid())?
    };
    if !(min..=max).contains(&value) {
        return Err(alloc::format!(
            "amixer: {text} is outside '{name}' ({min}..{max})"
        ));
    }
    Ok(value)
}

/// `-6`, `-1.5`, `0.25` in hundredths.
fn parse_centi(text: &str) -> Option<i32> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let whole: i32 = whole.parse().ok()?;
    let mut fraction = String::from(fraction);
    if fraction.len() > 2 || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while fraction.len() < 2 {
        fraction.push('0');
    }
    let centi = whole * 100 + fraction.parse::<i32>().ok()?;
    Some(if negative { -centi } else { centi })
}

/// `dapm [-c N] [WIDGET]`: every widget's power and the bias (or one widget's detail);
/// `dapm [-c N] pmdown_time [MS]`: shows or sets the delayed power-down.
pub fn cmd_dapm(args: &[&str]) -> Result<String, String> {
    let mut args: Vec<&str> = args.to_vec();
    let mut index = None;
    if let Some(at) = args.iter().position(|a| *a == "-c") {
        let text = args.get(at + 1).ok_or("dapm: -c takes a card number")?;
        index = Some(card_index(text).map_err(|e| alloc::format!("dapm: {e}"))?);
        args.drain(at..at + 2);
    }
    crate::drivers::wait_for_device_probe();
    let card = soc::card(index).map_err(|e| alloc::format!("dapm: {e}"))?;
    match args.as_slice() {
        [] => card.dapm_dump(None),
        ["pmdown_time"] => Ok(alloc::format!("{}\n", card.pmdown_time_ms())),
        ["pmdown_time", ms] => {
            let ms: u64 = ms
                .parse()
                .map_err(|_| alloc::format!("dapm: pmdown_time takes milliseconds, not {ms:?}"))?;
            card.set_pmdown_time_ms(ms);
            Ok(String::new())
        }
        ["enable" | "disable", pin @ ..] if !pin.is_empty() => {
            card.set_pin(&pin.join(" "), args[0] == "enable")
                .map_err(|e| alloc::format!("dapm: {e}"))?;
            Ok(String::new())
        }
        // Widget names may hold spaces ("AFG Power").
        widget if widget[0] != "pmdown_time" => card
            .dapm_dump(Some(&widget.join(" ")))
            .map_err(|e| alloc::format!("dapm: {e}")),
        _ => Err(String::from(
            "usage: dapm [-c N] [WIDGET | pmdown_time [MS] | enable PIN | disable PIN]",
        )),
    }
}
