//! The mesh model the translator reads: an immutable [`Snapshot`] of
//! services (with ports, VIPs, endpoints and the endpoints' pod labels) and
//! Istio configs, and the [`Proxy`] being configured.
//!
//! [`Snapshot::build`] joins Kubernetes objects the way istiod does:
//! a `Service` gives hostname `name.ns.svc.cluster.local`, ports and VIP;
//! `EndpointSlice`s labelled `kubernetes.io/service-name` give its endpoints;
//! each endpoint's `targetRef` Pod (or the Pod with that IP) gives the labels
//! DestinationRule subsets select on. A `ServiceEntry` adds one service per host.

use std::collections::{BTreeMap, BTreeSet};

// foldhash rather than SipHash: looked up per service for every proxy.
use hashbrown::HashMap;
use std::sync::Arc;

use crds::document::Object;
use crds::document::PodInfo;
use crds::service_entry::{Location, Resolution};
use crds::{DestinationRuleSpec, GatewaySpec, VirtualServiceSpec};
use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Kubernetes' default cluster DNS domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// An Istio config object with its identity.
#[derive(Clone, Debug, PartialEq)]
pub struct Config<S> {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (defaulted to `default`).
    pub namespace: String,
    /// The spec.
    pub spec: S,
}

impl<S> Config<S> {
    /// `namespace/name`, for messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Application protocol of a port, as Istio selects it (port name prefix
/// `http-`, `grpc-`, ..., or `appProtocol`, or a ServiceEntry's `protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.1 (routed by RDS).
    Http,
    /// HTTP/2 (routed by RDS).
    Http2,
    /// gRPC (HTTP/2, routed by RDS).
    Grpc,
    /// TLS or HTTPS: opaque to the sidecar, routed by SNI.
    Tls,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    /// Istio's protocol selection from a port name (`http`, `http-web`,
    /// `grpc-x`, `tcp-db`, ...) or an explicit protocol string; unknown ->
    /// TCP. (Istio sniffs unnamed ports; this daemon treats them as TCP.)
    pub fn from_name(name: &str) -> Protocol {
        let lower = name.to_ascii_lowercase();
        let prefix = lower.split('-').next().unwrap_or("");
        match prefix {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "https" | "tls" => Protocol::Tls,
            _ => Protocol::Tcp,
        }
    }

    /// Whether requests on this port are HTTP and go through route configs.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

/// A port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (`http`).
    pub name: String,
    /// Service port (what clients dial).
    pub port: u32,
    /// Protocol selected for it.
    pub protocol: Protocol,
}

/// One endpoint (pod or ServiceEntry endpoint) of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// IP address (or DNS name for DNS ServiceEntries); empty for a
    /// WorkloadEntry in a network that only its gateways reach.
    pub address: String,
    /// Service port name -> endpoint (target) port, 0 for a service port
    /// the workload does not serve; shared by the endpoints of one
    /// EndpointSlice.
    pub ports: Arc<BTreeMap<String, u32>>,
    /// Labels of the workload (pod labels), for subsets; one map shared by
    /// the endpoints whose labels are equal (a Deployment's replicas).
    /// [`Endpoint::in_mesh`] is read from them by [`Endpoint::new`]: make a
    /// new endpoint rather than replace them.
    pub labels: Arc<BTreeMap<String, String>>,
    /// `EndpointSlice` `conditions.ready` (default true).
    pub ready: bool,
    /// Draining, as Istio's `model.Draining`: a workload labelled
    /// [`DRAINING_LABEL`], or an EndpointSlice endpoint that is not ready
    /// but still `serving` and `terminating` (each true when unset: a pod
    /// shutting down that still answers). Only a service with a cookie
    /// [`PersistentSession`] keeps such an endpoint, with Envoy's
    /// `health_status: DRAINING`: its existing sessions go on reaching it,
    /// new ones do not. Other services leave it out, ready or not.
    pub draining: bool,
    /// `region/zone/subzone` (any part may be empty): ServiceEntry endpoint
    /// `locality`, the pod's `istio-locality` label (dots for slashes), its
    /// `topology.kubernetes.io/region|zone` and `topology.istio.io/subzone`
    /// labels, or the EndpointSlice `zone`.
    pub locality: String,
    /// The workload's service account (the pod's `serviceAccountName`, a
    /// WorkloadEntry's `serviceAccount`): its identity is
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`.
    pub service_account: Option<String>,
    /// Its share of the service's traffic against the others' (Envoy's
    /// `LbEndpoint.load_balancing_weight`, at least 1): a ServiceEntry
    /// endpoint's or WorkloadEntry's `weight`, 1 when unset or 0 (as
    /// Istio); 1 for pods.
    pub weight: u32,
    /// A WorkloadEntry's `network`; empty: its (or its pod's)
    /// [`NETWORK_LABEL`], else the mesh's default ([`Networks::of`], read
    /// only in a mesh with networks, so that building endpoints looks no
    /// label up for it).
    pub network: String,
    /// [`Endpoint::in_mesh`], read from `labels` once, in [`Endpoint::new`]:
    /// it is asked for each endpoint of each cluster a proxy gets, and the
    /// label lookup was ~5 % of a snapshot's first config key.
    in_mesh: bool,
}

/// The value of label `key` for a workload with `labels` at `locality`
/// (`region/zone/subzone`) in `network`, as Istio's augmented labels give
/// it: the label, else for `topology.kubernetes.io/region`,
/// `topology.kubernetes.io/zone` and `topology.istio.io/subzone` that part
/// of the locality, for [`NETWORK_LABEL`] the network; `""` when neither
/// (Go's value of a missing map key, which Istio compares).
pub(crate) fn topology_value<'a>(
    labels: &'a BTreeMap<String, String>,
    locality: &'a str,
    network: &'a str,
    key: &str,
) -> &'a str {
    if let Some(v) = labels.get(key) {
        return v;
    }
    let part = match key {
        NETWORK_LABEL => return network,
        "topology.kubernetes.io/region" => 0,
        "topology.kubernetes.io/zone" => 1,
        "topology.istio.io/subzone" => 2,
        _ => return "",
    };
    locality.split('/').nth(part).unwrap_or("")
}

/// How a service's endpoints are resolved (ServiceEntry `resolution`;
/// Kubernetes services are `Static` with EDS, headless ones `Passthrough`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceResolution {
    /// Endpoints known to the control plane, served over EDS.
    Static,
    /// Envoy resolves the hostnames itself, every address (STRICT_DNS).
    Dns,
    /// Envoy resolves and uses one address at a time (LOGICAL_DNS),
    /// ServiceEntry `DNS_ROUND_ROBIN`.
    DnsRoundRobin,
    /// Envoy resolves each request's own host (its `Host`, or a TLS
    /// connection's SNI) under a wildcard host, at request time: Envoy's
    /// dynamic forward proxy, ServiceEntry `DYNAMIC_DNS`.
    DynamicDns,
    /// Forward to the original destination.
    Passthrough,
}

/// A service in the registry.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Fully qualified hostname: `reviews.default.svc.cluster.local`, or a ServiceEntry host.
    pub hostname: String,
    /// Short name (`reviews`); the host itself for ServiceEntries.
    pub name: String,
    /// Namespace of the Service / ServiceEntry.
    pub namespace: String,
    /// Cluster IPs (empty for headless services).
    pub vips: Vec<String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Endpoint resolution.
    pub resolution: ServiceResolution,
    /// True for Kubernetes services (short-name domains apply).
    pub kubernetes: bool,
    /// ServiceEntry `MESH_EXTERNAL`.
    pub external: bool,
    /// `exportTo` (ServiceEntry field, or the Service's
    /// `networking.istio.io/exportTo` annotation); empty means everywhere.
    pub export_to: Vec<String>,
    /// ServiceEntry `subjectAltNames`: the identities its servers may
    /// present, besides its endpoints' service accounts (the SANs checked
    /// under `ISTIO_MUTUAL`, and under `SIMPLE` / `MUTUAL` when the
    /// DestinationRule names none). Empty for Kubernetes services.
    pub subject_alt_names: Vec<String>,
    /// Its strong sticky sessions, from its labels
    /// ([`PersistentSession::from_labels`]); `None` for most services.
    pub persistent_session: Option<PersistentSession>,
    /// Addresses allocated to a ServiceEntry host without `addresses`
    /// ([`Snapshot::allocate_addresses`]), used for proxies that capture
    /// DNS only ([`Service::vips_for`]).
    pub auto_vips: Vec<String>,
    /// A Kubernetes Service labelled [`DISABLE_GATEWAY_PORT_TRANSLATION_LABEL`]:
    /// its gateway pods' servers keep their own ports
    /// ([`Snapshot::gateway_ports`] leaves it out).
    pub no_gateway_port_translation: bool,
}

/// The Service label (any value) opting its gateway pods out of port
/// translation (Istio's `DisableGatewayPortTranslationLabel`).
pub const DISABLE_GATEWAY_PORT_TRANSLATION_LABEL: &str =
    "networking.istio.io/disable-gateway-port-translation";

/// The label of a Service or ServiceEntry asking for cookie-based
/// persistent sessions: `<cookie name>[:<path>]` (Istio's
/// `PILOT_PERSISTENT_SESSION_LABEL`).
pub const PERSISTENT_SESSION_LABEL: &str = "istio.io/persistent-session";
/// The label asking for header-based persistent sessions: the header's
/// name (Istio's `PILOT_PERSISTENT_SESSION_HEADER_LABEL`).
pub const PERSISTENT_SESSION_HEADER_LABEL: &str = "istio.io/persistent-session-header";
/// A workload label (any non-empty value) marking its endpoints draining
/// (Istio's `PILOT_DRAINING_LABEL`): see [`Endpoint::draining`].
pub const DRAINING_LABEL: &str = "istio.io/draining";

/// A service's persistent (strong sticky) sessions, as Istio's
/// `MaybeBuildStatefulSessionFilterConfig`: Envoy's stateful session
/// filter remembers the endpoint that served a session's first request in
/// a cookie or header, and sends the session's later requests to it for
/// as long as it is in the cluster, whatever the load balancer would pick
/// (a draining endpoint included, for the cookie).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistentSession {
    /// [`PERSISTENT_SESSION_LABEL`]: the session in the cookie `name`, with
    /// `path` (`/` when the label gives none) and no TTL (a browser
    /// session cookie), Envoy's `envoy.http.stateful_session.cookie`.
    Cookie {
        /// The cookie's name.
        name: String,
        /// The cookie's `Path`.
        path: String,
    },
    /// [`PERSISTENT_SESSION_HEADER_LABEL`]: the session in this request and
    /// response header, Envoy's `envoy.http.stateful_session.header`.
    Header(String),
}

impl PersistentSession {
    /// The session a Service's or ServiceEntry's `labels` ask for: the
    /// cookie label first (as Istio reads them), else the header label;
    /// `None` without either (or with empty values).
    pub fn from_labels(labels: Option<&BTreeMap<String, String>>) -> Option<PersistentSession> {
        let labels = labels?;
        let value = |key: &str| labels.get(key).filter(|v| !v.is_empty());
        if let Some(cookie) = value(PERSISTENT_SESSION_LABEL) {
            let (name, path) = cookie.split_once(':').unwrap_or((cookie, "/"));
            return Some(PersistentSession::Cookie {
                name: name.to_owned(),
                path: path.to_owned(),
            });
        }
        value(PERSISTENT_SESSION_HEADER_LABEL).map(|h| PersistentSession::Header(h.clone()))
    }
}

/// The pod label that marks a workload as having an Istio sidecar (set
/// by injection); auto mTLS sends Istio mTLS only to such endpoints.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

impl Endpoint {
    /// An endpoint at `address` (an IP, or a hostname for DNS
    /// ServiceEntries) with its target `ports` by service port name, the
    /// workload's `labels`, `ready` (EndpointSlice `conditions.ready`),
    /// `locality` (`region/zone/subzone`) and `service_account`.
    pub fn new(
        address: String,
        ports: Arc<BTreeMap<String, u32>>,
        labels: Arc<BTreeMap<String, String>>,
        ready: bool,
        locality: String,
        service_account: Option<String>,
    ) -> Endpoint {
        let in_mesh = labels.get(TLS_MODE_LABEL).is_some_and(|v| v == "istio");
        let draining = labels.get(DRAINING_LABEL).is_some_and(|v| !v.is_empty());
        Endpoint {
            address,
            ports,
            labels,
            ready,
            draining,
            locality,
            service_account,
            weight: 1,
            network: String::new(),
            in_mesh,
        }
    }

    /// Whether the workload has a sidecar that takes Istio mTLS
    /// ([`TLS_MODE_LABEL`] `istio`).
    pub fn in_mesh(&self) -> bool {
        self.in_mesh
    }

    /// The endpoint's port for the service port named `name`; an endpoint
    /// with a single port uses it for any name (unnamed service ports).
    /// `None` also for a port mapped to 0: a workload that does not serve
    /// that service port ([`Endpoint::ports`] keeps it, so that the one
    /// port left is not taken for every name).
    pub fn target_port(&self, name: &str) -> Option<u32> {
        // With one port it is the answer whatever its name (the usual
        // case, and no string compared on the per-proxy path).
        let port = if self.ports.len() == 1 {
            self.ports.first_key_value().map(|(_, p)| *p)
        } else {
            self.ports.get(name).copied()
        };
        port.filter(|p| *p != 0)
    }
}

impl Service {
    /// The port with this number.
    pub fn port(&self, number: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// The addresses `proxy` knows this service by: its own, then for a
    /// proxy that captures DNS ([`Proxy::dns_capture`]) those allocated to
    /// it, as Istio's `GetAllAddressesForProxy`.
    pub fn vips_for<'a>(&'a self, proxy: &Proxy) -> impl Iterator<Item = &'a String> + 'a {
        // The metadata is looked up only for the few services with some.
        let auto: &[String] = if !self.auto_vips.is_empty() && proxy.dns_capture() {
            &self.auto_vips
        } else {
            &[]
        };
        self.vips.iter().chain(auto)
    }

    /// Whether this service keeps its draining endpoints (with the
    /// `DRAINING` health status): only with a cookie session, as Istio's
    /// endpoint builder (the header label alone does not).
    pub fn keeps_draining(&self) -> bool {
        matches!(
            self.persistent_session,
            Some(PersistentSession::Cookie { .. })
        )
    }
}

/// Mesh-wide settings (Istio `MeshConfig`, the parts used so far).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// `outboundTrafficPolicy.mode`: `ALLOW_ANY` (true) or `REGISTRY_ONLY`.
    pub allow_any: bool,
    /// DNS domain, `cluster.local`.
    pub domain: String,
    /// SPIFFE trust domain (`trustDomain`), `cluster.local`.
    pub trust_domain: String,
    /// `enableAutoMtls` (default true): clients use Istio mTLS to endpoints
    /// whose pods carry `security.istio.io/tlsMode: istio`, unless a
    /// DestinationRule sets TLS settings.
    pub auto_mtls: bool,
    /// `dnsRefreshRate` (default 60 s): DNS clusters' `dns_refresh_rate`,
    /// with `respect_dns_ttl` (a record's TTL wins).
    pub dns_refresh_rate: std::time::Duration,
    /// `pathNormalization.normalization` (default `BASE`): every HTTP
    /// connection manager's `normalize_path`, `merge_slashes` and
    /// `path_with_escaped_slashes_action`.
    pub path_normalization: crds::mesh::PathNormalization,
    /// `accessLogFile` with its encoding and format: the access log every
    /// HTTP connection manager and TCP proxy writes; `None`: none.
    pub access_log: Option<AccessLog>,
    /// `defaultServiceExportTo`, `defaultVirtualServiceExportTo` and
    /// `defaultDestinationRuleExportTo`.
    pub default_export_to: DefaultExportTo,
    /// `connectTimeout`; `None`: Istio's 10 s.
    pub connect_timeout: Option<std::time::Duration>,
    /// `tcpKeepalive`: on every upstream connection; `None`: none.
    pub tcp_keepalive: Option<crds::destination_rule::TcpKeepalive>,
    /// `h2UpgradePolicy: UPGRADE`: HTTP/1.1 ports' upstreams get HTTP/2.
    pub h2_upgrade: bool,
    /// `defaultHttpRetryPolicy`: the retries of routes that set none;
    /// `None`: Istio's default policy.
    pub default_retry: Option<crds::virtual_service::HttpRetry>,
    /// `trustDomainAliases`: identities in these trust domains are the
    /// mesh's too.
    pub trust_domain_aliases: Vec<String>,
    /// `rootNamespace`: where mesh-wide `Sidecar`s and
    /// `PeerAuthentication`s live (`istio-system`).
    pub root_namespace: String,
    /// `localityLbSetting`; `None`: Istio's default, `{enabled: true}`.
    pub locality_lb: Option<crds::destination_rule::LocalityLbSetting>,
    /// `ingressControllerMode`, `ingressClass`, `ingressService`,
    /// `ingressSelector`: which Kubernetes Ingresses are served, by which
    /// gateway pods ([`crate::ingress`]).
    pub ingress: crate::ingress::Settings,
    /// The tracing provider (`defaultProviders.tracing` naming a `zipkin`
    /// extension provider); `None`: no tracing.
    pub tracing: Option<TracingProvider>,
    /// Every `zipkin` extension provider by name (Telemetry resources name
    /// them), with `defaultConfig.tracing`'s sampling.
    pub tracing_providers: BTreeMap<String, TracingProvider>,
    /// Every `envoyFileAccessLog` extension provider by name, and Istio's
    /// built-in `envoy` (Istio's default line to `/dev/stdout`) unless the
    /// mesh config defines one of that name.
    pub access_log_providers: BTreeMap<String, AccessLog>,
    /// Every `envoyOtelAls` extension provider by name: access logs as
    /// OpenTelemetry log records to a collector.
    pub otel_log_providers: BTreeMap<String, OtelLog>,
    /// Every `envoyHttpAls` and `envoyTcpAls` extension provider by name:
    /// access log entries streamed to a gRPC access log service.
    pub grpc_log_providers: BTreeMap<String, GrpcLog>,
    /// `defaultProviders.accessLogging`: the access log providers of
    /// workloads no Telemetry's `accessLogging` applies to.
    pub default_access_logging: Vec<String>,
    /// The metrics providers Istio's standard metrics are made for: every
    /// `prometheus` extension provider by name, and Istio's built-in
    /// `prometheus` (Envoy's own `/stats/prometheus`, which Prometheus
    /// scrapes; [`crate::metrics`]).
    pub metrics_providers: std::collections::BTreeSet<String>,
    /// `defaultProviders.metrics`: the metrics providers of workloads no
    /// Telemetry's `metrics` names providers for; unset: `prometheus`
    /// (Istio's installed default).
    pub default_metrics: Option<Vec<String>>,
    /// The external authorizers (`envoyExtAuthzHttp` and
    /// `envoyExtAuthzGrpc` extension providers) by name, each parsed or
    /// why it cannot be used; `CUSTOM` AuthorizationPolicies name them.
    pub ext_authz: BTreeMap<String, Result<crate::ext_authz::Provider, String>>,
    /// The networks of a multi-network mesh (`meshNetworks`, the system
    /// namespace's and gateway Services' `topology.istio.io/network`
    /// labels): what Split Horizon EDS reads.
    pub networks: Networks,
}

/// The annotation of a NodePort network gateway Service selecting the nodes
/// whose external IPs are its addresses (a JSON label map; `{}`: every
/// node), Istio's `traffic.istio.io/nodeSelector`.
pub const NODE_SELECTOR_ANNOTATION: &str = "traffic.istio.io/nodeSelector";

/// The label naming a workload's network (on a pod, a WorkloadEntry, the
/// system namespace, or a gateway Service), Istio's
/// `topology.istio.io/network`.
pub const NETWORK_LABEL: &str = "topology.istio.io/network";

/// The label of a network gateway Service naming the port where it takes
/// mTLS for its network (Istio's `networking.istio.io/gatewayPort`;
/// default [`DEFAULT_NETWORK_GATEWAY_PORT`]).
pub const NETWORK_GATEWAY_PORT_LABEL: &str = "networking.istio.io/gatewayPort";

/// Istio's east-west gateway port (`DefaultNetworkGatewayPort`).
pub const DEFAULT_NETWORK_GATEWAY_PORT: u32 = 15443;

/// The ID of the one registry (cluster) this control plane reads, as
/// meshNetworks `fromRegistry` names it: Istio's default cluster ID.
pub const CLUSTER_ID: &str = "Kubernetes";

/// Where each endpoint's network comes from and how other networks reach
/// it (Istio's network manager). A mesh without gateways is one network:
/// every proxy reaches every endpoint directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Networks {
    /// Each network's gateways (`meshNetworks` `address` gateways, then
    /// the external addresses of gateway Services), sorted and unique.
    pub gateways: BTreeMap<String, Vec<NetworkGateway>>,
    /// The network of endpoints that name none: the system namespace's
    /// [`NETWORK_LABEL`], else the network whose `meshNetworks` endpoints
    /// are `fromRegistry: Kubernetes`; empty when neither.
    pub default: String,
    /// `meshNetworks` `fromCidr` ranges and their network, in network
    /// order (the first range holding an endpoint's IP wins), read when
    /// there is no default.
    pub ranges: Vec<((std::net::IpAddr, u8), String)>,
    /// `meshNetworks` `registryServiceName` gateways: (Service hostname,
    /// network, port); the Service's external addresses are the gateway's.
    pub by_service: Vec<(String, String, u32)>,
    /// Gateway addresses that are DNS names (a `meshNetworks` gateway's
    /// `address`, a gateway Service's load balancer `hostname`), which the
    /// daemon resolves (Istio's network gateway DNS resolution).
    pub hostnames: std::collections::BTreeSet<String>,
    /// What the daemon resolved them to: IPs by name, set before the
    /// snapshot is built (a name not there yet has no gateway; one that
    /// resolved to nothing is reported).
    pub resolved: Arc<BTreeMap<String, Vec<String>>>,
}

/// A network's gateway (Istio's `NetworkGateway`): where proxies of other
/// networks send that network's endpoints' traffic, Istio mTLS with
/// Istio's SNI, passed through by the gateway's `AUTO_PASSTHROUGH`
/// server.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NetworkGateway {
    /// The gateway's IP.
    pub address: String,
    /// Its port (15443 on Istio's east-west gateways).
    pub port: u32,
}

impl Networks {
    /// Whether the mesh has several networks with gateways between them
    /// (Istio's `IsMultiNetworkEnabled`): only then does a proxy's network
    /// change what it gets.
    pub fn enabled(&self) -> bool {
        !self.gateways.is_empty()
    }

    /// The network of `ep`: its own (its workload's [`NETWORK_LABEL`], a
    /// WorkloadEntry's `network`), else the default, else the
    /// `fromCidr` range holding its address; `""` when none (then every
    /// proxy reaches it directly), as Istio's `Network(endpointIP, labels)`.
    pub fn of<'a>(&'a self, ep: &'a Endpoint) -> &'a str {
        if !ep.network.is_empty() {
            return &ep.network;
        }
        if let Some(label) = ep.labels.get(NETWORK_LABEL).filter(|n| !n.is_empty()) {
            return label;
        }
        if !self.default.is_empty() || self.ranges.is_empty() {
            return &self.default;
        }
        let Ok(ip) = ep.address.parse::<std::net::IpAddr>() else {
            return "";
        };
        self.ranges
            .iter()
            .find(|(range, _)| crds::mesh::cidr_contains(*range, ip))
            .map_or("", |(_, net)| net.as_str())
    }

    /// The IPs of a gateway address: itself when it is an IP, else what
    /// the daemon resolved the name to (none yet: empty), the name noted
    /// in [`Networks::hostnames`] for the daemon to resolve.
    fn addresses_of(&mut self, address: &str) -> Vec<String> {
        if address.parse::<std::net::IpAddr>().is_ok() {
            return vec![address.to_owned()];
        }
        self.hostnames.insert(address.to_owned());
        self.resolved.get(address).cloned().unwrap_or_default()
    }

    /// What Split Horizon EDS reads of `proxy`: its network and
    /// `REQUESTED_NETWORK_VIEW` in a mesh with gateways, else nothing (a
    /// proxy without a network, or any proxy of a one-network mesh, gets
    /// every endpoint directly, so such proxies share their config).
    pub fn split_view<'a>(&self, proxy: &'a Proxy) -> (&'a str, &'a [String]) {
        if !self.enabled() || proxy.network.is_empty() {
            return ("", &[]);
        }
        (&proxy.network, &proxy.network_view)
    }

    /// The most gateways any one network has (Istio scales every
    /// endpoint's weight by it, so that one endpoint's weight can be
    /// spread over its network's gateways).
    pub fn max_gateways(&self) -> u32 {
        self.gateways
            .values()
            .map(|g| u32::try_from(g.len()).unwrap_or(u32::MAX))
            .max()
            .unwrap_or(1)
            .max(1)
    }
}

/// A tracing provider (mesh config `extensionProviders[].zipkin` or
/// `.opentelemetry`), with the sampling of `defaultConfig.tracing`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracingProvider {
    /// The collector's service: a hostname, or `namespace/hostname`.
    pub service: String,
    /// The collector's service port.
    pub port: u32,
    /// How spans reach the collector.
    pub exporter: SpanExporter,
    /// The longest `http.url` tag, in bytes; `None`: Envoy's 256.
    pub max_path_tag_length: Option<u32>,
    /// The share of requests traced, percent.
    pub sampling: Percentage,
}

/// An OpenTelemetry resource detector (Envoy's
/// `envoy.tracers.opentelemetry.resource_detectors.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceDetector {
    /// `OTEL_RESOURCE_ATTRIBUTES` of the proxy's environment.
    Environment,
    /// Dynatrace's enrichment files.
    Dynatrace,
}

/// Envoy's Dynatrace sampler (`DynatraceSamplerConfig`): the tenant and
/// cluster, and where its sampling configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DynatraceSampler {
    /// The Dynatrace tenant.
    pub tenant: String,
    /// The Dynatrace cluster's ID.
    pub cluster_id: i32,
    /// Root spans per minute without a figure from the API (0: 1000).
    pub root_spans_per_minute: u32,
    /// The API's service (hostname or `namespace/hostname`) and port;
    /// `None`: the provider's collector.
    pub api: Option<(String, u32)>,
    /// The path of the sampling configuration on that service.
    pub path: String,
    /// How long a fetch may take; `None`: [`OTLP_HTTP_TIMEOUT`].
    pub timeout: Option<std::time::Duration>,
    /// Headers sent with each fetch.
    pub headers: Vec<(String, String)>,
}

impl TracingProvider {
    /// Whether a sampler of the provider's own decides, Istio's random
    /// sampling then at 100 % (Istio's `useCustomSampler`).
    pub fn custom_sampler(&self) -> bool {
        matches!(
            self.exporter,
            SpanExporter::OpenTelemetry {
                sampler: Some(_),
                ..
            }
        )
    }
}

/// How a tracing provider's spans reach its collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanExporter {
    /// Zipkin v2 JSON posted to `path` (`/api/v2/spans`), with 128-bit
    /// trace IDs (Istio's default) unless `trace_id_128bit` is false.
    Zipkin {
        /// The collector's endpoint.
        path: String,
        /// 128-bit trace IDs, else 64-bit.
        trace_id_128bit: bool,
    },
    /// OTLP: over gRPC, or over HTTP (protobuf posted to `path`) when
    /// `http`.
    OpenTelemetry {
        /// OTLP/HTTP: (path, e.g. `/v1/traces`).
        http_path: Option<String>,
        /// How long one export may take; `None`: Envoy's default for gRPC,
        /// [`OTLP_HTTP_TIMEOUT`] for HTTP (Envoy requires one there).
        timeout: Option<std::time::Duration>,
        /// Headers (HTTP) or initial metadata (gRPC) sent with each export.
        headers: Vec<(String, String)>,
        /// `resourceDetectors`, in Istio's order.
        resource_detectors: Vec<ResourceDetector>,
        /// `dynatraceSampler`: it decides, every request reaching it
        /// (random sampling 100 %, as Istio's `useCustomSampler`).
        sampler: Option<DynatraceSampler>,
    },
    /// Datadog traces to the agent (Envoy's `envoy.tracers.datadog`).
    Datadog,
    /// SkyWalking segments over gRPC to the OAP server (Envoy's
    /// `envoy.tracers.skywalking`), with its access token if any.
    SkyWalking {
        /// The OAP server's token (`backend_token`).
        access_token: Option<String>,
    },
}

/// The OTLP/HTTP export timeout when the provider sets none: Envoy's
/// `HttpUri.timeout` is required, and Istio's examples use 5 s.
pub const OTLP_HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A percentage, 0.0 to 100.0 (compared by its bits, so that settings can
/// be compared whole).
#[derive(Clone, Copy, Debug)]
pub struct Percentage(pub f64);

impl PartialEq for Percentage {
    fn eq(&self, other: &Percentage) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Percentage {}

impl MeshConfig {
    /// Whether any proxy may trace: a default tracing provider, or a zipkin
    /// provider a Telemetry resource can name (routes then get Istio's
    /// decorators, proxies its canonical-service tags).
    pub fn may_trace(&self) -> bool {
        self.tracing.is_some() || !self.tracing_providers.is_empty()
    }

    /// The trust domain and its aliases, in that order, without repeats:
    /// the trust domains a peer's SPIFFE ID may be in. Allocates nothing
    /// (read for every mTLS cluster).
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        let aliases = &self.trust_domain_aliases;
        std::iter::once(self.trust_domain.as_str()).chain(
            aliases
                .iter()
                .enumerate()
                .filter(|(i, a)| **a != self.trust_domain && !aliases[..*i].contains(a))
                .map(|(_, a)| a.as_str()),
        )
    }
}

/// The `exportTo` of objects that set none (mesh config
/// `default*ExportTo`); empty: every namespace (`*`, Istio's default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefaultExportTo {
    /// Kubernetes Services and ServiceEntries.
    pub services: Vec<String>,
    /// VirtualServices.
    pub virtual_services: Vec<String>,
    /// DestinationRules.
    pub destination_rules: Vec<String>,
}

/// A file access log (mesh config `accessLogFile`, `accessLogEncoding`,
/// `accessLogFormat`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLog {
    /// The file every proxy writes to (`/dev/stdout`: its container's log).
    pub path: String,
    /// What each line holds.
    pub format: AccessLogFormat,
    /// Whether the format names `%REQ_WITHOUT_QUERY(...)%`, whose
    /// formatter extension (`envoy.formatter.req_without_query`) is then
    /// configured beside it, as Istio does.
    pub req_without_query: bool,
}

/// An access log as OpenTelemetry log records sent over OTLP/gRPC (mesh
/// config `extensionProviders[].envoyOtelAls`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtelLog {
    /// The collector's service: a hostname, or `namespace/hostname`.
    pub service: String,
    /// The collector's service port.
    pub port: u32,
    /// The log's name (`otel_envoy_accesslog` by default).
    pub log_name: String,
    /// Each record's body: a format string (Istio's text line by default).
    pub body: String,
    /// Each record's attributes: name to format string.
    pub attributes: Vec<(String, String)>,
    /// Whether a format names `%REQ_WITHOUT_QUERY(...)%` (its formatter
    /// extension is then configured beside it).
    pub req_without_query: bool,
}

/// An access log streamed to an Envoy gRPC access log service (mesh
/// config `extensionProviders[].envoyHttpAls` or `.envoyTcpAls`), as
/// Istio's `httpGrpcAccessLogFromTelemetry` / `tcpGrpcAccessLogFromTelemetry`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcLog {
    /// HTTP entries (`envoyHttpAls`), else TCP ones (`envoyTcpAls`).
    pub http: bool,
    /// The service: a hostname, or `namespace/hostname`.
    pub service: String,
    /// The service port.
    pub port: u32,
    /// The log's name (`http_envoy_accesslog` / `tcp_envoy_accesslog` by
    /// default).
    pub log_name: String,
    /// Filter state objects logged (Istio's peer metadata by default).
    pub filter_state_objects: Vec<String>,
    /// Request headers, response headers and response trailers logged
    /// (HTTP only).
    pub headers: [Vec<String>; 3],
}

/// The filter state objects Istio's gRPC access logs carry by default
/// (its metadata exchange's peers; Istio's `envoyWasmStateToLog`).
const ISTIO_PEER_STATE: [&str; 4] = [
    "wasm.upstream_peer",
    "wasm.upstream_peer_id",
    "wasm.downstream_peer",
    "wasm.downstream_peer_id",
];

/// The `envoyHttpAls` and `envoyTcpAls` providers of `providers`; a field
/// that cannot be acted on is reported and ignored.
fn grpc_log_providers(
    providers: &[crds::mesh::ExtensionProvider],
    warn: &mut impl FnMut(String, String),
) -> BTreeMap<String, GrpcLog> {
    let mut out = BTreeMap::new();
    for (i, p) in providers.iter().enumerate() {
        let (kind, http, als) = match (&p.envoy_http_als, &p.envoy_tcp_als) {
            (Some(als), _) => ("envoyHttpAls", true, als),
            (None, Some(als)) => ("envoyTcpAls", false, als),
            (None, None) => continue,
        };
        let at = format!("data.mesh.extensionProviders[{i}].{kind}");
        for field in als.unsupported.keys() {
            warn(format!("{at}.{field}"), "not supported; ignored".into());
        }
        let headers = [
            als.additional_request_headers_to_log.clone(),
            als.additional_response_headers_to_log.clone(),
            als.additional_response_trailers_to_log.clone(),
        ];
        if !http && headers.iter().any(|h| !h.is_empty()) {
            warn(
                at.clone(),
                "TCP access logs carry no headers; the additional headers are ignored".into(),
            );
        }
        let default_name = if http {
            "http_envoy_accesslog"
        } else {
            "tcp_envoy_accesslog"
        };
        out.insert(
            p.name.clone(),
            GrpcLog {
                http,
                service: als.service.clone(),
                port: als.port,
                log_name: als
                    .log_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| default_name.into()),
                filter_state_objects: if als.filter_state_objects_to_log.is_empty() {
                    ISTIO_PEER_STATE.iter().map(|s| (*s).to_owned()).collect()
                } else {
                    als.filter_state_objects_to_log.clone()
                },
                headers: if http { headers } else { Default::default() },
            },
        );
    }
    out
}

/// An access log line: Envoy's command operators (`%RESPONSE_CODE%`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// A text line (ends with a newline).
    Text(String),
    /// A JSON object: field name to format string.
    Json(BTreeMap<String, String>),
}

/// Istio's default text access log line (`EnvoyTextLogFormat`).
pub const ISTIO_TEXT_LOG_FORMAT: &str = concat!(
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" ",
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ",
    "\"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ",
    "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" ",
    "\"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% ",
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% ",
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
);

/// Istio's default JSON access log fields (`EnvoyJSONLogFormatIstio`).
pub const ISTIO_JSON_LOG_FIELDS: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// Istio's default `dnsRefreshRate`.
pub const DEFAULT_DNS_REFRESH_RATE: std::time::Duration = std::time::Duration::from_secs(60);

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            allow_any: true,
            domain: DEFAULT_DOMAIN.to_owned(),
            trust_domain: DEFAULT_DOMAIN.to_owned(),
            auto_mtls: true,
            dns_refresh_rate: DEFAULT_DNS_REFRESH_RATE,
            path_normalization: crds::mesh::PathNormalization::Default,
            access_log: None,
            default_export_to: DefaultExportTo::default(),
            connect_timeout: None,
            tcp_keepalive: None,
            h2_upgrade: false,
            default_retry: None,
            trust_domain_aliases: Vec::new(),
            root_namespace: ROOT_NAMESPACE.to_owned(),
            locality_lb: None,
            ingress: crate::ingress::Settings::default(),
            tracing: None,
            tracing_providers: BTreeMap::new(),
            access_log_providers: builtin_access_log_providers(),
            otel_log_providers: BTreeMap::new(),
            grpc_log_providers: BTreeMap::new(),
            default_access_logging: Vec::new(),
            metrics_providers: [crate::metrics::PROMETHEUS.to_owned()].into(),
            default_metrics: None,
            ext_authz: BTreeMap::new(),
            networks: Networks::default(),
        }
    }
}

/// The access log line for `encoding` and `format` (mesh config
/// `accessLogFormat`; empty: Istio's default), as istiod reads them: a
/// text format gets its newline; a JSON format must be an object of
/// strings. Unlike istiod, the command operators are checked
/// ([`crate::log_format::check`]): a format Envoy would refuse would have
/// every proxy NACK every listener carrying it. Either problem keeps
/// Istio's default for the encoding, and the reason is returned.
fn access_log_format(
    encoding: crds::mesh::AccessLogEncoding,
    format: &str,
) -> (AccessLogFormat, crate::log_format::Uses, Option<String>) {
    use crate::log_format::Uses;
    use crds::mesh::AccessLogEncoding;
    let default = || match encoding {
        AccessLogEncoding::Text => AccessLogFormat::Text(ISTIO_TEXT_LOG_FORMAT.to_owned()),
        AccessLogEncoding::Json => AccessLogFormat::Json(
            ISTIO_JSON_LOG_FIELDS
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
    };
    let istio_default = match encoding {
        AccessLogEncoding::Text => "Istio's default format is used",
        AccessLogEncoding::Json => "Istio's default fields are used",
    };
    let given = match encoding {
        _ if format.is_empty() => return (default(), Uses::default(), None),
        AccessLogEncoding::Text if format.ends_with('\n') => {
            AccessLogFormat::Text(format.to_owned())
        }
        AccessLogEncoding::Text => AccessLogFormat::Text(format!("{format}\n")),
        AccessLogEncoding::Json => match serde_json::from_str::<BTreeMap<String, String>>(format) {
            Ok(fields) if !fields.is_empty() => AccessLogFormat::Json(fields),
            Ok(_) => {
                return (
                    default(),
                    Uses::default(),
                    Some(format!("an empty JSON object; {istio_default}")),
                );
            }
            Err(e) => {
                return (
                    default(),
                    Uses::default(),
                    Some(format!(
                        "not a JSON object of strings ({e}); {istio_default}"
                    )),
                );
            }
        },
    };
    let checked = match &given {
        AccessLogFormat::Text(text) => crate::log_format::check(text),
        AccessLogFormat::Json(fields) => fields.iter().try_fold(Uses::default(), |uses, (k, v)| {
            let more = crate::log_format::check(v).map_err(|e| format!("field `{k}`: {e}"))?;
            Ok(Uses {
                req_without_query: uses.req_without_query || more.req_without_query,
            })
        }),
    };
    match checked {
        Ok(uses) => (given, uses, None),
        Err(e) => (
            default(),
            Uses::default(),
            Some(format!("{e}; {istio_default}")),
        ),
    }
}

/// Istio's built-in access log provider `envoy`: its default text line to
/// the proxy's standard output.
fn builtin_access_log_providers() -> BTreeMap<String, AccessLog> {
    BTreeMap::from([(
        "envoy".to_owned(),
        AccessLog {
            path: "/dev/stdout".into(),
            format: AccessLogFormat::Text(ISTIO_TEXT_LOG_FORMAT.to_owned()),
            req_without_query: false,
        },
    )])
}

/// The `envoyFileAccessLog` providers of `providers` over the built-in
/// ones; a format Envoy would refuse is reported and Istio's default used.
fn access_log_providers(
    providers: &[crds::mesh::ExtensionProvider],
    warn: &mut impl FnMut(String, String),
) -> BTreeMap<String, AccessLog> {
    use crds::mesh::AccessLogEncoding;
    let mut out = builtin_access_log_providers();
    for (i, p) in providers.iter().enumerate() {
        let Some(file) = &p.envoy_file_access_log else {
            continue;
        };
        let at = format!("data.mesh.extensionProviders[{i}].envoyFileAccessLog");
        let format = file.log_format.as_ref();
        let (encoding, text) = match (format.and_then(|f| f.labels.as_ref()), format) {
            (Some(labels), _) => {
                let strings: BTreeMap<&String, &str> = labels
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k, v)))
                    .collect();
                if strings.len() != labels.len() {
                    warn(
                        format!("{at}.logFormat.labels"),
                        "only string values are supported; the others are left out".into(),
                    );
                }
                let json = if strings.is_empty() {
                    String::new()
                } else {
                    serde_json::to_string(&strings).unwrap_or_default()
                };
                (AccessLogEncoding::Json, json)
            }
            (None, f) => (
                AccessLogEncoding::Text,
                f.and_then(|f| f.text.clone()).unwrap_or_default(),
            ),
        };
        let (format, uses, problem) = access_log_format(encoding, &text);
        if let Some(reason) = problem {
            warn(format!("{at}.logFormat"), reason);
        }
        out.insert(
            p.name.clone(),
            AccessLog {
                path: if file.path.is_empty() {
                    "/dev/stdout".into()
                } else {
                    file.path.clone()
                },
                format,
                req_without_query: uses.req_without_query,
            },
        );
    }
    out
}

/// The `envoyOtelAls` providers of `providers`, as Istio's
/// `openTelemetryLog` reads them: the log name (`otel_envoy_accesslog`
/// by default), the body (Istio's text line by default) and attributes
/// (`logFormat.labels`); a format Envoy would refuse is reported (the
/// body then Istio's line, the attribute left out).
fn otel_log_providers(
    providers: &[crds::mesh::ExtensionProvider],
    warn: &mut impl FnMut(String, String),
) -> BTreeMap<String, OtelLog> {
    let mut out = BTreeMap::new();
    for (i, p) in providers.iter().enumerate() {
        let Some(als) = &p.envoy_otel_als else {
            continue;
        };
        let at = format!("data.mesh.extensionProviders[{i}].envoyOtelAls");
        for field in als.unsupported.keys() {
            warn(format!("{at}.{field}"), "not supported yet; ignored".into());
        }
        let mut req_without_query = false;
        let text = als
            .log_format
            .as_ref()
            .and_then(|f| f.text.clone())
            .filter(|t| !t.is_empty());
        let body = match text.map(|t| (crate::log_format::check(&t), t)) {
            Some((Ok(uses), t)) => {
                req_without_query |= uses.req_without_query;
                t
            }
            Some((Err(e), _)) => {
                warn(
                    format!("{at}.logFormat.text"),
                    format!("{e}; Istio's default format is used"),
                );
                ISTIO_TEXT_LOG_FORMAT.to_owned()
            }
            None => ISTIO_TEXT_LOG_FORMAT.to_owned(),
        };
        let mut attributes = Vec::new();
        for (name, value) in als
            .log_format
            .iter()
            .flat_map(|f| f.labels.iter().flatten())
        {
            let field = format!("{at}.logFormat.labels.{name}");
            let Some(value) = value.as_str() else {
                warn(field, "only string values are supported; left out".into());
                continue;
            };
            match crate::log_format::check(value) {
                Ok(uses) => {
                    req_without_query |= uses.req_without_query;
                    attributes.push((name.clone(), value.to_owned()));
                }
                Err(e) => warn(field, format!("{e}; left out")),
            }
        }
        out.insert(
            p.name.clone(),
            OtelLog {
                service: als.service.clone(),
                port: als.port,
                log_name: als
                    .log_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "otel_envoy_accesslog".into()),
                body,
                attributes,
                req_without_query,
            },
        );
    }
    out
}

/// The headers of a provider (name, value), a value from `envName` read
/// from this process's environment as istiod reads its own (unset: empty).
fn header_values(headers: &[crds::mesh::ProviderHeader]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|h| !h.name.is_empty())
        .map(|h| {
            let value = match &h.env_name {
                Some(var) => std::env::var(var).unwrap_or_default(),
                None => h.value.clone(),
            };
            (h.name.clone(), value)
        })
        .collect()
}

/// A `dynatraceSampler` as Istio's `configureDynatraceSampler` reads it:
/// its own API service, else the provider's OTLP/HTTP export (its
/// timeout and headers) at `api/v2/samplingConfiguration`; `None` when it
/// has neither (reported by [`tracing_provider`]).
fn dynatrace_sampler(
    sampler: &crds::mesh::DynatraceSampler,
    export: Option<&crds::mesh::OtlpHttp>,
) -> Option<DynatraceSampler> {
    let (api, http) = match &sampler.http_service {
        Some(api) => (Some((api.service.clone(), api.port)), api.http.as_ref()),
        None => (None, Some(export?)),
    };
    Some(DynatraceSampler {
        tenant: sampler.tenant.clone(),
        cluster_id: sampler.cluster_id,
        root_spans_per_minute: sampler.root_spans_per_minute,
        api,
        path: match &sampler.http_service {
            Some(_) => http.and_then(|h| h.path.clone()).unwrap_or_default(),
            None => "api/v2/samplingConfiguration".into(),
        },
        timeout: http.and_then(|h| h.timeout).map(|t| t.as_std()),
        headers: http.map(|h| header_values(&h.headers)).unwrap_or_default(),
    })
}

/// Istio's default sampling (`PILOT_TRACE_SAMPLING`), percent.
const DEFAULT_TRACE_SAMPLING: f64 = 1.0;

/// The tracing provider the mesh config names (`defaultProviders.tracing`,
/// the first name, as Istio), and every zipkin provider by name, with
/// `defaultConfig.tracing`'s sampling and path tag length; what cannot be
/// acted on is passed to `warn` as (field, reason).
fn tracing_provider(
    providers: &[crds::mesh::ExtensionProvider],
    defaults: Option<&crds::mesh::DefaultProviders>,
    proxy_tracing: Option<&crds::mesh::ProxyTracing>,
    warn: &mut impl FnMut(String, String),
) -> (Option<TracingProvider>, BTreeMap<String, TracingProvider>) {
    for (i, p) in providers.iter().enumerate() {
        for kind in p.unsupported.keys() {
            warn(
                format!("data.mesh.extensionProviders[{i}].{kind}"),
                "not supported yet; ignored".into(),
            );
        }
        let nested = p
            .zipkin
            .iter()
            .flat_map(|z| z.unsupported.keys().map(|f| ("zipkin", f)))
            .chain(
                p.datadog
                    .iter()
                    .flat_map(|d| d.unsupported.keys().map(|f| ("datadog", f))),
            )
            .chain(
                p.skywalking
                    .iter()
                    .flat_map(|d| d.unsupported.keys().map(|f| ("skywalking", f))),
            );
        for (kind, field) in nested {
            warn(
                format!("data.mesh.extensionProviders[{i}].{kind}.{field}"),
                "not supported yet; ignored".into(),
            );
        }
        if let Some(otel) = &p.opentelemetry {
            let at = format!("data.mesh.extensionProviders[{i}].opentelemetry");
            let nested = [
                ("http", otel.http.as_ref().map(|h| &h.unsupported)),
                ("grpc", otel.grpc.as_ref().map(|g| &g.unsupported)),
            ];
            let headers = otel
                .http
                .iter()
                .flat_map(|h| {
                    h.headers
                        .iter()
                        .enumerate()
                        .map(|(j, h)| (format!("http.headers[{j}]"), h))
                })
                .chain(otel.grpc.iter().flat_map(|g| {
                    g.initial_metadata
                        .iter()
                        .enumerate()
                        .map(|(j, h)| (format!("grpc.initialMetadata[{j}]"), h))
                }));
            if let Some(sampler) = &otel.dynatrace_sampler
                && sampler.http_service.is_none()
                && otel.http.is_none()
            {
                warn(
                    format!("{at}.dynatraceSampler"),
                    "without its own httpService the sampler reuses the provider's http export, and there is none; sampler ignored".into(),
                );
            }
            let fields = otel
                .unsupported
                .keys()
                .cloned()
                .chain(
                    otel.resource_detectors
                        .iter()
                        .flat_map(|d| d.unsupported.keys())
                        .map(|k| format!("resourceDetectors.{k}")),
                )
                .chain(
                    otel.dynatrace_sampler
                        .iter()
                        .flat_map(|d| d.unsupported.keys())
                        .map(|k| format!("dynatraceSampler.{k}")),
                )
                .chain(nested.into_iter().flat_map(|(name, rest)| {
                    rest.into_iter()
                        .flat_map(|r| r.keys())
                        .map(move |k| format!("{name}.{k}"))
                }))
                .chain(
                    headers
                        .flat_map(|(at, h)| h.unsupported.keys().map(move |k| format!("{at}.{k}"))),
                )
                .collect::<Vec<_>>();
            for field in fields {
                warn(format!("{at}.{field}"), "not supported yet; ignored".into());
            }
        }
    }
    for field in defaults.iter().flat_map(|d| d.unsupported.keys()) {
        warn(
            format!("data.mesh.defaultProviders.{field}"),
            "not supported yet; ignored".into(),
        );
    }
    for field in proxy_tracing.iter().flat_map(|t| t.unsupported.keys()) {
        warn(
            format!("data.mesh.defaultConfig.tracing.{field}"),
            "not written (Istio's bootstrap tracers before 1.22); name a zipkin extension provider in defaultProviders.tracing".into(),
        );
    }
    // As Istio's `proxyConfigSamplingValue`: 0 keeps the default, over
    // 100 is 1.
    let sampling = match proxy_tracing.and_then(|t| t.sampling) {
        Some(s) if s > 100.0 => 1.0,
        Some(s) if s > 0.0 => s,
        _ => DEFAULT_TRACE_SAMPLING,
    };
    let tag_length = |own: Option<u32>| {
        own.filter(|l| *l > 0)
            .or(proxy_tracing.and_then(|t| t.max_path_tag_length))
    };
    let tracers: BTreeMap<String, TracingProvider> = providers
        .iter()
        .filter_map(|p| {
            let provider = if let Some(zipkin) = &p.zipkin {
                TracingProvider {
                    service: zipkin.service.clone(),
                    port: zipkin.port,
                    exporter: SpanExporter::Zipkin {
                        path: zipkin
                            .path
                            .clone()
                            .filter(|p| !p.is_empty())
                            .unwrap_or_else(|| "/api/v2/spans".into()),
                        trace_id_128bit: zipkin.enable_64bit_trace_id != Some(true),
                    },
                    max_path_tag_length: tag_length(zipkin.max_tag_length),
                    sampling: Percentage(sampling),
                }
            } else if let Some(datadog) = &p.datadog {
                TracingProvider {
                    service: datadog.service.clone(),
                    port: datadog.port,
                    exporter: SpanExporter::Datadog,
                    max_path_tag_length: tag_length(datadog.max_tag_length),
                    sampling: Percentage(sampling),
                }
            } else if let Some(sw) = &p.skywalking {
                // Istio writes no tag length for SkyWalking.
                TracingProvider {
                    service: sw.service.clone(),
                    port: sw.port,
                    exporter: SpanExporter::SkyWalking {
                        access_token: sw.access_token.clone().filter(|t| !t.is_empty()),
                    },
                    max_path_tag_length: None,
                    sampling: Percentage(sampling),
                }
            } else {
                let otel = p.opentelemetry.as_ref()?;
                let headers = match (&otel.http, &otel.grpc) {
                    (Some(http), _) => &http.headers,
                    (None, Some(grpc)) => &grpc.initial_metadata,
                    (None, None) => &Vec::new(),
                };
                let detectors = otel.resource_detectors.as_ref();
                let resource_detectors = [
                    (
                        ResourceDetector::Environment,
                        detectors.is_some_and(|d| d.environment.is_some()),
                    ),
                    (
                        ResourceDetector::Dynatrace,
                        detectors.is_some_and(|d| d.dynatrace.is_some()),
                    ),
                ]
                .into_iter()
                .filter_map(|(d, on)| on.then_some(d))
                .collect();
                TracingProvider {
                    service: otel.service.clone(),
                    port: otel.port,
                    exporter: SpanExporter::OpenTelemetry {
                        http_path: otel
                            .http
                            .as_ref()
                            .map(|h| h.path.clone().unwrap_or_default()),
                        timeout: match &otel.http {
                            Some(http) => http.timeout,
                            None => otel.grpc.as_ref().and_then(|g| g.timeout),
                        }
                        .map(|t| t.as_std()),
                        headers: header_values(headers),
                        resource_detectors,
                        sampler: otel
                            .dynatrace_sampler
                            .as_ref()
                            .and_then(|s| dynatrace_sampler(s, otel.http.as_ref())),
                    },
                    max_path_tag_length: tag_length(otel.max_tag_length),
                    sampling: Percentage(sampling),
                }
            };
            Some((p.name.clone(), provider))
        })
        .collect();
    let default = defaults.and_then(|d| d.tracing.first()).and_then(|name| {
        let found = tracers.get(name).cloned();
        if found.is_none() {
            let reason = if providers.iter().any(|p| &p.name == name) {
                format!(
                    "{name:?} is not a zipkin, opentelemetry, datadog or skywalking provider, the kinds supported yet; no tracing"
                )
            } else {
                format!("no extension provider is named {name:?}; no tracing")
            };
            warn("data.mesh.defaultProviders.tracing".into(), reason);
        }
        found
    });
    (default, tracers)
}

/// A WorkloadGroup as auto-registration reads it: its spec, and its UID
/// when the API server gave one (the entries' owner reference needs it).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadGroupTemplate {
    /// `metadata.uid`, if any.
    pub uid: Option<String>,
    /// The group's spec.
    pub group: crds::WorkloadGroupSpec,
}

/// An immutable view of the whole mesh, shared by every push.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Monotonic version, bumped per change.
    pub version: u64,
    /// Services by hostname.
    pub services: BTreeMap<String, Arc<Service>>,
    /// VirtualServices, in a stable order (namespace, name).
    pub virtual_services: Vec<Config<VirtualServiceSpec>>,
    /// DestinationRules, in a stable order.
    pub destination_rules: Vec<Config<DestinationRuleSpec>>,
    /// Gateways, in a stable order.
    pub gateways: Vec<Config<GatewaySpec>>,
    /// Sidecar resources, in a stable order.
    pub sidecars: Vec<Config<crds::SidecarSpec>>,
    /// PeerAuthentications, in a stable order.
    pub peer_authentications: Vec<Config<crds::PeerAuthenticationSpec>>,
    /// AuthorizationPolicies, in a stable order.
    pub authorization_policies: Vec<Config<crate::authz::Policy>>,
    /// RequestAuthentications, in a stable order.
    pub request_authentications: Vec<Config<crds::RequestAuthenticationSpec>>,
    /// Telemetry resources, in a stable order (namespace, name).
    pub telemetries: Vec<Config<crds::TelemetrySpec>>,
    /// EnvoyFilters, by namespace, then priority, then name
    /// ([`crate::envoy_filter`]).
    pub envoy_filters: Vec<Config<crds::EnvoyFilterSpec>>,
    /// Their patches, values read, in the same order.
    pub envoy_patches: Vec<crate::envoy_filter::Compiled>,
    /// WasmPlugins, in a stable order (namespace, name) ([`crate::wasm`]).
    pub wasm_plugins: Vec<Config<crds::WasmPluginSpec>>,
    /// WorkloadGroups, in a stable order: the templates of auto-registered
    /// WorkloadEntries (no config is generated from them).
    pub workload_groups: Vec<Config<WorkloadGroupTemplate>>,
    /// Namespace names known.
    pub namespaces: Vec<String>,
    /// Namespace annotations, by namespace (e.g. OpenShift's uid range,
    /// read by the injector).
    pub namespace_annotations: BTreeMap<String, BTreeMap<String, String>>,
    /// Mesh settings.
    pub mesh: MeshConfig,
    /// Kubernetes Secrets by `namespace/name` (gateway `credentialName`s).
    pub secrets: BTreeMap<String, Arc<TlsSecret>>,
    /// The `ca.crt` (PEM) of the ConfigMaps a DestinationRule's
    /// `credentialName` names as `configmap://<namespace>/<name>` (as a
    /// BackendTLSPolicy's `caCertificateRefs` become), by `namespace/name`.
    pub config_map_cas: BTreeMap<String, String>,
    /// Config that is read but not acted on, by object and field.
    pub warnings: Vec<crate::ConfigWarning>,
    /// When the change this snapshot carries was first seen (set by the
    /// publisher, for convergence metrics; the translator never reads it).
    pub changed_at: Option<std::time::Instant>,
    /// When this snapshot was published.
    pub published_at: Option<std::time::Instant>,
    /// What changed since the previous snapshot (set by the publisher;
    /// `None`: treat as everything).
    pub changes: Option<Arc<crate::changes::ChangeSet>>,
    /// What was generated from Gateway API objects (their Gateways and
    /// VirtualServices are in `gateways` and `virtual_services`).
    pub gateway_api: crate::gateway_api::Generated,
    /// Label keys that can make proxies' configs differ (VirtualService
    /// `sourceLabels`, Gateway `selector`); proxies that agree on these, their
    /// kind, namespace and locality get identical config.
    pub label_keys: std::collections::BTreeSet<String>,
    /// Indexes (positions in `destination_rules` / `virtual_services`) by
    /// resolved host, so a lookup per service is not a scan of every rule.
    dr_by_host: HashMap<String, Vec<usize>>,
    vs_by_host: HashMap<String, Vec<usize>>,
    /// VirtualServices with a wildcard host (checked for every hostname).
    vs_wildcard: Vec<usize>,
    /// DestinationRules with a wildcard host: the host after its `*`, and
    /// the rule's position (checked for a hostname without its own rule).
    dr_wildcard: Vec<(String, usize)>,
    /// How many DestinationRules have a `workloadSelector`.
    selecting_rules: usize,
    /// Label keys some `localityLbSetting.failoverPriority` (a
    /// DestinationRule's or the mesh's) compares between a client proxy
    /// and the endpoints; empty in most meshes.
    pub(crate) failover_keys: std::collections::BTreeSet<String>,
    /// Whether some DestinationRule has a `tunnel` (its top level's or a
    /// subset's): TCP proxies look their destination's rule up only then.
    pub(crate) tunnels: bool,
    /// The ports each workload address serves, from the services whose
    /// endpoints it is (see [`Snapshot::inbound_ports`]).
    inbound: HashMap<String, Vec<InboundPort>>,
    /// The services each workload address is an endpoint of, with the
    /// target port of each service port: (port, hostname), sorted (see
    /// [`Snapshot::inbound_services`]).
    inbound_services: HashMap<String, Vec<(u32, String)>>,
    /// Each service's encoded clusters and load assignments, built for the
    /// first proxy that needs them ([`crate::generate_encoded`]). Empty in
    /// a clone.
    pub(crate) cluster_memo: crate::encoded::ClusterMemo,
    /// Each service's encoded default route (a virtual host's `routes`
    /// field, for a service without a VirtualService) by port.
    pub(crate) route_memo: crate::encoded::Memo<u32, Vec<u8>>,
    /// What each Kubernetes service was built from, by the address of its
    /// `Arc<Service>` here (see [`Snapshot::rebuild`]). Empty when built
    /// from borrowed objects ([`Snapshot::build`]).
    built_from: HashMap<usize, Inputs>,
}

/// The objects a Kubernetes service was built from, in order: its
/// `Service`, its `EndpointSlice`s, then the Pod each of their endpoints
/// resolved to (`None`: no Pod; with the same slices, the same number of
/// endpoints). Held, so that no other object can take one of their
/// addresses while they are listed.
type Inputs = Box<[Option<Arc<Object>>]>;

/// An object as [`Snapshot::build_from`] reads it: borrowed, and shared
/// when the caller has it in an `Arc` (then its identity is known).
type Read<'a, T> = (&'a T, Option<&'a Arc<Object>>);

/// A port a workload serves: the target port of a service port whose
/// endpoint the workload is. Its sidecar's `virtualInbound` gets a filter
/// chain for it (Istio's inbound listener per service target port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InboundPort {
    /// Target (container) port.
    pub port: u32,
    /// Protocol of the service port (first service wins on a conflict).
    pub protocol: Protocol,
}

/// A TLS Secret's material (`kubernetes.io/tls` keys `tls.crt`, `tls.key`,
/// optional `ca.crt`; Istio's generic `cert`, `key`, `cacert` too), PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSecret {
    /// Certificate chain, PEM.
    pub cert: Option<Vec<u8>>,
    /// Private key, PEM.
    pub key: Option<Vec<u8>>,
    /// CA bundle for client verification, PEM.
    pub ca: Option<Vec<u8>>,
    /// Certificate revocation list of that CA (`ca.crl`), PEM.
    pub crl: Option<Vec<u8>>,
    /// A registry login (`.dockerconfigjson`, a `kubernetes.io/dockerconfigjson`
    /// Secret's): a WasmPlugin's `imagePullSecret`.
    pub docker_config: Option<Vec<u8>>,
}

impl TlsSecret {
    /// What this Secret trusts for verifying peers: its `ca.crt`, or, with
    /// `cert_as_ca` (a `<name>-cacert` or `caCertCredentialName` Secret),
    /// else its `tls.crt`; with its `ca.crl`. `None` without a CA.
    pub fn trust(&self, cert_as_ca: bool) -> Option<(&[u8], Option<&[u8]>)> {
        let ca = self
            .ca
            .as_deref()
            .or(self.cert.as_deref().filter(|_| cert_as_ca))?;
        Some((ca, self.crl.as_deref()))
    }
}

impl Snapshot {
    /// Builds a snapshot from parsed objects. Objects without a namespace
    /// are put in `default`, as `kubectl apply` does.
    pub fn build<'a>(
        version: u64,
        objects: impl IntoIterator<Item = &'a Object>,
        mesh: MeshConfig,
    ) -> Snapshot {
        Snapshot::build_from(version, objects.into_iter().map(|o| (o, None)), mesh, None)
    }

    /// As [`Snapshot::build`], from shared objects, taking `previous`'s
    /// service (the same `Arc`) for every Kubernetes service whose inputs
    /// are the very objects (`Arc::ptr_eq`) `previous` built it from: its
    /// `Service`, its `EndpointSlice`s, and the Pod each endpoint resolves
    /// to. The sources share unchanged objects from one load to the next,
    /// so an endpoint change builds one service again rather than all of
    /// them, and [`crate::changes::ChangeSet::between`] tells the others
    /// unchanged by address (at 1000 services with one file changed, 1.5
    /// ms against 4.7 ms from scratch: docs/PERFORMANCE.md, step 46).
    pub fn rebuild<'a>(
        version: u64,
        objects: impl IntoIterator<Item = &'a Arc<Object>>,
        mesh: MeshConfig,
        previous: &Snapshot,
    ) -> Snapshot {
        Snapshot::build_from(
            version,
            objects.into_iter().map(|o| (&**o, Some(o))),
            mesh,
            Some(previous),
        )
    }

    /// Takes the mesh ConfigMap's `meshNetworks` into `self.mesh.networks`
    /// (Istio's `reloadMeshNetworks`): the `fromCidr` ranges, the network
    /// whose endpoints are `fromRegistry: Kubernetes` (the first, as
    /// istiod) and its `registryServiceName` gateways, and every network's
    /// `address` gateways (an IP; a DNS name is reported and left out).
    /// A value that does not parse is reported, and no network is read.
    fn read_mesh_networks(&mut self, cm: &k8s_openapi::api::core::v1::ConfigMap) {
        let (ns, name) = crds::mesh::MESH_CONFIGMAP;
        let mut warnings = Vec::new();
        let mut warn = |field: String, reason: String| {
            warnings.push(crate::ConfigWarning::new(
                "ConfigMap",
                format!("{ns}/{name}"),
                field,
                reason,
            ));
        };
        let networks = match crds::mesh::parse_networks(cm) {
            Ok(networks) => networks,
            Err(crds::ParseError::InvalidField { field, reason, .. }) => {
                warn(field, format!("{reason}; no network is read"));
                crds::mesh::MeshNetworks::default()
            }
            Err(e) => {
                warn(
                    "data.meshNetworks".into(),
                    format!("{e}; no network is read"),
                );
                crds::mesh::MeshNetworks::default()
            }
        };
        let n = &mut self.mesh.networks;
        for (net, spec) in &networks.networks {
            let at = format!("data.meshNetworks.networks.{net}");
            let mut this_registry = false;
            for (i, e) in spec.endpoints.iter().enumerate() {
                if let Some(range) = e.from_cidr.as_deref().and_then(crds::mesh::parse_cidr) {
                    n.ranges.push((range, net.clone()));
                }
                match e.from_registry.as_deref() {
                    Some(CLUSTER_ID) => this_registry = true,
                    Some(other) => warn(
                        format!("{at}.endpoints[{i}].fromRegistry"),
                        format!(
                            "{other:?} is not the registry this control plane reads ({CLUSTER_ID}); left out"
                        ),
                    ),
                    None => {}
                }
            }
            if this_registry {
                if n.default.is_empty() {
                    n.default.clone_from(net);
                } else {
                    warn(
                        format!("{at}.endpoints"),
                        format!(
                            "{CLUSTER_ID} is already the registry of network {:?}; left out",
                            n.default
                        ),
                    );
                }
            }
            for (i, g) in spec.gateways.iter().enumerate() {
                match (&g.address, &g.registry_service_name) {
                    (Some(a), _) => {
                        let found = n.addresses_of(a);
                        if found.is_empty() && n.resolved.contains_key(a) {
                            warn(
                                format!("{at}.gateways[{i}].address"),
                                format!("{a:?} resolves to no address; left out"),
                            );
                        }
                        n.gateways
                            .entry(net.clone())
                            .or_default()
                            .extend(found.into_iter().map(|address| NetworkGateway {
                                address,
                                port: g.port,
                            }));
                    }
                    (None, Some(svc)) if this_registry => {
                        n.by_service.push((svc.clone(), net.clone(), g.port));
                    }
                    (None, Some(_)) => warn(
                        format!("{at}.gateways[{i}].registryServiceName"),
                        format!(
                            "the network's endpoints are not fromRegistry {CLUSTER_ID} (as istiod, the gateway Service is looked for only then); left out"
                        ),
                    ),
                    (None, None) => {}
                }
            }
        }
        self.warnings.extend(warnings);
    }

    /// Completes `self.mesh.networks` from the objects (Istio's network
    /// manager): the system namespace's [`NETWORK_LABEL`] is the default
    /// network; a Service labelled with a network (port: its
    /// [`NETWORK_GATEWAY_PORT_LABEL`], else 15443, which it must have) or
    /// named by a `registryServiceName` gateway is that network's gateway
    /// at each of its external IPs (`spec.externalIPs`,
    /// `status.loadBalancer.ingress[].ip`). Gateways end sorted and unique.
    fn read_network_gateways(
        &mut self,
        services: &[(&str, &str, Read<'_, k8s_openapi::api::core::v1::Service>)],
        system_network: Option<&String>,
        nodes: &[&crds::document::NodeInfo],
        kube_gateways: &[&crds::gateway_api::KubeGateway],
    ) {
        let n = &mut self.mesh.networks;
        if let Some(net) = system_network.filter(|l| !l.is_empty()) {
            n.default.clone_from(net);
        }
        // Gateway API Gateways labelled with a network (Istio's
        // `handleGatewayResource`): each of their `IPAddress` or `Hostname`
        // addresses (resolved), on each auto-passthrough listener's port.
        for gw in kube_gateways {
            let labels = gw.metadata.labels.as_ref();
            let Some(net) = labels
                .and_then(|l| l.get(NETWORK_LABEL))
                .filter(|l| !l.is_empty())
            else {
                continue;
            };
            let ports: Vec<u32> = gw
                .spec
                .listeners
                .iter()
                .filter(|l| crate::gateway_api::is_auto_passthrough(labels, l))
                .map(|l| l.port)
                .collect();
            for a in &gw.spec.addresses {
                // The API server defaults `type` to `IPAddress`.
                if !matches!(a.type_.as_deref(), None | Some("IPAddress" | "Hostname")) {
                    continue;
                }
                for address in n.addresses_of(&a.value) {
                    n.gateways
                        .entry(net.clone())
                        .or_default()
                        .extend(ports.iter().map(|&port| NetworkGateway {
                            address: address.clone(),
                            port,
                        }));
                }
            }
        }
        for (ns, name, (svc, _)) in services {
            let labels = svc.metadata.labels.as_ref();
            let hostname = || format!("{name}.{ns}.svc.{}", self.mesh.domain);
            let mut found: Vec<(String, u32)> = Vec::new();
            if let Some(net) = labels
                .and_then(|l| l.get(NETWORK_LABEL))
                .filter(|l| !l.is_empty())
            {
                let port = match labels.and_then(|l| l.get(NETWORK_GATEWAY_PORT_LABEL)) {
                    None => DEFAULT_NETWORK_GATEWAY_PORT,
                    Some(p) => p.parse::<u32>().unwrap_or_else(|_| {
                        self.warnings.push(crate::ConfigWarning::new(
                            "Service",
                            format!("{ns}/{name}"),
                            format!("metadata.labels[{NETWORK_GATEWAY_PORT_LABEL}]"),
                            format!("{p:?} is not a port; {DEFAULT_NETWORK_GATEWAY_PORT} is used, as istiod does"),
                        ));
                        DEFAULT_NETWORK_GATEWAY_PORT
                    }),
                };
                let serves = svc
                    .spec
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .any(|p| u32::try_from(p.port).ok() == Some(port));
                if serves {
                    found.push((net.clone(), port));
                } else {
                    self.warnings.push(crate::ConfigWarning::new(
                        "Service",
                        format!("{ns}/{name}"),
                        format!("metadata.labels[{NETWORK_LABEL}]"),
                        format!("a network gateway without port {port}; left out"),
                    ));
                }
            } else if !n.by_service.is_empty() {
                let host = hostname();
                found.extend(
                    n.by_service
                        .iter()
                        .filter(|(h, _, _)| *h == host)
                        .map(|(_, net, port)| (net.clone(), *port)),
                );
            }
            if found.is_empty() {
                continue;
            }
            let external = svc
                .spec
                .iter()
                .flat_map(|s| s.external_ips.iter().flatten());
            // A load balancer's IP, or its hostname (AWS's), resolved.
            let balanced = load_balancer_addresses(svc);
            let mut addresses: Vec<String> = external
                .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                .cloned()
                .collect();
            for a in balanced {
                addresses.extend(n.addresses_of(a));
            }
            // A NodePort Service with Istio's `traffic.istio.io/nodeSelector`
            // annotation (a JSON label map; `{}`: every node): the selected
            // nodes' external IPs, on the gateway port's node port.
            let node_selector = svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(NODE_SELECTOR_ANNOTATION))
                .filter(|_| svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort"));
            let selected: Option<BTreeMap<String, String>> = match node_selector {
                None => None,
                Some(text) => match serde_json::from_str(text) {
                    Ok(selector) => Some(selector),
                    Err(e) => {
                        self.warnings.push(crate::ConfigWarning::new(
                            "Service",
                            format!("{ns}/{name}"),
                            format!("metadata.annotations[{NODE_SELECTOR_ANNOTATION}]"),
                            format!("not a JSON label map ({e}); the node port is not used"),
                        ));
                        None
                    }
                },
            };
            let node_ips: Vec<String> = selected.as_ref().map_or_else(Vec::new, |selector| {
                nodes
                    .iter()
                    .filter(|node| {
                        let labels = node.metadata.labels.as_ref();
                        selector
                            .iter()
                            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                    })
                    .flat_map(|node| node.external_ips.iter().cloned())
                    .collect()
            });
            for (net, port) in found {
                let node_port = svc
                    .spec
                    .iter()
                    .flat_map(|s| s.ports.iter().flatten())
                    .find(|p| u32::try_from(p.port).ok() == Some(port))
                    .and_then(|p| p.node_port)
                    .and_then(|p| u32::try_from(p).ok());
                let list = n.gateways.entry(net).or_default();
                match (selected.is_some(), node_port) {
                    (true, Some(node_port)) => {
                        list.extend(node_ips.iter().map(|a| NetworkGateway {
                            address: a.clone(),
                            port: node_port,
                        }));
                    }
                    _ => list.extend(addresses.iter().map(|a| NetworkGateway {
                        address: a.clone(),
                        port,
                    })),
                }
            }
        }
        n.gateways.retain(|_, list| {
            list.sort_unstable();
            list.dedup();
            !list.is_empty()
        });
    }

    /// Takes the mesh config ConfigMap's settings into `self.mesh`,
    /// reporting what is refused or not supported in `self.warnings`, and
    /// returns its `discoverySelectors` (`None`: every namespace). A
    /// ConfigMap that does not parse is left out (validation refuses it,
    /// naming the field).
    fn read_mesh_config(
        &mut self,
        cm: &k8s_openapi::api::core::v1::ConfigMap,
    ) -> Option<Vec<Option<crds::mesh::NamespaceSelector>>> {
        let m = crds::mesh::parse(cm).ok()?;
        let (ns, name) = crds::mesh::MESH_CONFIGMAP;
        let mut warn = |field: String, reason: String| {
            self.warnings.push(crate::ConfigWarning::new(
                "ConfigMap",
                format!("{ns}/{name}"),
                field,
                reason,
            ));
        };
        if let Some(mode) = m.outbound_traffic_policy.and_then(|p| p.mode) {
            self.mesh.allow_any = mode == crds::mesh::OutboundMode::AllowAny;
        }
        if let Some(auto) = m.enable_auto_mtls {
            self.mesh.auto_mtls = auto;
        }
        match m.dns_refresh_rate.map(|d| d.as_std()) {
            // Envoy refuses a cluster with a rate under 1 ms.
            Some(rate) if rate < std::time::Duration::from_millis(1) => warn(
                "data.mesh.dnsRefreshRate".into(),
                format!("{rate:?} is under 1ms; the default 60s is used"),
            ),
            Some(rate) => self.mesh.dns_refresh_rate = rate,
            None => {}
        }
        if let Some(n) = m.path_normalization.and_then(|p| p.normalization) {
            self.mesh.path_normalization = n;
        }
        if let Some(path) = m.access_log_file.filter(|p| !p.is_empty()) {
            let (format, uses, problem) = access_log_format(
                m.access_log_encoding.unwrap_or_default(),
                m.access_log_format.as_deref().unwrap_or_default(),
            );
            if let Some(reason) = problem {
                warn("data.mesh.accessLogFormat".into(), reason);
            }
            self.mesh.access_log = Some(AccessLog {
                path,
                format,
                req_without_query: uses.req_without_query,
            });
        }
        match m.connect_timeout.map(|d| d.as_std()) {
            // Envoy refuses a cluster whose connect timeout is zero.
            Some(t) if t.is_zero() => warn(
                "data.mesh.connectTimeout".into(),
                "0s: Envoy refuses it; the default 10s is used".into(),
            ),
            t => self.mesh.connect_timeout = t,
        }
        self.mesh.tcp_keepalive = m.tcp_keepalive;
        self.mesh.h2_upgrade = m.h2_upgrade_policy == Some(crds::mesh::H2UpgradePolicy::Upgrade);
        self.mesh.default_retry = m.default_http_retry_policy;
        if let Some(mode) = m.ingress_controller_mode {
            self.mesh.ingress.mode = mode;
        }
        if let Some(class) = m.ingress_class {
            self.mesh.ingress.class = class;
        }
        if let Some(service) = m.ingress_service {
            self.mesh.ingress.service = service;
        }
        if let Some(selector) = m.ingress_selector {
            self.mesh.ingress.selector = selector;
        }
        if let Some(td) = m.trust_domain.filter(|t| !t.is_empty()) {
            self.mesh.trust_domain = td;
        }
        self.mesh.trust_domain_aliases = m.trust_domain_aliases.unwrap_or_default();
        self.mesh.locality_lb = m.locality_lb_setting;
        for field in m.default_config.iter().flat_map(|c| c.proxy_side.keys()) {
            warn(
                format!("data.mesh.defaultConfig.{field}"),
                "not read from the mesh ConfigMap yet: the injector takes defaultConfig from its values (--injection-values); ignored".into(),
            );
        }
        self.mesh.ext_authz = crate::ext_authz::providers(
            m.extension_providers.as_deref().unwrap_or_default(),
            &mut warn,
        );
        (self.mesh.tracing, self.mesh.tracing_providers) = tracing_provider(
            m.extension_providers.as_deref().unwrap_or_default(),
            m.default_providers.as_ref(),
            m.default_config.as_ref().and_then(|c| c.tracing.as_ref()),
            &mut warn,
        );
        self.mesh.access_log_providers = access_log_providers(
            m.extension_providers.as_deref().unwrap_or_default(),
            &mut warn,
        );
        self.mesh.otel_log_providers = otel_log_providers(
            m.extension_providers.as_deref().unwrap_or_default(),
            &mut warn,
        );
        self.mesh.grpc_log_providers = grpc_log_providers(
            m.extension_providers.as_deref().unwrap_or_default(),
            &mut warn,
        );
        self.mesh.default_access_logging = m
            .default_providers
            .as_ref()
            .map(|d| d.access_logging.clone())
            .unwrap_or_default();
        self.mesh.default_metrics = m.default_providers.as_ref().and_then(|d| d.metrics.clone());
        self.mesh.metrics_providers = std::iter::once(crate::metrics::PROMETHEUS.to_owned())
            .chain(
                m.extension_providers
                    .iter()
                    .flatten()
                    .filter(|p| p.prometheus.is_some())
                    .map(|p| p.name.clone()),
            )
            .collect();
        if let Some(root) = m.root_namespace.filter(|r| !r.is_empty()) {
            self.mesh.root_namespace = root;
        }
        let export = |list: Option<Vec<String>>| list.unwrap_or_default();
        self.mesh.default_export_to = DefaultExportTo {
            services: export(m.default_service_export_to),
            virtual_services: export(m.default_virtual_service_export_to),
            destination_rules: export(m.default_destination_rule_export_to),
        };
        for field in m.unsupported.keys() {
            warn(
                format!("data.mesh.{field}"),
                "not supported yet; ignored".into(),
            );
        }
        m.discovery_selectors.filter(|s| !s.is_empty())
    }

    fn build_from<'a>(
        version: u64,
        objects: impl Iterator<Item = Read<'a, Object>>,
        mesh: MeshConfig,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let mut snap = Snapshot {
            version,
            mesh,
            ..Default::default()
        };
        // Borrowed from the objects: only what the model keeps is copied.
        let mut pods_by_name: HashMap<(&str, &str), Read<'a, PodInfo>> = HashMap::new();
        let mut pods_by_ip: HashMap<&str, Read<'a, PodInfo>> = HashMap::new();
        let mut slices = Vec::new();
        let mut services = Vec::new();
        let mut service_entries = Vec::new();
        let mut workloads = Workloads::default();
        let objects: Vec<Read<'a, Object>> = objects.collect();
        // The mesh config first: its `discoverySelectors` decide which
        // namespaces' objects are read.
        let mut selectors = None;
        for (obj, _) in &objects {
            if let Object::ConfigMap(cm) = obj
                && crds::mesh::is_mesh_configmap(cm)
            {
                selectors = snap.read_mesh_config(cm);
                snap.read_mesh_networks(cm);
            }
        }
        // Services built under other export defaults are not taken over.
        let previous = previous.filter(|p| p.mesh.default_export_to == snap.mesh.default_export_to);
        let defaults = snap.mesh.default_export_to.clone();
        let discovered: Option<std::collections::HashSet<&str>> = selectors.map(|selectors| {
            objects
                .iter()
                .filter_map(|(obj, _)| match obj {
                    Object::Namespace(n) => Some(n),
                    _ => None,
                })
                .filter(|n| {
                    let no_labels = BTreeMap::new();
                    let labels = n.metadata.labels.as_ref().unwrap_or(&no_labels);
                    crds::mesh::discovery_selects(Some(&selectors), labels)
                })
                .filter_map(|n| n.metadata.name.as_deref())
                .collect()
        });
        // The system namespace's network label, whatever the selectors.
        let mut system_network = None;
        // Nodes (cluster-scoped, whatever the selectors): NodePort network
        // gateways' addresses.
        let mut nodes: Vec<&crds::document::NodeInfo> = Vec::new();
        let mut gateway_api = crate::gateway_api::Inputs::default();
        // Kubernetes Ingresses, and IngressClasses by name -> controller.
        let mut ingresses: Vec<&k8s_openapi::api::networking::v1::Ingress> = Vec::new();
        let mut ingress_classes: BTreeMap<&str, &str> = BTreeMap::new();
        // ConfigMaps holding a `ca.crt`, by `namespace/name`: those named
        // by a `configmap://` credential are kept.
        let mut config_map_cas: BTreeMap<String, &'a str> = BTreeMap::new();
        for (obj, shared) in objects {
            match obj {
                Object::Node(node) => {
                    nodes.push(node);
                    continue;
                }
                // Cluster-scoped, whatever the selectors.
                Object::GatewayClass(c) => {
                    gateway_api.classes.push(c);
                    continue;
                }
                Object::IngressClass(c) => {
                    if let (Some(name), Some(controller)) = (
                        c.metadata.name.as_deref(),
                        c.spec.as_ref().and_then(|s| s.controller.as_deref()),
                    ) {
                        ingress_classes.insert(name, controller);
                    }
                    continue;
                }
                _ => {}
            }
            let ns: &str = obj.metadata().namespace.as_deref().unwrap_or("default");
            let name: &str = obj.metadata().name.as_deref().unwrap_or_default();
            if let Object::Namespace(n) = obj
                && name == crds::mesh::MESH_CONFIGMAP.0
            {
                system_network = n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(NETWORK_LABEL));
            }
            if let Some(discovered) = &discovered {
                // A namespace is in its own scope; the mesh config is read
                // whatever its namespace's labels.
                let scope = if matches!(obj, Object::Namespace(_)) {
                    name
                } else {
                    ns
                };
                let mesh_config =
                    matches!(obj, Object::ConfigMap(cm) if crds::mesh::is_mesh_configmap(cm));
                if !discovered.contains(scope) && !mesh_config {
                    if let Object::Namespace(n) = obj
                        && let Some(a) = &n.metadata.annotations
                    {
                        // The injector still reads them (its own webhook
                        // selector decides which pods it sees).
                        snap.namespace_annotations
                            .insert(name.to_owned(), a.clone());
                    }
                    continue;
                }
            }
            match obj {
                Object::Node(_) | Object::GatewayClass(_) => {}
                Object::KubeGateway(g) => gateway_api.gateways.push(g),
                Object::HttpRoute(r) => gateway_api.routes.push(r),
                Object::GrpcRoute(r) => gateway_api.grpc_routes.push(r),
                Object::TcpRoute(r) => gateway_api.tcp_routes.push(r),
                Object::TlsRoute(r) => gateway_api.tls_routes.push(r),
                Object::BackendTlsPolicy(p) => gateway_api.policies.push(p),
                Object::BackendTrafficPolicy(p) => gateway_api.traffic_policies.push(p),
                Object::ListenerSet(l) => gateway_api.listener_sets.push(l),
                Object::XListenerSet(l) => gateway_api.x_listener_sets.push(l),
                Object::ReferenceGrant(g) => gateway_api.grants.push(g),
                Object::Ingress(i) => ingresses.push(i),
                Object::IngressClass(_) => {}
                Object::Namespace(n) => {
                    gateway_api
                        .namespaces
                        .insert(name, n.metadata.labels.as_ref());
                    if let Some(a) = &n.metadata.annotations {
                        snap.namespace_annotations
                            .insert(name.to_owned(), a.clone());
                    }
                    snap.namespaces.push(name.to_owned());
                }
                Object::ConfigMap(cm) => {
                    if let Some(ca) = cm.data.as_ref().and_then(|d| d.get("ca.crt")) {
                        config_map_cas.insert(format!("{ns}/{name}"), ca);
                    }
                    gateway_api.config_maps.insert((ns, name), cm.data.as_ref());
                    if let Some(class) = cm
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(crds::gateway_api::CLASS_DEFAULTS_LABEL))
                        && let Some(data) = &cm.data
                        && ns == snap.mesh.root_namespace
                    {
                        gateway_api.class_defaults.insert(class, data);
                    }
                }
                Object::Secret(secret) => {
                    // `stringData` is merged over `data`, as the API server does on write.
                    let mut data: BTreeMap<String, Vec<u8>> = secret
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.0.clone()))
                        .collect();
                    for (k, v) in secret.string_data.iter().flatten() {
                        data.insert(k.clone(), v.clone().into_bytes());
                    }
                    let get = |keys: [&str; 2]| keys.iter().find_map(|k| data.get(*k)).cloned();
                    snap.secrets.insert(
                        format!("{ns}/{name}"),
                        Arc::new(TlsSecret {
                            cert: get(["tls.crt", "cert"]),
                            key: get(["tls.key", "key"]),
                            ca: get(["ca.crt", "cacert"]),
                            crl: get(["ca.crl", "crl"]),
                            docker_config: data.get(".dockerconfigjson").cloned(),
                        }),
                    );
                }
                Object::Pod(pod) => {
                    if let Some(ip) = pod.pod_ip.as_deref() {
                        pods_by_ip.insert(ip, (pod, shared));
                    }
                    pods_by_name.insert((ns, name), (pod, shared));
                }
                Object::Service(svc) => services.push((ns, name, (&**svc, shared))),
                Object::EndpointSlice(slice) => slices.push((ns, (&**slice, shared))),
                Object::VirtualService(vs) => {
                    let mut spec = vs.spec.clone();
                    if spec.export_to.is_empty() {
                        spec.export_to.clone_from(&defaults.virtual_services);
                    }
                    snap.virtual_services.push(Config {
                        name: name.to_owned(),
                        namespace: ns.to_owned(),
                        spec,
                    })
                }
                Object::DestinationRule(dr) => {
                    let mut spec = dr.spec.clone();
                    if spec.export_to.is_empty() {
                        spec.export_to.clone_from(&defaults.destination_rules);
                    }
                    snap.destination_rules.push(Config {
                        name: name.to_owned(),
                        namespace: ns.to_owned(),
                        spec,
                    })
                }
                Object::Gateway(gw) => snap.gateways.push(Config {
                    name: name.to_owned(),
                    namespace: ns.to_owned(),
                    spec: gw.spec.clone(),
                }),
                Object::Sidecar(sc) => snap.sidecars.push(Config {
                    name: name.to_owned(),
                    namespace: ns.to_owned(),
                    spec: sc.spec.clone(),
                }),
                Object::EnvoyFilter(ef) => snap.envoy_filters.push(Config {
                    name: name.to_owned(),
                    namespace: ns.to_owned(),
                    spec: ef.spec.clone(),
                }),
                Object::PeerAuthentication(pa) => snap.peer_authentications.push(Config {
                    name: name.to_owned(),
                    namespace: ns.to_owned(),
                    spec: pa.spec.clone(),
                }),
                Object::AuthorizationPolicy(ap) => snap.authorization_policies.push(Config {
                    name: name.to_owned(),
                    namespace: ns.to_owned(),
                    spec: crate::authz::Policy::of(ap),
                }),
                Object::RequestAuthentication(ra) => snap.request_authentications.push(Config {
                    name: name.to_owned(),
                    namespace: ns.to_owned(),
                    spec: ra.spec.clone(),
                }),
                Object::Telemetry(t) => snap.telemetries.push(Config {
                    name: name.to_owned(),
                    namespace: ns.to_owned(),
                    spec: t.spec.clone(),
                }),
                Object::WasmPlugin(w) => snap.wasm_plugins.push(Config {
                    name: name.to_owned(),
                    namespace: ns.to_owned(),
                    spec: w.spec.clone(),
                }),
                Object::ServiceEntry(se) => {
                    service_entries.push((ns, name, &se.spec, se.metadata.labels.as_ref()))
                }
                Object::WorkloadGroup(wg) => snap.workload_groups.push(Config {
                    name: name.to_owned(),
                    namespace: ns.to_owned(),
                    spec: WorkloadGroupTemplate {
                        uid: wg.metadata.uid.clone().filter(|u| !u.is_empty()),
                        group: wg.spec.clone(),
                    },
                }),
                Object::WorkloadEntry(we) => {
                    workloads.entries.insert((ns, name), (&**we, shared));
                }
            }
        }
        // ServiceEntries once every workload is known: a `workloadSelector`
        // picks WorkloadEntries and pods of the entry's namespace.
        if service_entries
            .iter()
            .any(|(_, _, se, _)| se.workload_selector.is_some())
        {
            workloads.pods = pods_by_name
                .iter()
                .map(|(key, (pod, _))| (*key, *pod))
                .collect();
        }
        if !gateway_api.is_empty() {
            gateway_api.service_entries = service_entries
                .iter()
                .map(|(ns, name, spec, _)| ((*ns, *name), spec.hosts.clone()))
                .collect();
        }
        // Hosts of entries without addresses, which get some allocated.
        let mut unaddressed: Vec<String> = Vec::new();
        for (ns, name, spec, labels) in service_entries {
            let allocates = allocates_addresses(spec, labels);
            for mut svc in service_entry_services(ns, spec, &workloads) {
                svc.persistent_session = PersistentSession::from_labels(labels);
                if svc.export_to.is_empty() {
                    svc.export_to.clone_from(&defaults.services);
                }
                if allocates && !svc.hostname.contains('*') {
                    unaddressed.push(svc.hostname.clone());
                }
                snap.services
                    .entry(svc.hostname.clone())
                    .or_insert_with(|| Arc::new(svc));
            }
            for entry in selected_sockets(spec, &workloads, ns) {
                snap.warnings.push(crate::ConfigWarning::new(
                    "ServiceEntry",
                    format!("{ns}/{name}"),
                    "spec.workloadSelector".into(),
                    format!(
                        "WorkloadEntry {ns}/{entry} is a unix domain socket: Istio selects those for DNS ServiceEntries only, which cannot resolve a socket; left out (list the socket in spec.endpoints of a STATIC ServiceEntry)"
                    ),
                ));
            }
        }
        snap.allocate_addresses(unaddressed);
        // Slices by (namespace, owning service), so that each service
        // reads its own (one scan of all slices per service was quadratic).
        let mut slices_of: HashMap<(&str, &str), Vec<Read<'a, EndpointSlice>>> = HashMap::new();
        for (slice_ns, slice) in &slices {
            if let Some(owner) = slice
                .0
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/service-name"))
            {
                slices_of
                    .entry((*slice_ns, owner.as_str()))
                    .or_default()
                    .push(*slice);
            }
        }
        // Equal label maps are kept once: the replicas of a ReplicaSet have
        // the same labels, `pod-template-hash` included. (Hashing each map
        // costs less than the copies it saves: snapshot build at 1000
        // services 4.10 -> 3.93 ms, back to back.)
        let mut label_sets: HashMap<&BTreeMap<String, String>, Arc<BTreeMap<String, String>>> =
            HashMap::new();
        let mut intern = |labels: &'a BTreeMap<String, String>| {
            label_sets
                .entry(labels)
                .or_insert_with(|| Arc::new(labels.clone()))
                .clone()
        };
        let no_labels: Arc<BTreeMap<String, String>> = Arc::default();
        // The Pod an endpoint of a slice in `ns` is: its `targetRef`, else
        // the Pod with its first address.
        let pod_of = |ns: &str, ep: &'a k8s_openapi::api::discovery::v1::Endpoint| {
            ep.target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let pns = r.namespace.as_deref().unwrap_or(ns);
                    pods_by_name.get(&(pns, r.name.as_deref().unwrap_or_default()))
                })
                .or_else(|| {
                    ep.addresses
                        .first()
                        .and_then(|a| pods_by_ip.get(a.as_str()))
                })
                .copied()
        };
        snap.read_network_gateways(&services, system_network, &nodes, &gateway_api.gateways);
        if !gateway_api.is_empty() {
            gateway_api.services = services
                .iter()
                .map(|(ns, name, (svc, _))| {
                    ((*ns, *name), crate::gateway_api::ServiceInfo::of(svc))
                })
                .collect();
            gateway_api.domain.clone_from(&snap.mesh.domain);
            gateway_api.certificates = snap
                .secrets
                .iter()
                .filter(|(_, s)| s.cert.is_some() && s.key.is_some())
                .map(|(key, _)| key.clone())
                .collect();
            gateway_api.config_map_cas = config_map_cas.keys().cloned().collect();
            let out = crate::gateway_api::convert(&gateway_api);
            snap.gateways.extend(out.gateways);
            snap.destination_rules
                .extend(out.destination_rules.into_iter().map(|mut dr| {
                    dr.spec.export_to.clone_from(&defaults.destination_rules);
                    dr
                }));
            snap.virtual_services
                .extend(out.virtual_services.into_iter().map(|mut vs| {
                    vs.spec.export_to.clone_from(&defaults.virtual_services);
                    vs
                }));
            snap.warnings.extend(out.warnings);
            snap.gateway_api = out.generated;
        }
        if !ingresses.is_empty() {
            let out = crate::ingress::convert(&crate::ingress::Inputs {
                ingresses,
                classes: ingress_classes,
                services: services
                    .iter()
                    .map(|(ns, name, (svc, _))| ((*ns, *name), &**svc))
                    .collect(),
                settings: &snap.mesh.ingress,
                system_namespace: &snap.mesh.root_namespace,
                domain: &snap.mesh.domain,
                // Without an `ingressService`: the gateway pods' nodes.
                pods: if snap.mesh.ingress.service.is_empty() {
                    let ns = snap.mesh.root_namespace.as_str();
                    let mut pods: Vec<&PodInfo> = pods_by_name
                        .iter()
                        .filter(|((pod_ns, _), _)| *pod_ns == ns)
                        .map(|(_, (pod, _))| *pod)
                        .collect();
                    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
                    pods
                } else {
                    Vec::new()
                },
                nodes: &nodes,
            });
            snap.gateways.extend(out.gateways);
            for vs in &out.virtual_services {
                snap.gateway_api
                    .ingress_routes
                    .insert(&vs.namespace, &vs.name);
            }
            snap.virtual_services
                .extend(out.virtual_services.into_iter().map(|mut vs| {
                    vs.spec.export_to.clone_from(&defaults.virtual_services);
                    vs
                }));
            snap.gateway_api.status.extend(out.status);
            snap.warnings.extend(out.warnings);
        }
        // The CAs `configmap://` credentials name (the rest are not kept:
        // a ConfigMap no rule names changes nothing).
        let rules = if config_map_cas.is_empty() {
            &[][..]
        } else {
            &snap.destination_rules[..]
        };
        for dr in rules {
            for (_, _, key) in crate::policy::config_map_credentials(&dr.spec) {
                if let Some(ca) = config_map_cas.get(key) {
                    snap.config_map_cas.insert(key.to_owned(), (*ca).to_owned());
                }
            }
        }
        // And those Gateways' servers verify clients with (a Gateway API
        // listener's client certificate validation).
        let gateways = if config_map_cas.is_empty() {
            &[][..]
        } else {
            &snap.gateways[..]
        };
        for gw in gateways {
            for server in &gw.spec.servers {
                let key = server
                    .tls
                    .as_ref()
                    .and_then(|t| t.ca_cert_credential_name.as_deref())
                    .and_then(|c| c.strip_prefix(crate::policy::CONFIG_MAP_CREDENTIAL));
                if let Some(key) = key
                    && let Some(ca) = config_map_cas.get(key)
                {
                    snap.config_map_cas.insert(key.to_owned(), (*ca).to_owned());
                }
            }
        }
        for (ns, name, (svc, svc_shared)) in services {
            let hostname = format!("{name}.{ns}.svc.{}", snap.mesh.domain);
            let own_slices = slices_of
                .get(&(ns, name))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let pods: Vec<Option<Read<'a, PodInfo>>> = own_slices
                .iter()
                .flat_map(|(slice, _)| slice.endpoints.iter().flatten())
                .map(|ep| pod_of(ns, ep))
                .collect();
            let entries = workloads.selected_by_service(ns, svc);
            let inputs = inputs(svc_shared, own_slices, &pods, &entries);
            let same = inputs
                .as_deref()
                .zip(previous)
                .and_then(|(inputs, p)| p.built_from_same(&hostname, inputs));
            if let Some(same) = same {
                snap.insert_kubernetes(hostname, same, inputs);
                continue;
            }
            let no_spec = Default::default();
            let spec: &ServiceSpec = svc.spec.as_ref().unwrap_or(&no_spec);
            let ports = spec
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let port = u32::try_from(p.port).ok()?;
                    let pname = p.name.clone().unwrap_or_default();
                    let protocol = match p.app_protocol.as_deref() {
                        Some(ap) => Protocol::from_name(ap),
                        None => Protocol::from_name(&pname),
                    };
                    Some(ServicePort {
                        name: pname,
                        port,
                        protocol,
                    })
                })
                .collect();
            // Headless (`clusterIP: None`): clients address pods directly, so
            // traffic goes to the address they chose (ORIGINAL_DST), as Istio
            // resolves headless services (`Passthrough`).
            let headless = spec.cluster_ip.as_deref() == Some("None");
            let vips = match (&spec.cluster_ips, &spec.cluster_ip) {
                (Some(ips), _) => ips.as_slice(),
                (None, Some(ip)) => std::slice::from_ref(ip),
                (None, None) => &[],
            }
            .iter()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .cloned()
            .collect();
            let export_to = svc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("networking.istio.io/exportTo"))
                .map(|v| {
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_else(|| defaults.services.clone());
            let mut endpoints = Vec::new();
            let mut pods = pods.into_iter();
            for (slice, _) in own_slices {
                let slice_ports: Arc<BTreeMap<String, u32>> = Arc::new(
                    slice
                        .ports
                        .iter()
                        .flatten()
                        .filter_map(|p| {
                            Some((
                                p.name.clone().unwrap_or_default(),
                                u32::try_from(p.port?).ok()?,
                            ))
                        })
                        .collect(),
                );
                for ep in slice.endpoints.iter().flatten() {
                    let pod = pods.next().flatten().map(|(pod, _)| pod);
                    let labels = pod
                        .and_then(|p| p.metadata.labels.as_ref())
                        .map_or_else(|| no_labels.clone(), &mut intern);
                    let conditions = ep.conditions.as_ref();
                    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                    // Istio's `endpointHealthStatus`: not ready, but still
                    // serving while it terminates (unset counts as true).
                    let draining = !ready
                        && conditions.and_then(|c| c.serving).unwrap_or(true)
                        && conditions.and_then(|c| c.terminating).unwrap_or(true);
                    let locality = pod_locality(&labels, ep.zone.as_deref());
                    let service_account = pod
                        .and_then(|p| p.service_account_name.clone())
                        .filter(|s| !s.is_empty());
                    for address in &ep.addresses {
                        let mut endpoint = Endpoint::new(
                            address.clone(),
                            slice_ports.clone(),
                            labels.clone(),
                            ready,
                            locality.clone(),
                            service_account.clone(),
                        );
                        endpoint.draining |= draining;
                        endpoints.push(endpoint);
                    }
                }
            }
            if !entries.is_empty() {
                let targets = kubernetes_targets(spec);
                endpoints.extend(
                    entries
                        .iter()
                        .filter_map(|(we, _)| kubernetes_entry_endpoint(we, &targets)),
                );
            }
            let service = Arc::new(Service {
                hostname: hostname.clone(),
                name: name.to_owned(),
                namespace: ns.to_owned(),
                vips,
                ports,
                endpoints,
                resolution: if headless {
                    ServiceResolution::Passthrough
                } else {
                    ServiceResolution::Static
                },
                kubernetes: true,
                external: false,
                export_to,
                subject_alt_names: Vec::new(),
                persistent_session: PersistentSession::from_labels(svc.metadata.labels.as_ref()),
                auto_vips: Vec::new(),
                no_gateway_port_translation: svc
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(DISABLE_GATEWAY_PORT_TRANSLATION_LABEL)),
            });
            snap.insert_kubernetes(hostname, service, inputs);
        }
        let order = |a: &String, b: &String, c: &String, d: &String| (a, b).cmp(&(c, d));
        snap.virtual_services
            .sort_by(|a, b| order(&a.namespace, &a.name, &b.namespace, &b.name));
        snap.destination_rules
            .sort_by(|a, b| order(&a.namespace, &a.name, &b.namespace, &b.name));
        snap.gateways
            .sort_by(|a, b| order(&a.namespace, &a.name, &b.namespace, &b.name));
        snap.sidecars
            .sort_by(|a, b| order(&a.namespace, &a.name, &b.namespace, &b.name));
        snap.peer_authentications
            .sort_by(|a, b| order(&a.namespace, &a.name, &b.namespace, &b.name));
        snap.authorization_policies
            .sort_by(|a, b| order(&a.namespace, &a.name, &b.namespace, &b.name));
        for pa in &snap.peer_authentications {
            if let Some(sel) = &pa.spec.selector {
                snap.label_keys.extend(sel.match_labels.keys().cloned());
            }
        }
        snap.request_authentications
            .sort_by(|a, b| order(&a.namespace, &a.name, &b.namespace, &b.name));
        snap.telemetries
            .sort_by(|a, b| order(&a.namespace, &a.name, &b.namespace, &b.name));
        snap.wasm_plugins
            .sort_by(|a, b| order(&a.namespace, &a.name, &b.namespace, &b.name));
        snap.envoy_filters.sort_by(|a, b| {
            (&a.namespace, a.spec.priority.unwrap_or(0), &a.name).cmp(&(
                &b.namespace,
                b.spec.priority.unwrap_or(0),
                &b.name,
            ))
        });
        let selectors = snap
            .authorization_policies
            .iter()
            .map(|ap| ap.spec.spec.selector.as_ref())
            .chain(
                snap.request_authentications
                    .iter()
                    .map(|ra| ra.spec.selector.as_ref()),
            )
            .chain(snap.telemetries.iter().map(|t| t.spec.selector.as_ref()))
            .chain(snap.wasm_plugins.iter().map(|w| w.spec.selector.as_ref()));
        let keys: Vec<String> = selectors
            .flatten()
            .flat_map(|sel| sel.match_labels.keys().cloned())
            .chain(
                snap.envoy_filters
                    .iter()
                    .filter_map(|f| f.spec.workload_selector.as_ref())
                    .flat_map(|sel| sel.labels.keys().cloned()),
            )
            .collect();
        snap.label_keys.extend(keys);
        (snap.inbound, snap.inbound_services) = inbound_index(&snap.services);
        let jwks_warnings = crate::jwt::warnings(&snap, &snap.request_authentications);
        snap.warnings.extend(jwks_warnings);
        let authz_warnings = crate::authz::warnings(&snap);
        snap.warnings.extend(authz_warnings);
        let telemetry_warnings = crate::telemetry::warnings(&snap);
        snap.warnings.extend(telemetry_warnings);
        let wasm_warnings = crate::wasm::warnings(&snap);
        snap.warnings.extend(wasm_warnings);
        let attach_warnings = crate::attach::warnings(&snap);
        snap.warnings.extend(attach_warnings);
        let (patches, patch_warnings) = crate::envoy_filter::compile(&snap);
        snap.envoy_patches = patches;
        snap.warnings.extend(patch_warnings);
        if crate::attach::any_targeted(&snap) {
            // Policies attached by `targetRef` apply by the gateway's name.
            snap.label_keys
                .insert(crate::attach::GATEWAY_NAME_LABEL.to_owned());
        }
        snap.namespaces.sort();
        let otel = snap
            .mesh
            .tracing_providers
            .values()
            .chain(&snap.mesh.tracing)
            .any(|p| {
                matches!(
                    p.exporter,
                    SpanExporter::OpenTelemetry { .. } | SpanExporter::Datadog
                )
            });
        if otel {
            // The OpenTelemetry and Datadog tracers' service name is
            // `app.namespace`.
            snap.label_keys.insert("app".into());
        }
        if snap.mesh.may_trace() {
            // Spans carry the proxy's canonical service and revision.
            snap.label_keys.extend(
                [
                    crate::trace::CANONICAL_NAME,
                    crate::trace::CANONICAL_REVISION,
                ]
                .map(String::from),
            );
        }
        for vs in &snap.virtual_services {
            for m in vs.spec.http.iter().flat_map(|h| &h.matches) {
                snap.label_keys.extend(m.source_labels.keys().cloned());
            }
            for m in vs.spec.tcp.iter().flat_map(|t| &t.matches) {
                snap.label_keys.extend(m.source_labels.keys().cloned());
            }
            for m in vs.spec.tls.iter().flat_map(|t| &t.matches) {
                snap.label_keys.extend(m.source_labels.keys().cloned());
            }
        }
        for gw in &snap.gateways {
            snap.label_keys.extend(gw.spec.selector.keys().cloned());
        }
        let mesh_failover: Vec<String> = snap
            .mesh
            .locality_lb
            .iter()
            .flat_map(|l| l.failover_priority_keys())
            .map(String::from)
            .collect();
        snap.failover_keys.extend(mesh_failover);
        for (i, dr) in snap.destination_rules.iter().enumerate() {
            snap.failover_keys
                .extend(dr.spec.failover_priority_keys().map(String::from));
            snap.tunnels |= dr
                .spec
                .traffic_policy
                .iter()
                .chain(
                    dr.spec
                        .subsets
                        .iter()
                        .filter_map(|s| s.traffic_policy.as_ref()),
                )
                .any(|p| p.tunnel.is_some());
            if let Some(selector) = &dr.spec.workload_selector {
                // Proxies that differ in these labels may get other rules.
                snap.label_keys
                    .extend(selector.match_labels.keys().cloned());
                snap.selecting_rules += 1;
            }
            let host = snap.resolve_host(&dr.spec.host, &dr.namespace).into_owned();
            if let Some(suffix) = host.strip_prefix('*') {
                snap.dr_wildcard.push((suffix.to_owned(), i));
            }
            snap.dr_by_host.entry(host).or_default().push(i);
        }
        // Proxies that differ in these labels get other endpoint priorities.
        snap.label_keys.extend(snap.failover_keys.iter().cloned());
        for (i, vs) in snap.virtual_services.iter().enumerate() {
            for h in &vs.spec.hosts {
                let host = snap.resolve_host(h, &vs.namespace).into_owned();
                if host.contains('*') {
                    if snap.vs_wildcard.last() != Some(&i) {
                        snap.vs_wildcard.push(i);
                    }
                } else {
                    let entry = snap.vs_by_host.entry(host).or_default();
                    if entry.last() != Some(&i) {
                        entry.push(i);
                    }
                }
            }
        }
        snap
    }

    /// Adds Kubernetes service `service`, built from `inputs`; a service it
    /// replaces (a ServiceEntry host, or a Service listed twice) is let
    /// go with its inputs.
    fn insert_kubernetes(
        &mut self,
        hostname: String,
        service: Arc<Service>,
        inputs: Option<Inputs>,
    ) {
        let at = Arc::as_ptr(&service).addr();
        if let Some(replaced) = self.services.insert(hostname, service) {
            self.built_from.remove(&Arc::as_ptr(&replaced).addr());
        }
        if let Some(inputs) = inputs {
            self.built_from.insert(at, inputs);
        }
    }

    /// This snapshot's service `hostname`, if it is a Kubernetes service
    /// built from exactly `inputs` (the same objects, in the same order).
    fn built_from_same(
        &self,
        hostname: &str,
        inputs: &[Option<Arc<Object>>],
    ) -> Option<Arc<Service>> {
        let service = self.services.get(hostname)?;
        let was = self.built_from.get(&Arc::as_ptr(service).addr())?;
        let same = was.len() == inputs.len()
            && was.iter().zip(inputs).all(|pair| match pair {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            });
        same.then(|| Arc::clone(service))
    }

    /// Services a proxy in namespace `ns` may see: Istio's `exportTo`
    /// visibility (ServiceEntry `exportTo`; Kubernetes services are exported
    /// everywhere unless annotated `networking.istio.io/exportTo`).
    pub fn visible_services<'a>(
        &'a self,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        self.services
            .values()
            .filter(move |s| exported_to(&s.export_to, &s.namespace, ns))
    }

    /// Takes over what `prev` (the snapshot this one replaces; `changes`,
    /// [`crate::changes::ChangeSet::between`] them) memoised for
    /// generation (see [`crate::generate_encoded`]) wherever it still
    /// holds: for each service the change set does not name, seen through
    /// a DestinationRule it does not name (or none), when the mesh
    /// settings and PeerAuthentications are unchanged too (they feed every
    /// cluster). Then a change's first config key does not build every
    /// service again. Nothing is taken over from a change set of another
    /// snapshot, or by a snapshot from itself.
    pub fn inherit_memos(&self, prev: &Snapshot, changes: &crate::changes::ChangeSet) {
        if std::ptr::eq(self, prev)
            || changes.from_version != prev.version
            || changes.mesh
            || !changes.peer_auth_namespaces.is_empty()
        {
            return;
        }
        // A previous rule's address -> the address of the same rule here.
        let now: HashMap<(&str, &str), &Config<DestinationRuleSpec>> = self
            .destination_rules
            .iter()
            .map(|r| ((r.namespace.as_str(), r.name.as_str()), r))
            .collect();
        let rules: HashMap<usize, usize> = prev
            .destination_rules
            .iter()
            .filter(|old| {
                !changes
                    .changed_rules
                    .contains(&(old.namespace.clone(), old.name.clone()))
            })
            .filter_map(|old| {
                let new = now.get(&(old.namespace.as_str(), old.name.as_str()))?;
                Some((
                    std::ptr::from_ref(old).addr(),
                    std::ptr::from_ref(*new).addr(),
                ))
            })
            .chain([(0, 0)])
            .collect();
        let rule_now = |addr: usize| rules.get(&addr).copied();
        // Unchanged services by their previous address.
        let services: HashMap<usize, &Arc<Service>> = prev
            .services
            .iter()
            .filter(|(host, _)| !changes.changed_hosts.contains(*host))
            .filter_map(|(host, old)| Some((Arc::as_ptr(old).addr(), self.services.get(host)?)))
            .collect();
        let service_now = |old: &Service| {
            services
                .get(&std::ptr::from_ref(old).addr())
                .map(|s| Arc::clone(s))
        };
        self.cluster_memo
            .inherit(&prev.cluster_memo, service_now, rule_now);
        self.route_memo
            .inherit(&prev.route_memo, service_now, rule_now);
    }

    /// Whether nothing is memoised for generation yet (see
    /// [`crate::generate_encoded`]): the next config key generated is this
    /// snapshot's first, built from nothing, unless
    /// [`Snapshot::inherit_memos`] took something over.
    pub fn nothing_memoised(&self) -> bool {
        self.cluster_memo.is_empty() && self.route_memo.is_empty()
    }

    /// The ports the workload at `ip` serves (sorted by port, unique): the
    /// target ports of every static service it is an endpoint of.
    pub fn inbound_ports(&self, ip: &str) -> &[InboundPort] {
        self.inbound.get(ip).map_or(&[], Vec::as_slice)
    }

    /// The services whose endpoint `ip` is, each with the target port of
    /// one of its ports: (port, hostname), sorted. The labels of Istio's
    /// metrics name them (the inbound clusters' `istio` metadata).
    pub fn inbound_services(&self, ip: &str) -> &[(u32, String)] {
        self.inbound_services.get(ip).map_or(&[], Vec::as_slice)
    }

    /// Gives each of the ServiceEntry `hosts` (their services have no
    /// address) one from 240.240.0.0/16, as Istio's IP auto-allocation
    /// (`PILOT_ENABLE_IP_AUTOALLOCATE`, on by default) gives one to proxies
    /// that capture DNS: the address a hash of the hostname picks, the next
    /// free one when another host has it (hosts taken in hostname order),
    /// so that a host keeps its address while the others come and go.
    /// Istio's controller writes the addresses it picks into the entry's
    /// `status`; here they are recomputed with every snapshot (the same
    /// for the same hosts), and the two need not agree.
    fn allocate_addresses(&mut self, mut hosts: Vec<String>) {
        /// Addresses 240.240.0.1 to 240.240.255.254.
        const SPACE: u64 = 65_534;
        if hosts.is_empty() {
            return;
        }
        hosts.sort_unstable();
        hosts.dedup();
        let mut taken: std::collections::HashSet<u64> = std::collections::HashSet::new();
        for host in hosts {
            let Some(svc) = self.services.get_mut(&host) else {
                continue;
            };
            // FNV-1a: stable across runs and builds.
            let hash = host.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let mut index = hash % SPACE;
            while !taken.insert(index) {
                index = (index + 1) % SPACE;
            }
            let n = index + 1;
            let address = format!("240.240.{}.{}", n >> 8, n & 0xff);
            Arc::make_mut(svc).auto_vips = vec![address];
        }
    }

    /// The port translation of the gateway pod at `ip`, as Istio's
    /// `resolvePorts` for Gateways selecting pods by labels: (service port,
    /// target port) for each port of the Services the pod is an endpoint
    /// of (the first Service by hostname for a port several have), where
    /// the target port differs. A Gateway server on such a service port
    /// listens on its target port: Istio's `istio-ingressgateway` Service
    /// maps 80 and 443 to 8080 and 8443, where its unprivileged pods
    /// listen. Empty for an address no Service selects. A Service labelled
    /// [`DISABLE_GATEWAY_PORT_TRANSLATION_LABEL`] is skipped.
    /// Read through [`Snapshot::inbound_services`] (the services whose
    /// endpoint `ip` is, already indexed): no scan of every service on
    /// the push path.
    pub fn gateway_ports(&self, ip: &str) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut hosts: Vec<&str> = self
            .inbound_services(ip)
            .iter()
            .map(|(_, host)| host.as_str())
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        for svc in hosts.into_iter().filter_map(|h| self.services.get(h)) {
            if svc.no_gateway_port_translation {
                continue;
            }
            let Some(ep) = svc.endpoints.iter().find(|e| e.address == ip) else {
                continue;
            };
            for port in &svc.ports {
                if out.iter().any(|(p, _)| *p == port.port) {
                    continue;
                }
                if let Some(target) = ep.target_port(&port.name) {
                    out.push((port.port, target));
                }
            }
        }
        out.retain(|(port, target)| port != target);
        out.sort_unstable();
        out
    }

    /// Addresses whose [`Snapshot::inbound_ports`] (or
    /// [`Snapshot::inbound_services`]) differ between `self` and `other`.
    pub fn inbound_changes(&self, other: &Snapshot) -> BTreeSet<String> {
        fn differ<V: PartialEq>(
            a: &HashMap<String, V>,
            b: &HashMap<String, V>,
            out: &mut BTreeSet<String>,
        ) {
            for (ip, v) in a {
                if b.get(ip) != Some(v) {
                    out.insert(ip.clone());
                }
            }
            for ip in b.keys() {
                if !a.contains_key(ip) {
                    out.insert(ip.clone());
                }
            }
        }
        let mut out = BTreeSet::new();
        differ(&self.inbound, &other.inbound, &mut out);
        differ(&self.inbound_services, &other.inbound_services, &mut out);
        out
    }

    /// VirtualServices that may name `hostname` (exactly, or by a wildcard
    /// host), in config order; callers still check each one.
    pub fn virtual_services_for<'a>(
        &'a self,
        hostname: &str,
    ) -> impl Iterator<Item = &'a Config<VirtualServiceSpec>> + 'a {
        let mut idx: Vec<usize> = self
            .vs_by_host
            .get(hostname)
            .into_iter()
            .flatten()
            .chain(&self.vs_wildcard)
            .copied()
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().filter_map(|i| self.virtual_services.get(i))
    }

    /// The Sidecar resource that applies to `proxy`, as Istio picks it: one in
    /// the proxy's namespace whose `workloadSelector` matches its labels,
    /// else one there without a selector, else one in the root namespace
    /// (`istio-system`) without a selector. Gateways have none.
    pub fn sidecar_for(&self, proxy: &Proxy) -> Option<&Config<crds::SidecarSpec>> {
        if proxy.kind != ProxyKind::Sidecar {
            return None;
        }
        let selects = |sc: &&Config<crds::SidecarSpec>| {
            sc.spec.workload_selector.as_ref().is_some_and(|sel| {
                !sel.labels.is_empty()
                    && sel
                        .labels
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k) == Some(v))
            })
        };
        let unselected = |sc: &&Config<crds::SidecarSpec>| {
            sc.spec
                .workload_selector
                .as_ref()
                .is_none_or(|s| s.labels.is_empty())
        };
        let mine = || {
            self.sidecars
                .iter()
                .filter(|sc| sc.namespace == proxy.namespace)
        };
        mine()
            .find(selects)
            .or_else(|| mine().find(unselected))
            .or_else(|| {
                self.sidecars
                    .iter()
                    .filter(|sc| sc.namespace == self.mesh.root_namespace)
                    .find(unselected)
            })
    }

    /// The services `proxy` gets config for: visible ones (`exportTo`),
    /// narrowed by its Sidecar's `egress.hosts`.
    pub fn services_for<'a>(
        &'a self,
        proxy: &'a Proxy,
    ) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        let sidecar = self.sidecar_for(proxy);
        self.visible_services(&proxy.namespace)
            .filter(move |s| sidecar.is_none_or(|sc| egress_allows(sc, s)))
    }

    /// The service `hostname`, if `proxy` gets config for it (one of
    /// [`Snapshot::services_for`], looked up rather than scanned).
    pub fn service_for(&self, proxy: &Proxy, hostname: &str) -> Option<&Arc<Service>> {
        let svc = self.services.get(hostname)?;
        (exported_to(&svc.export_to, &svc.namespace, &proxy.namespace)
            && self
                .sidecar_for(proxy)
                .is_none_or(|sc| egress_allows(sc, svc)))
        .then_some(svc)
    }

    /// The cluster `proxy` sends traffic for destinations outside the
    /// registry to (its `virtualOutbound` catch-all and its routes'
    /// `allow_any` host): under `ALLOW_ANY` its Sidecar's
    /// `outboundTrafficPolicy.egressProxy` (`outbound|<port>|<subset>|<host>`,
    /// a short host resolved in the Sidecar's namespace; without a port,
    /// the service's only one), else `PassthroughCluster`; under
    /// `REGISTRY_ONLY` `BlackHoleCluster`. As Istio's
    /// `buildOutboundCatchAllNetworkFiltersOnly` and `buildCatchAllVirtualHost`.
    pub fn outbound_fallback(&self, proxy: &Proxy) -> std::borrow::Cow<'static, str> {
        use crate::cluster::{BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER};
        if !self.allow_any_for(proxy) {
            return BLACKHOLE_CLUSTER.into();
        }
        let Some((sidecar, egress)) = self.sidecar_for(proxy).and_then(|sc| {
            let policy = sc.spec.outbound_traffic_policy.as_ref()?;
            Some((sc, policy.egress_proxy.as_ref()?))
        }) else {
            return PASSTHROUGH_CLUSTER.into();
        };
        let host = self.resolve_host(&egress.host, &sidecar.namespace);
        let port = egress.port.as_ref().map(|p| p.number).or_else(|| {
            let ports = &self.services.get(host.as_ref())?.ports;
            (ports.len() == 1).then(|| ports[0].port)
        });
        crate::cluster::cluster_name(
            port.unwrap_or_default(),
            egress.subset.as_deref().unwrap_or_default(),
            &host,
        )
        .into()
    }

    /// Whether unknown destinations pass through for `proxy`: its Sidecar's
    /// `outboundTrafficPolicy` if it has one (whose unset `mode` is the
    /// proto's default, `REGISTRY_ONLY`, as Istio's sidecar scope takes the
    /// policy whole), else the mesh's.
    pub fn allow_any_for(&self, proxy: &Proxy) -> bool {
        self.sidecar_for(proxy)
            .and_then(|sc| sc.spec.outbound_traffic_policy.as_ref())
            .map_or(self.mesh.allow_any, |p| {
                p.mode == Some(crds::mesh::OutboundMode::AllowAny)
            })
    }

    /// Resolves a host as written in a rule of namespace `ns` to a hostname:
    /// a short name `reviews` becomes `reviews.<ns>.svc.cluster.local`, names
    /// with dots are taken as they are (Istio's `ResolveShortnameToFQDN`).
    /// Borrowed when taken as it is (no copy on the per-proxy path).
    pub fn resolve_host<'h>(&self, host: &'h str, ns: &str) -> std::borrow::Cow<'h, str> {
        if host.contains('.') || host.contains('*') {
            std::borrow::Cow::Borrowed(host)
        } else {
            std::borrow::Cow::Owned([host, ".", ns, ".svc.", &self.mesh.domain].concat())
        }
    }

    /// Whether some DestinationRule has a `workloadSelector`.
    pub fn has_selecting_rules(&self) -> bool {
        self.selecting_rules > 0
    }

    /// The DestinationRule for a hostname seen by `proxy`: as Istio's
    /// sidecar scope picks it, first a rule of the proxy's namespace whose
    /// `workloadSelector` its labels match (an exact host before a
    /// wildcard, then in config order), else
    /// [`Snapshot::destination_rule`].
    pub fn destination_rule_for(
        &self,
        hostname: &str,
        proxy: &Proxy,
    ) -> Option<&Config<DestinationRuleSpec>> {
        // The common case: no rule has a selector.
        if self.selecting_rules == 0 {
            return self.destination_rule(hostname, &proxy.namespace);
        }
        let selects = |dr: &&Config<DestinationRuleSpec>| {
            dr.namespace == proxy.namespace
                && dr.spec.workload_selector.as_ref().is_some_and(|s| {
                    s.match_labels
                        .iter()
                        .all(|(k, v)| proxy.labels.get(k) == Some(v))
                })
        };
        let exact = self
            .dr_by_host
            .get(hostname)
            .into_iter()
            .flatten()
            .filter_map(|i| self.destination_rules.get(*i))
            .find(selects);
        exact
            .or_else(|| {
                self.dr_wildcard
                    .iter()
                    .filter(|(suffix, _)| hostname.ends_with(suffix.as_str()))
                    .filter_map(|(_, i)| self.destination_rules.get(*i))
                    .find(selects)
            })
            .or_else(|| self.destination_rule(hostname, &proxy.namespace))
    }

    /// The DestinationRule for a hostname seen from namespace `ns`, of
    /// those without a `workloadSelector`: one in `ns` first, then any
    /// other exported to `ns` (Istio's lookup order).
    pub fn destination_rule(
        &self,
        hostname: &str,
        ns: &str,
    ) -> Option<&Config<DestinationRuleSpec>> {
        let catch_all = |dr: &Config<DestinationRuleSpec>| {
            dr.spec.workload_selector.is_none()
                && exported_to(&dr.spec.export_to, &dr.namespace, ns)
        };
        let candidates = || {
            self.dr_by_host
                .get(hostname)
                .into_iter()
                .flatten()
                .filter_map(|i| self.destination_rules.get(*i))
                .filter(|dr| catch_all(dr))
        };
        let exact = candidates()
            .find(|dr| dr.namespace == ns)
            .or_else(|| candidates().next());
        if exact.is_some() {
            return exact;
        }
        // A wildcard host (`*.ns.svc.cluster.local`, `*.local`, `*`): the most
        // specific match, the proxy's own namespace first on a tie.
        // Reversed, so that of equals `max_by_key` keeps the first in config order.
        self.dr_wildcard
            .iter()
            .rev()
            .filter(|(suffix, _)| hostname.ends_with(suffix.as_str()))
            .filter_map(|(suffix, i)| Some((suffix.len(), self.destination_rules.get(*i)?)))
            .filter(|(_, dr)| catch_all(dr))
            .max_by_key(|(len, dr)| (*len, dr.namespace == ns))
            .map(|(_, dr)| dr)
    }
}

fn service_entry_services(
    ns: &str,
    spec: &crds::ServiceEntrySpec,
    workloads: &Workloads<'_>,
) -> Vec<Service> {
    let resolution = match spec.resolution {
        Some(Resolution::Dns) => ServiceResolution::Dns,
        Some(Resolution::DynamicDns) => ServiceResolution::DynamicDns,
        Some(Resolution::DnsRoundRobin) => ServiceResolution::DnsRoundRobin,
        Some(Resolution::Static) => ServiceResolution::Static,
        Some(Resolution::None) | None => ServiceResolution::Passthrough,
    };
    let dns = matches!(
        resolution,
        ServiceResolution::Dns | ServiceResolution::DnsRoundRobin
    );
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .map(|p| {
            let name = p.name.clone().unwrap_or_default();
            ServicePort {
                protocol: Protocol::from_name(p.protocol.as_deref().unwrap_or(&name)),
                name,
                port: p.number,
            }
        })
        .collect();
    // Where the endpoints receive each port: its `targetPort`, else its
    // number (a workload's own port of that name wins over both).
    let targets: Vec<(String, u32)> = spec
        .ports
        .iter()
        .zip(&ports)
        .map(|(p, sp)| (sp.name.clone(), p.target_port.unwrap_or(p.number)))
        .collect();
    let of_workload = |own: &BTreeMap<String, u32>| -> Arc<BTreeMap<String, u32>> {
        Arc::new(
            targets
                .iter()
                .map(|(name, target)| {
                    let port = own.get(name).copied().filter(|p| *p > 0);
                    (name.clone(), port.unwrap_or(*target))
                })
                .collect(),
        )
    };
    // Istio's `convertWorkloadInstanceToInstances`: the selected
    // WorkloadEntries (a hostname only for DNS resolution) and ready pods.
    let endpoints: Option<Vec<Endpoint>> = match &spec.workload_selector {
        Some(selector) => Some(
            workloads
                .entries_in(ns)
                .filter(|(we, _)| selects_workload(&selector.labels, &we.spec.labels))
                .filter(|(we, _)| {
                    // Hostnames for DNS resolution only; sockets never
                    // (reported by `selected_sockets`).
                    let address = we.spec.address.as_deref().unwrap_or_default();
                    !address.starts_with(crate::UNIX_PREFIX)
                        && (dns
                            || address.is_empty()
                            || address.parse::<std::net::IpAddr>().is_ok())
                })
                .filter_map(|(we, _)| entry_object_endpoint(we, of_workload(&we.spec.ports)))
                .chain(
                    workloads
                        .pods_in(ns)
                        .filter(|pod| pod.ready)
                        .filter(|pod| {
                            let labels = pod.metadata.labels.as_ref();
                            labels.is_some_and(|l| selects_workload(&selector.labels, l))
                        })
                        .filter_map(|pod| {
                            let labels = Arc::new(pod.metadata.labels.clone().unwrap_or_default());
                            let locality = pod_locality(&labels, None);
                            Some(Endpoint::new(
                                pod.pod_ip.clone().filter(|ip| !ip.is_empty())?,
                                of_workload(&pod.ports),
                                labels,
                                true,
                                locality,
                                pod.service_account_name.clone().filter(|s| !s.is_empty()),
                            ))
                        }),
                )
                .collect(),
        ),
        // DNS entries without endpoints resolve the host itself.
        None if spec.endpoints.is_empty() && dns => None,
        None => Some(
            spec.endpoints
                .iter()
                .filter_map(|we| workload_entry_endpoint(we, of_workload(&we.ports)))
                .collect(),
        ),
    };
    spec.hosts
        .iter()
        .map(|host| Service {
            hostname: host.clone(),
            name: host.clone(),
            namespace: ns.to_owned(),
            vips: spec.addresses.clone(),
            ports: ports.clone(),
            endpoints: endpoints.clone().unwrap_or_else(|| {
                vec![Endpoint::new(
                    host.clone(),
                    Arc::new(targets.iter().cloned().collect()),
                    Arc::default(),
                    true,
                    String::new(),
                    None,
                )]
            }),
            resolution,
            kubernetes: false,
            external: spec.location != Some(Location::MeshInternal),
            export_to: spec.export_to.clone(),
            subject_alt_names: spec.subject_alt_names.clone(),
            persistent_session: None,
            auto_vips: Vec::new(),
            no_gateway_port_translation: false,
        })
        .collect()
}

/// A Service's load balancer addresses (`status.loadBalancer.ingress`):
/// each entry's IP, else its hostname (AWS's load balancers have one).
pub(crate) fn load_balancer_addresses(
    svc: &k8s_openapi::api::core::v1::Service,
) -> impl Iterator<Item = &String> {
    svc.status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter_map(|i| {
            i.ip.as_ref()
                .filter(|ip| !ip.is_empty())
                .or(i.hostname.as_ref())
        })
}

/// The label of a ServiceEntry opting it out of address allocation with
/// `false` (Istio's `networking.istio.io/enable-autoallocate-ip`).
pub const AUTO_ALLOCATE_LABEL: &str = "networking.istio.io/enable-autoallocate-ip";

/// Whether the hosts of a ServiceEntry get allocated addresses
/// ([`Snapshot::allocate_addresses`]), as Istio's `ShouldV2AutoAllocateIP`:
/// it has no `addresses`, a resolution other than `NONE` (a passthrough
/// could not honour them), and no [`AUTO_ALLOCATE_LABEL`] `false`.
fn allocates_addresses(
    spec: &crds::ServiceEntrySpec,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let opted_out = labels
        .and_then(|l| l.get(AUTO_ALLOCATE_LABEL))
        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    spec.addresses.is_empty()
        && !matches!(spec.resolution, Some(Resolution::None) | None)
        && !opted_out
}

/// The names of the WorkloadEntries on a unix domain socket that a
/// ServiceEntry's `workloadSelector` picks: none of them is its endpoint
/// (see [`service_entry_services`]).
fn selected_sockets(
    spec: &crds::ServiceEntrySpec,
    workloads: &Workloads<'_>,
    ns: &str,
) -> Vec<String> {
    let Some(selector) = &spec.workload_selector else {
        return Vec::new();
    };
    workloads
        .named_entries_in(ns)
        .filter(|(_, (we, _))| {
            we.spec
                .address
                .as_deref()
                .is_some_and(|a| a.starts_with(crate::UNIX_PREFIX))
                && selects_workload(&selector.labels, &we.spec.labels)
        })
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Whether a selector's `labels` pick a workload with `labels`: a selector
/// with labels, all of them carried (Istio's `SelectsNonEmpty`).
fn selects_workload(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The endpoint a WorkloadEntry (an object, or inline in a ServiceEntry)
/// is, with its target `ports` by service port name; `None` without an
/// address unless it is in a network (then only other networks reach it,
/// through that network's gateways: Split Horizon EDS); a `unix://` one
/// is a socket on the proxy's host (Envoy's `Pipe`). Istio's
/// `convertWorkloadEntryToWorkloadInstance`: the locality is the entry's,
/// else its `istio-locality` label; it takes Istio mTLS when its
/// `security.istio.io/tlsMode` label says `istio` or, without that label,
/// when it names a service account.
fn workload_entry_endpoint(
    we: &crds::WorkloadEntrySpec,
    ports: Arc<BTreeMap<String, u32>>,
) -> Option<Endpoint> {
    let networked = we.network.as_ref().is_some_and(|n| !n.is_empty())
        || we.labels.get(NETWORK_LABEL).is_some_and(|n| !n.is_empty());
    let address = we.address.clone().unwrap_or_default();
    if address.is_empty() && !networked {
        return None;
    }
    let locality = we
        .locality
        .clone()
        .filter(|l| !l.is_empty())
        .or_else(|| we.labels.get("istio-locality").map(|l| l.replace('.', "/")))
        .unwrap_or_default();
    let service_account = we.service_account.clone().filter(|s| !s.is_empty());
    let sidecar = !we.labels.contains_key(TLS_MODE_LABEL) && service_account.is_some();
    let mut endpoint = Endpoint::new(
        address,
        ports,
        Arc::new(we.labels.clone()),
        true,
        locality,
        service_account,
    );
    endpoint.in_mesh |= sidecar;
    endpoint.weight = we.weight.filter(|w| *w > 0).unwrap_or(1);
    if let Some(network) = we.network.as_ref().filter(|n| !n.is_empty()) {
        endpoint.network.clone_from(network);
    }
    Some(endpoint)
}

/// Where a Kubernetes service's ports reach a WorkloadEntry, by service
/// port name (Istio's `findServiceTargetPort`): a numeric `targetPort`
/// (the port itself when unset, as the API server defaults it) unless the
/// entry has a port of the service port's name; a named `targetPort` only
/// through the entry's port of that name. UDP ports are left out.
fn kubernetes_targets(spec: &ServiceSpec) -> Vec<(String, KubernetesTarget)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    spec.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref() != Some("UDP"))
        .filter_map(|p| {
            let name = p.name.clone().unwrap_or_default();
            let target = match &p.target_port {
                Some(IntOrString::String(named)) => KubernetesTarget::Named(named.clone()),
                Some(IntOrString::Int(n)) if *n > 0 => {
                    KubernetesTarget::Number(u32::try_from(*n).ok()?)
                }
                _ => KubernetesTarget::Number(u32::try_from(p.port).ok()?),
            };
            Some((name, target))
        })
        .collect()
}

/// A Kubernetes service port's `targetPort`, as a WorkloadEntry reads it.
enum KubernetesTarget {
    /// A port number (an entry's port of the service port's name wins).
    Number(u32),
    /// A container port name: the entry's port of that name, or none.
    Named(String),
}

/// The endpoint WorkloadEntry `entry` is of a Kubernetes service whose ports
/// reach it at `targets` ([`kubernetes_targets`]); `None` when it has no
/// IP address (Istio selects no hostname or socket entries for Kubernetes
/// services).
fn kubernetes_entry_endpoint(
    entry: &crds::WorkloadEntry,
    targets: &[(String, KubernetesTarget)],
) -> Option<Endpoint> {
    let we = &entry.spec;
    we.address.as_deref()?.parse::<std::net::IpAddr>().ok()?;
    let own = |name: &str| we.ports.get(name).copied().filter(|p| *p > 0);
    let ports = targets
        .iter()
        .map(|(name, target)| {
            let port = match target {
                KubernetesTarget::Number(n) => own(name).unwrap_or(*n),
                // Not served: 0 (see `Endpoint::ports`).
                KubernetesTarget::Named(target) => own(target).unwrap_or(0),
            };
            (name.clone(), port)
        })
        .collect();
    entry_object_endpoint(entry, Arc::new(ports))
}

/// The endpoint of the WorkloadEntry object `we` ([`workload_entry_endpoint`]),
/// ready only while it is healthy ([`crds::WorkloadEntry::healthy`]: a
/// health-checked entry whose `Healthy` condition is not `True` is left
/// out of EDS, as istiod leaves unhealthy endpoints out; it keeps its
/// place everywhere else, e.g. its own proxy's inbound).
fn entry_object_endpoint(
    we: &crds::WorkloadEntry,
    ports: Arc<BTreeMap<String, u32>>,
) -> Option<Endpoint> {
    let mut endpoint = workload_entry_endpoint(&we.spec, ports)?;
    endpoint.ready = we.healthy();
    Some(endpoint)
}

/// The workloads a selector can pick besides a Kubernetes service's own
/// slices: WorkloadEntry objects and (for ServiceEntries) pods, by
/// (namespace, name).
#[derive(Default)]
struct Workloads<'a> {
    entries: BTreeMap<(&'a str, &'a str), Read<'a, crds::WorkloadEntry>>,
    /// Filled only when a ServiceEntry has a `workloadSelector`.
    pods: BTreeMap<(&'a str, &'a str), &'a PodInfo>,
}

impl<'a> Workloads<'a> {
    /// The WorkloadEntries of namespace `ns` with their names, by name.
    fn named_entries_in<'s>(
        &'s self,
        ns: &'s str,
    ) -> impl Iterator<Item = (&'a str, Read<'a, crds::WorkloadEntry>)> + 's {
        self.entries
            .range((ns, "")..)
            .take_while(move |((n, _), _)| *n == ns)
            .map(|((_, name), entry)| (*name, *entry))
    }

    /// The WorkloadEntries of namespace `ns`, by name.
    fn entries_in<'s>(
        &'s self,
        ns: &'s str,
    ) -> impl Iterator<Item = Read<'a, crds::WorkloadEntry>> + 's {
        self.named_entries_in(ns).map(|(_, entry)| entry)
    }

    /// The pods of namespace `ns`, by name.
    fn pods_in<'s>(&'s self, ns: &'s str) -> impl Iterator<Item = &'a PodInfo> + 's {
        self.pods
            .range((ns, "")..)
            .take_while(move |((n, _), _)| *n == ns)
            .map(|(_, pod)| *pod)
    }

    /// The WorkloadEntries of namespace `ns` that Kubernetes service `svc`
    /// selects (Istio's `WorkloadInstanceHandler`): a selector with labels,
    /// a service with a cluster IP, entries with labels.
    fn selected_by_service(
        &self,
        ns: &str,
        svc: &k8s_openapi::api::core::v1::Service,
    ) -> Vec<Read<'a, crds::WorkloadEntry>> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        let Some(spec) = &svc.spec else {
            return Vec::new();
        };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            return Vec::new();
        };
        if spec.cluster_ip.as_deref() == Some("None") {
            return Vec::new();
        }
        self.entries_in(ns)
            .filter(|(we, _)| selects_workload(selector, &we.spec.labels))
            .collect()
    }
}

/// The [`Inputs`] of a Kubernetes service (`service`, its slices, the
/// WorkloadEntries it selects, the Pod of each of their endpoints); `None`
/// when any of them was not shared (its identity unknown).
fn inputs(
    service: Option<&Arc<Object>>,
    slices: &[Read<'_, EndpointSlice>],
    pods: &[Option<Read<'_, PodInfo>>],
    entries: &[Read<'_, crds::WorkloadEntry>],
) -> Option<Inputs> {
    let objects = std::iter::once(service)
        .chain(slices.iter().map(|(_, shared)| *shared))
        .chain(entries.iter().map(|(_, shared)| *shared))
        .map(|shared| shared.map(|o| Some(Arc::clone(o))));
    let pods = pods.iter().map(|pod| match pod {
        Some((_, shared)) => shared.map(|o| Some(Arc::clone(o))),
        None => Some(None),
    });
    objects.chain(pods).collect()
}

/// A pod's locality as Istio reads it: the `istio-locality` label
/// (`region.zone.subzone`), else the topology labels, else the slice's zone.
fn pod_locality(labels: &BTreeMap<String, String>, slice_zone: Option<&str>) -> String {
    if let Some(l) = labels.get("istio-locality") {
        return l.replace('.', "/");
    }
    let region = labels
        .get("topology.kubernetes.io/region")
        .map(String::as_str)
        .unwrap_or("");
    let zone = labels
        .get("topology.kubernetes.io/zone")
        .map(String::as_str)
        .or(slice_zone)
        .unwrap_or("");
    let subzone = labels
        .get("topology.istio.io/subzone")
        .map(String::as_str)
        .unwrap_or("");
    if region.is_empty() && zone.is_empty() && subzone.is_empty() {
        String::new()
    } else if subzone.is_empty() {
        format!("{region}/{zone}")
    } else {
        format!("{region}/{zone}/{subzone}")
    }
}

/// The address -> served ports index behind [`Snapshot::inbound_ports`]:
/// every endpoint of a statically resolved service, each service port
/// mapped to the endpoint's target port.
/// Also each address's services by target port (behind
/// [`Snapshot::inbound_services`]).
type InboundIndex = (
    HashMap<String, Vec<InboundPort>>,
    HashMap<String, Vec<(u32, String)>>,
);

fn inbound_index(services: &BTreeMap<String, Arc<Service>>) -> InboundIndex {
    let mut index: HashMap<String, Vec<InboundPort>> = HashMap::new();
    let mut by_service: HashMap<String, Vec<(u32, String)>> = HashMap::new();
    for svc in services.values() {
        if svc.resolution != ServiceResolution::Static {
            continue;
        }
        for ep in svc.endpoints.iter().filter(|e| !e.address.is_empty()) {
            for sp in &svc.ports {
                let Some(port) = ep.target_port(&sp.name) else {
                    continue;
                };
                index
                    .entry(ep.address.clone())
                    .or_default()
                    .push(InboundPort {
                        port,
                        protocol: sp.protocol,
                    });
                by_service
                    .entry(ep.address.clone())
                    .or_default()
                    .push((port, svc.hostname.clone()));
            }
        }
    }
    for ports in index.values_mut() {
        // Sorted by port; on one port, the first service's protocol stays.
        ports.sort_by_key(|p| p.port);
        ports.dedup_by_key(|p| p.port);
    }
    for services in by_service.values_mut() {
        services.sort_unstable();
        services.dedup();
    }
    (index, by_service)
}

/// Istio's root namespace, where mesh-wide Sidecar defaults live.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// Whether a Sidecar's `egress.hosts` (`ns/host`) let its workload reach `svc`.
fn egress_allows(sc: &Config<crds::SidecarSpec>, svc: &Service) -> bool {
    // No egress listener: Istio's default one, `*/*`.
    if sc.spec.egress.is_empty() {
        return true;
    }
    hosts_allow(sc, sc.spec.egress.iter().flat_map(|e| &e.hosts), svc)
}

/// Whether the Sidecar `sc` imports `svc` on its `port` (Istio's egress
/// listeners by port): the listeners that name that port if some do,
/// else those without a port (a port bound by one listener is not served
/// by the catch-all). Only asked where some listener names a port.
pub(crate) fn egress_allows_port(sc: &Config<crds::SidecarSpec>, svc: &Service, port: u32) -> bool {
    let on_port =
        |e: &&crds::sidecar::IstioEgressListener| e.port.as_ref().map(|p| p.number) == Some(port);
    let bound = sc.spec.egress.iter().any(|e| on_port(&e));
    let listeners = sc
        .spec
        .egress
        .iter()
        .filter(|e| if bound { on_port(e) } else { e.port.is_none() });
    hosts_allow(sc, listeners.flat_map(|e| &e.hosts), svc)
}

/// Whether one of an egress listener's `hosts` (`namespace/dnsName`)
/// names `svc`, for the Sidecar `sc` (`.` its namespace).
fn hosts_allow<'h>(
    sc: &Config<crds::SidecarSpec>,
    mut hosts: impl Iterator<Item = &'h String>,
    svc: &Service,
) -> bool {
    hosts.any(|h| {
        let Some((ns, host)) = h.split_once('/') else {
            return false;
        };
        let ns_ok = match ns {
            "*" => true,
            "~" => false,
            "." => svc.namespace == sc.namespace,
            other => svc.namespace == other,
        };
        let host_ok = host == "*"
            || host == svc.hostname
            || host
                .strip_prefix('*')
                .is_some_and(|suffix| svc.hostname.ends_with(suffix));
        ns_ok && host_ok
    })
}

/// Istio's `exportTo` rule: empty or `*` is every namespace, `.` the
/// owner's own, otherwise the namespaces named.
pub fn exported_to(export_to: &[String], owner_ns: &str, viewer_ns: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == viewer_ns || (e == "." && owner_ns == viewer_ns))
}

/// The kind of proxy (first field of the node ID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// `sidecar~...`: an application's sidecar.
    Sidecar,
    /// `router~...`: an ingress or egress gateway.
    Router,
}

/// The proxy being configured, from its xDS node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    /// Sidecar or router.
    pub kind: ProxyKind,
    /// The proxy's IP (second field of the node ID).
    pub ip: String,
    /// `pod.namespace` (third field of the node ID).
    pub id: String,
    /// Namespace: node metadata `NAMESPACE`, else from `id`.
    pub namespace: String,
    /// Workload labels: node metadata `LABELS`.
    pub labels: BTreeMap<String, String>,
    /// `region/zone/subzone` from the xDS node's `locality` (empty: unknown).
    pub locality: String,
    /// The proxy's network: node metadata `NETWORK` (Istio's
    /// `ISTIO_META_NETWORK`); empty: unknown, every endpoint reached
    /// directly.
    pub network: String,
    /// The other networks whose endpoints the proxy wants through their
    /// gateways: node metadata `REQUESTED_NETWORK_VIEW` (comma-separated);
    /// empty: every network (Istio's `GetNetworkView`).
    pub network_view: Vec<String>,
    /// The proxy's Envoy has the stats access logger
    /// (`envoy.access_loggers.stats` among the xDS node's `extensions`),
    /// with which Istio's standard metrics are made
    /// ([`crate::metrics`]); false: no metrics are configured (an Envoy
    /// without it would refuse every listener carrying one).
    pub stats_logger: bool,
    /// The node metadata's string values (`ISTIO_VERSION` among them), which
    /// an EnvoyFilter's `match.proxy` reads.
    pub metadata: BTreeMap<String, String>,
}

impl Proxy {
    /// Whether the proxy's agent runs Istio's DNS proxy: node metadata
    /// `DNS_CAPTURE` `true` (the agent's `ISTIO_META_DNS_CAPTURE`), on a
    /// sidecar; only such proxies get a name table ([`crate::nds`]).
    pub fn dns_capture(&self) -> bool {
        self.kind == ProxyKind::Sidecar
            && self
                .metadata
                .get("DNS_CAPTURE")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// What decides this proxy's generated config in `snap`: proxies with
    /// the same key get identical resources (the generation cache's key).
    pub fn config_key(&self, snap: &Snapshot) -> ConfigKey {
        let labels = self
            .labels
            .iter()
            .filter(|(k, _)| snap.label_keys.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sidecar = snap.sidecar_for(self);
        let own_address = sidecar
            .filter(|sc| {
                sc.spec.ingress.iter().any(|i| {
                    i.default_endpoint.as_deref().is_some_and(names_own_address)
                        || (i.capture_mode.as_deref() == Some("NONE")
                            && i.bind.as_deref().is_none_or(str::is_empty))
                })
            })
            .map(|_| self.ip.clone());
        ConfigKey {
            kind: self.kind as u8,
            namespace: self.namespace.clone(),
            locality: self.locality.clone(),
            labels,
            sidecar: sidecar.map(|sc| sc.key()),
            inbound: match self.kind {
                ProxyKind::Sidecar => snap.inbound_ports(&self.ip).to_vec(),
                ProxyKind::Router => Vec::new(),
            },
            own_address,
            // Split Horizon EDS, or a `failoverPriority` on the network.
            network: if snap.failover_keys.contains(NETWORK_LABEL) {
                self.network.clone()
            } else {
                snap.mesh.networks.split_view(self).0.to_owned()
            },
            network_view: snap.mesh.networks.split_view(self).1.to_vec(),
            stats_logger: self.stats_logger,
            inbound_services: match self.kind {
                ProxyKind::Sidecar if self.stats_logger => snap.inbound_services(&self.ip).to_vec(),
                _ => Vec::new(),
            },
            gateway_ports: match self.kind {
                ProxyKind::Router => snap.gateway_ports(&self.ip),
                ProxyKind::Sidecar => Vec::new(),
            },
            dns_capture: self.dns_capture(),
            proxy_patches: crate::envoy_filter::proxy_matched(snap, self),
        }
    }
}

/// What decides a proxy's generated config (see [`Proxy::config_key`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConfigKey {
    /// Sidecar or router.
    pub kind: u8,
    /// The proxy's namespace.
    pub namespace: String,
    /// The proxy's locality.
    pub locality: String,
    /// The labels that configs select on.
    pub labels: BTreeMap<String, String>,
    /// The Sidecar resource that applies (`namespace/name`).
    pub sidecar: Option<String>,
    /// The ports the proxy's workload serves (its `virtualInbound` chains).
    pub inbound: Vec<InboundPort>,
    /// The proxy's own address, when its config names it: a Sidecar
    /// ingress listener whose `defaultEndpoint` is `0.0.0.0:PORT`, or one
    /// with `captureMode: NONE` and no `bind` (it listens there).
    pub own_address: Option<String>,
    /// The proxy's network, in a mesh with network gateways (Split
    /// Horizon EDS) or a `failoverPriority` on [`NETWORK_LABEL`]; empty
    /// otherwise.
    pub network: String,
    /// The proxy's `REQUESTED_NETWORK_VIEW`, in a mesh with network
    /// gateways; empty otherwise.
    pub network_view: Vec<String>,
    /// [`Proxy::stats_logger`]: whether Istio's standard metrics are
    /// configured.
    pub stats_logger: bool,
    /// With [`ConfigKey::stats_logger`], the services the sidecar's
    /// workload serves ([`Snapshot::inbound_services`]), which its inbound
    /// clusters name; empty otherwise.
    pub inbound_services: Vec<(u32, String)>,
    /// A gateway's port translation ([`Snapshot::gateway_ports`]); empty
    /// for sidecars.
    pub gateway_ports: Vec<(u32, u32)>,
    /// [`Proxy::dns_capture`]: it gets a name table.
    pub dns_capture: bool,
    /// Of the EnvoyFilter patches with a `match.proxy`, those this proxy's
    /// version and metadata match (by position); empty without such patches.
    pub proxy_patches: Vec<usize>,
}

/// Whether a Sidecar ingress `defaultEndpoint` names the workload's own
/// address (`0.0.0.0:PORT`, `[::]:PORT`, `:PORT`).
pub fn names_own_address(default_endpoint: &str) -> bool {
    default_endpoint
        .rsplit_once(':')
        .is_some_and(|(host, _)| matches!(host, "0.0.0.0" | "[::]" | "::" | ""))
}

/// Why a node ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id {id:?}: {reason} (expected TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.DOMAIN)")]
pub struct InvalidNodeId {
    /// The ID as received.
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Proxy {
    /// Parses Istio's node ID `sidecar~10.1.2.3~pod.ns~ns.svc.cluster.local`;
    /// `namespace` (node metadata `NAMESPACE`) overrides the one in the ID.
    ///
    /// # Errors
    /// [`InvalidNodeId`] when the ID does not have four `~`-separated parts
    /// or an unknown type.
    pub fn from_node_id(
        id: &str,
        namespace: Option<String>,
        labels: BTreeMap<String, String>,
    ) -> Result<Proxy, InvalidNodeId> {
        let err = |reason| InvalidNodeId {
            id: id.to_owned(),
            reason,
        };
        let parts: Vec<&str> = id.split('~').collect();
        let [kind, ip, pod_id, _domain] = parts.as_slice() else {
            return Err(err("needs four parts separated by '~'"));
        };
        let kind = match *kind {
            "sidecar" => ProxyKind::Sidecar,
            "router" => ProxyKind::Router,
            _ => return Err(err("type must be sidecar or router")),
        };
        let namespace = namespace
            .filter(|n| !n.is_empty())
            .or_else(|| pod_id.split_once('.').map(|(_, ns)| ns.to_owned()))
            .ok_or_else(|| err("no namespace (pod.namespace or NAMESPACE metadata)"))?;
        Ok(Proxy {
            kind,
            ip: (*ip).to_owned(),
            id: (*pod_id).to_owned(),
            namespace,
            labels,
            locality: String::new(),
            network: String::new(),
            network_view: Vec::new(),
            stats_logger: false,
            metadata: BTreeMap::new(),
        })
    }
}
