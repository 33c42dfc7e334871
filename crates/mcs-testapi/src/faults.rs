//! Fault injection for tests: failing requests, delays, dropped watches.

use crate::error::ApiError;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Fail the next `count` requests of `verb` (optionally only for `resource`, a plural).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailRule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection` or `*`.
    pub verb: String,
    /// Only requests for this resource plural (e.g. `configmaps`), or all.
    #[serde(default)]
    pub resource: Option<String>,
    /// How many requests fail.
    pub count: u32,
    /// 500 (InternalError), 429 (TooManyRequests), 503 or 504.
    #[serde(default = "default_code")]
    pub code: u16,
    /// `Retry-After` seconds for 429 (default 1).
    #[serde(default)]
    pub retry_after_seconds: Option<u64>,
}

fn default_code() -> u16 {
    500
}

/// The body of `POST /__test/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultRequest {
    /// Rules to add.
    #[serde(default)]
    pub fail: Vec<FailRule>,
    /// Delay every API response by this many milliseconds (0 turns it off).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// End every open watch now.
    #[serde(default)]
    pub drop_watches: bool,
    /// Forget the watch history, so resuming watches get 410 Gone.
    #[serde(default)]
    pub compact_history: bool,
    /// Remove all rules and the delay first.
    #[serde(default)]
    pub clear: bool,
}

/// One API request as seen by the server (for assertions in tests).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: String,
    /// The resource plural.
    pub resource: String,
    /// The subresource (`status`, `scale`) or "".
    pub subresource: String,
    /// The raw query string.
    pub query: String,
    /// Whether an injected fault answered it.
    pub faulted: bool,
}

const LOG_LIMIT: usize = 20_000;

#[derive(Default)]
struct State {
    rules: Vec<FailRule>,
    delay: Duration,
    log: std::collections::VecDeque<RequestRecord>,
}

/// Handle to the fault knobs of one server (cheap to clone).
#[derive(Clone)]
pub struct Faults {
    state: Arc<Mutex<State>>,
    drop_tx: Arc<tokio::sync::watch::Sender<u64>>,
    store: Arc<Store>,
}

impl Faults {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        let (tx, _) = tokio::sync::watch::channel(0);
        Self {
            state: Arc::default(),
            drop_tx: Arc::new(tx),
            store,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fail the next `count` requests of `verb` (for `resource`, if given) with `code` (500 or 429).
    pub fn fail_next(&self, verb: &str, resource: Option<&str>, count: u32, code: u16) {
        self.add(FailRule {
            verb: verb.to_string(),
            resource: resource.map(str::to_string),
            count,
            code,
            retry_after_seconds: None,
        });
    }

    /// Add a failure rule.
    pub fn add(&self, rule: FailRule) {
        self.lock().rules.push(rule);
    }

    /// Delay every API response by `d` (zero turns it off).
    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// End every open watch stream now (clients see a normal end of stream and resume).
    pub fn drop_watches(&self) {
        self.drop_tx.send_modify(|v| *v += 1);
    }

    /// Forget the watch history: watches resuming from an older resourceVersion get 410 Gone.
    pub fn compact_history(&self) {
        self.store.compact();
    }

    /// Remove all rules and the delay.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.rules.clear();
        s.delay = Duration::ZERO;
    }

    /// How many injected failures are still pending.
    pub fn pending(&self) -> u32 {
        self.lock().rules.iter().map(|r| r.count).sum()
    }

    /// Apply a `POST /__test/faults` request.
    pub fn apply(&self, req: &FaultRequest) -> Result<(), ApiError> {
        for r in &req.fail {
            if ![500, 429, 503, 504].contains(&r.code) {
                return Err(ApiError::bad_request(format!(
                    "unsupported fault code {}: use 500, 429, 503 or 504",
                    r.code
                )));
            }
        }
        if req.clear {
            self.clear();
        }
        for r in &req.fail {
            self.add(r.clone());
        }
        if let Some(ms) = req.delay_ms {
            self.set_delay(Duration::from_millis(ms));
        }
        if req.compact_history {
            self.compact_history();
        }
        if req.drop_watches {
            self.drop_watches();
        }
        Ok(())
    }

    /// The current rules and delay, as JSON.
    pub fn describe(&self) -> serde_json::Value {
        let s = self.lock();
        serde_json::json!({ "fail": s.rules, "delayMs": s.delay.as_millis() as u64 })
    }

    pub(crate) fn delay(&self) -> Duration {
        self.lock().delay
    }

    pub(crate) fn drop_rx(&self) -> tokio::sync::watch::Receiver<u64> {
        self.drop_tx.subscribe()
    }

    /// The API requests served so far (oldest first, the last 20000).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.iter().cloned().collect()
    }

    /// How many requests of `verb` on `resource` were served (faulted ones included).
    pub fn request_count(&self, verb: &str, resource: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .count()
    }

    /// Record a request and consume one matching rule, returning the error to answer with.
    pub(crate) fn check(
        &self,
        verb: &str,
        resource: &str,
        subresource: &str,
        query: &str,
    ) -> Option<ApiError> {
        let mut s = self.lock();
        let hit = s.rules.iter().position(|r| {
            r.count > 0
                && (r.verb == verb || r.verb == "*")
                && r.resource.as_deref().is_none_or(|x| x == resource)
        });
        if s.log.len() >= LOG_LIMIT {
            s.log.pop_front();
        }
        s.log.push_back(RequestRecord {
            verb: verb.to_string(),
            resource: resource.to_string(),
            subresource: subresource.to_string(),
            query: query.to_string(),
            faulted: hit.is_some(),
        });
        let rule = &mut s.rules[hit?];
        rule.count -= 1;
        let err = match rule.code {
            429 => ApiError::too_many_requests(rule.retry_after_seconds.unwrap_or(1)),
            503 => ApiError::new(
                503,
                "ServiceUnavailable",
                "injected fault: service unavailable",
            ),
            504 => ApiError::new(504, "Timeout", "injected fault: timeout"),
            _ => ApiError::internal("injected fault"),
        };
        s.rules.retain(|r| r.count > 0);
        Some(err)
    }
}
