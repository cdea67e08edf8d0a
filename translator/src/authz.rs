//! AuthorizationPolicy (`security.istio.io/v1`) as Envoy's RBAC filters on
//! a sidecar's inbound chains and a gateway's listeners, the way istiod's
//! authz builder writes them.
//!
//! - **Which policies**: those of the workload's namespace and of the root
//!   namespace whose `selector` is absent or matches the workload's labels,
//!   and on a Gateway API gateway's pods those whose `targetRef(s)` name
//!   that Gateway ([`crate::attach`]).
//! - **Filters** (`envoy.filters.http.rbac` before the router on HTTP
//!   chains, `envoy.filters.network.rbac` before the TCP proxy, stat prefix
//!   `tcp.`), in Istio's order: `AUDIT` (Envoy's `LOG` action), `DENY`,
//!   then `ALLOW`. A workload with no policy gets none. Envoy answers a
//!   refused request with HTTP 403 `RBAC: access denied` and closes a
//!   refused TCP connection.
//! - **One Envoy policy per rule**, named `ns[<ns>]-policy[<name>]-rule[<i>]`:
//!   a permission per `to` operation (its set fields and the destination
//!   conditions of `when`, all of them), a principal per `from` source (its
//!   fields and the source conditions of `when`). A policy without rules
//!   gets one that never matches (an `ALLOW` one then refuses everything).
//! - **Values**: exact, `prefix*`, `*suffix`, or `*` (present / non-empty);
//!   principals are matched as the peer certificate's SPIFFE URI
//!   (`spiffe://` + value; values in one of the mesh's trust domains match
//!   in each of them, Istio's trust domain aliases, and `cluster.local`
//!   stands for the mesh's own), namespaces and service
//!   accounts by a regex over it; request header values as one element of
//!   a comma-separated list.
//! - **Request principals** (`<iss>/<sub>`) and `request.auth.*`
//!   conditions are matched on the token payload the JWT filter
//!   ([`crate::jwt`], from RequestAuthentications) leaves in its dynamic
//!   metadata; a request without a verified token has none.
//! - **Path templates** (`/store/{*}/inventory`, `/api/{**}`): Envoy's URI
//!   template matcher.
//! - **What cannot apply** (an HTTP field on a TCP chain; Envoy metadata
//!   conditions): in an `ALLOW` rule the whole rule is left
//!   out (it allows less), in `DENY` and `AUDIT` rules only that value
//!   (they refuse more), as Istio does.
//! - **`CUSTOM`**: the rules select the requests (and, for a gRPC provider,
//!   the connections) an external authorizer is asked about, the provider
//!   the policy names in the mesh config's `extensionProviders`
//!   ([`crate::ext_authz`]); these filters come first. A provider that
//!   cannot be used (undefined, invalid, its service not in the mesh, or a
//!   second provider for the same workload) has the rules refuse what they
//!   match instead, as istiod does. A dry run is not supported for
//!   `CUSTOM`: such a policy is reported and left out.
//! - **Dry run** (annotation `istio.io/dry-run: "true"`): the policy goes
//!   into the filter's `shadow_rules` (stat prefix `istio_dry_run_allow_`
//!   / `istio_dry_run_deny_`) and decides nothing.

use std::collections::BTreeMap;

use crds::authorization_policy::{Action, AuthorizationPolicySpec, Condition, Operation, Source};
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    MetadataSource, Permission, Policy as RbacPolicy, Principal, Rbac, SourcedMetadata, permission,
    principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    ListMatcher, MetadataMatcher, OrMatcher, PathMatcher, RegexMatcher, StringMatcher,
    ValueMatcher, list_matcher, metadata_matcher, path_matcher, string_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use crate::attach::Targetable;
use crate::model::{Config, Snapshot};

/// The annotation that makes a policy a dry run (Istio's `istio.io/dry-run`).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";
/// Envoy's HTTP RBAC filter.
pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
/// Envoy's network RBAC filter.
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// Istio's stat prefix of the network RBAC filter (`tcp.rbac.denied`, ...).
const TCP_STAT_PREFIX: &str = "tcp.";

/// One AuthorizationPolicy as the snapshot keeps it: its spec and whether
/// it is a dry run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    /// The spec, as written.
    pub spec: AuthorizationPolicySpec,
    /// `istio.io/dry-run: "true"`: evaluated, logged in stats, not enforced.
    pub dry_run: bool,
}

impl Policy {
    /// The snapshot's view of `ap`.
    pub fn of(ap: &crds::AuthorizationPolicy) -> Policy {
        let dry_run = ap
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DRY_RUN_ANNOTATION))
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Policy {
            spec: ap.spec.clone(),
            dry_run,
        }
    }

    fn action(&self) -> Action {
        self.spec.action.unwrap_or(Action::Allow)
    }
}

/// The security filters of one workload's inbound chains: HTTP filters for
/// the connection managers (the JWT filter of its RequestAuthentications,
/// then RBAC; before the router), network filters for TCP chains (before
/// the TCP proxy). Both empty without a policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// `envoy.filters.http.jwt_authn`, then `envoy.filters.http.rbac`,
    /// one per action in use.
    pub http: Vec<HttpFilter>,
    /// `envoy.filters.network.rbac`, one per action in use.
    pub tcp: Vec<Filter>,
}

/// The JWT and RBAC filters for the workload in `namespace` with `labels`.
pub fn filters(snap: &Snapshot, namespace: &str, labels: &BTreeMap<String, String>) -> Filters {
    if snap.authorization_policies.is_empty() && snap.request_authentications.is_empty() {
        // Every sidecar and gateway asks; most meshes have neither.
        return Filters::default();
    }
    let root = snap.mesh.root_namespace.as_str();
    let mut by_action: [Vec<&Config<Policy>>; 3] = Default::default();
    let mut custom: Vec<&Config<Policy>> = Vec::new();
    for p in snap
        .authorization_policies
        .iter()
        .filter(|p| crate::attach::attaches(&p.namespace, &p.spec.spec, (root, namespace, labels)))
    {
        let slot = match p.spec.action() {
            Action::Audit => 0,
            Action::Deny => 1,
            Action::Allow => 2,
            // A dry run is not supported for CUSTOM (reported): left out.
            Action::Custom if p.spec.dry_run => continue,
            Action::Custom => {
                custom.push(p);
                continue;
            }
        };
        by_action[slot].push(p);
    }
    let trust: Vec<&str> = snap.mesh.trust_domains().collect();
    let mut out = Filters::default();
    // Tokens are verified before any RBAC filter reads them.
    out.http.extend(crate::jwt::filter(snap, namespace, labels));
    // CUSTOM first, then AUDIT, DENY and ALLOW, as Istio orders them.
    if !custom.is_empty() {
        custom_filters(snap, &custom, &trust, &mut out);
    }
    for (policies, action) in
        by_action
            .iter()
            .zip([rbac::Action::Log, rbac::Action::Deny, rbac::Action::Allow])
    {
        if policies.is_empty() {
            continue;
        }
        let (rules, shadow) = rbac_of(policies, action, false, &trust, &rule_name);
        let prefix = shadow_prefix(shadow.as_ref());
        out.http.push(http_rbac(rules, shadow, prefix.clone()));
        let (rules, shadow) = rbac_of(policies, action, true, &trust, &rule_name);
        out.tcp.push(network_rbac(rules, shadow, prefix));
    }
    out
}

fn http_rbac(rules: Option<Rbac>, shadow_rules: Option<Rbac>, shadow_prefix: String) -> HttpFilter {
    HttpFilter {
        name: HTTP_RBAC_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(HttpRbac {
            shadow_rules_stat_prefix: shadow_prefix,
            rules,
            shadow_rules,
            ..Default::default()
        }))),
        ..Default::default()
    }
}

fn network_rbac(rules: Option<Rbac>, shadow_rules: Option<Rbac>, shadow_prefix: String) -> Filter {
    Filter {
        name: NETWORK_RBAC_FILTER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(NetworkRbac {
            stat_prefix: TCP_STAT_PREFIX.into(),
            shadow_rules_stat_prefix: shadow_prefix,
            rules,
            shadow_rules,
            ..Default::default()
        }))),
    }
}

/// Whether some workload may be in the scope of both policies: their
/// namespaces meet (the same, or one is the root namespace) and no label
/// has different values in their selectors; two policies attached by
/// `targetRef(s)` share only a gateway both name.
fn may_share_workloads(root: &str, p: &Config<Policy>, q: &Config<Policy>) -> bool {
    let (pr, qr) = (p.spec.spec.refs(), q.spec.spec.refs());
    if !pr.is_empty() && !qr.is_empty() {
        return p.namespace == q.namespace
            && pr
                .iter()
                .any(|a| qr.iter().any(|b| (&a.kind, &a.name) == (&b.kind, &b.name)));
    }
    let (a, b) = (p.spec.spec.selector.as_ref(), q.spec.spec.selector.as_ref());
    (p.namespace == q.namespace || p.namespace == root || q.namespace == root)
        && a.zip(b).is_none_or(|(a, b)| {
            a.match_labels
                .iter()
                .all(|(k, v)| b.match_labels.get(k).is_none_or(|w| w == v))
        })
}

/// The provider a `CUSTOM` policy names (`provider.name`).
fn provider_name(p: &Config<Policy>) -> &str {
    p.spec
        .spec
        .provider
        .as_ref()
        .map_or("", |pr| pr.name.as_str())
}

/// The filters of the `CUSTOM` policies applying to a workload, as
/// istiod's custom builder writes them ([`crate::ext_authz`]): their rules
/// as RBAC shadow rules named `istio-ext-authz-<provider>-ns[..]-..`, then
/// the provider's `ext_authz` filter, enabled when one of them matched. A
/// provider that cannot be used (undefined, invalid, its service not in the
/// mesh, or two providers for one workload) turns the rules into `DENY`
/// rules, as istiod does.
fn custom_filters(
    snap: &Snapshot,
    policies: &[&Config<Policy>],
    trust: &[&str],
    out: &mut Filters,
) {
    let first = policies.first().map_or("", |p| provider_name(p));
    let resolved = if policies.iter().any(|p| provider_name(p) != first) {
        Err("two providers for one workload".to_owned())
    } else {
        crate::ext_authz::resolve(snap, first)
    };
    let named = |p: &Config<Policy>, i: usize| {
        format!(
            "{}-{}-{}",
            crate::ext_authz::MATCH_PREFIX,
            provider_name(p),
            rule_name(p, i)
        )
    };
    match resolved {
        Ok((provider, host, cluster)) => {
            let (rules, _) = rbac_of(policies, rbac::Action::Deny, false, trust, &named);
            let stat = crate::ext_authz::SHADOW_STAT_PREFIX.to_owned();
            out.http.push(http_rbac(None, rules, stat.clone()));
            out.http.push(crate::ext_authz::http_filter(
                provider,
                host,
                cluster.clone(),
            ));
            if let Some(check) = crate::ext_authz::network_filter(provider, host, cluster) {
                let (rules, _) = rbac_of(policies, rbac::Action::Deny, true, trust, &named);
                out.tcp.push(network_rbac(None, rules, stat));
                out.tcp.push(check);
            }
        }
        Err(_) => {
            // Reported with the policy (`warnings`).
            let bad = |p: &Config<Policy>, i: usize| {
                format!("{}-deny-due-to-bad-CUSTOM-action", named(p, i))
            };
            let (rules, _) = rbac_of(policies, rbac::Action::Deny, false, trust, &bad);
            out.http.push(http_rbac(rules, None, String::new()));
            let (rules, _) = rbac_of(policies, rbac::Action::Deny, true, trust, &bad);
            out.tcp.push(network_rbac(rules, None, String::new()));
        }
    }
}

/// What this translator cannot act on, as warnings naming the field:
/// `CUSTOM` policies whose provider cannot be used, and dry-run ones.
/// (Condition keys it cannot match are reported by `crds::support`.)
pub(crate) fn warnings(snap: &Snapshot) -> Vec<crate::ConfigWarning> {
    let mut out = Vec::new();
    for p in &snap.authorization_policies {
        if p.spec.action() == Action::Custom {
            let problem = if p.spec.dry_run {
                Some((
                    format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"),
                    "a dry run is not supported for CUSTOM policies: the policy is left out"
                        .to_owned(),
                ))
            } else if let Some(other) = snap.authorization_policies.iter().find(|q| {
                q.spec.action() == Action::Custom
                    && !q.spec.dry_run
                    && provider_name(q) != provider_name(p)
                    && may_share_workloads(&snap.mesh.root_namespace, p, q)
            }) {
                Some((
                    "spec.provider.name".to_owned(),
                    format!(
                        "CUSTOM policy {} names provider {:?} for workloads this one may apply to; one provider per workload (as istiod): requests the rules of both match are refused there",
                        other.key(),
                        provider_name(other)
                    ),
                ))
            } else {
                crate::ext_authz::resolve(snap, provider_name(p))
                    .err()
                    .map(|e| {
                        (
                            "spec.provider.name".to_owned(),
                            format!("{e}: requests the rules match are refused"),
                        )
                    })
            };
            if let Some((field, reason)) = problem {
                out.push(crate::ConfigWarning::new(
                    "AuthorizationPolicy",
                    p.key(),
                    field,
                    reason,
                ));
            }
        }
    }
    out
}

fn shadow_prefix(shadow: Option<&Rbac>) -> String {
    match shadow.map(|s| s.action()) {
        Some(rbac::Action::Allow) => "istio_dry_run_allow_".into(),
        Some(rbac::Action::Deny) => "istio_dry_run_deny_".into(),
        _ => String::new(),
    }
}

/// The enforced and the dry-run rules of `policies` under `action`, for a
/// TCP chain or an HTTP one.
fn rbac_of(
    policies: &[&Config<Policy>],
    action: rbac::Action,
    tcp: bool,
    trust: &[&str],
    rule_name: &dyn Fn(&Config<Policy>, usize) -> String,
) -> (Option<Rbac>, Option<Rbac>) {
    let mut enforced: Option<Rbac> = None;
    let mut shadow: Option<Rbac> = None;
    for p in policies {
        let target = if p.spec.dry_run {
            &mut shadow
        } else {
            &mut enforced
        };
        let rules = target.get_or_insert_with(|| Rbac {
            action: action as i32,
            ..Default::default()
        });
        let spec = &p.spec.spec;
        if spec.rules.is_empty() {
            rules.policies.insert(rule_name(p, 0), never());
        }
        let ctx = Ctx {
            tcp,
            allow: action == rbac::Action::Allow,
            trust,
            namespace: &p.namespace,
        };
        for (i, rule) in spec.rules.iter().enumerate() {
            if let Ok(policy) = ctx.rule(rule) {
                rules.policies.insert(rule_name(p, i), policy);
            }
        }
    }
    (enforced, shadow)
}

fn rule_name(p: &Config<Policy>, i: usize) -> String {
    format!("ns[{}]-policy[{}]-rule[{i}]", p.namespace, p.name)
}

/// A path template (`/store/{*}/inventory`, `/api/{**}`) as Envoy's URI
/// template matcher (`*` one segment, `**` any number), as Istio's
/// `PathTemplateMatcher`; one validation would refuse is left out.
fn path_template(path: &str) -> Result<Permission, Unusable> {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
    crds::validate::check_path_template(path).map_err(|_| "not a valid path template")?;
    let template = path.replace("{**}", "**").replace("{*}", "*");
    Ok(Permission {
        rule: Some(permission::Rule::UriTemplate(TypedExtensionConfig {
            name: "envoy.path.match.uri_template.uri_template_matcher".into(),
            typed_config: Some(pack_any(UriTemplateMatchConfig {
                path_template: template,
            })),
        })),
    })
}

/// Istio's policy that matches nothing (`not any` on both sides).
fn never() -> RbacPolicy {
    RbacPolicy {
        permissions: vec![Permission {
            rule: Some(permission::Rule::NotRule(Box::new(any_permission()))),
        }],
        principals: vec![Principal {
            identifier: Some(principal::Identifier::NotId(Box::new(any_principal()))),
        }],
        ..Default::default()
    }
}

fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn any_principal() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}

/// Why a value cannot be matched here (the rule is left out of an `ALLOW`
/// policy, the value out of others).
type Unusable = &'static str;

/// What one rule is generated for.
struct Ctx<'a> {
    tcp: bool,
    allow: bool,
    trust: &'a [&'a str],
    /// The policy's namespace (service accounts without one are in it).
    namespace: &'a str,
}

impl Ctx<'_> {
    /// The Envoy policy of one rule, or why it is left out.
    fn rule(&self, rule: &crds::authorization_policy::Rule) -> Result<RbacPolicy, Unusable> {
        let mut base_permissions: Vec<Permission> = Vec::new();
        let mut base_principals: Vec<Principal> = Vec::new();
        for c in &rule.when {
            self.condition(c, &mut base_permissions, &mut base_principals)?;
        }
        let mut permissions = Vec::new();
        for to in &rule.to {
            let mut and = match &to.operation {
                Some(op) => self.operation(op)?,
                None => Vec::new(),
            };
            and.extend(base_permissions.iter().cloned());
            permissions.push(permission_and(and));
        }
        if rule.to.is_empty() {
            permissions.push(permission_and(base_permissions.clone()));
        }
        let mut principals = Vec::new();
        for from in &rule.from {
            let mut and = match &from.source {
                Some(src) => self.source(src)?,
                None => Vec::new(),
            };
            and.extend(base_principals.iter().cloned());
            principals.push(principal_and(and));
        }
        if rule.from.is_empty() {
            principals.push(principal_and(base_principals));
        }
        Ok(RbacPolicy {
            permissions,
            principals,
            ..Default::default()
        })
    }

    /// The permissions of an operation's fields, in Istio's order.
    fn operation(&self, op: &Operation) -> Result<Vec<Permission>, Unusable> {
        let mut and = Vec::new();
        self.permission_field(&mut and, &op.hosts, &op.not_hosts, |v| {
            self.http_only()
                .map(|()| header_permission(host_matcher(v)))
        })?;
        self.permission_field(&mut and, &op.methods, &op.not_methods, |v| {
            self.http_only()
                .map(|()| header_permission(header_value_matcher(":method", v, false)))
        })?;
        self.permission_field(&mut and, &op.paths, &op.not_paths, |v| {
            self.http_only()?;
            if v.contains("{*}") || v.contains("{**}") {
                return path_template(v);
            }
            Ok(Permission {
                rule: Some(permission::Rule::UrlPath(PathMatcher {
                    rule: Some(path_matcher::Rule::Path(string_match("", v))),
                })),
            })
        })?;
        self.permission_field(&mut and, &op.ports, &op.not_ports, port_permission)?;
        Ok(and)
    }

    /// The principals of a source's fields, in Istio's order.
    fn source(&self, s: &Source) -> Result<Vec<Principal>, Unusable> {
        let mut and = Vec::new();
        let principals = self.with_aliases(&s.principals);
        let not_principals = self.with_aliases(&s.not_principals);
        self.principal_field(&mut and, &principals, &not_principals, |v| {
            Ok(authenticated(string_match("spiffe://", v)))
        })?;
        self.principal_field(
            &mut and,
            &s.request_principals,
            &s.not_request_principals,
            |v| self.http_only().map(|()| request_principal(v)),
        )?;
        self.principal_field(&mut and, &s.namespaces, &s.not_namespaces, |v| {
            Ok(namespace_principal(v))
        })?;
        self.principal_field(
            &mut and,
            &s.service_accounts,
            &s.not_service_accounts,
            |v| {
                let (ns, sa) = v.split_once('/').unwrap_or((self.namespace, v));
                Ok(authenticated(regex_matcher(format!(
                    "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
                    re2_escape(ns),
                    re2_escape(sa)
                ))))
            },
        )?;
        self.principal_field(&mut and, &s.trust_domains, &s.not_trust_domains, |v| {
            Ok(authenticated(regex_matcher(format!(
                "spiffe://{}/.*",
                wildcard_regex(v)
            ))))
        })?;
        self.principal_field(
            &mut and,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            |v| {
                cidr(v).map(|c| Principal {
                    identifier: Some(principal::Identifier::RemoteIp(c)),
                })
            },
        )?;
        self.principal_field(&mut and, &s.ip_blocks, &s.not_ip_blocks, |v| {
            cidr(v).map(|c| Principal {
                identifier: Some(principal::Identifier::DirectRemoteIp(c)),
            })
        })?;
        Ok(and)
    }

    /// A `when` condition, into the permissions or the principals.
    fn condition(
        &self,
        c: &Condition,
        permissions: &mut Vec<Permission>,
        principals: &mut Vec<Principal>,
    ) -> Result<(), Unusable> {
        let key = c.key.as_str();
        let (values, not) = (&c.values[..], &c.not_values[..]);
        match key {
            "destination.ip" => self.permission_field(permissions, values, not, |v| {
                cidr(v).map(|c| Permission {
                    rule: Some(permission::Rule::DestinationIp(c)),
                })
            }),
            "destination.port" => self.permission_field(permissions, values, not, port_permission),
            "connection.sni" => self.permission_field(permissions, values, not, |v| {
                Ok(Permission {
                    rule: Some(permission::Rule::RequestedServerName(string_match("", v))),
                })
            }),
            "source.ip" => self.principal_field(principals, values, not, |v| {
                cidr(v).map(|c| Principal {
                    identifier: Some(principal::Identifier::DirectRemoteIp(c)),
                })
            }),
            "remote.ip" => self.principal_field(principals, values, not, |v| {
                cidr(v).map(|c| Principal {
                    identifier: Some(principal::Identifier::RemoteIp(c)),
                })
            }),
            "source.namespace" => {
                self.principal_field(principals, values, not, |v| Ok(namespace_principal(v)))
            }
            "source.principal" => {
                let values = self.with_aliases(values);
                let not = self.with_aliases(not);
                self.principal_field(principals, &values, &not, |v| {
                    Ok(authenticated(string_match("spiffe://", v)))
                })
            }
            _ if key.starts_with("request.headers[") => {
                let name = header_name(key).ok_or("malformed request.headers[...] key")?;
                self.principal_field(principals, values, not, |v| {
                    self.http_only().map(|()| Principal {
                        identifier: Some(principal::Identifier::Header(header_value_matcher(
                            name, v, true,
                        ))),
                    })
                })
            }
            "request.auth.principal" => self.principal_field(principals, values, not, |v| {
                self.http_only().map(|()| request_principal(v))
            }),
            "request.auth.audiences" | "request.auth.presenter" => {
                let claim = if key.ends_with("audiences") {
                    "aud"
                } else {
                    "azp"
                };
                self.principal_field(principals, values, not, |v| {
                    self.http_only().map(|()| jwt_claim(&[claim], one_of(v)))
                })
            }
            _ if key.starts_with("request.auth.claims[") => {
                let path = claim_path(&key["request.auth.claims".len()..])
                    .ok_or("malformed request.auth.claims[...] key")?;
                self.principal_field(principals, values, not, |v| {
                    self.http_only().map(|()| jwt_claim(&path, one_of(v)))
                })
            }
            _ if key.starts_with("experimental.envoy.filters.") => {
                self.permission_field(permissions, values, not, |_| {
                    Err("Envoy metadata conditions are not supported")
                })
            }
            // Validation refuses other keys; Istio skips such a rule.
            _ => Err("unknown condition key"),
        }
    }

    fn http_only(&self) -> Result<(), Unusable> {
        if self.tcp {
            Err("an HTTP attribute on a TCP chain")
        } else {
            Ok(())
        }
    }

    /// Istio's `checkError`: an unusable value drops an `ALLOW` rule and is
    /// skipped in the others.
    fn usable<T>(&self, made: Result<T, Unusable>) -> Result<Option<T>, Unusable> {
        match made {
            Ok(m) => Ok(Some(m)),
            Err(why) if self.allow => Err(why),
            Err(_) => Ok(None),
        }
    }

    fn permission_field(
        &self,
        and: &mut Vec<Permission>,
        values: &[String],
        not_values: &[String],
        make: impl Fn(&str) -> Result<Permission, Unusable>,
    ) -> Result<(), Unusable> {
        let (any_of, none_of) = (self.each(values, &make)?, self.each(not_values, &make)?);
        if !any_of.is_empty() {
            and.push(permission_or(any_of));
        }
        if !none_of.is_empty() {
            and.push(Permission {
                rule: Some(permission::Rule::NotRule(Box::new(permission_or(none_of)))),
            });
        }
        Ok(())
    }

    fn principal_field(
        &self,
        and: &mut Vec<Principal>,
        values: &[String],
        not_values: &[String],
        make: impl Fn(&str) -> Result<Principal, Unusable>,
    ) -> Result<(), Unusable> {
        let (any_of, none_of) = (self.each(values, &make)?, self.each(not_values, &make)?);
        if !any_of.is_empty() {
            and.push(principal_or(any_of));
        }
        if !none_of.is_empty() {
            and.push(Principal {
                identifier: Some(principal::Identifier::NotId(Box::new(principal_or(
                    none_of,
                )))),
            });
        }
        Ok(())
    }

    /// The matchers of a field's values (or not-values), those that are
    /// usable ([`Ctx::usable`]).
    fn each<T>(
        &self,
        values: &[String],
        make: impl Fn(&str) -> Result<T, Unusable>,
    ) -> Result<Vec<T>, Unusable> {
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            out.extend(self.usable(make(v))?);
        }
        Ok(out)
    }

    /// Principals with Istio's trust domain aliases: a value in one of the
    /// mesh's trust domains matches in each of them, and `cluster.local`
    /// stands for the mesh's own (Istio's `ReplaceTrustDomainAliases`).
    fn with_aliases(&self, values: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(values.len());
        for v in values {
            let own = v
                .split_once("/ns/")
                .filter(|(td, _)| *td == "cluster.local" || self.trust.contains(td));
            match own {
                Some((_, rest)) => {
                    for td in self.trust {
                        let p = format!("{td}/ns/{rest}");
                        if !out.contains(&p) {
                            out.push(p);
                        }
                    }
                }
                None if !out.contains(v) => out.push(v.clone()),
                None => {}
            }
        }
        out
    }
}

/// A request principal `<iss>/<sub>` (the last `/` splits them; `*` and
/// a leading or trailing `*` as Istio reads them) as a match on both
/// claims of the verified token's payload.
fn request_principal(v: &str) -> Principal {
    let any = || regex_matcher(".+".into());
    let exact = |s: &str| string_match("", s);
    let (iss, sub) = match v.rsplit_once('/') {
        Some((iss, sub)) => (Some(iss), sub),
        None => (None, v),
    };
    let (iss, sub) = if v == "*" {
        (any(), any())
    } else if v.starts_with('*') {
        match iss {
            Some("*") => (any(), exact(sub)),
            Some(iss) => (string_match("", iss), exact(sub)),
            None => (any(), string_match("", v)),
        }
    } else if v.ends_with('*') {
        match iss {
            Some(iss) if sub == "*" => (exact(iss), any()),
            Some(iss) => (exact(iss), string_match("", sub)),
            None => (string_match("", v), any()),
        }
    } else {
        match iss {
            Some(iss) => (exact(iss), exact(sub)),
            None => (exact(v), exact("")),
        }
    };
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set {
            ids: vec![
                jwt_claim(&["iss"], string_value(iss)),
                jwt_claim(&["sub"], string_value(sub)),
            ],
        })),
    }
}

/// A claim of the verified token (`path` below its payload) matching `value`.
fn jwt_claim(path: &[&str], value: ValueMatcher) -> Principal {
    let keys = std::iter::once(crate::jwt::PAYLOAD)
        .chain(path.iter().copied())
        .map(|k| metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(k.to_owned())),
        })
        .collect();
    Principal {
        identifier: Some(principal::Identifier::SourcedMetadata(SourcedMetadata {
            metadata_matcher: Some(MetadataMatcher {
                filter: crate::jwt::JWT_FILTER.into(),
                path: keys,
                value: Some(value),
                invert: false,
            }),
            metadata_source: MetadataSource::Dynamic as i32,
        })),
    }
}

fn string_value(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    }
}

/// A claim equal to `v` (Istio's wildcards), or a list claim holding it.
fn one_of(v: &str) -> ValueMatcher {
    let m = string_match("", v);
    let in_list = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(string_value(
                    m.clone(),
                )))),
            },
        ))),
    };
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
            value_matchers: vec![string_value(m), in_list],
        })),
    }
}

/// `[a][b]` -> `["a", "b"]` (nested claims); `None` when malformed.
fn claim_path(s: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name);
        rest = &inner[end + 1..];
    }
    (!out.is_empty()).then_some(out)
}

fn permission_and(rules: Vec<Permission>) -> Permission {
    let rules = if rules.is_empty() {
        vec![any_permission()]
    } else {
        rules
    };
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set { rules })),
    }
}

fn permission_or(rules: Vec<Permission>) -> Permission {
    Permission {
        rule: Some(permission::Rule::OrRules(permission::Set { rules })),
    }
}

fn principal_and(ids: Vec<Principal>) -> Principal {
    let ids = if ids.is_empty() {
        vec![any_principal()]
    } else {
        ids
    };
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn principal_or(ids: Vec<Principal>) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
    }
}

fn authenticated(m: StringMatcher) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(m),
            },
        )),
    }
}

/// A peer in namespace `v` (wildcards allowed): a regex over its SPIFFE ID.
fn namespace_principal(v: &str) -> Principal {
    authenticated(regex_matcher(format!(".*/ns/{}/.*", wildcard_regex(v))))
}

fn header_permission(m: HeaderMatcher) -> Permission {
    Permission {
        rule: Some(permission::Rule::Header(m)),
    }
}

fn port_permission(v: &str) -> Result<Permission, Unusable> {
    let port: u32 = v.parse().ok().filter(|p| *p <= 65535).ok_or("not a port")?;
    Ok(Permission {
        rule: Some(permission::Rule::DestinationPort(port)),
    })
}

/// An address or CIDR (`10.0.0.1`, `10.0.0.0/16`, IPv6 alike).
fn cidr(v: &str) -> Result<CidrRange, Unusable> {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (v, None),
    };
    let ip: std::net::IpAddr = addr.parse().map_err(|_| "not an IP address or CIDR")?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or("not a CIDR prefix length")?,
        None => max,
    };
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    })
}

/// `request.headers[name]` -> `name`.
fn header_name(key: &str) -> Option<&str> {
    key.strip_prefix("request.headers[")?
        .strip_suffix(']')
        .filter(|n| !n.is_empty())
}

/// Istio's string matcher: `*` any non-empty value, `prefix*`, `*suffix`,
/// exact; `prefix` is put before the value (`spiffe://` for principals).
fn string_match(prefix: &str, v: &str) -> StringMatcher {
    let pattern = if v == "*" {
        string_matcher::MatchPattern::SafeRegex(regex(".+".into()))
    } else if let Some(rest) = v.strip_prefix('*') {
        if prefix.is_empty() {
            string_matcher::MatchPattern::Suffix(rest.into())
        } else {
            string_matcher::MatchPattern::SafeRegex(regex(format!(
                "{}.*{}",
                re2_escape(prefix),
                re2_escape(rest)
            )))
        }
    } else if let Some(rest) = v.strip_suffix('*') {
        string_matcher::MatchPattern::Prefix(format!("{prefix}{rest}"))
    } else {
        string_matcher::MatchPattern::Exact(format!("{prefix}{v}"))
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

fn regex_matcher(r: String) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::SafeRegex(regex(r))),
        ..Default::default()
    }
}

fn regex(r: String) -> RegexMatcher {
    RegexMatcher {
        regex: r,
        ..Default::default()
    }
}

/// `Host` / `:authority`, case-insensitive; `*`: present.
fn host_matcher(v: &str) -> HeaderMatcher {
    if v == "*" {
        return present(":authority");
    }
    let mut m = string_match("", v);
    m.ignore_case = true;
    HeaderMatcher {
        name: ":authority".into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

/// A header's value (`*`: present); with `list`, as one element of a
/// comma-separated list (request header conditions, as Istio's).
fn header_value_matcher(name: &str, v: &str, list: bool) -> HeaderMatcher {
    if v == "*" {
        return present(name);
    }
    let m = if list {
        let e = wildcard_regex(v);
        regex_matcher(format!("^{e}$|^{e},.*|.*,{e},.*|.*,{e}$"))
    } else {
        string_match("", v)
    };
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn present(name: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
        ..Default::default()
    }
}

/// `v` as a regex with a leading or trailing `*` as `.*`, the rest literal.
fn wildcard_regex(v: &str) -> String {
    v.split('*').map(re2_escape).collect::<Vec<_>>().join(".*")
}

/// `s` with RE2's special characters escaped (Go's `regexp.QuoteMeta`).
fn re2_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if r"\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
