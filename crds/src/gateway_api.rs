//! Kubernetes Gateway API (`gateway.networking.k8s.io`): GatewayClass,
//! Gateway, HTTPRoute, GRPCRoute, TCPRoute, TLSRoute, BackendTLSPolicy,
//! ListenerSet and ReferenceGrant, and the experimental
//! XBackendTrafficPolicy and XListenerSet (`gateway.networking.x-k8s.io`),
//! the kinds istiod converts into its own Gateways and VirtualServices
//! (Istio's "Gateway API" support). Follows the `v1` standard channel field
//! for field (ReferenceGrant is `v1beta1`); `v1beta1` files are read too
//! (the schemas are the same). TCPRoute and TLSRoute follow the
//! experimental channel's `v1alpha2` (what istiod watches); `v1alpha3` and
//! `v1` TLSRoutes are read too.
//!
//! The CRDs themselves come from the Gateway API project
//! (`standard-install.yaml`), not from this crate: these types only read
//! the objects. As everywhere in this crate, unknown fields are errors
//! naming the field. Fields read but not acted on are kept as raw JSON
//! (`serde_json::Value`) and reported by the translator.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use crate::Duration;
use crate::mesh::NamespaceSelector;

/// The API group of the Gateway API.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// API versions of [`GROUP`] that are read.
pub const VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// API versions of [`GROUP`] read for BackendTLSPolicy (`v1` since
/// Gateway API 1.4; `v1alpha3` before).
pub const POLICY_VERSIONS: [&str; 2] = ["v1", "v1alpha3"];

/// API versions of [`GROUP`] read for the experimental TCPRoute and
/// TLSRoute (`v1alpha2` is the one watched).
pub const ALPHA_VERSIONS: [&str; 3] = ["v1alpha2", "v1alpha3", "v1"];

/// The API group of the Gateway API's experimental kinds (`X` kinds).
pub const X_GROUP: &str = "gateway.networking.x-k8s.io";

/// Annotation that makes Istio leave a policy (BackendTLSPolicy,
/// XBackendTrafficPolicy) out: `"true"` (Istio's
/// `istio.io/ignore-policy-attachment`), e.g. a policy meant for another
/// implementation.
pub const IGNORE_POLICY_ANNOTATION: &str = "istio.io/ignore-policy-attachment";

/// The `controllerName` of the GatewayClasses istiod implements.
pub const CONTROLLER_NAME: &str = "istio.io/gateway-controller";

/// The GatewayClass istiod implements even when no such object exists.
pub const DEFAULT_CLASS: &str = "istio";

/// Label on the pods of a Gateway's deployment (Istio's automated
/// deployment sets it to the Gateway's name).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

macro_rules! gateway_api_kind {
    ($(#[$doc:meta])* $kind:ident => $spec:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Deserialize)]
        pub struct $kind {
            /// Standard object metadata.
            pub metadata: ObjectMeta,
            /// The spec.
            pub spec: $spec,
        }
    };
}

gateway_api_kind!(
    /// `GatewayClass` (cluster-scoped): which controller implements
    /// Gateways of this class.
    GatewayClass => GatewayClassSpec
);
gateway_api_kind!(
    /// `Gateway` (`gateway.networking.k8s.io`, not Istio's): listeners of
    /// a load balancer.
    KubeGateway => KubeGatewaySpec
);
gateway_api_kind!(
    /// `HTTPRoute`: HTTP routing rules attached to Gateway listeners or,
    /// for mesh traffic (GAMMA), to Services.
    HttpRoute => HttpRouteSpec
);
gateway_api_kind!(
    /// `GRPCRoute`: gRPC routing rules (by service and method) attached to
    /// Gateway listeners or Services.
    GrpcRoute => GrpcRouteSpec
);
gateway_api_kind!(
    /// `TCPRoute`: TCP connections of a Gateway listener (or, for mesh
    /// traffic, of a Service) forwarded to weighted backends.
    TcpRoute => TcpRouteSpec
);
gateway_api_kind!(
    /// `TLSRoute`: TLS connections routed by their SNI, passed through
    /// (or, on a terminating listener, decrypted) to weighted backends.
    TlsRoute => TlsRouteSpec
);
gateway_api_kind!(
    /// `BackendTLSPolicy`: how proxies originate TLS to a Service (the CA
    /// that verifies it, the SNI name and the names it must present).
    BackendTlsPolicy => BackendTlsPolicySpec
);
gateway_api_kind!(
    /// `XBackendTrafficPolicy` (`gateway.networking.x-k8s.io/v1alpha1`):
    /// how clients treat a Service (a retry budget; session persistence).
    BackendTrafficPolicy => BackendTrafficPolicySpec
);
gateway_api_kind!(
    /// `ListenerSet` (`v1` since Gateway API 1.5; the experimental
    /// `XListenerSet` before): listeners added to a Gateway that allows
    /// them, from another object (and namespace).
    ListenerSet => ListenerSetSpec
);
gateway_api_kind!(
    /// `ReferenceGrant`: lets objects of other namespaces refer to
    /// objects of this one.
    ReferenceGrant => ReferenceGrantSpec
);

/// `GatewayClassSpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayClassSpec {
    /// The implementing controller, e.g. `istio.io/gateway-controller`.
    pub controller_name: String,
    /// Controller-specific parameters (not read).
    #[serde(default)]
    pub parameters_ref: Option<serde_json::Value>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// `GatewaySpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeGatewaySpec {
    /// The GatewayClass's name.
    pub gateway_class_name: String,
    /// Listeners (1-64).
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// Requested addresses: a `Hostname` names the existing Service of a
    /// manually deployed gateway (Istio's "manual deployment").
    #[serde(default)]
    pub addresses: Vec<GatewayAddress>,
    /// Labels and annotations for the deployed infrastructure.
    #[serde(default)]
    pub infrastructure: Option<GatewayInfrastructure>,
    /// Which ListenerSets may add listeners to this Gateway (none unless
    /// set).
    #[serde(default)]
    pub allowed_listeners: Option<AllowedListeners>,
    /// Client TLS towards backends, Gateway API 1.3-1.4's experimental
    /// form (1.5 moved it to `spec.tls.backend`, which wins).
    #[serde(default, rename = "backendTLS")]
    pub backend_tls: Option<GatewayBackendTls>,
    /// Gateway-wide TLS (Gateway API 1.5): client certificate validation
    /// for the listeners that terminate TLS.
    #[serde(default)]
    pub tls: Option<GatewayTlsSpec>,
}

/// `GatewayTLSConfigs` (a Gateway's `spec.tls`, Gateway API 1.5).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTlsSpec {
    /// TLS towards clients: their certificates' validation.
    #[serde(default)]
    pub frontend: Option<FrontendTlsConfig>,
    /// TLS towards backends: the client certificate the gateway presents.
    #[serde(default)]
    pub backend: Option<GatewayBackendTls>,
}

/// `AllowedListeners`: the namespaces whose ListenerSets may attach.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedListeners {
    /// `from`: `None` (the default), `Same`, `All` or `Selector`.
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
}

/// `ListenerSetSpec`: listeners added to a Gateway.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerSetSpec {
    /// The Gateway the listeners are added to.
    pub parent_ref: ParentGatewayReference,
    /// The listeners (`ListenerEntry`, a Gateway listener's fields);
    /// names are unique within the ListenerSet.
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// `ParentGatewayReference`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParentGatewayReference {
    /// Group (default `gateway.networking.k8s.io`).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Gateway`).
    #[serde(default)]
    pub kind: Option<String>,
    /// The Gateway's name.
    pub name: String,
    /// Its namespace (default: the ListenerSet's).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `GatewayBackendTLS`: what the gateway's proxies present when they
/// originate TLS to a backend (one a BackendTLSPolicy reaches).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayBackendTls {
    /// A Secret (`kubernetes.io/tls`: `tls.crt`, `tls.key`) of the
    /// Gateway's namespace, or of another with a ReferenceGrant.
    #[serde(default)]
    pub client_certificate_ref: Option<ObjectReference>,
}

/// `FrontendTLSConfig`: the validation of every terminating listener
/// (`default`), or of those on one port (`perPort`, which wins).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendTlsConfig {
    /// For every listener terminating TLS.
    #[serde(default)]
    pub default: Option<TlsValidationConfig>,
    /// For the listeners on one port.
    #[serde(default)]
    pub per_port: Vec<TlsPortConfig>,
}

/// `TLSConfig` of `spec.tls.frontend`: a client certificate validation.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsValidationConfig {
    /// How client certificates are checked.
    #[serde(default)]
    pub validation: Option<FrontendTlsValidation>,
}

/// `TLSPortConfig`: the validation of the listeners on `port`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsPortConfig {
    /// The listeners' port.
    pub port: u32,
    /// Their validation.
    #[serde(default)]
    pub tls: TlsValidationConfig,
}

/// `FrontendTLSValidation` (GEP-91): clients must present a certificate
/// that one of these CAs signed.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendTlsValidation {
    /// ConfigMaps whose `ca.crt` is the trust anchor (one is Core
    /// support).
    #[serde(default)]
    pub ca_certificate_refs: Vec<ObjectReference>,
    /// `AllowValidOnly` (the default: a valid certificate is required) or
    /// `AllowInsecureFallback` (none, or an invalid one, is let through).
    #[serde(default)]
    pub mode: Option<String>,
}

/// `GatewayInfrastructure`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayInfrastructure {
    /// Labels of every object deployed for the Gateway.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations of every object deployed for the Gateway.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// A ConfigMap of the Gateway's namespace customizing the deployed
    /// objects (Istio's keys `deployment`, `service`, `serviceAccount`,
    /// `horizontalPodAutoscaler`, `podDisruptionBudget`).
    #[serde(default)]
    pub parameters_ref: Option<LocalParametersReference>,
}

/// `LocalParametersReference`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalParametersReference {
    /// API group (`""`: core).
    #[serde(default)]
    pub group: String,
    /// Kind (`ConfigMap`).
    pub kind: String,
    /// Name, in the Gateway's namespace.
    pub name: String,
}

/// The label of a ConfigMap of Istio's namespace holding the deployment
/// defaults (the [`PARAMETERS_KEYS`]) of the Gateways of the GatewayClass
/// it names (Istio's GatewayClass defaults).
pub const CLASS_DEFAULTS_LABEL: &str = "gateway.istio.io/defaults-for-class";

/// The keys of a Gateway's `parametersRef` ConfigMap Istio reads: each a
/// YAML overlay of the deployed object of that kind.
pub const PARAMETERS_KEYS: [&str; 5] = [
    "deployment",
    "service",
    "serviceAccount",
    "horizontalPodAutoscaler",
    "podDisruptionBudget",
];

/// `GatewaySpecAddress`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAddress {
    /// `IPAddress` (the default), `Hostname` or `NamedAddress`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// The address.
    #[serde(default)]
    pub value: String,
}

/// `Listener`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Unique in the Gateway; routes name it as `sectionName`.
    pub name: String,
    /// Host the listener serves, wildcards as `*.example.com`; none: any.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Port number.
    pub port: u32,
    /// `HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP`.
    pub protocol: String,
    /// TLS settings (`HTTPS`, `TLS`).
    #[serde(default)]
    pub tls: Option<GatewayTlsConfig>,
    /// Which routes may attach.
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

/// `GatewayTLSConfig` (a listener's `tls`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTlsConfig {
    /// `Terminate` (the default) or `Passthrough`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Server certificates: Secrets (`kubernetes.io/tls`), at most two.
    #[serde(default)]
    pub certificate_refs: Vec<ObjectReference>,
    /// Implementation options; Istio reads
    /// `gateway.istio.io/tls-terminate-mode` (`MUTUAL`, `OPTIONAL_MUTUAL`,
    /// `ISTIO_MUTUAL`, `ISTIO_SIMPLE`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Client certificate validation (Gateway API 1.3-1.4's per-listener
    /// form; 1.5 moved it to the Gateway's `spec.tls.frontend`).
    #[serde(default)]
    pub frontend_validation: Option<FrontendTlsValidation>,
}

/// `SecretObjectReference` / `BackendObjectReference` / `ParentReference`
/// fields in one: a reference to an object, `group` and `kind` defaulted
/// by where it appears.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectReference {
    /// API group (`""`: core).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the referring object's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// A listener's name (parent references).
    #[serde(default)]
    pub section_name: Option<String>,
    /// A port: the listener's (parent) or the Service's (backend).
    #[serde(default)]
    pub port: Option<u32>,
}

/// `AllowedRoutes`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedRoutes {
    /// Namespaces routes may come from.
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    /// Route kinds (default: by the listener's protocol).
    #[serde(default)]
    pub kinds: Vec<RouteGroupKind>,
}

/// `RouteNamespaces`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    #[serde(default)]
    pub from: Option<String>,
    /// Namespace labels, with `from: Selector`.
    #[serde(default)]
    pub selector: Option<NamespaceSelector>,
}

/// `RouteGroupKind`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteGroupKind {
    /// Group (default `gateway.networking.k8s.io`).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind, e.g. `HTTPRoute`.
    pub kind: String,
}

/// `HTTPRouteSpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// Gateways (listeners) or Services (mesh) the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ObjectReference>,
    /// Hosts matched (`Host` header); none: any the listener allows.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, tried in Gateway API precedence order.
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// `HTTPRouteRule`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// Route name (Envoy's route `name`).
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these matches (none: every request).
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters applied to matched requests.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Where requests go, weighted.
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// Retries.
    #[serde(default)]
    pub retry: Option<HttpRouteRetry>,
    /// Session persistence (not read).
    #[serde(default)]
    pub session_persistence: Option<serde_json::Value>,
}

/// `HTTPRouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// Path match (default: prefix `/`).
    #[serde(default)]
    pub path: Option<HttpPathMatch>,
    /// Header matches, all of them.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// Query parameter matches, all of them.
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// HTTP method.
    #[serde(default)]
    pub method: Option<String>,
}

/// `HTTPPathMatch`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// The path (default `/`).
    #[serde(default)]
    pub value: Option<String>,
}

/// `HTTPHeaderMatch` / `HTTPQueryParamMatch`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Header or parameter name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// `HTTPRouteFilter`: one of its members, named by `type`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`,
    /// `RequestMirror`, `RequestRedirect`, `URLRewrite`, `CORS`,
    /// `ExtensionRef`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Request headers set, added, removed.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderFilter>,
    /// Response headers set, added, removed.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderFilter>,
    /// A copy of each request to another backend.
    #[serde(default)]
    pub request_mirror: Option<RequestMirrorFilter>,
    /// A redirect response.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirectFilter>,
    /// Host and path rewritten before forwarding.
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewriteFilter>,
    /// CORS policy.
    #[serde(default, rename = "cors")]
    pub cors: Option<CorsFilter>,
    /// An implementation-specific filter (not read).
    #[serde(default)]
    pub extension_ref: Option<serde_json::Value>,
}

/// `HTTPHeaderFilter`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderFilter {
    /// Headers overwritten.
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// Headers appended.
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Header names removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `HTTPHeader`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    /// Name (case-insensitive).
    pub name: String,
    /// Value.
    pub value: String,
}

/// `HTTPRequestMirrorFilter`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirrorFilter {
    /// The mirror's backend (a Service and port).
    pub backend_ref: ObjectReference,
    /// Share of requests mirrored, 0-100 (default: all).
    #[serde(default)]
    pub percent: Option<u32>,
    /// Share of requests mirrored as a fraction.
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// `Fraction`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    /// Numerator.
    pub numerator: u32,
    /// Denominator (default 100).
    #[serde(default)]
    pub denominator: Option<u32>,
}

/// `HTTPRequestRedirectFilter`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirectFilter {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host of the `Location`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path of the `Location`.
    #[serde(default)]
    pub path: Option<HttpPathModifier>,
    /// Port of the `Location`.
    #[serde(default)]
    pub port: Option<u32>,
    /// `301` or `302` (default `302`).
    #[serde(default)]
    pub status_code: Option<u32>,
}

/// `HTTPURLRewriteFilter`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewriteFilter {
    /// The `Host` forwarded.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The path forwarded.
    #[serde(default)]
    pub path: Option<HttpPathModifier>,
}

/// `HTTPPathModifier`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// With `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`: what replaces the matched path prefix.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// `HTTPCORSFilter`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsFilter {
    /// Origins allowed (exact).
    #[serde(default)]
    pub allow_origins: Vec<String>,
    /// Whether credentials are allowed.
    #[serde(default)]
    pub allow_credentials: bool,
    /// Methods allowed.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Request headers allowed.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers exposed.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Seconds a preflight may be cached.
    #[serde(default)]
    pub max_age: Option<u32>,
}

/// `HTTPBackendRef`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBackendRef {
    /// API group (default `""`: a Service).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// The Service's name.
    pub name: String,
    /// Its namespace (default: the route's; another needs a ReferenceGrant).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service port (required for a Service).
    #[serde(default)]
    pub port: Option<u32>,
    /// Relative weight (default 1; 0: no traffic).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Filters for this backend only (header modifiers).
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
}

/// `HTTPRouteTimeouts` (GEP-2257 durations, e.g. `10s`, `500ms`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// The whole request, retries included (`0s`: none).
    #[serde(default)]
    pub request: Option<Duration>,
    /// Each request to a backend.
    #[serde(default)]
    pub backend_request: Option<Duration>,
}

/// `HTTPRouteRetry`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRetry {
    /// HTTP status codes retried (besides connection failures).
    #[serde(default)]
    pub codes: Vec<u32>,
    /// Retries (default 2, Istio's).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Base interval between retries.
    #[serde(default)]
    pub backoff: Option<Duration>,
}

/// `GRPCRouteSpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteSpec {
    /// Gateways (listeners) or Services (mesh) the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ObjectReference>,
    /// Hosts matched (`:authority`); none: any the listener allows.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules, tried in Gateway API precedence order.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// `GRPCRouteRule`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteRule {
    /// Route name (Envoy's route `name`).
    #[serde(default)]
    pub name: Option<String>,
    /// Any of these matches (none: every call).
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters: `RequestHeaderModifier`, `ResponseHeaderModifier`,
    /// `RequestMirror`, `ExtensionRef`.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Where calls go, weighted.
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    /// Session persistence (not read).
    #[serde(default)]
    pub session_persistence: Option<serde_json::Value>,
}

/// `GRPCRouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRouteMatch {
    /// The gRPC service and method.
    #[serde(default)]
    pub method: Option<GrpcMethodMatch>,
    /// Header (metadata) matches, all of them.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

/// `GRPCMethodMatch`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// `Exact` (the default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Fully qualified service, e.g. `helloworld.Greeter`.
    #[serde(default)]
    pub service: Option<String>,
    /// Method, e.g. `SayHello`.
    #[serde(default)]
    pub method: Option<String>,
}

/// `TCPRouteSpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpRouteSpec {
    /// Gateways (listeners) or Services (mesh) the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ObjectReference>,
    /// Rules (Istio uses the first; one is the norm).
    #[serde(default)]
    pub rules: Vec<L4RouteRule>,
}

/// `TLSRouteSpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsRouteSpec {
    /// Gateways (listeners) or Services (mesh) the route attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ObjectReference>,
    /// SNI host names matched (`*.example.com` wildcards); none: any the
    /// listener allows.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<L4RouteRule>,
}

/// `TCPRouteRule` and `TLSRouteRule`: where connections go.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4RouteRule {
    /// Rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// Backends, weighted per connection.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

/// `BackendRef`: a backend of a TCPRoute or TLSRoute rule.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// API group (default `""`: a Service).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// The Service's name.
    pub name: String,
    /// Its namespace (default: the route's; another needs a ReferenceGrant).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The Service port (required for a Service).
    #[serde(default)]
    pub port: Option<u32>,
    /// Relative weight (default 1; 0: no connections).
    #[serde(default)]
    pub weight: Option<u32>,
}

impl From<&BackendRef> for HttpBackendRef {
    fn from(b: &BackendRef) -> HttpBackendRef {
        HttpBackendRef {
            group: b.group.clone(),
            kind: b.kind.clone(),
            name: b.name.clone(),
            namespace: b.namespace.clone(),
            port: b.port,
            weight: b.weight,
            filters: Vec::new(),
        }
    }
}

/// `BackendTLSPolicySpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsPolicySpec {
    /// The Services (of the policy's namespace) it applies to; a
    /// `sectionName` names one port of the Service.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetRef>,
    /// How the backend's certificate is verified.
    pub validation: BackendTlsValidation,
    /// Implementation-specific options (not read).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `XBackendTrafficPolicy`'s `BackendTrafficPolicySpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTrafficPolicySpec {
    /// The Services (of the policy's namespace) it applies to (whole
    /// Services: no `sectionName`).
    #[serde(default)]
    pub target_refs: Vec<LocalObjectReference>,
    /// A retry budget: how many of the active requests may be retries.
    #[serde(default)]
    pub retry_constraint: Option<RetryConstraint>,
    /// Sticky sessions (not read: Istio has no DestinationRule field for
    /// it; reported).
    #[serde(default)]
    pub session_persistence: Option<serde_json::Value>,
}

/// `RetryConstraint`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConstraint {
    /// The share of active requests that may be retries (the API's
    /// default: 20 % over 10 s).
    #[serde(default)]
    pub budget: Option<RetryBudgetDetails>,
    /// The retries always allowed (the API's default: 10 per second).
    #[serde(default)]
    pub min_retry_rate: Option<RequestRate>,
}

/// `BudgetDetails`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetDetails {
    /// Percent of active requests, 0-100.
    #[serde(default)]
    pub percent: Option<u32>,
    /// The window active requests are counted over (1 s to 1 h).
    #[serde(default)]
    pub interval: Option<Duration>,
}

/// `RequestRate`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRate {
    /// Requests per `interval`.
    #[serde(default)]
    pub count: Option<u32>,
    /// The rate's divisor.
    #[serde(default)]
    pub interval: Option<Duration>,
}

/// `LocalPolicyTargetReferenceWithSectionName`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetRef {
    /// API group (`""`: core).
    #[serde(default)]
    pub group: String,
    /// Kind (`Service`).
    pub kind: String,
    /// Name, in the policy's namespace.
    pub name: String,
    /// A port's name.
    #[serde(default)]
    pub section_name: Option<String>,
}

/// `BackendTLSPolicyValidation`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsValidation {
    /// ConfigMaps (of the policy's namespace) whose `ca.crt` verifies the
    /// backend (Istio uses the first).
    #[serde(default)]
    pub ca_certificate_refs: Vec<LocalObjectReference>,
    /// `System`: the proxy's system roots.
    #[serde(default, rename = "wellKnownCACertificates")]
    pub well_known_ca_certificates: Option<String>,
    /// The SNI name sent, and the name the certificate must hold (unless
    /// `subjectAltNames` are given).
    pub hostname: String,
    /// Names the backend's certificate must hold one of.
    #[serde(default)]
    pub subject_alt_names: Vec<SubjectAltName>,
}

/// `LocalObjectReference`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalObjectReference {
    /// API group (`""`: core).
    #[serde(default)]
    pub group: String,
    /// Kind (`ConfigMap`).
    pub kind: String,
    /// Name.
    pub name: String,
}

/// `SubjectAltName`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectAltName {
    /// `Hostname` or `URI`.
    #[serde(rename = "type")]
    pub type_: String,
    /// With `Hostname`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// With `URI`, e.g. a SPIFFE ID.
    #[serde(default)]
    pub uri: Option<String>,
}

/// `ReferenceGrantSpec`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReferenceGrantSpec {
    /// Who may refer: group, kind and namespace.
    #[serde(default)]
    pub from: Vec<GrantFrom>,
    /// To what in this namespace: group, kind and optionally name.
    #[serde(default)]
    pub to: Vec<GrantTo>,
}

/// `ReferenceGrantFrom`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantFrom {
    /// Group of the referring kind.
    #[serde(default)]
    pub group: String,
    /// The referring kind, e.g. `HTTPRoute`, `Gateway`.
    pub kind: String,
    /// The referring objects' namespace.
    pub namespace: String,
}

/// `ReferenceGrantTo`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantTo {
    /// Group of the referred kind (`""`: core).
    #[serde(default)]
    pub group: String,
    /// The referred kind, e.g. `Service`, `Secret`.
    pub kind: String,
    /// One object only (default: every object of the kind).
    #[serde(default)]
    pub name: Option<String>,
}
