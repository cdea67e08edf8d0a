//! `networking.istio.io` WorkloadGroup: the template of the WorkloadEntries
//! of workloads that register themselves (VMs whose proxy connects with
//! node metadata `AUTO_REGISTER_GROUP`). Follows
//! `istio.networking.v1.WorkloadGroup` field for field.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::WorkloadEntrySpec;

/// Istio `WorkloadGroup` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "WorkloadGroup",
    namespaced,
    shortname = "wg"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadGroupSpec {
    /// Labels and annotations of every WorkloadEntry made from the group.
    #[serde(default)]
    pub metadata: Option<EntryMetadata>,
    /// The WorkloadEntry each workload of the group gets, without its
    /// `address` (the workload's own).
    pub template: WorkloadEntrySpec,
    /// How the workload's agent checks the app is ready (not acted on yet).
    #[serde(default)]
    pub probe: Option<ReadinessProbe>,
}

/// `WorkloadGroup.ObjectMeta`: what the entries' metadata carries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntryMetadata {
    /// Labels of each entry (the workload's own labels win over these).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations of each entry.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Istio `ReadinessProbe`: one of an HTTP GET, a TCP connect, a command or
/// a gRPC health check, with Kubernetes' probe timings (seconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadinessProbe {
    /// Seconds before the first check.
    #[serde(default)]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds a check may take.
    #[serde(default)]
    pub timeout_seconds: Option<i32>,
    /// Seconds between checks.
    #[serde(default)]
    pub period_seconds: Option<i32>,
    /// Successes in a row that make the workload ready again.
    #[serde(default)]
    pub success_threshold: Option<i32>,
    /// Failures in a row that make it not ready.
    #[serde(default)]
    pub failure_threshold: Option<i32>,
    /// An HTTP GET; a 2xx or 3xx status is healthy.
    #[serde(default)]
    pub http_get: Option<HttpProbe>,
    /// A TCP connect.
    #[serde(default)]
    pub tcp_socket: Option<TcpProbe>,
    /// A command; exit status 0 is healthy.
    #[serde(default)]
    pub exec: Option<ExecProbe>,
    /// A gRPC health check.
    #[serde(default)]
    pub grpc: Option<GrpcProbe>,
}

/// `HTTPHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProbe {
    /// Path requested.
    #[serde(default)]
    pub path: Option<String>,
    /// Port requested.
    pub port: u32,
    /// Host requested (default the workload's address).
    #[serde(default)]
    pub host: Option<String>,
    /// `HTTP` or `HTTPS`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Headers sent.
    #[serde(default)]
    pub http_headers: Vec<ProbeHeader>,
}

/// `HTTPHeader` of a probe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProbeHeader {
    /// Header name.
    #[serde(default)]
    pub name: Option<String>,
    /// Header value.
    #[serde(default)]
    pub value: Option<String>,
}

/// `TCPHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProbe {
    /// Host connected to (default the workload's address).
    #[serde(default)]
    pub host: Option<String>,
    /// Port connected to.
    pub port: u32,
}

/// `ExecHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecProbe {
    /// The command and its arguments.
    pub command: Vec<String>,
}

/// `GrpcHealthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcProbe {
    /// Port of the gRPC health service.
    pub port: u32,
    /// Service name checked (empty: the server as a whole).
    #[serde(default)]
    pub service: Option<String>,
}
