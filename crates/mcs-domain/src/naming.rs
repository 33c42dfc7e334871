//! Machine names from an identity pool's naming scheme (`New-AcctIdentityPool -NamingScheme
//! VDI-### -NamingSchemeType Numeric`).
//!
//! A naming scheme is fixed text around exactly one run of `#`. The run is filled from the
//! machine's index: zero-padded decimal digits for [`NamingSchemeType::Numeric`] (`VDI-###`,
//! index 7 gives `VDI-007`), or base-26 letters for [`NamingSchemeType::Alphabetic`] (`###`
//! gives `AAA`, `AAB`, ...). Every name must be a valid NetBIOS computer name: 1 to 15
//! characters, ASCII letters, digits and hyphens only, and not all digits. Because a
//! domain-joined computer also gets a DNS host name, a name may not start or end with a hyphen
//! either.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Reason;

/// The longest NetBIOS computer name, in characters.
pub const MAX_MACHINE_NAME_LEN: usize = 15;

/// The placeholder character of a naming scheme.
pub const PLACEHOLDER: char = '#';

/// How the `#` run of a naming scheme is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum NamingSchemeType {
    /// Zero-padded decimal digits: `VDI-###` gives `VDI-000`, `VDI-001`, ...
    Numeric,
    /// Upper-case letters counting in base 26: `VDI-###` gives `VDI-AAA`, `VDI-AAB`, ...
    Alphabetic,
}

impl NamingSchemeType {
    /// How many symbols one `#` stands for (10 or 26).
    fn radix(self) -> u128 {
        match self {
            NamingSchemeType::Numeric => 10,
            NamingSchemeType::Alphabetic => 26,
        }
    }
}

/// Why a naming scheme or a machine name was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NamingError {
    /// The naming scheme has no `#`.
    #[error("naming scheme {scheme:?} has no `#` run; it needs exactly one, e.g. `VDI-###`")]
    NoPlaceholder {
        /// The naming scheme.
        scheme: String,
    },
    /// The naming scheme has more than one run of `#`.
    #[error(
        "naming scheme {scheme:?} has {runs} runs of `#`; it needs exactly one, e.g. `VDI-###`"
    )]
    MultiplePlaceholders {
        /// The naming scheme.
        scheme: String,
        /// How many runs it has.
        runs: usize,
    },
    /// The machine name is empty.
    #[error("machine name is empty; a NetBIOS computer name has 1 to 15 characters")]
    EmptyName,
    /// The machine name (or every name of the scheme) is longer than 15 characters.
    #[error(
        "machine name {name:?} is {len} characters long; a NetBIOS computer name has at most 15"
    )]
    NameTooLong {
        /// The name (or the naming scheme).
        name: String,
        /// Its length in characters.
        len: usize,
    },
    /// The machine name (or naming scheme) contains a character other than a letter, digit or
    /// hyphen.
    #[error(
        "machine name {name:?} contains {character:?} at position {position}; a NetBIOS computer name has only ASCII letters, digits and hyphens"
    )]
    InvalidCharacter {
        /// The name (or the naming scheme).
        name: String,
        /// The offending character.
        character: char,
        /// Its 0-based character position.
        position: usize,
    },
    /// The machine name (or every name of the scheme) consists of digits only.
    #[error(
        "machine name {name:?} consists of digits only; a NetBIOS computer name needs a letter or hyphen"
    )]
    AllDigits {
        /// The name (or the naming scheme).
        name: String,
    },
    /// The machine name (or naming scheme) starts or ends with a hyphen, which a DNS host name
    /// (and so a domain-joined computer name) may not.
    #[error(
        "machine name {name:?} starts or ends with a hyphen; a computer name must begin and end with a letter or digit"
    )]
    HyphenAtEnd {
        /// The name (or the naming scheme).
        name: String,
    },
    /// The index does not fit the scheme's `#` run: the identity pool has no names left.
    #[error(
        "identity pool exhausted: naming scheme {scheme:?} ({scheme_type:?}) has {capacity} names, index {index} is beyond them"
    )]
    IdentityPoolExhausted {
        /// The naming scheme.
        scheme: String,
        /// How the run is filled.
        scheme_type: NamingSchemeType,
        /// The requested index.
        index: u64,
        /// How many names the scheme has (saturated at `u64::MAX`).
        capacity: u64,
    },
}

impl Reason for NamingError {
    fn reason(&self) -> &'static str {
        match self {
            NamingError::NoPlaceholder { .. } => "NamingSchemeNoPlaceholder",
            NamingError::MultiplePlaceholders { .. } => "NamingSchemeMultiplePlaceholders",
            NamingError::EmptyName => "MachineNameEmpty",
            NamingError::NameTooLong { .. } => "MachineNameTooLong",
            NamingError::InvalidCharacter { .. } => "MachineNameInvalidCharacter",
            NamingError::AllDigits { .. } => "MachineNameAllDigits",
            NamingError::HyphenAtEnd { .. } => "MachineNameHyphenAtEnd",
            NamingError::IdentityPoolExhausted { .. } => "IdentityPoolExhausted",
        }
    }
}

/// A parsed naming scheme: fixed prefix, one `#` run, fixed suffix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamingScheme {
    prefix: String,
    width: usize,
    suffix: String,
    scheme_type: NamingSchemeType,
}

impl NamingScheme {
    /// Parses a naming scheme such as `VDI-###`.
    ///
    /// Rejects schemes without exactly one `#` run, with characters that are not ASCII letters,
    /// digits or hyphens, whose names would be longer than 15 characters or start or end with
    /// a hyphen, and numeric schemes whose names would be all digits.
    pub fn parse(scheme: &str, scheme_type: NamingSchemeType) -> Result<NamingScheme, NamingError> {
        let runs = count_runs(scheme);
        if runs == 0 {
            return Err(NamingError::NoPlaceholder {
                scheme: scheme.to_string(),
            });
        }
        if runs > 1 {
            return Err(NamingError::MultiplePlaceholders {
                scheme: scheme.to_string(),
                runs,
            });
        }
        let len = scheme.chars().count();
        if len > MAX_MACHINE_NAME_LEN {
            return Err(NamingError::NameTooLong {
                name: scheme.to_string(),
                len,
            });
        }
        if let Some((position, character)) = scheme
            .chars()
            .enumerate()
            .find(|(_, c)| *c != PLACEHOLDER && !is_name_char(*c))
        {
            return Err(NamingError::InvalidCharacter {
                name: scheme.to_string(),
                character,
                position,
            });
        }
        if scheme.starts_with('-') || scheme.ends_with('-') {
            return Err(NamingError::HyphenAtEnd {
                name: scheme.to_string(),
            });
        }
        // One run exists and every character is ASCII, so byte offsets are character offsets.
        let start = scheme.find(PLACEHOLDER).unwrap_or(0);
        let end = scheme.rfind(PLACEHOLDER).map_or(start, |i| i + 1);
        let prefix = scheme.get(..start).unwrap_or_default();
        let suffix = scheme.get(end..).unwrap_or_default();
        if scheme_type == NamingSchemeType::Numeric
            && prefix
                .chars()
                .chain(suffix.chars())
                .all(|c| c.is_ascii_digit())
        {
            return Err(NamingError::AllDigits {
                name: scheme.to_string(),
            });
        }
        Ok(NamingScheme {
            prefix: prefix.to_string(),
            width: end - start,
            suffix: suffix.to_string(),
            scheme_type,
        })
    }

    /// How the `#` run is filled.
    pub fn scheme_type(&self) -> NamingSchemeType {
        self.scheme_type
    }

    /// The number of `#` in the run.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The machine name for `index` (0-based), or [`NamingError::IdentityPoolExhausted`] when
    /// the index is at or beyond [`NamingScheme::capacity`].
    pub fn name(&self, index: u64) -> Result<String, NamingError> {
        if u128::from(index) >= self.capacity_u128() {
            return Err(NamingError::IdentityPoolExhausted {
                scheme: self.to_string(),
                scheme_type: self.scheme_type,
                index,
                capacity: self.capacity(),
            });
        }
        let radix = self.scheme_type.radix();
        let mut run = vec![b'0'; self.width];
        let mut rest = u128::from(index);
        for slot in run.iter_mut().rev() {
            // `rest % radix` is below 26, so the narrowing cannot lose anything.
            let digit = (rest % radix) as u8;
            rest /= radix;
            *slot = match self.scheme_type {
                NamingSchemeType::Numeric => b'0' + digit,
                NamingSchemeType::Alphabetic => b'A' + digit,
            };
        }
        let mut name = String::with_capacity(self.prefix.len() + self.width + self.suffix.len());
        name.push_str(&self.prefix);
        name.extend(run.into_iter().map(char::from));
        name.push_str(&self.suffix);
        validate_machine_name(&name)?;
        Ok(name)
    }

    /// How many distinct names the scheme has (10^width or 26^width, saturated at `u64::MAX`).
    pub fn capacity(&self) -> u64 {
        u64::try_from(self.capacity_u128()).unwrap_or(u64::MAX)
    }

    /// The exact capacity; a run is at most 15 wide, so 26^15 fits in `u128`.
    fn capacity_u128(&self) -> u128 {
        u32::try_from(self.width)
            .ok()
            .and_then(|w| self.scheme_type.radix().checked_pow(w))
            .unwrap_or(u128::MAX)
    }

    /// The index whose name is `name` (ASCII case-insensitive, as NetBIOS names are), or `None`
    /// if `name` does not belong to this scheme.
    pub fn index_of(&self, name: &str) -> Option<u64> {
        if name.len() != self.prefix.len() + self.width + self.suffix.len() {
            return None;
        }
        let prefix = name.get(..self.prefix.len())?;
        let run = name.get(self.prefix.len()..self.prefix.len() + self.width)?;
        let suffix = name.get(self.prefix.len() + self.width..)?;
        if !prefix.eq_ignore_ascii_case(&self.prefix) || !suffix.eq_ignore_ascii_case(&self.suffix)
        {
            return None;
        }
        let radix = self.scheme_type.radix();
        let mut index: u128 = 0;
        for c in run.bytes() {
            let digit = match self.scheme_type {
                NamingSchemeType::Numeric if c.is_ascii_digit() => c - b'0',
                NamingSchemeType::Alphabetic if c.is_ascii_alphabetic() => {
                    c.to_ascii_uppercase() - b'A'
                }
                _ => return None,
            };
            index = index.checked_mul(radix)?.checked_add(u128::from(digit))?;
        }
        u64::try_from(index).ok()
    }
}

impl fmt::Display for NamingScheme {
    /// The naming scheme as written, e.g. `VDI-###`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix)?;
        for _ in 0..self.width {
            f.write_str("#")?;
        }
        f.write_str(&self.suffix)
    }
}

/// Checks that `name` is a valid NetBIOS computer name: 1 to 15 characters, ASCII letters,
/// digits and hyphens only, not all digits, and (as a DNS host name) not starting or ending
/// with a hyphen.
pub fn validate_machine_name(name: &str) -> Result<(), NamingError> {
    if name.is_empty() {
        return Err(NamingError::EmptyName);
    }
    let len = name.chars().count();
    if len > MAX_MACHINE_NAME_LEN {
        return Err(NamingError::NameTooLong {
            name: name.to_string(),
            len,
        });
    }
    if let Some((position, character)) = name.chars().enumerate().find(|(_, c)| !is_name_char(*c)) {
        return Err(NamingError::InvalidCharacter {
            name: name.to_string(),
            character,
            position,
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NamingError::HyphenAtEnd {
            name: name.to_string(),
        });
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Err(NamingError::AllDigits {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The longest object name [`k8s_object_name`] produces (a DNS label, so it also fits labels).
const MAX_OBJECT_NAME_LEN: usize = 63;

/// The Kubernetes object name for a machine: the name lowercased, which is a valid RFC 1123
/// subdomain for every valid machine name.
///
/// Any other input is made valid deterministically: characters other than `a-z`, `0-9` and `-`
/// become `-`, leading and trailing hyphens are dropped, and a hyphen plus the first 8 hex
/// digits of the SHA-256 of the original name are appended, so that distinct inputs stay
/// distinct. The result is never empty and at most 63 characters long.
pub fn k8s_object_name(machine_name: &str) -> String {
    let lower = machine_name.to_ascii_lowercase();
    if is_dns_label(&lower) {
        return lower;
    }
    let mapped: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let digest = hex::encode(Sha256::digest(machine_name.as_bytes()));
    let hash = digest.get(..8).unwrap_or(&digest);
    let keep = MAX_OBJECT_NAME_LEN - hash.len() - 1;
    let stem: String = mapped.trim_matches('-').chars().take(keep).collect();
    let stem = stem.trim_end_matches('-');
    if stem.is_empty() {
        hash.to_string()
    } else {
        format!("{stem}-{hash}")
    }
}

/// Whether `s` is a non-empty RFC 1123 label of at most 63 characters.
fn is_dns_label(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= MAX_OBJECT_NAME_LEN
        && s.chars().all(|c| alnum(c) || c == '-')
        && s.starts_with(alnum)
        && s.ends_with(alnum)
}

/// Whether `c` may appear in a NetBIOS computer name.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

/// The number of maximal runs of `#` in `scheme`.
fn count_runs(scheme: &str) -> usize {
    let mut runs = 0;
    let mut in_run = false;
    for c in scheme.chars() {
        if c == PLACEHOLDER {
            if !in_run {
                runs += 1;
            }
            in_run = true;
        } else {
            in_run = false;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(s: &str, t: NamingSchemeType) -> NamingScheme {
        match NamingScheme::parse(s, t) {
            Ok(n) => n,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    #[test]
    fn numeric_names() {
        let n = scheme("VDI-###", NamingSchemeType::Numeric);
        assert_eq!(n.capacity(), 1000);
        assert_eq!(n.name(0).as_deref(), Ok("VDI-000"));
        assert_eq!(n.name(7).as_deref(), Ok("VDI-007"));
        assert_eq!(n.name(999).as_deref(), Ok("VDI-999"));
        assert_eq!(
            n.name(1000),
            Err(NamingError::IdentityPoolExhausted {
                scheme: "VDI-###".into(),
                scheme_type: NamingSchemeType::Numeric,
                index: 1000,
                capacity: 1000
            })
        );
        assert_eq!(n.index_of("VDI-007"), Some(7));
        assert_eq!(n.index_of("vdi-042"), Some(42));
        assert_eq!(n.index_of("VDI-07"), None);
        assert_eq!(n.index_of("VDI-0A7"), None);
        assert_eq!(n.index_of("XDI-007"), None);
        assert_eq!(n.to_string(), "VDI-###");
        let mid = scheme("a##b", NamingSchemeType::Numeric);
        assert_eq!(mid.name(5).as_deref(), Ok("a05b"));
        assert_eq!(mid.index_of("A05B"), Some(5));
    }

    #[test]
    fn alphabetic_names() {
        let n = scheme("###", NamingSchemeType::Alphabetic);
        assert_eq!(n.capacity(), 26 * 26 * 26);
        assert_eq!(n.name(0).as_deref(), Ok("AAA"));
        assert_eq!(n.name(1).as_deref(), Ok("AAB"));
        assert_eq!(n.name(25).as_deref(), Ok("AAZ"));
        assert_eq!(n.name(26).as_deref(), Ok("ABA"));
        assert_eq!(n.name(17575).as_deref(), Ok("ZZZ"));
        assert!(matches!(
            n.name(17576),
            Err(NamingError::IdentityPoolExhausted { .. })
        ));
        assert_eq!(n.index_of("aba"), Some(26));
        let wide = scheme("###############", NamingSchemeType::Alphabetic);
        assert_eq!(wide.capacity(), u64::MAX);
        assert_eq!(wide.name(u64::MAX).map(|s| s.len()), Ok(15));
        assert_eq!(wide.index_of("ZZZZZZZZZZZZZZZ"), None);
    }

    #[test]
    fn scheme_errors() {
        use NamingSchemeType::{Alphabetic, Numeric};
        assert!(matches!(
            NamingScheme::parse("VDI-", Numeric),
            Err(NamingError::NoPlaceholder { .. })
        ));
        assert!(matches!(
            NamingScheme::parse("", Numeric),
            Err(NamingError::NoPlaceholder { .. })
        ));
        assert_eq!(
            NamingScheme::parse("A##-##", Numeric),
            Err(NamingError::MultiplePlaceholders {
                scheme: "A##-##".into(),
                runs: 2
            })
        );
        assert!(matches!(
            NamingScheme::parse("VDI-PRODUCTION-##", Numeric),
            Err(NamingError::NameTooLong { len: 17, .. })
        ));
        assert_eq!(
            NamingScheme::parse("VDI_###", Numeric),
            Err(NamingError::InvalidCharacter {
                name: "VDI_###".into(),
                character: '_',
                position: 3
            })
        );
        assert!(matches!(
            NamingScheme::parse("ÄDI-###", Alphabetic),
            Err(NamingError::InvalidCharacter { position: 0, .. })
        ));
        assert!(matches!(
            NamingScheme::parse("12###", Numeric),
            Err(NamingError::AllDigits { .. })
        ));
        assert!(NamingScheme::parse("12###", Alphabetic).is_ok());
        assert!(matches!(
            NamingScheme::parse("-###", Alphabetic),
            Err(NamingError::HyphenAtEnd { .. })
        ));
        assert!(matches!(
            NamingScheme::parse("###-", Numeric),
            Err(NamingError::HyphenAtEnd { .. })
        ));
        let msg = NamingScheme::parse("VDI_###", Numeric)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("'_'") && msg.contains("letters, digits and hyphens"),
            "{msg}"
        );
    }

    #[test]
    fn machine_name_rules() {
        assert_eq!(validate_machine_name("VDI-001"), Ok(()));
        assert_eq!(validate_machine_name(""), Err(NamingError::EmptyName));
        assert!(matches!(
            validate_machine_name("1234"),
            Err(NamingError::AllDigits { .. })
        ));
        assert!(matches!(
            validate_machine_name("ABCDEFGHIJKLMNOP"),
            Err(NamingError::NameTooLong { len: 16, .. })
        ));
        assert!(matches!(
            validate_machine_name("-ab"),
            Err(NamingError::HyphenAtEnd { .. })
        ));
        assert!(matches!(
            validate_machine_name("a.b"),
            Err(NamingError::InvalidCharacter { character: '.', .. })
        ));
    }

    #[test]
    fn object_names() {
        assert_eq!(k8s_object_name("VDI-007"), "vdi-007");
        let odd = k8s_object_name("-VDI_007.");
        assert!(odd.starts_with("vdi-007-"), "{odd}");
        assert!(is_dns_label(&odd));
        assert_ne!(k8s_object_name("VDI_007"), k8s_object_name("VDI.007"));
        assert!(is_dns_label(&k8s_object_name("")));
        assert!(is_dns_label(&k8s_object_name("ÄÖÜ")));
        assert!(is_dns_label(&k8s_object_name(&"x".repeat(300))));
    }

    #[test]
    fn reasons() {
        let e = NamingError::IdentityPoolExhausted {
            scheme: "VDI-###".into(),
            scheme_type: NamingSchemeType::Numeric,
            index: 1000,
            capacity: 1000,
        };
        assert_eq!(e.reason(), "IdentityPoolExhausted");
        assert_eq!(NamingError::EmptyName.reason(), "MachineNameEmpty");
        let json = serde_json::to_string(&NamingSchemeType::Alphabetic).unwrap_or_default();
        assert_eq!(json, "\"Alphabetic\"");
    }
}
