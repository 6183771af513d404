//! Command lines far beyond Linux's old fixed 256/2048-byte buffers are parsed exactly.

use lull_cmdline::{lookup, tokens, Kind, ParamSpec, Registry, Token};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

const SPECS: &[ParamSpec] = &[
    ParamSpec {
        name: "hz",
        kind: Kind::U64 {
            min: 100,
            max: 1000,
        },
        default: "250",
        help: "",
    },
    ParamSpec {
        name: "root",
        kind: Kind::Str,
        default: "/dev/vda",
        help: "",
    },
    ParamSpec {
        name: "quiet",
        kind: Kind::Flag,
        default: "",
        help: "",
    },
];

fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.declare_all(SPECS).expect("test specs are valid");
    registry
}

/// A deterministic value of exactly `len` bytes mixing words, spaces, tabs and multi-byte
/// UTF-8, so that only exact quote handling over the whole length reproduces it.
fn long_text(len: usize) -> String {
    let pattern = [
        "lull",
        " ",
        "tickless",
        "\t",
        "\u{e9}t\u{e9}",
        "=",
        "x-y_z",
        "  ",
    ];
    let mut text = String::with_capacity(len + 8);
    let mut index = 0;
    while text.len() < len {
        text.push_str(pattern[index % pattern.len()]);
        index += 1;
    }
    // Trim to exactly `len` bytes on a character boundary by padding with ASCII.
    while text.len() > len {
        text.pop();
    }
    while text.len() < len {
        text.push('a');
    }
    text
}

/// Many small parameters until the line reaches `target` bytes: `p0=v0 p1=v1 ...`.
fn many_params_line(target: usize) -> (String, usize) {
    let mut line = String::with_capacity(target + 32);
    let mut count = 0;
    while line.len() < target {
        line.push_str(&format!("p{count}=v{count} "));
        count += 1;
    }
    (line, count)
}

fn check_long_quoted_value(len: usize) {
    let value = long_text(len);
    assert_eq!(value.len(), len);
    for line in [
        format!("quiet root=\"{value}\" hz=500"),
        format!("quiet \"root={value}\" hz=500"),
    ] {
        let parsed = registry().parse(line.as_bytes());
        assert_eq!(parsed.get_str("root"), Some(value.as_str()));
        assert_eq!(parsed.get_u64("hz"), Some(500));
        assert!(parsed.flag("quiet"));
        assert_eq!(parsed.warnings().count(), 0);
        assert_eq!(
            lookup(line.as_bytes(), "root"),
            Some(Some(value.as_bytes()))
        );
        assert_eq!(tokens(line.as_bytes()).count(), 3);
    }
}

fn check_many_params(target: usize) {
    let (params, count) = many_params_line(target);
    assert!(params.len() >= target);
    let line = format!("hz=300 {params}hz=700 -- init{params}");
    let parsed = registry().parse(line.as_bytes());

    assert_eq!(parsed.get_u64("hz"), Some(700));
    assert_eq!(parsed.unknown().len(), count);
    for (index, unknown) in parsed.unknown().iter().enumerate() {
        assert_eq!(unknown, &format!("p{index}=v{index}"));
    }
    // `init` is glued to the first word after `--`, so init gets exactly `count` words.
    assert_eq!(parsed.init_args().len(), count);
    assert_eq!(parsed.init_args()[0], "initp0=v0");
    assert_eq!(
        parsed.init_args()[count - 1],
        format!("p{last}=v{last}", last = count - 1)
    );

    let warnings: Vec<String> = parsed.warnings().collect();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("cmdline: unknown parameters ignored: p0=v0 p1=v1 "));
    assert!(warnings[0].ends_with(&format!(" p{last}=v{last}", last = count - 1)));

    let last = format!("p{}", count - 1);
    assert_eq!(
        lookup(line.as_bytes(), &last),
        Some(Some(format!("v{}", count - 1).as_bytes()))
    );
    assert_eq!(lookup(line.as_bytes(), "init"), None);
    let end_markers = tokens(line.as_bytes())
        .filter(|token| *token == Token::EndOfParams)
        .count();
    assert_eq!(end_markers, 1);
}

#[test]
fn quoted_value_of_100_kib_is_exact() {
    check_long_quoted_value(100 * KIB);
}

#[test]
fn quoted_value_of_1_mib_is_exact() {
    check_long_quoted_value(MIB);
}

#[test]
fn line_of_100_kib_of_params_is_exact() {
    check_many_params(100 * KIB);
}

#[test]
fn line_of_1_mib_of_params_is_exact() {
    check_many_params(MIB);
}

#[test]
fn unterminated_quote_of_1_mib_runs_to_end_without_panic() {
    let value = long_text(MIB);
    let line = format!("hz=400 root=\"{value}");
    let parsed = registry().parse(line.as_bytes());
    assert_eq!(parsed.get_str("root"), Some(value.as_str()));
    assert_eq!(parsed.get_u64("hz"), Some(400));
}
