//! DestinationRule checks: TLS origination without a CA, and subsets that
//! select no pods.

use std::collections::{BTreeMap, HashMap, HashSet};

use crds::document::Object;

use crds::destination_rule::{ClientTlsMode, ClientTlsSettings};

use super::{each, full_name, namespace, pick};
use crate::hosts::{Registry, selects};
use crate::input::Input;
use crate::message::{self, Message, Param};

/// The mode's name when it originates TLS that verifies nothing: `SIMPLE`
/// or `MUTUAL` without `caCertificates` (nor a `credentialName`, whose
/// Secret gives the CA; nor `insecureSkipVerify`, which says so on
/// purpose).
fn unverified(tls: Option<&ClientTlsSettings>) -> Option<&'static str> {
    let tls = tls?;
    let mode = match tls.mode? {
        ClientTlsMode::Simple => "SIMPLE",
        ClientTlsMode::Mutual => "MUTUAL",
        _ => return None,
    };
    let has_ca = tls
        .ca_certificates
        .as_deref()
        .is_some_and(|c| !c.is_empty())
        || tls
            .credential_name
            .as_deref()
            .is_some_and(|c| !c.is_empty())
        || tls.insecure_skip_verify == Some(true);
    (!has_ca).then_some(mode)
}

/// `NoServerCertificateVerificationDestinationLevel` (IST0128) for a
/// top-level `tls` that does not verify the server, and
/// `NoServerCertificateVerificationPortLevel` (IST0129) for each such
/// port-level one (Istio's `CaCertificateAnalyzer`; Istio does not spare a
/// `credentialName` or `insecureSkipVerify`).
pub fn ca_certificates(input: &Input, out: &mut Vec<Message>) {
    for (entry, dr) in each(input, pick::destination_rule) {
        let Some(policy) = &dr.traffic_policy else {
            continue;
        };
        // The top level's `tls` (IST0128), then each port's (IST0129, its
        // port named as Istio prints a `PortSelector`).
        let levels = std::iter::once((
            policy.tls.as_ref(),
            None,
            "spec.trafficPolicy.tls.caCertificates".to_owned(),
        ))
        .chain(policy.port_level_settings.iter().enumerate().map(|(i, p)| {
            (
                p.tls.as_ref(),
                Some(p.port.as_ref().map_or(0, |s| s.number)),
                format!("spec.trafficPolicy.portLevelSettings[{i}].tls.caCertificates"),
            )
        }));
        for (tls, port, at) in levels {
            let Some(mode) = unverified(tls) else {
                continue;
            };
            let mut params: Vec<Param> = vec![
                full_name(entry).into(),
                namespace(entry).into(),
                mode.into(),
                dr.host.clone().into(),
            ];
            let kind = match port {
                None => message::NO_SERVER_CERTIFICATE_VERIFICATION_DESTINATION_LEVEL,
                Some(number) => {
                    params.push(format!("number:{number}").into());
                    message::NO_SERVER_CERTIFICATE_VERIFICATION_PORT_LEVEL
                }
            };
            // The CA missing, the line of its `tls` (Istio's path is the
            // absent `caCertificates`: the document's first line there).
            out.push(Message::new(kind, Some(&entry.resource), params).at(at));
        }
    }
}

/// A DestinationRule's `host` must be a service its namespace can see
/// (`UnknownDestinationRuleHost`, IST0174); each subset must select a pod
/// (`DestinationRuleSubsetNotSelectPods`, IST0173): a pod of the service
/// (its namespace, its selector) carrying the subset's labels, a pod's
/// labels completed with its node's topology labels as istiod's registry
/// does; for a Service without a selector, the pods its EndpointSlices
/// point at (every pod of its namespace when no slice is read); for a
/// ServiceEntry without a `workloadSelector`, one of its `endpoints`
/// carrying them. (Istio's `PodNotSelectedAnalyzer` matches a
/// Kubernetes Service's subsets against every pod of the cluster.)
pub fn subsets_select_pods(input: &Input, out: &mut Vec<Message>) {
    let registry = Registry::of(input);
    let nodes: BTreeMap<&str, &BTreeMap<String, String>> = each(input, pick::node)
        .filter_map(|(e, n)| Some((e.resource.name.as_str(), n.metadata.labels.as_ref()?)))
        .collect();
    let pods: Vec<(&str, &str, BTreeMap<String, String>)> = each(input, pick::pod)
        .map(|(e, pod)| {
            let mut labels = pod.metadata.labels.clone().unwrap_or_default();
            if let Some(node) = pod.node_name.as_deref() {
                for key in TOPOLOGY_LABELS {
                    if let Some(v) = nodes.get(node).and_then(|l| l.get(key)) {
                        labels.insert(key.to_owned(), v.clone());
                    }
                }
                labels.insert("kubernetes.io/hostname".to_owned(), node.to_owned());
            }
            (namespace(e), e.resource.name.as_str(), labels)
        })
        .collect();
    let slices = slice_pods(input);
    let no_slice = HashSet::new();
    for (entry, dr) in each(input, pick::destination_rule) {
        let Some(service) = registry.lookup(namespace(entry), &dr.export_to, &dr.host) else {
            out.push(Message::new(
                message::UNKNOWN_DESTINATION_RULE_HOST,
                Some(&entry.resource),
                vec![dr.host.clone().into()],
            ));
            continue;
        };
        // A Service without a selector: the pods its EndpointSlices name
        // (all pods of its namespace when none is read).
        let sliced: Option<&HashSet<&str>> = match (&service.selector, &service.service_name) {
            (None, Some(name)) => Some(
                slices
                    .get(&(service.namespace.as_str(), name.as_str()))
                    .unwrap_or(&no_slice),
            ),
            _ => None,
        };
        for subset in &dr.subsets {
            let selected = match (&service.selector, &sliced) {
                (Some(selector), _) => {
                    let mut wanted = selector.clone();
                    wanted.extend(subset.labels.clone());
                    pods.iter().any(|(ns, _, labels)| {
                        *ns == service.namespace && selects(&wanted, Some(labels))
                    })
                }
                (None, Some(names)) => pods.iter().any(|(ns, name, labels)| {
                    *ns == service.namespace
                        && (names.is_empty() || names.contains(name))
                        && selects(&subset.labels, Some(labels))
                }),
                (None, None) => service
                    .endpoint_labels
                    .iter()
                    .any(|labels| selects(&subset.labels, Some(labels))),
            };
            if !selected {
                out.push(Message::new(
                    message::DESTINATION_RULE_SUBSET_NOT_SELECT_PODS,
                    Some(&entry.resource),
                    vec![subset.name.clone().into()],
                ));
            }
        }
    }
}

/// The pods the EndpointSlices of each Service point at
/// (`kubernetes.io/service-name`, endpoints' `targetRef`s of kind Pod), by
/// the Service's namespace and name.
fn slice_pods(input: &Input) -> HashMap<(&str, &str), HashSet<&str>> {
    let mut out: HashMap<(&str, &str), HashSet<&str>> = HashMap::new();
    for e in &input.entries {
        let Object::EndpointSlice(slice) = &e.object else {
            continue;
        };
        let labels = slice.metadata.labels.as_ref();
        let Some(service) = labels.and_then(|l| l.get("kubernetes.io/service-name")) else {
            continue;
        };
        let pods = slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|ep| ep.target_ref.as_ref())
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .filter_map(|r| r.name.as_deref());
        out.entry((namespace(e), service.as_str()))
            .or_default()
            .extend(pods);
    }
    out
}

/// The node labels istiod puts on a pod's endpoints.
const TOPOLOGY_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];
