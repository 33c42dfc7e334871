//! The string formats the apiserver validates (`k8s.io/kube-openapi/pkg/validation/strfmt`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use regex::Regex;

type Re = LazyLock<Option<Regex>>;

fn re(pattern: &str) -> Option<Regex> {
    Regex::new(pattern).ok()
}

fn is_match(r: &Re, s: &str) -> bool {
    r.as_ref().is_some_and(|r| r.is_match(s))
}

static DATE_TIME: Re = LazyLock::new(|| {
    re(
        r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})?$",
    )
});
static DATE: Re = LazyLock::new(|| re(r"^(\d{4})-(\d{2})-(\d{2})$"));
static UUID: Re =
    LazyLock::new(|| re(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$"));
static UUID3: Re = LazyLock::new(|| {
    re(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$")
});
static UUID4: Re = LazyLock::new(|| {
    re(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$")
});
static UUID5: Re = LazyLock::new(|| {
    re(r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$")
});
static HOSTNAME: Re = LazyLock::new(|| {
    re(
        r"^([a-zA-Z0-9_]|[a-zA-Z0-9_][a-zA-Z0-9\-_]{0,61}[a-zA-Z0-9_])(\.([a-zA-Z0-9_]|[a-zA-Z0-9_][a-zA-Z0-9\-_]{0,61}[a-zA-Z0-9_]))*\.?$",
    )
});
static EMAIL: Re = LazyLock::new(|| re(r"^[^@\s<>]+@[^@\s<>]+$"));
static MAC: Re = LazyLock::new(|| {
    re(
        r"^([0-9A-Fa-f]{2}([:-])){5}[0-9A-Fa-f]{2}$|^([0-9A-Fa-f]{2}([:-])){19}[0-9A-Fa-f]{2}$|^([0-9A-Fa-f]{4}\.){2}[0-9A-Fa-f]{4}$",
    )
});
static HEXCOLOR: Re = LazyLock::new(|| re(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$"));
static RGBCOLOR: Re = LazyLock::new(|| {
    re(
        r"^rgb\(\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*\)$",
    )
});
static SSN: Re = LazyLock::new(|| re(r"^\d{3}[- ]?\d{2}[- ]?\d{4}$"));
static BSON: Re = LazyLock::new(|| re(r"^[0-9a-fA-F]{24}$"));
static DURATION: Re = LazyLock::new(|| {
    re(
        r"^(([+-]?(\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+|0|[+-]?\d+\s*(ns|us|ms|s|m|h|d|w|nanoseconds?|microseconds?|milliseconds?|seconds?|minutes?|hours?|days?|weeks?|sec|min|hr))$",
    )
});
static URI: Re = LazyLock::new(|| re(r"^([a-zA-Z][a-zA-Z0-9+.\-]*:\S*|/\S*)$"));

fn valid_civil_date(y: &str, m: &str, d: &str) -> bool {
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i16>(), m.parse::<i8>(), d.parse::<i8>()) else {
        return false;
    };
    jiff::civil::Date::new(y, m, d).is_ok()
}

fn date_time(s: &str) -> bool {
    let Some(c) = DATE_TIME.as_ref().and_then(|r| r.captures(s)) else {
        return false;
    };
    let num = |i: usize| {
        c.get(i)
            .and_then(|m| m.as_str().parse::<u32>().ok())
            .unwrap_or(0)
    };
    valid_civil_date(&c[1], &c[2], &c[3]) && num(4) < 24 && num(5) < 60 && num(6) < 60
}

fn base64_std(s: &str) -> bool {
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return false;
    }
    let pad = bytes.iter().rev().take_while(|b| **b == b'=').count();
    if pad > 2 {
        return false;
    }
    bytes[..bytes.len() - pad]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

fn cidr(s: &str) -> bool {
    let Some((ip, prefix)) = s.split_once('/') else {
        return false;
    };
    let Ok(prefix) = prefix.parse::<u8>() else {
        return false;
    };
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => prefix <= 32,
        Ok(IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

fn isbn10(s: &str) -> bool {
    let d: Vec<char> = s.chars().filter(|c| *c != '-' && *c != ' ').collect();
    d.len() == 10
        && d[..9].iter().all(char::is_ascii_digit)
        && (d[9].is_ascii_digit() || d[9] == 'X' || d[9] == 'x')
}

fn isbn13(s: &str) -> bool {
    let d: Vec<char> = s.chars().filter(|c| *c != '-' && *c != ' ').collect();
    d.len() == 13 && d.iter().all(char::is_ascii_digit)
}

fn credit_card(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(12..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `s` is valid for the (dash-free, lower-case) format name.
pub(crate) fn validates(format: &str, s: &str) -> bool {
    match format {
        "datetime" => date_time(s),
        "date" => DATE
            .as_ref()
            .and_then(|r| r.captures(s))
            .is_some_and(|c| valid_civil_date(&c[1], &c[2], &c[3])),
        "byte" => base64_std(s),
        "uuid" => is_match(&UUID, s),
        "uuid3" => is_match(&UUID3, s),
        "uuid4" => is_match(&UUID4, s),
        "uuid5" => is_match(&UUID5, s),
        "ipv4" => s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<Ipv6Addr>().is_ok(),
        "cidr" => cidr(s),
        "hostname" => s.len() <= 255 && is_match(&HOSTNAME, s),
        "email" => is_match(&EMAIL, s),
        "mac" => is_match(&MAC, s),
        "hexcolor" => is_match(&HEXCOLOR, s),
        "rgbcolor" => is_match(&RGBCOLOR, s),
        "ssn" => is_match(&SSN, s),
        "bsonobjectid" => is_match(&BSON, s),
        "duration" => is_match(&DURATION, s),
        "uri" => is_match(&URI, s),
        "isbn" => isbn10(s) || isbn13(s),
        "isbn10" => isbn10(s),
        "isbn13" => isbn13(s),
        "creditcard" => credit_card(s),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::validates;

    #[test]
    fn date_time_format() {
        assert!(validates("datetime", "2024-01-02T03:04:05Z"));
        assert!(validates("datetime", "2024-01-02T03:04:05.123+02:00"));
        assert!(!validates("datetime", "2024-13-02T03:04:05Z"));
        assert!(!validates("datetime", "yesterday"));
        assert!(validates("date", "2024-02-29"));
        assert!(!validates("date", "2023-02-29"));
        assert!(validates("byte", "aGVsbG8="));
        assert!(!validates("byte", "aGVsbG8"));
        assert!(validates("cidr", "10.0.0.0/8"));
        assert!(!validates("ipv4", "300.1.1.1"));
    }
}
