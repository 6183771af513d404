//! Allocation-free tokenizer for the raw command line, usable before the heap exists.
//!
//! Nothing here allocates and every token borrows from the line, so the same code serves the
//! earliest boot code (which may only need `earlyprintk=` or `mem=`) and the full
//! [`Registry`](crate::Registry) parser. The syntax is described on [`tokens`].

/// One token of the command line, borrowing from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// A kernel parameter: `name` (`value` is `None`) or `name=value` (`value` is `Some`, possibly
    /// empty), with Linux's quote stripping applied to both. `name` is never empty.
    Param {
        /// The parameter's name, exactly as written (compare with [`names_match`]).
        name: &'a [u8],
        /// The text after the first `=`, or `None` when there was no `=`.
        value: Option<&'a [u8]>,
    },
    /// A lone `--`: the kernel's parameters end here and every following word is an
    /// [`InitArg`](Token::InitArg).
    EndOfParams,
    /// A word after `--`, exactly as written (quotes included): the kernel does not interpret
    /// it but hands it to init. [`Parsed::init_args`](crate::Parsed::init_args) gives the
    /// unquoted form that Linux passes to init.
    InitArg(&'a [u8]),
}

/// Iterator over the [`Token`]s of a command line; see [`tokens`].
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    /// The part of the line not yet tokenized, starting at a word or at whitespace before one.
    rest: &'a [u8],
    /// Whether a `--` has been seen, after which every word is an init argument.
    after_end_of_params: bool,
}

/// Tokenizes `line` without allocating, in a single forward pass over a line of any length.
///
/// The syntax is Linux's (`kernel/params.c: next_arg` and `parse_args`):
///
/// * words are separated by ASCII whitespace (space, `\t`, `\n`, `\v`, `\f`, `\r`);
/// * a word is `name`, `name=value`, `name="quoted value"` or `"name=quoted value"`; double quotes
///   make whitespace part of the word and the quotes Linux strips are stripped here too;
/// * a lone `--` ends the kernel's parameters: every later word belongs to init;
/// * the line ends at its first NUL byte, because boot protocols hand the kernel a C string and a
///   buffer that still carries its terminator must not leak the padding into a parameter.
///
/// Malformed input never panics: an unterminated quote simply runs to the end of the line.
///
/// ```
/// use lull_cmdline::{tokens, Token};
///
/// let line = br#"console=ttyS0 quiet root="/dev/vda 1" -- single"#;
/// let all: Vec<Token> = tokens(line).collect();
/// assert_eq!(
///     all,
///     [
///         Token::Param { name: b"console", value: Some(b"ttyS0") },
///         Token::Param { name: b"quiet", value: None },
///         Token::Param { name: b"root", value: Some(b"/dev/vda 1") },
///         Token::EndOfParams,
///         Token::InitArg(b"single"),
///     ]
/// );
/// ```
pub fn tokens(line: &[u8]) -> Tokens<'_> {
    let until_nul = match line.iter().position(|&byte| byte == 0) {
        Some(nul) => &line[..nul],
        None => line,
    };
    Tokens {
        rest: until_nul,
        after_end_of_params: false,
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        loop {
            let start = self.rest.iter().position(|&byte| !is_space(byte))?;
            let (word, rest) = split_word(&self.rest[start..]);
            self.rest = rest;
            if self.after_end_of_params {
                return Some(Token::InitArg(word.raw));
            }
            if word.name == b"--" && word.value.is_none() {
                self.after_end_of_params = true;
                return Some(Token::EndOfParams);
            }
            // `""` or a lone `"` names nothing; Linux would hand init an empty argument, which
            // is never what anyone meant.
            if word.name.is_empty() && word.value.is_none() {
                continue;
            }
            return Some(Token::Param {
                name: word.name,
                value: word.value,
            });
        }
    }
}

impl core::iter::FusedIterator for Tokens<'_> {}

/// Finds parameter `name` in `line` without allocating, for code that runs before the heap.
///
/// Returns `None` if the parameter is absent, `Some(None)` if it appears without `=`, and
/// `Some(Some(value))` otherwise. The last occurrence wins, as it does when Linux applies each
/// occurrence in turn. `-` and `_` are interchangeable in names (see [`names_match`]). Words
/// after `--` belong to init and are never matched.
///
/// ```
/// use lull_cmdline::lookup;
///
/// let line = b"log-level=3 quiet log_level=7";
/// assert_eq!(lookup(line, "log_level"), Some(Some(&b"7"[..])));
/// assert_eq!(lookup(line, "quiet"), Some(None));
/// assert_eq!(lookup(line, "splash"), None);
/// ```
pub fn lookup<'a>(line: &'a [u8], name: &str) -> Option<Option<&'a [u8]>> {
    let mut found = None;
    for token in tokens(line) {
        match token {
            Token::Param {
                name: token_name,
                value,
            } if names_match(token_name, name.as_bytes()) => found = Some(value),
            Token::Param { .. } => {}
            Token::EndOfParams | Token::InitArg(_) => break,
        }
    }
    found
}

/// Compares two parameter names the way Linux's `parameq` does: byte for byte, except that `-`
/// and `_` are the same character (so `log-level` and `log_level` name one parameter).
pub fn names_match(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .all(|(&l, &r)| normalize_name_byte(l) == normalize_name_byte(r))
}

/// Maps a name byte to its canonical form for comparison: `-` becomes `_`.
pub(crate) fn normalize_name_byte(byte: u8) -> u8 {
    if byte == b'-' {
        b'_'
    } else {
        byte
    }
}

/// Whitespace as C's `isspace` in the "C" locale, which is what separates Linux's words.
pub(crate) fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// One word of the line, split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word<'a> {
    /// The word exactly as written, quotes included.
    pub(crate) raw: &'a [u8],
    /// The name after quote stripping (may be empty only for `""` or `"`).
    pub(crate) name: &'a [u8],
    /// The value after quote stripping, if the word had an `=` past its first character.
    pub(crate) value: Option<&'a [u8]>,
}

/// Splits the word at the start of `line` (which must not start with whitespace) from the rest.
///
/// This is Linux's `next_arg` expressed with slices instead of writing NULs into the buffer:
///
/// * a leading `"` opens a quote and is dropped; every `"` toggles whether whitespace ends the word;
/// * the first `=` splits name from value, except one at the very first position (Linux's
///   `equals == 0` means "no `=` found", so `=x` is a name, not an empty name with a value);
/// * a value that starts with `"` loses it, and then loses a trailing `"` too;
/// * a word that started with `"` loses a trailing `"`.
pub(crate) fn split_word(line: &[u8]) -> (Word<'_>, &[u8]) {
    let quoted = line.first() == Some(&b'"');
    let body = if quoted { &line[1..] } else { line };

    let mut in_quote = quoted;
    let mut equals = None;
    let mut end = 0;
    while end < body.len() {
        let byte = body[end];
        if is_space(byte) && !in_quote {
            break;
        }
        if equals.is_none() && byte == b'=' && end > 0 {
            equals = Some(end);
        }
        if byte == b'"' {
            in_quote = !in_quote;
        }
        end += 1;
    }

    let raw = &line[..end + usize::from(quoted)];
    // The separating whitespace byte (if any) is not part of the rest.
    let rest = body.get(end + 1..).unwrap_or(&[]);
    // Where a closing quote of a `"name=value"` word sits; `end > 0` so `end - 1` is in bounds.
    let closing_quote = (quoted && end > 0 && body[end - 1] == b'"').then(|| end - 1);

    let word = match equals {
        None => Word {
            raw,
            name: &body[..closing_quote.unwrap_or(end)],
            value: None,
        },
        Some(equals) => {
            let mut value_start = equals + 1;
            let mut value_end = end;
            if body.get(value_start) == Some(&b'"') {
                value_start += 1;
                // `value_end > value_start` keeps `name="` from stripping its only quote twice.
                if value_end > value_start && body[value_end - 1] == b'"' {
                    value_end -= 1;
                }
            }
            if let Some(closing_quote) = closing_quote {
                // Linux writes a NUL over the closing quote; that may already have been done
                // (same byte) or fall before the value (an empty value), hence the clamps.
                value_end = value_end.min(closing_quote).max(value_start);
            }
            Word {
                raw,
                name: &body[..equals],
                value: Some(&body[value_start..value_end.max(value_start)]),
            }
        }
    };
    (word, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn all(line: &[u8]) -> Vec<Token<'_>> {
        tokens(line).collect()
    }

    fn param<'a>(name: &'a [u8], value: Option<&'a [u8]>) -> Token<'a> {
        Token::Param { name, value }
    }

    #[test]
    fn bare_name_has_no_value() {
        assert_eq!(all(b"quiet"), [param(b"quiet", None)]);
    }

    #[test]
    fn name_equals_value() {
        assert_eq!(all(b"hz=250"), [param(b"hz", Some(b"250"))]);
    }

    #[test]
    fn empty_value_is_present_but_empty() {
        assert_eq!(all(b"root="), [param(b"root", Some(b""))]);
    }

    #[test]
    fn only_the_first_equals_splits() {
        assert_eq!(all(b"opt=a=b"), [param(b"opt", Some(b"a=b"))]);
    }

    #[test]
    fn quoted_value_keeps_whitespace_and_loses_quotes() {
        assert_eq!(
            all(b"root=\"/dev/vda 1\" quiet"),
            [param(b"root", Some(b"/dev/vda 1")), param(b"quiet", None)]
        );
    }

    #[test]
    fn fully_quoted_word_loses_quotes() {
        assert_eq!(
            all(b"\"name=quoted value\" next"),
            [param(b"name", Some(b"quoted value")), param(b"next", None)]
        );
    }

    #[test]
    fn quoted_bare_name_loses_quotes() {
        assert_eq!(all(b"\"a b\""), [param(b"a b", None)]);
    }

    #[test]
    fn quotes_inside_a_value_join_words_like_linux() {
        // Linux only strips a quote that opens the value; an inner quote still protects spaces.
        assert_eq!(
            all(b"a=x\"y z\" b"),
            [param(b"a", Some(b"x\"y z\"")), param(b"b", None)]
        );
    }

    #[test]
    fn unterminated_quote_runs_to_end_of_line() {
        assert_eq!(all(b"a=\"b c d"), [param(b"a", Some(b"b c d"))]);
        assert_eq!(all(b"\"a=b c d"), [param(b"a", Some(b"b c d"))]);
        assert_eq!(
            all(b"x \"unclosed"),
            [param(b"x", None), param(b"unclosed", None)]
        );
    }

    #[test]
    fn degenerate_quotes_do_not_panic_or_invent_names() {
        assert_eq!(all(b"\""), []);
        assert_eq!(all(b"\"\""), []);
        assert_eq!(all(b"\"\" x"), [param(b"x", None)]);
        assert_eq!(all(b"a=\""), [param(b"a", Some(b""))]);
        assert_eq!(all(b"a=\"\""), [param(b"a", Some(b""))]);
        assert_eq!(all(b"\"a=\""), [param(b"a", Some(b""))]);
        assert_eq!(all(b"\"a=\"\""), [param(b"a", Some(b""))]);
        assert_eq!(all(b"\"a=\"v\"\""), [param(b"a", Some(b"v\""))]);
    }

    #[test]
    fn leading_equals_is_part_of_the_name_like_linux() {
        assert_eq!(all(b"=x"), [param(b"=x", None)]);
        assert_eq!(all(b"=x=y"), [param(b"=x", Some(b"y"))]);
    }

    #[test]
    fn any_ascii_whitespace_separates_and_runs_collapse() {
        assert_eq!(
            all(b" \t\na\r\x0b\x0cb  \n "),
            [param(b"a", None), param(b"b", None)]
        );
    }

    #[test]
    fn empty_and_blank_lines_have_no_tokens() {
        assert_eq!(all(b""), []);
        assert_eq!(all(b"  \t \n"), []);
    }

    #[test]
    fn double_dash_ends_params_and_the_rest_goes_to_init() {
        assert_eq!(
            all(b"quiet -- single a=b \"x y\" --"),
            [
                param(b"quiet", None),
                Token::EndOfParams,
                Token::InitArg(b"single"),
                Token::InitArg(b"a=b"),
                Token::InitArg(b"\"x y\""),
                Token::InitArg(b"--"),
            ]
        );
    }

    #[test]
    fn double_dash_with_value_is_an_ordinary_param() {
        assert_eq!(
            all(b"--=1 x"),
            [param(b"--", Some(b"1")), param(b"x", None)]
        );
        assert_eq!(all(b"---"), [param(b"---", None)]);
    }

    #[test]
    fn line_ends_at_first_nul() {
        assert_eq!(all(b"a b\0c d"), [param(b"a", None), param(b"b", None)]);
        assert_eq!(all(b"\0quiet"), []);
    }

    #[test]
    fn non_utf8_bytes_are_passed_through() {
        assert_eq!(
            all(b"\xff=\xfe\x80 ok"),
            [param(b"\xff", Some(b"\xfe\x80")), param(b"ok", None)]
        );
    }

    #[test]
    fn iterator_is_fused() {
        let mut iter = tokens(b"a");
        assert_eq!(iter.next(), Some(param(b"a", None)));
        assert_eq!(iter.next(), None);
        assert_eq!(iter.next(), None);
    }

    #[test]
    fn lookup_finds_last_occurrence() {
        assert_eq!(lookup(b"a=1 b a=2", "a"), Some(Some(&b"2"[..])));
        assert_eq!(lookup(b"a=1 b a", "a"), Some(None));
        assert_eq!(lookup(b"a=1 b", "c"), None);
    }

    #[test]
    fn lookup_treats_dash_and_underscore_alike() {
        assert_eq!(lookup(b"log-level=3", "log_level"), Some(Some(&b"3"[..])));
        assert_eq!(lookup(b"log_level=3", "log-level"), Some(Some(&b"3"[..])));
        assert_eq!(lookup(b"loglevel=3", "log_level"), None);
    }

    #[test]
    fn lookup_ignores_init_args() {
        assert_eq!(lookup(b"a=1 -- a=2", "a"), Some(Some(&b"1"[..])));
        assert_eq!(lookup(b"-- quiet", "quiet"), None);
    }

    #[test]
    fn lookup_strips_quotes() {
        assert_eq!(
            lookup(b"\"root=/dev/vda 1\"", "root"),
            Some(Some(&b"/dev/vda 1"[..]))
        );
    }

    #[test]
    fn names_match_is_exact_apart_from_dash() {
        assert!(names_match(b"a-b_c", b"a_b-c"));
        assert!(!names_match(b"ab", b"abc"));
        assert!(!names_match(b"A", b"a"));
    }

    #[test]
    fn split_word_reports_raw_span_and_rest() {
        let (word, rest) = split_word(b"\"a=b c\"  next");
        assert_eq!(word.raw, b"\"a=b c\"");
        assert_eq!(rest, b" next");
    }
}
