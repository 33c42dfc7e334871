//! Storage roots of a connection and storages of a hosting unit never share a directory
//! (`check_distinct_directories`): examples and properties.

use mcs_domain::Reason;
use mcs_domain::rules::{NamedDirectory, check_distinct_directories};
use proptest::prelude::*;

const ROOTS: &str = "spec.local.storageRoots";
const STORAGES: &str = "spec.storages";

fn roots(entries: &[(&str, &str)]) -> Vec<NamedDirectory> {
    entries
        .iter()
        .map(|(name, path)| NamedDirectory::new(name, None, path))
        .collect()
}

fn storages(entries: &[(&str, &str, &str)]) -> Vec<NamedDirectory> {
    entries
        .iter()
        .map(|(name, root, path)| NamedDirectory::new(name, Some(root), path))
        .collect()
}

#[test]
fn distinct_roots_pass() {
    let dirs = roots(&[
        ("images", "/data/images"),
        ("fast", "/data/fast"),
        ("x", "/data/images2"),
    ]);
    assert!(check_distinct_directories(ROOTS, &dirs, false).is_empty());
}

#[test]
fn the_same_root_twice_is_a_conflict_naming_both() {
    for (a, b) in [
        ("/data/images", "/data/images"),
        ("/data/images", "/data/images/"),
        ("/data/images", "/data//./images"),
        ("/data/images", "/data/x/../images"),
    ] {
        let errors =
            check_distinct_directories(ROOTS, &roots(&[("images", a), ("fast", b)]), false);
        assert_eq!(errors.len(), 1, "{a} {b}");
        assert_eq!(errors[0].reason(), "StorageDirectoryConflict");
        assert_eq!(errors[0].field(), "spec.local.storageRoots[fast]");
        let msg = errors[0].to_string();
        assert!(
            msg.contains("the same directory as spec.local.storageRoots[images]"),
            "{msg}"
        );
    }
}

#[test]
fn nested_roots_are_a_conflict_either_way_round() {
    let inside =
        check_distinct_directories(ROOTS, &roots(&[("a", "/data"), ("b", "/data/b")]), false);
    assert!(
        inside[0]
            .to_string()
            .contains("\"/data/b\" is inside spec.local.storageRoots[a]")
    );
    let parent =
        check_distinct_directories(ROOTS, &roots(&[("a", "/data/a"), ("b", "/data")]), false);
    assert!(
        parent[0]
            .to_string()
            .contains("is a parent directory of spec.local.storageRoots[a]")
    );
    let root = check_distinct_directories(ROOTS, &roots(&[("a", "/srv"), ("b", "/")]), false);
    assert_eq!(root.len(), 1);
    // Allowed when nesting is.
    assert!(
        check_distinct_directories(ROOTS, &roots(&[("a", "/data"), ("b", "/data/b")]), true)
            .is_empty()
    );
}

#[test]
fn storages_on_one_directory_of_one_root_conflict() {
    let same = storages(&[("primary", "images", ""), ("secondary", "images", ".")]);
    let errors = check_distinct_directories(STORAGES, &same, true);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field(), "spec.storages[secondary]");
    let spelled = storages(&[("primary", "fast", "lab"), ("secondary", "fast", "./lab/")]);
    assert_eq!(
        check_distinct_directories(STORAGES, &spelled, true).len(),
        1
    );
    // The same relative path in two roots is two directories.
    let two_roots = storages(&[("primary", "images", "lab"), ("secondary", "fast", "lab")]);
    assert!(check_distinct_directories(STORAGES, &two_roots, true).is_empty());
    // A root name never collides with a path component.
    let odd = storages(&[("primary", "images", ""), ("secondary", "fast", "images")]);
    assert!(check_distinct_directories(STORAGES, &odd, true).is_empty());
}

proptest! {
    /// Any spelling of one directory (extra slashes, `.` components, `x/..` detours) is the
    /// same directory; a different last component is not.
    #[test]
    fn spellings_of_one_directory_conflict(
        parts in prop::collection::vec("[a-z]{1,6}", 1..5),
        noise in prop::collection::vec(0u8..3, 5),
    ) {
        let plain = format!("/{}", parts.join("/"));
        let mut spelled = String::new();
        for (i, part) in parts.iter().enumerate() {
            match noise[i % noise.len()] {
                0 => spelled.push_str("//"),
                1 => spelled.push_str("/./"),
                _ => spelled.push_str("/zz/../"),
            }
            spelled.push_str(part);
        }
        let errors = check_distinct_directories(ROOTS, &roots(&[("a", &plain), ("b", &spelled)]), true);
        prop_assert_eq!(errors.len(), 1);
        let other = format!("{plain}x");
        prop_assert!(check_distinct_directories(ROOTS, &roots(&[("a", &plain), ("b", &other)]), true).is_empty());
        // `{plain}x` is a sibling, not a child: no nesting either.
        prop_assert!(check_distinct_directories(ROOTS, &roots(&[("a", &plain), ("b", &other)]), false).is_empty());
    }
}
