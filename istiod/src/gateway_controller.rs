//! The Gateway API's writes to the API server, by the leader replica only,
//! as istiod's gateway controller makes them:
//!
//! - the automated deployment of each managed Gateway (Istio's
//!   `DeploymentController`): its ServiceAccount, Deployment and Service
//!   ([`translator::gateway_api::deployment`]), server-side applied (field
//!   manager `istiod-rs`) whenever they change, and again every recheck
//!   interval ([`RECHECK`] by default), so that what was deleted or edited
//!   by hand comes back (applying an unchanged object changes nothing); the
//!   gateway pods are then completed by the injector
//!   (`inject.istio.io/templates: gateway`);
//! - the status of the Gateway API objects it implements (GatewayClasses,
//!   Gateways, HTTPRoutes, GRPCRoutes, TCPRoutes, TLSRoutes,
//!   BackendTLSPolicies), and the load balancer addresses of the
//!   Kubernetes Ingresses it serves ([`translator::ingress`]): whenever what
//!   the translator computed for one
//!   ([`translator::gateway_api::Generated::status`]) changes, the object
//!   is read and its `status` subresource merge-patched, on the condition
//!   that it has not changed since it was read (its `resourceVersion`).
//!   `kubectl get gateway` then shows it programmed, and
//!   `kubectl wait --for=condition=programmed` returns.
//!
//! A condition keeps the `lastTransitionTime` the object holds while its
//! `status` stays the same, and gets the write's time when it changes. A
//! route's `parents` (a policy's `ancestors`) written by other controllers
//! are kept (ours, by `controllerName`, are replaced). A new leader writes everything once. A
//! failed write (a conflicting one included) is retried on the next
//! snapshot, or after the recheck interval.

use std::collections::HashMap;
use std::sync::Arc;

use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use translator::model::Snapshot;

/// How often failed writes are tried again without a new snapshot.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// The field manager of the applied objects.
const FIELD_MANAGER: &str = "istiod-rs";

/// Keeps the API server's gateway deployments and statuses equal to the
/// published snapshots' while `leader` is true, applying the deployments
/// again every `recheck`; ends when `token` is cancelled.
pub async fn run(
    client: kube::Client,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut leader: watch::Receiver<bool>,
    token: CancellationToken,
    recheck: std::time::Duration,
) {
    // What this replica last wrote, by object: written again only when it differs.
    let mut written: HashMap<(String, String, String), serde_json::Value> = HashMap::new();
    let mut deployed: HashMap<(String, String), Vec<serde_json::Value>> = HashMap::new();
    let mut reapplied = tokio::time::Instant::now();
    loop {
        if *leader.borrow_and_update() {
            if reapplied.elapsed() >= recheck {
                // Everything is applied again: hand edits and deletions undone.
                deployed.clear();
                reapplied = tokio::time::Instant::now();
            }
            let snap = snapshots.borrow_and_update().clone();
            for (key, objects) in &snap.gateway_api.deployments {
                if deployed.get(key) == Some(objects) {
                    continue;
                }
                let mut all = true;
                for object in objects {
                    if let Err(e) = apply(&client, object).await {
                        all = false;
                        warn!(gateway = %format!("{}/{}", key.0, key.1), kind = %object["kind"], error = %e, "gateway deployment not applied; will retry");
                    }
                }
                if all {
                    debug!(gateway = %format!("{}/{}", key.0, key.1), "gateway deployment applied");
                    deployed.insert(key.clone(), objects.clone());
                }
            }
            deployed.retain(|k, _| snap.gateway_api.deployments.contains_key(k));
            let desired = &snap.gateway_api.status;
            for (key, status) in desired {
                if written.get(key) == Some(status) {
                    continue;
                }
                match patch(&client, key, status).await {
                    Ok(()) => {
                        debug!(collection = %key.0, namespace = %key.1, name = %key.2, "status written");
                        written.insert(key.clone(), status.clone());
                    }
                    Err(e) => {
                        warn!(collection = %key.0, namespace = %key.1, name = %key.2, error = %e, "status not written; will retry");
                    }
                }
            }
            written.retain(|k, _| desired.contains_key(k));
        } else {
            written.clear();
            deployed.clear();
        }
        tokio::select! {
            r = snapshots.changed() => if r.is_err() { break },
            r = leader.changed() => if r.is_err() { break },
            () = tokio::time::sleep(recheck) => {}
            () = token.cancelled() => break,
        }
    }
}

/// Server-side apply of one object (`apiVersion`, `kind`, `metadata.name`
/// and `namespace` set).
async fn apply(client: &kube::Client, object: &serde_json::Value) -> kube::Result<()> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map(|_| ())
}

/// Writes one object's `status` subresource: reads the object, then
/// merge-patches its status ([`merged_status`]) on the condition that its
/// `resourceVersion` is still the one read (a conflict is an error, the
/// write retried later).
async fn patch(
    client: &kube::Client,
    (collection, namespace, name): &(String, String, String),
    status: &serde_json::Value,
) -> kube::Result<()> {
    let (api_version, plural) = collection.rsplit_once('/').unwrap_or(("", collection));
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = match plural {
        "gatewayclasses" => "GatewayClass",
        "gateways" => "Gateway",
        "httproutes" => "HTTPRoute",
        "grpcroutes" => "GRPCRoute",
        "tcproutes" => "TCPRoute",
        "tlsroutes" => "TLSRoute",
        "backendtlspolicies" => "BackendTLSPolicy",
        "xbackendtrafficpolicies" => "XBackendTrafficPolicy",
        "listenersets" => "ListenerSet",
        "xlistenersets" => "XListenerSet",
        "ingresses" => "Ingress",
        other => other,
    };
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let at = |resource: &ApiResource| -> Api<DynamicObject> {
        if namespace.is_empty() {
            Api::all_with(client.clone(), resource)
        } else {
            Api::namespaced_with(client.clone(), namespace, resource)
        }
    };
    let mut api = at(&resource);
    let current = match api.get(name).await {
        // TLSRoute: `v1` since Gateway API 1.5 (its standard channel serves
        // nothing else), `v1alpha2` before; the watch reads whichever is
        // served, and so is the status written.
        Err(kube::Error::Api(e)) if e.code == 404 && plural == "tlsroutes" => {
            let other = if version == "v1" { "v1alpha2" } else { "v1" };
            let fallback = ApiResource {
                version: other.into(),
                api_version: format!("{group}/{other}"),
                ..resource.clone()
            };
            api = at(&fallback);
            api.get(name).await?
        }
        other => other?,
    };
    let now = format!("{:.0}", k8s_openapi::jiff::Timestamp::now());
    let body = serde_json::json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "status": merged_status(current.data.get("status"), status, &now),
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
}

/// The status to write: `desired` with each condition's
/// `lastTransitionTime` (the one `current` holds for the same condition
/// type with the same `status`, else `now`, RFC 3339 in seconds), for its
/// own conditions, its listeners' (by name), its parents' and ancestors'
/// (by reference); and `current`'s route parents and policy ancestors of
/// other controllers kept.
fn merged_status(
    current: Option<&serde_json::Value>,
    desired: &serde_json::Value,
    now: &str,
) -> serde_json::Value {
    use serde_json::Value;
    let current = current.unwrap_or(&Value::Null);
    let stamp = |conditions: Option<&mut Value>, before: &Value| {
        for c in conditions
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let kept = before
                .as_array()
                .into_iter()
                .flatten()
                .find(|b| b["type"] == c["type"] && b["status"] == c["status"])
                .and_then(|b| b.get("lastTransitionTime"))
                .filter(|t| t.is_string());
            c["lastTransitionTime"] = kept.cloned().unwrap_or_else(|| now.into());
        }
    };
    let mut out = desired.clone();
    stamp(out.get_mut("conditions"), &current["conditions"]);
    let before = |list: &str, same: &dyn Fn(&Value) -> bool| -> Value {
        current[list]
            .as_array()
            .into_iter()
            .flatten()
            .find(|item| same(item))
            .map_or(Value::Null, |item| item["conditions"].clone())
    };
    for l in out
        .get_mut("listeners")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        let name = l["name"].clone();
        stamp(
            l.get_mut("conditions"),
            &before("listeners", &|b| b["name"] == name),
        );
    }
    // A route's parents, a policy's ancestors: ours replaced, others kept.
    let ours = [
        crds::gateway_api::CONTROLLER_NAME,
        translator::gateway_api::MESH_CONTROLLER,
    ];
    for (list, reference) in [("parents", "parentRef"), ("ancestors", "ancestorRef")] {
        let Some(items) = out.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for p in items.iter_mut() {
            let (target, controller) = (p[reference].clone(), p["controllerName"].clone());
            let was = before(list, &|b| {
                b["controllerName"] == controller && same_parent(&b[reference], &target)
            });
            stamp(p.get_mut("conditions"), &was);
        }
        let others = current[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| !ours.iter().any(|c| p["controllerName"] == *c));
        let mut all: Vec<Value> = others.cloned().collect();
        all.append(items);
        *items = all;
    }
    out
}

/// Whether two `parentRef`s name the same parent, the API server's defaults
/// (`group` `gateway.networking.k8s.io`, `kind` `Gateway`) filled in.
fn same_parent(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let defaults = [
        ("group", crds::gateway_api::GROUP),
        ("kind", "Gateway"),
        ("namespace", ""),
        ("sectionName", ""),
        ("name", ""),
    ];
    defaults.iter().all(|(field, default)| {
        let of = |v: &serde_json::Value| v[*field].as_str().unwrap_or(default).to_owned();
        of(a) == of(b)
    }) && a["port"] == b["port"]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_gets_a_transition_time() {
        let status = serde_json::json!({
            "conditions": [{"type": "Accepted"}],
            "listeners": [{"name": "http", "conditions": [{"type": "Programmed"}]}],
            "parents": [{"conditions": [{"type": "ResolvedRefs"}]}],
        });
        let now = format!("{:.0}", k8s_openapi::jiff::Timestamp::now());
        let stamped = merged_status(None, &status, &now);
        for c in [
            &stamped["conditions"][0],
            &stamped["listeners"][0]["conditions"][0],
            &stamped["parents"][0]["conditions"][0],
        ] {
            let t = c["lastTransitionTime"].as_str().unwrap_or_default();
            assert!(t.ends_with('Z') && !t.contains('.') && t.len() == 20, "{t}");
        }
    }

    #[test]
    fn unchanged_conditions_keep_their_time_and_other_controllers_parents_stay() {
        let old = "2026-01-01T00:00:00Z";
        let ours = crds::gateway_api::CONTROLLER_NAME;
        let current = serde_json::json!({
            "conditions": [
                {"type": "Accepted", "status": "True", "lastTransitionTime": old},
                {"type": "Programmed", "status": "False", "lastTransitionTime": old},
            ],
            "listeners": [{"name": "http", "conditions": [
                {"type": "Programmed", "status": "True", "lastTransitionTime": old},
            ]}],
            "parents": [
                {"parentRef": {"name": "mesh-gw", "group": "gateway.networking.k8s.io", "kind": "Gateway"},
                 "controllerName": "example.com/other",
                 "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": old}]},
                {"parentRef": {"name": "gw", "group": "gateway.networking.k8s.io", "kind": "Gateway"},
                 "controllerName": ours,
                 "conditions": [{"type": "Accepted", "status": "True", "lastTransitionTime": old}]},
            ],
        });
        let desired = serde_json::json!({
            "conditions": [
                {"type": "Accepted", "status": "True"},
                {"type": "Programmed", "status": "True"},
            ],
            "listeners": [{"name": "http", "conditions": [{"type": "Programmed", "status": "True"}]}],
            "parents": [{"parentRef": {"name": "gw"}, "controllerName": ours,
                         "conditions": [{"type": "Accepted", "status": "True"}]}],
        });
        let now = "2026-12-02T00:00:00Z";
        let out = merged_status(Some(&current), &desired, now);
        let time = |c: &serde_json::Value| c["lastTransitionTime"].as_str().unwrap().to_owned();
        assert_eq!(time(&out["conditions"][0]), old, "unchanged");
        assert_eq!(time(&out["conditions"][1]), now, "False to True");
        assert_eq!(time(&out["listeners"][0]["conditions"][0]), old);
        let parents = out["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2, "{out}");
        assert_eq!(parents[0]["controllerName"], "example.com/other");
        assert_eq!(parents[1]["parentRef"], serde_json::json!({"name": "gw"}));
        assert_eq!(
            time(&parents[1]["conditions"][0]),
            old,
            "the same parent, the API server's defaults aside"
        );
    }
}
