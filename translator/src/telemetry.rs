//! The Telemetry API (`telemetry.istio.io/v1` Telemetry): each workload's
//! tracing and access logging, as istiod's `Telemetries` computes them.
//!
//! - **Which resources**: the root namespace's Telemetry without a
//!   `selector` (mesh-wide), the workload's namespace's without one, and
//!   the first (by name) of its namespace whose `selector` matches its
//!   labels or (on a Gateway API gateway's pods) whose `targetRef(s)` name
//!   its Gateway ([`crate::attach`]), in that order: the later override the
//!   earlier.
//! - **Sides**: a sidecar's inbound listener is the `SERVER` side, its
//!   outbound listeners and every gateway listener the `CLIENT` side; a
//!   `match.mode` limits an entry to one side.
//! - **Tracing** (Istio's `Telemetries.Tracing`): starting from the mesh
//!   config's default provider, each entry may name another provider (the
//!   first of `providers`; a `zipkin` or `opentelemetry` one of the mesh config), set
//!   `randomSamplingPercentage`, `customTags` (replacing the parent's) and
//!   `disableSpanReporting` (no tracer). No provider: no tracing.
//! - **Access logs** (Istio's `mergeLogs`): without any `accessLogging`
//!   entry or `defaultProviders.accessLogging`, the mesh config's
//!   `accessLogFile` applies as before. Otherwise the providers of the most
//!   specific level naming some are the ones in scope; each entry (its
//!   `providers`, else its parent's) turns them on with its CEL `filter`,
//!   or off with `disabled: true`. Each provider is an `envoyFileAccessLog`
//!   (or the built-in `envoy`: standard output), an `envoyOtelAls`
//!   (OpenTelemetry log records), or an `envoyHttpAls` / `envoyTcpAls`
//!   (Envoy's gRPC access log service).

use std::collections::BTreeMap;

use crds::telemetry::{CustomTag, ModeSelector, WorkloadMode};
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLog, AccessLogFilter, ExtensionFilter, access_log_filter, extension_filter,
};
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::util::pack_any;

use crate::attach::{Targetable, attaches};
use crate::model::{Config, Proxy, Snapshot, TracingProvider};

/// What one side of a workload's listeners carries for observability: the
/// tracer of its HTTP connection managers and the access logs of those
/// and of its TCP proxies.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Observe {
    /// The HTTP connection managers' `tracing`; `None`: not traced.
    pub tracing: Option<envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing>,
    /// The `access_log` of each HTTP connection manager and TCP proxy:
    /// the access logs, then the stats loggers of Istio's metrics
    /// ([`crate::metrics::stats_logs`]).
    pub access_log: Vec<AccessLog>,
    /// The HTTP connection managers' `request_id_extension`: Envoy's UUID
    /// request IDs, written only when a Telemetry sets
    /// `useRequestIdForTraceSampling` (Envoy's default otherwise).
    pub request_id: Option<envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::RequestIdExtension>,
    /// The HTTP connection managers read the peer's workload labels from
    /// its headers ([`crate::metrics::peer_filter`]), and the route
    /// configurations send the proxy's own: its Envoy makes Istio's
    /// metrics ([`crate::model::Proxy::stats_logger`]).
    pub exchange: bool,
    /// The WasmPlugins of this side ([`crate::wasm`]).
    pub wasm: crate::wasm::Plugins,
}

impl Observe {
    /// `proxy`'s, for `side`.
    /// (The Telemetry resources that apply are looked up once for both.)
    pub(crate) fn of(snap: &Snapshot, proxy: &Proxy, side: Side) -> Observe {
        let levels = applicable(snap, &proxy.namespace, &proxy.labels);
        let settings = tracing(snap, &levels, side);
        let request_id = settings
            .as_ref()
            .and_then(|s| s.request_id_sampling)
            .map(crate::trace::request_id_extension);
        let mut access_log = access_logs(snap, proxy, &levels, side);
        if proxy.stats_logger {
            access_log.extend(crate::metrics::stats_logs(snap, &levels, side));
        }
        Observe {
            tracing: settings.and_then(|s| crate::trace::hcm_tracing(snap, proxy, s)),
            access_log,
            request_id,
            exchange: proxy.stats_logger,
            wasm: crate::wasm::Plugins::of(snap, proxy, side),
        }
    }
}

/// Which side of a workload's traffic a listener carries (Istio's
/// `WorkloadMode` of a listener class).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Requests it makes: sidecar outbound, gateways.
    Client,
    /// Requests it serves: sidecar inbound.
    Server,
}

impl Side {
    fn matches(self, selector: Option<&ModeSelector>) -> bool {
        self.matches_mode(selector.map_or(WorkloadMode::ClientAndServer, |s| s.mode))
    }

    /// Whether a setting for `mode` applies to this side.
    pub(crate) fn matches_mode(self, mode: WorkloadMode) -> bool {
        match mode {
            WorkloadMode::ClientAndServer => true,
            WorkloadMode::Client => self == Side::Client,
            WorkloadMode::Server => self == Side::Server,
        }
    }
}

/// The Telemetry resources applying to the workload in `namespace` with
/// `labels`, least specific first (root namespace, namespace, workload).
pub(crate) fn applicable<'a>(
    snap: &'a Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a Config<crds::TelemetrySpec>> {
    if snap.telemetries.is_empty() {
        return Vec::new();
    }
    let root = snap.mesh.root_namespace.as_str();
    let targeted = |t: &Config<crds::TelemetrySpec>| !t.spec.refs().is_empty();
    let wide = |ns: &str| {
        snap.telemetries.iter().find(|t| {
            t.namespace == ns
                && !targeted(t)
                && t.spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.match_labels.is_empty())
        })
    };
    let mut out: Vec<&Config<crds::TelemetrySpec>> = Vec::with_capacity(3);
    out.extend(wide(root));
    if namespace != root {
        out.extend(wide(namespace));
    }
    // The workload's own: selected by labels, or (a Gateway API gateway's
    // pods) by `targetRef(s)`.
    out.extend(snap.telemetries.iter().find(|t| {
        t.namespace == namespace
            && (targeted(t)
                || t.spec
                    .selector
                    .as_ref()
                    .is_some_and(|s| !s.match_labels.is_empty()))
            && attaches(&t.namespace, &t.spec, (root, namespace, labels))
    }));
    out
}

/// The tracing of one side of a workload.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TracingSettings<'a> {
    /// The Zipkin provider spans go to.
    pub provider: &'a TracingProvider,
    /// The share of requests traced, percent.
    pub sampling: f64,
    /// Tags added to every span besides Istio's.
    pub custom_tags: Option<&'a BTreeMap<String, CustomTag>>,
    /// Istio's tags on every span (`enableIstioTags`, default true).
    pub istio_tags: bool,
    /// `useRequestIdForTraceSampling` when set (Envoy's default, true,
    /// otherwise): whether the sampling decision is read from the
    /// request's `x-request-id`, so that one request ID is traced
    /// throughout the mesh or not at all; false leaves it to the tracer.
    pub request_id_sampling: Option<bool>,
    /// `disableContextPropagation`: spans are reported, but no trace
    /// context headers are passed on with the request.
    pub no_propagation: bool,
}

/// The tracing of `side` of a workload to which the Telemetry resources
/// `levels` apply ([`applicable`]); `None`: not traced.
pub(crate) fn tracing<'a>(
    snap: &'a Snapshot,
    levels: &[&'a Config<crds::TelemetrySpec>],
    side: Side,
) -> Option<TracingSettings<'a>> {
    let mut provider = snap.mesh.tracing.as_ref();
    let mut disabled = false;
    let mut custom_tags = None;
    let mut sampling = None;
    let mut istio_tags = true;
    let mut request_id_sampling = None;
    let mut no_propagation = false;
    for t in levels {
        for entry in t
            .spec
            .tracing
            .iter()
            .filter(|e| side.matches(e.match_.as_ref()))
        {
            if let Some(first) = entry.providers.first() {
                provider = snap.mesh.tracing_providers.get(&first.name);
            }
            if let Some(d) = entry.disable_span_reporting {
                disabled = d;
            }
            if !entry.custom_tags.is_empty() {
                custom_tags = Some(&entry.custom_tags);
            }
            if let Some(s) = entry.random_sampling_percentage {
                sampling = Some(s.clamp(0.0, 100.0));
            }
            if let Some(on) = entry.enable_istio_tags {
                istio_tags = on;
            }
            if let Some(on) = entry.use_request_id_for_trace_sampling {
                request_id_sampling = Some(on);
            }
            if let Some(off) = entry.disable_context_propagation {
                no_propagation = off;
            }
        }
    }
    let provider = provider.filter(|_| !disabled)?;
    Some(TracingSettings {
        provider,
        // A sampler of the provider's own decides (Istio: provider
        // sampler, then Telemetry, then the mesh's percentage).
        sampling: if provider.custom_sampler() {
            100.0
        } else {
            sampling.unwrap_or(provider.sampling.0)
        },
        custom_tags,
        istio_tags,
        request_id_sampling,
        no_propagation,
    })
}

/// The access logs of `side` of a workload to which the Telemetry
/// resources `levels` apply ([`applicable`]), for an HTTP connection
/// manager's or TCP proxy's `access_log`.
pub(crate) fn access_logs(
    snap: &Snapshot,
    proxy: &Proxy,
    levels: &[&Config<crds::TelemetrySpec>],
    side: Side,
) -> Vec<AccessLog> {
    let levels: Vec<_> = levels
        .iter()
        .filter(|t| !t.spec.access_logging.is_empty())
        .collect();
    let defaults = &snap.mesh.default_access_logging;
    if levels.is_empty() && defaults.is_empty() {
        // No Telemetry API: the mesh config's `accessLogFile`.
        return crate::access_logs(&snap.mesh);
    }
    fn names(e: &crds::telemetry::AccessLogging) -> Vec<&str> {
        e.providers.iter().map(|p| p.name.as_str()).collect()
    }
    // provider -> its filter (the last entry naming it sets it).
    let mut on: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    if levels.is_empty() {
        on.extend(defaults.iter().map(|d| (d.as_str(), None)));
    } else {
        let mut filters: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        let mut in_scope: Vec<&str> = defaults.iter().map(String::as_str).collect();
        for t in &levels {
            let level: Vec<&str> = t.spec.access_logging.iter().flat_map(names).collect();
            for e in &t.spec.access_logging {
                for p in names(e) {
                    filters.insert(p, e.filter.as_ref().map(|f| f.expression.as_str()));
                }
            }
            if !level.is_empty() {
                in_scope = level;
            }
        }
        let mut parent: Vec<&str> = defaults.iter().map(String::as_str).collect();
        for t in &levels {
            for e in &t.spec.access_logging {
                let mut providers = names(e);
                if providers.is_empty() {
                    providers.clone_from(&parent);
                }
                parent.clone_from(&providers);
                if !side.matches(e.match_.as_ref()) {
                    continue;
                }
                for p in providers.into_iter().filter(|p| in_scope.contains(p)) {
                    if e.disabled == Some(true) {
                        on.remove(p);
                    } else {
                        on.insert(p, filters.get(p).copied().flatten());
                    }
                }
            }
        }
    }
    on.into_iter()
        .filter_map(|(name, filter)| {
            let mesh = &snap.mesh;
            let mut out = if let Some(log) = mesh.access_log_providers.get(name) {
                crate::file_access_log(log)
            } else if let Some(log) = mesh.otel_log_providers.get(name) {
                otel_access_log(snap, proxy, log)?
            } else {
                grpc_access_log(snap, proxy, mesh.grpc_log_providers.get(name)?)?
            };
            out.filter = filter
                .filter(|f| !f.is_empty())
                .map(|expression| AccessLogFilter {
                    filter_specifier: Some(access_log_filter::FilterSpecifier::ExtensionFilter(
                        ExtensionFilter {
                            name: "envoy.access_loggers.extension_filters.cel".into(),
                            config_type: Some(extension_filter::ConfigType::TypedConfig(pack_any(
                                ExpressionFilter {
                                    expression: expression.to_owned(),
                                    ..Default::default()
                                },
                            ))),
                        },
                    )),
                });
            Some(out)
        })
        .collect()
}

/// An `envoyOtelAls` provider as Envoy's OpenTelemetry access logger
/// (Istio's `openTelemetryLog`): OTLP/gRPC to the collector's outbound
/// cluster (its hostname the authority), the log name, the body and
/// attributes as format strings, without Envoy's built-in resource
/// labels. `None` when the collector is not among the services the proxy
/// gets clusters for (Envoy would refuse a logger whose cluster it does
/// not have, and the listener with it).
/// The gRPC service `service` (a hostname, or `namespace/hostname`) at
/// `port` as `proxy` reaches it: Envoy gRPC to its outbound cluster, the
/// hostname as authority (Istio's `LookupCluster`); `None` when the proxy
/// does not see the service or it has no such port (Envoy would refuse a
/// logger naming a cluster it does not have).
fn envoy_grpc_service(
    snap: &Snapshot,
    proxy: &Proxy,
    service: &str,
    port: u32,
) -> Option<envoy_types::pb::envoy::config::core::v3::GrpcService> {
    use envoy_types::pb::envoy::config::core::v3::{GrpcService, grpc_service};
    let host = service.split_once('/').map_or(service, |(_, h)| h);
    let found = snap
        .service_for(proxy, host)
        .filter(|s| s.port(port).is_some())?;
    Some(GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: crate::cluster::cluster_name(port, "", &found.hostname),
                authority: found.hostname.clone(),
                ..Default::default()
            },
        )),
        ..Default::default()
    })
}

/// An `envoyHttpAls` / `envoyTcpAls` provider's logger: Envoy's
/// `envoy.access_loggers.http_grpc` (`HttpGrpcAccessLogConfig`, with the
/// additional headers) or `envoy.access_loggers.tcp_grpc`
/// (`TcpGrpcAccessLogConfig`), API V3, streaming to the service's
/// outbound cluster; `None` when the proxy cannot reach the service.
fn grpc_access_log(
    snap: &Snapshot,
    proxy: &Proxy,
    log: &crate::model::GrpcLog,
) -> Option<AccessLog> {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    use envoy_types::pb::envoy::config::core::v3::ApiVersion;
    use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
        CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
    };
    let common = CommonGrpcAccessLogConfig {
        log_name: log.log_name.clone(),
        grpc_service: Some(envoy_grpc_service(snap, proxy, &log.service, log.port)?),
        transport_api_version: ApiVersion::V3 as i32,
        filter_state_objects_to_log: log.filter_state_objects.clone(),
        ..Default::default()
    };
    let (name, config) = if log.http {
        let [request, response, trailers] = log.headers.clone();
        (
            "envoy.access_loggers.http_grpc",
            pack_any(HttpGrpcAccessLogConfig {
                common_config: Some(common),
                additional_request_headers_to_log: request,
                additional_response_headers_to_log: response,
                additional_response_trailers_to_log: trailers,
            }),
        )
    } else {
        (
            "envoy.access_loggers.tcp_grpc",
            pack_any(TcpGrpcAccessLogConfig {
                common_config: Some(common),
            }),
        )
    };
    Some(AccessLog {
        name: name.into(),
        config_type: Some(ConfigType::TypedConfig(config)),
        ..Default::default()
    })
}

fn otel_access_log(
    snap: &Snapshot,
    proxy: &Proxy,
    log: &crate::model::OtelLog,
) -> Option<AccessLog> {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
    use envoy_types::pb::opentelemetry::proto::common::v1::{
        AnyValue, KeyValue, KeyValueList, any_value,
    };
    let string = |s: &str| AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    };
    let config = OpenTelemetryAccessLogConfig {
        grpc_service: Some(envoy_grpc_service(snap, proxy, &log.service, log.port)?),
        log_name: log.log_name.clone(),
        disable_builtin_labels: true,
        body: Some(string(&log.body)),
        attributes: (!log.attributes.is_empty()).then(|| KeyValueList {
            values: log
                .attributes
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(string(v)),
                    ..Default::default()
                })
                .collect(),
        }),
        formatters: if log.req_without_query {
            vec![TypedExtensionConfig {
                name: "envoy.formatter.req_without_query".into(),
                typed_config: Some(pack_any(
                    envoy_types::pb::envoy::extensions::formatter::req_without_query::v3::ReqWithoutQuery::default(),
                )),
            }]
        } else {
            Vec::new()
        },
        ..Default::default()
    };
    Some(AccessLog {
        name: "envoy.access_loggers.open_telemetry".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(
                pack_any(config),
            ),
        ),
        ..Default::default()
    })
}

/// What of the Telemetry resources cannot be acted on, as warnings naming
/// the field: providers that are not defined (or not of a supported
/// kind), and `metrics` (Istio's stats filter, which upstream Envoy does
/// not have). (Fields not read are reported by `crds::support`.)
pub(crate) fn warnings(snap: &Snapshot) -> Vec<crate::ConfigWarning> {
    let mut out = Vec::new();
    for t in &snap.telemetries {
        let mut warn = |field: String, reason: String| {
            out.push(crate::ConfigWarning::new(
                "Telemetry",
                t.key(),
                field,
                reason,
            ));
        };
        for (i, e) in t.spec.tracing.iter().enumerate() {
            if let Some(p) = e.providers.first()
                && !snap.mesh.tracing_providers.contains_key(&p.name)
            {
                warn(
                    format!("spec.tracing[{i}].providers[0].name"),
                    format!(
                        "{:?} is not a zipkin, opentelemetry, datadog or skywalking extension provider of the mesh config (the kinds supported yet): the workloads it applies to are not traced",
                        p.name
                    ),
                );
            }
        }
        for (i, e) in t.spec.access_logging.iter().enumerate() {
            for (j, p) in e.providers.iter().enumerate() {
                if !snap.mesh.access_log_providers.contains_key(&p.name)
                    && !snap.mesh.otel_log_providers.contains_key(&p.name)
                    && !snap.mesh.grpc_log_providers.contains_key(&p.name)
                {
                    warn(
                        format!("spec.accessLogging[{i}].providers[{j}].name"),
                        format!(
                            "{:?} is not an envoyFileAccessLog, envoyOtelAls, envoyHttpAls or envoyTcpAls extension provider of the mesh config (nor the built-in envoy): it writes no log",
                            p.name
                        ),
                    );
                }
            }
        }
    }
    out
}
