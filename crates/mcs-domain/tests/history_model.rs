//! Property tests of the provisioning scheme version history against a simple model.
//!
//! Random sequences of operations (change the configuration to one of K configurations, revert
//! to an earlier one, change `maxVersions`, mark or unmark a version as referenced by a
//! machine) are run against [`History`] and a straightforward reference model; after every
//! step the invariants of the Set-ProvScheme semantics are checked.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use mcs_domain::Reason;
use mcs_domain::history::{Decision, History, HistoryError, canonical_json, content_hash};
use proptest::prelude::*;
use serde_json::{Value, json};

/// How many distinct configurations the operations choose from.
const K: u32 = 5;

/// One step of a random scenario.
#[derive(Clone, Debug)]
enum Op {
    /// Change the configuration to configuration `k`.
    Change(u32),
    /// Revert to the `i`-th (modulo) configuration that was successfully applied before.
    RevertEarlier(usize),
    /// Set `maxVersions`.
    SetMax(u32),
    /// Mark the `i`-th (modulo) stored version as referenced by a machine.
    Mark(usize),
    /// Unmark the `i`-th (modulo) referenced version.
    Unmark(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..K).prop_map(Op::Change),
        2 => any::<usize>().prop_map(Op::RevertEarlier),
        1 => (1u32..=6).prop_map(Op::SetMax),
        2 => any::<usize>().prop_map(Op::Mark),
        1 => any::<usize>().prop_map(Op::Unmark),
    ]
}

fn config(k: u32) -> Value {
    json!({ "vmCpuCount": k, "networkMapping": { "0": "XDHyp:\\HostingUnits\\hu\\n.network" } })
}

/// The reference model: the obvious bookkeeping, written independently of `History`.
#[derive(Clone, Debug, Default)]
struct Model {
    /// Stored versions: number -> hash.
    stored: BTreeMap<u32, String>,
    current: Option<u32>,
    highest: u32,
}

/// What the model expects from planning `hash`.
enum Expect {
    Ok {
        decision: Decision,
        delete: Vec<u32>,
    },
    Exceeded,
}

impl Model {
    fn expect(&self, hash: &str, max: u32, referenced: &BTreeSet<u32>) -> Expect {
        let decision = match self.current {
            Some(c) if self.stored.get(&c).map(String::as_str) == Some(hash) => {
                Decision::Unchanged(c)
            }
            _ => match self.stored.iter().find(|(_, h)| h.as_str() == hash) {
                Some((n, _)) => Decision::Revert(*n),
                None => Decision::New(self.highest + 1),
            },
        };
        let mut after: Vec<u32> = self.stored.keys().copied().collect();
        if let Decision::New(n) = decision {
            after.push(n);
        }
        let cur = decision.number();
        let excess = after.len().saturating_sub(max as usize);
        let prunable: Vec<u32> = after
            .iter()
            .copied()
            .filter(|n| *n != cur && !referenced.contains(n))
            .collect();
        if prunable.len() < excess {
            Expect::Exceeded
        } else {
            Expect::Ok {
                decision,
                delete: prunable[..excess].to_vec(),
            }
        }
    }

    fn apply(&mut self, hash: &str, decision: Decision, delete: &[u32]) {
        if let Decision::New(n) = decision {
            self.stored.insert(n, hash.to_owned());
            self.highest = n;
        }
        self.current = Some(decision.number());
        for n in delete {
            self.stored.remove(n);
        }
    }
}

/// Runs one scenario, checking the invariants after every step.
fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut history = History::default();
    let mut model = Model::default();
    let mut max = 99u32;
    let mut referenced = BTreeSet::new();
    let mut desired: Option<String> = None;
    let mut applied_configs: Vec<String> = Vec::new();
    let mut ever_assigned: BTreeSet<u32> = BTreeSet::new();
    let mut clock = 0i64;

    for op in ops {
        match op {
            Op::Change(k) => desired = Some(content_hash(&config(*k))),
            Op::RevertEarlier(i) => {
                if !applied_configs.is_empty() {
                    desired = Some(applied_configs[i % applied_configs.len()].clone());
                }
            }
            Op::SetMax(m) => max = *m,
            Op::Mark(i) => {
                let stored: Vec<u32> = history.versions.iter().map(|v| v.number).collect();
                if !stored.is_empty() {
                    referenced.insert(stored[i % stored.len()]);
                }
            }
            Op::Unmark(i) => {
                let refs: Vec<u32> = referenced.iter().copied().collect();
                if !refs.is_empty() {
                    referenced.remove(&refs[i % refs.len()]);
                }
            }
        }
        let Some(hash) = desired.clone() else {
            continue;
        };

        // decide is deterministic and agrees with plan.
        let d1 = history.decide(&hash);
        let d2 = history.clone().decide(&hash);
        prop_assert_eq!(d1, d2);

        // A config stored before must give back its old number.
        let stored_before: Option<u32> = history
            .versions
            .iter()
            .find(|v| v.hash == hash)
            .map(|v| v.number);
        if let Some(n) = stored_before {
            prop_assert_eq!(d1.number(), n, "revert must yield the old number");
        }

        let before = history.clone();
        let result = history.plan(&hash, max, &referenced);
        prop_assert_eq!(&history, &before, "planning must not change the history");
        let expected = model.expect(&hash, max, &referenced);

        let planned_ok = result.is_ok();
        match (result, expected) {
            (Err(e), Expect::Exceeded) => {
                let exceeded = matches!(
                    e,
                    HistoryError::ProvisioningSchemeVersionMaximumExceeded { .. }
                );
                prop_assert!(exceeded, "unexpected error {}", e);
                prop_assert_eq!(e.reason(), "ProvisioningSchemeVersionMaximumExceeded");
                prop_assert_eq!(&history, &before, "state must be unchanged on error");
            }
            (Ok(plan), Expect::Ok { decision, delete }) => {
                prop_assert_eq!(plan.decision(), d1);
                prop_assert_eq!(plan.decision(), decision);
                prop_assert_eq!(plan.delete(), delete.as_slice());
                let again = before.plan(&hash, max, &referenced);
                prop_assert_eq!(again.as_ref().ok(), Some(&plan), "plan is deterministic");

                if let Decision::New(n) = decision {
                    prop_assert!(
                        ever_assigned.iter().all(|m| *m < n),
                        "numbers strictly increase"
                    );
                    prop_assert!(ever_assigned.insert(n), "numbers are never reused");
                }
                for n in plan.delete() {
                    prop_assert!(!referenced.contains(n), "referenced version {} pruned", n);
                    prop_assert_ne!(*n, decision.number(), "current version pruned");
                }

                clock += 1;
                let now = Timestamp::from_second(clock).unwrap_or(Timestamp::UNIX_EPOCH);
                prop_assert_eq!(history.apply(&plan, now), Ok(()));
                model.apply(&hash, decision, &delete);
                if !applied_configs.contains(&hash) {
                    applied_configs.push(hash.clone());
                }

                // Applying the same plan again is rejected (or, for a no-op plan, harmless)
                // and changes nothing.
                let after = history.clone();
                prop_assert_eq!(history.apply(&plan, now).is_err(), !plan.is_noop());
                prop_assert_eq!(&history, &after);
            }
            (Ok(plan), Expect::Exceeded) => {
                prop_assert!(false, "expected MaximumExceeded, got {:?}", plan);
            }
            (Err(e), Expect::Ok { .. }) => {
                prop_assert!(false, "unexpected error {}", e);
            }
        }

        // Invariants of the state, every step.
        let numbers: Vec<u32> = history.versions.iter().map(|v| v.number).collect();
        prop_assert!(numbers.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        if let Some(c) = history.current {
            prop_assert!(numbers.contains(&c), "current version {} not stored", c);
            prop_assert_eq!(
                history.current_version().map(|v| v.hash.as_str()),
                model.stored.get(&c).map(String::as_str)
            );
        }
        prop_assert!(numbers.iter().all(|n| *n <= history.highest_ever));
        prop_assert_eq!(history.highest_ever, model.highest);
        prop_assert_eq!(history.current, model.current);
        prop_assert_eq!(numbers, model.stored.keys().copied().collect::<Vec<_>>());
        for r in &referenced {
            prop_assert!(
                history.versions.iter().any(|v| v.number == *r),
                "referenced version {} was pruned",
                r
            );
        }
        if planned_ok {
            prop_assert!(
                history.versions.len() <= max as usize,
                "more than maxVersions kept"
            );
        } else {
            prop_assert_eq!(&history, &before, "state must be unchanged on error");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn history_follows_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }

    #[test]
    fn hash_ignores_key_order_whitespace_and_null_members(
        fields in proptest::collection::btree_map("[a-zA-Z0-9._]{1,8}", any::<i64>(), 0..8),
        nulls in proptest::collection::btree_set("[n-z]{1,4}", 0..4),
    ) {
        let sorted: Value = fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>().into();
        // The same members written in reverse order, with whitespace and extra null members.
        let mut text = String::from("{ ");
        let mut first = true;
        for (k, v) in fields.iter().rev() {
            if !first { text.push_str(" ,\n "); }
            first = false;
            text.push_str(&format!("{} : {}", json!(k), v));
        }
        for k in nulls.iter().filter(|k| !fields.contains_key(*k)) {
            if !first { text.push_str(", "); }
            first = false;
            text.push_str(&format!("{}: null", json!(k)));
        }
        text.push_str(" }");
        let parsed: Value = serde_json::from_str(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(content_hash(&parsed), content_hash(&sorted));
        // The canonical text parses back to the same value.
        let reparsed: Value = serde_json::from_str(&canonical_json(&sorted)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(reparsed, sorted);
    }
}
