//! Service checks: port names that give no protocol.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{each, namespace, pick};
use crate::input::Input;
use crate::message::{self, Message};

/// Namespaces Istio's analyzers leave alone.
pub const SYSTEM_NAMESPACES: [&str; 5] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "local-path-storage",
    "istio-system",
];

/// The protocols a port name may start with (`<protocol>[-<suffix>]`,
/// any case), as Istio's `protocol.Parse` knows them.
const PROTOCOLS: [&str; 12] = [
    "tcp",
    "udp",
    "grpc",
    "grpc-web",
    "http",
    "http_proxy",
    "http2",
    "https",
    "tls",
    "mongo",
    "redis",
    "mysql",
];

/// Whether a Service port names its protocol: `appProtocol` set, a UDP
/// port, or a name `<protocol>[-<suffix>]` (`grpc-web...` too).
fn names_protocol(name: &str, protocol: Option<&str>, app_protocol: Option<&str>) -> bool {
    if app_protocol.is_some_and(|p| !p.is_empty()) || protocol == Some("UDP") {
        return true;
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("grpc-web") {
        return true;
    }
    let prefix = lower.split('-').next().unwrap_or_default();
    PROTOCOLS.contains(&prefix)
}

/// Each port of a Service (outside the system namespaces) whose name does
/// not say its protocol, and that has no `appProtocol`, is
/// `PortNameIsNotUnderNamingConvention` (IST0118, Info): Istio sniffs such
/// a port's protocol; this daemon, which does not sniff, proxies it as
/// opaque TCP (no HTTP routing, retries or HTTP metrics on it).
pub fn port_names(input: &Input, out: &mut Vec<Message>) {
    for (entry, svc) in each(input, pick::service) {
        if SYSTEM_NAMESPACES.contains(&namespace(entry)) {
            continue;
        }
        let ports = svc.spec.iter().flat_map(|s| s.ports.iter().flatten());
        for (i, port) in ports.enumerate() {
            let name = port.name.as_deref().unwrap_or_default();
            if names_protocol(name, port.protocol.as_deref(), port.app_protocol.as_deref()) {
                continue;
            }
            let target = match &port.target_port {
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s.clone(),
                None => "0".to_owned(),
            };
            out.push(
                Message::new(
                    message::PORT_NAME_IS_NOT_UNDER_NAMING_CONVENTION,
                    Some(&entry.resource),
                    vec![
                        name.into(),
                        message::Param::Int(port.port.into()),
                        target.into(),
                    ],
                )
                .at(format!("spec.ports[{i}].port")),
            );
        }
    }
}

/// Whether a workload's pods get a sidecar, as far as the input says: not
/// when its template says `sidecar.istio.io/inject: "false"`, nor when its
/// Namespace is read and neither enables injection; yes otherwise.
fn in_mesh(input: &Input, entry: &crate::Entry, pod: &crds::document::PodInfo) -> bool {
    if let Some(v) = super::inject_says(pod) {
        return v == "true";
    }
    let ns = each(input, pick::namespace).find(|(e, _)| e.resource.name == namespace(entry));
    match ns {
        None => true,
        Some((_, ns)) => ns.metadata.labels.as_ref().is_some_and(|l| {
            l.get("istio-injection").map(String::as_str) == Some("enabled")
                || l.contains_key("istio.io/rev")
        }),
    }
}

/// IST0144 for each Pod and Deployment that runs an application as UID
/// 1337, the proxy's (Istio's `applicationUID.Analyzer`): its traffic
/// would bypass the sidecar. Istio's control plane (labelled `istio`, or
/// `release: istio`) is left out.
pub fn application_uid(input: &Input, out: &mut Vec<Message>) {
    for (entry, pod) in each(input, pick::pod) {
        let labels = pod.metadata.labels.as_ref();
        let control_plane = labels.is_some_and(|l| {
            l.contains_key("istio") || l.get("release").is_some_and(|r| r == "istio")
        });
        if matches!(entry.resource.kind.as_str(), "Pod" | "Deployment")
            && !control_plane
            && pod.runs_as_proxy_uid
        {
            out.push(Message::new(
                message::INVALID_APPLICATION_UID,
                Some(&entry.resource),
                Vec::new(),
            ));
        }
    }
}

/// For each workload of the mesh (a `Deployment`, `StatefulSet`, ... read
/// as its pod), the Services of its namespace selecting it: one port given
/// two L4 protocols (TCP, UDP) by different Services is
/// `DeploymentAssociatedToMultipleServices` (IST0116); one target port
/// reached from different service ports is `DeploymentConflictingPorts`
/// (IST0137), as the sidecar has one inbound listener per target port
/// (Istio's `deployment.MultiServiceAnalyzer`, which checks Deployments
/// only; waypoints are left out).
pub fn workload_services(input: &Input, out: &mut Vec<Message>) {
    use std::collections::{BTreeMap, BTreeSet};
    let services: Vec<_> = each(input, pick::service).collect();
    for (entry, pod) in each(input, pick::pod) {
        if entry.resource.kind == "Pod" || !in_mesh(input, entry, pod) {
            continue;
        }
        let waypoint = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("gateway.istio.io/managed"))
            .is_some_and(|v| v == "istio.io-mesh-controller");
        if waypoint {
            continue;
        }
        // port -> protocol -> services; target port -> port -> service.
        let mut protocols: BTreeMap<i32, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        let mut targets: BTreeMap<String, BTreeMap<i32, String>> = BTreeMap::new();
        for (svc_entry, svc) in &services {
            let Some(spec) = &svc.spec else { continue };
            let selector = spec.selector.clone().unwrap_or_default();
            if selector.is_empty()
                || namespace(svc_entry) != namespace(entry)
                || !crate::hosts::selects(&selector, pod.metadata.labels.as_ref())
            {
                continue;
            }
            let name = super::full_name(svc_entry);
            for port in spec.ports.iter().flatten() {
                let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
                protocols
                    .entry(port.port)
                    .or_default()
                    .entry(protocol)
                    .or_default()
                    .push(name.clone());
                let target = match &port.target_port {
                    Some(IntOrString::Int(n)) if *n != 0 => n.to_string(),
                    Some(IntOrString::String(s)) if !s.is_empty() => s.clone(),
                    _ => port.port.to_string(),
                };
                targets
                    .entry(target)
                    .or_default()
                    .insert(port.port, name.clone());
            }
        }
        let deployment = entry.resource.name.clone();
        for (port, by_protocol) in protocols {
            if by_protocol.len() > 1 {
                let names: BTreeSet<String> = by_protocol.into_values().flatten().collect();
                out.push(Message::new(
                    message::DEPLOYMENT_ASSOCIATED_TO_MULTIPLE_SERVICES,
                    Some(&entry.resource),
                    vec![
                        deployment.clone().into(),
                        message::Param::Int(port.into()),
                        message::Param::List(names.into_iter().collect()),
                    ],
                ));
            }
        }
        for (target, by_port) in targets {
            if by_port.len() > 1 {
                let names: BTreeSet<String> = by_port.values().cloned().collect();
                out.push(Message::new(
                    message::DEPLOYMENT_CONFLICTING_PORTS,
                    Some(&entry.resource),
                    vec![
                        deployment.clone().into(),
                        message::Param::List(names.into_iter().collect()),
                        target.into(),
                        message::Param::List(by_port.keys().map(i32::to_string).collect()),
                    ],
                ));
            }
        }
    }
}
