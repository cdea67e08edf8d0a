//! Tracing, as Istio configures it for a Zipkin, OpenTelemetry, Datadog or
//! SkyWalking provider (mesh config `extensionProviders[].zipkin` /
//! `.opentelemetry` / `.datadog` / `.skywalking` named in
//! `defaultProviders.tracing` or by a Telemetry resource): every HTTP
//! connection manager gets the tracer (`envoy.tracers.zipkin`, spans as
//! Zipkin v2 JSON, `envoy.tracers.opentelemetry`, spans over OTLP,
//! `envoy.tracers.datadog`, or `envoy.tracers.skywalking`, segments over
//! gRPC, to the collector's outbound cluster), the mesh's sampling, and
//! Istio's tags;
//! every route gets a decorator naming its operation (Istio's
//! `getRouteOperation`), the span's name.

use envoy_types::pb::envoy::config::route::v3::{Decorator, RouteMatch, route, route_match};
use envoy_types::pb::envoy::config::core::v3::{
    GrpcService, HeaderValue, HeaderValueOption, HttpService, HttpUri, TypedExtensionConfig,
    grpc_service, header_value_option, http_uri,
};
use envoy_types::pb::envoy::config::trace::v3::{
    ClientConfig, DatadogConfig, OpenTelemetryConfig, SkyWalkingConfig, ZipkinConfig,
    client_config, tracing, zipkin_config,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::RequestIdExtension;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use envoy_types::pb::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;
use envoy_types::pb::envoy::r#type::tracing::v3::{CustomTag, custom_tag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;

use crate::model::{Proxy, ResourceDetector, Snapshot, SpanExporter};

/// The pod label naming a workload's canonical service (set by Istio's
/// injector), tagged on its spans as `istio.canonical_service`.
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
/// The pod label naming its revision (`istio.canonical_revision`).
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";

/// The `tracing` of `proxy`'s HTTP connection managers under `settings`
/// (the mesh config's provider, or what the Telemetry resources that
/// apply to it say: [`crate::telemetry::tracing`]); `None` when the
/// collector is not among the services the proxy gets clusters for (Envoy
/// refuses a tracer whose cluster it does not have: every listener
/// carrying it would be NACKed).
pub(crate) fn hcm_tracing(
    snap: &Snapshot,
    proxy: &Proxy,
    settings: crate::telemetry::TracingSettings<'_>,
) -> Option<Tracing> {
    let provider = settings.provider;
    // `namespace/hostname` or a hostname, as Istio's `LookupCluster`.
    let host = provider
        .service
        .split_once('/')
        .map_or(provider.service.as_str(), |(_, h)| h);
    let collector = snap
        .service_for(proxy, host)
        .filter(|s| s.port(provider.port).is_some())?;
    let cluster = crate::cluster::cluster_name(provider.port, "", &collector.hostname);
    let tracer = match &provider.exporter {
        SpanExporter::Zipkin {
            path,
            trace_id_128bit,
        } => tracing::Http {
            name: "envoy.tracers.zipkin".into(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(pack_any(
                ZipkinConfig {
                    collector_cluster: cluster,
                    collector_endpoint: path.clone(),
                    trace_id_128bit: *trace_id_128bit,
                    shared_span_context: Some(BoolValue { value: false }),
                    collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson
                        as i32,
                    collector_hostname: collector.hostname.clone(),
                    ..Default::default()
                },
            ))),
        },
        SpanExporter::OpenTelemetry {
            http_path,
            timeout,
            headers,
            resource_detectors,
            sampler,
        } => {
            let mut config = opentelemetry(
                proxy,
                &collector.hostname,
                cluster.clone(),
                http_path.as_deref(),
                *timeout,
                headers,
            );
            config.resource_detectors = resource_detectors
                .iter()
                .map(|d| resource_detector(*d))
                .collect();
            if let Some(sampler) = sampler {
                // The API's own service, else the collector's.
                let (hostname, cluster) = match &sampler.api {
                    Some((service, port)) => {
                        let host = service.split_once('/').map_or(service.as_str(), |(_, h)| h);
                        let api = snap
                            .service_for(proxy, host)
                            .filter(|s| s.port(*port).is_some())?;
                        (
                            api.hostname.clone(),
                            crate::cluster::cluster_name(*port, "", &api.hostname),
                        )
                    }
                    None => (collector.hostname.clone(), cluster),
                };
                config.sampler = Some(dynatrace_sampler(sampler, &hostname, cluster));
            }
            tracing::Http {
                name: "envoy.tracers.opentelemetry".into(),
                config_type: Some(tracing::http::ConfigType::TypedConfig(pack_any(config))),
            }
        }
        SpanExporter::Datadog => tracing::Http {
            name: "envoy.tracers.datadog".into(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(pack_any(
                DatadogConfig {
                    collector_cluster: cluster,
                    service_name: service_name(proxy),
                    collector_hostname: collector.hostname.clone(),
                    ..Default::default()
                },
            ))),
        },
        SpanExporter::SkyWalking { access_token } => tracing::Http {
            name: "envoy.tracers.skywalking".into(),
            config_type: Some(tracing::http::ConfigType::TypedConfig(pack_any(
                SkyWalkingConfig {
                    grpc_service: Some(GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: cluster,
                                authority: collector.hostname.clone(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }),
                    client_config: access_token.as_ref().map(|token| ClientConfig {
                        backend_token_specifier: Some(
                            client_config::BackendTokenSpecifier::BackendToken(token.clone()),
                        ),
                        ..Default::default()
                    }),
                },
            ))),
        },
    };
    // SkyWalking wants a span per upstream request (Istio starts child
    // spans in the router for it; `spawn_upstream_span` is Envoy's
    // current form of that).
    let spawn_upstream_span = matches!(provider.exporter, SpanExporter::SkyWalking { .. })
        .then_some(BoolValue { value: true });
    let percent = |value| Some(Percent { value });
    let mut custom_tags = if settings.istio_tags {
        istio_tags(proxy)
    } else {
        Vec::new()
    };
    custom_tags.extend(
        settings
            .custom_tags
            .into_iter()
            .flatten()
            .filter_map(|(name, tag)| telemetry_tag(name, tag)),
    );
    Some(Tracing {
        client_sampling: percent(100.0),
        random_sampling: percent(settings.sampling),
        overall_sampling: percent(100.0),
        custom_tags,
        max_path_tag_length: provider
            .max_path_tag_length
            .map(|value| UInt32Value { value }),
        provider: Some(tracer),
        spawn_upstream_span,
        no_context_propagation: settings.no_propagation,
        ..Default::default()
    })
}

/// Envoy's OpenTelemetry tracer as Istio's `otelConfig` writes it: the
/// proxy's service cluster as the service name (`app.namespace`, as the
/// bootstrap's `node.cluster`), and OTLP over gRPC to the collector's
/// outbound `cluster` (authority its `hostname`), or over HTTP when
/// `http_path` is given (the URI the hostname and the path, as Istio
/// joins them).
fn opentelemetry(
    proxy: &Proxy,
    hostname: &str,
    cluster: String,
    http_path: Option<&str>,
    timeout: Option<std::time::Duration>,
    headers: &[(String, String)],
) -> OpenTelemetryConfig {
    let mut config = OpenTelemetryConfig {
        service_name: service_name(proxy),
        ..Default::default()
    };
    match http_path {
        Some(path) => {
            let path = if path.is_empty() || path.starts_with('/') {
                path.to_owned()
            } else {
                format!("/{path}")
            };
            config.http_service = Some(http_service(
                format!("{hostname}{path}"),
                cluster,
                timeout,
                headers,
            ));
        }
        None => {
            config.grpc_service = Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: cluster,
                        authority: hostname.to_owned(),
                        ..Default::default()
                    },
                )),
                timeout: timeout.map(crate::duration),
                initial_metadata: headers
                    .iter()
                    .map(|(name, value)| HeaderValue {
                        key: name.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
        }
    }
    config
}

/// A resource detector's extension config (Istio's
/// `EnvironmentResourceDetector` / `DynatraceResourceDetector`).
fn resource_detector(detector: ResourceDetector) -> TypedExtensionConfig {
    use envoy_types::pb::envoy::extensions::tracers::opentelemetry::resource_detectors::v3::{
        DynatraceResourceDetectorConfig, EnvironmentResourceDetectorConfig,
    };
    match detector {
        ResourceDetector::Environment => TypedExtensionConfig {
            name: "envoy.tracers.opentelemetry.resource_detectors.environment".into(),
            typed_config: Some(pack_any(EnvironmentResourceDetectorConfig::default())),
        },
        ResourceDetector::Dynatrace => TypedExtensionConfig {
            name: "envoy.tracers.opentelemetry.resource_detectors.dynatrace".into(),
            typed_config: Some(pack_any(DynatraceResourceDetectorConfig::default())),
        },
    }
}

/// Envoy's Dynatrace sampler fetching its configuration from `hostname`
/// (the URI's authority, then the sampler's path) through `cluster`, as
/// Istio's `configureDynatraceSampler`.
fn dynatrace_sampler(
    sampler: &crate::model::DynatraceSampler,
    hostname: &str,
    cluster: String,
) -> TypedExtensionConfig {
    use envoy_types::pb::envoy::extensions::tracers::opentelemetry::samplers::v3::DynatraceSamplerConfig;
    let path = sampler.path.trim_start_matches('/');
    TypedExtensionConfig {
        name: "envoy.tracers.opentelemetry.samplers.dynatrace".into(),
        typed_config: Some(pack_any(DynatraceSamplerConfig {
            tenant: sampler.tenant.clone(),
            cluster_id: sampler.cluster_id,
            root_spans_per_minute: sampler.root_spans_per_minute,
            http_service: Some(http_service(
                format!("{hostname}/{path}"),
                cluster,
                sampler.timeout,
                &sampler.headers,
            )),
        })),
    }
}

/// An `HttpService` posting to `uri` through `cluster`, with `timeout`
/// (default [`crate::model::OTLP_HTTP_TIMEOUT`]: Envoy requires one) and
/// `headers` set on each request (overwriting, as Istio's
/// `buildHTTPHeaders`).
fn http_service(
    uri: String,
    cluster: String,
    timeout: Option<std::time::Duration>,
    headers: &[(String, String)],
) -> HttpService {
    HttpService {
        http_uri: Some(HttpUri {
            uri,
            timeout: Some(crate::duration(
                timeout.unwrap_or(crate::model::OTLP_HTTP_TIMEOUT),
            )),
            http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
        }),
        request_headers_to_add: headers
            .iter()
            .map(|(name, value)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: name.clone(),
                    value: value.clone(),
                    ..Default::default()
                }),
                append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd
                    as i32,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Envoy's UUID request IDs, the sampling decision read from them or not
/// (Telemetry `useRequestIdForTraceSampling`, as Istio's
/// `BuildUUIDRequestIDExtension`).
pub(crate) fn request_id_extension(use_for_sampling: bool) -> RequestIdExtension {
    RequestIdExtension {
        typed_config: Some(pack_any(UuidRequestIdConfig {
            use_request_id_for_trace_sampling: Some(BoolValue {
                value: use_for_sampling,
            }),
            ..Default::default()
        })),
    }
}

/// The service a proxy's spans name (OpenTelemetry, Datadog): its
/// service cluster as Istio's bootstrap writes `node.cluster`,
/// `<app label>.<namespace>` (`istio-proxy` without the label).
fn service_name(proxy: &Proxy) -> String {
    let app = proxy
        .labels
        .get("app")
        .map_or("istio-proxy", String::as_str);
    format!("{app}.{}", proxy.namespace)
}

/// Istio's tags on every span, sorted by name: the proxy's canonical
/// revision and service (its pod labels; `latest` and `unknown` without
/// them) and namespace. Istio's `istio.mesh_id` and `istio.cluster_id`
/// (from node metadata this daemon does not read) are not written.
fn istio_tags(proxy: &Proxy) -> Vec<CustomTag> {
    let literal = |tag: &str, value: &str| CustomTag {
        tag: tag.into(),
        r#type: Some(custom_tag::Type::Literal(custom_tag::Literal {
            value: value.into(),
        })),
    };
    let label = |key: &str, default: &str| {
        proxy
            .labels
            .get(key)
            .filter(|v| !v.is_empty())
            .map_or(default, String::as_str)
            .to_owned()
    };
    vec![
        literal(
            "istio.canonical_revision",
            &label(CANONICAL_REVISION, "latest"),
        ),
        literal("istio.canonical_service", &label(CANONICAL_NAME, "unknown")),
        literal("istio.namespace", &proxy.namespace),
    ]
}

/// A Telemetry resource's custom tag (`literal`, `environment`, `header`
/// or `formatter`) as Envoy's; `None` when it names none.
fn telemetry_tag(name: &str, tag: &crds::telemetry::CustomTag) -> Option<CustomTag> {
    let r#type = if let Some(l) = &tag.literal {
        custom_tag::Type::Literal(custom_tag::Literal {
            value: l.value.clone(),
        })
    } else if let Some(e) = &tag.environment {
        custom_tag::Type::Environment(custom_tag::Environment {
            name: e.name.clone(),
            default_value: e.default_value.clone().unwrap_or_default(),
        })
    } else if let Some(h) = &tag.header {
        custom_tag::Type::RequestHeader(custom_tag::Header {
            name: h.name.clone(),
            default_value: h.default_value.clone().unwrap_or_default(),
        })
    } else {
        custom_tag::Type::Value(tag.formatter.as_ref()?.value.clone())
    };
    Some(CustomTag {
        tag: name.to_owned(),
        r#type: Some(r#type),
    })
}

/// A route's decorator (its spans' name), as Istio's `getRouteOperation`:
/// the destination's `host:port` when the route has one cluster, else
/// `vs_name:port`, followed by the path the route matches (`/*` for all).
pub(crate) fn decorator(
    m: Option<&RouteMatch>,
    action: Option<&route::Action>,
    vs_name: &str,
    port: u32,
) -> Decorator {
    let path = match m.and_then(|m| m.path_specifier.as_ref()) {
        Some(route_match::PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(route_match::PathSpecifier::Path(p)) => p.clone(),
        Some(route_match::PathSpecifier::SafeRegex(r)) => r.regex.clone(),
        _ => "/*".into(),
    };
    let cluster = match action {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(
                envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier::Cluster(
                    c,
                ),
            ) => Some(c.as_str()),
            _ => None,
        },
        _ => None,
    };
    // `outbound|<port>|<subset>|<host>`.
    let target = cluster
        .and_then(|c| {
            let mut parts = c.split('|');
            let (_, port, _, host) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            Some(format!("{host}:{port}"))
        })
        .unwrap_or_else(|| format!("{vs_name}:{port}"));
    Decorator {
        operation: format!("{target}{path}"),
        ..Default::default()
    }
}
