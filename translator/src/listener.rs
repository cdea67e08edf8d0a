//! LDS and RDS: the sidecar's `virtualOutbound` (15001) with per-port
//! listeners behind it, and a gateway's listener per server port.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use crate::cluster::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, cluster_name};
use crate::model::{Proxy, Service, Snapshot, exported_to};
use crate::route::{RouteCtx, catch_all_route, default_route, virtual_service_routes};
use crate::{CORS_FILTER, ConfigWarning, FAULT_FILTER, ads_config_source, socket_address};

/// Istio's outbound capture port (`istio-init` redirects here).
pub const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
/// Istio's name of the outbound capture listener.
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";

/// Sidecar listeners and route configurations.
pub(crate) fn sidecar(
    snap: &Snapshot,
    proxy: &Proxy,
    warnings: &mut Vec<ConfigWarning>,
) -> (Vec<Listener>, Vec<RouteConfiguration>) {
    let fallback = if snap.mesh.allow_any {
        PASSTHROUGH_CLUSTER
    } else {
        BLACKHOLE_CLUSTER
    };
    let mut listeners = vec![Listener {
        name: VIRTUAL_OUTBOUND.into(),
        address: Some(socket_address("0.0.0.0", VIRTUAL_OUTBOUND_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![tcp_chain(
            "virtualOutbound-catchall-tcp",
            fallback,
            fallback,
        )],
        ..Default::default()
    }];
    let mut http_ports: BTreeMap<u32, Vec<&Service>> = BTreeMap::new();
    for svc in snap.visible_services(&proxy.namespace) {
        for port in &svc.ports {
            if port.protocol.is_http() {
                http_ports.entry(port.port).or_default().push(svc);
            } else {
                for vip in &svc.vips {
                    let cluster = cluster_name(port.port, "", &svc.hostname);
                    let name = format!("{vip}_{}", port.port);
                    listeners.push(unbound_listener(
                        &name,
                        vip,
                        port.port,
                        tcp_chain(&name, &name, &cluster),
                    ));
                }
            }
        }
    }
    let mut routes = Vec::new();
    for (port, services) in http_ports {
        let name = port.to_string();
        let chain = hcm_chain(&format!("outbound_0.0.0.0_{port}"), &name, false);
        listeners.push(unbound_listener(
            &format!("0.0.0.0_{port}"),
            "0.0.0.0",
            port,
            chain,
        ));
        let ctx = RouteCtx {
            snap,
            proxy,
            port,
            gateways: &[],
        };
        let mut used = BTreeSet::new();
        let mut vhosts = Vec::new();
        for svc in services {
            let domains: Vec<String> = service_domains(svc, proxy, port)
                .into_iter()
                .filter(|d| used.insert(d.clone()))
                .collect();
            if domains.is_empty() {
                continue;
            }
            let vs = snap.virtual_services.iter().find(|vs| {
                exported_to(&vs.spec.export_to, &vs.namespace, &proxy.namespace)
                    && (vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh"))
                    && vs
                        .spec
                        .hosts
                        .iter()
                        .any(|h| snap.resolve_host(h, &vs.namespace) == svc.hostname)
            });
            let routes = match vs {
                Some(vs) => virtual_service_routes(&ctx, vs, warnings),
                None => vec![default_route(&ctx, &svc.hostname)],
            };
            vhosts.push(VirtualHost {
                name: format!("{}:{port}", svc.hostname),
                domains,
                routes,
                ..Default::default()
            });
        }
        vhosts.push(VirtualHost {
            name: if snap.mesh.allow_any {
                "allow_any"
            } else {
                "block_all"
            }
            .into(),
            domains: vec!["*".into()],
            routes: vec![catch_all_route(
                if snap.mesh.allow_any {
                    "allow_any"
                } else {
                    "block_all"
                },
                fallback,
            )],
            ..Default::default()
        });
        routes.push(RouteConfiguration {
            name,
            virtual_hosts: vhosts,
            validate_clusters: Some(BoolValue { value: false }),
            ..Default::default()
        });
    }
    (listeners, routes)
}

/// Istio's domain set for a service on a port: FQDN, `name.ns.svc`,
/// `name.ns`, the short name (same namespace only), VIPs; each also with `:port`.
fn service_domains(svc: &Service, proxy: &Proxy, port: u32) -> Vec<String> {
    let mut hosts = vec![svc.hostname.clone()];
    if svc.kubernetes {
        hosts.push(format!("{}.{}.svc", svc.name, svc.namespace));
        hosts.push(format!("{}.{}", svc.name, svc.namespace));
        if proxy.namespace == svc.namespace {
            hosts.push(svc.name.clone());
        }
    }
    hosts.extend(svc.vips.iter().cloned());
    hosts
        .into_iter()
        .flat_map(|h| [format!("{h}:{port}"), h])
        .collect()
}

/// Gateway (router) listeners and route configurations: one listener per
/// HTTP server port of every Gateway whose `selector` matches the proxy.
pub(crate) fn gateway(
    snap: &Snapshot,
    proxy: &Proxy,
    warnings: &mut Vec<ConfigWarning>,
) -> (Vec<Listener>, Vec<RouteConfiguration>) {
    // port -> [(gateway key, server hosts)]
    let mut ports: BTreeMap<u32, Vec<(String, Vec<String>)>> = BTreeMap::new();
    for gw in &snap.gateways {
        if gw.spec.selector.is_empty()
            || !gw
                .spec
                .selector
                .iter()
                .all(|(k, v)| proxy.labels.get(k) == Some(v))
        {
            continue;
        }
        for (i, server) in gw.spec.servers.iter().enumerate() {
            let proto = server.port.protocol.to_ascii_uppercase();
            if !matches!(proto.as_str(), "HTTP" | "HTTP2" | "GRPC") || server.tls.is_some() {
                warnings.push(ConfigWarning::new(
                    "Gateway",
                    gw.key(),
                    format!("spec.servers[{i}]"),
                    format!(
                        "{proto} servers and servers with `tls` are not served yet; server skipped"
                    ),
                ));
                continue;
            }
            ports
                .entry(server.port.number)
                .or_default()
                .push((gw.key(), server.hosts.clone()));
        }
    }
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    for (port, servers) in ports {
        let rc_name = format!("http.{port}");
        let chain = hcm_chain(&format!("outbound_0.0.0.0_{port}"), &rc_name, true);
        listeners.push(Listener {
            name: format!("0.0.0.0_{port}"),
            address: Some(socket_address("0.0.0.0", port)),
            filter_chains: vec![chain],
            ..Default::default()
        });
        let gateway_keys: Vec<String> = servers.iter().map(|(k, _)| k.clone()).collect();
        let ctx = RouteCtx {
            snap,
            proxy,
            port,
            gateways: &gateway_keys,
        };
        let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
        for vs in &snap.virtual_services {
            if !exported_to(&vs.spec.export_to, &vs.namespace, &proxy.namespace) {
                continue;
            }
            for host in &vs.spec.hosts {
                let bound = servers.iter().any(|(gw, server_hosts)| {
                    let listed = vs.spec.gateways.iter().any(|g| {
                        let full = if g.contains('/') {
                            g.clone()
                        } else {
                            format!("{}/{g}", vs.namespace)
                        };
                        full == *gw
                    });
                    listed
                        && server_hosts
                            .iter()
                            .any(|sh| server_host_matches(sh, &vs.namespace, host))
                });
                if !bound {
                    continue;
                }
                let vh = vhosts.entry(host.clone()).or_insert_with(|| VirtualHost {
                    name: format!("{host}:{port}"),
                    domains: if host == "*" {
                        vec!["*".into()]
                    } else {
                        vec![host.clone(), format!("{host}:{port}")]
                    },
                    ..Default::default()
                });
                vh.routes.extend(virtual_service_routes(&ctx, vs, warnings));
            }
        }
        routes.push(RouteConfiguration {
            name: rc_name,
            virtual_hosts: vhosts.into_values().collect(),
            validate_clusters: Some(BoolValue { value: false }),
            ..Default::default()
        });
    }
    (listeners, routes)
}

/// Gateway server host `[ns/]host` against a VirtualService host in `vs_ns`.
fn server_host_matches(server_host: &str, vs_ns: &str, vs_host: &str) -> bool {
    let (ns, host) = server_host.split_once('/').unwrap_or(("*", server_host));
    if ns != "*" && ns != "." && ns != vs_ns {
        return false;
    }
    wildcard_match(host, vs_host) || wildcard_match(vs_host, host)
}

/// `pattern` (`*`, `*.example.com` or a name) covers `host`.
fn wildcard_match(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix),
        None => pattern == host,
    }
}

fn unbound_listener(name: &str, ip: &str, port: u32, chain: FilterChain) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(socket_address(ip, port)),
        bind_to_port: Some(BoolValue { value: false }),
        filter_chains: vec![chain],
        ..Default::default()
    }
}

fn tcp_chain(chain_name: &str, stat_prefix: &str, cluster: &str) -> FilterChain {
    let tcp = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
        ..Default::default()
    };
    FilterChain {
        name: chain_name.to_owned(),
        filters: vec![Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(tcp))),
        }],
        ..Default::default()
    }
}

fn hcm_chain(stat_prefix: &str, route_config: &str, gateway: bool) -> FilterChain {
    let hcm = HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: route_config.to_owned(),
        })),
        http_filters: vec![
            HttpFilter {
                name: CORS_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    Cors::default(),
                ))),
                ..Default::default()
            },
            HttpFilter {
                name: FAULT_FILTER.into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    HttpFault::default(),
                ))),
                ..Default::default()
            },
            HttpFilter {
                name: "envoy.filters.http.router".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                    Router::default(),
                ))),
                ..Default::default()
            },
        ],
        use_remote_address: Some(BoolValue { value: gateway }),
        ..Default::default()
    };
    FilterChain {
        name: String::new(),
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
        }],
        ..Default::default()
    }
}
