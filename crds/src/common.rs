//! Types shared by several Istio networking kinds.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Istio `StringMatch`: exactly one of `exact`, `prefix` or `regex`
/// (RE2 syntax), e.g. `uri: {prefix: /reviews}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    /// `exact: "value"`: case-sensitive equality.
    Exact(String),
    /// `prefix: "value"`: case-sensitive prefix.
    Prefix(String),
    /// `regex: "value"`: RE2 regex over the whole value.
    Regex(String),
}

/// Istio `Percent`: `{value: 10.5}`, a percentage in `[0, 100]` (double).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// The percentage, 0.0 to 100.0.
    #[serde(default)]
    pub value: f64,
}

/// Istio `PortSelector`: `{number: 9080}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    /// The port number (1..=65535).
    pub number: u32,
}

/// Istio `Destination`: a service in the registry (`host`), an optional
/// DestinationRule `subset` and an optional `port`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    /// Service name: a short name (`reviews`, resolved in the rule's
    /// namespace), or an FQDN (`reviews.default.svc.cluster.local`).
    pub host: String,
    /// A subset name defined by a DestinationRule for `host`.
    #[serde(default)]
    pub subset: Option<String>,
    /// The port on `host`; required only if it has several ports.
    #[serde(default)]
    pub port: Option<PortSelector>,
}

/// Istio `WorkloadSelector` with plain `labels` (ServiceEntry).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels a workload must carry, all of them.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Istio `WorkloadSelector` with `matchLabels` (DestinationRule).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabelSelector {
    /// Labels a workload must carry, all of them.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}
