//! LDS and RDS: the sidecar's `virtualOutbound` (15001) with per-port
//! listeners behind it, and a gateway's listener per server port.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use prost::Message;

use crds::GatewaySpec;
use crds::VirtualServiceSpec;
use crds::gateway::{Server, ServerTlsMode, ServerTlsSettings, TlsProtocol};
use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::{
    CidrRange, DataSource, TrafficDirection, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::virtual_host;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    TlsCertificate, TlsParameters, common_tls_context, secret, tls_parameters,
};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;

use crate::cluster::{BLACKHOLE_CLUSTER, cluster_name};
use crate::encoded::{Encoded, nested_len, put_head, put_string};
use crate::model::{Config, Protocol, Proxy, Service, Snapshot, TlsSecret, exported_to};
use crate::route::{
    RouteCtx, catch_all_route, default_route, default_route_field, direct_response_route,
    virtual_service_routes,
};
use crate::{
    CORS_FILTER, ConfigWarning, FAULT_FILTER, ads_config_source_waited_for,
    istio_http_connection_manager, socket_address,
};

/// Istio's outbound capture port (`istio-init` redirects here).
pub const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
/// Istio's name of the outbound capture listener.
pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";

/// Sidecar listeners and route configurations: `virtualOutbound`, an
/// exact `<vip>_<port>` listener per TCP service address, and per port a
/// wildcard `0.0.0.0_<port>` listener holding the TLS (by SNI) and CIDR
/// chains and, as its default, the HTTP route configuration `"<port>"`.
pub(crate) fn sidecar<'a>(
    snap: &'a Snapshot,
    proxy: &'a Proxy,
    warnings: &mut Vec<ConfigWarning>,
) -> (Vec<Listener>, Vec<RoutePlan<'a>>) {
    let fallback = &*snap.outbound_fallback(proxy);
    let observe = crate::telemetry::Observe::of(snap, proxy, crate::telemetry::Side::Client);
    let mut listeners = vec![Listener {
        name: VIRTUAL_OUTBOUND.into(),
        address: Some(socket_address("0.0.0.0", VIRTUAL_OUTBOUND_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        traffic_direction: TrafficDirection::Outbound as i32,
        filter_chains: vec![tcp_chain(
            "virtualOutbound-catchall-tcp",
            fallback,
            &[(fallback.to_owned(), 1)],
            None,
            &observe.access_log,
        )],
        ..Default::default()
    }];
    #[derive(Default)]
    struct PortPlan<'a> {
        http: Vec<&'a Arc<Service>>,
        chains: Vec<FilterChain>,
        tls: bool,
        /// On a bound port ([`bound_ports`]): the first TCP service's chain.
        tcp: Option<FilterChain>,
    }
    let mut ports: BTreeMap<u32, PortPlan<'_>> = BTreeMap::new();
    // A Sidecar whose egress listeners name ports scopes each port to its
    // own listener's hosts.
    let sidecar = snap.sidecar_for(proxy);
    let by_port = sidecar.filter(|sc| sc.spec.egress.iter().any(|e| e.port.is_some()));
    let bound = sidecar.map_or_else(BTreeMap::new, bound_ports);
    for svc in snap.services_for(proxy) {
        for port in &svc.ports {
            if by_port.is_some_and(|sc| !crate::model::egress_allows_port(sc, svc, port.port)) {
                continue;
            }
            let plan = ports.entry(port.port).or_default();
            if port.protocol.is_http() {
                plan.http.push(svc);
                continue;
            }
            if port.protocol == Protocol::Tls {
                plan.tls = true;
                plan.chains
                    .extend(tls_chains(snap, proxy, svc, port.port, &observe.access_log));
                continue;
            }
            let dests = tcp_destinations(snap, proxy, svc, port.port);
            let tunnel = tunneling(snap, proxy, &dests);
            if let Some(at) = bound.get(&port.port) {
                // One TCP service per bound address and port, as Istio's
                // listener conflict rule: the first.
                let name = format!("{}_{}", at.address, port.port);
                match &plan.tcp {
                    None => {
                        plan.tcp =
                            Some(tcp_chain(&name, &name, &dests, tunnel, &observe.access_log));
                    }
                    Some(_) => warnings.push(ConfigWarning::new(
                        "Sidecar",
                        sidecar.map(|sc| sc.key()).unwrap_or_default(),
                        "spec.egress[].bind".into(),
                        format!(
                            "{name} already carries another TCP service; {} left out there",
                            svc.hostname
                        ),
                    )),
                }
                continue;
            }
            for vip in svc.vips_for(proxy) {
                match vip.split_once('/') {
                    None => {
                        let name = format!("{vip}_{}", port.port);
                        listeners.push(unbound_listener(
                            &name,
                            vip,
                            port.port,
                            tcp_chain(&name, &name, &dests, tunnel.clone(), &observe.access_log),
                        ));
                    }
                    Some(_) => {
                        let name = format!("{vip}_{}", port.port);
                        let mut chain =
                            tcp_chain(&name, &name, &dests, tunnel.clone(), &observe.access_log);
                        chain.filter_chain_match = Some(FilterChainMatch {
                            prefix_ranges: vec![cidr_range(vip)],
                            ..Default::default()
                        });
                        plan.chains.push(chain);
                    }
                }
            }
        }
    }
    let mut routes = Vec::new();
    for (port, mut plan) in ports {
        let at = bound.get(&port);
        let address = at.map_or("0.0.0.0", |b| b.address.as_str());
        let name = format!("{address}_{port}");
        let default_chain = if let (true, Some(chain)) = (plan.http.is_empty(), plan.tcp.take()) {
            chain
        } else if plan.http.is_empty() {
            if plan.chains.is_empty() {
                continue;
            }
            tcp_chain(
                "PassthroughFilterChain",
                &name,
                &[(fallback.to_owned(), 1)],
                None,
                &observe.access_log,
            )
        } else {
            let route_plan = http_route_plan(snap, proxy, port, &plan.http, fallback, warnings);
            let sessions = route_plan.has_sessions();
            routes.push(route_plan);
            hcm_chain(
                &format!("outbound_0.0.0.0_{port}"),
                &port.to_string(),
                HcmOn {
                    port,
                    gateway: false,
                    sessions,
                },
                &snap.mesh,
                &observe,
                &dfp_http_filter(&plan.http, port, warnings),
            )
        };
        let mut listener = unbound_listener(&name, address, port, default_chain);
        if at.is_some_and(|b| b.bind_to_port) {
            // `captureMode: NONE`: the app connects here itself.
            listener.bind_to_port = None;
        }
        // The HTTP (or passthrough) chain is the default; the others match first.
        listener.default_filter_chain = listener.filter_chains.pop();
        listener.filter_chains =
            dedupe_chains("ServiceEntry", "spec.hosts", &name, plan.chains, warnings);
        if plan.tls {
            listener.listener_filters.push(ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                    TlsInspector::default(),
                ))),
                ..Default::default()
            });
        }
        listeners.push(listener);
    }
    (listeners, routes)
}

/// Where a Sidecar egress listener for one port listens, when it says so
/// (Istio's `bind` and `captureMode`).
struct BoundPort {
    /// `bind`; with `captureMode: NONE` and no `bind`, `127.0.0.1`.
    address: String,
    /// `captureMode: NONE`: a real listening socket the app connects to,
    /// rather than a listener `virtualOutbound` hands captured traffic.
    bind_to_port: bool,
}

/// The ports of `sc`'s egress listeners that have a `bind` or
/// `captureMode: NONE` (the first listener of a port wins). A `unix://`
/// bind is a socket the app connects to (Envoy's `Pipe`), always bound, as
/// nothing can be captured to it.
fn bound_ports(sc: &Config<crds::SidecarSpec>) -> BTreeMap<u32, BoundPort> {
    let mut out = BTreeMap::new();
    for e in &sc.spec.egress {
        let Some(port) = &e.port else { continue };
        let bind = e.bind.as_deref().filter(|b| !b.is_empty());
        let socket = bind.is_some_and(|b| b.starts_with(crate::UNIX_PREFIX));
        let none = e.capture_mode.as_deref() == Some("NONE") || socket;
        if bind.is_none() && !none {
            continue;
        }
        out.entry(port.number).or_insert_with(|| BoundPort {
            address: bind.unwrap_or("127.0.0.1").to_owned(),
            bind_to_port: none,
        });
    }
    out
}

/// Envoy refuses two chains with the same match; the first wins, as
/// Istio's oldest-config-wins rule. Each dropped chain is a warning on
/// `kind`'s `field`, naming the listener and the chain. Matches are compared
/// by their encoded bytes, so a port with many TLS services stays linear.
fn dedupe_chains(
    kind: &'static str,
    field: &str,
    listener: &str,
    chains: Vec<FilterChain>,
    warnings: &mut Vec<ConfigWarning>,
) -> Vec<FilterChain> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(chains.len());
    for c in chains {
        if !seen.insert(c.filter_chain_match.as_ref().map(Message::encode_to_vec)) {
            warnings.push(ConfigWarning::new(
                kind,
                listener.to_owned(),
                field.to_owned(),
                format!(
                    "filter chain {} matches the same SNI / address as an earlier one on this port; ignored",
                    c.name
                ),
            ));
            continue;
        }
        out.push(c);
    }
    out
}

/// A sidecar's HTTP route configuration `"<port>"`, planned: which
/// virtual hosts it has, with which domains, and the routes of those with
/// a VirtualService. A virtual host without one has its service's default
/// route, made when the configuration is ([`RoutePlan::build`]), or, encoded,
/// read from the snapshot's memo ([`RoutePlan::encode`]): it depends only on
/// the service, the port and the DestinationRule seen from the proxy's
/// namespace (its consistent hash), and most services have no
/// VirtualService.
pub(crate) struct RoutePlan<'a> {
    port: u32,
    /// Every virtual host's domains, written end to end (in
    /// `buffers.domains`), and the plan's other working buffers.
    buffers: Buffers,
    hosts: Vec<PlannedHost<'a>>,
    /// `allow_any` or `block_all`, last.
    catch_all: VirtualHost,
}

struct PlannedHost<'a> {
    service: &'a Arc<Service>,
    /// Its domains: these entries of the plan's [`Domains`].
    domains: std::ops::Range<usize>,
    /// The VirtualService's routes; None: the service's default route.
    routes: Option<Vec<Route>>,
}

/// The domains of a route configuration's virtual hosts, in one string
/// (one allocation rather than one per domain: 4-5 domains per service on
/// every port of every sidecar). `spans[i]` is domain `i`'s byte range.
#[derive(Default)]
struct Domains {
    text: String,
    spans: Vec<(usize, usize)>,
}

/// A route plan's working buffers: its domains, what planning and
/// encoding need only meanwhile (the domains seen, which claims are
/// first, each service's claims; each host's routes and lengths), ~0.3
/// MiB at 1000 services (~0.5 MiB before step 65 halved the domains). A
/// plan takes them from its thread's spare set
/// and gives them back, emptied, when its configuration is made
/// ([`Buffers::give_back`]), so that a generating thread reuses pages it
/// has written before: buffers this large are given back to the kernel
/// as soon as they are freed (jemalloc's `oversize_threshold`,
/// `.cargo/config.toml`), and the next config key then had them mapped and
/// zeroed afresh: ~20-60 more page faults per config key in the daemon
/// (docs/PERFORMANCE.md, step 64).
#[derive(Default)]
struct Buffers {
    domains: Domains,
    /// The domains seen, as their positions in `domains`.
    seen: hashbrown::HashTable<u32>,
    /// Whether each domain is the first of its text.
    first: Vec<bool>,
    /// Each service's domains, by position.
    claimed: Vec<std::ops::Range<usize>>,
    /// Each host's routes, as the encoding finds them.
    routes: Vec<HostRoutes>,
    /// A VirtualService's routes, encoded end to end.
    own: Vec<u8>,
    /// Each host's name length and encoded length.
    lengths: Vec<(usize, usize)>,
}

/// A virtual host's encoded `routes`: a VirtualService's, at this range of
/// [`Buffers::own`], or a default route read from the snapshot's memo.
enum HostRoutes {
    Own(std::ops::Range<usize>),
    Memoised(Arc<Vec<u8>>),
}

/// The most a thread keeps in spare buffers (bytes of capacity): about
/// ten plans' at 1000 services; a larger set is freed, not kept.
const SPARE_MAX_BYTES: usize = 4 << 20;

thread_local! {
    /// This thread's spare [`Buffers`], empty until a plan gives its back.
    static SPARE: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

impl Buffers {
    /// The thread's spare buffers (or new ones, none being spare).
    fn take() -> Buffers {
        SPARE.try_with(|s| s.take()).unwrap_or_default()
    }

    /// Empties the buffers and keeps them as the thread's spare set, in
    /// place of a smaller one, unless over [`SPARE_MAX_BYTES`].
    fn give_back(mut self) {
        self.domains.text.clear();
        self.domains.spans.clear();
        self.seen.clear();
        self.first.clear();
        self.claimed.clear();
        self.routes.clear();
        self.own.clear();
        self.lengths.clear();
        let bytes = self.bytes();
        if bytes > SPARE_MAX_BYTES {
            return;
        }
        let _ = SPARE.try_with(|s| {
            let mut spare = s.borrow_mut();
            if spare.bytes() < bytes {
                *spare = self;
            }
        });
    }

    /// The buffers' capacity, bytes (the hash table's at 5 bytes a slot:
    /// a position and a control byte).
    fn bytes(&self) -> usize {
        use std::mem::size_of;
        self.domains.text.capacity()
            + self.domains.spans.capacity() * size_of::<(usize, usize)>()
            + self.seen.capacity() * (size_of::<u32>() + 1)
            + self.first.capacity()
            + self.claimed.capacity() * size_of::<std::ops::Range<usize>>()
            + self.routes.capacity() * size_of::<HostRoutes>()
            + self.own.capacity()
            + self.lengths.capacity() * size_of::<(usize, usize)>()
    }
}

impl Domains {
    fn get(&self, i: usize) -> &str {
        self.spans
            .get(i)
            .and_then(|&(start, end)| self.text.get(start..end))
            .unwrap_or_default()
    }
}

/// A virtual host's name, `<hostname>:<port>`, as Istio names them: its
/// parts, which the message path joins and the encoding writes in turn.
fn host_name<'a>(hostname: &'a str, port: &'a str) -> [&'a str; 3] {
    [hostname, ":", port]
}

impl RoutePlan<'_> {
    /// Whether a host's service has a persistent session: its connection
    /// manager then carries the stateful session filter
    /// ([`crate::session::empty_filter`]).
    fn has_sessions(&self) -> bool {
        self.hosts
            .iter()
            .any(|h| h.service.persistent_session.is_some())
    }

    /// The route configuration as a message.
    pub(crate) fn build(self, snap: &Snapshot, proxy: &Proxy) -> RouteConfiguration {
        let ctx = RouteCtx {
            snap,
            proxy,
            port: self.port,
            gateways: &[],
        };
        let port = self.port.to_string();
        let mut virtual_hosts = Vec::with_capacity(self.hosts.len() + 1);
        let domains = &self.buffers.domains;
        for h in self.hosts {
            let routes = h
                .routes
                .unwrap_or_else(|| vec![default_route(&ctx, &h.service.hostname)]);
            virtual_hosts.push(VirtualHost {
                name: host_name(&h.service.hostname, &port).concat(),
                domains: h.domains.map(|i| domains.get(i).to_owned()).collect(),
                routes,
                include_request_attempt_count: true,
                typed_per_filter_config: h
                    .service
                    .persistent_session
                    .as_ref()
                    .map(crate::session::per_host)
                    .unwrap_or_default(),
                ..Default::default()
            });
        }
        virtual_hosts.push(self.catch_all);
        self.buffers.give_back();
        RouteConfiguration {
            virtual_hosts,
            ..route_config_head(self.port.to_string(), proxy)
        }
    }

    /// The route configuration encoded for the wire: the same bytes as
    /// [`RoutePlan::build`]'s message encoded by prost, which writes
    /// fields in tag order (`name` 1, `virtual_hosts` 2, then the rest;
    /// in a virtual host `name` 1, `domains` 2, `routes` 3), so the
    /// encodings of the parts can be laid end to end. A virtual host's
    /// name and domains are written here from the plan's text.
    pub(crate) fn encode(mut self, snap: &Snapshot, proxy: &Proxy) -> Encoded {
        /// A virtual host's `include_request_attempt_count: true`: field 14,
        /// varint, key `14 << 3`, value 1.
        const ATTEMPT_COUNT: [u8; 2] = [14 << 3, 1];
        let ctx = RouteCtx {
            snap,
            proxy,
            port: self.port,
            gateways: &[],
        };
        let port = self.port.to_string();
        // Each virtual host's `routes`, encoded, before anything is
        // written: a VirtualService's into `own` (end to end, by range), a
        // default route read from the memo. With every length known, the
        // configuration (~0.4 MiB at 1000 services) is written once into a
        // buffer of its size, not grown by doubling and then copied into
        // its `Any` (1.75 MiB of allocations per config key before).
        let has_sessions = self.has_sessions();
        let Buffers {
            domains,
            routes,
            own,
            lengths,
            ..
        } = &mut self.buffers;
        // An entry for every host without a VirtualService's routes.
        snap.route_memo
            .reserve(self.hosts.iter().filter(|h| h.routes.is_none()).count());
        routes.extend(self.hosts.iter().map(|h| match &h.routes {
            Some(routes) => {
                let start = own.len();
                for r in routes {
                    prost::encoding::message::encode(3, r, own);
                }
                HostRoutes::Own(start..own.len())
            }
            None => {
                let rule = snap.destination_rule_for(&h.service.hostname, proxy);
                HostRoutes::Memoised(snap.route_memo.get_or_build(
                    h.service,
                    rule,
                    &self.port,
                    || default_route_field(&ctx, &h.service.hostname),
                ))
            }
        }));
        fn routes_of<'a>(own: &'a [u8], r: &'a HostRoutes) -> &'a [u8] {
            match r {
                HostRoutes::Own(range) => own.get(range.clone()).unwrap_or_default(),
                HostRoutes::Memoised(bytes) => bytes,
            }
        }
        // A persistent session's `typed_per_filter_config` (15), per host
        // that has one (rare: none is looked at otherwise).
        let sessions: Vec<Option<Vec<u8>>> = if has_sessions {
            self.hosts
                .iter()
                .map(|h| {
                    h.service
                        .persistent_session
                        .as_ref()
                        .map(crate::session::per_host_field)
                })
                .collect()
        } else {
            Vec::new()
        };
        let session_of = |i: usize| {
            sessions
                .get(i)
                .and_then(Option::as_deref)
                .unwrap_or_default()
        };
        // VirtualHost: `name` 1, each of `domains` 2 (a repeated string:
        // written even if empty), the routes (3),
        // `include_request_attempt_count` (14, true), then a session's
        // per-filter config (15). Each host's name
        // length and its own, computed once: they size the buffer and head it.
        lengths.extend(
            self.hosts
                .iter()
                .zip(routes.iter())
                .enumerate()
                .map(|(i, (h, r))| {
                    let name_len: usize = host_name(&h.service.hostname, &port)
                        .iter()
                        .map(|p| p.len())
                        .sum();
                    let len = nested_len(name_len)
                        + h.domains
                            .clone()
                            .map(|i| nested_len(domains.get(i).len()))
                            .sum::<usize>()
                        + routes_of(own, r).len()
                        + ATTEMPT_COUNT.len()
                        + session_of(i).len();
                    (name_len, len)
                }),
        );
        // The rest of the configuration's fields (its name is written first).
        let tail = route_config_head(String::new(), proxy);
        let len = crate::encoded::string_len(&port)
            + lengths
                .iter()
                .map(|&(_, len)| nested_len(len))
                .sum::<usize>()
            + prost::encoding::message::encoded_len(2, &self.catch_all)
            + tail.encoded_len();
        let encoded = crate::encoded::encode_with(crate::ROUTE_TYPE, &port, len, |value| {
            put_string(value, 1, &port);
            for (i, ((h, r), &(name_len, len))) in self
                .hosts
                .iter()
                .zip(routes.iter())
                .zip(lengths.iter())
                .enumerate()
            {
                let routes = routes_of(own, r);
                put_head(value, 2, len);
                put_head(value, 1, name_len);
                for part in host_name(&h.service.hostname, &port) {
                    value.extend_from_slice(part.as_bytes());
                }
                for d in h.domains.clone().map(|i| domains.get(i)) {
                    put_head(value, 2, d.len());
                    value.extend_from_slice(d.as_bytes());
                }
                value.extend_from_slice(routes);
                value.extend_from_slice(&ATTEMPT_COUNT);
                value.extend_from_slice(session_of(i));
            }
            prost::encoding::message::encode(2, &self.catch_all, value);
            // Cannot fail: a `Vec` grows to whatever is written.
            let _ = tail.encode(value);
        });
        self.buffers.give_back();
        encoded
    }
}

/// The largest `directResponse` body a route configuration allows
/// (bytes): Istio's `DefaultMaxDirectResponseBodySizeBytes`, 1 MiB, where
/// Envoy's default is 4096 and refuses the whole configuration over it.
const MAX_DIRECT_RESPONSE_BODY_BYTES: u32 = 1024 * 1024;

/// A route configuration's own fields, a sidecar's or a gateway's, as
/// Istio's (`buildSidecarOutboundHTTPRouteConfig`,
/// `buildGatewayHTTPRouteConfig`): its `name`, `validate_clusters:
/// false`, [`MAX_DIRECT_RESPONSE_BODY_BYTES`], and
/// `ignore_port_in_host_matching: true`, so that `Host: reviews:9080`
/// finds the virtual host of domain `reviews` (Envoy drops the port before
/// matching; the domains carry none, see [`service_domains`]); for a
/// proxy making Istio's metrics, the request headers telling the peer its
/// workload ([`crate::metrics::peer_request_headers`]).
fn route_config_head(name: String, proxy: &Proxy) -> RouteConfiguration {
    RouteConfiguration {
        name,
        request_headers_to_add: if proxy.stats_logger {
            crate::metrics::peer_request_headers()
        } else {
            Vec::new()
        },
        validate_clusters: Some(BoolValue { value: false }),
        max_direct_response_body_size_bytes: Some(UInt32Value {
            value: MAX_DIRECT_RESPONSE_BODY_BYTES,
        }),
        ignore_port_in_host_matching: true,
        ..Default::default()
    }
}

fn http_route_plan<'a>(
    snap: &'a Snapshot,
    proxy: &Proxy,
    port: u32,
    services: &[&'a Arc<Service>],
    fallback: &str,
    warnings: &mut Vec<ConfigWarning>,
) -> RoutePlan<'a> {
    let ctx = RouteCtx {
        snap,
        proxy,
        port,
        gateways: &[],
    };
    // A domain goes to the first service that claims it. All domains are
    // written into one string first, so that the check borrows them.
    let mut buffers = Buffers::take();
    let Buffers {
        domains,
        seen,
        first,
        claimed,
        ..
    } = &mut buffers;
    // ~5 domains and ~80 bytes of them per Kubernetes service: sized
    // once rather than grown (and copied) as written.
    domains.text.reserve(services.len() * 80);
    domains.spans.reserve(services.len() * 5);
    claimed.extend(services.iter().map(|svc| {
        let start = domains.spans.len();
        service_domains(domains, svc, proxy);
        start..domains.spans.len()
    }));
    // Decided in a pass of its own: done inside the planning loop below
    // (no `first` list), the next config key was 3-5 % slower
    // (docs/PERFORMANCE.md, seventh session).
    first.reserve(domains.spans.len());
    {
        use std::hash::BuildHasher;
        // The domains seen, as their positions in `domains` (4 bytes each,
        // where a set of `&str` took 16), found by hashing the text they
        // point at. foldhash (seeded per process) rather than SipHash:
        // ~4,100 short strings per sidecar at 1000 services.
        let hasher = hashbrown::DefaultHashBuilder::default();
        let hash = |d: &str| hasher.hash_one(d);
        let at = |j: &u32| domains.get(*j as usize);
        seen.reserve(domains.spans.len(), |j| hash(at(j)));
        first.extend((0..domains.spans.len()).map(|i| {
            let d = domains.get(i);
            match seen.entry(hash(d), |j| at(j) == d, |j| hash(at(j))) {
                hashbrown::hash_table::Entry::Occupied(_) => false,
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(u32::try_from(i).unwrap_or(u32::MAX));
                    true
                }
            }
        }));
    }
    // The first claims of each service, moved to the front of `spans`.
    let mut kept = 0;
    let mut hosts = Vec::with_capacity(services.len());
    for (svc, range) in services.iter().zip(claimed.iter()) {
        let start = kept;
        for i in range.clone() {
            if first.get(i).copied().unwrap_or(false) {
                domains.spans.swap(kept, i);
                kept += 1;
            }
        }
        if kept == start {
            continue;
        }
        let routes =
            mesh_virtual_service(snap, proxy, &svc.hostname, |vs| !vs.spec.http.is_empty())
                .map(|vs| virtual_service_routes(&ctx, vs, warnings));
        hosts.push(PlannedHost {
            service: svc,
            domains: start..kept,
            routes,
        });
    }
    // The proxy's fallback says whether unknown hosts pass (ALLOW_ANY).
    let catch_all = if fallback != BLACKHOLE_CLUSTER {
        VirtualHost {
            name: "allow_any".into(),
            domains: vec!["*".into()],
            routes: vec![catch_all_route("allow_any", fallback)],
            include_request_attempt_count: true,
            ..Default::default()
        }
    } else {
        // Istio answers 502 for hosts outside the registry under REGISTRY_ONLY.
        VirtualHost {
            name: "block_all".into(),
            domains: vec!["*".into()],
            routes: vec![direct_response_route("block_all", 502)],
            ..Default::default()
        }
    };
    RoutePlan {
        port,
        buffers,
        hosts,
        catch_all,
    }
}

/// The first VirtualService bound to the mesh, visible from the proxy,
/// with `hostname` among its hosts and content of interest (`has`); one
/// made from a Gateway API route of the proxy's own namespace first (the
/// GAMMA "consumer override": Istio's `VirtualServicesForGateway`).
fn mesh_virtual_service<'a>(
    snap: &'a Snapshot,
    proxy: &Proxy,
    hostname: &str,
    has: impl Fn(&Config<VirtualServiceSpec>) -> bool,
) -> Option<&'a Config<VirtualServiceSpec>> {
    let mut candidates = snap.virtual_services_for(hostname).filter(|vs| {
        exported_to(&vs.spec.export_to, &vs.namespace, &proxy.namespace)
            && (vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh"))
            && vs
                .spec
                .hosts
                .iter()
                .any(|h| wildcard_match(&snap.resolve_host(h, &vs.namespace), hostname))
            && has(vs)
    });
    let generated = &snap.gateway_api.routes;
    if generated.is_empty() {
        return candidates.next();
    }
    let first = candidates.next()?;
    let consumer =
        |vs: &Config<VirtualServiceSpec>| vs.namespace == proxy.namespace && generated.holds(vs);
    if consumer(first) {
        return Some(first);
    }
    Some(candidates.find(|vs| consumer(vs)).unwrap_or(first))
}

/// Weighted destinations of a TCP service port: the first matching `tcp`
/// route of its VirtualService, else the service itself.
fn tcp_destinations(
    snap: &Snapshot,
    proxy: &Proxy,
    svc: &Service,
    port: u32,
) -> Vec<(String, u32)> {
    let Some(vs) = mesh_virtual_service(snap, proxy, &svc.hostname, |vs| !vs.spec.tcp.is_empty())
    else {
        return vec![(cluster_name(port, "", &svc.hostname), 1)];
    };
    let route = vs.spec.tcp.iter().find(|r| {
        r.matches.is_empty()
            || r.matches.iter().any(|m| {
                m.port.is_none_or(|p| p == port)
                    && m.source_labels
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k) == Some(v))
                    && m.source_namespace
                        .as_ref()
                        .is_none_or(|ns| *ns == proxy.namespace)
                    && (m.destination_subnets.is_empty()
                        || svc
                            .vips
                            .iter()
                            .any(|vip| m.destination_subnets.iter().any(|s| cidr_contains(s, vip))))
            })
    });
    match route {
        Some(r) => l4_destinations(snap, vs, &r.route, port),
        None => vec![(cluster_name(port, "", &svc.hostname), 1)],
    }
}

/// SNI chains of a TLS service port: its VirtualService's `tls` routes
/// (by `sniHosts`), then the service's own hostname.
fn tls_chains(
    snap: &Snapshot,
    proxy: &Proxy,
    svc: &Service,
    port: u32,
    access_log: &[AccessLog],
) -> Vec<FilterChain> {
    let mut chains = Vec::new();
    let chain = |sni: Vec<String>, subnets: &[String], dests: &[(String, u32)]| {
        let name = format!("{}_{port}", sni.join(","));
        let mut c = tcp_chain(
            &name,
            &format!("outbound|{port}||{}", svc.hostname),
            dests,
            tunneling(snap, proxy, dests),
            access_log,
        );
        c.filter_chain_match = Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: port }),
            prefix_ranges: subnets.iter().map(|s| cidr_range(s)).collect(),
            server_names: sni,
            transport_protocol: "tls".into(),
            ..Default::default()
        });
        c
    };
    if let Some(vs) = mesh_virtual_service(snap, proxy, &svc.hostname, |vs| !vs.spec.tls.is_empty())
    {
        for r in &vs.spec.tls {
            for m in &r.matches {
                if m.port.is_some_and(|p| p != port)
                    || m.sni_hosts.is_empty()
                    || !tls_source_applies(proxy, m)
                {
                    continue;
                }
                chains.push(chain(
                    m.sni_hosts.clone(),
                    &m.destination_subnets,
                    &l4_destinations(snap, vs, &r.route, port),
                ));
            }
        }
    }
    if chains.is_empty() {
        let mut c = chain(
            vec![svc.hostname.clone()],
            &[],
            &[(cluster_name(port, "", &svc.hostname), 1)],
        );
        if svc.resolution == crate::model::ServiceResolution::DynamicDns {
            // The SNI names the host, resolved before the TCP proxy
            // connects (Istio's SNI dynamic forward proxy).
            use envoy_types::pb::envoy::extensions::filters::network::sni_dynamic_forward_proxy::v3::{
                FilterConfig, filter_config,
            };
            let at = c.filters.len().saturating_sub(1);
            c.filters.insert(
                at,
                Filter {
                    name: "envoy.filters.network.sni_dynamic_forward_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(FilterConfig {
                        dns_cache_config: Some(crate::cluster::dfp_dns_cache(&svc.hostname)),
                        port_specifier: Some(filter_config::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    }))),
                },
            );
        }
        chains.push(c);
    }
    chains
}

/// The dynamic forward proxy filter of an outbound HTTP port carrying a
/// `DYNAMIC_DNS` service (Istio's DFP HTTP filter): requests its routes
/// send to that service's cluster have their `Host` resolved through the
/// cluster's DNS cache. One cache per connection manager: a second such
/// service on the port is reported and its requests fail.
fn dfp_http_filter(
    services: &[&Arc<Service>],
    port: u32,
    warnings: &mut Vec<ConfigWarning>,
) -> Vec<HttpFilter> {
    use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::{
        FilterConfig, filter_config,
    };
    let mut dynamic = services
        .iter()
        .filter(|s| s.resolution == crate::model::ServiceResolution::DynamicDns);
    let Some(first) = dynamic.next() else {
        return Vec::new();
    };
    for other in dynamic {
        warnings.push(ConfigWarning::new(
            "ServiceEntry",
            format!("{}/{}", other.namespace, other.hostname),
            "spec.resolution".into(),
            format!(
                "port {port} already resolves {} dynamically (one DNS cache per port); DYNAMIC_DNS requests to {} fail",
                first.hostname, other.hostname
            ),
        ));
    }
    vec![HttpFilter {
        name: "envoy.filters.http.dynamic_forward_proxy".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            FilterConfig {
                implementation_specifier: Some(
                    filter_config::ImplementationSpecifier::DnsCacheConfig(
                        crate::cluster::dfp_dns_cache(&first.hostname),
                    ),
                ),
                ..Default::default()
            },
        ))),
        ..Default::default()
    }]
}

/// Whether a `tls` route match applies to the proxy it is generated for:
/// all its `sourceLabels` among the proxy's labels, and its
/// `sourceNamespace` the proxy's (Istio's source matching, as for HTTP and
/// TCP routes).
fn tls_source_applies(proxy: &Proxy, m: &crds::virtual_service::TlsMatchAttributes) -> bool {
    m.source_labels
        .iter()
        .all(|(k, v)| proxy.labels.get(k) == Some(v))
        && m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == proxy.namespace)
}

/// Envoy's `CidrRange` of `a.b.c.d/len` (or an address alone: its whole
/// length, 32 or 128).
fn cidr_range(cidr: &str) -> CidrRange {
    let (address, len) = match cidr.split_once('/') {
        Some((a, l)) => (a, l.parse().ok()),
        None => (cidr, None),
    };
    let whole = if address.contains(':') { 128 } else { 32 };
    CidrRange {
        address_prefix: address.to_owned(),
        prefix_len: Some(UInt32Value {
            value: len.unwrap_or(whole),
        }),
    }
}

fn l4_destinations(
    snap: &Snapshot,
    vs: &Config<VirtualServiceSpec>,
    route: &[crds::virtual_service::RouteDestination],
    port: u32,
) -> Vec<(String, u32)> {
    route
        .iter()
        .map(|d| {
            let host = snap.resolve_host(&d.destination.host, &vs.namespace);
            let p = d.destination.port.map(|p| p.number).unwrap_or(port);
            let weight = d
                .weight
                .and_then(|w| u32::try_from(w).ok())
                .unwrap_or(if route.len() == 1 { 1 } else { 0 });
            (
                cluster_name(p, d.destination.subset.as_deref().unwrap_or(""), &host),
                weight,
            )
        })
        .filter(|(_, w)| *w > 0)
        .collect()
}

/// IPv4 `a.b.c.d/len` (or a plain address) contains `ip`.
fn cidr_contains(cidr: &str, ip: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let (Ok(net), Ok(ip), Ok(len)) = (
        net.parse::<std::net::Ipv4Addr>(),
        ip.split('/')
            .next()
            .unwrap_or(ip)
            .parse::<std::net::Ipv4Addr>(),
        len.parse::<u32>(),
    ) else {
        return cidr == ip;
    };
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - len.min(32))
    };
    (u32::from(net) & mask) == (u32::from(ip) & mask)
}

/// Istio's domain set for a service, appended to `out`: FQDN,
/// `name.ns.svc`, `name.ns`, the short name (same namespace only), VIPs
/// (allocated ones included for a proxy that captures DNS).
/// Without `:port` variants: a sidecar's route configuration ignores the
/// port of the `Host` header (`ignore_port_in_host_matching`, see
/// [`route_config_head`]), as Istio's has since 1.16 for every proxy but
/// proxyless gRPC (`generateVirtualHostDomains`, `SidecarIgnorePort`).
fn service_domains(out: &mut Domains, svc: &Service, proxy: &Proxy) {
    let mut one = |base: &[&str]| {
        let start = out.text.len();
        for part in base {
            out.text.push_str(part);
        }
        out.spans.push((start, out.text.len()));
    };
    one(&[&svc.hostname]);
    if svc.kubernetes {
        one(&[&svc.name, ".", &svc.namespace, ".svc"]);
        one(&[&svc.name, ".", &svc.namespace]);
        if proxy.namespace == svc.namespace {
            one(&[&svc.name]);
        }
    }
    for vip in svc.vips_for(proxy) {
        one(&[vip]);
    }
}

/// A server of a Gateway selected by the proxy.
struct GatewayServer<'a> {
    gw: &'a Config<GatewaySpec>,
    index: usize,
    server: &'a Server,
}

impl<'a> GatewayServer<'a> {
    fn field(&self) -> String {
        format!("spec.servers[{}]", self.index)
    }

    /// The server as a [`TlsSite`] of `proxy`.
    fn site(&self, proxy: &'a Proxy) -> TlsSite<'a> {
        TlsSite {
            kind: "Gateway",
            key: self.gw.key(),
            field: self.field(),
            what: "server",
            namespaces: [&proxy.namespace, &self.gw.namespace],
        }
    }

    /// Whether a VirtualService is bound to this server's Gateway and one of
    /// its hosts matches one of the server's hosts.
    fn binds(&self, vs: &Config<VirtualServiceSpec>, host: &str) -> bool {
        let listed = vs.spec.gateways.iter().any(|g| {
            let full = if g.contains('/') {
                g.clone()
            } else {
                format!("{}/{g}", vs.namespace)
            };
            full == self.gw.key()
        });
        listed
            && self
                .server
                .hosts
                .iter()
                .any(|sh| server_host_matches(sh, &vs.namespace, host))
    }

    /// SNI names of the server's hosts (`ns/` dropped; `*` matches any).
    fn sni(&self) -> Vec<String> {
        let names: Vec<String> = self
            .server
            .hosts
            .iter()
            .map(|h| h.split_once('/').map_or(h.as_str(), |(_, h)| h).to_owned())
            .collect();
        if names.iter().any(|h| h == "*") {
            Vec::new()
        } else {
            names
        }
    }
}

/// Gateway (router) listeners, route configurations and SDS secrets: a
/// listener per server port of every Gateway whose `selector` matches the
/// proxy, with a chain per kind of server on it: plain HTTP (route
/// configuration `http.<port>`), HTTPS terminated with a certificate from
/// files or from a `credentialName` Secret over SDS (`kubernetes://NAME`),
/// TLS PASSTHROUGH routed by SNI through VirtualService `tls` routes, TCP.
pub(crate) fn gateway(
    snap: &Snapshot,
    proxy: &Proxy,
    warnings: &mut Vec<ConfigWarning>,
) -> (Vec<Listener>, Vec<RouteConfiguration>, Vec<Secret>) {
    // By (bind address, port): servers with a `bind` get a listener of
    // their own on that address (Istio's `<bind>_<port>`). The port is the
    // one the pod listens on: a server's port translated to the target
    // port of the pod's Service ([`Snapshot::gateway_ports`]), except for
    // Gateways made from the Gateway API (their Service is deployed with
    // the listeners' ports).
    let translation = snap.gateway_ports(&proxy.ip);
    let mut ports: BTreeMap<(&str, u32), Vec<GatewayServer<'_>>> = BTreeMap::new();
    for gw in &snap.gateways {
        if gw.spec.selector.is_empty()
            || !gw
                .spec
                .selector
                .iter()
                .all(|(k, v)| proxy.labels.get(k) == Some(v))
            || !snap.gateway_api.gateway_admits(gw, &proxy.namespace)
        {
            continue;
        }
        for (index, server) in gw.spec.servers.iter().enumerate() {
            let bind = server.bind.as_deref().filter(|b| !b.is_empty());
            if let Some(b) = bind
                && b.parse::<std::net::IpAddr>().is_err()
                && !b.starts_with(crate::UNIX_PREFIX)
            {
                warnings.push(ConfigWarning::new(
                    "Gateway",
                    gw.key(),
                    format!("spec.servers[{index}].bind"),
                    format!("{b:?}: neither an IP address nor a unix:// socket; server left out"),
                ));
                continue;
            }
            let number = server.port.number;
            let listen = if snap.gateway_api.gateways.holds(gw) {
                number
            } else {
                translation
                    .iter()
                    .find(|(port, _)| *port == number)
                    .map_or(number, |(_, target)| *target)
            };
            ports
                .entry((bind.unwrap_or("0.0.0.0"), listen))
                .or_default()
                .push(GatewayServer { gw, index, server });
        }
    }
    // A gateway is the client side of the requests it forwards.
    let observe = crate::telemetry::Observe::of(snap, proxy, crate::telemetry::Side::Client);
    // The gateway pod's AuthorizationPolicies and RequestAuthentications,
    // as on a sidecar's inbound.
    let authz = crate::authz::filters(snap, &proxy.namespace, &proxy.labels);
    let authorized = |mut chain: FilterChain| {
        chain.filters.splice(0..0, authz.tcp.iter().cloned());
        chain
    };
    let mut listeners = Vec::new();
    let mut routes = Vec::new();
    let mut secrets: BTreeMap<String, Secret> = BTreeMap::new();
    for ((bind, port), servers) in ports {
        let mut chains = Vec::new();
        let mut tls_inspector = false;
        let listener_name = format!("{bind}_{port}");
        // Istio's route names carry a server's bind: `http.<port>.<bind>`.
        let bind_suffix = if bind == "0.0.0.0" {
            String::new()
        } else {
            format!(".{bind}")
        };
        let http: Vec<&GatewayServer<'_>> = servers
            .iter()
            .filter(|s| server_kind(s.server) == ServerKind::Http)
            .collect();
        if !http.is_empty() {
            let name = format!("http.{port}{bind_suffix}");
            // Routes match the server's own port (Istio's): the first's.
            let server_port = http.first().map_or(port, |s| s.server.port.number);
            let route = gateway_route_config(snap, proxy, server_port, &name, &http, warnings);
            let sessions = crate::session::used_by(&route.virtual_hosts);
            routes.push(route);
            chains.push(hcm_chain(
                &format!("outbound_0.0.0.0_{port}"),
                &name,
                HcmOn {
                    port,
                    gateway: true,
                    sessions,
                },
                &snap.mesh,
                &observe,
                &authz.http,
            ));
        }
        for gs in &servers {
            match server_kind(gs.server) {
                ServerKind::Http => {}
                ServerKind::Https => {
                    let tls = gs.server.tls.clone().unwrap_or_default();
                    let Some(ctx) =
                        downstream_tls(snap, &gs.site(proxy), &tls, false, &mut secrets, warnings)
                    else {
                        continue;
                    };
                    let name = format!(
                        "https.{}.{}.{}.{}{bind_suffix}",
                        gs.server.port.number, gs.server.port.name, gs.gw.name, gs.gw.namespace
                    );
                    let route = gateway_route_config(
                        snap,
                        proxy,
                        gs.server.port.number,
                        &name,
                        &[gs],
                        warnings,
                    );
                    let sessions = crate::session::used_by(&route.virtual_hosts);
                    routes.push(route);
                    let mut chain = hcm_chain(
                        &format!("outbound_0.0.0.0_{port}"),
                        &name,
                        HcmOn {
                            port,
                            gateway: true,
                            sessions,
                        },
                        &snap.mesh,
                        &observe,
                        &authz.http,
                    );
                    chain.name = name;
                    chains.push(terminated(chain, gs, ctx));
                    tls_inspector = true;
                }
                ServerKind::Passthrough => {
                    tls_inspector = true;
                    for vs in bound(snap, proxy) {
                        for r in &vs.spec.tls {
                            for m in &r.matches {
                                let sni: Vec<String> = m
                                    .sni_hosts
                                    .iter()
                                    .filter(|h| gs.binds(vs, h))
                                    .cloned()
                                    .collect();
                                if sni.is_empty()
                                    || m.port.is_some_and(|p| p != gs.server.port.number)
                                    || !tls_source_applies(proxy, m)
                                {
                                    continue;
                                }
                                let name = format!("{}_{port}", sni.join(","));
                                // `*` matches any name: no `server_names`.
                                let sni = if sni.iter().any(|h| h == "*") {
                                    Vec::new()
                                } else {
                                    sni
                                };
                                let dests =
                                    l4_destinations(snap, vs, &r.route, gs.server.port.number);
                                let mut chain = authorized(tcp_chain(
                                    &name,
                                    &name,
                                    &dests,
                                    tunneling(snap, proxy, &dests),
                                    &observe.access_log,
                                ));
                                chain.filter_chain_match = Some(FilterChainMatch {
                                    prefix_ranges: m
                                        .destination_subnets
                                        .iter()
                                        .map(|s| cidr_range(s))
                                        .collect(),
                                    server_names: sni,
                                    transport_protocol: "tls".into(),
                                    ..Default::default()
                                });
                                chains.push(chain);
                            }
                        }
                    }
                }
                ServerKind::Tcp => match tcp_route(snap, proxy, gs, gs.server.port.number) {
                    Some(dests) => chains.push(authorized(tcp_chain(
                        &format!("tcp.{port}"),
                        &format!("tcp.{port}"),
                        &dests,
                        tunneling(snap, proxy, &dests),
                        &observe.access_log,
                    ))),
                    None => warnings.push(ConfigWarning::new(
                        "Gateway",
                        gs.gw.key(),
                        gs.field(),
                        format!(
                            "no VirtualService tcp route is bound to this TCP server on port {}",
                            gs.server.port.number
                        ),
                    )),
                },
                ServerKind::TerminatedTls => {
                    let Some(dests) = tcp_route(snap, proxy, gs, gs.server.port.number) else {
                        warnings.push(ConfigWarning::new(
                            "Gateway",
                            gs.gw.key(),
                            gs.field(),
                            format!(
                                "no VirtualService tcp route is bound to this TLS server on port {}",
                                gs.server.port.number
                            ),
                        ));
                        continue;
                    };
                    let tls = gs.server.tls.clone().unwrap_or_default();
                    let Some(ctx) =
                        downstream_tls(snap, &gs.site(proxy), &tls, true, &mut secrets, warnings)
                    else {
                        continue;
                    };
                    let name = format!(
                        "tls.{port}.{}.{}.{}",
                        gs.server.port.name, gs.gw.name, gs.gw.namespace
                    );
                    let tunnel = tunneling(snap, proxy, &dests);
                    let chain =
                        authorized(tcp_chain(&name, &name, &dests, tunnel, &observe.access_log));
                    chains.push(terminated(chain, gs, ctx));
                    tls_inspector = true;
                }
                ServerKind::AutoPassthrough => {
                    // Istio's `buildOutboundAutoPassthroughFilterStack`:
                    // the SNI names the cluster (the TCP proxy's own is a
                    // stand-in that the SNI cluster filter replaces).
                    let mut chain = tcp_chain(
                        &format!("auto_passthrough.{port}"),
                        BLACKHOLE_CLUSTER,
                        &[(BLACKHOLE_CLUSTER.to_owned(), 1)],
                        None,
                        &observe.access_log,
                    );
                    chain.filters.insert(
                        0,
                        Filter {
                            name: "envoy.filters.network.sni_cluster".into(),
                            config_type: Some(filter::ConfigType::TypedConfig(pack_any(
                                envoy_types::pb::envoy::extensions::filters::network::sni_cluster::v3::SniCluster {},
                            ))),
                        },
                    );
                    chain.filter_chain_match = Some(FilterChainMatch {
                        server_names: gs.sni(),
                        transport_protocol: "tls".into(),
                        ..Default::default()
                    });
                    chains.push(chain);
                    tls_inspector = true;
                }
                ServerKind::Unsupported(why) => {
                    warnings.push(ConfigWarning::new("Gateway", gs.gw.key(), gs.field(), why));
                }
            }
        }
        let chains = dedupe_chains("Gateway", "spec.servers", &listener_name, chains, warnings);
        if chains.is_empty() {
            continue;
        }
        let mut listener = Listener {
            name: listener_name,
            address: Some(socket_address(bind, port)),
            filter_chains: chains,
            ..Default::default()
        };
        if tls_inspector {
            listener.listener_filters.push(tls_inspector_filter());
        }
        listeners.push(listener);
    }
    client_credentials(snap, proxy, &mut secrets, warnings);
    (listeners, routes, secrets.into_values().collect())
}

/// The SDS secrets of the `credentialName`s in the client TLS settings of
/// the DestinationRules whose Secrets `proxy` gets: those a gateway sees
/// (Istio's egress gateway TLS and mTLS origination), and those whose
/// `workloadSelector` picks the proxy. `kubernetes://<name>` for `MUTUAL`
/// (the Secret's `tls.crt` and `tls.key`), `kubernetes://<name>-cacert`
/// unless `insecureSkipVerify` (its `ca.crt`, or a `<name>-cacert`
/// Secret's). The Secret is looked for in the proxy's namespace, as istiod
/// allows; one missing, or without what the mode needs, is reported on the
/// rule's field (the cluster then waits 15 s for it, then fails its
/// handshakes).
pub(crate) fn client_credentials(
    snap: &Snapshot,
    proxy: &Proxy,
    secrets: &mut BTreeMap<String, Secret>,
    warnings: &mut Vec<ConfigWarning>,
) {
    use crds::destination_rule::ClientTlsMode;
    let lookup = |name: &str| {
        snap.secrets
            .get(&format!("{}/{name}", proxy.namespace))
            .map(|s| s.as_ref())
    };
    for dr in &snap.destination_rules {
        // `configmap://` CAs: for every proxy the rule reaches.
        if !snap.config_map_cas.is_empty()
            && exported_to(&dr.spec.export_to, &dr.namespace, &proxy.namespace)
        {
            for (at, cred, key) in crate::policy::config_map_credentials(&dr.spec) {
                match snap.config_map_cas.get(key) {
                    Some(ca) => config_map_secret(cred, ca.as_bytes(), secrets),
                    None => warnings.push(ConfigWarning::new(
                        "DestinationRule",
                        dr.key(),
                        format!("{at}.credentialName"),
                        format!("ConfigMap {key} not found, or without ca.crt"),
                    )),
                }
            }
        }
        let applies = match &dr.spec.workload_selector {
            Some(selector) => {
                dr.namespace == proxy.namespace
                    && selector
                        .match_labels
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k) == Some(v))
            }
            None => {
                proxy.kind == crate::model::ProxyKind::Router
                    && exported_to(&dr.spec.export_to, &dr.namespace, &proxy.namespace)
            }
        };
        if !applies {
            continue;
        }
        for (at, tls) in dr.spec.client_tls() {
            // A Gateway API gateway's client certificate (checked when the
            // Gateway was converted; gone since: the handshakes fail).
            if let Some(client) = &tls.client_credential
                && let Some(secret) = client
                    .strip_prefix(crate::policy::GATEWAY_API_CREDENTIAL)
                    .and_then(|key| snap.secrets.get(key))
            {
                certificate_secret(client, secret, secrets);
            }
            let Some(cred) = tls
                .credential_name
                .as_ref()
                .filter(|c| !crate::policy::ca_only_credential(c))
            else {
                continue;
            };
            let mutual = tls.mode == Some(ClientTlsMode::Mutual);
            if !mutual && tls.mode != Some(ClientTlsMode::Simple) {
                continue;
            }
            let mut report = |why: String| {
                warnings.push(ConfigWarning::new(
                    "DestinationRule",
                    dr.key(),
                    format!("{at}.credentialName"),
                    why,
                ));
            };
            let Some(secret) = lookup(cred) else {
                report(format!(
                    "Secret {cred:?} not found in the proxy's namespace {}",
                    proxy.namespace
                ));
                continue;
            };
            if mutual && certificate_secret(cred, secret, secrets).is_none() {
                report(format!(
                    "MUTUAL needs tls.crt and tls.key; Secret {cred:?} has none"
                ));
            }
            if !tls.insecure_skip_verify.unwrap_or(false) {
                let trust = secret
                    .trust(false)
                    .or_else(|| lookup(&format!("{cred}-cacert")).and_then(|s| s.trust(true)));
                match trust {
                    Some(trust) => {
                        ca_secret(cred, trust, secrets);
                    }
                    None => report(format!(
                        "verifying the server needs a CA: Secret {cred:?} has no ca.crt and there is no {cred}-cacert"
                    )),
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ServerKind {
    Http,
    /// TLS terminated (`SIMPLE`, `MUTUAL`, `OPTIONAL_MUTUAL`,
    /// `ISTIO_MUTUAL`), then HTTP routes.
    Https,
    Passthrough,
    Tcp,
    /// A `TLS` server whose TLS the gateway terminates, then VirtualService
    /// `tcp` routes (Istio's "TCP with TLS termination").
    TerminatedTls,
    /// `AUTO_PASSTHROUGH`: TLS passed through to the cluster its SNI names
    /// (`outbound_.<port>_.<subset>_.<host>`), no VirtualService needed.
    AutoPassthrough,
    Unsupported(String),
}

/// Whether a gateway `proxy` has an `AUTO_PASSTHROUGH` server (a TLS
/// server of a Gateway selecting it), and so gets Istio's SNI-DNAT
/// clusters. False at once for sidecars.
pub(crate) fn auto_passthrough(snap: &Snapshot, proxy: &Proxy) -> bool {
    proxy.kind == crate::model::ProxyKind::Router
        && snap.gateways.iter().any(|gw| {
            !gw.spec.selector.is_empty()
                && gw
                    .spec
                    .selector
                    .iter()
                    .all(|(k, v)| proxy.labels.get(k) == Some(v))
                && snap.gateway_api.gateway_admits(gw, &proxy.namespace)
                && gw
                    .spec
                    .servers
                    .iter()
                    .any(|s| server_kind(s) == ServerKind::AutoPassthrough)
        })
}

fn server_kind(server: &Server) -> ServerKind {
    let proto = server.port.protocol.to_ascii_uppercase();
    let mode = server.tls.as_ref().and_then(|t| t.mode);
    let terminated = matches!(
        mode,
        Some(
            ServerTlsMode::Simple
                | ServerTlsMode::Mutual
                | ServerTlsMode::OptionalMutual
                | ServerTlsMode::IstioMutual
        )
    );
    match (proto.as_str(), mode) {
        ("HTTP" | "HTTP2" | "GRPC", _) => ServerKind::Http,
        ("HTTPS" | "TLS", Some(ServerTlsMode::Passthrough)) => ServerKind::Passthrough,
        ("HTTPS", None) => ServerKind::Https,
        ("HTTPS", _) if terminated => ServerKind::Https,
        ("TLS", _) if terminated => ServerKind::TerminatedTls,
        ("TCP" | "MONGO" | "MYSQL" | "REDIS", _) => ServerKind::Tcp,
        ("TLS", Some(ServerTlsMode::AutoPassthrough)) => ServerKind::AutoPassthrough,
        (p, _) => {
            ServerKind::Unsupported(format!("protocol {p} is not supported yet; server skipped"))
        }
    }
}

/// `chain` behind the TLS a server terminates with `ctx`: matched by the
/// SNI of the server's hosts.
fn terminated(
    mut chain: FilterChain,
    gs: &GatewayServer<'_>,
    ctx: DownstreamTlsContext,
) -> FilterChain {
    chain.filter_chain_match = Some(FilterChainMatch {
        server_names: gs.sni(),
        transport_protocol: "tls".into(),
        ..Default::default()
    });
    chain.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    });
    chain
}

/// The destinations of the first VirtualService `tcp` route bound to a
/// TCP or terminated TLS server on `port` (Istio's
/// `buildGatewayNetworkFiltersFromTCPRoutes`), if any.
fn tcp_route(
    snap: &Snapshot,
    proxy: &Proxy,
    gs: &GatewayServer<'_>,
    port: u32,
) -> Option<Vec<(String, u32)>> {
    bound(snap, proxy).find_map(|vs| {
        let r = vs.spec.tcp.iter().find(|r| {
            vs.spec.hosts.iter().any(|h| gs.binds(vs, h))
                && (r.matches.is_empty()
                    || r.matches.iter().any(|m| m.port.is_none_or(|p| p == port)))
        })?;
        Some(l4_destinations(snap, vs, &r.route, port))
    })
}

/// VirtualServices visible from the proxy.
fn bound<'a>(
    snap: &'a Snapshot,
    proxy: &'a Proxy,
) -> impl Iterator<Item = &'a Config<VirtualServiceSpec>> + 'a {
    snap.virtual_services
        .iter()
        .filter(move |vs| exported_to(&vs.spec.export_to, &vs.namespace, &proxy.namespace))
}

/// A route configuration of the VirtualServices bound to `servers`, one
/// virtual host per VirtualService host (its only domain: the route
/// configuration ignores the `Host` header's port, as Istio's gateway
/// routes do for every proxy but proxyless gRPC, so a host reached through
/// a load balancer on another port still matches), with `httpsRedirect`
/// honoured.
fn gateway_route_config(
    snap: &Snapshot,
    proxy: &Proxy,
    port: u32,
    name: &str,
    servers: &[&GatewayServer<'_>],
    warnings: &mut Vec<ConfigWarning>,
) -> RouteConfiguration {
    let gateway_keys: Vec<String> = servers.iter().map(|s| s.gw.key()).collect();
    let ctx = RouteCtx {
        snap,
        proxy,
        port,
        gateways: &gateway_keys,
    };
    let mut vhosts: BTreeMap<String, VirtualHost> = BTreeMap::new();
    for vs in bound(snap, proxy) {
        for host in &vs.spec.hosts {
            let binding: Vec<_> = servers.iter().filter(|s| s.binds(vs, host)).collect();
            if binding.is_empty() {
                continue;
            }
            let redirect = binding
                .iter()
                .any(|s| s.server.tls.as_ref().and_then(|t| t.https_redirect) == Some(true));
            let vh = vhosts.entry(host.clone()).or_insert_with(|| VirtualHost {
                name: format!("{host}:{port}"),
                domains: vec![host.clone()],
                require_tls: if redirect {
                    virtual_host::TlsRequirementType::All as i32
                } else {
                    virtual_host::TlsRequirementType::None as i32
                },
                include_request_attempt_count: true,
                typed_per_filter_config: crate::session::of_gateway_host(snap, proxy, vs, host)
                    .map(crate::session::per_host)
                    .unwrap_or_default(),
                ..Default::default()
            });
            vh.routes.extend(virtual_service_routes(&ctx, vs, warnings));
        }
    }
    RouteConfiguration {
        virtual_hosts: vhosts.into_values().collect(),
        ..route_config_head(name.to_owned(), proxy)
    }
}

/// The TLS context of a server whose TLS the gateway terminates (an
/// HTTPS server, or a TLS server when `tcp`), as Istio's
/// `BuildListenerTLSContext`:
/// - `ISTIO_MUTUAL`: the gateway's own workload certificate and the mesh
///   root from its node agent (SDS `default`, `ROOTCA`), a client
///   certificate required;
/// - otherwise the certificate and key from files or from the
///   `credentialName` Secret, or each of the `credentialNames` Secrets
///   (served over SDS), and for `MUTUAL` / `OPTIONAL_MUTUAL` client
///   verification against `caCertificates`, the `caCertCredentialName`
///   Secret, or the (first) Secret's `ca.crt` (or a `<name>-cacert` Secret).
///
/// A client certificate must carry one of `subjectAltNames` if any are
/// given, and match `verifyCertificateSpki` / `verifyCertificateHash`. ALPN is `h2`, `http/1.1` (with `istio-peer-exchange` first on a
/// TLS server in `ISTIO_MUTUAL`). `None`, with a warning naming the field,
/// when what the mode needs is missing.
pub(crate) fn downstream_tls(
    snap: &Snapshot,
    site: &TlsSite<'_>,
    tls: &ServerTlsSettings,
    tcp: bool,
    secrets: &mut BTreeMap<String, Secret>,
    warnings: &mut Vec<ConfigWarning>,
) -> Option<DownstreamTlsContext> {
    let istio_mutual = tls.mode == Some(ServerTlsMode::IstioMutual);
    let mutual = matches!(
        tls.mode,
        Some(ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual)
    );
    // What a client certificate is checked for besides its issuer;
    // `insecureSkipVerify`: checked, but let through when it fails.
    let client_checks = CertificateValidationContext {
        match_typed_subject_alt_names: crate::policy::any_san_matchers(&tls.subject_alt_names),
        verify_certificate_spki: tls.verify_certificate_spki.clone(),
        verify_certificate_hash: tls.verify_certificate_hash.clone(),
        trust_chain_verification: if tls.insecure_skip_verify == Some(true) {
            envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::certificate_validation_context::TrustChainVerification::AcceptUntrusted as i32
        } else {
            0
        },
        ..Default::default()
    };
    // `credentialNames` (several certificates) wins over `credentialName`.
    let credentials: Vec<&String> = if tls.credential_names.is_empty() {
        tls.credential_name.iter().collect()
    } else {
        tls.credential_names.iter().collect()
    };
    let file = |p: &String| DataSource {
        specifier: Some(data_source::Specifier::Filename(p.clone())),
        ..Default::default()
    };
    let mut common = CommonTlsContext::default();
    if istio_mutual {
        use crate::policy::{ROOT_CA, WORKLOAD_CERT, agent_secret};
        common
            .tls_certificate_sds_secret_configs
            .push(agent_secret(WORKLOAD_CERT));
        common.validation_context_type = Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(client_checks),
                    validation_context_sds_secret_config: Some(agent_secret(ROOT_CA)),
                    ..Default::default()
                },
            ),
        );
    } else if !credentials.is_empty() {
        // Each Secret's certificate (RSA and ECDSA, say); a MUTUAL
        // server's CA is the first's, as istiod takes it.
        let field = if tls.credential_names.is_empty() {
            format!("{}.tls.credentialName", site.field)
        } else {
            format!("{}.tls.credentialNames", site.field)
        };
        let report = |warnings: &mut Vec<ConfigWarning>, why: String| {
            warnings.push(site.warning(field.clone(), why));
        };
        for cred in &credentials {
            let Some(secret) = site.secret(snap, cred) else {
                report(
                    warnings,
                    format!(
                        "Secret {cred:?} not found in {}; {} skipped",
                        site.where_secrets(),
                        site.what
                    ),
                );
                return None;
            };
            let Some(name) = certificate_secret(cred, secret, secrets) else {
                report(
                    warnings,
                    format!(
                        "Secret {cred:?} has no tls.crt/tls.key; {} skipped",
                        site.what
                    ),
                );
                return None;
            };
            common
                .tls_certificate_sds_secret_configs
                .push(crate::policy::ads_secret(name));
        }
        let cred = credentials[0];
        if tls.ca_crl.is_some() {
            // Istio: with a credential, the CRL is the Secret's own.
            warnings.push(site.warning(
                format!("{}.tls.caCrl", site.field),
                "with credentialName the revocation list is the Secret's ca.crl; ignored".into(),
            ));
        }
        if mutual
            && let Some(cm) = tls
                .ca_cert_credential_name
                .as_deref()
                .filter(|c| c.starts_with(crate::policy::CONFIG_MAP_CREDENTIAL))
        {
            // A ConfigMap's `ca.crt` (a Gateway API listener's client
            // certificate validation).
            let key = &cm[crate::policy::CONFIG_MAP_CREDENTIAL.len()..];
            let Some(ca) = snap.config_map_cas.get(key) else {
                report(
                    warnings,
                    format!(
                        "MUTUAL needs a CA: ConfigMap {key} is missing or has no ca.crt; {} skipped",
                        site.what
                    ),
                );
                return None;
            };
            config_map_secret(cm, ca.as_bytes(), secrets);
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(client_checks),
                        validation_context_sds_secret_config: Some(crate::policy::ads_secret(
                            cm.to_owned(),
                        )),
                        ..Default::default()
                    },
                ),
            );
        } else if mutual {
            // `caCertCredentialName` (a Secret of its own) wins over the
            // certificate's Secret.
            let (cred, trust) = match &tls.ca_cert_credential_name {
                Some(name) => (name, site.secret(snap, name).and_then(|s| s.trust(true))),
                None => (
                    cred,
                    site.secret(snap, cred)
                        .and_then(|s| s.trust(false))
                        .or_else(|| {
                            site.secret(snap, &format!("{cred}-cacert"))
                                .and_then(|s| s.trust(true))
                        }),
                ),
            };
            let Some(trust) = trust else {
                let why = if tls.ca_cert_credential_name.is_some() {
                    format!(
                        "MUTUAL needs a CA: Secret {cred:?} (caCertCredentialName) is missing or has no ca.crt; {} skipped",
                        site.what
                    )
                } else {
                    format!(
                        "MUTUAL needs a CA: Secret {cred:?} has no ca.crt and there is no {cred}-cacert; {} skipped",
                        site.what
                    )
                };
                report(warnings, why);
                return None;
            };
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(client_checks),
                        validation_context_sds_secret_config: Some(ca_secret(cred, trust, secrets)),
                        ..Default::default()
                    },
                ),
            );
        }
    } else if let Some(pairs) = certificate_files(tls) {
        // `tlsCertificates` (an RSA and an ECDSA one, say: Envoy picks
        // what the client supports), else `serverCertificate`.
        let Ok(pairs) = pairs else {
            warnings.push(site.warning(
                format!("{}.tls.tlsCertificates", site.field),
                format!(
                    "each certificate needs serverCertificate and privateKey; {} skipped",
                    site.what
                ),
            ));
            return None;
        };
        common
            .tls_certificates
            .extend(pairs.into_iter().map(|(cert, key)| TlsCertificate {
                certificate_chain: Some(file(cert)),
                private_key: Some(file(key)),
                ..Default::default()
            }));
        if mutual {
            let Some(ca) = &tls.ca_certificates else {
                warnings.push(site.warning(
                    format!("{}.tls.caCertificates", site.field),
                    format!("MUTUAL needs caCertificates; {} skipped", site.what),
                ));
                return None;
            };
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(file(ca)),
                        crl: tls.ca_crl.as_ref().map(file),
                        ..client_checks
                    },
                ),
            );
        }
    } else {
        warnings.push(site.warning(
            format!("{}.tls", site.field),
            format!(
                "needs credentialName, serverCertificate and privateKey, or tlsCertificates; {} skipped",
                site.what
            ),
        ));
        return None;
    }
    common.alpn_protocols = if tcp && istio_mutual {
        vec!["istio-peer-exchange".into(), "h2".into(), "http/1.1".into()]
    } else {
        vec!["h2".into(), "http/1.1".into()]
    };
    // Istio applies the server's TLS versions and ciphers to SIMPLE,
    // MUTUAL and OPTIONAL_MUTUAL; ISTIO_MUTUAL keeps the mesh's.
    if !istio_mutual {
        let version = |v: Option<TlsProtocol>| {
            (match v {
                None | Some(TlsProtocol::Auto) => tls_parameters::TlsProtocol::TlsAuto,
                Some(TlsProtocol::V1_0) => tls_parameters::TlsProtocol::TlSv10,
                Some(TlsProtocol::V1_1) => tls_parameters::TlsProtocol::TlSv11,
                Some(TlsProtocol::V1_2) => tls_parameters::TlsProtocol::TlSv12,
                Some(TlsProtocol::V1_3) => tls_parameters::TlsProtocol::TlSv13,
            }) as i32
        };
        common.tls_params = Some(TlsParameters {
            tls_minimum_protocol_version: version(tls.min_protocol_version),
            tls_maximum_protocol_version: version(tls.max_protocol_version),
            cipher_suites: tls.cipher_suites.clone(),
            ecdh_curves: tls.ecdh_curves.clone(),
            ..Default::default()
        });
    }
    Some(DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: Some(BoolValue {
            value: matches!(
                tls.mode,
                Some(ServerTlsMode::Mutual | ServerTlsMode::IstioMutual)
            ),
        }),
        ..Default::default()
    })
}

/// The SDS secret `kubernetes://<cred>` (Istio's name for a
/// `credentialName` Secret's certificate and key) made from `secret`,
/// added to `secrets`; its name, or `None` when the Secret has no
/// `tls.crt` and `tls.key`.
pub(crate) fn certificate_secret(
    cred: &str,
    secret: &TlsSecret,
    secrets: &mut BTreeMap<String, Secret>,
) -> Option<String> {
    let (Some(cert), Some(key)) = (&secret.cert, &secret.key) else {
        return None;
    };
    let [name, _] = crate::policy::credential_sds_names(cred);
    secrets.insert(
        name.clone(),
        Secret {
            name: name.clone(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(cert)),
                private_key: Some(inline(key)),
                ..Default::default()
            })),
        },
    );
    Some(name)
}

/// The SDS secret `kubernetes://<cred>-cacert` (Istio's name for a
/// `credentialName`'s CA bundle) trusting `ca` (PEM) and refusing what its
/// revocation list `crl` (PEM, the Secret's `ca.crl`) revokes, added to
/// `secrets`; its reference over ADS.
pub(crate) fn ca_secret(
    cred: &str,
    (ca, crl): (&[u8], Option<&[u8]>),
    secrets: &mut BTreeMap<String, Secret>,
) -> SdsSecretConfig {
    let [_, name] = crate::policy::credential_sds_names(cred);
    secrets.insert(
        name.clone(),
        Secret {
            name: name.clone(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(ca)),
                    crl: crl.map(inline),
                    ..Default::default()
                },
            )),
        },
    );
    crate::policy::ads_secret(name)
}

/// The SDS secret `configmap://<namespace>/<name>`: a ConfigMap's `ca.crt`
/// (Istio serves it under that name).
fn config_map_secret(name: &str, ca: &[u8], secrets: &mut BTreeMap<String, Secret>) {
    secrets.insert(
        name.to_owned(),
        Secret {
            name: name.to_owned(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(ca)),
                    ..Default::default()
                },
            )),
        },
    );
}

/// Where a server TLS context is configured: a Gateway server, or a
/// Sidecar ingress listener; for warnings and `credentialName` Secrets.
pub(crate) struct TlsSite<'a> {
    /// The kind of the object (`Gateway`, `Sidecar`).
    pub kind: &'static str,
    /// The object's `namespace/name`.
    pub key: String,
    /// The path of the server or listener (`spec.servers[0]`).
    pub field: String,
    /// What is left out when the context cannot be made (`server`, `port`).
    pub what: &'static str,
    /// Where Secrets are looked for, in order: the proxy's namespace (Istio's
    /// rule), then for a gateway the Gateway's.
    pub namespaces: [&'a str; 2],
}

impl TlsSite<'_> {
    fn warning(&self, field: String, why: String) -> ConfigWarning {
        ConfigWarning::new(self.kind, self.key.clone(), field, why)
    }

    /// The Secret `name` in the first of the site's namespaces that has it;
    /// `kubernetes-gateway://<namespace>/<name>` (a Gateway API
    /// `certificateRef`, checked against ReferenceGrants when converted)
    /// names its namespace.
    fn secret<'s>(&self, snap: &'s Snapshot, name: &str) -> Option<&'s TlsSecret> {
        if let Some(key) = name.strip_prefix(crate::policy::GATEWAY_API_CREDENTIAL) {
            return snap.secrets.get(key).map(|s| s.as_ref());
        }
        self.namespaces
            .iter()
            .find_map(|ns| snap.secrets.get(&format!("{ns}/{name}")))
            .map(|s| s.as_ref())
    }

    fn where_secrets(&self) -> String {
        match self.namespaces {
            [a, b] if a == b => a.to_owned(),
            [a, b] => format!("{a} or {b}"),
        }
    }
}

fn inline(bytes: &[u8]) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes.to_vec())),
        ..Default::default()
    }
}

/// The certificate and key files a server's TLS settings name: each of
/// `tlsCertificates` (`Err` when one lacks either), else
/// `serverCertificate` and `privateKey`; `None` when neither is there.
#[allow(
    clippy::type_complexity,
    reason = "a pair list, or which entry is incomplete"
)]
fn certificate_files(tls: &ServerTlsSettings) -> Option<Result<Vec<(&String, &String)>, ()>> {
    if !tls.tls_certificates.is_empty() {
        return Some(
            tls.tls_certificates
                .iter()
                .map(|c| {
                    c.server_certificate
                        .as_ref()
                        .zip(c.private_key.as_ref())
                        .ok_or(())
                })
                .collect(),
        );
    }
    Some(Ok(vec![
        tls.server_certificate
            .as_ref()
            .zip(tls.private_key.as_ref())?,
    ]))
}

fn tls_inspector_filter() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..Default::default()
    }
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

/// A sidecar's outbound listener for `ip:port`, reached through
/// `virtualOutbound`; outbound, as Istio marks it (its connection
/// managers' spans are then the client's).
fn unbound_listener(name: &str, ip: &str, port: u32, chain: FilterChain) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(socket_address(ip, port)),
        bind_to_port: Some(BoolValue { value: false }),
        filter_chains: vec![chain],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// Istio's `tunnelingconfig.Apply`: the tunnel a TCP proxy to `dests`
/// opens through its one destination, from the DestinationRule `proxy`
/// sees for that host: the subset's `tunnel` for a subset destination (not
/// the top level's), else the top level's. `None` for weighted
/// destinations, a catch-all, or no tunnel. `dests` are the cluster names
/// this module makes (`outbound|port|subset|host`).
fn tunneling(
    snap: &Snapshot,
    proxy: &Proxy,
    dests: &[(String, u32)],
) -> Option<tcp_proxy::TunnelingConfig> {
    let [(cluster, _)] = dests else { return None };
    if !snap.tunnels {
        return None;
    }
    let mut parts = cluster.splitn(4, '|');
    let (Some("outbound"), Some(_), Some(subset), Some(host)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let dr = snap.destination_rule_for(host, proxy)?;
    let policy = if subset.is_empty() {
        dr.spec.traffic_policy.as_ref()
    } else {
        dr.spec
            .subsets
            .iter()
            .find(|s| s.name == subset)?
            .traffic_policy
            .as_ref()
    };
    let tunnel = policy?.tunnel.as_ref()?;
    // Go's `net.JoinHostPort`: an IPv6 address in brackets.
    let hostname = if tunnel.target_host.contains(':') {
        format!("[{}]:{}", tunnel.target_host, tunnel.target_port)
    } else {
        format!("{}:{}", tunnel.target_host, tunnel.target_port)
    };
    Some(tcp_proxy::TunnelingConfig {
        hostname,
        use_post: tunnel.uses_post(),
        ..Default::default()
    })
}

/// A chain proxying TCP to one cluster, or to weighted clusters, through
/// `tunnel` if given ([`tunneling`]).
fn tcp_chain(
    chain_name: &str,
    stat_prefix: &str,
    dests: &[(String, u32)],
    tunnel: Option<tcp_proxy::TunnelingConfig>,
    access_log: &[AccessLog],
) -> FilterChain {
    let cluster_specifier = match dests {
        [(only, _)] => tcp_proxy::ClusterSpecifier::Cluster(only.clone()),
        [] => tcp_proxy::ClusterSpecifier::Cluster(BLACKHOLE_CLUSTER.to_owned()),
        many => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: many
                .iter()
                .map(
                    |(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: *weight,
                        ..Default::default()
                    },
                )
                .collect(),
        }),
    };
    let tcp = TcpProxy {
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(cluster_specifier),
        tunneling_config: tunnel,
        access_log: crate::metrics::for_protocol(access_log, true),
        access_log_options: crate::metrics::tcp_log_options(access_log),
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

/// What an HTTP connection manager's chain is for ([`hcm_chain`]).
#[derive(Clone, Copy)]
struct HcmOn {
    /// The listener's port.
    port: u32,
    /// A gateway's (it uses the client's address).
    gateway: bool,
    /// Its routes have a persistent session: the empty stateful session
    /// filter goes before the router ([`crate::session`]).
    sessions: bool,
}

/// A chain of the listener on [`HcmOn::port`] ending in an HTTP connection
/// manager on RDS `route_config`: `authz` (a gateway's JWT and RBAC
/// filters) with the WasmPlugins of the port around them
/// ([`crate::wasm::Plugins::http`]), CORS, fault injection, the stateful
/// session filter when [`HcmOn::sessions`], the router.
fn hcm_chain(
    stat_prefix: &str,
    route_config: &str,
    HcmOn {
        port,
        gateway,
        sessions,
    }: HcmOn,
    mesh: &crate::model::MeshConfig,
    observe: &crate::telemetry::Observe,
    authz: &[HttpFilter],
) -> FilterChain {
    let mut http_filters = observe.wasm.http(port, authz);
    if observe.exchange {
        http_filters.push(crate::metrics::peer_filter(crate::telemetry::Side::Client));
    }
    http_filters.extend([
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
    ]);
    if sessions {
        http_filters.push(crate::session::empty_filter());
    }
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let hcm = HttpConnectionManager {
        tracing: observe.tracing.clone(),
        request_id_extension: observe.request_id.clone(),
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source_waited_for()),
            route_config_name: route_config.to_owned(),
        })),
        http_filters,
        use_remote_address: Some(BoolValue { value: gateway }),
        ..istio_http_connection_manager(mesh, &observe.access_log)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A plan's buffers, given back, are the next plan's on this thread,
    /// emptied and with their capacity; a set over the limit is not kept.
    #[test]
    fn a_plans_buffers_are_kept_for_the_next_plan_on_its_thread() {
        std::thread::spawn(|| {
            let mut b = Buffers::take();
            assert_eq!(b.bytes(), 0, "nothing is spare on a new thread");
            b.domains.text.push_str("reviews.default.svc");
            b.domains.spans.push((0, 19));
            b.first.push(true);
            b.claimed.push(0..1);
            b.own.extend_from_slice(&[1, 2, 3]);
            b.lengths.push((1, 2));
            b.routes.push(HostRoutes::Memoised(Arc::new(vec![0; 4])));
            b.seen.insert_unique(1, 0, |_| 1);
            let capacity = b.bytes();
            b.give_back();
            let again = Buffers::take();
            assert_eq!(again.bytes(), capacity);
            assert!(again.domains.text.is_empty() && again.domains.spans.is_empty());
            assert!(again.first.is_empty() && again.claimed.is_empty());
            assert!(again.own.is_empty() && again.lengths.is_empty());
            assert!(again.routes.is_empty() && again.seen.is_empty());
            assert_eq!(Buffers::take().bytes(), 0, "taken, so no longer spare");

            let mut big = Buffers::default();
            big.own.reserve(SPARE_MAX_BYTES + 1);
            big.give_back();
            assert_eq!(Buffers::take().bytes(), 0, "over the limit: freed");
        })
        .join()
        .unwrap();
    }
}
