//! A YAML 1.1 reader for tests: reads YAML the way kubectl, Helm and Argo CD do (their Go YAML
//! libraries follow YAML 1.1), into `serde_json::Value`s.
//!
//! The text is parsed by `saphyr-parser`, an event parser that reports each scalar's style. Quoted
//! and block scalars stay strings; *plain* scalars are resolved by the YAML 1.1 type repository
//! (<https://yaml.org/type/>):
//!
//! - bool: `y Y yes Yes YES n N no No NO true True TRUE false False FALSE on On ON off Off OFF`
//! - null: `~ null Null NULL` and the empty scalar
//! - int: binary `0b1010`, octal `0777`, decimal `1_000`, hex `0xFF`, sexagesimal `190:20:30`,
//!   each with an optional sign and `_` separators
//! - float: `1.5`, `1.`, `.5`, `6.8523015e+5`, sexagesimal `190:20:30.15`, `_` separators (also
//!   after the dot, as the spec's own example `685.230_15e+03` and PyYAML have it);
//!   `.inf`, `-.inf` and `.nan` have no JSON form and become the marker strings
//!   [`INF`], [`NEG_INF`], [`NAN`]
//! - timestamp: `2001-12-14`, `2001-12-14t21:59:43.10-05:00`, `2001-12-14 21:59:43.10 -5`, ...
//!   become [`TIMESTAMP`] followed by the text (JSON has no timestamps)
//! - merge `<<` as a key merges the mappings it names; value `=` becomes [`VALUE`]
//!
//! Core-schema tags (`!!str`, `!!int`, ...) are honoured; anchors and aliases are resolved; a
//! stream of several documents gives one value per document. Mapping keys that resolve to
//! something other than a string become their text as Go's YAML-to-JSON conversion does
//! (`y:` is the key `"true"`). Where YAML 1.1 reads the *characters* differently from YAML 1.2
//! (the line breaks U+0085, U+2028, U+2029 and the 1.2-only escape `\/`) the reader fails.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

/// Prefix of the string a plain YAML 1.1 timestamp becomes: `"!!timestamp 2001-12-14"`.
pub const TIMESTAMP: &str = "!!timestamp ";
/// What the plain scalars `.inf`, `+.inf` (any case listed by the spec) become.
pub const INF: &str = "!!float .inf";
/// What `-.inf` becomes.
pub const NEG_INF: &str = "!!float -.inf";
/// What `.nan` becomes.
pub const NAN: &str = "!!float .nan";
/// What the plain scalar `=` (YAML 1.1's value key type) becomes.
pub const VALUE: &str = "!!value =";
/// What the plain scalar `<<` becomes outside a mapping key.
pub const MERGE: &str = "!!merge <<";

const CORE: &str = "tag:yaml.org,2002:";

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid regex")
}

static BOOL_TRUE: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(y|Y|yes|Yes|YES|true|True|TRUE|on|On|ON)$"));
static BOOL_FALSE: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^(n|N|no|No|NO|false|False|FALSE|off|Off|OFF)$"));
static NULL: LazyLock<Regex> = LazyLock::new(|| regex(r"^(~|null|Null|NULL|)$"));
static INT_BINARY: LazyLock<Regex> = LazyLock::new(|| regex(r"^([-+]?)0b([0-1_]+)$"));
static INT_OCTAL: LazyLock<Regex> = LazyLock::new(|| regex(r"^([-+]?)0([0-7_]+)$"));
static INT_DECIMAL: LazyLock<Regex> = LazyLock::new(|| regex(r"^([-+]?)(0|[1-9][0-9_]*)$"));
static INT_HEX: LazyLock<Regex> = LazyLock::new(|| regex(r"^([-+]?)0x([0-9a-fA-F_]+)$"));
static INT_SEXAGESIMAL: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^([-+]?)([1-9][0-9_]*(:[0-5]?[0-9])+)$"));
static FLOAT_DECIMAL: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[-+]?([0-9][0-9_]*)?\.[0-9._]*([eE][-+][0-9]+)?$"));
static FLOAT_SEXAGESIMAL: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^([-+]?)([0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*)$"));
static FLOAT_INF: LazyLock<Regex> = LazyLock::new(|| regex(r"^([-+]?)\.(inf|Inf|INF)$"));
static FLOAT_NAN: LazyLock<Regex> = LazyLock::new(|| regex(r"^\.(nan|NaN|NAN)$"));
static TIMESTAMP_YMD: LazyLock<Regex> = LazyLock::new(|| regex(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"));
static TIMESTAMP_FULL: LazyLock<Regex> = LazyLock::new(|| {
    regex(concat!(
        r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}",
        r"([Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]*)?",
        r"([ \t]*(Z|[-+][0-9]{1,2}(:[0-9]{2})?))?$"
    ))
});

/// Reads every document of a YAML stream as YAML 1.1 does.
///
/// # Errors
/// On a syntax error, on what JSON cannot hold (a collection as a key, an out-of-range integer,
/// an invalid `!!int`), and where YAML 1.1 reads the characters differently from YAML 1.2.
pub fn from_str_multi(text: &str) -> Result<Vec<Value>, String> {
    for (c, name) in [
        ('\u{85}', "U+0085"),
        ('\u{2028}', "U+2028"),
        ('\u{2029}', "U+2029"),
    ] {
        if let Some(at) = text.find(c) {
            return Err(format!(
                "{name} at byte {at} is a line break in YAML 1.1 but not in YAML 1.2"
            ));
        }
    }
    let mut reader = Reader {
        source: text,
        chars: None,
        anchors: HashMap::new(),
        stack: Vec::new(),
        documents: Vec::new(),
    };
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| format!("YAML syntax error: {e}"))?;
        reader.event(event, span)?;
    }
    Ok(reader.documents)
}

/// Reads a stream that holds exactly one document.
///
/// # Errors
/// As [`from_str_multi`], and when the stream holds no or several documents.
pub fn from_str(text: &str) -> Result<Value, String> {
    let mut documents = from_str_multi(text)?;
    match documents.len() {
        1 => Ok(documents.remove(0)),
        n => Err(format!("expected one YAML document, found {n}")),
    }
}

/// What YAML 1.1 makes of a plain (unquoted, untagged) scalar.
///
/// # Errors
/// When it is an int that JSON cannot hold or a float the spec's pattern admits but that is no
/// number (`1.2.3`).
pub fn resolve_plain(text: &str) -> Result<Value, String> {
    if BOOL_TRUE.is_match(text) {
        return Ok(Value::Bool(true));
    }
    if BOOL_FALSE.is_match(text) {
        return Ok(Value::Bool(false));
    }
    if NULL.is_match(text) {
        return Ok(Value::Null);
    }
    if let Some(int) = resolve_int(text) {
        return int;
    }
    if let Some(float) = resolve_float(text) {
        return float;
    }
    if TIMESTAMP_YMD.is_match(text) || TIMESTAMP_FULL.is_match(text) {
        return Ok(Value::String(format!("{TIMESTAMP}{text}")));
    }
    match text {
        "=" => Ok(Value::String(VALUE.to_owned())),
        "<<" => Ok(Value::String(MERGE.to_owned())),
        _ => Ok(Value::String(text.to_owned())),
    }
}

fn integer(negative: bool, magnitude: u128, text: &str) -> Result<Value, String> {
    let out_of_range = || format!("integer {text:?} does not fit JSON's 64 bits");
    if negative {
        let value = i128::try_from(magnitude).map_err(|_| out_of_range())?;
        i64::try_from(-value)
            .map(Value::from)
            .map_err(|_| out_of_range())
    } else {
        u64::try_from(magnitude)
            .map(Value::from)
            .map_err(|_| out_of_range())
    }
}

fn digits(text: &str, radix: u32, whole: &str) -> Result<u128, String> {
    let cleaned: String = text.chars().filter(|&c| c != '_').collect();
    if cleaned.is_empty() {
        return Ok(0);
    }
    u128::from_str_radix(&cleaned, radix).map_err(|e| format!("integer {whole:?}: {e}"))
}

/// The YAML 1.1 int forms; `None` when `text` is none of them.
fn resolve_int(text: &str) -> Option<Result<Value, String>> {
    let radix_forms: [(&Regex, u32); 4] = [
        (&INT_BINARY, 2),
        (&INT_HEX, 16),
        (&INT_OCTAL, 8),
        (&INT_DECIMAL, 10),
    ];
    for (pattern, radix) in radix_forms {
        if let Some(c) = pattern.captures(text) {
            let negative = &c[1] == "-";
            return Some(digits(&c[2], radix, text).and_then(|m| integer(negative, m, text)));
        }
    }
    let c = INT_SEXAGESIMAL.captures(text)?;
    let negative = &c[1] == "-";
    let mut magnitude: u128 = 0;
    for part in c[2].split(':') {
        match digits(part, 10, text) {
            Ok(d) => magnitude = magnitude.saturating_mul(60).saturating_add(d),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(integer(negative, magnitude, text))
}

fn float(value: f64, text: &str) -> Result<Value, String> {
    Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(|| format!("float {text:?} has no JSON form"))
}

/// The YAML 1.1 float forms; `None` when `text` is none of them.
fn resolve_float(text: &str) -> Option<Result<Value, String>> {
    if FLOAT_DECIMAL.is_match(text) {
        let cleaned: String = text.chars().filter(|&c| c != '_').collect();
        return Some(
            cleaned
                .parse::<f64>()
                .map_err(|e| format!("float {text:?}: {e}"))
                .and_then(|f| float(f, text)),
        );
    }
    if let Some(c) = FLOAT_SEXAGESIMAL.captures(text) {
        let sign = if &c[1] == "-" { -1.0 } else { 1.0 };
        let mut value = 0.0_f64;
        for part in c[2].split(':') {
            let cleaned: String = part.chars().filter(|&c| c != '_').collect();
            match cleaned.parse::<f64>() {
                Ok(d) => value = value * 60.0 + d,
                Err(e) => return Some(Err(format!("float {text:?}: {e}"))),
            }
        }
        return Some(float(sign * value, text));
    }
    if let Some(c) = FLOAT_INF.captures(text) {
        let marker = if &c[1] == "-" { NEG_INF } else { INF };
        return Some(Ok(Value::String(marker.to_owned())));
    }
    if FLOAT_NAN.is_match(text) {
        return Some(Ok(Value::String(NAN.to_owned())));
    }
    None
}

/// A scalar with an explicit tag.
fn resolve_tagged(text: &str, tag: &Tag) -> Result<Value, String> {
    // The non-specific tag `!`: a string (saphyr-parser reports it as handle "", suffix "!").
    if (tag.handle.is_empty() && tag.suffix == "!") || (tag.handle == "!" && tag.suffix.is_empty())
    {
        return Ok(Value::String(text.to_owned()));
    }
    if tag.handle != CORE {
        return Err(format!("unsupported tag {tag} on {text:?}"));
    }
    let resolved = resolve_plain(text)?;
    let fits = match tag.suffix.as_str() {
        "str" => return Ok(Value::String(text.to_owned())),
        "bool" => resolved.is_boolean(),
        "null" => resolved.is_null(),
        "int" => resolved.is_i64() || resolved.is_u64(),
        "float" => {
            resolved.is_number() || [INF, NEG_INF, NAN].contains(&resolved.as_str().unwrap_or(""))
        }
        "timestamp" => resolved.as_str().is_some_and(|s| s.starts_with(TIMESTAMP)),
        other => return Err(format!("unsupported tag !!{other} on {text:?}")),
    };
    if fits {
        Ok(resolved)
    } else {
        Err(format!("{text:?} is no valid !!{}", tag.suffix))
    }
}

/// A collection being read.
enum Frame {
    Sequence {
        anchor: usize,
        items: Vec<Value>,
    },
    Mapping {
        anchor: usize,
        entries: Map<String, Value>,
        /// The key read, waiting for its value (`None` for a `<<` merge key).
        key: Option<Option<String>>,
        /// Mappings named by `<<` keys, in order; they give only keys not set explicitly.
        merges: Vec<Value>,
    },
}

struct Reader<'a> {
    source: &'a str,
    /// `source` as characters, made when a span must be looked at.
    chars: Option<Vec<char>>,
    anchors: HashMap<usize, Value>,
    stack: Vec<Frame>,
    documents: Vec<Value>,
}

impl Reader<'_> {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), String> {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                if style == ScalarStyle::DoubleQuoted {
                    self.check_double_quoted(span)?;
                }
                let merge_key = style == ScalarStyle::Plain
                    && tag.is_none()
                    && text == "<<"
                    && matches!(self.stack.last(), Some(Frame::Mapping { key: None, .. }));
                if merge_key {
                    if let Some(Frame::Mapping { key, .. }) = self.stack.last_mut() {
                        *key = Some(None);
                    }
                    return Ok(());
                }
                let value = match (&tag, style) {
                    (Some(tag), _) => resolve_tagged(&text, tag)?,
                    (None, ScalarStyle::Plain) => resolve_plain(&text)?,
                    (None, _) => Value::String(text.into_owned()),
                };
                self.node(value, anchor)
            }
            Event::Alias(id) => {
                let value = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("alias to unknown anchor {id}"))?;
                self.node(value, 0)
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push(Frame::Sequence {
                    anchor,
                    items: Vec::new(),
                });
                Ok(())
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Mapping {
                    anchor,
                    entries: Map::new(),
                    key: None,
                    merges: Vec::new(),
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (value, anchor) = match self.stack.pop() {
                    Some(Frame::Sequence { anchor, items }) => (Value::Array(items), anchor),
                    Some(Frame::Mapping {
                        anchor,
                        mut entries,
                        merges,
                        ..
                    }) => {
                        for merge in merges {
                            let Value::Object(merged) = merge else {
                                return Err("`<<` must name mappings".to_owned());
                            };
                            for (k, v) in merged {
                                entries.entry(k).or_insert(v);
                            }
                        }
                        (Value::Object(entries), anchor)
                    }
                    None => return Err("collection end without a start".to_owned()),
                };
                self.node(value, anchor)
            }
            Event::DocumentEnd
            | Event::DocumentStart(_)
            | Event::StreamStart
            | Event::StreamEnd
            | Event::Nothing => Ok(()),
        }
    }

    /// Fails on `\/` in a double-quoted scalar: an escape of YAML 1.2 only.
    fn check_double_quoted(&mut self, span: Span) -> Result<(), String> {
        if !self.source.contains("\\/") {
            return Ok(());
        }
        let chars = self
            .chars
            .get_or_insert_with(|| self.source.chars().collect());
        let end = span.end.index().min(chars.len());
        let raw = &chars[span.start.index().min(end)..end];
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == '\\' {
                if raw.get(i + 1) == Some(&'/') {
                    return Err(format!(
                        "line {}: the escape \\/ exists in YAML 1.2 only",
                        span.start.line()
                    ));
                }
                i += 1;
            }
            i += 1;
        }
        Ok(())
    }

    /// A complete node: into its parent, or a document.
    fn node(&mut self, value: Value, anchor: usize) -> Result<(), String> {
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => self.documents.push(value),
            Some(Frame::Sequence { items, .. }) => items.push(value),
            Some(Frame::Mapping {
                entries,
                key,
                merges,
                ..
            }) => match key.take() {
                None => *key = Some(Some(key_text(value)?)),
                Some(None) => match value {
                    Value::Array(mappings) => merges.extend(mappings),
                    mapping => merges.push(mapping),
                },
                Some(Some(name)) => {
                    if entries.contains_key(&name) {
                        return Err(format!("duplicate key {name:?}"));
                    }
                    entries.insert(name, value);
                }
            },
        }
        Ok(())
    }
}

/// A resolved key as the JSON key Go's YAML-to-JSON conversion makes of it.
fn key_text(key: Value) -> Result<String, String> {
    match key {
        Value::String(s) => Ok(s),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Null => Ok("null".to_owned()),
        Value::Number(n) => Ok(n.to_string()),
        collection => Err(format!("a collection as a mapping key: {collection}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_scalars_resolve_as_yaml_1_1() {
        let text = "\
bools: [y, Y, yes, Yes, YES, on, On, ON, true, n, N, no, No, NO, off, Off, OFF, false]
nulls: [~, null, Null, NULL]
empty:
ints: [0b1010, -0b1_0, 0777, 0, -12, +12, 1_000, 0xFF, 0x_0A, 190:20:30, -1:20]
floats: [1.5, 1., .5, 6.8523015e+5, 685.230_15e+03, 190:20:30.15]
special: [.inf, -.inf, +.INF, .NaN, 2001-12-14, 2001-12-14t21:59:43.10-05:00, '=', =]
strings: ['On', \"off\", 1e3, 0o17, 0x, yEs, Running, 1.0.0x]
y: 1
";
        let value = from_str(text).expect("reads");
        assert_eq!(
            value["bools"],
            json!([
                true, true, true, true, true, true, true, true, true, false, false, false, false,
                false, false, false, false, false
            ])
        );
        assert_eq!(value["nulls"], json!([null, null, null, null]));
        assert_eq!(value["empty"], json!(null));
        assert_eq!(
            value["ints"],
            json!([10, -2, 511, 0, -12, 12, 1000, 255, 10, 685_230, -80])
        );
        assert_eq!(
            value["floats"],
            json!([1.5, 1.0, 0.5, 685_230.15, 685_230.15, 685_230.15])
        );
        assert_eq!(
            value["special"],
            json!([
                INF,
                NEG_INF,
                INF,
                NAN,
                "!!timestamp 2001-12-14",
                "!!timestamp 2001-12-14t21:59:43.10-05:00",
                "=",
                VALUE
            ])
        );
        assert_eq!(
            value["strings"],
            json!(["On", "off", "1e3", "0o17", "0x", "yEs", "Running", "1.0.0x"])
        );
        assert_eq!(value["true"], json!(1));
    }

    #[test]
    fn merges_anchors_tags_and_documents() {
        let text = "\
base: &b {a: 1, b: 2}
m:
  <<: *b
  b: 3
t: [!!str yes, !!int '12', !!float '1.5', ! on]
---
- second
";
        let docs = from_str_multi(text).expect("reads");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["m"], json!({"a": 1, "b": 3}));
        assert_eq!(docs[0]["t"], json!(["yes", 12, 1.5, "on"]));
        assert_eq!(docs[1], json!(["second"]));
    }

    #[test]
    fn differences_in_characters_fail() {
        assert!(from_str("a: \"x\\/y\"").is_err());
        assert_eq!(
            from_str("a: \"x\\\\/y\"").expect("reads"),
            json!({"a": "x\\/y"})
        );
        assert!(from_str("a: x\u{2028}y").is_err());
        assert!(from_str("a: 1\na: 2").is_err());
        assert!(from_str("a: 1.2.3").is_err());
    }
}
