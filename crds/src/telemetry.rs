//! `telemetry.istio.io` Telemetry: which tracing and access logging
//! providers a workload's proxy uses, and how. Follows
//! `istio.telemetry.v1.Telemetry` field for field.
//!
//! Scope as Istio's: one Telemetry without a `selector` in the root
//! namespace (the mesh), one in a namespace (that namespace), and one whose
//! `selector` picks the workload; the more specific level overrides the
//! less specific one, field by field. Providers are named
//! `extensionProviders` of the mesh config (and Istio's built-in `envoy`
//! access log to the proxy's standard output).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::MatchLabelSelector;
use crate::authorization_policy::PolicyTargetReference;

/// Istio `Telemetry` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "telemetry.istio.io",
    version = "v1",
    kind = "Telemetry",
    namespaced,
    shortname = "telemetry"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    /// The workloads this applies to (`matchLabels`); none: the namespace
    /// (the mesh, in the root namespace).
    #[serde(default)]
    pub selector: Option<MatchLabelSelector>,
    /// A Gateway API gateway or a waypoint's service (instead of `selector`).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several of `targetRef`.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Tracing settings; later entries override earlier ones.
    #[serde(default)]
    pub tracing: Vec<Tracing>,
    /// Metrics settings (Istio's stats filter, which this control plane's
    /// Envoy does not have: read and reported).
    #[serde(default)]
    pub metrics: Vec<Metrics>,
    /// Access logging settings.
    #[serde(default)]
    pub access_logging: Vec<AccessLogging>,
}

/// Istio `WorkloadMode`: which side of the proxy's traffic a setting is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadMode {
    /// Both (the default).
    #[default]
    ClientAndServer,
    /// Requests the workload makes (sidecar outbound, gateways).
    Client,
    /// Requests the workload serves (sidecar inbound).
    Server,
}

/// Istio `Tracing.TracingSelector` / `AccessLogging.LogSelector`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeSelector {
    /// The side it applies to (default both).
    #[serde(default)]
    pub mode: WorkloadMode,
}

/// Istio `ProviderRef`: an `extensionProviders` entry, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderRef {
    /// The provider's name.
    #[serde(default)]
    pub name: String,
}

/// Istio `Tracing`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// The side it applies to.
    #[serde(default, rename = "match")]
    pub match_: Option<ModeSelector>,
    /// The tracing provider (the first is used); none: the parent's.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// The share of requests traced, percent (0.0 to 100.0).
    #[serde(default)]
    pub random_sampling_percentage: Option<f64>,
    /// No spans are reported (trace context still propagates).
    #[serde(default)]
    pub disable_span_reporting: Option<bool>,
    /// Tags added to every span, by tag name.
    #[serde(default)]
    pub custom_tags: BTreeMap<String, CustomTag>,
    /// Sample by the `x-request-id` (Envoy's default).
    #[serde(default)]
    pub use_request_id_for_trace_sampling: Option<bool>,
    /// Istio's own tags (`istio.canonical_service`, ...); not read yet.
    #[serde(default)]
    pub enable_istio_tags: Option<bool>,
    /// Do not propagate the trace context to the application; not read yet.
    #[serde(default)]
    pub disable_context_propagation: Option<bool>,
}

/// Istio `Tracing.CustomTag`: exactly one of its kinds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomTag {
    /// A fixed value.
    #[serde(default)]
    pub literal: Option<LiteralTag>,
    /// The value of one of the proxy's environment variables.
    #[serde(default)]
    pub environment: Option<NamedTag>,
    /// The value of a request header.
    #[serde(default)]
    pub header: Option<NamedTag>,
    /// A value made by a format string (Envoy's access log operators).
    #[serde(default)]
    pub formatter: Option<LiteralTag>,
}

/// Istio `Tracing.Literal` (and `Tracing.Formatter`, of the same shape).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LiteralTag {
    /// The value.
    #[serde(default)]
    pub value: String,
}

/// Istio `Tracing.Environment` and `Tracing.RequestHeader`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedTag {
    /// The variable's or header's name.
    #[serde(default)]
    pub name: String,
    /// The value when it is not set.
    #[serde(default)]
    pub default_value: Option<String>,
}

/// Istio `Metrics` (read, not acted on: see [`TelemetrySpec::metrics`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// The metrics providers.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Per-metric overrides.
    #[serde(default)]
    pub overrides: Vec<MetricsOverrides>,
    /// How often metrics are reported (a duration).
    #[serde(default)]
    pub reporting_interval: Option<String>,
}

/// Istio `AccessLogging`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessLogging {
    /// The side it applies to.
    #[serde(default, rename = "match")]
    pub match_: Option<ModeSelector>,
    /// The access log providers; none: the parent's.
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    /// Turn these providers' logs off.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Log only the requests a CEL expression selects.
    #[serde(default)]
    pub filter: Option<AccessLogFilter>,
}

/// Istio `AccessLogging.Filter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogFilter {
    /// A CEL expression over Envoy's attributes (`response.code >= 400`).
    #[serde(default)]
    pub expression: String,
}

/// Istio `MetricsOverrides`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsOverrides {
    /// Which metrics.
    #[serde(default, rename = "match")]
    pub match_: Option<MetricSelector>,
    /// Turn them off.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Tags changed, by tag name.
    #[serde(default)]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// Istio `MetricSelector`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSelector {
    /// One of Istio's metrics (`REQUEST_COUNT`, `ALL_METRICS`, ...).
    #[serde(default)]
    pub metric: Option<String>,
    /// A custom metric's name.
    #[serde(default)]
    pub custom_metric: Option<String>,
    /// The side.
    #[serde(default)]
    pub mode: Option<WorkloadMode>,
}

/// Istio `MetricsOverrides.TagOverride`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagOverride {
    /// `UPSERT` (default) or `REMOVE`.
    #[serde(default)]
    pub operation: Option<String>,
    /// A CEL expression for the value.
    #[serde(default)]
    pub value: Option<String>,
}
