//! `networking.istio.io` DestinationRule: policies applied after routing,
//! and named subsets of a service's endpoints.
//! Follows `istio.networking.v1.DestinationRule` field for field.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, MatchLabelSelector, PortSelector};

/// Istio `DestinationRule` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "DestinationRule",
    namespaced,
    shortname = "dr"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    /// The service this rule applies to (short name or FQDN).
    #[serde(default)]
    pub host: String,
    /// Policies for all of `host`'s traffic.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named subsets of endpoints, selected by labels.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// Namespaces this rule is visible to.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// The workloads of the rule's namespace it applies to (their outbound
    /// traffic), before a rule without one; unset: every workload that sees it.
    #[serde(default)]
    pub workload_selector: Option<MatchLabelSelector>,
}

impl DestinationRuleSpec {
    /// Whether some client TLS setting of the rule names a
    /// `credentialName` Secret.
    /// Asked per service on a gateway's config generation: a walk over the
    /// settings, without [`DestinationRuleSpec::client_tls`]'s field paths.
    pub fn names_credential(&self) -> bool {
        let named = |tls: &Option<ClientTlsSettings>| {
            tls.as_ref().is_some_and(|t| t.credential_name.is_some())
        };
        self.traffic_policy
            .iter()
            .chain(
                self.subsets
                    .iter()
                    .filter_map(|s| s.traffic_policy.as_ref()),
            )
            .any(|p| named(&p.tls) || p.port_level_settings.iter().any(|l| named(&l.tls)))
    }

    /// The label keys the rule's `localityLbSetting.failoverPriority`
    /// lists compare between the client proxy and the endpoints (the
    /// entries without `=`; a `key=value` entry compares the endpoints
    /// with its value alone), from every traffic policy of the rule.
    pub fn failover_priority_keys(&self) -> impl Iterator<Item = &str> {
        self.traffic_policy
            .iter()
            .chain(
                self.subsets
                    .iter()
                    .filter_map(|s| s.traffic_policy.as_ref()),
            )
            .flat_map(|p| {
                p.load_balancer.iter().chain(
                    p.port_level_settings
                        .iter()
                        .filter_map(|l| l.load_balancer.as_ref()),
                )
            })
            .filter_map(|lb| lb.locality_lb_setting.as_ref())
            .flat_map(LocalityLbSetting::failover_priority_keys)
    }

    /// Every client TLS setting of the rule, with its field path: the
    /// traffic policy's and its ports', then each subset's and its ports'
    /// (`spec.subsets[1].trafficPolicy.portLevelSettings[0].tls`).
    pub fn client_tls(&self) -> Vec<(String, &ClientTlsSettings)> {
        fn walk<'a>(
            at: String,
            p: &'a TrafficPolicy,
            out: &mut Vec<(String, &'a ClientTlsSettings)>,
        ) {
            if let Some(tls) = &p.tls {
                out.push((format!("{at}.tls"), tls));
            }
            for (i, level) in p.port_level_settings.iter().enumerate() {
                if let Some(tls) = &level.tls {
                    out.push((format!("{at}.portLevelSettings[{i}].tls"), tls));
                }
            }
        }
        let mut out = Vec::new();
        if let Some(p) = &self.traffic_policy {
            walk("spec.trafficPolicy".into(), p, &mut out);
        }
        for (i, subset) in self.subsets.iter().enumerate() {
            if let Some(p) = &subset.traffic_policy {
                walk(format!("spec.subsets[{i}].trafficPolicy"), p, &mut out);
            }
        }
        out
    }
}

/// Istio `Subset`: a version of a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    /// Subset name (DNS-1123 label), used in cluster names `outbound|port|name|host`.
    pub name: String,
    /// Endpoint labels the subset selects (all must match).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides of the rule's traffic policy for this subset.
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// Istio `TrafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Load balancing algorithm.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits (Envoy circuit breakers).
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Passive health checking (Envoy outlier detection).
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
    /// Per-port overrides.
    #[serde(default)]
    pub port_level_settings: Vec<PortTrafficPolicy>,
    /// Tunnelling of TCP (and TLS) connections through an HTTP proxy
    /// (`CONNECT` or `POST`): Envoy's `tcp_proxy` `tunneling_config` on
    /// the routes whose one destination this rule (or its subset) is.
    /// Not together with `proxyProtocol`.
    #[serde(default)]
    pub tunnel: Option<TunnelSettings>,
    /// The PROXY protocol header sent first on every upstream connection
    /// (Envoy's `envoy.transport_sockets.upstream_proxy_protocol` around
    /// the cluster's transport sockets).
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Retry budget.
    #[serde(default)]
    pub retry_budget: Option<RetryBudget>,
}

/// Istio `TrafficPolicy.PortTrafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortTrafficPolicy {
    /// The port these settings apply to.
    #[serde(default)]
    pub port: Option<PortSelector>,
    /// Load balancing algorithm.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerSettings>,
    /// Connection limits.
    #[serde(default)]
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// Outlier detection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    /// Upstream TLS.
    #[serde(default)]
    pub tls: Option<ClientTlsSettings>,
}

/// Istio `LoadBalancerSettings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSettings {
    /// A standard algorithm.
    #[serde(default)]
    pub simple: Option<SimpleLb>,
    /// Hash-based session affinity.
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHashLb>,
    /// Locality-weighted load balancing / failover.
    #[serde(default)]
    pub locality_lb_setting: Option<LocalityLbSetting>,
    /// Zone-aware load balancing.
    #[serde(default)]
    pub zone_aware_lb_setting: Option<ZoneAwareLbSetting>,
    /// Slow start window, e.g. `"60s"`.
    #[serde(default)]
    pub warmup_duration_secs: Option<Duration>,
    /// Slow start.
    #[serde(default)]
    pub warmup: Option<WarmupConfiguration>,
    /// Client-side weighted round robin from backend utilization.
    #[serde(default)]
    pub backend_utilization: Option<BackendUtilization>,
}

/// Istio `LoadBalancerSettings.SimpleLB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum SimpleLb {
    Unspecified,
    LeastConn,
    Random,
    Passthrough,
    RoundRobin,
    LeastRequest,
}

/// Istio `LoadBalancerSettings.ConsistentHashLB`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashLb {
    /// Hash on this header.
    #[serde(default)]
    pub http_header_name: Option<String>,
    /// Hash on this cookie (generated if absent).
    #[serde(default)]
    pub http_cookie: Option<HttpCookie>,
    /// Hash on the source IP.
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    /// Hash on this query parameter.
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    /// Ring hash.
    #[serde(default)]
    pub ring_hash: Option<RingHash>,
    /// Maglev.
    #[serde(default)]
    pub maglev: Option<MagLev>,
    /// Deprecated ring size.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

/// Istio `ConsistentHashLB.HTTPCookie`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie path.
    #[serde(default)]
    pub path: Option<String>,
    /// Cookie lifetime.
    #[serde(default)]
    pub ttl: Option<Duration>,
    /// Extra cookie attributes.
    #[serde(default)]
    pub attributes: Vec<CookieAttribute>,
}

/// Istio `ConsistentHashLB.HTTPCookie.Attribute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CookieAttribute {
    /// Attribute name.
    pub name: String,
    /// Attribute value.
    #[serde(default)]
    pub value: Option<String>,
}

/// Istio `ConsistentHashLB.RingHash`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    /// Minimum ring size.
    #[serde(default)]
    pub minimum_ring_size: Option<u64>,
}

/// Istio `ConsistentHashLB.MagLev`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MagLev {
    /// Table size (prime).
    #[serde(default)]
    pub table_size: Option<u64>,
}

/// Istio `LocalityLoadBalancerSetting`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    /// Weighted distribution between localities.
    #[serde(default)]
    pub distribute: Vec<LocalityDistribute>,
    /// Failover regions.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Failover ordered by label priority: label keys (`key`, compared
    /// between the client proxy and each endpoint) or `key=value` entries
    /// (compared with the endpoint's label alone). An endpoint matching
    /// all N entries gets priority 0; one whose first mismatch is the
    /// `j`th entry gets N - j. Region, zone and subzone come from the
    /// localities when not labels.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Enable/disable locality load balancing.
    #[serde(default)]
    pub enabled: Option<bool>,
}

impl LocalityLbSetting {
    /// The label keys `failoverPriority` compares between the client
    /// proxy and the endpoints: its entries without `=`.
    pub fn failover_priority_keys(&self) -> impl Iterator<Item = &str> {
        self.failover_priority
            .iter()
            .filter(|e| !e.contains('='))
            .map(String::as_str)
    }
}

/// Istio `LocalityLoadBalancerSetting.Distribute`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalityDistribute {
    /// Origin locality `region/zone/subzone` (wildcards allowed).
    #[serde(default)]
    pub from: Option<String>,
    /// Destination localities and their weights (sum 100).
    #[serde(default)]
    pub to: BTreeMap<String, u32>,
}

/// Istio `LocalityLoadBalancerSetting.Failover`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalityFailover {
    /// Origin region.
    #[serde(default)]
    pub from: Option<String>,
    /// Failover region.
    #[serde(default)]
    pub to: Option<String>,
}

/// Istio `ZoneAwareLoadBalancerSetting`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZoneAwareLbSetting {
    /// Enable zone awareness.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Failover regions.
    #[serde(default)]
    pub failover: Vec<LocalityFailover>,
    /// Failover ordered by label priority.
    #[serde(default)]
    pub failover_priority: Vec<String>,
    /// Minimum cluster size for zone awareness.
    #[serde(default)]
    pub min_cluster_size: Option<u64>,
}

/// Istio `WarmupConfiguration`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmupConfiguration {
    /// Warm-up window.
    #[serde(default)]
    pub duration: Option<Duration>,
    /// Starting share of traffic, percent.
    #[serde(default)]
    pub minimum_percent: Option<f64>,
    /// Curve aggression.
    #[serde(default)]
    pub aggression: Option<f64>,
}

/// Istio `BackendUtilizationLoadBalancing`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendUtilization {
    /// How long a weight stays valid.
    #[serde(default)]
    pub weight_expiration_period: Option<Duration>,
    /// Blackout period for new weights.
    #[serde(default)]
    pub weight_stabilization_period: Option<Duration>,
    /// Weight recomputation interval.
    #[serde(default)]
    pub weight_update_period: Option<Duration>,
    /// Error penalty, percent.
    #[serde(default)]
    pub error_utilization_penalty_percent: Option<u32>,
    /// ORCA metric names.
    #[serde(default)]
    pub metric_names_for_computing_utilization: Vec<String>,
}

/// Istio `ConnectionPoolSettings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPoolSettings {
    /// TCP limits.
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    /// HTTP limits.
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

/// Istio `ConnectionPoolSettings.TCPSettings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSettings {
    /// Max connections to a destination host.
    #[serde(default)]
    pub max_connections: Option<i32>,
    /// TCP connect timeout.
    #[serde(default)]
    pub connect_timeout: Option<Duration>,
    /// TCP keepalive.
    #[serde(default)]
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// Max connection lifetime.
    #[serde(default)]
    pub max_connection_duration: Option<Duration>,
    /// Idle timeout for TCP connections.
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
}

/// Istio `TCPSettings.TcpKeepalive`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Probes before the connection is dead.
    #[serde(default)]
    pub probes: Option<u32>,
    /// Idle time before probing.
    #[serde(default)]
    pub time: Option<Duration>,
    /// Interval between probes.
    #[serde(default)]
    pub interval: Option<Duration>,
}

/// Istio `ConnectionPoolSettings.HTTPSettings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// Max pending HTTP requests.
    #[serde(default)]
    pub http1_max_pending_requests: Option<i32>,
    /// Max active requests.
    #[serde(default)]
    pub http2_max_requests: Option<i32>,
    /// Max requests per connection.
    #[serde(default)]
    pub max_requests_per_connection: Option<i32>,
    /// Max outstanding retries.
    #[serde(default)]
    pub max_retries: Option<i32>,
    /// Idle timeout for upstream connections.
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
    /// `DEFAULT`, `DO_NOT_UPGRADE`, `UPGRADE`.
    #[serde(default)]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// Use the downstream protocol upstream.
    #[serde(default)]
    pub use_client_protocol: Option<bool>,
    /// Max concurrent HTTP/2 streams.
    #[serde(default)]
    pub max_concurrent_streams: Option<i32>,
    /// HTTP/2 keepalive pings.
    #[serde(default)]
    pub http2_keep_alive: Option<Http2KeepAlive>,
}

/// Istio `HTTPSettings.H2UpgradePolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

/// Istio `HTTPSettings.Http2KeepAlive`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2KeepAlive {
    /// Ping interval.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// Ping timeout.
    #[serde(default)]
    pub timeout: Option<Duration>,
}

/// Istio `OutlierDetection`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// Split local-origin errors from external ones.
    #[serde(default)]
    pub split_external_local_origin_errors: Option<bool>,
    /// Local-origin failures before ejection.
    #[serde(default)]
    pub consecutive_local_origin_failures: Option<u32>,
    /// 502/503/504 before ejection.
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    /// 5xx before ejection.
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Deprecated, as `consecutiveGatewayErrors`.
    #[serde(default)]
    pub consecutive_errors: Option<i32>,
    /// Ejection sweep interval.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// Minimum ejection duration.
    #[serde(default)]
    pub base_ejection_time: Option<Duration>,
    /// Max share of hosts ejected, percent.
    #[serde(default)]
    pub max_ejection_percent: Option<i32>,
    /// Outlier detection stops below this healthy share, percent.
    #[serde(default)]
    pub min_health_percent: Option<i32>,
    /// Extra HTTP codes counted as errors.
    #[serde(default)]
    pub outlier_detection_http_error_codes: Vec<u32>,
}

/// Istio `ClientTLSSettings`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSettings {
    /// `DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`.
    #[serde(default)]
    pub mode: Option<ClientTlsMode>,
    /// Client certificate file (MUTUAL).
    #[serde(default)]
    pub client_certificate: Option<String>,
    /// Client key file (MUTUAL).
    #[serde(default)]
    pub private_key: Option<String>,
    /// CA bundle file to verify the server.
    #[serde(default)]
    pub ca_certificates: Option<String>,
    /// Secret with the certificates (gateways).
    #[serde(default)]
    pub credential_name: Option<String>,
    /// Accepted server SANs.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// SNI to send.
    #[serde(default)]
    pub sni: Option<String>,
    /// Skip server verification.
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    /// CRL file.
    #[serde(default)]
    pub ca_crl: Option<String>,
    /// Not an Istio field (never read from or written to YAML): the SDS
    /// certificate (`kubernetes-gateway://<namespace>/<name>`) a Gateway
    /// API gateway presents to the backends a BackendTLSPolicy reaches,
    /// from its Gateway's `spec.tls.backend.clientCertificateRef` (set by
    /// the translator's Gateway API conversion).
    #[serde(skip)]
    pub client_credential: Option<String>,
}

/// Istio `ClientTLSSettings.TLSmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

/// Istio `TrafficPolicy.TunnelSettings`: where the HTTP proxy a
/// destination stands for is asked to connect.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TunnelSettings {
    /// `CONNECT` (the default) or `POST`, the request that opens the
    /// tunnel.
    #[serde(default)]
    pub protocol: Option<String>,
    /// Host to tunnel to (an FQDN or an IP address), sent as the request's
    /// authority `targetHost:targetPort`.
    pub target_host: String,
    /// Port to tunnel to (1..=65535).
    pub target_port: u32,
}

impl TunnelSettings {
    /// Whether the tunnel is opened with `POST` rather than `CONNECT`.
    pub fn uses_post(&self) -> bool {
        self.protocol.as_deref() == Some("POST")
    }
}

/// Istio `TrafficPolicy.ProxyProtocol`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// The PROXY protocol version; `V1` (the text header) when unset.
    #[serde(default)]
    pub version: Option<ProxyProtocolVersion>,
}

/// Istio `TrafficPolicy.ProxyProtocol.VERSION` (Envoy's
/// `ProxyProtocolConfig.Version`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ProxyProtocolVersion {
    /// The human-readable header (`PROXY TCP4 src dst sport dport`).
    #[default]
    V1,
    /// The binary header.
    V2,
}

/// Istio `TrafficPolicy.RetryBudget`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    /// Share of active requests that may be retries, percent.
    #[serde(default)]
    pub percent: Option<f64>,
    /// Retries always allowed.
    #[serde(default)]
    pub min_retry_concurrency: Option<u32>,
    /// Budget window.
    #[serde(default)]
    pub budget_interval: Option<Duration>,
}
