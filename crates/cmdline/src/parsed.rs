//! The result of parsing a command line: typed values, unknown parameters, init arguments, warnings.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::kind::{parse_value, Kind, Problem, Value};
use crate::registry::{ParamSpec, Registry};
use crate::render;
use crate::tokenize::{split_word, tokens, Token};

/// A declared parameter whose value on the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The parameter's declared name.
    pub name: &'static str,
    /// The refused value, escaped so that it is printable (`None` when the value was missing).
    pub value: Option<String>,
    /// What was wrong with it.
    pub problem: Problem,
    /// The parameter's kind, which says what was expected.
    pub kind: Kind,
    /// What the parameter was left with instead.
    pub fallback: Fallback,
}

/// The value a parameter keeps when a value given for it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Its declared default, rendered for printing (`250`, `"/dev/vda"`, `off`).
    Default(String),
    /// A value accepted from an earlier occurrence on the same line, rendered for printing.
    Earlier(String),
}

/// Renders as the body of a warning line:
/// `invalid value "abc" for hz (expected an integer in 100..=1000); using default 250`.
impl fmt::Display for ParamError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name;
        let kind = self.kind;
        match &self.value {
            None => write!(formatter, "missing value for {name} (expected {kind}); ")?,
            Some(value) => write!(
                formatter,
                "invalid value \"{value}\" for {name} (expected {kind}); "
            )?,
        }
        match &self.fallback {
            Fallback::Default(default) => write!(formatter, "using default {default}"),
            Fallback::Earlier(earlier) => write!(formatter, "keeping earlier value {earlier}"),
        }
    }
}

impl core::error::Error for ParamError {}

/// A parsed command line: every declared parameter's value, plus what did not fit.
///
/// It owns a snapshot of the [`Registry`] it was parsed against, so it can be stored for the
/// life of the kernel without borrowing anything. Getters accept either `-` or `_` in names.
#[derive(Debug, Clone)]
pub struct Parsed {
    registry: Registry,
    /// Accepted values, parallel to the registry's entries; `None` means "use the default".
    values: Vec<Option<Value>>,
    unknown: Vec<String>,
    errors: Vec<ParamError>,
    init_args: Vec<String>,
    /// Escaped renderings of init arguments that were not UTF-8 (and were passed on lossily).
    non_utf8_init_args: Vec<String>,
}

impl Parsed {
    /// Parses `line` against `registry`; see [`Registry::parse`].
    pub(crate) fn new(registry: Registry, line: &[u8]) -> Parsed {
        let entries = registry.entries();
        let mut values: Vec<Option<Value>> = alloc::vec![None; entries.len()];
        // The raw text of each accepted value, for "keeping earlier value ..." messages.
        let mut accepted_text: Vec<Option<&[u8]>> = alloc::vec![None; entries.len()];
        let mut unknown = Vec::new();
        let mut errors = Vec::new();
        let mut init_args = Vec::new();
        let mut non_utf8_init_args = Vec::new();

        for token in tokens(line) {
            match token {
                Token::Param { name, value } => {
                    let Some(index) = registry.index_of(name) else {
                        unknown.push(render::param(name, value));
                        continue;
                    };
                    let spec = entries[index].spec;
                    match parse_value(spec.kind, value) {
                        Ok(converted) => {
                            values[index] = Some(converted);
                            accepted_text[index] = value;
                        }
                        Err(problem) => {
                            let fallback = if values[index].is_some() {
                                Fallback::Earlier(render_setting(spec.kind, accepted_text[index]))
                            } else {
                                Fallback::Default(render_default(spec.kind, spec.default))
                            };
                            errors.push(ParamError {
                                name: spec.name,
                                value: value.map(render::escaped),
                                problem,
                                kind: spec.kind,
                                fallback,
                            });
                        }
                    }
                }
                Token::EndOfParams => {}
                Token::InitArg(raw) => {
                    let text = init_arg_text(raw);
                    match String::from_utf8(text) {
                        Ok(text) => init_args.push(text),
                        Err(error) => {
                            non_utf8_init_args.push(render::quoted(error.as_bytes()));
                            init_args.push(String::from_utf8_lossy(error.as_bytes()).into_owned());
                        }
                    }
                }
            }
        }

        Parsed {
            registry,
            values,
            unknown,
            errors,
            init_args,
            non_utf8_init_args,
        }
    }

    /// Whether `name` is on: a [`Kind::Flag`] that was given, or a [`Kind::Bool`] that is true
    /// (given or by default). `false` for any other kind or an undeclared name.
    pub fn flag(&self, name: &str) -> bool {
        self.get_bool(name).unwrap_or(false)
    }

    /// The value of a [`Kind::Bool`] or [`Kind::Flag`] parameter: as given, else its default.
    /// `None` only if `name` is not declared with one of those kinds (a bug in the caller).
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        match self.value(name)? {
            Current::Bool(value) => Some(value),
            _ => None,
        }
    }

    /// The value of a [`Kind::U64`] or [`Kind::Size`] parameter (sizes in bytes): as given,
    /// else its default. `None` only if `name` is not declared with one of those kinds.
    pub fn get_u64(&self, name: &str) -> Option<u64> {
        match self.value(name)? {
            Current::Number(value) => Some(value),
            _ => None,
        }
    }

    /// The value of a [`Kind::Str`] or [`Kind::Choice`] parameter: as given, else its default.
    /// `None` only if `name` is not declared with one of those kinds.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.value(name)? {
            Current::Text(value) => Some(value),
            _ => None,
        }
    }

    /// Whether `name` was given on the command line with an accepted value (so its value is
    /// not simply the default). `false` for an undeclared name.
    pub fn is_set(&self, name: &str) -> bool {
        self.registry
            .index_of(name.as_bytes())
            .is_some_and(|index| self.values[index].is_some())
    }

    /// Parameters on the command line that no subsystem declared, in order, each rendered as
    /// it could be written back (`foo`, `bar=1`, `baz="a b"`) with unprintable bytes escaped.
    pub fn unknown(&self) -> &[String] {
        &self.unknown
    }

    /// Refused values of declared parameters, in command-line order.
    pub fn errors(&self) -> &[ParamError] {
        &self.errors
    }

    /// The words after `--`, as Linux passes them to init: quotes stripped and `name=value`
    /// joined back (so `a="b c"` becomes `a=b c`). Invalid UTF-8 is replaced by U+FFFD, and a
    /// warning says so.
    pub fn init_args(&self) -> &[String] {
        &self.init_args
    }

    /// The registry snapshot this line was parsed against (for listing parameters and help).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Ready-to-print warning lines, in this order: one line listing every unknown parameter
    /// (`cmdline: unknown parameters ignored: foo bar=1`), then one line per refused value
    /// (see [`ParamError`]'s `Display`), then one per init argument that was not UTF-8.
    /// Empty when the line was entirely understood.
    pub fn warnings(&self) -> impl Iterator<Item = String> + '_ {
        let unknown = (!self.unknown.is_empty()).then(|| {
            format!(
                "cmdline: unknown parameters ignored: {}",
                self.unknown.join(" ")
            )
        });
        let errors = self.errors.iter().map(|error| format!("cmdline: {error}"));
        let init_args = self.non_utf8_init_args.iter().map(|arg| {
            format!("cmdline: init argument {arg} is not UTF-8; passed on with U+FFFD replacements")
        });
        unknown.into_iter().chain(errors).chain(init_args)
    }

    /// The effective value of a declared parameter: the accepted one, else the default.
    fn value(&self, name: &str) -> Option<Current<'_>> {
        let index = self.registry.index_of(name.as_bytes())?;
        match &self.values[index] {
            Some(Value::Bool(value)) => Some(Current::Bool(*value)),
            Some(Value::Number(value)) => Some(Current::Number(*value)),
            Some(Value::Text(value)) => Some(Current::Text(value)),
            Some(Value::Choice(value)) => Some(Current::Text(value)),
            None => default_of(&self.registry.entries()[index].spec),
        }
    }
}

/// A parameter's effective value, borrowed from the parsed line or the declaration.
enum Current<'a> {
    Bool(bool),
    Number(u64),
    Text(&'a str),
}

/// A declaration's default, converted when it is asked for: a boot reads a few parameters, so
/// converting every default at declaration would run conversions nothing needs. `None` when
/// the kind refuses it (possible only for [`Registry::declare_all_trusted`] tables).
fn default_of(spec: &ParamSpec) -> Option<Current<'static>> {
    match spec.kind {
        // A flag's default is "not given"; `declare` refuses any other.
        Kind::Flag => Some(Current::Bool(false)),
        // A `&str` is UTF-8 already: the text is its own value.
        Kind::Str => Some(Current::Text(spec.default)),
        kind => match parse_value(kind, Some(spec.default.as_bytes())).ok()? {
            Value::Bool(value) => Some(Current::Bool(value)),
            Value::Number(value) => Some(Current::Number(value)),
            Value::Choice(value) => Some(Current::Text(value)),
            Value::Text(_) => None,
        },
    }
}

/// Linux's `repair_env_string`: an init argument is its name, plus `=` and value if it had one,
/// with the quoting stripped exactly as for kernel parameters.
fn init_arg_text(raw: &[u8]) -> Vec<u8> {
    let (word, _) = split_word(raw);
    let mut text = Vec::with_capacity(raw.len());
    text.extend_from_slice(word.name);
    if let Some(value) = word.value {
        text.push(b'=');
        text.extend_from_slice(value);
    }
    text
}

/// Renders an accepted value for a warning, from the text it was given as.
fn render_setting(kind: Kind, text: Option<&[u8]>) -> String {
    match (kind, text) {
        (Kind::Str, Some(text)) => render::quoted(text),
        // A bare flag or boolean.
        (_, None) => String::from("on"),
        (_, Some(text)) => render::escaped(text),
    }
}

/// Renders a declared default for a warning.
fn render_default(kind: Kind, default: &str) -> String {
    match kind {
        Kind::Flag => String::from("off"),
        Kind::Str => render::quoted(default.as_bytes()),
        _ => render::escaped(default.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ParamSpec;
    use alloc::string::ToString;

    const SPECS: &[ParamSpec] = &[
        ParamSpec {
            name: "quiet",
            kind: Kind::Flag,
            default: "",
            help: "Print less during boot.",
        },
        ParamSpec {
            name: "nohz",
            kind: Kind::Bool,
            default: "on",
            help: "Stop the tick while idle.",
        },
        ParamSpec {
            name: "hz",
            kind: Kind::U64 {
                min: 100,
                max: 1000,
            },
            default: "250",
            help: "Tick rate while busy.",
        },
        ParamSpec {
            name: "mem",
            kind: Kind::Size,
            default: "0",
            help: "Limit usable memory (0: no limit).",
        },
        ParamSpec {
            name: "root",
            kind: Kind::Str,
            default: "/dev/vda",
            help: "Root device.",
        },
        ParamSpec {
            name: "clocksource",
            kind: Kind::Choice(&["tsc", "hpet", "kvm-clock"]),
            default: "tsc",
            help: "Preferred clocksource.",
        },
        ParamSpec {
            name: "log-buf-len",
            kind: Kind::Size,
            default: "128K",
            help: "Kernel log buffer size.",
        },
    ];

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry.declare_all(SPECS).unwrap();
        registry
    }

    fn warnings(parsed: &Parsed) -> Vec<String> {
        parsed.warnings().collect()
    }

    #[test]
    fn empty_line_gives_defaults_and_no_warnings() {
        let parsed = registry().parse(b"");
        assert!(!parsed.flag("quiet"));
        assert_eq!(parsed.get_bool("quiet"), Some(false));
        assert_eq!(parsed.get_bool("nohz"), Some(true));
        assert!(parsed.flag("nohz"));
        assert_eq!(parsed.get_u64("hz"), Some(250));
        assert_eq!(parsed.get_u64("mem"), Some(0));
        assert_eq!(parsed.get_u64("log_buf_len"), Some(128 << 10));
        assert_eq!(parsed.get_str("root"), Some("/dev/vda"));
        assert_eq!(parsed.get_str("clocksource"), Some("tsc"));
        assert!(!parsed.is_set("hz"));
        assert!(warnings(&parsed).is_empty());
        assert!(parsed.unknown().is_empty() && parsed.errors().is_empty());
        assert!(parsed.init_args().is_empty());
    }

    #[test]
    fn every_kind_takes_its_value() {
        let parsed = registry().parse(
            b"quiet nohz=off hz=1000 mem=512M root=\"/dev/vdb 2\" clocksource=kvm-clock \
              log_buf_len=1M",
        );
        assert!(parsed.flag("quiet"));
        assert_eq!(parsed.get_bool("nohz"), Some(false));
        assert_eq!(parsed.get_u64("hz"), Some(1000));
        assert_eq!(parsed.get_u64("mem"), Some(512 << 20));
        assert_eq!(parsed.get_str("root"), Some("/dev/vdb 2"));
        assert_eq!(parsed.get_str("clocksource"), Some("kvm-clock"));
        assert_eq!(parsed.get_u64("log-buf-len"), Some(1 << 20));
        for spec in SPECS {
            assert!(parsed.is_set(spec.name), "{}", spec.name);
        }
        assert!(warnings(&parsed).is_empty(), "{:?}", warnings(&parsed));
    }

    #[test]
    fn getters_of_the_wrong_kind_or_unknown_name_return_none() {
        let parsed = registry().parse(b"hz=300");
        assert_eq!(parsed.get_str("hz"), None);
        assert_eq!(parsed.get_bool("hz"), None);
        assert_eq!(parsed.get_u64("root"), None);
        assert_eq!(parsed.get_u64("nosuch"), None);
        assert!(!parsed.flag("hz"));
        assert!(!parsed.flag("nosuch"));
        assert!(!parsed.is_set("nosuch"));
    }

    #[test]
    fn unknown_parameters_are_listed_on_one_line() {
        let parsed = registry().parse(b"foo quiet bar=1 baz=\"a b\" \xff=\x1b");
        assert_eq!(
            parsed.unknown(),
            ["foo", "bar=1", "baz=\"a b\"", "\\xff=\\u{1b}"]
        );
        assert_eq!(
            warnings(&parsed),
            ["cmdline: unknown parameters ignored: foo bar=1 baz=\"a b\" \\xff=\\u{1b}"]
        );
        assert!(parsed.flag("quiet"));
    }

    #[test]
    fn malformed_value_names_parameter_value_expectation_and_default() {
        let parsed = registry().parse(b"hz=abc");
        assert_eq!(parsed.get_u64("hz"), Some(250));
        assert!(!parsed.is_set("hz"));
        assert_eq!(
            parsed.errors(),
            [ParamError {
                name: "hz",
                value: Some("abc".to_string()),
                problem: Problem::Malformed,
                kind: SPECS[2].kind,
                fallback: Fallback::Default("250".to_string()),
            }]
        );
        assert_eq!(
            warnings(&parsed),
            [
                "cmdline: invalid value \"abc\" for hz (expected an integer in 100..=1000); \
              using default 250"
            ]
        );
    }

    #[test]
    fn each_kind_words_its_refusal() {
        let parsed = registry()
            .parse(b"quiet=1 nohz=maybe hz=5000 mem=12X root clocksource=pit root=\"\xff\"");
        assert_eq!(
            warnings(&parsed),
            [
                "cmdline: invalid value \"1\" for quiet (expected no value); using default off",
                "cmdline: invalid value \"maybe\" for nohz (expected a boolean: on/off, yes/no, \
                 y/n, 1/0 or true/false); using default on",
                "cmdline: invalid value \"5000\" for hz (expected an integer in 100..=1000); \
                 using default 250",
                "cmdline: invalid value \"12X\" for mem (expected a size in bytes, optionally \
                 suffixed K, M, G or T); using default 0",
                "cmdline: missing value for root (expected UTF-8 text); using default \"/dev/vda\"",
                "cmdline: invalid value \"pit\" for clocksource (expected one of: tsc, hpet, \
                 kvm-clock); using default tsc",
                "cmdline: invalid value \"\\xff\" for root (expected UTF-8 text); using default \
                 \"/dev/vda\"",
            ]
        );
        let problems: Vec<Problem> = parsed.errors().iter().map(|error| error.problem).collect();
        assert_eq!(
            problems,
            [
                Problem::UnexpectedValue,
                Problem::Malformed,
                Problem::OutOfRange,
                Problem::Malformed,
                Problem::MissingValue,
                Problem::Malformed,
                Problem::NotUtf8,
            ]
        );
        assert_eq!(parsed.get_str("root"), Some("/dev/vda"));
        assert!(!parsed.flag("quiet"));
    }

    #[test]
    fn last_occurrence_wins() {
        let parsed = registry().parse(b"hz=300 root=/a hz=400 root=/b");
        assert_eq!(parsed.get_u64("hz"), Some(400));
        assert_eq!(parsed.get_str("root"), Some("/b"));
    }

    #[test]
    fn refused_later_occurrence_keeps_earlier_value() {
        let parsed = registry().parse(b"hz=300 hz=abc root=\"/x y\" root nohz nohz=2");
        assert_eq!(parsed.get_u64("hz"), Some(300));
        assert_eq!(parsed.get_str("root"), Some("/x y"));
        assert_eq!(parsed.get_bool("nohz"), Some(true));
        assert_eq!(
            warnings(&parsed),
            [
                "cmdline: invalid value \"abc\" for hz (expected an integer in 100..=1000); \
                 keeping earlier value 300",
                "cmdline: missing value for root (expected UTF-8 text); keeping earlier value \
                 \"/x y\"",
                "cmdline: invalid value \"2\" for nohz (expected a boolean: on/off, yes/no, \
                 y/n, 1/0 or true/false); keeping earlier value on",
            ]
        );
    }

    #[test]
    fn names_match_with_either_separator() {
        let parsed = registry().parse(b"log_buf_len=4K");
        assert_eq!(parsed.get_u64("log-buf-len"), Some(4096));
        assert!(parsed.is_set("log_buf_len"));
        assert!(parsed.unknown().is_empty());
    }

    #[test]
    fn init_args_are_unquoted_like_linux() {
        let parsed = registry().parse(b"quiet -- single a=\"b c\" \"d=e f\" hz=300 --");
        assert_eq!(
            parsed.init_args(),
            ["single", "a=b c", "d=e f", "hz=300", "--"]
        );
        // Words after `--` are not kernel parameters.
        assert_eq!(parsed.get_u64("hz"), Some(250));
        assert!(parsed.unknown().is_empty());
        assert!(warnings(&parsed).is_empty());
    }

    #[test]
    fn non_utf8_init_args_are_passed_lossily_with_a_warning() {
        let parsed = registry().parse(b"-- ok \xffx");
        assert_eq!(parsed.init_args(), ["ok", "\u{fffd}x"]);
        assert_eq!(
            warnings(&parsed),
            ["cmdline: init argument \"\\xffx\" is not UTF-8; passed on with U+FFFD replacements"]
        );
    }

    #[test]
    fn warnings_put_unknown_first() {
        let parsed = registry().parse(b"hz=1 foo -- \xff");
        let lines = warnings(&parsed);
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("cmdline: unknown parameters ignored: foo"));
        assert!(lines[1].contains(" for hz "));
        assert!(lines[2].starts_with("cmdline: init argument"));
    }

    #[test]
    fn parsed_is_independent_of_the_registry_it_came_from() {
        let parsed = {
            let registry = registry();
            registry.parse(b"hz=500")
        };
        assert_eq!(parsed.get_u64("hz"), Some(500));
        assert_eq!(parsed.registry().len(), SPECS.len());
    }
}
