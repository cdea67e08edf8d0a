//! Gateway checks: the workload a Gateway selects and the ports its
//! Service exposes (`gateway.IngressGatewayPortAnalyzer`), and Gateways
//! claiming one host on one port of one workload
//! (`gateway.ConflictingGatewayAnalyzer`).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crds::gateway::ServerTlsSettings;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{each, full_name, namespace, pick};
use crate::hosts::{self, selector_string, selects};
use crate::input::Input;
use crate::message::{self, Message, Param};

/// For each Gateway: the pods its `selector` picks (in any namespace, as a
/// Gateway without `PILOT_SCOPE_GATEWAY_TO_NAMESPACE` selects), none being
/// `ReferencedResourceNotFound` (IST0101) on `selector`; then each server
/// port that no Service selecting those pods exposes (a TCP port, as its
/// `port` or its `targetPort`: a Gateway may name either, istiod maps a
/// Service port to its target) is `GatewayPortNotDefinedOnService`
/// (IST0162). Istio's analyzer compares the `port` only, so that Istio's
/// own Bookinfo Gateway (port 8080, the ingress Service's target of 80)
/// is reported there.
pub fn ingress_ports(input: &Input, out: &mut Vec<Message>) {
    let pods: Vec<_> = each(input, pick::pod).collect();
    let services: Vec<_> = each(input, pick::service).collect();
    for (entry, gateway) in each(input, pick::gateway) {
        let selector = selector_string(&gateway.selector);
        let mut selected = 0;
        let mut ports = HashSet::new();
        for (pod_entry, pod) in &pods {
            let labels = pod.metadata.labels.as_ref();
            if !selects(&gateway.selector, labels) {
                continue;
            }
            selected += 1;
            for (svc_entry, svc) in &services {
                let Some(spec) = &svc.spec else { continue };
                let Some(svc_selector) = &spec.selector else {
                    continue;
                };
                if namespace(svc_entry) != namespace(pod_entry) || !selects(svc_selector, labels) {
                    continue;
                }
                for port in spec.ports.iter().flatten() {
                    if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                        continue;
                    }
                    ports.insert(u32::try_from(port.port).unwrap_or_default());
                    if let Some(IntOrString::Int(target)) = port.target_port {
                        ports.insert(u32::try_from(target).unwrap_or_default());
                    }
                }
            }
        }
        if selected == 0 {
            out.push(selector_not_found(entry, gateway));
            continue;
        }
        for server in &gateway.servers {
            if !ports.contains(&server.port.number) {
                out.push(Message::new(
                    message::GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
                    Some(&entry.resource),
                    vec![server.port.number.into(), selector.clone().into()],
                ));
            }
        }
    }
}

/// Gateways with the same `selector` that serve one port number with
/// overlapping hosts (wildcards matching) are each `ConflictingGateways`
/// (IST0145), once per server, naming the others (`namespace/name`,
/// sorted). Istio keeps only the last server's hosts of a Gateway per
/// port; here every server on the port counts.
pub fn conflicting(input: &Input, out: &mut Vec<Message>) {
    // (selector, port) -> gateway full name -> hosts.
    let mut by_key: BTreeMap<(String, u32), BTreeMap<String, Vec<&str>>> = BTreeMap::new();
    for (entry, gateway) in each(input, pick::gateway) {
        let selector = selector_string(&gateway.selector);
        for server in &gateway.servers {
            by_key
                .entry((selector.clone(), server.port.number))
                .or_default()
                .entry(full_name(entry))
                .or_default()
                .extend(server.hosts.iter().map(String::as_str));
        }
    }
    for (entry, gateway) in each(input, pick::gateway) {
        let selector = selector_string(&gateway.selector);
        let name = full_name(entry);
        for server in &gateway.servers {
            let Some(others) = by_key.get(&(selector.clone(), server.port.number)) else {
                continue;
            };
            let conflicting: BTreeSet<&str> = others
                .iter()
                .filter(|(other, _)| **other != name)
                .filter(|(_, hosts)| {
                    server
                        .hosts
                        .iter()
                        .any(|h| hosts.iter().any(|o| hosts::matches(h, o)))
                })
                .map(|(other, _)| other.as_str())
                .collect();
            if conflicting.is_empty() {
                continue;
            }
            let params: Vec<Param> = vec![
                conflicting.into_iter().collect::<Vec<_>>().join(",").into(),
                selector.clone().into(),
                server.port.number.to_string().into(),
                server.hosts.join(",").into(),
            ];
            out.push(Message::new(
                message::CONFLICTING_GATEWAYS,
                Some(&entry.resource),
                params,
            ));
        }
    }
}

/// Each `credentialName` (and `credentialNames` entry) of a Gateway's TLS
/// servers must name a Secret in the namespace of the gateway workload
/// (the first pod its selector picks), where istiod reads it from:
/// `ReferencedResourceNotFound` (IST0101, `credentialName`) otherwise. A
/// Gateway that selects no pod is IST0101 on `selector`, as
/// [`ingress_ports`] says (Istio's `gateway.SecretAnalyzer`).
pub fn secrets(input: &Input, out: &mut Vec<Message>) {
    let pods: Vec<_> = each(input, pick::pod).collect();
    let secrets: HashSet<(String, String)> = each(input, pick::secret)
        .map(|(e, _)| (namespace(e).to_owned(), e.resource.name.clone()))
        .collect();
    for (entry, gateway) in each(input, pick::gateway) {
        let workload = pods
            .iter()
            .find(|(_, pod)| selects(&gateway.selector, pod.metadata.labels.as_ref()));
        let Some((pod_entry, _)) = workload else {
            out.push(selector_not_found(entry, gateway));
            continue;
        };
        let ns = namespace(pod_entry);
        // Each name with where it is written (Istio's `CredentialName`
        // path, and `credentialNames[j]`).
        let names = gateway.servers.iter().enumerate().flat_map(|(i, s)| {
            let tls = s.tls.as_ref();
            let one = tls
                .and_then(|t| t.credential_name.as_ref())
                .map(|n| (n, format!("spec.servers[{i}].tls.credentialName")));
            let many = tls.into_iter().flat_map(move |t| {
                t.credential_names
                    .iter()
                    .enumerate()
                    .map(move |(j, n)| (n, format!("spec.servers[{i}].tls.credentialNames[{j}]")))
            });
            one.into_iter().chain(many)
        });
        for (name, at) in names.filter(|(n, _)| !n.is_empty()) {
            let (secret_ns, secret) = match name.split_once('/') {
                Some((n, s)) => (n.to_owned(), s.to_owned()),
                None => (ns.to_owned(), name.clone()),
            };
            if !secrets.contains(&(secret_ns, secret)) {
                out.push(
                    Message::new(
                        message::REFERENCED_RESOURCE_NOT_FOUND,
                        Some(&entry.resource),
                        vec!["credentialName".into(), name.clone().into()],
                    )
                    .at(at),
                );
            }
        }
    }
}

/// IST0101 for a Gateway whose `selector` picks no pod, at the selector's
/// (first) label, Istio's `GatewaySelector` path.
fn selector_not_found(entry: &crate::input::Entry, gateway: &crds::GatewaySpec) -> Message {
    let m = Message::new(
        message::REFERENCED_RESOURCE_NOT_FOUND,
        Some(&entry.resource),
        vec!["selector".into(), selector_string(&gateway.selector).into()],
    );
    match gateway.selector.keys().next() {
        Some(label) => m.at(format!("spec.selector[\"{label}\"]")),
        None => m,
    }
}

/// Whether two TLS servers present the same certificate: the same
/// `credentialName`, or (neither naming one) the same
/// `serverCertificate` and `privateKey` files.
fn same_certificate(a: &ServerTlsSettings, b: &ServerTlsSettings) -> bool {
    fn set(s: &Option<String>) -> Option<&str> {
        s.as_deref().filter(|v| !v.is_empty())
    }
    match (set(&a.credential_name), set(&b.credential_name)) {
        (Some(x), Some(y)) => x == y,
        (None, None) => {
            let cert = set(&a.server_certificate).zip(set(&b.server_certificate));
            let key = set(&a.private_key).zip(set(&b.private_key));
            matches!((cert, key), (Some((c1, c2)), Some((k1, k2))) if c1 == c2 && k1 == k2)
        }
        _ => false,
    }
}

/// Gateways for the same workload (the other's `selector` carries this
/// one's labels; an empty selector, every Gateway) whose TLS servers
/// present the same certificate are each `GatewayDuplicateCertificate`
/// (IST0138): a client reusing an HTTP/2 connection for the other's host
/// gets 404s (Istio's `gateway.CertificateAnalyzer`, gateways of every
/// namespace compared).
pub fn duplicate_certificates(input: &Input, out: &mut Vec<Message>) {
    let gateways: Vec<_> = each(input, pick::gateway).collect();
    for (entry, gateway) in &gateways {
        let name = full_name(entry);
        for (other_entry, other) in &gateways {
            let other_name = full_name(other_entry);
            let same_workload = gateway
                .selector
                .iter()
                .all(|(k, v)| other.selector.get(k) == Some(v));
            if other_name == name || !same_workload {
                continue;
            }
            let tls = |g: &'_ crds::GatewaySpec| -> Vec<ServerTlsSettings> {
                g.servers.iter().filter_map(|s| s.tls.clone()).collect()
            };
            let shared = tls(gateway)
                .iter()
                .any(|a| tls(other).iter().any(|b| same_certificate(a, b)));
            if shared {
                out.push(Message::new(
                    message::GATEWAY_DUPLICATE_CERTIFICATE,
                    Some(&entry.resource),
                    vec![Param::List(vec![name.clone(), other_name])],
                ));
            }
        }
    }
}
