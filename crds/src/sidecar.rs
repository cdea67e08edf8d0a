//! `networking.istio.io` Sidecar: what a workload's sidecar may reach
//! (`egress.hosts`), per namespace or per workload. Follows
//! `istio.networking.v1.Sidecar` field for field.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::destination_rule::ConnectionPoolSettings;
use crate::gateway::{Port, ServerTlsSettings};
use crate::{Destination, LabelSelector};

/// Istio `Sidecar` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "Sidecar",
    namespaced
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarSpec {
    /// Workloads this applies to; none: every workload of the namespace.
    #[serde(default)]
    pub workload_selector: Option<LabelSelector>,
    /// Inbound listeners.
    #[serde(default)]
    pub ingress: Vec<IstioIngressListener>,
    /// Outbound listeners and, above all, the hosts the workload may reach.
    #[serde(default)]
    pub egress: Vec<IstioEgressListener>,
    /// Connection pool for inbound connections.
    #[serde(default)]
    pub inbound_connection_pool: Option<ConnectionPoolSettings>,
    /// Overrides the mesh's `outboundTrafficPolicy` for these workloads.
    #[serde(default)]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Istio `IstioEgressListener`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioEgressListener {
    /// Port of this listener (none: every port).
    #[serde(default)]
    pub port: Option<Port>,
    /// Address to bind.
    #[serde(default)]
    pub bind: Option<String>,
    /// `DEFAULT`, `IPTABLES`, `NONE`.
    #[serde(default)]
    pub capture_mode: Option<String>,
    /// Reachable hosts, `namespace/dnsName`: `./*`, `istio-system/*`,
    /// `*/reviews.default.svc.cluster.local`, `~/*` (none).
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Istio `IstioIngressListener`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioIngressListener {
    /// Port of this listener.
    pub port: Port,
    /// Address to bind.
    #[serde(default)]
    pub bind: Option<String>,
    /// `DEFAULT`, `IPTABLES`, `NONE`.
    #[serde(default)]
    pub capture_mode: Option<String>,
    /// Where to forward (`127.0.0.1:PORT`, `0.0.0.0:PORT`, `unix://...`).
    #[serde(default)]
    pub default_endpoint: Option<String>,
    /// TLS for this listener.
    #[serde(default)]
    pub tls: Option<ServerTlsSettings>,
    /// Connection pool for this listener.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
}

/// Istio `OutboundTrafficPolicy` (Sidecar form).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` or `REGISTRY_ONLY`.
    #[serde(default)]
    pub mode: Option<crate::mesh::OutboundMode>,
    /// Where unknown traffic goes under `ALLOW_ANY`.
    #[serde(default)]
    pub egress_proxy: Option<Destination>,
}
