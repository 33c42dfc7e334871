//! Property tests for identity pool naming schemes.

use mcs_domain::naming::{
    NamingError, NamingScheme, NamingSchemeType, k8s_object_name, validate_machine_name,
};
use proptest::prelude::*;

fn scheme_type() -> impl Strategy<Value = NamingSchemeType> {
    prop_oneof![
        Just(NamingSchemeType::Numeric),
        Just(NamingSchemeType::Alphabetic)
    ]
}

/// A valid scheme: a prefix starting with a letter, a run of 1..=6, a suffix that does not
/// end with a hyphen.
fn scheme() -> impl Strategy<Value = (String, NamingSchemeType)> {
    (
        "[A-Za-z][A-Za-z0-9-]{0,4}",
        "([A-Za-z0-9-]{0,2}[A-Za-z0-9])?",
        1usize..=6,
        scheme_type(),
    )
        .prop_map(|(prefix, suffix, width, t)| {
            (format!("{prefix}{}{suffix}", "#".repeat(width)), t)
        })
}

fn parsed((s, t): (String, NamingSchemeType)) -> NamingScheme {
    NamingScheme::parse(&s, t).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn names_round_trip_and_are_distinct(
        s in scheme(),
        a in any::<u64>(),
        b in any::<u64>(),
    ) {
        let n = parsed(s);
        let cap = n.capacity();
        prop_assert!(cap > 0);
        let (a, b) = (a % cap, b % cap);
        let na = n.name(a);
        let nb = n.name(b);
        prop_assert!(na.is_ok() && nb.is_ok(), "{:?} {:?}", na, nb);
        let (na, nb) = (na.unwrap_or_default(), nb.unwrap_or_default());
        prop_assert_eq!(validate_machine_name(&na), Ok(()));
        prop_assert_eq!(n.index_of(&na), Some(a));
        prop_assert_eq!(n.index_of(&na.to_ascii_lowercase()), Some(a));
        prop_assert_eq!(a == b, na == nb);
        prop_assert_eq!(a == b, k8s_object_name(&na) == k8s_object_name(&nb));
        prop_assert_eq!(k8s_object_name(&na), na.to_ascii_lowercase());
        // Names keep the order of their indices.
        prop_assert_eq!(a.cmp(&b), na.cmp(&nb));
    }

    #[test]
    fn first_and_last_index_and_beyond(s in scheme(), beyond in any::<u64>()) {
        let n = parsed(s);
        let cap = n.capacity();
        prop_assert!(n.name(0).is_ok());
        prop_assert!(n.name(cap - 1).is_ok());
        let beyond = cap.saturating_add(beyond % 1000);
        if beyond >= cap {
            let is_exhausted = matches!(
                n.name(beyond),
                Err(NamingError::IdentityPoolExhausted { .. })
            );
            prop_assert!(is_exhausted);
        }
    }

    #[test]
    fn any_input_never_panics(s in any::<String>(), t in scheme_type(), i in any::<u64>()) {
        if let Ok(n) = NamingScheme::parse(&s, t) {
            if let Ok(name) = n.name(i) {
                prop_assert_eq!(validate_machine_name(&name), Ok(()));
                prop_assert_eq!(n.index_of(&name), Some(i));
            }
            let _ = n.index_of(&s);
        }
        let _ = validate_machine_name(&s);
        let obj = k8s_object_name(&s);
        prop_assert!(!obj.is_empty() && obj.len() <= 63);
        prop_assert!(obj.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        prop_assert!(!obj.starts_with('-') && !obj.ends_with('-'));
    }

    #[test]
    fn scheme_like_inputs_never_panic(s in "[A-Za-z0-9#_. -]{0,20}", t in scheme_type(), i in 0u64..100_000) {
        if let Ok(n) = NamingScheme::parse(&s, t) {
            prop_assert_eq!(n.to_string(), s);
            match n.name(i) {
                Ok(name) => prop_assert_eq!(n.index_of(&name), Some(i)),
                Err(e) => {
                    let is_exhausted = matches!(e, NamingError::IdentityPoolExhausted { .. });
                    prop_assert!(is_exhausted);
                }
            }
        }
    }
}
