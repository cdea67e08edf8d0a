//! The Gateway API's writes to the API server, by the leader replica only,
//! as istiod's gateway controller makes them:
//!
//! - the automated deployment of each managed Gateway (Istio's
//!   `DeploymentController`): its ServiceAccount, Deployment and Service
//!   ([`translator::gateway_api::deployment`]), server-side applied (field
//!   manager `istiod-rs`) whenever they change; the gateway pods are then
//!   completed by the injector (`inject.istio.io/templates: gateway`);
//! - the status of the Gateway API objects it implements (GatewayClasses,
//!   Gateways, HTTPRoutes, GRPCRoutes): a merge patch of each object's
//!   `status` subresource whenever what the translator computed for it
//!   ([`translator::gateway_api::Generated::status`]) changes.
//!   `kubectl get gateway` then shows it programmed, and
//!   `kubectl wait --for=condition=programmed` returns.
//!
//! Conditions get their `lastTransitionTime` when written (a status is only
//! written when it changed, so the time is the change's). A new leader
//! writes everything once. A failed write is retried on the next snapshot,
//! or after [`RECHECK`].

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
/// published snapshots' while `leader` is true; ends when `token` is
/// cancelled.
pub async fn run(
    client: kube::Client,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut leader: watch::Receiver<bool>,
    token: CancellationToken,
) {
    // What this replica last wrote, by object: written again only when it differs.
    let mut written: HashMap<(String, String, String), serde_json::Value> = HashMap::new();
    let mut deployed: HashMap<(String, String), Vec<serde_json::Value>> = HashMap::new();
    loop {
        if *leader.borrow_and_update() {
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
            () = tokio::time::sleep(RECHECK) => {}
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

/// The merge patch of one object's `status` subresource.
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
        other => other,
    };
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let api: Api<DynamicObject> = if namespace.is_empty() {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), namespace, &resource)
    };
    let body = serde_json::json!({ "status": with_times(status) });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
}

/// `status` with `lastTransitionTime` (now, RFC 3339 in seconds) on each
/// of its conditions, its listeners' and its parents'.
fn with_times(status: &serde_json::Value) -> serde_json::Value {
    let now = format!("{:.0}", k8s_openapi::jiff::Timestamp::now());
    let mut status = status.clone();
    let stamp = |conditions: Option<&mut serde_json::Value>| {
        for c in conditions
            .and_then(|c| c.as_array_mut())
            .into_iter()
            .flatten()
        {
            c["lastTransitionTime"] = now.clone().into();
        }
    };
    stamp(status.get_mut("conditions"));
    for list in ["listeners", "parents"] {
        if let Some(items) = status.get_mut(list).and_then(|l| l.as_array_mut()) {
            for item in items {
                stamp(item.get_mut("conditions"));
            }
        }
    }
    status
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
        let stamped = with_times(&status);
        for c in [
            &stamped["conditions"][0],
            &stamped["listeners"][0]["conditions"][0],
            &stamped["parents"][0]["conditions"][0],
        ] {
            let t = c["lastTransitionTime"].as_str().unwrap_or_default();
            assert!(t.ends_with('Z') && !t.contains('.') && t.len() == 20, "{t}");
        }
    }
}
