//! RDS: VirtualService HTTP routes as Envoy `Route`s, and the default
//! route of a service without one.

use crate::encoded::{nested_len, put_head};
use crds::virtual_service::{
    HeaderOperations, HttpBody, HttpMatchRequest, HttpRoute, RedirectPortSelection,
    UnmatchedPreflights,
};
use crds::{Percent, StringMatch, VirtualServiceSpec};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, RuntimeFractionalPercent, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
use envoy_types::pb::envoy::config::route::v3::{
    Decorator, DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy, Route, RouteAction, RouteMatch, WeightedCluster, header_matcher,
    query_parameter_matcher, redirect_action, retry_policy, route, route_action, route_match,
    weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher, string_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
use envoy_types::util::pack_any;

use crate::cluster::cluster_name;
use crate::model::{Config, Proxy, Snapshot};
use crate::policy::{Effective, hash_policy};
use crate::{CORS_FILTER, ConfigWarning, FAULT_FILTER, duration};

/// Istio's default `retryOn` when a route sets no retry policy.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's default number of retries.
const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// What the routes are generated for.
pub(crate) struct RouteCtx<'a> {
    pub snap: &'a Snapshot,
    pub proxy: &'a Proxy,
    /// The listener port (`match.port` is compared with it).
    pub port: u32,
    /// Gateway names (`ns/name`) the listener belongs to; empty for sidecars (`mesh`).
    pub gateways: &'a [String],
}

impl RouteCtx<'_> {
    fn gateway_applies(&self, vs: &Config<VirtualServiceSpec>, listed: &[String]) -> bool {
        if self.gateways.is_empty() {
            listed.is_empty() || listed.iter().any(|g| g == "mesh")
        } else {
            listed.iter().any(|g| {
                let full = if g.contains('/') {
                    g.clone()
                } else {
                    format!("{}/{g}", vs.namespace)
                };
                self.gateways.contains(&full)
            })
        }
    }
}

/// The routes of one VirtualService for one listener port, in order, with
/// `delegate`s replaced by the delegate's routes (matches merged).
/// Routes with problems are skipped and reported in `warnings`.
pub(crate) fn virtual_service_routes(
    ctx: &RouteCtx<'_>,
    vs: &Config<VirtualServiceSpec>,
    warnings: &mut Vec<ConfigWarning>,
) -> Vec<Route> {
    let expanded = expand_delegates(ctx.snap, vs, warnings);
    let gateway_semantics = ctx.snap.gateway_api.gateway_semantics(vs);
    let separated = ctx.snap.gateway_api.separated_prefixes(vs);
    // A route per match (one without any): room for them up front, as a
    // `Route` is 2.2 KiB and a vector grows from four.
    let mut routes = Vec::with_capacity(
        expanded
            .iter()
            .map(|(_, _, http)| http.matches.len().max(1))
            .sum(),
    );
    for (owner, field, http) in expanded {
        let http: &HttpRoute = &http;
        check_subsets(ctx, owner, http, &field, warnings);
        let action = match route_action(ctx, owner, http, &field, gateway_semantics) {
            Ok(a) => a,
            Err(reason) => {
                warnings.push(ConfigWarning::new(
                    "VirtualService",
                    owner.key(),
                    reason.0,
                    reason.1,
                ));
                continue;
            }
        };
        let name = http.name.clone().unwrap_or_default();
        let mut per_filter = std::collections::HashMap::new();
        if let Some(fault) = &http.fault {
            per_filter.insert(FAULT_FILTER.to_owned(), pack_any(http_fault(fault)));
        }
        if let Some(cors) = &http.cors_policy {
            per_filter.insert(CORS_FILTER.to_owned(), pack_any(cors_policy(cors)));
        }
        let (req_add, req_remove, resp_add, resp_remove) = header_ops(http.headers.as_ref());
        let mk = |m: RouteMatch, matched: Option<&HttpMatchRequest>, action| Route {
            // Per-route statistics (`vhost.<host>.route.<prefix>.*`).
            stat_prefix: matched
                .and_then(|m| m.stat_prefix.clone())
                .unwrap_or_default(),
            name: match matched.and_then(|m| m.name.as_deref()) {
                Some(mn) if !name.is_empty() => format!("{name}.{mn}"),
                Some(mn) => mn.to_owned(),
                None => name.clone(),
            },
            // The spans' name, when the mesh traces.
            decorator: ctx
                .snap
                .mesh
                .may_trace()
                .then(|| crate::trace::decorator(Some(&m), Some(&action), &vs.name, ctx.port)),
            r#match: Some(m),
            action: Some(action),
            typed_per_filter_config: per_filter.clone(),
            request_headers_to_add: req_add.clone(),
            request_headers_to_remove: req_remove.clone(),
            response_headers_to_add: resp_add.clone(),
            response_headers_to_remove: resp_remove.clone(),
            ..Default::default()
        };
        if http.matches.is_empty() {
            if ctx.gateway_applies(vs, &vs.spec.gateways) {
                routes.push(mk(prefix_match("/"), None, action));
            }
            continue;
        }
        let mut applying = http
            .matches
            .iter()
            .filter(|m| {
                let gateways = if m.gateways.is_empty() {
                    &vs.spec.gateways
                } else {
                    &m.gateways
                };
                ctx.gateway_applies(vs, gateways)
                    && source_applies(ctx, m)
                    && m.port.is_none_or(|p| p == ctx.port)
            })
            .peekable();
        // The action is copied for each route but the last, which takes
        // it: most routes have one match (a VirtualService's routes are
        // built for every config key, and an action is ~7 allocations).
        let mut action = Some(action);
        while let Some(m) = applying.next() {
            let action = if applying.peek().is_some() {
                action.clone()
            } else {
                action.take()
            };
            if let Some(action) = action {
                routes.push(mk(route_match(m, separated), Some(m), action));
            }
        }
    }
    routes
}

/// The HTTP routes of `vs` with each `delegate` replaced by the delegate
/// VirtualService's routes, whose matches are merged with the delegating
/// route's (Istio allows one level). Each comes with the VirtualService it
/// belongs to (short hosts resolve in its namespace) and its field path.
/// A route without delegation is borrowed as it is.
fn expand_delegates<'a>(
    snap: &'a Snapshot,
    vs: &'a Config<VirtualServiceSpec>,
    warnings: &mut Vec<ConfigWarning>,
) -> Vec<(
    &'a Config<VirtualServiceSpec>,
    HttpField,
    std::borrow::Cow<'a, HttpRoute>,
)> {
    let mut out = Vec::with_capacity(vs.spec.http.len());
    for (i, http) in vs.spec.http.iter().enumerate() {
        let Some(delegate) = &http.delegate else {
            out.push((vs, HttpField(i), std::borrow::Cow::Borrowed(http)));
            continue;
        };
        let ns = delegate.namespace.as_deref().unwrap_or(&vs.namespace);
        let child = snap
            .virtual_services
            .iter()
            .find(|c| c.name == delegate.name && c.namespace == ns && c.spec.hosts.is_empty());
        let Some(child) = child else {
            warnings.push(ConfigWarning::new(
                "VirtualService",
                vs.key(),
                format!("spec.http[{i}].delegate"),
                format!(
                    "no delegate VirtualService {ns}/{} (without hosts); route skipped",
                    delegate.name
                ),
            ));
            continue;
        };
        for (j, c) in child.spec.http.iter().enumerate() {
            if c.delegate.is_some() {
                warnings.push(ConfigWarning::new(
                    "VirtualService",
                    child.key(),
                    format!("spec.http[{j}].delegate"),
                    "delegates cannot delegate again; route skipped".into(),
                ));
                continue;
            }
            let mut merged = c.clone();
            merged.matches = merge_matches(&http.matches, &c.matches);
            out.push((child, HttpField(j), std::borrow::Cow::Owned(merged)));
        }
    }
    out
}

/// Every (parent, child) match pair combined: the child's conditions, with
/// the parent's filling what the child leaves open.
fn merge_matches(parent: &[HttpMatchRequest], child: &[HttpMatchRequest]) -> Vec<HttpMatchRequest> {
    if parent.is_empty() {
        return child.to_vec();
    }
    if child.is_empty() {
        return parent.to_vec();
    }
    let mut out = Vec::new();
    for p in parent {
        for c in child {
            let mut m = c.clone();
            m.uri = m.uri.or_else(|| p.uri.clone());
            m.scheme = m.scheme.or_else(|| p.scheme.clone());
            m.method = m.method.or_else(|| p.method.clone());
            m.authority = m.authority.or_else(|| p.authority.clone());
            m.port = m.port.or(p.port);
            m.ignore_uri_case = m.ignore_uri_case.or(p.ignore_uri_case);
            m.source_namespace = m.source_namespace.or_else(|| p.source_namespace.clone());
            for (k, v) in &p.headers {
                m.headers.entry(k.clone()).or_insert_with(|| v.clone());
            }
            for (k, v) in &p.query_params {
                m.query_params.entry(k.clone()).or_insert_with(|| v.clone());
            }
            for (k, v) in &p.without_headers {
                m.without_headers
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
            for (k, v) in &p.source_labels {
                m.source_labels
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
            if m.gateways.is_empty() {
                m.gateways = p.gateways.clone();
            }
            out.push(m);
        }
    }
    out
}

fn source_applies(ctx: &RouteCtx<'_>, m: &HttpMatchRequest) -> bool {
    let labels_ok = m
        .source_labels
        .iter()
        .all(|(k, v)| ctx.proxy.labels.get(k) == Some(v));
    let ns_ok = m
        .source_namespace
        .as_ref()
        .is_none_or(|ns| *ns == ctx.proxy.namespace);
    labels_ok && ns_ok
}

/// The route of a service with no VirtualService: everything to its
/// cluster (with its DestinationRule's consistent hash, if any).
pub(crate) fn default_route(ctx: &RouteCtx<'_>, hostname: &str) -> Route {
    let hash = consistent_hash_for(ctx, hostname, None, ctx.port);
    default_route_to(
        cluster_name(ctx.port, "", hostname),
        hash,
        ctx.snap.mesh.default_retry.as_ref(),
        default_decorator(ctx, hostname),
    )
}

/// The default route's decorator when the mesh traces: `host:port/*`, as
/// Istio's `TraceOperation`.
fn default_decorator(ctx: &RouteCtx<'_>, hostname: &str) -> Option<Decorator> {
    ctx.snap.mesh.may_trace().then(|| Decorator {
        operation: format!("{hostname}:{}/*", ctx.port),
        ..Default::default()
    })
}

/// The default route to `cluster`, hashing on `hash`, retrying as `retry`
/// (the mesh config's `defaultHttpRetryPolicy`; `None`: Istio's default).
fn default_route_to(
    cluster: String,
    hash: Option<HashPolicy>,
    retry: Option<&crds::virtual_service::HttpRetry>,
    decorator: Option<Decorator>,
) -> Route {
    Route {
        name: "default".into(),
        decorator,
        r#match: Some(prefix_match("/")),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
            retry_policy: retry_policy(retry, hash.is_some()),
            hash_policy: hash.into_iter().collect(),
            ..timed(std::time::Duration::ZERO)
        })),
        ..Default::default()
    }
}

/// A route action's timeouts as Istio's `setTimeout` writes them: the
/// route's `timeout` (zero: none), and a gRPC client's own deadline (its
/// `grpc-timeout` header) honoured by the proxy. Without a timeout,
/// `max_grpc_timeout: 0s`: the header, when present, is the timeout, with
/// no cap. With one, `max_stream_duration` with the header capped at it.
/// (Without either, Envoy ignores `grpc-timeout`.)
#[allow(
    deprecated,
    reason = "Istio writes max_grpc_timeout for routes without a timeout: its replacement had regressions"
)]
fn timed(timeout: std::time::Duration) -> RouteAction {
    let t = Some(duration(timeout));
    if timeout.is_zero() {
        RouteAction {
            timeout: t,
            max_grpc_timeout: t,
            ..Default::default()
        }
    } else {
        RouteAction {
            timeout: t,
            max_stream_duration: Some(route_action::MaxStreamDuration {
                max_stream_duration: t,
                grpc_timeout_header_max: t,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// The parts of the default route that are the same for every service
/// without consistent hashing, encoded once by prost.
struct DefaultRouteParts {
    /// `Route` field 1 (`match`).
    head: Vec<u8>,
    /// `RouteAction` but for its cluster.
    action: Vec<u8>,
    /// `Route` field 14 (`name`).
    tail: Vec<u8>,
}

static DEFAULT_ROUTE_PARTS: std::sync::LazyLock<DefaultRouteParts> =
    std::sync::LazyLock::new(|| {
        use prost::Message as _;
        let whole = default_route_to(String::new(), None, None, None);
        let mut action = match whole.action {
            Some(route::Action::Route(a)) => a,
            _ => RouteAction::default(),
        };
        action.cluster_specifier = None;
        DefaultRouteParts {
            head: Route {
                r#match: whole.r#match,
                ..Default::default()
            }
            .encode_to_vec(),
            action: action.encode_to_vec(),
            tail: Route {
                name: whole.name,
                ..Default::default()
            }
            .encode_to_vec(),
        }
    });

/// [`default_route`] encoded as a `VirtualHost`'s field 3 (`routes`).
/// Without consistent hashing, with Istio's default retries (no mesh
/// `defaultHttpRetryPolicy`) and without tracing (no decorator) it
/// differs from service to service only by
/// its cluster, and is written from parts prost encodes once: the same
/// bytes, since prost writes fields in tag order and the cluster is the
/// first of the route action (the `cluster_specifier` oneof, tag 1),
/// itself the route's second field (`match` 1, the action oneof at 2,
/// then `name` 14).
pub(crate) fn default_route_field(ctx: &RouteCtx<'_>, hostname: &str) -> Vec<u8> {
    use prost::encoding::message;
    let hash = consistent_hash_for(ctx, hostname, None, ctx.port);
    let cluster = cluster_name(ctx.port, "", hostname);
    let retry = ctx.snap.mesh.default_retry.as_ref();
    let decorator = default_decorator(ctx, hostname);
    if hash.is_some() || retry.is_some() || decorator.is_some() {
        let mut b = Vec::new();
        message::encode(
            3,
            &default_route_to(cluster, hash, retry, decorator),
            &mut b,
        );
        return b;
    }
    written_default_route(&cluster)
}

/// The default route to `cluster` without hashing, as a `VirtualHost`'s
/// field 3, written from [`DEFAULT_ROUTE_PARTS`].
fn written_default_route(cluster: &str) -> Vec<u8> {
    let parts = &*DEFAULT_ROUTE_PARTS;
    // The cluster is a oneof member: written even when empty.
    let action = nested_len(cluster.len()) + parts.action.len();
    let route = parts.head.len() + nested_len(action) + parts.tail.len();
    let mut b = Vec::with_capacity(route + 4);
    put_head(&mut b, 3, route);
    b.extend_from_slice(&parts.head);
    put_head(&mut b, 2, action);
    put_head(&mut b, 1, cluster.len());
    b.extend_from_slice(cluster.as_bytes());
    b.extend_from_slice(&parts.action);
    b.extend_from_slice(&parts.tail);
    b
}

/// A route sending everything to one cluster (e.g. `PassthroughCluster`).
pub(crate) fn catch_all_route(name: &str, cluster: &str) -> Route {
    Route {
        name: name.into(),
        r#match: Some(prefix_match("/")),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..timed(std::time::Duration::ZERO)
        })),
        ..Default::default()
    }
}

/// A route answering every request with a fixed status.
pub(crate) fn direct_response_route(name: &str, status: u32) -> Route {
    Route {
        name: name.into(),
        r#match: Some(prefix_match("/")),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
        ..Default::default()
    }
}

/// A VirtualService match as Envoy's; with `separated` (routes made from
/// HTTPRoutes or Ingresses) a path prefix matches whole segments, as the
/// Gateway API's `PathPrefix` and the Ingress API's `Prefix` (Istio's
/// `PathSeparatedPrefix`).
fn route_match(m: &HttpMatchRequest, separated: bool) -> RouteMatch {
    let path_specifier = Some(match &m.uri {
        None => route_match::PathSpecifier::Prefix("/".into()),
        Some(StringMatch::Exact(p)) => route_match::PathSpecifier::Path(p.clone()),
        Some(StringMatch::Prefix(p)) if separated && p != "/" => {
            route_match::PathSpecifier::PathSeparatedPrefix(p.trim_end_matches('/').to_owned())
        }
        Some(StringMatch::Prefix(p)) => route_match::PathSpecifier::Prefix(p.clone()),
        Some(StringMatch::Regex(r)) => route_match::PathSpecifier::SafeRegex(regex(r)),
    });
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(k, v)| header_matcher(k, v, false))
        .collect();
    headers.extend(
        m.without_headers
            .iter()
            .map(|(k, v)| header_matcher(k, v, true)),
    );
    for (pseudo, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(pseudo, sm, false));
        }
    }
    RouteMatch {
        path_specifier,
        case_sensitive: m
            .ignore_uri_case
            .filter(|i| *i)
            .map(|_| BoolValue { value: false }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(k, v)| QueryParameterMatcher {
                name: k.clone(),
                query_parameter_match_specifier: Some(
                    query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_matcher(v),
                    ),
                ),
            })
            .collect(),
        ..Default::default()
    }
}

/// A header matcher; `invert` for Istio's `withoutHeaders`, where a request
/// lacking the header must match (Envoy's inverted matcher alone would not).
fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        invert_match: invert,
        treat_missing_header_as_empty: invert,
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            string_matcher(m),
        )),
    }
}

fn string_matcher(m: &StringMatch) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(match m {
            StringMatch::Exact(s) => string_matcher::MatchPattern::Exact(s.clone()),
            StringMatch::Prefix(s) => string_matcher::MatchPattern::Prefix(s.clone()),
            StringMatch::Regex(s) => string_matcher::MatchPattern::SafeRegex(regex(s)),
        }),
        ..Default::default()
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_owned(),
        ..Default::default()
    }
}

type RouteError = (String, String);

/// The field path of HTTP route `i` of a VirtualService, `spec.http[i]`,
/// written out only when a warning names it.
struct HttpField(usize);

impl std::fmt::Display for HttpField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "spec.http[{}]", self.0)
    }
}

fn route_action(
    ctx: &RouteCtx<'_>,
    vs: &Config<VirtualServiceSpec>,
    http: &HttpRoute,
    field: &HttpField,
    gateway_semantics: bool,
) -> Result<route::Action, RouteError> {
    if let Some(r) = &http.redirect {
        let code = match r.redirect_code.unwrap_or(301) {
            301 => redirect_action::RedirectResponseCode::MovedPermanently,
            302 => redirect_action::RedirectResponseCode::Found,
            303 => redirect_action::RedirectResponseCode::SeeOther,
            307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
            308 => redirect_action::RedirectResponseCode::PermanentRedirect,
            other => {
                return Err((
                    format!("{field}.redirect.redirectCode"),
                    format!("unsupported redirect code {other}"),
                ));
            }
        };
        return Ok(route::Action::Redirect(RedirectAction {
            host_redirect: r.authority.clone().unwrap_or_default(),
            port_redirect: match r.derive_port {
                Some(RedirectPortSelection::FromRequestPort) => ctx.port,
                _ => r.port.unwrap_or(0),
            },
            response_code: code as i32,
            scheme_rewrite_specifier: r
                .scheme
                .clone()
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: r
                .uri
                .clone()
                .map(redirect_action::PathRewriteSpecifier::PathRedirect)
                .or_else(|| {
                    r.prefix_rewrite
                        .clone()
                        .map(redirect_action::PathRewriteSpecifier::PrefixRewrite)
                }),
            ..Default::default()
        }));
    }
    if let Some(d) = &http.direct_response {
        return Ok(route::Action::DirectResponse(DirectResponseAction {
            status: d.status,
            body: match &d.body {
                None => None,
                Some(HttpBody::String(s)) => Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(s.clone())),
                    ..Default::default()
                }),
                Some(b @ HttpBody::Bytes(_)) => Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineBytes(
                        b.to_bytes()
                            .map_err(|e| (format!("{field}.directResponse.body.bytes"), e))?,
                    )),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }));
    }
    if http.route.is_empty() {
        return Err((
            format!("{field}.route"),
            "no destination, redirect or directResponse".into(),
        ));
    }
    let mut clusters = Vec::with_capacity(http.route.len());
    for (j, dest) in http.route.iter().enumerate() {
        let weight = dest
            .weight
            .unwrap_or(if http.route.len() == 1 { 100 } else { 0 });
        let Ok(weight) = u32::try_from(weight) else {
            return Err((
                format!("{field}.route[{j}].weight"),
                format!("weight {weight} is negative"),
            ));
        };
        let (req_add, req_remove, resp_add, resp_remove) = header_ops(dest.headers.as_ref());
        clusters.push(weighted_cluster::ClusterWeight {
            name: destination_cluster(ctx, vs, &dest.destination),
            weight: Some(UInt32Value { value: weight }),
            request_headers_to_add: req_add,
            request_headers_to_remove: req_remove,
            response_headers_to_add: resp_add,
            response_headers_to_remove: resp_remove,
            ..Default::default()
        });
    }
    if clusters
        .iter()
        .all(|c| c.weight.is_some_and(|w| w.value == 0))
    {
        return Err((format!("{field}.route"), "all weights are zero".into()));
    }
    let single_plain = clusters.len() == 1 && http.route[0].headers.is_none();
    let cluster_specifier = if single_plain {
        route_action::ClusterSpecifier::Cluster(clusters.remove(0).name)
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..Default::default()
        })
    };
    let hash = consistent_hash(ctx, vs, &http.route[0].destination);
    let mut action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        retry_policy: retry_policy(
            http.retries
                .as_ref()
                .or(ctx.snap.mesh.default_retry.as_ref()),
            hash.is_some(),
        ),
        hash_policy: hash.into_iter().collect(),
        ..timed(http.timeout.map(|t| t.as_std()).unwrap_or_default())
    };
    if gateway_semantics {
        // A missing backend answers 500 (the Gateway API's rule).
        action.cluster_not_found_response_code =
            route_action::ClusterNotFoundResponseCode::InternalServerError as i32;
    }
    if let Some(rw) = &http.rewrite {
        match (&rw.uri, http.matches.first().and_then(|m| m.uri.as_ref())) {
            // `ReplacePrefixMatch: /` drops the matched prefix (Istio's
            // regex, keeping a `/` when the whole path goes).
            (Some(uri), Some(StringMatch::Prefix(prefix))) if gateway_semantics && uri == "/" => {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(regex(&format!(
                        "^{}(/?)(.*)",
                        regex_syntax::escape(prefix.trim_end_matches('/'))
                    ))),
                    substitution: "/\\2".into(),
                });
            }
            (Some(uri), _) => action.prefix_rewrite = uri.clone(),
            (None, _) => {}
        }
        if let Some(auth) = &rw.authority {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(auth.clone()),
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(&rr.pattern)),
                substitution: rr.rewrite.clone(),
            });
        }
    }
    let mirrors = http
        .mirror
        .iter()
        .map(|d| {
            (
                d,
                http.mirror_percentage
                    .or(http.mirror_percent.map(|p| Percent { value: p as f64 })),
            )
        })
        .chain(http.mirrors.iter().map(|m| (&m.destination, m.percentage)));
    for (dest, pct) in mirrors {
        action
            .request_mirror_policies
            .push(route_action::RequestMirrorPolicy {
                cluster: destination_cluster(ctx, vs, dest),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(fraction(pct.map_or(100.0, |p| p.value))),
                    ..Default::default()
                }),
                ..Default::default()
            });
    }
    Ok(route::Action::Route(action))
}

/// Warns about destinations naming a subset no visible DestinationRule of
/// their host defines: Envoy would answer 503 (no cluster) for them, as with
/// Istio; the route is kept so route order is unchanged.
fn check_subsets(
    ctx: &RouteCtx<'_>,
    vs: &Config<VirtualServiceSpec>,
    http: &HttpRoute,
    field: &HttpField,
    warnings: &mut Vec<ConfigWarning>,
) {
    // Each destination with where it is; the path is written out only
    // for a warning.
    enum At {
        Route(usize),
        Mirror,
        Mirrors(usize),
    }
    let dests = http
        .route
        .iter()
        .enumerate()
        .map(|(j, d)| (At::Route(j), &d.destination))
        .chain(http.mirror.iter().map(|d| (At::Mirror, d)))
        .chain(
            http.mirrors
                .iter()
                .enumerate()
                .map(|(j, m)| (At::Mirrors(j), &m.destination)),
        );
    for (at, d) in dests {
        let Some(subset) = &d.subset else { continue };
        let host = ctx.snap.resolve_host(&d.host, &vs.namespace);
        let defined = ctx
            .snap
            .destination_rule_for(&host, ctx.proxy)
            .is_some_and(|dr| dr.spec.subsets.iter().any(|s| &s.name == subset));
        if !defined {
            let f = match at {
                At::Route(j) => format!("{field}.route[{j}].destination.subset"),
                At::Mirror => format!("{field}.mirror.subset"),
                At::Mirrors(j) => format!("{field}.mirrors[{j}].destination.subset"),
            };
            warnings.push(ConfigWarning::new(
                "VirtualService",
                vs.key(),
                f,
                format!("subset {subset:?} of {host} is not defined by any DestinationRule; requests to it get 503"),
            ));
        }
    }
}

/// The cluster a destination names, resolving short hosts against the
/// VirtualService's namespace and defaulting the port to the service's only
/// port, else the listener's.
fn destination_cluster(
    ctx: &RouteCtx<'_>,
    vs: &Config<VirtualServiceSpec>,
    d: &crds::Destination,
) -> String {
    let host = ctx.snap.resolve_host(&d.host, &vs.namespace);
    let port = d.port.map(|p| p.number).unwrap_or_else(|| {
        match ctx.snap.services.get(&*host).map(|s| s.ports.as_slice()) {
            Some([only]) => only.port,
            _ => ctx.port,
        }
    });
    cluster_name(port, d.subset.as_deref().unwrap_or(""), &host)
}

/// The consistent-hash policy of a destination's DestinationRule (as seen
/// from the proxy's namespace), subset and port level included.
fn consistent_hash(
    ctx: &RouteCtx<'_>,
    vs: &Config<VirtualServiceSpec>,
    d: &crds::Destination,
) -> Option<HashPolicy> {
    let host = ctx.snap.resolve_host(&d.host, &vs.namespace);
    let port = d.port.map(|p| p.number).unwrap_or(ctx.port);
    consistent_hash_for(ctx, &host, d.subset.as_deref(), port)
}

fn consistent_hash_for(
    ctx: &RouteCtx<'_>,
    hostname: &str,
    subset: Option<&str>,
    port: u32,
) -> Option<HashPolicy> {
    let dr = ctx.snap.destination_rule_for(hostname, ctx.proxy)?;
    let subset = subset
        .and_then(|s| dr.spec.subsets.iter().find(|x| x.name == s))
        .and_then(|s| s.traffic_policy.as_ref());
    let policy = Effective::resolve(dr.spec.traffic_policy.as_ref(), subset, port);
    policy.consistent_hash().and_then(hash_policy)
}

/// Istio's conversion of `retries` (`ConvertPolicy`): no `retries` gives the
/// default policy, `attempts: 0` none; integers in `retryOn` become
/// retriable status codes. With consistent hashing, retries stay on the
/// same host (no previous-hosts predicate).
fn retry_policy(r: Option<&crds::virtual_service::HttpRetry>, hashed: bool) -> Option<RetryPolicy> {
    let mut p = retry_policy_default();
    if hashed {
        p.retry_host_predicate.clear();
    }
    let Some(r) = r else { return Some(p) };
    if r.attempts <= 0 {
        return None;
    }
    p.num_retries = Some(UInt32Value {
        value: u32::try_from(r.attempts).unwrap_or(0),
    });
    if let Some(on) = &r.retry_on {
        let (codes, conditions): (Vec<&str>, Vec<&str>) = on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .partition(|s| s.parse::<u32>().is_ok_and(|c| (100..600).contains(&c)));
        p.retriable_status_codes = codes.iter().filter_map(|c| c.parse().ok()).collect();
        p.retry_on = conditions.join(",");
        if !p.retriable_status_codes.is_empty() && !p.retry_on.contains("retriable-status-codes") {
            if !p.retry_on.is_empty() {
                p.retry_on.push(',');
            }
            p.retry_on.push_str("retriable-status-codes");
        }
    }
    p.per_try_timeout = r.per_try_timeout.map(|d| duration(d.as_std()));
    match r.retry_ignore_previous_hosts {
        Some(false) => p.retry_host_predicate.clear(),
        Some(true) if p.retry_host_predicate.is_empty() => {
            p.retry_host_predicate = retry_policy_default().retry_host_predicate;
        }
        _ => {}
    }
    if r.retry_remote_localities == Some(true) {
        p.retry_priority = Some(retry_policy::RetryPriority {
            name: "envoy.retry_priorities.previous_priorities".into(),
            config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(
                pack_any(PreviousPrioritiesConfig {
                    update_frequency: 2,
                }),
            )),
        });
    }
    if let Some(b) = r.backoff {
        p.retry_back_off = Some(retry_policy::RetryBackOff {
            base_interval: Some(duration(b.as_std())),
            ..Default::default()
        });
    }
    Some(p)
}

/// Envoy's CORS policy for a route (`envoy.filters.http.cors` per-route config).
fn cors_policy(c: &crds::virtual_service::CorsPolicy) -> CorsPolicy {
    let mut origins: Vec<StringMatcher> = c.allow_origins.iter().map(string_matcher).collect();
    origins.extend(
        c.allow_origin
            .iter()
            .map(|o| string_matcher(&StringMatch::Exact(o.clone()))),
    );
    CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.as_std().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c.allow_credentials.map(|value| BoolValue { value }),
        forward_not_matching_preflights: match c.unmatched_preflights {
            Some(UnmatchedPreflights::Ignore) => Some(BoolValue { value: false }),
            Some(UnmatchedPreflights::Forward) => Some(BoolValue { value: true }),
            _ => None,
        },
        ..Default::default()
    }
}

/// Istio's default retry policy (`retry.DefaultPolicy`): 2 retries on
/// connection failures, refused streams and gRPC `unavailable`/`cancelled`,
/// avoiding hosts already tried.
fn retry_policy_default() -> RetryPolicy {
    RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.into(),
        num_retries: Some(UInt32Value {
            value: DEFAULT_RETRY_ATTEMPTS,
        }),
        retry_host_predicate: vec![retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                pack_any(PreviousHostsPredicate {}),
            )),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

/// Istio's percentage as Envoy's `FractionalPercent` over a million.
fn fraction(percent: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn http_fault(f: &crds::virtual_service::HttpFaultInjection) -> HttpFault {
    HttpFault {
        delay: f.delay.as_ref().and_then(|d| {
            let fixed = d.fixed_delay.or(d.exponential_delay)?;
            Some(FaultDelay {
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                    fixed.as_std(),
                ))),
                percentage: Some(fraction(
                    d.percentage
                        .map(|p| p.value)
                        .or(d.percent.map(f64::from))
                        .unwrap_or(100.0),
                )),
            })
        }),
        abort: f.abort.as_ref().and_then(|a| {
            let error_type = if let Some(status) = a.http_status {
                fault_abort::ErrorType::HttpStatus(u32::try_from(status).ok()?)
            } else {
                fault_abort::ErrorType::GrpcStatus(grpc_code(a.grpc_status.as_deref()?)?)
            };
            Some(FaultAbort {
                error_type: Some(error_type),
                percentage: Some(fraction(a.percentage.map_or(100.0, |p| p.value))),
                ..Default::default()
            })
        }),
        ..Default::default()
    }
}

/// gRPC status code by name (`UNAVAILABLE`) or number.
fn grpc_code(s: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    s.parse().ok().or_else(|| {
        NAMES
            .iter()
            .position(|n| *n == s)
            .and_then(|i| u32::try_from(i).ok())
    })
}

type HeaderOps = (
    Vec<HeaderValueOption>,
    Vec<String>,
    Vec<HeaderValueOption>,
    Vec<String>,
);

fn header_ops(h: Option<&crds::virtual_service::Headers>) -> HeaderOps {
    fn ops(o: Option<&HeaderOperations>) -> (Vec<HeaderValueOption>, Vec<String>) {
        let Some(o) = o else {
            return Default::default();
        };
        let mk = |(k, v): (&String, &String), action: HeaderAppendAction| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        };
        let mut add: Vec<_> = o
            .set
            .iter()
            .map(|kv| mk(kv, HeaderAppendAction::OverwriteIfExistsOrAdd))
            .collect();
        add.extend(
            o.add
                .iter()
                .map(|kv| mk(kv, HeaderAppendAction::AppendIfExistsOrAdd)),
        );
        (add, o.remove.clone())
    }
    let (a, b) = ops(h.and_then(|h| h.request.as_ref()));
    let (c, d) = ops(h.and_then(|h| h.response.as_ref()));
    (a, b, c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The written default route is prost's encoding of the message, for
    /// short and long (two-byte length) cluster names and an empty one.
    #[test]
    fn written_default_routes_are_prosts_encoding_of_the_message() {
        let long = format!("outbound|8080||{}.ns.svc.cluster.local", "s".repeat(300));
        for cluster in [
            "outbound|9080||reviews.default.svc.cluster.local",
            &long,
            "",
        ] {
            let mut want = Vec::new();
            prost::encoding::message::encode(
                3,
                &default_route_to(cluster.to_owned(), None, None, None),
                &mut want,
            );
            assert_eq!(written_default_route(cluster), want, "{cluster}");
        }
    }
}
