//! Istio's standard metrics (`istio_requests_total`,
//! `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes`, `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//! `istio_tcp_received_bytes_total`), with Istio's labels, made by Envoy's
//! stats access logger (`envoy.access_loggers.stats`) where Istio's proxy
//! has its own stats filter (`istio.stats`), which upstream Envoy lacks.
//!
//! - **Where**: on every HTTP connection manager and TCP proxy of a side
//!   (a sidecar's inbound listener reports as `destination`, its outbound
//!   listeners and a gateway's as `source`), beside the access logs
//!   ([`crate::telemetry::Observe`]), for proxies whose Envoy has the
//!   logger ([`crate::model::Proxy::stats_logger`]): an Envoy without it
//!   would refuse the listeners.
//! - **Names**: the stats are `istiocustom.<metric>` with tags, as Istio's
//!   filter names them; Envoy's `/stats/prometheus` prints them as
//!   `envoy_istiocustom_<metric>` unless its build registers the
//!   `istiocustom` namespace (Istio's proxy does), so a Prometheus scraping
//!   upstream Envoy renames them (`metric_relabel_configs`, see
//!   `docs/ISTIO-API-SUPPORT.md`).
//! - **Labels**: the proxy's own side (`source_*` when it reports as
//!   `source`) from its node metadata (`WORKLOAD_NAME`, `NAMESPACE`,
//!   `CLUSTER_ID`, `LABELS`), evaluated by Envoy with CEL so that one
//!   config serves every workload of a config key; the principals from the
//!   TLS certificates; `destination_service*` from the cluster's `istio`
//!   metadata (`services[0]`, as istiod writes it); over HTTP the peer
//!   workload's labels from its headers: Istio's metadata exchange, which
//!   needs its own filters, done with upstream ones. A client's route
//!   configurations add `x-istio-peer-*` headers (its workload, namespace,
//!   app, version, canonical service and revision, cluster) toward mesh
//!   services, the server's sidecar reads them into dynamic metadata and
//!   takes them out (`header_to_metadata`), and answers with its own, which
//!   the client's sidecar reads and takes out in turn; a server answers only
//!   a client that sent them, so nothing reaches an app or leaves the
//!   mesh. Over TCP the peer's labels are `unknown`.
//! - **Telemetry API** (Istio's `mergeMetrics`): a `metrics` entry applies
//!   to its `providers` (else its parent's); the providers in scope are
//!   those of the most specific level naming some, else
//!   `defaultProviders.metrics`, else `prometheus`; metrics are made when a
//!   Prometheus provider is in scope. Each override picks metrics
//!   (`match.metric`, default `ALL_METRICS`; `customMetric` names none of
//!   these) and a side (`match.mode`), and turns them off (`disabled`) or
//!   changes their tags (`tagOverrides`: `UPSERT` a CEL `value`, `REMOVE`).

use std::collections::BTreeMap;

use crds::telemetry::WorkloadMode;
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, LogTypeFilter, access_log, access_log_filter,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option,
};
use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::{
    Config as StatsConfig, config,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TcpAccessLogOptions;
use envoy_types::pb::google::protobuf::UInt64Value;
use envoy_types::util::pack_any;

use crate::model::{Config, Snapshot};
use crate::telemetry::Side;

/// The name of Envoy's stats access logger, as the xDS node's `extensions`
/// list it.
pub const STATS_LOGGER: &str = "envoy.access_loggers.stats";

/// Istio's built-in metrics provider (`prometheus`), always defined.
pub const PROMETHEUS: &str = "prometheus";

/// The stats' namespace: Istio's filter names its stats
/// `istiocustom.<metric>`.
pub const STAT_NAMESPACE: &str = "istiocustom";

/// One of Istio's standard metrics (`MetricSelector.IstioMetric`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    /// `REQUEST_COUNT`: `istio_requests_total`, a counter.
    RequestCount,
    /// `REQUEST_DURATION`: `istio_request_duration_milliseconds`, a
    /// histogram (milliseconds).
    RequestDuration,
    /// `REQUEST_SIZE`: `istio_request_bytes`, a histogram of the request's
    /// headers and body (bytes).
    RequestSize,
    /// `RESPONSE_SIZE`: `istio_response_bytes`, the same of the response.
    ResponseSize,
    /// `TCP_OPENED_CONNECTIONS`: `istio_tcp_connections_opened_total`,
    /// counted when the upstream connection is made.
    TcpOpened,
    /// `TCP_CLOSED_CONNECTIONS`: `istio_tcp_connections_closed_total`.
    TcpClosed,
    /// `TCP_SENT_BYTES`: `istio_tcp_sent_bytes_total`, the bytes sent to
    /// the downstream, counted when the connection closes.
    TcpSent,
    /// `TCP_RECEIVED_BYTES`: `istio_tcp_received_bytes_total`, the bytes
    /// received from it.
    TcpReceived,
}

impl Metric {
    /// Every metric, HTTP first.
    pub const ALL: [Metric; 8] = [
        Metric::RequestCount,
        Metric::RequestDuration,
        Metric::RequestSize,
        Metric::ResponseSize,
        Metric::TcpOpened,
        Metric::TcpClosed,
        Metric::TcpSent,
        Metric::TcpReceived,
    ];

    /// Its name in the Telemetry API (`REQUEST_COUNT`, ...).
    pub fn api_name(self) -> &'static str {
        match self {
            Metric::RequestCount => "REQUEST_COUNT",
            Metric::RequestDuration => "REQUEST_DURATION",
            Metric::RequestSize => "REQUEST_SIZE",
            Metric::ResponseSize => "RESPONSE_SIZE",
            Metric::TcpOpened => "TCP_OPENED_CONNECTIONS",
            Metric::TcpClosed => "TCP_CLOSED_CONNECTIONS",
            Metric::TcpSent => "TCP_SENT_BYTES",
            Metric::TcpReceived => "TCP_RECEIVED_BYTES",
        }
    }

    /// Its stat's name (`istio_requests_total`, ...).
    pub fn stat_name(self) -> &'static str {
        match self {
            Metric::RequestCount => "istio_requests_total",
            Metric::RequestDuration => "istio_request_duration_milliseconds",
            Metric::RequestSize => "istio_request_bytes",
            Metric::ResponseSize => "istio_response_bytes",
            Metric::TcpOpened => "istio_tcp_connections_opened_total",
            Metric::TcpClosed => "istio_tcp_connections_closed_total",
            Metric::TcpSent => "istio_tcp_sent_bytes_total",
            Metric::TcpReceived => "istio_tcp_received_bytes_total",
        }
    }

    fn tcp(self) -> bool {
        self >= Metric::TcpOpened
    }

    /// When Envoy logs what it counts: a request's end, a TCP connection's
    /// upstream connect, or its end.
    fn log_type(self) -> AccessLogType {
        match self {
            Metric::TcpOpened => AccessLogType::TcpUpstreamConnected,
            m if m.tcp() => AccessLogType::TcpConnectionEnd,
            _ => AccessLogType::DownstreamEnd,
        }
    }
}

/// The stats access loggers making Istio's metrics on `side` of a
/// workload to which the Telemetry resources `levels` apply (least specific
/// first, [`crate::telemetry::applicable`]): none when no Prometheus
/// provider is in scope, else one per kind of event (a request's end, a
/// TCP connection's connect and end), each with a log type filter so that
/// one list serves HTTP connection managers and TCP proxies alike.
pub(crate) fn stats_logs(
    snap: &Snapshot,
    levels: &[&Config<crds::TelemetrySpec>],
    side: Side,
) -> Vec<AccessLog> {
    let Some(metrics) = settings(snap, levels, side) else {
        return Vec::new();
    };
    let mut by_event: Vec<(AccessLogType, StatsConfig)> = Vec::new();
    for (metric, tags) in metrics {
        let Some(tags) = tags else { continue };
        let stat = Some(config::Stat {
            name: metric.stat_name().to_owned(),
            tags: tags
                .into_iter()
                .map(|(name, value_format)| config::Tag {
                    name,
                    value_format,
                    rules: None,
                })
                .collect(),
        });
        let event = metric.log_type();
        let at = match by_event.iter().position(|(e, _)| *e == event) {
            Some(i) => i,
            None => {
                by_event.push((
                    event,
                    StatsConfig {
                        stats_scope: Some(envoy_types::pb::envoy::r#type::v3::Scope {
                            prefix: STAT_NAMESPACE.to_owned(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ));
                by_event.len() - 1
            }
        };
        let logger = &mut by_event[at].1;
        let counter = |value_format: &str| config::Counter {
            stat: stat.clone(),
            value_format: value_format.to_owned(),
            value_fixed: value_format.is_empty().then_some(UInt64Value { value: 1 }),
        };
        let histogram = |unit: config::histogram::Unit, value_format: &str| config::Histogram {
            stat: stat.clone(),
            unit: unit as i32,
            value_format: value_format.to_owned(),
        };
        use config::histogram::Unit;
        match metric {
            Metric::RequestCount | Metric::TcpOpened | Metric::TcpClosed => {
                logger.counters.push(counter(""));
            }
            Metric::TcpSent => logger.counters.push(counter("%BYTES_SENT%")),
            Metric::TcpReceived => logger.counters.push(counter("%BYTES_RECEIVED%")),
            Metric::RequestDuration => logger
                .histograms
                .push(histogram(Unit::Milliseconds, "%DURATION%")),
            Metric::RequestSize => logger
                .histograms
                .push(histogram(Unit::Bytes, "%CEL(request.total_size)%")),
            Metric::ResponseSize => logger
                .histograms
                .push(histogram(Unit::Bytes, "%CEL(response.total_size)%")),
        }
    }
    by_event
        .into_iter()
        .map(|(event, logger)| AccessLog {
            name: STATS_LOGGER.into(),
            filter: Some(AccessLogFilter {
                filter_specifier: Some(access_log_filter::FilterSpecifier::LogTypeFilter(
                    LogTypeFilter {
                        types: vec![event as i32],
                        exclude: false,
                    },
                )),
            }),
            config_type: Some(access_log::ConfigType::TypedConfig(pack_any(logger))),
        })
        .collect()
}

/// `access_log` for an HTTP connection manager (`tcp` false) or a TCP
/// proxy: the stats loggers of the other's events left out (they would
/// never log there, and each carries every tag of its metrics).
pub(crate) fn for_protocol(access_log: &[AccessLog], tcp: bool) -> Vec<AccessLog> {
    let http = AccessLogType::DownstreamEnd as i32;
    access_log
        .iter()
        .filter(|log| {
            let Some(access_log_filter::FilterSpecifier::LogTypeFilter(t)) = log
                .filter
                .as_ref()
                .and_then(|f| f.filter_specifier.as_ref())
                .filter(|_| log.name == STATS_LOGGER)
            else {
                return true;
            };
            t.types.contains(&http) != tcp
        })
        .cloned()
        .collect()
}

/// A TCP proxy's `access_log_options` for `access_log`: a log when the
/// upstream connection is made, if a logger counts that
/// (`istio_tcp_connections_opened_total`); `None` otherwise.
pub(crate) fn tcp_log_options(access_log: &[AccessLog]) -> Option<TcpAccessLogOptions> {
    let connected = AccessLogType::TcpUpstreamConnected as i32;
    access_log
        .iter()
        .any(|log| {
            matches!(
                log.filter.as_ref().and_then(|f| f.filter_specifier.as_ref()),
                Some(access_log_filter::FilterSpecifier::LogTypeFilter(t)) if t.types.contains(&connected)
            )
        })
        .then(|| TcpAccessLogOptions {
            flush_access_log_on_connected: true,
            ..Default::default()
        })
}

/// Each metric of `side`: `None` when turned off, else its tags (name ->
/// Envoy format string); `None` in all when no Prometheus provider is in
/// scope.
type Settings = BTreeMap<Metric, Option<BTreeMap<String, String>>>;

fn settings(
    snap: &Snapshot,
    levels: &[&Config<crds::TelemetrySpec>],
    side: Side,
) -> Option<Settings> {
    let defaults: Vec<&str> = snap
        .mesh
        .default_metrics
        .as_ref()
        .map_or(vec![PROMETHEUS], |d| d.iter().map(String::as_str).collect());
    fn names(m: &crds::telemetry::Metrics) -> Vec<&str> {
        m.providers.iter().map(|p| p.name.as_str()).collect()
    }
    // The providers in scope: the most specific level naming some.
    let mut in_scope = defaults.clone();
    for t in levels {
        let level: Vec<&str> = t.spec.metrics.iter().flat_map(names).collect();
        if !level.is_empty() {
            in_scope = level;
        }
    }
    let prometheus = |p: &&str| snap.mesh.metrics_providers.contains(*p);
    if !in_scope.iter().any(prometheus) {
        return None;
    }
    let mut out: Settings = Metric::ALL
        .into_iter()
        .map(|m| (m, Some(default_tags(m, side))))
        .collect();
    let mut parent = defaults;
    for t in levels {
        for entry in &t.spec.metrics {
            let mut providers = names(entry);
            if providers.is_empty() {
                providers.clone_from(&parent);
            }
            parent.clone_from(&providers);
            if !providers
                .iter()
                .any(|p| prometheus(p) && in_scope.contains(p))
            {
                continue;
            }
            for o in &entry.overrides {
                let selector = o.match_.as_ref();
                let mode = selector.and_then(|s| s.mode).unwrap_or_default();
                let side_matches = match mode {
                    WorkloadMode::ClientAndServer => true,
                    WorkloadMode::Client => side == Side::Client,
                    WorkloadMode::Server => side == Side::Server,
                };
                if !side_matches || selector.is_some_and(|s| s.custom_metric.is_some()) {
                    continue;
                }
                let name = selector
                    .and_then(|s| s.metric.as_deref())
                    .unwrap_or("ALL_METRICS");
                for metric in Metric::ALL
                    .into_iter()
                    .filter(|m| name == "ALL_METRICS" || m.api_name() == name)
                {
                    apply(&mut out, metric, side, o);
                }
            }
        }
    }
    Some(out)
}

/// One override on one metric: `disabled` turns it off (false: on again,
/// with its default tags), then its tag overrides change the tags.
fn apply(out: &mut Settings, metric: Metric, side: Side, o: &crds::telemetry::MetricsOverrides) {
    let slot = out.entry(metric).or_insert(None);
    match o.disabled {
        Some(true) => *slot = None,
        Some(false) if slot.is_none() => *slot = Some(default_tags(metric, side)),
        _ => {}
    }
    let Some(tags) = slot else { return };
    for (name, tag) in &o.tag_overrides {
        if tag.operation.as_deref() == Some("REMOVE") {
            tags.remove(name);
        } else if let Some(value) = tag.value.as_deref().filter(|v| !v.is_empty()) {
            tags.insert(name.clone(), format!("%CEL({value})%"));
        }
    }
}

/// The node metadata, in Envoy's CEL.
const NODE: &str = "xds.node.metadata";

/// A node metadata string `key`, or `unknown` (CEL).
fn node_value(key: &str) -> String {
    format!("has({NODE}.{key}) ? {NODE}.{key} : 'unknown'")
}

/// The first of the workload's `labels` it has, else `fallback` (CEL).
fn label_value(labels: &[&str], fallback: &str) -> String {
    labels.iter().rev().fold(fallback.to_owned(), |rest, l| {
        format!("has({NODE}.LABELS) && '{l}' in {NODE}.LABELS ? {NODE}.LABELS['{l}'] : {rest}")
    })
}

/// The workload labels of Istio's metrics, without their side's prefix
/// (`source_` or `destination_`), and the header carrying each to the
/// peer ([`peer_request_headers`], [`peer_response_headers`]).
const WORKLOAD_LABELS: [(&str, &str); 7] = [
    ("workload", "x-istio-peer-workload"),
    ("workload_namespace", "x-istio-peer-namespace"),
    ("app", "x-istio-peer-app"),
    ("version", "x-istio-peer-version"),
    ("canonical_service", "x-istio-peer-canonical-service"),
    ("canonical_revision", "x-istio-peer-canonical-revision"),
    ("cluster", "x-istio-peer-cluster"),
];

/// The proxy's own value of a [`WORKLOAD_LABELS`] label, as a CEL
/// expression over its node metadata.
fn own_value(label: &str) -> String {
    match label {
        "workload" => node_value("WORKLOAD_NAME"),
        "workload_namespace" => node_value("NAMESPACE"),
        "app" => label_value(&["app"], "'unknown'"),
        "version" => label_value(&["version"], "'unknown'"),
        "canonical_service" => label_value(
            &["service.istio.io/canonical-name", "app"],
            &node_value("WORKLOAD_NAME"),
        ),
        "canonical_revision" => label_value(
            &["service.istio.io/canonical-revision", "version"],
            "'latest'",
        ),
        _ => node_value("CLUSTER_ID"),
    }
}

/// Where the peer's labels are kept once read from its headers: the
/// request's dynamic metadata namespace `istio.peer` (also the cluster
/// metadata naming services whose workloads are sent them).
pub const PEER_NAMESPACE: &str = "istio.peer";

/// The peer's value of a [`WORKLOAD_LABELS`] label, from what
/// [`peer_filter`] kept, else `unknown` (CEL). A peer sends every label
/// (its own `unknown` at worst), so the namespace is enough to test.
fn peer_value(label: &str) -> String {
    format!(
        "'{PEER_NAMESPACE}' in metadata.filter_metadata ? metadata.filter_metadata['{PEER_NAMESPACE}'].{label} : 'unknown'"
    )
}

/// The request headers a client's route configurations add (Istio's
/// metadata exchange, in headers of its own): the proxy's workload labels,
/// each only toward a cluster of a mesh service (its
/// [`PEER_NAMESPACE`] cluster metadata: not a `MESH_EXTERNAL` entry),
/// replacing what the app sent. Envoy adds no header whose value is empty.
pub(crate) fn peer_request_headers() -> Vec<HeaderValueOption> {
    peer_headers(&format!(
        "has(xds.cluster_name) && '{PEER_NAMESPACE}' in xds.cluster_metadata.filter_metadata"
    ))
}

/// The response headers a server's inbound route configurations add: its
/// workload labels, only to a client that sent its own (a mesh proxy).
pub(crate) fn peer_response_headers() -> Vec<HeaderValueOption> {
    peer_headers(&format!("'{PEER_NAMESPACE}' in metadata.filter_metadata"))
}

fn peer_headers(when: &str) -> Vec<HeaderValueOption> {
    WORKLOAD_LABELS
        .iter()
        .map(|(label, header)| HeaderValueOption {
            header: Some(HeaderValue {
                key: (*header).to_owned(),
                value: format!("%CEL({when} ? ({}) : '')%", own_value(label)),
                ..Default::default()
            }),
            append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        })
        .collect()
}

/// The HTTP filter reading the peer's labels from its headers into the
/// request's [`PEER_NAMESPACE`] dynamic metadata, and taking the headers
/// out: a server reads a client's request, a client the server's
/// response (Envoy's `header_to_metadata`).
pub(crate) fn peer_filter(side: Side) -> HttpFilter {
    use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::{
        Config as HeaderToMetadata, config,
    };
    let rules = WORKLOAD_LABELS
        .iter()
        .map(|(label, header)| config::Rule {
            header: (*header).to_owned(),
            on_header_present: Some(config::KeyValuePair {
                metadata_namespace: PEER_NAMESPACE.to_owned(),
                key: (*label).to_owned(),
                ..Default::default()
            }),
            remove: true,
            ..Default::default()
        })
        .collect();
    let config = match side {
        Side::Server => HeaderToMetadata {
            request_rules: rules,
            ..Default::default()
        },
        Side::Client => HeaderToMetadata {
            response_rules: rules,
            ..Default::default()
        },
    };
    HttpFilter {
        name: "envoy.filters.http.header_to_metadata".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

/// A field of the cluster's first service (`istio` metadata), else
/// `fallback` (a CEL expression).
fn service_value(field: &str, fallback: &str) -> String {
    format!(
        "%CEL(has(xds.cluster_name) && 'istio' in xds.cluster_metadata.filter_metadata ? xds.cluster_metadata.filter_metadata.istio.services[0].{field} : {fallback})%"
    )
}

/// A certificate's URI SAN (`connection.uri_san_peer_certificate`, ...),
/// or `unknown`.
fn san_value(attribute: &str) -> String {
    format!("%CEL(has({attribute}) ? {attribute} : 'unknown')%")
}

/// Istio's labels of `metric` as `side` reports it, with their Envoy
/// format strings (see the module's docs).
fn default_tags(metric: Metric, side: Side) -> BTreeMap<String, String> {
    let (own, peer) = match side {
        Side::Client => ("source", "destination"),
        Side::Server => ("destination", "source"),
    };
    let unknown = || "unknown".to_owned();
    let mut tags = BTreeMap::new();
    tags.insert(
        "reporter".to_owned(),
        match side {
            Side::Client => "source",
            Side::Server => "destination",
        }
        .to_owned(),
    );
    // The proxy's own workload, and the peer's as its headers told it
    // (HTTP; unknown over TCP).
    for (label, _) in WORKLOAD_LABELS {
        tags.insert(
            format!("{own}_{label}"),
            format!("%CEL({})%", own_value(label)),
        );
        tags.insert(
            format!("{peer}_{label}"),
            if metric.tcp() {
                unknown()
            } else {
                format!("%CEL({})%", peer_value(label))
            },
        );
    }
    let (own_san, peer_san) = match side {
        Side::Client => (
            "upstream.uri_san_local_certificate",
            "upstream.uri_san_peer_certificate",
        ),
        Side::Server => (
            "connection.uri_san_local_certificate",
            "connection.uri_san_peer_certificate",
        ),
    };
    tags.insert(format!("{own}_principal"), san_value(own_san));
    tags.insert(format!("{peer}_principal"), san_value(peer_san));
    tags.insert(
        "destination_service".into(),
        service_value("host", "'unknown'"),
    );
    tags.insert(
        "destination_service_name".into(),
        service_value(
            "name",
            "has(xds.cluster_name) ? xds.cluster_name : 'unknown'",
        ),
    );
    tags.insert(
        "destination_service_namespace".into(),
        service_value("namespace", "'unknown'"),
    );
    tags.insert(
        "connection_security_policy".into(),
        match side {
            Side::Client => unknown(),
            Side::Server => {
                "%CEL(has(connection.mtls) && connection.mtls ? 'mutual_tls' : 'none')%".into()
            }
        },
    );
    tags.insert("response_flags".into(), "%RESPONSE_FLAGS%".into());
    if metric.tcp() {
        tags.insert("request_protocol".into(), "tcp".into());
    } else {
        tags.insert(
            "request_protocol".into(),
            "%CEL('content-type' in request.headers && request.headers['content-type'].startsWith('application/grpc') ? 'grpc' : 'http')%".into(),
        );
        tags.insert("response_code".into(), "%RESPONSE_CODE%".into());
        tags.insert("grpc_response_status".into(), "%GRPC_STATUS_NUMBER%".into());
    }
    tags
}
