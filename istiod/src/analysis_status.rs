//! Analysis results in the API server, as istiod writes them with
//! `PILOT_ENABLE_ANALYSIS`: the leader runs the [`analysis`] analyzers
//! over the objects the published snapshot was built from, and writes each
//! Istio object's messages to its `status.validationMessages` (Istio's
//! `IstioStatus`: `documentationUrl`, `level` `ERROR` / `WARNING` / `INFO`,
//! `type.code`, `type.name`), so that `kubectl get virtualservice -o yaml`
//! shows them. An object whose messages are gone gets the field removed.
//!
//! Analysis runs at most once per interval (Istio's analysis is
//! debounced the same way), on the first snapshot after it; a failed
//! write is tried again on the next run. Only the `status` subresource's
//! `validationMessages` is written (a merge patch), so what else is in
//! `status` stays.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::sources::{Entry, SourceError};

/// How often, at most, the leader analyses (`--enable-analysis`).
pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The API groups whose objects get analysis status (Istio's kinds).
const ISTIO_GROUPS: [&str; 4] = [
    "/apis/networking.istio.io/",
    "/apis/security.istio.io/",
    "/apis/telemetry.istio.io/",
    "/apis/extensions.istio.io/",
];

/// Every analyzer over the objects a snapshot was built from (each
/// referenced by its file or API path) and the documents its load refused
/// (`IST0106`, not analysed further). ~25 ms of CPU at 1000 services
/// (docs/PERFORMANCE.md): run it off the runtime's workers.
pub fn analyze(objects: &[Entry], errors: &[SourceError]) -> Vec<analysis::Message> {
    let mut input = analysis::Input::new("default");
    for entry in objects {
        input.add_object(
            (*entry.object).clone(),
            Some(entry.file.display().to_string()),
        );
    }
    for e in errors {
        input.add_error(&e.file.display().to_string(), &e.error);
    }
    analysis::analyze(&input, analysis::ALL)
}

/// The `validationMessages` of each Istio object with messages, by its API
/// path (`/apis/networking.istio.io/v1/namespaces/default/virtualservices/reviews`).
pub fn validation_messages(
    objects: &[Entry],
    errors: &[SourceError],
) -> HashMap<String, serde_json::Value> {
    let mut out: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for m in analyze(objects, errors) {
        let Some(path) = m.resource.as_ref().and_then(|r| r.reference.as_deref()) else {
            continue;
        };
        if !ISTIO_GROUPS.iter().any(|g| path.starts_with(g)) {
            continue;
        }
        out.entry(path.to_owned())
            .or_default()
            .push(serde_json::json!({
                "documentationUrl": m.documentation_url(),
                "level": m.kind.level.as_str().to_ascii_uppercase(),
                "type": {"code": m.kind.code, "name": m.kind.name},
            }));
    }
    out.into_iter()
        .map(|(k, v)| (k, serde_json::Value::Array(v)))
        .collect()
}

/// Keeps the Istio objects' `status.validationMessages` equal to the
/// analysis of the published config while `leader` is true, analysing at
/// most once per `interval`; ends when `token` is cancelled.
pub async fn run(
    client: kube::Client,
    mut objects: watch::Receiver<Arc<Vec<Entry>>>,
    errors: watch::Receiver<Arc<Vec<SourceError>>>,
    mut leader: watch::Receiver<bool>,
    token: CancellationToken,
    interval: std::time::Duration,
) {
    // What this replica last wrote, by API path.
    let mut written: HashMap<String, serde_json::Value> = HashMap::new();
    let mut failed = false;
    loop {
        if *leader.borrow_and_update() {
            let current = objects.borrow_and_update().clone();
            let refused = errors.borrow().clone();
            let desired =
                tokio::task::spawn_blocking(move || validation_messages(&current, &refused))
                    .await
                    .unwrap_or_default();
            failed = false;
            // Objects whose messages are gone: the field removed.
            let cleared: Vec<String> = written
                .keys()
                .filter(|k| !desired.contains_key(*k))
                .cloned()
                .collect();
            for path in cleared {
                match write(&client, &path, &serde_json::Value::Null).await {
                    Ok(()) => {
                        written.remove(&path);
                    }
                    Err(e) if is_gone(&e) => {
                        written.remove(&path);
                    }
                    Err(e) => {
                        failed = true;
                        warn!(%path, error = %e, "validation messages not cleared; will retry");
                    }
                }
            }
            for (path, messages) in &desired {
                if written.get(path) == Some(messages) {
                    continue;
                }
                match write(&client, path, messages).await {
                    Ok(()) => {
                        debug!(%path, "validation messages written");
                        written.insert(path.clone(), messages.clone());
                    }
                    Err(e) => {
                        failed = true;
                        warn!(%path, error = %e, "validation messages not written; will retry");
                    }
                }
            }
        } else {
            written.clear();
        }
        // At most one run per interval; then wait for a change (or retry).
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = token.cancelled() => break,
        }
        if failed {
            continue;
        }
        tokio::select! {
            r = objects.changed() => if r.is_err() { break },
            r = leader.changed() => if r.is_err() { break },
            () = token.cancelled() => break,
        }
    }
}

/// Whether the object is not there (deleted meanwhile).
fn is_gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Merge-patches `{"status": {"validationMessages": messages}}` into the
/// `status` subresource of the object at `path` (`null` removes the field).
async fn write(
    client: &kube::Client,
    path: &str,
    messages: &serde_json::Value,
) -> kube::Result<()> {
    let body = serde_json::json!({"status": {"validationMessages": messages}});
    let request = http::Request::patch(format!("{path}/status"))
        .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
        .body(serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?)
        .map_err(kube::Error::HttpError)?;
    client
        .request::<serde_json::Value>(request)
        .await
        .map(|_| ())
}
