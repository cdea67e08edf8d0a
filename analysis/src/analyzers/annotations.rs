//! Istio annotations on Kubernetes objects: unknown ones, ones put on a
//! kind that does not read them, and deprecated ones.

use std::collections::BTreeMap;

use crds::document::Object;

use crate::input::{Entry, Input};
use crate::message::{self, Message};

/// Istio's annotations (`istio.io/api` `annotation/annotations.yaml`): name,
/// the kinds they may be put on (`Any`: every kind), and whether they are
/// deprecated.
pub const ANNOTATIONS: &[(&str, &[&str], bool)] = &[
    ("prometheus.istio.io/merge-metrics", &["Pod"], false),
    (
        "alpha.istio.io/kubernetes-serviceaccounts",
        &["Service"],
        true,
    ),
    (
        "alpha.istio.io/canonical-serviceaccounts",
        &["Service"],
        true,
    ),
    ("networking.istio.io/exportTo", &["Service"], false),
    ("sidecar.istio.io/inject", &["Pod"], true),
    ("sidecar.istio.io/status", &["Pod"], false),
    ("sidecar.istio.io/rewriteAppHTTPProbers", &["Pod"], false),
    ("sidecar.istio.io/discoveryAddress", &["Pod"], true),
    ("sidecar.istio.io/proxyImage", &["Pod"], false),
    ("sidecar.istio.io/proxyImageType", &["Pod"], false),
    ("sidecar.istio.io/proxyCPU", &["Pod"], false),
    ("sidecar.istio.io/proxyCPULimit", &["Pod"], false),
    ("sidecar.istio.io/proxyMemory", &["Pod"], false),
    ("sidecar.istio.io/proxyMemoryLimit", &["Pod"], false),
    ("sidecar.istio.io/interceptionMode", &["Pod"], false),
    ("sidecar.istio.io/bootstrapOverride", &["Pod"], false),
    ("sidecar.istio.io/statsInclusionPrefixes", &["Pod"], true),
    ("sidecar.istio.io/statsInclusionSuffixes", &["Pod"], true),
    ("sidecar.istio.io/statsInclusionRegexps", &["Pod"], true),
    ("sidecar.istio.io/statsHistogramBuckets", &["Pod"], false),
    ("sidecar.istio.io/statsFlushInterval", &["Pod"], false),
    ("sidecar.istio.io/statsEvictionInterval", &["Pod"], false),
    ("sidecar.istio.io/statsHistogramBins", &["Pod"], false),
    ("sidecar.istio.io/userVolume", &["Pod"], false),
    ("sidecar.istio.io/userVolumeMount", &["Pod"], false),
    ("status.sidecar.istio.io/port", &["Pod"], false),
    ("sidecar.istio.io/logLevel", &["Pod"], false),
    ("sidecar.istio.io/componentLogLevel", &["Pod"], false),
    ("sidecar.istio.io/agentLogLevel", &["Pod"], false),
    ("sidecar.istio.io/nativeSidecar", &["Pod"], false),
    (
        "readiness.status.sidecar.istio.io/initialDelaySeconds",
        &["Pod"],
        false,
    ),
    (
        "readiness.status.sidecar.istio.io/periodSeconds",
        &["Pod"],
        false,
    ),
    (
        "readiness.status.sidecar.istio.io/failureThreshold",
        &["Pod"],
        false,
    ),
    (
        "readiness.status.sidecar.istio.io/applicationPorts",
        &["Pod"],
        false,
    ),
    ("traffic.istio.io/nodeSelector", &["Service"], false),
    (
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        &["Pod"],
        false,
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        &["Pod"],
        false,
    ),
    (
        "traffic.sidecar.istio.io/includeInboundPorts",
        &["Pod"],
        false,
    ),
    (
        "traffic.sidecar.istio.io/excludeInboundPorts",
        &["Pod"],
        false,
    ),
    (
        "traffic.sidecar.istio.io/excludeInterfaces",
        &["Pod"],
        false,
    ),
    (
        "traffic.sidecar.istio.io/includeOutboundPorts",
        &["Pod"],
        false,
    ),
    (
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        &["Pod"],
        false,
    ),
    (
        "traffic.sidecar.istio.io/kubevirtInterfaces",
        &["Pod"],
        true,
    ),
    ("kubernetes.io/ingress.class", &["Ingress"], false),
    ("galley.istio.io/analyze-suppress", &["Any"], false),
    ("proxy.istio.io/config", &["Pod"], false),
    ("istio.io/dry-run", &["AuthorizationPolicy"], false),
    ("istio.io/rev", &["Pod"], false),
    ("proxy.istio.io/overrides", &["Pod"], false),
    ("inject.istio.io/templates", &["Pod"], false),
    ("sidecar.istio.io/extraStatTags", &["Pod"], true),
    ("istio.io/autoRegistrationGroup", &["WorkloadEntry"], false),
    ("istio.io/workloadController", &["WorkloadEntry"], false),
    ("istio.io/connectedAt", &["WorkloadEntry"], false),
    ("istio.io/disconnectedAt", &["WorkloadEntry"], false),
    (
        "topology.istio.io/controlPlaneClusters",
        &["Namespace"],
        false,
    ),
    ("gateway.istio.io/controller-version", &["Any"], false),
    ("ambient.istio.io/redirection", &["Pod"], false),
    (
        "ambient.istio.io/waypoint-inbound-binding",
        &["GatewayClass", "Gateway"],
        false,
    ),
    ("gateway.istio.io/service-account", &["Gateway"], false),
    ("gateway.istio.io/name-override", &["Gateway"], false),
    ("networking.istio.io/service-type", &["Gateway"], false),
    (
        "networking.istio.io/traffic-distribution",
        &["Namespace", "Service", "ServiceEntry"],
        false,
    ),
    (
        "istio.io/use-waypoint-canary-weight",
        &["Service", "ServiceEntry", "Namespace"],
        false,
    ),
    ("ambient.istio.io/bypass-inbound-capture", &["Pod"], false),
    ("istio.io/reroute-virtual-interfaces", &["Pod"], false),
    ("ambient.istio.io/dns-capture", &["Pod"], false),
    ("sidecar.istio.io/statsCompression", &["Pod"], true),
];

/// Whether an annotation is Istio's to check: its prefix ends in
/// `istio.io`, or it is `kubernetes.io/ingress.class` (Istio documents it).
fn istio_annotation(name: &str) -> bool {
    name == "kubernetes.io/ingress.class"
        || name
            .split_once('/')
            .is_some_and(|(prefix, _)| prefix.ends_with("istio.io"))
}

/// The annotations of `entry` to check, with the kind they are on: a
/// Namespace's, a Service's and a Pod's own; a workload's own (as its
/// kind) and its pod template's (as `Pod`).
fn annotated(entry: &Entry) -> Vec<(&'static str, &BTreeMap<String, String>)> {
    let mut out = Vec::new();
    match &entry.object {
        Object::Namespace(ns) => {
            out.extend(ns.metadata.annotations.iter().map(|a| ("Namespace", a)))
        }
        Object::Service(svc) => out.extend(svc.metadata.annotations.iter().map(|a| ("Service", a))),
        Object::Pod(pod) => {
            out.extend(pod.metadata.annotations.iter().map(|a| ("Pod", a)));
            if let Some(kind) = crate::input::WORKLOAD_KINDS
                .iter()
                .find(|k| **k == entry.resource.kind)
            {
                out.extend(entry.owner_annotations.as_ref().map(|a| (*kind, a)));
            }
        }
        _ => {}
    }
    out
}

/// Istio's `annotations.K8sAnalyzer`, on Namespaces, Services, Pods and
/// workloads (their own annotations and their pod template's): an Istio
/// annotation Istio does not define is `UnknownAnnotation` (IST0108); a
/// deprecated one `DeprecatedAnnotation` (IST0135, Info; not the
/// `sidecar.istio.io/inject` annotation beside the label of that name);
/// one on a kind that does not read it `MisplacedAnnotation` (IST0107),
/// e.g. a pod's annotation on its Deployment instead of its template; one
/// in its place whose value the injector would refuse
/// `InvalidAnnotation` (IST0125, [`invalid_value`]).
/// (Istio checks Deployments' own annotations only, not their templates'.)
pub fn kubernetes(input: &Input, out: &mut Vec<Message>) {
    for entry in &input.entries {
        let labels = entry.object.metadata().labels.as_ref();
        for (kind, annotations) in annotated(entry) {
            // Where these annotations are written: a workload's pod
            // template's, or the object's own.
            let at = match entry.resource.kind.as_str() {
                "CronJob" if kind == "Pod" => "spec.jobTemplate.spec.template.metadata.annotations",
                k if kind == "Pod" && k != "Pod" => "spec.template.metadata.annotations",
                _ => "metadata.annotations",
            };
            for name in annotations.keys().filter(|n| istio_annotation(n)) {
                let path = format!("{at}[\"{name}\"]");
                let mut push = |m: Message| out.push(m.at(path.clone()));
                let Some((_, kinds, deprecated)) = ANNOTATIONS.iter().find(|a| a.0 == name) else {
                    push(Message::new(
                        message::UNKNOWN_ANNOTATION,
                        Some(&entry.resource),
                        vec![name.clone().into()],
                    ));
                    continue;
                };
                if *deprecated {
                    let inject = name == "sidecar.istio.io/inject";
                    let has_label = labels.is_some_and(|l| l.contains_key(name));
                    if !(inject && has_label) {
                        let extra = if inject {
                            " in favor of the \"sidecar.istio.io/inject\" label"
                        } else {
                            ""
                        };
                        push(Message::new(
                            message::DEPRECATED_ANNOTATION,
                            Some(&entry.resource),
                            vec![name.clone().into(), extra.into()],
                        ));
                    }
                }
                if kinds.contains(&"Any") {
                    continue;
                }
                if !kinds.contains(&kind) {
                    push(Message::new(
                        message::MISPLACED_ANNOTATION,
                        Some(&entry.resource),
                        vec![name.clone().into(), kinds.join(", ").into()],
                    ));
                    continue;
                }
                if let Some(why) = annotations.get(name).and_then(|v| invalid_value(name, v)) {
                    push(Message::new(
                        message::INVALID_ANNOTATION,
                        Some(&entry.resource),
                        vec![name.clone().into(), why.into()],
                    ));
                }
            }
        }
    }
}

/// Why the injector would refuse `value` for the annotation `name`, in
/// the words of Istio's `inject.AnnotationValidation` (Go's parse errors
/// included); `None` when it takes it, or does not check that annotation.
/// `proxy.istio.io/config` is not checked here.
pub fn invalid_value(name: &str, value: &str) -> Option<String> {
    // Istio's comma-separated lists: the first item `bad` refuses.
    let list = |param: &str, what: &str, items: &str, bad: &dyn Fn(&str) -> Option<String>| {
        if items.is_empty() {
            return None;
        }
        items.split(',').find_map(|item| {
            bad(item).map(|e| format!("{param} invalid: failed parsing {what} '{item}': {e}"))
        })
    };
    // Ports are read from the trimmed value (Istio's `parsePorts`), CIDRs
    // as written.
    let port_list = |param: &str| list(param, "port", value.trim(), &|p| port(p).err());
    let cidr_list = |param: &str| list(param, "cidr", value, &|c| prefix(c).err());
    match name {
        "sidecar.istio.io/interceptionMode" => (!matches!(value, "REDIRECT" | "TPROXY" | "NONE"))
            .then(|| format!("interceptionMode invalid, use REDIRECT,TPROXY,NONE: {value}")),
        // Istio's own message names the wrong parameter; kept.
        "status.sidecar.istio.io/port" => port(value)
            .err()
            .map(|e| format!("excludeInboundPorts invalid: {e}")),
        "readiness.status.sidecar.istio.io/initialDelaySeconds"
        | "readiness.status.sidecar.istio.io/periodSeconds"
        | "readiness.status.sidecar.istio.io/failureThreshold" => {
            parse_uint(value, u64::from(u32::MAX)).err()
        }
        "traffic.sidecar.istio.io/includeOutboundIPRanges" if value == "*" => None,
        "traffic.sidecar.istio.io/includeOutboundIPRanges" => cidr_list("includeIPRanges"),
        "traffic.sidecar.istio.io/excludeOutboundIPRanges" => cidr_list("excludeIPRanges"),
        "traffic.sidecar.istio.io/includeInboundPorts" if value == "*" => None,
        "traffic.sidecar.istio.io/includeInboundPorts" => port_list("includeInboundPorts"),
        "traffic.sidecar.istio.io/excludeInboundPorts" => port_list("excludeInboundPorts"),
        "traffic.sidecar.istio.io/excludeOutboundPorts" => port_list("excludeOutboundPorts"),
        "prometheus.istio.io/merge-metrics" => (!matches!(
            value,
            "1" | "t"
                | "T"
                | "TRUE"
                | "true"
                | "True"
                | "0"
                | "f"
                | "F"
                | "FALSE"
                | "false"
                | "False"
        ))
        .then(|| format!("strconv.ParseBool: parsing {value:?}: invalid syntax")),
        _ => None,
    }
}

/// Go's `strconv.ParseUint(s, 10, bits)` with `max` the largest value:
/// its error text on failure.
fn parse_uint(s: &str, max: u64) -> Result<u64, String> {
    let syntax = || format!("strconv.ParseUint: parsing {s:?}: invalid syntax");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    match s.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!(
            "strconv.ParseUint: parsing {s:?}: value out of range"
        )),
    }
}

/// Istio's `parsePort`: a port number, spaces around it ignored.
fn port(s: &str) -> Result<u64, String> {
    parse_uint(s.trim(), u64::from(u16::MAX)).map_err(|e| format!("failed parsing port '{s}': {e}"))
}

/// Go's `netip.ParsePrefix`: `address/bits`, both required, no spaces.
fn prefix(s: &str) -> Result<(), String> {
    let err = |why: String| Err(format!("netip.ParsePrefix({s:?}): {why}"));
    let Some((addr, bits)) = s.rsplit_once('/') else {
        return err("no '/'".into());
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return err(format!("ParseAddr({addr:?}): unable to parse IP"));
    };
    let Ok(n) = parse_uint(bits, 255) else {
        return err(format!("bad bits after slash: {bits:?}"));
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if n > max {
        return err("prefix length out of range".into());
    }
    Ok(())
}
