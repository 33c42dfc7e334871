//! Secrets stay secret: a canary value planted in a HypervisorConnection's credentials Secret,
//! and a check that it never shows up in a status, an Event, an operator log line or an error
//! message a campaign collected. Any campaign can use it: plant the canary with
//! [`Canary::plant`] (or [`Canary::secret`] and [`Canary::reference`]), run, then call
//! [`Canary::assert_absent`].

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

use super::cluster::Cluster;

/// The name of the Secret the campaigns' connections reference.
pub const SECRET: &str = "hypervisor-credentials";

/// A random value that must never leave its Secret.
#[derive(Clone, Debug)]
pub struct Canary {
    /// The secret value (what the Secret's `password` key holds).
    pub value: String,
}

impl Default for Canary {
    fn default() -> Self {
        Self::new()
    }
}

impl Canary {
    /// A fresh canary: long and random, so that finding it anywhere is proof of a leak.
    pub fn new() -> Canary {
        Canary {
            value: format!("canary-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// The forms the value could leak in: as written, base64 (as the Secret stores it) and
    /// its first 16 characters after the common prefix (a truncated echo).
    pub fn needles(&self) -> Vec<String> {
        // k8s-openapi's ByteString serializes as base64, as a Secret's `data` does.
        let b64 = serde_json::to_value(k8s_openapi::ByteString(self.value.clone().into_bytes()))
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let tail = self.value.trim_start_matches("canary-");
        vec![
            self.value.clone(),
            b64,
            tail[..16.min(tail.len())].to_owned(),
        ]
    }

    /// The credentials Secret `name` holding the canary (as `password`, beside a user name).
    pub fn secret(&self, name: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name},
            "type": "Opaque",
            "stringData": {"username": "mcs-admin", "password": self.value},
        })
    }

    /// Adds `spec.credentialsSecretRef: {name: SECRET}` to every HypervisorConnection of
    /// `objects`.
    pub fn reference(objects: &mut [Value]) {
        for object in objects.iter_mut() {
            if object["kind"] == "HypervisorConnection" {
                object["spec"]["credentialsSecretRef"] = json!({ "name": SECRET });
            }
        }
    }

    /// Creates the Secret [`SECRET`] in the cluster's namespace and makes every connection of
    /// `objects` reference it.
    pub async fn plant(&self, cluster: &Cluster, objects: &mut [Value]) {
        let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(self.secret(SECRET)).expect("secret"),
        )
        .await
        .expect("credentials secret created");
        Self::reference(objects);
    }

    /// Where each needle occurs in `text` (named `source`), as short descriptions.
    pub fn find(&self, source: &str, text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for needle in self.needles() {
            for (n, line) in text.lines().enumerate() {
                if line.contains(&needle) {
                    let shown: String = line.chars().take(300).collect();
                    found.push(format!("{source}:{}: {shown}", n + 1));
                }
            }
        }
        found
    }

    /// Panics when the canary appears in any status or spec of the mcs kinds in the namespace,
    /// any Event there, any of `logs` (operator log files) or any of `messages` (error texts
    /// the campaign collected, e.g. admission refusals). Returns how much was scanned, for the
    /// campaign to print.
    pub async fn assert_absent(
        &self,
        cluster: &Cluster,
        logs: &[PathBuf],
        messages: &[String],
    ) -> Scanned {
        let mut found = Vec::new();
        let mut scanned = Scanned::default();
        for resource in mcs_operator::dev::api_resources() {
            let api: Api<DynamicObject> =
                Api::namespaced_with(cluster.client.clone(), &cluster.namespace, &resource);
            let list = api.list(&ListParams::default()).await.expect("list");
            for object in list.items {
                scanned.objects += 1;
                let name = object.metadata.name.clone().unwrap_or_default();
                let text = serde_json::to_string_pretty(&object.data).unwrap_or_default();
                found.extend(self.find(&format!("{} {name}", resource.kind), &text));
            }
        }
        let events: Api<Event> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        for event in events
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
        {
            scanned.events += 1;
            let text = serde_json::to_string(&event).unwrap_or_default();
            found.extend(self.find("Event", &text));
        }
        for log in logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            scanned.log_lines += text.lines().count();
            scanned.log_bytes += text.len();
            found.extend(self.find(&log.display().to_string(), &text));
        }
        for (n, message) in messages.iter().enumerate() {
            scanned.messages += 1;
            found.extend(self.find(&format!("message {n}"), message));
        }
        assert!(
            found.is_empty(),
            "the credentials canary leaked ({} places):\n{}",
            found.len(),
            found.join("\n")
        );
        scanned
    }
}

/// How much [`Canary::assert_absent`] looked at.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scanned {
    /// Objects of the mcs kinds (spec and status).
    pub objects: usize,
    /// Events.
    pub events: usize,
    /// Operator log lines.
    pub log_lines: usize,
    /// Operator log bytes.
    pub log_bytes: usize,
    /// Collected error messages.
    pub messages: usize,
}

impl std::fmt::Display for Scanned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "canary absent from {} objects, {} events, {} log lines ({} KiB), {} error messages",
            self.objects,
            self.events,
            self.log_lines,
            self.log_bytes / 1024,
            self.messages
        )
    }
}
