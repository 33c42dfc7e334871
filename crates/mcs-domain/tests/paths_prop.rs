//! Property tests for the inventory path parser.

use mcs_domain::inventory_path::{InventoryItem, InventoryPath, MAX_DEPTH};
use proptest::prelude::*;

/// A name that may carry dots (only used together with a kind).
const DOTTED_NAME: &str = "[A-Za-z0-9é][A-Za-z0-9 _().é-]{0,15}";
/// A name without dots (used for items without a kind, and hosting units).
const PLAIN_NAME: &str = "[A-Za-z0-9é][A-Za-z0-9 _()é-]{0,15}";

fn item() -> impl Strategy<Value = InventoryItem> {
    prop_oneof![
        (DOTTED_NAME, "[a-z]{1,20}").prop_map(|(name, kind)| InventoryItem {
            name,
            kind: Some(kind)
        }),
        PLAIN_NAME.prop_map(|name| InventoryItem { name, kind: None }),
    ]
}

fn parts() -> impl Strategy<Value = (String, Vec<InventoryItem>)> {
    (DOTTED_NAME, prop::collection::vec(item(), 0..8))
}

fn separator() -> impl Strategy<Value = char> {
    prop_oneof![Just('\\'), Just('/')]
}

fn case_variant(s: &str, upper: &[bool]) -> String {
    s.chars()
        .zip(upper.iter().copied().chain(std::iter::repeat(false)))
        .map(|(c, u)| {
            if u {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Writes a path from parts with the given separators and spelling.
fn write_path(
    hu: &str,
    items: &[InventoryItem],
    seps: &[char],
    drive: &str,
    root: &str,
    trailing: bool,
) -> String {
    let mut sep = seps.iter().copied().cycle();
    let mut out = String::from(drive);
    for seg in [root.to_string(), hu.to_string()]
        .into_iter()
        .chain(items.iter().map(|i| match &i.kind {
            Some(k) => format!("{}.{}", i.name, k.to_ascii_uppercase()),
            None => i.name.clone(),
        }))
    {
        out.push(sep.next().unwrap_or('\\'));
        out.push_str(&seg);
    }
    if trailing {
        out.push(sep.next().unwrap_or('\\'));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_paths_parse_and_round_trip(
        (hu, items) in parts(),
        seps in prop::collection::vec(separator(), 1..16),
        drive_case in prop::collection::vec(any::<bool>(), 6),
        root_case in prop::collection::vec(any::<bool>(), 12),
        trailing in any::<bool>(),
    ) {
        let text = write_path(
            &hu,
            &items,
            &seps,
            &case_variant("XDHyp:", &drive_case),
            &case_variant("HostingUnits", &root_case),
            trailing,
        );
        let p = InventoryPath::parse(&text);
        prop_assert!(p.is_ok(), "{:?}: {:?}", text, p);
        let p = p.unwrap_or_else(|_| unreachable!());
        prop_assert_eq!(p.hosting_unit(), hu.as_str());
        prop_assert_eq!(p.items(), items.as_slice());
        let again = InventoryPath::parse(&p.to_string());
        prop_assert_eq!(again.as_ref(), Ok(&p));
        prop_assert_eq!(InventoryPath::from_relative(&hu, &p.relative()), Ok(p.clone()));
        prop_assert!(p.within(&hu.to_ascii_uppercase()).is_ok());
    }

    #[test]
    fn any_string_never_panics(s in any::<String>()) {
        let _ = InventoryPath::parse(&s);
        let _ = InventoryPath::from_relative(&s, &s);
        let _ = InventoryItem::parse(&s);
    }

    #[test]
    fn path_like_strings_never_panic_and_accepted_ones_are_safe(
        tail in "[\\\\/a-zA-Z .:\u{0}\u{7}é]{0,60}",
        prefix in prop_oneof![
            Just(""), Just("XDHyp:"), Just("xdhyp:\\HostingUnits"), Just("XDHYP:/hostingunits/"),
            Just("XDHyp:\\HostingUnits\\hu\\"),
        ],
    ) {
        let s = format!("{prefix}{tail}");
        if let Ok(p) = InventoryPath::parse(&s) {
            prop_assert!(!p.hosting_unit().trim().is_empty());
            prop_assert!(p.hosting_unit() != "." && p.hosting_unit() != "..");
            prop_assert!(p.items().len() <= MAX_DEPTH);
            for i in p.items() {
                prop_assert!(!i.name.trim().is_empty());
                prop_assert!(i.name != "." && i.name != "..");
                prop_assert!(!i.name.contains(['\\', '/']));
                prop_assert!(!i.name.chars().any(char::is_control));
                prop_assert!(i.kind.as_deref().is_none_or(|k| !k.trim().is_empty()));
            }
            let canonical = p.to_string();
            prop_assert!(!canonical.contains("\\..\\") && !canonical.ends_with("\\.."));
            prop_assert_eq!(InventoryPath::parse(&canonical), Ok(p));
        }
    }

    #[test]
    fn separators_and_drive_case_do_not_matter(
        tail in "[\\\\/a-zA-Z .:\u{0}]{0,60}",
        drive_case in prop::collection::vec(any::<bool>(), 6),
        root_case in prop::collection::vec(any::<bool>(), 12),
    ) {
        let base = format!("XDHyp:\\HostingUnits\\{tail}");
        let other = format!(
            "{}/{}/{}",
            case_variant("XDHyp:", &drive_case),
            case_variant("HostingUnits", &root_case),
            tail.replace('\\', "/"),
        );
        prop_assert_eq!(InventoryPath::parse(&base), InventoryPath::parse(&other));
        let all_back = base.replace('/', "\\");
        prop_assert_eq!(InventoryPath::parse(&base), InventoryPath::parse(&all_back));
    }
}
