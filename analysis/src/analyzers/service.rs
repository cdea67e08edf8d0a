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
        for port in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let name = port.name.as_deref().unwrap_or_default();
            if names_protocol(name, port.protocol.as_deref(), port.app_protocol.as_deref()) {
                continue;
            }
            let target = match &port.target_port {
                Some(IntOrString::Int(n)) => n.to_string(),
                Some(IntOrString::String(s)) => s.clone(),
                None => "0".to_owned(),
            };
            out.push(Message::new(
                message::PORT_NAME_IS_NOT_UNDER_NAMING_CONVENTION,
                Some(&entry.resource),
                vec![
                    name.into(),
                    message::Param::Int(port.port.into()),
                    target.into(),
                ],
            ));
        }
    }
}
