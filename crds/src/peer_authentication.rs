//! `security.istio.io` PeerAuthentication: what mutual TLS a workload's
//! inbound side accepts. Follows `istio.security.v1.PeerAuthentication`
//! field for field. Read, validated and watched; the inbound side that acts
//! on it (`virtualInbound`) is not built yet, so its fields are reported as
//! not acted on.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::MatchLabelSelector;

/// Istio `PeerAuthentication` spec. Scope: the root namespace (mesh), a
/// namespace, or the workloads its `selector` picks.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "PeerAuthentication",
    namespaced,
    shortname = "pa"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// The workloads this applies to (`matchLabels`); none: the whole namespace.
    #[serde(default)]
    pub selector: Option<MatchLabelSelector>,
    /// The mode for every port.
    #[serde(default)]
    pub mtls: Option<PeerMtls>,
    /// Per-port modes (workload-scoped policies only), by container port number.
    // String keys in the schema: structural schemas have no `patternProperties`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, PeerMtls>")]
    pub port_level_mtls: BTreeMap<u32, PeerMtls>,
}

/// Istio `PeerAuthentication.MutualTLS`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeerMtls {
    /// `UNSET` inherits from the parent scope.
    #[serde(default)]
    pub mode: Option<MtlsMode>,
}

/// Istio `PeerAuthentication.MutualTLS.Mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent scope (the mesh default is PERMISSIVE).
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext.
    Permissive,
    /// mTLS only.
    Strict,
}
