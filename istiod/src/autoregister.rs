//! WorkloadEntry auto-registration, as Istio's `autoregistration.Controller`:
//! a proxy that connects with node metadata `AUTO_REGISTER_GROUP` (a VM's
//! agent, `ISTIO_META_AUTO_REGISTER_GROUP`) gets a WorkloadEntry made from
//! that WorkloadGroup of its namespace, at its address; the entry goes
//! when the proxy has been gone for the grace period (Istio's
//! `PILOT_WORKLOAD_ENTRY_GRACE_PERIOD`, 10 s), so a reconnect keeps it.
//!
//! With the folder and embedded sources the entries are kept here, in
//! memory, and join every load ([`Registry::add_to`]); each change signals
//! the source's event channel, so the snapshot is rebuilt after the usual
//! debounce. With the Kubernetes source they are written to the API server
//! instead, as istiod writes them ([`Registry::write_to`]), so that every
//! replica serves them: created on connect with `istio.io/workloadController`
//! and `istio.io/connectedAt`; on the last disconnect from this replica
//! `istio.io/disconnectedAt` replaces those, and after the grace period
//! the entry is deleted if it still carries that mark (a proxy that
//! reconnected to any replica meanwhile has it cleared).
//!
//! The leader also sweeps up what a replica that stopped could not
//! ([`clean_up`], Istio's `periodicWorkloadEntryCleanup`): every ten grace
//! periods, each auto-registered entry still marked disconnected after the
//! grace period, or marked connected for longer than a connection can last
//! (one and a half maximum connection ages: its replica and proxy both
//! went away), is deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crds::{Object, WorkloadEntry};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use tokio::sync::mpsc;
use tracing::{info, warn};
use translator::model::Snapshot;

/// The type URL of the health reports a proxy's agent sends on its xDS
/// stream (Istio's `HealthInfoType`): a request without `error_detail`
/// says healthy, one with it unhealthy (its message the probe's error).
pub const HEALTH_TYPE: &str = "type.googleapis.com/istio.v1.HealthInformation";
/// The node metadata key naming the WorkloadGroup a proxy registers in.
pub const AUTO_REGISTER_GROUP: &str = "AUTO_REGISTER_GROUP";
/// The annotation naming an entry's group (Istio's
/// `istio.io/autoRegistrationGroup`).
pub const GROUP_ANNOTATION: &str = "istio.io/autoRegistrationGroup";
/// How long an entry outlives its last connection (Istio's
/// `PILOT_WORKLOAD_ENTRY_GRACE_PERIOD` default), seconds.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// The label Istio's bootstrap adds for the proxy's locality, left out of
/// the entry (its `locality` says it).
const LOCALITY_LABEL: &str = "istio-locality";
/// Longest Kubernetes object name.
const MAX_NAME: usize = 253;
/// The replica whose proxy holds an entry (Istio's annotation).
pub const CONTROLLER_ANNOTATION: &str = "istio.io/workloadController";
/// When its proxy connected (RFC 3339).
pub const CONNECTED_AT_ANNOTATION: &str = "istio.io/connectedAt";
/// When its last proxy left (RFC 3339); the entry goes a grace period later.
pub const DISCONNECTED_AT_ANNOTATION: &str = "istio.io/disconnectedAt";

/// What a connecting proxy says about itself, from its node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// The WorkloadGroup's name (node metadata `AUTO_REGISTER_GROUP`).
    pub group: String,
    /// The proxy's namespace (node metadata `NAMESPACE`).
    pub namespace: String,
    /// Its address (the node ID's IP).
    pub ip: String,
    /// Its network (node metadata `NETWORK`), if any.
    pub network: String,
    /// Its `region/zone/subzone` (the node's locality), if any.
    pub locality: String,
    /// Its labels (node metadata `LABELS`).
    pub labels: BTreeMap<String, String>,
}

/// Why a proxy could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// No WorkloadGroup of that name in the proxy's namespace.
    #[error("auto-registration: no WorkloadGroup {namespace}/{group}")]
    NoGroup {
        /// The proxy's namespace.
        namespace: String,
        /// The group it named.
        group: String,
    },
    /// The proxy has no address to register.
    #[error("auto-registration: the proxy has no IP address")]
    NoAddress,
}

/// One registered entry.
#[derive(Debug)]
struct Registered {
    object: Arc<Object>,
    /// Connections holding it.
    connections: usize,
    /// Bumped on each connect and last disconnect, so that a removal
    /// scheduled before a reconnect does nothing.
    epoch: u64,
    /// The `istio.io/disconnectedAt` written at the last disconnect (the
    /// Kubernetes writer deletes the entry only if it still carries it).
    disconnected_at: String,
}

/// What the Kubernetes writer does, in order.
#[derive(Debug)]
enum Op {
    /// Create the entry (or mark an existing one connected).
    Connected(Arc<Object>),
    /// Mark it disconnected at the given time.
    Disconnected(Arc<Object>, String),
    /// Delete it if it is still marked disconnected at that time.
    Expire(Arc<Object>, String),
    /// Write its `Healthy` condition (the object carries it).
    Health(Arc<Object>),
}

/// The auto-registered WorkloadEntries, by `namespace/name`.
#[derive(Debug)]
pub struct Registry {
    entries: Mutex<BTreeMap<String, Registered>>,
    grace: Duration,
    changed: Mutex<Option<mpsc::Sender<()>>>,
    /// The Kubernetes writer's queue, once [`Registry::write_to`] ran.
    api: std::sync::OnceLock<mpsc::UnboundedSender<Op>>,
}

/// A connection's hold on its entry: dropping it (the stream ended) starts
/// the grace period.
#[derive(Debug)]
pub struct Registration {
    registry: Arc<Registry>,
    key: String,
}

impl Registration {
    /// The entry's `namespace/name`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The proxy's agent reported its workload's health
    /// ([`Registry::report_health`]).
    pub fn report_health(&self, healthy: bool, message: Option<String>) {
        self.registry.report_health(&self.key, healthy, message);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.disconnect(&self.key);
    }
}

impl Registry {
    /// An empty registry whose entries outlive their last connection by
    /// `grace`.
    pub fn new(grace: Duration) -> Arc<Registry> {
        Arc::new(Registry {
            entries: Mutex::default(),
            grace,
            changed: Mutex::default(),
            api: std::sync::OnceLock::new(),
        })
    }

    /// Writes the entries to the Kubernetes API server from now on (as
    /// `controller`, this replica's name) instead of adding them to the
    /// loads; a task does the writes in order until `token` is cancelled.
    pub fn write_to(
        &self,
        client: kube::Client,
        controller: String,
        token: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.api.set(tx);
        tokio::spawn(async move {
            tokio::select! {
                () = write(client, controller, rx) => {}
                () = token.cancelled() => {}
            }
        })
    }

    fn send(&self, op: Op) {
        if let Some(api) = self.api.get() {
            let _ = api.send(op);
        }
    }

    /// Signals `events` (the config source's channel) on every change.
    pub fn notify(&self, events: mpsc::Sender<()>) {
        if let Ok(mut changed) = self.changed.lock() {
            *changed = Some(events);
        }
    }

    fn signal(&self) {
        if let Some(tx) = self.changed.lock().ok().and_then(|c| c.clone()) {
            // Full: a signal is already pending, which is enough.
            let _ = tx.try_send(());
        }
    }

    /// Registers `workload` in its WorkloadGroup of `snap` (Istio's
    /// `RegisterWorkload`): its entry is made, or kept and counted once
    /// more if it exists (a second connection, a reconnect in the grace
    /// period).
    ///
    /// # Errors
    /// [`RegisterError`] when the group does not exist or the proxy has no
    /// address; istiod then refuses the connection.
    pub fn connect(
        self: &Arc<Self>,
        snap: &Snapshot,
        workload: &Workload,
    ) -> Result<Registration, RegisterError> {
        let group = snap
            .workload_groups
            .iter()
            .find(|g| g.namespace == workload.namespace && g.name == workload.group)
            .ok_or_else(|| RegisterError::NoGroup {
                namespace: workload.namespace.clone(),
                group: workload.group.clone(),
            })?;
        if workload.ip.is_empty() {
            return Err(RegisterError::NoAddress);
        }
        let entry = entry_from_group(&group.spec, workload);
        let key = format!(
            "{}/{}",
            workload.namespace,
            entry.metadata.name.as_deref().unwrap_or_default()
        );
        let object = Arc::new(Object::WorkloadEntry(Box::new(entry)));
        let mut changed = false;
        if let Ok(mut entries) = self.entries.lock() {
            let slot = entries.entry(key.clone()).or_insert_with(|| {
                changed = true;
                Registered {
                    object: object.clone(),
                    connections: 0,
                    epoch: 0,
                    disconnected_at: String::new(),
                }
            });
            if !same_entry(&slot.object, &object) {
                // What the agent last reported stays (Istio keeps the
                // status on a reconnect).
                slot.object = with_status_of(object, &slot.object);
                changed = true;
            }
            slot.connections += 1;
            slot.epoch += 1;
            // Written on every connect: another replica may have marked the
            // entry disconnected meanwhile.
            self.send(Op::Connected(slot.object.clone()));
        }
        info!(entry = %key, group = %workload.group, "WorkloadEntry auto-registered");
        if changed && self.api.get().is_none() {
            self.signal();
        }
        Ok(Registration {
            registry: self.clone(),
            key,
        })
    }

    /// A connection holding `key` ended: with none left, the entry goes
    /// after the grace period unless a proxy connects for it meanwhile.
    fn disconnect(self: &Arc<Self>, key: &str) {
        let epoch = {
            let Ok(mut entries) = self.entries.lock() else {
                return;
            };
            let Some(slot) = entries.get_mut(key) else {
                return;
            };
            slot.connections = slot.connections.saturating_sub(1);
            if slot.connections > 0 {
                return;
            }
            slot.epoch += 1;
            slot.disconnected_at = k8s_openapi::jiff::Timestamp::now().to_string();
            self.send(Op::Disconnected(
                slot.object.clone(),
                slot.disconnected_at.clone(),
            ));
            slot.epoch
        };
        let registry = self.clone();
        let key = key.to_owned();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(registry.grace).await;
                    registry.remove_if_unchanged(&key, epoch);
                });
            }
            Err(_) => registry.remove_if_unchanged(&key, epoch),
        }
    }

    fn remove_if_unchanged(&self, key: &str, epoch: u64) {
        let removed = self.entries.lock().ok().and_then(|mut entries| {
            let gone = entries
                .get(key)
                .is_some_and(|s| s.connections == 0 && s.epoch == epoch);
            gone.then(|| entries.remove(key)).flatten()
        });
        if let Some(slot) = removed {
            info!(entry = %key, "auto-registered WorkloadEntry removed after the grace period");
            if self.api.get().is_some() {
                self.send(Op::Expire(slot.object, slot.disconnected_at));
            } else {
                self.signal();
            }
        }
    }

    /// The workload's health, as its agent reports it over xDS (a request
    /// of type [`HEALTH_TYPE`]; Istio's `QueueWorkloadEntryHealth`): the
    /// entry `key`'s `Healthy` condition becomes `True`, or `False` with the
    /// probe's error `message`. The endpoint of a health-checked entry
    /// ([`crds::service_entry::HEALTH_CHECKS_ANNOTATION`], set when its
    /// WorkloadGroup has a `probe`) serves only while it is `True`. A
    /// report that changes nothing writes nothing.
    pub fn report_health(&self, key: &str, healthy: bool, message: Option<String>) {
        use crds::service_entry::{HEALTHY_CONDITION, IstioCondition};
        let status = if healthy { "True" } else { "False" };
        let message = if healthy { None } else { message };
        let updated = self.entries.lock().ok().and_then(|mut entries| {
            let slot = entries.get_mut(key)?;
            let Object::WorkloadEntry(entry) = &*slot.object else {
                return None;
            };
            let conditions = entry.status.as_ref().map(|s| s.conditions.as_slice());
            let current = conditions
                .unwrap_or_default()
                .iter()
                .find(|c| c.type_ == HEALTHY_CONDITION);
            if current.is_some_and(|c| c.status == status && c.message == message) {
                return None;
            }
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let condition = IstioCondition {
                type_: HEALTHY_CONDITION.to_owned(),
                status: status.to_owned(),
                last_probe_time: Some(now.clone()),
                last_transition_time: Some(now),
                reason: None,
                message,
            };
            let mut entry = (**entry).clone();
            let status = entry.status.get_or_insert_with(Default::default);
            status.conditions.retain(|c| c.type_ != HEALTHY_CONDITION);
            status.conditions.push(condition);
            slot.object = Arc::new(Object::WorkloadEntry(Box::new(entry)));
            Some(slot.object.clone())
        });
        let Some(object) = updated else { return };
        info!(entry = %key, healthy, "WorkloadEntry health reported");
        if self.api.get().is_some() {
            self.send(Op::Health(object));
        } else {
            self.signal();
        }
    }

    /// The registered entries, by `namespace/name`.
    pub fn objects(&self) -> Vec<Arc<Object>> {
        self.entries
            .lock()
            .map(|e| e.values().map(|s| s.object.clone()).collect())
            .unwrap_or_default()
    }

    /// Adds the registered entries to a load of the config source (an
    /// entry whose name the source already has is reported there as a
    /// duplicate, and the source's object kept).
    pub fn add_to(&self, loaded: &mut crate::sources::Loaded) {
        if self.api.get().is_some() {
            // Written to the API server: the watcher brings them.
            return;
        }
        let objects = self.objects();
        if objects.is_empty() {
            return;
        }
        let origin: Arc<Path> = Path::new("<auto-registration>").into();
        for (document, object) in objects.into_iter().enumerate() {
            if let Err(e) = crds::validate::validate(&object) {
                warn!(error = %e, "auto-registered WorkloadEntry not valid; left out");
                continue;
            }
            loaded.add_validated(&origin, document, Ok(object));
        }
    }
}

/// The Kubernetes writer: applies `ops` in order; a failed write is
/// logged (the next connect or disconnect writes again).
async fn write(client: kube::Client, controller: String, mut ops: mpsc::UnboundedReceiver<Op>) {
    use kube::api::{Api, DeleteParams, PostParams};
    while let Some(op) = ops.recv().await {
        let (Op::Connected(object)
        | Op::Disconnected(object, _)
        | Op::Expire(object, _)
        | Op::Health(object)) = &op;
        let Object::WorkloadEntry(entry) = &**object else {
            continue;
        };
        let (Some(ns), Some(name)) = (&entry.metadata.namespace, &entry.metadata.name) else {
            continue;
        };
        let api: Api<WorkloadEntry> = Api::namespaced(client.clone(), ns);
        // The entry's own annotations, then the connection marks.
        let mut annotations = entry.metadata.annotations.clone().unwrap_or_default();
        let result = match &op {
            Op::Connected(_) => {
                annotations.insert(CONTROLLER_ANNOTATION.into(), controller.clone());
                annotations.insert(
                    CONNECTED_AT_ANNOTATION.into(),
                    k8s_openapi::jiff::Timestamp::now().to_string(),
                );
                let mut fresh = (**entry).clone();
                fresh.metadata.annotations = Some(annotations.clone());
                match api.create(&PostParams::default(), &fresh).await {
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        replace_annotations(&api, name, &annotations).await
                    }
                    other => other.map(|_| ()),
                }
            }
            Op::Disconnected(_, at) => {
                annotations.insert(DISCONNECTED_AT_ANNOTATION.into(), at.clone());
                replace_annotations(&api, name, &annotations).await
            }
            Op::Expire(_, at) => match api.get_opt(name).await {
                Ok(Some(current)) => {
                    let marks = current.metadata.annotations.unwrap_or_default();
                    let still_gone = marks.get(DISCONNECTED_AT_ANNOTATION) == Some(at)
                        && !marks.contains_key(CONTROLLER_ANNOTATION);
                    if still_gone {
                        api.delete(name, &DeleteParams::default()).await.map(|_| ())
                    } else {
                        Ok(())
                    }
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            Op::Health(_) => write_health(&api, name, entry).await,
        };
        if let Err(e) = result {
            warn!(entry = %format!("{ns}/{name}"), error = %e, "writing an auto-registered WorkloadEntry failed");
        }
    }
}

/// Writes the `Healthy` condition of `entry` into the status of entry
/// `name` (Istio's `UpdateStatus` of the condition): the current
/// conditions read, that one replaced, a merge patch of the `status`
/// subresource.
async fn write_health(
    api: &kube::Api<WorkloadEntry>,
    name: &str,
    entry: &WorkloadEntry,
) -> Result<(), kube::Error> {
    use crds::service_entry::HEALTHY_CONDITION;
    use kube::api::{Patch, PatchParams};
    let ours = entry
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .filter(|c| c.type_ == HEALTHY_CONDITION);
    let current = api.get(name).await?;
    let mut conditions: Vec<_> = current
        .status
        .map(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != HEALTHY_CONDITION)
        .collect();
    conditions.extend(ours.cloned());
    let patch = serde_json::json!({"status": {"conditions": conditions}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

/// Replaces the annotations of entry `name` (a JSON Patch).
async fn replace_annotations(
    api: &kube::Api<WorkloadEntry>,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "add", "path": "/metadata/annotations", "value": annotations}
    ]))
    .map_err(kube::Error::SerdeError)?;
    use kube::api::{Patch, PatchParams};
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .map(|_| ())
}

/// Whether Istio's periodic cleanup deletes an entry with these
/// `annotations` at `now` (Istio's `shouldCleanupEntry`): an
/// auto-registered one marked connected longer ago than `max_age`, or
/// marked disconnected at least `grace` ago (or at a time that does not
/// parse).
pub fn abandoned(
    annotations: &BTreeMap<String, String>,
    now: k8s_openapi::jiff::Timestamp,
    grace: Duration,
    max_age: Option<Duration>,
) -> bool {
    if !annotations.contains_key(GROUP_ANNOTATION) {
        return false;
    }
    let age = |at: &String| {
        at.parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .and_then(|t| Duration::try_from(now.duration_since(t)).ok())
    };
    if let Some(connected) = annotations.get(CONNECTED_AT_ANNOTATION) {
        return matches!((age(connected), max_age), (Some(a), Some(max)) if a > max);
    }
    match annotations.get(DISCONNECTED_AT_ANNOTATION) {
        None => false,
        Some(at) => age(at).is_none_or(|a| a >= grace),
    }
}

/// The leader's sweep of auto-registered WorkloadEntries left behind
/// ([`abandoned`]; Istio's `periodicWorkloadEntryCleanup`): every
/// `10 × grace`, while `leader` is true, each entry of `entries()` (the
/// watched ones) that looks abandoned is read again and, if it still does,
/// deleted on the condition that it has not changed since
/// (`resourceVersion`). `max_connection_age` is the xDS connections'
/// (none: connected entries are never swept). Ends with `token`.
pub async fn clean_up(
    client: kube::Client,
    entries: impl Fn() -> Vec<Arc<Object>> + Send,
    leader: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
    max_connection_age: Option<Duration>,
    token: tokio_util::sync::CancellationToken,
) {
    use kube::api::{Api, DeleteParams, Preconditions};
    // Istio's: one and a half connection ages.
    let max_age = max_connection_age.map(|a| a + a / 2);
    let period = (grace * 10).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = token.cancelled() => return,
        }
        if !*leader.borrow() {
            continue;
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        for object in entries() {
            let Object::WorkloadEntry(entry) = &*object else {
                continue;
            };
            let meta = &entry.metadata;
            let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) else {
                continue;
            };
            let marks = meta.annotations.clone().unwrap_or_default();
            if !abandoned(&marks, now, grace, max_age) {
                continue;
            }
            // Read again: the watch may lag a reconnect.
            let api: Api<WorkloadEntry> = Api::namespaced(client.clone(), ns);
            let current = match api.get_opt(name).await {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    warn!(entry = %format!("{ns}/{name}"), error = %e, "reading a WorkloadEntry to clean up failed");
                    continue;
                }
            };
            let marks = current.metadata.annotations.clone().unwrap_or_default();
            if !abandoned(&marks, now, grace, max_age) {
                continue;
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: current.metadata.resource_version.clone(),
                    uid: None,
                }),
                ..Default::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => {
                    info!(entry = %format!("{ns}/{name}"), "abandoned auto-registered WorkloadEntry deleted")
                }
                Err(e) => {
                    warn!(entry = %format!("{ns}/{name}"), error = %e, "deleting an abandoned WorkloadEntry failed")
                }
            }
        }
    }
}

/// Whether two entries have the same spec and metadata.
/// `object` (a WorkloadEntry) with the status of `old`.
fn with_status_of(object: Arc<Object>, old: &Object) -> Arc<Object> {
    match (&*object, old) {
        (Object::WorkloadEntry(new), Object::WorkloadEntry(old)) if old.status.is_some() => {
            let mut entry = (**new).clone();
            entry.status.clone_from(&old.status);
            Arc::new(Object::WorkloadEntry(Box::new(entry)))
        }
        _ => object,
    }
}

fn same_entry(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::WorkloadEntry(a), Object::WorkloadEntry(b)) => {
            a.spec == b.spec && a.metadata == b.metadata
        }
        _ => false,
    }
}

/// The entry's name: `<group>-<ip>`, then `-<network>` when the proxy has
/// one, `:` written `-`, at most 253 characters (the end kept), as
/// Istio's `autoregisteredWorkloadEntryName`.
pub fn entry_name(workload: &Workload) -> String {
    let mut parts = vec![workload.group.clone(), workload.ip.replace(':', "-")];
    if !workload.network.is_empty() {
        parts.push(workload.network.clone());
    }
    let name = parts.join("-");
    match name.char_indices().rev().nth(MAX_NAME - 1) {
        Some((at, _)) => name[at..].to_owned(),
        None => name,
    }
}

/// The WorkloadEntry of `workload` in `group`, as Istio's
/// `workloadEntryFromGroup`: the template with the proxy's address;
/// labels the template's, then the group's metadata labels, then the
/// proxy's (`istio-locality` left out); the group annotation and the
/// group's annotations; the proxy's network and locality when it has them;
/// owned by the group.
pub fn entry_from_group(
    template: &translator::model::WorkloadGroupTemplate,
    workload: &Workload,
) -> WorkloadEntry {
    let group = &template.group;
    let mut spec = group.template.clone();
    spec.address = Some(workload.ip.clone());
    let metadata = group.metadata.clone().unwrap_or_default();
    spec.labels.extend(metadata.labels);
    spec.labels.extend(
        workload
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != LOCALITY_LABEL)
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    if !workload.network.is_empty() {
        spec.network = Some(workload.network.clone());
    }
    if !workload.locality.is_empty() {
        spec.locality = Some(workload.locality.clone());
    }
    let mut annotations = BTreeMap::from([(GROUP_ANNOTATION.to_owned(), workload.group.clone())]);
    if group.probe.is_some() {
        // Its agent probes it: the endpoint serves once a probe succeeds.
        annotations.insert(
            crds::service_entry::HEALTH_CHECKS_ANNOTATION.to_owned(),
            "true".to_owned(),
        );
    }
    annotations.extend(metadata.annotations);
    WorkloadEntry {
        metadata: ObjectMeta {
            name: Some(entry_name(workload)),
            namespace: Some(workload.namespace.clone()),
            labels: Some(spec.labels.clone()),
            annotations: Some(annotations),
            // The group owns it (deleted with it), when the API server
            // gave the group a UID (it refuses a reference without one).
            owner_references: template.uid.as_ref().map(|uid| {
                vec![OwnerReference {
                    api_version: "networking.istio.io/v1".into(),
                    kind: "WorkloadGroup".into(),
                    name: workload.group.clone(),
                    uid: uid.clone(),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot::build(
            1,
            &crds::objects_of(&["apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: vms, namespace: shop}
spec:
  metadata: {labels: {app: ratings, tier: vm}, annotations: {team: a}}
  template: {serviceAccount: ratings, ports: {http: 9080}, labels: {tier: template, version: v1}}
"]),
            translator::model::MeshConfig::default(),
        )
    }

    #[test]
    fn abandoned_entries_are_those_istio_cleans_up() {
        let now: k8s_openapi::jiff::Timestamp = "2026-12-02T12:00:00Z".parse().unwrap();
        let grace = Duration::from_secs(10);
        let hour = Some(Duration::from_secs(3600));
        let marks = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let group = (GROUP_ANNOTATION, "vms");
        // Not auto-registered: never.
        assert!(!abandoned(
            &marks(&[(DISCONNECTED_AT_ANNOTATION, "2026-01-01T00:00:00Z")]),
            now,
            grace,
            hour
        ));
        // Disconnected: after the grace period.
        let gone = |at: &str| marks(&[group, (DISCONNECTED_AT_ANNOTATION, at)]);
        assert!(!abandoned(&gone("2026-12-02T11:59:55Z"), now, grace, hour));
        assert!(abandoned(&gone("2026-12-02T11:59:50Z"), now, grace, hour));
        assert!(abandoned(&gone("yesterday"), now, grace, hour));
        // Connected: only when older than the longest connection.
        let held = |at: &str| marks(&[group, (CONNECTED_AT_ANNOTATION, at)]);
        assert!(!abandoned(&held("2026-12-02T11:30:00Z"), now, grace, hour));
        assert!(abandoned(&held("2026-12-02T10:30:00Z"), now, grace, hour));
        assert!(!abandoned(&held("2026-12-02T10:30:00Z"), now, grace, None));
        // Neither mark: not ours to judge.
        assert!(!abandoned(&marks(&[group]), now, grace, hour));
    }

    fn vm(ip: &str) -> Workload {
        Workload {
            group: "vms".into(),
            namespace: "shop".into(),
            ip: ip.into(),
            labels: BTreeMap::from([
                ("version".into(), "v2".into()),
                (LOCALITY_LABEL.into(), "r.z".into()),
            ]),
            locality: "r/z".into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_is_made_from_the_group_as_istio_makes_it() {
        let group = &snapshot().workload_groups[0].spec;
        let entry = entry_from_group(group, &vm("10.0.0.7"));
        assert_eq!(entry.metadata.name.as_deref(), Some("vms-10.0.0.7"));
        assert_eq!(entry.spec.address.as_deref(), Some("10.0.0.7"));
        assert_eq!(entry.spec.service_account.as_deref(), Some("ratings"));
        assert_eq!(entry.spec.locality.as_deref(), Some("r/z"));
        // The proxy's labels over the group's over the template's.
        let labels: Vec<(&str, &str)> = entry
            .spec
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [("app", "ratings"), ("tier", "vm"), ("version", "v2")]
        );
        let annotations = entry.metadata.annotations.unwrap();
        assert_eq!(annotations[GROUP_ANNOTATION], "vms");
        assert_eq!(annotations["team"], "a");
        let mut v6 = vm("fd00::7");
        v6.network = "net2".into();
        assert_eq!(entry_name(&v6), "vms-fd00--7-net2");
        v6.group = "g".repeat(300);
        assert_eq!(entry_name(&v6).len(), MAX_NAME);
        assert!(entry_name(&v6).ends_with("-fd00--7-net2"));
    }

    #[tokio::test]
    async fn an_entry_outlives_its_connections_by_the_grace_period() {
        let registry = Registry::new(Duration::from_millis(100));
        let (tx, mut rx) = mpsc::channel(1);
        registry.notify(tx);
        let snap = snapshot();
        let missing = Workload {
            group: "nope".into(),
            ..vm("10.0.0.7")
        };
        assert_eq!(
            registry.connect(&snap, &missing).unwrap_err().to_string(),
            "auto-registration: no WorkloadGroup shop/nope"
        );
        let first = registry.connect(&snap, &vm("10.0.0.7")).unwrap();
        assert_eq!(first.key(), "shop/vms-10.0.0.7");
        assert!(rx.try_recv().is_ok(), "a new entry is signalled");
        let second = registry.connect(&snap, &vm("10.0.0.7")).unwrap();
        assert!(rx.try_recv().is_err(), "the same entry again: no change");
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(registry.objects().len(), 1, "one connection is left");
        drop(second);
        // A reconnect within the grace period keeps it.
        let again = registry.connect(&snap, &vm("10.0.0.7")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(registry.objects().len(), 1);
        drop(again);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(registry.objects().is_empty());
        assert!(rx.try_recv().is_ok(), "the removal is signalled");
    }

    #[tokio::test]
    async fn health_reports_gate_a_probed_groups_entry() {
        let probed = Snapshot::build(
            1,
            &crds::objects_of(&["apiVersion: networking.istio.io/v1
kind: WorkloadGroup
metadata: {name: vms, namespace: shop}
spec:
  template: {serviceAccount: ratings}
  probe: {httpGet: {path: /ready, port: 9080}}
"]),
            translator::model::MeshConfig::default(),
        );
        let entry = |registry: &Registry| match &*registry.objects()[0] {
            Object::WorkloadEntry(we) => (**we).clone(),
            other => panic!("{other:?}"),
        };
        // A group without a probe: not health-checked, healthy.
        let plain = Registry::new(Duration::from_secs(10));
        let _held = plain.connect(&snapshot(), &vm("10.0.0.8")).unwrap();
        assert!(entry(&plain).healthy() && !entry(&plain).health_checked());

        let registry = Registry::new(Duration::from_secs(10));
        let (tx, mut rx) = mpsc::channel(1);
        registry.notify(tx);
        let held = registry.connect(&probed, &vm("10.0.0.7")).unwrap();
        let _ = rx.try_recv();
        // Health-checked: unhealthy until the first report says otherwise.
        assert!(entry(&registry).health_checked());
        assert!(!entry(&registry).healthy());
        held.report_health(true, None);
        assert!(entry(&registry).healthy());
        assert!(rx.try_recv().is_ok(), "a change is signalled");
        held.report_health(true, None);
        assert!(rx.try_recv().is_err(), "the same report again: no change");
        held.report_health(false, Some("connection refused".into()));
        let we = entry(&registry);
        assert!(!we.healthy());
        let condition = &we.status.as_ref().unwrap().conditions[0];
        assert_eq!(
            (condition.type_.as_str(), condition.status.as_str()),
            ("Healthy", "False")
        );
        assert_eq!(condition.message.as_deref(), Some("connection refused"));
        // A reconnect keeps what was reported.
        let again = registry.connect(&probed, &vm("10.0.0.7")).unwrap();
        assert!(!entry(&registry).healthy());
        again.report_health(true, None);
        assert!(entry(&registry).healthy());
    }
}
