//! Rendering of values the way the Go apiserver prints them in field errors.

use serde_json::Value;

/// Go `strconv.Quote`.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                let n = c as u32;
                if n <= 0xffff {
                    out.push_str(&format!("\\u{n:04x}"));
                } else {
                    out.push_str(&format!("\\U{n:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Splits the shortest round-trip representation of a finite, non-zero `f`
/// into its decimal digits and the exponent `e` so that `f = 0.d1d2… × 10^e`.
fn digits_and_exp(f: f64) -> (String, i32) {
    let s = format!("{:e}", f.abs());
    let (mant, exp) = s.split_once('e').unwrap_or((s.as_str(), "0"));
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    (digits, exp + 1)
}

fn fixed(digits: &str, exp: i32) -> String {
    let n = digits.len() as i32;
    if exp <= 0 {
        format!("0.{}{}", "0".repeat((-exp) as usize), digits)
    } else if exp >= n {
        format!("{}{}", digits, "0".repeat((exp - n) as usize))
    } else {
        format!("{}.{}", &digits[..exp as usize], &digits[exp as usize..])
    }
}

fn scientific(digits: &str, exp: i32, min_exp_digits: usize) -> String {
    let e = exp - 1;
    let mant = if digits.len() > 1 {
        format!("{}.{}", &digits[..1], &digits[1..])
    } else {
        digits.to_string()
    };
    let sign = if e < 0 { '-' } else { '+' };
    format!("{mant}e{sign}{:0width$}", e.abs(), width = min_exp_digits)
}

/// Go `fmt.Sprintf("%v", f)` for a float64.
pub(crate) fn float_v(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let (digits, exp) = digits_and_exp(f);
    let body = if exp - 1 < -4 || exp > 21 {
        scientific(&digits, exp, 2)
    } else {
        fixed(&digits, exp)
    };
    if f < 0.0 { format!("-{body}") } else { body }
}

/// Go `encoding/json` rendering of a float64.
fn float_json(f: f64) -> String {
    if !f.is_finite() {
        return "null".into();
    }
    if f == 0.0 {
        return "0".into();
    }
    let abs = f.abs();
    let (digits, exp) = digits_and_exp(f);
    let body = if !(1e-6..1e21).contains(&abs) {
        scientific(&digits, exp, 1)
    } else {
        fixed(&digits, exp)
    };
    if f < 0.0 { format!("-{body}") } else { body }
}

/// Renders a JSON number as Go prints the decoded value with `%v`
/// (integers as int64, everything else as float64).
pub(crate) fn number_v(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        float_v(u as f64)
    } else {
        float_v(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn marshal_into(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&float_json(u as f64));
            } else {
                out.push_str(&float_json(n.as_f64().unwrap_or(f64::NAN)));
            }
        }
        Value::String(s) => json_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                marshal_into(item, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_string(k, out);
                out.push(':');
                if let Some(v) = m.get(*k) {
                    marshal_into(v, out);
                }
            }
            out.push('}');
        }
    }
}

/// Go `json.Marshal` of a decoded JSON value (sorted keys, HTML escaping).
pub(crate) fn marshal(v: &Value) -> String {
    let mut out = String::new();
    marshal_into(v, &mut out);
    out
}

/// How `field.Error.ErrorBody` prints a bad value.
pub(crate) fn bad_value(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number_v(n),
        other => marshal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_like_go() {
        assert_eq!(float_v(1.0), "1");
        assert_eq!(float_v(1.5), "1.5");
        assert_eq!(float_v(0.0001), "0.0001");
        assert_eq!(float_v(0.00001), "1e-05");
        assert_eq!(float_v(1e20), "100000000000000000000");
        assert_eq!(float_v(1e21), "1e+21");
        assert_eq!(float_v(-2.25), "-2.25");
        assert_eq!(float_json(1e21), "1e+21");
        assert_eq!(float_json(0.0000001), "1e-7");
        assert_eq!(float_json(2.5), "2.5");
    }

    #[test]
    fn quoting_like_go() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(quote("é"), "\"é\"");
        assert_eq!(
            marshal(&serde_json::json!({"b": "<", "a": [1, 2.5]})),
            "{\"a\":[1,2.5],\"b\":\"\\u003c\"}"
        );
    }
}
