//! DestinationRule traffic policy: Istio's merge (top level, then the
//! matching `portLevelSettings`, then the subset's policy and its port
//! level; each set field group replaces the one before, and a port level
//! replaces all four of its groups, set or not) and its mapping to Envoy
//! cluster settings: load balancing, circuit breakers, outlier detection,
//! upstream TLS, slow start, the PROXY protocol, the retry budget.

use std::collections::BTreeMap;

use crds::destination_rule::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, ConsistentHashLb, H2UpgradePolicy,
    LoadBalancerSettings, OutlierDetection, ProxyProtocolVersion, RetryBudget, SimpleLb,
    TrafficPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    self, CommonLbConfig, LbConfig, LbPolicy, LeastRequestLbConfig, MaglevLbConfig,
    RingHashLbConfig, RoundRobinLbConfig, SlowStartConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, LoadBalancingPolicy, OutlierDetection as EnvoyOutlier,
    UpstreamConnectionOptions, circuit_breakers, load_balancing_policy,
};
use envoy_types::pb::envoy::config::common::matcher::v3::{
    HttpHeadersMatch, MatchPredicate, match_predicate,
};
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService, Http1ProtocolOptions,
    Http2ProtocolOptions, HttpProtocolOptions as CoreHttpOptions, KeepaliveSettings, RuntimeDouble,
    TcpKeepalive, TransportSocket, TypedExtensionConfig, UpstreamHttpProtocolOptions,
    api_config_source, config_source, data_source, grpc_service, transport_socket,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{HashPolicy, hash_policy};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
    TlsCertificate, UpstreamTlsContext, common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, OutlierDetection as HttpOutlierDetection, UpstreamProtocolOptions,
    UseDownstreamHttpConfig, explicit_http_config,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::Percent as EnvoyPercent;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use envoy_types::util::pack_any;
use prost::encoding::WireType;

use crate::encoded::{nested_len, put_head, put_key, put_string, put_varint, string_len};

use crate::duration;

/// The settings that apply to one cluster after Istio's merge.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effective {
    /// `loadBalancer`.
    pub load_balancer: Option<LoadBalancerSettings>,
    /// `connectionPool`.
    pub connection_pool: Option<ConnectionPoolSettings>,
    /// `outlierDetection`.
    pub outlier_detection: Option<OutlierDetection>,
    /// `tls`.
    pub tls: Option<ClientTlsSettings>,
    /// `proxyProtocol`'s version (top level or subset; not per port).
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// `retryBudget` (top level or subset; not per port).
    pub retry_budget: Option<RetryBudget>,
    /// The mesh config's defaults for what the connection pool leaves unset.
    pub mesh: MeshPool,
}

/// The mesh config's defaults for one cluster (`connectTimeout`,
/// `tcpKeepalive`, `h2UpgradePolicy`, `localityLbSetting`); all unset
/// under Istio's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshPool {
    /// `connectTimeout`, when not Istio's 10 s.
    pub connect_timeout: Option<std::time::Duration>,
    /// `tcpKeepalive`.
    pub tcp_keepalive: Option<crds::destination_rule::TcpKeepalive>,
    /// `h2UpgradePolicy: UPGRADE`, on an HTTP/1.1 port (only those are
    /// upgraded, as Istio's `shouldH2Upgrade`).
    pub h2_upgrade: bool,
    /// `localityLbSetting`, when not Istio's default (`{enabled: true}`).
    pub locality: Option<crds::destination_rule::LocalityLbSetting>,
}

/// Istio's default mesh `localityLbSetting`: enabled, with nothing else
/// set (localities prioritised by closeness).
static MESH_LOCALITY_DEFAULT: crds::destination_rule::LocalityLbSetting =
    crds::destination_rule::LocalityLbSetting {
        distribute: Vec::new(),
        failover: Vec::new(),
        failover_priority: Vec::new(),
        enabled: Some(true),
    };

impl MeshPool {
    /// The defaults `mesh` gives a cluster of a port speaking `protocol`.
    pub fn of(mesh: &crate::model::MeshConfig, protocol: crate::model::Protocol) -> MeshPool {
        MeshPool {
            connect_timeout: mesh.connect_timeout,
            tcp_keepalive: mesh.tcp_keepalive.clone(),
            h2_upgrade: mesh.h2_upgrade && protocol == crate::model::Protocol::Http,
            locality: mesh.locality_lb.clone(),
        }
    }
}

/// Applies connection pool settings `pool` alone to cluster `c` (circuit
/// breakers, timeouts, keepalive, HTTP options; HTTP/2 upstream for
/// `http2`), without the mesh's defaults: a Sidecar's
/// `inboundConnectionPool` or ingress `connectionPool` on an inbound
/// cluster.
pub(crate) fn apply_connection_pool(pool: &ConnectionPoolSettings, c: &mut Cluster, http2: bool) {
    Effective {
        connection_pool: Some(pool.clone()),
        ..Default::default()
    }
    .apply_pool(c, http2);
}

impl Effective {
    /// With the mesh config's connection defaults ([`MeshPool`]).
    pub fn with_mesh(mut self, mesh: MeshPool) -> Effective {
        self.mesh = mesh;
        self
    }

    /// Merges `top` (the rule's `trafficPolicy`) and `subset` (the subset's)
    /// for `port`, in Istio's order.
    pub fn resolve(
        top: Option<&TrafficPolicy>,
        subset: Option<&TrafficPolicy>,
        port: u32,
    ) -> Effective {
        let mut out = Effective::default();
        for tp in [top, subset].into_iter().flatten() {
            out.overlay(
                tp.load_balancer.as_ref(),
                tp.connection_pool.as_ref(),
                tp.outlier_detection.as_ref(),
                tp.tls.as_ref(),
            );
            if let Some(pp) = &tp.proxy_protocol {
                out.proxy_protocol = Some(pp.version.unwrap_or_default());
            }
            if let Some(budget) = &tp.retry_budget {
                out.retry_budget = Some(budget.clone());
            }
            if let Some(pls) = tp
                .port_level_settings
                .iter()
                .find(|p| p.port.map(|p| p.number) == Some(port))
            {
                // A port level does not inherit: what it leaves unset
                // takes the defaults, as Istio's `MergeTrafficPolicy`
                // documents ("port level policies do not inherit").
                out.load_balancer.clone_from(&pls.load_balancer);
                out.connection_pool.clone_from(&pls.connection_pool);
                out.outlier_detection.clone_from(&pls.outlier_detection);
                out.tls.clone_from(&pls.tls);
            }
        }
        out
    }

    fn overlay(
        &mut self,
        lb: Option<&LoadBalancerSettings>,
        pool: Option<&ConnectionPoolSettings>,
        outlier: Option<&OutlierDetection>,
        tls: Option<&ClientTlsSettings>,
    ) {
        if let Some(v) = lb {
            self.load_balancer = Some(v.clone());
        }
        if let Some(v) = pool {
            self.connection_pool = Some(v.clone());
        }
        if let Some(v) = outlier {
            self.outlier_detection = Some(v.clone());
        }
        if let Some(v) = tls {
            self.tls = Some(v.clone());
        }
    }

    /// The simple algorithm chosen, if any.
    pub fn simple(&self) -> Option<SimpleLb> {
        self.load_balancer.as_ref().and_then(|lb| lb.simple)
    }

    /// The consistent-hash settings, if any.
    pub fn consistent_hash(&self) -> Option<&ConsistentHashLb> {
        self.load_balancer
            .as_ref()
            .and_then(|lb| lb.consistent_hash.as_ref())
    }

    /// Applies everything but the discovery type to `c`. `http2` is the
    /// port's protocol (HTTP/2 or gRPC); `hostname` the default SNI;
    /// `istio` what `ISTIO_MUTUAL` uses (required when [`Effective::istio_mutual`]).
    pub fn apply(
        &self,
        c: &mut Cluster,
        http2: bool,
        hostname: &str,
        istio: Option<&crate::cluster::IstioTls>,
    ) {
        self.apply_lb(c);
        self.apply_pool(c, http2);
        self.apply_outlier(c);
        self.apply_tls(c, hostname, istio);
        if let Some(version) = self.proxy_protocol {
            let inner = c.transport_socket.take().unwrap_or_else(raw_buffer);
            c.transport_socket = Some(proxy_protocol_socket(version, inner));
        }
    }

    fn apply_lb(&self, c: &mut Cluster) {
        // Istio's default since 1.14 is LEAST_REQUEST.
        c.lb_policy = LbPolicy::LeastRequest as i32;
        let Some(lb) = &self.load_balancer else {
            return;
        };
        // Istio's `setSlowStartConfig`: `warmup` (its curve's aggression,
        // default 1, linear, and its minimum weight, default 10 %, under a
        // runtime key that cannot be set, so that the rule decides), else
        // `warmupDurationSecs` alone.
        let slow_start = match (&lb.warmup, lb.warmup_duration_secs) {
            (Some(warmup), _) => Some(SlowStartConfig {
                slow_start_window: warmup.duration.map(|d| duration(d.as_std())),
                aggression: Some(RuntimeDouble {
                    default_value: warmup.aggression.unwrap_or(1.0),
                    runtime_key: "(".into(),
                }),
                min_weight_percent: Some(EnvoyPercent {
                    value: warmup.minimum_percent.unwrap_or(10.0),
                }),
            }),
            (None, Some(d)) => Some(SlowStartConfig {
                slow_start_window: Some(duration(d.as_std())),
                ..Default::default()
            }),
            (None, None) => None,
        };
        if let Some(bu) = &lb.backend_utilization {
            c.load_balancing_policy = Some(backend_utilization(bu, slow_start));
            return;
        }
        if let Some(hash) = &lb.consistent_hash {
            if let Some(maglev) = &hash.maglev {
                c.lb_policy = LbPolicy::Maglev as i32;
                c.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                    table_size: maglev.table_size.map(|value| UInt64Value { value }),
                }));
            } else {
                c.lb_policy = LbPolicy::RingHash as i32;
                let size = hash
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(hash.minimum_ring_size);
                c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                    minimum_ring_size: size.map(|value| UInt64Value { value }),
                    ..Default::default()
                }));
            }
            return;
        }
        match lb.simple {
            Some(SimpleLb::RoundRobin) => {
                c.lb_policy = LbPolicy::RoundRobin as i32;
                if slow_start.is_some() {
                    c.lb_config = Some(LbConfig::RoundRobinLbConfig(RoundRobinLbConfig {
                        slow_start_config: slow_start,
                    }));
                }
            }
            Some(SimpleLb::Random) => c.lb_policy = LbPolicy::Random as i32,
            // PASSTHROUGH is a discovery type, set by the caller.
            _ => {
                if slow_start.is_some() {
                    c.lb_config = Some(LbConfig::LeastRequestLbConfig(LeastRequestLbConfig {
                        slow_start_config: slow_start,
                        ..Default::default()
                    }));
                }
            }
        }
    }

    fn apply_pool(&self, c: &mut Cluster, http2: bool) {
        let pool = self.connection_pool.as_ref();
        let tcp = pool.and_then(|p| p.tcp.as_ref());
        let http = pool.and_then(|p| p.http.as_ref());
        let limit = |v: Option<i32>| {
            Some(UInt32Value {
                value: v
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|v| *v > 0)
                    .unwrap_or(u32::MAX),
            })
        };
        // Istio's defaults are unlimited (Envoy's would be 1024).
        c.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                max_connections: limit(tcp.and_then(|t| t.max_connections)),
                max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
                max_requests: limit(http.and_then(|h| h.http2_max_requests)),
                max_retries: limit(http.and_then(|h| h.max_retries)),
                retry_budget: self.retry_budget.as_ref().map(retry_budget),
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        if let Some(t) = tcp
            .and_then(|t| t.connect_timeout)
            .map(|t| t.as_std())
            .or(self.mesh.connect_timeout)
        {
            c.connect_timeout = Some(duration(t));
        }
        // The mesh's keepalive, each field the rule sets taking its place
        // (Istio's `applyTCPKeepalive`).
        let rule_ka = tcp.and_then(|t| t.tcp_keepalive.as_ref());
        let mesh_ka = self.mesh.tcp_keepalive.as_ref();
        if rule_ka.is_some() || mesh_ka.is_some() {
            let pick = |f: fn(&crds::destination_rule::TcpKeepalive) -> Option<crds::Duration>| {
                rule_ka
                    .and_then(f)
                    .or(mesh_ka.and_then(f))
                    .map(|d| UInt32Value {
                        value: u32::try_from(d.as_std().as_secs()).unwrap_or(u32::MAX),
                    })
            };
            let probes = rule_ka
                .and_then(|k| k.probes)
                .or(mesh_ka.and_then(|k| k.probes));
            c.upstream_connection_options = Some(UpstreamConnectionOptions {
                tcp_keepalive: Some(TcpKeepalive {
                    keepalive_probes: probes.map(|value| UInt32Value { value }),
                    keepalive_time: pick(|k| k.time),
                    keepalive_interval: pick(|k| k.interval),
                }),
                ..Default::default()
            });
        }
        let mut common = CoreHttpOptions::default();
        let mut common_set = false;
        if let Some(n) = http
            .and_then(|h| h.max_requests_per_connection)
            .and_then(|n| u32::try_from(n).ok())
        {
            common.max_requests_per_connection = Some(UInt32Value { value: n });
            common_set = true;
        }
        if let Some(t) = http
            .and_then(|h| h.idle_timeout)
            .or(tcp.and_then(|t| t.idle_timeout))
        {
            common.idle_timeout = Some(duration(t.as_std()));
            common_set = true;
        }
        if let Some(t) = tcp.and_then(|t| t.max_connection_duration) {
            common.max_connection_duration = Some(duration(t.as_std()));
            common_set = true;
        }
        // The rule's policy, else the mesh's (Istio's `shouldH2Upgrade`).
        let upgrade = match http.and_then(|h| h.h2_upgrade_policy) {
            Some(H2UpgradePolicy::Upgrade) => true,
            Some(H2UpgradePolicy::DoNotUpgrade) => false,
            Some(H2UpgradePolicy::Default) | None => self.mesh.h2_upgrade,
        };
        let h2 = Http2ProtocolOptions {
            max_concurrent_streams: http
                .and_then(|h| h.max_concurrent_streams)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .map(|value| UInt32Value { value }),
            connection_keepalive: http
                .and_then(|h| h.http2_keep_alive.as_ref())
                .map(http2_keepalive),
            ..Default::default()
        };
        // `useClientProtocol` wins over an upgrade, as in Istio (whose
        // upgrade only sets a protocol where none is set).
        let protocol = if http.and_then(|h| h.use_client_protocol) == Some(true) {
            Some(UpstreamProtocol::Downstream(h2))
        } else if http2 || upgrade {
            Some(UpstreamProtocol::Http2(h2))
        } else {
            None
        };
        // Istio's `setAutoSniAndAutoSanValidation`: TLS originated with
        // neither `sni` nor `subjectAltNames` takes its SNI from the
        // request's host and checks the server's certificate against it.
        let auto_sni = self
            .tls
            .as_ref()
            .filter(|t| self.originates_tls() && t.sni.is_none() && t.subject_alt_names.is_empty())
            .map(|t| UpstreamHttpProtocolOptions {
                auto_sni: true,
                auto_san_validation: !t.insecure_skip_verify.unwrap_or(false),
                ..Default::default()
            });
        if common_set || protocol.is_some() || auto_sni.is_some() {
            let mut options =
                upstream_http_options(common_set.then_some(common), protocol.unwrap_or_default());
            options.upstream_http_protocol_options = auto_sni;
            c.typed_extension_protocol_options
                .insert(UPSTREAM_HTTP_OPTIONS.into(), pack_any(options));
        }
    }

    fn apply_outlier(&self, c: &mut Cluster) {
        let Some(o) = &self.outlier_detection else {
            return;
        };
        let u32v = |v: Option<u32>| v.map(|value| UInt32Value { value });
        let pct = |v: Option<i32>| {
            v.and_then(|v| u32::try_from(v).ok())
                .map(|value| UInt32Value { value })
        };
        let gateway = o
            .consecutive_gateway_errors
            .or(o.consecutive_errors.and_then(|v| u32::try_from(v).ok()));
        let mut out = EnvoyOutlier {
            interval: o.interval.map(|d| duration(d.as_std())),
            base_ejection_time: o.base_ejection_time.map(|d| duration(d.as_std())),
            max_ejection_percent: pct(o.max_ejection_percent),
            // Only what Istio enables is enforced; success-rate ejection is off.
            enforcing_success_rate: Some(UInt32Value { value: 0 }),
            split_external_local_origin_errors: o
                .split_external_local_origin_errors
                .unwrap_or(false),
            consecutive_local_origin_failure: u32v(o.consecutive_local_origin_failures),
            ..Default::default()
        };
        match o.consecutive_5xx_errors {
            Some(n) if n > 0 => {
                out.consecutive_5xx = u32v(Some(n));
                out.enforcing_consecutive_5xx = u32v(Some(100));
            }
            _ => out.enforcing_consecutive_5xx = u32v(Some(0)),
        }
        match gateway {
            Some(n) if n > 0 => {
                out.consecutive_gateway_failure = u32v(Some(n));
                out.enforcing_consecutive_gateway_failure = u32v(Some(100));
            }
            _ => out.enforcing_consecutive_gateway_failure = u32v(Some(0)),
        }
        c.outlier_detection = Some(out);
        if !o.outlier_detection_http_error_codes.is_empty() {
            // Only these statuses count as errors (else every 5xx does):
            // the cluster's HTTP options, kept as they are otherwise.
            let mut options = c
                .typed_extension_protocol_options
                .get(UPSTREAM_HTTP_OPTIONS)
                .and_then(|any| {
                    <HttpProtocolOptions as prost::Message>::decode(any.value.as_slice()).ok()
                })
                .unwrap_or_else(|| upstream_http_options(None, UpstreamProtocol::Http1));
            options.outlier_detection = Some(HttpOutlierDetection {
                error_matcher: Some(status_matcher(&o.outlier_detection_http_error_codes)),
            });
            c.typed_extension_protocol_options
                .insert(UPSTREAM_HTTP_OPTIONS.into(), pack_any(options));
        }
        // Istio: panic mode below minHealthPercent (default 0: never).
        c.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(EnvoyPercent {
                value: f64::from(o.min_health_percent.unwrap_or(0).clamp(0, 100)),
            }),
            ..Default::default()
        });
    }

    /// True when no DestinationRule sets client TLS settings (auto mTLS
    /// may then decide).
    pub fn tls_unset(&self) -> bool {
        self.tls.is_none()
    }

    /// True when the effective client TLS mode is `ISTIO_MUTUAL`.
    pub fn istio_mutual(&self) -> bool {
        self.tls.as_ref().and_then(|t| t.mode) == Some(ClientTlsMode::IstioMutual)
    }

    /// Whether the client TLS settings originate `SIMPLE` or `MUTUAL` TLS.
    pub fn originates_tls(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| matches!(t.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual)))
    }

    /// Whether the client TLS settings name a `credentialName` Secret for
    /// `SIMPLE` or `MUTUAL` origination (a `configmap://` CA is no Secret:
    /// any proxy may have it).
    pub fn uses_credential(&self) -> bool {
        self.originates_tls()
            && self.tls.as_ref().is_some_and(|t| {
                t.credential_name
                    .as_deref()
                    .is_some_and(|c| !ca_only_credential(c))
            })
    }

    /// What a sidecar does with [`Effective::uses_credential`] settings, as
    /// istiod's cluster builder: it does not fetch the Secret (only
    /// gateways, and workloads a rule's `workloadSelector` picks, may) and
    /// sends no TLS, nor auto mTLS: the settings act as `DISABLE`.
    pub fn drop_credential(&mut self) {
        if self.uses_credential() {
            self.tls = Some(ClientTlsSettings {
                mode: Some(ClientTlsMode::Disable),
                ..Default::default()
            });
        }
    }

    fn apply_tls(&self, c: &mut Cluster, hostname: &str, istio: Option<&crate::cluster::IstioTls>) {
        let Some(tls) = &self.tls else { return };
        let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
        if mode == ClientTlsMode::IstioMutual {
            let fallback = crate::cluster::IstioTls::default();
            c.transport_socket = Some(istio_mutual(tls, istio.unwrap_or(&fallback)));
            return;
        }
        if !matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) {
            return;
        }
        let file = |p: &String| DataSource {
            specifier: Some(data_source::Specifier::Filename(p.clone())),
            ..Default::default()
        };
        // The server's SANs: the rule's, else a ServiceEntry's identities.
        let sans = match istio {
            Some(i) if tls.subject_alt_names.is_empty() => &i.sans,
            _ => &tls.subject_alt_names,
        };
        let mut common = CommonTlsContext::default();
        if let Some(cred) = tls
            .credential_name
            .as_ref()
            .filter(|c| ca_only_credential(c))
        {
            // A ConfigMap's CA, served under its own name over SDS (Istio's
            // BackendTLSPolicy origination); verified always (`invalid://`
            // is never served: the handshakes fail).
            common.validation_context_type = Some(sds_validation(sans, cred.clone()));
        } else if let Some(cred) = &tls.credential_name {
            // A gateway's origination with a Secret's certificates, which
            // the daemon serves it over SDS (istiod's
            // `ApplyCustomSDSToClientCommonTLSContext`).
            let [cert, ca] = credential_sds_names(cred);
            if mode == ClientTlsMode::Mutual {
                common
                    .tls_certificate_sds_secret_configs
                    .push(ads_secret(cert));
            }
            if !tls.insecure_skip_verify.unwrap_or(false) {
                common.validation_context_type = Some(sds_validation(sans, ca));
            }
        } else if mode == ClientTlsMode::Mutual
            && let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key)
        {
            common.tls_certificates.push(TlsCertificate {
                certificate_chain: Some(file(cert)),
                private_key: Some(file(key)),
                ..Default::default()
            });
        }
        // A Gateway API gateway's client certificate (its Gateway's
        // `spec.tls.backend.clientCertificateRef`), whatever verifies the
        // backend.
        if let Some(client) = &tls.client_credential {
            common
                .tls_certificate_sds_secret_configs
                .push(ads_secret(client.clone()));
        }
        // The server is verified unless `insecureSkipVerify`: against
        // `caCertificates`, else the proxy's system roots (Istio's
        // `VERIFY_CERTIFICATE_AT_CLIENT`, on by default since 1.20).
        if tls.credential_name.is_none() && !tls.insecure_skip_verify.unwrap_or(false) {
            let ca = tls
                .ca_certificates
                .clone()
                .unwrap_or_else(|| SYSTEM_CA_BUNDLE.to_owned());
            common.validation_context_type = Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        trusted_ca: Some(file(&ca)),
                        crl: tls.ca_crl.as_ref().map(file),
                        match_typed_subject_alt_names: any_san_matchers(sans),
                        ..Default::default()
                    },
                ),
            );
        }
        let ctx = UpstreamTlsContext {
            sni: tls.sni.clone().unwrap_or_else(|| hostname.to_owned()),
            common_tls_context: Some(common),
            ..Default::default()
        };
        c.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
        });
    }
}

/// Verification of the server against the CA of the SDS secret `ca`
/// (served by the daemon) and, if any, `sans`.
fn sds_validation(sans: &[String], ca: String) -> common_tls_context::ValidationContextType {
    common_tls_context::ValidationContextType::CombinedValidationContext(
        common_tls_context::CombinedCertificateValidationContext {
            default_validation_context: Some(CertificateValidationContext {
                match_typed_subject_alt_names: any_san_matchers(sans),
                ..Default::default()
            }),
            validation_context_sds_secret_config: Some(ads_secret(ca)),
            ..Default::default()
        },
    )
}

/// A predicate matching responses whose `:status` is one of `codes`
/// (Istio's `outlierDetectionHttpErrorCodes`, as the cluster's HTTP
/// outlier detection `error_matcher`).
fn status_matcher(codes: &[u32]) -> MatchPredicate {
    let one = |code: &u32| MatchPredicate {
        rule: Some(match_predicate::Rule::HttpResponseHeadersMatch(
            HttpHeadersMatch {
                headers: vec![HeaderMatcher {
                    name: ":status".into(),
                    header_match_specifier: Some(
                        header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                            match_pattern: Some(string_matcher::MatchPattern::Exact(
                                code.to_string(),
                            )),
                            ..Default::default()
                        }),
                    ),
                    ..Default::default()
                }],
            },
        )),
    };
    match codes {
        [code] => one(code),
        // A set takes two rules at least.
        codes => MatchPredicate {
            rule: Some(match_predicate::Rule::OrMatch(match_predicate::MatchSet {
                rules: codes.iter().map(one).collect(),
            })),
        },
    }
}

/// The key of a cluster's `typed_extension_protocol_options` for
/// [`upstream_http_options`].
pub(crate) const UPSTREAM_HTTP_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The protocol of a cluster's upstream HTTP connections.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) enum UpstreamProtocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2, with these options.
    Http2(Http2ProtocolOptions),
    /// The downstream request's, HTTP/1.1 or HTTP/2 with these options
    /// (Istio's `useClientProtocol`).
    Downstream(Http2ProtocolOptions),
}

/// Envoy's `HttpProtocolOptions` for a cluster: its upstream `protocol`
/// (`explicit_http_config`, or `use_downstream_protocol_config`), with
/// `common` options if any (packed under [`UPSTREAM_HTTP_OPTIONS`]).
pub(crate) fn upstream_http_options(
    common: Option<CoreHttpOptions>,
    protocol: UpstreamProtocol,
) -> HttpProtocolOptions {
    let explicit = |config| {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(config),
        })
    };
    let upstream = match protocol {
        UpstreamProtocol::Http1 => {
            explicit(explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                Http1ProtocolOptions::default(),
            ))
        }
        UpstreamProtocol::Http2(h2) => explicit(
            explicit_http_config::ProtocolConfig::Http2ProtocolOptions(h2),
        ),
        UpstreamProtocol::Downstream(h2) => {
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
                http_protocol_options: Some(Http1ProtocolOptions::default()),
                http2_protocol_options: Some(h2),
                ..Default::default()
            })
        }
    };
    HttpProtocolOptions {
        common_http_protocol_options: common,
        upstream_protocol_options: Some(upstream),
        ..Default::default()
    }
}

/// Exact matchers for `sans`, of one SAN type.
fn san_matchers(
    sans: &[String],
    kind: subject_alt_name_matcher::SanType,
) -> Vec<SubjectAltNameMatcher> {
    sans.iter()
        .map(|san| SubjectAltNameMatcher {
            san_type: kind as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(san.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

/// Matchers accepting a certificate one of whose SANs of any type (DNS,
/// URI, email, IP) is exactly one of `sans`: Istio's
/// `match_subject_alt_names` (which Envoy checks against every SAN type),
/// in Envoy's typed form.
pub(crate) fn any_san_matchers(sans: &[String]) -> Vec<SubjectAltNameMatcher> {
    use subject_alt_name_matcher::SanType;
    [
        SanType::Dns,
        SanType::Uri,
        SanType::Email,
        SanType::IpAddress,
    ]
    .into_iter()
    .flat_map(|kind| san_matchers(sans, kind))
    .collect()
}

/// The proxy's system CA bundle, which verifies the servers of TLS a
/// DestinationRule originates without `caCertificates` (where Istio's
/// proxy image, Debian- and distroless-based, keeps it).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Istio's SDS resource names for the `credentialName` Secret `cred`:
/// `kubernetes://<cred>` (its certificate and key) and
/// `kubernetes://<cred>-cacert` (its CA bundle).
pub(crate) fn credential_sds_names(cred: &str) -> [String; 2] {
    if cred.starts_with(GATEWAY_API_CREDENTIAL) {
        // Already a resource name (Istio's `kubernetes-gateway://`).
        return [cred.to_owned(), format!("{cred}-cacert")];
    }
    [
        format!("kubernetes://{cred}"),
        format!("kubernetes://{cred}-cacert"),
    ]
}

/// The scheme of a Gateway API listener's Secret as a `credentialName`
/// (`kubernetes-gateway://<namespace>/<name>`, Istio's).
pub(crate) const GATEWAY_API_CREDENTIAL: &str = "kubernetes-gateway://";

/// The scheme of a ConfigMap's `ca.crt` as a `credentialName`
/// (`configmap://<namespace>/<name>`, Istio's, as BackendTLSPolicy's CAs
/// become): a CA only, which any proxy may get, served over SDS under
/// that name.
pub const CONFIG_MAP_CREDENTIAL: &str = "configmap://";

/// The `credentialName` of a BackendTLSPolicy whose CA cannot be read
/// (Istio's `InvalidSecretTypeURI`): never served, so its traffic fails.
pub const INVALID_CREDENTIAL: &str = "invalid://";

/// Whether `cred` names only a CA ([`CONFIG_MAP_CREDENTIAL`], or
/// [`INVALID_CREDENTIAL`]), which any proxy may be given, not a Secret.
pub fn ca_only_credential(cred: &str) -> bool {
    cred.starts_with(CONFIG_MAP_CREDENTIAL) || cred == INVALID_CREDENTIAL
}

/// The `configmap://` credentials of a rule's client TLS settings: each
/// one's field, credential name and ConfigMap (`namespace/name`).
pub(crate) fn config_map_credentials(
    dr: &crds::DestinationRuleSpec,
) -> impl Iterator<Item = (String, &str, &str)> {
    dr.client_tls().into_iter().filter_map(|(at, tls)| {
        let cred = tls.credential_name.as_deref()?;
        let key = cred.strip_prefix(CONFIG_MAP_CREDENTIAL)?;
        Some((at, cred, key))
    })
}

/// A reference to the SDS secret `name`, served over ADS by the daemon
/// (with Envoy's default 15 s initial fetch timeout, as Istio's
/// `SDSAdsConfig`: a Secret that does not exist does not hold the
/// resource back forever).
pub(crate) fn ads_secret(name: String) -> SdsSecretConfig {
    SdsSecretConfig {
        name,
        sds_config: Some(crate::ads_config_source()),
    }
}

/// The name of the bootstrap cluster that reaches the node agent's SDS
/// socket (Istio's `sds-grpc`).
pub const AGENT_SDS_CLUSTER: &str = "sds-grpc";
/// The SDS name of the workload's certificate and key (Istio's `default`).
pub const WORKLOAD_CERT: &str = "default";
/// The SDS name of the mesh root certificate (Istio's `ROOTCA`).
pub const ROOT_CA: &str = "ROOTCA";

/// A secret served by the node agent over SDS (the workload's
/// [`WORKLOAD_CERT`] or the mesh's [`ROOT_CA`]), waited for without a
/// time limit (`initial_fetch_timeout: 0s`, as Istio's
/// `ConstructSdsSecretConfig`).
pub(crate) fn agent_secret(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(config_source::ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: api_config_source::ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    set_node_on_first_message_only: true,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: AGENT_SDS_CLUSTER.into(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            // Istio's `default` and `ROOTCA`: the workload's own identity
            // is waited for, however long the agent takes.
            initial_fetch_timeout: Some(crate::duration(std::time::Duration::ZERO)),
            ..Default::default()
        }),
    }
}

/// `http2KeepAlive`: HTTP/2 PINGs every `interval` on upstream
/// connections, a connection closed when one is not answered within
/// `timeout` (Envoy's `connection_keepalive`, whose timeout is required:
/// 20 s when unset, gRPC's keepalive default).
fn http2_keepalive(k: &crds::destination_rule::Http2KeepAlive) -> KeepaliveSettings {
    KeepaliveSettings {
        interval: k.interval.map(|d| duration(d.as_std())),
        timeout: Some(duration(
            k.timeout
                .map_or(std::time::Duration::from_secs(20), |d| d.as_std()),
        )),
        ..Default::default()
    }
}

/// Istio's `applyRetryBudget`: at most `percent` (default 20, as Istio
/// documents it) percent of the active and pending requests may be
/// retries at once, and at least `minRetryConcurrency` (default 3, also
/// for 0) whatever the load; requests started within `budgetInterval`
/// count as active (Envoy's `budget_interval`, 0 by default: only those
/// in flight). Istio's code writes its default as 0.2, which Envoy reads
/// as 0.2 %; this follows the documented 20 %.
/// `loadBalancer.backendUtilization` as Envoy's client-side weighted round
/// robin: endpoint weights from the ORCA load reports of their responses
/// (`qps / utilization`); `weightStabilizationPeriod` is the blackout
/// before a weight counts, `errorUtilizationPenaltyPercent` the error
/// penalty (percent, so 100 is Envoy's 1.0); the rule's warmup is the
/// policy's slow start. Envoy takes it over `lb_policy`.
fn backend_utilization(
    bu: &crds::destination_rule::BackendUtilization,
    slow_start: Option<SlowStartConfig>,
) -> LoadBalancingPolicy {
    use envoy_types::pb::envoy::extensions::load_balancing_policies::client_side_weighted_round_robin::v3::ClientSideWeightedRoundRobin;
    let period = |d: Option<crds::Duration>| d.map(|d| duration(d.as_std()));
    let config = ClientSideWeightedRoundRobin {
        blackout_period: period(bu.weight_stabilization_period),
        weight_expiration_period: period(bu.weight_expiration_period),
        weight_update_period: period(bu.weight_update_period),
        // A percentage: 100 is Envoy's 1.0.
        error_utilization_penalty: bu
            .error_utilization_penalty_percent
            .map(|p| envoy_types::pb::google::protobuf::FloatValue {
                value: p as f32 / 100.0,
            }),
        metric_names_for_computing_utilization: bu.metric_names_for_computing_utilization.clone(),
        slow_start_config: slow_start.map(|s| {
            envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3::SlowStartConfig {
                slow_start_window: s.slow_start_window,
                aggression: s.aggression,
                min_weight_percent: s.min_weight_percent,
            }
        }),
        ..Default::default()
    };
    LoadBalancingPolicy {
        policies: vec![load_balancing_policy::Policy {
            typed_extension_config: Some(TypedExtensionConfig {
                name: "envoy.load_balancing_policies.client_side_weighted_round_robin".into(),
                typed_config: Some(pack_any(config)),
            }),
        }],
    }
}

fn retry_budget(budget: &RetryBudget) -> circuit_breakers::thresholds::RetryBudget {
    circuit_breakers::thresholds::RetryBudget {
        budget_percent: Some(EnvoyPercent {
            value: budget.percent.unwrap_or(20.0),
        }),
        min_retry_concurrency: Some(UInt32Value {
            value: budget.min_retry_concurrency.filter(|m| *m > 0).unwrap_or(3),
        }),
        budget_interval: budget.budget_interval.map(|d| duration(d.as_std())),
    }
}

/// Envoy's plaintext transport socket (`envoy.transport_sockets.raw_buffer`).
fn raw_buffer() -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
            envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer {},
        ))),
    }
}

/// `inner` (plaintext or TLS) behind a PROXY protocol header of `version`
/// (Envoy's `envoy.transport_sockets.upstream_proxy_protocol`, as Istio's
/// `applyUpstreamProxyProtocol` wraps a cluster's sockets).
pub(crate) fn proxy_protocol_socket(
    version: ProxyProtocolVersion,
    inner: TransportSocket,
) -> TransportSocket {
    use envoy_types::pb::envoy::config::core::v3::{ProxyProtocolConfig, proxy_protocol_config};
    use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
    let version = match version {
        ProxyProtocolVersion::V1 => proxy_protocol_config::Version::V1,
        ProxyProtocolVersion::V2 => proxy_protocol_config::Version::V2,
    };
    TransportSocket {
        name: "envoy.transport_sockets.upstream_proxy_protocol".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
            ProxyProtocolUpstreamTransport {
                config: Some(ProxyProtocolConfig {
                    version: version as i32,
                    ..Default::default()
                }),
                transport_socket: Some(inner),
                ..Default::default()
            },
        ))),
    }
}

/// The endpoint metadata key Envoy matches `transport_socket_matches` on.
pub(crate) const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// Auto mTLS (Istio's `tlsMode-istio` socket match): endpoints whose
/// metadata [`TRANSPORT_SOCKET_MATCH`] has `tlsMode: istio` get Istio mTLS
/// as `ISTIO_MUTUAL` would set it; the others keep the cluster's plaintext.
pub(crate) fn auto_mtls_match(
    istio: &crate::cluster::IstioTls,
) -> envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch {
    envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch {
        name: AUTO_MTLS_MATCH.into(),
        r#match: Some(tls_mode_istio()),
        transport_socket: Some(istio_mutual(&ClientTlsSettings::default(), istio)),
    }
}

/// The parts of [`auto_mtls_match`] that are the same for every cluster,
/// encoded once by prost.
struct AutoMtlsParts {
    /// `TransportSocketMatch` fields 1 (`name`) and 2 (`match`).
    match_head: Vec<u8>,
    /// `TransportSocket` field 1 (`name`).
    socket_head: Vec<u8>,
    /// `Any` field 1 (`type_url` of `UpstreamTlsContext`).
    any_head: Vec<u8>,
    /// `CombinedCertificateValidationContext` field 2 (the root over SDS).
    root: Vec<u8>,
    /// `CommonTlsContext` but for its validation context oneof (which
    /// prost writes first, at its lowest tag, 3): ALPN and the workload
    /// certificate over SDS.
    common_rest: Vec<u8>,
}

static AUTO_MTLS_PARTS: std::sync::LazyLock<AutoMtlsParts> = std::sync::LazyLock::new(|| {
    use prost::Message as _;
    let whole = istio_mutual(
        &ClientTlsSettings::default(),
        &crate::cluster::IstioTls::default(),
    );
    let match_head = envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch {
        name: AUTO_MTLS_MATCH.into(),
        r#match: Some(tls_mode_istio()),
        transport_socket: None,
    };
    let socket_head = TransportSocket {
        name: whole.name,
        config_type: None,
    };
    // The parts are taken from `istio_mutual`'s own context, so that they
    // follow it (its packed `UpstreamTlsContext`, our own bytes, decodes).
    let packed = match whole.config_type {
        Some(transport_socket::ConfigType::TypedConfig(packed)) => packed,
        _ => Any::default(),
    };
    let ctx = UpstreamTlsContext::decode(packed.value.as_slice()).unwrap_or_default();
    let any_head = Any {
        type_url: packed.type_url,
        value: Vec::new(),
    };
    let mut common_rest = ctx.common_tls_context.unwrap_or_default();
    let root = match common_rest.validation_context_type.take() {
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => {
            common_tls_context::CombinedCertificateValidationContext {
                default_validation_context: None,
                ..c
            }
        }
        _ => Default::default(),
    };
    AutoMtlsParts {
        match_head: match_head.encode_to_vec(),
        socket_head: socket_head.encode_to_vec(),
        any_head: any_head.encode_to_vec(),
        root: root.encode_to_vec(),
        common_rest: common_rest.encode_to_vec(),
    }
});

/// [`auto_mtls_match`] for one cluster, encoded as a `Cluster`'s field 43
/// (`transport_socket_matches`): the bytes prost writes for it, from
/// [`AUTO_MTLS_PARTS`] and what differs per cluster (the SPIFFE IDs and
/// the SNI), without building the messages. The lengths are worked out
/// first ([`AutoMtlsField::new`]), so that the field is written straight
/// into the cluster's buffer ([`AutoMtlsField::write`]).
pub(crate) struct AutoMtlsField<'a> {
    istio: &'a crate::cluster::IstioTls,
    /// Lengths of the nested messages, innermost first: the default
    /// validation context (the SAN matchers), the combined validation
    /// context, the common TLS context, the `UpstreamTlsContext`, the
    /// `Any`, the transport socket, the match.
    sans: usize,
    combined: usize,
    common: usize,
    tls: usize,
    any: usize,
    socket: usize,
    whole: usize,
}

/// The `san_type` of a SPIFFE ID matcher.
const URI: u64 = subject_alt_name_matcher::SanType::Uri as u64;

/// `SubjectAltNameMatcher { san_type: URI (1), matcher (2): StringMatcher { exact (1) } }`.
fn san_len(san: &str) -> usize {
    1 + prost::encoding::encoded_len_varint(URI) + nested_len(nested_len(san.len()))
}

impl<'a> AutoMtlsField<'a> {
    pub(crate) fn new(istio: &'a crate::cluster::IstioTls) -> Self {
        let parts = &*AUTO_MTLS_PARTS;
        let sans: usize = istio.sans.iter().map(|s| nested_len(san_len(s))).sum();
        let combined = nested_len(sans) + parts.root.len();
        let common = nested_len(combined) + parts.common_rest.len();
        let tls = nested_len(common) + string_len(&istio.sni);
        let any = parts.any_head.len() + nested_len(tls);
        let socket = parts.socket_head.len() + nested_len(any);
        let whole = parts.match_head.len() + nested_len(socket);
        AutoMtlsField {
            istio,
            sans,
            combined,
            common,
            tls,
            any,
            socket,
            whole,
        }
    }

    /// The field's encoded length (key and length included).
    pub(crate) fn len(&self) -> usize {
        prost::encoding::key_len(43)
            + prost::encoding::encoded_len_varint(self.whole as u64)
            + self.whole
    }

    /// Appends the field to `b`.
    pub(crate) fn write(&self, b: &mut Vec<u8>) {
        let parts = &*AUTO_MTLS_PARTS;
        put_head(b, 43, self.whole);
        b.extend_from_slice(&parts.match_head);
        put_head(b, 3, self.socket); // TransportSocketMatch.transport_socket
        b.extend_from_slice(&parts.socket_head);
        put_head(b, 3, self.any); // TransportSocket.typed_config
        b.extend_from_slice(&parts.any_head);
        put_head(b, 2, self.tls); // Any.value: UpstreamTlsContext
        put_head(b, 1, self.common); // .common_tls_context
        put_head(b, 8, self.combined); // .combined_validation_context
        put_head(b, 1, self.sans); // .default_validation_context
        for san in &self.istio.sans {
            put_head(b, 15, san_len(san)); // .match_typed_subject_alt_names
            put_key(b, 1, WireType::Varint);
            put_varint(b, URI);
            put_head(b, 2, nested_len(san.len()));
            put_head(b, 1, san.len());
            b.extend_from_slice(san.as_bytes());
        }
        b.extend_from_slice(&parts.root);
        b.extend_from_slice(&parts.common_rest);
        put_string(b, 2, &self.istio.sni); // UpstreamTlsContext.sni
    }
}

/// The name of Istio's auto mTLS transport socket match.
const AUTO_MTLS_MATCH: &str = "tlsMode-istio";

/// `{tlsMode: istio}` as a protobuf `Struct`.
pub(crate) fn tls_mode_istio() -> envoy_types::pb::google::protobuf::Struct {
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    Struct {
        fields: [(
            "tlsMode".to_owned(),
            Value {
                kind: Some(value::Kind::StringValue("istio".into())),
            },
        )]
        .into_iter()
        .collect(),
    }
}

/// `ISTIO_MUTUAL`: the workload certificate and the root from the node
/// agent (SDS `default` and `ROOTCA`), Istio's SNI, the server's SPIFFE ID
/// checked against the destination's service accounts (or the rule's
/// `subjectAltNames`), ALPN `istio-peer-exchange`, `istio`.
fn istio_mutual(tls: &ClientTlsSettings, istio: &crate::cluster::IstioTls) -> TransportSocket {
    let sans = if tls.subject_alt_names.is_empty() {
        istio.sans.clone()
    } else {
        tls.subject_alt_names.clone()
    };
    let common = CommonTlsContext {
        alpn_protocols: vec!["istio-peer-exchange".into(), "istio".into()],
        tls_certificate_sds_secret_configs: vec![agent_secret(WORKLOAD_CERT)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: san_matchers(
                            &sans,
                            subject_alt_name_matcher::SanType::Uri,
                        ),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(agent_secret(ROOT_CA)),
                    ..Default::default()
                },
            ),
        ),
        ..Default::default()
    };
    let ctx = UpstreamTlsContext {
        sni: tls.sni.clone().unwrap_or_else(|| istio.sni.clone()),
        common_tls_context: Some(common),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// Where each endpoint locality stands for one proxy: Envoy priority
/// (failover order) and locality weight (distribution).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalityPlan {
    /// `region/zone/subzone` -> (priority, weight; `None` = unweighted).
    pub by_locality: BTreeMap<String, (u32, Option<u32>)>,
    /// Whether weights apply (Envoy `locality_weighted_lb_config`).
    pub weighted: bool,
    /// `failoverPriority` (which then decides the priorities instead of
    /// the localities): each entry's label key and the value an endpoint
    /// must have (the proxy's, or the entry's `key=value`). An endpoint
    /// matching every entry gets the top priority; one whose first
    /// mismatch is entry `j` of N gets rank N - j (ranks made dense).
    pub by_labels: Option<Vec<(String, String)>>,
}

impl Effective {
    /// The `localityLbSetting` that applies for a proxy at `proxy`
    /// (`region/zone/subzone`): set, not disabled, with outlier detection,
    /// and the proxy's locality known.
    /// The rule's `localityLbSetting`, else the mesh config's (Istio's
    /// `GetLocalityLbSetting`), when it applies to a proxy at `proxy`.
    fn locality_setting(&self, proxy: &str) -> Option<&crds::destination_rule::LocalityLbSetting> {
        let setting = self
            .load_balancer
            .as_ref()
            .and_then(|lb| lb.locality_lb_setting.as_ref())
            .or(self.mesh.locality.as_ref())
            .unwrap_or(&MESH_LOCALITY_DEFAULT);
        // `failoverPriority` compares labels, and needs no locality.
        let placed = !proxy.is_empty() || !setting.failover_priority.is_empty();
        (self.outlier_detection.is_some() && setting.enabled != Some(false) && placed)
            .then_some(setting)
    }

    /// Whether [`Effective::locality_plan`] can give a plan for a proxy at
    /// `proxy`, before the endpoints' localities are gathered for it.
    pub fn has_locality_plan(&self, proxy: &str) -> bool {
        self.locality_setting(proxy).is_some()
    }

    /// Istio's locality load balancing for a proxy at `proxy` (`region/zone/subzone`)
    /// over endpoints at `localities`. As in Istio it applies only with
    /// outlier detection (which is what moves traffic away from a failing
    /// locality) and a known proxy locality: `distribute` gives weights,
    /// otherwise localities are prioritised by closeness, with `failover`
    /// naming the region to try after the proxy's own.
    ///
    /// With `failoverPriority` (and no `distribute` for the proxy), the
    /// priorities come from labels instead, as Istio's
    /// `applyPriorityFailover`: `proxy_labels` are the proxy's values of
    /// the keys it compares.
    pub fn locality_plan(
        &self,
        proxy: &str,
        proxy_labels: &[(String, String)],
        localities: &[&str],
    ) -> Option<LocalityPlan> {
        let setting = self.locality_setting(proxy)?;
        let mut plan = LocalityPlan::default();
        if let Some(rule) = setting.distribute.iter().find(|d| {
            d.from
                .as_deref()
                .is_some_and(|f| locality_matches(f, proxy))
        }) {
            plan.weighted = true;
            for l in localities {
                let weight: u32 = rule
                    .to
                    .iter()
                    .filter(|(pattern, _)| locality_matches(pattern, l))
                    .map(|(pattern, w)| {
                        let sharing = localities
                            .iter()
                            .filter(|x| locality_matches(pattern, x))
                            .count();
                        w / u32::try_from(sharing.max(1)).unwrap_or(1)
                    })
                    .sum();
                plan.by_locality.insert((*l).to_owned(), (0, Some(weight)));
            }
            return Some(plan);
        }
        if !setting.failover_priority.is_empty() {
            plan.by_labels = Some(
                setting
                    .failover_priority
                    .iter()
                    .map(|entry| match entry.split_once('=') {
                        Some((k, v)) => (k.to_owned(), v.to_owned()),
                        None => {
                            let mine = proxy_labels
                                .iter()
                                .find(|(k, _)| k == entry)
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default();
                            (entry.clone(), mine)
                        }
                    })
                    .collect(),
            );
            return Some(plan);
        }
        let parts = |l: &str| -> [String; 3] {
            let mut it = l.split('/').map(str::to_owned);
            [
                it.next().unwrap_or_default(),
                it.next().unwrap_or_default(),
                it.next().unwrap_or_default(),
            ]
        };
        let me = parts(proxy);
        let raw: Vec<(String, u32)> = localities
            .iter()
            .map(|l| {
                let them = parts(l);
                let priority = if them == me {
                    0
                } else if them[..2] == me[..2] {
                    1
                } else if them[0] == me[0] {
                    2
                } else if setting.failover.iter().any(|f| {
                    f.from.as_deref() == Some(me[0].as_str())
                        && f.to.as_deref() == Some(them[0].as_str())
                }) {
                    3
                } else {
                    4
                };
                ((*l).to_owned(), priority)
            })
            .collect();
        // Envoy wants priorities without gaps.
        let mut used: Vec<u32> = raw.iter().map(|(_, p)| *p).collect();
        used.sort_unstable();
        used.dedup();
        for (l, p) in raw {
            let dense = u32::try_from(used.iter().position(|u| *u == p).unwrap_or(0)).unwrap_or(0);
            plan.by_locality.insert(l, (dense, None));
        }
        Some(plan)
    }
}

/// Istio's locality pattern (`region/zone/subzone`, `*` matching the rest).
pub fn locality_matches(pattern: &str, locality: &str) -> bool {
    let mut l = locality.split('/');
    for p in pattern.split('/') {
        if p == "*" {
            return true;
        }
        if l.next().unwrap_or("") != p {
            return false;
        }
    }
    true
}

/// The route hash policy of a consistent-hash load balancer (Istio puts it
/// on the route to the destination).
pub fn hash_policy(hash: &ConsistentHashLb) -> Option<HashPolicy> {
    let spec = if let Some(h) = &hash.http_header_name {
        hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &hash.http_cookie {
        hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
            name: c.name.clone(),
            ttl: c.ttl.map(|t| duration(t.as_std())),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if hash.use_source_ip == Some(true) {
        hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
            source_ip: true,
        })
    } else if let Some(q) = &hash.http_query_parameter_name {
        hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter {
            name: q.clone(),
        })
    } else {
        return None;
    };
    Some(HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    })
}

/// A cluster's discovery type as a oneof value.
pub(crate) fn discovery(t: cluster::DiscoveryType) -> Option<cluster::ClusterDiscoveryType> {
    Some(cluster::ClusterDiscoveryType::Type(t as i32))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use prost::Message as _;

    use super::*;
    use crate::cluster::IstioTls;

    /// The written match is prost's encoding of the message, for no, one
    /// and several SPIFFE IDs, lengths over 127 (two-byte varints) and no SNI.
    #[test]
    fn written_auto_mtls_match_is_prosts_encoding_of_the_message() {
        let long = format!("spiffe://cluster.local/ns/ns-1/sa/{}", "a".repeat(200));
        let cases = [
            (vec![], "outbound_.80_._.a.ns.svc.cluster.local".to_owned()),
            (
                vec!["spiffe://cluster.local/ns/ns/sa/a".to_owned()],
                "outbound_.80_.v1_.a.ns.svc.cluster.local".to_owned(),
            ),
            (
                vec!["spiffe://cluster.local/ns/ns/sa/a".to_owned(), long.clone()],
                format!("outbound_.80_._.{}", "h".repeat(300)),
            ),
            (vec![long], String::new()),
        ];
        for (sans, sni) in cases {
            let istio = IstioTls {
                sni,
                sans,
                auto: Some(vec![true]),
            };
            let cluster = Cluster {
                transport_socket_matches: vec![auto_mtls_match(&istio)],
                ..Default::default()
            };
            let field = AutoMtlsField::new(&istio);
            let mut written = Vec::new();
            field.write(&mut written);
            assert_eq!(written.len(), field.len(), "{istio:?}");
            assert_eq!(written, cluster.encode_to_vec(), "{istio:?}");
        }
    }
}
