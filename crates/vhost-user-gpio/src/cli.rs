//! Command-line parsing (by hand: five options do not need an argument-parser dependency).

use std::fmt;
use std::path::PathBuf;

/// The default lines (shared with lull-vmm's `--gpio`).
pub use lull_gpio_sim::DEFAULT_LINES;

/// What `--help` prints.
pub const USAGE: &str = "\
usage: lull-gpio-backend --socket PATH [options]

A vhost-user-gpio back-end with simulated lines (QEMU: -device vhost-user-gpio-pci).

options:
  --socket PATH        vhost-user socket to listen on (required)
  --lines A,B,...      line names, one line each (an empty name leaves a line unnamed)
  --ngpio N            N lines named gpio0..gpioN-1 (instead of --lines)
                       default: 8 lines amp-enable,button,led0,led1,headphone-detect,mute,reset,irq
  --log FILE           append the log to FILE instead of stderr
  --control PATH       also accept control commands on a unix socket at PATH
  --no-stdin           do not read control commands from stdin
  --keep-listening     after the front-end disconnects, wait for the next one (default: exit)
  -h, --help           this text

control commands (stdin or --control; one reply line each, `ok ...` or `error: ...`):
  set LINE 0|1         drive input LINE (number or name) low or high
  pulse LINE           a rising then a falling edge (the line ends low)
  get LINE             the line's level: `ok 0` or `ok 1`
  dump                 every line's state on one line
  help                 the command list
";

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The vhost-user socket.
    pub socket: PathBuf,
    /// One name per line (`""` unnamed).
    pub lines: Vec<String>,
    /// The log file, or stderr.
    pub log: Option<PathBuf>,
    /// The control socket, if any.
    pub control: Option<PathBuf>,
    /// Whether stdin carries control commands.
    pub stdin: bool,
    /// Whether to serve another front-end after a disconnect.
    pub keep_listening: bool,
}

/// What the command line asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Run the back-end.
    Run(Options),
    /// Print the usage and exit successfully.
    Help,
}

/// A command-line error, printed with the usage hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

fn err<T>(message: impl Into<String>) -> Result<T, CliError> {
    Err(CliError(message.into()))
}

/// Parses the arguments after the program name. `--opt=value` and `--opt value` both work.
pub fn parse<I, S>(args: I) -> Result<Parsed, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut socket = None;
    let mut lines: Option<Vec<String>> = None;
    let mut ngpio: Option<usize> = None;
    let mut log = None;
    let mut control = None;
    let mut stdin = true;
    let mut keep_listening = false;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_string(), Some(value)),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| -> Result<String, CliError> {
            match inline.map(str::to_string).or_else(|| args.next()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => err(format!("{name} needs {what}")),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--socket" => socket = Some(PathBuf::from(value("a path")?)),
            "--log" => log = Some(PathBuf::from(value("a file")?)),
            "--control" => control = Some(PathBuf::from(value("a path")?)),
            "--lines" => {
                let list = value("a comma-separated list of names")?;
                lines = Some(list.split(',').map(str::to_string).collect());
            }
            "--ngpio" => {
                let text = value("a number of lines")?;
                match text.parse::<usize>() {
                    Ok(n) if (1..=usize::from(u16::MAX)).contains(&n) => ngpio = Some(n),
                    _ => return err(format!("--ngpio: `{text}` is not a number from 1 to 65535")),
                }
            }
            "--no-stdin" | "--keep-listening" if inline.is_some() => {
                return err(format!("{name} takes no value"));
            }
            "--no-stdin" => stdin = false,
            "--keep-listening" => keep_listening = true,
            other => return err(format!("unknown argument `{other}`")),
        }
    }
    let Some(socket) = socket else {
        return err("--socket PATH is required");
    };
    let lines = match (lines, ngpio) {
        (Some(_), Some(_)) => return err("--lines and --ngpio cannot be used together"),
        (Some(lines), None) => lines,
        (None, Some(n)) => (0..n).map(|i| format!("gpio{i}")).collect(),
        (None, None) => DEFAULT_LINES.iter().map(|s| s.to_string()).collect(),
    };
    if lines.len() > usize::from(u16::MAX) {
        return err(format!(
            "{} lines: virtio-gpio has at most 65535",
            lines.len()
        ));
    }
    if let Some(i) = lines.iter().position(|n| n.contains('\0')) {
        return err(format!("the name of line {i} contains a NUL byte"));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, name) in lines.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        if name.parse::<u32>().is_ok() {
            return err(format!(
                "line {i} is named `{name}`: a number would be ambiguous in control commands"
            ));
        }
        if name.chars().any(char::is_whitespace) {
            return err(format!(
                "the name of line {i} (`{name}`) contains white space"
            ));
        }
        if !seen.insert(name) {
            return err(format!("line name `{name}` is used twice"));
        }
    }
    Ok(Parsed::Run(Options {
        socket,
        lines,
        log,
        control,
        stdin,
        keep_listening,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match parse(args.iter().copied()) {
            Ok(Parsed::Run(options)) => options,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match parse(args.iter().copied()) {
            Err(e) => e.0,
            other => panic!("{args:?} should fail: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let options = run(&["--socket", "/tmp/gpio.sock"]);
        assert_eq!(options.socket, PathBuf::from("/tmp/gpio.sock"));
        assert_eq!(options.lines, DEFAULT_LINES);
        assert_eq!(options.log, None);
        assert_eq!(options.control, None);
        assert!(options.stdin);
        assert!(!options.keep_listening);
    }

    #[test]
    fn every_option() {
        let options = run(&[
            "--socket=/s",
            "--lines",
            "a,,c",
            "--log",
            "/l",
            "--control=/c",
            "--no-stdin",
            "--keep-listening",
        ]);
        assert_eq!(options.lines, ["a", "", "c"]);
        assert_eq!(options.log, Some(PathBuf::from("/l")));
        assert_eq!(options.control, Some(PathBuf::from("/c")));
        assert!(!options.stdin);
        assert!(options.keep_listening);
        assert_eq!(
            run(&["--ngpio", "3", "--socket", "/s"]).lines,
            ["gpio0", "gpio1", "gpio2"]
        );
    }

    #[test]
    fn help() {
        assert_eq!(parse(["--socket", "/s", "-h"]), Ok(Parsed::Help));
        assert_eq!(parse(["--help"]), Ok(Parsed::Help));
    }

    #[test]
    fn bad_command_lines_are_errors() {
        assert!(error(&[]).contains("--socket PATH is required"));
        assert!(error(&["--socket"]).contains("--socket needs a path"));
        assert!(error(&["--socket="]).contains("--socket needs a path"));
        assert!(error(&["--socket", "/s", "--bogus"]).contains("unknown argument `--bogus`"));
        assert!(error(&["--socket", "/s", "extra"]).contains("unknown argument `extra`"));
        for bad in ["0", "65536", "-1", "x", ""] {
            let e = error(&["--socket", "/s", "--ngpio", bad]);
            assert!(e.contains("--ngpio"), "{bad}: {e}");
        }
        assert!(error(&["--socket", "/s", "--ngpio", "2", "--lines", "a"]).contains("together"));
        assert!(error(&["--socket", "/s", "--lines", "a,b,a"]).contains("used twice"));
        assert!(error(&["--socket", "/s", "--lines", "a,7"]).contains("ambiguous"));
        assert!(error(&["--socket", "/s", "--lines", "a b"]).contains("white space"));
        assert!(error(&["--socket", "/s", "--lines", "a\0"]).contains("NUL"));
        assert!(error(&["--socket", "/s", "--no-stdin=1"]).contains("takes no value"));
        assert!(error(&["--socket", "/s", "--weird=1"]).contains("unknown argument `--weird`"));
        // The largest device parses quickly (the duplicate check is not quadratic).
        let most = run(&["--socket", "/s", "--ngpio", "65535"]);
        assert_eq!(most.lines.len(), 65535);
        let many = vec!["x"; 65536].join(",");
        assert!(error(&["--socket", "/s", "--lines", &many]).contains("at most 65535"));
    }
}
