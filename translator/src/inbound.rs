//! The sidecar's inbound side: the `virtualInbound` listener on 15006
//! (where `istio-init` redirects traffic to the pod) and its clusters.
//!
//! Per port the workload serves ([`Snapshot::inbound_ports`]) there are
//! filter chains chosen by the effective PeerAuthentication mode, as Istio
//! builds them:
//! - `STRICT`: one chain for TLS, terminating Istio mTLS (the workload
//!   certificate `default` and the root `ROOTCA` from the node agent over
//!   SDS, client certificate required). Plaintext matches no chain and is
//!   closed.
//! - `PERMISSIVE`: that chain for TLS offering Istio's ALPN
//!   (`istio-peer-exchange`, `istio`, `istio-http/*`), and plaintext
//!   chains for everything else (raw TCP, and TLS not from the mesh,
//!   passed on as it is).
//! - `DISABLE`: the plaintext chain only; or, on a Sidecar ingress port
//!   with `tls`, one chain terminating that TLS (Istio's TLS termination
//!   at the sidecar for clients outside the mesh).
//!
//! HTTP ports end in an HTTP connection manager that appends the caller's
//! identity to `x-forwarded-client-cert` (`By`, `URI`, ...) and routes to
//! `inbound|<port>||`; other ports in a TCP proxy to it. Ports without a
//! service go to `InboundPassthroughCluster` under the workload's mode.
//! Both clusters forward to the original destination, bound to Istio's
//! `127.0.0.6` so the capture rules can tell them from the app's traffic.

use std::collections::BTreeMap;

use crds::peer_authentication::{MtlsMode, PeerMtls};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{DiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, SocketAddress, TransportSocket, socket_address as address, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SubjectAltNameMatcher,
    common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;

use crate::ConfigWarning;
use crate::cluster::BLACKHOLE_CLUSTER;
use crate::model::{Config, InboundPort, MeshConfig, Protocol, Proxy, Snapshot};
use crate::policy::{ROOT_CA, UPSTREAM_HTTP_OPTIONS, WORKLOAD_CERT, agent_secret};
use crate::{duration, socket_address};

/// Istio's inbound capture port (`istio-init` redirects inbound TCP here).
pub const VIRTUAL_INBOUND_PORT: u32 = 15006;
/// Istio's name of the inbound capture listener.
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
/// Istio's cluster for inbound traffic to ports no service declares.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// The source address of the sidecar's connections to its app (Istio's
/// `InboundPassthroughBindIpv4`).
pub const INBOUND_BIND_ADDRESS: &str = "127.0.0.6";
/// The ALPN values Istio's clients offer for mesh mTLS; the `PERMISSIVE`
/// mTLS chain matches on them.
pub const ISTIO_ALPNS: [&str; 5] = [
    "istio-peer-exchange",
    "istio",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];
/// Seconds Envoy waits for the first bytes before choosing a chain anyway
/// (server-speaks-first protocols); Istio's `protocolDetectionTimeout`
/// is not used, the TLS inspector alone decides.
const LISTENER_FILTERS_TIMEOUT_SECS: u64 = 5;

/// Istio's inbound cluster name: `inbound|9080||` (the target port).
pub fn inbound_cluster_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// What a workload's inbound accepts (PeerAuthentication `mtls.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerMode {
    /// Plaintext only.
    Disable,
    /// Istio mTLS and plaintext (Istio's default).
    Permissive,
    /// Istio mTLS only.
    Strict,
}

/// The effective PeerAuthentication of one workload: its mode and the
/// port-level overrides (by target port) of its workload-selector policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPolicy {
    /// The workload-wide mode.
    pub mode: PeerMode,
    /// `portLevelMtls`, by target port, `UNSET` already resolved.
    pub ports: BTreeMap<u32, PeerMode>,
}

impl PeerMode {
    /// Istio's name of the mode (`STRICT`).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerMode::Disable => "DISABLE",
            PeerMode::Permissive => "PERMISSIVE",
            PeerMode::Strict => "STRICT",
        }
    }
}

impl PeerPolicy {
    /// The mode on `port`.
    pub fn for_port(&self, port: u32) -> PeerMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

fn mode_of(mtls: Option<&PeerMtls>) -> Option<PeerMode> {
    match mtls.and_then(|m| m.mode)? {
        MtlsMode::Unset => None,
        MtlsMode::Disable => Some(PeerMode::Disable),
        MtlsMode::Permissive => Some(PeerMode::Permissive),
        MtlsMode::Strict => Some(PeerMode::Strict),
    }
}

/// Istio's PeerAuthentication resolution for `proxy`: the policy of its
/// namespace whose `selector` matches its labels, else its namespace's
/// policy without a selector, else the mesh policy (root namespace
/// `istio-system`, no selector); a level whose mode is `UNSET` (or absent)
/// inherits the next, and the default is `PERMISSIVE`. Port-level modes
/// come from the workload-selector policy only, as in Istio. Among several
/// policies at one level, the first by name wins.
pub fn peer_policy(snap: &Snapshot, proxy: &Proxy) -> PeerPolicy {
    peer_policy_of(snap, &proxy.namespace, &proxy.labels)
}

/// [`peer_policy`] of the workload in `namespace` with `labels`.
pub fn peer_policy_of(
    snap: &Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> PeerPolicy {
    let unselected = |pa: &&Pa| {
        pa.spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
    };
    let selects = |pa: &&Pa| {
        pa.spec.selector.as_ref().is_some_and(|s| {
            !s.match_labels.is_empty()
                && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
    };
    let mesh = in_namespace(snap, &snap.mesh.root_namespace).find(unselected);
    let ns_level = in_namespace(snap, namespace).find(unselected);
    let workload = in_namespace(snap, namespace).find(selects);
    let mesh_mode = mesh
        .and_then(|pa| mode_of(pa.spec.mtls.as_ref()))
        .unwrap_or(PeerMode::Permissive);
    let ns_mode = ns_level
        .and_then(|pa| mode_of(pa.spec.mtls.as_ref()))
        .unwrap_or(mesh_mode);
    let mode = workload
        .and_then(|pa| mode_of(pa.spec.mtls.as_ref()))
        .unwrap_or(ns_mode);
    let ports = workload
        .map(|pa| {
            pa.spec
                .port_level_mtls
                .iter()
                .map(|(port, m)| (*port, mode_of(Some(m)).unwrap_or(mode)))
                .collect()
        })
        .unwrap_or_default();
    PeerPolicy { mode, ports }
}

type Pa = Config<crds::PeerAuthenticationSpec>;

fn in_namespace<'a>(snap: &'a Snapshot, ns: &'a str) -> impl Iterator<Item = &'a Pa> + 'a {
    snap.peer_authentications
        .iter()
        .filter(move |pa| pa.namespace == ns)
}

/// The `virtualInbound` listener (then a listener of its own for each
/// Sidecar ingress port with `captureMode: NONE`) and the inbound clusters
/// of a sidecar; what its Sidecar's ingress `tls` cannot apply goes to
/// `warnings`.
pub(crate) fn build(
    snap: &Snapshot,
    proxy: &Proxy,
    warnings: &mut Vec<ConfigWarning>,
) -> (Vec<Listener>, Vec<Cluster>) {
    let policy = peer_policy(snap, proxy);
    let mesh = &snap.mesh;
    let observe = crate::telemetry::Observe::of(snap, proxy, crate::telemetry::Side::Server);
    let authz = crate::authz::filters(snap, &proxy.namespace, &proxy.labels);
    let mut chains = vec![FilterChain {
        // Traffic addressed to 15006 itself would loop.
        name: "virtualInbound-blackhole".into(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(envoy_types::pb::google::protobuf::UInt32Value {
                value: VIRTUAL_INBOUND_PORT,
            }),
            ..Default::default()
        }),
        filters: vec![tcp_proxy_filter(
            BLACKHOLE_CLUSTER,
            BLACKHOLE_CLUSTER,
            &observe.access_log,
        )],
        ..Default::default()
    }];
    let mut clusters = vec![original_dst_cluster(INBOUND_PASSTHROUGH_CLUSTER, false)];
    let sidecar_config = snap.sidecar_for(proxy);
    let sidecar = sidecar_config.map(|sc| &sc.spec);
    let mut bound = Vec::new();
    for (p, app) in served_ports(snap, proxy, sidecar) {
        if p.port == VIRTUAL_INBOUND_PORT {
            continue;
        }
        let name = inbound_cluster_name(p.port);
        let http2 = matches!(p.protocol, Protocol::Http2 | Protocol::Grpc);
        let mut cluster = match app {
            Some((address, port)) => app_cluster(&name, http2, address, port),
            None => original_dst_cluster(&name, http2),
        };
        if let Some(pool) = sidecar.and_then(|sc| inbound_pool(sc, p.port)) {
            crate::policy::apply_connection_pool(pool, &mut cluster, http2);
        }
        if proxy.stats_logger {
            cluster.metadata = crate::cluster::services_metadata(
                snap.inbound_services(&proxy.ip)
                    .iter()
                    .filter(|(port, _)| *port == p.port)
                    .filter_map(|(_, host)| snap.services.get(host))
                    .map(|svc| &**svc),
            );
        }
        clusters.push(cluster);
        let around = Around {
            mesh,
            observe: &observe,
            authz: &authz,
        };
        let mode = policy.for_port(p.port);
        let port_chains = match sidecar_config
            .and_then(|sc| terminated_chain(snap, sc, &p, mode, &name, &around, warnings))
        {
            Some(chain) => chain.into_iter().collect(),
            None => port_chains(mode, Some(&p), &name, &around),
        };
        if let Some(address) = sidecar.and_then(|sc| uncaptured(sc, p.port, &proxy.ip)) {
            let name = format!("{address}_{}", p.port);
            bound.push(inbound_listener(
                &name,
                address,
                p.port,
                port_chains.clone(),
            ));
        }
        chains.extend(port_chains);
    }
    chains.extend(port_chains(
        policy.mode,
        None,
        INBOUND_PASSTHROUGH_CLUSTER,
        &Around {
            mesh,
            observe: &observe,
            authz: &authz,
        },
    ));
    let mut listener = inbound_listener(VIRTUAL_INBOUND, "0.0.0.0", VIRTUAL_INBOUND_PORT, chains);
    // Captured traffic: the chains match on where it was going.
    listener.listener_filters.insert(
        0,
        listener_filter_of(
            "envoy.filters.listener.original_dst",
            OriginalDst::default(),
        ),
    );
    let mut listeners = vec![listener];
    listeners.extend(bound);
    (listeners, clusters)
}

/// The chain of a Sidecar ingress port whose `tls` the sidecar terminates,
/// as Istio's `buildInboundListeners` (behind its
/// `ENABLE_TLS_ON_SIDECAR_INGRESS`, on here): only where the port's
/// PeerAuthentication mode is `DISABLE` (else the settings are ignored, and
/// reported); the context as a Gateway server's
/// ([`crate::listener::downstream_tls`]; from files: validation refuses
/// `credentialName` and `tlsCertificates` here, as Istio's); what is inside is the port's protocol
/// after termination (`HTTPS` is HTTP, `TLS` is TCP). `None` when the port
/// has no `tls` or it does not apply; `Some(None)` when the context cannot
/// be made (reported; the port then has no chain of its own).
fn terminated_chain(
    snap: &Snapshot,
    sidecar: &Config<crds::SidecarSpec>,
    port: &InboundPort,
    mode: PeerMode,
    cluster: &str,
    around: &Around<'_>,
    warnings: &mut Vec<ConfigWarning>,
) -> Option<Option<FilterChain>> {
    let (index, listener) = sidecar
        .spec
        .ingress
        .iter()
        .enumerate()
        .find(|(_, i)| i.port.number == port.port)?;
    let tls = listener.tls.as_ref()?;
    let field = format!("spec.ingress[{index}]");
    if mode != PeerMode::Disable {
        warnings.push(ConfigWarning::new(
            "Sidecar",
            sidecar.key(),
            format!("{field}.tls"),
            format!(
                "applies only where PeerAuthentication disables mTLS on port {} (it is {} there); ignored",
                port.port,
                mode.as_str()
            ),
        ));
        return None;
    }
    let name = if listener.port.protocol.is_empty() {
        &listener.port.name
    } else {
        &listener.port.protocol
    };
    let https = name.to_ascii_lowercase().starts_with("https");
    let http = https || port.protocol.is_http();
    let site = crate::listener::TlsSite {
        kind: "Sidecar",
        key: sidecar.key(),
        field,
        what: "port",
        namespaces: [&sidecar.namespace, &sidecar.namespace],
    };
    // No Secrets: validation refuses `credentialName` on a sidecar.
    let mut secrets = BTreeMap::new();
    let Some(ctx) =
        crate::listener::downstream_tls(snap, &site, tls, !http, &mut secrets, warnings)
    else {
        return Some(None);
    };
    let label = format!("0.0.0.0_{}", port.port);
    Some(Some(FilterChain {
        name: format!("{label}-terminated"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(envoy_types::pb::google::protobuf::UInt32Value {
                value: port.port,
            }),
            transport_protocol: "tls".into(),
            ..Default::default()
        }),
        filters: if http {
            vec![inbound_hcm(port.port, cluster, around)]
        } else {
            around.tcp(&format!("inbound_{label}"), cluster)
        },
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
        }),
        ..Default::default()
    }))
}

/// Where a Sidecar ingress listener on `port` with `captureMode: NONE`
/// listens (no iptables hands its traffic to `virtualInbound`): its `bind`,
/// else the workload's address `ip`, as Istio's.
fn uncaptured<'a>(sc: &'a crds::SidecarSpec, port: u32, ip: &'a str) -> Option<&'a str> {
    let listener = sc.ingress.iter().find(|i| i.port.number == port)?;
    (listener.capture_mode.as_deref() == Some("NONE")).then(|| {
        listener
            .bind
            .as_deref()
            .filter(|b| !b.is_empty())
            .unwrap_or(ip)
    })
}

/// An inbound listener `name` at `address:port` with `chains`, Istio mTLS
/// told from plaintext by the TLS inspector: `virtualInbound`, or a
/// `captureMode: NONE` port's own (`<address>_<port>`).
fn inbound_listener(name: &str, address: &str, port: u32, chains: Vec<FilterChain>) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(socket_address(address, port)),
        traffic_direction: envoy_types::pb::envoy::config::core::v3::TrafficDirection::Inbound
            as i32,
        listener_filters: vec![listener_filter_of(
            "envoy.filters.listener.tls_inspector",
            TlsInspector::default(),
        )],
        listener_filters_timeout: Some(duration(std::time::Duration::from_secs(
            LISTENER_FILTERS_TIMEOUT_SECS,
        ))),
        continue_on_listener_filters_timeout: true,
        filter_chains: chains,
        ..Default::default()
    }
}

/// The ports a sidecar's inbound serves, each with where its app is when
/// not at the original destination: those of its Sidecar's `ingress`
/// when it has any (the first of a port number), else those of the
/// services it is an endpoint of ([`Snapshot::inbound_ports`]), as
/// Istio's `buildInboundChainConfigs`.
fn served_ports<'a>(
    snap: &'a Snapshot,
    proxy: &'a Proxy,
    sidecar: Option<&'a crds::SidecarSpec>,
) -> Vec<(InboundPort, Option<(&'a str, u32)>)> {
    let Some(ingress) = sidecar.map(|sc| &sc.ingress).filter(|i| !i.is_empty()) else {
        return snap
            .inbound_ports(&proxy.ip)
            .iter()
            .map(|p| (*p, None))
            .collect();
    };
    let mut out: Vec<(InboundPort, Option<(&str, u32)>)> = Vec::with_capacity(ingress.len());
    for listener in ingress {
        let port = listener.port.number;
        if out.iter().any(|(p, _)| p.port == port) {
            continue;
        }
        let protocol = if listener.port.protocol.is_empty() {
            &listener.port.name
        } else {
            &listener.port.protocol
        };
        let app = listener
            .default_endpoint
            .as_deref()
            .and_then(|e| default_endpoint(e, &proxy.ip));
        out.push((
            InboundPort {
                port,
                protocol: Protocol::from_name(protocol),
            },
            app,
        ));
    }
    out.sort_by_key(|(p, _)| p.port);
    out
}

/// Where a Sidecar ingress listener's `defaultEndpoint` sends traffic:
/// `127.0.0.1:PORT` (or `[::1]:PORT`) to the app on loopback, `0.0.0.0:PORT`
/// (or `[::]:PORT`) to the workload's own address `ip`, `unix://PATH` to
/// the app's unix domain socket (port 0), as Istio's
/// `buildInboundClustersFromSidecar`. `None` (the original destination)
/// for anything else, which validation refuses.
fn default_endpoint<'a>(endpoint: &'a str, ip: &'a str) -> Option<(&'a str, u32)> {
    if endpoint.starts_with(crate::UNIX_PREFIX) {
        return Some((endpoint, 0));
    }
    let (host, port) = endpoint.rsplit_once(':')?;
    let port: u32 = port.parse().ok().filter(|p| (1..=65535).contains(p))?;
    if crate::model::names_own_address(endpoint) {
        return Some((ip, port));
    }
    match host.trim_start_matches('[').trim_end_matches(']') {
        "127.0.0.1" => Some(("127.0.0.1", port)),
        "::1" => Some(("::1", port)),
        _ => None,
    }
}

/// The connection pool of a sidecar's inbound cluster for `port`: the
/// Sidecar's ingress listener's on that port, else its
/// `inboundConnectionPool` (Istio's `InboundConnectionPoolForPort`).
fn inbound_pool(
    sidecar: &crds::SidecarSpec,
    port: u32,
) -> Option<&crds::destination_rule::ConnectionPoolSettings> {
    sidecar
        .ingress
        .iter()
        .filter(|i| i.port.number == port)
        .find_map(|i| i.connection_pool.as_ref())
        .or(sidecar.inbound_connection_pool.as_ref())
}

fn listener_filter_of<M: prost::Name>(name: &str, config: M) -> ListenerFilter {
    ListenerFilter {
        name: name.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

/// What every inbound chain of a workload carries besides its own
/// settings: the mesh settings, the tracer of its HTTP connection managers
/// and its security filters (JWT and RBAC, [`crate::authz::filters`]).
struct Around<'a> {
    mesh: &'a MeshConfig,
    observe: &'a crate::telemetry::Observe,
    authz: &'a crate::authz::Filters,
}

impl Around<'_> {
    /// The network filters of a TCP chain: RBAC, then the TCP proxy.
    fn tcp(&self, stat_prefix: &str, cluster: &str) -> Vec<Filter> {
        let mut filters = self.authz.tcp.clone();
        filters.push(tcp_proxy_filter(
            stat_prefix,
            cluster,
            &self.observe.access_log,
        ));
        filters
    }
}

/// The chains of one served port (`port` None: every other port, to the
/// passthrough cluster) under `mode`, each ending in `cluster`, with what
/// `around` adds.
fn port_chains(
    mode: PeerMode,
    port: Option<&InboundPort>,
    cluster: &str,
    around: &Around<'_>,
) -> Vec<FilterChain> {
    let mesh = around.mesh;
    let http = port.is_some_and(|p| p.protocol.is_http());
    let label = port.map_or_else(
        || VIRTUAL_INBOUND.to_owned(),
        |p| format!("0.0.0.0_{}", p.port),
    );
    let filters = || match port {
        Some(p) if http => vec![inbound_hcm(p.port, cluster, around)],
        _ => around.tcp(&format!("inbound_{label}"), cluster),
    };
    let matching = |transport: &str, alpn: &[&str]| FilterChainMatch {
        destination_port: port
            .map(|p| envoy_types::pb::google::protobuf::UInt32Value { value: p.port }),
        transport_protocol: transport.into(),
        application_protocols: alpn.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    };
    let mtls = |alpn: &[&str]| FilterChain {
        name: format!("{label}-mtls"),
        filter_chain_match: Some(matching("tls", alpn)),
        filters: filters(),
        transport_socket: Some(istio_server_tls(mesh, http)),
        ..Default::default()
    };
    let plain = |suffix: &str, transport: &str| FilterChain {
        name: format!("{label}-{suffix}"),
        filter_chain_match: Some(matching(transport, &[])),
        filters: filters(),
        ..Default::default()
    };
    // TLS that is not the mesh's (the app's own) passes through as bytes.
    let foreign_tls = FilterChain {
        name: format!("{label}-tls"),
        filter_chain_match: Some(matching("tls", &[])),
        filters: around.tcp(&format!("inbound_{label}"), cluster),
        ..Default::default()
    };
    match mode {
        PeerMode::Strict => vec![mtls(&[])],
        PeerMode::Permissive => vec![
            mtls(&ISTIO_ALPNS),
            foreign_tls,
            plain("plaintext", "raw_buffer"),
        ],
        PeerMode::Disable => vec![plain("plaintext", "")],
    }
}

/// Istio's server side of mesh mTLS: the workload certificate and root
/// from the node agent, a client certificate required and its SPIFFE ID
/// in one of the mesh's trust domains (its own and its aliases).
fn istio_server_tls(mesh: &MeshConfig, http: bool) -> TransportSocket {
    let common = CommonTlsContext {
        alpn_protocols: if http {
            vec!["h2".into(), "http/1.1".into()]
        } else {
            Vec::new()
        },
        tls_certificate_sds_secret_configs: vec![agent_secret(WORKLOAD_CERT)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: mesh
                            .trust_domains()
                            .map(|td| SubjectAltNameMatcher {
                                san_type: subject_alt_name_matcher::SanType::Uri as i32,
                                matcher: Some(StringMatcher {
                                    match_pattern: Some(string_matcher::MatchPattern::Prefix(
                                        format!("spiffe://{td}/"),
                                    )),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(agent_secret(ROOT_CA)),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    };
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// Istio's inbound HTTP connection manager: everything to `cluster`, no
/// route timeout, the caller's certificate details (subject, URI, DNS)
/// appended to `x-forwarded-client-cert`; traced and authorized as
/// `around` says.
fn inbound_hcm(port: u32, cluster: &str, around: &Around<'_>) -> Filter {
    let mut http_filters = Vec::with_capacity(around.authz.http.len() + 2);
    if around.observe.exchange {
        http_filters.push(crate::metrics::peer_filter(crate::telemetry::Side::Server));
    }
    http_filters.extend(around.observe.wasm.http(port, &around.authz.http));
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        tracing: around.observe.tracing.clone(),
        request_id_extension: around.observe.request_id.clone(),
        stat_prefix: format!("inbound_0.0.0.0_{port}"),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: cluster.to_owned(),
                virtual_hosts: vec![VirtualHost {
                    name: format!("inbound|http|{port}"),
                    domains: vec!["*".into()],
                    routes: vec![crate::route::catch_all_route("default", cluster)],
                    ..Default::default()
                }],
                validate_clusters: Some(BoolValue { value: false }),
                response_headers_to_add: if around.observe.exchange {
                    crate::metrics::peer_response_headers()
                } else {
                    Vec::new()
                },
                ..Default::default()
            },
        )),
        http_filters,
        forward_client_cert_details:
            http_connection_manager::ForwardClientCertDetails::AppendForward as i32,
        set_current_client_cert_details: Some(
            http_connection_manager::SetCurrentClientCertDetails {
                subject: Some(BoolValue { value: true }),
                dns: true,
                uri: true,
                ..Default::default()
            },
        ),
        use_remote_address: Some(BoolValue { value: false }),
        ..crate::istio_http_connection_manager(around.mesh, &around.observe.access_log)
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
    }
}

fn tcp_proxy_filter(
    stat_prefix: &str,
    cluster: &str,
    access_log: &[envoy_types::pb::envoy::config::accesslog::v3::AccessLog],
) -> Filter {
    let tcp = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
        access_log: crate::metrics::for_protocol(access_log, true),
        access_log_options: crate::metrics::tcp_log_options(access_log),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(tcp))),
    }
}

/// An `ORIGINAL_DST` cluster to the app, from `127.0.0.6`; HTTP/2 upstream
/// for `http2` ports.
fn original_dst_cluster(name: &str, http2: bool) -> Cluster {
    let mut c = inbound_cluster(name, http2, true);
    c.cluster_discovery_type = crate::policy::discovery(DiscoveryType::OriginalDst);
    c.lb_policy = LbPolicy::ClusterProvided as i32;
    c
}

/// A `STATIC` cluster to the app at `address:port` (a Sidecar ingress
/// listener's `defaultEndpoint`, or its `unix://` socket): from
/// `127.0.0.6` (which the capture lets through) unless the app is on
/// loopback, which is not captured, or on a socket, as Istio's
/// `buildInboundCluster`.
fn app_cluster(name: &str, http2: bool, address: &str, port: u32) -> Cluster {
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    let local =
        address == "127.0.0.1" || address == "::1" || address.starts_with(crate::UNIX_PREFIX);
    let mut c = inbound_cluster(name, http2, !local);
    c.cluster_discovery_type = crate::policy::discovery(DiscoveryType::Static);
    c.load_assignment = Some(ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(socket_address(address, port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    });
    c
}

/// What every inbound cluster has: Istio's connect timeout, HTTP/2
/// upstream for `http2` ports, and (when `bind`) `127.0.0.6` as the source
/// address, which the capture rules let through to the app.
fn inbound_cluster(name: &str, http2: bool, bind: bool) -> Cluster {
    let mut c = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(duration(std::time::Duration::from_secs(
            crate::cluster::CONNECT_TIMEOUT_SECS,
        ))),
        upstream_bind_config: bind.then(|| BindConfig {
            source_address: Some(SocketAddress {
                address: INBOUND_BIND_ADDRESS.into(),
                port_specifier: Some(address::PortSpecifier::PortValue(0)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    if http2 {
        c.typed_extension_protocol_options.insert(
            UPSTREAM_HTTP_OPTIONS.into(),
            pack_any(crate::policy::upstream_http_options(
                None,
                crate::policy::UpstreamProtocol::Http2(Default::default()),
            )),
        );
    }
    c
}
