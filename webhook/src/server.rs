//! The admission webhooks as an axum router: `POST /inject` (Istio also
//! serves `/inject/<anything>`) and `POST /validate`, each taking and
//! returning an `admission.k8s.io/v1` `AdmissionReview`.
//!
//! - `/inject`: Pods only. A pod the policy selects gets a JSON Patch that
//!   adds the sidecar ([`crate::inject`]); one it leaves alone is allowed
//!   unchanged; one whose injection fails is refused with the reason
//!   (Istio's behaviour: no pod is created without the policy applied).
//! - `/validate`: the Istio kinds this control plane reads, checked as
//!   istiod checks them: the schema (unknown fields refused), then the
//!   semantic rules of `crds::validate`. A denial names the object and field.
//!
//! A body that is not an `AdmissionReview` gets HTTP 400 with the reason
//! (the API server then applies the webhook's `failurePolicy`); bodies over
//! [`MAX_BODY_BYTES`] get 413. Nothing here panics on input.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::Value;
use tracing::{info, warn};

use crate::inject::{InjectionConfig, PodContext, inject_pod, inject_required};

/// The largest request body accepted, bytes (the API server's own limit
/// for an object is 3 MiB; a review carries it and the old object).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A namespace's annotations, by name (None: unknown namespace).
pub type NamespaceAnnotations =
    Arc<dyn Fn(&str) -> Option<std::collections::BTreeMap<String, String>> + Send + Sync>;

/// What the webhooks need.
#[derive(Clone)]
pub struct Webhooks {
    /// The injector's configuration.
    pub injection: Arc<InjectionConfig>,
    /// Istio's injection `policy`: `enabled` (inject unless the pod opts
    /// out) or `disabled` (only pods that opt in).
    pub policy_enabled: bool,
    /// On OpenShift (Istio's `PLATFORM=openshift`), where the proxy's uid
    /// and gid come from: the pod namespace's annotations.
    pub openshift_namespaces: Option<NamespaceAnnotations>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("injection", &self.injection)
            .field("policy_enabled", &self.policy_enabled)
            .field("openshift", &self.openshift_namespaces.is_some())
            .finish()
    }
}

/// The router: `/inject`, `/inject/*`, `/validate`.
pub fn router(webhooks: Webhooks) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/inject/{*rest}", post(inject))
        .route("/validate", post(validate))
        .route("/validate/", post(validate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(webhooks))
}

/// The body as an `AdmissionReview` request, or the HTTP error to answer.
fn review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, Box<Response>> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("not an admission.k8s.io/v1 AdmissionReview: {e}"),
            )
                .into_response()
        })
        .map_err(Box::new)?;
    review
        .try_into()
        .map_err(|e: kube::core::admission::ConvertAdmissionReviewError| {
            (
                StatusCode::BAD_REQUEST,
                format!("AdmissionReview without a request: {e}"),
            )
                .into_response()
        })
        .map_err(Box::new)
}

/// The review as the API server expects it. kube-core writes `patch` as a
/// JSON array of bytes; Kubernetes' Go type is `[]byte`, which Go's JSON
/// (and Istio) write as base64, so it is written that way here.
fn respond(response: AdmissionResponse) -> Response {
    let mut review = match serde_json::to_value(response.into_review()) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("review not serialisable: {e}"),
            )
                .into_response();
        }
    };
    if let Some(patch) = review.pointer_mut("/response/patch")
        && let Some(bytes) = patch.as_array().map(|items| {
            items
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Vec<u8>>()
        })
    {
        *patch = Value::String(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            bytes,
        ));
    }
    axum::Json(review).into_response()
}

async fn inject(State(hooks): State<Arc<Webhooks>>, body: Bytes) -> Response {
    let req = match review(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    respond(inject_review(&hooks, &req))
}

/// The injection answer for one request.
fn inject_review(hooks: &Webhooks, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(req);
    if req.kind.kind != "Pod" || !req.kind.group.is_empty() {
        return allowed;
    }
    let Some(object) = &req.object else {
        return allowed.deny("the request carries no Pod");
    };
    let pod = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return allowed.deny(format!("the Pod cannot be read: {e}")),
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| object.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    if !inject_required(&pod, &namespace, hooks.policy_enabled) {
        return allowed;
    }
    let mut ctx = workload_of(&pod, &namespace);
    if let Some(lookup) = &hooks.openshift_namespaces {
        ctx.proxy_ids = lookup(&namespace).and_then(|a| crate::inject::openshift_ids(&a));
    }
    let injected = match inject_pod(&pod, &ctx, &hooks.injection) {
        Ok(p) => p,
        Err(e) => {
            warn!(namespace, workload = %ctx.workload_name, error = %e, "injection refused");
            return allowed.deny(format!("injection failed: {e}"));
        }
    };
    let patch = json_patch::diff(&pod, &injected);
    info!(namespace, workload = %ctx.workload_name, operations = patch.0.len(), "sidecar injected");
    match allowed.with_patch(patch) {
        Ok(r) => r,
        Err(e) => AdmissionResponse::from(req).deny(format!("patch not serialisable: {e}")),
    }
}

/// What the injector knows of the pod's workload, as Istio derives it from
/// the controller owner: a ReplicaSet named `<deployment>-<pod-template-hash>`
/// is its Deployment; a Job created by a CronJob keeps the Job; a pod
/// without an owner is its own workload (its name, else `generateName`
/// without the trailing `-`).
pub fn workload_of(pod: &Value, namespace: &str) -> PodContext {
    let meta = pod.get("metadata");
    let owner = meta
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .and_then(|owners| {
            owners
                .iter()
                .find(|o| o.get("controller").and_then(Value::as_bool) == Some(true))
                .or_else(|| owners.first())
        });
    let text = |v: Option<&Value>, k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (name, api_version, kind) = match owner {
        Some(o) => {
            let (name, kind, api) = (
                text(Some(o), "name"),
                text(Some(o), "kind"),
                text(Some(o), "apiVersion"),
            );
            let hash = meta
                .and_then(|m| m.get("labels"))
                .and_then(|l| l.get("pod-template-hash"))
                .and_then(Value::as_str);
            match (kind.as_str(), hash) {
                ("ReplicaSet", Some(h)) if name.ends_with(&format!("-{h}")) => (
                    name.trim_end_matches(&format!("-{h}")).to_owned(),
                    "apps/v1".to_owned(),
                    "Deployment".to_owned(),
                ),
                _ => (name, api, kind),
            }
        }
        None => {
            let name = text(meta, "name");
            let name = if name.is_empty() {
                text(meta, "generateName").trim_end_matches('-').to_owned()
            } else {
                name
            };
            (name, "v1".to_owned(), "Pod".to_owned())
        }
    };
    PodContext {
        namespace: namespace.to_owned(),
        workload_name: name,
        workload_type: (api_version, kind),
        proxy_ids: None,
    }
}

async fn validate(body: Bytes) -> Response {
    let req = match review(&body) {
        Ok(r) => r,
        Err(resp) => return *resp,
    };
    respond(validate_review(&req))
}

/// The validation answer for one request: deletes are allowed; objects of
/// the kinds this control plane reads must parse strictly and pass
/// `crds::validate`; other kinds are allowed (not this webhook's business).
pub fn validate_review(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let allowed = AdmissionResponse::from(req);
    let Some(object) = &req.object else {
        return allowed;
    };
    let value = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return allowed.deny(format!("the object cannot be read: {e}")),
    };
    let namespace = req.namespace.clone().unwrap_or_else(|| "default".into());
    match validate_object(value, &namespace) {
        Ok(warnings) if warnings.is_empty() => allowed,
        Ok(warnings) => {
            let mut response = allowed;
            response.warnings = Some(warnings);
            response
        }
        Err(reason) => {
            info!(kind = %req.kind.kind, name = %req.name, %reason, "config refused");
            allowed.deny(reason)
        }
    }
}

/// Validates one object as `/validate` does: `Ok` with the warnings Istio's
/// validation gives (a VirtualService's unreachable rules and ineffective
/// matches, returned with the admission as Istio's webhook returns them);
/// `Err` is the denial message (naming the object and the field).
///
/// # Errors
/// The schema or semantic problem found first.
pub fn validate_object(value: Value, namespace: &str) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for parsed in crds::document::parse_value(value, namespace) {
        match parsed {
            Ok(object) => {
                crds::validate::validate(&object).map_err(|e| e.to_string())?;
                warnings.extend(analysis::validation_warnings(&object));
            }
            Err(crds::ParseError::UnsupportedKind { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(warnings)
}
