//! Workload selector checks of the kinds of which one applies per
//! workload (Sidecar, Telemetry): selectors that pick no pod or the same
//! pod, and several namespace-wide ones.

use std::collections::BTreeMap;

use crds::document::Object;

use super::{each, namespace, pick};
use crate::hosts::{selector_string, selects};
use crate::input::{Entry, Input};
use crate::message::{self, Message, MessageType, Param};

/// Labels, as a selector or a workload carries them.
type Labels = BTreeMap<String, String>;

/// How one kind is checked.
struct Kind {
    /// The object's workload selector: `None` when not of the kind;
    /// `Some(None)` for a namespace-wide one; an object attached by
    /// `targetRefs` is not of the kind here.
    selector: fn(&Object) -> Option<Option<&Labels>>,
    /// Reported when selectors pick the same pod.
    conflicting: MessageType,
    /// Reported when a namespace has several namespace-wide ones.
    multiple: MessageType,
    /// Where the selector's labels are written (Istio's
    /// `WorkloadSelector` path for a Sidecar).
    labels_at: &'static str,
}

const SIDECAR: Kind = Kind {
    selector: |o| pick::sidecar(o).map(|s| s.workload_selector.as_ref().map(|w| &w.labels)),
    conflicting: message::CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
    multiple: message::MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS,
    labels_at: "spec.workloadSelector.labels",
};

const TELEMETRY: Kind = Kind {
    selector: |o| match o {
        Object::Telemetry(t) if t.spec.target_ref.is_none() && t.spec.target_refs.is_empty() => {
            Some(t.spec.selector.as_ref().map(|s| &s.match_labels))
        }
        _ => None,
    },
    conflicting: message::CONFLICTING_TELEMETRY_WORKLOAD_SELECTORS,
    multiple: message::MULTIPLE_TELEMETRIES_WITHOUT_WORKLOAD_SELECTORS,
    labels_at: "spec.selector.matchLabels",
};

/// A selector must pick a pod of its namespace (`ReferencedResourceNotFound`,
/// IST0101, on `selector`); objects whose selectors pick the same pod are
/// each reported with the others' names (`kind.conflicting`), per pod.
fn selected(kind: &Kind, input: &Input, out: &mut Vec<Message>) {
    let pods: Vec<_> = each(input, pick::pod).collect();
    let mut by_pod: BTreeMap<(&str, &str), Vec<&Entry>> = BTreeMap::new();
    for entry in &input.entries {
        let Some(Some(selector)) = (kind.selector)(&entry.object) else {
            continue;
        };
        if selector.is_empty() {
            continue;
        }
        let mut found = false;
        for (pod_entry, pod) in &pods {
            if namespace(pod_entry) == namespace(entry)
                && selects(selector, pod.metadata.labels.as_ref())
            {
                found = true;
                by_pod
                    .entry((namespace(pod_entry), &pod_entry.resource.name))
                    .or_default()
                    .push(entry);
            }
        }
        if !found {
            let mut m = Message::new(
                message::REFERENCED_RESOURCE_NOT_FOUND,
                Some(&entry.resource),
                vec!["selector".into(), selector_string(selector).into()],
            );
            if let Some(label) = selector.keys().next() {
                m = m.at(format!("{}[\"{label}\"]", kind.labels_at));
            }
            out.push(m);
        }
    }
    for ((ns, pod), entries) in by_pod {
        if entries.len() > 1 {
            let names = Param::List(entries.iter().map(|e| e.resource.name.clone()).collect());
            for entry in entries {
                out.push(Message::new(
                    kind.conflicting,
                    Some(&entry.resource),
                    vec![names.clone(), ns.into(), pod.into()],
                ));
            }
        }
    }
}

/// More than one namespace-wide object of the kind in a namespace: each is
/// reported (`kind.multiple`), as which one applies is undefined.
fn namespace_wide(kind: &Kind, input: &Input, out: &mut Vec<Message>) {
    let mut by_namespace: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for entry in &input.entries {
        if let Some(None) = (kind.selector)(&entry.object) {
            by_namespace
                .entry(namespace(entry))
                .or_default()
                .push(entry);
        }
    }
    for (ns, entries) in by_namespace {
        if entries.len() > 1 {
            let names = Param::List(entries.iter().map(|e| e.resource.name.clone()).collect());
            for entry in entries {
                out.push(Message::new(
                    kind.multiple,
                    Some(&entry.resource),
                    vec![names.clone(), ns.into()],
                ));
            }
        }
    }
}

/// Istio's `sidecar.SelectorAnalyzer`: Sidecar selectors picking no pod
/// (IST0101) or the same pod (`ConflictingSidecarWorkloadSelectors`,
/// IST0110).
pub fn selectors(input: &Input, out: &mut Vec<Message>) {
    selected(&SIDECAR, input, out);
}

/// Istio's `sidecar.DefaultSelectorAnalyzer`: several Sidecars without a
/// `workloadSelector` in a namespace
/// (`MultipleSidecarsWithoutWorkloadSelectors`, IST0111).
pub fn default_selectors(input: &Input, out: &mut Vec<Message>) {
    namespace_wide(&SIDECAR, input, out);
}

/// Istio's `telemetry.SelectorAnalyzer`: Telemetry selectors picking no
/// pod (IST0101) or the same pod (`ConflictingTelemetryWorkloadSelectors`,
/// IST0159); a Telemetry attached by `targetRefs` is not checked.
pub fn telemetry_selectors(input: &Input, out: &mut Vec<Message>) {
    selected(&TELEMETRY, input, out);
}

/// Istio's `telemetry.DefaultSelectorAnalyzer`: several Telemetries
/// without a selector in a namespace
/// (`MultipleTelemetriesWithoutWorkloadSelectors`, IST0160).
pub fn telemetry_default_selectors(input: &Input, out: &mut Vec<Message>) {
    namespace_wide(&TELEMETRY, input, out);
}

/// Istio's `telemetry.ProviderAnalyzer`: when the mesh config names no
/// default access log provider, a Telemetry access logging entry without
/// `providers` does nothing (`InvalidTelemetryProvider`, IST0157), one
/// that says `disabled: true` included (there is nothing to turn off).
pub fn telemetry_providers(input: &Input, out: &mut Vec<Message>) {
    let defaults = input
        .mesh
        .default_providers
        .as_ref()
        .is_some_and(|d| !d.access_logging.is_empty());
    if defaults {
        return;
    }
    for (entry, telemetry) in each(input, pick::telemetry) {
        let empty = telemetry
            .access_logging
            .iter()
            .filter(|l| l.providers.is_empty())
            .count();
        for _ in 0..empty {
            out.push(Message::new(
                message::INVALID_TELEMETRY_PROVIDER,
                Some(&entry.resource),
                vec![entry.resource.name.clone().into(), namespace(entry).into()],
            ));
        }
    }
}
