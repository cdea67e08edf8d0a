//! `networking.istio.io` VirtualService: how requests to a host are routed.
//! Follows `istio.networking.v1.VirtualService` field for field.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Destination, Duration, Percent, StringMatch};

/// Istio `VirtualService` spec.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.istio.io",
    version = "v1",
    kind = "VirtualService",
    namespaced,
    shortname = "vs"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    /// Destination hosts the rules apply to (names, wildcards `*.foo.com`, `*`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Gateways (`[ns/]name`) and/or `mesh` the routes apply to; empty = `mesh`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Ordered HTTP routes; the first match wins.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// Ordered TLS (SNI) routes for passthrough TLS.
    #[serde(default)]
    pub tls: Vec<TlsRoute>,
    /// Ordered TCP routes.
    #[serde(default)]
    pub tcp: Vec<TcpRoute>,
    /// Namespaces this rule is visible to (`.`, `*`, names).
    #[serde(default)]
    pub export_to: Vec<String>,
}

/// Istio `HTTPRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// Route name, for debugging (Envoy route `name`).
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions; any one matching selects this route (OR of ANDs).
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatchRequest>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<HttpRouteDestination>,
    /// Answer with a redirect instead of forwarding.
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    /// Answer directly with a fixed status and body.
    #[serde(default)]
    pub direct_response: Option<HttpDirectResponse>,
    /// Hand this route over to another VirtualService.
    #[serde(default)]
    pub delegate: Option<Delegate>,
    /// Rewrite the URI / authority before forwarding.
    #[serde(default)]
    pub rewrite: Option<HttpRewrite>,
    /// Request timeout (Envoy route `timeout`); default is disabled.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Retry policy.
    #[serde(default)]
    pub retries: Option<HttpRetry>,
    /// Fault injection (Envoy `envoy.filters.http.fault`).
    #[serde(default)]
    pub fault: Option<HttpFaultInjection>,
    /// Mirror traffic to this destination as well (single mirror).
    #[serde(default)]
    pub mirror: Option<Destination>,
    /// Mirror to several destinations.
    #[serde(default)]
    pub mirrors: Vec<HttpMirrorPolicy>,
    /// Share of traffic mirrored (default 100).
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    /// Deprecated integer form of `mirrorPercentage`.
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    /// Deprecated snake-case spelling of `mirrorPercent`.
    #[serde(default, rename = "mirror_percent")]
    pub mirror_percent_snake: Option<u32>,
    /// CORS policy.
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
    /// Header manipulation on requests and responses.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// Istio `HTTPMatchRequest`: all set fields must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatchRequest {
    /// Name, prefixed to the route's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Path match.
    #[serde(default)]
    pub uri: Option<StringMatch>,
    /// URI scheme match.
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    /// HTTP method match.
    #[serde(default)]
    pub method: Option<StringMatch>,
    /// `:authority` / `Host` match.
    #[serde(default)]
    pub authority: Option<StringMatch>,
    /// Header matches, by lower-case header name.
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    /// Destination port of the request.
    #[serde(default)]
    pub port: Option<u32>,
    /// Labels of the calling workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to (overrides the VirtualService's).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Query parameter matches.
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Case-insensitive `uri` matching.
    #[serde(default)]
    pub ignore_uri_case: Option<bool>,
    /// Headers that must not match.
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Namespace of the calling workload.
    #[serde(default)]
    pub source_namespace: Option<String>,
    /// Stat prefix for this match's route.
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

/// Istio `HTTPRouteDestination`: a destination with a weight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteDestination {
    /// Where to send the request.
    pub destination: Destination,
    /// Relative share (Istio: weights of a route sum to 100; one destination may omit it).
    #[serde(default)]
    pub weight: Option<i32>,
    /// Header manipulation for this destination only.
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// Istio `Headers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// Changes to the request headers.
    #[serde(default)]
    pub request: Option<HeaderOperations>,
    /// Changes to the response headers.
    #[serde(default)]
    pub response: Option<HeaderOperations>,
}

/// Istio `Headers.HeaderOperations`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Overwrite these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these headers.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Istio `HTTPRedirect`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    /// Replace the whole path with this.
    #[serde(default)]
    pub uri: Option<String>,
    /// Replace the matched prefix with this.
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    /// Replace the authority with this.
    #[serde(default)]
    pub authority: Option<String>,
    /// Redirect to this port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Derive the port (`FROM_PROTOCOL_DEFAULT`, `FROM_REQUEST_PORT`).
    #[serde(default)]
    pub derive_port: Option<RedirectPortSelection>,
    /// Redirect to this scheme (`http`, `https`).
    #[serde(default)]
    pub scheme: Option<String>,
    /// Status code (default 301).
    #[serde(default)]
    pub redirect_code: Option<u32>,
}

/// Istio `HTTPRedirect.RedirectPortSelection`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum RedirectPortSelection {
    FromProtocolDefault,
    FromRequestPort,
}

/// Istio `HTTPDirectResponse`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpDirectResponse {
    /// HTTP status code.
    pub status: u32,
    /// Response body.
    #[serde(default)]
    pub body: Option<HttpBody>,
}

/// Istio `HTTPBody`: `string` or base64 `bytes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum HttpBody {
    /// Text body.
    String(String),
    /// Base64-encoded body.
    Bytes(String),
}

impl HttpBody {
    /// The body's bytes: the text, or `bytes` decoded from base64 (the
    /// standard alphabet or the URL-safe one, as protobuf's JSON takes
    /// `bytes`). Errors: `bytes` that are not base64.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        match self {
            HttpBody::String(s) => Ok(s.clone().into_bytes()),
            HttpBody::Bytes(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(b))
                .map_err(|e| format!("not base64: {e}")),
        }
    }
}

/// Istio `Delegate`: another VirtualService (no hosts) to take over.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Delegate {
    /// Name of the delegate VirtualService.
    pub name: String,
    /// Its namespace (default: the delegating one's).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Istio `HTTPRewrite`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRewrite {
    /// Replace the matched path prefix (or whole path on exact match).
    #[serde(default)]
    pub uri: Option<String>,
    /// Replace the Host/authority header.
    #[serde(default)]
    pub authority: Option<String>,
    /// Regex rewrite of the path.
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Istio `RegexRewrite`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// RE2 pattern.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Substitution, may use `\1` groups.
    pub rewrite: String,
}

/// Istio `HTTPRetry`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRetry {
    /// Number of retries (0 disables retries).
    #[serde(default)]
    pub attempts: i32,
    /// Timeout per attempt.
    #[serde(default)]
    pub per_try_timeout: Option<Duration>,
    /// Envoy `retry_on` conditions, comma separated; status codes allowed.
    #[serde(default)]
    pub retry_on: Option<String>,
    /// Retry to other localities.
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    /// Avoid hosts tried before.
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    /// Base interval of the exponential back-off.
    #[serde(default)]
    pub backoff: Option<Duration>,
}

/// Istio `HTTPFaultInjection`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpFaultInjection {
    /// Delay before forwarding.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Abort with an error.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

/// Istio `HTTPFaultInjection.Delay`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    /// Fixed delay.
    #[serde(default)]
    pub fixed_delay: Option<Duration>,
    /// Exponential delay (not implemented by Istio either).
    #[serde(default)]
    pub exponential_delay: Option<Duration>,
    /// Share of requests delayed.
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer percent.
    #[serde(default)]
    pub percent: Option<i32>,
}

/// Istio `HTTPFaultInjection.Abort`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// HTTP status to answer with.
    #[serde(default)]
    pub http_status: Option<i32>,
    /// gRPC status name or number (e.g. `UNAVAILABLE`).
    #[serde(default)]
    pub grpc_status: Option<String>,
    /// HTTP/2 error (not implemented by Istio either).
    #[serde(default)]
    pub http2_error: Option<String>,
    /// Share of requests aborted.
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// Istio `HTTPMirrorPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpMirrorPolicy {
    /// Where mirrored requests go.
    pub destination: Destination,
    /// Share mirrored (default 100).
    #[serde(default)]
    pub percentage: Option<Percent>,
}

/// Istio `CorsPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Allowed origins.
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated exact origins.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// `Access-Control-Allow-Methods`.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// `Access-Control-Allow-Headers`.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// `Access-Control-Expose-Headers`.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`.
    #[serde(default)]
    pub max_age: Option<Duration>,
    /// `Access-Control-Allow-Credentials`.
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    /// `UNSPECIFIED`, `FORWARD` or `IGNORE`.
    #[serde(default)]
    pub unmatched_preflights: Option<UnmatchedPreflights>,
}

/// Istio `CorsPolicy.UnmatchedPreflights`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum UnmatchedPreflights {
    Unspecified,
    Forward,
    Ignore,
}

/// Istio `TLSRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsRoute {
    /// Conditions (OR).
    #[serde(rename = "match", default)]
    pub matches: Vec<TlsMatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// Istio `TLSMatchAttributes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsMatchAttributes {
    /// SNI values to match (wildcards allowed).
    #[serde(default)]
    pub sni_hosts: Vec<String>,
    /// Destination IPs/subnets.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Labels of the calling workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    #[serde(default)]
    pub source_namespace: Option<String>,
}

/// Istio `TCPRoute`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpRoute {
    /// Conditions (OR).
    #[serde(rename = "match", default)]
    pub matches: Vec<L4MatchAttributes>,
    /// Weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

/// Istio `L4MatchAttributes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4MatchAttributes {
    /// Destination IPs/subnets.
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    /// Destination port.
    #[serde(default)]
    pub port: Option<u32>,
    /// Source subnet.
    #[serde(default)]
    pub source_subnet: Option<String>,
    /// Labels of the calling workload.
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    /// Gateways this match applies to.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Namespace of the calling workload.
    #[serde(default)]
    pub source_namespace: Option<String>,
}

/// Istio `RouteDestination` (TCP / TLS).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    /// Where to send the connection.
    pub destination: Destination,
    /// Relative share.
    #[serde(default)]
    pub weight: Option<i32>,
}
