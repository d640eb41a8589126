//! JSON read the way Go's `encoding/json` reads it into a struct, for values flanneld decodes
//! (its network config and the backend options in it).
//!
//! What differs from a generic JSON parser, and matters for meaning:
//!
//! - **Field names match without case**: a key matches a field when both fold alike, folding
//!   ASCII letters to upper case and any other character to the smallest one of its Unicode
//!   simple case-folding orbit. So `vni`, `Vni` and `VNI` all name `VNI`; `K` (U+212A KELVIN
//!   SIGN) folds like `k` and `ſ` (U+017F LONG S) like `s`; no other non-ASCII character folds
//!   to an ASCII letter.
//! - **Members are applied in order**: a field given twice (`"VNI"` then `"vni"`) takes the
//!   later value; every occurrence must still decode, since a wrong type anywhere fails the
//!   whole decode.
//! - **`null` leaves a plain field as it was**; a type with its own decoder (flannel's IP and
//!   CIDR types, a raw message) sees the text `null` instead.
//! - **Integers are integer literals**: `1.0`, `1e3`, a string or an out-of-range number is a
//!   type error, never rounded.
//! - The syntax is RFC 8259 with Go's leniencies and limits: bytes that are not UTF-8 are
//!   accepted inside strings (and read as U+FFFD), and containers nest at most 10 000 deep.
//!
//! Everything here is a pure function over the input bytes: no recursion (so no stack depth
//! tied to the input), and no allocation beyond one container stack and decoded keys.

use std::borrow::Cow;

/// Go's nesting limit for JSON containers (`maxNestingDepth` in `encoding/json`).
pub const MAX_DEPTH: usize = 10_000;

/// Why bytes are not JSON (Go's scanner would refuse them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset}")]
pub struct SyntaxError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// A value of the wrong JSON type for the field it was decoded into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not {1}")]
pub struct TypeError(pub String, pub &'static str);

/// Checks that `input` is exactly one JSON value, with optional whitespace around it.
///
/// # Errors
///
/// [`SyntaxError`] with the offset of the first byte Go's scanner would also refuse.
pub fn check(input: &[u8]) -> Result<(), SyntaxError> {
    let err = |offset, what| Err(SyntaxError { offset, what });
    // true: inside an object; false: inside an array.
    let mut stack: Vec<bool> = Vec::new();
    let mut i = ws(input, 0);
    'value: loop {
        match input.get(i) {
            Some(b'{' | b'[') if stack.len() >= MAX_DEPTH => {
                return err(i, "containers nested too deep");
            }
            Some(b'{') => {
                stack.push(true);
                i = ws(input, i + 1);
                if input.get(i) == Some(&b'}') {
                    stack.pop();
                    i += 1;
                } else {
                    i = key(input, i)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                stack.push(false);
                i = ws(input, i + 1);
                if input.get(i) == Some(&b']') {
                    stack.pop();
                    i += 1;
                } else {
                    continue 'value;
                }
            }
            Some(b'"') => i = string_end(input, i)?,
            Some(b'-' | b'0'..=b'9') => i = number_end(input, i)?,
            Some(b't') => i = literal(input, i, b"true")?,
            Some(b'f') => i = literal(input, i, b"false")?,
            Some(b'n') => i = literal(input, i, b"null")?,
            Some(_) => return err(i, "invalid character looking for a value"),
            None => return err(i, "unexpected end of input"),
        }
        // A value ended at `i`: close containers until one takes another member.
        loop {
            i = ws(input, i);
            match (stack.last(), input.get(i)) {
                (None, None) => return Ok(()),
                (None, Some(_)) => return err(i, "invalid character after the value"),
                (Some(_), None) => return err(i, "unexpected end of input"),
                (Some(true), Some(b',')) => {
                    i = key(input, ws(input, i + 1))?;
                    continue 'value;
                }
                (Some(false), Some(b',')) => {
                    i = ws(input, i + 1);
                    continue 'value;
                }
                (Some(true), Some(b'}')) | (Some(false), Some(b']')) => {
                    stack.pop();
                    i += 1;
                }
                (Some(_), Some(_)) => return err(i, "invalid character after a member"),
            }
        }
    }
}

/// The members of an object, in order, duplicates included: each decoded key with the raw
/// text of its value. Only for text that [`check`] accepted.
#[derive(Debug, Clone)]
pub struct Members<'a> {
    text: &'a [u8],
    i: usize,
}

/// Returns the members of `value` when it is an object (`None` for any other value).
/// `value` must be text [`check`] accepted.
pub fn members(value: &[u8]) -> Option<Members<'_>> {
    let i = ws(value, 0);
    (value.get(i) == Some(&b'{')).then_some(Members {
        text: value,
        i: i + 1,
    })
}

impl<'a> Iterator for Members<'a> {
    type Item = (Cow<'a, str>, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.text;
        let mut i = ws(s, self.i);
        if s.get(i) == Some(&b',') {
            i = ws(s, i + 1);
        }
        if s.get(i) != Some(&b'"') {
            self.i = s.len();
            return None;
        }
        let key_end = string_end(s, i).ok()?;
        let key = unquote(s.get(i + 1..key_end - 1)?);
        let start = ws(s, ws(s, key_end) + 1);
        let end = value_end(s, start);
        self.i = end;
        Some((key, s.get(start..end)?))
    }
}

/// Returns true when `key` names the field `name` for Go's decoder (`name` is ASCII).
pub fn names(key: &str, name: &str) -> bool {
    let mut k = key.chars();
    for n in name.bytes() {
        let Some(c) = k.next() else {
            return false;
        };
        let folded = match c {
            '\u{212A}' => b'K',
            '\u{017F}' => b'S',
            c => match u8::try_from(c) {
                Ok(b) if b.is_ascii() => b.to_ascii_uppercase(),
                _ => return false,
            },
        };
        if folded != n.to_ascii_uppercase() {
            return false;
        }
    }
    k.next().is_none()
}

/// Decodes a `bool` field: `Ok(None)` for `null` (the field keeps its value).
///
/// # Errors
///
/// [`TypeError`] for any other JSON type.
pub fn boolean(raw: &[u8]) -> Result<Option<bool>, TypeError> {
    match raw {
        b"null" => Ok(None),
        b"true" => Ok(Some(true)),
        b"false" => Ok(Some(false)),
        _ => Err(type_error(raw, "a boolean")),
    }
}

/// Decodes a 64-bit unsigned integer field (Go's `uint` on 64-bit targets).
///
/// # Errors
///
/// [`TypeError`] for a non-number, a fraction or exponent, a sign, or a value above 2^64 − 1.
pub fn unsigned(raw: &[u8]) -> Result<Option<u64>, TypeError> {
    if raw == b"null" {
        return Ok(None);
    }
    integer_text(raw)
        .and_then(|t| t.parse().ok())
        .map(Some)
        .ok_or_else(|| type_error(raw, "an unsigned integer"))
}

/// Decodes a 64-bit signed integer field (Go's `int` on 64-bit targets).
///
/// # Errors
///
/// [`TypeError`] for a non-number, a fraction or exponent, or a value outside the `i64` range.
pub fn signed(raw: &[u8]) -> Result<Option<i64>, TypeError> {
    if raw == b"null" {
        return Ok(None);
    }
    integer_text(raw)
        .and_then(|t| t.parse().ok())
        .map(Some)
        .ok_or_else(|| type_error(raw, "an integer"))
}

/// Decodes a `string` field, escapes resolved.
///
/// # Errors
///
/// [`TypeError`] for any other JSON type.
pub fn string(raw: &[u8]) -> Result<Option<Cow<'_, str>>, TypeError> {
    match raw.first() {
        _ if raw == b"null" => Ok(None),
        Some(b'"') if raw.len() >= 2 => Ok(Some(unquote(&raw[1..raw.len() - 1]))),
        _ => Err(type_error(raw, "a string")),
    }
}

/// Returns what flannel's own IP and CIDR decoders parse: the raw value text with every
/// leading and trailing `"` removed, escapes left as they are (so `"10.0.0.0\/8"` stays
/// unparseable, and `null` is the text `null`).
pub fn trimmed_quotes(raw: &[u8]) -> &[u8] {
    let start = raw.iter().position(|&b| b != b'"').unwrap_or(raw.len());
    let end = raw
        .iter()
        .rposition(|&b| b != b'"')
        .map_or(start, |e| e + 1);
    raw.get(start..end.max(start)).unwrap_or_default()
}

/// Shows a raw value in an error message: at most 40 bytes, lossily as UTF-8, in one line
/// ([`crate::sys::one_line`]: whitespace between tokens may hold a newline, and what etcd or a
/// file holds must not forge a log line).
pub fn show(raw: &[u8]) -> String {
    let cut = raw.get(..40).unwrap_or(raw);
    let mut text = crate::sys::one_line(&String::from_utf8_lossy(cut)).into_owned();
    if cut.len() < raw.len() {
        text.push('…');
    }
    text
}

fn type_error(raw: &[u8], what: &'static str) -> TypeError {
    TypeError(show(raw), what)
}

/// The text of an integer literal: a JSON number with no fraction and no exponent.
fn integer_text(raw: &[u8]) -> Option<&str> {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(raw).ok()
}

fn ws(s: &[u8], mut i: usize) -> usize {
    while matches!(s.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Reads `"key" :` at `i` and returns where the member's value starts.
fn key(s: &[u8], i: usize) -> Result<usize, SyntaxError> {
    if s.get(i) != Some(&b'"') {
        return Err(SyntaxError {
            offset: i,
            what: "expected a string for an object key",
        });
    }
    let end = ws(s, string_end(s, i)?);
    if s.get(end) != Some(&b':') {
        return Err(SyntaxError {
            offset: end,
            what: "expected ':' after an object key",
        });
    }
    Ok(ws(s, end + 1))
}

/// Returns the index just past the string starting at `i` (a `"`).
fn string_end(s: &[u8], i: usize) -> Result<usize, SyntaxError> {
    let mut j = i + 1;
    loop {
        match s.get(j) {
            None => {
                return Err(SyntaxError {
                    offset: j,
                    what: "unterminated string",
                });
            }
            Some(b'"') => return Ok(j + 1),
            Some(b'\\') => match s.get(j + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => j += 2,
                Some(b'u')
                    if s.get(j + 2..j + 6)
                        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                {
                    j += 6;
                }
                _ => {
                    return Err(SyntaxError {
                        offset: j,
                        what: "invalid escape in a string",
                    });
                }
            },
            Some(&c) if c < 0x20 => {
                return Err(SyntaxError {
                    offset: j,
                    what: "control character in a string",
                });
            }
            Some(_) => j += 1,
        }
    }
}

/// Returns the index just past the number starting at `i`.
fn number_end(s: &[u8], i: usize) -> Result<usize, SyntaxError> {
    let bad = |offset| SyntaxError {
        offset,
        what: "invalid number",
    };
    let digits = |mut j: usize| {
        let start = j;
        while s.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        if j == start { Err(bad(j)) } else { Ok(j) }
    };
    let mut j = i + usize::from(s.get(i) == Some(&b'-'));
    j = match s.get(j) {
        Some(b'0') => j + 1,
        Some(b'1'..=b'9') => digits(j)?,
        _ => return Err(bad(j)),
    };
    if s.get(j) == Some(&b'.') {
        j = digits(j + 1)?;
    }
    if matches!(s.get(j), Some(b'e' | b'E')) {
        j += 1;
        if matches!(s.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        j = digits(j)?;
    }
    Ok(j)
}

fn literal(s: &[u8], i: usize, word: &[u8]) -> Result<usize, SyntaxError> {
    if s.get(i..i + word.len()) == Some(word) {
        Ok(i + word.len())
    } else {
        Err(SyntaxError {
            offset: i,
            what: "invalid literal",
        })
    }
}

/// Returns the index just past the value starting at `i`, in text [`check`] accepted.
fn value_end(s: &[u8], i: usize) -> usize {
    match s.get(i) {
        Some(b'"') => string_end(s, i).unwrap_or(s.len()),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while let Some(&c) = s.get(j) {
                match c {
                    b'"' => {
                        j = string_end(s, j).unwrap_or(s.len());
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            s.len()
        }
        _ => {
            let mut j = i;
            while !matches!(
                s.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            j
        }
    }
}

/// Resolves the escapes of a string's contents (between the quotes) as Go does: a `\u`
/// surrogate pair is one character, a lone surrogate and any byte that is not UTF-8 become
/// U+FFFD.
fn unquote(raw: &[u8]) -> Cow<'_, str> {
    if !raw.contains(&b'\\') {
        return String::from_utf8_lossy(raw);
    }
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    let hex = |at: usize| {
        raw.get(at..at + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
    };
    while let Some(&c) = raw.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let escaped = match raw.get(i + 1) {
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let Some(first) = hex(i + 2) else {
                    break;
                };
                i += 6;
                let ch = if (0xD800..0xDC00).contains(&first)
                    && raw.get(i..i + 2) == Some(b"\\u")
                    && hex(i + 2).is_some_and(|low| (0xDC00..0xE000).contains(&low))
                {
                    let low = hex(i + 2).unwrap_or(0xDC00);
                    i += 6;
                    char::from_u32(0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00))
                } else {
                    char::from_u32(first)
                };
                let mut buf = [0; 4];
                out.extend_from_slice(
                    ch.unwrap_or(char::REPLACEMENT_CHARACTER)
                        .encode_utf8(&mut buf)
                        .as_bytes(),
                );
                continue;
            }
            Some(&other) => char::from(other),
            None => break,
        };
        let mut buf = [0; 4];
        out.extend_from_slice(escaped.encode_utf8(&mut buf).as_bytes());
        i += 2;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn syntax_is_gos() {
        for ok in [
            &b"{}"[..],
            b" \t\r\n{\"a\" : [1, -0, 0.5, 1e3, -1.5E-7, true, false, null, {}, []]} ",
            b"\"\xff\xfe not UTF-8 is accepted in strings\"",
            b"\"\\ud800 lone surrogate\"",
            b"[[[[]]]]",
            b"0",
        ] {
            assert_eq!(check(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\"}",
            b"{\"a\":1,}",
            b"[1,]",
            b"{a:1}",
            b"01",
            b"1.",
            b".5",
            b"+1",
            b"1e",
            b"-",
            b"tru",
            b"nul",
            b"\"tab\tinside\"",
            b"\"\\x\"",
            b"\"\\u12\"",
            b"{}{}",
            b"{} x",
            b"[1 2]",
            b"\xef\xbb\xbf{}",
            b"{\"a\":1]",
        ] {
            assert!(check(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn depth_limit_is_gos() {
        let nested = |n: usize| {
            let mut v = vec![b'['; n];
            v.extend(std::iter::repeat_n(b']', n));
            v
        };
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        assert!(check(&nested(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn members_in_order_with_duplicates() {
        let text = br#" { "a" : 1 , "A":{"x":[1,"]}"]} ,"\u0061":"s\"}" , "b":null } "#;
        assert_eq!(check(text), Ok(()));
        let got: Vec<(String, String)> = members(text)
            .expect("object")
            .map(|(k, v)| (k.into_owned(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let want = [
            ("a", "1"),
            ("A", r#"{"x":[1,"]}"]}"#),
            ("a", r#""s\"}""#),
            ("b", "null"),
        ];
        assert_eq!(got.len(), want.len());
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
        assert!(members(b"[1]").is_none());
        assert_eq!(members(b"{}").expect("object").count(), 0);
    }

    #[test]
    fn names_fold_as_go_does() {
        assert!(names("vni", "VNI"));
        assert!(names("Vni", "VNI"));
        assert!(names("directrouting", "DirectRouting"));
        assert!(names("SUBNETLEN", "SubnetLen"));
        // U+212A KELVIN SIGN folds to k, U+017F LONG S to s.
        assert!(names("\u{212A}ind", "Kind"));
        assert!(names("\u{17F}ubnetLen", "SubnetLen"));
        assert!(names("Ba\u{17F}e", "BASE"));
        // Dotted and dotless i have no simple folding to i.
        assert!(!names("V N I", "VNI"));
        assert!(!names("vn\u{131}", "VNI"));
        assert!(!names("VN\u{130}", "VNI"));
        assert!(!names("vnis", "VNI"));
        assert!(!names("vn", "VNI"));
        assert!(!names("subnet_len", "SubnetLen"));
        assert!(!names("", "VNI"));
    }

    #[test]
    fn field_types_are_gos() {
        assert_eq!(boolean(b"true"), Ok(Some(true)));
        assert_eq!(boolean(b"null"), Ok(None));
        assert!(boolean(b"1").is_err());
        assert!(boolean(b"\"true\"").is_err());
        assert_eq!(unsigned(b"24"), Ok(Some(24)));
        assert_eq!(unsigned(b"18446744073709551615"), Ok(Some(u64::MAX)));
        for bad in [
            &b"18446744073709551616"[..],
            b"-1",
            b"-0",
            b"1.0",
            b"1e3",
            b"\"24\"",
            b"true",
            b"[]",
        ] {
            assert!(unsigned(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(signed(b"-0"), Ok(Some(0)));
        assert_eq!(signed(b"-9223372036854775808"), Ok(Some(i64::MIN)));
        assert!(signed(b"9223372036854775808").is_err());
        assert!(signed(b"4.0").is_err());
        assert_eq!(
            string(br#""a\u00e9\ud83d\ude00\n""#).expect("string"),
            Some(Cow::Borrowed("a\u{e9}\u{1f600}\n"))
        );
        assert_eq!(
            string(br#""\ud800x""#).expect("string"),
            Some(Cow::Borrowed("\u{fffd}x"))
        );
        assert_eq!(string(b"null"), Ok(None));
        assert!(string(b"5").is_err());
        assert_eq!(trimmed_quotes(br#""10.0.0.0/8""#), b"10.0.0.0/8");
        assert_eq!(trimmed_quotes(br#""10.0.0.0\/8""#), br"10.0.0.0\/8");
        assert_eq!(trimmed_quotes(b"null"), b"null");
        assert_eq!(trimmed_quotes(br#""""#), b"");
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if check(&data).is_ok() {
                for (k, v) in members(&data).into_iter().flatten() {
                    let _ = (names(&k, "VNI"), boolean(v), unsigned(v), signed(v), string(v));
                    prop_assert_eq!(check(v), Ok(()));
                }
            }
        }

        #[test]
        fn agrees_with_serde_on_valid_utf8(value in json_value()) {
            let text = serde_json::to_vec(&value).expect("serialize");
            prop_assert_eq!(check(&text), Ok(()));
            if let serde_json::Value::Object(map) = &value {
                let got: Vec<_> = members(&text).expect("object").collect();
                prop_assert_eq!(got.len(), map.len());
                for ((k, v), (wk, wv)) in got.iter().zip(map) {
                    prop_assert_eq!(k.as_ref(), wk.as_str());
                    prop_assert_eq!(v.to_vec(), serde_json::to_vec(wv).expect("serialize"));
                    if let serde_json::Value::String(s) = wv {
                        let decoded = string(v).expect("string");
                        prop_assert_eq!(decoded.as_deref(), Some(s.as_str()));
                    }
                }
            }
        }
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
