//! The control channel's line protocol: what a test (or a person) types to play the outside
//! world. One command per line, one reply line per command, `ok ...` or `error: ...`.

use std::fmt;

/// A line as the user named it: a number or a line name, resolved against the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LineRef {
    /// `3`.
    Number(u32),
    /// `button`.
    Name(String),
}

impl fmt::Display for LineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// A parsed control command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `set LINE 0|1`: drive an input.
    Set(LineRef, bool),
    /// `pulse LINE`: a rising then a falling edge.
    Pulse(LineRef),
    /// `get LINE`: the line's level.
    Get(LineRef),
    /// `dump`: every line.
    Dump,
    /// `help`.
    Help,
}

/// The reply to `help`.
pub const HELP: &str = "ok commands: set LINE 0|1, pulse LINE, get LINE, dump, help \
                        (LINE is a number or a name)";

fn line_ref(word: &str) -> LineRef {
    match word.parse::<u32>() {
        Ok(n) => LineRef::Number(n),
        Err(_) => LineRef::Name(word.to_string()),
    }
}

/// Parses one command line; `Ok(None)` for a blank line or a `#` comment (no reply).
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&verb, args)) = words.split_first() else {
        return Ok(None);
    };
    if verb.starts_with('#') {
        return Ok(None);
    }
    let command = match (verb, args) {
        ("set", [line, level]) => {
            let level = match *level {
                "0" | "low" => false,
                "1" | "high" => true,
                other => return Err(format!("set: level `{other}` is not 0 or 1")),
            };
            Command::Set(line_ref(line), level)
        }
        ("set", _) => return Err("usage: set LINE 0|1".into()),
        ("pulse", [line]) => Command::Pulse(line_ref(line)),
        ("pulse", _) => return Err("usage: pulse LINE".into()),
        ("get", [line]) => Command::Get(line_ref(line)),
        ("get", _) => return Err("usage: get LINE".into()),
        ("dump", []) => Command::Dump,
        ("help", []) => Command::Help,
        ("dump" | "help", _) => return Err(format!("{verb} takes no arguments")),
        _ => {
            return Err(format!(
                "unknown command `{verb}` (commands: set, pulse, get, dump, help)"
            ))
        }
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(
            parse("set 1 1"),
            Ok(Some(Command::Set(LineRef::Number(1), true)))
        );
        assert_eq!(
            parse("  set   button   0 \r"),
            Ok(Some(Command::Set(LineRef::Name("button".into()), false)))
        );
        assert_eq!(
            parse("set button high"),
            Ok(Some(Command::Set(LineRef::Name("button".into()), true)))
        );
        assert_eq!(
            parse("pulse 7"),
            Ok(Some(Command::Pulse(LineRef::Number(7))))
        );
        assert_eq!(
            parse("get led0"),
            Ok(Some(Command::Get(LineRef::Name("led0".into()))))
        );
        assert_eq!(parse("dump"), Ok(Some(Command::Dump)));
        assert_eq!(parse("help"), Ok(Some(Command::Help)));
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   \t"), Ok(None));
        assert_eq!(parse("# a comment"), Ok(None));
    }

    #[test]
    fn bad_commands_are_errors() {
        for (line, expected) in [
            ("set", "usage: set"),
            ("set 1", "usage: set"),
            ("set 1 2", "not 0 or 1"),
            ("set 1 1 1", "usage: set"),
            ("pulse", "usage: pulse"),
            ("pulse a b", "usage: pulse"),
            ("get", "usage: get"),
            ("dump now", "takes no arguments"),
            ("frobnicate", "unknown command `frobnicate`"),
            ("SET 1 1", "unknown command"),
        ] {
            let error = parse(line).unwrap_err();
            assert!(error.contains(expected), "{line}: {error}");
        }
        // Anything at all: an error or a command, never a panic.
        for line in [
            "\0",
            "set \u{feff} 1",
            "get 99999999999999999999",
            "set -1 1",
        ] {
            let _ = parse(line);
        }
    }
}
