//! Parameter kinds and the conversion of raw value bytes into typed values.

use alloc::string::String;
use core::fmt;

/// What values a parameter accepts; decides how its text is converted and validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Present or absent (`quiet`). It takes no value; its declared default must be `""` (off),
    /// because a flag that is on by default could never be turned off: use [`Kind::Bool`] then.
    Flag,
    /// A boolean: `1/0`, `y/n`, `yes/no`, `on/off`, `true/false` (any case). A bare `name` means
    /// true, as Linux's `param_set_bool` treats a missing value as `y`.
    Bool,
    /// An unsigned integer in `min..=max`, written in decimal or as `0x` hexadecimal.
    U64 {
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// A byte count, decimal or `0x` hexadecimal, with an optional binary suffix `K`, `M`, `G`,
    /// `T`, `P` or `E` (any case), as Linux's `memparse`: `512K`, `64M`, `0x1000`.
    Size,
    /// Any UTF-8 text, possibly empty; it must be given with `=`.
    Str,
    /// Exactly one of the listed words (case-sensitive), e.g. `&["tsc", "hpet", "kvm-clock"]`.
    Choice(&'static [&'static str]),
}

/// Describes the accepted values, as shown after "expected" in warnings: for example
/// `an integer in 100..=1000` or `one of: tsc, hpet`.
impl fmt::Display for Kind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Kind::Flag => formatter.write_str("no value"),
            Kind::Bool => formatter.write_str("a boolean: on/off, yes/no, y/n, 1/0 or true/false"),
            Kind::U64 {
                min: 0,
                max: u64::MAX,
            } => formatter.write_str("an integer"),
            Kind::U64 { min, max } => write!(formatter, "an integer in {min}..={max}"),
            Kind::Size => formatter.write_str("a size in bytes, optionally suffixed K, M, G or T"),
            Kind::Str => formatter.write_str("UTF-8 text"),
            Kind::Choice(choices) => {
                formatter.write_str("one of: ")?;
                for (index, choice) in choices.iter().enumerate() {
                    if index > 0 {
                        formatter.write_str(", ")?;
                    }
                    formatter.write_str(choice)?;
                }
                Ok(())
            }
        }
    }
}

/// A successfully converted parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// From [`Kind::Flag`] (always `true` once given) and [`Kind::Bool`].
    Bool(bool),
    /// From [`Kind::U64`] and [`Kind::Size`].
    Number(u64),
    /// From [`Kind::Str`].
    Text(String),
    /// From [`Kind::Choice`]: the matching entry of the declared list, so no allocation.
    Choice(&'static str),
}

/// Why a value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The parameter needs a value (`name=...`) but was written as a bare `name`.
    MissingValue,
    /// A [`Kind::Flag`] was given a value.
    UnexpectedValue,
    /// A text value ([`Kind::Str`], [`Kind::Choice`]) is not valid UTF-8.
    NotUtf8,
    /// The value is not written the way the kind requires (`abc` for an integer, an unknown
    /// choice, a bad size suffix).
    Malformed,
    /// A well-formed number outside the accepted range, or too large for 64 bits.
    OutOfRange,
}

/// Converts a parameter's raw value (as the tokenizer returned it) into a typed value.
pub(crate) fn parse_value(kind: Kind, value: Option<&[u8]>) -> Result<Value, Problem> {
    match (kind, value) {
        (Kind::Flag, None) => Ok(Value::Bool(true)),
        (Kind::Flag, Some(_)) => Err(Problem::UnexpectedValue),
        (Kind::Bool, None) => Ok(Value::Bool(true)),
        (Kind::Bool, Some(text)) => parse_bool(text).map(Value::Bool),
        (_, None) => Err(Problem::MissingValue),
        (Kind::U64 { min, max }, Some(text)) => {
            let number = parse_integer(text)?;
            if (min..=max).contains(&number) {
                Ok(Value::Number(number))
            } else {
                Err(Problem::OutOfRange)
            }
        }
        (Kind::Size, Some(text)) => parse_size(text).map(Value::Number),
        (Kind::Str, Some(text)) => core::str::from_utf8(text)
            .map(|text| Value::Text(String::from(text)))
            .map_err(|_| Problem::NotUtf8),
        (Kind::Choice(choices), Some(text)) => {
            let text = core::str::from_utf8(text).map_err(|_| Problem::NotUtf8)?;
            choices
                .iter()
                .find(|choice| **choice == text)
                .map(|choice| Value::Choice(choice))
                .ok_or(Problem::Malformed)
        }
    }
}

/// Accepts the spellings of Linux's `kstrtobool` as whole words (Linux looks only at the first
/// letters, so it would take `yellow` as true; a typo here is reported instead).
fn parse_bool(text: &[u8]) -> Result<bool, Problem> {
    const TRUE: [&[u8]; 5] = [b"1", b"y", b"yes", b"on", b"true"];
    const FALSE: [&[u8]; 5] = [b"0", b"n", b"no", b"off", b"false"];
    if TRUE.iter().any(|word| word.eq_ignore_ascii_case(text)) {
        Ok(true)
    } else if FALSE.iter().any(|word| word.eq_ignore_ascii_case(text)) {
        Ok(false)
    } else {
        Err(Problem::Malformed)
    }
}

/// Parses an unsigned decimal or `0x`/`0X` hexadecimal integer, all of `text`.
///
/// Written by hand rather than with `u64::from_str_radix` because that accepts a leading `+`
/// and needs UTF-8, and octal (`kstrtoull`'s leading `0`) would surprise: `010` is ten here.
fn parse_integer(text: &[u8]) -> Result<u64, Problem> {
    let (digits, radix) = match text {
        [b'0', b'x' | b'X', hex @ ..] => (hex, 16),
        decimal => (decimal, 10),
    };
    if digits.is_empty() {
        return Err(Problem::Malformed);
    }
    let mut number: u64 = 0;
    let mut overflowed = false;
    for &byte in digits {
        let digit = char::from(byte).to_digit(radix).ok_or(Problem::Malformed)?;
        // Keep scanning after an overflow so that `99999999999999999999x` is Malformed, not
        // OutOfRange: the user should fix the typo first.
        match number
            .checked_mul(u64::from(radix))
            .and_then(|shifted| shifted.checked_add(u64::from(digit)))
        {
            Some(next) => number = next,
            None => overflowed = true,
        }
    }
    if overflowed {
        Err(Problem::OutOfRange)
    } else {
        Ok(number)
    }
}

/// Parses a [`Kind::Size`]: an integer with an optional binary-multiple suffix.
fn parse_size(text: &[u8]) -> Result<u64, Problem> {
    let (number, shift) = match text.split_last() {
        Some((&suffix, number)) if suffix.is_ascii_alphabetic() => {
            // `0xE` is a hexadecimal number, not zero exabytes: in hex, a trailing letter that
            // is a hex digit belongs to the number (memparse has the same reading).
            let is_hex = matches!(text, [b'0', b'x' | b'X', ..]);
            if is_hex && suffix.is_ascii_hexdigit() {
                (text, 0)
            } else {
                let shift = match suffix.to_ascii_uppercase() {
                    b'K' => 10,
                    b'M' => 20,
                    b'G' => 30,
                    b'T' => 40,
                    b'P' => 50,
                    b'E' => 60,
                    _ => return Err(Problem::Malformed),
                };
                (number, shift)
            }
        }
        _ => (text, 0),
    };
    let number = parse_integer(number)?;
    number.checked_mul(1u64 << shift).ok_or(Problem::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    const HZ: Kind = Kind::U64 {
        min: 100,
        max: 1000,
    };
    const CLOCKS: Kind = Kind::Choice(&["tsc", "hpet", "kvm-clock"]);

    #[test]
    fn flag_is_set_by_presence_and_refuses_a_value() {
        assert_eq!(parse_value(Kind::Flag, None), Ok(Value::Bool(true)));
        assert_eq!(
            parse_value(Kind::Flag, Some(b"1")),
            Err(Problem::UnexpectedValue)
        );
    }

    #[test]
    fn bool_accepts_linux_spellings_in_any_case() {
        for word in ["1", "y", "Y", "yes", "on", "ON", "true", "True"] {
            assert_eq!(
                parse_value(Kind::Bool, Some(word.as_bytes())),
                Ok(Value::Bool(true)),
                "{word}"
            );
        }
        for word in ["0", "n", "N", "no", "off", "Off", "false", "FALSE"] {
            assert_eq!(
                parse_value(Kind::Bool, Some(word.as_bytes())),
                Ok(Value::Bool(false)),
                "{word}"
            );
        }
    }

    #[test]
    fn bool_without_value_is_true_and_typos_are_refused() {
        assert_eq!(parse_value(Kind::Bool, None), Ok(Value::Bool(true)));
        for word in ["", "yellow", "2", "o", "nope"] {
            assert_eq!(
                parse_value(Kind::Bool, Some(word.as_bytes())),
                Err(Problem::Malformed),
                "{word}"
            );
        }
    }

    #[test]
    fn u64_accepts_decimal_and_hex_in_range() {
        assert_eq!(parse_value(HZ, Some(b"250")), Ok(Value::Number(250)));
        assert_eq!(parse_value(HZ, Some(b"100")), Ok(Value::Number(100)));
        assert_eq!(parse_value(HZ, Some(b"1000")), Ok(Value::Number(1000)));
        assert_eq!(parse_value(HZ, Some(b"0x3E8")), Ok(Value::Number(1000)));
        assert_eq!(parse_value(HZ, Some(b"0250")), Ok(Value::Number(250)));
    }

    #[test]
    fn u64_refuses_out_of_range_and_malformed() {
        assert_eq!(parse_value(HZ, Some(b"99")), Err(Problem::OutOfRange));
        assert_eq!(parse_value(HZ, Some(b"1001")), Err(Problem::OutOfRange));
        assert_eq!(parse_value(HZ, None), Err(Problem::MissingValue));
        for text in [
            "",
            "abc",
            "+250",
            "-1",
            "25 0",
            "0x",
            "0xg",
            "1e3",
            "250\u{e9}",
        ] {
            assert_eq!(
                parse_value(HZ, Some(text.as_bytes())),
                Err(Problem::Malformed),
                "{text}"
            );
        }
    }

    #[test]
    fn u64_overflow_is_out_of_range() {
        let full = Kind::U64 {
            min: 0,
            max: u64::MAX,
        };
        assert_eq!(
            parse_value(full, Some(b"18446744073709551615")),
            Ok(Value::Number(u64::MAX))
        );
        assert_eq!(
            parse_value(full, Some(b"18446744073709551616")),
            Err(Problem::OutOfRange)
        );
        assert_eq!(
            parse_value(full, Some(b"0x10000000000000000")),
            Err(Problem::OutOfRange)
        );
        assert_eq!(
            parse_value(full, Some(b"99999999999999999999x")),
            Err(Problem::Malformed)
        );
    }

    #[test]
    fn size_accepts_binary_suffixes() {
        let cases: [(&str, u64); 10] = [
            ("4096", 4096),
            ("512K", 512 << 10),
            ("512k", 512 << 10),
            ("64M", 64 << 20),
            ("2G", 2 << 30),
            ("1T", 1 << 40),
            ("1P", 1 << 50),
            ("1E", 1 << 60),
            ("0x1000", 0x1000),
            ("0x10M", 16 << 20),
        ];
        for (text, bytes) in cases {
            assert_eq!(
                parse_value(Kind::Size, Some(text.as_bytes())),
                Ok(Value::Number(bytes)),
                "{text}"
            );
        }
    }

    #[test]
    fn size_hex_letters_are_digits_not_suffixes() {
        assert_eq!(
            parse_value(Kind::Size, Some(b"0xE")),
            Ok(Value::Number(0xE))
        );
        assert_eq!(
            parse_value(Kind::Size, Some(b"0x1e")),
            Ok(Value::Number(0x1e))
        );
    }

    #[test]
    fn size_refuses_bad_suffix_missing_number_and_overflow() {
        for text in ["", "K", "12X", "12KB", "1.5G", "-1M"] {
            assert_eq!(
                parse_value(Kind::Size, Some(text.as_bytes())),
                Err(Problem::Malformed),
                "{text}"
            );
        }
        assert_eq!(
            parse_value(Kind::Size, Some(b"16E")),
            Err(Problem::OutOfRange)
        );
        assert_eq!(parse_value(Kind::Size, None), Err(Problem::MissingValue));
    }

    #[test]
    fn str_takes_any_utf8_including_empty() {
        assert_eq!(
            parse_value(Kind::Str, Some("/dev/vda 1 ü".as_bytes())),
            Ok(Value::Text("/dev/vda 1 ü".to_string()))
        );
        assert_eq!(
            parse_value(Kind::Str, Some(b"")),
            Ok(Value::Text(String::new()))
        );
        assert_eq!(parse_value(Kind::Str, None), Err(Problem::MissingValue));
        assert_eq!(
            parse_value(Kind::Str, Some(b"ok\xff")),
            Err(Problem::NotUtf8)
        );
    }

    #[test]
    fn choice_matches_exactly() {
        assert_eq!(
            parse_value(CLOCKS, Some(b"hpet")),
            Ok(Value::Choice("hpet"))
        );
        assert_eq!(parse_value(CLOCKS, Some(b"HPET")), Err(Problem::Malformed));
        assert_eq!(parse_value(CLOCKS, Some(b"hpe")), Err(Problem::Malformed));
        assert_eq!(parse_value(CLOCKS, Some(b"\xff")), Err(Problem::NotUtf8));
        assert_eq!(parse_value(CLOCKS, None), Err(Problem::MissingValue));
    }

    #[test]
    fn kind_describes_its_expectation() {
        assert_eq!(HZ.to_string(), "an integer in 100..=1000");
        assert_eq!(
            Kind::U64 {
                min: 0,
                max: u64::MAX
            }
            .to_string(),
            "an integer"
        );
        assert_eq!(CLOCKS.to_string(), "one of: tsc, hpet, kvm-clock");
        assert_eq!(Kind::Flag.to_string(), "no value");
    }
}
