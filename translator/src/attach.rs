//! Policy attachment: which workloads an AuthorizationPolicy,
//! RequestAuthentication or Telemetry applies to, by its `selector` or its
//! `targetRef(s)`, as istiod's `WorkloadPolicyMatcher` decides
//! (`pilot/pkg/model/policyattachment.go`).
//!
//! - **Without `targetRef(s)`**: a policy of the workload's namespace, or
//!   of the root namespace, applies when its `selector` is absent or all its
//!   `matchLabels` are the workload's labels. This holds for Gateway API
//!   gateways too (istiod's `ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY`,
//!   on by default).
//! - **With `targetRef(s)`** (`targetRefs`, else the older `targetRef`): a
//!   reference `{group: gateway.networking.k8s.io, kind: Gateway, name: N}`
//!   attaches the policy to the pods of the Gateway API gateway `N` of the
//!   policy's own namespace: the workloads of that namespace labelled
//!   `gateway.networking.k8s.io/gateway-name: N` (what the gateway's
//!   automated deployment sets). A reference naming another namespace
//!   attaches to nothing (validation refuses it). References to a
//!   `Service`, `ServiceEntry` or the `GatewayClass` `istio-waypoint` are for
//!   waypoints, which this control plane does not program: such a policy
//!   applies to nothing, and that is reported ([`warnings`]). A sidecar
//!   never takes a targeted policy, and a root namespace policy attaches
//!   by `targetRef` only to gateways of the root namespace.

use std::collections::BTreeMap;

use crds::MatchLabelSelector;
use crds::authorization_policy::PolicyTargetReference;

use crate::ConfigWarning;
use crate::model::Snapshot;

/// The label Istio's gateway deployment puts on a Gateway API gateway's pods:
/// the name of their `Gateway`.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The API group of the Gateway API's `Gateway` and `GatewayClass`.
const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

/// A policy that selects workloads by labels or targets them by reference
/// (Istio's `TargetablePolicy`).
pub trait Targetable {
    /// `spec.selector`.
    fn selector(&self) -> Option<&MatchLabelSelector>;
    /// `spec.targetRef` (the older single form).
    fn target_ref(&self) -> Option<&PolicyTargetReference>;
    /// `spec.targetRefs`.
    fn target_refs(&self) -> &[PolicyTargetReference];

    /// The references in force: `targetRefs`, else `targetRef` (Istio's
    /// `GetTargetRefs`); empty for a selector or namespace-wide policy.
    fn refs(&self) -> &[PolicyTargetReference] {
        match self.target_refs() {
            [] => self.target_ref().map_or(&[], std::slice::from_ref),
            many => many,
        }
    }
}

macro_rules! targetable {
    ($($ty:ty),*) => {$(
        impl Targetable for $ty {
            fn selector(&self) -> Option<&MatchLabelSelector> {
                self.selector.as_ref()
            }
            fn target_ref(&self) -> Option<&PolicyTargetReference> {
                self.target_ref.as_ref()
            }
            fn target_refs(&self) -> &[PolicyTargetReference] {
                &self.target_refs
            }
        }
    )*};
}
targetable!(
    crds::AuthorizationPolicySpec,
    crds::RequestAuthenticationSpec,
    crds::TelemetrySpec,
    crds::WasmPluginSpec
);

/// The workload a policy may apply to: the mesh's root namespace, the
/// workload's namespace and its labels.
pub type Workload<'a> = (&'a str, &'a str, &'a BTreeMap<String, String>);

/// Whether `policy`, of namespace `policy_ns`, applies to the workload
/// `(root namespace, namespace, labels)` (the rules in the module's doc).
pub fn attaches(
    policy_ns: &str,
    policy: &impl Targetable,
    (root, ns, labels): Workload<'_>,
) -> bool {
    let refs = policy.refs();
    if refs.is_empty() {
        return (policy_ns == ns || policy_ns == root) && selects(policy.selector(), labels);
    }
    attaches_by_refs(policy_ns, refs, (root, ns, labels))
}

/// Whether `refs` (not empty) attach a policy of `policy_ns` to the
/// workload: a Gateway API gateway's pods in the policy's namespace, named
/// by a `Gateway` reference.
pub fn attaches_by_refs(
    policy_ns: &str,
    refs: &[PolicyTargetReference],
    (_, ns, labels): Workload<'_>,
) -> bool {
    let Some(gateway) = labels.get(GATEWAY_NAME_LABEL) else {
        return false;
    };
    policy_ns == ns
        && refs.iter().any(|r| {
            is_gateway(r) && r.name == *gateway && r.namespace.as_deref().is_none_or(|n| n == ns)
        })
}

/// Whether `selector` (absent: every workload) picks the workload with `labels`.
pub fn selects(selector: Option<&MatchLabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// A reference to a Gateway API `Gateway` (Istio's `KubernetesGateway`).
fn is_gateway(r: &PolicyTargetReference) -> bool {
    r.kind == "Gateway" && r.group.as_deref() == Some(GATEWAY_API_GROUP)
}

/// Whether some policy of the snapshot is attached by reference: then a
/// workload's [`GATEWAY_NAME_LABEL`] decides what it takes.
pub(crate) fn any_targeted(snap: &Snapshot) -> bool {
    snap.authorization_policies
        .iter()
        .any(|p| !p.spec.spec.refs().is_empty())
        || snap
            .request_authentications
            .iter()
            .any(|p| !p.spec.refs().is_empty())
        || snap.telemetries.iter().any(|p| !p.spec.refs().is_empty())
        || snap.wasm_plugins.iter().any(|p| !p.spec.refs().is_empty())
        || snap
            .envoy_filters
            .iter()
            .any(|f| !f.spec.target_refs.is_empty())
}

/// The references that attach a policy to nothing here, as warnings naming
/// `spec.targetRefs[i]` (or `spec.targetRef`): those for waypoints (a
/// `Service`, a `ServiceEntry`, a `GatewayClass`), which this control
/// plane does not program.
pub(crate) fn warnings(snap: &Snapshot) -> Vec<ConfigWarning> {
    let mut out = Vec::new();
    let policies = snap
        .authorization_policies
        .iter()
        .map(|p| {
            (
                "AuthorizationPolicy",
                p.key(),
                &p.spec.spec as &dyn Targetable,
            )
        })
        .chain(
            snap.request_authentications
                .iter()
                .map(|p| ("RequestAuthentication", p.key(), &p.spec as &dyn Targetable)),
        )
        .chain(
            snap.telemetries
                .iter()
                .map(|p| ("Telemetry", p.key(), &p.spec as &dyn Targetable)),
        )
        .chain(
            snap.wasm_plugins
                .iter()
                .map(|p| ("WasmPlugin", p.key(), &p.spec as &dyn Targetable)),
        )
        .map(|(kind, key, p)| (kind, key, p.refs(), p.target_refs().is_empty()))
        .chain(
            snap.envoy_filters
                .iter()
                .map(|f| ("EnvoyFilter", f.key(), f.spec.target_refs.as_slice(), false)),
        );
    for (kind, key, refs, single) in policies {
        let field = |i: usize| {
            if single {
                "spec.targetRef".to_owned()
            } else {
                format!("spec.targetRefs[{i}]")
            }
        };
        for (i, r) in refs.iter().enumerate() {
            if is_gateway(r) {
                continue;
            }
            out.push(ConfigWarning::new(
                kind,
                key.clone(),
                field(i),
                format!(
                    "{}/{} {}: only Gateway API gateways (group {GATEWAY_API_GROUP}, kind Gateway) are programmed by this control plane, not waypoints; this reference attaches the policy to nothing",
                    r.group.as_deref().unwrap_or(""),
                    r.kind,
                    r.name
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> crds::AuthorizationPolicySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_gateway_reference_attaches_only_to_that_gateways_pods_in_its_namespace() {
        let gw = labels(&[(GATEWAY_NAME_LABEL, "gw"), ("app", "gw")]);
        let other = labels(&[(GATEWAY_NAME_LABEL, "other")]);
        let sidecar = labels(&[("app", "gw")]);
        let p = policy("targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]");
        assert!(attaches("ns", &p, ("istio-system", "ns", &gw)));
        assert!(!attaches("ns", &p, ("istio-system", "ns", &other)));
        assert!(!attaches("ns", &p, ("istio-system", "ns", &sidecar)));
        assert!(!attaches("ns", &p, ("istio-system", "elsewhere", &gw)));
        // From the root namespace, only a gateway of the root namespace.
        assert!(!attaches("istio-system", &p, ("istio-system", "ns", &gw)));
        assert!(attaches(
            "istio-system",
            &p,
            ("istio-system", "istio-system", &gw)
        ));
        // The older single form; `targetRefs` wins when both are set.
        let one = policy("targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}");
        assert!(attaches("ns", &one, ("istio-system", "ns", &gw)));
        let both = policy(
            "targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: gw}\ntargetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: other}]",
        );
        assert!(!attaches("ns", &both, ("istio-system", "ns", &gw)));
        assert!(attaches("ns", &both, ("istio-system", "ns", &other)));
        // The group and kind must be the Gateway API's, the namespace the policy's.
        for wrong in [
            "targetRefs: [{kind: Gateway, name: gw}]",
            "targetRefs: [{group: networking.istio.io, kind: Gateway, name: gw}]",
            "targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: gw}]",
            "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw, namespace: other}]",
        ] {
            assert!(
                !attaches("ns", &policy(wrong), ("istio-system", "ns", &gw)),
                "{wrong}"
            );
        }
    }

    #[test]
    fn selectors_still_apply_to_gateways_and_sidecars() {
        let gw = labels(&[(GATEWAY_NAME_LABEL, "gw"), ("app", "gw")]);
        let wide = policy("{}");
        let selected = policy("selector: {matchLabels: {app: gw}}");
        let not = policy("selector: {matchLabels: {app: other}}");
        for (ns, p, want) in [
            ("ns", &wide, true),
            ("istio-system", &wide, true),
            ("elsewhere", &wide, false),
            ("ns", &selected, true),
            ("ns", &not, false),
        ] {
            assert_eq!(
                attaches(ns, p, ("istio-system", "ns", &gw)),
                want,
                "{ns} {p:?}"
            );
        }
    }
}
