//! Property tests: hostile bytes never panic, and rendered parameter sets round-trip.

use lull_cmdline::{lookup, names_match, tokens, Kind, ParamSpec, Parsed, Registry, Token};
use proptest::prelude::*;

/// A registry with one parameter of every kind, names chosen to exercise `-`/`_` matching.
const SPECS: &[ParamSpec] = &[
    ParamSpec {
        name: "quiet",
        kind: Kind::Flag,
        default: "",
        help: "",
    },
    ParamSpec {
        name: "no-hz",
        kind: Kind::Bool,
        default: "on",
        help: "",
    },
    ParamSpec {
        name: "tick_hz",
        kind: Kind::U64 {
            min: 10,
            max: 1_000_000,
        },
        default: "250",
        help: "",
    },
    ParamSpec {
        name: "log-buf-len",
        kind: Kind::Size,
        default: "128K",
        help: "",
    },
    ParamSpec {
        name: "root",
        kind: Kind::Str,
        default: "/dev/vda",
        help: "",
    },
    ParamSpec {
        name: "clocksource",
        kind: Kind::Choice(&["tsc", "hpet", "kvm-clock", "acpi_pm"]),
        default: "tsc",
        help: "",
    },
];

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.declare_all(SPECS).expect("test specs are valid");
    registry
}

/// Bytes drawn mostly from the characters the tokenizer treats specially, so quotes, `=`,
/// separators and NULs collide far more often than in uniformly random bytes.
fn tricky_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(b" \t\n\"=-_\0ab".to_vec()),
        1 => any::<u8>(),
    ]
}

fn tricky_line(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(tricky_byte(), 0..max_len)
}

/// Whether `part` lies inside `whole` (tokens must borrow from the line, never from elsewhere).
fn is_within(part: &[u8], whole: &[u8]) -> bool {
    let whole = whole.as_ptr_range();
    let part = part.as_ptr_range();
    whole.start <= part.start && part.end <= whole.end
}

/// Checks every invariant that must hold for any input whatsoever.
fn check_any_line(line: &[u8]) {
    let mut seen_end = false;
    let mut params = 0usize;
    let mut init_words = 0usize;
    for token in tokens(line) {
        match token {
            Token::Param { name, value } => {
                assert!(!seen_end, "a parameter after `--`");
                assert!(!name.is_empty());
                assert!(is_within(name, line));
                assert!(!name.contains(&0));
                if let Some(value) = value {
                    assert!(is_within(value, line));
                    assert!(!value.contains(&0));
                }
                params += 1;
            }
            Token::EndOfParams => {
                assert!(!seen_end, "two ends of parameters");
                seen_end = true;
            }
            Token::InitArg(word) => {
                assert!(seen_end, "an init argument before `--`");
                assert!(!word.is_empty() && is_within(word, line));
                init_words += 1;
            }
        }
    }

    // `lookup` agrees with the tokens: the last matching parameter before `--`.
    for name in ["a", "b", "quiet", "root", "no_hz"] {
        let expected = tokens(line)
            .take_while(|token| !matches!(token, Token::EndOfParams))
            .filter_map(|token| match token {
                Token::Param {
                    name: token_name,
                    value,
                } if names_match(token_name, name.as_bytes()) => Some(value),
                _ => None,
            })
            .last();
        assert_eq!(lookup(line, name), expected, "lookup({name:?})");
    }

    let parsed = registry().parse(line);
    assert!(parsed.unknown().len() + parsed.errors().len() <= params);
    assert_eq!(parsed.init_args().len(), init_words);
    check_defaults_or_values(&parsed);
    for warning in parsed.warnings() {
        assert!(warning.starts_with("cmdline: "));
        assert!(
            !warning.chars().any(char::is_control),
            "unescaped control character in {warning:?}"
        );
    }
}

/// Every getter answers for every declared parameter, whatever the line was.
fn check_defaults_or_values(parsed: &Parsed) {
    assert!(parsed.get_bool("quiet").is_some());
    assert!(parsed.get_bool("no_hz").is_some());
    let hz = parsed.get_u64("tick-hz").expect("declared");
    assert!((10..=1_000_000).contains(&hz));
    assert!(parsed.get_u64("log_buf_len").is_some());
    assert!(parsed.get_str("root").is_some());
    let clock = parsed.get_str("clocksource").expect("declared");
    assert!(["tsc", "hpet", "kvm-clock", "acpi_pm"].contains(&clock));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(line in prop::collection::vec(any::<u8>(), 0..2048)) {
        check_any_line(&line);
    }

    #[test]
    fn tricky_bytes_never_panic(line in tricky_line(2048)) {
        check_any_line(&line);
    }

    #[test]
    fn tricky_text_with_declared_names_never_panics(
        words in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "quiet", "no-hz", "no_hz", "tick_hz", "log-buf-len", "root", "clocksource",
                    "--", "x",
                ]),
                prop::option::of(tricky_line(12)),
            ),
            0..40,
        )
    ) {
        let mut line = Vec::new();
        for (name, value) in words {
            line.extend_from_slice(name.as_bytes());
            if let Some(value) = value {
                line.push(b'=');
                line.extend_from_slice(&value);
            }
            line.push(b' ');
        }
        check_any_line(&line);
    }
}

proptest! {
    // Few cases: each line is 100 KiB or more, and the point is length, not variety.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn long_arbitrary_lines_never_panic(
        line in prop::collection::vec(any::<u8>(), 100 * 1024..160 * 1024)
    ) {
        check_any_line(&line);
    }

    #[test]
    fn long_tricky_lines_never_panic(
        line in prop::collection::vec(tricky_byte(), 100 * 1024..160 * 1024)
    ) {
        check_any_line(&line);
    }
}

/// How a `name` or `name=value` word is written on the line.
#[derive(Debug, Clone, Copy)]
enum Quoting {
    /// `name=value`: only possible when the value has no whitespace.
    Plain,
    /// `name="value"`.
    Value,
    /// `"name=value"`.
    Word,
}

fn quoting() -> impl Strategy<Value = Quoting> {
    prop_oneof![
        Just(Quoting::Plain),
        Just(Quoting::Value),
        Just(Quoting::Word)
    ]
}

/// Text that can be carried by a quoted value: anything but `"` (Linux's syntax has no escape
/// for it) and NUL (which ends the line).
fn value_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => any::<char>(),
            1 => prop::sample::select(vec![' ', '\t', '\n', '=', '-', '\'']),
        ]
        .prop_filter("no quote or NUL", |c| *c != '"' && *c != '\0'),
        0..24,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn has_space(text: &str) -> bool {
    text.bytes()
        .any(|byte| matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
}

/// Writes one word; falls back from `Plain` to quoting when the value needs it.
fn render_word(line: &mut String, name: &str, value: Option<&str>, quoting: Quoting) {
    match (value, quoting) {
        (None, Quoting::Plain | Quoting::Value) => line.push_str(name),
        (None, Quoting::Word) => line.push_str(&format!("\"{name}\"")),
        (Some(value), Quoting::Plain) if !has_space(value) => {
            line.push_str(&format!("{name}={value}"))
        }
        (Some(value), Quoting::Plain | Quoting::Value) => {
            line.push_str(&format!("{name}=\"{value}\""))
        }
        (Some(value), Quoting::Word) => line.push_str(&format!("\"{name}={value}\"")),
    }
}

/// Whitespace runs between words.
fn separator() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![' ', '\t', '\n', '\r']), 1..4)
        .prop_map(|chars| chars.into_iter().collect())
}

fn param_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_.-]{0,15}"
}

proptest! {
    #[test]
    fn tokens_round_trip_rendered_params(
        words in prop::collection::vec(
            (param_name(), prop::option::of(value_text()), quoting(), separator()),
            0..30,
        ),
        leading in separator(),
    ) {
        let mut line = leading;
        for (name, value, quoting, separator) in &words {
            render_word(&mut line, name, value.as_deref(), *quoting);
            line.push_str(separator);
        }
        let parsed: Vec<(Vec<u8>, Option<Vec<u8>>)> = tokens(line.as_bytes())
            .map(|token| match token {
                Token::Param { name, value } => (name.to_vec(), value.map(<[u8]>::to_vec)),
                other => panic!("unexpected token {other:?} in {line:?}"),
            })
            .collect();
        let expected: Vec<(Vec<u8>, Option<Vec<u8>>)> = words
            .iter()
            .map(|(name, value, _, _)| {
                (name.clone().into_bytes(), value.clone().map(String::into_bytes))
            })
            .collect();
        prop_assert_eq!(parsed, expected, "line {:?}", line);
    }
}

/// One valid occurrence of a declared parameter: how it is written and what it must yield.
#[derive(Debug, Clone)]
struct Occurrence {
    /// Index into `SPECS`.
    spec: usize,
    /// The value as written (`None` for a bare name).
    text: Option<String>,
    expected: Expected,
}

#[derive(Debug, Clone, PartialEq)]
enum Expected {
    Bool(bool),
    Number(u64),
    Text(String),
}

fn occurrence() -> impl Strategy<Value = Occurrence> {
    let flag = Just(Occurrence {
        spec: 0,
        text: None,
        expected: Expected::Bool(true),
    });
    let boolean = prop::sample::select(vec![
        (None, true),
        (Some("1"), true),
        (Some("yes"), true),
        (Some("ON"), true),
        (Some("true"), true),
        (Some("0"), false),
        (Some("n"), false),
        (Some("off"), false),
        (Some("False"), false),
    ])
    .prop_map(|(text, value)| Occurrence {
        spec: 1,
        text: text.map(String::from),
        expected: Expected::Bool(value),
    });
    let integer = (10u64..=1_000_000, any::<bool>()).prop_map(|(value, hex)| Occurrence {
        spec: 2,
        text: Some(if hex {
            format!("0x{value:x}")
        } else {
            value.to_string()
        }),
        expected: Expected::Number(value),
    });
    let size = (
        0u64..1 << 20,
        prop::sample::select(vec![("", 0), ("K", 10), ("m", 20), ("G", 30)]),
    )
        .prop_map(|(number, (suffix, shift))| Occurrence {
            spec: 3,
            text: Some(format!("{number}{suffix}")),
            expected: Expected::Number(number << shift),
        });
    let text = value_text().prop_map(|value| Occurrence {
        spec: 4,
        text: Some(value.clone()),
        expected: Expected::Text(value),
    });
    let choice =
        prop::sample::select(vec!["tsc", "hpet", "kvm-clock", "acpi_pm"]).prop_map(|choice| {
            Occurrence {
                spec: 5,
                text: Some(choice.to_string()),
                expected: Expected::Text(choice.to_string()),
            }
        });
    prop_oneof![flag, boolean, integer, size, text, choice]
}

/// The spec's name with each `-` or `_` independently flipped, as a user might type it.
fn spelled(name: &str, flips: u32) -> String {
    name.chars()
        .enumerate()
        .map(|(position, c)| match c {
            '-' | '_' if flips & (1 << (position % 32)) != 0 => {
                if c == '-' {
                    '_'
                } else {
                    '-'
                }
            }
            c => c,
        })
        .collect()
}

fn value_of(parsed: &Parsed, spec: &ParamSpec) -> Expected {
    match spec.kind {
        Kind::Flag | Kind::Bool => Expected::Bool(parsed.get_bool(spec.name).expect("declared")),
        Kind::U64 { .. } | Kind::Size => {
            Expected::Number(parsed.get_u64(spec.name).expect("declared"))
        }
        Kind::Str | Kind::Choice(_) => {
            Expected::Text(parsed.get_str(spec.name).expect("declared").to_string())
        }
    }
}

proptest! {
    #[test]
    fn registry_round_trips_generated_params(
        occurrences in prop::collection::vec(
            (occurrence(), quoting(), separator(), any::<u32>()),
            0..24,
        ),
        init_words in prop::collection::vec("[a-z0-9=_.-]{1,8}", 0..4),
    ) {
        let mut line = String::new();
        for (occurrence, quoting, separator, flips) in &occurrences {
            let name = spelled(SPECS[occurrence.spec].name, *flips);
            render_word(&mut line, &name, occurrence.text.as_deref(), *quoting);
            line.push_str(separator);
        }
        if !init_words.is_empty() {
            line.push_str("-- ");
            line.push_str(&init_words.join(" "));
        }

        let parsed = registry().parse(line.as_bytes());
        prop_assert!(parsed.unknown().is_empty(), "unknown {:?} in {:?}", parsed.unknown(), line);
        prop_assert!(parsed.errors().is_empty(), "errors {:?} in {:?}", parsed.errors(), line);
        prop_assert_eq!(parsed.warnings().count(), 0);
        prop_assert_eq!(parsed.init_args(), init_words.as_slice());

        let defaults = registry().parse(b"");
        for (index, spec) in SPECS.iter().enumerate() {
            let last = occurrences.iter().rev().find(|(occurrence, ..)| occurrence.spec == index);
            match last {
                Some((occurrence, ..)) => {
                    prop_assert!(parsed.is_set(spec.name));
                    prop_assert_eq!(value_of(&parsed, spec), occurrence.expected.clone());
                }
                None => {
                    prop_assert!(!parsed.is_set(spec.name));
                    prop_assert_eq!(value_of(&parsed, spec), value_of(&defaults, spec));
                }
            }
        }
    }
}
