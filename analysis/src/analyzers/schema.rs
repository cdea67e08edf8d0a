//! istiod's validation as an analyzer, with the rules a VirtualService can
//! never reach (Istio's validation warnings for VirtualServices), and the
//! deprecated fields.

use std::collections::HashMap;

use crds::virtual_service::HttpMatchRequest;
use crds::{StringMatch, VirtualServiceSpec};
use serde::Serialize;

use super::{each, pick};
use crate::input::Input;
use crate::message::{self, Message, Param, Resource};

/// Every document that could not be read and every object validation
/// refuses is a `SchemaValidationError` (IST0106); each VirtualService's
/// unreachable rules and ineffective matches are
/// `VirtualServiceUnreachableRule` (IST0130) and
/// `VirtualServiceIneffectiveMatch` (IST0131).
pub fn validation(input: &Input, out: &mut Vec<Message>) {
    out.extend(input.unreadable.iter().cloned());
    for entry in &input.entries {
        if let Some(reason) = &entry.invalid {
            out.push(Message::new(
                message::SCHEMA_VALIDATION_ERROR,
                Some(&entry.resource),
                vec![reason.clone().into()],
            ));
        }
    }
    for (entry, vs) in each(input, pick::virtual_service) {
        unreachable_rules(vs, &entry.resource, out);
    }
}

/// What Istio's validation warns of for a VirtualService (its admission
/// webhook returns these as warnings, `kubectl apply` prints them): its
/// unreachable rules and ineffective matches, in Istio's words
/// (`virtualService rule #1 not used (all matches used by prior rules)`).
pub fn virtual_service_warnings(vs: &VirtualServiceSpec) -> Vec<String> {
    let resource = Resource {
        kind: String::new(),
        namespace: None,
        name: String::new(),
        reference: None,
    };
    let mut messages = Vec::new();
    unreachable_rules(vs, &resource, &mut messages);
    messages
        .iter()
        .map(|m| {
            let p: Vec<String> = m
                .params
                .iter()
                .map(|p| match p {
                    Param::Str(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .collect();
            match (m.kind.code, p.as_slice()) {
                ("IST0130", [rule, reason]) => format!("virtualService rule {rule} not used ({reason})"),
                ("IST0131", [rule, m, dup]) => format!(
                    "virtualService rule {rule} match {m} is not used (duplicate/overlapping match in rule {dup})"
                ),
                _ => m.text(),
            }
        })
        .collect()
}

/// Istio's `analyzeUnreachable{HTTP,TCP,TLS}Rules`: a rule without matches
/// that is not the last such rule is unreachable ("only the last rule can
/// have no matches"); a match equal (but for its name) to an earlier one
/// is ineffective, and a rule whose every match is is unreachable ("all
/// matches used by prior rules"); an HTTP match whose URI prefix an
/// earlier one's covers, on the same port, method, authority, headers,
/// query parameters and absent headers, is ineffective.
fn unreachable_rules(vs: &VirtualServiceSpec, resource: &Resource, out: &mut Vec<Message>) {
    let mut report = |kind, params: Vec<String>| {
        out.push(Message::new(
            kind,
            Some(resource),
            params.into_iter().map(Param::Str).collect(),
        ));
    };
    let http_names: Vec<String> = vs
        .http
        .iter()
        .enumerate()
        .map(|(i, r)| rule_name(r.name.as_deref(), i))
        .collect();
    let http_matches: Vec<Vec<(String, serde_json::Value)>> = vs
        .http
        .iter()
        .map(|r| {
            r.matches
                .iter()
                .enumerate()
                .map(|(j, m)| (rule_name(m.name.as_deref(), j), without_name(m)))
                .collect()
        })
        .collect();
    duplicates(&http_names, &http_matches, &mut report);
    prefix_overlaps(vs, &http_names, &mut report);
    for rules in [
        vs.tcp.iter().map(|r| keyed(&r.matches)).collect::<Vec<_>>(),
        vs.tls.iter().map(|r| keyed(&r.matches)).collect(),
    ] {
        let names: Vec<String> = (0..rules.len()).map(|i| format!("#{i}")).collect();
        duplicates(&names, &rules, &mut report);
    }
}

/// Each match of an L4 rule, named by its position, as JSON.
fn keyed<T: Serialize>(matches: &[T]) -> Vec<(String, serde_json::Value)> {
    matches
        .iter()
        .enumerate()
        .map(|(j, m)| (format!("#{j}"), serde_json::to_value(m).unwrap_or_default()))
        .collect()
}

/// `"name"` (quoted, as Go's `%q`) or `#index`.
fn rule_name(name: Option<&str>, index: usize) -> String {
    match name.filter(|n| !n.is_empty()) {
        Some(n) => format!("{n:?}"),
        None => format!("#{index}"),
    }
}

/// An HTTP match as JSON without its `name`, to compare matches by what
/// they match.
fn without_name(m: &HttpMatchRequest) -> serde_json::Value {
    let mut value = serde_json::to_value(m).unwrap_or_default();
    if let Some(o) = value.as_object_mut() {
        o.remove("name");
    }
    value
}

type Report<'a> = dyn FnMut(crate::MessageType, Vec<String>) + 'a;

/// The rules without matches but the last, and the matches repeated.
fn duplicates(
    names: &[String],
    rules: &[Vec<(String, serde_json::Value)>],
    report: &mut Report<'_>,
) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut empty_seen = false;
    for (i, matches) in rules.iter().enumerate() {
        if matches.is_empty() {
            if empty_seen {
                report(
                    message::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                    vec![
                        names[i].clone(),
                        "only the last rule can have no matches".into(),
                    ],
                );
            }
            empty_seen = true;
            continue;
        }
        let mut repeated = 0;
        for (match_name, value) in matches {
            let key = value.to_string();
            if let Some(&first) = seen.get(&key) {
                report(
                    message::VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
                    vec![names[i].clone(), match_name.clone(), names[first].clone()],
                );
                repeated += 1;
            } else {
                seen.insert(key, i);
            }
        }
        if repeated == matches.len() {
            report(
                message::VIRTUAL_SERVICE_UNREACHABLE_RULE,
                vec![names[i].clone(), "all matches used by prior rules".into()],
            );
        }
    }
}

/// What a URI-prefix match is compared on (Istio's
/// `OverlappingMatchValidationForHTTPRoute`).
struct PrefixMatch {
    rule: String,
    name: String,
    prefix: String,
    port: Option<u32>,
    method: String,
    authority: String,
    headers: HashMap<String, String>,
    query: HashMap<String, String>,
    without_headers: HashMap<String, String>,
}

/// An exact or prefix string match as `exact:v` / `prefix:v`; anything
/// else (regex, none) as empty.
fn exact_or_prefix(m: Option<&StringMatch>) -> String {
    match m {
        Some(StringMatch::Exact(v)) => format!("exact:{v}"),
        Some(StringMatch::Prefix(v)) => format!("prefix:{v}"),
        _ => String::new(),
    }
}

fn string_map(m: &std::collections::BTreeMap<String, StringMatch>) -> HashMap<String, String> {
    m.iter()
        .map(|(k, v)| (k.clone(), exact_or_prefix(Some(v))))
        .collect()
}

/// Whether `later` is covered by `earlier`: its prefix extends earlier's,
/// and each other condition is equal or, as Istio compares them, earlier's
/// starts with later's.
fn covered(earlier: &PrefixMatch, later: &PrefixMatch) -> bool {
    let loose = |a: &str, b: &str| a == b || a.starts_with(b);
    let maps = |a: &HashMap<String, String>, b: &HashMap<String, String>| {
        a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| loose(v, w)))
    };
    later.prefix.starts_with(&earlier.prefix)
        && later.port == earlier.port
        && loose(&earlier.method, &later.method)
        && loose(&earlier.authority, &later.authority)
        && maps(&earlier.headers, &later.headers)
        && maps(&earlier.query, &later.query)
        && maps(&earlier.without_headers, &later.without_headers)
}

/// Matches by URI prefix that an earlier rule's prefix covers (Istio's
/// overlapping-match check; a match repeated whole is left to
/// [`duplicates`]).
fn prefix_overlaps(vs: &VirtualServiceSpec, names: &[String], report: &mut Report<'_>) {
    let mut seen = std::collections::HashSet::new();
    let mut prefixes = Vec::new();
    for (i, rule) in vs.http.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            if !seen.insert(without_name(m).to_string()) {
                continue;
            }
            let Some(StringMatch::Prefix(prefix)) = &m.uri else {
                continue;
            };
            if prefix.is_empty() {
                continue;
            }
            let method = match exact_or_prefix(m.method.as_ref()) {
                m if m.is_empty() => "exact:GET".to_owned(),
                m => m,
            };
            prefixes.push(PrefixMatch {
                rule: names[i].clone(),
                name: rule_name(m.name.as_deref(), j),
                prefix: prefix.clone(),
                port: m.port,
                method,
                authority: exact_or_prefix(m.authority.as_ref()),
                headers: string_map(&m.headers),
                query: string_map(&m.query_params),
                without_headers: string_map(&m.without_headers),
            });
        }
    }
    for (a, earlier) in prefixes.iter().enumerate() {
        for later in &prefixes[a + 1..] {
            if later.prefix != earlier.prefix && covered(earlier, later) {
                report(
                    message::VIRTUAL_SERVICE_INEFFECTIVE_MATCH,
                    vec![
                        later.rule.clone(),
                        format!("{} of prefix {}", later.name, later.prefix),
                        format!(
                            "{} of prefix {} on {}",
                            earlier.name, earlier.prefix, earlier.rule
                        ),
                    ],
                );
            }
        }
    }
}

/// Istio's `deprecation.DeprecationAnalyzer`, for what this daemon reads:
/// an HTTP route's `fault.delay.percent` (an integer) is `Deprecated`
/// (IST0002) for `fault.delay.percentage`. (Istio also calls a Sidecar's
/// `outboundTrafficPolicy.egressProxy` ignored; this daemon acts on it.)
pub fn deprecations(input: &Input, out: &mut Vec<Message>) {
    for (entry, vs) in each(input, pick::virtual_service) {
        let percent = vs
            .http
            .iter()
            .filter_map(|r| r.fault.as_ref()?.delay.as_ref()?.percent)
            .filter(|p| *p > 0);
        for _ in percent {
            out.push(Message::new(
                message::DEPRECATED,
                Some(&entry.resource),
                vec![
                    "HTTPRoute.fault.delay.percent is deprecated; use HTTPRoute.fault.delay.percentage"
                        .into(),
                ],
            ));
        }
    }
}
