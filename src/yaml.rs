//! YAML that every reader reads alike.
//!
//! kubectl, Helm and Argo CD read YAML 1.1, where plain scalars such as `On`, `off`, `y`, `~`,
//! `0777`, `1_000`, `1:20`, `2001-12-14` or `.inf` are booleans, nulls, numbers or timestamps;
//! YAML 1.2 readers (`serde_yaml`) read most of them as strings. This writer renders a
//! [`serde_json::Value`] as block-style YAML and quotes every string that YAML 1.1 *or* 1.2 could
//! read as anything but that string, so both read back the same value.
//!
//! The layout follows what `serde_yaml` writes (and what `crds/` always held): two spaces of
//! indentation, sequences under a mapping key at the key's indentation, multi-line strings as
//! literal blocks (`|-`), other quoted strings single-quoted, and double-quoted (with escapes)
//! when a string holds characters that need them.

use serde::Serialize;
use serde_json::{Map, Number, Value};

/// Keys whose rendering is longer than this many characters are written as explicit keys
/// (`? key`): YAML limits implicit keys to 1024 characters.
const MAX_IMPLICIT_KEY_CHARS: usize = 1000;

/// How a string scalar is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StringStyle {
    /// Unquoted: YAML 1.1 and 1.2 both read it as this very string.
    Plain,
    /// In single quotes (`'it''s'`): printable, single-line text that must not stay plain.
    SingleQuoted,
    /// In double quotes with escapes: anything else that fits on one line.
    DoubleQuoted,
    /// A literal block (`|-`, or `|` with one final line break): multi-line text.
    Literal,
}

/// Renders `value` as one YAML document (block style, without a leading `---`), ending with a
/// line break.
pub fn to_string(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_mapping(&mut out, map, 0, false),
        Value::Array(items) if !items.is_empty() => write_sequence(&mut out, items, 0, false),
        Value::String(text) if string_style(text) == StringStyle::Literal => {
            write_literal(&mut out, text, 2);
        }
        other => {
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
    out
}

/// Renders anything serializable as one YAML document (see [`to_string`]).
///
/// # Errors
/// When `value` cannot be represented as JSON (e.g. a map with non-string keys).
pub fn to_string_of<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    serde_json::to_value(value).map(|value| to_string(&value))
}

/// The style a string is written in: plain only when no YAML 1.1 or 1.2 reader can take it for
/// anything else, else single-quoted, a literal block for multi-line text, else double-quoted.
pub fn string_style(text: &str) -> StringStyle {
    if plain_is_safe(text) {
        StringStyle::Plain
    } else if !text.contains('\n') && text.chars().all(single_quotable) {
        StringStyle::SingleQuoted
    } else if literal_is_safe(text) {
        StringStyle::Literal
    } else {
        StringStyle::DoubleQuoted
    }
}

/// Whether `text` may be written unquoted: it reads back as this string in YAML 1.1 and 1.2,
/// as a mapping key or a value, in block context.
///
/// Conservative: only printable ASCII without leading or trailing space; no indicator first
/// (`-?:,[]{}#&*!|>'"%@` and the backquote, plus `~ = < +`); no `: ` or ` #` inside and no `:` at
/// the end; not a YAML 1.1 or 1.2 boolean or null in any letter case (`y`, `n`, `yes`, `no`,
/// `on`, `off`, `true`, `false`, `null`, `~`); nothing that starts, after an optional sign, with
/// a digit (ints in any base, `_` separators, sexagesimal `1:20`, floats, timestamps
/// `2001-12-14`) or with a dot followed by anything but a letter (`.5`, `.`, `...`) or with
/// `.inf`/`.nan`; not the YAML 1.1 merge key `<<` or value key `=`.
pub fn plain_is_safe(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !bytes.iter().all(|b| (0x20..0x7f).contains(b)) || first == b' ' || last == b' ' {
        return false;
    }
    if b"-?:,[]{}#&*!|>'\"%@`~=<+".contains(&first) {
        return false;
    }
    if text.contains(": ") || text.contains(" #") || last == b':' {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
    ) {
        return false;
    }
    // `+` and `-` are already excluded as first characters; a dot or digit start is numeric.
    match bytes {
        [b'0'..=b'9', ..] => false,
        [b'.', rest @ ..] => {
            rest.first().is_some_and(u8::is_ascii_alphabetic)
                && !lower.starts_with(".inf")
                && !lower.starts_with(".nan")
        }
        _ => true,
    }
}

/// Printable characters that may stand in a single-quoted scalar and mean the same in YAML 1.1
/// and 1.2: not a control character, not a line break of YAML 1.1 only (U+0085, U+2028,
/// U+2029), not the byte order mark, not a non-character.
fn single_quotable(c: char) -> bool {
    let printable = matches!(
        c,
        '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..
    );
    printable && !matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// Whether `text` can be a literal block that reads back exactly: multi-line, printable (no
/// tabs or carriage returns), the first line non-empty and not starting with a space (the block's
/// indentation is detected from it), no line ending in a space, and at most one final line break.
fn literal_is_safe(text: &str) -> bool {
    if !text.contains('\n') || text.ends_with("\n\n") {
        return false;
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = body.split('\n');
    let first_ok = lines
        .next()
        .is_some_and(|line| !line.is_empty() && !line.starts_with(' '));
    first_ok
        && body
            .split('\n')
            .all(|line| !line.ends_with(' ') && line.chars().all(single_quotable))
}

/// One string as a single-line scalar (plain, single- or double-quoted); literal blocks are
/// written by the block writers.
fn inline_string(text: &str) -> String {
    match string_style(text) {
        StringStyle::Plain => text.to_owned(),
        StringStyle::SingleQuoted => format!("'{}'", text.replace('\'', "''")),
        StringStyle::DoubleQuoted | StringStyle::Literal => double_quoted(text),
    }
}

/// `text` in double quotes, with the escapes YAML 1.1 and 1.2 share.
fn double_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{b}' => out.push_str("\\v"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c if single_quotable(c) => out.push(c),
            c if u32::from(c) <= 0xff => out.push_str(&format!("\\x{:02X}", u32::from(c))),
            c if u32::from(c) <= 0xffff => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push_str(&format!("\\U{:08X}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

/// A number both YAML 1.1 and 1.2 read as the same number: integers in decimal, floats with a
/// dot in the mantissa and a signed exponent (`1.0e+20`; YAML 1.1 reads `1e20` as a string).
fn number(n: &Number) -> String {
    if n.is_f64() {
        let Some(f) = n.as_f64() else {
            return n.to_string();
        };
        // `{:?}` is the shortest text that reads back as the same f64: `0.1`, `1e20`, `1e-7`.
        let text = format!("{f:?}");
        let (mantissa, exponent) = match text.split_once('e') {
            Some((m, e)) => (m.to_owned(), Some(e.to_owned())),
            None => (text, None),
        };
        let mut out = mantissa;
        if !out.contains('.') {
            out.push_str(".0");
        }
        if let Some(exponent) = exponent {
            out.push('e');
            if !exponent.starts_with('-') {
                out.push('+');
            }
            out.push_str(&exponent);
        }
        out
    } else {
        n.to_string()
    }
}

/// A value on one line: a scalar, or an empty mapping or sequence (`{}`, `[]`). Non-empty
/// collections never get here.
fn inline(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number(n),
        Value::String(s) => inline_string(s),
        Value::Array(_) => "[]".to_owned(),
        Value::Object(_) => "{}".to_owned(),
    }
}

fn push_indent(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// The entries of a non-empty mapping at column `indent`; with `inline_first` the first key
/// continues the current line (after `- `).
fn write_mapping(out: &mut String, map: &Map<String, Value>, indent: usize, inline_first: bool) {
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 || !inline_first {
            push_indent(out, indent);
        }
        let key = inline_string(key);
        if key.chars().count() > MAX_IMPLICIT_KEY_CHARS {
            out.push_str("? ");
            out.push_str(&key);
            out.push('\n');
            push_indent(out, indent);
        } else {
            out.push_str(&key);
        }
        out.push(':');
        write_value(out, value, indent);
    }
}

/// The items of a non-empty sequence at column `indent`; with `inline_first` the first item
/// continues the current line (after `- `).
fn write_sequence(out: &mut String, items: &[Value], indent: usize, inline_first: bool) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !inline_first {
            push_indent(out, indent);
        }
        out.push('-');
        match item {
            Value::Object(map) if !map.is_empty() => {
                out.push(' ');
                write_mapping(out, map, indent + 2, true);
            }
            Value::Array(inner) if !inner.is_empty() => {
                out.push(' ');
                write_sequence(out, inner, indent + 2, true);
            }
            other => write_value(out, other, indent),
        }
    }
}

/// A value after `key:` (or a scalar after `-`) whose line starts at column `indent`.
fn write_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_mapping(out, map, indent + 2, false);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_sequence(out, items, indent, false);
        }
        Value::String(text) if string_style(text) == StringStyle::Literal => {
            out.push(' ');
            write_literal(out, text, indent + 2);
        }
        other => {
            out.push(' ');
            out.push_str(&inline(other));
            out.push('\n');
        }
    }
}

/// A literal block: the header (`|-` or `|`) and the lines at column `indent` (empty lines
/// without indentation). Only for strings where [`literal_is_safe`] holds.
fn write_literal(out: &mut String, text: &str, indent: usize) {
    let (body, header) = match text.strip_suffix('\n') {
        Some(body) => (body, "|"),
        None => (text, "|-"),
    };
    out.push_str(header);
    out.push('\n');
    for line in body.split('\n') {
        if !line.is_empty() {
            push_indent(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ambiguous_yaml_1_1_scalars_are_quoted() {
        for text in [
            "On",
            "Off",
            "on",
            "OFF",
            "y",
            "Y",
            "n",
            "N",
            "yes",
            "No",
            "YES",
            "true",
            "False",
            "TRUE",
            "null",
            "Null",
            "NULL",
            "~",
            "",
            "0777",
            "0o17",
            "0x1F",
            "0b101",
            "1_000",
            "1:20",
            "190:20:30.15",
            "-1:20",
            "2001-12-14",
            "2001-12-14t21:59:43.10-05:00",
            "2001-12-14 21:59:43.10 -5",
            ".inf",
            "-.inf",
            "+.INF",
            ".NaN",
            ".5",
            "1e3",
            "1.0e+3",
            "12",
            "-12",
            "+12",
            "0",
            "3.14",
            "<<",
            "=",
            "- item",
            "-",
            "---",
            "...",
            ".",
            "? x",
            ": x",
            "a: b",
            "a #b",
            "key:",
            "#c",
            "&a",
            "*a",
            "!t",
            "|",
            ">",
            "'q",
            "\"q",
            "%d",
            "@x",
            "`x",
            "[a]",
            "{a}",
            ",",
            " lead",
            "trail ",
            "tab\there",
            "new\nline",
            "café",
        ] {
            assert_ne!(
                string_style(text),
                StringStyle::Plain,
                "{text:?} must be quoted"
            );
        }
    }

    #[test]
    fn ordinary_text_stays_plain() {
        for text in [
            "Running",
            "Stopped",
            "string",
            "One machine of a provisioning scheme.",
            ".spec.machineName",
            "mcs.imaging.dev",
            "self == oldSelf",
            "The machine's name (e.g. `VDI-001`).",
            "a:b",
            "a#b",
            "x-kubernetes-validations",
        ] {
            assert_eq!(string_style(text), StringStyle::Plain, "{text:?}");
        }
    }

    #[test]
    fn layout_matches_the_committed_crds() {
        let value = json!({
            "apiVersion": "v1",
            "list": ["a", {"b": 1, "c": [true, null]}, [1, 2], [], {}],
            "map": {"default": "Off", "enum": ["On", "Off"], "empty": {}},
            "text": "two\nlines",
            "float": 1.0,
            "big": 1e20,
            "rule": "!has(self.a)",
        });
        let expected = "\
apiVersion: v1
big: 1.0e+20
float: 1.0
list:
- a
- b: 1
  c:
  - true
  - null
- - 1
  - 2
- []
- {}
map:
  default: 'Off'
  empty: {}
  enum:
  - 'On'
  - 'Off'
rule: '!has(self.a)'
text: |-
  two
  lines
";
        assert_eq!(to_string(&value), expected);
    }

    #[test]
    fn escapes_and_block_styles() {
        assert_eq!(to_string(&json!("it's")), "it's\n");
        assert_eq!(to_string(&json!("'x'")), "'''x'''\n");
        assert_eq!(to_string(&json!("a\tb")), "\"a\\tb\"\n");
        assert_eq!(to_string(&json!("\u{2028}")), "\"\\u2028\"\n");
        assert_eq!(to_string(&json!("\u{85}")), "\"\\x85\"\n");
        assert_eq!(to_string(&json!({"k": "a\n\nb\n"})), "k: |\n  a\n\n  b\n");
        assert_eq!(to_string(&json!("#a\nb")), "|-\n  #a\n  b\n");
        assert_eq!(to_string(&json!({"k": " a\nb"})), "k: \" a\\nb\"\n");
        assert_eq!(to_string(&json!({"k": "a \nb"})), "k: \"a \\nb\"\n");
        assert_eq!(to_string(&json!({"k": "a\n\n"})), "k: \"a\\n\\n\"\n");
        assert_eq!(to_string(&json!({"y": 1})), "'y': 1\n");
        assert_eq!(to_string(&json!(-0.0)), "-0.0\n");
        assert_eq!(to_string(&json!(1.5e-7)), "1.5e-7\n");
    }

    #[test]
    fn long_keys_are_explicit() {
        let key = "k".repeat(1500);
        let text = to_string(&json!({ key.clone(): {"a": 1} }));
        assert!(text.starts_with(&format!("? {key}\n:\n  a: 1\n")), "{text}");
        let back: Value = serde_yaml::from_str(&text).expect("reads back");
        assert_eq!(back, json!({ key: {"a": 1} }));
    }

    #[test]
    fn serde_yaml_reads_back_the_same() {
        let value = json!({
            "a": ["On", "Off", "0777", "1:20", "2001-12-14", "", "~", ".inf", "<<", "="],
            "b": {"nested": [[{"x": "y"}]], "n": -5, "f": 0.25, "u": u64::MAX},
            "c": "multi\nline\n",
        });
        let text = to_string(&value);
        let back: Value = serde_yaml::from_str(&text).expect("reads back");
        assert_eq!(back, value, "{text}");
    }
}
