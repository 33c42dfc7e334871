//! Property test: the controller's version bookkeeping (`scheme_versions::decide` over stored
//! ControllerRevision contents, with the create/prune steps the controller performs) against a
//! plain model of the `Set-ProvScheme` semantics, over random sequences of spec edits, scale
//! and `maxVersions` changes, and machines built from the current version.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use mcs_domain::history::{Decision, content_hash};
use mcs_operator::api::ProvSchemeSpec;
use mcs_operator::controller::scheme_versions::{self, StoredConfiguration};
use proptest::prelude::*;
use serde_json::json;

#[derive(Clone, Debug)]
enum Op {
    /// Set vmCpuCount and the machine profile (configuration).
    Configure { cpu: i32, profile: u8 },
    /// Set machineCount (not configuration).
    Scale(i32),
    /// Set maxVersions (not configuration; may prune).
    MaxVersions(i32),
    /// A machine is built from the current version.
    Build,
    /// The oldest machine goes away.
    Remove,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..4i32, 0..2u8).prop_map(|(cpu, profile)| Op::Configure { cpu, profile }),
        1 => (0..10i32).prop_map(Op::Scale),
        1 => (1..5i32).prop_map(Op::MaxVersions),
        2 => Just(Op::Build),
        1 => Just(Op::Remove),
    ]
}

fn spec(cpu: i32, profile: u8, count: i32, max: i32) -> ProvSchemeSpec {
    serde_json::from_value(json!({
        "imageVersionSpecRef": "img",
        "hostingUnitRef": "lab",
        "identityPoolRef": "pool",
        "networkMapping": {"0": "XDHyp:\\HostingUnits\\lab\\lan.network"},
        "vmCpuCount": cpu,
        "machineProfile": format!("XDHyp:\\HostingUnits\\lab\\p.folder\\{profile}.machineprofile"),
        "machineCount": count,
        "maxVersions": max,
    }))
    .expect("valid spec")
}

/// The model: versions by number with their (cpu, profile), the current one, the highest.
#[derive(Default, Debug)]
struct Model {
    versions: BTreeMap<u32, (i32, u8)>,
    current: Option<u32>,
    highest: u32,
}

impl Model {
    /// Applies a configuration; `false` when the maximum cannot be met (nothing changes).
    fn set(&mut self, config: (i32, u8), max: usize, referenced: &BTreeSet<u32>) -> bool {
        let current = if self.current.and_then(|c| self.versions.get(&c)) == Some(&config) {
            self.current.unwrap_or_default()
        } else if let Some(n) = self
            .versions
            .iter()
            .filter(|(_, c)| **c == config)
            .map(|(n, _)| *n)
            .max()
        {
            n
        } else {
            self.highest + 1
        };
        let mut versions = self.versions.clone();
        versions.insert(current, config);
        while versions.len() > max {
            let Some(oldest) = versions
                .keys()
                .copied()
                .find(|n| *n != current && !referenced.contains(n))
            else {
                return false;
            };
            versions.remove(&oldest);
        }
        self.versions = versions;
        self.highest = self.highest.max(current);
        self.current = Some(current);
        true
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn controller_history_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let (mut cpu, mut profile, mut count, mut max) = (1, 0u8, 0, 3);
        let mut stored: Vec<StoredConfiguration> = Vec::new();
        let mut current: Option<u32> = None;
        let mut highest = 0u32;
        let mut machines: Vec<u32> = Vec::new();
        let mut model = Model::default();
        let mut ever: BTreeSet<u32> = BTreeSet::new();
        let mut clock = 1_800_000_000i64;
        for op in std::iter::once(Op::Scale(0)).chain(ops) {
            match op {
                Op::Configure { cpu: c, profile: p } => { cpu = c; profile = p; }
                Op::Scale(n) => count = n,
                Op::MaxVersions(m) => max = m,
                Op::Build => if let Some(n) = current { machines.push(n) },
                Op::Remove => if !machines.is_empty() { machines.remove(0); },
            }
            let referenced: BTreeSet<u32> = machines.iter().copied().collect();
            let config = scheme_versions::configuration(&spec(cpu, profile, count, max))
                .expect("serializes");
            let accepted = model.set((cpu, profile), usize::try_from(max).unwrap_or(1), &referenced);
            match scheme_versions::decide(&stored, current, highest, &config, max, &referenced) {
                Ok(change) => {
                    prop_assert!(accepted, "the model refused what the controller accepted");
                    if let Decision::New(n) = change.plan.decision() {
                        prop_assert!(!ever.contains(&n), "number {} reused", n);
                        ever.insert(n);
                        clock += 1;
                        stored.push(StoredConfiguration {
                            number: n,
                            hash: content_hash(&config),
                            configuration: config.clone(),
                            api_version: "mcs.imaging.dev/v1alpha1".into(),
                            created: Timestamp::from_second(clock).expect("valid"),
                            changes: Some(change.changes.clone()),
                        });
                    }
                    stored.retain(|s| !change.plan.delete().contains(&s.number));
                    current = Some(change.number());
                    highest = highest.max(change.number());
                }
                Err(_) => prop_assert!(!accepted, "the controller refused what the model accepted"),
            }
            let numbers: BTreeSet<u32> = stored.iter().map(|s| s.number).collect();
            let model_numbers: BTreeSet<u32> = model.versions.keys().copied().collect();
            prop_assert_eq!(&numbers, &model_numbers);
            prop_assert_eq!(current, model.current);
            prop_assert_eq!(highest, model.highest);
            // The current version holds exactly the spec's configuration once accepted.
            if accepted {
                let now = stored.iter().find(|s| Some(s.number) == current).expect("current stored");
                prop_assert_eq!(&now.configuration, &config);
            }
            for n in &referenced {
                if ever.contains(n) {
                    prop_assert!(numbers.contains(n), "referenced version {} pruned", n);
                }
            }
        }
    }
}
