//! Istio's admission webhooks.
//!
//! - [`inject`]: sidecar injection as Istio's default `sidecar` template
//!   renders it (the `istio-init` and `istio-proxy` containers, volumes,
//!   labels and annotations), applied to a Pod by the webhook (`/inject`,
//!   a JSON Patch) or to whole manifests (`kube-inject`).
//! - [`server`]: the axum router serving `/inject` and `/validate` with
//!   `admission.k8s.io/v1` `AdmissionReview`s.
//!
//! Istio's injection settings come from the `istio-sidecar-injector`
//! ConfigMap's `values` (the istio-discovery chart's values) and the mesh
//! config's `defaultConfig` ([`inject::InjectionConfig`]).

pub mod inject;
pub mod server;
