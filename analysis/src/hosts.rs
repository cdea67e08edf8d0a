//! Host names as Istio's analyzers read them: short names completed in a
//! namespace, wildcard matching, and the services (Kubernetes Services
//! and ServiceEntry hosts) each namespace can see (`exportTo`).

use std::collections::{BTreeMap, HashMap};

use crds::document::Object;

use crate::input::Input;

/// The cluster's DNS suffix for Services.
const DOMAIN: &str = "svc.cluster.local";

/// `host` as a fully qualified name: a short name (no dot, no wildcard) is
/// completed with `namespace` (`reviews` -> `reviews.default.svc.cluster.local`).
pub fn fqdn(namespace: &str, host: &str) -> String {
    if host.starts_with('*') || host.contains('.') {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.{DOMAIN}")
    }
}

/// The Kubernetes Service a host names: `(namespace, name)` of
/// `name.namespace.svc.cluster.local`, else `host` in `namespace`
/// (Istio's `GetResourceNameFromHost`).
pub fn service_name(namespace: &str, host: &str) -> (String, String) {
    if let Some(rest) = host.strip_suffix(".svc.cluster.local")
        && let Some((name, ns)) = rest.rsplit_once('.')
        && !name.is_empty()
        && !ns.is_empty()
    {
        return (ns.to_owned(), name.to_owned());
    }
    (namespace.to_owned(), host.to_owned())
}

/// Istio's `host.Name.Matches`: equal names, or a wildcard (`*.example.com`,
/// `*`) on either side covering the other.
pub fn matches(a: &str, b: &str) -> bool {
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (Some(a), Some(b)) => a.ends_with(b) || b.ends_with(a),
        (Some(a), None) => b.ends_with(a),
        (None, Some(b)) => a.ends_with(b),
        (None, None) => a == b,
    }
}

/// A service as the analyzers see it: its ports, and how its workloads are
/// found.
#[derive(Clone, Debug)]
pub struct ServiceView {
    /// `(number, protocol)` of each port (a Service port's `protocol`,
    /// TCP when unset; a ServiceEntry port's `protocol`, empty when unset).
    pub ports: Vec<(u32, String)>,
    /// The namespace of the Service or ServiceEntry.
    pub namespace: String,
    /// The labels that select its pods (a Service's `selector`, a
    /// ServiceEntry's `workloadSelector`); `None`: it selects no pods.
    pub selector: Option<BTreeMap<String, String>>,
    /// The labels of a ServiceEntry's own `endpoints`.
    pub endpoint_labels: Vec<BTreeMap<String, String>>,
    /// A Kubernetes Service's name (its endpoints may come from
    /// EndpointSlices of that name rather than a selector).
    pub service_name: Option<String>,
}

/// Every service host, by the namespace that can see it (`*`: all) and
/// its fully qualified name (Istio's `InitServiceEntryHostMap`).
pub struct Registry {
    scoped: HashMap<(String, String), ServiceView>,
}

impl Registry {
    /// The services of `input`: each ServiceEntry host and each Service
    /// (as `name.namespace.svc.cluster.local`), visible where their
    /// `exportTo` (a Service's `networking.istio.io/exportTo` annotation)
    /// says.
    pub fn of(input: &Input) -> Registry {
        let mut scoped = HashMap::new();
        for entry in &input.entries {
            let ns = entry.resource.namespace.clone().unwrap_or_default();
            match &entry.object {
                Object::ServiceEntry(se) => {
                    let spec = &se.spec;
                    let view = ServiceView {
                        ports: spec
                            .ports
                            .iter()
                            .map(|p| (p.number, p.protocol.clone().unwrap_or_default()))
                            .collect(),
                        namespace: ns.clone(),
                        selector: spec.workload_selector.as_ref().map(|s| s.labels.clone()),
                        endpoint_labels: spec.endpoints.iter().map(|e| e.labels.clone()).collect(),
                        service_name: None,
                    };
                    for scope in scopes(&spec.export_to, &ns) {
                        for host in &spec.hosts {
                            scoped.insert((scope.clone(), fqdn(&ns, host)), view.clone());
                        }
                    }
                }
                Object::Service(svc) => {
                    let spec = svc.spec.as_ref();
                    let view = ServiceView {
                        ports: spec
                            .and_then(|s| s.ports.as_ref())
                            .into_iter()
                            .flatten()
                            .map(|p| {
                                let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                                (u32::try_from(p.port).unwrap_or_default(), protocol)
                            })
                            .collect(),
                        namespace: ns.clone(),
                        selector: spec
                            .and_then(|s| s.selector.clone())
                            .filter(|s| !s.is_empty()),
                        endpoint_labels: Vec::new(),
                        service_name: Some(entry.resource.name.clone()),
                    };
                    let export_to: Vec<String> = svc
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("networking.istio.io/exportTo"))
                        .map(|a| a.split(',').map(|s| s.trim().to_owned()).collect())
                        .unwrap_or_default();
                    let host = fqdn(&ns, &entry.resource.name);
                    for scope in scopes(&export_to, &ns) {
                        scoped.insert((scope, host.clone()), view.clone());
                    }
                }
                _ => {}
            }
        }
        Registry { scoped }
    }

    /// The service `host` names for an object in `namespace` exported to
    /// `export_to` (Istio's `GetDestinationHost`): a host visible in every
    /// namespace; else one visible in the object's namespace (no
    /// `exportTo`) or in one of the namespaces it is exported to; else a
    /// wildcard ServiceEntry host covering it, visible everywhere or in
    /// `namespace`.
    pub fn lookup(
        &self,
        namespace: &str,
        export_to: &[String],
        host: &str,
    ) -> Option<&ServiceView> {
        let name = fqdn(namespace, host);
        let find = |scope: &str| self.scoped.get(&(scope.to_owned(), name.clone()));
        if let Some(s) = find("*") {
            return Some(s);
        }
        if export_to.is_empty() {
            if let Some(s) = find(namespace) {
                return Some(s);
            }
        } else {
            for e in export_to {
                let scope = if e == "." { namespace } else { e.as_str() };
                if let Some(s) = find(scope) {
                    return Some(s);
                }
            }
        }
        let bare = host.strip_prefix('*').unwrap_or(host);
        let mut wildcards: Vec<_> = self
            .scoped
            .iter()
            .filter(|((scope, h), _)| h.starts_with('*') && (scope == "*" || scope == namespace))
            .filter(|((_, h), _)| bare.ends_with(&h[1..]))
            .collect();
        // The most specific wildcard, then a stable choice.
        wildcards.sort_by(|a, b| b.0.1.len().cmp(&a.0.1.len()).then(a.0.cmp(b.0)));
        wildcards.first().map(|(_, s)| *s)
    }
}

/// The namespaces `export_to` makes an object of `namespace` visible in:
/// `*` for all (also when empty), `.` for its own.
pub fn scopes(export_to: &[String], namespace: &str) -> Vec<String> {
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        return vec!["*".to_owned()];
    }
    let mut out: Vec<String> = export_to
        .iter()
        .map(|e| {
            if e == "." {
                namespace.to_owned()
            } else {
                e.clone()
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A label selector as Kubernetes prints it: `k1=v1,k2=v2`, keys sorted.
pub fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `labels` carry every label of `selector` (an empty selector
/// selects everything).
pub fn selects(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert_eq!(
            fqdn("default", "reviews"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(fqdn("default", "*.eu.example.com"), "*.eu.example.com");
        assert_eq!(
            service_name("x", "reviews.default.svc.cluster.local"),
            ("default".into(), "reviews".into())
        );
        assert_eq!(service_name("x", "reviews"), ("x".into(), "reviews".into()));
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("a.example.com", "*.example.com"));
        assert!(matches("*", "anything"));
        assert!(matches("*.a.example.com", "*.example.com"));
        assert!(!matches("a.example.com", "b.example.com"));
        assert!(!matches("*.example.com", "example.org"));
    }
}
