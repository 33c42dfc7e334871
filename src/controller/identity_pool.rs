//! The IdentityPool controller: checks the naming scheme and reports the next index, the
//! identities in use and the capacity.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use mcs_domain::Reason;
use mcs_domain::naming::{NamingError, NamingScheme};

use super::conditions::{DesiredCondition, merge};
use super::events::publish;
use super::status::{apply_status, field_manager};
use super::{Context, ControllerError, requeue_after_error, watcher_config};
use crate::api::{
    IdentityPool, IdentityPoolSpec, IdentityPoolStatus, ProvScheme, ProvVm, condition_type,
};

const CONTROLLER: &str = "identitypool";

/// What the pool's status should say, decided from the spec and the indices machines hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolDecision {
    /// The index the next machine gets: past the start count and every index in use.
    pub next_index: u64,
    /// Identities in use.
    pub in_use: u64,
    /// How many identities the naming scheme can hold.
    pub capacity: u64,
}

/// Decides the pool's counters; fails when the naming scheme is invalid.
pub fn decide(
    spec: &IdentityPoolSpec,
    indices_in_use: &BTreeSet<u64>,
) -> Result<PoolDecision, NamingError> {
    let scheme = NamingScheme::parse(&spec.naming_scheme, spec.naming_scheme_type)?;
    let start = u64::try_from(spec.start_count).unwrap_or(0);
    let next_index = indices_in_use
        .last()
        .map_or(start, |last| (last + 1).max(start));
    Ok(PoolDecision {
        next_index,
        in_use: indices_in_use.len() as u64,
        capacity: scheme.capacity(),
    })
}

async fn reconcile(
    pool: Arc<IdentityPool>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let namespace = pool.namespace().ok_or(ControllerError::MissingMetadata {
        kind: "IdentityPool",
        field: "namespace",
    })?;
    let schemes = context
        .api::<ProvScheme>(&namespace)
        .list(&Default::default())
        .await?;
    let users: BTreeSet<String> = schemes
        .items
        .iter()
        .filter(|s| s.spec.identity_pool_ref == pool.name_any())
        .map(ResourceExt::name_any)
        .collect();
    let machines = context
        .api::<ProvVm>(&namespace)
        .list(&Default::default())
        .await?;
    let indices: BTreeSet<u64> = machines
        .items
        .iter()
        .filter(|m| users.contains(&m.spec.prov_scheme_ref))
        .filter_map(|m| u64::try_from(m.spec.machine_index).ok())
        .collect();

    let current = pool.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let (status, problem) = match decide(&pool.spec, &indices) {
        Ok(decision) => {
            let exhausted = decision.next_index >= decision.capacity;
            let ready = if exhausted {
                let start = u64::try_from(pool.spec.start_count).unwrap_or_default();
                let cause = if start >= decision.capacity {
                    format!(
                        "; spec.startCount {start} is past the last of them (at most {})",
                        decision.capacity.saturating_sub(1)
                    )
                } else {
                    String::new()
                };
                DesiredCondition::false_(
                    condition_type::READY,
                    "IdentityPoolExhausted",
                    format!(
                        "spec.namingScheme {} holds {} identities and all are used{cause}",
                        pool.spec.naming_scheme, decision.capacity
                    ),
                )
            } else {
                DesiredCondition::true_(
                    condition_type::READY,
                    "Available",
                    format!(
                        "{} of {} identities in use",
                        decision.in_use, decision.capacity
                    ),
                )
            };
            let status = IdentityPoolStatus {
                observed_generation: pool.metadata.generation,
                next_index: i64::try_from(decision.next_index).ok(),
                accounts_in_use: i64::try_from(decision.in_use).ok(),
                capacity: i64::try_from(decision.capacity).ok(),
                conditions: merge(&current.conditions, &[ready], pool.metadata.generation, now),
            };
            (status, None)
        }
        Err(error) => {
            let ready = DesiredCondition::false_(
                condition_type::READY,
                error.reason(),
                format!("spec.namingScheme: {error}"),
            );
            let status = IdentityPoolStatus {
                observed_generation: pool.metadata.generation,
                conditions: merge(&current.conditions, &[ready], pool.metadata.generation, now),
                ..current.clone()
            };
            (status, Some(error))
        }
    };
    let api = context.api::<IdentityPool>(&namespace);
    apply_status(&api, &pool, &field_manager(CONTROLLER), &status).await?;
    let ready_of = |s: &IdentityPoolStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition_type::READY)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = ready_of(&status)
        && reason == "IdentityPoolExhausted"
        && ready_of(&current).is_none_or(|(_, was)| was != message)
    {
        publish(
            &context,
            pool.as_ref(),
            EventType::Warning,
            &reason,
            "Validate",
            message,
        )
        .await;
    }
    if let Some(error) = problem {
        let note = format!("spec.namingScheme: {error}");
        publish(
            &context,
            pool.as_ref(),
            EventType::Warning,
            error.reason(),
            "Validate",
            note,
        )
        .await;
    }
    Ok(Action::requeue(context.config.resync))
}

fn error_policy(
    _pool: Arc<IdentityPool>,
    error: &ControllerError,
    _context: Arc<Context>,
) -> Action {
    requeue_after_error(CONTROLLER, error)
}

/// Runs the IdentityPool controller until the stream ends.
pub async fn run(context: Arc<Context>) {
    let pools = context.watched_api::<IdentityPool>();
    let schemes = context.watched_api::<ProvScheme>();
    // Machines come and go without their scheme changing (a scale-down's last deletions land
    // after the scheme's status): every machine event recounts the pools of its namespace,
    // debounced, or `accountsInUse` stayed stale until the resync.
    let controller = Controller::new(pools, watcher_config())
        .trigger_backoff(super::trigger_backoff())
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(std::time::Duration::from_millis(500)),
        );
    let store = controller.store();
    context.caches.track(CONTROLLER, store.clone());
    controller
        .watches(schemes, watcher_config(), |scheme: ProvScheme| {
            scheme.namespace().map(|ns| {
                ObjectRef::<IdentityPool>::new(&scheme.spec.identity_pool_ref).within(&ns)
            })
        })
        .watches(
            context.watched_api::<ProvVm>(),
            watcher_config(),
            move |machine: ProvVm| {
                let namespace = machine.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(move |pool| pool.namespace() == namespace)
                    .map(|pool| ObjectRef::from_obj(pool.as_ref()))
            },
        )
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                super::log_run_error(CONTROLLER, &error);
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IdentityType, NamingSchemeType};

    fn spec(naming: &str, start: i64) -> IdentityPoolSpec {
        IdentityPoolSpec {
            naming_scheme: naming.into(),
            naming_scheme_type: NamingSchemeType::Numeric,
            start_count: start,
            identity_type: IdentityType::Workgroup,
            domain: None,
            ou: None,
        }
    }

    #[test]
    fn next_index_is_past_the_start_and_every_index_in_use() {
        let none = decide(&spec("VDI-###", 1), &BTreeSet::new()).expect("valid");
        assert_eq!(
            none,
            PoolDecision {
                next_index: 1,
                in_use: 0,
                capacity: 1000
            }
        );
        let used = decide(&spec("VDI-###", 1), &BTreeSet::from([1, 2, 7])).expect("valid");
        assert_eq!(used.next_index, 8);
        assert_eq!(used.in_use, 3);
        let below_start = decide(&spec("VDI-###", 50), &BTreeSet::from([3])).expect("valid");
        assert_eq!(below_start.next_index, 50);
    }

    #[test]
    fn an_invalid_naming_scheme_is_an_error_with_its_reason() {
        let error = decide(&spec("VDI-#-#", 0), &BTreeSet::new()).expect_err("two runs");
        assert_eq!(error.reason(), "NamingSchemeMultiplePlaceholders");
    }
}
