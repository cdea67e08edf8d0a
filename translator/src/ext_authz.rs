//! External authorization: the mesh config's `envoyExtAuthzHttp` and
//! `envoyExtAuthzGrpc` extension providers, used by `CUSTOM`
//! AuthorizationPolicies, as Envoy's `ext_authz` filters the way istiod's
//! authz builder writes them.
//!
//! A `CUSTOM` policy's rules go into an RBAC filter as `shadow_rules` (stat
//! prefix `istio_ext_authz_`): they decide nothing, but a request (or
//! connection) one of them matches gets the rule's name in the RBAC
//! filter's dynamic metadata, `istio_ext_authz_shadow_effective_policy_id`.
//! The `ext_authz` filter after it is enabled only when that name starts
//! with `istio-ext-authz`, so the authorizer is asked about exactly the
//! requests the rules select; it answers allow (the request goes on, with
//! the headers it may add) or deny (its status and body go back to the
//! client). An HTTP provider checks HTTP requests only; a gRPC provider
//! also checks TCP connections (Envoy's network `ext_authz`).

use std::collections::BTreeMap;

use crds::mesh::{ExtAuthzCommon, ExtAuthzHttpProvider, ExtensionProvider, PortValue};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, HeaderValue, HttpUri, grpc_service, http_uri,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3 as http_authz;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetworkExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListStringMatcher, MetadataMatcher, StringMatcher, ValueMatcher, metadata_matcher,
    string_matcher, value_matcher,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::util::pack_any;

use crate::model::Snapshot;

/// Envoy's HTTP external authorization filter.
pub const HTTP_EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
/// Envoy's network external authorization filter.
pub const NETWORK_EXT_AUTHZ_FILTER: &str = "envoy.filters.network.ext_authz";
/// The prefix of `CUSTOM` rules' names; the `ext_authz` filters run when
/// the effective shadow policy's name starts with it (Istio's
/// `extAuthzMatchPrefix`).
pub const MATCH_PREFIX: &str = "istio-ext-authz";
/// The stat prefix of the shadow rules of `CUSTOM` policies, which also
/// prefixes the RBAC filter's dynamic metadata keys.
pub const SHADOW_STAT_PREFIX: &str = "istio_ext_authz_";
/// Istio's check timeout when the provider sets none (long, so that a
/// DestinationRule's timeout on the authorizer's service decides).
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// One external authorizer, as the mesh config describes it
/// (`extensionProviders[].envoyExtAuthzHttp` / `envoyExtAuthzGrpc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// The authorizer's service: a hostname, or `namespace/hostname`.
    pub service: String,
    /// The service port.
    pub port: u16,
    /// How long a check may take.
    pub timeout: std::time::Duration,
    /// `failOpen`: allow when the authorizer cannot be reached.
    pub fail_open: bool,
    /// `clearRouteCache`.
    pub clear_route_cache: bool,
    /// `statusOnError` (an HTTP status code); `None`: Envoy's 403.
    pub status_on_error: Option<i32>,
    /// `includeRequestBodyInCheck`.
    pub body: Option<crds::mesh::RequestBodyInCheck>,
    /// `None`: gRPC; else the HTTP provider's own settings.
    pub http: Option<HttpSettings>,
}

/// The settings only an HTTP authorizer has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpSettings {
    /// `pathPrefix` (empty: none).
    pub path_prefix: String,
    /// `includeRequestHeadersInCheck` (or the deprecated
    /// `includeHeadersInCheck`): header name patterns.
    pub request_headers: Vec<String>,
    /// `includeAdditionalHeadersInCheck`, sorted by name.
    pub additional_headers: Vec<(String, String)>,
    /// `headersToUpstreamOnAllow` patterns.
    pub to_upstream_on_allow: Vec<String>,
    /// `headersToDownstreamOnDeny` patterns.
    pub to_downstream_on_deny: Vec<String>,
    /// `headersToDownstreamOnAllow` patterns.
    pub to_downstream_on_allow: Vec<String>,
}

/// The external authorizers of `providers`, by name: each parsed, or why
/// it cannot be used (a `CUSTOM` policy naming it then refuses what its
/// rules match, as istiod does). Problems and fields not acted on are
/// passed to `warn` as (field, reason).
pub(crate) fn providers(
    providers: &[ExtensionProvider],
    warn: &mut impl FnMut(String, String),
) -> BTreeMap<String, Result<Provider, String>> {
    let mut out: BTreeMap<String, Result<Provider, String>> = BTreeMap::new();
    for (i, p) in providers.iter().enumerate() {
        let (kind, parsed) = match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
            (Some(h), None) => ("envoyExtAuthzHttp", http(h)),
            (None, Some(g)) => ("envoyExtAuthzGrpc", common(&g.common)),
            (None, None) => continue,
            (Some(_), Some(_)) => (
                "envoyExtAuthzHttp",
                Err((
                    String::new(),
                    "a provider is one kind: envoyExtAuthzHttp or envoyExtAuthzGrpc, not both"
                        .to_owned(),
                )),
            ),
        };
        let at = format!("data.mesh.extensionProviders[{i}]");
        let unsupported = p
            .envoy_ext_authz_http
            .iter()
            .flat_map(|h| h.unsupported.keys())
            .chain(
                p.envoy_ext_authz_grpc
                    .iter()
                    .flat_map(|g| g.unsupported.keys()),
            );
        for field in unsupported {
            warn(
                format!("{at}.{kind}.{field}"),
                "not supported yet; ignored".into(),
            );
        }
        let parsed = if p.name.is_empty() {
            Err(("name".to_owned(), "must not be empty".to_owned()))
        } else if out.contains_key(&p.name) {
            Err((
                "name".to_owned(),
                format!(
                    "{:?} names another provider too; names must be unique",
                    p.name
                ),
            ))
        } else {
            parsed.map_err(|(field, reason)| (format!("{kind}.{field}"), reason))
        };
        match parsed {
            Ok(provider) => {
                out.insert(p.name.clone(), Ok(provider));
            }
            Err((field, reason)) => {
                let field = field.trim_end_matches('.');
                warn(
                    format!("{at}.{field}"),
                    format!(
                        "{reason}: CUSTOM policies naming {:?} refuse the requests their rules match",
                        p.name
                    ),
                );
                out.entry(p.name.clone())
                    .or_insert(Err(format!("{field}: {reason}")));
            }
        }
    }
    out
}

/// (field under the provider, reason).
type FieldError = (String, String);

fn port(value: &PortValue) -> Result<u16, FieldError> {
    value.port().ok_or_else(|| {
        (
            "port".into(),
            format!("{value:?} is not a port (1 to 65535)"),
        )
    })
}

/// `statusOnError` as Envoy's `HttpStatus` takes it: one of its codes.
fn status(value: Option<&str>) -> Result<Option<i32>, FieldError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    value
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|c| *c != 0 && StatusCode::try_from(*c).is_ok())
        .map(Some)
        .ok_or_else(|| {
            (
                "statusOnError".into(),
                format!("{value:?} is not an HTTP status code Envoy knows"),
            )
        })
}

/// A provider of either kind, from the fields both have; `http` is `None`
/// (a gRPC one) until an HTTP provider's own settings are added.
fn common(c: &ExtAuthzCommon) -> Result<Provider, FieldError> {
    Ok(Provider {
        service: c.service.clone(),
        port: port(&c.port)?,
        timeout: c.timeout.map_or(DEFAULT_TIMEOUT, |t| t.as_std()),
        fail_open: c.fail_open.unwrap_or(false),
        clear_route_cache: c.clear_route_cache.unwrap_or(false),
        status_on_error: status(c.status_on_error.as_deref())?,
        body: c.include_request_body_in_check.clone(),
        http: None,
    })
}

fn http(h: &ExtAuthzHttpProvider) -> Result<Provider, FieldError> {
    let path_prefix = h.path_prefix.clone().unwrap_or_default();
    if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
        return Err((
            "pathPrefix".into(),
            format!("{path_prefix:?} must begin with /"),
        ));
    }
    let request_headers = if h.include_request_headers_in_check.is_empty() {
        &h.include_headers_in_check
    } else {
        &h.include_request_headers_in_check
    };
    for (field, list) in [
        (
            "includeRequestHeadersInCheck",
            &h.include_request_headers_in_check,
        ),
        ("includeHeadersInCheck", &h.include_headers_in_check),
        ("headersToUpstreamOnAllow", &h.headers_to_upstream_on_allow),
        (
            "headersToDownstreamOnDeny",
            &h.headers_to_downstream_on_deny,
        ),
        (
            "headersToDownstreamOnAllow",
            &h.headers_to_downstream_on_allow,
        ),
    ] {
        if let Some(i) = list.iter().position(|v| v == "*") {
            return Err((
                format!("{field}[{i}]"),
                "a single wildcard (\"*\") is not supported; use a prefix (abc*) or suffix (*abc)"
                    .into(),
            ));
        }
    }
    Ok(Provider {
        http: Some(HttpSettings {
            path_prefix,
            request_headers: request_headers.clone(),
            additional_headers: h
                .include_additional_headers_in_check
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            to_upstream_on_allow: h.headers_to_upstream_on_allow.clone(),
            to_downstream_on_deny: h.headers_to_downstream_on_deny.clone(),
            to_downstream_on_allow: h.headers_to_downstream_on_allow.clone(),
        }),
        ..common(&h.common)?
    })
}

/// The provider `name` with its service's hostname and outbound cluster
/// (`outbound|<port>||<host>`), or why it cannot be used: not defined, not
/// valid, or its service (a hostname, or `namespace/hostname`, as Istio's
/// `LookupCluster`) is not one of the mesh's with that port.
pub(crate) fn resolve<'s>(
    snap: &'s Snapshot,
    name: &str,
) -> Result<(&'s Provider, &'s str, String), String> {
    let provider = match snap.mesh.ext_authz.get(name) {
        Some(Ok(p)) => p,
        Some(Err(e)) => return Err(format!("extension provider {name:?} is not valid ({e})")),
        None => {
            return Err(format!(
                "no envoyExtAuthzHttp or envoyExtAuthzGrpc extension provider is named {name:?} in the mesh config"
            ));
        }
    };
    let (namespace, host) = match provider.service.split_once('/') {
        Some((ns, h)) => (Some(ns), h),
        None => (None, provider.service.as_str()),
    };
    let service = snap
        .services
        .get(host)
        .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
        .filter(|s| s.port(u32::from(provider.port)).is_some())
        .ok_or_else(|| {
            format!(
                "extension provider {name:?}: no service {} with port {} in the mesh",
                provider.service, provider.port
            )
        })?;
    let cluster = crate::cluster::cluster_name(u32::from(provider.port), "", &service.hostname);
    Ok((provider, service.hostname.as_str(), cluster))
}

/// Istio's header patterns as Envoy's list matcher: `abc*` a prefix, `*abc`
/// a suffix, else exact; case-insensitive (header names).
fn header_patterns(patterns: &[String]) -> Option<ListStringMatcher> {
    (!patterns.is_empty()).then(|| ListStringMatcher {
        patterns: patterns
            .iter()
            .map(|p| {
                let pattern = if let Some(suffix) = p.strip_prefix('*') {
                    string_matcher::MatchPattern::Suffix(suffix.into())
                } else if let Some(prefix) = p.strip_suffix('*') {
                    string_matcher::MatchPattern::Prefix(prefix.into())
                } else {
                    string_matcher::MatchPattern::Exact(p.clone())
                };
                StringMatcher {
                    ignore_case: true,
                    match_pattern: Some(pattern),
                }
            })
            .collect(),
    })
}

/// Enabled when the RBAC filter `rbac_filter`'s effective shadow policy is
/// a `CUSTOM` rule.
fn enabled_by(rbac_filter: &str) -> MetadataMatcher {
    MetadataMatcher {
        filter: rbac_filter.into(),
        path: vec![metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(format!(
                "{SHADOW_STAT_PREFIX}shadow_effective_policy_id"
            ))),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Prefix(MATCH_PREFIX.into())),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

fn grpc_service(provider: &Provider, hostname: &str, cluster: String) -> GrpcService {
    GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: cluster,
                authority: hostname.into(),
                ..Default::default()
            },
        )),
        timeout: Some(crate::duration(provider.timeout)),
        ..Default::default()
    }
}

/// The HTTP `ext_authz` filter asking `provider` (at `hostname`, through
/// `cluster`) about the requests the preceding RBAC filter's `CUSTOM`
/// rules matched.
pub(crate) fn http_filter(provider: &Provider, hostname: &str, cluster: String) -> HttpFilter {
    let services = match &provider.http {
        Some(h) => {
            let response = [
                &h.to_upstream_on_allow,
                &h.to_downstream_on_deny,
                &h.to_downstream_on_allow,
            ]
            .iter()
            .any(|l| !l.is_empty())
            .then(|| http_authz::AuthorizationResponse {
                allowed_upstream_headers: header_patterns(&h.to_upstream_on_allow),
                allowed_client_headers: header_patterns(&h.to_downstream_on_deny),
                allowed_client_headers_on_success: header_patterns(&h.to_downstream_on_allow),
                ..Default::default()
            });
            let request =
                (!h.additional_headers.is_empty()).then(|| http_authz::AuthorizationRequest {
                    headers_to_add: h
                        .additional_headers
                        .iter()
                        .map(|(key, value)| HeaderValue {
                            key: key.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                });
            http_authz::ext_authz::Services::HttpService(http_authz::HttpService {
                server_uri: Some(HttpUri {
                    // Required by Envoy, not used: the cluster is.
                    uri: format!("http://{hostname}"),
                    timeout: Some(crate::duration(provider.timeout)),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(cluster)),
                }),
                path_prefix: h.path_prefix.clone(),
                authorization_request: request,
                authorization_response: response,
                ..Default::default()
            })
        }
        None => {
            http_authz::ext_authz::Services::GrpcService(grpc_service(provider, hostname, cluster))
        }
    };
    let config = http_authz::ExtAuthz {
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: provider.fail_open,
        clear_route_cache: provider.clear_route_cache,
        status_on_error: provider.status_on_error.map(|code| HttpStatus { code }),
        with_request_body: provider.body.as_ref().map(|b| http_authz::BufferSettings {
            max_request_bytes: b.max_request_bytes.unwrap_or_default(),
            allow_partial_message: b.allow_partial_message.unwrap_or(false),
            pack_as_bytes: b.pack_as_bytes.unwrap_or(false),
        }),
        allowed_headers: provider
            .http
            .as_ref()
            .and_then(|h| header_patterns(&h.request_headers)),
        filter_enabled_metadata: Some(enabled_by(crate::authz::HTTP_RBAC_FILTER)),
        services: Some(services),
        ..Default::default()
    };
    HttpFilter {
        name: HTTP_EXT_AUTHZ_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    }
}

/// The network `ext_authz` filter of a gRPC provider (an HTTP one cannot
/// check TCP connections: `None`).
pub(crate) fn network_filter(
    provider: &Provider,
    hostname: &str,
    cluster: String,
) -> Option<Filter> {
    if provider.http.is_some() {
        return None;
    }
    let config = NetworkExtAuthz {
        stat_prefix: "tcp.".into(),
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: provider.fail_open,
        grpc_service: Some(grpc_service(provider, hostname, cluster)),
        filter_enabled_metadata: Some(enabled_by(crate::authz::NETWORK_RBAC_FILTER)),
        ..Default::default()
    };
    Some(Filter {
        name: NETWORK_EXT_AUTHZ_FILTER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(config))),
    })
}
