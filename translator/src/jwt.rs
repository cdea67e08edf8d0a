//! RequestAuthentication (`security.istio.io/v1`) as Envoy's JWT filter
//! (`envoy.filters.http.jwt_authn`), the way istiod writes it.
//!
//! - **Which**: the RequestAuthentications of the workload's namespace and
//!   of the root namespace whose `selector` is absent or matches it
//!   ([`crate::authz`]'s scope); their rules, sorted by issuer, are
//!   providers `origins-0`, `origins-1`, ...
//! - **Each provider**: issuer, audiences, where the token is read
//!   (`fromHeaders`, `fromParams`, `fromCookies`; Envoy's defaults, the
//!   `Authorization: Bearer` header and the `access_token` parameter, when
//!   none is given), `forwardOriginalToken`, `outputPayloadToHeader`,
//!   `outputClaimToHeaders`; the verified payload in the filter's dynamic
//!   metadata under `payload` (where the RBAC filter reads
//!   `requestPrincipals` and `request.auth.*`), `scope` and `permission`
//!   (and `spaceDelimitedClaims`) split into lists.
//! - **Keys**: `jwks` inline; `jwksUri` fetched by Envoy through the
//!   outbound cluster of its host and port (a service or ServiceEntry of
//!   the mesh; cached 5 minutes, `timeout` default 5 s). istiod can also
//!   fetch the keys itself; this daemon does not, so a `jwksUri` whose host
//!   is not in the registry is reported and its tokens fail, as in istiod
//!   when it cannot resolve the cluster.
//! - **Requirement** (Istio's): a token that is present must be valid for
//!   one of the providers (401 otherwise); a request without one passes,
//!   unauthenticated, unless its rule says `presence: REQUIRED`. CORS
//!   preflight requests are not checked.

use std::collections::{BTreeMap, HashMap};

use crds::request_authentication::{JwtRule, Presence};
use envoy_types::pb::envoy::config::core::v3::{DataSource, HttpUri, data_source, http_uri};
use envoy_types::pb::envoy::config::route::v3::{RouteMatch, route_match};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider, JwtRequirement,
    JwtRequirementAndList, JwtRequirementOrList, RemoteJwks, RequirementRule, jwt_provider,
    jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::google::protobuf::Empty;
use envoy_types::util::pack_any;

use crate::model::{Config, Snapshot};

/// Envoy's JWT filter.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The key of the verified payload in the JWT filter's dynamic metadata.
pub const PAYLOAD: &str = "payload";
/// Claims always split on spaces (Istio's default `spaceDelimitedClaims`).
const SPACE_DELIMITED: [&str; 2] = ["permission", "scope"];
/// Seconds Envoy caches keys fetched from a `jwksUri` (Istio's 5 minutes).
const JWKS_CACHE_SECS: i64 = 300;
/// Seconds a `jwksUri` fetch may take when the rule gives no `timeout`.
const JWKS_TIMEOUT_SECS: u64 = 5;

/// The JWT filter of the workload in `namespace` with `labels`, or `None`
/// when no RequestAuthentication applies to it.
pub(crate) fn filter(
    snap: &Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Option<HttpFilter> {
    let root = snap.mesh.root_namespace.as_str();
    let mut rules: Vec<&JwtRule> = snap
        .request_authentications
        .iter()
        .filter(|ra| crate::attach::attaches(&ra.namespace, &ra.spec, (root, namespace, labels)))
        .flat_map(|ra| &ra.spec.jwt_rules)
        .collect();
    if rules.is_empty() {
        return None;
    }
    rules.sort_by(|a, b| a.issuer.cmp(&b.issuer));
    let mut providers = HashMap::new();
    let mut each = Vec::new();
    let mut any_of = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        providers.insert(name.clone(), provider(snap, rule));
        let named = JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::ProviderName(name)),
        };
        each.push(if rule.presence == Some(Presence::Required) {
            named.clone()
        } else {
            requires_any(vec![
                named.clone(),
                JwtRequirement {
                    requires_type: Some(jwt_requirement::RequiresType::AllowMissing(Empty {})),
                },
            ])
        });
        any_of.push(named);
    }
    // One provider: it, or no token. Several: one of them (they may read
    // the same header), or each of them valid where present.
    let requires = if each.len() == 1 {
        each.remove(0)
    } else {
        any_of.push(JwtRequirement {
            requires_type: Some(jwt_requirement::RequiresType::RequiresAll(
                JwtRequirementAndList { requirements: each },
            )),
        });
        requires_any(any_of)
    };
    let config = JwtAuthentication {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(requirement_rule::RequirementType::Requires(requires)),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    };
    Some(HttpFilter {
        name: JWT_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..Default::default()
    })
}

fn requires_any(requirements: Vec<JwtRequirement>) -> JwtRequirement {
    JwtRequirement {
        requires_type: Some(jwt_requirement::RequiresType::RequiresAny(
            JwtRequirementOrList { requirements },
        )),
    }
}

fn provider(snap: &Snapshot, rule: &JwtRule) -> JwtProvider {
    let mut claims: Vec<String> = SPACE_DELIMITED.iter().map(|c| (*c).to_owned()).collect();
    claims.extend(rule.space_delimited_claims.iter().cloned());
    claims.sort();
    claims.dedup();
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        forward: rule.forward_original_token.unwrap_or(false),
        forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: PAYLOAD.into(),
        normalize_payload_in_metadata: Some(jwt_provider::NormalizePayload {
            space_delimited_claims: claims,
        }),
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| JwtHeader {
                name: h.name.clone(),
                value_prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..Default::default()
            })
            .collect(),
        jwks_source_specifier: Some(keys(snap, rule)),
        ..Default::default()
    }
}

/// Where a rule's keys come from: inline, or fetched by Envoy from
/// `jwksUri` through the outbound cluster of its host.
fn keys(snap: &Snapshot, rule: &JwtRule) -> jwt_provider::JwksSourceSpecifier {
    let uri = rule.jwks_uri.as_deref().or(rule.jwks_uri_snake.as_deref());
    match (uri, &rule.jwks) {
        (Some(uri), None) => {
            let timeout = rule
                .timeout
                .map_or(std::time::Duration::from_secs(JWKS_TIMEOUT_SECS), |t| {
                    t.as_std()
                });
            jwt_provider::JwksSourceSpecifier::RemoteJwks(RemoteJwks {
                http_uri: Some(HttpUri {
                    uri: uri.to_owned(),
                    timeout: Some(crate::duration(timeout)),
                    http_upstream_type: Some(http_uri::HttpUpstreamType::Cluster(
                        jwks_cluster(snap, uri).0,
                    )),
                }),
                cache_duration: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: JWKS_CACHE_SECS,
                    nanos: 0,
                }),
                ..Default::default()
            })
        }
        (_, jwks) => jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(
                jwks.clone().unwrap_or_default(),
            )),
            ..Default::default()
        }),
    }
}

/// `outbound|<port>||<host>` of a `jwksUri` (`http(s)://host[:port]/path`),
/// and whether a service of the mesh has that host and port (if not, the
/// cluster does not exist and fetching fails, as in istiod).
pub(crate) fn jwks_cluster(snap: &Snapshot, uri: &str) -> (String, Option<String>) {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("https", uri));
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let default_port = if scheme == "http" { 80 } else { 443 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u32>().is_ok() => (h, p.parse().unwrap_or(default_port)),
        _ => (authority, default_port),
    };
    let known = snap
        .services
        .get(host)
        .is_some_and(|s| s.ports.iter().any(|p| p.port == port));
    let name = format!("outbound|{port}||{host}");
    (name, (!known).then(|| host.to_owned()))
}

/// Rules whose `jwksUri` host is not a service of the mesh, as warnings
/// (their tokens cannot be verified: Envoy has no cluster to fetch from).
pub(crate) fn warnings(
    snap: &Snapshot,
    policies: &[Config<crds::RequestAuthenticationSpec>],
) -> Vec<crate::ConfigWarning> {
    let mut out = Vec::new();
    for ra in policies {
        for (i, rule) in ra.spec.jwt_rules.iter().enumerate() {
            let uri = rule.jwks_uri.as_deref().or(rule.jwks_uri_snake.as_deref());
            if let (Some(uri), None) = (uri, &rule.jwks)
                && let (_, Some(host)) = jwks_cluster(snap, uri)
            {
                out.push(crate::ConfigWarning::new(
                    "RequestAuthentication",
                    ra.key(),
                    format!("spec.jwtRules[{i}].jwksUri"),
                    format!(
                        "{host} is not a service of the mesh: Envoy cannot fetch its keys, so tokens from {} fail; add a ServiceEntry for it, or give the keys inline (jwks)",
                        rule.issuer
                    ),
                ));
            }
        }
    }
    out
}
