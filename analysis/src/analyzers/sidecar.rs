//! Sidecar checks: selectors that pick no pod or the same pod, and several
//! namespace-wide Sidecars.

use std::collections::BTreeMap;

use super::{each, namespace, pick};
use crate::hosts::{selector_string, selects};
use crate::input::{Entry, Input};
use crate::message::{self, Message, Param};

/// A Sidecar's `workloadSelector` must pick a pod of its namespace
/// (`ReferencedResourceNotFound`, IST0101, on `selector`); Sidecars whose
/// selectors pick the same pod are each `ConflictingSidecarWorkloadSelectors`
/// (IST0110), per pod (Istio's `sidecar.SelectorAnalyzer`).
pub fn selectors(input: &Input, out: &mut Vec<Message>) {
    let pods: Vec<_> = each(input, pick::pod).collect();
    let mut by_pod: BTreeMap<(String, String), Vec<&Entry>> = BTreeMap::new();
    for (entry, sidecar) in each(input, pick::sidecar) {
        let Some(selector) = sidecar.workload_selector.as_ref().map(|s| &s.labels) else {
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
                    .entry((
                        namespace(pod_entry).to_owned(),
                        pod_entry.resource.name.clone(),
                    ))
                    .or_default()
                    .push(entry);
            }
        }
        if !found {
            out.push(Message::new(
                message::REFERENCED_RESOURCE_NOT_FOUND,
                Some(&entry.resource),
                vec!["selector".into(), selector_string(selector).into()],
            ));
        }
    }
    for ((ns, pod), sidecars) in by_pod {
        if sidecars.len() < 2 {
            continue;
        }
        let names = Param::List(sidecars.iter().map(|e| e.resource.name.clone()).collect());
        for entry in sidecars {
            out.push(Message::new(
                message::CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
                Some(&entry.resource),
                vec![names.clone(), ns.clone().into(), pod.clone().into()],
            ));
        }
    }
}

/// More than one Sidecar without a `workloadSelector` in a namespace: each
/// is `MultipleSidecarsWithoutWorkloadSelectors` (IST0111), as which one
/// applies is undefined (Istio's `sidecar.DefaultSelectorAnalyzer`).
pub fn default_selectors(input: &Input, out: &mut Vec<Message>) {
    let mut by_namespace: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for (entry, sidecar) in each(input, pick::sidecar) {
        if sidecar.workload_selector.is_none() {
            by_namespace
                .entry(namespace(entry))
                .or_default()
                .push(entry);
        }
    }
    for (ns, sidecars) in by_namespace {
        if sidecars.len() < 2 {
            continue;
        }
        let names = Param::List(sidecars.iter().map(|e| e.resource.name.clone()).collect());
        for entry in sidecars {
            out.push(Message::new(
                message::MULTIPLE_SIDECARS_WITHOUT_WORKLOAD_SELECTORS,
                Some(&entry.resource),
                vec![names.clone(), ns.into()],
            ));
        }
    }
}
