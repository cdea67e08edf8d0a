//! The analyzers, by the kind they report on.

use crds::document::Object;

use crate::input::{Entry, Input};

pub mod annotations;
pub mod authz;
pub mod destinationrule;
pub mod envoyfilter;
pub mod gateway;
pub mod injection;
pub mod schema;
pub mod selectors;
pub mod service;
pub mod serviceentry;
pub mod virtualservice;

/// Each object of one kind with its entry: `pick` returns the spec of the
/// kind's objects, `None` for the others.
pub fn each<'a, T: 'a>(
    input: &'a Input,
    pick: fn(&'a Object) -> Option<&'a T>,
) -> impl Iterator<Item = (&'a Entry, &'a T)> {
    input
        .entries
        .iter()
        .filter_map(move |e| pick(&e.object).map(|t| (e, t)))
}

/// The entry's namespace (empty for cluster-scoped objects).
pub fn namespace(entry: &Entry) -> &str {
    entry.resource.namespace.as_deref().unwrap_or_default()
}

/// `namespace/name`, Istio's `FullName`.
pub fn full_name(entry: &Entry) -> String {
    format!("{}/{}", namespace(entry), entry.resource.name)
}

/// What a pod says of its injection: its `sidecar.istio.io/inject` label,
/// else that annotation (the label wins, as in Istio's webhook).
pub fn inject_says(pod: &crds::document::PodInfo) -> Option<&str> {
    let key = "sidecar.istio.io/inject";
    let meta = &pod.metadata;
    meta.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .or_else(|| meta.annotations.as_ref().and_then(|a| a.get(key)))
        .map(String::as_str)
}

/// The `namespace/name` of a gateway a VirtualService of `namespace`
/// names: `ns/name` as written, a bare name in the VirtualService's
/// namespace.
pub fn gateway_name(namespace: &str, name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// Spec pickers for [`each`].
pub mod pick {
    use super::Object;

    /// VirtualServices.
    pub fn virtual_service(o: &Object) -> Option<&crds::VirtualServiceSpec> {
        match o {
            Object::VirtualService(v) => Some(&v.spec),
            _ => None,
        }
    }

    /// DestinationRules.
    pub fn destination_rule(o: &Object) -> Option<&crds::DestinationRuleSpec> {
        match o {
            Object::DestinationRule(v) => Some(&v.spec),
            _ => None,
        }
    }

    /// Gateways (Istio's).
    pub fn gateway(o: &Object) -> Option<&crds::GatewaySpec> {
        match o {
            Object::Gateway(v) => Some(&v.spec),
            _ => None,
        }
    }

    /// ServiceEntries.
    pub fn service_entry(o: &Object) -> Option<&crds::ServiceEntrySpec> {
        match o {
            Object::ServiceEntry(v) => Some(&v.spec),
            _ => None,
        }
    }

    /// Pods.
    pub fn pod(o: &Object) -> Option<&crds::document::PodInfo> {
        match o {
            Object::Pod(p) => Some(p),
            _ => None,
        }
    }

    /// Services.
    pub fn service(o: &Object) -> Option<&k8s_openapi::api::core::v1::Service> {
        match o {
            Object::Service(s) => Some(s),
            _ => None,
        }
    }

    /// Sidecars.
    pub fn sidecar(o: &Object) -> Option<&crds::SidecarSpec> {
        match o {
            Object::Sidecar(v) => Some(&v.spec),
            _ => None,
        }
    }

    /// AuthorizationPolicies.
    pub fn authorization_policy(o: &Object) -> Option<&crds::AuthorizationPolicySpec> {
        match o {
            Object::AuthorizationPolicy(v) => Some(&v.spec),
            _ => None,
        }
    }

    /// Secrets.
    pub fn secret(o: &Object) -> Option<&k8s_openapi::api::core::v1::Secret> {
        match o {
            Object::Secret(s) => Some(s),
            _ => None,
        }
    }

    /// Namespaces.
    pub fn namespace(o: &Object) -> Option<&k8s_openapi::api::core::v1::Namespace> {
        match o {
            Object::Namespace(n) => Some(n),
            _ => None,
        }
    }

    /// Telemetries.
    pub fn telemetry(o: &Object) -> Option<&crds::TelemetrySpec> {
        match o {
            Object::Telemetry(v) => Some(&v.spec),
            _ => None,
        }
    }

    /// EnvoyFilters.
    pub fn envoy_filter(o: &Object) -> Option<&crds::EnvoyFilterSpec> {
        match o {
            Object::EnvoyFilter(v) => Some(&v.spec),
            _ => None,
        }
    }

    /// RequestAuthentications.
    pub fn request_authentication(o: &Object) -> Option<&crds::RequestAuthenticationSpec> {
        match o {
            Object::RequestAuthentication(v) => Some(&v.spec),
            _ => None,
        }
    }

    /// Nodes.
    pub fn node(o: &Object) -> Option<&crds::document::NodeInfo> {
        match o {
            Object::Node(n) => Some(n),
            _ => None,
        }
    }
}
