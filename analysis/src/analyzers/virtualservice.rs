//! VirtualService checks: its destinations' hosts, ports and subsets, and
//! its gateways.

use std::collections::HashSet;

use crds::Destination;
use crds::VirtualServiceSpec;

use super::{each, full_name, namespace, pick};
use crate::hosts::{self, Registry};
use crate::input::Input;
use crate::message::{self, Message, Param};

/// Where a destination is written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A `route` of a `tcp`, `tls` or `http` rule.
    Route,
    /// An `http` rule's `mirror` or `mirrors`.
    Mirror,
}

/// Every destination of `vs`, with where it is written
/// (`spec.http[0].route[1].destination`): routes (`tcp`, `tls`, then
/// `http`, as Istio's `getRouteDestinations`), then `http` mirrors.
fn destinations(vs: &VirtualServiceSpec) -> Vec<(Place, String, &Destination)> {
    /// Each rule's route destinations, with where they are written.
    fn routes<'a>(
        kind: &str,
        rules: impl Iterator<Item = Vec<&'a Destination>>,
    ) -> Vec<(Place, String, &'a Destination)> {
        let mut found = Vec::new();
        for (i, route) in rules.enumerate() {
            for (j, d) in route.into_iter().enumerate() {
                let at = format!("spec.{kind}[{i}].route[{j}].destination");
                found.push((Place::Route, at, d));
            }
        }
        found
    }
    fn of(route: &[crds::virtual_service::RouteDestination]) -> Vec<&Destination> {
        route.iter().map(|d| &d.destination).collect()
    }
    let mut out = Vec::new();
    out.extend(routes("tcp", vs.tcp.iter().map(|r| of(&r.route))));
    out.extend(routes("tls", vs.tls.iter().map(|r| of(&r.route))));
    let http = vs.http.iter();
    out.extend(routes(
        "http",
        http.map(|r| r.route.iter().map(|d| &d.destination).collect()),
    ));
    for (i, rule) in vs.http.iter().enumerate() {
        out.extend(
            rule.mirror
                .iter()
                .map(|d| (Place::Mirror, format!("spec.http[{i}].mirror"), d)),
        );
        out.extend(rule.mirrors.iter().enumerate().map(|(j, m)| {
            let at = format!("spec.http[{i}].mirrors[{j}].destination");
            (Place::Mirror, at, &m.destination)
        }));
    }
    out
}

/// For each destination: its host must be a service the VirtualService's
/// namespace (or, with `exportTo`, one of the namespaces it is exported
/// to) can see, else `ReferencedResourceNotFound` (IST0101, `host` or
/// `mirror host`); a destination without a port on a service with several
/// is `VirtualServiceDestinationPortSelectorRequired` (IST0112); a port
/// the service does not have is IST0101 on `host:port`. And, for a
/// VirtualService bound to gateways, an `http` route to a host without a
/// subset where another VirtualService routes that host (one of its own
/// `hosts`) by subset is `IngressRouteRulesNotAffected` (IST0140).
pub fn destination_hosts(input: &Input, out: &mut Vec<Message>) {
    let registry = Registry::of(input);
    for (entry, vs) in each(input, pick::virtual_service) {
        for (place, at, d) in destinations(vs) {
            let Some(service) = registry.lookup(namespace(entry), &vs.export_to, &d.host) else {
                let reftype = match place {
                    Place::Route => "host",
                    Place::Mirror => "mirror host",
                };
                out.push(
                    Message::new(
                        message::REFERENCED_RESOURCE_NOT_FOUND,
                        Some(&entry.resource),
                        vec![reftype.into(), d.host.clone().into()],
                    )
                    .at(format!("{at}.host")),
                );
                continue;
            };
            match &d.port {
                None if service.ports.len() > 1 => out.push(
                    Message::new(
                        message::VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED,
                        Some(&entry.resource),
                        vec![
                            d.host.clone().into(),
                            Param::List(service.ports.iter().map(|(n, _)| n.to_string()).collect()),
                        ],
                    )
                    .at(format!("{at}.host")),
                ),
                Some(port) if !service.ports.iter().any(|(n, _)| *n == port.number) => out.push(
                    Message::new(
                        message::REFERENCED_RESOURCE_NOT_FOUND,
                        Some(&entry.resource),
                        vec![
                            "host:port".into(),
                            format!("{}:{}", d.host, port.number).into(),
                        ],
                    )
                    .at(format!("{at}.host")),
                ),
                _ => {}
            }
        }
    }
    ingress_subsets(input, out);
}

/// Istio's `analyzeSubset`: see [`destination_hosts`].
fn ingress_subsets(input: &Input, out: &mut Vec<Message>) {
    // (VirtualService full name, host) of each subset destination whose
    // host is one of that VirtualService's own hosts.
    let mut by_subset: Vec<(String, &str)> = Vec::new();
    for (entry, vs) in each(input, pick::virtual_service) {
        for d in vs
            .http
            .iter()
            .flat_map(|r| &r.route)
            .map(|d| &d.destination)
        {
            if d.subset.is_some() && vs.hosts.contains(&d.host) {
                by_subset.push((full_name(entry), &d.host));
            }
        }
    }
    for (entry, vs) in each(input, pick::virtual_service) {
        if vs.gateways.is_empty() {
            continue;
        }
        for d in vs
            .http
            .iter()
            .flat_map(|r| &r.route)
            .map(|d| &d.destination)
        {
            if d.subset.is_some() {
                continue;
            }
            for (other, _) in by_subset.iter().filter(|(_, host)| *host == d.host) {
                out.push(Message::new(
                    message::INGRESS_ROUTE_RULES_NOT_AFFECTED,
                    Some(&entry.resource),
                    vec![other.clone().into(), full_name(entry).into()],
                ));
            }
        }
    }
}

/// A destination with a `subset` must name a subset a DestinationRule
/// defines for that host (short names completed in each object's
/// namespace), else `ReferencedResourceNotFound` (IST0101, `host+subset
/// in destinationrule` or `mirror+subset in destinationrule`).
pub fn destination_rules(input: &Input, out: &mut Vec<Message>) {
    let mut defined = HashSet::new();
    for (entry, dr) in each(input, pick::destination_rule) {
        let host = hosts::service_name(namespace(entry), &dr.host);
        for subset in &dr.subsets {
            defined.insert((host.clone(), subset.name.clone()));
        }
    }
    for (entry, vs) in each(input, pick::virtual_service) {
        for (place, at, d) in destinations(vs) {
            let Some(subset) = &d.subset else { continue };
            let host = hosts::service_name(namespace(entry), &d.host);
            if defined.contains(&(host, subset.clone())) {
                continue;
            }
            let reftype = match place {
                Place::Route => "host+subset in destinationrule",
                Place::Mirror => "mirror+subset in destinationrule",
            };
            out.push(
                Message::new(
                    message::REFERENCED_RESOURCE_NOT_FOUND,
                    Some(&entry.resource),
                    vec![reftype.into(), format!("{}+{subset}", d.host).into()],
                )
                .at(format!("{at}.host")),
            );
        }
    }
}

/// Each gateway a VirtualService names (but `mesh`) must exist
/// (`ReferencedResourceNotFound`, IST0101, on `gateway`), and serve one of
/// the VirtualService's hosts (`VirtualServiceHostNotFoundInGateway`,
/// IST0132): a server host `ns/host` counts for VirtualServices of `ns`
/// (`.` is the Gateway's namespace, `*` any), wildcards matching.
pub fn gateways(input: &Input, out: &mut Vec<Message>) {
    let gateways: Vec<_> = each(input, pick::gateway).collect();
    for (entry, vs) in each(input, pick::virtual_service) {
        let vs_ns = namespace(entry);
        for (i, name) in vs.gateways.iter().enumerate() {
            if name == "mesh" {
                continue;
            }
            let full = super::gateway_name(vs_ns, name);
            let gateway = gateways.iter().find(|(e, _)| full_name(e) == full);
            if gateway.is_none() {
                out.push(
                    Message::new(
                        message::REFERENCED_RESOURCE_NOT_FOUND,
                        Some(&entry.resource),
                        vec!["gateway".into(), name.clone().into()],
                    )
                    .at(format!("spec.gateways[{i}]")),
                );
            }
            let served = gateway.is_some_and(|(gw_entry, gw)| {
                let gw_ns = namespace(gw_entry);
                gw.servers
                    .iter()
                    .flat_map(|s| &s.hosts)
                    .filter_map(|h| match h.split_once('/') {
                        None => Some(h.as_str()),
                        Some((ns, host)) => {
                            let ns = if ns == "." { gw_ns } else { ns };
                            (ns == "*" || ns == vs_ns).then_some(host)
                        }
                    })
                    .any(|g| vs.hosts.iter().any(|h| hosts::matches(g, h)))
            });
            if !served {
                out.push(Message::new(
                    message::VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY,
                    Some(&entry.resource),
                    vec![
                        Param::List(vs.hosts.clone()),
                        full_name(entry).into(),
                        full.into(),
                    ],
                ));
            }
        }
    }
}

/// VirtualServices bound to the mesh (no `gateways`, or `mesh` among
/// them) that define the same host for the same namespaces (`exportTo`)
/// are each `ConflictingMeshGatewayVirtualServiceHosts` (IST0109): which
/// one a sidecar uses is undefined. The host is given as Istio gives it,
/// `<scope>/<fqdn>` (`*` for every namespace).
pub fn conflicting_mesh_hosts(input: &Input, out: &mut Vec<Message>) {
    let mut by_host: std::collections::BTreeMap<String, Vec<&crate::Entry>> = Default::default();
    for (entry, vs) in each(input, pick::virtual_service) {
        if !(vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh")) {
            continue;
        }
        let ns = namespace(entry);
        for scope in hosts::scopes(&vs.export_to, ns) {
            for host in &vs.hosts {
                by_host
                    .entry(format!("{scope}/{}", hosts::fqdn(ns, host)))
                    .or_default()
                    .push(entry);
            }
        }
    }
    for (host, entries) in by_host {
        if entries.len() < 2 {
            continue;
        }
        let names: Vec<String> = entries.iter().map(|e| full_name(e)).collect();
        let names = names.join(",");
        for entry in entries {
            out.push(Message::new(
                message::CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS,
                Some(&entry.resource),
                vec![names.clone().into(), host.clone().into()],
            ));
        }
    }
}

/// The header key of a match on a JWT claim (`@request.auth.claims...`),
/// in `headers` or `withoutHeaders`, if the VirtualService has one.
fn jwt_claim_key(vs: &VirtualServiceSpec) -> Option<&str> {
    vs.http
        .iter()
        .flat_map(|r| &r.matches)
        .flat_map(|m| m.headers.keys().chain(m.without_headers.keys()))
        .map(String::as_str)
        .find(|k| k.starts_with("@request.auth.claims"))
}

/// A VirtualService routing by a JWT claim on a gateway: each pod of that
/// gateway needs a RequestAuthentication (of its namespace or
/// `istio-system`) selecting it, which validates the token and makes its
/// claims available, else `JwtClaimBasedRoutingWithoutRequestAuthN`
/// (IST0149) (Istio's `virtualservice.JWTClaimRouteAnalyzer`).
pub fn jwt_claim_routes(input: &Input, out: &mut Vec<Message>) {
    let authns: Vec<(&str, std::collections::BTreeMap<String, String>)> =
        each(input, pick::request_authentication)
            .map(|(e, ra)| {
                let selector = ra.selector.as_ref().map(|s| s.match_labels.clone());
                (namespace(e), selector.unwrap_or_default())
            })
            .collect();
    let gateways: Vec<_> = each(input, pick::gateway).collect();
    let pods: Vec<_> = each(input, pick::pod).collect();
    for (entry, vs) in each(input, pick::virtual_service) {
        let Some(key) = jwt_claim_key(vs) else {
            continue;
        };
        for name in vs.gateways.iter().filter(|g| *g != "mesh") {
            let full = super::gateway_name(namespace(entry), name);
            let Some((_, gateway)) = gateways.iter().find(|(e, _)| full_name(e) == full) else {
                continue;
            };
            for (pod_entry, pod) in &pods {
                let labels = pod.metadata.labels.as_ref();
                if !hosts::selects(&gateway.selector, labels) {
                    continue;
                }
                let covered = authns.iter().any(|(ns, selector)| {
                    (*ns == "istio-system" || *ns == namespace(pod_entry))
                        && hosts::selects(selector, labels)
                });
                if !covered {
                    out.push(Message::new(
                        message::JWT_CLAIM_BASED_ROUTING_WITHOUT_REQUEST_AUTHN,
                        Some(&entry.resource),
                        vec![
                            key.into(),
                            full.clone().into(),
                            pod_entry.resource.name.clone().into(),
                        ],
                    ));
                }
            }
        }
    }
}
