//! The IdentityPool controller: checks the naming scheme and reports the next index, the
//! identities in use and the capacity.

use std::collections::BTreeSet;
use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use mcs_domain::Reason;
use mcs_domain::naming::{NamingError, NamingScheme};

use super::conditions::{DesiredCondition, merge};
use super::events;
use super::status::report;
use super::{Context, ControllerError};
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

/// Read: the indices the machines of the pool's schemes hold, from the shared caches.
fn read(pool: &IdentityPool, namespace: &str, context: &Context) -> BTreeSet<u64> {
    context.stores.pool_indices(namespace, &pool.name_any())
}

/// Decide (pure): the status the pool should have, and the Warning Event to publish when the
/// Ready condition changes to a failure (an exhausted pool, an invalid naming scheme).
pub fn desired_status(
    pool: &IdentityPool,
    indices: &BTreeSet<u64>,
    now: Timestamp,
) -> (IdentityPoolStatus, Option<Event>) {
    let current = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let (ready, counters) = match decide(&pool.spec, indices) {
        Ok(decision) => (ready_condition(&pool.spec, &decision), Some(decision)),
        Err(error) => (
            DesiredCondition::false_(
                condition_type::READY,
                error.reason(),
                format!("spec.namingScheme: {error}"),
            ),
            None,
        ),
    };
    let conditions = merge(
        &current.conditions,
        std::slice::from_ref(&ready),
        generation,
        now,
    );
    let status = match counters {
        Some(decision) => IdentityPoolStatus {
            observed_generation: generation,
            next_index: i64::try_from(decision.next_index).ok(),
            accounts_in_use: i64::try_from(decision.in_use).ok(),
            capacity: i64::try_from(decision.capacity).ok(),
            conditions,
        },
        None => IdentityPoolStatus {
            observed_generation: generation,
            conditions,
            ..current.clone()
        },
    };
    let was = current
        .conditions
        .iter()
        .find(|c| c.type_ == condition_type::READY)
        .map(|c| (c.reason.as_str(), c.message.as_str()));
    let event = (!ready.status && was != Some((ready.reason.as_str(), ready.message.as_str())))
        .then(|| events::event(EventType::Warning, &ready.reason, "Validate", ready.message));
    (status, event)
}

/// The Ready condition of a pool whose naming scheme is valid: exhausted or available.
fn ready_condition(spec: &IdentityPoolSpec, decision: &PoolDecision) -> DesiredCondition {
    if decision.next_index < decision.capacity {
        return DesiredCondition::true_(
            condition_type::READY,
            "Available",
            format!(
                "{} of {} identities in use",
                decision.in_use, decision.capacity
            ),
        );
    }
    let start = u64::try_from(spec.start_count).unwrap_or_default();
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
            spec.naming_scheme, decision.capacity
        ),
    )
}

/// Read -> decide -> report: the status is written only when it changes.
async fn reconcile(
    pool: Arc<IdentityPool>,
    context: Arc<Context>,
) -> Result<Action, ControllerError> {
    let _timer = crate::metrics::global().reconcile(CONTROLLER);
    let namespace = pool.namespace().ok_or(ControllerError::MissingMetadata {
        kind: "IdentityPool",
        field: "namespace",
    })?;
    let indices = read(&pool, &namespace, &context);
    let (status, event) = desired_status(&pool, &indices, Timestamp::now());
    report(
        &context,
        pool.as_ref(),
        CONTROLLER,
        pool.status.as_ref(),
        &status,
        event,
    )
    .await?;
    Ok(Action::requeue(context.config.resync))
}

/// Runs the IdentityPool controller until the stream ends.
pub async fn run(context: Arc<Context>) {
    let stores = &context.stores;
    let pools = stores.pools.store().clone();
    context.caches.track(CONTROLLER, pools.clone());
    if !stores.ready().await {
        return;
    }
    // Machines come and go without their scheme changing (a scale-down's last deletions land
    // after the scheme's status): every machine event recounts the pools of its namespace,
    // debounced, or `accountsInUse` stayed stale until the resync.
    let results = stores
        .pools
        .controller()
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(std::time::Duration::from_millis(500)),
        )
        .watches_shared_stream(stores.schemes.subscribe(), |scheme: Arc<ProvScheme>| {
            scheme.namespace().map(|ns| {
                ObjectRef::<IdentityPool>::new(&scheme.spec.identity_pool_ref).within(&ns)
            })
        })
        .watches_shared_stream(stores.machines.subscribe(), move |machine: Arc<ProvVm>| {
            let namespace = machine.namespace();
            pools
                .state()
                .into_iter()
                .filter(move |pool| pool.namespace() == namespace)
                .map(|pool| ObjectRef::from_obj(pool.as_ref()))
        })
        .run(
            reconcile,
            super::error_policy(CONTROLLER, std::time::Duration::from_secs(5)),
            context.clone(),
        );
    super::drain(CONTROLLER, results).await;
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

    fn pool(naming: &str, start: i64) -> IdentityPool {
        let mut pool = IdentityPool::new("pool", spec(naming, start));
        pool.metadata.generation = Some(3);
        pool
    }

    #[test]
    fn the_status_settles_and_a_failure_is_announced_once() {
        let now = Timestamp::now();
        let mut pool = pool("VDI-#", 0);
        let (status, event) = desired_status(&pool, &BTreeSet::from([0, 1]), now);
        assert_eq!(status.next_index, Some(2));
        assert_eq!(status.accounts_in_use, Some(2));
        assert_eq!(status.observed_generation, Some(3));
        assert!(event.is_none(), "an available pool publishes nothing");
        pool.status = Some(status.clone());
        let (again, event) = desired_status(&pool, &BTreeSet::from([0, 1]), now);
        assert_eq!(
            again, status,
            "nothing changed: the same status, so no write"
        );
        assert!(event.is_none());

        let full: BTreeSet<u64> = (0..10).collect();
        let (exhausted, event) = desired_status(&pool, &full, now);
        let event = event.expect("the first exhaustion is announced");
        assert_eq!(event.reason, "IdentityPoolExhausted");
        assert!(
            event
                .note
                .expect("a note")
                .contains("10 identities and all are used")
        );
        pool.status = Some(exhausted);
        assert!(desired_status(&pool, &full, now).1.is_none(), "only once");
    }

    #[test]
    fn an_invalid_naming_scheme_keeps_the_counters_and_names_the_field() {
        let now = Timestamp::now();
        let mut pool = pool("VDI-##", 0);
        let (status, _) = desired_status(&pool, &BTreeSet::from([4]), now);
        pool.status = Some(status);
        pool.spec.naming_scheme = "VDI-#-#".into();
        let (status, event) = desired_status(&pool, &BTreeSet::from([4]), now);
        assert_eq!(status.next_index, Some(5), "the last good counters stay");
        let event = event.expect("announced");
        assert_eq!(event.reason, "NamingSchemeMultiplePlaceholders");
        assert!(
            event
                .note
                .expect("a note")
                .starts_with("spec.namingScheme: ")
        );
    }
}
