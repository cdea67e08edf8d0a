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
    shortname = "we"
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
