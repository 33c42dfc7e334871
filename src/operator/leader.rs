//! Leader election with a `coordination.k8s.io/v1` Lease (through `kube-lease-manager`): only
//! the holder runs the controllers and tasks.
//!
//! The lease manager acquires and renews the lease; on top of it, the holder checks the Lease
//! itself every fifth of its duration and treats the lease as lost as soon as it cannot see a
//! renewal that keeps it valid (an API server it cannot reach, another holder), so it stops
//! work before another process may start it.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where and as whom to elect.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub lease: String,
    /// This process's identity (the Pod name, or host name and a random suffix).
    pub identity: String,
    /// How long a lease stays valid without renewal; renewed after two thirds of it.
    pub duration: Duration,
}

impl ElectionConfig {
    fn grace(&self) -> u64 {
        (self.duration.as_secs() / 3).max(1)
    }
}

/// A running election: the lease manager's task and its state channel.
pub struct LeaderElection {
    config: ElectionConfig,
    api: Api<Lease>,
    state: watch::Receiver<bool>,
    manager: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl LeaderElection {
    /// Starts electing (creating the Lease when it does not exist yet).
    pub async fn start(client: Client, config: ElectionConfig) -> Result<Self, LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client.clone(), &config.lease)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.duration.as_secs().max(2))
            .with_grace(config.grace())
            .with_field_manager("mcs-operator/leader-election")
            .build()
            .await?;
        let (state, manager) = manager.watch().await;
        Ok(Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            state,
            manager,
        })
    }

    /// Waits until this process holds the lease; `false` when the election stopped instead.
    pub async fn acquired(&mut self) -> bool {
        self.state.wait_for(|leader| *leader).await.is_ok()
    }

    /// Waits while this process holds the lease and returns why it no longer does.
    pub async fn lost(&mut self) -> String {
        let check = self.config.duration / 5;
        let margin = Duration::from_secs(1).min(self.config.duration / 4);
        let mut valid_until = SystemTime::now() + self.config.duration;
        loop {
            tokio::select! {
                changed = self.state.changed() => {
                    if changed.is_err() {
                        return "the lease manager stopped".into();
                    }
                    if !*self.state.borrow() {
                        return "another process took the lease".into();
                    }
                }
                () = tokio::time::sleep(check) => {
                    match self.api.get_opt(&self.config.lease).await {
                        Ok(Some(lease)) => {
                            let spec = lease.spec.unwrap_or_default();
                            if spec.holder_identity.as_deref() != Some(&self.config.identity) {
                                return format!(
                                    "the lease is held by {}",
                                    spec.holder_identity.as_deref().unwrap_or("nobody")
                                );
                            }
                            if let (Some(renewed), Some(seconds)) =
                                (spec.renew_time, spec.lease_duration_seconds)
                            {
                                let renewed = SystemTime::from(renewed.0);
                                let seconds = u64::try_from(seconds).unwrap_or(0);
                                valid_until = valid_until.max(renewed + Duration::from_secs(seconds));
                            }
                        }
                        Ok(None) => return "the lease was deleted".into(),
                        Err(error) => tracing::warn!(%error, "cannot read the leader lease"),
                    }
                    if SystemTime::now() + margin >= valid_until {
                        return "the lease could not be renewed before it expired".into();
                    }
                }
            }
        }
    }

    /// Releases the lease (when held) so that a standby takes over at once, waiting at most
    /// a few seconds.
    pub async fn release(self) {
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(5), self.manager).await {
            Ok(Ok(Ok(_))) => tracing::info!(lease = %self.config.lease, "leader lease released"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "leader lease not released"),
            Ok(Err(error)) => tracing::warn!(%error, "leader election task failed"),
            Err(_) => tracing::warn!("leader lease release timed out"),
        }
    }
}

/// This process's identity: `POD_NAME` when set, else the host name and a random suffix.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "mcs-operator".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}
