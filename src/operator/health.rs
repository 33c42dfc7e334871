//! `/healthz` and `/readyz`: what the kubelet's probes ask.
//!
//! - `/healthz` answers 200 while the process serves requests (liveness).
//! - `/readyz` answers 200 when the CRDs this binary needs are installed and established, and
//!   either this process is a standby (waiting for the leader lease) or it leads and every
//!   controller's cache has synced; otherwise 503. The body lists each check, `[+]` or `[-]`,
//!   as the Kubernetes components do.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use crate::controller::readiness::CacheReadiness;

/// What this process does right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Checking the CRDs, not yet electing or running.
    Starting,
    /// Waiting for the leader lease; another process runs the controllers.
    Standby,
    /// Running the controllers.
    Leader,
    /// Shutting down.
    Stopping,
}

#[derive(Debug)]
struct State {
    role: Role,
    crds: Result<(), String>,
    caches: Option<CacheReadiness>,
}

/// The readiness state shared by the operator and its probe server.
#[derive(Clone, Debug)]
pub struct Health {
    state: Arc<Mutex<State>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                role: Role::Starting,
                crds: Err("not checked yet".into()),
                caches: None,
            })),
        }
    }
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the outcome of the CRD check (`Err` holds what is wrong).
    pub fn set_crds(&self, crds: Result<(), String>) {
        self.lock().crds = crds;
    }

    /// Records what the process does.
    pub fn set_role(&self, role: Role) {
        self.lock().role = role;
    }

    /// The caches whose sync a leader waits for.
    pub fn set_caches(&self, caches: CacheReadiness) {
        self.lock().caches = Some(caches);
    }

    /// The role recorded last.
    pub fn role(&self) -> Role {
        self.lock().role
    }

    /// Whether the process is ready, and the report of each check.
    pub fn readiness(&self) -> (bool, String) {
        let state = self.lock();
        let mut ready = true;
        let mut report = String::new();
        let mut check = |ok: bool, name: &str, detail: &str| {
            ready &= ok;
            let mark = if ok { '+' } else { '-' };
            report.push_str(&format!("[{mark}]{name} {detail}\n"));
        };
        match &state.crds {
            Ok(()) => check(true, "crds", "ok"),
            Err(problem) => check(false, "crds", problem),
        }
        match state.role {
            Role::Starting => check(false, "role", "starting"),
            Role::Stopping => check(false, "role", "stopping"),
            Role::Standby => check(true, "role", "standby (waiting for the leader lease)"),
            Role::Leader => {
                check(true, "role", "leader");
                let pending = state
                    .caches
                    .as_ref()
                    .map_or_else(|| vec!["all"], CacheReadiness::pending);
                if pending.is_empty() {
                    check(true, "caches", "synced");
                } else {
                    check(
                        false,
                        "caches",
                        &format!("not synced: {}", pending.join(", ")),
                    );
                }
            }
        }
        report.push_str(if ready {
            "readyz check passed\n"
        } else {
            "readyz check failed\n"
        });
        (ready, report)
    }

    /// The probe routes: `/healthz`, `/livez` and `/readyz`.
    pub fn router(&self) -> Router {
        let health = self.clone();
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/livez", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let health = health.clone();
                    async move {
                        let (ready, report) = health.readiness();
                        let code = if ready {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        (code, report)
                    }
                }),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_crds_and_a_role_that_serves() {
        let health = Health::default();
        assert!(!health.readiness().0, "starting is not ready");
        health.set_crds(Ok(()));
        assert!(!health.readiness().0, "still starting");
        health.set_role(Role::Standby);
        let (ready, report) = health.readiness();
        assert!(ready, "{report}");
        assert!(report.contains("[+]role standby"));
        health.set_role(Role::Leader);
        let (ready, report) = health.readiness();
        assert!(!ready, "a leader without synced caches: {report}");
        assert!(report.contains("[-]caches not synced: all"), "{report}");
        health.set_caches(CacheReadiness::default());
        let (_, report) = health.readiness();
        assert!(report.contains("hypervisorconnection"), "{report}");
        health.set_crds(Err("CRD provvms.mcs.imaging.dev is missing".into()));
        health.set_role(Role::Standby);
        let (ready, report) = health.readiness();
        assert!(!ready);
        assert!(
            report.contains("[-]crds CRD provvms.mcs.imaging.dev is missing"),
            "{report}"
        );
    }
}
