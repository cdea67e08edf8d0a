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
/// then follows `istio-injection` (Istio's `injection.Analyzer`, its
/// namespace half: the pods' containers are not read here).
pub fn namespaces(input: &Input, out: &mut Vec<Message>) {
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
            _ => {}
        }
    }
}
