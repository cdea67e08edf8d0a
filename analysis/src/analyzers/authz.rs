//! AuthorizationPolicy checks: policies that apply to no workload, and
//! source namespaces that do not exist.

use std::collections::BTreeSet;

use crds::document::Object;

use super::{each, namespace, pick};
use crate::hosts::{selector_string, selects};
use crate::input::Input;
use crate::message::{self, Message};

/// Istio's `authz.AuthorizationPoliciesAnalyzer`: a policy whose
/// `selector` picks no pod (in its namespace; anywhere for the root
/// namespace's), or a namespace-wide policy in a namespace without pods,
/// is `NoMatchingWorkloadsFound` (IST0127; a policy by `targetRefs` is not
/// checked here); each `source.namespaces` / `notNamespaces` entry (`*`,
/// `prefix*`, `*suffix` allowed) that names no known namespace is
/// `ReferencedResourceNotFound` (IST0101). Known namespaces are the
/// `Namespace` objects read, the namespaces of every object read, the
/// root namespace and `default` (Istio reads only the first); every pod counts as in the mesh (Istio asks
/// whether it is injected).
pub fn policies(input: &Input, out: &mut Vec<Message>) {
    let root = input
        .mesh
        .root_namespace
        .clone()
        .unwrap_or_else(|| "istio-system".to_owned());
    let pods: Vec<_> = each(input, pick::pod).collect();
    let mut namespaces: BTreeSet<&str> = input.entries.iter().map(namespace).collect();
    for e in &input.entries {
        if let Object::Namespace(_) = e.object {
            namespaces.insert(&e.resource.name);
        }
    }
    namespaces.remove("");
    // The mesh's root namespace and `default` exist in any mesh.
    namespaces.insert(&root);
    namespaces.insert("default");
    for (entry, policy) in each(input, pick::authorization_policy) {
        let ns = namespace(entry);
        let by_target = policy.target_ref.is_some() || !policy.target_refs.is_empty();
        let selector = policy.selector.as_ref().map(|s| &s.match_labels);
        let any_pod = |labels: Option<&std::collections::BTreeMap<String, String>>, anywhere| {
            pods.iter().any(|(pe, pod)| {
                (anywhere || namespace(pe) == ns)
                    && labels.is_none_or(|l| selects(l, pod.metadata.labels.as_ref()))
            })
        };
        let missing = match selector {
            _ if by_target => None,
            Some(labels) if !any_pod(Some(labels), ns == root) => Some(selector_string(labels)),
            None if ns != root && !any_pod(None, false) => Some(String::new()),
            _ => None,
        };
        if let Some(labels) = missing {
            out.push(Message::new(
                message::NO_MATCHING_WORKLOADS_FOUND,
                Some(&entry.resource),
                vec![labels.into()],
            ));
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            for (j, from) in rule.from.iter().enumerate() {
                let Some(source) = &from.source else { continue };
                // Istio's `AuthorizationPolicyNameSpace` path, and the
                // `notNamespaces` beside it.
                let listed = [
                    ("namespaces", &source.namespaces),
                    ("notNamespaces", &source.not_namespaces),
                ];
                for (field, list) in listed {
                    for (k, wanted) in list.iter().enumerate() {
                        if !namespaces.iter().any(|n| namespace_matches(n, wanted)) {
                            out.push(
                                Message::new(
                                    message::REFERENCED_RESOURCE_NOT_FOUND,
                                    Some(&entry.resource),
                                    vec!["namespace".into(), wanted.clone().into()],
                                )
                                .at(format!("spec.rules[{i}].from[{j}].source.{field}[{k}]")),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// An AuthorizationPolicy namespace pattern: `*`, `*suffix`, `prefix*`, or
/// a name (case-insensitive).
fn namespace_matches(ns: &str, pattern: &str) -> bool {
    if pattern == "*" {
        true
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        ns.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        ns.starts_with(prefix)
    } else {
        ns.eq_ignore_ascii_case(pattern)
    }
}
