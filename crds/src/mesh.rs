//! Istio's mesh config (`MeshConfig`), as istiod reads it: the `mesh` key
//! of the `istio` ConfigMap in the control plane's namespace
//! (`istio-system`). Only the fields this control plane acts on are typed;
//! the others are kept by name so they can be reported as not supported yet.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;

use crate::ParseError;

/// The ConfigMap name and namespace istiod reads its mesh config from.
pub const MESH_CONFIGMAP: (&str, &str) = ("istio-system", "istio");

/// `MeshConfig`, the parts acted on.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigSpec {
    /// `outboundTrafficPolicy`.
    #[serde(default)]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// `enableAutoMtls` (default true).
    #[serde(default)]
    pub enable_auto_mtls: Option<bool>,
    /// `dnsRefreshRate` (default 60 s): how often proxies resolve the hosts
    /// of DNS clusters (`resolution: DNS` ServiceEntries), unless a
    /// record's TTL says otherwise. Must be above zero.
    #[serde(default)]
    pub dns_refresh_rate: Option<crate::duration::Duration>,
    /// `pathNormalization` (default `BASE`).
    #[serde(default)]
    pub path_normalization: Option<PathNormalizationSpec>,
    /// `accessLogFile`: where every proxy writes its access log
    /// (`/dev/stdout` in Istio's demo profile); empty or absent: none.
    #[serde(default)]
    pub access_log_file: Option<String>,
    /// `accessLogEncoding` (default `TEXT`).
    #[serde(default)]
    pub access_log_encoding: Option<AccessLogEncoding>,
    /// `accessLogFormat`: Envoy's format string (`TEXT`) or a JSON object
    /// of field names to format strings (`JSON`); empty: Istio's default.
    #[serde(default)]
    pub access_log_format: Option<String>,
    /// `discoverySelectors`: the namespaces the control plane considers,
    /// those whose labels any one selector matches (OR of the list); absent
    /// or empty: every namespace. Objects in the others (Services, Pods,
    /// EndpointSlices, Istio's resources, Secrets) are left out of the
    /// mesh, and the root certificate is not written there, as istiod's
    /// `discoveryNamespacesFilter` with `ENABLE_ENHANCED_RESOURCE_SCOPING`.
    /// A null entry selects nothing; `{}` selects every namespace.
    #[serde(default)]
    pub discovery_selectors: Option<Vec<Option<NamespaceSelector>>>,
    /// `defaultServiceExportTo`: the `exportTo` of Kubernetes Services
    /// (without the `networking.istio.io/exportTo` annotation) and
    /// ServiceEntries that set none: namespace names, `.` (its own), `*`
    /// (every namespace, the default) or `~` (none).
    #[serde(default)]
    pub default_service_export_to: Option<Vec<String>>,
    /// `defaultVirtualServiceExportTo`: the same for VirtualServices.
    #[serde(default)]
    pub default_virtual_service_export_to: Option<Vec<String>>,
    /// `defaultDestinationRuleExportTo`: the same for DestinationRules.
    #[serde(default)]
    pub default_destination_rule_export_to: Option<Vec<String>>,
    /// `connectTimeout` (default 10 s): how long a proxy waits for a TCP
    /// connection to an upstream, unless a DestinationRule's
    /// `connectionPool.tcp.connectTimeout` says otherwise.
    #[serde(default)]
    pub connect_timeout: Option<crate::duration::Duration>,
    /// `tcpKeepalive`: TCP keepalive on every upstream connection; a
    /// DestinationRule's `connectionPool.tcp.tcpKeepalive` overrides it
    /// field by field.
    #[serde(default)]
    pub tcp_keepalive: Option<crate::destination_rule::TcpKeepalive>,
    /// `h2UpgradePolicy` (default `DO_NOT_UPGRADE`): `UPGRADE` has
    /// proxies speak HTTP/2 to the upstreams of HTTP/1.1 ports, unless a
    /// DestinationRule's `connectionPool.http.h2UpgradePolicy` says otherwise.
    #[serde(default)]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    /// `defaultHttpRetryPolicy`: the retries of HTTP routes that set none
    /// (VirtualService routes without `retries`, and the default route of
    /// a service without a VirtualService), instead of Istio's default
    /// (2 retries on connection failures and refused streams);
    /// `attempts: 0` turns retries off mesh-wide.
    #[serde(default)]
    pub default_http_retry_policy: Option<crate::virtual_service::HttpRetry>,
    /// `trustDomain` (default `cluster.local`): the SPIFFE trust domain of
    /// the mesh's identities, `spiffe://<trustDomain>/ns/<ns>/sa/<sa>`.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// `trustDomainAliases`: other trust domains whose identities are the
    /// mesh's too (a trust domain migration): clients accept servers, and
    /// servers clients, with an ID in any of them.
    #[serde(default)]
    pub trust_domain_aliases: Option<Vec<String>>,
    /// `rootNamespace` (default `istio-system`): where mesh-wide `Sidecar`
    /// and `PeerAuthentication` resources live.
    #[serde(default)]
    pub root_namespace: Option<String>,
    /// `localityLbSetting` (default `{enabled: true}`): the locality load
    /// balancing of clusters whose DestinationRule sets none. As in Istio
    /// it applies only with outlier detection and a proxy locality.
    #[serde(default)]
    pub locality_lb_setting: Option<crate::destination_rule::LocalityLbSetting>,
    /// `enableTracing` (Istio's default true): the legacy tracing switch.
    /// Without a tracing provider Istio writes only sampling settings,
    /// which have no effect without a tracer; not written here.
    #[serde(default)]
    pub enable_tracing: Option<bool>,
    /// `extensionProviders`: named backends the mesh can use; the `zipkin`
    /// ones trace ([`DefaultProviders::tracing`]).
    #[serde(default)]
    pub extension_providers: Option<Vec<ExtensionProvider>>,
    /// `defaultProviders`: the providers used where no Telemetry resource
    /// says otherwise.
    #[serde(default)]
    pub default_providers: Option<DefaultProviders>,
    /// `ingressControllerMode` (Istio's default `STRICT`): which
    /// Kubernetes Ingresses the mesh's ingress gateway serves.
    #[serde(default)]
    pub ingress_controller_mode: Option<IngressControllerMode>,
    /// `ingressClass` (default `istio`): the `kubernetes.io/ingress.class`
    /// annotation value of the Ingresses it serves.
    #[serde(default)]
    pub ingress_class: Option<String>,
    /// `ingressService` (default `istio-ingressgateway`): the Service in
    /// the control plane's namespace whose addresses an Ingress's status
    /// reports, and (when not the default) the gateway pods' `istio` label.
    #[serde(default)]
    pub ingress_service: Option<String>,
    /// `ingressSelector`: the `istio` label value of the gateway pods that
    /// serve Ingresses (default: `ingressService`'s rule above, else
    /// `ingressgateway`).
    #[serde(default)]
    pub ingress_selector: Option<String>,
    /// `defaultConfig`: the proxies' own settings (`ProxyConfig`); read
    /// here only for `tracing.sampling` and `tracing.maxPathTagLength`
    /// (the injector takes its `defaultConfig` from its values).
    #[serde(default)]
    pub default_config: Option<ProxyConfigSpec>,
    /// Every other top-level field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.ExtensionProvider`: a name and one provider.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// How `defaultProviders` (and Telemetry resources) name it.
    pub name: String,
    /// A Zipkin collector (Zipkin, Jaeger, ...): spans as Zipkin v2 JSON.
    #[serde(default)]
    pub zipkin: Option<ZipkinProvider>,
    /// An OpenTelemetry collector: spans over OTLP (gRPC, or HTTP with
    /// `http`).
    #[serde(default)]
    pub opentelemetry: Option<OpenTelemetryProvider>,
    /// A Datadog agent: spans as Datadog traces (`/v0.4/traces`).
    #[serde(default)]
    pub datadog: Option<DatadogProvider>,
    /// A SkyWalking OAP server: segments over gRPC.
    #[serde(default)]
    pub skywalking: Option<SkyWalkingProvider>,
    /// An external authorizer spoken to over HTTP, for `CUSTOM`
    /// AuthorizationPolicies (Envoy's `ext_authz` with an `http_service`).
    #[serde(default)]
    pub envoy_ext_authz_http: Option<ExtAuthzHttpProvider>,
    /// An external authorizer spoken to over gRPC (Envoy's
    /// `envoy.service.auth.v3.Authorization`), for `CUSTOM` policies on
    /// HTTP and TCP chains.
    #[serde(default)]
    pub envoy_ext_authz_grpc: Option<ExtAuthzGrpcProvider>,
    /// Access logs to a file (`/dev/stdout`: the proxy's container log),
    /// for Telemetry resources' `accessLogging`.
    #[serde(default)]
    pub envoy_file_access_log: Option<FileAccessLogProvider>,
    /// Access logs sent to an OpenTelemetry collector over OTLP/gRPC, for
    /// Telemetry resources' `accessLogging`.
    #[serde(default)]
    pub envoy_otel_als: Option<OtelAccessLogProvider>,
    /// HTTP access log entries streamed to an Envoy gRPC access log
    /// service (`envoy.service.accesslog.v3.AccessLogService`), for
    /// Telemetry resources' `accessLogging`.
    #[serde(default)]
    pub envoy_http_als: Option<GrpcAccessLogProvider>,
    /// TCP access log entries streamed to an Envoy gRPC access log
    /// service, for Telemetry resources' `accessLogging`.
    #[serde(default)]
    pub envoy_tcp_als: Option<GrpcAccessLogProvider>,
    /// Envoy's own Prometheus endpoint (`/stats/prometheus`), for
    /// Istio's standard metrics (Telemetry resources' `metrics`); its
    /// settings are none.
    #[serde(default)]
    pub prometheus: Option<serde_json::Value>,
    /// Every other kind (`lightstep`, `stackdriver`, ...), by name (not
    /// acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.ExtensionProvider.EnvoyFileAccessLogProvider`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileAccessLogProvider {
    /// The file written to (`/dev/stdout`).
    #[serde(default)]
    pub path: String,
    /// The line's format; absent: Istio's default text line.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

/// `MeshConfig.ExtensionProvider.EnvoyOpenTelemetryLogProvider`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtelAccessLogProvider {
    /// The collector's service: its hostname, or `namespace/hostname`.
    pub service: String,
    /// The collector's OTLP/gRPC port (4317).
    pub port: u32,
    /// The log's name (default `otel_envoy_accesslog`).
    #[serde(default)]
    pub log_name: Option<String>,
    /// The record's body (`text`, default Istio's text line) and
    /// attributes (`labels`, name to format string).
    #[serde(default)]
    pub log_format: Option<LogFormat>,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.ExtensionProvider.EnvoyHttpGrpcV3LogProvider` and
/// `EnvoyTcpGrpcV3LogProvider` (the TCP one has no header lists).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcAccessLogProvider {
    /// The access log service: its hostname, or `namespace/hostname`.
    pub service: String,
    /// The service's gRPC port.
    pub port: u32,
    /// The log's name (default `http_envoy_accesslog` or
    /// `tcp_envoy_accesslog`).
    #[serde(default)]
    pub log_name: Option<String>,
    /// Filter state objects logged with each entry (default Istio's peer
    /// metadata objects, `wasm.upstream_peer` and the like).
    #[serde(default)]
    pub filter_state_objects_to_log: Vec<String>,
    /// Request headers logged besides Envoy's own (HTTP only).
    #[serde(default)]
    pub additional_request_headers_to_log: Vec<String>,
    /// Response headers logged (HTTP only).
    #[serde(default)]
    pub additional_response_headers_to_log: Vec<String>,
    /// Response trailers logged (HTTP only).
    #[serde(default)]
    pub additional_response_trailers_to_log: Vec<String>,
    /// Every other field, by name (not acted on).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `EnvoyFileAccessLogProvider.LogFormat`: one of a text line or JSON
/// labels.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFormat {
    /// Envoy's format string (a newline is added when missing); empty:
    /// Istio's default line.
    #[serde(default)]
    pub text: Option<String>,
    /// A JSON line: field name to format string; empty: Istio's default
    /// fields.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, serde_json::Value>>,
}

/// A port as the mesh config may write it: a number, or (protobuf JSON
/// allows it for `uint32`) a string of one.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// `9000`.
    Number(i64),
    /// `"9000"`.
    Text(String),
}

impl PortValue {
    /// The port, if it is one (1 to 65535).
    pub fn port(&self) -> Option<u16> {
        let n = match self {
            PortValue::Number(n) => *n,
            PortValue::Text(s) => s.trim().parse().ok()?,
        };
        u16::try_from(n).ok().filter(|p| *p != 0)
    }
}

/// What both external authorizer providers
/// (`EnvoyExternalAuthorizationHttpProvider` and `...GrpcProvider`) have.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzCommon {
    /// The authorizer's service: its hostname
    /// (`ext-authz.foo.svc.cluster.local`), or `namespace/hostname`.
    pub service: String,
    /// The service's port.
    pub port: PortValue,
    /// How long a check may take (Istio's default 600 s, so that a
    /// DestinationRule's timeout decides).
    #[serde(default)]
    pub timeout: Option<crate::duration::Duration>,
    /// Let requests (and, over gRPC, connections) through when the
    /// authorizer cannot be reached.
    #[serde(default)]
    pub fail_open: Option<bool>,
    /// Clear the route cache after a check that changed headers.
    #[serde(default)]
    pub clear_route_cache: Option<bool>,
    /// The HTTP status sent when the authorizer cannot be reached (default
    /// 403), as a string of the code (`"500"`).
    #[serde(default)]
    pub status_on_error: Option<String>,
    /// Send the request body too.
    #[serde(default)]
    pub include_request_body_in_check: Option<RequestBodyInCheck>,
}

/// `MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationHttpProvider`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzHttpProvider {
    /// The fields both kinds have.
    #[serde(flatten)]
    pub common: ExtAuthzCommon,
    /// Prepended to the request's path in the check request; starts with `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Request headers sent to the authorizer besides Envoy's defaults
    /// (exact, `prefix*` or `*suffix`, case-insensitive).
    #[serde(default)]
    pub include_request_headers_in_check: Vec<String>,
    /// The deprecated name of `includeRequestHeadersInCheck`, used when
    /// that is empty.
    #[serde(default)]
    pub include_headers_in_check: Vec<String>,
    /// Headers added to every check request (name to value; Envoy's
    /// header formatters such as `%REQ(:PATH)%` are evaluated).
    #[serde(default)]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    /// The authorizer's response headers put on the request when allowed.
    #[serde(default)]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// The authorizer's response headers sent to the client when denied.
    #[serde(default)]
    pub headers_to_downstream_on_deny: Vec<String>,
    /// The authorizer's response headers sent to the client when allowed.
    #[serde(default)]
    pub headers_to_downstream_on_allow: Vec<String>,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzGrpcProvider {
    /// The fields both kinds have (all a gRPC provider has).
    #[serde(flatten)]
    pub common: ExtAuthzCommon,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `EnvoyExternalAuthorizationRequestBody`: Envoy's `BufferSettings`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestBodyInCheck {
    /// The most body bytes buffered and sent.
    #[serde(default)]
    pub max_request_bytes: Option<u32>,
    /// Send the first `maxRequestBytes` of a longer body (else 413).
    #[serde(default)]
    pub allow_partial_message: Option<bool>,
    /// Send the body as raw bytes rather than UTF-8 text (gRPC only).
    #[serde(default)]
    pub pack_as_bytes: Option<bool>,
}

/// `MeshConfig.ExtensionProvider.ZipkinTracingProvider`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZipkinProvider {
    /// The collector's service: its hostname
    /// (`zipkin.istio-system.svc.cluster.local`), or `namespace/hostname`.
    pub service: String,
    /// The collector's service port (Zipkin's is 9411).
    pub port: u32,
    /// The longest `http.url` tag, in bytes (Envoy's default 256).
    #[serde(default)]
    pub max_tag_length: Option<u32>,
    /// 64-bit trace IDs rather than Istio's default 128-bit ones.
    #[serde(default, rename = "enable64bitTraceId")]
    pub enable_64bit_trace_id: Option<bool>,
    /// The collector's endpoint (default `/api/v2/spans`).
    #[serde(default)]
    pub path: Option<String>,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.ExtensionProvider.DatadogTracingProvider`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatadogProvider {
    /// The agent's service: its hostname
    /// (`datadog-agent.datadog.svc.cluster.local`), or
    /// `namespace/hostname`.
    pub service: String,
    /// The agent's service port (Datadog's trace port is 8126).
    pub port: u32,
    /// The longest `http.url` tag, in bytes (Envoy's default 256).
    #[serde(default)]
    pub max_tag_length: Option<u32>,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.ExtensionProvider.SkyWalkingTracingProvider`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkyWalkingProvider {
    /// The OAP server's service: its hostname
    /// (`tracing.istio-system.svc.cluster.local`), or `namespace/hostname`.
    pub service: String,
    /// The OAP server's gRPC port (SkyWalking's is 11800).
    pub port: u32,
    /// The token the OAP server is given (Envoy's `backend_token`).
    #[serde(default)]
    pub access_token: Option<String>,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.ExtensionProvider.OpenTelemetryTracingProvider`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenTelemetryProvider {
    /// The collector's service: its hostname
    /// (`otel-collector.observability.svc.cluster.local`), or
    /// `namespace/hostname`.
    pub service: String,
    /// The collector's service port (OTLP's are 4317 for gRPC and 4318
    /// for HTTP).
    pub port: u32,
    /// The longest `http.url` tag, in bytes (Envoy's default 256).
    #[serde(default)]
    pub max_tag_length: Option<u32>,
    /// Export over OTLP/HTTP (protobuf) rather than gRPC.
    #[serde(default)]
    pub http: Option<OtlpHttp>,
    /// Settings of the gRPC export (the default).
    #[serde(default)]
    pub grpc: Option<OtlpGrpc>,
    /// What the tracer adds to its resource's attributes.
    #[serde(default)]
    pub resource_detectors: Option<ResourceDetectors>,
    /// Dynatrace's sampler in place of the mesh's random sampling.
    #[serde(default)]
    pub dynatrace_sampler: Option<DynatraceSampler>,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `OpenTelemetryTracingProvider.ResourceDetectors`: each one set (to
/// `{}`) is on.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceDetectors {
    /// Attributes from the proxy's `OTEL_RESOURCE_ATTRIBUTES` environment
    /// variable (`key=value,...`).
    #[serde(default)]
    pub environment: Option<serde_json::Value>,
    /// Attributes from Dynatrace's enrichment files on the proxy's host.
    #[serde(default)]
    pub dynatrace: Option<serde_json::Value>,
    /// Every other detector, by name (not acted on).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `OpenTelemetryTracingProvider.DynatraceSampler`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DynatraceSampler {
    /// The Dynatrace tenant.
    #[serde(default)]
    pub tenant: String,
    /// The Dynatrace cluster's ID.
    #[serde(default)]
    pub cluster_id: i32,
    /// Root spans per minute when the API gives no figure (0: Envoy's
    /// 1000).
    #[serde(default)]
    pub root_spans_per_minute: u32,
    /// Where the sampling configuration is fetched from; absent: the
    /// provider's own OTLP/HTTP service, at `api/v2/samplingConfiguration`.
    #[serde(default)]
    pub http_service: Option<DynatraceApi>,
    /// Every other field, by name (not acted on).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `DynatraceSampler.DynatraceApi`: the API's service and HTTP settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DynatraceApi {
    /// The API's service: its hostname, or `namespace/hostname`.
    pub service: String,
    /// The service's port.
    pub port: u32,
    /// The path, timeout and headers of the requests.
    #[serde(default)]
    pub http: Option<OtlpHttp>,
}

/// `OpenTelemetryTracingProvider.HttpService`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtlpHttp {
    /// The path spans are posted to (OTLP's is `/v1/traces`).
    #[serde(default)]
    pub path: Option<String>,
    /// How long one post may take.
    #[serde(default)]
    pub timeout: Option<crate::duration::Duration>,
    /// Headers added to each post.
    #[serde(default)]
    pub headers: Vec<ProviderHeader>,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `OpenTelemetryTracingProvider.GrpcService`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtlpGrpc {
    /// How long one export call may take.
    #[serde(default)]
    pub timeout: Option<crate::duration::Duration>,
    /// Metadata sent with each call.
    #[serde(default)]
    pub initial_metadata: Vec<ProviderHeader>,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.ExtensionProvider.HttpHeader`: a header and its value.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderHeader {
    /// Header name.
    pub name: String,
    /// Header value.
    #[serde(default)]
    pub value: String,
    /// The value from istiod's environment variable of this name (instead
    /// of `value`).
    #[serde(default)]
    pub env_name: Option<String>,
    /// Every other field, by name (not acted on).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.DefaultProviders`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProviders {
    /// The tracing providers, by name (the first is used, as Istio).
    #[serde(default)]
    pub tracing: Vec<String>,
    /// The access log providers, by name, where no Telemetry says
    /// otherwise.
    #[serde(default)]
    pub access_logging: Vec<String>,
    /// The metrics providers, by name, where no Telemetry names others;
    /// unset: `prometheus`.
    #[serde(default)]
    pub metrics: Option<Vec<String>>,
    /// Every other field, by name (not acted on yet).
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `ProxyConfig` (the mesh config's `defaultConfig`), the parts read here.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfigSpec {
    /// `tracing`.
    #[serde(default)]
    pub tracing: Option<ProxyTracing>,
    /// The rest, by name (the agent's and the injector's settings, not
    /// read from here yet).
    #[serde(flatten)]
    pub proxy_side: BTreeMap<String, serde_json::Value>,
}

/// `ProxyConfig.Tracing`, the parts read here.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTracing {
    /// Percentage of requests traced, 0.0 to 100.0 (Istio's default 1.0;
    /// 0 keeps the default, over 100 is 1.0, as Istio reads it).
    #[serde(default)]
    pub sampling: Option<f64>,
    /// The longest `http.url` tag, in bytes, when the provider sets none.
    #[serde(default)]
    pub max_path_tag_length: Option<u32>,
    /// Every other field (`zipkin`, `customTags`, ...), by name: the
    /// bootstrap tracers of Istio before 1.22 are not written.
    #[serde(flatten)]
    pub unsupported: BTreeMap<String, serde_json::Value>,
}

/// `MeshConfig.OutboundTrafficPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (default) or `REGISTRY_ONLY`.
    #[serde(default)]
    pub mode: Option<OutboundMode>,
}

/// `MeshConfig.OutboundTrafficPolicy.Mode`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum OutboundMode {
    AllowAny,
    RegistryOnly,
}

/// `MeshConfig.IngressControllerMode`: which Kubernetes Ingresses are
/// served, as Istio's `shouldProcessIngressWithClass`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IngressControllerMode {
    /// None.
    Off,
    /// Those annotated with the mesh's `ingressClass`, those whose
    /// IngressClass names Istio's controller, and those with neither.
    Default,
    /// Only those annotated with the mesh's `ingressClass` or whose
    /// IngressClass names Istio's controller (Istio's default).
    #[default]
    Strict,
}

/// `MeshConfig.H2UpgradePolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    /// HTTP/1.1 stays HTTP/1.1 (Istio's default).
    #[default]
    DoNotUpgrade,
    /// HTTP/1.1 ports' upstreams get HTTP/2.
    Upgrade,
}

/// `MeshConfig.AccessLogEncoding`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AccessLogEncoding {
    /// One line of text per request or connection.
    #[default]
    Text,
    /// One JSON object per request or connection.
    Json,
}

/// `MeshConfig.ProxyPathNormalization`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathNormalizationSpec {
    /// How request paths are normalised before routing and authorization.
    #[serde(default)]
    pub normalization: Option<PathNormalization>,
}

/// `MeshConfig.ProxyPathNormalization.NormalizationType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// `BASE` (Istio's default, as `DEFAULT` is).
    #[default]
    Default,
    /// No normalisation: the path is routed as it came.
    None,
    /// RFC 3986 normalisation: `/a/../b` is `/b`, `%7E` is `~`.
    Base,
    /// As `BASE`, and `//` merged into `/`.
    MergeSlashes,
    /// As `MERGE_SLASHES`, and `%2F` / `%5C` unescaped to `/` / `\` first.
    DecodeAndMergeSlashes,
}

/// A Kubernetes `LabelSelector` over namespaces' labels (mesh config
/// `discoverySelectors[]`): every `matchLabels` pair and every
/// `matchExpressions` requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceSelector {
    /// Labels the namespace must carry with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements.
    #[serde(default)]
    pub match_expressions: Vec<LabelRequirement>,
}

/// A Kubernetes `LabelSelectorRequirement`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRequirement {
    /// The label key.
    pub key: String,
    /// How the label is compared with `values`.
    pub operator: LabelOperator,
    /// One or more values for `In` and `NotIn`; none for `Exists` and
    /// `DoesNotExist` (checked by [`parse`]).
    #[serde(default)]
    pub values: Vec<String>,
}

/// A Kubernetes `LabelSelectorOperator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum LabelOperator {
    /// The label is one of the values.
    In,
    /// The label is absent, or none of the values.
    NotIn,
    /// The label is present, with any value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl NamespaceSelector {
    /// Whether a namespace with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    LabelOperator::In => value.is_some_and(|v| r.values.contains(v)),
                    LabelOperator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    LabelOperator::Exists => value.is_some(),
                    LabelOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// Whether a namespace with `labels` is selected by mesh config
/// `discoverySelectors` (`None` or empty: every namespace; a null entry
/// selects nothing).
pub fn discovery_selects(
    selectors: Option<&[Option<NamespaceSelector>]>,
    labels: &BTreeMap<String, String>,
) -> bool {
    match selectors {
        None | Some([]) => true,
        Some(list) => list.iter().flatten().any(|s| s.matches(labels)),
    }
}

/// Whether a ConfigMap is the mesh config.
pub fn is_mesh_configmap(cm: &ConfigMap) -> bool {
    cm.metadata.namespace.as_deref() == Some(MESH_CONFIGMAP.0)
        && cm.metadata.name.as_deref() == Some(MESH_CONFIGMAP.1)
}

/// The YAML under `key` of the mesh ConfigMap as a `T`; a missing or
/// empty key is `T`'s default.
///
/// # Errors
/// [`ParseError::InvalidField`] naming `data.<key>` (invalid YAML) or
/// `data.<key>.<field>` (a field that does not fit).
fn parse_key<T: serde::de::DeserializeOwned + Default>(
    cm: &ConfigMap,
    key: &str,
) -> Result<T, ParseError> {
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(key)) else {
        return Ok(T::default());
    };
    let value: serde_json::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| mesh_configmap_error(format!("data.{key}"), format!("invalid YAML: {e}")))?;
    if value.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        mesh_configmap_error(format!("data.{key}.{path}"), e.into_inner().to_string())
    })
}

/// A [`ParseError::InvalidField`] of the mesh ConfigMap.
fn mesh_configmap_error(field: String, reason: String) -> ParseError {
    ParseError::InvalidField {
        kind: "ConfigMap".into(),
        name: format!("{}/{}", MESH_CONFIGMAP.0, MESH_CONFIGMAP.1),
        field,
        reason,
    }
}

/// Parses the `mesh` key (YAML) of the mesh ConfigMap; a missing key is the
/// default config.
///
/// # Errors
/// [`ParseError::InvalidField`] naming `data.mesh.<field>`.
pub fn parse(cm: &ConfigMap) -> Result<MeshConfigSpec, ParseError> {
    let spec: MeshConfigSpec = parse_key(cm, "mesh")?;
    let err = mesh_configmap_error;
    // As Kubernetes validates a selector (`labels.NewRequirement`).
    for (i, selector) in spec.discovery_selectors.iter().flatten().enumerate() {
        for (j, r) in selector
            .iter()
            .flat_map(|s| &s.match_expressions)
            .enumerate()
        {
            let field = format!("data.mesh.discoverySelectors[{i}].matchExpressions[{j}].values");
            let with_values = matches!(r.operator, LabelOperator::In | LabelOperator::NotIn);
            if with_values && r.values.is_empty() {
                return Err(err(
                    field,
                    format!("{:?} needs at least one value", r.operator),
                ));
            }
            if !with_values && !r.values.is_empty() {
                return Err(err(field, format!("{:?} takes no values", r.operator)));
            }
        }
    }
    Ok(spec)
}

/// Istio's `MeshNetworks` (`meshNetworks` key of the mesh ConfigMap, a
/// YAML `networks:` map): the networks of a multi-network mesh, how an
/// endpoint is known to be in one, and the gateways through which the
/// other networks reach it (Split Horizon EDS).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshNetworks {
    /// `networks`: by network name.
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
}

/// One network of [`MeshNetworks`] (Istio's `Network`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// `endpoints`: which endpoints are in this network.
    #[serde(default)]
    pub endpoints: Vec<NetworkEndpoints>,
    /// `gateways`: where the other networks reach this one's endpoints.
    #[serde(default)]
    pub gateways: Vec<NetworkGatewaySpec>,
}

/// `Network.NetworkEndpoints`: one of `fromCidr` or `fromRegistry`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkEndpoints {
    /// `fromCidr`: endpoints whose IP is in this range (`10.1.0.0/16`).
    #[serde(default)]
    pub from_cidr: Option<String>,
    /// `fromRegistry`: every endpoint of this registry, by cluster ID
    /// (this control plane's is `Kubernetes`, Istio's default).
    #[serde(default)]
    pub from_registry: Option<String>,
}

/// `Network.IstioNetworkGateway`: one of `registryServiceName` or
/// `address`, and the port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkGatewaySpec {
    /// `registryServiceName`: the gateway Service's hostname
    /// (`istio-eastwestgateway.istio-system.svc.cluster.local`); its
    /// external addresses (`spec.externalIPs`,
    /// `status.loadBalancer.ingress[].ip`) are the gateway's.
    #[serde(default)]
    pub registry_service_name: Option<String>,
    /// `address`: the gateway's IP.
    #[serde(default)]
    pub address: Option<String>,
    /// `port`: where the gateway takes mTLS for this network (Istio's
    /// east-west gateways: 15443), 1-65535.
    #[serde(default)]
    pub port: u32,
    /// `locality`: read, not used (as istiod, which does not either).
    #[serde(default)]
    pub locality: Option<String>,
}

/// Parses the `meshNetworks` key (YAML) of the mesh ConfigMap; a missing
/// or empty key is no networks.
///
/// # Errors
/// [`ParseError::InvalidField`] naming `data.meshNetworks.<field>`: invalid
/// YAML, an unknown field, an entry with both or neither of its one-of
/// fields, a `fromCidr` that is not `IP/prefix`, a port outside 1-65535.
pub fn parse_networks(cm: &ConfigMap) -> Result<MeshNetworks, ParseError> {
    let networks: MeshNetworks = parse_key(cm, "meshNetworks")?;
    let err = mesh_configmap_error;
    for (net, n) in &networks.networks {
        let at = format!("data.meshNetworks.networks.{net}");
        for (i, e) in n.endpoints.iter().enumerate() {
            let field = format!("{at}.endpoints[{i}]");
            match (&e.from_cidr, &e.from_registry) {
                (Some(cidr), None) => {
                    if parse_cidr(cidr).is_none() {
                        return Err(err(
                            format!("{field}.fromCidr"),
                            format!("{cidr:?} is not an IP range (IP/prefix)"),
                        ));
                    }
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(err(
                        field,
                        "needs exactly one of fromCidr and fromRegistry".into(),
                    ));
                }
            }
        }
        for (i, g) in n.gateways.iter().enumerate() {
            let field = format!("{at}.gateways[{i}]");
            if g.registry_service_name.is_some() == g.address.is_some() {
                return Err(err(
                    field,
                    "needs exactly one of registryServiceName and address".into(),
                ));
            }
            if !(1..=65535).contains(&g.port) {
                return Err(err(
                    format!("{field}.port"),
                    format!("{} is not a port (1-65535)", g.port),
                ));
            }
        }
    }
    Ok(networks)
}

/// An IP range `IP/prefix` (a bare IP is its own /32 or /128): the
/// address and the prefix length; `None` when malformed.
pub fn parse_cidr(cidr: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = cidr.split_once('/').unwrap_or((cidr, ""));
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse::<u8>().ok().filter(|l| *l <= max)?
    };
    Some((ip, len))
}

/// Whether `ip` is in the range `(base, len)` of [`parse_cidr`] (an IPv4
/// address is never in an IPv6 range, nor the reverse).
pub fn cidr_contains((base, len): (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (a, b, bits) = match (base, ip) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(a.to_bits()), u128::from(b.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.to_bits(), b.to_bits(), 128),
        _ => return false,
    };
    let shift = bits - u32::from(len);
    shift >= bits || (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(mesh: &str) -> ConfigMap {
        ConfigMap {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("istio".into()),
                namespace: Some("istio-system".into()),
                ..Default::default()
            },
            data: Some([("mesh".to_string(), mesh.to_string())].into()),
            ..Default::default()
        }
    }

    fn networks_cm(text: &str) -> ConfigMap {
        let mut c = cm("");
        c.data = Some([("meshNetworks".to_string(), text.to_string())].into());
        c
    }

    #[test]
    fn mesh_networks_are_read_and_checked_naming_the_field() {
        let n = parse_networks(&networks_cm(
            "networks:
  network1:
    endpoints: [{fromRegistry: Kubernetes}]
    gateways: [{address: 192.0.2.1, port: 15443}]
  network2:
    endpoints: [{fromCidr: 10.2.0.0/16}]
    gateways: [{registryServiceName: istio-eastwestgateway.istio-system.svc.cluster.local, port: 15443}]
",
        ))
        .unwrap();
        assert_eq!(n.networks.len(), 2);
        assert_eq!(
            n.networks["network1"].gateways[0].address.as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(
            n.networks["network2"].endpoints[0].from_cidr.as_deref(),
            Some("10.2.0.0/16")
        );
        // Istio's chart writes `networks: {}` when none are set.
        assert_eq!(
            parse_networks(&networks_cm("networks: {}")).unwrap(),
            MeshNetworks::default()
        );
        for (text, field) in [
            (
                "networks: {n: {endpoints: [{fromCidr: 10.0.0.0/33}]}}",
                "data.meshNetworks.networks.n.endpoints[0].fromCidr",
            ),
            (
                "networks: {n: {endpoints: [{}]}}",
                "data.meshNetworks.networks.n.endpoints[0]",
            ),
            (
                "networks: {n: {gateways: [{address: 1.2.3.4}]}}",
                "data.meshNetworks.networks.n.gateways[0].port",
            ),
            (
                "networks: {n: {gateways: [{port: 15443}]}}",
                "data.meshNetworks.networks.n.gateways[0]",
            ),
            (
                "networks: {n: {gatewayz: []}}",
                "data.meshNetworks.networks.n",
            ),
            ("networks: [", "data.meshNetworks"),
        ] {
            let e = parse_networks(&networks_cm(text)).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn cidr_ranges_contain_their_addresses() {
        let ip = |s: &str| s.parse().unwrap();
        let r = parse_cidr("10.2.0.0/16").unwrap();
        assert!(cidr_contains(r, ip("10.2.255.1")));
        assert!(!cidr_contains(r, ip("10.3.0.1")));
        assert!(!cidr_contains(r, ip("::1")));
        assert!(cidr_contains(
            parse_cidr("0.0.0.0/0").unwrap(),
            ip("8.8.8.8")
        ));
        assert!(cidr_contains(
            parse_cidr("127.0.0.1").unwrap(),
            ip("127.0.0.1")
        ));
        assert!(!cidr_contains(
            parse_cidr("127.0.0.1").unwrap(),
            ip("127.0.0.2")
        ));
        assert!(cidr_contains(
            parse_cidr("fd00::/8").unwrap(),
            ip("fd12::1")
        ));
        assert!(parse_cidr("10.0.0.0/x").is_none() && parse_cidr("nope/8").is_none());
    }

    #[test]
    fn registry_only_and_unsupported_fields() {
        let m = parse(&cm(
            "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\nenablePrometheusMerge: true\n",
        ))
        .unwrap();
        assert_eq!(
            m.outbound_traffic_policy.unwrap().mode,
            Some(OutboundMode::RegistryOnly)
        );
        assert!(m.unsupported.contains_key("enablePrometheusMerge"));
    }

    #[test]
    fn auto_mtls_switch() {
        let m = parse(&cm("enableAutoMtls: false\n")).unwrap();
        assert_eq!(m.enable_auto_mtls, Some(false));
        assert!(m.unsupported.is_empty());
        let e = parse(&cm("enableAutoMtls: sometimes\n")).unwrap_err();
        assert!(e.to_string().contains("enableAutoMtls"), "{e}");
    }

    #[test]
    fn dns_refresh_rate_and_path_normalization() {
        let m = parse(&cm(
            "dnsRefreshRate: 5m\npathNormalization:\n  normalization: MERGE_SLASHES\n",
        ))
        .unwrap();
        assert_eq!(
            m.dns_refresh_rate.map(|d| d.as_std()),
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            m.path_normalization.and_then(|p| p.normalization),
            Some(PathNormalization::MergeSlashes)
        );
        assert!(m.unsupported.is_empty());
        let e = parse(&cm("dnsRefreshRate: often\n")).unwrap_err();
        assert!(e.to_string().contains("data.mesh.dnsRefreshRate"), "{e}");
        let e = parse(&cm("pathNormalization:\n  normalization: TIDY\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("data.mesh.pathNormalization.normalization"),
            "{e}"
        );
    }

    #[test]
    fn access_log_settings() {
        let m = parse(&cm(
            "accessLogFile: /dev/stdout\naccessLogEncoding: JSON\naccessLogFormat: '{\"code\": \"%RESPONSE_CODE%\"}'\n",
        ))
        .unwrap();
        assert_eq!(m.access_log_file.as_deref(), Some("/dev/stdout"));
        assert_eq!(m.access_log_encoding, Some(AccessLogEncoding::Json));
        assert!(m.access_log_format.unwrap().contains("%RESPONSE_CODE%"));
        assert!(m.unsupported.is_empty());
        let e = parse(&cm("accessLogEncoding: XML\n")).unwrap_err();
        assert!(e.to_string().contains("data.mesh.accessLogEncoding"), "{e}");
    }

    #[test]
    fn discovery_selectors_match_as_kubernetes_selectors() {
        let m = parse(&cm("discoverySelectors:
- matchLabels: {env: prod}
  matchExpressions: [{key: team, operator: In, values: [a, b]}]
- matchExpressions: [{key: legacy, operator: DoesNotExist}, {key: tier, operator: NotIn, values: [batch]}]
"))
        .unwrap();
        assert!(m.unsupported.is_empty());
        let selectors = m.discovery_selectors.as_deref();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // The first selector: both conditions.
        assert!(discovery_selects(
            selectors,
            &labels(&[("env", "prod"), ("team", "a"), ("legacy", "")])
        ));
        assert!(!discovery_selects(
            selectors,
            &labels(&[("env", "prod"), ("team", "c"), ("legacy", "")])
        ));
        // The second: no `legacy` label, and `tier` absent or not batch.
        assert!(discovery_selects(selectors, &labels(&[])));
        assert!(discovery_selects(selectors, &labels(&[("tier", "web")])));
        assert!(!discovery_selects(selectors, &labels(&[("tier", "batch")])));
        assert!(!discovery_selects(selectors, &labels(&[("legacy", "yes")])));
        // Absent or empty: every namespace; `{}`: every namespace; null: none.
        assert!(discovery_selects(None, &labels(&[("legacy", "yes")])));
        assert!(discovery_selects(Some(&[]), &labels(&[])));
        let all = parse(&cm("discoverySelectors: [{}]")).unwrap();
        assert!(discovery_selects(
            all.discovery_selectors.as_deref(),
            &labels(&[("x", "y")])
        ));
        let none = parse(&cm("discoverySelectors: [null]")).unwrap();
        assert!(!discovery_selects(
            none.discovery_selectors.as_deref(),
            &labels(&[])
        ));
    }

    #[test]
    fn bad_discovery_selectors_name_the_field() {
        for (mesh, field) in [
            (
                "discoverySelectors: [{matchExpressions: [{key: a, operator: Like, values: [b]}]}]",
                "data.mesh.discoverySelectors[0].matchExpressions[0].operator",
            ),
            (
                "discoverySelectors: [{}, {matchExpressions: [{key: a, operator: In}]}]",
                "data.mesh.discoverySelectors[1].matchExpressions[0].values",
            ),
            (
                "discoverySelectors: [{matchExpressions: [{key: a, operator: Exists, values: [b]}]}]",
                "data.mesh.discoverySelectors[0].matchExpressions[0].values",
            ),
            (
                "discoverySelectors: [{matchLabel: {a: b}}]",
                "data.mesh.discoverySelectors[0]",
            ),
        ] {
            let e = parse(&cm(mesh)).unwrap_err().to_string();
            assert!(e.contains(field), "{mesh}: {e}");
        }
    }

    #[test]
    fn bad_mode_names_the_field() {
        let e = parse(&cm("outboundTrafficPolicy:\n  mode: SOMETIMES\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("data.mesh.outboundTrafficPolicy.mode"),
            "{e}"
        );
    }

    #[test]
    fn ext_authz_providers_parse_as_istio_writes_them() {
        let m = parse(&cm("extensionProviders:\n- name: http\n  envoyExtAuthzHttp:\n    service: ext-authz.foo.svc.cluster.local\n    port: '8000'\n    timeout: 2s\n    includeAdditionalHeadersInCheck: {x-a: b}\n    includeRequestBodyInCheck: {maxRequestBytes: 1024, allowPartialMessage: true}\n    retryPolicy: {}\n- name: grpc\n  envoyExtAuthzGrpc: {service: foo/ext-authz, port: 9000, failOpen: true}\n")).unwrap();
        let providers = m.extension_providers.unwrap();
        let http = providers[0].envoy_ext_authz_http.as_ref().unwrap();
        assert_eq!(http.common.port.port(), Some(8000));
        assert_eq!(http.common.timeout.unwrap().as_std().as_secs(), 2);
        assert_eq!(
            http.common
                .include_request_body_in_check
                .as_ref()
                .unwrap()
                .max_request_bytes,
            Some(1024)
        );
        // Fields not acted on are kept by name, to be reported.
        assert!(http.unsupported.contains_key("retryPolicy"));
        let grpc = providers[1].envoy_ext_authz_grpc.as_ref().unwrap();
        assert_eq!(
            (grpc.common.port.port(), grpc.common.fail_open),
            (Some(9000), Some(true))
        );
        assert!(grpc.unsupported.is_empty(), "{:?}", grpc.unsupported);
        for bad in [
            PortValue::Number(0),
            PortValue::Number(70000),
            PortValue::Text("x".into()),
        ] {
            assert_eq!(bad.port(), None, "{bad:?}");
        }
        // A body setting Envoy does not have is refused by name (serde's
        // `flatten` of the fields both kinds share ends the path at the
        // provider; the message names the field).
        let e = parse(&cm("extensionProviders:\n- name: g\n  envoyExtAuthzGrpc: {service: s, port: 1, includeRequestBodyInCheck: {maxBytes: 1}}\n")).unwrap_err().to_string();
        assert!(
            e.contains("extensionProviders[0].envoyExtAuthzGrpc") && e.contains("`maxBytes`"),
            "{e}"
        );
    }
}
