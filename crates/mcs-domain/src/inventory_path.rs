//! Citrix inventory paths: `XDHyp:\HostingUnits\<hosting unit>\<item>\...\<item>`.
//!
//! The SDK addresses every hypervisor resource (snapshots, networks, service offerings, machine
//! profiles) by an inventory path on the `XDHyp:` drive. This module parses such a path into a
//! hosting unit name and a list of typed items, checks it against the hosting unit it must live
//! in, and prints it back in one canonical form.
//!
//! # Accepted form
//!
//! - the drive `XDHyp:` and the `HostingUnits` segment, both ASCII case-insensitive;
//! - `\` or `/` as separators, mixed freely, with a single trailing separator tolerated;
//! - a hosting unit name, then zero or more items. An item segment `<name>.<kind>` is split at
//!   its **last** dot: `1.0.templatespecversion` is name `1.0`, kind `templatespecversion`. A
//!   segment without a dot is an item with no kind (networks often look like that).
//!
//! # Invariant
//!
//! A parsed [`InventoryPath`] never leaves its hosting unit: `.` and `..` segments are rejected,
//! as are item names `.` and `..` (`...snapshot`), empty segments, separators inside names (they
//! cannot occur, since they split segments) and control characters. A backend may therefore map
//! the hosting unit name and each item name onto a directory or file name below the hosting
//! unit's storage root without further traversal checks.
//!
//! # Error positions
//!
//! Errors quote the offending segment and its position: the 0-based index of the segment in the
//! whole path, where 0 is the drive, 1 is `HostingUnits`, 2 is the hosting unit and 3 is the
//! first item.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Reason;

/// The drive every inventory path starts with, in its canonical spelling.
pub const DRIVE: &str = "XDHyp:";
/// The root folder of the hosting units on the drive, in its canonical spelling.
pub const HOSTING_UNITS: &str = "HostingUnits";
/// The longest accepted path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// The most items (segments below the hosting unit) an accepted path may have.
pub const MAX_DEPTH: usize = 64;

/// Segment index of the drive.
const DRIVE_POS: usize = 0;
/// Segment index of the `HostingUnits` folder.
const ROOT_POS: usize = 1;
/// Segment index of the hosting unit name.
const HOSTING_UNIT_POS: usize = 2;
/// Segment index of the first item.
const FIRST_ITEM_POS: usize = 3;

/// Why an inventory path was rejected or does not fit where it is used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is longer than [`MAX_PATH_BYTES`].
    #[error("inventory path is {len} bytes long; at most {max} bytes are allowed")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The path has more than [`MAX_DEPTH`] items below the hosting unit.
    #[error("inventory path has {depth} items below the hosting unit; at most {max} are allowed")]
    TooDeep {
        /// Number of items in the input.
        depth: usize,
        /// The limit.
        max: usize,
    },
    /// The path does not start with a drive specification.
    #[error(
        "inventory path has no drive specification: segment {position} is {segment:?}; expected `XDHyp:\\HostingUnits\\<hosting unit>\\<item>...`"
    )]
    MissingDrive {
        /// Segment index (always 0).
        position: usize,
        /// The first segment of the input.
        segment: String,
    },
    /// The path starts with a drive other than `XDHyp:`.
    #[error(
        "inventory path is on an unknown drive: segment {position} is {segment:?}, expected the drive `XDHyp:` (`XDHyp:\\HostingUnits\\<hosting unit>\\<item>...`)"
    )]
    UnknownDrive {
        /// Segment index (always 0).
        position: usize,
        /// The drive segment of the input.
        segment: String,
    },
    /// The segment after the drive is missing or is not `HostingUnits`.
    #[error(
        "inventory path is not below `XDHyp:\\HostingUnits`: segment {position} is {segment:?}, expected \"HostingUnits\""
    )]
    MissingHostingUnits {
        /// Segment index (always 1).
        position: usize,
        /// The segment found instead (empty when the path ends after the drive).
        segment: String,
    },
    /// The path ends before naming a hosting unit.
    #[error(
        "inventory path names no hosting unit: segment {position} is missing; expected `XDHyp:\\HostingUnits\\<hosting unit>`"
    )]
    MissingHostingUnit {
        /// Segment index (always 2).
        position: usize,
    },
    /// A segment is empty or consists of whitespace only (e.g. `a\\b`).
    #[error("inventory path has an empty segment at position {position}: {segment:?}")]
    EmptySegment {
        /// Segment index.
        position: usize,
        /// The segment (empty or blank).
        segment: String,
    },
    /// A segment (or an item name) is `.` or `..`.
    #[error(
        "inventory path segment {position} ({segment:?}) is a relative reference; `.` and `..` are not allowed"
    )]
    RelativeSegment {
        /// Segment index.
        position: usize,
        /// The segment.
        segment: String,
    },
    /// A name given on its own (to [`InventoryPath::from_relative`] or [`InventoryItem::parse`])
    /// contains a separator `\` or `/`.
    #[error("inventory path segment {position} ({segment:?}) contains a separator `\\` or `/`")]
    SeparatorInName {
        /// Segment index.
        position: usize,
        /// The name.
        segment: String,
    },
    /// A segment contains NUL or another control character.
    #[error("inventory path segment {position} ({segment:?}) contains a control character")]
    ControlCharacter {
        /// Segment index.
        position: usize,
        /// The segment (the message prints it with escapes).
        segment: String,
    },
    /// An item has an empty name before its dot (e.g. `.snapshot`).
    #[error("inventory path segment {position} ({segment:?}) has an empty name before the dot")]
    EmptyItemName {
        /// Segment index.
        position: usize,
        /// The segment.
        segment: String,
    },
    /// An item has an empty kind after its dot (e.g. `base.`).
    #[error("inventory path segment {position} ({segment:?}) has an empty kind after the dot")]
    EmptyItemKind {
        /// Segment index.
        position: usize,
        /// The segment.
        segment: String,
    },
    /// The path lies in another hosting unit than the one it is used with.
    #[error(
        "inventory path {path:?} is in hosting unit {found:?}, but it must be within hosting unit {expected:?}"
    )]
    HostingUnitMismatch {
        /// The whole path, canonical.
        path: String,
        /// The hosting unit the path had to be in.
        expected: String,
        /// The hosting unit the path is in.
        found: String,
    },
    /// The path's last item is not of the expected kind.
    #[error(
        "inventory path {path:?} must end in a `.{expected}` item, but its last item is {found}"
    )]
    WrongItemKind {
        /// The whole path, canonical.
        path: String,
        /// The expected kind, e.g. `snapshot`.
        expected: String,
        /// What was found: the quoted kind, `an item with no kind` or `the hosting unit itself`.
        found: String,
    },
}

impl Reason for PathError {
    fn reason(&self) -> &'static str {
        match self {
            PathError::TooLong { .. } => "InventoryPathTooLong",
            PathError::TooDeep { .. } => "InventoryPathTooDeep",
            PathError::MissingDrive { .. } => "InventoryPathMissingDrive",
            PathError::UnknownDrive { .. } => "InventoryPathUnknownDrive",
            PathError::MissingHostingUnits { .. } => "InventoryPathNotInHostingUnits",
            PathError::MissingHostingUnit { .. } => "InventoryPathMissingHostingUnit",
            PathError::EmptySegment { .. } => "InventoryPathEmptySegment",
            PathError::RelativeSegment { .. } => "InventoryPathRelativeSegment",
            PathError::SeparatorInName { .. } => "InventoryPathSeparatorInName",
            PathError::ControlCharacter { .. } => "InventoryPathControlCharacter",
            PathError::EmptyItemName { .. } => "InventoryPathEmptyItemName",
            PathError::EmptyItemKind { .. } => "InventoryPathEmptyItemKind",
            PathError::HostingUnitMismatch { .. } => "HostingUnitMismatch",
            PathError::WrongItemKind { .. } => "InventoryPathWrongItemKind",
        }
    }
}

/// One item of an inventory path below the hosting unit, e.g. `base.snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InventoryItem {
    /// The item's name: the segment up to its last dot (or the whole segment if it has none).
    pub name: String,
    /// The item's kind: the text after the last dot, ASCII-lowercased; `None` without a dot.
    pub kind: Option<String>,
}

impl InventoryItem {
    /// Parses one item segment such as `East US.region` or `Network`.
    ///
    /// Errors report position 3, that of the first item of a full path.
    pub fn parse(segment: &str) -> Result<InventoryItem, PathError> {
        parse_item(segment, FIRST_ITEM_POS)
    }

    /// Whether the item's kind equals `kind`, ASCII case-insensitively.
    pub fn is_kind(&self, kind: &str) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.eq_ignore_ascii_case(kind))
    }
}

impl fmt::Display for InventoryItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(kind) => write!(f, "{}.{}", self.name, kind),
            None => f.write_str(&self.name),
        }
    }
}

/// A parsed inventory path: a hosting unit and the items below it.
///
/// Built only by [`InventoryPath::parse`] (or [`InventoryPath::from_relative`]), so every value
/// upholds the module invariant: it cannot leave its hosting unit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InventoryPath {
    hosting_unit: String,
    items: Vec<InventoryItem>,
}

impl InventoryPath {
    /// Parses a full path such as `XDHyp:\HostingUnits\XenHU\base.vm\v1.snapshot`.
    pub fn parse(input: &str) -> Result<InventoryPath, PathError> {
        check_len(input)?;
        let mut segments: Vec<&str> = input.split(is_separator).collect();
        // A single trailing separator is tolerated: `...\vpc.virtualprivatecloud\`.
        if segments.len() > 1 && segments.last().is_some_and(|s| s.is_empty()) {
            segments.pop();
        }

        let drive = segments.first().copied().unwrap_or_default();
        if !drive.eq_ignore_ascii_case(DRIVE) {
            return Err(if drive.contains(':') {
                PathError::UnknownDrive {
                    position: DRIVE_POS,
                    segment: drive.to_string(),
                }
            } else {
                PathError::MissingDrive {
                    position: DRIVE_POS,
                    segment: drive.to_string(),
                }
            });
        }

        match segments.get(ROOT_POS) {
            Some(root) if root.eq_ignore_ascii_case(HOSTING_UNITS) => {}
            Some(root) => {
                return Err(PathError::MissingHostingUnits {
                    position: ROOT_POS,
                    segment: (*root).to_string(),
                });
            }
            None => {
                return Err(PathError::MissingHostingUnits {
                    position: ROOT_POS,
                    segment: String::new(),
                });
            }
        }

        let Some(hosting_unit) = segments.get(HOSTING_UNIT_POS) else {
            return Err(PathError::MissingHostingUnit {
                position: HOSTING_UNIT_POS,
            });
        };
        let items = segments.get(FIRST_ITEM_POS..).unwrap_or_default();
        Self::build(hosting_unit, items)
    }

    /// Builds a path from a hosting unit name and a path relative to it, as the SDK reports
    /// them (`serviceoffering.folder\Standard_B2s.serviceoffering`, or with a leading separator
    /// `/image.folder/rg.resourcegroup/VDA-2305-Snapshot.snapshot`).
    ///
    /// One leading and one trailing separator are tolerated; an empty `relative` names the
    /// hosting unit itself. Error positions are those of the equivalent full path.
    pub fn from_relative(hosting_unit: &str, relative: &str) -> Result<InventoryPath, PathError> {
        if hosting_unit.len().saturating_add(relative.len()) > MAX_PATH_BYTES {
            return Err(PathError::TooLong {
                len: hosting_unit.len().saturating_add(relative.len()),
                max: MAX_PATH_BYTES,
            });
        }
        if hosting_unit.contains(is_separator) {
            return Err(PathError::SeparatorInName {
                position: HOSTING_UNIT_POS,
                segment: hosting_unit.to_string(),
            });
        }
        let rel = relative.strip_prefix(is_separator).unwrap_or(relative);
        let rel = rel.strip_suffix(is_separator).unwrap_or(rel);
        let items: Vec<&str> = if rel.is_empty() {
            Vec::new()
        } else {
            rel.split(is_separator).collect()
        };
        let path = Self::build(hosting_unit, &items)?;
        check_len(&path.to_string())?;
        Ok(path)
    }

    /// Validates the hosting unit and item segments and assembles the path.
    fn build(hosting_unit: &str, items: &[&str]) -> Result<InventoryPath, PathError> {
        if items.len() > MAX_DEPTH {
            return Err(PathError::TooDeep {
                depth: items.len(),
                max: MAX_DEPTH,
            });
        }
        check_segment(hosting_unit, HOSTING_UNIT_POS)?;
        let items = items
            .iter()
            .enumerate()
            .map(|(i, seg)| parse_item(seg, FIRST_ITEM_POS + i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(InventoryPath {
            hosting_unit: hosting_unit.to_string(),
            items,
        })
    }

    /// The hosting unit's name, as written in the path.
    pub fn hosting_unit(&self) -> &str {
        &self.hosting_unit
    }

    /// The items below the hosting unit, outermost first.
    pub fn items(&self) -> &[InventoryItem] {
        &self.items
    }

    /// The last item, or `None` if the path names the hosting unit itself.
    pub fn leaf(&self) -> Option<&InventoryItem> {
        self.items.last()
    }

    /// Ok if the path is inside the named hosting unit (ASCII case-insensitive), else
    /// [`PathError::HostingUnitMismatch`].
    pub fn within(&self, hosting_unit: &str) -> Result<&InventoryPath, PathError> {
        if self.hosting_unit.eq_ignore_ascii_case(hosting_unit) {
            Ok(self)
        } else {
            Err(PathError::HostingUnitMismatch {
                path: self.to_string(),
                expected: hosting_unit.to_string(),
                found: self.hosting_unit.clone(),
            })
        }
    }

    /// Ok(leaf) when the leaf's kind equals `kind` (case-insensitive), else
    /// [`PathError::WrongItemKind`] (also when the path has no items).
    pub fn expect_leaf_kind(&self, kind: &str) -> Result<&InventoryItem, PathError> {
        match self.leaf() {
            Some(leaf) if leaf.is_kind(kind) => Ok(leaf),
            other => Err(PathError::WrongItemKind {
                path: self.to_string(),
                expected: kind.to_ascii_lowercase(),
                found: match other {
                    Some(InventoryItem {
                        kind: Some(found), ..
                    }) => format!("{found:?}"),
                    Some(InventoryItem { kind: None, .. }) => "an item with no kind".to_string(),
                    None => "the hosting unit itself".to_string(),
                },
            }),
        }
    }

    /// The path relative to the hosting unit, joined with `\` (empty for the hosting unit
    /// itself), e.g. `serviceoffering.folder\Standard_B2s.serviceoffering`.
    pub fn relative(&self) -> String {
        let mut out = String::new();
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                out.push('\\');
            }
            out.push_str(&item.to_string());
        }
        out
    }
}

impl fmt::Display for InventoryPath {
    /// The canonical form: `XDHyp:\HostingUnits\<hu>\a.folder\b.vm\base.snapshot`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DRIVE}\\{HOSTING_UNITS}\\{}", self.hosting_unit)?;
        for item in &self.items {
            write!(f, "\\{item}")?;
        }
        Ok(())
    }
}

impl FromStr for InventoryPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InventoryPath::parse(s)
    }
}

impl Serialize for InventoryPath {
    /// Serialized as its canonical string.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InventoryPath {
    /// Deserialized from a string through [`InventoryPath::parse`].
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(deserializer)?;
        InventoryPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for InventoryPath {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "InventoryPath".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A Citrix inventory path: XDHyp:\\HostingUnits\\<hosting unit>\\<item>...",
            "minLength": 1,
            "maxLength": MAX_PATH_BYTES,
        })
    }
}

/// Whether `c` separates segments.
fn is_separator(c: char) -> bool {
    c == '\\' || c == '/'
}

/// Rejects inputs longer than [`MAX_PATH_BYTES`].
fn check_len(input: &str) -> Result<(), PathError> {
    if input.len() > MAX_PATH_BYTES {
        Err(PathError::TooLong {
            len: input.len(),
            max: MAX_PATH_BYTES,
        })
    } else {
        Ok(())
    }
}

/// Checks what every named segment must satisfy: non-blank, no control characters, not `.`/`..`.
fn check_segment(segment: &str, position: usize) -> Result<(), PathError> {
    if segment.trim().is_empty() {
        return Err(PathError::EmptySegment {
            position,
            segment: segment.to_string(),
        });
    }
    if segment.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter {
            position,
            segment: segment.to_string(),
        });
    }
    if is_relative(segment) {
        return Err(PathError::RelativeSegment {
            position,
            segment: segment.to_string(),
        });
    }
    Ok(())
}

/// Whether `s` is a relative reference (`.` or `..`).
fn is_relative(s: &str) -> bool {
    s == "." || s == ".."
}

/// Parses one item segment at `position`.
fn parse_item(segment: &str, position: usize) -> Result<InventoryItem, PathError> {
    if segment.contains(is_separator) {
        // Only reachable through `InventoryItem::parse`; a full path splits there.
        return Err(PathError::SeparatorInName {
            position,
            segment: segment.to_string(),
        });
    }
    check_segment(segment, position)?;
    let Some((name, kind)) = segment.rsplit_once('.') else {
        return Ok(InventoryItem {
            name: segment.to_string(),
            kind: None,
        });
    };
    if name.trim().is_empty() {
        return Err(PathError::EmptyItemName {
            position,
            segment: segment.to_string(),
        });
    }
    if kind.trim().is_empty() {
        return Err(PathError::EmptyItemKind {
            position,
            segment: segment.to_string(),
        });
    }
    if is_relative(name) {
        return Err(PathError::RelativeSegment {
            position,
            segment: segment.to_string(),
        });
    }
    Ok(InventoryItem {
        name: name.to_string(),
        kind: Some(kind.to_ascii_lowercase()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> InventoryPath {
        match InventoryPath::parse(s) {
            Ok(p) => p,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    fn err(s: &str) -> PathError {
        match InventoryPath::parse(s) {
            Ok(p) => panic!("{s:?} should be rejected, parsed as {p:?}"),
            Err(e) => e,
        }
    }

    fn item(name: &str, kind: Option<&str>) -> InventoryItem {
        InventoryItem {
            name: name.to_string(),
            kind: kind.map(str::to_string),
        }
    }

    #[test]
    fn parses_seed_paths() {
        let p = parse(
            r"XDHyp:\HostingUnits\AzureHostingUnit\machineprofile.folder\RG.resourcegroup\TS.templatespec\1.0.templatespecversion",
        );
        assert_eq!(p.hosting_unit(), "AzureHostingUnit");
        assert_eq!(p.items().len(), 4);
        assert_eq!(p.leaf(), Some(&item("1.0", Some("templatespecversion"))));

        let p = parse(
            r"XDHyp:\HostingUnits\AwsHostingUnit\machine-profile-lt (lt-06927522c36bg5698).launchtemplate\lt-06927522c36bg5698 (1).launchtemplateversion",
        );
        assert_eq!(
            p.items()[0],
            item(
                "machine-profile-lt (lt-06927522c36bg5698)",
                Some("launchtemplate")
            )
        );
        assert_eq!(
            p.leaf(),
            Some(&item(
                "lt-06927522c36bg5698 (1)",
                Some("launchtemplateversion")
            ))
        );

        let p = parse(r"XDHyp:\HostingUnits\XenHU\Network");
        assert_eq!(p.leaf(), Some(&item("Network", None)));

        let p = parse(r"XDHyp:\HostingUnits\XenHU");
        assert_eq!(p.hosting_unit(), "XenHU");
        assert!(p.items().is_empty());
        assert_eq!(p.leaf(), None);
        assert_eq!(p.relative(), "");
    }

    #[test]
    fn trailing_separator_is_tolerated_once() {
        let p = parse(
            r"XDHyp:\HostingUnits\azure\virtualprivatecloud.folder\East US.region\virtualprivatecloud.folder\rg.resourcegroup\vpc.virtualprivatecloud\",
        );
        assert_eq!(p.items()[1], item("East US", Some("region")));
        assert_eq!(p.leaf(), Some(&item("vpc", Some("virtualprivatecloud"))));
        assert_eq!(
            err(r"XDHyp:\HostingUnits\azure\a.folder\\"),
            PathError::EmptySegment {
                position: 4,
                segment: String::new()
            }
        );
    }

    #[test]
    fn display_is_canonical_and_relative_uses_backslashes() {
        let p =
            parse("xdhyp:/hostingunits/azure/serviceoffering.folder/Standard_B2s.ServiceOffering/");
        assert_eq!(
            p.to_string(),
            r"XDHyp:\HostingUnits\azure\serviceoffering.folder\Standard_B2s.serviceoffering"
        );
        assert_eq!(
            p.relative(),
            r"serviceoffering.folder\Standard_B2s.serviceoffering"
        );
        assert_eq!(parse(&p.to_string()), p);
        assert_eq!(
            "XDHyp:/HostingUnits\\azure/serviceoffering.folder\\Standard_B2s.serviceoffering"
                .parse::<InventoryPath>(),
            Ok(p)
        );
    }

    #[test]
    fn rejects_missing_or_unknown_drive() {
        assert!(matches!(
            err(r"HostingUnits\hu\a.vm"),
            PathError::MissingDrive { position: 0, .. }
        ));
        assert!(matches!(err(""), PathError::MissingDrive { .. }));
        assert!(matches!(err(r"\hu\a.vm"), PathError::MissingDrive { .. }));
        assert_eq!(
            err(r"C:\HostingUnits\hu"),
            PathError::UnknownDrive {
                position: 0,
                segment: "C:".into()
            }
        );
        assert!(matches!(
            err(r"XDHyp:HostingUnits\hu"),
            PathError::UnknownDrive { .. }
        ));
        let msg = err(r"C:\x").to_string();
        assert!(
            msg.contains("drive specification") || msg.contains("drive"),
            "{msg}"
        );
        assert!(msg.contains("HostingUnit"), "{msg}");
    }

    #[test]
    fn rejects_missing_hosting_units_and_hosting_unit() {
        assert_eq!(
            err(r"XDHyp:\Connections\c"),
            PathError::MissingHostingUnits {
                position: 1,
                segment: "Connections".into()
            }
        );
        assert!(matches!(
            err("XDHyp:"),
            PathError::MissingHostingUnits { .. }
        ));
        assert!(matches!(
            err(r"XDHyp:\"),
            PathError::MissingHostingUnits { .. }
        ));
        assert_eq!(
            err(r"XDHyp:\HostingUnits"),
            PathError::MissingHostingUnit { position: 2 }
        );
        assert_eq!(
            err(r"XDHyp:\HostingUnits\"),
            PathError::MissingHostingUnit { position: 2 }
        );
    }

    #[test]
    fn rejects_bad_segments_with_position() {
        assert_eq!(
            err(r"XDHyp:\HostingUnits\azure\\virtualprivatecloud.folder"),
            PathError::EmptySegment {
                position: 3,
                segment: String::new()
            }
        );
        assert!(matches!(
            err(r"XDHyp:\HostingUnits\hu\   \a.vm"),
            PathError::EmptySegment { position: 3, .. }
        ));
        assert_eq!(
            err(r"XDHyp:\HostingUnits\hu\..\other\a.vm"),
            PathError::RelativeSegment {
                position: 3,
                segment: "..".into()
            }
        );
        assert!(matches!(
            err(r"XDHyp:\HostingUnits\.."),
            PathError::RelativeSegment { position: 2, .. }
        ));
        assert!(matches!(
            err(r"XDHyp:\HostingUnits\hu\a\."),
            PathError::RelativeSegment { position: 4, .. }
        ));
        assert!(matches!(
            err(r"XDHyp:\HostingUnits\hu\...snapshot"),
            PathError::RelativeSegment { position: 3, .. }
        ));
        assert_eq!(
            err("XDHyp:\\HostingUnits\\hu\\a\0b.vm"),
            PathError::ControlCharacter {
                position: 3,
                segment: "a\0b.vm".into()
            }
        );
        assert!(matches!(
            err("XDHyp:\\HostingUnits\\h\tu"),
            PathError::ControlCharacter { position: 2, .. }
        ));
        assert_eq!(
            err(r"XDHyp:\HostingUnits\hu\.snapshot"),
            PathError::EmptyItemName {
                position: 3,
                segment: ".snapshot".into()
            }
        );
        assert_eq!(
            err(r"XDHyp:\HostingUnits\hu\a.folder\base."),
            PathError::EmptyItemKind {
                position: 4,
                segment: "base.".into()
            }
        );
        let msg = err(r"XDHyp:\HostingUnits\hu\a.folder\base.").to_string();
        assert!(msg.contains("\"base.\"") && msg.contains('4'), "{msg}");
        let msg = err("XDHyp:\\HostingUnits\\hu\\a\0b").to_string();
        assert!(msg.contains("\"a\\0b\""), "{msg}");
    }

    #[test]
    fn rejects_too_long_and_too_deep() {
        let deep = format!(r"XDHyp:\HostingUnits\hu{}", r"\a.folder".repeat(MAX_DEPTH));
        assert_eq!(parse(&deep).items().len(), MAX_DEPTH);
        let deeper = format!(r"{deep}\b.vm");
        assert_eq!(
            err(&deeper),
            PathError::TooDeep {
                depth: MAX_DEPTH + 1,
                max: MAX_DEPTH
            }
        );
        let long = format!(r"XDHyp:\HostingUnits\{}", "h".repeat(MAX_PATH_BYTES));
        assert!(matches!(err(&long), PathError::TooLong { .. }));
        let exact = format!(r"XDHyp:\HostingUnits\{}", "h".repeat(MAX_PATH_BYTES - 20));
        assert_eq!(exact.len(), MAX_PATH_BYTES);
        assert!(InventoryPath::parse(&exact).is_ok());
    }

    #[test]
    fn within_and_leaf_kind() {
        let p = parse(
            r"XDHyp:\HostingUnits\DemoHU\image.folder\rg.resourcegroup\VDA-2305-Snapshot.snapshot",
        );
        assert!(p.within("demohu").is_ok());
        assert_eq!(
            p.within("other"),
            Err(PathError::HostingUnitMismatch {
                path: p.to_string(),
                expected: "other".into(),
                found: "DemoHU".into()
            })
        );
        assert_eq!(
            p.expect_leaf_kind("Snapshot").map(|i| i.name.as_str()),
            Ok("VDA-2305-Snapshot")
        );
        let e = p.expect_leaf_kind("vm");
        assert!(
            matches!(e, Err(PathError::WrongItemKind { ref found, .. }) if found == "\"snapshot\"")
        );
        let hu = parse(r"XDHyp:\HostingUnits\DemoHU");
        assert!(matches!(
            hu.expect_leaf_kind("snapshot"),
            Err(PathError::WrongItemKind { ref found, .. }) if found == "the hosting unit itself"
        ));
        let net = parse(r"XDHyp:\HostingUnits\DemoHU\Network");
        assert!(net.expect_leaf_kind("network").is_err());
    }

    #[test]
    fn from_relative_matches_full_parse() {
        let full = parse(r"XDHyp:\HostingUnits\azure\image.folder\rg.resourcegroup\VDA.snapshot");
        assert_eq!(
            InventoryPath::from_relative("azure", "/image.folder/rg.resourcegroup/VDA.snapshot"),
            Ok(full.clone())
        );
        assert_eq!(
            InventoryPath::from_relative("azure", &full.relative()),
            Ok(full)
        );
        assert_eq!(
            InventoryPath::from_relative("azure", ""),
            Ok(parse(r"XDHyp:\HostingUnits\azure"))
        );
        assert!(matches!(
            InventoryPath::from_relative("a/b", "x.vm"),
            Err(PathError::SeparatorInName { position: 2, .. })
        ));
        assert!(matches!(
            InventoryPath::from_relative("hu", r"a\..\b"),
            Err(PathError::RelativeSegment { position: 4, .. })
        ));
    }

    #[test]
    fn item_parse_and_serde() {
        assert_eq!(
            InventoryItem::parse("East US.Region"),
            Ok(item("East US", Some("region")))
        );
        assert!(matches!(
            InventoryItem::parse(r"a\b"),
            Err(PathError::SeparatorInName { .. })
        ));
        let p = parse(r"xdhyp:/HOSTINGUNITS/hu/a.VM");
        let json = serde_json::to_string(&p).unwrap_or_default();
        assert_eq!(json, r#""XDHyp:\\HostingUnits\\hu\\a.vm""#);
        assert_eq!(serde_json::from_str::<InventoryPath>(&json).ok(), Some(p));
        assert!(serde_json::from_str::<InventoryPath>(r#""C:\\x""#).is_err());
    }

    #[test]
    fn reasons_are_upper_camel_case() {
        let errors = [
            err(""),
            err(r"C:\x"),
            err("XDHyp:"),
            err(r"XDHyp:\HostingUnits"),
            err(r"XDHyp:\HostingUnits\hu\\x"),
            err(r"XDHyp:\HostingUnits\hu\.."),
            err("XDHyp:\\HostingUnits\\hu\\\u{7f}"),
            err(r"XDHyp:\HostingUnits\hu\.x"),
            err(r"XDHyp:\HostingUnits\hu\x."),
        ];
        for e in errors {
            let r = e.reason();
            assert!(r.starts_with(|c: char| c.is_ascii_uppercase()), "{r}");
            assert!(r.chars().all(|c| c.is_ascii_alphanumeric()), "{r}");
        }
        assert_eq!(
            parse(r"XDHyp:\HostingUnits\a")
                .within("b")
                .map(|_| ())
                .map_err(|e| e.reason()),
            Err("HostingUnitMismatch")
        );
    }
}
