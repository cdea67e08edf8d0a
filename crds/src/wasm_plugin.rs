//! `extensions.istio.io/v1alpha1` WasmPlugin: a WebAssembly module (a
//! Proxy-Wasm plugin) run in the selected workloads' Envoys as an HTTP or
//! network filter. Follows `istio.extensions.v1alpha1.WasmPlugin` field for
//! field.
//!
//! Where it runs follows Istio: the workloads picked by `selector` (in the
//! plugin's namespace; every namespace's from the root namespace), or the
//! pods of the Gateway API gateways named by `targetRefs`; on which
//! listeners by `match` (side and port); where among the filters by
//! `phase`, then `priority` (higher first).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::authorization_policy::PolicyTargetReference;
use crate::telemetry::WorkloadMode;
use crate::{MatchLabelSelector, PortSelector};

/// The API group of WasmPlugin.
pub const GROUP: &str = "extensions.istio.io";

/// Istio `WasmPlugin` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "extensions.istio.io",
    version = "v1alpha1",
    kind = "WasmPlugin",
    namespaced
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmPluginSpec {
    /// The workloads it runs in (`matchLabels`); none: every workload of
    /// the namespace (of the mesh, in the root namespace).
    #[serde(default)]
    pub selector: Option<MatchLabelSelector>,
    /// A Gateway API gateway (the older single form of `targetRefs`).
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Gateway API gateways whose pods run it (instead of `selector`).
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Where the module is: `oci://REGISTRY/IMAGE[:TAG]` (the default
    /// scheme), `http(s)://...` (fetched by the proxy's agent) or
    /// `file:///PATH` (on the proxy's host).
    pub url: String,
    /// The module's SHA-256 (64 lowercase hex digits); a fetched module
    /// that differs is not run.
    #[serde(default)]
    pub sha256: Option<String>,
    /// When to fetch the module again (`IfNotPresent`, `Always`).
    #[serde(default)]
    pub image_pull_policy: Option<PullPolicy>,
    /// A Secret of the plugin's namespace with the registry's credentials
    /// (OCI images).
    #[serde(default)]
    pub image_pull_secret: Option<String>,
    /// The configuration handed to the plugin (as JSON text).
    #[serde(default)]
    #[schemars(schema_with = "crate::envoy_filter::preserved_object")]
    pub plugin_config: Option<serde_json::Map<String, serde_json::Value>>,
    /// The plugin's root ID in the module (Envoy's `root_id`).
    #[serde(default)]
    pub plugin_name: Option<String>,
    /// Where in the filter chain it runs (default: after authorization,
    /// before the stats and the router).
    #[serde(default)]
    pub phase: Option<PluginPhase>,
    /// Order within the phase: higher first.
    #[serde(default)]
    pub priority: Option<i32>,
    /// What happens when the module cannot be fetched or crashes (default
    /// `FAIL_CLOSE`).
    #[serde(default)]
    pub fail_strategy: Option<FailStrategy>,
    /// Signature verification key (read, not used: Istio does not use it either).
    #[serde(default)]
    pub verification_key: Option<String>,
    /// The Wasm VM's settings.
    #[serde(default)]
    pub vm_config: Option<VmConfig>,
    /// The traffic it runs on; none: all of the workload's.
    #[serde(default, rename = "match")]
    pub match_: Vec<TrafficSelector>,
    /// An HTTP filter (the default) or a network filter.
    #[serde(default, rename = "type")]
    pub type_: Option<PluginType>,
}

/// Istio `PluginPhase`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PluginPhase {
    /// After Istio's filters (the default).
    #[default]
    UnspecifiedPhase,
    /// Before Istio's authentication filters.
    Authn,
    /// Before Istio's authorization filters, after authentication.
    Authz,
    /// Before Istio's stats filters, after authorization.
    Stats,
}

/// Istio `PullPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    /// As `IfNotPresent`, except for the `latest` tag (`Always`).
    #[serde(rename = "UNSPECIFIED_POLICY")]
    UnspecifiedPolicy,
    /// A module fetched before (same URL and checksum) is used again.
    IfNotPresent,
    /// Fetched again whenever the WasmPlugin changes.
    Always,
}

/// Istio `FailStrategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailStrategy {
    /// Requests fail (a module that cannot be fetched denies them all).
    #[default]
    FailClose,
    /// The plugin is left out of the requests.
    FailOpen,
    /// The VM is reloaded, the request failed.
    FailReload,
}

/// Istio `PluginType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PluginType {
    /// HTTP (the default).
    #[default]
    UnspecifiedPluginType,
    /// An HTTP filter.
    Http,
    /// A network (TCP) filter.
    Network,
}

/// Istio `VmConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmConfig {
    /// Environment variables of the VM.
    #[serde(default)]
    pub env: Vec<EnvVar>,
}

/// Istio `EnvVar`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// The variable's name.
    pub name: String,
    /// Where the value comes from (default `INLINE`).
    #[serde(default)]
    pub value_from: Option<EnvValueSource>,
    /// The value (`INLINE` only).
    #[serde(default)]
    pub value: Option<String>,
}

/// Istio `EnvValueSource`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnvValueSource {
    /// `value` itself.
    #[default]
    Inline,
    /// The proxy's own environment variable of that name.
    Host,
}

/// Istio `WasmPlugin.TrafficSelector`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficSelector {
    /// The side (default both; `UNDEFINED` is both too).
    #[serde(default)]
    pub mode: Option<SelectorMode>,
    /// Destination ports; none: every port.
    #[serde(default)]
    pub ports: Vec<PortSelector>,
}

/// Istio `WorkloadMode` as a WasmPlugin's `match` takes it (with `UNDEFINED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SelectorMode {
    /// Both sides.
    Undefined,
    /// Requests the workload makes (sidecar outbound, gateways).
    Client,
    /// Requests the workload serves (sidecar inbound).
    Server,
    /// Both sides.
    ClientAndServer,
}

impl SelectorMode {
    /// The mode as the Telemetry API's [`WorkloadMode`] (`UNDEFINED`: both).
    pub fn workload_mode(self) -> WorkloadMode {
        match self {
            SelectorMode::Client => WorkloadMode::Client,
            SelectorMode::Server => WorkloadMode::Server,
            SelectorMode::Undefined | SelectorMode::ClientAndServer => {
                WorkloadMode::ClientAndServer
            }
        }
    }
}

impl WasmPluginSpec {
    /// Whether it is a network filter (`type: NETWORK`).
    pub fn is_network(&self) -> bool {
        self.type_ == Some(PluginType::Network)
    }
}
