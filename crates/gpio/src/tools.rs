//! libgpiod (v1) tools over the registry: `gpiodetect`, `gpioinfo`, `gpioget`, `gpioset`,
//! `gpiomon`, `gpiofind`, taking the command's arguments (without the program name) and returning its output
//! or an error whose text is what the tool would print on stderr (`gpioget: ...`).
//!
//! The syntax is libgpiod v1's: `gpioget [-l] [-B bias] <chip> <offset>...`,
//! `gpioset [-l] [-m mode] [-s sec] [-u usec] [-b] <chip> <offset>=<value>...`,
//! `gpiomon [-l] [-n num] [-s] [-r] [-f] [-F fmt] <chip> <offset>...`. Holding lines and waiting
//! is the caller's job (the kernel shell sleeps, this crate has no clock): [`gpioset`] returns the
//! requested lines and how long to hold them, [`gpiomon`] returns a [`Monitor`] to poll when its
//! waker fires.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write};
use core::task::Waker;

use crate::chip::{Direction, IrqType};
use crate::desc::{GpioDesc, GpioDescArray, LineConfig};
use crate::error::GpioError;
use crate::event::{EventKind, LineEvent};
use crate::registry::GpioRegistry;

/// A tool's failure, displayed as the tool prints it: `gpioget: <message>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolError {
    /// The tool's name.
    pub tool: &'static str,
    /// What went wrong.
    pub message: String,
    /// The gpiolib error underneath, if any.
    pub source: Option<GpioError>,
}

impl ToolError {
    fn usage(tool: &'static str, message: impl Into<String>) -> Self {
        Self {
            tool,
            message: message.into(),
            source: None,
        }
    }

    fn gpio(tool: &'static str, context: &str, error: GpioError) -> Self {
        Self {
            tool,
            message: format!("{context}: {error}"),
            source: Some(error),
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.tool, self.message)
    }
}

impl core::error::Error for ToolError {}

/// One option a tool accepts: short letter, long name, whether it takes a value.
struct OptSpec(char, &'static str, bool);

/// Parsed options (letter, value) in command-line order, and the operands.
type Parsed<'a> = (Vec<(char, Option<String>)>, Vec<&'a str>);

/// A getopt_long-shaped parser: clustered short flags (`-lr`), `-n5`/`-n 5`, `--num-events=5`
/// / `--num-events 5`, `--` ending options. Options and operands may be interleaved, as GNU
/// getopt permutes them.
fn getopt<'a>(
    tool: &'static str,
    args: &[&'a str],
    specs: &[OptSpec],
) -> Result<Parsed<'a>, ToolError> {
    let mut options = Vec::new();
    let mut operands = Vec::new();
    let mut index = 0;
    while index < args.len() {
        let arg = args[index];
        index += 1;
        if arg == "--" {
            operands.extend_from_slice(&args[index..]);
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((name, value)) => (name, Some(value.to_owned())),
                None => (long, None),
            };
            let spec = specs
                .iter()
                .find(|s| s.1 == name)
                .ok_or_else(|| ToolError::usage(tool, format!("unrecognized option '--{name}'")))?;
            let value = if spec.2 {
                match inline {
                    Some(value) => Some(value),
                    None => {
                        let value = args.get(index).ok_or_else(|| {
                            ToolError::usage(
                                tool,
                                format!("option '--{name}' requires an argument"),
                            )
                        })?;
                        index += 1;
                        Some((*value).to_owned())
                    }
                }
            } else if inline.is_some() {
                return Err(ToolError::usage(
                    tool,
                    format!("option '--{name}' doesn't allow an argument"),
                ));
            } else {
                None
            };
            options.push((spec.0, value));
        } else if let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.is_empty()) {
            for (position, letter) in cluster.char_indices() {
                let spec = specs.iter().find(|s| s.0 == letter).ok_or_else(|| {
                    ToolError::usage(tool, format!("invalid option -- '{letter}'"))
                })?;
                if spec.2 {
                    let rest = &cluster[position + letter.len_utf8()..];
                    let value = if rest.is_empty() {
                        let value = args.get(index).ok_or_else(|| {
                            ToolError::usage(
                                tool,
                                format!("option requires an argument -- '{letter}'"),
                            )
                        })?;
                        index += 1;
                        (*value).to_owned()
                    } else {
                        rest.to_owned()
                    };
                    options.push((letter, Some(value)));
                    break;
                }
                options.push((letter, None));
            }
        } else {
            operands.push(arg);
        }
    }
    Ok((options, operands))
}

fn parse_offset(tool: &'static str, text: &str) -> Result<u32, ToolError> {
    text.parse()
        .map_err(|_| ToolError::usage(tool, format!("invalid GPIO offset: {text}")))
}

fn check_bias(tool: &'static str, value: &str) -> Result<(), ToolError> {
    match value {
        "as-is" => Ok(()),
        "disable" | "pull-up" | "pull-down" => Err(ToolError::usage(
            tool,
            format!("bias '{value}' is not supported by Lull's GPIO chips"),
        )),
        _ => Err(ToolError::usage(tool, format!("invalid bias: {value}"))),
    }
}

/// Right-aligns to `width` until one field overflows, then prints the rest unpadded: libgpiod
/// v1's `prinfo`, which keeps `gpioinfo` columns aligned for short names.
fn prinfo(out: &mut String, overflowed: &mut bool, width: usize, text: &str) {
    if *overflowed || text.len() > width {
        *overflowed = true;
        out.push_str(text);
    } else {
        let _ = write!(out, "{text:>width$}");
    }
}

/// `gpiodetect`: one line per chip, `gpiochip0 [virtio-gpio] (8 lines)`.
pub fn gpiodetect(registry: &GpioRegistry) -> String {
    let mut out = String::new();
    for chip in registry.chips() {
        let _ = writeln!(
            out,
            "{} [{}] ({} lines)",
            chip.name(),
            chip.label,
            chip.lines
        );
    }
    out
}

/// `gpiofind <name>`: the chip and offset of the line named `name`, `gpiochip0 3`. (libgpiod
/// v1 exits with status 1 and prints nothing when there is no such line; the error here says
/// so in words for the shell.)
pub fn gpiofind(registry: &GpioRegistry, args: &[&str]) -> Result<String, ToolError> {
    const TOOL: &str = "gpiofind";
    let (_, operands) = getopt(TOOL, args, &[])?;
    let [name] = operands.as_slice() else {
        return Err(ToolError::usage(
            TOOL,
            "exactly one GPIO line name must be specified",
        ));
    };
    let (chip, offset) = registry.find_line(name).ok_or_else(|| {
        ToolError::gpio(TOOL, "not found", GpioError::NoSuchLine((*name).to_owned()))
    })?;
    Ok(format!("{} {offset}\n", chip.name()))
}

/// `gpioinfo [chip]...`: every line of the named chips (all chips without operands).
pub fn gpioinfo(registry: &GpioRegistry, args: &[&str]) -> Result<String, ToolError> {
    const TOOL: &str = "gpioinfo";
    let (_, operands) = getopt(TOOL, args, &[])?;
    let chips: Vec<String> = if operands.is_empty() {
        registry.chips().iter().map(|c| c.name()).collect()
    } else {
        operands.iter().map(|s| (*s).to_owned()).collect()
    };
    let mut out = String::new();
    for selector in chips {
        let info = registry
            .chip_info(&selector)
            .map_err(|e| ToolError::gpio(TOOL, &format!("looking up GPIO chip {selector}"), e))?;
        let lines = registry
            .lines(&selector)
            .map_err(|e| ToolError::gpio(TOOL, "error reading line info", e))?;
        let _ = writeln!(out, "{} - {} lines:", info.name(), info.lines);
        for line in lines {
            let mut overflowed = false;
            out.push_str("\tline ");
            prinfo(&mut out, &mut overflowed, 3, &format!("{}", line.offset));
            out.push_str(": ");
            let name = line
                .name
                .as_ref()
                .map_or_else(|| "unnamed".to_owned(), |n| format!("\"{n}\""));
            prinfo(&mut out, &mut overflowed, 12, &name);
            out.push(' ');
            let consumer = line
                .consumer
                .as_ref()
                .map_or_else(|| "unused".to_owned(), |c| format!("\"{c}\""));
            prinfo(&mut out, &mut overflowed, 12, &consumer);
            out.push(' ');
            let direction = line.direction.unwrap_or(Direction::Input).name();
            prinfo(&mut out, &mut overflowed, 8, &format!("{direction} "));
            let polarity = if line.active_low {
                "active-low"
            } else {
                "active-high"
            };
            prinfo(&mut out, &mut overflowed, 13, &format!("{polarity} "));
            if line.consumer.is_some() {
                out.push_str("[used]");
            }
            out.push('\n');
        }
    }
    Ok(out)
}

/// `gpioget [-l] [-B bias] <chip> <offset>...`: requests the lines as inputs for consumer
/// `gpioget`, reads them and releases them; prints the values separated by spaces.
pub fn gpioget(registry: &GpioRegistry, args: &[&str]) -> Result<String, ToolError> {
    const TOOL: &str = "gpioget";
    let specs = [
        OptSpec('l', "active-low", false),
        OptSpec('B', "bias", true),
    ];
    let (options, operands) = getopt(TOOL, args, &specs)?;
    let mut config = LineConfig::input();
    for (option, value) in options {
        match option {
            'l' => config.active_low = true,
            _ => check_bias(TOOL, value.as_deref().unwrap_or(""))?,
        }
    }
    let (chip, offsets) = operands
        .split_first()
        .ok_or_else(|| ToolError::usage(TOOL, "gpiochip must be specified"))?;
    if offsets.is_empty() {
        return Err(ToolError::usage(
            TOOL,
            "at least one GPIO line offset must be specified",
        ));
    }
    let offsets = offsets
        .iter()
        .map(|o| parse_offset(TOOL, o))
        .collect::<Result<Vec<_>, _>>()?;
    let lines = registry
        .get_array(chip, &offsets, TOOL, config)
        .map_err(|e| ToolError::gpio(TOOL, "error reading GPIO values", e))?;
    let values = lines
        .get_values()
        .map_err(|e| ToolError::gpio(TOOL, "error reading GPIO values", e))?;
    let mut out = String::new();
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            out.push(' ');
        }
        out.push(if *value { '1' } else { '0' });
    }
    out.push('\n');
    Ok(out)
}

/// How long `gpioset` holds its lines (libgpiod v1's `--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldMode {
    /// Release at once (`exit`, the default): the value usually stays, but is not guaranteed.
    Exit,
    /// Until the user presses Enter (`wait`).
    Wait,
    /// For this many nanoseconds (`time`, from `--sec` and `--usec`).
    Time {
        /// How long.
        nanoseconds: u64,
    },
    /// Until interrupted (`signal`: Ctrl-C in the shell).
    Signal,
}

/// What `gpioset` leaves to its caller: the lines, set, and how long to keep them.
#[derive(Debug)]
pub struct SetOutcome {
    /// The requested lines, already driven. Dropping them releases them.
    pub lines: GpioDescArray,
    /// When to drop them.
    pub hold: HoldMode,
    /// `--background`: the shell should detach the holder instead of blocking.
    pub background: bool,
}

/// `gpioset [-l] [-m mode] [-s sec] [-u usec] [-b] <chip> <offset>=<value>...`: requests the
/// lines as outputs at the given values for consumer `gpioset`.
pub fn gpioset(registry: &GpioRegistry, args: &[&str]) -> Result<SetOutcome, ToolError> {
    const TOOL: &str = "gpioset";
    let specs = [
        OptSpec('l', "active-low", false),
        OptSpec('B', "bias", true),
        OptSpec('D', "drive", true),
        OptSpec('m', "mode", true),
        OptSpec('s', "sec", true),
        OptSpec('u', "usec", true),
        OptSpec('b', "background", false),
    ];
    let (options, operands) = getopt(TOOL, args, &specs)?;
    let mut active_low = false;
    let mut mode = "exit".to_owned();
    let (mut seconds, mut microseconds) = (None::<u64>, None::<u64>);
    let mut background = false;
    for (option, value) in options {
        let value = value.unwrap_or_default();
        match option {
            'l' => active_low = true,
            'B' => check_bias(TOOL, &value)?,
            'D' if value == "push-pull" => {}
            'D' => {
                return Err(ToolError::usage(
                    TOOL,
                    format!("drive '{value}' is not supported by Lull's GPIO chips"),
                ))
            }
            'm' => mode = value,
            's' => {
                seconds = Some(value.parse().map_err(|_| {
                    ToolError::usage(TOOL, format!("invalid time value in seconds: {value}"))
                })?)
            }
            'u' => {
                microseconds = Some(value.parse().map_err(|_| {
                    ToolError::usage(TOOL, format!("invalid time value in microseconds: {value}"))
                })?)
            }
            _ => background = true,
        }
    }
    let hold = match mode.as_str() {
        "exit" => HoldMode::Exit,
        "wait" => HoldMode::Wait,
        "signal" => HoldMode::Signal,
        "time" => {
            if seconds.is_none() && microseconds.is_none() {
                return Err(ToolError::usage(
                    TOOL,
                    "for time mode both seconds and microseconds must be specified",
                ));
            }
            let nanoseconds = seconds
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                .saturating_add(microseconds.unwrap_or(0).saturating_mul(1000));
            HoldMode::Time { nanoseconds }
        }
        other => return Err(ToolError::usage(TOOL, format!("invalid mode: {other}"))),
    };
    if !matches!(hold, HoldMode::Time { .. }) && (seconds.is_some() || microseconds.is_some()) {
        return Err(ToolError::usage(
            TOOL,
            "can't specify wait time in this mode",
        ));
    }
    if background && hold == HoldMode::Exit {
        return Err(ToolError::usage(TOOL, "can't daemonize in this mode"));
    }
    let (chip, pairs) = operands
        .split_first()
        .ok_or_else(|| ToolError::usage(TOOL, "gpiochip must be specified"))?;
    if pairs.is_empty() {
        return Err(ToolError::usage(
            TOOL,
            "at least one GPIO line offset to value mapping must be specified",
        ));
    }
    let mut offsets = Vec::new();
    let mut values = Vec::new();
    for pair in pairs {
        let invalid = || ToolError::usage(TOOL, format!("invalid offset<->value mapping: {pair}"));
        let (offset, value) = pair.split_once('=').ok_or_else(invalid)?;
        offsets.push(offset.parse::<u32>().map_err(|_| invalid())?);
        values.push(match value {
            "0" => false,
            "1" => true,
            _ => return Err(ToolError::usage(TOOL, "value must be 0 or 1")),
        });
    }
    let config = LineConfig {
        direction: crate::desc::InitialDirection::AsIs,
        active_low,
    };
    let lines = registry
        .get_array(chip, &offsets, TOOL, config)
        .map_err(|e| ToolError::gpio(TOOL, "error setting the GPIO line values", e))?;
    for (desc, &value) in lines.descs().iter().zip(&values) {
        desc.direction_output(value)
            .map_err(|e| ToolError::gpio(TOOL, "error setting the GPIO line values", e))?;
    }
    Ok(SetOutcome {
        lines,
        hold,
        background,
    })
}

/// A running `gpiomon`: the lines it watches and how it prints.
#[derive(Debug)]
pub struct Monitor {
    lines: Vec<GpioDesc>,
    remaining: Option<u64>,
    silent: bool,
    format: Option<String>,
}

/// What one [`Monitor::poll`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorOutput {
    /// Lines to print (empty when nothing happened or `--silent`).
    pub text: String,
    /// `--num-events` events have been seen: stop, and drop the monitor to release the lines.
    pub finished: bool,
}

/// `gpiomon [-l] [-n num] [-s] [-r] [-f] [-F fmt] <chip> <offset>...`: requests the lines for
/// edge events for consumer `gpiomon` (both edges unless `-r` or `-f` alone).
pub fn gpiomon(registry: &GpioRegistry, args: &[&str]) -> Result<Monitor, ToolError> {
    const TOOL: &str = "gpiomon";
    let specs = [
        OptSpec('l', "active-low", false),
        OptSpec('B', "bias", true),
        OptSpec('n', "num-events", true),
        OptSpec('s', "silent", false),
        OptSpec('r', "rising-edge", false),
        OptSpec('f', "falling-edge", false),
        OptSpec('b', "line-buffered", false),
        OptSpec('F', "format", true),
    ];
    let (options, operands) = getopt(TOOL, args, &specs)?;
    let mut config = LineConfig::input();
    let (mut rising, mut falling, mut silent) = (false, false, false);
    let mut remaining = None;
    let mut format = None;
    for (option, value) in options {
        let value = value.unwrap_or_default();
        match option {
            'l' => config.active_low = true,
            'B' => check_bias(TOOL, &value)?,
            'n' => {
                remaining = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| ToolError::usage(TOOL, format!("invalid number: {value}")))?,
                )
            }
            's' => silent = true,
            'r' => rising = true,
            'f' => falling = true,
            'F' => format = Some(value),
            _ => {}
        }
    }
    let trigger = match (rising, falling) {
        (true, false) => IrqType::EdgeRising,
        (false, true) => IrqType::EdgeFalling,
        _ => IrqType::EdgeBoth,
    };
    let (chip, offsets) = operands
        .split_first()
        .ok_or_else(|| ToolError::usage(TOOL, "gpiochip must be specified"))?;
    if offsets.is_empty() {
        return Err(ToolError::usage(TOOL, "GPIO line offset must be specified"));
    }
    let offsets = offsets
        .iter()
        .map(|o| parse_offset(TOOL, o))
        .collect::<Result<Vec<_>, _>>()?;
    let lines = registry
        .get_array(chip, &offsets, TOOL, config)
        .map_err(|e| ToolError::gpio(TOOL, "error requesting GPIO lines", e))?
        .into_descs();
    for line in &lines {
        line.request_irq(trigger)
            .map_err(|e| ToolError::gpio(TOOL, "error requesting GPIO lines", e))?;
    }
    Ok(Monitor {
        lines,
        remaining,
        silent,
        format,
    })
}

impl Monitor {
    /// Registers `waker` on every watched line; it fires when any has an event.
    pub fn set_waker(&self, waker: &Waker) -> Result<(), GpioError> {
        for line in &self.lines {
            line.set_waker(waker)?;
        }
        Ok(())
    }

    /// Reads every queued event (in the order the chip saw them) and formats it.
    pub fn poll(&mut self) -> Result<MonitorOutput, GpioError> {
        let mut events: Vec<LineEvent> = Vec::new();
        for line in &self.lines {
            while let Some(event) = line.read_event()? {
                events.push(event);
            }
        }
        events.sort_by_key(|e| e.seqno);
        let mut text = String::new();
        for event in events {
            if self.remaining == Some(0) {
                break;
            }
            if !self.silent {
                format_event(&mut text, &event, self.format.as_deref());
            }
            if let Some(remaining) = self.remaining.as_mut() {
                *remaining -= 1;
            }
        }
        Ok(MonitorOutput {
            text,
            finished: self.remaining == Some(0),
        })
    }
}

fn format_event(out: &mut String, event: &LineEvent, format: Option<&str>) {
    let seconds = event.timestamp_ns / 1_000_000_000;
    let nanoseconds = event.timestamp_ns % 1_000_000_000;
    let rising = event.kind != EventKind::FallingEdge;
    match format {
        None => {
            let name = if rising {
                " RISING EDGE"
            } else {
                "FALLING EDGE"
            };
            let _ = writeln!(
                out,
                "event: {name} offset: {} timestamp: [{seconds:8}.{nanoseconds:09}]",
                event.offset
            );
        }
        Some(format) => {
            let mut chars = format.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('o') => {
                        let _ = write!(out, "{}", event.offset);
                    }
                    Some('e') => out.push(if rising { '1' } else { '0' }),
                    Some('s') => {
                        let _ = write!(out, "{seconds}");
                    }
                    Some('n') => {
                        let _ = write!(out, "{nanoseconds}");
                    }
                    Some('%') => out.push('%'),
                    Some(other) => {
                        out.push('%');
                        out.push(other);
                    }
                    None => out.push('%'),
                }
            }
            out.push('\n');
        }
    }
}
