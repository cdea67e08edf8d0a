//! `networking.istio.io` ServiceEntry: adds services to the mesh registry.
//! Follows `istio.networking.v1.ServiceEntry` field for field.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::LabelSelector;

/// Istio `ServiceEntry` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "ServiceEntry",
    namespaced,
    shortname = "se"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names (wildcards allowed).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs / CIDRs.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports of the service.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` or `MESH_INTERNAL`.
    #[serde(default)]
    pub location: Option<Location>,
    /// How endpoints are discovered.
    #[serde(default)]
    pub resolution: Option<Resolution>,
    /// Static endpoints.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    /// Select WorkloadEntries / pods as endpoints.
    #[serde(default)]
    pub workload_selector: Option<LabelSelector>,
    /// Namespaces this entry is visible to.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Accepted SANs of the servers.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// Istio `ServicePort` (ServiceEntry form).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// Port number.
    pub number: u32,
    /// `HTTP`, `HTTP2`, `GRPC`, `HTTPS`, `TLS`, `TCP`, `MONGO`, ...
    #[serde(default)]
    pub protocol: Option<String>,
    /// Port name.
    #[serde(default)]
    pub name: Option<String>,
    /// Endpoint port (default: `number`).
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// Istio `ServiceEntry.Location`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum Location {
    MeshExternal,
    MeshInternal,
}

/// Istio `ServiceEntry.Resolution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

/// Istio `WorkloadEntry` spec (`istio.networking.v1.WorkloadEntry`): a
/// workload outside Kubernetes (a VM, a bare-metal host), as its own
/// object or inline in `ServiceEntry.endpoints`. As an object it is an
/// endpoint of the Kubernetes Services and of the ServiceEntries (with a
/// `workloadSelector`) of its namespace that select its labels.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadEntry",
    namespaced,
    shortname = "we",
    status = "WorkloadEntryStatus"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP, hostname (for DNS-resolved entries) or `unix://` path, without
    /// the port.
    #[serde(default)]
    pub address: Option<String>,
    /// Service port name -> the port the workload serves it on (default:
    /// the service's target port, else its number).
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Workload labels (selectors and DestinationRule subsets match them;
    /// `security.istio.io/tlsMode` as on a pod).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network the endpoint is on.
    #[serde(default)]
    pub network: Option<String>,
    /// `region/zone/subzone` (default: the `istio-locality` label).
    #[serde(default)]
    pub locality: Option<String>,
    /// Load balancing weight (0 or unset: 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Service account of the workload's sidecar: its SPIFFE identity
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<account>`, and (without a
    /// `security.istio.io/tlsMode` label) a sign that it takes Istio mTLS.
    #[serde(default)]
    pub service_account: Option<String>,
}

/// The annotation that makes a WorkloadEntry health-checked (Istio's
/// `proxy.istio.io/health-checks-enabled`): its endpoint serves only once
/// its `Healthy` condition is `True`. Auto-registration sets it when the
/// WorkloadGroup has a `probe`.
pub const HEALTH_CHECKS_ANNOTATION: &str = "proxy.istio.io/health-checks-enabled";

/// The condition type the workload's health is reported as (Istio's
/// `ConditionHealthy`).
pub const HEALTHY_CONDITION: &str = "Healthy";

/// A WorkloadEntry's `status` (Istio's `IstioStatus`), as far as it is read
/// here: its conditions. Other fields (`observedGeneration`,
/// `validationMessages`) are ignored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntryStatus {
    /// The object's conditions (`Healthy`: the agent's readiness probe).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<IstioCondition>,
}

/// Istio's `IstioCondition`: a condition of an Istio object's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioCondition {
    /// The condition's type (`Healthy`).
    #[serde(rename = "type", default)]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// When it was last checked (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<String>,
    /// When `status` last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// A machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What failed, for people (the probe's error when `False`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl WorkloadEntry {
    /// Whether its endpoint is gated on health checks: the
    /// [`HEALTH_CHECKS_ANNOTATION`] is a true value as Go's `ParseBool`
    /// reads it (`1`, `t`, `T`, `true`, `TRUE`, `True`).
    pub fn health_checked(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(HEALTH_CHECKS_ANNOTATION))
            .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
    }

    /// Whether it serves (Istio's `isHealthy`): always when not
    /// [`health_checked`](Self::health_checked); otherwise only with a
    /// `Healthy` condition whose status is `True` (a new entry is unhealthy
    /// until its first probe succeeds).
    pub fn healthy(&self) -> bool {
        !self.health_checked()
            || self.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == HEALTHY_CONDITION && c.status == "True")
            })
    }
}
