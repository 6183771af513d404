//! The registry into which each kernel subsystem declares its typed parameters.

use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;

use crate::kind::{parse_value, Kind};
use crate::parsed::Parsed;
use crate::tokenize::normalize_name_byte;

/// The declaration of one kernel parameter.
///
/// Declarations are `'static` data, written next to the subsystem that owns the parameter:
///
/// ```
/// use lull_cmdline::{Kind, ParamSpec};
///
/// pub const HZ: ParamSpec = ParamSpec {
///     name: "hz",
///     kind: Kind::U64 { min: 100, max: 1000 },
///     default: "250",
///     help: "Rate of the periodic tick while a CPU is busy, in Hz.",
/// };
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSpec {
    /// The name as written on the command line. `-` and `_` are interchangeable when matching.
    pub name: &'static str,
    /// Which values are accepted.
    pub kind: Kind,
    /// The value used when the parameter is absent or its value is refused, written as it would
    /// be on the command line (`"250"`, `"64M"`, `"off"`). Must itself be a valid value of
    /// `kind`; for [`Kind::Flag`] it must be `""`.
    pub default: &'static str,
    /// One sentence for people reading a parameter listing.
    pub help: &'static str,
}

/// Why a declaration was refused. Every case is a mistake in kernel code, never in user input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclareError {
    /// A parameter with this name (counting `-` and `_` as equal) is already declared.
    Duplicate {
        /// The name declared twice.
        name: &'static str,
    },
    /// The name could never be written as one command-line word: it is empty, contains a
    /// byte that is not printable ASCII, contains `=` or `"`, or has no letter or digit
    /// (which would clash with the `--` separator).
    InvalidName {
        /// The refused name.
        name: &'static str,
    },
    /// A [`Kind::U64`] whose `min` is greater than its `max`, so no value would be accepted.
    EmptyRange {
        /// The parameter's name.
        name: &'static str,
        /// The declared minimum.
        min: u64,
        /// The declared maximum.
        max: u64,
    },
    /// A [`Kind::Choice`] with no choices.
    EmptyChoice {
        /// The parameter's name.
        name: &'static str,
    },
    /// The default is not a value the kind accepts.
    InvalidDefault {
        /// The parameter's name.
        name: &'static str,
        /// The refused default.
        default: &'static str,
        /// The parameter's kind, which says what was expected.
        kind: Kind,
    },
}

impl fmt::Display for DeclareError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeclareError::Duplicate { name } => {
                write!(formatter, "parameter {name} is declared twice")
            }
            DeclareError::InvalidName { name } => write!(
                formatter,
                "parameter name {name:?} cannot be written on a command line \
                 (use printable ASCII with a letter or digit, and no '=' or '\"')"
            ),
            DeclareError::EmptyRange { name, min, max } => write!(
                formatter,
                "parameter {name} accepts no value: its range {min}..={max} is empty"
            ),
            DeclareError::EmptyChoice { name } => {
                write!(formatter, "parameter {name} has an empty list of choices")
            }
            DeclareError::InvalidDefault {
                name,
                default,
                kind,
            } => write!(
                formatter,
                "parameter {name} has default {default:?}, which is not {kind}",
                kind = DefaultExpectation(*kind)
            ),
        }
    }
}

/// Words the expectation for a default, where a [`Kind::Flag`] must have an empty one.
struct DefaultExpectation(Kind);

impl fmt::Display for DefaultExpectation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Kind::Flag => formatter.write_str("empty (a flag is off unless given)"),
            kind => write!(formatter, "{kind}"),
        }
    }
}

impl core::error::Error for DeclareError {}

/// A declared parameter with its default already converted, so getters never re-parse.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) spec: ParamSpec,
}

/// The set of declared kernel parameters.
///
/// Subsystems declare their parameters at boot (or as a `&[ParamSpec]` table passed to
/// [`declare_all`](Registry::declare_all)); the kernel then calls [`parse`](Registry::parse)
/// once on the command line and hands the [`Parsed`] result to whoever needs a value.
///
/// ```
/// use lull_cmdline::{Kind, ParamSpec, Registry};
///
/// let mut registry = Registry::new();
/// registry
///     .declare_all(&[
///         ParamSpec { name: "quiet", kind: Kind::Flag, default: "", help: "Less boot output." },
///         ParamSpec {
///             name: "hz",
///             kind: Kind::U64 { min: 100, max: 1000 },
///             default: "250",
///             help: "Tick rate while busy.",
///         },
///     ])
///     .unwrap();
/// let parsed = registry.parse(b"quiet hz=abc splash");
/// assert!(parsed.flag("quiet"));
/// assert_eq!(parsed.get_u64("hz"), Some(250));
/// let warnings: Vec<String> = parsed.warnings().collect();
/// assert_eq!(
///     warnings,
///     [
///         "cmdline: unknown parameters ignored: splash",
///         "cmdline: invalid value \"abc\" for hz (expected an integer in 100..=1000); \
///          using default 250",
///     ]
/// );
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// Declarations in the order they were made.
    entries: Vec<Entry>,
    /// Indexes into `entries`, sorted by normalized name (`-` read as `_`): one binary search
    /// per token instead of a scan over every declaration. A plain sorted vector rather than a
    /// map keyed by normalized copies: the kernel declares its parameters at every boot, where
    /// an instruction emulator pays for each new piece of code it runs, and this is less code
    /// and no allocation per name.
    by_name: Vec<usize>,
}

impl Registry {
    /// An empty registry.
    pub const fn new() -> Self {
        Registry {
            entries: Vec::new(),
            by_name: Vec::new(),
        }
    }

    /// Declares one parameter. Refuses a name already declared (with `-` and `_` counted as
    /// equal), a name that cannot be written on a command line, a kind that accepts nothing,
    /// and a default the kind does not accept.
    pub fn declare(&mut self, spec: ParamSpec) -> Result<(), DeclareError> {
        validate(&spec)?;
        self.insert(spec)
    }

    /// Declares every parameter of `specs`, or none of them: on the first refusal the
    /// declarations this call already made are withdrawn and the error is returned.
    pub fn declare_all(&mut self, specs: &[ParamSpec]) -> Result<(), DeclareError> {
        self.declare_table(specs, true)
    }

    /// [`declare_all`](Registry::declare_all) for a table a test has already declared with
    /// `declare_all`: a name given twice is still refused, but names and defaults are not
    /// checked again. A default the kind does not accept reads as no value at all (the
    /// getters return `None`). The kernel declares its own tables this way at every boot,
    /// where an instruction emulator pays for each new piece of code it runs, and checks them
    /// in an in-kernel test.
    pub fn declare_all_trusted(&mut self, specs: &[ParamSpec]) -> Result<(), DeclareError> {
        self.declare_table(specs, false)
    }

    fn declare_table(&mut self, specs: &[ParamSpec], check: bool) -> Result<(), DeclareError> {
        let already_declared = self.entries.len();
        for spec in specs {
            let declared = if check {
                self.declare(*spec)
            } else {
                self.insert(*spec)
            };
            if let Err(error) = declared {
                self.entries.truncate(already_declared);
                self.by_name.retain(|&index| index < already_declared);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Adds a declaration unless its name (with `-` and `_` counted as equal) is taken.
    fn insert(&mut self, spec: ParamSpec) -> Result<(), DeclareError> {
        match self.search(spec.name.as_bytes()) {
            Ok(_) => return Err(DeclareError::Duplicate { name: spec.name }),
            Err(at) => self.by_name.insert(at, self.entries.len()),
        }
        self.entries.push(Entry { spec });
        Ok(())
    }

    /// The declaration of `name` (`-` and `_` interchangeable), if any.
    pub fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.index_of(name.as_bytes())
            .map(|index| &self.entries[index].spec)
    }

    /// Every declaration, in the order declared (for a parameter listing).
    pub fn specs(&self) -> impl ExactSizeIterator<Item = &ParamSpec> + '_ {
        self.entries.iter().map(|entry| &entry.spec)
    }

    /// The number of declared parameters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing has been declared.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Parses a whole command line against the declared parameters.
    ///
    /// Never fails and never panics: unknown parameters, refused values and non-UTF-8 bytes
    /// are collected in the result (see [`Parsed::warnings`]) and every declared parameter
    /// still has a value, its default if need be. When a parameter is given several times the
    /// last accepted occurrence wins; a refused occurrence leaves the earlier value in place,
    /// as Linux does when a setter fails.
    pub fn parse(&self, line: &[u8]) -> Parsed {
        Parsed::new(self.clone(), line)
    }

    /// [`parse`](Registry::parse) for a registry that is not needed afterwards: the result
    /// keeps this one instead of a copy. The kernel parses its command line once, at boot,
    /// where cloning and dropping the name index cost about 90 of the ~4,000 code blocks an
    /// instruction emulator translates before the prompt.
    pub fn into_parsed(self, line: &[u8]) -> Parsed {
        Parsed::new(self, line)
    }

    /// Declarations in order, for [`Parsed`].
    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Where `name` (`-` and `_` interchangeable) is in `by_name`, or where it would go.
    fn search(&self, name: &[u8]) -> Result<usize, usize> {
        self.by_name.binary_search_by(|&index| {
            compare_normalized(self.entries[index].spec.name.as_bytes(), name)
        })
    }

    /// Finds a declaration by name (`-` and `_` interchangeable).
    pub(crate) fn index_of(&self, name: &[u8]) -> Option<usize> {
        self.search(name).ok().map(|at| self.by_name[at])
    }
}

/// Checks a declaration on its own: a writable name, a kind that accepts something, a default
/// the kind accepts.
fn validate(spec: &ParamSpec) -> Result<(), DeclareError> {
    let name = spec.name;
    let writable = spec
        .name
        .bytes()
        .all(|byte| byte.is_ascii_graphic() && byte != b'=' && byte != b'"');
    if !writable || !spec.name.bytes().any(|byte| byte.is_ascii_alphanumeric()) {
        return Err(DeclareError::InvalidName { name });
    }
    match spec.kind {
        Kind::U64 { min, max } if min > max => {
            return Err(DeclareError::EmptyRange { name, min, max });
        }
        Kind::Choice([]) => return Err(DeclareError::EmptyChoice { name }),
        _ => {}
    }
    let invalid_default = DeclareError::InvalidDefault {
        name,
        default: spec.default,
        kind: spec.kind,
    };
    match spec.kind {
        // A flag's default is "not given": there is no way to write "off" for a flag.
        Kind::Flag if spec.default.is_empty() => Ok(()),
        Kind::Flag => Err(invalid_default),
        kind => parse_value(kind, Some(spec.default.as_bytes()))
            .map(|_| ())
            .map_err(|_| invalid_default),
    }
}

/// Orders two names as if every `-` were `_`.
fn compare_normalized(a: &[u8], b: &[u8]) -> Ordering {
    a.iter()
        .map(|&byte| normalize_name_byte(byte))
        .cmp(b.iter().map(|&byte| normalize_name_byte(byte)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn spec(name: &'static str, kind: Kind, default: &'static str) -> ParamSpec {
        ParamSpec {
            name,
            kind,
            default,
            help: "",
        }
    }

    #[test]
    fn into_parsed_parses_as_parse_does() {
        let mut registry = Registry::new();
        registry
            .declare(spec(
                "hz",
                Kind::U64 {
                    min: 100,
                    max: 1000,
                },
                "250",
            ))
            .unwrap();
        registry.declare(spec("quiet", Kind::Flag, "")).unwrap();
        let line = b"hz=abc quiet splash -- init";
        let borrowed = registry.parse(line);
        let owned = registry.into_parsed(line);
        assert_eq!(owned.get_u64("hz"), borrowed.get_u64("hz"));
        assert!(owned.flag("quiet"));
        assert_eq!(owned.unknown(), borrowed.unknown());
        assert_eq!(
            owned.warnings().collect::<Vec<_>>(),
            borrowed.warnings().collect::<Vec<_>>()
        );
        assert_eq!(owned.init_args(), borrowed.init_args());
        assert_eq!(owned.registry().len(), 2);
    }

    const CHOICES: &[&str] = &["tsc", "hpet"];

    fn table() -> [ParamSpec; 6] {
        [
            spec("quiet", Kind::Flag, ""),
            spec("nohz", Kind::Bool, "on"),
            spec(
                "hz",
                Kind::U64 {
                    min: 100,
                    max: 1000,
                },
                "250",
            ),
            spec("mem", Kind::Size, "64M"),
            spec("root", Kind::Str, "/dev/vda"),
            spec("clocksource", Kind::Choice(CHOICES), "hpet"),
        ]
    }

    #[test]
    fn a_trusted_table_reads_as_a_checked_one() {
        for line in [
            &b""[..],
            b"quiet nohz=off hz=1000 mem=1G root=/dev/vdb clocksource=tsc",
        ] {
            let mut checked = Registry::new();
            checked.declare_all(&table()).unwrap();
            let mut trusted = Registry::new();
            trusted.declare_all_trusted(&table()).unwrap();
            let (checked, trusted) = (checked.parse(line), trusted.parse(line));
            assert_eq!(trusted.flag("quiet"), checked.flag("quiet"));
            assert_eq!(trusted.get_bool("nohz"), checked.get_bool("nohz"));
            assert_eq!(trusted.get_u64("hz"), checked.get_u64("hz"));
            assert_eq!(trusted.get_u64("mem"), checked.get_u64("mem"));
            assert_eq!(trusted.get_str("root"), checked.get_str("root"));
            assert_eq!(
                trusted.get_str("clocksource"),
                checked.get_str("clocksource")
            );
        }
        let mut registry = Registry::new();
        registry.declare_all_trusted(&table()).unwrap();
        let parsed = registry.parse(b"");
        assert_eq!(parsed.get_u64("mem"), Some(64 << 20));
        assert_eq!(parsed.get_str("clocksource"), Some("hpet"));
        assert_eq!(parsed.get_bool("nohz"), Some(true));
    }

    #[test]
    fn a_trusted_table_still_refuses_a_name_twice_and_declares_nothing() {
        let mut registry = Registry::new();
        registry.declare_all_trusted(&table()).unwrap();
        let again = [spec("new", Kind::Flag, ""), spec("quiet", Kind::Flag, "")];
        assert_eq!(
            registry.declare_all_trusted(&again),
            Err(DeclareError::Duplicate { name: "quiet" })
        );
        assert_eq!(registry.len(), 6);
        assert!(registry.spec("new").is_none());
    }

    #[test]
    fn a_bad_default_in_a_trusted_table_reads_as_no_value() {
        let bad = [
            spec(
                "hz",
                Kind::U64 {
                    min: 100,
                    max: 1000,
                },
                "50",
            ),
            spec("clocksource", Kind::Choice(CHOICES), "pit"),
        ];
        let mut checked = Registry::new();
        assert!(matches!(
            checked.declare_all(&bad),
            Err(DeclareError::InvalidDefault { name: "hz", .. })
        ));
        let mut registry = Registry::new();
        registry.declare_all_trusted(&bad).unwrap();
        let parsed = registry.parse(b"");
        assert_eq!(parsed.get_u64("hz"), None);
        assert_eq!(parsed.get_str("clocksource"), None);
        // A value given on the line is converted as ever.
        let parsed = registry.parse(b"hz=300 clocksource=tsc");
        assert_eq!(parsed.get_u64("hz"), Some(300));
        assert_eq!(parsed.get_str("clocksource"), Some("tsc"));
    }

    #[test]
    fn declares_and_finds_by_either_separator() {
        let mut registry = Registry::new();
        registry.declare(spec("log-level", Kind::Str, "")).unwrap();
        assert_eq!(registry.spec("log_level").unwrap().name, "log-level");
        assert_eq!(registry.spec("log-level").unwrap().name, "log-level");
        assert!(registry.spec("loglevel").is_none());
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn every_name_is_found_whatever_the_declaration_order() {
        // Names that sort differently once '-' reads as '_' ('-' < '_' < letters in ASCII).
        let names: [&'static str; 12] = [
            "zz", "a-b", "a_c", "ab", "a", "b-", "b_a", "b0", "m-n-o", "m_n", "x9", "a-a",
        ];
        for rotation in 0..names.len() {
            let mut registry = Registry::new();
            for (i, name) in names
                .iter()
                .cycle()
                .skip(rotation)
                .take(names.len())
                .enumerate()
            {
                registry
                    .declare(spec(name, Kind::Flag, ""))
                    .unwrap_or_else(|e| panic!("{name} (declared {i}th): {e:?}"));
            }
            for name in names {
                let other = name.replace('-', "_");
                assert_eq!(registry.spec(name).map(|s| s.name), Some(name));
                assert_eq!(registry.spec(&other).map(|s| s.name), Some(name));
            }
            for unknown in ["", "a-", "b", "m_n_o_", "zzz", "a_b_"] {
                assert!(registry.spec(unknown).is_none(), "{unknown}");
            }
        }
    }

    #[test]
    fn duplicate_names_are_refused_even_with_other_separator() {
        let mut registry = Registry::new();
        registry.declare(spec("a_b", Kind::Flag, "")).unwrap();
        assert_eq!(
            registry.declare(spec("a-b", Kind::Str, "")),
            Err(DeclareError::Duplicate { name: "a-b" })
        );
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.spec("a-b").unwrap().kind, Kind::Flag);
    }

    #[test]
    fn unwritable_names_are_refused() {
        for name in [
            "",
            "a b",
            "a=b",
            "a\"b",
            "--",
            "_",
            "\u{e9}t\u{e9}",
            "tab\t",
        ] {
            assert_eq!(
                Registry::new().declare(spec(name, Kind::Flag, "")),
                Err(DeclareError::InvalidName { name }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn kinds_that_accept_nothing_are_refused() {
        assert_eq!(
            Registry::new().declare(spec("x", Kind::U64 { min: 2, max: 1 }, "1")),
            Err(DeclareError::EmptyRange {
                name: "x",
                min: 2,
                max: 1
            })
        );
        assert_eq!(
            Registry::new().declare(spec("x", Kind::Choice(&[]), "")),
            Err(DeclareError::EmptyChoice { name: "x" })
        );
    }

    #[test]
    fn defaults_must_be_valid_values() {
        let cases = [
            spec("f", Kind::Flag, "on"),
            spec("b", Kind::Bool, ""),
            spec("n", Kind::U64 { min: 1, max: 9 }, "10"),
            spec("s", Kind::Size, "12X"),
            spec("c", Kind::Choice(&["a", "b"]), "c"),
        ];
        for case in cases {
            assert_eq!(
                Registry::new().declare(case),
                Err(DeclareError::InvalidDefault {
                    name: case.name,
                    default: case.default,
                    kind: case.kind
                }),
                "{case:?}"
            );
        }
        let mut registry = Registry::new();
        registry.declare(spec("s", Kind::Str, "")).unwrap();
        registry.declare(spec("z", Kind::Size, "64M")).unwrap();
    }

    #[test]
    fn declare_all_is_all_or_nothing() {
        let mut registry = Registry::new();
        registry.declare(spec("keep", Kind::Flag, "")).unwrap();
        let result = registry.declare_all(&[
            spec("first", Kind::Flag, ""),
            spec("second", Kind::Flag, ""),
            spec("first", Kind::Flag, ""),
        ]);
        assert_eq!(result, Err(DeclareError::Duplicate { name: "first" }));
        assert_eq!(registry.len(), 1);
        assert!(registry.spec("first").is_none());
        assert!(registry.spec("second").is_none());
        // The withdrawn names can be declared again.
        registry
            .declare_all(&[
                spec("first", Kind::Flag, ""),
                spec("second", Kind::Bool, "no"),
            ])
            .unwrap();
        let names: Vec<&str> = registry.specs().map(|spec| spec.name).collect();
        assert_eq!(names, ["keep", "first", "second"]);
    }

    #[test]
    fn errors_explain_themselves() {
        assert_eq!(
            DeclareError::InvalidDefault {
                name: "hz",
                default: "5",
                kind: Kind::U64 {
                    min: 100,
                    max: 1000
                }
            }
            .to_string(),
            "parameter hz has default \"5\", which is not an integer in 100..=1000"
        );
        assert_eq!(
            DeclareError::InvalidDefault {
                name: "quiet",
                default: "on",
                kind: Kind::Flag
            }
            .to_string(),
            "parameter quiet has default \"on\", which is not empty (a flag is off unless given)"
        );
    }
}
