//! Namespace checks for sidecar injection.

use super::{each, pick};
use crate::analyzers::service::SYSTEM_NAMESPACES;
use crate::input::Input;
use crate::message::{self, Message, Param};

/// Each Namespace read (outside the system namespaces) that neither
/// enables nor disables injection (`istio-injection`, `istio.io/rev`; an
/// ambient namespace, `istio.io/dataplane-mode: ambient`, needs neither)
/// is `NamespaceNotInjected` (IST0102, Info); one with both injection
/// labels is `NamespaceMultipleInjectionLabels` (IST0123), as the webhook
/// then follows `istio-injection`; a pod of an injected namespace
/// (`istio-injection: enabled`, or `istio.io/rev` alone) that runs no
/// `istio-proxy` container, and does not opt out
/// (`sidecar.istio.io/inject: "false"`, label or annotation, or
/// `hostNetwork`), is `PodMissingProxy` (IST0103): it started before the
/// namespace was labelled, or the webhook was down (Istio's
/// `injection.Analyzer`; a native sidecar, `istio-proxy` among the init
/// containers, counts here). A workload read from a file is its template,
/// which is injected only when its pods are created: it is not checked.
pub fn namespaces(input: &Input, out: &mut Vec<Message>) {
    let mut injected = std::collections::HashSet::new();
    for (entry, ns) in each(input, pick::namespace) {
        let name = entry.resource.name.as_str();
        if SYSTEM_NAMESPACES.contains(&name) {
            continue;
        }
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        let legacy = labels.get("istio-injection");
        let revision = labels.get("istio.io/rev");
        let ambient = labels.get("istio.io/dataplane-mode").map(String::as_str) == Some("ambient");
        match (legacy, revision) {
            (Some(_), Some(_)) => out.push(Message::new(
                message::NAMESPACE_MULTIPLE_INJECTION_LABELS,
                Some(&entry.resource),
                vec![Param::List(vec![
                    "istio-injection".into(),
                    "istio.io/rev".into(),
                ])],
            )),
            (None, None) if !ambient => out.push(Message::new(
                message::NAMESPACE_NOT_INJECTED,
                Some(&entry.resource),
                vec![name.into(), name.into()],
            )),
            (Some(v), None) if v != "enabled" => {}
            (None, None) => {}
            _ => {
                injected.insert(name);
            }
        }
    }
    for (entry, pod) in each(input, pick::pod) {
        let ns = entry.resource.namespace.as_deref().unwrap_or_default();
        if entry.resource.kind != "Pod" || !injected.contains(ns) || pod.proxy || pod.host_network {
            continue;
        }
        if super::inject_says(pod).is_some_and(|v| v.eq_ignore_ascii_case("false")) {
            continue;
        }
        out.push(Message::new(
            message::POD_MISSING_PROXY,
            Some(&entry.resource),
            vec![format!("{ns}/{}", entry.resource.name).into()],
        ));
    }
}
