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

/// Istio `WorkloadEntry` spec, as used inline in `ServiceEntry.endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP, hostname or `unix://` path.
    #[serde(default)]
    pub address: Option<String>,
    /// Port name -> endpoint port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Endpoint labels (DestinationRule subsets select on them).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network the endpoint is on.
    #[serde(default)]
    pub network: Option<String>,
    /// `region/zone/subzone`.
    #[serde(default)]
    pub locality: Option<String>,
    /// Load balancing weight.
    #[serde(default)]
    pub weight: Option<u32>,
    /// Service account (SPIFFE identity).
    #[serde(default)]
    pub service_account: Option<String>,
}
