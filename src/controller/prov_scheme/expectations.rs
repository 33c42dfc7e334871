//! What the controller has written but its caches may not show yet (the "expectations" of
//! Kubernetes' ReplicaSet controller).
//!
//! The shared caches follow the API server's watch, so a reconcile that runs right after
//! another one's writes can read a cache without them: the machines just created, the
//! machines just deleted, the revision just made or pruned, the status just written. Acting on
//! such a view would create machines twice, reuse a name, or number a version twice. So every
//! write is remembered here until the cache shows it (or [`TIMEOUT`] passes, when the cache is
//! taken as the truth again), and [`super::read`] lays what is remembered over what is cached.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::api::ProvSchemeStatus;

use super::versions::StoredConfiguration;

/// How long a write is waited for in the caches before they are believed again.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A machine created (or about to be) and not cached yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creation {
    /// The ProvVM object's name.
    pub object: String,
    /// The scheme it belongs to.
    pub scheme: String,
    /// The identity pool its name comes from.
    pub pool: String,
    /// Its index in the identity pool.
    pub index: u64,
}

/// How a cache shows an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not cached.
    Absent,
    /// Cached.
    Present,
    /// Cached with a deletion timestamp.
    Deleting,
}

/// The last status this controller wrote for one scheme.
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenStatus {
    /// The scheme's uid when it was written.
    pub uid: String,
    /// The status as written.
    pub status: ProvSchemeStatus,
    /// When it was written.
    pub at: Instant,
}

/// The writes of one scheme in flight, as [`Expectations::view`] returns them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InFlight {
    /// The scheme's machines created and not cached yet.
    pub creations: Vec<Creation>,
    /// The pool indices of every creation in flight in the namespace for the scheme's pool.
    pub reserved: BTreeSet<u64>,
    /// The scheme's machines deleted whose cached copy has no deletion timestamp yet.
    pub deleting: BTreeSet<String>,
    /// Versions created and not cached yet.
    pub revisions: Vec<StoredConfiguration>,
    /// Versions pruned and still cached.
    pub pruned: BTreeSet<u32>,
    /// The highest version number this controller has recorded for the scheme.
    pub highest: u32,
    /// The last status written, while the cache does not show it yet.
    pub status: Option<WrittenStatus>,
    /// When the status was last written (kept after the cache shows it, to pace progress).
    pub status_written: Option<Instant>,
}

#[derive(Debug, Default)]
struct SchemeWrites {
    revisions: BTreeMap<u32, (StoredConfiguration, Instant)>,
    pruned: BTreeMap<u32, Instant>,
    highest: u32,
    status: Option<WrittenStatus>,
    status_written: Option<Instant>,
}

#[derive(Debug, Default)]
struct NamespaceWrites {
    creations: BTreeMap<String, (Creation, Instant)>,
    deletions: BTreeMap<String, (String, Instant)>,
    schemes: BTreeMap<String, SchemeWrites>,
}

/// The writes in flight of every scheme, by namespace.
#[derive(Debug, Default)]
pub struct Expectations {
    namespaces: Mutex<BTreeMap<String, NamespaceWrites>>,
}

impl Expectations {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, NamespaceWrites>> {
        self.namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves `creation`'s name and index before its create request; `false` when another
    /// creation in flight holds the name already.
    pub fn reserve(&self, namespace: &str, creation: Creation, now: Instant) -> bool {
        let mut namespaces = self.lock();
        let writes = namespaces.entry(namespace.to_owned()).or_default();
        if writes.creations.contains_key(&creation.object) {
            return false;
        }
        writes
            .creations
            .insert(creation.object.clone(), (creation, now));
        true
    }

    /// Forgets the creation of `object` (its create request failed).
    pub fn release(&self, namespace: &str, object: &str) {
        if let Some(writes) = self.lock().get_mut(namespace) {
            writes.creations.remove(object);
        }
    }

    /// Remembers that `objects` of `scheme` were deleted.
    pub fn deleted(&self, namespace: &str, scheme: &str, objects: &[String], now: Instant) {
        let mut namespaces = self.lock();
        let writes = namespaces.entry(namespace.to_owned()).or_default();
        for object in objects {
            writes
                .deletions
                .insert(object.clone(), (scheme.to_owned(), now));
        }
    }

    /// Remembers the version writes of `scheme`: the version created, the versions pruned and
    /// the highest number recorded.
    pub fn versions_written(
        &self,
        namespace: &str,
        scheme: &str,
        created: Option<StoredConfiguration>,
        pruned: &[u32],
        highest: u32,
        now: Instant,
    ) {
        let mut namespaces = self.lock();
        let writes = scheme_writes(&mut namespaces, namespace, scheme);
        if let Some(created) = created {
            writes.revisions.insert(created.number, (created, now));
        }
        for number in pruned {
            writes.revisions.remove(number);
            writes.pruned.insert(*number, now);
        }
        writes.highest = writes.highest.max(highest);
    }

    /// Remembers the status written for `scheme`.
    pub fn status_written(&self, namespace: &str, scheme: &str, written: WrittenStatus) {
        let mut namespaces = self.lock();
        let writes = scheme_writes(&mut namespaces, namespace, scheme);
        writes.status_written = Some(written.at);
        writes.status = Some(written);
    }

    /// Drops what the caches of `namespace` show now, and what waited longer than
    /// [`TIMEOUT`]: `machine` says how a machine is cached, `revision` whether version `n` of
    /// a scheme is, `status` what status a scheme has in the cache (with its uid).
    pub fn settle(
        &self,
        namespace: &str,
        now: Instant,
        machine: impl Fn(&str) -> Seen,
        revision: impl Fn(&str, u32) -> bool,
        status: impl Fn(&str) -> Option<(String, ProvSchemeStatus)>,
    ) {
        let mut namespaces = self.lock();
        let Some(writes) = namespaces.get_mut(namespace) else {
            return;
        };
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < TIMEOUT;
        writes
            .creations
            .retain(|object, (_, at)| fresh(at) && machine(object) == Seen::Absent);
        writes
            .deletions
            .retain(|object, (_, at)| fresh(at) && machine(object) == Seen::Present);
        for (scheme, scheme_writes) in &mut writes.schemes {
            scheme_writes
                .revisions
                .retain(|n, (_, at)| fresh(at) && !revision(scheme, *n));
            scheme_writes
                .pruned
                .retain(|n, at| fresh(at) && revision(scheme, *n));
            if let Some(written) = &scheme_writes.status {
                let cached = status(scheme);
                let shown = cached
                    .as_ref()
                    .is_some_and(|(uid, status)| *uid == written.uid && *status == written.status);
                let replaced = cached.is_some_and(|(uid, _)| uid != written.uid);
                if shown || replaced || !fresh(&written.at) {
                    scheme_writes.status = None;
                }
            }
        }
    }

    /// The writes of `scheme` (using identity pool `pool`) in flight in `namespace`.
    pub fn view(&self, namespace: &str, scheme: &str, pool: &str) -> InFlight {
        let namespaces = self.lock();
        let Some(writes) = namespaces.get(namespace) else {
            return InFlight::default();
        };
        let mut view = InFlight {
            creations: writes
                .creations
                .values()
                .filter(|(c, _)| c.scheme == scheme)
                .map(|(c, _)| c.clone())
                .collect(),
            reserved: writes
                .creations
                .values()
                .filter(|(c, _)| c.pool == pool)
                .map(|(c, _)| c.index)
                .collect(),
            deleting: writes
                .deletions
                .iter()
                .filter(|(_, (s, _))| s == scheme)
                .map(|(object, _)| object.clone())
                .collect(),
            ..InFlight::default()
        };
        if let Some(scheme_writes) = writes.schemes.get(scheme) {
            view.revisions = scheme_writes
                .revisions
                .values()
                .map(|(s, _)| s.clone())
                .collect();
            view.pruned = scheme_writes.pruned.keys().copied().collect();
            view.highest = scheme_writes.highest;
            view.status = scheme_writes.status.clone();
            view.status_written = scheme_writes.status_written;
        }
        view
    }

    /// Forgets everything about `scheme` (it is being deleted) except its machine deletions.
    pub fn forget(&self, namespace: &str, scheme: &str) {
        if let Some(writes) = self.lock().get_mut(namespace) {
            writes.schemes.remove(scheme);
            writes.creations.retain(|_, (c, _)| c.scheme != scheme);
        }
    }
}

/// The writes of `scheme` in `namespace`, made empty when there are none yet.
fn scheme_writes<'a>(
    namespaces: &'a mut BTreeMap<String, NamespaceWrites>,
    namespace: &str,
    scheme: &str,
) -> &'a mut SchemeWrites {
    namespaces
        .entry(namespace.to_owned())
        .or_default()
        .schemes
        .entry(scheme.to_owned())
        .or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creation(object: &str, scheme: &str, index: u64) -> Creation {
        Creation {
            object: object.into(),
            scheme: scheme.into(),
            pool: "pool".into(),
            index,
        }
    }

    #[test]
    fn creations_are_in_flight_until_cached_and_reserve_their_pool_index() {
        let e = Expectations::default();
        let t = Instant::now();
        assert!(e.reserve("ns", creation("vdi-001", "a", 1), t));
        assert!(
            !e.reserve("ns", creation("vdi-001", "b", 1), t),
            "one name once"
        );
        assert!(e.reserve("ns", creation("vdi-002", "b", 2), t));
        let a = e.view("ns", "a", "pool");
        assert_eq!(a.creations, [creation("vdi-001", "a", 1)]);
        assert_eq!(a.reserved, BTreeSet::from([1, 2]), "both schemes' indices");
        assert!(e.view("ns", "a", "other").reserved.is_empty());
        assert!(e.view("other", "a", "pool").creations.is_empty());
        let cached = |o: &str| {
            if o == "vdi-001" {
                Seen::Present
            } else {
                Seen::Absent
            }
        };
        e.settle("ns", t, cached, |_, _| false, |_| None);
        assert!(e.view("ns", "a", "pool").creations.is_empty());
        assert_eq!(e.view("ns", "b", "pool").reserved, BTreeSet::from([2]));
        e.settle("ns", t + TIMEOUT, |_| Seen::Absent, |_, _| false, |_| None);
        assert!(e.view("ns", "b", "pool").reserved.is_empty(), "timed out");
        assert!(e.reserve("ns", creation("vdi-003", "b", 3), t));
        e.release("ns", "vdi-003");
        assert!(e.view("ns", "b", "pool").creations.is_empty());
    }

    #[test]
    fn deletions_wait_for_the_deletion_timestamp_or_the_object_to_go() {
        let e = Expectations::default();
        let t = Instant::now();
        e.deleted("ns", "a", &["vdi-001".into(), "vdi-002".into()], t);
        e.settle(
            "ns",
            t,
            |o| match o {
                "vdi-001" => Seen::Deleting,
                _ => Seen::Present,
            },
            |_, _| false,
            |_| None,
        );
        assert_eq!(
            e.view("ns", "a", "pool").deleting,
            BTreeSet::from(["vdi-002".to_owned()])
        );
        e.settle("ns", t, |_| Seen::Absent, |_, _| false, |_| None);
        assert!(e.view("ns", "a", "pool").deleting.is_empty());
    }

    #[test]
    fn versions_and_status_wait_for_the_caches() {
        let e = Expectations::default();
        let t = Instant::now();
        let v3 = StoredConfiguration {
            number: 3,
            hash: "h".into(),
            configuration: serde_json::json!({}),
            api_version: "v".into(),
            created: jiff::Timestamp::UNIX_EPOCH,
            changes: None,
        };
        e.versions_written("ns", "a", Some(v3.clone()), &[1], 3, t);
        let status = ProvSchemeStatus {
            highest_version: Some(3),
            ..Default::default()
        };
        e.status_written(
            "ns",
            "a",
            WrittenStatus {
                uid: "u".into(),
                status: status.clone(),
                at: t,
            },
        );
        let view = e.view("ns", "a", "pool");
        assert_eq!(view.revisions, [v3]);
        assert_eq!(view.pruned, BTreeSet::from([1]));
        assert_eq!(view.highest, 3);
        assert!(view.status.is_some());
        let stale = |_: &str| Some(("u".to_owned(), ProvSchemeStatus::default()));
        e.settle("ns", t, |_| Seen::Absent, |_, n| n == 1, stale);
        assert_eq!(e.view("ns", "a", "pool").pruned, BTreeSet::from([1]));
        assert!(e.view("ns", "a", "pool").status.is_some(), "cache is stale");
        let shown = |_: &str| Some(("u".to_owned(), status.clone()));
        e.settle("ns", t, |_| Seen::Absent, |_, n| n == 3, shown);
        let view = e.view("ns", "a", "pool");
        assert!(view.revisions.is_empty() && view.pruned.is_empty());
        assert!(view.status.is_none());
        assert_eq!(view.status_written, Some(t), "still paces progress");
        assert_eq!(view.highest, 3, "the highest number is never forgotten");
        e.forget("ns", "a");
        assert_eq!(e.view("ns", "a", "pool"), InFlight::default());
    }
}
