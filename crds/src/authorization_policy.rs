//! `security.istio.io` AuthorizationPolicy: which requests and connections
//! a workload's inbound side lets through. Follows
//! `istio.security.v1.AuthorizationPolicy` field for field.
//!
//! Semantics (Istio's): a rule matches when one of its `from` sources, one
//! of its `to` operations and every `when` condition match (an absent list
//! matches anything); within one source or operation every set field must
//! match, and a field matches when one of its values does (`not*` fields:
//! when none does). Values are exact, `prefix*`, `*suffix` or `*`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::MatchLabelSelector;

/// Istio `AuthorizationPolicy` spec. Scope: the root namespace without a
/// `selector` (every workload of the mesh), a namespace (every workload in
/// it), or the workloads its `selector` picks.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "security.istio.io",
    version = "v1",
    kind = "AuthorizationPolicy",
    namespaced,
    shortname = "ap"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// The workloads this applies to (`matchLabels`); none: the whole
    /// namespace (the mesh, in the root namespace).
    #[serde(default)]
    pub selector: Option<MatchLabelSelector>,
    /// A Gateway API gateway or a waypoint's service this applies to
    /// (instead of `selector`); sidecars ignore such policies.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Several of `targetRef`.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// The rules; none: matches nothing (an `ALLOW` policy without rules
    /// denies every request, a `DENY` one denies none).
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// What a match does; default `ALLOW`.
    #[serde(default)]
    pub action: Option<Action>,
    /// The extension provider of a `CUSTOM` policy.
    #[serde(default)]
    pub provider: Option<ExtensionProvider>,
}

/// Istio `PolicyTargetReference`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// API group of the target (`gateway.networking.k8s.io`, `""` for Service).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind of the target (`Gateway`, `Service`, `ServiceEntry`, ...).
    pub kind: String,
    /// Name of the target.
    pub name: String,
    /// Namespace of the target (the policy's own when absent).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Istio `AuthorizationPolicy.ExtensionProvider`: `{name: ...}`, an
/// `extensionProviders` entry of the mesh config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtensionProvider {
    /// The provider's name in the mesh config.
    #[serde(default)]
    pub name: String,
}

/// Istio `AuthorizationPolicy.Action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// Let a request through if it matches a rule of some `ALLOW` policy
    /// (once a workload has one, nothing else gets through).
    Allow,
    /// Refuse a request that matches a rule (checked before `ALLOW`).
    Deny,
    /// Mark a matching request for auditing; no effect on the decision.
    Audit,
    /// Ask the `provider` (an external authorizer) about matching requests.
    Custom,
}

/// Istio `Rule`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Sources; one must match (none: any source).
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    /// Operations; one must match (none: any operation).
    #[serde(default)]
    pub to: Vec<RuleTo>,
    /// Conditions; all must match.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// Istio `Rule.From`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    /// The source.
    #[serde(default)]
    pub source: Option<Source>,
}

/// Istio `Rule.To`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    /// The operation.
    #[serde(default)]
    pub operation: Option<Operation>,
}

/// Istio `Source`: who sends the request. Peer identities need mutual TLS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities, `<trust domain>/ns/<namespace>/sa/<service account>`.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Request (JWT) identities, `<iss>/<sub>`.
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// Request identities that must not match.
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// Namespaces of the peer identity.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Service accounts of the peer, `name` (the policy's namespace) or
    /// `namespace/name`.
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Service accounts that must not match.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    /// Trust domains of the peer identity.
    #[serde(default)]
    pub trust_domains: Vec<String>,
    /// Trust domains that must not match.
    #[serde(default)]
    pub not_trust_domains: Vec<String>,
    /// The connection's source address, an IP or CIDR.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Source addresses that must not match.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// The original client address (`X-Forwarded-For`, proxy protocol).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Original client addresses that must not match.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

/// Istio `Operation`: what the request asks for. Only `ports` applies to
/// plain TCP.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// `Host` / `:authority` values (case-insensitive).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Destination ports (the workload's, as strings).
    #[serde(default)]
    pub ports: Vec<String>,
    /// Ports that must not match.
    #[serde(default)]
    pub not_ports: Vec<String>,
    /// HTTP methods.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Methods that must not match.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Request paths, without the query.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Paths that must not match.
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// Istio `Condition`: an attribute (`key`, e.g. `request.headers[version]`,
/// `source.ip`, `destination.port`) and the values it must (not) take.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute.
    pub key: String,
    /// Values, one of which must match.
    #[serde(default)]
    pub values: Vec<String>,
    /// Values none of which may match.
    #[serde(default)]
    pub not_values: Vec<String>,
}
