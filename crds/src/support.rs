//! What this control plane does not act on yet, by Istio field path, so a
//! set field it would otherwise ignore is reported by name instead of being
//! dropped silently. `docs/ISTIO-API-SUPPORT.md` lists the same paths (a test
//! keeps the two in step).

use serde_json::Value;

use crate::document::Object;

/// Field paths (array indices written `[]`) read but not acted on yet, per kind.
pub const NOT_YET: &[(&str, &str)] = &[
    ("VirtualService", "spec.http[].fault.delay.exponentialDelay"),
    ("VirtualService", "spec.http[].fault.abort.http2Error"),
    ("VirtualService", "spec.tcp[].match[].sourceSubnet"),
    ("DestinationRule", "loadBalancer.zoneAwareLbSetting"),
    ("Gateway", "spec.servers[].defaultEndpoint"),
    ("Telemetry", "spec.metrics[].reportingInterval"),
    ("Telemetry", "spec.metrics[].overrides[].match.customMetric"),
];

/// Values read but not acted on yet: (kind, field path, value, what
/// happens); a value ending in `*` stands for every value it begins.
pub const NOT_YET_VALUES: &[(&str, &str, &str, &str)] = &[
    (
        "Telemetry",
        "metrics[].overrides[].match.metric",
        "GRPC_*",
        "no gRPC message counts are made",
    ),
    (
        "AuthorizationPolicy",
        "when[].key",
        "experimental.envoy.filters.*",
        "the rule is left out of an ALLOW policy, the condition out of others",
    ),
];

/// Whether [`unsupported`] can find anything in `object`: its kind has a
/// rule in [`NOT_YET`] or [`NOT_YET_VALUES`] (read from those tables, so it
/// cannot disagree with them).
pub fn inspected(object: &Object) -> bool {
    let kind = object.kind();
    NOT_YET.iter().any(|(k, _)| *k == kind) || NOT_YET_VALUES.iter().any(|(k, ..)| *k == kind)
}

/// The set fields of `object` that are not acted on yet: (field path with
/// indices, reason). Empty for objects not [`inspected`].
pub fn unsupported(object: &Object) -> Vec<(String, String)> {
    if !inspected(object) {
        return Vec::new();
    }
    let (kind, spec) = match object {
        Object::VirtualService(o) => ("VirtualService", serde_json::to_value(&o.spec)),
        Object::DestinationRule(o) => ("DestinationRule", serde_json::to_value(&o.spec)),
        Object::ServiceEntry(o) => ("ServiceEntry", serde_json::to_value(&o.spec)),
        Object::WorkloadEntry(o) => ("WorkloadEntry", serde_json::to_value(&o.spec)),
        Object::WorkloadGroup(o) => ("WorkloadGroup", serde_json::to_value(&o.spec)),
        Object::Gateway(o) => ("Gateway", serde_json::to_value(&o.spec)),
        Object::Sidecar(o) => ("Sidecar", serde_json::to_value(&o.spec)),
        Object::PeerAuthentication(o) => ("PeerAuthentication", serde_json::to_value(&o.spec)),
        Object::AuthorizationPolicy(o) => ("AuthorizationPolicy", serde_json::to_value(&o.spec)),
        Object::RequestAuthentication(o) => {
            ("RequestAuthentication", serde_json::to_value(&o.spec))
        }
        Object::Telemetry(o) => ("Telemetry", serde_json::to_value(&o.spec)),
        _ => return Vec::new(),
    };
    let Ok(spec) = spec else { return Vec::new() };
    let mut leaves = Vec::new();
    walk(&spec, "spec".into(), "spec".into(), &mut leaves);
    let mut out: Vec<(String, String)> = Vec::new();
    for (path, shape, value) in leaves {
        let concrete: Vec<&str> = path.split('.').collect();
        let shaped: Vec<&str> = shape.split('.').collect();
        let hit = NOT_YET
            .iter()
            .filter(|(k, _)| *k == kind)
            .find_map(|(_, pattern)| {
                let pat: Vec<&str> = pattern.split('.').collect();
                // The first place where the shaped path ends with the
                // pattern; a list of values (`hosts[]`) is named as a whole.
                (pat.len()..=shaped.len())
                    .find(|end| {
                        shaped[end - pat.len()..*end]
                            .iter()
                            .zip(&pat)
                            .all(|(s, p)| s == p || s.strip_suffix("[]") == Some(*p))
                    })
                    .map(|end| {
                        let mut field = concrete[..end].join(".");
                        if shaped[end - 1] != pat[pat.len() - 1] {
                            field.truncate(field.rfind('[').unwrap_or(field.len()));
                        }
                        (field, *pattern)
                    })
            });
        if let Some((field, pattern)) = hit {
            if !out.iter().any(|(f, _)| *f == field) {
                out.push((field, format!("not supported yet ({pattern}); ignored")));
            }
            continue;
        }
        for (k, p, v, what) in NOT_YET_VALUES {
            let Some(text) = value.as_str() else { continue };
            let hit = match v.strip_suffix('*') {
                Some(start) => text.starts_with(start),
                None => text == *v,
            };
            if *k == kind && shape.ends_with(&format!(".{p}")) && hit {
                out.push((path.clone(), format!("{text} is not supported yet: {what}")));
            }
        }
    }
    out
}

fn walk(v: &Value, path: String, shape: String, out: &mut Vec<(String, String, Value)>) {
    match v {
        Value::Null => {}
        Value::Object(map) => {
            for (k, v) in map {
                walk(v, format!("{path}.{k}"), format!("{shape}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, format!("{path}[{i}]"), format!("{shape}[]"), out);
            }
        }
        other => out.push((path, shape, other.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{parse_value, split_documents};

    fn report(yaml: &str) -> Vec<(String, String)> {
        let (_, v) = split_documents(yaml).remove(0);
        unsupported(&parse_value(v.unwrap(), "default").remove(0).unwrap())
    }

    #[test]
    fn names_each_unsupported_field_once() {
        let r = report(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n      zoneAwareLbSetting:\n        enabled: true\n        failover: [{from: a, to: b}]\n  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n      tls: {mode: ISTIO_MUTUAL}\n",
        );
        let fields: Vec<&str> = r.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["spec.trafficPolicy.loadBalancer.zoneAwareLbSetting"]
        );
    }

    #[test]
    fn only_kinds_with_rules_are_inspected() {
        let object = |yaml: &str| {
            let (_, v) = split_documents(yaml).remove(0);
            parse_value(v.unwrap(), "default").remove(0).unwrap()
        };
        let dr = object(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews}\n",
        );
        let svc = object(
            "apiVersion: v1\nkind: Service\nmetadata: {name: r}\nspec: {ports: [{port: 80}]}\n",
        );
        assert!(inspected(&dr));
        assert!(!inspected(&svc));
        // Every kind a rule names is one the check reads.
        for (kind, _) in NOT_YET {
            assert!(
                [
                    "VirtualService",
                    "DestinationRule",
                    "ServiceEntry",
                    "WorkloadEntry",
                    "WorkloadGroup",
                    "Gateway",
                    "Sidecar",
                    "PeerAuthentication",
                    "AuthorizationPolicy",
                    "RequestAuthentication",
                    "Telemetry"
                ]
                .contains(kind),
                "{kind}"
            );
        }
    }

    #[test]
    fn authorization_policy_fields_not_acted_on_are_named() {
        let r = report(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  action: CUSTOM\n  provider: {name: opa}\n  rules:\n  - from: [{source: {principals: [a], requestPrincipals: ['*']}}]\n    when:\n    - {key: 'experimental.envoy.filters.a.b[c]', values: [x]}\n    - {key: 'request.headers[x]', values: [y]}\n",
        );
        let fields: Vec<&str> = r.iter().map(|(f, _)| f.as_str()).collect();
        // CUSTOM is acted on (the mesh config's extension providers).
        assert_eq!(fields, ["spec.rules[0].when[0].key"]);
        assert!(
            r[0].1.contains("experimental.envoy.filters.a.b[c]"),
            "{r:?}"
        );
    }

    #[test]
    fn telemetry_fields_not_acted_on_are_named() {
        let r = report(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t}\nspec:\n  metrics: [{providers: [{name: prometheus}], reportingInterval: 5s, overrides: [{disabled: true}, {match: {metric: GRPC_REQUEST_MESSAGES}, disabled: true}, {match: {customMetric: x}, disabled: true}]}]\n  tracing: [{randomSamplingPercentage: 10, useRequestIdForTraceSampling: false, disableContextPropagation: true}]\n  accessLogging: [{providers: [{name: envoy}]}]\n",
        );
        let fields: Vec<&str> = r.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.metrics[0].overrides[1].match.metric",
                "spec.metrics[0].overrides[2].match.customMetric",
                "spec.metrics[0].reportingInterval",
            ]
        );
    }

    #[test]
    fn supported_config_reports_nothing() {
        let r = report(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{headers: {end-user: {exact: jason}}}]\n    fault: {delay: {fixedDelay: 7s, percentage: {value: 100}}}\n    route: [{destination: {host: reviews, subset: v2}}]\n",
        );
        assert!(r.is_empty(), "{r:?}");
    }
}
