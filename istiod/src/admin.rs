//! The monitoring port (Istio's 15014): `/metrics`, `/ready`, and istiod's
//! debug endpoints `/debug/syncz`, `/debug/config_dump?proxyID=`,
//! `/debug/registryz`, `/debug/configz`, `/debug/analyze`, all JSON but
//! `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prost_reflect::DynamicMessage;
use serde_json::{Value, json};
use tokio::sync::watch;
use translator::model::Snapshot;

use crate::metrics::Metrics;
use crate::xds::SyncTable;

/// What the endpoints read.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Metrics to encode.
    pub metrics: Arc<Metrics>,
    /// Connected proxies.
    pub sync: SyncTable,
    /// The current snapshot.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Set once the initial config is loaded and ADS serves.
    pub ready: Arc<AtomicBool>,
    /// The objects the current snapshot was built from.
    pub objects: watch::Receiver<Arc<Vec<crate::sources::Entry>>>,
    /// The documents its load refused.
    pub errors: watch::Receiver<Arc<Vec<crate::sources::SourceError>>>,
}

/// The router of the monitoring port.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .route("/debug/syncz", get(syncz))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/registryz", get(registryz))
        .route("/debug/configz", get(configz))
        .route("/debug/analyze", get(analyze))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        s.metrics.encode(),
    )
        .into_response()
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Each proxy's sent and ACKed nonces per type, as istiod's `syncz`, and
/// when it last converged: `converged` = {`snapshot_version`, `seconds`
/// from the change to the proxy's ACK of all of it}.
async fn syncz(State(s): State<AdminState>) -> Json<Value> {
    let table = s.sync.rows();
    let rows: Vec<Value> = table
        .iter()
        .map(|(node, p)| {
            let mut row = json!({ "proxy": node, "snapshot_version": p.snapshot_version, "synced": p.in_sync() });
            for (type_url, t) in p.types.iter() {
                let short = Metrics::type_label(type_url).r#type;
                let name = match short {
                    "cds" => "cluster",
                    "eds" => "endpoint",
                    "lds" => "listener",
                    "rds" => "route",
                    "sds" => "secret",
                    other => other,
                };
                row[format!("{name}_sent")] = json!(t.sent_nonce);
                row[format!("{name}_acked")] = json!(t.acked_nonce);
                if let Some(nack) = &t.nack {
                    row[format!("{name}_nack")] = json!(nack);
                }
            }
            // Not in istiod's syncz: this proxy's last convergence, its
            // sample of `pilot_proxy_convergence_time`.
            if let Some(c) = &p.converged {
                row["converged"] =
                    json!({ "snapshot_version": c.snapshot_version, "seconds": c.seconds });
            }
            row
        })
        .collect();
    Json(Value::Array(rows))
}

#[derive(serde::Deserialize)]
struct DumpQuery {
    #[serde(rename = "proxyID")]
    proxy_id: String,
}

/// What the daemon would send a connected proxy now, as Envoy's JSON.
/// Secrets are listed by name only, and WasmPlugins' registry logins in
/// extension configs are redacted: key material is never dumped.
async fn config_dump(State(s): State<AdminState>, Query(q): Query<DumpQuery>) -> Response {
    let proxy = s
        .sync
        .proxy(|node| node == q.proxy_id || node.split('~').nth(2) == Some(q.proxy_id.as_str()));
    let Some(proxy) = proxy else {
        return (
            StatusCode::NOT_FOUND,
            format!("no connected proxy {:?}\n", q.proxy_id),
        )
            .into_response();
    };
    let snap = s.snapshots.borrow().clone();
    let output = translator::generate(&snap, &proxy);
    let mut dump = json!({ "proxy": q.proxy_id, "snapshot_version": snap.version });
    for (key, type_url) in [
        ("clusters", translator::CLUSTER_TYPE),
        ("endpoints", translator::ENDPOINT_TYPE),
        ("listeners", translator::LISTENER_TYPE),
        ("routes", translator::ROUTE_TYPE),
        ("extension_configs", translator::EXTENSION_CONFIG_TYPE),
    ] {
        let items: Vec<Value> = output
            .resources(type_url)
            .into_iter()
            .map(|(name, any)| {
                render(&any.type_url, &any.value)
                    .unwrap_or_else(|| json!({ "name": name, "bytes": any.value.len() }))
            })
            .collect();
        dump[key] = Value::Array(items);
    }
    redact(&mut dump["extension_configs"]);
    dump["secrets"] = json!(output.secrets.iter().map(|s| &s.name).collect::<Vec<_>>());
    dump["warnings"] = json!(
        output
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
    );
    Json(dump).into_response()
}

/// Replaces the value of every [`translator::wasm::PULL_SECRET_ENV`] key
/// below `v`.
fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == translator::wasm::PULL_SECRET_ENV {
                    *v = Value::String("(redacted)".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn render(type_url: &str, bytes: &[u8]) -> Option<Value> {
    let pool = translator::envoy_filter::descriptors()?;
    let desc = pool.get_message_by_name(type_url.trim_start_matches("type.googleapis.com/"))?;
    let msg = DynamicMessage::decode(desc, bytes).ok()?;
    serde_json::to_value(&msg).ok()
}

/// `istioctl analyze` over the config in force: every analyzer of the
/// [`analysis`] crate over the objects the current snapshot was built from
/// (each referenced by its file, or its API path), and the documents the
/// load refused as `SchemaValidationError`s. A JSON array as istioctl's
/// `-o json` (`code`, `documentationUrl`, `level`, `message`, `origin`,
/// `reference`), sorted by object.
async fn analyze(State(s): State<AdminState>) -> Json<Value> {
    let objects = s.objects.borrow().clone();
    let errors = s.errors.borrow().clone();
    let messages =
        tokio::task::spawn_blocking(move || crate::analysis_status::analyze(&objects, &errors))
            .await
            .unwrap_or_default();
    Json(Value::Array(messages.iter().map(|m| m.to_json()).collect()))
}

/// Services in the registry.
async fn registryz(State(s): State<AdminState>) -> Json<Value> {
    let snap = s.snapshots.borrow().clone();
    let rows: Vec<Value> = snap
        .services
        .values()
        .map(|svc| {
            json!({
                "hostname": svc.hostname,
                "namespace": svc.namespace,
                "addresses": svc.vips,
                "ports": svc.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": format!("{:?}", p.protocol)})).collect::<Vec<_>>(),
                "resolution": format!("{:?}", svc.resolution),
                "exportTo": svc.export_to,
                "endpoints": svc.endpoints.iter().map(|e| json!({
                    "address": e.address, "ports": &*e.ports, "labels": &*e.labels, "ready": e.ready, "locality": e.locality,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(Value::Array(rows))
}

/// `{kind, namespace, name, spec}` of each of `configs`, its spec as
/// `spec` gives it (`null` if it does not serialize).
fn rows_of<S, T: serde::Serialize>(
    rows: &mut Vec<Value>,
    kind: &str,
    configs: &[translator::model::Config<S>],
    spec: impl Fn(&S) -> &T,
) {
    rows.extend(configs.iter().map(|c| {
        json!({
            "kind": kind, "namespace": c.namespace, "name": c.name,
            "spec": serde_json::to_value(spec(&c.spec)).unwrap_or(Value::Null),
        })
    }));
}

/// Istio configs in force: the networking kinds (ServiceEntries appear in
/// the registry) and the security kinds, each as `{kind, namespace, name,
/// spec}`.
async fn configz(State(s): State<AdminState>) -> Json<Value> {
    let snap = s.snapshots.borrow().clone();
    let mut rows = Vec::new();
    rows_of(&mut rows, "VirtualService", &snap.virtual_services, |s| s);
    rows_of(&mut rows, "DestinationRule", &snap.destination_rules, |s| s);
    rows_of(&mut rows, "Gateway", &snap.gateways, |s| s);
    rows_of(&mut rows, "Sidecar", &snap.sidecars, |s| s);
    rows_of(&mut rows, "EnvoyFilter", &snap.envoy_filters, |s| s);
    rows_of(
        &mut rows,
        "PeerAuthentication",
        &snap.peer_authentications,
        |s| s,
    );
    rows_of(
        &mut rows,
        "AuthorizationPolicy",
        &snap.authorization_policies,
        |p| &p.spec,
    );
    rows_of(
        &mut rows,
        "RequestAuthentication",
        &snap.request_authentications,
        |s| s,
    );
    rows_of(&mut rows, "Telemetry", &snap.telemetries, |s| s);
    rows_of(&mut rows, "WasmPlugin", &snap.wasm_plugins, |s| s);
    Json(json!({ "version": snap.version, "configs": rows }))
}
